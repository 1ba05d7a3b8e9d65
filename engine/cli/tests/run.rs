//! `drover run` end to end, as an operator drives it: the quickstart for
//! real (then rolled back), Ctrl-C, and `kill -9` in the middle of a run
//! followed by `--resume`, several times.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{executions, repo, slow_workflow, succeeded_and_interrupted, test_home, text};
use drover_state::{Event, RunStatus, Store};

/// drover with a private state store, run from `cwd`.
fn drover(cwd: &Path, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drover"));
    c.current_dir(cwd)
        .env("DROVER_STATE", state)
        .env("DROVER_VENV", repo().join(".venv"));
    c
}

fn output(c: &mut Command) -> Output {
    c.output().expect("drover runs")
}

fn http_get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn only_run(store: &Store) -> String {
    let runs = store.runs().expect("runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].id.clone()
}

/// The quickstart's servers are real SSH hosts (sshd in their own
/// namespaces on 127.0.10.1-3), reached over SSH: this needs root.
#[test]
fn the_quickstart_runs_for_real_and_rolls_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let workflow = repo().join("workflows/quickstart.k");
    let o = output(drover(dir.path(), &state).arg("run").arg(&workflow));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("succeeded — every task succeeded (15 succeeded"), "{out}");

    // The web services really serve, each naming its server.
    for (i, addr) in ["127.0.10.1:18080", "127.0.10.2:18080", "127.0.10.3:18080"]
        .iter()
        .enumerate()
    {
        let page = http_get(addr).unwrap_or_else(|| panic!("nothing serves {addr}"));
        assert!(page.contains(&format!("quick-{}", i + 1)), "{page}");
    }
    let store = Store::open_read_only(&state).expect("state");
    let id = only_run(&store);
    let logs = dir.path().join("logs").join(&id);
    let report = std::fs::read_to_string(logs.join("report.txt")).expect("report.txt");
    assert!(
        report.contains("install/webhello@quick-2") && report.contains("succeeded"),
        "{report}"
    );
    let jsonl = std::fs::read_to_string(logs.join("report.jsonl")).expect("report.jsonl");
    assert_eq!(jsonl.lines().count(), 16, "a head line and one line per task");
    let log = std::fs::read_to_string(logs.join("install_webhello@quick-1.log")).expect("task log");
    assert!(log.contains("attempt 1"), "{log}");

    // drover ping reaches each host over SSH, verifying its host key.
    let o = output(drover(dir.path(), &state).arg("ping").arg(&workflow));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("OK ")).count(), 3, "{out}");
    assert!(out.contains("3 of 3 reachable"), "{out}");

    let o = output(drover(dir.path(), &state).args(["rollback", &id]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(store.run(&id).expect("run").status, RunStatus::RolledBack);
    let o = output(
        drover(dir.path(), &state)
            .arg("ping")
            .arg(&workflow)
            .args(["--tag", "demo"]),
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    assert!(
        out.lines().filter(|l| l.starts_with("FAIL ")).count() >= 1 && out.contains("does not exist"),
        "{out}"
    );
    for addr in ["127.0.10.1:18080", "127.0.10.2:18080", "127.0.10.3:18080"] {
        assert!(http_get(addr).is_none(), "{addr} still serves after rollback");
    }
    assert!(
        !dir.path().join("providers/local/fleet/hosts/quick-1").exists(),
        "host state left behind"
    );
    let sshd = Command::new("pgrep")
        .args(["-f", &dir.path().join("providers/local/fleet").display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        sshd.stdout.is_empty(),
        "daemons left behind: {}",
        String::from_utf8_lossy(&sshd.stdout)
    );
}

fn wait_for_executions(control: &Path, n: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while executions(control).len() < n {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "drover ended before {n} executions"
        );
        assert!(Instant::now() < deadline, "no {n} executions within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_then_resume_finishes_the_run_and_never_reruns_a_succeeded_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let (file, control) = slow_workflow(dir.path());
    let spawn = |args: &[&str]| -> Child {
        drover(dir.path(), &state)
            .env("DROVER_HOME", test_home())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn drover")
    };

    // Kill at three different points: early, in the middle, late.
    let mut child = spawn(&["run", file.to_str().expect("utf-8")]);
    wait_for_executions(&control, 2, &mut child);
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let store = Store::open_read_only(&state).expect("state");
    let id = only_run(&store);
    assert_eq!(
        store.run(&id).expect("run").status,
        RunStatus::Running,
        "a killed run stays unfinished"
    );

    for at in [7, 12] {
        let mut child = spawn(&["run", "--resume", &id]);
        wait_for_executions(&control, at, &mut child);
        child.kill().expect("kill -9");
        child.wait().expect("reaped");
    }
    let o = output(
        drover(dir.path(), &state)
            .env("DROVER_HOME", test_home())
            .args(["run", "--resume", &id]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // The journal tells the whole story.
    let journal = store.journal(&id).expect("journal");
    let starts: Vec<bool> = journal
        .iter()
        .filter_map(|e| match e.event {
            Event::RunStarted { resumed } => Some(resumed),
            _ => None,
        })
        .collect();
    assert_eq!(starts, [false, true, true, true]);
    assert!(matches!(
        journal.last().map(|e| &e.event),
        Some(Event::RunFinished {
            status: RunStatus::Succeeded,
            ..
        })
    ));
    assert_eq!(store.run(&id).expect("run").status, RunStatus::Succeeded);

    // Every task succeeded exactly once, and none started again after.
    let (succeeded, interrupted) = succeeded_and_interrupted(&journal);
    assert_eq!(succeeded.len(), 4 * 5, "4 creates and 16 installs");
    assert!(succeeded.values().all(|&n| n == 1), "{succeeded:?}");
    assert!(
        !interrupted.is_empty(),
        "the kills interrupted no task: the test proves nothing"
    );

    // On the servers: a script ran again only when it was in flight at a
    // kill, and then with the same idempotency key.
    let execs = executions(&control);
    let mut by_target: HashMap<String, Vec<Vec<String>>> = HashMap::new();
    for e in execs {
        by_target.entry(e[2].clone()).or_default().push(e);
    }
    assert_eq!(by_target.len(), 16);
    for (target, runs) in &by_target {
        let (ts, server) = target.split_once('@').expect("taskserv@server");
        let task = format!("install/{ts}@{server}");
        let allowed = 1 + interrupted.get(&task).copied().unwrap_or(0);
        assert!(
            runs.len() <= allowed,
            "{task} ran {} times but was interrupted only {} times",
            runs.len(),
            allowed - 1
        );
        assert!(
            runs.iter().all(|r| r[4] == runs[0][4]),
            "{task}: idempotency key changed: {runs:?}"
        );
        assert!(
            dir.path()
                .join("providers/local/hosts")
                .join(server)
                .join("installed")
                .join(ts)
                .is_file()
        );
    }
}

#[test]
fn ctrl_c_stops_cleanly_with_an_aborted_report_and_the_run_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let (file, control) = slow_workflow(dir.path());
    let mut child = drover(dir.path(), &state)
        .env("DROVER_HOME", test_home())
        .arg("run")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_executions(&control, 3, &mut child);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let started = Instant::now();
    let o = child.wait_with_output().expect("drover ends");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "Ctrl-C took {:?}",
        started.elapsed()
    );
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let store = Store::open_read_only(&state).expect("state");
    let id = only_run(&store);
    assert_eq!(store.run(&id).expect("run").status, RunStatus::Aborted);
    let report = std::fs::read_to_string(dir.path().join("logs").join(&id).join("report.txt")).expect("report");
    assert!(report.contains(": aborted"), "{report}");
    assert!(report.contains("cancelled"), "{report}");

    let o = output(
        drover(dir.path(), &state)
            .env("DROVER_HOME", test_home())
            .args(["run", "--resume", &id]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(store.run(&id).expect("run").status, RunStatus::Succeeded);
}

#[test]
fn runs_lists_runs_and_resume_refuses_a_finished_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let o = output(drover(dir.path(), &state).arg("runs"));
    assert!(text(&o).contains("no runs"), "{}", text(&o));
    let o = output(drover(dir.path(), &state).args(["run", "--resume", "nope"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no run nope"), "{}", text(&o));
}

/// The plaintext values of workflows/secrets/demo.sops.yaml.
const DEMO_SECRETS: [&str; 4] = ["Zq8-velvet-Harbor-41", "tok_7f3c9e2a51d84b6c", "svc_app", "db.internal"];

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn the_secrets_workflow_reaches_the_servers_and_no_output_channel_shows_a_secret() {
    // The list above is what the real sops tool decrypts the file to.
    let sops = Command::new(repo().join(".venv/bin/sops"))
        .args(["--decrypt", "workflows/secrets/demo.sops.yaml"])
        .current_dir(repo())
        .env("SOPS_AGE_KEY_FILE", repo().join("workflows/secrets/demo-age-key.txt"))
        .output()
        .expect("sops runs (make setup installs it)");
    let plain = String::from_utf8_lossy(&sops.stdout);
    assert!(DEMO_SECRETS.iter().all(|v| plain.contains(v)), "{plain}");

    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    let o = output(
        drover(dir.path(), &state)
            .args(["run", "-v"])
            .arg(repo().join("workflows/secrets.k")),
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");

    // The secrets reached the servers, through the template.
    let conf = std::fs::read_to_string(dir.path().join("providers/local/hosts/app-1/etc/app/app.conf"))
        .expect("app.conf installed");
    assert!(
        conf.contains("postgres://svc_app:Zq8-velvet-Harbor-41@db.internal/app"),
        "{conf}"
    );
    assert!(conf.contains("api_token = tok_7f3c9e2a51d84b6c") && conf.contains("listen = 127.0.15.1:8443"));

    // No channel shows them: the live output (install.sh prints the file),
    // task logs, reports, the journal, and nothing is left in work dirs.
    for v in DEMO_SECRETS {
        assert!(!out.contains(v), "{v} in drover's output:\n{out}");
    }
    assert!(out.contains("database_url = postgres://****:****@****/app"), "{out}");
    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    let mut checked = 0;
    for f in files
        .iter()
        .filter(|f| !f.starts_with(dir.path().join("providers/local/hosts")))
    {
        let bytes = std::fs::read(f).expect("readable");
        let content = String::from_utf8_lossy(&bytes);
        for v in DEMO_SECRETS {
            assert!(!content.contains(v), "{v} found in {}", f.display());
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} files checked");
    let store = Store::open_read_only(&state).expect("state");
    let id = only_run(&store);
    let journal = format!("{:?}", store.journal(&id).expect("journal"));
    assert!(DEMO_SECRETS.iter().all(|v| !journal.contains(v)));
    let log =
        std::fs::read_to_string(dir.path().join("logs").join(&id).join("configure_appconfig@app-1.log")).expect("log");
    assert!(log.contains("api_token = ****"), "{log}");

    let o = output(drover(dir.path(), &state).args(["rollback", &id]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_run_whose_secrets_do_not_decrypt_does_not_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A copy of the secrets workflow whose key is someone else's, and one
    // whose SOPS file was tampered with.
    std::fs::create_dir_all(dir.path().join("secrets")).expect("dir");
    let wf = std::fs::read_to_string(repo().join("workflows/secrets.k")).expect("workflow");
    std::fs::write(dir.path().join("secrets.k"), &wf).expect("copy");
    let keygen = Command::new("age-keygen")
        .arg("-o")
        .arg(dir.path().join("secrets/demo-age-key.txt"))
        .output()
        .expect("age-keygen (make setup installs age)");
    assert!(keygen.status.success());
    let sops = std::fs::read_to_string(repo().join("workflows/secrets/demo.sops.yaml")).expect("sops file");
    std::fs::write(dir.path().join("secrets/demo.sops.yaml"), &sops).expect("copy");
    let state = dir.path().join("state.db");
    let o = output(drover(dir.path(), &state).arg("run").arg(dir.path().join("secrets.k")));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("demo.sops.yaml") && out.contains("no age identity can decrypt this file"),
        "{out}"
    );
    assert!(
        Store::open_read_only(&state)
            .expect("state")
            .runs()
            .expect("runs")
            .is_empty(),
        "a run was recorded"
    );

    // Right key, tampered value: the MAC check refuses the file.
    std::fs::copy(
        repo().join("workflows/secrets/demo-age-key.txt"),
        dir.path().join("secrets/demo-age-key.txt"),
    )
    .expect("key");
    let tampered = sops.replacen("tag:", "tag:A", 1);
    std::fs::write(dir.path().join("secrets/demo.sops.yaml"), tampered).expect("tamper");
    let o = output(drover(dir.path(), &state).arg("run").arg(dir.path().join("secrets.k")));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("demo.sops.yaml"), "{out}");
    assert!(DEMO_SECRETS.iter().all(|v| !out.contains(v)), "{out}");
    assert!(
        Store::open_read_only(&state)
            .expect("state")
            .runs()
            .expect("runs")
            .is_empty()
    );
}
