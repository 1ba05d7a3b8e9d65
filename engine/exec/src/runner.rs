//! Running one attempt of a task: a provider call, or a taskserv script on
//! its server through a transport.
//!
//! The scheduler knows nothing of scripts or providers; it calls a
//! [`TaskExecutor`]. [`Runner`] is the real one.

use std::collections::BTreeMap;
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
        args: Vec<String>,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<Outcome, TaskFailure> {
        let On { server, facts } = on;
        let templates = match &task.taskserv {
            Some(t) => self.render_templates(t, server).await?,
            None => None,
        };
        if server.connection != Connection::Local {
            return Err(TaskFailure(format!(
                "server {} is reached over SSH, which this build cannot do yet; declare connection = \"local\"",
                server.hostname
            )));
        }
        let cwd = self.paths.work_dir.join(&server.hostname);
        tokio::fs::create_dir_all(&cwd)
            .await
            .map_err(|e| TaskFailure(format!("cannot create working directory {}: {e}", cwd.display())))?;
        let cmd = Command {
            program: "/bin/sh".into(),
            args,
            env: {
                let mut env = self.env(task, attempt, server, facts);
                if let Some(dir) = &templates {
                    env.push(("DROVER_TEMPLATES".to_string(), dir.display().to_string()));
                }
                env
            },
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
        let result = self.transport.exec(cmd, tx, cancel).await;
        // The rendered templates may hold secrets: they live only as long
        // as the script that uses them.
        if let Some(dir) = &templates {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        if let Some(f) = forward {
            let _ = f.await;
        }
        result.map_err(|e| TaskFailure(e.to_string()))
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
        let path = self.script(taskserv, script)?;
        let timeout = Duration::from_secs(self.plan.operations[task.operation].timeout);
        let outcome = self
            .shell(
                task,
                attempt,
                On { server, facts: &facts },
                vec![path.display().to_string()],
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
                        vec!["-c".into(), hc.command.clone()],
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
        let (cwd, env) = match &condition.server {
            Some(name) => {
                let server = self.server(name)?;
                let facts = self.facts(server, "wait").await?;
                if server.connection != Connection::Local {
                    return Err(TaskFailure(format!(
                        "server {name} is reached over SSH, which this build cannot do yet"
                    )));
                }
                (
                    self.paths.work_dir.join(name),
                    vec![
                        ("DROVER_SERVER".to_string(), name.clone()),
                        ("DROVER_ROOT".to_string(), facts.root.display().to_string()),
                        ("DROVER_RUN_ID".to_string(), self.run_id.clone()),
                    ],
                )
            }
            None => (
                self.paths.work_dir.clone(),
                vec![("DROVER_RUN_ID".to_string(), self.run_id.clone())],
            ),
        };
        tokio::fs::create_dir_all(&cwd)
            .await
            .map_err(|e| TaskFailure(e.to_string()))?;
        let cmd = Command {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), condition.command.clone()],
            env,
            cwd,
            timeout: Some(timeout),
            log: self.paths.logs_dir.join("wait-conditions.log"),
            mask: self.mask.clone(),
        };
        let outcome = self
            .transport
            .exec(cmd, None, cancel)
            .await
            .map_err(|e| TaskFailure(e.to_string()))?;
        check_outcome(&outcome, "wait condition", timeout)
    }
}
