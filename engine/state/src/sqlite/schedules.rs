//! Schedules and their slots in the store: the tables, their reads, and
//! the writes the writer thread carries out (in the batch's transaction,
//! each in its own savepoint, like every other write).
//!
//! A slot is claimed by inserting its row, keyed by (schedule, slot time):
//! a second claim of one slot fails on the key, whatever the process
//! believed. A fired slot's row, its run and the run's audit record are
//! one write: all durable, or none.

use rusqlite::{Connection, OptionalExtension, params};

use super::Sqlite;
use crate::{AuditRecord, RunRecord, ScheduleRecord, SlotRecord, StateError};

/// The tables (created with the store's schema: `CREATE ... IF NOT
/// EXISTS` adds them to a database made before they existed).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    overlap TEXT NOT NULL,
    missed TEXT NOT NULL,
    paused INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    since_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_slots (
    schedule_id TEXT NOT NULL,
    slot_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    run_id TEXT,
    count INTEGER NOT NULL,
    detail TEXT,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (schedule_id, slot_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS schedule_slots_by_run ON schedule_slots (run_id);
";

/// A write about schedules.
pub(super) enum Write {
    /// A new schedule.
    Create(Box<ScheduleRecord>),
    /// An existing schedule's new settings.
    Update(Box<ScheduleRecord>),
    /// Remove a schedule (its slots stay: runs keep saying what started
    /// them).
    Delete(String),
    /// Claim a slot; with the run it creates and that run's audit record.
    Claim(Box<SlotRecord>, Option<Box<RunRecord>>, Option<Box<AuditRecord>>),
}

impl Write {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Write::Create(..) => "CreateSchedule",
            Write::Update(..) => "UpdateSchedule",
            Write::Delete(..) => "DeleteSchedule",
            Write::Claim(..) => "ClaimSlot",
        }
    }
}

/// Carry out `write` on the writer's connection.
pub(super) fn apply(conn: &Connection, write: &Write) -> Result<(), StateError> {
    match write {
        Write::Create(s) => {
            conn.prepare_cached(
                "INSERT INTO schedules (id, target, cron, timezone, overlap, missed, paused, created_at_ms, \
                 updated_at_ms, since_ms, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                s.id,
                serde_json::to_string(&s.target)?,
                s.cron,
                s.timezone,
                s.overlap,
                s.missed,
                s.paused,
                s.created_at_ms,
                s.updated_at_ms,
                s.since_ms,
                s.created_by
            ])?;
            Ok(())
        }
        Write::Update(s) => {
            let n = conn
                .prepare_cached(
                    "UPDATE schedules SET target = ?2, cron = ?3, timezone = ?4, overlap = ?5, missed = ?6, \
                     paused = ?7, updated_at_ms = ?8, since_ms = ?9 WHERE id = ?1",
                )?
                .execute(params![
                    s.id,
                    serde_json::to_string(&s.target)?,
                    s.cron,
                    s.timezone,
                    s.overlap,
                    s.missed,
                    s.paused,
                    s.updated_at_ms,
                    s.since_ms
                ])?;
            if n == 0 {
                return Err(StateError::UnknownSchedule(s.id.clone()));
            }
            Ok(())
        }
        Write::Delete(id) => {
            let n = conn
                .prepare_cached("DELETE FROM schedules WHERE id = ?1")?
                .execute(params![id])?;
            if n == 0 {
                return Err(StateError::UnknownSchedule(id.clone()));
            }
            Ok(())
        }
        Write::Claim(slot, run, audit) => {
            let taken: Option<String> = conn
                .prepare_cached("SELECT outcome FROM schedule_slots WHERE schedule_id = ?1 AND slot_ms = ?2")?
                .query_row(params![slot.schedule_id, slot.slot_ms], |r| r.get(0))
                .optional()?;
            if let Some(outcome) = taken {
                return Err(StateError::SlotTaken {
                    schedule: slot.schedule_id.clone(),
                    slot_ms: slot.slot_ms,
                    outcome,
                });
            }
            conn.prepare_cached(
                "INSERT INTO schedule_slots (schedule_id, slot_ms, outcome, run_id, count, detail, at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                slot.schedule_id,
                slot.slot_ms,
                slot.outcome,
                slot.run_id,
                slot.count,
                slot.detail,
                slot.at_ms
            ])?;
            if let Some(run) = run {
                super::create(conn, run)?;
            }
            if let Some(audit) = audit {
                super::access::insert_audit(conn, audit)?;
            }
            Ok(())
        }
    }
}

const SCHEDULE_COLUMNS: &str =
    "id, target, cron, timezone, overlap, missed, paused, created_at_ms, updated_at_ms, since_ms, created_by";

fn schedule_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ScheduleRecord, String)> {
    Ok((
        ScheduleRecord {
            id: r.get(0)?,
            target: serde_json::Value::Null,
            cron: r.get(2)?,
            timezone: r.get(3)?,
            overlap: r.get(4)?,
            missed: r.get(5)?,
            paused: r.get(6)?,
            created_at_ms: r.get(7)?,
            updated_at_ms: r.get(8)?,
            since_ms: r.get(9)?,
            created_by: r.get(10)?,
        },
        r.get(1)?,
    ))
}

fn decoded((mut rec, target): (ScheduleRecord, String)) -> Result<ScheduleRecord, StateError> {
    rec.target = serde_json::from_str(&target)?;
    Ok(rec)
}

const SLOT_COLUMNS: &str = "schedule_id, slot_ms, outcome, run_id, count, detail, at_ms";

fn slot_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SlotRecord> {
    Ok(SlotRecord {
        schedule_id: r.get(0)?,
        slot_ms: r.get(1)?,
        outcome: r.get(2)?,
        run_id: r.get(3)?,
        count: r.get(4)?,
        detail: r.get(5)?,
        at_ms: r.get(6)?,
    })
}

/// Whether the database has the schedule tables (a database made by an
/// older drover and only read since has not).
fn has_schedules(conn: &Connection) -> Result<bool, StateError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schedule_slots'")?
        .query_row([], |_| Ok(()))
        .optional()?
        .is_some())
}

impl Sqlite {
    /// Record a new schedule.
    pub fn create_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StateError> {
        let s = Box::new(schedule.clone());
        self.write(|reply| super::Request::Schedule(Write::Create(s), reply))
    }

    /// Replace a schedule's settings (all but its id, creation and
    /// creator); [`StateError::UnknownSchedule`] if there is none.
    pub fn update_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StateError> {
        let s = Box::new(schedule.clone());
        self.write(|reply| super::Request::Schedule(Write::Update(s), reply))
    }

    /// Remove a schedule; the records of its slots stay (the runs it
    /// started keep saying so).
    pub fn delete_schedule(&self, id: &str) -> Result<(), StateError> {
        let id = id.to_string();
        self.write(|reply| super::Request::Schedule(Write::Delete(id), reply))
    }

    /// Claim a slot of a schedule, durably: with `run` (the run it fires,
    /// created in the same transaction) and `audit` (that run's record of
    /// who started it). Refused with [`StateError::SlotTaken`] if the slot
    /// was claimed before, and then nothing is written.
    pub fn claim_slot(
        &self,
        slot: &SlotRecord,
        run: Option<&RunRecord>,
        audit: Option<&AuditRecord>,
    ) -> Result<(), StateError> {
        let w = Write::Claim(
            Box::new(slot.clone()),
            run.map(|r| Box::new(r.clone())),
            audit.map(|a| Box::new(a.clone())),
        );
        self.write(|reply| super::Request::Schedule(w, reply))
    }

    /// Every schedule, oldest first.
    pub fn schedules(&self) -> Result<Vec<ScheduleRecord>, StateError> {
        self.read(|conn| {
            if !has_schedules(conn)? {
                return Ok(Vec::new());
            }
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY created_at_ms, id"
            ))?;
            let rows = stmt.query_map([], schedule_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(decoded(row?)?);
            }
            Ok(out)
        })
    }

    /// One schedule; [`StateError::UnknownSchedule`] if there is none.
    pub fn schedule(&self, id: &str) -> Result<ScheduleRecord, StateError> {
        self.read(|conn| {
            if !has_schedules(conn)? {
                return Err(StateError::UnknownSchedule(id.to_string()));
            }
            let row = conn
                .prepare_cached(&format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?1"))?
                .query_row(params![id], schedule_row)
                .optional()?;
            match row {
                Some(row) => decoded(row),
                None => Err(StateError::UnknownSchedule(id.to_string())),
            }
        })
    }

    /// A schedule's latest slots (by slot time, newest first), at most
    /// `limit`.
    pub fn slots(&self, schedule_id: &str, limit: i64) -> Result<Vec<SlotRecord>, StateError> {
        self.read(|conn| {
            if !has_schedules(conn)? {
                return Ok(Vec::new());
            }
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {SLOT_COLUMNS} FROM schedule_slots WHERE schedule_id = ?1 ORDER BY slot_ms DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![schedule_id, limit], slot_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// A schedule's latest fired slot (the one that created its last run).
    pub fn last_fired(&self, schedule_id: &str) -> Result<Option<SlotRecord>, StateError> {
        self.read(|conn| {
            if !has_schedules(conn)? {
                return Ok(None);
            }
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {SLOT_COLUMNS} FROM schedule_slots WHERE schedule_id = ?1 AND outcome = 'fired' \
                     ORDER BY slot_ms DESC LIMIT 1"
                ))?
                .query_row(params![schedule_id], slot_row)
                .optional()?)
        })
    }

    /// The slot that created run `run_id`, if a schedule started it.
    pub fn slot_of_run(&self, run_id: &str) -> Result<Option<SlotRecord>, StateError> {
        self.read(|conn| {
            if !has_schedules(conn)? {
                return Ok(None);
            }
            Ok(conn
                .prepare_cached(&format!("SELECT {SLOT_COLUMNS} FROM schedule_slots WHERE run_id = ?1"))?
                .query_row(params![run_id], slot_row)
                .optional()?)
        })
    }
}
