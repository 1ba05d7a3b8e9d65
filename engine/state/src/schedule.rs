//! Schedules as stored (`drover serve`'s cron schedules) and the slots
//! they claimed.
//!
//! Architecture invariant: a schedule's time slot is acted on at most
//! once. Every slot a schedule fires, skips or misses is a row keyed by
//! (schedule, slot time); a fired slot's row is written in the same
//! transaction as the run it creates ([`crate::Store::claim_slot`]), so a
//! crash leaves either both or neither, and a second claim of the slot is
//! refused ([`crate::StateError::SlotTaken`]).
//!
//! What a schedule starts (a workflow, an exec) and its policies are
//! opaque here: the server defines and checks them.

use serde::{Deserialize, Serialize};

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// Its id: time-ordered, like run ids.
    pub id: String,
    /// What it starts (a workflow or an exec), as the server records it.
    pub target: serde_json::Value,
    /// The cron expression (seconds field allowed).
    pub cron: String,
    /// The IANA time zone the expression is read in.
    pub timezone: String,
    /// What a slot does while the previous run is active (`skip`, `queue`).
    pub overlap: String,
    /// What slots missed while the server was down do (`skip`, `run-once`).
    pub missed: String,
    /// Whether it is paused (no slot fires).
    pub paused: bool,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
    /// Last change, ms since the epoch.
    pub updated_at_ms: i64,
    /// Slots after this time are its to act on: its creation, or the last
    /// resume or change of its timing (slots before are neither run nor
    /// counted as missed).
    pub since_ms: i64,
    /// The name of the token that created it.
    pub created_by: String,
}

/// What became of a schedule's slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// The schedule.
    pub schedule_id: String,
    /// The slot's time, ms since the epoch.
    pub slot_ms: i64,
    /// `fired` (a run was created), `skipped` (the previous run was still
    /// active), `missed` (the server was down; `count` slots up to this
    /// one), or `failed` (the run could not be created: `detail` says why).
    pub outcome: String,
    /// The run it created (`fired`).
    pub run_id: Option<String>,
    /// How many slots this record stands for (more than 1: missed slots
    /// recorded together).
    pub count: i64,
    /// Why, in a sentence.
    pub detail: Option<String>,
    /// When it was recorded, ms since the epoch.
    pub at_ms: i64,
}
