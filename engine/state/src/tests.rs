use std::os::unix::process::CommandExt;
use std::path::Path;

use super::*;

fn record(id: &str) -> RunRecord {
    RunRecord {
        id: id.into(),
        workflow: "w".into(),
        file: "w.k".into(),
        status: RunStatus::Queued,
        created_at_ms: 1,
        updated_at_ms: 1,
        inputs: serde_json::json!({"x": 1}),
    }
}

fn tempdir() -> Result<tempfile::TempDir, StateError> {
    tempfile::tempdir().map_err(|e| StateError::Dir {
        path: "tmp".into(),
        source: e,
    })
}

fn finished(status: RunStatus) -> Event {
    Event::RunFinished { status, reason: None }
}

#[test]
fn the_store_and_the_directory_it_makes_are_the_owners_alone() -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir()?;
    let path = dir.path().join("made/state.db");
    let s = Store::open(&path)?;
    s.create_run(&record("r1"))?;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode(&dir.path().join("made")), 0o700);
    let mut checked = 0;
    for name in ["state.db", "state.db-wal", "state.db-shm", "state.db.lock"] {
        let file = dir.path().join("made").join(name);
        if file.exists() {
            assert_eq!(mode(&file), 0o600, "{name}");
            checked += 1;
        }
    }
    assert!(checked >= 3, "the database, its WAL and its lock: {checked}");
    Ok(())
}

#[test]
fn journal_survives_reopening_in_order() -> Result<(), StateError> {
    let dir = tempdir()?;
    let path = dir.path().join("nested/state.db");
    {
        let s = Store::open(&path)?;
        s.create_run(&record("r1"))?;
        let started = Event::TaskStarted {
            attempt: 1,
            idempotency_key: "r1:t".into(),
        };
        let ok = Event::TaskSucceeded {
            attempt: 1,
            duration_ms: 5,
            found: BTreeMap::new(),
        };
        assert_eq!(s.append("r1", &[(10, Some("t"), &started), (11, Some("t"), &ok)])?, 2);
        assert_eq!(s.append("r1", &[(12, None, &finished(RunStatus::Succeeded))])?, 3);
    }
    let s = Store::open(&path)?;
    let j = s.journal("r1")?;
    assert_eq!(j.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(j[0].node.as_deref(), Some("t"));
    assert!(matches!(j[1].event, Event::TaskSucceeded { duration_ms: 5, .. }));
    let r = s.run("r1")?;
    assert_eq!(r.status, RunStatus::Succeeded);
    assert_eq!(r.updated_at_ms, 12);
    assert_eq!(r.inputs, serde_json::json!({"x": 1}));
    assert!(matches!(s.run("nope"), Err(StateError::UnknownRun(_))));
    Ok(())
}

#[test]
fn the_status_column_is_the_fold_of_the_journal() -> Result<(), StateError> {
    let s = Store::open(Path::new(":memory:"))?;
    s.create_run(&record("r"))?;
    let steps: [(Event, RunStatus); 8] = [
        (Event::RunStarted { resumed: false }, RunStatus::Running),
        (Event::RunPaused, RunStatus::Paused),
        (Event::RunUnpaused, RunStatus::Running),
        (Event::CancelRequested, RunStatus::Running),
        (finished(RunStatus::Aborted), RunStatus::Aborted),
        (Event::RunStarted { resumed: true }, RunStatus::Running),
        (
            Event::RollbackStarted {
                reason: "x".into(),
                by_hand: false,
            },
            RunStatus::RollingBack,
        ),
        (finished(RunStatus::RolledBack), RunStatus::RolledBack),
    ];
    for (i, (event, want)) in steps.iter().enumerate() {
        s.append("r", &[(100 + i as i64, None, event)])?;
        assert_eq!(s.run("r")?.status, *want, "after {event:?}");
    }
    // Appending to a run that does not exist changes nothing.
    assert!(matches!(
        s.append("ghost", &[(1, None, &Event::RunPaused)]),
        Err(StateError::UnknownRun(_))
    ));
    assert!(s.journal("ghost")?.is_empty());
    Ok(())
}

#[test]
fn a_second_owner_is_refused_naming_the_holder_and_readers_still_read() -> Result<(), StateError> {
    let dir = tempdir()?;
    let path = dir.path().join("state.db");
    let owner = Store::open(&path)?;
    owner.create_run(&record("r"))?;
    match Store::open(&path) {
        Err(StateError::Locked { path: p, holder }) => {
            assert_eq!(p, path);
            assert!(holder.contains(&format!("pid {}", std::process::id())), "{holder}");
        }
        other => panic!("a second owner must be refused, got {other:?}"),
    }
    let reader = Store::open_read_only(&path)?;
    assert_eq!(reader.runs()?.len(), 1);
    assert!(matches!(
        reader.append("r", &[(1, None, &Event::RunPaused)]),
        Err(StateError::ReadOnly(_))
    ));
    drop(owner);
    // The lock goes with its owner.
    let again = Store::open(&path)?;
    assert_eq!(again.run("r")?.status, RunStatus::Queued);
    Ok(())
}

#[test]
fn the_lock_is_released_when_its_process_dies() -> Result<(), StateError> {
    let dir = tempdir()?;
    let path = dir.path().join("state.db");
    // A child process (flock holder) killed with SIGKILL leaves the lock
    // file behind but not the lock.
    // -o: flock itself holds the lock, not the command it runs.
    let mut child = std::process::Command::new("flock")
        .arg("-o")
        .arg(format!("{}.lock", path.display()))
        .args(["sleep", "60"])
        .process_group(0)
        .spawn()
        .map_err(|source| StateError::Lock {
            path: path.clone(),
            source,
        })?;
    // Wait until the child holds it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(&path) {
            Err(StateError::Locked { .. }) => break,
            Ok(s) => {
                drop(s);
                assert!(std::time::Instant::now() < deadline, "flock never took the lock");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
    let group = format!("-{}", child.id());
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &group])
        .status();
    let _ = child.wait();
    // flock's own child (killed with it, but not waited for here) may
    // still be exiting with a copy of the descriptor for a moment: the
    // lock goes with the last of them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(&path) {
            Ok(_) => return Ok(()),
            Err(StateError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn urls_of_other_databases_are_refused_not_taken_for_files() {
    // Commands that run in this process refuse a PostgreSQL store, saying
    // which command uses one, and never show its password.
    let msg = parse_location("postgres://drover:hunter2@127.0.0.1:5432/postgres")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("drover serve") && !msg.contains("hunter2"), "{msg}");
    let msg = parse_location("mysql://x/y")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("mysql:// is not supported"), "{msg}");
    assert_eq!(
        parse_location("sqlite:///var/lib/d.db").ok(),
        Some("/var/lib/d.db".into())
    );
    assert_eq!(parse_location("state/d.db").ok(), Some("state/d.db".into()));
    assert_eq!(parse_location("./a:b.db").ok(), Some("./a:b.db".into()));
}

#[test]
fn an_unknown_stored_status_is_an_error_not_running() -> Result<(), StateError> {
    let dir = tempdir()?;
    let path = dir.path().join("state.db");
    {
        let s = Store::open(&path)?;
        s.create_run(&record("r"))?;
    }
    let conn = rusqlite::Connection::open(&path)?;
    conn.execute("UPDATE runs SET status = 'exploded' WHERE id = 'r'", [])?;
    drop(conn);
    let s = Store::open(&path)?;
    match s.run("r") {
        Err(StateError::UnknownStatus { run, value }) => {
            assert_eq!((run.as_str(), value.as_str()), ("r", "exploded"));
        }
        other => panic!("expected an unknown status error, got {other:?}"),
    }
    assert!(matches!(s.runs(), Err(StateError::UnknownStatus { .. })));
    assert_eq!(RunStatus::parse("running"), Some(RunStatus::Running));
    assert_eq!(RunStatus::parse("exploded"), None);
    Ok(())
}

#[test]
fn only_final_runs_are_deleted_with_their_journals() -> Result<(), StateError> {
    let s = Store::open(Path::new(":memory:"))?;
    for (id, end) in [
        ("done", Some(RunStatus::Succeeded)),
        ("aborted", Some(RunStatus::Aborted)),
        ("running", None),
    ] {
        s.create_run(&record(id))?;
        s.append(id, &[(1, None, &Event::RunStarted { resumed: false })])?;
        if let Some(st) = end {
            s.append(id, &[(2, None, &finished(st))])?;
        }
    }
    let ids = ["done", "aborted", "running", "ghost"].map(String::from);
    assert_eq!(s.delete_final(&ids)?, ["done"]);
    assert!(matches!(s.run("done"), Err(StateError::UnknownRun(_))));
    assert!(s.journal("done")?.is_empty());
    assert_eq!(s.run("aborted")?.status, RunStatus::Aborted);
    assert_eq!(s.journal("running")?.len(), 1);
    Ok(())
}

#[test]
fn concurrent_appends_from_many_threads_keep_every_journal_whole() -> Result<(), StateError> {
    let s = std::sync::Arc::new(Store::open(Path::new(":memory:"))?);
    let runs = 8;
    let per_run = 200;
    for r in 0..runs {
        s.create_run(&record(&format!("r{r}")))?;
    }
    let threads: Vec<_> = (0..runs)
        .map(|r| {
            let s = s.clone();
            std::thread::spawn(move || -> Result<(), StateError> {
                for i in 0..per_run {
                    let node = format!("t{i}");
                    s.append(&format!("r{r}"), &[(i, Some(node.as_str()), &Event::GateOpened)])?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| StateError::Writer("a thread panicked".into()))??;
    }
    for r in 0..runs {
        let seqs: Vec<i64> = s.journal(&format!("r{r}"))?.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=per_run).collect::<Vec<_>>());
    }
    Ok(())
}

#[test]
fn events_round_trip_through_their_disk_format() {
    let e = Event::TaskFailed {
        attempt: 2,
        duration_ms: 9,
        error: "exit 3".into(),
        kind: FailureKind::Permanent,
        will_retry: false,
        found: Default::default(),
    };
    let s = serde_json::to_string(&e).unwrap_or_default();
    assert_eq!(
        s,
        r#"{"event":"task_failed","attempt":2,"duration_ms":9,"error":"exit 3","kind":"permanent","will_retry":false}"#
    );
    assert_eq!(serde_json::from_str::<Event>(&s).ok(), Some(e));
    // Journals written before failures had a kind read as transient.
    let old = r#"{"event":"task_failed","attempt":1,"duration_ms":1,"error":"x","will_retry":true}"#;
    assert!(matches!(
        serde_json::from_str::<Event>(old),
        Ok(Event::TaskFailed {
            kind: FailureKind::Transient,
            ..
        })
    ));
}

fn snap(id: &str, name: Option<&str>, at: i64) -> SnapshotRecord {
    SnapshotRecord {
        id: id.into(),
        name: name.map(str::to_string),
        created_at_ms: at,
        file: "inv.k".into(),
        selector: serde_json::json!({"tags": ["web"]}),
        spec: serde_json::json!({"files": ["~/app.conf"], "commands": []}),
        servers: serde_json::json!([{"server": "web-1", "files": {}}]),
    }
}

#[test]
fn snapshots_are_found_by_id_or_name_listed_newest_first_and_names_are_not_reused() -> Result<(), StateError> {
    let dir = tempdir()?;
    let path = dir.path().join("state.db");
    let s = Store::open(&path)?;
    s.save_snapshot(&snap("20250101-000000-0001", Some("before"), 10))?;
    s.save_snapshot(&snap("20250101-000001-0002", None, 20))?;
    assert_eq!(s.snapshot("before")?, snap("20250101-000000-0001", Some("before"), 10));
    assert_eq!(s.snapshot("20250101-000001-0002")?.servers[0]["server"], "web-1");
    assert!(matches!(s.snapshot("after"), Err(StateError::UnknownSnapshot(n)) if n == "after"));
    // A second snapshot of a taken name is refused, and nothing of it kept.
    assert!(matches!(
        s.save_snapshot(&snap("20250101-000002-0003", Some("before"), 30)),
        Err(StateError::SnapshotExists(n)) if n == "before"
    ));
    assert!(matches!(
        s.snapshot("20250101-000002-0003"),
        Err(StateError::UnknownSnapshot(_))
    ));
    // The listing, newest first, leaves out what the servers held.
    let listed = s.snapshots()?;
    let ids: Vec<&str> = listed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["20250101-000001-0002", "20250101-000000-0001"]);
    assert!(
        listed
            .iter()
            .all(|r| r.servers.is_null() && r.spec["files"][0] == "~/app.conf")
    );
    drop(s);
    // Readers see them; they survive reopening.
    let reader = Store::open_read_only(&path)?;
    assert_eq!(reader.snapshot("before")?.created_at_ms, 10);
    assert!(matches!(
        reader.save_snapshot(&snap("x", None, 1)),
        Err(StateError::ReadOnly(_))
    ));
    Ok(())
}

#[test]
fn a_database_made_before_snapshots_existed_reads_as_having_none() -> Result<(), StateError> {
    let dir = tempdir()?;
    let path = dir.path().join("old.db");
    {
        // The tables of a store from before snapshots, nothing else.
        let conn = rusqlite::Connection::open(&path)?;
        conn.execute_batch("CREATE TABLE runs (id TEXT PRIMARY KEY, workflow TEXT NOT NULL, file TEXT NOT NULL, status TEXT NOT NULL, created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL, inputs TEXT NOT NULL);")?;
    }
    let reader = Store::open_read_only(&path)?;
    assert!(reader.snapshots()?.is_empty());
    assert!(matches!(reader.snapshot("x"), Err(StateError::UnknownSnapshot(_))));
    drop(reader);
    // Its owner adds the table.
    let owner = Store::open(&path)?;
    owner.save_snapshot(&snap("s1", Some("n"), 1))?;
    assert_eq!(owner.snapshots()?.len(), 1);
    Ok(())
}
