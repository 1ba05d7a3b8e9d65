//! Provider `upcloud`: UpCloud cloud servers and private SDN networks,
//! through UpCloud's REST API ([`api`], a small typed client: there is no
//! maintained Rust SDK).
//!
//! - **create** clones the storage template for the server's plan and zone,
//!   installs drover's own SSH key (`<state>/id_ed25519`, made once) for
//!   the login user, attaches the run's SDN network of the zone, and waits
//!   (with backoff) until the server is `started`. Its address is its public
//!   IPv4 (else its SDN address); what it found (uuid, zone, plan,
//!   addresses) is journaled with the task.
//! - **idempotency**: every server carries the labels `drover-run`,
//!   `drover-server` (its hostname) and `drover-task` (a digest of the
//!   task's idempotency key), and the provider writes a record
//!   (`<state>/runs/<run>/servers/<hostname>.json`) *before* it asks for a
//!   server and again with the uuid once it has one. A repeat (a retry, a
//!   resume after a crash) uses the uuid it recorded, else asks the API for
//!   the server labelled with its hostname, and only makes one when there
//!   is none: a crash between the request and the record cannot make a
//!   second server.
//! - **networks**: a private SDN network per zone and run
//!   (`drover-<run>-<zone>`), made (or found again, by name, after a crash)
//!   by the first server created in that zone; the network task
//!   ([`Provider::create_network`]) checks the credentials against the API
//!   before any server, and its undo ([`Provider::delete_network`]) deletes
//!   every network the run made. The network call is not told the run's
//!   zones, which is why the servers make them (admission already runs the
//!   server calls of one zone one at a time: `shared_resources =
//!   ["sdn_network"]`).
//! - **delete** = hard stop, wait until `stopped`, delete with its storage;
//!   **status** = Running / Down (stopped, in maintenance) / Absent.
//! - **credentials**: `UPCLOUD_TOKEN` (bearer), else `UPCLOUD_USERNAME` and
//!   `UPCLOUD_PASSWORD` (basic auth), each from the run's secrets first
//!   (`upcloud: {username: ..., password: ...}` in a SOPS file), then the
//!   orchestrator's environment. They appear in no message.
//! - **errors** carry UpCloud's `error_code` and `error_message`; no answer,
//!   429 and 5xx are transient, other refusals permanent.

pub mod api;
mod keys;
pub mod records;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_core::model::{HostKeyPolicy, Server};
use drover_provider::{Provider, ProviderContext, ProviderError, Reach, ServerFacts, ServerStatus, SshHints};
use sha2::Digest;
use tokio::sync::Mutex;

use crate::api::{ApiError, Client, Credentials, NewServer};
use crate::records::{NetworkRecord, Records, ServerRecord};

/// The Debian 12 (Bookworm) public template.
pub const DEBIAN_12: &str = "01000000-0000-4000-8000-000020070100";

/// The user drover's key logs in as.
pub const LOGIN_USER: &str = "root";

/// The IPv4 range of every run's SDN networks (each network is its own,
/// so runs do not collide); outside UpCloud's utility range (10.0.0.0/8).
pub const NETWORK_CIDR: &str = "172.27.0.0/22";

/// How long to wait for a server to reach a state, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    /// The first pause.
    pub first: Duration,
    /// Pauses double up to this.
    pub max: Duration,
    /// Give up (transiently) after this long.
    pub limit: Duration,
}

impl Default for Poll {
    fn default() -> Poll {
        Poll {
            first: Duration::from_secs(2),
            max: Duration::from_secs(15),
            limit: Duration::from_secs(600),
        }
    }
}

/// A run's network of a zone, by state directory, run id and zone.
type NetworkKey = (PathBuf, String, String);

/// The `upcloud` provider.
#[derive(Debug, Clone)]
pub struct UpcloudProvider {
    api_url: String,
    template: String,
    poll: Poll,
    /// One lock per (state dir, run, zone) for making a network: two
    /// servers of a zone must not each make one, whatever the admission
    /// limits say.
    network_locks: Arc<std::sync::Mutex<BTreeMap<NetworkKey, Arc<Mutex<()>>>>>,
}

impl Default for UpcloudProvider {
    fn default() -> UpcloudProvider {
        UpcloudProvider::new()
    }
}

impl UpcloudProvider {
    /// The provider driving the production API with the Debian 12 template.
    pub fn new() -> UpcloudProvider {
        UpcloudProvider::with_api(api::API_URL, DEBIAN_12, Poll::default())
    }

    /// The provider driving the API at `api_url` (no trailing `/`),
    /// cloning `template` (a storage uuid), waiting as `poll` says.
    pub fn with_api(api_url: &str, template: &str, poll: Poll) -> UpcloudProvider {
        UpcloudProvider {
            api_url: api_url.to_string(),
            template: template.to_string(),
            poll,
            network_locks: Arc::default(),
        }
    }

    /// The client for `ctx`'s credentials.
    pub fn client(&self, ctx: &ProviderContext) -> Result<Client, ProviderError> {
        // The run's secrets first, then the environment: a run that brings
        // its own credentials uses them whatever the orchestrator has.
        let from_secrets = |name: &str| ctx.secrets.get(name).filter(|v| !v.is_empty()).map(str::to_string);
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let pick = |get: &dyn Fn(&str) -> Option<String>| {
            if let Some(token) = get("UPCLOUD_TOKEN") {
                return Some(Credentials::Token(token));
            }
            match (get("UPCLOUD_USERNAME"), get("UPCLOUD_PASSWORD")) {
                (Some(username), Some(password)) => Some(Credentials::Basic { username, password }),
                _ => None,
            }
        };
        let credentials = pick(&from_secrets).or_else(|| pick(&from_env)).ok_or_else(|| {
            self.permanent(
                "no UpCloud credentials: give UPCLOUD_USERNAME and UPCLOUD_PASSWORD (or UPCLOUD_TOKEN) in the \
                 run's secrets (a SOPS file with upcloud: {username: ..., password: ...}) or in the \
                 orchestrator's environment"
                    .to_string(),
            )
        })?;
        Client::new(&self.api_url, credentials).map_err(|e| self.api_error(&e, "setting up the API client"))
    }

    /// A failed API call as a provider error: UpCloud's code and message,
    /// what drover was doing, and whether to try again.
    pub fn api_error(&self, e: &ApiError, doing: &str) -> ProviderError {
        ProviderError {
            provider: self.name().to_string(),
            kind: e.kind(),
            message: format!("{doing}: {e}"),
        }
    }

    fn records(ctx: &ProviderContext) -> Records {
        Records::new(&ctx.state_dir, &ctx.run_id)
    }

    fn zone<'a>(&self, server: &'a Server) -> Result<&'a str, ProviderError> {
        server.zone.as_deref().ok_or_else(|| {
            self.permanent(format!(
                "server {}: an UpCloud server needs a zone (de-fra1, fi-hel1, nl-ams1, ...)",
                server.hostname
            ))
        })
    }

    fn record_error(&self, e: std::io::Error, what: &str) -> ProviderError {
        self.transient(format!("{what}: {e}"))
    }

    /// The network of `zone` for the run: recorded, found again by name
    /// (a crash after asking for it), or made now.
    pub async fn ensure_network(
        &self,
        client: &Client,
        zone: &str,
        ctx: &ProviderContext,
    ) -> Result<String, ProviderError> {
        let lock = {
            let mut locks = self.network_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks
                .entry((ctx.state_dir.clone(), ctx.run_id.clone(), zone.to_string()))
                .or_default()
                .clone()
        };
        let _held = lock.lock().await;
        let records = Self::records(ctx);
        let name = format!("drover-{}-{zone}", ctx.run_id);
        let what = format!("network {name}");
        let record = records
            .network(zone)
            .map_err(|e| self.record_error(e, &format!("reading the record of {what}")))?;
        match record {
            Some(NetworkRecord { uuid: Some(uuid), .. }) => return Ok(uuid),
            Some(_) => {
                // Asked for before a crash: it may exist.
                let found = client
                    .networks(zone)
                    .await
                    .map_err(|e| self.api_error(&e, &format!("looking for {what} in {zone}")))?;
                if let Some(n) = found.into_iter().find(|n| n.name == name) {
                    self.save_network(&records, zone, &name, Some(&n.uuid))?;
                    return Ok(n.uuid);
                }
            }
            None => {}
        }
        self.save_network(&records, zone, &name, None)?;
        let made = client
            .create_network(zone, &name, NETWORK_CIDR)
            .await
            .map_err(|e| self.api_error(&e, &format!("creating {what} in {zone}")))?;
        self.save_network(&records, zone, &name, Some(&made.uuid))?;
        Ok(made.uuid)
    }

    fn save_network(&self, records: &Records, zone: &str, name: &str, uuid: Option<&str>) -> Result<(), ProviderError> {
        records
            .save_network(&NetworkRecord {
                zone: zone.to_string(),
                name: name.to_string(),
                uuid: uuid.map(str::to_string),
            })
            .map_err(|e| self.record_error(e, &format!("recording network {name}")))
    }

    /// The server drover made as `server` (this run's record, else the one
    /// labelled with its hostname in its zone); None when there is none.
    pub async fn find(
        &self,
        client: &Client,
        server: &Server,
        ctx: &ProviderContext,
    ) -> Result<Option<api::Server>, ProviderError> {
        let zone = self.zone(server)?;
        let record = Self::records(ctx)
            .server(&server.hostname)
            .map_err(|e| self.record_error(e, &format!("reading the record of server {}", server.hostname)))?;
        if let Some(uuid) = record.and_then(|r| r.uuid) {
            let found = client
                .server(&uuid)
                .await
                .map_err(|e| self.api_error(&e, &format!("reading server {} ({uuid})", server.hostname)))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        let filter = format!("drover-server={}", server.hostname);
        let listed = client
            .servers_labelled(&[&filter])
            .await
            .map_err(|e| self.api_error(&e, &format!("looking for server {}", server.hostname)))?;
        // The filter is the API's; the labels and zone are checked here too.
        let mut ours: Vec<api::Server> = listed
            .into_iter()
            .filter(|s| s.label("drover-server") == Some(server.hostname.as_str()) && s.zone == zone)
            .collect();
        match ours.len() {
            0 => Ok(None),
            1 => {
                let uuid = ours.remove(0).uuid;
                // A list leaves the addresses out: the details have them.
                client
                    .server(&uuid)
                    .await
                    .map_err(|e| self.api_error(&e, &format!("reading server {} ({uuid})", server.hostname)))
            }
            _ => Err(self.permanent(format!(
                "server {}: {} UpCloud servers in {zone} carry the label drover-server={} ({}); delete the extra ones",
                server.hostname,
                ours.len(),
                server.hostname,
                ours.iter().map(|s| s.uuid.as_str()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Waits until server `uuid` is in `state` (`started`, `stopped`);
    /// its details then.
    pub async fn wait_for(
        &self,
        client: &Client,
        hostname: &str,
        uuid: &str,
        state: &str,
    ) -> Result<api::Server, ProviderError> {
        let start = tokio::time::Instant::now();
        let mut pause = self.poll.first;
        loop {
            let s = client
                .server(uuid)
                .await
                .map_err(|e| self.api_error(&e, &format!("waiting for server {hostname} ({uuid}) to be {state}")))?
                .ok_or_else(|| {
                    self.permanent(format!(
                        "server {hostname} ({uuid}) disappeared while drover waited for it to be {state}"
                    ))
                })?;
            if s.state == state {
                return Ok(s);
            }
            if s.state == "error" {
                return Err(self.permanent(format!(
                    "server {hostname} ({uuid}) is in state error at UpCloud; see its control panel"
                )));
            }
            if start.elapsed() >= self.poll.limit {
                return Err(self.transient(format!(
                    "server {hostname} ({uuid}) is still {} after {}s; expected {state}",
                    s.state,
                    self.poll.limit.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.poll.max);
        }
    }

    /// Stops server `uuid` (hard) unless it is stopped, and waits until it
    /// is.
    pub async fn stop(&self, client: &Client, hostname: &str, s: &api::Server) -> Result<(), ProviderError> {
        if s.state == "stopped" {
            return Ok(());
        }
        if s.state == "maintenance" {
            // A server being made or changed cannot be stopped yet.
            self.wait_for(client, hostname, &s.uuid, "started").await?;
        }
        let answer = client
            .stop_server(&s.uuid)
            .await
            .map_err(|e| self.api_error(&e, &format!("stopping server {hostname} ({})", s.uuid)))?;
        if answer.state != "stopped" {
            self.wait_for(client, hostname, &s.uuid, "stopped").await?;
        }
        Ok(())
    }

    /// What drover knows of a started server.
    pub fn facts(&self, s: &api::Server, key_file: PathBuf) -> Result<ServerFacts, ProviderError> {
        let private = s
            .interfaces()
            .iter()
            .filter(|i| i.kind == "private")
            .find_map(|i| i.ipv4().next().map(str::to_string))
            .or_else(|| s.ipv4("private").map(str::to_string));
        let public = s.ipv4("public").map(str::to_string);
        let address = public.clone().or_else(|| private.clone()).ok_or_else(|| {
            self.permanent(format!(
                "server {} ({}) has neither a public nor a private IPv4 address",
                s.hostname, s.uuid
            ))
        })?;
        let mut found = BTreeMap::new();
        found.insert("uuid".to_string(), s.uuid.clone());
        found.insert("zone".to_string(), s.zone.clone());
        found.insert("plan".to_string(), s.plan.clone());
        found.insert("hostname".to_string(), s.hostname.clone());
        found.insert("state".to_string(), s.state.clone());
        if let Some(a) = public {
            found.insert("public_ipv4".to_string(), a);
        }
        if let Some(a) = private {
            found.insert("private_ipv4".to_string(), a);
        }
        if let Some(a) = s.ipv4("utility") {
            found.insert("utility_ipv4".to_string(), a.to_string());
        }
        if let Some(n) = s
            .interfaces()
            .iter()
            .find(|i| i.kind == "private")
            .and_then(|i| i.network.clone())
        {
            found.insert("network".to_string(), n);
        }
        Ok(ServerFacts {
            address,
            root: "/".into(),
            reach: Reach::Ssh(SshHints {
                user: Some(LOGIN_USER.into()),
                port: None,
                key_file: Some(key_file),
                known_hosts: None,
                temp_dir: None,
            }),
            found,
        })
    }

    fn task_label(ctx: &ProviderContext) -> String {
        let digest = sha2::Sha256::digest(ctx.idempotency_key.as_bytes());
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}

#[async_trait::async_trait]
impl Provider for UpcloudProvider {
    fn name(&self) -> &str {
        "upcloud"
    }

    fn preflight(&self, server: &Server) -> Vec<String> {
        let mut problems = Vec::new();
        if server.connection != drover_core::model::Connection::Ssh {
            problems.push(format!(
                "server {}: connection = \"local\" is only for servers of provider local; provider upcloud reaches its servers over SSH",
                server.hostname
            ));
        }
        if server.zone.is_none() {
            problems.push(format!(
                "server {}: an UpCloud server needs a zone (de-fra1, fi-hel1, nl-ams1, ...)",
                server.hostname
            ));
        }
        // UpCloud does not tell the host key of a server it makes: drover
        // can only learn it on first contact.
        if server.ssh.host_key_policy == HostKeyPolicy::Strict && server.ssh.known_hosts.is_none() {
            problems.push(format!(
                "server {}: UpCloud does not publish the host keys of new servers, so strict host key checking \
                 refuses the first connection; set ssh = {{host_key_policy = \"accept-new\"}} (or a known_hosts file \
                 with its key)",
                server.hostname
            ));
        }
        problems
    }

    async fn create(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerFacts, ProviderError> {
        let zone = self.zone(server)?;
        let client = self.client(ctx)?;
        let key = keys::ensure(&ctx.state_dir).await.map_err(|e| self.permanent(e))?;
        let network = self.ensure_network(&client, zone, ctx).await?;
        let records = Self::records(ctx);
        let save = |uuid: Option<&str>| {
            records
                .save_server(&ServerRecord {
                    hostname: server.hostname.clone(),
                    zone: zone.to_string(),
                    idempotency_key: ctx.idempotency_key.clone(),
                    uuid: uuid.map(str::to_string),
                })
                .map_err(|e| self.record_error(e, &format!("recording server {}", server.hostname)))
        };
        let existing = self.find(&client, server, ctx).await?;
        let s = match existing {
            Some(s) => {
                save(Some(&s.uuid))?;
                s
            }
            None => {
                // Recorded before asking: a repeat after a crash between the
                // request and the next record looks the server up by label.
                save(None)?;
                let task = Self::task_label(ctx);
                let title = format!("drover {} ({})", server.hostname, ctx.run_id);
                let labels = [
                    ("drover-run", ctx.run_id.as_str()),
                    ("drover-server", server.hostname.as_str()),
                    ("drover-task", task.as_str()),
                ];
                let made = client
                    .create_server(&NewServer {
                        zone,
                        plan: &server.plan,
                        hostname: &server.hostname,
                        title: &title,
                        template: &self.template,
                        disk_gib: ctx.plan.map(|p| p.disk),
                        login_user: LOGIN_USER,
                        ssh_key: &key.public,
                        network: Some(&network),
                        labels: &labels,
                    })
                    .await
                    .map_err(|e| self.api_error(&e, &format!("creating server {} in {zone}", server.hostname)))?;
                save(Some(&made.uuid))?;
                made
            }
        };
        let started = match s.state.as_str() {
            "started" if !s.ip_addresses().is_empty() => s,
            // Ours but stopped (by hand, or a delete cut short): start it.
            "stopped" => {
                let answer = client
                    .start_server(&s.uuid)
                    .await
                    .map_err(|e| self.api_error(&e, &format!("starting server {} ({})", server.hostname, s.uuid)))?;
                if answer.state == "started" && !answer.ip_addresses().is_empty() {
                    answer
                } else {
                    self.wait_for(&client, &server.hostname, &s.uuid, "started").await?
                }
            }
            _ => self.wait_for(&client, &server.hostname, &s.uuid, "started").await?,
        };
        self.facts(&started, key.private_file)
    }

    async fn delete(&self, server: &Server, ctx: &ProviderContext) -> Result<(), ProviderError> {
        let client = self.client(ctx)?;
        let Some(s) = self.find(&client, server, ctx).await? else {
            return Ok(());
        };
        self.stop(&client, &server.hostname, &s).await?;
        client.delete_server(&s.uuid).await.or_else(|e| {
            if e.is_not_found() {
                Ok(())
            } else {
                Err(self.api_error(
                    &e,
                    &format!("deleting server {} ({}) and its storage", server.hostname, s.uuid),
                ))
            }
        })?;
        Self::records(ctx)
            .forget_server(&server.hostname)
            .map_err(|e| self.record_error(e, &format!("forgetting the record of server {}", server.hostname)))
    }

    async fn status(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerStatus, ProviderError> {
        let client = self.client(ctx)?;
        let Some(s) = self.find(&client, server, ctx).await? else {
            return Ok(ServerStatus::Absent);
        };
        if s.state == "started" {
            let key = keys::ensure(&ctx.state_dir).await.map_err(|e| self.permanent(e))?;
            Ok(ServerStatus::Running(self.facts(&s, key.private_file)?))
        } else {
            Ok(ServerStatus::Down(format!(
                "server {} ({}) is {} at UpCloud",
                server.hostname, s.uuid, s.state
            )))
        }
    }

    fn makes_networks(&self) -> bool {
        true
    }

    /// Before any server: checks that the API accepts the credentials
    /// (listing the run's servers), then makes the run's network in each
    /// zone its servers use (`ctx.zones`). A server whose zone's network
    /// is not made yet (none was known here) makes it itself.
    async fn create_network(&self, ctx: &ProviderContext) -> Result<(), ProviderError> {
        let client = self.client(ctx)?;
        let filter = format!("drover-run={}", ctx.run_id);
        client
            .servers_labelled(&[&filter])
            .await
            .map_err(|e| self.api_error(&e, "checking the UpCloud credentials"))?;
        for zone in &ctx.zones {
            self.ensure_network(&client, zone, ctx).await?;
        }
        Ok(())
    }

    /// Deletes every network the run made (their servers are deleted
    /// first: every server creation depends on the network task).
    async fn delete_network(&self, ctx: &ProviderContext) -> Result<(), ProviderError> {
        let records = Self::records(ctx);
        let networks = records
            .networks()
            .map_err(|e| self.record_error(e, "reading the run's network records"))?;
        if networks.is_empty() {
            return Ok(());
        }
        let client = self.client(ctx)?;
        for n in networks {
            let uuid = match &n.uuid {
                Some(u) => Some(u.clone()),
                None => client
                    .networks(&n.zone)
                    .await
                    .map_err(|e| self.api_error(&e, &format!("looking for network {} in {}", n.name, n.zone)))?
                    .into_iter()
                    .find(|found| found.name == n.name)
                    .map(|found| found.uuid),
            };
            if let Some(uuid) = uuid {
                client
                    .delete_network(&uuid)
                    .await
                    .map_err(|e| self.api_error(&e, &format!("deleting network {} ({uuid})", n.name)))?;
            }
            records
                .forget_network(&n.zone)
                .map_err(|e| self.record_error(e, &format!("forgetting network {}", n.name)))?;
        }
        Ok(())
    }
}
