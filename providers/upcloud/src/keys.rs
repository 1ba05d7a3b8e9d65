//! drover's SSH key for UpCloud servers: one ed25519 key pair per state
//! directory (`id_ed25519`, `id_ed25519.pub`), made on first use and
//! installed for the login user of every server the provider creates.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{LineEnding, PrivateKey};
use tokio::sync::Mutex;

/// The key pair.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key file (OpenSSH format, owner-only).
    pub private_file: PathBuf,
    /// The public key, `ssh-ed25519 AAAA… drover`.
    pub public: String,
}

/// Serializes the making of keys: parallel creates must not each make one.
static MAKING: Mutex<()> = Mutex::const_new(());

/// The key pair of `state_dir`, made now if it has none.
pub async fn ensure(state_dir: &Path) -> Result<KeyPair, String> {
    let _held = MAKING.lock().await;
    let private_file = state_dir.join("id_ed25519");
    let public_file = state_dir.join("id_ed25519.pub");
    if let Ok(public) = tokio::fs::read_to_string(&public_file).await
        && tokio::fs::try_exists(&private_file).await.unwrap_or(false)
    {
        return Ok(KeyPair {
            private_file,
            public: public.trim().to_string(),
        });
    }
    let seed: [u8; 32] = rand::random();
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment("drover");
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| format!("cannot encode a new SSH key: {e}"))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| format!("cannot encode a new SSH key: {e}"))?;
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(state_dir)?;
        // Write-then-rename: a crash leaves no half key; the public half
        // is written last, and its presence is what says the pair is whole.
        let tmp = state_dir.join("id_ed25519.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(private.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &private_file)?;
        std::fs::write(&public_file, format!("{public}\n"))
    };
    write().map_err(|e| {
        format!(
            "cannot write drover's UpCloud SSH key to {}: {e}",
            private_file.display()
        )
    })?;
    Ok(KeyPair { private_file, public })
}
