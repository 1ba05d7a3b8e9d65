//! Real hosts of the `local` provider backend (drover_provider_local::hosts): one
//! OpenSSH daemon per host, in its own namespaces, on its own loopback
//! address, checked with the system `ssh` client and /proc.
//!
//! Needs root, sshd (openssh-server), ssh (openssh-client) and unshare
//! (util-linux). Addresses: 127.0.200.0/24 for the functional tests,
//! 127.0.201.x for 20 hosts in parallel, 127.0.202.x and up for the
//! larger batch (DROVER_HOSTS_BATCH hosts, default 50), so nothing here
//! collides with the workflows' 127.0.10.x-127.0.15.x.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use drover_provider_local::hosts::{
    FleetGuard, FleetOptions, HOST_ROOT, HostError, HostFleet, HostInfo, HostSpec, HostState,
};

fn spec(hostname: &str, address: &str) -> HostSpec {
    HostSpec {
        hostname: hostname.into(),
        address: address.into(),
    }
}

/// A fleet in a fresh temporary directory (returned too: it must outlive
/// the guard, which is declared after it and so dropped first).
fn fleet() -> (tempfile::TempDir, FleetGuard) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fleet = HostFleet::new(dir.path().join("state")).expect("fleet");
    (dir, FleetGuard::new(fleet))
}

/// `ssh root@host command` with the fleet's key and strict host key checking.
fn ssh(fleet: &HostFleet, host: &HostInfo, command: &str) -> Output {
    Command::new("ssh")
        .args(fleet.ssh_args(host))
        .arg(command)
        .output()
        .expect("ssh runs")
}

/// Its standard output, trimmed; panics with its errors when it failed.
fn ssh_ok(fleet: &HostFleet, host: &HostInfo, command: &str) -> String {
    let out = ssh(fleet, host, command);
    assert!(
        out.status.success(),
        "ssh {} {command:?}: {}\n{}",
        host.hostname,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether a process is gone (or a zombie, dead but not reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) == Some("Z"),
    }
}

/// Living processes whose command line matches `pattern` (`pgrep -f`).
fn pgrep(pattern: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", "--", pattern])
        .output()
        .expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .next()
                .and_then(|pid| pid.parse().ok())
                .is_some_and(|pid| !gone(pid))
        })
        .map(str::to_string)
        .collect()
}

fn known_hosts(fleet: &HostFleet) -> String {
    std::fs::read_to_string(fleet.known_hosts()).expect("known_hosts")
}

/// The known_hosts lines naming `address` (port 22: the bare address).
fn lines_for(fleet: &HostFleet, address: &str) -> Vec<String> {
    known_hosts(fleet)
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(address))
        .map(str::to_string)
        .collect()
}

/// (VmRSS, RssAnon) of a process in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// The proportional set size of a process in kB.
fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The parent of a process.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
}

/// Checks that nothing of the hosts with these sshd_configs and sshd pids
/// is left: no process, no state directory.
fn assert_cleaned(configs: &[std::path::PathBuf], pids: &[u32]) {
    for pid in pids {
        assert!(gone(*pid), "sshd pid {pid} still runs");
    }
    for config in configs {
        let left = pgrep(&config.display().to_string());
        assert!(left.is_empty(), "processes of {} left: {left:?}", config.display());
        let dir = config.parent().expect("host dir");
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_are_separate_machines() {
    let (_dir, guard) = fleet();
    let fleet = guard.fleet().clone();
    let started = Instant::now();
    let first = guard
        .create(&spec("h200-1", "127.0.200.1"))
        .await
        .expect("create h200-1");
    println!("create 1 host: {:?}", started.elapsed());
    let second = guard
        .create(&spec("h200-2", "127.0.200.2"))
        .await
        .expect("create h200-2");
    let third = guard
        .create(&spec("h200-3", "127.0.200.3"))
        .await
        .expect("create h200-3");
    let hosts = [&first, &second, &third];

    let machine = String::from_utf8(Command::new("hostname").output().expect("hostname").stdout).expect("utf-8");
    for host in hosts {
        assert_eq!(host.port, 22);
        assert_eq!(host.root, HOST_ROOT);
        // Its own UTS namespace: its hostname; the machine keeps its own.
        assert_eq!(ssh_ok(&fleet, host, "hostname"), host.hostname);
        // Its root's home and temporary directory are under its root.
        assert_eq!(
            ssh_ok(
                &fleet,
                host,
                "echo $DROVER_ROOT $HOME $TMPDIR; test -d $HOME && test -w $TMPDIR && echo ok"
            ),
            format!("{HOST_ROOT} {HOST_ROOT}/root {HOST_ROOT}/tmp\nok")
        );
        // Its own PID namespace: its sshd is PID 1 and nothing else of the
        // machine shows.
        let ps = ssh_ok(
            &fleet,
            host,
            "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'",
        );
        assert!(
            ps.contains(&fleet.sshd_config(&host.hostname).display().to_string()),
            "{ps}"
        );
        let count: usize = ps.lines().last().and_then(|n| n.parse().ok()).expect("process count");
        assert!(count < 10, "{} sees {count} processes", host.hostname);
        // Its own /etc/hosts: its name resolves to its address.
        let resolved = ssh_ok(&fleet, host, "getent hosts \"$(hostname)\"");
        assert!(resolved.starts_with(&host.address), "{resolved}");
        // Its host key is in known_hosts, in OpenSSH's form for port 22.
        assert_eq!(lines_for(&fleet, &host.address).len(), 1, "{}", known_hosts(&fleet));
    }
    let now = String::from_utf8(Command::new("hostname").output().expect("hostname").stdout).expect("utf-8");
    assert_eq!(machine, now, "the machine's hostname changed");

    // Own state directories behind DROVER_ROOT.
    ssh_ok(
        &fleet,
        &first,
        &format!("mkdir -p {HOST_ROOT}/etc && echo one > {HOST_ROOT}/etc/marker"),
    );
    let on_second = ssh_ok(
        &fleet,
        &second,
        &format!("test ! -e {HOST_ROOT}/etc/marker && echo absent"),
    );
    assert_eq!(on_second, "absent");
    let state = fleet.host_dir("h200-1").join("root/etc/marker");
    assert_eq!(
        std::fs::read_to_string(&state)
            .expect("marker in h200-1's state")
            .trim(),
        "one"
    );
    assert!(!fleet.host_dir("h200-2").join("root/etc/marker").exists());
    // The machine's own /srv/drover is only a mount point.
    assert!(!Path::new(HOST_ROOT).join("etc/marker").exists());

    // A wrong key is refused: strict checking is real.
    let other = tempfile::tempdir().expect("temporary directory");
    let wrong = other.path().join("known_hosts");
    let line = lines_for(&fleet, &first.address).remove(0);
    let fields: Vec<&str> = line.split_whitespace().collect();
    std::fs::write(&wrong, format!("{} {} {}\n", second.address, fields[1], fields[2])).expect("write");
    let mut args = fleet.ssh_args(&second);
    for arg in &mut args {
        if arg.starts_with("UserKnownHostsFile=") {
            *arg = format!("UserKnownHostsFile={}", wrong.display());
        }
    }
    let out = Command::new("ssh").args(&args).arg("true").output().expect("ssh runs");
    assert!(!out.status.success(), "a host key of another host was accepted");
    assert!(String::from_utf8_lossy(&out.stderr).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"));
}

#[tokio::test(flavor = "multi_thread")]
async fn create_is_idempotent_and_a_restarted_orchestrator_finds_its_hosts() {
    let (_dir, guard) = fleet();
    let fleet = guard.fleet().clone();
    let first = guard.create(&spec("h200-10", "127.0.200.10")).await.expect("create");
    let again = guard
        .create(&spec("h200-10", "127.0.200.10"))
        .await
        .expect("create again");
    assert_eq!(first, again, "an existing host is returned as it is");
    let blank = guard
        .create(&spec("h200-10", ""))
        .await
        .expect("create without an address");
    assert_eq!(first, blank);
    assert_eq!(lines_for(&fleet, "127.0.200.10").len(), 1);

    let moved = guard.create(&spec("h200-10", "127.0.200.11")).await;
    assert!(
        matches!(&moved, Err(HostError::InvalidSpec { host, message }) if host == "h200-10" && message.contains("127.0.200.10")),
        "{moved:?}"
    );
    let taken = guard.create(&spec("h200-12", "127.0.200.10")).await;
    assert!(
        matches!(&taken, Err(HostError::InvalidSpec { host, message }) if host == "h200-12" && message.contains("h200-10")),
        "{taken:?}"
    );

    // The daemon is in a session of its own, not this process's.
    let session = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        stat.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(3))
            .map(str::to_string)
    };
    assert_ne!(session(first.pid), session(std::process::id()));

    // Another fleet object on the same state (an orchestrator after a
    // crash) sees the running host from the pid file.
    let reborn = HostFleet::new(fleet.state_dir().to_path_buf()).expect("fleet again");
    assert_eq!(
        reborn.status("h200-10").await.expect("status"),
        HostState::Running(first.clone())
    );
    assert_eq!(reborn.hostnames().expect("hostnames"), vec!["h200-10".to_string()]);
    assert_eq!(
        reborn.create(&spec("h200-10", "127.0.200.10")).await.expect("create"),
        first
    );
    assert_eq!(ssh_ok(&reborn, &first, "hostname"), "h200-10");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_refuses_connections_and_start_brings_back_the_same_key() {
    let (_dir, guard) = fleet();
    let fleet = guard.fleet().clone();
    let host = guard.create(&spec("h200-20", "127.0.200.20")).await.expect("create");
    ssh_ok(&fleet, &host, &format!("echo kept > {HOST_ROOT}/kept"));
    // A daemon detached on the host dies with it.
    ssh_ok(
        &fleet,
        &host,
        "setsid sh -c 'exec sleep 3620' </dev/null >/dev/null 2>&1 & echo started",
    );
    assert_eq!(pgrep("sleep 3620").len(), 1);
    let keys_before = known_hosts(&fleet);

    fleet.stop("h200-20").await.expect("stop");
    assert!(gone(host.pid), "sshd {} still runs", host.pid);
    assert!(pgrep("sleep 3620").is_empty(), "a process of the stopped host survived");
    assert_eq!(fleet.status("h200-20").await.expect("status"), HostState::Stopped);
    let out = ssh(&fleet, &host, "true");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
    fleet.stop("h200-20").await.expect("stopping a stopped host");

    let back = fleet.start("h200-20").await.expect("start");
    assert_ne!(back.pid, host.pid);
    assert_eq!((back.address.as_str(), back.port), (host.address.as_str(), host.port));
    assert_eq!(known_hosts(&fleet), keys_before, "the host key changed");
    // StrictHostKeyChecking=yes with the known_hosts of before: same key.
    assert_eq!(
        ssh_ok(&fleet, &back, &format!("hostname; cat {HOST_ROOT}/kept")),
        "h200-20\nkept"
    );
    assert_eq!(
        fleet.status("h200-20").await.expect("status"),
        HostState::Running(back.clone())
    );

    // A stopped host comes back through create too.
    fleet.stop("h200-20").await.expect("stop");
    let created = guard
        .create(&spec("h200-20", "127.0.200.20"))
        .await
        .expect("create a stopped host");
    assert_eq!(ssh_ok(&fleet, &created, "hostname"), "h200-20");
    assert!(matches!(fleet.start("h200-29").await, Err(HostError::NotFound { host }) if host == "h200-29"));
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_leaves_no_process_state_or_key() {
    let (_dir, guard) = fleet();
    let fleet = guard.fleet().clone();
    let host = guard.create(&spec("h200-30", "127.0.200.30")).await.expect("create");
    let keep = guard.create(&spec("h200-31", "127.0.200.31")).await.expect("create");
    ssh_ok(
        &fleet,
        &host,
        "setsid sh -c 'exec sleep 3630' </dev/null >/dev/null 2>&1 & echo started",
    );
    assert_eq!(pgrep("sleep 3630").len(), 1);
    let config = fleet.sshd_config("h200-30");
    assert!(!pgrep(&config.display().to_string()).is_empty());

    fleet.delete("h200-30").await.expect("delete");
    assert_cleaned(&[config], &[host.pid]);
    assert!(pgrep("sleep 3630").is_empty(), "a daemon of the deleted host survived");
    assert!(lines_for(&fleet, "127.0.200.30").is_empty(), "{}", known_hosts(&fleet));
    assert!(!known_hosts(&fleet).contains("drover-host:h200-30"));
    assert_eq!(fleet.status("h200-30").await.expect("status"), HostState::Absent);
    // The other host is untouched.
    assert_eq!(lines_for(&fleet, "127.0.200.31").len(), 1);
    assert_eq!(ssh_ok(&fleet, &keep, "hostname"), "h200-31");

    fleet.delete("h200-30").await.expect("deleting a deleted host");
    fleet
        .delete("h200-never")
        .await
        .expect("deleting a host that never was");
    // The address is free again.
    let reused = guard
        .create(&spec("h200-32", "127.0.200.30"))
        .await
        .expect("create on a freed address");
    assert_eq!(ssh_ok(&fleet, &reused, "hostname"), "h200-32");
}

#[test]
fn the_guard_cleans_up_after_a_panic() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let state = dir.path().join("state");
    let seen: Arc<Mutex<Vec<(std::path::PathBuf, u32)>>> = Arc::default();
    let record = seen.clone();
    let result = std::panic::catch_unwind(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            let guard = FleetGuard::new(HostFleet::new(state).expect("fleet"));
            for (name, address) in [("h200-40", "127.0.200.40"), ("h200-41", "127.0.200.41")] {
                let host = guard.create(&spec(name, address)).await.expect("create");
                let config = guard.fleet().sshd_config(name);
                assert!(!pgrep(&config.display().to_string()).is_empty());
                record.lock().expect("lock").push((config, host.pid));
            }
            panic!("a test failing with hosts up");
        })
    });
    assert!(result.is_err(), "the body was meant to panic");
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 2);
    let configs: Vec<_> = seen.iter().map(|(c, _)| c.clone()).collect();
    let pids: Vec<_> = seen.iter().map(|(_, p)| *p).collect();
    assert_cleaned(&configs, &pids);
}

#[tokio::test(flavor = "multi_thread")]
async fn preconditions_and_address_allocation() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = FleetOptions {
        addresses: Ipv4Addr::new(127, 0, 200, 60)..=Ipv4Addr::new(127, 0, 200, 62),
        ..FleetOptions::default()
    };
    let guard = FleetGuard::new(HostFleet::with_options(dir.path().join("state"), options).expect("fleet"));
    let fleet = guard.fleet().clone();

    // Something else listens on an address: a clear error naming the host.
    let squatter = TcpListener::bind("127.0.200.50:22").expect("bind 127.0.200.50:22");
    let busy = guard.create(&spec("h200-50", "127.0.200.50")).await;
    match &busy {
        Err(e @ HostError::AddressInUse { host, address, port }) => {
            assert_eq!(
                (host.as_str(), address.as_str(), *port),
                ("h200-50", "127.0.200.50", 22)
            );
            assert!(e.to_string().contains("h200-50"), "{e}");
        }
        other => panic!("expected AddressInUse, got {other:?}"),
    }
    drop(squatter);

    for (name, address) in [
        ("h200-51", "10.0.0.1"),
        ("h200-52", "127.0.200.0"),
        ("h200-53", "nowhere"),
    ] {
        let result = guard.create(&spec(name, address)).await;
        assert!(
            matches!(&result, Err(HostError::InvalidSpec { host, .. }) if host == name),
            "{result:?}"
        );
    }
    for name in ["", "-x", "a/b", ".."] {
        let result = guard.create(&spec(name, "127.0.200.54")).await;
        assert!(
            matches!(result, Err(HostError::InvalidSpec { .. })),
            "{name:?}: {result:?}"
        );
    }

    // No address given: the first free one of the range, skipping one in use.
    let squatter = TcpListener::bind("127.0.200.60:22").expect("bind 127.0.200.60:22");
    let a = guard.create(&spec("h200-61", "")).await.expect("create");
    assert_eq!(a.address, "127.0.200.61");
    drop(squatter);
    let b = guard.create(&spec("h200-60", "")).await.expect("create");
    assert_eq!(b.address, "127.0.200.60");
    let c = guard.create(&spec("h200-62", "")).await.expect("create");
    assert_eq!(c.address, "127.0.200.62");
    let full = guard.create(&spec("h200-63", "")).await;
    assert!(matches!(&full, Err(HostError::InvalidSpec { message, .. }) if message.contains("no free address")));
    for host in [&a, &b, &c] {
        assert_eq!(ssh_ok(&fleet, host, "hostname"), host.hostname);
    }
}

/// Creates `count` hosts at once, times it, checks each with ssh, reports
/// memory, and times their deletion.
async fn batch(count: usize, address: impl Fn(usize) -> String) {
    let (_dir, guard) = fleet();
    let guard = Arc::new(guard);
    let fleet = guard.fleet().clone();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let guard = guard.clone();
        let spec = spec(&format!("batch{count}-{i}"), &address(i));
        tasks.spawn(async move { guard.create(&spec).await });
    }
    let mut hosts = Vec::new();
    while let Some(result) = tasks.join_next().await {
        hosts.push(result.expect("task").expect("create"));
    }
    let created = started.elapsed();

    println!("{count} hosts: created in parallel in {created:.2?}");

    // ssh to every host, 8 at a time: a few hundred clients at once
    // would measure this machine's CPUs, not the hosts.
    let checked = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let mut checks = tokio::task::JoinSet::new();
    for host in hosts.clone() {
        let fleet = fleet.clone();
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        checks.spawn_blocking(move || {
            assert_eq!(ssh_ok(&fleet, &host, "hostname"), host.hostname);
            drop(permit);
        });
    }
    while let Some(result) = checks.join_next().await {
        result.expect("ssh check");
    }
    let checked = checked.elapsed();

    let (mut rss, mut anon, mut pss) = (0, 0, 0);
    for host in &hosts {
        let (r, a) = memory_kb(host.pid);
        rss += r;
        anon += a;
        // Proportional set size: shared pages divided among their users,
        // for the host's sshd and its unshare parent.
        pss += pss_kb(host.pid) + parent(host.pid).map_or(0, pss_kb);
    }
    let n = hosts.len() as u64;
    let configs: Vec<_> = hosts.iter().map(|h| fleet.sshd_config(&h.hostname)).collect();
    let pids: Vec<_> = hosts.iter().map(|h| h.pid).collect();
    let deleting = Instant::now();
    drop(guard);
    let deleted = deleting.elapsed();
    assert_cleaned(&configs, &pids);
    println!(
        "{count} hosts: {:.1} ms/host to create, ssh hostname on all in {checked:.2?}, deleted in {deleted:.2?}; \
         per host: sshd VmRSS {} kB, RssAnon {} kB; PSS of sshd + unshare {} kB",
        created.as_secs_f64() * 1000.0 / count as f64,
        rss / n,
        anon / n,
        pss / n
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_hosts_in_parallel() {
    batch(20, |i| format!("127.0.201.{}", i + 1)).await;
}

/// DROVER_HOSTS_BATCH hosts (default 50; the fleet benchmark will need
/// 250), on 127.0.202.1 and up.
#[tokio::test(flavor = "multi_thread")]
async fn a_larger_batch_in_parallel() {
    let count = std::env::var("DROVER_HOSTS_BATCH")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    batch(count, |i| format!("127.0.{}.{}", 202 + i / 250, i % 250 + 1)).await;
}

#[test]
fn the_system_routes_all_of_loopback() {
    // The premise of one address per host: 127.0.0.0/8 is local on Linux.
    let out = Command::new("ip")
        .args(["route", "get", "127.0.200.99"])
        .output()
        .expect("ip (iproute2) runs");
    let route = String::from_utf8_lossy(&out.stdout);
    assert!(route.starts_with("local 127.0.200.99 dev lo"), "{route}");
}
