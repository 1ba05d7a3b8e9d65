//! The orchestrator: a FIFO queue of runs in front of the executor.
//!
//! At most `max_running` runs execute at once and at most `max_pending`
//! wait; a submission beyond that is refused (429). Accepted runs are
//! recorded in the state store as `queued` before the client hears about
//! them, so a crash loses none: on start, every unfinished run is taken up
//! again from the journal (interrupted ones first, then the queued, oldest
//! first).
//!
//! One supervisor task per executing run pumps its journal events into the
//! metrics and its output lines into the run's log stream, and on the end
//! frees the slot. Operator commands (pause, resume, cancel) go to the
//! run's scheduler; retry and rollback start at once, outside the queue.
//!
//! On a shared (PostgreSQL) store, the queue is the database's: runs are
//! taken up under leases ([`crate::cluster`]) by whichever instance has a
//! free slot, and a command for a run another instance executes is
//! handed to that instance through the store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_core::Plan;
use drover_core::model::{Selector, Server};
use drover_exec::fleet::{ExecSpec, Fleet};
use drover_exec::run::{self, Inputs};
use drover_exec::{Control, ExecError, Options, Progress, RunHandle};
use drover_kcl::problems::Problems;
use drover_kcl::{EvalError, Evaluation, LoadError, Loader, Pool, PoolConfig};
use drover_state::{Event, RunStatus, Store};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::ApiError;
use crate::logs::LogHub;
use crate::metrics::Metrics;
use crate::schedules::Claim;
use crate::wire::{OperationPlan, SubmitRequest, SubmitResponse, TaskRef};

/// Queue limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Runs executing at once.
    pub max_running: usize,
    /// Runs waiting at most; more are refused.
    pub max_pending: usize,
    /// On a shared store: how long a lease on a run lasts unless renewed
    /// (an instance that stops renewing loses its runs to the others
    /// after this).
    pub lease_ttl: Duration,
}

/// How `drover serve` evaluates submitted workflows: in KCL worker
/// processes (see `drover_kcl::pool`), never in its own.
#[derive(Debug, Clone)]
pub struct KclSettings {
    /// The program a worker is and its arguments (the drover binary and
    /// `kcl-worker`).
    pub worker: (PathBuf, Vec<OsString>),
    /// Workers evaluating at once.
    pub workers: usize,
    /// The time one evaluation may take.
    pub timeout: Duration,
    /// Each worker's memory (address space), bytes.
    pub memory_bytes: u64,
    /// The directories whose `.k` files may be submitted by path (none:
    /// path submissions are refused).
    pub workflows_dirs: Vec<PathBuf>,
}

/// What evaluates submitted workflows, and what path submissions may name.
#[derive(Debug)]
pub struct Evaluator {
    /// The workers; else why there are none (said to every submitter).
    pool: Result<Pool, String>,
    /// The workflows roots, canonical (symlinks resolved).
    roots: Vec<PathBuf>,
}

impl Evaluator {
    /// Start the workers for `settings` with the engine and home of
    /// `loader`; at most `max_waiting` evaluations wait for one. A failure
    /// is logged and kept: submissions are then refused saying why.
    pub async fn start(settings: &KclSettings, loader: Option<&Loader>, max_waiting: usize) -> Evaluator {
        let mut roots = Vec::new();
        for dir in &settings.workflows_dirs {
            match dir.canonicalize() {
                Ok(r) if r.is_dir() => roots.push(r),
                Ok(_) => {
                    tracing::error!(dir = %dir.display(), "a workflows directory is not a directory; path submissions ignore it")
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "a workflows directory cannot be read; path submissions ignore it")
                }
            }
        }
        if roots.is_empty() {
            tracing::info!("no workflows directory: submissions by path are refused (see --workflows-dir)");
        } else {
            tracing::info!(roots = ?roots, "submissions by path may name .k files under these directories");
        }
        let Some(loader) = loader else {
            return Evaluator {
                pool: Err("this server has no KCL engine; run `make setup` or set DROVER_VENV".into()),
                roots,
            };
        };
        let (program, args) = settings.worker.clone();
        let mut config = PoolConfig::new(program, args, loader.home(), loader.engine_location().clone());
        config.workers = settings.workers.max(1);
        config.max_waiting = max_waiting;
        config.timeout = settings.timeout;
        config.memory_bytes = settings.memory_bytes;
        config.workflows = roots.clone();
        let (workers, timeout, memory) = (config.workers, config.timeout, config.memory_bytes);
        let pool = match Pool::start(config).await {
            Ok(pool) => {
                tracing::info!(
                    workers,
                    timeout_s = timeout.as_secs_f64(),
                    memory_mib = memory >> 20,
                    "KCL workers ready: submitted workflows are evaluated in them"
                );
                Ok(pool)
            }
            Err(e) => {
                tracing::error!(error = %e, "no KCL worker could start: submissions will be refused");
                Err(format!("the server cannot evaluate workflows: {e}"))
            }
        };
        Evaluator { pool, roots }
    }
}

/// A run executing in this process.
struct Active {
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    progress: broadcast::Sender<Progress>,
    logs: Arc<LogHub>,
    /// Tasks running now (from the journal events), so a shutdown can wait
    /// for them.
    running_tasks: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<String>,
    /// Submissions being evaluated that already hold a place in `pending`.
    reserved: usize,
    active: HashMap<String, Active>,
    /// Runs that were paused when the server stopped: paused again when
    /// they resume.
    keep_paused: HashSet<String>,
    /// Runs stopped because the state store's disk is full, and why: each
    /// is journaled as aborted, then resumed, once the store can be
    /// written again.
    stalled: HashMap<String, String>,
}

/// The orchestrator. Shared by the API handlers (`Arc`).
pub struct Orchestrator {
    store: Arc<Store>,
    opts: Options,
    loader: Option<Arc<Loader>>,
    limits: Limits,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Set on shutdown: nothing new starts, streams end.
    pub stopping: CancellationToken,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Where submitted sources are kept.
    submissions: PathBuf,
    /// The server's log directory: a submitted workflow's `logging.dir`
    /// is taken under it.
    logs_under: std::sync::OnceLock<PathBuf>,
    /// Evaluates submitted workflows; admits path submissions.
    evaluator: Evaluator,
    /// Wakes the schedules' loop when a schedule is created or changed
    /// (it recomputes its next slot).
    pub schedules_changed: Arc<Notify>,
    /// Tells notification targets about runs that end (set once at
    /// start; unset, nothing is told).
    notifier: std::sync::OnceLock<Arc<crate::notify::Notifier>>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("state", &self.store.path())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Why the orchestrator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] drover_state::StateError),
}

/// An operator's command for a run in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop dispatching.
    Pause,
    /// Dispatch again, or take up an interrupted run.
    Resume,
    /// Stop everything.
    Cancel,
}

impl Command {
    /// Its name, as the API and the store's requests say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Cancel => "cancel",
        }
    }

    /// The command named `s`.
    pub fn parse(s: &str) -> Option<Command> {
        [Command::Pause, Command::Resume, Command::Cancel]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Holds a place in the queue while a submission is evaluated.
struct Reservation<'a>(&'a Orchestrator);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut q = lock(&self.0.queue);
        q.reserved = q.reserved.saturating_sub(1);
    }
}

impl Orchestrator {
    /// An orchestrator on `store`. `evaluator` evaluates submitted
    /// workflows (in worker processes); `loader` evaluates the home's
    /// declarations, which are the server's own (None: submissions are
    /// refused, e.g. no KCL engine).
    pub fn new(
        store: Arc<Store>,
        opts: Options,
        loader: Option<Arc<Loader>>,
        limits: Limits,
        evaluator: Evaluator,
    ) -> Arc<Orchestrator> {
        let submissions = opts.data_dir.join("submissions");
        if let Ok(data) = opts.data_dir.canonicalize()
            && let Some(root) = evaluator.roots.iter().find(|r| data.starts_with(r))
        {
            tracing::warn!(
                workflows_dir = %root.display(),
                state_dir = %data.display(),
                "a workflows directory holds the server's state directory: a workflow submitted by path from it can read the files there (the token file, the state database, kept sources); give a --workflows-dir that does not"
            );
        }
        Arc::new(Orchestrator {
            store,
            opts,
            loader,
            limits: Limits {
                max_running: limits.max_running.max(1),
                max_pending: limits.max_pending,
                lease_ttl: limits.lease_ttl.max(Duration::from_millis(300)),
            },
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            stopping: CancellationToken::new(),
            metrics: Metrics::new(),
            submissions,
            logs_under: std::sync::OnceLock::new(),
            evaluator,
            schedules_changed: Arc::new(Notify::new()),
            notifier: std::sync::OnceLock::new(),
        })
    }

    /// The state store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Tell `notifier`'s targets about runs that end (and let other
    /// parts emit through it). Set once, before the first run starts.
    pub fn set_notifier(&self, notifier: Arc<crate::notify::Notifier>) {
        let _ = self.notifier.set(notifier);
    }

    /// The notifier, once set: what schedules, drift and watches emit
    /// their events through ([`crate::notify::Notifier::emit_server`]).
    pub fn notifier(&self) -> Option<&Arc<crate::notify::Notifier>> {
        self.notifier.get()
    }

    /// Tell the notification targets, asynchronously, that run `id`
    /// ended with `status` without executing (cancelled while queued or
    /// interrupted, or unable to start).
    fn tell_unstarted(&self, id: &str, status: RunStatus, reason: &str) {
        if let (Some(n), Ok(rt)) = (self.notifier().cloned(), tokio::runtime::Handle::try_current()) {
            let (id, reason) = (id.to_string(), reason.to_string());
            rt.spawn(async move { n.run_ended_unstarted(&id, status, &reason).await });
        }
    }

    /// The queue limits and the lease's time to live.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Run options.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// Take up every unfinished run of the store: interrupted ones first
    /// (they resume from their journals), then queued ones, oldest first.
    /// Returns how many were taken up.
    pub fn recover(self: &Arc<Self>) -> Result<usize, StartError> {
        if self.store.is_shared() {
            // The instances share the queue: dispatch claims runs (the
            // interrupted first) as leases allow.
            self.wake.notify_one();
            return Ok(0);
        }
        let mut runs = self.store.runs()?;
        runs.reverse();
        let mut q = lock(&self.queue);
        let mut interrupted = Vec::new();
        let mut queued = Vec::new();
        for r in runs {
            match r.status {
                // A rollback that was going on goes on (its journal says
                // how it was started), as do interrupted runs.
                RunStatus::Running | RunStatus::Aborted | RunStatus::RollingBack => interrupted.push(r.id),
                RunStatus::Paused => {
                    q.keep_paused.insert(r.id.clone());
                    interrupted.push(r.id);
                }
                RunStatus::Queued => queued.push(r.id),
                _ => {}
            }
        }
        let n = interrupted.len() + queued.len();
        q.pending.extend(interrupted);
        q.pending.extend(queued);
        drop(q);
        if n > 0 {
            tracing::info!(runs = n, "taking up unfinished runs from the journal");
        }
        self.wake.notify_one();
        Ok(n)
    }

    /// Start queued runs while there are free slots; until shutdown.
    pub async fn dispatch(self: Arc<Self>) {
        let mut notices = self.store.subscribe();
        loop {
            if self.store.is_shared() && !self.stopping.is_cancelled() {
                let this = self.clone();
                let _ = tokio::task::spawn_blocking(move || this.claim()).await;
            }
            self.start_ready();
            tokio::select! {
                _ = self.wake.notified() => {}
                // Runs other instances queue or give up, and leases that
                // expire (no notice): looked for at least this often.
                _ = async {
                    match notices.as_mut() {
                        Some(rx) => loop {
                            match rx.recv().await {
                                Ok(drover_state::Notice::Runs) => break,
                                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                            }
                        },
                        None => std::future::pending::<()>().await,
                    }
                } => {}
                _ = tokio::time::sleep(crate::cluster::claim_interval(self.limits.lease_ttl)), if self.store.is_shared() => {}
                _ = self.stopping.cancelled() => return,
            }
        }
    }

    /// Take leases on runs no instance executes, up to this instance's
    /// free slots (and `max_running` across instances); they join
    /// `pending`. Blocking: call it off the runtime's workers.
    fn claim(&self) {
        let free = {
            let q = lock(&self.queue);
            self.limits.max_running.saturating_sub(q.active.len() + q.pending.len())
        };
        if free == 0 {
            return;
        }
        let ttl_ms = self.limits.lease_ttl.as_millis() as i64;
        match self.store.claim_runs(ttl_ms, self.limits.max_running, free) {
            Ok(claims) => {
                let mut q = lock(&self.queue);
                for c in claims {
                    tracing::info!(run_id = %c.id, fence = c.fence, status = c.status.as_str(), "took up a run (lease)");
                    if c.status == RunStatus::Paused {
                        q.keep_paused.insert(c.id.clone());
                    }
                    q.pending.push_back(c.id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot claim runs from the shared store"),
        }
    }

    /// Give up this instance's lease on `id` (shared store; nothing on
    /// SQLite). Blocking.
    fn release(&self, id: &str) {
        if let Err(e) = self.store.release(id) {
            tracing::warn!(run_id = %id, error = %e, "cannot release the lease on the run; it expires");
        }
    }

    /// Stop executing `id` at once, writing nothing more for it: its
    /// lease is lost (or may be).
    pub(crate) fn lose(&self, id: &str) {
        self.store.lose(id);
        if let Some(a) = lock(&self.queue).active.get(id) {
            let _ = a.control.send(Control::Abort);
        }
    }

    fn start_ready(self: &Arc<Self>) {
        loop {
            // The run goes from `pending` to `active` under one lock, so no
            // request sees it in neither (a cancel or a resume then would
            // act on a run that is starting).
            let mut q = lock(&self.queue);
            if self.stopping.is_cancelled() || q.active.len() >= self.limits.max_running {
                return;
            }
            let Some(id) = q.pending.pop_front() else { return };
            let mut opts = self.opts.clone();
            // An operator's pause holds across a restart: the scheduler
            // starts paused, before it dispatches anything.
            opts.start_paused = q.keep_paused.remove(&id);
            match run::resume(self.store.clone(), &id, &opts, None) {
                Ok(handle) => self.adopt(&mut q, handle),
                Err(e) if e.is_disk_full() => {
                    drop(q);
                    self.stall(&id, e.to_string());
                }
                Err(e) => {
                    drop(q);
                    // It was checked when accepted; what changed since
                    // (a secrets file, a provider) is the operator's to fix.
                    tracing::error!(run_id = %id, error = %e, "a queued run cannot start; marked failed");
                    if let Err(e) = run::fail_unstartable(&self.store, &id, &e.to_string()) {
                        tracing::error!(run_id = %id, error = %e, "cannot record that the run failed");
                    } else {
                        self.tell_unstarted(&id, RunStatus::Failed, &e.to_string());
                    }
                    self.release(&id);
                }
            }
        }
    }

    /// Track an executing run until it ends. The caller holds the queue
    /// lock (`q`), so the run appears in `active` in the same step that
    /// started it.
    fn adopt(self: &Arc<Self>, q: &mut Queue, mut handle: RunHandle) {
        let id = handle.run_id.clone();
        let plan = handle.plan.clone();
        let logs = Arc::new(LogHub::open_in(
            &handle.logs_dir,
            &plan,
            Some((self.store.clone(), &id)),
        ));
        let logs_end = logs.clone();
        let running_tasks = Arc::new(AtomicUsize::new(0));
        let logging = &plan.workflow.logging;
        let trace_id = crate::logging::trace_id();
        crate::logging::register_run_in(&id, &handle.logs_dir, logging.level, logging.format);
        let span = tracing::info_span!("run", run_id = %id, workflow = %plan.workflow.name, trace_id = %trace_id);
        let mut events = handle.subscribe();
        let lines = handle.lines.take();
        q.active.insert(
            id.clone(),
            Active {
                control: handle.controller(),
                progress: handle.progress(),
                logs: logs.clone(),
                running_tasks: running_tasks.clone(),
            },
        );
        let this = self.clone();
        let operation_of: HashMap<String, String> = plan
            .graph
            .node_weights()
            .filter_map(|n| {
                n.task()
                    .map(|t| (t.id.clone(), plan.operations[t.operation].id.clone()))
            })
            .collect();
        let server_of: HashMap<String, String> = plan
            .graph
            .node_weights()
            .filter_map(|n| n.task().and_then(|t| t.server.clone().map(|s| (t.id.clone(), s))))
            .collect();
        // monitoring.metrics = False: the run's tasks are not counted (the
        // run itself is, by status, from the store).
        let counted = plan.workflow.monitoring.metrics;
        let (workflow_name, notifications) = (plan.workflow.name.clone(), plan.workflow.notifications.clone());
        tracing::info!(parent: &span, tasks = plan.task_count(), "run started");
        let pump_span = span.clone();
        let ended = CancellationToken::new();
        let pump_ended = ended.clone();
        let pump = tokio::spawn(
            async move {
                let mut lines = lines;
                loop {
                    tokio::select! {
                        biased;
                        p = events.recv() => match p {
                            Ok(p) => {
                                if counted {
                                    this.metrics.observe(&operation_of, &p);
                                }
                                count_running(&running_tasks, &operation_of, &p);
                                crate::logging::log_transition(&p, &operation_of, &server_of);
                            }
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!(missed = n, "metrics missed journal events (the journal has them)");
                            }
                            Err(broadcast::error::RecvError::Closed) => break,
                        },
                        l = async {
                            match lines.as_mut() {
                                Some(rx) => rx.recv().await,
                                None => std::future::pending().await,
                            }
                        } => match l {
                            Some(l) => logs.push(&l),
                            None => lines = None,
                        },
                        _ = pump_ended.cancelled() => break,
                    }
                }
                // The run is over: what is left in the channels is all
                // there will be.
                while let Ok(p) = events.try_recv() {
                    if counted {
                        this.metrics.observe(&operation_of, &p);
                    }
                }
                if let Some(mut rx) = lines {
                    while let Ok(l) = rx.try_recv() {
                        logs.push(&l);
                    }
                }
            }
            .instrument(pump_span),
        );
        let this = self.clone();
        tokio::spawn(
            async move {
                let result = handle.wait().await;
                // Every event and line is in the channels now; once the
                // pump has them, the run leaves `active` (streams then
                // read the rest from the journal and the log file).
                ended.cancel();
                let _ = pump.await;
                logs_end.finish().await;
                // Another instance may take the run up from here (an
                // aborted one resumes there).
                {
                    let (this, id) = (this.clone(), id.clone());
                    let _ = tokio::task::spawn_blocking(move || this.release(&id)).await;
                }
                let active = lock(&this.queue).active.remove(&id);
                drop(active);
                match result {
                    Ok(summary) => {
                        tracing::info!(status = summary.status.as_str(), reason = %summary.reason, "run ended");
                        // Told asynchronously: a notification never
                        // holds up or fails the run.
                        if let Some(n) = this.notifier().cloned() {
                            let (id, status, reason) = (id.clone(), summary.status, summary.reason.clone());
                            tokio::spawn(async move {
                                n.run_ended(&id, &workflow_name, status, &reason, &notifications).await;
                            });
                        }
                    }
                    Err(e) if e.is_fenced() => {
                        tracing::warn!(error = %e, "this instance lost its lease on the run and stopped it; another instance goes on with it");
                    }
                    Err(e) if e.is_disk_full() => {
                        tracing::error!(error = %e, "the run stopped: its journal cannot be written (disk full); it resumes once space is freed");
                        this.stall(&id, e.to_string());
                    }
                    Err(e) if this.store.is_shared() => tracing::error!(
                        error = %e,
                        "the run stopped here: its journal cannot be written to the shared store; once its lease expires, an instance (this one too) takes it up from the journal"
                    ),
                    Err(e) => tracing::error!(error = %e, "run ended abnormally"),
                }
                crate::logging::unregister_run(&id);
                this.wake.notify_one();
            }
            .instrument(span),
        );
    }

    /// Keep the logs of submitted workflows under `dir` (absolute): a
    /// workflow's relative `logging.dir` becomes `<dir>/<logging.dir>`,
    /// recorded so in the run's inputs (every later resume, status and
    /// retention finds them there); an absolute one, or one with `..`, is
    /// refused. Set once, before the first submission.
    pub fn keep_logs_under(&self, dir: PathBuf) {
        let _ = self.logs_under.set(dir);
    }

    /// Why `id` is held: its journal could not be written (disk full).
    pub fn stalled(&self, id: &str) -> Option<String> {
        lock(&self.queue).stalled.get(id).cloned()
    }

    /// Hold a run whose journal cannot be written because the disk is
    /// full: try, with backoff, to journal it as aborted; once that
    /// succeeds (space is back) it is queued first and resumes from its
    /// journal like any interrupted run. Until then status shows it
    /// aborted with `reason`. On shutdown it stays as journaled, and the
    /// next start takes it up.
    fn stall(self: &Arc<Self>, id: &str, reason: String) {
        let reason = format!("stopped: the state store cannot be written: {reason}");
        lock(&self.queue).stalled.insert(id.to_string(), reason.clone());
        let (this, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let mut wait = Duration::from_secs(1);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = this.stopping.cancelled() => return,
                }
                let (store, run, why) = (this.store.clone(), id.clone(), reason.clone());
                let written = tokio::task::spawn_blocking(move || {
                    let aborted = Event::RunFinished {
                        status: RunStatus::Aborted,
                        reason: Some(why),
                    };
                    store.append(&run, &[(drover_exec::scheduler::now_ms(), None, &aborted)])
                })
                .await;
                match written {
                    Ok(Ok(_)) => {
                        let mut q = lock(&this.queue);
                        q.stalled.remove(&id);
                        q.pending.push_front(id.clone());
                        drop(q);
                        tracing::info!(run_id = %id, "the state store can be written again: the run resumes");
                        this.wake.notify_one();
                        return;
                    }
                    Ok(Err(e)) if !e.is_disk_full() => {
                        tracing::error!(run_id = %id, error = %e, "cannot journal the stopped run; trying again");
                    }
                    _ => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
    }

    /// Runs executing and waiting.
    pub fn counts(&self) -> (usize, usize) {
        let q = lock(&self.queue);
        (q.active.len(), q.pending.len())
    }

    /// Whether `id` is executing here.
    pub fn is_active(&self, id: &str) -> bool {
        lock(&self.queue).active.contains_key(id)
    }

    /// Whether `id` waits in the queue.
    pub fn is_queued(&self, id: &str) -> bool {
        lock(&self.queue).pending.iter().any(|p| p == id)
    }

    /// Journal events of an executing run as they are written.
    pub fn subscribe(&self, id: &str) -> Option<broadcast::Receiver<Progress>> {
        lock(&self.queue).active.get(id).map(|a| a.progress.subscribe())
    }

    /// The live log stream of an executing run.
    pub fn log_hub(&self, id: &str) -> Option<Arc<LogHub>> {
        lock(&self.queue).active.get(id).map(|a| a.logs.clone())
    }

    /// A path submission's file, if it may be evaluated (see
    /// [`admit_path`]).
    pub(crate) fn admit(&self, given: &str) -> Result<PathBuf, ApiError> {
        admit_path(given, &self.evaluator.roots)
    }

    /// Evaluate and check a submission; queue it unless it only asks for
    /// validation or a plan.
    pub async fn submit(self: &Arc<Self>, req: SubmitRequest) -> Result<(bool, SubmitResponse), ApiError> {
        self.submit_claimed(req, None).await
    }

    /// [`Orchestrator::submit`]; a queued run claims `claim`'s schedule
    /// slot in the transaction that records it.
    pub async fn submit_claimed(
        self: &Arc<Self>,
        req: SubmitRequest,
        claim: Option<Claim>,
    ) -> Result<(bool, SubmitResponse), ApiError> {
        if self.stopping.is_cancelled() {
            return Err(ApiError::unavailable(
                "the server is shutting down; submit again when it is back",
            ));
        }
        let file_given = match (&req.source, &req.path) {
            (Some(_), Some(_)) => return Err(ApiError::bad_request("give either source or path, not both")),
            (None, None) => {
                return Err(ApiError::bad_request(
                    "give the workflow: source (its KCL text) or path (a file on the server)",
                ));
            }
            (None, Some(p)) if p.trim().is_empty() => return Err(ApiError::bad_request("path is empty")),
            (None, Some(p)) => Some(self.admit(p)?),
            (Some(_), None) => None,
        };
        let executes = !req.validate_only && !req.dry_run;
        let reservation = if executes {
            let mut q = lock(&self.queue);
            if q.pending.len() + q.reserved >= self.limits.max_pending {
                self.metrics.submission("rejected");
                return Err(ApiError::queue_full(format!(
                    "the queue is full ({} runs waiting, at most {}); retry later",
                    q.pending.len() + q.reserved,
                    self.limits.max_pending
                )));
            }
            q.reserved += 1;
            drop(q);
            Some(Reservation(self))
        } else {
            None
        };
        let Some(loader) = self.loader.clone() else {
            return Err(ApiError::unavailable(
                "this server has no KCL engine; run `make setup` or set DROVER_VENV",
            ));
        };
        let pool = match &self.evaluator.pool {
            Ok(pool) => pool.clone(),
            Err(why) => return Err(ApiError::unavailable(why.clone())),
        };
        // A submitted source becomes a file next to the state: a run keeps
        // it (its record names it), and the model's problems are located
        // in it. The worker evaluates a copy in a directory of its own and
        // never sees this one; validations leave nothing behind.
        let (file, evaluation, scratch) = match (file_given, &req.source) {
            (Some(f), _) => (f.clone(), Evaluation::File(f), None),
            (None, Some(src)) => {
                let name = format!("{}.k", crate::logging::trace_id());
                let f = self.submissions.join(&name);
                std::fs::create_dir_all(&self.submissions).map_err(ApiError::io)?;
                let scratch = Scratch(Some(f.clone()));
                std::fs::write(&f, src).map_err(ApiError::io)?;
                let text = src.clone();
                (f, Evaluation::Source { name, text }, Some(scratch))
            }
            (None, None) => return Err(ApiError::bad_request("no workflow given")),
        };
        let evaluated = evaluate(&pool, loader, file.clone(), evaluation).await;
        // Problems in a submitted source name it as the client knows it,
        // not as the server's file.
        let evaluated = match (evaluated, &req.source) {
            (Err(e), Some(_)) => Err(named_as_source(e, &file)),
            (other, _) => other,
        };
        if let Err(e) = &evaluated
            && e.status == axum::http::StatusCode::TOO_MANY_REQUESTS
        {
            self.metrics.submission("rejected");
            return Err(e.clone());
        }
        let result = self.after_evaluation(evaluated, executes, claim.as_ref());
        // Only a run keeps its source.
        if let (Some(scratch), Ok((true, _))) = (scratch, &result) {
            scratch.keep();
        }
        drop(reservation);
        let (queued, resp) = result?;
        if queued {
            self.wake.notify_one();
        }
        Ok((queued, resp))
    }

    fn after_evaluation(
        &self,
        evaluated: Result<(Inputs, Plan), ApiError>,
        executes: bool,
        claim: Option<&Claim>,
    ) -> Result<(bool, SubmitResponse), ApiError> {
        let (inputs, plan) = match evaluated {
            Ok(x) => x,
            Err(e) => {
                self.metrics.submission("invalid");
                return Err(e);
            }
        };
        // The server decides where logs go: under its own --logs.
        let mut inputs = inputs;
        if let Err(e) = self.logs_of(&mut inputs) {
            self.metrics.submission("invalid");
            return Err(e);
        }
        let mut resp = SubmitResponse {
            run_id: None,
            status: None,
            workflow: plan.workflow.name.clone(),
            servers: plan.workflow.servers.len(),
            tasks: plan.task_count(),
            operations: plan
                .operations
                .iter()
                .map(|op| OperationPlan {
                    id: op.id.clone(),
                    tasks: op
                        .tasks
                        .iter()
                        .filter_map(|&n| plan.graph[n].task())
                        .map(|t| TaskRef {
                            id: t.id.clone(),
                            server: t.server.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        if !executes {
            self.metrics.submission("validated");
            return Ok((false, resp));
        }
        let id = match self.enqueue(inputs, claim) {
            Ok(id) => id,
            Err(e) => {
                self.metrics.submission("invalid");
                return Err(exec_error(e));
            }
        };
        // The submission's reservation is given back by its guard after
        // this; until then the run counts twice, which errs on the safe
        // side of the limit.
        // On a shared store, whichever instance has a slot claims it.
        if !self.store.is_shared() {
            lock(&self.queue).pending.push_back(id.clone());
        }
        self.metrics.submission("accepted");
        tracing::info!(run_id = %id, workflow = %resp.workflow, tasks = resp.tasks, "run queued");
        resp.run_id = Some(id);
        resp.status = Some(RunStatus::Queued.as_str().into());
        Ok((true, resp))
    }

    /// Record a queued run of `inputs`; with `claim`, the schedule's
    /// slot that fires it, in the same transaction.
    fn enqueue(&self, inputs: Inputs, claim: Option<&Claim>) -> Result<String, ExecError> {
        match claim {
            // Across instances, the limit is checked where the run is
            // recorded.
            None if self.store.is_shared() => run::enqueue_with(inputs, &self.opts.providers, true, |run| {
                self.store.create_run_limited(run, self.limits.max_pending)
            }),
            None => run::enqueue(&self.store, inputs, &self.opts.providers),
            Some(claim) => run::enqueue_with(inputs, &self.opts.providers, self.store.is_shared(), |run| {
                let (slot, audit) = claim.for_run(&run.id);
                self.store.claim_slot(&slot, Some(run), Some(&audit))
            }),
        }
    }

    /// Put the logs of a submitted run under the server's log directory
    /// (see [`Orchestrator::keep_logs_under`]); refuse a `logging.dir`
    /// that would leave it.
    fn logs_of(&self, inputs: &mut Inputs) -> Result<(), ApiError> {
        if let Some(under) = self.logs_under.get() {
            let logging = &mut inputs.source.workflow.logging;
            if let Some(problem) = run::logging_dir_problem(&logging.dir) {
                return Err(ApiError::invalid_workflow(
                    problem.clone(),
                    vec![format!("workflow.logging.dir: {problem}")],
                ));
            }
            logging.dir = under.join(&logging.dir).display().to_string();
        }
        Ok(())
    }

    /// Evaluate the fleet file of a `/fleet/*` request (its KCL `source`,
    /// or a `path` under the workflows directories) into its servers,
    /// groups and providers, checked as `drover inventory` checks them.
    /// The scratch file of a source goes when the returned guard does,
    /// unless a run keeps it.
    async fn fleet_file(&self, source: Option<&str>, path: Option<&str>) -> Result<(Inputs, Scratch), ApiError> {
        if self.stopping.is_cancelled() {
            return Err(ApiError::unavailable(
                "the server is shutting down; ask again when it is back",
            ));
        }
        let admitted = match (source, path) {
            (Some(_), Some(_)) => return Err(ApiError::bad_request("give either source or path, not both")),
            (None, None) => {
                return Err(ApiError::bad_request(
                    "give the fleet file: source (the KCL text of an inventory or workflow file) or path (a file on the server)",
                ));
            }
            (None, Some(p)) if p.trim().is_empty() => return Err(ApiError::bad_request("path is empty")),
            (None, Some(p)) => Some(self.admit(p)?),
            (Some(_), None) => None,
        };
        let Some(loader) = self.loader.clone() else {
            return Err(ApiError::unavailable(
                "this server has no KCL engine; run `make setup` or set DROVER_VENV",
            ));
        };
        let pool = match &self.evaluator.pool {
            Ok(pool) => pool.clone(),
            Err(why) => return Err(ApiError::unavailable(why.clone())),
        };
        let (file, evaluation, scratch) = match (admitted, source) {
            (Some(f), _) => (f.clone(), Evaluation::File(f), Scratch(None)),
            (None, Some(src)) => {
                let name = format!("{}.k", crate::logging::trace_id());
                let f = self.submissions.join(&name);
                std::fs::create_dir_all(&self.submissions).map_err(ApiError::io)?;
                let scratch = Scratch(Some(f.clone()));
                std::fs::write(&f, src).map_err(ApiError::io)?;
                (
                    f,
                    Evaluation::Source {
                        name,
                        text: src.to_string(),
                    },
                    scratch,
                )
            }
            (None, None) => return Err(ApiError::bad_request("no fleet file given")),
        };
        let evaluated = async {
            let value = pool.evaluate(evaluation).await.map_err(eval_error)?;
            let file = file.clone();
            tokio::task::spawn_blocking(move || {
                let source = fleet_source(value, &file).map_err(load_problem)?;
                let catalog = catalog(&loader).map_err(load_problem)?;
                let problems = drover_core::validate::validate_inventory(&source, &catalog);
                if !problems.is_empty() {
                    return Err(invalid(Problems::Model(problems)));
                }
                Ok(Inputs { source, catalog })
            })
            .await
            .map_err(ApiError::internal)?
        }
        .await;
        match evaluated {
            Ok(inputs) => Ok((inputs, scratch)),
            Err(e) if source.is_some() => Err(named_as_source(e, &file)),
            Err(e) => Err(e),
        }
    }

    /// The servers `selector` picks in a fleet file (see
    /// [`Orchestrator::fleet_file`]), with the file's inventory they were
    /// picked from; or every problem with the file or the selector.
    pub async fn fleet_select(
        &self,
        source: Option<&str>,
        path: Option<&str>,
        selector: &Selector,
    ) -> Result<(Inputs, Vec<Server>), ApiError> {
        let (inputs, _scratch) = self.fleet_file(source, path).await?;
        let servers = select_in(&inputs, selector)?;
        Ok((inputs, servers))
    }

    /// Queue an exec: `spec`'s command on the servers its selector picks
    /// in a fleet file, as a run of its own under the queue's limits, as a
    /// submitted workflow is. Its run id and the servers selected.
    pub async fn submit_exec(
        self: &Arc<Self>,
        source: Option<&str>,
        path: Option<&str>,
        spec: &ExecSpec,
    ) -> Result<(String, Vec<Server>), ApiError> {
        self.submit_exec_claimed(source, path, spec, None).await
    }

    /// [`Orchestrator::submit_exec`]; the run claims `claim`'s schedule
    /// slot in the transaction that records it.
    pub async fn submit_exec_claimed(
        self: &Arc<Self>,
        source: Option<&str>,
        path: Option<&str>,
        spec: &ExecSpec,
        claim: Option<Claim>,
    ) -> Result<(String, Vec<Server>), ApiError> {
        let reservation = {
            let mut q = lock(&self.queue);
            if q.pending.len() + q.reserved >= self.limits.max_pending {
                self.metrics.submission("rejected");
                return Err(ApiError::queue_full(format!(
                    "the queue is full ({} runs waiting, at most {}); retry later",
                    q.pending.len() + q.reserved,
                    self.limits.max_pending
                )));
            }
            q.reserved += 1;
            drop(q);
            Reservation(self)
        };
        let (base, scratch) = match self.fleet_file(source, path).await {
            Ok(x) => x,
            Err(e) => {
                let outcome = if e.status == axum::http::StatusCode::TOO_MANY_REQUESTS {
                    "rejected"
                } else {
                    "invalid"
                };
                self.metrics.submission(outcome);
                return Err(e);
            }
        };
        let servers = select_in(&base, &spec.selector).inspect_err(|_| self.metrics.submission("invalid"))?;
        let mut inputs = drover_exec::fleet::exec_inputs(&base, spec);
        self.logs_of(&mut inputs)
            .inspect_err(|_| self.metrics.submission("invalid"))?;
        let id = self.enqueue(inputs, claim.as_ref()).map_err(|e| {
            self.metrics.submission("invalid");
            exec_error(e)
        })?;
        // The run names the source's file: its relative paths (keys,
        // known_hosts) are relative to it.
        scratch.keep();
        lock(&self.queue).pending.push_back(id.clone());
        drop(reservation);
        self.metrics.submission("accepted");
        tracing::info!(run_id = %id, servers = servers.len(), command = %spec.command, "exec queued");
        self.wake.notify_one();
        Ok((id, servers))
    }

    /// Connections to the servers `selector` picks in a fleet file, for
    /// commands outside a run (snapshots, drift); `purpose` names them to
    /// providers.
    pub async fn fleet(
        &self,
        source: Option<&str>,
        path: Option<&str>,
        selector: &Selector,
        purpose: &str,
    ) -> Result<Fleet, ApiError> {
        let (inputs, scratch) = self.fleet_file(source, path).await?;
        let servers = select_in(&inputs, selector)?;
        let base_dir = inputs.source.file.parent().map(Path::to_path_buf).unwrap_or_default();
        // A source's own file is not needed to reach its servers: paths in
        // it are relative to a directory that stays.
        drop(scratch);
        Ok(Fleet::new(servers, base_dir, &self.opts, purpose))
    }

    /// Carry out an operator's command on a run: here if this instance
    /// executes it (or nobody does), else by the instance holding its
    /// lease (shared store), asked through the store.
    pub async fn command(self: &Arc<Self>, id: &str, command: Command) -> Result<RunStatus, ApiError> {
        if self.store.is_shared() && !self.is_active(id) {
            let lease = {
                let (store, id) = (self.store.clone(), id.to_string());
                crate::error::blocking(move || Ok(store.lease(&id)?)).await?
            };
            if lease.live && lease.owner.as_deref() != Some(self.store.instance()) {
                return crate::cluster::ask_owner(self, id, command).await;
            }
        }
        match self.command_here(id, command) {
            // Claimed by another instance meanwhile.
            Err(e) if e.status == axum::http::StatusCode::CONFLICT && self.store.is_shared() && !self.is_active(id) => {
                let lease = {
                    let (store, id) = (self.store.clone(), id.to_string());
                    crate::error::blocking(move || Ok(store.lease(&id)?)).await?
                };
                if lease.live && lease.owner.as_deref() != Some(self.store.instance()) {
                    return crate::cluster::ask_owner(self, id, command).await;
                }
                Err(e)
            }
            other => other,
        }
    }

    /// [`Orchestrator::command`] on a run this instance executes, or that
    /// no instance does.
    pub(crate) fn command_here(&self, id: &str, command: Command) -> Result<RunStatus, ApiError> {
        match command {
            Command::Pause => self.pause(id),
            Command::Resume => self.resume(id),
            Command::Cancel => self.cancel(id),
        }
    }

    /// Pause an executing run.
    fn pause(&self, id: &str) -> Result<RunStatus, ApiError> {
        let q = lock(&self.queue);
        let status = self.store.run(id)?.status;
        // An active run may still read `queued` until its first turn is
        // journaled.
        match q.active.get(id) {
            Some(a) if matches!(status, RunStatus::Queued | RunStatus::Running | RunStatus::Paused) => {
                let _ = a.control.send(Control::Pause);
                Ok(RunStatus::Paused)
            }
            _ => Err(ApiError::conflict(format!(
                "run {id} is {}; only a running run can be paused",
                status.as_str()
            ))),
        }
    }

    /// Resume a paused run, or take up an interrupted one.
    fn resume(&self, id: &str) -> Result<RunStatus, ApiError> {
        let mut q = lock(&self.queue);
        let status = self.store.run(id)?.status;
        if let Some(a) = q.active.get(id)
            && matches!(status, RunStatus::Queued | RunStatus::Running | RunStatus::Paused)
        {
            let _ = a.control.send(Control::Resume);
            return Ok(RunStatus::Running);
        }
        if q.active.contains_key(id) {
            return Err(ApiError::conflict(format!(
                "run {id} is {}; only a paused or interrupted run resumes",
                status.as_str()
            )));
        }
        if q.pending.iter().any(|p| p == id) {
            return Err(ApiError::conflict(format!("run {id} is queued already")));
        }
        if matches!(status, RunStatus::Aborted | RunStatus::Paused | RunStatus::Running) {
            if self.store.is_shared() {
                self.store.claim_run(id, self.limits.lease_ttl.as_millis() as i64)?;
            }
            q.keep_paused.remove(id);
            q.pending.push_front(id.to_string());
            drop(q);
            self.wake.notify_one();
            return Ok(RunStatus::Queued);
        }
        Err(ApiError::conflict(format!(
            "run {id} is {}; only a paused or interrupted run resumes (use retry for a finished one)",
            status.as_str()
        )))
    }

    /// Cancel a run: an executing one stops its tasks; a queued one never
    /// starts.
    fn cancel(&self, id: &str) -> Result<RunStatus, ApiError> {
        let mut q = lock(&self.queue);
        let status = self.store.run(id)?.status;
        // A rollback in progress stops too: what is not undone yet stays
        // for the next one.
        if let Some(a) = q.active.get(id)
            && matches!(
                status,
                RunStatus::Queued | RunStatus::Running | RunStatus::Paused | RunStatus::RollingBack
            )
        {
            let _ = a.control.send(Control::Cancel);
            return Ok(RunStatus::Cancelled);
        }
        if let Some(pos) = q.pending.iter().position(|p| p == id) {
            q.pending.remove(pos);
            drop(q);
            run::cancel_unstarted(&self.store, id).map_err(exec_error)?;
            self.tell_unstarted(id, RunStatus::Cancelled, "cancelled before it started");
            return Ok(RunStatus::Cancelled);
        }
        // On a shared store, a queued run no instance took up yet is
        // cancelled here (the store refuses it if one took it meanwhile).
        if matches!(status, RunStatus::Aborted | RunStatus::Paused)
            || (status == RunStatus::Queued && self.store.is_shared())
        {
            drop(q);
            run::cancel_unstarted(&self.store, id).map_err(exec_error)?;
            self.tell_unstarted(id, RunStatus::Cancelled, "cancelled while interrupted");
            return Ok(RunStatus::Cancelled);
        }
        Err(ApiError::conflict(format!(
            "run {id} is {}; only a queued, running, paused or interrupted run can be cancelled",
            status.as_str()
        )))
    }

    /// Re-run the failed and cancelled tasks of a finished run.
    pub async fn retry(self: &Arc<Self>, id: &str, operation: Option<&str>) -> Result<RunStatus, ApiError> {
        self.settled(id).await?;
        let journaled = {
            let mut q = self.not_busy(id)?;
            self.claim_one(id)?;
            let mut handle = run::retry(self.store.clone(), id, operation, &self.opts, None)
                .map_err(|e| self.unclaim(id, exec_error(e)))?;
            let journaled = handle.take_journaled();
            self.adopt(&mut q, handle);
            journaled
        };
        // Answered once the journal says it runs again.
        journaled.await;
        Ok(RunStatus::Running)
    }

    /// Undo what a finished, failed or interrupted run did.
    pub async fn rollback(self: &Arc<Self>, id: &str) -> Result<RunStatus, ApiError> {
        self.settled(id).await?;
        let journaled = {
            let mut q = self.not_busy(id)?;
            self.claim_one(id)?;
            let mut handle =
                run::rollback(self.store.clone(), id, &self.opts, None).map_err(|e| self.unclaim(id, exec_error(e)))?;
            let journaled = handle.take_journaled();
            self.adopt(&mut q, handle);
            journaled
        };
        // Answered once the journal says the rollback started.
        journaled.await;
        Ok(RunStatus::RollingBack)
    }

    /// On a shared store, take the lease on `id` before executing it here
    /// (refused while another instance holds it).
    fn claim_one(&self, id: &str) -> Result<(), ApiError> {
        if self.store.is_shared() {
            self.store.claim_run(id, self.limits.lease_ttl.as_millis() as i64)?;
        }
        Ok(())
    }

    /// Give back a lease taken by [`Orchestrator::claim_one`] for a run
    /// that did not start; passes `e` on.
    fn unclaim(&self, id: &str, e: ApiError) -> ApiError {
        self.release(id);
        e
    }

    /// A run whose status is final may still be leaving `active` (its
    /// supervisor collects the last lines); wait for that, briefly.
    async fn settled(&self, id: &str) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.store.run(id)?.status;
            if status.is_unfinished() || !self.is_active(id) || tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The queue, locked, if `id` is neither executing nor queued.
    fn not_busy(&self, id: &str) -> Result<std::sync::MutexGuard<'_, Queue>, ApiError> {
        if self.stopping.is_cancelled() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        let q = lock(&self.queue);
        let status = self.store.run(id)?.status;
        if q.active.contains_key(id) || q.pending.iter().any(|p| p == id) {
            return Err(ApiError::conflict(format!(
                "run {id} is {}; cancel it or let it finish first",
                status.as_str()
            )));
        }
        Ok(q)
    }

    /// Stop: nothing new starts; running tasks get `grace` to finish, then
    /// every run is aborted (journaled, resumable at the next start).
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.cancel();
        let ids: Vec<String> = {
            let q = lock(&self.queue);
            // Nothing new starts; an operator's pause holds (the scheduler
            // ends an aborted run that was paused as paused).
            for a in q.active.values() {
                let _ = a.control.send(Control::Hold);
            }
            q.active.keys().cloned().collect()
        };
        if ids.is_empty() {
            return;
        }
        tracing::info!(
            runs = ids.len(),
            grace_s = grace.as_secs(),
            "shutting down: letting running tasks finish"
        );
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let busy: usize = lock(&self.queue)
                .active
                .values()
                .map(|a| a.running_tasks.load(Ordering::Relaxed))
                .sum();
            if busy == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        {
            let q = lock(&self.queue);
            for a in q.active.values() {
                let _ = a.control.send(Control::Abort);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !lock(&self.queue).active.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!("every run checkpointed; they resume at the next start");
    }
}

/// `text` with every path ending in `name` (the submitted source's file
/// on the server, absolute or relative) shown as `<source>`.
fn as_source(text: &str, name: &str) -> String {
    if name.is_empty() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(name) {
        let before = &rest[..i];
        let start = before
            .rfind(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '(' | '>' | '`'))
            .map_or(0, |j| j + 1);
        out.push_str(&before[..start]);
        out.push_str("<source>");
        rest = &rest[i + name.len()..];
    }
    out.push_str(rest);
    out
}

fn count_running(n: &AtomicUsize, operation_of: &HashMap<String, String>, p: &Progress) {
    if !p.node.as_deref().is_some_and(|id| operation_of.contains_key(id)) {
        return;
    }
    match p.event {
        Event::TaskStarted { .. } => {
            n.fetch_add(1, Ordering::Relaxed);
        }
        Event::TaskSucceeded { .. } | Event::TaskFailed { .. } | Event::TaskCancelled { .. } => {
            let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(1)));
        }
        _ => {}
    }
}

/// The evaluated declarations of the home (providers, taskservs), kept
/// while no KCL file under schemas/, providers/ or taskservs/ changes:
/// evaluating them is most of a submission's cost (77 of 87 ms for a
/// small workflow), and they change only when an operator edits them.
#[derive(Default)]
struct CatalogCache {
    fingerprint: Vec<(PathBuf, std::time::SystemTime, u64)>,
    catalog: Option<drover_core::model::Catalog>,
}

static CATALOG: Mutex<CatalogCache> = Mutex::new(CatalogCache {
    fingerprint: Vec::new(),
    catalog: None,
});

/// Every KCL file of the home with its mtime and size.
fn fingerprint(loader: &Loader) -> Vec<(PathBuf, std::time::SystemTime, u64)> {
    let home = loader.home();
    let mut out = Vec::new();
    let mut stack = vec![home.schemas(), home.providers(), home.taskservs()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "k" || x == "mod") {
                out.push((path, meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len()));
            }
        }
    }
    out.sort();
    out
}

fn catalog(loader: &Loader) -> Result<drover_core::model::Catalog, LoadError> {
    let now = fingerprint(loader);
    {
        let cache = lock(&CATALOG);
        if let Some(c) = &cache.catalog
            && cache.fingerprint == now
        {
            return Ok(c.clone());
        }
    }
    let c = loader.load_catalog()?;
    let mut cache = lock(&CATALOG);
    cache.fingerprint = now;
    cache.catalog = Some(c.clone());
    Ok(c)
}

/// A submitted source's file, removed when dropped unless a run keeps it
/// (also when the request goes away mid-evaluation).
struct Scratch(Option<PathBuf>);

impl Scratch {
    /// A run names the file: it stays.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// `e` with every mention of a submitted source's file on the server
/// (`file`) shown as `<source>`: the client knows it by no other name.
fn named_as_source(mut e: ApiError, file: &Path) -> ApiError {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for p in &mut e.body.problems {
        *p = as_source(p, &name);
    }
    e.body.message = as_source(&e.body.message, &name);
    e
}

/// A fleet file's evaluated values as a source of servers and groups: its
/// `inventory` (a `drover.Inventory`), else its `workflow` (whose
/// operations, variables and secrets no fleet command uses: its secrets
/// files need not exist here).
fn fleet_source(mut value: serde_json::Value, file: &Path) -> Result<drover_core::model::Source, LoadError> {
    use drover_core::Diagnostic;
    use drover_core::model::{InventoryDef, Source, Workflow};
    if let Some(mut inv) = value.get_mut("inventory").map(serde_json::Value::take) {
        let ty = inv
            .get("_type")
            .and_then(|t| t.as_str())
            .unwrap_or("a plain dict")
            .to_string();
        if ty != "drover.Inventory" {
            return Err(LoadError::Model(vec![
                Diagnostic::new(
                    file,
                    "inventory",
                    format!("`inventory` is {ty}, not a drover.Inventory"),
                )
                .help("write inventory = drover.Inventory { servers = [...], groups = [...] }"),
            ]));
        }
        strip_types(&mut inv);
        let inv: InventoryDef = serde_path_to_error::deserialize(inv).map_err(|e| {
            LoadError::Model(vec![Diagnostic::new(
                file,
                format!("inventory.{}", e.path()),
                e.into_inner().to_string(),
            )])
        })?;
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "inventory".into());
        let workflow: Workflow = serde_json::from_value(serde_json::json!({
            "name": name,
            "operations": [],
            "servers": inv.servers,
            "groups": inv.groups,
        }))
        .map_err(|e| LoadError::Model(vec![Diagnostic::new(file, "inventory", e.to_string())]))?;
        return Ok(Source {
            file: file.to_path_buf(),
            workflow,
        });
    }
    match value.get_mut("workflow").and_then(serde_json::Value::as_object_mut) {
        Some(wf) => {
            wf.remove("secrets");
        }
        None => {
            return Err(LoadError::Model(vec![
                Diagnostic::new(file, "-", "the file defines neither a top-level `inventory` nor a `workflow` value")
                    .help("give an inventory file (inventory = drover.Inventory {...}) or a workflow file (workflow = drover.WorkflowDef {...})"),
            ]));
        }
    }
    drover_kcl::load::source_of(value, file)
}

/// Remove the engine's `_type` markers before deserialising.
fn strip_types(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("_type");
            map.values_mut().for_each(strip_types);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_types),
        _ => {}
    }
}

/// The servers `selector` picks in `inputs`, or its problems as a 400
/// naming each (an unknown group, tag or server; nothing selected).
fn select_in(inputs: &Inputs, selector: &Selector) -> Result<Vec<Server>, ApiError> {
    drover_exec::fleet::select(inputs, selector).map_err(|diags| {
        let problems: Vec<String> = diags
            .iter()
            .map(|d| {
                // The planner speaks of the exec's operation; here it is
                // the selector that selects.
                let message = d
                    .message
                    .replace("operation exec selects", "the selector names")
                    .replace("operation exec", "the selector");
                match &d.help {
                    Some(help) => format!("selector: {message} (help: {help})"),
                    None => format!("selector: {message}"),
                }
            })
            .collect();
        let mut e = ApiError::bad_request(format!(
            "the selector has {} problem(s): {}",
            problems.len(),
            problems.join("; ")
        ));
        e.body.problems = problems;
        e
    })
}

/// Why a KCL worker could not evaluate a submitted file, as an API error.
fn eval_error(e: EvalError) -> ApiError {
    match e {
        EvalError::Busy { .. } => ApiError::queue_full(format!("the workflow cannot be evaluated now: {e}")),
        EvalError::Kcl(d) => invalid(Problems::Kcl(d)),
        EvalError::Limit(limit) => ApiError::evaluation_limit(limit.to_string()),
        EvalError::Failed(_) | EvalError::Unavailable(_) => ApiError::unavailable(e.to_string()),
    }
}

/// Problems of a workflow as the API's 400.
fn invalid(problems: Problems) -> ApiError {
    let located = problems.locate();
    let lines: Vec<String> = located.iter().map(|l| l.to_string().trim_end().to_string()).collect();
    ApiError::invalid_workflow(format!("the workflow has {} problem(s)", lines.len()), lines)
}

fn load_problem(e: LoadError) -> ApiError {
    match e {
        LoadError::Engine(e) => ApiError::unavailable(format!("the KCL engine failed: {e}")),
        LoadError::Kcl(d) => invalid(Problems::Kcl(d)),
        LoadError::Model(d) => invalid(Problems::Model(d)),
    }
}

/// Evaluate a submitted workflow in a KCL worker (`file` is what its
/// problems name: the admitted path, or the server's copy of a source),
/// then, here, turn the value into the model and plan it against the
/// home's declarations (evaluated in-process: they are the server's own).
async fn evaluate(
    pool: &Pool,
    loader: Arc<Loader>,
    file: PathBuf,
    evaluation: Evaluation,
) -> Result<(Inputs, Plan), ApiError> {
    let value = pool.evaluate(evaluation).await.map_err(eval_error)?;
    tokio::task::spawn_blocking(move || {
        let source = drover_kcl::load::source_of(value, &file).map_err(load_problem)?;
        let catalog = catalog(&loader).map_err(load_problem)?;
        let plan = drover_core::compile(&source, &catalog).map_err(|d| invalid(Problems::Model(d)))?;
        Ok((Inputs { source, catalog }, plan))
    })
    .await
    .map_err(ApiError::internal)?
}

/// Where a path submission's file is: `given` (relative: to the first
/// root), symlinks resolved, a `.k` file under one of `roots`. A refusal
/// names the path and the roots, never anything read from the file.
fn admit_path(given: &str, roots: &[PathBuf]) -> Result<PathBuf, ApiError> {
    let Some(first) = roots.first() else {
        return Err(ApiError::forbidden(format!(
            "path {given:?} refused: this server takes no submissions by path (it was started without \
             --workflows-dir, and its home has no workflows/ directory); submit the workflow's source, \
             or restart the server with --workflows-dir DIR"
        )));
    };
    let listed = roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let outside = || {
        ApiError::forbidden(format!(
            "path {given:?} refused: it is not under the server's workflows directories ({listed}), \
             symlinks resolved; submit the workflow's source, or put the file there"
        ))
    };
    let path = Path::new(given);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        first.join(path)
    };
    let under = |p: &Path| roots.iter().any(|r| p.starts_with(r));
    let real = match joined.canonicalize() {
        Ok(real) => real,
        Err(_) => {
            // Missing: said so only where a file may be submitted from, so
            // the answer tells nothing about the rest of the file system.
            let known = joined.ancestors().skip(1).find_map(|a| a.canonicalize().ok());
            if known.as_deref().is_some_and(under) {
                return Err(invalid(Problems::Model(vec![
                    drover_core::Diagnostic::new(&joined, "-", "no such workflow file")
                        .help(format!("give the path of a .k file under {listed}")),
                ])));
            }
            return Err(outside());
        }
    };
    if !under(&real) {
        return Err(outside());
    }
    if !real.is_file() || real.extension().is_none_or(|x| x != "k") {
        return Err(ApiError::bad_request(format!(
            "path {given:?} refused: it is not a KCL file (.k) under {listed}"
        )));
    }
    Ok(real)
}

/// An executor refusal as an API error.
pub fn exec_error(e: ExecError) -> ApiError {
    match e {
        e if e.is_disk_full() => ApiError::insufficient_storage(e),
        ExecError::State(s) => s.into(),
        ExecError::WrongState(m) => ApiError::conflict(m),
        ExecError::Invalid(m) | ExecError::Unsupported(m) | ExecError::Secrets(m) | ExecError::Template(m) => {
            ApiError::invalid_workflow(m.clone(), m.lines().map(str::to_string).collect())
        }
        other => ApiError::internal(other),
    }
}

#[cfg(test)]
mod admit_tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn without_roots_every_path_is_refused_saying_how_to_allow_them() {
        let e = admit_path("workflows/quickstart.k", &[]).expect_err("no roots");
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(e.body.message.contains("workflows/quickstart.k"), "{}", e.body.message);
        assert!(e.body.message.contains("--workflows-dir"), "{}", e.body.message);
    }

    #[test]
    fn a_path_is_admitted_only_as_a_k_file_under_a_root_symlinks_resolved() {
        let base = tempfile::tempdir().expect("tempdir");
        let base = base.path().canonicalize().expect("canonical");
        let (a, b, out) = (base.join("a"), base.join("b"), base.join("out"));
        for d in [&a, &b, &out, &a.join("sub")] {
            std::fs::create_dir_all(d).expect("dir");
        }
        for f in [a.join("w.k"), a.join("sub/s.k"), b.join("x.k"), out.join("o.k")] {
            std::fs::write(f, "x = 1\n").expect("file");
        }
        std::fs::write(a.join("data.txt"), "secret-content\n").expect("file");
        std::os::unix::fs::symlink(out.join("o.k"), a.join("escape.k")).expect("symlink");
        std::os::unix::fs::symlink(a.join("w.k"), b.join("inside.k")).expect("symlink");
        let roots = [a.clone(), b.clone()];
        let ok = |p: &str| admit_path(p, &roots).unwrap_or_else(|e| panic!("{p}: {}", e.body.message));
        assert_eq!(ok("w.k"), a.join("w.k"), "relative to the first root");
        assert_eq!(ok("sub/../w.k"), a.join("w.k"));
        assert_eq!(ok(&b.join("x.k").display().to_string()), b.join("x.k"));
        // A symlink from one root into another stays inside.
        assert_eq!(ok(&b.join("inside.k").display().to_string()), a.join("w.k"));
        let refused = |p: &str, status: StatusCode| {
            let e = admit_path(p, &roots).expect_err(p);
            assert_eq!(e.status, status, "{p}: {}", e.body.message);
            let text = format!("{} {:?}", e.body.message, e.body.problems);
            assert!(!text.contains("secret-content"), "{text}");
            e
        };
        for p in [
            "escape.k",
            "../out/o.k",
            "/etc/hostname",
            "/proc/self/environ",
            "../out/missing.k",
        ] {
            let e = refused(p, StatusCode::FORBIDDEN);
            assert!(e.body.message.contains(p), "names the path: {}", e.body.message);
            assert!(
                e.body.message.contains(&a.display().to_string()) && e.body.message.contains(&b.display().to_string()),
                "names the roots: {}",
                e.body.message
            );
        }
        refused("data.txt", StatusCode::BAD_REQUEST);
        refused("sub", StatusCode::BAD_REQUEST);
        let missing = refused("sub/missing.k", StatusCode::BAD_REQUEST);
        assert_eq!(missing.body.code, "invalid_workflow");
        assert!(
            missing.body.problems[0].contains("no such workflow file"),
            "{:?}",
            missing.body.problems
        );
    }

    #[test]
    fn an_invalid_workflow_answer_lists_at_most_50_problems_each_cut_to_size() {
        let e = ApiError::invalid_workflow(
            "the workflow has 73 problem(s)",
            (0..73).map(|i| format!("p{i}")).collect(),
        );
        assert_eq!(e.body.problems.len(), 50);
        assert_eq!(e.body.problems[49], "p49");
        assert!(
            e.body.message.ends_with("(the first 50 are listed, and 23 more)"),
            "{}",
            e.body.message
        );
        let long = "é".repeat(5000);
        let e = ApiError::invalid_workflow("one", vec![long]);
        assert!(e.body.problems[0].len() < 4200, "{}", e.body.problems[0].len());
        assert!(
            e.body.problems[0].ends_with("more bytes)"),
            "{}",
            &e.body.problems[0][4000..]
        );
    }
}
