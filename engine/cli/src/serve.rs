//! `drover serve`: the orchestrator (HTTP API and scheduler) on the
//! embedded state store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use drover_core::model::{LogFormat, LogLevel};
use drover_server::logging::{self, LogSettings};
use drover_server::{Config, Limits};

/// Options of `drover serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Beyond loopback, every endpoint but /healthz
    /// requires the bearer token.
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    listen: SocketAddr,
    /// The state database (an SQLite file, or sqlite://PATH); one server
    /// (or `drover run`) owns it at a time.
    #[arg(long, env = "DROVER_STATE", value_name = "PATH", value_parser = crate::state_location)]
    state: Option<PathBuf>,
    /// Runs executing at once.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_running: u32,
    /// Runs waiting at most; submissions beyond are refused with 429.
    #[arg(long, default_value_t = 100, value_name = "M")]
    max_pending: u32,
    /// Require the bearer token on loopback too.
    #[arg(long)]
    require_token: bool,
    /// The API token file: read, or generated (mode 0600) on first start.
    /// DROVER_TOKEN, when set, is the token instead. Default: api-token
    /// next to the state database.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A read-only token that opens /metrics only (for Prometheus).
    #[arg(long, env = "DROVER_METRICS_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// On SIGTERM: how long running tasks may finish before runs are
    /// checkpointed (aborted, resumed at the next start).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    shutdown_grace: u64,
    /// The server's log directory (per-run files in <DIR>/<run>/).
    #[arg(long, default_value = "logs", value_name = "DIR")]
    logs: PathBuf,
    /// Log format on stdout and in the server's files.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    log_format: Format,
    /// Minimum level (RUST_LOG, when set, takes precedence).
    #[arg(long, value_enum, default_value_t = Level::Info)]
    log_level: Level,
    /// Days logs are kept (0: forever).
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    log_retention_days: u32,
    /// At most this many tasks at once in every run (overrides workflows).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    parallel: Option<u32>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Run the server until SIGTERM or Ctrl-C.
pub fn main(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let state = args.state.clone().unwrap_or_else(drover_exec::default_state_path);
    let _guard = logging::init(&LogSettings {
        format: match args.log_format {
            Format::Json => LogFormat::Json,
            Format::Text => LogFormat::Text,
        },
        level: match args.log_level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        },
        logs_dir: args.logs.clone(),
        retention_days: args.log_retention_days,
    })?;
    // Without the KCL engine the server still serves runs it has; it
    // refuses submissions, saying why.
    let loader = match drover_kcl::Loader::discover() {
        Ok(l) => Some(Arc::new(l)),
        Err(e) => {
            tracing::warn!(error = %e, "no KCL engine: submissions will be refused");
            None
        }
    };
    let token_file = args.token_file.clone().unwrap_or_else(|| {
        state
            .parent()
            .map(|d| d.join("api-token"))
            .unwrap_or_else(|| "api-token".into())
    });
    let config = Config {
        listen: args.listen,
        state,
        limits: Limits {
            max_running: args.max_running as usize,
            max_pending: args.max_pending as usize,
        },
        always_authenticate: args.require_token,
        token: std::env::var("DROVER_TOKEN").ok(),
        token_file,
        metrics_token: args.metrics_token.clone(),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        logs_dir: args.logs.clone(),
        retention_days: args.log_retention_days,
        max_parallel: args.parallel,
        providers: drover_registry::providers(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(drover_server::serve(config, loader, |addr| {
        // The one line a supervisor (or a test) waits for.
        eprintln!("drover: listening on http://{addr}");
    }))?;
    Ok(ExitCode::SUCCESS)
}
