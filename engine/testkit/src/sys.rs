//! Processes, /proc, locks and programs: what the hosts are made with.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `PATH` of everything the kit starts (nothing of the test's environment).
pub(crate) const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the kit's cross-process locks live (address blocks, network slots).
pub(crate) const LOCK_DIR: &str = "/run/drover-testkit";

/// Fails unless this process runs as root, saying why root is needed.
pub(crate) fn require_root() -> Result<()> {
    let uid = nix::unistd::geteuid();
    if !uid.is_root() {
        bail!(
            "drover-testkit needs root (running as uid {uid}): its hosts are sshd processes in \
             namespaces of their own with bind-mounted /etc files; run the tests as root, after \
             `make setup` (which installs what they need)"
        );
    }
    Ok(())
}

/// A program's path, looked up in [`PATH`]; the error names the Debian
/// package that has it and `make setup`.
pub(crate) fn program(name: &str, package: &str) -> Result<PathBuf> {
    for dir in PATH.split(':') {
        let path = Path::new(dir).join(name);
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(path);
        }
    }
    bail!(
        "{name} not found (searched {PATH}): install the Debian package {package} \
         (`make setup` does, through scripts/debian-packages.sh)"
    )
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the kit's spawner thread, which lives as long as the
/// process: children spawned there get `PR_SET_PDEATHSIG`, which fires when
/// the *thread* that forked them ends, so only a thread that never ends
/// gives "the child dies with the test process".
fn on_spawner<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("drover-testkit-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let gone = || io::Error::other("drover-testkit: the spawner thread is not running");
    let sender = sender.as_ref().ok_or_else(gone)?;
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(job());
    });
    sender
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())
}

/// Spawns `command` as PID 1 of a new PID namespace, in a session of its
/// own (no terminal signal of the test reaches it), with SIGKILL as its
/// parent-death signal: it dies with this process, also by SIGKILL where no
/// destructor runs, and the kernel then kills everything in its namespace.
///
/// The spawner thread unshares `CLONE_NEWPID` (which only changes the
/// namespace of the thread's *next* children), spawns, and goes back to its
/// own with `setns`. No `unshare` program (and no process between the test
/// and PID 1) is needed.
pub(crate) fn spawn_pid1(command: Command) -> io::Result<Child> {
    spawn_on_spawner(command)
}

fn spawn_on_spawner(mut command: Command) -> io::Result<Child> {
    // SAFETY: prctl and setsid are async-signal-safe system calls that touch
    // no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            nix::unistd::setsid().map(drop).map_err(io::Error::from)
        });
    }
    on_spawner(move || {
        // This process's own PID namespace, to come back to.
        static OWN: OnceLock<io::Result<File>> = OnceLock::new();
        let own = match OWN.get_or_init(|| File::open("/proc/self/ns/pid")) {
            Ok(file) => file,
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot open /proc/self/ns/pid: {e}"))),
        };
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(io::Error::from)?;
        let spawned = command.spawn();
        if let Err(e) = nix::sched::setns(own, nix::sched::CloneFlags::CLONE_NEWPID) {
            // The next unshare would fail anyway; leave nothing running.
            if let Ok(mut child) = spawned {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot return to this process's PID namespace: {e}"),
            ));
        }
        spawned
    })?
}

/// Runs `command` to completion; the error has its status and stderr.
pub(crate) fn run(command: &mut Command) -> Result<String> {
    let what = format!("{command:?}");
    let out = command
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `(ppid, state)` of `pid`, `None` once it is gone.
pub(crate) fn stat(pid: u32) -> Option<(u32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Whether `pid` runs (zombies do not).
pub(crate) fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, state)| state != 'Z' && state != 'X')
}

/// The children of `pid` (from `/proc/<pid>/task/<pid>/children`).
pub(crate) fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// When `pid` started (clock ticks since boot): with the pid, an identity
/// a recycled pid does not share.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    // Field 22; fields 3.. follow the command's closing parenthesis.
    text.get(close + 1..)?.split_whitespace().nth(19)?.parse().ok()
}

/// The file in a kit directory naming the process that owns it.
const OWNER: &str = "owner";

/// Marks `dir` as this process's: `<dir>/owner` holds its pid and start
/// time, so that [`sweep`] can tell a directory whose owner died.
pub(crate) fn claim(dir: &Path) -> Result<()> {
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    write_file(&dir.join(OWNER), format!("{pid} {start}\n").as_bytes(), 0o644)
}

/// Removes the directories `<root>/<prefix>*` whose owner (see [`claim`])
/// no longer runs: what a test process killed outright (SIGKILL, no
/// destructor) left. A directory without an owner file is being made and
/// is left alone.
pub(crate) fn sweep(root: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(|n| n.starts_with(prefix)) {
            continue;
        }
        let dir = entry.path();
        let Ok(owner) = std::fs::read_to_string(dir.join(OWNER)) else {
            continue;
        };
        let mut fields = owner.split_whitespace().map(|f| f.parse::<u64>().ok());
        let (Some(Some(pid)), Some(Some(start))) = (fields.next(), fields.next()) else {
            continue;
        };
        let alive = u32::try_from(pid).ok().and_then(start_time) == Some(start);
        if !alive {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// The PID namespace of `pid` (`pid:[inode]`).
pub(crate) fn pid_namespace(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Every live process whose PID namespace is `ns`.
pub(crate) fn processes_in(ns: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&pid| pid_namespace(pid).as_deref() == Some(ns) && alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// Sends `signal` to `pid`; a process already gone is not an error.
pub(crate) fn signal(pid: u32, signal: Signal) -> Result<()> {
    let raw = i32::try_from(pid).context("pid out of range")?;
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot send {signal} to pid {pid}")),
    }
}

/// Waits for `child` to exit, up to `timeout`; whether it did.
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Listening TCP sockets, as (address, port).
pub(crate) type Listening = HashSet<(Ipv4Addr, u16)>;

/// The TCP sockets listening in the network namespace of `pid`, as
/// (address, port), from `/proc/<pid>/net/tcp` (which shows that process's
/// namespace).
pub(crate) fn listening(pid: u32) -> Listening {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != "0A" {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            // The kernel prints the address's bytes as a native u32.
            let raw = u32::from_str_radix(addr, 16).ok()?;
            let address = Ipv4Addr::from(raw.to_ne_bytes());
            Some((address, u16::from_str_radix(port, 16).ok()?))
        })
        .collect()
}

/// Creates `dir` (and parents) with `mode`.
pub(crate) fn mkdir(dir: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
}

/// Writes `path` atomically (a temporary file renamed over it) with `mode`.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(contents)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Takes the exclusive lock `name` in [`LOCK_DIR`] if nobody holds it.
/// The kernel releases it when the holder dies, however it dies.
pub(crate) fn try_lock(name: &str) -> Result<Option<Flock<File>>> {
    mkdir(Path::new(LOCK_DIR), 0o755)?;
    let path = Path::new(LOCK_DIR).join(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
