//! The SQLite store: one owner, one writer thread, many readers.
//!
//! - **One owner.** [`Sqlite::open`] takes an exclusive lock on
//!   `<database>.lock` (held until the store is dropped, released by the
//!   kernel if the process dies) and writes who holds it there; a second
//!   orchestrator or `drover run` on the same file is refused, naming the
//!   holder. [`Sqlite::open_read_only`] (listings) takes no lock and cannot
//!   write.
//! - **One writer.** Every write goes to a dedicated thread that owns the
//!   write connection (WAL, `synchronous=FULL`). Requests that arrive
//!   while it commits are committed together, one fsync for all (each in
//!   its own savepoint, so one request's error does not fail the others).
//!   Callers block until their request is durable: async callers call the
//!   store from `spawn_blocking`, never from a runtime worker.
//! - **The status column is derived.** An append updates `runs.status` in
//!   the same transaction, as [`RunStatus::after`] folds the new entries:
//!   the column can never disagree with the journal.
//! - **Readers** use their own connections (WAL lets them read while the
//!   writer commits).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::{Entry, Event, RunRecord, RunStatus, SnapshotRecord, StateError};

mod access;
pub(crate) mod outbox;
mod schedules;

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

/// Snapshots (`drover snapshot`): added to a database made before they
/// existed by `CREATE ... IF NOT EXISTS`, like the tokens. A reader of
/// such a database (read-only, so it cannot add the table) sees no
/// snapshots.
const SNAPSHOT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE,
    created_at_ms INTEGER NOT NULL,
    file TEXT NOT NULL,
    selector TEXT NOT NULL,
    spec TEXT NOT NULL,
    servers TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_by_time ON snapshots (created_at_ms, id);
";

/// Read connections kept open for reuse.
const IDLE_READERS: usize = 4;

/// A write, sent to the writer thread with where to answer.
enum Request {
    Create(Box<RunRecord>, mpsc::SyncSender<Result<(), StateError>>),
    Append {
        run_id: String,
        events: Vec<(i64, Option<String>, Event)>,
        reply: mpsc::SyncSender<Result<i64, StateError>>,
    },
    Delete {
        ids: Vec<String>,
        reply: mpsc::SyncSender<Result<Vec<String>, StateError>>,
    },
    /// A new snapshot.
    Snapshot(Box<SnapshotRecord>, mpsc::SyncSender<Result<(), StateError>>),
    /// Tokens and the audit trail (`access`).
    Access(access::Write, mpsc::SyncSender<Result<access::Done, StateError>>),
    /// The notification outbox (`outbox`).
    Outbox(outbox::Write, mpsc::SyncSender<Result<outbox::Done, StateError>>),
    /// Schedules and their slots (`schedules`).
    Schedule(schedules::Write, mpsc::SyncSender<Result<(), StateError>>),
}

/// The writer thread and the way to it. Dropping it ends the thread
/// after the requests already sent, and waits for that.
#[derive(Debug)]
struct Writer {
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Request::Create(..) => "Create",
            Request::Append { .. } => "Append",
            Request::Delete { .. } => "Delete",
            Request::Snapshot(..) => "Snapshot",
            Request::Access(w, _) => w.kind(),
            Request::Outbox(..) => "Outbox",
            Request::Schedule(w, _) => w.kind(),
        })
    }
}

/// The journal of runs on one SQLite database.
#[derive(Debug)]
pub(crate) struct Sqlite {
    path: PathBuf,
    /// None for a read-only store.
    writer: Option<Writer>,
    readers: Mutex<Vec<Connection>>,
    /// Held while the store is open: the owner's lock.
    _lock: Option<std::fs::File>,
    /// A temporary database (`:memory:`) is removed with the store.
    _temp: Option<tempfile_dir::TempDir>,
}

impl Sqlite {
    /// Open (creating if needed) the store at `path` as its owner: no
    /// other process can open it so until this store is dropped.
    /// `:memory:` makes a private temporary store.
    pub fn open(path: &Path) -> Result<Sqlite, StateError> {
        let (path, temp) = if path == Path::new(":memory:") {
            let dir = tempfile_dir::TempDir::new().map_err(|source| StateError::Dir {
                path: std::env::temp_dir(),
                source,
            })?;
            (dir.path().join("state.db"), Some(dir))
        } else {
            (path.to_path_buf(), None)
        };
        // The journal holds what ran where (and the server's tokens): the
        // directory made here is the owner's alone (0700), the database
        // and its companions 0600 (SQLite gives -wal and -shm the mode of
        // the database file).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StateError::Dir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let lock = lock(&path)?;
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|source| StateError::Dir {
                    path: path.clone(),
                    source,
                })?;
        }
        let conn = open_conn(&path, false)?;
        conn.execute_batch(SCHEMA)
            .and_then(|()| conn.execute_batch(access::SCHEMA))
            .and_then(|()| conn.execute_batch(SNAPSHOT_SCHEMA))
            .and_then(|()| conn.execute_batch(outbox::SCHEMA))
            .and_then(|()| conn.execute_batch(schedules::SCHEMA))
            .map_err(|source| StateError::Open {
                path: path.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("drover-journal".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(|source| StateError::Lock {
                path: path.clone(),
                source,
            })?;
        Ok(Sqlite {
            path,
            writer: Some(Writer {
                requests: Some(tx),
                thread: Some(thread),
            }),
            readers: Mutex::new(Vec::new()),
            _lock: Some(lock),
            _temp: temp,
        })
    }

    /// Open the store at `path` to read it (listings, status) while
    /// another process may own it. It must exist.
    pub fn open_read_only(path: &Path) -> Result<Sqlite, StateError> {
        let store = Sqlite {
            path: path.to_path_buf(),
            writer: None,
            readers: Mutex::new(Vec::new()),
            _lock: None,
            _temp: None,
        };
        // Fails now, naming the file, rather than at the first read.
        let conn = store.reader()?;
        store.give_back(conn);
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Send a request to the writer and wait for its answer.
    fn write<T>(&self, make: impl FnOnce(mpsc::SyncSender<Result<T, StateError>>) -> Request) -> Result<T, StateError> {
        let Some(requests) = self.writer.as_ref().and_then(|w| w.requests.as_ref()) else {
            return Err(StateError::ReadOnly(self.path.clone()));
        };
        let (tx, rx) = mpsc::sync_channel(1);
        requests
            .send(make(tx))
            .map_err(|_| StateError::Writer("it is gone".into()))?;
        rx.recv()
            .map_err(|_| StateError::Writer("it ended without answering".into()))?
    }

    /// Record a new run.
    pub fn create_run(&self, run: &RunRecord) -> Result<(), StateError> {
        let run = Box::new(run.clone());
        self.write(|reply| Request::Create(run, reply))
    }

    /// Append events to a run's journal, durably, and update its status
    /// as they say, in one transaction. Returns the sequence number of the
    /// last one.
    pub fn append(&self, run_id: &str, events: &[(i64, Option<&str>, &Event)]) -> Result<i64, StateError> {
        let events = events
            .iter()
            .map(|(at, node, e)| (*at, node.map(str::to_string), (*e).clone()))
            .collect();
        self.write(|reply| Request::Append {
            run_id: run_id.to_string(),
            events,
            reply,
        })
    }

    /// Delete runs and their journals, each only if its status is final
    /// (checked in the deleting transaction: a run retried meanwhile
    /// stays). Returns the ids deleted.
    pub fn delete_final(&self, ids: &[String]) -> Result<Vec<String>, StateError> {
        let ids = ids.to_vec();
        self.write(|reply| Request::Delete { ids, reply })
    }

    fn reader(&self) -> Result<Connection, StateError> {
        if let Some(c) = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        open_conn(&self.path, true)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StateError>) -> Result<T, StateError> {
        let conn = self.reader()?;
        let result = f(&conn);
        self.give_back(conn);
        result
    }

    /// One run.
    pub fn run(&self, run_id: &str) -> Result<RunRecord, StateError> {
        self.read(|conn| {
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
                status: status_of(&id, &status)?,
                id,
                workflow,
                file,
                created_at_ms: created,
                updated_at_ms: updated,
                inputs: serde_json::from_str(&inputs)?,
            })
        })
    }

    /// Every run, newest first, without their inputs.
    pub fn runs(&self) -> Result<Vec<RunRecord>, StateError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, workflow, file, status, created_at_ms, updated_at_ms FROM runs ORDER BY created_at_ms DESC, id DESC",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, workflow, file, status, created, updated) = row?;
                out.push(RunRecord {
                    status: status_of(&id, &status)?,
                    id,
                    workflow,
                    file,
                    created_at_ms: created,
                    updated_at_ms: updated,
                    inputs: serde_json::Value::Null,
                });
            }
            Ok(out)
        })
    }

    /// A run's journal, in order.
    pub fn journal(&self, run_id: &str) -> Result<Vec<Entry>, StateError> {
        self.journal_since(run_id, 0, i64::MAX)
    }

    /// At most `limit` entries of a run's journal after `after_seq`, in
    /// order: what a stream resuming from an event id reads.
    pub fn journal_since(&self, run_id: &str, after_seq: i64, limit: i64) -> Result<Vec<Entry>, StateError> {
        self.read(|conn| {
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
        })
    }
}

/// The columns of a snapshot, in [`snapshot_row`]'s order.
const SNAPSHOT_COLUMNS: &str = "id, name, created_at_ms, file, selector, spec, servers";

/// A stored snapshot from a row of [`SNAPSHOT_COLUMNS`] (`servers` may be
/// a constant `'null'`).
fn snapshot_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(SnapshotRecord, [String; 3])> {
    Ok((
        SnapshotRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            created_at_ms: r.get(2)?,
            file: r.get(3)?,
            selector: serde_json::Value::Null,
            spec: serde_json::Value::Null,
            servers: serde_json::Value::Null,
        },
        [r.get(4)?, r.get(5)?, r.get(6)?],
    ))
}

/// The record with its JSON columns decoded.
fn snapshot_decoded(
    (mut rec, [selector, spec, servers]): (SnapshotRecord, [String; 3]),
) -> Result<SnapshotRecord, StateError> {
    rec.selector = serde_json::from_str(&selector)?;
    rec.spec = serde_json::from_str(&spec)?;
    rec.servers = serde_json::from_str(&servers)?;
    Ok(rec)
}

/// Whether the database has the snapshots table (a database made by an
/// older drover and only read since has not).
fn has_snapshots(conn: &Connection) -> Result<bool, StateError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'snapshots'")?
        .query_row([], |_| Ok(()))
        .optional()?
        .is_some())
}

impl Sqlite {
    /// Record a snapshot. Its name, if it has one, must be new: a second
    /// snapshot of an existing name is refused
    /// ([`StateError::SnapshotExists`]), so a name always means the one
    /// snapshot it was first given to.
    pub fn save_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), StateError> {
        let snapshot = Box::new(snapshot.clone());
        self.write(|reply| Request::Snapshot(snapshot, reply))
    }

    /// The snapshot whose id, or else whose name, is `id_or_name`.
    pub fn snapshot(&self, id_or_name: &str) -> Result<SnapshotRecord, StateError> {
        self.read(|conn| {
            if !has_snapshots(conn)? {
                return Err(StateError::UnknownSnapshot(id_or_name.to_string()));
            }
            // An id first: a name cannot hide the snapshot with that id.
            for column in ["id", "name"] {
                let row = conn
                    .prepare_cached(&format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE {column} = ?1"))?
                    .query_row(params![id_or_name], snapshot_row)
                    .optional()?;
                if let Some(row) = row {
                    return snapshot_decoded(row);
                }
            }
            Err(StateError::UnknownSnapshot(id_or_name.to_string()))
        })
    }

    /// Every snapshot, newest first, without what was found on the
    /// servers (`servers` is `Null`: [`Store::snapshot`] reads one whole).
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>, StateError> {
        self.read(|conn| {
            if !has_snapshots(conn)? {
                return Ok(Vec::new());
            }
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, created_at_ms, file, selector, spec, 'null' FROM snapshots \
                 ORDER BY created_at_ms DESC, id DESC",
            )?;
            let rows = stmt.query_map([], snapshot_row)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(snapshot_decoded(row?)?);
            }
            Ok(out)
        })
    }
}

fn save_snapshot(conn: &Connection, s: &SnapshotRecord) -> Result<(), StateError> {
    if let Some(name) = &s.name {
        let taken: Option<String> = conn
            .prepare_cached("SELECT id FROM snapshots WHERE name = ?1")?
            .query_row(params![name], |r| r.get(0))
            .optional()?;
        if taken.is_some() {
            return Err(StateError::SnapshotExists(name.clone()));
        }
    }
    conn.prepare_cached(
        "INSERT INTO snapshots (id, name, created_at_ms, file, selector, spec, servers) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        s.id,
        s.name,
        s.created_at_ms,
        s.file,
        serde_json::to_string(&s.selector)?,
        serde_json::to_string(&s.spec)?,
        serde_json::to_string(&s.servers)?
    ])?;
    Ok(())
}

fn status_of(run: &str, value: &str) -> Result<RunStatus, StateError> {
    RunStatus::parse(value).ok_or_else(|| StateError::UnknownStatus {
        run: run.to_string(),
        value: value.to_string(),
    })
}

fn open_conn(path: &Path, read_only: bool) -> Result<Connection, StateError> {
    let open_err = |source| StateError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = if read_only {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(open_err)?
    } else {
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(open_err)?;
    Ok(conn)
}

/// Takes the owner's lock of the store at `path`, recording who holds it.
fn lock(path: &Path) -> Result<std::fs::File, StateError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let lock_path = {
        let mut p = path.as_os_str().to_owned();
        p.push(".lock");
        PathBuf::from(p)
    };
    let lock_err = |source| StateError::Lock {
        path: lock_path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StateError::Locked {
                path: path.to_path_buf(),
                holder: if holder.is_empty() {
                    "another process".to_string()
                } else {
                    holder.to_string()
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    let command = std::fs::read("/proc/self/cmdline")
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let who = format!(
        "pid {} ({command}), holding it since unix time {since}\n",
        std::process::id()
    );
    file.set_len(0).map_err(lock_err)?;
    file.rewind().map_err(lock_err)?;
    file.write_all(who.as_bytes()).map_err(lock_err)?;
    Ok(file)
}

/// How to answer one request once its batch's commit is known (the
/// commit's error, if it failed).
type Answer = Box<dyn FnOnce(Option<&StateError>)>;

/// The writer thread: takes requests, commits what arrived together in
/// one transaction, answers each.
fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        let outcome = (|| -> Result<(), rusqlite::Error> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for request in batch {
                answers.push(apply(&tx, request));
            }
            tx.commit()
        })();
        // A failed commit fails every request of the batch, even those
        // whose own statements succeeded: none of them is durable.
        let failed = outcome.err().map(StateError::from);
        for answer in answers {
            answer(failed.as_ref());
        }
    }
}

/// Carries out one request inside the batch's transaction, in a savepoint
/// of its own; returns how to answer it once the commit is known.
fn apply(tx: &rusqlite::Transaction<'_>, request: Request) -> Answer {
    fn answer<T: Send + 'static>(
        reply: mpsc::SyncSender<Result<T, StateError>>,
        result: Result<T, StateError>,
    ) -> Answer {
        Box::new(move |commit: Option<&StateError>| {
            let result = match (result, commit) {
                (Ok(_), Some(e)) if e.is_disk_full() => Err(StateError::DiskFull(e.to_string())),
                (Ok(_), Some(e)) => Err(StateError::Writer(format!("the commit failed: {e}"))),
                (Err(e), _) if e.is_disk_full() => Err(StateError::DiskFull(e.to_string())),
                (r, _) => r,
            };
            let _ = reply.send(result);
        })
    }
    match request {
        Request::Create(run, reply) => answer(reply, in_savepoint(tx, |sp| create(sp, &run))),
        Request::Append { run_id, events, reply } => answer(reply, in_savepoint(tx, |sp| append(sp, &run_id, &events))),
        Request::Delete { ids, reply } => answer(reply, in_savepoint(tx, |sp| delete_final(sp, &ids))),
        Request::Snapshot(snap, reply) => answer(reply, in_savepoint(tx, |sp| save_snapshot(sp, &snap))),
        Request::Access(write, reply) => answer(reply, in_savepoint(tx, |sp| access::apply(sp, &write))),
        Request::Outbox(write, reply) => answer(reply, in_savepoint(tx, |sp| outbox::apply(sp, &write))),
        Request::Schedule(write, reply) => answer(reply, in_savepoint(tx, |sp| schedules::apply(sp, &write))),
    }
}

fn in_savepoint<T>(
    tx: &rusqlite::Transaction<'_>,
    f: impl FnOnce(&Connection) -> Result<T, StateError>,
) -> Result<T, StateError> {
    tx.execute_batch("SAVEPOINT request")?;
    match f(tx) {
        Ok(v) => {
            tx.execute_batch("RELEASE request")?;
            Ok(v)
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO request; RELEASE request")?;
            Err(e)
        }
    }
}

fn create(conn: &Connection, run: &RunRecord) -> Result<(), StateError> {
    conn.prepare_cached(
        "INSERT INTO runs (id, workflow, file, status, created_at_ms, updated_at_ms, inputs) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        run.id,
        run.workflow,
        run.file,
        run.status.as_str(),
        run.created_at_ms,
        run.updated_at_ms,
        serde_json::to_string(&run.inputs)?
    ])?;
    Ok(())
}

fn append(conn: &Connection, run_id: &str, events: &[(i64, Option<String>, Event)]) -> Result<i64, StateError> {
    let current: Option<String> = conn
        .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
        .query_row(params![run_id], |r| r.get(0))
        .optional()?;
    let Some(current) = current else {
        return Err(StateError::UnknownRun(run_id.to_string()));
    };
    let mut status = status_of(run_id, &current)?;
    let mut seq: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM journal WHERE run_id = ?1")?
        .query_row(params![run_id], |r| r.get(0))?;
    let mut stmt =
        conn.prepare_cached("INSERT INTO journal (run_id, seq, at_ms, node, event) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    let mut changed_at = None;
    for (at_ms, node, event) in events {
        seq += 1;
        stmt.execute(params![run_id, seq, at_ms, node, serde_json::to_string(event)?])?;
        let next = status.after(event);
        if next != status || matches!(event, Event::RunStarted { .. } | Event::RunFinished { .. }) {
            changed_at = Some(*at_ms);
        }
        status = next;
    }
    if let Some(at) = changed_at {
        conn.prepare_cached("UPDATE runs SET status = ?2, updated_at_ms = ?3 WHERE id = ?1")?
            .execute(params![run_id, status.as_str(), at])?;
    }
    Ok(seq)
}

fn delete_final(conn: &Connection, ids: &[String]) -> Result<Vec<String>, StateError> {
    let finals: Vec<&str> = RunStatus::ALL
        .into_iter()
        .filter(|s| s.is_final())
        .map(RunStatus::as_str)
        .collect();
    let mut deleted = Vec::new();
    for id in ids {
        let status: Option<String> = conn
            .prepare_cached("SELECT status FROM runs WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        if status.is_some_and(|s| finals.contains(&s.as_str())) {
            conn.prepare_cached("DELETE FROM journal WHERE run_id = ?1")?
                .execute(params![id])?;
            conn.prepare_cached("DELETE FROM runs WHERE id = ?1")?
                .execute(params![id])?;
            // What its notification targets were told goes with it
            // (events of the server itself have no run, and stay).
            conn.prepare_cached("DELETE FROM outbox WHERE run_id = ?1")?
                .execute(params![id])?;
            deleted.push(id.clone());
        }
    }
    Ok(deleted)
}

/// A private temporary directory, removed on drop (for `:memory:` stores:
/// the writer and the readers need one database they can all open).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub(super) struct TempDir(PathBuf);

    impl TempDir {
        pub(super) fn new() -> std::io::Result<TempDir> {
            use std::os::unix::fs::DirBuilderExt;
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("drover-state-{}-{n}", std::process::id()));
            std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
            Ok(TempDir(dir))
        }

        pub(super) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
