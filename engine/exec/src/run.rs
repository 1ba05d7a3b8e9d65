//! Runs: start one, resume one after a crash, retry what failed, roll one
//! back by hand. Each returns a [`RunHandle`] to control and watch it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_core::Plan;
use drover_core::model::{Catalog, Source};
use drover_core::plan::Action;
use drover_provider::Providers;
use drover_state::{Entry, Event, RunRecord, RunStatus, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::mask::Masker;
use crate::report::{self, Summary};
use crate::runner::{Paths, RunSecrets, Runner, TaskExecutor, TaskLine};
use crate::scheduler::{Control, Progress, Scheduler, SchedulerError, Settings, Start, now_ms};

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

impl ExecError {
    /// Whether the run stopped (or could not start) because the state
    /// store's disk is full: it can go on once space is freed.
    pub fn is_disk_full(&self) -> bool {
        match self {
            ExecError::State(e) | ExecError::Scheduler(SchedulerError::Journal(e)) => e.is_disk_full(),
            _ => false,
        }
    }

    /// Whether the run stopped because this instance lost its lease on it
    /// (a shared store): another instance goes on with it.
    pub fn is_fenced(&self) -> bool {
        match self {
            ExecError::State(e) | ExecError::Scheduler(SchedulerError::Journal(e)) => e.is_fenced(),
            _ => false,
        }
    }
}

/// What a run needs besides its plan: its secrets (decrypted in memory
/// only, again at every resume) and the masker built from them.
#[derive(Debug, Clone, Default)]
struct Prepared {
    secrets: Arc<RunSecrets>,
    mask: Masker,
}

/// The workflow's SOPS secrets, decrypted, and the masker built from
/// them (nothing when the workflow has none).
fn decrypt(inputs: &Inputs) -> Result<Prepared, ExecError> {
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
    Ok(prepared)
}

/// The decrypted secrets tree of the run `run_id` (decrypted again from
/// its recorded inputs, in memory only) and the masker of their values:
/// what a notification about the run resolves `secret:PATH` references
/// with and masks its payload by. `Null` and a masker of nothing for a
/// workflow without secrets.
pub fn run_secrets(store: &Store, run_id: &str) -> Result<(serde_json::Value, Masker), ExecError> {
    let record = store.run(run_id)?;
    let inputs: Inputs = serde_json::from_value(record.inputs)
        .map_err(|e| ExecError::WrongState(format!("run {run_id} has unreadable inputs: {e}")))?;
    let prepared = decrypt(&inputs)?;
    Ok((prepared.secrets.tree.clone(), prepared.mask))
}

/// Decrypt the workflow's SOPS files (paths relative to the workflow
/// file) with its age identities, and check that every template of the
/// plan renders. Any failure stops the run before it starts.
fn prepare(plan: &Plan, inputs: &Inputs) -> Result<Prepared, ExecError> {
    let wf = &inputs.source.workflow;
    let prepared = decrypt(inputs)?;
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
    /// At most this many days of retention for a finished run, whatever
    /// its workflow's `logging.retention_days` says (a server's own limit).
    pub retention_cap_days: Option<u32>,
    /// Overrides the plan's global parallelism.
    pub max_parallel: Option<u32>,
    /// Seed of retry jitter.
    pub seed: u64,
    /// Leave the run's directories on SSH hosts ($TMPDIR/drover-<run>) for
    /// inspection instead of removing them at the end.
    pub keep_remote_dirs: bool,
    /// Start (or resume) with dispatching paused: an operator's pause that
    /// must hold across a restart of the orchestrator.
    pub start_paused: bool,
    /// The providers runs can drive (the binary's registry).
    pub providers: Providers,
}

impl Options {
    /// Defaults for a state database at `state`, driving `providers`.
    pub fn for_state(state: &Path, providers: Providers) -> Options {
        Options {
            providers,
            data_dir: state
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
            logs_root: None,
            retention_cap_days: None,
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
    journaled: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl RunHandle {
    /// Wait until the run's start is in the journal (a status read after
    /// this shows it started, resumed or rolling back). Taken once: later
    /// calls, and runs that ended before, return at once.
    pub fn take_journaled(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let rx = self.journaled.take();
        async move {
            if let Some(rx) = rx {
                let _ = rx.await;
            }
        }
    }

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

/// Refuse, before anything runs, a plan this build cannot carry out: a
/// provider it does not have, an action its provider cannot do, and what
/// each provider's own preflight finds wrong with its servers.
fn preflight(plan: &Plan, providers: &Providers) -> Result<(), ExecError> {
    let mut problems: Vec<String> = Vec::new();
    let mut add = |msg: String| {
        if !problems.contains(&msg) {
            problems.push(msg);
        }
    };
    let mut checked = std::collections::HashSet::new();
    for n in plan.graph.node_weights() {
        let Some(t) = n.task() else { continue };
        let server = t
            .server
            .as_ref()
            .and_then(|h| plan.workflow.servers.iter().find(|s| &s.hostname == h));
        let Some(name) = t.provider.clone().or_else(|| server.map(|s| s.provider.clone())) else {
            continue;
        };
        let Some(provider) = providers.get(&name) else {
            let have: Vec<&str> = providers.names().collect();
            add(format!(
                "provider {name} (task {}) has no implementation in this build; it can be planned, not run (this build drives: {})",
                t.id,
                have.join(", ")
            ));
            continue;
        };
        if t.action == Action::UpdateServer && !provider.updates_servers() {
            add(format!("task {}: provider {name} cannot update servers", t.id));
        }
        if t.action == Action::CreateNetwork && !provider.makes_networks() {
            add(format!("task {}: provider {name} makes no network", t.id));
        }
        if let Some(s) = server
            && checked.insert(s.hostname.clone())
        {
            for p in provider.preflight(s) {
                add(p);
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

/// Plans of stored runs, built once per run and shared (status views,
/// event and log streams, resumes): a run's inputs never change, so
/// neither does its plan. Bounded; the oldest goes first.
struct PlanCache {
    plans: std::collections::HashMap<(PathBuf, String), Arc<Plan>>,
    order: std::collections::VecDeque<(PathBuf, String)>,
}

/// How many plans the cache keeps.
const PLANS_KEPT: usize = 128;

static PLANS: std::sync::Mutex<Option<PlanCache>> = std::sync::Mutex::new(None);

/// The plan of stored run `record` (built from its inputs once).
fn plan_for(store: &Store, record: &RunRecord, inputs: &Inputs) -> Result<Arc<Plan>, ExecError> {
    let key = (store.path().to_path_buf(), record.id.clone());
    {
        let cache = PLANS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(plan) = cache.as_ref().and_then(|c| c.plans.get(&key)) {
            return Ok(plan.clone());
        }
    }
    let plan = Arc::new(plan_of(inputs)?);
    let mut cache = PLANS.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(|| PlanCache {
        plans: std::collections::HashMap::new(),
        order: std::collections::VecDeque::new(),
    });
    if cache.plans.insert(key.clone(), plan.clone()).is_none() {
        cache.order.push_back(key);
        while cache.order.len() > PLANS_KEPT {
            if let Some(old) = cache.order.pop_front() {
                cache.plans.remove(&old);
            }
        }
    }
    Ok(plan)
}

/// Where a run's task logs and reports are.
pub fn logs_dir(plan: &Plan, opts: &Options, run_id: &str) -> PathBuf {
    opts.logs_root
        .clone()
        .unwrap_or_else(|| PathBuf::from(&plan.workflow.logging.dir))
        .join(run_id)
}

/// Why `logging.dir` cannot be taken under a server's log directory: it
/// is absolute or climbs out with `..`. None when it can.
pub fn logging_dir_problem(dir: &str) -> Option<String> {
    let path = Path::new(dir);
    if path.is_absolute() {
        return Some(format!(
            "logging.dir {dir:?} is absolute; a workflow submitted to a server keeps its logs under the server's log directory (--logs): give a relative directory such as \"logs\""
        ));
    }
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Some(format!(
            "logging.dir {dir:?} climbs out with \"..\"; a workflow submitted to a server keeps its logs under the server's log directory (--logs): give a directory below it"
        ));
    }
    None
}

/// Check that `inputs` can run (plan, providers, secrets, templates) and
/// record a new run of it, queued.
fn record(
    store: &Store,
    inputs: Inputs,
    providers: Option<&Providers>,
) -> Result<(String, Arc<Plan>, Inputs, Prepared), ExecError> {
    record_with(inputs, providers, store.is_shared(), |run| store.create_run(run))
}

/// [`record`], with `create` writing the run's record to the store.
fn record_with(
    mut inputs: Inputs,
    providers: Option<&Providers>,
    shared: bool,
    create: impl FnOnce(&RunRecord) -> Result<(), drover_state::StateError>,
) -> Result<(String, Arc<Plan>, Inputs, Prepared), ExecError> {
    check_store(&inputs.source.workflow, shared)?;
    // Stored absolute, so a resume from another directory finds the
    // secrets files again.
    if let Ok(abs) = inputs.source.file.canonicalize() {
        inputs.source.file = abs;
    }
    let plan = Arc::new(plan_of(&inputs)?);
    if let Some(providers) = providers {
        preflight(&plan, providers)?;
    }
    let prepared = prepare(&plan, &inputs)?;
    let run_id = new_run_id();
    let now = now_ms();
    create(&RunRecord {
        id: run_id.clone(),
        workflow: plan.workflow.name.clone(),
        file: inputs.source.file.display().to_string(),
        status: RunStatus::Queued,
        created_at_ms: now,
        updated_at_ms: now,
        inputs: serde_json::to_value(&inputs).map_err(|e| ExecError::WrongState(e.to_string()))?,
    })?;
    Ok((run_id, plan, inputs, prepared))
}

/// Accept a run of `inputs` without starting it: everything that would
/// stop it from starting (plan, providers, secrets, templates) is checked
/// now, and the run is recorded as queued. [`resume`] starts it.
pub fn enqueue(store: &Store, inputs: Inputs, providers: &Providers) -> Result<String, ExecError> {
    record(store, inputs, Some(providers)).map(|(id, ..)| id)
}

/// [`enqueue`], with `create` writing the queued run's record, so the
/// caller can write more in the same transaction (a schedule claims its
/// slot with the run it fires: `Store::claim_slot`).
pub fn enqueue_with(
    inputs: Inputs,
    providers: &Providers,
    shared: bool,
    create: impl FnOnce(&RunRecord) -> Result<(), drover_state::StateError>,
) -> Result<String, ExecError> {
    record_with(inputs, Some(providers), shared, create).map(|(id, ..)| id)
}

/// A workflow's `monitoring.state_store`, against the store its run would
/// be kept in (`shared`: PostgreSQL).
pub fn check_store(workflow: &drover_core::model::Workflow, shared: bool) -> Result<(), ExecError> {
    use drover_core::model::StateStore;
    match (workflow.monitoring.state_store, shared) {
        (Some(StateStore::Postgres), false) => Err(ExecError::Unsupported(
            "workflow.monitoring.state_store = \"postgres\": this orchestrator keeps its state in an SQLite file, and a \
             workflow cannot move its runs to another store; submit it to a drover serve whose --state is a postgres:// \
             URL, or remove the field"
                .into(),
        )),
        (Some(StateStore::Sqlite), true) => Err(ExecError::Unsupported(
            "workflow.monitoring.state_store = \"sqlite\": this server keeps its state in PostgreSQL, shared by its \
             instances, and a workflow cannot move its runs to another store; run it where the state is an SQLite file \
             (drover run, or a drover serve on one), or remove the field"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Start a new run of `inputs`.
pub fn start(
    store: Arc<Store>,
    inputs: Inputs,
    opts: &Options,
    executor: Option<Arc<dyn TaskExecutor>>,
) -> Result<RunHandle, ExecError> {
    let providers = executor.is_none().then_some(&opts.providers);
    let (run_id, plan, inputs, prepared) = record(&store, inputs, providers)?;
    launch(Launch {
        store,
        run_id,
        plan,
        inputs,
        opts,
        executor,
        start: Start::Fresh,
        journal: Vec::new(),
        prepared,
    })
}

fn load(store: &Store, run_id: &str) -> Result<(RunRecord, Inputs, Arc<Plan>), ExecError> {
    let record = store.run(run_id)?;
    let inputs: Inputs = serde_json::from_value(record.inputs.clone())
        .map_err(|e| ExecError::WrongState(format!("run {run_id} has unreadable inputs: {e}")))?;
    let plan = plan_for(store, &record, &inputs)?;
    Ok((record, inputs, plan))
}

/// Continue an unfinished run from its journal: finished tasks are not run
/// again; tasks that were in flight run again with the same idempotency
/// key; a rollback that was going on goes on. A queued run starts.
pub fn resume(
    store: Arc<Store>,
    run_id: &str,
    opts: &Options,
    executor: Option<Arc<dyn TaskExecutor>>,
) -> Result<RunHandle, ExecError> {
    let (record, inputs, plan) = load(&store, run_id)?;
    if !record.status.is_unfinished() {
        return Err(ExecError::WrongState(format!(
            "run {run_id} is {}; only queued, running, paused, aborted or rolling-back runs resume (use `drover retry` for a finished one)",
            record.status.as_str()
        )));
    }
    if executor.is_none() {
        preflight(&plan, &opts.providers)?;
    }
    let prepared = prepare(&plan, &inputs)?;
    let journal = store.journal(run_id)?;
    let start = if record.status == RunStatus::Queued {
        Start::Fresh
    } else {
        Start::Resume
    };
    launch(Launch {
        store,
        run_id: run_id.to_string(),
        plan,
        inputs,
        opts,
        executor,
        start,
        journal,
        prepared,
    })
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
        preflight(&plan, &opts.providers)?;
    }
    let prepared = prepare(&plan, &inputs)?;
    let journal = store.journal(run_id)?;
    launch(Launch {
        store,
        run_id: run_id.to_string(),
        plan,
        inputs,
        opts,
        executor,
        start: Start::Retry(op),
        journal,
        prepared,
    })
}

/// Undo, by hand, everything a finished, failed or interrupted run did
/// that can be undone, in reverse dependency order. The run ends rolled
/// back, or failed when some compensation failed.
pub fn rollback(
    store: Arc<Store>,
    run_id: &str,
    opts: &Options,
    executor: Option<Arc<dyn TaskExecutor>>,
) -> Result<RunHandle, ExecError> {
    let (record, inputs, plan) = load(&store, run_id)?;
    if record.status.is_unfinished() && !matches!(record.status, RunStatus::Aborted | RunStatus::Paused) {
        return Err(ExecError::WrongState(format!(
            "run {run_id} is {}; cancel it or let it finish before rolling it back",
            record.status.as_str()
        )));
    }
    if record.status == RunStatus::RolledBack {
        return Err(ExecError::WrongState(format!("run {run_id} is rolled back already")));
    }
    let prepared = prepare(&plan, &inputs)?;
    let journal = store.journal(run_id)?;
    launch(Launch {
        store,
        run_id: run_id.to_string(),
        plan,
        inputs,
        opts,
        executor,
        start: Start::Rollback,
        journal,
        prepared,
    })
}

/// End a run that never started and never will (cancelled while queued,
/// or interrupted and then cancelled), through the journal.
pub fn cancel_unstarted(store: &Store, run_id: &str) -> Result<(), ExecError> {
    let now = now_ms();
    store.append(
        run_id,
        &[
            (now, None, &Event::CancelRequested),
            (
                now,
                None,
                &Event::RunFinished {
                    status: RunStatus::Cancelled,
                    reason: Some("cancelled by an operator before it ran again".into()),
                },
            ),
        ],
    )?;
    Ok(())
}

/// End a queued run that cannot start (what was checked when it was
/// accepted changed since: a secrets file, a provider), saying why.
pub fn fail_unstartable(store: &Store, run_id: &str, why: &str) -> Result<(), ExecError> {
    store.append(
        run_id,
        &[(
            now_ms(),
            None,
            &Event::RunFinished {
                status: RunStatus::Failed,
                reason: Some(format!("it could not start: {why}")),
            },
        )],
    )?;
    Ok(())
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
            Event::RunFinished { status, reason } => Some(
                reason
                    .clone()
                    .unwrap_or_else(|| format!("finished {}", status.as_str())),
            ),
            _ => None,
        })
        .unwrap_or_default();
    let summary = report::summarize(run_id, &plan, &nodes, record.status, reason, &logs, &journal);
    Ok((record, plan, summary))
}

/// The plan of a stored run, built once and shared.
pub fn plan(store: &Store, run_id: &str) -> Result<Arc<Plan>, ExecError> {
    load(store, run_id).map(|(_, _, plan)| plan)
}

/// Remove finished runs (succeeded, failed, cancelled, rolled back: never
/// one in progress or resumable), their journals and their log
/// directories: each older than `older_than` when given, else than its
/// own workflow's `logging.retention_days`. Returns the ids removed.
pub fn prune(store: &Store, opts: &Options, older_than: Option<Duration>, now: i64) -> Result<Vec<String>, ExecError> {
    let mut expired = Vec::new();
    for r in store.runs()? {
        if !r.status.is_final() {
            continue;
        }
        let (record, inputs, plan) = match load(store, &r.id) {
            Ok(x) => x,
            Err(ExecError::State(e)) => return Err(ExecError::State(e)),
            // A run whose inputs no longer plan still goes with its age.
            Err(_) => {
                let keep = older_than.unwrap_or(Duration::from_secs(30 * 86_400));
                if now - r.updated_at_ms >= keep.as_millis() as i64 {
                    expired.push((r.id.clone(), None));
                }
                continue;
            }
        };
        let _ = inputs;
        let days = match opts.retention_cap_days.filter(|d| *d > 0) {
            Some(cap) => plan.workflow.logging.retention_days.min(cap),
            None => plan.workflow.logging.retention_days,
        };
        let keep = older_than.unwrap_or_else(|| Duration::from_secs(u64::from(days) * 86_400));
        if now - record.updated_at_ms >= keep.as_millis() as i64 {
            expired.push((r.id.clone(), Some(logs_dir(&plan, opts, &r.id))));
        }
    }
    let ids: Vec<String> = expired.iter().map(|(id, _)| id.clone()).collect();
    let deleted = store.delete_final(&ids)?;
    for (id, logs) in expired {
        if deleted.contains(&id)
            && let Some(dir) = logs
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(deleted)
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
    inputs: Inputs,
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
    let base_dir = inputs.source.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let runner = Runner::new(
        run_id.to_string(),
        plan.clone(),
        Arc::new(inputs.catalog),
        opts.providers.clone(),
        Paths {
            data_dir: opts.data_dir.clone(),
            logs_dir: logs.to_path_buf(),
            base_dir,
            keep_remote_dirs: opts.keep_remote_dirs,
        },
        tx,
    )
    .with_secrets(prepared.secrets.clone(), prepared.mask.clone());
    let runner = Arc::new(runner);
    runner.warm_up();
    (runner, rx)
}

/// Everything a launch needs.
struct Launch<'a> {
    store: Arc<Store>,
    run_id: String,
    plan: Arc<Plan>,
    inputs: Inputs,
    opts: &'a Options,
    executor: Option<Arc<dyn TaskExecutor>>,
    start: Start,
    journal: Vec<Entry>,
    prepared: Prepared,
}

fn launch(l: Launch<'_>) -> Result<RunHandle, ExecError> {
    let Launch {
        store,
        run_id,
        plan,
        inputs,
        opts,
        executor,
        start,
        journal,
        prepared,
    } = l;
    let logs = logs_dir(&plan, opts, &run_id);
    std::fs::create_dir_all(&logs).map_err(ExecError::Report)?;
    let (exec, lines) = executor_for(&run_id, &plan, inputs, opts, &logs, executor, &prepared);
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
    s.prepare(start, &journal);
    if opts.start_paused {
        s.pause();
    }
    let journaled = Some(s.journaled());
    let timeout = plan.workflow.timeout.map(Duration::from_secs);
    let (id, plan2, logs2) = (run_id.clone(), plan.clone(), logs.clone());
    let join = tokio::spawn(async move {
        let (finished, nodes) = s.run(timeout).await?;
        exec_for_finish.finish().await;
        let journal = {
            let (store, id) = (store.clone(), id.clone());
            tokio::task::spawn_blocking(move || store.journal(&id))
                .await
                .map_err(|e| ExecError::WrongState(format!("reading the journal failed: {e}")))??
        };
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
        journaled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-server workflow on a catalog with the local provider only.
    fn inputs() -> Inputs {
        let catalog: Catalog = serde_json::from_value(serde_json::json!({
            "providers": {"local": {
                "name": "local", "requires_network": false, "network_before_servers": false,
                "api_rate_limit": 10.0, "batch_size": 10,
                "plans": {"small": {"cpu": 1, "memory": 512, "disk": 1}}
            }},
            "taskservs": {}
        }))
        .unwrap_or_default();
        let workflow = serde_json::from_value(serde_json::json!({
            "name": "w",
            "servers": [{"hostname": "h", "provider": "local", "plan": "small", "connection": "local"}],
            "operations": [{"id": "c", "type": "create", "target": "server"}],
        }));
        Inputs {
            source: Source {
                file: PathBuf::from("w.k"),
                workflow: workflow.unwrap_or_else(|e| panic!("workflow: {e}")),
            },
            catalog,
        }
    }

    #[test]
    fn a_stored_runs_plan_is_built_once_and_shared() -> Result<(), ExecError> {
        let store = Store::open(Path::new(":memory:"))?;
        let id = enqueue(
            &store,
            inputs(),
            &Providers::new().with(drover_provider_local::LocalProvider),
        )?;
        let a = plan(&store, &id)?;
        let b = plan(&store, &id)?;
        assert!(Arc::ptr_eq(&a, &b), "status views and streams re-planned the run");
        let (_, c, _) = status(&store, &id, &Options::for_state(store.path(), Providers::new()))?;
        assert!(Arc::ptr_eq(&a, &c));
        Ok(())
    }
}
