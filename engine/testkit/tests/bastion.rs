//! Targets behind bastions, reached with the real OpenSSH client's
//! `-J` and `ProxyJump`.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{exists, ok, run, ssh};
use drover_testkit::{BastionTopology, Sudo, TestFleet};

/// `ssh -F <config> …`: the configuration is also what the jump hosts'
/// ssh processes read (ssh passes `-F` on to them; `-o` and `-i` it does
/// not).
fn ssh_with_config(config: &Path) -> Command {
    let mut command = Command::new("ssh");
    command.arg("-F").arg(config);
    command
}

#[test]
fn targets_are_reachable_only_through_the_bastion() -> anyhow::Result<()> {
    let topology = BastionTopology::builder()
        .targets(2)
        .fleet(TestFleet::builder().port(2222).sudo(Sudo::All))
        .start()?;
    let fleet = topology.fleet();
    let bastion = &topology.bastions()[0];
    let config = fleet.dir().join("ssh_config");
    topology.ssh_config().write(&config)?;

    // The bastion answers directly, as itself.
    assert_eq!(
        ok(
            &mut ssh(Some(fleet.client_key()), fleet.known_hosts(), bastion),
            &["hostname"]
        ),
        "bastion-1"
    );

    for target in topology.targets() {
        // Directly: no route, at once.
        let t = Instant::now();
        let direct = run(
            &mut ssh(Some(fleet.client_key()), fleet.known_hosts(), target),
            &["hostname"],
        );
        assert!(!direct.ok, "{} was reached directly", target.name());
        assert!(direct.stderr.contains("No route to host"), "{}", direct.stderr);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(TcpStream::connect_timeout(&target.socket_addr().into(), Duration::from_secs(2)).is_err());

        // With -J through the bastion.
        let jump = topology.jump();
        let out = ok(
            &mut ssh_with_config(&config),
            &[
                "-J",
                &jump,
                "-p",
                &target.port().to_string(),
                &target.destination(),
                "hostname; sudo -n id -un",
            ],
        );
        assert_eq!(out, format!("{}\nroot", target.name()));

        // With ProxyJump from the written configuration.
        assert_eq!(
            ok(&mut ssh_with_config(&config), &[target.name(), "hostname"]),
            target.name()
        );

        // The target saw the connection come from the bastion's side.
        assert!(
            target.log().contains("Accepted publickey for fleet from 198.18."),
            "{}",
            target.log()
        );
    }
    // The bastion forwarded (direct-tcpip), it did not route.
    let log = bastion.log();
    assert!(log.matches("Accepted publickey for fleet").count() >= 4, "{log}");
    Ok(())
}

#[test]
fn two_bastions_in_a_chain() -> anyhow::Result<()> {
    let topology = BastionTopology::builder()
        .hops(2)
        .targets(1)
        .fleet(TestFleet::builder().port(2222))
        .start()?;
    let fleet = topology.fleet();
    let [first, second] = topology.bastions() else {
        panic!("two bastions");
    };
    let target = topology.target(0);
    let config = fleet.dir().join("ssh_config");
    topology.ssh_config().write(&config)?;
    let text = std::fs::read_to_string(&config)?;
    assert!(
        text.contains("Host bastion-2\n") && text.contains("    ProxyJump bastion-1\n"),
        "{text}"
    );
    assert!(
        text.contains("Host target-1\n") && text.contains("    ProxyJump bastion-2\n"),
        "{text}"
    );

    // Only the first bastion is reachable from here.
    for host in [second, target] {
        let direct = run(&mut ssh(Some(fleet.client_key()), fleet.known_hosts(), host), &["true"]);
        assert!(
            !direct.ok && direct.stderr.contains("No route to host"),
            "{}",
            direct.stderr
        );
    }
    // The first bastion cannot reach the target either: one hop is not enough.
    let first_jump = format!("{}:{}", first.destination(), first.port());
    let one_hop = run(
        &mut ssh_with_config(&config),
        &[
            "-J",
            &first_jump,
            "-p",
            &target.port().to_string(),
            &target.destination(),
            "true",
        ],
    );
    assert!(!one_hop.ok, "the target was reached through bastion-1 alone");

    // Both hops: with -J a,b and with the configuration's ProxyJump chain.
    let out = ok(
        &mut ssh_with_config(&config),
        &[
            "-J",
            &topology.jump(),
            "-p",
            &target.port().to_string(),
            &target.destination(),
            "hostname",
        ],
    );
    assert_eq!(out, "target-1");
    assert_eq!(ok(&mut ssh_with_config(&config), &["target-1", "hostname"]), "target-1");
    assert_eq!(
        ok(&mut ssh_with_config(&config), &["bastion-2", "hostname"]),
        "bastion-2"
    );
    Ok(())
}

#[test]
fn hashed_known_hosts_through_the_bastion() -> anyhow::Result<()> {
    let topology = BastionTopology::builder().start()?;
    let fleet = topology.fleet();
    let mut config = topology.ssh_config();
    config.default_option("UserKnownHostsFile", &fleet.known_hosts_hashed().display().to_string());
    let path = fleet.dir().join("ssh_config.hashed");
    config.write(&path)?;
    assert_eq!(ok(&mut ssh_with_config(&path), &["target-1", "hostname"]), "target-1");

    // A rotated target key is refused through the bastion too.
    topology.target(0).rotate_host_key()?;
    let refused = run(&mut ssh_with_config(&path), &["target-1", "true"]);
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        refused.stderr
    );
    Ok(())
}

#[test]
fn nothing_is_left_after_drop() -> anyhow::Result<()> {
    let topology = BastionTopology::builder().hops(2).targets(2).start()?;
    let namespaces = topology.namespaces().to_vec();
    let interfaces = topology.interfaces();
    let hidden = topology.hidden_networks();
    let dir = topology.fleet().dir().to_path_buf();
    let pids: Vec<u32> = topology.fleet().hosts().iter().flat_map(|h| h.processes()).collect();
    assert_eq!(pids.len(), 4);
    for ns in &namespaces {
        assert!(Path::new("/run/netns").join(ns).exists(), "{ns}");
    }
    let routes = ok(
        Command::new("ip").args(["-4", "route", "show", "type", "unreachable"]),
        &[],
    );
    for net in &hidden {
        assert!(routes.contains(net.as_str()), "{net} not in {routes}");
    }

    drop(topology);
    let left: Vec<u32> = pids.iter().copied().filter(|&p| exists(p)).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    for ns in &namespaces {
        assert!(!Path::new("/run/netns").join(ns).exists(), "namespace {ns} left");
    }
    let links = ok(Command::new("ip").args(["-o", "link", "show"]), &[]);
    for interface in &interfaces {
        assert!(
            !links.contains(&format!(": {interface}@")),
            "interface {interface} left"
        );
        assert!(
            !links.contains(&format!(": {interface}:")),
            "interface {interface} left"
        );
    }
    let routes = ok(
        Command::new("ip").args(["-4", "route", "show", "type", "unreachable"]),
        &[],
    );
    for net in &hidden {
        assert!(!routes.contains(net.as_str()), "route {net} left");
    }
    assert!(!dir.exists());
    Ok(())
}
