//! Fleets of real sshd hosts, checked with the real OpenSSH client.

mod common;

use std::io::Read as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{exists, ok, run, ssh, ssh_as};
use drover_testkit::{
    Ed25519Key, HostSpec, KnownHostsStyle, SshAgent, Sudo, TestFleet, UserSpec, known_hosts, public_path,
};

#[test]
fn login_as_the_non_root_user_on_the_chosen_port() -> anyhow::Result<()> {
    let fleet = TestFleet::builder().hosts(2).port(2222).start()?;
    let known = std::fs::read_to_string(fleet.known_hosts())?;
    for host in fleet.hosts() {
        assert_eq!(host.port(), 2222);
        // Port 2222: known_hosts names it [address]:2222.
        assert!(
            known.contains(&format!("[{}]:2222 ssh-ed25519 ", host.address())),
            "{known}"
        );
        let out = ok(
            &mut ssh(Some(fleet.client_key()), fleet.known_hosts(), host),
            &["hostname; id -un; id -u; echo $HOME; echo $SHELL"],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines, [host.name(), "fleet", "2001", "/home/fleet", "/bin/sh"]);
        assert!(host.log().contains("Accepted publickey for fleet"), "{}", host.log());
    }
    // The user exists only inside the hosts.
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    assert!(!passwd.lines().any(|l| l.starts_with("fleet:")));
    // Root may not log in, even with the key.
    let host = fleet.host(0);
    let mut root = ssh_as(Some(fleet.client_key()), fleet.known_hosts(), host, "root");
    let refused = run(&mut root, &["true"]);
    assert!(!refused.ok);
    Ok(())
}

#[test]
fn port_22_and_plain_known_hosts_without_brackets() -> anyhow::Result<()> {
    let fleet = TestFleet::start(1)?;
    let host = fleet.host(0);
    assert_eq!(host.port(), 22);
    let known = std::fs::read_to_string(fleet.known_hosts())?;
    assert!(
        known.starts_with(&format!("{} ssh-ed25519 ", host.address())),
        "{known}"
    );
    assert_eq!(
        ok(
            &mut ssh(Some(fleet.client_key()), fleet.known_hosts(), host),
            &["hostname"]
        ),
        host.name()
    );
    Ok(())
}

#[test]
fn sudo_rights_per_host() -> anyhow::Result<()> {
    let sudoers_before = std::fs::read("/etc/sudoers")?;
    let fleet = TestFleet::builder()
        .port(2222)
        .extra_user(UserSpec::new("deploy", 2002))
        .host(HostSpec::new("admin").sudo(Sudo::All))
        .host(HostSpec::new("plain"))
        .host(HostSpec::new("runas").sudo(Sudo::RunAs("deploy".into())))
        .start()?;
    let ssh_to = |name: &str| {
        let host = fleet.by_name(name).unwrap_or_else(|| panic!("no host {name}"));
        ssh(Some(fleet.client_key()), fleet.known_hosts(), host)
    };
    assert_eq!(ok(&mut ssh_to("admin"), &["sudo -n true && sudo -n id -un"]), "root");

    let refused = run(&mut ssh_to("plain"), &["sudo -n true"]);
    assert!(!refused.ok);
    assert!(refused.stderr.contains("a password is required"), "{}", refused.stderr);

    assert_eq!(ok(&mut ssh_to("runas"), &["sudo -n -u deploy id -un"]), "deploy");
    let as_root = run(&mut ssh_to("runas"), &["sudo -n true"]);
    assert!(!as_root.ok, "sudo to root must be refused on runas");

    // The extra user logs in with the same key, to a home of its own.
    let host = fleet.by_name("plain").unwrap_or_else(|| panic!("no host plain"));
    let mut deploy = ssh_as(Some(fleet.client_key()), fleet.known_hosts(), host, "deploy");
    assert_eq!(ok(&mut deploy, &["id -un; echo $HOME"]), "deploy\n/home/deploy");

    // Nothing of this reached the machine's sudoers.
    assert_eq!(std::fs::read("/etc/sudoers")?, sudoers_before);
    Ok(())
}

#[test]
fn agent_based_login() -> anyhow::Result<()> {
    let fleet = TestFleet::builder().hosts(1).port(2222).start()?;
    let host = fleet.host(0);
    let agent = SshAgent::with_key(fleet.client_key())?;
    assert_eq!(agent.keys()?.len(), 1);
    assert!(agent.keys()?[0].starts_with(fleet.client_public_key().rsplit_once(' ').map_or("", |(k, _)| k)));
    let socket = agent.socket().to_path_buf();
    let pid = agent.pid();

    // No -i: the only key is the agent's.
    let mut login = ssh(None, fleet.known_hosts(), host);
    login.env("SSH_AUTH_SOCK", &socket).env("HOME", fleet.dir());
    assert_eq!(ok(&mut login, &["id -un"]), "fleet");

    // An agent without the key does not get in.
    let empty = SshAgent::start()?;
    let mut refused = ssh(None, fleet.known_hosts(), host);
    refused.env("SSH_AUTH_SOCK", empty.socket()).env("HOME", fleet.dir());
    let outcome = run(&mut refused, &["true"]);
    assert!(!outcome.ok);
    assert!(outcome.stderr.contains("Permission denied"), "{}", outcome.stderr);

    drop(agent);
    assert!(!exists(pid), "ssh-agent {pid} still runs");
    assert!(!socket.exists());
    Ok(())
}

#[test]
fn hashed_known_hosts_are_accepted() -> anyhow::Result<()> {
    let fleet = TestFleet::builder().hosts(2).port(2222).start()?;
    let hashed = std::fs::read_to_string(fleet.known_hosts_hashed())?;
    assert_eq!(hashed.lines().count(), 2);
    assert!(hashed.lines().all(|l| l.starts_with("|1|")), "{hashed}");
    assert!(!hashed.contains("127.0."));
    for host in fleet.hosts() {
        // ssh-keygen finds each host in the hashed file.
        let found = ok(
            std::process::Command::new("ssh-keygen")
                .arg("-F")
                .arg(host.known_hosts_pattern())
                .arg("-f")
                .arg(fleet.known_hosts_hashed()),
            &[],
        );
        assert!(found.contains(&host.host_key()), "{found}");
        let out = ok(
            &mut ssh(Some(fleet.client_key()), fleet.known_hosts_hashed(), host),
            &["hostname"],
        );
        assert_eq!(out, host.name());
    }
    // Our hashing is ssh-keygen -H's: hash the plain file with it and
    // compare with ours for the salt it chose.
    let copy = fleet.dir().join("known_hosts.copy");
    std::fs::copy(fleet.known_hosts(), &copy)?;
    ok(
        std::process::Command::new("ssh-keygen").arg("-H").arg("-f").arg(&copy),
        &[],
    );
    let theirs = std::fs::read_to_string(&copy)?;
    let line = theirs.lines().next().unwrap_or_default();
    let salt_b64 = line.split('|').nth(2).unwrap_or_default();
    let salt = base64_decode(salt_b64);
    let salt: [u8; 20] = salt.try_into().unwrap_or_else(|_| panic!("salt of {line}"));
    let name = fleet.host(0).known_hosts_pattern();
    assert_eq!(
        line.split(' ').next(),
        Some(known_hosts::hash_name(&name, &salt).as_str())
    );
    Ok(())
}

#[test]
fn a_rotated_host_key_is_refused_until_known_hosts_is_rewritten() -> anyhow::Result<()> {
    let fleet = TestFleet::builder().hosts(2).port(2222).start()?;
    let (host, other) = (fleet.host(0), fleet.host(1));
    let old_key = host.host_key();
    let old_pid = host.pid();
    let new_key = host.rotate_host_key()?;
    assert_ne!(old_key, new_key);
    assert_eq!(host.host_key(), new_key);
    assert_ne!(host.pid(), old_pid, "the host restarted");

    for known in [fleet.known_hosts(), fleet.known_hosts_hashed()] {
        let refused = run(&mut ssh(Some(fleet.client_key()), known, host), &["true"]);
        assert!(!refused.ok);
        assert!(
            refused.stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
            "{}",
            refused.stderr
        );
        // The other host is untouched.
        assert_eq!(
            ok(&mut ssh(Some(fleet.client_key()), known, other), &["hostname"]),
            other.name()
        );
    }

    let fresh = fleet.dir().join("known_hosts.fresh");
    fleet.write_known_hosts(&fresh, KnownHostsStyle::Hashed)?;
    assert_eq!(
        ok(&mut ssh(Some(fleet.client_key()), &fresh, host), &["hostname"]),
        host.name()
    );
    Ok(())
}

#[test]
fn stop_start_and_kill_one_host() -> anyhow::Result<()> {
    let fleet = TestFleet::builder().hosts(2).port(2222).start()?;
    let (host, other) = (fleet.host(0), fleet.host(1));
    let login = |h| {
        ok(
            &mut ssh(Some(fleet.client_key()), fleet.known_hosts(), h),
            &["hostname"],
        )
    };

    host.stop()?;
    assert!(!host.is_running() && host.pid().is_none());
    assert!(
        TcpStream::connect(host.socket_addr()).is_err(),
        "a stopped host refuses connections"
    );
    assert_eq!(login(other), other.name());

    host.start()?;
    assert!(host.is_running());
    // Same key after a restart: the known_hosts written at start still hold.
    assert_eq!(login(host), host.name());

    host.kill()?;
    assert!(TcpStream::connect(host.socket_addr()).is_err());
    host.start()?;
    assert_eq!(login(host), host.name());
    Ok(())
}

#[test]
fn files_the_hosts_scripts_write_are_readable_from_the_test() -> anyhow::Result<()> {
    let fleet = TestFleet::builder().hosts(1).port(2222).start()?;
    let host = fleet.host(0);
    let mut session = ssh(Some(fleet.client_key()), fleet.known_hosts(), host);
    let probe = format!("/tmp/testkit-probe-{}", std::process::id());
    ok(
        &mut session,
        &[&format!("echo in-home > ~/note; echo in-tmp > {probe}")],
    );
    assert_eq!(std::fs::read_to_string(host.path("/home/fleet/note"))?, "in-home\n");
    assert_eq!(std::fs::read_to_string(host.home().join("note"))?, "in-home\n");
    assert_eq!(std::fs::read_to_string(host.path(&probe))?, "in-tmp\n");
    // The host's /tmp is its own: nothing appeared in the machine's.
    assert!(!std::path::Path::new(&probe).exists());

    // SFTP works (Subsystem sftp).
    let upload = fleet.dir().join("upload.txt");
    std::fs::write(&upload, "via sftp\n")?;
    let mut sftp = std::process::Command::new("sftp");
    sftp.args([
        "-F",
        "/dev/null",
        "-b",
        "-",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
    ])
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", fleet.known_hosts().display()))
    .arg("-i")
    .arg(fleet.client_key())
    .arg("-P")
    .arg(host.port().to_string())
    .arg(host.destination())
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    let mut child = sftp.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        writeln!(stdin, "put {} uploaded.txt", upload.display())?;
    }
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(host.home().join("uploaded.txt"))?, "via sftp\n");
    Ok(())
}

#[test]
fn sshd_options_are_a_real_servers() -> anyhow::Result<()> {
    let default = TestFleet::builder().hosts(1).port(2222).start()?;
    let config = std::fs::read_to_string(default.host(0).sshd_config())?;
    for line in [
        "UsePAM no",
        "PasswordAuthentication no",
        "AuthenticationMethods publickey",
        "LogLevel INFO",
    ] {
        assert!(config.lines().any(|l| l == line), "{line} missing:\n{config}");
    }
    assert!(config.contains("Subsystem sftp "));
    assert!(!config.contains("MaxSessions"), "OpenSSH's default unless asked");
    // Ten sessions on one connection is OpenSSH's default MaxSessions.
    let log = default.host(0).log();
    assert!(log.contains("Server listening on"), "{log}");

    let limited = TestFleet::builder()
        .hosts(1)
        .port(2222)
        .max_sessions(3)
        .sshd_option("MaxStartups 50")
        .start()?;
    let config = std::fs::read_to_string(limited.host(0).sshd_config())?;
    assert!(config.lines().any(|l| l == "MaxSessions 3"));
    assert!(config.lines().any(|l| l == "MaxStartups 50"));
    Ok(())
}

#[test]
fn keys_are_what_openssh_reads() -> anyhow::Result<()> {
    let fleet = TestFleet::builder().hosts(1).port(2222).start()?;
    // ssh-keygen derives the same public key from our private key files.
    for key in [fleet.client_key().to_path_buf(), fleet.host(0).host_key_path()] {
        let derived = ok(
            std::process::Command::new("ssh-keygen").arg("-y").arg("-f").arg(&key),
            &[],
        );
        let written = std::fs::read_to_string(public_path(&key))?;
        assert_eq!(
            derived.split(' ').take(2).collect::<Vec<_>>(),
            written.split(' ').take(2).collect::<Vec<_>>()
        );
    }
    // A key made alone, written and read back.
    let key = Ed25519Key::generate("alone");
    let path = fleet.dir().join("alone");
    key.write(&path)?;
    let derived = ok(
        std::process::Command::new("ssh-keygen").arg("-y").arg("-f").arg(&path),
        &[],
    );
    assert_eq!(derived, key.public_line());
    Ok(())
}

#[test]
fn nothing_is_left_after_drop() -> anyhow::Result<()> {
    let fleet = TestFleet::builder().hosts(2).port(2222).start()?;
    let dir = fleet.dir().to_path_buf();
    let mut pids = Vec::new();
    for host in fleet.hosts() {
        // A daemon detached from the session, as a taskserv might start.
        ok(
            &mut ssh(Some(fleet.client_key()), fleet.known_hosts(), host),
            &["setsid sleep 600 </dev/null >/dev/null 2>&1 & echo started"],
        );
        let processes = host.processes();
        assert!(processes.len() >= 2, "sshd and the daemon: {processes:?}");
        pids.extend(processes);
    }
    drop(fleet);
    let left: Vec<u32> = pids.iter().copied().filter(|&p| exists(p)).collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    assert!(!dir.exists(), "{} left", dir.display());
    Ok(())
}

#[test]
fn a_panicking_test_leaves_nothing() -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let fleet = TestFleet::builder()
            .hosts(1)
            .port(2222)
            .start()
            .unwrap_or_else(|e| panic!("{e:#}"));
        let _ = tx.send((fleet.host(0).pid(), fleet.dir().to_path_buf()));
        panic!("the test fails while its fleet runs");
    })
    .join();
    assert!(outcome.is_err());
    let (pid, dir) = rx.recv()?;
    let pid = pid.unwrap_or_else(|| panic!("the host ran"));
    assert!(!exists(pid), "sshd {pid} survived the panic");
    assert!(!dir.exists());
    Ok(())
}

/// As root a fleet starts; as anyone else it is refused, saying why.
/// `errors_name_what_is_missing` runs this again as user nobody.
#[test]
fn a_fleet_starts_as_root_and_says_why_not_otherwise() {
    match TestFleet::start(1) {
        Ok(fleet) => {
            assert!(nix::unistd::geteuid().is_root(), "a fleet started without root");
            assert!(fleet.host(0).is_running());
        }
        Err(e) => {
            let err = format!("{e:#}");
            assert!(
                !nix::unistd::geteuid().is_root(),
                "a fleet did not start as root: {err}"
            );
            println!("ERROR: {err}");
        }
    }
}

#[test]
fn errors_name_what_is_missing() -> anyhow::Result<()> {
    // This test binary again, as user nobody.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe()?)
        .args([
            "--exact",
            "a_fleet_starts_as_root_and_says_why_not_otherwise",
            "--nocapture",
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ERROR: drover-testkit needs root (running as uid 65534)"),
        "{stdout}"
    );
    assert!(stdout.contains("make setup"), "{stdout}");
    Ok(())
}

#[test]
fn reserved_addresses_are_refused_with_a_reason() {
    let err = TestFleet::builder()
        .hosts(1)
        .addresses(std::net::Ipv4Addr::new(127, 0, 100, 1)..=std::net::Ipv4Addr::new(127, 0, 100, 9))
        .start()
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("local provider"), "{err}");
}

#[test]
fn a_hundred_hosts_start_and_answer() -> anyhow::Result<()> {
    let fleet = TestFleet::builder().hosts(100).port(2222).start()?;
    let started = fleet.startup_time();
    println!("100 hosts started in {:.3} s", started.as_secs_f64());
    assert!(started < Duration::from_secs(30), "start-up took {started:?}");

    // Every one answers with an SSH banner…
    let t = Instant::now();
    for host in fleet.hosts() {
        let mut stream = TcpStream::connect_timeout(&host.socket_addr().into(), Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut banner = [0u8; 8];
        stream.read_exact(&mut banner)?;
        assert_eq!(&banner, b"SSH-2.0-", "{}", host.name());
    }
    println!("100 banners in {:.3} s", t.elapsed().as_secs_f64());

    // …and logs in: `hostname` on every host, four clients at a time.
    let t = Instant::now();
    std::thread::scope(|scope| {
        for part in fleet.hosts().chunks(25) {
            let fleet = &fleet;
            scope.spawn(move || {
                for host in part {
                    let out = ok(
                        &mut ssh(Some(fleet.client_key()), fleet.known_hosts(), host),
                        &["hostname"],
                    );
                    assert_eq!(out, host.name());
                }
            });
        }
    });
    println!("100 logins (hostname) in {:.3} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn private_directories_are_each_hosts_own() -> anyhow::Result<()> {
    let fleet = TestFleet::builder()
        .hosts(2)
        .port(2222)
        .sudo(Sudo::All)
        .private_dir("/etc/drover-testkit-private")
        .start()?;
    for (i, host) in fleet.hosts().iter().enumerate() {
        fleet.run(
            host,
            &format!("sudo -n sh -c 'echo {i} > /etc/drover-testkit-private/who'"),
        )?;
    }
    for (i, host) in fleet.hosts().iter().enumerate() {
        let seen = fleet.run(host, "cat /etc/drover-testkit-private/who")?;
        assert_eq!(seen.trim(), i.to_string());
        let here = std::fs::read_to_string(host.path("/etc/drover-testkit-private/who"))?;
        assert_eq!(here.trim(), i.to_string());
    }
    // The machine's own directory stays empty.
    assert_eq!(std::fs::read_dir("/etc/drover-testkit-private")?.count(), 0);
    Ok(())
}
