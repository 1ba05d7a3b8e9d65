//! Opening one connection: TCP within the connect timeout, the server's
//! host key checked against known_hosts, then authentication by key file
//! and/or ssh-agent.

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client;
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::known_hosts::known_host_keys_path;
use russh::keys::{Algorithm, HashAlg, PrivateKeyWithHashAlg, PublicKey};

use super::{HostKeyPolicy, SshError, SshTarget};

/// The russh client handler: all it decides is whether to trust the
/// server's host key.
#[derive(Debug)]
pub(super) struct Client {
    host: String,
    address: String,
    port: u16,
    known_hosts: PathBuf,
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
    pub(super) fn new(target: &SshTarget) -> Client {
        Client {
            host: target.host.clone(),
            address: target.address.clone(),
            port: target.port,
            known_hosts: target.known_hosts.clone(),
            policy: target.host_key_policy,
        }
    }

    /// The known_hosts name of the target: `address`, or `[address]:port`
    /// for a port other than 22 (OpenSSH's convention, which russh's
    /// helpers follow).
    fn known_as(&self) -> String {
        if self.port == 22 {
            self.address.clone()
        } else {
            format!("[{}]:{}", self.address, self.port)
        }
    }

    /// Accepts `key` if known_hosts records it for the target. A target that
    /// known_hosts records with other keys only is refused under either
    /// policy, even when the recorded keys are of another type: accepting a
    /// new key type there would let whoever sits in the middle choose one.
    fn verify(&self, key: &PublicKey) -> Result<(), SshError> {
        let recorded =
            known_host_keys_path(&self.address, self.port, &self.known_hosts).map_err(|e| SshError::KnownHosts {
                host: self.host.clone(),
                path: self.known_hosts.clone(),
                message: e.to_string(),
            })?;
        if recorded.iter().any(|(_, k)| k.key_data() == key.key_data()) {
            return Ok(());
        }
        let offered = key.fingerprint(HashAlg::Sha256).to_string();
        if let Some((line, _)) = recorded.first() {
            return Err(SshError::HostKeyMismatch {
                host: self.host.clone(),
                known_as: self.known_as(),
                known_hosts: self.known_hosts.clone(),
                line: file_line(&self.known_hosts, *line),
                offered: format!("{} {offered}", key.algorithm()),
            });
        }
        match self.policy {
            HostKeyPolicy::Verify => Err(SshError::UnknownHostKey {
                host: self.host.clone(),
                known_as: self.known_as(),
                known_hosts: self.known_hosts.clone(),
                offered: format!("{} {offered}", key.algorithm()),
            }),
            HostKeyPolicy::TrustOnFirstUse => self.learn(key).map_err(|message| SshError::KnownHosts {
                host: self.host.clone(),
                path: self.known_hosts.clone(),
                message: format!("cannot record the new host key: {message}"),
            }),
        }
    }

    /// Appends `known_as key` to known_hosts, making the file and its
    /// directory if needed.
    ///
    /// Not russh's `learn_known_hosts_path`: it starts a new file with an
    /// empty line, which shifts every line number an error would name.
    fn learn(&self, key: &PublicKey) -> Result<(), String> {
        use std::io::{Read, Seek, SeekFrom, Write};
        let text = key.to_openssh().map_err(|e| e.to_string())?;
        // The comment is the server's business, not a fact we checked.
        let mut fields = text.split_whitespace();
        let (Some(kind), Some(base64)) = (fields.next(), fields.next()) else {
            return Err("cannot encode the key".into());
        };
        if let Some(dir) = self.known_hosts.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.known_hosts)
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        // A last line without its newline must not be glued to ours.
        if file.seek(SeekFrom::End(-1)).is_ok() {
            let mut last = [0u8; 1];
            if file.read_exact(&mut last).is_ok() && last[0] != b'\n' {
                line.push('\n');
            }
        }
        line.push_str(&format!("{} {kind} {base64}\n", self.known_as()));
        file.write_all(line.as_bytes()).map_err(|e| e.to_string())
    }
}

/// The line of `path` that russh's known_hosts reader calls `counted`.
///
/// russh numbers lines without counting comment lines (those starting with
/// `#`), so its numbers drift from the file's; an error that names a line
/// must name the one an editor shows.
fn file_line(path: &Path, counted: usize) -> usize {
    let Ok(text) = std::fs::read_to_string(path) else {
        return counted;
    };
    let mut seen = 0;
    for (index, line) in text.lines().enumerate() {
        if !line.starts_with('#') {
            seen += 1;
            if seen == counted {
                return index + 1;
            }
        }
    }
    counted
}

/// russh's default algorithm preferences, with the host key algorithms that
/// known_hosts records for the target moved to the front (as OpenSSH does),
/// so that a server with several host keys presents the one we know rather
/// than one that would be refused as a mismatch.
fn preferences(target: &SshTarget) -> russh::Preferred {
    let mut preferred = russh::Preferred::default();
    let recorded: Vec<Algorithm> = known_host_keys_path(&target.address, target.port, &target.known_hosts)
        .map(|keys| keys.into_iter().map(|(_, k)| k.algorithm()).collect())
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

/// Connects, verifies the host key and authenticates. The caller bounds the
/// whole of it with the connect timeout.
pub(super) async fn open(target: &SshTarget) -> Result<client::Handle<Client>, SshError> {
    let address = format!("{}:{}", target.address, target.port);
    let socket = tokio::net::TcpStream::connect((target.address.as_str(), target.port))
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::ConnectionRefused => SshError::Refused {
                host: target.host.clone(),
                address: address.clone(),
            },
            _ => SshError::Network {
                host: target.host.clone(),
                address: address.clone(),
                source,
            },
        })?;
    // Commands are short request/response exchanges; Nagle's delay would
    // only add latency.
    let _ = socket.set_nodelay(true);

    let config = client::Config {
        // Without keepalives a connection whose peer vanished (a rebooted
        // host, a dropped NAT entry) is only noticed when TCP gives up,
        // minutes later; with them, after `keepalive_max` unanswered
        // intervals, and the next exec reconnects.
        keepalive_interval: (!target.keepalive.is_zero()).then_some(target.keepalive),
        keepalive_max: 3,
        nodelay: true,
        preferred: preferences(target),
        ..client::Config::default()
    };
    let mut handle = client::connect_stream(Arc::new(config), socket, Client::new(target))
        .await
        .map_err(|e| match e {
            HandshakeError::HostKey(e) => e,
            HandshakeError::Ssh(e) => session_error(&target.host, e),
        })?;
    authenticate(target, &mut handle).await?;
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

/// Tries the key file, then the agent's keys; fails naming what was tried.
async fn authenticate(target: &SshTarget, handle: &mut client::Handle<Client>) -> Result<(), SshError> {
    let host = &target.host;
    let failed = |e: russh::Error| session_error(host, e);
    let mut tried = Vec::new();
    if let Some(path) = &target.key_file {
        let key = russh::keys::load_secret_key(path, None).map_err(|e| SshError::Key {
            host: host.clone(),
            path: path.clone(),
            message: e.to_string(),
        })?;
        let hash = if key.algorithm().is_rsa() {
            handle.best_supported_rsa_hash().await.map_err(failed)?.flatten()
        } else {
            None
        };
        let result = handle
            .authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(failed)?;
        if result.success() {
            return Ok(());
        }
        tried.push(format!("key file {}", path.display()));
    }
    if target.use_agent {
        match std::env::var_os("SSH_AUTH_SOCK") {
            None => tried.push("ssh-agent (SSH_AUTH_SOCK is not set)".to_string()),
            Some(socket) => {
                let mut agent = AgentClient::connect_uds(&socket).await.map_err(|e| SshError::Agent {
                    host: host.clone(),
                    message: format!("cannot reach the agent at {}: {e}", Path::new(&socket).display()),
                })?;
                let identities = agent.request_identities().await.map_err(|e| SshError::Agent {
                    host: host.clone(),
                    message: format!("cannot list the agent's keys: {e}"),
                })?;
                let keys: Vec<PublicKey> = identities
                    .into_iter()
                    .filter_map(|identity| match identity {
                        AgentIdentity::PublicKey { key, .. } => Some(key),
                        // Certificates need the server's CA configured;
                        // not supported here.
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
                        .authenticate_publickey_with(&target.user, key.clone(), hash, &mut agent)
                        .await
                        .map_err(|e| SshError::Agent {
                            host: host.clone(),
                            message: format!("the agent could not sign: {e}"),
                        })?;
                    if result.success() {
                        return Ok(());
                    }
                }
                tried.push(format!("ssh-agent ({} keys)", keys.len()));
            }
        }
    }
    Err(SshError::AuthFailed {
        host: host.clone(),
        user: target.user.clone(),
        tried: if tried.is_empty() {
            "nothing: no key file and the agent not enabled".to_string()
        } else {
            tried.join(", ")
        },
    })
}
