//! `drover schedule ...`: cron schedules of a drover server (`drover
//! serve`), over its HTTP API: add one (a workflow, or a command on
//! servers), list, show, pause, resume, delete. The API and the token are
//! found as `drover batch` finds them.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use drover_server::wire::{
    ExecRequest, FleetSelector, MissedPolicy, OverlapPolicy, ScheduleList, ScheduleRequest, ScheduleView,
    ScheduledWorkflow,
};
use reqwest::Method;

use crate::batch::DEFAULT_API;
use crate::batch::client::{ApiError, Client, Setup};
use crate::batch::render::{columns, utc};

pub(crate) const AFTER_HELP: &str = "\
A schedule starts a workflow, or a command on the servers of a fleet file, on the slots of a cron
expression: 5 fields (minute hour day month weekday), or 6 with seconds first ('*/30 * * * * *'),
read in a time zone (--timezone, default UTC). Each slot fires at most once, across restarts.

  --overlap skip      a slot while the schedule's previous run is still active is skipped (default)
  --overlap queue     ... is queued anyway
  --missed skip       slots that passed while the server was down are recorded as missed (default)
  --missed run-once   ... one run is started for the latest of them

Roles: viewers list and show; operators add, pause, resume and delete; a file named by its path on
the server (--server-path) needs an admin.

Exit status: 0 success, 1 refused (400, 404), 2 usage, 3 environment (the API cannot be reached,
refused the token or its role, or failed).";

/// `drover schedule`: its connection settings and command.
#[derive(Debug, clap::Args)]
pub(crate) struct ScheduleArgs {
    /// The drover API's base URL.
    #[arg(long, env = "DROVER_API", value_name = "URL", default_value = DEFAULT_API, global = true)]
    api: String,
    /// For an https API: trust only the certificates in FILE (PEM).
    #[arg(long, env = "DROVER_CACERT", value_name = "FILE", global = true)]
    cacert: Option<PathBuf>,
    #[command(subcommand)]
    command: ScheduleCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ScheduleCommand {
    /// Add a schedule of FILE (a workflow), or, with a command after
    /// `--`, of that command on FILE's servers (an inventory or workflow
    /// file).
    Add(AddArgs),
    /// List the schedules: id, what, cron, time zone, last run and its
    /// status, next run.
    List,
    /// One schedule and its latest slots (fired, skipped, missed, failed).
    Show {
        /// Its id.
        id: String,
    },
    /// Pause a schedule: no slot fires until it is resumed.
    Pause {
        /// Its id.
        id: String,
    },
    /// Resume a schedule: slots from now on fire.
    Resume {
        /// Its id.
        id: String,
    },
    /// Delete a schedule (the runs it started stay).
    Delete {
        /// Its id.
        id: String,
    },
}

#[derive(Debug, clap::Args)]
struct AddArgs {
    /// The workflow file (or, with a command, the fleet file): sent as
    /// its source, or with --server-path named by its path on the server.
    file: PathBuf,
    /// The cron expression ('0 3 * * *', '*/30 * * * * *').
    #[arg(long)]
    cron: String,
    /// The IANA time zone the expression is read in.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// While the previous run is still active: skip or queue.
    #[arg(long, value_enum, default_value = "skip")]
    overlap: OverlapArg,
    /// Slots that passed while the server was down: skip or run-once.
    #[arg(long, value_enum, default_value = "skip")]
    missed: MissedArg,
    /// Add it paused.
    #[arg(long)]
    paused: bool,
    /// FILE is a path on the server (under its --workflows-dir; admin).
    #[arg(long)]
    server_path: bool,
    /// With a command: only these servers (hostnames).
    #[arg(long = "server", value_name = "HOSTNAME")]
    servers: Vec<String>,
    /// With a command: only servers in these groups.
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// With a command: only servers with these tags.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// The command to run on the servers (after `--`): the schedule is an
    /// exec.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OverlapArg {
    Skip,
    Queue,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum MissedArg {
    Skip,
    RunOnce,
}

/// Run a `drover schedule` command.
pub(crate) fn main(args: ScheduleArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let client = match Client::with_cacert(&args.api, args.cacert.as_deref()) {
        Ok(c) => c,
        Err(Setup { message, code }) => {
            eprintln!("drover: {message}");
            return Ok(ExitCode::from(code));
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(async {
        match args.command {
            ScheduleCommand::Add(add) => {
                let Some(req) = request_of(add) else {
                    return Ok(None);
                };
                let s: ScheduleView = client
                    .call(client.request(Method::POST, &["schedules"]).json(&req))
                    .await?;
                Ok(Some(format!("schedule {} added\n{}", s.id, detail(&s))))
            }
            ScheduleCommand::List => {
                let list: ScheduleList = client.call(client.request(Method::GET, &["schedules"])).await?;
                Ok(Some(table(&list.schedules)))
            }
            ScheduleCommand::Show { id } => {
                let s: ScheduleView = client.call(client.request(Method::GET, &["schedules", &id])).await?;
                Ok(Some(detail(&s)))
            }
            ScheduleCommand::Pause { id } => {
                let s: ScheduleView = client
                    .call(client.request(Method::POST, &["schedules", &id, "pause"]))
                    .await?;
                Ok(Some(format!("schedule {} paused\n", s.id)))
            }
            ScheduleCommand::Resume { id } => {
                let s: ScheduleView = client
                    .call(client.request(Method::POST, &["schedules", &id, "resume"]))
                    .await?;
                Ok(Some(format!(
                    "schedule {} resumed; next run {}\n",
                    s.id,
                    s.next_run.as_deref().unwrap_or("-")
                )))
            }
            ScheduleCommand::Delete { id } => {
                let s: ScheduleView = client.call(client.request(Method::DELETE, &["schedules", &id])).await?;
                Ok(Some(format!("schedule {} deleted (its runs stay)\n", s.id)))
            }
        }
    });
    let result: Result<Option<String>, ApiError> = result;
    match result {
        Ok(Some(text)) => {
            write!(out, "{text}")?;
            Ok(ExitCode::SUCCESS)
        }
        // The file could not be read (reported): refused, as a 400 is.
        Ok(None) => Ok(ExitCode::from(1)),
        Err(e) => Ok(client.report(&e)),
    }
}

fn request_of(a: AddArgs) -> Option<ScheduleRequest> {
    let (source, path) = crate::batch::exec::file_of(&a.file, a.server_path)?;
    let command = a.command.join(" ");
    let (workflow, exec) = if command.trim().is_empty() {
        (Some(ScheduledWorkflow { source, path }), None)
    } else {
        let exec = ExecRequest {
            source,
            path,
            selector: FleetSelector {
                servers: a.servers,
                groups: a.groups,
                tags: a.tags,
                criteria: Vec::new(),
            },
            command,
            ..ExecRequest::default()
        };
        (None, Some(exec))
    };
    Some(ScheduleRequest {
        workflow,
        exec,
        cron: a.cron,
        timezone: a.timezone,
        overlap: match a.overlap {
            OverlapArg::Skip => OverlapPolicy::Skip,
            OverlapArg::Queue => OverlapPolicy::Queue,
        },
        missed: match a.missed {
            MissedArg::Skip => MissedPolicy::Skip,
            MissedArg::RunOnce => MissedPolicy::RunOnce,
        },
        paused: a.paused,
    })
}

/// One row per schedule.
fn table(schedules: &[ScheduleView]) -> String {
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                format!("{} {}", s.kind, s.target),
                s.cron.clone(),
                s.timezone.clone(),
                s.last_run.as_ref().map_or_else(|| "-".into(), |r| r.run_id.clone()),
                s.last_status.clone().unwrap_or_else(|| "-".into()),
                if s.paused {
                    "paused".into()
                } else {
                    s.next_run.clone().unwrap_or_else(|| "-".into())
                },
            ]
        })
        .collect();
    columns(
        &["id", "what", "cron", "timezone", "last run", "status", "next run"],
        &rows,
    )
}

/// A schedule, then its latest slots.
fn detail(s: &ScheduleView) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "id:        {}", s.id);
    let _ = writeln!(out, "what:      {} {}", s.kind, s.target);
    let _ = writeln!(out, "cron:      {} ({})", s.cron, s.timezone);
    let _ = writeln!(
        out,
        "policies:  overlap {}, missed {}",
        s.overlap.as_str(),
        s.missed.as_str()
    );
    let _ = writeln!(out, "created:   {} by {}", utc(s.created_at_ms), s.created_by);
    let _ = writeln!(out, "paused:    {}", if s.paused { "yes" } else { "no" });
    let _ = writeln!(out, "next run:  {}", s.next_run.as_deref().unwrap_or("-"));
    match &s.last_run {
        Some(r) => {
            let _ = writeln!(
                out,
                "last run:  {} for slot {} ({})",
                r.run_id,
                r.slot,
                s.last_status.as_deref().unwrap_or("removed")
            );
        }
        None => {
            let _ = writeln!(out, "last run:  -");
        }
    }
    if !s.slots.is_empty() {
        let rows: Vec<Vec<String>> = s
            .slots
            .iter()
            .map(|r| {
                vec![
                    r.slot.clone(),
                    r.outcome.clone(),
                    r.count.to_string(),
                    r.run_id.clone().unwrap_or_else(|| "-".into()),
                    r.detail.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&columns(&["slot", "outcome", "slots", "run", "detail"], &rows));
    }
    out
}
