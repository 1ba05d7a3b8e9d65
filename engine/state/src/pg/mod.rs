//! The PostgreSQL store: the same operations as the SQLite one (see
//! `crate::store`), for several orchestrators sharing one database, plus
//! leases, fencing, operator requests, output chunks and change notices
//! (`crate::cluster`).
//!
//! SKELETON: every body is to be written. Signatures are fixed (the
//! `Store` facade calls them), semantics are in the doc comments and must
//! mirror the SQLite store's exactly where one exists.

#![allow(dead_code, unused_variables)]

use crate::cluster::{ActionAnswer, ActionRequest, Claim, Lease, LogChunk, Notice};
use crate::{
    Attempt, AuditQuery, AuditRecord, Delivery, DeliveryStatus, Entry, Event, NewDelivery, RunRecord, ScheduleRecord,
    SlotRecord, SnapshotRecord, StateError, TokenRecord,
};

/// One PostgreSQL database (`postgres://…`).
#[derive(Debug)]
pub(crate) struct Pg {}

impl Pg {
    /// Connect, apply the versioned migrations not yet applied (under an
    /// advisory lock, so instances starting together migrate once), and
    /// start the LISTEN connection. `url` is shown in errors without its
    /// password.
    pub fn open(url: &str) -> Result<Pg, StateError> {
        todo!()
    }

    /// The URL, without its password.
    pub fn location(&self) -> &str {
        todo!()
    }

    // ---- runs and journals (as the SQLite store) ----

    pub fn create_run(&self, run: &RunRecord) -> Result<(), StateError> {
        todo!()
    }
    /// As `create_run`, refused with `StateError::QueueFull` when
    /// `max_queued` runs are queued already (counted across every
    /// instance, serialized with an advisory transaction lock).
    pub fn create_run_limited(&self, run: &RunRecord, max_queued: usize) -> Result<(), StateError> {
        todo!()
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
        todo!()
    }
    pub fn delete_final(&self, ids: &[String]) -> Result<Vec<String>, StateError> {
        todo!()
    }
    pub fn run(&self, run_id: &str) -> Result<RunRecord, StateError> {
        todo!()
    }
    pub fn runs(&self) -> Result<Vec<RunRecord>, StateError> {
        todo!()
    }
    pub fn journal(&self, run_id: &str) -> Result<Vec<Entry>, StateError> {
        todo!()
    }
    pub fn journal_since(&self, run_id: &str, after_seq: i64, limit: i64) -> Result<Vec<Entry>, StateError> {
        todo!()
    }

    // ---- snapshots, access, outbox, schedules (as the SQLite store) ----

    pub fn save_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), StateError> {
        todo!()
    }
    pub fn snapshot(&self, id_or_name: &str) -> Result<SnapshotRecord, StateError> {
        todo!()
    }
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>, StateError> {
        todo!()
    }
    pub fn create_token(&self, token: &TokenRecord, audit: &AuditRecord) -> Result<(), StateError> {
        todo!()
    }
    pub fn revoke_token(&self, name: &str, at_ms: i64, audit: &AuditRecord) -> Result<TokenRecord, StateError> {
        todo!()
    }
    pub fn touch_token(&self, name: &str, at_ms: i64) -> Result<(), StateError> {
        todo!()
    }
    pub fn record_audit(&self, audit: &AuditRecord) -> Result<i64, StateError> {
        todo!()
    }
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StateError> {
        todo!()
    }
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StateError> {
        todo!()
    }
    pub fn enqueue_delivery(&self, delivery: &NewDelivery) -> Result<(i64, bool), StateError> {
        todo!()
    }
    pub fn record_attempt(&self, id: i64, attempt: Attempt) -> Result<(), StateError> {
        todo!()
    }
    /// As the SQLite store, but several instances deliver: the rows
    /// returned are taken with `FOR UPDATE SKIP LOCKED` and hidden from
    /// the others for a while (their `next_attempt_at_ms` moved 60 s on
    /// in the same transaction; `record_attempt` sets the real one), so
    /// one delivery is sent by one instance.
    pub fn due_deliveries(&self, now_ms: i64, limit: i64) -> Result<Vec<Delivery>, StateError> {
        todo!()
    }
    pub fn next_delivery_at(&self) -> Result<Option<i64>, StateError> {
        todo!()
    }
    pub fn deliveries(
        &self,
        run_id: Option<&str>,
        status: Option<DeliveryStatus>,
        limit: i64,
    ) -> Result<Vec<Delivery>, StateError> {
        todo!()
    }
    pub fn create_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StateError> {
        todo!()
    }
    pub fn update_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StateError> {
        todo!()
    }
    pub fn delete_schedule(&self, id: &str) -> Result<(), StateError> {
        todo!()
    }
    /// Slot, run and audit in one transaction, or none (`SlotTaken` when
    /// another instance claimed the slot first).
    pub fn claim_slot(
        &self,
        slot: &SlotRecord,
        run: Option<&RunRecord>,
        audit: Option<&AuditRecord>,
    ) -> Result<(), StateError> {
        todo!()
    }
    pub fn schedules(&self) -> Result<Vec<ScheduleRecord>, StateError> {
        todo!()
    }
    pub fn schedule(&self, id: &str) -> Result<ScheduleRecord, StateError> {
        todo!()
    }
    pub fn slots(&self, schedule_id: &str, limit: i64) -> Result<Vec<SlotRecord>, StateError> {
        todo!()
    }
    pub fn last_fired(&self, schedule_id: &str) -> Result<Option<SlotRecord>, StateError> {
        todo!()
    }
    pub fn slot_of_run(&self, run_id: &str) -> Result<Option<SlotRecord>, StateError> {
        todo!()
    }

    // ---- leases (crate::cluster) ----

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
        todo!()
    }
    /// Take the lease on one run whatever its status (a retry or a
    /// rollback of a finished run) unless another instance holds it live
    /// (`StateError::Held`). Fence + 1.
    pub fn claim_run(&self, id: &str, owner: &str, ttl_ms: i64) -> Result<Claim, StateError> {
        todo!()
    }
    /// Extend, to database now + `ttl_ms`, the live leases `owner` holds
    /// on `ids` with the fences given. Returns the runs still held (an
    /// expired lease is not renewed: it is lost).
    pub fn renew_leases(&self, owner: &str, ttl_ms: i64, held: &[(String, i64)]) -> Result<Vec<String>, StateError> {
        todo!()
    }
    /// Give a lease up (owner cleared; the fence stays), if `owner` holds
    /// it with `fence`. NOTIFY `Notice::Runs`.
    pub fn release_run(&self, id: &str, owner: &str, fence: i64) -> Result<(), StateError> {
        todo!()
    }
    /// Who holds a run's lease.
    pub fn lease(&self, id: &str) -> Result<Lease, StateError> {
        todo!()
    }

    // ---- operator requests ----

    /// Ask the holder of `run_id`'s lease to do `action`; NOTIFY
    /// `Notice::Request(run_id)`. Returns the request's id.
    pub fn request_action(&self, run_id: &str, action: &str, at_ms: i64) -> Result<i64, StateError> {
        todo!()
    }
    /// Unanswered requests for the runs in `ids`, oldest first.
    pub fn pending_requests(&self, ids: &[String]) -> Result<Vec<ActionRequest>, StateError> {
        todo!()
    }
    /// Answer a request (once; a later answer is ignored).
    pub fn answer_request(&self, id: i64, answer: &ActionAnswer, at_ms: i64) -> Result<(), StateError> {
        todo!()
    }
    /// A request's answer, if it has one.
    pub fn request_answer(&self, id: i64) -> Result<Option<ActionAnswer>, StateError> {
        todo!()
    }

    // ---- output stream chunks ----

    /// Store a chunk of a run's output stream; NOTIFY `Notice::Logs`.
    pub fn append_log_chunk(&self, run_id: &str, chunk: &LogChunk) -> Result<(), StateError> {
        todo!()
    }
    /// Chunks holding lines after `after_seq`, in order, at most `limit`.
    pub fn log_chunks_since(&self, run_id: &str, after_seq: i64, limit: i64) -> Result<Vec<LogChunk>, StateError> {
        todo!()
    }
    /// The number of the last line stored for a run (0: none).
    pub fn last_log_seq(&self, run_id: &str) -> Result<i64, StateError> {
        todo!()
    }

    // ---- notices ----

    /// Changes told by every instance (this one's too), from a dedicated
    /// LISTEN connection that reconnects when lost. A receiver that lags
    /// should fall back to reading the store.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        todo!()
    }
}
