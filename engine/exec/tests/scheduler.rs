//! The scheduler's semantics, exactly: the real scheduler, driven through
//! the run API (start, resume, retry, rollback) with a fake executor
//! (tests/support/fake.rs) on a paused tokio clock. Virtual time only
//! moves when everything waits on a timer (a journal write in flight holds
//! it), so every instant asserted here is exact, whatever the load of the
//! machine. Instants are ms since the fake was made, which is when the
//! run starts.
//!
//! Every run ends through `Harness::finish`, which also checks that the
//! journal ends with run_finished and the run's status, and that the
//! store's status is the fold of the journal.

mod support;

use drover_core::FailureKind;
use drover_exec::runner::Compensation;
use drover_exec::{Control, Status};
use drover_state::{Event, RunStatus};
use serde_json::{Value, json};
use support::fake::{
    Harness, Outcome, Probe, Step, UndoOutcome, UndoStep, events_of, ms, overlap, retry_delays, secs, seq_of,
};
use support::{no_retry, server, status_of, task};

fn servers(n: usize, taskservs: &[&str]) -> Vec<Value> {
    (0..n).map(|i| server(&format!("s{i}"), taskservs)).collect()
}

/// A server of provider `provider` (a declaration of tests/home/providers).
fn cloud(name: &str, provider: &str, zone: Option<&str>) -> Value {
    let mut s = json!({"hostname": name, "provider": provider, "plan": "small", "taskservs": []});
    if let Some(z) = zone {
        s["zone"] = json!(z);
    }
    s
}

fn policy(max_attempts: u32, backoff: &str, initial: u64, max: u64, jitter: bool) -> Value {
    json!({"max_attempts": max_attempts, "backoff": backoff, "initial_delay": initial, "max_delay": max, "jitter": jitter})
}

fn starts(t: &Harness, ids: &[String]) -> Vec<u64> {
    ids.iter().map(|id| t.fake.start_of(id)).collect()
}

fn ids(fmt: impl Fn(usize) -> String, n: usize) -> Vec<String> {
    (0..n).map(fmt).collect()
}

// ------------------------------------------------------------------ limits

#[tokio::test(start_paused = true)]
async fn the_global_max_parallel_is_the_observed_maximum_concurrency() {
    let t = Harness::new();
    let s = t
        .run(json!({
            "name": "bound", "max_parallel": 3, "servers": servers(8, &["a"]),
            "operations": [{"id": "install", "type": "create", "target": "taskserv"}],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    assert_eq!(t.fake.max_running(), 3);
    let installs = ids(|i| format!("install/a@s{i}"), 8);
    assert_eq!(starts(&t, &installs), [0, 0, 0, 1000, 1000, 1000, 2000, 2000]);
    assert_eq!(t.fake.now(), secs(3));
}

#[tokio::test(start_paused = true)]
async fn operation_max_parallel_and_parallel_false_bound_their_operation() {
    let t = Harness::new();
    let s = t
        .run(json!({
            "name": "op-bounds", "servers": servers(6, &["a"]),
            "operations": [
                {"id": "install", "type": "create", "target": "taskserv", "max_parallel": 2},
                {"id": "check", "type": "check", "target": "taskserv", "depends_on": ["install"], "parallel": false},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let installs = ids(|i| format!("install/a@s{i}"), 6);
    let checks = ids(|i| format!("check/a@s{i}"), 6);
    assert_eq!(starts(&t, &installs), [0, 0, 1000, 1000, 2000, 2000]);
    assert_eq!(starts(&t, &checks), [3000, 4000, 5000, 6000, 7000, 8000]);
    let spans = |ids: &[String]| -> Vec<(u64, u64)> { ids.iter().flat_map(|i| t.fake.spans(i)).collect() };
    assert_eq!(overlap(&spans(&installs)), 2);
    assert_eq!(overlap(&spans(&checks)), 1);
}

/// `metered` (tests/home/providers) allows 2 calls in flight and starts 2
/// a second from a bucket of 2: with calls that end at once only the rate
/// binds, and the k-th start is where the bucket has a token again.
#[tokio::test(start_paused = true)]
async fn the_provider_rate_limit_gives_exact_start_instants() {
    let t = Harness::new();
    t.fake.default_step(Step::Ok(ms(0)));
    let servers: Vec<Value> = (0..6).map(|i| cloud(&format!("m{i}"), "metered", None)).collect();
    let s = t
        .run(json!({
            "name": "rate", "servers": servers,
            "operations": [{"id": "create", "type": "create", "target": "server"}],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let creates = ids(|i| format!("create/m{i}"), 6);
    assert_eq!(starts(&t, &creates), [0, 0, 500, 1000, 1500, 2000]);
}

/// With long calls only batch_size binds: two in flight, the next two
/// when they end (the bucket has refilled by then).
#[tokio::test(start_paused = true)]
async fn the_provider_batch_size_bounds_calls_in_flight() {
    let t = Harness::new();
    t.fake.default_step(Step::Ok(secs(10)));
    let servers: Vec<Value> = (0..5).map(|i| cloud(&format!("m{i}"), "metered", None)).collect();
    let s = t
        .run(json!({
            "name": "batch", "servers": servers,
            "operations": [{"id": "create", "type": "create", "target": "server"}],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let creates = ids(|i| format!("create/m{i}"), 5);
    assert_eq!(starts(&t, &creates), [0, 0, 10_000, 10_000, 20_000]);
    assert_eq!(t.fake.max_running(), 2);
}

/// `zoned` servers of one zone share a vpc: their calls never overlap;
/// calls in different zones do.
#[tokio::test(start_paused = true)]
async fn calls_sharing_a_resource_in_one_zone_never_overlap_across_zones_they_do() {
    let t = Harness::new();
    let s = t
        .run(json!({
            "name": "zones",
            "servers": [
                cloud("f0", "zoned", Some("fra")), cloud("f1", "zoned", Some("fra")), cloud("f2", "zoned", Some("fra")),
                cloud("h0", "zoned", Some("hel")), cloud("h1", "zoned", Some("hel")),
            ],
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
                {"id": "delete", "type": "delete", "target": "server", "depends_on": ["create"]},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    for op in ["create", "delete"] {
        let fra: Vec<(u64, u64)> = ["f0", "f1", "f2"]
            .iter()
            .flat_map(|h| t.fake.spans(&format!("{op}/{h}")))
            .collect();
        let hel: Vec<(u64, u64)> = ["h0", "h1"]
            .iter()
            .flat_map(|h| t.fake.spans(&format!("{op}/{h}")))
            .collect();
        assert_eq!(overlap(&fra), 1, "{op} in fra: {fra:?}");
        assert_eq!(overlap(&hel), 1, "{op} in hel: {hel:?}");
        assert_eq!(
            overlap(&[fra.clone(), hel.clone()].concat()),
            2,
            "{op}: the zones overlap"
        );
    }
    let creates: Vec<String> = ["f0", "f1", "f2", "h0", "h1"]
        .iter()
        .map(|h| format!("create/{h}"))
        .collect();
    assert_eq!(starts(&t, &creates), [0, 1000, 2000, 0, 1000]);
    let deletes: Vec<String> = ["f0", "f1", "f2", "h0", "h1"]
        .iter()
        .map(|h| format!("delete/{h}"))
        .collect();
    assert_eq!(starts(&t, &deletes), [3000, 4000, 5000, 3000, 4000]);
}

// ----------------------------------------------------------------- retries

#[tokio::test(start_paused = true)]
async fn linear_retry_delays_are_exact_without_jitter() {
    let t = Harness::new();
    t.fake.script("install/a@s0", Step::fail_then_ok(3, secs(1)));
    let h = t.start(json!({
        "name": "linear", "servers": servers(1, &["a"]),
        "retry_policy": policy(4, "linear", 1, 10, false),
        "operations": [{"id": "install", "type": "create", "target": "taskserv"}],
    }));
    let id = h.run_id.clone();
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    // Delays 1, 2, 3 s after attempts of 1 s.
    assert_eq!(
        t.fake.spans("install/a@s0"),
        [(0, 1000), (2000, 3000), (5000, 6000), (9000, 10_000)]
    );
    let attempts: Vec<u32> = t.fake.attempts_of("install/a@s0").iter().map(|a| a.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    assert_eq!(retry_delays(&t.journal(&id), "install/a@s0"), [1000, 2000, 3000]);
    assert_eq!(task(&s, "install/a@s0").attempts, 4);
}

#[tokio::test(start_paused = true)]
async fn exponential_retry_delays_are_capped_at_max_delay() {
    let t = Harness::new();
    t.fake.script("install/a@s0", Step::fail_then_ok(4, secs(1)));
    let h = t.start(json!({
        "name": "exponential", "servers": servers(1, &["a"]),
        "retry_policy": policy(5, "exponential", 2, 5, false),
        "operations": [{"id": "install", "type": "create", "target": "taskserv"}],
    }));
    let id = h.run_id.clone();
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    // 2, 4, then 8 and 16 capped at 5.
    assert_eq!(retry_delays(&t.journal(&id), "install/a@s0"), [2000, 4000, 5000, 5000]);
    assert_eq!(
        t.fake.spans("install/a@s0"),
        [
            (0, 1000),
            (3000, 4000),
            (8000, 9000),
            (14_000, 15_000),
            (20_000, 21_000)
        ]
    );
}

/// Jitter draws each delay from the upper half of the policy's delay,
/// from the run's seed: the same seed, the same delays; the attempt waits
/// exactly what the journal announced.
#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_within_the_upper_half_and_follow_the_seed() {
    async fn delays(seed: u64) -> Vec<u64> {
        let mut t = Harness::new();
        t.opts.seed = seed;
        t.fake.script("install/a@s0", Step::fail_then_ok(4, secs(1)));
        let h = t.start(json!({
            "name": "jitter", "servers": servers(1, &["a"]),
            "retry_policy": policy(5, "exponential", 2, 5, true),
            "operations": [{"id": "install", "type": "create", "target": "taskserv"}],
        }));
        let id = h.run_id.clone();
        let s = t.finish(h).await;
        assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
        let delays = retry_delays(&t.journal(&id), "install/a@s0");
        let spans = t.fake.spans("install/a@s0");
        let gaps: Vec<u64> = spans.windows(2).map(|w| w[1].0 - w[0].1).collect();
        assert_eq!(gaps, delays, "each attempt waited exactly the announced delay");
        for (d, full) in delays.iter().zip([2000u64, 4000, 5000, 5000]) {
            assert!(*d >= full / 2 && *d <= full, "{d} not within [{}, {full}]", full / 2);
        }
        delays
    }
    let first = delays(42).await;
    assert_eq!(delays(42).await, first, "the same seed, the same delays");
    assert_ne!(delays(7).await, first, "another seed, other delays");
}

/// max_attempts counts the attempts of one round: a `retry` of the run
/// starts a new round with the whole budget (and delays from the start),
/// attempt numbers going on.
#[tokio::test(start_paused = true)]
async fn max_attempts_is_counted_per_round() {
    let t = Harness::new();
    t.fake.script("install/a@s0", [Step::transient(secs(1))]);
    let h = t.start(json!({
        "name": "rounds", "servers": servers(1, &["a"]),
        "retry_policy": policy(2, "linear", 1, 10, false),
        "operations": [{"id": "install", "type": "create", "target": "taskserv"}],
    }));
    let id = h.run_id.clone();
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert_eq!(t.fake.spans("install/a@s0"), [(0, 1000), (2000, 3000)]);
    let s = t.finish(t.retry(&id, None)).await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    let attempts: Vec<u32> = t.fake.attempts_of("install/a@s0").iter().map(|a| a.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    assert_eq!(
        t.fake.spans("install/a@s0"),
        [(0, 1000), (2000, 3000), (3000, 4000), (5000, 6000)]
    );
    assert_eq!(retry_delays(&t.journal(&id), "install/a@s0"), [1000, 1000]);
    assert_eq!(task(&s, "install/a@s0").attempts, 4);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_is_not_retried_a_transient_one_is() {
    let t = Harness::new();
    t.fake.script("install/a@s0", [Step::permanent(secs(1))]);
    t.fake.script("install/a@s1", [Step::transient(secs(1))]);
    let h = t.start(json!({
        "name": "kinds", "servers": servers(2, &["a"]),
        "retry_policy": policy(3, "linear", 1, 10, false),
        "operations": [{"id": "install", "type": "create", "target": "taskserv", "on_failure": "continue"}],
    }));
    let id = h.run_id.clone();
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    // Permanent: one attempt, failed at once.
    assert_eq!(t.fake.spans("install/a@s0"), [(0, 1000)]);
    assert_eq!(task(&s, "install/a@s0").failure, Some(FailureKind::Permanent));
    assert_eq!(task(&s, "install/a@s0").attempts, 1);
    // Transient: the whole budget, with the delays.
    assert_eq!(t.fake.spans("install/a@s1"), [(0, 1000), (2000, 3000), (5000, 6000)]);
    assert_eq!(task(&s, "install/a@s1").failure, Some(FailureKind::Transient));
    let failed = |node: &str| -> Vec<(FailureKind, bool)> {
        t.journal(&id)
            .iter()
            .filter(|e| e.node.as_deref() == Some(node))
            .filter_map(|e| match e.event {
                Event::TaskFailed { kind, will_retry, .. } => Some((kind, will_retry)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(failed("install/a@s0"), [(FailureKind::Permanent, false)]);
    assert_eq!(
        failed("install/a@s1"),
        [
            (FailureKind::Transient, true),
            (FailureKind::Transient, true),
            (FailureKind::Transient, false)
        ]
    );
}

/// A panicking executor is a failed attempt (permanent: retrying a bug
/// does not help), and the run goes on and ends.
#[tokio::test(start_paused = true)]
async fn an_executor_that_panics_fails_the_attempt_and_the_run_ends() {
    let t = Harness::new();
    t.fake.script("install/a@s0", [Step::Panic(secs(1))]);
    t.fake.script("install/a@s1", [Step::ok(secs(3))]);
    let s = t
        .run(json!({
            "name": "panic", "servers": servers(2, &["a", "b"]),
            "retry_policy": policy(3, "linear", 1, 10, false),
            "operations": [{"id": "install", "type": "create", "target": "taskserv", "on_failure": "continue"}],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    let a = t.fake.attempts_of("install/a@s0");
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].outcome, Outcome::Panicked);
    assert_eq!(status_of(&s, "install/a@s0"), Status::Failed);
    assert_eq!(task(&s, "install/a@s0").failure, Some(FailureKind::Permanent));
    let why = task(&s, "install/a@s0").error.clone().unwrap_or_default();
    assert!(why.contains("panicked"), "{why}");
    // b on s0 needs a: skipped; s1 goes on; the run ends when s1 is done.
    assert_eq!(status_of(&s, "install/b@s0"), Status::Skipped);
    assert_eq!(t.fake.spans("install/b@s1"), [(3000, 4000)]);
    assert_eq!(t.fake.now(), secs(4));
}

// ------------------------------------------------- pipelines and failures

/// Per server, taskservs follow `requires` (b and c after a, d after both);
/// servers do not wait for each other; the next operation waits for the
/// whole previous one (its barrier).
#[tokio::test(start_paused = true)]
async fn per_server_pipelines_follow_requires_and_operation_barriers_hold() {
    let t = Harness::new();
    t.fake.script("install/b@s0", [Step::ok(secs(5))]);
    let s = t
        .run(json!({
            "name": "pipe", "servers": servers(2, &["a", "b", "c", "d"]),
            "operations": [
                {"id": "install", "type": "create", "target": "taskserv"},
                {"id": "check", "type": "check", "target": "taskserv", "depends_on": ["install"]},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let spans = |srv: &str| -> Vec<(u64, u64)> {
        ["a", "b", "c", "d"]
            .iter()
            .flat_map(|ts| t.fake.spans(&format!("install/{ts}@{srv}")))
            .collect()
    };
    assert_eq!(spans("s0"), [(0, 1000), (1000, 6000), (1000, 2000), (6000, 7000)]);
    assert_eq!(spans("s1"), [(0, 1000), (1000, 2000), (1000, 2000), (2000, 3000)]);
    // The checks, a pipeline too, start together when the last install
    // has ended.
    for srv in ["s0", "s1"] {
        let checks: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|ts| format!("check/{ts}@{srv}"))
            .collect();
        assert_eq!(starts(&t, &checks), [7000, 8000, 8000, 9000], "{srv}");
    }
}

/// on_failure = fail: no new on_success work starts; what runs finishes.
#[tokio::test(start_paused = true)]
async fn on_failure_fail_halts_new_work_and_lets_running_tasks_finish() {
    let t = Harness::new();
    t.fake.script("install/a@s0", [Step::permanent(secs(1))]);
    t.fake.script("install/a@s1", [Step::ok(secs(3))]);
    let h = t.start(json!({
        "name": "halt", "retry_policy": no_retry(), "servers": servers(2, &["a", "b"]),
        "operations": [
            {"id": "install", "type": "create", "target": "taskserv", "on_failure": "fail"},
            {"id": "check", "type": "check", "target": "taskserv", "depends_on": ["install"]},
        ],
    }));
    let id = h.run_id.clone();
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert!(s.reason.contains("install/a@s0 failed"), "{}", s.reason);
    assert_eq!(t.fake.now(), secs(3), "the run ends when a@s1 has finished");
    assert_eq!(t.fake.spans("install/a@s1"), [(0, 3000)]);
    assert_eq!(status_of(&s, "install/a@s1"), Status::Succeeded);
    let j = t.journal(&id);
    assert!(seq_of(&j, "install/a@s1", "task_started") < seq_of(&j, "install/a@s0", "task_failed"));
    // b@s1 became ready after the halt: skipped, never run; so is the
    // later operation.
    assert!(t.fake.attempts_of("install/b@s1").is_empty());
    let why = task(&s, "install/b@s1").error.clone().unwrap_or_default();
    assert!(why.starts_with("run halted"), "{why}");
    assert!(t.fake.attempts().iter().all(|a| !a.task.starts_with("check/")));
    for c in ["check/a@s0", "check/a@s1", "check/b@s1"] {
        assert_eq!(status_of(&s, c), Status::Skipped, "{c}");
    }
}

/// on_failure = continue: only what hard-depends on the failed task is
/// skipped; everything else runs.
#[tokio::test(start_paused = true)]
async fn on_failure_continue_skips_only_hard_dependents() {
    let t = Harness::new();
    t.fake.script("create/s2", [Step::permanent(secs(1))]);
    t.fake.script("install/b@s0", [Step::permanent(secs(1))]);
    let all = ["a", "b", "c", "d"];
    let s = t
        .run(json!({
            "name": "continue", "retry_policy": no_retry(),
            "servers": [server("s0", &all), server("s1", &all), server("s2", &["a"])],
            "operations": [
                {"id": "create", "type": "create", "target": "server", "on_failure": "continue"},
                {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "on_failure": "continue"},
                {"id": "check", "type": "check", "target": "taskserv", "items": ["a", "c", "d"], "depends_on": ["install"], "on_failure": "continue"},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    for skipped in ["install/d@s0", "check/d@s0", "install/a@s2", "check/a@s2"] {
        assert_eq!(status_of(&s, skipped), Status::Skipped, "{skipped}");
        let why = task(&s, skipped).error.clone().unwrap_or_default();
        assert!(why.ends_with("did not succeed"), "{skipped}: {why}");
        assert!(t.fake.attempts_of(skipped).is_empty(), "{skipped} ran");
    }
    for ran in ["install/a@s0", "install/c@s0", "check/a@s0", "check/c@s0"] {
        assert_eq!(status_of(&s, ran), Status::Succeeded, "{ran}");
    }
    for ts in all {
        assert_eq!(status_of(&s, &format!("install/{ts}@s1")), Status::Succeeded);
    }
    for ts in ["a", "c", "d"] {
        assert_eq!(t.fake.attempts_of(&format!("check/{ts}@s1")).len(), 1);
    }
}

// ---------------------------------------------------------------- timeouts

#[tokio::test(start_paused = true)]
async fn the_workflow_timeout_stops_the_run_at_its_deadline() {
    let t = Harness::new();
    t.fake.script("install/a@s0", [Step::ok(secs(100))]);
    let s = t
        .run(json!({
            "name": "wf-timeout", "timeout": 10, "retry_policy": no_retry(),
            "servers": servers(2, &["a", "b"]),
            "operations": [{"id": "install", "type": "create", "target": "taskserv"}],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert!(s.reason.contains("workflow timeout of 10s"), "{}", s.reason);
    assert_eq!(t.fake.now(), secs(10), "the run ends at the deadline");
    let a = t.fake.attempts_of("install/a@s0");
    assert_eq!((a[0].end, a[0].outcome), (Some(secs(10)), Outcome::Cancelled));
    assert_eq!(status_of(&s, "install/a@s0"), Status::Cancelled);
    assert_eq!(status_of(&s, "install/b@s0"), Status::Cancelled);
    assert!(t.fake.attempts_of("install/b@s0").is_empty());
    // s1 was done long before.
    assert_eq!(t.fake.spans("install/b@s1"), [(1000, 2000)]);
    assert_eq!(status_of(&s, "install/b@s1"), Status::Succeeded);
}

/// A failure asked for a rollback, then the workflow timeout stopped what
/// still ran: the rollback still happens (the timeout bounds the work,
/// not its undoing).
#[tokio::test(start_paused = true)]
async fn a_rollback_asked_for_before_the_workflow_timeout_still_runs() {
    let t = Harness::new();
    t.fake.script("install/a@s0", [Step::permanent(secs(1))]);
    t.fake.script("install/a@s2", [Step::ok(secs(100))]);
    let s = t
        .run(json!({
            "name": "timeout-rollback", "timeout": 10, "retry_policy": no_retry(),
            "servers": servers(3, &["a"]),
            "operations": [{"id": "install", "type": "create", "target": "taskserv", "on_failure": "rollback"}],
        }))
        .await;
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    assert!(
        s.reason.contains("install/a@s0 failed") && s.reason.contains("workflow timeout of 10s"),
        "{}",
        s.reason
    );
    assert_eq!(t.fake.undone(), ["install/a@s1"]);
    assert_eq!(t.fake.undos()[0].start, secs(10));
    assert_eq!(status_of(&s, "install/a@s2"), Status::Cancelled);
}

// ----------------------------------------------------------------- rolling

fn rolling(on_failure: &str) -> Value {
    json!({
        "name": format!("rolling-{on_failure}"), "retry_policy": no_retry(), "servers": servers(6, &["a"]),
        "operations": [
            {"id": "install", "type": "create", "target": "taskserv", "on_failure": on_failure,
             "rolling": {"batch_size": 2, "pause": 5, "failure_threshold": 34.0}},
            {"id": "verify", "type": "check", "target": "taskserv", "depends_on": ["install"]},
        ],
    })
}

fn installs() -> Vec<String> {
    ids(|i| format!("install/a@s{i}"), 6)
}

#[tokio::test(start_paused = true)]
async fn rolling_batches_run_in_order_with_the_exact_pause_between() {
    let t = Harness::new();
    let s = t.run(rolling("fail")).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    // 1 s per batch, 5 s pause after each.
    assert_eq!(starts(&t, &installs()), [0, 0, 6000, 6000, 12_000, 12_000]);
    let verify = ids(|i| format!("verify/a@s{i}"), 6);
    assert_eq!(starts(&t, &verify), [13_000; 6]);
}

/// One failed server of six is 17%, within the 34% threshold: the roll
/// goes on to its end whatever on_failure says, and the operation counts
/// as succeeded (what follows it runs).
#[tokio::test(start_paused = true)]
async fn a_rolling_failure_within_the_threshold_is_tolerated_for_every_on_failure() {
    for on_failure in ["fail", "continue", "rollback"] {
        let t = Harness::new();
        t.fake.script("install/a@s1", [Step::permanent(secs(1))]);
        let s = t.run(rolling(on_failure)).await;
        assert_eq!(s.status, RunStatus::Failed, "{on_failure}: {}", s.reason);
        assert!(
            s.reason.contains("within the rolling failure threshold"),
            "{on_failure}: {}",
            s.reason
        );
        assert_eq!(
            starts(&t, &installs()),
            [0, 0, 6000, 6000, 12_000, 12_000],
            "{on_failure}"
        );
        for i in [0, 2, 3, 4, 5] {
            assert_eq!(
                status_of(&s, &format!("install/a@s{i}")),
                Status::Succeeded,
                "{on_failure}"
            );
        }
        assert_eq!(status_of(&s, "verify/a@s0"), Status::Succeeded, "{on_failure}");
        assert!(t.fake.undos().is_empty(), "{on_failure}: nothing rolled back");
    }
}

/// Three failed servers of six (50%) exceed 34%: the roll halts, its
/// queued servers are skipped naming the halt, then on_failure applies.
#[tokio::test(start_paused = true)]
async fn a_rolling_failure_above_the_threshold_halts_the_roll_then_on_failure_applies() {
    for on_failure in ["fail", "continue", "rollback"] {
        let t = Harness::new();
        for i in [1, 2, 3] {
            t.fake.script(&format!("install/a@s{i}"), [Step::permanent(secs(1))]);
        }
        let s = t.run(rolling(on_failure)).await;
        let halt =
            "rolling update of install halted: 3 of 6 servers failed (50%), more than the 2 tolerated (threshold 34%)";
        // Batches 1 and 2 ran; batch 3 was queued and is skipped.
        assert_eq!(t.fake.spans("install/a@s2"), [(6000, 7000)], "{on_failure}");
        for i in [4, 5] {
            let id = format!("install/a@s{i}");
            assert!(t.fake.attempts_of(&id).is_empty(), "{on_failure}: {id} ran");
            assert_eq!(status_of(&s, &id), Status::Skipped, "{on_failure}");
            assert_eq!(task(&s, &id).error.as_deref(), Some(halt), "{on_failure}");
        }
        match on_failure {
            "fail" => {
                assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
                assert_eq!(s.reason, format!("halted: {halt}"));
                // What follows on success does not run.
                for i in 0..6 {
                    assert_eq!(status_of(&s, &format!("verify/a@s{i}")), Status::Skipped);
                }
                let why = task(&s, "verify/a@s0").error.clone().unwrap_or_default();
                assert_eq!(why, "condition on_success not met: install did not succeed");
                assert!(t.fake.attempts().iter().all(|a| !a.task.starts_with("verify/")));
                assert!(t.fake.undos().is_empty());
                assert_eq!(t.fake.now(), secs(7));
            }
            "rollback" => {
                assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
                assert!(s.reason.starts_with(halt), "{}", s.reason);
                assert_eq!(t.fake.undone(), ["install/a@s0"]);
            }
            _ => {
                // continue: the failures are the operation's own; what
                // follows goes on.
                assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
                assert!(
                    !s.reason.contains("within the rolling failure threshold"),
                    "the threshold was exceeded: {}",
                    s.reason
                );
                // (verify/a@sN hard-depends on install/a@sN: only s0's runs.)
                assert_eq!(t.fake.spans("verify/a@s0"), [(7000, 8000)]);
                for i in 1..6 {
                    let why = task(&s, &format!("verify/a@s{i}")).error.clone().unwrap_or_default();
                    assert_eq!(why, format!("install/a@s{i} did not succeed"));
                }
                assert!(t.fake.undos().is_empty());
            }
        }
    }
}

/// A roll that halted before an abort is still a failed operation after
/// the resume: the on_failure cleanup that waits for it runs.
#[tokio::test(start_paused = true)]
async fn a_halted_roll_still_counts_as_failed_after_a_resume() {
    let t = Harness::new();
    for i in [1, 2, 3] {
        t.fake.script(&format!("install/a@s{i}"), [Step::permanent(secs(1))]);
    }
    t.fake.script("slow/a@s6", [Step::Hang, Step::ok(secs(1))]);
    let rolled: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    let h = t.start(json!({
        "name": "halted-resume", "retry_policy": no_retry(), "servers": servers(7, &["a"]),
        "operations": [
            {"id": "install", "type": "create", "target": "taskserv", "selector": {"servers": rolled}, "on_failure": "fail",
             "rolling": {"batch_size": 2, "pause": 5, "failure_threshold": 34.0}},
            {"id": "slow", "type": "create", "target": "taskserv", "selector": {"servers": ["s6"]}},
            {"id": "cleanup", "type": "delete", "target": "taskserv", "selector": {"servers": ["s0"]},
             "depends_on": ["install", "slow"], "condition": "on_failure"},
        ],
    }));
    let id = h.run_id.clone();
    // The roll halts at 7 s; slow still runs at 10 s.
    t.control_at(&h, secs(10), Control::Abort).await;
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Aborted, "{}", s.reason);
    assert_eq!(status_of(&s, "install/a@s4"), Status::Skipped);
    let s = t.finish(t.resume(&id)).await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert_eq!(
        status_of(&s, "cleanup/a@s0"),
        Status::Succeeded,
        "{:?}",
        task(&s, "cleanup/a@s0").error
    );
    assert_eq!(t.fake.attempts_of("cleanup/a@s0").len(), 1);
}

/// The second batch's servers could not be created, so their installs
/// are skipped long before their turn: the batch counts as passed and the
/// third one runs after the first and the pause.
#[tokio::test(start_paused = true)]
async fn a_rolling_batch_whose_tasks_were_all_skipped_is_passed() {
    let t = Harness::new();
    for h in ["s2", "s3"] {
        t.fake.script(&format!("create/{h}"), [Step::permanent(secs(1))]);
    }
    let s = t
        .run(json!({
            "name": "rolling-gap", "retry_policy": no_retry(), "servers": servers(6, &["a"]),
            "operations": [
                {"id": "create", "type": "create", "target": "server", "on_failure": "continue"},
                {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "on_failure": "continue",
                 "rolling": {"batch_size": 2, "pause": 5, "failure_threshold": 34.0}},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    for h in ["s2", "s3"] {
        assert_eq!(status_of(&s, &format!("install/a@{h}")), Status::Skipped);
        assert!(t.fake.attempts_of(&format!("install/a@{h}")).is_empty());
    }
    let ran: Vec<String> = ["s0", "s1", "s4", "s5"]
        .iter()
        .map(|h| format!("install/a@{h}"))
        .collect();
    assert_eq!(starts(&t, &ran), [1000, 1000, 7000, 7000]);
}

// -------------------------------------------------------- operator controls

#[tokio::test(start_paused = true)]
async fn pause_holds_new_tasks_and_resume_continues() {
    let t = Harness::new();
    t.fake.script("install/a@s0", [Step::ok(secs(10))]);
    let h = t.start(json!({
        "name": "pause", "servers": servers(1, &["a", "b"]),
        "operations": [{"id": "install", "type": "create", "target": "taskserv"}],
    }));
    let id = h.run_id.clone();
    t.control_at(&h, secs(5), Control::Pause).await;
    // a ends at 10 s; b is ready then, and waits.
    t.until(secs(15)).await;
    assert_eq!(t.status(&id), RunStatus::Paused);
    assert_eq!(t.fake.spans("install/a@s0"), [(0, 10_000)]);
    assert!(t.fake.attempts_of("install/b@s0").is_empty(), "b started while paused");
    assert!(events_of(&t.journal(&id), "install/b@s0", "task_started").is_empty());
    t.control_at(&h, secs(20), Control::Resume).await;
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    assert_eq!(t.fake.spans("install/b@s0"), [(20_000, 21_000)]);
    let j = t.journal(&id);
    let run_events: Vec<&Event> = j
        .iter()
        .filter(|e| matches!(e.event, Event::RunPaused | Event::RunUnpaused))
        .map(|e| &e.event)
        .collect();
    assert_eq!(run_events, [&Event::RunPaused, &Event::RunUnpaused]);
}

fn three_pipelines() -> Value {
    json!({
        "name": "controls", "retry_policy": no_retry(), "servers": servers(2, &["a", "b"]),
        "operations": [
            {"id": "install", "type": "create", "target": "taskserv"},
            {"id": "more", "type": "check", "target": "taskserv", "depends_on": ["install"]},
        ],
    })
}

#[tokio::test(start_paused = true)]
async fn cancel_cancels_running_attempts_and_idle_tasks() {
    let t = Harness::new();
    t.fake.script("install/a@s0", [Step::Hang]);
    t.fake.script("install/b@s1", [Step::ok(secs(100))]);
    let h = t.start(three_pipelines());
    let id = h.run_id.clone();
    t.control_at(&h, secs(5), Control::Cancel).await;
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Cancelled, "{}", s.reason);
    assert_eq!(t.fake.now(), secs(5));
    // Both running attempts saw their token at 5 s.
    for running in ["install/a@s0", "install/b@s1"] {
        let a = t.fake.attempts_of(running);
        assert_eq!(
            (a[0].end, a[0].outcome),
            (Some(secs(5)), Outcome::Cancelled),
            "{running}"
        );
        assert_eq!(status_of(&s, running), Status::Cancelled);
    }
    // Idle ones never started.
    for idle in ["install/b@s0", "more/a@s0", "more/b@s1"] {
        assert_eq!(status_of(&s, idle), Status::Cancelled, "{idle}");
        assert!(t.fake.attempts_of(idle).is_empty(), "{idle}");
    }
    assert_eq!(status_of(&s, "install/a@s1"), Status::Succeeded);
    // Each node ends once.
    let mut ended = std::collections::HashMap::new();
    for e in t.journal(&id) {
        if matches!(
            e.event,
            Event::TaskCancelled { .. } | Event::TaskSucceeded { .. } | Event::TaskSkipped { .. }
        ) {
            *ended.entry(e.node.clone()).or_insert(0) += 1;
        }
    }
    assert!(ended.values().all(|&n| n == 1), "a node ended twice: {ended:?}");
}

#[tokio::test(start_paused = true)]
async fn abort_ends_aborted_and_abort_while_paused_ends_paused() {
    let t = Harness::new();
    t.fake.script("install/a@s0", [Step::Hang]);
    let h = t.start(three_pipelines());
    t.control_at(&h, secs(5), Control::Abort).await;
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Aborted, "{}", s.reason);
    assert_eq!(t.fake.now(), secs(5));
    assert_eq!(t.fake.attempts_of("install/a@s0")[0].outcome, Outcome::Cancelled);

    let t = Harness::new();
    t.fake.script("install/a@s0", [Step::Hang]);
    let h = t.start(three_pipelines());
    t.control_at(&h, secs(3), Control::Pause).await;
    t.control_at(&h, secs(5), Control::Abort).await;
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Paused, "{}", s.reason);
    assert_eq!(t.fake.attempts_of("install/a@s0")[0].outcome, Outcome::Cancelled);
}

/// A resume after an abort runs nothing that succeeded again, and runs
/// the interrupted attempt again as the same attempt (same key).
#[tokio::test(start_paused = true)]
async fn a_resume_after_abort_reruns_only_the_interrupted_attempt_as_the_same_attempt() {
    let t = Harness::new();
    t.fake.script("install/b@s0", [Step::Hang, Step::ok(secs(1))]);
    let h = t.start(three_pipelines());
    let id = h.run_id.clone();
    t.control_at(&h, secs(5), Control::Abort).await;
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Aborted, "{}", s.reason);
    let succeeded: Vec<String> = s
        .tasks
        .iter()
        .filter(|t| t.status == Status::Succeeded)
        .map(|t| t.task.clone())
        .collect();
    assert_eq!(succeeded, ["install/a@s0", "install/a@s1", "install/b@s1"]);

    let s = t.finish(t.resume(&id)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    for done in &succeeded {
        assert_eq!(t.fake.attempts_of(done).len(), 1, "{done} ran again");
    }
    let b: Vec<(u32, Outcome)> = t
        .fake
        .attempts_of("install/b@s0")
        .iter()
        .map(|a| (a.attempt, a.outcome))
        .collect();
    assert_eq!(b, [(1, Outcome::Cancelled), (1, Outcome::Succeeded)]);
    let keys: Vec<String> = events_of(&t.journal(&id), "install/b@s0", "task_started")
        .iter()
        .filter_map(|e| match &e.event {
            Event::TaskStarted { idempotency_key, .. } => Some(idempotency_key.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(keys, [format!("{id}/install/b@s0"), format!("{id}/install/b@s0")]);
    assert_eq!(t.fake.attempts_of("more/b@s0").len(), 1);
}

// ---------------------------------------------- conditions and dependencies

#[tokio::test(start_paused = true)]
async fn operation_conditions_on_success_on_failure_and_always() {
    let wf = |name: &str| {
        json!({
            "name": name, "retry_policy": no_retry(), "servers": servers(1, &["a", "noremove"]),
            "operations": [
                {"id": "main", "type": "create", "target": "taskserv", "items": ["a"]},
                {"id": "cleanup", "type": "delete", "target": "taskserv", "items": ["a"], "depends_on": ["main"], "condition": "on_failure"},
                {"id": "always", "type": "create", "target": "taskserv", "items": ["noremove"], "depends_on": ["main"], "condition": "always"},
                {"id": "next", "type": "check", "target": "taskserv", "items": ["a"], "depends_on": ["main"]},
            ],
        })
    };
    // The upstream fails: cleanup and always run, next does not.
    let t = Harness::new();
    t.fake.script("main/a@s0", [Step::permanent(secs(1))]);
    let s = t.run(wf("failing")).await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert_eq!(t.fake.spans("cleanup/a@s0"), [(1000, 2000)]);
    assert_eq!(t.fake.spans("always/noremove@s0"), [(1000, 2000)]);
    assert!(t.fake.attempts_of("next/a@s0").is_empty());
    assert_eq!(status_of(&s, "next/a@s0"), Status::Skipped);
    // The upstream succeeds: always and next run, cleanup does not.
    let t = Harness::new();
    let s = t.run(wf("passing")).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    assert!(t.fake.attempts_of("cleanup/a@s0").is_empty());
    assert_eq!(status_of(&s, "cleanup/a@s0"), Status::Skipped);
    let why = task(&s, "cleanup/a@s0").error.clone().unwrap_or_default();
    assert!(why.contains("on_failure"), "{why}");
    assert_eq!(t.fake.spans("always/noremove@s0"), [(1000, 2000)]);
    assert_eq!(t.fake.spans("next/a@s0"), [(1000, 2000)]);
}

fn on(id: &str, host: &str) -> Value {
    json!({"id": id, "type": "create", "target": "taskserv", "selector": {"servers": [host]}, "on_failure": "continue"})
}

#[tokio::test(start_paused = true)]
async fn dependency_types_hard_soft_and_optional() {
    let t = Harness::new();
    t.fake.script("hard_target/a@s0", [Step::permanent(secs(1))]);
    t.fake.script("soft_target/a@s2", [Step::permanent(secs(2))]);
    t.fake.script("optional_target/a@s5", [Step::ok(secs(10))]);
    let s = t
        .run(json!({
            "name": "deps", "retry_policy": no_retry(), "servers": servers(7, &["a"]),
            "operations": [
                on("hard_target", "s0"), on("hard_source", "s1"),
                on("soft_target", "s2"), on("soft_source", "s3"),
                on("optional_absent", "s4"),
                on("optional_target", "s5"), on("optional_source", "s6"),
            ],
            "dependencies": [
                {"source": "operation.hard_source", "target": "operation.hard_target", "type": "hard"},
                {"source": "operation.soft_source", "target": "server.s2", "type": "soft"},
                // No server carries noremove: nothing to wait for.
                {"source": "operation.optional_absent", "target": "taskserv.noremove", "type": "optional"},
                {"source": "operation.optional_source", "target": "operation.optional_target", "type": "optional"},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    // hard: the target failed, the source is skipped.
    assert_eq!(status_of(&s, "hard_source/a@s1"), Status::Skipped);
    assert!(t.fake.attempts_of("hard_source/a@s1").is_empty());
    // soft: the target failed, the source runs when it ended.
    assert_eq!(t.fake.spans("soft_source/a@s3"), [(2000, 3000)]);
    // optional, target not in the plan: no wait.
    assert_eq!(t.fake.spans("optional_absent/a@s4"), [(0, 1000)]);
    // optional, target in the plan: ordering.
    assert_eq!(t.fake.spans("optional_source/a@s6"), [(10_000, 11_000)]);
}

/// A wait condition is probed when its target is done, every interval,
/// and a last time at its deadline; its source starts at the probe that
/// holds, or is skipped when none did.
#[tokio::test(start_paused = true)]
async fn wait_conditions_are_polled_every_interval_until_true_or_their_timeout() {
    let t = Harness::new();
    t.fake.probe("ready", Probe::FromCall(3));
    t.fake.probe("never", Probe::Never);
    let wait =
        |cmd: &str, timeout: u64, interval: u64| json!({"command": cmd, "timeout": timeout, "interval": interval});
    let s = t
        .run(json!({
            "name": "wait", "retry_policy": no_retry(), "servers": servers(3, &["a"]),
            "operations": [on("first", "s0"), on("waits", "s1"), on("blocked", "s2")],
            "dependencies": [
                {"source": "operation.waits", "target": "operation.first", "type": "hard", "wait_condition": wait("ready", 10, 2)},
                {"source": "operation.blocked", "target": "operation.first", "type": "hard", "wait_condition": wait("never", 10, 3)},
            ],
        }))
        .await;
    // first ends at 1 s; ready holds at its third probe.
    assert_eq!(t.fake.probes_of("ready"), [1000, 3000, 5000]);
    assert_eq!(t.fake.spans("waits/a@s1"), [(5000, 6000)]);
    // never: every 3 s, and a last time at the 10 s deadline.
    assert_eq!(t.fake.probes_of("never"), [1000, 4000, 7000, 10_000, 11_000]);
    assert_eq!(status_of(&s, "blocked/a@s2"), Status::Skipped);
    assert!(t.fake.attempts_of("blocked/a@s2").is_empty());
    let why = task(&s, "blocked/a@s2").error.clone().unwrap_or_default();
    assert!(why.contains("dependencies[1]"), "{why}");
    assert_eq!(
        s.status,
        RunStatus::Failed,
        "a wait that timed out fails the run: {}",
        s.reason
    );
    assert_eq!(t.fake.now(), secs(11));
}

/// One task at a time; the condition holds once `service` (which runs
/// after `first`) has succeeded: it can only run if the polling gate does
/// not hold the one slot.
#[tokio::test(start_paused = true)]
async fn a_polling_wait_condition_takes_no_task_slot() {
    let t = Harness::new();
    t.fake.script("service/a@s1", [Step::ok(ms(5500))]);
    t.fake.probe("svc", Probe::Succeeded("service/a@s1".into()));
    let s = t
        .run(json!({
            "name": "wait-slot", "max_parallel": 1, "retry_policy": no_retry(), "servers": servers(3, &["a"]),
            "operations": [
                on("first", "s0"),
                {"id": "service", "type": "create", "target": "taskserv", "selector": {"servers": ["s1"]}, "depends_on": ["first"]},
                on("after", "s2"),
            ],
            "dependencies": [{
                "source": "operation.after", "target": "operation.first", "type": "hard",
                "wait_condition": {"command": "svc", "timeout": 30, "interval": 1},
            }],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    assert_eq!(t.fake.spans("service/a@s1"), [(1000, 6500)]);
    assert_eq!(t.fake.probes_of("svc"), [1000, 2000, 3000, 4000, 5000, 6000, 7000]);
    assert_eq!(t.fake.spans("after/a@s2"), [(7000, 8000)]);
    assert_eq!(t.fake.max_running(), 1);
}

// ---------------------------------------------------------------- rollback

/// s0 with a, b and c (which require a), d (requires b and c).
fn chain(name: &str, verify_fails_with: &str) -> Value {
    json!({
        "name": name, "retry_policy": no_retry(), "servers": servers(1, &["a", "b", "c", "d"]),
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
            {"id": "verify", "type": "check", "target": "taskserv", "items": ["a"], "depends_on": ["install"], "on_failure": verify_fails_with},
        ],
    })
}

#[tokio::test(start_paused = true)]
async fn rollback_goes_in_reverse_dependency_order_in_parallel_and_journals_first() {
    let t = Harness::new();
    t.fake.script("verify/a@s0", [Step::permanent(secs(1))]);
    let s = t.run(chain("rollback", "rollback")).await;
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    assert!(s.reason.contains("verify/a@s0 failed"), "{}", s.reason);
    // Forward: create 0-1, a 1-2, b and c 2-3, d 3-4, verify fails 4-5.
    // Back: d, then b and c together, then a, then the server.
    let span = |id: &str| -> (u64, u64) {
        let u: Vec<_> = t.fake.undos().into_iter().filter(|u| u.task == id).collect();
        assert_eq!(u.len(), 1, "{id}: {u:?}");
        (
            u[0].start.as_millis() as u64,
            u[0].end.map_or(0, |e| e.as_millis() as u64),
        )
    };
    assert_eq!(span("install/d@s0"), (5000, 6000));
    assert_eq!(span("install/b@s0"), (6000, 7000));
    assert_eq!(span("install/c@s0"), (6000, 7000));
    assert_eq!(span("install/a@s0"), (7000, 8000));
    assert_eq!(span("create/s0"), (8000, 9000));
    assert_eq!(t.fake.max_undoing(), 2);
    assert_eq!(t.fake.undos().len(), 5, "a check has nothing to undo");
    assert!(
        t.fake.undos().iter().all(|u| u.journaled_first),
        "undo_started is journaled before the compensation runs: {:?}",
        t.fake.undos()
    );
    for ts in ["a", "b", "c", "d"] {
        assert_eq!(
            task(&s, &format!("install/{ts}@s0")).rollback.as_deref(),
            Some("undone")
        );
    }
}

/// A rollback by hand undoes everything that succeeded, compensations in
/// parallel up to max_parallel.
#[tokio::test(start_paused = true)]
async fn a_rollback_by_hand_undoes_everything_within_max_parallel() {
    let t = Harness::new();
    let h = t.start(json!({
        "name": "by-hand", "max_parallel": 3, "servers": servers(6, &[]),
        "operations": [{"id": "create", "type": "create", "target": "server"}],
    }));
    let id = h.run_id.clone();
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    assert_eq!(t.fake.now(), secs(2));
    let s = t.finish(t.rollback(&id)).await;
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    assert_eq!(t.fake.max_undoing(), 3);
    let mut undos: Vec<(String, u64)> = t
        .fake
        .undos()
        .into_iter()
        .map(|u| (u.task, u.start.as_millis() as u64))
        .collect();
    undos.sort();
    let expect: Vec<(String, u64)> = (0..6)
        .map(|i| (format!("create/s{i}"), if i < 3 { 2000 } else { 3000 }))
        .collect();
    assert_eq!(undos, expect);
    assert!(t.fake.undos().iter().all(|u| u.journaled_first));
}

#[tokio::test(start_paused = true)]
async fn a_cancel_during_rollback_stops_it() {
    let t = Harness::new();
    t.fake.undo_default(UndoStep::Done(secs(10)));
    let h = t.start(chain("cancel-rollback", "fail"));
    let id = h.run_id.clone();
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let began = t.fake.now();
    let h = t.rollback(&id);
    t.control_at(&h, began + secs(5), Control::Cancel).await;
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Cancelled, "{}", s.reason);
    assert_eq!(t.fake.now(), began + secs(5));
    let undos = t.fake.undos();
    assert_eq!(undos.len(), 1, "nothing after d was undone: {undos:?}");
    assert_eq!(undos[0].task, "install/d@s0");
    assert_eq!(undos[0].outcome, UndoOutcome::Cancelled);
    let j = t.journal(&id);
    assert!(j.iter().any(|e| e.event == Event::RollbackFinished { complete: false }));
}

#[tokio::test(start_paused = true)]
async fn preserve_successful_keeps_operations_that_fully_succeeded() {
    let t = Harness::new();
    t.fake.script("install/a@s1", [Step::permanent(secs(1))]);
    let s = t
        .run(json!({
            "name": "preserve", "retry_policy": no_retry(), "servers": servers(2, &["a"]),
            "rollback_strategy": {"enabled": true, "on_partial_failure": true, "checkpoint_interval": 0, "preserve_successful": true},
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
                {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "on_failure": "rollback"},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    assert_eq!(t.fake.undone(), ["install/a@s0"]);
    assert_eq!(task(&s, "create/s0").rollback, None);
}

fn checkpointed(on_failure: &str) -> Value {
    json!({
        "name": "checkpoint", "retry_policy": no_retry(), "servers": servers(2, &["a", "b"]),
        "rollback_strategy": {"enabled": true, "on_partial_failure": true, "checkpoint_interval": 1, "preserve_successful": false},
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "base", "type": "create", "target": "taskserv", "items": ["a"], "depends_on": ["create"]},
            {"id": "top", "type": "create", "target": "taskserv", "items": ["b"], "depends_on": ["base"], "on_failure": on_failure},
        ],
    })
}

#[tokio::test(start_paused = true)]
async fn automatic_rollback_goes_back_to_the_last_safe_point_only() {
    let t = Harness::new();
    t.fake.script("top/b@s1", [Step::permanent(secs(1))]);
    let h = t.start(checkpointed("rollback"));
    let id = h.run_id.clone();
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    assert_eq!(t.fake.undone(), ["top/b@s0"]);
    let checkpoints: Vec<Vec<String>> = t
        .journal(&id)
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Checkpoint { operations_completed } => Some(operations_completed),
            _ => None,
        })
        .collect();
    assert_eq!(
        checkpoints,
        [vec!["create".to_string()], vec!["create".into(), "base".into()]]
    );
}

/// Safe points are counted the same across an abort and a resume: an
/// operation that completed after the last checkpoint and before the
/// abort still counts towards the next one.
#[tokio::test(start_paused = true)]
async fn safe_points_count_operations_completed_before_a_resume() {
    let t = Harness::new();
    t.fake.script("o4/a@s3", [Step::Hang, Step::ok(secs(1))]);
    t.fake.script("o5/a@s4", [Step::permanent(secs(1))]);
    let op = |i: usize| -> Value {
        let mut o = json!({"id": format!("o{i}"), "type": "create", "target": "taskserv",
                           "selector": {"servers": [format!("s{}", i - 1)]}, "on_failure": "rollback"});
        if i > 1 {
            o["depends_on"] = json!([format!("o{}", i - 1)]);
        }
        o
    };
    let h = t.start(json!({
        "name": "safe-points", "retry_policy": no_retry(), "servers": servers(5, &["a"]),
        "rollback_strategy": {"enabled": true, "on_partial_failure": true, "checkpoint_interval": 2, "preserve_successful": false},
        "operations": (1..=5).map(op).collect::<Vec<_>>(),
    }));
    let id = h.run_id.clone();
    // o1..o3 are done at 3 s; o4 hangs.
    t.control_at(&h, secs(5), Control::Abort).await;
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Aborted, "{}", s.reason);
    let s = t.finish(t.resume(&id)).await;
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    let checkpoints: Vec<Vec<String>> = t
        .journal(&id)
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Checkpoint { operations_completed } => Some(operations_completed),
            _ => None,
        })
        .collect();
    assert_eq!(
        checkpoints,
        [vec!["o1", "o2"], vec!["o1", "o2", "o3", "o4"]],
        "as without the abort"
    );
    assert!(
        t.fake.undos().is_empty(),
        "o1..o4 are before the safe point: {:?}",
        t.fake.undone()
    );
}

/// By hand, safe points and preserve_successful do not hold: everything
/// that succeeded is undone.
#[tokio::test(start_paused = true)]
async fn a_rollback_by_hand_ignores_safe_points() {
    let t = Harness::new();
    t.fake.script("top/b@s1", [Step::permanent(secs(1))]);
    let h = t.start(checkpointed("fail"));
    let id = h.run_id.clone();
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert!(t.fake.undos().is_empty());
    let s = t.finish(t.rollback(&id)).await;
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    let mut undone = t.fake.undone();
    undone.sort();
    assert_eq!(undone, ["base/a@s0", "base/a@s1", "create/s0", "create/s1", "top/b@s0"]);
}

/// An abort in the middle of a rollback leaves it in progress; a resume
/// continues it: what was undone is not undone again, the compensations
/// that were interrupted run again.
#[tokio::test(start_paused = true)]
async fn an_aborted_rollback_continues_on_resume_without_undoing_anything_twice() {
    let t = Harness::new();
    let h = t.start(chain("abort-rollback", "fail"));
    let id = h.run_id.clone();
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let began = t.fake.now();
    let h = t.rollback(&id);
    // d is undone at +1 s; b and c are being undone at +1.5 s.
    t.control_at(&h, began + ms(1500), Control::Abort).await;
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Aborted, "{}", s.reason);
    assert_eq!(t.status(&id), RunStatus::Aborted);
    let s = t.finish(t.resume(&id)).await;
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    let of = |id: &str| -> Vec<UndoOutcome> {
        t.fake
            .undos()
            .into_iter()
            .filter(|u| u.task == id)
            .map(|u| u.outcome)
            .collect()
    };
    assert_eq!(of("install/d@s0"), [UndoOutcome::Done]);
    for interrupted in ["install/b@s0", "install/c@s0"] {
        assert_eq!(
            of(interrupted),
            [UndoOutcome::Cancelled, UndoOutcome::Done],
            "{interrupted}"
        );
    }
    assert_eq!(of("install/a@s0"), [UndoOutcome::Done]);
    assert_eq!(of("create/s0"), [UndoOutcome::Done]);
    assert!(t.fake.undos().iter().all(|u| u.journaled_first));
    let rollbacks = t
        .journal(&id)
        .iter()
        .filter(|e| matches!(e.event, Event::RollbackStarted { .. }))
        .count();
    assert_eq!(rollbacks, 2, "started by hand, then continued");
}

/// A compensation that cannot run is reported, and does not stop the
/// rest; one that fails leaves the rollback incomplete.
#[tokio::test(start_paused = true)]
async fn impossible_and_failed_compensations_are_reported() {
    let t = Harness::new();
    t.fake
        .compensation("install/b@s0", Compensation::Impossible("b has no remove.sh".into()));
    t.fake.undo_script("install/c@s0", [UndoStep::Fail(secs(1))]);
    let h = t.start(chain("impossible", "fail"));
    let id = h.run_id.clone();
    t.finish(h).await;
    let s = t.finish(t.rollback(&id)).await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert!(s.reason.contains("install/c@s0"), "{}", s.reason);
    assert_eq!(
        s.not_undone,
        [("install/b@s0".to_string(), "b has no remove.sh".to_string())]
    );
    let mut undone = t.fake.undone();
    undone.sort();
    assert_eq!(undone, ["create/s0", "install/a@s0", "install/c@s0", "install/d@s0"]);
    // Reported after what depends on it was undone.
    let j = t.journal(&id);
    assert!(seq_of(&j, "install/d@s0", "undo_succeeded") < seq_of(&j, "install/b@s0", "not_undoable"));
}

// ------------------------------------------------------------------- retry

#[tokio::test(start_paused = true)]
async fn retry_reruns_only_failed_skipped_and_cancelled_tasks_of_all_or_one_operation() {
    let t = Harness::new();
    t.fake.script("ab/a@s1", [Step::permanent(secs(1)), Step::ok(secs(1))]);
    t.fake
        .script("nr/noremove@s1", [Step::permanent(secs(1)), Step::ok(secs(1))]);
    let h = t.start(json!({
        "name": "retry-cmd", "retry_policy": no_retry(), "servers": servers(2, &["a", "b", "noremove"]),
        "operations": [
            {"id": "ab", "type": "create", "target": "taskserv", "items": ["a", "b"]},
            {"id": "nr", "type": "create", "target": "taskserv", "items": ["noremove"]},
            {"id": "check", "type": "check", "target": "taskserv", "items": ["a", "b"], "depends_on": ["ab"]},
        ],
    }));
    let id = h.run_id.clone();
    let first = t.finish(h).await;
    assert_eq!(first.status, RunStatus::Failed, "{}", first.reason);
    assert_eq!(status_of(&first, "ab/b@s1"), Status::Skipped);
    let count = |task: &str| t.fake.attempts_of(task).len();
    let ok_first: Vec<String> = first
        .tasks
        .iter()
        .filter(|t| t.status == Status::Succeeded)
        .map(|t| t.task.clone())
        .collect();

    // One operation: its failed and skipped tasks and what follows them.
    let s = t.finish(t.retry(&id, Some("ab"))).await;
    assert_eq!(s.status, RunStatus::Failed, "nr still failed: {}", s.reason);
    for again in ["ab/a@s1", "ab/b@s1"] {
        assert_eq!(status_of(&s, again), Status::Succeeded, "{again}");
    }
    assert_eq!(count("ab/a@s1"), 2);
    assert_eq!(count("ab/b@s1"), 1);
    assert_eq!(count("nr/noremove@s1"), 1, "another operation's failure is not retried");
    for done in &ok_first {
        assert_eq!(count(done), 1, "{done} had succeeded and must not run again");
    }
    // Everything: the one failed task of nr runs, nothing else.
    let before = t.fake.attempts().len();
    let s = t.finish(t.retry(&id, None)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    assert_eq!(t.fake.attempts().len(), before + 1);
    assert_eq!(count("nr/noremove@s1"), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_of_a_cancelled_run_reruns_what_was_cancelled() {
    let t = Harness::new();
    t.fake.script("install/a@s0", [Step::Hang, Step::ok(secs(1))]);
    let h = t.start(three_pipelines());
    let id = h.run_id.clone();
    t.control_at(&h, secs(5), Control::Cancel).await;
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Cancelled, "{}", s.reason);
    let s = t.finish(t.retry(&id, None)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let a: Vec<(u32, Outcome)> = t
        .fake
        .attempts_of("install/a@s0")
        .iter()
        .map(|a| (a.attempt, a.outcome))
        .collect();
    assert_eq!(a, [(1, Outcome::Cancelled), (2, Outcome::Succeeded)]);
    for once in ["install/a@s1", "install/b@s1", "install/b@s0", "more/a@s0"] {
        assert_eq!(t.fake.attempts_of(once).len(), 1, "{once}");
    }
}

/// After a retry, conditions are decided again: the checks an earlier
/// failure held back run, and the cleanup that ran because of it does
/// not run again.
#[tokio::test(start_paused = true)]
async fn retry_of_a_failed_run_reevaluates_conditions() {
    let t = Harness::new();
    t.fake
        .script("install/b@s0", [Step::permanent(secs(1)), Step::ok(secs(1))]);
    let h = t.start(json!({
        "name": "retry-all", "retry_policy": no_retry(), "servers": servers(1, &["a", "b"]),
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
            {"id": "check", "type": "check", "target": "taskserv", "depends_on": ["install"]},
            {"id": "cleanup", "type": "delete", "target": "taskserv", "items": ["b"], "depends_on": ["install"], "condition": "on_failure"},
        ],
    }));
    let id = h.run_id.clone();
    let s = t.finish(h).await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert_eq!(status_of(&s, "check/a@s0"), Status::Skipped);
    assert_eq!(status_of(&s, "cleanup/b@s0"), Status::Succeeded);
    let s = t.finish(t.retry(&id, None)).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    assert_eq!(t.fake.attempts_of("install/b@s0").len(), 2);
    for once in ["create/s0", "install/a@s0", "cleanup/b@s0", "check/a@s0", "check/b@s0"] {
        assert_eq!(t.fake.attempts_of(once).len(), 1, "{once}");
    }
}
