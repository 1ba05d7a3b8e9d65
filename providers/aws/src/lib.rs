//! Provider `aws`: EC2 instances in a VPC of the run's own, through the
//! official AWS SDK for Rust.
//!
//! Layout: `api` builds the EC2 client (the run's secrets before the
//! standard chain), paces calls at the declared `api_rate_limit` and
//! classifies failures; `network` makes and deletes the run's VPC, gateway,
//! security group and per-zone subnets; `key` is the provider's SSH key.
//!
//! A server is one instance, tagged `drover:run`, `drover:server` and
//! `Name`. Create is idempotent twice over: an instance of the run
//! tagged for the server is found and reused, and RunInstances carries the
//! task's idempotency key as its ClientToken, so a call repeated after a
//! crash between RunInstances and its answer gets the same instance back.
//!
//! The image is the run's secret or the orchestrator's environment
//! variable `AWS_IMAGE_ID`, else the newest Debian 12 (amd64) AMI that
//! Debian (account 136693071363) publishes in the region: the server
//! schema has no image field.

mod api;
mod key;
pub mod network;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, Instance, InstanceStateName, InstanceType, ResourceType,
    TagSpecification, VolumeType,
};
use drover_core::FailureKind;
use drover_core::model::{Connection, Server};
use drover_provider::{Provider, ProviderContext, ProviderError, Reach, ServerFacts, ServerStatus, SshHints};
use sha2::{Digest, Sha256};

pub use crate::api::API_RATE_LIMIT;
use crate::api::{Api, ApiError, Settings, failure};
use crate::network::{Deleted, Network, RUN_TAG, filter, tag};

/// The tag naming the server an instance is.
pub const SERVER_TAG: &str = "drover:server";

/// The root volume every instance gets (the plans' `disk` counts it).
const ROOT_VOLUME_GIB: i32 = 20;

/// Debian's AWS account, which publishes the official Debian AMIs.
const DEBIAN_OWNER: &str = "136693071363";

/// How long an instance may take to reach `running` (or `terminated`).
const STATE_WAIT: Duration = Duration::from_secs(600);

/// The `aws` provider.
#[derive(Debug, Clone, Default)]
pub struct AwsProvider {
    inner: Arc<Inner>,
}

/// A run's network and its subnets by zone.
type RunNetwork = (Network, BTreeMap<String, String>);

#[derive(Debug, Default)]
struct Inner {
    /// An endpoint replacing AWS's (and `AWS_ENDPOINT_URL`'s); tests.
    endpoint: Option<String>,
    /// One client per account, region and endpoint, so the rate limit is
    /// shared by every task calling the same API.
    apis: std::sync::Mutex<HashMap<Settings, Arc<Api>>>,
    /// The networks made or found, by region and run, with their subnets
    /// by zone. The lock also serialises making them: two tasks of a run
    /// never both create a VPC or the subnet of a zone.
    networks: tokio::sync::Mutex<HashMap<(String, String), RunNetwork>>,
    /// Key pairs known to exist, by region, endpoint and name; the lock
    /// serialises making the key and importing it.
    key_pairs: tokio::sync::Mutex<HashSet<String>>,
}

impl AwsProvider {
    /// The provider as production uses it: AWS's endpoints, or the one
    /// the standard chain gives (`AWS_ENDPOINT_URL`).
    pub fn new() -> AwsProvider {
        AwsProvider::default()
    }

    /// The provider calling EC2 at `url` (an emulator such as moto),
    /// whatever the environment says.
    pub fn with_endpoint(url: impl Into<String>) -> AwsProvider {
        AwsProvider {
            inner: Arc::new(Inner {
                endpoint: Some(url.into()),
                ..Inner::default()
            }),
        }
    }

    fn error(&self, server: Option<&Server>, e: ApiError) -> ProviderError {
        let message = match server {
            Some(s) => format!("server {}: {}", s.hostname, e.message),
            None => e.message,
        };
        match e.kind {
            FailureKind::Permanent => self.permanent(message),
            _ => self.transient(message),
        }
    }

    async fn api(&self, ctx: &ProviderContext) -> Result<Arc<Api>, ApiError> {
        let settings = Settings::from_secrets(&ctx.secrets, self.inner.endpoint.as_deref());
        if let Some(api) = self.lock_apis().get(&settings) {
            return Ok(api.clone());
        }
        let api = Arc::new(Api::new(&settings).await?);
        Ok(self.lock_apis().entry(settings).or_insert(api).clone())
    }

    fn lock_apis(&self) -> std::sync::MutexGuard<'_, HashMap<Settings, Arc<Api>>> {
        self.inner.apis.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The run's network with the subnet of `zone`, found or made.
    async fn network(&self, api: &Api, run_id: &str, zone: &str) -> Result<(Network, String), ApiError> {
        let mut networks = self.inner.networks.lock().await;
        let key = (api.region.clone(), run_id.to_string());
        if !networks.contains_key(&key) {
            let net = network::ensure(api, run_id).await?;
            networks.insert(key.clone(), (net, BTreeMap::new()));
        }
        let Some((net, subnets)) = networks.get_mut(&key) else {
            return Err(failure(
                FailureKind::Transient,
                "the network cache lost an entry".into(),
            ));
        };
        if let Some(s) = subnets.get(zone) {
            return Ok((net.clone(), s.clone()));
        }
        let subnet = network::ensure_subnet(api, run_id, net, zone).await?;
        subnets.insert(zone.to_string(), subnet.clone());
        Ok((net.clone(), subnet))
    }

    /// The provider's key, imported into `api`'s region.
    async fn key_pair(&self, api: &Api, ctx: &ProviderContext) -> Result<key::SshKey, ApiError> {
        let mut known = self.inner.key_pairs.lock().await;
        let dir = ctx.state_dir.clone();
        let key = tokio::task::spawn_blocking(move || key::ensure(&dir))
            .await
            .map_err(|e| failure(FailureKind::Transient, format!("making the SSH key failed: {e}")))??;
        let id = format!(
            "{}|{}|{}",
            api.region,
            self.inner.endpoint.as_deref().unwrap_or(""),
            key.name
        );
        if known.contains(&id) {
            return Ok(key);
        }
        let exists = match api
            .call("DescribeKeyPairs", |c| {
                c.describe_key_pairs().key_names(&key.name).send()
            })
            .await
        {
            Ok(out) => !out.key_pairs().is_empty(),
            Err(e) if e.is("InvalidKeyPair.NotFound") => false,
            Err(e) => return Err(e),
        };
        if !exists {
            match api
                .call("ImportKeyPair", |c| {
                    c.import_key_pair()
                        .key_name(&key.name)
                        .public_key_material(Blob::new(key.public.as_bytes()))
                        .send()
                })
                .await
            {
                Ok(_) => {}
                Err(e) if e.is("InvalidKeyPair.Duplicate") => {}
                Err(e) => return Err(e),
            }
        }
        known.insert(id);
        Ok(key)
    }

    /// The image to launch and its root device name.
    async fn image(&self, api: &Api, ctx: &ProviderContext) -> Result<(String, String), ApiError> {
        let images = match ctx.secrets.or_env("AWS_IMAGE_ID") {
            Some(id) => {
                api.call("DescribeImages", |c| c.describe_images().image_ids(&id).send())
                    .await?
            }
            None => {
                api.call("DescribeImages", |c| {
                    c.describe_images()
                        .owners(DEBIAN_OWNER)
                        .filters(filter("name", "debian-12-amd64-*"))
                        .filters(filter("state", "available"))
                        .send()
                })
                .await?
            }
        };
        let newest = images
            .images()
            .iter()
            .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
            .ok_or_else(|| {
                failure(
                    FailureKind::Permanent,
                    format!(
                        "no image to launch in {}: no Debian 12 AMI of account {DEBIAN_OWNER} found; \
                         give one as aws.image_id in the workflow's secrets or AWS_IMAGE_ID",
                        api.region
                    ),
                )
            })?;
        let id = newest.image_id().unwrap_or_default().to_string();
        let root = newest.root_device_name().unwrap_or("/dev/xvda").to_string();
        Ok((id, root))
    }

    /// Live instances (not terminated nor shutting down) matching `filters`.
    async fn instances(&self, api: &Api, filters: Vec<Filter>) -> Result<Vec<Instance>, ApiError> {
        let out = api
            .call("DescribeInstances", |c| {
                c.describe_instances()
                    .set_filters(Some(filters.clone()))
                    .filters(
                        Filter::builder()
                            .name("instance-state-name")
                            .values("pending")
                            .values("running")
                            .values("stopping")
                            .values("stopped")
                            .build(),
                    )
                    .send()
            })
            .await?;
        Ok(out.reservations().iter().flat_map(|r| r.instances()).cloned().collect())
    }

    /// Wait until instance `id` is running, with backoff.
    async fn wait_running(&self, api: &Api, id: &str) -> Result<Instance, ApiError> {
        let deadline = tokio::time::Instant::now() + STATE_WAIT;
        let mut wait = Duration::from_millis(500);
        loop {
            let found = match api
                .call("DescribeInstances", |c| c.describe_instances().instance_ids(id).send())
                .await
            {
                Ok(out) => out.reservations().iter().flat_map(|r| r.instances()).next().cloned(),
                // Eventual consistency: a new instance may not be visible yet.
                Err(e) if e.is("InvalidInstanceID.NotFound") => None,
                Err(e) => return Err(e),
            };
            if let Some(i) = found {
                match i.state().and_then(|s| s.name()) {
                    Some(InstanceStateName::Running) => return Ok(i),
                    Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown) => {
                        let why = i.state_reason().and_then(|r| r.message()).unwrap_or("no reason given");
                        return Err(failure(
                            FailureKind::Permanent,
                            format!(
                                "instance {id} was terminated instead of starting ({why}); \
                                 the task's ClientToken now names that instance, so the run must be \
                                 started again rather than retried"
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            if tokio::time::Instant::now() + wait > deadline {
                return Err(failure(
                    FailureKind::Transient,
                    format!("instance {id} was not running after {}s", STATE_WAIT.as_secs()),
                ));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    /// Wait until none of `ids` exists any more (terminated).
    async fn wait_terminated(&self, api: &Api, ids: &[String]) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + STATE_WAIT;
        let mut wait = Duration::from_millis(500);
        loop {
            let out = match api
                .call("DescribeInstances", |c| {
                    c.describe_instances().set_instance_ids(Some(ids.to_vec())).send()
                })
                .await
            {
                Ok(out) => out,
                Err(e) if e.is("InvalidInstanceID.NotFound") => return Ok(()),
                Err(e) => return Err(e),
            };
            let left: Vec<&str> = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
                .filter_map(|i| i.instance_id())
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() + wait > deadline {
                return Err(failure(
                    FailureKind::Transient,
                    format!(
                        "instances {} were not terminated after {}s",
                        left.join(", "),
                        STATE_WAIT.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    fn facts(server: &Server, key: &key::SshKey, i: &Instance) -> ServerFacts {
        let public = i.public_ip_address().unwrap_or_default();
        let private = i.private_ip_address().unwrap_or_default();
        let address = if public.is_empty() { private } else { public };
        let mut found = BTreeMap::new();
        let mut put = |k: &str, v: Option<&str>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                found.insert(k.to_string(), v.to_string());
            }
        };
        put("instance_id", i.instance_id());
        put("zone", i.placement().and_then(|p| p.availability_zone()));
        put("instance_type", i.instance_type().map(|t| t.as_str()));
        put("image_id", i.image_id());
        put("private_ip", i.private_ip_address());
        put("public_ip", i.public_ip_address());
        put("vpc_id", i.vpc_id());
        put("subnet_id", i.subnet_id());
        put("key_pair", i.key_name());
        ServerFacts {
            address: address.to_string(),
            root: "/".into(),
            reach: Reach::Ssh(SshHints {
                // Debian's AMIs log in as admin; the server's own ssh.user
                // is taken before this hint.
                user: Some(server.ssh.user.clone().unwrap_or_else(|| "admin".into())),
                port: None,
                key_file: Some(key.private.clone()),
                known_hosts: None,
                temp_dir: None,
            }),
            found,
        }
    }

    fn zone<'s>(&self, server: &'s Server, api: &Api) -> Result<&'s str, ApiError> {
        let zone = server.zone.as_deref().ok_or_else(|| {
            failure(
                FailureKind::Permanent,
                "no zone: give the server an availability zone (zone = \"eu-central-1a\")".into(),
            )
        })?;
        in_region(zone, api)?;
        Ok(zone)
    }

    async fn create_instance(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerFacts, ApiError> {
        let api = self.api(ctx).await?;
        let zone = self.zone(server, &api)?;
        let key = self.key_pair(&api, ctx).await?;
        let mine = vec![
            filter(&format!("tag:{RUN_TAG}"), &ctx.run_id),
            filter(&format!("tag:{SERVER_TAG}"), &server.hostname),
        ];
        if let Some(i) = self.instances(&api, mine).await?.first() {
            let id = i.instance_id().unwrap_or_default().to_string();
            tracing::info!(server = %server.hostname, instance = %id, "instance made by an earlier attempt found");
            let i = self.wait_running(&api, &id).await?;
            return Ok(Self::facts(server, &key, &i));
        }
        let (image, root_device) = self.image(&api, ctx).await?;
        let (net, subnet) = self.network(&api, &ctx.run_id, zone).await?;
        let tags = |kind: ResourceType| {
            TagSpecification::builder()
                .resource_type(kind)
                .tags(tag(RUN_TAG, &ctx.run_id))
                .tags(tag(SERVER_TAG, &server.hostname))
                .tags(tag("Name", &server.hostname))
                .build()
        };
        let root = BlockDeviceMapping::builder()
            .device_name(root_device)
            .ebs(
                EbsBlockDevice::builder()
                    .volume_size(ROOT_VOLUME_GIB)
                    .volume_type(VolumeType::Gp3)
                    .delete_on_termination(true)
                    .build(),
            )
            .build();
        let token = client_token(&ctx.idempotency_key);
        let out = api
            .call("RunInstances", |c| {
                c.run_instances()
                    .image_id(&image)
                    .instance_type(InstanceType::from(server.plan.as_str()))
                    .min_count(1)
                    .max_count(1)
                    .key_name(&key.name)
                    .subnet_id(&subnet)
                    .security_group_ids(&net.security_group_id)
                    .block_device_mappings(root.clone())
                    .client_token(&token)
                    .tag_specifications(tags(ResourceType::Instance))
                    .tag_specifications(tags(ResourceType::Volume))
                    .send()
            })
            .await?;
        let id = out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or_else(|| {
                failure(
                    FailureKind::Transient,
                    "RunInstances: EC2's answer has no instance".into(),
                )
            })?
            .to_string();
        let i = self.wait_running(&api, &id).await?;
        Ok(Self::facts(server, &key, &i))
    }

    async fn delete_instances(&self, server: &Server, ctx: &ProviderContext) -> Result<(), ApiError> {
        let api = self.api(ctx).await?;
        let live = self
            .instances(&api, vec![filter(&format!("tag:{SERVER_TAG}"), &server.hostname)])
            .await?;
        let ids: Vec<String> = live
            .iter()
            .filter_map(|i| i.instance_id())
            .map(str::to_string)
            .collect();
        // Ones already shutting down are not in `live`; their network
        // interfaces are waited for by the network's deletion.
        if ids.is_empty() {
            return Ok(());
        }
        match api
            .call("TerminateInstances", |c| {
                c.terminate_instances().set_instance_ids(Some(ids.clone())).send()
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is("InvalidInstanceID.NotFound") => return Ok(()),
            Err(e) => return Err(e),
        }
        self.wait_terminated(&api, &ids).await
    }

    async fn instance_status(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerStatus, ApiError> {
        let api = self.api(ctx).await?;
        let mut live = self
            .instances(&api, vec![filter(&format!("tag:{SERVER_TAG}"), &server.hostname)])
            .await?;
        // This run's instance first, else the newest.
        let run_of = |i: &Instance| {
            i.tags()
                .iter()
                .any(|t| t.key() == Some(RUN_TAG) && t.value() == Some(ctx.run_id.as_str()))
        };
        live.sort_by_key(|i| (run_of(i), i.launch_time().map(|t| t.secs())));
        let Some(i) = live.last() else {
            return Ok(ServerStatus::Absent);
        };
        let id = i.instance_id().unwrap_or_default();
        match i.state().and_then(|s| s.name()) {
            Some(InstanceStateName::Running) => {
                let key = self.key_pair(&api, ctx).await?;
                Ok(ServerStatus::Running(Self::facts(server, &key, i)))
            }
            state => Ok(ServerStatus::Down(format!(
                "instance {id} is {}",
                state.map(|s| s.as_str()).unwrap_or("in an unknown state")
            ))),
        }
    }
}

/// `zone` is an availability zone of `api`'s region.
fn in_region(zone: &str, api: &Api) -> Result<(), ApiError> {
    if zone.starts_with(api.region.as_str()) {
        return Ok(());
    }
    Err(failure(
        FailureKind::Permanent,
        format!(
            "zone {zone} is not an availability zone of region {} (the region comes from \
             aws.region in the workflow's secrets, else AWS_REGION or the profile)",
            api.region
        ),
    ))
}

/// The ClientToken of a task: its idempotency key when that fits EC2's
/// 64 ASCII characters, else `drover-` and the key's SHA-256 (hex, 56
/// digits). The same for every attempt, so EC2 returns the instance of an
/// earlier RunInstances instead of making a second one.
pub fn client_token(idempotency_key: &str) -> String {
    if idempotency_key.len() <= 64 && idempotency_key.is_ascii() {
        return idempotency_key.to_string();
    }
    let hex: String = Sha256::digest(idempotency_key.as_bytes())
        .iter()
        .take(28)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("drover-{hex}")
}

#[async_trait::async_trait]
impl Provider for AwsProvider {
    fn name(&self) -> &str {
        "aws"
    }

    fn preflight(&self, server: &Server) -> Vec<String> {
        let mut problems = Vec::new();
        if server.connection == Connection::Local {
            problems.push(format!(
                "server {}: connection = \"local\" is only for servers of provider local; provider aws reaches its servers over SSH",
                server.hostname
            ));
        }
        if server.zone.as_deref().is_none_or(str::is_empty) {
            problems.push(format!(
                "server {}: provider aws needs zone, the availability zone (e.g. \"eu-central-1a\")",
                server.hostname
            ));
        }
        problems
    }

    async fn create(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerFacts, ProviderError> {
        self.create_instance(server, ctx)
            .await
            .map_err(|e| self.error(Some(server), e))
    }

    async fn delete(&self, server: &Server, ctx: &ProviderContext) -> Result<(), ProviderError> {
        self.delete_instances(server, ctx)
            .await
            .map_err(|e| self.error(Some(server), e))
    }

    async fn status(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerStatus, ProviderError> {
        self.instance_status(server, ctx)
            .await
            .map_err(|e| self.error(Some(server), e))
    }

    fn makes_networks(&self) -> bool {
        true
    }

    /// The VPC, gateway, route and security group, and a subnet in each
    /// zone of the run's servers (a server creation makes the subnet of
    /// its zone if it is missing, so either order works).
    async fn create_network(&self, ctx: &ProviderContext) -> Result<(), ProviderError> {
        let api = self.api(ctx).await.map_err(|e| self.error(None, e))?;
        // Every zone is checked before anything is made.
        for zone in &ctx.zones {
            in_region(zone, &api).map_err(|e| self.error(None, e))?;
        }
        if ctx.zones.is_empty() {
            let mut networks = self.inner.networks.lock().await;
            let net = network::ensure(&api, &ctx.run_id)
                .await
                .map_err(|e| self.error(None, e))?;
            networks
                .entry((api.region.clone(), ctx.run_id.clone()))
                .or_insert_with(|| (net, BTreeMap::new()));
        }
        for zone in &ctx.zones {
            self.network(&api, &ctx.run_id, zone)
                .await
                .map_err(|e| self.error(None, e))?;
        }
        Ok(())
    }

    /// Deletes the run's network once no instance of it is left; while
    /// some are (a run with several create operations, whose network
    /// tasks are undone one by one), the deletion is left to the network
    /// task undone last.
    async fn delete_network(&self, ctx: &ProviderContext) -> Result<(), ProviderError> {
        let api = self.api(ctx).await.map_err(|e| self.error(None, e))?;
        let mut networks = self.inner.networks.lock().await;
        match network::delete(&api, &ctx.run_id)
            .await
            .map_err(|e| self.error(None, e))?
        {
            Deleted::InUse(ids) => {
                tracing::info!(run = %ctx.run_id, instances = %ids.join(","), "network of the run left for its last deletion: instances still use it");
            }
            Deleted::Network(_) | Deleted::Nothing => {
                networks.remove(&(api.region.clone(), ctx.run_id.clone()));
            }
        }
        Ok(())
    }
}
