//! Providers: create, update, delete and report servers.
//!
//! A provider is a small object-safe trait; the providers this build can
//! drive are registered in one explicit list ([`registry`]). A workflow
//! that needs a provider missing from the list is refused before anything
//! runs, naming the provider.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_core::model::{Connection, Server};

/// What a provider call may use.
#[derive(Debug, Clone)]
pub struct ProviderContext {
    /// Where hosts of the `local` provider reached with
    /// `connection = "local"` keep their root directories.
    pub hosts_dir: PathBuf,
    /// Where the `local` provider keeps its SSH hosts (sshd daemons, keys,
    /// known_hosts).
    pub fleet_dir: PathBuf,
    /// The idempotency key of the task making the call.
    pub idempotency_key: String,
}

/// What is known about a server once it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// The address to reach it on.
    pub address: String,
    /// The filesystem root taskservs install into (DROVER_ROOT), as the
    /// server sees it.
    pub root: PathBuf,
    /// How to reach it over SSH, when the provider knows (the `local`
    /// provider's SSH hosts); None: from the server's declaration.
    pub ssh: Option<SshFacts>,
}

/// SSH access a provider hands out with a server it made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshFacts {
    /// TCP port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Private key accepted by the server.
    pub key_file: PathBuf,
    /// known_hosts holding the server's host key.
    pub known_hosts: PathBuf,
}

/// A server's state as its provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    /// It exists and is usable.
    Running(ServerFacts),
    /// It does not exist.
    Absent,
}

/// A provider call failed.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider}: {message}")]
pub struct ProviderError {
    /// The provider.
    pub provider: String,
    /// What went wrong, naming the server.
    pub message: String,
}

/// Creates and deletes servers.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// The provider's name, as in `providers/<name>/`.
    fn name(&self) -> &str;

    /// Create `server`; creating one that exists is not an error (the call
    /// may be a re-run after a crash) and returns its facts.
    async fn create(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerFacts, ProviderError>;

    /// Delete `server`; deleting one that is absent is not an error.
    async fn delete(&self, server: &Server, ctx: &ProviderContext) -> Result<(), ProviderError>;

    /// Report `server`.
    async fn status(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerStatus, ProviderError>;

    /// Apply a changed plan or settings to an existing server.
    async fn update(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerFacts, ProviderError> {
        match self.status(server, ctx).await? {
            ServerStatus::Running(facts) => Ok(facts),
            ServerStatus::Absent => {
                Err(self.error(format!("server {} does not exist; create it first", server.hostname)))
            }
        }
    }

    /// Create the network its servers need, when it declares one.
    async fn create_network(&self, _ctx: &ProviderContext) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Delete the network made by [`Provider::create_network`].
    async fn delete_network(&self, _ctx: &ProviderContext) -> Result<(), ProviderError> {
        Ok(())
    }

    /// An error of this provider.
    fn error(&self, message: String) -> ProviderError {
        ProviderError {
            provider: self.name().to_string(),
            message,
        }
    }
}

/// The providers this build can drive. aws and upcloud are declared in
/// providers/ (so workflows using them validate and plan) but have no
/// engine implementation yet.
pub fn registry() -> BTreeMap<String, Arc<dyn Provider>> {
    let list: Vec<Arc<dyn Provider>> = vec![Arc::new(LocalProvider)];
    list.into_iter().map(|p| (p.name().to_string(), p)).collect()
}

/// Hosts on this machine.
///
/// With `connection = "ssh"` (the default) a host is real: an OpenSSH
/// daemon on the server's own loopback address, in its own UTS and mount
/// namespaces, with its own hostname, host key (recorded in drover's
/// known_hosts) and writable root ([`crate::hosts::HostFleet`]); drover
/// reaches it over SSH like any cloud server. This needs root and
/// openssh-server.
///
/// With `connection = "local"` a host is a root directory under the hosts
/// directory (DROVER_ROOT) with a facts file recording its address, and its
/// scripts run as processes here: no root needed.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalProvider;

impl LocalProvider {
    /// The fleet of `ctx`, opened once per process: opening makes the
    /// client key on first use, and parallel creates must not each make
    /// one.
    fn fleet(&self, ctx: &ProviderContext) -> Result<crate::hosts::HostFleet, ProviderError> {
        static FLEETS: std::sync::Mutex<BTreeMap<PathBuf, crate::hosts::HostFleet>> =
            std::sync::Mutex::new(BTreeMap::new());
        let mut fleets = FLEETS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fleets.get(&ctx.fleet_dir) {
            return Ok(f.clone());
        }
        let fleet = crate::hosts::HostFleet::new(ctx.fleet_dir.clone()).map_err(|e| self.error(e.to_string()))?;
        fleets.insert(ctx.fleet_dir.clone(), fleet.clone());
        Ok(fleet)
    }

    fn ssh_facts(fleet: &crate::hosts::HostFleet, info: &crate::hosts::HostInfo) -> ServerFacts {
        ServerFacts {
            address: info.address.clone(),
            root: PathBuf::from(&info.root),
            ssh: Some(SshFacts {
                port: info.port,
                user: "root".into(),
                key_file: fleet.client_key(),
                known_hosts: fleet.known_hosts(),
            }),
        }
    }

    fn root(server: &Server, ctx: &ProviderContext) -> PathBuf {
        ctx.hosts_dir.join(&server.hostname)
    }

    fn facts_file(root: &Path) -> PathBuf {
        root.join(".drover-host")
    }

    fn address(server: &Server) -> String {
        server.address.clone().unwrap_or_else(|| "127.0.0.1".into())
    }
}

#[async_trait::async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    async fn create(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerFacts, ProviderError> {
        if server.connection == Connection::Ssh {
            let address = server.address.clone().ok_or_else(|| {
                self.error(format!(
                    "server {} needs an address: each local SSH host listens on its own loopback address (127.0.x.y)",
                    server.hostname
                ))
            })?;
            let fleet = self.fleet(ctx)?;
            let spec = crate::hosts::HostSpec {
                hostname: server.hostname.clone(),
                address,
            };
            let info = fleet.create(&spec).await.map_err(|e| self.error(e.to_string()))?;
            return Ok(Self::ssh_facts(&fleet, &info));
        }
        let root = Self::root(server, ctx);
        let address = Self::address(server);
        let facts = format!(
            "hostname={}\naddress={}\nplan={}\ncreated_by={}\n",
            server.hostname, address, server.plan, ctx.idempotency_key
        );
        let file = Self::facts_file(&root);
        let result = async {
            tokio::fs::create_dir_all(&root).await?;
            // Write-then-rename: a crash leaves either no facts file or a
            // complete one, never half of one.
            let tmp = root.join(".drover-host.tmp");
            tokio::fs::write(&tmp, facts).await?;
            tokio::fs::rename(&tmp, &file).await
        }
        .await;
        result.map_err(|e| {
            self.error(format!(
                "cannot create host {} at {}: {e}",
                server.hostname,
                root.display()
            ))
        })?;
        Ok(ServerFacts {
            address,
            root,
            ssh: None,
        })
    }

    async fn delete(&self, server: &Server, ctx: &ProviderContext) -> Result<(), ProviderError> {
        if server.connection == Connection::Ssh {
            return self
                .fleet(ctx)?
                .delete(&server.hostname)
                .await
                .map_err(|e| self.error(e.to_string()));
        }
        let root = Self::root(server, ctx);
        match tokio::fs::remove_dir_all(&root).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.error(format!(
                "cannot delete host {} at {}: {e}",
                server.hostname,
                root.display()
            ))),
        }
    }

    async fn status(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerStatus, ProviderError> {
        if server.connection == Connection::Ssh {
            let fleet = self.fleet(ctx)?;
            return match fleet
                .status(&server.hostname)
                .await
                .map_err(|e| self.error(e.to_string()))?
            {
                crate::hosts::HostState::Running(info) => Ok(ServerStatus::Running(Self::ssh_facts(&fleet, &info))),
                // A stopped host is down, not gone: tasks on it fail (and
                // retry) rather than being told to create it.
                crate::hosts::HostState::Stopped => {
                    Err(self.error(format!("host {} exists but its sshd is not running", server.hostname)))
                }
                crate::hosts::HostState::Absent => Ok(ServerStatus::Absent),
            };
        }
        let root = Self::root(server, ctx);
        if tokio::fs::try_exists(Self::facts_file(&root)).await.unwrap_or(false) {
            Ok(ServerStatus::Running(ServerFacts {
                address: Self::address(server),
                root,
                ssh: None,
            }))
        } else {
            Ok(ServerStatus::Absent)
        }
    }
}
