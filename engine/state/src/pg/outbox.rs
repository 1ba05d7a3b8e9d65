//! The notification outbox (as `crate::store::outbox`), delivered by
//! several instances.
//!
//! - Folding (a target's cooldown) happens in the enqueue's transaction,
//!   as in the SQLite writer's, under an advisory transaction lock of the
//!   target and event kind: two events arriving together at two
//!   instances cannot both open a window.
//! - [`Pg::due_deliveries`] claims what it returns: the rows are taken
//!   `FOR UPDATE SKIP LOCKED`, hidden for [`CLAIM_MS`] (their
//!   `next_attempt_at_ms` moved on) and marked claimed (`claimed_at_ms`),
//!   so one delivery is sent by one instance, and an event arriving while
//!   it is sent opens a window of its own rather than folding into a
//!   message already on its way. `record_attempt` sets the real next
//!   time and clears the mark.

use super::{LOCK_OUTBOX, Pg, execute, query, query_one, query_opt};
use crate::{Attempt, Delivery, DeliveryStatus, NewDelivery, StateError};

/// How long a claimed delivery is hidden from the other instances.
const CLAIM_MS: i64 = 60_000;

const COLUMNS: &str = "id, run_id, target, target_kind, target_def, event, payload, count, status, attempts, \
                       created_at_ms, next_attempt_at_ms, delivered_at_ms, last_error";

fn delivery_of(r: &tokio_postgres::Row) -> Result<Delivery, StateError> {
    let id: i64 = r.get(0);
    let def: String = r.get(4);
    let payload: String = r.get(6);
    let status: String = r.get(8);
    let Some(status) = DeliveryStatus::parse(&status) else {
        return Err(StateError::UnknownStatus {
            run: format!("(outbox row {id})"),
            value: status,
        });
    };
    Ok(Delivery {
        id,
        run_id: r.get(1),
        target: r.get(2),
        target_kind: r.get(3),
        target_def: serde_json::from_str(&def)?,
        event: r.get(5),
        payload: serde_json::from_str(&payload)?,
        count: r.get(7),
        status,
        attempts: r.get(9),
        created_at_ms: r.get(10),
        next_attempt_at_ms: r.get(11),
        delivered_at_ms: r.get(12),
        last_error: r.get(13),
    })
}

impl Pg {
    /// Queue a message for a target, durably; with a cooldown, fold it
    /// into the target's open window for the same event kind. Returns the
    /// row's id and whether the event was folded.
    pub fn enqueue_delivery(&self, delivery: &NewDelivery) -> Result<(i64, bool), StateError> {
        let d = delivery.clone();
        let def = serde_json::to_string(&d.target_def)?;
        let payload = serde_json::to_string(&d.payload)?;
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                if d.cooldown_ms > 0 {
                    query(
                        &tx,
                        "SELECT pg_advisory_xact_lock($1, hashtext($2 || E'\\n' || $3))",
                        &[&LOCK_OUTBOX, &d.target, &d.event],
                    )
                    .await?;
                    let open = query_opt(
                        &tx,
                        "SELECT id FROM outbox WHERE target = $1 AND target_def = $2 AND event = $3 \
                         AND status = 'queued' AND attempts = 0 AND claimed_at_ms IS NULL \
                         AND next_attempt_at_ms > $4 ORDER BY id LIMIT 1 FOR UPDATE",
                        &[&d.target, &def, &d.event, &d.at_ms],
                    )
                    .await?;
                    if let Some(row) = open {
                        let id: i64 = row.get(0);
                        execute(
                            &tx,
                            "UPDATE outbox SET count = count + 1, payload = $2, run_id = $3 WHERE id = $1",
                            &[&id, &payload, &d.run_id],
                        )
                        .await?;
                        tx.commit().await?;
                        return Ok((id, true));
                    }
                }
                let id: i64 = query_one(
                    &tx,
                    "INSERT INTO outbox (run_id, target, target_kind, target_def, event, payload, count, status, \
                     attempts, created_at_ms, next_attempt_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, 1, 'queued', 0, $7, $8) RETURNING id",
                    &[
                        &d.run_id,
                        &d.target,
                        &d.target_kind,
                        &def,
                        &d.event,
                        &payload,
                        &d.at_ms,
                        &(d.at_ms + d.cooldown_ms.max(0)),
                    ],
                )
                .await?
                .get(0);
                tx.commit().await?;
                Ok((id, false))
            })
        })
    }

    /// Record an attempt at delivery `id`.
    pub fn record_attempt(&self, id: i64, attempt: Attempt) -> Result<(), StateError> {
        let (status, next, delivered, error) = match attempt {
            Attempt::Delivered { at_ms } => (DeliveryStatus::Delivered, at_ms, Some(at_ms), None),
            Attempt::Retry { next_at_ms, error } => (DeliveryStatus::Queued, next_at_ms, None, Some(error)),
            Attempt::Failed { at_ms, error } => (DeliveryStatus::Failed, at_ms, None, Some(error)),
        };
        self.exec(move |c| {
            Box::pin(async move {
                execute(
                    &*c,
                    "UPDATE outbox SET status = $2, attempts = attempts + 1, next_attempt_at_ms = $3, \
                     delivered_at_ms = $4, last_error = COALESCE($5, last_error), claimed_at_ms = NULL \
                     WHERE id = $1",
                    &[&id, &status.as_str(), &next, &delivered, &error],
                )
                .await?;
                Ok(())
            })
        })
    }

    /// As the SQLite store, but several instances deliver: the rows
    /// returned are taken with `FOR UPDATE SKIP LOCKED` and hidden from
    /// the others for a while (their `next_attempt_at_ms` moved 60 s on
    /// in the same transaction; `record_attempt` sets the real one), so
    /// one delivery is sent by one instance. The rows are returned as
    /// they were when due.
    pub fn due_deliveries(&self, now_ms: i64, limit: i64) -> Result<Vec<Delivery>, StateError> {
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let rows = query(
                    &tx,
                    &format!(
                        "SELECT {COLUMNS} FROM outbox WHERE status = 'queued' AND next_attempt_at_ms <= $1 \
                         ORDER BY next_attempt_at_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED"
                    ),
                    &[&now_ms, &super::limit_of(limit)],
                )
                .await?;
                let due = rows.iter().map(delivery_of).collect::<Result<Vec<_>, _>>()?;
                let ids: Vec<i64> = due.iter().map(|d| d.id).collect();
                if !ids.is_empty() {
                    execute(
                        &tx,
                        "UPDATE outbox SET next_attempt_at_ms = $2, claimed_at_ms = $3 WHERE id = ANY($1)",
                        &[&ids, &(now_ms + CLAIM_MS), &now_ms],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(due)
            })
        })
    }

    /// When the next queued delivery is due, if any is queued.
    pub fn next_delivery_at(&self) -> Result<Option<i64>, StateError> {
        self.exec(|c| {
            Box::pin(async move {
                Ok(query_one(
                    &*c,
                    "SELECT MIN(next_attempt_at_ms) FROM outbox WHERE status = 'queued'",
                    &[],
                )
                .await?
                .get(0))
            })
        })
    }

    /// Deliveries, newest first, of one run and/or in one status, at most
    /// `limit`.
    pub fn deliveries(
        &self,
        run_id: Option<&str>,
        status: Option<DeliveryStatus>,
        limit: i64,
    ) -> Result<Vec<Delivery>, StateError> {
        let run_id = run_id.map(str::to_string);
        let status = status.map(|s| s.as_str().to_string());
        self.exec(move |c| {
            Box::pin(async move {
                let rows = query(
                    &*c,
                    &format!(
                        "SELECT {COLUMNS} FROM outbox WHERE ($1::text IS NULL OR run_id = $1) \
                         AND ($2::text IS NULL OR status = $2) ORDER BY id DESC LIMIT $3"
                    ),
                    &[&run_id, &status, &super::limit_of(limit)],
                )
                .await?;
                rows.iter().map(delivery_of).collect()
            })
        })
    }
}
