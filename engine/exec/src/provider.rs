//! Providers: create, update, delete and report servers.
//!
//! A provider is a small object-safe trait; the providers this build can
//! drive are registered in one explicit list ([`registry`]). A workflow
//! that needs a provider missing from the list is refused before anything
//! runs, naming the provider.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_core::model::Server;

/// What a provider call may use.
#[derive(Debug, Clone)]
pub struct ProviderContext {
    /// Where hosts of the `local` provider keep their root directories.
    pub hosts_dir: PathBuf,
    /// The idempotency key of the task making the call.
    pub idempotency_key: String,
}

/// What is known about a server once it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// The address to reach it on.
    pub address: String,
    /// The filesystem root taskservs install into, for servers reached
    /// with a local connection.
    pub root: PathBuf,
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

/// Hosts on this machine: a host is a root directory under the hosts
/// directory (its filesystem as taskservs see it, DROVER_ROOT), with a
/// facts file recording its address. Servers of this provider are reached
/// with `connection = "local"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalProvider;

impl LocalProvider {
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
        Ok(ServerFacts { address, root })
    }

    async fn delete(&self, server: &Server, ctx: &ProviderContext) -> Result<(), ProviderError> {
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
        let root = Self::root(server, ctx);
        if tokio::fs::try_exists(Self::facts_file(&root)).await.unwrap_or(false) {
            Ok(ServerStatus::Running(ServerFacts {
                address: Self::address(server),
                root,
            }))
        } else {
            Ok(ServerStatus::Absent)
        }
    }
}
