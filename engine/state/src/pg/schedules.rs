//! Schedules and their slots (as `crate::store::schedules`). A slot is
//! claimed by inserting its row, keyed by (schedule, slot time): a second
//! claim, by this instance or another, fails on the key
//! ([`StateError::SlotTaken`]) and writes nothing.

use super::{Pg, execute, insert_run, query, query_opt, unique_violation};
use crate::{AuditRecord, RunRecord, ScheduleRecord, SlotRecord, StateError};

const SCHEDULE_COLUMNS: &str =
    "id, target, cron, timezone, overlap, missed, paused, created_at_ms, updated_at_ms, since_ms, created_by";

fn schedule_of(r: &tokio_postgres::Row) -> Result<ScheduleRecord, StateError> {
    let target: String = r.get(1);
    Ok(ScheduleRecord {
        id: r.get(0),
        target: serde_json::from_str(&target)?,
        cron: r.get(2),
        timezone: r.get(3),
        overlap: r.get(4),
        missed: r.get(5),
        paused: r.get(6),
        created_at_ms: r.get(7),
        updated_at_ms: r.get(8),
        since_ms: r.get(9),
        created_by: r.get(10),
    })
}

const SLOT_COLUMNS: &str = "schedule_id, slot_ms, outcome, run_id, count, detail, at_ms";

fn slot_of(r: &tokio_postgres::Row) -> SlotRecord {
    SlotRecord {
        schedule_id: r.get(0),
        slot_ms: r.get(1),
        outcome: r.get(2),
        run_id: r.get(3),
        count: r.get(4),
        detail: r.get(5),
        at_ms: r.get(6),
    }
}

impl Pg {
    /// Record a new schedule.
    pub fn create_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StateError> {
        let s = schedule.clone();
        let target = serde_json::to_string(&s.target)?;
        self.exec(move |c| {
            Box::pin(async move {
                execute(
                    &*c,
                    "INSERT INTO schedules (id, target, cron, timezone, overlap, missed, paused, created_at_ms, \
                     updated_at_ms, since_ms, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    &[
                        &s.id,
                        &target,
                        &s.cron,
                        &s.timezone,
                        &s.overlap,
                        &s.missed,
                        &s.paused,
                        &s.created_at_ms,
                        &s.updated_at_ms,
                        &s.since_ms,
                        &s.created_by,
                    ],
                )
                .await?;
                Ok(())
            })
        })
    }

    /// Replace a schedule's settings (all but its id, creation and
    /// creator); `UnknownSchedule` if there is none.
    pub fn update_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StateError> {
        let s = schedule.clone();
        let target = serde_json::to_string(&s.target)?;
        self.exec(move |c| {
            Box::pin(async move {
                let n = execute(
                    &*c,
                    "UPDATE schedules SET target = $2, cron = $3, timezone = $4, overlap = $5, missed = $6, \
                     paused = $7, updated_at_ms = $8, since_ms = $9 WHERE id = $1",
                    &[
                        &s.id,
                        &target,
                        &s.cron,
                        &s.timezone,
                        &s.overlap,
                        &s.missed,
                        &s.paused,
                        &s.updated_at_ms,
                        &s.since_ms,
                    ],
                )
                .await?;
                if n == 0 {
                    return Err(StateError::UnknownSchedule(s.id));
                }
                Ok(())
            })
        })
    }

    /// Remove a schedule; the records of its slots stay.
    pub fn delete_schedule(&self, id: &str) -> Result<(), StateError> {
        let id = id.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                let n = execute(&*c, "DELETE FROM schedules WHERE id = $1", &[&id]).await?;
                if n == 0 {
                    return Err(StateError::UnknownSchedule(id));
                }
                Ok(())
            })
        })
    }

    /// Slot, run and audit in one transaction, or none (`SlotTaken` when
    /// another instance claimed the slot first).
    pub fn claim_slot(
        &self,
        slot: &SlotRecord,
        run: Option<&RunRecord>,
        audit: Option<&AuditRecord>,
    ) -> Result<(), StateError> {
        let slot = slot.clone();
        let run = run.cloned();
        let audit = audit.cloned();
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let st = tx
                    .prepare_cached(
                        "INSERT INTO schedule_slots (schedule_id, slot_ms, outcome, run_id, count, detail, at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .await?;
                let inserted = tx
                    .execute(
                        &st,
                        &[
                            &slot.schedule_id,
                            &slot.slot_ms,
                            &slot.outcome,
                            &slot.run_id,
                            &slot.count,
                            &slot.detail,
                            &slot.at_ms,
                        ],
                    )
                    .await;
                match inserted {
                    Ok(_) => {}
                    Err(e) if unique_violation(&e, "schedule_slots_pkey") => {
                        // Nothing written: the transaction is rolled back,
                        // then the slot's outcome read as committed.
                        tx.rollback().await?;
                        let outcome = query_opt(
                            &*c,
                            "SELECT outcome FROM schedule_slots WHERE schedule_id = $1 AND slot_ms = $2",
                            &[&slot.schedule_id, &slot.slot_ms],
                        )
                        .await?
                        .map_or_else(|| "claimed".to_string(), |r| r.get(0));
                        return Err(StateError::SlotTaken {
                            schedule: slot.schedule_id,
                            slot_ms: slot.slot_ms,
                            outcome,
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
                if let Some(run) = &run {
                    insert_run(&tx, run).await?;
                }
                if let Some(audit) = &audit {
                    super::access::insert_audit(&tx, audit).await?;
                }
                tx.commit().await?;
                Ok(())
            })
        })
    }

    /// Every schedule, oldest first.
    pub fn schedules(&self) -> Result<Vec<ScheduleRecord>, StateError> {
        self.exec(|c| {
            Box::pin(async move {
                let rows = query(
                    &*c,
                    &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY created_at_ms, id"),
                    &[],
                )
                .await?;
                rows.iter().map(schedule_of).collect()
            })
        })
    }

    /// One schedule; `UnknownSchedule` if there is none.
    pub fn schedule(&self, id: &str) -> Result<ScheduleRecord, StateError> {
        let id = id.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                match query_opt(
                    &*c,
                    &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1"),
                    &[&id],
                )
                .await?
                {
                    Some(row) => schedule_of(&row),
                    None => Err(StateError::UnknownSchedule(id)),
                }
            })
        })
    }

    /// A schedule's latest slots (by slot time, newest first), at most
    /// `limit`.
    pub fn slots(&self, schedule_id: &str, limit: i64) -> Result<Vec<SlotRecord>, StateError> {
        let schedule_id = schedule_id.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                let rows = query(
                    &*c,
                    &format!(
                        "SELECT {SLOT_COLUMNS} FROM schedule_slots WHERE schedule_id = $1 \
                         ORDER BY slot_ms DESC LIMIT $2"
                    ),
                    &[&schedule_id, &super::limit_of(limit)],
                )
                .await?;
                Ok(rows.iter().map(slot_of).collect())
            })
        })
    }

    /// A schedule's latest fired slot (the one that created its last run).
    pub fn last_fired(&self, schedule_id: &str) -> Result<Option<SlotRecord>, StateError> {
        let schedule_id = schedule_id.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                Ok(query_opt(
                    &*c,
                    &format!(
                        "SELECT {SLOT_COLUMNS} FROM schedule_slots WHERE schedule_id = $1 AND outcome = 'fired' \
                         ORDER BY slot_ms DESC LIMIT 1"
                    ),
                    &[&schedule_id],
                )
                .await?
                .as_ref()
                .map(slot_of))
            })
        })
    }

    /// The slot that created run `run_id`, if a schedule started it.
    pub fn slot_of_run(&self, run_id: &str) -> Result<Option<SlotRecord>, StateError> {
        let run_id = run_id.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                Ok(query_opt(
                    &*c,
                    &format!("SELECT {SLOT_COLUMNS} FROM schedule_slots WHERE run_id = $1 LIMIT 1"),
                    &[&run_id],
                )
                .await?
                .as_ref()
                .map(slot_of))
            })
        })
    }
}
