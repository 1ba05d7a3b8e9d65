//! Copying a local file or directory tree to the server over SFTP.

use std::path::{Path, PathBuf};

use russh_sftp::client::SftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use tokio::io::AsyncWriteExt;

use super::SshError;

/// Why an upload failed: the local side (already an [`SshError`]), or the
/// SFTP server, whose error the caller maps (a broken SFTP channel must be
/// replaced, which only the connection can do).
pub(super) enum Failure {
    Local(SshError),
    Remote(String, SftpError),
}

/// Uploads `local` to `remote`: a file becomes a file of mode `mode`; a
/// directory becomes a directory of mode `mode` whose entries keep their
/// local permission bits (so scripts stay executable and secrets private).
///
/// Permissions are set explicitly after each entry is written, because the
/// server applies its umask to the modes it is asked to create with.
/// Directory modes are set last, deepest first: a directory that is not
/// writable by its owner (0555) could not be filled afterwards.
/// Symbolic links and special files are refused rather than followed or
/// skipped: either would upload something other than what is on disk.
pub(super) async fn upload(
    sftp: &SftpSession,
    host: &str,
    local: &Path,
    remote: &str,
    mode: u32,
) -> Result<(), Failure> {
    let local_error = |path: &Path, message: String| {
        Failure::Local(SshError::Upload {
            host: host.to_string(),
            path: path.to_path_buf(),
            message,
        })
    };
    let remote_error = |path: &str, e: SftpError| Failure::Remote(path.to_string(), e);

    let mut pending: Vec<(PathBuf, String, u32)> = vec![(local.to_path_buf(), remote.to_string(), mode)];
    let mut directories: Vec<(String, u32)> = Vec::new();
    while let Some((local, remote, mode)) = pending.pop() {
        let meta = tokio::fs::symlink_metadata(&local)
            .await
            .map_err(|e| local_error(&local, e.to_string()))?;
        if meta.is_dir() {
            if let Err(e) = sftp.create_dir(remote.as_str()).await {
                // An existing directory is fine (uploads are repeated on
                // retries); anything else at that path is not.
                let exists = sftp
                    .metadata(remote.as_str())
                    .await
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
                if !exists {
                    return Err(remote_error(&remote, e));
                }
            }
            let mut entries = tokio::fs::read_dir(&local)
                .await
                .map_err(|e| local_error(&local, e.to_string()))?;
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| local_error(&local, e.to_string()))?
            {
                let name = entry.file_name();
                let Some(name_str) = name.to_str() else {
                    return Err(local_error(
                        &entry.path(),
                        "the name is not UTF-8, which SFTP needs".into(),
                    ));
                };
                let child_mode = entry
                    .metadata()
                    .await
                    .map_err(|e| local_error(&entry.path(), e.to_string()))?
                    .permissions();
                pending.push((
                    entry.path(),
                    format!("{}/{name_str}", remote.trim_end_matches('/')),
                    std::os::unix::fs::PermissionsExt::mode(&child_mode) & 0o7777,
                ));
            }
            directories.push((remote, mode));
        } else if meta.is_file() {
            let mut source = tokio::fs::File::open(&local)
                .await
                .map_err(|e| local_error(&local, e.to_string()))?;
            // Created owner-only: the final, maybe wider, mode comes after
            // the content is complete.
            let private = FileAttributes {
                permissions: Some(0o600),
                ..FileAttributes::default()
            };
            let mut target = sftp
                .open_with_flags_and_attributes(
                    remote.as_str(),
                    OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
                    private,
                )
                .await
                .map_err(|e| remote_error(&remote, e))?;
            tokio::io::copy(&mut source, &mut target)
                .await
                .map_err(|e| remote_error(&remote, e.into()))?;
            target.shutdown().await.map_err(|e| remote_error(&remote, e.into()))?;
            set_mode(sftp, &remote, mode)
                .await
                .map_err(|e| remote_error(&remote, e))?;
        } else {
            return Err(local_error(
                &local,
                "not a regular file or directory (symbolic links and special files are not uploaded)".into(),
            ));
        }
    }
    for (remote, mode) in directories.into_iter().rev() {
        set_mode(sftp, &remote, mode)
            .await
            .map_err(|e| remote_error(&remote, e))?;
    }
    Ok(())
}

async fn set_mode(sftp: &SftpSession, remote: &str, mode: u32) -> Result<(), SftpError> {
    let attrs = FileAttributes {
        permissions: Some(mode & 0o7777),
        ..FileAttributes::default()
    };
    sftp.set_metadata(remote, attrs).await
}
