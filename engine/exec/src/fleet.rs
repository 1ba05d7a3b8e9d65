//! Fleet operations: a shell command on the servers a selector picks,
//! without writing a workflow.
//!
//! `drover exec` is a run like any other: [`exec_inputs`] turns an
//! inventory (or workflow) file, a selector and a command into a workflow
//! of one operation whose target is `command` (one task per selected
//! server, [`Action::Exec`](drover_core::plan::Action::Exec)), and the
//! executor carries it out with its journal, limits, rolling batches,
//! reports, Ctrl-C and resume. Each server's exit status and output are
//! journaled with its task's success or failure ([`Captured::found`]), so
//! [`answers`] rebuilds them from the journal alone, and [`group`] folds
//! identical answers together as herd and `dshbak -c` do.
//!
//! Watch, tail and snapshots need no journal per command: they run
//! commands over [`Fleet`], the same providers and SSH transport a run
//! uses, on connections kept open between commands.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_core::model::{
    Backoff, Operation, OperationType, RetryPolicy, RollbackStrategy, RollingStrategy, Selector, Server, Target,
    WorkflowType,
};
use drover_core::plan::Action;
use drover_core::{Diagnostic, Plan};
use drover_provider::{ProviderContext, Reach, ServerFacts, ServerStatus};
use drover_state::{Entry, Event};
use drover_transport::Command;
pub use drover_transport::{LogLine, Outcome, Stream};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
pub use tokio_util::sync::CancellationToken;

use crate::mask::Masker;
use crate::run::{Inputs, Options};
use crate::runner::{Found, HostConn, Paths, Pool, TaskLine};
use crate::scheduler::{Status, nodes_from_journal};

/// At most this much of each stream of a command's output is kept in the
/// journal per server (the task's log file has all of it).
pub const OUTPUT_KEPT: usize = 64 * 1024;

/// The id of the one operation of an exec run.
pub const EXEC_OPERATION: &str = "exec";

/// What `drover exec` runs, where, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The shell command (run by /bin/sh on each server).
    pub command: String,
    /// Which servers.
    #[serde(default)]
    pub selector: Selector,
    /// At most this many servers at once.
    #[serde(default = "default_parallel")]
    pub parallel: u32,
    /// Rolling batches with a halt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling: Option<Rolling>,
    /// Run as root (`sudo -n`) on servers that do not declare `ssh.become`.
    #[serde(default, rename = "become")]
    pub become_root: bool,
    /// Seconds before the command is killed on a server.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
}

/// Servers at once when not given.
pub const DEFAULT_PARALLEL: u32 = 64;

fn default_parallel() -> u32 {
    DEFAULT_PARALLEL
}

fn default_timeout() -> u64 {
    600
}

/// Rolling batches of an exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rolling {
    /// Servers per batch.
    pub batch: u32,
    /// Seconds between batches.
    #[serde(default)]
    pub pause: u64,
    /// How many failed servers halt the roll.
    #[serde(default)]
    pub max_fail: MaxFail,
}

/// How many failed servers a roll tolerates: more than this halts it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxFail {
    /// A number of servers.
    Count(u32),
    /// A percentage of the selected servers.
    Percent(f64),
}

impl Default for MaxFail {
    fn default() -> Self {
        MaxFail::Count(0)
    }
}

impl std::str::FromStr for MaxFail {
    type Err = String;

    /// `N` (servers) or `P%` (of the selected servers).
    fn from_str(s: &str) -> Result<MaxFail, String> {
        let s = s.trim();
        match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(v) if (0.0..=100.0).contains(&v) => Ok(MaxFail::Percent(v)),
                _ => Err(format!("{s:?} is not a percentage from 0% to 100%")),
            },
            None => s
                .parse::<u32>()
                .map(MaxFail::Count)
                .map_err(|_| format!("{s:?} is neither a number of servers (3) nor a percentage (10%)")),
        }
    }
}

impl std::fmt::Display for MaxFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxFail::Count(n) => write!(f, "{n}"),
            MaxFail::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The inputs of an exec run: the servers, groups and providers of `base`
/// (an inventory or a workflow), with one operation running the command
/// on the selected servers. Its operations, dependencies, variables and
/// secrets are not taken: a command gets none of them.
pub fn exec_inputs(base: &Inputs, spec: &ExecSpec) -> Inputs {
    let mut inputs = base.clone();
    let wf = &mut inputs.source.workflow;
    let inventory = drover_core::inventory::Inventory::new(wf);
    let selected = wf
        .servers
        .iter()
        .filter(|s| inventory.selects(&spec.selector, s))
        .count();
    let rolling = spec.rolling.as_ref().map(|r| RollingStrategy {
        batch_size: r.batch.max(1),
        pause: r.pause,
        // The scheduler halts when the failed share of the servers goes
        // above the threshold: N servers tolerated is a threshold between
        // N and N + 1 servers' share.
        failure_threshold: match r.max_fail {
            MaxFail::Percent(p) => p,
            MaxFail::Count(n) => (f64::from(n) + 0.5) * 100.0 / selected.max(1) as f64,
        },
    });
    if spec.become_root {
        for s in &mut wf.servers {
            if s.ssh.become_method.is_none() {
                s.ssh.become_method = Some(drover_core::model::Become::Sudo);
            }
        }
    }
    wf.name = "exec".into();
    wf.description = Some(spec.command.clone());
    wf.kind = WorkflowType::Parallel;
    wf.max_parallel = spec.parallel.max(1);
    wf.timeout = None;
    wf.dependencies.clear();
    wf.variables.clear();
    wf.secrets = None;
    wf.rollback_strategy = RollbackStrategy {
        enabled: false,
        ..RollbackStrategy::default()
    };
    // A command is not assumed safe to repeat: one attempt.
    wf.retry_policy = RetryPolicy {
        max_attempts: 1,
        backoff: Backoff::Exponential,
        initial_delay: 1,
        max_delay: 1,
        jitter: false,
    };
    wf.operations = vec![Operation {
        id: EXEC_OPERATION.into(),
        description: None,
        kind: OperationType::Update,
        target: Target::Command,
        providers: Vec::new(),
        items: Vec::new(),
        selector: Some(spec.selector.clone()),
        run_on: None,
        depends_on: Vec::new(),
        parallel: true,
        max_parallel: None,
        timeout: spec.timeout.max(1),
        // A failed server does not stop the others (a rolling exec halts
        // at its threshold instead).
        on_failure: drover_core::model::OnFailure::Continue,
        condition: drover_core::model::Condition::OnSuccess,
        retry_policy: None,
        rolling,
        command: Some(spec.command.clone()),
    }];
    inputs
}

/// The command of an exec run's plan; None for any other run.
pub fn exec_command(plan: &Plan) -> Option<&str> {
    match plan.workflow.operations.as_slice() {
        [op] if op.target == Target::Command => op.command.as_deref(),
        _ => None,
    }
}

/// The servers `selector` picks in `base`, in declaration order, or every
/// problem with the selector (an unknown group, tag or server, nothing
/// selected) as the planner reports it.
pub fn select(base: &Inputs, selector: &Selector) -> Result<Vec<Server>, Vec<Diagnostic>> {
    let spec = ExecSpec {
        command: "true".into(),
        selector: selector.clone(),
        parallel: 1,
        rolling: None,
        become_root: false,
        timeout: 1,
    };
    let inputs = exec_inputs(base, &spec);
    let plan = drover_core::compile(&inputs.source, &inputs.catalog)?;
    let picked: Vec<&str> = plan
        .graph
        .node_weights()
        .filter_map(|n| n.task())
        .filter_map(|t| t.server.as_deref())
        .collect();
    Ok(base
        .source
        .workflow
        .servers
        .iter()
        .filter(|s| picked.contains(&s.hostname.as_str()))
        .cloned()
        .collect())
}

/// A command's output as kept: each stream up to [`OUTPUT_KEPT`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// Standard output, lines joined with newlines.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Whether a stream was cut at [`OUTPUT_KEPT`].
    pub truncated: bool,
}

impl Captured {
    fn push(&mut self, line: &LogLine) {
        let buf = match line.stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        if buf.len() + line.line.len() + 1 > OUTPUT_KEPT {
            self.truncated = true;
            return;
        }
        buf.push_str(&line.line);
        buf.push('\n');
    }

    /// What is journaled of a command that ended with `outcome`.
    pub fn found(&self, outcome: &Outcome) -> Found {
        let mut f = Found::new();
        match outcome {
            Outcome::Exited(code) => {
                f.insert("exit_code".into(), code.to_string());
            }
            Outcome::Signaled(sig) => {
                f.insert("signal".into(), sig.to_string());
            }
            Outcome::TimedOut | Outcome::Cancelled => {}
        }
        f.insert("stdout".into(), self.stdout.clone());
        f.insert("stderr".into(), self.stderr.clone());
        if self.truncated {
            f.insert("truncated".into(), "true".into());
        }
        f
    }
}

/// Collect the lines of `rx` (see [`Captured`]), passing each on to
/// `forward` (the live view) as the output of task `task`.
pub async fn capture(
    mut rx: mpsc::UnboundedReceiver<LogLine>,
    forward: Option<(mpsc::UnboundedSender<TaskLine>, String)>,
) -> Captured {
    let mut c = Captured::default();
    while let Some(line) = rx.recv().await {
        c.push(&line);
        if let Some((out, task)) = &forward {
            let _ = out.send(TaskLine {
                task: task.clone(),
                line,
            });
        }
    }
    c
}

/// One server's answer to an exec, rebuilt from the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The server.
    pub server: String,
    /// Its task's state.
    pub status: Status,
    /// The command's exit status, when it exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Whether output was cut at [`OUTPUT_KEPT`] per stream.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Why it failed, was skipped or cancelled (none for a command that
    /// exited 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Time spent, ms.
    pub duration_ms: u64,
}

impl Answer {
    /// How it ended, in a few words: `exit 0`, `exit 3`, `killed by signal
    /// 9`, `failed: ...`, `skipped: ...`, `cancelled: ...`, `pending`.
    /// The server's own name and address are replaced by `<server>`, so
    /// that servers failing the same way fall into one group.
    pub fn outcome(&self) -> String {
        if let Some(code) = self.exit_code {
            return format!("exit {code}");
        }
        if let Some(sig) = self.signal {
            return format!("killed by signal {sig}");
        }
        let why = self
            .error
            .as_deref()
            .unwrap_or_default()
            .replace(&self.server, "<server>");
        match self.status {
            Status::Pending | Status::Ready | Status::Waiting => "not run".into(),
            Status::Running => "running".into(),
            Status::Succeeded => "succeeded".into(),
            Status::Failed => format!("failed: {why}"),
            Status::Skipped => format!("skipped: {why}"),
            Status::Cancelled => format!("cancelled: {why}"),
        }
    }

    /// Whether the command ran and exited 0.
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Every server's answer to the exec run of `plan`, in the plan's order,
/// from its journal.
pub fn answers(plan: &Plan, journal: &[Entry]) -> Vec<Answer> {
    let nodes = nodes_from_journal(plan, journal);
    let mut found: HashMap<&str, &BTreeMap<String, String>> = HashMap::new();
    for e in journal {
        let Some(node) = e.node.as_deref() else { continue };
        match &e.event {
            Event::TaskSucceeded { found: f, .. } | Event::TaskFailed { found: f, .. } => {
                found.insert(node, f);
            }
            // A new attempt's answer replaces the last one.
            Event::TaskStarted { .. } => {
                found.remove(node);
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for n in plan.graph.node_indices() {
        let Some(t) = plan.graph[n].task() else { continue };
        if t.action != Action::Exec {
            continue;
        }
        let rt = &nodes[n.index()];
        let f = found.get(t.id.as_str());
        let get = |k: &str| f.and_then(|f| f.get(k)).cloned();
        out.push(Answer {
            server: t.server.clone().unwrap_or_default(),
            status: rt.status,
            exit_code: get("exit_code").and_then(|v| v.parse().ok()),
            signal: get("signal").and_then(|v| v.parse().ok()),
            stdout: get("stdout").unwrap_or_default(),
            stderr: get("stderr").unwrap_or_default(),
            truncated: get("truncated").is_some(),
            error: if rt.status == Status::Succeeded {
                None
            } else {
                rt.error.clone()
            },
            duration_ms: rt.duration_ms,
        });
    }
    out
}

/// Servers whose answers are identical (outcome, stdout and stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The servers, in the order they were answered for.
    pub servers: Vec<String>,
    /// How the command ended on them ([`Answer::outcome`]).
    pub outcome: String,
    /// Their standard output.
    pub stdout: String,
    /// Their standard error.
    pub stderr: String,
}

impl Group {
    /// The output as shown and diffed: stdout, then stderr with each line
    /// marked `stderr| `.
    pub fn body(&self) -> String {
        let mut s = self.stdout.clone();
        for line in self.stderr.lines() {
            s.push_str("stderr| ");
            s.push_str(line);
            s.push('\n');
        }
        s
    }

    /// The servers as a compact host list (`web-[01-03,07],db-1`).
    pub fn hosts(&self) -> String {
        hostlist(&self.servers)
    }
}

/// Fold identical answers together: the largest group first (the
/// majority), then by size, ties by their first server's position.
pub fn group(answers: &[Answer]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for a in answers {
        let outcome = a.outcome();
        match groups
            .iter_mut()
            .find(|g| g.outcome == outcome && g.stdout == a.stdout && g.stderr == a.stderr)
        {
            Some(g) => g.servers.push(a.server.clone()),
            None => groups.push(Group {
                servers: vec![a.server.clone()],
                outcome,
                stdout: a.stdout.clone(),
                stderr: a.stderr.clone(),
            }),
        }
    }
    // Stable: equal sizes keep the order of their first server.
    groups.sort_by_key(|g| std::cmp::Reverse(g.servers.len()));
    groups
}

/// A unified diff from `old` to `new` (texts of lines), with headers; empty
/// when they are equal.
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .missing_newline_hint(false)
        .to_string()
}

/// How `other` differs from `base`: its outcome, when that differs, and a
/// unified diff of the output.
pub fn diff_groups(base: &Group, other: &Group) -> String {
    let mut s = String::new();
    if base.outcome != other.outcome {
        s.push_str(&format!("-{}\n+{}\n", base.outcome, other.outcome));
    }
    s.push_str(&unified_diff(
        &base.body(),
        &other.body(),
        &base.hosts(),
        &other.hosts(),
    ));
    s
}

/// Names as a compact host list, as pdsh and dshbak print them: names
/// that differ only in a trailing number of the same width share one
/// `prefix[range,...]` entry (`web-[01-03,07]`); others are listed as
/// they are, in order of first appearance.
pub fn hostlist(names: &[String]) -> String {
    enum Part {
        Plain(String),
        Numbered(String, usize),
    }
    let mut parts: Vec<Part> = Vec::new();
    let mut numbers: HashMap<(String, usize), Vec<u64>> = HashMap::new();
    for name in names {
        let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (prefix, num) = name.split_at(name.len() - digits);
        match num.parse::<u64>() {
            Ok(n) if (1..=18).contains(&digits) => {
                let list = numbers.entry((prefix.to_string(), digits)).or_default();
                if list.is_empty() {
                    parts.push(Part::Numbered(prefix.to_string(), digits));
                }
                list.push(n);
            }
            _ => parts.push(Part::Plain(name.clone())),
        }
    }
    let shown: Vec<String> = parts
        .into_iter()
        .map(|p| match p {
            Part::Plain(name) => name,
            Part::Numbered(prefix, width) => {
                let mut nums = numbers.remove(&(prefix.clone(), width)).unwrap_or_default();
                nums.sort_unstable();
                nums.dedup();
                if let [n] = nums.as_slice() {
                    return format!("{prefix}{n:0width$}");
                }
                let mut ranges = Vec::new();
                let mut i = 0;
                while i < nums.len() {
                    let mut j = i;
                    while j + 1 < nums.len() && nums[j + 1] == nums[j] + 1 {
                        j += 1;
                    }
                    ranges.push(if i == j {
                        format!("{:0width$}", nums[i])
                    } else {
                        format!("{:0width$}-{:0width$}", nums[i], nums[j])
                    });
                    i = j + 1;
                }
                format!("{prefix}[{}]", ranges.join(","))
            }
        })
        .collect();
    shown.join(",")
}

impl Answer {
    /// The output as shown and diffed, as [`Group::body`] has it: stdout,
    /// then stderr with each line marked `stderr| `.
    pub fn body(&self) -> String {
        Group {
            servers: Vec::new(),
            outcome: String::new(),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
        }
        .body()
    }
}

/// How the answers of two execs differ, server by server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Servers in both whose outcome or output differs: the old answer,
    /// then the new one, in the new exec's order.
    pub changed: Vec<(Answer, Answer)>,
    /// Servers in both that answered the same.
    pub same: Vec<String>,
    /// Servers only the old exec ran on.
    pub only_old: Vec<String>,
    /// Servers only the new exec ran on.
    pub only_new: Vec<String>,
}

/// Compare the answers of an exec (`old`) with those of a later one
/// (`new`): a server changed when its outcome ([`Answer::outcome`]),
/// stdout or stderr differs.
pub fn compare(old: &[Answer], new: &[Answer]) -> Comparison {
    let before: HashMap<&str, &Answer> = old.iter().map(|a| (a.server.as_str(), a)).collect();
    let mut c = Comparison::default();
    for a in new {
        match before.get(a.server.as_str()) {
            None => c.only_new.push(a.server.clone()),
            Some(b) if b.outcome() == a.outcome() && b.stdout == a.stdout && b.stderr == a.stderr => {
                c.same.push(a.server.clone());
            }
            Some(b) => c.changed.push(((*b).clone(), a.clone())),
        }
    }
    let now: std::collections::HashSet<&str> = new.iter().map(|a| a.server.as_str()).collect();
    c.only_old = old
        .iter()
        .filter(|a| !now.contains(a.server.as_str()))
        .map(|a| a.server.clone())
        .collect();
    c
}

/// Connections to a set of servers for commands outside a run (watch,
/// tail, snapshots): each server reached as a run reaches it (its
/// provider's facts, the SSH transport, host keys verified), once, and
/// kept open between commands until [`Fleet::forget`] or
/// [`Fleet::finish`].
#[derive(Debug)]
pub struct Fleet {
    servers: Vec<Server>,
    providers: drover_provider::Providers,
    paths: Paths,
    pool: Arc<Pool>,
    facts: tokio::sync::Mutex<HashMap<String, ServerFacts>>,
    purpose: String,
}

impl Fleet {
    /// A fleet of `servers`, whose relative paths (SSH keys, known_hosts)
    /// are relative to `base_dir`; `purpose` names it to providers
    /// (`watch`, `tail`, ...).
    pub fn new(servers: Vec<Server>, base_dir: PathBuf, opts: &Options, purpose: &str) -> Fleet {
        let paths = Paths {
            data_dir: opts.data_dir.clone(),
            logs_dir: opts.data_dir.join(purpose),
            base_dir,
            keep_remote_dirs: false,
        };
        Fleet {
            servers,
            providers: opts.providers.clone(),
            pool: Arc::new(Pool::new(&paths)),
            paths,
            facts: tokio::sync::Mutex::new(HashMap::new()),
            purpose: purpose.to_string(),
        }
    }

    /// The servers.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// The connection to `server` and what its provider reports of it,
    /// opened on first use; or why it cannot be reached.
    pub async fn reach(&self, server: &str) -> Result<(Arc<HostConn>, ServerFacts), String> {
        let s = self
            .servers
            .iter()
            .find(|s| s.hostname == server)
            .ok_or_else(|| format!("{server} is not one of the selected servers"))?;
        let known = self.facts.lock().await.get(server).cloned();
        let facts = match known {
            Some(f) => f,
            None => {
                let f = self.status(s).await?;
                self.facts.lock().await.insert(server.to_string(), f.clone());
                f
            }
        };
        let conn = self.pool.host(s, &facts).await.map_err(|e| e.to_string())?;
        Ok((conn, facts))
    }

    async fn status(&self, s: &Server) -> Result<ServerFacts, String> {
        let provider = self
            .providers
            .get(&s.provider)
            .ok_or_else(|| format!("provider {} has no implementation in this build", s.provider))?;
        let ctx = ProviderContext {
            state_dir: self.paths.provider_dir(&s.provider),
            run_id: self.purpose.clone(),
            idempotency_key: self.purpose.clone(),
            plan: None,
            connector: self.pool.clone(),
            zones: s.zone.iter().cloned().collect(),
            // No secrets are decrypted here: provider credentials come
            // from the environment.
            secrets: drover_provider::Secrets::default(),
        };
        match provider.status(s, &ctx).await {
            Ok(ServerStatus::Running(f)) => Ok(f),
            Ok(ServerStatus::Down(why)) => Err(why),
            Ok(ServerStatus::Absent) => Err("does not exist (its provider reports it absent)".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Run shell `script` on `server` (in the login user's home directory,
    /// or the server's own directory for `connection = "local"`), within
    /// `timeout`, passing each line on to `lines` as it comes. Returns how
    /// it ended and its output (see [`Captured`]), or why it could not run.
    pub async fn run(
        &self,
        server: &str,
        script: &str,
        timeout: Option<Duration>,
        lines: Option<mpsc::UnboundedSender<LogLine>>,
        cancel: CancellationToken,
    ) -> Result<(Outcome, Captured), String> {
        let (conn, facts) = self.reach(server).await?;
        let cwd = match facts.reach {
            Reach::Local => PathBuf::from(conn.run_dir_for(&self.purpose).await.map_err(|e| e.to_string())?),
            Reach::Ssh(_) => PathBuf::new(),
        };
        let cmd = shell_command(script, cwd, timeout, PathBuf::from("/dev/null"), Masker::none());
        let (tx, mut rx) = mpsc::unbounded_channel::<LogLine>();
        let collect = tokio::spawn(async move {
            let mut c = Captured::default();
            while let Some(line) = rx.recv().await {
                c.push(&line);
                if let Some(out) = &lines {
                    let _ = out.send(line);
                }
            }
            c
        });
        let result = conn.transport().exec(cmd, Some(tx), cancel).await;
        let captured = collect.await.unwrap_or_default();
        match result {
            Ok(outcome) => Ok((outcome, captured)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Drop `server`'s connection (it broke): the next command reconnects.
    pub async fn forget(&self, server: &str) {
        self.facts.lock().await.remove(server);
        self.pool.release(server, false).await;
    }

    /// Close every connection.
    pub async fn finish(&self) {
        self.pool.finish(false).await;
    }
}

/// A shell command as a transport runs it: `/bin/sh` reading `script`
/// (`$0` is `drover-exec`), no extra environment, in `cwd` (empty: the
/// login directory, over SSH).
pub(crate) fn shell_command(
    script: &str,
    cwd: PathBuf,
    timeout: Option<Duration>,
    log: PathBuf,
    mask: Masker,
) -> Command {
    Command {
        program: "/bin/sh".into(),
        args: vec!["drover-exec".into()],
        script: Some(script.to_string()),
        files: None,
        remove_run_dir: false,
        env: Vec::new(),
        cwd,
        timeout,
        log,
        mask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn host_lists_fold_numbered_names_of_one_width() {
        assert_eq!(
            hostlist(&names(&["web-01", "web-02", "web-03", "web-07", "db", "web-10"])),
            "web-[01-03,07,10],db"
        );
        assert_eq!(hostlist(&names(&["a1", "a10", "a2"])), "a[1-2],a10");
        assert_eq!(hostlist(&names(&["x"])), "x");
        assert_eq!(hostlist(&names(&["n-5"])), "n-5");
    }

    fn answer(server: &str, code: i32, out: &str) -> Answer {
        Answer {
            server: server.into(),
            status: if code == 0 { Status::Succeeded } else { Status::Failed },
            exit_code: Some(code),
            signal: None,
            stdout: out.into(),
            stderr: String::new(),
            truncated: false,
            error: None,
            duration_ms: 1,
        }
    }

    #[test]
    fn identical_answers_fold_into_groups_majority_first() {
        let a = vec![
            answer("h1", 0, "x\n"),
            answer("h2", 1, "x\n"),
            answer("h3", 0, "x\n"),
            answer("h4", 0, "y\n"),
            answer("h5", 0, "x\n"),
        ];
        let g = group(&a);
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].servers, names(&["h1", "h3", "h5"]));
        assert_eq!(g[1].servers, names(&["h2"]));
        assert_eq!(g[1].outcome, "exit 1");
        assert_eq!(g[2].servers, names(&["h4"]));
        assert_eq!(diff_groups(&g[0], &g[2]), "--- h[1,3,5]\n+++ h4\n@@ -1 +1 @@\n-x\n+y\n");
        assert_eq!(diff_groups(&g[0], &g[1]), "-exit 0\n+exit 1\n");
    }

    #[test]
    fn max_fail_reads_counts_and_percentages() {
        assert_eq!("3".parse::<MaxFail>(), Ok(MaxFail::Count(3)));
        assert_eq!("10%".parse::<MaxFail>(), Ok(MaxFail::Percent(10.0)));
        assert!("x".parse::<MaxFail>().is_err());
        assert!("120%".parse::<MaxFail>().is_err());
    }

    #[test]
    fn comparisons_name_changed_servers_and_those_in_one_exec_only() {
        let old = vec![answer("h1", 0, "x\n"), answer("h2", 0, "x\n"), answer("h3", 0, "x\n")];
        let new = vec![answer("h2", 0, "x\n"), answer("h3", 1, "x\n"), answer("h4", 0, "y\n")];
        let c = compare(&old, &new);
        assert_eq!(c.same, names(&["h2"]));
        assert_eq!(c.changed.len(), 1);
        assert_eq!(
            (c.changed[0].0.outcome(), c.changed[0].1.outcome()),
            ("exit 0".into(), "exit 1".into())
        );
        assert_eq!(c.only_old, names(&["h1"]));
        assert_eq!(c.only_new, names(&["h4"]));
    }
}
