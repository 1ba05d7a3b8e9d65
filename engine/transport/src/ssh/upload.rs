//! Copying a local file or directory tree to the server: checked and
//! archived here (tar), extracted there.

use std::path::{Path, PathBuf};

use super::SshError;

/// `remote` as (parent directory, last component), for extracting an
/// archive whose top entry is that component into the parent. `None` for
/// a relative path, `/`, or a path ending in `.` or `..`.
pub(super) fn split_remote(remote: &str) -> Option<(&str, &str)> {
    let trimmed = remote.trim_end_matches('/');
    if !remote.starts_with('/') || trimmed.is_empty() || remote.contains('\0') {
        return None;
    }
    let (parent, name) = trimmed.rsplit_once('/')?;
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some((if parent.is_empty() { "/" } else { parent }, name))
}

/// One file or directory to archive.
#[derive(Debug)]
pub(super) struct Entry {
    /// Where it is here.
    local: PathBuf,
    /// Its path below the top of the upload (`""` for the top itself).
    relative: PathBuf,
    /// A directory (else a regular file).
    directory: bool,
    /// The permission bits it gets there.
    mode: u32,
}

/// Every entry of the tree at `local`, parents before children: the top
/// gets `mode`, the others their own permission bits. Refuses symbolic
/// links and special files, as [`upload`] does.
pub(super) fn walk(host: &str, local: &Path, mode: u32) -> Result<Vec<Entry>, SshError> {
    let refuse = |path: &Path, message: String| SshError::Upload {
        host: host.to_string(),
        path: path.to_path_buf(),
        message,
    };
    let mut entries = Vec::new();
    let mut pending = vec![(local.to_path_buf(), PathBuf::new(), Some(mode))];
    while let Some((path, relative, mode)) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| refuse(&path, e.to_string()))?;
        let mode = mode.unwrap_or_else(|| std::os::unix::fs::PermissionsExt::mode(&meta.permissions())) & 0o7777;
        if meta.is_dir() {
            let mut children = Vec::new();
            for child in std::fs::read_dir(&path).map_err(|e| refuse(&path, e.to_string()))? {
                let child = child.map_err(|e| refuse(&path, e.to_string()))?;
                children.push((child.path(), relative.join(child.file_name()), None));
            }
            // Sorted for a stable archive; reversed for the stack.
            children.sort_by(|a, b| b.1.cmp(&a.1));
            pending.extend(children);
            entries.push(Entry {
                local: path,
                relative,
                directory: true,
                mode,
            });
        } else if meta.is_file() {
            entries.push(Entry {
                local: path,
                relative,
                directory: false,
                mode,
            });
        } else {
            return Err(refuse(
                &path,
                "not a regular file or directory (symbolic links and special files are not uploaded)".into(),
            ));
        }
    }
    Ok(entries)
}

/// Writes `entries` as a tar archive whose top entry is called `name`,
/// in chunks to `out`. Runs on a blocking thread.
///
/// When the receiving side stops (the server's `tar` failed, the
/// connection broke), it stops too and returns `Ok`: the failure is the
/// server's, which the caller reports.
pub(super) fn archive(
    host: &str,
    entries: &[Entry],
    name: &str,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), SshError> {
    let mut builder = tar::Builder::new(Chunks {
        out,
        buffer: Vec::with_capacity(CHUNK),
        stopped: false,
    });
    match write_archive(host, entries, name, &mut builder) {
        Err(_) if builder.get_ref().stopped => Ok(()),
        other => other,
    }
}

fn write_archive(
    host: &str,
    entries: &[Entry],
    name: &str,
    builder: &mut tar::Builder<Chunks>,
) -> Result<(), SshError> {
    let failed = |path: &Path, e: std::io::Error| SshError::Upload {
        host: host.to_string(),
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    for entry in entries {
        // `join("")` would add a slash: a top that is a file is just its name.
        let path = if entry.relative.as_os_str().is_empty() {
            PathBuf::from(name)
        } else {
            Path::new(name).join(&entry.relative)
        };
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        let mtime = std::fs::metadata(&entry.local)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        header.set_mtime(mtime);
        if entry.directory {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, &path, std::io::empty())
                .map_err(|e| failed(&entry.local, e))?;
        } else {
            let file = std::fs::File::open(&entry.local).map_err(|e| failed(&entry.local, e))?;
            let size = file.metadata().map_err(|e| failed(&entry.local, e))?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(size);
            // A file that changes size while it is read would corrupt the
            // archive: read exactly what the header says.
            builder
                .append_data(&mut header, &path, std::io::Read::take(file, size))
                .map_err(|e| failed(&entry.local, e))?;
        }
    }
    builder.finish().map_err(|e| failed(Path::new(name), e))?;
    std::io::Write::flush(builder.get_mut()).map_err(|e| failed(Path::new(name), e))
}

/// The size of the pieces an archive is sent in.
const CHUNK: usize = 32 * 1024;

/// A writer that sends what it gets in [`CHUNK`]-sized pieces.
struct Chunks {
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
    /// The receiver is gone.
    stopped: bool,
}

impl std::io::Write for Chunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.out.blocking_send(chunk).map_err(|_| {
            self.stopped = true;
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the server stopped reading the archive")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_split_into_parent_and_name() {
        assert_eq!(split_remote("/tmp/drover-1/t"), Some(("/tmp/drover-1", "t")));
        assert_eq!(split_remote("/tmp/x/"), Some(("/tmp", "x")));
        assert_eq!(split_remote("/x"), Some(("/", "x")));
        for bad in ["", "/", "//", "rel/x", "/a/..", "/a/."] {
            assert_eq!(split_remote(bad), None, "{bad:?}");
        }
    }
}
