//! `drover`: the command-line interface.
//!
//! Exit status: 0 success, 1 invalid input (the workflow or a declaration
//! is wrong), 2 usage (wrong arguments), 3 environment (the KCL engine or
//! drover's home cannot be found, the state store is owned by another
//! process), 4 a run failed, 5 a run was cancelled or aborted, 6 drift
//! found (`drover drift`, `snapshot diff`). A closed stdout (e.g. `| head`)
//! is not an error.

mod batch;
mod fleet;
mod inventory;
mod kcl_worker;
mod progress;
mod render;
mod runs;
mod schedule;
mod secrets;
mod serve;
mod sse;
mod token;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use drover_kcl::problems as report;
use drover_kcl::{LoadError, Loader};

const AFTER_HELP: &str = "\
Exit status: 0 success, 1 invalid input, 2 usage, 3 environment (KCL engine or drover home missing,
the state store owned by another process), 4 the run failed (or was rolled back; for ping: a server did not answer;
for exec: a server failed; for snapshot take: a server could not be read), 5 the run was cancelled or aborted,
6 drift found (drover drift, drover snapshot diff: something changed).

Environment:
  DROVER_HOME     directory holding schemas/, providers/, taskservs/ (default: the source tree)
  DROVER_VENV     Python venv with kcl-lib (default: $DROVER_HOME/.venv)
  DROVER_KCL_LIB  path of kcl_lib's _kcl_lib*.so, overriding DROVER_VENV
  DROVER_STATE    the state database (default: $XDG_DATA_HOME/drover/state.db)
  DROVER_API, DROVER_TOKEN, DROVER_TOKEN_FILE
                  the server `drover batch` and `drover token` talk to, and the token they show
                  (see `drover batch --help`)";

/// drover: declarative batch workflows and fleet orchestration.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Evaluate and validate a workflow; print every problem found.
    Validate {
        /// The workflow file (.k).
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// Compile a workflow into its plan: the tasks, their order and limits.
    Plan {
        /// The workflow file (.k).
        file: PathBuf,
        /// Output format: a readable table, JSON, or Graphviz DOT.
        #[arg(long, value_enum, default_value_t = PlanFormat::Table)]
        format: PlanFormat,
        /// Print time spent evaluating KCL and planning to stderr.
        #[arg(long)]
        timings: bool,
    },
    /// Run a workflow here, on the embedded state store, with a live view.
    Run {
        /// The workflow file (.k); omit with --resume.
        #[arg(required_unless_present = "resume", conflicts_with = "resume")]
        file: Option<PathBuf>,
        /// Continue an unfinished run (after a crash or Ctrl-C) from its journal.
        #[arg(long, value_name = "RUN_ID")]
        resume: Option<String>,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// List the runs in the state store, newest first; `runs prune` removes old finished ones.
    Runs {
        #[command(subcommand)]
        command: Option<RunsCommand>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Run the failed and cancelled tasks of a finished run again.
    Retry {
        /// The run.
        run_id: String,
        /// Only this operation's tasks (and what follows from them).
        #[arg(long, value_name = "ID")]
        operation: Option<String>,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// The servers of an inventory (or workflow) file and the groups they are in.
    Inventory {
        #[command(subcommand)]
        command: InventoryCommand,
    },
    /// Check that servers answer over SSH: one OK/FAIL line each, with latency.
    Ping {
        /// An inventory file or a workflow file (.k).
        file: PathBuf,
        /// Only servers with every one of these tags ("!t": without t);
        /// repeatable or comma-separated.
        #[arg(long = "tag", value_name = "T", value_delimiter = ',')]
        tags: Vec<String>,
        /// Only servers in every one of these groups; repeatable or comma-separated.
        #[arg(long = "group", value_name = "G", value_delimiter = ',')]
        groups: Vec<String>,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Run a shell command on the selected servers; identical answers grouped.
    Exec(fleet::exec::Args),
    /// Past execs: list, show one, compare two.
    History(fleet::history::Args),
    /// Rerun a command at an interval; print the servers whose output changed.
    Watch(fleet::watch::Args),
    /// Follow files (or a systemd unit's journal) on the selected servers.
    Tail(fleet::tail::Args),
    /// Record files and command outputs of servers; compare two records.
    Snapshot(fleet::snapshot::Args),
    /// Compare the selected servers now with a snapshot: what changed, per server.
    Drift(fleet::snapshot::DriftArgs),
    /// Secrets: check that SOPS files decrypt, without printing values.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Undo what a finished or failed run did, in reverse dependency order.
    Rollback {
        /// The run.
        run_id: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// The orchestrator: HTTP API, web dashboard (at /), run queue and scheduler, on the embedded state
    /// store (SQLite) or on PostgreSQL shared with other instances.
    Serve(serve::ServeArgs),
    /// Submit, watch and steer runs on a drover server (`drover serve`) over its HTTP API.
    #[command(after_help = batch::AFTER_HELP)]
    Batch(batch::BatchArgs),
    /// API tokens of a drover server: create one with a role (viewer, operator, admin), list, revoke.
    #[command(after_help = token::AFTER_HELP)]
    Token(token::TokenArgs),
    /// Cron schedules of a drover server: add (a workflow, or a command on servers), list, show, pause, resume, delete.
    #[command(after_help = schedule::AFTER_HELP)]
    Schedule(schedule::ScheduleArgs),
    /// A KCL worker process of `drover serve` (started by the server itself).
    #[command(name = "kcl-worker", hide = true)]
    KclWorker(kcl_worker::WorkerArgs),
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Remove finished runs (succeeded, failed, cancelled, rolled back),
    /// their journals and log directories; never a run in progress or one
    /// that can be resumed.
    Prune {
        /// Remove those finished longer ago than this (30d, 12h, ...);
        /// default: each run's own logging.retention_days.
        #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
        older_than: Option<std::time::Duration>,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Debug, Subcommand)]
enum InventoryCommand {
    /// List servers (all, or those with every --tag and in every --group).
    List {
        /// An inventory file or a workflow file (.k).
        file: PathBuf,
        /// Only servers with every one of these tags ("!t": without t);
        /// repeatable or comma-separated (`--tag k8s,worker`: both).
        #[arg(long = "tag", value_name = "T", value_delimiter = ',')]
        tags: Vec<String>,
        /// Only servers in every one of these groups (hierarchy and criteria
        /// resolved); repeatable or comma-separated.
        #[arg(long = "group", value_name = "G", value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// List groups: how each is defined and the servers it resolves to now.
    Groups {
        /// An inventory file or a workflow file (.k).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Decrypt FILE in memory and list its keys (never values): a SOPS file,
    /// or a workflow (.k) whose every secrets file is checked with its age key.
    Check {
        /// A SOPS file, or a workflow file.
        file: PathBuf,
        /// An age identity file (default: the workflow's age_key_file, else
        /// SOPS_AGE_KEY_FILE or SOPS_AGE_KEY).
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
}

/// Where runs are kept.
#[derive(Debug, clap::Args)]
pub(crate) struct StateArgs {
    /// The state database (an SQLite file, or sqlite://PATH).
    #[arg(long, env = "DROVER_STATE", value_name = "PATH", value_parser = state_location())]
    pub(crate) state: Option<PathBuf>,
}

/// A `--state` argument: a path, or a URL of a store this build has.
pub(crate) fn state_location() -> StateArg<PathBuf> {
    StateArg(drover_state::parse_location)
}

/// Reads `--state` (or DROVER_STATE) with `parse`. A wrong value is
/// refused with the parser's message alone: clap's own message would
/// repeat the value, and a database URL may hold a password.
#[derive(Clone, Copy)]
pub(crate) struct StateArg<T>(pub(crate) fn(&str) -> Result<T, drover_state::StateError>);

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for StateArg<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let refuse = |msg: String| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("--state: {msg}\n")).with_cmd(cmd)
        };
        let s = value.to_str().ok_or_else(|| refuse("the value is not UTF-8".into()))?;
        (self.0)(s).map_err(|e| refuse(e.to_string()))
    }
}

/// A duration such as `30d`, `12h`, `90m`, `3600s` or `2w`.
pub(crate) fn duration_arg(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (a number and a unit: 30d, 12h, 90m, 3600s, 2w)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h, d or w")),
    };
    Ok(std::time::Duration::from_secs(n.saturating_mul(secs)))
}

/// How a run is carried out.
#[derive(Debug, Default, clap::Args)]
struct RunArgs {
    /// At most this many tasks at once (overrides the workflow's max_parallel).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    parallel: Option<u32>,
    /// Print every output line of every task.
    #[arg(long, short)]
    verbose: bool,
    /// Leave the run's directory on each SSH host ($TMPDIR/drover-RUN_ID,
    /// /tmp unless the provider says otherwise: the scripts' working
    /// directory and the folders staged there) for inspection.
    #[arg(long)]
    keep_remote_dirs: bool,
}

impl StateArgs {
    pub(crate) fn target(self) -> runs::Target {
        self.target_with(RunArgs::default())
    }

    fn target_with(self, run: RunArgs) -> runs::Target {
        runs::Target {
            state: self.state.unwrap_or_else(drover_exec::default_state_path),
            parallel: run.parallel,
            verbose: run.verbose,
            keep_remote_dirs: run.keep_remote_dirs,
        }
    }
}

/// How problems are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportFormat {
    /// For people.
    Text,
    /// For programs: {"ok": bool, "errors": [...]}.
    Json,
}

/// How a plan is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlanFormat {
    /// A readable summary per operation.
    Table,
    /// Every node and edge, for programs.
    Json,
    /// Graphviz DOT (render with `dot -Tsvg`).
    Dot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    let result = match cli.command {
        Command::Validate { file, format } => validate(&file, format, &mut out),
        Command::Plan { file, format, timings } => plan(&file, format, timings, &mut out),
        Command::Run {
            file,
            resume,
            state,
            run,
        } => runs::run(file.as_deref(), resume.as_deref(), &state.target_with(run), &mut out),
        Command::Runs {
            command: Some(RunsCommand::Prune { older_than, state }),
            ..
        } => runs::prune(older_than, &state.target(), &mut out),
        Command::Runs { command: None, state } => runs::list(&state.target(), &mut out),
        Command::Retry {
            run_id,
            operation,
            state,
            run,
        } => runs::retry(&run_id, operation.as_deref(), &state.target_with(run), &mut out),
        Command::Rollback { run_id, state } => runs::rollback(&run_id, &state.target(), &mut out),
        Command::Inventory {
            command: InventoryCommand::List { file, tags, groups },
        } => inventory::list(&file, &tags, &groups, &mut out),
        Command::Inventory {
            command: InventoryCommand::Groups { file },
        } => inventory::groups(&file, &mut out),
        Command::Ping {
            file,
            tags,
            groups,
            state,
        } => inventory::ping(&file, &tags, &groups, &state.target(), &mut out),
        Command::Secrets {
            command: SecretsCommand::Check { file, identity },
        } => secrets::check(&file, identity.as_deref(), &mut out),
        Command::Exec(args) => fleet::exec::main(args, &mut out),
        Command::History(args) => fleet::history::main(args, &mut out),
        Command::Watch(args) => fleet::watch::main(args, &mut out),
        Command::Tail(args) => fleet::tail::main(args, &mut out),
        Command::Snapshot(args) => fleet::snapshot::main(args, &mut out),
        Command::Drift(args) => fleet::snapshot::drift(args, &mut out),
        Command::Batch(args) => batch::main(args, &mut out),
        Command::Token(args) => token::main(args, &mut out),
        Command::Schedule(args) => schedule::main(args, &mut out),
        Command::Serve(args) => {
            // The server's workers log to stdout: holding its lock here
            // would block them forever.
            drop(out);
            serve::main(args)
        }
        Command::KclWorker(args) => {
            drop(out);
            kcl_worker::main(args)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Exit codes by cause.
const INVALID: u8 = 1;
const ENVIRONMENT: u8 = 3;

fn validate(file: &Path, format: ReportFormat, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let outcome = compile(file).map(|(plan, _)| plan);
    match (outcome, format) {
        (Ok(plan), ReportFormat::Text) => {
            writeln!(
                out,
                "ok: {} is valid: workflow {}, {} servers, {} operations, {} tasks",
                file.display(),
                plan.workflow.name,
                plan.workflow.servers.len(),
                plan.operations.len(),
                plan.task_count()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        (Ok(_), ReportFormat::Json) => {
            writeln!(out, "{}", serde_json::json!({"ok": true, "errors": []}))?;
            Ok(ExitCode::SUCCESS)
        }
        (Err(failure), format) => report_failure(failure, format, out),
    }
}

fn plan(file: &Path, format: PlanFormat, timings: bool, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (plan, t) = match compile(file) {
        Ok(x) => x,
        Err(failure) => return report_failure(failure, ReportFormat::Text, out),
    };
    let text = match format {
        PlanFormat::Table => render::table(&plan, file),
        PlanFormat::Json => render::json(&plan, file),
        PlanFormat::Dot => render::dot(&plan),
    };
    out.write_all(text.as_bytes())?;
    if timings {
        eprintln!(
            "timings: engine load {:.1} ms, workflow evaluation {:.1} ms, declarations {:.1} ms, planning {:.1} ms ({} tasks)",
            t.engine.as_secs_f64() * 1e3,
            t.load.workflow.as_secs_f64() * 1e3,
            t.load.catalog.as_secs_f64() * 1e3,
            t.plan.as_secs_f64() * 1e3,
            plan.task_count()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Why compiling a workflow failed.
pub(crate) enum Failure {
    Input(report::Problems),
    Environment(String),
}

struct Timings {
    engine: std::time::Duration,
    load: drover_kcl::LoadTimings,
    plan: std::time::Duration,
}

/// Evaluate and validate a workflow for running.
pub(crate) fn load_inputs(file: &Path) -> Result<drover_exec::Inputs, Failure> {
    let loader = Loader::discover().map_err(|e| Failure::Environment(e.to_string()))?;
    let (source, catalog, _) = loader.load(file).map_err(|e| match e {
        LoadError::Engine(e) => Failure::Environment(e.to_string()),
        LoadError::Kcl(d) => Failure::Input(report::Problems::Kcl(d)),
        LoadError::Model(d) => Failure::Input(report::Problems::Model(d)),
    })?;
    drover_core::compile(&source, &catalog).map_err(|d| Failure::Input(report::Problems::Model(d)))?;
    Ok(drover_exec::Inputs { source, catalog })
}

/// Evaluate and validate an inventory file (or a workflow's servers and
/// groups).
pub(crate) fn load_inventory(file: &Path) -> Result<drover_exec::Inputs, Failure> {
    let loader = Loader::discover().map_err(|e| Failure::Environment(e.to_string()))?;
    let fail = |e| match e {
        LoadError::Engine(e) => Failure::Environment(e.to_string()),
        LoadError::Kcl(d) => Failure::Input(report::Problems::Kcl(d)),
        LoadError::Model(d) => Failure::Input(report::Problems::Model(d)),
    };
    let source = loader.load_inventory(file).map_err(fail)?;
    let catalog = loader.load_catalog().map_err(fail)?;
    let problems = drover_core::validate::validate_inventory(&source, &catalog);
    if !problems.is_empty() {
        return Err(Failure::Input(report::Problems::Model(problems)));
    }
    Ok(drover_exec::Inputs { source, catalog })
}

fn compile(file: &Path) -> Result<(drover_core::Plan, Timings), Failure> {
    let started = std::time::Instant::now();
    let loader = Loader::discover().map_err(|e| Failure::Environment(e.to_string()))?;
    let engine = started.elapsed();
    let (source, catalog, load) = loader.load(file).map_err(|e| match e {
        LoadError::Engine(e) => Failure::Environment(e.to_string()),
        LoadError::Kcl(d) => Failure::Input(report::Problems::Kcl(d)),
        LoadError::Model(d) => Failure::Input(report::Problems::Model(d)),
    })?;
    let started = std::time::Instant::now();
    let plan = drover_core::compile(&source, &catalog).map_err(|d| Failure::Input(report::Problems::Model(d)))?;
    let plan_time = started.elapsed();
    Ok((
        plan,
        Timings {
            engine,
            load,
            plan: plan_time,
        },
    ))
}

pub(crate) fn report_failure(failure: Failure, format: ReportFormat, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match failure {
        Failure::Environment(msg) => {
            eprintln!("drover: {msg}");
            Ok(ExitCode::from(ENVIRONMENT))
        }
        Failure::Input(problems) => {
            let located = problems.locate();
            match format {
                ReportFormat::Text => {
                    let mut err = std::io::stderr().lock();
                    for p in &located {
                        write!(err, "{p}")?;
                    }
                    writeln!(err, "drover: {} problem(s) found", located.len())?;
                }
                ReportFormat::Json => {
                    writeln!(out, "{}", serde_json::json!({"ok": false, "errors": located}))?;
                }
            }
            Ok(ExitCode::from(INVALID))
        }
    }
}
