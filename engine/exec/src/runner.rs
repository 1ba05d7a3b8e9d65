//! Running one attempt of a task: a provider call, or a taskserv script on
//! its server through a transport.
//!
//! The scheduler knows nothing of scripts or providers; it calls a
//! [`TaskExecutor`]. [`Runner`] is the real one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_core::Plan;
use drover_core::model::{Catalog, Connection, Script, Server, WaitCondition};
use drover_core::plan::{Action, Task};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::mask::Masker;
use crate::provider::{Provider, ProviderContext, ServerFacts, ServerStatus};
use crate::transport::ssh::{HostKeyPolicy, RunDirs, SshError, SshTarget, SshTransport};
use crate::transport::{Command, LogLine, Outcome, Transport};

/// Where a run keeps its files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Root directories of `local` hosts (persist across runs).
    pub hosts_dir: PathBuf,
    /// Per-server working directories of this run.
    pub work_dir: PathBuf,
    /// Task logs and reports of this run.
    pub logs_dir: PathBuf,
    /// The `local` provider's SSH hosts (keys, known_hosts, daemons).
    pub fleet_dir: PathBuf,
    /// known_hosts for servers the provider does not describe.
    pub known_hosts: PathBuf,
    /// Keep the run's directories on SSH hosts after the run.
    pub keep_remote_dirs: bool,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure(pub String);

/// What undoing a task came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// Nothing to undo (checks change nothing).
    Nothing,
    /// The compensation ran and succeeded.
    Done,
    /// The compensation ran and failed.
    Failed(String),
    /// The effect cannot be undone; why.
    Impossible(String),
}

/// Runs tasks for the scheduler.
#[async_trait::async_trait]
pub trait TaskExecutor: Send + Sync + std::fmt::Debug {
    /// Run one attempt of `task`.
    async fn run(&self, task: &Task, attempt: u32, cancel: CancellationToken) -> Result<(), TaskFailure>;

    /// Undo a task that succeeded.
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

/// The real executor: providers for server tasks, scripts through the
/// local transport for taskserv tasks.
#[derive(Debug)]
pub struct Runner {
    run_id: String,
    plan: Arc<Plan>,
    catalog: Arc<Catalog>,
    providers: BTreeMap<String, Arc<dyn Provider>>,
    transport: Arc<dyn Transport>,
    paths: Paths,
    lines: Option<mpsc::UnboundedSender<TaskLine>>,
    secrets: Arc<RunSecrets>,
    mask: Masker,
    // One connection per SSH host for the whole run; the cell makes
    // concurrent first tasks on a host share one connect.
    ssh: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<HostConn>>>>>,
}

impl Runner {
    /// A runner for one run.
    pub fn new(
        run_id: String,
        plan: Arc<Plan>,
        catalog: Arc<Catalog>,
        providers: BTreeMap<String, Arc<dyn Provider>>,
        transport: Arc<dyn Transport>,
        paths: Paths,
        lines: Option<mpsc::UnboundedSender<TaskLine>>,
    ) -> Runner {
        Runner {
            run_id,
            plan,
            catalog,
            providers,
            transport,
            paths,
            lines,
            secrets: Arc::new(RunSecrets::default()),
            mask: Masker::none(),
            ssh: tokio::sync::Mutex::new(HashMap::new()),
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
            .ok_or_else(|| TaskFailure(format!("server {name} is not in the workflow")))
    }

    fn provider(&self, name: &str) -> Result<&Arc<dyn Provider>, TaskFailure> {
        self.providers
            .get(name)
            .ok_or_else(|| TaskFailure(format!("provider {name} cannot be driven by this build")))
    }

    fn ctx(&self, task: &str) -> ProviderContext {
        ProviderContext {
            hosts_dir: self.paths.hosts_dir.clone(),
            fleet_dir: self.paths.fleet_dir.clone(),
            idempotency_key: Self::idempotency_key(&self.run_id, task),
        }
    }

    async fn log(&self, task: &str, text: &str) {
        let text = self.mask.mask(text);
        let text = text.as_str();
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

    /// The facts of a server that must already exist.
    async fn facts(&self, server: &Server, task: &str) -> Result<ServerFacts, TaskFailure> {
        let provider = self.provider(&server.provider)?;
        match provider.status(server, &self.ctx(task)).await {
            Ok(ServerStatus::Running(f)) => Ok(f),
            Ok(ServerStatus::Absent) => Err(TaskFailure(format!(
                "server {} does not exist (provider {} reports it absent); create it first",
                server.hostname, server.provider
            ))),
            Err(e) => Err(TaskFailure(e.to_string())),
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
            ("DROVER_ROOT".to_string(), facts.root.display().to_string()),
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

    /// Render the taskserv's templates for this server into the task's
    /// working directory (owner-only: they may hold secrets) and return
    /// the directory, or None when it ships none.
    async fn render_templates(&self, taskserv: &str, server: &Server) -> Result<Option<PathBuf>, TaskFailure> {
        let Some(decl) = self.catalog.taskservs.get(taskserv) else {
            return Ok(None);
        };
        let Some(src) = crate::template::templates_dir(&decl.origin) else {
            return Ok(None);
        };
        let ctx = crate::template::context(taskserv, server, &self.plan.workflow.variables, &self.secrets.tree);
        let rendered =
            crate::template::render_dir(&src, &ctx).map_err(|e| TaskFailure(self.mask.mask(&e.to_string())))?;
        let dir = self
            .paths
            .work_dir
            .join(&server.hostname)
            .join("templates")
            .join(taskserv);
        let write = async {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).await?;
            for r in &rendered {
                let mut f = tokio::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(dir.join(&r.name))
                    .await?;
                f.write_all(r.content.as_bytes()).await?;
            }
            Ok::<(), std::io::Error>(())
        };
        write
            .await
            .map_err(|e| TaskFailure(format!("cannot write rendered templates to {}: {e}", dir.display())))?;
        Ok(Some(dir))
    }

    fn script(&self, taskserv: &str, script: Script) -> Result<PathBuf, TaskFailure> {
        let decl = self
            .catalog
            .taskservs
            .get(taskserv)
            .ok_or_else(|| TaskFailure(format!("taskserv {taskserv} is not in the catalog")))?;
        let dir = decl
            .origin
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| TaskFailure(format!("taskserv {taskserv} has no folder")))?;
        Ok(dir.join("scripts").join(script.file_name()))
    }

    /// Run a shell program on `server` (local connection) with the task's
    /// environment, streaming output to the task log.
    async fn shell(
        &self,
        task: &Task,
        attempt: u32,
        on: On<'_>,
        what: What<'_>,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<Outcome, TaskFailure> {
        let On { server, facts } = on;
        let templates = match &task.taskserv {
            Some(t) => self.render_templates(t, server).await?,
            None => None,
        };
        let result = match server.connection {
            Connection::Local => {
                self.shell_here(task, attempt, server, facts, what, &templates, timeout, cancel)
                    .await
            }
            Connection::Ssh => {
                self.shell_ssh(task, attempt, server, facts, what, &templates, timeout, cancel)
                    .await
            }
        };
        // The rendered templates may hold secrets: they live only as long
        // as the script that uses them.
        if let Some(dir) = &templates {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        result
    }

    /// A script of a server with a local connection: a process here.
    #[allow(clippy::too_many_arguments)]
    async fn shell_here(
        &self,
        task: &Task,
        attempt: u32,
        server: &Server,
        facts: &ServerFacts,
        what: What<'_>,
        templates: &Option<PathBuf>,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<Outcome, TaskFailure> {
        let cwd = self.paths.work_dir.join(&server.hostname);
        tokio::fs::create_dir_all(&cwd)
            .await
            .map_err(|e| TaskFailure(format!("cannot create working directory {}: {e}", cwd.display())))?;
        let args = match what {
            What::Script(taskserv, script) => vec![self.script(taskserv, script)?.display().to_string()],
            What::Command(c) => vec!["-c".to_string(), c],
        };
        let mut env = self.env(task, attempt, server, facts);
        if let Some(dir) = templates {
            env.push(("DROVER_TEMPLATES".to_string(), dir.display().to_string()));
        }
        self.exec_on(self.transport.as_ref(), task, args, env, cwd, timeout, cancel)
            .await
    }

    /// A script of a server reached over SSH: its taskserv's scripts and
    /// rendered templates travel into the run's directory on the host
    /// (/tmp/drover-<run>), over the one connection drover keeps to it.
    #[allow(clippy::too_many_arguments)]
    async fn shell_ssh(
        &self,
        task: &Task,
        attempt: u32,
        server: &Server,
        facts: &ServerFacts,
        what: What<'_>,
        templates: &Option<PathBuf>,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<Outcome, TaskFailure> {
        let conn = self.conn(server, facts).await?;
        let fail = |e: SshError| TaskFailure(self.mask.mask(&e.to_string()));
        let args = match what {
            What::Script(taskserv, script) => {
                let dir = self.upload_scripts(&conn, taskserv).await?;
                vec![format!("{dir}/{}", script.file_name())]
            }
            What::Command(c) => vec!["-c".to_string(), c],
        };
        let mut env = self.env(task, attempt, server, facts);
        let remote_templates = match (templates, &task.taskserv) {
            (Some(local), Some(t)) => {
                let remote = format!("{}/templates-{t}", conn.run_dir);
                conn.transport.upload(local, &remote, 0o700).await.map_err(fail)?;
                env.push(("DROVER_TEMPLATES".to_string(), remote.clone()));
                Some(remote)
            }
            _ => None,
        };
        let cwd = PathBuf::from(format!("{}/work", conn.run_dir));
        let result = self
            .exec_on(&conn.transport, task, args, env, cwd, timeout, cancel)
            .await;
        if let Some(remote) = remote_templates {
            let _ = conn.transport.remove_dir(&remote).await;
        }
        result
    }

    /// Run through `transport`, streaming lines to the live view.
    #[allow(clippy::too_many_arguments)]
    async fn exec_on(
        &self,
        transport: &dyn Transport,
        task: &Task,
        args: Vec<String>,
        env: Vec<(String, String)>,
        cwd: PathBuf,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<Outcome, TaskFailure> {
        let cmd = Command {
            program: "/bin/sh".into(),
            args,
            env,
            cwd,
            timeout: Some(timeout),
            log: Self::log_file(&self.paths.logs_dir, &task.id),
            mask: self.mask.clone(),
        };
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
        result.map_err(|e| TaskFailure(self.mask.mask(&e.to_string())))
    }

    /// The connection to `server`, made once for the whole run; concurrent
    /// tasks on one host wait for the same connection.
    async fn conn(&self, server: &Server, facts: &ServerFacts) -> Result<Arc<HostConn>, TaskFailure> {
        let cell = {
            let mut pool = self.ssh.lock().await;
            pool.entry(server.hostname.clone()).or_default().clone()
        };
        let conn = cell
            .get_or_try_init(|| async {
                let target = match &facts.ssh {
                    Some(f) => SshTarget {
                        host: server.hostname.clone(),
                        address: facts.address.clone(),
                        port: f.port,
                        user: f.user.clone(),
                        key_file: Some(f.key_file.clone()),
                        use_agent: false,
                        known_hosts: f.known_hosts.clone(),
                        host_key_policy: HostKeyPolicy::Verify,
                        connect_timeout: Duration::from_secs(10),
                        keepalive: Duration::from_secs(15),
                    },
                    None => SshTarget {
                        host: server.hostname.clone(),
                        address: server.address.clone().unwrap_or_else(|| facts.address.clone()),
                        port: server.ssh.port,
                        user: server.ssh.user.clone(),
                        key_file: server.ssh.key_file.as_ref().map(PathBuf::from),
                        use_agent: server.ssh.key_file.is_none(),
                        known_hosts: self.paths.known_hosts.clone(),
                        host_key_policy: HostKeyPolicy::Verify,
                        connect_timeout: Duration::from_secs(10),
                        keepalive: Duration::from_secs(15),
                    },
                };
                let transport = SshTransport::connect(&target)
                    .await
                    .map_err(|e| TaskFailure(e.to_string()))?;
                let run_dir = transport
                    .temp_dir(&self.run_id)
                    .await
                    .map_err(|e| TaskFailure(e.to_string()))?;
                Ok::<_, TaskFailure>(Arc::new(HostConn {
                    transport,
                    run_dir,
                    uploaded: tokio::sync::Mutex::new(HashSet::new()),
                }))
            })
            .await?;
        Ok(conn.clone())
    }

    /// The taskserv's scripts on the host (uploaded once per run), with
    /// links resolved: the remote directory holding them.
    async fn upload_scripts(&self, conn: &HostConn, taskserv: &str) -> Result<String, TaskFailure> {
        let remote = format!("{}/taskserv-{taskserv}", conn.run_dir);
        let mut uploaded = conn.uploaded.lock().await;
        if uploaded.contains(taskserv) {
            return Ok(remote);
        }
        let local = self
            .script(taskserv, Script::Install)?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| TaskFailure(format!("taskserv {taskserv} has no scripts folder")))?;
        // Staged with links resolved (fs::copy follows them), then sent as
        // one directory: the transport refuses links, and sends a tree in
        // one go.
        let staged = self.paths.work_dir.join("payload").join(taskserv);
        let stage = || -> std::io::Result<()> {
            std::fs::create_dir_all(&staged)?;
            for e in std::fs::read_dir(&local)?.flatten() {
                if e.path().is_file() {
                    let to = staged.join(e.file_name());
                    std::fs::copy(e.path(), &to)?;
                    std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
                }
            }
            Ok(())
        };
        stage().map_err(|e| {
            TaskFailure(format!(
                "cannot stage the scripts of {taskserv} from {}: {e}",
                local.display()
            ))
        })?;
        conn.transport
            .upload(&staged, &remote, 0o700)
            .await
            .map_err(|e| TaskFailure(e.to_string()))?;
        uploaded.insert(taskserv.to_string());
        Ok(remote)
    }

    async fn run_script(
        &self,
        task: &Task,
        attempt: u32,
        script: Script,
        cancel: CancellationToken,
    ) -> Result<(), TaskFailure> {
        let (Some(server_name), Some(taskserv)) = (&task.server, &task.taskserv) else {
            return Err(TaskFailure(format!("task {} names no server or taskserv", task.id)));
        };
        let server = self.server(server_name)?;
        let facts = self.facts(server, &task.id).await?;
        let timeout = Duration::from_secs(self.plan.operations[task.operation].timeout);
        let outcome = self
            .shell(
                task,
                attempt,
                On { server, facts: &facts },
                What::Script(taskserv, script),
                timeout,
                cancel.clone(),
            )
            .await?;
        check_outcome(&outcome, &format!("{} of {taskserv}", script.file_name()), timeout)?;
        if matches!(script, Script::Install | Script::Update)
            && let Some(hc) = self
                .catalog
                .taskservs
                .get(taskserv)
                .and_then(|d| d.health_check.clone())
        {
            let timeout = Duration::from_secs(hc.timeout);
            let mut last = String::new();
            for n in 0..=hc.retries {
                if n > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                self.log(&task.id, &format!("--- health check {}: {}\n", n + 1, hc.command))
                    .await;
                let outcome = self
                    .shell(
                        task,
                        attempt,
                        On { server, facts: &facts },
                        What::Command(hc.command.clone()),
                        timeout,
                        cancel.clone(),
                    )
                    .await?;
                match check_outcome(&outcome, "health check", timeout) {
                    Ok(()) => return Ok(()),
                    Err(TaskFailure(e)) => last = e,
                }
                if cancel.is_cancelled() {
                    break;
                }
            }
            return Err(TaskFailure(format!(
                "{last} (`{}`, {} tries)",
                hc.command,
                hc.retries + 1
            )));
        }
        Ok(())
    }
}

/// What a task runs: one of its taskserv's scripts, or a shell command
/// (health checks, wait conditions).
enum What<'a> {
    Script(&'a str, Script),
    Command(String),
}

/// The run's connection to one SSH server, with the run's directory on it
/// and the taskservs whose scripts are already there.
struct HostConn {
    transport: SshTransport,
    run_dir: String,
    uploaded: tokio::sync::Mutex<HashSet<String>>,
}

impl std::fmt::Debug for HostConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConn")
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

/// The server a command runs on, with what its provider reports.
#[derive(Clone, Copy)]
struct On<'a> {
    server: &'a Server,
    facts: &'a ServerFacts,
}

fn check_outcome(outcome: &Outcome, what: &str, timeout: Duration) -> Result<(), TaskFailure> {
    match outcome {
        Outcome::Exited(0) => Ok(()),
        Outcome::Exited(code) => Err(TaskFailure(format!("{what} exited with status {code}"))),
        Outcome::Signaled(sig) => Err(TaskFailure(format!("{what} was killed by signal {sig}"))),
        Outcome::TimedOut => Err(TaskFailure(format!(
            "{what} timed out after {}s and was killed",
            timeout.as_secs()
        ))),
        Outcome::Cancelled => Err(TaskFailure(format!("{what} was cancelled"))),
    }
}

#[async_trait::async_trait]
impl TaskExecutor for Runner {
    async fn run(&self, task: &Task, attempt: u32, cancel: CancellationToken) -> Result<(), TaskFailure> {
        self.log(&task.id, &format!("--- attempt {attempt}: {} ---\n", task.action))
            .await;
        let result = match task.action {
            Action::Install => self.run_script(task, attempt, Script::Install, cancel).await,
            Action::Update => self.run_script(task, attempt, Script::Update, cancel).await,
            Action::Remove => self.run_script(task, attempt, Script::Remove, cancel).await,
            Action::Check => self.run_script(task, attempt, Script::Check, cancel).await,
            Action::CreateNetwork => {
                let p = task.provider.as_deref().unwrap_or_default();
                let provider = self.provider(p)?;
                provider
                    .create_network(&self.ctx(&task.id))
                    .await
                    .map_err(|e| TaskFailure(e.to_string()))
            }
            Action::CreateServer | Action::UpdateServer | Action::DeleteServer | Action::CheckServer => {
                let server = self.server(task.server.as_deref().unwrap_or_default())?;
                let provider = self.provider(&server.provider)?;
                let ctx = self.ctx(&task.id);
                let call = async {
                    match task.action {
                        Action::CreateServer => provider
                            .create(server, &ctx)
                            .await
                            .map(|f| format!("created, address {}", f.address)),
                        Action::UpdateServer => provider.update(server, &ctx).await.map(|_| "updated".to_string()),
                        Action::DeleteServer => provider.delete(server, &ctx).await.map(|()| "deleted".to_string()),
                        _ => match provider.status(server, &ctx).await {
                            Ok(ServerStatus::Running(f)) => Ok(format!("running, address {}", f.address)),
                            Ok(ServerStatus::Absent) => {
                                Err(provider.error(format!("server {} is absent", server.hostname)))
                            }
                            Err(e) => Err(e),
                        },
                    }
                };
                let timeout = Duration::from_secs(self.plan.operations[task.operation].timeout);
                let outcome = tokio::select! {
                    r = tokio::time::timeout(timeout, call) => r.map_err(|_| TaskFailure(format!("provider call timed out after {}s", timeout.as_secs())))
                        .and_then(|r| r.map_err(|e| TaskFailure(e.to_string()))),
                    () = cancel.cancelled() => Err(TaskFailure("cancelled".into())),
                };
                if let Ok(msg) = &outcome {
                    self.log(&task.id, &format!("{}: {msg}\n", server.hostname)).await;
                }
                outcome.map(|_| ())
            }
        };
        if let Err(TaskFailure(e)) = &result {
            self.log(&task.id, &format!("--- attempt {attempt} failed: {e}\n"))
                .await;
        }
        result
    }

    async fn undo(&self, task: &Task, cancel: CancellationToken) -> Undo {
        let taskserv_script = |s: Script| {
            task.taskserv
                .as_deref()
                .and_then(|t| self.catalog.taskservs.get(t))
                .is_some_and(|d| d.scripts.contains(&s))
        };
        let result = match task.action {
            Action::Check | Action::CheckServer => return Undo::Nothing,
            Action::Remove => {
                return Undo::Impossible(
                    "a removed taskserv is not reinstalled by rollback; re-run the workflow".into(),
                );
            }
            Action::DeleteServer => {
                return Undo::Impossible("a deleted server is not recreated by rollback; re-run the workflow".into());
            }
            Action::UpdateServer => return Undo::Impossible("providers cannot revert a server update".into()),
            Action::Install if !taskserv_script(Script::Remove) => {
                return Undo::Impossible(format!(
                    "taskserv {} ships no remove.sh",
                    task.taskserv.as_deref().unwrap_or("?")
                ));
            }
            Action::Update if !taskserv_script(Script::Rollback) => {
                return Undo::Impossible(format!(
                    "taskserv {} ships no rollback.sh",
                    task.taskserv.as_deref().unwrap_or("?")
                ));
            }
            Action::Install => {
                self.log(&task.id, "--- undo: remove.sh ---\n").await;
                self.run_script(task, 0, Script::Remove, cancel).await
            }
            Action::Update => {
                self.log(&task.id, "--- undo: rollback.sh ---\n").await;
                self.run_script(task, 0, Script::Rollback, cancel).await
            }
            Action::CreateServer => {
                self.log(&task.id, "--- undo: delete server ---\n").await;
                match self.server(task.server.as_deref().unwrap_or_default()) {
                    Ok(server) => match self.provider(&server.provider) {
                        Ok(p) => p
                            .delete(server, &self.ctx(&task.id))
                            .await
                            .map_err(|e| TaskFailure(e.to_string())),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
            Action::CreateNetwork => match self.provider(task.provider.as_deref().unwrap_or_default()) {
                Ok(p) => p
                    .delete_network(&self.ctx(&task.id))
                    .await
                    .map_err(|e| TaskFailure(e.to_string())),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => Undo::Done,
            Err(TaskFailure(e)) => Undo::Failed(e),
        }
    }

    async fn probe(&self, condition: &WaitCondition, cancel: CancellationToken) -> Result<(), TaskFailure> {
        let timeout = Duration::from_secs(condition.interval.max(1));
        let mut env = vec![("DROVER_RUN_ID".to_string(), self.run_id.clone())];
        let log = self.paths.logs_dir.join("wait-conditions.log");
        let args = vec!["-c".to_string(), condition.command.clone()];
        // Where it runs: a server's transport (the local one or its SSH
        // connection) in its working directory, or here.
        let mut conn = None;
        let cwd = match &condition.server {
            Some(name) => {
                let server = self.server(name)?;
                let facts = self.facts(server, "wait").await?;
                env.push(("DROVER_SERVER".to_string(), name.clone()));
                env.push(("DROVER_ROOT".to_string(), facts.root.display().to_string()));
                match server.connection {
                    Connection::Local => self.paths.work_dir.join(name),
                    Connection::Ssh => {
                        let c = self.conn(server, &facts).await?;
                        let cwd = PathBuf::from(format!("{}/work", c.run_dir));
                        conn = Some(c);
                        cwd
                    }
                }
            }
            None => self.paths.work_dir.clone(),
        };
        if conn.is_none() {
            tokio::fs::create_dir_all(&cwd)
                .await
                .map_err(|e| TaskFailure(e.to_string()))?;
        }
        let cmd = Command {
            program: "/bin/sh".into(),
            args,
            env,
            cwd,
            timeout: Some(timeout),
            log,
            mask: self.mask.clone(),
        };
        let transport: &dyn Transport = match &conn {
            Some(c) => &c.transport,
            None => self.transport.as_ref(),
        };
        let outcome = transport
            .exec(cmd, None, cancel)
            .await
            .map_err(|e| TaskFailure(self.mask.mask(&e.to_string())))?;
        check_outcome(&outcome, "wait condition", timeout)
    }

    async fn finish(&self) {
        // The run's directories on SSH hosts go, and the connections close.
        let cells: Vec<_> = self.ssh.lock().await.values().cloned().collect();
        for cell in cells {
            if let Some(conn) = cell.get() {
                let dirs = if self.paths.keep_remote_dirs {
                    RunDirs::Keep
                } else {
                    RunDirs::Remove
                };
                let _ = conn.transport.cleanup(dirs).await;
            }
        }
    }
}
