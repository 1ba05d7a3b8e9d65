//! The fleet endpoints of `drover serve` (`/fleet/*`) and `drover batch
//! exec`, end to end: a real server, real sshd hosts (drover-testkit),
//! the fleet file sent as source as `drover batch` sends it.

// Shared with existing_hosts.rs, which uses more of it.
#[allow(dead_code)]
#[path = "existing_hosts/support.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover_testkit::TestFleet;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::*;

/// How long anything may take before a test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(60);

/// A site with `fleet`'s hosts trusted, its fleet file and a server on it.
struct Setup {
    site: Site,
    server: Server,
    /// The fleet file's KCL source.
    source: String,
    file: PathBuf,
    token: String,
    http: reqwest::Client,
}

/// The fleet file: `inv.k`'s servers and groups, as the `workflow` value
/// of one self-contained file (a source sent to the server cannot import
/// files of its own directory). Hosts 1 to 4 are tagged `web`, the last
/// `db`; the first two are in group `edge` (declared with members).
fn setup(fleet: &TestFleet) -> Setup {
    let site = Site::new();
    site.trust(fleet);
    let ssh = Ssh::operator(fleet);
    let hosts = fleet.hosts();
    let servers: Vec<Srv> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut s = Srv::on(h, &ssh);
            s.tags = vec![if i + 1 < hosts.len() { "web" } else { "db" }.to_string()];
            s
        })
        .collect();
    let edge = format!(
        "drover.GroupDef {{name = \"edge\", members = [{:?}, {:?}]}}",
        hosts[0].name(),
        hosts[1].name()
    );
    let inv = site.inventory(&servers, &edge);
    let mut source = std::fs::read_to_string(&inv).expect("inv.k");
    source.push_str(
        r#"
workflow = drover.WorkflowDef {
    name = "fleet"
    servers = inventory.servers
    groups = inventory.groups
    operations = [
        drover.OperationDef {
            id = "check-servers"
            type = "create"
            target = "server"
            timeout = 60
        }
    ]
}
"#,
    );
    let file = site.dir().join("fleet.k");
    std::fs::write(&file, &source).expect("fleet.k");
    let server = Server::start(&site, &site.state());
    let token = std::fs::read_to_string(site.state_dir().join("api-token"))
        .expect("the server's admin token")
        .trim()
        .to_string();
    Setup {
        site,
        server,
        source,
        file,
        token,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server.url))
            .bearer_auth(token)
            .timeout(LIMIT);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let code = resp.status();
        let text = resp.text().await.expect("body");
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, &self.token, Some(body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, &self.token, None).await
    }

    /// A token of `role`, created with the admin token.
    async fn token_of(&self, name: &str, role: &str) -> String {
        let (code, body) = self.post("/tokens", json!({"name": name, "role": role})).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        body["token"].as_str().expect("token").to_string()
    }

    /// Poll `GET /fleet/exec/{id}` until the run has ended.
    async fn exec_end(&self, id: &str) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let (code, view) = self.get(&format!("/fleet/exec/{id}")).await;
            assert_eq!(code, StatusCode::OK, "{view}");
            if ["succeeded", "failed", "cancelled"].contains(&view["status"].as_str().unwrap_or("")) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "exec {id} did not end within {LIMIT:?}: {view:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `drover batch ...` against the server.
    fn batch(&self) -> std::process::Command {
        let mut c = self.site.drover();
        c.env("DROVER_API", &self.server.url)
            .env("DROVER_TOKEN", &self.token)
            .arg("batch");
        c
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| {
            s.as_str()
                .map_or_else(|| s["hostname"].as_str().expect("hostname").to_string(), str::to_string)
        })
        .collect()
}

/// POST /fleet/select: tags and groups pick the servers they name; an
/// unknown group or tag is refused naming it; a path needs the admin role.
#[tokio::test(flavor = "multi_thread")]
async fn select_picks_servers_by_tag_and_group_and_names_what_does_not_exist() {
    let fleet = operator_fleet(5);
    let s = setup(&fleet);
    let all: Vec<String> = fleet.hosts().iter().map(|h| h.name().to_string()).collect();

    let (code, body) = s.post("/fleet/select", json!({"source": s.source})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(names(&body["servers"]), all);
    assert_eq!(body["count"], 5);

    let (code, body) = s
        .post(
            "/fleet/select",
            json!({"source": s.source, "selector": {"tags": ["web"]}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(names(&body["servers"]), all[..4].to_vec());
    assert_eq!(body["servers"][0]["tags"], json!(["web"]));
    assert_eq!(body["servers"][0]["provider"], "static");

    let (code, body) = s
        .post(
            "/fleet/select",
            json!({"source": s.source, "selector": {"groups": ["edge"]}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(names(&body["servers"]), all[..2].to_vec());
    assert_eq!(body["servers"][0]["groups"], json!(["edge"]));

    let (code, body) = s
        .post(
            "/fleet/select",
            json!({"source": s.source, "selector": {"criteria": [{"field": "hostname", "op": "in", "values": [all[4], all[2]]}]}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(names(&body["servers"]), vec![all[2].clone(), all[4].clone()]);

    // What does not exist is named, each problem listed.
    let (code, body) = s
        .post(
            "/fleet/select",
            json!({"source": s.source, "selector": {"groups": ["nosuch"], "tags": ["cache"]}}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "invalid_request", "{body}");
    let problems = body["problems"].to_string();
    assert!(problems.contains("\\\"nosuch\\\""), "names the group: {body}");
    assert!(problems.contains("\\\"cache\\\""), "names the tag: {body}");
    assert!(!problems.contains("operation exec"), "speaks of the selector: {body}");

    // A wrong file: its problems, located in `<source>`.
    let (code, body) = s
        .post(
            "/fleet/select",
            json!({"source": "import drover\nworkflow = drover.WorkflowDef {\n    name = 1\n}\n"}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "invalid_workflow", "{body}");
    assert!(body.to_string().contains("<source>"), "{body}");

    // A file that defines only an inventory (no workflow) serves too.
    let (code, body) = s
        .post(
            "/fleet/select",
            json!({"source": "import drover\n\ninventory = drover.Inventory {\n    servers = [drover.ServerDef {hostname = \"solo\", provider = \"static\", plan = \"small\", address = \"127.0.0.9\", tags = [\"web\"]}]\n    groups = [drover.GroupDef {name = \"one\", members = [\"solo\"]}]\n}\n", "selector": {"groups": ["one"]}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "an inventory-only source: {body}");
    assert_eq!(names(&body["servers"]), vec!["solo".to_string()]);

    // A viewer selects from a source, not by a path on the server.
    let viewer = s.token_of("watcher", "viewer").await;
    let (code, body) = s
        .call(
            reqwest::Method::POST,
            "/fleet/select",
            &viewer,
            Some(json!({"source": s.source, "selector": {"tags": ["db"]}})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(names(&body["servers"]), vec![all[4].clone()]);
    let (code, body) = s
        .call(
            reqwest::Method::POST,
            "/fleet/select",
            &viewer,
            Some(json!({"path": s.file})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("admin"), "{body}");
    // The admin may.
    let (code, body) = s.post("/fleet/select", json!({"path": s.file})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 5);
}

/// POST /fleet/exec on five hosts, one of which answers differently: the
/// run is queued (202), and GET /fleet/exec/{id} shows every server's
/// answer, the progress and the answers grouped, majority first. A viewer
/// may read it but not start one; the audit trail has the command.
#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_a_command_on_the_selected_servers_and_groups_the_answers() {
    let fleet = operator_fleet(5);
    let s = setup(&fleet);
    let all: Vec<String> = fleet.hosts().iter().map(|h| h.name().to_string()).collect();
    let odd = &all[3];
    let command = format!("if [ \"$(hostname)\" = {odd} ]; then echo other; echo oops >&2; exit 3; fi; echo same");

    let viewer = s.token_of("watcher", "viewer").await;
    let (code, body) = s
        .call(
            reqwest::Method::POST,
            "/fleet/exec",
            &viewer,
            Some(json!({"source": s.source, "command": "true"})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("operator"), "{body}");

    let (code, body) = s
        .post(
            "/fleet/exec",
            json!({"source": s.source, "command": command, "parallel": 5}),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued", "{body}");
    assert_eq!(names(&body["servers"]), all);
    let id = body["run_id"].as_str().expect("run_id").to_string();

    let view = s.exec_end(&id).await;
    assert_eq!(view["status"], "failed", "one server exited 3: {view:#}");
    assert_eq!(view["command"], command.as_str());
    assert_eq!(view["submitted_by"], "local-admin", "{view:#}");
    assert_eq!(
        view["progress"],
        json!({"total": 5, "done": 5, "failed": 1, "percent": 100}),
        "{view:#}"
    );
    let answers = view["servers"].as_array().expect("servers");
    assert_eq!(answers.len(), 5);
    for a in answers {
        let host = a["server"].as_str().expect("server");
        if host == odd {
            assert_eq!(
                (&a["status"], &a["exit_code"], &a["stdout"], &a["stderr"]),
                (&json!("failed"), &json!(3), &json!("other\n"), &json!("oops\n")),
                "{a}"
            );
        } else {
            assert_eq!(
                (&a["status"], &a["exit_code"], &a["stdout"], &a["stderr"]),
                (&json!("succeeded"), &json!(0), &json!("same\n"), &json!("")),
                "{a}"
            );
        }
    }
    let groups = view["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{view:#}");
    let majority: Vec<String> = all.iter().filter(|h| *h != odd).cloned().collect();
    assert_eq!(names(&groups[0]["servers"]), majority);
    assert_eq!(groups[0]["outcome"], "exit 0");
    assert_eq!(groups[0]["stdout"], "same\n");
    assert_eq!(names(&groups[1]["servers"]), vec![odd.clone()]);
    assert_eq!(groups[1]["hosts"], odd.as_str());
    assert_eq!(groups[1]["outcome"], "exit 3");

    // A viewer reads it; it is a run like any other.
    let (code, body) = s
        .call(reqwest::Method::GET, &format!("/fleet/exec/{id}"), &viewer, None)
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, body) = s.get(&format!("/workflows/{id}/status")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "failed");
    // Who ran what is in the audit trail, the refused viewer too.
    let (code, body) = s.get("/audit?action=exec").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let entries = body["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["run_id"] == id.as_str()
            && e["actor"] == "local-admin"
            && e["outcome"] == "ok"
            && e["detail"].as_str().unwrap_or("").contains("exit 3")),
        "{body:#}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["actor"] == "watcher" && e["outcome"].as_str().unwrap_or("").contains("403")),
        "{body:#}"
    );

    // A run that is not an exec, and no run at all: 404.
    let (code, body) = s.get("/fleet/exec/no-such-run").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    let (code, body) = s.post("/workflows/batch", json!({"source": s.source})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let workflow_run = body["run_id"].as_str().expect("run_id");
    let (code, body) = s.get(&format!("/fleet/exec/{workflow_run}")).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("not an exec"), "{body}");

    // A wrong request names what is wrong.
    let (code, body) = s
        .post("/fleet/exec", json!({"source": s.source, "command": "  "}))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("command"), "{body}");
    let (code, body) = s
        .post(
            "/fleet/exec",
            json!({"source": s.source, "command": "true", "rolling": {"batch": 1, "max_fail": "200%"}}),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("rolling.max_fail"),
        "{body}"
    );
}

/// `drover batch exec --watch` prints the answers grouped as `drover exec`
/// does and exits 0 when every server's command exited 0, 4 when one did
/// not; without --watch it prints the run and returns at once.
#[test]
fn batch_exec_watch_prints_the_grouped_answers_and_exits_with_the_exec() {
    let fleet = operator_fleet(3);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let s = setup(&fleet);
    let all: Vec<String> = fleet.hosts().iter().map(|h| h.name().to_string()).collect();

    let o = wait_output(
        s.batch()
            .args(["exec", "--tag", "web", "--watch"])
            .arg(&s.file)
            .args(["--", "echo", "hello"]),
        LIMIT,
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let hosts = drover_exec::fleet::hostlist(&all[..2]);
    assert!(
        out.contains(&format!("==> {hosts} (2 servers): exit 0\n    hello\n")),
        "{out}"
    );
    assert!(out.contains("2 servers: 2 ok"), "{out}");

    let o = wait_output(
        s.batch().args(["exec", "--watch"]).arg(&s.file).args([
            "--",
            &format!("test \"$(hostname)\" != {} || exit 7; echo fine", all[2]),
        ]),
        LIMIT,
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    let first = out.find(&format!("==> {hosts} (2 servers): exit 0\n    fine\n"));
    let second = out.find(&format!("==> {} (1 server): exit 7\n    (no output)\n", all[2]));
    assert!(
        first.is_some() && second.is_some() && first < second,
        "majority first:\n{out}"
    );
    assert!(out.contains("3 servers: 2 ok, 1 failed (1 exit 7)"), "{out}");

    // Without --watch: the run id, at once; the exec goes on.
    let o = wait_output(s.batch().args(["exec"]).arg(&s.file).args(["--", "true"]), LIMIT);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let id = out.split_whitespace().nth(1).expect("run id").to_string();
    assert!(out.contains("queued: exec on"), "{out}");
    let view = rt.block_on(s.exec_end(&id));
    assert_eq!(view["status"], "succeeded", "{view:#}");

    // A selector naming what does not exist: refused, exit 1, named.
    let o = wait_output(
        s.batch()
            .args(["exec", "--group", "nosuch"])
            .arg(&s.file)
            .args(["--", "true"]),
        LIMIT,
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("nosuch"), "{out}");
}

/// Snapshots and drift over the API: a snapshot of a file (in each host's
/// own /etc/drover: the hosts share the login user's home) and a command
/// on three hosts, one host's file changed afterwards, drift against the
/// snapshot's name lists that host's file and command only. A viewer
/// lists snapshots but does not read their contents.
#[tokio::test(flavor = "multi_thread")]
async fn snapshots_record_servers_and_drift_lists_what_changed_since() {
    let fleet = operator_fleet(3);
    let s = setup(&fleet);
    let all: Vec<String> = fleet.hosts().iter().map(|h| h.name().to_string()).collect();
    let changed = &all[1];

    // Each host's file, written by an exec.
    let run = |command: String| {
        let s = &s;
        async move {
            let (code, body) = s
                .post(
                    "/fleet/exec",
                    json!({"source": s.source, "command": command, "become": true}),
                )
                .await;
            assert_eq!(code, StatusCode::ACCEPTED, "{body}");
            let view = s.exec_end(body["run_id"].as_str().expect("run_id")).await;
            assert_eq!(view["status"], "succeeded", "{view:#}");
        }
    };
    run("echo v1 > /etc/drover/app.conf".into()).await;

    let (code, body) = s
        .post(
            "/fleet/snapshots",
            json!({"source": s.source, "files": ["/etc/drover/app.conf"], "commands": ["cat /etc/drover/app.conf"], "name": "baseline"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "baseline");
    assert_eq!(names(&body["servers"]), all);
    assert_eq!(body["unreachable"], json!([]), "{body}");
    let id = body["id"].as_str().expect("id").to_string();

    // Names are unique.
    let (code, body) = s
        .post(
            "/fleet/snapshots",
            json!({"source": s.source, "files": ["/etc/drover/app.conf"], "name": "baseline"}),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("baseline"), "{body}");

    // What was found, by id or name, for an operator; a viewer lists.
    let (code, body) = s.get("/fleet/snapshots/baseline").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["id"], id.as_str());
    let first = &body["servers"][0];
    assert_eq!(first["server"], all[0].as_str(), "{body:#}");
    assert_eq!(first["files"]["/etc/drover/app.conf"]["text"], "v1\n", "{body:#}");
    assert_eq!(
        first["commands"]["cat /etc/drover/app.conf"]["stdout"], "v1\n",
        "{body:#}"
    );
    let viewer = s.token_of("watcher", "viewer").await;
    let (code, body) = s.call(reqwest::Method::GET, "/fleet/snapshots", &viewer, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["snapshots"][0]["id"], id.as_str(), "{body}");
    assert!(
        body["snapshots"][0].get("servers").is_none(),
        "no contents in the list: {body}"
    );
    let (code, body) = s
        .call(reqwest::Method::GET, &format!("/fleet/snapshots/{id}"), &viewer, None)
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let (code, body) = s
        .call(
            reqwest::Method::POST,
            "/fleet/drift",
            &viewer,
            Some(json!({"source": s.source, "against": "baseline"})),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");

    // No drift yet.
    let (code, body) = s
        .post("/fleet/drift", json!({"source": s.source, "against": "baseline"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        (body["servers"].clone(), body["changes"].clone()),
        (json!(3), json!([])),
        "{body:#}"
    );

    // One host's file changes: its file and its command's output drift.
    run(format!(
        "test \"$(hostname)\" != {changed} || echo v2 > /etc/drover/app.conf"
    ))
    .await;
    let (code, body) = s.post("/fleet/drift", json!({"source": s.source, "against": id})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["against"]["name"], "baseline");
    let changes = body["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 2, "{body:#}");
    for c in changes {
        assert_eq!(c["server"], changed.as_str(), "{c}");
        assert!(c["diff"].as_str().unwrap_or("").contains("-v1\n+v2\n"), "{c}");
    }
    assert_eq!(changes[0]["kind"], "file");
    assert_eq!(changes[0]["item"], "/etc/drover/app.conf");
    assert_eq!(changes[1]["kind"], "command");

    // Only the servers selected are compared.
    let (code, body) = s
        .post(
            "/fleet/drift",
            json!({"source": s.source, "against": "baseline", "selector": {"servers": [all[0]]}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        (body["servers"].clone(), body["changes"].clone()),
        (json!(1), json!([])),
        "{body:#}"
    );

    // An unknown snapshot is named.
    let (code, body) = s
        .post("/fleet/drift", json!({"source": s.source, "against": "nosuch"}))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("nosuch"), "{body}");
}
