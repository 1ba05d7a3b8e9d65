//! Several orchestrators on one PostgreSQL store, against one on SQLite:
//! submissions per second, tasks per second and the takeover of a killed
//! instance's run, side by side in one run.
//!
//! The benchmark starts a throwaway PostgreSQL cluster (drover-testkit,
//! fsync and synchronous commit on: as durable as SQLite's
//! synchronous=FULL) and real `drover serve` processes (the binary next
//! to this one) on loopback, each with its own data directory, logs and
//! port, sharing one admin token (DROVER_TOKEN). Tasks are the
//! deterministic test taskservs of engine/exec/tests/home (`behave.sh`)
//! on `connection = "local"` servers. Four configurations, each on a
//! fresh store, the same `--max-running` and `--max-pending` (limits
//! across instances on PostgreSQL), in interleaved rounds:
//!
//! - `sqlite`: one instance on SQLite, the embedded default: the baseline
//!   every ratio is against;
//! - `pg1`, `pg2`, `pg3`: one, two and three instances on one PostgreSQL
//!   database.
//!
//! In each:
//!
//! 1. submissions: `--clients` clients (16) make `--submissions`
//!    submissions (80) (`POST /workflows/batch {"path": ...}`) of a small
//!    workflow (one server: create + one install), the i-th to instance
//!    i mod n; accepted per second, over the time until the last was
//!    accepted. Every run must then finish, succeeded, none lost.
//! 2. tasks: `--workflows` workflows (8) of `--servers` servers (20) × 5
//!    tasks (create + installs a → b, c → d, each a no-op script) are
//!    submitted at once, round-robin; completed tasks per second, from
//!    the first submission until every run finished (succeeded; every
//!    install ran exactly once, by the control directory's log).
//!
//! Then the takeover, `--takeovers` rounds (3) of each:
//!
//! - PostgreSQL, two instances with `--lease-ttl T` (3 s): a run of 6
//!   servers × 4 installs of `sleep 1` (max_parallel 4) is submitted to A
//!   alone; once A executes it (its status names A), B starts; once 8
//!   installs ran, A is killed with SIGKILL. Measured from the kill, in
//!   the run's journal read from B (`GET /workflows/{id}/events`): the
//!   resumed `run_started` (B took the run over: expected within T and a
//!   claim interval), B's first task, the run's end. The excess over T is
//!   printed too. The two instances have data directories of their own
//!   but one `providers` directory (a symlink): the local provider keeps
//!   the servers it made there, and B must see those A made, as it would
//!   a cloud provider's.
//! - SQLite, one instance: the same run, SIGKILL, and `drover serve` on
//!   the same file started again at once (an operator's restart): the
//!   same times.
//!
//! Every journal of a takeover is checked: every task succeeded exactly
//! once, none started again after it succeeded. Everything the benchmark
//! starts (servers, the PostgreSQL cluster) is gone when it ends, also on
//! error or Ctrl-C. The servers' output is kept in
//! target/bench-cluster/*.log.
//!
//! Usage: drover-bench-cluster [--clients N] [--submissions N]
//!        [--workflows N] [--servers N] [--rounds R] [--takeovers R]
//!        [--lease-ttl T] [--json FILE] (`--help` for the options).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use drover_bench::figures::{Better, Headline, Report, Stat, num, percentile};
use drover_bench::server::drover_binary;
use drover_testkit::postgres as pg;
use serde_json::{Value, json};

/// Several `drover serve` instances on one PostgreSQL store against one on
/// SQLite: submissions/s and tasks/s with 1, 2 and 3 instances, and the
/// takeover of a SIGKILLed instance's run against an operator's restart
/// on SQLite. Run it from the repository root (`make bench` does), with
/// the release build of drover next to it and PostgreSQL installed.
#[derive(Debug, Parser)]
#[command(name = "drover-bench-cluster", version, about, long_about)]
struct Args {
    /// Clients submitting at once.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    clients: usize,
    /// Submissions per configuration and round.
    #[arg(long, default_value_t = 80, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    submissions: usize,
    /// Workflows of the tasks phase.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    workflows: usize,
    /// Servers of each of those workflows (5 tasks each).
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    servers: usize,
    /// max_parallel of each of those workflows.
    #[arg(long, default_value_t = 10, value_name = "P", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    parallel: usize,
    /// Rounds of the throughput phases (every configuration in each); median, min–max.
    #[arg(long, default_value_t = 2, value_name = "R", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    rounds: usize,
    /// Rounds of the takeover (PostgreSQL and SQLite in each).
    #[arg(long, default_value_t = 3, value_name = "R", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    takeovers: usize,
    /// The instances' --lease-ttl in the takeover, seconds.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    lease_ttl: f64,
    /// Every server's --max-running (across instances on PostgreSQL).
    #[arg(long, default_value_t = 8, value_name = "R", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    max_running: usize,
    /// Every server's --max-pending.
    #[arg(long, default_value_t = 1000, value_name = "P")]
    max_pending: usize,
    /// Write every figure to this JSON file (read by scripts/bench.py).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Tasks per server of the tasks phase: creation and four installs.
const PER_SERVER: usize = 5;
/// Servers of the takeover's run.
const TAKEOVER_SERVERS: usize = 6;
/// Its max_parallel.
const TAKEOVER_PARALLEL: usize = 4;
/// Installs done when the instance is killed.
const KILL_AFTER: usize = 8;

/// A configuration: the store and how many instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Config {
    postgres: bool,
    instances: usize,
}

impl Config {
    const ALL: [Config; 4] = [
        Config {
            postgres: false,
            instances: 1,
        },
        Config {
            postgres: true,
            instances: 1,
        },
        Config {
            postgres: true,
            instances: 2,
        },
        Config {
            postgres: true,
            instances: 3,
        },
    ];

    fn key(self) -> String {
        if self.postgres {
            format!("pg{}", self.instances)
        } else {
            "sqlite".into()
        }
    }

    fn label(self) -> String {
        match (self.postgres, self.instances) {
            (false, _) => "SQLite, 1 instance".into(),
            (true, 1) => "PostgreSQL, 1 instance".into(),
            (true, n) => format!("PostgreSQL, {n} instances"),
        }
    }
}

/// A `drover serve` child: SIGKILLed when dropped (and when this process
/// dies: PR_SET_PDEATHSIG).
#[derive(Debug)]
struct Instance {
    child: Child,
    url: String,
}

impl Instance {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, reaped.
    fn kill(&mut self) -> Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every server of the benchmark shares.
#[derive(Debug)]
struct Ctx {
    drover: PathBuf,
    home: PathBuf,
    venv: PathBuf,
    token: String,
    logs: PathBuf,
    max_running: usize,
    max_pending: usize,
    client: reqwest::Client,
    api: Arc<ClientCtx>,
}

impl Ctx {
    /// Start `drover serve` on `state` with its data in `dir`, workflows
    /// submitted by path from `workflows`; returns once it listens. Its
    /// stdout and stderr go to target/bench-cluster/<name>.log. Call it on
    /// the main thread (the child dies with the thread that made it).
    fn start(&self, name: &str, state: &str, dir: &Path, workflows: &Path, ttl: Option<f64>) -> Result<Instance> {
        std::fs::create_dir_all(dir)?;
        let log_path = self.logs.join(format!("{name}.log"));
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        writeln!(
            log,
            "=== {name}: drover serve --state {state} (at {:.3})",
            epoch_ms() / 1e3
        )?;
        let mut cmd = Command::new(&self.drover);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--log-format",
            "text",
        ])
        .arg("--state")
        .arg(state)
        .arg("--data-dir")
        .arg(dir)
        .arg("--logs")
        .arg(dir.join("logs"))
        .arg("--workflows-dir")
        .arg(workflows)
        .args(["--max-running", &self.max_running.to_string()])
        .args(["--max-pending", &self.max_pending.to_string()]);
        if let Some(t) = ttl {
            cmd.args(["--lease-ttl", &t.to_string()]);
        }
        cmd.current_dir(dir)
            .env("DROVER_HOME", &self.home)
            .env("DROVER_VENV", &self.venv)
            .env("DROVER_TOKEN", &self.token)
            .env_remove("DROVER_STATE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting drover serve")?;
        let stderr = child.stderr.take().context("no stderr")?;
        // Copy stderr to the log, handing over the line saying where it
        // listens.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if let Some(rest) = line.strip_prefix("drover: listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let instance = |child, url| Instance { child, url };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => Ok(instance(child, url)),
            Err(_) => {
                drop(instance(child, String::new()));
                bail!(
                    "drover serve ({name}) did not listen within 60 s; see {}",
                    log_path.display()
                );
            }
        }
    }

    async fn get(&self, url: &str) -> Result<Value> {
        let r = self.client.get(url).send().await?;
        let status = r.status();
        if !status.is_success() {
            bail!("GET {url} answered {status}: {}", r.text().await.unwrap_or_default());
        }
        Ok(r.json().await?)
    }

    /// Wait until every run of `ids` is finished (the store's list, read
    /// from `url`); each must have succeeded.
    async fn wait_finished(&self, url: &str, ids: &BTreeSet<String>, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.get(&format!("{url}/workflows")).await?;
            let runs = v["runs"].as_array().cloned().unwrap_or_default();
            let mine: Vec<&Value> = runs
                .iter()
                .filter(|r| r["run_id"].as_str().is_some_and(|id| ids.contains(id)))
                .collect();
            if mine.len() != ids.len() {
                bail!("the store lists {} of the {} accepted runs", mine.len(), ids.len());
            }
            let unfinished = mine
                .iter()
                .filter(|r| matches!(r["status"].as_str(), Some("queued" | "running" | "paused")))
                .count();
            if unfinished == 0 {
                if let Some(bad) = mine.iter().find(|r| r["status"] != "succeeded") {
                    bail!("a run did not succeed: {bad}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{unfinished} runs still unfinished after {} s", within.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A run's journal, as `GET /workflows/{id}/events` streams it.
    async fn journal(&self, url: &str, id: &str) -> Result<Vec<Value>> {
        let r = self.client.get(format!("{url}/workflows/{id}/events")).send().await?;
        if !r.status().is_success() {
            bail!("GET /workflows/{id}/events answered {}", r.status());
        }
        let text = r.text().await?;
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str(d.trim()).context("an event that is not JSON"))
            .collect()
    }
}

/// One configuration's round.
#[derive(Debug, Default)]
struct Throughput {
    submissions_per_s: f64,
    accept_s: f64,
    submit_latency_ms: Vec<f64>,
    refusals: u32,
    submitted_finished_s: f64,
    tasks_per_s: f64,
    tasks_wall_s: f64,
    tasks_submit_s: f64,
}

/// One takeover (or restart).
#[derive(Debug, Default)]
struct Takeover {
    /// Kill to the resumed run_started in the journal, s.
    resumed_s: f64,
    /// Kill to the first task started after it, s.
    first_task_s: f64,
    /// Kill to the run's end, s.
    finished_s: f64,
    /// Kill to the restarted server listening (SQLite only), s.
    listening_s: Option<f64>,
    /// Installs in flight at the kill that ran again.
    rerun_scripts: usize,
    /// Tasks succeeded at the kill.
    done_at_kill: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // block_on runs `bench` on this thread: the servers it starts die with
    // it. On Ctrl-C (or bench.py's SIGINT) `bench` is dropped, and with it
    // every server and the PostgreSQL cluster.
    rt.block_on(async {
        tokio::select! {
            r = bench(args) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })
}

async fn bench(args: Args) -> Result<()> {
    let root = std::env::current_dir()?;
    let home = root.join("engine/exec/tests/home");
    if !home.join("taskservs/behave.sh").is_file() {
        bail!("{} not found: run from the repository root", home.display());
    }
    if !pg::available() {
        bail!("PostgreSQL is not installed (initdb, postgres, pg_ctl, psql): `make setup` installs it");
    }
    let logs = root.join("target/bench-cluster");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    let token = token()?;
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
    auth.set_sensitive(true);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .default_headers([(reqwest::header::AUTHORIZATION, auth)].into_iter().collect())
        .build()?;
    let ctx = Ctx {
        drover: drover_binary()?,
        home,
        venv: root.join(".venv"),
        token,
        logs: logs.clone(),
        max_running: args.max_running,
        max_pending: args.max_pending,
        api: Arc::new(ClientCtx { client: client.clone() }),
        client,
    };
    let base = tempfile::Builder::new()
        .prefix("drover-bench-cluster")
        .tempdir_in("/var/tmp")?;
    let tasks = args.workflows * args.servers * PER_SERVER;
    let mut report = Report::new("cluster", "Several orchestrators on PostgreSQL against one on SQLite");
    report.params = json!({
        "clients": args.clients, "submissions": args.submissions, "workflows": args.workflows,
        "servers": args.servers, "parallel": args.parallel, "tasks": tasks, "rounds": args.rounds,
        "takeovers": args.takeovers, "lease_ttl_s": args.lease_ttl, "max_running": args.max_running,
        "max_pending": args.max_pending, "takeover_servers": TAKEOVER_SERVERS,
        "takeover_parallel": TAKEOVER_PARALLEL, "kill_after_installs": KILL_AFTER,
    });

    let started = Instant::now();
    let cluster = pg::Cluster::start().context("starting PostgreSQL")?;
    let cluster_start_s = started.elapsed().as_secs_f64();
    let setting = |name: &str| cluster.psql(&format!("SHOW {name}")).map(|s| s.trim().to_string());
    let pg_settings = json!({
        "server_version": setting("server_version")?,
        "fsync": setting("fsync")?,
        "synchronous_commit": setting("synchronous_commit")?,
        "full_page_writes": setting("full_page_writes")?,
    });
    println!(
        "cluster benchmark: PostgreSQL {} on 127.0.0.1:{} (fsync {}, synchronous_commit {}; started in {cluster_start_s:.1} s); \
         --max-running {} --max-pending {} on every server; servers' output in {}",
        pg_settings["server_version"].as_str().unwrap_or("?"),
        cluster.port(),
        pg_settings["fsync"].as_str().unwrap_or("?"),
        pg_settings["synchronous_commit"].as_str().unwrap_or("?"),
        args.max_running,
        args.max_pending,
        logs.strip_prefix(&root).unwrap_or(&logs).display(),
    );
    println!(
        "  submissions: {} clients, {} small workflows (1 server: create + 1 install); tasks: {} workflows × {} servers × {PER_SERVER} = {tasks} tasks (max_parallel {})",
        args.clients, args.submissions, args.workflows, args.servers, args.parallel
    );

    let mut db = 0usize;
    let mut fresh_db = || -> Result<String> {
        db += 1;
        cluster.psql(&format!("CREATE DATABASE bench{db}"))?;
        Ok(format!(
            "postgres://{}@127.0.0.1:{}/bench{db}",
            pg::USER,
            cluster.port()
        ))
    };

    // Throughput, interleaved: every configuration in each round.
    let mut measured: BTreeMap<String, Vec<Throughput>> = BTreeMap::new();
    for round in 0..args.rounds {
        for config in Config::ALL {
            let key = config.key();
            let dir = base.path().join(format!("r{round}-{key}"));
            let state = if config.postgres {
                fresh_db()?
            } else {
                dir.join("state.db").display().to_string()
            };
            let t = throughput(&ctx, &args, config, &state, &dir, &format!("r{}-{key}", round + 1)).await?;
            println!(
                "round {} {:<26} {:>6.1} submissions/s (p50 {:.0} ms), {:>6.0} tasks/s ({tasks} tasks in {:.2} s)",
                round + 1,
                config.label(),
                t.submissions_per_s,
                percentile(&sorted(&t.submit_latency_ms), 0.5),
                t.tasks_per_s,
                t.tasks_wall_s,
            );
            measured.entry(key).or_default().push(t);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    // Takeover, interleaved: PostgreSQL, then SQLite's restart.
    let mut pg_takeovers = Vec::new();
    let mut sqlite_restarts = Vec::new();
    for round in 0..args.takeovers {
        let dir = base.path().join(format!("t{round}-pg"));
        let t = takeover_pg(&ctx, args.lease_ttl, &fresh_db()?, &dir, round + 1).await?;
        println!(
            "takeover {} PostgreSQL, 2 instances, lease TTL {} s: resumed on the other {:.2} s after the SIGKILL (TTL {:+.2} s), first task {:.2} s, finished {:.2} s",
            round + 1,
            args.lease_ttl,
            t.resumed_s,
            t.resumed_s - args.lease_ttl,
            t.first_task_s,
            t.finished_s
        );
        pg_takeovers.push(t);
        let _ = std::fs::remove_dir_all(&dir);
        let dir = base.path().join(format!("t{round}-sqlite"));
        let t = takeover_sqlite(&ctx, &dir, round + 1).await?;
        println!(
            "takeover {} SQLite, restart at once: listening {:.2} s, resumed {:.2} s after the SIGKILL, first task {:.2} s, finished {:.2} s",
            round + 1,
            t.listening_s.unwrap_or(f64::NAN),
            t.resumed_s,
            t.first_task_s,
            t.finished_s
        );
        sqlite_restarts.push(t);
        let _ = std::fs::remove_dir_all(&dir);
    }
    cluster.stop().context("stopping PostgreSQL")?;

    // Figures.
    let stat = |key: &str, f: fn(&Throughput) -> f64, unit| {
        Stat::new(
            unit,
            measured.get(key).map_or_else(Vec::new, |v| v.iter().map(f).collect()),
        )
    };
    let subs = |k: &str| stat(k, |t| t.submissions_per_s, "submissions/s");
    let rates = |k: &str| stat(k, |t| t.tasks_per_s, "tasks/s");
    let base_subs = subs("sqlite").median();
    let base_tasks = rates("sqlite").median();
    println!(
        "summary, median (min–max) of {} rounds; ratio: against SQLite, 1 instance (above 1: faster)",
        args.rounds
    );
    println!(
        "  {:<26} {:>24} {:>7} {:>24} {:>7}",
        "configuration", "submissions/s", "ratio", "tasks/s", "ratio"
    );
    let mut configs = Vec::new();
    for config in Config::ALL {
        let k = config.key();
        let (s, r) = (subs(&k), rates(&k));
        println!(
            "  {:<26} {:>24} {:>6.2}× {:>24} {:>6.2}×",
            config.label(),
            s.spread(1),
            s.median() / base_subs,
            r.spread(0),
            r.median() / base_tasks
        );
        let lat: Vec<f64> = sorted(
            &measured
                .get(&k)
                .map(|v| {
                    v.iter()
                        .flat_map(|t| t.submit_latency_ms.iter().copied())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
        configs.push(json!({
            "key": k,
            "label": config.label(),
            "store": if config.postgres { "postgres" } else { "sqlite" },
            "instances": config.instances,
            "submissions_per_s": s.json(),
            "submissions_ratio": num(s.median() / base_subs),
            "accept_s": stat(&k, |t| t.accept_s, "s").json(),
            "submit_latency_ms": {"n": lat.len(), "p50": num(percentile(&lat, 0.5)),
                "p99": num(percentile(&lat, 0.99)), "max": num(percentile(&lat, 1.0))},
            "refusals_429": measured.get(&k).map_or(0, |v| v.iter().map(|t| t.refusals).sum::<u32>()),
            "submitted_runs_finished_s": stat(&k, |t| t.submitted_finished_s, "s").json(),
            "tasks_per_s": r.json(),
            "tasks_ratio": num(r.median() / base_tasks),
            "tasks_wall_s": stat(&k, |t| t.tasks_wall_s, "s").json(),
            "tasks_submit_s": stat(&k, |t| t.tasks_submit_s, "s").json(),
        }));
    }
    let col = |v: &[Takeover], f: fn(&Takeover) -> f64| Stat::new("s", v.iter().map(f).collect());
    let pg_resumed = col(&pg_takeovers, |t| t.resumed_s);
    let pg_excess = Stat::new("s", pg_resumed.samples.iter().map(|s| s - args.lease_ttl).collect());
    let pg_first = col(&pg_takeovers, |t| t.first_task_s);
    let pg_finished = col(&pg_takeovers, |t| t.finished_s);
    let sq_resumed = col(&sqlite_restarts, |t| t.resumed_s);
    let sq_first = col(&sqlite_restarts, |t| t.first_task_s);
    let sq_finished = col(&sqlite_restarts, |t| t.finished_s);
    let sq_listening = col(&sqlite_restarts, |t| t.listening_s.unwrap_or(f64::NAN));
    println!(
        "takeover of a SIGKILLed instance's run, median (min–max) of {} rounds, s after the kill:",
        args.takeovers
    );
    println!(
        "  PostgreSQL, 2 instances, TTL {} s: resumed {} (excess over TTL {}), first task {}, finished {}",
        args.lease_ttl,
        pg_resumed.spread(2),
        pg_excess.spread(2),
        pg_first.spread(2),
        pg_finished.spread(2)
    );
    println!(
        "  SQLite, restart at once:          resumed {} (listening {}), first task {}, finished {}",
        sq_resumed.spread(2),
        sq_listening.spread(2),
        sq_first.spread(2),
        sq_finished.spread(2)
    );
    println!(
        "  every takeover's journal checked: every task succeeded exactly once, none started again after it succeeded"
    );

    let top = Config::ALL[3];
    let peers = |h: Headline, f: &dyn Fn(&str) -> Stat| {
        h.peer("1 instance on SQLite (the embedded default)", f("sqlite").figure())
            .peer("1 instance on PostgreSQL", f("pg1").figure())
            .peer("2 instances on PostgreSQL", f("pg2").figure())
    };
    report.headlines.push(peers(
        Headline::new(
            "cluster-submit",
            format!(
                "{} instances on one PostgreSQL: submissions accepted per second ({} clients, round-robin)",
                top.instances, args.clients
            ),
            "submissions/s",
            Better::Higher,
            subs(&top.key()).figure(),
        ),
        &subs,
    ));
    report.headlines.push(peers(
        Headline::new(
            "cluster-tasks",
            format!(
                "{} instances on one PostgreSQL: tasks completed per second ({tasks} no-op tasks in {} runs)",
                top.instances, args.workflows
            ),
            "tasks/s",
            Better::Higher,
            rates(&top.key()).figure(),
        ),
        &rates,
    ));
    report.headlines.push(
        Headline::new(
            "cluster-takeover",
            format!(
                "takeover of a SIGKILLed instance's run by another (PostgreSQL, lease TTL {} s): kill to the resumed run",
                args.lease_ttl
            ),
            "s",
            Better::Lower,
            pg_resumed.figure(),
        )
        .peer("SQLite: `drover serve` restarted at once on the same file", sq_resumed.figure())
        .note(format!(
            "takeover: {} s over the lease TTL of {} s (median); the run finished {} s after the kill (SQLite restart: {} s)",
            fmt2(pg_excess.median()),
            args.lease_ttl,
            fmt2(pg_finished.median()),
            fmt2(sq_finished.median())
        )),
    );
    let takeover_json = |v: &[Takeover]| {
        json!({
            "rerun_scripts": v.iter().map(|t| t.rerun_scripts).collect::<Vec<_>>(),
            "done_at_kill": v.iter().map(|t| t.done_at_kill).collect::<Vec<_>>(),
        })
    };
    report.results = json!({
        "tasks": tasks,
        "postgres": pg_settings,
        "sqlite": "synchronous=FULL (drover's default)",
        "cluster_start_s": cluster_start_s,
        "configs": configs,
        "takeover": {
            "ttl_s": args.lease_ttl,
            "tasks": TAKEOVER_SERVERS * PER_SERVER,
            "postgres": {
                "resumed_s": pg_resumed.json(),
                "excess_over_ttl_s": pg_excess.json(),
                "first_task_s": pg_first.json(),
                "finished_s": pg_finished.json(),
                "runs": takeover_json(&pg_takeovers),
            },
            "sqlite_restart": {
                "listening_s": sq_listening.json(),
                "resumed_s": sq_resumed.json(),
                "first_task_s": sq_first.json(),
                "finished_s": sq_finished.json(),
                "runs": takeover_json(&sqlite_restarts),
            },
            "ratio": num(sq_resumed.median() / pg_resumed.median()),
        },
        "exactly_once": true,
    });
    report.write(args.json.as_deref())
}

/// One configuration's round: its servers, the submissions, the tasks.
async fn throughput(ctx: &Ctx, args: &Args, config: Config, state: &str, dir: &Path, name: &str) -> Result<Throughput> {
    let wf = dir.join("workflows");
    std::fs::create_dir_all(&wf)?;
    let submit_ctl = dir.join("control-submit");
    let tasks_ctl = dir.join("control-tasks");
    std::fs::create_dir_all(&submit_ctl)?;
    std::fs::create_dir_all(&tasks_ctl)?;
    let submit_k = wf.join("submit.k");
    std::fs::write(&submit_k, workflow("submit", 1, &["a"], 1, &submit_ctl))?;
    let tasks_k = wf.join("tasks.k");
    std::fs::write(
        &tasks_k,
        workflow("tasks", args.servers, &["a", "b", "c", "d"], args.parallel, &tasks_ctl),
    )?;
    let mut instances = Vec::new();
    for i in 0..config.instances {
        // The default --lease-ttl (15 s) on PostgreSQL.
        instances.push(ctx.start(
            &format!("{name}-{}", i + 1),
            state,
            &dir.join(format!("i{i}")),
            &wf,
            None,
        )?);
    }
    let urls: Arc<Vec<String>> = Arc::new(instances.iter().map(|i| i.url.clone()).collect());
    let ctx_client = ctx.api.clone();
    let mut t = Throughput::default();

    // 1. Submissions.
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (next, urls, c, path, total) = (
            next.clone(),
            urls.clone(),
            ctx_client.clone(),
            submit_k.clone(),
            args.submissions,
        );
        clients.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(got);
                }
                let sent = Instant::now();
                let (id, refused) = c.submit(&urls[i % urls.len()], &path).await?;
                got.push((id, refused, sent.elapsed().as_secs_f64() * 1e3, Instant::now()));
            }
        }));
    }
    let mut ids = BTreeSet::new();
    let mut last = began;
    for c in clients {
        for (id, refused, ms, at) in c.await?? {
            if !ids.insert(id.clone()) {
                bail!("run id {id} was handed out twice");
            }
            t.refusals += refused;
            t.submit_latency_ms.push(ms);
            last = last.max(at);
        }
    }
    t.accept_s = last.duration_since(began).as_secs_f64();
    t.submissions_per_s = ids.len() as f64 / t.accept_s;
    ctx.wait_finished(&urls[0], &ids, Duration::from_secs(600)).await?;
    t.submitted_finished_s = began.elapsed().as_secs_f64();
    let ran = lines(&submit_ctl);
    if ran != args.submissions {
        bail!(
            "{ran} install scripts ran for {} submitted runs of one install each",
            args.submissions
        );
    }

    // 2. Tasks.
    let began = Instant::now();
    let mut subs = Vec::new();
    for i in 0..args.workflows {
        let (c, url, path) = (ctx_client.clone(), urls[i % urls.len()].clone(), tasks_k.clone());
        subs.push(tokio::spawn(async move { c.submit(&url, &path).await }));
    }
    let mut ids = BTreeSet::new();
    for s in subs {
        ids.insert(s.await??.0);
    }
    t.tasks_submit_s = began.elapsed().as_secs_f64();
    ctx.wait_finished(&urls[0], &ids, Duration::from_secs(600)).await?;
    t.tasks_wall_s = began.elapsed().as_secs_f64();
    let tasks = args.workflows * args.servers * PER_SERVER;
    t.tasks_per_s = tasks as f64 / t.tasks_wall_s;
    let ran = lines(&tasks_ctl);
    let want = args.workflows * args.servers * 4;
    if ran != want {
        bail!("{ran} install scripts ran, {want} expected (each exactly once)");
    }
    drop(instances);
    Ok(t)
}

/// The bare client, for tasks spawned on the runtime.
#[derive(Debug)]
struct ClientCtx {
    client: reqwest::Client,
}

impl ClientCtx {
    async fn submit(&self, url: &str, path: &Path) -> Result<(String, u32)> {
        let mut refused = 0;
        loop {
            let r = self
                .client
                .post(format!("{url}/workflows/batch"))
                .json(&json!({ "path": path }))
                .send()
                .await?;
            match r.status().as_u16() {
                202 => {
                    let v: Value = r.json().await?;
                    return Ok((v["run_id"].as_str().context("no run_id")?.to_string(), refused));
                }
                429 => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                s => bail!(
                    "submission to {url} answered {s}: {}",
                    r.text().await.unwrap_or_default()
                ),
            }
        }
    }
}

/// The takeover's workflow in `dir`: its path, the control directory, the
/// workflows directory.
fn takeover_files(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let wf = dir.join("workflows");
    let ctl = dir.join("control");
    std::fs::create_dir_all(&wf)?;
    std::fs::create_dir_all(&ctl)?;
    std::fs::write(ctl.join("install"), "sleep 1")?;
    let file = wf.join("takeover.k");
    std::fs::write(
        &file,
        workflow(
            "takeover",
            TAKEOVER_SERVERS,
            &["a", "b", "c", "d"],
            TAKEOVER_PARALLEL,
            &ctl,
        ),
    )?;
    Ok((file, ctl, wf))
}

/// PostgreSQL: the run on A, B started, A killed; B takes the run over.
async fn takeover_pg(ctx: &Ctx, ttl: f64, state: &str, dir: &Path, round: usize) -> Result<Takeover> {
    let (file, ctl, wf) = takeover_files(dir)?;
    // The local provider keeps the servers it made under the data
    // directory (providers/local): both instances see the same ones, as
    // a cloud provider's servers are seen from anywhere.
    let providers = dir.join("providers");
    std::fs::create_dir_all(&providers)?;
    for d in ["a", "b"] {
        std::fs::create_dir_all(dir.join(d))?;
        std::os::unix::fs::symlink(&providers, dir.join(d).join("providers"))?;
    }
    let mut a = ctx.start(&format!("t{round}-pg-A"), state, &dir.join("a"), &wf, Some(ttl))?;
    let (id, _) = ctx.api.submit(&a.url, &file).await?;
    // Executed by A (its status names A's process) before B exists.
    let tag = format!("-{}-", a.pid());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = ctx.get(&format!("{}/workflows/{id}/status", a.url)).await?;
        if v["status"] == "running" && v["executed_by"].as_str().is_some_and(|o| o.contains(&tag)) {
            break;
        }
        if Instant::now() > deadline {
            bail!("instance A did not take up the run within 60 s: {}", v["status"]);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = ctx.start(&format!("t{round}-pg-B"), state, &dir.join("b"), &wf, Some(ttl))?;
    wait_lines(&ctl, KILL_AFTER).await?;
    let killed_ms = epoch_ms();
    a.kill()?;
    let done_at_kill = lines(&ctl);
    let b_tag = format!("-{}-", b.pid());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen_b = false;
    loop {
        let v = ctx.get(&format!("{}/workflows/{id}/status", b.url)).await?;
        seen_b |= v["executed_by"].as_str().is_some_and(|o| o.contains(&b_tag));
        if !matches!(v["status"].as_str(), Some("queued" | "running" | "paused" | "aborted")) {
            if v["status"] != "succeeded" {
                bail!("the run taken over ended {}: {}", v["status"], v["reason"]);
            }
            break;
        }
        if Instant::now() > deadline {
            bail!("the run was not finished 120 s after the kill ({})", v["status"]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !seen_b {
        bail!("the run finished without B's status ever naming B as its executor");
    }
    let journal = ctx.journal(&b.url, &id).await?;
    let mut t = timings(&journal, killed_ms, TAKEOVER_SERVERS * PER_SERVER)?;
    t.done_at_kill = done_at_kill;
    t.rerun_scripts = drover_bench::home::reruns(&ctl)?;
    drop(b);
    Ok(t)
}

/// SQLite: the run, SIGKILL, `drover serve` again at once on the file.
async fn takeover_sqlite(ctx: &Ctx, dir: &Path, round: usize) -> Result<Takeover> {
    let (file, ctl, wf) = takeover_files(dir)?;
    let state = dir.join("state.db").display().to_string();
    let data = dir.join("server");
    let mut a = ctx.start(&format!("t{round}-sqlite"), &state, &data, &wf, None)?;
    let (id, _) = ctx.api.submit(&a.url, &file).await?;
    wait_lines(&ctl, KILL_AFTER).await?;
    let killed_ms = epoch_ms();
    a.kill()?;
    let done_at_kill = lines(&ctl);
    let b = ctx.start(&format!("t{round}-sqlite-restarted"), &state, &data, &wf, None)?;
    let listening_s = (epoch_ms() - killed_ms) / 1e3;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = ctx.get(&format!("{}/workflows/{id}/status", b.url)).await?;
        if !matches!(v["status"].as_str(), Some("queued" | "running" | "paused" | "aborted")) {
            if v["status"] != "succeeded" {
                bail!("the restarted run ended {}: {}", v["status"], v["reason"]);
            }
            break;
        }
        if Instant::now() > deadline {
            bail!("the run was not finished 120 s after the kill ({})", v["status"]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let journal = ctx.journal(&b.url, &id).await?;
    let mut t = timings(&journal, killed_ms, TAKEOVER_SERVERS * PER_SERVER)?;
    t.listening_s = Some(listening_s);
    t.done_at_kill = done_at_kill;
    t.rerun_scripts = drover_bench::home::reruns(&ctl)?;
    drop(b);
    Ok(t)
}

/// From a run's journal: the resumed run_started after the kill, the first
/// task after it, the end; every task succeeded exactly once, none started
/// again after it succeeded.
fn timings(journal: &[Value], killed_ms: f64, tasks: usize) -> Result<Takeover> {
    let kind = |e: &Value| e["event"]["event"].as_str().unwrap_or_default().to_string();
    let at = |e: &Value| e["at_ms"].as_f64().unwrap_or(f64::NAN);
    let resumed = journal
        .iter()
        .find(|e| kind(e) == "run_started" && e["event"]["resumed"] == true && at(e) >= killed_ms)
        .context("no resumed run_started after the kill in the journal")?;
    let resumed_seq = resumed["seq"].as_i64().unwrap_or_default();
    let first_task = journal
        .iter()
        .find(|e| e["seq"].as_i64().unwrap_or_default() > resumed_seq && kind(e) == "task_started")
        .context("no task started after the resume")?;
    let finished = journal
        .iter()
        .rev()
        .find(|e| kind(e) == "run_finished")
        .context("the run has no run_finished")?;
    if finished["event"]["status"] != "succeeded" {
        bail!("the run finished {}", finished["event"]["status"]);
    }
    let mut succeeded: BTreeMap<String, usize> = BTreeMap::new();
    let mut again = BTreeSet::new();
    for e in journal {
        let node = e["node"].as_str().unwrap_or_default().to_string();
        match kind(e).as_str() {
            "task_started" if succeeded.contains_key(&node) => {
                again.insert(node);
            }
            "task_succeeded" => *succeeded.entry(node).or_default() += 1,
            _ => {}
        }
    }
    let twice: Vec<&String> = succeeded.iter().filter(|(_, n)| **n > 1).map(|(k, _)| k).collect();
    if !twice.is_empty() || !again.is_empty() {
        bail!(
            "EXACTLY-ONCE VIOLATED: {} task(s) succeeded more than once (e.g. {:?}), {} started again after succeeding (e.g. {:?})",
            twice.len(),
            twice.first(),
            again.len(),
            again.first()
        );
    }
    if succeeded.len() != tasks {
        bail!("{} of {tasks} tasks succeeded", succeeded.len());
    }
    Ok(Takeover {
        resumed_s: (at(resumed) - killed_ms) / 1e3,
        first_task_s: (at(first_task) - killed_ms) / 1e3,
        finished_s: (at(finished) - killed_ms) / 1e3,
        ..Takeover::default()
    })
}

/// A workflow of `servers` local servers carrying `taskservs` (the test
/// taskservs: a → b, c → d), created then installed; the scripts read
/// their behaviour from `control`.
fn workflow(name: &str, servers: usize, taskservs: &[&str], parallel: usize, control: &Path) -> String {
    let ts: Vec<String> = taskservs.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        r#"import drover

workflow = drover.WorkflowDef {{
    name = "{name}"
    max_parallel = {parallel}
    variables = {{CONTROL = "{control}"}}
    servers = [drover.ServerDef {{
        hostname = "{name}-${{i}}"
        provider = "local"
        plan = "small"
        connection = "local"
        taskservs = [{ts}]
    }} for i in range({servers})]
    operations = [
        drover.OperationDef {{id = "create", type = "create", target = "server"}}
        drover.OperationDef {{id = "install", type = "create", target = "taskserv", depends_on = ["create"]}}
    ]
}}
"#,
        control = control.display(),
        ts = ts.join(", "),
    )
}

/// Scripts that ran (lines of the control directory's executions.log).
fn lines(control: &Path) -> usize {
    std::fs::read_to_string(control.join("executions.log")).map_or(0, |s| s.lines().count())
}

async fn wait_lines(control: &Path, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while lines(control) < n {
        if Instant::now() > deadline {
            bail!("{n} install scripts did not run within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The admin token every instance shares: 32 random bytes, hex.
fn token() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn fmt2(v: f64) -> String {
    format!("{v:.2}")
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}
