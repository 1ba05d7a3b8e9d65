//! The API's wire format: every request and response body. Internal types
//! (the executor's summaries, the state store's records) are converted to
//! these explicitly, so the API changes only when this file does. The
//! OpenAPI document is generated from these types.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

mod schedules;
pub use schedules::*;

/// Submit a workflow: its KCL source, or the path of a file on the server.
///
/// Its schema is written by hand (below): exactly one of `source` and
/// `path` must be given, which a derived schema cannot say.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The workflow's KCL source (it may import the `drover` package). Give
    /// this or `path`.
    #[serde(default)]
    pub source: Option<String>,
    /// The path of a workflow file on the server. Give this or `source`.
    #[serde(default)]
    pub path: Option<String>,
    /// Only evaluate and validate; nothing is recorded.
    #[serde(default)]
    pub validate_only: bool,
    /// Evaluate, validate and plan; return the plan without running it.
    #[serde(default)]
    pub dry_run: bool,
}

impl utoipa::PartialSchema for SubmitRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
        let flag = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .default(Some(false.into()))
                .description(Some(description))
        };
        // One object per way of giving the workflow; with no other
        // properties allowed, a body with both matches neither.
        let variant = |field: &str, title: &str, description: &str| {
            ObjectBuilder::new()
                .title(Some(title))
                .property(
                    field,
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .description(Some(description)),
                )
                .required(field)
                .property(
                    "validate_only",
                    flag("Only evaluate and validate; nothing is recorded."),
                )
                .property(
                    "dry_run",
                    flag("Evaluate, validate and plan; return the plan without running it."),
                )
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        OneOfBuilder::new()
            .description(Some(
                "Submit a workflow: its KCL source, or the path of a file on the server (exactly one of them).",
            ))
            .item(variant(
                "source",
                "source",
                "The workflow's KCL source (it may import the `drover` package).",
            ))
            .item(variant("path", "path", "The path of a workflow file on the server."))
            .into()
    }
}

impl ToSchema for SubmitRequest {}

/// What a submission produced.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    /// The new run (absent for validate_only and dry_run).
    pub run_id: Option<String>,
    /// Its status (queued), absent for validate_only and dry_run.
    pub status: Option<String>,
    /// The workflow's name.
    pub workflow: String,
    /// Servers declared.
    pub servers: usize,
    /// Tasks in the plan.
    pub tasks: usize,
    /// The plan's operations in order, with their tasks.
    pub operations: Vec<OperationPlan>,
}

/// One operation of a plan.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperationPlan {
    /// Operation id.
    pub id: String,
    /// Its tasks: id and server.
    pub tasks: Vec<TaskRef>,
}

/// A task's identity.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskRef {
    /// Task id.
    pub id: String,
    /// The server it runs on, if any.
    pub server: Option<String>,
}

/// A run in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunInfo {
    /// Run id.
    pub run_id: String,
    /// Workflow name.
    pub workflow: String,
    /// Workflow file (on the server).
    pub file: String,
    /// queued, running, paused, succeeded, failed, cancelled, aborted or
    /// rolled_back.
    pub status: String,
    /// Created, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Last status change, ms since the Unix epoch.
    pub updated_at_ms: i64,
}

/// A run as listed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunListItem {
    /// The run.
    #[serde(flatten)]
    pub run: RunInfo,
    /// The name of the token that submitted it, or `schedule ID` (absent
    /// for runs started another way, e.g. `drover run`).
    #[serde(default)]
    pub submitted_by: Option<String>,
}

/// Every run, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    /// The runs.
    pub runs: Vec<RunListItem>,
    /// Runs waiting in the queue (on a shared store: every queued run,
    /// whichever instance takes it up).
    pub queue_depth: usize,
}

/// A run's status, as the API names it (the status query of the run
/// listing takes these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted, waiting for a slot.
    Queued,
    /// Executing.
    Running,
    /// Dispatching paused.
    Paused,
    /// Every task succeeded.
    Succeeded,
    /// A task failed.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
    /// Interrupted (shutdown, crash); it can be resumed.
    Aborted,
    /// Rolled back.
    RolledBack,
    /// Being rolled back.
    RollingBack,
}

/// Filters of the run listing.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only runs with this status.
    #[param(value_type = Option<RunState>, inline)]
    pub status: Option<String>,
    /// At most this many runs.
    // Documented as what a u32 holds (a derived u32 says int32, whose
    // maximum is half that).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 4_294_967_295_i64)]
    pub limit: Option<u32>,
}

/// A run's state, rebuilt from its journal.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunStatusView {
    /// The run.
    #[serde(flatten)]
    pub run: RunInfo,
    /// How it ended, when it did.
    pub reason: String,
    /// Its operations, in plan order.
    pub operations: Vec<OperationStatus>,
    /// What a rollback could not undo: task and why.
    pub not_undone: Vec<NotUndone>,
    /// The name of the token that submitted the run, or `schedule ID`
    /// for a run a schedule started (absent for runs started another way,
    /// e.g. `drover run`).
    #[serde(default)]
    pub submitted_by: Option<String>,
    /// Who did what to the run, oldest first: its submission and every
    /// operator command, refused ones included.
    #[serde(default)]
    pub actions: Vec<RunAction>,
    /// What its notification targets were told, oldest first (targets by
    /// name; never a URL or a key).
    #[serde(default)]
    pub notifications: Vec<RunNotification>,
    /// On a shared (PostgreSQL) store: the `drover serve` instance
    /// executing the run now (the holder of its live lease); absent when
    /// none is, and on SQLite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
}

/// One notification about a run, as its status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunNotification {
    /// The target's name.
    pub target: String,
    /// webhook, slack or script.
    pub target_kind: String,
    /// The event (run_failed, rolling_halted, ...).
    pub event: String,
    /// How many events it stands for (a cooldown folds repeats).
    pub count: i64,
    /// queued, delivered or failed.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Why the last attempt failed, if it did.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// One operator action on a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunAction {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The name of the token used (`anonymous (--no-auth)` on a server
    /// without authentication).
    pub by: String,
    /// submit, pause, resume, cancel, retry or rollback.
    pub action: String,
    /// What was asked, in a few words.
    pub detail: Option<String>,
    /// `ok`, or why it was refused.
    pub outcome: String,
}

/// A task a rollback could not undo.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotUndone {
    /// The task.
    pub task: String,
    /// Why.
    pub reason: String,
}

/// One operation's state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperationStatus {
    /// Operation id.
    pub id: String,
    /// pending, running, succeeded, failed, skipped or cancelled.
    pub status: String,
    /// Its tasks.
    pub tasks: Vec<TaskStatus>,
}

/// One task's state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskStatus {
    /// Task id.
    pub id: String,
    /// What it does (create, install, ...).
    pub action: String,
    /// Its server.
    pub server: Option<String>,
    /// pending, ready, running, waiting, succeeded, failed, skipped or
    /// cancelled.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// Time spent in attempts, ms.
    pub duration_ms: u64,
    /// Why it failed, was skipped or cancelled.
    pub error: Option<String>,
    /// For a failed task, how its last failure was classified: `transient`
    /// (retried per the retry policy until attempts ran out) or `permanent`
    /// (not retried: refused login, changed host key, sudo refused, a
    /// missing script, ...).
    pub failure: Option<String>,
    /// What rollback did with it.
    pub rollback: Option<String>,
}

/// Which output lines, or journal events, to stream.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Keep streaming until the run ends (default: what exists now, then
    /// end).
    #[serde(default)]
    pub follow: bool,
    /// Only this task's lines (logs only).
    pub task: Option<String>,
    /// Only lines of tasks on this server (logs only).
    pub server: Option<String>,
    /// Start after this event id (as the Last-Event-ID header does).
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

/// The header a reconnecting SSE client sends to resume a stream.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ResumeHeader {
    /// Resume after this event id.
    // Optional, but not nullable: utoipa makes an Option header nullable,
    // and a header has no null.
    #[serde(rename = "Last-Event-ID")]
    #[param(value_type = i64, required = false, minimum = 0)]
    pub last_event_id: Option<i64>,
}

/// One output line (the `data` of a `log` event).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogEvent {
    /// Position in the run's output (the event id).
    pub seq: i64,
    /// The task.
    pub task: String,
    /// Its server.
    pub server: Option<String>,
    /// stdout or stderr.
    pub stream: String,
    /// The line, secrets masked.
    pub line: String,
}

/// One `log` event of a run's logs stream, as an SSE client reads it: its
/// `data` is a [`LogEvent`] as JSON.
#[derive(Debug)]
pub struct LogStreamEvent;

impl utoipa::PartialSchema for LogStreamEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        stream_event("log", "LogEvent")
    }
}

impl ToSchema for LogStreamEvent {}

/// One `transition` event of a run's events stream, as an SSE client reads
/// it: its `data` is a [`JournalEvent`] as JSON.
#[derive(Debug)]
pub struct TransitionStreamEvent;

impl utoipa::PartialSchema for TransitionStreamEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        stream_event("transition", "JournalEvent")
    }
}

impl ToSchema for TransitionStreamEvent {}

/// The schema of one server-sent event (OpenAPI 3.1 has a
/// `text/event-stream` schema describe each event: its `event`, `id` and
/// `data` fields) whose data is the JSON of the component `data_schema`.
fn stream_event(event: &str, data_schema: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::extensions::Extensions;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    // contentSchema is JSON Schema's keyword for what an encoded string
    // holds; utoipa has no field for it, and extensions are written out
    // as given.
    let content_schema: Extensions = [(
        "contentSchema",
        serde_json::json!({ "$ref": format!("#/components/schemas/{data_schema}") }),
    )]
    .into_iter()
    .collect();
    ObjectBuilder::new()
        .description(Some(format!(
            "One `{event}` event; its data is a {data_schema} as JSON."
        )))
        .property(
            "event",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([event])),
        )
        .required("event")
        .property(
            "id",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]+$"))
                .description(Some("The event id (its position; resume after it with Last-Event-ID).")),
        )
        .required("id")
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .content_media_type("application/json")
                .extensions(Some(content_schema)),
        )
        .required("data")
        .into()
}

/// One journal entry (the `data` of a `transition` event).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JournalEvent {
    /// Position in the run's journal (the event id).
    pub seq: i64,
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The task or gate (absent for run-level events).
    pub node: Option<String>,
    /// The event, as journaled: `{"event": "task_started", ...}`.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// Retry a finished run: all its failed and cancelled tasks, or one
/// operation's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Only this operation's tasks (and what follows from them).
    #[serde(default)]
    pub operation: Option<String>,
}

/// An operator command was accepted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ActionResponse {
    /// The run.
    pub run_id: String,
    /// The command: rollback, retry, pause, resume or cancel.
    pub action: String,
    /// The run's status after accepting it.
    pub status: String,
}

/// A run's counters and durations.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunMetrics {
    /// The run.
    pub run_id: String,
    /// Its status.
    pub status: String,
    /// Tasks in the plan.
    pub tasks_total: usize,
    /// Tasks by status.
    pub tasks: std::collections::BTreeMap<String, usize>,
    /// Attempts started.
    pub attempts: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// Compensations run by rollbacks.
    pub undone: u64,
    /// Journal entries.
    pub events: usize,
    /// From the first to the last journal entry, ms.
    pub elapsed_ms: i64,
    /// Sum of task attempt durations, ms.
    pub task_time_ms: u64,
    /// Per operation: tasks, succeeded, failed, total and longest task time.
    pub operations: Vec<OperationMetrics>,
}

/// One operation's figures.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperationMetrics {
    /// Operation id.
    pub id: String,
    /// Tasks.
    pub tasks: usize,
    /// Tasks that succeeded.
    pub succeeded: usize,
    /// Tasks that failed.
    pub failed: usize,
    /// Sum of its tasks' attempt durations, ms.
    pub task_time_ms: u64,
    /// Its longest task, ms.
    pub max_task_ms: u64,
}

/// An error: a stable code for programs and a message for people.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// invalid_request, invalid_workflow, unauthorized, forbidden,
    /// not_found, conflict, queue_full, unavailable or internal.
    pub code: String,
    /// What is wrong and what to do about it.
    pub message: String,
    /// Each problem found in a workflow (invalid_workflow), with where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Health.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// "ok".
    pub status: String,
    /// Runs executing in this instance.
    pub running: usize,
    /// Runs waiting in this instance's queue (on a shared store, those it
    /// took up and has not started yet).
    pub queued: usize,
}

/// What a token may do: `viewer` reads (runs, status, events, logs,
/// metrics, the API document); `operator` also submits workflows as source
/// and steers runs (pause, resume, cancel, retry, rollback); `admin` also
/// submits workflow files by path, manages tokens and reads the audit
/// trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Reads only.
    Viewer,
    /// Reads, submits sources, steers runs.
    Operator,
    /// Everything.
    Admin,
}

impl TokenRole {
    /// The store's role.
    pub fn to_role(self) -> drover_state::Role {
        match self {
            TokenRole::Viewer => drover_state::Role::Viewer,
            TokenRole::Operator => drover_state::Role::Operator,
            TokenRole::Admin => drover_state::Role::Admin,
        }
    }

    /// The wire's role.
    pub fn of(role: drover_state::Role) -> TokenRole {
        match role {
            drover_state::Role::Viewer => TokenRole::Viewer,
            drover_state::Role::Operator => TokenRole::Operator,
            drover_state::Role::Admin => TokenRole::Admin,
        }
    }

    /// As written: viewer, operator, admin.
    pub fn as_str(self) -> &'static str {
        self.to_role().as_str()
    }
}

/// Create a named token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Its name, recorded as the actor of everything done with it; unique
    /// for ever (a revoked token's name is not given out again).
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", min_length = 1, max_length = 64)]
    pub name: String,
    /// What it may do.
    pub role: TokenRole,
}

/// A new token. The only answer that ever holds it: it is stored hashed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: TokenRole,
    /// Created, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// The token: send it as `Authorization: Bearer <token>`. Shown once.
    pub token: String,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("CreatedToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A token as listed: never the token, nor its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: TokenRole,
    /// Where it comes from: `token_file` (the server's own admin token,
    /// local-admin), `env` (DROVER_TOKEN, env-admin) or `store` (created
    /// over the API).
    pub source: String,
    /// Created, ms since the Unix epoch (tokens of the store).
    pub created_at_ms: Option<i64>,
    /// The token that created it (tokens of the store).
    pub created_by: Option<String>,
    /// Last accepted, ms since the Unix epoch.
    pub last_used_ms: Option<i64>,
    /// Revoked, ms since the Unix epoch: it opens nothing.
    pub revoked_at_ms: Option<i64>,
}

/// Every token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// The server's own first, then those created, oldest first.
    pub tokens: Vec<TokenInfo>,
}

/// Filters of the audit trail.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only actions on this run.
    pub run_id: Option<String>,
    /// Only actions by this token name.
    pub actor: Option<String>,
    /// Only this action (submit, pause, resume, cancel, retry, rollback,
    /// token_create, token_revoke).
    pub action: Option<String>,
    /// Only actions at or after this time, ms since the Unix epoch.
    #[param(minimum = 0)]
    pub since_ms: Option<i64>,
    /// At most this many (default 1000).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 4_294_967_295_i64)]
    pub limit: Option<u32>,
}

/// One record of the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Its position in the trail.
    pub id: i64,
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The name of the token used.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// The run it was about.
    pub run_id: Option<String>,
    /// What was asked, in a few words.
    pub detail: Option<String>,
    /// `ok`, or why it was refused.
    pub outcome: String,
}

/// Audit records, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    /// The records.
    pub entries: Vec<AuditEntry>,
}

/// Filters of the notification outbox.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationParams {
    /// Only deliveries about this run.
    pub run_id: Option<String>,
    /// Only deliveries in this status.
    #[param(value_type = Option<DeliveryState>, inline)]
    pub status: Option<String>,
    /// At most this many (default 1000).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 4_294_967_295_i64)]
    pub limit: Option<u32>,
}

/// Where a notification delivery stands (the status filter of
/// `/notifications` takes these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its (next) attempt or for its cooldown window to end.
    Queued,
    /// Accepted by the target.
    Delivered,
    /// Given up: refused for good, or out of attempts.
    Failed,
}

/// One message owed to a notification target (the outbox's row). The
/// target's URL and secret are never shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationDelivery {
    /// Its id.
    pub id: i64,
    /// The run it is about (with a cooldown: the last folded event's).
    pub run_id: Option<String>,
    /// The target's name.
    pub target: String,
    /// webhook, slack or script.
    pub target_kind: String,
    /// The event kind (run_failed, rolling_halted, drift_found, ...).
    pub event: String,
    /// How many events it stands for (folded by the target's cooldown).
    pub count: i64,
    /// queued, delivered or failed.
    #[schema(value_type = DeliveryState)]
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Queued, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// When the next attempt is due (queued only).
    pub next_attempt_at_ms: Option<i64>,
    /// When the target accepted it.
    pub delivered_at_ms: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The event as sent (secrets masked), without `count` and `target`.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// Deliveries, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotificationList {
    /// The deliveries.
    pub deliveries: Vec<NotificationDelivery>,
}

/// Which servers of a fleet file (`/fleet/*`): those meeting every filter
/// given, as a workflow operation's `selector` picks them. Empty: every
/// server of the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetSelector {
    /// Only these servers, by hostname (with `groups`: servers named here
    /// or in one of the groups).
    #[serde(default)]
    pub servers: Vec<String>,
    /// Only servers in one of these groups (hierarchy and criteria
    /// resolved).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Only servers with every one of these tags (`!t`: without t).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only servers meeting every one of these conditions.
    #[serde(default)]
    pub criteria: Vec<FleetCriterion>,
}

/// A condition on a server's field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetCriterion {
    /// What is tested.
    pub field: CriterionField,
    /// How (default `equals`).
    #[serde(default)]
    pub op: CriterionOp,
    /// The value (equals, contains, matches: a regular expression).
    #[serde(default)]
    pub value: Option<String>,
    /// The values (in).
    #[serde(default)]
    pub values: Vec<String>,
}

/// A server field a criterion tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CriterionField {
    /// Its hostname.
    Hostname,
    /// Its provider.
    Provider,
    /// Its plan.
    Plan,
    /// Its zone.
    Zone,
    /// Its address.
    Address,
    /// One of its tags.
    Tag,
    /// One of its groups.
    Group,
}

/// How a criterion compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CriterionOp {
    /// Equal to `value`.
    #[default]
    Equals,
    /// Contains `value`.
    Contains,
    /// One of `values`.
    In,
    /// Matches the regular expression `value`.
    Matches,
}

impl FleetSelector {
    /// The model's selector.
    pub fn to_model(&self) -> drover_core::model::Selector {
        use drover_core::model::{Criterion, CriterionField as F, CriterionOp as O};
        drover_core::model::Selector {
            servers: self.servers.clone(),
            groups: self.groups.clone(),
            tags: self.tags.clone(),
            criteria: self
                .criteria
                .iter()
                .map(|c| Criterion {
                    field: match c.field {
                        CriterionField::Hostname => F::Hostname,
                        CriterionField::Provider => F::Provider,
                        CriterionField::Plan => F::Plan,
                        CriterionField::Zone => F::Zone,
                        CriterionField::Address => F::Address,
                        CriterionField::Tag => F::Tag,
                        CriterionField::Group => F::Group,
                    },
                    op: match c.op {
                        CriterionOp::Equals => O::Equals,
                        CriterionOp::Contains => O::Contains,
                        CriterionOp::In => O::In,
                        CriterionOp::Matches => O::Matches,
                    },
                    value: c.value.clone(),
                    values: c.values.clone(),
                })
                .collect(),
        }
    }
}

/// Which servers of a fleet file a selector picks. The file is an
/// inventory or workflow file: its KCL `source` or the `path` of a file on
/// the server (exactly one; a path needs the admin role).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectRequest {
    /// The file's KCL source. Give this or `path`.
    #[serde(default)]
    pub source: Option<String>,
    /// The path of a `.k` file under the server's workflows directories.
    /// Give this or `source`.
    #[serde(default)]
    pub path: Option<String>,
    /// Which servers (none given: all).
    #[serde(default)]
    pub selector: FleetSelector,
}

/// One selected server.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FleetServer {
    /// Its hostname.
    pub hostname: String,
    /// Its provider.
    pub provider: String,
    /// Its plan.
    pub plan: String,
    /// Its zone.
    pub zone: Option<String>,
    /// Its address, when declared.
    pub address: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Every group it is in (declared, by membership or by criteria).
    pub groups: Vec<String>,
}

/// The servers a selector picks, in declaration order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SelectResponse {
    /// The servers.
    pub servers: Vec<FleetServer>,
    /// How many.
    pub count: usize,
}

/// Run a shell command on the servers a selector picks: a run of its own
/// (queued like a submitted workflow; followed, cancelled and retried
/// through `/workflows/{id}/...`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The fleet file's KCL source (an inventory or workflow file). Give
    /// this or `path`.
    #[serde(default)]
    pub source: Option<String>,
    /// The path of a `.k` file under the server's workflows directories
    /// (admin role). Give this or `source`.
    #[serde(default)]
    pub path: Option<String>,
    /// Which servers (none given: all of the file).
    #[serde(default)]
    pub selector: FleetSelector,
    /// The shell command, run by `/bin/sh` on each server.
    #[schema(min_length = 1)]
    pub command: String,
    /// At most this many servers at once (default 64).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub parallel: Option<u32>,
    /// Rolling batches, halted after too many failed servers.
    #[serde(default)]
    pub rolling: Option<ExecRolling>,
    /// Run as root (`sudo -n`) on servers that do not declare `ssh.become`.
    #[serde(default, rename = "become")]
    pub become_root: bool,
    /// Seconds before the command is killed on a server (default 600).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout: Option<u64>,
}

/// Rolling batches of an exec.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRolling {
    /// Servers per batch.
    #[schema(minimum = 1)]
    pub batch: u32,
    /// Seconds between batches.
    #[serde(default)]
    pub pause: u64,
    /// How many failed servers halt the roll: a number (`"3"`) or a
    /// percentage of the selected servers (`"10%"`); default `"0"`.
    #[serde(default)]
    pub max_fail: Option<String>,
}

/// An exec was accepted and queued.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecAccepted {
    /// Its run.
    pub run_id: String,
    /// `queued`.
    pub status: String,
    /// The command.
    pub command: String,
    /// The servers selected, in declaration order.
    pub servers: Vec<String>,
}

/// How far an exec is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecProgress {
    /// Servers selected.
    pub total: usize,
    /// Servers finished with: succeeded, failed or skipped (a cancelled
    /// server runs the command when the run is resumed).
    pub done: usize,
    /// Servers where the command failed (a non-zero exit, a signal, a
    /// timeout, or the server could not be reached).
    pub failed: usize,
    /// `done` of `total`, 0 to 100 (rounded down).
    pub percent: u32,
}

/// One server's answer to an exec, from the run's journal.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecAnswer {
    /// The server.
    pub server: String,
    /// Its task's state: pending, ready, running, waiting, succeeded,
    /// failed, skipped or cancelled.
    pub status: String,
    /// The command's exit status, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Standard output (at most 64 KiB are kept).
    pub stdout: String,
    /// Standard error (at most 64 KiB are kept).
    pub stderr: String,
    /// Whether a stream was cut at 64 KiB (the run's logs have it all).
    pub truncated: bool,
    /// Why it failed, was skipped or cancelled.
    pub error: Option<String>,
    /// Time spent, ms.
    pub duration_ms: u64,
}

/// Servers whose answers are identical.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecGroup {
    /// The servers.
    pub servers: Vec<String>,
    /// The same as a compact host list (`web-[01-03,07],db-1`).
    pub hosts: String,
    /// How the command ended on them: `exit 0`, `exit 3`, `killed by
    /// signal 9`, `failed: ...` (the server's own name shown as
    /// `<server>`), `not run`, `running`.
    pub outcome: String,
    /// Their standard output.
    pub stdout: String,
    /// Their standard error.
    pub stderr: String,
}

/// An exec's state: per server, and identical answers grouped.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecView {
    /// Its run (its events, logs and commands: `/workflows/{id}/...`).
    pub run_id: String,
    /// The command.
    pub command: String,
    /// The run's status (see RunState).
    pub status: String,
    /// How it ended, when it did.
    pub reason: String,
    /// The token that submitted it.
    pub submitted_by: Option<String>,
    /// How far it is.
    pub progress: ExecProgress,
    /// Every selected server's answer, in declaration order.
    pub servers: Vec<ExecAnswer>,
    /// Identical answers folded together: the largest group first.
    pub groups: Vec<ExecGroup>,
}

/// Take a snapshot: read files and run commands on the servers a selector
/// picks in a fleet file, and keep what was found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The fleet file's KCL source (an inventory or workflow file). Give
    /// this or `path`.
    #[serde(default)]
    pub source: Option<String>,
    /// The path of a `.k` file under the server's workflows directories
    /// (admin role). Give this or `source`.
    #[serde(default)]
    pub path: Option<String>,
    /// Which servers (none given: all of the file).
    #[serde(default)]
    pub selector: FleetSelector,
    /// Files to record on each server (`~/...`: in the login user's home;
    /// relative paths too): existence, size, SHA-256, and the first 64 KiB
    /// of text.
    #[serde(default)]
    pub files: Vec<String>,
    /// Shell commands whose exit status and output to record on each
    /// server.
    #[serde(default)]
    pub commands: Vec<String>,
    /// A name for it, unique among snapshots (what drift is compared
    /// against).
    #[serde(default)]
    pub name: Option<String>,
}

/// A snapshot, without what was found.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    /// Its id.
    pub id: String,
    /// Its name, if it was given one.
    pub name: Option<String>,
    /// When it was taken, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// The fleet file its servers came from (`<source>` for a file sent as
    /// source).
    pub file: String,
    /// The selector that picked the servers.
    #[schema(value_type = Object)]
    pub selector: serde_json::Value,
    /// What was recorded: `{"files": [...], "commands": [...]}`.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
}

/// A snapshot just taken.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotTaken {
    /// The snapshot.
    #[serde(flatten)]
    pub snapshot: SnapshotInfo,
    /// The servers read.
    pub servers: Vec<String>,
    /// The servers that could not be read, and why.
    pub unreachable: Vec<Unreachable>,
}

/// A server that could not be read.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Unreachable {
    /// The server.
    pub server: String,
    /// Why.
    pub error: String,
}

/// Every snapshot, newest first, without what was found (viewer role).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    /// The snapshots.
    pub snapshots: Vec<SnapshotInfo>,
}

/// A snapshot with what was found on each server (operator role: it
/// holds the servers' files).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotView {
    /// The snapshot.
    #[serde(flatten)]
    pub snapshot: SnapshotInfo,
    /// Per server: `{"server", "error"?, "files": {PATH: {"exists",
    /// "sha256", "size", "text", "truncated", "binary", "error"}},
    /// "commands": {COMMAND: {"exit_code", "stdout", "stderr"}}}`.
    #[schema(value_type = Vec<Object>)]
    pub servers: serde_json::Value,
}

/// Compare the servers now with a snapshot: its files and commands read
/// again on the servers a selector picks in a fleet file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DriftRequest {
    /// The fleet file's KCL source. Give this or `path`.
    #[serde(default)]
    pub source: Option<String>,
    /// The path of a `.k` file under the server's workflows directories
    /// (admin role). Give this or `source`.
    #[serde(default)]
    pub path: Option<String>,
    /// Which servers (none given: all of the file; given, only these are
    /// compared).
    #[serde(default)]
    pub selector: FleetSelector,
    /// The snapshot: its id or its name.
    pub against: String,
}

/// One difference between a snapshot and now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DriftChange {
    /// The server.
    pub server: String,
    /// `server`, `file` or `command`.
    pub kind: String,
    /// The file's path, the command, or (kind `server`) the server.
    pub item: String,
    /// What changed, in a few words.
    pub summary: String,
    /// A unified diff of the content or output, when there is one.
    pub diff: String,
}

/// How the servers differ from a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DriftResponse {
    /// The snapshot compared with.
    pub against: SnapshotInfo,
    /// Servers compared (on either side).
    pub servers: usize,
    /// Every difference, per server; empty: no drift.
    pub changes: Vec<DriftChange>,
}

/// Who the caller is: its token's name and role.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// The token's name (as the audit trail records it).
    pub name: String,
    /// viewer, operator or admin.
    pub role: String,
}

/// A run's plan as a graph.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunGraph {
    /// The run.
    pub run_id: String,
    /// Its workflow's name.
    pub workflow: String,
    /// Operation ids, in declaration order (`GraphNode.operation` indexes
    /// this).
    pub operations: Vec<String>,
    /// Tasks and gates; an edge's `from` and `to` index this.
    pub nodes: Vec<GraphNode>,
    /// Dependencies: `to` waits for `from`.
    pub edges: Vec<GraphEdge>,
}

/// A task (work) or a gate (a join point that does no work).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GraphNode {
    /// Its id (a task's, as the status and events name it).
    pub id: String,
    /// `task` or `gate`.
    pub kind: String,
    /// The operation it belongs to (index into `operations`); a gate of a
    /// DependencyDef belongs to none.
    pub operation: Option<usize>,
    /// The server a task works on.
    pub server: Option<String>,
    /// The taskserv a task installs, updates or removes.
    pub taskserv: Option<String>,
}

/// A dependency.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GraphEdge {
    /// The node waited for.
    pub from: usize,
    /// The node that waits.
    pub to: usize,
    /// `success` (it must succeed, else the waiting node is skipped) or
    /// `finish` (it must end, in any state).
    pub needs: String,
}
