//! The state store: runs and their journals.
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

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
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

    fn parse(s: &str) -> RunStatus {
        match s {
            "queued" => RunStatus::Queued,
            "paused" => RunStatus::Paused,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "aborted" => RunStatus::Aborted,
            "rolled_back" => RunStatus::RolledBack,
            "rolling_back" => RunStatus::RollingBack,
            _ => RunStatus::Running,
        }
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
    },
    /// An attempt failed.
    TaskFailed {
        /// The attempt.
        attempt: u32,
        /// How long it took.
        duration_ms: u64,
        /// What happened.
        error: String,
        /// Whether another attempt follows.
        will_retry: bool,
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

/// The journal of runs on one SQLite database.
#[derive(Debug)]
pub struct Store {
    // One connection, used from one thread at a time: SQLite serialises
    // writers anyway, and the scheduler batches its writes.
    conn: Mutex<Connection>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    file TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    inputs TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    node TEXT,
    event TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
";

impl Store {
    /// Open (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StateError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a new run.
    pub fn create_run(&self, run: &RunRecord) -> Result<(), StateError> {
        self.conn().execute(
            "INSERT INTO runs (id, workflow, file, status, created_at_ms, updated_at_ms, inputs) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                run.id,
                run.workflow,
                run.file,
                run.status.as_str(),
                run.created_at_ms,
                run.updated_at_ms,
                serde_json::to_string(&run.inputs)?
            ],
        )?;
        Ok(())
    }

    /// Append events to a run's journal, in one durable transaction.
    /// Returns the sequence number of the last one.
    pub fn append(&self, run_id: &str, events: &[(i64, Option<&str>, &Event)]) -> Result<i64, StateError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM journal WHERE run_id = ?1",
            params![run_id],
            |r| r.get(0),
        )?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT INTO journal (run_id, seq, at_ms, node, event) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for (at_ms, node, event) in events {
                seq += 1;
                stmt.execute(params![run_id, seq, at_ms, node, serde_json::to_string(event)?])?;
            }
        }
        tx.commit()?;
        Ok(seq)
    }

    /// Set a run's status.
    pub fn set_status(&self, run_id: &str, status: RunStatus, at_ms: i64) -> Result<(), StateError> {
        let n = self.conn().execute(
            "UPDATE runs SET status = ?2, updated_at_ms = ?3 WHERE id = ?1",
            params![run_id, status.as_str(), at_ms],
        )?;
        if n == 0 {
            return Err(StateError::UnknownRun(run_id.to_string()));
        }
        Ok(())
    }

    /// One run.
    pub fn run(&self, run_id: &str) -> Result<RunRecord, StateError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT id, workflow, file, status, created_at_ms, updated_at_ms, inputs FROM runs WHERE id = ?1",
                params![run_id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, String>(6)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, workflow, file, status, created, updated, inputs)) = row else {
            return Err(StateError::UnknownRun(run_id.to_string()));
        };
        Ok(RunRecord {
            id,
            workflow,
            file,
            status: RunStatus::parse(&status),
            created_at_ms: created,
            updated_at_ms: updated,
            inputs: serde_json::from_str(&inputs)?,
        })
    }

    /// Every run, newest first, without their inputs.
    pub fn runs(&self) -> Result<Vec<RunRecord>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, workflow, file, status, created_at_ms, updated_at_ms FROM runs ORDER BY created_at_ms DESC, id DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RunRecord {
                id: r.get(0)?,
                workflow: r.get(1)?,
                file: r.get(2)?,
                status: RunStatus::parse(&r.get::<_, String>(3)?),
                created_at_ms: r.get(4)?,
                updated_at_ms: r.get(5)?,
                inputs: serde_json::Value::Null,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// A run's journal, in order.
    pub fn journal(&self, run_id: &str) -> Result<Vec<Entry>, StateError> {
        self.journal_since(run_id, 0, i64::MAX)
    }

    /// At most `limit` entries of a run's journal after `after_seq`, in
    /// order: what a stream resuming from an event id reads.
    pub fn journal_since(&self, run_id: &str, after_seq: i64, limit: i64) -> Result<Vec<Entry>, StateError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, at_ms, node, event FROM journal WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![run_id, after_seq, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at_ms, node, event) = row?;
            out.push(Entry {
                seq,
                at_ms,
                node,
                event: serde_json::from_str(&event)?,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            workflow: "w".into(),
            file: "w.k".into(),
            status: RunStatus::Running,
            created_at_ms: 1,
            updated_at_ms: 1,
            inputs: serde_json::json!({"x": 1}),
        }
    }

    #[test]
    fn journal_survives_reopening_in_order() -> Result<(), StateError> {
        let dir = tempfile::tempdir().map_err(|e| StateError::Dir {
            path: "tmp".into(),
            source: e,
        })?;
        let path = dir.path().join("nested/state.db");
        {
            let s = Store::open(&path)?;
            s.create_run(&record("r1"))?;
            let started = Event::TaskStarted {
                attempt: 1,
                idempotency_key: "r1:t".into(),
            };
            let ok = Event::TaskSucceeded {
                attempt: 1,
                duration_ms: 5,
            };
            assert_eq!(s.append("r1", &[(10, Some("t"), &started), (11, Some("t"), &ok)])?, 2);
            assert_eq!(
                s.append(
                    "r1",
                    &[(
                        12,
                        None,
                        &Event::RunFinished {
                            status: RunStatus::Succeeded
                        }
                    )]
                )?,
                3
            );
            s.set_status("r1", RunStatus::Succeeded, 12)?;
        }
        let s = Store::open(&path)?;
        let j = s.journal("r1")?;
        assert_eq!(j.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(j[0].node.as_deref(), Some("t"));
        assert!(matches!(j[1].event, Event::TaskSucceeded { duration_ms: 5, .. }));
        let r = s.run("r1")?;
        assert_eq!(r.status, RunStatus::Succeeded);
        assert_eq!(r.inputs, serde_json::json!({"x": 1}));
        assert!(matches!(s.run("nope"), Err(StateError::UnknownRun(_))));
        Ok(())
    }

    #[test]
    fn runs_are_listed_newest_first() -> Result<(), StateError> {
        let s = Store::open(Path::new(":memory:"))?;
        let mut a = record("a");
        a.created_at_ms = 1;
        let mut b = record("b");
        b.created_at_ms = 2;
        s.create_run(&a)?;
        s.create_run(&b)?;
        let ids: Vec<String> = s.runs()?.into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["b", "a"]);
        Ok(())
    }

    #[test]
    fn events_round_trip_through_their_disk_format() {
        let e = Event::TaskFailed {
            attempt: 2,
            duration_ms: 9,
            error: "exit 3".into(),
            will_retry: true,
        };
        let s = serde_json::to_string(&e).unwrap_or_default();
        assert_eq!(
            s,
            r#"{"event":"task_failed","attempt":2,"duration_ms":9,"error":"exit 3","will_retry":true}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&s).ok(), Some(e));
    }
}
