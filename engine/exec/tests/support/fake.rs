//! A fake [`TaskExecutor`] for the scheduler tests: scripted outcomes per
//! task, everything recorded in virtual time (`tokio::time::Instant`, so a
//! test on a paused clock asserts exact instants), and a [`Harness`] that
//! drives the real run API (`drover_exec::run::{start, resume, retry,
//! rollback}`) with it and checks, at the end of every run, that the
//! store's status is the fold of the journal.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use drover_core::FailureKind;
use drover_core::model::WaitCondition;
use drover_core::plan::{Action, Task};
use drover_exec::report::Summary;
use drover_exec::runner::{Compensation, Found, TaskExecutor, TaskFailure, Undo};
use drover_exec::{Control, RunHandle};
use drover_state::{Entry, Event, RunStatus, Store};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Fixture;

/// Whole seconds.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Milliseconds.
pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// What one attempt of a task does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Succeeds after this long.
    Ok(Duration),
    /// Fails with this kind after this long.
    Fail(FailureKind, Duration),
    /// Runs until its cancellation token is cancelled.
    Hang,
    /// Panics after this long.
    Panic(Duration),
}

impl Step {
    pub fn ok(d: Duration) -> Step {
        Step::Ok(d)
    }

    pub fn transient(d: Duration) -> Step {
        Step::Fail(FailureKind::Transient, d)
    }

    pub fn permanent(d: Duration) -> Step {
        Step::Fail(FailureKind::Permanent, d)
    }

    /// `n` transient failures of `d` each, then success after `d`.
    pub fn fail_then_ok(n: usize, d: Duration) -> Vec<Step> {
        let mut v = vec![Step::transient(d); n];
        v.push(Step::Ok(d));
        v
    }
}

/// What a compensation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UndoStep {
    /// Undone after this long.
    Done(Duration),
    /// Fails after this long.
    Fail(Duration),
    /// Runs until cancelled.
    Hang,
}

/// When a wait condition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Never.
    Never,
    /// From the n-th probe on (1-based).
    FromCall(usize),
    /// Once this task has succeeded (an attempt of it ended well).
    Succeeded(String),
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(FailureKind),
    /// Its token was cancelled.
    Cancelled,
    Panicked,
    /// Still running.
    Running,
}

/// One attempt as the fake saw it; instants are since the fake was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub task: String,
    pub attempt: u32,
    pub start: Duration,
    pub end: Option<Duration>,
    pub outcome: Outcome,
}

/// How a compensation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndoOutcome {
    Done,
    Failed,
    Cancelled,
    Running,
}

/// One compensation as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoCall {
    pub task: String,
    pub start: Duration,
    pub end: Option<Duration>,
    pub outcome: UndoOutcome,
    /// The journal showed `undo_started` for the task (as its latest undo
    /// event) when the compensation was called.
    pub journaled_first: bool,
}

#[derive(Debug, Default)]
struct State {
    scripts: HashMap<String, VecDeque<Step>>,
    default: Option<Step>,
    compensations: HashMap<String, Compensation>,
    undo_scripts: HashMap<String, VecDeque<UndoStep>>,
    undo_default: Option<UndoStep>,
    probes: HashMap<String, Probe>,
    probe_calls: HashMap<String, usize>,
    attempts: Vec<Attempt>,
    undos: Vec<UndoCall>,
    probes_seen: Vec<(String, Duration)>,
    running: usize,
    max_running: usize,
    undoing: usize,
    max_undoing: usize,
    watch: Option<(Arc<Store>, String)>,
}

/// The fake executor.
#[derive(Debug)]
pub struct Fake {
    t0: Instant,
    state: Mutex<State>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake::new()
    }
}

impl Fake {
    /// Every attempt succeeds after 1 s and every compensation after 1 s
    /// unless told otherwise; instants count from now.
    pub fn new() -> Fake {
        Fake {
            t0: Instant::now(),
            state: Mutex::new(State {
                default: Some(Step::Ok(secs(1))),
                undo_default: Some(UndoStep::Done(secs(1))),
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Virtual time since the fake was made.
    pub fn now(&self) -> Duration {
        Instant::now() - self.t0
    }

    /// The instant `d` after the fake was made (to sleep until).
    pub fn at(&self, d: Duration) -> Instant {
        self.t0 + d
    }

    /// What every task without a script does.
    pub fn default_step(&self, step: Step) -> &Self {
        self.lock().default = Some(step);
        self
    }

    /// What the attempts of `task` do, one step per call in order; the
    /// last step repeats.
    pub fn script(&self, task: &str, steps: impl IntoIterator<Item = Step>) -> &Self {
        self.lock()
            .scripts
            .insert(task.to_string(), steps.into_iter().collect());
        self
    }

    /// What undoing `task` involves (default: by its action).
    pub fn compensation(&self, task: &str, c: Compensation) -> &Self {
        self.lock().compensations.insert(task.to_string(), c);
        self
    }

    /// What the compensations of `task` do, one step per call; the last
    /// repeats.
    pub fn undo_script(&self, task: &str, steps: impl IntoIterator<Item = UndoStep>) -> &Self {
        self.lock()
            .undo_scripts
            .insert(task.to_string(), steps.into_iter().collect());
        self
    }

    /// What every compensation without a script does.
    pub fn undo_default(&self, step: UndoStep) -> &Self {
        self.lock().undo_default = Some(step);
        self
    }

    /// When the wait condition running `command` holds.
    pub fn probe(&self, command: &str, p: Probe) -> &Self {
        self.lock().probes.insert(command.to_string(), p);
        self
    }

    /// Read this run's journal from inside compensations.
    pub fn watch(&self, store: Arc<Store>, run_id: &str) {
        self.lock().watch = Some((store, run_id.to_string()));
    }

    /// Every attempt so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.lock().attempts.clone()
    }

    /// The attempts of `task`.
    pub fn attempts_of(&self, task: &str) -> Vec<Attempt> {
        self.attempts().into_iter().filter(|a| a.task == task).collect()
    }

    /// (start, end) in ms of each attempt of `task`.
    pub fn spans(&self, task: &str) -> Vec<(u64, u64)> {
        self.attempts_of(task)
            .iter()
            .map(|a| (ms_of(a.start), a.end.map_or(u64::MAX, ms_of)))
            .collect()
    }

    /// The start (ms) of the only attempt of `task`.
    pub fn start_of(&self, task: &str) -> u64 {
        let a = self.attempts_of(task);
        assert_eq!(a.len(), 1, "{task}: {a:?}");
        ms_of(a[0].start)
    }

    /// Every compensation so far.
    pub fn undos(&self) -> Vec<UndoCall> {
        self.lock().undos.clone()
    }

    /// Tasks whose compensation was called, in call order.
    pub fn undone(&self) -> Vec<String> {
        self.undos().into_iter().map(|u| u.task).collect()
    }

    /// The instants (ms) `command` was probed at.
    pub fn probes_of(&self, command: &str) -> Vec<u64> {
        self.lock()
            .probes_seen
            .iter()
            .filter(|(c, _)| c == command)
            .map(|(_, t)| ms_of(*t))
            .collect()
    }

    /// The most attempts running at once.
    pub fn max_running(&self) -> usize {
        self.lock().max_running
    }

    /// The most compensations running at once.
    pub fn max_undoing(&self) -> usize {
        self.lock().max_undoing
    }

    fn next_step(&self, task: &Task) -> Step {
        let mut s = self.lock();
        let default = s.default.clone().unwrap_or(Step::Ok(Duration::ZERO));
        match s.scripts.get_mut(&task.id) {
            Some(q) if q.len() > 1 => q.pop_front().unwrap_or(default),
            Some(q) => q.front().cloned().unwrap_or(default),
            None => default,
        }
    }

    fn next_undo(&self, task: &Task) -> UndoStep {
        let mut s = self.lock();
        let default = s.undo_default.clone().unwrap_or(UndoStep::Done(Duration::ZERO));
        match s.undo_scripts.get_mut(&task.id) {
            Some(q) if q.len() > 1 => q.pop_front().unwrap_or(default),
            Some(q) => q.front().cloned().unwrap_or(default),
            None => default,
        }
    }

    fn end_attempt(&self, i: usize, outcome: Outcome) {
        let now = self.now();
        let mut s = self.lock();
        s.running -= 1;
        s.attempts[i].end = Some(now);
        s.attempts[i].outcome = outcome;
    }

    fn end_undo(&self, i: usize, outcome: UndoOutcome) {
        let now = self.now();
        let mut s = self.lock();
        s.undoing -= 1;
        s.undos[i].end = Some(now);
        s.undos[i].outcome = outcome;
    }

    /// Whether the latest undo event of `task` in the watched journal is
    /// `undo_started`.
    fn undo_journaled(&self, task: &str) -> bool {
        let watch = self.lock().watch.clone();
        let Some((store, run_id)) = watch else {
            return false;
        };
        let journal = store.journal(&run_id).unwrap_or_default();
        let last = journal.iter().rev().find(|e| {
            e.node.as_deref() == Some(task)
                && matches!(
                    e.event,
                    Event::UndoStarted { .. }
                        | Event::UndoSucceeded { .. }
                        | Event::UndoFailed { .. }
                        | Event::NotUndoable { .. }
                )
        });
        matches!(last.map(|e| &e.event), Some(Event::UndoStarted { .. }))
    }
}

fn ms_of(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Sleep `d`, or until `cancel`; false when cancelled.
async fn work(d: Duration, cancel: &CancellationToken) -> bool {
    if d.is_zero() {
        tokio::task::yield_now().await;
        return !cancel.is_cancelled();
    }
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = cancel.cancelled() => false,
    }
}

#[async_trait::async_trait]
impl TaskExecutor for Fake {
    async fn run(&self, task: &Task, attempt: u32, cancel: CancellationToken) -> Result<Found, TaskFailure> {
        let step = self.next_step(task);
        let i = {
            let now = self.now();
            let mut s = self.lock();
            s.running += 1;
            s.max_running = s.max_running.max(s.running);
            s.attempts.push(Attempt {
                task: task.id.clone(),
                attempt,
                start: now,
                end: None,
                outcome: Outcome::Running,
            });
            s.attempts.len() - 1
        };
        let (d, result) = match step {
            Step::Ok(d) => (d, Ok(())),
            Step::Fail(kind, d) => (d, Err(kind)),
            Step::Panic(d) => (d, Err(FailureKind::Cancelled)),
            Step::Hang => (Duration::MAX, Ok(())),
        };
        let finished = if d == Duration::MAX {
            cancel.cancelled().await;
            false
        } else {
            work(d, &cancel).await
        };
        if !finished {
            self.end_attempt(i, Outcome::Cancelled);
            return Err(TaskFailure::cancelled(format!("{} cancelled", task.id)));
        }
        if matches!(step, Step::Panic(_)) {
            self.end_attempt(i, Outcome::Panicked);
            panic!("the fake executor panics in {}", task.id);
        }
        match result {
            Ok(()) => {
                self.end_attempt(i, Outcome::Succeeded);
                Ok(Found::new())
            }
            Err(kind) => {
                self.end_attempt(i, Outcome::Failed(kind));
                Err(TaskFailure {
                    kind,
                    message: format!("{} failed ({kind}) in attempt {attempt}", task.id),
                    found: Found::new(),
                })
            }
        }
    }

    fn compensation(&self, task: &Task) -> Compensation {
        if let Some(c) = self.lock().compensations.get(&task.id) {
            return c.clone();
        }
        match task.action {
            Action::CreateServer | Action::CreateNetwork => Compensation::Run("delete server".into()),
            Action::Install => Compensation::Run("remove".into()),
            Action::Update => Compensation::Run("rollback".into()),
            Action::Check | Action::CheckServer => Compensation::Nothing,
            Action::Remove | Action::DeleteServer | Action::UpdateServer | Action::Exec => {
                Compensation::Impossible(format!("{} cannot be undone", task.action))
            }
        }
    }

    async fn undo(&self, task: &Task, cancel: CancellationToken) -> Undo {
        let journaled_first = self.undo_journaled(&task.id);
        let step = self.next_undo(task);
        let i = {
            let now = self.now();
            let mut s = self.lock();
            s.undoing += 1;
            s.max_undoing = s.max_undoing.max(s.undoing);
            s.undos.push(UndoCall {
                task: task.id.clone(),
                start: now,
                end: None,
                outcome: UndoOutcome::Running,
                journaled_first,
            });
            s.undos.len() - 1
        };
        let finished = match step {
            UndoStep::Done(d) | UndoStep::Fail(d) => work(d, &cancel).await,
            UndoStep::Hang => {
                cancel.cancelled().await;
                false
            }
        };
        if !finished {
            self.end_undo(i, UndoOutcome::Cancelled);
            return Undo::Failed(TaskFailure::cancelled(format!("undo of {} cancelled", task.id)));
        }
        match step {
            UndoStep::Fail(_) => {
                self.end_undo(i, UndoOutcome::Failed);
                Undo::Failed(TaskFailure::transient(format!("undo of {} failed", task.id)))
            }
            _ => {
                self.end_undo(i, UndoOutcome::Done);
                Undo::Done
            }
        }
    }

    async fn probe(&self, condition: &WaitCondition, _cancel: CancellationToken) -> Result<(), TaskFailure> {
        let now = self.now();
        let mut s = self.lock();
        s.probes_seen.push((condition.command.clone(), now));
        let n = {
            let c = s.probe_calls.entry(condition.command.clone()).or_insert(0);
            *c += 1;
            *c
        };
        let holds = match s.probes.get(&condition.command) {
            None | Some(Probe::Never) => false,
            Some(Probe::FromCall(k)) => n >= *k,
            Some(Probe::Succeeded(task)) => s
                .attempts
                .iter()
                .any(|a| &a.task == task && a.outcome == Outcome::Succeeded),
        };
        if holds {
            Ok(())
        } else {
            Err(TaskFailure::transient(format!(
                "{} does not hold yet",
                condition.command
            )))
        }
    }
}

/// A test: the fixture (store, catalog, inputs) and the fake driving it.
pub struct Harness {
    pub f: Fixture,
    pub fake: Arc<Fake>,
    /// Options of every run (the fixture's: seed 42).
    pub opts: drover_exec::Options,
}

/// How long a run may take, in virtual time, before the test calls it
/// hung: a run that waits forever is a failure, not a stuck test.
const HUNG: Duration = Duration::from_secs(10 * 24 * 3600);

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Harness {
    pub fn new() -> Harness {
        let f = Fixture::new();
        let opts = f.options();
        Harness {
            f,
            fake: Arc::new(Fake::new()),
            opts,
        }
    }

    fn exec(&self) -> Option<Arc<dyn TaskExecutor>> {
        Some(self.fake.clone() as Arc<dyn TaskExecutor>)
    }

    /// Start a run of `wf` (JSON, as support::Fixture::inputs takes it).
    pub fn start(&self, wf: Value) -> RunHandle {
        let h = drover_exec::run::start(self.f.store.clone(), self.f.inputs(wf), &self.opts, self.exec())
            .expect("run starts");
        self.fake.watch(self.f.store.clone(), &h.run_id);
        h
    }

    pub fn resume(&self, run_id: &str) -> RunHandle {
        drover_exec::run::resume(self.f.store.clone(), run_id, &self.opts, self.exec()).expect("run resumes")
    }

    pub fn retry(&self, run_id: &str, operation: Option<&str>) -> RunHandle {
        drover_exec::run::retry(self.f.store.clone(), run_id, operation, &self.opts, self.exec()).expect("retry starts")
    }

    pub fn rollback(&self, run_id: &str) -> RunHandle {
        drover_exec::run::rollback(self.f.store.clone(), run_id, &self.opts, self.exec()).expect("rollback starts")
    }

    /// Start `wf` and wait for its end.
    pub async fn run(&self, wf: Value) -> Summary {
        let h = self.start(wf);
        self.finish(h).await
    }

    /// Wait for the end of a run (failing, not hanging, if it never ends)
    /// and check what every run must leave: the journal ends with
    /// run_finished and the status of the summary, and the store's status
    /// is the fold of the journal.
    pub async fn finish(&self, h: RunHandle) -> Summary {
        let id = h.run_id.clone();
        let s = tokio::time::timeout(HUNG, h.wait())
            .await
            .unwrap_or_else(|_| panic!("run {id} never ended"))
            .expect("run finishes");
        let journal = self.journal(&id);
        match journal.last().map(|e| &e.event) {
            Some(Event::RunFinished { status, .. }) => assert_eq!(*status, s.status, "last entry of {id}"),
            other => panic!("the journal of {id} ends with {other:?}"),
        }
        let folded = journal.iter().fold(RunStatus::Queued, |st, e| st.after(&e.event));
        let stored = self.f.store.run(&id).expect("run record").status;
        assert_eq!(stored, folded, "runs.status of {id} is the fold of its journal");
        assert_eq!(stored, s.status);
        s
    }

    pub fn journal(&self, run_id: &str) -> Vec<Entry> {
        self.f.store.journal(run_id).expect("journal")
    }

    /// The stored status of a run now.
    pub fn status(&self, run_id: &str) -> RunStatus {
        self.f.store.run(run_id).expect("run record").status
    }

    /// Sleep until `d` after the fake was made (virtual time).
    pub async fn until(&self, d: Duration) {
        tokio::time::sleep_until(self.fake.at(d)).await;
    }

    /// At virtual instant `d`, send `c`.
    pub async fn control_at(&self, h: &RunHandle, d: Duration, c: Control) {
        self.until(d).await;
        h.control(c);
    }
}

/// The journal events about `node`, by their serde tag.
pub fn events_of<'a>(journal: &'a [Entry], node: &str, kind: &str) -> Vec<&'a Entry> {
    journal.iter().filter(|e| super::is_event(e, node, kind)).collect()
}

/// The seq of the first event `kind` about `node`.
pub fn seq_of(journal: &[Entry], node: &str, kind: &str) -> i64 {
    journal
        .iter()
        .find(|e| super::is_event(e, node, kind))
        .map(|e| e.seq)
        .unwrap_or_else(|| panic!("no {kind} of {node} in the journal"))
}

/// The delays (ms) the journal announced for `node`'s retries.
pub fn retry_delays(journal: &[Entry], node: &str) -> Vec<u64> {
    journal
        .iter()
        .filter(|e| e.node.as_deref() == Some(node))
        .filter_map(|e| match e.event {
            Event::TaskRetrying { delay_ms, .. } => Some(delay_ms),
            _ => None,
        })
        .collect()
}

/// The maximum number of `spans` (start, end) overlapping; one ending
/// when another starts does not overlap it.
pub fn overlap(spans: &[(u64, u64)]) -> usize {
    let mut points: Vec<(u64, i32)> = Vec::new();
    for &(s, e) in spans {
        points.push((s, 1));
        points.push((e, -1));
    }
    points.sort();
    let (mut cur, mut best) = (0i32, 0i32);
    for (_, d) in points {
        cur += d;
        best = best.max(cur);
    }
    best as usize
}
