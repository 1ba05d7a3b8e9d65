//! `drover run`, `runs`, `retry`, `rollback`: executing plans in-process
//! on the embedded state store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use drover_exec::report::{self, Summary};
use drover_exec::{Control, ExecError, Options, RunHandle};
use drover_state::{RunStatus, Store};

use crate::{load_inputs, report_failure};

/// Exit status of a run that failed (or was rolled back).
pub const RUN_FAILED: u8 = 4;
/// Exit status of a run that was cancelled or aborted.
pub const RUN_STOPPED: u8 = 5;

/// Where the state store is, and the options derived from it.
pub struct Target {
    pub state: PathBuf,
    pub parallel: Option<u32>,
    pub verbose: bool,
    pub keep_remote_dirs: bool,
}

/// The state store of `t` (owned by this process) and the run options.
pub(crate) fn open(t: &Target) -> anyhow::Result<(Arc<Store>, Options)> {
    let store = Store::open(&t.state)?;
    let mut opts = Options::for_state(&t.state, drover_registry::providers());
    opts.max_parallel = t.parallel;
    opts.keep_remote_dirs = t.keep_remote_dirs;
    Ok((Arc::new(store), opts))
}

/// The runtime runs are carried out on.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// What a followed run is expected to end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A run (start, resume, retry): success is `succeeded`.
    Run,
    /// A rollback by hand: success is `rolled_back`.
    Rollback,
}

/// The exit status for a run that ended with `status`.
pub fn exit_for(status: RunStatus, ending: Ending) -> ExitCode {
    match (status, ending) {
        (RunStatus::Succeeded, Ending::Run) | (RunStatus::RolledBack, Ending::Rollback) => ExitCode::SUCCESS,
        (
            RunStatus::Cancelled
            | RunStatus::Aborted
            | RunStatus::Paused
            | RunStatus::Running
            | RunStatus::Queued
            | RunStatus::RollingBack,
            _,
        ) => ExitCode::from(RUN_STOPPED),
        _ => ExitCode::from(RUN_FAILED),
    }
}

/// Report why a run could not start or go on: 1 for what the operator
/// can act on (a wrong state, an unknown run), an error otherwise.
pub(crate) fn exec_failure(e: ExecError) -> anyhow::Result<ExitCode> {
    match e {
        ExecError::Unsupported(msg)
        | ExecError::WrongState(msg)
        | ExecError::Secrets(msg)
        | ExecError::Template(msg) => {
            eprintln!("drover: {msg}");
            Ok(ExitCode::from(1))
        }
        ExecError::State(drover_state::StateError::UnknownRun(id)) => {
            eprintln!("drover: no run {id} in the state store (see `drover runs`)");
            Ok(ExitCode::from(1))
        }
        other => Err(other.into()),
    }
}

/// `drover run FILE` or `drover run --resume ID`.
pub fn run(file: Option<&Path>, resume: Option<&str>, t: &Target, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (store, opts) = open(t)?;
    let rt = runtime()?;
    let handle = match (file, resume) {
        (_, Some(id)) => rt.block_on(async { drover_exec::run::resume(store.clone(), id, &opts, None) }),
        (Some(file), None) => {
            let inputs = match load_inputs(file) {
                Ok(i) => i,
                Err(f) => return report_failure(f, crate::ReportFormat::Text, out),
            };
            rt.block_on(async { drover_exec::run::start(store.clone(), inputs, &opts, None) })
        }
        (None, None) => {
            eprintln!("drover: give a workflow FILE, or --resume RUN_ID");
            return Ok(ExitCode::from(2));
        }
    };
    let handle = match handle {
        Ok(h) => h,
        Err(e) => return exec_failure(e),
    };
    follow(&rt, handle, (&store, &opts), t, out, Ending::Run)
}

/// `drover retry ID [--operation OP]`.
pub fn retry(id: &str, operation: Option<&str>, t: &Target, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (store, opts) = open(t)?;
    let rt = runtime()?;
    match rt.block_on(async { drover_exec::run::retry(store.clone(), id, operation, &opts, None) }) {
        Ok(h) => follow(&rt, h, (&store, &opts), t, out, Ending::Run),
        Err(e) => exec_failure(e),
    }
}

/// `drover rollback ID`.
pub fn rollback(id: &str, t: &Target, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (store, opts) = open(t)?;
    let rt = runtime()?;
    match rt.block_on(async { drover_exec::run::rollback(store.clone(), id, &opts, None) }) {
        Ok(h) => follow(&rt, h, (&store, &opts), t, out, Ending::Rollback),
        Err(e) => exec_failure(e),
    }
}

/// `drover runs`: read-only, so it works beside the process that owns
/// the store.
pub fn list(t: &Target, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    if !t.state.exists() {
        writeln!(out, "no runs in {} (it does not exist yet)", t.state.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open_read_only(&t.state)?;
    let runs = store.runs()?;
    if runs.is_empty() {
        writeln!(out, "no runs in {}", t.state.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{:<22}  {:<12}  {:<20}  file", "run", "status", "workflow")?;
    for r in runs {
        writeln!(
            out,
            "{:<22}  {:<12}  {:<20}  {}",
            r.id,
            r.status.as_str(),
            r.workflow,
            r.file
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `drover runs prune [--older-than D]`.
pub fn prune(older_than: Option<std::time::Duration>, t: &Target, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (store, opts) = open(t)?;
    let removed = drover_exec::run::prune(&store, &opts, older_than, drover_exec::scheduler::now_ms())?;
    for id in &removed {
        writeln!(out, "removed {id}")?;
    }
    writeln!(out, "{} run(s) removed", removed.len())?;
    Ok(ExitCode::SUCCESS)
}

fn follow(
    rt: &tokio::runtime::Runtime,
    handle: RunHandle,
    (store, opts): (&Arc<Store>, &Options),
    t: &Target,
    out: &mut impl Write,
    ending: Ending,
) -> anyhow::Result<ExitCode> {
    eprintln!(
        "run {} of {}: {} tasks; logs in {}",
        handle.run_id,
        handle.plan.workflow.name,
        handle.plan.task_count(),
        handle.logs_dir.display()
    );
    let plan = handle.plan.clone();
    match wait_for(rt, handle, Some(t.verbose)) {
        Ok(s) => {
            print_summary(&s, out)?;
            notify_end(rt, store, &plan, &s);
            retention(store, opts);
            Ok(exit_for(s.status, ending))
        }
        Err(e) => exec_failure(e),
    }
}

/// Wait for a run to end, writing its own log file (the workflow's
/// logging level and format, as under `drover serve`). Ctrl-C stops it
/// cleanly: running tasks are cancelled, the journal and a report marked
/// aborted are written, and the run can be resumed. `view`: draw the live
/// view on stderr (`Some(verbose)`: every output line too), or nothing.
pub(crate) fn wait_for(
    rt: &tokio::runtime::Runtime,
    mut handle: RunHandle,
    view: Option<bool>,
) -> Result<Summary, ExecError> {
    let log_events = handle.subscribe();
    let ctl = handle.controller();
    let logging = handle.plan.workflow.logging.clone();
    let _log_guard = drover_server::logging::init_run_files(handle.logs_dir.parent().unwrap_or(Path::new(".")))
        .map_err(|e| eprintln!("drover: the run's log file will not be written: {e}"))
        .ok();
    drover_server::logging::register_run_in(&handle.run_id, &handle.logs_dir, logging.level, logging.format);
    let (operation_of, server_of) = task_maps(&handle.plan);
    let span = tracing::info_span!("run", run_id = %handle.run_id, workflow = %handle.plan.workflow.name);
    // Without a view nobody reads the output lines: they are in the
    // journal and the logs already.
    let lines = handle.lines.take();
    let view = view.map(|verbose| {
        (
            handle.subscribe(),
            lines,
            crate::progress::Layout::of_plan(&handle.plan),
            verbose,
        )
    });
    rt.block_on(async move {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = ctl.send(Control::Abort);
            }
        });
        let log = tokio::spawn(async move {
            let mut events = log_events;
            loop {
                match events.recv().await {
                    Ok(p) => span.in_scope(|| drover_server::logging::log_transition(&p, &operation_of, &server_of)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let view = view.map(|(events, lines, layout, verbose)| {
            let (tx, updates) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(crate::progress::bridge(events, tx));
            tokio::spawn(crate::progress::watch(layout, updates, lines, verbose))
        });
        let summary = handle.wait().await;
        if let Some(view) = view {
            let _ = view.await;
        }
        let _ = log.await;
        summary
    })
}

/// How long a command waits, after its run, for the notifications due
/// now to be delivered.
const NOTIFY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Tell the workflow's notification targets how the run ended, as `drover
/// serve` does: journaled in the store's outbox, then delivered, waiting
/// at most [`NOTIFY_WAIT`] for what is due now. What is left (a cooldown's
/// window, retries of a failing target) stays queued in the store, for
/// the next command or `drover serve` on it to deliver. A notification
/// never changes the run's outcome or exit status.
pub(crate) fn notify_end(rt: &tokio::runtime::Runtime, store: &Arc<Store>, plan: &drover_core::Plan, s: &Summary) {
    let targets = &plan.workflow.notifications;
    if targets.is_empty() {
        return;
    }
    let n = match drover_server::notify::Notifier::new(store.clone(), Vec::new()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("drover: notifications not sent: {e}");
            return;
        }
    };
    let queued = |store: &Store| {
        store
            .deliveries(Some(&s.run_id), Some(drover_state::DeliveryStatus::Queued), 1000)
            .unwrap_or_default()
    };
    rt.block_on(async {
        n.run_ended(&s.run_id, &plan.workflow.name, s.status, &s.reason, targets)
            .await;
        let stop = drover_exec::fleet::CancellationToken::new();
        let task = tokio::spawn(n.clone().deliver(stop.clone()));
        let deadline = tokio::time::Instant::now() + NOTIFY_WAIT;
        while tokio::time::Instant::now() < deadline {
            let now = drover_exec::scheduler::now_ms();
            if !queued(store).iter().any(|d| d.next_attempt_at_ms <= now) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        stop.cancel();
        let _ = task.await;
    });
    let left = queued(store).len();
    if left > 0 {
        eprintln!(
            "drover: {left} notification(s) of run {} still queued (a cooldown or a retry): the next drover command or drover serve on this store sends them",
            s.run_id
        );
    }
}

/// Task id → operation id and server, for the run's log lines.
pub(crate) fn task_maps(
    plan: &drover_core::Plan,
) -> (
    std::collections::HashMap<String, String>,
    std::collections::HashMap<String, String>,
) {
    let tasks = || plan.graph.node_weights().filter_map(|n| n.task());
    (
        tasks()
            .map(|t| (t.id.clone(), plan.operations[t.operation].id.clone()))
            .collect(),
        tasks()
            .filter_map(|t| t.server.clone().map(|s| (t.id.clone(), s)))
            .collect(),
    )
}

/// After a run: finished runs past their workflow's `logging.retention_days`
/// leave the store, with their logs (never one in progress or resumable).
pub(crate) fn retention(store: &Store, opts: &Options) {
    match drover_exec::run::prune(store, opts, None, drover_exec::scheduler::now_ms()) {
        Ok(ids) if !ids.is_empty() => eprintln!("removed {} run(s) past their retention", ids.len()),
        Ok(_) => {}
        Err(e) => eprintln!("drover: retention: {e}"),
    }
}

fn print_summary(s: &Summary, out: &mut impl Write) -> anyhow::Result<()> {
    write!(out, "{}", report::table(s))?;
    let files: Vec<String> = s.files.iter().map(|f| f.display().to_string()).collect();
    writeln!(out, "report: {}", files.join(", "))?;
    Ok(())
}
