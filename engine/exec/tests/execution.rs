//! Executor semantics on real processes: the deterministic test taskservs
//! of tests/home (behave.sh) record every execution; assertions are on
//! those records and on the files the scripts leave.

mod support;

use std::time::{Duration, Instant};

use drover_exec::{Control, Status};
use drover_state::{Event, RunStatus};
use serde_json::json;
use support::{Fixture, eventually, is_event, is_gone, max_overlap, no_retry, now_ns, server, status_of, task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_parallel_bound_is_the_observed_maximum_concurrency() {
    let f = Fixture::new();
    f.control("install.a", "sleep 0.4");
    let servers: Vec<_> = (0..8).map(|i| server(&format!("s{i}"), &["a"])).collect();
    let s = f
        .run(json!({
            "name": "bound", "max_parallel": 3, "servers": servers,
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
                {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let execs = f.executions();
    assert_eq!(execs.len(), 8, "{execs:?}");
    assert_eq!(max_overlap(&execs), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_server_pipelines_follow_requires_and_barriers_hold() {
    let f = Fixture::new();
    f.control("install.b@s0", "sleep 0.3");
    let s = f
        .run(json!({
            "name": "pipe",
            "servers": [server("s0", &["a", "b", "c", "d"]), server("s1", &["a", "b", "c", "d"])],
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
                {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
                {"id": "check", "type": "check", "target": "taskserv", "depends_on": ["install"]},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let e = f.executions();
    let find = |action: &str, t: &str| {
        e.iter()
            .find(|x| x.action == action && x.target == t)
            .cloned()
            .expect(t)
    };
    for srv in ["s0", "s1"] {
        let (a, b, c, d) = (
            find("install", &format!("a@{srv}")),
            find("install", &format!("b@{srv}")),
            find("install", &format!("c@{srv}")),
            find("install", &format!("d@{srv}")),
        );
        assert!(
            a.end_ns <= b.start_ns && a.end_ns <= c.start_ns,
            "a before b and c on {srv}"
        );
        assert!(
            b.end_ns <= d.start_ns && c.end_ns <= d.start_ns,
            "b and c before d on {srv}"
        );
    }
    // s1's pipeline does not wait for s0's slow b...
    assert!(find("install", "d@s1").end_ns <= find("install", "b@s0").end_ns);
    // ...but no check starts before every install has finished (barrier).
    let last_install = e
        .iter()
        .filter(|x| x.action == "install")
        .map(|x| x.end_ns)
        .max()
        .unwrap_or(0);
    let first_check = e
        .iter()
        .filter(|x| x.action == "check")
        .map(|x| x.start_ns)
        .min()
        .unwrap_or(0);
    assert!(last_install <= first_check);
    assert!(f.installed("s0", "d") && f.installed("s1", "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_make_the_right_number_of_attempts_with_growing_delays() {
    let f = Fixture::new();
    f.control("install.a@s0", "fail 2");
    let s = f
        .run(json!({
            "name": "retry",
            "servers": [server("s0", &["a"])],
            "retry_policy": {"max_attempts": 3, "backoff": "exponential", "initial_delay": 1, "max_delay": 10, "jitter": false},
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
                {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let runs = f.runs_of("install", "a@s0");
    let results: Vec<(&str, u32)> = runs.iter().map(|r| (r.result.as_str(), r.attempt)).collect();
    assert_eq!(results, [("fail", 1), ("fail", 2), ("ok", 3)]);
    // The idempotency key is the same for every attempt.
    assert!(runs.iter().all(|r| r.key == runs[0].key));
    let gap = |i: usize| (runs[i + 1].start_ns - runs[i].end_ns) as f64 / 1e9;
    assert!(gap(0) >= 1.0 && gap(0) < 1.8, "first retry after ~1s, was {}", gap(0));
    assert!(gap(1) >= 2.0 && gap(1) < 2.8, "second retry after ~2s, was {}", gap(1));
    assert_eq!(
        s.tasks.iter().find(|t| t.task == "install/a@s0").map(|t| t.attempts),
        Some(3)
    );
    assert_eq!(status_of(&s, "install/a@s0"), Status::Succeeded);
}

// ---------------------------------------------------------------- on_failure

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_fail_stops_dispatching_and_lets_running_tasks_finish() {
    let f = Fixture::new();
    f.control("install.a@s0", "fail");
    f.control("install.a@s1", "sleep 0.6");
    let h = f.start(json!({
        "name": "halt", "retry_policy": no_retry(),
        "servers": [server("s0", &["a"]), server("s1", &["a", "b"])],
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "on_failure": "fail"},
            {"id": "check", "type": "check", "target": "taskserv", "depends_on": ["install"]},
        ],
    }));
    let run_id = h.run_id.clone();
    let s = h.wait().await.expect("run finishes");
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert!(s.reason.contains("install/a@s0 failed"), "{}", s.reason);
    // a@s1 was running when a@s0 failed, and was let finish.
    let j = f.store.journal(&run_id).expect("journal");
    let seq = |node: &str, kind: &str| j.iter().find(|e| is_event(e, node, kind)).map(|e| e.seq).expect(node);
    assert!(seq("install/a@s1", "task_started") < seq("install/a@s0", "task_failed"));
    assert_eq!(
        f.runs_of("install", "a@s1")
            .iter()
            .map(|e| e.result.as_str())
            .collect::<Vec<_>>(),
        ["ok"]
    );
    assert_eq!(status_of(&s, "install/a@s1"), Status::Succeeded);
    assert!(f.installed("s1", "a"));
    // b@s1 became ready after the halt: skipped, never run.
    assert_eq!(status_of(&s, "install/b@s1"), Status::Skipped);
    let why = task(&s, "install/b@s1").error.clone().unwrap_or_default();
    assert!(why.starts_with("run halted"), "{why}");
    assert!(f.runs_of("install", "b@s1").is_empty());
    // Later on_success work does not run either.
    assert!(f.executions().iter().all(|e| e.action != "check"));
    for t in ["check/a@s0", "check/a@s1", "check/b@s1"] {
        assert_eq!(status_of(&s, t), Status::Skipped, "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_continue_skips_only_hard_dependents() {
    let f = Fixture::new();
    f.control("install.b@s0", "fail");
    // s2 cannot be created: its host root is taken by a file.
    std::fs::create_dir_all(f.host("s2").parent().expect("hosts dir")).expect("hosts dir");
    std::fs::write(f.host("s2"), "not a directory").expect("blocker file");
    let all = ["a", "b", "c", "d"];
    // The check leaves out b itself: the planner makes a later operation's
    // task hard-depend on the installs of what its taskserv requires, not
    // on the install of the taskserv itself, so check/b@s0 would run (and
    // fail) after install/b@s0 failed.
    let s = f
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
    assert_eq!(status_of(&s, "create/s2"), Status::Failed);
    assert_eq!(status_of(&s, "install/b@s0"), Status::Failed);
    // Hard dependents: the pipeline successor of b on s0, the later
    // operation's task on s0 that requires b, and all of s2's later work.
    for t in ["install/d@s0", "check/d@s0", "install/a@s2", "check/a@s2"] {
        assert_eq!(status_of(&s, t), Status::Skipped, "{t}");
        assert!(
            task(&s, t)
                .error
                .as_deref()
                .unwrap_or_default()
                .contains("did not succeed"),
            "{t}"
        );
    }
    for target in ["d@s0", "a@s2"] {
        assert!(
            f.executions().iter().all(|e| e.target != target),
            "{target} must not run"
        );
    }
    // Everything else runs: c on s0 (does not need b), all of s1.
    for t in ["install/a@s0", "install/c@s0", "check/a@s0", "check/c@s0"] {
        assert_eq!(status_of(&s, t), Status::Succeeded, "{t}");
    }
    for ts in all {
        assert_eq!(status_of(&s, &format!("install/{ts}@s1")), Status::Succeeded);
        assert!(f.installed("s1", ts));
    }
    for ts in ["a", "c", "d"] {
        assert_eq!(f.runs_of("check", &format!("{ts}@s1")).len(), 1);
    }
    assert!(f.installed("s0", "c") && !f.installed("s0", "b") && !f.installed("s0", "d"));
}

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
async fn preserve_successful_keeps_operations_that_fully_succeeded() {
    let f = Fixture::new();
    f.control("install.a@s1", "fail");
    let s = f
        .run(json!({
            "name": "preserve", "retry_policy": no_retry(),
            "rollback_strategy": {"enabled": true, "on_partial_failure": true, "checkpoint_interval": 0, "preserve_successful": true},
            "servers": [server("s0", &["a"]), server("s1", &["a"])],
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
                {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "on_failure": "rollback"},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    // The partially failed operation is undone...
    assert_eq!(f.runs_of("remove", "a@s0").len(), 1);
    assert!(!f.installed("s0", "a"));
    assert_eq!(task(&s, "install/a@s0").rollback.as_deref(), Some("undone"));
    // ...the fully successful one is kept.
    assert!(f.host("s0").join(".drover-host").is_file() && f.host("s1").join(".drover-host").is_file());
    assert_eq!(task(&s, "create/s0").rollback, None);
    assert_eq!(task(&s, "create/s1").rollback, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_goes_back_to_the_last_checkpoint_only() {
    let f = Fixture::new();
    f.control("install.b@s1", "fail");
    let h = f.start(json!({
        "name": "checkpoint", "retry_policy": no_retry(),
        "rollback_strategy": {"enabled": true, "on_partial_failure": true, "checkpoint_interval": 1, "preserve_successful": false},
        "servers": [server("s0", &["a", "b"]), server("s1", &["a", "b"])],
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "base", "type": "create", "target": "taskserv", "items": ["a"], "depends_on": ["create"]},
            {"id": "top", "type": "create", "target": "taskserv", "items": ["b"], "depends_on": ["base"], "on_failure": "rollback"},
        ],
    }));
    let run_id = h.run_id.clone();
    let s = h.wait().await.expect("run finishes");
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    // Only the last operation's successful task is undone.
    let removes: Vec<String> = f
        .executions()
        .into_iter()
        .filter(|e| e.action == "remove")
        .map(|e| e.target)
        .collect();
    assert_eq!(removes, ["b@s0"]);
    assert!(!f.installed("s0", "b"));
    assert!(
        f.installed("s0", "a") && f.installed("s1", "a"),
        "base is before the safe point"
    );
    assert!(f.host("s0").join(".drover-host").is_file() && f.host("s1").join(".drover-host").is_file());
    let checkpoints: Vec<Vec<String>> = f
        .store
        .journal(&run_id)
        .expect("journal")
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

// -------------------------------------------------------------- dependencies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_types_hard_soft_and_optional() {
    let f = Fixture::new();
    f.control("install.a@s0", "fail");
    f.control("install.a@s2", "fail");
    f.control("install.a@s5", "sleep 1");
    let servers: Vec<_> = (0..7).map(|i| server(&format!("s{i}"), &["a"])).collect();
    let on = |id: &str, host: &str| {
        json!({"id": id, "type": "create", "target": "taskserv", "selector": {"servers": [host]},
               "depends_on": ["create"], "on_failure": "continue"})
    };
    let s = f
        .run(json!({
            "name": "deps", "retry_policy": no_retry(), "servers": servers,
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
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
    let once = |t: &str| {
        let r = f.runs_of("install", t);
        assert_eq!(r.len(), 1, "{t}: {r:?}");
        r[0].clone()
    };
    // hard: the target failed, the source is skipped.
    assert_eq!(status_of(&s, "hard_source/a@s1"), Status::Skipped);
    assert!(f.runs_of("install", "a@s1").is_empty());
    // soft: the target failed, the source still runs, after it.
    assert_eq!(status_of(&s, "soft_source/a@s3"), Status::Succeeded);
    assert!(once("a@s2").end_ns <= once("a@s3").start_ns);
    // optional, target not in the plan: no effect.
    assert_eq!(status_of(&s, "optional_absent/a@s4"), Status::Succeeded);
    assert!(
        once("a@s4").start_ns < once("a@s5").end_ns,
        "it did not wait for anything"
    );
    // optional, target in the plan: ordering.
    assert_eq!(status_of(&s, "optional_source/a@s6"), Status::Succeeded);
    assert!(once("a@s5").end_ns <= once("a@s6").start_ns);
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
    let started = Instant::now();
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
    let elapsed = started.elapsed();
    let waited = f.runs_of("install", "a@s1");
    assert_eq!(waited.len(), 1, "{waited:?}");
    assert!(
        waited[0].start_ns >= created,
        "the source started only once the file existed"
    );
    assert_eq!(status_of(&s, "waits/a@s1"), Status::Succeeded);
    // The other condition never holds: its source is skipped after ~2 s.
    assert_eq!(status_of(&s, "blocked/a@s2"), Status::Skipped);
    assert!(f.runs_of("install", "a@s2").is_empty());
    let why = task(&s, "blocked/a@s2").error.clone().unwrap_or_default();
    assert!(why.contains("dependencies[1]"), "{why}");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    assert_eq!(
        s.status,
        RunStatus::Failed,
        "a wait condition that timed out fails the run: {}",
        s.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_wait_condition_does_not_take_a_task_slot() {
    let f = Fixture::new();
    // One task at a time. The wait condition holds once another task (a on
    // s1) has run; that task must get the slot while the condition polls.
    let on = |id: &str, host: &str| -> serde_json::Value {
        json!({"id": id, "type": "create", "target": "taskserv", "selector": {"servers": [host]},
               "depends_on": ["create"]})
    };
    let marker = f.host("s1").join("installed/a");
    let s = f
        .run(json!({
            "name": "wait-slot", "max_parallel": 1, "retry_policy": no_retry(),
            "servers": [server("s0", &["a"]), server("s1", &["a"]), server("s2", &["a"])],
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
                on("first", "s0"), on("service", "s1"), on("after", "s2"),
            ],
            "dependencies": [{
                "source": "operation.after", "target": "operation.first", "type": "hard",
                "wait_condition": {"command": format!("test -f {}", marker.display()), "timeout": 5, "interval": 1},
            }],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    assert_eq!(status_of(&s, "after/a@s2"), Status::Succeeded);
    assert!(f.runs_of("install", "a@s1")[0].end_ns <= f.runs_of("install", "a@s2")[0].start_ns);
    assert_eq!(max_overlap(&f.executions()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_a_failed_run_reruns_failed_tasks_and_reevaluates_conditions() {
    let f = Fixture::new();
    f.control("install.b@s0", "fail");
    let wf = json!({
        "name": "retry-all", "retry_policy": no_retry(),
        "servers": [server("s0", &["a", "b"])],
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
            {"id": "check", "type": "check", "target": "taskserv", "depends_on": ["install"]},
            {"id": "cleanup", "type": "delete", "target": "taskserv", "items": ["b"], "depends_on": ["install"], "condition": "on_failure"},
        ],
    });
    let h = f.start(wf);
    let run_id = h.run_id.clone();
    let s = h.wait().await.expect("run finishes");
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert_eq!(status_of(&s, "check/a@s0"), Status::Skipped);
    assert_eq!(status_of(&s, "cleanup/b@s0"), Status::Succeeded);
    std::fs::remove_file(f.control.join("install.b@s0")).expect("fix b");
    let s = drover_exec::run::retry(f.store.clone(), &run_id, None, &f.options(), None)
        .expect("retry starts")
        .wait()
        .await
        .expect("retry finishes");
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    // The failed install ran again and the checks it had held back ran;
    // a, the server and the cleanup (which had succeeded) did not.
    let results: Vec<String> = f.runs_of("install", "b@s0").into_iter().map(|e| e.result).collect();
    assert_eq!(results, ["fail", "ok"]);
    assert_eq!(f.runs_of("install", "a@s0").len(), 1);
    assert_eq!(f.runs_of("remove", "b@s0").len(), 1);
    assert_eq!(f.runs_of("check", "a@s0").len() + f.runs_of("check", "b@s0").len(), 2);
    let creates = f
        .store
        .journal(&run_id)
        .expect("journal")
        .iter()
        .filter(|e| is_event(e, "create/s0", "task_started"))
        .count();
    assert_eq!(creates, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_conditions_on_failure_always_and_on_success() {
    let wf = |name: &str| {
        json!({
            "name": name, "retry_policy": no_retry(),
            "servers": [server("s0", &["a", "noremove"])],
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
                {"id": "main", "type": "create", "target": "taskserv", "items": ["a"], "depends_on": ["create"]},
                {"id": "cleanup", "type": "delete", "target": "taskserv", "items": ["a"], "depends_on": ["main"], "condition": "on_failure"},
                {"id": "always", "type": "create", "target": "taskserv", "items": ["noremove"], "depends_on": ["main"], "condition": "always"},
                {"id": "next", "type": "check", "target": "taskserv", "items": ["a"], "depends_on": ["main"]},
            ],
        })
    };
    // The upstream fails: cleanup and always run, next does not.
    let f = Fixture::new();
    f.control("install.a", "fail");
    let s = f.run(wf("failing")).await;
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert_eq!(f.runs_of("remove", "a@s0").len(), 1);
    assert_eq!(f.runs_of("install", "noremove@s0").len(), 1);
    assert!(f.runs_of("check", "a@s0").is_empty());
    assert_eq!(status_of(&s, "cleanup/a@s0"), Status::Succeeded);
    assert_eq!(status_of(&s, "always/noremove@s0"), Status::Succeeded);
    assert_eq!(status_of(&s, "next/a@s0"), Status::Skipped);
    // The upstream succeeds: always and next run, cleanup does not.
    let f = Fixture::new();
    let s = f.run(wf("passing")).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    assert!(f.runs_of("remove", "a@s0").is_empty());
    assert_eq!(status_of(&s, "cleanup/a@s0"), Status::Skipped);
    let why = task(&s, "cleanup/a@s0").error.clone().unwrap_or_default();
    assert!(why.contains("on_failure"), "{why}");
    assert_eq!(f.runs_of("install", "noremove@s0").len(), 1);
    assert_eq!(f.runs_of("check", "a@s0").len(), 1);
    assert!(f.installed("s0", "a"));
}

// ------------------------------------------------------------------ timeouts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_exceeds_its_timeout_is_killed_with_its_children() {
    let f = Fixture::new();
    f.control("install.a@s0", "hang");
    let started = Instant::now();
    let s = f
        .run(json!({
            "name": "attempt-timeout", "retry_policy": no_retry(),
            "servers": [server("s0", &["a"])],
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
                {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "timeout": 1},
            ],
        }))
        .await;
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert_eq!(status_of(&s, "install/a@s0"), Status::Failed);
    let error = task(&s, "install/a@s0").error.clone().unwrap_or_default();
    assert!(error.contains("timed out"), "{error}");
    let (pid, child) = (
        f.pid("hang.a@s0.pid").expect("script pid"),
        f.pid("hang.a@s0.child").expect("child pid"),
    );
    assert!(
        eventually(Duration::from_secs(3), || is_gone(pid) && is_gone(child)).await,
        "{pid} and {child} are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflow_timeout_fails_the_run_and_cancels_what_runs() {
    let f = Fixture::new();
    f.control("install.a@s0", "sleep 30");
    let started = Instant::now();
    let s = f
        .run(json!({
            "name": "wf-timeout", "timeout": 2, "retry_policy": no_retry(),
            "servers": [server("s0", &["a", "b"])],
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
                {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
            ],
        }))
        .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    assert!(s.reason.contains("workflow timeout of 2s"), "{}", s.reason);
    assert_eq!(status_of(&s, "install/a@s0"), Status::Cancelled);
    assert_eq!(status_of(&s, "install/b@s0"), Status::Cancelled);
    assert!(f.executions().is_empty(), "the sleep was killed before it could record");
}

// -------------------------------------------------------------------- limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_max_parallel_and_parallel_false_bound_concurrency() {
    let f = Fixture::new();
    f.control("install.a", "sleep 0.3");
    f.control("check.a", "sleep 0.2");
    let servers: Vec<_> = (0..6).map(|i| server(&format!("s{i}"), &["a"])).collect();
    let s = f
        .run(json!({
            "name": "op-bounds", "servers": servers,
            "operations": [
                {"id": "create", "type": "create", "target": "server"},
                {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "max_parallel": 2},
                {"id": "check", "type": "check", "target": "taskserv", "depends_on": ["install"], "parallel": false},
            ],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let of = |action: &str| {
        f.executions()
            .into_iter()
            .filter(|e| e.action == action)
            .collect::<Vec<_>>()
    };
    assert_eq!(of("install").len(), 6);
    assert_eq!(max_overlap(&of("install")), 2);
    assert_eq!(of("check").len(), 6);
    assert_eq!(max_overlap(&of("check")), 1);
}

fn rolling_workflow(name: &str) -> serde_json::Value {
    let servers: Vec<_> = (0..6).map(|i| server(&format!("s{i}"), &["a"])).collect();
    json!({
        "name": name, "retry_policy": no_retry(), "servers": servers,
        "operations": [
            {"id": "create", "type": "create", "target": "server", "on_failure": "continue"},
            {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "on_failure": "continue",
             "rolling": {"batch_size": 2, "pause": 1, "failure_threshold": 34.0}},
        ],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_batches_run_in_order_with_a_pause_between() {
    let f = Fixture::new();
    f.control("install.a", "sleep 0.2");
    let s = f.run(rolling_workflow("rolling")).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let e = f.executions();
    assert_eq!(e.len(), 6);
    let batch = |k: usize| -> Vec<_> {
        e.iter()
            .filter(|x| [format!("a@s{}", 2 * k), format!("a@s{}", 2 * k + 1)].contains(&x.target))
            .collect()
    };
    for k in 0..2 {
        let end = batch(k).iter().map(|x| x.end_ns).max().unwrap_or(0);
        let next = batch(k + 1).iter().map(|x| x.start_ns).min().unwrap_or(0);
        let gap = (next as f64 - end as f64) / 1e9;
        assert!(gap >= 0.9, "batch {} starts {gap:.2}s after batch {k} ends", k + 1);
    }
    assert_eq!(max_overlap(&e), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_moves_past_a_batch_whose_tasks_were_all_skipped() {
    let f = Fixture::new();
    // s2 and s3 (the second batch) cannot be created, so their installs
    // are skipped as soon as the creates are done, long before their
    // batch's turn; the third batch must still run.
    std::fs::create_dir_all(f.dir.path().join("providers/local/hosts")).expect("hosts dir");
    for h in ["s2", "s3"] {
        std::fs::write(f.host(h), "not a directory").expect("blocker file");
    }
    f.control("install.a", "sleep 0.2");
    let run = f.run(rolling_workflow("rolling-gap"));
    let s = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the run does not hang");
    assert_eq!(s.status, RunStatus::Failed, "{}", s.reason);
    for t in ["install/a@s2", "install/a@s3"] {
        assert_eq!(status_of(&s, t), Status::Skipped, "{t}");
    }
    for t in ["install/a@s0", "install/a@s1", "install/a@s4", "install/a@s5"] {
        assert_eq!(status_of(&s, t), Status::Succeeded, "{t}");
    }
    assert_eq!(f.executions().len(), 4);
}

/// The local provider declares batch_size 20 and api_rate_limit 50/s
/// (providers/local/kcl/dependencies.k). Creating a local server takes
/// about a millisecond, so concurrency is not measurable from outside;
/// both limits are checked on the journal instead, which records each
/// start before it happens and each end as the scheduler saw it:
/// - batch_size: replaying TaskStarted / TaskSucceeded in journal order,
///   never more than 20 creates are in flight (and 20 are, at first: the
///   limit is what binds, not the global max_parallel);
/// - api_rate_limit, a token bucket of capacity 50 refilled at 50/s: the
///   k-th start (k > 50) is at least (k - 50) / 50 s after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_batch_size_and_rate_limit_bound_server_creation() {
    let f = Fixture::new();
    let servers: Vec<_> = (0..100).map(|i| server(&format!("s{i:03}"), &[])).collect();
    let h = f.start(json!({
        "name": "provider-limits", "max_parallel": 100, "servers": servers,
        "operations": [{"id": "create", "type": "create", "target": "server"}],
    }));
    let run_id = h.run_id.clone();
    let s = h.wait().await.expect("run finishes");
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    assert_eq!(s.count(Status::Succeeded), 100);
    let journal = f.store.journal(&run_id).expect("journal");
    let (mut in_flight, mut most) = (0i32, 0i32);
    let mut starts = Vec::new();
    for e in &journal {
        match e.event {
            Event::TaskStarted { .. } => {
                in_flight += 1;
                starts.push(e.at_ms);
            }
            Event::TaskSucceeded { .. } | Event::TaskFailed { .. } => in_flight -= 1,
            _ => {}
        }
        most = most.max(in_flight);
    }
    assert_eq!(most, 20, "batch_size 20 bounds the creates in flight");
    assert_eq!(starts.len(), 100);
    for (k, t) in starts.iter().enumerate().skip(50) {
        let min_ms = (k + 1 - 50) as i64 * 1000 / 50;
        assert!(
            t - starts[0] >= min_ms - 2,
            "start {} at +{}ms, the rate allows +{min_ms}ms",
            k + 1,
            t - starts[0]
        );
    }
}

// -------------------------------------------------------- operator controls

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
        eventually(Duration::from_secs(3), || is_gone(pid) && is_gone(child)).await,
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
        eventually(Duration::from_secs(3), || is_gone(pid) && is_gone(child)).await,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_tasks_back_until_resume() {
    let f = Fixture::new();
    f.control("install.a@s0", "sleep 1.5");
    let h = f.start(json!({
        "name": "pause", "retry_policy": no_retry(),
        "servers": [server("s0", &["a", "b"])],
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
        ],
    }));
    let run_id = h.run_id.clone();
    f.wait_journal(&run_id, "a started", |e| is_event(e, "install/a@s0", "task_started"))
        .await;
    h.control(Control::Pause);
    f.wait_journal(&run_id, "the pause", |e| e.event == Event::RunPaused)
        .await;
    // The running task finishes...
    f.wait_journal(&run_id, "a succeeded", |e| {
        is_event(e, "install/a@s0", "task_succeeded")
    })
    .await;
    let journal = f.store.journal(&run_id).expect("journal");
    let seq = |pred: &dyn Fn(&drover_state::Entry) -> bool| journal.iter().find(|e| pred(e)).map(|e| e.seq);
    assert!(
        seq(&|e| e.event == Event::RunPaused) < seq(&|e| is_event(e, "install/a@s0", "task_succeeded")),
        "the pause came while a was running"
    );
    assert_eq!(f.runs_of("install", "a@s0").len(), 1);
    // ...and nothing new starts while paused (b was ready once a ended).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let journal = f.store.journal(&run_id).expect("journal");
    assert!(
        !journal.iter().any(|e| is_event(e, "install/b@s0", "task_started")),
        "b started while paused"
    );
    assert!(f.runs_of("install", "b@s0").is_empty());
    let resumed = now_ns();
    h.control(Control::Resume);
    let s = h.wait().await.expect("run finishes");
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let b = f.runs_of("install", "b@s0");
    assert_eq!(b.len(), 1);
    assert!(b[0].start_ns >= resumed, "b started after the resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reruns_only_what_failed_or_was_skipped() {
    let f = Fixture::new();
    f.control("install.a@s1", "fail");
    f.control("install.noremove@s1", "fail");
    let h = f.start(json!({
        "name": "retry-cmd", "retry_policy": no_retry(),
        "servers": [server("s0", &["a", "b", "noremove"]), server("s1", &["a", "b", "noremove"])],
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "ab", "type": "create", "target": "taskserv", "items": ["a", "b"], "depends_on": ["create"]},
            {"id": "nr", "type": "create", "target": "taskserv", "items": ["noremove"], "depends_on": ["create"]},
            {"id": "check", "type": "check", "target": "taskserv", "items": ["a", "b"], "depends_on": ["ab"]},
        ],
    }));
    let run_id = h.run_id.clone();
    let first = h.wait().await.expect("run finishes");
    assert_eq!(first.status, RunStatus::Failed, "{}", first.reason);
    assert_eq!(status_of(&first, "ab/a@s1"), Status::Failed);
    assert_eq!(status_of(&first, "nr/noremove@s1"), Status::Failed);
    assert_eq!(status_of(&first, "ab/b@s1"), Status::Skipped);
    // Attempts started per task, from the journal (provider tasks included).
    let starts = || -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for e in f.store.journal(&run_id).expect("journal") {
            if let (Some(n), Event::TaskStarted { .. }) = (e.node, &e.event) {
                *m.entry(n).or_insert(0) += 1;
            }
        }
        m
    };
    let ok_first: Vec<String> = first
        .tasks
        .iter()
        .filter(|t| t.status == Status::Succeeded)
        .map(|t| t.task.clone())
        .collect();
    let not_ok_first = |op: &str| -> Vec<String> {
        first
            .tasks
            .iter()
            .filter(|t| t.operation == op && t.status != Status::Succeeded)
            .map(|t| t.task.clone())
            .collect()
    };
    let before = starts();
    let execs_before = f.executions().len();

    // Retry one operation: only its failed and skipped tasks, and what
    // follows from them, run; the other operation's failure stays.
    std::fs::remove_file(f.control.join("install.a@s1")).expect("fix a");
    std::fs::remove_file(f.control.join("install.noremove@s1")).expect("fix noremove");
    let s = drover_exec::run::retry(f.store.clone(), &run_id, Some("ab"), &f.options(), None)
        .expect("retry starts")
        .wait()
        .await
        .expect("retry finishes");
    let after = starts();
    let again: Vec<String> = [not_ok_first("ab"), not_ok_first("check")].concat();
    assert!(
        again.contains(&"ab/a@s1".to_string()) && again.contains(&"check/a@s0".to_string()),
        "{again:?}"
    );
    for t in &again {
        assert_eq!(status_of(&s, t), Status::Succeeded, "{t}: {:?}", task(&s, t).error);
        assert_eq!(
            after.get(t),
            Some(&(before.get(t).copied().unwrap_or(0) + 1)),
            "{t} ran once more"
        );
    }
    for t in &ok_first {
        assert_eq!(after.get(t), before.get(t), "{t} had succeeded and must not run again");
    }
    assert_eq!(status_of(&s, "nr/noremove@s1"), Status::Failed);
    assert_eq!(after.get("nr/noremove@s1"), Some(&1));
    assert_eq!(s.status, RunStatus::Failed, "nr still failed: {}", s.reason);
    assert_eq!(f.executions().len(), execs_before + again.len(), "only those ran");

    // Retry the rest: the one failed task of nr runs, nothing else.
    let s = drover_exec::run::retry(f.store.clone(), &run_id, None, &f.options(), None)
        .expect("retry starts")
        .wait()
        .await
        .expect("retry finishes");
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    let last = starts();
    for (t, n) in &after {
        let expect = if t == "nr/noremove@s1" { n + 1 } else { *n };
        assert_eq!(last.get(t), Some(&expect), "{t}");
    }
    assert_eq!(
        f.runs_of("install", "noremove@s1")
            .iter()
            .map(|e| e.result.as_str())
            .collect::<Vec<_>>(),
        ["fail", "ok"]
    );
    assert!(
        ["a", "b", "noremove"]
            .iter()
            .all(|t| f.installed("s0", t) && f.installed("s1", t))
    );
}
