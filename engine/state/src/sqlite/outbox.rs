//! The notification outbox: every message owed to a notification target
//! (webhook, Slack, script), journaled before it is sent, so a delivery
//! survives a restart and its attempts can be shown.
//!
//! A row is `queued` until it is `delivered`, or `failed` for good (a
//! permanent refusal, or too many attempts). Folding (a target's
//! cooldown) happens here, in the writer's transaction: an event joins
//! the row of the same target and event kind whose window is still open
//! (queued, never attempted, due later than the event), so two events
//! arriving together cannot both open a window.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::Sqlite;
use crate::StateError;

/// The table (created with the store's schema: `CREATE ... IF NOT EXISTS`
/// adds it to a database made before it existed).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT,
    target TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_def TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    count INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    next_attempt_at_ms INTEGER NOT NULL,
    delivered_at_ms INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at_ms);
CREATE INDEX IF NOT EXISTS outbox_by_run ON outbox (run_id, id);
";

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its (next) attempt, or for its cooldown window to end.
    Queued,
    /// The target accepted it.
    Delivered,
    /// Given up: refused for good, or out of attempts.
    Failed,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [DeliveryStatus; 3] = [
        DeliveryStatus::Queued,
        DeliveryStatus::Delivered,
        DeliveryStatus::Failed,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    /// The status named `s`; None for a name no status has.
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// A message to queue for a target.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// The run it is about, if any.
    pub run_id: Option<String>,
    /// The target's name.
    pub target: String,
    /// webhook | slack | script.
    pub target_kind: String,
    /// The target's declaration as written (URLs and keys as `secret:`
    /// references are resolved only when sending): what a delivery after
    /// a restart sends to.
    pub target_def: serde_json::Value,
    /// The event kind (`run_failed`, ...).
    pub event: String,
    /// The event, secrets masked.
    pub payload: serde_json::Value,
    /// When the event happened, ms since the epoch.
    pub at_ms: i64,
    /// The target's cooldown: 0 sends at once; otherwise the event joins
    /// an open window of the same target and kind, or opens one ending
    /// `cooldown_ms` from `at_ms`.
    pub cooldown_ms: i64,
}

/// A row of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Its id.
    pub id: i64,
    /// The run it is about (the last folded event's), if any.
    pub run_id: Option<String>,
    /// The target's name.
    pub target: String,
    /// webhook | slack | script.
    pub target_kind: String,
    /// The target's declaration (may hold a literal webhook secret: never
    /// shown).
    pub target_def: serde_json::Value,
    /// The event kind.
    pub event: String,
    /// The last folded event, secrets masked.
    pub payload: serde_json::Value,
    /// How many events this message stands for (folded by the cooldown).
    pub count: i64,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: i64,
    /// Queued, ms since the epoch.
    pub created_at_ms: i64,
    /// When the next attempt is due (queued), or the last was made.
    pub next_attempt_at_ms: i64,
    /// When the target accepted it.
    pub delivered_at_ms: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// Accepted at this time.
    Delivered {
        /// When.
        at_ms: i64,
    },
    /// Failed; another attempt is due at `next_at_ms`.
    Retry {
        /// When the next attempt is due.
        next_at_ms: i64,
        /// Why this one failed.
        error: String,
    },
    /// Failed for good.
    Failed {
        /// When.
        at_ms: i64,
        /// Why.
        error: String,
    },
}

/// A write to the outbox.
#[derive(Debug)]
pub(super) enum Write {
    Enqueue(Box<NewDelivery>),
    Attempted { id: i64, attempt: Attempt },
}

/// What a [`Write`] did: the row's id, and whether the event was folded
/// into an open window.
#[derive(Debug)]
pub(super) struct Done(pub(super) i64, pub(super) bool);

/// Carry out `write` on the writer's connection.
pub(super) fn apply(conn: &Connection, write: &Write) -> Result<Done, StateError> {
    match write {
        Write::Enqueue(d) => {
            let def = serde_json::to_string(&d.target_def)?;
            let payload = serde_json::to_string(&d.payload)?;
            if d.cooldown_ms > 0 {
                let open: Option<i64> = conn
                    .prepare_cached(
                        "SELECT id FROM outbox WHERE target = ?1 AND target_def = ?2 AND event = ?3 \
                         AND status = 'queued' AND attempts = 0 AND next_attempt_at_ms > ?4 ORDER BY id LIMIT 1",
                    )?
                    .query_row(params![d.target, def, d.event, d.at_ms], |r| r.get(0))
                    .optional()?;
                if let Some(id) = open {
                    conn.prepare_cached(
                        "UPDATE outbox SET count = count + 1, payload = ?2, run_id = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, payload, d.run_id])?;
                    return Ok(Done(id, true));
                }
            }
            conn.prepare_cached(
                "INSERT INTO outbox (run_id, target, target_kind, target_def, event, payload, count, status, attempts, \
                 created_at_ms, next_attempt_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, 'queued', 0, ?7, ?8)",
            )?
            .execute(params![
                d.run_id,
                d.target,
                d.target_kind,
                def,
                d.event,
                payload,
                d.at_ms,
                d.at_ms + d.cooldown_ms.max(0)
            ])?;
            Ok(Done(conn.last_insert_rowid(), false))
        }
        Write::Attempted { id, attempt } => {
            let (status, next, delivered, error) = match attempt {
                Attempt::Delivered { at_ms } => (DeliveryStatus::Delivered, *at_ms, Some(*at_ms), None),
                Attempt::Retry { next_at_ms, error } => (DeliveryStatus::Queued, *next_at_ms, None, Some(error)),
                Attempt::Failed { at_ms, error } => (DeliveryStatus::Failed, *at_ms, None, Some(error)),
            };
            conn.prepare_cached(
                "UPDATE outbox SET status = ?2, attempts = attempts + 1, next_attempt_at_ms = ?3, \
                 delivered_at_ms = ?4, last_error = COALESCE(?5, last_error) WHERE id = ?1",
            )?
            .execute(params![id, status.as_str(), next, delivered, error])?;
            Ok(Done(*id, false))
        }
    }
}

const COLUMNS: &str = "id, run_id, target, target_kind, target_def, event, payload, count, status, attempts, \
                       created_at_ms, next_attempt_at_ms, delivered_at_ms, last_error";

type Row = (
    i64,
    Option<String>,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<String>,
);

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
    ))
}

fn decode(row: Row) -> Result<Delivery, StateError> {
    let (
        id,
        run_id,
        target,
        target_kind,
        def,
        event,
        payload,
        count,
        status,
        attempts,
        created,
        next,
        delivered,
        error,
    ) = row;
    let Some(status) = DeliveryStatus::parse(&status) else {
        return Err(StateError::UnknownStatus {
            run: format!("(outbox row {id})"),
            value: status,
        });
    };
    Ok(Delivery {
        id,
        run_id,
        target,
        target_kind,
        target_def: serde_json::from_str(&def)?,
        event,
        payload: serde_json::from_str(&payload)?,
        count,
        status,
        attempts,
        created_at_ms: created,
        next_attempt_at_ms: next,
        delivered_at_ms: delivered,
        last_error: error,
    })
}

/// Whether the database has the outbox (a read-only store of a database
/// made before it existed has none: it shows no deliveries).
fn has_outbox(conn: &Connection) -> Result<bool, StateError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'")?
        .query_row([], |_| Ok(()))
        .optional()?
        .is_some())
}

fn select(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Delivery>, StateError> {
    if !has_outbox(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, row_of)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(decode(row?)?);
    }
    Ok(out)
}

impl Sqlite {
    fn outbox(&self, write: Write) -> Result<Done, StateError> {
        self.write(|reply| super::Request::Outbox(write, reply))
    }

    /// Queue a message for a target, durably; with a cooldown, fold it
    /// into the target's open window for the same event kind. Returns the
    /// row's id and whether the event was folded.
    pub fn enqueue_delivery(&self, delivery: &NewDelivery) -> Result<(i64, bool), StateError> {
        self.outbox(Write::Enqueue(Box::new(delivery.clone())))
            .map(|Done(id, folded)| (id, folded))
    }

    /// Record an attempt at delivery `id`.
    pub fn record_attempt(&self, id: i64, attempt: Attempt) -> Result<(), StateError> {
        self.outbox(Write::Attempted { id, attempt }).map(|_| ())
    }

    /// Queued deliveries due at `now_ms`, the longest due first, at most
    /// `limit`.
    pub fn due_deliveries(&self, now_ms: i64, limit: i64) -> Result<Vec<Delivery>, StateError> {
        self.read(|conn| {
            select(
                conn,
                &format!(
                    "SELECT {COLUMNS} FROM outbox WHERE status = 'queued' AND next_attempt_at_ms <= ?1 \
                     ORDER BY next_attempt_at_ms, id LIMIT ?2"
                ),
                params![now_ms, limit],
            )
        })
    }

    /// When the next queued delivery is due, if any is queued.
    pub fn next_delivery_at(&self) -> Result<Option<i64>, StateError> {
        self.read(|conn| {
            if !has_outbox(conn)? {
                return Ok(None);
            }
            Ok(conn
                .prepare_cached("SELECT MIN(next_attempt_at_ms) FROM outbox WHERE status = 'queued'")?
                .query_row([], |r| r.get::<_, Option<i64>>(0))?)
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
        self.read(|conn| {
            select(
                conn,
                &format!(
                    "SELECT {COLUMNS} FROM outbox WHERE (?1 IS NULL OR run_id = ?1) AND (?2 IS NULL OR status = ?2) \
                     ORDER BY id DESC LIMIT ?3"
                ),
                params![run_id, status.map(DeliveryStatus::as_str), limit],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Attempt, DeliveryStatus, NewDelivery};
    use crate::Store;

    fn new(at_ms: i64, cooldown_ms: i64, run: &str) -> NewDelivery {
        NewDelivery {
            run_id: Some(run.into()),
            target: "ops".into(),
            target_kind: "webhook".into(),
            target_def: serde_json::json!({"name": "ops", "type": "webhook", "url": "http://x"}),
            event: "run_failed".into(),
            payload: serde_json::json!({"run_id": run}),
            at_ms,
            cooldown_ms,
        }
    }

    #[test]
    fn a_cooldown_folds_repeats_into_the_open_window_only() -> Result<(), crate::StateError> {
        let store = Store::open(std::path::Path::new(":memory:"))?;
        let (first, folded) = store.enqueue_delivery(&new(1_000, 10_000, "r1"))?;
        assert!(!folded);
        for (i, run) in ["r2", "r3", "r4", "r5"].iter().enumerate() {
            assert_eq!(
                store.enqueue_delivery(&new(2_000 + i as i64, 10_000, run))?,
                (first, true)
            );
        }
        // Not due before the window ends; due with count 5 and the last payload at its end.
        assert!(store.due_deliveries(10_999, 10)?.is_empty());
        let due = store.due_deliveries(11_000, 10)?;
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].count, due[0].run_id.as_deref()), (5, Some("r5")));
        assert_eq!(due[0].payload["run_id"], "r5");
        // Once the window has closed, the next event opens another.
        let (second, folded) = store.enqueue_delivery(&new(11_000, 10_000, "r6"))?;
        assert!(!folded && second != first);
        // Without a cooldown nothing folds.
        let (a, _) = store.enqueue_delivery(&new(20_000, 0, "r7"))?;
        let (b, folded) = store.enqueue_delivery(&new(20_000, 0, "r8"))?;
        assert!(!folded && a != b);
        Ok(())
    }

    #[test]
    fn a_pruned_run_takes_its_deliveries_with_it() -> Result<(), crate::StateError> {
        let store = Store::open(std::path::Path::new(":memory:"))?;
        for (id, status) in [("r1", crate::RunStatus::Failed), ("r2", crate::RunStatus::Running)] {
            store.create_run(&crate::RunRecord {
                id: id.into(),
                workflow: "w".into(),
                file: "w.k".into(),
                status,
                created_at_ms: 0,
                updated_at_ms: 0,
                inputs: serde_json::Value::Null,
            })?;
            store.enqueue_delivery(&new(1_000, 0, id))?;
        }
        let mut server = new(1_000, 0, "-");
        server.run_id = None;
        store.enqueue_delivery(&server)?;
        assert_eq!(store.delete_final(&["r1".into(), "r2".into()])?, ["r1"]);
        let left: Vec<Option<String>> = store
            .deliveries(None, None, 10)?
            .into_iter()
            .map(|d| d.run_id)
            .collect();
        // The unfinished run's, and the server's own, stay.
        assert_eq!(left, [None, Some("r2".to_string())]);
        Ok(())
    }

    #[test]
    fn attempts_are_counted_and_the_outcome_kept() -> Result<(), crate::StateError> {
        let store = Store::open(std::path::Path::new(":memory:"))?;
        let (id, _) = store.enqueue_delivery(&new(1_000, 0, "r1"))?;
        store.record_attempt(
            id,
            Attempt::Retry {
                next_at_ms: 2_000,
                error: "HTTP 500".into(),
            },
        )?;
        assert!(store.due_deliveries(1_500, 10)?.is_empty());
        assert_eq!(store.next_delivery_at()?, Some(2_000));
        store.record_attempt(id, Attempt::Delivered { at_ms: 2_100 })?;
        let rows = store.deliveries(Some("r1"), None, 10)?;
        assert_eq!(rows.len(), 1);
        let d = &rows[0];
        assert_eq!(
            (d.status, d.attempts, d.delivered_at_ms),
            (DeliveryStatus::Delivered, 2, Some(2_100))
        );
        assert_eq!(d.last_error.as_deref(), Some("HTTP 500"));
        assert!(store.deliveries(None, Some(DeliveryStatus::Queued), 10)?.is_empty());
        assert_eq!(store.next_delivery_at()?, None);
        Ok(())
    }
}
