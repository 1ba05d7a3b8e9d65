//! The PostgreSQL store: the same operations as the SQLite one (see
//! `crate::store`), for several orchestrators sharing one database, plus
//! leases, fencing, operator requests, output chunks and change notices
//! (`crate::cluster`).
//!
//! - **Callers are synchronous**, and some call from inside a tokio
//!   runtime of their own. The store therefore owns a runtime (two
//!   workers, `drover-pg`) and a connection pool; every operation is a
//!   task on that runtime whose answer the caller waits for on a channel
//!   (never `block_on` on the caller's thread). Every operation is bounded
//!   ([`OP_TIMEOUT`], getting a connection included): a database that
//!   cannot be reached is an error, not a hang.
//! - **Schema**: versioned migrations (`schema`), applied at open under
//!   an advisory transaction lock, so instances starting together migrate
//!   once.
//! - **Writes are transactions** that do what the SQLite writer does in
//!   its own: status folded in the append's transaction, outbox cooldown
//!   folded in the enqueue's, a slot with its run and audit record.
//! - **Times of leases are the database's** (`clock_timestamp()`), never
//!   an instance's clock.
//! - **Notices**: writes NOTIFY (`drover_journal`, `drover_runs`,
//!   `drover_requests`, `drover_logs`) in their transaction; one dedicated
//!   LISTEN connection (`listen`) forwards them to [`Pg::subscribe`]'s
//!   receivers, reconnecting when lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::cluster::Notice;
use crate::{Entry, Event, RunRecord, RunStatus, SnapshotRecord, StateError};

mod access;
mod cluster;
mod listen;
mod outbox;
mod schedules;
mod schema;

#[cfg(test)]
mod tests;

/// How long one operation may take, getting a connection included.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections kept by the pool at most.
const POOL_SIZE: usize = 16;

/// Advisory lock keys (`pg_advisory_xact_lock(bigint)`): "drover" and a
/// number.
const LOCK_MIGRATE: i64 = 0x6472_6f76_6572_0001;
const LOCK_CLAIM: i64 = 0x6472_6f76_6572_0002;
const LOCK_QUEUE: i64 = 0x6472_6f76_6572_0003;
/// The first key of the two-key advisory locks of outbox windows ("drov").
const LOCK_OUTBOX: i32 = 0x6472_6f76;

/// The NOTIFY channels.
const CHANNEL_JOURNAL: &str = "drover_journal";
const CHANNEL_RUNS: &str = "drover_runs";
const CHANNEL_REQUESTS: &str = "drover_requests";
const CHANNEL_LOGS: &str = "drover_logs";

/// The pooled connection an operation runs on.
type Client = deadpool_postgres::Object;

/// What an operation is: an async function of a pooled connection.
type Op<'c, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'c>>;

/// One PostgreSQL database (`postgres://…`).
pub(crate) struct Pg {
    /// The URL without its password.
    location: String,
    /// The password, to scrub from any message that might hold it.
    password: Option<String>,
    pool: deadpool_postgres::Pool,
    notices: tokio::sync::broadcast::Sender<Notice>,
    /// Shut down (in the background) when the store is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    /// Tells the LISTEN task to stop.
    _stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.pool.close();
        if let Some(rt) = self.runtime.take() {
            // Allowed anywhere, a runtime's worker included; the tasks
            // (connections, the listener) are dropped without waiting.
            rt.shutdown_background();
        }
    }
}

impl From<tokio_postgres::Error> for StateError {
    fn from(e: tokio_postgres::Error) -> StateError {
        pg_error(&e)
    }
}

/// A PostgreSQL error as the store's: the server's message and SQLSTATE
/// when it sent one; a full disk as [`StateError::DiskFull`].
fn pg_error(e: &tokio_postgres::Error) -> StateError {
    if let Some(db) = e.as_db_error() {
        let mut msg = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            msg.push_str(": ");
            msg.push_str(detail);
        }
        if *db.code() == SqlState::DISK_FULL {
            return StateError::DiskFull(msg);
        }
        return StateError::Pg(msg);
    }
    if e.is_closed() {
        return StateError::Pg(format!("the connection to the database was lost ({e})"));
    }
    StateError::Pg(e.to_string())
}

/// Whether `e` is a unique violation of the constraint `constraint`.
fn unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error()
        .is_some_and(|db| *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StateError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => StateError::Pg(format!("cannot reach the database: {}", message(pg_error(&e)))),
        PoolError::Timeout(_) => StateError::Pg(format!(
            "cannot reach the database: no connection within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
        PoolError::Closed => StateError::Pg("the store is closing".into()),
        other => StateError::Pg(format!("cannot reach the database: {other}")),
    }
}

/// The message of a `StateError::Pg` (or the error shown).
fn message(e: StateError) -> String {
    match e {
        StateError::Pg(m) | StateError::DiskFull(m) => m,
        other => other.to_string(),
    }
}

/// `url` with its password, if it has one, replaced by `***`: in the URL's
/// user info, a `password=` query parameter, or a `password=` key of the
/// key=value form.
pub fn redact(url: &str) -> String {
    fn redact_params(s: &str, sep: char) -> String {
        s.split(sep)
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.trim().eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join(&sep.to_string())
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_params(url, ' ');
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_params(q, '&'));
    }
    out
}

/// The SQL list of the statuses `keep` selects: `('queued', …)`.
fn status_list(keep: fn(RunStatus) -> bool) -> String {
    let names: Vec<String> = RunStatus::ALL
        .into_iter()
        .filter(|s| keep(*s))
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("({})", names.join(", "))
}

/// A `LIMIT` as SQLite reads one: a negative limit is none.
fn limit_of(limit: i64) -> Option<i64> {
    (limit >= 0).then_some(limit)
}

fn status_of(run: &str, value: &str) -> Result<RunStatus, StateError> {
    RunStatus::parse(value).ok_or_else(|| StateError::UnknownStatus {
        run: run.to_string(),
        value: value.to_string(),
    })
}

/// Rows of a cached statement.
async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StateError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, params).await?)
}

/// At most one row of a cached statement.
async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<tokio_postgres::Row>, StateError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&st, params).await?)
}

/// One row of a cached statement.
async fn query_one(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<tokio_postgres::Row, StateError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_one(&st, params).await?)
}

/// A cached statement's count of rows changed.
async fn execute(c: &impl GenericClient, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StateError> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, params).await?)
}

/// NOTIFY `channel` with `payload` (at the commit of the transaction `c`
/// is in).
async fn notify(c: &impl GenericClient, channel: &str, payload: &str) -> Result<(), StateError> {
    query(c, "SELECT pg_notify($1, $2)", &[&channel, &payload]).await?;
    Ok(())
}

impl Pg {
    /// Connect, apply the versioned migrations not yet applied (under an
    /// advisory lock, so instances starting together migrate once), and
    /// start the LISTEN connection. `url` is shown in errors without its
    /// password.
    pub fn open(url: &str) -> Result<Pg, StateError> {
        let location = redact(url);
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| StateError::Pg(format!("{location} is not a PostgreSQL URL or connection string")))?;
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("drover");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("drover-pg")
            .enable_all()
            .build()
            .map_err(|e| StateError::Pg(format!("cannot start the store's runtime: {e}")))?;
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(OP_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StateError::Pg(format!("cannot make the connection pool: {e}")))?;
        let (notices, _) = tokio::sync::broadcast::channel(1024);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let pg = Pg {
            location,
            password,
            pool,
            notices,
            runtime: Some(runtime),
            _stop: stop,
        };
        pg.exec(|c| Box::pin(schema::migrate(c)))
            .map_err(|e| StateError::Pg(format!("{}: {}", pg.location, message(e))))?;
        pg.handle()?.spawn(listen::listen(config, pg.notices.clone(), stopped));
        Ok(pg)
    }

    /// The URL, without its password.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn handle(&self) -> Result<&tokio::runtime::Handle, StateError> {
        self.runtime
            .as_ref()
            .map(|rt| rt.handle())
            .ok_or_else(|| StateError::Pg("the store is closed".into()))
    }

    /// Run `op` on a pooled connection on the store's runtime and wait for
    /// its answer; at most [`OP_TIMEOUT`] in all.
    fn exec<T, F>(&self, op: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Client) -> Op<'c, T> + Send + 'static,
    {
        let pool = self.pool.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle()?.spawn(async move {
            let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
            let result = async {
                let mut client = match tokio::time::timeout_at(deadline, pool.get()).await {
                    Ok(got) => got.map_err(pool_error)?,
                    Err(_) => {
                        return Err(StateError::Pg(format!(
                            "cannot reach the database: no connection within {} s",
                            OP_TIMEOUT.as_secs()
                        )));
                    }
                };
                let done = tokio::time::timeout_at(deadline, op(&mut client)).await;
                match done {
                    Ok(r) => r,
                    Err(_) => {
                        // Stuck in mid-operation: the connection is not
                        // given back to the pool.
                        drop(deadpool_postgres::Object::take(client));
                        Err(StateError::Pg(format!(
                            "no answer from the database within {} s",
                            OP_TIMEOUT.as_secs()
                        )))
                    }
                }
            }
            .await;
            let _ = tx.send(result);
        });
        let answer = match rx.recv_timeout(OP_TIMEOUT + Duration::from_secs(5)) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(StateError::Pg(format!(
                "no answer from the database within {} s",
                OP_TIMEOUT.as_secs()
            ))),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(StateError::Pg("the store's runtime stopped".into())),
        };
        answer.map_err(|e| self.scrub(e))
    }

    /// `e` without the password, should a message hold it.
    fn scrub(&self, e: StateError) -> StateError {
        let Some(password) = &self.password else {
            return e;
        };
        match e {
            StateError::Pg(m) => StateError::Pg(m.replace(password.as_str(), "***")),
            StateError::DiskFull(m) => StateError::DiskFull(m.replace(password.as_str(), "***")),
            other => other,
        }
    }

    // ---- runs and journals (as the SQLite store) ----

    pub fn create_run(&self, run: &RunRecord) -> Result<(), StateError> {
        let run = run.clone();
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                insert_run(&tx, &run).await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    /// As `create_run`, refused with `StateError::QueueFull` when
    /// `max_queued` runs are queued already (counted across every
    /// instance, serialized with an advisory transaction lock).
    pub fn create_run_limited(&self, run: &RunRecord, max_queued: usize) -> Result<(), StateError> {
        let run = run.clone();
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                query(&tx, "SELECT pg_advisory_xact_lock($1)", &[&LOCK_QUEUE]).await?;
                let queued: i64 = query_one(&tx, "SELECT count(*) FROM runs WHERE status = 'queued'", &[])
                    .await?
                    .get(0);
                if usize::try_from(queued).unwrap_or(usize::MAX) >= max_queued {
                    return Err(StateError::QueueFull { max: max_queued });
                }
                insert_run(&tx, &run).await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    /// Append as the SQLite store does (status folded in the same
    /// transaction), under `SELECT … FOR UPDATE` of the run's row:
    /// - `fence: Some((owner, f))`: refused with `StateError::Fenced`
    ///   unless the row's owner is `owner` and its fence `f`;
    /// - `fence: None`: refused with `StateError::Fenced` while another
    ///   instance holds a live lease on the run.
    ///
    /// Each journal row records the fence it was written under (0 when
    /// none). NOTIFY `Notice::Journal(run_id)` at commit.
    pub fn append(
        &self,
        run_id: &str,
        fence: Option<(&str, i64)>,
        events: &[(i64, Option<&str>, &Event)],
    ) -> Result<i64, StateError> {
        let run_id = run_id.to_string();
        let fence = fence.map(|(o, f)| (o.to_string(), f));
        let mut ats = Vec::with_capacity(events.len());
        let mut nodes = Vec::with_capacity(events.len());
        let mut bodies = Vec::with_capacity(events.len());
        let mut parsed = Vec::with_capacity(events.len());
        for (at, node, event) in events {
            ats.push(*at);
            nodes.push(node.map(str::to_string));
            bodies.push(serde_json::to_string(event)?);
            parsed.push((*at, (*event).clone()));
        }
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let Some(row) = query_opt(
                    &tx,
                    "SELECT owner, fence, COALESCE(lease_expires > clock_timestamp(), false), status \
                     FROM runs WHERE id = $1 FOR UPDATE",
                    &[&run_id],
                )
                .await?
                else {
                    return Err(StateError::UnknownRun(run_id));
                };
                let owner: Option<String> = row.get(0);
                let row_fence: i64 = row.get(1);
                let live: bool = row.get(2);
                let current: String = row.get(3);
                let written_fence = match &fence {
                    Some((me, f)) => {
                        if owner.as_deref() != Some(me.as_str()) || row_fence != *f {
                            let now = match &owner {
                                Some(o) if live => format!("the run is held by instance {o} with fence {row_fence}"),
                                Some(o) => format!(
                                    "the run was claimed since by instance {o} (fence {row_fence}, its lease expired)"
                                ),
                                None => format!("the run's lease was released (fence {row_fence})"),
                            };
                            return Err(StateError::Fenced {
                                run: run_id,
                                detail: format!("this instance's lease (fence {f}) was lost; {now}"),
                            });
                        }
                        *f
                    }
                    None => {
                        if let (Some(o), true) = (&owner, live) {
                            return Err(StateError::Fenced {
                                run: run_id.clone(),
                                detail: format!(
                                    "the run is held by instance {o} with fence {row_fence}, and this write \
                                     carries no fence"
                                ),
                            });
                        }
                        0
                    }
                };
                let mut status = status_of(&run_id, &current)?;
                let last: i64 = query_one(
                    &tx,
                    "SELECT COALESCE(MAX(seq), 0) FROM journal WHERE run_id = $1",
                    &[&run_id],
                )
                .await?
                .get(0);
                let seqs: Vec<i64> = (1..=ats.len() as i64).map(|i| last + i).collect();
                execute(
                    &tx,
                    "INSERT INTO journal (run_id, seq, at_ms, node, event, fence) \
                     SELECT $1, s, a, n, e, $6 FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::text[]) \
                     AS t(s, a, n, e)",
                    &[&run_id, &seqs, &ats, &nodes, &bodies, &written_fence],
                )
                .await?;
                let mut changed_at = None;
                for (at_ms, event) in &parsed {
                    let next = status.after(event);
                    if next != status || matches!(event, Event::RunStarted { .. } | Event::RunFinished { .. }) {
                        changed_at = Some(*at_ms);
                    }
                    status = next;
                }
                if let Some(at) = changed_at {
                    execute(
                        &tx,
                        "UPDATE runs SET status = $2, updated_at_ms = $3 WHERE id = $1",
                        &[&run_id, &status.as_str(), &at],
                    )
                    .await?;
                }
                notify(&tx, CHANNEL_JOURNAL, &run_id).await?;
                tx.commit().await?;
                Ok(last + seqs.len() as i64)
            })
        })
    }

    /// Delete runs and their journals (with their outbox rows, output
    /// chunks and operator requests), each only if its status is final and
    /// no instance holds a live lease on it (a run being retried stays).
    pub fn delete_final(&self, ids: &[String]) -> Result<Vec<String>, StateError> {
        let ids = ids.to_vec();
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let finals = status_list(RunStatus::is_final);
                let rows = query(
                    &tx,
                    &format!(
                        "SELECT id FROM runs WHERE id = ANY($1) AND status IN {finals} \
                         AND NOT (owner IS NOT NULL AND COALESCE(lease_expires > clock_timestamp(), false)) \
                         FOR UPDATE"
                    ),
                    &[&ids],
                )
                .await?;
                let found: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
                let mut deleted = Vec::new();
                for id in &ids {
                    if found.contains(id) && !deleted.contains(id) {
                        deleted.push(id.clone());
                    }
                }
                for sql in [
                    "DELETE FROM journal WHERE run_id = ANY($1)",
                    "DELETE FROM outbox WHERE run_id = ANY($1)",
                    "DELETE FROM log_chunks WHERE run_id = ANY($1)",
                    "DELETE FROM run_requests WHERE run_id = ANY($1)",
                    "DELETE FROM runs WHERE id = ANY($1)",
                ] {
                    execute(&tx, sql, &[&deleted]).await?;
                }
                tx.commit().await?;
                Ok(deleted)
            })
        })
    }

    pub fn run(&self, run_id: &str) -> Result<RunRecord, StateError> {
        let run_id = run_id.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                let Some(r) = query_opt(
                    &*c,
                    "SELECT id, workflow, file, status, created_at_ms, updated_at_ms, inputs FROM runs WHERE id = $1",
                    &[&run_id],
                )
                .await?
                else {
                    return Err(StateError::UnknownRun(run_id));
                };
                let id: String = r.get(0);
                let status: String = r.get(3);
                let inputs: String = r.get(6);
                Ok(RunRecord {
                    status: status_of(&id, &status)?,
                    workflow: r.get(1),
                    file: r.get(2),
                    created_at_ms: r.get(4),
                    updated_at_ms: r.get(5),
                    inputs: serde_json::from_str(&inputs)?,
                    id,
                })
            })
        })
    }

    /// Every run, newest first, without their inputs.
    pub fn runs(&self) -> Result<Vec<RunRecord>, StateError> {
        self.exec(|c| {
            Box::pin(async move {
                let rows = query(
                    &*c,
                    "SELECT id, workflow, file, status, created_at_ms, updated_at_ms FROM runs \
                     ORDER BY created_at_ms DESC, id DESC",
                    &[],
                )
                .await?;
                rows.iter()
                    .map(|r| {
                        let id: String = r.get(0);
                        let status: String = r.get(3);
                        Ok(RunRecord {
                            status: status_of(&id, &status)?,
                            workflow: r.get(1),
                            file: r.get(2),
                            created_at_ms: r.get(4),
                            updated_at_ms: r.get(5),
                            inputs: serde_json::Value::Null,
                            id,
                        })
                    })
                    .collect()
            })
        })
    }

    pub fn journal(&self, run_id: &str) -> Result<Vec<Entry>, StateError> {
        self.journal_since(run_id, 0, i64::MAX)
    }

    pub fn journal_since(&self, run_id: &str, after_seq: i64, limit: i64) -> Result<Vec<Entry>, StateError> {
        let run_id = run_id.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                let rows = query(
                    &*c,
                    "SELECT seq, at_ms, node, event FROM journal WHERE run_id = $1 AND seq > $2 \
                     ORDER BY seq LIMIT $3",
                    &[&run_id, &after_seq, &limit_of(limit)],
                )
                .await?;
                rows.iter()
                    .map(|r| {
                        let event: String = r.get(3);
                        Ok(Entry {
                            seq: r.get(0),
                            at_ms: r.get(1),
                            node: r.get(2),
                            event: serde_json::from_str(&event)?,
                        })
                    })
                    .collect()
            })
        })
    }

    // ---- snapshots (as the SQLite store) ----

    pub fn save_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), StateError> {
        let s = snapshot.clone();
        let selector = serde_json::to_string(&s.selector)?;
        let spec = serde_json::to_string(&s.spec)?;
        let servers = serde_json::to_string(&s.servers)?;
        self.exec(move |c| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(
                        "INSERT INTO snapshots (id, name, created_at_ms, file, selector, spec, servers) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .await?;
                match c
                    .execute(
                        &st,
                        &[&s.id, &s.name, &s.created_at_ms, &s.file, &selector, &spec, &servers],
                    )
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if unique_violation(&e, "snapshots_name_key") => {
                        Err(StateError::SnapshotExists(s.name.clone().unwrap_or_default()))
                    }
                    Err(e) => Err(e.into()),
                }
            })
        })
    }

    /// The snapshot whose id, or else whose name, is `id_or_name`.
    pub fn snapshot(&self, id_or_name: &str) -> Result<SnapshotRecord, StateError> {
        let key = id_or_name.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                // An id first: a name cannot hide the snapshot with that id.
                for column in ["id", "name"] {
                    let row = query_opt(
                        &*c,
                        &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE {column} = $1"),
                        &[&key],
                    )
                    .await?;
                    if let Some(row) = row {
                        return snapshot_of(&row);
                    }
                }
                Err(StateError::UnknownSnapshot(key))
            })
        })
    }

    /// Every snapshot, newest first, without `servers` (`Null`).
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>, StateError> {
        self.exec(|c| {
            Box::pin(async move {
                let rows = query(
                    &*c,
                    "SELECT id, name, created_at_ms, file, selector, spec, 'null' FROM snapshots \
                     ORDER BY created_at_ms DESC, id DESC",
                    &[],
                )
                .await?;
                rows.iter().map(snapshot_of).collect()
            })
        })
    }

    // ---- notices ----

    /// Changes told by every instance (this one's too), from a dedicated
    /// LISTEN connection that reconnects when lost. A receiver that lags
    /// should fall back to reading the store.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }
}

/// Insert a run and NOTIFY `drover_runs` (at commit).
async fn insert_run(c: &impl GenericClient, run: &RunRecord) -> Result<(), StateError> {
    let inputs = serde_json::to_string(&run.inputs)?;
    execute(
        c,
        "INSERT INTO runs (id, workflow, file, status, created_at_ms, updated_at_ms, inputs) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &run.id,
            &run.workflow,
            &run.file,
            &run.status.as_str(),
            &run.created_at_ms,
            &run.updated_at_ms,
            &inputs,
        ],
    )
    .await?;
    notify(c, CHANNEL_RUNS, "").await
}

/// The columns of a snapshot, in [`snapshot_of`]'s order.
const SNAPSHOT_COLUMNS: &str = "id, name, created_at_ms, file, selector, spec, servers";

fn snapshot_of(r: &tokio_postgres::Row) -> Result<SnapshotRecord, StateError> {
    let selector: String = r.get(4);
    let spec: String = r.get(5);
    let servers: String = r.get(6);
    Ok(SnapshotRecord {
        id: r.get(0),
        name: r.get(1),
        created_at_ms: r.get(2),
        file: r.get(3),
        selector: serde_json::from_str(&selector)?,
        spec: serde_json::from_str(&spec)?,
        servers: serde_json::from_str(&servers)?,
    })
}
