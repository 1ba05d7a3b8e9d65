//! `kill -9` at 20 or more random points of one run on real SSH hosts,
//! each followed by `drover run --resume`: the journal proves that the run
//! completes and that no task starts again after it succeeded, and what the
//! scripts recorded on the hosts proves the same from the other side.
//!
//! The hosts are OpenSSH sshd processes the test starts itself
//! (drover-testkit), reached as the non-root user `fleet` on port 2222 with
//! sudo, through the `static` provider; the taskservs are a chain of four
//! written here, each sleeping a little and recording every execution in
//! the host's own `/tmp`. The kill points are drawn from a seed, printed
//! first; `CRASH_POINTS_SEED=<n>` replays a schedule.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::repo;
use drover_state::{Entry, Event, RunStatus, Store};
use drover_testkit::{Sudo, TestFleet};

const HOSTS: usize = 5;
/// A chain: each requires the one before it.
const TASKSERVS: [&str; 4] = ["ts1", "ts2", "ts3", "ts4"];
const INSTALL_SECONDS: &str = "0.4";
const MAX_PARALLEL: usize = 3;
/// One create (the static provider's probe) per host, one install per
/// (taskserv, host).
const TASKS: usize = HOSTS * (1 + TASKSERVS.len());
/// Kill points scheduled; at least 20 must land before the run finishes. Some
/// fall after its end on a fast or a loaded machine (seen: 19 of 24), so more
/// are scheduled than required.
const KILLS: usize = 30;
/// No single wait of the test (for a trigger, for the last process) lasts
/// longer: beyond it the run is stuck, which is a finding.
const STUCK: Duration = Duration::from_secs(60);
/// Where the scripts record on each host (the host's own /tmp).
const HOST_DIR: &str = "/tmp/crash-points";

/// splitmix64: the kill points are reproducible from the printed seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..=max.
    fn upto(&mut self, max: u64) -> u64 {
        self.next() % (max + 1)
    }
}

fn seed() -> u64 {
    match std::env::var("CRASH_POINTS_SEED") {
        Ok(s) => s.trim().parse().expect("CRASH_POINTS_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// When, once the process under test has journaled its own run_started and
/// at least `after_succeeded` tasks have succeeded, it is killed.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// At once (at a resume whose threshold is already reached: right after
    /// the resume started).
    Now,
    /// The moment the next journal commit is seen: between a turn's commit
    /// and its effects, or in the middle of the following one.
    NextCommit,
    /// After a random delay.
    Delay(u64),
}

#[derive(Debug, Clone, Copy)]
struct KillPoint {
    after_succeeded: usize,
    trigger: Trigger,
}

/// The expected time left of the run once `succeeded` tasks succeeded,
/// in ms (installs of 0.4 s plus ~0.15 s of SSH around each, MAX_PARALLEL
/// at a time).
fn expected_remaining_ms(succeeded: usize) -> u64 {
    let left = (TASKS - succeeded.min(TASKS)) as u64;
    left * 550 / MAX_PARALLEL as u64
}

/// KILLS points, in the order of the run: thresholds drawn over the whole
/// run (the first in server creation, the last near the end), triggers
/// mixed. Delays go from 0 to the expected remaining time, capped at 700
/// ms (about one install and its SSH round trips) so that the run cannot
/// outrun the schedule.
fn schedule(rng: &mut Rng) -> Vec<KillPoint> {
    let mut thresholds: Vec<usize> = (0..KILLS).map(|_| rng.upto((TASKS - 3) as u64) as usize).collect();
    thresholds.sort_unstable();
    thresholds[0] = 0;
    thresholds[KILLS - 1] = TASKS - 3;
    thresholds
        .into_iter()
        .enumerate()
        .map(|(i, after_succeeded)| {
            let delay = |rng: &mut Rng| Trigger::Delay(rng.upto(expected_remaining_ms(after_succeeded).min(700)));
            let trigger = if i == 0 {
                // The first process: during server creation (the probes).
                Trigger::Delay(rng.upto(300))
            } else {
                match rng.upto(3) {
                    0 => Trigger::Now,
                    1 => Trigger::NextCommit,
                    _ => delay(rng),
                }
            };
            KillPoint {
                after_succeeded,
                trigger,
            }
        })
        .collect()
}

/// A drover process; killed and reaped on drop, so none outlives the test.
#[derive(Debug)]
struct Drover {
    child: Child,
    spawned: Instant,
    log: PathBuf,
}

impl Drover {
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    fn output(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Drover {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's directory, the drover home, the workflow and the hosts.
#[derive(Debug)]
struct Setup {
    dir: tempfile::TempDir,
    home: PathBuf,
    workflow: PathBuf,
    state: PathBuf,
    fleet: TestFleet,
}

impl Setup {
    fn new() -> Setup {
        let fleet = TestFleet::builder()
            .hosts(HOSTS)
            .port(2222)
            .sudo(Sudo::All)
            .start()
            .expect("the test fleet starts (needs root and openssh-server)");
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state.db");
        // drover's own known_hosts, <state dir>/known_hosts: the fleet's.
        std::fs::copy(fleet.known_hosts(), dir.path().join("known_hosts")).expect("known_hosts");
        let home = write_home(dir.path());
        let workflow = write_workflow(dir.path(), &fleet);
        Setup {
            dir,
            home,
            workflow,
            state,
            fleet,
        }
    }

    fn spawn(&self, n: usize, args: &[&str]) -> Drover {
        let log = self.dir.path().join(format!("drover-{n:02}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let err = out.try_clone().expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_drover"))
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("DROVER_STATE", &self.state)
            .env("DROVER_HOME", &self.home)
            .env("DROVER_VENV", repo().join(".venv"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn drover");
        Drover {
            child,
            spawned: Instant::now(),
            log,
        }
    }
}

/// A drover home of its own: the repository's schemas and static provider,
/// and the chain of test taskservs.
fn write_home(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    std::fs::create_dir_all(home.join("providers")).expect("home");
    std::os::unix::fs::symlink(repo().join("schemas"), home.join("schemas")).expect("schemas");
    std::os::unix::fs::symlink(repo().join("providers/static"), home.join("providers/static")).expect("static");
    for (i, ts) in TASKSERVS.iter().enumerate() {
        let folder = home.join("taskservs").join(ts);
        std::fs::create_dir_all(folder.join("kcl")).expect("kcl");
        std::fs::create_dir_all(folder.join("scripts")).expect("scripts");
        let requires = if i == 0 {
            String::new()
        } else {
            format!("\"{}\"", TASKSERVS[i - 1])
        };
        std::fs::write(
            folder.join("kcl/dependencies.k"),
            format!(
                r#"import drover

dependencies = drover.TaskservDependencies {{
    name = "{ts}"
    description = "crash_points test taskserv: sleeps, then records"
    requires = [{requires}]
    minimum_resources = drover.Resources {{cpu = 1, memory = 64, disk = 1}}
}}
"#
            ),
        )
        .expect("dependencies.k");
        let script = folder.join("scripts/install.sh");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
# crash_points test taskserv: every execution is recorded on the host it
# runs on (its own /tmp) when it starts and when it ends:
#   start|ok <taskserv> <server> <hostname> <uid> <attempt> <key> <start ns> [<end ns>]
set -eu
mkdir -p {HOST_DIR}/installed
start=$(date +%s%N)
me="$DROVER_TASKSERV $DROVER_SERVER $(uname -n) $(id -u) $DROVER_ATTEMPT $DROVER_IDEMPOTENCY_KEY $start"
echo "start $me" >>{HOST_DIR}/executions.log
sleep "$DROVER_VAR_INSTALL_SECONDS"
echo "$DROVER_IDEMPOTENCY_KEY" >"{HOST_DIR}/installed/$DROVER_TASKSERV"
echo "ok $me $(date +%s%N)" >>{HOST_DIR}/executions.log
"#
            ),
        )
        .expect("install.sh");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    home
}

fn write_workflow(dir: &Path, fleet: &TestFleet) -> PathBuf {
    let servers: Vec<String> = fleet
        .hosts()
        .iter()
        .map(|h| {
            format!(
                r#"    drover.ServerDef {{
        hostname = "{name}"
        provider = "static"
        plan = "small"
        address = "{address}"
        ssh = _ssh
        taskservs = [{taskservs}]
    }}"#,
                name = h.name(),
                address = h.address(),
                taskservs = TASKSERVS.map(|t| format!("\"{t}\"")).join(", ")
            )
        })
        .collect();
    let file = dir.join("crash_points.k");
    std::fs::write(
        &file,
        format!(
            r#"import drover

_ssh = drover.SshAccess {{
    user = "{user}"
    port = 2222
    key_file = "{key}"
    become = "sudo"
}}

workflow = drover.WorkflowDef {{
    name = "crash-points"
    max_parallel = {MAX_PARALLEL}
    variables = {{INSTALL_SECONDS = "{INSTALL_SECONDS}"}}
    servers = [
{servers}
    ]
    operations = [
        drover.OperationDef {{id = "create", type = "create", target = "server"}}
        drover.OperationDef {{id = "install", type = "create", target = "taskserv", depends_on = ["create"]}}
    ]
}}
"#,
            user = fleet.user(),
            key = fleet.client_key().display(),
            servers = servers.join("\n")
        ),
    )
    .expect("workflow");
    file
}

/// The journal as read beside the process that writes it.
#[derive(Debug)]
struct Journal {
    store: Store,
    run: String,
    entries: Vec<Entry>,
}

impl Journal {
    /// Waits for the first process to create its run.
    fn open(state: &Path, first: &mut Drover) -> Journal {
        let deadline = Instant::now() + STUCK;
        loop {
            if let Some(status) = first.exited() {
                panic!("drover run ended ({status}) before a run existed:\n{}", first.output());
            }
            assert!(Instant::now() < deadline, "no run in the store within {STUCK:?}");
            if let Ok(store) = Store::open_read_only(state)
                && let Ok(runs) = store.runs()
                && let Some(run) = runs.first()
            {
                let run = run.id.clone();
                return Journal {
                    store,
                    run,
                    entries: Vec::new(),
                };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reads what was committed since the last poll; whether anything was.
    fn poll(&mut self) -> bool {
        let after = self.entries.last().map_or(0, |e| e.seq);
        let new = self.store.journal_since(&self.run, after, i64::MAX).expect("journal");
        let grew = !new.is_empty();
        self.entries.extend(new);
        grew
    }

    fn run_starts(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.event, Event::RunStarted { .. }))
            .count()
    }

    fn succeeded(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.event, Event::TaskSucceeded { .. }))
            .count()
    }

    fn finished(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.event, Event::RunFinished { .. }))
    }

    /// Tasks started and neither succeeded nor failed since.
    fn in_flight(&self) -> Vec<String> {
        let mut flying: BTreeMap<String, bool> = BTreeMap::new();
        for e in &self.entries {
            let node = e.node.clone().unwrap_or_default();
            match e.event {
                Event::TaskStarted { .. } => {
                    flying.insert(node, true);
                }
                Event::TaskSucceeded { .. } | Event::TaskFailed { .. } | Event::TaskCancelled { .. } => {
                    flying.insert(node, false);
                }
                Event::RunStarted { .. } => flying.values_mut().for_each(|f| *f = false),
                _ => {}
            }
        }
        flying.into_iter().filter(|(_, f)| *f).map(|(n, _)| n).collect()
    }

    /// The phase of the run, from what it committed.
    fn phase(&self) -> &'static str {
        let mut creates = 0;
        let mut installs = 0;
        for e in &self.entries {
            if matches!(e.event, Event::TaskSucceeded { .. }) {
                if e.node.as_deref().is_some_and(|n| n.starts_with("install/")) {
                    installs += 1;
                } else {
                    creates += 1;
                }
            }
        }
        let all = HOSTS * TASKSERVS.len();
        if creates < HOSTS {
            "server creation/probe"
        } else if installs * 3 < all {
            "first tasks"
        } else if installs * 3 < all * 2 {
            "middle"
        } else {
            "near the end"
        }
    }

    /// The entries around `seq`, one a line: what a failure shows.
    fn excerpt(&self, seq: i64) -> String {
        self.entries
            .iter()
            .filter(|e| (e.seq - seq).abs() <= 12)
            .map(|e| format!("  #{} {} {:?}", e.seq, e.node.as_deref().unwrap_or("-"), e.event))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What happened at one kill.
#[derive(Debug)]
struct Kill {
    point: KillPoint,
    process: usize,
    /// ms since the process was spawned, and since its run_started.
    since_spawn_ms: u128,
    since_start_ms: u128,
    phase: &'static str,
    succeeded: usize,
    in_flight: Vec<String>,
    status_after: RunStatus,
}

enum Waited {
    Trigger,
    Exited(ExitStatus),
}

/// Polls the journal until `done` holds, or the process exits.
fn wait_until(
    p: &mut Drover,
    journal: &mut Journal,
    seed: u64,
    what: &str,
    mut done: impl FnMut(&Journal, bool) -> bool,
) -> Waited {
    let deadline = Instant::now() + STUCK;
    loop {
        if let Some(status) = p.exited() {
            journal.poll();
            return Waited::Exited(status);
        }
        let grew = journal.poll();
        if done(journal, grew) {
            return Waited::Trigger;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the run is stuck: waited {STUCK:?} for {what}; {} tasks succeeded, in flight {:?}\n{}",
            journal.succeeded(),
            journal.in_flight(),
            p.output()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn resumed(entries: &[Entry]) -> usize {
    entries
        .iter()
        .filter(|e| matches!(e.event, Event::RunStarted { resumed: true }))
        .count()
}

#[test]
fn kill_9_at_random_points_on_real_hosts_then_resume_completes_and_never_reruns_a_success() {
    let began = Instant::now();
    let seed = seed();
    let mut rng = Rng(seed);
    let points = schedule(&mut rng);
    println!("seed {seed} (replay: CRASH_POINTS_SEED={seed})");

    let setup = Setup::new();
    println!(
        "{HOSTS} hosts up in {:?}; {TASKS} tasks, installs of {INSTALL_SECONDS} s, max_parallel {MAX_PARALLEL}",
        setup.fleet.startup_time()
    );
    let workflow = setup.workflow.to_str().expect("utf-8").to_string();
    let mut process = setup.spawn(0, &["run", &workflow]);
    let mut journal = Journal::open(&setup.state, &mut process);
    let id = journal.run.clone();
    let mut kills: Vec<Kill> = Vec::new();
    let mut finished_early = false;

    for (n, point) in points.iter().copied().enumerate() {
        // This process's own run_started: the (n+1)th of the journal.
        let mut own_start: Option<Instant> = None;
        let waited = wait_until(&mut process, &mut journal, seed, "the kill point", |j, _| {
            if j.run_starts() <= n {
                return false;
            }
            own_start.get_or_insert_with(Instant::now);
            j.succeeded() >= point.after_succeeded
        });
        let waited = match (waited, point.trigger) {
            (Waited::Exited(s), _) => Waited::Exited(s),
            (Waited::Trigger, Trigger::Now) => Waited::Trigger,
            (Waited::Trigger, Trigger::NextCommit) => {
                wait_until(&mut process, &mut journal, seed, "a commit", |_, grew| grew)
            }
            (Waited::Trigger, Trigger::Delay(ms)) => {
                let until = Instant::now() + Duration::from_millis(ms);
                wait_until(&mut process, &mut journal, seed, "the delay", |_, _| {
                    Instant::now() >= until
                })
            }
        };
        if let Waited::Exited(status) = waited {
            assert!(
                status.success() && journal.finished(),
                "seed {seed}: drover (process {n}) ended by itself with {status} before kill {n}:\n{}",
                process.output()
            );
            finished_early = true;
            break;
        }
        process.child.kill().expect("kill -9");
        let status = process.child.wait().expect("reaped");
        let since_spawn_ms = process.spawned.elapsed().as_millis();
        let since_start_ms = own_start.map_or(0, |s| s.elapsed().as_millis());
        journal.poll();
        let status_after = journal.store.run(&id).expect("run").status;
        let killed = status.signal() == Some(nix::sys::signal::Signal::SIGKILL as i32);
        assert!(
            killed || status.success(),
            "seed {seed}: process {n} ended with {status}:\n{}",
            process.output()
        );
        kills.push(Kill {
            point,
            process: n,
            since_spawn_ms,
            since_start_ms,
            phase: journal.phase(),
            succeeded: journal.succeeded(),
            in_flight: journal.in_flight(),
            status_after,
        });
        if journal.finished() {
            assert_eq!(status_after, RunStatus::Succeeded, "seed {seed}");
            finished_early = true;
            break;
        }
        // A killed run stays unfinished, and resumable.
        assert_eq!(
            status_after,
            RunStatus::Running,
            "seed {seed}: after kill {n} the run is {status_after:?}"
        );
        process = setup.spawn(n + 1, &["run", "--resume", &id]);
    }

    if !finished_early {
        // The last process runs the run to its end.
        let deadline = Instant::now() + STUCK;
        let status = loop {
            if let Some(s) = process.exited() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: the last resume did not finish within {STUCK:?}; in flight {:?}\n{}",
                {
                    journal.poll();
                    journal.in_flight()
                },
                process.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "seed {seed}: the last resume ended with {status}:\n{}",
            process.output()
        );
    }
    drop(process);
    journal.poll();

    println!("kill points (seed {seed}):");
    println!(
        "  #  proc  point            after ms (spawn/start)  phase                  succeeded  in flight  run after"
    );
    for (i, k) in kills.iter().enumerate() {
        let point = match k.point.trigger {
            Trigger::Now => format!("≥{} now", k.point.after_succeeded),
            Trigger::NextCommit => format!("≥{} next commit", k.point.after_succeeded),
            Trigger::Delay(ms) => format!("≥{} +{ms} ms", k.point.after_succeeded),
        };
        println!(
            "  {:<2} {:<5} {:<16} {:>6} / {:<14} {:<22} {:>9}  {:>9}  {:?}",
            i + 1,
            k.process,
            point,
            k.since_spawn_ms,
            k.since_start_ms,
            k.phase,
            k.succeeded,
            k.in_flight.len(),
            k.status_after
        );
    }

    // Wait for the hosts to be quiet: a script of a killed drover may still
    // run there (its own session) and record once it ends.
    let quiet_by = Instant::now() + Duration::from_secs(10);
    for host in setup.fleet.hosts() {
        while host.processes().len() > 1 {
            assert!(
                Instant::now() < quiet_by,
                "host {} still runs {:?} 10 s after the run ended",
                host.name(),
                host.processes()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let kills_while_unfinished = kills.iter().filter(|k| k.status_after != RunStatus::Succeeded).count();
    let stats = check_journal(&journal, &setup.fleet, seed, kills_while_unfinished);
    println!(
        "kills {} (while unfinished {kills_while_unfinished}); resumes journaled {}; tasks {}; \
         attempts interrupted and re-run {} (with the same key and attempt); \
         script executions on the hosts: {} started, {} succeeded, {} tasks ran more than once, \
         {} re-runs overlapped the killed process's still running script; wall time {:?}",
        kills.len(),
        resumed(&journal.entries),
        stats.tasks,
        stats.interrupted,
        stats.started_on_hosts,
        stats.ok_on_hosts,
        stats.reruns_on_hosts,
        stats.overlapping_on_hosts,
        began.elapsed()
    );
    assert!(
        kills_while_unfinished >= 20,
        "seed {seed}: only {kills_while_unfinished} kills landed before the run finished: the schedule is too sparse \
         for this machine (a test problem, not drover's)"
    );
    assert!(
        stats.interrupted > 0,
        "seed {seed}: no kill interrupted a task in flight: the test proves nothing"
    );
}

#[derive(Debug, Default)]
struct Stats {
    tasks: usize,
    interrupted: usize,
    started_on_hosts: usize,
    ok_on_hosts: usize,
    reruns_on_hosts: usize,
    overlapping_on_hosts: usize,
}

/// Every assertion on the finished run, from its journal, then from what
/// the scripts recorded on the hosts.
fn check_journal(journal: &Journal, fleet: &TestFleet, seed: u64, kills_while_unfinished: usize) -> Stats {
    let entries = &journal.entries;
    let id = &journal.run;
    let last = entries.last().expect("a journal");

    // The run ended succeeded, once, with the journal's last entry.
    let finishes: Vec<&Entry> = entries
        .iter()
        .filter(|e| matches!(e.event, Event::RunFinished { .. }))
        .collect();
    assert_eq!(finishes.len(), 1, "seed {seed}: run_finished {finishes:?}");
    assert!(
        matches!(
            last.event,
            Event::RunFinished {
                status: RunStatus::Succeeded,
                ..
            }
        ),
        "seed {seed}: the journal ends with {:?}\n{}",
        last.event,
        journal.excerpt(last.seq)
    );
    assert_eq!(journal.store.run(id).expect("run").status, RunStatus::Succeeded);

    // One fresh start, then one resumed start per kill of an unfinished run.
    let starts: Vec<bool> = entries
        .iter()
        .filter_map(|e| match e.event {
            Event::RunStarted { resumed } => Some(resumed),
            _ => None,
        })
        .collect();
    assert_eq!(starts.first(), Some(&false), "seed {seed}");
    assert_eq!(starts.iter().filter(|r| !**r).count(), 1, "seed {seed}: {starts:?}");
    assert_eq!(
        resumed(entries),
        kills_while_unfinished,
        "seed {seed}: run_started{{resumed: true}} vs kills of the unfinished run"
    );

    // Per task: one success; nothing started after it; an attempt in
    // flight at a resume re-runs with the same key and attempt number.
    #[derive(Debug, Default)]
    struct Task {
        starts: Vec<(u32, String)>,
        succeeded: Vec<i64>,
        succeeded_at_ms: i64,
        in_flight: Option<(u32, String)>,
        /// The attempt in flight at the last resume, not started again yet.
        to_rerun: Option<(u32, String)>,
        interrupted: usize,
    }
    let mut tasks: BTreeMap<String, Task> = BTreeMap::new();
    let mut interrupted_total = 0;
    for e in entries {
        match &e.event {
            Event::RunStarted { resumed: true } => {
                for t in tasks.values_mut() {
                    if let Some(flying) = t.in_flight.take() {
                        t.to_rerun = Some(flying);
                        t.interrupted += 1;
                        interrupted_total += 1;
                    }
                }
            }
            Event::TaskStarted {
                attempt,
                idempotency_key,
            } => {
                let node = e.node.clone().expect("a task");
                let t = tasks.entry(node.clone()).or_default();
                assert!(
                    t.succeeded.is_empty(),
                    "seed {seed}: {node} started again (#{}) after it succeeded (#{}):\n{}",
                    e.seq,
                    t.succeeded[0],
                    journal.excerpt(e.seq)
                );
                assert_eq!(
                    idempotency_key,
                    &format!("{id}/{node}"),
                    "seed {seed}: #{} key of {node}",
                    e.seq
                );
                assert!(
                    t.in_flight.is_none(),
                    "seed {seed}: {node} started twice without a resume between:\n{}",
                    journal.excerpt(e.seq)
                );
                if let Some((a, k)) = t.to_rerun.take() {
                    // The attempt in flight at a kill re-runs as itself.
                    assert_eq!(
                        (&a, &k),
                        (attempt, idempotency_key),
                        "seed {seed}: {node}: an interrupted attempt re-ran as another (#{}):\n{}",
                        e.seq,
                        journal.excerpt(e.seq)
                    );
                }
                t.starts.push((*attempt, idempotency_key.clone()));
                t.in_flight = Some((*attempt, idempotency_key.clone()));
            }
            Event::TaskSucceeded { .. } => {
                let node = e.node.clone().expect("a task");
                let t = tasks.entry(node).or_default();
                t.succeeded.push(e.seq);
                t.succeeded_at_ms = e.at_ms;
                t.in_flight = None;
            }
            Event::TaskFailed { error, .. } => {
                panic!("seed {seed}: {:?} failed: {error}\n{}", e.node, journal.excerpt(e.seq));
            }
            Event::TaskCancelled { .. } | Event::TaskSkipped { .. } => {
                panic!("seed {seed}: {:?}: {:?}\n{}", e.node, e.event, journal.excerpt(e.seq));
            }
            _ => {}
        }
    }
    assert_eq!(tasks.len(), TASKS, "seed {seed}: tasks {:?}", tasks.keys());
    for (node, t) in &tasks {
        assert_eq!(t.succeeded.len(), 1, "seed {seed}: {node} succeeded {:?}", t.succeeded);
        // A re-run happens only for an attempt in flight at a kill.
        assert_eq!(
            t.starts.len(),
            1 + t.interrupted,
            "seed {seed}: {node} started {} times, interrupted {}",
            t.starts.len(),
            t.interrupted
        );
        assert!(
            t.starts.iter().all(|s| s.0 == 1),
            "seed {seed}: {node}: attempts {:?}",
            t.starts
        );
    }

    // On the hosts: every install ran there to success, on the host it was
    // meant for, as root through sudo, with the task's key and attempt; a
    // script ran more than once only when its task was interrupted, never
    // more often than the journal started it, and none began after its
    // task's success was committed.
    let mut stats = Stats {
        tasks: tasks.len(),
        interrupted: interrupted_total,
        ..Stats::default()
    };
    for host in fleet.hosts() {
        let log = std::fs::read_to_string(host.path(format!("{HOST_DIR}/executions.log")))
            .unwrap_or_else(|e| panic!("host {}: no executions log: {e}", host.name()));
        let mut by_ts: HashMap<String, (Vec<Vec<String>>, usize)> = HashMap::new();
        for line in log.lines() {
            let f: Vec<String> = line.split(' ').map(str::to_string).collect();
            assert!(f.len() >= 8, "host {}: record {line:?}", host.name());
            let (kind, ts, server, hostname, uid, attempt, key, start) =
                (&f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7]);
            let node = format!("install/{ts}@{server}");
            assert_eq!(server, host.name(), "host {}: {line}", host.name());
            assert_eq!(hostname, host.name(), "ran on another machine: {line}");
            assert_eq!(uid, "0", "not through sudo: {line}");
            let t = tasks
                .get(&node)
                .unwrap_or_else(|| panic!("host {}: {node} ran but is not in the journal", host.name()));
            assert_eq!(key, &format!("{id}/{node}"), "host {}: {line}", host.name());
            assert!(
                t.starts.contains(&(attempt.parse().expect("attempt"), key.clone())),
                "host {}: attempt not in the journal: {line}",
                host.name()
            );
            let start_ms = start.parse::<i64>().expect("start ns") / 1_000_000;
            assert!(
                start_ms <= t.succeeded_at_ms,
                "seed {seed}: host {}: {node} began at {start_ms} ms, after its success was committed at {} ms: {line}",
                host.name(),
                t.succeeded_at_ms
            );
            let entry = by_ts.entry(ts.clone()).or_default();
            match kind.as_str() {
                "start" => {
                    entry.1 += 1;
                    stats.started_on_hosts += 1;
                }
                "ok" => {
                    assert_eq!(f.len(), 9, "host {}: record {line:?}", host.name());
                    entry.0.push(f.clone());
                    stats.ok_on_hosts += 1;
                }
                other => panic!("host {}: record kind {other}: {line}", host.name()),
            }
        }
        for ts in TASKSERVS {
            let node = format!("install/{ts}@{}", host.name());
            let t = &tasks[&node];
            let (oks, started) = by_ts.get(ts).map(|(o, s)| (o.len(), *s)).unwrap_or((0, 0));
            assert!(oks >= 1, "seed {seed}: {node} never ran to success on its host");
            assert!(
                started <= t.starts.len(),
                "seed {seed}: {node}: the script began {started} times, the journal started it {} times",
                t.starts.len()
            );
            assert!(
                oks <= 1 + t.interrupted,
                "seed {seed}: {node} ran to success {oks} times but was interrupted {} times",
                t.interrupted
            );
            if started > 1 {
                stats.reruns_on_hosts += 1;
            }
            // A script of a killed drover is not stopped on the host (it
            // runs in its own session): its re-run may overlap it. Counted,
            // not refused: the same key is what makes that safe.
            if let Some((oks, _)) = by_ts.get(ts) {
                let mut spans: Vec<(i64, i64)> = oks
                    .iter()
                    .map(|f| (f[7].parse().expect("start ns"), f[8].parse().expect("end ns")))
                    .collect();
                spans.sort_unstable();
                stats.overlapping_on_hosts += spans.windows(2).filter(|w| w[1].0 < w[0].1).count();
            }
            let marker = std::fs::read_to_string(host.path(format!("{HOST_DIR}/installed/{ts}")))
                .unwrap_or_else(|e| panic!("{node}: no marker: {e}"));
            assert_eq!(marker.trim(), format!("{id}/{node}"));
        }
    }
    stats
}
