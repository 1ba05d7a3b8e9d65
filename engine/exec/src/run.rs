//! Runs: start one, resume one after a crash, retry what failed, roll one
//! back by hand. Each returns a [`RunHandle`] to control and watch it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_core::Plan;
use drover_core::model::{Catalog, Connection, Source};
use drover_state::{RunRecord, RunStatus, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::mask::Masker;
use crate::provider::{Provider, registry};
use crate::report::{self, Summary};
use crate::runner::{Paths, RunSecrets, Runner, TaskExecutor, TaskLine};
use crate::scheduler::{Control, Progress, Scheduler, SchedulerError, Settings, now_ms};
use crate::transport::local::LocalTransport;

/// Why a run could not be started or finished.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The workflow does not compile (should have been caught by validate).
    #[error("the workflow is invalid: {0}")]
    Invalid(String),
    /// The workflow needs something this build cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] drover_state::StateError),
    /// The scheduler stopped.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// A run cannot be continued in the state it is in.
    #[error("{0}")]
    WrongState(String),
    /// Writing reports failed.
    #[error("cannot write the report: {0}")]
    Report(std::io::Error),
    /// The workflow's secrets cannot be decrypted; the run did not start.
    #[error("{0}")]
    Secrets(String),
    /// A template does not render; the run did not start.
    #[error("{0}")]
    Template(String),
}

/// What a run needs besides its plan: its secrets (decrypted in memory
/// only, again at every resume) and the masker built from them.
#[derive(Debug, Clone, Default)]
struct Prepared {
    secrets: Arc<RunSecrets>,
    mask: Masker,
}

/// Decrypt the workflow's SOPS files (paths relative to the workflow
/// file) with its age identities, and check that every template of the
/// plan renders. Any failure stops the run before it starts.
fn prepare(plan: &Plan, inputs: &Inputs) -> Result<Prepared, ExecError> {
    let wf = &inputs.source.workflow;
    let mut prepared = Prepared::default();
    if let Some(sp) = &wf.secrets {
        let base = inputs.source.file.parent().map(Path::to_path_buf).unwrap_or_default();
        let ids = match &sp.age_key_file {
            Some(k) => drover_secrets::Identities::from_file(&base.join(k)),
            None => drover_secrets::Identities::from_env(),
        }
        .map_err(|e| ExecError::Secrets(e.to_string()))?;
        let mut tree = serde_json::Map::new();
        let mut env: Vec<(String, String)> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for f in &sp.files {
            let secrets =
                drover_secrets::decrypt_file(&base.join(f), &ids).map_err(|e| ExecError::Secrets(e.to_string()))?;
            if let serde_json::Value::Object(m) = secrets.tree() {
                tree.extend(m.clone());
            }
            for (path, value) in secrets.flatten() {
                let var = path.to_ascii_uppercase().replace(['.', '-'], "_");
                if wf
                    .variables
                    .keys()
                    .any(|k| k.to_ascii_uppercase().replace('-', "_") == var)
                {
                    return Err(ExecError::Secrets(format!(
                        "secret {path} in {f} and the workflow variable {var} would both be DROVER_VAR_{var}; rename one"
                    )));
                }
                let name = format!("DROVER_VAR_{var}");
                env.retain(|(n, _)| *n != name);
                env.push((name, value));
            }
            values.extend(secrets.values());
        }
        prepared = Prepared {
            secrets: Arc::new(RunSecrets {
                env,
                tree: serde_json::Value::Object(tree),
            }),
            mask: Masker::new(values),
        };
    }
    let mut problems = Vec::new();
    for n in plan.graph.node_weights() {
        let Some(t) = n.task() else { continue };
        let (Some(ts), Some(host)) = (&t.taskserv, &t.server) else {
            continue;
        };
        let Some(dir) = inputs
            .catalog
            .taskservs
            .get(ts)
            .and_then(|d| crate::template::templates_dir(&d.origin))
        else {
            continue;
        };
        let Some(server) = wf.servers.iter().find(|s| &s.hostname == host) else {
            continue;
        };
        let ctx = crate::template::context(ts, server, &wf.variables, &prepared.secrets.tree);
        if let Err(e) = crate::template::render_dir(&dir, &ctx) {
            let msg = format!("{} (taskserv {ts} on {host})", prepared.mask.mask(&e.to_string()));
            if !problems.contains(&msg) {
                problems.push(msg);
            }
        }
    }
    if !problems.is_empty() {
        problems.truncate(10);
        return Err(ExecError::Template(problems.join("\n")));
    }
    Ok(prepared)
}

/// What is stored with a run so it can be planned again identically.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inputs {
    /// The evaluated workflow.
    pub source: Source,
    /// The evaluated declarations.
    pub catalog: Catalog,
}

/// Where runs keep their state and files.
#[derive(Debug, Clone)]
pub struct Options {
    /// The directory for hosts and working directories (the state
    /// database's directory by default).
    pub data_dir: PathBuf,
    /// Where run logs go; the workflow's logging.dir when None.
    pub logs_root: Option<PathBuf>,
    /// Overrides the plan's global parallelism.
    pub max_parallel: Option<u32>,
    /// Seed of retry jitter.
    pub seed: u64,
    /// Leave the run's directories on SSH hosts (/tmp/drover-<run>) for
    /// inspection instead of removing them at the end.
    pub keep_remote_dirs: bool,
    /// Start (or resume) with dispatching paused: an operator's pause that
    /// must hold across a restart of the orchestrator.
    pub start_paused: bool,
}

impl Options {
    /// Defaults for a state database at `state`.
    pub fn for_state(state: &Path) -> Options {
        Options {
            data_dir: state
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            logs_root: None,
            max_parallel: None,
            seed: now_ms() as u64,
            keep_remote_dirs: false,
            start_paused: false,
        }
    }
}

/// The default state database: `$XDG_DATA_HOME/drover/state.db`, else
/// `~/.local/share/drover/state.db`.
pub fn default_state_path() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("drover/state.db")
}

/// A run in progress.
#[derive(Debug)]
pub struct RunHandle {
    /// Its id.
    pub run_id: String,
    /// The plan it carries out.
    pub plan: Arc<Plan>,
    /// Where its logs and reports go.
    pub logs_dir: PathBuf,
    control: mpsc::UnboundedSender<Control>,
    progress: broadcast::Sender<Progress>,
    /// Output lines of its tasks.
    pub lines: Option<mpsc::UnboundedReceiver<TaskLine>>,
    join: JoinHandle<Result<Summary, ExecError>>,
}

impl RunHandle {
    /// Send an operator command.
    pub fn control(&self, c: Control) {
        let _ = self.control.send(c);
    }

    /// A sender of operator commands, for signal handlers.
    pub fn controller(&self) -> mpsc::UnboundedSender<Control> {
        self.control.clone()
    }

    /// Watch its journal events.
    pub fn subscribe(&self) -> broadcast::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The sender of its journal events, to subscribe to later.
    pub fn progress(&self) -> broadcast::Sender<Progress> {
        self.progress.clone()
    }

    /// Wait for the end; the summary has been written as a report.
    pub async fn wait(self) -> Result<Summary, ExecError> {
        match self.join.await {
            Ok(r) => r,
            Err(e) => Err(ExecError::WrongState(format!("the run's task ended abnormally: {e}"))),
        }
    }
}

/// A new run id: time-ordered and unique.
pub fn new_run_id() -> String {
    use rand::Rng;
    let ms = now_ms();
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    let suffix: u16 = rand::rng().random();
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{suffix:04x}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Refuse, before anything runs, a plan this build cannot carry out.
fn preflight(plan: &Plan, providers: &std::collections::BTreeMap<String, Arc<dyn Provider>>) -> Result<(), ExecError> {
    let mut problems = Vec::new();
    for n in plan.graph.node_weights() {
        let Some(t) = n.task() else { continue };
        let server = t
            .server
            .as_ref()
            .and_then(|h| plan.workflow.servers.iter().find(|s| &s.hostname == h));
        let provider = t.provider.clone().or_else(|| server.map(|s| s.provider.clone()));
        if let Some(p) = provider
            && !providers.contains_key(&p)
        {
            let msg = format!(
                "provider {p} (task {}) has no engine implementation in this build; it can be planned, not run",
                t.id
            );
            if !problems.contains(&msg) {
                problems.push(msg);
            }
        }
        if let Some(s) = server {
            // Servers of other providers would be reached over SSH with the
            // access they declare; their providers cannot make them yet, so
            // they are refused above. Here: what the local provider needs.
            if s.connection == Connection::Local && s.provider != "local" {
                let msg = format!("server {}: connection local needs provider local", s.hostname);
                if !problems.contains(&msg) {
                    problems.push(msg);
                }
            }
            if s.provider == "local" && s.connection == Connection::Ssh && s.address.is_none() {
                let msg = format!(
                    "server {}: a local SSH host needs an address (its own loopback address, 127.0.x.y)",
                    s.hostname
                );
                if !problems.contains(&msg) {
                    problems.push(msg);
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.truncate(10);
        Err(ExecError::Unsupported(problems.join("\n")))
    }
}

fn plan_of(inputs: &Inputs) -> Result<Plan, ExecError> {
    drover_core::compile(&inputs.source, &inputs.catalog)
        .map_err(|d| ExecError::Invalid(d.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))
}

/// Where a run's task logs and reports are.
pub fn logs_dir(plan: &Plan, opts: &Options, run_id: &str) -> PathBuf {
    opts.logs_root
        .clone()
        .unwrap_or_else(|| PathBuf::from(&plan.workflow.logging.dir))
        .join(run_id)
}

/// What kind of continuation a launch is.
enum Launch {
    Fresh,
    Resume,
    Retry(Option<usize>),
}

/// Check that `inputs` can run (plan, providers, secrets, templates) and
/// record a new run of it with `status`.
fn record(
    store: &Store,
    mut inputs: Inputs,
    check_providers: bool,
    status: RunStatus,
) -> Result<(String, Plan, Catalog, Prepared), ExecError> {
    // Stored absolute, so a resume from another directory finds the
    // secrets files again.
    if let Ok(abs) = inputs.source.file.canonicalize() {
        inputs.source.file = abs;
    }
    let plan = plan_of(&inputs)?;
    if check_providers {
        preflight(&plan, &registry())?;
    }
    let prepared = prepare(&plan, &inputs)?;
    let run_id = new_run_id();
    let now = now_ms();
    store.create_run(&RunRecord {
        id: run_id.clone(),
        workflow: plan.workflow.name.clone(),
        file: inputs.source.file.display().to_string(),
        status,
        created_at_ms: now,
        updated_at_ms: now,
        inputs: serde_json::to_value(&inputs).map_err(|e| ExecError::WrongState(e.to_string()))?,
    })?;
    Ok((run_id, plan, inputs.catalog, prepared))
}

/// Accept a run of `inputs` without starting it: everything that would
/// stop it from starting (plan, providers, secrets, templates) is checked
/// now, and the run is recorded as queued. [`resume`] starts it.
pub fn enqueue(store: &Store, inputs: Inputs) -> Result<String, ExecError> {
    record(store, inputs, true, RunStatus::Queued).map(|(id, ..)| id)
}

/// Start a new run of `inputs`.
pub fn start(
    store: Arc<Store>,
    inputs: Inputs,
    opts: &Options,
    executor: Option<Arc<dyn TaskExecutor>>,
) -> Result<RunHandle, ExecError> {
    let (run_id, plan, catalog, prepared) = record(&store, inputs, executor.is_none(), RunStatus::Running)?;
    launch(
        store,
        run_id,
        plan,
        catalog,
        opts,
        executor,
        Launch::Fresh,
        Vec::new(),
        prepared,
    )
}

fn load(store: &Store, run_id: &str) -> Result<(RunRecord, Inputs, Plan), ExecError> {
    let record = store.run(run_id)?;
    let inputs: Inputs = serde_json::from_value(record.inputs.clone())
        .map_err(|e| ExecError::WrongState(format!("run {run_id} has unreadable inputs: {e}")))?;
    let plan = plan_of(&inputs)?;
    Ok((record, inputs, plan))
}

/// Continue an unfinished run from its journal: finished tasks are not run
/// again; tasks that were in flight run again with the same idempotency
/// key. A queued run starts.
pub fn resume(
    store: Arc<Store>,
    run_id: &str,
    opts: &Options,
    executor: Option<Arc<dyn TaskExecutor>>,
) -> Result<RunHandle, ExecError> {
    let (record, inputs, plan) = load(&store, run_id)?;
    if !record.status.is_unfinished() {
        return Err(ExecError::WrongState(format!(
            "run {run_id} is {}; only running, paused or aborted runs resume (use `drover retry` for a finished one)",
            record.status.as_str()
        )));
    }
    if executor.is_none() {
        preflight(&plan, &registry())?;
    }
    let prepared = prepare(&plan, &inputs)?;
    let journal = store.journal(run_id)?;
    store.set_status(run_id, RunStatus::Running, now_ms())?;
    let kind = if record.status == RunStatus::Queued {
        Launch::Fresh
    } else {
        Launch::Resume
    };
    launch(
        store,
        run_id.to_string(),
        plan,
        inputs.catalog,
        opts,
        executor,
        kind,
        journal,
        prepared,
    )
}

/// Run the failed, cancelled and skipped tasks of a finished run again
/// (all, or one operation's and what follows from them).
pub fn retry(
    store: Arc<Store>,
    run_id: &str,
    operation: Option<&str>,
    opts: &Options,
    executor: Option<Arc<dyn TaskExecutor>>,
) -> Result<RunHandle, ExecError> {
    let (record, inputs, plan) = load(&store, run_id)?;
    if record.status.is_unfinished() {
        return Err(ExecError::WrongState(format!(
            "run {run_id} is {}; only a finished run can be retried (an unfinished one resumes)",
            record.status.as_str()
        )));
    }
    if record.status == RunStatus::RolledBack {
        return Err(ExecError::WrongState(format!(
            "run {run_id} is rolled back; submit the workflow again to run it anew"
        )));
    }
    let op = match operation {
        None => None,
        Some(id) => Some(plan.operations.iter().position(|o| o.id == id).ok_or_else(|| {
            let known: Vec<&str> = plan.operations.iter().map(|o| o.id.as_str()).collect();
            ExecError::WrongState(format!(
                "run {run_id} has no operation {id}; its operations: {}",
                known.join(", ")
            ))
        })?),
    };
    if executor.is_none() {
        preflight(&plan, &registry())?;
    }
    let prepared = prepare(&plan, &inputs)?;
    let journal = store.journal(run_id)?;
    store.set_status(run_id, RunStatus::Running, now_ms())?;
    launch(
        store,
        run_id.to_string(),
        plan,
        inputs.catalog,
        opts,
        executor,
        Launch::Retry(op),
        journal,
        prepared,
    )
}

/// Undo, by hand, everything a finished or failed run did that can be
/// undone, in reverse dependency order. The run ends rolled back, or
/// failed when some compensation failed.
pub fn rollback(
    store: Arc<Store>,
    run_id: &str,
    opts: &Options,
    executor: Option<Arc<dyn TaskExecutor>>,
) -> Result<RunHandle, ExecError> {
    let (record, inputs, plan) = load(&store, run_id)?;
    // A rollback interrupted by a crash (rolling_back) continues: what was
    // undone is in the journal and is not undone again.
    if record.status.is_unfinished() && !matches!(record.status, RunStatus::Aborted | RunStatus::RollingBack) {
        return Err(ExecError::WrongState(format!(
            "run {run_id} is {}; cancel it or let it finish before rolling it back",
            record.status.as_str()
        )));
    }
    if record.status == RunStatus::RolledBack {
        return Err(ExecError::WrongState(format!("run {run_id} is rolled back already")));
    }
    let prepared = prepare(&plan, &inputs)?;
    let plan = Arc::new(plan);
    let journal = store.journal(run_id)?;
    let logs = logs_dir(&plan, opts, run_id);
    std::fs::create_dir_all(&logs).map_err(ExecError::Report)?;
    let (exec, lines) = executor_for(run_id, &plan, inputs.catalog, opts, &logs, executor, &prepared);
    let exec_for_finish = exec.clone();
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (progress, _) = broadcast::channel(65_536);
    let mut s = Scheduler::new(
        plan.clone(),
        run_id.to_string(),
        store.clone(),
        exec,
        settings(&plan, opts, &prepared.mask),
        ctl_rx,
        progress.clone(),
    );
    s.replay(&journal);
    store.set_status(run_id, RunStatus::RollingBack, now_ms())?;
    let (id, plan2, logs2) = (run_id.to_string(), plan.clone(), logs.clone());
    let join = tokio::spawn(async move {
        let complete = s.rollback("rollback requested by an operator", true).await?;
        exec_for_finish.finish().await;
        let status = if complete {
            RunStatus::RolledBack
        } else {
            RunStatus::Failed
        };
        let now = now_ms();
        // The journal says how the run ended, as after any run.
        store.append(&id, &[(now, None, &drover_state::Event::RunFinished { status })])?;
        store.set_status(&id, status, now)?;
        let reason = if complete {
            "rolled back by hand"
        } else {
            "rollback by hand incomplete"
        };
        let summary = report::summarize(
            &id,
            &plan2,
            &s.nodes,
            status,
            reason.into(),
            &logs2,
            &store.journal(&id)?,
        );
        report::write(&summary, &logs2).map_err(ExecError::Report)?;
        Ok(summary)
    });
    Ok(RunHandle {
        run_id: run_id.to_string(),
        plan,
        logs_dir: logs,
        control: ctl_tx,
        progress,
        lines,
        join,
    })
}

/// The state of a run as its journal tells it, whether it is running,
/// finished, or was interrupted: what status views show.
pub fn status(store: &Store, run_id: &str, opts: &Options) -> Result<(RunRecord, Arc<Plan>, Summary), ExecError> {
    let (record, _, plan) = load(store, run_id)?;
    let journal = store.journal(run_id)?;
    let nodes = crate::scheduler::nodes_from_journal(&plan, &journal);
    let logs = logs_dir(&plan, opts, run_id);
    let reason = journal
        .iter()
        .rev()
        .find_map(|e| match &e.event {
            drover_state::Event::RunFinished { status } => Some(format!("finished {}", status.as_str())),
            _ => None,
        })
        .unwrap_or_default();
    let summary = report::summarize(run_id, &plan, &nodes, record.status, reason, &logs, &journal);
    Ok((record, Arc::new(plan), summary))
}

fn settings(plan: &Plan, opts: &Options, mask: &Masker) -> Settings {
    Settings {
        max_parallel: opts.max_parallel.unwrap_or_else(|| plan.max_parallel()).max(1),
        seed: opts.seed,
        mask: mask.clone(),
    }
}

type Executor = (Arc<dyn TaskExecutor>, Option<mpsc::UnboundedReceiver<TaskLine>>);

/// The executor given (tests, benchmarks), else the real runner.
fn executor_for(
    run_id: &str,
    plan: &Arc<Plan>,
    catalog: Catalog,
    opts: &Options,
    logs: &Path,
    given: Option<Arc<dyn TaskExecutor>>,
    prepared: &Prepared,
) -> Executor {
    if let Some(e) = given {
        return (e, None);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (tx, rx) = (Some(tx), Some(rx));
    let runner = Runner::new(
        run_id.to_string(),
        plan.clone(),
        Arc::new(catalog),
        registry(),
        Arc::new(LocalTransport),
        Paths {
            hosts_dir: opts.data_dir.join("hosts"),
            fleet_dir: opts.data_dir.join("fleet"),
            known_hosts: opts.data_dir.join("known_hosts"),
            keep_remote_dirs: opts.keep_remote_dirs,
            work_dir: opts.data_dir.join("work").join(run_id),
            logs_dir: logs.to_path_buf(),
        },
        tx,
    )
    .with_secrets(prepared.secrets.clone(), prepared.mask.clone());
    (Arc::new(runner), rx)
}

#[allow(clippy::too_many_arguments)]
fn launch(
    store: Arc<Store>,
    run_id: String,
    plan: Plan,
    catalog: Catalog,
    opts: &Options,
    executor: Option<Arc<dyn TaskExecutor>>,
    kind: Launch,
    journal: Vec<drover_state::Entry>,
    prepared: Prepared,
) -> Result<RunHandle, ExecError> {
    let plan = Arc::new(plan);
    let logs = logs_dir(&plan, opts, &run_id);
    std::fs::create_dir_all(&logs).map_err(ExecError::Report)?;
    let (exec, lines) = executor_for(&run_id, &plan, catalog, opts, &logs, executor, &prepared);
    let exec_for_finish = exec.clone();
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (progress, _) = broadcast::channel(65_536);
    let mut s = Scheduler::new(
        plan.clone(),
        run_id.clone(),
        store.clone(),
        exec,
        settings(&plan, opts, &prepared.mask),
        ctl_rx,
        progress.clone(),
    );
    match kind {
        Launch::Fresh => {
            s.started(false);
            s.prepare_fresh();
        }
        Launch::Resume => {
            s.replay(&journal);
            s.started(true);
            s.prepare_resume();
        }
        Launch::Retry(op) => {
            s.replay(&journal);
            s.started(true);
            s.prepare_retry(op);
        }
    }
    if opts.start_paused {
        s.pause();
    }
    let timeout = plan.workflow.timeout.map(Duration::from_secs);
    let (id, plan2, logs2) = (run_id.clone(), plan.clone(), logs.clone());
    let join = tokio::spawn(async move {
        let (finished, nodes) = s.run(timeout).await?;
        exec_for_finish.finish().await;
        let journal = store.journal(&id)?;
        let summary = report::summarize(&id, &plan2, &nodes, finished.status, finished.reason, &logs2, &journal);
        report::write(&summary, &logs2).map_err(ExecError::Report)?;
        Ok(summary)
    });
    Ok(RunHandle {
        run_id,
        plan,
        logs_dir: logs,
        control: ctl_tx,
        progress,
        lines,
        join,
    })
}
