//! Targets behind bastions: network namespaces joined by veth pairs.
//!
//! With `h` hops, `h` bastion namespaces and one target namespace form a
//! chain, each link a veth pair with a /24 of its own from 198.18.0.0/15
//! (RFC 2544's benchmarking range, routed nowhere):
//!
//! ```text
//! machine ──link 0── bastion-1 ──link 1── … bastion-h ──link h── targets
//!  .1            .2  (sshd)   .1      .2      (sshd)  .1     .10, .11, … (sshd each)
//! ```
//!
//! Bastion `k` listens on its end of link `k-1`; targets listen on their
//! addresses of link `h`. A namespace only knows its own links (no default
//! route) and none forwards (`ip_forward` 0), so the machine reaches
//! bastion-1 only, bastion-1 reaches bastion-2 only, and the last bastion
//! the targets. The machine's namespace gets an `unreachable` route for
//! every hidden link, so a direct connection fails at once ("No route to
//! host") instead of leaking out through the default gateway.
//!
//! Names carry a slot number taken with a lock (`/run/drover-testkit/net-N.lock`,
//! released by the kernel when the process dies, however it dies):
//! namespaces `dtk<N>-b<k>` and `dtk<N>-t`, interfaces `dtk<N>l<k>a`/`b`.
//! Whatever a killed process left under a slot is removed when the slot is
//! taken again, and everything is removed on drop.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use nix::fcntl::Flock;
use nix::sched::{CloneFlags, setns};

use crate::fleet::{FleetBuilder, HostSpec, TestFleet};
use crate::host::Host;
use crate::ssh_config::{SshConfig, SshHostEntry};
use crate::sys;

/// Most bastions in a chain.
pub const MAX_HOPS: usize = 3;
/// Most targets behind one topology.
pub const MAX_TARGETS: usize = 240;
/// Concurrent topologies (slots) on one machine.
const SLOTS: u32 = 128;

/// How to make a [`BastionTopology`].
#[derive(Debug, Clone)]
pub struct BastionBuilder {
    hops: usize,
    targets: usize,
    fleet: FleetBuilder,
}

impl Default for BastionBuilder {
    fn default() -> Self {
        BastionBuilder {
            hops: 1,
            targets: 1,
            fleet: FleetBuilder::default(),
        }
    }
}

impl BastionBuilder {
    /// The number of bastions in the chain (1 to [`MAX_HOPS`]; default 1).
    pub fn hops(mut self, hops: usize) -> Self {
        self.hops = hops;
        self
    }

    /// The number of target hosts (1 to [`MAX_TARGETS`]; default 1).
    pub fn targets(mut self, targets: usize) -> Self {
        self.targets = targets;
        self
    }

    /// The settings of every host (port, user, extra users, sudo, sshd
    /// options); its own hosts and addresses are not used.
    pub fn fleet(mut self, fleet: FleetBuilder) -> Self {
        self.fleet = fleet;
        self
    }

    /// Makes the namespaces and links, then the hosts; on error nothing is
    /// left.
    pub fn start(self) -> Result<BastionTopology> {
        sys::require_root()?;
        let ip = sys::program("ip", "iproute2")?;
        if !(1..=MAX_HOPS).contains(&self.hops) {
            bail!("a bastion topology has 1 to {MAX_HOPS} hops, not {}", self.hops);
        }
        if !(1..=MAX_TARGETS).contains(&self.targets) {
            bail!(
                "a bastion topology has 1 to {MAX_TARGETS} targets, not {}",
                self.targets
            );
        }
        let net = Network::create(ip, self.hops, self.targets)?;
        let mut fleet = self.fleet.clone();
        for k in 1..=self.hops {
            fleet =
                fleet.host(HostSpec::new(&format!("bastion-{k}")).in_netns(&net.namespaces[k - 1], net.addr(k - 1, 2)));
        }
        for i in 0..self.targets {
            fleet = fleet
                .host(HostSpec::new(&format!("target-{}", i + 1)).in_netns(&net.namespaces[self.hops], net.target(i)));
        }
        let fleet = fleet.start()?;
        Ok(BastionTopology {
            fleet: Some(fleet),
            hops: self.hops,
            net,
        })
    }
}

/// Target hosts the test cannot reach except through a chain of bastions
/// (see the module documentation). All hosts are one [`TestFleet`]: one
/// client key, one known_hosts with every bastion and target. Dropping it
/// kills the hosts and removes namespaces, links and routes.
#[derive(Debug)]
pub struct BastionTopology {
    // First: the hosts go before their namespaces.
    fleet: Option<TestFleet>,
    hops: usize,
    net: Network,
}

impl BastionTopology {
    /// A builder: one bastion, one target, default hosts.
    pub fn builder() -> BastionBuilder {
        BastionBuilder::default()
    }

    /// Every host: the bastions, then the targets.
    pub fn fleet(&self) -> &TestFleet {
        match &self.fleet {
            Some(fleet) => fleet,
            None => unreachable!("the fleet is only taken on drop"),
        }
    }

    /// The bastions, the one reachable from here first.
    pub fn bastions(&self) -> &[Host] {
        &self.fleet().hosts()[..self.hops]
    }

    /// The targets.
    pub fn targets(&self) -> &[Host] {
        &self.fleet().hosts()[self.hops..]
    }

    /// Target number `index` (from 0). Panics when out of range.
    pub fn target(&self, index: usize) -> &Host {
        &self.targets()[index]
    }

    /// The `-J` argument that reaches the targets:
    /// `fleet@198.18.a.2:port,fleet@198.18.b.2:port`.
    pub fn jump(&self) -> String {
        self.bastions()
            .iter()
            .map(|b| format!("{}:{}", b.destination(), b.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// An ssh_config in which every host is an alias (`bastion-1`,
    /// `target-1`, …): bastion `k` has `ProxyJump bastion-(k-1)`, every
    /// target `ProxyJump bastion-h`, as an operator writes it; `Host *`
    /// has the fleet's key and known_hosts, strict checking, batch mode.
    pub fn ssh_config(&self) -> SshConfig {
        let fleet = self.fleet();
        let mut config = fleet.ssh_config_defaults();
        let mut previous: Option<String> = None;
        for host in fleet.hosts() {
            let mut entry = SshHostEntry::new(host.name(), &host.address().to_string(), fleet.user(), host.port());
            if let Some(jump) = &previous {
                entry = entry.proxy_jump(jump);
            }
            if host.name().starts_with("bastion-") {
                previous = Some(host.name().to_string());
            }
            config.host(entry);
        }
        config
    }

    /// The network namespaces (`ip netns` names): the bastions', then the
    /// targets'.
    pub fn namespaces(&self) -> &[String] {
        &self.net.namespaces
    }

    /// The veth interfaces (both ends of every link).
    pub fn interfaces(&self) -> Vec<String> {
        (0..=self.hops)
            .flat_map(|k| [self.net.link(k, 'a'), self.net.link(k, 'b')])
            .collect()
    }

    /// The /24 networks the machine cannot reach (links 1…h), as
    /// `198.18.x.0/24`.
    pub fn hidden_networks(&self) -> Vec<String> {
        (1..=self.hops).map(|k| format!("{}/24", self.net.addr(k, 0))).collect()
    }
}

impl Drop for BastionTopology {
    fn drop(&mut self) {
        drop(self.fleet.take());
    }
}

/// The namespaces, links and routes of one slot.
#[derive(Debug)]
struct Network {
    ip: std::path::PathBuf,
    slot: u32,
    hops: usize,
    namespaces: Vec<String>,
    _lock: Flock<File>,
}

impl Network {
    fn create(ip: std::path::PathBuf, hops: usize, targets: usize) -> Result<Network> {
        sweep(&ip)?;
        let mut taken = None;
        for slot in 0..SLOTS {
            if let Some(lock) = sys::try_lock(&format!("net-{slot}.lock"))? {
                taken = Some((slot, lock));
                break;
            }
        }
        let Some((slot, lock)) = taken else {
            bail!(
                "all {SLOTS} network slots of drover-testkit are in use (locks in {})",
                sys::LOCK_DIR
            );
        };
        let mut namespaces: Vec<String> = (1..=hops).map(|k| format!("dtk{slot}-b{k}")).collect();
        namespaces.push(format!("dtk{slot}-t"));
        let net = Network {
            ip,
            slot,
            hops,
            namespaces,
            _lock: lock,
        };
        net.clean()?;

        // The machine's side: namespaces, veth pairs (each end in its
        // namespace), link 0's address, unreachable routes to the rest.
        let mut root = String::new();
        for ns in &net.namespaces {
            root.push_str(&format!("netns add {ns}\n"));
        }
        root.push_str(&format!(
            "link add {} type veth peer name {} netns {}\n",
            net.link(0, 'a'),
            net.link(0, 'b'),
            net.namespaces[0]
        ));
        for k in 1..=hops {
            root.push_str(&format!(
                "link add {} netns {} type veth peer name {} netns {}\n",
                net.link(k, 'a'),
                net.namespaces[k - 1],
                net.link(k, 'b'),
                net.namespaces[k]
            ));
        }
        root.push_str(&format!("addr add {}/24 dev {}\n", net.addr(0, 1), net.link(0, 'a')));
        root.push_str(&format!("link set {} up\n", net.link(0, 'a')));
        for k in 1..=hops {
            root.push_str(&format!("route add unreachable {}/24\n", net.addr(k, 0)));
        }
        net.batch(None, &root)?;
        // Each namespace: loopback, its end of the link before it, its end
        // of the link after it (bastions) or the targets' addresses.
        for (k, ns) in net.namespaces.iter().enumerate() {
            let mut script = String::from("link set lo up\n");
            let upstream = net.link(k, 'b');
            if k < hops {
                script.push_str(&format!("addr add {}/24 dev {upstream}\n", net.addr(k, 2)));
                let downstream = net.link(k + 1, 'a');
                script.push_str(&format!("addr add {}/24 dev {downstream}\n", net.addr(k + 1, 1)));
                script.push_str(&format!("link set {downstream} up\n"));
            } else {
                for i in 0..targets {
                    script.push_str(&format!("addr add {}/24 dev {upstream}\n", net.target(i)));
                }
            }
            script.push_str(&format!("link set {upstream} up\n"));
            net.batch(Some(ns), &script)?;
            forwarding_off(ns)?;
        }
        Ok(net)
    }

    /// Interface `end` ('a': upstream side, 'b': downstream) of link `k`.
    fn link(&self, k: usize, end: char) -> String {
        format!("dtk{}l{k}{end}", self.slot)
    }

    /// Host `host` of link `k`'s /24.
    fn addr(&self, k: usize, host: u8) -> Ipv4Addr {
        link_net(self.slot, k, host)
    }

    /// Target `i`'s address.
    fn target(&self, i: usize) -> Ipv4Addr {
        self.addr(self.hops, 10 + u8::try_from(i).unwrap_or(u8::MAX - 10))
    }

    /// Runs `ip [-n ns] -batch -` with `script`.
    fn batch(&self, ns: Option<&str>, script: &str) -> Result<()> {
        let mut command = Command::new(&self.ip);
        if let Some(ns) = ns {
            command.args(["-n", ns]);
        }
        command.args(["-batch", "-"]);
        batch_with(&self.ip, command, script)
    }

    /// Removes whatever this slot has (see [`clean_slot`]).
    fn clean(&self) -> Result<()> {
        clean_slot(&self.ip, self.slot)
    }
}

/// Runs `command` (an `ip … -batch -`) with `script` on its stdin.
fn batch_with(ip: &Path, mut command: Command, script: &str) -> Result<()> {
    use std::io::Write as _;
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", ip.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .context("cannot write to ip -batch")?;
    }
    let out = child.wait_with_output().context("ip -batch")?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}\nscript:\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The /24 of link `k` of slot `slot`: 198.18.0.0/15 cut in /24s, four
/// (links 0 to [`MAX_HOPS`]) a slot.
fn link_net(slot: u32, k: usize, host: u8) -> Ipv4Addr {
    let index = slot * (MAX_HOPS as u32 + 1) + k as u32;
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (index << 8);
    Ipv4Addr::from(base | u32::from(host))
}

/// Removes whatever slot `slot` has: namespaces (their veth ends go with
/// them), the machine's end of link 0, the unreachable routes.
fn clean_slot(ip: &Path, slot: u32) -> Result<()> {
    let prefix = format!("dtk{slot}-");
    let mut script = String::new();
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str()
                && name.starts_with(&prefix)
            {
                script.push_str(&format!("netns del {name}\n"));
            }
        }
    }
    let link = format!("dtk{slot}l0a");
    if Path::new("/sys/class/net").join(&link).exists() {
        script.push_str(&format!("link del {link}\n"));
    }
    let routes = sys::run(Command::new(ip).args(["-4", "route", "show", "type", "unreachable"]))?;
    for k in 1..=MAX_HOPS {
        let net = format!("{}/24", link_net(slot, k, 0));
        if routes
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(net.as_str()))
        {
            script.push_str(&format!("route del unreachable {net}\n"));
        }
    }
    if script.is_empty() {
        return Ok(());
    }
    let mut command = Command::new(ip);
    command.args(["-force", "-batch", "-"]);
    batch_with(ip, command, &script)
}

/// Cleans every slot that has namespaces, links or routes but no live
/// owner (its lock is free): what test processes killed outright left.
fn sweep(ip: &Path) -> Result<()> {
    let mut slots = std::collections::BTreeSet::new();
    let number = |name: &str, after: &str, until: char| -> Option<u32> {
        name.strip_prefix(after)?.split(until).next()?.parse().ok()
    };
    for dir in ["/run/netns", "/sys/class/net"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if let Some(name) = entry.file_name().to_str() {
                    slots.extend(number(name, "dtk", '-').or_else(|| number(name, "dtk", 'l')));
                }
            }
        }
    }
    let routes = sys::run(Command::new(ip).args(["-4", "route", "show", "type", "unreachable"]))?;
    let first = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    for line in routes.lines() {
        if let Some(Ok(net)) = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.strip_suffix("/24"))
            .map(str::parse::<Ipv4Addr>)
            && let Some(offset) = u32::from(net).checked_sub(first)
            && offset < 512 << 8
        {
            slots.insert((offset >> 8) / (MAX_HOPS as u32 + 1));
        }
    }
    for slot in slots.into_iter().filter(|&s| s < SLOTS) {
        if let Some(_lock) = sys::try_lock(&format!("net-{slot}.lock"))? {
            clean_slot(ip, slot)?;
        }
    }
    Ok(())
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Err(e) = self.clean() {
            eprintln!("drover-testkit: removing network slot {}: {e:#}", self.slot);
        }
    }
}

/// `net.ipv4.ip_forward = 0` in namespace `ns` (a new namespace inherits
/// the machine's setting, which may be 1): set from a thread that enters
/// the namespace, as `/proc/sys/net` shows the reader's own namespace.
fn forwarding_off(ns: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(ns);
    let file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<()> {
        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("cannot enter network namespace {ns}"))?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "0\n")
            .with_context(|| format!("cannot turn forwarding off in {ns}"))?;
        let now = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
        if now.trim() != "0" {
            bail!("forwarding is still {} in {ns}", now.trim());
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(anyhow::anyhow!("the thread setting ip_forward panicked")))
}
