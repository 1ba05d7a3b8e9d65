//! Notifications end to end: a real `drover serve`, real runs over the
//! deterministic test taskservs, and a real HTTP receiver on a free
//! loopback port (a std `TcpListener` thread that records each request and
//! answers with the status its script says), or a real script target.
//!
//! Checked: the webhook body and its HMAC signature (also with the key
//! kept in the workflow's SOPS secrets), that no secret is in it or in
//! GET /notifications, retries until the receiver accepts and the outbox's
//! record of them, a permanent 4xx, a delivery surviving a restart, the
//! cooldown's folding, the script's stdin and environment, every run end
//! (succeeded, failed, cancelled, rolled back), drift found, and the
//! server-wide targets of `--notifications` (KCL; a wrong file refused).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Sha256;

mod common;

use common::server::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The status it was answered with.
    answered: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// An HTTP receiver on 127.0.0.1: answers the n-th request with
/// `script[n]` (the last one for every request after).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(script: &[u16]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (record, script) = (got.clone(), script.to_vec());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
                let len = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let mut got = record.lock().expect("lock");
                let answered = script.get(got.len()).or(script.last()).copied().unwrap_or(200);
                got.push(Received {
                    headers,
                    body,
                    answered,
                });
                drop(got);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {answered} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver { url, got }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Wait until `n` requests came in; then a moment for any extra.
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        while self.received().len() < n {
            assert!(
                Instant::now() < deadline,
                "the receiver got {} request(s), not {n}, within {within:?}: {:?}",
                self.received().len(),
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.received()
    }
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("hmac key");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `notifications = [...]` line of a workflow with one target.
fn notifications(target: &str) -> String {
    format!("notifications = [drover.NotificationDef {{{target}}}]")
}

/// The outbox, as the API shows it.
async fn outbox(s: &Server, query: &str) -> Vec<Value> {
    let (code, body) = s.get(&format!("/notifications{query}")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body["deliveries"].as_array().expect("deliveries").clone()
}

async fn run_to_end(s: &Server, file: &Path) -> (String, Value) {
    let id = s.submit(file).await;
    let end = s.wait_end(&id).await;
    (id, end)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhook_gets_run_succeeded_and_run_failed_without_secrets() {
    let dir = tempdir();
    let rx = Receiver::start(&[200]);
    let key = "whsec-Sup3rS3cret-key";
    let target = format!(
        r#"name = "ops", type = "webhook", url = "{}", secret = "{key}", events = ["run_succeeded", "run_failed"]"#,
        rx.url
    );
    let (good, _) = workflow(dir.path(), "nt-good", 1, &["a"], &notifications(&target));
    let (bad, bad_ctl) = workflow(dir.path(), "nt-bad", 1, &["a"], &notifications(&target));
    control(&bad_ctl, "install", "fail");
    let s = Server::start(dir.path(), &[]);
    let (good_id, end) = run_to_end(&s, &good).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");
    let (bad_id, end) = run_to_end(&s, &bad).await;
    assert_eq!(end["status"], "failed", "{end:#}");

    let got = rx.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for r in &got {
        let sig = r.header("X-Drover-Signature").expect("a signature header");
        assert_eq!(
            sig,
            format!("sha256={}", hmac_hex(key, &r.body)),
            "the HMAC of the exact body"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains(key), "the webhook secret is in the body: {text}");
        assert!(!text.contains("whsec"), "{text}");
    }
    let by_run = |id: &str| {
        got.iter()
            .map(Received::json)
            .find(|b| b["run_id"] == id)
            .unwrap_or_else(|| panic!("no delivery about {id}: {got:?}"))
    };
    let ok = by_run(&good_id);
    assert_eq!(ok["event"], "run_succeeded");
    assert_eq!(ok["status"], "succeeded");
    assert_eq!(ok["workflow"], "nt-good");
    assert_eq!(ok["count"], 1);
    assert_eq!(ok["target"], "ops");
    assert!(ok["time_ms"].as_i64().is_some_and(|t| t > 1_600_000_000_000), "{ok}");
    assert!(
        ok["time"].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "{ok}"
    );
    let failed = by_run(&bad_id);
    assert_eq!(failed["event"], "run_failed");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["workflow"], "nt-bad");
    assert!(failed["summary"].as_str().is_some_and(|s| !s.is_empty()), "{failed}");

    // The outbox shows both, delivered, and never the URL or the key.
    let rows = outbox(&s, "?status=delivered").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let listing = serde_json::to_string(&rows).expect("json");
    assert!(!listing.contains(key) && !listing.contains(&rx.url), "{listing}");
    let one = outbox(&s, &format!("?run_id={bad_id}")).await;
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(
        (one[0]["event"].as_str(), one[0]["attempts"].as_i64()),
        (Some("run_failed"), Some(1))
    );
    let (code, body) = s.get("/notifications?status=lost").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_failing_twice_gets_exactly_one_accepted_delivery_after_three_attempts() {
    let dir = tempdir();
    let rx = Receiver::start(&[500, 500, 200]);
    let target = format!(r#"name = "flaky", type = "webhook", url = "{}""#, rx.url);
    let (file, _) = workflow(dir.path(), "nt-retry", 1, &["a"], &notifications(&target));
    let s = Server::start(dir.path(), &[]);
    let (id, end) = run_to_end(&s, &file).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");
    let got = rx.wait_for(3, Duration::from_secs(30)).await;
    let answered: Vec<u16> = got.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [500, 500, 200], "{got:?}");
    // The same message each time, the same delivery id.
    assert!(got.iter().all(|r| r.body == got[0].body), "{got:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let rows = outbox(&s, &format!("?run_id={id}")).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        if rows[0]["status"] == "delivered" || Instant::now() > deadline {
            break rows[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row["status"], "delivered", "{row}");
    assert_eq!(row["attempts"], 3, "{row}");
    assert_eq!(row["last_error"], "the target answered HTTP 500", "{row}");
    // The run's status shows it too (a viewer's view: no payload).
    let status = s.status(&id).await;
    let shown = &status["notifications"];
    assert_eq!(shown.as_array().map(Vec::len), Some(1), "{status:#}");
    assert_eq!(shown[0]["target"], "flaky", "{status:#}");
    assert_eq!(shown[0]["status"], "delivered", "{status:#}");
    assert_eq!(shown[0]["attempts"], 3, "{status:#}");
    assert!(shown[0].get("payload").is_none(), "{status:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cooldown_folds_five_failures_into_one_message_with_count_five() {
    let dir = tempdir();
    let rx = Receiver::start(&[200]);
    // Every event within the window is held; ONE message at its end.
    let target = format!(
        r#"name = "digest", type = "webhook", url = "{}", events = ["run_failed"], cooldown = 12"#,
        rx.url
    );
    let (file, ctl) = workflow(dir.path(), "nt-fold", 1, &["a"], &notifications(&target));
    control(&ctl, "install", "fail");
    let s = Server::start(dir.path(), &["--max-running", "5"]);
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(s.submit(&file).await);
    }
    for id in &ids {
        assert_eq!(s.wait_end(id).await["status"], "failed");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the five runs must end within the cooldown for this test to mean anything"
    );
    assert!(rx.received().is_empty(), "nothing is sent before the window ends");
    let got = rx.wait_for(1, Duration::from_secs(25)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let body = got[0].json();
    assert_eq!(body["event"], "run_failed");
    assert_eq!(body["count"], 5, "{body}");
    let rows = outbox(&s, "").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["count"].as_i64(), rows[0]["status"].as_str()),
        (Some(5), Some("delivered"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_target_gets_the_event_on_stdin_and_no_server_credentials() {
    let dir = tempdir();
    let out = dir.path().join("event.json");
    let env_out = dir.path().join("event.env");
    let script = dir.path().join("notify.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > '{}.tmp'\nenv > '{}'\nmv '{}.tmp' '{}'\n",
            out.display(),
            env_out.display(),
            out.display(),
            out.display()
        ),
    )
    .expect("script");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let target = format!(r#"name = "local", type = "script", script = "{}""#, script.display());
    let (file, _) = workflow(dir.path(), "nt-script", 1, &["a"], &notifications(&target));
    let s = Server::start_with(
        dir.path(),
        &[],
        &[
            ("DROVER_TOKEN", "tok-server-only-123"),
            ("AWS_SECRET_ACCESS_KEY", "aws-server-only-456"),
        ],
        &common::test_home(),
    );
    let (id, end) = run_to_end(&s, &file).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !out.exists() {
        assert!(Instant::now() < deadline, "the script did not write {}", out.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let event: Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("read")).expect("JSON on stdin");
    assert_eq!(event["event"], "run_succeeded");
    assert_eq!(event["run_id"], id.as_str());
    assert_eq!(event["workflow"], "nt-script");
    let env = std::fs::read_to_string(&env_out).expect("env");
    assert!(
        !env.contains("DROVER_TOKEN") && !env.contains("tok-server-only"),
        "{env}"
    );
    assert!(!env.contains("AWS_") && !env.contains("aws-server-only"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
}

/// The plaintext values of workflows/secrets/demo.sops.yaml (tests/run.rs
/// checks them against the real sops tool).
const DEMO_SECRETS: [&str; 4] = ["Zq8-velvet-Harbor-41", "tok_7f3c9e2a51d84b6c", "svc_app", "db.internal"];

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_key_kept_in_the_workflows_sops_secrets_signs_and_no_secret_is_sent() {
    let dir = tempdir();
    let rx = Receiver::start(&[200]);
    let repo = common::repo();
    std::fs::create_dir_all(dir.path().join("secrets")).expect("mkdir");
    for f in ["demo.sops.yaml", "demo-age-key.txt"] {
        std::fs::copy(
            repo.join("workflows/secrets").join(f),
            dir.path().join("secrets").join(f),
        )
        .expect("copy");
    }
    let text = std::fs::read_to_string(repo.join("workflows/secrets.k")).expect("secrets.k");
    let anchor = "    retry_policy = drover.RetryPolicy {";
    assert!(text.contains(anchor), "workflows/secrets.k changed: adapt this test");
    let target = format!(
        r#"name = "signed", type = "webhook", url = "{}", secret = "secret:api_token""#,
        rx.url
    );
    let file = dir.path().join("secrets-notified.k");
    std::fs::write(
        &file,
        text.replacen(anchor, &format!("    {}\n{anchor}", notifications(&target)), 1),
    )
    .expect("workflow");
    let s = Server::start_with(dir.path(), &[], &[], &repo);
    let (id, end) = run_to_end(&s, &file).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");
    let got = rx.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let r = &got[0];
    assert_eq!(
        r.header("X-Drover-Signature").map(str::to_string),
        Some(format!("sha256={}", hmac_hex("tok_7f3c9e2a51d84b6c", &r.body))),
        "signed with the value of api_token in the SOPS file"
    );
    assert_eq!(r.json()["run_id"], id.as_str());
    let text = String::from_utf8_lossy(&r.body).to_string();
    let listing = serde_json::to_string(&outbox(&s, "").await).expect("json");
    for v in DEMO_SECRETS {
        assert!(!text.contains(v), "{v} in the webhook body: {text}");
        assert!(!listing.contains(v), "{v} in GET /notifications: {listing}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_servers_default_targets_from_a_kcl_file_serve_workflows_without_their_own() {
    let dir = tempdir();
    let rx = Receiver::start(&[200]);
    // A wrong file stops the start, naming the file, the field and why.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        format!(
            r#"[{{"name": "x", "type": "slack", "url": "{}", "secret": "k", "events": ["run_lost"]}}]"#,
            rx.url
        ),
    )
    .expect("bad.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .current_dir(dir.path())
        .env("DROVER_HOME", common::test_home())
        .env_remove("DROVER_TOKEN")
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(dir.path().join("bad-state.db"))
        .arg("--notifications")
        .arg(&bad)
        .output()
        .expect("drover serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("notifications[0].secret") && err.contains("notifications[0].events[0]"),
        "{err}"
    );
    assert!(err.contains("unknown event \"run_lost\""), "{err}");

    let defaults = dir.path().join("notify.k");
    std::fs::write(
        &defaults,
        format!(
            "import drover\n\nnotifications = [drover.NotificationDef {{name = \"fallback\", type = \"webhook\", url = \"{}\", events = [\"run_failed\"]}}]\n",
            rx.url
        ),
    )
    .expect("notify.k");
    let (quiet, _) = workflow(dir.path(), "nt-quiet", 1, &["a"], "");
    let (failing, ctl) = workflow(dir.path(), "nt-default", 1, &["a"], "");
    control(&ctl, "install", "fail");
    let defaults_arg = defaults.display().to_string();
    let s = Server::start(dir.path(), &["--notifications", &defaults_arg]);
    let (_, end) = run_to_end(&s, &quiet).await;
    assert_eq!(end["status"], "succeeded");
    let (id, end) = run_to_end(&s, &failing).await;
    assert_eq!(end["status"], "failed");
    let got = rx.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "only run_failed is wanted: {got:?}");
    let body = got[0].json();
    assert_eq!(
        (body["event"].as_str(), body["run_id"].as_str()),
        (Some("run_failed"), Some(id.as_str()))
    );
    assert_eq!(body["target"], "fallback");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_still_queued_at_a_restart_is_sent_by_the_next_start() {
    let dir = tempdir();
    let rx = Receiver::start(&[500, 500, 200]);
    let target = format!(r#"name = "later", type = "webhook", url = "{}""#, rx.url);
    let (file, _) = workflow(dir.path(), "nt-restart", 1, &["a"], &notifications(&target));
    let mut s = Server::start(dir.path(), &[]);
    let (id, end) = run_to_end(&s, &file).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");
    rx.wait_for(1, Duration::from_secs(20)).await;
    assert!(s.terminate().success());
    // The next attempt was due a second after the first: the stopped
    // server did not make it (all three would be needed to deliver).
    let before = rx.received().len();
    assert!(before < 3, "{:?}", rx.received());
    let s = Server::start(dir.path(), &[]);
    let got = rx.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(|r| r.answered).collect::<Vec<_>>(), [500, 500, 200]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = outbox(&s, &format!("?run_id={id}")).await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        if rows[0]["status"] == "delivered" {
            assert_eq!(rows[0]["attempts"], 3, "{rows:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_4xx_is_a_permanent_failure_but_429_is_tried_again() {
    let dir = tempdir();
    let gone = Receiver::start(&[404]);
    let busy = Receiver::start(&[429, 200]);
    let targets = format!(
        r#"notifications = [
        drover.NotificationDef {{name = "gone", type = "webhook", url = "{}"}}
        drover.NotificationDef {{name = "busy", type = "slack", url = "{}"}}
    ]"#,
        gone.url, busy.url
    );
    let (file, _) = workflow(dir.path(), "nt-perm", 1, &["a"], &targets);
    let s = Server::start(dir.path(), &[]);
    let (id, end) = run_to_end(&s, &file).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");
    let slack = busy.wait_for(2, Duration::from_secs(20)).await;
    let text = slack[1].json()["text"].as_str().expect("a Slack text").to_string();
    assert!(
        text.contains("run succeeded") && text.contains(&id) && text.contains("nt-perm"),
        "{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = outbox(&s, &format!("?run_id={id}")).await;
        if rows.iter().all(|r| r["status"] != "queued") {
            break rows;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let row = |name: &str| rows.iter().find(|r| r["target"] == name).cloned().expect("a row");
    let g = row("gone");
    assert_eq!(
        (g["status"].as_str(), g["attempts"].as_i64()),
        (Some("failed"), Some(1)),
        "{g}"
    );
    assert_eq!(g["last_error"], "the target answered HTTP 404");
    assert_eq!(gone.received().len(), 1);
    let b = row("busy");
    assert_eq!(
        (b["status"].as_str(), b["attempts"].as_i64()),
        (Some("delivered"), Some(2)),
        "{b}"
    );
    assert_eq!(b["target_kind"], "slack");
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_with_changes_is_told_to_the_servers_targets_and_none_without() {
    let dir = tempdir();
    let rx = Receiver::start(&[200]);
    let defaults = dir.path().join("notify.json");
    std::fs::write(
        &defaults,
        format!(
            r#"{{"notifications": [{{"name": "drift", "type": "webhook", "url": "{}", "events": ["drift_found"]}}]}}"#,
            rx.url
        ),
    )
    .expect("notify.json");
    let marker = dir.path().join("marker");
    std::fs::write(&marker, "v1\n").expect("marker");
    let (file, _) = workflow(dir.path(), "nt-drift", 1, &["a"], "");
    let defaults_arg = defaults.display().to_string();
    let s = Server::start(dir.path(), &["--notifications", &defaults_arg]);
    // The local server exists once the workflow has made it.
    let (_, end) = run_to_end(&s, &file).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");
    let command = format!("cat {}", marker.display());
    let (code, body) = s
        .post(
            "/fleet/snapshots",
            serde_json::json!({"path": file, "commands": [command], "name": "base"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(body["unreachable"], serde_json::json!([]), "{body}");
    let drift = || s.post("/fleet/drift", serde_json::json!({"path": file, "against": "base"}));
    let (code, body) = drift().await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["changes"], serde_json::json!([]), "{body}");
    std::fs::write(&marker, "v2-private-content\n").expect("marker");
    let (code, body) = drift().await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["changes"].as_array().map(Vec::len), Some(1), "{body}");
    let got = rx.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "no drift, no message: {got:?}");
    let msg = got[0].json();
    assert_eq!(msg["event"], "drift_found");
    assert_eq!(msg["run_id"], Value::Null);
    assert_eq!(msg["detail"]["servers"], serde_json::json!(["nt-drift-0"]), "{msg}");
    assert_eq!(msg["detail"]["changes"][0]["kind"], "command", "{msg}");
    assert!(
        !String::from_utf8_lossy(&got[0].body).contains("v2-private-content"),
        "the diff (the servers' contents) is not sent: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_cancelled_while_running_or_while_queued_is_told_as_run_cancelled() {
    let dir = tempdir();
    let rx = Receiver::start(&[200]);
    let target = format!(
        r#"name = "cancels", type = "webhook", url = "{}", events = ["run_cancelled"]"#,
        rx.url
    );
    let (file, ctl) = workflow(dir.path(), "nt-cancel", 1, &["a"], &notifications(&target));
    control(&ctl, "install", "sleep 30");
    let s = Server::start(dir.path(), &["--max-running", "1"]);
    let running = s.submit(&file).await;
    s.wait_task(&running, "install/a@nt-cancel-0", "running").await;
    let queued = s.submit(&file).await;
    for id in [&queued, &running] {
        let (code, body) = s.command(id, "cancel").await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
        assert_eq!(s.wait_end(id).await["status"], "cancelled");
    }
    let got = rx.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let mut runs: Vec<String> = got
        .iter()
        .map(|r| {
            let b = r.json();
            assert_eq!(
                (b["event"].as_str(), b["status"].as_str()),
                (Some("run_cancelled"), Some("cancelled"))
            );
            b["run_id"].as_str().expect("run_id").to_string()
        })
        .collect();
    runs.sort();
    let mut want = vec![running, queued];
    want.sort();
    assert_eq!(runs, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_rolled_back_is_told_as_run_rolled_back() {
    let dir = tempdir();
    let rx = Receiver::start(&[200]);
    let target = format!(
        r#"name = "undo", type = "webhook", url = "{}", events = ["run_rolled_back"]"#,
        rx.url
    );
    let (file, _) = workflow(dir.path(), "nt-undo", 1, &["a"], &notifications(&target));
    let s = Server::start(dir.path(), &[]);
    let (id, end) = run_to_end(&s, &file).await;
    assert_eq!(end["status"], "succeeded");
    let (code, body) = s.command(&id, "rollback").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    s.wait_status(&id, "rolled_back").await;
    let got = rx.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "only run_rolled_back is wanted: {got:?}");
    let b = got[0].json();
    assert_eq!(
        (b["event"].as_str(), b["status"].as_str(), b["run_id"].as_str()),
        (Some("run_rolled_back"), Some("rolled_back"), Some(id.as_str()))
    );
}

/// `drover run` (no server) tells the workflow's targets how its run
/// ended, as the server does, before it exits; the outbox in its state
/// store records the delivery.
#[tokio::test(flavor = "multi_thread")]
async fn drover_run_tells_the_workflows_targets_before_it_exits() {
    let dir = tempdir();
    let rx = Receiver::start(&[200]);
    let target = format!(
        r#"name = "ops", type = "webhook", url = "{}", events = ["run_failed"]"#,
        rx.url
    );
    let (file, _) = workflow(dir.path(), "nt-cli", 1, &["a"], &notifications(&target));
    let run = |file: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
            .current_dir(dir.path())
            .env("DROVER_HOME", common::test_home())
            .env("DROVER_VENV", common::repo().join(".venv"))
            .env_remove("DROVER_STATE")
            .arg("run")
            .arg(file)
            .arg("--state")
            .arg(dir.path().join("cli-state.db"))
            .output()
            .expect("drover run")
    };
    let o = run(&file);
    // The run succeeded: run_failed is not wanted, nothing is sent.
    assert_eq!(o.status.code(), Some(0), "{}", common::text(&o));
    assert!(rx.received().is_empty(), "{:?}", rx.received());

    // A failing run is told, once, before drover exits.
    let target = format!(
        r#"name = "ops", type = "webhook", url = "{}", events = ["run_failed"]"#,
        rx.url
    );
    let (bad, bad_ctl) = workflow(dir.path(), "nt-cli-bad", 1, &["a"], &notifications(&target));
    control(&bad_ctl, "install", "fail");
    let o = run(&bad);
    assert_eq!(o.status.code(), Some(4), "{}", common::text(&o));
    let got = rx.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let body: Value = serde_json::from_slice(&got[0].body).expect("json body");
    assert_eq!(body["event"], "run_failed", "{body}");
    assert_eq!(body["workflow"], "nt-cli-bad", "{body}");
    let store = drover_state::Store::open_read_only(&dir.path().join("cli-state.db")).expect("store");
    let rows = store
        .deliveries(None, Some(drover_state::DeliveryStatus::Delivered), 10)
        .expect("outbox");
    assert_eq!(rows.len(), 1, "{rows:?}");
}
