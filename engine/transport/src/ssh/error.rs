//! The SSH transport's errors: one variant per thing a caller can act on,
//! each message starting with the server's name.

use std::io;

use drover_core::FailureKind;
use std::path::PathBuf;
use std::time::Duration;

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
    /// With [`HostKeyPolicy::Verify`](super::HostKeyPolicy::Verify): no known_hosts file mentions the server.
    #[error(
        "{host}: unknown host key for {known_as} ({offered}): it is in none of {searched}; add it to {known_hosts} \
         (after checking the fingerprint) or choose host_key_policy = \"accept-new\"",
        known_hosts = known_hosts.display()
    )]
    UnknownHostKey {
        /// The server.
        host: String,
        /// Its name in known_hosts.
        known_as: String,
        /// The file a new key belongs in (the one accept-new would write).
        known_hosts: PathBuf,
        /// Every file that was read, for the message.
        searched: String,
        /// The offered key's algorithm and SHA256 fingerprint.
        offered: String,
    },
    /// known_hosts marks the offered key `@revoked`.
    #[error(
        "{host}: the host key of {known_as} ({offered}) is marked @revoked at {known_hosts}:{line}; the server must \
         get a new host key",
        known_hosts = known_hosts.display()
    )]
    HostKeyRevoked {
        /// The server.
        host: String,
        /// Its name in known_hosts.
        known_as: String,
        /// The file.
        known_hosts: PathBuf,
        /// The line revoking the key.
        line: usize,
        /// The offered key's algorithm and SHA256 fingerprint.
        offered: String,
    },
    /// The OpenSSH client configuration cannot be used.
    #[error("{host}: SSH client configuration {}: {message}", path.display())]
    Config {
        /// The server.
        host: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Something went wrong on the way through a bastion (`ssh.jump`,
    /// `ProxyJump`): `source` names the bastion and what failed there.
    #[error("{host}: through {source}")]
    Bastion {
        /// The server behind the bastion.
        host: String,
        /// The bastion, `user@address:port`.
        bastion: String,
        /// What failed, its message starting with "bastion user@address:port".
        source: Box<SshError>,
    },
    /// The bastion could not (or would not) open a connection to the next
    /// hop or the server.
    #[error(
        "{host}: bastion {bastion} cannot connect to {address}: {reason}{hint}",
        hint = if *prohibited { " (is AllowTcpForwarding off in its sshd_config?)" } else { "" }
    )]
    Forward {
        /// The server.
        host: String,
        /// The bastion, `user@address:port`.
        bastion: String,
        /// `address:port` the bastion was asked to reach.
        address: String,
        /// The bastion's answer.
        reason: String,
        /// The bastion refuses forwarding by policy (permanent).
        prohibited: bool,
    },
    /// `ssh.become = "sudo"`, but the login user may not run commands as
    /// the become user without a password (or sudo is missing).
    #[error(
        "{host}: user {user} cannot run commands as {become_user} with `sudo -n` ({message}); give {user} a NOPASSWD \
         sudoers rule for {become_user} on the server, or remove ssh.become"
    )]
    BecomeRefused {
        /// The server.
        host: String,
        /// The login user.
        user: String,
        /// The user commands were to run as.
        become_user: String,
        /// What sudo said.
        message: String,
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
    /// Whether another attempt can help: a connection that was refused,
    /// timed out or broke may work next time; a refused login, an unknown
    /// or changed host key, an unusable key file, agent or client
    /// configuration, a refused `sudo`, or an argument no server can take
    /// will not. Through a bastion, what failed there decides.
    pub fn kind(&self) -> FailureKind {
        match self {
            SshError::Refused { .. }
            | SshError::TimedOut { .. }
            | SshError::Network { .. }
            | SshError::Disconnected { .. }
            | SshError::Protocol { .. }
            | SshError::Remote { .. } => FailureKind::Transient,
            SshError::Bastion { source, .. } => source.kind(),
            SshError::Forward { prohibited, .. } => {
                if *prohibited {
                    FailureKind::Permanent
                } else {
                    FailureKind::Transient
                }
            }
            SshError::AuthFailed { .. }
            | SshError::HostKeyMismatch { .. }
            | SshError::HostKeyRevoked { .. }
            | SshError::Config { .. }
            | SshError::BecomeRefused { .. }
            | SshError::UnknownHostKey { .. }
            | SshError::KnownHosts { .. }
            | SshError::Key { .. }
            | SshError::Agent { .. }
            | SshError::Upload { .. }
            | SshError::InvalidInput { .. } => FailureKind::Permanent,
        }
    }
}
