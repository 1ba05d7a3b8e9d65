//! `drover batch ...`: the client of `drover serve`. Runs are submitted,
//! watched, inspected and steered over the HTTP API; every body is one of
//! the server's wire types (`drover_server::wire`), so client and server
//! cannot drift apart.
//!
//! Layout: this file has the commands (clap) and one function per
//! command; [`client`] the settings, token, requests and what each API
//! error means (message, exit status); [`follow`] an event stream that
//! survives the server being killed and restarted; [`render`] the tables
//! and lines printed.

pub(crate) mod client;
pub(crate) mod exec;
mod follow;
pub(crate) mod render;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use drover_server::wire::{
    ActionResponse, JournalEvent, OperationPlan, RetryRequest, RunList, RunStatusView, SubmitRequest, SubmitResponse,
};
use drover_state::{Event, RunStatus};
use reqwest::Method;
use tokio::sync::mpsc;

use self::client::{ApiError, Client, Setup};
use self::follow::{Feed, Step, last_seq, run_goes_on, spawn_follow};
use self::render::{columns, render_status, summary, transition_line, utc};
use crate::progress::{self, Layout, OperationLayout, Update};
use crate::runs::{Ending, RUN_FAILED, exit_for};

/// Where `drover serve` listens unless told otherwise.
pub(crate) const DEFAULT_API: &str = "http://127.0.0.1:7070";

const INVALID: u8 = 1;
const USAGE: u8 = 2;
const ENVIRONMENT: u8 = 3;
/// Interrupted by Ctrl-C while watching (128 + SIGINT, as shells report).
const INTERRUPTED: u8 = 130;

pub(crate) const AFTER_HELP: &str = "\
The API: --api URL, else DROVER_API, else http://127.0.0.1:7070. For https with a
self-signed or private-CA certificate: --cacert FILE (or DROVER_CACERT).

The token, sent as `Authorization: Bearer` on every request (never printed):
  DROVER_TOKEN                 the token itself, else
  DROVER_TOKEN_FILE            a file holding it, else
  the file `drover serve` writes on its first start, if it exists: api-token next to the
  state database (DROVER_STATE), by default $XDG_DATA_HOME/drover/api-token
  (~/.local/share/drover/api-token).

Exit status: 0 success, 1 invalid input (the workflow, or the API refused the request: 400, 404, 409),
2 usage, 3 environment (the API cannot be reached, refused the token, is busy (429) or failed (5xx)),
4 the watched run failed (or was rolled back), 5 it was cancelled or aborted.";

/// Connection settings of every `drover batch` command.
#[derive(Debug, clap::Args)]
pub(crate) struct BatchArgs {
    /// The drover API's base URL.
    #[arg(long, env = "DROVER_API", value_name = "URL", default_value = DEFAULT_API, global = true)]
    api: String,
    /// For an https API: trust only the certificates in FILE (PEM: the CA
    /// that issued the server's certificate, or the server's certificate
    /// itself when it is self-signed) instead of the built-in roots.
    #[arg(long, env = "DROVER_CACERT", value_name = "FILE", global = true)]
    cacert: Option<PathBuf>,
    #[command(subcommand)]
    command: BatchCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BatchCommand {
    /// Submit a workflow to the server's queue; print the run id.
    Submit {
        /// The workflow file (.k), read here and sent as source (its imports
        /// other than the `drover` package, and files it names, must exist
        /// on the server: use --server-path for those).
        file: PathBuf,
        /// Only evaluate and validate it on the server; nothing is recorded.
        #[arg(long, conflicts_with = "dry_run")]
        validate: bool,
        /// Evaluate, validate and plan it; print the plan's operations, run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Follow the run with a live view until it ends; exit with its status.
        #[arg(long, conflicts_with_all = ["validate", "dry_run"])]
        watch: bool,
        /// FILE is a path on the server: send the path, not the source. A
        /// relative path is made absolute here if the file exists here,
        /// else the server resolves it from its working directory.
        #[arg(long)]
        server_path: bool,
    },
    /// Run a shell command on the servers a selector picks in a fleet
    /// file; print the run id (with --watch: the answers, grouped).
    Exec(exec::Args),
    /// A run's state: per operation, its tasks' status, attempts, duration and error.
    Status {
        /// The run.
        run_id: String,
        /// Keep showing it until the run ends; exit with its status (as --watch does).
        #[arg(long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
    },
    /// The output lines of a run's tasks, as `task | line`.
    Logs {
        /// The run.
        run_id: String,
        /// Keep printing lines until the run ends.
        #[arg(long)]
        follow: bool,
        /// Only this task's lines (e.g. install/webhello@web-1).
        #[arg(long, value_name = "T")]
        task: Option<String>,
        /// Only lines of tasks on this server.
        #[arg(long, value_name = "S")]
        server: Option<String>,
    },
    /// List the server's runs, newest first.
    List {
        /// Only runs with this status.
        #[arg(long, value_name = "S", value_parser = clap::builder::PossibleValuesParser::new(RunStatus::ALL.map(RunStatus::as_str)))]
        status: Option<String>,
        /// At most this many runs.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Undo what a finished or failed run did, in reverse dependency order.
    Rollback {
        /// The run.
        run_id: String,
        /// Follow the rollback until it ends; exit 0 if the run is rolled back.
        #[arg(long)]
        watch: bool,
    },
    /// Run the failed and cancelled tasks of a finished run again.
    Retry {
        /// The run.
        run_id: String,
        /// Only this operation's tasks (and what follows from them).
        #[arg(long, value_name = "ID")]
        operation: Option<String>,
        /// Follow the run until it ends; exit with its status.
        #[arg(long)]
        watch: bool,
    },
    /// Stop starting tasks; running ones finish.
    Pause {
        /// The run.
        run_id: String,
    },
    /// Start tasks again after a pause.
    Resume {
        /// The run.
        run_id: String,
    },
    /// Cancel a run: running tasks are stopped, nothing new starts.
    Cancel {
        /// The run.
        run_id: String,
    },
}

/// How `drover batch status` prints a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StatusFormat {
    /// A table per operation.
    Table,
    /// The API's status view, as it is.
    Json,
    /// The same as YAML.
    Yaml,
}

/// Run a `drover batch` command.
pub(crate) fn main(args: BatchArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let client = match Client::with_cacert(&args.api, args.cacert.as_deref()) {
        Ok(c) => c,
        Err(Setup { message, code }) => {
            eprintln!("drover: {message}");
            return Ok(ExitCode::from(code));
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let result = match args.command {
            BatchCommand::Submit {
                file,
                validate,
                dry_run,
                watch,
                server_path,
            } => submit(&client, &file, validate, dry_run, watch, server_path, out).await,
            BatchCommand::Exec(args) => exec::exec(&client, args, out).await,
            BatchCommand::Status { run_id, follow, format } => status(&client, &run_id, follow, format, out).await,
            BatchCommand::Logs {
                run_id,
                follow,
                task,
                server,
            } => logs(&client, &run_id, follow, task, server, out).await,
            BatchCommand::List { status, limit } => list(&client, status, limit, out).await,
            BatchCommand::Rollback { run_id, watch } => {
                action(
                    &client,
                    &run_id,
                    "rollback",
                    None,
                    watch.then_some(Ending::Rollback),
                    out,
                )
                .await
            }
            BatchCommand::Retry {
                run_id,
                operation,
                watch,
            } => {
                let body = RetryRequest { operation };
                action(&client, &run_id, "retry", Some(body), watch.then_some(Ending::Run), out).await
            }
            BatchCommand::Pause { run_id } => action(&client, &run_id, "pause", None, None, out).await,
            BatchCommand::Resume { run_id } => action(&client, &run_id, "resume", None, None, out).await,
            BatchCommand::Cancel { run_id } => action(&client, &run_id, "cancel", None, None, out).await,
        };
        match result {
            Ok(code) => Ok(code),
            Err(CommandError::Api(e)) => Ok(client.report(&e)),
            Err(CommandError::Other(e)) => Err(e),
        }
    })
}

/// Why a command failed: the API (reported with its exit status) or
/// anything else (stdout closed, ...).
enum CommandError {
    Api(ApiError),
    Other(anyhow::Error),
}

impl From<ApiError> for CommandError {
    fn from(e: ApiError) -> CommandError {
        CommandError::Api(e)
    }
}

impl From<std::io::Error> for CommandError {
    fn from(e: std::io::Error) -> CommandError {
        CommandError::Other(e.into())
    }
}

type Outcome = Result<ExitCode, CommandError>;

/// `drover batch submit`.
async fn submit(
    client: &Client,
    file: &Path,
    validate_only: bool,
    dry_run: bool,
    watch: bool,
    server_path: bool,
    out: &mut impl Write,
) -> Outcome {
    let mut req = SubmitRequest {
        validate_only,
        dry_run,
        ..SubmitRequest::default()
    };
    if server_path {
        // A relative path that exists here is most likely meant from here
        // (the server on this machine); otherwise the server resolves it.
        let path = match std::path::absolute(file) {
            Ok(abs) if file.is_relative() && file.exists() => abs,
            _ => file.to_path_buf(),
        };
        req.path = Some(path.display().to_string());
    } else {
        match std::fs::read_to_string(file) {
            Ok(source) => req.source = Some(source),
            Err(e) => {
                eprintln!(
                    "drover: cannot read {}: {e} (for a file on the server, add --server-path)",
                    file.display()
                );
                return Ok(ExitCode::from(INVALID));
            }
        }
    }
    let resp: SubmitResponse = client
        .call(client.request(Method::POST, &["workflows", "batch"]).json(&req))
        .await?;
    let tasks = resp.tasks;
    match resp.run_id.clone() {
        Some(run) => {
            writeln!(
                out,
                "run {run} {}: workflow {}, {tasks} tasks",
                resp.status.as_deref().unwrap_or("queued"),
                resp.workflow
            )?;
            out.flush()?;
            if !watch {
                return Ok(ExitCode::SUCCESS);
            }
            let layout = if resp.operations.is_empty() {
                layout_of_status(&client.status(&run).await?)
            } else {
                layout_of_plan(&resp.operations)
            };
            watch_run(client, &run, layout, None, Ending::Run, out).await
        }
        None if validate_only => {
            write!(
                out,
                "ok: {} is valid: workflow {}, {} servers",
                file.display(),
                resp.workflow,
                resp.servers
            )?;
            if !resp.operations.is_empty() {
                write!(out, ", {} operations, {tasks} tasks", resp.operations.len())?;
            }
            writeln!(out)?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            writeln!(
                out,
                "dry run: workflow {}, {} servers, {} operations, {tasks} tasks; nothing was started",
                resp.workflow,
                resp.servers,
                resp.operations.len()
            )?;
            let width = resp.operations.iter().map(|o| o.id.len()).max().unwrap_or(0);
            for op in &resp.operations {
                let servers = distinct_servers(op.tasks.iter().filter_map(|t| t.server.as_deref()));
                writeln!(
                    out,
                    "  {:<width$}  {:>3} tasks{}",
                    op.id,
                    op.tasks.len(),
                    if servers.is_empty() {
                        String::new()
                    } else {
                        format!("  on {}", servers.join(", "))
                    }
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn distinct_servers<'a>(servers: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for s in servers {
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    seen
}

fn layout_of_plan(ops: &[OperationPlan]) -> Layout {
    Layout {
        operations: ops
            .iter()
            .map(|op| OperationLayout {
                id: op.id.clone(),
                tasks: op.tasks.iter().map(|t| (t.id.clone(), t.server.clone())).collect(),
            })
            .collect(),
    }
}

fn layout_of_status(view: &RunStatusView) -> Layout {
    Layout {
        operations: view
            .operations
            .iter()
            .map(|op| OperationLayout {
                id: op.id.clone(),
                tasks: op.tasks.iter().map(|t| (t.id.clone(), t.server.clone())).collect(),
            })
            .collect(),
    }
}

/// Follow a run with the live view until it ends; print the summary and
/// exit with its status.
async fn watch_run(
    client: &Client,
    run: &str,
    layout: Layout,
    after: Option<i64>,
    ending: Ending,
    out: &mut impl Write,
) -> Outcome {
    let (tx, updates) = mpsc::unbounded_channel();
    let view = tokio::spawn(progress::watch(layout, updates, None, false));
    let mut steps = spawn_follow(client.clone(), run.to_string(), Feed::Transitions, true, after);
    let ended = loop {
        let step = tokio::select! {
            s = steps.recv() => s,
            _ = tokio::signal::ctrl_c() => {
                drop(tx);
                let _ = view.await;
                eprintln!("drover: stopped watching; run {run} goes on on the server (`drover batch status {run} --follow`)");
                return Ok(ExitCode::from(INTERRUPTED));
            }
        };
        match step {
            Some(Ok(Step::Transition(j))) => {
                let Some(p) = progress_of(&j) else { continue };
                let update = match &p.event {
                    // Not the end: the run was resumed since.
                    Event::RunFinished { status, .. } => {
                        Update::Note(format!("the run stopped ({}) and was resumed", status.as_str()))
                    }
                    _ => Update::Progress(p),
                };
                let _ = tx.send(update);
            }
            Some(Ok(Step::Note(text))) => {
                let _ = tx.send(Update::Note(text));
            }
            Some(Ok(Step::Log(_))) => {}
            Some(Ok(Step::End(view))) => break view,
            Some(Err(e)) => {
                drop(tx);
                let _ = view.await;
                return Err(e.into());
            }
            None => break None,
        }
    };
    drop(tx);
    let _ = view.await;
    let view = match ended {
        Some(v) => *v,
        None => client.status(run).await?,
    };
    write!(out, "{}", summary(&view))?;
    Ok(exit_of(&view, ending))
}

/// A journal event as the progress view takes it; `None` for an event
/// this build does not know (a newer server).
fn progress_of(j: &JournalEvent) -> Option<drover_exec::Progress> {
    let event: Event = serde_json::from_value(j.event.clone()).ok()?;
    Some(drover_exec::Progress {
        seq: j.seq,
        node: j.node.clone(),
        event,
    })
}

fn parse_status(s: &str) -> Option<RunStatus> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

/// The exit status for a run in the state `view` shows.
fn exit_of(view: &RunStatusView, ending: Ending) -> ExitCode {
    match parse_status(&view.run.status) {
        Some(s) => exit_for(s, ending),
        None => ExitCode::from(RUN_FAILED),
    }
}

/// `drover batch status`.
async fn status(client: &Client, run: &str, follow: bool, format: StatusFormat, out: &mut impl Write) -> Outcome {
    if !follow {
        let view = client.status(run).await?;
        write!(out, "{}", render_status(&view, format)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Fail early, and plainly, for a run that does not exist.
    let mut view = client.status(run).await?;
    let redraw = format == StatusFormat::Table && std::io::stdout().is_terminal();
    if redraw {
        write!(out, "{CLEAR}{}", render_status(&view, format)?)?;
        out.flush()?;
    }
    if run_goes_on(&view.run.status) {
        let mut steps = spawn_follow(client.clone(), run.to_string(), Feed::Transitions, true, None);
        let mut last_fetch = Instant::now();
        let mut stale = false;
        loop {
            let due = last_fetch + REDRAW_EVERY;
            let step = tokio::select! {
                s = steps.recv() => s,
                _ = tokio::time::sleep_until(due.into()), if redraw && stale => {
                    last_fetch = Instant::now();
                    match client.status(run).await {
                        Ok(v) => view = v,
                        // The follower waits for the API to come back.
                        Err(e) if e.transient() => continue,
                        Err(e) => return Err(e.into()),
                    }
                    stale = false;
                    write!(out, "{CLEAR}{}", render_status(&view, format)?)?;
                    out.flush()?;
                    continue;
                }
            };
            match step {
                Some(Ok(Step::Transition(j))) => {
                    if redraw {
                        stale = true;
                    } else {
                        let line = transition_line(&j);
                        if format == StatusFormat::Table {
                            writeln!(out, "{line}")?;
                        } else {
                            eprintln!("{line}");
                        }
                    }
                }
                Some(Ok(Step::Note(text))) => eprintln!("drover: {text}"),
                Some(Ok(Step::Log(_))) => {}
                Some(Ok(Step::End(v))) => {
                    if let Some(v) = v {
                        view = *v;
                    }
                    break;
                }
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
    }
    if redraw {
        write!(out, "{CLEAR}")?;
    } else if format == StatusFormat::Table {
        writeln!(out)?;
    }
    write!(out, "{}", render_status(&view, format)?)?;
    Ok(exit_of(&view, Ending::Run))
}

/// Move to the top left and clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";
/// At most this often `status --follow` fetches and redraws the run.
const REDRAW_EVERY: Duration = Duration::from_millis(500);

/// `drover batch logs`.
async fn logs(
    client: &Client,
    run: &str,
    follow: bool,
    task: Option<String>,
    server: Option<String>,
    out: &mut impl Write,
) -> Outcome {
    if follow {
        // Fail early, and plainly, for a run that does not exist.
        client.status(run).await?;
    }
    let feed = Feed::Logs { task, server };
    let mut steps = spawn_follow(client.clone(), run.to_string(), feed, follow, None);
    while let Some(step) = steps.recv().await {
        match step? {
            Step::Log(l) => {
                writeln!(out, "{} | {}", l.task, l.line)?;
                if follow {
                    out.flush()?;
                }
            }
            Step::Note(text) => eprintln!("drover: {text}"),
            Step::Transition(_) => {}
            Step::End(_) => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `drover batch list`.
async fn list(client: &Client, status: Option<String>, limit: Option<u32>, out: &mut impl Write) -> Outcome {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(s) = status {
        query.push(("status", s));
    }
    if let Some(n) = limit {
        query.push(("limit", n.to_string()));
    }
    let list: RunList = client
        .call(client.request(Method::GET, &["workflows"]).query(&query))
        .await?;
    if list.runs.is_empty() {
        writeln!(out, "no runs")?;
    } else {
        let rows: Vec<Vec<String>> = list
            .runs
            .iter()
            .map(|r| {
                let r = &r.run;
                vec![
                    r.run_id.clone(),
                    r.status.clone(),
                    r.workflow.clone(),
                    r.file.clone(),
                    utc(r.created_at_ms),
                ]
            })
            .collect();
        write!(
            out,
            "{}",
            columns(&["run", "status", "workflow", "file", "created"], &rows)
        )?;
    }
    if list.queue_depth > 0 {
        writeln!(out, "{} run(s) waiting in the queue", list.queue_depth)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `drover batch rollback|retry|pause|resume|cancel`.
async fn action(
    client: &Client,
    run: &str,
    what: &str,
    body: Option<RetryRequest>,
    watch: Option<Ending>,
    out: &mut impl Write,
) -> Outcome {
    // Only what the command causes is followed, not the run's history
    // (which ends with the run_finished of its previous end).
    let after = match watch {
        Some(_) => last_seq(client, run).await?,
        None => None,
    };
    let mut req = client.request(Method::POST, &["workflows", run, what]);
    if let Some(b) = &body {
        req = req.json(b);
    }
    let resp: ActionResponse = client.call(req).await?;
    writeln!(
        out,
        "run {}: {} accepted (status {})",
        resp.run_id, resp.action, resp.status
    )?;
    out.flush()?;
    match watch {
        Some(ending) => {
            let layout = layout_of_status(&client.status(run).await?);
            watch_run(client, run, layout, after, ending, out).await
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_events_drive_the_progress_view() {
        let j: JournalEvent = serde_json::from_str(
            r#"{"seq":4,"at_ms":0,"node":"create/a","event":{"event":"task_started","attempt":1,"idempotency_key":"k"}}"#,
        )
        .expect("journal event");
        let p = progress_of(&j).expect("a known event");
        assert_eq!((p.seq, p.node.as_deref()), (4, Some("create/a")));
        assert!(matches!(p.event, Event::TaskStarted { attempt: 1, .. }));
        let newer: JournalEvent =
            serde_json::from_str(r#"{"seq":5,"at_ms":0,"node":null,"event":{"event":"from_the_future"}}"#)
                .expect("journal event");
        assert!(progress_of(&newer).is_none());
    }
}
