//! The local transport: runs a command as a child process of drover.
//!
//! Layout of one [`LocalTransport::exec`] call:
//!
//! - the child is spawned in a process group of its own, so that everything
//!   it starts (short of what detaches itself with `setsid`) can be signalled
//!   at once with `killpg`;
//! - two reader tasks, one per pipe, split the output into lines and send
//!   them, in arrival order, down one channel to a sink task that appends
//!   them to the log file and forwards them to the caller's channel;
//! - `exec` itself waits for the first of: the child's exit, the timeout,
//!   the cancellation token; then it makes sure the process group is gone,
//!   waits (for a bounded time) for the readers to see the pipes close, and
//!   waits for the sink to flush the log.
//!
//! Architecture invariant: a task's processes do not outlive the task. When
//! the main process exits, whatever it left running in its process group is
//! terminated too (SIGTERM, then SIGKILL after a grace period). A script that
//! means to start a daemon must detach it into a session of its own with
//! `setsid` (the webhello taskserv starts its server with `setsid nohup ...`),
//! and should point the daemon's standard streams away from our pipes.
//!
//! The child's environment is [`Command::env`] plus only the variables of
//! drover's own environment named in [`INHERITED_ENV`]: a script never sees
//! the orchestrator's tokens or cloud credentials.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::mask::Masker;

/// The variables of drover's own environment a command run here inherits
/// (when set); everything else it gets comes from [`Command::env`] (the
/// DROVER_* variables, the workflow's variables, its secrets).
pub const INHERITED_ENV: [&str; 8] = ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];

use super::{Command, LogLine, Outcome, Stream, Transport, TransportError};

/// How long a process group gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// How long, once the process group is gone, the readers may go on waiting
/// for the pipes to close. Only a process that escaped the group (`setsid`)
/// but kept our stdout or stderr can hold them open longer; its output after
/// that is not the task's.
const DRAIN: Duration = Duration::from_secs(1);

/// How often to look whether a process group still has live members.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// Longer lines are split: a program that writes without newlines must not
/// make drover buffer without bound.
const MAX_LINE: u64 = 64 * 1024;

/// Lines in flight between the readers and the sink. Bounded so that a slow
/// log disk slows the child down (its pipe fills) instead of growing memory.
const LINE_QUEUE: usize = 1024;

/// Runs commands as child processes on the machine drover runs on.
///
/// Each command gets a process group of its own; on timeout, cancellation
/// or after the main process exits, the whole group is terminated (SIGTERM,
/// then SIGKILL after two seconds), so nothing a task started outlives it
/// unless it detached itself with `setsid`.
///
/// A run's directory is `<root>/<run id>`, under the root the transport
/// was made with.
#[derive(Debug)]
pub struct LocalTransport {
    root: PathBuf,
    /// Run directories made, removed by [`Transport::finish`].
    run_dirs: std::sync::Mutex<Vec<PathBuf>>,
}

impl LocalTransport {
    /// A transport keeping run directories under `root`.
    pub fn new(root: PathBuf) -> LocalTransport {
        LocalTransport {
            root,
            run_dirs: std::sync::Mutex::new(Vec::new()),
        }
    }
}

fn files_error(what: String) -> impl FnOnce(io::Error) -> TransportError {
    move |source| TransportError::Files { what, source }
}

/// Copies the tree `from` into `to`, keeping permission bits; refuses
/// links (the SSH transport does too).
fn copy_tree(from: &Path, to: &Path) -> Result<(), TransportError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(from).map_err(files_error(format!("cannot read {}", from.display())))?;
    if meta.file_type().is_symlink() {
        return Err(TransportError::Files {
            what: format!("cannot stage {}", from.display()),
            source: io::Error::new(io::ErrorKind::InvalidInput, "symbolic links are not staged"),
        });
    }
    if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(files_error(format!("cannot create {}", to.display())))?;
        for entry in std::fs::read_dir(from).map_err(files_error(format!("cannot read {}", from.display())))? {
            let entry = entry.map_err(files_error(format!("cannot read {}", from.display())))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        std::fs::copy(from, to).map_err(files_error(format!(
            "cannot copy {} to {}",
            from.display(),
            to.display()
        )))?;
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777))
        .map_err(files_error(format!("cannot set the mode of {}", to.display())))
}

#[async_trait::async_trait]
impl Transport for LocalTransport {
    async fn run_dir(&self, run_id: &str) -> Result<String, TransportError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.root.join(run_id);
        let made = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir);
        made.map_err(files_error(format!("cannot create {}", dir.display())))?;
        let mut dirs = self.run_dirs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !dirs.contains(&dir) {
            dirs.push(dir.clone());
        }
        Ok(dir.display().to_string())
    }

    async fn stage(&self, local: &Path, remote: &str) -> Result<(), TransportError> {
        let (local, remote) = (local.to_path_buf(), PathBuf::from(remote));
        tokio::task::spawn_blocking(move || copy_tree(&local, &remote))
            .await
            .map_err(|e| TransportError::Io(io::Error::other(e)))?
    }

    async fn remove(&self, remote: &str) -> Result<(), TransportError> {
        match tokio::fs::remove_dir_all(remote).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(TransportError::Files {
                what: format!("cannot remove {remote}"),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    async fn finish(&self, keep_run_dirs: bool) -> Result<(), TransportError> {
        let dirs = std::mem::take(&mut *self.run_dirs.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if !keep_run_dirs {
            for dir in dirs {
                self.remove(&dir.display().to_string()).await?;
            }
        }
        Ok(())
    }

    async fn exec(
        &self,
        cmd: Command,
        lines: Option<mpsc::UnboundedSender<LogLine>>,
        cancel: CancellationToken,
    ) -> Result<Outcome, TransportError> {
        // Checked here because spawn reports a missing cwd as a bare ENOENT,
        // which reads as if the program were missing.
        check_cwd(&cmd).await?;
        // Opened before spawning: a command whose output cannot be recorded
        // is not started.
        let log = open_log(&cmd.log).await?;
        if let Some(files) = &cmd.files {
            write_files(files).await?;
        }
        let outcome = self.run(&cmd, log, lines, cancel).await;
        if let Some(files) = &cmd.files {
            // They may hold secrets: gone whatever the outcome.
            let _ = tokio::fs::remove_dir_all(&files.dir).await;
        }
        // `remove_run_dir` is not acted on here: removing a local directory
        // at the end of the run costs no round trip (see `finish`).
        outcome
    }
}

/// Writes a command's files: the directory 700, each file 600.
async fn write_files(files: &crate::Files) -> Result<(), TransportError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(problem) = files.problem() {
        return Err(TransportError::Files {
            what: format!("cannot write the command's files into {}", files.dir),
            source: io::Error::new(io::ErrorKind::InvalidInput, problem),
        });
    }
    let files = files.clone();
    tokio::task::spawn_blocking(move || {
        let what = format!("cannot write the command's files into {}", files.dir);
        let write = || -> io::Result<()> {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&files.dir)?;
            for (name, content) in &files.files {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(Path::new(&files.dir).join(name))?;
                std::io::Write::write_all(&mut file, content.as_bytes())?;
            }
            Ok(())
        };
        write().map_err(|source| {
            let _ = std::fs::remove_dir_all(&files.dir);
            TransportError::Files { what, source }
        })
    })
    .await
    .map_err(|e| TransportError::Io(io::Error::other(e)))?
}

impl LocalTransport {
    /// [`Transport::exec`] once the log is open and the files written.
    async fn run(
        &self,
        cmd: &Command,
        log: BufWriter<File>,
        lines: Option<mpsc::UnboundedSender<LogLine>>,
        cancel: CancellationToken,
    ) -> Result<Outcome, TransportError> {
        let mut command = tokio::process::Command::new(&cmd.program);
        if let Some(script) = &cmd.script {
            command.arg("-c").arg(script);
        }
        let mut child = command
            .args(&cmd.args)
            .env_clear()
            .envs(INHERITED_ENV.iter().filter_map(|k| std::env::var_os(k).map(|v| (k, v))))
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&cmd.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // With the guard below: if this future is dropped mid-run, the
            // child and its group die with it rather than run unsupervised.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| TransportError::Spawn {
                program: cmd.program.clone(),
                source,
            })?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| io::Error::other(format!("{} was started but has no pid", cmd.program)))?;
        let mut guard = GroupGuard { pgid: Some(pgid) };

        let (tx, rx) = mpsc::channel(LINE_QUEUE);
        let stop_reading = CancellationToken::new();
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(read_lines(
                out,
                Stream::Stdout,
                tx.clone(),
                stop_reading.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(read_lines(
                err,
                Stream::Stderr,
                tx.clone(),
                stop_reading.clone(),
            )));
        }
        // The sink ends when every sender is gone, i.e. when both readers
        // have; ours must not keep it waiting.
        drop(tx);
        let sink = tokio::spawn(write_lines(rx, log, lines, cmd.mask.clone()));

        let timeout = cmd.timeout;
        let expired = async move {
            match timeout {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        enum End {
            Exited(io::Result<ExitStatus>),
            TimedOut,
            Cancelled,
        }
        // Biased towards the exit: a command that finished as its time ran
        // out is reported as finished.
        let end = tokio::select! {
            biased;
            status = child.wait() => End::Exited(status),
            () = expired => End::TimedOut,
            () = cancel.cancelled() => End::Cancelled,
        };
        let outcome = match end {
            End::Exited(status) => {
                // The main process is done; anything it left behind in its
                // group is terminated (see the module comment).
                terminate_leftovers(pgid).await;
                status.and_then(|status| outcome_of(status, &cmd.program))
            }
            End::TimedOut => terminate_group(pgid, &mut child).await.map(|_| Outcome::TimedOut),
            End::Cancelled => terminate_group(pgid, &mut child).await.map(|_| Outcome::Cancelled),
        };
        // Everything in the group has been killed and our child reaped; from
        // here on a signal to `pgid` could reach an unrelated group that
        // reused the id.
        guard.pgid = None;

        let read = finish_readers(readers, stop_reading).await;
        let written = match sink.await {
            Ok(written) => written,
            Err(join) => Err(io::Error::other(format!("log writer failed: {join}"))),
        };
        written.map_err(|source| TransportError::Log {
            path: cmd.log.clone(),
            source,
        })?;
        read?;
        outcome.map_err(TransportError::Io)
    }
}

async fn check_cwd(cmd: &Command) -> Result<(), TransportError> {
    // Made if missing, as the SSH transport's wrapper does (`mkdir -p`).
    let problem = match tokio::fs::create_dir_all(&cmd.cwd).await {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            io::Error::new(e.kind(), "cannot be made: a parent is missing")
        }
        Err(e) => io::Error::new(e.kind(), format!("cannot be made: {e}")),
    };
    Err(TransportError::Spawn {
        program: cmd.program.clone(),
        source: io::Error::new(
            problem.kind(),
            format!("working directory {}: {problem}", cmd.cwd.display()),
        ),
    })
}

async fn open_log(path: &Path) -> Result<BufWriter<File>, TransportError> {
    let log_error = |source| TransportError::Log {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(log_error)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(log_error)?;
    Ok(BufWriter::new(file))
}

/// Kills the process group if `exec` is left before it could (its future
/// dropped, an early error return): supervision ends, so must the processes.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Ends a group whose leader, our `child`, is still running: SIGTERM to the
/// group, up to [`GRACE`] for the leader and the rest of the group to go,
/// then SIGKILL. Returns the leader's exit status.
async fn terminate_group(pgid: Pid, child: &mut Child) -> io::Result<ExitStatus> {
    // Cannot fail with ESRCH: the leader is in the group until reaped below.
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + GRACE;
    // The leader's exit is an event; it is waited for rather than polled.
    let status = tokio::time::timeout_at(deadline, child.wait()).await.ok();
    if let Some(Ok(_)) = status {
        wait_for_group(pgid, deadline).await;
    }
    // Unconditional: the group may still have members at the deadline, and
    // an empty group only answers ESRCH.
    let _ = killpg(pgid, Signal::SIGKILL);
    match status {
        Some(status) => status,
        None => child.wait().await,
    }
}

/// Ends what is left of a group whose leader has exited and been reaped:
/// SIGTERM, up to [`GRACE`], SIGKILL; nothing is sent to an empty group.
///
/// The group id was the leader's pid. The kernel does not hand it out again
/// while any process of the group lives, so a signal here reaches either our
/// leftovers or nobody, short of the group emptying and the pid being
/// recycled for a new group leader in the instant between the check and the
/// signal.
async fn terminate_leftovers(pgid: Pid) {
    if !group_has_live_members(pgid).await {
        return;
    }
    if let Err(Errno::ESRCH) = killpg(pgid, Signal::SIGTERM) {
        return;
    }
    wait_for_group(pgid, Instant::now() + GRACE).await;
    let _ = killpg(pgid, Signal::SIGKILL);
}

/// Polls until group `pgid` has no live member or `deadline` passes: there
/// is no event for "the group is empty", only for the exit of our own child.
async fn wait_for_group(pgid: Pid, deadline: Instant) {
    while Instant::now() < deadline && group_has_live_members(pgid).await {
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// Whether any process in group `pgid` is still running.
///
/// `killpg(pgid, 0)` alone is not enough: it also succeeds for zombies, and
/// a grandchild orphaned by our child stays one until init reaps it, which
/// some inits do late or never (containers; in the sandbox these tests were
/// written in, about two seconds late). Waiting on such zombies would cost
/// every task with leftovers the whole grace period. So on Linux the members
/// are looked up in /proc and zombies do not count; elsewhere, or if /proc
/// cannot be read, `killpg` answers.
async fn group_has_live_members(pgid: Pid) -> bool {
    // The common case, an empty group, without scanning /proc.
    if let Err(Errno::ESRCH) = killpg(pgid, None) {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        let scan = tokio::task::spawn_blocking(move || live_members_in_proc(pgid)).await;
        if let Ok(Some(live)) = scan {
            return live;
        }
    }
    killpg(pgid, None).is_ok()
}

/// `Some(true)` if /proc lists a process of group `pgid` that is not a
/// zombie, `None` if /proc cannot be read.
#[cfg(target_os = "linux")]
fn live_members_in_proc(pgid: Pid) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let pgid = pgid.as_raw().to_string();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        // A process may exit between read_dir and here: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and
        // parentheses, so the fields are counted from the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(_ppid), Some(pgrp)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if pgrp == pgid && state != "Z" && state != "X" {
            return Some(true);
        }
    }
    Some(false)
}

fn outcome_of(status: ExitStatus, program: &str) -> io::Result<Outcome> {
    if let Some(code) = status.code() {
        Ok(Outcome::Exited(code))
    } else if let Some(signal) = status.signal() {
        Ok(Outcome::Signaled(signal))
    } else {
        Err(io::Error::other(format!(
            "{program} ended with an unexpected status: {status}"
        )))
    }
}

/// Waits up to [`DRAIN`] for the readers to reach the end of their pipes,
/// then tells them to stop, and returns the first read error.
async fn finish_readers(readers: Vec<JoinHandle<io::Result<()>>>, stop: CancellationToken) -> io::Result<()> {
    let deadline = Instant::now() + DRAIN;
    let mut first_error = None;
    for mut reader in readers {
        let joined = match tokio::time::timeout_at(deadline, &mut reader).await {
            Ok(joined) => joined,
            Err(_elapsed) => {
                // A reader stops promptly once told, passing on the partial
                // line it holds; nothing read is lost.
                stop.cancel();
                reader.await
            }
        };
        let result = joined.unwrap_or_else(|join| Err(io::Error::other(format!("output reader failed: {join}"))));
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Splits one pipe into lines (lossy UTF-8, without the newline or a `\r`
/// before it) and sends them to the sink until end of file or `stop`.
async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    stream: Stream,
    tx: mpsc::Sender<LogLine>,
    stop: CancellationToken,
) -> io::Result<()> {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = (&mut reader).take(MAX_LINE);
        // read_until keeps what it has read in `buf` when cancelled, so a
        // stop loses nothing that came through the pipe.
        let read = tokio::select! {
            read = limited.read_until(b'\n', &mut buf) => Some(read?),
            () = stop.cancelled() => None,
        };
        if buf.is_empty() {
            // End of file (a read of 0 bytes), or stopped between lines.
            return Ok(());
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        let line = LogLine {
            stream,
            line: String::from_utf8_lossy(&buf).into_owned(),
        };
        if tx.send(line).await.is_err() || read.is_none() {
            // The sink is gone (it only goes when it failed) or we were told to stop.
            return Ok(());
        }
    }
}

/// Appends lines to the log and forwards them to `lines`, until every reader
/// is done. A failing log does not stop the draining (the child must not
/// block on a full pipe, and the live view still gets the lines); its first
/// error is returned at the end.
async fn write_lines(
    mut rx: mpsc::Receiver<LogLine>,
    mut log: BufWriter<File>,
    lines: Option<mpsc::UnboundedSender<LogLine>>,
    mask: Masker,
) -> io::Result<()> {
    let mut failed: Option<io::Error> = None;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(mut line) = next {
            if !mask.is_empty() {
                line.line = mask.mask(&line.line);
            }
            if failed.is_none() {
                let written = match log.write_all(line.line.as_bytes()).await {
                    Ok(()) => log.write_all(b"\n").await,
                    Err(e) => Err(e),
                };
                failed = written.err();
            }
            if let Some(lines) = &lines {
                // The receiver may have gone (a closed progress view); the
                // log is still written.
                let _ = lines.send(line);
            }
            next = rx.try_recv().ok();
        }
        // Flushed whenever the queue runs dry, so that someone following the
        // log sees lines as they come, and a busy command still gets batched
        // writes.
        if failed.is_none() {
            failed = log.flush().await.err();
        }
    }
    match failed {
        Some(e) => Err(e),
        None => log.flush().await,
    }
}
