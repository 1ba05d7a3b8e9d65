//! The scheduler: one event loop owns the run state.
//!
//! Workers (task attempts, wait-condition pollers) run as tokio tasks and
//! report back with messages; nothing else changes the state. Each turn of
//! the loop (1) applies the messages that arrived, (2) picks the tasks
//! that became ready and fit the limits, (3) writes every transition of
//! (1) and (2) to the journal in one durable transaction, and only then
//! (4) starts the picked tasks. So every transition is journaled before it
//! is acted on, and a crash at any point leaves a journal that `resume`
//! can continue: a task whose success was not yet committed is re-run
//! (with the same idempotency key), never lost.
//!
//! Task lifecycle: pending → running → succeeded | failed | waiting (to
//! retry) → running …; pending → skipped (an upstream it hard-depends on
//! did not succeed, its operation's condition does not hold, or the run
//! halted) | cancelled. Gates: pending → succeeded (open) | skipped
//! (blocked).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use drover_core::Plan;
use drover_core::model::{Backoff, Condition, OnFailure, RetryPolicy};
use drover_core::plan::{Edge, GateKind, Node, Task};
use drover_state::{Event, RunStatus, StateError, Store};
use petgraph::Direction;
use petgraph::graph::NodeIndex;
use petgraph::visit::EdgeRef;
use rand::Rng;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::runner::{TaskExecutor, TaskFailure, Undo};

/// A node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for what it depends on.
    Pending,
    /// Runnable, waiting for a free slot.
    Ready,
    /// An attempt is running.
    Running,
    /// Failed an attempt; the next one waits for its delay.
    Waiting,
    /// Done, well.
    Succeeded,
    /// Done, badly, with no attempt left.
    Failed,
    /// Will not run.
    Skipped,
    /// Stopped or never started because the run was cancelled.
    Cancelled,
}

impl Status {
    /// No further transition will happen in this run.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::Failed | Status::Skipped | Status::Cancelled
        )
    }
}

/// Operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop dispatching; running tasks go on.
    Pause,
    /// Dispatch again.
    Resume,
    /// Stop everything; the run ends cancelled.
    Cancel,
    /// Stop everything; the run ends aborted and can be resumed (Ctrl-C,
    /// shutdown).
    Abort,
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

/// A node's runtime bookkeeping.
#[derive(Debug, Clone)]
pub struct NodeRt {
    /// Its state.
    pub status: Status,
    /// The last attempt started (0: none yet).
    pub attempt: u32,
    /// Attempts made before the current round (a `retry` starts a round).
    pub round_base: u32,
    /// Predecessors not yet finished.
    remaining: usize,
    /// Why it must be skipped when it becomes ready.
    doomed: Option<String>,
    /// When the next attempt may start.
    retry_at: Option<Instant>,
    /// When the running attempt started.
    started: Option<Instant>,
    /// Total time spent in attempts, ms.
    pub duration_ms: u64,
    /// The last failure.
    pub error: Option<String>,
    /// Undone by a rollback.
    pub undone: bool,
    /// Its last attempt was stopped mid-run (cancel, abort): a resume runs
    /// that attempt again rather than counting it.
    interrupted: bool,
}

impl Default for NodeRt {
    fn default() -> Self {
        NodeRt {
            status: Status::Pending,
            attempt: 0,
            round_base: 0,
            remaining: 0,
            doomed: None,
            retry_at: None,
            started: None,
            duration_ms: 0,
            error: None,
            undone: false,
            interrupted: false,
        }
    }
}

enum Msg {
    Done {
        node: NodeIndex,
        attempt: u32,
        result: Result<(), TaskFailure>,
    },
    Gate {
        node: NodeIndex,
        result: Result<(), String>,
    },
    Control(Control),
}

/// The outcome of an operation, for `condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpOutcome {
    Succeeded,
    Failed,
    Skipped,
}

/// A token bucket for a provider's api_rate_limit.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Bucket {
        let capacity = rate.max(1.0);
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.at = now;
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn next(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.rate)
    }
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
    /// Servers finished so far, and how many of them failed.
    done_servers: HashSet<String>,
    failed_servers: HashSet<String>,
    /// When the next batch may start (the pause).
    resume_at: Option<Instant>,
    threshold: f64,
    pause: Duration,
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

/// The event loop of one run.
pub struct Scheduler {
    plan: Arc<Plan>,
    run_id: String,
    store: Arc<Store>,
    exec: Arc<dyn TaskExecutor>,
    settings: Settings,
    /// Indexed by NodeIndex::index().
    pub nodes: Vec<NodeRt>,
    ready: Vec<BTreeSet<(u32, usize)>>,
    running: usize,
    running_by_op: Vec<usize>,
    running_by_provider: HashMap<String, usize>,
    buckets: HashMap<String, Bucket>,
    bucket_wake: Option<Instant>,
    rolling: Vec<Option<Rolling>>,
    op_left: Vec<usize>,
    op_outcome: Vec<Option<OpOutcome>>,
    op_verdict: Vec<Option<Result<(), String>>>,
    op_halted: Vec<Option<String>>,
    completed_ops: Vec<String>,
    /// Operations completed at the last safe point.
    pub safe_point: Vec<String>,
    halted: Option<String>,
    rollback_requested: Option<String>,
    paused: bool,
    stopping: Option<(RunStatus, String)>,
    deadline: Option<Instant>,
    tokens: HashMap<usize, CancellationToken>,
    journal: Vec<(i64, Option<String>, Event)>,
    /// Attempts journaled as started this turn, spawned after the flush.
    to_spawn: Vec<(usize, u32)>,
    rng: rand::rngs::StdRng,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = Scheduler {
            rng: rand::rngs::StdRng::seed_from_u64(settings.seed),
            plan,
            run_id,
            store,
            exec,
            settings,
            nodes: vec![NodeRt::default(); n],
            ready: vec![BTreeSet::new(); ops],
            running: 0,
            running_by_op: vec![0; ops],
            running_by_provider: HashMap::new(),
            buckets: HashMap::new(),
            bucket_wake: None,
            rolling: Vec::new(),
            op_left: vec![0; ops],
            op_outcome: vec![None; ops],
            op_verdict: vec![None; ops],
            op_halted: vec![None; ops],
            completed_ops: Vec::new(),
            safe_point: Vec::new(),
            halted: None,
            rollback_requested: None,
            paused: false,
            stopping: None,
            deadline: None,
            tokens: HashMap::new(),
            journal: Vec::new(),
            to_spawn: Vec::new(),
            tx,
            rx,
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
            done_servers: HashSet::new(),
            failed_servers: HashSet::new(),
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

    fn record(&mut self, node: Option<NodeIndex>, event: Event) {
        let event = if self.settings.mask.is_empty() {
            event
        } else {
            mask_event(event, &self.settings.mask)
        };
        let id = node.map(|n| self.id(n));
        self.journal.push((now_ms(), id, event));
    }

    /// Write pending journal events durably, then tell watchers.
    fn flush(&mut self) -> Result<(), SchedulerError> {
        if self.journal.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.journal);
        let refs: Vec<(i64, Option<&str>, &Event)> = batch.iter().map(|(t, n, e)| (*t, n.as_deref(), e)).collect();
        let last = self.store.append(&self.run_id, &refs)?;
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

    /// Stop dispatching; running tasks go on.
    pub fn pause(&mut self) {
        if !self.paused {
            self.paused = true;
            self.record(None, Event::RunPaused);
            // The status column is what listings show; the journal
            // (RunPaused) stays the truth, so a failed update only makes a
            // listing stale until the next change.
            let _ = self.store.set_status(&self.run_id, RunStatus::Paused, now_ms());
        }
    }

    /// Restore node states from a journal (resume, retry, rollback).
    pub fn replay(&mut self, entries: &[drover_state::Entry]) {
        if let Some(sp) = replay_into(&self.plan, &mut self.nodes, entries) {
            self.safe_point = sp;
        }
    }

    /// Prepare to continue: in-flight and cancelled work runs again (with
    /// the same attempt number and idempotency key), and counters are
    /// rebuilt from the states.
    pub fn prepare_resume(&mut self) {
        for rt in &mut self.nodes {
            match rt.status {
                Status::Running => {
                    // Re-run the interrupted attempt as the same attempt.
                    rt.attempt = rt.attempt.saturating_sub(1);
                    rt.status = Status::Pending;
                }
                Status::Cancelled if rt.interrupted => {
                    // Stopped mid-attempt (abort): that attempt runs again.
                    rt.attempt = rt.attempt.saturating_sub(1);
                    rt.interrupted = false;
                    rt.status = Status::Pending;
                }
                Status::Cancelled | Status::Ready => rt.status = Status::Pending,
                Status::Waiting => rt.retry_at = None,
                _ => {}
            }
        }
        self.rebuild(true);
    }

    /// Prepare a `retry`: failed, cancelled and skipped nodes (all, or
    /// those of one operation and what follows from them) run again with
    /// a fresh retry budget.
    pub fn prepare_retry(&mut self, operation: Option<usize>) {
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
        let mut again = Vec::new();
        for n in reset {
            let rt = &mut self.nodes[n.index()];
            if matches!(
                rt.status,
                Status::Failed | Status::Cancelled | Status::Skipped | Status::Running | Status::Waiting
            ) {
                rt.status = Status::Pending;
                rt.round_base = rt.attempt;
                rt.error = None;
                rt.retry_at = None;
                again.push(n);
            }
        }
        // Gates after what runs again wait for it again (an operation's
        // done gate opened in the first round, whatever its tasks did), so
        // that conditions and dependencies see the new outcome.
        while let Some(n) = again.pop() {
            let next: Vec<NodeIndex> = self.plan.graph.neighbors_directed(n, Direction::Outgoing).collect();
            for m in next {
                let rt = &mut self.nodes[m.index()];
                if matches!(self.plan.graph[m], Node::Gate(_)) && rt.status.is_terminal() {
                    rt.status = Status::Pending;
                    rt.error = None;
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
            let preds: Vec<(NodeIndex, Edge)> = self.plan.upstream(n);
            let mut remaining = 0;
            let mut doomed = None;
            for (u, edge) in preds {
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
            if self.op_left[i] == 0 {
                self.op_outcome[i] = Some(self.outcome_of(i));
            }
            if let Some(r) = self.rolling[i].as_mut() {
                for &t in &op.tasks {
                    let st = self.nodes[t.index()].status;
                    if let Some(server) = self.plan.graph[t].task().and_then(|t| t.server.as_ref())
                        && let Some(&b) = r.batch_of.get(server)
                    {
                        if !st.is_terminal() {
                            r.left[b as usize] += 1;
                        } else {
                            r.done_servers.insert(server.clone());
                            if st == Status::Failed {
                                r.failed_servers.insert(server.clone());
                            }
                        }
                    }
                }
                r.current = r.left.iter().position(|&l| l > 0).unwrap_or(r.left.len()) as u32;
            }
        }
        // Halts recorded by failures before the interruption still hold.
        for n in self.plan.graph.node_indices() {
            if keep_halts
                && self.nodes[n.index()].status == Status::Failed
                && let Some(t) = self.plan.clone().graph[n].task().cloned()
            {
                let op = &self.plan.operations[t.operation];
                if op.on_failure != OnFailure::Continue && self.halted.is_none() {
                    self.halted = Some(format!("{} failed", t.id));
                    if op.on_failure == OnFailure::Rollback {
                        self.rollback_requested = Some(format!("{} failed", t.id));
                    }
                }
            }
        }
        self.completed_ops = self.safe_point.clone();
        for n in order {
            let rt = &self.nodes[n.index()];
            if rt.status == Status::Pending && rt.remaining == 0 {
                self.make_ready(n);
            } else if rt.status == Status::Waiting {
                self.nodes[n.index()].retry_at = Some(Instant::now());
            }
        }
    }

    /// Journal the start of the run (before `prepare_*`, whose decisions
    /// are journaled too).
    pub fn started(&mut self, resumed: bool) {
        self.record(None, Event::RunStarted { resumed });
    }

    /// Start from scratch: every node with no predecessor becomes ready.
    pub fn prepare_fresh(&mut self) {
        self.rebuild(true);
    }

    /// Run the loop until every node is finished; then roll back if a
    /// failure asked for it.
    pub async fn run(mut self, timeout: Option<Duration>) -> Result<(Finished, Vec<NodeRt>), SchedulerError> {
        self.deadline = timeout.map(|t| Instant::now() + t);
        self.flush()?;
        loop {
            self.dispatch();
            self.flush_and_spawn()?;
            if self.finished() {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                msg = self.rx.recv() => {
                    if let Some(m) = msg { self.apply(m); }
                }
                ctl = self.control.recv() => {
                    match ctl {
                        Some(c) => self.apply(Msg::Control(c)),
                        // Nobody can control this run any more; go on.
                        None => self.control = mpsc::unbounded_channel().1,
                    }
                }
                () = sleep_until(wake) => self.on_timer(),
            }
            // Drain what else arrived. The results applied here and the
            // starts dispatched next are committed together at the top of
            // the loop, before any dependent is spawned: one fsync a turn.
            while let Ok(m) = self.rx.try_recv() {
                self.apply(m);
            }
        }
        let mut finished = self.verdict();
        if finished.status == RunStatus::Failed
            && let Some(reason) = self.rollback_requested.clone()
            && self.plan.workflow.rollback_strategy.enabled
        {
            let complete = self.rollback(&reason, false).await?;
            if complete {
                finished = Finished {
                    status: RunStatus::RolledBack,
                    reason: format!("{reason}; rolled back"),
                };
            } else {
                finished.reason = format!("{reason}; rollback incomplete");
            }
        }
        self.record(
            None,
            Event::RunFinished {
                status: finished.status,
            },
        );
        self.flush()?;
        self.store.set_status(&self.run_id, finished.status, now_ms())?;
        Ok((finished, self.nodes))
    }

    fn finished(&self) -> bool {
        self.running == 0 && self.nodes.iter().all(|n| n.status.is_terminal())
    }

    fn verdict(&self) -> Finished {
        if let Some((status, reason)) = &self.stopping {
            return Finished {
                status: *status,
                reason: reason.clone(),
            };
        }
        let failed: Vec<String> = self
            .plan
            .graph
            .node_indices()
            .filter(|n| self.nodes[n.index()].status == Status::Failed && self.task(*n).is_some())
            .map(|n| self.id(n))
            .collect();
        if let Some(h) = &self.halted {
            return Finished {
                status: RunStatus::Failed,
                reason: format!("halted: {h}"),
            };
        }
        if !failed.is_empty() {
            let list = failed.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            return Finished {
                status: RunStatus::Failed,
                reason: format!("{} task(s) failed: {list}", failed.len()),
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
        consider(self.bucket_wake);
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
        self.bucket_wake = None;
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Done { node, attempt, result } => self.on_done(node, attempt, result),
            Msg::Gate { node, result } => match result {
                Ok(()) => self.finish(node, Status::Succeeded, Event::GateOpened),
                Err(reason) => self.finish(node, Status::Skipped, Event::GateBlocked { reason }),
            },
            Msg::Control(Control::Pause) => self.pause(),
            Msg::Control(Control::Resume) => {
                if self.paused {
                    self.paused = false;
                    self.record(None, Event::RunUnpaused);
                    let _ = self.store.set_status(&self.run_id, RunStatus::Running, now_ms());
                }
            }
            Msg::Control(Control::Cancel) => {
                self.record(None, Event::CancelRequested);
                self.stop(RunStatus::Cancelled, "cancelled by an operator".into());
            }
            Msg::Control(Control::Abort) => {
                self.record(None, Event::CancelRequested);
                self.stop(
                    RunStatus::Aborted,
                    "aborted (interrupt); resume it with --resume".into(),
                );
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
        for q in &mut self.ready {
            q.clear();
        }
        for n in idle {
            // Cancelling one node may already have cancelled its successors.
            if !self.nodes[n.index()].status.is_terminal() {
                self.finish(n, Status::Cancelled, Event::TaskCancelled { reason: reason.clone() });
            }
        }
    }

    fn on_done(&mut self, n: NodeIndex, attempt: u32, result: Result<(), TaskFailure>) {
        self.tokens.remove(&n.index());
        self.running -= 1;
        let (op, provider) = match self.task(n) {
            Some(t) => (t.operation, t.provider.clone()),
            None => return,
        };
        self.running_by_op[op] -= 1;
        if let Some(p) = provider
            && let Some(c) = self.running_by_provider.get_mut(&p)
        {
            *c -= 1;
        }
        let rt = &mut self.nodes[n.index()];
        let duration_ms = rt.started.take().map_or(0, |s| s.elapsed().as_millis() as u64);
        rt.duration_ms += duration_ms;
        match result {
            Ok(()) => self.finish(n, Status::Succeeded, Event::TaskSucceeded { attempt, duration_ms }),
            Err(TaskFailure(error)) => {
                if let Some((_, reason)) = &self.stopping {
                    let reason = format!("{reason} (attempt {attempt}: {error})");
                    self.finish(n, Status::Cancelled, Event::TaskCancelled { reason });
                    return;
                }
                self.nodes[n.index()].error = Some(error.clone());
                let policy = self.plan.operations[op].retry.clone();
                let round_attempts = attempt - self.nodes[n.index()].round_base;
                if round_attempts < policy.max_attempts {
                    let delay = retry_delay(&policy, round_attempts, &mut self.rng);
                    self.record(
                        Some(n),
                        Event::TaskFailed {
                            attempt,
                            duration_ms,
                            error,
                            will_retry: true,
                        },
                    );
                    self.record(
                        Some(n),
                        Event::TaskRetrying {
                            next_attempt: attempt + 1,
                            delay_ms: delay.as_millis() as u64,
                        },
                    );
                    let rt = &mut self.nodes[n.index()];
                    rt.status = Status::Waiting;
                    rt.retry_at = Some(Instant::now() + delay);
                } else {
                    self.finish(
                        n,
                        Status::Failed,
                        Event::TaskFailed {
                            attempt,
                            duration_ms,
                            error: error.clone(),
                            will_retry: false,
                        },
                    );
                    self.on_failed(n, op, &error);
                }
            }
        }
    }

    fn on_failed(&mut self, n: NodeIndex, op: usize, error: &str) {
        let plan_op = &self.plan.operations[op];
        let id = self.id(n);
        match plan_op.on_failure {
            OnFailure::Continue => {}
            OnFailure::Fail => {
                if self.halted.is_none() {
                    self.halted = Some(format!("{id} failed: {error}"));
                }
            }
            OnFailure::Rollback => {
                if self.halted.is_none() {
                    self.halted = Some(format!("{id} failed: {error}"));
                }
                let rb = &self.plan.workflow.rollback_strategy;
                let partial = plan_op
                    .tasks
                    .iter()
                    .any(|t| self.nodes[t.index()].status == Status::Succeeded);
                if rb.enabled && (rb.on_partial_failure || !partial) && self.rollback_requested.is_none() {
                    self.rollback_requested = Some(format!("{id} failed"));
                }
            }
        }
    }

    /// A node reached a terminal state: journal it and release what waits
    /// for it.
    fn finish(&mut self, n: NodeIndex, status: Status, event: Event) {
        self.nodes[n.index()].status = status;
        if let Some(reason) = match &event {
            Event::TaskSkipped { reason } | Event::TaskCancelled { reason } | Event::GateBlocked { reason } => {
                Some(reason)
            }
            _ => None,
        } {
            self.nodes[n.index()].error = Some(reason.clone());
        }
        self.record(Some(n), event);
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
            if status == Status::Failed {
                r.failed_servers.insert(server.clone());
            }
            r.done_servers.insert(server.clone());
            if b == r.current && r.left[b as usize] == 0 {
                self.advance_rolling(op);
            }
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

    fn advance_rolling(&mut self, op: usize) {
        let Some(r) = self.rolling[op].as_mut() else { return };
        let failed_pct = if r.done_servers.is_empty() {
            0.0
        } else {
            100.0 * r.failed_servers.len() as f64 / r.done_servers.len() as f64
        };
        let halt = !r.failed_servers.is_empty() && failed_pct > r.threshold;
        r.current += 1;
        // A batch whose tasks all finished early (skipped: their server's
        // creation failed, a hard dependency did not succeed) will not
        // finish again to advance the batch; move past it now.
        while (r.current as usize) < r.left.len() && r.left[r.current as usize] == 0 {
            r.current += 1;
        }
        r.resume_at = Some(Instant::now() + r.pause);
        if halt && self.op_halted[op].is_none() {
            let reason = format!(
                "rolling update of {} halted: {:.0}% of servers failed, above the {}% threshold",
                self.plan.operations[op].id, failed_pct, r.threshold
            );
            self.op_halted[op] = Some(reason.clone());
            let on_failure = self.plan.operations[op].on_failure;
            if on_failure != OnFailure::Continue && self.halted.is_none() {
                self.halted = Some(reason.clone());
                if on_failure == OnFailure::Rollback && self.plan.workflow.rollback_strategy.enabled {
                    self.rollback_requested = Some(reason);
                }
            }
            let queued: Vec<usize> = self.ready[op].iter().map(|&(_, n)| n).collect();
            self.ready[op].clear();
            for n in queued {
                let reason = self.op_halted[op].clone().unwrap_or_default();
                self.finish(NodeIndex::new(n), Status::Skipped, Event::TaskSkipped { reason });
            }
        }
    }

    fn outcome_of(&self, op: usize) -> OpOutcome {
        let plan_op = &self.plan.operations[op];
        let states: Vec<Status> = plan_op.tasks.iter().map(|t| self.nodes[t.index()].status).collect();
        if states.iter().all(|s| matches!(s, Status::Skipped | Status::Cancelled)) {
            return OpOutcome::Skipped;
        }
        let failed = states.contains(&Status::Failed) || self.op_halted[op].is_some();
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
            self.finish(n, Status::Cancelled, Event::TaskCancelled { reason });
            return;
        }
        if let Node::Gate(g) = &self.plan.graph[n] {
            let kind = g.kind.clone();
            if let Some(reason) = self.nodes[n.index()].doomed.clone() {
                self.finish(n, Status::Skipped, Event::GateBlocked { reason });
                return;
            }
            match kind {
                GateKind::Dependency {
                    wait_condition: Some(w),
                    ..
                } => {
                    // Polling is not a task: it takes no slot of
                    // max_parallel (the task it waits for may need one);
                    // the run is not finished while the gate is Running.
                    self.nodes[n.index()].status = Status::Running;
                    let exec = self.exec.clone();
                    let tx = self.tx.clone();
                    let token = CancellationToken::new();
                    self.tokens.insert(n.index(), token.clone());
                    tokio::spawn(async move {
                        let deadline = Instant::now() + Duration::from_secs(w.timeout);
                        let result = loop {
                            // Probed every interval, and a last time at the
                            // deadline: the condition gets its whole timeout.
                            let pause = match exec.probe(&w, token.clone()).await {
                                Ok(()) => break Ok(()),
                                Err(TaskFailure(e)) => {
                                    if token.is_cancelled() {
                                        break Err("cancelled".to_string());
                                    }
                                    let now = Instant::now();
                                    if now >= deadline {
                                        break Err(format!(
                                            "{WAIT_FAILED} `{}` did not hold within {}s (last: {e})",
                                            w.command, w.timeout
                                        ));
                                    }
                                    Duration::from_secs(w.interval).min(deadline - now)
                                }
                            };
                            tokio::select! {
                                () = tokio::time::sleep(pause) => {}
                                () = token.cancelled() => break Err("cancelled".to_string()),
                            }
                        };
                        let _ = tx.send(Msg::Gate { node: n, result });
                    });
                }
                _ => self.finish(n, Status::Succeeded, Event::GateOpened),
            }
            return;
        }
        let Some(op) = self.task(n).map(|t| t.operation) else {
            return;
        };
        if let Some(reason) = self.nodes[n.index()].doomed.clone() {
            self.finish(n, Status::Skipped, Event::TaskSkipped { reason });
            return;
        }
        if let Err(reason) = self.verdict_for(op) {
            self.finish(n, Status::Skipped, Event::TaskSkipped { reason });
            return;
        }
        if let Some(reason) = self.op_halted[op].clone() {
            self.finish(n, Status::Skipped, Event::TaskSkipped { reason });
            return;
        }
        if let Some(h) = &self.halted
            && self.plan.operations[op].condition == Condition::OnSuccess
        {
            let reason = format!("run halted: {h}");
            self.finish(n, Status::Skipped, Event::TaskSkipped { reason });
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
        self.nodes[n.index()].status = Status::Ready;
        self.ready[op].insert((batch, n.index()));
    }

    /// Start what the limits allow.
    fn dispatch(&mut self) {
        if self.paused || self.stopping.is_some() {
            return;
        }
        let now = Instant::now();
        let global = self.settings.max_parallel as usize;
        for op in 0..self.ready.len() {
            let limit = self.plan.operations[op].max_parallel.map_or(usize::MAX, |m| m as usize);
            let condition = self.plan.operations[op].condition;
            let mut deferred = Vec::new();
            while let Some(&(batch, n)) = self.ready[op].first() {
                if self.running >= global {
                    break;
                }
                let node = NodeIndex::new(n);
                if let Some(h) = self.halted.clone()
                    && condition == Condition::OnSuccess
                {
                    self.ready[op].remove(&(batch, n));
                    self.finish(
                        node,
                        Status::Skipped,
                        Event::TaskSkipped {
                            reason: format!("run halted: {h}"),
                        },
                    );
                    continue;
                }
                if self.running_by_op[op] >= limit {
                    break;
                }
                if let Some(r) = &self.rolling[op]
                    && (batch > r.current || r.resume_at.is_some_and(|t| t > now))
                {
                    break;
                }
                if let Some(p) = self.task(node).and_then(|t| t.provider.clone()) {
                    let limits = self.plan.provider_limits.get(&p).cloned();
                    if let Some(l) = limits {
                        let in_flight = self.running_by_provider.get(&p).copied().unwrap_or(0);
                        if in_flight >= l.batch_size as usize {
                            // Another provider's tasks of this operation may
                            // still go; look at them after this one.
                            self.ready[op].remove(&(batch, n));
                            deferred.push((batch, n));
                            continue;
                        }
                        let bucket = self
                            .buckets
                            .entry(p.clone())
                            .or_insert_with(|| Bucket::new(l.api_rate_limit, now));
                        if !bucket.take(now) {
                            let at = bucket.next();
                            self.bucket_wake = Some(self.bucket_wake.map_or(at, |w| w.min(at)));
                            self.ready[op].remove(&(batch, n));
                            deferred.push((batch, n));
                            continue;
                        }
                    }
                    *self.running_by_provider.entry(p).or_insert(0) += 1;
                }
                self.ready[op].remove(&(batch, n));
                self.start(node);
            }
            self.ready[op].extend(deferred);
        }
    }

    fn start(&mut self, n: NodeIndex) {
        let Some(op) = self.task(n).map(|t| t.operation) else {
            return;
        };
        let key = crate::runner::Runner::idempotency_key(&self.run_id, self.plan.graph[n].id());
        let rt = &mut self.nodes[n.index()];
        rt.attempt += 1;
        rt.status = Status::Running;
        rt.started = Some(Instant::now());
        let attempt = rt.attempt;
        self.running += 1;
        self.running_by_op[op] += 1;
        self.record(
            Some(n),
            Event::TaskStarted {
                attempt,
                idempotency_key: key,
            },
        );
        self.tokens.insert(n.index(), CancellationToken::new());
        self.to_spawn.push((n.index(), attempt));
    }

    /// Journal the starts, then start the attempts.
    fn flush_and_spawn(&mut self) -> Result<(), SchedulerError> {
        let starting = std::mem::take(&mut self.to_spawn);
        self.flush()?;
        for (i, attempt) in starting {
            let n = NodeIndex::new(i);
            let Some(task) = self.task(n).cloned() else { continue };
            let token = self.tokens.get(&i).cloned().unwrap_or_default();
            let exec = self.exec.clone();
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let result = exec.run(&task, attempt, token).await;
                let _ = tx.send(Msg::Done {
                    node: n,
                    attempt,
                    result,
                });
            });
        }
        Ok(())
    }

    /// Undo succeeded tasks in reverse dependency order. `by_hand`: undo
    /// everything not undone yet; otherwise honour the safe point and
    /// preserve_successful. Returns whether every compensation succeeded.
    pub async fn rollback(&mut self, reason: &str, by_hand: bool) -> Result<bool, SchedulerError> {
        self.record(
            None,
            Event::RollbackStarted {
                reason: reason.to_string(),
            },
        );
        self.flush()?;
        let rb = self.plan.workflow.rollback_strategy.clone();
        let mut order = self.plan.topological_order();
        order.reverse();
        let mut complete = true;
        for n in order {
            let Some(task) = self.task(n).cloned() else { continue };
            let rt = &self.nodes[n.index()];
            if rt.status != Status::Succeeded || rt.undone {
                continue;
            }
            let op = &self.plan.operations[task.operation];
            if !by_hand {
                if self.safe_point.contains(&op.id) {
                    continue;
                }
                if rb.preserve_successful
                    && op
                        .tasks
                        .iter()
                        .all(|t| self.nodes[t.index()].status == Status::Succeeded)
                {
                    continue;
                }
            }
            let started = std::time::Instant::now();
            let undo = self.exec.undo(&task, CancellationToken::new()).await;
            match undo {
                Undo::Nothing => continue,
                Undo::Done => {
                    self.record(
                        Some(n),
                        Event::UndoStarted {
                            action: undo_action(&task),
                        },
                    );
                    self.record(
                        Some(n),
                        Event::UndoSucceeded {
                            duration_ms: started.elapsed().as_millis() as u64,
                        },
                    );
                    self.nodes[n.index()].undone = true;
                }
                Undo::Failed(error) => {
                    complete = false;
                    self.record(
                        Some(n),
                        Event::UndoStarted {
                            action: undo_action(&task),
                        },
                    );
                    self.record(Some(n), Event::UndoFailed { error });
                }
                Undo::Impossible(reason) => {
                    self.record(Some(n), Event::NotUndoable { reason });
                    self.nodes[n.index()].undone = true;
                }
            }
            self.flush()?;
        }
        self.record(None, Event::RollbackFinished { complete });
        self.flush()?;
        Ok(complete)
    }
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

fn undo_action(task: &Task) -> String {
    use drover_core::plan::Action;
    match task.action {
        Action::Install => "remove".into(),
        Action::Update => "rollback".into(),
        Action::CreateServer => "delete server".into(),
        Action::CreateNetwork => "delete network".into(),
        other => format!("undo {other}"),
    }
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

/// The state of every node of `plan` after `entries`, as the journal tells
/// it: what `drover batch status` and the API show, and where a resume
/// starts from.
pub fn nodes_from_journal(plan: &Plan, entries: &[drover_state::Entry]) -> Vec<NodeRt> {
    let mut nodes = vec![NodeRt::default(); plan.graph.node_count()];
    replay_into(plan, &mut nodes, entries);
    nodes
}

/// Apply `entries` to `nodes`; returns the last safe point recorded, if any.
fn replay_into(plan: &Plan, nodes: &mut [NodeRt], entries: &[drover_state::Entry]) -> Option<Vec<String>> {
    let mut safe_point = None;
    let index: HashMap<&str, NodeIndex> = plan.graph.node_indices().map(|n| (plan.graph[n].id(), n)).collect();
    for e in entries {
        let Some(n) = e.node.as_deref().and_then(|id| index.get(id).copied()) else {
            if let Event::Checkpoint { operations_completed } = &e.event {
                safe_point = Some(operations_completed.clone());
            }
            continue;
        };
        let rt = &mut nodes[n.index()];
        match &e.event {
            Event::TaskStarted { attempt, .. } => {
                rt.status = Status::Running;
                rt.attempt = *attempt;
                rt.interrupted = false;
            }
            Event::TaskSucceeded { duration_ms, .. } => {
                rt.status = Status::Succeeded;
                rt.duration_ms += duration_ms;
            }
            Event::TaskFailed {
                duration_ms,
                error,
                will_retry,
                ..
            } => {
                rt.status = if *will_retry { Status::Waiting } else { Status::Failed };
                rt.duration_ms += duration_ms;
                rt.error = Some(error.clone());
            }
            Event::TaskRetrying { .. } => rt.status = Status::Waiting,
            Event::TaskSkipped { reason } => {
                rt.status = Status::Skipped;
                rt.error = Some(reason.clone());
            }
            Event::TaskCancelled { reason } => {
                rt.interrupted = rt.status == Status::Running;
                rt.status = Status::Cancelled;
                rt.error = Some(reason.clone());
            }
            Event::GateOpened => rt.status = Status::Succeeded,
            Event::GateBlocked { reason } => {
                rt.status = Status::Skipped;
                rt.error = Some(reason.clone());
            }
            Event::UndoSucceeded { .. } | Event::NotUndoable { .. } => rt.undone = true,
            _ => {}
        }
    }
    safe_point
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

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2.0, t0);
        assert!(b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert_eq!(b.next(), t0 + Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(500)));
    }
}
