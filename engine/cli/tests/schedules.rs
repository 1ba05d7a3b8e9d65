//! Schedules of a real `drover serve` (the binary): a schedule every 2 s
//! fires once per slot; a server killed (SIGKILL) inside a slot and
//! started again fires no slot twice, and its missed-run policy decides
//! the slots that passed while it was down; overlap `skip` skips the
//! slots of a run that is still going. And the CLI over it.
//!
//! Which run a slot fired is read two ways and compared: the schedule's
//! slot records (`GET /schedules/{id}`) and each run's own audit
//! (`actions` of its status: "schedule S slot T (MS)").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

mod common;

use common::server::*;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Create a schedule of the workflow `file` (by its path: the test's
/// directory is a workflows directory; the test token is an admin's).
async fn add(s: &Server, file: &Path, overlap: &str, missed: &str) -> String {
    let (code, body) = s
        .post(
            "/schedules",
            json!({
                "workflow": {"path": file.display().to_string()},
                "cron": "*/2 * * * * *",
                "timezone": "Europe/Helsinki",
                "overlap": overlap,
                "missed": missed,
            }),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body:#}");
    body["id"].as_str().expect("id").to_string()
}

/// The schedule's slot records, oldest first.
async fn slots(s: &Server, id: &str) -> Vec<Value> {
    let (code, body) = s.get(&format!("/schedules/{id}")).await;
    assert_eq!(code, StatusCode::OK, "{body:#}");
    let mut v = body["slots"].as_array().expect("slots").clone();
    v.reverse();
    v
}

/// Every run of the server started by schedule `id`, by the slot its own
/// audit names; a slot named by two runs fails the test.
async fn runs_by_slot(s: &Server, id: &str) -> BTreeMap<i64, String> {
    let (code, list) = s.get("/workflows").await;
    assert_eq!(code, StatusCode::OK, "{list:#}");
    let mut out = BTreeMap::new();
    for run in list["runs"].as_array().expect("runs") {
        let run_id = run["run_id"].as_str().expect("run_id");
        let status = s.status(run_id).await;
        for a in status["actions"].as_array().expect("actions") {
            if a["by"] == format!("schedule {id}") {
                assert_eq!(a["action"], "schedule");
                let detail = a["detail"].as_str().expect("detail");
                let ms: i64 = detail
                    .rsplit_once('(')
                    .and_then(|(_, rest)| rest.strip_suffix(')'))
                    .and_then(|m| m.parse().ok())
                    .unwrap_or_else(|| panic!("no slot in {detail:?}"));
                if let Some(other) = out.insert(ms, run_id.to_string()) {
                    panic!("slot {ms} fired twice: runs {other} and {run_id}");
                }
            }
        }
    }
    out
}

/// The fired slot records and the runs' own audit agree, one run per
/// slot; the fired slots.
async fn fired_checked(s: &Server, id: &str) -> BTreeSet<i64> {
    let records = slots(s, id).await;
    let by_run = runs_by_slot(s, id).await;
    let fired: BTreeMap<i64, String> = records
        .iter()
        .filter(|r| r["outcome"] == "fired")
        .map(|r| {
            (
                r["slot_ms"].as_i64().expect("slot_ms"),
                r["run_id"].as_str().expect("a fired slot names its run").to_string(),
            )
        })
        .collect();
    assert_eq!(fired, by_run, "slot records and runs disagree: {records:#?}");
    let all: Vec<i64> = records
        .iter()
        .map(|r| r["slot_ms"].as_i64().expect("slot_ms"))
        .collect();
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "a slot recorded twice: {records:#?}");
    fired.into_keys().collect()
}

/// Wait until the schedule has fired `n` slots.
async fn wait_fired(s: &Server, id: &str, n: usize) {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let fired = slots(s, id).await.iter().filter(|r| r["outcome"] == "fired").count();
        if fired >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "schedule {id}: {fired} of {n} slots fired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_every_two_seconds_fires_once_per_slot() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "tick", 1, &["a"], "");
    let s = Server::start(dir.path(), &[]);
    let id = add(&s, &file, "queue", "skip").await;
    let (_, shown) = s.get(&format!("/schedules/{id}")).await;
    assert!(
        shown["next_run_ms"].as_i64().is_some_and(|n| n > now_ms() - 1000),
        "{shown:#}"
    );
    assert!(
        shown["next_run"]
            .as_str()
            .is_some_and(|n| n.ends_with("+02:00") || n.ends_with("+03:00")),
        "shown in its time zone: {shown:#}"
    );
    let started = now_ms();
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let (code, paused) = s.post(&format!("/schedules/{id}/pause"), json!({})).await;
    assert_eq!(code, StatusCode::OK, "{paused:#}");
    assert_eq!(paused["paused"], true);
    assert!(paused["next_run"].is_null(), "{paused:#}");
    let fired = fired_checked(&s, &id).await;
    assert!(
        (4..=6).contains(&fired.len()),
        "{} slots fired in 10.5 s: {fired:?}",
        fired.len()
    );
    for slot in &fired {
        assert_eq!(slot % 2_000, 0, "slots fall on even seconds: {fired:?}");
        assert!(*slot > started - 2_000 && *slot <= started + 10_500, "{fired:?}");
    }
    // Every slot is accounted for: fired, or counted in a record that
    // stands for several (the loop was busy).
    let records = slots(&s, &id).await;
    let counted: i64 = records.iter().map(|r| r["count"].as_i64().expect("count")).sum();
    let first = *fired.first().expect("fired");
    let last = records.last().and_then(|r| r["slot_ms"].as_i64()).expect("last");
    assert_eq!(counted, (last - first) / 2_000 + 1, "{records:#?}");
    // The schedule shows its last run and that run's status.
    let (_, shown) = s.get(&format!("/schedules/{id}")).await;
    let last_run = shown["last_run"]["run_id"].as_str().expect("last_run");
    assert_eq!(shown["last_run"]["slot_ms"].as_i64(), fired.last().copied());
    assert!(shown["last_status"].is_string(), "{shown:#}");
    let st = s.status(last_run).await;
    assert_eq!(shown["last_status"], st["status"]);
    assert_eq!(st["submitted_by"], format!("schedule {id}"), "{st:#}");
    // Paused: nothing more fires.
    let before = slots(&s, &id).await.len();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(slots(&s, &id).await.len(), before, "a paused schedule fired");
    let (code, _) = s
        .request(Method::DELETE, &format!("/schedules/{id}"))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .expect("delete");
    assert_eq!(code, StatusCode::OK);
    let (code, _) = s.get(&format!("/schedules/{id}")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_inside_a_slot_fires_no_slot_twice_and_applies_the_missed_run_policy() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "tock", 1, &["a"], "");
    let mut s = Server::start(dir.path(), &[]);
    let skip = add(&s, &file, "queue", "skip").await;
    let once = add(&s, &file, "queue", "run-once").await;
    wait_fired(&s, &skip, 1).await;
    wait_fired(&s, &once, 1).await;
    // Kill it 30 ms after a slot: while that slot is being fired.
    let (_, shown) = s.get(&format!("/schedules/{skip}")).await;
    let next = shown["next_run_ms"].as_i64().expect("next_run_ms");
    let wait = u64::try_from(next + 30 - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    s.child.kill().expect("SIGKILL");
    s.child.wait().expect("wait");
    let killed = now_ms();
    // Down for over two slots.
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let restarted = now_ms();
    let s = Server::start(dir.path(), &[]);
    let up = now_ms();
    wait_fired(&s, &skip, fired_count(&s, &skip).await + 1).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    for id in [&skip, &once] {
        fired_checked(&s, id).await;
    }
    // skip: the slots while down are one `missed` record; none ran.
    let records = slots(&s, &skip).await;
    let missed: Vec<&Value> = records.iter().filter(|r| r["outcome"] == "missed").collect();
    assert_eq!(missed.len(), 1, "{records:#?}");
    assert!(missed[0]["count"].as_i64().is_some_and(|c| c >= 2), "{records:#?}");
    let during = |r: &&Value| r["slot_ms"].as_i64().is_some_and(|t| t > killed && t <= restarted);
    assert!(
        !records.iter().filter(during).any(|r| r["outcome"] == "fired"),
        "a slot fired while the server was down: {records:#?}"
    );
    // run-once: exactly one run for the slots while down.
    let records = slots(&s, &once).await;
    let for_missed: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("missed while the server was down"))
        })
        .collect();
    assert_eq!(for_missed.len(), 1, "{records:#?}");
    assert_eq!(for_missed[0]["outcome"], "fired", "{records:#?}");
    assert!(for_missed[0]["count"].as_i64().is_some_and(|c| c >= 2), "{records:#?}");
    let at = for_missed[0]["slot_ms"].as_i64().expect("slot_ms");
    assert!(at > killed - 2_000 && at <= up, "{records:#?}");
    let fired_while_down = records
        .iter()
        .filter(during)
        .filter(|r| r["outcome"] == "fired")
        .count();
    assert!(fired_while_down <= 1, "{records:#?}");
}

async fn fired_count(s: &Server, id: &str) -> usize {
    slots(s, id).await.iter().filter(|r| r["outcome"] == "fired").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn overlap_skip_skips_the_slots_of_a_run_still_going() {
    let dir = tempdir();
    let (file, control_dir) = workflow(dir.path(), "slow", 1, &["a"], "");
    // The install takes 5 s: two or three slots pass during it.
    control(&control_dir, "install", "sleep 5");
    let s = Server::start(dir.path(), &[]);
    let id = add(&s, &file, "skip", "skip").await;
    wait_fired(&s, &id, 1).await;
    let first = slots(&s, &id).await[0]["run_id"].as_str().expect("run").to_string();
    let ended = s.wait_end(&first).await;
    let ended_at = ended["updated_at_ms"].as_i64().expect("updated_at_ms");
    wait_fired(&s, &id, 2).await;
    let records = slots(&s, &id).await;
    let fired = fired_checked(&s, &id).await;
    let skipped: Vec<&Value> = records.iter().filter(|r| r["outcome"] == "skipped").collect();
    assert!(!skipped.is_empty(), "{records:#?}");
    let first_slot = *fired.first().expect("fired");
    for r in &skipped {
        let t = r["slot_ms"].as_i64().expect("slot_ms");
        assert!(t > first_slot && t <= ended_at, "skipped outside the run: {records:#?}");
        assert!(r["run_id"].is_null(), "{records:#?}");
    }
    // Not queued: the second run came after the first ended.
    let (_, list) = s.get("/workflows").await;
    let runs = list["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), fired.len(), "{list:#}");
    assert!(
        runs.iter()
            .all(|r| r["run_id"] == first.as_str() || r["created_at_ms"].as_i64() >= Some(ended_at)),
        "{list:#}"
    );
    let text = s
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("drover_schedule_skipped_total{reason=\"overlap\"}"),
        "{text}"
    );
    assert!(text.contains("drover_schedule_fired_total"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_adds_lists_shows_pauses_resumes_and_deletes_and_roles_are_enforced() {
    let dir = tempdir();
    let (file, _) = workflow(dir.path(), "cli", 1, &["a"], "");
    let s = Server::start(dir.path(), &[]);
    let drover = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
            .env("DROVER_API", &s.base)
            .env("DROVER_TOKEN", s.token.as_deref().expect("token"))
            .args(args)
            .output()
            .expect("drover");
        (out.status.code(), common::text(&out))
    };
    let f = file.display().to_string();
    let (code, out) = drover(&[
        "schedule",
        "add",
        &f,
        "--cron",
        "0 3 * * *",
        "--timezone",
        "Europe/Helsinki",
        "--missed",
        "run-once",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let id = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("schedule "))
        .and_then(|l| l.strip_suffix(" added"))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert!(out.contains("next run:  ") && out.contains("T03:00:00+0"), "{out}");
    assert!(out.contains("missed run-once"), "{out}");
    let (code, out) = drover(&["schedule", "list"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&id) && out.contains("0 3 * * *") && out.contains("Europe/Helsinki"),
        "{out}"
    );
    let (code, out) = drover(&["schedule", "pause", &id]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = drover(&["schedule", "show", &id]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("paused:    yes") && out.contains("next run:  -"), "{out}");
    let (code, out) = drover(&["schedule", "resume", &id]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("resumed; next run 20"), "{out}");
    let (code, out) = drover(&["schedule", "add", &f, "--cron", "61 * * * *"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("cron \"61 * * * *\""), "{out}");
    let (code, out) = drover(&[
        "schedule",
        "add",
        &f,
        "--cron",
        "* * * * *",
        "--timezone",
        "Nowhere/Land",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("timezone \"Nowhere/Land\""), "{out}");

    // Roles: a viewer reads and is refused changes; an operator may
    // schedule a source but not a path.
    let token = |name: &str, role: &str| {
        let (code, out) = drover(&["token", "create", name, "--role", role]);
        assert_eq!(code, Some(0), "{out}");
        out.lines().next().expect("token").trim().to_string()
    };
    let viewer = token("v", "viewer");
    let operator = token("o", "operator");
    let as_ = |t: &str, m: Method, p: &str| s.client.request(m, s.url(p)).bearer_auth(t.to_string());
    let r = as_(&viewer, Method::GET, "/schedules").send().await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let r = as_(&viewer, Method::POST, &format!("/schedules/{id}/pause"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let by_path = json!({"workflow": {"path": f}, "cron": "0 3 * * *"});
    let r = as_(&operator, Method::POST, "/schedules")
        .json(&by_path)
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let source = std::fs::read_to_string(&file).expect("source");
    let by_source = json!({"workflow": {"source": source}, "cron": "0 3 * * *"});
    let r = as_(&operator, Method::POST, "/schedules")
        .json(&by_source)
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let r = as_(&operator, Method::PATCH, &format!("/schedules/{id}"))
        .json(&json!({"cron": "*/5 * * * *", "overlap": "queue"}))
        .send()
        .await
        .expect("patch");
    let (code, patched) = json_of(r).await;
    assert_eq!(code, StatusCode::OK, "{patched:#}");
    assert_eq!(patched["cron"], "*/5 * * * *");
    assert_eq!(patched["overlap"], "queue");
    assert_eq!(patched["missed"], "run-once");

    let (code, out) = drover(&["schedule", "delete", &id]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = drover(&["schedule", "show", &id]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&id), "{out}");
    // Who did what is in the audit trail, the viewer's refusal included.
    let (_, audit) = s.get("/audit").await;
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or("").to_string(),
                e["actor"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for want in [
        "schedule_create",
        "schedule_pause",
        "schedule_resume",
        "schedule_update",
        "schedule_delete",
    ] {
        assert!(actions.iter().any(|(a, _)| a == want), "{want}: {actions:?}");
    }
    assert!(
        actions.iter().any(|(a, who)| a == "schedule_pause" && who == "v"),
        "{actions:?}"
    );
}
