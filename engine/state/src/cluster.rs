//! What several orchestrators sharing one PostgreSQL store need beyond
//! the journal: leases on runs (who executes which), fencing tokens,
//! operator requests for a run another instance executes, and the
//! store's change notices.
//!
//! The protocol (ARCHITECTURE.md, "Several orchestrators"): a run is
//! executed only by the holder of its lease. Claiming a lease bumps the
//! run's fence; every journal write of the holder carries that fence and
//! is refused once the fence moved on, so an owner that lost its lease
//! (it stalled, or lost the database) cannot write again.

use serde::{Deserialize, Serialize};

/// A lease taken on a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The run.
    pub id: String,
    /// Its fence now: every journal write of this holder carries it.
    pub fence: i64,
    /// Its status when claimed (a paused run starts paused).
    pub status: crate::RunStatus,
}

/// Who holds a run's lease, as the store says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The holder's instance id (None: never claimed, or released).
    pub owner: Option<String>,
    /// The fence: how many times the run was claimed.
    pub fence: i64,
    /// Whether the lease is unexpired (database time).
    pub live: bool,
}

/// An operator action asked of the instance that executes a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequest {
    /// Its id.
    pub id: i64,
    /// The run.
    pub run_id: String,
    /// `pause`, `resume`, `cancel`.
    pub action: String,
    /// When it was asked, ms since the epoch.
    pub requested_at_ms: i64,
}

/// How an [`ActionRequest`] ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionAnswer {
    /// Done: the run's status as the action left it.
    Done(String),
    /// Refused: an HTTP status and why.
    Refused(u16, String),
}

/// A piece of a run's output stream: lines `first_seq..=last_seq`, as
/// JSON lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The first line's number.
    pub first_seq: i64,
    /// The last line's number.
    pub last_seq: i64,
    /// The lines, one JSON object per line, each ending in `\n`.
    pub body: String,
}

/// A change another instance made, told through LISTEN/NOTIFY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A run's journal grew (its id).
    Journal(String),
    /// A run was created, or its lease released: there may be a run to
    /// claim.
    Runs,
    /// An operator action was asked (the run's id).
    Request(String),
    /// A run's output stream grew (its id).
    Logs(String),
}
