//! `drover serve` over HTTP, as a client drives it: a real server (the
//! `drover` binary) on a free loopback port, real workflows over the
//! deterministic test taskservs (`behave.sh`, told what to do by control
//! files), and every answer checked: status codes, JSON bodies, server-sent
//! event streams, the Prometheus text, tokens, the queue, a graceful
//! shutdown with a restart, and secrets that never show.
//!
//! Layout: `common::server` has `Server` (starts and stops the binary, talks to it),
//! `SseReader` (parses event streams) and `workflow` (writes a workflow with
//! its control directory). Waiting is always polling with a deadline.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

mod common;

use common::server::*;
use common::{repo, test_home};

// ---------------------------------------------------------------------
// 1. health and the API document

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_and_the_openapi_document_lists_every_endpoint() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let (code, body) = s.get("/healthz").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok", "running": 0, "queued": 0}));

    let (code, doc) = s.get("/openapi.json").await;
    assert_eq!(code, StatusCode::OK, "{doc}");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "drover orchestrator API");
    let want: &[(&str, &[&str])] = &[
        ("/workflows/batch", &["post"]),
        ("/workflows", &["get"]),
        ("/workflows/{id}/status", &["get"]),
        ("/workflows/{id}/logs", &["get"]),
        ("/workflows/{id}/events", &["get"]),
        ("/workflows/{id}/rollback", &["post"]),
        ("/workflows/{id}/retry", &["post"]),
        ("/workflows/{id}/pause", &["post"]),
        ("/workflows/{id}/resume", &["post"]),
        ("/workflows/{id}/cancel", &["post"]),
        ("/workflows/{id}/metrics", &["get"]),
        ("/workflows/{id}/graph", &["get"]),
        ("/whoami", &["get"]),
        ("/metrics", &["get"]),
        ("/healthz", &["get"]),
        ("/tokens", &["get", "post"]),
        ("/tokens/{name}", &["delete"]),
        ("/audit", &["get"]),
        ("/fleet/select", &["post"]),
        ("/fleet/exec", &["post"]),
        ("/fleet/exec/{id}", &["get"]),
        ("/fleet/snapshots", &["get", "post"]),
        ("/fleet/snapshots/{id}", &["get"]),
        ("/fleet/drift", &["post"]),
        ("/schedules", &["get", "post"]),
        ("/schedules/{id}", &["get", "patch", "delete"]),
        ("/schedules/{id}/pause", &["post"]),
        ("/schedules/{id}/resume", &["post"]),
        ("/notifications", &["get"]),
    ];
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = want.iter().map(|(p, _)| *p).collect();
    assert_eq!(documented, expected);
    for (path, methods) in want {
        let item = paths[*path].as_object().expect("path item");
        let got: BTreeSet<&str> = item
            .keys()
            .map(String::as_str)
            .filter(|k| ["get", "post", "put", "delete", "patch"].contains(k))
            .collect();
        assert_eq!(got, methods.iter().copied().collect(), "{path}");
        for m in *methods {
            assert!(item[*m]["responses"].is_object(), "{path} {m} has no responses");
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"]
            .as_str()
            .map(str::to_lowercase)
            .as_deref(),
        Some("bearer")
    );
    assert_eq!(
        paths["/healthz"]["get"]["security"],
        json!([{}]),
        "healthz needs no token"
    );
    for schema in [
        "SubmitRequest",
        "RunStatusView",
        "ApiErrorBody",
        "LogEvent",
        "JournalEvent",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "no schema {schema}");
    }

    // Every documented route is served (a missing one would be 404 "no
    // such endpoint"); the unknown run is what they complain about.
    for (path, methods) in want {
        let path = path.replace("{id}", "nope");
        for m in *methods {
            let method = match *m {
                "post" => Method::POST,
                "delete" => Method::DELETE,
                _ => Method::GET,
            };
            let resp = s.request(method, &path).send().await.expect("request");
            let code = resp.status();
            let text = resp.text().await.expect("body");
            assert!(
                !text.contains("no such endpoint"),
                "{m} {path} is not routed: {code} {text}"
            );
        }
    }
    let unknown = json_of(s.request(Method::GET, "/nowhere").send().await.expect("GET")).await;
    assert_error(
        &unknown,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no such endpoint", "/openapi.json"],
    );
    let wrong = json_of(s.request(Method::DELETE, "/workflows").send().await.expect("DELETE")).await;
    assert_error(
        &wrong,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &["method"],
    );
}

// ---------------------------------------------------------------------
// 2. submissions

#[tokio::test(flavor = "multi_thread")]
async fn submissions_are_queued_validated_planned_or_refused_naming_what_is_wrong() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "sub", 2, &["a", "b"], "");
    let s = Server::start(dir.path(), &[]);
    let expected_plan = json!([
        {"id": "create", "tasks": [
            {"id": "create/sub-0", "server": "sub-0"},
            {"id": "create/sub-1", "server": "sub-1"},
        ]},
        {"id": "install", "tasks": [
            {"id": "install/a@sub-0", "server": "sub-0"},
            {"id": "install/b@sub-0", "server": "sub-0"},
            {"id": "install/a@sub-1", "server": "sub-1"},
            {"id": "install/b@sub-1", "server": "sub-1"},
        ]},
    ]);

    // validate_only and dry_run: 200, the plan, no run.
    let source = std::fs::read_to_string(&file).expect("source");
    for body in [
        json!({"path": file, "validate_only": true}),
        json!({"path": file, "dry_run": true}),
        json!({"source": source, "validate_only": true}),
        json!({"source": source, "dry_run": true}),
    ] {
        let (code, resp) = s.post("/workflows/batch", body.clone()).await;
        assert_eq!(code, StatusCode::OK, "{body}: {resp}");
        assert_eq!(resp["run_id"], Value::Null, "{resp}");
        assert_eq!(resp["status"], Value::Null, "{resp}");
        assert_eq!(resp["workflow"], "sub");
        assert_eq!(resp["servers"], 2);
        assert_eq!(resp["tasks"], 6);
        assert_eq!(resp["operations"], expected_plan);
    }
    let submissions = dir.path().join("submissions");
    let left: Vec<_> = std::fs::read_dir(&submissions)
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    assert!(left.is_empty(), "validations left files behind: {left:?}");

    // Requests that are wrong as requests.
    let raw = |ct: Option<&'static str>, body: &'static str| {
        let mut r = s.request(Method::POST, "/workflows/batch").body(body);
        if let Some(ct) = ct {
            r = r.header(reqwest::header::CONTENT_TYPE, ct);
        }
        r
    };
    let bad_json = json_of(raw(Some("application/json"), "{bad").send().await.expect("POST")).await;
    assert_error(
        &bad_json,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["not valid", "JSON"],
    );
    let text = json_of(
        raw(Some("text/plain"), r#"{"path": "x.k"}"#)
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_error(
        &text,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        &["application/json"],
    );
    let none = json_of(raw(None, r#"{"path": "x.k"}"#).send().await.expect("POST")).await;
    assert_error(
        &none,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        &["JSON"],
    );
    let both = s
        .post("/workflows/batch", json!({"path": file, "source": source}))
        .await;
    assert_error(
        &both,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["source", "path", "not both"],
    );
    let neither = s.post("/workflows/batch", json!({"validate_only": true})).await;
    assert_error(
        &neither,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["source", "path"],
    );
    let empty = s.post("/workflows/batch", json!({"path": ""})).await;
    assert_error(&empty, StatusCode::BAD_REQUEST, "invalid_request", &["path is empty"]);
    let unknown_field = s.post("/workflows/batch", json!({"path": file, "priority": 1})).await;
    assert_error(
        &unknown_field,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["priority"],
    );
    let array = s.post("/workflows/batch", json!([file])).await;
    assert_error(&array, StatusCode::BAD_REQUEST, "invalid_request", &["JSON object"]);

    // Workflows that are wrong: every problem, located.
    let broken = "import drover\n\nworkflow = drover.WorkflowDef {\n    name = \"broken\"\n    servers = [\n}\n";
    let syntax = s.post("/workflows/batch", json!({"source": broken})).await;
    assert_error(&syntax, StatusCode::BAD_REQUEST, "invalid_workflow", &["problem"]);
    let problems: Vec<&str> = syntax.1["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("InvalidSyntax") && p.contains(":6:1")),
        "a syntax problem at line 6, column 1: {problems:#?}"
    );
    let left: Vec<_> = std::fs::read_dir(&submissions)
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    assert!(left.is_empty(), "a refused source was kept: {left:?}");

    let text = std::fs::read_to_string(&file).expect("workflow");
    let bad_text = text.replace(r#"taskservs = ["a", "b"]"#, r#"taskservs = ["a", "zzz"]"#);
    let line = 1 + bad_text.lines().position(|l| l.contains("zzz")).expect("the line");
    let bad = dir.path().join("bad.k");
    std::fs::write(&bad, &bad_text).expect("bad.k");
    let model = s.post("/workflows/batch", json!({"path": bad})).await;
    assert_error(&model, StatusCode::BAD_REQUEST, "invalid_workflow", &["2 problem"]);
    let problems = model.1["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 2, "one per server: {problems:#?}");
    for (i, p) in problems.iter().enumerate() {
        let p = p.as_str().expect("problem text");
        assert!(p.contains(r#"unknown taskserv "zzz""#), "{p}");
        assert!(p.contains(&format!("bad.k:{line}:")), "line {line}: {p}");
        assert!(p.contains(&format!("servers[{i}].taskservs[1]")), "{p}");
        assert!(p.contains("known taskservs: a, b"), "{p}");
    }
    let missing = dir.path().join("nowhere.k");
    let nonexistent = s.post("/workflows/batch", json!({"path": missing})).await;
    assert_error(&nonexistent, StatusCode::BAD_REQUEST, "invalid_workflow", &[]);
    let p = nonexistent.1["problems"][0].as_str().expect("a problem");
    assert!(p.contains("no such workflow file") && p.contains("nowhere.k"), "{p}");

    // Nothing so far was recorded.
    let (code, list) = s.get("/workflows").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list, json!({"runs": [], "queue_depth": 0}));

    // A real submission: 202, queued, then it runs; a source submission
    // too.
    let (code, resp) = s.post("/workflows/batch", json!({"path": file})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(resp["status"], "queued");
    assert_eq!(resp["operations"], expected_plan);
    let id = resp["run_id"].as_str().expect("run_id").to_string();
    let (code, resp) = s.post("/workflows/batch", json!({"source": source})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{resp}");
    let id2 = resp["run_id"].as_str().expect("run_id").to_string();
    assert_ne!(id, id2);
    assert_eq!(s.wait_end(&id).await["status"], "succeeded");
    assert_eq!(s.wait_end(&id2).await["status"], "succeeded");
    let (_, list) = s.get("/workflows").await;
    let listed: BTreeSet<&str> = list["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert_eq!(listed, BTreeSet::from([id.as_str(), id2.as_str()]));
    let run = list["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["run_id"] == id.as_str())
        .expect("the run");
    assert_eq!(run["file"], file.display().to_string());
    assert_eq!(run["workflow"], "sub");
}

/// Problems in a submitted source are located in `<source>`, as the client
/// knows it, not in the file the server keeps it in; also when the state
/// (and so that file) is under the server's working directory.
#[tokio::test(flavor = "multi_thread")]
async fn problems_in_a_submitted_source_name_the_source_not_the_servers_file() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let broken = "import drover\n\nworkflow = drover.WorkflowDef {\n    name = \"broken\"\n    servers = [\n}\n";
    let r = s.post("/workflows/batch", json!({"source": broken})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_workflow", &[]);
    let problems: Vec<&str> = r.1["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!problems.is_empty());
    for p in &problems {
        assert!(p.contains("<source>:"), "not located in <source>: {p}");
        assert!(!p.contains("submissions/"), "names the server's scratch file: {p}");
    }
}

/// A field of the wrong type: the message names the field, as it names an
/// unknown one.
#[tokio::test(flavor = "multi_thread")]
async fn a_field_of_the_wrong_type_is_named() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let submit = s.post("/workflows/batch", json!({"path": 7})).await;
    assert_error(&submit, StatusCode::BAD_REQUEST, "invalid_request", &["path", "string"]);
    let flag = s
        .post("/workflows/batch", json!({"path": "x.k", "dry_run": "yes"}))
        .await;
    assert_error(&flag, StatusCode::BAD_REQUEST, "invalid_request", &["dry_run", "bool"]);
    let (file, _) = workflow(dir.path(), "wt", 1, &["a"], "");
    let id = s.submit(&file).await;
    s.wait_end(&id).await;
    s.wait_idle().await;
    let retry = s.post(&format!("/workflows/{id}/retry"), json!({"operation": 5})).await;
    assert_error(
        &retry,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["operation", "string"],
    );
}

// ---------------------------------------------------------------------
// 3. the listing

#[tokio::test(flavor = "multi_thread")]
async fn the_listing_filters_by_status_and_limit_and_refuses_a_bad_filter() {
    let dir = tempdir();
    let (good, _) = workflow(dir.path(), "ok", 1, &["a"], "");
    let (bad, ctl) = workflow(dir.path(), "ko", 1, &["a"], "");
    control(&ctl, "install", "fail");
    let s = Server::start(dir.path(), &[]);
    let mut submitted = Vec::new();
    for f in [&good, &bad, &good] {
        let id = s.submit(f).await;
        s.wait_end(&id).await;
        submitted.push(id);
    }
    let listed = |v: &Value| -> Vec<(String, String)> {
        v["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| {
                (
                    r["run_id"].as_str().expect("id").to_string(),
                    r["status"].as_str().expect("status").to_string(),
                )
            })
            .collect()
    };
    let (code, all) = s.get("/workflows").await;
    assert_eq!(code, StatusCode::OK);
    let newest_first: Vec<(String, String)> = vec![
        (submitted[2].clone(), "succeeded".into()),
        (submitted[1].clone(), "failed".into()),
        (submitted[0].clone(), "succeeded".into()),
    ];
    assert_eq!(listed(&all), newest_first);
    let created: Vec<i64> = all["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["created_at_ms"].as_i64().expect("created"))
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "{created:?}");

    let (_, v) = s.get("/workflows?status=succeeded").await;
    assert_eq!(listed(&v), [newest_first[0].clone(), newest_first[2].clone()]);
    let (_, v) = s.get("/workflows?status=failed").await;
    assert_eq!(listed(&v), [newest_first[1].clone()]);
    let (_, v) = s.get("/workflows?status=queued").await;
    assert_eq!(listed(&v), []);
    let (_, v) = s.get("/workflows?limit=2").await;
    assert_eq!(listed(&v), newest_first[..2]);
    let (_, v) = s.get("/workflows?status=succeeded&limit=1").await;
    assert_eq!(listed(&v), [newest_first[0].clone()]);

    let bogus = s.get("/workflows?status=bogus").await;
    assert_error(
        &bogus,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["bogus", "queued", "succeeded", "rolled_back"],
    );
    let zero = s.get("/workflows?limit=0").await;
    assert_error(&zero, StatusCode::BAD_REQUEST, "invalid_request", &["limit"]);
    let nan = s.get("/workflows?limit=many").await;
    assert_error(&nan, StatusCode::BAD_REQUEST, "invalid_request", &["limit"]);
    let negative = s.get("/workflows?limit=-1").await;
    assert_error(&negative, StatusCode::BAD_REQUEST, "invalid_request", &["limit"]);
}

// ---------------------------------------------------------------------
// 4. status

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_every_operation_and_task_of_a_failed_run() {
    let dir = tempdir();
    let (file, ctl) = workflow(
        dir.path(),
        "st",
        2,
        &["a", "b"],
        "retry_policy = drover.RetryPolicy {max_attempts = 2, initial_delay = 0, max_delay = 0}",
    );
    control(&ctl, "install.a@st-1", "fail");
    control(&ctl, "install.a@st-0", "sleep 0.3");
    let s = Server::start(dir.path(), &[]);
    let id = s.submit(&file).await;
    let st = s.wait_end(&id).await;
    assert_eq!(st["status"], "failed", "{st:#}");
    assert_eq!(st["run_id"], id.as_str());
    assert_eq!(st["workflow"], "st");
    assert!(
        st["reason"].as_str().is_some_and(|r| r.contains("failed")),
        "{}",
        st["reason"]
    );
    assert_eq!(st["not_undone"], json!([]));

    let create = operation_of(&st, "create");
    assert_eq!(create["status"], "succeeded");
    for t in create["tasks"].as_array().expect("tasks") {
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
        assert_eq!(t["action"], "create server", "{t}");
        assert_eq!(t["error"], Value::Null, "{t}");
    }
    let install = operation_of(&st, "install");
    assert_eq!(install["status"], "failed");
    let ids: Vec<&str> = install["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["install/a@st-0", "install/b@st-0", "install/a@st-1", "install/b@st-1"]
    );

    let slow = task_of(&st, "install/a@st-0");
    assert_eq!(slow["status"], "succeeded", "{slow}");
    assert_eq!(slow["server"], "st-0");
    assert_eq!(slow["action"], "install");
    assert_eq!(slow["attempts"], 1);
    let ms = slow["duration_ms"].as_u64().expect("duration");
    assert!((300..10_000).contains(&ms), "slept 0.3 s, took {ms} ms");

    // a on st-1 fails twice; the run halts: b on st-0, still pending,
    // is skipped, and b on st-1 (which requires a) never runs.
    let failed = task_of(&st, "install/a@st-1");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["server"], "st-1");
    assert_eq!(failed["attempts"], 2, "retried once: {failed}");
    assert_eq!(failed["error"], "install.sh of a exited with status 1");
    assert!(failed["duration_ms"].as_u64().is_some(), "{failed}");
    let halted = task_of(&st, "install/b@st-0");
    assert_eq!(halted["status"], "skipped", "{halted}");
    assert_eq!(halted["attempts"], 0);
    assert_eq!(halted["duration_ms"], 0);
    assert_eq!(
        halted["error"],
        "run halted: install/a@st-1 failed: install.sh of a exited with status 1"
    );
    let after = task_of(&st, "install/b@st-1");
    assert_eq!(after["status"], "skipped", "b requires the failed a: {after}");
    assert_eq!(after["attempts"], 0, "{after}");
    assert_eq!(after["error"], "install/a@st-1 did not succeed");
    // behave.sh ran the failing script twice, and never b.
    let runs = executions(&ctl);
    let on = |target: &str| {
        runs.iter()
            .filter(|r| r.2 == target)
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(on("a@st-1"), ["fail", "fail"]);
    assert_eq!(on("a@st-0"), ["ok"]);
    assert_eq!(runs.len(), 3, "b never ran: {runs:?}");

    let nope = s.get("/workflows/nope/status").await;
    assert_error(&nope, StatusCode::NOT_FOUND, "not_found", &["nope"]);
}

// ---------------------------------------------------------------------
// 5. the journal as server-sent events

#[tokio::test(flavor = "multi_thread")]
async fn events_stream_the_journal_follow_it_to_the_end_and_resume_after_an_id() {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "ev", 1, &["a", "b"], "");
    control(&ctl, "install.a", "sleep 1");
    control(&ctl, "install.b", "sleep 0.3");
    let s = Server::start(dir.path(), &[]);
    let id = s.submit(&file).await;
    let path = format!("/workflows/{id}/events");
    s.wait_task(&id, "install/a@ev-0", "running").await;

    // Without follow: the journal so far, then the end, while the run goes on.
    let so_far = s.sse(&path).await;
    assert_eq!(s.status(&id).await["status"], "running");
    assert!(!so_far.is_empty());
    assert!(so_far.iter().all(|e| e.event == "transition"), "{so_far:?}");
    assert_eq!(so_far[0].kind(), "run_started");
    assert_eq!(so_far[0].data["event"]["resumed"], false);
    assert!(so_far.iter().all(|e| e.kind() != "run_finished"), "{so_far:?}");
    assert!(
        so_far
            .iter()
            .any(|e| e.kind() == "task_started" && e.node() == "install/a@ev-0"),
        "{so_far:?}"
    );
    assert_ids_increase(&so_far);

    // Follow: read a few, drop the connection, come back with
    // Last-Event-ID, and follow to the end.
    let mut first = s.sse_reader(&format!("{path}?follow=true"), None).await;
    let mut head = Vec::new();
    for _ in 0..3 {
        head.push(first.next().await.expect("an event"));
    }
    drop(first);
    let last = head.last().expect("head").id.to_string();
    let tail = s
        .sse_reader(&format!("{path}?follow=true"), Some(&last))
        .await
        .rest()
        .await;
    let mut followed = head.clone();
    followed.extend(tail);
    assert_ids_increase(&followed);
    let end = followed.last().expect("events");
    assert_eq!(end.kind(), "run_finished", "{end:?}");
    assert_eq!(end.data["event"]["status"], "succeeded");
    assert_eq!(end.data["node"], Value::Null);
    assert_eq!(s.status(&id).await["status"], "succeeded");

    // The whole journal, after the end, is exactly what was followed.
    let all = s.sse(&path).await;
    assert_eq!(all, followed);
    assert_eq!(ids(&all), (1..=all.len() as i64).collect::<Vec<_>>());
    for e in &all {
        assert!(e.data["at_ms"].as_i64().is_some_and(|t| t > 0), "{e:?}");
    }
    let succeeded: Vec<&str> = all
        .iter()
        .filter(|e| e.kind() == "task_succeeded")
        .map(Sse::node)
        .collect();
    for t in ["create/ev-0", "install/a@ev-0", "install/b@ev-0"] {
        assert_eq!(succeeded.iter().filter(|n| **n == t).count(), 1, "{t}: {succeeded:?}");
    }

    // Resuming after an id, by header and by query: the rest, once.
    let k = all.len() as i64 / 2;
    let by_header = s.sse_reader(&path, Some(&k.to_string())).await.rest().await;
    let by_query = s.sse(&format!("{path}?after={k}")).await;
    assert_eq!(by_header, all[k as usize..]);
    assert_eq!(by_query, all[k as usize..]);
    let followed_after = s.sse(&format!("{path}?after={k}&follow=true")).await;
    assert_eq!(followed_after, all[k as usize..], "follow of a finished run ends");
    assert_eq!(s.sse(&format!("{path}?after={}", all.len())).await, []);

    let bad_header = json_of(
        s.request(Method::GET, &path)
            .header("Last-Event-ID", "yesterday")
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_error(
        &bad_header,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["Last-Event-ID"],
    );
    let negative = s.get(&format!("{path}?after=-1")).await;
    assert_error(&negative, StatusCode::BAD_REQUEST, "invalid_request", &["after"]);
    let unknown = s.get("/workflows/nope/events").await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found", &["nope"]);
}

// ---------------------------------------------------------------------
// 6. task output as server-sent events

#[tokio::test(flavor = "multi_thread")]
async fn logs_stream_task_output_filtered_by_task_and_server_and_resumable() {
    let dir = tempdir();
    let (file, ctl) = workflow(
        dir.path(),
        "lg",
        2,
        &["a", "b"],
        "retry_policy = drover.RetryPolicy {max_attempts = 2, initial_delay = 0, max_delay = 0}",
    );
    control(&ctl, "install.a@lg-1", "fail 1");
    control(&ctl, "install.b", "sleep 0.3");
    let s = Server::start(dir.path(), &[]);
    let id = s.submit(&file).await;
    let path = format!("/workflows/{id}/logs");
    // (Following a run that is still starting is the subject of
    // a_run_followed_right_after_submission_is_followed_to_its_end.)
    s.wait_running(1).await;

    // Followed from the start to its end.
    let followed = s.sse(&format!("{path}?follow=true")).await;
    assert_eq!(
        s.status(&id).await["status"],
        "succeeded",
        "the stream ended with the run"
    );
    assert_ids_increase(&followed);
    assert!(followed.iter().all(|e| e.event == "log"), "{followed:?}");
    let lines: BTreeSet<(String, String, String, String)> = followed
        .iter()
        .map(|e| {
            let f = |k: &str| e.data[k].as_str().unwrap_or("").to_string();
            (f("task"), f("server"), f("stream"), f("line"))
        })
        .collect();
    let mut want = BTreeSet::new();
    for server in ["lg-0", "lg-1"] {
        for ts in ["a", "b"] {
            want.insert((
                format!("install/{ts}@{server}"),
                server.to_string(),
                "stdout".to_string(),
                format!("{ts}@{server}: install ok"),
            ));
        }
    }
    want.insert((
        "install/a@lg-1".into(),
        "lg-1".into(),
        "stderr".into(),
        "a@lg-1: install failing (1 of 1)".into(),
    ));
    assert_eq!(lines, want);
    assert_eq!(followed.len(), want.len(), "no line twice: {followed:?}");

    // After the end: the same stream without follow.
    let all = s.sse(&path).await;
    assert_eq!(all, followed);
    assert_eq!(ids(&all), (1..=all.len() as i64).collect::<Vec<_>>());

    // Filters.
    let one = s.sse(&format!("{path}?task=install/a@lg-1")).await;
    let kinds: Vec<&str> = one.iter().filter_map(|e| e.data["stream"].as_str()).collect();
    assert_eq!(kinds, ["stderr", "stdout"], "the failed attempt, then the good one");
    assert!(one.iter().all(|e| e.data["task"] == "install/a@lg-1"));
    let on_lg1 = s.sse(&format!("{path}?server=lg-1")).await;
    assert_eq!(
        on_lg1,
        all.iter()
            .filter(|e| e.data["server"] == "lg-1")
            .cloned()
            .collect::<Vec<_>>()
    );
    assert_eq!(on_lg1.len(), 3);
    assert_eq!(s.sse(&format!("{path}?server=elsewhere")).await, []);
    assert_eq!(s.sse(&format!("{path}?task=install/a@lg-0&server=lg-1")).await, []);

    // Resuming.
    let by_header = s.sse_reader(&path, Some("2")).await.rest().await;
    assert_eq!(by_header, all[2..]);
    assert_eq!(s.sse(&format!("{path}?after=2")).await, all[2..]);
    let filtered_after = s.sse(&format!("{path}?server=lg-1&after=2")).await;
    assert_eq!(
        filtered_after,
        all[2..]
            .iter()
            .filter(|e| e.data["server"] == "lg-1")
            .cloned()
            .collect::<Vec<_>>()
    );
    let bad = s.get(&format!("{path}?after=x")).await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_request", &["after"]);
    let unknown = s.get("/workflows/nope/logs").await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found", &["nope"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_stream_followed_mid_run_resumes_without_gaps_or_repeats() {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "lf", 3, &["a", "b"], "max_parallel = 1");
    control(&ctl, "install", "sleep 0.2");
    let s = Server::start(dir.path(), &[]);
    let id = s.submit(&file).await;
    s.wait_running(1).await;
    let path = format!("/workflows/{id}/logs?follow=true");
    let mut r = s.sse_reader(&path, None).await;
    let first = r.next().await.expect("a first line");
    assert_eq!(first.id, 1);
    drop(r);
    assert_ne!(
        s.status(&id).await["status"],
        "succeeded",
        "the run should still be going"
    );
    let rest = s.sse_reader(&path, Some("1")).await.rest().await;
    let mut all = vec![first];
    all.extend(rest);
    assert_ids_increase(&all);
    assert_eq!(ids(&all), (1..=6).collect::<Vec<_>>(), "{all:?}");
    assert_eq!(s.status(&id).await["status"], "succeeded");
}

/// A client that submits and at once follows the run's events and output
/// (what `drover batch submit --watch` does) must see the run to its end,
/// however soon it asks.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_followed_right_after_submission_is_followed_to_its_end() {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "fs", 1, &["a"], "");
    control(&ctl, "install", "sleep 0.5");
    let s = Server::start(dir.path(), &[]);
    for round in 1..=3 {
        let id = s.submit(&file).await;
        let (events_path, logs_path) = (
            format!("/workflows/{id}/events?follow=true"),
            format!("/workflows/{id}/logs?follow=true"),
        );
        let (events, logs) = tokio::join!(s.sse(&events_path), s.sse(&logs_path));
        let status = s.status(&id).await["status"].clone();
        let kinds: Vec<&str> = events.iter().map(Sse::kind).collect();
        assert_eq!(
            kinds.last().copied(),
            Some("run_finished"),
            "round {round}: the event stream ended before the run did (run now {status}): {kinds:?}"
        );
        let lines: Vec<&str> = logs.iter().filter_map(|e| e.data["line"].as_str()).collect();
        assert_eq!(
            lines,
            ["a@fs-0: install ok"],
            "round {round}: the log stream ended before the run did (run now {status})"
        );
        s.wait_end(&id).await;
    }
}

// ---------------------------------------------------------------------
// 7. pause, resume, cancel

#[tokio::test(flavor = "multi_thread")]
async fn pause_holds_new_tasks_resume_goes_on_and_cancel_ends_the_run() {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "pr", 1, &["a", "b"], "");
    control(&ctl, "install.a", "sleep 1");
    control(&ctl, "install.b", "sleep 30");
    let s = Server::start(dir.path(), &[]);
    let id = s.submit(&file).await;
    s.wait_task(&id, "install/a@pr-0", "running").await;

    let (code, body) = s.command(&id, "pause").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"run_id": id, "action": "pause", "status": "paused"}));
    s.wait_status(&id, "paused").await;
    let (_, list) = s.get("/workflows?status=paused").await;
    assert_eq!(list["runs"][0]["run_id"], id.as_str());

    // A paused run is busy: no retry, no rollback.
    let retry = s.command(&id, "retry").await;
    assert_error(&retry, StatusCode::CONFLICT, "conflict", &[&id, "paused"]);
    let rollback = s.command(&id, "rollback").await;
    assert_error(&rollback, StatusCode::CONFLICT, "conflict", &[&id, "paused"]);

    // The running task finishes; b does not start while paused.
    let st = s.wait_task(&id, "install/a@pr-0", "succeeded").await;
    assert_eq!(st["status"], "paused");
    assert_eq!(task_of(&st, "install/b@pr-0")["attempts"], 0, "{st:#}");

    let (code, body) = s.command(&id, "resume").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"run_id": id, "action": "resume", "status": "running"}));
    s.wait_task(&id, "install/b@pr-0", "running").await;
    assert_eq!(s.status(&id).await["status"], "running");

    let (code, body) = s.command(&id, "cancel").await;
    let cancelled_at = Instant::now();
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"run_id": id, "action": "cancel", "status": "cancelled"}));
    let st = s.wait_end(&id).await;
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(10),
        "cancel waited for the 30 s task: {:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(st["status"], "cancelled", "{st:#}");
    s.wait_idle().await;
    let b = task_of(&st, "install/b@pr-0");
    assert_eq!(b["status"], "cancelled", "{b}");
    assert!(b["error"].as_str().is_some_and(|e| e.contains("cancelled")), "{b}");
    assert_eq!(task_of(&st, "install/a@pr-0")["status"], "succeeded");
    assert_eq!(operation_of(&st, "install")["status"], "cancelled");

    // The journal: a's success before the unpause, b's start after it.
    let journal = s.journal(&id).await;
    let pos = |kind: &str, node: Option<&str>| {
        journal
            .iter()
            .position(|e| e.kind() == kind && node.is_none_or(|n| e.node() == n))
            .unwrap_or_else(|| panic!("no {kind} {node:?} in {journal:#?}"))
    };
    let paused = pos("run_paused", None);
    let a_done = pos("task_succeeded", Some("install/a@pr-0"));
    let unpaused = pos("run_unpaused", None);
    let b_started = pos("task_started", Some("install/b@pr-0"));
    let cancel = pos("cancel_requested", None);
    assert!(paused < a_done && a_done < unpaused && unpaused < b_started && b_started < cancel);
    let last = journal.last().expect("journal");
    assert_eq!(
        (last.kind(), &last.data["event"]["status"]),
        ("run_finished", &json!("cancelled"))
    );
    let runs = executions(&ctl);
    assert_eq!(runs, [("ok".to_string(), "install".to_string(), "a@pr-0".to_string())]);

    // A finished run takes no pause, resume or cancel.
    for action in ["pause", "resume", "cancel"] {
        let r = s.command(&id, action).await;
        assert_error(&r, StatusCode::CONFLICT, "conflict", &[&id, "cancelled"]);
    }
    for action in ["pause", "resume", "cancel", "retry", "rollback"] {
        let r = s.command("nope", action).await;
        assert_error(&r, StatusCode::NOT_FOUND, "not_found", &["nope"]);
    }
}

/// An operator who cancels a run just after submitting it must not be
/// told the run cannot be cancelled.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_cancelled_right_after_submission_is_cancelled() {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "cs", 1, &["a"], "");
    control(&ctl, "install", "sleep 5");
    let s = Server::start(dir.path(), &[]);
    for round in 1..=3 {
        let id = s.submit(&file).await;
        let (code, body) = s.command(&id, "cancel").await;
        assert_eq!(code, StatusCode::ACCEPTED, "round {round}: {body}");
        assert_eq!(s.wait_end(&id).await["status"], "cancelled", "round {round}");
    }
}

// ---------------------------------------------------------------------
// 8. retry

#[tokio::test(flavor = "multi_thread")]
async fn retry_reruns_only_the_failed_tasks_until_the_run_succeeds() {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "rt", 2, &["a", "b"], "");
    control(&ctl, "install.a@rt-1", "fail 1");
    control(&ctl, "install.b", "sleep 1");
    let s = Server::start(dir.path(), &[]);
    let id = s.submit(&file).await;
    let st = s.wait_end(&id).await;
    assert_eq!(st["status"], "failed", "{st:#}");
    assert_eq!(task_of(&st, "install/a@rt-1")["status"], "failed");
    s.wait_idle().await;

    let nope = s
        .post(&format!("/workflows/{id}/retry"), json!({"operation": "nope"}))
        .await;
    assert!(
        nope.0 == StatusCode::BAD_REQUEST || nope.0 == StatusCode::CONFLICT,
        "{:?} {}",
        nope.0,
        nope.1
    );
    let message = nope.1["message"].as_str().unwrap_or("");
    assert!(
        message.contains("nope") && message.contains("create") && message.contains("install"),
        "names the operation and the known ones: {}",
        nope.1
    );
    let bad = s
        .post(&format!("/workflows/{id}/retry"), json!({"operations": ["install"]}))
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "invalid_request", &["operations"]);
    assert_eq!(
        s.status(&id).await["status"],
        "failed",
        "a refused retry changes nothing"
    );

    let (code, body) = s.command(&id, "retry").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"run_id": id, "action": "retry", "status": "running"}));
    // b@rt-1 sleeps 1 s in the retry: the run is busy meanwhile.
    let again = s.command(&id, "retry").await;
    assert_error(&again, StatusCode::CONFLICT, "conflict", &[&id]);
    let st = s.wait_end(&id).await;
    assert_eq!(st["status"], "succeeded", "{st:#}");
    assert!(tasks_of(&st).iter().all(|t| t["status"] == "succeeded"), "{st:#}");
    s.wait_idle().await;

    // Only what failed or never ran ran again.
    let runs = executions(&ctl);
    let on = |target: &str| {
        runs.iter()
            .filter(|r| r.2 == target)
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(on("a@rt-1"), ["fail", "ok"]);
    assert_eq!(on("b@rt-1"), ["ok"]);
    assert_eq!(on("a@rt-0"), ["ok"]);
    assert_eq!(on("b@rt-0"), ["ok"]);
    let journal = s.journal(&id).await;
    let starts: Vec<&Value> = journal
        .iter()
        .filter(|e| e.kind() == "run_started")
        .map(|e| &e.data["event"]["resumed"])
        .collect();
    assert_eq!(starts.len(), 2, "the first start and the retry: {journal:#?}");
    assert_eq!(journal.last().expect("journal").data["event"]["status"], "succeeded");

    // A succeeded run has nothing to retry: accepted, nothing runs.
    let (code, body) = s.command(&id, "retry").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let more = s
        .sse(&format!("/workflows/{id}/events?follow=true&after={}", journal.len()))
        .await;
    assert!(more.iter().all(|e| e.kind() != "task_started"), "{more:#?}");
    assert_eq!(s.wait_end(&id).await["status"], "succeeded");
    assert_eq!(executions(&ctl).len(), 5, "nothing ran again");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_of_one_operation_reruns_that_operation_only() {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "ro", 1, &["a"], "");
    control(&ctl, "install.a", "fail 1");
    let s = Server::start(dir.path(), &[]);
    let id = s.submit(&file).await;
    assert_eq!(s.wait_end(&id).await["status"], "failed");
    s.wait_idle().await;
    let (code, body) = s
        .post(&format!("/workflows/{id}/retry"), json!({"operation": "install"}))
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(s.wait_end(&id).await["status"], "succeeded");
    let runs: Vec<String> = executions(&ctl).into_iter().map(|r| r.0).collect();
    assert_eq!(runs, ["fail", "ok"]);
}

// ---------------------------------------------------------------------
// 9. rollback

#[tokio::test(flavor = "multi_thread")]
async fn rollback_undoes_a_succeeded_run_and_journals_each_undo() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "rb", 2, &["a", "b"], "");
    let s = Server::start(dir.path(), &[]);
    let id = s.submit(&file).await;
    assert_eq!(s.wait_end(&id).await["status"], "succeeded");
    s.wait_idle().await;
    let host = |h: &str| dir.path().join("providers/local/hosts").join(h);
    assert!(host("rb-0").join("installed/a").is_file() && host("rb-1").join("installed/b").is_file());

    let (code, body) = s.command(&id, "rollback").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["action"], "rollback");
    assert_eq!(body["run_id"], id.as_str());
    let st = s.wait_status(&id, "rolled_back").await;
    assert_eq!(st["not_undone"], json!([]), "{st:#}");
    for t in tasks_of(&st) {
        assert!(t["rollback"].is_string(), "what rollback did with {}: {t}", t["id"]);
    }
    for h in ["rb-0", "rb-1"] {
        assert!(!host(h).exists(), "{h} still exists after the rollback");
    }

    let journal = s.journal(&id).await;
    let kinds: Vec<&str> = journal.iter().map(Sse::kind).collect();
    let started = kinds
        .iter()
        .position(|k| *k == "rollback_started")
        .expect("rollback_started");
    let finished = kinds
        .iter()
        .position(|k| *k == "rollback_finished")
        .expect("rollback_finished");
    assert!(started < finished);
    assert_eq!(journal[finished].data["event"]["complete"], true);
    let undone: BTreeSet<&str> = journal
        .iter()
        .filter(|e| e.kind() == "undo_succeeded")
        .map(Sse::node)
        .collect();
    let all_tasks: BTreeSet<&str> = [
        "create/rb-0",
        "create/rb-1",
        "install/a@rb-0",
        "install/b@rb-0",
        "install/a@rb-1",
        "install/b@rb-1",
    ]
    .into();
    assert_eq!(undone, all_tasks);
    assert_eq!(kinds.iter().filter(|k| **k == "undo_started").count(), 6);
    // Reverse order: b is removed before a on each server, installs before
    // the servers are deleted.
    let undo_at = |n: &str| {
        journal
            .iter()
            .position(|e| e.kind() == "undo_succeeded" && e.node() == n)
            .expect("undo")
    };
    for h in ["rb-0", "rb-1"] {
        assert!(undo_at(&format!("install/b@{h}")) < undo_at(&format!("install/a@{h}")));
        assert!(undo_at(&format!("install/a@{h}")) < undo_at(&format!("create/{h}")));
    }
    let (_, m) = s.get(&format!("/workflows/{id}/metrics")).await;
    assert_eq!(m["undone"], 6, "{m}");
    assert_eq!(m["status"], "rolled_back");

    // Nothing is undone twice.
    let again = s.command(&id, "rollback").await;
    assert_error(&again, StatusCode::CONFLICT, "conflict", &[&id, "rolled back already"]);
    assert_eq!(s.journal(&id).await, journal);
}

/// While a rollback runs, the run must not look finished: a client that
/// polls the status after POST /rollback until it is final would stop at
/// once, before anything was undone.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_being_rolled_back_does_not_look_finished() {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "rs", 1, &["a"], "");
    let s = Server::start(dir.path(), &[]);
    let id = s.submit(&file).await;
    assert_eq!(s.wait_end(&id).await["status"], "succeeded");
    s.wait_idle().await;
    control(&ctl, "remove", "sleep 2");
    let (code, body) = s.command(&id, "rollback").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let during = s.status(&id).await;
    let undoing = task_of(&during, "install/a@rs-0").clone();
    assert!(
        !FINAL.contains(&body["status"].as_str().unwrap_or("")),
        "POST rollback answered a final status while the rollback had just begun: {body}"
    );
    assert!(
        !FINAL.contains(&during["status"].as_str().unwrap_or("")),
        "the status says {} while install/a@rs-0 is being removed ({undoing})",
        during["status"]
    );
    assert_eq!(s.wait_status(&id, "rolled_back").await["not_undone"], json!([]));
}

// ---------------------------------------------------------------------
// 10. metrics

/// The value of the sample `name` (with its labels as written) in
/// Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn run_metrics_match_the_run_and_prometheus_metrics_count_runs_and_tasks() {
    let dir = tempdir();
    let (good, good_ctl) = workflow(
        dir.path(),
        "mg",
        2,
        &["a", "b"],
        "retry_policy = drover.RetryPolicy {max_attempts = 2, initial_delay = 0, max_delay = 0}",
    );
    control(&good_ctl, "install.a@mg-1", "fail 1");
    let (bad, bad_ctl) = workflow(dir.path(), "mb", 1, &["a", "b"], "");
    control(&bad_ctl, "install.a", "fail");
    let s = Server::start(dir.path(), &[]);
    let g = s.submit(&good).await;
    let st = s.wait_end(&g).await;
    assert_eq!(st["status"], "succeeded", "{st:#}");
    let b = s.submit(&bad).await;
    assert_eq!(s.wait_end(&b).await["status"], "failed");
    s.wait_idle().await;
    let refused = s.post("/workflows/batch", json!({"source": "nonsense ="})).await;
    assert_eq!(refused.0, StatusCode::BAD_REQUEST);

    let (code, m) = s.get(&format!("/workflows/{g}/metrics")).await;
    assert_eq!(code, StatusCode::OK, "{m}");
    let journal = s.journal(&g).await;
    let task_time: u64 = tasks_of(&st).iter().filter_map(|t| t["duration_ms"].as_u64()).sum();
    assert_eq!(m["run_id"], g.as_str());
    assert_eq!(m["status"], "succeeded");
    assert_eq!(m["tasks_total"], 6);
    assert_eq!(m["tasks"], json!({"succeeded": 6}));
    assert_eq!(m["attempts"], 7, "6 tasks, one retried: {m}");
    assert_eq!(m["retries"], 1);
    assert_eq!(m["undone"], 0);
    assert_eq!(m["events"], journal.len());
    let span = journal.last().expect("journal").data["at_ms"].as_i64().expect("at")
        - journal[0].data["at_ms"].as_i64().expect("at");
    assert_eq!(m["elapsed_ms"], span);
    assert_eq!(m["task_time_ms"], task_time);
    let ops = m["operations"].as_array().expect("operations");
    assert_eq!(ops.len(), 2);
    assert_eq!(
        (&ops[0]["id"], &ops[0]["tasks"], &ops[0]["succeeded"], &ops[0]["failed"]),
        (&json!("create"), &json!(2), &json!(2), &json!(0))
    );
    assert_eq!(
        (&ops[1]["id"], &ops[1]["tasks"], &ops[1]["succeeded"], &ops[1]["failed"]),
        (&json!("install"), &json!(4), &json!(4), &json!(0))
    );
    for op in ops {
        let name = op["id"].as_str().expect("id");
        let durations: Vec<u64> = operation_of(&st, name)["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .filter_map(|t| t["duration_ms"].as_u64())
            .collect();
        assert_eq!(op["task_time_ms"], durations.iter().sum::<u64>(), "{op}");
        assert_eq!(op["max_task_ms"], durations.iter().max().copied().unwrap_or(0), "{op}");
    }
    let (_, mb) = s.get(&format!("/workflows/{b}/metrics")).await;
    assert_eq!(mb["status"], "failed");
    assert_eq!(mb["tasks_total"], 3);
    assert_eq!(mb["attempts"], 2, "create and the failing a: {mb}");
    assert_eq!(mb["operations"][1]["failed"], 1, "{mb}");
    let unknown = s.get("/workflows/nope/metrics").await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found", &["nope"]);

    let resp = s.request(Method::GET, "/metrics").send().await.expect("GET /metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .expect("ct")
        .to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = resp.text().await.expect("metrics text");
    let expect = |name: &str, value: f64| {
        assert_eq!(sample(&text, name), Some(value), "{name} in:\n{text}");
    };
    expect(r#"drover_runs{status="succeeded"}"#, 1.0);
    expect(r#"drover_runs{status="failed"}"#, 1.0);
    expect(r#"drover_runs{status="queued"}"#, 0.0);
    expect(r#"drover_runs{status="rolled_back"}"#, 0.0);
    expect("drover_queue_depth", 0.0);
    expect("drover_runs_active", 0.0);
    // create: 2 + 1 succeeded; install: 4 succeeded, 1 failed (b on mb-0
    // never ran).
    expect(r#"drover_tasks_total{operation="create",status="succeeded"}"#, 3.0);
    expect(r#"drover_tasks_total{operation="install",status="succeeded"}"#, 4.0);
    expect(r#"drover_tasks_total{operation="install",status="failed"}"#, 1.0);
    expect(r#"drover_task_attempts_total{operation="install"}"#, 6.0);
    expect(r#"drover_task_retries_total{operation="install"}"#, 1.0);
    expect(r#"drover_submissions_total{result="accepted"}"#, 2.0);
    expect(r#"drover_submissions_total{result="invalid"}"#, 1.0);
    // Every attempt's duration is observed: 3 creates, 6 install attempts.
    expect(r#"drover_task_duration_seconds_count{operation="install"}"#, 6.0);
    expect(r#"drover_task_duration_seconds_count{operation="create"}"#, 3.0);
    expect(
        r#"drover_task_duration_seconds_bucket{le="+Inf",operation="install"}"#,
        6.0,
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("drover_task_duration_seconds_bucket{le=\"0.5\"")),
        "{text}"
    );
    assert!(text.contains("# TYPE drover_runs gauge"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("drover_http_request_duration_seconds_count{")
                && l.contains("route=\"/workflows/batch\"")),
        "{text}"
    );
}

// ---------------------------------------------------------------------
// 11. tokens

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_required_every_endpoint_but_healthz_asks_for_it() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "au", 1, &["a"], "");
    let mut s = Server::start_with(
        dir.path(),
        &[],
        &[("DROVER_TOKEN", "secret-token"), ("DROVER_METRICS_TOKEN", "m-token")],
        &test_home(),
    );
    let (client, base) = (s.client.clone(), s.base.clone());
    let with = |token: Option<&str>, method: Method, path: &str| {
        let r = client.request(method, format!("{base}{path}"));
        match token {
            Some(t) => r.header(reqwest::header::AUTHORIZATION, format!("Bearer {t}")),
            None => r,
        }
    };
    let (code, body) = json_of(with(None, Method::GET, "/healthz").send().await.expect("GET")).await;
    assert_eq!((code, &body["status"]), (StatusCode::OK, &json!("ok")));

    for (method, path) in [
        (Method::GET, "/workflows"),
        (Method::GET, "/metrics"),
        (Method::GET, "/openapi.json"),
        (Method::GET, "/workflows/x/status"),
        (Method::POST, "/workflows/x/cancel"),
        (Method::GET, "/workflows/x/events"),
    ] {
        let none = json_of(with(None, method.clone(), path).send().await.expect("request")).await;
        assert_error(
            &none,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            &["bearer token", "Authorization"],
        );
        let wrong = json_of(
            with(Some("secret-tokem"), method.clone(), path)
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_error(&wrong, StatusCode::UNAUTHORIZED, "unauthorized", &["not valid"]);
    }
    let basic = json_of(
        s.client
            .get(s.url("/workflows"))
            .header(reqwest::header::AUTHORIZATION, "Basic c2VjcmV0LXRva2Vu")
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_error(&basic, StatusCode::UNAUTHORIZED, "unauthorized", &["Bearer"]);
    let prefix = json_of(
        with(Some("secret-toke"), Method::GET, "/workflows")
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(
        prefix.0,
        StatusCode::UNAUTHORIZED,
        "a prefix of the token is not the token"
    );

    // The right token opens everything.
    let (code, list) = json_of(
        with(Some("secret-token"), Method::GET, "/workflows")
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{list}");
    s.token = Some("secret-token".into());
    let id = s.submit(&file).await;
    assert_eq!(s.wait_end(&id).await["status"], "succeeded");
    assert!(!s.journal(&id).await.is_empty());
    let metrics = with(Some("secret-token"), Method::GET, "/metrics")
        .send()
        .await
        .expect("GET");
    assert_eq!(metrics.status(), StatusCode::OK);

    // The metrics token reads /metrics and nothing else.
    let metrics = with(Some("m-token"), Method::GET, "/metrics")
        .send()
        .await
        .expect("GET");
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics.text().await.expect("text").contains("drover_runs"));
    for (method, path) in [
        (Method::GET, "/workflows"),
        (Method::GET, "/openapi.json"),
        (Method::POST, "/workflows/batch"),
        (Method::GET, &*format!("/workflows/{id}/status")),
        (Method::POST, &*format!("/workflows/{id}/rollback")),
    ] {
        let r = json_of(with(Some("m-token"), method, path).send().await.expect("request")).await;
        assert_error(&r, StatusCode::FORBIDDEN, "forbidden", &["metrics token", "/metrics"]);
    }
    assert_eq!(
        s.status(&id).await["status"],
        "succeeded",
        "the refused rollback did nothing"
    );
    // No token file was written: DROVER_TOKEN is the token.
    assert!(!dir.path().join("api-token").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_drover_token_a_token_file_is_generated_owner_only_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let tok = dir.path().join("secret/tok");
    let args = ["--token-file", tok.to_str().expect("utf-8")];
    let mut s = Server::start(dir.path(), &args);
    let meta = std::fs::metadata(&tok).expect("the token file was created");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&tok).expect("token").trim().to_string();
    assert_eq!(token.len(), 64, "256 bits, hex: {token}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    let none = s.get("/workflows").await;
    assert_error(&none, StatusCode::UNAUTHORIZED, "unauthorized", &["bearer token"]);
    s.token = Some(token.clone());
    let (code, body) = s.get("/workflows").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    drop(s);

    // The next start reads the same token.
    let mut s = Server::start(dir.path(), &args);
    assert_eq!(std::fs::read_to_string(&tok).expect("token").trim(), token);
    s.token = Some(token);
    assert_eq!(s.get("/workflows").await.0, StatusCode::OK);
    drop(s);

    // A token file others can read is refused at start.
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = Command::new(env!("CARGO_BIN_EXE_drover"))
        .current_dir(dir.path())
        .env("DROVER_HOME", test_home())
        .env("DROVER_VENV", repo().join(".venv"))
        .env_remove("DROVER_TOKEN")
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(dir.path().join("state.db"))
        .arg("--logs")
        .arg(dir.path().join("server-logs"))
        .args(args)
        .output()
        .expect("drover serve");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "started with a world-readable token file: {err}");
    assert!(err.contains("readable by others") && err.contains("tok"), "{err}");
}

// ---------------------------------------------------------------------
// 12. the queue

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_refuses_with_429_runs_start_in_order_and_a_cancelled_queued_run_never_starts() {
    let dir = tempdir();
    let mut files = Vec::new();
    for i in 1..=5 {
        let (file, ctl) = workflow(dir.path(), &format!("q{i}"), 1, &["a"], "");
        if i == 1 {
            control(&ctl, "install", "sleep 2");
        }
        files.push(file);
    }
    let s = Server::start(dir.path(), &["--max-running", "1", "--max-pending", "2"]);
    let first = s.submit(&files[0]).await;
    s.wait_status(&first, "running").await;
    let second = s.submit(&files[1]).await;
    let third = s.submit(&files[2]).await;
    assert_eq!(s.status(&second).await["status"], "queued");
    assert_eq!(s.status(&third).await["status"], "queued");

    let resp = s
        .request(Method::POST, "/workflows/batch")
        .json(&json!({"path": files[3]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(
        resp.headers().get(reqwest::header::RETRY_AFTER).map(|v| v.as_bytes()),
        Some(&b"2"[..])
    );
    let full = json_of(resp).await;
    assert_error(
        &full,
        StatusCode::TOO_MANY_REQUESTS,
        "queue_full",
        &["queue is full", "2"],
    );
    // Validation does not queue, so it is not refused.
    let (code, _) = s
        .post("/workflows/batch", json!({"path": files[3], "validate_only": true}))
        .await;
    assert_eq!(code, StatusCode::OK);

    let (_, health) = s.get("/healthz").await;
    assert_eq!(health, json!({"status": "ok", "running": 1, "queued": 2}));
    let (_, list) = s.get("/workflows").await;
    assert_eq!(list["queue_depth"], 2);
    assert_eq!(
        list["runs"].as_array().expect("runs").len(),
        3,
        "the refused run is not recorded"
    );
    let text = s
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    assert_eq!(sample(&text, "drover_queue_depth"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "drover_runs_active"), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"drover_runs{status="queued"}"#), Some(2.0), "{text}");
    assert_eq!(
        sample(&text, r#"drover_submissions_total{result="rejected"}"#),
        Some(1.0),
        "{text}"
    );

    // Pause of a queued run: it is not running.
    let pause = s.command(&third, "pause").await;
    assert_error(&pause, StatusCode::CONFLICT, "conflict", &[&third, "queued"]);
    let resume = s.command(&third, "resume").await;
    assert_error(&resume, StatusCode::CONFLICT, "conflict", &[&third, "queued"]);
    let rollback = s.command(&third, "rollback").await;
    assert_error(&rollback, StatusCode::CONFLICT, "conflict", &[&third]);

    // Cancelling a queued run frees its place.
    let (code, body) = s.command(&third, "cancel").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(s.status(&third).await["status"], "cancelled");
    let fifth = s.submit(&files[4]).await;

    for id in [&first, &second, &fifth] {
        assert_eq!(s.wait_end(id).await["status"], "succeeded", "{id}");
    }
    let st = s.status(&third).await;
    assert_eq!(st["status"], "cancelled");
    assert!(tasks_of(&st).iter().all(|t| t["attempts"] == 0), "{st:#}");
    let journal = s.journal(&third).await;
    let kinds: Vec<&str> = journal.iter().map(Sse::kind).collect();
    assert_eq!(kinds, ["cancel_requested", "run_finished"], "never started");
    assert_eq!(journal[1].data["event"]["status"], "cancelled");
    let ran: Vec<String> = executions(&dir.path().join("control-q3"))
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert!(ran.is_empty(), "{ran:?}");

    // First in, first out, one at a time: each started after the one
    // before it finished, in the order they were created.
    let mut spans = Vec::new();
    for id in [&first, &second, &fifth] {
        let j = s.journal(id).await;
        let started = j.iter().find(|e| e.kind() == "run_started").expect("run_started");
        let finished = j
            .iter()
            .rev()
            .find(|e| e.kind() == "run_finished")
            .expect("run_finished");
        let created = s.status(id).await["created_at_ms"].as_i64().expect("created");
        spans.push((
            created,
            started.data["at_ms"].as_i64().expect("at"),
            finished.data["at_ms"].as_i64().expect("at"),
        ));
    }
    for w in spans.windows(2) {
        assert!(w[0].0 <= w[1].0, "created in order: {spans:?}");
        assert!(w[0].2 <= w[1].1, "started after the one before finished: {spans:?}");
    }
    s.wait_idle().await;
    let (_, health) = s.get("/healthz").await;
    assert_eq!(health, json!({"status": "ok", "running": 0, "queued": 0}));
}

// ---------------------------------------------------------------------
// 13. graceful shutdown and restart

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_running_task_finish_and_a_restart_resumes_the_run_without_rerunning_it() {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "sd", 1, &["a", "b"], "");
    control(&ctl, "install", "sleep 1");
    let mut s = Server::start(dir.path(), &["--shutdown-grace", "10"]);
    let id = s.submit(&file).await;
    s.wait_task(&id, "install/a@sd-0", "running").await;
    let exit = s.terminate();
    assert_eq!(exit.code(), Some(0), "drover serve exits 0 on SIGTERM");
    drop(s);

    // The task in flight finished; the next did not start; the run is
    // checkpointed.
    let runs = executions(&ctl);
    assert_eq!(runs, [("ok".to_string(), "install".to_string(), "a@sd-0".to_string())]);
    let store = drover_state::Store::open_read_only(&dir.path().join("state.db")).expect("state");
    let status = store.run(&id).expect("run").status;
    assert_eq!(
        status,
        drover_state::RunStatus::Aborted,
        "checkpointed for the next start"
    );
    let journal = store.journal(&id).expect("journal");
    assert!(
        journal.iter().any(|e| e.node.as_deref() == Some("install/a@sd-0")
            && matches!(e.event, drover_state::Event::TaskSucceeded { .. })),
        "{journal:#?}"
    );
    assert!(
        !journal.iter().any(|e| e.node.as_deref() == Some("install/b@sd-0")
            && matches!(e.event, drover_state::Event::TaskStarted { .. })),
        "{journal:#?}"
    );
    drop(store);

    // The next start takes the run up from its journal.
    let s = Server::start(dir.path(), &["--shutdown-grace", "10"]);
    let st = s.wait_end(&id).await;
    assert_eq!(st["status"], "succeeded", "{st:#}");
    assert!(tasks_of(&st).iter().all(|t| t["status"] == "succeeded"), "{st:#}");
    assert_eq!(task_of(&st, "install/a@sd-0")["attempts"], 1, "not run again");
    let runs = executions(&ctl);
    assert_eq!(
        runs,
        [
            ("ok".to_string(), "install".to_string(), "a@sd-0".to_string()),
            ("ok".to_string(), "install".to_string(), "b@sd-0".to_string()),
        ],
        "each script once"
    );
    let journal = s.journal(&id).await;
    let starts: Vec<&Value> = journal
        .iter()
        .filter(|e| e.kind() == "run_started")
        .map(|e| &e.data["event"]["resumed"])
        .collect();
    assert_eq!(starts, [&json!(false), &json!(true)]);
    let succeeded: Vec<&str> = journal
        .iter()
        .filter(|e| e.kind() == "task_succeeded")
        .map(Sse::node)
        .collect();
    let distinct: BTreeSet<&str> = succeeded.iter().copied().collect();
    assert_eq!(succeeded.len(), distinct.len(), "a task succeeded twice: {succeeded:?}");
    assert_eq!(succeeded.len(), 3);

    // The output stream goes on numbering after the restart.
    let logs = s.sse(&format!("/workflows/{id}/logs")).await;
    assert_ids_increase(&logs);
    let lines: Vec<&str> = logs.iter().filter_map(|e| e.data["line"].as_str()).collect();
    assert_eq!(lines, ["a@sd-0: install ok", "b@sd-0: install ok"]);
}

/// A task still running when the grace is over is stopped with its
/// process group; the run is checkpointed and the task runs again after
/// the restart, with the same idempotency key.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_outliving_the_shutdown_grace_is_stopped_and_runs_again_after_the_restart() {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "sg", 1, &["a"], "");
    control(&ctl, "install", "hang");
    let mut s = Server::start(dir.path(), &["--shutdown-grace", "1"]);
    let id = s.submit(&file).await;
    let deadline = Instant::now() + LIMIT;
    // behave.sh writes the child's pid file last.
    while !std::fs::read_to_string(ctl.join("hang.a@sg-0.child")).is_ok_and(|t| t.ends_with('\n')) {
        assert!(Instant::now() < deadline, "the script did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = |f: &str| -> i32 {
        std::fs::read_to_string(ctl.join(f))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    };
    let pids = [pid("hang.a@sg-0.pid"), pid("hang.a@sg-0.child")];
    let started = Instant::now();
    assert_eq!(s.terminate().code(), Some(0));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "the grace was not given: {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "the hung task held the shutdown: {took:?}"
    );
    drop(s);
    let alive = |p: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "the task's processes outlived the server: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let store = drover_state::Store::open_read_only(&dir.path().join("state.db")).expect("state");
    assert_eq!(store.run(&id).expect("run").status, drover_state::RunStatus::Aborted);
    drop(store);

    std::fs::remove_file(ctl.join("install")).expect("control");
    let s = Server::start(dir.path(), &[]);
    let st = s.wait_end(&id).await;
    assert_eq!(st["status"], "succeeded", "{st:#}");
    let runs = execution_lines(&ctl);
    let results: Vec<&str> = runs.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(results, ["hang", "ok"]);
    assert_eq!(runs[0][4], runs[1][4], "the same idempotency key: {runs:?}");
    assert_eq!(runs[0][4], format!("{id}/install/a@sg-0"));
}

/// A run an operator paused is still paused after a graceful restart: the
/// server takes it up, and it waits for a resume.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_run_stays_paused_across_a_graceful_restart() {
    paused_run_across_a_restart(|s| assert_eq!(s.terminate().code(), Some(0))).await;
}

/// The same when the server dies (SIGKILL) while the run is paused.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_run_stays_paused_after_the_server_is_killed() {
    paused_run_across_a_restart(|s| {
        s.child.kill().expect("SIGKILL");
        s.child.wait().expect("reaped");
    })
    .await;
}

/// An operator resumes a paused run while a restarted server takes it up
/// (`drover batch resume` just after a restart): the run must execute
/// once, not twice at the same time.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_resumed_while_the_server_takes_it_up_runs_once() {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "rw", 1, &["a", "b"], "");
    control(&ctl, "install.a", "sleep 0.3");
    control(&ctl, "install.b", "sleep 0.5");
    let mut s = Server::start(dir.path(), &[]);
    let id = s.submit(&file).await;
    s.wait_task(&id, "install/a@rw-0", "running").await;
    let (code, body) = s.command(&id, "pause").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    s.wait_status(&id, "paused").await;
    s.wait_task(&id, "install/a@rw-0", "succeeded").await;
    s.child.kill().expect("SIGKILL");
    s.child.wait().expect("reaped");
    drop(s);

    let s = Server::start(dir.path(), &[]);
    // Resume as soon as the server accepts it: while the run waits in the
    // queue it is refused ("queued already"); then it must be accepted
    // exactly once.
    let deadline = Instant::now() + LIMIT;
    let mut refusals = Vec::new();
    let accepted = loop {
        let (code, body) = s.command(&id, "resume").await;
        if code == StatusCode::ACCEPTED {
            break body;
        }
        assert_error(&(code, body.clone()), StatusCode::CONFLICT, "conflict", &[&id]);
        refusals.push(body["message"].as_str().unwrap_or("").to_string());
        assert!(Instant::now() < deadline, "resume never accepted: {refusals:?}");
    };
    assert_eq!(s.wait_end(&id).await["status"], "succeeded", "{accepted}");
    s.wait_idle().await;
    let journal = s.journal(&id).await;
    let kinds: Vec<(&str, &str)> = journal.iter().map(|e| (e.kind(), e.node())).collect();
    let starts = kinds.iter().filter(|k| k.0 == "run_started").count();
    assert_eq!(
        starts, 2,
        "started once, resumed once (resume answered {accepted}): {kinds:?}"
    );
    let runs = executions(&ctl);
    assert_eq!(
        runs,
        [
            ("ok".to_string(), "install".to_string(), "a@rw-0".to_string()),
            ("ok".to_string(), "install".to_string(), "b@rw-0".to_string()),
        ],
        "each script once (resume answered {accepted}); journal: {kinds:?}"
    );
}

/// Pause a run after its first install, `stop` the server, start it again:
/// the run must come back paused, with its second install not started.
async fn paused_run_across_a_restart(stop: impl FnOnce(&mut Server)) {
    let dir = tempdir();
    let (file, ctl) = workflow(dir.path(), "pp", 1, &["a", "b"], "");
    control(&ctl, "install.a", "sleep 0.5");
    control(&ctl, "install.b", "sleep 1");
    let mut s = Server::start(dir.path(), &[]);
    let id = s.submit(&file).await;
    s.wait_task(&id, "install/a@pp-0", "running").await;
    let (code, body) = s.command(&id, "pause").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    s.wait_status(&id, "paused").await;
    let st = s.wait_task(&id, "install/a@pp-0", "succeeded").await;
    assert_eq!(st["status"], "paused");
    assert_eq!(
        task_of(&st, "install/b@pp-0")["attempts"],
        0,
        "held by the pause: {st:#}"
    );
    stop(&mut s);
    drop(s);

    let s = Server::start(dir.path(), &[]);
    // Until the server takes the run up, its status is the stored one.
    s.wait_running(1).await;
    let st = s
        .wait_until(&id, "taken up", |st| {
            st["status"] == "paused"
                || FINAL.contains(&st["status"].as_str().unwrap_or(""))
                || task_of(st, "install/b@pp-0")["status"] == "succeeded"
        })
        .await;
    assert_eq!(
        st["status"], "paused",
        "the operator's pause was lost over the restart: {st:#}"
    );
    let journal = s.journal(&id).await;
    let kinds: Vec<(&str, &str)> = journal.iter().map(|e| (e.kind(), e.node())).collect();
    assert_eq!(
        task_of(&st, "install/b@pp-0")["attempts"],
        0,
        "b started after the restart although the run was paused: {kinds:?}"
    );
    let (code, body) = s.command(&id, "resume").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(s.wait_end(&id).await["status"], "succeeded");
    let runs = executions(&ctl);
    let journal = s.journal(&id).await;
    let kinds: Vec<(&str, &str)> = journal.iter().map(|e| (e.kind(), e.node())).collect();
    assert_eq!(
        runs,
        [
            ("ok".to_string(), "install".to_string(), "a@pp-0".to_string()),
            ("ok".to_string(), "install".to_string(), "b@pp-0".to_string()),
        ],
        "each script once; journal: {kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_nothing_running_exits_at_once_and_queued_runs_survive_a_restart() {
    let dir = tempdir();
    let (slow, slow_ctl) = workflow(dir.path(), "sa", 1, &["a"], "");
    control(&slow_ctl, "install", "sleep 1");
    let (quick, quick_ctl) = workflow(dir.path(), "sb", 1, &["a"], "");
    let mut s = Server::start(dir.path(), &["--max-running", "1", "--shutdown-grace", "10"]);
    let first = s.submit(&slow).await;
    s.wait_task(&first, "install/a@sa-0", "running").await;
    let queued = s.submit(&quick).await;
    assert_eq!(s.status(&queued).await["status"], "queued");
    let started = Instant::now();
    assert_eq!(s.terminate().code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(9), "{:?}", started.elapsed());
    drop(s);
    assert!(
        executions(&quick_ctl).is_empty(),
        "a queued run started during shutdown"
    );

    let s = Server::start(dir.path(), &["--max-running", "1"]);
    assert_eq!(s.wait_end(&first).await["status"], "succeeded");
    assert_eq!(s.wait_end(&queued).await["status"], "succeeded");
    assert_eq!(executions(&slow_ctl).len(), 1);
    assert_eq!(executions(&quick_ctl).len(), 1);
}

// ---------------------------------------------------------------------
// 14. secrets

/// The plaintext values of workflows/secrets/demo.sops.yaml (see
/// tests/run.rs, which checks them against the real sops tool).
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

/// GET `path`, keeping the body in `bodies`.
async fn fetch(s: &Server, bodies: &mut Vec<(String, String)>, path: &str) -> String {
    let resp = s.request(Method::GET, path).send().await.expect("request");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    let text = resp.text().await.expect("body");
    bodies.push((path.to_string(), text.clone()));
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn no_api_response_or_server_log_shows_a_secret() {
    let dir = tempdir();
    let s = Server::start_with(dir.path(), &["--log-level", "debug"], &[], &repo());
    let mut bodies: Vec<(String, String)> = Vec::new();
    let workflow = repo().join("workflows/secrets.k");
    let (code, body) = s
        .post("/workflows/batch", json!({"path": workflow, "dry_run": true}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    bodies.push(("dry run".into(), body.to_string()));
    let id = s.submit(&workflow).await;
    let st = s.wait_end(&id).await;
    assert_eq!(st["status"], "succeeded", "{st:#}");
    s.wait_idle().await;
    let conf =
        std::fs::read_to_string(dir.path().join("providers/local/hosts/app-1/etc/app/app.conf")).expect("app.conf");
    assert!(
        conf.contains("Zq8-velvet-Harbor-41"),
        "the secrets reached the server: {conf}"
    );

    fetch(&s, &mut bodies, &format!("/workflows/{id}/status")).await;
    fetch(&s, &mut bodies, &format!("/workflows/{id}/events")).await;
    let logs = fetch(&s, &mut bodies, &format!("/workflows/{id}/logs")).await;
    assert!(
        logs.contains("database_url = postgres://****:****@****/app"),
        "install.sh prints the configuration, masked:\n{logs}"
    );
    assert!(logs.contains("api_token = ****"), "{logs}");
    fetch(&s, &mut bodies, &format!("/workflows/{id}/metrics")).await;
    fetch(&s, &mut bodies, "/workflows").await;
    fetch(&s, &mut bodies, "/metrics").await;
    let (code, body) = s.command(&id, "rollback").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    bodies.push(("rollback".into(), body.to_string()));
    s.wait_status(&id, "rolled_back").await;
    fetch(&s, &mut bodies, &format!("/workflows/{id}/status")).await;
    fetch(&s, &mut bodies, &format!("/workflows/{id}/events")).await;
    fetch(&s, &mut bodies, &format!("/workflows/{id}/logs")).await;

    for (what, body) in &bodies {
        for v in DEMO_SECRETS {
            assert!(!body.contains(v), "{v} in the answer to {what}:\n{body}");
        }
    }
    // The server's own logs (stdout and its log directory) and the run's
    // files next to the state.
    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    let mut checked = 0;
    for f in files
        .iter()
        .filter(|f| !f.starts_with(dir.path().join("providers/local/hosts")))
    {
        let content = String::from_utf8_lossy(&std::fs::read(f).expect("readable")).to_string();
        for v in DEMO_SECRETS {
            assert!(!content.contains(v), "{v} found in {}", f.display());
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} files checked: {files:?}");
}
