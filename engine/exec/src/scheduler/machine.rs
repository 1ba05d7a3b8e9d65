//! The state machine of one node (task or gate): every status change of
//! a node happens here, in [`apply`] for journaled transitions (the live
//! loop and replay call the same function with the same events) and in
//! the few named functions below for the scheduler's own bookkeeping
//! (queued for a slot, reset for a resume or a retry).
//!
//! Task lifecycle: pending → ready → running → succeeded | failed |
//! waiting (retry delay) → ready …; pending → skipped | cancelled.
//! Gates: pending → (running, while a wait condition is polled) →
//! succeeded (open) | skipped (blocked). Undo: none → started → undone |
//! failed; none → impossible.

use std::collections::HashMap;

use drover_core::FailureKind;
use drover_core::Plan;
use drover_state::{Entry, Event};
use petgraph::graph::NodeIndex;
use tokio::time::Instant;

/// A node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for what it depends on.
    Pending,
    /// Runnable, waiting for a free slot.
    Ready,
    /// An attempt is running (a gate: its wait condition is polled).
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

/// What rollback did with a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UndoState {
    /// Not undone (nothing asked for it yet).
    #[default]
    None,
    /// Its compensation was started and has not reported (a crash leaves
    /// it so; the next rollback runs it again).
    Started,
    /// Undone.
    Undone,
    /// The compensation failed; why.
    Failed(String),
    /// It cannot be undone; reported, not hidden.
    Impossible,
}

impl UndoState {
    /// Whether rollback has nothing left to do for this node.
    pub fn is_settled(&self) -> bool {
        matches!(self, UndoState::Undone | UndoState::Impossible)
    }
}

/// A node's state and runtime bookkeeping.
#[derive(Debug, Clone)]
pub struct NodeRt {
    /// Its state.
    pub status: Status,
    /// The last attempt started (0: none yet).
    pub attempt: u32,
    /// Attempts made before the current round (a `retry` starts a round).
    pub round_base: u32,
    /// Total time spent in attempts, ms.
    pub duration_ms: u64,
    /// The last failure, or why it was skipped or cancelled.
    pub error: Option<String>,
    /// The kind of the last failure.
    pub failure: Option<FailureKind>,
    /// What rollback did with it.
    pub undo: UndoState,
    /// Its last attempt was stopped mid-run (cancel, abort): a resume runs
    /// that attempt again rather than counting it.
    interrupted: bool,
    /// Predecessors not yet finished (live loop only).
    pub(super) remaining: usize,
    /// Why it must be skipped when it becomes ready (live loop only).
    pub(super) doomed: Option<String>,
    /// When the next attempt may start (live loop only).
    pub(super) retry_at: Option<Instant>,
    /// When the running attempt started (live loop only).
    pub(super) started: Option<Instant>,
}

impl Default for NodeRt {
    fn default() -> Self {
        NodeRt {
            status: Status::Pending,
            attempt: 0,
            round_base: 0,
            duration_ms: 0,
            error: None,
            failure: None,
            undo: UndoState::None,
            interrupted: false,
            remaining: 0,
            doomed: None,
            retry_at: None,
            started: None,
        }
    }
}

/// The transition function: `event` happened to the node.
pub fn apply(rt: &mut NodeRt, event: &Event) {
    match event {
        Event::TaskStarted { attempt, .. } => {
            rt.status = Status::Running;
            rt.attempt = *attempt;
            rt.interrupted = false;
        }
        Event::TaskSucceeded { duration_ms, .. } => {
            rt.status = Status::Succeeded;
            rt.duration_ms += duration_ms;
            rt.error = None;
            rt.failure = None;
        }
        Event::TaskFailed {
            duration_ms,
            error,
            kind,
            will_retry,
            ..
        } => {
            rt.status = if *will_retry { Status::Waiting } else { Status::Failed };
            rt.duration_ms += duration_ms;
            rt.error = Some(error.clone());
            rt.failure = Some(*kind);
        }
        Event::TaskRetrying { .. } => rt.status = Status::Waiting,
        Event::TaskSkipped { reason } | Event::GateBlocked { reason } => {
            rt.status = Status::Skipped;
            rt.error = Some(reason.clone());
        }
        Event::TaskCancelled { reason } => {
            rt.interrupted = rt.status == Status::Running;
            rt.status = Status::Cancelled;
            rt.error = Some(reason.clone());
        }
        Event::GateWaiting => rt.status = Status::Running,
        Event::GateOpened => rt.status = Status::Succeeded,
        Event::UndoStarted { .. } => rt.undo = UndoState::Started,
        Event::UndoSucceeded { .. } => rt.undo = UndoState::Undone,
        Event::UndoFailed { error, .. } => rt.undo = UndoState::Failed(error.clone()),
        Event::NotUndoable { .. } => rt.undo = UndoState::Impossible,
        _ => {}
    }
}

/// Runnable now: waits for a slot.
pub(super) fn queue(rt: &mut NodeRt) {
    rt.status = Status::Ready;
}

/// Prepare a node of an interrupted run to continue: in-flight and
/// cancelled work runs again (an interrupted attempt with the same
/// number, so the same idempotency key); a retry delay starts over.
pub(super) fn for_resume(rt: &mut NodeRt) {
    match rt.status {
        Status::Running => {
            rt.attempt = rt.attempt.saturating_sub(1);
            rt.status = Status::Pending;
        }
        Status::Cancelled if rt.interrupted => {
            rt.attempt = rt.attempt.saturating_sub(1);
            rt.interrupted = false;
            rt.status = Status::Pending;
        }
        Status::Cancelled | Status::Ready => rt.status = Status::Pending,
        Status::Waiting => rt.retry_at = None,
        _ => {}
    }
}

/// Prepare a node that did not succeed for a `retry`: pending again, with
/// a fresh retry budget. Returns whether it was reset.
pub(super) fn for_retry(rt: &mut NodeRt) -> bool {
    if matches!(
        rt.status,
        Status::Failed | Status::Cancelled | Status::Skipped | Status::Running | Status::Waiting
    ) {
        rt.status = Status::Pending;
        rt.round_base = rt.attempt;
        rt.error = None;
        rt.failure = None;
        rt.retry_at = None;
        true
    } else {
        false
    }
}

/// A gate after work that runs again waits for it again.
pub(super) fn reopen(rt: &mut NodeRt) {
    rt.status = Status::Pending;
    rt.error = None;
}

/// A rollback in progress when the journal ends (a crash or an abort
/// during it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackInProgress {
    /// Why it started.
    pub reason: String,
    /// Asked for by an operator.
    pub by_hand: bool,
}

/// What a journal says beyond each node's state.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    /// The last safe point: operations completed at the last checkpoint.
    pub safe_point: Option<Vec<String>>,
    /// A rollback that started and did not finish.
    pub rollback: Option<RollbackInProgress>,
}

/// Apply `entries` to `nodes` with [`apply`], as the live loop did.
pub fn replay(plan: &Plan, nodes: &mut [NodeRt], entries: &[Entry]) -> Replayed {
    let mut out = Replayed::default();
    let index: HashMap<&str, NodeIndex> = plan.graph.node_indices().map(|n| (plan.graph[n].id(), n)).collect();
    for e in entries {
        match &e.event {
            Event::Checkpoint { operations_completed } => out.safe_point = Some(operations_completed.clone()),
            Event::RollbackStarted { reason, by_hand } => {
                out.rollback = Some(RollbackInProgress {
                    reason: reason.clone(),
                    by_hand: *by_hand,
                })
            }
            Event::RollbackFinished { .. } => out.rollback = None,
            _ => {}
        }
        if let Some(n) = e.node.as_deref().and_then(|id| index.get(id)) {
            apply(&mut nodes[n.index()], &e.event);
        }
    }
    out
}

/// The state of every node of `plan` after `entries`, as the journal tells
/// it: what `drover batch status` and the API show, and where a resume
/// starts from.
pub fn nodes_from_journal(plan: &Plan, entries: &[Entry]) -> Vec<NodeRt> {
    let mut nodes = vec![NodeRt::default(); plan.graph.node_count()];
    replay(plan, &mut nodes, entries);
    nodes
}
