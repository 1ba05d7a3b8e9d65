//! SSH as operators use it, against real OpenSSH hosts the tests start
//! themselves (drover-testkit): a non-root login user on port 2222, key
//! files, ssh-agent, the client configuration, hashed known_hosts, host key
//! policies, sudo, and targets that only a bastion reaches.
//!
//! Every target comes from [`resolve`], as the runner makes it. Hosts run
//! in namespaces of their own: what a remote script wrote is read through
//! [`Host::path`], its processes are found with [`Host::processes`].

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drover_core::model::{Become, HostKeyPolicy as Policy, SshAccess};
use drover_testkit::{BastionTopology, FleetBuilder, Host, KnownHostsStyle, SshAgent, Sudo, TestFleet, UserSpec};
use drover_transport::mask::Masker;
use drover_transport::ssh::{Defaults, Destination, RunDirs, SshError, SshHints, SshTarget, SshTransport, resolve};
use drover_transport::{Command, FailureKind, LogLine, Outcome, Stream, Transport, TransportError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Far longer than any test needs: a transport that hangs fails the test
/// instead of the whole run.
const HANG: Duration = Duration::from_secs(60);

/// The port the hosts listen on: not 22, as on many real fleets.
const PORT: u16 = 2222;

/// A fleet of `n` hosts on [`PORT`] with the login user `fleet` (uid 2001)
/// and a second user `app` (uid 2002), sudo rights as given.
fn fleet(n: usize, sudo: Sudo) -> Result<TestFleet> {
    fleet_builder(sudo).hosts(n).start()
}

fn fleet_builder(sudo: Sudo) -> FleetBuilder {
    TestFleet::builder()
        .port(PORT)
        .sudo(sudo)
        .extra_user(UserSpec::new("app", 2002))
}

/// drover's own files and the user's home, in directories of the test.
struct Local {
    state: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Local {
    fn new() -> Result<Local> {
        Ok(Local {
            state: tempfile::tempdir()?,
            home: tempfile::tempdir()?,
        })
    }

    fn defaults(&self) -> Defaults {
        Defaults {
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(5),
            home: self.home.path().to_path_buf(),
            ..Defaults::new(self.state.path().join("known_hosts"), self.state.path())
        }
    }

    /// The user's `~/.ssh`, made.
    fn ssh_dir(&self) -> Result<PathBuf> {
        let dir = self.home.path().join(".ssh");
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// The `ssh` block that reaches `fleet`'s hosts directly: user, port, key
/// file and the fleet's known_hosts.
fn access(fleet: &TestFleet) -> SshAccess {
    SshAccess {
        user: Some(fleet.user().to_string()),
        port: Some(PORT),
        key_file: Some(fleet.client_key().display().to_string()),
        known_hosts: Some(fleet.known_hosts().display().to_string()),
        ..SshAccess::default()
    }
}

/// The target of server `name` at `address`, as the runner resolves it.
fn target(name: &str, address: &str, access: &SshAccess, local: &Local) -> Result<SshTarget> {
    Ok(resolve(
        Destination {
            host: name,
            address,
            access,
            hints: &SshHints::default(),
        },
        &local.defaults(),
    )?)
}

async fn connect_to(host: &Host, access: &SshAccess, local: &Local) -> Result<SshTransport> {
    let target = target(host.name(), &host.address().to_string(), access, local)?;
    Ok(SshTransport::connect(&target).await?)
}

/// `/bin/sh -c script` run in /tmp on the server, logging to a local file.
/// What of drover's is in the host's /tmp.
fn drover_files(host: &drover_testkit::Host) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(host.path("/tmp"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("drover"))
        .collect())
}

fn sh(log_dir: &Path, script: &str) -> Command {
    Command {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into(), "script".into()],
        script: None,
        files: None,
        remove_run_dir: false,
        env: Vec::new(),
        cwd: PathBuf::from("/tmp"),
        timeout: None,
        log: log_dir.join("task.log"),
        mask: Masker::none(),
    }
}

async fn run(transport: &SshTransport, cmd: Command) -> Result<(Outcome, Vec<LogLine>)> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = tokio::time::timeout(HANG, transport.exec(cmd, Some(tx), CancellationToken::new())).await??;
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push(line);
    }
    Ok((outcome, lines))
}

/// Runs `script`, which must succeed, and returns its standard output.
async fn stdout_of(transport: &SshTransport, log_dir: &Path, script: &str) -> Result<Vec<String>> {
    let (outcome, lines) = run(transport, sh(log_dir, script)).await?;
    let out: Vec<String> = lines
        .iter()
        .filter(|l| l.stream == Stream::Stdout)
        .map(|l| l.line.clone())
        .collect();
    if outcome != Outcome::Exited(0) {
        bail!("{script}: {outcome:?}: {lines:?}");
    }
    Ok(out)
}

/// The `SshError` in a transport error.
fn ssh_error(error: &TransportError) -> Option<&SshError> {
    match error {
        TransportError::Ssh(e) => Some(e),
        _ => None,
    }
}

/// A run id no other test uses.
fn run_id(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// sshd's count of accepted logins so far.
fn logins(host: &Host) -> usize {
    host.log().matches("Accepted publickey").count()
}

/// The host's processes whose command line contains `marker`.
fn processes_with(host: &Host, marker: &str) -> Vec<u32> {
    host.processes()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// The host's processes whose command line is exactly `args`.
fn processes_running(host: &Host, args: &[&str]) -> Vec<u32> {
    let wanted: String = args.iter().map(|a| format!("{a}\0")).collect();
    host.processes()
        .into_iter()
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes()))
        .collect()
}

/// The uid `pid` runs as.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs test `name` of this binary in a child process with `env` added:
/// for state that is process-wide, such as `SSH_AUTH_SOCK`.
fn in_child(name: &str, env: &[(&str, String)]) -> Result<()> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("DROVER_TEST_CHILD", name);
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !text.contains(&format!("child {name} ok")) {
        bail!("child test {name} failed:\n{text}");
    }
    Ok(())
}

/// Whether this process is the child [`in_child`] started for `name`.
fn is_child(name: &str) -> bool {
    std::env::var("DROVER_TEST_CHILD").is_ok_and(|n| n == name)
}

#[tokio::test]
async fn a_non_root_user_on_port_2222_with_a_key_file() -> Result<()> {
    let fleet = fleet(1, Sudo::None)?;
    let host = fleet.host(0);
    let local = Local::new()?;
    let transport = connect_to(host, &access(&fleet), &local).await?;
    let logs = tempfile::tempdir()?;
    assert_eq!(
        stdout_of(&transport, logs.path(), "id -un; id -u").await?,
        ["fleet", "2001"]
    );

    // The run directory is the login user's, private, under /tmp.
    let id = run_id("plain");
    let run_dir = transport.run_dir(&id).await?;
    assert_eq!(run_dir, format!("/tmp/drover-{id}"));
    // Staged scripts run.
    let tree = tempfile::tempdir()?;
    std::fs::write(tree.path().join("hello.sh"), "#!/bin/sh\necho hello from $(id -un)\n")?;
    std::fs::set_permissions(tree.path().join("hello.sh"), std::fs::Permissions::from_mode(0o755))?;
    transport.stage(tree.path(), &format!("{run_dir}/t")).await?;
    let meta = std::fs::metadata(host.path(&run_dir))?;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (2001, 0o700));
    let mut cmd = sh(logs.path(), "");
    cmd.program = format!("{run_dir}/t/hello.sh");
    cmd.args.clear();
    let (outcome, lines) = run(&transport, cmd).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(lines[0].line, "hello from fleet");

    transport.finish(false).await?;
    assert!(!host.path(&run_dir).exists(), "the run directory is removed");
    assert_eq!(
        drover_files(host)?,
        Vec::<String>::new(),
        "nothing of drover's left in /tmp"
    );
    Ok(())
}

/// ssh-agent's keys, no key file: `SSH_AUTH_SOCK` is process-wide, so the
/// client part runs in a child process with its own environment.
#[test]
fn a_non_root_user_through_ssh_agent_without_a_key_file() -> Result<()> {
    if std::env::var_os("DROVER_TEST_CHILD").is_some() {
        return Ok(());
    }
    let fleet = fleet(1, Sudo::None)?;
    let agent: SshAgent = fleet.agent()?;
    let host = fleet.host(0);
    in_child(
        "agent_child",
        &[
            ("SSH_AUTH_SOCK", agent.socket().display().to_string()),
            ("DROVER_TEST_ADDRESS", host.address().to_string()),
            ("DROVER_TEST_KNOWN_HOSTS", fleet.known_hosts().display().to_string()),
        ],
    )?;
    assert_eq!(logins(host), 1, "{}", host.log());
    Ok(())
}

/// The client side of [`a_non_root_user_through_ssh_agent_without_a_key_file`].
#[tokio::test]
async fn agent_child() -> Result<()> {
    if !is_child("agent_child") {
        return Ok(());
    }
    let address = std::env::var("DROVER_TEST_ADDRESS")?;
    let access = SshAccess {
        user: Some("fleet".into()),
        port: Some(PORT),
        known_hosts: Some(std::env::var("DROVER_TEST_KNOWN_HOSTS")?),
        ..SshAccess::default()
    };
    // A home without keys: only the agent's can work.
    let local = Local::new()?;
    let target = target("agent-1", &address, &access, &local)?;
    assert_eq!(target.key_file, None);
    assert!(target.use_agent && target.identity_files.is_empty());
    let transport = SshTransport::connect(&target).await?;
    let logs = tempfile::tempdir()?;
    assert_eq!(stdout_of(&transport, logs.path(), "id -un").await?, ["fleet"]);
    transport.finish(false).await?;
    println!("child agent_child ok");
    Ok(())
}

#[tokio::test]
async fn the_client_configuration_gives_host_name_user_port_and_identity_file() -> Result<()> {
    let fleet = fleet(1, Sudo::None)?;
    let host = fleet.host(0);
    let logs = tempfile::tempdir()?;

    // ~/.ssh/config, ~/.ssh/known_hosts (hashed) and a key in ~/.ssh.
    let local = Local::new()?;
    let ssh_dir = local.ssh_dir()?;
    std::fs::copy(fleet.client_key(), ssh_dir.join("fleet_key"))?;
    std::fs::copy(fleet.known_hosts_hashed(), ssh_dir.join("known_hosts"))?;
    let hashed = std::fs::read_to_string(ssh_dir.join("known_hosts"))?;
    assert!(hashed.starts_with("|1|"), "{hashed}");
    std::fs::write(
        ssh_dir.join("config"),
        format!(
            "Host web-cfg web-other\n\
             \x20   HostName {}\n\
             \x20   Port {PORT}\n\
             \x20   User fleet\n\
             \x20   IdentityFile ~/.ssh/fleet_key\n\
             Host *\n\
             \x20   User root\n\
             \x20   Port 22\n",
            host.address()
        ),
    )?;
    let by_alias = target_of("web-cfg", &SshAccess::default(), &local)?;
    assert_eq!(
        (by_alias.address.as_str(), by_alias.port, by_alias.user.as_str()),
        (host.address().to_string().as_str(), PORT, "fleet")
    );
    assert_eq!(by_alias.key_file, Some(ssh_dir.join("fleet_key")));
    let transport = SshTransport::connect(&by_alias).await?;
    assert_eq!(stdout_of(&transport, logs.path(), "id -un").await?, ["fleet"]);
    transport.finish(false).await?;

    // The same from `ssh.config_file` (relative to the workflow), with an
    // empty home; the workflow's port beats the configuration's.
    let local = Local::new()?;
    let conf_dir = local.state.path().join("conf");
    std::fs::create_dir_all(&conf_dir)?;
    std::fs::write(
        conf_dir.join("ssh_config"),
        format!(
            "Host db-*\n\
             \x20   HostName {}\n\
             \x20   Port 22\n\
             \x20   User fleet\n\
             \x20   IdentityFile {}\n",
            host.address(),
            fleet.client_key().display()
        ),
    )?;
    let access = SshAccess {
        config_file: Some("conf/ssh_config".into()),
        port: Some(PORT),
        known_hosts: Some(fleet.known_hosts_hashed().display().to_string()),
        ..SshAccess::default()
    };
    let transport = SshTransport::connect(&target_of("db-1", &access, &local)?).await?;
    assert_eq!(stdout_of(&transport, logs.path(), "id -un").await?, ["fleet"]);
    transport.finish(false).await?;

    // No key file anywhere and no agent: the default identity files.
    let local = Local::new()?;
    std::fs::copy(fleet.client_key(), local.ssh_dir()?.join("id_ed25519"))?;
    let access = SshAccess {
        key_file: None,
        ..self::access(&fleet)
    };
    let mut target = target(host.name(), &host.address().to_string(), &access, &local)?;
    assert_eq!(target.identity_files, [local.home.path().join(".ssh/id_ed25519")]);
    target.use_agent = false;
    let transport = SshTransport::connect(&target).await?;
    assert_eq!(stdout_of(&transport, logs.path(), "id -un").await?, ["fleet"]);
    transport.finish(false).await?;
    Ok(())
}

/// [`target`] for a server whose address is its name.
fn target_of(name: &str, access: &SshAccess, local: &Local) -> Result<SshTarget> {
    target(name, name, access, local)
}

/// [`access`] without the explicit known_hosts (drover's own and the
/// user's are read).
fn access_direct(fleet: &TestFleet) -> SshAccess {
    SshAccess {
        known_hosts: None,
        ..access(fleet)
    }
}

#[tokio::test]
async fn accept_new_records_a_new_host_and_still_refuses_a_changed_key() -> Result<()> {
    let fleet = fleet(1, Sudo::None)?;
    let host = fleet.host(0);
    let local = Local::new()?;
    let own = local.state.path().join("known_hosts");
    let access = SshAccess {
        host_key_policy: Policy::AcceptNew,
        ..access_direct(&fleet)
    };
    let transport = connect_to(host, &access, &local).await?;
    let logs = tempfile::tempdir()?;
    assert_eq!(stdout_of(&transport, logs.path(), "id -un").await?, ["fleet"]);
    transport.finish(false).await?;
    drop(transport);
    // Recorded in drover's own known_hosts, as `[address]:2222 key`.
    let recorded = std::fs::read_to_string(&own)?;
    assert_eq!(
        recorded,
        format!("{} {}\n", host.known_hosts_pattern(), host.host_key())
    );
    // Known now: a second connection does not record it again.
    connect_to(host, &access, &local).await?.finish(false).await?;
    assert_eq!(std::fs::read_to_string(&own)?, recorded);

    // The host is reinstalled: its new key is refused, naming the line.
    host.rotate_host_key()?;
    let error = connect_to(host, &access, &local)
        .await
        .err()
        .context("a changed key must be refused under accept-new")?;
    let error = error.downcast::<SshError>()?;
    assert!(matches!(error, SshError::HostKeyMismatch { line: 1, .. }), "{error}");
    assert_eq!(error.kind(), FailureKind::Permanent);
    assert!(error.to_string().contains(&format!("{}:1", own.display())), "{error}");
    assert_eq!(std::fs::read_to_string(&own)?, recorded, "nothing appended");

    // With `ssh.known_hosts`, that file is the one written.
    let given = local.state.path().join("given_known_hosts");
    let access = SshAccess {
        known_hosts: Some(given.display().to_string()),
        ..access
    };
    connect_to(host, &access, &local).await?.finish(false).await?;
    assert_eq!(
        std::fs::read_to_string(&given)?,
        format!("{} {}\n", host.known_hosts_pattern(), host.host_key())
    );
    Ok(())
}

#[tokio::test]
async fn strict_refuses_an_unknown_host() -> Result<()> {
    let fleet = fleet(1, Sudo::None)?;
    let host = fleet.host(0);
    let local = Local::new()?;
    let error = connect_to(host, &access_direct(&fleet), &local)
        .await
        .err()
        .context("an unknown host must be refused")?
        .downcast::<SshError>()?;
    assert!(matches!(error, SshError::UnknownHostKey { .. }), "{error}");
    assert_eq!(error.kind(), FailureKind::Permanent);
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("{}: unknown host key", host.name())),
        "{message}"
    );
    assert!(message.contains(&host.known_hosts_pattern()), "{message}");
    assert!(message.contains("known_hosts"), "{message}");
    assert!(
        !local.state.path().join("known_hosts").exists(),
        "strict writes nothing"
    );
    assert_eq!(logins(host), 0);
    Ok(())
}

#[tokio::test]
async fn a_changed_host_key_fails_at_once_permanently_and_runs_nothing() -> Result<()> {
    let fleet = fleet(1, Sudo::None)?;
    let host = fleet.host(0);
    let local = Local::new()?;
    let access = access(&fleet);
    let transport = connect_to(host, &access, &local).await?;
    let logs = tempfile::tempdir()?;
    assert_eq!(stdout_of(&transport, logs.path(), "true").await?, Vec::<String>::new());
    assert_eq!(logins(host), 1);

    // Reinstalled (new key, restarted): the open connection breaks, and
    // the reconnect meets the new key.
    host.rotate_host_key()?;
    let started = Instant::now();
    let error = transport
        .exec(sh(logs.path(), "touch /tmp/ran"), None, CancellationToken::new())
        .await
        .err()
        .context("must not run on a host with a changed key")?;
    let elapsed = started.elapsed();
    assert!(
        matches!(ssh_error(&error), Some(SshError::HostKeyMismatch { .. })),
        "{error}"
    );
    assert_eq!(error.kind(), FailureKind::Permanent);
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    // A new transport fails the same way, as fast.
    let started = Instant::now();
    let error = connect_to(host, &access, &local)
        .await
        .err()
        .context("refused")?
        .downcast::<SshError>()?;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(error, SshError::HostKeyMismatch { .. }), "{error}");
    assert_eq!(error.kind(), FailureKind::Permanent);
    assert!(!host.path("/tmp/ran").exists(), "nothing ran");
    assert_eq!(logins(host), 1, "no login after the change:\n{}", host.log());
    Ok(())
}

#[tokio::test]
async fn become_sudo_runs_as_root_or_as_the_become_user() -> Result<()> {
    let fleet = fleet(1, Sudo::All)?;
    let host = fleet.host(0);
    let local = Local::new()?;
    let logs = tempfile::tempdir()?;

    // As root: the environment (a secret) arrives, never on a command line.
    let access_root = SshAccess {
        become_method: Some(Become::Sudo),
        ..access(&fleet)
    };
    let transport = connect_to(host, &access_root, &local).await?;
    let secret = "s3cr3t 'quoted' $value";
    let mut cmd = sh(
        logs.path(),
        "id -u; id -un; printf '%s' \"$SECRET\" > /tmp/seen; \
         for p in $$ $PPID; do tr '\\0' ' ' < /proc/$p/cmdline; echo; done > /tmp/cmdlines; \
         ps -eo args > /tmp/ps 2>/dev/null || true",
    );
    cmd.env = vec![("SECRET".into(), secret.into())];
    let (outcome, lines) = run(&transport, cmd).await?;
    assert_eq!(outcome, Outcome::Exited(0), "{lines:?}");
    let out: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(out, ["0", "root"]);
    assert_eq!(std::fs::read_to_string(host.path("/tmp/seen"))?, secret);
    for file in ["/tmp/cmdlines", "/tmp/ps"] {
        let text = std::fs::read_to_string(host.path(file)).unwrap_or_default();
        assert!(!text.contains("s3cr3t"), "secret in {file}: {text}");
    }
    transport.finish(false).await?;

    // As `app`: the run directory and the staged files are app's, and
    // app runs them.
    let access_app = SshAccess {
        become_user: Some("app".into()),
        ..access_root
    };
    let transport = connect_to(host, &access_app, &local).await?;
    assert_eq!(stdout_of(&transport, logs.path(), "id -un").await?, ["app"]);
    let id = run_id("as-app");
    let run_dir = transport.run_dir(&id).await?;
    let tree = tempfile::tempdir()?;
    std::fs::create_dir(tree.path().join("lib"))?;
    std::fs::write(
        tree.path().join("run.sh"),
        "#!/bin/sh\n. \"$(dirname \"$0\")/lib/common.sh\"\necho \"$GREETING from $(id -un)\"\n",
    )?;
    std::fs::write(tree.path().join("lib/common.sh"), "GREETING=hello\n")?;
    std::fs::write(tree.path().join("secret.env"), "TOKEN=x\n")?;
    for (path, mode) in [("run.sh", 0o755), ("lib/common.sh", 0o644), ("secret.env", 0o600)] {
        std::fs::set_permissions(tree.path().join(path), std::fs::Permissions::from_mode(mode))?;
    }
    let staged = format!("{run_dir}/taskserv");
    transport.stage(tree.path(), &staged).await?;
    // The stage made the run directory, as the become user, private.
    let meta = std::fs::metadata(host.path(&run_dir))?;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (2002, 0o700));
    for (path, mode) in [
        ("", 0o700),
        ("run.sh", 0o755),
        ("lib/common.sh", 0o644),
        ("secret.env", 0o600),
    ] {
        let meta = std::fs::metadata(host.path(format!("{staged}/{path}")))?;
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (2002, mode), "{path:?}");
    }
    // Staging again replaces the files.
    std::fs::write(tree.path().join("lib/common.sh"), "GREETING=hi\n")?;
    transport.stage(tree.path(), &staged).await?;
    let mut cmd = sh(logs.path(), "");
    cmd.program = format!("{staged}/run.sh");
    cmd.args.clear();
    cmd.cwd = PathBuf::from(&run_dir);
    let (outcome, lines) = run(&transport, cmd).await?;
    assert_eq!(outcome, Outcome::Exited(0), "{lines:?}");
    assert_eq!(lines[0].line, "hi from app");
    // A missing script is a permanent error, found before anything runs.
    let mut cmd = sh(logs.path(), "");
    cmd.program = format!("{staged}/missing.sh");
    let error = transport
        .exec(cmd, None, CancellationToken::new())
        .await
        .err()
        .context("missing script")?;
    assert!(matches!(error, TransportError::NotFound { .. }), "{error}");
    assert_eq!(error.kind(), FailureKind::Permanent);

    // A symbolic link is refused before anything is sent; a failure of
    // the server's side is reported with what it said.
    std::os::unix::fs::symlink("/etc/passwd", tree.path().join("link"))?;
    let error = transport
        .stage(tree.path(), &format!("{run_dir}/other"))
        .await
        .err()
        .context("a symbolic link must be refused")?;
    assert!(error.to_string().contains("symbolic links"), "{error}");
    assert!(!host.path(format!("{run_dir}/other")).exists());
    std::fs::remove_file(tree.path().join("link"))?;
    let error = transport
        .stage(tree.path(), &format!("{staged}/run.sh/below-a-file"))
        .await
        .err()
        .context("a path below a file cannot be made")?;
    assert!(error.to_string().contains("extracting"), "{error}");
    assert!(error.to_string().contains("exit status"), "{error}");

    transport.remove(&staged).await?;
    assert!(!host.path(&staged).exists());
    transport.finish(false).await?;
    assert!(!host.path(&run_dir).exists());
    Ok(())
}

#[tokio::test]
async fn a_refused_sudo_is_permanent_and_nothing_runs() -> Result<()> {
    let fleet = fleet_builder(Sudo::None)
        .host(drover_testkit::HostSpec::new("no-sudo"))
        .host(drover_testkit::HostSpec::new("app-only").sudo(Sudo::RunAs("app".into())))
        .start()?;
    let local = Local::new()?;
    let become_root = SshAccess {
        become_method: Some(Become::Sudo),
        ..access(&fleet)
    };
    for name in ["no-sudo", "app-only"] {
        let host = fleet.by_name(name).context("host")?;
        let started = Instant::now();
        // Connecting runs nothing; the first command finds the refusal.
        let transport = connect_to(host, &become_root, &local).await?;
        let logs = tempfile::tempdir()?;
        let error = transport
            .exec(sh(logs.path(), "touch /tmp/ran"), None, CancellationToken::new())
            .await
            .err()
            .context("sudo must be refused")?;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(ssh_error(&error), Some(SshError::BecomeRefused { .. })),
            "{error}"
        );
        assert_eq!(error.kind(), FailureKind::Permanent);
        let message = error.to_string();
        for part in [name, "user fleet", "as root", "password is required"] {
            assert!(message.contains(part), "{part:?} missing in: {message}");
        }
        // Refused before anything was made or run.
        assert_eq!(drover_files(host)?, Vec::<String>::new());
    }
    // What sudoers allows works.
    let host = fleet.by_name("app-only").context("host")?;
    let access_app = SshAccess {
        become_user: Some("app".into()),
        ..become_root
    };
    let transport = connect_to(host, &access_app, &local).await?;
    let logs = tempfile::tempdir()?;
    assert_eq!(stdout_of(&transport, logs.path(), "id -un").await?, ["app"]);

    // The right is taken away while connected (the host's sudoers is
    // rewritten in place): the next command is refused, permanently, and
    // does not run.
    let sudoers = host.dir().join("etc/sudoers");
    let text = std::fs::read_to_string(&sudoers)?;
    let without: String = text
        .lines()
        .filter(|l| !l.contains("NOPASSWD"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(text, without);
    std::fs::write(&sudoers, without)?;
    let error = transport
        .exec(sh(logs.path(), "touch /tmp/ran"), None, CancellationToken::new())
        .await
        .err()
        .context("sudo must refuse now")?;
    assert!(
        matches!(ssh_error(&error), Some(SshError::BecomeRefused { .. })),
        "{error}"
    );
    assert_eq!(error.kind(), FailureKind::Permanent);
    assert!(error.to_string().contains("as app"), "{error}");
    assert!(!host.path("/tmp/ran").exists(), "nothing ran");
    Ok(())
}

#[tokio::test]
async fn a_timed_out_command_under_become_is_killed_with_its_group() -> Result<()> {
    let fleet = fleet(1, Sudo::All)?;
    let host = fleet.host(0);
    let local = Local::new()?;
    let access = SshAccess {
        become_method: Some(Become::Sudo),
        ..access(&fleet)
    };
    let transport = connect_to(host, &access, &local).await?;
    let logs = tempfile::tempdir()?;
    // Ignores SIGTERM (only SIGKILL ends it); its child does not.
    let marker = format!("hang-marker-{}", std::process::id());
    let mut cmd = sh(
        logs.path(),
        &format!("sleep 3131 & trap '' TERM; echo started; while :; do sleep 1; done # {marker}"),
    );
    cmd.timeout = Some(Duration::from_secs(2));
    let exec = run(&transport, cmd);
    let watcher = async {
        // While it runs: root's processes, the script and its child.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let script = processes_with(host, &marker);
            let child = processes_running(host, &["sleep", "3131"]);
            if !script.is_empty() && !child.is_empty() {
                // Root's: the login user could not have signalled them.
                assert!(
                    child.iter().all(|&pid| uid_of(pid) == Some(0)),
                    "{child:?} should run as root"
                );
                return anyhow::Ok((script, child));
            }
            if Instant::now() > deadline {
                bail!("the command did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (ran, seen) = tokio::join!(exec, watcher);
    let (outcome, _) = ran?;
    let (script, child) = seen?;
    assert_eq!(outcome, Outcome::TimedOut);
    for pid in script.iter().chain(&child) {
        // Gone, or at least no longer root's (a reused pid).
        assert_ne!(uid_of(*pid), Some(0), "{pid} survived");
    }
    assert!(processes_with(host, &marker).is_empty(), "the script survived");
    assert!(
        processes_running(host, &["sleep", "3131"]).is_empty(),
        "its child survived"
    );
    // The connection is still good.
    assert_eq!(stdout_of(&transport, logs.path(), "id -u").await?, ["0"]);
    transport.finish(false).await?;
    Ok(())
}

#[tokio::test]
async fn cleanup_under_become_removes_root_owned_files() -> Result<()> {
    let fleet = fleet(1, Sudo::All)?;
    let host = fleet.host(0);
    let local = Local::new()?;
    let access = SshAccess {
        become_method: Some(Become::Sudo),
        ..access(&fleet)
    };
    let transport = connect_to(host, &access, &local).await?;
    let logs = tempfile::tempdir()?;
    let run_dir = transport.run_dir(&run_id("clean")).await?;
    stdout_of(
        &transport,
        logs.path(),
        &format!("mkdir -p {run_dir}/deep/er && touch {run_dir}/deep/er/f && chmod 700 {run_dir}/deep"),
    )
    .await?;
    let meta = std::fs::metadata(host.path(format!("{run_dir}/deep/er/f")))?;
    assert_eq!(meta.uid(), 0, "made by root");
    transport.cleanup(RunDirs::Remove).await?;
    assert!(!host.path(&run_dir).exists(), "root's files are removed");
    assert_eq!(drover_files(host)?, Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn an_unreachable_port_is_transient_and_names_the_address() -> Result<()> {
    let fleet = fleet(1, Sudo::None)?;
    let host = fleet.host(0);
    let local = Local::new()?;
    let access = SshAccess {
        port: Some(PORT + 1),
        ..access(&fleet)
    };
    let error = connect_to(host, &access, &local)
        .await
        .err()
        .context("nothing listens there")?
        .downcast::<SshError>()?;
    assert!(matches!(error, SshError::Refused { .. }), "{error}");
    assert_eq!(error.kind(), FailureKind::Transient);
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "{}: connection to {}:{}",
            host.name(),
            host.address(),
            PORT + 1
        )),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn targets_behind_a_bastion_share_one_bastion_connection() -> Result<()> {
    let topology = BastionTopology::builder()
        .targets(2)
        .fleet(TestFleet::builder().port(PORT))
        .start()?;
    let fleet = topology.fleet();
    let bastion = &topology.bastions()[0];
    let (one, two) = (topology.target(0), topology.target(1));
    let local = Local::new()?;
    let logs = tempfile::tempdir()?;

    // Not reachable directly.
    let error = connect_to(one, &access(fleet), &local)
        .await
        .err()
        .context("the target must not be reachable directly")?
        .downcast::<SshError>()?;
    assert_eq!(error.kind(), FailureKind::Transient, "{error}");
    assert!(error.to_string().contains(&one.address().to_string()), "{error}");

    // target-1 through `ssh.jump`.
    let jump = SshAccess {
        jump: vec![topology.jump()],
        ..access(fleet)
    };
    let first = connect_to(one, &jump, &local).await?;
    assert_eq!(stdout_of(&first, logs.path(), "hostname").await?, [one.name()]);

    // target-2 through `ProxyJump` of a configuration file, by alias.
    let config = local.state.path().join("ssh_config");
    topology.ssh_config().write(&config)?;
    let by_config = SshAccess {
        config_file: Some(config.display().to_string()),
        known_hosts: Some(fleet.known_hosts().display().to_string()),
        ..SshAccess::default()
    };
    let target_two = target_of(two.name(), &by_config, &local)?;
    assert_eq!(target_two.jump.len(), 1);
    assert_eq!(target_two.jump[0].to_string(), topology.jump());
    let second = SshTransport::connect(&target_two).await?;
    assert_eq!(stdout_of(&second, logs.path(), "hostname").await?, [two.name()]);

    // One login on the bastion for both.
    assert_eq!(logins(bastion), 1, "{}", bastion.log());
    assert_eq!((logins(one), logins(two)), (1, 1));

    // A bastion that breaks is reconnected on the next use.
    bastion.restart()?;
    assert_eq!(stdout_of(&first, logs.path(), "hostname").await?, [one.name()]);
    assert_eq!(stdout_of(&second, logs.path(), "hostname").await?, [two.name()]);
    assert_eq!(
        logins(bastion),
        2,
        "one new bastion connection for both:\n{}",
        bastion.log()
    );

    // A wrong port behind the bastion: transient, naming bastion and target.
    let wrong = SshAccess {
        port: Some(PORT + 1),
        ..jump.clone()
    };
    let error = connect_to(one, &wrong, &local)
        .await
        .err()
        .context("nothing listens there")?
        .downcast::<SshError>()?;
    assert!(matches!(error, SshError::Forward { .. }), "{error}");
    assert_eq!(error.kind(), FailureKind::Transient);
    let message = error.to_string();
    assert!(message.contains(&topology.jump()), "{message}");
    assert!(
        message.contains(&format!("{}:{}", one.address(), PORT + 1)),
        "{message}"
    );

    // The bastion's host key is checked like any host's.
    let only_targets = local.state.path().join("targets_only");
    let entries: Vec<(String, String)> = topology
        .targets()
        .iter()
        .map(|t| (t.known_hosts_pattern(), t.host_key()))
        .collect();
    drover_testkit::known_hosts::write(
        &only_targets,
        entries.iter().map(|(p, k)| (p.as_str(), k.as_str())),
        KnownHostsStyle::Plain,
    )?;
    // A chain of its own (another user), so that the pooled bastion
    // connection is not reused.
    let unknown_bastion = SshAccess {
        known_hosts: Some(only_targets.display().to_string()),
        jump: vec![format!("app@{}:{}", bastion.address(), bastion.port())],
        ..access(fleet)
    };
    let error = connect_to(one, &unknown_bastion, &local)
        .await
        .err()
        .context("an unknown bastion must be refused")?
        .downcast::<SshError>()?;
    assert!(
        matches!(&error, SshError::Bastion { source, .. } if matches!(**source, SshError::UnknownHostKey { .. })),
        "{error}"
    );
    assert_eq!(error.kind(), FailureKind::Permanent);
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("{}: through bastion app@", one.name())),
        "{message}"
    );

    first.finish(false).await?;
    second.finish(false).await?;
    Ok(())
}
