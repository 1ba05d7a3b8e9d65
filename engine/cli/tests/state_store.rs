//! The state store as an operator meets it: one owner per file, URLs of
//! stores this build does not have refused, listings beside the owner,
//! retention that never touches a run in progress, and a workflow's
//! `logging` honoured by `drover run`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{repo, slow_workflow, test_home, text};
use drover_state::{RunStatus, Store};

fn drover(cwd: &Path, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drover"));
    c.current_dir(cwd)
        .env("DROVER_STATE", state)
        .env("DROVER_VENV", repo().join(".venv"))
        .env("DROVER_HOME", test_home());
    c
}

fn output(c: &mut Command) -> Output {
    c.output().expect("drover runs")
}

/// A quick workflow over the test taskservs on local-connection hosts.
fn quick_workflow(dir: &Path, name: &str, logging: &str) -> PathBuf {
    let control = dir.join(format!("{name}-control"));
    std::fs::create_dir_all(&control).expect("control");
    let file = dir.join(format!("{name}.k"));
    std::fs::write(
        &file,
        format!(
            r#"import drover

workflow = drover.WorkflowDef {{
    name = "{name}"
    variables = {{CONTROL = "{}"}}
    servers = [drover.ServerDef {{hostname = "q0", provider = "local", plan = "small", connection = "local", taskservs = ["a"]}}]
    operations = [
        drover.OperationDef {{id = "create", type = "create", target = "server"}}
        drover.OperationDef {{id = "install", type = "create", target = "taskserv", depends_on = ["create"]}}
    ]
    {logging}
}}
"#,
            control.display()
        ),
    )
    .expect("workflow");
    file
}

/// A `drover serve` child on a free port of 127.0.0.1, killed on drop.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, state: &Path) -> Serve {
    let child = drover(dir, state)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "text"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("drover serve");
    let mut s = Serve(child);
    // Listening means the store is open and locked.
    let stderr = s.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("drover serve listens");
    s
}

#[test]
fn one_process_owns_a_store_and_others_are_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let first = serve(dir.path(), &state);
    let pid = first.0.id();

    // A second server on the same file does not start.
    let o = output(drover(dir.path(), &state).args(["serve", "--listen", "127.0.0.1:0"]));
    let out = text(&o);
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("in use by pid"), "{out}");
    assert!(out.contains(&format!("pid {pid}")), "the holder is named: {out}");

    // Nor does a run here on it.
    let file = quick_workflow(dir.path(), "owned", "");
    let o = output(drover(dir.path(), &state).arg("run").arg(&file));
    let out = text(&o);
    assert_ne!(o.status.code(), Some(0), "{out}");
    assert!(out.contains(&format!("pid {pid}")), "{out}");
    let run_logs = std::fs::read_dir(dir.path().join("logs")).map_or(0, |d| d.count());
    assert_eq!(run_logs, 0, "the refused run wrote logs");

    // Listing reads beside the owner.
    let o = output(drover(dir.path(), &state).arg("runs"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // The owner gone (even by SIGKILL), the store is free again.
    drop(first);
    let o = output(drover(dir.path(), &state).arg("run").arg(&file));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_state_url_is_a_database_never_a_file_and_its_password_never_shows() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let pg = format!("postgres://drover:s3cret-pw@127.0.0.1:{port}/postgres");
    let run = |args: &[&str]| {
        let o = output(
            Command::new(env!("CARGO_BIN_EXE_drover"))
                .current_dir(dir.path())
                .env("XDG_DATA_HOME", dir.path().join("xdg"))
                .args(args),
        );
        (o.status.code(), text(&o))
    };
    // Another database than SQLite or PostgreSQL: refused as a usage error.
    for cmd in ["serve", "runs"] {
        let (code, out) = run(&[cmd, "--state", "mysql://drover@127.0.0.1:3306/d"]);
        assert_eq!(code, Some(2), "{out}");
        assert!(out.contains("mysql:// is not supported"), "{out}");
    }
    // PostgreSQL: a store for drover serve only; commands that execute
    // here say so.
    let (code, out) = run(&["runs", "--state", &pg]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("drover serve") && !out.contains("s3cret-pw"), "{out}");
    // drover serve connects, and says it cannot, naming the database
    // without its password.
    let (code, out) = run(&["serve", "--state", &pg, "--logs", "server-logs"]);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("cannot reach the database"), "{out}");
    assert!(
        out.contains(&format!("127.0.0.1:{port}")) && !out.contains("s3cret-pw"),
        "{out}"
    );
    let made: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| n != "xdg" && n != "server-logs")
        .collect();
    assert!(
        made.is_empty(),
        "nothing is made of the URL (no directory named postgres:): {made:?}"
    );
}

#[test]
fn prune_removes_finished_runs_with_their_logs_and_never_an_unfinished_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let file = quick_workflow(dir.path(), "done", "");
    let o = output(drover(dir.path(), &state).arg("run").arg(&file));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // An unfinished run: killed mid-way.
    let (slow, control) = slow_workflow(dir.path());
    let mut child = drover(dir.path(), &state)
        .arg("run")
        .arg(&slow)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::executions(&control).is_empty() {
        assert!(Instant::now() < deadline, "the slow run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let runs = Store::open_read_only(&state).expect("state").runs().expect("runs");
    let done = runs
        .iter()
        .find(|r| r.status == RunStatus::Succeeded)
        .expect("a finished run")
        .id
        .clone();
    let unfinished = runs
        .iter()
        .find(|r| r.status.is_unfinished())
        .expect("an unfinished run")
        .id
        .clone();
    let logs = |id: &str| dir.path().join("logs").join(id);
    assert!(logs(&done).is_dir() && logs(&unfinished).is_dir());

    // Newer than a day: nothing goes.
    let o = output(drover(dir.path(), &state).args(["runs", "prune", "--older-than", "1d"]));
    assert!(text(&o).contains("0 run(s) removed"), "{}", text(&o));

    let o = output(drover(dir.path(), &state).args(["runs", "prune", "--older-than", "0s"]));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains(&format!("removed {done}")), "{out}");
    assert!(!out.contains(&unfinished), "an unfinished run was pruned: {out}");
    let store = Store::open_read_only(&state).expect("state");
    assert!(store.run(&done).is_err(), "the finished run is still in the store");
    assert!(store.journal(&done).expect("journal").is_empty());
    assert!(!logs(&done).exists(), "its logs are still there");
    assert!(store.run(&unfinished).expect("kept").status.is_unfinished());
    assert!(logs(&unfinished).is_dir());
    drop(store);

    // A bad duration is a usage error naming it.
    let o = output(drover(dir.path(), &state).args(["runs", "prune", "--older-than", "soon"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("soon"), "{}", text(&o));
}

#[test]
fn drover_run_honours_the_workflows_logging_and_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let file = quick_workflow(
        dir.path(),
        "logged",
        r#"logging = drover.LoggingConfig {level = "debug", format = "text", dir = "runlogs", retention_days = 1}"#,
    );
    let o = output(drover(dir.path(), &state).arg("run").arg(&file));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let store = Store::open_read_only(&state).expect("state");
    let first = store.runs().expect("runs")[0].id.clone();
    drop(store);
    // logging.dir, format text, level debug ("task started" is debug).
    let log = std::fs::read_to_string(dir.path().join("runlogs").join(&first).join("drover.log")).expect("drover.log");
    assert!(log.contains("task started") && log.contains("install/a@q0"), "{log}");
    assert!(!dir.path().join("runlogs").join(&first).join("drover.jsonl").exists());

    // The same at level warn, JSON: nothing below warn is written.
    let quiet = quick_workflow(
        dir.path(),
        "quiet",
        r#"logging = drover.LoggingConfig {level = "warn", format = "json", dir = "runlogs", retention_days = 1}"#,
    );
    let o = output(drover(dir.path(), &state).arg("run").arg(&quiet));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let store = Store::open_read_only(&state).expect("state");
    let second = store.runs().expect("runs")[0].id.clone();
    drop(store);
    let json =
        std::fs::read_to_string(dir.path().join("runlogs").join(&second).join("drover.jsonl")).unwrap_or_default();
    assert!(!json.contains("task succeeded"), "info lines at level warn: {json}");

    // The first run finished two days ago (as the store records it): the
    // next run removes it, with its logs, under retention_days = 1.
    let two_days_ago = drover_exec::scheduler::now_ms() - 2 * 86_400_000;
    let db = rusqlite::Connection::open(&state).expect("sqlite");
    db.execute(
        "UPDATE runs SET updated_at_ms = ?1 WHERE id = ?2",
        rusqlite::params![two_days_ago, first],
    )
    .expect("age the run");
    drop(db);
    let o = output(drover(dir.path(), &state).arg("run").arg(&quiet));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("removed 1 run(s) past their retention"),
        "{}",
        text(&o)
    );
    let store = Store::open_read_only(&state).expect("state");
    assert!(store.run(&first).is_err(), "the expired run is still there");
    assert!(store.run(&second).is_ok(), "a recent run was removed");
    assert!(!dir.path().join("runlogs").join(&first).exists());
}

#[test]
fn the_server_removes_finished_runs_past_their_retention_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let file = quick_workflow(
        dir.path(),
        "kept",
        r#"logging = drover.LoggingConfig {dir = "runlogs", retention_days = 1}"#,
    );
    for _ in 0..2 {
        let o = output(drover(dir.path(), &state).arg("run").arg(&file));
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let runs = Store::open_read_only(&state).expect("state").runs().expect("runs");
    let (old, recent) = (runs[1].id.clone(), runs[0].id.clone());
    let db = rusqlite::Connection::open(&state).expect("sqlite");
    db.execute(
        "UPDATE runs SET updated_at_ms = ?1 WHERE id = ?2",
        rusqlite::params![drover_exec::scheduler::now_ms() - 2 * 86_400_000, old],
    )
    .expect("age the run");
    drop(db);
    let server = serve(dir.path(), &state);
    // The server's cleanup runs when it starts, then hourly.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let store = Store::open_read_only(&state).expect("state");
        if store.run(&old).is_err() {
            assert!(store.run(&recent).is_ok(), "a recent run was removed");
            break;
        }
        assert!(Instant::now() < deadline, "the expired run is still there");
        drop(store);
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
    assert!(
        !dir.path().join("runlogs").join(&old).exists(),
        "its logs are still there"
    );
    assert!(dir.path().join("runlogs").join(&recent).is_dir());
}
