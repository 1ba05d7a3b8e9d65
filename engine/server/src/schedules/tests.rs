//! The schedules' loop on a paused tokio clock, over a real (temporary)
//! state store, firing through a submitter that records runs without
//! executing them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_state::{RunRecord, RunStatus, ScheduleRecord, StateError, Store};
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Claim, Clock, Scheduler, Submitter};

/// 2026-06-01T12:00:00Z.
const T0: i64 = 1_780_315_200_000;

/// Records each fired run in the store as `status`, claiming its slot as
/// the orchestrator does; counts what it was told.
struct Recorder {
    store: Arc<Store>,
    status: Mutex<RunStatus>,
    observed: Mutex<Vec<String>>,
    /// The slots it was told did not run: (outcome, slot - T0, count).
    told: Mutex<Vec<(String, i64, i64)>>,
}

impl Submitter for Recorder {
    fn fire<'a>(&'a self, _schedule: &'a ScheduleRecord, claim: Claim) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let id = format!("run-{}", claim.slot.slot_ms);
            let status = *self.status.lock().unwrap_or_else(|p| p.into_inner());
            let run = RunRecord {
                id: id.clone(),
                workflow: "w".into(),
                file: "w.k".into(),
                status,
                created_at_ms: claim.slot.at_ms,
                updated_at_ms: claim.slot.at_ms,
                inputs: serde_json::Value::Null,
            };
            let (slot, audit) = claim.for_run(&id);
            self.store
                .claim_slot(&slot, Some(&run), Some(&audit))
                .map_err(|e| e.to_string())?;
            Ok(id)
        })
    }

    fn observe(&self, outcome: &str, _late: Option<f64>) {
        self.observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(outcome.to_string());
    }

    fn missed<'a>(
        &'a self,
        _schedule: &'a ScheduleRecord,
        slot: drover_state::SlotRecord,
        _shown: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.told
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((slot.outcome, slot.slot_ms - T0, slot.count));
        })
    }
}

fn schedule(id: &str, cron: &str, overlap: &str, missed: &str) -> ScheduleRecord {
    ScheduleRecord {
        id: id.into(),
        target: serde_json::json!({"workflow": {"path": "w.k"}}),
        cron: cron.into(),
        timezone: "UTC".into(),
        overlap: overlap.into(),
        missed: missed.into(),
        paused: false,
        created_at_ms: T0,
        updated_at_ms: T0,
        since_ms: T0,
        created_by: "test".into(),
    }
}

/// The wall clock of the test: T0 plus `offset` plus the paused tokio
/// clock's time since `start`.
fn clock(offset: i64) -> Clock {
    let start = tokio::time::Instant::now();
    Arc::new(move || T0 + offset + i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX))
}

/// Run a scheduler for `virtual_ms` of the paused clock.
async fn run_for(store: &Arc<Store>, rec: &Arc<Recorder>, offset: i64, virtual_ms: u64) {
    let stopping = CancellationToken::new();
    let s = Scheduler::new(store.clone(), rec.clone(), clock(offset), stopping.clone());
    let task = tokio::spawn(s.run(Arc::new(Notify::new())));
    tokio::time::sleep(Duration::from_millis(virtual_ms)).await;
    stopping.cancel();
    let _ = task.await;
}

fn recorder(store: &Arc<Store>, status: RunStatus) -> Arc<Recorder> {
    Arc::new(Recorder {
        store: store.clone(),
        status: Mutex::new(status),
        observed: Mutex::new(Vec::new()),
        told: Mutex::new(Vec::new()),
    })
}

fn store() -> Arc<Store> {
    Arc::new(Store::open(std::path::Path::new(":memory:")).expect("store"))
}

#[tokio::test(start_paused = true)]
async fn every_slot_fires_once_and_each_run_names_its_slot() {
    let store = store();
    store
        .create_schedule(&schedule("s1", "*/2 * * * * *", "skip", "skip"))
        .expect("create");
    let rec = recorder(&store, RunStatus::Succeeded);
    run_for(&store, &rec, 0, 20_500).await;
    let slots = store.slots("s1", 100).expect("slots");
    let fired: BTreeSet<i64> = slots
        .iter()
        .filter(|s| s.outcome == "fired")
        .map(|s| s.slot_ms)
        .collect();
    // Every slot of the 20 s is accounted for once (a late wake-up may
    // stand for more than one), and no slot twice.
    let counted: i64 = slots.iter().map(|s| s.count).sum();
    assert_eq!(counted, 10, "{slots:?}");
    assert_eq!(fired.len(), slots.len(), "{slots:?}");
    assert!(
        fired
            .iter()
            .all(|s| (s - T0) % 2_000 == 0 && *s > T0 && *s <= T0 + 20_500)
    );
    for s in &slots {
        let run = s.run_id.as_deref().expect("a fired slot names its run");
        assert_eq!(store.slot_of_run(run).expect("read").as_ref(), Some(s));
        let trail = store
            .audit(&drover_state::AuditQuery {
                run_id: Some(run.to_string()),
                ..Default::default()
            })
            .expect("audit");
        assert_eq!(trail.len(), 1);
        assert_eq!(trail[0].actor, "schedule s1");
        assert!(
            trail[0]
                .detail
                .as_deref()
                .is_some_and(|d| d.contains(&s.slot_ms.to_string())),
            "{trail:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_slot_is_never_claimed_twice_and_a_refused_claim_creates_no_run() {
    let store = store();
    store
        .create_schedule(&schedule("s1", "*/2 * * * * *", "queue", "skip"))
        .expect("create");
    let rec = recorder(&store, RunStatus::Queued);
    run_for(&store, &rec, 0, 4_500).await;
    let first = store.slots("s1", 1).expect("slots").remove(0);
    let again = Claim {
        slot: first.clone(),
        audit: drover_state::AuditRecord {
            id: 0,
            at_ms: T0,
            actor: "x".into(),
            action: "schedule".into(),
            run_id: None,
            detail: None,
            outcome: "ok".into(),
        },
    };
    let err = rec.fire(&schedule("s1", "", "", ""), again).await.expect_err("taken");
    assert!(err.contains("claimed already"), "{err}");
    let runs = store.runs().expect("runs");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(matches!(
        store.claim_slot(&first, None, None),
        Err(StateError::SlotTaken { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn overlap_skip_records_slots_skipped_while_the_previous_run_is_active() {
    let store = store();
    store
        .create_schedule(&schedule("s1", "*/2 * * * * *", "skip", "skip"))
        .expect("create");
    // Runs stay "running": after the first, every slot is skipped.
    let rec = recorder(&store, RunStatus::Running);
    run_for(&store, &rec, 0, 10_500).await;
    let mut slots = store.slots("s1", 100).expect("slots");
    slots.reverse();
    assert_eq!(slots[0].outcome, "fired", "{slots:?}");
    assert!(slots[1..].iter().all(|s| s.outcome == "skipped"), "{slots:?}");
    assert_eq!(slots.iter().map(|s| s.count).sum::<i64>(), 5);
    assert_eq!(store.runs().expect("runs").len(), 1);
    let observed = rec.observed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(observed[0], "fired");
    assert!(observed[1..].iter().all(|o| o == "skipped"), "{observed:?}");
    // Each skipped slot is told (the `schedule_missed` notification).
    let told = rec.told.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(told.len(), slots.len() - 1, "{told:?}");
    assert!(told.iter().all(|(o, _, _)| o == "skipped"), "{told:?}");
}

/// A server that ran 5 s, was down 10 s, and runs again: what the
/// missed-run policy makes of the slots in between.
async fn restart(missed: &str) -> (Vec<drover_state::SlotRecord>, Vec<(String, i64, i64)>) {
    let store = store();
    store
        .create_schedule(&schedule("s1", "*/2 * * * * *", "skip", missed))
        .expect("create");
    let rec = recorder(&store, RunStatus::Succeeded);
    run_for(&store, &rec, 0, 5_000).await;
    // Down from T0+5s to T0+15s; up again for 2.5 s.
    run_for(&store, &rec, 15_000, 2_500).await;
    let mut slots = store.slots("s1", 100).expect("slots");
    slots.reverse();
    let told = rec.told.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (slots, told)
}

#[tokio::test(start_paused = true)]
async fn missed_skip_records_the_slots_missed_while_down_and_runs_none_of_them() {
    let (slots, told) = restart("skip").await;
    // The missed slots are told once, with their count.
    assert_eq!(told, [("missed".to_string(), 14_000, 5)]);
    let shown: Vec<(i64, &str, i64)> = slots
        .iter()
        .map(|s| (s.slot_ms - T0, s.outcome.as_str(), s.count))
        .collect();
    assert_eq!(
        shown,
        [
            (2_000, "fired", 1),
            (4_000, "fired", 1),
            (14_000, "missed", 5),
            (16_000, "fired", 1)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn missed_run_once_fires_one_run_for_the_latest_missed_slot() {
    let (slots, told) = restart("run-once").await;
    // Run once: nothing missed to tell.
    assert!(told.is_empty(), "{told:?}");
    let shown: Vec<(i64, &str, i64)> = slots
        .iter()
        .map(|s| (s.slot_ms - T0, s.outcome.as_str(), s.count))
        .collect();
    assert_eq!(
        shown,
        [
            (2_000, "fired", 1),
            (4_000, "fired", 1),
            (14_000, "fired", 5),
            (16_000, "fired", 1)
        ]
    );
    assert!(slots[2].detail.as_deref().is_some_and(|d| d.contains("run-once")));
}
