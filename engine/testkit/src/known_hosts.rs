//! known_hosts files, plain and hashed, in OpenSSH's forms.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::sys;

/// How host names are written in a known_hosts file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownHostsStyle {
    /// `127.0.20.1 ssh-ed25519 AAAA…`, or `[127.0.20.1]:2222 …` for a port
    /// other than 22.
    Plain,
    /// `|1|salt|hash ssh-ed25519 AAAA…`, as `ssh-keygen -H` writes them: the
    /// hash is HMAC-SHA1 of the plain name keyed with a random 20-byte salt,
    /// both base64.
    Hashed,
}

/// The name OpenSSH looks a host up by: `address` for port 22,
/// `[address]:port` otherwise (a `[address]:22` entry would never match).
pub fn host_pattern(address: Ipv4Addr, port: u16) -> String {
    if port == 22 {
        address.to_string()
    } else {
        format!("[{address}]:{port}")
    }
}

/// `name` hashed with `salt` as OpenSSH does: `|1|base64(salt)|base64(hmac)`.
pub fn hash_name(name: &str, salt: &[u8; 20]) -> String {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha1>::new_from_slice(salt) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes a key of any length"),
    };
    mac.update(name.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("|1|{}|{}", STANDARD.encode(salt), STANDARD.encode(digest))
}

/// One known_hosts line for the host known as `pattern` (see
/// [`host_pattern`]) whose public key is `key` (`ssh-ed25519 AAAA…`).
pub fn line(pattern: &str, key: &str, style: KnownHostsStyle) -> String {
    match style {
        KnownHostsStyle::Plain => format!("{pattern} {key}"),
        KnownHostsStyle::Hashed => format!("{} {key}", hash_name(pattern, &rand::random())),
    }
}

/// Writes a known_hosts file with an entry per `(pattern, key)`.
pub fn write<'a>(
    path: &Path,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    style: KnownHostsStyle,
) -> Result<()> {
    let mut text = String::new();
    for (pattern, key) in entries {
        text.push_str(&line(pattern, key, style));
        text.push('\n');
    }
    sys::write_file(path, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_openssh() {
        assert_eq!(host_pattern(Ipv4Addr::new(127, 0, 20, 1), 22), "127.0.20.1");
        assert_eq!(host_pattern(Ipv4Addr::new(127, 0, 20, 1), 2222), "[127.0.20.1]:2222");
    }

    #[test]
    fn hash_matches_ssh_keygen() {
        // `ssh-keygen -H` of "127.0.0.1 …" with this salt (checked against
        // OpenSSH 9.2 by the integration tests too).
        let salt = [0u8; 20];
        let hashed = hash_name("127.0.0.1", &salt);
        assert!(hashed.starts_with("|1|AAAAAAAAAAAAAAAAAAAAAAAAAAA=|"));
        assert_eq!(hashed.len(), "|1|".len() + 28 + 1 + 28);
    }
}
