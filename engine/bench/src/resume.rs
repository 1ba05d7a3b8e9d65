//! Crash-resume: a 1,000-task run killed with SIGKILL about halfway, then
//! `drover run --resume ID`, against what an operator without a journal
//! does: run everything again from scratch.
//!
//! The run: N servers (200) × (create + install of the test taskservs a,
//! b, c, d: a → b, c → d), 5 tasks a server, with `connection = "local"`
//! over the deterministic test taskservs of engine/exec/tests/home
//! (`behave.sh`; an `install` control file makes every install
//! `sleep 0.01`). Each round:
//!
//! 1. `drover run` on a fresh state store; once the control directory's
//!    executions.log has `--kill-at` (0.5) of the installs, SIGKILL;
//! 2. the physical floor of recovering: the run's journal read from the
//!    store (open, the run record, every entry), and a process start
//!    (`drover --version`);
//! 3. `drover run --resume ID`, timed: to its first task (from its
//!    journal: the recovery overhead) and to the end;
//! 4. the same run from scratch on a fresh store (the baseline).
//!
//! Every run must succeed, and the journal must show every task
//! succeeded exactly once and none started again after it succeeded;
//! otherwise the benchmark fails.
//!
//! Usage: drover-bench-resume [--servers N] [--runs R] [--kill-at F]
//!        [--parallel P] [--json FILE] (`--help` for the options).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use drover_bench::figures::{Better, Figure, Headline, Report, Stat, median, thousands};
use drover_kcl::Home;
use drover_state::{Event, RunStatus, Store};
use serde_json::json;

/// Tasks per server: its creation and four installs.
const PER_SERVER: usize = 5;

/// Script executions per server (the installs; creation runs no script).
const SCRIPTS_PER_SERVER: usize = 4;

/// Crash-resume: a run of N servers × 5 tasks killed with SIGKILL about
/// halfway, then `drover run --resume ID`, against running everything
/// again from scratch; every journal is checked (no task succeeded twice).
/// Run it from the repository root (`make bench` does), with the release
/// build of drover next to it.
#[derive(Debug, Parser)]
#[command(name = "drover-bench-resume", version, about, long_about)]
struct Args {
    /// Servers of the run (5 tasks each).
    #[arg(long, default_value_t = 200, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    servers: usize,
    /// Rounds (kill, resume, rerun from scratch); median, min–max.
    #[arg(long, default_value_t = 3, value_name = "R", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
    /// Kill the run once this fraction of its install scripts ran (0.05 to 0.95).
    #[arg(long, default_value_t = 0.5, value_name = "FRACTION", value_parser = kill_fraction)]
    kill_at: f64,
    /// The workflow's max_parallel.
    #[arg(long, default_value_t = 10, value_name = "P", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    parallel: usize,
    /// Write every figure to this JSON file (read by scripts/bench.py).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// --kill-at: a fraction between 0.05 and 0.95.
fn kill_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.05..=0.95).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0.05 and 0.95"))
    }
}

/// What one round measured.
#[derive(Debug, Default)]
struct Round {
    /// Spawn to SIGKILL.
    crashed_after: f64,
    /// Tasks succeeded in the journal when killed.
    done_at_kill: usize,
    /// Journal entries at the kill.
    entries_at_kill: usize,
    /// Reading the journal back (open, run, entries), ms.
    journal_read: Vec<f64>,
    /// The resume process: spawn to the resumed RunStarted, to its first
    /// task started, to its exit (ms, ms, s).
    resume_startup: f64,
    resume_first_task: f64,
    resume_wall: f64,
    /// Scripts that ran again after the resume (in flight at the kill).
    rerun_scripts: usize,
    /// The run from scratch: spawn to its first task (ms), to its exit (s).
    scratch_first_task: f64,
    scratch_wall: f64,
    /// The run from scratch, from the moment it had as many tasks
    /// succeeded as the killed run had at the kill, to its end (s).
    scratch_tail: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let real = Home::discover()?;
    let root = real.root().to_path_buf();
    let test_home = root.join("engine/exec/tests/home");
    if !test_home.join("taskservs/behave.sh").is_file() {
        bail!("{} not found: run from a drover source tree", test_home.display());
    }
    let drover = sibling("drover")?;
    let venv = root.join(".venv");
    let tasks = args.servers * PER_SERVER;
    let kill_n = ((args.servers * SCRIPTS_PER_SERVER) as f64 * args.kill_at).round() as usize;
    let mut report = Report::new("resume", "Crash-resume");
    report.params = json!({
        "servers": args.servers, "tasks": tasks, "runs": args.runs, "kill_at": args.kill_at,
        "kill_after_scripts": kill_n, "parallel": args.parallel, "install": "sleep 0.01",
    });
    let base = tempfile::Builder::new()
        .prefix("drover-bench-resume")
        .tempdir_in("/var/tmp")?;
    let bench = Bench {
        drover,
        venv,
        home: test_home,
        servers: args.servers,
        parallel: args.parallel,
    };
    println!(
        "crash-resume benchmark: {} servers × (create + 4 installs) = {tasks} tasks, max_parallel {}, SIGKILL after {kill_n} of {} install scripts, {} runs",
        args.servers,
        args.parallel,
        args.servers * SCRIPTS_PER_SERVER,
        args.runs
    );

    // A process start: the least a resume costs before it reads anything.
    let mut starts = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let st = Command::new(&bench.drover)
            .arg("--version")
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("drover --version failed");
        }
        starts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let process_start = Stat::new("ms", starts);

    let mut rounds = Vec::new();
    for r in 0..args.runs {
        let round = bench.round(&base.path().join(format!("r{r}")), kill_n)?;
        println!(
            "round {}: killed after {:.2} s ({} of {tasks} tasks succeeded, {} journal entries); journal read {:.1} ms; resume: first task after {:.0} ms, finished in {:.2} s ({} scripts in flight at the kill ran again); from scratch {:.2} s",
            r + 1,
            round.crashed_after,
            round.done_at_kill,
            round.entries_at_kill,
            median(&round.journal_read),
            round.resume_first_task,
            round.resume_wall,
            round.rerun_scripts,
            round.scratch_wall,
        );
        rounds.push(round);
    }

    let col = |f: fn(&Round) -> f64, unit| Stat::new(unit, rounds.iter().map(f).collect());
    let resume_wall = col(|r| r.resume_wall, "s");
    let scratch_wall = col(|r| r.scratch_wall, "s");
    let recovery = col(|r| r.resume_first_task, "ms");
    let startup = col(|r| r.resume_startup, "ms");
    let scratch_first = col(|r| r.scratch_first_task, "ms");
    let journal_read = Stat::new(
        "ms",
        rounds.iter().flat_map(|r| r.journal_read.iter().copied()).collect(),
    );
    let done = col(|r| r.done_at_kill as f64, "tasks");
    let crashed = col(|r| r.crashed_after, "s");
    let floor_ms = process_start.median() + journal_read.median();
    // The least a resume can take to finish: what the uninterrupted run
    // took for the tasks left at the kill, plus the floor of recovering.
    let tail = col(|r| r.scratch_tail, "s");
    let ideal = tail.median() + floor_ms / 1e3;

    println!("summary, median (min–max) of {} runs:", args.runs);
    println!("  killed after                      {} s", crashed.spread(2));
    println!("  tasks succeeded at the kill       {} of {tasks}", done.spread(0));
    println!(
        "  recovery: resume start to first task  {} ms (to the resumed RunStarted {} ms)",
        recovery.spread(0),
        startup.spread(0)
    );
    println!(
        "    floor: process start {} ms + journal read {} ms",
        process_start.spread(1),
        journal_read.spread(1)
    );
    println!("  resume to finish                  {} s", resume_wall.spread(2));
    println!(
        "    floor: the run from scratch took {} s after as many tasks had succeeded, + recovery floor: {ideal:.2} s",
        tail.spread(2)
    );
    println!("  rerun from scratch (no journal)   {} s", scratch_wall.spread(2));
    println!(
        "  ratio                             resume finishes {:.2}× sooner than a rerun",
        scratch_wall.median() / resume_wall.median()
    );
    println!("  no task succeeded twice, none started again after it succeeded (checked in every journal)");

    report.headlines.push(
        Headline::new(
            "resume",
            format!(
                "crash-resume of a {}-task run killed (SIGKILL) at about half: resume to finish",
                thousands(tasks)
            ),
            "s",
            Better::Lower,
            resume_wall.figure(),
        )
        .peer("rerun from scratch (no journal)", scratch_wall.figure())
        .limit(
            "the run from scratch's time for the same tasks left, plus process start and journal read",
            Figure::single(ideal),
        )
        .note("every journal checked: no task succeeded twice, none started again after it succeeded"),
    );
    report.headlines.push(
        Headline::new(
            "resume-recovery",
            "crash-resume: recovery overhead (process start to the resumed run's first task)",
            "ms",
            Better::Lower,
            recovery.figure(),
        )
        .peer("a fresh run: process start to its first task", scratch_first.figure())
        .limit(
            "process start (drover --version) + reading the run's journal from SQLite",
            Figure::single(floor_ms),
        ),
    );
    report.results = json!({
        "tasks": tasks,
        "killed_after_s": crashed.json(),
        "done_at_kill": done.json(),
        "entries_at_kill": rounds.iter().map(|r| r.entries_at_kill).collect::<Vec<_>>(),
        "rerun_scripts": rounds.iter().map(|r| r.rerun_scripts).collect::<Vec<_>>(),
        "process_start_ms": process_start.json(),
        "journal_read_ms": journal_read.json(),
        "recovery_ms": recovery.json(),
        "resume_to_run_started_ms": startup.json(),
        "resume_wall_s": resume_wall.json(),
        "scratch_wall_s": scratch_wall.json(),
        "scratch_first_task_ms": scratch_first.json(),
        "scratch_tail_s": tail.json(),
        "ideal_resume_s": ideal,
        "ratio": scratch_wall.median() / resume_wall.median(),
        "exactly_once": true,
    });
    report.write(args.json.as_deref())
}

struct Bench {
    drover: PathBuf,
    venv: PathBuf,
    home: PathBuf,
    servers: usize,
    parallel: usize,
}

impl Bench {
    fn round(&self, dir: &Path, kill_n: usize) -> Result<Round> {
        let mut round = Round::default();

        // 1. Run, and kill it about halfway.
        let crash = dir.join("crash");
        let (file, control) = self.prepare(&crash)?;
        let state = crash.join("state.db");
        let spawned = Instant::now();
        let mut child = self.spawn(&crash, &state, "crash", &[file.as_os_str()])?;
        wait_for_scripts(&control, kill_n, &mut child)?;
        child.kill().context("SIGKILL")?;
        child.wait()?;
        round.crashed_after = spawned.elapsed().as_secs_f64();
        // The scripts it started are in their own process groups and end
        // by themselves (each sleeps 10 ms); let them, as after a real crash.
        std::thread::sleep(Duration::from_millis(300));

        // 2. The floor: reading the journal back.
        let id = {
            let store = Store::open(&state)?;
            let runs = store.runs()?;
            let [record] = runs.as_slice() else {
                bail!("expected one run in {}, found {}", state.display(), runs.len());
            };
            if record.status != RunStatus::Running {
                bail!("the killed run is {}, not running", record.status.as_str());
            }
            record.id.clone()
        };
        for _ in 0..5 {
            let t = Instant::now();
            let store = Store::open(&state)?;
            let _record = store.run(&id)?;
            let journal = store.journal(&id)?;
            round.journal_read.push(t.elapsed().as_secs_f64() * 1e3);
            round.entries_at_kill = journal.len();
            round.done_at_kill = journal
                .iter()
                .filter(|e| matches!(e.event, Event::TaskSucceeded { .. }))
                .count();
        }

        // 3. Resume.
        let spawned_ms = epoch_ms();
        let t = Instant::now();
        let mut child = self.spawn(&crash, &state, "resume", &["--resume".as_ref(), id.as_ref()])?;
        let status = child.wait()?.success();
        round.resume_wall = t.elapsed().as_secs_f64();
        if !status {
            bail!(
                "drover run --resume {id} failed; see {}",
                crash.join("resume.err").display()
            );
        }
        let store = Store::open(&state)?;
        let journal = store.journal(&id)?;
        check_exactly_once(&journal, self.servers * PER_SERVER)?;
        let resumed_at = journal
            .iter()
            .rev()
            .find(|e| matches!(e.event, Event::RunStarted { resumed: true }))
            .context("no resumed RunStarted in the journal")?;
        let first_task = journal
            .iter()
            .filter(|e| e.seq > resumed_at.seq && matches!(e.event, Event::TaskStarted { .. }))
            .map(|e| e.at_ms)
            .next()
            .context("the resumed run started no task")?;
        round.resume_startup = resumed_at.at_ms as f64 - spawned_ms;
        round.resume_first_task = first_task as f64 - spawned_ms;
        round.rerun_scripts = drover_bench::home::reruns(&control)?;

        // 4. From scratch.
        let scratch = dir.join("scratch");
        let (file, _control) = self.prepare(&scratch)?;
        let state = scratch.join("state.db");
        let spawned_ms = epoch_ms();
        let t = Instant::now();
        let mut child = self.spawn(&scratch, &state, "run", &[file.as_os_str()])?;
        let status = child.wait()?.success();
        round.scratch_wall = t.elapsed().as_secs_f64();
        if !status {
            bail!(
                "drover run from scratch failed; see {}",
                scratch.join("run.err").display()
            );
        }
        let store = Store::open(&state)?;
        let runs = store.runs()?;
        let [record] = runs.as_slice() else {
            bail!("expected one run in {}", state.display());
        };
        let journal = store.journal(&record.id)?;
        check_exactly_once(&journal, self.servers * PER_SERVER)?;
        let first = journal
            .iter()
            .find(|e| matches!(e.event, Event::TaskStarted { .. }))
            .context("the run started no task")?;
        round.scratch_first_task = first.at_ms as f64 - spawned_ms;
        let kth = journal
            .iter()
            .filter(|e| matches!(e.event, Event::TaskSucceeded { .. }))
            .nth(round.done_at_kill.saturating_sub(1))
            .map_or(first.at_ms, |e| e.at_ms);
        let end = journal.last().map_or(kth, |e| e.at_ms);
        round.scratch_tail = (end - kth) as f64 / 1e3;
        Ok(round)
    }

    /// A directory with a control directory and the workflow; the paths of
    /// the workflow and the control directory.
    fn prepare(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let control = dir.join("control");
        std::fs::create_dir_all(&control)?;
        std::fs::write(control.join("install"), "sleep 0.01")?;
        let file = dir.join("resume.k");
        std::fs::write(
            &file,
            format!(
                r#"import drover

workflow = drover.WorkflowDef {{
    name = "resume"
    max_parallel = {parallel}
    variables = {{CONTROL = "{control}"}}
    servers = [drover.ServerDef {{
        hostname = "r${{i}}"
        provider = "local"
        plan = "small"
        connection = "local"
        taskservs = ["a", "b", "c", "d"]
    }} for i in range({servers})]
    operations = [
        drover.OperationDef {{id = "create", type = "create", target = "server"}}
        drover.OperationDef {{id = "install", type = "create", target = "taskserv", depends_on = ["create"]}}
    ]
}}
"#,
                parallel = self.parallel,
                control = control.display(),
                servers = self.servers,
            ),
        )?;
        Ok((file, control))
    }

    /// `drover run ARGS` in `dir` on `state`, its output to
    /// `dir/<log>.out` and `.err` (files: a pipe nobody reads would stall it).
    fn spawn(&self, dir: &Path, state: &Path, log: &str, args: &[&std::ffi::OsStr]) -> Result<Child> {
        let mut cmd = Command::new(&self.drover);
        cmd.arg("run")
            .args(args)
            .current_dir(dir)
            .env("DROVER_HOME", &self.home)
            .env("DROVER_VENV", &self.venv)
            .env("DROVER_STATE", state)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("{log}.out")))?)
            .stderr(std::fs::File::create(dir.join(format!("{log}.err")))?);
        cmd.spawn()
            .with_context(|| format!("cannot run {}", self.drover.display()))
    }
}

/// Every task succeeded exactly once and none started again after it
/// succeeded; the run succeeded.
fn check_exactly_once(journal: &[drover_state::Entry], tasks: usize) -> Result<()> {
    let mut succeeded: BTreeMap<&str, usize> = BTreeMap::new();
    let mut started_after: BTreeSet<&str> = BTreeSet::new();
    for e in journal {
        let node = e.node.as_deref().unwrap_or_default();
        match e.event {
            Event::TaskStarted { .. } if succeeded.contains_key(node) => {
                started_after.insert(node);
            }
            Event::TaskSucceeded { .. } => *succeeded.entry(node).or_default() += 1,
            _ => {}
        }
    }
    let twice: Vec<&&str> = succeeded.iter().filter(|(_, n)| **n > 1).map(|(t, _)| t).collect();
    if !twice.is_empty() || !started_after.is_empty() {
        bail!(
            "EXACTLY-ONCE VIOLATED: {} task(s) succeeded more than once (e.g. {:?}), {} started again after succeeding (e.g. {:?})",
            twice.len(),
            twice.first(),
            started_after.len(),
            started_after.first()
        );
    }
    if succeeded.len() != tasks {
        bail!("{} of {tasks} tasks succeeded", succeeded.len());
    }
    if !matches!(
        journal.last().map(|e| &e.event),
        Some(Event::RunFinished {
            status: RunStatus::Succeeded,
            ..
        })
    ) {
        bail!("the run did not finish with success");
    }
    Ok(())
}

fn scripts_done(control: &Path) -> usize {
    std::fs::read_to_string(control.join("executions.log")).map_or(0, |s| s.lines().count())
}

fn wait_for_scripts(control: &Path, n: usize, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while scripts_done(control) < n {
        if let Some(st) = child.try_wait()? {
            bail!("drover ended ({st}) before {n} scripts ran: nothing to resume (lower --kill-at?)");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("no {n} scripts within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A program next to this one (the same build of drover).
fn sibling(name: &str) -> Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name(name);
    if !p.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p drover-cli)",
            p.display()
        );
    }
    Ok(p)
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}
