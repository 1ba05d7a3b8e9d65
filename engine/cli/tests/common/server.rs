//! A `drover serve` child for the end-to-end tests of the server: start
//! it on a free loopback port, talk to it (JSON, server-sent events), wait
//! for runs, stop it. Also the workflow writer over the deterministic test
//! taskservs. Used by serve.rs and the attack suite (attack_*.rs).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{repo, test_home};

/// How long anything may take before a test fails instead of hanging.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Run statuses after which nothing more happens. (`aborted` is not one:
/// a server takes such runs up when it starts.)
pub const FINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "rolled_back"];

/// A `drover serve` child on `127.0.0.1:0` with its state, logs and
/// working directory in `dir`; killed when dropped, so a failing test
/// leaves nothing behind.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub client: reqwest::Client,
    /// Sent as `Authorization: Bearer` with every request, when set: at
    /// start, the server's admin token (see `start_wrapped`).
    pub token: Option<String>,
}

impl Server {
    /// A server over the test home.
    pub fn start(dir: &Path, args: &[&str]) -> Server {
        Server::start_with(dir, args, &[], &test_home())
    }

    /// A server over `home`, with `env` added to a clean environment.
    pub fn start_with(dir: &Path, args: &[&str], env: &[(&str, &str)], home: &Path) -> Server {
        Server::start_wrapped(dir, args, env, home, &[])
    }

    /// [`Server::start_with`], the binary started through `wrapper` (a
    /// program and its arguments, given the drover command line after
    /// them), e.g. to run it in a mount namespace of its own.
    pub fn start_wrapped(dir: &Path, args: &[&str], env: &[(&str, &str)], home: &Path, wrapper: &[&str]) -> Server {
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.out"))
            .expect("server.out");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_drover"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_drover")),
        };
        cmd.current_dir(dir)
            .env("DROVER_HOME", home)
            .env("DROVER_VENV", repo().join(".venv"))
            .env("XDG_DATA_HOME", dir.join("xdg"))
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_METRICS_TOKEN")
            .env_remove("DROVER_STATE")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(state_arg(dir, args))
            .arg("--logs")
            .arg(dir.join("server-logs"))
            .args(workflows_dirs(dir, args, home))
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn drover serve");
        let stderr = child.stderr.take().expect("stderr");
        // The reader drains stderr for the server's whole life, so it never
        // blocks on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + LIMIT;
        let mut seen = Vec::new();
        let base = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => match line.strip_prefix("drover: listening on ") {
                    Some(url) => break url.trim().to_string(),
                    None => seen.push(line),
                },
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "drover serve did not listen within {LIMIT:?}; stderr:\n{}",
                        seen.join("\n")
                    );
                }
            }
        };
        // Every server asks for a token (loopback included): the one given
        // as DROVER_TOKEN, else the admin token it generated on its first
        // start, `api-token` next to its state database (none with
        // --no-auth, or with --token-file elsewhere: tests set it then).
        let token = env
            .iter()
            .find(|(k, _)| *k == "DROVER_TOKEN")
            .map(|(_, v)| v.trim().to_string())
            .or_else(|| {
                std::fs::read_to_string(dir.join("api-token"))
                    .ok()
                    .map(|t| t.trim().to_string())
            });
        Server {
            child,
            base,
            client: reqwest::Client::new(),
            token,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, self.url(path)).timeout(LIMIT);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        json_of(self.request(Method::GET, path).send().await.expect("GET")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        json_of(self.request(Method::POST, path).json(&body).send().await.expect("POST")).await
    }

    /// POST without a body (the operator commands).
    pub async fn command(&self, id: &str, action: &str) -> (StatusCode, Value) {
        let path = format!("/workflows/{id}/{action}");
        json_of(self.request(Method::POST, &path).send().await.expect("POST")).await
    }

    /// Submit a workflow file; it must be accepted. Its run id.
    pub async fn submit(&self, file: &Path) -> String {
        let (code, body) = self.post("/workflows/batch", json!({"path": file})).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["status"], "queued", "{body}");
        body["run_id"].as_str().expect("run_id").to_string()
    }

    pub async fn status(&self, id: &str) -> Value {
        let (code, body) = self.get(&format!("/workflows/{id}/status")).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        body
    }

    /// Poll the run's status until `cond` holds; that status.
    pub async fn wait_until(&self, id: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let s = self.status(id).await;
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "run {id}: not {what} within {LIMIT:?}: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_until(id, status, |s| s["status"] == status).await
    }

    /// Wait for the run to end; its final status.
    pub async fn wait_end(&self, id: &str) -> Value {
        self.wait_until(id, "finished", |s| FINAL.contains(&s["status"].as_str().unwrap_or("")))
            .await
    }

    /// Wait until `task` has `status`.
    pub async fn wait_task(&self, id: &str, task: &str, status: &str) -> Value {
        self.wait_until(id, &format!("{task} {status}"), |s| {
            task_of(s, task)["status"] == status
        })
        .await
    }

    /// Poll /healthz until `running` runs execute (the run of a test has
    /// left the queue and its executor is live).
    pub async fn wait_running(&self, running: u64) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let (_, h) = self.get("/healthz").await;
            if h["running"] == running {
                return;
            }
            assert!(Instant::now() < deadline, "not {running} running within {LIMIT:?}: {h}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until no run executes. A run's status turns final a moment
    /// before the server lets go of it (writes its report, counts its last
    /// events); until then, retry and rollback are refused as busy and the
    /// metrics may lag. Tests that act on a finished run wait for this too.
    pub async fn wait_idle(&self) {
        self.wait_running(0).await;
    }

    /// Open an event stream (`Last-Event-ID` when given).
    pub async fn sse_reader(&self, path: &str, last_event_id: Option<&str>) -> SseReader {
        let mut r = self.request(Method::GET, path).timeout(Duration::from_secs(600));
        if let Some(id) = last_event_id {
            r = r.header("Last-Event-ID", id);
        }
        let resp = r.send().await.expect("GET stream");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{path}: content type {ct}");
        SseReader { resp, buf: Vec::new() }
    }

    /// The whole stream, to its end.
    pub async fn sse(&self, path: &str) -> Vec<Sse> {
        self.sse_reader(path, None).await.rest().await
    }

    /// The run's journal, to now.
    pub async fn journal(&self, id: &str) -> Vec<Sse> {
        self.sse(&format!("/workflows/{id}/events")).await
    }

    /// SIGTERM, then the exit status (within `LIMIT`).
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "drover serve did not exit within {LIMIT:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Unless the test gives its own: `--state <dir>/state.db`.
fn state_arg(dir: &Path, args: &[&str]) -> Vec<std::ffi::OsString> {
    if args.contains(&"--state") {
        return Vec::new();
    }
    vec!["--state".into(), dir.join("state.db").into()]
}

/// Unless the test chooses its own: the test's directory (its workflow
/// files are submitted by path) and the home's workflows/, when there is
/// one, as the server's workflows directories.
fn workflows_dirs(dir: &Path, args: &[&str], home: &Path) -> Vec<std::ffi::OsString> {
    if args.contains(&"--workflows-dir") {
        return Vec::new();
    }
    let mut out: Vec<std::ffi::OsString> = vec!["--workflows-dir".into(), dir.into()];
    if home.join("workflows").is_dir() {
        out.extend(["--workflows-dir".into(), home.join("workflows").into()]);
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status and JSON body of a response (the body must be JSON).
pub async fn json_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let code = resp.status();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}), status {code}: {text}"));
    (code, v)
}

/// An API error: status, code, and a message naming each of `names`.
pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str, names: &[&str]) {
    let (s, body) = got;
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_else(|| panic!("no message: {body}"));
    for n in names {
        assert!(message.contains(n), "the message should name {n:?}: {message}");
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: i64,
    pub event: String,
    pub data: Value,
}

impl Sse {
    /// The journal event's name (`task_started`, ...).
    pub fn kind(&self) -> &str {
        self.data["event"]["event"].as_str().unwrap_or("")
    }

    pub fn node(&self) -> &str {
        self.data["node"].as_str().unwrap_or("")
    }
}

/// Reads a `text/event-stream` body event by event.
pub struct SseReader {
    pub resp: reqwest::Response,
    pub buf: Vec<u8>,
}

impl SseReader {
    /// The next event, or None at the end of the stream. Comments
    /// (keep-alives) are skipped.
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                if let Some(ev) = parse_sse_block(&String::from_utf8_lossy(&block)) {
                    return Some(ev);
                }
                continue;
            }
            let chunk = tokio::time::timeout(LIMIT, self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {LIMIT:?}"))
                .expect("read the stream");
            match chunk {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => {
                    assert!(
                        self.buf.iter().all(u8::is_ascii_whitespace),
                        "the stream ended inside an event: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
            }
        }
    }

    /// Every remaining event, to the end of the stream.
    pub async fn rest(mut self) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(ev) = self.next().await {
            out.push(ev);
        }
        out
    }
}

/// One event block: `id:`, `event:` and `data:` fields (data lines
/// joined), `:` comments ignored. None for a block of comments only.
pub fn parse_sse_block(block: &str) -> Option<Sse> {
    let (mut id, mut event, mut data) = (None, None, Vec::new());
    for line in block.lines().filter(|l| !l.is_empty() && !l.starts_with(':')) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.parse::<i64>().unwrap_or_else(|_| panic!("event id {value:?}"))),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value.to_string()),
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    if id.is_none() && event.is_none() && data.is_empty() {
        return None;
    }
    let data = data.join("\n");
    Some(Sse {
        id: id.unwrap_or_else(|| panic!("an event without an id: {block:?}")),
        event: event.unwrap_or_else(|| panic!("an event without a type: {block:?}")),
        data: serde_json::from_str(&data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}")),
    })
}

/// Ids strictly increasing, and each equal to its data's `seq`.
pub fn assert_ids_increase(events: &[Sse]) {
    for w in events.windows(2) {
        assert!(
            w[0].id < w[1].id,
            "ids not strictly increasing: {} then {}",
            w[0].id,
            w[1].id
        );
    }
    for e in events {
        assert_eq!(Some(e.id), e.data["seq"].as_i64(), "{e:?}");
    }
}

pub fn ids(events: &[Sse]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}

/// A task in a status view.
pub fn task_of<'a>(status: &'a Value, task: &str) -> &'a Value {
    status["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|op| op["tasks"].as_array().into_iter().flatten())
        .find(|t| t["id"] == task)
        .unwrap_or(&Value::Null)
}

/// An operation in a status view.
pub fn operation_of<'a>(status: &'a Value, op: &str) -> &'a Value {
    status["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["id"] == op)
        .unwrap_or_else(|| panic!("no operation {op}: {status:#}"))
}

/// Every task of a status view.
pub fn tasks_of(status: &Value) -> Vec<&Value> {
    status["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|op| op["tasks"].as_array().into_iter().flatten())
        .collect()
}

/// A workflow `name` over `servers` local servers (`<name>-0`, ...) each
/// carrying `taskservs`: a create operation, then an install. `settings`
/// goes into the WorkflowDef as written. Attempts are not retried unless
/// `settings` says so. Returns the file and its control directory.
pub fn workflow(dir: &Path, name: &str, servers: usize, taskservs: &[&str], settings: &str) -> (PathBuf, PathBuf) {
    let control = dir.join(format!("control-{name}"));
    std::fs::create_dir_all(&control).expect("control dir");
    let file = dir.join(format!("{name}.k"));
    let retry = if settings.contains("retry_policy") {
        ""
    } else {
        "retry_policy = drover.RetryPolicy {max_attempts = 1}"
    };
    let taskservs: Vec<String> = taskservs.iter().map(|t| format!("{t:?}")).collect();
    std::fs::write(
        &file,
        format!(
            r#"import drover

workflow = drover.WorkflowDef {{
    name = "{name}"
    variables = {{CONTROL = "{control}"}}
    {retry}
    {settings}
    servers = [drover.ServerDef {{
        hostname = "{name}-${{i}}"
        provider = "local"
        plan = "small"
        connection = "local"
        taskservs = [{taskservs}]
    }} for i in range({servers})]
    operations = [
        drover.OperationDef {{id = "create", type = "create", target = "server"}}
        drover.OperationDef {{id = "install", type = "create", target = "taskserv", depends_on = ["create"]}}
    ]
}}
"#,
            control = control.display(),
            taskservs = taskservs.join(", "),
        ),
    )
    .expect("workflow file");
    (file, control)
}

/// Tell behave.sh what `key` (`install`, `install.a`, `install.a@host`)
/// does.
pub fn control(dir: &Path, key: &str, mode: &str) {
    std::fs::write(dir.join(key), mode).expect("control file");
}

/// behave.sh's record: one line per execution, `result action target ...`.
pub fn executions(control: &Path) -> Vec<(String, String, String)> {
    execution_lines(control)
        .into_iter()
        .map(|f| (f[0].clone(), f[1].clone(), f[2].clone()))
        .collect()
}

/// behave.sh's record, every field: result, action, target, attempt,
/// idempotency key, start and end (ns).
pub fn execution_lines(control: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(control.join("executions.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>())
        .inspect(|f| assert_eq!(f.len(), 7, "executions.log line {f:?}"))
        .collect()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}
