//! The KCL worker: a process of its own that evaluates workflows submitted
//! to `drover serve`, one at a time, confined.
//!
//! Why a process: a submitted workflow is a program. In the server's own
//! process, a deep recursion overflows a stack and aborts the server, a
//! large comprehension takes all of its memory, and the engine's file
//! functions read what the server can read (its token, its environment,
//! other submissions). A worker that dies of it takes nothing with it: the
//! parent ([`crate::pool`]) answers the request with the limit it hit and
//! starts another.
//!
//! Start: the parent runs the drover binary as `drover kcl-worker CONFIG`
//! (CONFIG: a [`WorkerConfig`] as JSON) with a clean environment. The
//! worker:
//!
//! 1. loads the engine (so the libraries are mapped before confinement);
//! 2. limits its address space (`RLIMIT_AS`) and turns off core dumps (an
//!    evaluation's memory is the submitter's data);
//! 3. confines itself with Landlock: read-only on the `drover` schemas and
//!    the server's workflows roots, read-write on its own area, nothing
//!    else (no other worker's area, no state directory, no token file, no
//!    /etc, no /proc); no TCP; no signals to or abstract sockets of
//!    processes outside the sandbox;
//! 4. evaluates a one-line program under those limits, so a limit the
//!    engine cannot live with is found at start, not at the first
//!    submission;
//! 5. says [`Hello::Ready`] (or [`Hello::Failed`], why) and answers
//!    requests until its stdin closes.
//!
//! Each evaluation runs on a thread of its own with a large stack (deep
//! but finite recursion fits; an infinite one overflows it and the process
//! aborts, which the parent reports), in a fresh directory of the area
//! that is the working directory meanwhile; afterwards everything in the
//! area is removed. A submitted source is written into that directory by
//! the worker, under the name the parent chose, so the engine's messages
//! name a file the parent recognises (and shows as `<source>`). A source
//! evaluation adds a second Landlock layer on its thread that leaves out
//! the workflows roots: a source sees the schemas and its own directory
//! only; a path submission (a file under a root, admitted by the server)
//! sees its root, for its relative imports.
//!
//! Protocol: frames of a 4-byte big-endian length and that many bytes of
//! JSON; requests ([`Request`]) on stdin, answers ([`Answer`]) on the
//! stdout the process was started with. File descriptor 1 itself is
//! pointed at /dev/null, so what the engine prints (KCL's `print`) cannot
//! corrupt the stream.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    Scope,
};
use serde::{Deserialize, Serialize};

use crate::diagnostics::{KclDiagnostic, KclLocation};
use crate::engine::{Engine, ExternalPackage, KclError};
use crate::locate::EngineLocation;

/// The name of the thread evaluations run on: the runtime's stack
/// overflow message names it, and the parent looks for that message.
pub(crate) const EVAL_THREAD: &str = "kcl-eval";

/// What the parent tells a worker at start (as JSON, its one argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// The `drover` KCL package (the home's schemas/), read-only.
    pub schemas: PathBuf,
    /// The engine library (kcl_lib's `_kcl_lib*.so`).
    pub library: PathBuf,
    /// The libpython the engine library needs, when one was found.
    pub libpython: Option<PathBuf>,
    /// The worker's own directory: its HOME, its working directory, the
    /// only place it may write. Nothing else may be in it: it is emptied
    /// after every evaluation.
    pub area: PathBuf,
    /// The server's workflows roots, read-only for path submissions.
    pub workflows: Vec<PathBuf>,
    /// The address-space limit (`RLIMIT_AS`), bytes.
    pub memory_bytes: u64,
    /// The evaluation thread's stack, bytes (part of `memory_bytes`).
    pub stack_bytes: u64,
    /// The largest answer an evaluation may give (the evaluated workflow
    /// as JSON), bytes.
    pub max_answer_bytes: u64,
}

/// The worker's first frame.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Hello {
    /// The engine is loaded and the worker confined.
    Ready {
        /// The engine's version.
        version: String,
        /// How far the Landlock policy is enforced, in words.
        confinement: String,
        /// Whether it is enforced fully.
        confined: bool,
    },
    /// The worker cannot evaluate anything; why.
    Failed(String),
}

/// One evaluation asked of a worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Request {
    /// A submitted source, to be written as `name` (a plain file name
    /// ending in `.k`) in the evaluation's directory.
    Source {
        /// The file name the engine's messages will show.
        name: String,
        /// The KCL text.
        text: String,
    },
    /// A file under one of the workflows roots (checked by the server).
    File {
        /// The canonical path.
        path: PathBuf,
    },
}

/// A worker's answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Answer {
    /// The program's `workflow` value as `{"workflow": ...}` (the other
    /// top-level values are left out: the model reads none of them), or
    /// `{}` when it has none.
    Value(serde_json::Value),
    /// The engine rejected the program.
    Kcl(Vec<WireDiagnostic>),
    /// The evaluated workflow is larger than the limit.
    TooLarge {
        /// Its size as JSON.
        bytes: u64,
    },
    /// The engine failed (not the program), or the worker could not set
    /// the evaluation up.
    Failed(String),
}

/// [`KclDiagnostic`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireDiagnostic {
    kind: String,
    location: Option<WireLocation>,
    message: String,
    related: Vec<(WireLocation, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireLocation {
    file: String,
    line: u32,
    column: u32,
}

impl From<KclDiagnostic> for WireDiagnostic {
    fn from(d: KclDiagnostic) -> WireDiagnostic {
        WireDiagnostic {
            kind: d.kind,
            location: d.location.map(WireLocation::from),
            message: d.message,
            related: d.related.into_iter().map(|(l, m)| (l.into(), m)).collect(),
        }
    }
}

impl From<WireDiagnostic> for KclDiagnostic {
    fn from(d: WireDiagnostic) -> KclDiagnostic {
        KclDiagnostic {
            kind: d.kind,
            location: d.location.map(KclLocation::from),
            message: d.message,
            related: d.related.into_iter().map(|(l, m)| (l.into(), m)).collect(),
        }
    }
}

impl From<KclLocation> for WireLocation {
    fn from(l: KclLocation) -> WireLocation {
        WireLocation {
            file: l.file,
            line: l.line,
            column: l.column,
        }
    }
}

impl From<WireLocation> for KclLocation {
    fn from(l: WireLocation) -> KclLocation {
        KclLocation {
            file: l.file,
            line: l.line,
            column: l.column,
        }
    }
}

/// The largest request a worker reads (a submitted source), bytes.
pub(crate) const MAX_REQUEST_BYTES: u32 = 64 << 20;

/// Write one frame.
pub(crate) fn write_frame(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a frame over 4 GiB"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)?;
    out.flush()
}

/// Read one frame; `None` at the end of the stream.
fn read_frame(input: &mut impl Read, max: u32) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, more than the {max} allowed"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// The worker's main: `config` is the [`WorkerConfig`] as JSON. Returns
/// the process's exit status (0: stdin closed; 3: it could not start).
pub fn main(config: &str) -> i32 {
    // The protocol stream is a copy of fd 1; fd 1 itself then goes to
    // /dev/null (see the module documentation).
    let mut out = match protocol_stream() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("drover kcl-worker: cannot set up its output: {e}");
            return 3;
        }
    };
    let hello = |out: &mut File, hello: &Hello| match serde_json::to_vec(hello) {
        Ok(bytes) => write_frame(out, &bytes).is_ok(),
        Err(_) => false,
    };
    let config: WorkerConfig = match serde_json::from_str(config) {
        Ok(c) => c,
        Err(e) => {
            hello(
                &mut out,
                &Hello::Failed(format!("the worker's configuration does not parse: {e}")),
            );
            return 3;
        }
    };
    let (engine, (confinement, confined)) = match start(&config) {
        Ok(started) => started,
        Err(why) => {
            hello(&mut out, &Hello::Failed(why));
            return 3;
        }
    };
    let version = engine.version().unwrap_or_else(|e| e.to_string());
    let ready = Hello::Ready {
        version,
        confinement,
        confined,
    };
    if !hello(&mut out, &ready) {
        return 0;
    }
    watch_parent();
    let mut input = std::io::stdin().lock();
    let mut n: u64 = 0;
    loop {
        let frame = match read_frame(&mut input, MAX_REQUEST_BYTES) {
            Ok(Some(frame)) => frame,
            // The parent closed the pipe: nothing more to do.
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("drover kcl-worker: cannot read a request: {e}");
                return 3;
            }
        };
        n += 1;
        let answer = match serde_json::from_slice::<Request>(&frame) {
            Ok(request) => evaluate(&engine, &config, request, n),
            Err(e) => Answer::Failed(format!("the worker cannot read the request: {e}")),
        };
        let bytes = match serde_json::to_vec(&answer) {
            Ok(bytes) if bytes.len() as u64 > config.max_answer_bytes => serde_json::to_vec(&Answer::TooLarge {
                bytes: bytes.len() as u64,
            }),
            other => other,
        };
        let sent = match bytes {
            Ok(bytes) => write_frame(&mut out, &bytes),
            Err(e) => serde_json::to_vec(&Answer::Failed(format!("the answer does not serialise: {e}")))
                .map_err(std::io::Error::other)
                .and_then(|b| write_frame(&mut out, &b)),
        };
        if sent.is_err() {
            return 0;
        }
    }
}

/// A duplicate of fd 1 for the protocol; fd 1 then points at /dev/null.
fn protocol_stream() -> std::io::Result<File> {
    // SAFETY: dup of fd 1, which the process was started with; the new
    // descriptor is owned by the File from here on.
    let fd = unsafe { libc::dup(1) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let out = unsafe { File::from_raw_fd(fd) };
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: both descriptors are open; dup2 replaces fd 1 atomically.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(out)
}

/// Load the engine, limit and confine the process, and check the engine
/// still evaluates. The engine, and the confinement in words and whether
/// it is complete.
fn start(config: &WorkerConfig) -> Result<(Engine, (String, bool)), String> {
    let location = EngineLocation {
        library: config.library.clone(),
        libpython: config.libpython.clone(),
    };
    let engine = Engine::load(&location).map_err(|e| e.to_string())?;
    limit(libc::RLIMIT_CORE, 0).map_err(|e| format!("cannot turn core dumps off: {e}"))?;
    limit(libc::RLIMIT_AS, config.memory_bytes).map_err(|e| {
        format!(
            "cannot limit the worker's memory to {}: {e}",
            crate::pool::size_text(config.memory_bytes)
        )
    })?;
    let mut readable = vec![config.schemas.clone()];
    readable.extend(config.workflows.iter().cloned());
    let status = confine(&readable, &config.area).map_err(|e| format!("cannot confine the worker: {e}"))?;
    let confined = status == RulesetStatus::FullyEnforced;
    let confinement = match status {
        RulesetStatus::FullyEnforced => "Landlock fully enforced".to_string(),
        RulesetStatus::PartiallyEnforced => {
            "Landlock partially enforced (the kernel lacks some of its features)".to_string()
        }
        RulesetStatus::NotEnforced => {
            "Landlock not enforced: this kernel lacks it, so evaluations can read what the server's user can (the memory, time and stack limits still hold)".to_string()
        }
    };
    // A one-line program under the same limits (thread, stack, layer) as
    // a submission.
    let check = evaluate(
        &engine,
        config,
        Request::Source {
            name: "check.k".into(),
            text: "check = 1\n".into(),
        },
        0,
    );
    match check {
        Answer::Value(_) => Ok((engine, (confinement, confined))),
        Answer::Kcl(d) => Err(format!(
            "the KCL engine cannot evaluate a one-line program under the worker's limits (memory {}, stack {}): {}",
            crate::pool::size_text(config.memory_bytes),
            crate::pool::size_text(config.stack_bytes),
            d.into_iter()
                .map(|d| KclDiagnostic::from(d).to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Answer::TooLarge { .. } => Err("the one-line check program's answer is too large".into()),
        Answer::Failed(why) => Err(format!(
            "the KCL engine cannot evaluate a one-line program under the worker's limits (memory {}, stack {}): {why}",
            crate::pool::size_text(config.memory_bytes),
            crate::pool::size_text(config.stack_bytes),
        )),
    }
}

/// Set a resource limit (soft and hard).
fn limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a plain system call on a valid struct.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The Landlock features asked for: those of ABI 6 (every file system
/// right up to ioctl on devices, TCP, scoping of abstract sockets and
/// signals). The crate's best-effort mode keeps what the running kernel
/// has, and says so in the status.
const LANDLOCK_ABI: ABI = ABI::V6;

/// Restrict the calling thread (and the threads it starts afterwards):
/// read-only beneath `readable`, everything beneath `area`, nothing else;
/// no TCP; no signals or abstract sockets outside the sandbox.
fn confine(readable: &[PathBuf], area: &Path) -> Result<RulesetStatus, String> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .and_then(|r| r.handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp))
        .and_then(|r| r.scope(Scope::AbstractUnixSocket | Scope::Signal))
        .and_then(|r| r.create())
        .map_err(|e| e.to_string())?;
    for dir in readable {
        let fd = PathFd::new(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, read))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let fd = PathFd::new(area).map_err(|e| format!("{}: {e}", area.display()))?;
    ruleset = ruleset
        .add_rule(PathBeneath::new(fd, AccessFs::from_all(LANDLOCK_ABI)))
        .map_err(|e| format!("{}: {e}", area.display()))?;
    let status = ruleset.restrict_self().map_err(|e| e.to_string())?;
    Ok(status.ruleset)
}

/// Exit when the parent is gone (a server killed with SIGKILL cannot stop
/// its workers), instead of evaluating for nobody.
fn watch_parent() {
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    let _ = std::thread::Builder::new()
        .name("kcl-watch".into())
        .stack_size(64 << 10)
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(500));
                // SAFETY: as above.
                if unsafe { libc::getppid() } != parent {
                    // SAFETY: ends the process at once, as intended: no
                    // destructor of an evaluation in flight is wanted.
                    unsafe { libc::_exit(0) };
                }
            }
        });
}

/// Evaluate one request in a fresh directory on a fresh thread; empty the
/// area afterwards, whatever happened.
fn evaluate(engine: &Engine, config: &WorkerConfig, request: Request, n: u64) -> Answer {
    let dir = config.area.join(format!("eval-{n}"));
    let answer = evaluate_in(engine, config, request, &dir);
    let _ = std::env::set_current_dir(&config.area);
    if let Err(e) = empty(&config.area) {
        // Left-overs could reach the next evaluation: stop here, the
        // parent starts a clean worker.
        eprintln!(
            "drover kcl-worker: cannot empty its area {}: {e}",
            config.area.display()
        );
        std::process::exit(3);
    }
    answer
}

fn evaluate_in(engine: &Engine, config: &WorkerConfig, request: Request, dir: &Path) -> Answer {
    if let Err(e) = std::fs::create_dir(dir) {
        return Answer::Failed(format!("cannot make the evaluation directory {}: {e}", dir.display()));
    }
    let (file, source) = match request {
        Request::Source { name, text } => {
            if !is_plain_k_name(&name) {
                return Answer::Failed(format!("{name:?} is not a plain .k file name"));
            }
            let file = dir.join(name);
            if let Err(e) = std::fs::write(&file, text) {
                return Answer::Failed(format!("cannot write the source to {}: {e}", file.display()));
            }
            (file, true)
        }
        Request::File { path } => (path, false),
    };
    if let Err(e) = std::env::set_current_dir(dir) {
        return Answer::Failed(format!("cannot enter {}: {e}", dir.display()));
    }
    let packages = [ExternalPackage {
        name: "drover".into(),
        path: config.schemas.clone(),
    }];
    let schemas = [config.schemas.clone()];
    let stack = usize::try_from(config.stack_bytes).unwrap_or(usize::MAX);
    let outcome = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name(EVAL_THREAD.into())
            .stack_size(stack)
            .spawn_scoped(scope, || {
                // A source sees the schemas and its own directory only.
                if source {
                    confine(&schemas, &config.area).map_err(|e| format!("cannot confine the evaluation: {e}"))?;
                }
                Ok(engine.eval_file(&file, &packages))
            })
            .map_err(|e| {
                format!(
                    "cannot start the evaluation thread with a {} stack: {e}",
                    crate::pool::size_text(config.stack_bytes)
                )
            })?;
        thread
            .join()
            .map_err(|_| "the evaluation thread panicked".to_string())?
    });
    match outcome {
        Ok(Ok(mut value)) => {
            // The two values a file may define: a workflow, or (for fleet
            // operations) an inventory.
            let mut only = serde_json::Map::new();
            for key in ["workflow", "inventory"] {
                if let Some(w) = value.get_mut(key).map(serde_json::Value::take) {
                    only.insert(key.into(), w);
                }
            }
            Answer::Value(serde_json::Value::Object(only))
        }
        Ok(Err(KclError::Eval(d))) => Answer::Kcl(d.into_iter().map(WireDiagnostic::from).collect()),
        Ok(Err(e)) => Answer::Failed(e.to_string()),
        Err(why) => Answer::Failed(why),
    }
}

/// A name without directories, ending in `.k`.
fn is_plain_k_name(name: &str) -> bool {
    name.len() > 2
        && name.ends_with(".k")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Remove everything in `dir`, keeping `dir`.
fn empty(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path)?,
            Ok(_) => std::fs::remove_file(&path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_frame_over_the_limit_is_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"{\"a\":1}").expect("write");
        write_frame(&mut buf, b"").expect("write");
        let mut r = buf.as_slice();
        assert_eq!(read_frame(&mut r, 100).expect("read"), Some(b"{\"a\":1}".to_vec()));
        assert_eq!(read_frame(&mut r, 100).expect("read"), Some(Vec::new()));
        assert_eq!(read_frame(&mut r, 100).expect("read"), None);
        let mut big = Vec::new();
        write_frame(&mut big, &[b'x'; 50]).expect("write");
        let e = read_frame(&mut big.as_slice(), 10).expect_err("over the limit");
        assert!(e.to_string().contains("50 bytes"), "{e}");
    }

    #[test]
    fn only_plain_k_names_are_written() {
        assert!(is_plain_k_name("a1b2.k"));
        assert!(is_plain_k_name("trace-id_9.k"));
        for bad in ["../x.k", "/etc/x.k", "x.txt", ".k", "a/b.k", ".hidden.k", "x .k"] {
            assert!(!is_plain_k_name(bad), "{bad}");
        }
    }

    /// The policy itself, on a thread of its own (Landlock restricts the
    /// calling thread): the KCL engine refuses most paths outside a
    /// program's directory by itself, so this is where the policy is seen
    /// refusing what the engine would let through.
    #[test]
    fn a_confined_thread_reads_its_readable_dirs_writes_its_area_and_nothing_else() {
        let base = tempfile::tempdir().expect("tempdir");
        let (readable, area, other) = (
            base.path().join("r"),
            base.path().join("area"),
            base.path().join("other"),
        );
        for d in [&readable, &area, &other] {
            std::fs::create_dir(d).expect("dir");
        }
        std::fs::write(readable.join("schema.k"), "x = 1\n").expect("file");
        std::fs::write(other.join("secret"), "s3cret\n").expect("file");
        let secret = other.join("secret");
        let outcome = std::thread::spawn(move || {
            let status = confine(std::slice::from_ref(&readable), &area).expect("confine");
            let denied =
                |r: std::io::Result<()>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied);
            (
                status,
                std::fs::read_to_string(readable.join("schema.k")).ok(),
                denied(std::fs::write(readable.join("new.k"), "y").map(drop)),
                std::fs::write(area.join("mine"), "ok").is_ok(),
                denied(std::fs::read(other.join("secret")).map(drop)),
                denied(std::fs::read("/etc/hostname").map(drop)),
                denied(std::fs::read("/proc/self/environ").map(drop)),
                denied(std::fs::read_dir(&other).map(drop)),
            )
        })
        .join()
        .expect("the confined thread");
        let (status, read, write_ro, write_area, other, etc, environ, list) = outcome;
        assert_eq!(
            status,
            RulesetStatus::FullyEnforced,
            "this kernel has Landlock ABI 6 or later"
        );
        assert_eq!(read.as_deref(), Some("x = 1\n"), "the readable directory reads");
        assert!(write_ro, "the readable directory is read-only");
        assert!(write_area, "the area is writable");
        assert!(other, "another directory is not readable");
        assert!(etc, "/etc is not readable");
        assert!(environ, "/proc/self/environ is not readable");
        assert!(list, "another directory is not listable");
        // The test's own thread was not confined.
        assert!(std::fs::read(secret).is_ok());
    }

    #[test]
    fn diagnostics_cross_the_wire_unchanged() {
        let d = KclDiagnostic {
            kind: "TypeError".into(),
            location: Some(KclLocation {
                file: "a.k".into(),
                line: 3,
                column: 7,
            }),
            message: "expected int".into(),
            related: vec![(
                KclLocation {
                    file: "b.k".into(),
                    line: 1,
                    column: 1,
                },
                "here".into(),
            )],
        };
        let wire = serde_json::to_string(&WireDiagnostic::from(d.clone())).expect("json");
        let back: WireDiagnostic = serde_json::from_str(&wire).expect("parse");
        assert_eq!(KclDiagnostic::from(back), d);
    }
}
