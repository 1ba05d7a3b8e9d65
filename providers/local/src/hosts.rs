//! Real hosts on this machine: the backend of the `local` provider.
//!
//! A [`HostFleet`] keeps its hosts under a state directory. Each host is an
//! OpenSSH daemon:
//!
//! - **on its own loopback address**, `127.0.A.B` (chosen by the caller or
//!   allocated from a range), port 22 by default. Linux routes the whole of
//!   127.0.0.0/8 to `lo` (`ip route show table local`: `local 127.0.0.0/8
//!   dev lo`), so any such address can be bound without configuration.
//! - **in its own PID, UTS and mount namespaces**, made by
//!   `unshare --uts --mount --pid --fork --kill-child --mount-proc
//!   --propagation private` (util-linux). The namespace's PID 1 runs
//!   `hosts/boot.sh`, which sets the hostname, bind-mounts the host's
//!   directories and then `exec`s `sshd -D`: the host's sshd is its PID 1.
//!   When it dies (stop, delete, crash) the kernel kills every process of
//!   the host, including daemons a taskserv detached with `setsid`. Inside,
//!   `/proc` shows only the host's processes, so `ps`/`pkill` in a script
//!   cannot touch another host.
//! - **with its own writable root**, `<state>/hosts/<hostname>/root`
//!   bind-mounted over [`HOST_ROOT`] (`/srv/drover`): taskservs prefix every
//!   path with `DROVER_ROOT`, so `DROVER_ROOT=/srv/drover` on such a host,
//!   and what they install lands in the host's state directory. Sessions
//!   get `HOME=/srv/drover/root`, `TMPDIR=/srv/drover/tmp` and
//!   `DROVER_ROOT=/srv/drover` (sshd `SetEnv`), so the machine's root
//!   dotfiles do not run on every command (a `pyenv rehash` in
//!   `/root/.bashrc` serialised and stalled parallel logins). The host also
//!   has its own `/etc/hosts` (the machine's plus `<address> <hostname>`).
//!   Everything else (`/usr`, `/etc`, `/tmp`, `/root`, the network
//!   namespace) is the machine's, shared by all hosts: mounting over `/tmp`
//!   or `/root` would hide a state directory that lives there.
//! - **with its own ed25519 host key** (`ssh-keygen`), recorded in the
//!   fleet's `<state>/known_hosts` as `127.0.A.B ssh-ed25519 … drover-host:<name>`
//!   (OpenSSH's form: `[addr]:port` only when the port is not 22; a
//!   `[addr]:22` line would never match). The key survives stop/start.
//! - **accepting the fleet's client key** `<state>/id_ed25519` (made once)
//!   for root, key only (`PermitRootLogin prohibit-password`, `UsePAM no`,
//!   `MaxSessions 16`), logging at INFO to `<host>/sshd.log`.
//!
//! State of a host, `<state>/hosts/<hostname>/`: `host.conf` (hostname,
//! address, port; present = the host exists), `pids` (the outer pids and
//! start times of the host's sshd and of its `unshare` parent),
//! `sshd_config`, `ssh_host_ed25519_key{,.pub}`, `authorized_keys`,
//! `etc/hosts`, `root/` and `sshd.log`. sshd's own `PidFile` is `none`: in
//! its PID namespace it would write `1`; drover records the outer pid.
//!
//! On the machine itself a fleet only makes `/run/sshd` (sshd's privilege
//! separation directory) and the empty mount point `/srv/drover`.
//!
//! Daemons are started in their own session and survive the process that
//! created them: an orchestrator that crashed finds them again with
//! [`HostFleet::status`] (pid and start time from `pids`, checked against
//! `/proc`). [`HostFleet::delete`] kills the host's PID 1 (and the
//! `unshare` parent, and anything whose command line names the host's
//! sshd_config, in case the pid file was lost) and waits until they are
//! gone before it removes the state. The namespaces' mounts vanish with
//! their last process. [`FleetGuard`] deletes every host it created when
//! dropped, also while a test panics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where a host's root directory is mounted inside its namespace: its
/// `DROVER_ROOT`.
pub const HOST_ROOT: &str = "/srv/drover";

/// The port hosts listen on unless [`FleetOptions::port`] says otherwise.
pub const DEFAULT_PORT: u16 = 22;

/// How long [`HostFleet::create`] and [`HostFleet::start`] wait for a
/// host's sshd to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long stopping a host may take before it is an error.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The script that becomes PID 1 of a host.
const BOOT_SCRIPT: &str = include_str!("hosts/boot.sh");

/// The environment of a host's daemon (nothing of the orchestrator's).
const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Marks a known_hosts line as the key of a drover host.
const MARK: &str = "drover-host:";

/// Serialises rewrites of known_hosts files within this process.
static KNOWN_HOSTS_LOCK: Mutex<()> = Mutex::new(());

/// A host to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Its hostname, also the name of its state directory.
    pub hostname: String,
    /// Its IPv4 loopback address (`127.0.A.B`); empty: allocate one from
    /// the fleet's range.
    pub address: String,
}

/// A running host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Its hostname (what `hostname` prints on it).
    pub hostname: String,
    /// The address its sshd listens on.
    pub address: String,
    /// The port its sshd listens on.
    pub port: u16,
    /// `DROVER_ROOT` on the host: [`HOST_ROOT`].
    pub root: String,
    /// The pid of its sshd (PID 1 of its namespace) as this machine sees it.
    pub pid: u32,
}

/// A host as the fleet finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostState {
    /// Its sshd runs.
    Running(HostInfo),
    /// It exists (keys, state, root) but its sshd does not run.
    Stopped,
    /// It does not exist.
    Absent,
}

/// What went wrong with a host; every variant names it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The caller is not root.
    #[error("host {host}: the local provider makes real hosts with namespaces and needs root (running as uid {uid})")]
    NotRoot {
        /// The host.
        host: String,
        /// The effective uid of this process.
        uid: u32,
    },
    /// A program hosts need is not installed.
    #[error("host {host}: {tool} not found: {hint}")]
    MissingTool {
        /// The host.
        host: String,
        /// The program.
        tool: String,
        /// How to get it.
        hint: String,
    },
    /// Something listens on the host's address and port already.
    #[error("host {host}: address {address}:{port} is already in use (another host or daemon listens there)")]
    AddressInUse {
        /// The host.
        host: String,
        /// Its address.
        address: String,
        /// Its port.
        port: u16,
    },
    /// The spec cannot be honoured (bad name or address, address taken).
    #[error("host {host}: {message}")]
    InvalidSpec {
        /// The host.
        host: String,
        /// Why.
        message: String,
    },
    /// The host does not exist.
    #[error("host {host} does not exist")]
    NotFound {
        /// The host.
        host: String,
    },
    /// The host's sshd did not come up; the tail of its log says why.
    #[error("host {host}: sshd did not start: {message}\n--- end of {} ---\n{log_tail}", log.display())]
    Start {
        /// The host.
        host: String,
        /// What was seen.
        message: String,
        /// The host's log file.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },
    /// The host's processes did not go away.
    #[error("host {host}: processes {pids:?} still run {} after SIGKILL", humantime(*waited))]
    Stop {
        /// The host.
        host: String,
        /// Those still alive.
        pids: Vec<u32>,
        /// How long it was waited for.
        waited: Duration,
    },
    /// A program run for the host failed.
    #[error("host {host}: {tool} failed: {message}")]
    Tool {
        /// The host.
        host: String,
        /// The program.
        tool: String,
        /// Its exit status and error output.
        message: String,
    },
    /// A file operation failed.
    #[error("host {host}: cannot {action}: {source}")]
    Io {
        /// The host.
        host: String,
        /// What was being done, naming the path.
        action: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The fleet itself cannot be set up (state directory, client key).
    #[error("host fleet at {}: {message}", state_dir.display())]
    Fleet {
        /// The fleet's state directory.
        state_dir: PathBuf,
        /// Why.
        message: String,
    },
}

fn humantime(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// How a fleet makes its hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetOptions {
    /// The port every host's sshd listens on (on its own address).
    pub port: u16,
    /// Where addresses come from when a spec names none.
    pub addresses: RangeInclusive<Ipv4Addr>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            port: DEFAULT_PORT,
            addresses: Ipv4Addr::new(127, 0, 100, 1)..=Ipv4Addr::new(127, 0, 199, 254),
        }
    }
}

/// Hosts on this machine, each an sshd in its own namespaces (see the
/// module documentation). Cheap to clone; clones share their locks.
#[derive(Debug, Clone)]
pub struct HostFleet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state_dir: PathBuf,
    options: FleetOptions,
    /// Addresses handed to hosts whose `host.conf` is not written yet.
    reserved: Mutex<BTreeSet<Ipv4Addr>>,
    /// One lock per hostname: calls on the same host are serialised.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// What `host.conf` records.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostRecord {
    hostname: String,
    address: Ipv4Addr,
    port: u16,
}

/// A process recorded by pid and start time (clock ticks since boot), so
/// a recycled pid is not taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: u32,
    start: u64,
}

/// The files of one host.
#[derive(Debug)]
struct HostPaths {
    dir: PathBuf,
    record: PathBuf,
    pids: PathBuf,
    config: PathBuf,
    key: PathBuf,
    authorized: PathBuf,
    log: PathBuf,
    root: PathBuf,
    etc: PathBuf,
}

impl HostPaths {
    fn new(dir: PathBuf) -> HostPaths {
        HostPaths {
            record: dir.join("host.conf"),
            pids: dir.join("pids"),
            config: dir.join("sshd_config"),
            key: dir.join("ssh_host_ed25519_key"),
            authorized: dir.join("authorized_keys"),
            log: dir.join("sshd.log"),
            root: dir.join("root"),
            etc: dir.join("etc"),
            dir,
        }
    }
}

/// The programs hosts need.
#[derive(Debug)]
struct Tools {
    sshd: PathBuf,
    unshare: PathBuf,
    keygen: PathBuf,
}

impl HostFleet {
    /// A fleet keeping its state in `state_dir`, with the default options;
    /// creates the directory, the client key and known_hosts if missing.
    pub fn new(state_dir: PathBuf) -> Result<HostFleet, HostError> {
        HostFleet::with_options(state_dir, FleetOptions::default())
    }

    /// A fleet with `options`.
    pub fn with_options(state_dir: PathBuf, options: FleetOptions) -> Result<HostFleet, HostError> {
        let fleet_err = |message: String| HostError::Fleet {
            state_dir: state_dir.clone(),
            message,
        };
        if state_dir.starts_with(HOST_ROOT) {
            return Err(fleet_err(format!(
                "the state directory must not be under {HOST_ROOT}, where hosts mount their roots"
            )));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir.join("hosts"))
            .map_err(|e| fleet_err(format!("cannot create {}: {e}", state_dir.join("hosts").display())))?;
        let fleet = HostFleet {
            inner: Arc::new(Inner {
                state_dir: state_dir.clone(),
                options,
                reserved: Mutex::new(BTreeSet::new()),
                locks: Mutex::new(HashMap::new()),
            }),
        };
        fleet.ensure_client_key().map_err(fleet_err)?;
        let known_hosts = fleet.known_hosts();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&known_hosts)
            .map_err(|e| fleet_err(format!("cannot create {}: {e}", known_hosts.display())))?;
        Ok(fleet)
    }

    /// The fleet's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// The private key every host accepts for root.
    pub fn client_key(&self) -> PathBuf {
        self.inner.state_dir.join("id_ed25519")
    }

    /// The known_hosts file with every host's key.
    pub fn known_hosts(&self) -> PathBuf {
        self.inner.state_dir.join("known_hosts")
    }

    /// The state directory of host `hostname`.
    pub fn host_dir(&self, hostname: &str) -> PathBuf {
        self.inner.state_dir.join("hosts").join(hostname)
    }

    /// The path of host `hostname`'s sshd_config (it appears on the
    /// command line of the host's sshd and unshare processes).
    pub fn sshd_config(&self, hostname: &str) -> PathBuf {
        self.host_dir(hostname).join("sshd_config")
    }

    /// The hostnames of every host of the fleet (running or stopped).
    pub fn hostnames(&self) -> Result<Vec<String>, HostError> {
        Ok(self.records()?.into_keys().collect())
    }

    /// Arguments for the system `ssh` client to run a command on `host` as
    /// root, with this fleet's key and known_hosts checked strictly and
    /// no user or system configuration: `ssh <these> <command>`.
    pub fn ssh_args(&self, host: &HostInfo) -> Vec<String> {
        let mut args = vec!["-F".to_string(), "/dev/null".into(), "-i".into()];
        args.push(self.client_key().display().to_string());
        for option in [
            "IdentitiesOnly=yes".to_string(),
            format!("UserKnownHostsFile={}", self.known_hosts().display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            "BatchMode=yes".into(),
            "ConnectTimeout=5".into(),
            "LogLevel=ERROR".into(),
        ] {
            args.push("-o".into());
            args.push(option);
        }
        args.push("-p".into());
        args.push(host.port.to_string());
        args.push(format!("root@{}", host.address));
        args
    }

    /// Create a host and start it; returns once its sshd accepts
    /// connections. Idempotent: a running host is returned as it is, a
    /// stopped one is started (with its key), so a re-run after a crash
    /// is safe. A spec whose address differs from the existing host's is
    /// refused.
    pub async fn create(&self, spec: &HostSpec) -> Result<HostInfo, HostError> {
        let host = spec.hostname.clone();
        check_hostname(&host)?;
        let lock = self.host_lock(&host);
        let _held = lock.lock().await;
        let fleet = self.clone();
        let spec = spec.clone();
        blocking(&host, move || fleet.create_now(&spec)).await
    }

    /// Start a stopped host with the key and state it had; a running host
    /// is returned as it is.
    pub async fn start(&self, hostname: &str) -> Result<HostInfo, HostError> {
        check_hostname(hostname)?;
        let lock = self.host_lock(hostname);
        let _held = lock.lock().await;
        let fleet = self.clone();
        let host = hostname.to_string();
        blocking(hostname, move || {
            fleet.preflight(&host)?;
            let record = fleet
                .read_record(&host)?
                .ok_or_else(|| HostError::NotFound { host: host.clone() })?;
            match fleet.running(&record)? {
                Some(info) => {
                    fleet
                        .wait_ready(&record, info.pid)
                        .map_err(|m| fleet.start_error(&host, m))?;
                    Ok(info)
                }
                None => fleet.boot(&record),
            }
        })
        .await
    }

    /// Stop a host as a power cut would: SIGKILL to its PID 1, so every
    /// process of the host dies at once. Its state and key stay; stopping a
    /// stopped or absent host does nothing.
    pub async fn stop(&self, hostname: &str) -> Result<(), HostError> {
        check_hostname(hostname)?;
        let lock = self.host_lock(hostname);
        let _held = lock.lock().await;
        let fleet = self.clone();
        let host = hostname.to_string();
        blocking(hostname, move || fleet.kill_host(&host)).await
    }

    /// Delete a host: stop it (every process in its namespaces), then
    /// remove its state directory and its known_hosts line. Deleting an
    /// absent host is not an error.
    pub async fn delete(&self, hostname: &str) -> Result<(), HostError> {
        check_hostname(hostname)?;
        let lock = self.host_lock(hostname);
        let _held = lock.lock().await;
        let fleet = self.clone();
        let host = hostname.to_string();
        blocking(hostname, move || fleet.delete_blocking(&host)).await
    }

    /// [`HostFleet::delete`] for places that cannot await (drop handlers).
    /// Blocks for as long as the host's processes take to die (bounded).
    /// Does not take the host's lock.
    pub fn delete_blocking(&self, hostname: &str) -> Result<(), HostError> {
        check_hostname(hostname)?;
        let paths = self.paths(hostname);
        // A damaged host.conf must not keep a host from being deleted.
        let record = self.read_record(hostname).ok().flatten();
        if !paths.dir.exists() {
            return self.remove_known_host(hostname, record.as_ref());
        }
        self.kill_host(hostname)?;
        self.remove_known_host(hostname, record.as_ref())?;
        match std::fs::remove_dir_all(&paths.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(hostname, "remove", &paths.dir, e)),
            _ => Ok(()),
        }
    }

    /// Report a host: running (its sshd is alive), stopped or absent.
    pub async fn status(&self, hostname: &str) -> Result<HostState, HostError> {
        check_hostname(hostname)?;
        let fleet = self.clone();
        let host = hostname.to_string();
        blocking(hostname, move || fleet.status_blocking(&host)).await
    }

    /// [`HostFleet::status`] without a runtime.
    pub fn status_blocking(&self, hostname: &str) -> Result<HostState, HostError> {
        check_hostname(hostname)?;
        let Some(record) = self.read_record(hostname)? else {
            return Ok(HostState::Absent);
        };
        Ok(match self.running(&record)? {
            Some(info) => HostState::Running(info),
            None => HostState::Stopped,
        })
    }

    fn paths(&self, hostname: &str) -> HostPaths {
        HostPaths::new(self.host_dir(hostname))
    }

    fn host_lock(&self, hostname: &str) -> Arc<tokio::sync::Mutex<()>> {
        locked(&self.inner.locks)
            .entry(hostname.to_string())
            .or_default()
            .clone()
    }

    fn create_now(&self, spec: &HostSpec) -> Result<HostInfo, HostError> {
        let host = spec.hostname.as_str();
        self.preflight(host)?;
        let wanted = match spec.address.trim() {
            "" => None,
            text => Some(parse_address(host, text)?),
        };
        if let Some(record) = self.read_record(host)? {
            if let Some(address) = wanted
                && address != record.address
            {
                return Err(HostError::InvalidSpec {
                    host: host.into(),
                    message: format!(
                        "it exists with address {}, not {address}; delete it to change its address",
                        record.address
                    ),
                });
            }
            return match self.running(&record)? {
                Some(info) => {
                    self.wait_ready(&record, info.pid)
                        .map_err(|m| self.start_error(host, m))?;
                    Ok(info)
                }
                None => self.boot(&record),
            };
        }
        let address = self.reserve_address(host, wanted)?;
        let record = HostRecord {
            hostname: host.to_string(),
            address,
            port: self.inner.options.port,
        };
        // An address something else listens on is refused before any
        // state is made.
        let provisioned = check_bindable(host, address, record.port).and_then(|()| self.provision(&record));
        locked(&self.inner.reserved).remove(&address);
        provisioned?;
        self.boot(&record)
    }

    /// Checks what every start needs: root, sshd, unshare, ssh-keygen.
    fn preflight(&self, host: &str) -> Result<Tools, HostError> {
        let uid = effective_uid();
        if uid != Some(0) {
            return Err(HostError::NotRoot {
                host: host.into(),
                uid: uid.unwrap_or(u32::MAX),
            });
        }
        let find = |tool: &str, hint: &str| {
            find_program(tool).ok_or_else(|| HostError::MissingTool {
                host: host.into(),
                tool: tool.into(),
                hint: hint.into(),
            })
        };
        Ok(Tools {
            sshd: find("sshd", "install openssh-server (apt-get install openssh-server)")?,
            unshare: find("unshare", "install util-linux (apt-get install util-linux)")?,
            keygen: find("ssh-keygen", "install openssh-client (apt-get install openssh-client)")?,
        })
    }

    /// The client key, made if missing.
    fn ensure_client_key(&self) -> Result<(), String> {
        let key = self.client_key();
        let public = key.with_extension("pub");
        if key.exists() && public.exists() {
            return Ok(());
        }
        let keygen = find_program("ssh-keygen")
            .ok_or("ssh-keygen not found: install openssh-client (apt-get install openssh-client)")?;
        if key.exists() {
            // A crash between the two files: derive the public half again.
            let out = run(std::process::Command::new(&keygen).arg("-y").arg("-f").arg(&key))?;
            return write_atomic(&public, &out, 0o644).map_err(|e| format!("cannot write {}: {e}", public.display()));
        }
        let _ = std::fs::remove_file(&public);
        let tmp = key.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(tmp.with_extension("tmp.pub"));
        run(std::process::Command::new(&keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "drover", "-f"])
            .arg(&tmp))?;
        std::fs::rename(tmp.with_extension("tmp.pub"), &public)
            .and_then(|()| std::fs::rename(&tmp, &key))
            .map_err(|e| format!("cannot install the client key {}: {e}", key.display()))
    }

    /// Every host with a record, by hostname.
    fn records(&self) -> Result<BTreeMap<String, HostRecord>, HostError> {
        let dir = self.inner.state_dir.join("hosts");
        let entries = std::fs::read_dir(&dir).map_err(|e| HostError::Fleet {
            state_dir: self.inner.state_dir.clone(),
            message: format!("cannot read {}: {e}", dir.display()),
        })?;
        let mut records = BTreeMap::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_hostname(&name).is_err() {
                continue;
            }
            if let Some(record) = self.read_record(&name)? {
                records.insert(name, record);
            }
        }
        Ok(records)
    }

    fn read_record(&self, host: &str) -> Result<Option<HostRecord>, HostError> {
        let path = self.paths(host).record;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(host, "read", &path, e)),
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
                .map(str::trim)
        };
        let corrupt = || HostError::InvalidSpec {
            host: host.into(),
            message: format!("{} is damaged; delete the host", path.display()),
        };
        Ok(Some(HostRecord {
            hostname: host.to_string(),
            address: field("address").and_then(|a| a.parse().ok()).ok_or_else(corrupt)?,
            port: field("port").and_then(|p| p.parse().ok()).ok_or_else(corrupt)?,
        }))
    }

    /// Picks the host's address: the wanted one if no other host has it,
    /// else the first free one of the range. Reserved until released by
    /// the caller.
    fn reserve_address(&self, host: &str, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, HostError> {
        let mut reserved = locked(&self.inner.reserved);
        let taken: BTreeMap<Ipv4Addr, String> =
            self.records()?.into_values().map(|r| (r.address, r.hostname)).collect();
        let invalid = |message: String| HostError::InvalidSpec {
            host: host.into(),
            message,
        };
        if let Some(address) = wanted {
            if let Some(other) = taken.get(&address) {
                return Err(invalid(format!("address {address} belongs to host {other}")));
            }
            if !reserved.insert(address) {
                return Err(invalid(format!("address {address} is being given to another host")));
            }
            return Ok(address);
        }
        let range = &self.inner.options.addresses;
        for n in u32::from(*range.start())..=u32::from(*range.end()) {
            let address = Ipv4Addr::from(n);
            let last = address.octets()[3];
            if last == 0 || last == 255 || taken.contains_key(&address) || reserved.contains(&address) {
                continue;
            }
            if TcpListener::bind(SocketAddrV4::new(address, self.inner.options.port)).is_err() {
                continue;
            }
            reserved.insert(address);
            return Ok(address);
        }
        Err(invalid(format!(
            "no free address left in {}-{}",
            range.start(),
            range.end()
        )))
    }

    /// Makes the host's state: directories, host key, authorized_keys,
    /// known_hosts line, and last `host.conf` (from then on it exists).
    fn provision(&self, record: &HostRecord) -> Result<(), HostError> {
        let host = record.hostname.as_str();
        let tools = self.preflight(host)?;
        let paths = self.paths(host);
        if paths.dir.exists() {
            // Left by a create that crashed before writing host.conf.
            self.kill_host(host)?;
            std::fs::remove_dir_all(&paths.dir).map_err(|e| io_err(host, "remove", &paths.dir, e))?;
        }
        let mut dirs = std::fs::DirBuilder::new();
        dirs.mode(0o700).recursive(true);
        dirs.create(&paths.dir)
            .map_err(|e| io_err(host, "create", &paths.dir, e))?;
        dirs.mode(0o755);
        for dir in [&paths.root, &paths.etc] {
            dirs.create(dir).map_err(|e| io_err(host, "create", dir, e))?;
        }
        std::fs::set_permissions(&paths.root, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io_err(host, "set permissions of", &paths.root, e))?;
        run(std::process::Command::new(&tools.keygen)
            .args(["-q", "-t", "ed25519", "-N", ""])
            .arg("-C")
            .arg(format!("root@{host}"))
            .arg("-f")
            .arg(&paths.key))
        .map_err(|message| HostError::Tool {
            host: host.into(),
            tool: "ssh-keygen".into(),
            message,
        })?;
        let client = self.client_key().with_extension("pub");
        let client_key = std::fs::read(&client).map_err(|e| io_err(host, "read", &client, e))?;
        write_atomic(&paths.authorized, &client_key, 0o600).map_err(|e| io_err(host, "write", &paths.authorized, e))?;
        let public = paths.key.with_extension("pub");
        let public_key = std::fs::read_to_string(&public).map_err(|e| io_err(host, "read", &public, e))?;
        let mut fields = public_key.split_whitespace();
        let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
            return Err(HostError::Tool {
                host: host.into(),
                tool: "ssh-keygen".into(),
                message: format!("{} is not a public key", public.display()),
            });
        };
        let line = format!(
            "{} {kind} {key} {MARK}{host}",
            known_hosts_name(record.address, record.port)
        );
        self.rewrite_known_hosts(host, |lines| {
            lines.retain(|l| !is_line_of(l, host, Some(record)));
            lines.push(line);
        })?;
        let text = format!("hostname={host}\naddress={}\nport={}\n", record.address, record.port);
        write_atomic(&paths.record, text.as_bytes(), 0o644).map_err(|e| io_err(host, "write", &paths.record, e))
    }

    /// Starts the host's namespaces and sshd and waits until it answers.
    fn boot(&self, record: &HostRecord) -> Result<HostInfo, HostError> {
        let host = record.hostname.as_str();
        let tools = self.preflight(host)?;
        let paths = self.paths(host);
        check_bindable(host, record.address, record.port)?;
        for (dir, mode) in [(Path::new("/run/sshd"), 0o755), (Path::new(HOST_ROOT), 0o755)] {
            // sshd's privilege separation directory and the mount point of
            // host roots, on the machine itself.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(|e| io_err(host, "create", dir, e))?;
        }
        // Root's home and the temporary directory inside the host's root.
        for (dir, mode) in [(paths.root.join("root"), 0o700), (paths.root.join("tmp"), 0o1777)] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(&dir)
                .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)))
                .map_err(|e| io_err(host, "create", &dir, e))?;
        }
        let config = sshd_config(&paths, record);
        write_atomic(&paths.config, config.as_bytes(), 0o600).map_err(|e| io_err(host, "write", &paths.config, e))?;
        let hosts_file = paths.etc.join("hosts");
        let hosts = etc_hosts(record);
        write_atomic(&hosts_file, hosts.as_bytes(), 0o644).map_err(|e| io_err(host, "write", &hosts_file, e))?;
        let passwd_file = paths.etc.join("passwd");
        let passwd = etc_passwd();
        write_atomic(&passwd_file, passwd.as_bytes(), 0o644).map_err(|e| io_err(host, "write", &passwd_file, e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&paths.log)
            .map_err(|e| io_err(host, "open", &paths.log, e))?;
        let log2 = log.try_clone().map_err(|e| io_err(host, "open", &paths.log, e))?;

        let mut command = std::process::Command::new(&tools.unshare);
        command
            .args(["--uts", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"])
            .args([
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                BOOT_SCRIPT,
                "drover-host",
            ])
            .arg(host)
            .arg(&paths.dir)
            .arg(HOST_ROOT)
            .arg(&tools.sshd)
            .arg(&paths.config)
            .env_clear()
            .env("PATH", HOST_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: setsid is async-signal-safe and touches no memory of
        // the parent. Its own session: no terminal signal of ours reaches
        // the host, and it outlives this process.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
        }
        let mut child = command.spawn().map_err(|e| HostError::Tool {
            host: host.into(),
            tool: tools.unshare.display().to_string(),
            message: e.to_string(),
        })?;
        let unshare = child.id();
        // Reap unshare when it ends (when the host stops). If this process
        // ends first, init inherits it.
        let reaper = std::thread::Builder::new()
            .name("drover-host".into())
            .spawn(move || child.wait());
        if let Err(e) = reaper {
            // Without a reaper the host still runs; it stays a zombie
            // once stopped, until this process exits.
            eprintln!("drover: host {host}: cannot start a reaper thread: {e}");
        }

        let failed = |fleet: &HostFleet, message: String| {
            // Best effort: the error about the start matters more.
            let _ = fleet.kill_host(host);
            fleet.start_error(host, message)
        };
        let unshare_proc = proc_stat(unshare).map(|s| Proc {
            pid: unshare,
            start: s.start,
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let sshd = loop {
            if let Some(pid) = children_of(unshare).into_iter().next()
                && let Some(stat) = proc_stat(pid)
            {
                break Proc { pid, start: stat.start };
            }
            if !alive(unshare_proc) {
                return Err(failed(self, "unshare exited before starting the host".into()));
            }
            if Instant::now() > deadline {
                return Err(failed(self, "unshare started no host process".into()));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let mut pids = format!("sshd {} {}\n", sshd.pid, sshd.start);
        if let Some(u) = unshare_proc {
            pids.push_str(&format!("unshare {} {}\n", u.pid, u.start));
        }
        write_atomic(&paths.pids, pids.as_bytes(), 0o644).map_err(|e| io_err(host, "write", &paths.pids, e))?;
        match self.wait_ready(record, sshd.pid) {
            Ok(()) => Ok(self.info(record, sshd.pid)),
            Err(message) => Err(failed(self, message)),
        }
    }

    fn info(&self, record: &HostRecord, pid: u32) -> HostInfo {
        HostInfo {
            hostname: record.hostname.clone(),
            address: record.address.to_string(),
            port: record.port,
            root: HOST_ROOT.into(),
            pid,
        }
    }

    /// The host's info if its sshd is alive.
    fn running(&self, record: &HostRecord) -> Result<Option<HostInfo>, HostError> {
        let procs = self.read_pids(&record.hostname)?;
        Ok(procs
            .get("sshd")
            .copied()
            .filter(|p| alive(Some(*p)))
            .map(|p| self.info(record, p.pid)))
    }

    fn read_pids(&self, host: &str) -> Result<BTreeMap<String, Proc>, HostError> {
        let path = self.paths(host).pids;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(io_err(host, "read", &path, e)),
        };
        Ok(text
            .lines()
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                let name = f.next()?.to_string();
                let pid = f.next()?.parse().ok()?;
                let start = f.next()?.parse().ok()?;
                Some((name, Proc { pid, start }))
            })
            .collect())
    }

    /// Waits until the host's sshd sends its SSH banner, or it dies, or
    /// [`READY_TIMEOUT`] passes; what went wrong, if it did.
    fn wait_ready(&self, record: &HostRecord, pid: u32) -> Result<(), String> {
        let proc = proc_stat(pid).map(|s| Proc { pid, start: s.start });
        let address = SocketAddr::V4(SocketAddrV4::new(record.address, record.port));
        let started = Instant::now();
        loop {
            if !alive(proc) {
                return Err(format!("sshd (pid {pid}) exited"));
            }
            if banner(address) {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "{address} did not answer with an SSH banner within {}",
                    humantime(READY_TIMEOUT)
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A start failure of `host`, with the end of its log.
    fn start_error(&self, host: &str, message: String) -> HostError {
        let log = self.paths(host).log;
        HostError::Start {
            host: host.into(),
            message,
            log_tail: tail(&log, 20),
            log,
        }
    }

    /// Kills every process of the host and waits until they are gone:
    /// its sshd (PID 1 of its namespaces, so everything in them goes
    /// too), its unshare, and whatever still names its sshd_config (in
    /// case the pid file was lost).
    fn kill_host(&self, host: &str) -> Result<(), HostError> {
        let paths = self.paths(host);
        let needle = paths.config.as_os_str().as_encoded_bytes().to_vec();
        let recorded = self.read_pids(host)?;
        let started = Instant::now();
        // The sshd first, alone: its unshare parent reaps it and exits by
        // itself (reaped in turn by this process or init). Killing both
        // at once would leave the sshd a zombie until init reaps it.
        if let Some(sshd) = recorded.get("sshd").copied().filter(|p| alive(Some(*p))) {
            signal_kill(host, &paths, sshd.pid)?;
            let until = started + Duration::from_millis(500);
            while recorded.values().any(|p| alive(Some(*p))) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        loop {
            let mut procs: Vec<Proc> = recorded.values().copied().filter(|p| alive(Some(*p))).collect();
            procs.extend(processes_naming(&needle));
            procs.sort_by_key(|p| p.pid);
            procs.dedup();
            if procs.is_empty() {
                break;
            }
            if started.elapsed() > KILL_TIMEOUT {
                return Err(HostError::Stop {
                    host: host.into(),
                    pids: procs.iter().map(|p| p.pid).collect(),
                    waited: KILL_TIMEOUT,
                });
            }
            for p in &procs {
                signal_kill(host, &paths, p.pid)?;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match std::fs::remove_file(&paths.pids) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(host, "remove", &paths.pids, e)),
            _ => Ok(()),
        }
    }

    fn remove_known_host(&self, host: &str, record: Option<&HostRecord>) -> Result<(), HostError> {
        self.rewrite_known_hosts(host, |lines| lines.retain(|l| !is_line_of(l, host, record)))
    }

    /// Rewrites known_hosts through `edit`, atomically (write, rename).
    fn rewrite_known_hosts(&self, host: &str, edit: impl FnOnce(&mut Vec<String>)) -> Result<(), HostError> {
        let path = self.known_hosts();
        let _held = locked(&KNOWN_HOSTS_LOCK);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(host, "read", &path, e)),
        };
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let before = lines.clone();
        edit(&mut lines);
        if lines == before {
            return Ok(());
        }
        let mut out = lines.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        write_atomic(&path, out.as_bytes(), 0o644).map_err(|e| io_err(host, "write", &path, e))
    }
}

/// Deletes every host created through it when dropped, also when the
/// code holding it panics: test suites leave no daemons behind.
#[derive(Debug)]
pub struct FleetGuard {
    fleet: HostFleet,
    hosts: Mutex<BTreeSet<String>>,
}

impl FleetGuard {
    /// A guard over `fleet`.
    pub fn new(fleet: HostFleet) -> FleetGuard {
        FleetGuard {
            fleet,
            hosts: Mutex::new(BTreeSet::new()),
        }
    }

    /// The fleet.
    pub fn fleet(&self) -> &HostFleet {
        &self.fleet
    }

    /// [`HostFleet::create`], remembering the host (before it is made, so
    /// a half-made host is deleted too).
    pub async fn create(&self, spec: &HostSpec) -> Result<HostInfo, HostError> {
        check_hostname(&spec.hostname)?;
        self.adopt(&spec.hostname);
        self.fleet.create(spec).await
    }

    /// Delete `hostname` on drop although it was created elsewhere.
    pub fn adopt(&self, hostname: &str) {
        locked(&self.hosts).insert(hostname.to_string());
    }

    /// The hosts it will delete.
    pub fn hosts(&self) -> Vec<String> {
        locked(&self.hosts).iter().cloned().collect()
    }
}

impl Drop for FleetGuard {
    fn drop(&mut self) {
        let hosts = std::mem::take(&mut *locked(&self.hosts));
        let fleet = &self.fleet;
        std::thread::scope(|scope| {
            for host in &hosts {
                scope.spawn(move || {
                    if let Err(e) = fleet.delete_blocking(host) {
                        eprintln!("drover: FleetGuard: {e}");
                    }
                });
            }
        });
    }
}

/// SIGKILL to `pid`, one of host `host`'s processes; gone already is fine.
fn signal_kill(host: &str, paths: &HostPaths, pid: u32) -> Result<(), HostError> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(());
    };
    match kill(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(io_err(host, &format!("kill pid {pid} of"), &paths.dir, e.into())),
    }
}

/// Runs `work` on the blocking pool.
async fn blocking<T: Send + 'static>(
    host: &str,
    work: impl FnOnce() -> Result<T, HostError> + Send + 'static,
) -> Result<T, HostError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(HostError::Io {
            host: host.into(),
            action: "finish the host operation".into(),
            source: io::Error::other(e.to_string()),
        }),
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent at every await-free
    // step, so a panic elsewhere does not poison its meaning.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_err(host: &str, action: &str, path: &Path, source: io::Error) -> HostError {
    HostError::Io {
        host: host.into(),
        action: format!("{action} {}", path.display()),
        source,
    }
}

/// A hostname: 1 to 63 characters, letters, digits, `-` and `.`, not
/// starting with `-` or `.`: safe as a directory name and for sethostname.
fn check_hostname(host: &str) -> Result<(), HostError> {
    let ok = !host.is_empty()
        && host.len() <= 63
        && !host.starts_with(['-', '.'])
        && !host.contains("..")
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(HostError::InvalidSpec {
            host: host.into(),
            message: "a hostname is 1 to 63 letters, digits, '-' and '.', not starting with '-' or '.'".into(),
        })
    }
}

fn parse_address(host: &str, text: &str) -> Result<Ipv4Addr, HostError> {
    let invalid = |why: &str| HostError::InvalidSpec {
        host: host.into(),
        message: format!("address {text:?} {why}"),
    };
    let address: Ipv4Addr = text.parse().map_err(|_| invalid("is not an IPv4 address"))?;
    if !address.is_loopback() {
        return Err(invalid("is not a loopback address (127.0.0.0/8)"));
    }
    let last = address.octets()[3];
    if last == 0 || last == 255 {
        return Err(invalid("ends in .0 or .255"));
    }
    Ok(address)
}

fn check_bindable(host: &str, address: Ipv4Addr, port: u16) -> Result<(), HostError> {
    match TcpListener::bind(SocketAddrV4::new(address, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(HostError::AddressInUse {
            host: host.into(),
            address: address.to_string(),
            port,
        }),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => Err(HostError::InvalidSpec {
            host: host.into(),
            message: format!("address {address} is not an address of this machine (is 127.0.0.0/8 routed to lo?)"),
        }),
        Err(e) => Err(HostError::Io {
            host: host.into(),
            action: format!("bind {address}:{port}"),
            source: e,
        }),
    }
}

/// The name OpenSSH looks a host up by in known_hosts.
fn known_hosts_name(address: Ipv4Addr, port: u16) -> String {
    if port == 22 {
        address.to_string()
    } else {
        format!("[{address}]:{port}")
    }
}

/// Whether a known_hosts line is host `host`'s: its mark, or its address.
fn is_line_of(line: &str, host: &str, record: Option<&HostRecord>) -> bool {
    let mark = format!("{MARK}{host}");
    let mut fields = line.split_whitespace();
    let first = fields.next();
    if fields.any(|f| f == mark) {
        return true;
    }
    record.is_some_and(|r| first == Some(known_hosts_name(r.address, r.port).as_str()))
}

fn sshd_config(paths: &HostPaths, record: &HostRecord) -> String {
    format!(
        "# drover host {host}: written by HostFleet at every start.\n\
         ListenAddress {address}:{port}\n\
         AddressFamily inet\n\
         HostKey {key}\n\
         PidFile none\n\
         AuthorizedKeysFile {authorized}\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         # The state directory may sit under a world-writable /tmp.\n\
         StrictModes no\n\
         MaxSessions 16\n\
         MaxStartups 64:30:256\n\
         LoginGraceTime 30\n\
         UseDNS no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         X11Forwarding no\n\
         AcceptEnv LANG LC_* DROVER_*\n\
         # Root's home and temporary files are the host's, not the machine's\n\
         # (whose dotfiles would otherwise run at every command).\n\
         SetEnv HOME={root}/root TMPDIR={root}/tmp DROVER_ROOT={root}\n\
         Subsystem sftp internal-sftp\n\
         LogLevel INFO\n",
        host = record.hostname,
        address = record.address,
        port = record.port,
        key = paths.key.display(),
        authorized = paths.authorized.display(),
        root = HOST_ROOT,
    )
}

/// The host's /etc/hosts: the machine's, and its own name on its address.
fn etc_hosts(record: &HostRecord) -> String {
    let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| "127.0.0.1\tlocalhost\n".into());
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let host = &record.hostname;
    let short = host.split('.').next().unwrap_or(host);
    text.push_str("# this drover host\n");
    if short == host {
        text.push_str(&format!("{}\t{host}\n", record.address));
    } else {
        text.push_str(&format!("{}\t{host} {short}\n", record.address));
    }
    text
}

/// The host's /etc/passwd: the machine's, with root's login shell
/// /bin/sh. sshd runs every command through the user's login shell, and
/// bash reads ~/.bashrc for commands that arrive over SSH; an interactive
/// profile (pyenv, nvm, ...) costs from 100 ms to seconds a command.
fn etc_passwd() -> String {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_else(|_| "root:x:0:0:root:/root:/bin/sh\n".into());
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut fields: Vec<&str> = line.split(':').collect();
        if fields.len() == 7 && fields[0] == "root" {
            fields[6] = "/bin/sh";
        }
        out.push_str(&fields.join(":"));
        out.push('\n');
    }
    out
}

/// Whether something at `address` sends an SSH banner.
fn banner(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else {
        return false;
    };
    if stream.set_read_timeout(Some(Duration::from_millis(500))).is_err() {
        return false;
    }
    let mut got = [0u8; 4];
    stream.read_exact(&mut got).is_ok() && &got == b"SSH-"
}

/// The effective uid of this process.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `name` on PATH or in the sbin directories (sshd is not on a user PATH).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .and_then(|p| {
            if p.is_absolute() {
                Some(p)
            } else {
                std::fs::canonicalize(p).ok()
            }
        })
}

/// Runs a short program; its standard output, or its status and errors.
fn run(command: &mut std::process::Command) -> Result<Vec<u8>, String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", command.get_program()))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{:?} {}: {}",
            command.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Writes a file whole or not at all.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| io::Write::write_all(&mut f, data))
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return format!("({} cannot be read)", path.display());
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What /proc/<pid>/stat says about a process.
#[derive(Debug, Clone, Copy)]
struct Stat {
    state: char,
    ppid: u32,
    start: u64,
}

fn proc_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        // Field 22 of the line, the 20th after the comm.
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Whether the recorded process still runs (not a zombie, same start).
fn alive(proc: Option<Proc>) -> bool {
    proc.and_then(|p| proc_stat(p.pid).map(|s| (p, s)))
        .is_some_and(|(p, s)| s.start == p.start && s.state != 'Z' && s.state != 'X')
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// The living children of `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    pids()
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.ppid == parent && s.state != 'Z'))
        .collect()
}

/// Living processes whose command line contains `needle`.
fn processes_naming(needle: &[u8]) -> Vec<Proc> {
    let me = std::process::id();
    pids()
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .filter_map(|pid| {
            let stat = proc_stat(pid)?;
            (stat.state != 'Z').then_some(Proc { pid, start: stat.start })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_checked() {
        for good in ["web-1", "a", "db.example.com", "h200"] {
            assert!(check_hostname(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "a/b", "..", "a..b", "a b", &"x".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_are_loopback() {
        assert_eq!(
            parse_address("h", "127.0.200.1").ok(),
            Some(Ipv4Addr::new(127, 0, 200, 1))
        );
        for bad in ["10.0.0.1", "127.0.0.0", "127.0.1.255", "::1", "x"] {
            assert!(parse_address("h", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn known_hosts_names_follow_openssh() {
        let a = Ipv4Addr::new(127, 0, 200, 1);
        assert_eq!(known_hosts_name(a, 22), "127.0.200.1");
        assert_eq!(known_hosts_name(a, 2222), "[127.0.200.1]:2222");
        let record = HostRecord {
            hostname: "h1".into(),
            address: a,
            port: 22,
        };
        assert!(is_line_of("127.0.200.1 ssh-ed25519 AAAA drover-host:h1", "h1", None));
        assert!(!is_line_of("127.0.200.1 ssh-ed25519 AAAA drover-host:h10", "h1", None));
        assert!(is_line_of("127.0.200.1 ssh-ed25519 AAAA", "h1", Some(&record)));
        assert!(!is_line_of("127.0.200.10 ssh-ed25519 AAAA", "h1", Some(&record)));
    }

    #[test]
    fn precondition_errors_name_the_host_and_the_remedy() {
        let not_root = HostError::NotRoot {
            host: "web-1".into(),
            uid: 1000,
        };
        assert_eq!(
            not_root.to_string(),
            "host web-1: the local provider makes real hosts with namespaces and needs root (running as uid 1000)"
        );
        let missing = HostError::MissingTool {
            host: "web-1".into(),
            tool: "sshd".into(),
            hint: "install openssh-server (apt-get install openssh-server)".into(),
        };
        assert_eq!(
            missing.to_string(),
            "host web-1: sshd not found: install openssh-server (apt-get install openssh-server)"
        );
        let start = HostError::Start {
            host: "web-1".into(),
            message: "sshd (pid 7) exited".into(),
            log: PathBuf::from("/s/hosts/web-1/sshd.log"),
            log_tail: "Bad configuration option: Nope".into(),
        };
        assert!(
            start
                .to_string()
                .starts_with("host web-1: sshd did not start: sshd (pid 7) exited")
        );
        assert!(start.to_string().ends_with("Bad configuration option: Nope"));
    }

    #[test]
    fn own_stat_is_read() {
        let stat = proc_stat(std::process::id()).expect("own stat");
        assert_ne!(stat.state, 'Z');
        assert!(stat.start > 0);
    }
}
