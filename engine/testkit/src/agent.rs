//! An ssh-agent of the test's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::fleet::{STATE_PREFIX, default_state_root};
use crate::sys;

/// `ssh-agent -D -a <socket>`, with keys added by `ssh-add`; stopped (and
/// its socket removed) on drop. Point `SSH_AUTH_SOCK` (or `IdentityAgent`)
/// at [`SshAgent::socket`].
///
/// Debian installs ssh-agent set-group-id, and the kernel clears
/// `PR_SET_PDEATHSIG` when such a program starts, so the agent could not
/// die with a test process killed outright. It runs instead under a shell
/// that is PID 1 of a PID namespace of its own and does keep the signal:
/// when the test process dies, the shell is killed, and with it (by the
/// kernel) everything in its namespace.
#[derive(Debug)]
pub struct SshAgent {
    /// The shell holding the agent: PID 1 of the agent's PID namespace.
    holder: Child,
    agent: u32,
    socket: PathBuf,
    ssh_add: PathBuf,
    // Last: removed once the agent is gone.
    _dir: TempDir,
}

impl SshAgent {
    /// An agent without keys.
    pub fn start() -> Result<SshAgent> {
        let agent = sys::program("ssh-agent", "openssh-client")?;
        let ssh_add = sys::program("ssh-add", "openssh-client")?;
        let root = default_state_root();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{STATE_PREFIX}agent-"))
            .tempdir_in(&root)
            .with_context(|| format!("cannot make a directory in {}", root.display()))?;
        sys::claim(dir.path())?;
        sys::sweep(&root, &format!("{STATE_PREFIX}agent-"));
        let socket = dir.path().join("agent.sock");
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg("\"$0\" -D -a \"$1\" & wait")
            .arg(&agent)
            .arg(&socket)
            .env_clear()
            .env("PATH", sys::PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let holder = sys::spawn_pid1(command).with_context(|| format!("cannot start {}", agent.display()))?;
        let mut agent = SshAgent {
            holder,
            agent: 0,
            socket,
            ssh_add,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while agent.agent == 0 || !agent.socket.exists() {
            if agent.agent == 0 {
                agent.agent = sys::children(agent.holder.id()).first().copied().unwrap_or(0);
            }
            if let Ok(Some(status)) = agent.holder.try_wait() {
                bail!("ssh-agent exited ({status}) before making {}", agent.socket.display());
            }
            if Instant::now() > deadline {
                bail!("ssh-agent made no socket {} within 5 s", agent.socket.display());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(agent)
    }

    /// An agent holding the private key at `key`.
    pub fn with_key(key: &Path) -> Result<SshAgent> {
        let agent = SshAgent::start()?;
        agent.add(key)?;
        Ok(agent)
    }

    /// Adds the private key at `key` (`ssh-add key`).
    pub fn add(&self, key: &Path) -> Result<()> {
        sys::run(
            Command::new(&self.ssh_add)
                .arg(key)
                .env_clear()
                .env("PATH", sys::PATH)
                .env("SSH_AUTH_SOCK", &self.socket),
        )
        .map(drop)
        .with_context(|| format!("cannot add {} to the agent", key.display()))
    }

    /// The public keys it holds (`ssh-add -L`), one line each.
    pub fn keys(&self) -> Result<Vec<String>> {
        let out = Command::new(&self.ssh_add)
            .arg("-L")
            .env_clear()
            .env("SSH_AUTH_SOCK", &self.socket)
            .stdin(Stdio::null())
            .output()
            .context("cannot run ssh-add -L")?;
        // Exit status 1 with "The agent has no identities." is an empty list.
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("ssh-"))
            .map(str::to_string)
            .collect())
    }

    /// The agent's socket: the value for `SSH_AUTH_SOCK`.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The agent's pid (as this machine sees it).
    pub fn pid(&self) -> u32 {
        self.agent
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        // SIGTERM to the agent (it removes its socket), which ends the
        // holding shell's `wait`; SIGKILL to the shell, PID 1, otherwise.
        if self.agent != 0 {
            let _ = sys::signal(self.agent, Signal::SIGTERM);
        }
        if !sys::wait_timeout(&mut self.holder, Duration::from_secs(2)) {
            let _ = self.holder.kill();
            let _ = self.holder.wait();
        }
    }
}
