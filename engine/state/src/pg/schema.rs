//! The schema, as versioned migrations: `drover_migrations` records the
//! versions applied; [`migrate`] applies the others, in order, in one
//! transaction holding an advisory lock (instances starting together
//! migrate once: the others wait, then find nothing to do).
//!
//! A migration is never edited once released: a change is a new one.

use super::{Client, LOCK_MIGRATE, execute, query};
use crate::StateError;

/// The migrations, by version (1, 2, …).
const MIGRATIONS: &[(i32, &str)] = &[(1, V1)];

/// The tables of the SQLite store (runs, journal, tokens, audit,
/// snapshots, outbox, schedules, schedule_slots), with the leases and
/// fences of runs, operator requests and output chunks.
const V1: &str = "
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    file TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    inputs TEXT NOT NULL,
    owner TEXT,
    fence BIGINT NOT NULL DEFAULT 0,
    lease_expires TIMESTAMPTZ
);
CREATE INDEX runs_by_status ON runs (status, created_at_ms, id);
CREATE INDEX runs_by_time ON runs (created_at_ms, id);
CREATE INDEX runs_by_owner ON runs (owner) WHERE owner IS NOT NULL;

CREATE TABLE journal (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    node TEXT,
    event TEXT NOT NULL,
    fence BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash BYTEA NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    last_used_ms BIGINT,
    revoked_at_ms BIGINT
);
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    run_id TEXT,
    detail TEXT,
    outcome TEXT NOT NULL
);
CREATE INDEX audit_by_run ON audit (run_id, id);

CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE,
    created_at_ms BIGINT NOT NULL,
    file TEXT NOT NULL,
    selector TEXT NOT NULL,
    spec TEXT NOT NULL,
    servers TEXT NOT NULL
);
CREATE INDEX snapshots_by_time ON snapshots (created_at_ms, id);

CREATE TABLE outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id TEXT,
    target TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_def TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    count BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    delivered_at_ms BIGINT,
    last_error TEXT,
    claimed_at_ms BIGINT
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at_ms, id);
CREATE INDEX outbox_by_run ON outbox (run_id, id);
CREATE INDEX outbox_windows ON outbox (target, event) WHERE status = 'queued' AND attempts = 0;

CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    overlap TEXT NOT NULL,
    missed TEXT NOT NULL,
    paused BOOLEAN NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    since_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE schedule_slots (
    schedule_id TEXT NOT NULL,
    slot_ms BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    run_id TEXT,
    count BIGINT NOT NULL,
    detail TEXT,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (schedule_id, slot_ms)
);
CREATE INDEX schedule_slots_by_run ON schedule_slots (run_id);

CREATE TABLE run_requests (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    action TEXT NOT NULL,
    requested_at_ms BIGINT NOT NULL,
    answered_at_ms BIGINT,
    answer TEXT
);
CREATE INDEX run_requests_pending ON run_requests (run_id, id) WHERE answered_at_ms IS NULL;

CREATE TABLE log_chunks (
    run_id TEXT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (run_id, last_seq)
);
";

/// Apply the migrations the database lacks. A database migrated by a
/// newer drover (a version this one does not know) is refused.
pub(super) async fn migrate(c: &mut Client) -> Result<(), StateError> {
    let tx = c.transaction().await?;
    query(&tx, "SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS drover_migrations (version INT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
    )
    .await?;
    let applied: Vec<i32> = query(&tx, "SELECT version FROM drover_migrations ORDER BY version", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if let Some(newer) = applied.iter().find(|v| **v > known) {
        return Err(StateError::Pg(format!(
            "the database's schema is at version {newer}, newer than this drover knows ({known}): \
             it was migrated by a newer drover; use that version"
        )));
    }
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| StateError::Pg(format!("migration {version}: {}", super::message(e.into()))))?;
        execute(
            &tx,
            "INSERT INTO drover_migrations (version, applied_at_ms) \
             VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)",
            &[version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
