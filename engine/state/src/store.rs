//! The state store: one API over two backends.
//!
//! - **SQLite** (a file; the embedded default): one owner at a time, the
//!   file locked while it is open ([`crate::sqlite`]).
//! - **PostgreSQL** (`postgres://…`): shared by several orchestrators,
//!   which divide the runs between them with leases ([`crate::cluster`]).
//!
//! Every caller sees the same operations with the same meaning; the
//! lease operations exist only on PostgreSQL. An instance that executes a
//! run on PostgreSQL [holds](Store::hold) it with the fence of its lease:
//! every append to that run's journal then carries the fence, and the
//! database refuses it once the fence moved on ([`StateError::Fenced`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::cluster::{ActionAnswer, ActionRequest, Claim, Lease, LogChunk, Notice};
use crate::pg::Pg;
pub use crate::pg::redact;
use crate::sqlite::Sqlite;
use crate::{
    Attempt, AuditQuery, AuditRecord, Delivery, DeliveryStatus, Entry, Event, NewDelivery, RunRecord, ScheduleRecord,
    SlotRecord, SnapshotRecord, StateError, TokenRecord,
};

/// Where the state is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite file (a path, or `sqlite://PATH`).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://…` or `postgresql://…`).
    Postgres(String),
}

impl Location {
    /// Read a state location: a file path, `sqlite://PATH`, or
    /// `postgres://…`. Any other URL scheme is refused rather than taken
    /// for a file name.
    pub fn parse(location: &str) -> Result<Location, StateError> {
        if let Some((scheme, rest)) = location.split_once("://")
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            if scheme.eq_ignore_ascii_case("sqlite") && !rest.is_empty() {
                return Ok(Location::Sqlite(PathBuf::from(rest)));
            }
            if (scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql"))
                && !rest.is_empty()
            {
                return Ok(Location::Postgres(location.to_string()));
            }
            return Err(StateError::UnsupportedScheme {
                location: redact(location),
                scheme: scheme.to_string(),
            });
        }
        Ok(Location::Sqlite(PathBuf::from(location)))
    }

    /// Shown to people: the path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(url) => redact(url),
        }
    }
}

/// The path of a state location for commands that run in this process:
/// a file path or `sqlite://PATH`. A PostgreSQL location is refused, with
/// what to do instead: runs on a shared store are executed by `drover
/// serve` instances, which hold leases on them.
pub fn parse_location(location: &str) -> Result<PathBuf, StateError> {
    match Location::parse(location)? {
        Location::Sqlite(p) => Ok(p),
        Location::Postgres(url) => Err(StateError::LocalOnly(redact(&url))),
    }
}

enum Db {
    Sqlite(Sqlite),
    Postgres(Pg),
}

/// A run this instance executes, and the fence it writes under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Fence(i64),
    /// The lease was lost: nothing more is written for the run.
    Lost,
}

/// The state store.
pub struct Store {
    db: Db,
    /// What `path()` answers: the SQLite file, or the redacted URL.
    shown: PathBuf,
    /// This instance's id in leases (PostgreSQL).
    owner: String,
    holds: Mutex<HashMap<String, Hold>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.shown)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Calls the same method on whichever backend the store has.
macro_rules! both {
    ($self:ident, $db:ident => $call:expr) => {
        match &$self.db {
            Db::Sqlite($db) => $call,
            Db::Postgres($db) => $call,
        }
    };
}

impl Store {
    fn new(db: Db, shown: PathBuf) -> Store {
        Store {
            db,
            shown,
            owner: instance_id(),
            holds: Mutex::new(HashMap::new()),
        }
    }

    /// Open (creating if needed) the SQLite store at `path` as its owner:
    /// no other process can open it so until this store is dropped.
    /// `:memory:` makes a private temporary store.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        let db = Sqlite::open(path)?;
        let shown = db.path().to_path_buf();
        Ok(Store::new(Db::Sqlite(db), shown))
    }

    /// Open the SQLite store at `path` to read it (listings, status) while
    /// another process may own it. It must exist.
    pub fn open_read_only(path: &Path) -> Result<Store, StateError> {
        let db = Sqlite::open_read_only(path)?;
        Ok(Store::new(Db::Sqlite(db), path.to_path_buf()))
    }

    /// Open the store at `location`: an SQLite file as its owner, or a
    /// PostgreSQL database shared with other instances (migrated to this
    /// version's schema first).
    pub fn open_location(location: &Location) -> Result<Store, StateError> {
        match location {
            Location::Sqlite(p) => Store::open(p),
            Location::Postgres(url) => {
                let db = Pg::open(url)?;
                let shown = PathBuf::from(db.location());
                Ok(Store::new(Db::Postgres(db), shown))
            }
        }
    }

    /// The SQLite file, or the PostgreSQL URL without its password.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// Whether several instances share this store (PostgreSQL): runs are
    /// then executed under leases.
    pub fn is_shared(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    /// This instance's id, as leases name their holder: the host name,
    /// the process id and a random part, so a restarted instance is a new
    /// holder.
    pub fn instance(&self) -> &str {
        &self.owner
    }

    // ---- runs and journals ----

    /// Record a new run.
    pub fn create_run(&self, run: &RunRecord) -> Result<(), StateError> {
        both!(self, db => db.create_run(run))
    }

    /// Record a new queued run unless `max_queued` are queued already
    /// ([`StateError::QueueFull`]); on PostgreSQL, counted across every
    /// instance.
    pub fn create_run_limited(&self, run: &RunRecord, max_queued: usize) -> Result<(), StateError> {
        match &self.db {
            Db::Sqlite(db) => db.create_run(run),
            Db::Postgres(db) => db.create_run_limited(run, max_queued),
        }
    }

    /// Append events to a run's journal, durably, and update its status
    /// as they say, in one transaction. Returns the sequence number of the
    /// last one. On PostgreSQL, a run this instance [holds](Store::hold)
    /// is written under its fence; one it lost is not written at all.
    pub fn append(&self, run_id: &str, events: &[(i64, Option<&str>, &Event)]) -> Result<i64, StateError> {
        match &self.db {
            Db::Sqlite(db) => db.append(run_id, events),
            Db::Postgres(db) => {
                let hold = lock(&self.holds).get(run_id).copied();
                match hold {
                    Some(Hold::Lost) => Err(StateError::Fenced {
                        run: run_id.to_string(),
                        detail: "this instance lost its lease on it".into(),
                    }),
                    Some(Hold::Fence(f)) => db.append(run_id, Some((&self.owner, f)), events),
                    None => db.append(run_id, None, events),
                }
            }
        }
    }

    /// Delete runs and their journals, each only if its status is final
    /// (checked in the deleting transaction: a run retried meanwhile
    /// stays). Returns the ids deleted.
    pub fn delete_final(&self, ids: &[String]) -> Result<Vec<String>, StateError> {
        both!(self, db => db.delete_final(ids))
    }

    /// One run.
    pub fn run(&self, run_id: &str) -> Result<RunRecord, StateError> {
        both!(self, db => db.run(run_id))
    }

    /// Every run, newest first.
    pub fn runs(&self) -> Result<Vec<RunRecord>, StateError> {
        both!(self, db => db.runs())
    }

    /// A run's whole journal, in order.
    pub fn journal(&self, run_id: &str) -> Result<Vec<Entry>, StateError> {
        both!(self, db => db.journal(run_id))
    }

    /// At most `limit` entries of a run's journal after `after_seq`.
    pub fn journal_since(&self, run_id: &str, after_seq: i64, limit: i64) -> Result<Vec<Entry>, StateError> {
        both!(self, db => db.journal_since(run_id, after_seq, limit))
    }

    // ---- snapshots ----

    /// Store a snapshot.
    pub fn save_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), StateError> {
        both!(self, db => db.save_snapshot(snapshot))
    }

    /// One snapshot, by id or name.
    pub fn snapshot(&self, id_or_name: &str) -> Result<SnapshotRecord, StateError> {
        both!(self, db => db.snapshot(id_or_name))
    }

    /// Every snapshot, newest first, without what was found on the
    /// servers.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>, StateError> {
        both!(self, db => db.snapshots())
    }

    // ---- tokens and the audit trail ----

    /// Record a new token, with the audit record of its creation.
    pub fn create_token(&self, token: &TokenRecord, audit: &AuditRecord) -> Result<(), StateError> {
        both!(self, db => db.create_token(token, audit))
    }

    /// Revoke a token, with the audit record of it.
    pub fn revoke_token(&self, name: &str, at_ms: i64, audit: &AuditRecord) -> Result<TokenRecord, StateError> {
        both!(self, db => db.revoke_token(name, at_ms, audit))
    }

    /// Note that a token was used.
    pub fn touch_token(&self, name: &str, at_ms: i64) -> Result<(), StateError> {
        both!(self, db => db.touch_token(name, at_ms))
    }

    /// Append to the audit trail.
    pub fn record_audit(&self, audit: &AuditRecord) -> Result<i64, StateError> {
        both!(self, db => db.record_audit(audit))
    }

    /// Every token.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StateError> {
        both!(self, db => db.tokens())
    }

    /// Audit records, as asked.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StateError> {
        both!(self, db => db.audit(q))
    }

    // ---- the notification outbox ----

    /// Queue a notification (or fold it into an open cooldown window).
    pub fn enqueue_delivery(&self, delivery: &NewDelivery) -> Result<(i64, bool), StateError> {
        both!(self, db => db.enqueue_delivery(delivery))
    }

    /// Record an attempt at a delivery.
    pub fn record_attempt(&self, id: i64, attempt: Attempt) -> Result<(), StateError> {
        both!(self, db => db.record_attempt(id, attempt))
    }

    /// Deliveries due now (on PostgreSQL, taken by this instance for a
    /// while, so no other sends them too).
    pub fn due_deliveries(&self, now_ms: i64, limit: i64) -> Result<Vec<Delivery>, StateError> {
        both!(self, db => db.due_deliveries(now_ms, limit))
    }

    /// When the next queued delivery is due.
    pub fn next_delivery_at(&self) -> Result<Option<i64>, StateError> {
        both!(self, db => db.next_delivery_at())
    }

    /// Deliveries, newest first, as filtered.
    pub fn deliveries(
        &self,
        run_id: Option<&str>,
        status: Option<DeliveryStatus>,
        limit: i64,
    ) -> Result<Vec<Delivery>, StateError> {
        both!(self, db => db.deliveries(run_id, status, limit))
    }

    // ---- schedules ----

    /// Record a new schedule.
    pub fn create_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StateError> {
        both!(self, db => db.create_schedule(schedule))
    }

    /// Replace a schedule.
    pub fn update_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StateError> {
        both!(self, db => db.update_schedule(schedule))
    }

    /// Delete a schedule.
    pub fn delete_schedule(&self, id: &str) -> Result<(), StateError> {
        both!(self, db => db.delete_schedule(id))
    }

    /// Claim a schedule's slot with the run it starts and its audit
    /// record: all, or nothing ([`StateError::SlotTaken`]).
    pub fn claim_slot(
        &self,
        slot: &SlotRecord,
        run: Option<&RunRecord>,
        audit: Option<&AuditRecord>,
    ) -> Result<(), StateError> {
        both!(self, db => db.claim_slot(slot, run, audit))
    }

    /// Every schedule.
    pub fn schedules(&self) -> Result<Vec<ScheduleRecord>, StateError> {
        both!(self, db => db.schedules())
    }

    /// One schedule.
    pub fn schedule(&self, id: &str) -> Result<ScheduleRecord, StateError> {
        both!(self, db => db.schedule(id))
    }

    /// A schedule's latest slots.
    pub fn slots(&self, schedule_id: &str, limit: i64) -> Result<Vec<SlotRecord>, StateError> {
        both!(self, db => db.slots(schedule_id, limit))
    }

    /// The last slot of a schedule acted on.
    pub fn last_fired(&self, schedule_id: &str) -> Result<Option<SlotRecord>, StateError> {
        both!(self, db => db.last_fired(schedule_id))
    }

    /// The slot that started a run, if a schedule did.
    pub fn slot_of_run(&self, run_id: &str) -> Result<Option<SlotRecord>, StateError> {
        both!(self, db => db.slot_of_run(run_id))
    }

    // ---- leases (PostgreSQL) ----

    fn shared(&self) -> Result<&Pg, StateError> {
        match &self.db {
            Db::Postgres(db) => Ok(db),
            Db::Sqlite(_) => Err(StateError::NotShared(self.shown.clone())),
        }
    }

    /// Take leases on up to `limit` runs no instance holds, so that at
    /// most `max_held` are held across instances; each is
    /// [held](Store::hold) by this store from here on.
    pub fn claim_runs(&self, ttl_ms: i64, max_held: usize, limit: usize) -> Result<Vec<Claim>, StateError> {
        let db = self.shared()?;
        let exclude: Vec<String> = lock(&self.holds).keys().cloned().collect();
        let claims = db.claim_runs(&self.owner, ttl_ms, max_held, limit, &exclude)?;
        let mut holds = lock(&self.holds);
        for c in &claims {
            holds.insert(c.id.clone(), Hold::Fence(c.fence));
        }
        Ok(claims)
    }

    /// Take the lease on one run (a retry or rollback of a finished run),
    /// unless another instance holds it ([`StateError::Held`]); held by
    /// this store from here on.
    pub fn claim_run(&self, id: &str, ttl_ms: i64) -> Result<Claim, StateError> {
        let claim = self.shared()?.claim_run(id, &self.owner, ttl_ms)?;
        lock(&self.holds).insert(claim.id.clone(), Hold::Fence(claim.fence));
        Ok(claim)
    }

    /// Extend every lease this store holds; the runs whose lease was lost
    /// are marked so (nothing more is written for them) and returned.
    pub fn renew_leases(&self, ttl_ms: i64) -> Result<Vec<String>, StateError> {
        let db = self.shared()?;
        let held: Vec<(String, i64)> = lock(&self.holds)
            .iter()
            .filter_map(|(id, h)| match h {
                Hold::Fence(f) => Some((id.clone(), *f)),
                Hold::Lost => None,
            })
            .collect();
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let kept = db.renew_leases(&self.owner, ttl_ms, &held)?;
        let mut lost = Vec::new();
        let mut holds = lock(&self.holds);
        for (id, _) in held {
            if !kept.contains(&id) {
                holds.insert(id.clone(), Hold::Lost);
                lost.push(id);
            }
        }
        Ok(lost)
    }

    /// Write nothing more for `id` (its lease is lost, or about to be:
    /// this instance could not renew it in time).
    pub fn lose(&self, id: &str) {
        lock(&self.holds).insert(id.to_string(), Hold::Lost);
    }

    /// The runs this store holds leases on (lost ones excluded).
    pub fn held(&self) -> Vec<String> {
        lock(&self.holds)
            .iter()
            .filter(|(_, h)| matches!(h, Hold::Fence(_)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Give up the lease on `id` (its execution here ended); other
    /// instances may take the run up at once if it is unfinished.
    pub fn release(&self, id: &str) -> Result<(), StateError> {
        let hold = lock(&self.holds).remove(id);
        match (&self.db, hold) {
            (Db::Postgres(db), Some(Hold::Fence(f))) => db.release_run(id, &self.owner, f),
            _ => Ok(()),
        }
    }

    /// Who holds a run's lease (always nobody on SQLite).
    pub fn lease(&self, id: &str) -> Result<Lease, StateError> {
        match &self.db {
            Db::Postgres(db) => db.lease(id),
            Db::Sqlite(db) => db.run(id).map(|_| Lease {
                owner: None,
                fence: 0,
                live: false,
            }),
        }
    }

    /// Ask the instance that holds `run_id` to do `action`.
    pub fn request_action(&self, run_id: &str, action: &str, at_ms: i64) -> Result<i64, StateError> {
        self.shared()?.request_action(run_id, action, at_ms)
    }

    /// Unanswered requests for the runs this store holds.
    pub fn pending_requests(&self) -> Result<Vec<ActionRequest>, StateError> {
        let ids = self.held();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.shared()?.pending_requests(&ids)
    }

    /// Answer a request.
    pub fn answer_request(&self, id: i64, answer: &ActionAnswer, at_ms: i64) -> Result<(), StateError> {
        self.shared()?.answer_request(id, answer, at_ms)
    }

    /// A request's answer, once given.
    pub fn request_answer(&self, id: i64) -> Result<Option<ActionAnswer>, StateError> {
        self.shared()?.request_answer(id)
    }

    /// Keep a chunk of a run's output stream in the database.
    pub fn append_log_chunk(&self, run_id: &str, chunk: &LogChunk) -> Result<(), StateError> {
        self.shared()?.append_log_chunk(run_id, chunk)
    }

    /// A run's output stream after line `after_seq`, in chunks.
    pub fn log_chunks_since(&self, run_id: &str, after_seq: i64, limit: i64) -> Result<Vec<LogChunk>, StateError> {
        self.shared()?.log_chunks_since(run_id, after_seq, limit)
    }

    /// The number of a run's last stored output line (0: none).
    pub fn last_log_seq(&self, run_id: &str) -> Result<i64, StateError> {
        self.shared()?.last_log_seq(run_id)
    }

    /// Changes made by any instance (PostgreSQL LISTEN/NOTIFY); None on
    /// SQLite, which one process owns.
    pub fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        match &self.db {
            Db::Postgres(db) => Some(db.subscribe()),
            Db::Sqlite(_) => None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `host-pid-random`: unique per process start.
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{host}-{}-{:06x}", std::process::id(), h.finish() & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_files_sqlite_or_postgres_urls_and_nothing_else() {
        assert_eq!(
            Location::parse("a/state.db").expect("parses"),
            Location::Sqlite("a/state.db".into())
        );
        assert_eq!(
            Location::parse("sqlite:///x.db").expect("parses"),
            Location::Sqlite("/x.db".into())
        );
        assert_eq!(
            Location::parse("postgres://u:pw@h:5/db").expect("parses"),
            Location::Postgres("postgres://u:pw@h:5/db".into())
        );
        let e = Location::parse("mysql://u:secret@h/db")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("mysql://") && !e.contains("secret"), "{e}");
        let e = parse_location("postgresql://u:secret@h/db")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("drover serve") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(redact("postgres://u:pw@h:5/db?x=1"), "postgres://u:***@h:5/db?x=1");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
