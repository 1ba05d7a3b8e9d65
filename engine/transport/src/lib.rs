//! Transports: how a task's work reaches a server and runs there.
//!
//! A [`Transport`] is everything a task needs of a server: run a command
//! ([`Transport::exec`]), have a directory of the run there
//! ([`Transport::run_dir`]), put files into it ([`Transport::stage`]:
//! scripts, rendered templates), remove them ([`Transport::remove`]) and
//! let go at the end ([`Transport::finish`]). Two implement it: [`local`]
//! (processes on this machine) and [`ssh`] (one SSH connection per host,
//! agentless).
//!
//! Architecture invariant: only transports start processes or open
//! connections to servers. The scheduler hands a [`Command`] to a
//! transport and gets an [`Outcome`] back; output lines are streamed to the
//! task's log file and, when asked, to a channel (the live progress view).
//! Every error says how it failed ([`TransportError::kind`]): transient
//! (try again) or permanent (a refused login, a changed host key, a
//! missing program).
//!
//! Secrets travel in [`Command::env`], never in `args`: arguments are
//! visible in a process list, the environment of another user's process
//! is not.

pub mod local;
pub mod mask;
pub mod ssh;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use drover_core::FailureKind;

use crate::ssh::SshError;

/// What to run.
#[derive(Debug, Clone)]
pub struct Command {
    /// The program, e.g. `/bin/sh`.
    pub program: String,
    /// Its arguments, e.g. the script path. Never secrets.
    pub args: Vec<String>,
    /// A shell script's text, run by `program`, which must then be a POSIX
    /// shell (`/bin/sh`). Nothing is staged for it: the SSH transport sends
    /// it with the command, on the channel's standard input, and runs it in
    /// the command's own shell; the local transport runs `program -c SCRIPT
    /// ARGS...` (so `args[0]` is its `$0` there).
    pub script: Option<String>,
    /// Files written before the command starts and removed when it has
    /// ended, whatever its outcome: rendered templates, which may hold
    /// secrets, live only as long as the command that reads them.
    pub files: Option<Files>,
    /// Remove the run's directory that `cwd` is in once the command has
    /// ended: it is the run's last command on this server, and the end of
    /// the run then has nothing left to remove there (a later command or
    /// staging makes the directory again). Only the SSH transport acts on
    /// it; the local one removes its directories in
    /// [`Transport::finish`], which costs no round trip.
    pub remove_run_dir: bool,
    /// Variables added to the environment (secrets may be here).
    pub env: Vec<(String, String)>,
    /// The working directory; made if missing.
    pub cwd: PathBuf,
    /// Kill the command (and everything it started) after this long.
    pub timeout: Option<Duration>,
    /// stdout and stderr are appended here, line by line.
    pub log: PathBuf,
    /// Secrets replaced in every output line before it is logged or
    /// streamed, including a secret the command echoes back.
    pub mask: crate::mask::Masker,
}

/// Files for one command (see [`Command::files`]).
#[derive(Clone, Default)]
pub struct Files {
    /// The directory they go into (absolute; made mode 700), removed with
    /// them afterwards.
    pub dir: String,
    /// Each file's name (one path component) and content (mode 600).
    pub files: Vec<(String, String)>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The contents may hold secrets.
        let names: Vec<&str> = self.files.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Files")
            .field("dir", &self.dir)
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

impl Files {
    /// Why these files cannot be written, if they cannot: a name that is
    /// not one path component, a directory that is not absolute, a NUL
    /// byte.
    pub fn problem(&self) -> Option<String> {
        if !self.dir.starts_with('/') || self.dir.contains('\0') || self.dir.trim_end_matches('/').is_empty() {
            return Some(format!("{:?} is not an absolute directory below /", self.dir));
        }
        for (name, content) in &self.files {
            if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
                return Some(format!("{name:?} is not a file name"));
            }
            if content.contains('\0') {
                return Some(format!("the content of {name} holds a NUL byte"));
            }
        }
        None
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Where it came from.
    pub stream: Stream,
    /// The line, without its newline.
    pub line: String,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this status.
    Exited(i32),
    /// A signal (not ours) ended it.
    Signaled(i32),
    /// The timeout expired; it and its process group were killed.
    TimedOut,
    /// The cancellation token fired; it and its process group were killed.
    Cancelled,
}

impl Outcome {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        *self == Outcome::Exited(0)
    }
}

/// A transport could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The SSH transport failed (connecting, authenticating, a channel, a
    /// helper on the server); the error names the server.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// The process could not be started here.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// What was started.
        program: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The program does not exist or cannot be executed.
    #[error("{host}: cannot run {program}: not found or not executable")]
    NotFound {
        /// The server.
        host: String,
        /// The program.
        program: String,
    },
    /// The log file could not be written.
    #[error("cannot write log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file operation here failed (staging, the run directory).
    #[error("{what}: {source}")]
    Files {
        /// What was being done, naming the path.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// Other I/O failure while supervising the command.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl TransportError {
    /// Whether another attempt can help.
    pub fn kind(&self) -> FailureKind {
        match self {
            TransportError::Ssh(e) => e.kind(),
            TransportError::NotFound { .. } => FailureKind::Permanent,
            TransportError::Spawn { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => FailureKind::Permanent,
                _ => FailureKind::Transient,
            },
            TransportError::Log { .. } | TransportError::Files { .. } | TransportError::Io(_) => FailureKind::Transient,
        }
    }
}

/// Runs commands on a server and keeps the run's files there.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// Run `cmd` to the end (or until its timeout or `cancel`), appending
    /// its output to `cmd.log` and sending each line to `lines` if given.
    async fn exec(
        &self,
        cmd: Command,
        lines: Option<mpsc::UnboundedSender<LogLine>>,
        cancel: CancellationToken,
    ) -> Result<Outcome, TransportError>;

    /// The run's directory on the server (made on first use, private to
    /// whoever the run's commands run as), as the server names it.
    async fn run_dir(&self, run_id: &str) -> Result<String, TransportError>;

    /// Copies the local directory tree `local` to `remote` on the server
    /// (made if missing; files replaced), keeping each file's permission
    /// bits. Symbolic links are refused.
    async fn stage(&self, local: &Path, remote: &str) -> Result<(), TransportError>;

    /// Removes `remote` and everything under it.
    async fn remove(&self, remote: &str) -> Result<(), TransportError>;

    /// The run is over: remove the run's directories (unless
    /// `keep_run_dirs`) and release the connection. A later call opens a
    /// new one.
    async fn finish(&self, keep_run_dirs: bool) -> Result<(), TransportError>;
}
