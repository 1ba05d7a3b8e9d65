//! Fleet fan-out: drover against pdsh, parallel-ssh and ansible on fleets of
//! N real hosts, side by side, in one run, like for like.
//!
//! Two fleets, each made by the benchmark itself at every size N:
//!
//! - **local**: N hosts made with drover's local provider backend
//!   ([`HostFleet`]: each an sshd in its own namespaces on its own loopback
//!   address, with its own /tmp; the fleet lives under /var/tmp, not /tmp),
//!   reached as root on port 22; drover's servers are of provider `local`.
//! - **existing**: N hosts started with drover-testkit ([`TestFleet`]: real
//!   OpenSSH sshd processes, each in namespaces of its own), reached as the
//!   non-root user `fleet` on port 2222; drover's servers are of provider
//!   `static` (machines that already exist) with `ssh = drover.SshAccess
//!   {user, port, key_file, known_hosts}`. The command needs no root, so no
//!   `become`.
//!
//! On each, for each tool, the wall time of
//!
//! 1. one command (`true`) on every host, and
//! 2. a 10-step sequence on every host (ten commands one after another per
//!    host),
//!
//! with the same user, port, key, known_hosts checked strictly, and N hosts
//! at once:
//!
//! - drover: `drover run` of a generated workflow whose servers are the
//!   fleet's hosts and whose one operation installs `step-0` (case 1) or
//!   `step-0..9` (case 2, a `requires` chain) with scripts that run `true`.
//!   A fresh state database per run, next to the fleet.
//! - pdsh -R ssh, parallel-ssh: one invocation per step.
//! - ansible: the ad-hoc `shell` module (case 1), a playbook of ten `shell`
//!   tasks (case 2); default settings (ControlPersist on), with a fresh
//!   control-socket directory per run so every run starts cold.
//! - the physical limit: one bare `ssh host true`, and N of them at once.
//!
//! Key exchange: drover's SSH client (russh) and OpenSSH's client do not
//! pick the same key exchange by default, and on 2 cores the handshake is
//! most of a one-command run. So every peer (and the physical limit) is
//! measured twice: made to use drover's key exchange (`-o
//! KexAlgorithms=...`: pdsh through PDSH_SSH_ARGS_APPEND, parallel-ssh `-O`,
//! ansible ANSIBLE_SSH_EXTRA_ARGS), the like-for-like figure every ratio and
//! target is judged on, and with OpenSSH's default, shown beside it. Which
//! key exchange drover negotiates is not assumed: before the fleets, a
//! probe host (drover-testkit, its sshd raised to LogLevel DEBUG1) logs
//! `kex: algorithm: ...` for one connection of each tool, in each mode; the
//! peers are then made to use what drover negotiated, and the benchmark
//! fails if a peer negotiates anything else. Both fleets' sshd run with
//! OpenSSH's default algorithms (no KexAlgorithms or Ciphers line, checked).
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
//! has a session left. Prints, per fleet and size: medians (min–max) of
//! wall time, ratios drover vs each peer, client CPU, peak RSS, machine
//! CPU, and where drover's time goes (from its journal). Every host is
//! deleted at the end, also on error, panic or Ctrl-C. Needs root,
//! openssh-server, pdsh, pssh and ansible-core in the project's .venv.
//!
//! Time budget (the hosts share this machine's cores with the tools, so a
//! large fleet is slow for everybody): runs are made in rounds; drover's
//! every run is made, a peer's second and later runs only while the fleet
//! and size are within `--budget` seconds. A measurement whose one run is
//! projected (linearly in the number of hosts, from the previous size) to
//! take more than `--max-run` seconds is skipped and reported so; for pdsh
//! and parallel-ssh, whose ten steps are ten identical invocations, ten
//! times one invocation is then shown as an estimate (marked ≈, never used
//! for a target).
//!
//! `--deadline SECS` bounds the whole benchmark, by priority: drover's runs
//! and the first physical limit come first, then the peers with drover's
//! key exchange, then the peers with OpenSSH's default. A measurement is
//! made only when its projected duration fits in the time left with what
//! every higher priority still needs (this size and fleet, and the later
//! ones, projected linearly); a fleet and size that cannot fit one round of
//! drover is skipped. Everything skipped is reported with the reason.
//!
//! `--large N,...`: sizes measured after every `--sizes` one, on the
//! existing fleet only, one command only, with drover, pdsh (`-f N`,
//! drover's key exchange) and the floor (`ssh host true` to all N at once,
//! drover's key exchange), `--large-runs` runs each (1); not bound by
//! `--max-run` (but by `--deadline`). The benchmark raises its open-files
//! limit (RLIMIT_NOFILE, inherited by every tool) to 65,536: at 1,000 hosts
//! drover holds a socket per host, pdsh and the floor a pipe per `ssh`.
//!
//! Targets (issue 15), judged on the peers with drover's key exchange and
//! the floor measured in this run, at 100 hosts on each fleet: 1 command,
//! drover at most 1.15× the floor and faster than pdsh and parallel-ssh;
//! 10 steps, drover at most 2.5× the floor and at least 4× faster than
//! pdsh; both cases at least 5× faster than ansible; memory, drover's RSS
//! per open connection at most pdsh's tree PSS per host at the largest
//! size; and at 1,000 hosts (`--large 1000`), 1 command, drover faster than
//! pdsh. Each reads met / NOT MET, or not measured (with why).
//!
//! `--json FILE` writes every figure (see `drover_bench::figures`);
//! `--help` lists the options.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
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
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use drover_bench::figures::{Better, Figure, Headline, Report, Stat, median};
use drover_kcl::Home;
use drover_provider_local::hosts::{FleetGuard, HostFleet, HostInfo, HostSpec};
use drover_state::{Event, RunStatus, Store};
use drover_testkit::TestFleet;
use serde_json::{Value, json};

/// Steps of the sequence case.
const STEPS: usize = 10;

/// Local hosts get addresses from 127.0.241.1 on, 250 per /24.
const FIRST_NET: u8 = 241;

/// The port of the existing hosts' sshd.
const EXISTING_PORT: u16 = 2222;

/// The fleet size the targets are judged at (each fleet).
const TARGET_HOSTS: usize = 100;

/// The `--large` size the large-fleet target is judged at.
const LARGE_TARGET_HOSTS: usize = 1000;

/// 1 command: drover at most this many times the floor (`ssh host true`
/// to every host at once, drover's key exchange).
const ONE_FLOOR_X: f64 = 1.15;

/// 10 steps: drover at most this many times the same floor.
const TEN_FLOOR_X: f64 = 2.5;

/// 10 steps: drover at least this many times faster than pdsh.
const TEN_PDSH_X: f64 = 4.0;

/// Both cases: drover at least this many times faster than ansible.
const ANSIBLE_X: f64 = 5.0;

/// Open files the benchmark (and every tool it starts) may have: a
/// 1,000-host run holds a pipe per `ssh` (pdsh, the floor) or a socket per
/// connection (drover), above the usual soft limit of 1,024.
const NOFILE_WANTED: u64 = 65536;

/// What the peers are made to use until the probe has said what drover
/// negotiates (the probe runs first; a run without it fails).
const KEX_UNPROBED: &str = "curve25519-sha256";

/// Set by Ctrl-C: the running command is killed and the hosts deleted.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Tool {
    Drover,
    Pdsh,
    #[value(alias = "parallel-ssh")]
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
}

/// The two fleets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum FleetKind {
    /// Hosts made by drover's local provider backend (HostFleet): root on
    /// port 22, provider `local`.
    Local,
    /// Existing hosts started by the benchmark with drover-testkit: the
    /// non-root user `fleet` on port 2222, provider `static`.
    Existing,
}

impl FleetKind {
    /// Its name in the JSON and on the command line.
    fn key(self) -> &'static str {
        match self {
            FleetKind::Local => "local",
            FleetKind::Existing => "existing",
        }
    }

    /// Its name in a headline.
    fn label(self) -> &'static str {
        match self {
            FleetKind::Local => "drover's local hosts",
            FleetKind::Existing => "existing hosts (static provider, non-root user)",
        }
    }

    fn describe(self) -> String {
        match self {
            FleetKind::Local => {
                "hosts made by drover's local provider (HostFleet), reached as root on port 22; drover's servers: provider local".into()
            }
            FleetKind::Existing => format!(
                "existing hosts started by the benchmark (drover-testkit), reached as the non-root user {} on port {EXISTING_PORT}; drover's servers: provider static",
                drover_testkit::DEFAULT_USER
            ),
        }
    }
}

/// Which key exchange an SSH client is made to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kex {
    /// The one drover negotiates (found by the probe): the peers are made
    /// to use it with `-o KexAlgorithms=...`. drover itself is always here.
    Drover,
    /// OpenSSH's default choice (no option).
    Default,
}

impl Kex {
    fn label(self) -> &'static str {
        match self {
            Kex::Drover => "drover's kex",
            Kex::Default => "OpenSSH's default kex",
        }
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

/// What is measured: the physical limit, or one tool on one case with one
/// key exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Physical,
    Run(Tool, Case, Kex),
    /// `drover exec FILE -- true`: one command without a workflow (issue
    /// 16), beside the peers' one command.
    Exec,
}

impl Item {
    fn label(self) -> String {
        match self {
            Item::Physical => "the physical limit".into(),
            Item::Exec => "drover exec -- true".into(),
            Item::Run(Tool::Drover, c, _) => format!("drover, {} step(s)", c.steps()),
            Item::Run(t, c, k) => format!("{}, {} step(s), {}", t.name(), c.steps(), k.label()),
        }
    }

    /// drover gets every run: its medians are what the ratios divide by.
    fn always(self) -> bool {
        matches!(self, Item::Run(Tool::Drover, ..) | Item::Exec)
    }

    /// Its priority under --deadline (0 first): drover's runs and the
    /// physical limit's first, then the peers with drover's key exchange
    /// (and the physical limit's later runs), then the peers with
    /// OpenSSH's default.
    fn rank(self, round: usize) -> u8 {
        match self {
            Item::Physical => u8::from(round > 0),
            Item::Exec => 0,
            Item::Run(Tool::Drover, ..) => 0,
            Item::Run(_, _, Kex::Drover) => 1,
            Item::Run(_, _, Kex::Default) => 2,
        }
    }
}

/// Everything measured at one size of one fleet.
#[derive(Debug, Default)]
struct Measured {
    samples: BTreeMap<(Tool, Case, Kex), Vec<Sample>>,
    breakdowns: Vec<(Case, Breakdown)>,
    /// The physical limit: one host, every host at once; with OpenSSH's
    /// default key exchange and with drover's.
    single_default: Vec<Sample>,
    all_default: Vec<Sample>,
    single_drover: Vec<Sample>,
    all_drover: Vec<Sample>,
    /// `drover exec -- true` (see [`Item::Exec`]).
    exec: Vec<Sample>,
    /// Seconds the first run of each item took.
    first: BTreeMap<Item, f64>,
    /// Items skipped at this size: their projected duration, and why.
    skipped: BTreeMap<Item, (f64, &'static str)>,
    /// At a --large size, the runs that failed (the others are still
    /// measured): why.
    failed: BTreeMap<Item, String>,
}

/// How often the memory of a measured command's process tree is sampled
/// after its first 0.7 s (each sample reads /proc of every process in it).
const TREE_SAMPLE: Duration = Duration::from_secs(1);

/// Seconds to create (and delete) one host, for planning the deadline
/// (measured: 250 local hosts in ~8 s, 32 at once, and a few s to delete
/// them; testkit hosts start faster).
const CREATE_PER_HOST: f64 = 0.05;

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

/// Fleet fan-out: drover against pdsh, parallel-ssh and ansible on fleets
/// of N real hosts made on this machine, like for like (same hosts, user,
/// port, key, known_hosts and key exchange). Needs root.
///
/// Two fleets per size: `local` (hosts made by drover's local provider,
/// root on port 22) and `existing` (hosts started with drover-testkit, the
/// non-root user `fleet` on port 2222, drover's `static` provider). Every
/// peer runs with drover's key exchange (found by a probe first, never
/// assumed) and with OpenSSH's default. See the top of
/// engine/bench/src/fleet.rs for the method.
#[derive(Debug, Parser)]
#[command(name = "drover-bench-fleet", version, about, long_about)]
struct Args {
    /// Fleet sizes, hosts, in the order measured (e.g. 10,50,100).
    #[arg(long, value_delimiter = ',', default_value = "10,50,100", value_name = "N,N,...",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=3500))]
    sizes: Vec<usize>,
    /// drover's runs per fleet and size (median, min–max); a peer's second
    /// and later runs only within --budget.
    #[arg(long, default_value_t = 3, value_name = "R", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
    /// The tools to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "drover,pdsh,pssh,ansible",
        value_name = "TOOL,..."
    )]
    tools: Vec<Tool>,
    /// Large fleet sizes, measured after --sizes on the existing fleet
    /// only, one command only, with drover, pdsh (drover's key exchange) and
    /// the floor (`ssh host true` to every host at once, drover's key
    /// exchange); not --max-run, but within --deadline. None by default.
    #[arg(long, value_delimiter = ',', value_name = "N,N,...",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=3500))]
    large: Vec<usize>,
    /// Runs of each measurement at a --large size.
    #[arg(long, default_value_t = 1, value_name = "R", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    large_runs: usize,
    /// The fleets to measure on, each at every size.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "local,existing",
        value_name = "FLEET,..."
    )]
    fleets: Vec<FleetKind>,
    /// Seconds per fleet and size within which the peers get further runs.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    budget: u64,
    /// Skip a measurement whose one run is projected (from a smaller fleet)
    /// to take longer than this.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    max_run: u64,
    /// Finish everything within this many seconds of the start (see the
    /// priorities in fleet.rs); none by default.
    #[arg(long, value_name = "SECS")]
    deadline: Option<u64>,
    /// Kill a measured command (and fail) after this long.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    timeout: u64,
    /// Write every figure to this JSON file (read by scripts/bench.py).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    args.tools.sort();
    args.tools.dedup();
    args.fleets.sort();
    args.fleets.dedup();
    let started = Instant::now();
    let mut report = Report::new("fleet", "Fleet fan-out");
    report.params = json!({
        "sizes": args.sizes, "runs": args.runs,
        "large": args.large, "large_runs": args.large_runs, "large_fleet": FleetKind::Existing.key(),
        "large_tools": ["drover", "pdsh"],
        "target_hosts": TARGET_HOSTS, "large_target_hosts": LARGE_TARGET_HOSTS,
        "tools": args.tools.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "fleets": args.fleets.iter().map(|k| k.key()).collect::<Vec<_>>(),
        "budget_s": args.budget, "max_run_s": args.max_run,
        "deadline_s": args.deadline, "timeout_s": args.timeout,
        "steps": STEPS,
        "existing_user": drover_testkit::DEFAULT_USER, "existing_port": EXISTING_PORT,
    });
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("drover-bench-fleet makes real hosts (sshd in namespaces) and needs root");
    }
    // Orphans of a measured command (ansible's ControlPersist masters)
    // become our children, so the memory of its tree includes them.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let nofile = raise_nofile();
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
        "fleet fan-out benchmark: sizes {:?}, fleets {}, {} runs each (median, min–max), tools {}{}",
        args.sizes,
        args.fleets.iter().map(|k| k.key()).collect::<Vec<_>>().join(", "),
        args.runs,
        args.tools.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
        args.deadline.map_or(String::new(), |d| format!(", deadline {d} s"))
    );
    if !args.large.is_empty() {
        println!(
            "large sizes {:?} ({} fleet, 1 command only: drover, pdsh with drover's kex, the floor; {} run(s) each)",
            args.large,
            FleetKind::Existing.key(),
            args.large_runs
        );
    }
    println!("open files (RLIMIT_NOFILE, inherited by every tool): {nofile}");
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
    let mut pairs: Vec<(usize, FleetKind)> = args
        .sizes
        .iter()
        .flat_map(|&n| args.fleets.iter().map(move |&k| (n, k)))
        .collect();
    // The large sizes come last: only the existing fleet, one command.
    let large_from = pairs.len();
    pairs.extend(args.large.iter().map(|&n| (n, FleetKind::Existing)));
    let mut bench = Bench {
        drover,
        venv,
        home,
        runs: args.runs,
        large_runs: args.large_runs,
        large_from,
        tools: args.tools.clone(),
        timeout: Duration::from_secs(args.timeout),
        budget: Duration::from_secs(args.budget),
        max_run: Duration::from_secs(args.max_run),
        deadline: args.deadline.map(|d| started + Duration::from_secs(d)),
        sizes: args.sizes.clone(),
        pairs: pairs.clone(),
        history: Default::default(),
        kex: KEX_UNPROBED.into(),
        default_kex: "OpenSSH's default".into(),
    };
    // Which key exchange drover negotiates, and each peer in each mode.
    let kex = bench.probe_kex(base.path()).context("the key exchange probe")?;

    let mut summary = String::new();
    let mut sizes_json = Vec::new();
    let mut memory: Vec<Memory> = Vec::new();
    let mut headlines: Vec<Headline> = Vec::new();
    let mut verdicts: Vec<Value> = Vec::new();
    // The figures so far, complete or not: written after every size, so
    // that an interrupted run keeps what it measured.
    let save = |report: &mut Report,
                headlines: &[Headline],
                memory: &[Memory],
                sizes: &[Value],
                verdicts: &[Value],
                complete: bool| {
        report.headlines = headlines.to_vec();
        let memory_json = memory_headlines(memory, report, complete);
        let targets = target_summary(&args.fleets, &args.large, sizes, verdicts, &memory_json);
        if complete {
            print_targets(&targets);
        }
        report.results = json!({
            "versions": versions,
            "kex": kex,
            "fleets": args.fleets.iter().map(|k| json!({"fleet": k.key(), "label": k.label(), "description": k.describe()})).collect::<Vec<_>>(),
            "sizes": sizes,
            "memory": memory_json,
            "targets": targets,
            "complete": complete,
            "total_s": started.elapsed().as_secs_f64(),
        });
    };
    for (idx, &(n, kind)) in pairs.iter().enumerate() {
        if let Some(why) = bench.cannot_fit(idx) {
            println!("\n== {n} hosts, {} fleet: skipped: {why}", kind.key());
            let _ = writeln!(summary, "| {} | {n} | skipped: {why} |", kind.key());
            sizes_json.push(json!({"fleet": kind.key(), "hosts": n, "large": bench.is_large(idx), "status": "skipped", "reason": why}));
            continue;
        }
        let dir = base.path().join(format!("{}-n{n}-{idx}", kind.key()));
        std::fs::create_dir_all(&dir)?;
        let result = bench.size(idx, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(done) => {
                summary.push_str(&done.line);
                sizes_json.push(done.json);
                headlines.extend(done.headlines);
                memory.extend(done.memory);
                verdicts.extend(done.verdicts);
            }
            Err(e) => {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    return Err(e);
                }
                eprintln!("{n} hosts, {} fleet, failed: {e:#}", kind.key());
                let _ = writeln!(summary, "| {} | {n} | failed: {e} |", kind.key());
                sizes_json
                    .push(json!({"fleet": kind.key(), "hosts": n, "large": bench.is_large(idx), "status": "failed", "reason": format!("{e:#}")}));
            }
        }
        save(&mut report, &headlines, &memory, &sizes_json, &verdicts, false);
        report.save(args.json.as_deref())?;
    }
    println!(
        "\nsummary: median wall time, s (1 command / 10 steps); ratio = peer time / drover time; floor ratio = drover time / floor; peers with drover's key exchange {}, \
         [with OpenSSH's default {}]; ≈: 10 × one invocation\n\
         | fleet | hosts | drover | drover ÷ floor | {} | ssh true, default kex: 1 / all | ssh true, drover's kex: 1 / all |\n\
         |---|---|---|---|{}---|---|\n{summary}",
        bench.kex,
        bench.default_kex,
        bench
            .tools
            .iter()
            .filter(|t| **t != Tool::Drover)
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(bench.tools.iter().filter(|t| **t != Tool::Drover).count()),
    );
    save(&mut report, &headlines, &memory, &sizes_json, &verdicts, true);
    report.write(args.json.as_deref())
}

/// drover's and each peer's memory at one size, for the memory rows.
#[derive(Debug, Clone)]
struct Memory {
    fleet: FleetKind,
    hosts: usize,
    /// drover's peak RSS, one command (exact: wait4), KiB.
    drover_maxrss_kib: i64,
    /// Peak summed PSS of each tool's tree, one command (peers with
    /// drover's key exchange), KiB.
    tree_pss_kib: BTreeMap<Tool, i64>,
}

/// The memory rows of the top table, from the first fleet measured (its
/// smallest and largest size), and their JSON.
fn memory_headlines(memory: &[Memory], report: &mut Report, print: bool) -> Value {
    let Some(fleet) = memory.first().map(|m| m.fleet) else {
        return Value::Null;
    };
    let memory: Vec<&Memory> = memory.iter().filter(|m| m.fleet == fleet).collect();
    let (Some(small), Some(large)) = (memory.first(), memory.last()) else {
        return Value::Null;
    };
    let mib = |kib: i64| kib as f64 / 1024.0;
    let n = large.hosts;
    let per_conn = (large.hosts > small.hosts)
        .then(|| (large.drover_maxrss_kib - small.drover_maxrss_kib) as f64 / (large.hosts - small.hosts) as f64);
    let pdsh_per_host = large.tree_pss_kib.get(&Tool::Pdsh).map(|k| *k as f64 / n as f64);
    // drover is one process: its peak RSS counts every page it maps, even
    // those shared with other processes, so any bias is against it. A
    // peer is a tree of processes (an ssh per host): their PSS summed
    // counts the pages they share once.
    let mut h = Headline::new(
        format!("memory-{n}"),
        format!(
            "orchestrator memory holding a connection to each of {n} hosts ({}), 1 command (drover: peak RSS; peers: peak PSS summed over their process tree)",
            fleet.label()
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
            "\nmemory at {n} hosts ({}), 1 command: drover peak RSS {:.1} MiB; peak PSS of the process tree:",
            fleet.key(),
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
            format!("orchestrator memory per host connected, {n} hosts ({})", fleet.label()),
            "KiB",
            Better::Lower,
            Figure::single(pc),
        );
        for (tool, kib) in &large.tree_pss_kib {
            if *tool != Tool::Drover {
                per = per.peer(tool.name(), Figure::single(*kib as f64 / n as f64));
            }
        }
        let what = format!("drover per connection <= pdsh's tree PSS per host at {n} hosts");
        per = match (n >= TARGET_HOSTS, pdsh_per_host) {
            (true, Some(p)) => per.target(format!("{what} ({pc:.0} vs {p:.0} KiB)"), pc <= p),
            (true, None) => per.target_not_measured(format!("{what} (pdsh not measured)")),
            (false, _) => per.target_not_measured(format!(
                "{what} (not judged: the largest size, {n}, is below {TARGET_HOSTS} hosts)"
            )),
        };
        if print {
            println!(
                "  target: {what}: {}",
                match (n >= TARGET_HOSTS, pdsh_per_host) {
                    (true, Some(p)) => format!("{pc:.0} vs {p:.0} KiB ({})", if pc <= p { "met" } else { "NOT MET" }),
                    _ => "not measured".into(),
                }
            );
        }
        report.headlines.push(h);
        report.headlines.push(per.note(format!(
            "drover: its RSS at {n} hosts minus its RSS at {} hosts, per added host (one SSH connection each); peers: their tree's PSS at {n} hosts / {n}",
            small.hosts
        )));
    } else {
        report.headlines.push(h);
    }
    let pdsh = pdsh_per_host;
    let judged = n >= TARGET_HOSTS;
    let memory_target = json!({
        "what": format!("drover's RSS per open connection <= pdsh's tree PSS per host at the largest size ({n} hosts)"),
        "drover_kib": per_conn,
        "pdsh_kib": pdsh,
        "measured": judged && per_conn.is_some() && pdsh.is_some(),
        "met": match (judged, per_conn, pdsh) {
            (true, Some(d), Some(p)) => json!(d <= p),
            _ => Value::Null,
        },
        "reason": if !judged {
            json!(format!("the largest size, {n}, is below {TARGET_HOSTS} hosts"))
        } else if per_conn.is_none() {
            json!("one size only: no per-connection figure")
        } else if pdsh.is_none() {
            json!("pdsh not measured")
        } else {
            Value::Null
        },
    });
    json!({
        "fleet": fleet.key(),
        "hosts": n,
        "smallest_hosts": small.hosts,
        "drover_maxrss_kib": {"smallest": small.drover_maxrss_kib, "largest": large.drover_maxrss_kib},
        "drover_kib_per_connection": per_conn,
        "target": memory_target,
        "tree_pss_kib": large.tree_pss_kib.iter().map(|(t, k)| (t.name().to_string(), json!(k))).collect::<serde_json::Map<_, _>>(),
        "by_size": memory.iter().map(|m| json!({
            "hosts": m.hosts,
            "drover_maxrss_kib": m.drover_maxrss_kib,
            "tree_pss_kib": m.tree_pss_kib.iter().map(|(t, k)| (t.name().to_string(), json!(k))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

/// One criterion of a fleet target.
#[derive(Debug, Clone, Copy)]
enum Criterion {
    /// drover's time at most this many times the floor (`ssh host true`
    /// to every host at once, drover's key exchange).
    Floor(f64),
    /// The peer's time (drover's key exchange) more than drover's.
    Faster(Tool),
    /// The peer's time at least this many times drover's.
    AtLeast(Tool, f64),
}

impl Criterion {
    fn what(self) -> String {
        match self {
            Criterion::Floor(x) => format!("drover <= {x}× the floor"),
            Criterion::Faster(t) => format!("> 1× {} (faster)", t.name()),
            Criterion::AtLeast(t, x) => format!(">= {x}× {}", t.name()),
        }
    }

    /// Met by `ratio` (drover ÷ floor for Floor, peer ÷ drover otherwise).
    fn met(self, ratio: f64) -> bool {
        match self {
            Criterion::Floor(x) => ratio <= x,
            Criterion::Faster(_) => ratio > 1.0,
            Criterion::AtLeast(_, x) => ratio >= x,
        }
    }
}

/// The criteria of the target of a case: at TARGET_HOSTS on every fleet,
/// and (`large`) 1 command at LARGE_TARGET_HOSTS.
fn criteria(case: Case, large: bool) -> Vec<Criterion> {
    match (case, large) {
        (Case::One, true) => vec![Criterion::Faster(Tool::Pdsh)],
        (Case::One, false) => vec![
            Criterion::Floor(ONE_FLOOR_X),
            Criterion::Faster(Tool::Pdsh),
            Criterion::Faster(Tool::Pssh),
            Criterion::AtLeast(Tool::Ansible, ANSIBLE_X),
        ],
        (Case::Ten, _) => vec![
            Criterion::Floor(TEN_FLOOR_X),
            Criterion::AtLeast(Tool::Pdsh, TEN_PDSH_X),
            Criterion::AtLeast(Tool::Ansible, ANSIBLE_X),
        ],
    }
}

/// Every target of the run, judged or not (with why not): 1 command and
/// 10 steps at TARGET_HOSTS on each fleet, memory per connection, 1 command
/// at LARGE_TARGET_HOSTS (a --large size, existing fleet).
fn target_summary(fleets: &[FleetKind], large: &[usize], sizes: &[Value], verdicts: &[Value], memory: &Value) -> Value {
    let mut wanted: Vec<(FleetKind, usize, Case, bool)> = Vec::new();
    for &k in fleets {
        wanted.push((k, TARGET_HOSTS, Case::One, false));
        wanted.push((k, TARGET_HOSTS, Case::Ten, false));
    }
    let mut out = Vec::new();
    let placeholder = |k: FleetKind, n: usize, case: Case, big: bool| {
        let entry = sizes
            .iter()
            .find(|s| s["fleet"] == k.key() && s["hosts"] == n && s["large"].as_bool().unwrap_or(false) == big);
        let reason = match entry {
            Some(s) if s["status"] != "measured" => format!(
                "{n} hosts {}: {}",
                s["status"].as_str().unwrap_or("?"),
                s["reason"].as_str().unwrap_or("")
            ),
            Some(s) => match s["tools"]["drover"][case.key()]["failed"].as_str() {
                Some(e) => format!("drover failed: {}", tail(e, 2).replace('\n', " / ")),
                None => "drover's run of this case was not measured".to_string(),
            },
            None if big && !large.contains(&n) => format!("{n} hosts not in --large"),
            None if big => format!("{n} hosts: not reached"),
            None => format!("no {n}-host size of the {} fleet in this run", k.key()),
        };
        json!({
            "fleet": k.key(), "hosts": n, "case": case.key(), "large": big,
            "what": criteria(case, big).iter().map(|c| c.what()).collect::<Vec<_>>().join(", "),
            "parts": criteria(case, big).iter().map(|c| json!({"what": c.what(), "ratio": null, "measured": false, "met": null})).collect::<Vec<_>>(),
            "measured": false, "met": null, "reason": reason,
        })
    };
    let found = |k: FleetKind, n: usize, case: Case, big: bool| {
        verdicts
            .iter()
            .find(|v| v["fleet"] == k.key() && v["hosts"] == n && v["case"] == case.key() && v["large"] == big)
            .cloned()
    };
    for (k, n, case, big) in wanted {
        let mut v = found(k, n, case, big).unwrap_or_else(|| placeholder(k, n, case, big));
        v["target"] = json!(format!(
            "{n} hosts, {} ({})",
            if case == Case::One { "1 command" } else { "10 steps" },
            k.key()
        ));
        out.push(v);
    }
    let mut mem = if memory.is_null() {
        json!({"what": "drover's RSS per open connection <= pdsh's tree PSS per host at the largest size",
               "measured": false, "met": null, "reason": "drover's one-command run was measured at no size"})
    } else {
        memory["target"].clone()
    };
    mem["target"] = json!("memory per connection");
    out.push(mem);
    let (k, n) = (FleetKind::Existing, LARGE_TARGET_HOSTS);
    let mut v = found(k, n, Case::One, true).unwrap_or_else(|| placeholder(k, n, Case::One, true));
    v["target"] = json!(format!(
        "{} hosts, 1 command ({})",
        drover_bench::figures::thousands(n),
        k.key()
    ));
    out.push(v);
    Value::Array(out)
}

/// The targets, in the text output.
fn print_targets(targets: &Value) {
    println!("\ntargets (issue 15), peers with drover's key exchange:");
    for t in targets.as_array().into_iter().flatten() {
        let verdict = match t["met"].as_bool() {
            Some(true) => "met".to_string(),
            Some(false) => "NOT MET".to_string(),
            None => "not measured".to_string(),
        };
        let detail = match t["parts"].as_array() {
            Some(parts) => parts
                .iter()
                .map(|p| match p["ratio"].as_f64() {
                    Some(r) => format!("{} ({r:.2}×)", p["what"].as_str().unwrap_or("")),
                    None => format!("{} (not measured)", p["what"].as_str().unwrap_or("")),
                })
                .collect::<Vec<_>>()
                .join(", "),
            None => format!(
                "{} (drover {} KiB, pdsh {} KiB)",
                t["what"].as_str().unwrap_or(""),
                t["drover_kib"].as_f64().map_or("-".into(), |v| format!("{v:.0}")),
                t["pdsh_kib"].as_f64().map_or("-".into(), |v| format!("{v:.0}"))
            ),
        };
        let why = t["reason"].as_str().map_or(String::new(), |r| format!(" [{r}]"));
        println!("  {:<36} {detail}: {verdict}{why}", t["target"].as_str().unwrap_or("?"));
    }
}

/// Raises the open-files limit (RLIMIT_NOFILE) to NOFILE_WANTED, or at
/// least to its hard limit: every tool started inherits it. The limit
/// now, as text.
fn raise_nofile() -> String {
    // SAFETY: rlimit is plain data; getrlimit fills it.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: reads this process's limit into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return format!("unknown ({})", std::io::Error::last_os_error());
    }
    let wanted = NOFILE_WANTED as libc::rlim_t;
    if lim.rlim_cur < wanted {
        // Root may raise the hard limit too (up to fs.nr_open).
        let up = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: lim.rlim_max.max(wanted),
        };
        // SAFETY: sets this process's limit from `up`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &up) } != 0 {
            let soft = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: as above; the soft limit up to the hard one.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
        }
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    }
    format!("soft {}, hard {}", lim.rlim_cur, lim.rlim_max)
}

/// What one size of one fleet produced.
struct SizeDone {
    /// The line of the summary table.
    line: String,
    json: Value,
    headlines: Vec<Headline>,
    memory: Option<Memory>,
    /// The targets judged at this size (see [`target_summary`]).
    verdicts: Vec<Value>,
}

struct Bench {
    drover: PathBuf,
    venv: PathBuf,
    home: PathBuf,
    runs: usize,
    /// Runs at a --large size.
    large_runs: usize,
    /// Pairs from this index on are --large sizes.
    large_from: usize,
    tools: Vec<Tool>,
    timeout: Duration,
    budget: Duration,
    max_run: Duration,
    /// When everything must be done (--deadline).
    deadline: Option<Instant>,
    /// Every size, in order.
    sizes: Vec<usize>,
    /// Every (size, fleet) to measure, in order (the deadline keeps time
    /// for the later ones).
    pairs: Vec<(usize, FleetKind)>,
    /// The last measurement of each item on each fleet: (hosts, seconds).
    history: RefCell<BTreeMap<(FleetKind, Item), (usize, f64)>>,
    /// The key exchange drover negotiates (from the probe): what the peers
    /// are made to use for the like-for-like figures.
    kex: String,
    /// The one OpenSSH's client negotiates by default (from the probe).
    default_kex: String,
}

/// How every tool reaches the hosts of a fleet.
#[derive(Debug, Clone)]
struct Access {
    user: String,
    port: u16,
    key: PathBuf,
    known_hosts: PathBuf,
}

/// One host of a fleet.
#[derive(Debug, Clone)]
struct Target {
    hostname: String,
    address: String,
    /// Its sshd (PID 1 of its namespace).
    pid: i32,
}

/// A fleet of N hosts and the files every tool needs to reach them.
struct Fleet {
    kind: FleetKind,
    dir: PathBuf,
    hosts: Vec<Target>,
    access: Access,
    hostsfile: PathBuf,
    inventory: PathBuf,
    /// Our children that belong to the hosts (local: their `unshare`,
    /// existing: their sshd), reaped by the fleet itself, never here.
    keep: BTreeSet<i32>,
    /// The algorithm lines of the hosts' sshd_config (KexAlgorithms,
    /// Ciphers, MACs); empty: OpenSSH's defaults.
    server_algorithms: Vec<String>,
}

impl Fleet {
    /// ssh options without the destination, the same for every tool and
    /// both fleets: no configuration, the fleet's key and known_hosts
    /// checked strictly, batch mode, the port.
    fn ssh_options(&self) -> Vec<String> {
        let a = &self.access;
        let mut v: Vec<String> = vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            a.key.display().to_string(),
        ];
        for o in [
            "IdentitiesOnly=yes".to_string(),
            format!("UserKnownHostsFile={}", a.known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            "BatchMode=yes".into(),
            "ConnectTimeout=10".into(),
            "LogLevel=ERROR".into(),
        ] {
            v.push("-o".into());
            v.push(o);
        }
        v.push("-p".into());
        v.push(a.port.to_string());
        v
    }

    fn destination(&self, h: &Target) -> String {
        format!("{}@{}", self.access.user, h.address)
    }
}

/// The algorithm lines of an sshd_config.
fn algorithm_lines(config: &Path) -> Vec<String> {
    std::fs::read_to_string(config)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            ["kexalgorithms", "ciphers", "macs"].iter().any(|k| l.starts_with(k))
        })
        .map(str::to_string)
        .collect()
}

/// Starts `n` existing hosts: the non-root login user on EXISTING_PORT.
fn start_existing(n: usize, prefix: &str) -> Result<TestFleet> {
    TestFleet::builder()
        .hosts(n)
        .name_prefix(prefix)
        .port(EXISTING_PORT)
        .start()
        .context("starting the existing hosts (drover-testkit)")
}

/// The hosts, access and our children of a testkit fleet.
fn existing_parts(kit: &TestFleet) -> Result<(Vec<Target>, Access, BTreeSet<i32>)> {
    let hosts: Vec<Target> = kit
        .hosts()
        .iter()
        .map(|h| {
            Ok(Target {
                hostname: h.name().to_string(),
                address: h.address().to_string(),
                pid: h.pid().with_context(|| format!("host {} is not running", h.name()))? as i32,
            })
        })
        .collect::<Result<_>>()?;
    let keep = hosts.iter().map(|h| h.pid).collect();
    let access = Access {
        user: kit.user().to_string(),
        port: EXISTING_PORT,
        key: kit.client_key().to_path_buf(),
        known_hosts: kit.known_hosts().to_path_buf(),
    };
    Ok((hosts, access, keep))
}

/// What one tool's connection negotiated, from the probe host's sshd log.
#[derive(Debug, Default)]
struct Negotiated {
    kex: Vec<String>,
    cipher: Vec<String>,
}

impl Negotiated {
    fn parse(log: &str) -> Negotiated {
        let after = |line: &str, key: &str| {
            line.find(key)
                .and_then(|i| line[i + key.len()..].split_whitespace().next())
                .map(str::to_string)
        };
        let mut n = Negotiated::default();
        for line in log.lines() {
            n.kex.extend(after(line, "kex: algorithm: "));
            n.cipher.extend(after(line, "kex: client->server cipher: "));
        }
        n
    }

    /// The one key exchange of its connections (all alike), if any.
    fn kex(&self) -> Option<&str> {
        let first = self.kex.first()?;
        self.kex.iter().all(|k| k == first).then_some(first.as_str())
    }

    fn json(&self) -> Value {
        json!({"kex": self.kex.first(), "cipher": self.cipher.first(), "connections": self.kex.len()})
    }
}

/// Raises a testkit host's sshd to LogLevel DEBUG1 (which logs the key
/// exchange of every connection: `kex: algorithm: ...`): its sshd_config
/// edited, then SIGHUP (sshd executes itself again with the same
/// arguments, same pid); returns once it listens again.
fn debug_log(host: &drover_testkit::Host) -> Result<()> {
    let config = host.sshd_config();
    let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
    if !text.contains("LogLevel INFO") {
        bail!("{} has no `LogLevel INFO` line to raise", config.display());
    }
    std::fs::write(&config, text.replace("LogLevel INFO", "LogLevel DEBUG1"))?;
    let listening = || host.log().matches("Server listening on").count();
    let before = listening();
    let pid = host.pid().context("the probe host's sshd is not running")?;
    // SAFETY: signals the probe host's sshd, our child, which stays
    // unreaped (its pid cannot be reused) while the fleet lives.
    if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
        bail!(
            "cannot signal the probe host's sshd: {}",
            std::io::Error::last_os_error()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while listening() <= before {
        if Instant::now() > deadline {
            bail!(
                "the probe host's sshd did not listen again within 10 s of SIGHUP; its log:\n{}",
                tail(&host.log(), 10)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Bench {
    /// Which key exchange (and cipher) each tool negotiates with an sshd
    /// running OpenSSH's default algorithms, as every host of both fleets
    /// does: a probe host (drover-testkit, the existing fleet's user and
    /// port) whose sshd logs at DEBUG1, one connection of each tool in
    /// each mode, the `kex: algorithm:` lines it logged. drover's is what
    /// the peers are then made to use; a peer that negotiates anything
    /// else with the option fails the benchmark.
    fn probe_kex(&mut self, base: &Path) -> Result<Value> {
        println!("\n== key exchange: what each tool negotiates (probe host, sshd at LogLevel DEBUG1) ==");
        let dir = base.join("kex-probe");
        std::fs::create_dir_all(&dir)?;
        let kit = start_existing(1, "kexprobe")?;
        let host = kit.host(0);
        debug_log(host)?;
        let (hosts, access, keep) = existing_parts(&kit)?;
        let f = self.prepare(
            FleetKind::Existing,
            &dir,
            hosts,
            access,
            keep,
            algorithm_lines(&host.sshd_config()),
        )?;
        let log = host.log_path();
        let observe = |what: &str, run: &dyn Fn() -> Result<Sample>| -> Result<Negotiated> {
            let from = std::fs::metadata(&log).map_or(0, |m| m.len()) as usize;
            run().with_context(|| format!("the probe's {what}"))?;
            settle(&f);
            let text = std::fs::read(&log).unwrap_or_default();
            Ok(Negotiated::parse(&String::from_utf8_lossy(
                text.get(from..).unwrap_or_default(),
            )))
        };
        let drover = observe("drover run", &|| self.drover(&f, Case::One, 0).map(|(s, _)| s))?;
        let Some(kex) = drover.kex().map(str::to_string) else {
            bail!(
                "the probe host logged no single key exchange for drover's run ({:?}); see {}",
                drover.kex,
                log.display()
            );
        };
        self.kex = kex.clone();
        println!(
            "  {:<40} kex {kex}, cipher {}",
            "drover (russh)",
            drover.cipher.first().map_or("?", String::as_str)
        );
        let mut tools = serde_json::Map::new();
        tools.insert("drover".into(), json!({"own": drover.json()}));
        let mut mismatches = Vec::new();
        let mut peers: Vec<(&str, Option<Tool>)> = vec![("ssh", None)];
        peers.extend(
            self.tools
                .iter()
                .filter(|t| **t != Tool::Drover)
                .map(|&t| (t.name(), Some(t))),
        );
        for (name, tool) in peers {
            let mut modes = serde_json::Map::new();
            for k in [Kex::Default, Kex::Drover] {
                let got = observe(name, &|| match tool {
                    None => self.ssh_one(&f, &f.hosts[0], k),
                    Some(Tool::Pdsh) => self.pdsh(&f, Case::One, k),
                    Some(Tool::Pssh) => self.pssh(&f, Case::One, k),
                    Some(Tool::Ansible) => self.ansible(&f, Case::One, 0, k),
                    Some(Tool::Drover) => unreachable!("drover is probed above"),
                })?;
                let mode = match k {
                    Kex::Default => "OpenSSH's default".to_string(),
                    Kex::Drover => format!("-o KexAlgorithms={}", self.kex),
                };
                println!(
                    "  {:<40} kex {}, cipher {}",
                    format!("{name}, {mode}"),
                    got.kex().unwrap_or("?"),
                    got.cipher.first().map_or("?", String::as_str)
                );
                match k {
                    Kex::Drover if got.kex() != Some(kex.as_str()) => {
                        mismatches.push(format!("{name} with {mode} negotiated {:?}", got.kex));
                    }
                    Kex::Default if tool.is_none() => {
                        if let Some(d) = got.kex() {
                            self.default_kex = d.to_string();
                        }
                    }
                    _ => {}
                }
                modes.insert(
                    match k {
                        Kex::Default => "default".into(),
                        Kex::Drover => "drover".into(),
                    },
                    got.json(),
                );
            }
            tools.insert(name.into(), Value::Object(modes));
        }
        if !mismatches.is_empty() {
            bail!(
                "not like for like: {} (drover negotiates {kex}); see {}",
                mismatches.join("; "),
                log.display()
            );
        }
        Ok(json!({
            "verified": true,
            "drover": kex,
            "openssh_default": self.default_kex,
            "peers_option": format!("KexAlgorithms={kex}"),
            "how": "a probe host (drover-testkit, its sshd at LogLevel DEBUG1, OpenSSH's default algorithms) logged `kex: algorithm:` for one connection of each tool in each mode",
            "server_algorithms": f.server_algorithms,
            "tools": tools,
        }))
    }

    /// Creates the fleet of pair `idx` (its size, its kind), measures
    /// everything, deletes the fleet; what to report.
    fn size(&self, idx: usize, dir: &Path) -> Result<SizeDone> {
        let (n, kind) = self.pairs[idx];
        if self.is_large(idx) {
            println!(
                "\n== {n} hosts (--large: 1 command only; drover, pdsh with drover's kex, the floor): {} ==",
                kind.describe()
            );
        } else {
            println!("\n== {n} hosts: {} ==", kind.describe());
        }
        let created = Instant::now();
        // What keeps the hosts alive: dropping it deletes them (also on an
        // early return).
        let (mut local, mut existing) = (None, None);
        let f = match kind {
            FleetKind::Local => {
                // Where drover's local provider keeps its fleet for a state
                // in `dir`: the runs below find these hosts there.
                let fleet = HostFleet::new(dir.join("providers/local/fleet"))?;
                let guard = FleetGuard::new(fleet.clone());
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
                let hosts = rt.block_on(create_hosts(&guard, n))?;
                let keep = hosts.iter().filter_map(|h| parent_of(h.pid as i32)).collect();
                let algorithms = algorithm_lines(&fleet.sshd_config(&hosts[0].hostname));
                let access = Access {
                    user: "root".into(),
                    port: hosts[0].port,
                    key: fleet.client_key(),
                    known_hosts: fleet.known_hosts(),
                };
                let targets = hosts.iter().map(target_of).collect();
                local = Some(guard);
                self.prepare(kind, dir, targets, access, keep, algorithms)?
            }
            FleetKind::Existing => {
                let kit = start_existing(n, "fx")?;
                let algorithms = algorithm_lines(&kit.host(0).sshd_config());
                let (targets, access, keep) = existing_parts(&kit)?;
                existing = Some(kit);
                self.prepare(kind, dir, targets, access, keep, algorithms)?
            }
        };
        let creation = created.elapsed();
        let (rss, pss) = sshd_memory(&f.hosts);
        println!(
            "created {n} hosts in {:.2} s ({:.0} ms per host); each sshd (idle, PID 1 of its host): RSS {:.1} MiB, PSS {:.2} MiB; \
             server algorithms: {}",
            creation.as_secs_f64(),
            creation.as_secs_f64() * 1e3 / n as f64,
            rss / 1024.0,
            pss / 1024.0,
            if f.server_algorithms.is_empty() {
                "OpenSSH's defaults (no KexAlgorithms, Ciphers or MACs line)".to_string()
            } else {
                f.server_algorithms.join("; ")
            }
        );
        let measured = Instant::now();
        let result = self.measure(idx, &f);
        let measure_s = measured.elapsed().as_secs_f64();
        let deleting = Instant::now();
        drop(local.take());
        drop(existing.take());
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

    /// Every item of a round, in the order measured: the physical limit,
    /// then per case drover, the peers with drover's key exchange, the
    /// peers with OpenSSH's default.
    fn items(&self) -> Vec<Item> {
        let mut items = vec![Item::Physical];
        for case in [Case::One, Case::Ten] {
            if self.tools.contains(&Tool::Drover) {
                items.push(Item::Run(Tool::Drover, case, Kex::Drover));
                if case == Case::One {
                    items.push(Item::Exec);
                }
            }
            for kex in [Kex::Drover, Kex::Default] {
                items.extend(
                    self.tools
                        .iter()
                        .filter(|t| **t != Tool::Drover)
                        .map(|&t| Item::Run(t, case, kex)),
                );
            }
        }
        items
    }

    /// Whether pair `idx` is a --large size: the existing fleet, one
    /// command, drover, pdsh and the floor only, not --max-run.
    fn is_large(&self, idx: usize) -> bool {
        idx >= self.large_from
    }

    /// drover's runs at pair `idx`.
    fn runs_at(&self, idx: usize) -> usize {
        if self.is_large(idx) { self.large_runs } else { self.runs }
    }

    /// The items of a round at pair `idx`: every item, or at a --large size
    /// the floor, drover and pdsh (drover's key exchange), one command.
    fn items_for(&self, idx: usize) -> Vec<Item> {
        if !self.is_large(idx) {
            return self.items();
        }
        let mut items = vec![Item::Physical];
        for tool in [Tool::Drover, Tool::Pdsh] {
            if self.tools.contains(&tool) {
                items.push(Item::Run(tool, Case::One, Kex::Drover));
            }
        }
        items
    }

    /// One round of drover (both cases; one command at a --large size) at
    /// pair `idx`, projected.
    fn drover_round(&self, idx: usize) -> f64 {
        let (n, kind) = self.pairs[idx];
        let cases: &[Case] = if self.is_large(idx) {
            &[Case::One]
        } else {
            &[Case::One, Case::Ten]
        };
        cases
            .iter()
            .filter_map(|&c| self.projection(kind, Item::Run(Tool::Drover, c, Kex::Drover), n))
            .sum()
    }

    /// The first runs of the peers with drover's key exchange at pair
    /// `idx`, projected (those within --max-run, which a --large size
    /// ignores).
    fn peer_firsts(&self, idx: usize) -> f64 {
        let (n, kind) = self.pairs[idx];
        let large = self.is_large(idx);
        self.items_for(idx)
            .into_iter()
            .filter(|i| i.rank(0) == 1)
            .filter_map(|i| self.projection(kind, i, n))
            .filter(|&p| large || p <= self.max_run.as_secs_f64())
            .sum()
    }

    /// Time to keep, when measuring an item of priority `rank` at pair
    /// `idx`, for what has a higher priority and is still to come: the
    /// rest of this round (`rest`), drover's later rounds here, and at
    /// every later fleet and size the hosts' creation, drover's rounds, the
    /// physical limit (and for rank 2, the first runs of the peers with
    /// drover's key exchange).
    fn to_come(&self, rank: u8, idx: usize, m: &Measured, rest: &[Item], round: usize) -> f64 {
        if rank == 0 {
            return 0.0;
        }
        let (n, kind) = self.pairs[idx];
        let mut t: f64 = rest
            .iter()
            .filter(|i| !m.skipped.contains_key(i) && i.rank(round) < rank && (round == 0 || i.always()))
            .filter_map(|&i| m.first.get(&i).copied().or_else(|| self.projection(kind, i, n)))
            .sum();
        t += self.drover_round(idx) * self.runs_at(idx).saturating_sub(round + 1) as f64;
        for later in idx + 1..self.pairs.len() {
            let (later_n, later_kind) = self.pairs[later];
            t += self.drover_round(later) * self.runs_at(later) as f64
                + self.projection(later_kind, Item::Physical, later_n).unwrap_or(0.0)
                + CREATE_PER_HOST * later_n as f64;
            if rank >= 2 {
                t += self.peer_firsts(later);
            }
        }
        t
    }

    /// Why pair `idx` cannot be measured before the deadline, if so.
    fn cannot_fit(&self, idx: usize) -> Option<String> {
        let left = self.time_left()?;
        let (n, kind) = self.pairs[idx];
        let need = CREATE_PER_HOST * n as f64
            + self.drover_round(idx)
            + self.projection(kind, Item::Physical, n).unwrap_or(0.0);
        (need > left).then(|| {
            format!(
                "one round of drover with the physical limit would take ~{need:.0} s (projected), {left:.0} s left before --deadline"
            )
        })
    }

    /// The files every tool needs: hosts file, ansible inventory and
    /// playbook, drover's workflows.
    fn prepare(
        &self,
        kind: FleetKind,
        dir: &Path,
        hosts: Vec<Target>,
        access: Access,
        keep: BTreeSet<i32>,
        server_algorithms: Vec<String>,
    ) -> Result<Fleet> {
        let hostsfile = dir.join("hosts.txt");
        let text: String = hosts.iter().map(|h| format!("{}\n", h.address)).collect();
        std::fs::write(&hostsfile, text)?;

        // Ansible: an INI inventory, an empty configuration, a playbook.
        let common = format!(
            "-F /dev/null -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
            access.known_hosts.display()
        );
        let mut inv = String::from("[fleet]\n");
        for h in &hosts {
            let _ = writeln!(
                inv,
                "{} ansible_host={} ansible_port={} ansible_user={} ansible_ssh_private_key_file={} ansible_ssh_common_args='{common}'",
                h.hostname,
                h.address,
                access.port,
                access.user,
                access.key.display()
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
        let f = Fleet {
            kind,
            dir: dir.to_path_buf(),
            keep,
            hosts,
            access,
            hostsfile,
            inventory,
            server_algorithms,
        };
        // drover: the two workflows.
        for case in [Case::One, Case::Ten] {
            std::fs::write(workflow_file(dir, case), workflow(&f, case))?;
        }
        Ok(f)
    }

    fn measure(&self, idx: usize, f: &Fleet) -> Result<SizeDone> {
        let n = f.hosts.len();
        let kind = f.kind;
        let large = self.is_large(idx);
        let items = self.items_for(idx);
        let mut m = Measured::default();
        let size_started = Instant::now();
        for round in 0..self.runs_at(idx) {
            // Interleaved rounds, so that a drift of the machine hits
            // every tool alike.
            for (k, &item) in items.iter().enumerate() {
                if m.skipped.contains_key(&item) {
                    continue;
                }
                // How long one run should take: its first run at this
                // size, else projected from a smaller one.
                let expected = m.first.get(&item).copied().or_else(|| self.estimate(kind, item, n));
                if round == 0
                    && !large
                    && let Some(p) = self.projection(kind, item, n)
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
                    // What has a higher priority (the rest of this round,
                    // later rounds, later fleets and sizes) keeps its time.
                    let reserve = self.to_come(item.rank(round), idx, &m, &items[k + 1..], round);
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
                                    format!(" with ~{reserve:.0} s kept for what comes first")
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
                        // At a --large size, drover's key exchange only.
                        if !large {
                            m.single_default.push(self.ssh_one(f, host, Kex::Default)?);
                            m.all_default.push(self.ssh_all(f, Kex::Default)?);
                        }
                        m.single_drover.push(self.ssh_one(f, host, Kex::Drover)?);
                        m.all_drover.push(self.ssh_all(f, Kex::Drover)?);
                    }
                    Item::Exec => m.exec.push(self.drover_exec(f, round)?),
                    Item::Run(tool, case, kex) => {
                        let measured = match tool {
                            Tool::Drover => self.drover(f, case, round).map(|(s, b)| {
                                m.breakdowns.push((case, b));
                                s
                            }),
                            Tool::Pdsh => self.pdsh(f, case, kex),
                            Tool::Pssh => self.pssh(f, case, kex),
                            Tool::Ansible => self.ansible(f, case, round, kex),
                        };
                        let s = match measured {
                            Ok(s) => s,
                            // At a --large size a failed run is reported,
                            // and the others measured.
                            Err(e) if large && !INTERRUPTED.load(Ordering::SeqCst) => {
                                println!(
                                    "  {}: failed at {n} hosts: {}",
                                    item.label(),
                                    tail(&format!("{e:#}"), 3)
                                );
                                m.failed.entry(item).or_insert(format!("{e:#}"));
                                settle(f);
                                continue;
                            }
                            Err(e) => return Err(e),
                        };
                        m.samples.entry((tool, case, kex)).or_default().push(s);
                    }
                }
                // With the wait for the hosts to settle: what the run
                // costs the time budget.
                settle(f);
                let took = started.elapsed().as_secs_f64();
                m.first.entry(item).or_insert(took);
                self.history.borrow_mut().insert((kind, item), (n, took));
            }
            println!(
                "  round {} done ({:.0} s so far)",
                round + 1,
                size_started.elapsed().as_secs_f64()
            );
        }
        println!("  measured {n} hosts in {:.0} s", size_started.elapsed().as_secs_f64());
        Ok(self.report(idx, f, &m))
    }

    /// How long one run of `item` would take at `n` hosts: projected from
    /// its own last run, else from the other case's (10 steps: ten times
    /// one command; one command: a tenth of 10 steps).
    fn estimate(&self, kind: FleetKind, item: Item, n: usize) -> Option<f64> {
        self.projection(kind, item, n).or_else(|| match item {
            Item::Run(tool, Case::Ten, k) => self
                .projection(kind, Item::Run(tool, Case::One, k), n)
                .map(|v| v * STEPS as f64),
            Item::Run(tool, Case::One, k) => self
                .projection(kind, Item::Run(tool, Case::Ten, k), n)
                .map(|v| v / STEPS as f64),
            Item::Physical => None,
            Item::Exec => self.projection(kind, Item::Run(Tool::Drover, Case::One, Kex::Drover), n),
        })
    }

    /// How long one run of `item` would take at `n` hosts of fleet `kind`,
    /// from its last measurement on a smaller (or equal) fleet of that
    /// kind, else of the other kind (linear in the number of hosts).
    fn projection(&self, kind: FleetKind, item: Item, n: usize) -> Option<f64> {
        let history = self.history.borrow();
        let of = |k: FleetKind| {
            history
                .get(&(k, item))
                .and_then(|&(at, secs)| (at <= n).then(|| secs * n as f64 / at as f64))
        };
        of(kind).or_else(|| {
            [FleetKind::Local, FleetKind::Existing]
                .into_iter()
                .filter(|&k| k != kind)
                .find_map(of)
        })
    }

    fn report(&self, idx: usize, f: &Fleet, m: &Measured) -> SizeDone {
        let n = f.hosts.len();
        let kind = f.kind;
        let large = self.is_large(idx);
        let items = self.items_for(idx);
        // What was to be measured here (every tool and key exchange, or at
        // a --large size drover and pdsh with drover's key exchange).
        let planned = |t: Tool, k: Kex| {
            items
                .iter()
                .any(|i| matches!(i, Item::Run(x, _, y) if *x == t && *y == k))
        };
        let peers: Vec<Tool> = self
            .tools
            .iter()
            .copied()
            .filter(|&t| t != Tool::Drover && planned(t, Kex::Drover))
            .collect();
        let samples = |t: Tool, c: Case, k: Kex| m.samples.get(&(t, c, k));
        let wall = |t: Tool, c: Case, k: Kex| samples(t, c, k).map(|v| walls(v));
        let med = |t: Tool, c: Case, k: Kex| wall(t, c, k).map(|v| median(&v));
        let skipped = |t: Tool, c: Case, k: Kex| m.skipped.get(&Item::Run(t, c, k)).copied();
        // pdsh and parallel-ssh run the ten steps as ten identical
        // invocations: when that case was not run, ten times one
        // invocation is what it would take (an estimate: shown, never
        // judged).
        let ten_x = |t: Tool, c: Case, k: Kex| match (c, t) {
            (Case::Ten, Tool::Pdsh | Tool::Pssh) if !large && samples(t, c, k).is_none() => {
                med(t, Case::One, k).map(|v| v * STEPS as f64)
            }
            _ => None,
        };
        // A figure: measured, else ≈ ten times one invocation.
        let value = |t: Tool, c: Case, k: Kex| {
            med(t, c, k)
                .map(|v| (v, false))
                .or_else(|| ten_x(t, c, k).map(|v| (v, true)))
        };
        let of = |t: Tool, c: Case, k: Kex, f: fn(&Sample) -> f64| {
            samples(t, c, k).map(|v| median(&v.iter().map(f).collect::<Vec<_>>()))
        };
        let max_of =
            |t: Tool, c: Case, k: Kex, f: fn(&Sample) -> i64| samples(t, c, k).and_then(|v| v.iter().map(f).max());
        let rows: Vec<(Tool, Kex)> = self
            .tools
            .iter()
            .filter(|t| **t == Tool::Drover)
            .map(|&t| (t, Kex::Drover))
            .chain(peers.iter().flat_map(|&t| [(t, Kex::Drover), (t, Kex::Default)]))
            .filter(|&(t, k)| planned(t, k))
            .collect();
        let row_name = |t: Tool, k: Kex| match (t, k) {
            (Tool::Drover, _) => "drover".to_string(),
            (t, Kex::Drover) => format!("{}, drover's kex", t.name()),
            (t, Kex::Default) => format!("{}, default kex", t.name()),
        };
        println!(
            "\n{n} hosts, {} fleet: wall time, s: median (min–max) of n runs; drover's kex: {}; OpenSSH's default: {}",
            kind.key(),
            self.kex,
            self.default_kex
        );
        println!(
            "  {:<27} {:>27} {:>29} {:>13} {:>10} {:>16}",
            "tool", "1 command", "10 steps", "client CPU s", "peak RSS", "tree PSS 1 / 10"
        );
        for &(tool, kex) in &rows {
            let cell = |case: Case| match wall(tool, case, kex) {
                Some(v) => format!("{} n={}", spread(&v), v.len()),
                None if m.failed.contains_key(&Item::Run(tool, case, kex)) => "failed (see above)".into(),
                None => match (skipped(tool, case, kex), ten_x(tool, case, kex)) {
                    (_, Some(v)) => format!("not run (≈{v:.1} = 10 × 1 cmd)"),
                    (Some((p, why)), _) if p.is_finite() => format!("not run ({why}, ~{p:.0} s)"),
                    (Some((_, why)), _) => format!("not run ({why})"),
                    _ => "-".into(),
                },
            };
            let cpu: Vec<String> = [Case::One, Case::Ten]
                .iter()
                .map(|&c| of(tool, c, kex, |s| s.cpu.as_secs_f64()).map_or("-".into(), |v| format!("{v:.2}")))
                .collect();
            let rss = [Case::One, Case::Ten]
                .iter()
                .filter_map(|&c| max_of(tool, c, kex, |s| s.maxrss_kib))
                .max()
                .unwrap_or(0);
            let tree: Vec<String> = [Case::One, Case::Ten]
                .iter()
                .map(|&c| {
                    max_of(tool, c, kex, |s| s.tree_pss_kib).map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
                })
                .collect();
            println!(
                "  {:<27} {:>27} {:>29} {:>13} {:>6.1} MiB {:>12} MiB",
                row_name(tool, kex),
                cell(Case::One),
                cell(Case::Ten),
                cpu.join(" / "),
                rss as f64 / 1024.0,
                tree.join(" / ")
            );
        }
        let cpu_of = |v: &[Sample]| median(&v.iter().map(|s| s.machine_cpu.as_secs_f64()).collect::<Vec<_>>());
        if !m.single_default.is_empty() {
            println!(
                "  physical limit, ssh with OpenSSH's default kex ({}): 1 host {}; {n} at once {} ({:.2} core-s)",
                self.default_kex,
                spread(&walls(&m.single_default)),
                spread(&walls(&m.all_default)),
                cpu_of(&m.all_default)
            );
        }
        if !m.single_drover.is_empty() {
            println!(
                "  physical limit, ssh with drover's kex ({}): 1 host {}; {n} at once {} ({:.2} core-s)",
                self.kex,
                spread(&walls(&m.single_drover)),
                spread(&walls(&m.all_drover)),
                cpu_of(&m.all_drover)
            );
        }
        println!("  machine CPU busy meanwhile (every process: client and hosts), core-seconds, median:");
        for &(tool, kex) in &rows {
            let busy = |case: Case| samples(tool, case, kex).map_or("-".to_string(), |v| format!("{:.2}", cpu_of(v)));
            println!(
                "    {:<27} 1 command {:>7}   10 steps {:>7}",
                row_name(tool, kex),
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

        // The JSON of every tool, case and key exchange.
        let cell_json = |tool: Tool, case: Case, kex: Kex| {
            let v = samples(tool, case, kex);
            let stat = |unit, f: fn(&Sample) -> f64| v.map(|v| Stat::new(unit, v.iter().map(f).collect()).json());
            json!({
                "wall": stat("s", |s| s.wall.as_secs_f64()),
                "cpu": stat("s", |s| s.cpu.as_secs_f64()),
                "machine_cpu": stat("core-s", |s| s.machine_cpu.as_secs_f64()),
                "maxrss_kib": max_of(tool, case, kex, |s| s.maxrss_kib),
                "tree_pss_kib": max_of(tool, case, kex, |s| s.tree_pss_kib),
                "tree_procs": max_of(tool, case, kex, |s| s.tree_procs as i64),
                "skipped": skipped(tool, case, kex).map(|(p, why)| json!({"reason": why, "projected_s": p})),
                "estimate_s": ten_x(tool, case, kex),
                "failed": m.failed.get(&Item::Run(tool, case, kex)),
            })
        };
        let mut tools_json = serde_json::Map::new();
        let mut default_json = serde_json::Map::new();
        for &(tool, kex) in &rows {
            let cases = json!({"one": cell_json(tool, Case::One, kex), "ten": cell_json(tool, Case::Ten, kex)});
            match kex {
                Kex::Drover => tools_json.insert(tool.name().into(), cases),
                Kex::Default => default_json.insert(tool.name().into(), cases),
            };
        }
        let phys = |v: &[Sample]| (!v.is_empty()).then(|| Stat::new("s", walls(v)).json());
        let phys_cpu = |v: &[Sample]| {
            (!v.is_empty()).then(|| Stat::new("core-s", v.iter().map(|s| s.machine_cpu.as_secs_f64()).collect()).json())
        };
        let physical = json!({
            "ssh_one_default": phys(&m.single_default),
            "ssh_all_default": phys(&m.all_default),
            "ssh_one_drover_kex": phys(&m.single_drover),
            "ssh_all_drover_kex": phys(&m.all_drover),
            "machine_cpu_all_default": phys_cpu(&m.all_default),
            "machine_cpu_all_drover_kex": phys_cpu(&m.all_drover),
            "skipped": m.skipped.get(&Item::Physical).map(|(p, why)| json!({"reason": why, "projected_s": p})),
        });

        let d1 = med(Tool::Drover, Case::One, Kex::Drover);
        let d10 = med(Tool::Drover, Case::Ten, Kex::Drover);
        // The floor: `ssh host true` to every host at once with drover's
        // key exchange; drover's time over it, per case.
        let floor = (!m.all_drover.is_empty()).then(|| median(&walls(&m.all_drover)));
        let over_floor = |d: Option<f64>| match (d, floor) {
            (Some(d), Some(fl)) => Some(d / fl),
            _ => None,
        };
        let opt = |v: Option<f64>, suffix: &str| v.map_or("-".to_string(), |v| format!("{v:.2}{suffix}"));
        let mut line = format!(
            "| {} | {n}{} | {} / {} | {} / {} |",
            kind.key(),
            if large { " (large)" } else { "" },
            opt(d1, ""),
            opt(d10, ""),
            opt(over_floor(d1), "×"),
            opt(over_floor(d10), "×")
        );
        let fmt_value = |v: Option<(f64, bool)>| match v {
            Some((v, false)) => format!("{v:.2}"),
            Some((v, true)) => format!("≈{v:.1}"),
            None => "-".into(),
        };
        let mut ratios_json = serde_json::Map::new();
        let mut targets_json = Vec::new();
        let mut verdicts = Vec::new();
        let mut headlines = Vec::new();
        if d1.is_some() || d10.is_some() {
            println!("  ratios, peer time / drover time (> 1: drover is faster):");
        }
        for &tool in &peers {
            let ratio = |case: Case, kex: Kex, d: Option<f64>| match (value(tool, case, kex), d) {
                (Some((v, false)), Some(d)) => format!("{:.2}×", v / d),
                (Some((v, true)), Some(d)) => format!("≈{:.1}×", v / d),
                _ => "-".into(),
            };
            if d1.is_some() || d10.is_some() {
                println!(
                    "    vs {:<13} drover's kex: 1 command {:>7}   10 steps {:>7}   (OpenSSH's default kex: {:>7} / {:>7})",
                    tool.name(),
                    ratio(Case::One, Kex::Drover, d1),
                    ratio(Case::Ten, Kex::Drover, d10),
                    ratio(Case::One, Kex::Default, d1),
                    ratio(Case::Ten, Kex::Default, d10)
                );
            }
            let _ = write!(
                line,
                " {} / {} ({} / {}) [{} / {}] |",
                fmt_value(value(tool, Case::One, Kex::Drover)),
                fmt_value(value(tool, Case::Ten, Kex::Drover)),
                ratio(Case::One, Kex::Drover, d1),
                ratio(Case::Ten, Kex::Drover, d10),
                fmt_value(value(tool, Case::One, Kex::Default)),
                fmt_value(value(tool, Case::Ten, Kex::Default)),
            );
            let r = |case: Case, kex: Kex, d: Option<f64>| match (value(tool, case, kex), d) {
                (Some((v, guess)), Some(d)) => json!({"ratio": v / d, "estimate": guess}),
                _ => Value::Null,
            };
            ratios_json.insert(
                tool.name().into(),
                json!({
                    "one": r(Case::One, Kex::Drover, d1), "ten": r(Case::Ten, Kex::Drover, d10),
                    "one_default_kex": r(Case::One, Kex::Default, d1), "ten_default_kex": r(Case::Ten, Kex::Default, d10),
                }),
            );
        }
        // Peers not measured at a --large size: their cells empty.
        for &tool in self.tools.iter().filter(|&&t| t != Tool::Drover && !peers.contains(&t)) {
            let _ = tool;
            line.push_str(" - |");
        }
        if let Some(fl) = floor {
            println!(
                "    drover / floor (`ssh host true` to all {n} at once, drover's kex: {fl:.2} s): 1 command {:>7}   10 steps {:>7}",
                opt(over_floor(d1), "×"),
                opt(over_floor(d10), "×")
            );
        }
        let floor_json = json!({"floor_s": floor, "one": over_floor(d1), "ten": over_floor(d10)});

        // The targets (issue 15), judged at TARGET_HOSTS hosts on every
        // fleet (at LARGE_TARGET_HOSTS for a --large size) on the peers
        // with drover's key exchange and the floor measured in this run
        // (an estimate or a projection is not a measurement).
        let judged = if large {
            n == LARGE_TARGET_HOSTS
        } else {
            n == TARGET_HOSTS
        };
        let cases: &[Case] = if large { &[Case::One] } else { &[Case::One, Case::Ten] };
        for &case in cases {
            let Some(drover) = wall(Tool::Drover, case, Kex::Drover) else {
                continue;
            };
            let d = median(&drover);
            let mut parts = Vec::new();
            let mut parts_json = Vec::new();
            let mut verdict: Option<bool> = Some(true);
            for c in criteria(case, large) {
                let r = match c {
                    Criterion::Floor(_) => floor.map(|fl| d / fl),
                    Criterion::Faster(t) | Criterion::AtLeast(t, _) => med(t, case, Kex::Drover).map(|p| p / d),
                };
                match r {
                    Some(r) => {
                        let ok = c.met(r);
                        parts.push(format!("{} ({r:.2}×)", c.what()));
                        parts_json.push(json!({"what": c.what(), "ratio": r, "measured": true, "met": ok}));
                        verdict = match (verdict, ok) {
                            (Some(false), _) | (_, false) => Some(false),
                            (v, true) => v,
                        };
                    }
                    None => {
                        parts.push(format!("{} (not measured)", c.what()));
                        parts_json.push(json!({"what": c.what(), "ratio": null, "measured": false, "met": null}));
                        if verdict == Some(true) {
                            verdict = None;
                        }
                    }
                }
            }
            if judged {
                println!(
                    "  target, {} step(s) at {n} hosts (peers with drover's kex): {}: {}",
                    case.steps(),
                    parts.join("; "),
                    match verdict {
                        Some(true) => "met",
                        Some(false) => "NOT MET",
                        None => "not measured",
                    }
                );
                for p in &parts_json {
                    let mut p = p.clone();
                    p["case"] = json!(case.key());
                    targets_json.push(p);
                }
                verdicts.push(json!({
                    "fleet": kind.key(), "hosts": n, "case": case.key(), "large": large,
                    "what": parts.join(", "),
                    "parts": parts_json,
                    "measured": parts_json.iter().all(|p| p["measured"] == true),
                    "met": verdict,
                }));
            }
            let what = match (case, large) {
                (Case::One, false) => format!("fleet fan-out, {}: 1 command on {n} hosts", kind.label()),
                (Case::One, true) => format!(
                    "fleet fan-out, {}: 1 command on {} hosts (--large: drover, pdsh and the floor only)",
                    kind.label(),
                    drover_bench::figures::thousands(n)
                ),
                (Case::Ten, _) => format!("fleet fan-out, {}: {STEPS} steps on {n} hosts", kind.label()),
            };
            let mut h = Headline::new(
                format!(
                    "fleet-{}-{}-{n}{}",
                    kind.key(),
                    case.steps(),
                    if large { "-large" } else { "" }
                ),
                what,
                "s",
                Better::Lower,
                Stat::new("s", drover).figure(),
            );
            let figure = |tool: Tool, kex: Kex| match (
                wall(tool, case, kex),
                ten_x(tool, case, kex),
                skipped(tool, case, kex),
            ) {
                (Some(v), _, _) => Some(Stat::new("s", v).figure()),
                (None, Some(v), _) => Some(Figure::estimated(v, "10 × its 1-command time")),
                (None, _, Some((p, why))) if p.is_finite() => Some(Figure::estimated(p, format!("not run (--{why})"))),
                _ => None,
            };
            for &tool in &peers {
                if let Some(fig) = figure(tool, Kex::Drover) {
                    h = h.peer_beside(
                        tool.name(),
                        fig,
                        figure(tool, Kex::Default).map(|f| ("OpenSSH's default kex".to_string(), f)),
                    );
                }
            }
            if let Some(fl) = floor {
                let default = if m.all_default.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; with OpenSSH's default, {}: {:.2} s",
                        self.default_kex,
                        median(&walls(&m.all_default))
                    )
                };
                h = h.limit(
                    format!(
                        "`ssh host true` to all {n} hosts at once with drover's key exchange ({}{default}){}",
                        self.kex,
                        if case == Case::Ten {
                            "; 10 steps need at least this handshake per host"
                        } else {
                            ""
                        }
                    ),
                    Figure::single(fl),
                );
            }
            if judged {
                let what = parts.join(", ");
                h = match verdict {
                    Some(met) => h.target(what, met),
                    None => h.target_not_measured(what),
                };
            }
            headlines.push(h);
        }
        // `drover exec -- true` beside the peers' one command (the same
        // `true` on the same hosts with the same key exchange, this run).
        let mut exec_json = Value::Null;
        if !m.exec.is_empty() {
            let e = walls(&m.exec);
            let d = median(&e);
            let mut parts = vec![format!("drover exec -- true {} n={}", spread(&e), e.len())];
            let mut peers_json = serde_json::Map::new();
            let mut h = Headline::new(
                format!("fleet-{}-exec-{n}", kind.key()),
                format!("drover exec -- true on {n} hosts, {} (no workflow)", kind.label()),
                "s",
                Better::Lower,
                Stat::new("s", e.clone()).figure(),
            );
            for &tool in peers.iter().filter(|t| matches!(t, Tool::Pdsh | Tool::Pssh)) {
                if let Some(v) = wall(tool, Case::One, Kex::Drover) {
                    let p = median(&v);
                    parts.push(format!("{} {p:.2} s ({:.2}×)", tool.name(), p / d));
                    peers_json.insert(tool.name().into(), json!({"median_s": p, "ratio": p / d}));
                    h = h.peer_beside(tool.name(), Stat::new("s", v).figure(), None);
                }
            }
            if let Some(fl) = floor {
                parts.push(format!("floor {fl:.2} s ({:.2}× the floor)", d / fl));
                h = h.limit(
                    format!(
                        "`ssh host true` to all {n} hosts at once with drover's key exchange ({})",
                        self.kex
                    ),
                    Figure::single(fl),
                );
            }
            println!("  {} (peer / drover exec)", parts.join("; "));
            exec_json = json!({
                "walls_s": e,
                "median_s": d,
                "peers": peers_json,
                "floor_ratio": floor.map(|fl| d / fl),
            });
            headlines.push(h);
        }
        if m.single_default.is_empty() {
            line.push_str(" - / - |");
        } else {
            let _ = write!(
                line,
                " {:.2} / {:.2} |",
                median(&walls(&m.single_default)),
                median(&walls(&m.all_default)),
            );
        }
        if m.single_drover.is_empty() {
            line.push_str(" - / - |\n");
        } else {
            let _ = writeln!(
                line,
                " {:.2} / {:.2} |",
                median(&walls(&m.single_drover)),
                median(&walls(&m.all_drover))
            );
        }
        // The memory rows are the --sizes' (a --large size is on one fleet
        // only; its figures are in its JSON).
        let memory = max_of(Tool::Drover, Case::One, Kex::Drover, |s| s.maxrss_kib)
            .filter(|_| !large)
            .map(|drover_maxrss_kib| Memory {
                fleet: kind,
                hosts: n,
                drover_maxrss_kib,
                tree_pss_kib: self
                    .tools
                    .iter()
                    .filter_map(|&t| max_of(t, Case::One, Kex::Drover, |s| s.tree_pss_kib).map(|k| (t, k)))
                    .collect(),
            });
        SizeDone {
            line,
            json: json!({
                "fleet": kind.key(),
                "fleet_label": kind.label(),
                "fleet_description": kind.describe(),
                "hosts": n,
                "user": f.access.user,
                "port": f.access.port,
                "server_algorithms": f.server_algorithms,
                "status": "measured",
                "large": large,
                "runs": self.runs_at(idx),
                "physical": physical,
                "tools": tools_json,
                "tools_default_kex": default_json,
                "ratios": ratios_json,
                "floor_ratio": floor_json,
                "targets": targets_json,
                "targets_judged_at": if large { LARGE_TARGET_HOSTS } else { TARGET_HOSTS },
                "drover_breakdown_ms": breakdown_json,
                "exec": exec_json,
            }),
            headlines,
            memory,
            verdicts,
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

    /// `drover exec FILE --parallel N -- true` on every host at once (the
    /// one-command workflow file serves as the inventory); checked from
    /// the journal: one exec run, every server's `true` exited 0.
    fn drover_exec(&self, f: &Fleet, run: usize) -> Result<Sample> {
        let state = f.dir.join("exec-state.db");
        for suffix in ["", "-wal", "-shm"] {
            let mut p = state.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        let mut cmd = Command::new(&self.drover);
        cmd.arg("exec")
            .arg(workflow_file(&f.dir, Case::One))
            .arg("--parallel")
            .arg(f.hosts.len().to_string())
            .arg("--state")
            .arg(&state)
            .args(["--", "true"])
            .env("DROVER_HOME", &self.home)
            .env("DROVER_VENV", &self.venv)
            .current_dir(&f.dir);
        let sample = run_cmd(&mut cmd, self.timeout, &f.dir.join(format!("drover-exec-{run}")))?;
        let store = Store::open(&state)?;
        let runs = store.runs()?;
        let [record] = runs.as_slice() else {
            bail!(
                "drover exec: expected one run in {}, found {}",
                state.display(),
                runs.len()
            );
        };
        if record.status != RunStatus::Succeeded {
            bail!("drover exec: run {} ended {}", record.id, record.status.as_str());
        }
        let ok = store
            .journal(&record.id)?
            .iter()
            .filter(|e| matches!(&e.event, Event::TaskSucceeded { found, .. } if found.get("exit_code").map(String::as_str) == Some("0")))
            .count();
        if ok != f.hosts.len() {
            bail!("drover exec: {ok} of {} servers exited 0", f.hosts.len());
        }
        Ok(sample)
    }

    /// ssh options choosing drover's key exchange (none for OpenSSH's
    /// default).
    fn kex_options(&self, kex: Kex) -> Vec<String> {
        match kex {
            Kex::Drover => vec!["-o".into(), format!("KexAlgorithms={}", self.kex)],
            Kex::Default => Vec::new(),
        }
    }

    fn pdsh(&self, f: &Fleet, case: Case, kex: Kex) -> Result<Sample> {
        let n = f.hosts.len();
        // pdsh splits PDSH_SSH_ARGS on spaces; %u and %h are its user and
        // host. PDSH_SSH_ARGS_APPEND is added after them.
        let args = format!("{} -l%u %h", f.ssh_options().join(" "));
        let mut total = Sample::default();
        for step in 0..case.steps() {
            let mut cmd = Command::new("pdsh");
            cmd.args(["-S", "-R", "ssh", "-f", &n.to_string(), "-l", &f.access.user, "-w"])
                .arg(format!("^{}", f.hostsfile.display()))
                .arg("true")
                .env("PDSH_SSH_ARGS", &args)
                .env("PDSH_SSH_ARGS_APPEND", self.kex_options(kex).join(" "))
                .current_dir(&f.dir);
            let log = f.dir.join(format!("pdsh-{step}"));
            let s = run_cmd(&mut cmd, self.timeout, &log)?;
            expect_quiet(&log, "pdsh")?;
            total = total.then(s);
        }
        Ok(total)
    }

    fn pssh(&self, f: &Fleet, case: Case, kex: Kex) -> Result<Sample> {
        let n = f.hosts.len();
        let mut total = Sample::default();
        for step in 0..case.steps() {
            let mut cmd = Command::new("parallel-ssh");
            cmd.arg("-h")
                .arg(&f.hostsfile)
                .args(["-l", &f.access.user, "-p", &n.to_string(), "-t", "60", "-x"])
                .arg(f.ssh_options().join(" "));
            if kex == Kex::Drover {
                cmd.arg("-O").arg(format!("KexAlgorithms={}", self.kex));
            }
            cmd.arg("true").current_dir(&f.dir);
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

    fn ansible(&self, f: &Fleet, case: Case, run: usize, kex: Kex) -> Result<Sample> {
        let n = f.hosts.len().to_string();
        // A fresh control-socket directory: every run starts without
        // connections (ControlPersist keeps them 60 s by default).
        let cp = f.dir.join(format!("cp{}{kex:?}{run}", case.steps()));
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
            .env("ANSIBLE_HOME", f.dir.join("ansible/home"))
            .env("ANSIBLE_SSH_CONTROL_PATH_DIR", &cp)
            .env("ANSIBLE_SSH_EXTRA_ARGS", self.kex_options(kex).join(" "))
            .env("ANSIBLE_NOCOLOR", "1")
            .current_dir(&f.dir);
        if f.kind == FleetKind::Local {
            // The local hosts' root; on the existing hosts the login user
            // keeps ansible's default (~/.ansible/tmp in its home).
            cmd.env("ANSIBLE_REMOTE_TEMP", f.dir.join("ansible/remote"));
        }
        let log = f.dir.join(format!("ansible-{}-{kex:?}-{run}", case.steps()));
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

    /// One bare `ssh host true`.
    fn ssh_one(&self, f: &Fleet, host: &Target, kex: Kex) -> Result<Sample> {
        let mut cmd = Command::new("ssh");
        cmd.args(self.kex_options(kex))
            .args(f.ssh_options())
            .arg(f.destination(host))
            .arg("true");
        run_cmd(&mut cmd, self.timeout, &f.dir.join("ssh-one"))
    }

    /// `ssh host true` to every host at once.
    fn ssh_all(&self, f: &Fleet, kex: Kex) -> Result<Sample> {
        let options = f.ssh_options();
        let kex_options = self.kex_options(kex);
        let before = machine_busy();
        let started = Instant::now();
        let mut children = Vec::new();
        for h in &f.hosts {
            let child = Command::new("ssh")
                .args(&kex_options)
                .args(&options)
                .arg(f.destination(h))
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

fn target_of(h: &HostInfo) -> Target {
    Target {
        hostname: h.hostname.clone(),
        address: h.address.clone(),
        pid: h.pid as i32,
    }
}

/// Waits until no host has a session left (every sshd is alone again:
/// connections of the last measurement closed, their processes gone), at
/// most 10 s, then a moment more, so that one measurement's tail does not
/// land in the next. Reaps the orphans that ended meanwhile (this process
/// is their subreaper).
fn settle(f: &Fleet) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let busy = |h: &Target| {
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", h.pid)).is_ok_and(|c| !c.trim().is_empty())
    };
    while f.hosts.iter().any(busy) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    reap_orphans(f);
}

/// Reaps our children that ended and are none of the hosts' (a local
/// host's `unshare` parent and an existing host's sshd are reaped by their
/// fleet itself).
fn reap_orphans(f: &Fleet) {
    for pid in children_of(std::process::id() as i32) {
        if f.keep.contains(&pid) || proc_state(pid) != Some('Z') {
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
fn sshd_memory(hosts: &[Target]) -> (f64, f64) {
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

/// A drover home: the real schemas, local and static providers, and taskservs
/// step-0..9, each requiring the previous one, whose scripts run `true`.
fn generate_home(real: &Path, home: &Path) -> Result<()> {
    std::fs::create_dir_all(home.join("providers"))?;
    std::os::unix::fs::symlink(real.join("schemas"), home.join("schemas"))?;
    for provider in ["local", "static"] {
        std::os::unix::fs::symlink(
            real.join("providers").join(provider),
            home.join("providers").join(provider),
        )?;
    }
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
/// `drover run` finds them with the provider's status: the local
/// provider's fleet, or for `static` one command over the run's connection
/// to each); one operation installs step-0, or step-0..9 in their
/// `requires` order, on every host, all hosts at once. The existing hosts
/// are reached as an operator's are: `ssh = drover.SshAccess {...}` with
/// the fleet's user, port, key and known_hosts (checked strictly).
fn workflow(f: &Fleet, case: Case) -> String {
    let all: Vec<String> = (0..STEPS).map(|i| format!("\"step-{i}\"")).collect();
    let items = &all[..case.steps()];
    let (provider, ssh, access) = match f.kind {
        FleetKind::Local => ("local", "", String::new()),
        FleetKind::Existing => (
            "static",
            ", ssh = _ssh",
            format!(
                "_ssh = drover.SshAccess {{user = {:?}, port = {}, key_file = {:?}, known_hosts = {:?}, host_key_policy = \"strict\"}}\n",
                f.access.user,
                f.access.port,
                f.access.key.display().to_string(),
                f.access.known_hosts.display().to_string()
            ),
        ),
    };
    let mut servers = String::new();
    for h in &f.hosts {
        let _ = writeln!(
            servers,
            "        drover.ServerDef {{hostname = \"{}\", provider = \"{provider}\", plan = \"small\", address = \"{}\"{ssh}, taskservs = _steps}}",
            h.hostname, h.address
        );
    }
    format!(
        r#"import drover

_steps = [{all}]
{access}
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
        parallel = f.hosts.len(),
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
