//! drover's orchestrator server: `drover serve`.
//!
//! Layout:
//! - [`orchestrator`]: the FIFO run queue in front of the executor, crash
//!   recovery, operator commands, graceful shutdown.
//! - [`api`]: the axum router, handlers, SSE streams, the OpenAPI document.
//! - [`wire`]: every request and response body (the wire format).
//! - [`fleet`]: the fleet endpoints: selecting servers, execs (a command
//!   on servers, as a run), snapshots and drift.
//! - [`http`]: the accept loop: connection limit, header timeout, TLS,
//!   the Host check, the body limit, the HTTP part of shutdown.
//! - [`cluster`]: several instances on one PostgreSQL store: the lease
//!   keeper, its watchdog, commands for runs another instance executes.
//! - [`dashboard`]: the web dashboard's files (embedded) and the
//!   endpoints written for it (`/whoami`, a run's graph).
//! - [`auth`]: bearer tokens, roles, who is calling (for the audit trail).
//! - [`metrics`]: the Prometheus registry.
//! - [`schedules`]: cron schedules of workflows and execs, and their
//!   loop.
//! - [`notify`]: notifications (webhook, Slack, script): the outbox and
//!   its delivery task.
//! - [`logs`]: a run's numbered output stream, resumable by event id.
//! - [`logging`]: structured logs (tracing-subscriber): stdout and per-run
//!   files, retention.
//!
//! Architecture invariant: only this crate knows HTTP. What the API shows
//! about a run is rebuilt from the journal, so it is the same before and
//! after a restart.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod dashboard;
pub mod error;
pub mod fleet;
pub mod http;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod orchestrator;
pub mod schedules;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_exec::Options;
use drover_kcl::Loader;
use drover_state::Store;

pub use orchestrator::{KclSettings, Limits, Orchestrator};

/// How `drover serve` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The HTTP layer: connection limit, header timeout, TLS, the names
    /// the server answers to, how long requests may finish on shutdown.
    pub http: http::HttpConfig,
    /// The state database: an SQLite file, or a PostgreSQL database
    /// shared with other instances.
    pub state: drover_state::Location,
    /// Where submitted sources, run logs and reports are kept.
    pub data_dir: PathBuf,
    /// Queue limits.
    pub limits: Limits,
    /// `--no-auth`: ask no token (loopback only; every action is
    /// recorded as anonymous).
    pub no_auth: bool,
    /// The admin token (DROVER_TOKEN), else read from / generated into
    /// `token_file`.
    pub token: Option<String>,
    /// Where the admin token is kept (owner-only, checked at start).
    pub token_file: PathBuf,
    /// A token that reads /metrics only (DROVER_METRICS_TOKEN), unless
    /// `metrics_token_file` is given.
    pub metrics_token: Option<String>,
    /// The file holding the metrics token (owner-only, checked at start).
    pub metrics_token_file: Option<PathBuf>,
    /// How long running tasks may take to finish on shutdown before the
    /// runs are aborted (and resumed at the next start).
    pub shutdown_grace: Duration,
    /// The server's own log directory and its retention in days.
    pub logs_dir: PathBuf,
    /// Days the server's logs are kept (0: forever).
    pub retention_days: u32,
    /// Overrides every run's parallelism.
    pub max_parallel: Option<u32>,
    /// The providers runs can drive (the binary's registry).
    pub providers: drover_provider::Providers,
    /// How submitted workflows are evaluated (KCL worker processes) and
    /// which directories path submissions may name.
    pub kcl: orchestrator::KclSettings,
    /// The server-wide notification targets (`--notifications`): for
    /// runs whose workflow declares none, and the server's own events.
    pub notifications: Vec<drover_core::model::NotificationDef>,
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] drover_state::StateError),
    /// Recovery failed.
    #[error(transparent)]
    Start(#[from] orchestrator::StartError),
    /// The token could not be set up.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// The HTTP settings cannot be used (TLS files, plain HTTP beyond
    /// loopback, names, the open-files limit).
    #[error(transparent)]
    Http(#[from] http::HttpError),
    /// The notifier could not be made.
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
    /// Binding or serving failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether an address is reachable only from this machine.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Run the orchestrator until SIGTERM or Ctrl-C (or `stop` fires), then
/// shut down gracefully. `ready` receives the bound address (the port,
/// when 0 was asked for).
pub async fn serve(
    config: Config,
    loader: Option<Arc<Loader>>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    // The HTTP settings first: a wrong one stops the start before anything.
    let http = http::Http::new(&config.http, config.listen)?;
    let store = Arc::new(Store::open_location(&config.state)?);
    let mut opts = Options::for_state(&config.data_dir.join("state.db"), config.providers.clone());
    opts.max_parallel = config.max_parallel;
    // No run is kept longer than the server's retention.
    opts.retention_cap_days = Some(config.retention_days);
    // Submitted workflows are evaluated in KCL worker processes.
    let evaluator = orchestrator::Evaluator::start(&config.kcl, loader.as_deref(), config.limits.max_pending).await;
    let orch = Orchestrator::new(store, opts, loader, config.limits, evaluator);
    // A submitted workflow's logging.dir is a directory under the server's
    // own.
    orch.keep_logs_under(std::path::absolute(&config.logs_dir).unwrap_or_else(|_| config.logs_dir.clone()));
    // Tokens on loopback too; --no-auth only there.
    let auth = auth::Auth::start(&config, orch.store().clone())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    // Before any run is taken up, so every run that ends is told; queued
    // deliveries of an earlier start are sent from here on.
    let notifier = notify::Notifier::new(orch.store().clone(), config.notifications.clone())?;
    orch.set_notifier(notifier.clone());
    tokio::spawn(notifier.deliver(orch.stopping.clone()));
    orch.recover()?;
    cluster::start(&orch);
    tokio::spawn(orch.clone().dispatch());
    tokio::spawn(cleanup_logs(orch.clone()));
    schedules::start(&orch);
    tracing::info!(
        %addr,
        auth = auth.required(),
        max_running = config.limits.max_running,
        max_pending = config.limits.max_pending,
        state = %config.state.display(),
        instance = orch.store().instance(),
        shared = orch.store().is_shared(),
        "drover orchestrator listening"
    );
    ready(addr);
    let app = api::router(orch.clone(), auth);
    let app = http.guard(app, addr);
    let stopping = orch.stopping.clone();
    let signal = {
        let stopping = stopping.clone();
        async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                _ = stopping.cancelled() => {}
            }
            tracing::info!("shutting down: no new requests");
            // Streams end when this fires, so the HTTP shutdown can finish.
            stopping.cancel();
        }
    };
    // Returns once every connection is closed: idle ones at once, the
    // rest within the HTTP grace; the runs are checkpointed regardless.
    http.serve(listener, app, signal).await;
    orch.shutdown(config.shutdown_grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// Remove finished runs past their retention, hourly: their journals and
/// log directories together, so what is removed is always a run the state
/// store knows (never a directory it does not).
async fn cleanup_logs(orch: Arc<Orchestrator>) {
    loop {
        // Finished runs past their workflow's retention_days (at most the
        // server's) go, with their journals and logs; runs in progress or
        // resumable never.
        let pruned = {
            let (store, opts) = (orch.store().clone(), orch.options().clone());
            tokio::task::spawn_blocking(move || {
                drover_exec::run::prune(&store, &opts, None, drover_exec::scheduler::now_ms())
            })
            .await
        };
        match pruned {
            Ok(Ok(ids)) if !ids.is_empty() => tracing::info!(runs = ids.len(), "removed runs past retention"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "run retention failed"),
            Err(e) => tracing::warn!(error = %e, "run retention failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = orch.stopping.cancelled() => return,
        }
    }
}
