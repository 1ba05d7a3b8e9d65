//! The SSH transport against a real OpenSSH server on loopback (one per
//! test, see support_ssh). The server runs on this machine, so what the
//! remote side did (pid files, /proc, file modes) is checked directly.

mod support_ssh;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drover_transport::mask::Masker;
use drover_transport::ssh::{HostKeyPolicy, RunDirs, SshError, SshTransport};
use drover_transport::{Command, LogLine, Outcome, Stream, Transport, TransportError};
use support_ssh::{Sshd, alive, append, free_port, keygen};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The transport's wait between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// Far longer than any test needs: a transport that hangs fails the test
/// instead of the whole run.
const HANG: Duration = Duration::from_secs(60);

/// A `/bin/sh -c script` command run in `dir` (remote, which here is also
/// local), logging to a local file in a directory that does not exist yet.
fn sh(dir: &Path, script: &str) -> Command {
    Command {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into(), "script".into()],
        script: None,
        files: None,
        remove_run_dir: false,
        env: Vec::new(),
        cwd: dir.join("work"),
        timeout: None,
        log: dir.join("logs").join("task.log"),
        mask: Masker::none(),
    }
}

async fn run(transport: &SshTransport, cmd: Command) -> Result<(Outcome, Vec<LogLine>)> {
    run_with(transport, cmd, CancellationToken::new()).await
}

async fn run_with(
    transport: &SshTransport,
    cmd: Command,
    cancel: CancellationToken,
) -> Result<(Outcome, Vec<LogLine>)> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = tokio::time::timeout(HANG, transport.exec(cmd, Some(tx), cancel)).await??;
    // exec has dropped its sender by the time it returns, so this ends.
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push(line);
    }
    Ok((outcome, lines))
}

fn of_stream(lines: &[LogLine], stream: Stream) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.stream == stream)
        .map(|l| l.line.as_str())
        .collect()
}

async fn connect(sshd: &Sshd) -> Result<SshTransport> {
    Ok(SshTransport::connect(&sshd.target("web-1")).await?)
}

/// Waits for `path` to hold a pid.
async fn read_pid(path: &Path) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!("no pid in {} after 10 s", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to `within` for every pid to be gone (or a zombie).
async fn all_gone(pids: &[i32], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !pids.iter().any(|&p| alive(p)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !pids.iter().any(|&p| alive(p))
}

/// The `SshError` inside a transport error.
fn ssh_error(error: &TransportError) -> Option<&SshError> {
    match error {
        TransportError::Ssh(e) => Some(e),
        _ => None,
    }
}

/// A script that leaves a child and itself hanging, recording both pids;
/// with `ignore_term`, the main script survives SIGTERM (so SIGKILL is
/// needed) while its child does not.
fn hang_script(dir: &Path, ignore_term: bool) -> String {
    let d = dir.display();
    let trap = if ignore_term { "trap '' TERM; " } else { "" };
    format!("sleep 300 & echo $! > {d}/child.pid; {trap}echo $$ > {d}/main.pid; while :; do sleep 1; done")
}

#[tokio::test]
async fn exit_codes_and_both_streams_arrive_line_by_line() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let dir = tempfile::tempdir()?;

    let (outcome, _) = run(&transport, sh(dir.path(), "exit 0")).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    let (outcome, _) = run(&transport, sh(dir.path(), "exit 42")).await?;
    assert_eq!(outcome, Outcome::Exited(42));
    // A signal that is not ours: reported as such, by number.
    let (outcome, _) = run(&transport, sh(dir.path(), "kill -s USR1 $$; sleep 5")).await?;
    assert_eq!(outcome, Outcome::Signaled(nix::sys::signal::Signal::SIGUSR1 as i32));

    let script = "i=0; while [ $i -lt 5000 ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); done; \
                  printf 'no newline at the end'; printf 'err tail' >&2; exit 3";
    let (outcome, lines) = run(&transport, sh(dir.path(), script)).await?;
    assert_eq!(outcome, Outcome::Exited(3));
    let out = of_stream(&lines, Stream::Stdout);
    let err = of_stream(&lines, Stream::Stderr);
    assert_eq!(out.len(), 5001, "stdout lines");
    assert_eq!(err.len(), 5001, "stderr lines");
    for i in 0..5000 {
        assert_eq!(out[i], format!("out {i}"));
        assert_eq!(err[i], format!("err {i}"));
    }
    assert_eq!(out[5000], "no newline at the end");
    assert_eq!(err[5000], "err tail");
    // The log has every line too (and the wrapper's protocol lines none).
    let log = std::fs::read_to_string(dir.path().join("logs/task.log"))?;
    assert_eq!(log.lines().count(), 10002);
    assert!(log.contains("out 4999\n") && log.contains("err 4999\n"));
    assert!(
        !log.contains("drover-pgid") && !log.contains("drover-exec"),
        "protocol lines leaked"
    );
    // The working directory was made.
    assert!(dir.path().join("work").is_dir());
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_program_is_a_start_error() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let dir = tempfile::tempdir()?;
    let mut cmd = sh(dir.path(), "");
    cmd.program = "/nonexistent/program".into();
    let error = transport
        .exec(cmd, None, CancellationToken::new())
        .await
        .err()
        .context("a missing program must not run")?;
    assert!(matches!(error, TransportError::NotFound { .. }), "{error}");
    assert_eq!(error.kind(), drover_transport::FailureKind::Permanent);
    let message = error.to_string();
    assert!(message.contains("/nonexistent/program"), "{message}");
    assert!(message.contains("not found"), "{message}");
    // The connection survives a failed start.
    assert_eq!(run(&transport, sh(dir.path(), "exit 0")).await?.0, Outcome::Exited(0));
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}

#[tokio::test]
async fn dropping_the_transport_closes_its_connection() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let dir = tempfile::tempdir()?;
    assert_eq!(run(&transport, sh(dir.path(), "exit 0")).await?.0, Outcome::Exited(0));
    assert_eq!(sshd.connections(), 1);
    drop(transport);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sshd.connections() > 0 {
        if Instant::now() > deadline {
            bail!("the connection outlived the transport");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn env_reaches_the_script_but_never_a_command_line() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();
    let secret = "s3cr3t 'quoted' $value\nsecond line";
    let mut cmd = sh(
        dir.path(),
        &format!(
            "printf '%s' \"$DROVER_SECRET\" > {d}/seen; \
             tr '\\0' ' ' < /proc/$$/cmdline > {d}/cmdline; \
             tr '\\0' ' ' < /proc/$PPID/cmdline > {d}/parent-cmdline; \
             ls -l /proc/$$/fd/0 > {d}/stdin"
        ),
    );
    cmd.env = vec![
        ("DROVER_SECRET".into(), secret.into()),
        ("PATH".into(), "/usr/bin:/bin".into()),
    ];
    let (outcome, _) = run(&transport, cmd).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(std::fs::read_to_string(dir.path().join("seen"))?, secret);
    for file in ["cmdline", "parent-cmdline"] {
        let cmdline = std::fs::read_to_string(dir.path().join(file))?;
        assert!(!cmdline.contains("s3cr3t"), "secret in {file}: {cmdline}");
    }
    // The login shell that waits for it shows the waiting side only (the
    // environment came on the command's standard input), and the
    // command's own standard input is /dev/null.
    let parent = std::fs::read_to_string(dir.path().join("parent-cmdline"))?;
    assert!(parent.contains("/bin/sh -s drover-task"), "{parent}");
    assert!(
        std::fs::read_to_string(dir.path().join("stdin"))?
            .trim_end()
            .ends_with("/dev/null"),
        "stdin"
    );
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}

#[tokio::test]
async fn bad_variable_names_are_refused_before_anything_runs() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let dir = tempfile::tempdir()?;
    let mut cmd = sh(dir.path(), &format!("touch {}/ran", dir.path().display()));
    cmd.env = vec![("X;touch /tmp/pwned".into(), "v".into())];
    let error = transport
        .exec(cmd, None, CancellationToken::new())
        .await
        .err()
        .context("must be refused")?;
    assert!(
        error.to_string().contains("not a valid environment variable name"),
        "{error}"
    );
    assert!(!dir.path().join("ran").exists());
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}

#[tokio::test]
async fn secrets_in_remote_output_are_masked() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let dir = tempfile::tempdir()?;
    let secret = "hunter2-very-secret";
    let mut cmd = sh(dir.path(), "echo \"token=$TOKEN\"; echo \"again $TOKEN\" >&2");
    cmd.env = vec![("TOKEN".into(), secret.into())];
    cmd.mask = Masker::new([secret]);
    let (outcome, lines) = run(&transport, cmd).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(of_stream(&lines, Stream::Stdout), ["token=****"]);
    assert_eq!(of_stream(&lines, Stream::Stderr), ["again ****"]);
    let log = std::fs::read_to_string(dir.path().join("logs/task.log"))?;
    assert!(!log.contains(secret), "{log}");
    assert!(log.contains("token=****"));
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}

#[tokio::test]
async fn twenty_commands_share_one_connection_eight_at_a_time() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = Arc::new(connect(&sshd).await?);
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let transport = transport.clone();
        let mut cmd = sh(dir.path(), &format!("sleep 0.4; echo done {i}"));
        cmd.log = dir.path().join(format!("logs/{i}.log"));
        tasks.push(tokio::spawn(async move { run(&transport, cmd).await }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let (outcome, lines) = task.await??;
        assert_eq!(outcome, Outcome::Exited(0), "command {i}");
        assert_eq!(of_stream(&lines, Stream::Stdout), [format!("done {i}")]);
    }
    // 20 commands, 8 channels: three waves of 0.4 s at least.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1200),
        "{elapsed:?}: more than 8 ran at once"
    );
    assert_eq!(sshd.logins(), 1, "one login expected:\n{}", sshd.logs());
    assert_eq!(sshd.connections(), 1, "one TCP connection expected");
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}

#[tokio::test]
async fn timeout_kills_the_remote_script_and_its_child() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let dir = tempfile::tempdir()?;
    // The script ignores SIGTERM: only the SIGKILL after the grace period
    // ends it, while its child goes at SIGTERM.
    let mut cmd = sh(dir.path(), &hang_script(dir.path(), true));
    cmd.timeout = Some(Duration::from_secs(1));
    let started = Instant::now();
    let (outcome, _) = run(&transport, cmd).await?;
    let elapsed = started.elapsed();
    assert_eq!(outcome, Outcome::TimedOut);
    assert!(elapsed >= Duration::from_secs(1) + GRACE, "returned after {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "returned after {elapsed:?}");
    let main = read_pid(&dir.path().join("main.pid")).await?;
    let child = read_pid(&dir.path().join("child.pid")).await?;
    assert!(
        all_gone(&[main, child], Duration::from_secs(1)).await,
        "{main} or {child} survived"
    );

    // The connection is still good.
    let (outcome, _) = run(&transport, sh(dir.path(), "exit 0")).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}

#[tokio::test]
async fn cancel_kills_the_remote_script_and_its_child() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let dir = tempfile::tempdir()?;
    let cmd = sh(dir.path(), &hang_script(dir.path(), false));
    let cancel = CancellationToken::new();
    let exec = run_with(&transport, cmd, cancel.clone());
    let canceller = async {
        let main = read_pid(&dir.path().join("main.pid")).await?;
        let child = read_pid(&dir.path().join("child.pid")).await?;
        cancel.cancel();
        anyhow::Ok((main, child, Instant::now()))
    };
    let (ran, pids) = tokio::join!(exec, canceller);
    let (outcome, _) = ran?;
    let (main, child, cancelled_at) = pids?;
    assert_eq!(outcome, Outcome::Cancelled);
    // SIGTERM suffices here: no grace period is waited out.
    assert!(cancelled_at.elapsed() < GRACE, "took {:?}", cancelled_at.elapsed());
    assert!(
        all_gone(&[main, child], Duration::from_secs(1)).await,
        "{main} or {child} survived"
    );
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}

#[tokio::test]
async fn leftovers_of_a_finished_script_are_ended() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();
    // The background child keeps no pipe of ours, so the channel closes at
    // once; the transport still ends it, as the local transport does.
    let script = format!("sleep 300 > /dev/null 2>&1 & echo $! > {d}/child.pid; exit 0");
    let (outcome, _) = run(&transport, sh(dir.path(), &script)).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    let child = read_pid(&dir.path().join("child.pid")).await?;
    assert!(all_gone(&[child], Duration::from_secs(1)).await, "{child} survived");
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}

#[tokio::test]
async fn a_changed_host_key_is_refused_naming_the_file_and_line() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let other = sshd.dir.path().join("other_ed25519");
    keygen(&other)?;
    let other_key = std::fs::read_to_string(other.with_extension("pub"))?;
    let mut fields = other_key.split_whitespace();
    let (kind, key) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
    std::fs::write(
        &sshd.known_hosts,
        format!("# managed by the test\n{} {kind} {key}\n", sshd.known_as()),
    )?;
    for policy in [HostKeyPolicy::Verify, HostKeyPolicy::TrustOnFirstUse] {
        let mut target = sshd.target("web-1");
        target.host_key_policy = policy;
        let error = SshTransport::connect(&target)
            .await
            .err()
            .context("a changed key must be refused")?;
        let SshError::HostKeyMismatch { line, .. } = &error else {
            bail!("expected a mismatch, got {error}");
        };
        assert_eq!(*line, 2, "the comment line counts");
        let message = error.to_string();
        assert!(message.starts_with("web-1: HOST KEY MISMATCH"), "{message}");
        assert!(
            message.contains(&format!("{}:2", sshd.known_hosts.display())),
            "{message}"
        );
        assert!(message.contains(&sshd.known_as()), "{message}");
    }
    assert_eq!(sshd.logins(), 0);
    Ok(())
}

#[tokio::test]
async fn unknown_hosts_need_trust_on_first_use_which_still_refuses_a_changed_key() -> Result<()> {
    let mut sshd = Sshd::start_new()?;
    std::fs::remove_file(&sshd.known_hosts)?;

    let mut target = sshd.target("web-1");
    let error = SshTransport::connect(&target)
        .await
        .err()
        .context("an unknown host must be refused under Verify")?;
    assert!(matches!(error, SshError::UnknownHostKey { .. }), "{error}");
    let message = error.to_string();
    assert!(message.starts_with("web-1: unknown host key"), "{message}");
    assert!(message.contains("SHA256:"), "{message}");
    assert!(!sshd.known_hosts.exists(), "Verify must not write known_hosts");

    target.host_key_policy = HostKeyPolicy::TrustOnFirstUse;
    let transport = SshTransport::connect(&target).await?;
    let dir = tempfile::tempdir()?;
    assert_eq!(run(&transport, sh(dir.path(), "exit 0")).await?.0, Outcome::Exited(0));
    let recorded = std::fs::read_to_string(&sshd.known_hosts)?;
    assert!(
        recorded.contains(&format!("{} {}", sshd.known_as(), sshd.host_key_line()?)),
        "{recorded}"
    );
    transport.cleanup(RunDirs::Remove).await?;
    drop(transport);

    // Now the host comes back with another key.
    sshd.stop();
    sshd.new_host_key()?;
    sshd.start()?;
    let error = SshTransport::connect(&target)
        .await
        .err()
        .context("a changed key must be refused under trust-on-first-use")?;
    assert!(matches!(error, SshError::HostKeyMismatch { line: 1, .. }), "{error}");
    Ok(())
}

#[tokio::test]
async fn refused_connections_and_rejected_keys_name_the_host() -> Result<()> {
    let sshd = Sshd::start_new()?;

    let mut target = sshd.target("db-7");
    target.port = free_port()?;
    let error = SshTransport::connect(&target)
        .await
        .err()
        .context("nothing listens there")?;
    assert!(matches!(error, SshError::Refused { .. }), "{error}");
    assert!(
        error.to_string().starts_with("db-7: connection to 127.0.0.1:"),
        "{error}"
    );

    let stranger = sshd.dir.path().join("stranger_ed25519");
    keygen(&stranger)?;
    let mut target = sshd.target("db-7");
    target.key_file = Some(stranger.clone());
    let error = SshTransport::connect(&target)
        .await
        .err()
        .context("the key is not authorized")?;
    assert!(matches!(error, SshError::AuthFailed { .. }), "{error}");
    let message = error.to_string();
    assert!(message.starts_with("db-7: "), "{message}");
    assert!(message.contains("user root"), "{message}");
    assert!(message.contains(&stranger.display().to_string()), "{message}");

    // An unreadable key file is its own error, naming the file.
    target.key_file = Some(sshd.dir.path().join("no-such-key"));
    let error = SshTransport::connect(&target).await.err().context("no key file")?;
    assert!(matches!(error, SshError::Key { .. }), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_connect_timeout_is_reported_as_such() -> Result<()> {
    // A listener that accepts but never speaks SSH.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let sshd = Sshd::start_new()?;
    let mut target = sshd.target("slow-1");
    target.port = port;
    target.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let error = SshTransport::connect(&target).await.err().context("must time out")?;
    assert!(matches!(error, SshError::TimedOut { .. }), "{error}");
    assert!(error.to_string().starts_with("slow-1: no answer"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    silent.abort();
    Ok(())
}

#[tokio::test]
async fn a_restarted_sshd_is_reconnected_to_transparently() -> Result<()> {
    let mut sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let dir = tempfile::tempdir()?;
    assert_eq!(run(&transport, sh(dir.path(), "echo one")).await?.0, Outcome::Exited(0));

    sshd.stop();
    sshd.start()?;
    let (outcome, lines) = run(&transport, sh(dir.path(), "echo two")).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(of_stream(&lines, Stream::Stdout), ["two"]);
    assert_eq!(sshd.logins(), 2, "{}", sshd.logs());
    // And it stays on the new connection.
    assert_eq!(run(&transport, sh(dir.path(), "exit 0")).await?.0, Outcome::Exited(0));
    assert_eq!(sshd.logins(), 2, "{}", sshd.logs());
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}

#[tokio::test]
async fn a_command_running_when_the_connection_breaks_fails_and_is_ended_on_reconnect() -> Result<()> {
    let mut sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let dir = tempfile::tempdir()?;
    let cmd = sh(dir.path(), &hang_script(dir.path(), false));
    let exec = run(&transport, cmd);
    let breaker = async {
        let main = read_pid(&dir.path().join("main.pid")).await?;
        let child = read_pid(&dir.path().join("child.pid")).await?;
        // sshd dies (its sessions too); the command it ran stays, orphaned.
        sshd.kill_daemon_only();
        anyhow::Ok((main, child))
    };
    let (ran, pids) = tokio::join!(exec, breaker);
    let (main, child) = pids?;
    let error = ran.err().context("a command on a lost connection cannot succeed")?;
    let transport_error = error.downcast_ref::<TransportError>().context("a transport error")?;
    assert!(
        matches!(ssh_error(transport_error), Some(SshError::Disconnected { .. })),
        "{error}"
    );
    assert!(error.to_string().starts_with("web-1: connection lost"), "{error}");
    assert!(
        alive(main) && alive(child),
        "the orphans should still run at this point"
    );

    sshd.start()?;
    let (outcome, _) = run(&transport, sh(dir.path(), "exit 0")).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    assert!(
        all_gone(&[main, child], Duration::from_secs(1)).await,
        "{main} or {child} survived"
    );
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}

#[tokio::test]
async fn uploads_keep_modes_and_run_dirs_go_with_cleanup() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let local = tempfile::tempdir()?;
    let tree = local.path().join("taskserv");
    std::fs::create_dir_all(tree.join("scripts/lib"))?;
    let files = [
        ("scripts/install.sh", 0o755, "#!/bin/sh\necho install\n"),
        ("scripts/lib/common.sh", 0o644, "x=1\n"),
        ("secret.env", 0o600, "TOKEN=abc\n"),
    ];
    for (path, mode, text) in files {
        std::fs::write(tree.join(path), text)?;
        std::fs::set_permissions(tree.join(path), std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::set_permissions(tree.join("scripts/lib"), std::fs::Permissions::from_mode(0o750))?;
    // Bigger than one archive chunk and one SSH packet.
    let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(tree.join("big.txt"), &big)?;

    let id = format!("run-{}", std::process::id());
    let run_dir = transport.temp_dir(&id)?;
    assert_eq!(run_dir, format!("/tmp/drover-{id}"));
    assert!(!Path::new(&run_dir).exists(), "named, not made, until used");
    let mode = |p: &str| -> Result<u32> { Ok(std::fs::metadata(p)?.permissions().mode() & 0o7777) };

    let remote = format!("{run_dir}/taskserv");
    transport.upload(&tree, &remote, 0o700).await?;
    assert_eq!(mode(&run_dir)?, 0o700, "made private by the upload into it");
    assert_eq!(mode(&remote)?, 0o700);
    for (path, file_mode, text) in files {
        let target = format!("{remote}/{path}");
        assert_eq!(mode(&target)?, file_mode, "{path}");
        assert_eq!(std::fs::read_to_string(&target)?, text);
    }
    assert_eq!(mode(&format!("{remote}/scripts/lib"))?, 0o750);
    assert_eq!(std::fs::read_to_string(format!("{remote}/big.txt"))?, big);
    // Uploading again overwrites in place.
    std::fs::write(tree.join("scripts/install.sh"), "#!/bin/sh\necho v2\n")?;
    transport.upload(&tree, &remote, 0o700).await?;
    assert_eq!(
        std::fs::read_to_string(format!("{remote}/scripts/install.sh"))?,
        "#!/bin/sh\necho v2\n"
    );
    // A single file, with the mode asked for.
    transport
        .upload(&tree.join("secret.env"), &format!("{run_dir}/one.env"), 0o640)
        .await?;
    assert_eq!(mode(&format!("{run_dir}/one.env"))?, 0o640);
    // What was uploaded runs.
    let dir = tempfile::tempdir()?;
    let mut cmd = sh(dir.path(), "");
    cmd.program = format!("{remote}/scripts/install.sh");
    cmd.args.clear();
    let (outcome, lines) = run(&transport, cmd).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(of_stream(&lines, Stream::Stdout), ["v2"]);

    // remove_dir refuses what would be a disaster.
    for bad in ["/", "", "relative/path", "//"] {
        assert!(transport.remove_dir(bad).await.is_err(), "{bad:?}");
    }
    transport.remove_dir(&format!("{run_dir}/one.env")).await?;
    assert!(!Path::new(&format!("{run_dir}/one.env")).exists());
    assert!(transport.temp_dir("../etc").is_err());

    transport.cleanup(RunDirs::Keep).await?;
    assert!(Path::new(&run_dir).is_dir(), "kept");
    // Usable after cleanup: it reconnects.
    assert_eq!(transport.temp_dir(&id)?, run_dir);
    assert_eq!(run(&transport, sh(local.path(), "exit 0")).await?.0, Outcome::Exited(0));
    transport.cleanup(RunDirs::Remove).await?;
    assert!(!Path::new(&run_dir).exists(), "removed");
    Ok(())
}

#[tokio::test]
async fn a_run_dir_of_someone_else_is_refused() -> Result<()> {
    let sshd = Sshd::start_new()?;
    let transport = connect(&sshd).await?;
    let id = format!("symlink-{}", std::process::id());
    let path = format!("/tmp/drover-{id}");
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink("/etc", &path)?;
    let run_dir = transport.temp_dir(&id)?;
    assert_eq!(run_dir, path);
    // Neither a command nor an upload goes into it.
    let dir = tempfile::tempdir()?;
    let mut cmd = sh(dir.path(), "touch ran");
    cmd.cwd = std::path::PathBuf::from(format!("{run_dir}/work"));
    let command = run(&transport, cmd).await;
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree)?;
    let upload = transport.upload(&tree, &format!("{run_dir}/t"), 0o700).await;
    std::fs::remove_file(&path)?;
    let error = command
        .err()
        .context("a symlink planted at the run dir must be refused")?;
    assert!(error.to_string().contains("is not the user's own"), "{error}");
    let error = upload.err().context("and so must an upload into it")?;
    assert!(error.to_string().contains("is not the user's own"), "{error}");
    assert!(!Path::new("/etc/work").exists() && !Path::new("/etc/t").exists());
    transport.cleanup(RunDirs::Keep).await?;
    Ok(())
}

/// Authentication through ssh-agent. `SSH_AUTH_SOCK` is process-wide
/// state, so this runs in a child process of the test binary with its own
/// environment (see [`agent_auth_child`]) rather than changing the
/// environment of a process whose other threads run tests.
#[test]
fn authentication_through_ssh_agent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("agent.sock");
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "agent_auth_child", "--nocapture", "--test-threads=1"])
        .env("SSH_AUTH_SOCK", &socket)
        .env("DROVER_TEST_AGENT_CHILD", "1")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("agent auth ok"),
        "the child did not run the test:\n{text}"
    );
    Ok(())
}

/// The agent test proper; does nothing unless started by
/// [`authentication_through_ssh_agent`].
#[tokio::test]
async fn agent_auth_child() -> Result<()> {
    if std::env::var_os("DROVER_TEST_AGENT_CHILD").is_none() {
        return Ok(());
    }
    let socket = std::env::var_os("SSH_AUTH_SOCK").context("SSH_AUTH_SOCK")?;
    let sshd = Sshd::start_new()?;
    let agent = std::process::Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting ssh-agent")?;
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = KillOnDrop(agent);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !Path::new(&socket).exists() {
        if Instant::now() > deadline {
            bail!("ssh-agent did not create its socket");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let added = std::process::Command::new("ssh-add").arg(&sshd.client_key).output()?;
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));

    let mut target = sshd.target("agent-1");
    target.key_file = None;
    target.use_agent = true;
    let transport = SshTransport::connect(&target).await?;
    let dir = tempfile::tempdir()?;
    assert_eq!(run(&transport, sh(dir.path(), "exit 0")).await?.0, Outcome::Exited(0));

    // Without a key the agent holds, authentication fails naming the agent.
    let removed = std::process::Command::new("ssh-add").arg("-D").output()?;
    assert!(removed.status.success());
    let error = SshTransport::connect(&target).await.err().context("no key left")?;
    assert!(matches!(error, SshError::AuthFailed { .. }), "{error}");
    assert!(error.to_string().contains("ssh-agent (0 keys)"), "{error}");
    append(&sshd.dir.path().join("done"), "")?;
    println!("agent auth ok");
    transport.cleanup(RunDirs::Remove).await?;
    Ok(())
}
