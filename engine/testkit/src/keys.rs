//! ed25519 keys in OpenSSH's own file formats, made in-process.
//!
//! `ssh-keygen` costs ~5 ms a key (a process); a fleet of 1,000 hosts needs
//! 1,000 host keys, so they are generated here (ed25519-dalek, microseconds)
//! and written exactly as `ssh-keygen -t ed25519 -N ''` writes them: the
//! unencrypted `openssh-key-v1` private key and the one-line public key.
//! The tests check both against `ssh-keygen -y` and `sshd`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::sys;

/// An ed25519 key pair, in OpenSSH's formats.
#[derive(Clone)]
pub struct Ed25519Key {
    private: String,
    public: String,
}

impl std::fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Key")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Ed25519Key {
    /// A new random key whose comment is `comment`.
    pub fn generate(comment: &str) -> Ed25519Key {
        Ed25519Key::from_seed(&rand::random::<[u8; 32]>(), comment)
    }

    /// The key of a given 32-byte seed (deterministic; for tests of this
    /// module).
    pub fn from_seed(seed: &[u8; 32], comment: &str) -> Ed25519Key {
        let signing = ed25519_dalek::SigningKey::from_bytes(seed);
        let public = signing.verifying_key().to_bytes();

        let mut blob = Vec::with_capacity(51);
        put_string(&mut blob, b"ssh-ed25519");
        put_string(&mut blob, &public);

        // The private section: a check number twice, the key, the comment,
        // then padding 1, 2, 3... to the cipher's block size (8 for none).
        let check: u32 = rand::random();
        let mut section = Vec::with_capacity(160);
        section.extend_from_slice(&check.to_be_bytes());
        section.extend_from_slice(&check.to_be_bytes());
        put_string(&mut section, b"ssh-ed25519");
        put_string(&mut section, &public);
        let mut secret = [0u8; 64];
        secret[..32].copy_from_slice(seed);
        secret[32..].copy_from_slice(&public);
        put_string(&mut section, &secret);
        put_string(&mut section, comment.as_bytes());
        let mut pad = 1u8;
        while section.len() % 8 != 0 {
            section.push(pad);
            pad += 1;
        }

        let mut file = b"openssh-key-v1\0".to_vec();
        put_string(&mut file, b"none"); // cipher
        put_string(&mut file, b"none"); // kdf
        put_string(&mut file, b""); // kdf options
        file.extend_from_slice(&1u32.to_be_bytes()); // number of keys
        put_string(&mut file, &blob);
        put_string(&mut file, &section);

        let encoded = STANDARD.encode(&file);
        let mut private = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
        for chunk in encoded.as_bytes().chunks(70) {
            private.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            private.push('\n');
        }
        private.push_str("-----END OPENSSH PRIVATE KEY-----\n");

        let mut public_line = format!("ssh-ed25519 {}", STANDARD.encode(&blob));
        if !comment.is_empty() {
            public_line.push(' ');
            public_line.push_str(comment);
        }
        Ed25519Key {
            private,
            public: public_line,
        }
    }

    /// The public key as one line: `ssh-ed25519 AAAA… comment`.
    pub fn public_line(&self) -> &str {
        &self.public
    }

    /// The public key without its comment: `ssh-ed25519 AAAA…` (the form
    /// known_hosts lines carry).
    pub fn public_key(&self) -> &str {
        let mut fields = self.public.splitn(3, ' ');
        let kind = fields.next().unwrap_or_default();
        let key = fields.next().unwrap_or_default();
        &self.public[..kind.len() + 1 + key.len()]
    }

    /// The private key file's text (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub fn private_pem(&self) -> &str {
        &self.private
    }

    /// Writes the private key to `path` (mode 0600) and the public key to
    /// `path.pub` (0644), as `ssh-keygen -f path` would; returns `path.pub`.
    pub fn write(&self, path: &Path) -> Result<PathBuf> {
        let public = public_path(path);
        sys::write_file(path, self.private.as_bytes(), 0o600)?;
        sys::write_file(&public, format!("{}\n", self.public).as_bytes(), 0o644)?;
        Ok(public)
    }
}

/// `path` with `.pub` appended (`id_ed25519` → `id_ed25519.pub`).
pub fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// SSH wire format string: u32 length, then the bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_openssh_s() {
        let key = Ed25519Key::from_seed(&[7; 32], "host@example");
        assert!(key.public_line().starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"));
        assert!(key.public_line().ends_with(" host@example"));
        assert_eq!(key.public_key().split(' ').count(), 2);
        assert!(
            key.private_pem()
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA")
        );
        assert!(
            key.private_pem()
                .lines()
                .all(|l| l.len() <= 70 || l.starts_with("-----"))
        );
    }
}
