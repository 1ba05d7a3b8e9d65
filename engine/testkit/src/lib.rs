//! Real SSH hosts for drover's tests and benchmarks.
//!
//! The hosts are reached the way an operator's are: OpenSSH `sshd`
//! processes that the test starts itself, each with its own hostname,
//! loopback address, port, host key, non-root user and sudo rights, not
//! hosts made by drover's own `local` provider. This crate shares no code
//! with drover's product crates.
//!
//! - [`TestFleet`] (made by [`FleetBuilder`]): N hosts started in parallel.
//!   Each is an sshd that is PID 1 of its own PID namespace, in a mount and
//!   UTS namespace of its own where `/etc/passwd`, `/etc/group`,
//!   `/etc/shadow`, `/etc/hosts`, `/etc/sudoers`, `/home` and `/tmp` are
//!   the host's (bind mounts; the machine's files are untouched). Its login
//!   user (default `fleet`, uid 2001) exists only there. Host keys are made
//!   in-process ([`Ed25519Key`]) and namespaces with system calls, so a
//!   host costs one process (its sshd) and a few files on a tmpfs.
//! - known_hosts files, plain and hashed ([`known_hosts`]); host key
//!   rotation, stop, start and kill of one [`Host`].
//! - [`SshAgent`]: an `ssh-agent` with keys added.
//! - [`BastionTopology`]: targets in a network namespace the test cannot
//!   reach, behind one or more bastions, and [`SshConfig`] files with
//!   `ProxyJump`.
//!
//! Everything needs root and, from Debian, `openssh-server`,
//! `openssh-client`, `iproute2` (bastions) and `sudo` (sudo rights); `make setup` installs them. Without them the calls fail saying
//! what is missing.
//!
//! Nothing outlives the test: dropping a fleet, host set, agent or topology
//! (also while a panic unwinds) kills its processes and removes its
//! namespaces, links and state; a test process killed outright takes its
//! hosts and agents with it (`PR_SET_PDEATHSIG`), and the network leftovers
//! of a killed process are removed when its slot is next used.
//! `scripts/check-no-leftovers.sh` reports anything left.

mod agent;
mod bastion;
mod fleet;
mod host;
mod keys;
pub mod known_hosts;
pub mod postgres;
mod ssh_config;
mod sys;

pub use agent::SshAgent;
pub use bastion::{BastionBuilder, BastionTopology, MAX_HOPS, MAX_TARGETS};
pub use fleet::{
    DEFAULT_ADDRESSES, DEFAULT_PORT, DEFAULT_UID, DEFAULT_USER, FleetBuilder, HostSpec, STATE_PREFIX, Sudo, TestFleet,
    UserSpec, default_state_root,
};
pub use host::Host;
pub use keys::{Ed25519Key, public_path};
pub use known_hosts::KnownHostsStyle;
pub use ssh_config::{SshConfig, SshHostEntry};

/// Checks what every part of the kit needs: root, `sshd`, `ssh`, `ssh-agent`, `ssh-add`, `ip` and `sudo`; the error names the
/// first thing missing and how to get it.
pub fn preflight() -> anyhow::Result<()> {
    sys::require_root()?;
    for (program, package) in [
        ("sshd", "openssh-server"),
        ("ssh", "openssh-client"),
        ("ssh-agent", "openssh-client"),
        ("ssh-add", "openssh-client"),
        ("ip", "iproute2"),
        ("sudo", "sudo"),
    ] {
        sys::program(program, package)?;
    }
    Ok(())
}
