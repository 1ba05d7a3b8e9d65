//! Opening one connection: a TCP connection (or a channel through a
//! bastion, see `jump`) within the connect timeout, the server's host key
//! checked against known_hosts, then authentication by key file, ssh-agent
//! and the default identity files.

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client;
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{Algorithm, HashAlg, PrivateKeyWithHashAlg, PublicKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::jump::{self, Hop};
use super::known_hosts;
use super::{HostKeyPolicy, SshError, SshTarget};

/// One end of an SSH connection: the target itself or one of its bastions.
/// Host keys and authentication follow the target's settings either way.
#[derive(Debug, Clone)]
pub(super) struct Endpoint<'a> {
    /// Names it in messages: the server's name, or `bastion user@host:port`.
    pub(super) label: String,
    pub(super) address: &'a str,
    pub(super) port: u16,
    pub(super) user: &'a str,
    pub(super) target: &'a SshTarget,
}

impl<'a> Endpoint<'a> {
    /// The target itself.
    pub(super) fn target(target: &'a SshTarget) -> Endpoint<'a> {
        Endpoint {
            label: target.host.clone(),
            address: &target.address,
            port: target.port,
            user: &target.user,
            target,
        }
    }

    /// `address:port`, for messages.
    pub(super) fn address_port(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// The russh client handler: all it decides is whether to trust the
/// server's host key.
#[derive(Debug)]
pub(super) struct Client {
    host: String,
    known_as: String,
    /// The files read, in order.
    files: Vec<PathBuf>,
    /// Where accept-new records a new key.
    write: PathBuf,
    policy: HostKeyPolicy,
}

/// Why a handshake failed: russh's own errors, or our verdict on the host
/// key (carried through russh, which returns the handler's error type).
#[derive(Debug)]
pub(super) enum HandshakeError {
    Ssh(russh::Error),
    HostKey(SshError),
}

impl From<russh::Error> for HandshakeError {
    fn from(e: russh::Error) -> Self {
        HandshakeError::Ssh(e)
    }
}

impl client::Handler for Client {
    type Error = HandshakeError;

    async fn check_server_key(&mut self, offered: &PublicKey) -> Result<bool, HandshakeError> {
        self.verify(offered).map(|()| true).map_err(HandshakeError::HostKey)
    }
}

impl Client {
    fn new(endpoint: &Endpoint<'_>) -> Client {
        Client {
            host: endpoint.label.clone(),
            known_as: known_hosts::known_as(endpoint.address, endpoint.port),
            files: endpoint.target.known_hosts_files(),
            write: endpoint.target.known_hosts.clone(),
            policy: endpoint.target.host_key_policy,
        }
    }

    /// Accepts `key` if a known_hosts file records it for the server. A
    /// server recorded with other keys only is refused under either policy,
    /// even when the recorded keys are of another type: accepting a new key
    /// type there would let whoever sits in the middle choose one. A key
    /// marked `@revoked` is refused whatever else is recorded.
    fn verify(&self, key: &PublicKey) -> Result<(), SshError> {
        let recorded = known_hosts::records(&self.known_as, &self.files).map_err(|(path, e)| SshError::KnownHosts {
            host: self.host.clone(),
            path,
            message: e.to_string(),
        })?;
        let offered = format!("{} {}", key.algorithm(), key.fingerprint(HashAlg::Sha256));
        if let Some(revoked) = recorded
            .iter()
            .find(|r| r.revoked && r.key.key_data() == key.key_data())
        {
            return Err(SshError::HostKeyRevoked {
                host: self.host.clone(),
                known_as: self.known_as.clone(),
                known_hosts: revoked.file.clone(),
                line: revoked.line,
                offered,
            });
        }
        let mut recorded = recorded.iter().filter(|r| !r.revoked).peekable();
        if recorded.clone().any(|r| r.key.key_data() == key.key_data()) {
            return Ok(());
        }
        if let Some(first) = recorded.peek() {
            return Err(SshError::HostKeyMismatch {
                host: self.host.clone(),
                known_as: self.known_as.clone(),
                known_hosts: first.file.clone(),
                line: first.line,
                offered,
            });
        }
        match self.policy {
            HostKeyPolicy::Verify => Err(SshError::UnknownHostKey {
                host: self.host.clone(),
                known_as: self.known_as.clone(),
                known_hosts: self.write.clone(),
                searched: self
                    .files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                offered,
            }),
            HostKeyPolicy::TrustOnFirstUse => {
                known_hosts::learn(&self.write, &self.known_as, key).map_err(|message| SshError::KnownHosts {
                    host: self.host.clone(),
                    path: self.write.clone(),
                    message: format!("cannot record the new host key: {message}"),
                })
            }
        }
    }
}

/// russh's default algorithm preferences, with the host key algorithms that
/// known_hosts records for the server moved to the front (as OpenSSH does),
/// so that a server with several host keys presents the one we know rather
/// than one that would be refused as a mismatch.
fn preferences(client: &Client) -> russh::Preferred {
    let mut preferred = russh::Preferred::default();
    let recorded: Vec<Algorithm> = known_hosts::records(&client.known_as, &client.files)
        .map(|records| {
            records
                .into_iter()
                .filter(|r| !r.revoked)
                .map(|r| r.key.algorithm())
                .collect()
        })
        .unwrap_or_default();
    if recorded.is_empty() {
        return preferred;
    }
    let is_recorded = |a: &Algorithm| {
        recorded
            .iter()
            .any(|r| r == a || (r.clone().is_rsa() && a.clone().is_rsa()))
    };
    let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) = preferred.key.iter().cloned().partition(is_recorded);
    first.extend(rest);
    preferred.key = Cow::Owned(first);
    preferred
}

/// Connects to the target (through its bastions, if any), verifies the
/// host key and authenticates, all before `deadline`. Returns the
/// connection and the last bastion it goes through, which must live as
/// long as the connection.
pub(super) async fn open(
    target: &SshTarget,
    deadline: Instant,
) -> Result<(client::Handle<Client>, Option<Arc<Hop>>), SshError> {
    let endpoint = Endpoint::target(target);
    let timed_out = || SshError::TimedOut {
        host: target.host.clone(),
        address: endpoint.address_port(),
        after: target.connect_timeout,
        during: "connecting",
    };
    if target.jump.is_empty() {
        let handle = tokio::time::timeout_at(deadline, async {
            let socket = tcp(&endpoint).await?;
            establish(&endpoint, socket).await
        })
        .await
        .map_err(|_| timed_out())??;
        return Ok((handle, None));
    }
    // Bastion errors, timeouts included, name the bastion (the chain's own
    // timeouts fire first: a timeout polls what it bounds first).
    let (hop, handle) = tokio::time::timeout_at(deadline, async {
        let hop = jump::chain(target, deadline).await?;
        let (hop, stream) = match hop.forward(&target.host, target.address.as_str(), target.port).await {
            Ok(stream) => (hop, stream),
            // The pooled bastion connection broke before anyone noticed
            // (`forward` marked it): once more, through a new one.
            Err(SshError::Bastion { .. }) => {
                let hop = jump::chain(target, deadline).await?;
                let stream = hop.forward(&target.host, target.address.as_str(), target.port).await?;
                (hop, stream)
            }
            Err(e) => return Err(e),
        };
        let handle = establish(&endpoint, stream).await?;
        Ok((hop, handle))
    })
    .await
    .map_err(|_| timed_out())??;
    Ok((handle, Some(hop)))
}

/// A TCP connection to `endpoint`.
pub(super) async fn tcp(endpoint: &Endpoint<'_>) -> Result<tokio::net::TcpStream, SshError> {
    let socket = tokio::net::TcpStream::connect((endpoint.address, endpoint.port))
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::ConnectionRefused => SshError::Refused {
                host: endpoint.label.clone(),
                address: endpoint.address_port(),
            },
            _ => SshError::Network {
                host: endpoint.label.clone(),
                address: endpoint.address_port(),
                source,
            },
        })?;
    // Commands are short request/response exchanges; Nagle's delay would
    // only add latency.
    let _ = socket.set_nodelay(true);
    Ok(socket)
}

/// The SSH handshake and authentication over `stream`.
pub(super) async fn establish<S>(endpoint: &Endpoint<'_>, stream: S) -> Result<client::Handle<Client>, SshError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = Client::new(endpoint);
    let keepalive = endpoint.target.keepalive;
    let config = client::Config {
        // Without keepalives a connection whose peer vanished (a rebooted
        // host, a dropped NAT entry) is only noticed when TCP gives up,
        // minutes later; with them, after `keepalive_max` unanswered
        // intervals, and the next exec reconnects.
        keepalive_interval: (!keepalive.is_zero()).then_some(keepalive),
        keepalive_max: 3,
        nodelay: true,
        preferred: preferences(&client),
        ..client::Config::default()
    };
    let mut handle = client::connect_stream(Arc::new(config), stream, client)
        .await
        .map_err(|e| match e {
            HandshakeError::HostKey(e) => e,
            HandshakeError::Ssh(e) => session_error(&endpoint.label, e),
        })?;
    authenticate(endpoint, &mut handle).await?;
    Ok(handle)
}

/// Maps a russh error on an established (or establishing) connection.
pub(super) fn session_error(host: &str, e: russh::Error) -> SshError {
    match e {
        russh::Error::Disconnect
        | russh::Error::HUP
        | russh::Error::SendError
        | russh::Error::RecvError
        | russh::Error::KeepaliveTimeout
        | russh::Error::InactivityTimeout
        | russh::Error::ConnectionTimeout => SshError::Disconnected {
            host: host.to_string(),
            reason: e.to_string(),
        },
        russh::Error::IO(io) => SshError::Disconnected {
            host: host.to_string(),
            reason: io.to_string(),
        },
        other => SshError::Protocol {
            host: host.to_string(),
            message: other.to_string(),
        },
    }
}

/// Tries the key file, the agent's keys, then the default identity files;
/// fails naming what was tried.
///
/// A key file named by the workflow or the provider must be usable; one
/// from the SSH client configuration (which goes with the agent) may be
/// missing or encrypted, as for OpenSSH: it is then skipped.
async fn authenticate(endpoint: &Endpoint<'_>, handle: &mut client::Handle<Client>) -> Result<(), SshError> {
    let target = endpoint.target;
    let host = &endpoint.label;
    let user = endpoint.user;
    let mut tried = Vec::new();
    if let Some(path) = &target.key_file {
        match russh::keys::load_secret_key(path, None) {
            Ok(key) => {
                if offer_key(host, user, handle, key).await? {
                    return Ok(());
                }
                tried.push(format!("key file {}", path.display()));
            }
            Err(e) if target.use_agent => tried.push(format!("key file {} (skipped: {e})", path.display())),
            Err(e) => {
                return Err(SshError::Key {
                    host: host.clone(),
                    path: path.clone(),
                    message: e.to_string(),
                });
            }
        }
    }
    if target.use_agent {
        match std::env::var_os("SSH_AUTH_SOCK") {
            None => tried.push("ssh-agent (SSH_AUTH_SOCK is not set)".to_string()),
            Some(socket) => {
                if try_agent(host, user, handle, Path::new(&socket), &mut tried).await? {
                    return Ok(());
                }
            }
        }
    }
    for path in &target.identity_files {
        match russh::keys::load_secret_key(path, None) {
            Ok(key) => {
                if offer_key(host, user, handle, key).await? {
                    return Ok(());
                }
                tried.push(format!("{}", path.display()));
            }
            Err(e) => tried.push(format!("{} (skipped: {e})", path.display())),
        }
    }
    Err(SshError::AuthFailed {
        host: host.clone(),
        user: user.to_string(),
        tried: if tried.is_empty() {
            "nothing: no key file and the agent not enabled".to_string()
        } else {
            tried.join(", ")
        },
    })
}

/// Offers one private key; whether the server accepted it.
async fn offer_key(
    host: &str,
    user: &str,
    handle: &mut client::Handle<Client>,
    key: russh::keys::PrivateKey,
) -> Result<bool, SshError> {
    let failed = |e: russh::Error| session_error(host, e);
    let hash = if key.algorithm().is_rsa() {
        handle.best_supported_rsa_hash().await.map_err(failed)?.flatten()
    } else {
        None
    };
    let result = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await
        .map_err(failed)?;
    Ok(result.success())
}

/// Offers the agent's keys; whether the server accepted one.
async fn try_agent(
    host: &str,
    user: &str,
    handle: &mut client::Handle<Client>,
    socket: &Path,
    tried: &mut Vec<String>,
) -> Result<bool, SshError> {
    let failed = |e: russh::Error| session_error(host, e);
    let mut agent = AgentClient::connect_uds(socket).await.map_err(|e| SshError::Agent {
        host: host.to_string(),
        message: format!("cannot reach the agent at {}: {e}", socket.display()),
    })?;
    let identities = agent.request_identities().await.map_err(|e| SshError::Agent {
        host: host.to_string(),
        message: format!("cannot list the agent's keys: {e}"),
    })?;
    let keys: Vec<PublicKey> = identities
        .into_iter()
        .filter_map(|identity| match identity {
            AgentIdentity::PublicKey { key, .. } => Some(key),
            // Certificates need the server's CA configured; not supported
            // here.
            AgentIdentity::Certificate { .. } => None,
        })
        .collect();
    for key in &keys {
        let hash = if key.algorithm().is_rsa() {
            handle.best_supported_rsa_hash().await.map_err(failed)?.flatten()
        } else {
            None
        };
        let result = handle
            .authenticate_publickey_with(user, key.clone(), hash, &mut agent)
            .await
            .map_err(|e| SshError::Agent {
                host: host.to_string(),
                message: format!("the agent could not sign: {e}"),
            })?;
        if result.success() {
            return Ok(true);
        }
    }
    tried.push(format!("ssh-agent ({} keys)", keys.len()));
    Ok(false)
}
