//! Several `drover serve` instances on one PostgreSQL: they share the
//! queue, take over the runs of an instance that was killed or cut off
//! from the database, answer for every run, and pass commands on to the
//! instance executing a run.
//!
//! Everything is real: a PostgreSQL cluster the test starts itself
//! (`initdb` and `pg_ctl` as an unprivileged user, on a free loopback
//! port), sshd hosts the test starts itself (drover-testkit: own user,
//! port 2222, keys, namespaces), `drover serve` processes killed with
//! SIGKILL, and a TCP proxy between an instance and the database that the
//! test cuts to partition it.
//!
//! The lease's time to live is 2 s here ([`TTL`]); a run of a killed or
//! cut-off instance must move on elsewhere within [`TTL`] + [`BOUND`].

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::server::{FINAL, Server, Sse};
use common::{repo, test_home};
use drover_testkit::postgres::{Cluster, Proxy};
use drover_testkit::{KnownHostsStyle, Sudo, TestFleet};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The lease's time to live given to every instance.
const TTL: Duration = Duration::from_secs(2);
/// What a takeover may take beyond the lease's expiry: noticing it (a
/// claim at least every TTL/4), loading the run, its first journal write;
/// generous for a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(6);
/// The token every instance accepts (DROVER_TOKEN).
const TOKEN: &str = "cluster-test-admin-token-0123456789";
/// How long the whole of a test's runs may take.
const RUNS_WITHIN: Duration = Duration::from_secs(240);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A test's PostgreSQL, sshd hosts, home, control directory and
/// workflow files.
struct Site {
    dir: tempfile::TempDir,
    pg: Cluster,
    fleet: TestFleet,
}

impl Site {
    /// `hosts` sshd hosts and a PostgreSQL of the test's own.
    fn new(hosts: usize) -> Site {
        assert!(
            drover_testkit::postgres::available(),
            "PostgreSQL's server programs are not installed: run `make setup` (scripts/debian-packages.sh installs them)"
        );
        // Outside /tmp: the hosts have a /tmp of their own, and their
        // scripts write the control directory's log.
        let dir = tempfile::Builder::new()
            .prefix("drover-cluster-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let pg = Cluster::start().expect("a PostgreSQL cluster of the test's own");
        let fleet = TestFleet::builder()
            .hosts(hosts)
            .port(2222)
            .sudo(Sudo::All)
            .start()
            .unwrap_or_else(|e| panic!("cannot start {hosts} test hosts: {e:#}"));
        let site = Site { dir, pg, fleet };
        // The home: the repository's schemas and static provider, the
        // deterministic test taskservs (behave.sh).
        let home = site.home();
        std::fs::create_dir_all(home.join("providers")).expect("home");
        symlink(&repo().join("schemas"), &home.join("schemas"));
        symlink(&repo().join("providers/static"), &home.join("providers/static"));
        symlink(&test_home().join("taskservs"), &home.join("taskservs"));
        std::fs::create_dir_all(site.control()).expect("control");
        site
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn home(&self) -> PathBuf {
        self.path().join("home")
    }

    /// behave.sh's control directory.
    fn control(&self) -> PathBuf {
        self.path().join("control")
    }

    /// Every install of every run sleeps this long.
    fn installs_take(&self, secs: f64) {
        std::fs::write(self.control().join("install"), format!("sleep {secs}")).expect("control");
    }

    /// `<name>.k`: every host checked (static provider), then taskservs
    /// a and b installed on each, over SSH as the fleet's user with sudo.
    fn workflow(&self, name: &str, extra: &str) -> PathBuf {
        let mut servers = String::new();
        for h in self.fleet.hosts() {
            servers.push_str(&format!(
                r#"        drover.ServerDef {{
            hostname = "{}"
            provider = "static"
            plan = "small"
            address = "{}"
            ssh = drover.SshAccess {{user = "{}", port = 2222, key_file = "{}", become = "sudo"}}
            taskservs = ["a", "b"]
        }}
"#,
                h.name(),
                h.address(),
                self.fleet.user(),
                self.fleet.client_key().display()
            ));
        }
        let text = format!(
            r#"import drover

workflow = drover.WorkflowDef {{
    name = "{name}"
    max_parallel = 3
    variables = {{CONTROL = "{control}"}}
    servers = [
{servers}    ]
    operations = [
        drover.OperationDef {{id = "check", type = "create", target = "server", timeout = 60}}
        drover.OperationDef {{id = "install", type = "create", target = "taskserv", depends_on = ["check"], timeout = 60}}
    ]
{extra}
}}
"#,
            control = self.control().display()
        );
        let file = self.path().join(format!("{name}.k"));
        std::fs::write(&file, text).expect("workflow");
        file
    }

    /// Instance `n` on the database at `url` (the cluster's, or a
    /// proxy's), with data of its own.
    fn instance(&self, n: usize, url: &str, extra: &[&str]) -> Server {
        let dir = self.path().join(format!("instance-{n}"));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("instance dir");
        self.fleet
            .write_known_hosts(&data.join("known_hosts"), KnownHostsStyle::Plain)
            .expect("known_hosts");
        let ttl = format!("{}", TTL.as_secs_f64());
        let mut args = vec![
            "--state",
            url,
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--lease-ttl",
            &ttl,
            "--workflows-dir",
            self.path().to_str().expect("utf-8 path"),
            "--shutdown-grace",
            "2",
        ];
        args.extend_from_slice(extra);
        Server::start_with(&dir, &args, &[("DROVER_TOKEN", TOKEN)], &self.home())
    }

    /// The instance id `server` wrote when it started.
    fn instance_id(server_dir: &Path) -> String {
        let out = std::fs::read_to_string(server_dir.join("server.out")).unwrap_or_default();
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| {
                v.get("fields")
                    .and_then(|f| f.get("instance"))
                    .or_else(|| v.get("instance"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no instance id in {}:\n{out}", server_dir.display()))
    }

    fn id_of(&self, n: usize) -> String {
        Site::instance_id(&self.path().join(format!("instance-{n}")))
    }

    /// One row per journal entry of `run`: (seq, fence), from the
    /// database itself.
    fn fences(&self, run: &str) -> Vec<(i64, i64)> {
        let out = self
            .pg
            .psql(&format!(
                "SELECT seq, fence FROM journal WHERE run_id = '{run}' ORDER BY seq"
            ))
            .expect("psql");
        out.lines()
            .filter_map(|l| {
                let mut it = l.split('|').map(str::trim);
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
            })
            .collect()
    }
}

fn symlink(from: &Path, to: &Path) {
    std::os::unix::fs::symlink(from, to).unwrap_or_else(|e| panic!("symlink {}: {e}", to.display()));
}

fn kind(e: &Sse) -> String {
    e.kind().to_string()
}

/// Per task, how many times the journal says it succeeded.
fn successes(journal: &[Sse]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for e in journal {
        if kind(e) == "task_succeeded" {
            *n.entry(e.node().to_string()).or_default() += 1;
        }
    }
    n
}

/// Wait until every run in `ids` is final on `server`; their statuses.
async fn wait_all(server: &Server, ids: &[String]) -> BTreeMap<String, String> {
    let deadline = Instant::now() + RUNS_WITHIN;
    loop {
        let mut done = BTreeMap::new();
        for id in ids {
            let (code, s) = server.get(&format!("/workflows/{id}/status")).await;
            assert_eq!(code, StatusCode::OK, "{s}");
            let status = s["status"].as_str().unwrap_or_default().to_string();
            if FINAL.contains(&status.as_str()) {
                done.insert(id.clone(), status);
            }
        }
        if done.len() == ids.len() {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} runs finished within {RUNS_WITHIN:?}",
            done.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The runs `server` says are executing, by the instance executing them.
async fn executing(server: &Server) -> HashMap<String, String> {
    let (code, list) = server.get("/workflows?status=running").await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let mut by = HashMap::new();
    for r in list["runs"].as_array().cloned().unwrap_or_default() {
        let id = r["run_id"].as_str().unwrap_or_default().to_string();
        let s = server.status(&id).await;
        if let Some(owner) = s["executed_by"].as_str() {
            by.insert(id, owner.to_string());
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_share_30_runs_and_take_over_those_of_one_killed_mid_run() {
    share_30_runs(3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_30_runs_and_take_over_those_of_one_killed_mid_run() {
    share_30_runs(2).await;
}

/// `n` instances, 30 runs submitted round-robin over 3 sshd hosts;
/// instance 0 is killed with SIGKILL while it executes runs.
async fn share_30_runs(n: usize) {
    let site = Site::new(3);
    site.installs_take(1.0);
    let file = site.workflow("shared", "");
    let url = site.pg.url();
    let max_running = (6 / n).to_string();
    let mut servers: Vec<Server> = (0..n)
        .map(|i| site.instance(i, &url, &["--max-running", &max_running, "--max-pending", "100"]))
        .collect();
    let ids_of: Vec<String> = (0..n).map(|i| site.id_of(i)).collect();

    // 30 runs, submitted round-robin.
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(servers[i % n].submit(&file).await);
    }

    // A stream followed on instance 1 of a run another instance executes:
    // it must follow it to its end.
    let (followed, follower) = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let by = executing(&servers[1]).await;
            if let Some((id, _)) = by.iter().find(|(_, owner)| **owner != ids_of[1]) {
                break (
                    id.clone(),
                    servers[1]
                        .sse_reader(&format!("/workflows/{id}/events?follow=true"), None)
                        .await,
                );
            }
            assert!(Instant::now() < deadline, "no run executing on another instance than 1");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    // Kill instance 0 once it executes runs.
    let victims = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let by = executing(&servers[1]).await;
            let mine: Vec<String> = by
                .iter()
                .filter(|(_, o)| **o == ids_of[0])
                .map(|(id, _)| id.clone())
                .collect();
            if mine.len() >= 2 {
                break mine;
            }
            assert!(Instant::now() < deadline, "instance 0 never executed a run");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    servers[0].child.kill().expect("SIGKILL instance 0");
    servers[0].child.wait().expect("reaped");
    let killed_at = now_ms();

    let statuses = wait_all(&servers[1], &ids).await;
    assert!(
        statuses.values().all(|s| s == "succeeded"),
        "every run succeeds: {statuses:?}"
    );

    // The killed instance's runs (those it had not finished when it was
    // killed) went on elsewhere within the bound.
    let mut taken_over = 0;
    for id in &victims {
        let journal = servers[1].journal(id).await;
        let finished_before = journal
            .iter()
            .any(|e| kind(e) == "run_finished" && e.data["at_ms"].as_i64().unwrap_or(0) <= killed_at);
        if finished_before {
            continue;
        }
        taken_over += 1;
        let after: Vec<&Sse> = journal
            .iter()
            .filter(|e| e.data["at_ms"].as_i64().unwrap_or(0) > killed_at)
            .collect();
        let first = after
            .first()
            .unwrap_or_else(|| panic!("run {id}: nothing after the kill"));
        let took = Duration::from_millis((first.data["at_ms"].as_i64().unwrap_or(0) - killed_at).max(0) as u64);
        assert!(
            took <= TTL + BOUND,
            "run {id} of the killed instance went on after {took:?}, more than the lease ({TTL:?}) + {BOUND:?}"
        );
        assert!(
            journal
                .iter()
                .any(|e| kind(e) == "run_started" && e.data["event"]["resumed"] == true),
            "run {id} was resumed from its journal"
        );
        // Its writes after the takeover carry a newer fence.
        let fences = site.fences(id);
        let last_old = fences.iter().filter(|(_, f)| *f == fences[0].1).map(|(s, _)| *s).max();
        assert!(
            fences.iter().any(|(_, f)| *f > fences[0].1),
            "run {id}: no write under a newer fence: {fences:?}"
        );
        let first_new = fences.iter().find(|(_, f)| *f > fences[0].1).map(|(s, _)| *s);
        assert!(
            last_old < first_new,
            "run {id}: old and new owners interleave: {fences:?}"
        );
    }
    assert!(
        taken_over > 0,
        "instance 0 was killed with none of {victims:?} in progress"
    );

    // No task succeeded twice, and every instance answers alike.
    let last = &servers[n - 1];
    for id in &ids {
        let a = servers[1].journal(id).await;
        let b = last.journal(id).await;
        let twice: Vec<_> = successes(&a).into_iter().filter(|(_, n)| *n > 1).collect();
        assert!(twice.is_empty(), "run {id}: tasks succeeded more than once: {twice:?}");
        assert_eq!(successes(&a).len(), 9, "run {id}: 3 checks and 6 installs succeeded");
        let strip = |v: &[Sse]| v.iter().map(|e| (e.id, e.data.clone())).collect::<Vec<_>>();
        assert_eq!(
            strip(&a),
            strip(&b),
            "run {id}: the two instances stream different journals"
        );
        let (sa, sb) = (servers[1].status(id).await, last.status(id).await);
        assert_eq!(sa, sb, "run {id}: the two instances show different statuses");
        let (la, lb) = (
            servers[1].sse(&format!("/workflows/{id}/logs")).await,
            last.sse(&format!("/workflows/{id}/logs")).await,
        );
        assert!(
            la.iter()
                .any(|l| l.data["line"].as_str().unwrap_or("").contains("install ok")),
            "run {id}: its output is streamed by an instance that may not have run it"
        );
        assert_eq!(
            strip(&la),
            strip(&lb),
            "run {id}: the instances stream different output"
        );
    }

    // The followed stream went to the end of its run.
    let streamed = follower.rest().await;
    let stored = last.journal(&followed).await;
    assert_eq!(
        streamed.iter().map(|e| e.id).collect::<Vec<_>>(),
        stored.iter().map(|e| e.id).collect::<Vec<_>>(),
        "the stream followed on instance 1 has every event of run {followed}"
    );
    assert_eq!(kind(streamed.last().expect("events")), "run_finished");
}

/// How an instance loses its database in [`partitioned`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Partition {
    /// Its connections are closed (a reset): it learns at its next query.
    Cut,
    /// Nothing passes, nothing is closed (packets lost): it learns only
    /// that its leases are not renewed in time.
    Stall,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_cut_off_from_the_database_stops_and_another_finishes_its_run() {
    partitioned(Partition::Cut).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_whose_database_connection_stalls_is_fenced_and_another_finishes_its_run() {
    partitioned(Partition::Stall).await;
}

async fn partitioned(how: Partition) {
    let site = Site::new(3);
    site.installs_take(1.5);
    let file = site.workflow("partitioned", "");
    let proxy = Proxy::start(site.pg.addr()).expect("proxy");
    let via_proxy = format!("postgres://drover@{}/postgres", proxy.addr());
    // Instance 0 alone takes the run up, through the proxy.
    let a = site.instance(0, &via_proxy, &[]);
    let id = a.submit(&file).await;
    a.wait_status(&id, "running").await;
    // Into its installs (each takes 1.5 s, two per host).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = site.instance(1, &site.pg.url(), &[]);
    let a_id = site.id_of(0);
    assert_eq!(
        b.status(&id).await["executed_by"],
        json!(a_id),
        "instance 0 executes the run"
    );

    // Cut instance 0 off from PostgreSQL.
    match how {
        Partition::Cut => proxy.cut(),
        Partition::Stall => proxy.stall(),
    }
    let cut_at = Instant::now();
    let cut_ms = now_ms();
    // Instance 1 takes the run over once the lease expired.
    let b_id = site.id_of(1);
    let deadline = Instant::now() + TTL + BOUND;
    loop {
        if b.status(&id).await["executed_by"] == json!(b_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instance 1 did not take the run over within {:?} of the cut",
            TTL + BOUND
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = cut_at.elapsed();
    assert!(
        took >= TTL / 2,
        "taken over after {took:?}: before the lease could expire"
    );
    // The cut-off instance stopped the run itself: at its first write
    // when its connections were closed; when they stall, before its lease
    // could expire (its watchdog).
    let log = std::fs::read_to_string(site.path().join("instance-0/server.out")).unwrap_or_default();
    let said = match how {
        Partition::Cut => "its journal cannot be written to the shared store",
        Partition::Stall => "leases could not be renewed",
    };
    assert!(
        log.contains(said),
        "instance 0 says it stopped its runs:\n{}",
        log.lines()
            .filter(|l| !l.contains("\"INFO\""))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Back on the network, it writes nothing more for the run: what a
    // stall held back reaches the database and is refused (fenced).
    proxy.restore();
    let end = b.wait_end(&id).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");
    let journal = b.journal(&id).await;
    let twice: Vec<_> = successes(&journal).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "tasks succeeded more than once: {twice:?}");
    let fences = site.fences(&id);
    let old = fences[0].1;
    let first_new = fences
        .iter()
        .find(|(_, f)| *f > old)
        .map(|(s, _)| *s)
        .expect("a newer fence");
    assert!(
        fences.iter().filter(|(_, f)| *f == old).all(|(s, _)| *s < first_new),
        "instance 0 wrote after instance 1 took the run over: {fences:?}"
    );
    let after_cut: Vec<&Sse> = journal
        .iter()
        .filter(|e| e.data["at_ms"].as_i64().unwrap_or(0) > cut_ms)
        .collect();
    assert!(!after_cut.is_empty());
    // Both instances, the cut-off one included, show the same.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.status(&id).await, b.status(&id).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_reach_the_instance_executing_the_run_and_limits_hold_across_instances() {
    let site = Site::new(2);
    site.installs_take(3.0);
    let file = site.workflow("steered", "");
    let url = site.pg.url();
    let limits = ["--max-running", "1", "--max-pending", "2"];
    let a = site.instance(0, &url, &limits);
    let id = a.submit(&file).await;
    a.wait_status(&id, "running").await;
    let b = site.instance(1, &url, &limits);
    assert_eq!(b.status(&id).await["executed_by"], json!(site.id_of(0)));

    // Pause, resume and cancel through the instance that does not run it.
    let (code, body) = b.command(&id, "pause").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "paused", "{body}");
    a.wait_status(&id, "paused").await;
    let (code, body) = b.command(&id, "resume").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    a.wait_status(&id, "running").await;

    // --max-running 1 across both: the next two wait, whichever instance
    // they were given to, and a third is refused by either.
    let q1 = b.submit(&file).await;
    let q2 = a.submit(&file).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for q in [&q1, &q2] {
        assert_eq!(
            a.status(q).await["status"],
            "queued",
            "only one run executes across instances"
        );
    }
    for s in [&a, &b] {
        let (code, body) = s.post("/workflows/batch", json!({"path": file})).await;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains("queue is full"),
            "{body}"
        );
    }

    let (code, body) = b.command(&id, "cancel").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let end = a.wait_end(&id).await;
    assert_eq!(end["status"], "cancelled", "{end:#}");
    // A command the executing instance refuses is refused alike.
    let (code, body) = b.command(&id, "pause").await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    // The queued runs are cancelled wherever: no instance executes them.
    for q in [&q1, &q2] {
        let (code, body) = b.command(q, "cancel").await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    }
    wait_all(&a, &[q1, q2]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_cannot_move_its_runs_to_another_store() {
    let site = Site::new(1);
    let url = site.pg.url();
    // On PostgreSQL, a workflow that asks for SQLite is refused.
    let file = site.workflow(
        "wants-sqlite",
        "    monitoring = drover.MonitoringConfig {state_store = \"sqlite\"}",
    );
    let s = site.instance(0, &url, &[]);
    let (code, body) = s.post("/workflows/batch", json!({"path": file})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "invalid_workflow", "{body}");
    let text = body.to_string();
    assert!(
        text.contains("monitoring.state_store") && text.contains("cannot move its runs to another store"),
        "{body}"
    );
    // One that asks for PostgreSQL runs.
    let file = site.workflow(
        "wants-postgres",
        "    monitoring = drover.MonitoringConfig {state_store = \"postgres\"}",
    );
    let id = s.submit(&file).await;
    assert_eq!(s.wait_end(&id).await["status"], "succeeded");

    // drover run keeps its state in an SQLite file: a workflow asking for
    // PostgreSQL is refused, naming the field; and a PostgreSQL --state is
    // refused, saying where such a store is used.
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
            .current_dir(site.path())
            .env("DROVER_HOME", site.home())
            .env("DROVER_VENV", repo().join(".venv"))
            .env("XDG_DATA_HOME", site.path().join("xdg"))
            .env_remove("DROVER_STATE")
            .args(args)
            .output()
            .expect("drover")
    };
    let out = run(&["run", file.to_str().expect("path")]);
    let text = common::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("monitoring.state_store = \"postgres\"") && text.contains("SQLite"),
        "{text}"
    );
    let out = run(&["run", "--state", &url, file.to_str().expect("path")]);
    let text = common::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("drover serve") && text.contains("PostgreSQL"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_fires_each_slot_once_across_instances_and_survives_the_one_that_created_it() {
    let site = Site::new(1);
    site.installs_take(0.1);
    let file = site.workflow("scheduled", "");
    let url = site.pg.url();
    let mut a = site.instance(0, &url, &[]);
    let b = site.instance(1, &url, &[]);
    let (code, body) = a
        .post(
            "/schedules",
            json!({
                "workflow": {"path": file.display().to_string()},
                "cron": "*/2 * * * * *",
                "timezone": "UTC",
                "overlap": "queue",
                "missed": "skip",
            }),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body:#}");
    let id = body["id"].as_str().expect("id").to_string();
    // Both instances' loops see it; each slot is fired by one of them.
    tokio::time::sleep(Duration::from_secs(7)).await;
    a.child.kill().expect("SIGKILL instance 0");
    a.child.wait().expect("reaped");
    let killed_at = now_ms();
    // The other instance goes on firing it.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (code, body) = b.post(&format!("/schedules/{id}/pause"), json!({})).await;
    assert!(code.is_success(), "{body}");

    let (code, sched) = b.get(&format!("/schedules/{id}")).await;
    assert_eq!(code, StatusCode::OK, "{sched:#}");
    let slots = sched["slots"].as_array().cloned().unwrap_or_default();
    let fired: Vec<&Value> = slots.iter().filter(|s| s["outcome"] == "fired").collect();
    assert!(fired.len() >= 5, "a slot every 2 s for 14 s: {sched:#}");
    let after_kill = fired
        .iter()
        .filter(|s| s["slot_ms"].as_i64().unwrap_or(0) > killed_at + 1000)
        .count();
    assert!(
        after_kill >= 2,
        "slots after instance 0 was killed were fired: {sched:#}"
    );
    // One run per fired slot: no instance fired a slot another did.
    let (code, list) = b.get("/workflows").await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let mut by_slot: HashMap<String, String> = HashMap::new();
    for run in list["runs"].as_array().cloned().unwrap_or_default() {
        let run_id = run["run_id"].as_str().unwrap_or_default().to_string();
        let status = b.status(&run_id).await;
        for act in status["actions"].as_array().cloned().unwrap_or_default() {
            if act["by"] == format!("schedule {id}") {
                let slot = act["detail"].as_str().unwrap_or_default().to_string();
                if let Some(other) = by_slot.insert(slot.clone(), run_id.clone()) {
                    panic!("slot {slot} fired twice: runs {other} and {run_id}");
                }
            }
        }
    }
    assert_eq!(
        by_slot.len(),
        fired.len(),
        "runs and fired slots: {by_slot:?} {sched:#}"
    );
}
