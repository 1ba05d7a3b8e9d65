//! `drover serve`: the orchestrator (HTTP API, web dashboard, scheduler) on the
//! embedded state store, or on PostgreSQL shared with other instances.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use drover_core::model::{LogFormat, LogLevel};
use drover_server::http::{HttpConfig, TlsFiles};
use drover_server::logging::{self, LogSettings};
use drover_server::{Config, KclSettings, Limits};
use drover_state::Location;

/// Options of `drover serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Every endpoint but /healthz requires a bearer
    /// token (loopback included, unless --no-auth).
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM, the server's own
    /// certificate first; needs --tls-key). Beyond loopback the server
    /// starts only with TLS or --insecure-http.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP beyond loopback: only behind a proxy that
    /// terminates TLS, or tokens and workflows cross the network in clear.
    #[arg(long, conflicts_with = "tls_cert")]
    insecure_http: bool,
    /// A name clients reach the server by (repeatable; no port). A request
    /// whose Host header names anything but these, localhost, a loopback
    /// address or the --listen address is refused (421), so a web page
    /// cannot reach the API by DNS rebinding.
    #[arg(long = "public-name", value_name = "NAME")]
    public_names: Vec<String>,
    /// Connections open at once. At the limit a new connection takes the
    /// place of the one idle longest; when every one is serving a request,
    /// new ones are closed at once. Must fit under `ulimit -n` with 64 to
    /// spare (the soft limit is raised up to the hard one if needed).
    #[arg(long, default_value_t = 512, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Seconds a connection has for its TLS handshake and for each
    /// request's headers; keep-alive connections idle as long are closed.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// On SIGTERM: how long requests in progress may take to finish before
    /// their connections are dropped (idle connections close at once, event
    /// streams end at once). Runs then get --shutdown-grace.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    shutdown_http_grace: u64,
    /// The state database: an SQLite file (or sqlite://PATH), which one
    /// server (or `drover run`) owns at a time; or a PostgreSQL database
    /// (postgres://USER[:PASSWORD]@HOST:PORT/DB) shared by several
    /// servers, which divide the runs between them under leases.
    #[arg(long, env = "DROVER_STATE", value_name = "PATH|URL", value_parser = crate::StateArg(Location::parse))]
    state: Option<Location>,
    /// Where this server keeps submitted sources, run logs and reports.
    /// Default: the SQLite file's directory; with a PostgreSQL store,
    /// $XDG_DATA_HOME/drover (~/.local/share/drover).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// With a PostgreSQL store: seconds a lease on a run lasts unless
    /// renewed. A server that stops (killed, cut off from the database)
    /// loses its runs to the others after this; it renews every quarter
    /// of it, and stops its runs itself after two thirds without renewal.
    #[arg(long, default_value_t = 15.0, value_name = "SECS", value_parser = lease_ttl)]
    lease_ttl: f64,
    /// Runs executing at once.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_running: u32,
    /// Runs waiting at most; submissions beyond are refused with 429.
    #[arg(long, default_value_t = 100, value_name = "M")]
    max_pending: u32,
    /// Ask for no token at all. Anyone who can connect to the port — any
    /// local user, any local process — can then submit workflows, whose
    /// scripts run on your servers, and steer every run; actions are
    /// recorded as "anonymous (--no-auth)". Allowed only with a loopback
    /// --listen address.
    #[arg(long)]
    no_auth: bool,
    /// The admin token's file (token "local-admin"): read, or generated
    /// (mode 0600) on first start; refused unless it is this user's alone.
    /// DROVER_TOKEN, when set, is the admin token instead ("env-admin").
    /// Default: api-token next to the state database, where `drover batch`
    /// and `drover token` on this machine find it.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A file holding a token that opens /metrics only (for Prometheus);
    /// it must be this user's alone (mode 0600). DROVER_METRICS_TOKEN, when
    /// set, is that token instead of a file.
    #[arg(long, value_name = "FILE")]
    metrics_token_file: Option<PathBuf>,
    /// Refused: a token on the command line is visible to every local user
    /// (ps, /proc). Use --metrics-token-file or DROVER_METRICS_TOKEN.
    #[arg(long, value_name = "TOKEN", hide = true)]
    metrics_token: Option<String>,
    /// On SIGTERM: how long running tasks may finish before runs are
    /// checkpointed (aborted, resumed at the next start).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    shutdown_grace: u64,
    /// Server-wide notification targets: a JSON file holding a list of
    /// NotificationDef (or {"notifications": [...]}), or a KCL file (.k)
    /// setting `notifications = [drover.NotificationDef {...}]`, as a workflow's
    /// `notifications` (webhook, slack, script; events; cooldown). Used
    /// for runs whose workflow declares none, and for the server's own
    /// events (drift found, schedule missed). Checked at start. Deliveries
    /// are journaled and retried: GET /notifications shows them.
    #[arg(long, value_name = "FILE")]
    notifications: Option<PathBuf>,
    /// The server's log directory: a run's logs go to
    /// <DIR>/<its workflow's logging.dir>/<run>/ (an absolute logging.dir,
    /// or one with `..`, is refused).
    #[arg(long, default_value = "logs", value_name = "DIR")]
    logs: PathBuf,
    /// Log format on stdout and in the server's files.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    log_format: Format,
    /// Minimum level (RUST_LOG, when set, takes precedence).
    #[arg(long, value_enum, default_value_t = Level::Info)]
    log_level: Level,
    /// At most this many days a finished run (its journal and logs) is
    /// kept, whatever its workflow's logging.retention_days (0: as long as
    /// that says).
    #[arg(long, default_value_t = 30, value_name = "DAYS")]
    log_retention_days: u32,
    /// At most this many tasks at once in every run (overrides workflows).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    parallel: Option<u32>,
    /// A directory whose .k files may be submitted by path (repeatable).
    /// A path is taken relative to the first one, symlinks are resolved,
    /// and it must end up under one of them. Default: <drover home>/workflows
    /// when it exists; with none, submissions by path are refused.
    #[arg(long = "workflows-dir", value_name = "DIR", value_parser = workflows_dir)]
    workflows_dirs: Vec<PathBuf>,
    /// KCL worker processes: submitted workflows are evaluated in these,
    /// this many at once, never in the server (each confined: only the
    /// schemas, the workflows directories and a scratch directory of its
    /// own are readable; no environment). Default: the number of CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    kcl_workers: Option<u32>,
    /// Seconds one evaluation of a submitted workflow may take; a longer
    /// one is stopped (its worker replaced) and refused with 422.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    kcl_timeout: u64,
    /// Memory (address space, MiB) of each KCL worker, its 16 MiB
    /// evaluation stack included; an evaluation that needs more is refused
    /// with 422.
    #[arg(long, default_value_t = 2048, value_name = "MIB", value_parser = clap::value_parser!(u64).range(256..))]
    kcl_memory: u64,
}

/// A `--lease-ttl`: between 0.3 s and an hour.
fn lease_ttl(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.3..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds between 0.3 and 3600")),
    }
}

/// A `--workflows-dir`: an existing directory.
fn workflows_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(format!("{s} is not a directory"))
    }
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
    if args.metrics_token.is_some() {
        // Refused rather than unknown: say where the token goes instead.
        eprintln!(
            "drover: --metrics-token puts the token on the command line, where every local user can read it (ps, \
             /proc/PID/cmdline); put it in a file of your own (mode 0600) and give --metrics-token-file FILE, or set \
             DROVER_METRICS_TOKEN"
        );
        return Ok(ExitCode::from(2));
    }
    let state = args
        .state
        .clone()
        .unwrap_or_else(|| Location::Sqlite(drover_exec::default_state_path()));
    let data_dir = args.data_dir.clone().unwrap_or_else(|| match &state {
        Location::Sqlite(p) => p.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")),
        Location::Postgres(_) => drover_exec::default_state_path()
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".")),
    });
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
    let workflows_dirs = if args.workflows_dirs.is_empty() {
        let home = match &loader {
            Some(l) => Some(l.home().clone()),
            None => drover_kcl::Home::discover().ok(),
        };
        home.map(|h| h.root().join("workflows"))
            .filter(|d| d.is_dir())
            .into_iter()
            .collect()
    } else {
        args.workflows_dirs.clone()
    };
    let token_file = args.token_file.clone().unwrap_or_else(|| data_dir.join("api-token"));
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    let notifications = match &args.notifications {
        None => Vec::new(),
        Some(file) => crate::fleet::watch::notification_targets(file, loader.as_deref())?,
    };
    let config = Config {
        listen: args.listen,
        http: HttpConfig {
            max_connections: args.max_connections as usize,
            header_timeout: Duration::from_secs(args.header_timeout),
            shutdown_grace: Duration::from_secs(args.shutdown_http_grace),
            tls: args
                .tls_cert
                .clone()
                .zip(args.tls_key.clone())
                .map(|(cert, key)| TlsFiles { cert, key }),
            insecure_http: args.insecure_http,
            public_names: args.public_names.clone(),
        },
        state,
        data_dir,
        limits: Limits {
            max_running: args.max_running as usize,
            max_pending: args.max_pending as usize,
            lease_ttl: Duration::from_secs_f64(args.lease_ttl),
        },
        no_auth: args.no_auth,
        token: std::env::var("DROVER_TOKEN").ok(),
        token_file,
        metrics_token: std::env::var("DROVER_METRICS_TOKEN").ok(),
        metrics_token_file: args.metrics_token_file.clone(),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        logs_dir: args.logs.clone(),
        retention_days: args.log_retention_days,
        max_parallel: args.parallel,
        providers: drover_registry::providers(),
        kcl: KclSettings {
            // The workers are this binary (`drover kcl-worker`).
            worker: (std::env::current_exe()?, vec!["kcl-worker".into()]),
            workers: args.kcl_workers.map_or_else(
                || std::thread::available_parallelism().map_or(1, usize::from),
                |n| n as usize,
            ),
            timeout: Duration::from_secs(args.kcl_timeout),
            memory_bytes: args.kcl_memory << 20,
            workflows_dirs,
        },
        notifications,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(drover_server::serve(config, loader, |addr| {
        // The one line a supervisor (or a test) waits for.
        eprintln!("drover: listening on {scheme}://{addr}");
    }))?;
    Ok(ExitCode::SUCCESS)
}
