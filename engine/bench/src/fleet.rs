//! Fleet fan-out: drover against pdsh, parallel-ssh and ansible on fleets of
//! N real hosts, side by side, in one run.
//!
//! For each size N the benchmark creates N hosts with [`HostFleet`] (each an
//! sshd in its own namespaces on its own loopback address, with its own
//! /tmp: the fleet lives under /var/tmp, not /tmp), then measures, for each
//! tool, the wall time of
//!
//! 1. one command (`true`) on every host, and
//! 2. a 10-step sequence on every host (ten commands one after another per
//!    host),
//!
//! with the same key, the same known_hosts checked strictly, and N hosts at
//! once:
//!
//! - drover: `drover run` of a generated workflow whose servers are the
//!   fleet's hosts (provider local, reached over SSH) and whose one
//!   operation installs `step-0` (case 1) or `step-0..9` (case 2, a
//!   `requires` chain) with scripts that run `true`. A fresh state database
//!   per run, next to the fleet (`<dir>/state.db`, fleet at `<dir>/fleet`).
//! - pdsh -R ssh, parallel-ssh: one invocation per step.
//! - ansible: the ad-hoc `shell` module (case 1), a playbook of ten `shell`
//!   tasks (case 2); default settings (ControlPersist on), with a fresh
//!   control-socket directory per run so every run starts cold.
//! - the physical limit: one bare `ssh host true`, and N of them at once.
//!
//! Memory: for every measured command, the peak resident set of its
//! largest process (`ru_maxrss`, from wait4) and the peak of the sum of
//! the proportional set sizes (PSS, shared pages divided among their
//! users) of its whole process tree, sampled at 0.1, 0.3 and 0.7 s, then
//! every second (sparse: a sample costs ~0.1 ms of CPU per process): pdsh and
//! parallel-ssh hold a connection per host as one `ssh` process each, and
//! ansible's ControlPersist masters leave the tree (they daemonize); this
//! process is made their subreaper so they are counted too.
//!
//! Every command must succeed (exit 0; for drover, every task succeeded in
//! the journal). Between two measurements the benchmark waits until no host
//! has a session left. Prints, per size: medians (min–max) of wall time,
//! ratios drover vs each peer, client CPU, peak RSS, machine CPU, and where
//! drover's time goes (from its journal). Every host is deleted at the end,
//! also on error, panic or Ctrl-C (FleetGuard). Needs root, openssh-server,
//! pdsh, pssh and ansible-core in the project's .venv.
//!
//! Time budget (the hosts share this machine's cores with the tools, so a
//! large fleet is slow for everybody): each size gets `--budget` seconds
//! (300). Runs are made in rounds; drover's every run is made, a peer's
//! second and later runs only while the size is within its budget. A
//! measurement whose one run is projected (linearly in the number of hosts,
//! from the previous size) to take more than `--max-run` seconds (120) is
//! skipped at that size and reported so; for pdsh and parallel-ssh, whose
//! ten steps are ten identical invocations, ten times one invocation is
//! then shown as an estimate (marked ≈).
//!
//! `--deadline SECS` bounds the whole benchmark: a measurement is made
//! only when its projected duration fits in the time left, and a peer's
//! (or the physical limit's later) runs only when they leave time for the
//! runs of drover still to come at this size and the larger ones
//! (projected linearly); a size that cannot fit one round of drover is
//! skipped. Everything skipped is reported with the reason.
//!
//! `--json FILE` writes every figure (see `drover_bench::figures`).
//!
//! Usage: drover-bench-fleet [--sizes 10,50,100,250] [--runs 3]
//!        [--tools drover,pdsh,pssh,ansible] [--budget SECS] [--max-run SECS]
//!        [--deadline SECS] [--timeout SECS] [--json FILE]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use drover_bench::figures::{Better, Figure, Headline, Report, Stat, median};
use drover_kcl::Home;
use drover_provider_local::hosts::{FleetGuard, HostFleet, HostInfo, HostSpec};
use drover_state::{Event, RunStatus, Store};
use serde_json::{Value, json};

/// Steps of the sequence case.
const STEPS: usize = 10;

/// Hosts get addresses from 127.0.241.1 on, 250 per /24.
const FIRST_NET: u8 = 241;

/// Set by Ctrl-C: the running command is killed and the hosts deleted.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    Drover,
    Pdsh,
    Pssh,
    Ansible,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Drover => "drover",
            Tool::Pdsh => "pdsh",
            Tool::Pssh => "parallel-ssh",
            Tool::Ansible => "ansible",
        }
    }

    fn parse(s: &str) -> Result<Tool> {
        Ok(match s {
            "drover" => Tool::Drover,
            "pdsh" => Tool::Pdsh,
            "pssh" | "parallel-ssh" => Tool::Pssh,
            "ansible" => Tool::Ansible,
            other => bail!("unknown tool {other} (drover, pdsh, pssh, ansible)"),
        })
    }
}

/// The two cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    One,
    Ten,
}

impl Case {
    /// Its name in the JSON.
    fn key(self) -> &'static str {
        match self {
            Case::One => "one",
            Case::Ten => "ten",
        }
    }

    fn steps(self) -> usize {
        match self {
            Case::One => 1,
            Case::Ten => STEPS,
        }
    }
}

/// One measured command (or sequence of commands).
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    wall: Duration,
    /// User + system CPU of the process and the children it waited for.
    cpu: Duration,
    /// Largest resident set of the process or a waited-for child, KiB.
    maxrss_kib: i64,
    /// Busy CPU time of the whole machine meanwhile (client and hosts).
    machine_cpu: Duration,
    /// Peak of the summed PSS of the process tree (sampled), KiB.
    tree_pss_kib: i64,
    /// Most processes in the tree at once (sampled).
    tree_procs: usize,
}

impl Sample {
    fn then(self, next: Sample) -> Sample {
        Sample {
            wall: self.wall + next.wall,
            cpu: self.cpu + next.cpu,
            maxrss_kib: self.maxrss_kib.max(next.maxrss_kib),
            machine_cpu: self.machine_cpu + next.machine_cpu,
            tree_pss_kib: self.tree_pss_kib.max(next.tree_pss_kib),
            tree_procs: self.tree_procs.max(next.tree_procs),
        }
    }
}

/// What is measured: the physical limit, or one tool on one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Physical,
    Run(Tool, Case),
}

impl Item {
    fn label(self) -> String {
        match self {
            Item::Physical => "the physical limit".into(),
            Item::Run(t, c) => format!("{}, {} step(s)", t.name(), c.steps()),
        }
    }

    /// drover gets every run: its medians are what the ratios divide by.
    fn always(self) -> bool {
        matches!(self, Item::Run(Tool::Drover, _))
    }
}

/// Everything measured at one size.
#[derive(Debug, Default)]
struct Measured {
    samples: BTreeMap<(Tool, Case), Vec<Sample>>,
    breakdowns: Vec<(Case, Breakdown)>,
    /// The physical limit: one host, every host at once; with OpenSSH's
    /// default key exchange (sntrup761x25519, what pdsh, parallel-ssh
    /// and ansible use here) and with curve25519-sha256 (what drover's
    /// russh negotiates with this sshd: it prefers mlkem768x25519, which
    /// OpenSSH 9.2 lacks, then curve25519).
    single: Vec<Sample>,
    all: Vec<Sample>,
    single_curve: Vec<Sample>,
    all_curve: Vec<Sample>,
    /// Seconds the first run of each item took.
    first: BTreeMap<Item, f64>,
    /// Items skipped at this size: their projected duration, and why.
    skipped: BTreeMap<Item, (f64, &'static str)>,
}

/// How often the memory of a measured command's process tree is sampled
/// after its first 0.7 s (each sample reads /proc of every process in it).
const TREE_SAMPLE: Duration = Duration::from_secs(1);

/// Seconds to create (and delete) one host, for planning the deadline
/// (measured: 250 hosts in ~8 s, 32 at once, and a few s to delete them).
const CREATE_PER_HOST: f64 = 0.05;

/// ssh options choosing drover's key exchange.
const CURVE25519: &[&str] = &["-o", "KexAlgorithms=curve25519-sha256"];

/// Where drover's time went in one run, from its journal (ms).
#[derive(Debug, Clone, Copy, Default)]
struct Breakdown {
    /// Process start to RunStarted: KCL evaluation, planning, store.
    startup: f64,
    /// RunStarted to the first task started.
    to_first_task: f64,
    /// First task started to the last task finished.
    tasks: f64,
    /// Last task finished to the process' exit: closing connections,
    /// removing remote directories, the report.
    finish: f64,
    /// Mean duration of a host's first task (includes the SSH connect).
    first_task: f64,
    /// Mean duration of the other tasks.
    later_task: f64,
}

struct Args {
    sizes: Vec<usize>,
    runs: usize,
    tools: Vec<Tool>,
    timeout: Duration,
    budget: Duration,
    max_run: Duration,
    deadline: Option<Duration>,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        sizes: vec![10, 50, 100, 250],
        runs: 3,
        tools: vec![Tool::Drover, Tool::Pdsh, Tool::Pssh, Tool::Ansible],
        timeout: Duration::from_secs(600),
        budget: Duration::from_secs(300),
        max_run: Duration::from_secs(120),
        deadline: None,
        json: None,
    };
    let usage = "usage: drover-bench-fleet [--sizes 10,50,100,250] [--runs 3] [--tools drover,pdsh,pssh,ansible] [--budget SECS] [--max-run SECS] [--deadline SECS] [--timeout SECS] [--json FILE]";
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value; {usage}"));
        match arg.as_str() {
            "--sizes" => {
                a.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--sizes N,N,...")?;
            }
            "--runs" => a.runs = value()?.parse().context("--runs R")?,
            "--tools" => a.tools = value()?.split(',').map(Tool::parse).collect::<Result<_>>()?,
            "--timeout" => a.timeout = Duration::from_secs(value()?.parse().context("--timeout SECS")?),
            "--budget" => a.budget = Duration::from_secs(value()?.parse().context("--budget SECS")?),
            "--max-run" => a.max_run = Duration::from_secs(value()?.parse().context("--max-run SECS")?),
            "--deadline" => a.deadline = Some(Duration::from_secs(value()?.parse().context("--deadline SECS")?)),
            "--json" => a.json = Some(value()?.into()),
            other => bail!("unknown argument {other}; {usage}"),
        }
    }
    if a.runs == 0 || a.sizes.contains(&0) || a.sizes.iter().any(|&n| n > 250 * 14) {
        bail!("--runs must be >= 1 and sizes between 1 and 3500");
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let started = Instant::now();
    let mut report = Report::new("fleet", "Fleet fan-out");
    report.params = json!({
        "sizes": args.sizes, "runs": args.runs,
        "tools": args.tools.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "budget_s": args.budget.as_secs(), "max_run_s": args.max_run.as_secs(),
        "deadline_s": args.deadline.map(|d| d.as_secs()), "timeout_s": args.timeout.as_secs(),
        "steps": STEPS,
    });
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("drover-bench-fleet makes real hosts (sshd in namespaces) and needs root");
    }
    // Orphans of a measured command (ansible's ControlPersist masters)
    // become our children, so the memory of its tree includes them.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let real = Home::discover()?;
    let real = real.root().to_path_buf();
    let drover = sibling("drover")?;
    let venv = real.join(".venv");
    for (tool, program) in [
        (Tool::Pdsh, "pdsh"),
        (Tool::Pssh, "parallel-ssh"),
        (Tool::Ansible, "ansible"),
    ] {
        if args.tools.contains(&tool) && program_path(program, &venv).is_none() {
            bail!("{program} not found (make debian installs pdsh and pssh; ansible-core is in requirements.txt)");
        }
    }
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    INTERRUPTED.store(true, Ordering::SeqCst);
                    eprintln!("interrupted: ending the running command, then deleting the hosts");
                }
            });
        }
    });

    // Not under /tmp: hosts whose state is under /tmp share the machine's
    // /tmp (see hosts/boot.sh); real servers have their own.
    let base = tempfile::Builder::new().prefix("dbf.").tempdir_in("/var/tmp")?;
    let home = base.path().join("home");
    generate_home(&real, &home)?;
    println!(
        "fleet fan-out benchmark: sizes {:?}, {} runs each (median, min–max), tools {}{}",
        args.sizes,
        args.runs,
        args.tools.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
        args.deadline
            .map_or(String::new(), |d| format!(", deadline {} s", d.as_secs()))
    );
    let versions = json!({
        "ansible": version_of(&venv.join("bin/ansible")),
        "pdsh": version_of_flag("pdsh", "-V"),
        "parallel-ssh": version_of_flag("parallel-ssh", "--version"),
        "ssh": version_of_flag("ssh", "-V"),
    });
    println!(
        "machine: {} cores, {:.1} GiB; drover {}; versions {versions}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_total_gib(),
        drover.display(),
    );
    let bench = Bench {
        drover,
        venv,
        home,
        runs: args.runs,
        tools: args.tools.clone(),
        timeout: args.timeout,
        budget: args.budget,
        max_run: args.max_run,
        deadline: args.deadline.map(|d| started + d),
        sizes: args.sizes.clone(),
        history: Default::default(),
    };
    let mut summary = String::new();
    let mut sizes_json = Vec::new();
    let mut memory: Vec<Memory> = Vec::new();
    let mut headlines: Vec<Headline> = Vec::new();
    // The figures so far, complete or not: written after every size, so
    // that an interrupted run keeps what it measured.
    let save = |report: &mut Report, headlines: &[Headline], memory: &[Memory], sizes: &[Value], complete: bool| {
        report.headlines = headlines.to_vec();
        let memory_json = memory_headlines(memory, report, complete);
        report.results = json!({
            "versions": versions,
            "sizes": sizes,
            "memory": memory_json,
            "complete": complete,
            "total_s": started.elapsed().as_secs_f64(),
        });
    };
    for &n in &args.sizes {
        if let Some(why) = bench.cannot_fit(n) {
            println!("\n== {n} hosts: skipped: {why}");
            let _ = writeln!(summary, "| {n} | skipped: {why} |");
            sizes_json.push(json!({"hosts": n, "status": "skipped", "reason": why}));
            continue;
        }
        let dir = base.path().join(format!("n{n}"));
        std::fs::create_dir_all(&dir)?;
        let result = bench.size(n, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(done) => {
                summary.push_str(&done.line);
                sizes_json.push(done.json);
                headlines.extend(done.headlines);
                memory.extend(done.memory);
            }
            Err(e) => {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    return Err(e);
                }
                eprintln!("size {n} failed: {e:#}");
                let _ = writeln!(summary, "| {n} | failed: {e} |");
                sizes_json.push(json!({"hosts": n, "status": "failed", "reason": format!("{e:#}")}));
            }
        }
        save(&mut report, &headlines, &memory, &sizes_json, false);
        report.save(args.json.as_deref())?;
    }
    println!(
        "\nsummary: median wall time, s (1 command / 10 steps); ratio = peer time / drover time; ≈: 10 × one invocation\n\
         | hosts | drover 1 | drover 10 | pdsh | parallel-ssh | ansible | ssh, default kex: 1 / all | ssh, curve25519: 1 / all |\n\
         |---|---|---|---|---|---|---|---|\n{summary}"
    );
    save(&mut report, &headlines, &memory, &sizes_json, true);
    report.write(args.json.as_deref())
}

/// drover's and each peer's memory at one size, for the memory rows.
#[derive(Debug, Clone)]
struct Memory {
    hosts: usize,
    /// drover's peak RSS, one command (exact: wait4), KiB.
    drover_maxrss_kib: i64,
    /// Peak summed PSS of each tool's tree, one command, KiB.
    tree_pss_kib: BTreeMap<Tool, i64>,
}

/// The memory rows of the top table, from the largest size measured, and
/// their JSON.
fn memory_headlines(memory: &[Memory], report: &mut Report, print: bool) -> Value {
    let (Some(small), Some(large)) = (memory.first(), memory.last()) else {
        return Value::Null;
    };
    let mib = |kib: i64| kib as f64 / 1024.0;
    let n = large.hosts;
    let per_conn = (large.hosts > small.hosts)
        .then(|| (large.drover_maxrss_kib - small.drover_maxrss_kib) as f64 / (large.hosts - small.hosts) as f64);
    // drover is one process: its peak RSS counts every page it maps, even
    // those shared with other processes, so any bias is against it. A
    // peer is a tree of processes (an ssh per host): their PSS summed
    // counts the pages they share once.
    let mut h = Headline::new(
        format!("memory-{n}"),
        format!(
            "orchestrator memory holding a connection to each of {n} hosts, 1 command (drover: peak RSS; peers: peak PSS summed over their process tree)"
        ),
        "MiB",
        Better::Lower,
        Figure::single(mib(large.drover_maxrss_kib)),
    );
    for (tool, kib) in &large.tree_pss_kib {
        if *tool != Tool::Drover {
            h = h.peer(tool.name(), Figure::single(mib(*kib)));
        }
    }
    if print {
        println!(
            "\nmemory at {n} hosts, 1 command: drover peak RSS {:.1} MiB; peak PSS of the process tree:",
            mib(large.drover_maxrss_kib)
        );
        for (tool, kib) in &large.tree_pss_kib {
            println!(
                "  {:<13} {:>8.1} MiB  ({:.0} KiB per host)",
                tool.name(),
                mib(*kib),
                *kib as f64 / n as f64
            );
        }
    }
    if let Some(pc) = per_conn {
        if print {
            println!(
                "  drover per connection: (RSS at {n} hosts {:.1} MiB - at {} hosts {:.1} MiB) / {} = {pc:.0} KiB",
                mib(large.drover_maxrss_kib),
                small.hosts,
                mib(small.drover_maxrss_kib),
                large.hosts - small.hosts
            );
        }
        let mut per = Headline::new(
            format!("memory-per-host-{n}"),
            format!("orchestrator memory per host connected, {n} hosts"),
            "KiB",
            Better::Lower,
            Figure::single(pc),
        );
        for (tool, kib) in &large.tree_pss_kib {
            if *tool != Tool::Drover {
                per = per.peer(tool.name(), Figure::single(*kib as f64 / n as f64));
            }
        }
        report.headlines.push(h);
        report.headlines.push(per.note(format!(
            "drover: its RSS at {n} hosts minus its RSS at {} hosts, per added host (one SSH connection each); peers: their tree's PSS at {n} hosts / {n}",
            small.hosts
        )));
    } else {
        report.headlines.push(h);
    }
    json!({
        "hosts": n,
        "smallest_hosts": small.hosts,
        "drover_maxrss_kib": {"smallest": small.drover_maxrss_kib, "largest": large.drover_maxrss_kib},
        "drover_kib_per_connection": per_conn,
        "tree_pss_kib": large.tree_pss_kib.iter().map(|(t, k)| (t.name().to_string(), json!(k))).collect::<serde_json::Map<_, _>>(),
        "by_size": memory.iter().map(|m| json!({
            "hosts": m.hosts,
            "drover_maxrss_kib": m.drover_maxrss_kib,
            "tree_pss_kib": m.tree_pss_kib.iter().map(|(t, k)| (t.name().to_string(), json!(k))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

/// What one size produced.
struct SizeDone {
    /// The line of the summary table.
    line: String,
    json: Value,
    headlines: Vec<Headline>,
    memory: Option<Memory>,
}

struct Bench {
    drover: PathBuf,
    venv: PathBuf,
    home: PathBuf,
    runs: usize,
    tools: Vec<Tool>,
    timeout: Duration,
    budget: Duration,
    max_run: Duration,
    /// When everything must be done (--deadline).
    deadline: Option<Instant>,
    /// Every size, in order (the deadline keeps time for the larger ones).
    sizes: Vec<usize>,
    /// The last measurement of each item: (hosts, seconds).
    history: std::cell::RefCell<BTreeMap<Item, (usize, f64)>>,
}

/// A fleet of N hosts and the files every tool needs to reach them.
struct Fleet {
    dir: PathBuf,
    hosts: Vec<HostInfo>,
    /// ssh options without the destination: `-F /dev/null -i KEY -o ...`.
    ssh_options: Vec<String>,
    fleet: HostFleet,
    hostsfile: PathBuf,
    inventory: PathBuf,
    /// The hosts' `unshare` processes (our children, reaped by the fleet).
    host_parents: std::collections::BTreeSet<i32>,
}

impl Bench {
    /// Creates the fleet of `n` hosts, measures everything, deletes the
    /// fleet; what to report.
    fn size(&self, n: usize, dir: &Path) -> Result<SizeDone> {
        println!("\n== {n} hosts ==");
        // Where drover's local provider keeps its fleet for a state in
        // `dir`: the runs below find these hosts there.
        let fleet = HostFleet::new(dir.join("providers/local/fleet"))?;
        let guard = FleetGuard::new(fleet.clone());
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let created = Instant::now();
        let hosts = rt.block_on(create_hosts(&guard, n))?;
        let creation = created.elapsed();
        let (rss, pss) = sshd_memory(&hosts);
        println!(
            "created {n} hosts in {:.2} s ({:.0} ms per host, 32 at once); each sshd (idle, PID 1 of its host): RSS {:.1} MiB, PSS {:.2} MiB",
            creation.as_secs_f64(),
            creation.as_secs_f64() * 1e3 / n as f64,
            rss / 1024.0,
            pss / 1024.0
        );
        let f = self.prepare(dir, fleet, hosts)?;
        let measured = Instant::now();
        let result = self.measure(&f);
        let measure_s = measured.elapsed().as_secs_f64();
        let deleting = Instant::now();
        drop(guard);
        let deletion = deleting.elapsed();
        println!("deleted {n} hosts in {:.2} s", deletion.as_secs_f64());
        let mut done = result?;
        if let Value::Object(o) = &mut done.json {
            o.insert("create_s".into(), json!(creation.as_secs_f64()));
            o.insert("delete_s".into(), json!(deletion.as_secs_f64()));
            o.insert("measure_s".into(), json!(measure_s));
            o.insert("sshd_idle_rss_kib".into(), json!(rss));
            o.insert("sshd_idle_pss_kib".into(), json!(pss));
        }
        Ok(done)
    }

    /// Seconds left before the deadline (None: no deadline).
    fn time_left(&self) -> Option<f64> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64())
    }

    /// One round of drover (both cases) at `n` hosts, projected.
    fn drover_round(&self, n: usize) -> f64 {
        [Case::One, Case::Ten]
            .iter()
            .filter_map(|&c| self.projection(Item::Run(Tool::Drover, c), n))
            .sum()
    }

    /// Time to keep for drover's runs still to come: `rounds` more rounds
    /// at `n` hosts, and every round at each larger size (with its hosts'
    /// creation and one measurement of the physical limit).
    fn reserve(&self, n: usize, rounds: usize) -> f64 {
        let later: f64 = self
            .sizes
            .iter()
            .filter(|&&m| m > n)
            .map(|&m| {
                self.drover_round(m) * self.runs as f64
                    + self.projection(Item::Physical, m).unwrap_or(0.0)
                    + CREATE_PER_HOST * m as f64
            })
            .sum();
        self.drover_round(n) * rounds as f64 + later
    }

    /// Why size `n` cannot be measured before the deadline, if so.
    fn cannot_fit(&self, n: usize) -> Option<String> {
        let left = self.time_left()?;
        let need =
            CREATE_PER_HOST * n as f64 + self.drover_round(n) + self.projection(Item::Physical, n).unwrap_or(0.0);
        (need > left).then(|| {
            format!(
                "one round of drover with the physical limit would take ~{need:.0} s (projected), {left:.0} s left before --deadline"
            )
        })
    }
    fn prepare(&self, dir: &Path, fleet: HostFleet, hosts: Vec<HostInfo>) -> Result<Fleet> {
        let mut ssh_options = fleet.ssh_args(&hosts[0]);
        // Drop "-p 22 root@address": every tool names user and host itself.
        ssh_options.truncate(ssh_options.len() - 3);
        let hostsfile = dir.join("hosts.txt");
        let text: String = hosts.iter().map(|h| format!("{}\n", h.address)).collect();
        std::fs::write(&hostsfile, text)?;

        // Ansible: an INI inventory, an empty configuration, a playbook.
        let common = format!(
            "-F /dev/null -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
            fleet.known_hosts().display()
        );
        let mut inv = String::from("[fleet]\n");
        for h in &hosts {
            let _ = writeln!(
                inv,
                "{} ansible_host={} ansible_user=root ansible_ssh_private_key_file={} ansible_ssh_common_args='{common}'",
                h.hostname,
                h.address,
                fleet.client_key().display()
            );
        }
        let inventory = dir.join("inventory.ini");
        std::fs::write(&inventory, inv)?;
        std::fs::write(dir.join("ansible.cfg"), "")?;
        let mut play = String::from("- hosts: all\n  gather_facts: false\n  tasks:\n");
        for i in 0..STEPS {
            let _ = write!(play, "    - name: step {i}\n      shell: \"true\"\n");
        }
        std::fs::write(dir.join("play.yml"), play)?;
        for d in ["ansible/local", "ansible/remote", "ansible/home"] {
            std::fs::create_dir_all(dir.join(d))?;
        }

        // drover: the two workflows.
        let n = hosts.len();
        for case in [Case::One, Case::Ten] {
            std::fs::write(workflow_file(dir, case), workflow(&hosts, case, n))?;
        }
        let host_parents = hosts.iter().filter_map(|h| parent_of(h.pid as i32)).collect();
        Ok(Fleet {
            dir: dir.to_path_buf(),
            host_parents,
            hosts,
            ssh_options,
            fleet,
            hostsfile,
            inventory,
        })
    }

    fn measure(&self, f: &Fleet) -> Result<SizeDone> {
        let n = f.hosts.len();
        let mut items = vec![Item::Physical];
        for case in [Case::One, Case::Ten] {
            items.extend(self.tools.iter().map(|&t| Item::Run(t, case)));
        }
        let mut m = Measured::default();
        let size_started = Instant::now();
        for round in 0..self.runs {
            // Interleaved rounds, so that a drift of the machine hits
            // every tool alike.
            for (k, &item) in items.iter().enumerate() {
                if m.skipped.contains_key(&item) {
                    continue;
                }
                // How long one run should take: its first run at this
                // size, else projected from a smaller one.
                let expected = m.first.get(&item).copied().or_else(|| self.estimate(item, n));
                if round == 0
                    && let Some(p) = self.projection(item, n)
                    && p > self.max_run.as_secs_f64()
                {
                    println!(
                        "  {}: skipped at {n} hosts: one run would take ~{p:.0} s (projected from a smaller fleet; --max-run {})",
                        item.label(),
                        self.max_run.as_secs()
                    );
                    m.skipped.insert(item, (p, "max-run"));
                    continue;
                }
                if round > 0 && !item.always() {
                    // Further runs of the peers' slow cases only while the
                    // size stays within its budget.
                    let first = m.first.get(&item).copied().unwrap_or(0.0);
                    if size_started.elapsed().as_secs_f64() + first > self.budget.as_secs_f64() {
                        continue;
                    }
                }
                if let Some(left) = self.time_left() {
                    // drover's runs, and the physical limit's first, only
                    // need to fit; the others must leave time for drover's
                    // runs to come (the rest of this round, later rounds,
                    // larger sizes).
                    let priority = item.always() || (round == 0 && item == Item::Physical);
                    let reserve = if priority {
                        0.0
                    } else {
                        let rest_of_round: f64 = items[k + 1..]
                            .iter()
                            .filter(|i| i.always())
                            .filter_map(|&i| m.first.get(&i).copied().or_else(|| self.projection(i, n)))
                            .sum();
                        rest_of_round + self.reserve(n, self.runs - round - 1)
                    };
                    // Unknown (nothing measured yet, not even the other
                    // case): free at the first size, too risky later.
                    let first_size = self.history.borrow().is_empty() || n <= self.sizes[0];
                    let need = match expected {
                        Some(v) => v,
                        None if first_size => 0.0,
                        None => f64::INFINITY,
                    };
                    if need + reserve > left {
                        if round == 0 {
                            println!(
                                "  {}: skipped at {n} hosts: {} does not fit in the {left:.0} s left before --deadline{}",
                                item.label(),
                                if need.is_finite() {
                                    format!("~{need:.0} s (projected)")
                                } else {
                                    "a run of unknown duration".to_string()
                                },
                                if reserve > 0.0 {
                                    format!(" with ~{reserve:.0} s kept for drover's runs to come")
                                } else {
                                    String::new()
                                }
                            );
                            m.skipped
                                .insert(item, (if need.is_finite() { need } else { f64::NAN }, "deadline"));
                        }
                        continue;
                    }
                }
                let started = Instant::now();
                match item {
                    Item::Physical => {
                        let host = &f.hosts[round % n];
                        m.single.push(self.ssh_one(f, host, &[])?);
                        m.all.push(self.ssh_all(f, &[])?);
                        m.single_curve.push(self.ssh_one(f, host, CURVE25519)?);
                        m.all_curve.push(self.ssh_all(f, CURVE25519)?);
                    }
                    Item::Run(tool, case) => {
                        let s = match tool {
                            Tool::Drover => {
                                let (s, b) = self.drover(f, case, round)?;
                                m.breakdowns.push((case, b));
                                s
                            }
                            Tool::Pdsh => self.pdsh(f, case)?,
                            Tool::Pssh => self.pssh(f, case)?,
                            Tool::Ansible => self.ansible(f, case, round)?,
                        };
                        m.samples.entry((tool, case)).or_default().push(s);
                    }
                }
                // With the wait for the hosts to settle: what the run
                // costs the time budget.
                settle(f);
                let took = started.elapsed().as_secs_f64();
                m.first.entry(item).or_insert(took);
                self.history.borrow_mut().insert(item, (n, took));
            }
            println!(
                "  round {} done ({:.0} s so far)",
                round + 1,
                size_started.elapsed().as_secs_f64()
            );
        }
        println!("  measured {n} hosts in {:.0} s", size_started.elapsed().as_secs_f64());
        Ok(self.report(n, &m))
    }

    /// How long one run of `item` would take at `n` hosts: projected from
    /// its own last run, else from the other case's (10 steps: ten times
    /// one command; one command: a tenth of 10 steps).
    fn estimate(&self, item: Item, n: usize) -> Option<f64> {
        self.projection(item, n).or_else(|| match item {
            Item::Run(tool, Case::Ten) => self.projection(Item::Run(tool, Case::One), n).map(|v| v * STEPS as f64),
            Item::Run(tool, Case::One) => self.projection(Item::Run(tool, Case::Ten), n).map(|v| v / STEPS as f64),
            Item::Physical => None,
        })
    }

    /// How long one run of `item` would take at `n` hosts, from its last
    /// measurement on a smaller fleet (linear in the number of hosts).
    fn projection(&self, item: Item, n: usize) -> Option<f64> {
        let (at, secs) = *self.history.borrow().get(&item)?;
        (at <= n).then(|| secs * n as f64 / at as f64)
    }

    fn report(&self, n: usize, m: &Measured) -> SizeDone {
        let wall = |tool: Tool, case: Case| m.samples.get(&(tool, case)).map(|v| walls(v));
        let med = |tool: Tool, case: Case| wall(tool, case).map(|v| median(&v));
        // pdsh and parallel-ssh run the ten steps as ten identical
        // invocations: when that case was skipped, ten times one
        // invocation is what it would take (checked where both ran).
        let estimate = |tool: Tool, case: Case| match (med(tool, case), case, tool) {
            (Some(v), _, _) => Some((v, false)),
            (None, Case::Ten, Tool::Pdsh | Tool::Pssh) => med(tool, Case::One).map(|v| (v * STEPS as f64, true)),
            _ => None,
        };
        let skipped = |tool: Tool, case: Case| m.skipped.get(&Item::Run(tool, case)).copied();
        let of = |tool: Tool, case: Case, f: fn(&Sample) -> f64| {
            m.samples
                .get(&(tool, case))
                .map(|v| median(&v.iter().map(f).collect::<Vec<_>>()))
        };
        let max_of = |tool: Tool, case: Case, f: fn(&Sample) -> i64| {
            m.samples.get(&(tool, case)).and_then(|v| v.iter().map(f).max())
        };
        println!("\n{n} hosts: wall time, s: median (min–max) of n runs");
        println!(
            "  {:<13} {:>27} {:>29} {:>13} {:>10} {:>16}",
            "tool", "1 command", "10 steps", "client CPU s", "peak RSS", "tree PSS 1 / 10"
        );
        for &tool in &self.tools {
            let cell = |case: Case| match wall(tool, case) {
                Some(v) => format!("{} n={}", spread(&v), v.len()),
                None => match (skipped(tool, case), estimate(tool, case)) {
                    (_, Some((v, true))) => format!("skipped (≈{v:.1} = 10 × 1 cmd)"),
                    (Some((p, why)), _) if p.is_finite() => format!("skipped ({why}, ~{p:.0} s)"),
                    (Some((_, why)), _) => format!("skipped ({why})"),
                    _ => "-".into(),
                },
            };
            let cpu: Vec<String> = [Case::One, Case::Ten]
                .iter()
                .map(|&c| of(tool, c, |s| s.cpu.as_secs_f64()).map_or("-".into(), |v| format!("{v:.2}")))
                .collect();
            let rss = m
                .samples
                .iter()
                .filter(|((t, _), _)| *t == tool)
                .flat_map(|(_, v)| v.iter().map(|s| s.maxrss_kib))
                .max()
                .unwrap_or(0);
            let tree: Vec<String> = [Case::One, Case::Ten]
                .iter()
                .map(|&c| {
                    max_of(tool, c, |s| s.tree_pss_kib).map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
                })
                .collect();
            println!(
                "  {:<13} {:>27} {:>29} {:>13} {:>6.1} MiB {:>12} MiB",
                tool.name(),
                cell(Case::One),
                cell(Case::Ten),
                cpu.join(" / "),
                rss as f64 / 1024.0,
                tree.join(" / ")
            );
        }
        let cpu_of = |v: &[Sample]| median(&v.iter().map(|s| s.machine_cpu.as_secs_f64()).collect::<Vec<_>>());
        if !m.single.is_empty() {
            println!(
                "  physical limit, ssh with OpenSSH's default kex (sntrup761x25519, as the peers): 1 host {}; {n} at once {} ({:.2} core-s)",
                spread(&walls(&m.single)),
                spread(&walls(&m.all)),
                cpu_of(&m.all)
            );
            println!(
                "  physical limit, ssh with kex curve25519-sha256 (what drover negotiates):        1 host {}; {n} at once {} ({:.2} core-s)",
                spread(&walls(&m.single_curve)),
                spread(&walls(&m.all_curve)),
                cpu_of(&m.all_curve)
            );
        }
        println!("  machine CPU busy meanwhile (every process: client and hosts), core-seconds, median:");
        for &tool in &self.tools {
            let busy = |case: Case| {
                m.samples
                    .get(&(tool, case))
                    .map_or("-".to_string(), |v| format!("{:.2}", cpu_of(v)))
            };
            println!(
                "    {:<13} 1 command {:>7}   10 steps {:>7}",
                tool.name(),
                busy(Case::One),
                busy(Case::Ten)
            );
        }
        let mut breakdown_json = serde_json::Map::new();
        for case in [Case::One, Case::Ten] {
            let b: Vec<&Breakdown> = m
                .breakdowns
                .iter()
                .filter(|(c, _)| *c == case)
                .map(|(_, b)| b)
                .collect();
            if b.is_empty() {
                continue;
            }
            let x = |f: fn(&Breakdown) -> f64| median(&b.iter().map(|x| f(x)).collect::<Vec<_>>());
            println!(
                "  drover, {} task(s) per host, from its journal, ms (median): start-up (exec, KCL, plan, store) {:.0}, to first task {:.0}, tasks {:.0}, finish (cleanup, report, exit) {:.0}; a host's first task {:.1} (incl. connect), each later task {:.1}",
                case.steps(),
                x(|b| b.startup),
                x(|b| b.to_first_task),
                x(|b| b.tasks),
                x(|b| b.finish),
                x(|b| b.first_task),
                x(|b| b.later_task),
            );
            breakdown_json.insert(
                case.key().into(),
                json!({
                    "startup": x(|b| b.startup), "to_first_task": x(|b| b.to_first_task),
                    "tasks": x(|b| b.tasks), "finish": x(|b| b.finish),
                    "first_task": x(|b| b.first_task), "later_task": x(|b| b.later_task),
                }),
            );
        }

        // The JSON of every tool and case.
        let mut tools_json = serde_json::Map::new();
        for &tool in &self.tools {
            let mut cases = serde_json::Map::new();
            for case in [Case::One, Case::Ten] {
                let v = m.samples.get(&(tool, case));
                let stat = |unit, f: fn(&Sample) -> f64| v.map(|v| Stat::new(unit, v.iter().map(f).collect()).json());
                cases.insert(
                    case.key().into(),
                    json!({
                        "wall": stat("s", |s| s.wall.as_secs_f64()),
                        "cpu": stat("s", |s| s.cpu.as_secs_f64()),
                        "machine_cpu": stat("core-s", |s| s.machine_cpu.as_secs_f64()),
                        "maxrss_kib": max_of(tool, case, |s| s.maxrss_kib),
                        "tree_pss_kib": max_of(tool, case, |s| s.tree_pss_kib),
                        "tree_procs": max_of(tool, case, |s| s.tree_procs as i64),
                        "skipped": skipped(tool, case).map(|(p, why)| json!({"reason": why, "projected_s": p})),
                        "estimate_s": match estimate(tool, case) {
                            Some((v, true)) => json!(v),
                            _ => Value::Null,
                        },
                    }),
                );
            }
            tools_json.insert(tool.name().into(), Value::Object(cases));
        }
        let phys = |v: &[Sample]| (!v.is_empty()).then(|| Stat::new("s", walls(v)).json());
        let phys_cpu = |v: &[Sample]| {
            (!v.is_empty()).then(|| Stat::new("core-s", v.iter().map(|s| s.machine_cpu.as_secs_f64()).collect()).json())
        };
        let physical = json!({
            "ssh_one_default": phys(&m.single),
            "ssh_all_default": phys(&m.all),
            "ssh_one_curve25519": phys(&m.single_curve),
            "ssh_all_curve25519": phys(&m.all_curve),
            "machine_cpu_all_default": phys_cpu(&m.all),
            "machine_cpu_all_curve25519": phys_cpu(&m.all_curve),
            "skipped": m.skipped.get(&Item::Physical).map(|(p, why)| json!({"reason": why, "projected_s": p})),
        });

        let mut line = format!("| {n} |");
        let d1 = med(Tool::Drover, Case::One);
        let d10 = med(Tool::Drover, Case::Ten);
        let cell = |v: Option<(f64, bool)>| match v {
            Some((v, false)) => format!("{v:.2}"),
            Some((v, true)) => format!("≈{v:.1}"),
            None => "skipped".into(),
        };
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        let mut ratios_json = serde_json::Map::new();
        let mut targets_json = Vec::new();
        let mut headlines = Vec::new();
        if let (Some(d1), Some(d10)) = (d1, d10) {
            let _ = write!(line, " {d1:.2} | {d10:.2} |");
            println!("  ratios, peer time / drover time (> 1: drover is faster):");
            for &tool in self.tools.iter().filter(|t| **t != Tool::Drover) {
                let ratio = |case: Case, d: f64| match estimate(tool, case) {
                    Some((v, false)) => format!("{:.2}×", v / d),
                    Some((v, true)) => format!("≈{:.1}×", v / d),
                    None => "-".into(),
                };
                println!(
                    "    vs {:<13} 1 command {:>7}   10 steps {:>7}",
                    tool.name(),
                    ratio(Case::One, d1),
                    ratio(Case::Ten, d10)
                );
                let _ = write!(
                    line,
                    " {} / {} ({} / {}) |",
                    cell(estimate(tool, Case::One)),
                    cell(estimate(tool, Case::Ten)),
                    ratio(Case::One, d1),
                    ratio(Case::Ten, d10)
                );
                let r = |case: Case, d: f64| {
                    estimate(tool, case).map(|(v, guess)| json!({"ratio": v / d, "estimate": guess}))
                };
                ratios_json.insert(
                    tool.name().into(),
                    json!({"one": r(Case::One, d1), "ten": r(Case::Ten, d10)}),
                );
            }
            // The targets: 1 command no slower than pdsh and >= 5× faster
            // than ansible; 10 steps >= 3× faster than pdsh and >= 5×
            // faster than ansible.
            for (case, d, pdsh_x) in [(Case::One, d1, 1.0), (Case::Ten, d10, 3.0)] {
                let mut parts = Vec::new();
                let mut met = true;
                if let Some((p, guess)) = estimate(Tool::Pdsh, case) {
                    let ok = p / d >= pdsh_x;
                    met &= ok;
                    parts.push(format!(
                        "{pdsh_x:.0}× pdsh: {}{:.2}× ({})",
                        if guess { "≈" } else { "" },
                        p / d,
                        verdict(ok)
                    ));
                    targets_json.push(json!({"case": case.key(), "what": format!(">= {pdsh_x:.0}× pdsh"), "ratio": p / d, "estimate": guess, "met": ok}));
                }
                if let Some(a) = med(Tool::Ansible, case) {
                    let ok = a / d >= 5.0;
                    met &= ok;
                    parts.push(format!("5× ansible: {:.1}× ({})", a / d, verdict(ok)));
                    targets_json.push(json!({"case": case.key(), "what": ">= 5× ansible", "ratio": a / d, "estimate": false, "met": ok}));
                }
                if !parts.is_empty() {
                    println!("  targets, {} step(s): {}", case.steps(), parts.join("; "));
                }
                let what = match case {
                    Case::One => format!("fleet fan-out: 1 command on {n} hosts"),
                    Case::Ten => format!("fleet fan-out: {STEPS} steps on {n} hosts"),
                };
                let Some(drover) = wall(Tool::Drover, case) else {
                    continue;
                };
                let mut h = Headline::new(
                    format!("fleet-{}-{n}", case.steps()),
                    what,
                    "s",
                    Better::Lower,
                    Stat::new("s", drover).figure(),
                );
                for &tool in self.tools.iter().filter(|t| **t != Tool::Drover) {
                    let fig = match (wall(tool, case), estimate(tool, case), skipped(tool, case)) {
                        (Some(v), _, _) => Stat::new("s", v).figure(),
                        (None, Some((v, true)), _) => Figure::estimated(v, "10 × its 1-command time"),
                        (None, _, Some((p, why))) if p.is_finite() => {
                            Figure::estimated(p, format!("not run (--{why})"))
                        }
                        _ => continue,
                    };
                    h = h.peer(tool.name(), fig);
                }
                if let Some(all) = (!m.all_curve.is_empty()).then(|| median(&walls(&m.all_curve))) {
                    let default = median(&walls(&m.all));
                    h = h.limit(
                        format!(
                            "`ssh host true` to all {n} hosts at once with drover's key exchange (curve25519; with the peers', OpenSSH's default: {default:.2} s){}",
                            if case == Case::Ten { "; 10 steps need at least this handshake per host" } else { "" }
                        ),
                        Figure::single(all),
                    );
                }
                // The target as judged here: what was not measured says so.
                let pdsh = match estimate(Tool::Pdsh, case) {
                    Some((_, false)) => format!(">= {pdsh_x:.0}× pdsh"),
                    Some((_, true)) => format!(">= {pdsh_x:.0}× pdsh (on its ≈ estimate)"),
                    None => format!(">= {pdsh_x:.0}× pdsh (not measured)"),
                };
                let ansible = if med(Tool::Ansible, case).is_some() {
                    ">= 5× ansible"
                } else {
                    ">= 5× ansible (not measured)"
                };
                if !parts.is_empty() {
                    h = h.target(format!("{pdsh}, {ansible}"), met);
                }
                headlines.push(h);
            }
        } else {
            line.push_str(" - | - |");
        }
        if m.single.is_empty() {
            line.push_str(" - | - |\n");
        } else {
            let _ = writeln!(
                line,
                " {:.2} / {:.2} | {:.2} / {:.2} |",
                median(&walls(&m.single)),
                median(&walls(&m.all)),
                median(&walls(&m.single_curve)),
                median(&walls(&m.all_curve))
            );
        }
        let memory = max_of(Tool::Drover, Case::One, |s| s.maxrss_kib).map(|drover_maxrss_kib| Memory {
            hosts: n,
            drover_maxrss_kib,
            tree_pss_kib: self
                .tools
                .iter()
                .filter_map(|&t| max_of(t, Case::One, |s| s.tree_pss_kib).map(|k| (t, k)))
                .collect(),
        });
        SizeDone {
            line,
            json: json!({
                "hosts": n,
                "status": "measured",
                "physical": physical,
                "tools": tools_json,
                "ratios": ratios_json,
                "targets": targets_json,
                "drover_breakdown_ms": breakdown_json,
            }),
            headlines,
            memory,
        }
    }

    /// `drover run` of the case's workflow, on a fresh state database.
    fn drover(&self, f: &Fleet, case: Case, run: usize) -> Result<(Sample, Breakdown)> {
        let state = f.dir.join("state.db");
        for suffix in ["", "-wal", "-shm"] {
            let mut p = state.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        let mut cmd = Command::new(&self.drover);
        cmd.arg("run")
            .arg(workflow_file(&f.dir, case))
            .arg("--state")
            .arg(&state)
            .env("DROVER_HOME", &self.home)
            .env("DROVER_VENV", &self.venv)
            .current_dir(&f.dir);
        let spawned_ms = epoch_ms();
        let sample = run_cmd(
            &mut cmd,
            self.timeout,
            &f.dir.join(format!("drover-{}-{run}", case.steps())),
        )?;
        let exited_ms = spawned_ms + sample.wall.as_secs_f64() * 1e3;
        // The run succeeded, every task of it.
        let store = Store::open(&state)?;
        let runs = store.runs()?;
        let [record] = runs.as_slice() else {
            bail!("drover: expected one run in {}, found {}", state.display(), runs.len());
        };
        if record.status != RunStatus::Succeeded {
            bail!("drover: run {} ended {}", record.id, record.status.as_str());
        }
        let journal = store.journal(&record.id)?;
        let expected = f.hosts.len() * case.steps();
        let mut first_of_host: BTreeMap<String, String> = BTreeMap::new();
        let (mut run_started, mut first, mut last) = (None, i64::MAX, 0i64);
        let (mut firsts, mut laters) = (Vec::new(), Vec::new());
        let mut succeeded = 0;
        for e in &journal {
            match &e.event {
                Event::RunStarted { .. } => run_started = Some(e.at_ms),
                Event::TaskStarted { .. } => {
                    let node = e.node.clone().unwrap_or_default();
                    first = first.min(e.at_ms);
                    let host = node.rsplit('@').next().unwrap_or_default().to_string();
                    first_of_host.entry(host).or_insert(node);
                }
                Event::TaskSucceeded { duration_ms, .. } => {
                    succeeded += 1;
                    last = last.max(e.at_ms);
                    let node = e.node.clone().unwrap_or_default();
                    let host = node.rsplit('@').next().unwrap_or_default().to_string();
                    let is_first = first_of_host.get(&host) == Some(&node);
                    if is_first {
                        firsts.push(*duration_ms as f64);
                    } else {
                        laters.push(*duration_ms as f64);
                    }
                }
                Event::TaskFailed { error, .. } => bail!("drover: task {:?} failed: {error}", e.node),
                _ => {}
            }
        }
        if succeeded != expected {
            bail!("drover: {succeeded} tasks succeeded, expected {expected}");
        }
        let run_started = run_started.context("drover: no RunStarted in the journal")? as f64;
        let b = Breakdown {
            startup: run_started - spawned_ms,
            to_first_task: first as f64 - run_started,
            tasks: (last - first) as f64,
            finish: exited_ms - last as f64,
            first_task: mean(&firsts),
            later_task: mean(&laters),
        };
        Ok((sample, b))
    }

    fn pdsh(&self, f: &Fleet, case: Case) -> Result<Sample> {
        let n = f.hosts.len();
        // pdsh splits PDSH_SSH_ARGS on spaces; %u and %h are its user and
        // host.
        let args = format!("{} -l%u %h", f.ssh_options.join(" "));
        let mut total = Sample::default();
        for step in 0..case.steps() {
            let mut cmd = Command::new("pdsh");
            cmd.args(["-S", "-R", "ssh", "-f", &n.to_string(), "-l", "root", "-w"])
                .arg(format!("^{}", f.hostsfile.display()))
                .arg("true")
                .env("PDSH_SSH_ARGS", &args)
                .current_dir(&f.dir);
            let s = run_cmd(&mut cmd, self.timeout, &f.dir.join(format!("pdsh-{step}")))?;
            expect_quiet(&f.dir.join(format!("pdsh-{step}")), "pdsh")?;
            total = total.then(s);
        }
        Ok(total)
    }

    fn pssh(&self, f: &Fleet, case: Case) -> Result<Sample> {
        let n = f.hosts.len();
        let mut total = Sample::default();
        for step in 0..case.steps() {
            let mut cmd = Command::new("parallel-ssh");
            cmd.arg("-h")
                .arg(&f.hostsfile)
                .args(["-l", "root", "-p", &n.to_string(), "-t", "60", "-x"])
                .arg(f.ssh_options.join(" "))
                .arg("true")
                .current_dir(&f.dir);
            let log = f.dir.join(format!("pssh-{step}"));
            let s = run_cmd(&mut cmd, self.timeout, &log)?;
            let out = std::fs::read_to_string(log.with_extension("out")).unwrap_or_default();
            let ok = out.matches("[SUCCESS]").count();
            if ok != n {
                bail!("parallel-ssh: {ok} of {n} hosts reported SUCCESS:\n{}", tail(&out, 10));
            }
            total = total.then(s);
        }
        Ok(total)
    }

    fn ansible(&self, f: &Fleet, case: Case, run: usize) -> Result<Sample> {
        let n = f.hosts.len().to_string();
        // A fresh control-socket directory: every run starts without
        // connections (ControlPersist keeps them 60 s by default).
        let cp = f.dir.join(format!("cp{}{run}", case.steps()));
        std::fs::create_dir_all(&cp)?;
        let bin = self.venv.join("bin");
        let mut cmd = match case {
            Case::One => {
                let mut c = Command::new(bin.join("ansible"));
                c.arg("all")
                    .arg("-i")
                    .arg(&f.inventory)
                    .args(["-m", "shell", "-a", "true", "-f", &n]);
                c
            }
            Case::Ten => {
                let mut c = Command::new(bin.join("ansible-playbook"));
                c.arg("-i")
                    .arg(&f.inventory)
                    .args(["-f", &n])
                    .arg(f.dir.join("play.yml"));
                c
            }
        };
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        );
        cmd.env("PATH", path)
            .env("ANSIBLE_CONFIG", f.dir.join("ansible.cfg"))
            .env("ANSIBLE_HOST_KEY_CHECKING", "True")
            .env("ANSIBLE_PYTHON_INTERPRETER", "auto_silent")
            .env("ANSIBLE_LOCAL_TEMP", f.dir.join("ansible/local"))
            .env("ANSIBLE_REMOTE_TEMP", f.dir.join("ansible/remote"))
            .env("ANSIBLE_HOME", f.dir.join("ansible/home"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &cp)
            .env("ANSIBLE_NOCOLOR", "1")
            .current_dir(&f.dir);
        let log = f.dir.join(format!("ansible-{}-{run}", case.steps()));
        let result = run_cmd(&mut cmd, self.timeout, &log);
        close_control_masters(&cp);
        let s = result?;
        let out = std::fs::read_to_string(log.with_extension("out")).unwrap_or_default();
        let hosts = f.hosts.len();
        match case {
            Case::One => {
                let ok = out.matches("| CHANGED | rc=0").count();
                if ok != hosts {
                    bail!("ansible: {ok} of {hosts} hosts CHANGED rc=0:\n{}", tail(&out, 10));
                }
            }
            Case::Ten => {
                let ok = out
                    .lines()
                    .filter(|l| l.contains(&format!("changed={STEPS}")) && l.contains("failed=0"))
                    .count();
                if ok != hosts {
                    bail!(
                        "ansible-playbook: {ok} of {hosts} hosts with changed={STEPS} failed=0:\n{}",
                        tail(&out, 10)
                    );
                }
            }
        }
        Ok(s)
    }

    /// One bare `ssh host true`, with `extra` options.
    fn ssh_one(&self, f: &Fleet, host: &HostInfo, extra: &[&str]) -> Result<Sample> {
        let mut cmd = Command::new("ssh");
        cmd.args(extra).args(f.fleet.ssh_args(host)).arg("true");
        run_cmd(&mut cmd, self.timeout, &f.dir.join("ssh-one"))
    }

    /// `ssh host true` to every host at once, with `extra` options.
    fn ssh_all(&self, f: &Fleet, extra: &[&str]) -> Result<Sample> {
        let before = machine_busy();
        let started = Instant::now();
        let mut children = Vec::new();
        for h in &f.hosts {
            let child = Command::new("ssh")
                .args(extra)
                .args(f.fleet.ssh_args(h))
                .arg("true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("ssh")?;
            children.push((h.hostname.clone(), child));
        }
        let mut failed = Vec::new();
        for (host, child) in children {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                failed.push(format!(
                    "{host}: {} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        let wall = started.elapsed();
        if !failed.is_empty() {
            bail!("ssh to every host: {} failed: {}", failed.len(), failed.join("; "));
        }
        Ok(Sample {
            wall,
            machine_cpu: machine_busy().saturating_sub(before),
            ..Sample::default()
        })
    }
}

/// Waits until no host has a session left (every sshd is alone again:
/// connections of the last measurement closed, their processes gone), at
/// most 10 s, then a moment more, so that one measurement's tail does not
/// land in the next. Reaps the orphans that ended meanwhile (this process
/// is their subreaper).
fn settle(f: &Fleet) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let busy = |h: &HostInfo| {
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", h.pid)).is_ok_and(|c| !c.trim().is_empty())
    };
    while f.hosts.iter().any(busy) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    reap_orphans(f);
}

/// Reaps our children that ended and are none of the hosts' (a host's
/// `unshare` parent is reaped by the fleet itself).
fn reap_orphans(f: &Fleet) {
    for pid in children_of(std::process::id() as i32) {
        if f.host_parents.contains(&pid) || proc_state(pid) != Some('Z') {
            continue;
        }
        let mut status = 0;
        // SAFETY: reaps one specific child that has exited; nothing else
        // waits for it (every command we start is waited for by pid).
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    }
}

/// The state letter of a process (R, S, Z, ...).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The parent of a process.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The children of every thread of process `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

/// Proportional set size of a process, KiB (0 when it is gone).
fn pss_kib(pid: i32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Samples the memory of a measured command's process tree: every
/// process descending from `root`, and every child of this process that
/// was not there before (`before`: orphans of the command reparented to
/// us). Returns when `stop` is set: the peak summed PSS (KiB) and the
/// most processes at once.
fn sample_tree(root: i32, before: &std::collections::BTreeSet<i32>, stop: &AtomicBool) -> (i64, usize) {
    let (mut peak, mut procs) = (0i64, 0usize);
    // Early samples for short commands, then sparse ones: a sample reads
    // /proc of every process in the tree (~0.1 ms each: ~25 ms at 250
    // hosts), CPU the measured command competes for.
    let mut waits = [100u64, 200, 400].into_iter().map(Duration::from_millis);
    loop {
        let wait = waits.next().unwrap_or(TREE_SAMPLE);
        // Sleep in small steps so that a short command is not held up.
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return (peak, procs);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut stack: Vec<i32> = children_of(std::process::id() as i32)
            .into_iter()
            .filter(|p| !before.contains(p) && *p != root)
            .collect();
        stack.push(root);
        let (mut sum, mut count) = (0i64, 0usize);
        let mut seen = std::collections::BTreeSet::new();
        while let Some(p) = stack.pop() {
            if !seen.insert(p) {
                continue;
            }
            sum += pss_kib(p);
            count += 1;
            stack.extend(children_of(p));
        }
        peak = peak.max(sum);
        procs = procs.max(count);
    }
}

/// Creates hosts `fb001...` on 127.0.241.1..., 32 at once.
async fn create_hosts(guard: &FleetGuard, n: usize) -> Result<Vec<HostInfo>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut made = Vec::with_capacity(n);
    // FleetGuard is not 'static; create through a scoped stream of futures.
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let sem = sem.clone();
        pending.push(async move {
            let _permit = sem.acquire().await;
            let spec = HostSpec {
                hostname: hostname(i),
                address: address(i).to_string(),
            };
            guard.create(&spec).await
        });
    }
    let results = join_all(pending).await;
    for r in results {
        made.push(r?);
    }
    Ok(made)
}

/// Polls every future to completion, concurrently, on this task.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futures.iter_mut().enumerate() {
            if out[i].is_some() {
                continue;
            }
            match f.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => out[i] = Some(v),
                std::task::Poll::Pending => pending = true,
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn hostname(i: usize) -> String {
    format!("fb{i:04}")
}

fn address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, FIRST_NET + (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Mean RSS and PSS of the hosts' sshd processes, KiB.
fn sshd_memory(hosts: &[HostInfo]) -> (f64, f64) {
    let field = |file: &str, key: &str| -> f64 {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0.0)
    };
    let rss: Vec<f64> = hosts
        .iter()
        .map(|h| field(&format!("/proc/{}/status", h.pid), "VmRSS:"))
        .collect();
    let pss: Vec<f64> = hosts
        .iter()
        .map(|h| field(&format!("/proc/{}/smaps_rollup", h.pid), "Pss:"))
        .collect();
    (mean(&rss), mean(&pss))
}

/// A drover home: the real schemas and local provider, and taskservs
/// step-0..9, each requiring the previous one, whose scripts run `true`.
fn generate_home(real: &Path, home: &Path) -> Result<()> {
    std::fs::create_dir_all(home.join("providers"))?;
    std::os::unix::fs::symlink(real.join("schemas"), home.join("schemas"))?;
    std::os::unix::fs::symlink(real.join("providers/local"), home.join("providers/local"))?;
    for i in 0..STEPS {
        let ts = home.join(format!("taskservs/step-{i}"));
        std::fs::create_dir_all(ts.join("kcl"))?;
        std::fs::create_dir_all(ts.join("scripts"))?;
        let requires = if i == 0 {
            String::new()
        } else {
            format!("\"step-{}\"", i - 1)
        };
        std::fs::write(
            ts.join("kcl/dependencies.k"),
            format!(
                "import drover\n\ndependencies = drover.TaskservDependencies {{\n    name = \"step-{i}\"\n    requires = [{requires}]\n}}\n"
            ),
        )?;
        for s in ["install.sh", "remove.sh", "check.sh"] {
            let p = ts.join("scripts").join(s);
            std::fs::write(&p, "#!/bin/sh\ntrue\n")?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

fn workflow_file(dir: &Path, case: Case) -> PathBuf {
    dir.join(format!("fleet-{}.k", case.steps()))
}

/// The servers are the fleet's hosts (they exist: no create operation;
/// `drover run` finds them with the provider's status); one operation
/// installs step-0, or step-0..9 in their `requires` order, on every host.
fn workflow(hosts: &[HostInfo], case: Case, parallel: usize) -> String {
    let all: Vec<String> = (0..STEPS).map(|i| format!("\"step-{i}\"")).collect();
    let items = &all[..case.steps()];
    let mut servers = String::new();
    for h in hosts {
        let _ = writeln!(
            servers,
            "        drover.ServerDef {{hostname = \"{}\", provider = \"local\", plan = \"small\", address = \"{}\", taskservs = _steps}}",
            h.hostname, h.address
        );
    }
    format!(
        r#"import drover

_steps = [{all}]

workflow = drover.WorkflowDef {{
    name = "fleet-{steps}"
    max_parallel = {parallel}
    servers = [
{servers}    ]
    operations = [
        drover.OperationDef {{id = "steps", type = "create", target = "taskserv", items = [{items}]}}
    ]
    retry_policy = drover.RetryPolicy {{max_attempts = 1, initial_delay = 0, max_delay = 0, jitter = False}}
}}
"#,
        all = all.join(", "),
        steps = case.steps(),
        items = items.join(", "),
    )
}

/// Runs `cmd` (stdout and stderr to `<log>.out` / `<log>.err`) in its own
/// process group; its wall time and resource use. Fails unless it exits 0
/// within `timeout`.
fn run_cmd(cmd: &mut Command, timeout: Duration, log: &Path) -> Result<Sample> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    let out = std::fs::File::create(log.with_extension("out"))?;
    let err = std::fs::File::create(log.with_extension("err"))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let present: std::collections::BTreeSet<i32> = children_of(std::process::id() as i32).into_iter().collect();
    let before = machine_busy();
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    let pid = child.id() as libc::pid_t;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || sample_tree(pid, &present, &stop))
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child, whose pid the std handle does
        // not reap (it is never waited through the handle).
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let _ = tx.send((r, status, usage, Instant::now()));
    });
    let deadline = started + timeout;
    let (r, status, usage, ended) = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(v) => break v,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if INTERRUPTED.load(Ordering::SeqCst) || Instant::now() > deadline {
                    // SAFETY: signals the process group of the child we
                    // started (its pid is its group id).
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    let _ = rx.recv();
                    stop.store(true, Ordering::Relaxed);
                    bail!(
                        "{:?} {}; see {}",
                        cmd.get_program(),
                        if INTERRUPTED.load(Ordering::SeqCst) {
                            "interrupted".to_string()
                        } else {
                            format!("timed out after {} s", timeout.as_secs())
                        },
                        log.with_extension("err").display()
                    );
                }
            }
            Err(e) => bail!("waiting for {:?}: {e}", cmd.get_program()),
        }
    };
    drop(child);
    stop.store(true, Ordering::Relaxed);
    let (tree_pss_kib, tree_procs) = sampler.join().unwrap_or_default();
    if r != pid {
        bail!("wait4 on {:?} failed", cmd.get_program());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let stderr = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
        let stdout = std::fs::read_to_string(log.with_extension("out")).unwrap_or_default();
        bail!(
            "{:?} {:?} failed (wait status {status:#x}):\n{}\n{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            tail(&stderr, 10),
            tail(&stdout, 10)
        );
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Ok(Sample {
        wall: ended - started,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        maxrss_kib: usage.ru_maxrss,
        machine_cpu: machine_busy().saturating_sub(before),
        tree_pss_kib,
        tree_procs,
    })
}

/// Fails if a command that should print nothing (pdsh: `true` prints
/// nothing, errors go to stderr) printed something on stderr.
fn expect_quiet(log: &Path, what: &str) -> Result<()> {
    let err = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
    if !err.trim().is_empty() {
        bail!("{what} reported errors:\n{}", tail(&err, 10));
    }
    Ok(())
}

/// Ends the ControlPersist masters ansible left in `dir`.
fn close_control_masters(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let children: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            Command::new("ssh")
                .args(["-F", "/dev/null", "-o"])
                .arg(format!("ControlPath={}", e.path().display()))
                .args(["-O", "exit", "drover-bench"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        })
        .collect();
    for mut c in children {
        let _ = c.wait();
    }
}

/// Busy CPU time of the machine so far (/proc/stat: all but idle and
/// iowait).
fn machine_busy() -> Duration {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return Duration::ZERO;
    };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 5 {
        return Duration::ZERO;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: u64 = v.iter().take(8).sum::<u64>() - v[3] - v[4];
    Duration::from_millis(busy * 1000 / hz)
}

/// A program next to this one (the release build of drover).
fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    if !p.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p drover-cli)",
            p.display()
        );
    }
    Ok(p)
}

fn program_path(name: &str, venv: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(venv.join("bin"))
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn version_of(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "not found".into())
}

/// The first line a program prints (on stdout or stderr) for `flag`.
fn version_of_flag(program: &str, flag: &str) -> String {
    Command::new(program)
        .arg(flag)
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "not found".into())
}

fn mem_total_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0)
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn walls(v: &[Sample]) -> Vec<f64> {
    v.iter().map(|s| s.wall.as_secs_f64()).collect()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

fn spread(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let prec = if median(v) < 1.0 { 3 } else { 2 };
    format!("{:.prec$} ({:.prec$}–{:.prec$})", median(v), s[0], s[s.len() - 1])
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
