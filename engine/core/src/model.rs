//! The typed model: what a workflow file and the provider and taskserv
//! declarations say, after the KCL engine has applied defaults and checks.
//!
//! Field names and meanings mirror `schemas/*.k`; the schemas' doc strings
//! are the reference. The model is plain data: it is deserialised from the
//! engine's JSON and never does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A workflow file's `workflow` value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// The workflow's name.
    pub name: String,
    /// What the workflow is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How operations relate when they do not say.
    #[serde(rename = "type", default)]
    pub kind: WorkflowType,
    /// The target infrastructure.
    #[serde(default)]
    pub servers: Vec<Server>,
    /// The inventory's groups.
    #[serde(default)]
    pub groups: Vec<GroupDef>,
    /// The steps of the workflow.
    pub operations: Vec<Operation>,
    /// Edges between parts of the plan beyond `depends_on`.
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    /// Values given to every task (as DROVER_VAR_<NAME>).
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    /// At most this many tasks run at once across the run.
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    /// Seconds the whole run may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// How the run rolls back.
    #[serde(default)]
    pub rollback_strategy: RollbackStrategy,
    /// How failed attempts are retried, unless an operation says otherwise.
    #[serde(default)]
    pub retry_policy: RetryPolicy,
    /// Where and how the run logs.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// State store, checkpoints and metrics.
    #[serde(default)]
    pub monitoring: MonitoringConfig,
    /// Where secrets come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretProvider>,
    /// Who is told when a run ends, a roll halts, drift is found (see
    /// NotificationDef in schemas/workflow.k). Empty: the server's
    /// default targets (`drover serve --notifications`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationDef>,
}

fn default_max_parallel() -> u32 {
    10
}

/// batch | sequential | parallel (see WorkflowDef in schemas/workflow.k).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowType {
    /// Operations ordered by depends_on only.
    #[default]
    Batch,
    /// Each operation also waits for the one declared before it.
    Sequential,
    /// Like batch; every operation spreads over its servers at once.
    Parallel,
}

/// One server of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// DNS label naming the server.
    pub hostname: String,
    /// The provider that creates it.
    pub provider: String,
    /// One of the provider's plans.
    pub plan: String,
    /// Provider zone or region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Network address, when known before creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// How drover reaches it.
    #[serde(default)]
    pub connection: Connection,
    /// How to reach it over SSH.
    #[serde(default)]
    pub ssh: SshAccess,
    /// Free-form labels for selection.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Groups it belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Taskservs it carries.
    #[serde(default)]
    pub taskservs: Vec<String>,
}

/// How drover reaches a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Connection {
    /// Over SSH, agentless.
    #[default]
    Ssh,
    /// Processes on the orchestrator's machine, in the server's root.
    Local,
}

/// SSH access to a server, as the workflow declares it; unset fields are
/// filled in by the provider, the SSH client configuration and the
/// defaults when a connection is made (see SshAccess in schemas/server.k).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshAccess {
    /// Login user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// TCP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// The one known_hosts file to check host keys against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<String>,
    /// What to do with a host whose key is not recorded.
    #[serde(default)]
    pub host_key_policy: HostKeyPolicy,
    /// An SSH client configuration read instead of ~/.ssh/config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
    /// Bastions to go through, first hop first ("user@host:port").
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub jump: Vec<String>,
    /// Run scripts through this privilege escalation.
    #[serde(rename = "become", default, skip_serializing_if = "Option::is_none")]
    pub become_method: Option<Become>,
    /// The user scripts run as under `become` (root when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub become_user: Option<String>,
}

/// strict | accept-new.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// The host's key must be recorded in known_hosts.
    #[default]
    Strict,
    /// A host seen for the first time has its key recorded; a changed key
    /// is still refused.
    AcceptNew,
}

/// How scripts gain privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Become {
    /// `sudo -n`: never asks for a password.
    Sudo,
}

/// A string or a list of strings, as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// create | update | delete | check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationType {
    /// Create servers, install taskservs.
    Create,
    /// Update servers or taskservs.
    Update,
    /// Delete servers, remove taskservs.
    Delete,
    /// Check status or health.
    Check,
}

/// server | taskserv | cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Servers themselves, through their provider.
    Server,
    /// Taskservs on each server that carries them.
    Taskserv,
    /// Cluster-wide taskservs, run once on one server.
    Cluster,
    /// A shell command on each selected server ([`Operation::command`]):
    /// what `drover exec` runs. Not in the KCL schema, so a workflow
    /// cannot name it; only drover builds such operations.
    Command,
}

/// fail | continue | rollback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop dispatching; running tasks finish.
    #[default]
    Fail,
    /// Mark failed, skip what hard-depends on it, run the rest.
    Continue,
    /// Fail, then roll back.
    Rollback,
}

/// on_success | on_failure | always.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Run when the operations it depends on succeeded.
    #[default]
    OnSuccess,
    /// Run only when one of them failed.
    OnFailure,
    /// Run in any case.
    Always,
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    /// Unique id.
    pub id: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// create | update | delete | check.
    #[serde(rename = "type")]
    pub kind: OperationType,
    /// server | taskserv | cluster.
    pub target: Target,
    /// Only servers of these providers (empty = all).
    #[serde(default)]
    pub providers: Vec<String>,
    /// Hostnames (target server) or taskserv names.
    #[serde(default)]
    pub items: Vec<String>,
    /// Which servers the operation works on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// The server cluster tasks run on (target cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_on: Option<String>,
    /// Operations that must finish first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Whether servers proceed at once (bounded) or one at a time.
    #[serde(default = "yes")]
    pub parallel: bool,
    /// At most this many tasks of the operation at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// Seconds per task attempt.
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// What a failed task does to the run.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// When the operation runs, given its upstream operations.
    #[serde(default)]
    pub condition: Condition,
    /// Replaces the workflow's retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// Roll through servers in batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling: Option<RollingStrategy>,
    /// The shell command of a `command` target (`drover exec`), run by
    /// /bin/sh on each selected server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_timeout() -> u64 {
    600
}

/// Picks servers by name, group and tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Explicit hostnames.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Tags, all required; "!t" excludes t.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Conditions, all required.
    #[serde(default)]
    pub criteria: Vec<Criterion>,
}

/// A named set of servers (see GroupDef in schemas/server.k).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDef {
    /// The group's name.
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Hostnames in it.
    #[serde(default)]
    pub members: Vec<String>,
    /// Child groups, whose members are in it too.
    #[serde(default)]
    pub groups: Vec<String>,
    /// When given, every server matching all of them is in it.
    #[serde(default)]
    pub criteria: Vec<Criterion>,
}

/// The server field a criterion tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum CriterionField {
    Hostname,
    Provider,
    Plan,
    Zone,
    Address,
    Tag,
    Group,
}

/// How a criterion compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum CriterionOp {
    #[default]
    Equals,
    Contains,
    In,
    Matches,
}

/// A dynamic condition on a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    /// What is tested.
    pub field: CriterionField,
    /// How.
    #[serde(default)]
    pub op: CriterionOp,
    /// The value (equals, contains, matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The values (in).
    #[serde(default)]
    pub values: Vec<String>,
}

/// hard | soft | optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyType {
    /// The target must succeed.
    #[default]
    Hard,
    /// The target must finish.
    Soft,
    /// Ordering only, when the target is in the plan.
    Optional,
}

/// `source` waits for `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// The waiting side, "kind.name".
    pub source: String,
    /// The side waited for, "kind.name".
    pub target: String,
    /// hard | soft | optional.
    #[serde(rename = "type", default)]
    pub kind: DependencyType,
    /// Polled before the source starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_condition: Option<WaitCondition>,
}

/// A command polled until it exits 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitCondition {
    /// Shell command.
    pub command: String,
    /// Server it runs on; the orchestrator when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Seconds before giving up.
    pub timeout: u64,
    /// Seconds between polls.
    pub interval: u64,
}

/// linear | exponential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// initial_delay × n.
    Linear,
    /// initial_delay × 2^(n-1).
    #[default]
    Exponential,
}

/// How failed attempts are retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Growth of the delay.
    pub backoff: Backoff,
    /// Seconds before the first retry.
    pub initial_delay: u64,
    /// Cap on the delay, seconds.
    pub max_delay: u64,
    /// Spread delays randomly.
    #[serde(default = "yes")]
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Exponential,
            initial_delay: 5,
            max_delay: 300,
            jitter: true,
        }
    }
}

/// How a run rolls back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackStrategy {
    /// Whether rollback happens at all.
    pub enabled: bool,
    /// Roll back when only part of an operation failed.
    pub on_partial_failure: bool,
    /// A safe point every N completed operations (0 = none).
    pub checkpoint_interval: u32,
    /// Keep operations that fully succeeded.
    pub preserve_successful: bool,
}

impl Default for RollbackStrategy {
    fn default() -> Self {
        RollbackStrategy {
            enabled: true,
            on_partial_failure: true,
            checkpoint_interval: 0,
            preserve_successful: false,
        }
    }
}

/// Batches through an operation's servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingStrategy {
    /// Servers per batch.
    pub batch_size: u32,
    /// Seconds between batches.
    pub pause: u64,
    /// Halt when failures exceed this percentage.
    pub failure_threshold: f64,
}

/// Log level of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

/// Log format of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// Where and how a run logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// Minimum level.
    pub level: LogLevel,
    /// JSON lines or text.
    pub format: LogFormat,
    /// Directory of run logs.
    pub dir: String,
    /// Days logs are kept.
    pub retention_days: u32,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: LogLevel::Info,
            format: LogFormat::Json,
            dir: "logs".into(),
            retention_days: 30,
        }
    }
}

/// sqlite | postgres.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum StateStore {
    #[default]
    Sqlite,
    Postgres,
}

/// State store and metrics of a run.
///
/// Fields of older versions (`state_path`, `checkpoint_frequency`,
/// `telemetry`) were removed from the schema because nothing acted on
/// them; runs stored with them still load (unknown fields are ignored
/// here: the KCL schema already refuses them in a workflow).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitoringConfig {
    /// Which store the workflow's runs must be kept in (None: wherever
    /// the orchestrator keeps its state). A run is refused where the
    /// orchestrator's store is of the other kind: a workflow cannot move
    /// its runs to another store.
    #[serde(default)]
    pub state_store: Option<StateStore>,
    /// Whether the run's tasks are counted in the orchestrator's
    /// Prometheus metrics.
    pub metrics: bool,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        MonitoringConfig {
            state_store: None,
            metrics: true,
        }
    }
}

/// SOPS files decrypted with age identities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretProvider {
    /// Always "sops".
    #[serde(rename = "type")]
    pub kind: String,
    /// SOPS files.
    pub files: Vec<String>,
    /// age identity file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_key_file: Option<String>,
}

/// Where a notification goes and which events it wants (see
/// NotificationDef in schemas/workflow.k).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationDef {
    /// The target's name: unique among a workflow's targets; what the
    /// outbox and the API show (never the URL or the secret).
    pub name: String,
    /// webhook | slack | script.
    #[serde(rename = "type")]
    pub kind: NotificationKind,
    /// The URL posted to (webhook, slack): `http(s)://...`, or
    /// `secret:PATH`, a value of the workflow's decrypted secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Webhook only: the HMAC-SHA256 key of the `X-Drover-Signature`
    /// header; literal, or `secret:PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Script only: the program run on the orchestrator, the event as
    /// JSON on its stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The event kinds it wants (names of [`NotificationEvent`]); empty:
    /// every kind.
    #[serde(default)]
    pub events: Vec<String>,
    /// Seconds over which repeats of one event kind to this target are
    /// folded into one message carrying their count; 0: every event is
    /// sent at once.
    #[serde(default)]
    pub cooldown: u64,
}

impl NotificationDef {
    /// Whether this target wants events of `kind`.
    pub fn wants(&self, kind: NotificationEvent) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind.as_str())
    }
}

/// webhook | slack | script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationKind {
    /// A JSON POST of the event, signed when a secret is given.
    Webhook,
    /// A Slack incoming webhook: `{"text": ...}`.
    Slack,
    /// A program on the orchestrator, the event as JSON on stdin.
    Script,
}

impl NotificationKind {
    /// The name written in workflows and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Webhook => "webhook",
            NotificationKind::Slack => "slack",
            NotificationKind::Script => "script",
        }
    }
}

/// The kinds of event a notification target can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationEvent {
    /// A run ended with every task done.
    RunSucceeded,
    /// A run ended failed.
    RunFailed,
    /// A run failed and was rolled back.
    RunRolledBack,
    /// A run was cancelled by an operator.
    RunCancelled,
    /// A rolling operation stopped: too many of its servers failed.
    RollingHalted,
    /// A scheduled run did not start when it was due.
    ScheduleMissed,
    /// Servers differ from a snapshot.
    DriftFound,
    /// A watched file or command output changed.
    WatchChange,
}

impl NotificationEvent {
    /// Every kind.
    pub const ALL: [NotificationEvent; 8] = [
        NotificationEvent::RunSucceeded,
        NotificationEvent::RunFailed,
        NotificationEvent::RunRolledBack,
        NotificationEvent::RunCancelled,
        NotificationEvent::RollingHalted,
        NotificationEvent::ScheduleMissed,
        NotificationEvent::DriftFound,
        NotificationEvent::WatchChange,
    ];

    /// The name written in workflows and payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationEvent::RunSucceeded => "run_succeeded",
            NotificationEvent::RunFailed => "run_failed",
            NotificationEvent::RunRolledBack => "run_rolled_back",
            NotificationEvent::RunCancelled => "run_cancelled",
            NotificationEvent::RollingHalted => "rolling_halted",
            NotificationEvent::ScheduleMissed => "schedule_missed",
            NotificationEvent::DriftFound => "drift_found",
            NotificationEvent::WatchChange => "watch_change",
        }
    }

    /// The kind named `s`; None for a name no kind has.
    pub fn parse(s: &str) -> Option<NotificationEvent> {
        NotificationEvent::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// cpu (cores), memory (MiB), disk (GiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Cores.
    pub cpu: u32,
    /// MiB.
    pub memory: u64,
    /// GiB.
    pub disk: u64,
}

/// A provider's declaration (providers/<name>/kcl/dependencies.k).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderDecl {
    /// Provider name (its folder's name).
    pub name: String,
    /// Needs a network before anything else.
    pub requires_network: bool,
    /// Server creation waits for the network.
    pub network_before_servers: bool,
    /// Resources shared by its servers.
    #[serde(default)]
    pub shared_resources: Vec<String>,
    /// Calls started per second.
    pub api_rate_limit: f64,
    /// Calls in flight.
    pub batch_size: u32,
    /// Plan name → resources.
    pub plans: BTreeMap<String, Resources>,
    /// The declaration file (set by the loader).
    #[serde(default)]
    pub origin: PathBuf,
}

/// A taskserv's health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Shell command, exit 0 when healthy.
    pub command: String,
    /// Seconds per try.
    pub timeout: u64,
    /// Tries after the first.
    pub retries: u32,
}

/// The scripts a taskserv folder may ship.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Script {
    Install,
    Remove,
    Check,
    Update,
    Rollback,
}

impl Script {
    /// Every script kind.
    pub const ALL: [Script; 5] = [
        Script::Install,
        Script::Remove,
        Script::Check,
        Script::Update,
        Script::Rollback,
    ];

    /// File name under scripts/.
    pub fn file_name(self) -> &'static str {
        match self {
            Script::Install => "install.sh",
            Script::Remove => "remove.sh",
            Script::Check => "check.sh",
            Script::Update => "update.sh",
            Script::Rollback => "rollback.sh",
        }
    }
}

/// A taskserv's declaration (taskservs/<name>/kcl/dependencies.k).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskservDecl {
    /// Taskserv name (its folder's name).
    pub name: String,
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Taskservs installed before it on the same server.
    #[serde(default)]
    pub requires: Vec<String>,
    /// Taskservs that must not share its server.
    #[serde(default)]
    pub conflicts_with: Vec<String>,
    /// What a server's plan must offer.
    #[serde(default)]
    pub minimum_resources: Resources,
    /// Run after install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Scripts present in its folder (set by the loader).
    #[serde(default)]
    pub scripts: BTreeSet<Script>,
    /// The declaration file (set by the loader).
    #[serde(default)]
    pub origin: PathBuf,
}

/// Everything a workflow refers to besides itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderDecl>,
    /// Taskservs by name.
    pub taskservs: BTreeMap<String, TaskservDecl>,
}

/// An inventory file's `inventory` value: servers and groups, no work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryDef {
    /// The servers.
    #[serde(default)]
    pub servers: Vec<Server>,
    /// The groups.
    #[serde(default)]
    pub groups: Vec<GroupDef>,
}

/// A workflow with the file it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The workflow file, as the user named it.
    pub file: PathBuf,
    /// The evaluated workflow.
    pub workflow: Workflow,
}
