//! End to end on a real fleet: servers of the `local` provider are sshd
//! hosts in their own namespaces on loopback addresses, reached over SSH
//! like cloud servers. Needs root and openssh-server (make setup installs
//! it). Every test deletes its hosts, also when it fails (FleetGuard).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use drover_exec::Status;
use drover_provider_local::hosts::{FleetGuard, HostFleet, HostState};
use drover_state::RunStatus;
use serde_json::{Value, json};
use support::{Fixture, status_of};

/// A server of the local provider reached over SSH at `address`.
fn host(name: &str, address: &str, taskservs: &[&str]) -> Value {
    json!({"hostname": name, "provider": "local", "plan": "small", "address": address, "taskservs": taskservs})
}

/// The fleet the runs of `f` use, guarded: its hosts are deleted on drop.
fn guard(f: &Fixture, names: &[&str]) -> FleetGuard {
    let fleet =
        HostFleet::new(f.dir.path().join("providers/local/fleet")).expect("fleet (needs root and openssh-server)");
    let g = FleetGuard::new(fleet);
    for n in names {
        g.adopt(n);
    }
    g
}

fn root_of(f: &Fixture, server: &str) -> PathBuf {
    f.dir
        .path()
        .join("providers/local/fleet/hosts")
        .join(server)
        .join("root")
}

fn create_op() -> Value {
    json!({"id": "create", "type": "create", "target": "server"})
}

fn no_retry() -> Value {
    json!({"max_attempts": 1, "backoff": "linear", "initial_delay": 0, "max_delay": 0, "jitter": false})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_operation_workflow_runs_per_server_pipelines_over_one_connection_per_host() {
    let f = Fixture::outside_tmp();
    let names = ["f0", "f1", "f2"];
    let _g = guard(&f, &names);
    let servers: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| host(n, &format!("127.0.220.{}", i + 1), &["a", "b", "c", "d"]))
        .collect();
    let s = f
        .run(json!({
            "name": "fleet", "servers": servers,
            "operations": [
                create_op(),
                {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
                {"id": "check", "type": "check", "target": "taskserv", "depends_on": ["install"]},
            ],
            // The checks also wait for a condition probed on f0, over SSH.
            "dependencies": [{
                "source": "operation.check", "target": "operation.install", "type": "hard",
                "wait_condition": {"command": "test -f \"$DROVER_ROOT/installed/d\" && test \"$(hostname)\" = f0", "server": "f0", "timeout": 10, "interval": 1},
            }],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    assert_eq!(s.tasks.len(), 3 + 12 + 12);
    let journal = f.store.journal(&s.run_id).expect("journal");
    assert!(
        journal
            .iter()
            .any(|e| e.node.as_deref() == Some("dependencies[0]") && e.event == drover_state::Event::GateOpened)
    );
    for n in names {
        // The scripts ran on the host: their effects are in its own root.
        for t in ["a", "b", "c", "d"] {
            assert!(
                root_of(&f, n).join("installed").join(t).is_file(),
                "{t} not installed on {n}"
            );
        }
        // Eight tasks on the host, one SSH connection.
        let log = std::fs::read_to_string(
            f.dir
                .path()
                .join("providers/local/fleet/hosts")
                .join(n)
                .join("sshd.log"),
        )
        .expect("sshd log");
        assert_eq!(log.matches("Accepted publickey").count(), 1, "{n}: {log}");
    }
    let e = f.executions();
    let at = |a: &str, t: &str| e.iter().find(|x| x.action == a && x.target == t).cloned().expect(t);
    assert!(at("install", "a@f1").end_ns <= at("install", "b@f1").start_ns);
    assert!(at("install", "c@f2").end_ns <= at("install", "d@f2").start_ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_down_at_the_start_fails_its_tasks_and_the_others_go_on() {
    let f = Fixture::outside_tmp();
    let names = ["d0", "d1", "d2"];
    let g = guard(&f, &names);
    let servers: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| host(n, &format!("127.0.221.{}", i + 1), &["a"]))
        .collect();
    let s = f
        .run(json!({"name": "up", "servers": servers.clone(), "operations": [create_op()]}))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    g.fleet().stop("d1").await.expect("stop d1");

    let s = f
        .run(json!({
            "name": "down", "servers": servers,
            "retry_policy": {"max_attempts": 2, "backoff": "linear", "initial_delay": 1, "max_delay": 1, "jitter": false},
            "operations": [{"id": "install", "type": "create", "target": "taskserv", "on_failure": "continue"}],
        }))
        .await;
    assert_eq!(s.status, RunStatus::Failed);
    let t = s.tasks.iter().find(|t| t.task == "install/a@d1").expect("task");
    assert_eq!((t.status, t.attempts), (Status::Failed, 2), "{t:?}");
    assert!(t.error.as_deref().is_some_and(|e| e.contains("d1")), "{t:?}");
    assert_eq!(status_of(&s, "install/a@d0"), Status::Succeeded);
    assert_eq!(status_of(&s, "install/a@d2"), Status::Succeeded);
    assert!(!root_of(&f, "d1").join("installed/a").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_in_the_middle_of_a_task_fails_that_task_only() {
    let f = Fixture::outside_tmp();
    let names = ["k0", "k1"];
    let g = guard(&f, &names);
    f.control("install.a@k1", "sleep 4");
    f.control("install.a@k0", "sleep 1");
    let servers: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| host(n, &format!("127.0.222.{}", i + 1), &["a"]))
        .collect();
    let handle = f.start(json!({
        "name": "killed", "servers": servers, "retry_policy": no_retry(),
        "operations": [create_op(), {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "on_failure": "continue"}],
    }));
    // Wait until a@k1 runs on its host, then kill the host.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let journal = f
            .store
            .runs()
            .ok()
            .and_then(|r| r.first().map(|r| r.id.clone()))
            .and_then(|id| f.store.journal(&id).ok());
        let started = journal.is_some_and(|j| {
            j.iter().any(|e| {
                e.node.as_deref() == Some("install/a@k1") && matches!(e.event, drover_state::Event::TaskStarted { .. })
            })
        });
        if started {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "install/a@k1 never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    g.fleet().stop("k1").await.expect("kill k1");
    let s = handle.wait().await.expect("run ends");
    assert_eq!(s.status, RunStatus::Failed);
    assert_eq!(status_of(&s, "install/a@k1"), Status::Failed);
    assert_eq!(status_of(&s, "install/a@k0"), Status::Succeeded);
    assert!(root_of(&f, "k0").join("installed/a").is_file());
    assert!(
        !root_of(&f, "k1").join("installed/a").exists(),
        "the killed host finished its task"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_script_is_killed_on_the_host_when_its_timeout_expires() {
    let f = Fixture::outside_tmp();
    let g = guard(&f, &["h0"]);
    f.control("install.a@h0", "hang");
    let started = std::time::Instant::now();
    let s = f
        .run(json!({
            "name": "hang", "servers": [host("h0", "127.0.223.1", &["a"])], "retry_policy": no_retry(),
            "operations": [create_op(), {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "timeout": 2}],
        }))
        .await;
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    let t = s.tasks.iter().find(|t| t.task == "install/a@h0").expect("task");
    assert_eq!(t.status, Status::Failed);
    assert!(t.error.as_deref().is_some_and(|e| e.contains("timed out")), "{t:?}");
    // Nothing of the script is left on the host: look at the processes in
    // the host's own PID namespace.
    let HostState::Running(info) = g.fleet().status("h0").await.expect("status") else {
        panic!("h0 not running")
    };
    let host_ns = std::fs::read_link(format!("/proc/{}/ns/pid", info.pid)).expect("host pid ns");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()))
            .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() == Some(&host_ns))
            .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains("sleep 1000") || c.contains("install.sh"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left running on the host: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_key_changed_is_refused() {
    let f = Fixture::outside_tmp();
    let names = ["m0", "m1"];
    let g = guard(&f, &names);
    let servers = vec![host("m0", "127.0.224.1", &["a"]), host("m1", "127.0.224.2", &["a"])];
    let s = f
        .run(json!({"name": "up", "servers": servers.clone(), "operations": [create_op()]}))
        .await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    // m0's entry now carries m1's key: a man in the middle, as far as
    // drover can tell.
    let kh = g.fleet().known_hosts();
    let text = std::fs::read_to_string(&kh).expect("known_hosts");
    let key_of = |addr: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("[{addr}]")) || l.starts_with(addr))
            .and_then(|l| l.split_once(' ').map(|(_, k)| k.to_string()))
            .expect("a known_hosts line")
    };
    let (k0, k1) = (key_of("127.0.224.1"), key_of("127.0.224.2"));
    std::fs::write(&kh, text.replace(&k0, &k1)).expect("tamper");

    let s = f
        .run(json!({
            "name": "mitm", "servers": servers, "retry_policy": no_retry(),
            "operations": [{"id": "install", "type": "create", "target": "taskserv", "on_failure": "continue"}],
        }))
        .await;
    let t = s.tasks.iter().find(|t| t.task == "install/a@m0").expect("task");
    assert_eq!(t.status, Status::Failed);
    let err = t.error.clone().unwrap_or_default();
    assert!(err.contains("m0") && err.to_lowercase().contains("host key"), "{err}");
    assert_eq!(status_of(&s, "install/a@m1"), Status::Succeeded);
    assert!(
        !f.executions().iter().any(|e| e.target == "a@m0"),
        "a script ran on the refused host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_deletes_the_hosts_it_created() {
    let f = Fixture::outside_tmp();
    let names = ["r0", "r1"];
    let g = guard(&f, &names);
    f.control("install.b@r1", "fail");
    let s = f
        .run(json!({
            "name": "rb", "retry_policy": no_retry(),
            "servers": [host("r0", "127.0.225.1", &["a", "b"]), host("r1", "127.0.225.2", &["a", "b"])],
            "operations": [create_op(), {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"], "on_failure": "rollback"}],
        }))
        .await;
    assert_eq!(s.status, RunStatus::RolledBack, "{}", s.reason);
    for n in names {
        assert!(
            matches!(g.fleet().status(n).await.expect("status"), HostState::Absent),
            "{n} still exists"
        );
    }
    let kh = std::fs::read_to_string(g.fleet().known_hosts()).unwrap_or_default();
    assert!(!kh.contains("127.0.225."), "known_hosts keeps deleted hosts: {kh}");
    let ps = std::process::Command::new("pgrep")
        .args([
            "-f",
            &f.dir.path().join("providers/local/fleet/hosts").display().to_string(),
        ])
        .output()
        .expect("pgrep");
    assert!(
        ps.stdout.is_empty(),
        "daemons left: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
}
