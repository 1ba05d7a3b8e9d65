//! The parent side of the KCL workers ([`crate::worker`]): a pool of
//! worker processes that evaluate submitted workflows for `drover serve`.
//!
//! - [`Pool::start`] starts `workers` processes (the program and arguments
//!   it is given, e.g. the drover binary and `kcl-worker`) and waits until
//!   each has loaded the engine and confined itself. A worker that cannot
//!   start says why, and that is the pool's error.
//! - [`Pool::evaluate`] hands the request to a free worker. When every
//!   worker is busy it waits, with at most `max_waiting` others; beyond
//!   that it is refused at once ([`EvalError::Busy`]).
//! - Each evaluation has `timeout`. A worker that runs out of time is
//!   killed; one that dies (stack overflow, memory limit, a signal) is
//!   classified from its exit status and the last of its stderr. Either
//!   way the request gets [`EvalError::Limit`], naming the limit, and a
//!   fresh worker takes the dead one's place; nothing else is touched.
//!
//! Each worker gets an area of its own (a directory under the pool's
//! private temporary directory, `drover-kcl-<server pid>-*`): its HOME, its
//! working directory and the only place it may write. An area is removed
//! when its worker ends, the pool's directory when the pool goes; those
//! of a server that no longer runs are removed when the next pool starts.
//!
//! The evaluation itself runs in a task of its own, so a caller that goes
//! away (a client that disconnects) does not leave a worker in the middle
//! of a conversation: the evaluation finishes and the worker goes back to
//! the pool.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::diagnostics::KclDiagnostic;
use crate::locate::{EngineLocation, Home};
use crate::worker::{Answer, EVAL_THREAD, Hello, MAX_REQUEST_BYTES, Request, WorkerConfig};

/// The default address-space limit of a worker. A worker that has
/// evaluated a small workflow maps ~400 MiB (the engine library, libpython,
/// the evaluation stack [`DEFAULT_STACK_BYTES`]); a workflow of thousands
/// of servers needs a few MiB more. A list comprehension of 2 million
/// integers fits (1.1 s); one of 20 million fails after ~7 s, at ~1.8 GiB
/// resident.
pub const DEFAULT_MEMORY_BYTES: u64 = 2 << 30;

/// The default stack of the evaluation thread. The engine's evaluator
/// recurses on the machine stack, ~2 KiB per KCL call (measured with
/// kcl-lib 0.13.2): 16 MiB holds a lambda recursion ~8,000 deep and a
/// schema-building one ~7,000 deep (2 MiB, a tokio blocking thread's
/// stack, held fewer than 3,000). Deeper is not worth more stack: the
/// evaluator's time grows with the square of the depth (8,000: 1.3 s;
/// 20,000: ~9 s), so the time limit comes first; and a small stack makes
/// an endless recursion end in a second or three with its own message
/// instead of at the time limit.
pub const DEFAULT_STACK_BYTES: u64 = 16 << 20;

/// The default time an evaluation may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest evaluated workflow (as JSON) a worker hands back.
pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 32 << 20;

/// How long a worker may take to load the engine and confine itself.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The last bytes of a worker's stderr kept to classify its end.
const STDERR_TAIL: usize = 16 << 10;

/// How the pool runs its workers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The program a worker is (the drover binary).
    pub program: PathBuf,
    /// Its arguments before the worker's configuration (`kcl-worker`).
    pub args: Vec<OsString>,
    /// Workers evaluating at once.
    pub workers: usize,
    /// Evaluations that may wait for a worker; more are refused.
    pub max_waiting: usize,
    /// The time one evaluation may take.
    pub timeout: Duration,
    /// Each worker's address-space limit, bytes.
    pub memory_bytes: u64,
    /// The evaluation thread's stack, bytes.
    pub stack_bytes: u64,
    /// The largest evaluated workflow a worker hands back, bytes.
    pub max_answer_bytes: u64,
    /// The `drover` KCL package.
    pub schemas: PathBuf,
    /// The engine.
    pub engine: EngineLocation,
    /// The workflows roots path submissions come from (read-only to the
    /// workers that evaluate them).
    pub workflows: Vec<PathBuf>,
    /// Where the pool makes its private directory of worker areas.
    pub areas_in: PathBuf,
}

impl PoolConfig {
    /// The defaults for `home` and `engine`, running `program args...`;
    /// areas in the system's temporary directory.
    pub fn new(program: PathBuf, args: Vec<OsString>, home: &Home, engine: EngineLocation) -> PoolConfig {
        PoolConfig {
            program,
            args,
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            max_waiting: 100,
            timeout: DEFAULT_TIMEOUT,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            stack_bytes: DEFAULT_STACK_BYTES,
            max_answer_bytes: DEFAULT_MAX_ANSWER_BYTES,
            schemas: home.schemas(),
            engine,
            workflows: Vec::new(),
            areas_in: std::env::temp_dir(),
        }
    }
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub enum Evaluation {
    /// A submitted source; the engine's messages will name it `name` (a
    /// plain file name ending in `.k`).
    Source {
        /// The file name.
        name: String,
        /// The KCL text.
        text: String,
    },
    /// A file the caller has admitted (under one of
    /// [`PoolConfig::workflows`]).
    File(PathBuf),
}

/// A limit an evaluation hit; the worker was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limit {
    /// The address-space limit.
    Memory {
        /// The limit, bytes.
        bytes: u64,
    },
    /// The time limit.
    Time(Duration),
    /// The evaluation thread's stack overflowed.
    Stack {
        /// The stack, bytes.
        bytes: u64,
    },
    /// The evaluated workflow is larger than a worker may hand back.
    Answer {
        /// Its size, bytes.
        bytes: u64,
        /// The limit, bytes.
        limit: u64,
    },
    /// The worker was killed from outside (SIGKILL: an operator, or the
    /// kernel's out-of-memory killer).
    Killed {
        /// The signal's name.
        signal: String,
    },
    /// The worker ended otherwise while it evaluated.
    Crashed {
        /// How it ended, and the last thing it said.
        how: String,
    },
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Memory { bytes } => write!(
                f,
                "the workflow's evaluation ran out of memory (limit {}); make the program smaller, or raise the server's --kcl-memory",
                size_text(*bytes)
            ),
            Limit::Time(t) => write!(
                f,
                "the workflow's evaluation exceeded the time limit of {}; make the program do less, or raise the server's --kcl-timeout",
                duration_text(*t)
            ),
            Limit::Stack { bytes } => write!(
                f,
                "the workflow's evaluation overflowed the evaluator's stack of {} (recursion too deep, or endless)",
                size_text(*bytes)
            ),
            Limit::Answer { bytes, limit } => write!(
                f,
                "the evaluated workflow is {} of JSON, more than the {} an evaluation may hand back",
                size_text(*bytes),
                size_text(*limit)
            ),
            Limit::Killed { signal } => write!(
                f,
                "the workflow's evaluation was ended by {signal} from outside the evaluator (an operator, or the kernel's out-of-memory killer)"
            ),
            Limit::Crashed { how } => write!(f, "the KCL evaluator crashed while evaluating the workflow: {how}"),
        }
    }
}

/// Why an evaluation gave no value.
#[derive(Debug, Clone)]
pub enum EvalError {
    /// Every worker is busy and `waiting` evaluations wait already.
    Busy {
        /// The workers.
        workers: usize,
        /// Evaluations waiting, the most allowed.
        waiting: usize,
    },
    /// The engine rejected the program.
    Kcl(Vec<KclDiagnostic>),
    /// The evaluation hit a limit (the worker was replaced).
    Limit(Limit),
    /// The engine failed (not the program), or a worker could not set the
    /// evaluation up.
    Failed(String),
    /// No worker could be started; why.
    Unavailable(String),
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::Busy { workers, waiting } => write!(
                f,
                "all {workers} KCL workers are busy and {waiting} evaluations wait for one already (the most allowed); retry later"
            ),
            EvalError::Kcl(d) => write!(f, "{} KCL error(s)", d.len()),
            EvalError::Limit(l) => l.fmt(f),
            EvalError::Failed(why) => write!(f, "the KCL engine failed: {why}"),
            EvalError::Unavailable(why) => write!(f, "no KCL worker can be started: {why}"),
        }
    }
}

impl std::error::Error for EvalError {}

/// A pool of KCL worker processes. Cheap to share (`Arc` inside).
#[derive(Debug, Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: PoolConfig,
    /// Removed (with every area) when the pool goes.
    areas: tempfile::TempDir,
    /// Workers ready for a request.
    idle: Mutex<Vec<Worker>>,
    /// One permit per worker slot: a permit is either an idle worker, a
    /// busy one, or one being started in its place. Whoever holds one
    /// and finds no idle worker starts one.
    slots: Arc<Semaphore>,
    /// Evaluations waiting for a permit.
    waiting: AtomicUsize,
    /// Numbers the areas, so a replacement never reuses a dead worker's.
    serial: AtomicU64,
}

impl Pool {
    /// Start `config.workers` workers and wait until each is ready. The
    /// error says why the first that failed could not start.
    pub async fn start(config: PoolConfig) -> Result<Pool, String> {
        let workers = config.workers.max(1);
        if let Ok(dir) = config.areas_in.canonicalize()
            && let Some(root) = config.workflows.iter().find(|r| dir.starts_with(r))
        {
            return Err(format!(
                "the KCL workers' directory would be in {}, under the workflows directory {}: a workflow submitted by path could read what other evaluations write; set TMPDIR elsewhere, or give another --workflows-dir",
                dir.display(),
                root.display()
            ));
        }
        remove_stale_areas(&config.areas_in);
        // The owner's alone: evaluations write submitted sources there.
        let areas = tempfile::Builder::new()
            .prefix(&format!("{AREAS_PREFIX}{}-", std::process::id()))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(&config.areas_in)
            .map_err(|e| {
                format!(
                    "cannot make the KCL workers' directory in {}: {e}",
                    config.areas_in.display()
                )
            })?;
        let shared = Arc::new(Shared {
            config: PoolConfig { workers, ..config },
            areas,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(workers)),
            waiting: AtomicUsize::new(0),
            serial: AtomicU64::new(0),
        });
        let mut starting = Vec::new();
        for _ in 0..workers {
            let shared = shared.clone();
            starting.push(tokio::spawn(async move { Worker::spawn(&shared).await }));
        }
        let mut first_error = None;
        for s in starting {
            match s.await {
                Ok(Ok(w)) => lock(&shared.idle).push(w),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(format!("starting a KCL worker failed: {e}"));
                }
            }
        }
        if let Some(e) = first_error {
            // Those that started go with the pool.
            return Err(e);
        }
        Ok(Pool { shared })
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.shared.config.workers
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// Evaluate on a free worker: the program's `workflow` value as
    /// `{"workflow": ...}` (`{}` when it defines none).
    pub async fn evaluate(&self, evaluation: Evaluation) -> Result<serde_json::Value, EvalError> {
        let permit = self.shared.clone().acquire().await?;
        let shared = self.shared.clone();
        // A task of its own: see the module documentation.
        tokio::spawn(async move { shared.evaluate(permit, evaluation).await })
            .await
            .unwrap_or_else(|e| Err(EvalError::Failed(format!("the evaluation task failed: {e}"))))
    }
}

impl Shared {
    /// A worker slot, waiting in line when all are taken (unless the line
    /// is full).
    async fn acquire(self: Arc<Self>) -> Result<OwnedSemaphorePermit, EvalError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let max = self.config.max_waiting;
        if self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| (w < max).then_some(w + 1))
            .is_err()
        {
            return Err(EvalError::Busy {
                workers: self.config.workers,
                waiting: max,
            });
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _waiting = Waiting(&self.waiting);
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EvalError::Unavailable("the pool is closed".into()))
    }

    async fn evaluate(
        self: Arc<Self>,
        permit: OwnedSemaphorePermit,
        evaluation: Evaluation,
    ) -> Result<serde_json::Value, EvalError> {
        let request = match evaluation {
            Evaluation::Source { name, text } => Request::Source { name, text },
            Evaluation::File(path) => Request::File { path },
        };
        let frame = serde_json::to_vec(&request).map_err(|e| EvalError::Failed(e.to_string()))?;
        if frame.len() > MAX_REQUEST_BYTES as usize {
            return Err(EvalError::Failed(format!(
                "the source is {}, more than the {} a worker reads",
                size_text(frame.len() as u64),
                size_text(u64::from(MAX_REQUEST_BYTES))
            )));
        }
        let mut worker = self.idle_worker().await?;
        let limit = self.config.max_answer_bytes + 4096;
        let call = tokio::time::timeout(self.config.timeout, worker.call(&frame, limit)).await;
        let answer = match call {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                let limit = worker.ended(&e, &self.config).await;
                self.replace(permit);
                return Err(EvalError::Limit(limit));
            }
            Err(_) => {
                let limit = Limit::Time(self.config.timeout);
                tracing::warn!(pid = worker.pid, %limit, "a KCL worker ran out of time; killed, starting another");
                worker.kill().await;
                self.replace(permit);
                return Err(EvalError::Limit(limit));
            }
        };
        lock(&self.idle).push(worker);
        drop(permit);
        match answer {
            Answer::Value(v) => Ok(v),
            Answer::Kcl(d) => Err(EvalError::Kcl(d.into_iter().map(KclDiagnostic::from).collect())),
            Answer::TooLarge { bytes } => Err(EvalError::Limit(Limit::Answer {
                bytes,
                limit: self.config.max_answer_bytes,
            })),
            Answer::Failed(why) => Err(EvalError::Failed(why)),
        }
    }

    /// An idle worker that is still alive, or a new one.
    async fn idle_worker(self: &Arc<Self>) -> Result<Worker, EvalError> {
        loop {
            let Some(mut w) = lock(&self.idle).pop() else { break };
            match w.child.try_wait() {
                Ok(None) => return Ok(w),
                // It ended while idle (killed from outside): not this
                // request's fault; start another.
                status => {
                    tracing::warn!(pid = w.pid, ?status, "an idle KCL worker had ended; starting another");
                    w.discard();
                }
            }
        }
        Worker::spawn(self).await.map_err(EvalError::Unavailable)
    }

    /// Start a worker in the place of one that ended; the slot is free
    /// again once it is ready (or could not start: then the next request
    /// tries, and says why if it cannot either).
    fn replace(self: &Arc<Self>, permit: OwnedSemaphorePermit) {
        let shared = self.clone();
        tokio::spawn(async move {
            match Worker::spawn(&shared).await {
                Ok(w) => lock(&shared.idle).push(w),
                Err(e) => tracing::error!(error = %e, "cannot start a KCL worker in the place of one that ended"),
            }
            drop(permit);
        });
    }
}

/// The start of the name of a pool's directory of areas; the server's
/// process id follows, then a random part.
const AREAS_PREFIX: &str = "drover-kcl-";

/// Remove the directories of areas that pools of processes that no longer
/// run left in `dir` (a server killed, or one that exited without dropping
/// its pool), if they are this user's.
fn remove_stale_areas(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(AREAS_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = e.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One worker process.
#[derive(Debug)]
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// The last of its stderr.
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Reads its stderr until it closes.
    drain: Option<JoinHandle<()>>,
    area: PathBuf,
    pid: u32,
}

impl Worker {
    /// Start a worker and wait for its hello.
    async fn spawn(shared: &Shared) -> Result<Worker, String> {
        let config = &shared.config;
        let serial = shared.serial.fetch_add(1, Ordering::Relaxed);
        let area = shared.areas.path().join(format!("w{serial}"));
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&area)
            .map_err(|e| format!("cannot make the KCL worker's area {}: {e}", area.display()))?;
        let worker_config = WorkerConfig {
            schemas: config.schemas.clone(),
            library: config.engine.library.clone(),
            libpython: config.engine.libpython.clone(),
            area: area.clone(),
            workflows: config.workflows.clone(),
            memory_bytes: config.memory_bytes,
            stack_bytes: config.stack_bytes,
            max_answer_bytes: config.max_answer_bytes,
        };
        let json = serde_json::to_string(&worker_config).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&config.program);
        cmd.args(&config.args)
            .arg(json)
            // Nothing of the server's environment (its token, cloud
            // credentials) reaches the program being evaluated.
            .env_clear()
            .env("HOME", &area)
            .current_dir(&area)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in ["PATH", "LANG"] {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&area);
                return Err(format!("cannot start the KCL worker {}: {e}", config.program.display()));
            }
        };
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("the KCL worker's pipes are missing".into());
        };
        let tail = Arc::new(Mutex::new(Vec::new()));
        let drain = tokio::spawn(drain_stderr(stderr, tail.clone(), pid));
        let mut worker = Worker {
            child,
            stdin,
            stdout,
            stderr: tail,
            drain: Some(drain),
            area,
            pid,
        };
        let hello = tokio::time::timeout(START_TIMEOUT, read_frame(&mut worker.stdout, 1 << 20)).await;
        let failed = match hello {
            Ok(Ok(Some(bytes))) => match serde_json::from_slice::<Hello>(&bytes) {
                Ok(Hello::Ready {
                    version,
                    confinement,
                    confined,
                }) => {
                    if confined {
                        tracing::info!(pid, engine = %version, confinement = %confinement, "KCL worker ready");
                    } else {
                        tracing::warn!(pid, engine = %version, confinement = %confinement, "KCL worker ready, not fully confined");
                    }
                    return Ok(worker);
                }
                Ok(Hello::Failed(why)) => why,
                Err(e) => format!("its first message does not parse: {e}"),
            },
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = worker.wait_briefly().await;
                let said = worker.said().await;
                format!(
                    "it ended before it was ready ({}){}",
                    status_text(status),
                    said_text(&said)
                )
            }
            Err(_) => format!("it was not ready within {}", duration_text(START_TIMEOUT)),
        };
        worker.kill().await;
        Err(format!("the KCL worker cannot start: {failed}"))
    }

    /// Send a request frame and read the answer.
    async fn call(&mut self, frame: &[u8], max_answer: u64) -> std::io::Result<Answer> {
        let len = u32::try_from(frame.len()).map_err(std::io::Error::other)?;
        self.stdin.write_all(&len.to_be_bytes()).await?;
        self.stdin.write_all(frame).await?;
        self.stdin.flush().await?;
        let max = u32::try_from(max_answer).unwrap_or(u32::MAX);
        let bytes = read_frame(&mut self.stdout, max)
            .await?
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the worker closed its output"))?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// The worker stopped answering (`cause`): how it ended, as a limit.
    async fn ended(mut self, cause: &std::io::Error, config: &PoolConfig) -> Limit {
        if let Some(bytes) = cause.get_ref().and_then(|e| e.downcast_ref::<FrameTooLarge>()) {
            let bytes = bytes.0;
            self.kill().await;
            return Limit::Answer {
                bytes,
                limit: config.max_answer_bytes,
            };
        }
        let status = self.wait_briefly().await;
        let said = self.said().await;
        let limit = classify(status, &said, config);
        tracing::warn!(pid = self.pid, status = %status_text(status), %limit, "a KCL worker ended while it evaluated; starting another");
        self.discard();
        limit
    }

    /// Wait up to a second for the process to end, then kill it.
    async fn wait_briefly(&mut self) -> Option<ExitStatus> {
        match tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = self.child.start_kill();
                self.child.wait().await.ok()
            }
        }
    }

    /// What it wrote to stderr, to its end (briefly waited for).
    async fn said(&mut self) -> String {
        if let Some(drain) = self.drain.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        }
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// Kill it, wait for it, remove its area.
    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.discard();
    }

    /// Remove its area (the process has ended or is being killed on drop).
    fn discard(self) {
        let _ = std::fs::remove_dir_all(&self.area);
    }
}

/// An answer longer than the pool takes.
#[derive(Debug)]
struct FrameTooLarge(u64);

impl std::fmt::Display for FrameTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an answer of {} bytes", self.0)
    }
}

impl std::error::Error for FrameTooLarge {}

async fn read_frame(input: &mut (impl AsyncRead + Unpin), max: u32) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            FrameTooLarge(u64::from(len)),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Keep the last [`STDERR_TAIL`] bytes of a worker's stderr; log each line
/// (debug: it is the engine's own talk, or a crash report).
async fn drain_stderr(stderr: tokio::process::ChildStderr, tail: Arc<Mutex<Vec<u8>>>, pid: u32) {
    let mut lines = BufReader::new(stderr).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        tracing::debug!(pid, line = %String::from_utf8_lossy(&line), "KCL worker stderr");
        let mut t = lock(&tail);
        t.extend_from_slice(&line);
        t.push(b'\n');
        if t.len() > STDERR_TAIL {
            let cut = t.len() - STDERR_TAIL;
            t.drain(..cut);
        }
    }
}

/// How a worker that stopped answering ended, as the limit it hit.
fn classify(status: Option<ExitStatus>, said: &str, config: &PoolConfig) -> Limit {
    use std::os::unix::process::ExitStatusExt;
    let overflow = format!("thread '{EVAL_THREAD}' has overflowed its stack");
    if said.contains(&overflow) || said.contains("has overflowed its stack") {
        return Limit::Stack {
            bytes: config.stack_bytes,
        };
    }
    // Rust's allocation failure (the engine is Rust), and the C library's.
    let out_of_memory = [
        "memory allocation of",
        "out of memory",
        "Cannot allocate memory",
        "capacity overflow",
    ];
    if out_of_memory.iter().any(|m| said.contains(m)) {
        return Limit::Memory {
            bytes: config.memory_bytes,
        };
    }
    match status.and_then(|s| s.signal()) {
        Some(libc::SIGKILL) => Limit::Killed {
            signal: "SIGKILL".into(),
        },
        Some(sig) => Limit::Crashed {
            how: format!("signal {}{}", signal_name(sig), said_text(said)),
        },
        None => Limit::Crashed {
            how: format!("{}{}", status_text(status), said_text(said)),
        },
    }
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGXCPU => "SIGXCPU",
        _ => return sig.to_string(),
    };
    name.to_string()
}

fn status_text(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (_, Some(sig)) => format!("signal {}", signal_name(sig)),
            _ => s.to_string(),
        },
        None => "its status is unknown".into(),
    }
}

/// `: <the last line it said>` or nothing.
fn said_text(said: &str) -> String {
    match said.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => format!(": {}", l.trim()),
        None => String::new(),
    }
}

/// Bytes as `2 GiB`, `512 MiB`, `1.5 GiB`.
pub(crate) fn size_text(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        if bytes.is_multiple_of(GIB) {
            format!("{} GiB", bytes / GIB)
        } else {
            format!("{:.1} GiB", bytes as f64 / GIB as f64)
        }
    } else if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// A duration as `10 s`, `1.5 s` or `250 ms`.
fn duration_text(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else if d.as_secs() > 0 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn config() -> PoolConfig {
        PoolConfig {
            program: "drover".into(),
            args: Vec::new(),
            workers: 1,
            max_waiting: 0,
            timeout: Duration::from_secs(10),
            memory_bytes: 2 << 30,
            stack_bytes: 512 << 20,
            max_answer_bytes: 1 << 20,
            schemas: PathBuf::new(),
            engine: EngineLocation {
                library: PathBuf::new(),
                libpython: None,
            },
            workflows: Vec::new(),
            areas_in: Path::new("/tmp").to_path_buf(),
        }
    }

    #[test]
    fn a_worker_end_is_classified_by_what_it_said_and_its_signal() {
        let c = config();
        let abort = Some(ExitStatus::from_raw(libc::SIGABRT));
        let overflow = "\nthread 'kcl-eval' has overflowed its stack\nfatal runtime error: stack overflow\n";
        assert_eq!(classify(abort, overflow, &c), Limit::Stack { bytes: 512 << 20 });
        let oom = "memory allocation of 34359738368 bytes failed\n";
        assert_eq!(classify(abort, oom, &c), Limit::Memory { bytes: 2 << 30 });
        let killed = Some(ExitStatus::from_raw(libc::SIGKILL));
        assert_eq!(
            classify(killed, "", &c),
            Limit::Killed {
                signal: "SIGKILL".into()
            }
        );
        let segv = Some(ExitStatus::from_raw(libc::SIGSEGV));
        assert_eq!(
            classify(segv, "something\nlast words\n", &c),
            Limit::Crashed {
                how: "signal SIGSEGV: last words".into()
            }
        );
        let exited = Some(ExitStatus::from_raw(3 << 8));
        assert_eq!(
            classify(exited, "", &c),
            Limit::Crashed {
                how: "exit status 3".into()
            }
        );
    }

    #[test]
    fn only_the_areas_of_processes_that_are_gone_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = std::process::id();
        // pid_max is at most 4,194,304: this process never exists.
        let names = [
            format!("drover-kcl-{me}-live"),
            "drover-kcl-999999999-gone".to_string(),
            "drover-kcl-nopid".to_string(),
            "unrelated-999999999-x".to_string(),
        ];
        for n in &names {
            std::fs::create_dir_all(dir.path().join(n).join("w0")).expect("dir");
        }
        remove_stale_areas(dir.path());
        let left: Vec<bool> = names.iter().map(|n| dir.path().join(n).exists()).collect();
        assert_eq!(left, [true, false, true, true]);
    }

    #[test]
    fn limits_name_themselves_in_their_units() {
        assert_eq!(
            Limit::Memory { bytes: 2 << 30 }.to_string(),
            "the workflow's evaluation ran out of memory (limit 2 GiB); make the program smaller, or raise the server's --kcl-memory"
        );
        assert!(
            Limit::Time(Duration::from_secs(10))
                .to_string()
                .contains("exceeded the time limit of 10 s")
        );
        assert!(
            Limit::Stack { bytes: 512 << 20 }
                .to_string()
                .contains("overflowed the evaluator's stack of 512 MiB (recursion too deep")
        );
        assert_eq!(size_text(1536 << 20), "1.5 GiB");
        assert_eq!(size_text(300 << 20), "300 MiB");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(duration_text(Duration::from_millis(250)), "250 ms");
    }
}
