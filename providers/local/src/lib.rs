//! Provider `local`: real hosts on this machine.
//!
//! With `connection = "ssh"` (the default) a host is real: an OpenSSH
//! daemon on the server's own loopback address, in its own UTS, mount and
//! PID namespaces, with its own hostname, host key (recorded in the
//! provider's known_hosts) and writable root ([`hosts::HostFleet`]); drover
//! reaches it over SSH like any cloud server. This needs root and
//! openssh-server.
//!
//! With `connection = "local"` a host is a root directory with a facts
//! file recording its address, and its scripts run as processes here: no
//! root needed.
//!
//! State (the provider's directory, [`ProviderContext::state_dir`]):
//! `fleet/` for the SSH hosts (keys, known_hosts, one directory per host),
//! `hosts/<hostname>/` for the root directories of local-connection hosts.

pub mod hosts;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drover_core::model::{Connection, Server};
use drover_provider::{Provider, ProviderContext, ProviderError, Reach, ServerFacts, ServerStatus, SshHints};

use crate::hosts::{HostError, HostFleet, HostInfo, HostSpec, HostState};

/// Numbers the facts files being written by this process.
static NEXT_TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The `local` provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalProvider;

impl LocalProvider {
    /// The fleet of `ctx`, opened once per process: opening makes the
    /// client key on first use, and parallel creates must not each make
    /// one.
    fn fleet(&self, ctx: &ProviderContext) -> Result<HostFleet, ProviderError> {
        static FLEETS: std::sync::Mutex<BTreeMap<PathBuf, HostFleet>> = std::sync::Mutex::new(BTreeMap::new());
        let dir = ctx.state_dir.join("fleet");
        let mut fleets = FLEETS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fleets.get(&dir) {
            return Ok(f.clone());
        }
        let fleet = HostFleet::new(dir.clone()).map_err(|e| self.host_error(e))?;
        fleets.insert(dir, fleet.clone());
        Ok(fleet)
    }

    /// A fleet error: a missing tool, no root or a bad spec will not go
    /// away by trying again; a daemon that did not come up may.
    fn host_error(&self, e: HostError) -> ProviderError {
        match e {
            HostError::NotRoot { .. }
            | HostError::MissingTool { .. }
            | HostError::InvalidSpec { .. }
            | HostError::AddressInUse { .. }
            | HostError::Fleet { .. } => self.permanent(e.to_string()),
            _ => self.transient(e.to_string()),
        }
    }

    fn ssh_facts(fleet: &HostFleet, info: &HostInfo) -> ServerFacts {
        ServerFacts {
            address: info.address.clone(),
            root: info.root.clone(),
            reach: Reach::Ssh(SshHints {
                user: Some("root".into()),
                port: Some(info.port),
                key_file: Some(fleet.client_key()),
                known_hosts: Some(fleet.known_hosts()),
                // The hosts share the machine's /tmp; each session's TMPDIR
                // is the host's own (sshd `SetEnv`), and so are run
                // directories.
                temp_dir: Some(format!("{}/tmp", hosts::HOST_ROOT)),
            }),
            found: BTreeMap::new(),
        }
    }

    fn root(server: &Server, ctx: &ProviderContext) -> PathBuf {
        ctx.state_dir.join("hosts").join(&server.hostname)
    }

    fn facts_file(root: &Path) -> PathBuf {
        root.join(".drover-host")
    }

    fn address(server: &Server) -> String {
        server.address.clone().unwrap_or_else(|| "127.0.0.1".into())
    }

    fn local_facts(server: &Server, root: &Path) -> ServerFacts {
        ServerFacts {
            address: Self::address(server),
            root: root.display().to_string(),
            reach: Reach::Local,
            found: BTreeMap::new(),
        }
    }
}

#[async_trait::async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    fn preflight(&self, server: &Server) -> Vec<String> {
        if server.connection == Connection::Ssh && server.address.is_none() {
            return vec![format!(
                "server {}: a local SSH host needs an address (its own loopback address, 127.0.x.y)",
                server.hostname
            )];
        }
        Vec::new()
    }

    async fn create(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerFacts, ProviderError> {
        if server.connection == Connection::Ssh {
            let address = server.address.clone().ok_or_else(|| {
                self.permanent(format!(
                    "server {} needs an address: each local SSH host listens on its own loopback address (127.0.x.y)",
                    server.hostname
                ))
            })?;
            let fleet = self.fleet(ctx)?;
            let spec = HostSpec {
                hostname: server.hostname.clone(),
                address,
            };
            let info = fleet.create(&spec).await.map_err(|e| self.host_error(e))?;
            return Ok(Self::ssh_facts(&fleet, &info));
        }
        let root = Self::root(server, ctx);
        let facts = format!(
            "hostname={}\naddress={}\nplan={}\ncreated_by={}\n",
            server.hostname,
            Self::address(server),
            server.plan,
            ctx.idempotency_key
        );
        let file = Self::facts_file(&root);
        let result = async {
            tokio::fs::create_dir_all(&root).await?;
            // Write-then-rename: a crash leaves either no facts file or a
            // complete one, never half of one. The temporary name is the
            // writer's own: runs that create the same host at once (the
            // API benchmark's 200 submissions of one workflow) each rename
            // their own file, instead of one finding the other's gone.
            let tmp = root.join(format!(
                ".drover-host.tmp.{}.{}",
                std::process::id(),
                NEXT_TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            tokio::fs::write(&tmp, facts).await?;
            tokio::fs::rename(&tmp, &file).await
        }
        .await;
        result.map_err(|e| {
            self.transient(format!(
                "cannot create host {} at {}: {e}",
                server.hostname,
                root.display()
            ))
        })?;
        Ok(Self::local_facts(server, &root))
    }

    async fn delete(&self, server: &Server, ctx: &ProviderContext) -> Result<(), ProviderError> {
        if server.connection == Connection::Ssh {
            return self
                .fleet(ctx)?
                .delete(&server.hostname)
                .await
                .map_err(|e| self.host_error(e));
        }
        let root = Self::root(server, ctx);
        match tokio::fs::remove_dir_all(&root).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.transient(format!(
                "cannot delete host {} at {}: {e}",
                server.hostname,
                root.display()
            ))),
        }
    }

    async fn status(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerStatus, ProviderError> {
        if server.connection == Connection::Ssh {
            let fleet = self.fleet(ctx)?;
            return match fleet.status(&server.hostname).await.map_err(|e| self.host_error(e))? {
                HostState::Running(info) => Ok(ServerStatus::Running(Self::ssh_facts(&fleet, &info))),
                // A stopped host is down, not gone: tasks on it fail (and
                // retry) rather than being told to create it.
                HostState::Stopped => Ok(ServerStatus::Down(format!(
                    "host {} exists but its sshd is not running",
                    server.hostname
                ))),
                HostState::Absent => Ok(ServerStatus::Absent),
            };
        }
        let root = Self::root(server, ctx);
        if tokio::fs::try_exists(Self::facts_file(&root)).await.unwrap_or(false) {
            Ok(ServerStatus::Running(Self::local_facts(server, &root)))
        } else {
            Ok(ServerStatus::Absent)
        }
    }

    /// A local host has nothing to update: its plan is a budget checked at
    /// validation, not a size. The update checks that the host runs.
    fn updates_servers(&self) -> bool {
        true
    }

    async fn update(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerFacts, ProviderError> {
        match self.status(server, ctx).await? {
            ServerStatus::Running(facts) => Ok(facts),
            ServerStatus::Down(why) => Err(self.transient(why)),
            ServerStatus::Absent => {
                Err(self.permanent(format!("server {} does not exist; create it first", server.hostname)))
            }
        }
    }
}
