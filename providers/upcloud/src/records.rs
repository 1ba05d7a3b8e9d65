//! What the provider asked UpCloud for, per run
//! (`<state>/runs/<run>/servers/<hostname>.json`,
//! `<state>/runs/<run>/networks/<zone>.json`): written before a request
//! (no uuid yet) and after it (with the uuid), so that a repeat knows
//! whether a request may have been made before a crash.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A server asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Its hostname.
    pub hostname: String,
    /// Its zone.
    pub zone: String,
    /// The task that asked for it.
    pub idempotency_key: String,
    /// UpCloud's id, once known.
    pub uuid: Option<String>,
}

/// A network asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Its zone.
    pub zone: String,
    /// Its name.
    pub name: String,
    /// UpCloud's id, once known.
    pub uuid: Option<String>,
}

/// The records of one run.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

/// A name safe as a file name (hostnames and zones are already).
fn file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Records {
    /// The records of run `run_id` under `state_dir`.
    pub fn new(state_dir: &Path, run_id: &str) -> Records {
        Records {
            dir: state_dir.join("runs").join(file_name(run_id)),
        }
    }

    fn server_file(&self, hostname: &str) -> PathBuf {
        self.dir.join("servers").join(format!("{}.json", file_name(hostname)))
    }

    fn network_file(&self, zone: &str) -> PathBuf {
        self.dir.join("networks").join(format!("{}.json", file_name(zone)))
    }

    fn read<T: for<'de> Deserialize<'de>>(file: &Path) -> std::io::Result<Option<T>> {
        match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", file.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", file.display()))),
        }
    }

    fn write<T: Serialize>(file: &Path, value: &T) -> std::io::Result<()> {
        use std::io::Write;
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        // Write, sync, rename: a crash leaves the old record or the new
        // one, never half of one, and the record is on disk before the
        // request it announces is made.
        let tmp = file.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    }

    fn remove(file: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The record of server `hostname`.
    pub fn server(&self, hostname: &str) -> std::io::Result<Option<ServerRecord>> {
        Self::read(&self.server_file(hostname))
    }

    /// Records a server.
    pub fn save_server(&self, record: &ServerRecord) -> std::io::Result<()> {
        Self::write(&self.server_file(&record.hostname), record)
    }

    /// Forgets server `hostname`.
    pub fn forget_server(&self, hostname: &str) -> std::io::Result<()> {
        Self::remove(&self.server_file(hostname))
    }

    /// The record of the network of `zone`.
    pub fn network(&self, zone: &str) -> std::io::Result<Option<NetworkRecord>> {
        Self::read(&self.network_file(zone))
    }

    /// Every network recorded.
    pub fn networks(&self) -> std::io::Result<Vec<NetworkRecord>> {
        let dir = self.dir.join("networks");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json")
                && let Some(r) = Self::read(&path)?
            {
                out.push(r);
            }
        }
        out.sort_by(|a: &NetworkRecord, b| a.zone.cmp(&b.zone));
        Ok(out)
    }

    /// Records a network.
    pub fn save_network(&self, record: &NetworkRecord) -> std::io::Result<()> {
        Self::write(&self.network_file(&record.zone), record)
    }

    /// Forgets the network of `zone`.
    pub fn forget_network(&self, zone: &str) -> std::io::Result<()> {
        Self::remove(&self.network_file(zone))
    }
}
