//! One connection and the work done on it below the level of a command:
//! opening it, running helper scripts, and ending process groups.

use std::sync::Arc;

use russh::client::{self, Msg};
use russh::{Channel, ChannelMsg};
use tokio::sync::Semaphore;
use tokio::time::{Duration, Instant};

use super::jump::Hop;
use super::remote::{self, Group};
use super::{GRACE, SshError, SshTarget, handshake};

/// One authenticated connection. Nothing is set up on the server for it:
/// each command carries what it needs (see `remote::task_program`).
pub(super) struct Connection {
    pub(super) host: String,
    /// The login user.
    pub(super) user: String,
    /// With `ssh.become`: the user helper scripts and commands run as,
    /// through `sudo -n`.
    pub(super) become_user: Option<String>,
    pub(super) handle: client::Handle<handshake::Client>,
    /// The last bastion the connection goes through: kept open while this
    /// connection is in use; let go by [`Connection::release`].
    via: std::sync::Mutex<Option<Arc<Hop>>>,
    /// How long the server may take to answer a channel request.
    pub(super) answer_within: Duration,
    /// Counts this connection in [`OPEN`] while it lives.
    _open: OpenGuard,
}

/// How many connections this process opens at once (TCP, key exchange,
/// authentication). A run reaches all its servers at once, and on a small
/// machine a thousand simultaneous key exchanges would each take longer
/// than the connect timeout, which is meant for a server that does not
/// answer, not for our own queue: past this many, the others wait their
/// turn, and their timeout starts with it. The work is the same; it is
/// done in the same time, by fewer at once.
pub(super) static HANDSHAKES: Semaphore = Semaphore::const_new(128);

/// SSH connections open in this process, for the orchestrator's metrics.
pub(super) static OPEN: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Holds one count of [`OPEN`].
pub(super) struct OpenGuard;

impl OpenGuard {
    pub(super) fn new() -> OpenGuard {
        OPEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenGuard
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a helper command gets on standard input.
pub(super) enum Stdin {
    /// Nothing (end of file at once).
    None,
    /// Chunks as they come, until the sender is dropped.
    Chunks(tokio::sync::mpsc::Receiver<Vec<u8>>),
}

/// How a helper command ended.
pub(super) struct Finished {
    pub(super) status: Option<u32>,
    pub(super) stdout: Vec<u8>,
    pub(super) stderr: Vec<u8>,
}

impl Connection {
    /// Connects, within the connect timeout: TCP (or a channel through
    /// the bastions), the host key, authentication. No command runs: the
    /// first task's channel is the first round on the server.
    ///
    /// At most [`HANDSHAKES`] connections of this process are being opened
    /// at once; the connect timeout counts from the turn of this one.
    pub(super) async fn open(target: &SshTarget) -> Result<Connection, SshError> {
        let _turn = HANDSHAKES.acquire().await;
        let deadline = Instant::now() + target.connect_timeout;
        // Bounded by the deadline itself, naming the bastion when it is
        // one that does not answer.
        let (handle, via) = handshake::open(target, deadline).await?;
        Ok(Connection {
            host: target.host.clone(),
            user: target.user.clone(),
            become_user: target.become_user.clone(),
            handle,
            via: std::sync::Mutex::new(via),
            answer_within: target.connect_timeout,
            _open: OpenGuard::new(),
        })
    }

    /// Lets go of the bastion (after the connection was closed), so that
    /// it closes once nothing else uses it.
    pub(super) fn release(&self) {
        self.via
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// The command line for a helper `script`: as the login user, or with
    /// `ssh.become` as the become user through `sudo -n`.
    pub(super) fn helper_line(&self, script: &str, name: &str, args: &[&[u8]]) -> Vec<u8> {
        match &self.become_user {
            Some(user) => remote::sudo_line(user, script, name, args),
            None => remote::sh_line(script, name, args),
        }
    }

    /// Opens a session channel. A server that does not answer within the
    /// connect timeout counts as a lost connection, so that the caller
    /// reconnects.
    pub(super) async fn open_channel(&self) -> Result<Channel<Msg>, SshError> {
        match tokio::time::timeout(self.answer_within, self.handle.channel_open_session()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(handshake::session_error(&self.host, e)),
            Err(_) => Err(SshError::Disconnected {
                host: self.host.clone(),
                reason: format!("no answer to a channel request within {:?}", self.answer_within),
            }),
        }
    }

    /// Runs the command `line` (named `name` in messages) on `channel`,
    /// feeding it `stdin`, and collects its output. Output is read while
    /// the input is sent, so that a command that fails early is heard.
    pub(super) async fn run_on(
        &self,
        channel: Channel<Msg>,
        line: Vec<u8>,
        name: &str,
        stdin: Stdin,
    ) -> Result<Finished, SshError> {
        let lost = |e| handshake::session_error(&self.host, e);
        let (mut reader, writer) = channel.split();
        writer.exec(true, line).await.map_err(lost)?;
        let send = async {
            match stdin {
                Stdin::None => {}
                Stdin::Chunks(mut chunks) => {
                    while let Some(chunk) = chunks.recv().await {
                        writer.data(chunk.as_slice()).await?;
                    }
                }
            }
            writer.eof().await
        };
        let receive = async {
            let mut finished = Finished {
                status: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            while let Some(msg) = reader.wait().await {
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
            Ok(finished)
        };
        let (sent, finished) = tokio::join!(send, receive);
        let finished = finished?;
        if finished.status.is_none() && self.handle.is_closed() {
            return Err(SshError::Disconnected {
                host: self.host.clone(),
                reason: format!("while running {name}"),
            });
        }
        // A command that exited before reading all its input is judged by
        // its status and output; otherwise a failed send is the error.
        if let Err(e) = sent
            && finished.status.is_none()
        {
            return Err(lost(e));
        }
        Ok(finished)
    }

    pub(super) fn helper_failed(&self, finished: Finished, what: &str) -> SshError {
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
}

/// Ends process group `group` on `connection`: SIGTERM, up to [`GRACE`],
/// SIGKILL (see `remote::KILL_GROUP`), on the dedicated kill channel.
pub(super) async fn kill_group(
    connection: Arc<Connection>,
    slot: Arc<Semaphore>,
    group: Group,
) -> Result<(), SshError> {
    let _permit = slot.acquire_owned().await;
    let grace_tenths = u32::try_from(GRACE.as_millis() / 100).unwrap_or(20);
    let args = group.kill_args(grace_tenths);
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    // The script takes at most GRACE; the rest is the round trip.
    let limit = GRACE + connection.answer_within * 2;
    let run = async {
        let channel = connection.open_channel().await?;
        let line = connection.helper_line(remote::KILL_GROUP, "drover-kill", &args);
        connection.run_on(channel, line, "drover-kill", Stdin::None).await
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
pub(super) struct GroupGuard {
    pub(super) armed: Option<(Arc<Connection>, Arc<Semaphore>, Group)>,
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
