//! The attack suite, files and environment: what a submitted workflow could
//! make the server read, write, delete or leak on the orchestrator, and
//! what a full disk did to it. One test per finding of the security
//! review; each asserts the safe answer, then that the server is still up
//! and a run submitted before the attack is intact.
//!
//! The disk-full test puts the journal on a small tmpfs in a mount
//! namespace of the server's own (`unshare`, `nsenter`: it needs root,
//! as the fleet tests do).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::*;
use common::test_home;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A run that was going on before the attack: submitted, then checked
/// afterwards to have finished well.
async fn run_before(s: &Server, dir: &Path) -> String {
    let (file, control) = workflow(dir, "before", 1, &["a"], "");
    control_file(&control, "install", "sleep 0.3");
    s.submit(&file).await
}

/// The server answers and the run from before the attack succeeded.
async fn still_intact(s: &Server, before: &str) {
    let (code, health) = s.get("/healthz").await;
    assert_eq!(code, StatusCode::OK, "{health}");
    let end = s.wait_end(before).await;
    assert_eq!(end["status"], "succeeded", "the run from before the attack: {end:#}");
}

fn control_file(dir: &Path, key: &str, mode: &str) {
    std::fs::write(dir.join(key), mode).expect("control file");
}

/// The id of the task of `taskserv` in a status view.
fn task_id(status: &Value, taskserv: &str) -> String {
    tasks_of(status)
        .into_iter()
        .filter_map(|t| t["id"].as_str())
        .find(|id| id.contains(&format!("{taskserv}@")))
        .unwrap_or_else(|| panic!("no task of {taskserv}: {status:#}"))
        .to_string()
}

// ---------------------------------------------------------------------
// Log streams lost output: a filtered stream ended when the first 1,000
// lines of the file held nothing for it.

#[tokio::test(flavor = "multi_thread")]
async fn a_filtered_log_stream_reads_past_lines_it_does_not_send() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    // b requires a: a's 1,100 lines come first in the run's stream.
    let (file, control) = workflow(dir.path(), "chatty", 1, &["a", "b"], "");
    control_file(&control, "install.a", "lines 1100");
    control_file(&control, "install.b", "lines 3");
    let id = s.submit(&file).await;
    let end = s.wait_end(&id).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");
    let b = task_id(&end, "b");

    let all = s.sse(&format!("/workflows/{id}/logs")).await;
    let first_b = all
        .iter()
        .find(|e| e.data["task"] == b.as_str())
        .map(|e| e.id)
        .expect("b's output is in the stream");
    assert!(first_b > 1100, "b's output starts after a's 1,100 lines: {first_b}");

    let only_b = s.sse(&format!("/workflows/{id}/logs?task={b}")).await;
    let lines: Vec<&str> = only_b.iter().filter_map(|e| e.data["line"].as_str()).collect();
    for n in 1..=3 {
        assert!(
            lines.iter().any(|l| l.ends_with(&format!("line {n}"))),
            "line {n} of b is missing from its filtered stream: {lines:?}"
        );
    }
    assert!(only_b.iter().all(|e| e.data["task"] == b.as_str()));

    // Resuming after an id, by query and by header, with a filter.
    let after = first_b - 1;
    let by_query = s.sse(&format!("/workflows/{id}/logs?task={b}&after={after}")).await;
    assert_eq!(ids(&by_query), ids(&only_b));
    let by_header = s
        .sse_reader(&format!("/workflows/{id}/logs?task={b}"), Some(&after.to_string()))
        .await
        .rest()
        .await;
    assert_eq!(ids(&by_header), ids(&only_b));
    let by_server = s.sse(&format!("/workflows/{id}/logs?server=chatty-0&after=1050")).await;
    assert!(
        by_server.iter().any(|e| e.data["task"] == b.as_str()),
        "a server filter with ?after past 1,000 lines of the file still reaches b"
    );
    assert_eq!(by_server.first().map(|e| e.id), Some(1051));
}

// ---------------------------------------------------------------------
// Scripts and wait conditions inherited the server's environment: its
// token, cloud credentials.

#[tokio::test(flavor = "multi_thread")]
async fn scripts_and_wait_conditions_never_see_the_servers_environment() {
    let dir = tempdir();
    let token = "server-admin-token-0123456789abcdef";
    let aws = "aws-secret-key-4711-do-not-leak";
    let mut s = Server::start_with(
        dir.path(),
        &[],
        &[
            ("DROVER_TOKEN", token),
            ("AWS_SECRET_ACCESS_KEY", aws),
            ("UPCLOUD_PASSWORD", aws),
        ],
        &test_home(),
    );
    s.token = Some(token.to_string());
    let before = run_before(&s, dir.path()).await;

    let orch_env = dir.path().join("orchestrator-env.txt");
    let settings = format!(
        r#"dependencies = [drover.DependencyDef {{
        source = "operation.install"
        target = "operation.create"
        type = "hard"
        wait_condition = drover.WaitCondition {{command = "env > {}", timeout = 10, interval = 1}}
    }}]"#,
        orch_env.display()
    );
    let (file, control) = workflow(dir.path(), "envdump", 1, &["a"], &settings);
    control_file(&control, "install", "env");
    let id = s.submit(&file).await;
    let end = s.wait_end(&id).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");

    let script_env = std::fs::read_to_string(control.join("env.a@envdump-0")).expect("the script's environment");
    let wait_env = std::fs::read_to_string(&orch_env).expect("the wait condition's environment");
    for (what, env) in [("script", &script_env), ("wait condition", &wait_env)] {
        assert!(!env.contains(token), "the server's token reached the {what}:\n{env}");
        assert!(
            !env.contains(aws),
            "the server's cloud credentials reached the {what}:\n{env}"
        );
        assert!(!env.contains("DROVER_TOKEN="), "{what}:\n{env}");
        assert!(
            env.contains("DROVER_RUN_ID="),
            "{what} gets drover's own variables:\n{env}"
        );
        assert!(env.contains("PATH="), "{what} gets PATH:\n{env}");
    }
    assert!(
        script_env.contains("DROVER_VAR_CONTROL="),
        "the workflow's variables:\n{script_env}"
    );
    still_intact(&s, &before).await;
}

// ---------------------------------------------------------------------
// The workflow chose where the server writes logs, and what retention
// then deleted.

#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_cannot_move_its_logs_out_of_the_servers_log_directory() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let before = run_before(&s, dir.path()).await;
    let outside = tempdir();
    let target = outside.path().join("written-by-a-workflow");
    for (dir_value, names) in [
        (target.display().to_string(), "absolute"),
        ("../../escaped".to_string(), ".."),
        ("logs/../../escaped".to_string(), ".."),
    ] {
        let settings = format!(r#"logging = drover.LoggingConfig {{dir = "{dir_value}"}}"#);
        let (file, _) = workflow(dir.path(), "movelogs", 1, &["a"], &settings);
        let got = s.post("/workflows/batch", json!({ "path": file })).await;
        assert_eq!(got.0, StatusCode::BAD_REQUEST, "logging.dir {dir_value}: {}", got.1);
        let message = got.1.to_string();
        assert!(message.contains("logging.dir"), "{message}");
        assert!(message.contains(names), "{message}");
    }
    assert!(
        !target.exists(),
        "nothing is written outside the server's log directory"
    );
    assert!(!dir.path().join("escaped").exists() && !dir.path().parent().expect("parent").join("escaped").exists());

    // A relative logging.dir is a directory under the server's --logs.
    let settings = r#"logging = drover.LoggingConfig {dir = "teamlogs"}"#;
    let (file, _) = workflow(dir.path(), "relative", 1, &["a"], settings);
    let id = s.submit(&file).await;
    assert_eq!(s.wait_end(&id).await["status"], "succeeded");
    let run_logs = dir.path().join("server-logs/teamlogs").join(&id);
    assert!(
        run_logs.join("report.txt").is_file(),
        "{} has the run's report",
        run_logs.display()
    );
    assert!(
        !dir.path().join("teamlogs").exists(),
        "nothing in the server's working directory"
    );
    still_intact(&s, &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_only_runs_the_state_store_knows() {
    let dir = tempdir();
    // Directories that look like run logs, 90 days old, that no run of
    // the store owns: an operator's files under the log directory, or a
    // directory a workflow pointed logging.dir at.
    let logs = dir.path().join("server-logs");
    let foreign = [
        logs.join("logs/20200101-000000-abcd"),
        logs.join("notes"),
        logs.join("20200101-000000-beef"),
    ];
    let old = std::time::SystemTime::now() - Duration::from_secs(90 * 86_400);
    for d in &foreign {
        std::fs::create_dir_all(d).expect("dir");
        let f = d.join("task.log");
        std::fs::write(&f, "kept\n").expect("file");
        std::fs::File::options()
            .write(true)
            .open(&f)
            .and_then(|h| h.set_modified(old))
            .expect("age the file");
    }
    let s = Server::start(dir.path(), &["--log-retention-days", "1"]);
    let before = run_before(&s, dir.path()).await;
    still_intact(&s, &before).await;
    // The retention pass runs when the server starts, and after the run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for d in &foreign {
        assert!(d.join("task.log").is_file(), "{} was removed", d.display());
    }
    // The run just finished is within its retention: kept too.
    assert!(logs.join("logs").join(&before).is_dir());
}

// ---------------------------------------------------------------------
// Disk full: the run stayed `running` with nothing executing, and
// submissions got a bare 500.

fn in_namespace_of(pid: u32, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--"])
        .args(args)
        .output()
        .expect("nsenter")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_the_run_as_aborted_refuses_submissions_with_507_and_the_run_resumes_when_space_is_back() {
    let dir = tempdir();
    // The journal lives on an 8 MiB tmpfs mounted in the server's own
    // mount namespace; the rest of its files stay on the test's disk.
    let fs = dir.path().join("fs");
    std::fs::create_dir_all(&fs).expect("mount point");
    std::os::unix::fs::symlink(fs.join("state.db"), dir.path().join("state.db")).expect("link");
    let fs_arg = fs.display().to_string();
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs -o size=8m drover-test-full \"$0\" && exec \"$@\"",
        fs_arg.as_str(),
    ];
    let s = Server::start_wrapped(dir.path(), &[], &[], &test_home(), &wrapper);
    let pid = s.child.id();

    let (file, control) = workflow(dir.path(), "full", 1, &["a", "b"], "");
    control_file(&control, "install.a", "sleep 2");
    let id = s.submit(&file).await;
    s.wait_task(&id, "install/a@full-0", "running").await;

    // Fill the file system: dd stops at ENOSPC.
    let filler = fs.join("filler").display().to_string();
    let out = in_namespace_of(pid, &["dd", "if=/dev/zero", &format!("of={filler}"), "bs=64k"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No space left"),
        "dd should fill the tmpfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // When a finishes, its result cannot be journaled: the run stops and
    // shows aborted, with the reason.
    let stopped = s.wait_until(&id, "aborted", |v| v["status"] == "aborted").await;
    let reason = stopped["reason"].as_str().unwrap_or("");
    assert!(reason.contains("full"), "the reason says the disk is full: {reason}");
    let (_, health) = s.get("/healthz").await;
    assert_eq!(health["running"], 0, "nothing executes: {health}");

    // A submission is refused with 507 and the reason, not a bare 500.
    let (other, _) = workflow(dir.path(), "later", 1, &["a"], "");
    let (code, body) = s.post("/workflows/batch", json!({ "path": other })).await;
    assert_eq!(code, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["code"], "insufficient_storage", "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("full"), "{body}");

    // Space is back: the run is journaled aborted, resumes and finishes.
    let out = in_namespace_of(pid, &["rm", "-f", &filler]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let started = Instant::now();
    let end = s.wait_end(&id).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "resumed within the backoff"
    );
    let journal = s.journal(&id).await;
    let kinds: Vec<&str> = journal.iter().map(Sse::kind).collect();
    assert!(
        journal
            .iter()
            .any(|e| e.kind() == "run_finished" && e.data["event"]["status"] == "aborted"),
        "the stop is journaled as aborted: {kinds:?}"
    );
    // b ran once, after a's re-run.
    let executions = std::fs::read_to_string(control.join("executions.log")).expect("executions");
    let b_runs = executions.lines().filter(|l| l.contains(" install b@")).count();
    assert_eq!(b_runs, 1, "{executions}");
    // And submissions are accepted again.
    let later = s.submit(&other).await;
    assert_eq!(s.wait_end(&later).await["status"], "succeeded");
}
