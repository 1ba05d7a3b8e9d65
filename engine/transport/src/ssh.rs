//! The SSH transport: runs commands on one server over one SSH connection,
//! agentless (nothing is installed on the server; it needs sshd, /bin/sh,
//! util-linux `setsid`, /proc, and `tar` to stage a directory; with
//! `ssh.become`, sudo).
//!
//! Layout:
//!
//! - [`resolve()`] (`resolve`) turns a server's `ssh` block, its provider's
//!   hints and the OpenSSH client configuration into an [`SshTarget`].
//! - [`SshTransport::connect`] opens the connection (`handshake`): TCP within
//!   the connect timeout, or a `direct-tcpip` channel through the target's
//!   bastions (`jump`: one pooled connection per bastion, shared by every
//!   server behind it), the host key checked against the known_hosts files
//!   (`known_hosts`: hashed names, `[host]:port`, patterns, `@revoked`),
//!   then the key file, ssh-agent and the default identity files. Nothing
//!   runs on the server yet. `connection` holds what is done on one
//!   connection below the level of a command (helper scripts, ending
//!   process groups); `error` the error type.
//! - Every [`Transport::exec`] is one session channel on that connection
//!   (at most [`EXEC_CHANNELS`] at once) and one round trip: the channel
//!   runs `/bin/sh -s` and gets the command's whole program on standard
//!   input (`remote::task_program`): make the run directory and enter the
//!   working directory, write the command's files, start the command with
//!   its environment in a process group of its own (`setsid`), wait for it,
//!   end what it left in its group, remove the files. The command reports
//!   its group first thing; its output is split into lines, masked, logged
//!   and streamed (`output`). The run directory (`$TMPDIR/drover-<run>` as
//!   the provider knows TMPDIR, else `/tmp/drover-<run>`) is named here,
//!   without asking the server, and made by the first command or staging
//!   that needs it.
//! - With `ssh.become` (`SshTarget::become_user`) the channel runs
//!   `sudo -n -u USER -- /bin/sh -s` instead: the same program, as the
//!   become user (sudo passes standard input on). Staging and removals go
//!   through sudo as well. A refusal by sudo is reported as such.
//! - [`Transport::stage`] sends a directory as one tar stream on one
//!   channel, extracted by the server's `tar`.
//! - On timeout or cancellation a second channel runs `remote::KILL_GROUP`
//!   against the reported group: SIGTERM, two seconds, SIGKILL.
//! - A connection that broke (sshd restarted, the network dropped) is
//!   replaced on the next use, once per call; commands that were running
//!   on it are reported as failed, and their process groups are ended
//!   through the new connection before anything else runs on it.
//!
//! Architecture invariant, as for the local transport: a task's processes
//! do not outlive the task, and no secret appears on a remote command line.

mod connection;
mod error;
mod handshake;
mod jump;
mod known_hosts;
mod output;
mod remote;
mod resolve;
mod upload;

pub use self::error::SshError;
pub use self::resolve::{Defaults, Destination, SshHints, expand, resolve};

/// SSH connections this process holds open now (every transport, every
/// run, bastions included): the orchestrator's `drover_ssh_connections`
/// gauge.
pub fn open_connections() -> i64 {
    connection::OPEN.load(std::sync::atomic::Ordering::Relaxed)
}

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use russh::client::Msg;
use russh::{Channel, ChannelMsg, Disconnect, Sig};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::connection::{Connection, Finished, GroupGuard, Stdin, kill_group};
use self::output::{Sink, Splitter};
use self::remote::{Group, Header};
use super::{Command, LogLine, Outcome, Stream, Transport, TransportError};

/// Commands running at once on one connection. OpenSSH's sshd refuses
/// channels beyond `MaxSessions` (10 by default) per connection; one more
/// is the channel that signals process groups, one is to spare.
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
    /// A private key file (OpenSSH format, unencrypted; ed25519, ECDSA or
    /// RSA). With `use_agent` it may be missing or encrypted (it is then
    /// skipped, as OpenSSH skips an `IdentityFile` it cannot use); without,
    /// it must be usable.
    pub key_file: Option<PathBuf>,
    /// Also try the keys of the ssh-agent at `SSH_AUTH_SOCK` (after
    /// `key_file`).
    pub use_agent: bool,
    /// More private keys, tried last, each skipped if it cannot be loaded
    /// (the default identity files `~/.ssh/id_ed25519`, `id_ecdsa`,
    /// `id_rsa`, when no key file is set).
    pub identity_files: Vec<PathBuf>,
    /// The known_hosts file a new host key is recorded in under
    /// [`HostKeyPolicy::TrustOnFirstUse`] (OpenSSH format; a port other than
    /// 22 is written `[address]:port`). Read too when `read_known_hosts` is
    /// empty.
    pub known_hosts: PathBuf,
    /// The known_hosts files host keys are checked against, in this order
    /// (plain or hashed names, `[host]:port`, patterns, `@revoked`). Empty:
    /// `known_hosts` alone.
    pub read_known_hosts: Vec<PathBuf>,
    /// What to do with a host no known_hosts file mentions.
    pub host_key_policy: HostKeyPolicy,
    /// Bastions to go through, first hop first: the first is reached over
    /// TCP, each next hop (the server last) through a `direct-tcpip` channel
    /// of the connection before it. Each bastion's host key is checked and
    /// it is logged into like the server (same known_hosts, policy, keys
    /// and agent). One connection per bastion is shared by every target
    /// behind it in this process.
    pub jump: Vec<Bastion>,
    /// Run every command, and everything done in run directories (making
    /// them, staging files, removing them, ending process groups), as this
    /// user through `sudo -n -u USER`. The login user needs a NOPASSWD
    /// sudoers rule for it; the transport checks at connect time. `None`:
    /// everything runs as the login user.
    pub become_user: Option<String>,
    /// Limit for TCP connect, handshake, authentication and setup together;
    /// also for the server's answer to a channel request.
    pub connect_timeout: Duration,
    /// Keepalive interval (zero: none). Three unanswered keepalives close
    /// the connection, and the next command reconnects.
    pub keepalive: Duration,
    /// The server's directory for temporary files, which run directories
    /// go into (`<temp_dir>/drover-<run>`): the provider's word for it
    /// ([`SshHints::temp_dir`]), else `/tmp`.
    pub temp_dir: String,
}

impl SshTarget {
    /// A target with the defaults: port 22, user root, ssh-agent's keys,
    /// `known_hosts` alone, strict host key checks, no bastion, no become,
    /// a 10 s connect timeout and 15 s keepalives. Set the fields that
    /// differ, or use [`resolve`] to get them from a workflow.
    pub fn new(host: impl Into<String>, address: impl Into<String>, known_hosts: impl Into<PathBuf>) -> SshTarget {
        SshTarget {
            host: host.into(),
            address: address.into(),
            port: 22,
            user: "root".into(),
            key_file: None,
            use_agent: true,
            identity_files: Vec::new(),
            known_hosts: known_hosts.into(),
            read_known_hosts: Vec::new(),
            host_key_policy: HostKeyPolicy::Verify,
            jump: Vec::new(),
            become_user: None,
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(15),
            temp_dir: "/tmp".into(),
        }
    }

    /// The known_hosts files to read, in order.
    pub(crate) fn known_hosts_files(&self) -> Vec<PathBuf> {
        if self.read_known_hosts.is_empty() {
            vec![self.known_hosts.clone()]
        } else {
            self.read_known_hosts.clone()
        }
    }
}

/// A bastion (jump host) on the way to a server.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Bastion {
    /// Its address (IP address or DNS name), as the previous hop reaches
    /// it; also its name in known_hosts.
    pub address: String,
    /// Its SSH port.
    pub port: u16,
    /// The user to log in as.
    pub user: String,
}

impl Bastion {
    /// `address:port` (`[address]:port` for an IPv6 address).
    pub fn address_port(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

impl std::fmt::Display for Bastion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user, self.address_port())
    }
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
    /// Run directories named by [`SshTransport::temp_dir`].
    run_dirs: std::sync::Mutex<Vec<String>>,
    /// Those of them the last command run in them removed (a later command
    /// or upload into one takes it off this list).
    removed: std::sync::Mutex<Vec<String>>,
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
            .field("jump", &self.target.jump)
            .field("become_user", &self.target.become_user)
            .finish_non_exhaustive()
    }
}

impl SshTransport {
    /// Connects to `target` (see [`SshTarget`] for what is checked and
    /// tried) and sets up the transport's remote directory.
    pub async fn connect(target: &SshTarget) -> Result<SshTransport, SshError> {
        let connection = Connection::open(target).await?;
        Ok(SshTransport {
            target: target.clone(),
            connection: tokio::sync::Mutex::new(Arc::new(connection)),
            exec_slots: Arc::new(Semaphore::new(EXEC_CHANNELS)),
            kill_slot: Arc::new(Semaphore::new(1)),
            run_dirs: std::sync::Mutex::new(Vec::new()),
            removed: std::sync::Mutex::new(Vec::new()),
            orphans: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The target this transport connects to.
    pub fn target(&self) -> &SshTarget {
        &self.target
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
        let fresh = Arc::new(Connection::open(&self.target).await?);
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
    /// With `ssh.become`, the script runs as the become user.
    async fn helper(&self, script: &str, name: &str, args: &[&[u8]]) -> Result<(Arc<Connection>, Finished), SshError> {
        self.helper_with(script, name, args, Stdin::None).await
    }

    /// [`SshTransport::helper`] with standard input.
    async fn helper_with(
        &self,
        script: &str,
        name: &str,
        args: &[&[u8]],
        stdin: Stdin,
    ) -> Result<(Arc<Connection>, Finished), SshError> {
        let _permit = self.exec_slots.acquire().await;
        let (connection, channel) = self.channel().await?;
        let line = connection.helper_line(script, name, args);
        let finished = connection.run_on(channel, line, name, stdin).await?;
        Ok((connection, finished))
    }

    /// Uploads `local` (a file or a directory tree) to `remote`: one tar
    /// stream on one channel (archived here on a blocking thread as it is
    /// sent, extracted there by `tar`).
    ///
    /// A file gets mode `mode`; a directory gets mode `mode` and its entries
    /// keep their local permission bits. Existing files are overwritten,
    /// existing directories reused. Symbolic links and special files are
    /// refused, before anything is sent.
    ///
    /// A `remote` inside one of the transport's run directories makes that
    /// directory first, with the care a command takes (see
    /// `remote::task_program`). With `ssh.become`, the files are written
    /// by the become user (through sudo), so that they belong to it.
    pub async fn upload(&self, local: &Path, remote: &str, mode: u32) -> Result<(), SshError> {
        let host = &self.target.host;
        let (parent, name) = upload::split_remote(remote).ok_or_else(|| SshError::InvalidInput {
            host: host.clone(),
            message: format!("cannot upload to {remote:?}: not an absolute path naming a file or directory"),
        })?;
        // Checked before anything is sent, so that a tree with a symbolic
        // link or an unreadable entry is refused as a whole.
        let entries = upload::walk(host, local, mode)?;
        let run_dir = self.run_dir_of(parent).unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let archive = {
            let host = host.clone();
            let name = name.to_string();
            tokio::task::spawn_blocking(move || upload::archive(&host, &entries, &name, tx))
        };
        let sent = self
            .helper_with(
                remote::UNTAR,
                "drover-untar",
                &[run_dir.as_bytes(), parent.as_bytes()],
                Stdin::Chunks(rx),
            )
            .await;
        let archived = archive.await.unwrap_or_else(|join| {
            Err(SshError::Upload {
                host: host.clone(),
                path: local.to_path_buf(),
                message: format!("the archiving task failed: {join}"),
            })
        });
        // A local failure (an unreadable file) explains a remote one (a
        // cut-off archive); `archive` does not report the server stopping.
        archived?;
        let (connection, finished) = sent?;
        if finished.status == Some(0) {
            Ok(())
        } else {
            Err(connection.helper_failed(finished, &format!("extracting {} into {remote}", local.display())))
        }
    }

    /// The run directory `path` is in (or is), if it is one of ours; it
    /// is about to be used, so made again if a last command removed it.
    fn run_dir_of(&self, path: &str) -> Option<String> {
        let dirs = self.run_dirs.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = dirs
            .iter()
            .find(|dir| {
                path == dir.as_str()
                    || path
                        .strip_prefix(dir.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .cloned()?;
        self.removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|d| *d != dir);
        Some(dir)
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

    /// Names the run's remote directory, `<temp_dir>/drover-<run_id>`
    /// (see [`SshTarget::temp_dir`]), without a round trip: the first
    /// command or upload inside it makes it (mode 700), and refuses one
    /// that is not the user's own. [`SshTransport::cleanup`] removes it
    /// unless told to keep it. `run_id` may hold letters, digits, `.`, `_`,
    /// `-`.
    pub fn temp_dir(&self, run_id: &str) -> Result<String, SshError> {
        let temp = self.target.temp_dir.trim_end_matches('/');
        if !remote::valid_run_id(run_id) || !self.target.temp_dir.starts_with('/') {
            return Err(SshError::InvalidInput {
                host: self.target.host.clone(),
                message: format!(
                    "run id {run_id:?} in {:?} cannot name a directory (letters, digits, '.', '_', '-' in an absolute directory)",
                    self.target.temp_dir
                ),
            });
        }
        let dir = format!("{temp}/drover-{run_id}");
        let mut dirs = self.run_dirs.lock().unwrap_or_else(PoisonError::into_inner);
        if !dirs.contains(&dir) {
            dirs.push(dir.clone());
        }
        Ok(dir)
    }

    /// Removes the run directories (with [`RunDirs::Remove`]; one channel,
    /// none when there is nothing to remove), then closes the connection.
    /// The transport stays usable: a later call reconnects.
    pub async fn cleanup(&self, run_dirs: RunDirs) -> Result<(), SshError> {
        let mut dirs = match run_dirs {
            RunDirs::Remove => std::mem::take(&mut *self.run_dirs.lock().unwrap_or_else(PoisonError::into_inner)),
            RunDirs::Keep => Vec::new(),
        };
        let removed = std::mem::take(&mut *self.removed.lock().unwrap_or_else(PoisonError::into_inner));
        dirs.retain(|d| !removed.contains(d));
        let current = self.connection.lock().await.clone();
        if !dirs.is_empty() {
            // Run directories belong to whoever ran the commands (the become
            // user under `ssh.become`).
            let args: Vec<&[u8]> = dirs.iter().map(|d| d.as_bytes()).collect();
            let (connection, finished) = self.helper(remote::REMOVE, "drover-cleanup", &args).await?;
            if finished.status != Some(0) {
                return Err(connection.helper_failed(finished, "removing the run directories"));
            }
            Self::close(&connection).await;
        }
        Self::close(&current).await;
        Ok(())
    }

    /// Says goodbye on `connection` and lets go of its bastion.
    async fn close(connection: &Connection) {
        if !connection.handle.is_closed() {
            let _ = connection
                .handle
                .disconnect(Disconnect::ByApplication, "done", "")
                .await;
        }
        connection.release();
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

/// What the task program said at the start of standard error.
#[derive(Debug, Default)]
struct Startup {
    group: Option<Group>,
    /// `drover-exec` was seen: from here on stderr is the program's.
    started: bool,
    error: Option<String>,
    /// The first lines of stderr when the task program itself failed (no
    /// header at all), for the error message.
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
                Some(Header::Error(message)) => self.error = Some(message),
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
        let invalid = |message: String| {
            TransportError::Ssh(SshError::InvalidInput {
                host: self.target.host.clone(),
                message,
            })
        };
        remote::check_env(&cmd.env).map_err(|bad| {
            invalid(match bad {
                remote::BadVariable::Name(name) => format!("{name:?} is not a valid environment variable name"),
                remote::BadVariable::Value(name) => format!("the value of {name} holds a NUL byte"),
            })
        })?;
        let cwd = cmd.cwd.as_os_str().as_encoded_bytes();
        let mut words = std::iter::once(cmd.program.as_bytes())
            .chain(cmd.args.iter().map(|a| a.as_bytes()))
            .chain(cmd.script.iter().map(|s| s.as_bytes()))
            .chain(std::iter::once(cwd));
        if let Some(bad) = words.find(|w| !remote::passable(w)) {
            let mut shown = String::from_utf8_lossy(bad).into_owned();
            shown.truncate(shown.floor_char_boundary(80));
            return Err(invalid(format!(
                "{shown:?} holds a NUL byte, which no shell word can carry"
            )));
        }
        if let Some(problem) = cmd.files.as_ref().and_then(|f| f.problem()) {
            return Err(invalid(format!("the command's files: {problem}")));
        }
        let cwd_str = String::from_utf8_lossy(cwd);
        let run_dir = self.run_dir_of(&cwd_str);
        let run = match &cmd.script {
            Some(text) => remote::Run::Script(text),
            None => remote::Run::Program(cmd.program.as_bytes(), cmd.args.iter().map(|a| a.as_bytes()).collect()),
        };
        let task = remote::Task {
            run_dir: run_dir.as_deref(),
            cwd,
            env: &cmd.env,
            files: cmd.files.as_ref().map(|f| (f.dir.as_str(), f.files.as_slice())),
            run,
            remove_run_dir: cmd.remove_run_dir,
            grace_tenths: u32::try_from(GRACE.as_millis() / 100).unwrap_or(20),
        };
        let program = remote::task_program(&task);
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
        let (connection, mut channel) = self.channel().await?;
        // The whole program goes before any output is read: the shell reads
        // all of it (one `{ }` group) before it runs, and so before it
        // writes anything.
        let line = remote::task_line(&task, connection.become_user.as_deref());
        let started = async {
            channel.exec(true, line).await?;
            channel.data(program.as_slice()).await?;
            channel.eof().await
        };
        if let Err(e) = started.await {
            return Err(handshake::session_error(&self.target.host, e).into());
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
            // it is the first thing the command reports.
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
                    // The command has not reported its group yet; it gets
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
            return Err(SshError::Protocol {
                host: host.clone(),
                message: "the server refused to run the command".into(),
            }
            .into());
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
            return Err(error.into());
        };
        if !startup.started {
            if startup.group.is_none()
                && let Some(become_user) = &connection.become_user
                && remote::is_sudo_refusal(&startup.early)
            {
                return Err(SshError::BecomeRefused {
                    host: host.clone(),
                    user: connection.user.clone(),
                    become_user: become_user.clone(),
                    message: startup.early.join(" / "),
                }
                .into());
            }
            let message = match startup.error {
                Some(message) => message,
                None => format!(
                    "the task program failed ({exit:?}) before starting the program: {}",
                    startup.early.join(" / ")
                ),
            };
            if remote::is_not_found(&message) {
                return Err(TransportError::NotFound {
                    host: host.clone(),
                    program: cmd.program.clone(),
                });
            }
            return Err(SshError::Remote {
                host: host.clone(),
                what: format!("starting {}", cmd.program),
                message,
            }
            .into());
        }
        if let Some(name) = unknown_signal {
            return Err(SshError::Protocol {
                host: host.clone(),
                message: format!("{} was ended by signal {name}, which has no number here", cmd.program),
            }
            .into());
        }
        if cmd.remove_run_dir
            && let Some(dir) = run_dir
        {
            // The task program removed it after the command: its exit
            // status comes after that.
            self.removed.lock().unwrap_or_else(PoisonError::into_inner).push(dir);
        }
        Ok(exit)
    }

    async fn run_dir(&self, run_id: &str) -> Result<String, TransportError> {
        Ok(self.temp_dir(run_id)?)
    }

    async fn stage(&self, local: &Path, remote: &str) -> Result<(), TransportError> {
        Ok(self.upload(local, remote, 0o700).await?)
    }

    async fn remove(&self, remote: &str) -> Result<(), TransportError> {
        Ok(self.remove_dir(remote).await?)
    }

    async fn finish(&self, keep_run_dirs: bool) -> Result<(), TransportError> {
        let dirs = if keep_run_dirs { RunDirs::Keep } else { RunDirs::Remove };
        Ok(self.cleanup(dirs).await?)
    }
}
