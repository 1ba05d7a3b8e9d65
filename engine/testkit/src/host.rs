//! One host: an sshd that is PID 1 of its own PID namespace, with a mount
//! and UTS namespace of its own (and optionally a network namespace).
//!
//! A running host is one process, the test's own child:
//!
//! ```text
//! test process
//!  └─ sshd -D -f <dir>/sshd_config -E <dir>/sshd.log   (PID 1 of the host)
//!      └─ sessions…
//! ```
//!
//! The kit's spawner thread unshares a PID namespace for its next child and
//! forks; in the child (`pre_exec`, system calls only, no process per step)
//! the host enters its network namespace if it has one, unshares a mount
//! and a UTS namespace, makes every mount private (nothing leaks back to
//! the machine), bind-mounts its `/etc/passwd`, `/etc/group`, `/etc/shadow`,
//! `/etc/hosts`, `/etc/sudoers`, `/home` and `/tmp`, mounts a `/proc` that
//! shows its own processes only, sets its hostname and asks for SIGKILL
//! when the test process dies; then it becomes sshd. When sshd dies the
//! kernel kills every other process of the host, and the mounts vanish with
//! the namespace.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::Signal;

use crate::fleet::{Shared, Sudo};
use crate::keys::Ed25519Key;
use crate::known_hosts;
use crate::sys;

/// How long a host may take to stop before it is killed (SIGKILL), and
/// again before that is an error.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A real SSH host of a [`TestFleet`](crate::TestFleet).
///
/// Everything it has lives in its state directory ([`Host::dir`]):
/// `sshd_config`, `ssh_host_ed25519_key{,.pub}`, `sshd.log`, `etc/hosts`,
/// `etc/sudoers`, `home/<user>/` (the users' homes, `/home` on the host)
/// and `tmp/` (`/tmp` on the host, unless the fleet's state is itself under
/// `/tmp`).
#[derive(Debug)]
pub struct Host {
    name: String,
    address: Ipv4Addr,
    port: u16,
    dir: PathBuf,
    netns: Option<String>,
    sudo: Sudo,
    shared: Arc<Shared>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    key: Ed25519Key,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    /// The host's sshd (its PID 1), our child: unreaped, its pid cannot be
    /// recycled, so signalling it never hits another process.
    sshd: Child,
}

impl Host {
    pub(crate) fn new(name: String, address: Ipv4Addr, netns: Option<String>, sudo: Sudo, shared: Arc<Shared>) -> Host {
        let key = Ed25519Key::generate(&format!("root@{name}"));
        Host {
            dir: shared.dir.join("hosts").join(&name),
            port: shared.port,
            name,
            address,
            netns,
            sudo,
            shared,
            state: Mutex::new(State { key, running: None }),
        }
    }

    /// Its hostname (what `hostname` prints on it); also the name of its
    /// state directory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address its sshd listens on.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The port its sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Address and port.
    pub fn socket_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.address, self.port)
    }

    /// The name known_hosts files know it by: `address`, or
    /// `[address]:port` when the port is not 22.
    pub fn known_hosts_pattern(&self) -> String {
        known_hosts::host_pattern(self.address, self.port)
    }

    /// The login user (the fleet's non-root user).
    pub fn user(&self) -> &str {
        &self.shared.users[0].name
    }

    /// `user@address`, the ssh destination (with `-p` [`Host::port`]).
    pub fn destination(&self) -> String {
        format!("{}@{}", self.user(), self.address)
    }

    /// The network namespace it runs in (`ip netns` name), if not the
    /// machine's.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The sudo rights of the login user on this host.
    pub fn sudo(&self) -> &Sudo {
        &self.sudo
    }

    /// Its state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its sshd_config.
    pub fn sshd_config(&self) -> PathBuf {
        self.dir.join("sshd_config")
    }

    /// Its sshd's log (LogLevel INFO; every start appends).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    /// The log's text so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Its private host key file.
    pub fn host_key_path(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }

    /// Its current public host key, `ssh-ed25519 AAAA…` (no comment).
    pub fn host_key(&self) -> String {
        self.lock().key.public_key().to_string()
    }

    /// The login user's home as this machine sees it (`/home/<user>` on
    /// the host).
    pub fn home(&self) -> PathBuf {
        self.home_of(self.user())
    }

    /// `user`'s home as this machine sees it.
    pub fn home_of(&self, user: &str) -> PathBuf {
        self.dir.join("home").join(user)
    }

    /// Where the host keeps its own copy of the private directory `dir`.
    fn private_path(&self, dir: &Path) -> PathBuf {
        self.dir.join("private").join(dir.strip_prefix("/").unwrap_or(dir))
    }

    /// Where a path of the host is on this machine: `/home/…`, `/tmp/…`
    /// and the private directories are the host's own (under
    /// [`Host::dir`]); anything else is shared with the machine and
    /// returned as it is. For reading what a test's script wrote on the
    /// host.
    pub fn path(&self, on_host: impl AsRef<Path>) -> PathBuf {
        let on_host = on_host.as_ref();
        for d in &self.shared.private_dirs {
            if let Ok(rest) = on_host.strip_prefix(d) {
                return self.private_path(d).join(rest);
            }
        }
        if let Ok(rest) = on_host.strip_prefix("/home") {
            return self.dir.join("home").join(rest);
        }
        if self.shared.private_tmp
            && let Ok(rest) = on_host.strip_prefix("/tmp")
        {
            return self.dir.join("tmp").join(rest);
        }
        on_host.to_path_buf()
    }

    /// The pid of its sshd, PID 1 of the host, as this machine sees it;
    /// `None` when stopped.
    pub fn pid(&self) -> Option<u32> {
        let mut state = self.lock();
        let running = state.running.as_mut()?;
        match running.sshd.try_wait() {
            Ok(None) => Some(running.sshd.id()),
            _ => None,
        }
    }

    /// Whether its sshd runs.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Every process of the host (its PID namespace), as this machine's
    /// pids; empty when stopped.
    pub fn processes(&self) -> Vec<u32> {
        self.pid()
            .and_then(sys::pid_namespace)
            .map(|ns| sys::processes_in(&ns))
            .unwrap_or_default()
    }

    /// Stops the host as a shutdown would: SIGTERM to its sshd, SIGKILL
    /// after 5 s; every process of the host dies with it. State, key and
    /// files stay; stopping a stopped host does nothing.
    pub fn stop(&self) -> Result<()> {
        self.send_halt(Signal::SIGTERM)?;
        self.reap()
    }

    /// Kills the host as a power cut would: SIGKILL to its PID 1.
    pub fn kill(&self) -> Result<()> {
        self.send_halt(Signal::SIGKILL)?;
        self.reap()
    }

    /// Starts a stopped host again with the key and state it has; returns
    /// once its sshd listens. Starting a running host does nothing.
    pub fn start(&self) -> Result<()> {
        if self.lock().running.is_some() {
            if self.is_running() {
                return Ok(());
            }
            // Died by itself: collect it first.
            self.reap()?;
        }
        self.write_config()?;
        self.spawn()?;
        wait_ready(&[self], Duration::from_secs(10))
    }

    /// Stops and starts the host.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.start()
    }

    /// Replaces the host key, as a reinstall would, and restarts the host
    /// if it runs; returns the new public key (`ssh-ed25519 AAAA…`). The
    /// fleet's known_hosts files are not touched (an operator's are not
    /// either): they now hold a stale key until
    /// [`TestFleet::write_known_hosts`](crate::TestFleet::write_known_hosts)
    /// writes them again.
    pub fn rotate_host_key(&self) -> Result<String> {
        let running = self.lock().running.is_some();
        if running {
            self.stop()?;
        }
        let key = Ed25519Key::generate(&format!("root@{}", self.name));
        key.write(&self.host_key_path())
            .with_context(|| format!("host {}: cannot write its new host key", self.name))?;
        let public = key.public_key().to_string();
        self.lock().key = key;
        if running {
            self.start()?;
        }
        Ok(public)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the host's state directory: keys, config, /etc files, homes.
    pub(crate) fn prepare(&self) -> Result<()> {
        let host = &self.name;
        let etc = self.dir.join("etc");
        sys::mkdir(&etc, 0o755)?;
        sys::mkdir(&self.dir.join("tmp"), 0o1777)?;
        for d in &self.shared.private_dirs {
            std::fs::create_dir_all(self.private_path(d))?;
        }
        let home = self.dir.join("home");
        sys::mkdir(&home, 0o755)?;
        for user in &self.shared.users {
            let dir = home.join(&user.name);
            let ssh = dir.join(".ssh");
            sys::mkdir(&ssh, 0o700)?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o750))
                .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
            let keys = ssh.join("authorized_keys");
            sys::write_file(&keys, format!("{}\n", self.shared.client_public).as_bytes(), 0o600)?;
            for path in [&dir, &ssh, &keys] {
                std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("cannot give {} to uid {}", path.display(), user.uid))?;
            }
        }
        self.lock().key.write(&self.host_key_path())?;
        let hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{host}\n",
            self.address
        );
        sys::write_file(&etc.join("hosts"), hosts.as_bytes(), 0o644)?;
        sys::write_file(&etc.join("sudoers"), self.sudoers().as_bytes(), 0o440)?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.log_path())
            .with_context(|| format!("cannot create {}", self.log_path().display()))?;
        self.write_config()
    }

    /// The host's sudoers: Debian's defaults, root, and the rules of this
    /// host's login user and of the extra users.
    fn sudoers(&self) -> String {
        let mut text = format!(
            "# drover-testkit: sudo rights on host {}\n\
             Defaults\tenv_reset\n\
             Defaults\tsecure_path=\"{}\"\n\
             root\tALL=(ALL:ALL) ALL\n",
            self.name,
            sys::PATH
        );
        let users = &self.shared.users;
        for (user, sudo) in
            std::iter::once((&users[0].name, &self.sudo)).chain(users[1..].iter().map(|u| (&u.name, &u.sudo)))
        {
            if let Some(rule) = sudo.rule(user) {
                text.push_str(&rule);
                text.push('\n');
            }
        }
        text
    }

    fn write_config(&self) -> Result<()> {
        let shared = &self.shared;
        let mut config = format!(
            "# drover-testkit host {name}\n\
             ListenAddress {address}:{port}\n\
             HostKey {key}\n\
             PidFile none\n\
             UsePAM no\n\
             PermitRootLogin no\n\
             PubkeyAuthentication yes\n\
             AuthenticationMethods publickey\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             HostbasedAuthentication no\n\
             StrictModes yes\n\
             PrintMotd no\n\
             X11Forwarding no\n\
             Subsystem sftp {sftp}\n\
             SyslogFacility AUTH\n\
             LogLevel INFO\n",
            name = self.name,
            address = self.address,
            port = self.port,
            key = self.host_key_path().display(),
            sftp = shared.sftp,
        );
        if let Some(n) = shared.max_sessions {
            config.push_str(&format!("MaxSessions {n}\n"));
        }
        for option in &shared.sshd_options {
            config.push_str(option);
            config.push('\n');
        }
        sys::write_file(&self.sshd_config(), config.as_bytes(), 0o600)
    }

    /// Starts the host's sshd in its namespaces (see the module documentation);
    /// does not wait for it.
    pub(crate) fn spawn(&self) -> Result<()> {
        let shared = &self.shared;
        let host = &self.name;
        let mut binds: Vec<(PathBuf, &str)> = vec![
            (shared.passwd.clone(), "/etc/passwd"),
            (shared.group.clone(), "/etc/group"),
            (shared.shadow.clone(), "/etc/shadow"),
            (self.dir.join("etc/hosts"), "/etc/hosts"),
            (self.dir.join("home"), "/home"),
        ];
        if shared.sudoers {
            binds.push((self.dir.join("etc/sudoers"), "/etc/sudoers"));
        }
        if shared.private_tmp {
            binds.push((self.dir.join("tmp"), "/tmp"));
        }
        let private: Vec<(PathBuf, String)> = shared
            .private_dirs
            .iter()
            .map(|d| (self.private_path(d), d.display().to_string()))
            .collect();
        for (source, target) in &private {
            binds.push((source.clone(), target.as_str()));
        }
        let binds: Vec<(CString, CString)> = binds
            .into_iter()
            .map(|(source, target)| {
                Ok((
                    CString::new(source.as_os_str().as_bytes())?,
                    CString::new(target.as_bytes())?,
                ))
            })
            .collect::<Result<_, std::ffi::NulError>>()
            .with_context(|| format!("host {host}: a path contains a NUL byte"))?;
        let netns = match &self.netns {
            Some(ns) => {
                let path = Path::new("/run/netns").join(ns);
                Some(File::open(&path).with_context(|| format!("host {host}: cannot open {}", path.display()))?)
            }
            None => None,
        };
        let hostname = OsString::from(host);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.log_path())
            .with_context(|| format!("cannot open {}", self.log_path().display()))?;

        let mut command = Command::new(&shared.sshd);
        command
            .arg("-D")
            .arg("-f")
            .arg(self.sshd_config())
            .arg("-E")
            .arg(self.log_path())
            .env_clear()
            .env("PATH", sys::PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: between fork and exec this runs system calls only (setns,
        // unshare, mount, sethostname) on data prepared beforehand; it
        // allocates nothing and takes no lock. The child is already PID 1
        // of its new PID namespace (see sys::spawn_pid1), so the /proc it
        // mounts shows that namespace.
        unsafe {
            command.pre_exec(move || {
                if let Some(ns) = &netns {
                    setns(ns, CloneFlags::CLONE_NEWNET)?;
                }
                unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)?;
                mount(
                    None::<&CStr>,
                    c"/",
                    None::<&CStr>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&CStr>,
                )?;
                for (source, target) in &binds {
                    mount(
                        Some(source.as_c_str()),
                        target.as_c_str(),
                        None::<&CStr>,
                        MsFlags::MS_BIND,
                        None::<&CStr>,
                    )?;
                }
                mount(
                    Some(c"proc"),
                    c"/proc",
                    Some(c"proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&CStr>,
                )?;
                nix::unistd::sethostname(&hostname)?;
                Ok(())
            });
        }
        let sshd = sys::spawn_pid1(command)
            .with_context(|| format!("host {host}: cannot start {} in its namespaces", shared.sshd.display()))?;
        self.lock().running = Some(Running { sshd });
        Ok(())
    }

    /// The host's sshd pid while it runs; an error (with the log's end)
    /// when it died.
    fn poll_sshd(&self) -> Result<u32> {
        let mut state = self.lock();
        let Some(running) = state.running.as_mut() else {
            bail!("host {} is not running", self.name);
        };
        match running.sshd.try_wait() {
            Ok(Some(status)) => {
                state.running = None;
                Err(self.start_error(&format!("sshd exited ({status})")))
            }
            Ok(None) | Err(_) => Ok(running.sshd.id()),
        }
    }

    fn start_error(&self, what: &str) -> anyhow::Error {
        anyhow!(
            "host {} ({}:{}): {what}; end of {}:\n{}",
            self.name,
            self.address,
            self.port,
            self.log_path().display(),
            sys::tail(&self.log_path(), 15)
        )
    }

    /// Sends `signal` to the host's PID 1; does not wait.
    pub(crate) fn send_halt(&self, signal: Signal) -> Result<()> {
        match self.lock().running.as_ref() {
            Some(running) => sys::signal(running.sshd.id(), signal),
            None => Ok(()),
        }
    }

    /// Waits until the host's PID 1 is gone (SIGKILL after
    /// [`STOP_TIMEOUT`]) and collects it. When PID 1 of a namespace has
    /// exited, so has every other process in it.
    pub(crate) fn reap(&self) -> Result<()> {
        let mut state = self.lock();
        let Some(mut running) = state.running.take() else {
            return Ok(());
        };
        if sys::wait_timeout(&mut running.sshd, STOP_TIMEOUT) {
            return Ok(());
        }
        sys::signal(running.sshd.id(), Signal::SIGKILL)?;
        if sys::wait_timeout(&mut running.sshd, STOP_TIMEOUT) {
            return Ok(());
        }
        let pid = running.sshd.id();
        state.running = Some(running);
        bail!(
            "host {}: sshd (pid {pid}) still runs {} s after SIGKILL",
            self.name,
            STOP_TIMEOUT.as_secs()
        )
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("drover-testkit: {e:#}");
        }
    }
}

/// Waits until every host in `hosts` listens (its address and port in the
/// LISTEN state of its network namespace's `/proc/<pid>/net/tcp`), one of
/// them died, or `timeout` passed.
pub(crate) fn wait_ready(hosts: &[&Host], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&Host> = hosts.to_vec();
    loop {
        // One read of the socket table per network namespace and round.
        let mut tables: Vec<(Option<&str>, sys::Listening)> = Vec::new();
        let mut still = Vec::with_capacity(pending.len());
        for host in pending {
            let pid = host.poll_sshd()?;
            let ns = host.netns();
            let index = match tables.iter().position(|(n, _)| *n == ns) {
                Some(index) => index,
                None => {
                    tables.push((ns, sys::listening(pid)));
                    tables.len() - 1
                }
            };
            if !tables[index].1.contains(&(host.address, host.port)) {
                still.push(host);
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let first = pending[0];
            return Err(first.start_error(&format!(
                "sshd did not listen within {:.1} s ({} host(s) not ready)",
                timeout.as_secs_f64(),
                pending.len()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
