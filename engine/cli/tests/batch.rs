//! `drover serve` + `drover batch` end to end, as an operator drives them:
//! submit with `--watch`, the server killed with SIGKILL mid-run and
//! started again (the watch rides through it, the run completes, no
//! succeeded task runs twice), a failing run's exit status, and a
//! rollback over the API.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{executions, repo, slow_workflow, succeeded_and_interrupted, test_home, text};
use drover_state::{Event, RunStatus, Store};

fn drover(cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drover"));
    c.current_dir(cwd)
        .env("DROVER_HOME", test_home())
        .env("DROVER_VENV", repo().join(".venv"))
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_TOKEN_FILE")
        // The server's state (each test's serve has `--state` the same):
        // `drover batch` finds the server's token next to it, by itself.
        .env("DROVER_STATE", cwd.join("state.db"))
        .env("XDG_DATA_HOME", cwd.join("xdg"));
    c
}

/// A `drover serve` child, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Start on `listen` (`127.0.0.1:0` for any port) and wait until it
    /// listens.
    fn start(dir: &Path, listen: &str) -> Server {
        let mut child = drover(dir)
            .args(["serve", "--listen", listen, "--shutdown-grace", "5"])
            .arg("--state")
            .arg(dir.join("state.db"))
            .arg("--logs")
            .arg(dir.join("server-logs"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn drover serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("drover serve ended before listening"))
                .expect("stderr line");
            if let Some(rest) = line.strip_prefix("drover: listening on ") {
                break rest.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }

    fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_output(child: Child, limit: Duration) -> Output {
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => o.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(id.to_string()).status();
            panic!("drover batch did not end within {limit:?}");
        }
    }
}

#[test]
fn submit_watch_survives_a_server_killed_with_sigkill_and_the_run_completes_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, control) = slow_workflow(dir.path());
    let mut server = Server::start(dir.path(), "127.0.0.1:0");
    let url = server.url.clone();
    let listen = url.trim_start_matches("http://").to_string();

    let watch = drover(dir.path())
        .env("DROVER_API", &url)
        .args(["batch", "submit"])
        .arg(&file)
        .arg("--watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover batch submit");

    // Mid-run: some installs done, others in flight.
    wait_for("6 script executions", Duration::from_secs(60), || {
        executions(&control).len() >= 6
    });
    server.kill_9();
    let store = Store::open_read_only(&dir.path().join("state.db")).expect("state");
    let runs = store.runs().expect("runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let id = runs[0].id.clone();
    assert_eq!(
        store.run(&id).expect("run").status,
        RunStatus::Running,
        "a run killed with its server stays unfinished"
    );

    // The same address again: the watching client reconnects to it.
    std::thread::sleep(Duration::from_millis(300));
    let server = Server::start(dir.path(), &listen);
    let o = wait_output(watch, Duration::from_secs(120));
    let out = text(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "watch should exit with the run's status:\n{out}"
    );
    assert!(out.contains(&id), "{out}");
    assert_eq!(store.run(&id).expect("run").status, RunStatus::Succeeded);

    // The journal: one fresh start, one resume by the restarted server;
    // every task succeeded exactly once and never started after that.
    let journal = store.journal(&id).expect("journal");
    let starts: Vec<bool> = journal
        .iter()
        .filter_map(|e| match e.event {
            Event::RunStarted { resumed } => Some(resumed),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [false, true], "{journal:?}");
    let (succeeded, interrupted) = succeeded_and_interrupted(&journal);
    assert_eq!(succeeded.len(), 20, "4 creates and 16 installs: {succeeded:?}");
    assert!(succeeded.values().all(|&n| n == 1), "{succeeded:?}");
    assert!(
        !interrupted.is_empty(),
        "the kill interrupted no task: the test proves nothing"
    );

    // On the servers: a script ran again only if it was in flight at the
    // kill, and then with the same idempotency key.
    let mut by_target: HashMap<String, Vec<Vec<String>>> = HashMap::new();
    for e in executions(&control) {
        by_target.entry(e[2].clone()).or_default().push(e);
    }
    assert_eq!(by_target.len(), 16);
    for (target, runs) in &by_target {
        let (ts, server_name) = target.split_once('@').expect("taskserv@server");
        let task = format!("install/{ts}@{server_name}");
        let allowed = 1 + interrupted.get(&task).copied().unwrap_or(0);
        assert!(runs.len() <= allowed, "{task} ran {} times: {runs:?}", runs.len());
        assert!(runs.iter().all(|r| r[4] == runs[0][4]), "{task}: key changed: {runs:?}");
    }

    // batch status agrees, as JSON.
    let o = drover(dir.path())
        .env("DROVER_API", &server.url)
        .args(["batch", "status", &id, "--format", "json"])
        .output()
        .expect("batch status");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    assert_eq!(v["status"], "succeeded", "{v}");

    // batch rollback undoes it: every installed taskserv removed, every
    // server deleted.
    let installed = |s: &str, t: &str| {
        dir.path()
            .join("providers/local/hosts")
            .join(s)
            .join("installed")
            .join(t)
            .exists()
    };
    assert!(installed("c2", "d"));
    let o = wait_output(
        drover(dir.path())
            .env("DROVER_API", &server.url)
            .args(["batch", "rollback", &id, "--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("batch rollback"),
        Duration::from_secs(120),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(store.run(&id).expect("run").status, RunStatus::RolledBack);
    for s in ["c0", "c1", "c2", "c3"] {
        for t in ["a", "b", "c", "d"] {
            assert!(!installed(s, t), "{t} still installed on {s} after rollback");
        }
        assert!(
            !dir.path().join("providers/local/hosts").join(s).exists(),
            "server {s} not deleted"
        );
    }
}

#[test]
fn a_failing_run_makes_watch_exit_4_and_status_names_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, control) = slow_workflow(dir.path());
    std::fs::remove_file(control.join("install")).expect("control");
    std::fs::write(control.join("install.c@c1"), "fail").expect("control");
    let server = Server::start(dir.path(), "127.0.0.1:0");
    let o = drover(dir.path())
        .env("DROVER_API", &server.url)
        .args(["batch", "submit"])
        .arg(&file)
        .arg("--watch")
        .output()
        .expect("batch submit");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(out.contains("install/c@c1"), "the failed task is named: {out}");
    let store = Store::open_read_only(&dir.path().join("state.db")).expect("state");
    let id = store.runs().expect("runs")[0].id.clone();
    assert_eq!(store.run(&id).expect("run").status, RunStatus::Failed);
}
