//! The PostgreSQL store against a real PostgreSQL (a throwaway cluster
//! per test, `drover_testkit::postgres`). Without PostgreSQL installed the
//! tests fail saying so; `DROVER_SKIP_PG=1` skips them instead.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use drover_testkit::postgres::{Cluster, Proxy};

use super::{Pg, redact};
use crate::cluster::{ActionAnswer, LogChunk, Notice};
use crate::{
    Attempt, AuditQuery, AuditRecord, DeliveryStatus, Event, NewDelivery, Role, RunRecord, RunStatus, ScheduleRecord,
    SlotRecord, SnapshotRecord, StateError, TokenHash, TokenRecord,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A fresh cluster, or None when PostgreSQL is absent and the tests are
/// to be skipped.
fn cluster() -> Result<Option<Cluster>, Box<dyn std::error::Error>> {
    if !drover_testkit::postgres::available() {
        if std::env::var_os("DROVER_SKIP_PG").is_some() {
            eprintln!("skipped: PostgreSQL is not installed (DROVER_SKIP_PG is set)");
            return Ok(None);
        }
        return Err(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin): install the Debian package \
                    postgresql, or set DROVER_SKIP_PG=1 to skip these tests"
                .into(),
        );
    }
    Ok(Some(Cluster::start()?))
}

fn record(id: &str, created: i64) -> RunRecord {
    RunRecord {
        id: id.into(),
        workflow: "w".into(),
        file: "w.k".into(),
        status: RunStatus::Queued,
        created_at_ms: created,
        updated_at_ms: created,
        inputs: serde_json::json!({"x": 1}),
    }
}

fn audit(action: &str, run_id: Option<&str>, at_ms: i64) -> AuditRecord {
    AuditRecord {
        id: 0,
        at_ms,
        actor: "alice".into(),
        action: action.into(),
        run_id: run_id.map(str::to_string),
        detail: None,
        outcome: "ok".into(),
    }
}

fn finished(status: RunStatus) -> Event {
    Event::RunFinished { status, reason: None }
}

#[test]
fn the_password_never_shows() {
    assert_eq!(
        redact("postgres://drover:s3cret@db.example:5432/drover?sslmode=disable"),
        "postgres://drover:***@db.example:5432/drover?sslmode=disable"
    );
    assert_eq!(redact("postgres://drover@db/x"), "postgres://drover@db/x");
    assert_eq!(
        redact("postgresql://db/x?user=a&password=s3cret"),
        "postgresql://db/x?user=a&password=***"
    );
    assert_eq!(redact("host=db user=a password=s3cret"), "host=db user=a password=***");
}

#[test]
fn runs_and_journals_round_trip_as_in_sqlite() -> TestResult {
    let Some(db) = cluster()? else { return Ok(()) };
    let pg = Pg::open(&db.url())?;
    assert_eq!(pg.location(), db.url());
    pg.create_run(&record("r1", 10))?;
    pg.create_run(&record("r2", 20))?;
    pg.create_run(&record("r3", 20))?;
    assert_eq!(pg.run("r1")?, record("r1", 10));
    let ids: Vec<String> = pg.runs()?.into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["r3", "r2", "r1"], "newest first, then by id");
    assert!(pg.runs()?.iter().all(|r| r.inputs.is_null()));
    assert!(matches!(pg.run("nope"), Err(StateError::UnknownRun(_))));

    let started = Event::RunStarted { resumed: false };
    let task = Event::TaskStarted {
        attempt: 1,
        idempotency_key: "k".into(),
    };
    assert_eq!(
        pg.append("r1", None, &[(100, None, &started), (101, Some("t1"), &task)])?,
        2
    );
    let r1 = pg.run("r1")?;
    assert_eq!((r1.status, r1.updated_at_ms), (RunStatus::Running, 100));
    assert_eq!(pg.append("r1", None, &[(102, None, &Event::RunPaused)])?, 3);
    assert_eq!(pg.run("r1")?.status, RunStatus::Paused);
    // An event that changes nothing leaves the status and its time.
    pg.append("r1", None, &[(103, Some("t1"), &Event::GateWaiting)])?;
    assert_eq!(pg.run("r1")?.updated_at_ms, 102);
    pg.append("r1", None, &[(104, None, &finished(RunStatus::Succeeded))])?;
    let r1 = pg.run("r1")?;
    assert_eq!((r1.status, r1.updated_at_ms), (RunStatus::Succeeded, 104));
    let journal = pg.journal("r1")?;
    assert_eq!(journal.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(journal[1].node.as_deref(), Some("t1"));
    assert_eq!(journal[1].event, task);
    let since = pg.journal_since("r1", 2, 2)?;
    assert_eq!(since.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    assert!(matches!(
        pg.append("nope", None, &[(1, None, &started)]),
        Err(StateError::UnknownRun(_))
    ));
    // Unfenced writes record fence 0.
    assert_eq!(db.psql("SELECT DISTINCT fence FROM journal")?.trim(), "0");

    // Retention: a final run goes with its journal, deliveries and output;
    // an unfinished one stays.
    pg.append("r2", None, &[(5, None, &started)])?;
    pg.enqueue_delivery(&delivery(1, 0, "r1"))?;
    pg.enqueue_delivery(&delivery(1, 0, "r2"))?;
    pg.append_log_chunk(
        "r1",
        &LogChunk {
            first_seq: 1,
            last_seq: 1,
            body: "{}\n".into(),
        },
    )?;
    pg.request_action("r1", "pause", 1)?;
    assert_eq!(
        pg.delete_final(&["r1".into(), "r2".into(), "r1".into(), "ghost".into()])?,
        ["r1"]
    );
    assert!(matches!(pg.run("r1"), Err(StateError::UnknownRun(_))));
    assert!(pg.journal("r1")?.is_empty());
    assert_eq!(pg.journal("r2")?.len(), 1);
    let left: Vec<Option<String>> = pg.deliveries(None, None, 10)?.into_iter().map(|d| d.run_id).collect();
    assert_eq!(left, [Some("r2".to_string())]);
    assert_eq!(pg.last_log_seq("r1")?, 0);
    assert!(pg.pending_requests(&["r1".into()])?.is_empty());

    // A status no status has.
    db.psql("UPDATE runs SET status = 'exploded' WHERE id = 'r3'")?;
    assert!(matches!(pg.run("r3"), Err(StateError::UnknownStatus { .. })));
    db.psql("UPDATE runs SET status = 'succeeded' WHERE id = 'r3'")?;

    // The queue limit counts queued runs only.
    pg.create_run_limited(&record("q1", 30), 2)?;
    pg.create_run_limited(&record("q2", 31), 2)?;
    assert!(matches!(
        pg.create_run_limited(&record("q3", 32), 2),
        Err(StateError::QueueFull { max: 2 })
    ));
    assert!(matches!(pg.run("q3"), Err(StateError::UnknownRun(_))));
    Ok(())
}

#[test]
fn instances_starting_together_migrate_once() -> TestResult {
    let Some(db) = cluster()? else { return Ok(()) };
    let url = db.url();
    let opened: Vec<Result<Pg, StateError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| Pg::open(&url))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(StateError::Pg("panicked".into()))))
            .collect()
    });
    for pg in &opened {
        assert!(pg.is_ok(), "{pg:?}");
    }
    assert_eq!(db.psql("SELECT count(*) FROM drover_migrations")?.trim(), "1");
    drop(opened);
    // Opening again finds nothing to do.
    let pg = Pg::open(&url)?;
    pg.create_run(&record("r", 1))?;
    // A schema from the future is refused.
    db.psql("INSERT INTO drover_migrations VALUES (999, 0)")?;
    let e = Pg::open(&url).map(|_| ());
    assert!(matches!(&e, Err(StateError::Pg(m)) if m.contains("999")), "{e:?}");
    Ok(())
}

#[test]
fn snapshots_tokens_and_the_audit_trail_as_in_sqlite() -> TestResult {
    let Some(db) = cluster()? else { return Ok(()) };
    let pg = Pg::open(&db.url())?;
    let snap = |id: &str, name: Option<&str>, at: i64| SnapshotRecord {
        id: id.into(),
        name: name.map(str::to_string),
        created_at_ms: at,
        file: "inv.k".into(),
        selector: serde_json::json!({"role": "web"}),
        spec: serde_json::json!({"files": ["/etc/x"]}),
        servers: serde_json::json!({"web1": {"ok": true}}),
    };
    pg.save_snapshot(&snap("s1", Some("base"), 1))?;
    pg.save_snapshot(&snap("s2", None, 2))?;
    assert!(matches!(
        pg.save_snapshot(&snap("s3", Some("base"), 3)),
        Err(StateError::SnapshotExists(n)) if n == "base"
    ));
    assert_eq!(pg.snapshot("s1")?, snap("s1", Some("base"), 1));
    assert_eq!(pg.snapshot("base")?.id, "s1");
    assert!(matches!(pg.snapshot("nope"), Err(StateError::UnknownSnapshot(_))));
    let list = pg.snapshots()?;
    assert_eq!(list.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s2", "s1"]);
    assert!(list.iter().all(|s| s.servers.is_null()));

    let token = |name: &str, role: Role, secret: &str| TokenRecord {
        name: name.into(),
        role,
        hash: TokenHash::of(secret),
        created_at_ms: 5,
        created_by: "local-admin".into(),
        last_used_ms: None,
        revoked_at_ms: None,
    };
    pg.create_token(&token("ci", Role::Operator, "s1"), &audit("token_create", None, 5))?;
    pg.create_token(&token("ro", Role::Viewer, "s2"), &audit("token_create", None, 6))?;
    pg.touch_token("ci", 40)?;
    pg.touch_token("ci", 30)?;
    let revoked = pg.revoke_token("ro", 50, &audit("token_revoke", None, 50))?;
    assert_eq!(revoked.revoked_at_ms, Some(50));
    let tokens = pg.tokens()?;
    assert_eq!(tokens.len(), 2);
    assert_eq!((tokens[0].name.as_str(), tokens[0].role), ("ci", Role::Operator));
    assert!(tokens[0].hash.matches(&TokenHash::of("s1")));
    assert_eq!(tokens[0].last_used_ms, Some(40));
    assert_eq!(tokens[1].revoked_at_ms, Some(50));
    for name in ["ci", "ro"] {
        let e = pg.create_token(&token(name, Role::Admin, "s3"), &audit("token_create", None, 60));
        assert!(matches!(&e, Err(StateError::TokenExists(n)) if n == name), "{e:?}");
    }
    assert!(matches!(
        pg.revoke_token("ro", 70, &audit("token_revoke", None, 70)),
        Err(StateError::TokenRevoked { at_ms: 50, .. })
    ));
    assert!(matches!(
        pg.revoke_token("nobody", 70, &audit("token_revoke", None, 70)),
        Err(StateError::UnknownToken(_))
    ));
    // Failed creations and revocations recorded nothing.
    let actions: Vec<String> = pg
        .audit(&AuditQuery::default())?
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, ["token_revoke", "token_create", "token_create"]);

    let a = pg.record_audit(&audit("submit", Some("r1"), 100))?;
    let b = pg.record_audit(&audit("pause", Some("r1"), 200))?;
    assert!(a < b);
    let r1 = pg.audit(&AuditQuery {
        run_id: Some("r1".into()),
        since_ms: Some(150),
        ..AuditQuery::default()
    })?;
    assert_eq!(r1.len(), 1);
    assert_eq!((r1[0].id, r1[0].action.as_str()), (b, "pause"));
    let one = pg.audit(&AuditQuery {
        limit: Some(1),
        ..AuditQuery::default()
    })?;
    assert_eq!(one.len(), 1);

    db.psql("UPDATE tokens SET role = 'root' WHERE name = 'ci'")?;
    assert!(matches!(pg.tokens(), Err(StateError::CorruptToken { .. })));
    Ok(())
}

fn delivery(at_ms: i64, cooldown_ms: i64, run: &str) -> NewDelivery {
    NewDelivery {
        run_id: Some(run.into()),
        target: "ops".into(),
        target_kind: "webhook".into(),
        target_def: serde_json::json!({"name": "ops", "type": "webhook", "url": "http://x"}),
        event: "run_failed".into(),
        payload: serde_json::json!({"run_id": run}),
        at_ms,
        cooldown_ms,
    }
}

#[test]
fn the_outbox_folds_and_hands_a_due_delivery_to_one_instance() -> TestResult {
    let Some(db) = cluster()? else { return Ok(()) };
    let pg = Pg::open(&db.url())?;
    let other = Pg::open(&db.url())?;
    let (first, folded) = pg.enqueue_delivery(&delivery(1_000, 10_000, "r1"))?;
    assert!(!folded);
    for (i, run) in ["r2", "r3", "r4", "r5"].iter().enumerate() {
        // Either instance folds into the one window.
        let by = if i % 2 == 0 { &pg } else { &other };
        assert_eq!(
            by.enqueue_delivery(&delivery(2_000 + i as i64, 10_000, run))?,
            (first, true)
        );
    }
    assert!(pg.due_deliveries(10_999, 10)?.is_empty());
    assert_eq!(pg.next_delivery_at()?, Some(11_000));
    let due = pg.due_deliveries(11_000, 10)?;
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].count, due[0].run_id.as_deref()), (5, Some("r5")));
    assert_eq!(due[0].payload["run_id"], "r5");
    assert_eq!(due[0].next_attempt_at_ms, 11_000, "as it was when due");
    // Claimed: the other instance does not get it, now or a bit later.
    assert!(other.due_deliveries(11_000, 10)?.is_empty());
    assert!(other.due_deliveries(60_000, 10)?.is_empty());
    // An event while it is being sent opens a window of its own.
    let (second, folded) = other.enqueue_delivery(&delivery(11_500, 10_000, "r6"))?;
    assert!(!folded && second != first);
    pg.record_attempt(
        first,
        Attempt::Retry {
            next_at_ms: 20_000,
            error: "HTTP 500".into(),
        },
    )?;
    // Due again at its retry time, to whoever asks first; once.
    let (a, b) = std::thread::scope(|s| {
        let x = s.spawn(|| pg.due_deliveries(25_000, 10));
        let y = s.spawn(|| other.due_deliveries(25_000, 10));
        (x.join(), y.join())
    });
    let (Ok(a), Ok(b)) = (a, b) else {
        return Err("a thread panicked".into());
    };
    let mut ids: Vec<i64> = a?.iter().chain(b?.iter()).map(|d| d.id).collect();
    ids.sort();
    assert_eq!(ids, [first, second]);
    pg.record_attempt(first, Attempt::Delivered { at_ms: 25_100 })?;
    other.record_attempt(
        second,
        Attempt::Failed {
            at_ms: 25_200,
            error: "HTTP 400".into(),
        },
    )?;
    let rows = pg.deliveries(Some("r5"), None, 10)?;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].status, rows[0].attempts, rows[0].delivered_at_ms),
        (DeliveryStatus::Delivered, 2, Some(25_100))
    );
    assert_eq!(rows[0].last_error.as_deref(), Some("HTTP 500"));
    assert_eq!(pg.deliveries(None, Some(DeliveryStatus::Failed), 10)?.len(), 1);
    assert_eq!(pg.deliveries(None, None, -1)?.len(), 2);
    assert_eq!(pg.next_delivery_at()?, None);
    // Without a cooldown nothing folds.
    let (x, _) = pg.enqueue_delivery(&delivery(30_000, 0, "r7"))?;
    let (y, folded) = pg.enqueue_delivery(&delivery(30_000, 0, "r8"))?;
    assert!(!folded && x != y);
    Ok(())
}

#[test]
fn schedules_and_a_slot_claimed_once() -> TestResult {
    let Some(db) = cluster()? else { return Ok(()) };
    let pg = Pg::open(&db.url())?;
    let other = Pg::open(&db.url())?;
    let schedule = |id: &str, at: i64| ScheduleRecord {
        id: id.into(),
        target: serde_json::json!({"workflow": "w.k"}),
        cron: "0 * * * *".into(),
        timezone: "UTC".into(),
        overlap: "skip".into(),
        missed: "skip".into(),
        paused: false,
        created_at_ms: at,
        updated_at_ms: at,
        since_ms: at,
        created_by: "alice".into(),
    };
    pg.create_schedule(&schedule("s2", 2))?;
    pg.create_schedule(&schedule("s1", 1))?;
    let mut s1 = schedule("s1", 1);
    s1.paused = true;
    s1.cron = "*/5 * * * *".into();
    s1.updated_at_ms = 9;
    pg.update_schedule(&s1)?;
    assert_eq!(pg.schedule("s1")?, s1);
    assert!(matches!(
        pg.update_schedule(&schedule("nope", 1)),
        Err(StateError::UnknownSchedule(_))
    ));
    assert_eq!(
        pg.schedules()?.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["s1", "s2"]
    );

    let slot = |ms: i64, outcome: &str, run: Option<&str>| SlotRecord {
        schedule_id: "s1".into(),
        slot_ms: ms,
        outcome: outcome.into(),
        run_id: run.map(str::to_string),
        count: 1,
        detail: None,
        at_ms: ms + 1,
    };
    pg.claim_slot(
        &slot(1_000, "fired", Some("run-a")),
        Some(&record("run-a", 1_000)),
        Some(&audit("submit", Some("run-a"), 1_000)),
    )?;
    pg.claim_slot(&slot(2_000, "skipped", None), None, None)?;
    // Another instance claiming the same slot: refused, nothing written.
    let e = other.claim_slot(
        &slot(1_000, "fired", Some("run-b")),
        Some(&record("run-b", 1_000)),
        Some(&audit("submit", Some("run-b"), 1_000)),
    );
    assert!(
        matches!(&e, Err(StateError::SlotTaken { schedule, slot_ms: 1_000, outcome }) if schedule == "s1" && outcome == "fired"),
        "{e:?}"
    );
    assert!(matches!(other.run("run-b"), Err(StateError::UnknownRun(_))));
    assert_eq!(pg.audit(&AuditQuery::default())?.len(), 1);
    assert_eq!(pg.run("run-a")?.status, RunStatus::Queued);
    assert_eq!(
        pg.slots("s1", 10)?.iter().map(|s| s.slot_ms).collect::<Vec<_>>(),
        [2_000, 1_000]
    );
    assert_eq!(pg.slots("s1", 1)?.len(), 1);
    assert_eq!(pg.last_fired("s1")?.map(|s| s.slot_ms), Some(1_000));
    assert_eq!(pg.slot_of_run("run-a")?.map(|s| s.slot_ms), Some(1_000));
    assert_eq!(pg.slot_of_run("run-b")?, None);
    pg.delete_schedule("s1")?;
    assert!(matches!(pg.schedule("s1"), Err(StateError::UnknownSchedule(_))));
    assert!(matches!(pg.delete_schedule("s1"), Err(StateError::UnknownSchedule(_))));
    // Its slots stay.
    assert_eq!(pg.slots("s1", 10)?.len(), 2);
    Ok(())
}

#[test]
fn leases_are_held_by_one_instance_and_fence_the_ones_that_lost_them() -> TestResult {
    let Some(db) = cluster()? else { return Ok(()) };
    let a = Pg::open(&db.url())?;
    let b = Pg::open(&db.url())?;
    for i in 0..20 {
        a.create_run(&record(&format!("r{i:02}"), i))?;
    }
    // Two owners claiming together, a few at a time: no run twice, at
    // most 12 live leases.
    let claim = |pg: &Pg, owner: &str| -> Result<Vec<String>, StateError> {
        let mut got = Vec::new();
        loop {
            let claims = pg.claim_runs(owner, 60_000, 12, 3, &[])?;
            if claims.is_empty() {
                return Ok(got);
            }
            for c in claims {
                assert_eq!((c.fence, c.status), (1, RunStatus::Queued));
                got.push(c.id);
            }
        }
    };
    let (ca, cb) = std::thread::scope(|s| {
        let x = s.spawn(|| claim(&a, "A"));
        let y = s.spawn(|| claim(&b, "B"));
        (x.join(), y.join())
    });
    let (Ok(ca), Ok(cb)) = (ca, cb) else {
        return Err("a thread panicked".into());
    };
    let (ca, cb) = (ca?, cb?);
    let all: HashSet<&String> = ca.iter().chain(cb.iter()).collect();
    assert_eq!(all.len(), ca.len() + cb.len(), "a run claimed twice: {ca:?} {cb:?}");
    assert_eq!(all.len(), 12);
    assert_eq!(
        db.psql("SELECT count(*) FROM runs WHERE owner IS NOT NULL AND lease_expires > clock_timestamp()")?
            .trim(),
        "12"
    );
    // Oldest first: r00..r11.
    let mut sorted: Vec<&String> = all.into_iter().collect();
    sorted.sort();
    assert_eq!(sorted.first().map(|s| s.as_str()), Some("r00"));
    assert_eq!(sorted.last().map(|s| s.as_str()), Some("r11"));

    // Interrupted runs come before queued ones; `exclude` is honoured.
    let mine = ca.first().ok_or("A claimed nothing")?.clone();
    let lease = a.lease(&mine)?;
    assert_eq!((lease.owner.as_deref(), lease.fence, lease.live), (Some("A"), 1, true));
    a.append(
        &mine,
        Some(("A", 1)),
        &[(1, None, &Event::RunStarted { resumed: false })],
    )?;
    a.release_run(&mine, "A", 1)?;
    let lease = a.lease(&mine)?;
    assert_eq!((lease.owner, lease.fence, lease.live), (None, 1, false));
    a.create_run(&record("old", -1))?;
    let got = b.claim_runs("B", 60_000, 12, 1, std::slice::from_ref(&mine))?;
    assert_eq!(
        got.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["old"],
        "exclude honoured"
    );
    b.release_run("old", "B", 1)?;
    // Interrupted (running) before queued, even an older queued one.
    let got = b.claim_runs("B", 60_000, 12, 5, &[])?;
    assert_eq!(got.len(), 1, "12 live again");
    assert_eq!(
        (got[0].id.as_str(), got[0].fence, got[0].status),
        (mine.as_str(), 2, RunStatus::Running)
    );
    // A released-then-reclaimed run refuses its former holder.
    let e = a.append(&mine, Some(("A", 1)), &[(2, None, &Event::RunPaused)]);
    assert!(
        matches!(&e, Err(StateError::Fenced { run, detail }) if run == &mine && detail.contains("fence 2")),
        "{e:?}"
    );
    // An unfenced write to a run another instance holds live is refused.
    let e = a.append(&mine, None, &[(2, None, &Event::RunPaused)]);
    assert!(matches!(&e, Err(StateError::Fenced { .. })), "{e:?}");
    assert_eq!(a.journal(&mine)?.len(), 1, "nothing written");
    // The holder writes with its fence; the journal records it.
    b.append(&mine, Some(("B", 2)), &[(3, None, &Event::RunPaused)])?;
    assert_eq!(
        db.psql(&format!(
            "SELECT string_agg(fence::text, ',' ORDER BY seq) FROM journal WHERE run_id = '{mine}'"
        ))?
        .trim(),
        "1,2"
    );
    assert_eq!(a.run(&mine)?.status, RunStatus::Paused);
    // claim_run: refused while another holds it live; any status.
    assert!(matches!(a.claim_run(&mine, "A", 60_000), Err(StateError::Held { owner, .. }) if owner == "B"));
    assert!(matches!(
        a.claim_run("ghost", "A", 60_000),
        Err(StateError::UnknownRun(_))
    ));
    Ok(())
}

#[test]
fn an_expired_lease_is_taken_over_and_its_old_holder_fenced() -> TestResult {
    let Some(db) = cluster()? else { return Ok(()) };
    let a = Pg::open(&db.url())?;
    let b = Pg::open(&db.url())?;
    a.create_run(&record("r1", 1))?;
    a.create_run(&record("r2", 2))?;
    let claims = a.claim_runs("A", 200, 10, 10, &[])?;
    assert_eq!(
        claims.iter().map(|c| (c.id.as_str(), c.fence)).collect::<Vec<_>>(),
        [("r1", 1), ("r2", 1)]
    );
    // Live: nobody else gets them.
    assert!(b.claim_runs("B", 60_000, 10, 10, &[])?.is_empty());
    assert_eq!(
        a.renew_leases("A", 200, &[("r1".into(), 1), ("r2".into(), 1), ("r3".into(), 1)])?,
        ["r1", "r2"]
    );
    std::thread::sleep(Duration::from_millis(400));
    // Expired: not renewed (lost), claimable by another with fence + 1.
    assert!(!a.lease("r1")?.live);
    assert!(a.renew_leases("A", 60_000, &[("r1".into(), 1)])?.is_empty());
    let taken = b.claim_runs("B", 60_000, 10, 1, &[])?;
    assert_eq!(
        taken.iter().map(|c| (c.id.as_str(), c.fence)).collect::<Vec<_>>(),
        [("r1", 2)]
    );
    let e = a.append("r1", Some(("A", 1)), &[(5, None, &Event::RunStarted { resumed: true })]);
    match &e {
        Err(StateError::Fenced { run, detail }) => {
            assert_eq!(run, "r1");
            assert!(
                detail.contains("fence 1") && detail.contains("B") && detail.contains("fence 2"),
                "{detail}"
            );
        }
        other => return Err(format!("not fenced: {other:?}").into()),
    }
    assert!(a.journal("r1")?.is_empty(), "nothing written");
    assert_eq!(a.run("r1")?.status, RunStatus::Queued);
    // r2's lease expired too, but nobody claimed it: its fence still holds.
    assert_eq!(
        a.append(
            "r2",
            Some(("A", 1)),
            &[(6, None, &Event::RunStarted { resumed: false })]
        )?,
        1
    );
    // Releasing needs the right fence; then another claims it.
    a.release_run("r1", "A", 1)?;
    assert_eq!(a.lease("r1")?.owner.as_deref(), Some("B"));
    b.release_run("r1", "B", 2)?;
    let again = a.claim_run("r1", "A", 60_000)?;
    assert_eq!((again.fence, again.status), (3, RunStatus::Queued));
    // claim_run takes a finished run too (a retry).
    a.append("r2", Some(("A", 1)), &[(7, None, &finished(RunStatus::Failed))])?;
    let retry = b.claim_run("r2", "B", 60_000)?;
    assert_eq!((retry.fence, retry.status), (2, RunStatus::Failed));
    // ... and retention keeps a final run while it is held.
    assert!(a.delete_final(&["r2".into()])?.is_empty());
    Ok(())
}

#[test]
fn requests_output_chunks_and_notices_across_instances() -> TestResult {
    let Some(db) = cluster()? else { return Ok(()) };
    let a = Pg::open(&db.url())?;
    let b = Pg::open(&db.url())?;
    let mut notices = a.subscribe();
    // The LISTEN connection may still be starting: wait until a notice of
    // a write of b's arrives.
    b.create_run(&record("r1", 1))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let wait_for = |notices: &mut tokio::sync::broadcast::Receiver<Notice>,
                    want: &Notice,
                    retry: &dyn Fn() -> Result<(), StateError>|
     -> TestResult {
        loop {
            match notices.try_recv() {
                Ok(n) if &n == want => return Ok(()),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {}
                Err(e) => return Err(format!("notices: {e}").into()),
            }
            if Instant::now() > deadline {
                return Err(format!("no {want:?} within 10 s").into());
            }
            std::thread::sleep(Duration::from_millis(50));
            retry()?;
        }
    };
    wait_for(&mut notices, &Notice::Runs, &|| {
        b.create_run(&record(&format!("x{}", rand_suffix()), 2))
    })?;
    b.append("r1", None, &[(1, None, &Event::RunStarted { resumed: false })])?;
    wait_for(&mut notices, &Notice::Journal("r1".into()), &|| Ok(()))?;

    let id = b.request_action("r1", "pause", 10)?;
    wait_for(&mut notices, &Notice::Request("r1".into()), &|| Ok(()))?;
    assert!(matches!(
        b.request_action("ghost", "pause", 10),
        Err(StateError::UnknownRun(_))
    ));
    let pending = a.pending_requests(&["r1".into(), "r9".into()])?;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].id, pending[0].action.as_str(), pending[0].requested_at_ms),
        (id, "pause", 10)
    );
    assert_eq!(b.request_answer(id)?, None);
    a.answer_request(id, &ActionAnswer::Done("paused".into()), 11)?;
    a.answer_request(id, &ActionAnswer::Refused(409, "late".into()), 12)?;
    assert_eq!(b.request_answer(id)?, Some(ActionAnswer::Done("paused".into())));
    assert!(a.pending_requests(&["r1".into()])?.is_empty());

    let chunk = |first: i64, last: i64| LogChunk {
        first_seq: first,
        last_seq: last,
        body: (first..=last).map(|i| format!("{{\"n\":{i}}}\n")).collect(),
    };
    assert_eq!(a.last_log_seq("r1")?, 0);
    b.append_log_chunk("r1", &chunk(1, 3))?;
    wait_for(&mut notices, &Notice::Logs("r1".into()), &|| Ok(()))?;
    b.append_log_chunk("r1", &chunk(4, 4))?;
    b.append_log_chunk("r1", &chunk(5, 9))?;
    b.append_log_chunk("r1", &chunk(5, 9))?;
    assert_eq!(a.last_log_seq("r1")?, 9);
    assert_eq!(
        a.log_chunks_since("r1", 0, 10)?,
        [chunk(1, 3), chunk(4, 4), chunk(5, 9)]
    );
    // A chunk holding lines after 2 is returned whole.
    assert_eq!(a.log_chunks_since("r1", 2, 2)?, [chunk(1, 3), chunk(4, 4)]);
    assert!(a.log_chunks_since("r1", 9, 10)?.is_empty());
    Ok(())
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[test]
fn a_cut_network_is_an_error_in_bounded_time_and_the_store_works_again_after() -> TestResult {
    let Some(db) = cluster()? else { return Ok(()) };
    let proxy = Proxy::start(db.addr())?;
    let url = format!("postgres://drover@{}/postgres", proxy.addr());
    let pg = Pg::open(&url)?;
    pg.create_run(&record("r1", 1))?;
    proxy.cut();
    let started = Instant::now();
    let e = pg.run("r1");
    assert!(matches!(&e, Err(StateError::Pg(_))), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    let started = Instant::now();
    assert!(matches!(Pg::open(&url), Err(StateError::Pg(_))));
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    proxy.restore();
    // The pool makes new connections: the same store works again, and a new one.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.run("r1").is_err() {
        if Instant::now() > deadline {
            return Err("the store did not recover".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = Pg::open(&url)?;
    assert_eq!(again.run("r1")?.id, "r1");
    Ok(())
}

#[test]
fn a_store_used_and_dropped_inside_an_async_runtime() -> TestResult {
    let Some(db) = cluster()? else { return Ok(()) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = db.url();
    rt.block_on(async move {
        let pg = Pg::open(&url)?;
        pg.create_run(&record("r1", 1))?;
        assert_eq!(pg.run("r1")?.id, "r1");
        drop(pg);
        Ok::<(), StateError>(())
    })?;
    Ok(())
}
