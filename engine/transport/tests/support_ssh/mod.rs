//! A real OpenSSH server per test, on loopback.
//!
//! Each [`Sshd`] has a temporary directory with a fresh ed25519 host key,
//! a client key in `authorized_keys`, a known_hosts file recording the host
//! key, and an sshd_config that confines sshd to that directory (its pid
//! file, keys and log). sshd runs in the foreground as a child of the test
//! and is killed, with everything it started, when the [`Sshd`] is dropped,
//! panics included.

#![allow(dead_code)] // Not every test binary uses every helper.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drover_transport::ssh::{HostKeyPolicy, SshTarget};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// Where Debian installs the daemon.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A running (or stopped, between [`Sshd::stop`] and [`Sshd::start`])
/// OpenSSH server.
#[derive(Debug)]
pub struct Sshd {
    /// Holds keys, config, log and known_hosts.
    pub dir: TempDir,
    /// The loopback address it listens on.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// A client key that `authorized_keys` accepts.
    pub client_key: PathBuf,
    /// known_hosts with the server's current host key.
    pub known_hosts: PathBuf,
    /// The user we run as, who logs in.
    pub user: String,
    child: Option<Child>,
    starts: usize,
}

impl Sshd {
    /// Generates keys and config and starts the server.
    pub fn start_new() -> Result<Sshd> {
        if !Path::new(SSHD).exists() {
            bail!("{SSHD} is missing: install openssh-server (scripts/debian-packages.sh does)");
        }
        // Privilege separation needs this directory; Debian's package makes
        // it at boot through systemd, which a container does not run.
        fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
            .trim()
            .to_string();
        let mut sshd = Sshd {
            user,
            client_key: dir.path().join("client_ed25519"),
            known_hosts: dir.path().join("known_hosts"),
            dir,
            address: "127.0.0.1".into(),
            port,
            child: None,
            starts: 0,
        };
        keygen(&sshd.host_key())?;
        keygen(&sshd.client_key)?;
        fs::copy(
            sshd.client_key.with_extension("pub"),
            sshd.dir.path().join("authorized_keys"),
        )?;
        sshd.write_known_hosts()?;
        let d = sshd.dir.path().display();
        let config = format!(
            "ListenAddress {address}:{port}\n\
             HostKey {d}/host_ed25519\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\n\
             UsePAM no\n\
             PermitRootLogin prohibit-password\n\
             StrictModes no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             AllowUsers {user}\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n\
             LogLevel INFO\n",
            address = sshd.address,
            user = sshd.user,
        );
        fs::write(sshd.dir.path().join("sshd_config"), config)?;
        sshd.start()?;
        Ok(sshd)
    }

    fn host_key(&self) -> PathBuf {
        self.dir.path().join("host_ed25519")
    }

    /// `[address]:port`, as known_hosts names the server.
    pub fn known_as(&self) -> String {
        format!("[{}]:{}", self.address, self.port)
    }

    /// The server's host key line, `type base64`.
    pub fn host_key_line(&self) -> Result<String> {
        let public = fs::read_to_string(self.host_key().with_extension("pub"))?;
        let mut fields = public.split_whitespace();
        let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
            bail!("unexpected public key file: {public}");
        };
        Ok(format!("{kind} {key}"))
    }

    /// (Re)writes known_hosts with the current host key.
    pub fn write_known_hosts(&self) -> Result<()> {
        fs::write(
            &self.known_hosts,
            format!("{} {}\n", self.known_as(), self.host_key_line()?),
        )?;
        Ok(())
    }

    /// Replaces the host key (as a reinstall would); takes effect at the
    /// next start.
    pub fn new_host_key(&self) -> Result<()> {
        fs::remove_file(self.host_key())?;
        fs::remove_file(self.host_key().with_extension("pub"))?;
        keygen(&self.host_key())
    }

    /// The target for this server: its client key, strict host key checks.
    pub fn target(&self, host: &str) -> SshTarget {
        SshTarget {
            port: self.port,
            user: self.user.clone(),
            key_file: Some(self.client_key.clone()),
            use_agent: false,
            host_key_policy: HostKeyPolicy::Verify,
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(5),
            ..SshTarget::new(host, self.address.clone(), self.known_hosts.clone())
        }
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("sshd.{start}.log"))
    }

    /// Starts sshd and waits until it listens.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("sshd is already running");
        }
        self.starts += 1;
        let log_path = self.log_path(self.starts);
        let log = fs::File::create(&log_path)?;
        let config = self.dir.path().join("sshd_config");
        let mut command = if login_shell_can_be_replaced() {
            // sshd runs every command through the user's login shell, and
            // Debian's bash reads ~/.bashrc for commands from sshd: whatever
            // the machine's .bashrc does (here: `pyenv init`, which can
            // wait a minute on a lock) would be timed instead of the
            // transport. So sshd gets a private view of /etc/passwd in
            // which our user's shell is /bin/sh (dash reads no startup
            // file for `sh -c`). Nothing outside this process changes.
            let passwd = self.dir.path().join("passwd");
            fs::write(&passwd, passwd_with_sh(&fs::read_to_string("/etc/passwd")?, &self.user))?;
            let mut command = Command::new("unshare");
            command
                .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
                .arg("mount --bind \"$1\" /etc/passwd && exec \"$2\" -D -e -f \"$3\"")
                .arg("sshd-in-namespace")
                .arg(&passwd)
                .arg(SSHD)
                .arg(&config);
            command
        } else {
            let mut command = Command::new(SSHD);
            command.arg("-D").arg("-e").arg("-f").arg(&config);
            command
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting sshd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let listening = format!("Server listening on {} port {}", self.address, self.port);
        loop {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains(&listening) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("sshd exited ({status}) before listening:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("sshd did not listen within 10 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills sshd and everything it started (sessions and the commands run
    /// in them).
    pub fn stop(&mut self) {
        self.kill_tree(|_| true);
    }

    /// Kills sshd's own processes only (the listener and the per-connection
    /// ones), as a crash or restart of sshd would: the commands they ran
    /// stay, orphaned.
    pub fn kill_daemon_only(&mut self) {
        self.kill_tree(|pid| comm(pid).is_some_and(|c| c == "sshd"));
    }

    fn kill_tree(&mut self, select: impl Fn(i32) -> bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let root = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let mut victims: Vec<i32> = descendants(root).into_iter().filter(|&p| select(p)).collect();
        victims.insert(0, root);
        for pid in victims {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = child.wait();
    }

    /// How many logins every start of this server has logged.
    pub fn logins(&self) -> usize {
        (1..=self.starts)
            .map(|n| {
                fs::read_to_string(self.log_path(n))
                    .unwrap_or_default()
                    .matches("Accepted publickey")
                    .count()
            })
            .sum()
    }

    /// Established TCP connections to the server, from /proc/net/tcp (the
    /// server side of each: local port = ours, state 01).
    pub fn connections(&self) -> usize {
        let port = format!(":{:04X}", self.port);
        fs::read_to_string("/proc/net/tcp")
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                matches!(fields.as_slice(), [_, local, _, "01", ..] if local.ends_with(&port))
            })
            .count()
    }

    /// Every start's log, for failure messages.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether sshd can be given a private /etc/passwd: a mount namespace
/// needs root (CAP_SYS_ADMIN); without it sshd runs as it is.
fn login_shell_can_be_replaced() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "/bin/true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// `/etc/passwd` with `user`'s login shell set to /bin/sh.
fn passwd_with_sh(passwd: &str, user: &str) -> String {
    passwd
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [name, rest @ .., _shell] if *name == user && rest.len() == 5 => {
                    format!("{name}:{}:/bin/sh\n", rest.join(":"))
                }
                _ => format!("{line}\n"),
            }
        })
        .collect()
}

/// Generates an unencrypted ed25519 key pair at `path` and `path.pub`.
pub fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "drover-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen (openssh-client)")?;
    if !out.status.success() {
        bail!("ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A loopback port nothing listens on (at the time of asking).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Appends `text` to `path`.
pub fn append(path: &Path, text: &str) -> Result<()> {
    let mut file = fs::OpenOptions::new().append(true).create(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// `(ppid, state, comm)` of `pid` from /proc, `None` once it is gone.
fn stat(pid: i32) -> Option<(i32, char, String)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, state, comm))
}

fn comm(pid: i32) -> Option<String> {
    stat(pid).map(|(_, _, comm)| comm)
}

/// Whether `pid` is a live process (zombies are dead: they only wait to be
/// reaped, possibly by a slow init).
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(_, state, _)| state != 'Z' && state != 'X')
}

/// Every process below `root`, parents before children.
fn descendants(root: i32) -> Vec<i32> {
    let mut all = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok())
                && let Some((ppid, _, _)) = stat(pid)
            {
                all.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut index = 0;
    while let Some(&parent) = found.get(index) {
        for &(pid, ppid) in &all {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
            }
        }
        index += 1;
    }
    found.remove(0);
    found
}
