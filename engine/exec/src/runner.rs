//! Running one attempt of a task: a provider call, or a taskserv script on
//! its server through a transport.
//!
//! The scheduler knows nothing of scripts or providers; it calls a
//! [`TaskExecutor`]. [`Runner`] is the real one. It reaches servers through
//! its [`Pool`]: one transport per server for the whole run (an SSH
//! connection, or processes here for `connection = "local"`), shared by
//! every task on that server and by provider calls that need to reach it.
//!
//! Every failure carries its [`FailureKind`] from where it happened (the
//! transport, the provider, the script's exit) to the scheduler, which
//! retries transient failures only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_core::FailureKind;
use drover_core::Plan;
use drover_core::model::{Catalog, Script, Server, WaitCondition};
use drover_core::plan::{Action, Task};
use drover_provider::{
    Connector, Provider, ProviderContext, ProviderError, Providers, Reach, ServerFacts, ServerStatus,
};
use drover_transport::local::LocalTransport;
use drover_transport::mask::Masker;
use drover_transport::ssh::{self, SshTransport};
use drover_transport::{Command, Files, LogLine, Outcome, Transport, TransportError};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where a run keeps its files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The data directory: providers' state under `providers/<name>`,
    /// drover's own known_hosts, the working directories under `work/`.
    pub data_dir: PathBuf,
    /// Task logs and reports of this run.
    pub logs_dir: PathBuf,
    /// What a workflow's relative paths (SSH keys, known_hosts, config)
    /// are relative to: the workflow file's directory.
    pub base_dir: PathBuf,
    /// Keep the run's directories on servers after the run.
    pub keep_remote_dirs: bool,
}

impl Paths {
    /// This run's local working directory (staging, rendered templates).
    fn work_dir(&self, run_id: &str) -> PathBuf {
        self.data_dir.join("work").join(run_id)
    }

    /// drover's own known_hosts.
    pub fn known_hosts(&self) -> PathBuf {
        self.data_dir.join("known_hosts")
    }

    /// The state directory of provider `name`.
    pub fn provider_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join("providers").join(name)
    }
}

/// Why an attempt failed, and whether another attempt can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// Transient (retried per policy), permanent (never retried) or
    /// cancelled.
    pub kind: FailureKind,
    /// What happened, naming the server and what to do.
    pub message: String,
    /// What the attempt found out even so, journaled with the failure: a
    /// command's exit status and output (`drover exec`).
    pub found: Found,
}

impl TaskFailure {
    /// A failure another attempt may get past.
    pub fn transient(message: impl Into<String>) -> TaskFailure {
        TaskFailure {
            kind: FailureKind::Transient,
            message: message.into(),
            found: Found::new(),
        }
    }

    /// A failure no attempt will get past.
    pub fn permanent(message: impl Into<String>) -> TaskFailure {
        TaskFailure {
            kind: FailureKind::Permanent,
            message: message.into(),
            found: Found::new(),
        }
    }

    /// Stopped on purpose.
    pub fn cancelled(message: impl Into<String>) -> TaskFailure {
        TaskFailure {
            kind: FailureKind::Cancelled,
            message: message.into(),
            found: Found::new(),
        }
    }
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ProviderError> for TaskFailure {
    fn from(e: ProviderError) -> TaskFailure {
        TaskFailure {
            kind: e.kind,
            message: e.to_string(),
            found: Found::new(),
        }
    }
}

/// What an attempt that succeeded found out, journaled with its success:
/// for a server task, what its provider reported (address, OS, ...).
pub type Found = BTreeMap<String, String>;

/// What undoing a task came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// Nothing to undo (checks change nothing).
    Nothing,
    /// The compensation ran and succeeded.
    Done,
    /// The compensation ran and failed.
    Failed(TaskFailure),
    /// The effect cannot be undone; why.
    Impossible(String),
}

/// What undoing a task involves, known before anything runs: the
/// scheduler journals it before it acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compensation {
    /// Nothing changed, nothing to undo.
    Nothing,
    /// The effect cannot be undone; why.
    Impossible(String),
    /// This action undoes it ("remove", "delete server", ...).
    Run(String),
}

/// Runs tasks for the scheduler.
#[async_trait::async_trait]
pub trait TaskExecutor: Send + Sync + std::fmt::Debug {
    /// Run one attempt of `task`.
    async fn run(&self, task: &Task, attempt: u32, cancel: CancellationToken) -> Result<Found, TaskFailure>;

    /// What undoing `task` (which succeeded) involves.
    fn compensation(&self, task: &Task) -> Compensation;

    /// Undo a task that succeeded, as [`TaskExecutor::compensation`] said.
    async fn undo(&self, task: &Task, cancel: CancellationToken) -> Undo;

    /// Run a wait condition once; Ok when it holds.
    async fn probe(&self, condition: &WaitCondition, cancel: CancellationToken) -> Result<(), TaskFailure>;

    /// The run is over (finished, stopped or rolled back): release what
    /// the executor holds (connections, remote directories).
    async fn finish(&self) {}
}

/// A task's output line, for the live view.
#[derive(Debug, Clone)]
pub struct TaskLine {
    /// The task.
    pub task: String,
    /// The line.
    pub line: LogLine,
}

/// The secrets of a run, decrypted in memory only.
#[derive(Clone, Default)]
pub struct RunSecrets {
    /// Each secret as a script sees it: DROVER_VAR_<PATH> (path segments
    /// upper-cased, joined with '_').
    pub env: Vec<(String, String)>,
    /// The decrypted tree, for templates (`secrets.*`).
    pub tree: serde_json::Value,
}

impl std::fmt::Debug for RunSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("RunSecrets")
            .field("names", &names)
            .field("values", &"<redacted>")
            .finish()
    }
}

/// The run's transports, one per server, made on first use and shared by
/// every task on that server (and by provider calls that reach it).
#[derive(Debug)]
pub struct Pool {
    /// Local-connection servers' run directories live under here.
    local_root: PathBuf,
    ssh: ssh::Defaults,
    // One cell per server: concurrent first tasks on a host share one
    // connect.
    hosts: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<HostConn>>>>>,
}

/// The run's connection to one server, with the run's directory on it and
/// the taskservs whose scripts are already there.
#[derive(Debug)]
pub struct HostConn {
    transport: Arc<dyn Transport>,
    run_dir: tokio::sync::OnceCell<String>,
    staged: tokio::sync::Mutex<HashSet<String>>,
}

impl Pool {
    /// A pool with files under `paths`.
    pub fn new(paths: &Paths) -> Pool {
        Pool {
            local_root: paths.data_dir.join("work").join("servers"),
            ssh: ssh::Defaults::new(paths.known_hosts(), paths.base_dir.clone()),
            hosts: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The connection to `server`, opened once for the whole run.
    pub async fn host(&self, server: &Server, facts: &ServerFacts) -> Result<Arc<HostConn>, TransportError> {
        let cell = {
            let mut hosts = self.hosts.lock().await;
            hosts.entry(server.hostname.clone()).or_default().clone()
        };
        let conn = cell
            .get_or_try_init(|| async {
                let transport: Arc<dyn Transport> = match &facts.reach {
                    Reach::Local => Arc::new(LocalTransport::new(self.local_root.join(&server.hostname))),
                    Reach::Ssh(hints) => {
                        let target = ssh::resolve(
                            ssh::Destination {
                                host: &server.hostname,
                                address: &facts.address,
                                access: &server.ssh,
                                hints,
                            },
                            &self.ssh,
                        )?;
                        Arc::new(SshTransport::connect(&target).await?)
                    }
                };
                Ok::<_, TransportError>(Arc::new(HostConn {
                    transport,
                    run_dir: tokio::sync::OnceCell::new(),
                    staged: tokio::sync::Mutex::new(HashSet::new()),
                }))
            })
            .await?;
        Ok(conn.clone())
    }

    /// Every connection made, for the end of the run.
    async fn all(&self) -> Vec<Arc<HostConn>> {
        let cells: Vec<_> = self.hosts.lock().await.values().cloned().collect();
        cells.into_iter().filter_map(|c| c.get().cloned()).collect()
    }

    /// Forget `server`'s connection (it was deleted).
    async fn forget(&self, server: &str) {
        self.hosts.lock().await.remove(server);
    }

    /// Close `server`'s connection, if the run has one, removing what the
    /// run put there (unless `keep`), and forget it.
    pub(crate) async fn release(&self, server: &str, keep: bool) {
        let cell = self.hosts.lock().await.remove(server);
        if let Some(conn) = cell.and_then(|c| c.get().cloned()) {
            // Best effort, as at the end of a run.
            let _ = conn.transport.finish(keep).await;
        }
    }

    /// Close every connection; the run's directories go unless `keep`.
    pub async fn finish(&self, keep: bool) {
        for conn in self.all().await {
            // Best effort: a server that went away keeps nothing of ours
            // that matters, and the run's outcome is already decided.
            let _ = conn.transport.finish(keep).await;
        }
    }
}

impl HostConn {
    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// The directory of run (or fleet operation) `run_id` on the server,
    /// made on first use.
    pub async fn run_dir_for(&self, run_id: &str) -> Result<String, TransportError> {
        self.run_dir(run_id).await
    }

    async fn run_dir(&self, run_id: &str) -> Result<String, TransportError> {
        self.run_dir
            .get_or_try_init(|| self.transport.run_dir(run_id))
            .await
            .cloned()
    }
}

#[async_trait::async_trait]
impl Connector for Pool {
    async fn connect(&self, server: &Server, facts: &ServerFacts) -> Result<Arc<dyn Transport>, TransportError> {
        Ok(self.host(server, facts).await?.transport.clone())
    }
}

/// The real executor: providers for server tasks, taskserv scripts on
/// their servers through the run's transports.
#[derive(Debug)]
pub struct Runner {
    run_id: String,
    plan: Arc<Plan>,
    catalog: Arc<Catalog>,
    providers: Providers,
    paths: Paths,
    lines: Option<mpsc::UnboundedSender<TaskLine>>,
    secrets: Arc<RunSecrets>,
    mask: Masker,
    pool: Arc<Pool>,
    /// What providers said of each server this run; asked once, then
    /// reused by every task on it (a static server is probed once).
    facts: tokio::sync::Mutex<HashMap<String, ServerFacts>>,
    /// Each taskserv's scripts copied once per run (links resolved), for
    /// every server to stage from; the cell makes concurrent first uses
    /// share one copy.
    scripts: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<Scripts>>>>>,
    /// Per server, its script tasks not yet succeeded: the last one's
    /// command also removes the run's directory there (see
    /// [`Command::remove_run_dir`]), so the end of the run costs no round
    /// trip to it.
    left: std::sync::Mutex<HashMap<String, usize>>,
}

impl Runner {
    /// A runner for one run.
    pub fn new(
        run_id: String,
        plan: Arc<Plan>,
        catalog: Arc<Catalog>,
        providers: Providers,
        paths: Paths,
        lines: Option<mpsc::UnboundedSender<TaskLine>>,
    ) -> Runner {
        let pool = Arc::new(Pool::new(&paths));
        let mut left: HashMap<String, usize> = HashMap::new();
        for task in plan.graph.node_weights().filter_map(|n| n.task()) {
            if matches!(
                task.action,
                Action::Install | Action::Update | Action::Remove | Action::Check | Action::Exec
            ) && let Some(server) = &task.server
            {
                *left.entry(server.clone()).or_default() += 1;
            }
        }
        Runner {
            run_id,
            plan,
            catalog,
            providers,
            paths,
            lines,
            secrets: Arc::new(RunSecrets::default()),
            mask: Masker::none(),
            pool,
            facts: tokio::sync::Mutex::new(HashMap::new()),
            scripts: tokio::sync::Mutex::new(HashMap::new()),
            left: std::sync::Mutex::new(left),
        }
    }

    /// Whether `task` is the last script task left on `server` (the others
    /// have succeeded).
    fn is_last_on(&self, server: &str) -> bool {
        self.left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(server)
            == Some(&1)
    }

    /// A script task on `server` succeeded.
    fn done_on(&self, server: &str) {
        if let Some(n) = self
            .left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(server)
        {
            *n = n.saturating_sub(1);
        }
    }

    /// Opens the connection to every server the plan runs scripts on that
    /// exists already (asks its provider's status, which connects), in the
    /// background, as soon as the run starts: the first task on each finds
    /// it open. Servers the run creates are reached when they are made.
    pub fn warm_up(self: &Arc<Self>) {
        let created: HashSet<&str> = self
            .plan
            .graph
            .node_weights()
            .filter_map(|n| n.task())
            .filter(|t| t.action == Action::CreateServer)
            .filter_map(|t| t.server.as_deref())
            .collect();
        let servers: Vec<String> = self
            .left
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .filter(|s| !created.contains(s.as_str()))
            .cloned()
            .collect();
        for name in servers {
            let runner = self.clone();
            tokio::spawn(async move {
                // A failure here is met again, and reported, by the
                // server's first task.
                if let Ok(server) = runner.server(&name)
                    && let Ok(facts) = runner.facts(server, "connect").await
                {
                    let _ = runner.pool.host(server, &facts).await;
                }
            });
        }
    }

    /// Give scripts and templates the run's secrets, and mask them in
    /// everything the runner writes.
    pub fn with_secrets(mut self, secrets: Arc<RunSecrets>, mask: Masker) -> Runner {
        self.secrets = secrets;
        self.mask = mask;
        self
    }

    /// The idempotency key of a task: the same for every attempt and after
    /// a resume, so a script can tell a repeat from a first run.
    pub fn idempotency_key(run_id: &str, task: &str) -> String {
        format!("{run_id}/{task}")
    }

    /// The log file of a task.
    pub fn log_file(logs_dir: &Path, task: &str) -> PathBuf {
        let name: String = task
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        logs_dir.join(format!("{name}.log"))
    }

    fn server(&self, name: &str) -> Result<&Server, TaskFailure> {
        self.plan
            .workflow
            .servers
            .iter()
            .find(|s| s.hostname == name)
            .ok_or_else(|| TaskFailure::permanent(format!("server {name} is not in the workflow")))
    }

    fn provider(&self, name: &str) -> Result<&Arc<dyn Provider>, TaskFailure> {
        self.providers
            .get(name)
            .ok_or_else(|| TaskFailure::permanent(format!("provider {name} cannot be driven by this build")))
    }

    /// The context of a provider call about `server` (None: about the
    /// provider's network) made by `task`.
    fn ctx(&self, provider: &str, server: Option<&Server>, task: &str) -> ProviderContext {
        let plan = server.and_then(|s| {
            self.catalog
                .providers
                .get(provider)
                .and_then(|p| p.plans.get(&s.plan))
                .copied()
        });
        let zones: std::collections::BTreeSet<String> = match server {
            Some(s) => s.zone.iter().cloned().collect(),
            None => self
                .plan
                .workflow
                .servers
                .iter()
                .filter(|s| s.provider == provider)
                .filter_map(|s| s.zone.clone())
                .collect(),
        };
        ProviderContext {
            zones: zones.into_iter().collect(),
            state_dir: self.paths.provider_dir(provider),
            run_id: self.run_id.clone(),
            idempotency_key: Self::idempotency_key(&self.run_id, task),
            plan,
            connector: self.pool.clone(),
            secrets: drover_provider::Secrets::new(
                self.secrets
                    .env
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix("DROVER_VAR_").map(|k| (k.to_string(), v.clone()))),
            ),
        }
    }

    fn transport_failure(&self, e: &TransportError) -> TaskFailure {
        TaskFailure {
            kind: e.kind(),
            message: self.mask.mask(&e.to_string()),
            found: Found::new(),
        }
    }

    async fn log(&self, task: &str, text: &str) {
        let text = self.mask.mask(text);
        let file = Self::log_file(&self.paths.logs_dir, task);
        let write = async {
            if let Some(dir) = file.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .await?;
            f.write_all(text.as_bytes()).await
        };
        // A log that cannot be written must not fail the task; the journal
        // still records what happened.
        let _ = write.await;
    }

    /// The facts of a server that must already exist: asked of its
    /// provider once per run.
    async fn facts(&self, server: &Server, task: &str) -> Result<ServerFacts, TaskFailure> {
        if let Some(f) = self.facts.lock().await.get(&server.hostname) {
            return Ok(f.clone());
        }
        let provider = self.provider(&server.provider)?;
        match provider
            .status(server, &self.ctx(&server.provider, Some(server), task))
            .await?
        {
            ServerStatus::Running(f) => {
                self.facts.lock().await.insert(server.hostname.clone(), f.clone());
                Ok(f)
            }
            // A transport's error names the host already.
            ServerStatus::Down(why) if why.starts_with(&format!("{}:", server.hostname)) => {
                Err(TaskFailure::transient(format!("server {why}")))
            }
            ServerStatus::Down(why) => Err(TaskFailure::transient(format!("server {}: {why}", server.hostname))),
            ServerStatus::Absent => Err(TaskFailure::permanent(format!(
                "server {} does not exist (provider {} reports it absent); create it first",
                server.hostname, server.provider
            ))),
        }
    }

    fn env(&self, task: &Task, attempt: u32, server: &Server, facts: &ServerFacts) -> Vec<(String, String)> {
        let op = &self.plan.operations[task.operation];
        let mut env = vec![
            ("DROVER_RUN_ID".to_string(), self.run_id.clone()),
            ("DROVER_TASK_ID".to_string(), task.id.clone()),
            ("DROVER_OPERATION".to_string(), op.id.clone()),
            (
                "DROVER_IDEMPOTENCY_KEY".to_string(),
                Self::idempotency_key(&self.run_id, &task.id),
            ),
            ("DROVER_ATTEMPT".to_string(), attempt.to_string()),
            ("DROVER_SERVER".to_string(), server.hostname.clone()),
            ("DROVER_ADDRESS".to_string(), facts.address.clone()),
            ("DROVER_ROOT".to_string(), facts.root.clone()),
            ("DROVER_TASKSERV".to_string(), task.taskserv.clone().unwrap_or_default()),
        ];
        for (k, v) in &self.plan.workflow.variables {
            env.push((
                format!("DROVER_VAR_{}", k.to_ascii_uppercase().replace('-', "_")),
                v.clone(),
            ));
        }
        // Secrets travel in the environment, never on a command line.
        env.extend(self.secrets.env.iter().cloned());
        env
    }

    /// The scripts folder of a taskserv.
    fn scripts_dir(&self, taskserv: &str) -> Result<PathBuf, TaskFailure> {
        let decl = self
            .catalog
            .taskservs
            .get(taskserv)
            .ok_or_else(|| TaskFailure::permanent(format!("taskserv {taskserv} is not in the catalog")))?;
        decl.origin
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("scripts"))
            .ok_or_else(|| TaskFailure::permanent(format!("taskserv {taskserv} has no folder")))
    }

    /// A taskserv's scripts, read once per run (links resolved): sent
    /// with each command, or a copy of the folder to stage (see
    /// [`Scripts`]).
    async fn scripts_of(&self, taskserv: &str) -> Result<Arc<Scripts>, TaskFailure> {
        let cell = self
            .scripts
            .lock()
            .await
            .entry(taskserv.to_string())
            .or_default()
            .clone();
        let scripts = cell
            .get_or_try_init(|| async {
                let local = self.scripts_dir(taskserv)?;
                let copy = self.paths.work_dir(&self.run_id).join("scripts").join(taskserv);
                let (from, to) = (local.clone(), copy.clone());
                let made = tokio::task::spawn_blocking(move || Scripts::read(&from, &to))
                    .await
                    .map_err(|e| TaskFailure::transient(format!("reading the scripts of {taskserv}: {e}")))?;
                let scripts = made.map_err(|e| {
                    TaskFailure::transient(format!(
                        "cannot read the scripts of {taskserv} from {}: {e}",
                        local.display()
                    ))
                })?;
                Ok::<_, TaskFailure>(Arc::new(scripts))
            })
            .await?;
        Ok(scripts.clone())
    }

    /// The taskserv's scripts folder on the server (staged once per run
    /// and host, as one archive): the directory holding it there.
    async fn stage_scripts(
        &self,
        conn: &HostConn,
        run_dir: &str,
        taskserv: &str,
        copy: &Path,
    ) -> Result<String, TaskFailure> {
        let remote = format!("{run_dir}/taskserv-{taskserv}");
        let mut staged = conn.staged.lock().await;
        if staged.contains(taskserv) {
            return Ok(remote);
        }
        conn.transport
            .stage(copy, &remote)
            .await
            .map_err(|e| self.transport_failure(&e))?;
        staged.insert(taskserv.to_string());
        Ok(remote)
    }

    /// The taskserv's templates rendered for `server`, as files of the
    /// command that uses them, in the run's directory there: written when
    /// it starts and removed when it ends (owner-only; they may hold
    /// secrets). None when it ships none.
    fn templates(
        &self,
        run_dir: &str,
        taskserv: &str,
        server: &Server,
        task: &str,
    ) -> Result<Option<Files>, TaskFailure> {
        let Some(decl) = self.catalog.taskservs.get(taskserv) else {
            return Ok(None);
        };
        let Some(src) = crate::template::templates_dir(&decl.origin) else {
            return Ok(None);
        };
        let ctx = crate::template::context(taskserv, server, &self.plan.workflow.variables, &self.secrets.tree);
        let rendered = crate::template::render_dir(&src, &ctx)
            .map_err(|e| TaskFailure::permanent(self.mask.mask(&e.to_string())))?;
        let dir = format!("{run_dir}/templates-{}", Self::log_file(Path::new(""), task).display());
        Ok(Some(Files {
            dir,
            files: rendered.into_iter().map(|r| (r.name, r.content)).collect(),
        }))
    }

    /// Run a shell program on `server` with the task's environment,
    /// streaming output to the task log.
    async fn shell(
        &self,
        task: &Task,
        attempt: u32,
        on: On<'_>,
        what: What<'_>,
        how: How,
        cancel: CancellationToken,
    ) -> Result<Outcome, TaskFailure> {
        let On { server, facts } = on;
        let How { timeout, last } = how;
        let conn = self
            .pool
            .host(server, facts)
            .await
            .map_err(|e| self.transport_failure(&e))?;
        let run_dir = conn
            .run_dir(&self.run_id)
            .await
            .map_err(|e| self.transport_failure(&e))?;
        let (args, script) = match what {
            What::Script(taskserv, script) => match &*self.scripts_of(taskserv).await? {
                Scripts::Inline(texts) => {
                    let text = texts.get(script.file_name()).ok_or_else(|| {
                        TaskFailure::permanent(format!("taskserv {taskserv} has no scripts/{}", script.file_name()))
                    })?;
                    (vec![script.file_name().to_string()], Some(text.clone()))
                }
                Scripts::Folder(copy) => {
                    let dir = self.stage_scripts(&conn, &run_dir, taskserv, copy).await?;
                    (vec![format!("{dir}/{}", script.file_name())], None)
                }
            },
            What::Command(c) => (vec!["health-check".to_string()], Some(c)),
        };
        let mut env = self.env(task, attempt, server, facts);
        let files = match &task.taskserv {
            Some(t) => self.templates(&run_dir, t, server, &task.id)?,
            None => None,
        };
        if let Some(files) = &files {
            env.push(("DROVER_TEMPLATES".to_string(), files.dir.clone()));
        }
        // The run's directory itself: made by the command's one `mkdir`
        // (a `work` below it would cost every host another).
        let cwd = PathBuf::from(&run_dir);
        let cmd = Command {
            program: "/bin/sh".into(),
            args,
            script,
            files,
            remove_run_dir: last && !self.paths.keep_remote_dirs,
            env,
            cwd,
            timeout: Some(timeout),
            log: Self::log_file(&self.paths.logs_dir, &task.id),
            mask: self.mask.clone(),
        };
        let result = self.exec_on(conn.transport.as_ref(), task, cmd, cancel).await;
        if last {
            // The folders staged there went with the directory.
            conn.staged.lock().await.clear();
        }
        result
    }

    /// Run through `transport`, streaming lines to the live view.
    async fn exec_on(
        &self,
        transport: &dyn Transport,
        task: &Task,
        cmd: Command,
        cancel: CancellationToken,
    ) -> Result<Outcome, TaskFailure> {
        let (tx, forward) = match &self.lines {
            Some(out) => {
                let (tx, mut rx) = mpsc::unbounded_channel::<LogLine>();
                let out = out.clone();
                let id = task.id.clone();
                let forward = tokio::spawn(async move {
                    while let Some(line) = rx.recv().await {
                        let _ = out.send(TaskLine { task: id.clone(), line });
                    }
                });
                (Some(tx), Some(forward))
            }
            None => (None, None),
        };
        let result = transport.exec(cmd, tx, cancel).await;
        if let Some(f) = forward {
            let _ = f.await;
        }
        result.map_err(|e| self.transport_failure(&e))
    }

    /// Runs `script` of the task's taskserv (and its health check after
    /// install and update). `forward`: the task runs as planned (not as
    /// an undo), so that its last command may end the run on the server.
    async fn run_script(
        &self,
        task: &Task,
        attempt: u32,
        script: Script,
        forward: bool,
        cancel: CancellationToken,
    ) -> Result<(), TaskFailure> {
        let (Some(server_name), Some(taskserv)) = (&task.server, &task.taskserv) else {
            return Err(TaskFailure::permanent(format!(
                "task {} names no server or taskserv",
                task.id
            )));
        };
        let server = self.server(server_name)?;
        let facts = self.facts(server, &task.id).await?;
        let timeout = Duration::from_secs(self.plan.operations[task.operation].timeout);
        let health_check = if matches!(script, Script::Install | Script::Update) {
            self.catalog
                .taskservs
                .get(taskserv)
                .and_then(|d| d.health_check.clone())
        } else {
            None
        };
        let last_here = forward && self.is_last_on(server_name);
        let outcome = self
            .shell(
                task,
                attempt,
                On { server, facts: &facts },
                What::Script(taskserv, script),
                How {
                    timeout,
                    last: last_here && health_check.is_none(),
                },
                cancel.clone(),
            )
            .await?;
        check_outcome(&outcome, &format!("{} of {taskserv}", script.file_name()), timeout)?;
        if let Some(hc) = health_check {
            let timeout = Duration::from_secs(hc.timeout);
            let mut last = TaskFailure::transient("");
            for n in 0..=hc.retries {
                if n > 0 {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = cancel.cancelled() => return Err(TaskFailure::cancelled("health check cancelled")),
                    }
                }
                self.log(&task.id, &format!("--- health check {}: {}\n", n + 1, hc.command))
                    .await;
                let outcome = self
                    .shell(
                        task,
                        attempt,
                        On { server, facts: &facts },
                        What::Command(hc.command.clone()),
                        How {
                            timeout,
                            last: last_here,
                        },
                        cancel.clone(),
                    )
                    .await?;
                match check_outcome(&outcome, "health check", timeout) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind == FailureKind::Cancelled => return Err(e),
                    Err(e) => last = e,
                }
            }
            return Err(TaskFailure {
                kind: last.kind,
                message: format!("{} (`{}`, {} tries)", last.message, hc.command, hc.retries + 1),
                found: Found::new(),
            });
        }
        Ok(())
    }

    /// The operation's shell command on the task's server (`drover exec`):
    /// in the login user's home directory over SSH, with no environment
    /// of drover's. Its exit status and output are what the attempt
    /// found out, journaled whether it succeeded or not; an exit status
    /// other than 0 or a signal is the command's answer, not worth another
    /// attempt (permanent).
    async fn run_command(&self, task: &Task, cancel: CancellationToken) -> Result<Found, TaskFailure> {
        let server = self.server(task.server.as_deref().unwrap_or_default())?;
        let facts = self.facts(server, &task.id).await?;
        let command = self.plan.workflow.operations[task.operation]
            .command
            .clone()
            .ok_or_else(|| TaskFailure::permanent(format!("task {} has no command", task.id)))?;
        let conn = self
            .pool
            .host(server, &facts)
            .await
            .map_err(|e| self.transport_failure(&e))?;
        let cwd = match facts.reach {
            Reach::Local => PathBuf::from(
                conn.run_dir(&self.run_id)
                    .await
                    .map_err(|e| self.transport_failure(&e))?,
            ),
            Reach::Ssh(_) => PathBuf::new(),
        };
        let timeout = Duration::from_secs(self.plan.operations[task.operation].timeout);
        let cmd = crate::fleet::shell_command(
            &command,
            cwd,
            Some(timeout),
            Self::log_file(&self.paths.logs_dir, &task.id),
            self.mask.clone(),
        );
        let (tx, rx) = mpsc::unbounded_channel::<LogLine>();
        let forward = self.lines.clone().map(|out| (out, task.id.clone()));
        let collect = tokio::spawn(crate::fleet::capture(rx, forward));
        let result = conn.transport.exec(cmd, Some(tx), cancel).await;
        let captured = collect.await.unwrap_or_default();
        let outcome = result.map_err(|e| self.transport_failure(&e))?;
        let found = captured.found(&outcome);
        match check_outcome(&outcome, "the command", timeout) {
            Ok(()) => Ok(found),
            Err(mut f) => {
                if matches!(outcome, Outcome::Exited(_) | Outcome::Signaled(_)) {
                    f.kind = FailureKind::Permanent;
                }
                f.found = found;
                Err(f)
            }
        }
    }

    /// A provider call on `server`, bounded by the operation's timeout and
    /// the cancellation token.
    async fn server_call(&self, task: &Task, cancel: CancellationToken) -> Result<Found, TaskFailure> {
        let server = self.server(task.server.as_deref().unwrap_or_default())?;
        let provider = self.provider(&server.provider)?;
        let ctx = self.ctx(&server.provider, Some(server), &task.id);
        let call = async {
            match task.action {
                Action::CreateServer => {
                    let facts = provider.create(server, &ctx).await?;
                    self.facts.lock().await.insert(server.hostname.clone(), facts.clone());
                    Ok(found(&facts))
                }
                Action::UpdateServer => {
                    let facts = provider.update(server, &ctx).await?;
                    self.facts.lock().await.insert(server.hostname.clone(), facts.clone());
                    Ok(found(&facts))
                }
                Action::DeleteServer => {
                    // The run's directories on the server go while it still
                    // answers: a provider that only forgets its servers
                    // (static) leaves the machine running, and the end of
                    // the run no longer knows this connection.
                    self.pool.release(&server.hostname, self.paths.keep_remote_dirs).await;
                    provider.delete(server, &ctx).await?;
                    self.forget(&server.hostname).await;
                    Ok(Found::new())
                }
                _ => match provider.status(server, &ctx).await? {
                    ServerStatus::Running(facts) => Ok(found(&facts)),
                    ServerStatus::Down(why) => {
                        Err(TaskFailure::transient(format!("server {}: {why}", server.hostname)))
                    }
                    ServerStatus::Absent => {
                        Err(TaskFailure::permanent(format!("server {} is absent", server.hostname)))
                    }
                },
            }
        };
        let timeout = Duration::from_secs(self.plan.operations[task.operation].timeout);
        let outcome = tokio::select! {
            r = tokio::time::timeout(timeout, call) => r.unwrap_or_else(|_| Err(TaskFailure::transient(format!(
                "provider {} did not answer within {}s", server.provider, timeout.as_secs()
            )))),
            () = cancel.cancelled() => Err(TaskFailure::cancelled("cancelled")),
        };
        if let Ok(found) = &outcome {
            let what = found
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            self.log(&task.id, &format!("{} {}: {what}\n", task.action, server.hostname))
                .await;
        }
        outcome
    }

    /// A server is gone: its facts and its connection are forgotten.
    async fn forget(&self, server: &str) {
        self.facts.lock().await.remove(server);
        self.pool.forget(server).await;
    }
}

/// What a server task journals: the address and what the provider found.
fn found(facts: &ServerFacts) -> Found {
    let mut found = facts.found.clone();
    found.insert("address".into(), facts.address.clone());
    found
}

/// What a task runs: one of its taskserv's scripts, or a shell command
/// (health checks, wait conditions).
/// A taskserv's scripts, as a run uses them.
#[derive(Debug)]
enum Scripts {
    /// Only drover's own lifecycle scripts (install.sh, remove.sh, ...),
    /// none over [`INLINE_SCRIPT`] bytes and none that finds its own path
    /// (`$0`, `BASH_SOURCE`): each is sent with the command that runs it,
    /// as its text; nothing is staged.
    Inline(BTreeMap<String, String>),
    /// Anything else (a library the scripts source, a file they read, a
    /// script that looks for its folder): this copy of the folder (links
    /// resolved, files mode 700), staged once on each host that needs it,
    /// as one archive.
    Folder(PathBuf),
}

/// The largest script sent inline (see [`Scripts::Inline`]).
const INLINE_SCRIPT: u64 = 64 * 1024;

impl Scripts {
    /// Reads the scripts folder `from`; copies it to `copy` when it must be
    /// staged.
    fn read(from: &Path, copy: &Path) -> std::io::Result<Scripts> {
        let mut texts = BTreeMap::new();
        let mut inline = true;
        for entry in std::fs::read_dir(from)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // Follows links, as the copy does.
            let meta = std::fs::metadata(&path)?;
            let lifecycle = Script::ALL.iter().any(|s| s.file_name() == name);
            if !meta.is_file() || !lifecycle || meta.len() > INLINE_SCRIPT {
                inline = false;
                break;
            }
            match String::from_utf8(std::fs::read(&path)?) {
                Ok(text) if !text.contains('\0') && !finds_own_path(&text) => {
                    texts.insert(name, text);
                }
                _ => {
                    inline = false;
                    break;
                }
            }
        }
        if inline {
            return Ok(Scripts::Inline(texts));
        }
        let _ = std::fs::remove_dir_all(copy);
        std::fs::create_dir_all(copy)?;
        for e in std::fs::read_dir(from)?.flatten() {
            if e.path().is_file() {
                let dest = copy.join(e.file_name());
                std::fs::copy(e.path(), &dest)?;
                std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            }
        }
        Ok(Scripts::Folder(copy.to_path_buf()))
    }
}

/// Whether a script looks for its own path (and so, likely, its folder).
fn finds_own_path(text: &str) -> bool {
    text.contains("$0") || text.contains("${0") || text.contains("BASH_SOURCE")
}

enum What<'a> {
    Script(&'a str, Script),
    Command(String),
}

/// How a command runs: its time limit, and whether it is the run's last
/// on the server (see [`Command::remove_run_dir`]).
#[derive(Clone, Copy)]
struct How {
    timeout: Duration,
    last: bool,
}

/// The server a command runs on, with what its provider reports.
#[derive(Clone, Copy)]
struct On<'a> {
    server: &'a Server,
    facts: &'a ServerFacts,
}

/// How a command's end counts: a non-zero exit, a signal or a timeout
/// are transient (the next attempt may do better), a cancel is not a
/// failure of the command.
fn check_outcome(outcome: &Outcome, what: &str, timeout: Duration) -> Result<(), TaskFailure> {
    match outcome {
        Outcome::Exited(0) => Ok(()),
        Outcome::Exited(code) => Err(TaskFailure::transient(format!("{what} exited with status {code}"))),
        Outcome::Signaled(sig) => Err(TaskFailure::transient(format!("{what} was killed by signal {sig}"))),
        Outcome::TimedOut => Err(TaskFailure::transient(format!(
            "{what} timed out after {}s and was killed",
            timeout.as_secs()
        ))),
        Outcome::Cancelled => Err(TaskFailure::cancelled(format!("{what} was cancelled"))),
    }
}

#[async_trait::async_trait]
impl TaskExecutor for Runner {
    async fn run(&self, task: &Task, attempt: u32, cancel: CancellationToken) -> Result<Found, TaskFailure> {
        self.log(&task.id, &format!("--- attempt {attempt}: {} ---\n", task.action))
            .await;
        let result = match task.action {
            Action::Install | Action::Update | Action::Remove | Action::Check => {
                let script = match task.action {
                    Action::Install => Script::Install,
                    Action::Update => Script::Update,
                    Action::Remove => Script::Remove,
                    _ => Script::Check,
                };
                let done = self.run_script(task, attempt, script, true, cancel).await;
                if done.is_ok()
                    && let Some(server) = &task.server
                {
                    self.done_on(server);
                }
                done.map(|()| Found::new())
            }
            Action::CreateNetwork => {
                let p = task.provider.as_deref().unwrap_or_default();
                let provider = self.provider(p)?;
                provider
                    .create_network(&self.ctx(p, None, &task.id))
                    .await
                    .map(|()| Found::new())
                    .map_err(TaskFailure::from)
            }
            Action::CreateServer | Action::UpdateServer | Action::DeleteServer | Action::CheckServer => {
                self.server_call(task, cancel).await
            }
            Action::Exec => self.run_command(task, cancel).await,
        };
        if let Err(e) = &result {
            self.log(
                &task.id,
                &format!("--- attempt {attempt} failed ({}): {}\n", e.kind, e.message),
            )
            .await;
        }
        result
    }

    fn compensation(&self, task: &Task) -> Compensation {
        let ships = |s: Script| {
            task.taskserv
                .as_deref()
                .and_then(|t| self.catalog.taskservs.get(t))
                .is_some_and(|d| d.scripts.contains(&s))
        };
        let taskserv = task.taskserv.as_deref().unwrap_or("?");
        match task.action {
            Action::Check | Action::CheckServer => Compensation::Nothing,
            Action::Exec => Compensation::Impossible("what an ad-hoc command did is not known to drover".into()),
            Action::Remove => Compensation::Impossible(
                "a removed taskserv is not reinstalled by rollback; re-run the workflow".into(),
            ),
            Action::DeleteServer => {
                Compensation::Impossible("a deleted server is not recreated by rollback; re-run the workflow".into())
            }
            Action::UpdateServer => Compensation::Impossible("providers cannot revert a server update".into()),
            Action::Install if !ships(Script::Remove) => {
                Compensation::Impossible(format!("taskserv {taskserv} ships no remove.sh"))
            }
            Action::Update if !ships(Script::Rollback) => {
                Compensation::Impossible(format!("taskserv {taskserv} ships no rollback.sh"))
            }
            Action::Install => Compensation::Run("remove".into()),
            Action::Update => Compensation::Run("rollback".into()),
            Action::CreateServer => {
                // A server that existed before drover is forgotten, not
                // destroyed: the journal says so.
                let destroys = task
                    .server
                    .as_deref()
                    .and_then(|s| self.server(s).ok())
                    .and_then(|s| self.providers.get(&s.provider))
                    .is_none_or(|p| p.destroys_servers());
                Compensation::Run(if destroys { "delete server" } else { "forget server" }.into())
            }
            Action::CreateNetwork => Compensation::Run("delete network".into()),
        }
    }

    async fn undo(&self, task: &Task, cancel: CancellationToken) -> Undo {
        let result = match self.compensation(task) {
            Compensation::Nothing => return Undo::Nothing,
            Compensation::Impossible(why) => return Undo::Impossible(why),
            Compensation::Run(action) => {
                self.log(&task.id, &format!("--- undo: {action} ---\n")).await;
                match task.action {
                    Action::Install => self.run_script(task, 0, Script::Remove, false, cancel).await,
                    Action::Update => self.run_script(task, 0, Script::Rollback, false, cancel).await,
                    Action::CreateServer => {
                        let mut delete = task.clone();
                        delete.action = Action::DeleteServer;
                        self.server_call(&delete, cancel).await.map(|_| ())
                    }
                    Action::CreateNetwork => {
                        let p = task.provider.as_deref().unwrap_or_default();
                        match self.provider(p) {
                            Ok(provider) => provider
                                .delete_network(&self.ctx(p, None, &task.id))
                                .await
                                .map_err(TaskFailure::from),
                            Err(e) => Err(e),
                        }
                    }
                    _ => Ok(()),
                }
            }
        };
        match result {
            Ok(()) => Undo::Done,
            Err(e) => {
                self.log(&task.id, &format!("--- undo failed ({}): {}\n", e.kind, e.message))
                    .await;
                Undo::Failed(e)
            }
        }
    }

    async fn probe(&self, condition: &WaitCondition, cancel: CancellationToken) -> Result<(), TaskFailure> {
        let timeout = Duration::from_secs(condition.interval.max(1));
        let mut env = vec![("DROVER_RUN_ID".to_string(), self.run_id.clone())];
        let log = self.paths.logs_dir.join("wait-conditions.log");
        // Where it runs: the server's transport in the run's directory
        // there, or here.
        let (transport, cwd): (Arc<dyn Transport>, PathBuf) = match &condition.server {
            Some(name) => {
                let server = self.server(name)?;
                let facts = self.facts(server, "wait").await?;
                env.push(("DROVER_SERVER".to_string(), name.clone()));
                env.push(("DROVER_ROOT".to_string(), facts.root.clone()));
                let conn = self
                    .pool
                    .host(server, &facts)
                    .await
                    .map_err(|e| self.transport_failure(&e))?;
                let run_dir = conn
                    .run_dir(&self.run_id)
                    .await
                    .map_err(|e| self.transport_failure(&e))?;
                (conn.transport.clone(), PathBuf::from(run_dir))
            }
            None => {
                let here = LocalTransport::new(self.paths.data_dir.join("work").join("orchestrator"));
                let dir = here
                    .run_dir(&self.run_id)
                    .await
                    .map_err(|e| self.transport_failure(&e))?;
                (Arc::new(here), PathBuf::from(dir))
            }
        };
        let cmd = Command {
            program: "/bin/sh".into(),
            args: vec!["wait-condition".to_string()],
            script: Some(condition.command.clone()),
            files: None,
            remove_run_dir: false,
            env,
            cwd,
            timeout: Some(timeout),
            log,
            mask: self.mask.clone(),
        };
        let outcome = transport
            .exec(cmd, None, cancel)
            .await
            .map_err(|e| self.transport_failure(&e))?;
        check_outcome(&outcome, "wait condition", timeout)
    }

    async fn finish(&self) {
        self.pool.finish(self.paths.keep_remote_dirs).await;
        let _ = tokio::fs::remove_dir_all(self.paths.work_dir(&self.run_id)).await;
        let orchestrator = self.paths.data_dir.join("work").join("orchestrator").join(&self.run_id);
        let _ = tokio::fs::remove_dir_all(orchestrator).await;
    }
}
