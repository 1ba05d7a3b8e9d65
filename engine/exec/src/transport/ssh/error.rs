//! The SSH transport's errors: one variant per thing a caller can act on,
//! each message starting with the server's name.

use std::io;
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
    /// With [`HostKeyPolicy::Verify`](super::HostKeyPolicy::Verify): known_hosts does not mention the server.
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
    /// The closest I/O error kind, for [`TransportError`](crate::transport::TransportError)'s `io::Error`s.
    pub(super) fn io_kind(&self) -> io::ErrorKind {
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
    /// caller holding a [`TransportError`](crate::transport::TransportError) can still downcast to it.
    pub fn into_io(self) -> io::Error {
        io::Error::new(self.io_kind(), self)
    }
}
