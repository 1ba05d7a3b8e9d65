//! Transports: how a command reaches a server and runs there.
//!
//! Architecture invariant: only transports start processes or open
//! connections to servers. The scheduler hands a [`Command`] to a
//! transport and gets an [`Outcome`] back; output lines are streamed to the
//! task's log file and, when asked, to a channel (the live progress view).
//!
//! Secrets travel in [`Command::env`], never in `args`: arguments are
//! visible in a process list, the environment of another user's process
//! is not.

pub mod local;
pub mod ssh;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What to run.
#[derive(Debug, Clone)]
pub struct Command {
    /// The program, e.g. `/bin/sh`.
    pub program: String,
    /// Its arguments, e.g. the script path. Never secrets.
    pub args: Vec<String>,
    /// Variables added to the environment (secrets may be here).
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub cwd: PathBuf,
    /// Kill the command (and everything it started) after this long.
    pub timeout: Option<Duration>,
    /// stdout and stderr are appended here, line by line.
    pub log: PathBuf,
    /// Secrets replaced in every output line before it is logged or
    /// streamed, including a secret the command echoes back.
    pub mask: crate::mask::Masker,
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

/// A transport could not run the command at all.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The process could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// What was started.
        program: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The log file could not be written.
    #[error("cannot write log {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Other I/O failure while supervising the command.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs commands on a server.
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
}
