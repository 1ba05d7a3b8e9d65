//! A fleet of real SSH hosts started by the test itself.

use std::collections::HashSet;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::fcntl::Flock;
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::agent::SshAgent;
use crate::host::{self, Host};
use crate::keys::Ed25519Key;
use crate::known_hosts::{self, KnownHostsStyle};
use crate::ssh_config::{SshConfig, SshHostEntry};
use crate::sys;

/// The login user's default name.
pub const DEFAULT_USER: &str = "fleet";
/// The login user's default uid (and gid).
pub const DEFAULT_UID: u32 = 2001;
/// The port hosts listen on unless [`FleetBuilder::port`] says otherwise.
pub const DEFAULT_PORT: u16 = 22;
/// Where hosts' addresses come from unless [`FleetBuilder::addresses`]
/// says otherwise: 127.0.20.1 to 127.0.99.254 (20,000 addresses).
pub const DEFAULT_ADDRESSES: RangeInclusive<Ipv4Addr> = Ipv4Addr::new(127, 0, 20, 1)..=Ipv4Addr::new(127, 0, 99, 254);
/// The prefix of every fleet's state directory (and of the kit's other
/// temporary directories): what `scripts/check-no-leftovers.sh` looks for.
pub const STATE_PREFIX: &str = "drover-testkit-";
/// Where fleets keep their state unless [`FleetBuilder::state_root`] says
/// otherwise: `/dev/shm` when it is a tmpfs with 512 MiB free (a fleet of
/// 1,000 hosts writes ~20,000 small files, which a disk makes slow to
/// create and to remove), else `/var/tmp`. Not `/tmp`: each host mounts a
/// `/tmp` of its own, which would hide state kept there from its sshd.
pub fn default_state_root() -> PathBuf {
    const TMPFS: &str = "/dev/shm";
    let roomy_tmpfs = nix::sys::statfs::statfs(TMPFS).is_ok_and(|fs| {
        fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC
            && fs
                .blocks_available()
                .saturating_mul(u64::try_from(fs.block_size()).unwrap_or(0))
                >= 512 << 20
    });
    PathBuf::from(if roomy_tmpfs { TMPFS } else { "/var/tmp" })
}

/// Loopback addresses other code uses; fleets refuse them.
const RESERVED: [(Ipv4Addr, Ipv4Addr, &str); 3] = [
    (
        Ipv4Addr::new(127, 0, 0, 0),
        Ipv4Addr::new(127, 0, 0, 255),
        "the machine's own localhost services",
    ),
    (
        Ipv4Addr::new(127, 0, 10, 0),
        Ipv4Addr::new(127, 0, 10, 255),
        "other drover tests",
    ),
    (
        Ipv4Addr::new(127, 0, 100, 0),
        Ipv4Addr::new(127, 0, 199, 255),
        "drover's local provider",
    ),
];

/// Sudo rights of a user on a host, written to the host's own
/// `/etc/sudoers` (bind-mounted; the machine's is untouched).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Sudo {
    /// No rule: `sudo -n true` fails with "a password is required".
    #[default]
    None,
    /// `user ALL=(ALL:ALL) NOPASSWD: ALL`.
    All,
    /// `user ALL=(run_as) NOPASSWD: ALL`: commands as that user only.
    RunAs(String),
    /// These sudoers lines verbatim.
    Lines(String),
}

impl Sudo {
    /// The sudoers line(s) for `user`, if any.
    pub fn rule(&self, user: &str) -> Option<String> {
        match self {
            Sudo::None => None,
            Sudo::All => Some(format!("{user}\tALL=(ALL:ALL) NOPASSWD: ALL")),
            Sudo::RunAs(target) => Some(format!("{user}\tALL=({target}) NOPASSWD: ALL")),
            Sudo::Lines(lines) => Some(lines.trim_end().to_string()),
        }
    }
}

/// A user of every host of a fleet: exists only in the hosts' own
/// `/etc/passwd` and `/etc/group`, login shell `/bin/sh`, home
/// `/home/<name>` (in the host's state directory), the fleet's client key
/// in `~/.ssh/authorized_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// Login name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary group's gid (the group is named after the user).
    pub gid: u32,
    /// Its sudo rights on every host. For the login user
    /// ([`FleetBuilder::user`]) the per-host [`HostSpec::sudo`] or
    /// [`FleetBuilder::sudo`] apply instead.
    pub sudo: Sudo,
}

impl UserSpec {
    /// User `name` with uid and gid `uid`, no sudo rights.
    pub fn new(name: &str, uid: u32) -> UserSpec {
        UserSpec {
            name: name.into(),
            uid,
            gid: uid,
            sudo: Sudo::None,
        }
    }

    /// The same user with these sudo rights.
    pub fn with_sudo(mut self, sudo: Sudo) -> UserSpec {
        self.sudo = sudo;
        self
    }
}

/// One host to start, when names, addresses or sudo rights differ per host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Hostname and state directory name (`[a-z0-9-]`, at most 63).
    pub name: String,
    /// Its loopback address; `None`: one from the fleet's range. An
    /// address given here is not locked against other fleets (range
    /// addresses are): the caller keeps it to itself.
    pub address: Option<Ipv4Addr>,
    /// The login user's sudo rights on this host; `None`: the fleet's.
    pub sudo: Option<Sudo>,
    /// The network namespace (`ip netns` name) it runs in; `None`: the
    /// machine's. Set by [`BastionTopology`](crate::BastionTopology).
    pub(crate) netns: Option<String>,
}

impl HostSpec {
    /// Host `name`, address from the range, the fleet's sudo rights.
    pub fn new(name: &str) -> HostSpec {
        HostSpec {
            name: name.into(),
            address: None,
            sudo: None,
            netns: None,
        }
    }

    /// The same host on `address`.
    pub fn address(mut self, address: Ipv4Addr) -> HostSpec {
        self.address = Some(address);
        self
    }

    /// The same host with these sudo rights for the login user.
    pub fn sudo(mut self, sudo: Sudo) -> HostSpec {
        self.sudo = Some(sudo);
        self
    }

    pub(crate) fn in_netns(mut self, netns: &str, address: Ipv4Addr) -> HostSpec {
        self.netns = Some(netns.into());
        self.address = Some(address);
        self
    }
}

/// How to make a [`TestFleet`]; [`FleetBuilder::start`] makes it.
#[derive(Debug, Clone)]
pub struct FleetBuilder {
    specs: Vec<HostSpec>,
    count: usize,
    name_prefix: String,
    addresses: RangeInclusive<Ipv4Addr>,
    port: u16,
    user: UserSpec,
    extra_users: Vec<UserSpec>,
    sudo: Sudo,
    max_sessions: Option<u32>,
    sshd_options: Vec<String>,
    private_dirs: Vec<PathBuf>,
    state_root: PathBuf,
    ready_timeout: Option<Duration>,
}

impl Default for FleetBuilder {
    fn default() -> Self {
        FleetBuilder {
            specs: Vec::new(),
            count: 0,
            name_prefix: "host".into(),
            addresses: DEFAULT_ADDRESSES,
            port: DEFAULT_PORT,
            user: UserSpec::new(DEFAULT_USER, DEFAULT_UID),
            extra_users: Vec::new(),
            sudo: Sudo::None,
            max_sessions: None,
            sshd_options: Vec::new(),
            private_dirs: Vec::new(),
            state_root: default_state_root(),
            ready_timeout: None,
        }
    }
}

impl FleetBuilder {
    /// `n` more hosts named `<prefix>-001`, `<prefix>-002`, … (after the
    /// [`FleetBuilder::host`] ones).
    pub fn hosts(mut self, n: usize) -> Self {
        self.count += n;
        self
    }

    /// One more host as `spec` says.
    pub fn host(mut self, spec: HostSpec) -> Self {
        self.specs.push(spec);
        self
    }

    /// The prefix of generated host names (default `host`).
    pub fn name_prefix(mut self, prefix: &str) -> Self {
        self.name_prefix = prefix.into();
        self
    }

    /// The loopback range addresses are taken from (default
    /// [`DEFAULT_ADDRESSES`]). Fleets lock the /24 blocks they use (also
    /// across processes), so concurrent fleets never share an address.
    /// 127.0.0.x, 127.0.10.x and 127.0.100.x–127.0.199.x are refused:
    /// other code uses them.
    pub fn addresses(mut self, range: RangeInclusive<Ipv4Addr>) -> Self {
        self.addresses = range;
        self
    }

    /// The port every host's sshd listens on (default 22).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The login user (default `fleet`, uid/gid 2001).
    pub fn user(mut self, user: UserSpec) -> Self {
        self.user = user;
        self
    }

    /// Another user on every host (same client key, its own home).
    pub fn extra_user(mut self, user: UserSpec) -> Self {
        self.extra_users.push(user);
        self
    }

    /// The login user's sudo rights on hosts whose [`HostSpec`] says
    /// nothing (default none).
    pub fn sudo(mut self, sudo: Sudo) -> Self {
        self.sudo = sudo;
        self
    }

    /// sshd's `MaxSessions` (default: OpenSSH's own, 10).
    pub fn max_sessions(mut self, n: u32) -> Self {
        self.max_sessions = Some(n);
        self
    }

    /// Give every host a directory of its own at `path` (absolute, e.g.
    /// `/etc/drover`), empty at start and writable by root: what a real
    /// machine has of its own and the hosts of one machine would otherwise
    /// share. The mount point is made on the machine if missing (an empty
    /// directory); what the host writes there stays in its state.
    pub fn private_dir(mut self, path: &str) -> Self {
        self.private_dirs.push(PathBuf::from(path));
        self
    }

    /// One more sshd_config line for every host (`"MaxStartups 100"`).
    pub fn sshd_option(mut self, line: &str) -> Self {
        self.sshd_options.push(line.into());
        self
    }

    /// The directory the fleet's state directory (`drover-testkit-XXXXXX`)
    /// is made in (default [`default_state_root`]). Under `/tmp`, hosts share the
    /// machine's `/tmp` (a private one would hide the state from sshd).
    pub fn state_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_root = dir.into();
        self
    }

    /// How long to wait for the hosts to listen (default 20 s + 20 ms a
    /// host).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = Some(timeout);
        self
    }

    /// Makes the fleet: state, keys and known_hosts, then every host in
    /// parallel; returns once every sshd listens. On error nothing is left
    /// running.
    pub fn start(self) -> Result<TestFleet> {
        let started = Instant::now();
        sys::require_root()?;
        let sshd = sys::program("sshd", "openssh-server")?;

        let mut specs = self.specs.clone();
        let width = self.count.to_string().len().max(3);
        for i in 1..=self.count {
            specs.push(HostSpec::new(&format!("{}-{i:0width$}", self.name_prefix)));
        }
        if specs.is_empty() {
            bail!("a fleet needs at least one host (FleetBuilder::hosts or ::host)");
        }
        let mut names = HashSet::new();
        for spec in &specs {
            check_hostname(&spec.name)?;
            if !names.insert(spec.name.as_str()) {
                bail!("host name {} is used twice", spec.name);
            }
        }
        let mut users = vec![self.user.clone()];
        users.extend(self.extra_users.iter().cloned());
        check_users(&users)?;
        let sudo_used = specs
            .iter()
            .map(|s| s.sudo.as_ref().unwrap_or(&self.sudo))
            .chain(users[1..].iter().map(|u| &u.sudo))
            .any(|s| *s != Sudo::None);
        let sudoers = Path::new("/etc/sudoers").exists();
        if sudo_used && (!sudoers || sys::program("sudo", "sudo").is_err()) {
            bail!(
                "sudo rights were asked for but sudo is not installed: install the Debian package \
                 sudo (`make setup` does, through scripts/debian-packages.sh)"
            );
        }

        std::fs::create_dir_all(&self.state_root)
            .with_context(|| format!("cannot create {}", self.state_root.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(STATE_PREFIX)
            .tempdir_in(&self.state_root)
            .with_context(|| format!("cannot make a state directory in {}", self.state_root.display()))?;
        let root = dir.path().to_path_buf();
        sys::claim(&root)?;
        sys::sweep(&self.state_root, STATE_PREFIX);
        let client = Ed25519Key::generate("drover-testkit-client");
        let client_key = root.join("id_ed25519");
        client.write(&client_key)?;
        let etc = root.join("etc");
        sys::mkdir(&etc, 0o755)?;
        let (passwd, group, shadow) = write_etc(&etc, &users)?;
        // sshd's privilege separation directory, which Debian makes at boot
        // (through systemd, which a container does not run).
        sys::mkdir(Path::new("/run/sshd"), 0o755)?;
        for d in &self.private_dirs {
            anyhow::ensure!(d.is_absolute(), "private_dir {} must be absolute", d.display());
            if !d.is_dir() {
                std::fs::create_dir_all(d).with_context(|| format!("cannot make the mount point {}", d.display()))?;
            }
        }
        let sftp = ["/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("internal-sftp")
            .to_string();
        let shared = Arc::new(Shared {
            dir: root.clone(),
            sshd,
            sftp,
            passwd,
            group,
            shadow,
            sudoers,
            private_tmp: !root.starts_with("/tmp"),
            port: self.port,
            users,
            client_public: client.public_line().to_string(),
            max_sessions: self.max_sessions,
            sshd_options: self.sshd_options.clone(),
            private_dirs: self.private_dirs.clone(),
        });

        // Addresses: the specs' own, then free ones of locked blocks.
        let mut taken = HashSet::new();
        for spec in &specs {
            if let Some(address) = spec.address {
                if spec.netns.is_none() {
                    check_loopback(address, address)?;
                }
                if !taken.insert((spec.netns.clone(), address)) {
                    bail!("address {address} is given to two hosts");
                }
            }
        }
        let wanted = specs.iter().filter(|s| s.address.is_none()).count();
        let loopback_taken: HashSet<Ipv4Addr> = taken.iter().filter(|(ns, _)| ns.is_none()).map(|(_, a)| *a).collect();
        let (mut free, locks) = if wanted > 0 {
            allocate(&self.addresses, self.port, wanted, &loopback_taken)?
        } else {
            (Vec::new(), Vec::new())
        };
        free.reverse();
        let hosts: Vec<Host> = specs
            .into_iter()
            .map(|spec| {
                let address = spec.address.or_else(|| free.pop()).unwrap_or(Ipv4Addr::UNSPECIFIED);
                let sudo = spec.sudo.unwrap_or_else(|| self.sudo.clone());
                Host::new(spec.name, address, spec.netns, sudo, shared.clone())
            })
            .collect();

        let mut fleet = TestFleet {
            known_hosts: root.join("known_hosts"),
            known_hosts_hashed: root.join("known_hosts.hashed"),
            client_key,
            hosts,
            shared,
            startup: Duration::ZERO,
            _locks: locks,
            dir,
        };
        parallel(&fleet.hosts, Host::prepare)?;
        fleet.write_known_hosts(&fleet.known_hosts, KnownHostsStyle::Plain)?;
        fleet.write_known_hosts(&fleet.known_hosts_hashed, KnownHostsStyle::Hashed)?;
        for host in &fleet.hosts {
            host.spawn()?;
        }
        let timeout = self
            .ready_timeout
            .unwrap_or(Duration::from_secs(20) + Duration::from_millis(20) * fleet.hosts.len() as u32);
        let refs: Vec<&Host> = fleet.hosts.iter().collect();
        host::wait_ready(&refs, timeout)?;
        fleet.startup = started.elapsed();
        Ok(fleet)
    }
}

/// What every host of a fleet shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) sshd: PathBuf,
    pub(crate) sftp: String,
    pub(crate) passwd: PathBuf,
    pub(crate) group: PathBuf,
    pub(crate) shadow: PathBuf,
    /// The machine has /etc/sudoers (sudo is installed): hosts get theirs.
    pub(crate) sudoers: bool,
    pub(crate) private_tmp: bool,
    pub(crate) port: u16,
    /// The login user first, then the extra users.
    pub(crate) users: Vec<UserSpec>,
    pub(crate) client_public: String,
    pub(crate) max_sessions: Option<u32>,
    pub(crate) sshd_options: Vec<String>,
    /// Directories each host has of its own (see [`FleetBuilder::private_dir`]).
    pub(crate) private_dirs: Vec<PathBuf>,
}

/// Real SSH hosts, each an OpenSSH sshd in namespaces of its own with its
/// own hostname, loopback address, host key, non-root login user and sudo
/// rights; all accept one client key. Dropping the fleet kills every
/// process of every host and removes its state, also when a test panics.
#[derive(Debug)]
pub struct TestFleet {
    hosts: Vec<Host>,
    shared: Arc<Shared>,
    client_key: PathBuf,
    known_hosts: PathBuf,
    known_hosts_hashed: PathBuf,
    startup: Duration,
    _locks: Vec<Flock<File>>,
    // Last: removed once the hosts are gone.
    dir: TempDir,
}

impl TestFleet {
    /// A builder with the defaults (no hosts yet).
    pub fn builder() -> FleetBuilder {
        FleetBuilder::default()
    }

    /// `n` hosts with every default: port 22, user `fleet`, no sudo.
    pub fn start(n: usize) -> Result<TestFleet> {
        TestFleet::builder().hosts(n).start()
    }

    /// Every host, in the order they were asked for.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host number `index` (from 0). Panics when out of range.
    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    /// The host named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name() == name)
    }

    /// The fleet's state directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The login user's name.
    pub fn user(&self) -> &str {
        &self.shared.users[0].name
    }

    /// The private client key every host accepts for every user
    /// (unencrypted OpenSSH format, mode 0600); `.pub` next to it.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// The client key's public line.
    pub fn client_public_key(&self) -> &str {
        &self.shared.client_public
    }

    /// known_hosts with every host's key as it was at start, plain form.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The same, hashed (`|1|salt|hash`, as `ssh-keygen -H` writes).
    pub fn known_hosts_hashed(&self) -> &Path {
        &self.known_hosts_hashed
    }

    /// Writes a known_hosts file at `path` with every host's current key.
    pub fn write_known_hosts(&self, path: &Path, style: KnownHostsStyle) -> Result<()> {
        let entries: Vec<(String, String)> = self
            .hosts
            .iter()
            .map(|h| (h.known_hosts_pattern(), h.host_key()))
            .collect();
        known_hosts::write(path, entries.iter().map(|(p, k)| (p.as_str(), k.as_str())), style)
    }

    /// How long [`FleetBuilder::start`] took, from the call to every sshd
    /// listening.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Arguments for the system `ssh` client to log in to `host` as the
    /// login user: this fleet's key and known_hosts checked strictly, no
    /// user or system configuration, batch mode. `ssh <these> [command]`.
    pub fn ssh_args(&self, host: &Host) -> Vec<String> {
        let mut args: Vec<String> = vec!["-F".into(), "/dev/null".into()];
        for option in [
            "BatchMode=yes".to_string(),
            "StrictHostKeyChecking=yes".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "IdentitiesOnly=yes".into(),
            "ConnectTimeout=10".into(),
            "LogLevel=ERROR".into(),
        ] {
            args.push("-o".into());
            args.push(option);
        }
        args.extend([
            "-i".into(),
            self.client_key.display().to_string(),
            "-p".into(),
            host.port().to_string(),
            host.destination(),
        ]);
        args
    }

    /// `ssh` with [`TestFleet::ssh_args`]; add the remote command.
    pub fn ssh(&self, host: &Host) -> Command {
        let mut command = Command::new("ssh");
        command.args(self.ssh_args(host));
        command
    }

    /// Runs `command` on `host` with the system ssh client; its stdout,
    /// or an error with the exit status and stderr.
    pub fn run(&self, host: &Host, command: &str) -> Result<String> {
        sys::run(self.ssh(host).arg(command)).with_context(|| format!("on host {}", host.name()))
    }

    /// An ssh_config for the fleet: a `Host <name>` entry per host
    /// (HostName, Port, User) and `Host *` defaults (the client key, the
    /// fleet's known_hosts, strict checking, batch mode).
    pub fn ssh_config(&self) -> SshConfig {
        let mut config = self.ssh_config_defaults();
        for host in &self.hosts {
            config.host(SshHostEntry::new(
                host.name(),
                &host.address().to_string(),
                self.user(),
                host.port(),
            ));
        }
        config
    }

    pub(crate) fn ssh_config_defaults(&self) -> SshConfig {
        let mut config = SshConfig::new();
        config
            .default_option("IdentityFile", &self.client_key.display().to_string())
            .default_option("IdentitiesOnly", "yes")
            .default_option("UserKnownHostsFile", &self.known_hosts.display().to_string())
            .default_option("GlobalKnownHostsFile", "/dev/null")
            .default_option("StrictHostKeyChecking", "yes")
            .default_option("BatchMode", "yes")
            .default_option("ConnectTimeout", "10")
            .default_option("LogLevel", "ERROR");
        config
    }

    /// An ssh-agent holding the fleet's client key.
    pub fn agent(&self) -> Result<SshAgent> {
        SshAgent::with_key(&self.client_key)
    }

    /// Stops every host (SIGTERM, then SIGKILL after 5 s) and removes the
    /// state, reporting what went wrong (dropping does the same, silently
    /// but for a line on stderr).
    pub fn shutdown(mut self) -> Result<()> {
        self.halt(Signal::SIGTERM)
    }

    fn halt(&mut self, signal: Signal) -> Result<()> {
        let mut first = None;
        for host in &self.hosts {
            if let Err(e) = host.send_halt(signal) {
                first.get_or_insert(e);
            }
        }
        for host in &self.hosts {
            if let Err(e) = host.reap() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for TestFleet {
    fn drop(&mut self) {
        if let Err(e) = self.halt(Signal::SIGKILL) {
            eprintln!("drover-testkit: stopping a fleet: {e:#}");
        }
    }
}

/// Runs `work` on every host, spread over the machine's cores; the first
/// error.
fn parallel(hosts: &[Host], work: fn(&Host) -> Result<()>) -> Result<()> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(hosts.len());
    let chunk = hosts.len().div_ceil(threads.max(1));
    std::thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .chunks(chunk.max(1))
            .map(|part| scope.spawn(move || part.iter().try_for_each(work)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a preparing thread panicked")))
            })
            .collect::<Result<Vec<()>>>()
            .map(drop)
    })
}

/// Hostnames: what `hostname` and a directory name both accept.
fn check_hostname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if !ok {
        bail!("host name {name:?} is not a valid hostname ([a-z0-9-], at most 63, not starting with -)");
    }
    Ok(())
}

fn check_users(users: &[UserSpec]) -> Result<()> {
    let mut names = HashSet::new();
    let mut uids = HashSet::new();
    for user in users {
        let ok = !user.name.is_empty()
            && user.name.len() <= 32
            && user
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !user.name.starts_with('-');
        if !ok {
            bail!("user name {:?} is not valid ([a-z0-9_-], at most 32)", user.name);
        }
        if ["root", "sshd", "nobody"].contains(&user.name.as_str()) {
            bail!("user {} exists on every host already", user.name);
        }
        if user.uid < 1000 || user.gid < 1000 || user.uid >= 65534 || user.gid >= 65534 {
            bail!("user {}: uid and gid must be between 1000 and 65533", user.name);
        }
        if !names.insert(&user.name) || !uids.insert(user.uid) {
            bail!("user {} (uid {}) is given twice", user.name, user.uid);
        }
    }
    Ok(())
}

/// The hosts' /etc/passwd, /etc/group and /etc/shadow: root, sshd's
/// privilege separation user (as the machine has it), nobody, the users.
fn write_etc(etc: &Path, users: &[UserSpec]) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let machine_passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    let machine_group = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    let entry = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.split(':').next() == Some(name))
            .map(str::to_string)
    };
    let sshd = entry(&machine_passwd, "sshd").context(
        "the machine has no user sshd (sshd's privilege separation user): install openssh-server \
         (`make setup` does)",
    )?;
    let sshd_gid = sshd.split(':').nth(3).unwrap_or("65534").to_string();
    let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
    passwd.push_str(&sshd);
    passwd.push_str("\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    let mut group = String::from("root:x:0:\n");
    let shadow_group = entry(&machine_group, "shadow");
    if let Some(line) = &shadow_group {
        group.push_str(line);
        group.push('\n');
    }
    if sshd_gid != "65534"
        && sshd_gid != "0"
        && let Some(line) = machine_group.lines().find(|l| l.split(':').nth(2) == Some(&sshd_gid))
    {
        group.push_str(line);
        group.push('\n');
    }
    group.push_str("nogroup:x:65534:\n");
    // Key-only users, as `adduser --disabled-password` makes them: "*" in
    // shadow (locked for passwords, not for keys).
    let mut shadow = String::from("root:*:19000:0:99999:7:::\n");
    let mut gids = HashSet::new();
    for user in users {
        passwd.push_str(&format!(
            "{name}:x:{uid}:{gid}:{name}:/home/{name}:/bin/sh\n",
            name = user.name,
            uid = user.uid,
            gid = user.gid
        ));
        if gids.insert(user.gid) {
            group.push_str(&format!("{}:x:{}:\n", user.name, user.gid));
        }
        shadow.push_str(&format!("{}:*:19000:0:99999:7:::\n", user.name));
    }
    let paths = (etc.join("passwd"), etc.join("group"), etc.join("shadow"));
    sys::write_file(&paths.0, passwd.as_bytes(), 0o644)?;
    sys::write_file(&paths.1, group.as_bytes(), 0o644)?;
    sys::write_file(&paths.2, shadow.as_bytes(), 0o640)?;
    let shadow_gid = shadow_group.and_then(|l| l.split(':').nth(2).and_then(|g| g.parse().ok()));
    std::os::unix::fs::chown(&paths.2, Some(0), shadow_gid).context("cannot chown the hosts' shadow file")?;
    Ok(paths)
}

/// Fails for addresses outside 127/8 or in a range other code uses.
fn check_loopback(start: Ipv4Addr, end: Ipv4Addr) -> Result<()> {
    if start.octets()[0] != 127 || end.octets()[0] != 127 || start > end {
        bail!("address range {start}-{end} is not within the loopback network 127.0.0.0/8");
    }
    for (low, high, who) in RESERVED {
        if start <= high && low <= end {
            bail!("address range {start}-{end} overlaps {low}-{high}, used by {who}; choose another range");
        }
    }
    Ok(())
}

/// `n` addresses of `range` that nothing listens on at `port`, from /24
/// blocks this process locks (`/run/drover-testkit/addr-127.0.X.0.lock`)
/// so that concurrent fleets, in any process, never share one.
fn allocate(
    range: &RangeInclusive<Ipv4Addr>,
    port: u16,
    n: usize,
    taken: &HashSet<Ipv4Addr>,
) -> Result<(Vec<Ipv4Addr>, Vec<Flock<File>>)> {
    check_loopback(*range.start(), *range.end())?;
    let (start, end) = (u32::from(*range.start()), u32::from(*range.end()));
    let mut found = Vec::with_capacity(n);
    let mut locks = Vec::new();
    let mut busy = 0;
    for block in (start >> 8)..=(end >> 8) {
        if found.len() == n {
            break;
        }
        let Some(lock) = sys::try_lock(&format!("addr-{}.lock", Ipv4Addr::from(block << 8)))? else {
            busy += 1;
            continue;
        };
        let before = found.len();
        for a in start.max(block << 8)..=end.min((block << 8) | 255) {
            let address = Ipv4Addr::from(a);
            let last = address.octets()[3];
            if last == 0 || last == 255 || taken.contains(&address) {
                continue;
            }
            if TcpListener::bind((address, port)).is_err() {
                continue;
            }
            found.push(address);
            if found.len() == n {
                break;
            }
        }
        if found.len() > before {
            locks.push(lock);
        }
    }
    if found.len() < n {
        bail!(
            "only {} of the {n} addresses needed are free in {}-{} on port {port} \
             ({busy} /24 block(s) held by other fleets); choose a larger range",
            found.len(),
            range.start(),
            range.end()
        );
    }
    Ok((found, locks))
}
