//! Executor behaviour that needs real processes: the deterministic test
//! taskservs of tests/home (behave.sh) record every execution; assertions
//! are on those records, on the files the scripts and the local provider
//! leave, and on the processes themselves. Only what a fake executor
//! cannot show is here: a timeout or a cancel killing a script's process
//! group and its children, the idempotency key a script sees across a
//! resume, wait conditions run as commands, compensations as remove.sh
//! and provider deletes. The scheduler's semantics (limits, retries,
//! rolling, conditions, controls, rollback order, ...) are tested exactly,
//! on a paused clock, in tests/scheduler.rs.

mod support;

use std::time::Duration;

use drover_exec::{Control, Status};
use drover_state::{Event, RunStatus};
use serde_json::json;
use support::{Fixture, eventually, is_event, is_gone, no_retry, now_ns, server, status_of, task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_rollback_undoes_in_reverse_dependency_order_and_reports_what_it_cannot() {
    let f = Fixture::new();
    // s1 exists before the run: this run installs on it but did not create it.
    let pre = f
        .run(json!({
            "name": "pre", "servers": [server("s1", &["noremove"])],
            "operations": [{"id": "create", "type": "create", "target": "server"}],
        }))
        .await;
    assert_eq!(pre.status, RunStatus::Succeeded, "{}", pre.reason);
    f.control("check.a@s0", "fail");
    let h = f.start(json!({
        "name": "rollback", "retry_policy": no_retry(),
        "servers": [server("s0", &["a", "b", "c", "d"]), server("s1", &["noremove"])],
        "operations": [
            {"id": "create", "type": "create", "target": "server", "items": ["s0"]},
            {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
            {"id": "verify", "type": "check", "target": "taskserv", "items": ["a"], "depends_on": ["install"], "on_failure": "rollback"},
        ],
    }));
    let run_id = h.run_id.clone();
    let s = h.wait().await.expect("run finishes");
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    assert!(s.reason.contains("verify/a@s0 failed"), "{}", s.reason);
    // Every install on s0 was removed once, in reverse dependency order.
    let removes: Vec<_> = f.executions().into_iter().filter(|e| e.action == "remove").collect();
    assert_eq!(removes.len(), 4, "{removes:?}");
    let at = |ts: &str| {
        removes
            .iter()
            .find(|e| e.target == format!("{ts}@s0"))
            .expect(ts)
            .clone()
    };
    let (a, b, c, d) = (at("a"), at("b"), at("c"), at("d"));
    assert!(
        d.end_ns <= b.start_ns && d.end_ns <= c.start_ns,
        "d removed before b and c"
    );
    assert!(
        b.end_ns <= a.start_ns && c.end_ns <= a.start_ns,
        "b and c removed before a"
    );
    // The server this run created is deleted, after its taskservs.
    assert!(!f.host("s0").exists(), "s0's root is deleted");
    let j = f.store.journal(&run_id).expect("journal");
    let undone_at = |node: &str| {
        j.iter()
            .find(|e| is_event(e, node, "undo_succeeded"))
            .map(|e| e.seq)
            .expect(node)
    };
    for ts in ["a", "b", "c", "d"] {
        assert!(
            undone_at(&format!("install/{ts}@s0")) < undone_at("create/s0"),
            "{ts} removed before s0 is deleted"
        );
    }
    assert_eq!(task(&s, "create/s0").rollback.as_deref(), Some("undone"));
    for ts in ["a", "b", "c", "d"] {
        assert_eq!(
            task(&s, &format!("install/{ts}@s0")).rollback.as_deref(),
            Some("undone")
        );
    }
    // noremove has no remove.sh: reported, and left installed.
    assert_eq!(s.not_undone.len(), 1, "{:?}", s.not_undone);
    assert_eq!(s.not_undone[0].0, "install/noremove@s1");
    assert!(s.not_undone[0].1.contains("remove.sh"), "{:?}", s.not_undone);
    assert!(f.installed("s1", "noremove"));
    let report = std::fs::read_to_string(&s.files[1]).expect("report.txt");
    assert!(
        report.contains("Not undone by rollback") && report.contains("install/noremove@s1"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_conditions_hold_back_their_source_until_true_or_block_it() {
    let f = Fixture::new();
    let ready = f.control.join("ready");
    let never = f.control.join("never");
    let wait = |file: &std::path::Path, timeout: u64| -> serde_json::Value {
        json!({"command": format!("test -f {}", file.display()), "timeout": timeout, "interval": 1})
    };
    let on = |id: &str, host: &str| {
        json!({"id": id, "type": "create", "target": "taskserv", "selector": {"servers": [host]},
               "depends_on": ["create"], "on_failure": "continue"})
    };
    let h = f.start(json!({
        "name": "wait", "retry_policy": no_retry(),
        "servers": [server("s0", &["a"]), server("s1", &["a"]), server("s2", &["a"])],
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            on("first", "s0"), on("waits", "s1"), on("blocked", "s2"),
        ],
        "dependencies": [
            {"source": "operation.waits", "target": "operation.first", "type": "hard", "wait_condition": wait(&ready, 10)},
            {"source": "operation.blocked", "target": "operation.first", "type": "hard", "wait_condition": wait(&never, 2)},
        ],
    }));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let created = now_ns();
    std::fs::write(&ready, "").expect("ready file");
    let s = h.wait().await.expect("run finishes");
    let waited = f.runs_of("install", "a@s1");
    assert_eq!(waited.len(), 1, "{waited:?}");
    assert!(
        waited[0].start_ns >= created,
        "the source started only once the file existed"
    );
    assert_eq!(status_of(&s, "waits/a@s1"), Status::Succeeded);
    // The other condition never holds: its source is skipped.
    assert_eq!(status_of(&s, "blocked/a@s2"), Status::Skipped);
    assert!(f.runs_of("install", "a@s2").is_empty());
    let why = task(&s, "blocked/a@s2").error.clone().unwrap_or_default();
    assert!(why.contains("dependencies[1]"), "{why}");
    assert_eq!(
        s.status,
        RunStatus::Failed,
        "a wait condition that timed out fails the run: {}",
        s.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_exceeds_its_timeout_is_killed_with_its_children() {
    let f = Fixture::new();
    f.control("install.a@s0", "hang");
    let run = f.run(json!({
        "name": "attempt-timeout", "retry_policy": no_retry(),
        "servers": [server("s0", &["a"])],
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "timeout": 1},
        ],
    }));
    // The script hangs forever: only its timeout ends the run.
    let s = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the attempt's timeout ends the hang");
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert_eq!(status_of(&s, "install/a@s0"), Status::Failed);
    let error = task(&s, "install/a@s0").error.clone().unwrap_or_default();
    assert!(error.contains("timed out"), "{error}");
    let (pid, child) = (
        f.pid("hang.a@s0.pid").expect("script pid"),
        f.pid("hang.a@s0.child").expect("child pid"),
    );
    assert!(
        eventually(Duration::from_secs(20), || is_gone(pid) && is_gone(child)).await,
        "{pid} and {child} are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_what_runs_and_cancels_what_waits() {
    let f = Fixture::new();
    f.control("install.b@s0", "hang");
    let h = f.start(json!({
        "name": "cancel", "retry_policy": no_retry(),
        "servers": [server("s0", &["a", "b", "d", "c"])],
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "install", "type": "create", "target": "taskserv", "items": ["a", "b", "c"], "depends_on": ["create"]},
            {"id": "more", "type": "create", "target": "taskserv", "items": ["d"], "depends_on": ["install"]},
        ],
    }));
    let (pid, child) = f.wait_hanging("b@s0").await;
    let logs = h.logs_dir.clone();
    let id = h.run_id.clone();
    h.control(Control::Cancel);
    let s = h.wait().await.expect("run finishes");
    assert_eq!(s.status, RunStatus::Cancelled, "{}", s.reason);
    // Each node ends once in the journal.
    let mut ended = std::collections::HashMap::new();
    for e in f.store.journal(&id).expect("journal") {
        if matches!(e.event, Event::TaskCancelled { .. } | Event::TaskSucceeded { .. }) {
            *ended.entry(e.node.clone()).or_insert(0) += 1;
        }
    }
    assert!(ended.values().all(|&n| n == 1), "a node ended twice: {ended:?}");
    assert_eq!(status_of(&s, "install/b@s0"), Status::Cancelled);
    assert_eq!(status_of(&s, "more/d@s0"), Status::Cancelled);
    assert_eq!(status_of(&s, "install/a@s0"), Status::Succeeded);
    assert!(
        eventually(Duration::from_secs(20), || is_gone(pid) && is_gone(child)).await,
        "{pid} and {child} are gone"
    );
    assert!(f.runs_of("install", "d@s0").is_empty());
    assert!(logs.join("report.txt").is_file() && logs.join("report.jsonl").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_run_resumes_without_repeating_finished_tasks() {
    let f = Fixture::new();
    f.control("install.b@s0", "hang");
    let h = f.start(json!({
        "name": "abort", "retry_policy": no_retry(),
        "servers": [server("s0", &["a", "b"]), server("s1", &["a", "b"])],
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
            {"id": "check", "type": "check", "target": "taskserv", "depends_on": ["install"]},
        ],
    }));
    let run_id = h.run_id.clone();
    let (pid, child) = f.wait_hanging("b@s0").await;
    // s1's pipeline is done first, so what had succeeded is known.
    f.wait_journal(&run_id, "b@s1 succeeded", |e| {
        is_event(e, "install/b@s1", "task_succeeded")
    })
    .await;
    h.control(Control::Abort);
    let s = h.wait().await.expect("run stops");
    assert_eq!(s.status, RunStatus::Aborted, "{}", s.reason);
    assert_eq!(f.store.run(&run_id).expect("run").status, RunStatus::Aborted);
    assert!(
        eventually(Duration::from_secs(20), || is_gone(pid) && is_gone(child)).await,
        "{pid} and {child} are gone"
    );
    let before = f.executions();
    let succeeded: Vec<String> = s
        .tasks
        .iter()
        .filter(|t| t.status == Status::Succeeded)
        .map(|t| t.task.clone())
        .collect();
    assert!(succeeded.contains(&"install/a@s0".to_string()), "{succeeded:?}");

    std::fs::remove_file(f.control.join("install.b@s0")).expect("fix b");
    let h = drover_exec::run::resume(f.store.clone(), &run_id, &f.options(), None).expect("resumes");
    let s = h.wait().await.expect("run finishes");
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    // Nothing that had succeeded ran again: no second script execution
    // (operation ids are the action names here), no second start of any
    // task, provider calls included.
    let ok_before: Vec<String> = before
        .iter()
        .filter(|e| e.result == "ok")
        .map(|e| format!("{}/{}", e.action, e.target))
        .collect();
    assert_eq!(ok_before.len(), 3, "a@s0, a@s1, b@s1: {ok_before:?}");
    for t in &ok_before {
        assert!(succeeded.contains(t), "{t} recorded ok but the run did not count it");
        let (action, target) = t.split_once('/').expect("op/target");
        assert_eq!(f.runs_of(action, target).len(), 1, "{t} ran again");
    }
    let journal = f.store.journal(&run_id).expect("journal");
    for t in &succeeded {
        let starts = journal.iter().filter(|e| is_event(e, t, "task_started")).count();
        assert_eq!(starts, 1, "{t} started again after the resume");
    }
    // The interrupted task ran again, as the same attempt with the same key.
    let b = f.runs_of("install", "b@s0");
    let results: Vec<(&str, u32)> = b.iter().map(|r| (r.result.as_str(), r.attempt)).collect();
    assert_eq!(results, [("hang", 1), ("ok", 1)]);
    assert_eq!(b[0].key, b[1].key);
    assert_eq!(b[0].key, format!("{run_id}/install/b@s0"));
    assert!(f.installed("s0", "b") && f.installed("s1", "b"));
    assert_eq!(f.runs_of("check", "b@s0").len(), 1);
}
