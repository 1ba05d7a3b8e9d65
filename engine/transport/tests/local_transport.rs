//! The local transport against real processes: `/bin/sh -c` scripts that
//! leave their traces (pid files, environment dumps) in a temporary
//! directory, which the tests then check.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drover_transport::local::{INHERITED_ENV, LocalTransport};
use drover_transport::{Command, LogLine, Outcome, Stream, Transport, TransportError};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The transport's wait between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// Far longer than any test needs: a transport that hangs fails the test
/// instead of the whole run.
const HANG: Duration = Duration::from_secs(30);

/// A `/bin/sh -c script` command run in `dir`, logging to a file in a
/// directory that does not exist yet.
fn sh(dir: &Path, script: &str) -> Command {
    Command {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        script: None,
        files: None,
        remove_run_dir: false,
        env: Vec::new(),
        cwd: dir.to_path_buf(),
        timeout: None,
        log: dir.join("logs").join("task.log"),
        mask: drover_transport::mask::Masker::none(),
    }
}

/// A local transport whose run directories go to a fresh temporary
/// directory (only staging tests look there).
fn transport() -> LocalTransport {
    LocalTransport::new(std::env::temp_dir().join("drover-local-transport-tests"))
}

/// Runs `cmd` to the end and returns its outcome and every line it sent.
async fn run(cmd: Command) -> Result<(Outcome, Vec<LogLine>)> {
    run_with(cmd, CancellationToken::new()).await
}

async fn run_with(cmd: Command, cancel: CancellationToken) -> Result<(Outcome, Vec<LogLine>)> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcome = tokio::time::timeout(HANG, transport().exec(cmd, Some(tx), cancel)).await??;
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

fn log_lines(cmd_dir: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(cmd_dir.join("logs").join("task.log"))?;
    Ok(text.lines().map(str::to_owned).collect())
}

/// Reads a pid a script wrote with `echo $! > name`.
fn read_pid(dir: &Path, name: &str) -> Result<i32> {
    let text = std::fs::read_to_string(dir.join(name)).with_context(|| format!("pid file {name}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("pid file {name}: {text:?}"))
}

/// Whether `pid` has stopped running: gone, or a zombie. A zombie counts as
/// dead because where init does not reap orphans (many containers, this
/// sandbox's included) a killed grandchild stays one for good.
fn is_dead(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => true,
        Err(_) => false,
        Ok(()) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true),
    }
}

/// Polls for up to 2 s: the kernel delivers signals and tears processes
/// down asynchronously, so "dead right after exec returned" would be flaky.
async fn assert_dies(pid: i32, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !is_dead(pid) {
        if Instant::now() > deadline {
            bail!("{what} (pid {pid}) is still running");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Kills a process the test meant to survive, even when an assertion fails.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

#[tokio::test]
async fn exit_codes_and_foreign_signals_are_reported() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cases = [
        ("exit 0", Outcome::Exited(0)),
        ("exit 3", Outcome::Exited(3)),
        ("kill -USR1 $$", Outcome::Signaled(Signal::SIGUSR1 as i32)),
        // A SIGTERM that is not ours is the command's business, not a timeout.
        ("kill -TERM $$", Outcome::Signaled(Signal::SIGTERM as i32)),
    ];
    for (script, expected) in cases {
        let mut cmd = sh(dir.path(), script);
        // A timeout that does not expire changes nothing.
        cmd.timeout = Some(Duration::from_secs(60));
        let (outcome, _) = run(cmd).await?;
        assert_eq!(outcome, expected, "{script}");
        assert_eq!(outcome.success(), script == "exit 0", "{script}");
    }
    Ok(())
}

#[tokio::test]
async fn both_streams_reach_log_and_channel_including_an_unterminated_last_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let script = "echo out1; echo err1 >&2; echo; echo out2; printf 'err-last' >&2; printf 'out-last'";
    let (outcome, lines) = run(sh(dir.path(), script)).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(of_stream(&lines, Stream::Stdout), ["out1", "", "out2", "out-last"]);
    assert_eq!(of_stream(&lines, Stream::Stderr), ["err1", "err-last"]);

    // Between the streams the order is the order of arrival, which the
    // scheduler decides; compare sorted.
    let mut logged = log_lines(dir.path())?;
    logged.sort();
    assert_eq!(logged, ["", "err-last", "err1", "out-last", "out1", "out2"]);

    // The log is appended to, not replaced.
    run(sh(dir.path(), "echo again")).await?;
    let logged = log_lines(dir.path())?;
    assert_eq!(logged.len(), 7);
    assert_eq!(logged.last().map(String::as_str), Some("again"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_lines_on_each_stream_are_all_captured() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Both streams at once, so that the readers really run concurrently.
    let (outcome, lines) = run(sh(dir.path(), "seq 1 10000 >&2 & seq 1 10000; wait")).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    let expected: Vec<String> = (1..=10000).map(|n| n.to_string()).collect();
    assert_eq!(of_stream(&lines, Stream::Stdout), expected);
    assert_eq!(of_stream(&lines, Stream::Stderr), expected);

    let logged = log_lines(dir.path())?;
    assert_eq!(logged.len(), 20000);
    let mut counts = vec![0_u32; 10001];
    for line in &logged {
        counts[line.parse::<usize>()?] += 1;
    }
    assert!(counts[1..].iter().all(|&c| c == 2), "every number twice in the log");
    Ok(())
}

#[tokio::test]
async fn output_is_logged_when_nobody_listens() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (tx, rx) = mpsc::unbounded_channel();
    drop(rx);
    let outcome = transport()
        .exec(sh(dir.path(), "seq 1 100"), Some(tx), CancellationToken::new())
        .await?;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(log_lines(dir.path())?.len(), 100);
    Ok(())
}

#[tokio::test]
async fn only_the_allowlisted_variables_of_drovers_own_environment_reach_a_command() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = sh(dir.path(), "env > env.txt");
    cmd.env = vec![("DROVER_RUN_ID".into(), "r-1".into())];
    let (outcome, _) = run(cmd).await?;
    assert_eq!(outcome, Outcome::Exited(0));
    let seen: Vec<String> = std::fs::read_to_string(dir.path().join("env.txt"))?
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
        .collect();
    // The test runner gives this process variables of its own (CARGO_*,
    // NEXTEST_*, ...): stand-ins for a server's tokens and credentials.
    let foreign: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| !INHERITED_ENV.contains(&k.as_str()))
        // The shell sets these itself.
        .filter(|k| !["PWD", "OLDPWD", "SHLVL", "_"].contains(&k.as_str()))
        .collect();
    assert!(
        !foreign.is_empty(),
        "the test process should have variables beyond the allowlist"
    );
    for k in &foreign {
        assert!(
            !seen.contains(k),
            "{k} of drover's environment reached the command: {seen:?}"
        );
    }
    assert!(seen.iter().any(|k| k == "DROVER_RUN_ID"), "{seen:?}");
    assert!(seen.iter().any(|k| k == "PATH"), "PATH is inherited: {seen:?}");
    Ok(())
}

#[tokio::test]
async fn env_is_passed_overrides_and_stays_out_of_argv() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = "s3cr3t-value-4711";
    let mut cmd = sh(
        dir.path(),
        r#"printf '%s' "$DROVER_X" > x; printf '%s' "$HOME" > home; printf '%s' "$PATH" > path;
           cat /proc/$$/cmdline > cmdline"#,
    );
    cmd.env = vec![
        ("DROVER_X".into(), secret.into()),
        ("HOME".into(), "/drover-home".into()),
    ];
    let (outcome, _) = run(cmd).await?;
    assert_eq!(outcome, Outcome::Exited(0));

    let read = |name: &str| std::fs::read_to_string(dir.path().join(name));
    assert_eq!(read("x")?, secret);
    assert_eq!(read("home")?, "/drover-home", "cmd.env overrides the inherited value");
    assert_eq!(read("path")?, std::env::var("PATH")?, "the rest is inherited");
    let cmdline = read("cmdline")?;
    assert!(cmdline.contains("DROVER_X"), "the right process's cmdline: {cmdline:?}");
    assert!(!cmdline.contains(secret), "the secret is in argv: {cmdline:?}");
    Ok(())
}

#[tokio::test]
async fn timeout_kills_the_script_and_its_children() -> Result<()> {
    let timeout = Duration::from_millis(800);
    // A child waited for, and a hung foreground grandchild.
    let scripts = [
        "echo started; sleep 1000 & echo $! > pid; wait",
        "echo started; sh -c 'echo $$ > pid; exec sleep 1000'",
    ];
    for script in scripts {
        let dir = tempfile::tempdir()?;
        let mut cmd = sh(dir.path(), script);
        cmd.timeout = Some(timeout);
        let started = Instant::now();
        let (outcome, lines) = run(cmd).await?;
        let elapsed = started.elapsed();
        assert_eq!(outcome, Outcome::TimedOut, "{script}");
        assert!(
            elapsed >= timeout && elapsed < timeout + Duration::from_secs(3),
            "{script}: {elapsed:?}"
        );
        assert_dies(read_pid(dir.path(), "pid")?, "sleep").await?;
        // What was read before the kill is in the log and was sent.
        assert_eq!(log_lines(dir.path())?, ["started"], "{script}");
        assert_eq!(of_stream(&lines, Stream::Stdout), ["started"], "{script}");
    }
    Ok(())
}

#[tokio::test]
async fn a_group_that_ignores_sigterm_is_killed_after_the_grace_period() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let timeout = Duration::from_millis(500);
    // The ignored disposition is inherited by the sleep as well.
    let mut cmd = sh(dir.path(), "trap '' TERM; sleep 1000 & echo $! > pid; wait");
    cmd.timeout = Some(timeout);
    let started = Instant::now();
    let (outcome, _) = run(cmd).await?;
    let elapsed = started.elapsed();
    assert_eq!(outcome, Outcome::TimedOut);
    // At least the grace period (so SIGTERM did not do it), and not much more.
    let slack = Duration::from_secs(2);
    assert!(elapsed >= timeout + GRACE - Duration::from_millis(100), "{elapsed:?}");
    assert!(elapsed < timeout + GRACE + slack, "{elapsed:?}");
    assert_dies(read_pid(dir.path(), "pid")?, "sleep that ignores SIGTERM").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_mid_run_kills_the_group() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cmd = sh(dir.path(), "sleep 1000 & echo $! > pid; echo ready; wait");
    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let exec = tokio::spawn({
        let cancel = cancel.clone();
        async move { transport().exec(cmd, Some(tx), cancel).await }
    });
    // Cancel once the script is known to be running with its child.
    loop {
        match rx.recv().await {
            Some(line) if line.line == "ready" => break,
            Some(_) => {}
            None => bail!("the script ended before saying it was ready"),
        }
    }
    let started = Instant::now();
    cancel.cancel();
    let outcome = tokio::time::timeout(HANG, exec).await???;
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(
        started.elapsed() < GRACE,
        "sleep and sh honour SIGTERM: {:?}",
        started.elapsed()
    );
    assert_dies(read_pid(dir.path(), "pid")?, "sleep").await?;
    assert_eq!(log_lines(dir.path())?, ["ready"]);
    Ok(())
}

#[tokio::test]
async fn leftover_children_are_killed_but_setsid_detached_ones_survive() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The detached one writes its own pid once it is in its own session (as
    // webhello's install.sh does), and the script exits only after that: a
    // child still between fork and setsid() would be in our group.
    let script = r#"sleep 1000 & echo $! > leftover
        setsid sh -c 'echo $$ > "$1"; exec sleep 1000' detach "$PWD/detached" </dev/null >/dev/null 2>&1 &
        while [ ! -s detached ]; do sleep 0.01; done
        echo done"#;
    let started = Instant::now();
    let (outcome, _) = run(sh(dir.path(), script)).await?;
    let elapsed = started.elapsed();
    let detached = read_pid(dir.path(), "detached")?;
    let _cleanup = KillOnDrop(detached);

    assert_eq!(outcome, Outcome::Exited(0));
    assert_dies(read_pid(dir.path(), "leftover")?, "leftover sleep").await?;
    // Leftovers that honour SIGTERM do not cost the grace period, not even
    // where they linger as zombies until init gets round to reaping them.
    assert!(elapsed < GRACE / 2, "{elapsed:?}");
    assert!(!is_dead(detached), "the setsid-detached process was killed");
    assert_eq!(log_lines(dir.path())?, ["done"]);
    Ok(())
}

#[tokio::test]
async fn an_escaped_process_holding_the_pipe_does_not_hang_exec() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The detached sleep keeps the script's stdout open for good.
    let script = r#"setsid sh -c 'echo $$ > "$1"; exec sleep 1000' hold "$PWD/holder" &
        while [ ! -s holder ]; do sleep 0.01; done
        echo done"#;
    let started = Instant::now();
    let (outcome, lines) = run(sh(dir.path(), script)).await?;
    let elapsed = started.elapsed();
    let _cleanup = KillOnDrop(read_pid(dir.path(), "holder")?);

    assert_eq!(outcome, Outcome::Exited(0));
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(of_stream(&lines, Stream::Stdout), ["done"]);
    assert_eq!(log_lines(dir.path())?, ["done"]);
    Ok(())
}

#[tokio::test]
async fn spawn_errors_name_what_is_missing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A working directory that is missing is made; one that cannot be
    // (its parent is a file) is an error naming it.
    let made = dir.path().join("made/here");
    let mut cmd = sh(dir.path(), "pwd > where");
    cmd.cwd = made.clone();
    assert_eq!(run(cmd).await?.0, Outcome::Exited(0));
    assert_eq!(
        std::fs::read_to_string(made.join("where"))?.trim(),
        made.display().to_string()
    );
    std::fs::write(dir.path().join("file"), "")?;
    let impossible = dir.path().join("file/sub");
    let mut cmd = sh(dir.path(), "exit 0");
    cmd.cwd = impossible.clone();
    match transport().exec(cmd, None, CancellationToken::new()).await {
        Err(err @ TransportError::Spawn { .. }) => {
            let message = err.to_string();
            assert!(message.contains(&impossible.display().to_string()), "{message}");
            assert!(message.contains("cannot be made"), "{message}");
        }
        other => bail!("expected a spawn error, got {other:?}"),
    }

    let mut cmd = sh(dir.path(), "exit 0");
    cmd.program = "/no/such/program".into();
    match transport().exec(cmd, None, CancellationToken::new()).await {
        Err(err @ TransportError::Spawn { .. }) => {
            assert!(err.to_string().contains("/no/such/program"), "{err}");
        }
        other => bail!("expected a spawn error, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn an_unwritable_log_is_reported_before_anything_runs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A file where the log's directory should be (permissions would not
    // stop a test running as root).
    std::fs::write(dir.path().join("logs"), "")?;
    let cmd = sh(dir.path(), "touch ran");
    let log = cmd.log.clone();
    match transport().exec(cmd, None, CancellationToken::new()).await {
        Err(TransportError::Log { path, .. }) => assert_eq!(path, log),
        other => bail!("expected a log error, got {other:?}"),
    }
    assert!(!dir.path().join("ran").exists(), "the command ran without a log");
    Ok(())
}
