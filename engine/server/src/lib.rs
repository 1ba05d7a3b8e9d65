//! drover's orchestrator server: `drover serve`.
//!
//! Layout:
//! - [`orchestrator`]: the FIFO run queue in front of the executor, crash
//!   recovery, operator commands, graceful shutdown.
//! - [`api`]: the axum router, handlers, SSE streams, the OpenAPI document.
//! - [`wire`]: every request and response body (the wire format).
//! - [`auth`]: bearer tokens.
//! - [`metrics`]: the Prometheus registry.
//! - [`logs`]: a run's numbered output stream, resumable by event id.
//! - [`logging`]: structured logs (tracing-subscriber): stdout and per-run
//!   files, retention.
//!
//! Architecture invariant: only this crate knows HTTP. What the API shows
//! about a run is rebuilt from the journal, so it is the same before and
//! after a restart.

pub mod api;
pub mod auth;
pub mod error;
pub mod logging;
pub mod logs;
pub mod metrics;
pub mod orchestrator;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_exec::Options;
use drover_kcl::Loader;
use drover_state::Store;

pub use orchestrator::{Limits, Orchestrator};

/// How `drover serve` runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The state database.
    pub state: PathBuf,
    /// Queue limits.
    pub limits: Limits,
    /// Require a token even on loopback.
    pub always_authenticate: bool,
    /// The API token (DROVER_TOKEN), else read from / generated into
    /// `token_file`.
    pub token: Option<String>,
    /// Where the API token is kept.
    pub token_file: PathBuf,
    /// A read-only token for /metrics.
    pub metrics_token: Option<String>,
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
    let store = Arc::new(Store::open(&config.state)?);
    let mut opts = Options::for_state(&config.state, config.providers.clone());
    opts.max_parallel = config.max_parallel;
    let orch = Orchestrator::new(store, opts, loader, config.limits);
    orch.add_log_dir(&config.logs_dir, config.retention_days);
    let auth = if config.always_authenticate || !is_loopback(&config.listen) {
        let token = auth::load_or_create(config.token.clone(), &config.token_file)?;
        auth::Auth::with_tokens(token, config.metrics_token.clone())
    } else {
        auth::Auth::open()
    };
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
    orch.recover()?;
    tokio::spawn(orch.clone().dispatch());
    tokio::spawn(cleanup_logs(orch.clone()));
    tracing::info!(
        %addr,
        auth = auth.required(),
        max_running = config.limits.max_running,
        max_pending = config.limits.max_pending,
        state = %config.state.display(),
        "drover orchestrator listening"
    );
    ready(addr);
    let app = api::router(orch.clone(), auth);
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
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    orch.shutdown(config.shutdown_grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// Remove run logs past their retention, hourly.
async fn cleanup_logs(orch: Arc<Orchestrator>) {
    loop {
        // Finished runs past their workflow's retention_days go, with
        // their journals and logs; runs in progress or resumable never.
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
        // Log directories left without a run: by age, never one of a run
        // that is still going or can be resumed.
        let runs = {
            let store = orch.store().clone();
            tokio::task::spawn_blocking(move || store.runs())
                .await
                .ok()
                .and_then(Result::ok)
        };
        // Without the list of runs nothing is removed this time.
        let unfinished: Option<std::collections::HashSet<String>> = runs.map(|runs| {
            runs.into_iter()
                .filter(|r| !r.status.is_final())
                .map(|r| r.id)
                .collect()
        });
        for (dir, days) in orch.log_dirs().into_iter().filter(|_| unfinished.is_some()) {
            let unfinished = unfinished.as_ref();
            let keep = |name: &str| unfinished.is_none_or(|u| u.contains(name));
            match logging::cleanup(&dir, days, std::time::SystemTime::now(), &keep) {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(dir = %dir.display(), removed = removed.len(), days, "removed logs past retention")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "log cleanup failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = orch.stopping.cancelled() => return,
        }
    }
}
