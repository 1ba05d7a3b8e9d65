//! Leases on runs, operator requests and output chunks (`crate::cluster`).
//!
//! Lease times are the database's (`clock_timestamp()`): the instances'
//! clocks may disagree, the lease's expiry does not depend on them. A
//! lease is live while `owner IS NOT NULL AND lease_expires >
//! clock_timestamp()`. Claiming bumps the run's fence; the fence is
//! never lowered (releasing keeps it).

use super::{
    CHANNEL_LOGS, CHANNEL_REQUESTS, CHANNEL_RUNS, LOCK_CLAIM, Pg, execute, notify, query, query_one, query_opt,
    status_list, status_of,
};
use crate::cluster::{ActionAnswer, ActionRequest, Claim, Lease, LogChunk};
use crate::{RunStatus, StateError};

/// Whether a row's lease is live, in SQL.
const LIVE: &str = "(owner IS NOT NULL AND COALESCE(lease_expires > clock_timestamp(), false))";

/// Database now + `$n` ms, in SQL.
fn expiry(n: usize) -> String {
    format!("clock_timestamp() + (${n}::bigint * interval '1 millisecond')")
}

impl Pg {
    /// Take leases on up to `limit` unfinished runs (queued, running,
    /// paused, aborted, rolling_back) that no instance holds (no owner,
    /// or the lease expired), interrupted ones first, then queued, oldest
    /// first; never one of `exclude`. At most `max_held` live leases
    /// exist across all instances afterwards (counted under an advisory
    /// transaction lock). Rows are chosen `FOR UPDATE SKIP LOCKED`; each
    /// claimed row gets owner = `owner`, fence + 1, lease expiry =
    /// database now + `ttl_ms`.
    pub fn claim_runs(
        &self,
        owner: &str,
        ttl_ms: i64,
        max_held: usize,
        limit: usize,
        exclude: &[String],
    ) -> Result<Vec<Claim>, StateError> {
        let owner = owner.to_string();
        let exclude = exclude.to_vec();
        self.exec(move |c| {
            Box::pin(async move {
                let unfinished = status_list(RunStatus::is_unfinished);
                let tx = c.transaction().await?;
                query(&tx, "SELECT pg_advisory_xact_lock($1)", &[&LOCK_CLAIM]).await?;
                let live: i64 = query_one(
                    &tx,
                    &format!("SELECT count(*) FROM runs WHERE {LIVE} AND status IN {unfinished}"),
                    &[],
                )
                .await?
                .get(0);
                let room = max_held.saturating_sub(usize::try_from(live).unwrap_or(usize::MAX));
                let take = i64::try_from(limit.min(room)).unwrap_or(i64::MAX);
                if take == 0 {
                    tx.commit().await?;
                    return Ok(Vec::new());
                }
                let rows = query(
                    &tx,
                    &format!(
                        "WITH chosen AS ( \
                           SELECT id FROM runs WHERE status IN {unfinished} AND NOT {LIVE} \
                           AND NOT (id = ANY($3)) \
                           ORDER BY (status = 'queued'), created_at_ms, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
                         UPDATE runs r SET owner = $1, fence = r.fence + 1, lease_expires = {} \
                         FROM chosen WHERE r.id = chosen.id \
                         RETURNING r.id, r.fence, r.status, r.created_at_ms",
                        expiry(2)
                    ),
                    &[&owner, &ttl_ms, &exclude, &take],
                )
                .await?;
                tx.commit().await?;
                let mut claims = Vec::with_capacity(rows.len());
                for r in &rows {
                    let id: String = r.get(0);
                    let status: String = r.get(2);
                    let created: i64 = r.get(3);
                    let status = status_of(&id, &status)?;
                    claims.push((
                        (status == RunStatus::Queued, created, id.clone()),
                        Claim {
                            fence: r.get(1),
                            status,
                            id,
                        },
                    ));
                }
                claims.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(claims.into_iter().map(|(_, c)| c).collect())
            })
        })
    }

    /// Take the lease on one run whatever its status (a retry or a
    /// rollback of a finished run) unless another instance holds it live
    /// (`StateError::Held`). Fence + 1.
    pub fn claim_run(&self, id: &str, owner: &str, ttl_ms: i64) -> Result<Claim, StateError> {
        let id = id.to_string();
        let owner = owner.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let Some(row) = query_opt(
                    &tx,
                    &format!("SELECT owner, {LIVE} FROM runs WHERE id = $1 FOR UPDATE"),
                    &[&id],
                )
                .await?
                else {
                    return Err(StateError::UnknownRun(id));
                };
                let holder: Option<String> = row.get(0);
                let live: bool = row.get(1);
                if let Some(holder) = holder
                    && live
                    && holder != owner
                {
                    return Err(StateError::Held { run: id, owner: holder });
                }
                let row = query_one(
                    &tx,
                    &format!(
                        "UPDATE runs SET owner = $2, fence = fence + 1, lease_expires = {} WHERE id = $1 \
                         RETURNING fence, status",
                        expiry(3)
                    ),
                    &[&id, &owner, &ttl_ms],
                )
                .await?;
                tx.commit().await?;
                let status: String = row.get(1);
                Ok(Claim {
                    fence: row.get(0),
                    status: status_of(&id, &status)?,
                    id,
                })
            })
        })
    }

    /// Extend, to database now + `ttl_ms`, the live leases `owner` holds
    /// on `ids` with the fences given. Returns the runs still held (an
    /// expired lease is not renewed: it is lost), in the order given.
    pub fn renew_leases(&self, owner: &str, ttl_ms: i64, held: &[(String, i64)]) -> Result<Vec<String>, StateError> {
        let owner = owner.to_string();
        let held = held.to_vec();
        if held.is_empty() {
            return Ok(Vec::new());
        }
        self.exec(move |c| {
            Box::pin(async move {
                let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
                let fences: Vec<i64> = held.iter().map(|(_, f)| *f).collect();
                let rows = query(
                    &*c,
                    &format!(
                        "UPDATE runs r SET lease_expires = {} FROM UNNEST($3::text[], $4::bigint[]) AS h(id, fence) \
                         WHERE r.id = h.id AND r.fence = h.fence AND r.owner = $1 \
                         AND r.lease_expires > clock_timestamp() RETURNING r.id",
                        expiry(2)
                    ),
                    &[&owner, &ttl_ms, &ids, &fences],
                )
                .await?;
                let renewed: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
                let mut out = Vec::new();
                for (id, _) in &held {
                    if renewed.contains(id) && !out.contains(id) {
                        out.push(id.clone());
                    }
                }
                Ok(out)
            })
        })
    }

    /// Give a lease up (owner cleared; the fence stays), if `owner` holds
    /// it with `fence`. NOTIFY `Notice::Runs`. Nothing happens otherwise.
    pub fn release_run(&self, id: &str, owner: &str, fence: i64) -> Result<(), StateError> {
        let id = id.to_string();
        let owner = owner.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let n = execute(
                    &tx,
                    "UPDATE runs SET owner = NULL, lease_expires = NULL WHERE id = $1 AND owner = $2 AND fence = $3",
                    &[&id, &owner, &fence],
                )
                .await?;
                if n > 0 {
                    notify(&tx, CHANNEL_RUNS, "").await?;
                }
                tx.commit().await?;
                Ok(())
            })
        })
    }

    /// Who holds a run's lease.
    pub fn lease(&self, id: &str) -> Result<Lease, StateError> {
        let id = id.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                let Some(row) = query_opt(
                    &*c,
                    &format!("SELECT owner, fence, {LIVE} FROM runs WHERE id = $1"),
                    &[&id],
                )
                .await?
                else {
                    return Err(StateError::UnknownRun(id));
                };
                Ok(Lease {
                    owner: row.get(0),
                    fence: row.get(1),
                    live: row.get(2),
                })
            })
        })
    }

    // ---- operator requests ----

    /// Ask the holder of `run_id`'s lease to do `action`; NOTIFY
    /// `Notice::Request(run_id)`. Returns the request's id
    /// (`UnknownRun` if there is no such run).
    pub fn request_action(&self, run_id: &str, action: &str, at_ms: i64) -> Result<i64, StateError> {
        let run_id = run_id.to_string();
        let action = action.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                let Some(row) = query_opt(
                    &tx,
                    "INSERT INTO run_requests (run_id, action, requested_at_ms) \
                     SELECT id, $2, $3 FROM runs WHERE id = $1 RETURNING id",
                    &[&run_id, &action, &at_ms],
                )
                .await?
                else {
                    return Err(StateError::UnknownRun(run_id));
                };
                notify(&tx, CHANNEL_REQUESTS, &run_id).await?;
                tx.commit().await?;
                Ok(row.get(0))
            })
        })
    }

    /// Unanswered requests for the runs in `ids`, oldest first.
    pub fn pending_requests(&self, ids: &[String]) -> Result<Vec<ActionRequest>, StateError> {
        let ids = ids.to_vec();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.exec(move |c| {
            Box::pin(async move {
                let rows = query(
                    &*c,
                    "SELECT id, run_id, action, requested_at_ms FROM run_requests \
                     WHERE run_id = ANY($1) AND answered_at_ms IS NULL ORDER BY id",
                    &[&ids],
                )
                .await?;
                Ok(rows
                    .iter()
                    .map(|r| ActionRequest {
                        id: r.get(0),
                        run_id: r.get(1),
                        action: r.get(2),
                        requested_at_ms: r.get(3),
                    })
                    .collect())
            })
        })
    }

    /// Answer a request (once; a later answer is ignored, as is an answer
    /// to no request).
    pub fn answer_request(&self, id: i64, answer: &ActionAnswer, at_ms: i64) -> Result<(), StateError> {
        let answer = serde_json::to_string(answer)?;
        self.exec(move |c| {
            Box::pin(async move {
                execute(
                    &*c,
                    "UPDATE run_requests SET answer = $2, answered_at_ms = $3 WHERE id = $1 AND answered_at_ms IS NULL",
                    &[&id, &answer, &at_ms],
                )
                .await?;
                Ok(())
            })
        })
    }

    /// A request's answer, if it has one (None too for no request).
    pub fn request_answer(&self, id: i64) -> Result<Option<ActionAnswer>, StateError> {
        self.exec(move |c| {
            Box::pin(async move {
                let row = query_opt(&*c, "SELECT answer FROM run_requests WHERE id = $1", &[&id]).await?;
                match row.and_then(|r| r.get::<_, Option<String>>(0)) {
                    Some(answer) => Ok(Some(serde_json::from_str(&answer)?)),
                    None => Ok(None),
                }
            })
        })
    }

    // ---- output stream chunks ----

    /// Store a chunk of a run's output stream; NOTIFY `Notice::Logs`. A
    /// chunk stored already (same run and last line) is kept as it was: a
    /// retried write is harmless.
    pub fn append_log_chunk(&self, run_id: &str, chunk: &LogChunk) -> Result<(), StateError> {
        let run_id = run_id.to_string();
        let chunk = chunk.clone();
        self.exec(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                execute(
                    &tx,
                    "INSERT INTO log_chunks (run_id, first_seq, last_seq, body) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (run_id, last_seq) DO NOTHING",
                    &[&run_id, &chunk.first_seq, &chunk.last_seq, &chunk.body],
                )
                .await?;
                notify(&tx, CHANNEL_LOGS, &run_id).await?;
                tx.commit().await?;
                Ok(())
            })
        })
    }

    /// Chunks holding lines after `after_seq`, in order, at most `limit`.
    pub fn log_chunks_since(&self, run_id: &str, after_seq: i64, limit: i64) -> Result<Vec<LogChunk>, StateError> {
        let run_id = run_id.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                let rows = query(
                    &*c,
                    "SELECT first_seq, last_seq, body FROM log_chunks WHERE run_id = $1 AND last_seq > $2 \
                     ORDER BY last_seq LIMIT $3",
                    &[&run_id, &after_seq, &super::limit_of(limit)],
                )
                .await?;
                Ok(rows
                    .iter()
                    .map(|r| LogChunk {
                        first_seq: r.get(0),
                        last_seq: r.get(1),
                        body: r.get(2),
                    })
                    .collect())
            })
        })
    }

    /// The number of the last line stored for a run (0: none).
    pub fn last_log_seq(&self, run_id: &str) -> Result<i64, StateError> {
        let run_id = run_id.to_string();
        self.exec(move |c| {
            Box::pin(async move {
                Ok(query_one(
                    &*c,
                    "SELECT COALESCE(MAX(last_seq), 0) FROM log_chunks WHERE run_id = $1",
                    &[&run_id],
                )
                .await?
                .get(0))
            })
        })
    }
}
