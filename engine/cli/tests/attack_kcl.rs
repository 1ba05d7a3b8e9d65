//! The attack suite, KCL evaluation: what a submitted workflow (a KCL
//! program) could do to `drover serve` by being evaluated, and what a
//! submission by path could make it read. One test per finding; each
//! asserts the safe answer (status, code, a message naming the limit or
//! the path), then that the server is still up, that a normal workflow
//! still validates at once, and that a run submitted before the attack
//! finished well.
//!
//! Submitted workflows are evaluated in KCL worker processes (`drover
//! kcl-worker`, children of the server); the tests find them in /proc to
//! kill one, to learn another's directory, and to check what is left.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::server::*;
use common::test_home;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A lambda recursion `f(n)` is n calls deep.
const DEEP: &str = "f = lambda n: int -> int { 0 if n <= 0 else 1 + f(n - 1) }\n";

/// A program that takes a while and little memory: `k` recursions 6,000
/// deep (~0.6 s each on an idle machine).
fn slow(k: usize) -> String {
    format!("{DEEP}_slow = [f(6000) for _ in range({k})]\n")
}

/// A valid workflow source named by the KCL expression `name`, after
/// `top` (top-level statements).
fn source(top: &str, name: &str) -> String {
    format!(
        r#"import drover
{top}
workflow = drover.WorkflowDef {{
    name = {name}
    servers = [drover.ServerDef {{hostname = "k-0", provider = "local", plan = "small", connection = "local", taskservs = ["a"]}}]
    operations = [drover.OperationDef {{id = "create", type = "create", target = "server"}}]
}}
"#
    )
}

fn validate(text: &str) -> Value {
    json!({"source": text, "validate_only": true})
}

/// A run that is going on during the attack: submitted, checked
/// afterwards.
async fn run_before(s: &Server, dir: &Path) -> String {
    let (file, control) = workflow(dir, "before", 1, &["a"], "");
    std::fs::write(control.join("install"), "sleep 1").expect("control file");
    s.submit(&file).await
}

/// After an attack: the server answers, a normal workflow validates at
/// once, and the run from before the attack succeeded.
async fn still_fine(s: &Server, before: &str) {
    let (code, health) = s.get("/healthz").await;
    assert_eq!(code, StatusCode::OK, "{health}");
    let started = Instant::now();
    let (code, body) = s.post("/workflows/batch", validate(&source("", "\"normal\""))).await;
    let took = started.elapsed();
    assert_eq!(code, StatusCode::OK, "a normal workflow after the attack: {body}");
    assert_eq!(body["workflow"], "normal", "{body}");
    assert!(took < Duration::from_secs(5), "a normal validation took {took:?}");
    let end = s.wait_end(before).await;
    assert_eq!(end["status"], "succeeded", "the run from before the attack: {end:#}");
}

fn server_pid(s: &Server) -> u32 {
    s.child.id()
}

/// The parent of `pid`, from /proc/PID/stat (the field after the
/// command's closing parenthesis and the state).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The server's KCL workers (its children running `drover kcl-worker`).
fn workers_of(server: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(server))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == b"kcl-worker"))
        })
        .collect()
}

/// A worker's working directory: its area when idle, the evaluation's
/// directory (`<area>/eval-N`) while it evaluates.
fn cwd_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

fn is_evaluating(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("eval-") && n != "eval-0")
}

/// A worker in the middle of an evaluation: its pid and the evaluation's
/// directory.
async fn busy_worker(server: u32) -> (u32, PathBuf) {
    let deadline = Instant::now() + LIMIT;
    loop {
        for pid in workers_of(server) {
            if let Some(dir) = cwd_of(pid).filter(|d| is_evaluating(d)) {
                return (pid, dir);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no KCL worker started evaluating within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until the server has `n` workers again (a dead one is replaced).
async fn wait_workers(server: u32, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let w = workers_of(server);
        if w.len() == n {
            return w;
        }
        assert!(Instant::now() < deadline, "not {n} KCL workers within {LIMIT:?}: {w:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

fn problems(body: &Value) -> Vec<String> {
    body["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems: {body}"))
        .iter()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------
// Recursion: an endless one overflowed the evaluating thread's stack and
// aborted the server; a finite one 3,000 deep did too.

#[tokio::test(flavor = "multi_thread")]
async fn endless_recursion_and_a_self_referencing_schema_are_refused_with_422_naming_the_stack() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--kcl-workers", "2", "--kcl-timeout", "60"]);
    let before = run_before(&s, dir.path()).await;
    let workers = workers_of(server_pid(&s));
    assert_eq!(workers.len(), 2, "two KCL workers: {workers:?}");

    let endless = "f = lambda n: int -> int { f(n + 1) }\n_x = f(0)\n";
    let schema = "schema A:\n    a: A = A {}\n\nworkflow = A {}\n";
    for program in [endless, schema] {
        let got = s.post("/workflows/batch", validate(program)).await;
        assert_error(
            &got,
            StatusCode::UNPROCESSABLE_ENTITY,
            "evaluation_limit",
            &["overflowed the evaluator's stack of 16 MiB", "recursion too deep"],
        );
    }
    // As a run, too: refused, nothing recorded.
    let got = s.post("/workflows/batch", json!({"source": endless})).await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "evaluation_limit", &["stack"]);
    let (_, list) = s.get("/workflows").await;
    assert_eq!(
        list["runs"].as_array().map(Vec::len),
        Some(1),
        "only the run from before: {list}"
    );

    still_fine(&s, &before).await;
    // The workers that overflowed were replaced.
    let now = wait_workers(server_pid(&s), 2).await;
    assert!(
        now.iter().any(|p| !workers.contains(p)),
        "dead workers are replaced by new ones: {workers:?} then {now:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recursion_3000_deep_evaluates() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--kcl-workers", "1", "--kcl-timeout", "60"]);
    let before = run_before(&s, dir.path()).await;
    let lambda = source(DEEP, "\"deep-${f(3000)}\"");
    let schema = source(
        "schema Node:\n    n: int\n    next?: Node\n\ng = lambda n: int -> Node { Node {n = n, next = g(n - 1) if n > 0 else None} }\n",
        "\"node-${g(3000).n}\"",
    );
    for (text, name) in [(lambda, "deep-3000"), (schema, "node-3000")] {
        let (code, body) = s.post("/workflows/batch", validate(&text)).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["workflow"], name, "{body}");
    }
    still_fine(&s, &before).await;
}

// ---------------------------------------------------------------------
// Memory: a list of 20 million took 3.6 GB of the server; 60 million
// killed it.

#[tokio::test(flavor = "multi_thread")]
async fn a_20_million_element_list_is_refused_with_422_naming_the_memory_limit_and_the_server_stays_small() {
    let dir = tempdir();
    // The default limit (2 GiB); time enough to reach it on a busy machine.
    let s = Server::start(dir.path(), &["--kcl-workers", "2", "--kcl-timeout", "120"]);
    let before = run_before(&s, dir.path()).await;
    let got = s
        .post("/workflows/batch", validate("_x = [i for i in range(20000000)]\n"))
        .await;
    assert_error(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "evaluation_limit",
        &["ran out of memory (limit 2 GiB)", "--kcl-memory"],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", server_pid(&s))).expect("status");
    let peak = kib(&status, "VmHWM:");
    assert!(
        peak < 300 * 1024,
        "the server's own peak RSS stays small: {} MiB",
        peak / 1024
    );
    // A smaller limit is named as such.
    let dir2 = tempdir();
    let s2 = Server::start(dir2.path(), &["--kcl-workers", "1", "--kcl-memory", "512"]);
    let got = s2
        .post("/workflows/batch", validate("_x = [i for i in range(20000000)]\n"))
        .await;
    assert_error(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "evaluation_limit",
        &["ran out of memory (limit 512 MiB)"],
    );
    still_fine(&s, &before).await;
}

// ---------------------------------------------------------------------
// Time: one lock around the engine; a trivial validation waited 18 s
// behind a long evaluation.

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_evaluation_does_not_hold_up_a_validation() {
    let dir = tempdir();
    let s = std::sync::Arc::new(Server::start(
        dir.path(),
        &["--kcl-workers", "2", "--kcl-timeout", "120"],
    ));
    let before = run_before(&s, dir.path()).await;
    // The run's own evaluation is over once it is queued.
    let slow_text = source(&slow(6), "\"slow-${len(_slow)}\"");
    let slow_request = {
        let s = s.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = s.post("/workflows/batch", validate(&slow_text)).await;
            (got, started.elapsed())
        })
    };
    busy_worker(server_pid(&s)).await;
    let started = Instant::now();
    let (code, body) = s.post("/workflows/batch", validate(&source("", "\"quick\""))).await;
    let quick = started.elapsed();
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(
        !slow_request.is_finished(),
        "the slow evaluation is still going when the quick one answers ({quick:?})"
    );
    assert!(quick < Duration::from_secs(2), "the quick validation took {quick:?}");
    let ((code, body), slow_took) = slow_request.await.expect("the slow request");
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["workflow"], "slow-6");
    assert!(slow_took > quick, "slow {slow_took:?}, quick {quick:?}");
    still_fine(&s, &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_evaluation_past_the_time_limit_is_stopped_with_422_naming_the_limit() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--kcl-workers", "1", "--kcl-timeout", "1"]);
    let before = run_before(&s, dir.path()).await;
    let started = Instant::now();
    let got = s.post("/workflows/batch", validate(&slow(20))).await;
    let took = started.elapsed();
    assert_error(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        "evaluation_limit",
        &["exceeded the time limit of 1 s", "--kcl-timeout"],
    );
    assert!(
        took < Duration::from_secs(5),
        "stopped at the limit, not later: {took:?}"
    );
    wait_workers(server_pid(&s), 1).await;
    still_fine(&s, &before).await;
}

// ---------------------------------------------------------------------
// validate_only and dry_run were not counted by the queue limits.

#[tokio::test(flavor = "multi_thread")]
async fn evaluations_waiting_for_a_worker_count_against_the_queue_and_a_flood_gets_429() {
    let dir = tempdir();
    let s = std::sync::Arc::new(Server::start(
        dir.path(),
        &["--kcl-workers", "1", "--max-pending", "2", "--kcl-timeout", "120"],
    ));
    let before = run_before(&s, dir.path()).await;
    s.wait_status(&before, "running").await;
    let text = source(&slow(3), "\"flood\"");
    let mut requests = Vec::new();
    for i in 0..6 {
        let (s, text) = (s.clone(), text.clone());
        let body = if i % 2 == 0 {
            json!({"source": text, "validate_only": true})
        } else {
            json!({"source": text, "dry_run": true})
        };
        requests.push(tokio::spawn(async move { s.post("/workflows/batch", body).await }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for r in requests {
        let got = r.await.expect("request");
        match got.0 {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_error(
                    &got,
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue_full",
                    &["all 1 KCL workers are busy", "2 evaluations wait"],
                );
                refused += 1;
            }
            other => panic!("unexpected answer {other}: {}", got.1),
        }
    }
    assert_eq!((ok, refused), (3, 3), "one evaluating, two waiting, three refused");
    let metrics = s
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("rejected") && l.trim_end().ends_with(" 3")),
        "three submissions counted as rejected:\n{metrics}"
    );
    still_fine(&s, &before).await;
}

// ---------------------------------------------------------------------
// The environment: the engine ran with the server's, so
// file.read_env("DROVER_TOKEN") gave the token back.

#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_reads_nothing_of_the_servers_environment() {
    let dir = tempdir();
    let token = "server-admin-token-kcl-0123456789abcdef";
    let aws = "aws-secret-key-kcl-4711-do-not-leak";
    let s = Server::start_with(
        dir.path(),
        &["--kcl-workers", "1"],
        &[("DROVER_TOKEN", token), ("AWS_SECRET_ACCESS_KEY", aws)],
        &test_home(),
    );
    let before = run_before(&s, dir.path()).await;
    for var in [
        "DROVER_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "DROVER_HOME",
        "DROVER_VENV",
        "XDG_DATA_HOME",
    ] {
        let text = source(
            "import file",
            &format!("\"v-\" + (file.read_env(\"{var}\") or \"unset\")"),
        );
        let (code, body) = s.post("/workflows/batch", validate(&text)).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(body["workflow"], "v-unset", "{var} reached the program: {body}");
        let text = body.to_string();
        assert!(!text.contains(token) && !text.contains(aws), "{text}");
    }
    // What it has: a PATH, and a HOME that is its own scratch directory.
    let text = source("import file", "(file.read_env(\"HOME\") or \"none\")");
    let (code, body) = s.post("/workflows/batch", validate(&text)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let home = body["workflow"].as_str().expect("HOME").to_string();
    assert!(home.contains("drover-kcl-"), "HOME is the worker's area: {home}");
    assert!(!home.starts_with(&dir.path().display().to_string()), "{home}");
    still_fine(&s, &before).await;
}

// ---------------------------------------------------------------------
// Files: every evaluation shared the submissions directory and could
// read what the server could. The engine refuses most paths outside a
// program's directory by itself (file.read: "escapes module root"), but
// not all (crypto.filesha256 reads any file): the worker's Landlock
// policy is what refuses those.

#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_cannot_read_the_servers_files_or_another_submission() {
    let dir = tempdir();
    let s = std::sync::Arc::new(Server::start(
        dir.path(),
        &["--kcl-workers", "2", "--kcl-timeout", "120"],
    ));
    let before = run_before(&s, dir.path()).await;
    let token_file = dir.path().join("api-token");
    assert!(token_file.is_file(), "the server's admin token file");
    // A source kept for a run: another submission's, in submissions/.
    let (code, body) = s
        .post("/workflows/batch", json!({"source": source("", "\"kept\"")}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let kept_id = body["run_id"].as_str().expect("run id").to_string();
    s.wait_end(&kept_id).await;
    let (_, list) = s.get("/workflows").await;
    let kept_file = list["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["run_id"] == kept_id.as_str())
        .and_then(|r| r["file"].as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("the run's file: {list:#}"));
    assert!(kept_file.is_file(), "{kept_file:?}");

    // Another submission being evaluated now, in another worker.
    let other_text = source(&slow(6), "\"other-secret-name\"");
    let other = {
        let s = s.clone();
        tokio::spawn(async move { s.post("/workflows/batch", validate(&other_text)).await })
    };
    let (_, other_dir) = busy_worker(server_pid(&s)).await;
    let other_source = std::fs::read_dir(&other_dir)
        .expect("the other evaluation's directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "k"))
        .expect("the other submission's source");

    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let token = std::fs::read_to_string(&token_file).expect("token");
    let targets = [
        PathBuf::from("/etc/hostname"),
        token_file.clone(),
        dir.path().join("state.db"),
        PathBuf::from("/proc/self/environ"),
        kept_file.clone(),
        other_source.clone(),
        other_dir.clone(),
        dir.path().join("before.k"),
    ];
    for target in &targets {
        for call in ["crypto.filesha256", "file.read"] {
            let text = source(
                "import crypto\nimport file",
                &format!("{call}(\"{}\")", target.display()),
            );
            let (code, body) = s.post("/workflows/batch", validate(&text)).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{call} of {target:?} must fail: {body}");
            assert_eq!(body["code"], "invalid_workflow", "{body}");
            let said = problems(&body).join("\n");
            assert!(
                said.contains("Permission denied")
                    || said.contains("escapes module root")
                    || said.contains("Is a directory"),
                "{call} of {target:?}: {said}"
            );
            if call == "crypto.filesha256" && target.is_file() {
                assert!(
                    said.contains("Permission denied"),
                    "the worker's policy refuses {target:?}, not the engine: {said}"
                );
            }
            let text = body.to_string();
            assert!(!text.contains(token.trim()), "the token leaked: {text}");
            if !hostname.trim().is_empty() {
                assert!(!text.contains(&format!("\"{}\"", hostname.trim())), "{text}");
            }
        }
    }
    let (code, body) = other.await.expect("the other request");
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["workflow"], "other-secret-name");
    // The other evaluation's directory went with it, as did every
    // validation's copy of its source.
    assert!(!other_dir.exists(), "{other_dir:?} is left behind");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("submissions"))
        .expect("submissions")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(left, vec![kept_file], "only the run's source is kept");
    still_fine(&s, &before).await;
}

// ---------------------------------------------------------------------
// Paths: {"path": "/etc/hostname"} answered with identifiers from the
// file; /proc/self/environ leaked fragments; ../ worked.

#[tokio::test(flavor = "multi_thread")]
async fn path_submissions_outside_the_workflows_dirs_are_refused_without_their_content() {
    let dir = tempdir();
    let root = dir.path().join("wf");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::create_dir_all(&outside).expect("outside");
    let secret_k = outside.join("secret.k");
    std::fs::write(&secret_k, "import drover\nsecret_identifier_Qx7 = 1\n").expect("outside file");
    std::fs::write(root.join("notes.txt"), "note_identifier_Zr4\n").expect("notes");
    std::os::unix::fs::symlink(&secret_k, root.join("link.k")).expect("symlink");
    std::os::unix::fs::symlink("/etc", root.join("etc")).expect("symlink");
    std::fs::write(root.join("good.k"), source("", "\"good\"")).expect("good.k");
    let root_arg = root.display().to_string();
    let s = Server::start(dir.path(), &["--kcl-workers", "1", "--workflows-dir", &root_arg]);
    // The run from before comes from the root.
    let (file, control) = workflow(&root, "before", 1, &["a"], "");
    std::fs::write(control.join("install"), "sleep 1").expect("control file");
    let before = s.submit(&file).await;

    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let canonical_root = root.canonicalize().expect("root").display().to_string();
    let refused: [(String, StatusCode); 9] = [
        ("/etc/hostname".into(), StatusCode::FORBIDDEN),
        ("/proc/self/environ".into(), StatusCode::FORBIDDEN),
        ("../outside/secret.k".into(), StatusCode::FORBIDDEN),
        (format!("{}/../outside/secret.k", root.display()), StatusCode::FORBIDDEN),
        ("link.k".into(), StatusCode::FORBIDDEN),
        ("etc/hostname".into(), StatusCode::FORBIDDEN),
        (
            dir.path().join("api-token").display().to_string(),
            StatusCode::FORBIDDEN,
        ),
        // Missing, but outside: no hint whether it exists.
        ("/nonexistent/dir/x.k".into(), StatusCode::FORBIDDEN),
        ("notes.txt".into(), StatusCode::BAD_REQUEST),
    ];
    for (path, status) in &refused {
        for mode in ["validate_only", "dry_run"] {
            let got = s.post("/workflows/batch", json!({"path": path, mode: true})).await;
            let code = if *status == StatusCode::FORBIDDEN {
                "forbidden"
            } else {
                "invalid_request"
            };
            assert_error(&got, *status, code, &[path.as_str(), &canonical_root]);
            let text = got.1.to_string();
            for content in ["secret_identifier_Qx7", "note_identifier_Zr4", "DROVER", "PATH="] {
                assert!(!text.contains(content), "{path}: the answer shows the file: {text}");
            }
            if !hostname.trim().is_empty() {
                assert!(
                    !text.contains(hostname.trim()),
                    "{path}: the answer shows the file: {text}"
                );
            }
        }
        // Nor as a run.
        let got = s.post("/workflows/batch", json!({"path": path})).await;
        assert_eq!(got.0, *status, "{path}: {}", got.1);
    }
    // Inside the root: relative to it, or absolute; a missing one is said
    // to be missing.
    for path in ["good.k".to_string(), root.join("good.k").display().to_string()] {
        let (code, body) = s
            .post("/workflows/batch", json!({"path": path, "validate_only": true}))
            .await;
        assert_eq!(code, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["workflow"], "good");
    }
    let missing = s
        .post("/workflows/batch", json!({"path": "missing.k", "validate_only": true}))
        .await;
    assert_error(&missing, StatusCode::BAD_REQUEST, "invalid_workflow", &[]);
    assert!(
        problems(&missing.1)[0].contains("no such workflow file"),
        "{}",
        missing.1
    );
    let (_, list) = s.get("/workflows").await;
    assert_eq!(
        list["runs"].as_array().map(Vec::len),
        Some(1),
        "nothing refused was recorded: {list}"
    );
    still_fine(&s, &before).await;
}

// ---------------------------------------------------------------------
// A worker that dies mid-evaluation (killed from outside).

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_evaluation_answers_422_and_the_next_submission_works() {
    let dir = tempdir();
    let s = std::sync::Arc::new(Server::start(
        dir.path(),
        &["--kcl-workers", "1", "--kcl-timeout", "120"],
    ));
    let before = run_before(&s, dir.path()).await;
    let victim = {
        let s = s.clone();
        tokio::spawn(async move { s.post("/workflows/batch", validate(&slow(20))).await })
    };
    let (pid, eval_dir) = busy_worker(server_pid(&s)).await;
    let area = eval_dir.parent().expect("the area").to_path_buf();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the worker");
    let got = victim.await.expect("the request");
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "evaluation_limit", &["SIGKILL"]);
    assert!(!area.exists(), "the dead worker's area {area:?} is removed");
    let now = wait_workers(server_pid(&s), 1).await;
    assert_ne!(now, vec![pid], "a new worker took its place");
    still_fine(&s, &before).await;
}

// ---------------------------------------------------------------------
// An invalid workflow's answer listed every problem, however many.

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_lists_at_most_50_problems_and_says_how_many_more() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--kcl-workers", "1"]);
    let before = run_before(&s, dir.path()).await;
    let (file, _) = workflow(dir.path(), "many", 120, &["zzz"], "");
    let got = s
        .post("/workflows/batch", json!({"path": file, "validate_only": true}))
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_workflow",
        &["120 problem(s)", "the first 50 are listed, and 70 more"],
    );
    let listed = problems(&got.1);
    assert_eq!(listed.len(), 50, "{listed:#?}");
    assert!(
        listed.iter().all(|p| p.contains("unknown taskserv \"zzz\"")),
        "{listed:#?}"
    );
    still_fine(&s, &before).await;
}
