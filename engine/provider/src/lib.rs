//! The provider boundary: what a provider plugin implements and what it is
//! given.
//!
//! A provider makes, reports and removes servers (`providers/<name>/`: its
//! KCL declaration in `kcl/` and a Rust crate implementing [`Provider`]).
//! The engine never names a provider: the binary builds a [`Providers`]
//! registry in one place (`drover-registry`) and hands it to the runner,
//! `drover ping` and the server.
//!
//! API boundary: a provider depends on this crate and on
//! `drover-transport` (to reach a server, through the run's shared
//! connections: [`Connector`]), never on the executor. What it is given
//! per call ([`ProviderContext`]) is the same for every provider.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use drover_core::FailureKind;
use drover_core::model::{Connection, Resources, Server};
pub use drover_transport::ssh::SshHints;
use drover_transport::{Transport, TransportError};

/// What a provider call is given. Nothing in it is specific to one
/// provider.
#[derive(Debug, Clone)]
pub struct ProviderContext {
    /// The provider's own directory, kept across runs and restarts
    /// (`<data dir>/providers/<name>`): keys, records of what it made.
    pub state_dir: PathBuf,
    /// The run making the call.
    pub run_id: String,
    /// The idempotency key of the task making the call: the same for
    /// every attempt and after a resume, so a provider can tell a repeat
    /// (after a crash, a retry) from a first call and never make a
    /// second server.
    pub idempotency_key: String,
    /// What the provider's declaration gives the plan of the server the
    /// call is about (None for calls about no server).
    pub plan: Option<Resources>,
    /// Reaches a server through the run's connections.
    pub connector: Arc<dyn Connector>,
    /// The zones of the run's servers of this provider, sorted, each once
    /// (servers without a zone count as none): what a network call makes
    /// or removes networks for (a subnet per zone). For a call about one
    /// server, its zone only.
    pub zones: Vec<String>,
    /// The run's secrets (its workflow's SOPS files, decrypted in memory)
    /// by the name a script sees them under without its `DROVER_VAR_`
    /// prefix: `aws: {access_key_id: ...}` is `AWS_ACCESS_KEY_ID`. A
    /// provider looks its credentials up here before the orchestrator's
    /// environment, so they need not sit in the server's environment.
    /// Every value is masked in logs, events and reports like any secret;
    /// a provider must not put one in an error message.
    pub secrets: Secrets,
}

/// Secret values by name; its `Debug` shows the names only.
#[derive(Clone, Default)]
pub struct Secrets(Arc<BTreeMap<String, String>>);

impl Secrets {
    /// From `(name, value)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Secrets {
        Secrets(Arc::new(pairs.into_iter().collect()))
    }

    /// The value of `name`, if the run has that secret.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `name` from the run's secrets, else from the orchestrator's own
    /// environment (empty values count as unset).
    pub fn or_env(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::to_string)
            .or_else(|| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.0.keys().collect::<Vec<_>>())
            .field("values", &"<redacted>")
            .finish()
    }
}

/// Opens (or reuses) the run's connection to a server.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + std::fmt::Debug {
    /// A transport to `server`, reached as `facts` say; the run's tasks
    /// on that server use the same one.
    async fn connect(&self, server: &Server, facts: &ServerFacts) -> Result<Arc<dyn Transport>, TransportError>;
}

/// What is known about a server that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// The address commands reach it on.
    pub address: String,
    /// The filesystem root taskservs install into (`DROVER_ROOT`), as the
    /// server sees it.
    pub root: String,
    /// How it is reached.
    pub reach: Reach,
    /// What the provider found out about it (OS, kernel, CPUs, ...), which
    /// is journaled with its creation.
    pub found: BTreeMap<String, String>,
}

/// How a server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Its commands run as processes on this machine (`connection =
    /// "local"`).
    Local,
    /// Over SSH: the server's declared `ssh` access, completed by what the
    /// provider knows for certain.
    Ssh(SshHints),
}

/// A server as its provider finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    /// It exists and answers.
    Running(ServerFacts),
    /// It exists but cannot be used now (stopped, unreachable); why.
    Down(String),
    /// It does not exist.
    Absent,
}

/// A provider call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("provider {provider}: {message}")]
pub struct ProviderError {
    /// The provider.
    pub provider: String,
    /// Whether another attempt can help.
    pub kind: FailureKind,
    /// What went wrong, naming the server.
    pub message: String,
}

/// Makes, reports and removes servers.
///
/// Calls may be repeated (a retry, a resume after a crash): create of a
/// server that exists returns its facts, delete of one that is absent
/// succeeds.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// The provider's name, as in `providers/<name>/`.
    fn name(&self) -> &str;

    /// Problems with `server` that stop a run before it starts (each a
    /// sentence naming the server and the field). By default a provider's
    /// servers are reached over SSH only.
    fn preflight(&self, server: &Server) -> Vec<String> {
        if server.connection == Connection::Local {
            vec![format!(
                "server {}: connection = \"local\" is only for servers of provider local; provider {} reaches its servers over SSH",
                server.hostname,
                self.name()
            )]
        } else {
            Vec::new()
        }
    }

    /// Create `server`, or find it made by an earlier call.
    async fn create(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerFacts, ProviderError>;

    /// Delete `server`; one that is absent is not an error.
    async fn delete(&self, server: &Server, ctx: &ProviderContext) -> Result<(), ProviderError>;

    /// Report `server`.
    async fn status(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerStatus, ProviderError>;

    /// Whether [`Provider::delete`] destroys the server (the default) or
    /// only forgets it, leaving the machine as it is (servers that existed
    /// before drover). Rollback journals which it does.
    fn destroys_servers(&self) -> bool {
        true
    }

    /// Whether [`Provider::update`] does anything; a plan that updates
    /// servers of a provider that cannot is refused before it runs.
    fn updates_servers(&self) -> bool {
        false
    }

    /// Apply a changed plan or settings to an existing server.
    async fn update(&self, server: &Server, _ctx: &ProviderContext) -> Result<ServerFacts, ProviderError> {
        Err(self.permanent(format!(
            "cannot update server {}: the provider has no update",
            server.hostname
        )))
    }

    /// Whether the provider makes a network for its servers
    /// ([`Provider::create_network`]); a plan with a network task for a
    /// provider that does not is refused before it runs.
    fn makes_networks(&self) -> bool {
        false
    }

    /// Create the network its servers need.
    async fn create_network(&self, _ctx: &ProviderContext) -> Result<(), ProviderError> {
        Err(self.permanent("cannot create a network: the provider has none".into()))
    }

    /// Delete the network made by [`Provider::create_network`].
    async fn delete_network(&self, _ctx: &ProviderContext) -> Result<(), ProviderError> {
        Err(self.permanent("cannot delete a network: the provider has none".into()))
    }

    /// A failure another attempt may get past.
    fn transient(&self, message: String) -> ProviderError {
        ProviderError {
            provider: self.name().to_string(),
            kind: FailureKind::Transient,
            message,
        }
    }

    /// A failure no attempt will get past.
    fn permanent(&self, message: String) -> ProviderError {
        ProviderError {
            provider: self.name().to_string(),
            kind: FailureKind::Permanent,
            message,
        }
    }
}

/// The providers a binary can drive, by name: built in one place
/// (`drover-registry`) and injected wherever providers are called.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<dyn Provider>>,
}

impl Providers {
    /// No providers.
    pub fn new() -> Providers {
        Providers::default()
    }

    /// These providers plus `provider`.
    pub fn with(mut self, provider: impl Provider + 'static) -> Providers {
        self.by_name.insert(provider.name().to_string(), Arc::new(provider));
        self
    }

    /// The provider called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.by_name.get(name)
    }

    /// Their names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}
