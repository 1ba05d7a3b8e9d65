//! Engine overhead: a DAG of 11,000 no-op tasks (1,000 servers × (create +
//! a 10-taskserv pipeline), the barrier between them, limits as the
//! workflow says) executed by the real scheduler with the real journal
//! (SQLite, WAL, synchronous=FULL), tasks done by an executor that returns
//! at once. What is measured is drover's own cost per task: scheduling,
//! journaling every transition durably, reporting. Prints tasks/s and the
//! peak resident memory of the process.
//!
//! Beside it, on the same disk (the state database lives under /var/tmp):
//!
//! - the physical limit: the run's whole journal written to a fresh store
//!   in one transaction (the least any journaling engine must do: every
//!   entry inserted, one durable commit);
//! - the baseline of the obvious design: one durable commit per journal
//!   entry (measured on a sample of entries, each its own transaction), the
//!   rate drover would have without batching a scheduler turn's
//!   transitions into one commit.
//!
//! Usage: drover-bench-exec [--servers N] [--parallel P] [--runs R] [--json FILE]
//! (`--help` for the options).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use drover_bench::figures::{Better, Figure, Headline, Report, Stat, peak_rss_mib, thousands};
use drover_bench::home;
use drover_core::model::WaitCondition;
use drover_core::plan::Task;
use drover_exec::runner::{Compensation, Found, TaskExecutor, TaskFailure, Undo};
use drover_exec::{Inputs, Options};
use drover_kcl::{Home, Loader};
use drover_state::{Entry, RunStatus, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Journal entries committed one per transaction for the baseline.
const SINGLE_COMMITS: usize = 300;

/// Does nothing, successfully: the benchmark measures the engine alone.
#[derive(Debug)]
struct NoWork;

#[async_trait::async_trait]
impl TaskExecutor for NoWork {
    async fn run(&self, _task: &Task, _attempt: u32, _cancel: CancellationToken) -> Result<Found, TaskFailure> {
        Ok(Found::new())
    }
    fn compensation(&self, _task: &Task) -> Compensation {
        Compensation::Nothing
    }
    async fn undo(&self, _task: &Task, _cancel: CancellationToken) -> Undo {
        Undo::Nothing
    }
    async fn probe(&self, _c: &WaitCondition, _cancel: CancellationToken) -> Result<(), TaskFailure> {
        Ok(())
    }
}

/// Engine overhead: a DAG of N servers × (create + a 10-taskserv
/// pipeline) run by the real scheduler with the real journal (SQLite, WAL,
/// synchronous=FULL) and tasks that do nothing; tasks/s beside the physical
/// limit (the whole journal in one transaction) and one durable commit per
/// journal entry. Run it from the repository root (`make bench` does).
#[derive(Debug, Parser)]
#[command(name = "drover-bench-exec", version, about, long_about)]
struct Args {
    /// Servers of the generated DAG (11 tasks each).
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    servers: usize,
    /// The global limit of tasks running at once.
    #[arg(long, default_value_t = 50, value_name = "P", value_parser = clap::value_parser!(u32).range(1..))]
    parallel: u32,
    /// Runs (median, min–max).
    #[arg(long, default_value_t = 3, value_name = "R", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
    /// Write every figure to this JSON file (read by scripts/bench.py).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() -> Result<()> {
    let Args {
        servers,
        parallel,
        runs,
        json: json_out,
    } = Args::parse();
    let mut report = Report::new("exec", "Engine overhead");
    report.params = json!({"servers": servers, "parallel": parallel, "runs": runs});
    let real = Home::discover()?;
    // Not /tmp, which may be a tmpfs where a commit costs nothing.
    let dir = tempfile::Builder::new()
        .prefix("drover-bench-exec")
        .tempdir_in("/var/tmp")?;
    let home = home::generate_home(real.root(), dir.path(), servers)?;
    let location = drover_kcl::EngineLocation::discover(&real)?;
    let loader = Loader::with_engine(Home::at(&home)?, &location)?;
    let source = loader.load_workflow(&home.join("bench.k"))?;
    let catalog = loader.load_catalog()?;
    let tasks = drover_core::compile(&source, &catalog)
        .map_err(|d| anyhow::anyhow!("{d:?}"))?
        .task_count();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rates = Vec::new();
    let mut entry_rates = Vec::new();
    let mut walls = Vec::new();
    let mut journal: Vec<Entry> = Vec::new();
    let mut last_run = String::new();
    for i in 0..runs {
        let state = dir.path().join(format!("state-{i}.db"));
        let store = Arc::new(Store::open(&state)?);
        let opts = Options {
            data_dir: dir.path().to_path_buf(),
            logs_root: Some(dir.path().join("logs")),
            max_parallel: Some(parallel),
            seed: 1,
            ..Options::for_state(&state, drover_provider::Providers::new())
        };
        let inputs = Inputs {
            source: source.clone(),
            catalog: catalog.clone(),
        };
        let started = Instant::now();
        let summary = rt.block_on(async {
            let h = drover_exec::run::start(store.clone(), inputs, &opts, Some(Arc::new(NoWork)))?;
            h.wait().await
        })?;
        let elapsed = started.elapsed();
        let secs = elapsed.as_secs_f64();
        if summary.status != RunStatus::Succeeded {
            bail!("run ended {}: {}", summary.status.as_str(), summary.reason);
        }
        journal = store.journal(&summary.run_id)?;
        last_run = summary.run_id.clone();
        println!(
            "run {}: {tasks} tasks in {secs:.2} s = {:.0} tasks/s ({} journal entries, {:.0} entries/s)",
            i + 1,
            tasks as f64 / secs,
            journal.len(),
            journal.len() as f64 / secs
        );
        rates.push(tasks as f64 / secs);
        entry_rates.push(journal.len() as f64 / secs);
        walls.push(elapsed);
    }
    let rss = peak_rss_mib(None);
    let rates = Stat::new("tasks/s", rates);
    let entry_rates = Stat::new("entries/s", entry_rates);
    println!(
        "engine overhead: {tasks} no-op tasks, max_parallel {parallel}, journal synchronous=FULL: median {:.0} tasks/s (min {:.0}, max {:.0}); peak RSS {rss:.1} MiB",
        rates.median(),
        rates.min(),
        rates.max(),
    );

    // The limit and the baseline, on the last run's journal.
    let source_store = Store::open(&dir.path().join(format!("state-{}.db", runs - 1)))?;
    let record = source_store.run(&last_run)?;
    let mut one_tx = Vec::new();
    for i in 0..runs {
        let store = Store::open(&dir.path().join(format!("limit-{i}.db")))?;
        store.create_run(&record)?;
        let events: Vec<(i64, Option<&str>, &drover_state::Event)> =
            journal.iter().map(|e| (e.at_ms, e.node.as_deref(), &e.event)).collect();
        let t = Instant::now();
        store.append(&record.id, &events)?;
        one_tx.push(t.elapsed());
    }
    let one_tx = Stat::ms(&one_tx);
    let store = Store::open(&dir.path().join("single.db"))?;
    store.create_run(&record)?;
    let sample = &journal[..journal.len().min(SINGLE_COMMITS)];
    let mut single = Vec::with_capacity(sample.len());
    for e in sample {
        let t = Instant::now();
        store.append(&record.id, &[(e.at_ms, e.node.as_deref(), &e.event)])?;
        single.push(t.elapsed());
    }
    let single = Stat::new("ms", single.iter().map(|d: &Duration| d.as_secs_f64() * 1e3).collect());
    let entries = journal.len() as f64;
    let limit_rate = tasks as f64 / (one_tx.median() / 1e3);
    let baseline_rate = tasks as f64 / (entries * single.median() / 1e3);
    println!(
        "  physical limit: the run's {} journal entries in one transaction: {} ms -> at most {limit_rate:.0} tasks/s",
        journal.len(),
        one_tx.spread(1)
    );
    println!(
        "  baseline: one durable commit per entry: {} ms each ({} commits) -> {baseline_rate:.0} tasks/s; drover batches a turn per commit: {:.0}× that",
        single.spread(3),
        single.samples.len(),
        rates.median() / baseline_rate
    );

    report.headlines.push(
        Headline::new(
            "exec",
            format!("engine overhead: {} no-op tasks, journaled", thousands(tasks)),
            "tasks/s",
            Better::Higher,
            rates.figure(),
        )
        .peer("one durable commit per journal entry", Figure::single(baseline_rate))
        .limit(
            format!(
                "the run's {} journal entries inserted in one transaction",
                thousands(journal.len())
            ),
            Figure::single(limit_rate),
        )
        .target(">= 2,000 tasks/s", rates.median() >= 2000.0),
    );
    report.results = json!({
        "tasks": tasks,
        "journal_entries": journal.len(),
        "tasks_per_s": rates.json(),
        "entries_per_s": entry_rates.json(),
        "wall": Stat::secs(&walls).json(),
        "peak_rss_mib": rss,
        "limit_one_transaction_ms": one_tx.json(),
        "limit_tasks_per_s": limit_rate,
        "single_commit_ms": single.json(),
        "baseline_tasks_per_s": baseline_rate,
    });
    report.write(json_out.as_deref())
}
