//! The wire format of `/schedules`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ExecRequest;

/// The workflow a schedule starts: its KCL source, or the path of a file
/// on the server (admin role). Give one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduledWorkflow {
    /// The workflow's KCL source.
    #[serde(default)]
    pub source: Option<String>,
    /// The path of a `.k` file under the server's workflows directories.
    #[serde(default)]
    pub path: Option<String>,
}

/// What a slot does while the schedule's previous run is still queued or
/// running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OverlapPolicy {
    /// The slot is recorded as skipped; no run.
    #[default]
    Skip,
    /// A run is queued anyway.
    Queue,
}

impl OverlapPolicy {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            OverlapPolicy::Skip => "skip",
            OverlapPolicy::Queue => "queue",
        }
    }
}

/// What the slots that passed while the server was down do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MissedPolicy {
    /// They are recorded as missed (one record, with their count); none
    /// runs.
    #[default]
    Skip,
    /// One run, for the latest of them.
    RunOnce,
}

impl MissedPolicy {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            MissedPolicy::Skip => "skip",
            MissedPolicy::RunOnce => "run-once",
        }
    }
}

fn utc() -> String {
    "UTC".into()
}

/// A new schedule: a workflow or an exec, started on the slots of a cron
/// expression.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// The workflow to run. Give this or `exec`.
    #[serde(default)]
    pub workflow: Option<ScheduledWorkflow>,
    /// The command to run on servers (as `POST /fleet/exec` takes it).
    /// Give this or `workflow`.
    #[serde(default)]
    pub exec: Option<ExecRequest>,
    /// The cron expression: 5 fields (minute hour day month weekday), or
    /// 6 with seconds first (`*/2 * * * * *`).
    #[schema(min_length = 1)]
    pub cron: String,
    /// The IANA time zone the expression is read in (default UTC).
    #[serde(default = "utc")]
    pub timezone: String,
    /// While the previous run is active (default skip).
    #[serde(default)]
    pub overlap: OverlapPolicy,
    /// Slots missed while the server was down (default skip).
    #[serde(default)]
    pub missed: MissedPolicy,
    /// Created paused (default false).
    #[serde(default)]
    pub paused: bool,
}

/// Changes to a schedule: only what is given changes. A new cron
/// expression or time zone, and a resume, count slots from now on (the
/// ones before are neither run nor missed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulePatch {
    /// The cron expression.
    #[serde(default)]
    pub cron: Option<String>,
    /// The IANA time zone.
    #[serde(default)]
    pub timezone: Option<String>,
    /// The overlap policy.
    #[serde(default)]
    pub overlap: Option<OverlapPolicy>,
    /// The missed-run policy.
    #[serde(default)]
    pub missed: Option<MissedPolicy>,
    /// Pause (true) or resume (false).
    #[serde(default)]
    pub paused: Option<bool>,
}

/// A run a schedule started, and the slot it was for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduledRun {
    /// The run (`/workflows/{id}/...`).
    pub run_id: String,
    /// The slot, ms since the Unix epoch.
    pub slot_ms: i64,
    /// The slot, RFC 3339 in the schedule's time zone.
    pub slot: String,
}

/// What became of one slot of a schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleSlot {
    /// The slot, ms since the Unix epoch.
    pub slot_ms: i64,
    /// The slot, RFC 3339 in the schedule's time zone.
    pub slot: String,
    /// `fired`, `skipped` (overlap), `missed` (the server was down) or
    /// `failed` (the run could not be created: see `detail`).
    pub outcome: String,
    /// The run it fired.
    pub run_id: Option<String>,
    /// How many slots this record stands for (missed ones counted
    /// together).
    pub count: i64,
    /// Why, in a sentence.
    pub detail: Option<String>,
    /// When it was recorded, ms since the Unix epoch.
    pub at_ms: i64,
}

/// A schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    /// Its id.
    pub id: String,
    /// `workflow` or `exec`.
    pub kind: String,
    /// What it starts, in a few words (a path, a source's size, a
    /// command).
    pub target: String,
    /// The cron expression.
    pub cron: String,
    /// Its time zone.
    pub timezone: String,
    /// The overlap policy.
    pub overlap: OverlapPolicy,
    /// The missed-run policy.
    pub missed: MissedPolicy,
    /// Whether it is paused.
    pub paused: bool,
    /// Created, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// The token that created it.
    pub created_by: String,
    /// Its next slot, ms since the Unix epoch (none while paused).
    pub next_run_ms: Option<i64>,
    /// Its next slot, RFC 3339 in its time zone.
    pub next_run: Option<String>,
    /// The last run it started, and for which slot.
    pub last_run: Option<ScheduledRun>,
    /// That run's status.
    pub last_status: Option<String>,
    /// Its latest slots acted on, newest first (fired, skipped, missed,
    /// failed): at most 10 in a listing, 100 for one schedule.
    pub slots: Vec<ScheduleSlot>,
}

/// Every schedule, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    /// The schedules.
    pub schedules: Vec<ScheduleView>,
}
