//! Throwaway PostgreSQL clusters for tests of drover's PostgreSQL store,
//! and a TCP [`Proxy`] to cut an orchestrator off its database.
//!
//! A [`Cluster`] is a `postgres` process started by the test itself from
//! the newest `/usr/lib/postgresql/*/bin`, on a free loopback port, its
//! data and socket in a temporary directory of its own; it trusts every
//! local connection as user `drover` (database `postgres`). PostgreSQL
//! refuses to run as root: when the test runs as root, the directory is
//! given to `nobody` and `initdb`, `postgres` and `pg_ctl` run as
//! `nobody`. Dropping the cluster (also while a panic unwinds) stops it
//! (`pg_ctl stop -m immediate`, then SIGKILL if needed) and removes its
//! directory; a test process killed outright takes its postgres with it
//! (`PR_SET_PDEATHSIG`).
//!
//! Needs the Debian package `postgresql` (any version; 15 is what the
//! images have). [`available`] says whether it is there, so a test can
//! say why it cannot run.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sys;

/// Where Debian installs PostgreSQL's versions.
const PG_ROOT: &str = "/usr/lib/postgresql";
/// How long a cluster may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The user the cluster trusts.
pub const USER: &str = "drover";

/// The `bin` directory of the newest PostgreSQL installed, if any.
fn bin_dir() -> Option<PathBuf> {
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in std::fs::read_dir(PG_ROOT).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(version) = name.split('.').map(str::parse::<u32>).collect::<Result<Vec<_>, _>>() else {
            continue;
        };
        let bin = entry.path().join("bin");
        if !bin.join("initdb").is_file() || !bin.join("postgres").is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

/// Whether PostgreSQL's server programs are installed (`initdb`,
/// `postgres`, `pg_ctl`, `pg_isready`, `psql`).
pub fn available() -> bool {
    bin_dir().is_some_and(|bin| {
        ["initdb", "postgres", "pg_ctl", "pg_isready", "psql"]
            .iter()
            .all(|p| bin.join(p).is_file())
    })
}

/// Who runs the server: `nobody` when the test is root.
#[derive(Debug, Clone, Copy)]
struct Runner {
    ids: Option<(u32, u32)>,
}

impl Runner {
    fn new() -> Result<Runner> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Runner { ids: None });
        }
        let user = nix::unistd::User::from_name("nobody")
            .context("cannot look up the user nobody")?
            .context("there is no user nobody to run PostgreSQL as (it refuses root)")?;
        let gid = nix::unistd::Group::from_name("nogroup")
            .ok()
            .flatten()
            .map_or(user.gid, |g| g.gid);
        Ok(Runner {
            ids: Some((user.uid.as_raw(), gid.as_raw())),
        })
    }

    /// `program` of `bin`, run as the runner, in `dir`, with a clean
    /// environment.
    fn command(&self, bin: &Path, program: &str, dir: &Path) -> Command {
        let mut cmd = Command::new(bin.join(program));
        cmd.env_clear()
            .env("PATH", sys::PATH)
            .env("LC_ALL", "C")
            .env("HOME", dir)
            .current_dir(dir)
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.ids {
            // std drops the supplementary groups when root sets a uid.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }
}

/// A running throwaway PostgreSQL cluster. See the [module](self).
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: Option<tempfile::TempDir>,
    port: u16,
    runner: Runner,
    postgres: Option<Child>,
}

impl Cluster {
    /// Start a cluster with fsync on.
    pub fn start() -> Result<Cluster> {
        Cluster::start_with(false)
    }

    /// Start a cluster; `fast` turns fsync, synchronous commit and full
    /// page writes off (benchmarks that measure drover, not the disk).
    pub fn start_with(fast: bool) -> Result<Cluster> {
        let bin = bin_dir().with_context(|| {
            format!("PostgreSQL is not installed (no {PG_ROOT}/*/bin/initdb): install the Debian package postgresql")
        })?;
        let runner = Runner::new()?;
        let base = if Path::new("/tmp").is_dir() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("drover-pg-")
            .tempdir_in(&base)
            .with_context(|| format!("cannot make a directory in {}", base.display()))?;
        if let Some((uid, gid)) = runner.ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("cannot give {} to nobody", dir.path().display()))?;
        }
        let data = dir.path().join("data");
        sys::run(runner.command(&bin, "initdb", dir.path()).arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            USER,
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]))
        .context("initdb failed")?;
        let mut cluster = Cluster {
            bin,
            dir: Some(dir),
            port: 0,
            runner,
            postgres: None,
        };
        // A free port may be taken between choosing and binding it: try
        // again with another.
        let mut last = None;
        for _ in 0..5 {
            match cluster.launch(fast) {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/nonexistent"), |d| d.path())
    }

    /// Start `postgres` on a free port and wait until it answers.
    fn launch(&mut self, fast: bool) -> Result<()> {
        let port = free_port()?;
        let dir = self.dir().to_path_buf();
        let log_path = dir.join(format!("postgres-{port}.log"));
        let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let log_err = log.try_clone().context("cannot duplicate the log's descriptor")?;
        let onoff = if fast { "off" } else { "on" };
        let mut cmd = self.runner.command(&self.bin, "postgres", &dir);
        cmd.arg("-D")
            .arg(dir.join("data"))
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"])
            .args(["-c", "shared_buffers=32MB"])
            .args(["-c", &format!("fsync={onoff}")])
            .args(["-c", &format!("synchronous_commit={onoff}")])
            .args(["-c", &format!("full_page_writes={onoff}")])
            .stdout(log)
            .stderr(log_err);
        let mut child = spawn_held(cmd).context("cannot start postgres")?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "postgres exited ({status}) before accepting connections: {}",
                    sys::tail(&log_path, 20)
                );
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .env_clear()
                .env("PATH", sys::PATH)
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    USER,
                    "-d",
                    "postgres",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if ready.is_ok_and(|s| s.success()) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "postgres did not accept connections within {} s: {}",
                    START_TIMEOUT.as_secs(),
                    sys::tail(&log_path, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.port = port;
        self.postgres = Some(child);
        Ok(())
    }

    /// `postgres://drover@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Run `sql` with `psql` (unaligned, tuples only, stop at the first
    /// error); its output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        sys::run(
            Command::new(self.bin.join("psql"))
                .env_clear()
                .env("PATH", sys::PATH)
                .env("PGCONNECT_TIMEOUT", "10")
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    USER,
                    "-d",
                    "postgres",
                ])
                .arg("-c")
                .arg(sql),
        )
    }

    /// Stop the cluster and remove its directory.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let mut result = Ok(());
        if let Some(mut child) = self.postgres.take() {
            let dir = self.dir().to_path_buf();
            let stopped = self
                .runner
                .command(&self.bin, "pg_ctl", &dir)
                .arg("stop")
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-m", "immediate", "-w", "-t", &STOP_TIMEOUT.as_secs().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !stopped.is_ok_and(|s| s.success()) || !sys::wait_timeout(&mut child, STOP_TIMEOUT) {
                let _ = child.kill();
            }
            if let Err(e) = child.wait() {
                result = Err(e).context("cannot wait for postgres");
            }
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                result = result.and(Err(e).with_context(|| format!("cannot remove {}", path.display())));
            }
        }
        result
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A free TCP port on 127.0.0.1 (free now: bind it soon).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr().context("cannot read a bound address")?.port())
}

type Job = Box<dyn FnOnce() + Send>;

/// Spawn `command` from a thread that lives as long as the process, with
/// SIGKILL as its parent-death signal (which fires when the *thread* that
/// forked it ends): the server dies with the test process, even killed
/// outright.
fn spawn_held(mut command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    // SAFETY: prctl is an async-signal-safe system call touching no memory
    // of the parent.
    unsafe {
        command.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from));
    }
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("drover-testkit-pg-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let gone = || io::Error::other("drover-testkit: the PostgreSQL spawner thread is not running");
    let sender = sender.as_ref().ok_or_else(gone)?;
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(command.spawn());
    });
    sender
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

/// A TCP proxy on a free loopback port forwarding every connection to a
/// target: what stands between an orchestrator and its database in
/// partition tests. [`Proxy::cut`] closes every open connection and drops
/// new ones until [`Proxy::restore`]; [`Proxy::stall`] keeps connections
/// open but passes nothing on (a silent partition: packets lost, no reset)
/// until [`Proxy::restore`] delivers what was held. Dropping it stops it.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct ProxyShared {
    target: SocketAddr,
    cut: AtomicBool,
    stalled: AtomicBool,
    stop: AtomicBool,
    next: AtomicU64,
    /// The open connections: (client side, target side).
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
}

impl ProxyShared {
    fn close(&self, id: u64) {
        if let Some((a, b)) = self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    fn close_all(&self) {
        let open: Vec<_> = self.open.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (_, (a, b)) in open {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

impl Proxy {
    /// Start a proxy to `target`.
    pub fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr().context("cannot read a bound address")?;
        let shared = Arc::new(ProxyShared {
            target,
            cut: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("drover-testkit-proxy".into())
            .spawn(move || accept_loop(&listener, &s))
            .context("cannot start the proxy's thread")?;
        Ok(Proxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// Where to connect: `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Close every open connection; drop new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Keep every connection open but pass nothing on, either way, until
    /// [`Proxy::restore`]; new connections are accepted and held alike.
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
    }

    /// Forward again: new connections, and what a stall held.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
        self.shared.stalled.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<ProxyShared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        if shared.cut.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.target, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let streams = (|| {
            Some((
                client.try_clone().ok()?,
                server.try_clone().ok()?,
                client.try_clone().ok()?,
                server.try_clone().ok()?,
            ))
        })();
        let Some((c_read, s_read, c_write, s_write)) = streams else {
            continue;
        };
        let id = shared.next.fetch_add(1, Ordering::SeqCst);
        shared
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (client, server));
        // A cut between the check above and the insert: close it now.
        if shared.cut.load(Ordering::SeqCst) {
            shared.close(id);
            continue;
        }
        for (mut from, mut to) in [(c_read, s_write), (s_read, c_write)] {
            let s = shared.clone();
            let _ = std::thread::Builder::new()
                .name("drover-testkit-proxy-copy".into())
                .spawn(move || {
                    pump(&mut from, &mut to, &s);
                    // One direction ended: the connection is over.
                    s.close(id);
                });
        }
    }
}

/// Copy `from` to `to` until either ends; while the proxy stalls, what
/// was read is held back.
fn pump(from: &mut TcpStream, to: &mut TcpStream, shared: &ProxyShared) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while shared.stalled.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// An echo server on a free port: every connection gets back what it
    /// sends.
    fn echo() -> Result<SocketAddr> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let Ok(mut back) = conn.try_clone() else { return };
                    let mut conn = conn;
                    let _ = io::copy(&mut conn, &mut back);
                });
            }
        });
        Ok(addr)
    }

    fn round_trip(addr: SocketAddr) -> Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    #[test]
    fn a_proxy_forwards_cuts_and_forwards_again() -> Result<()> {
        let proxy = Proxy::start(echo()?)?;
        assert_eq!(round_trip(proxy.addr())?, "ping");
        let mut open = TcpStream::connect(proxy.addr())?;
        open.set_read_timeout(Some(Duration::from_secs(5)))?;
        open.write_all(b"x")?;
        let mut one = [0u8; 1];
        open.read_exact(&mut one)?;
        proxy.cut();
        // The open connection is closed; a new one gets nothing through.
        let mut rest = Vec::new();
        let n = open.read_to_end(&mut rest).unwrap_or(0);
        assert_eq!(n, 0);
        assert!(round_trip(proxy.addr()).is_err());
        proxy.restore();
        assert_eq!(round_trip(proxy.addr())?, "ping");
        Ok(())
    }
}
