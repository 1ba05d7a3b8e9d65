//! Engine overhead: a DAG of 11,000 no-op tasks (1,000 servers × (create +
//! a 10-taskserv pipeline), the barrier between them, limits as the
//! workflow says) executed by the real scheduler with the real journal
//! (SQLite, WAL, synchronous=FULL), tasks done by an executor that returns
//! at once. What is measured is drover's own cost per task: scheduling,
//! journaling every transition durably, reporting. Prints tasks/s and the
//! peak resident memory of the process.
//!
//! Usage: drover-bench-exec [--servers N] [--parallel P] [--runs R]

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use drover_core::model::WaitCondition;
use drover_core::plan::Task;
use drover_exec::runner::{TaskExecutor, TaskFailure, Undo};
use drover_exec::{Inputs, Options};
use drover_kcl::{Home, Loader};
use drover_state::{RunStatus, Store};
use tokio_util::sync::CancellationToken;

mod home;

/// Does nothing, successfully: the benchmark measures the engine alone.
#[derive(Debug)]
struct NoWork;

#[async_trait::async_trait]
impl TaskExecutor for NoWork {
    async fn run(&self, _task: &Task, _attempt: u32, _cancel: CancellationToken) -> Result<(), TaskFailure> {
        Ok(())
    }
    async fn undo(&self, _task: &Task, _cancel: CancellationToken) -> Undo {
        Undo::Nothing
    }
    async fn probe(&self, _c: &WaitCondition, _cancel: CancellationToken) -> Result<(), TaskFailure> {
        Ok(())
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() -> Result<()> {
    let mut servers = 1000usize;
    let mut parallel = 50u32;
    let mut runs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--servers" => servers = args.next().context("--servers N")?.parse()?,
            "--parallel" => parallel = args.next().context("--parallel P")?.parse()?,
            "--runs" => runs = args.next().context("--runs R")?.parse()?,
            other => {
                bail!("unknown argument {other}; usage: drover-bench-exec [--servers N] [--parallel P] [--runs R]")
            }
        }
    }
    let real = Home::discover()?;
    let dir = tempfile::tempdir()?;
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
    for i in 0..runs {
        let state = dir.path().join(format!("state-{i}.db"));
        let store = Arc::new(Store::open(&state)?);
        let opts = Options {
            data_dir: dir.path().to_path_buf(),
            logs_root: Some(dir.path().join("logs")),
            max_parallel: Some(parallel),
            seed: 1,
            keep_remote_dirs: false,
            start_paused: false,
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
        let secs = started.elapsed().as_secs_f64();
        if summary.status != RunStatus::Succeeded {
            bail!("run ended {}: {}", summary.status.as_str(), summary.reason);
        }
        let journaled = store.journal(&summary.run_id)?.len();
        println!(
            "run {}: {tasks} tasks in {secs:.2} s = {:.0} tasks/s ({journaled} journal entries, {:.0} entries/s)",
            i + 1,
            tasks as f64 / secs,
            journaled as f64 / secs
        );
        rates.push(tasks as f64 / secs);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "engine overhead: {tasks} no-op tasks, max_parallel {parallel}, journal synchronous=FULL: median {:.0} tasks/s (min {:.0}, max {:.0}); peak RSS {:.1} MiB",
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1],
        peak_rss_mib()
    );
    Ok(())
}
