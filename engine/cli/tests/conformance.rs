//! `drover serve` against its own contracts, checked by the tools that
//! define them: schemathesis fuzzes every operation of the OpenAPI document
//! the server publishes (server errors, status codes, content types,
//! response schemas and headers, what it must accept and reject), and
//! promtool checks the Prometheus exposition at /metrics.
//!
//! `make setup` installs both: schemathesis into the project venv
//! (requirements.txt), promtool with Debian's prometheus package
//! (scripts/debian-packages.sh). A missing tool fails the test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOKEN: &str = "conformance-test-token";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn missing_tool(tool: &str, from: &str) -> ! {
    panic!("{tool} is not installed ({from}): run `make setup`")
}

/// An answer of the server.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// The header lines, lower-cased names.
    headers: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A running `drover serve` (its token: DROVER_TOKEN) over the deterministic test
/// home, on a private state store; ended when dropped.
struct Server {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["serve", "--listen", "127.0.0.1:0", "--shutdown-grace", "1"])
            .arg("--state")
            .arg(dir.path().join("state.db"))
            .arg("--logs")
            .arg(dir.path().join("logs"))
            .arg("--workflows-dir")
            .arg(dir.path())
            .current_dir(dir.path())
            .env("DROVER_HOME", repo().join("engine/exec/tests/home"))
            .env("DROVER_VENV", repo().join(".venv"))
            .env("DROVER_TOKEN", TOKEN)
            .env_remove("DROVER_METRICS_TOKEN")
            .stdout(log)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn drover serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut server = Server {
            child,
            addr: String::new(),
            dir,
        };
        // The reader goes on draining stderr for the server's lifetime.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut said = Vec::new();
        while server.addr.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => match line.strip_prefix("drover: listening on http://") {
                    Some(addr) => server.addr = addr.trim().to_string(),
                    None => said.push(line),
                },
                Err(_) => panic!("drover serve did not say it listens within 30 s:\n{}", said.join("\n")),
            }
        }
        server
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let mut s = TcpStream::connect(&self.addr).expect("connect to drover serve");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        // HTTP/1.0: the server closes the connection after the response,
        // so the body is whatever comes until then.
        let mut req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n",
            self.addr
        );
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        s.write_all(req.as_bytes()).expect("send request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("{method} {path}: no complete answer: {e}"));
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{method} {path}: not HTTP: {raw}"));
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: bad status line {status_line:?}"));
        Reply {
            status,
            headers: headers.to_lowercase(),
            body: body.to_string(),
        }
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    /// Submit a small workflow over the test taskservs (one server, create
    /// then install) and wait until its run has succeeded: run-specific
    /// endpoints then have a journal, output lines and figures to show.
    fn finished_run(&self) -> String {
        let control = self.dir.path().join("control");
        std::fs::create_dir_all(&control).expect("control dir");
        let file = self.dir.path().join("conformance.k");
        std::fs::write(
            &file,
            format!(
                r#"import drover

workflow = drover.WorkflowDef {{
    name = "conformance"
    variables = {{CONTROL = "{}"}}
    servers = [drover.ServerDef {{
        hostname = "conf-1"
        provider = "local"
        plan = "small"
        connection = "local"
        taskservs = ["a"]
    }}]
    operations = [
        drover.OperationDef {{id = "create", type = "create", target = "server"}}
        drover.OperationDef {{id = "install", type = "create", target = "taskserv", depends_on = ["create"]}}
    ]
}}
"#,
                control.display()
            ),
        )
        .expect("workflow file");
        let body = serde_json::json!({ "path": file }).to_string();
        let r = self.request("POST", "/workflows/batch", Some(&body));
        assert_eq!(r.status, 202, "submission refused: {}", r.body);
        let id = r.json()["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run_id: {}", r.body))
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.get(&format!("/workflows/{id}/status"));
            assert_eq!(r.status, 200, "{}", r.body);
            match r.json()["status"].as_str() {
                Some("succeeded") => return id,
                Some("queued" | "running") => {}
                other => panic!("run {id} ended {other:?}: {}", r.body),
            }
            assert!(
                Instant::now() < deadline,
                "run {id} not finished within 60 s: {}",
                r.body
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

/// Run `cmd` to its end or until `limit`, then kill it.
fn run_bounded(cmd: &mut Command, limit: Duration, out: &Path) -> Output {
    let stdout = std::fs::File::create(out.with_extension("out")).expect("output file");
    let stderr = std::fs::File::create(out.with_extension("err")).expect("output file");
    let mut child = cmd.stdout(stdout).stderr(stderr).spawn().expect("spawn");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}:\n{}",
                std::fs::read_to_string(out.with_extension("out")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(out.with_extension("out")).unwrap_or_default(),
        stderr: std::fs::read(out.with_extension("err")).unwrap_or_default(),
    }
}

/// Schemathesis, with every check, against the operations the server
/// documents. Run ids are taken half of the time from the finished run,
/// else generated (unknown: 404), so both sides of every run endpoint are
/// exercised. What it can do to the run (roll it back, retry it) is quick
/// over the test taskservs; submissions it generates are never valid
/// workflows, so it starts no run of its own.
#[test]
fn the_api_conforms_to_its_openapi_document() {
    let schemathesis = repo().join(".venv/bin/schemathesis");
    if !schemathesis.is_file() {
        missing_tool("schemathesis", "PyPI, into .venv");
    }
    let server = Server::start();
    let run = server.finished_run();

    // The stream endpoints with follow=true end at once on a finished run,
    // and answer 404 for an unknown one.
    let r = server.get(&format!("/workflows/{run}/events?follow=true"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(
        r.body.contains("event: transition") && r.body.contains("run_finished"),
        "{}",
        r.body
    );
    let r = server.get(&format!("/workflows/{run}/logs?follow=true"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("event: log") && r.body.contains("install ok"),
        "{}",
        r.body
    );
    for stream in ["events", "logs"] {
        let r = server.get(&format!("/workflows/no-such-run/{stream}?follow=true"));
        assert_eq!(r.status, 404, "{stream}: {}", r.body);
        assert_eq!(r.json()["code"], "not_found");
    }

    let config = server.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"[dictionaries]
runs = {{ values = ["{run}"] }}

[parameters]
"path.id" = {{ dictionary = "runs", probability = 0.5 }}

# Whether a workflow is valid is the KCL engine's and the validator's to
# say, not the JSON schema's: a well-formed submission of a wrong workflow
# is a 400 (invalid_workflow), and the generated ones all are.
[[operations]]
include-path = "/workflows/batch"
checks.positive_data_acceptance.expected-statuses = [200, 202, 400, 401, 429, 503]

# The same for the fleet operations, which evaluate an inventory (or
# workflow) source the same way; a snapshot's name may be taken (409)
# and a drift names a snapshot that may not exist (404).
[[operations]]
include-path-regex = "^/fleet/(select|exec|snapshots|drift)$"
checks.positive_data_acceptance.expected-statuses = [200, 201, 202, 400, 401, 404, 409, 429, 503]

# Schedules evaluate their workflow (or the exec's fleet file) when
# created, as a submission does; a cron expression or a time zone is the
# server's to check (400); a schedule id that does not exist is a 404; a
# path outside the workflows directories a 403.
[[operations]]
include-path-regex = "^/schedules"
checks.positive_data_acceptance.expected-statuses = [200, 201, 400, 401, 403, 404, 429, 503]
"#
        ),
    )
    .expect("schemathesis config");
    let started = Instant::now();
    let out = run_bounded(
        Command::new(&schemathesis)
            .current_dir(server.dir.path())
            .env("NO_COLOR", "1")
            .arg("--no-color")
            .arg("--config-file")
            .arg(&config)
            .arg("run")
            .arg(format!("http://{}/openapi.json", server.addr))
            .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
            .args(["--checks", "all"])
            .args(["--max-examples", "50"])
            .args(["--request-timeout", "10"])
            // One worker: with more, this Python (3.11) intermittently fails
            // inside hypothesis ("AST constructor recursion depth
            // mismatch", parsing lambda sources on several threads at
            // once); and the server has only 2 cores to share with it.
            .args(["--workers", "1"])
            .args(["--seed", "20261123"]),
        Duration::from_secs(170),
        &server.dir.path().join("schemathesis"),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems ({:?}, {:.0?}):\n{text}\n--- server log ---\n{}",
        out.status,
        started.elapsed(),
        server.log()
    );
    // It really ran, and tested every operation.
    let count = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|n| n.split('/').next()?.trim().parse::<usize>().ok())
            .unwrap_or(0)
    };
    let selected = count("Selected:");
    assert!(selected > 0 && count("Tested:") == selected, "{text}");
}

/// The exposition parses as Prometheus' text format and passes promtool's
/// lint, and the families operators alert on are there with their types.
#[test]
fn metrics_pass_promtool_and_have_the_documented_families() {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("promtool --version failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing_tool("promtool", "Debian's prometheus package"),
        Err(e) => panic!("promtool: {e}"),
    }
    let server = Server::start();
    server.finished_run();

    let r = server.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    promtool
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(r.body.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool ends");
    assert!(
        out.status.success(),
        "promtool check metrics complains ({:?}):\n{}{}\n--- /metrics ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        r.body
    );

    let types: HashMap<&str, &str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    for (family, kind) in [
        ("drover_runs", "gauge"),
        ("drover_tasks_total", "counter"),
        ("drover_task_duration_seconds", "histogram"),
        ("drover_queue_depth", "gauge"),
        ("drover_ssh_connections", "gauge"),
    ] {
        assert_eq!(types.get(family), Some(&kind), "{family}:\n{}", r.body);
    }
    // The finished run is counted.
    for sample in [
        r#"drover_runs{status="succeeded"} 1"#,
        r#"drover_tasks_total{operation="install",status="succeeded"} 1"#,
        r#"drover_task_duration_seconds_count{operation="install"} 1"#,
        "drover_queue_depth 0",
        "drover_ssh_connections 0",
    ] {
        assert!(r.body.lines().any(|l| l == sample), "no {sample}:\n{}", r.body);
    }
}
