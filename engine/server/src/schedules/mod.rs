//! Schedules: workflows and execs started by the server on cron slots.
//!
//! Layout:
//! - [`timing`]: when slots fall (croner, chrono-tz) and what to do about
//!   the due ones: pure, tested on fixed times.
//! - this module: the loop that wakes at the next due slot and acts on
//!   it, through a [`Submitter`] (the orchestrator's queue; a fake in
//!   tests).
//! - [`endpoints`]: `/schedules` (create, list, show, change, pause,
//!   resume, delete).
//!
//! Architecture invariant: a slot is acted on at most once, across
//! restarts and crashes. Acting on a slot is claiming it: its row in the
//! store, keyed by (schedule, slot), written in the same transaction as
//! the run it fires (and that run's audit record of which schedule and
//! slot started it). The loop decides from the store's last claimed slot,
//! never from memory, so a restart goes on from what is durable; slots
//! that passed while the server was down are the missed-run policy's.

use std::sync::Arc;
use std::time::Duration;

use drover_state::{AuditRecord, ScheduleRecord, SlotRecord, StateError, Store};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::orchestrator::Orchestrator;
use crate::wire::{ExecRequest, ScheduledWorkflow};

pub mod endpoints;
pub mod timing;

use timing::{Decision, Missed, Overlap, Situation, Timing};

/// What a schedule starts, as stored in its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A workflow: its source, or a path under the workflows directories.
    Workflow(ScheduledWorkflow),
    /// A command on the servers a selector picks in a fleet file.
    Exec(ExecRequest),
}

/// A slot being claimed by the run it fires: written with the run, in
/// its transaction (see `Store::claim_slot`). The run's id is filled in
/// by whoever creates the run.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The slot's record (`fired`).
    pub slot: SlotRecord,
    /// The run's audit record: which schedule and slot started it.
    pub audit: AuditRecord,
}

impl Claim {
    /// The slot and audit records for the run `run_id`.
    pub fn for_run(&self, run_id: &str) -> (SlotRecord, AuditRecord) {
        let mut slot = self.slot.clone();
        slot.run_id = Some(run_id.to_string());
        let mut audit = self.audit.clone();
        audit.run_id = Some(run_id.to_string());
        (slot, audit)
    }
}

/// What starts a schedule's runs. Object-safe: the loop holds a
/// `dyn Submitter`.
pub trait Submitter: Send + Sync {
    /// Create the run `schedule` starts for the slot of `claim`, claiming
    /// the slot in the run's transaction (`Store::claim_slot`). The run's
    /// id, or why there is none (then nothing was claimed).
    fn fire<'a>(&'a self, schedule: &'a ScheduleRecord, claim: Claim) -> BoxFuture<'a, Result<String, String>>;

    /// Account for what became of a slot (`fired`, `skipped`, `missed`,
    /// `failed`; how late a fired one was, in seconds).
    fn observe(&self, _outcome: &str, _late_seconds: Option<f64>) {}

    /// A slot of `schedule` did not run (`outcome` skipped, missed or
    /// failed; `slot` as the schedule's time zone shows it; `detail`
    /// why): tell whoever wants to know (the `schedule_missed` event).
    fn missed<'a>(&'a self, _schedule: &'a ScheduleRecord, _slot: SlotRecord, _shown: String) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// The orchestrator as a [`Submitter`]: a schedule's run is queued as a
/// submission is, under the queue's limits.
#[derive(Debug, Clone)]
pub struct Queue(pub Arc<Orchestrator>);

impl Submitter for Queue {
    fn fire<'a>(&'a self, schedule: &'a ScheduleRecord, claim: Claim) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let target: Target = serde_json::from_value(schedule.target.clone())
                .map_err(|e| format!("the schedule's target does not decode: {e}"))?;
            match target {
                Target::Workflow(w) => {
                    let req = crate::wire::SubmitRequest {
                        source: w.source,
                        path: w.path,
                        validate_only: false,
                        dry_run: false,
                    };
                    let (_, resp) = self
                        .0
                        .submit_claimed(req, Some(claim))
                        .await
                        .map_err(|e| e.body.message)?;
                    resp.run_id.ok_or_else(|| "the submission was not queued".to_string())
                }
                Target::Exec(req) => {
                    let spec = crate::fleet::spec_of(&req).map_err(|e| e.body.message)?;
                    let (id, _) = self
                        .0
                        .submit_exec_claimed(req.source.as_deref(), req.path.as_deref(), &spec, Some(claim))
                        .await
                        .map_err(|e| e.body.message)?;
                    Ok(id)
                }
            }
        })
    }

    fn observe(&self, outcome: &str, late_seconds: Option<f64>) {
        self.0.metrics.schedule_slot(outcome, late_seconds);
    }

    /// To the server-wide notification targets (a schedule is the
    /// server's, not a workflow's).
    fn missed<'a>(&'a self, schedule: &'a ScheduleRecord, slot: SlotRecord, shown: String) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(n) = self.0.notifier() else { return };
            let why = slot.detail.clone().unwrap_or_default();
            let mut notice = crate::notify::Notice::new(
                drover_core::model::NotificationEvent::ScheduleMissed,
                format!(
                    "schedule {} did not run its slot {shown} ({}): {why}",
                    schedule.id, slot.outcome
                ),
            );
            notice.workflow = Some(format!("schedule {}", schedule.id));
            notice.detail = serde_json::json!({
                "schedule": schedule.id,
                "slot": shown,
                "slot_ms": slot.slot_ms,
                "outcome": slot.outcome,
                "slots": slot.count,
                "reason": why,
            });
            n.emit_server(notice).await;
        })
    }
}

/// Milliseconds since the epoch, now.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The schedules' loop: wakes at the next due slot of any schedule (or
/// when one changes), acts on what is due, sleeps again; until shutdown.
pub struct Scheduler {
    store: Arc<Store>,
    submitter: Arc<dyn Submitter>,
    clock: Clock,
    /// When this server started: slots before it passed while it was
    /// down.
    up_since_ms: i64,
    stopping: CancellationToken,
    /// On a shared store: read the schedules again at least this often
    /// (other instances create and change them; a slot is fired by the
    /// first instance that claims it).
    reread: Option<Duration>,
}

/// How often the schedules are read again on a shared store.
const REREAD_SHARED: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("up_since_ms", &self.up_since_ms)
            .finish_non_exhaustive()
    }
}

/// How long the loop sleeps when no schedule has a next slot, or after
/// the store failed (it looks again then).
const IDLE: Duration = Duration::from_secs(3600);
const AFTER_FAILURE: Duration = Duration::from_secs(1);

impl Scheduler {
    /// A loop over the schedules of `store`, firing through `submitter`,
    /// reading the time from `clock`; started at `clock()`.
    pub fn new(
        store: Arc<Store>,
        submitter: Arc<dyn Submitter>,
        clock: Clock,
        stopping: CancellationToken,
    ) -> Scheduler {
        let up_since_ms = clock();
        Scheduler {
            store,
            submitter,
            clock,
            up_since_ms,
            stopping,
            reread: None,
        }
    }

    /// Run until `stopping` fires; `changed` wakes it when a schedule was
    /// created or changed.
    pub async fn run(self, changed: Arc<Notify>) {
        loop {
            let wait = match self.turn().await {
                Ok(Some(at)) => Duration::from_millis(u64::try_from(at - (self.clock)()).unwrap_or(0)),
                Ok(None) => IDLE,
                Err(e) => {
                    tracing::error!(error = %e, "schedules: the state store failed; trying again shortly");
                    AFTER_FAILURE
                }
            };
            let wait = self.reread.map_or(wait, |r| wait.min(r));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changed.notified() => {}
                _ = self.stopping.cancelled() => return,
            }
        }
    }

    /// Act on every due slot of every schedule; the time of the next one.
    pub async fn turn(&self) -> Result<Option<i64>, StateError> {
        let store = self.store.clone();
        let schedules = blocking(move || store.schedules()).await?;
        let mut next: Option<i64> = None;
        for s in schedules.iter().filter(|s| !s.paused) {
            if self.stopping.is_cancelled() {
                return Ok(None);
            }
            if let Some(at) = self.step(s).await? {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        Ok(next)
    }

    /// Act on `s`'s due slots, one claim at a time; its next slot.
    async fn step(&self, s: &ScheduleRecord) -> Result<Option<i64>, StateError> {
        let (timing, overlap, missed) = match settings_of(s) {
            Ok(x) => x,
            Err(why) => {
                tracing::error!(schedule = %s.id, error = %why, "schedule cannot be read; it does not fire");
                return Ok(None);
            }
        };
        loop {
            if self.stopping.is_cancelled() {
                return Ok(None);
            }
            let (last, previous_active) = {
                let (store, id) = (self.store.clone(), s.id.clone());
                blocking(move || {
                    let last = store.slots(&id, 1)?.first().map(|r| r.slot_ms);
                    let active = match store.last_fired(&id)?.and_then(|r| r.run_id) {
                        Some(run) => match store.run(&run) {
                            Ok(r) => r.status.is_unfinished(),
                            Err(StateError::UnknownRun(_)) => false,
                            Err(e) => return Err(e),
                        },
                        None => false,
                    };
                    Ok((last, active))
                })
                .await?
            };
            let situation = Situation {
                after_ms: last.map_or(s.since_ms, |l| l.max(s.since_ms)),
                up_since_ms: self.up_since_ms,
                now_ms: (self.clock)(),
                previous_active,
            };
            match timing::decide(&timing, overlap, missed, situation) {
                Decision::Wait(at) => return Ok(at),
                Decision::Act {
                    slot_ms,
                    count,
                    missed,
                    fire,
                } => self.act(s, &timing, slot_ms, count, missed, fire).await?,
            }
        }
    }

    async fn act(
        &self,
        s: &ScheduleRecord,
        timing: &Timing,
        slot_ms: i64,
        count: i64,
        missed: bool,
        fire: bool,
    ) -> Result<(), StateError> {
        let now = (self.clock)();
        let shown = timing.show(slot_ms);
        let slots = |n: i64| {
            if n >= timing::MAX_COUNTED {
                format!("{n} or more slots")
            } else if n == 1 {
                "1 slot".to_string()
            } else {
                format!("{n} slots")
            }
        };
        let mut slot = SlotRecord {
            schedule_id: s.id.clone(),
            slot_ms,
            outcome: String::new(),
            run_id: None,
            count,
            detail: None,
            at_ms: now,
        };
        if fire {
            slot.outcome = "fired".into();
            slot.detail = if missed {
                Some(format!(
                    "run once for {} missed while the server was down (missed-run policy run-once)",
                    slots(count)
                ))
            } else if count > 1 {
                Some(format!("{} before it passed while the loop was busy", slots(count - 1)))
            } else {
                None
            };
            let audit = AuditRecord {
                id: 0,
                at_ms: now,
                actor: format!("schedule {}", s.id),
                action: "schedule".into(),
                run_id: None,
                detail: Some(format!("schedule {} slot {shown} ({slot_ms})", s.id)),
                outcome: "ok".into(),
            };
            match self
                .submitter
                .fire(
                    s,
                    Claim {
                        slot: slot.clone(),
                        audit,
                    },
                )
                .await
            {
                Ok(run_id) => {
                    tracing::info!(schedule = %s.id, slot = %shown, run_id = %run_id, "schedule fired");
                    self.submitter
                        .observe("fired", Some((now - slot_ms).max(0) as f64 / 1000.0));
                    return Ok(());
                }
                // Not claimed: the slot is missed at the next start, as
                // its policy says.
                Err(why) if self.stopping.is_cancelled() => {
                    tracing::info!(schedule = %s.id, slot = %shown, error = %why, "schedule not fired: shutting down");
                    return Ok(());
                }
                Err(why) => {
                    tracing::warn!(schedule = %s.id, slot = %shown, error = %why, "schedule could not fire");
                    slot.outcome = "failed".into();
                    slot.detail = Some(why);
                }
            }
        } else if missed {
            slot.outcome = "missed".into();
            slot.detail = Some(format!(
                "{} passed while the server was down (missed-run policy skip)",
                slots(count)
            ));
        } else {
            slot.outcome = "skipped".into();
            slot.detail = Some(format!(
                "{}: the previous run of the schedule was still active (overlap policy skip)",
                slots(count)
            ));
        }
        if slot.outcome != "fired" {
            tracing::info!(schedule = %s.id, slot = %shown, outcome = %slot.outcome, count, "schedule slot not run");
        }
        let outcome = slot.outcome.clone();
        let store = self.store.clone();
        let claimed = slot.clone();
        match blocking(move || store.claim_slot(&slot, None, None)).await {
            Ok(()) => self.submitter.missed(s, claimed, shown).await,
            // Claimed meanwhile (a run's transaction committed, then its
            // submission failed after): what was claimed stands.
            Err(StateError::SlotTaken { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        self.submitter.observe(&outcome, None);
        Ok(())
    }
}

/// A schedule's timing and policies, as stored; or what is wrong with
/// them.
pub fn settings_of(s: &ScheduleRecord) -> Result<(Timing, Overlap, Missed), String> {
    let timing = Timing::parse(&s.cron, &s.timezone)?;
    let overlap = match s.overlap.as_str() {
        "skip" => Overlap::Skip,
        "queue" => Overlap::Queue,
        other => return Err(format!("overlap policy {other:?} is neither skip nor queue")),
    };
    let missed = match s.missed.as_str() {
        "skip" => Missed::Skip,
        "run-once" => Missed::RunOnce,
        other => return Err(format!("missed-run policy {other:?} is neither skip nor run-once")),
    };
    Ok((timing, overlap, missed))
}

/// Runs `f` (store calls) on the blocking pool, off the runtime's workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StateError::Writer(format!("a store call ended abnormally: {e}")))?
}

/// Start the schedules' loop of `orch` (until its shutdown).
pub fn start(orch: &Arc<Orchestrator>) {
    let clock: Clock = Arc::new(drover_exec::scheduler::now_ms);
    let mut scheduler = Scheduler::new(
        orch.store().clone(),
        Arc::new(Queue(orch.clone())),
        clock,
        orch.stopping.clone(),
    );
    if orch.store().is_shared() {
        scheduler.reread = Some(REREAD_SHARED);
    }
    tokio::spawn(scheduler.run(orch.schedules_changed.clone()));
}

#[cfg(test)]
mod tests;
