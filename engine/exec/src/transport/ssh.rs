//! The SSH transport: runs commands on one server over one SSH connection,
//! agentless (nothing is installed on the server; it needs sshd with the
//! SFTP subsystem, /bin/sh, util-linux `setsid` and /proc).
//!
//! Layout:
//!
//! - [`SshTransport::connect`] opens the connection (`handshake`): TCP within
//!   the connect timeout, the host key checked against known_hosts, then the
//!   key file and/or ssh-agent. It then makes a remote directory for this
//!   transport (`/tmp/drover-ssh.XXXXXXXXXX`, mode 700) holding the wrapper
//!   script (`remote::WRAPPER`).
//! - Every [`Transport::exec`] opens a session channel on that connection
//!   (at most [`EXEC_CHANNELS`] at once), uploads the command's environment
//!   as a mode-600 file over SFTP into the directory, and runs the wrapper,
//!   which unlinks the file, reports the process group it runs in, enters
//!   the working directory, loads the environment and `exec`s the program.
//!   Output is split into lines, masked, logged and streamed (`output`).
//! - On timeout or cancellation a second channel runs `remote::KILL_GROUP`
//!   against the reported group: SIGTERM, two seconds, SIGKILL. After a
//!   normal exit the same script ends whatever the command left running in
//!   its group, as the local transport does.
//! - A connection that broke (sshd restarted, the network dropped) is
//!   replaced on the next use, once per call; commands that were running
//!   on it are reported as failed, and their process groups are ended
//!   through the new connection before anything else runs on it.
//!
//! Architecture invariant, as for the local transport: a task's processes
//! do not outlive the task, and no secret appears on a remote command line.

mod handshake;
mod output;
mod remote;
mod upload;

use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use russh::client::{self, Msg};
use russh::{Channel, ChannelMsg, Disconnect, Sig};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::output::{Sink, Splitter};
use self::remote::{Group, Header};
use super::{Command, LogLine, Outcome, Stream, Transport, TransportError};

/// Commands running at once on one connection. OpenSSH's sshd refuses
/// channels beyond `MaxSessions` (10 by default) per connection; the other
/// two are the SFTP channel and the one that signals process groups.
pub const EXEC_CHANNELS: usize = 8;

/// How long a process group gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// How long, once the process group has been dealt with, to go on waiting
/// for the channel to close. Only a process that escaped the group
/// (`setsid`) but kept our stdout or stderr can hold it open longer; its
/// output after that is not the task's.
const DRAIN: Duration = Duration::from_secs(1);

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// The server's name, for messages.
    pub host: String,
    /// The address to connect to (IP address or DNS name); also the name
    /// looked up in known_hosts.
    pub address: String,
    /// The TCP port.
    pub port: u16,
    /// The remote user.
    pub user: String,
    /// A private key file (OpenSSH format, unencrypted; ed25519 or ECDSA).
    pub key_file: Option<PathBuf>,
    /// Also try the keys of the ssh-agent at `SSH_AUTH_SOCK`.
    pub use_agent: bool,
    /// The known_hosts file host keys are checked against (OpenSSH format;
    /// a port other than 22 is written `[address]:port`).
    pub known_hosts: PathBuf,
    /// What to do with a host known_hosts does not mention.
    pub host_key_policy: HostKeyPolicy,
    /// Limit for TCP connect, handshake, authentication and setup together;
    /// also for the server's answer to a channel request.
    pub connect_timeout: Duration,
    /// Keepalive interval (zero: none). Three unanswered keepalives close
    /// the connection, and the next command reconnects.
    pub keepalive: Duration,
}

/// How host keys are trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Strict: the server's key must be in known_hosts.
    Verify,
    /// A host known_hosts does not mention at all is trusted on first
    /// contact and its key added to known_hosts. A host recorded with other
    /// keys is still refused, as under [`HostKeyPolicy::Verify`].
    TrustOnFirstUse,
}

/// What [`SshTransport::cleanup`] does with the run directories made by
/// [`SshTransport::temp_dir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunDirs {
    /// Remove them.
    Remove,
    /// Leave them for inspection.
    Keep,
}

/// Why the SSH transport could not do something. Every message starts with
/// the server's name.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// Nothing listens at the address.
    #[error("{host}: connection to {address} refused: is sshd running and listening there?")]
    Refused {
        /// The server.
        host: String,
        /// `address:port`.
        address: String,
    },
    /// No answer within the connect timeout.
    #[error("{host}: no answer from {address} within {after:?} while {during}")]
    TimedOut {
        /// The server.
        host: String,
        /// `address:port`.
        address: String,
        /// The timeout.
        after: Duration,
        /// What was going on.
        during: &'static str,
    },
    /// The address cannot be reached (no route, unknown name, ...).
    #[error("{host}: cannot reach {address}: {source}")]
    Network {
        /// The server.
        host: String,
        /// `address:port`.
        address: String,
        /// Why.
        source: io::Error,
    },
    /// The server accepted none of our keys.
    #[error(
        "{host}: the server accepted no key for user {user} (tried {tried}); is the public key in its authorized_keys?"
    )]
    AuthFailed {
        /// The server.
        host: String,
        /// The remote user.
        user: String,
        /// What was offered.
        tried: String,
    },
    /// known_hosts records other keys for this server: either someone is in
    /// the middle, or the server was reinstalled.
    #[error(
        "{host}: HOST KEY MISMATCH for {known_as}: the server offered {offered}, which is not the key recorded at \
         {known_hosts}:{line}; someone may be intercepting the connection. If the host was reinstalled, remove that \
         line and connect again",
        known_hosts = known_hosts.display()
    )]
    HostKeyMismatch {
        /// The server.
        host: String,
        /// Its name in known_hosts.
        known_as: String,
        /// The file.
        known_hosts: PathBuf,
        /// The (first) line recording this host.
        line: usize,
        /// The offered key's algorithm and SHA256 fingerprint.
        offered: String,
    },
    /// With [`HostKeyPolicy::Verify`]: known_hosts does not mention the server.
    #[error(
        "{host}: unknown host key for {known_as} ({offered}): it is not in {known_hosts}; add it there (after checking \
         the fingerprint) or choose trust-on-first-use",
        known_hosts = known_hosts.display()
    )]
    UnknownHostKey {
        /// The server.
        host: String,
        /// Its name in known_hosts.
        known_as: String,
        /// The file.
        known_hosts: PathBuf,
        /// The offered key's algorithm and SHA256 fingerprint.
        offered: String,
    },
    /// known_hosts cannot be read or written.
    #[error("{host}: known_hosts file {}: {message}", path.display())]
    KnownHosts {
        /// The server.
        host: String,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The key file cannot be used.
    #[error("{host}: cannot use key file {}: {message} (encrypted keys must go through ssh-agent)", path.display())]
    Key {
        /// The server.
        host: String,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The ssh-agent cannot be used.
    #[error("{host}: {message}")]
    Agent {
        /// The server.
        host: String,
        /// What went wrong.
        message: String,
    },
    /// The connection broke.
    #[error("{host}: connection lost: {reason}")]
    Disconnected {
        /// The server.
        host: String,
        /// Why, as far as known.
        reason: String,
    },
    /// The server did something the SSH protocol or this transport does not
    /// expect.
    #[error("{host}: SSH protocol error: {message}")]
    Protocol {
        /// The server.
        host: String,
        /// What.
        message: String,
    },
    /// A helper command on the server failed.
    #[error("{host}: {what} failed: {message}")]
    Remote {
        /// The server.
        host: String,
        /// What was being done.
        what: String,
        /// Its error output or status.
        message: String,
    },
    /// An SFTP operation failed.
    #[error("{host}: SFTP {path}: {message}")]
    Sftp {
        /// The server.
        host: String,
        /// The remote path.
        path: String,
        /// Why.
        message: String,
    },
    /// A local file to upload cannot be read or is of a kind not uploaded.
    #[error("{host}: cannot upload {}: {message}", path.display())]
    Upload {
        /// The server.
        host: String,
        /// The local path.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// An argument cannot be passed to the server as it is.
    #[error("{host}: {message}")]
    InvalidInput {
        /// The server.
        host: String,
        /// What is wrong.
        message: String,
    },
}

impl SshError {
    /// The closest I/O error kind, for [`TransportError`]'s `io::Error`s.
    fn io_kind(&self) -> io::ErrorKind {
        match self {
            SshError::Refused { .. } => io::ErrorKind::ConnectionRefused,
            SshError::TimedOut { .. } => io::ErrorKind::TimedOut,
            SshError::Network { source, .. } => source.kind(),
            SshError::AuthFailed { .. }
            | SshError::HostKeyMismatch { .. }
            | SshError::UnknownHostKey { .. }
            | SshError::Key { .. } => io::ErrorKind::PermissionDenied,
            SshError::Disconnected { .. } => io::ErrorKind::ConnectionAborted,
            SshError::InvalidInput { .. } => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        }
    }

    /// Wraps the error in an `io::Error` that keeps it as its source, so a
    /// caller holding a [`TransportError`] can still downcast to it.
    pub fn into_io(self) -> io::Error {
        io::Error::new(self.io_kind(), self)
    }
}

/// Runs commands on one server over one SSH connection, several at once.
///
/// The connection is opened by [`SshTransport::connect`] and reused for
/// every command; if it breaks, the next call reconnects once to the same
/// target. Dropping the transport closes the connection; [`cleanup`]
/// also removes what the transport left on the server.
///
/// [`cleanup`]: SshTransport::cleanup
pub struct SshTransport {
    target: SshTarget,
    /// The current connection. Commands clone the `Arc` and run without the
    /// lock; it is held across a reconnect so that commands that all find
    /// the connection broken reconnect once between them, not each.
    connection: tokio::sync::Mutex<Arc<Connection>>,
    /// Channels for commands (see [`EXEC_CHANNELS`]).
    exec_slots: Arc<Semaphore>,
    /// The channel for signalling process groups: separate from the command
    /// slots, or eight hung commands would leave no channel to kill them.
    kill_slot: Arc<Semaphore>,
    /// Names the environment files: unique for the transport's lifetime.
    next_env: AtomicU64,
    /// Directories made by [`SshTransport::temp_dir`].
    run_dirs: std::sync::Mutex<Vec<String>>,
    /// Process groups of commands that were running when a connection
    /// broke; ended by the next reconnect.
    orphans: std::sync::Mutex<Vec<Group>>,
}

impl std::fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTransport")
            .field("host", &self.target.host)
            .field("address", &self.target.address)
            .field("port", &self.target.port)
            .field("user", &self.target.user)
            .finish_non_exhaustive()
    }
}

/// One authenticated connection and what was set up on it.
struct Connection {
    host: String,
    handle: client::Handle<handshake::Client>,
    /// The transport's remote directory: the wrapper and environment files.
    dir: String,
    /// Opened on first use; reset when it fails other than with a status,
    /// so that a broken SFTP channel does not outlive its first error.
    sftp: tokio::sync::Mutex<Option<Arc<SftpSession>>>,
    /// How long the server may take to answer a channel request.
    answer_within: Duration,
}

/// How a helper command ended.
struct Finished {
    status: Option<u32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Connection {
    /// Connects and sets up the remote directory, all within the connect
    /// timeout. `previous_dir` is the directory of the connection this one
    /// replaces, taken back if it is still there.
    async fn open(target: &SshTarget, previous_dir: Option<&str>) -> Result<Connection, SshError> {
        let timed_out = |during| SshError::TimedOut {
            host: target.host.clone(),
            address: format!("{}:{}", target.address, target.port),
            after: target.connect_timeout,
            during,
        };
        let deadline = Instant::now() + target.connect_timeout;
        let handle = tokio::time::timeout_at(deadline, handshake::open(target))
            .await
            .map_err(|_| timed_out("connecting"))??;
        let mut connection = Connection {
            host: target.host.clone(),
            handle,
            dir: String::new(),
            sftp: tokio::sync::Mutex::new(None),
            answer_within: target.connect_timeout,
        };
        let setup = async {
            let channel = connection.open_channel().await?;
            connection
                .run_on(
                    channel,
                    remote::SETUP,
                    "drover-setup",
                    &[previous_dir.unwrap_or_default().as_bytes()],
                    Some(remote::WRAPPER.as_bytes()),
                )
                .await
        };
        let finished = tokio::time::timeout_at(deadline, setup)
            .await
            .map_err(|_| timed_out("running the first command (a slow login shell or shell startup file?)"))??;
        connection.dir = connection.expect_line(finished, "making the remote directory")?;
        Ok(connection)
    }

    /// Opens a session channel. A server that does not answer within the
    /// connect timeout counts as a lost connection, so that the caller
    /// reconnects.
    async fn open_channel(&self) -> Result<Channel<Msg>, SshError> {
        match tokio::time::timeout(self.answer_within, self.handle.channel_open_session()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(handshake::session_error(&self.host, e)),
            Err(_) => Err(SshError::Disconnected {
                host: self.host.clone(),
                reason: format!("no answer to a channel request within {:?}", self.answer_within),
            }),
        }
    }

    /// Runs a helper `script` on `channel` with `args`, feeding it `stdin`,
    /// and collects its output.
    async fn run_on(
        &self,
        mut channel: Channel<Msg>,
        script: &str,
        name: &str,
        args: &[&[u8]],
        stdin: Option<&[u8]>,
    ) -> Result<Finished, SshError> {
        let lost = |e| handshake::session_error(&self.host, e);
        channel
            .exec(true, remote::sh_line(script, name, args))
            .await
            .map_err(lost)?;
        if let Some(mut data) = stdin {
            channel.data(&mut data).await.map_err(lost)?;
        }
        channel.eof().await.map_err(lost)?;
        let mut finished = Finished {
            status: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => finished.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, ext: 1 } => finished.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => finished.status = Some(exit_status),
                ChannelMsg::Failure => {
                    return Err(SshError::Protocol {
                        host: self.host.clone(),
                        message: format!("the server refused to run {name}"),
                    });
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        if finished.status.is_none() && self.handle.is_closed() {
            return Err(SshError::Disconnected {
                host: self.host.clone(),
                reason: format!("while running {name}"),
            });
        }
        Ok(finished)
    }

    /// The single line a successful helper printed, or its failure.
    fn expect_line(&self, finished: Finished, what: &str) -> Result<String, SshError> {
        let stdout = String::from_utf8_lossy(&finished.stdout);
        let line = stdout.trim_end_matches('\n');
        if finished.status == Some(0) && line.starts_with('/') && !line.contains('\n') {
            return Ok(line.to_string());
        }
        Err(self.helper_failed(finished, what))
    }

    fn helper_failed(&self, finished: Finished, what: &str) -> SshError {
        let stderr = String::from_utf8_lossy(&finished.stderr);
        SshError::Remote {
            host: self.host.clone(),
            what: what.to_string(),
            message: match finished.status {
                Some(status) => format!("exit status {status}: {}", stderr.trim()),
                None => format!("no exit status: {}", stderr.trim()),
            },
        }
    }

    /// The SFTP session, opened on first use.
    async fn sftp(&self) -> Result<Arc<SftpSession>, SshError> {
        let mut slot = self.sftp.lock().await;
        if let Some(sftp) = slot.as_ref() {
            return Ok(sftp.clone());
        }
        let channel = self.open_channel().await?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| handshake::session_error(&self.host, e))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| SshError::Sftp {
                host: self.host.clone(),
                path: String::new(),
                message: format!("cannot start the SFTP subsystem (is it enabled in sshd_config?): {e}"),
            })?;
        let sftp = Arc::new(sftp);
        *slot = Some(sftp.clone());
        Ok(sftp)
    }

    /// Maps an SFTP error; one that is not the server's answer means the
    /// SFTP channel is broken, so the next use opens a new one.
    async fn sftp_error(&self, path: &str, e: russh_sftp::client::error::Error) -> SshError {
        if !matches!(e, russh_sftp::client::error::Error::Status(_)) {
            *self.sftp.lock().await = None;
        }
        SshError::Sftp {
            host: self.host.clone(),
            path: path.to_string(),
            message: e.to_string(),
        }
    }

    /// Writes a command's environment file (mode 600, created exclusively)
    /// and returns its remote path.
    async fn write_env(&self, number: u64, text: &str) -> Result<String, SshError> {
        let sftp = self.sftp().await?;
        let path = format!("{}/{number}.env", self.dir);
        let attrs = FileAttributes {
            permissions: Some(0o600),
            ..FileAttributes::default()
        };
        let flags = OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::WRITE;
        let mut file = match sftp.open_with_flags_and_attributes(path.as_str(), flags, attrs).await {
            Ok(file) => file,
            Err(e) => return Err(self.sftp_error(&path, e).await),
        };
        let written = match file.write_all(text.as_bytes()).await {
            Ok(()) => file.shutdown().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            self.remove_env(&path).await;
            return Err(self.sftp_error(&path, e.into()).await);
        }
        Ok(path)
    }

    /// Removes an environment file the wrapper did not get to unlink
    /// (best effort: the directory is private and removed by cleanup).
    async fn remove_env(&self, path: &str) {
        if let Ok(sftp) = self.sftp().await
            && let Err(e) = sftp.remove_file(path).await
        {
            let not_found =
                matches!(&e, russh_sftp::client::error::Error::Status(s) if s.status_code == StatusCode::NoSuchFile);
            if !not_found {
                let _ = self.sftp_error(path, e).await;
            }
        }
    }
}

/// Ends process group `group` on `connection`: SIGTERM, up to [`GRACE`],
/// SIGKILL (see `remote::KILL_GROUP`), on the dedicated kill channel.
async fn kill_group(connection: Arc<Connection>, slot: Arc<Semaphore>, group: Group) -> Result<(), SshError> {
    let _permit = slot.acquire_owned().await;
    let grace_tenths = u32::try_from(GRACE.as_millis() / 100).unwrap_or(20);
    let args = group.kill_args(grace_tenths);
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    // The script takes at most GRACE; the rest is the round trip.
    let limit = GRACE + connection.answer_within * 2;
    let run = async {
        let channel = connection.open_channel().await?;
        connection
            .run_on(channel, remote::KILL_GROUP, "drover-kill", &args, None)
            .await
    };
    match tokio::time::timeout(limit, run).await {
        Ok(Ok(finished)) if finished.status == Some(0) => Ok(()),
        Ok(Ok(finished)) => Err(connection.helper_failed(finished, "ending a process group")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(SshError::Disconnected {
            host: connection.host.clone(),
            reason: format!("no answer within {limit:?} while ending process group {}", group.pgid),
        }),
    }
}

/// Ends the remote process group if `exec` is left while the command runs
/// (its future dropped): supervision ends, so must the processes.
struct GroupGuard {
    armed: Option<(Arc<Connection>, Arc<Semaphore>, Group)>,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some((connection, slot, group)) = self.armed.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(kill_group(connection, slot, group));
        }
    }
}

impl SshTransport {
    /// Connects to `target` (see [`SshTarget`] for what is checked and
    /// tried) and sets up the transport's remote directory.
    pub async fn connect(target: &SshTarget) -> Result<SshTransport, SshError> {
        let connection = Connection::open(target, None).await?;
        Ok(SshTransport {
            target: target.clone(),
            connection: tokio::sync::Mutex::new(Arc::new(connection)),
            exec_slots: Arc::new(Semaphore::new(EXEC_CHANNELS)),
            kill_slot: Arc::new(Semaphore::new(1)),
            next_env: AtomicU64::new(0),
            run_dirs: std::sync::Mutex::new(Vec::new()),
            orphans: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The target this transport connects to.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// The transport's own remote directory (the wrapper and, briefly,
    /// environment files), for diagnostics. Made anew if the host lost it.
    pub async fn remote_dir(&self) -> Result<String, SshError> {
        Ok(self.connection().await?.dir.clone())
    }

    /// The current connection, replaced first if it is known to be closed.
    async fn connection(&self) -> Result<Arc<Connection>, SshError> {
        let current = self.connection.lock().await.clone();
        if current.handle.is_closed() {
            return self.reconnect(&current).await;
        }
        Ok(current)
    }

    /// A new session channel; on a connection found broken, reconnects once
    /// and tries again.
    async fn channel(&self) -> Result<(Arc<Connection>, Channel<Msg>), SshError> {
        let current = self.connection.lock().await.clone();
        if !current.handle.is_closed() {
            match current.open_channel().await {
                Ok(channel) => return Ok((current, channel)),
                Err(SshError::Disconnected { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let fresh = self.reconnect(&current).await?;
        let channel = fresh.open_channel().await?;
        Ok((fresh, channel))
    }

    /// Replaces `broken` with a new connection to the same target, unless
    /// another caller already has. Ends the process groups that were left
    /// running by the broken connection before anything else runs.
    async fn reconnect(&self, broken: &Arc<Connection>) -> Result<Arc<Connection>, SshError> {
        let mut slot = self.connection.lock().await;
        if !Arc::ptr_eq(&slot, broken) && !slot.handle.is_closed() {
            return Ok(slot.clone());
        }
        // A connection that stopped answering may still be open: say
        // goodbye (bounded, it may not answer) so that the server's side
        // goes too.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            slot.handle.disconnect(Disconnect::ByApplication, "reconnecting", ""),
        )
        .await;
        let fresh = Arc::new(Connection::open(&self.target, Some(&slot.dir)).await?);
        *slot = fresh.clone();
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(PoisonError::into_inner));
        for group in orphans {
            // Best effort: a group that cannot be reached now is not
            // reachable later either.
            let _ = kill_group(fresh.clone(), self.kill_slot.clone(), group).await;
        }
        Ok(fresh)
    }

    /// Runs a helper script on a command channel and collects its output.
    async fn helper(&self, script: &str, name: &str, args: &[&[u8]]) -> Result<(Arc<Connection>, Finished), SshError> {
        let _permit = self.exec_slots.acquire().await;
        let (connection, channel) = self.channel().await?;
        let finished = connection.run_on(channel, script, name, args, None).await?;
        Ok((connection, finished))
    }

    /// Uploads `local` (a file or a directory tree) to `remote` over SFTP.
    ///
    /// A file gets mode `mode`; a directory gets mode `mode` and its entries
    /// keep their local permission bits. Existing files are overwritten,
    /// existing directories reused. Symbolic links and special files are
    /// refused.
    pub async fn upload(&self, local: &Path, remote: &str, mode: u32) -> Result<(), SshError> {
        let connection = self.connection().await?;
        let sftp = connection.sftp().await?;
        match upload::upload(&sftp, &self.target.host, local, remote, mode).await {
            Ok(()) => Ok(()),
            Err(upload::Failure::Local(e)) => Err(e),
            Err(upload::Failure::Remote(path, e)) => Err(connection.sftp_error(&path, e).await),
        }
    }

    /// Removes `remote` and everything under it (`rm -rf`). Refuses `/` and
    /// relative paths: a wrong argument here must not empty a home
    /// directory or a server.
    pub async fn remove_dir(&self, remote: &str) -> Result<(), SshError> {
        let trimmed = remote.trim_end_matches('/');
        if trimmed.is_empty() || !remote.starts_with('/') || !remote::passable(remote.as_bytes()) {
            return Err(SshError::InvalidInput {
                host: self.target.host.clone(),
                message: format!("refusing to remove {remote:?}: not an absolute path below /"),
            });
        }
        let (connection, finished) = self
            .helper(remote::REMOVE, "drover-remove", &[remote.as_bytes()])
            .await?;
        if finished.status == Some(0) {
            Ok(())
        } else {
            Err(connection.helper_failed(finished, &format!("removing {remote}")))
        }
    }

    /// Makes the run's remote directory `/tmp/drover-<run_id>` (mode 700)
    /// and returns its path. [`SshTransport::cleanup`] removes it unless
    /// told to keep it. `run_id` may hold letters, digits, `.`, `_`, `-`.
    pub async fn temp_dir(&self, run_id: &str) -> Result<String, SshError> {
        if !remote::valid_run_id(run_id) {
            return Err(SshError::InvalidInput {
                host: self.target.host.clone(),
                message: format!("run id {run_id:?} cannot name a directory (letters, digits, '.', '_', '-')"),
            });
        }
        let (connection, finished) = self
            .helper(remote::RUN_DIR, "drover-run-dir", &[run_id.as_bytes()])
            .await?;
        let dir = connection.expect_line(finished, "making the run directory")?;
        let mut dirs = self.run_dirs.lock().unwrap_or_else(PoisonError::into_inner);
        if !dirs.contains(&dir) {
            dirs.push(dir.clone());
        }
        Ok(dir)
    }

    /// Removes the transport's remote directory and, with
    /// [`RunDirs::Remove`], the run directories, then closes the
    /// connection. The transport stays usable: a later call reconnects.
    pub async fn cleanup(&self, run_dirs: RunDirs) -> Result<(), SshError> {
        let mut dirs = match run_dirs {
            RunDirs::Remove => std::mem::take(&mut *self.run_dirs.lock().unwrap_or_else(PoisonError::into_inner)),
            RunDirs::Keep => Vec::new(),
        };
        let connection = self.connection().await?;
        dirs.push(connection.dir.clone());
        let args: Vec<&[u8]> = dirs.iter().map(|d| d.as_bytes()).collect();
        let (connection, finished) = self.helper(remote::REMOVE, "drover-cleanup", &args).await?;
        if finished.status != Some(0) {
            return Err(connection.helper_failed(finished, "removing the remote directories"));
        }
        if let Some(sftp) = connection.sftp.lock().await.take() {
            let _ = sftp.close().await;
        }
        let _ = connection
            .handle
            .disconnect(Disconnect::ByApplication, "done", "")
            .await;
        Ok(())
    }

    /// Records a group left running by a lost connection, for the next
    /// reconnect to end.
    fn orphan(&self, group: Group) {
        self.orphans.lock().unwrap_or_else(PoisonError::into_inner).push(group);
    }
}

/// The signal number of an SSH signal name.
fn signal_number(signal: &Sig) -> Option<i32> {
    let name = match signal {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name.as_str(),
    };
    nix::sys::signal::Signal::from_str(&format!("SIG{name}"))
        .ok()
        .map(|s| s as i32)
}

/// Waits for the kill task if there is one.
async fn kill_finished(host: &str, kill: &mut Option<JoinHandle<Result<(), SshError>>>) -> Result<(), SshError> {
    match kill {
        Some(task) => task.await.unwrap_or_else(|join| {
            Err(SshError::Protocol {
                host: host.to_string(),
                message: format!("the task ending a process group failed: {join}"),
            })
        }),
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What the wrapper said at the start of standard error.
#[derive(Debug, Default)]
struct Startup {
    group: Option<Group>,
    /// `drover-exec` was seen: from here on stderr is the program's.
    started: bool,
    error: Option<String>,
    /// The first lines of stderr when the wrapper itself failed (no header
    /// at all), for the error message.
    early: Vec<String>,
}

impl Startup {
    /// Takes the protocol lines out of a batch of stderr lines.
    fn filter(&mut self, lines: Vec<LogLine>, batch: &mut Vec<LogLine>) {
        for line in lines {
            if self.started || self.error.is_some() {
                batch.push(line);
                continue;
            }
            match remote::parse_header(&line.line) {
                Some(Header::Group(group)) if self.group.is_none() => self.group = Some(group),
                Some(Header::Exec) if self.group.is_some() => self.started = true,
                Some(Header::Error(message)) if self.group.is_some() => self.error = Some(message),
                _ => {
                    if self.early.len() < 5 {
                        self.early.push(line.line.clone());
                    }
                    batch.push(line);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Transport for SshTransport {
    async fn exec(
        &self,
        cmd: Command,
        lines: Option<mpsc::UnboundedSender<LogLine>>,
        cancel: CancellationToken,
    ) -> Result<Outcome, TransportError> {
        let spawn_error = |source: io::Error| TransportError::Spawn {
            program: cmd.program.clone(),
            source,
        };
        let invalid = |message: String| {
            spawn_error(
                SshError::InvalidInput {
                    host: self.target.host.clone(),
                    message,
                }
                .into_io(),
            )
        };
        let env = remote::env_file(&cmd.env).map_err(|bad| {
            invalid(match bad {
                remote::BadVariable::Name(name) => format!("{name:?} is not a valid environment variable name"),
                remote::BadVariable::Value(name) => format!("the value of {name} holds a NUL byte"),
            })
        })?;
        let cwd = cmd.cwd.as_os_str().as_encoded_bytes();
        let mut words = std::iter::once(cmd.program.as_bytes())
            .chain(cmd.args.iter().map(|a| a.as_bytes()))
            .chain(std::iter::once(cwd));
        if let Some(bad) = words.find(|w| !remote::passable(w)) {
            return Err(invalid(format!(
                "{:?} holds a NUL byte, which no command line can carry",
                String::from_utf8_lossy(bad)
            )));
        }
        // Opened before starting: a command whose output cannot be recorded
        // is not started.
        let mut sink = Sink::open(&cmd.log, lines, cmd.mask.clone())
            .await
            .map_err(|source| TransportError::Log {
                path: cmd.log.clone(),
                source,
            })?;

        // Waiting for a slot can take long (eight hung commands); a
        // cancellation meanwhile means the command never starts. Opening
        // the channel is not raced: a channel dropped half-open would hold
        // one of the server's session slots until the connection closes.
        let _permit = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                sink.finish().await.map_err(|source| TransportError::Log { path: cmd.log.clone(), source })?;
                return Ok(Outcome::Cancelled);
            }
            permit = self.exec_slots.acquire() => permit,
        };
        let (connection, mut channel) = self.channel().await.map_err(|e| spawn_error(e.into_io()))?;
        let env_path = if cmd.env.is_empty() {
            None
        } else {
            let number = self.next_env.fetch_add(1, Ordering::Relaxed);
            Some(
                connection
                    .write_env(number, &env)
                    .await
                    .map_err(|e| spawn_error(e.into_io()))?,
            )
        };
        let mut args: Vec<&[u8]> = vec![env_path.as_deref().unwrap_or_default().as_bytes(), cwd];
        args.push(cmd.program.as_bytes());
        args.extend(cmd.args.iter().map(|a| a.as_bytes()));
        let line = remote::wrapper_line(&connection.dir, &args);
        let started = match channel.exec(true, line).await {
            Ok(()) => channel.eof().await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            if let Some(path) = &env_path {
                connection.remove_env(path).await;
            }
            return Err(spawn_error(handshake::session_error(&self.target.host, e).into_io()));
        }

        let mut guard = GroupGuard { armed: None };
        let mut stdout = Splitter::new(Stream::Stdout);
        let mut stderr = Splitter::new(Stream::Stderr);
        let mut startup = Startup::default();
        let mut exit: Option<Outcome> = None;
        let mut unknown_signal: Option<String> = None;
        let mut stop: Option<Outcome> = None;
        let mut kill: Option<JoinHandle<Result<(), SshError>>> = None;
        let mut kill_started = false;
        let mut kill_result: Option<Result<(), SshError>> = None;
        let mut give_up: Option<Instant> = None;
        let mut closed = false;
        let mut refused = false;
        // The timeout counts from the start of the command, not from the
        // wait for a channel slot.
        let expired = async {
            match cmd.timeout {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);

        loop {
            let mut batch = Vec::new();
            // Biased towards the channel: output is consumed before a timer
            // is looked at, and a command whose exit status arrived is
            // reported as finished even if its time ran out meanwhile.
            tokio::select! {
                biased;
                msg = channel.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => stdout.push(&data, &mut batch),
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                        let mut raw = Vec::new();
                        stderr.push(&data, &mut raw);
                        startup.filter(raw, &mut batch);
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        exit = Some(Outcome::Exited(i32::try_from(exit_status).unwrap_or(i32::MAX)));
                    }
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => match signal_number(&signal_name) {
                        Some(number) => exit = Some(Outcome::Signaled(number)),
                        None => {
                            unknown_signal = Some(format!("{signal_name:?}"));
                            exit = Some(Outcome::Signaled(0));
                        }
                    },
                    Some(ChannelMsg::Failure) => {
                        refused = true;
                        break;
                    }
                    Some(ChannelMsg::Close) | None => {
                        closed = true;
                        break;
                    }
                    Some(_) => {}
                },
                () = &mut expired, if stop.is_none() && exit.is_none() => stop = Some(Outcome::TimedOut),
                () = cancel.cancelled(), if stop.is_none() && exit.is_none() => stop = Some(Outcome::Cancelled),
                result = kill_finished(&self.target.host, &mut kill), if kill.is_some() => {
                    kill = None;
                    kill_result = Some(result);
                    give_up = Some(Instant::now() + DRAIN);
                }
                () = until(give_up) => break,
            }
            sink.write(batch).await;

            // Arm the guard while the program may be running; a dropped exec
            // then still ends the group.
            if guard.armed.is_none()
                && !kill_started
                && exit.is_none()
                && let Some(group) = &startup.group
            {
                guard.armed = Some((connection.clone(), self.kill_slot.clone(), group.clone()));
            }
            // On timeout or cancellation, end the group; after an exit, end
            // what the program left in it. Both only once the group is known:
            // it is the first thing the wrapper reports.
            let wanted = stop.is_some() || (exit.is_some() && startup.started);
            if wanted && !kill_started {
                if let Some(group) = &startup.group {
                    kill_started = true;
                    guard.armed = None;
                    kill = Some(tokio::spawn(kill_group(
                        connection.clone(),
                        self.kill_slot.clone(),
                        group.clone(),
                    )));
                } else if stop.is_some() && give_up.is_none() {
                    // The wrapper has not reported its group yet; it gets
                    // as long as the group would have had to end.
                    give_up = Some(Instant::now() + GRACE + DRAIN);
                }
            }
        }
        guard.armed = None;

        let mut batch = Vec::new();
        stdout.finish(&mut batch);
        let mut raw = Vec::new();
        stderr.finish(&mut raw);
        startup.filter(raw, &mut batch);
        sink.write(batch).await;

        if !closed {
            // We stopped waiting (or the server refused the command): close
            // our end, and give the server a moment to confirm, so that the
            // slot is free when we release it.
            let _ = channel.close().await;
            let _ = tokio::time::timeout(DRAIN, async { while channel.wait().await.is_some() {} }).await;
        }
        if kill.is_some() {
            // The channel closed before the group was dealt with: the group
            // must be gone before the task is reported done (a retry must
            // not meet the previous attempt). The kill is bounded itself.
            kill_result = Some(kill_finished(&self.target.host, &mut kill).await);
        }
        if env_path.is_some() && startup.group.is_none() {
            // The wrapper never reached the line that unlinks the file.
            if let Some(path) = &env_path {
                connection.remove_env(path).await;
            }
        }
        let lost_connection =
            connection.handle.is_closed() || matches!(kill_result, Some(Err(SshError::Disconnected { .. })));
        if exit.is_none()
            && lost_connection
            && let Some(group) = startup.group.clone()
        {
            self.orphan(group);
        }
        sink.finish().await.map_err(|source| TransportError::Log {
            path: cmd.log.clone(),
            source,
        })?;

        if let Some(stopped) = stop {
            return Ok(stopped);
        }
        let host = &self.target.host;
        if refused {
            return Err(spawn_error(
                SshError::Protocol {
                    host: host.clone(),
                    message: "the server refused to run the command".into(),
                }
                .into_io(),
            ));
        }
        let Some(exit) = exit else {
            let error = if lost_connection || !closed {
                SshError::Disconnected {
                    host: host.clone(),
                    reason: format!("while {} was running", cmd.program),
                }
            } else {
                SshError::Protocol {
                    host: host.clone(),
                    message: format!("the channel of {} closed without an exit status", cmd.program),
                }
            };
            return Err(TransportError::Io(error.into_io()));
        };
        if !startup.started {
            let message = match startup.error {
                Some(message) => message,
                None => format!(
                    "the wrapper failed ({exit:?}) before starting the program: {}",
                    startup.early.join(" / ")
                ),
            };
            return Err(spawn_error(
                SshError::Remote {
                    host: host.clone(),
                    what: format!("starting {}", cmd.program),
                    message,
                }
                .into_io(),
            ));
        }
        if let Some(name) = unknown_signal {
            return Err(TransportError::Io(
                SshError::Protocol {
                    host: host.clone(),
                    message: format!("{} was ended by signal {name}, which has no number here", cmd.program),
                }
                .into_io(),
            ));
        }
        Ok(exit)
    }
}
