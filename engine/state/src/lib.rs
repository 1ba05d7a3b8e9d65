//! The state store: runs and their journals; API tokens (hashed) and the
//! audit trail of operator actions; snapshots of servers' files and
//! command outputs (`drover snapshot`, `drover drift`); the outbox of
//! notifications owed to webhooks, Slack and scripts.
//!
//! Architecture invariant: the journal is the source of truth for a run.
//! Every task transition is appended here, durably (WAL,
//! `synchronous=FULL`), before the scheduler acts on it; anything shown to
//! a user (status, reports, resume) can be rebuilt from it. This crate
//! defines the on-disk format ([`Event`]); the executor converts its own
//! state into it.
//!
//! Appends are batched: the scheduler writes every transition of one turn
//! of its loop in one transaction (one fsync), which is what makes
//! thousands of transitions a second durable on an ordinary disk.

use std::path::PathBuf;

use std::collections::BTreeMap;

pub use drover_core::FailureKind;
use serde::{Deserialize, Serialize};

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened or created.
    #[error("cannot open the state store {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// A read or write failed.
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored value does not decode.
    #[error("state store: corrupt record: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// No run has this id.
    #[error("no run {0} in the state store")]
    UnknownRun(String),
    /// The directory could not be made.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the store: one orchestrator (or `drover run`)
    /// per state file.
    #[error(
        "the state store {path} is in use by {holder}; one process owns a state store at a time: stop it, submit \
         through it (`drover batch`), or give this one another --state"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
        /// Who holds it (pid, command, since when), as it recorded itself.
        holder: String,
    },
    /// The lock file cannot be made or read.
    #[error("cannot lock the state store {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state location names a database this build cannot use.
    #[error(
        "state location {location:?}: {scheme}:// is not supported; give a path to an SQLite file (or sqlite://PATH), or a postgres:// URL"
    )]
    UnsupportedScheme {
        /// What was given.
        location: String,
        /// Its scheme.
        scheme: String,
    },
    /// A stored value names a status no status has.
    #[error(
        "state store: run {run} has the unknown status {value:?}; was the database written by another version of drover?"
    )]
    UnknownStatus {
        /// The run.
        run: String,
        /// What is stored.
        value: String,
    },
    /// The store was opened for reading only.
    #[error("the state store {0} is open for reading only")]
    ReadOnly(PathBuf),
    /// The writer thread is gone (it panicked, or the store is closing).
    #[error("the state store's writer stopped: {0}")]
    Writer(String),
    /// A write did not fit on the disk; nothing of it was committed.
    #[error("the state store's disk is full ({0}); free space on it: nothing was written")]
    DiskFull(String),
    /// A token of this name exists, or existed (names are not reused, so
    /// the audit trail names one token per name).
    #[error(
        "a token named {0:?} exists or existed (names of revoked tokens are not given out again); choose another name"
    )]
    TokenExists(String),
    /// No token has this name.
    #[error("no token named {0:?}; `drover token list` shows them")]
    UnknownToken(String),
    /// No snapshot has this id or name.
    #[error("no snapshot {0:?} in the state store (neither an id nor a name); `drover snapshot list` shows them")]
    UnknownSnapshot(String),
    /// A snapshot of this name exists: names are unique, and a name is
    /// never moved to another snapshot (what `drift --against NAME`
    /// compares with does not change under it).
    #[error("a snapshot named {0:?} exists already; choose another name")]
    SnapshotExists(String),
    /// The token was revoked before.
    #[error("the token {name:?} was revoked already (at {at_ms} ms since the Unix epoch)")]
    TokenRevoked {
        /// Its name.
        name: String,
        /// When it was revoked.
        at_ms: i64,
    },
    /// No schedule has this id.
    #[error("no schedule {0:?} in the state store; `drover schedule list` shows them")]
    UnknownSchedule(String),
    /// The slot of a schedule was claimed already: a slot fires at most
    /// once.
    #[error("slot {slot_ms} of schedule {schedule} was claimed already ({outcome}); a slot is acted on once")]
    SlotTaken {
        /// The schedule.
        schedule: String,
        /// The slot's time, ms since the epoch.
        slot_ms: i64,
        /// What became of it.
        outcome: String,
    },
    /// The PostgreSQL store failed (connection, query, migration).
    #[error("state store (PostgreSQL): {0}")]
    Pg(String),
    /// A journal write of an instance that lost its lease on the run:
    /// another instance executes it now, and nothing was written.
    #[error("run {run}: {detail}; nothing was written (another instance executes the run now)")]
    Fenced {
        /// The run.
        run: String,
        /// What the store holds instead.
        detail: String,
    },
    /// Another instance holds a live lease on the run.
    #[error("run {run} is executed by the instance {owner}")]
    Held {
        /// The run.
        run: String,
        /// The instance holding it.
        owner: String,
    },
    /// `--max-pending` runs are queued already, across every instance.
    #[error("the queue is full: {max} runs are waiting already; retry later")]
    QueueFull {
        /// The limit.
        max: usize,
    },
    /// A command that runs in this process was given a PostgreSQL store.
    #[error(
        "state location {0}: a PostgreSQL store is shared by `drover serve` instances, which execute its runs under leases; \
         run `drover serve --state` on it and submit with `drover batch`, or give this command an SQLite file"
    )]
    LocalOnly(String),
    /// A lease operation on a store that is not shared.
    #[error("the state store {0} is SQLite, owned by one process: leases exist only on a PostgreSQL store")]
    NotShared(PathBuf),
    /// A stored token does not decode.
    #[error(
        "state store: the token {name:?} is stored with {problem}; was the database written by another version of drover?"
    )]
    CorruptToken {
        /// Its name.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

impl StateError {
    /// Whether a journal write was refused because this instance lost its
    /// lease on the run (PostgreSQL store).
    pub fn is_fenced(&self) -> bool {
        matches!(self, StateError::Fenced { .. })
    }

    /// Whether the store could not be written because its disk (or the
    /// file system's quota) is full: a condition that passes when space is
    /// freed, unlike the other errors.
    pub fn is_disk_full(&self) -> bool {
        fn sqlite_full(e: &rusqlite::Error) -> bool {
            e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
        }
        fn io_full(e: &std::io::Error) -> bool {
            // ENOSPC, EDQUOT
            matches!(e.raw_os_error(), Some(28) | Some(122))
        }
        match self {
            StateError::DiskFull(_) => true,
            StateError::Sql(e) | StateError::Open { source: e, .. } => sqlite_full(e),
            StateError::Dir { source, .. } | StateError::Lock { source, .. } => io_full(source),
            _ => false,
        }
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted by the orchestrator, waiting for a free slot; nothing has
    /// run yet.
    Queued,
    /// Being executed (or interrupted by a crash: resume it).
    Running,
    /// Dispatching is paused.
    Paused,
    /// Every task ended well.
    Succeeded,
    /// A task failed and the run stopped or finished with failures.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
    /// Stopped by Ctrl-C or a shutdown; resumable.
    Aborted,
    /// Failed, then rolled back.
    RolledBack,
    /// Being rolled back by hand; a crash leaves it so, and the rollback
    /// continues at the next start of the orchestrator.
    RollingBack,
}

impl RunStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Aborted => "aborted",
            RunStatus::RolledBack => "rolled_back",
            RunStatus::RollingBack => "rolling_back",
        }
    }

    /// The status named `s`; None for a name no status has.
    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Where a run stands after `event`, from where it stood: the status
    /// column is this fold of the journal, written in the same
    /// transaction as the entries that change it.
    pub fn after(self, event: &Event) -> RunStatus {
        match event {
            Event::RunStarted { .. } | Event::RunUnpaused => RunStatus::Running,
            Event::RunPaused => RunStatus::Paused,
            Event::RollbackStarted { .. } => RunStatus::RollingBack,
            Event::RunFinished { status, .. } => *status,
            _ => self,
        }
    }

    /// Whether the run is over and nothing resumes it: what retention may
    /// remove.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled | RunStatus::RolledBack
        )
    }

    /// Whether the run can still make progress by resuming it.
    pub fn is_unfinished(self) -> bool {
        matches!(
            self,
            RunStatus::Queued | RunStatus::Running | RunStatus::Paused | RunStatus::Aborted | RunStatus::RollingBack
        )
    }

    /// Every status, in the order they are shown.
    pub const ALL: [RunStatus; 9] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Paused,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Aborted,
        RunStatus::RolledBack,
        RunStatus::RollingBack,
    ];
}

/// One journal event. The on-disk format: JSON with an `event` tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run started (or resumed, `resumed = true`).
    RunStarted {
        /// Whether this is a resume of an interrupted run.
        resumed: bool,
    },
    /// Dispatching paused.
    RunPaused,
    /// Dispatching resumed after a pause.
    RunUnpaused,
    /// An operator asked to cancel.
    CancelRequested,
    /// The run ended with this status.
    RunFinished {
        /// The final status.
        status: RunStatus,
        /// Why, in a sentence (what the report says).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An attempt of a task began.
    TaskStarted {
        /// 1-based attempt number.
        attempt: u32,
        /// The key scripts see as DROVER_IDEMPOTENCY_KEY; the same for
        /// every attempt of the task, and after a resume.
        idempotency_key: String,
    },
    /// An attempt succeeded.
    TaskSucceeded {
        /// The attempt.
        attempt: u32,
        /// How long it took.
        duration_ms: u64,
        /// What the attempt found out (a server task: its address and what
        /// its provider reported, e.g. the OS of an existing server).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        found: BTreeMap<String, String>,
    },
    /// An attempt failed.
    TaskFailed {
        /// The attempt.
        attempt: u32,
        /// How long it took.
        duration_ms: u64,
        /// What happened.
        error: String,
        /// Whether another attempt can help: transient failures are
        /// retried per policy, permanent ones never.
        #[serde(default = "transient")]
        kind: FailureKind,
        /// Whether another attempt follows.
        will_retry: bool,
        /// What the attempt found out even so: a command's exit status
        /// and output (`drover exec`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        found: BTreeMap<String, String>,
    },
    /// The next attempt waits this long.
    TaskRetrying {
        /// The attempt that will run.
        next_attempt: u32,
        /// The delay before it.
        delay_ms: u64,
    },
    /// The task will not run.
    TaskSkipped {
        /// Why.
        reason: String,
    },
    /// The task was stopped or never started because the run was
    /// cancelled or aborted.
    TaskCancelled {
        /// Why.
        reason: String,
    },
    /// A gate started polling its wait condition.
    GateWaiting,
    /// A gate opened (its wait is over).
    GateOpened,
    /// A gate will never open.
    GateBlocked {
        /// Why.
        reason: String,
    },
    /// A safe point: rollback goes no further back than here.
    Checkpoint {
        /// Operations completed so far.
        operations_completed: Vec<String>,
    },
    /// Rollback began.
    RollbackStarted {
        /// Why (automatic on failure, or by hand).
        reason: String,
        /// Asked for by an operator: everything not undone yet is undone.
        /// Otherwise automatic: safe points and preserve_successful hold.
        #[serde(default)]
        by_hand: bool,
    },
    /// A compensation of a task began (its remove / delete / rollback).
    UndoStarted {
        /// What undoes it.
        action: String,
    },
    /// The compensation succeeded.
    UndoSucceeded {
        /// How long it took.
        duration_ms: u64,
    },
    /// The compensation failed.
    UndoFailed {
        /// What happened.
        error: String,
        /// Whether another try can help.
        #[serde(default = "transient")]
        kind: FailureKind,
    },
    /// The task's effect cannot be undone; reported, not hidden.
    NotUndoable {
        /// Why.
        reason: String,
    },
    /// Rollback ended.
    RollbackFinished {
        /// Whether every compensation succeeded.
        complete: bool,
    },
}

/// Journals written before failures had a kind: every failure was retried.
fn transient() -> FailureKind {
    FailureKind::Transient
}

/// A journal entry as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Position in the run's journal (strictly increasing).
    pub seq: i64,
    /// When it was recorded, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The task or gate it is about; None for run-level events.
    pub node: Option<String>,
    /// What happened.
    pub event: Event,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Its id.
    pub id: String,
    /// The workflow's name.
    pub workflow: String,
    /// The workflow file it came from.
    pub file: String,
    /// Where it stands.
    pub status: RunStatus,
    /// Created, ms since the epoch.
    pub created_at_ms: i64,
    /// Last status change, ms since the epoch.
    pub updated_at_ms: i64,
    /// Everything needed to plan it again identically (the evaluated
    /// workflow and catalog), so a resume does not depend on files that
    /// may have changed since.
    pub inputs: serde_json::Value,
}

/// A snapshot as stored: what was recorded of which servers, when.
/// The record's values are opaque JSON to this crate: the executor
/// defines what a spec and a server's state hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Its id: time-ordered, like run ids.
    pub id: String,
    /// A name given to it (unique among snapshots), if any.
    pub name: Option<String>,
    /// When it was taken, ms since the epoch.
    pub created_at_ms: i64,
    /// The inventory or workflow file its servers came from.
    pub file: String,
    /// The filters that selected the servers.
    pub selector: serde_json::Value,
    /// What was recorded: files and commands.
    pub spec: serde_json::Value,
    /// What was found on each server (`Null` in [`Store::snapshots`]'
    /// listing, which leaves it out).
    pub servers: serde_json::Value,
}

pub use access::{AuditQuery, AuditRecord, Role, TokenHash, TokenRecord};
pub use cluster::{ActionAnswer, ActionRequest, Claim, Lease, LogChunk, Notice};
pub use schedule::{ScheduleRecord, SlotRecord};
pub use sqlite::outbox::{Attempt, Delivery, DeliveryStatus, NewDelivery};
pub use store::{Location, Store, parse_location, redact};

mod access;
mod cluster;
mod pg;
mod schedule;
mod sqlite;
mod store;

#[cfg(test)]
mod tests;
