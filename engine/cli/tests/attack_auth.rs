//! Attacks on `drover serve`'s authentication, roles and audit trail, as
//! someone on the same machine (or holding a lesser token) would try them.
//! Every case asserts the safe answer, and that the server is still up and
//! a run submitted before is intact (its status and its journal as they
//! were).
//!
//! Layout: `common::server` starts the binary and talks to it with the
//! server's own admin token (read from `<dir>/api-token`); [`Probe`] sends
//! requests with another token, or none; [`refused_start`] runs a `drover
//! serve` that must not start.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use common::server::*;
use common::{repo, test_home};

/// Requests as a given token (or none), beside the harness's admin ones.
struct Probe<'a> {
    s: &'a Server,
    token: Option<String>,
}

impl<'a> Probe<'a> {
    fn new(s: &'a Server, token: Option<&str>) -> Probe<'a> {
        Probe {
            s,
            token: token.map(str::to_string),
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.s.client.request(method, self.s.url(path)).timeout(LIMIT);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let code = resp.status();
        let text = resp.text().await.expect("body");
        // /metrics answers text; everything else JSON.
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (code, v)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn command(&self, id: &str, action: &str) -> (StatusCode, Value) {
        self.send(Method::POST, &format!("/workflows/{id}/{action}"), None)
            .await
    }
}

/// A finished run: its status and how many journal events it has.
struct Before {
    id: String,
    status: String,
    events: usize,
}

/// Submit `file` with the admin token and let it finish.
async fn finished_run(s: &Server, file: &Path) -> Before {
    let id = s.submit(file).await;
    let status = s.wait_end(&id).await["status"].as_str().expect("status").to_string();
    s.wait_idle().await;
    let events = s.journal(&id).await.len();
    Before { id, status, events }
}

/// The server answers, and the run submitted before is as it was.
async fn assert_intact(s: &Server, before: &Before) {
    let (code, health) = s.get("/healthz").await;
    assert_eq!((code, &health["status"]), (StatusCode::OK, &json!("ok")), "{health}");
    let st = s.status(&before.id).await;
    assert_eq!(st["status"], before.status.as_str(), "the earlier run changed: {st:#}");
    assert_eq!(
        s.journal(&before.id).await.len(),
        before.events,
        "the earlier run's journal changed"
    );
}

/// Make a token with the admin token; the token.
async fn create_token(s: &Server, name: &str, role: &str) -> String {
    let (code, body) = s.post("/tokens", json!({"name": name, "role": role})).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!((&body["name"], &body["role"]), (&json!(name), &json!(role)), "{body}");
    let token = body["token"].as_str().expect("token").to_string();
    assert!(
        token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "256 bits, hex: {token}"
    );
    token
}

/// A 403 naming the role needed and the token's.
fn assert_forbidden(got: &(StatusCode, Value), need: &str, has: &str) {
    assert_error(
        got,
        StatusCode::FORBIDDEN,
        "forbidden",
        &[&format!("the {need} role"), &format!("the {has} role")],
    );
}

/// `drover serve` with `args` after `--state`/`--logs` in `dir` must exit
/// without listening; its output.
fn refused_start(dir: &Path, listen: &str, args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .current_dir(dir)
        .env("DROVER_HOME", test_home())
        .env("DROVER_VENV", repo().join(".venv"))
        .env("XDG_DATA_HOME", dir.join("xdg"))
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_METRICS_TOKEN")
        .env_remove("DROVER_STATE")
        .args(["serve", "--listen", listen, "--state"])
        .arg(dir.join("state.db"))
        .arg("--logs")
        .arg(dir.join("server-logs"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover serve");
    let deadline = Instant::now() + LIMIT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "drover serve {args:?} did not refuse to start:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "drover serve {args:?} succeeded:\n{text}");
    assert!(!text.contains("listening on"), "it listened:\n{text}");
    text
}

/// The uid and name of the unprivileged `nobody`.
fn nobody() -> (u32, String) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"nobody")).then(|| (f[2].parse().expect("uid"), f[0].to_string()))
        })
        .expect("a nobody user")
}

fn token_file(dir: &Path) -> PathBuf {
    dir.join("api-token")
}

fn read_token(dir: &Path) -> String {
    std::fs::read_to_string(token_file(dir))
        .expect("the token file")
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn on_loopback_a_request_without_a_token_or_with_a_wrong_one_is_refused() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "lo", 1, &["a"], "");
    let s = Server::start(dir.path(), &[]);
    assert!(s.token.is_some(), "the server generated its admin token");
    let before = finished_run(&s, &file).await;
    let source = std::fs::read_to_string(&file).expect("workflow");

    for token in [None, Some("0".repeat(64)), Some(format!("{}x", read_token(dir.path())))] {
        let p = Probe::new(&s, token.as_deref());
        let id = &before.id;
        for (method, path, body) in [
            (Method::GET, "/workflows".to_string(), None),
            (Method::GET, format!("/workflows/{id}/status"), None),
            (Method::GET, format!("/workflows/{id}/events"), None),
            (Method::GET, "/metrics".into(), None),
            (Method::GET, "/openapi.json".into(), None),
            (Method::GET, "/tokens".into(), None),
            (Method::GET, "/audit".into(), None),
            (Method::POST, "/workflows/batch".into(), Some(json!({"source": source}))),
            (Method::POST, format!("/workflows/{id}/rollback"), None),
            (Method::POST, format!("/workflows/{id}/retry"), None),
            (
                Method::POST,
                "/tokens".into(),
                Some(json!({"name": "mine", "role": "admin"})),
            ),
            (Method::DELETE, "/tokens/local-admin".into(), None),
        ] {
            let got = p.send(method.clone(), &path, body).await;
            assert_eq!(
                got.0,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}: {}",
                got.1
            );
            assert_eq!(got.1["code"], "unauthorized", "{}", got.1);
        }
    }
    // Liveness needs nothing.
    let (code, _) = Probe::new(&s, None).get("/healthz").await;
    assert_eq!(code, StatusCode::OK);
    // Nothing was submitted, no token made.
    let (_, list) = s.get("/workflows").await;
    assert_eq!(list["runs"].as_array().map(Vec::len), Some(1), "{list}");
    let (_, tokens) = s.get("/tokens").await;
    assert_eq!(tokens["tokens"].as_array().map(Vec::len), Some(1), "{tokens}");
    assert_intact(&s, &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_of_another_user_or_readable_by_others_is_refused_at_start_naming_it() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "tf", 1, &["a"], "");
    let mut s = Server::start(dir.path(), &[]);
    let before = finished_run(&s, &file).await;
    let admin = read_token(dir.path());
    assert!(s.terminate().success());
    let tok = token_file(dir.path());
    let shown = tok.display().to_string();

    // Owned by another user, though owner-only: whoever owns it could have
    // chosen the token.
    let (uid, name) = nobody();
    std::os::unix::fs::chown(&tok, Some(uid), Some(uid)).expect("chown to nobody (the tests run as root)");
    let out = refused_start(dir.path(), "127.0.0.1:0", &[]);
    for part in [shown.as_str(), name.as_str(), &format!("uid {uid}"), "Delete it"] {
        assert!(out.contains(part), "the refusal should name {part:?}:\n{out}");
    }
    std::os::unix::fs::chown(&tok, Some(0), Some(0)).expect("chown back");

    // Readable (or writable) by the group or the world.
    for mode in [0o640, 0o604, 0o620, 0o666] {
        std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let out = refused_start(dir.path(), "127.0.0.1:0", &[]);
        assert!(
            out.contains(&shown) && out.contains("readable by others") && out.contains(&format!("{mode:o}")),
            "mode {mode:o}:\n{out}"
        );
        assert!(out.contains("chmod 600"), "what to do:\n{out}");
    }
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // A link to another user's file is that file.
    let elsewhere = dir.path().join("theirs");
    std::fs::write(&elsewhere, "chosen-by-someone-else\n").expect("their file");
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&elsewhere, Some(uid), Some(uid)).expect("chown");
    let link = dir.path().join("link-token");
    std::os::unix::fs::symlink(&elsewhere, &link).expect("symlink");
    let out = refused_start(
        dir.path(),
        "127.0.0.1:0",
        &["--token-file", link.to_str().expect("utf-8")],
    );
    assert!(out.contains("link-token") && out.contains(&name), "{out}");
    // None of the refused starts wrote a new token over the old one.
    assert_eq!(read_token(dir.path()), admin);

    // Put right, the server starts with the same token and the run as it was.
    let s = Server::start(dir.path(), &[]);
    assert_eq!(s.token.as_deref(), Some(admin.as_str()));
    assert_intact(&s, &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_may_do_what_it_allows_and_gets_403_naming_the_role_otherwise() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "rl", 1, &["a"], "");
    let (other, ctl) = workflow(dir.path(), "rl2", 1, &["a"], "");
    control(&ctl, "install", "sleep 30");
    let s = Server::start(dir.path(), &[]);
    let before = finished_run(&s, &file).await;
    let source = std::fs::read_to_string(&other).expect("workflow");
    let viewer = create_token(&s, "watcher", "viewer").await;
    let operator = create_token(&s, "deployer", "operator").await;
    let admin = create_token(&s, "chief", "admin").await;
    let id = before.id.as_str();

    // viewer: reads everything a run has; changes nothing.
    let v = Probe::new(&s, Some(&viewer));
    for path in [
        "/workflows".to_string(),
        format!("/workflows/{id}/status"),
        format!("/workflows/{id}/events"),
        format!("/workflows/{id}/logs"),
        format!("/workflows/{id}/metrics"),
        "/metrics".into(),
        "/openapi.json".into(),
    ] {
        let (code, body) = v.get(&path).await;
        assert_eq!(code, StatusCode::OK, "viewer GET {path}: {body}");
    }
    assert_forbidden(
        &v.post("/workflows/batch", json!({"source": source})).await,
        "operator",
        "viewer",
    );
    for action in ["pause", "resume", "cancel", "retry", "rollback"] {
        assert_forbidden(&v.command(id, action).await, "operator", "viewer");
    }
    assert_forbidden(&v.get("/tokens").await, "admin", "viewer");
    assert_forbidden(&v.get("/audit").await, "admin", "viewer");
    assert_forbidden(
        &v.post("/tokens", json!({"name": "mine", "role": "admin"})).await,
        "admin",
        "viewer",
    );

    // operator: submits a source and steers runs; no path, no tokens.
    let o = Probe::new(&s, Some(&operator));
    let (code, body) = o.post("/workflows/batch", json!({"source": source})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let theirs = body["run_id"].as_str().expect("run_id").to_string();
    s.wait_task(&theirs, "install/a@rl2-0", "running").await;
    let (code, body) = o.command(&theirs, "cancel").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let path = json!({"path": file});
    assert_forbidden(&o.post("/workflows/batch", path.clone()).await, "admin", "operator");
    let dry_path = json!({"path": file, "dry_run": true});
    assert_forbidden(&o.post("/workflows/batch", dry_path).await, "admin", "operator");
    assert_forbidden(
        &o.post("/tokens", json!({"name": "mine", "role": "viewer"})).await,
        "admin",
        "operator",
    );
    assert_forbidden(
        &o.send(Method::DELETE, "/tokens/watcher", None).await,
        "admin",
        "operator",
    );
    assert_forbidden(&o.get("/tokens").await, "admin", "operator");
    assert_forbidden(&o.get("/audit").await, "admin", "operator");
    // The viewer's token still works: the operator could not revoke it.
    assert_eq!(v.get("/workflows").await.0, StatusCode::OK);

    // admin: a path, and tokens.
    let a = Probe::new(&s, Some(&admin));
    let (code, body) = a.post("/workflows/batch", path).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let by_path = body["run_id"].as_str().expect("run_id").to_string();
    assert_eq!(s.wait_end(&by_path).await["status"], "succeeded");
    let (code, body) = a
        .post("/tokens", json!({"name": "made-by-chief", "role": "viewer"}))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, body) = a.get("/audit").await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // A token's role cannot be raised by naming a bigger one in a request.
    let (code, body) = o.post("/tokens", json!({"name": "deployer", "role": "admin"})).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");

    assert_eq!(s.wait_end(&theirs).await["status"], "cancelled");
    s.wait_idle().await;
    assert_intact(&s, &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_at_once_and_its_name_is_not_given_out_again() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "rv", 1, &["a"], "");
    let s = Server::start(dir.path(), &[]);
    let before = finished_run(&s, &file).await;

    let token = create_token(&s, "temp", "operator").await;
    let p = Probe::new(&s, Some(&token));
    assert_eq!(p.get("/workflows").await.0, StatusCode::OK);
    let (code, body) = json_of(s.request(Method::DELETE, "/tokens/temp").send().await.expect("DELETE")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["name"], &body["role"]),
        (&json!("temp"), &json!("operator")),
        "{body}"
    );
    assert!(
        body["revoked_at_ms"].as_i64().is_some() && body.get("token").is_none(),
        "{body}"
    );
    // The very next request, and every kind of request.
    for (method, path) in [
        (Method::GET, "/workflows".to_string()),
        (Method::GET, format!("/workflows/{}/status", before.id)),
        (Method::POST, format!("/workflows/{}/rollback", before.id)),
    ] {
        let got = p.send(method.clone(), &path, None).await;
        assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized", &["not valid"]);
    }
    // Revoked once; the name stays taken; the server's own is not revoked
    // over the API.
    let again = json_of(s.request(Method::DELETE, "/tokens/temp").send().await.expect("DELETE")).await;
    assert_error(&again, StatusCode::CONFLICT, "conflict", &["temp", "revoked already"]);
    let reuse = s.post("/tokens", json!({"name": "temp", "role": "viewer"})).await;
    assert_error(&reuse, StatusCode::CONFLICT, "conflict", &["temp"]);
    let own = json_of(
        s.request(Method::DELETE, "/tokens/local-admin")
            .send()
            .await
            .expect("DELETE"),
    )
    .await;
    assert_error(&own, StatusCode::CONFLICT, "conflict", &["local-admin", "token file"]);
    let none = json_of(
        s.request(Method::DELETE, "/tokens/nobody-here")
            .send()
            .await
            .expect("DELETE"),
    )
    .await;
    assert_error(&none, StatusCode::NOT_FOUND, "not_found", &["nobody-here"]);
    for (name, code) in [
        ("local-admin", StatusCode::CONFLICT),
        ("bad name", StatusCode::BAD_REQUEST),
    ] {
        let r = s.post("/tokens", json!({"name": name, "role": "admin"})).await;
        assert_eq!(r.0, code, "{name}: {}", r.1);
    }

    // A revoked token stays revoked across a restart.
    let (code, list) = s.get("/tokens").await;
    assert_eq!(code, StatusCode::OK);
    let temp = list["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["name"] == "temp")
        .cloned()
        .expect("temp listed");
    assert!(temp["revoked_at_ms"].as_i64().is_some(), "{temp}");
    assert!(temp["last_used_ms"].as_i64().is_some(), "it was used: {temp}");
    assert_eq!(
        (&temp["created_by"], &temp["source"]),
        (&json!("local-admin"), &json!("store")),
        "{temp}"
    );
    drop(s);
    let s = Server::start(dir.path(), &[]);
    let got = Probe::new(&s, Some(&token)).get("/workflows").await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized", &["not valid"]);

    // The same through `drover token`, as an admin on this machine runs it
    // (the token found next to the state, as `drover batch` finds it).
    let drover = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_drover"))
            .current_dir(dir.path())
            .env("DROVER_API", &s.base)
            .env("DROVER_STATE", dir.path().join("state.db"))
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_TOKEN_FILE")
            .args(args)
            .output()
            .expect("drover");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, cli_token, err) = drover(&["token", "create", "from-cli", "--role", "viewer"]);
    assert_eq!(code, Some(0), "{err}");
    let cli_token = cli_token.trim().to_string();
    assert_eq!(cli_token.len(), 64, "stdout holds the token alone: {cli_token:?}");
    assert!(err.contains("from-cli") && err.contains("only time"), "{err}");
    assert_eq!(
        Probe::new(&s, Some(&cli_token)).get("/workflows").await.0,
        StatusCode::OK
    );
    let (code, listing, err) = drover(&["token", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(listing.contains("from-cli") && listing.contains("viewer"), "{listing}");
    assert!(
        listing.contains("local-admin") && listing.contains("revoked"),
        "{listing}"
    );
    assert!(!listing.contains(&cli_token) && !listing.contains(&token), "{listing}");
    let (code, out, err) = drover(&["token", "revoke", "from-cli"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("revoked"), "{out}");
    assert_eq!(
        Probe::new(&s, Some(&cli_token)).get("/workflows").await.0,
        StatusCode::UNAUTHORIZED
    );
    // A viewer's `drover token` is told which role it needs.
    let o = Command::new(env!("CARGO_BIN_EXE_drover"))
        .env("DROVER_API", &s.base)
        .env("DROVER_TOKEN", create_token(&s, "looker", "viewer").await)
        .args(["token", "list"])
        .output()
        .expect("drover");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("admin role") && err.contains("viewer role"), "{err}");
    assert_intact(&s, &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_action_shows_in_the_run_status_and_the_audit_trail_with_its_tokens_name() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "au", 1, &["a"], "");
    let (other, ctl) = workflow(dir.path(), "au2", 1, &["a", "b"], "");
    control(&ctl, "install.a", "sleep 1");
    control(&ctl, "install.b", "sleep 30");
    let s = Server::start(dir.path(), &[]);
    let before = finished_run(&s, &file).await;
    let deployer = create_token(&s, "deployer", "operator").await;
    let fixer = create_token(&s, "fixer", "operator").await;
    let watcher = create_token(&s, "watcher", "viewer").await;
    let (d, f, w) = (
        Probe::new(&s, Some(&deployer)),
        Probe::new(&s, Some(&fixer)),
        Probe::new(&s, Some(&watcher)),
    );

    let source = std::fs::read_to_string(&other).expect("workflow");
    let (code, body) = d.post("/workflows/batch", json!({"source": source})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let id = body["run_id"].as_str().expect("run_id").to_string();
    s.wait_task(&id, "install/a@au2-0", "running").await;
    assert_eq!(d.command(&id, "pause").await.0, StatusCode::ACCEPTED);
    s.wait_status(&id, "paused").await;
    assert_forbidden(&w.command(&id, "resume").await, "operator", "viewer");
    assert_eq!(d.command(&id, "resume").await.0, StatusCode::ACCEPTED);
    s.wait_task(&id, "install/b@au2-0", "running").await;
    assert_eq!(f.command(&id, "cancel").await.0, StatusCode::ACCEPTED);
    assert_eq!(s.wait_end(&id).await["status"], "cancelled");
    s.wait_idle().await;
    // A refused command is recorded too, with why.
    assert_eq!(f.command(&id, "pause").await.0, StatusCode::CONFLICT);
    control(&ctl, "install.b", "");
    let (code, body) = f
        .send(
            Method::POST,
            &format!("/workflows/{id}/retry"),
            Some(json!({"operation": "install"})),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(s.wait_end(&id).await["status"], "succeeded");
    s.wait_idle().await;
    assert_eq!(d.command(&id, "rollback").await.0, StatusCode::ACCEPTED);
    assert_eq!(s.wait_end(&id).await["status"], "rolled_back");

    let st = w.get(&format!("/workflows/{id}/status")).await.1;
    assert_eq!(st["submitted_by"], "deployer", "{st:#}");
    let actions: Vec<(String, String, String)> = st["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| {
            assert!(a["at_ms"].as_i64().is_some_and(|t| t > 0), "{a}");
            let outcome = a["outcome"].as_str().unwrap_or("").to_string();
            let outcome = if outcome == "ok" {
                outcome
            } else {
                outcome.split(')').next().unwrap_or("").to_string() + ")"
            };
            (
                a["by"].as_str().unwrap_or("").to_string(),
                a["action"].as_str().unwrap_or("").to_string(),
                outcome,
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("deployer", "submit", "ok"),
        ("deployer", "pause", "ok"),
        ("watcher", "resume", "refused (403 forbidden)"),
        ("deployer", "resume", "ok"),
        ("fixer", "cancel", "ok"),
        ("fixer", "pause", "refused (409 conflict)"),
        ("fixer", "retry", "ok"),
        ("deployer", "rollback", "ok"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(actions, want, "{st:#}");
    let detail = |action: &str| {
        st["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["action"] == action)
            .map(|a| a["detail"].clone())
            .unwrap_or_default()
    };
    assert_eq!(detail("submit"), json!(format!("source ({} bytes)", source.len())));
    assert_eq!(detail("retry"), json!("operation install"));

    // The earlier run was submitted with the server's own token.
    assert_eq!(s.status(&before.id).await["submitted_by"], "local-admin");

    // The audit trail (admin): the same, and the token changes.
    let (code, trail) = s.get(&format!("/audit?run_id={id}")).await;
    assert_eq!(code, StatusCode::OK, "{trail}");
    assert_eq!(trail["entries"].as_array().map(Vec::len), Some(want.len()), "{trail}");
    let (_, made) = s.get("/audit?action=token_create&actor=local-admin").await;
    let names: Vec<&str> = made["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "token watcher, role viewer",
            "token fixer, role operator",
            "token deployer, role operator"
        ],
        "newest first: {made}"
    );
    let (code, bad) = s.get("/audit?limit=0").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");

    // `drover batch status` shows it.
    let o = Command::new(env!("CARGO_BIN_EXE_drover"))
        .env("DROVER_API", &s.base)
        .env("DROVER_TOKEN", &watcher)
        .args(["batch", "status", &id])
        .output()
        .expect("drover batch status");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("submitted by deployer"), "{out}");
    assert!(out.contains("Actions:") && out.contains("fixer  cancel: ok"), "{out}");
    assert!(out.contains("watcher  resume: refused (403 forbidden)"), "{out}");
    assert_intact(&s, &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_never_show_in_logs_status_the_audit_trail_or_the_state_store() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "nt", 1, &["a"], "");
    let s = Server::start(dir.path(), &["--log-level", "debug"]);
    let before = finished_run(&s, &file).await;
    let admin = read_token(dir.path());
    let viewer = create_token(&s, "peek", "viewer").await;
    let operator = create_token(&s, "ops", "operator").await;
    let revoked = create_token(&s, "gone", "viewer").await;
    let source = std::fs::read_to_string(&file).expect("workflow");
    let o = Probe::new(&s, Some(&operator));
    let (code, body) = o.post("/workflows/batch", json!({"source": source})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let id = body["run_id"].as_str().expect("run_id").to_string();
    s.wait_end(&id).await;
    s.wait_idle().await;
    assert_forbidden(
        &Probe::new(&s, Some(&viewer)).command(&id, "rollback").await,
        "operator",
        "viewer",
    );
    assert_eq!(
        s.request(Method::DELETE, "/tokens/gone")
            .send()
            .await
            .expect("DELETE")
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        Probe::new(&s, Some(&revoked)).get("/workflows").await.0,
        StatusCode::UNAUTHORIZED
    );

    let secrets = [&admin, &viewer, &operator, &revoked];
    let mut answers = Vec::new();
    for path in [
        format!("/workflows/{id}/status"),
        format!("/workflows/{}/status", before.id),
        "/workflows".into(),
        "/tokens".into(),
        "/audit".into(),
        "/metrics".into(),
    ] {
        let (code, body) = Probe::new(&s, Some(&admin)).get(&path).await;
        assert_eq!(code, StatusCode::OK, "{path}: {body}");
        answers.push((path, body.to_string()));
    }
    for ev in s.journal(&id).await {
        answers.push(("events".into(), ev.data.to_string()));
    }
    let (_, list) = s.get("/tokens").await;
    for t in list["tokens"].as_array().expect("tokens") {
        assert!(t.get("hash").is_none() && t.get("token").is_none(), "{t}");
    }
    for (what, body) in &answers {
        for t in secrets {
            assert!(!body.contains(t.as_str()), "a token in the answer to {what}: {body}");
        }
    }

    // Every file the server wrote: its stdout, its logs, the run logs,
    // the state store (hashes only); not the token file itself, which is
    // where the admin token is kept on purpose.
    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    let mut checked = 0;
    for f in files.iter().filter(|f| **f != token_file(dir.path())) {
        let content = std::fs::read(f).expect("readable");
        for t in secrets {
            assert!(
                !content.windows(t.len()).any(|w| w == t.as_bytes()),
                "a token in {}",
                f.display()
            );
        }
        checked += 1;
    }
    let out = std::fs::read_to_string(dir.path().join("server.out")).expect("server.out");
    assert!(
        out.contains("API token created") && out.contains("peek"),
        "the server logs it, by name:\n{out}"
    );
    assert!(checked >= 5, "only {checked} files checked: {files:?}");
    assert_intact(&s, &before).await;
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_auth_is_refused_beyond_loopback_and_records_its_actions_as_anonymous() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "na", 1, &["a"], "");
    let mut s = Server::start(dir.path(), &[]);
    let before = finished_run(&s, &file).await;
    assert!(s.terminate().success());

    // Plain HTTP is allowed beyond loopback (as behind a TLS proxy), so
    // what refuses is --no-auth.
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let out = refused_start(dir.path(), listen, &["--no-auth", "--insecure-http"]);
        assert!(
            out.contains("--no-auth") && out.contains("loopback") && out.contains(listen.trim_end_matches('0')),
            "{out}"
        );
    }
    // The old flag is gone (no token required only on request).
    let out = refused_start(dir.path(), "127.0.0.1:0", &["--require-token"]);
    assert!(out.contains("--require-token"), "{out}");

    // On loopback it starts, says what it means, and names its actions.
    let mut s = Server::start(dir.path(), &["--no-auth"]);
    s.token = None;
    let source = std::fs::read_to_string(&file).expect("workflow");
    let (code, body) = s.post("/workflows/batch", json!({"source": source})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let id = body["run_id"].as_str().expect("run_id").to_string();
    assert_eq!(s.wait_end(&id).await["submitted_by"], "anonymous (--no-auth)");
    let made = s.post("/tokens", json!({"name": "x", "role": "viewer"})).await;
    assert_error(&made, StatusCode::CONFLICT, "conflict", &["--no-auth"]);
    let out = std::fs::read_to_string(dir.path().join("server.out")).expect("server.out");
    assert!(out.contains("--no-auth") && out.contains("any local user"), "{out}");
    s.wait_idle().await;
    assert_intact(&s, &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_token_is_never_on_the_command_line_and_opens_metrics_only() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "mt", 1, &["a"], "");
    let mut s = Server::start(dir.path(), &[]);
    let before = finished_run(&s, &file).await;
    assert!(s.terminate().success());
    let metrics_token = "m-7f3a9c2e51d04b8a";

    // On the command line (where ps shows it): refused, pointing at the file
    // and the environment, without repeating the token.
    let out = refused_start(dir.path(), "127.0.0.1:0", &["--metrics-token", metrics_token]);
    assert!(
        out.contains("--metrics-token-file") && out.contains("DROVER_METRICS_TOKEN") && out.contains("ps"),
        "{out}"
    );
    assert!(!out.contains(metrics_token), "{out}");
    let help = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "--help"])
        .output()
        .expect("drover serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--metrics-token-file") && !help.contains("--metrics-token <"),
        "{help}"
    );
    assert!(help.contains("--no-auth") && help.contains("any local user"), "{help}");

    // From a file of its own: unreadable by others, or refused.
    let mfile = dir.path().join("metrics-token");
    std::fs::write(&mfile, format!("{metrics_token}\n")).expect("metrics token file");
    std::fs::set_permissions(&mfile, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let arg = mfile.to_str().expect("utf-8");
    let out = refused_start(dir.path(), "127.0.0.1:0", &["--metrics-token-file", arg]);
    assert!(
        out.contains("metrics-token") && out.contains("readable by others"),
        "{out}"
    );
    std::fs::set_permissions(&mfile, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let s = Server::start(dir.path(), &["--metrics-token-file", arg]);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", s.child.id())).expect("cmdline");
    assert!(
        !cmdline
            .windows(metrics_token.len())
            .any(|w| w == metrics_token.as_bytes()),
        "the token is on the command line"
    );
    let m = Probe::new(&s, Some(metrics_token));
    let (code, text) = m.get("/metrics").await;
    assert_eq!(code, StatusCode::OK, "{text}");
    assert!(text.as_str().is_some_and(|t| t.contains("drover_runs")), "{text}");
    for (method, path) in [
        (Method::GET, "/workflows".to_string()),
        (Method::GET, format!("/workflows/{}/status", before.id)),
        (Method::POST, format!("/workflows/{}/rollback", before.id)),
    ] {
        let got = m.send(method, &path, None).await;
        assert_error(&got, StatusCode::FORBIDDEN, "forbidden", &["metrics token", "/metrics"]);
    }
    assert_intact(&s, &before).await;
}
