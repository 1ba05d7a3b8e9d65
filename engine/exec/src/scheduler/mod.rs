//! The scheduler: one event loop owns the run state.
//!
//! Layout:
//! - [`machine`]: a node's state machine; every status change of a node
//!   happens there, and replay uses the same transition function as the
//!   live loop.
//! - `admission`: the limits a task (or a compensation) must fit to start.
//! - `rollback`: undoing succeeded tasks in reverse dependency order,
//!   within the same limits, in parallel.
//! - this module: the loop.
//!
//! Workers (task attempts, wait-condition pollers, compensations) run in a
//! [`JoinSet`] and report back by ending; nothing else changes the state.
//! Each turn of the loop (1) applies what ended, (2) picks the work that
//! became ready and fits the limits, (3) writes every transition of (1)
//! and (2) to the journal in one durable transaction, and only then (4)
//! starts the picked work. So every transition is journaled before it is
//! acted on, and a crash at any point leaves a journal that a resume can
//! continue: a task whose success was not yet committed is re-run (with
//! the same idempotency key), never lost. A worker that panics is a failed
//! attempt (permanent: a bug does not go away by retrying), not a run that
//! waits forever.

pub mod machine;

mod admission;
mod rollback;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use drover_core::FailureKind;
use drover_core::Plan;
use drover_core::model::{Backoff, Condition, OnFailure, RetryPolicy};
use drover_core::plan::{Edge, GateKind, Node, Task};
use drover_state::{Entry, Event, RunStatus, StateError, Store};
use petgraph::Direction;
use petgraph::graph::NodeIndex;
use petgraph::visit::EdgeRef;
use rand::Rng;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::admission::{Admission, Need, Refusal};
pub use self::machine::{NodeRt, Status, UndoState, nodes_from_journal};
use self::rollback::RollbackRun;
use crate::runner::{Found, TaskExecutor, TaskFailure, Undo};

/// Operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop dispatching; running tasks go on.
    Pause,
    /// Dispatch again.
    Resume,
    /// Stop everything; the run ends cancelled.
    Cancel,
    /// Stop everything; the run ends aborted (paused, if it was paused)
    /// and can be resumed (Ctrl-C, shutdown).
    Abort,
    /// Start nothing new while the process shuts down (running tasks get
    /// their grace); not an operator's pause, so not journaled.
    Hold,
}

/// What the scheduler tells watchers: every journal event as it is
/// written.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Its position in the run's journal.
    pub seq: i64,
    /// The node it is about (None: the run).
    pub node: Option<String>,
    /// What happened.
    pub event: Event,
}

/// How a scheduler starts from the journal it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run (or a queued one): nothing has happened yet.
    Fresh,
    /// An interrupted run continues: what succeeded is not run again; a
    /// rollback that was going on goes on.
    Resume,
    /// The failed, cancelled and skipped tasks of a finished run run again
    /// (all, or one operation's and what follows from them).
    Retry(Option<usize>),
    /// An operator's rollback of a finished or interrupted run: undo
    /// everything not undone yet.
    Rollback,
}

/// Settings of one scheduler run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bound on tasks running at once (the plan's unless overridden).
    pub max_parallel: u32,
    /// Seed for retry jitter (deterministic tests).
    pub seed: u64,
    /// Secret values, masked in every journal event.
    pub mask: crate::mask::Masker,
}

/// How a scheduler run ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The run's final status.
    pub status: RunStatus,
    /// Why, in a sentence.
    pub reason: String,
}

/// Errors that stop the scheduler itself (not task failures).
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The journal could not be written: the run cannot go on safely.
    #[error("journal: {0}")]
    Journal(#[from] StateError),
    /// The thread writing the journal went away.
    #[error("journal: the write did not complete: {0}")]
    Writer(String),
}

/// How the reason of a gate blocked by its wait condition starts.
const WAIT_FAILED: &str = "wait condition";

/// Ms since the epoch, for journal timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Work the loop started and waits for.
#[derive(Debug, Clone, Copy)]
enum Work {
    Attempt { node: usize, attempt: u32 },
    Gate { node: usize },
    Undo { node: usize },
}

/// What a worker came back with.
enum Done {
    Attempt(Result<Found, TaskFailure>),
    Gate(Result<(), String>),
    Undo(Undo),
}

/// The outcome of an operation, for `condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpOutcome {
    Succeeded,
    Failed,
    Skipped,
}

/// Rolling progress of one operation.
#[derive(Debug)]
struct Rolling {
    /// Batch of each of the operation's servers.
    batch_of: HashMap<String, u32>,
    /// Unfinished tasks per batch.
    left: Vec<usize>,
    /// The batch being run.
    current: u32,
    /// Servers failed so far.
    failed: HashSet<String>,
    /// When the next batch may start (the pause).
    resume_at: Option<Instant>,
    /// The roll halts when more than this share (%) of all the
    /// operation's servers failed.
    threshold: f64,
    pause: Duration,
}

impl Rolling {
    fn failed_pct(&self) -> f64 {
        100.0 * self.failed.len() as f64 / self.batch_of.len().max(1) as f64
    }
}

/// What the loop is doing.
enum Phase {
    /// Running the plan's tasks.
    Forward,
    /// Undoing what succeeded.
    Rollback(RollbackRun),
}

/// The event loop of one run.
pub struct Scheduler {
    plan: Arc<Plan>,
    run_id: String,
    store: Arc<Store>,
    exec: Arc<dyn TaskExecutor>,
    settings: Settings,
    /// Indexed by NodeIndex::index().
    pub nodes: Vec<NodeRt>,
    adm: Admission,
    /// Ready tasks per operation, by (rolling batch, node): dispatch order.
    ready: Vec<BTreeSet<(u32, usize)>>,
    /// What each running node holds of the limits.
    held: HashMap<usize, Need>,
    /// The earliest instant a rate-limited task may start.
    rate_wake: Option<Instant>,
    zone_of: HashMap<String, Option<String>>,
    rolling: Vec<Option<Rolling>>,
    op_left: Vec<usize>,
    op_outcome: Vec<Option<OpOutcome>>,
    op_verdict: Vec<Option<Result<(), String>>>,
    op_halted: Vec<Option<String>>,
    completed_ops: Vec<String>,
    /// Operations completed at the last safe point.
    safe_point: Vec<String>,
    halted: Option<String>,
    rollback_requested: Option<String>,
    phase: Phase,
    paused: bool,
    /// Held by a shutdown (see [`Control::Hold`]).
    held_for_shutdown: bool,
    stopping: Option<(RunStatus, String)>,
    deadline: Option<Instant>,
    tokens: HashMap<usize, CancellationToken>,
    work: JoinSet<Done>,
    work_of: HashMap<tokio::task::Id, Work>,
    journal: Vec<(i64, Option<String>, Event)>,
    /// Work journaled as started this turn, spawned after the flush.
    to_spawn: Vec<Work>,
    /// How the loop ended, once it has.
    outcome: Option<Finished>,
    /// Told when the first turn is durable (what `prepare` decided, e.g.
    /// that a rollback started), so a caller can answer only then.
    journaled: Option<tokio::sync::oneshot::Sender<()>>,
    rng: rand::rngs::StdRng,
    control: mpsc::UnboundedReceiver<Control>,
    progress: broadcast::Sender<Progress>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler for `plan` in its initial state.
    pub fn new(
        plan: Arc<Plan>,
        run_id: String,
        store: Arc<Store>,
        exec: Arc<dyn TaskExecutor>,
        settings: Settings,
        control: mpsc::UnboundedReceiver<Control>,
        progress: broadcast::Sender<Progress>,
    ) -> Scheduler {
        use rand::SeedableRng;
        let n = plan.graph.node_count();
        let ops = plan.operations.len();
        let op_limit = plan
            .operations
            .iter()
            .map(|o| o.max_parallel.map_or(usize::MAX, |m| m as usize))
            .collect();
        let adm = Admission::new(settings.max_parallel as usize, op_limit, plan.provider_limits.clone());
        let zone_of = plan
            .workflow
            .servers
            .iter()
            .map(|s| (s.hostname.clone(), s.zone.clone()))
            .collect();
        let mut s = Scheduler {
            rng: rand::rngs::StdRng::seed_from_u64(settings.seed),
            plan,
            run_id,
            store,
            exec,
            settings,
            nodes: vec![NodeRt::default(); n],
            adm,
            ready: vec![BTreeSet::new(); ops],
            held: HashMap::new(),
            rate_wake: None,
            zone_of,
            rolling: Vec::new(),
            op_left: vec![0; ops],
            op_outcome: vec![None; ops],
            op_verdict: vec![None; ops],
            op_halted: vec![None; ops],
            completed_ops: Vec::new(),
            safe_point: Vec::new(),
            halted: None,
            rollback_requested: None,
            phase: Phase::Forward,
            paused: false,
            held_for_shutdown: false,
            stopping: None,
            deadline: None,
            tokens: HashMap::new(),
            work: JoinSet::new(),
            work_of: HashMap::new(),
            journal: Vec::new(),
            to_spawn: Vec::new(),
            outcome: None,
            journaled: None,
            control,
            progress,
        };
        s.rolling = (0..ops).map(|i| s.rolling_for(i)).collect();
        s
    }

    fn rolling_for(&self, op: usize) -> Option<Rolling> {
        let plan = &self.plan.operations[op];
        let r = plan.rolling.as_ref()?;
        let size = r.batch_size.max(1);
        let mut batch_of = HashMap::new();
        let mut order = 0u32;
        for &t in &plan.tasks {
            if let Some(server) = self.plan.graph[t].task().and_then(|t| t.server.clone())
                && !batch_of.contains_key(&server)
            {
                batch_of.insert(server, order / size);
                order += 1;
            }
        }
        let batches = order.div_ceil(size) as usize;
        Some(Rolling {
            batch_of,
            left: vec![0; batches.max(1)],
            current: 0,
            failed: HashSet::new(),
            resume_at: None,
            threshold: r.failure_threshold,
            pause: Duration::from_secs(r.pause),
        })
    }

    fn task(&self, n: NodeIndex) -> Option<&Task> {
        self.plan.graph[n].task()
    }

    fn id(&self, n: NodeIndex) -> String {
        self.plan.graph[n].id().to_string()
    }

    /// Journal `event` (masked) and apply it to its node: the one way a
    /// journaled transition happens.
    fn record(&mut self, node: Option<NodeIndex>, event: Event) {
        let event = if self.settings.mask.is_empty() {
            event
        } else {
            mask_event(event, &self.settings.mask)
        };
        if let Some(n) = node {
            machine::apply(&mut self.nodes[n.index()], &event);
        }
        let id = node.map(|n| self.id(n));
        self.journal.push((now_ms(), id, event));
    }

    /// Write pending journal events durably, then tell watchers. The
    /// write runs off the runtime's workers (on the store's writer thread,
    /// waited for from the blocking pool).
    async fn flush(&mut self) -> Result<(), SchedulerError> {
        if self.journal.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.journal);
        let (store, run_id) = (self.store.clone(), self.run_id.clone());
        let (batch, written) = tokio::task::spawn_blocking(move || {
            let refs: Vec<(i64, Option<&str>, &Event)> = batch.iter().map(|(t, n, e)| (*t, n.as_deref(), e)).collect();
            let written = store.append(&run_id, &refs);
            (batch, written)
        })
        .await
        .map_err(|e| SchedulerError::Writer(e.to_string()))?;
        let last = written?;
        if let Some(tx) = self.journaled.take() {
            let _ = tx.send(());
        }
        let first = last - batch.len() as i64 + 1;
        for (i, (_, node, event)) in batch.into_iter().enumerate() {
            let _ = self.progress.send(Progress {
                seq: first + i as i64,
                node,
                event,
            });
        }
        Ok(())
    }

    /// A receiver told when the run's first turn (its start, and what was
    /// decided preparing it) is in the journal.
    pub fn journaled(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.journaled = Some(tx);
        rx
    }

    /// Stop dispatching; running tasks go on.
    pub fn pause(&mut self) {
        if !self.paused {
            self.paused = true;
            self.record(None, Event::RunPaused);
        }
    }

    /// Take up the run as `start` says, from its `journal` (empty for a
    /// fresh run). Everything decided here is journaled with the first
    /// turn.
    pub fn prepare(&mut self, start: Start, journal: &[Entry]) {
        let replayed = machine::replay(&self.plan, &mut self.nodes, journal);
        if let Some(sp) = replayed.safe_point {
            self.safe_point = sp;
        }
        match start {
            Start::Fresh => {
                self.record(None, Event::RunStarted { resumed: false });
                self.rebuild(true);
            }
            Start::Resume => {
                self.record(None, Event::RunStarted { resumed: true });
                match replayed.rollback {
                    Some(r) => self.enter_rollback(format!("{} (resumed)", r.reason), r.by_hand),
                    None => {
                        for rt in &mut self.nodes {
                            machine::for_resume(rt);
                        }
                        self.rebuild(true);
                    }
                }
            }
            Start::Retry(op) => {
                self.record(None, Event::RunStarted { resumed: true });
                self.prepare_retry(op);
            }
            Start::Rollback => self.enter_rollback("rollback requested by an operator".into(), true),
        }
    }

    /// Failed, cancelled and skipped nodes (all, or those of one
    /// operation and what follows from them) run again with a fresh retry
    /// budget.
    fn prepare_retry(&mut self, operation: Option<usize>) {
        let reset: Vec<NodeIndex> = match operation {
            None => self.plan.graph.node_indices().collect(),
            Some(op) => {
                let mut set = BTreeSet::new();
                let mut stack: Vec<NodeIndex> = self.plan.operations[op].tasks.clone();
                stack.push(self.plan.operations[op].done);
                while let Some(n) = stack.pop() {
                    if set.insert(n) {
                        stack.extend(self.plan.graph.neighbors_directed(n, Direction::Outgoing));
                    }
                }
                set.into_iter().collect()
            }
        };
        let mut again: Vec<NodeIndex> = reset
            .into_iter()
            .filter(|n| machine::for_retry(&mut self.nodes[n.index()]))
            .collect();
        // Gates after what runs again wait for it again (an operation's
        // done gate opened in the first round, whatever its tasks did), so
        // that conditions and dependencies see the new outcome.
        while let Some(n) = again.pop() {
            let next: Vec<NodeIndex> = self.plan.graph.neighbors_directed(n, Direction::Outgoing).collect();
            for m in next {
                if matches!(self.plan.graph[m], Node::Gate(_)) && self.nodes[m.index()].status.is_terminal() {
                    machine::reopen(&mut self.nodes[m.index()]);
                    again.push(m);
                }
            }
        }
        // A failure the operator did not ask to retry (another operation's)
        // does not halt the retry: it would skip everything retried.
        self.rebuild(false);
    }

    /// Counters and readiness from the node states; `keep_halts`: failures
    /// in the states still halt the run (a resume continues as it was).
    fn rebuild(&mut self, keep_halts: bool) {
        let order = self.plan.topological_order();
        for rt in &mut self.nodes {
            rt.remaining = 0;
            rt.doomed = None;
        }
        for &n in &order {
            let mut remaining = 0;
            let mut doomed = None;
            for (u, edge) in self.plan.upstream(n) {
                let st = self.nodes[u.index()].status;
                if !st.is_terminal() {
                    remaining += 1;
                } else if edge == Edge::Success && st != Status::Succeeded && doomed.is_none() {
                    doomed = Some(format!("{} did not succeed", self.id(u)));
                }
            }
            let rt = &mut self.nodes[n.index()];
            rt.remaining = remaining;
            rt.doomed = doomed;
        }
        for (i, op) in self.plan.operations.iter().enumerate() {
            self.op_left[i] = op
                .tasks
                .iter()
                .filter(|t| !self.nodes[t.index()].status.is_terminal())
                .count();
            if let Some(r) = self.rolling[i].as_mut() {
                for &t in &op.tasks {
                    let st = self.nodes[t.index()].status;
                    if let Some(server) = self.plan.graph[t].task().and_then(|t| t.server.as_ref())
                        && let Some(&b) = r.batch_of.get(server)
                    {
                        if !st.is_terminal() {
                            r.left[b as usize] += 1;
                        } else if st == Status::Failed {
                            r.failed.insert(server.clone());
                        }
                    }
                }
                r.current = r.left.iter().position(|&l| l > 0).unwrap_or(r.left.len()) as u32;
            }
        }
        if keep_halts {
            // Halts recorded by failures before the interruption still hold.
            for n in self.plan.graph.node_indices() {
                if self.nodes[n.index()].status == Status::Failed
                    && let Some(t) = self.task(n).cloned()
                {
                    let error = self.nodes[n.index()].error.clone().unwrap_or_default();
                    self.on_failed(n, t.operation, &error);
                }
            }
        }
        // Outcomes of finished operations once the halts are known again
        // (a rolling operation failed if its roll halted).
        for i in 0..self.plan.operations.len() {
            if self.op_left[i] == 0 {
                self.op_outcome[i] = Some(self.outcome_of(i));
            }
        }
        // Operations that completed after the last safe point count
        // towards the next one, as they did before the interruption.
        self.completed_ops = self.safe_point.clone();
        for (i, op) in self.plan.operations.iter().enumerate() {
            if self.op_outcome[i] == Some(OpOutcome::Succeeded) && !self.completed_ops.contains(&op.id) {
                self.completed_ops.push(op.id.clone());
            }
        }
        for n in order {
            let rt = &self.nodes[n.index()];
            if rt.status == Status::Pending && rt.remaining == 0 {
                self.make_ready(n);
            } else if rt.status == Status::Waiting {
                self.nodes[n.index()].retry_at = Some(Instant::now());
            }
        }
    }

    /// Run the loop until the run is over (every node finished, then the
    /// rollback a failure asked for, if any); journal how it ended.
    pub async fn run(mut self, timeout: Option<Duration>) -> Result<(Finished, Vec<NodeRt>), SchedulerError> {
        if matches!(self.phase, Phase::Forward) {
            self.deadline = timeout.map(|t| Instant::now() + t);
        }
        loop {
            self.dispatch();
            self.flush_and_spawn().await?;
            if self.work.is_empty() && self.phase_over() {
                if self.next_phase() {
                    continue;
                }
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                joined = self.work.join_next_with_id(), if !self.work.is_empty() => {
                    if let Some(joined) = joined {
                        self.on_joined(joined);
                    }
                }
                ctl = self.control.recv() => match ctl {
                    Some(c) => self.on_control(c),
                    // Nobody can control this run any more; go on.
                    None => self.control = mpsc::unbounded_channel().1,
                },
                () = sleep_until(wake) => self.on_timer(),
            }
            // Drain what else ended. The results applied here and the
            // starts dispatched next are committed together at the top of
            // the loop, before any dependent is spawned: one fsync a turn.
            while let Some(joined) = self.work.try_join_next_with_id() {
                self.on_joined(joined);
            }
        }
        let finished = self.outcome.take().unwrap_or_else(|| self.verdict());
        self.record(
            None,
            Event::RunFinished {
                status: finished.status,
                reason: Some(finished.reason.clone()),
            },
        );
        self.flush().await?;
        Ok((finished, self.nodes))
    }

    /// Whether the current phase has nothing left to do (its running work
    /// has ended: the caller checks).
    fn phase_over(&self) -> bool {
        match &self.phase {
            Phase::Forward => self.nodes.iter().all(|n| n.status.is_terminal()),
            Phase::Rollback(r) => r.is_over() || self.stopping.is_some(),
        }
    }

    /// Move on from a phase that is over: a forward phase that failed and
    /// asked for it rolls back; otherwise the run is over. Returns whether
    /// there is more to do.
    fn next_phase(&mut self) -> bool {
        match &self.phase {
            Phase::Forward => {
                let verdict = self.verdict();
                if verdict.status == RunStatus::Failed
                    && let Some(reason) = self.rollback_requested.clone()
                    && self.plan.workflow.rollback_strategy.enabled
                {
                    // The workflow timeout (the one stop that ends Failed)
                    // stopped the work; the rollback a failure asked for
                    // still runs: the timeout bounds the work, not its
                    // undoing.
                    let reason = match self.stopping.take() {
                        Some((_, why)) => format!("{reason}; {why}"),
                        None => reason,
                    };
                    self.enter_rollback(reason, false);
                    return true;
                }
                self.outcome = Some(verdict);
                false
            }
            Phase::Rollback(_) => {
                self.outcome = Some(self.rollback_outcome());
                false
            }
        }
    }

    fn verdict(&self) -> Finished {
        if let Some((status, reason)) = &self.stopping {
            return Finished {
                status: *status,
                reason: reason.clone(),
            };
        }
        if let Some(h) = &self.halted {
            return Finished {
                status: RunStatus::Failed,
                reason: format!("halted: {h}"),
            };
        }
        let failed: Vec<NodeIndex> = self
            .plan
            .graph
            .node_indices()
            .filter(|n| self.nodes[n.index()].status == Status::Failed && self.task(*n).is_some())
            .collect();
        if !failed.is_empty() {
            let list = failed
                .iter()
                .take(5)
                .map(|n| self.id(*n))
                .collect::<Vec<_>>()
                .join(", ");
            // Tolerated: failures of rolling operations whose roll did
            // not halt (a halted roll exceeded its threshold).
            let tolerated = failed.iter().all(|n| {
                self.task(*n)
                    .is_some_and(|t| self.rolling[t.operation].is_some() && self.op_halted[t.operation].is_none())
            });
            let tolerated = if tolerated {
                ", within the rolling failure threshold"
            } else {
                ""
            };
            // A halted roll says so first: it is why servers were skipped.
            let halted = self
                .op_halted
                .iter()
                .flatten()
                .next()
                .map(|h| format!("{h}; "))
                .unwrap_or_default();
            return Finished {
                status: RunStatus::Failed,
                reason: format!("{halted}{} task(s) failed{tolerated}: {list}", failed.len()),
            };
        }
        // A wait condition that never held skipped its source without any
        // task failing; the run did not do what it was asked to.
        let timed_out: Vec<String> = self
            .plan
            .graph
            .node_indices()
            .filter(|n| matches!(&self.plan.graph[*n], Node::Gate(g) if matches!(g.kind, GateKind::Dependency { .. })))
            .filter(|n| self.nodes[n.index()].status == Status::Skipped)
            .filter_map(|n| {
                let error = self.nodes[n.index()].error.as_deref()?;
                error
                    .starts_with(WAIT_FAILED)
                    .then(|| format!("{}: {error}", self.id(n)))
            })
            .collect();
        if let Some(first) = timed_out.first() {
            return Finished {
                status: RunStatus::Failed,
                reason: format!("{} dependency wait(s) failed; {first}", timed_out.len()),
            };
        }
        Finished {
            status: RunStatus::Succeeded,
            reason: "every task succeeded".into(),
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let mut wake: Option<Instant> = self.deadline;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        for rt in &self.nodes {
            if rt.status == Status::Waiting {
                consider(rt.retry_at);
            }
        }
        for r in self.rolling.iter().flatten() {
            consider(r.resume_at);
        }
        consider(self.rate_wake);
        wake
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| d <= now) && self.stopping.is_none() {
            self.deadline = None;
            let t = self.plan.workflow.timeout.unwrap_or(0);
            self.stop(RunStatus::Failed, format!("the workflow timeout of {t}s expired"));
            return;
        }
        for i in 0..self.nodes.len() {
            let rt = &self.nodes[i];
            if rt.status == Status::Waiting && rt.retry_at.is_some_and(|t| t <= now) {
                self.nodes[i].retry_at = None;
                self.enqueue(NodeIndex::new(i));
            }
        }
        for r in self.rolling.iter_mut().flatten() {
            if r.resume_at.is_some_and(|t| t <= now) {
                r.resume_at = None;
            }
        }
        self.rate_wake = None;
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Pause => self.pause(),
            Control::Hold => self.held_for_shutdown = true,
            Control::Resume => {
                if self.paused {
                    self.paused = false;
                    self.record(None, Event::RunUnpaused);
                }
            }
            Control::Cancel => {
                self.record(None, Event::CancelRequested);
                self.stop(RunStatus::Cancelled, "cancelled by an operator".into());
            }
            Control::Abort => {
                self.record(None, Event::CancelRequested);
                // A run an operator paused stays paused when it is taken
                // up again.
                let status = if self.paused {
                    RunStatus::Paused
                } else {
                    RunStatus::Aborted
                };
                self.stop(status, "aborted (interrupt); resume it with --resume".into());
            }
        }
    }

    /// Cancel running work and everything not started.
    fn stop(&mut self, status: RunStatus, reason: String) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some((status, reason.clone()));
        for token in self.tokens.values() {
            token.cancel();
        }
        for q in &mut self.ready {
            q.clear();
        }
        if let Phase::Rollback(r) = &mut self.phase {
            r.stop();
            return;
        }
        let idle: Vec<NodeIndex> = self
            .plan
            .graph
            .node_indices()
            .filter(|n| {
                matches!(
                    self.nodes[n.index()].status,
                    Status::Pending | Status::Ready | Status::Waiting
                )
            })
            .collect();
        for n in idle {
            // Cancelling one node may already have cancelled its successors.
            if !self.nodes[n.index()].status.is_terminal() {
                self.finish(n, Event::TaskCancelled { reason: reason.clone() });
            }
        }
    }

    /// Start what the limits allow.
    fn dispatch(&mut self) {
        if self.paused || self.held_for_shutdown || self.stopping.is_some() {
            return;
        }
        if matches!(self.phase, Phase::Rollback(_)) {
            self.dispatch_undo();
            return;
        }
        let now = Instant::now();
        for op in 0..self.ready.len() {
            let condition = self.plan.operations[op].condition;
            let mut deferred = Vec::new();
            while let Some(&(batch, n)) = self.ready[op].first() {
                if self.adm.full() {
                    break;
                }
                let node = NodeIndex::new(n);
                if let Some(h) = self.halted.clone()
                    && condition == Condition::OnSuccess
                {
                    self.ready[op].remove(&(batch, n));
                    self.finish(
                        node,
                        Event::TaskSkipped {
                            reason: format!("run halted: {h}"),
                        },
                    );
                    continue;
                }
                if let Some(r) = &self.rolling[op]
                    && (batch > r.current || r.resume_at.is_some_and(|t| t > now))
                {
                    break;
                }
                let need = self.need_of(node);
                match self.adm.admit(&need, now) {
                    Ok(()) => {
                        self.ready[op].remove(&(batch, n));
                        self.start(node, need);
                    }
                    Err(Refusal::Full | Refusal::OperationFull) => break,
                    Err(refusal) => {
                        // Another provider's (or zone's) tasks of this
                        // operation may still go; look at them first.
                        if let Refusal::RateLimited(at) = refusal {
                            self.rate_wake = Some(self.rate_wake.map_or(at, |w| w.min(at)));
                        }
                        self.ready[op].remove(&(batch, n));
                        deferred.push((batch, n));
                    }
                }
            }
            self.ready[op].extend(deferred);
        }
    }

    /// What `n` takes of the limits while it runs.
    fn need_of(&self, n: NodeIndex) -> Need {
        let t = self.task(n);
        let provider = t.and_then(|t| t.provider.clone());
        let resources = match (t, &provider) {
            (Some(t), Some(p)) if t.server.is_some() => {
                let zone = t
                    .server
                    .as_ref()
                    .and_then(|s| self.zone_of.get(s))
                    .and_then(|z| z.as_deref());
                self.adm.resources_of(p, zone)
            }
            _ => Vec::new(),
        };
        Need {
            op: t.map_or(0, |t| t.operation),
            provider,
            resources,
        }
    }

    fn start(&mut self, n: NodeIndex, need: Need) {
        let key = crate::runner::Runner::idempotency_key(&self.run_id, self.plan.graph[n].id());
        let attempt = self.nodes[n.index()].attempt + 1;
        self.record(
            Some(n),
            Event::TaskStarted {
                attempt,
                idempotency_key: key,
            },
        );
        self.nodes[n.index()].started = Some(Instant::now());
        self.held.insert(n.index(), need);
        self.tokens.insert(n.index(), CancellationToken::new());
        self.to_spawn.push(Work::Attempt {
            node: n.index(),
            attempt,
        });
    }

    /// Journal the starts, then start the work.
    async fn flush_and_spawn(&mut self) -> Result<(), SchedulerError> {
        let starting = std::mem::take(&mut self.to_spawn);
        self.flush().await?;
        for work in starting {
            let handle = match work {
                Work::Attempt { node, attempt } => {
                    let Some(task) = self.task(NodeIndex::new(node)).cloned() else {
                        continue;
                    };
                    let token = self.tokens.get(&node).cloned().unwrap_or_default();
                    let exec = self.exec.clone();
                    self.work
                        .spawn(async move { Done::Attempt(exec.run(&task, attempt, token).await) })
                }
                Work::Gate { node } => {
                    let Node::Gate(g) = &self.plan.graph[NodeIndex::new(node)] else {
                        continue;
                    };
                    let GateKind::Dependency {
                        wait_condition: Some(w),
                        ..
                    } = g.kind.clone()
                    else {
                        continue;
                    };
                    let token = self.tokens.get(&node).cloned().unwrap_or_default();
                    let exec = self.exec.clone();
                    self.work.spawn(async move { Done::Gate(poll(exec, w, token).await) })
                }
                Work::Undo { node } => {
                    let Some(task) = self.task(NodeIndex::new(node)).cloned() else {
                        continue;
                    };
                    let token = self.tokens.get(&node).cloned().unwrap_or_default();
                    let exec = self.exec.clone();
                    self.work
                        .spawn(async move { Done::Undo(exec.undo(&task, token).await) })
                }
            };
            self.work_of.insert(handle.id(), work);
        }
        Ok(())
    }

    /// A worker ended (or panicked).
    fn on_joined(&mut self, joined: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        let (id, done) = match joined {
            Ok((id, done)) => (id, Ok(done)),
            Err(e) => (e.id(), Err(panic_message(e))),
        };
        let Some(work) = self.work_of.remove(&id) else {
            return;
        };
        let done = done.unwrap_or_else(|message| {
            let why = format!("the worker panicked (a bug in drover or a plugin): {message}");
            tracing::error!(run_id = %self.run_id, ?work, "{why}");
            match work {
                Work::Attempt { .. } => Done::Attempt(Err(TaskFailure::permanent(why))),
                Work::Gate { .. } => Done::Gate(Err(why)),
                Work::Undo { .. } => Done::Undo(Undo::Failed(TaskFailure::permanent(why))),
            }
        });
        match (work, done) {
            (Work::Attempt { node, attempt }, Done::Attempt(result)) => {
                self.on_attempt_done(NodeIndex::new(node), attempt, result)
            }
            (Work::Gate { node }, Done::Gate(result)) => {
                self.tokens.remove(&node);
                let n = NodeIndex::new(node);
                match result {
                    Ok(()) => self.finish(n, Event::GateOpened),
                    Err(reason) => self.finish(n, Event::GateBlocked { reason }),
                }
            }
            (Work::Undo { node }, Done::Undo(undo)) => self.on_undo_done(NodeIndex::new(node), undo),
            _ => {}
        }
    }

    fn on_attempt_done(&mut self, n: NodeIndex, attempt: u32, result: Result<Found, TaskFailure>) {
        self.tokens.remove(&n.index());
        if let Some(need) = self.held.remove(&n.index()) {
            self.adm.release(&need);
        }
        let Some(op) = self.task(n).map(|t| t.operation) else {
            return;
        };
        let duration_ms = self.nodes[n.index()]
            .started
            .take()
            .map_or(0, |s| s.elapsed().as_millis() as u64);
        let failure = match result {
            Ok(found) => {
                self.finish(
                    n,
                    Event::TaskSucceeded {
                        attempt,
                        duration_ms,
                        found,
                    },
                );
                return;
            }
            Err(f) => f,
        };
        if let Some((_, reason)) = &self.stopping {
            let reason = format!("{reason} (attempt {attempt}: {})", failure.message);
            self.finish(n, Event::TaskCancelled { reason });
            return;
        }
        let policy = self.plan.operations[op].retry.clone();
        let round_attempts = attempt - self.nodes[n.index()].round_base;
        // Only a transient failure is worth another attempt: a refused
        // login or a changed host key fails the task at once.
        if failure.kind == FailureKind::Transient && round_attempts < policy.max_attempts {
            let delay = retry_delay(&policy, round_attempts, &mut self.rng);
            self.record(
                Some(n),
                Event::TaskFailed {
                    attempt,
                    duration_ms,
                    error: failure.message,
                    kind: failure.kind,
                    will_retry: true,
                    found: failure.found,
                },
            );
            self.record(
                Some(n),
                Event::TaskRetrying {
                    next_attempt: attempt + 1,
                    delay_ms: delay.as_millis() as u64,
                },
            );
            self.nodes[n.index()].retry_at = Some(Instant::now() + delay);
        } else {
            self.finish(
                n,
                Event::TaskFailed {
                    attempt,
                    duration_ms,
                    error: failure.message.clone(),
                    kind: failure.kind,
                    will_retry: false,
                    found: failure.found,
                },
            );
            self.on_failed(n, op, &failure.message);
        }
    }

    /// A task failed for good: what its operation's on_failure (or, for a
    /// rolling operation, its failure threshold) does to the run.
    fn on_failed(&mut self, n: NodeIndex, op: usize, error: &str) {
        if let Some(r) = self.rolling[op].as_mut() {
            if let Some(server) = self.plan.graph[n].task().and_then(|t| t.server.clone()) {
                r.failed.insert(server);
            }
            self.check_rolling(op);
            return;
        }
        let id = self.id(n);
        self.apply_on_failure(op, format!("{id} failed: {error}"), format!("{id} failed"));
    }

    /// The operation failed: halt (fail, rollback) and ask for a rollback
    /// (rollback), or go on (continue).
    fn apply_on_failure(&mut self, op: usize, halt: String, rollback: String) {
        let plan_op = &self.plan.operations[op];
        if plan_op.on_failure == OnFailure::Continue {
            return;
        }
        if self.halted.is_none() {
            self.halted = Some(halt);
        }
        if plan_op.on_failure == OnFailure::Rollback {
            let rb = &self.plan.workflow.rollback_strategy;
            let partial = plan_op
                .tasks
                .iter()
                .any(|t| self.nodes[t.index()].status == Status::Succeeded);
            if rb.enabled && (rb.on_partial_failure || !partial) && self.rollback_requested.is_none() {
                self.rollback_requested = Some(rollback);
            }
        }
    }

    /// A rolling operation halts when its failed servers exceed the
    /// threshold, a share of ALL its servers: what is queued of it is
    /// skipped, then its on_failure applies. Below the threshold a failed
    /// server is tolerated and the roll goes on.
    fn check_rolling(&mut self, op: usize) {
        let Some(r) = &self.rolling[op] else { return };
        if r.failed.is_empty() || r.failed_pct() <= r.threshold || self.op_halted[op].is_some() {
            return;
        }
        let total = r.batch_of.len();
        // The most failed servers the threshold lets through.
        let tolerated = (0..=total)
            .filter(|&k| k as f64 * 100.0 / total.max(1) as f64 <= r.threshold)
            .max()
            .unwrap_or(0);
        let reason = format!(
            "rolling update of {} halted: {} of {total} servers failed ({:.0}%), more than the {tolerated} tolerated (threshold {}%)",
            self.plan.operations[op].id,
            r.failed.len(),
            r.failed_pct(),
            (r.threshold * 100.0).round() / 100.0
        );
        self.op_halted[op] = Some(reason.clone());
        self.apply_on_failure(op, reason.clone(), reason.clone());
        let queued: Vec<usize> = self.ready[op].iter().map(|&(_, n)| n).collect();
        self.ready[op].clear();
        for n in queued {
            self.finish(NodeIndex::new(n), Event::TaskSkipped { reason: reason.clone() });
        }
    }

    /// A node reached a terminal state: journal it and release what waits
    /// for it.
    fn finish(&mut self, n: NodeIndex, event: Event) {
        self.record(Some(n), event);
        let status = self.nodes[n.index()].status;
        let succeeded = status == Status::Succeeded;
        let id = self.id(n);
        let next: Vec<(NodeIndex, Edge)> = self
            .plan
            .graph
            .edges_directed(n, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
        if let Some(t) = self.task(n).cloned() {
            self.task_finished(&t, status);
        }
        for (m, edge) in next {
            let rt = &mut self.nodes[m.index()];
            if rt.status.is_terminal() {
                continue;
            }
            if edge == Edge::Success && !succeeded && rt.doomed.is_none() {
                rt.doomed = Some(format!("{id} did not succeed"));
            }
            rt.remaining = rt.remaining.saturating_sub(1);
            if rt.remaining == 0 && rt.status == Status::Pending {
                self.make_ready(m);
            }
        }
    }

    fn task_finished(&mut self, t: &Task, status: Status) {
        let op = t.operation;
        self.op_left[op] = self.op_left[op].saturating_sub(1);
        if let Some(r) = self.rolling[op].as_mut()
            && let Some(server) = &t.server
            && let Some(&b) = r.batch_of.get(server)
        {
            r.left[b as usize] = r.left[b as usize].saturating_sub(1);
            if b == r.current && r.left[b as usize] == 0 {
                r.current += 1;
                // A batch whose tasks all finished early (skipped: their
                // server's creation failed, a hard dependency did not
                // succeed) will not finish again to advance the batch;
                // move past it now.
                while (r.current as usize) < r.left.len() && r.left[r.current as usize] == 0 {
                    r.current += 1;
                }
                r.resume_at = Some(Instant::now() + r.pause);
            }
            let _ = status;
        }
        if self.op_left[op] == 0 {
            let outcome = self.outcome_of(op);
            self.op_outcome[op] = Some(outcome);
            if outcome == OpOutcome::Succeeded {
                let id = self.plan.operations[op].id.clone();
                self.completed_ops.push(id);
                let every = self.plan.workflow.rollback_strategy.checkpoint_interval as usize;
                if every > 0 && self.completed_ops.len().is_multiple_of(every) {
                    self.safe_point = self.completed_ops.clone();
                    self.record(
                        None,
                        Event::Checkpoint {
                            operations_completed: self.safe_point.clone(),
                        },
                    );
                }
            }
        }
    }

    fn outcome_of(&self, op: usize) -> OpOutcome {
        let plan_op = &self.plan.operations[op];
        let states: Vec<Status> = plan_op.tasks.iter().map(|t| self.nodes[t.index()].status).collect();
        if states.iter().all(|s| matches!(s, Status::Skipped | Status::Cancelled)) {
            return OpOutcome::Skipped;
        }
        // In a rolling operation a failure below the threshold is
        // tolerated; the operation failed when its roll halted.
        let failed = if self.rolling[op].is_some() {
            self.op_halted[op].is_some()
        } else {
            states.contains(&Status::Failed) || self.op_halted[op].is_some()
        };
        if failed && plan_op.on_failure != OnFailure::Continue {
            OpOutcome::Failed
        } else {
            OpOutcome::Succeeded
        }
    }

    /// Whether an operation's condition lets it run, decided once, when its
    /// first task becomes ready (every upstream operation has finished by
    /// then: the barrier guarantees it).
    fn verdict_for(&mut self, op: usize) -> Result<(), String> {
        if let Some(v) = &self.op_verdict[op] {
            return v.clone();
        }
        let plan_op = &self.plan.operations[op];
        let upstream: Vec<(String, Option<OpOutcome>)> = plan_op
            .depends_on
            .iter()
            .filter_map(|d| self.plan.operations.iter().position(|o| &o.id == d))
            .map(|j| (self.plan.operations[j].id.clone(), self.op_outcome[j]))
            .collect();
        let not_ok: Vec<&str> = upstream
            .iter()
            .filter(|(_, o)| *o != Some(OpOutcome::Succeeded))
            .map(|(id, _)| id.as_str())
            .collect();
        let any_failed = upstream.iter().any(|(_, o)| *o == Some(OpOutcome::Failed));
        let v = match plan_op.condition {
            Condition::Always => Ok(()),
            Condition::OnSuccess if not_ok.is_empty() => Ok(()),
            Condition::OnSuccess => Err(format!(
                "condition on_success not met: {} did not succeed",
                not_ok.join(", ")
            )),
            Condition::OnFailure if any_failed => Ok(()),
            Condition::OnFailure => Err("condition on_failure not met: no upstream operation failed".to_string()),
        };
        self.op_verdict[op] = Some(v.clone());
        v
    }

    /// All predecessors have finished: skip, open, or queue the node.
    fn make_ready(&mut self, n: NodeIndex) {
        // A stop cancels every idle node at once; their successors then
        // become "ready" as those finish, and must not end twice.
        if self.nodes[n.index()].status.is_terminal() {
            return;
        }
        if let Some((_, reason)) = &self.stopping {
            let reason = reason.clone();
            self.finish(n, Event::TaskCancelled { reason });
            return;
        }
        if let Node::Gate(g) = &self.plan.graph[n] {
            let polls = matches!(
                g.kind,
                GateKind::Dependency {
                    wait_condition: Some(_),
                    ..
                }
            );
            if let Some(reason) = self.nodes[n.index()].doomed.clone() {
                self.finish(n, Event::GateBlocked { reason });
            } else if polls {
                // Polling is not a task: it takes no slot of max_parallel
                // (the task it waits for may need one); the run is not
                // over while the gate is running.
                self.record(Some(n), Event::GateWaiting);
                self.tokens.insert(n.index(), CancellationToken::new());
                self.to_spawn.push(Work::Gate { node: n.index() });
            } else {
                self.finish(n, Event::GateOpened);
            }
            return;
        }
        let Some(op) = self.task(n).map(|t| t.operation) else {
            return;
        };
        if let Some(reason) = self.nodes[n.index()].doomed.clone() {
            self.finish(n, Event::TaskSkipped { reason });
            return;
        }
        if let Err(reason) = self.verdict_for(op) {
            self.finish(n, Event::TaskSkipped { reason });
            return;
        }
        if let Some(reason) = self.op_halted[op].clone() {
            self.finish(n, Event::TaskSkipped { reason });
            return;
        }
        if let Some(h) = &self.halted
            && self.plan.operations[op].condition == Condition::OnSuccess
        {
            let reason = format!("run halted: {h}");
            self.finish(n, Event::TaskSkipped { reason });
            return;
        }
        self.enqueue(n);
    }

    fn enqueue(&mut self, n: NodeIndex) {
        let Some(t) = self.task(n) else { return };
        let op = t.operation;
        let batch = self.rolling[op]
            .as_ref()
            .and_then(|r| t.server.as_ref().and_then(|s| r.batch_of.get(s)).copied())
            .unwrap_or(0);
        machine::queue(&mut self.nodes[n.index()]);
        self.ready[op].insert((batch, n.index()));
    }
}

/// Polls a wait condition every interval, and a last time at the deadline
/// (the condition gets its whole timeout), until it holds.
async fn poll(
    exec: Arc<dyn TaskExecutor>,
    w: drover_core::model::WaitCondition,
    token: CancellationToken,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(w.timeout);
    loop {
        let pause = match exec.probe(&w, token.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                if token.is_cancelled() {
                    return Err("cancelled".to_string());
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(format!(
                        "{WAIT_FAILED} `{}` did not hold within {}s (last: {})",
                        w.command, w.timeout, e.message
                    ));
                }
                Duration::from_secs(w.interval).min(deadline - now)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = token.cancelled() => return Err("cancelled".to_string()),
        }
    }
}

/// What a worker that did not end normally said.
fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// The event with every secret in its text replaced: errors and reasons
/// can quote a script's output or a command line.
fn mask_event(event: Event, mask: &crate::mask::Masker) -> Event {
    fn walk(v: &mut serde_json::Value, mask: &crate::mask::Masker) {
        match v {
            serde_json::Value::String(s) => *s = mask.mask(s),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, mask)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|x| walk(x, mask)),
            _ => {}
        }
    }
    let Ok(mut v) = serde_json::to_value(&event) else {
        return event;
    };
    walk(&mut v, mask);
    serde_json::from_value(v).unwrap_or(event)
}

/// The delay before retry number `n` (n = 1 after the first failure):
/// initial × n (linear) or initial × 2^(n-1) (exponential), capped, with
/// jitter drawing uniformly from the upper half of the delay.
pub fn retry_delay(policy: &RetryPolicy, n: u32, rng: &mut impl Rng) -> Duration {
    let n = u64::from(n.max(1));
    let base = match policy.backoff {
        Backoff::Linear => policy.initial_delay.saturating_mul(n),
        Backoff::Exponential => policy.initial_delay.saturating_mul(1u64 << (n - 1).min(32)),
    }
    .min(policy.max_delay);
    let ms = base * 1000;
    let ms = if policy.jitter && ms > 0 {
        rng.random_range(ms / 2..=ms)
    } else {
        ms
    };
    Duration::from_millis(ms)
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy(backoff: Backoff, jitter: bool) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            backoff,
            initial_delay: 2,
            max_delay: 10,
            jitter,
        }
    }

    #[test]
    fn delays_grow_as_the_policy_says_and_are_capped() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let secs = |b, rng: &mut rand::rngs::StdRng| -> Vec<u64> {
            (1..=5)
                .map(|n| retry_delay(&policy(b, false), n, rng).as_secs())
                .collect()
        };
        assert_eq!(secs(Backoff::Linear, &mut rng), [2, 4, 6, 8, 10]);
        assert_eq!(secs(Backoff::Exponential, &mut rng), [2, 4, 8, 10, 10]);
    }

    #[test]
    fn jitter_stays_within_the_upper_half() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for n in 1..=4 {
            let full = retry_delay(&policy(Backoff::Exponential, false), n, &mut rng);
            for _ in 0..50 {
                let d = retry_delay(&policy(Backoff::Exponential, true), n, &mut rng);
                assert!(d <= full && d >= full / 2, "{d:?} vs {full:?}");
            }
        }
    }
}
