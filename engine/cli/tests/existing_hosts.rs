//! Real servers: the `static` provider and SSH as operators use it, end to
//! end through the `drover` binary.
//!
//! Every host is an OpenSSH sshd the test starts itself (drover-testkit),
//! never a host of drover's own `local` provider: a non-root login user on
//! port 2222, a key file or an ssh-agent, `sudo -n` to become root, host
//! keys checked against known_hosts as an operator keeps them (drover's
//! own `<state dir>/known_hosts`, or `ssh.known_hosts`), bastions, and the
//! ways such a fleet fails (a changed host key, nothing listening, sudo
//! refused, a host down). Each test writes its inventory and workflow
//! files into a directory of its own; what happened is read from the
//! journal, the report and the hosts' own files.

#[path = "existing_hosts/support.rs"]
mod support;

use std::time::{Duration, Instant};

use drover_state::{Event, FailureKind, RunStatus, Store};
use drover_testkit::{BastionTopology, Sudo, TestFleet};
use support::*;

/// Test 1: a hundred existing hosts, checked then given hostinfo by
/// `drover run`, rolled back by hand (no machine touched but for what
/// hostinfo wrote); then the same through `drover serve` and `drover
/// batch`.
#[test]
fn a_hundred_existing_hosts_run_and_roll_back_with_drover_run_and_drover_serve() {
    let started = Instant::now();
    let fleet = operator_fleet(100);
    let fleet_up = started.elapsed();
    let site = Site::new();
    site.trust(&fleet);
    let ssh = Ssh::operator(&fleet);
    let servers: Vec<Srv> = fleet.hosts().iter().map(|h| Srv::on(h, &ssh)).collect();
    site.inventory(&servers, "");
    let workflow = site.workflow("hundred", 50, RETRY_3);
    let homes: Vec<Snapshot> = fleet.hosts().iter().map(|h| snapshot(&h.home())).collect();

    // drover run.
    let t = Instant::now();
    let o = site.drover().arg("run").arg(&workflow).output().expect("drover run");
    let run_time = t.elapsed();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "drover run failed:\n{out}");
    let id = site.only_run();
    let journal = site.journal(&id);
    assert_eq!(site.status(&id), RunStatus::Succeeded);
    let report = site.report(&id);
    assert!(report.contains("succeeded"), "report.txt:\n{report}");
    let (kernel, arch) = (machine("uname -r"), machine("uname -m"));
    for host in fleet.hosts() {
        let node = format!("check-servers/{}", host.name());
        let found = found_of(&journal, &node);
        assert_eq!(
            found.get("hostname").map(String::as_str),
            Some(host.name()),
            "{node}: {found:?}"
        );
        assert_eq!(
            found.get("address"),
            Some(&host.address().to_string()),
            "{node}: {found:?}"
        );
        assert_eq!(found.get("kernel"), Some(&kernel), "{node}: {found:?}");
        assert_eq!(found.get("arch"), Some(&arch), "{node}: {found:?}");
        assert!(
            found.get("os").is_some_and(|v| !v.is_empty()),
            "{node}: no os: {found:?}"
        );
        for k in ["cpus", "memory_mib", "disk_gib"] {
            let n: u64 = found
                .get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{node}: {k} is not a number: {found:?}"));
            assert!(k == "disk_gib" || n > 0, "{node}: {k} = {n}");
        }
        assert_eq!(attempts(&journal, &node), 1, "{node} needed more than one attempt");
        assert_hostinfo(host, &id);
        assert_no_run_dir(host);
    }
    let logs = std::fs::read_to_string(site.dir().join("logs").join(&id).join("check-servers_host-001.log"))
        .expect("the create task's log");
    assert!(
        logs.contains("memory_mib="),
        "the create log shows what was found:\n{logs}"
    );

    // drover rollback RUN_ID: hostinfo removed by its remove.sh; the
    // servers forgotten, not deleted: the machines stay as they are.
    let t = Instant::now();
    let o = site.drover().args(["rollback", &id]).output().expect("drover rollback");
    let rollback_time = t.elapsed();
    assert_eq!(o.status.code(), Some(0), "drover rollback failed:\n{}", text(&o));
    assert_eq!(site.status(&id), RunStatus::RolledBack);
    assert_undone(&fleet, &site.journal(&id));
    assert_machines_untouched(&fleet, &homes, "after drover rollback");
    let rollback_checked = t.elapsed();

    // The same workflow through drover serve + drover batch: the file is
    // sent as a path on the server (--server-path), as it imports inv.k
    // (sent as source, its imports would not be found there).
    let serve_dir = site.dir().join("serve");
    std::fs::create_dir_all(&serve_dir).expect("serve dir");
    std::fs::copy(fleet.known_hosts(), serve_dir.join("known_hosts")).expect("the server's known_hosts");
    let server = Server::start(&site, &serve_dir.join("state.db"));
    let t = Instant::now();
    let o = wait_output(
        site.drover()
            .env("DROVER_API", &server.url)
            // Where the server's state is: its token is found next to it.
            .env("DROVER_STATE", serve_dir.join("state.db"))
            .args(["batch", "submit", "--server-path", "--watch"])
            .arg(&workflow),
        Duration::from_secs(300),
    );
    let submit_time = t.elapsed();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "drover batch submit --watch:\n{out}");
    let served = Store::open_read_only(&serve_dir.join("state.db")).expect("the server's state");
    let runs = served.runs().expect("runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let batch_id = runs[0].id.clone();
    assert_eq!(runs[0].status, RunStatus::Succeeded, "{out}");
    for host in fleet.hosts() {
        assert_hostinfo(host, &batch_id);
    }
    let t = Instant::now();
    let o = wait_output(
        site.drover()
            .env("DROVER_API", &server.url)
            // Where the server's state is: its token is found next to it.
            .env("DROVER_STATE", serve_dir.join("state.db"))
            .args(["batch", "rollback", &batch_id, "--watch"]),
        Duration::from_secs(300),
    );
    let batch_rollback_time = t.elapsed();
    assert_eq!(o.status.code(), Some(0), "drover batch rollback --watch:\n{}", text(&o));
    assert_eq!(served.run(&batch_id).expect("run").status, RunStatus::RolledBack);
    assert_undone(&fleet, &served.journal(&batch_id).expect("journal"));
    assert_machines_untouched(&fleet, &homes, "after drover batch rollback");
    drop(server);
    println!(
        "100 hosts: fleet up {:.1} s, drover run {:.1} s, drover rollback {:.1} s (+ checks {:.1} s), \
         batch submit --watch {:.1} s, batch rollback --watch {:.1} s, total {:.1} s",
        fleet_up.as_secs_f64(),
        run_time.as_secs_f64(),
        rollback_time.as_secs_f64(),
        (rollback_checked - rollback_time).as_secs_f64(),
        submit_time.as_secs_f64(),
        batch_rollback_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Test 2: no key file, the keys of an ssh-agent (SSH_AUTH_SOCK).
#[test]
fn a_non_root_login_with_an_ssh_agent_and_no_key_file() {
    let started = Instant::now();
    let fleet = operator_fleet(2);
    let agent = fleet.agent().expect("ssh-agent with the fleet's key");
    let site = Site::new();
    site.trust(&fleet);
    let ssh = Ssh {
        key_file: None,
        ..Ssh::operator(&fleet)
    };
    let servers: Vec<Srv> = fleet.hosts().iter().map(|h| Srv::on(h, &ssh)).collect();
    site.inventory(&servers, "");
    let workflow = site.workflow("agent", 10, RETRY_3);

    // Without the agent nothing offers a key: refused at once.
    let o = site.drover().arg("run").arg(&workflow).output().expect("drover run");
    assert_eq!(
        o.status.code(),
        Some(4),
        "without an agent the run must fail:\n{}",
        text(&o)
    );
    let id = site.only_run();
    let journal = site.journal(&id);
    let failed = failures(&journal, &format!("check-servers/{}", fleet.host(0).name()));
    assert_eq!(failed.len(), 1, "a refused login is not retried: {failed:?}");
    assert_eq!(failed[0].kind, FailureKind::Permanent, "{failed:?}");

    let o = site
        .drover()
        .env("SSH_AUTH_SOCK", agent.socket())
        .arg("run")
        .arg(&workflow)
        .output()
        .expect("drover run");
    assert_eq!(o.status.code(), Some(0), "with the agent:\n{}", text(&o));
    let id = site.latest_run();
    assert_eq!(site.status(&id), RunStatus::Succeeded);
    for host in fleet.hosts() {
        assert_hostinfo(host, &id);
        assert!(
            host.log().contains("Accepted publickey for fleet"),
            "{}: no login in the sshd log:\n{}",
            host.name(),
            host.log()
        );
    }
    println!("agent login: {:.1} s", started.elapsed().as_secs_f64());
}

/// Test 3: targets only a bastion reaches, through `ssh.jump` and through
/// a ProxyJump line of an ssh config file (`ssh.config_file`).
#[test]
fn targets_behind_a_bastion_through_ssh_jump_and_through_proxyjump_in_a_config_file() {
    let started = Instant::now();
    let topology = BastionTopology::builder()
        .targets(2)
        .fleet(
            TestFleet::builder()
                .port(PORT)
                .sudo(Sudo::All)
                .private_dir("/etc/drover"),
        )
        .start()
        .expect("bastion topology");
    let fleet = topology.fleet();
    let bastion = &topology.bastions()[0];
    for target in topology.targets() {
        assert!(
            std::net::TcpStream::connect_timeout(&target.socket_addr().into(), Duration::from_secs(2)).is_err(),
            "{} must not be reachable directly",
            target.name()
        );
    }

    // ssh.jump = "fleet@bastion:2222".
    let site = Site::new();
    site.trust(fleet);
    let ssh = Ssh {
        jump: Some(format!("{}@{}:{}", fleet.user(), bastion.address(), bastion.port())),
        ..Ssh::operator(fleet)
    };
    let servers: Vec<Srv> = topology.targets().iter().map(|h| Srv::on(h, &ssh)).collect();
    site.inventory(&servers, "");
    let workflow = site.workflow("jump", 10, RETRY_3);
    let o = site.drover().arg("run").arg(&workflow).output().expect("drover run");
    assert_eq!(o.status.code(), Some(0), "through ssh.jump:\n{}", text(&o));
    let id = site.only_run();
    for target in topology.targets() {
        assert_hostinfo(target, &id);
    }
    let through = bastion.log().matches("Accepted publickey for fleet").count();
    assert!(through >= 1, "the bastion saw no login:\n{}", bastion.log());

    // ProxyJump in a config file: the servers are the config's aliases,
    // with no address; user, port, key and bastion come from the file.
    let site = Site::new();
    site.trust(fleet);
    let config = site.dir().join("ssh_config");
    topology.ssh_config().write(&config).expect("ssh config");
    let ssh = Ssh {
        user: None,
        port: None,
        key_file: None,
        config_file: Some(config.display().to_string()),
        become_sudo: true,
        ..Ssh::default()
    };
    let servers: Vec<Srv> = topology
        .targets()
        .iter()
        .map(|h| Srv {
            address: None,
            ..Srv::on(h, &ssh)
        })
        .collect();
    site.inventory(&servers, "");
    let workflow = site.workflow("proxyjump", 10, RETRY_3);
    let o = site.drover().arg("run").arg(&workflow).output().expect("drover run");
    assert_eq!(
        o.status.code(),
        Some(0),
        "through ProxyJump in {}:\n{}",
        config.display(),
        text(&o)
    );
    let id = site.only_run();
    for target in topology.targets() {
        assert_hostinfo(target, &id);
    }
    assert!(
        bastion.log().matches("Accepted publickey for fleet").count() > through,
        "the second run did not go through the bastion:\n{}",
        bastion.log()
    );
    println!("bastion, two ways: {:.1} s", started.elapsed().as_secs_f64());
}

/// Test 4: a hashed known_hosts file given as `ssh.known_hosts`.
#[test]
fn a_hashed_known_hosts_file_given_as_ssh_known_hosts() {
    let started = Instant::now();
    let fleet = operator_fleet(2);
    let site = Site::new();
    let hashed = std::fs::read_to_string(fleet.known_hosts_hashed()).expect("hashed known_hosts");
    assert!(
        hashed.lines().all(|l| l.starts_with("|1|")) && !hashed.contains(&fleet.host(0).address().to_string()),
        "the file must be hashed:\n{hashed}"
    );
    let ssh = Ssh {
        known_hosts: Some(fleet.known_hosts_hashed().display().to_string()),
        ..Ssh::operator(&fleet)
    };
    let servers: Vec<Srv> = fleet.hosts().iter().map(|h| Srv::on(h, &ssh)).collect();
    site.inventory(&servers, "");
    let workflow = site.workflow("hashed", 10, RETRY_3);
    let o = site.drover().arg("run").arg(&workflow).output().expect("drover run");
    assert_eq!(o.status.code(), Some(0), "with hashed known_hosts:\n{}", text(&o));
    let id = site.only_run();
    for host in fleet.hosts() {
        assert_hostinfo(host, &id);
    }
    assert!(
        !site.state_dir().join("known_hosts").exists(),
        "strict checking against ssh.known_hosts must not write drover's own known_hosts"
    );
    assert_eq!(
        std::fs::read_to_string(fleet.known_hosts_hashed()).expect("hashed known_hosts"),
        hashed,
        "the operator's file must not change"
    );
    println!("hashed known_hosts: {:.1} s", started.elapsed().as_secs_f64());
}

/// Test 5: the host key changed since the host was recorded: refused in
/// one attempt, at once, and nothing ran there.
#[test]
fn a_changed_host_key_fails_at_once_permanently_and_nothing_runs_on_the_host() {
    let started = Instant::now();
    let fleet = operator_fleet(1);
    let host = fleet.host(0);
    let site = Site::new();
    site.trust(&fleet);
    host.rotate_host_key().expect("a new host key");
    let home = snapshot(&host.home());
    let ssh = Ssh::operator(&fleet);
    site.inventory(&[Srv::on(host, &ssh)], "");
    // Five attempts allowed, with short delays: a retry would show.
    let workflow = site.workflow("rotated", 10, RETRY_5);
    let o = site.drover().arg("run").arg(&workflow).output().expect("drover run");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}");
    let id = site.only_run();
    let journal = site.journal(&id);
    let node = format!("check-servers/{}", host.name());
    let failed = failures(&journal, &node);
    assert_eq!(failed.len(), 1, "one attempt only: {:?}", events_of(&journal, &node));
    assert_eq!(attempts(&journal, &node), 1);
    let f = &failed[0];
    assert_eq!(f.kind, FailureKind::Permanent, "{f:?}");
    assert!(!f.will_retry, "{f:?}");
    assert!(
        f.error.contains("HOST KEY MISMATCH"),
        "the journal must name HOST KEY MISMATCH: {f:?}"
    );
    let since_start = f.at_ms - run_started_ms(&journal);
    assert!(
        since_start < 2_000,
        "the task failed {since_start} ms after the run started; a changed key must fail at once"
    );
    assert!(
        out.contains("HOST KEY MISMATCH"),
        "the operator sees why on the terminal:\n{out}"
    );
    assert!(
        matches!(
            events_of(&journal, &format!("hostinfo/hostinfo@{}", host.name())).as_slice(),
            [Event::TaskSkipped { .. }]
        ),
        "hostinfo must be skipped"
    );
    // Nothing happened on the host.
    assert!(
        !host.log().contains("Accepted"),
        "no login may have been accepted:\n{}",
        host.log()
    );
    assert_eq!(snapshot(&host.home()), home, "the login user's home changed");
    assert_eq!(
        listing(&host.path("/etc/drover")),
        Vec::<String>::new(),
        "/etc/drover on the host"
    );
    assert_eq!(listing(&host.path("/tmp")), Vec::<String>::new(), "/tmp on the host");
    println!(
        "changed host key: failed {since_start} ms after the run started; test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Test 6: nothing listens on the port: every attempt the policy allows,
/// each a transient failure naming the address and port.
#[test]
fn an_unreachable_port_fails_after_max_attempts_transient_naming_address_and_port() {
    let started = Instant::now();
    let fleet = operator_fleet(1);
    let host = fleet.host(0);
    let site = Site::new();
    site.trust(&fleet);
    // The host's address, a port nothing listens on there.
    let port = 2299;
    assert!(
        std::net::TcpStream::connect((host.address(), port)).is_err(),
        "something listens on {}:{port}",
        host.address()
    );
    let ssh = Ssh {
        port: Some(port),
        ..Ssh::operator(&fleet)
    };
    site.inventory(&[Srv::on(host, &ssh)], "");
    let workflow = site.workflow("closed", 10, RETRY_3);
    let o = site.drover().arg("run").arg(&workflow).output().expect("drover run");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let id = site.only_run();
    let journal = site.journal(&id);
    let node = format!("check-servers/{}", host.name());
    let failed = failures(&journal, &node);
    assert_eq!(failed.len(), 3, "max_attempts = 3: {:?}", events_of(&journal, &node));
    assert_eq!(attempts(&journal, &node), 3);
    let want = format!("{}:{port}", host.address());
    for (i, f) in failed.iter().enumerate() {
        assert_eq!(f.attempt as usize, i + 1, "{f:?}");
        assert_eq!(f.kind, FailureKind::Transient, "{f:?}");
        assert_eq!(f.will_retry, i < 2, "{f:?}");
        assert!(f.error.contains(&want), "the reason must name {want}: {f:?}");
    }
    println!("unreachable port: {:.1} s", started.elapsed().as_secs_f64());
}

/// Test 7: `ssh.become = "sudo"` for a user without the sudo right.
#[test]
fn sudo_refused_fails_at_once_permanently_naming_sudo() {
    let started = Instant::now();
    let fleet = TestFleet::builder()
        .hosts(1)
        .port(PORT)
        .private_dir("/etc/drover")
        .start()
        .expect("a host without sudo rights");
    let host = fleet.host(0);
    let site = Site::new();
    site.trust(&fleet);
    site.inventory(&[Srv::on(host, &Ssh::operator(&fleet))], "");
    let workflow = site.workflow("nosudo", 10, RETRY_5);
    let o = site.drover().arg("run").arg(&workflow).output().expect("drover run");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let id = site.only_run();
    let journal = site.journal(&id);
    let node = format!("check-servers/{}", host.name());
    let failed = failures(&journal, &node);
    assert_eq!(failed.len(), 1, "one attempt only: {:?}", events_of(&journal, &node));
    let f = &failed[0];
    assert_eq!(f.kind, FailureKind::Permanent, "{f:?}");
    assert!(f.error.contains("sudo"), "the reason must name sudo: {f:?}");
    let since_start = f.at_ms - run_started_ms(&journal);
    assert!(since_start < 2_000, "failed {since_start} ms after the start");
    assert_eq!(listing(&host.path("/etc/drover")), Vec::<String>::new());
    println!("sudo refused: {:.1} s", started.elapsed().as_secs_f64());
}

/// Test 8: `drover ping` and `drover inventory` on an inventory file of
/// existing servers.
#[test]
fn ping_and_inventory_on_an_inventory_file_of_existing_servers() {
    let started = Instant::now();
    let fleet = operator_fleet(3);
    let site = Site::new();
    site.trust(&fleet);
    let ssh = Ssh::operator(&fleet);
    let tagged = [
        (["web", "debian"], "web"),
        (["web", "ubuntu"], "web"),
        (["db", "debian"], "db"),
    ];
    let servers: Vec<Srv> = fleet
        .hosts()
        .iter()
        .zip(tagged)
        .map(|(h, (tags, group))| Srv {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            groups: vec![group.to_string()],
            ..Srv::on(h, &ssh)
        })
        .collect();
    let inventory = site.inventory(
        &servers,
        r#"
        drover.GroupDef {name = "web", description = "the web servers"}
        drover.GroupDef {name = "db"}
        drover.GroupDef {name = "prod", groups = ["web", "db"]}
        drover.GroupDef {
            name = "on-debian"
            criteria = [drover.Criterion {field = "tag", value = "debian"}]
        }
"#,
    );
    let names: Vec<&str> = fleet.hosts().iter().map(|h| h.name()).collect();
    let listed = |args: &[&str]| -> Vec<String> {
        let o = site
            .drover()
            .args(["inventory", "list"])
            .arg(&inventory)
            .args(args)
            .output()
            .expect("drover inventory list");
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "inventory list {args:?}:\n{out}");
        out.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .filter(|s| names.contains(s))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(listed(&[]), names, "every server");
    assert_eq!(listed(&["--tag", "web,debian"]), [names[0]], "--tag web,debian");
    assert_eq!(listed(&["--tag", "debian,!db"]), [names[0]], "--tag debian,!db");
    assert_eq!(listed(&["--group", "db"]), [names[2]], "--group db");
    assert_eq!(listed(&["--group", "prod", "--tag", "debian"]), [names[0], names[2]]);
    assert_eq!(
        listed(&["--group", "on-debian"]),
        [names[0], names[2]],
        "a criteria group"
    );
    let o = site
        .drover()
        .args(["inventory", "list"])
        .arg(&inventory)
        .args(["--tag", "web"])
        .output()
        .expect("drover inventory list");
    let out = text(&o);
    let row = out
        .lines()
        .find(|l| l.starts_with(names[1]))
        .unwrap_or_else(|| panic!("no row for {}:\n{out}", names[1]));
    assert!(
        row.contains("static") && row.contains(&fleet.host(1).address().to_string()) && row.contains("prod,web"),
        "{row}"
    );
    assert!(out.contains("2 of 3 servers"), "{out}");

    let o = site
        .drover()
        .args(["inventory", "groups"])
        .arg(&inventory)
        .output()
        .expect("drover inventory groups");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let group = |g: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{g} ")))
            .unwrap_or_else(|| panic!("no group {g}:\n{out}"))
            .to_string()
    };
    assert!(group("prod").contains("contains web,db"), "{out}");
    assert!(group("prod").contains(&names.join(",")), "{out}");
    assert!(group("on-debian").contains("1 criteria"), "{out}");
    assert!(
        group("on-debian").contains(&format!("{},{}", names[0], names[2])),
        "{out}"
    );

    // Every host answers.
    let o = site.drover().arg("ping").arg(&inventory).output().expect("drover ping");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for (host, name) in fleet.hosts().iter().zip(&names) {
        assert!(
            out.lines()
                .any(|l| l.starts_with("OK ") && l.contains(name) && l.contains(&host.address().to_string())),
            "no OK line for {name}:\n{out}"
        );
    }
    assert!(out.contains("3 of 3 reachable"), "{out}");

    // One stopped: FAIL with the reason, a non-zero exit.
    let down = fleet.host(1);
    down.stop().expect("stop a host");
    let o = site.drover().arg("ping").arg(&inventory).output().expect("drover ping");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(4), "a server down must fail the ping:\n{out}");
    let fail = out
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains(down.name()))
        .unwrap_or_else(|| panic!("no FAIL line for {}:\n{out}", down.name()));
    assert!(
        fail.contains(&format!("{}:{PORT}", down.address())) && fail.contains("refused"),
        "the FAIL line must give the reason: {fail}"
    );
    assert_eq!(out.lines().filter(|l| l.starts_with("OK ")).count(), 2, "{out}");
    assert!(out.contains("2 of 3 reachable"), "{out}");
    // A group without the stopped host still answers.
    let o = site
        .drover()
        .arg("ping")
        .arg(&inventory)
        .args(["--group", "db"])
        .output()
        .expect("drover ping");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    println!("ping and inventory: {:.1} s", started.elapsed().as_secs_f64());
}

/// Test 1's check after each rollback: every host still runs and answers
/// (sshd's banner on every one, a real login on a few), its login user's
/// home is as it was, no run directory is left in /tmp and hostinfo is
/// gone (its remove.sh ran).
fn assert_machines_untouched(fleet: &TestFleet, homes: &[Snapshot], when: &str) {
    for (i, (host, home)) in fleet.hosts().iter().zip(homes).enumerate() {
        assert!(host.is_running(), "{}: sshd is not running {when}", host.name());
        assert!(
            banner(host).starts_with("SSH-2.0-"),
            "{}: sshd does not answer {when}",
            host.name()
        );
        if i % 25 == 0 {
            let out = fleet.run(host, "hostname").expect("login");
            assert_eq!(out.trim(), host.name(), "{when}");
        }
        assert_eq!(
            &snapshot(&host.home()),
            home,
            "{}: the login user's home changed {when}",
            host.name()
        );
        assert_no_run_dir(host);
        assert!(
            !host.path("/etc/drover/hostinfo").exists(),
            "{}: hostinfo not removed {when}",
            host.name()
        );
    }
}

/// Every task of test 1's run was undone: hostinfo by its remove.sh, each
/// server forgotten (the journal never says a server was deleted).
fn assert_undone(fleet: &TestFleet, journal: &[drover_state::Entry]) {
    for host in fleet.hosts() {
        for (node, action) in [
            (format!("hostinfo/hostinfo@{}", host.name()), "remove"),
            (format!("check-servers/{}", host.name()), "forget server"),
        ] {
            let events = events_of(journal, &node);
            let undo: Vec<&str> = events
                .iter()
                .filter_map(|e| match e {
                    Event::UndoStarted { action } => Some(action.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(undo, [action], "{node}: {events:?}");
            assert!(
                matches!(events.last(), Some(Event::UndoSucceeded { .. })),
                "{node} was not undone: {events:?}"
            );
        }
    }
}

/// `command` on this machine, trimmed.
fn machine(command: &str) -> String {
    let o = std::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .expect("sh");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
