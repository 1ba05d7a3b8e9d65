//! Rollback: undo what succeeded, in reverse dependency order, as a phase
//! of the same loop.
//!
//! The plan is walked backwards: a node's compensation may start once
//! every node that depends on it (its successors in the plan) is settled,
//! so independent compensations run in parallel, within the same limits
//! as forward work (global, per operation, per provider). A node with
//! nothing to undo settles as soon as its successors have; one whose
//! effect cannot be undone is reported (`not_undoable`) and settles.
//! `undo_started` is journaled before a compensation runs; a crash leaves
//! it started and the next rollback runs it again (same idempotency key).
//! A cancel stops dispatching and cancels what runs; an abort leaves the
//! rollback in progress, to be continued by a resume.
//!
//! What is undone: every task that succeeded and is not undone yet. By
//! hand, all of them; automatically, not the operations completed at the
//! last safe point (`checkpoint_interval`), nor, with
//! `preserve_successful`, operations that fully succeeded.

use std::collections::BTreeSet;

use drover_state::{Event, RunStatus};
use petgraph::Direction;
use petgraph::graph::NodeIndex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::Refusal;
use super::machine::UndoState;
use super::{Finished, Phase, Scheduler, Status, Work};
use crate::runner::{Compensation, TaskFailure, Undo};

/// The state of a rollback in progress.
#[derive(Debug)]
pub(super) struct RollbackRun {
    by_hand: bool,
    reason: String,
    /// Per node: successors not settled yet.
    waiting_for: Vec<usize>,
    /// Per node: whether it is to be undone.
    undo: Vec<bool>,
    /// Per node: settled (undone, nothing to undo, or reported).
    settled: Vec<bool>,
    /// Nodes not settled yet.
    left: usize,
    /// Compensations ready to start, in node order.
    ready: BTreeSet<usize>,
    /// Compensations that failed.
    failed: usize,
    /// Nodes reported as impossible to undo.
    impossible: usize,
    stopped: bool,
}

impl RollbackRun {
    pub(super) fn is_over(&self) -> bool {
        self.left == 0
    }

    pub(super) fn stop(&mut self) {
        self.stopped = true;
        self.ready.clear();
    }
}

impl Scheduler {
    /// Start rolling back (journaled first), automatically after a
    /// failure or by hand.
    pub(super) fn enter_rollback(&mut self, reason: String, by_hand: bool) {
        self.record(
            None,
            Event::RollbackStarted {
                reason: reason.clone(),
                by_hand,
            },
        );
        // The workflow's timeout bounds the work, not its undoing.
        self.deadline = None;
        let n = self.plan.graph.node_count();
        let rb = self.plan.workflow.rollback_strategy.clone();
        let mut undo = vec![false; n];
        for node in self.plan.graph.node_indices() {
            let Some(t) = self.task(node) else { continue };
            let rt = &self.nodes[node.index()];
            if rt.status != Status::Succeeded || rt.undo.is_settled() {
                continue;
            }
            let op = &self.plan.operations[t.operation];
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
            undo[node.index()] = true;
        }
        let waiting_for = self
            .plan
            .graph
            .node_indices()
            .map(|n| {
                let mut next: Vec<NodeIndex> = self.plan.graph.neighbors_directed(n, Direction::Outgoing).collect();
                next.sort();
                next.dedup();
                next.len()
            })
            .collect();
        self.phase = Phase::Rollback(RollbackRun {
            by_hand,
            reason,
            waiting_for,
            undo,
            settled: vec![false; n],
            left: n,
            ready: BTreeSet::new(),
            failed: 0,
            impossible: 0,
            stopped: false,
        });
        let leaves: Vec<NodeIndex> = self
            .plan
            .graph
            .node_indices()
            .filter(|&m| {
                self.plan
                    .graph
                    .neighbors_directed(m, Direction::Outgoing)
                    .next()
                    .is_none()
            })
            .collect();
        for leaf in leaves {
            self.undo_ready(leaf);
        }
    }

    fn rollback(&mut self) -> Option<&mut RollbackRun> {
        match &mut self.phase {
            Phase::Rollback(r) => Some(r),
            Phase::Forward => None,
        }
    }

    /// Every successor of `n` is settled: undo it, or settle it at once.
    fn undo_ready(&mut self, n: NodeIndex) {
        let to_undo = self.rollback().is_some_and(|r| r.undo[n.index()]);
        if !to_undo {
            self.settle(n);
            return;
        }
        let compensation = match self.task(n) {
            Some(t) => self.exec.compensation(t),
            None => Compensation::Nothing,
        };
        match compensation {
            Compensation::Nothing => self.settle(n),
            Compensation::Impossible(reason) => {
                self.record(Some(n), Event::NotUndoable { reason });
                if let Some(r) = self.rollback() {
                    r.impossible += 1;
                }
                self.settle(n);
            }
            Compensation::Run(_) => {
                if let Some(r) = self.rollback() {
                    r.ready.insert(n.index());
                }
            }
        }
    }

    /// `n` is settled: its predecessors whose successors are now all
    /// settled become ready. A worklist, not recursion: a long chain of
    /// nodes with nothing to undo settles in one go.
    fn settle(&mut self, n: NodeIndex) {
        let mut work = vec![n];
        while let Some(n) = work.pop() {
            let Some(r) = self.rollback() else { return };
            if r.settled[n.index()] {
                continue;
            }
            r.settled[n.index()] = true;
            r.left -= 1;
            let mut before: Vec<NodeIndex> = self.plan.graph.neighbors_directed(n, Direction::Incoming).collect();
            before.sort();
            before.dedup();
            for p in before {
                let Some(r) = self.rollback() else { return };
                r.waiting_for[p.index()] = r.waiting_for[p.index()].saturating_sub(1);
                if r.waiting_for[p.index()] == 0 {
                    let to_undo = r.undo[p.index()];
                    if to_undo {
                        self.undo_ready(p);
                    } else {
                        work.push(p);
                    }
                }
            }
        }
    }

    /// Start the compensations the limits allow, journaling each first.
    pub(super) fn dispatch_undo(&mut self) {
        let now = Instant::now();
        let ready: Vec<usize> = match &self.phase {
            Phase::Rollback(r) if !r.stopped => r.ready.iter().copied().collect(),
            _ => return,
        };
        for i in ready {
            let n = NodeIndex::new(i);
            let need = self.need_of(n);
            match self.adm.admit(&need, now) {
                Ok(()) => {
                    if let Some(r) = self.rollback() {
                        r.ready.remove(&i);
                    }
                    let action = match self.task(n).map(|t| self.exec.compensation(t)) {
                        Some(Compensation::Run(action)) => action,
                        _ => "undo".into(),
                    };
                    self.record(Some(n), Event::UndoStarted { action });
                    self.nodes[i].started = Some(Instant::now());
                    self.held.insert(i, need);
                    self.tokens.insert(i, CancellationToken::new());
                    self.to_spawn.push(Work::Undo { node: i });
                }
                Err(Refusal::Full) => break,
                Err(Refusal::RateLimited(at)) => {
                    self.rate_wake = Some(self.rate_wake.map_or(at, |w| w.min(at)));
                }
                Err(Refusal::OperationFull | Refusal::Busy) => {}
            }
        }
    }

    /// A compensation ended.
    pub(super) fn on_undo_done(&mut self, n: NodeIndex, undo: Undo) {
        self.tokens.remove(&n.index());
        if let Some(need) = self.held.remove(&n.index()) {
            self.adm.release(&need);
        }
        let duration_ms = self.nodes[n.index()]
            .started
            .take()
            .map_or(0, |s| s.elapsed().as_millis() as u64);
        match undo {
            Undo::Nothing | Undo::Done => self.record(Some(n), Event::UndoSucceeded { duration_ms }),
            Undo::Failed(TaskFailure { kind, message, .. }) => {
                self.record(Some(n), Event::UndoFailed { error: message, kind });
                if let Some(r) = self.rollback() {
                    r.failed += 1;
                }
            }
            Undo::Impossible(reason) => {
                self.record(Some(n), Event::NotUndoable { reason });
                if let Some(r) = self.rollback() {
                    r.impossible += 1;
                }
            }
        }
        // A cancelled rollback leaves the rest as it is: the next one
        // takes it up.
        if self.stopping.is_none() {
            self.settle(n);
        }
    }

    /// How the rollback ended, journaled (an aborted one is left in
    /// progress, for a resume to continue).
    pub(super) fn rollback_outcome(&mut self) -> Finished {
        let Phase::Rollback(r) = &self.phase else {
            return self.verdict();
        };
        let complete = r.left == 0 && r.failed == 0;
        let (by_hand, reason) = (r.by_hand, r.reason.clone());
        let unfinished: Vec<String> = self
            .plan
            .graph
            .node_indices()
            .filter(|n| matches!(self.nodes[n.index()].undo, UndoState::Failed(_) | UndoState::Started))
            .map(|n| self.id(n))
            .take(5)
            .collect();
        if let Some((status, why)) = self.stopping.clone() {
            if status == RunStatus::Cancelled {
                self.record(None, Event::RollbackFinished { complete: false });
            }
            return Finished {
                status,
                reason: format!("{why}; rollback stopped before it finished"),
            };
        }
        self.record(None, Event::RollbackFinished { complete });
        let (status, reason) = match (by_hand, complete) {
            (true, true) => (RunStatus::RolledBack, "rolled back by hand".to_string()),
            (true, false) => (
                RunStatus::Failed,
                format!("rollback by hand incomplete: {} not undone", unfinished.join(", ")),
            ),
            (false, true) => (RunStatus::RolledBack, format!("{reason}; rolled back")),
            (false, false) => (
                RunStatus::Failed,
                format!("{reason}; rollback incomplete: {} not undone", unfinished.join(", ")),
            ),
        };
        Finished { status, reason }
    }
}
