//! The provider's SSH key: one ed25519 key under the provider's state
//! directory, made once (`ssh-keygen`, as the local provider makes its
//! fleet's key) and imported into each region as an EC2 key pair named
//! after its fingerprint, so two orchestrators sharing an account never
//! overwrite each other's key pair.

use std::path::{Path, PathBuf};

use drover_core::FailureKind;
use sha2::{Digest, Sha256};

use crate::api::{ApiError, failure};

/// The provider's key on disk.
#[derive(Debug, Clone)]
pub struct SshKey {
    /// The private key (OpenSSH format, owner-only).
    pub private: PathBuf,
    /// The public key line (`ssh-ed25519 AAAA... drover`).
    pub public: String,
    /// The EC2 key pair name: `drover-` and 16 hex digits of the public
    /// key's SHA-256.
    pub name: String,
}

/// The key under `state_dir`, made if absent.
pub fn ensure(state_dir: &Path) -> Result<SshKey, ApiError> {
    let private = state_dir.join("id_ed25519");
    let public_file = state_dir.join("id_ed25519.pub");
    let io = |what: &str, e: std::io::Error| failure(FailureKind::Permanent, format!("{what}: {e}"));
    if !private.exists() || !public_file.exists() {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            io(
                &format!("cannot create the provider directory {}", state_dir.display()),
                e,
            )
        })?;
        // A half-made key (a crash between the two files) is made again.
        let _ = std::fs::remove_file(&private);
        let _ = std::fs::remove_file(&public_file);
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "drover", "-f"])
            .arg(&private)
            .output()
            .map_err(|e| {
                io(
                    "cannot run ssh-keygen to make the provider's SSH key (install openssh-client)",
                    e,
                )
            })?;
        if !out.status.success() {
            return Err(failure(
                FailureKind::Permanent,
                format!(
                    "ssh-keygen could not make {}: {}",
                    private.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
    }
    let public = std::fs::read_to_string(&public_file)
        .map_err(|e| io(&format!("cannot read {}", public_file.display()), e))?
        .trim()
        .to_string();
    let digest = Sha256::digest(public.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(SshKey {
        private,
        public,
        name: format!("drover-{hex}"),
    })
}
