//! `drover batch exec`: a shell command on the servers a selector picks,
//! run by the server (`POST /fleet/exec`) as a run of its own; with
//! `--watch`, followed to its end and its answers printed as `drover exec`
//! prints them (identical answers grouped, the largest group first).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use drover_core::model::{Criterion, CriterionField as F, CriterionOp as O};
use drover_exec::fleet::MaxFail;
use drover_server::wire::{
    CriterionField, CriterionOp, ExecAccepted, ExecRequest, ExecRolling, ExecView, FleetCriterion, FleetSelector,
};
use reqwest::Method;

use super::client::Client;
use super::follow::{Feed, Step, spawn_follow};
use super::render::exec_text;
use super::{INTERRUPTED, INVALID, Outcome, USAGE};
use crate::runs::{Ending, RUN_FAILED, exit_for};

/// Arguments of `drover batch exec`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub(super) struct Args {
    /// An inventory or workflow file (.k) whose servers to choose from,
    /// read here and sent as source (it must not import files of its own
    /// directory: use --server-path for such a file on the server).
    file: PathBuf,
    /// Only servers with every one of these tags ("!t": without t);
    /// repeatable or comma-separated.
    #[arg(long = "tag", value_name = "T", value_delimiter = ',')]
    tags: Vec<String>,
    /// Only servers in one of these groups; repeatable or comma-separated.
    #[arg(long = "group", value_name = "G", value_delimiter = ',')]
    groups: Vec<String>,
    /// Only these servers (by hostname); repeatable or comma-separated.
    #[arg(long = "server", value_name = "S", value_delimiter = ',')]
    servers: Vec<String>,
    /// Only servers meeting every one of these conditions: FIELD=VALUE,
    /// FIELD=A|B, FIELD~TEXT, FIELD=~REGEX (see `drover exec --help`).
    #[arg(long = "criteria", value_name = "COND", value_parser = crate::fleet::criterion)]
    criteria: Vec<Criterion>,
    /// At most this many servers at once (default 64).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    parallel: Option<u32>,
    /// Roll through the servers N at a time; the roll halts when more
    /// than --max-fail servers failed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rolling: Option<u32>,
    /// With --rolling: wait this long between batches (30s, 2m, ...).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration_arg, requires = "rolling")]
    pause: Option<Duration>,
    /// With --rolling: how many failed servers the roll tolerates (N, or
    /// P% of the selected servers; default 0).
    #[arg(long, value_name = "N|P%", requires = "rolling")]
    max_fail: Option<MaxFail>,
    /// Run the command as root (`sudo -n`) on servers whose ssh access
    /// declares no `become` of its own.
    #[arg(long = "become")]
    become_root: bool,
    /// Kill the command on a server that has not ended after this long
    /// (default 10m).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration_arg)]
    timeout: Option<Duration>,
    /// Wait for the exec to end, print the answers grouped and exit with
    /// its status.
    #[arg(long)]
    watch: bool,
    /// FILE is a path on the server (admin role): send the path, not the
    /// source.
    #[arg(long)]
    server_path: bool,
    /// The command, after `--`: its words joined with spaces and run by
    /// /bin/sh on each server.
    #[arg(last = true, value_name = "COMMAND", required = true)]
    command: Vec<String>,
}

const AFTER_HELP: &str = "\
Examples:
  drover batch exec fleet.k --tag web -- uptime
  drover batch exec fleet.k --group db --rolling 2 --max-fail 1 --become --watch -- systemctl restart postgresql

The exec is a run on the server: `drover batch status|logs|cancel|retry RUN_ID` work on it.
Exit status as for `drover batch submit`; with --watch, 4 if a server failed (a command exited
non-zero, a server did not answer, the roll halted), 5 if the exec was cancelled.";

/// The wire form of a criterion read on the command line.
fn criterion(c: &Criterion) -> FleetCriterion {
    FleetCriterion {
        field: match c.field {
            F::Hostname => CriterionField::Hostname,
            F::Provider => CriterionField::Provider,
            F::Plan => CriterionField::Plan,
            F::Zone => CriterionField::Zone,
            F::Address => CriterionField::Address,
            F::Tag => CriterionField::Tag,
            F::Group => CriterionField::Group,
        },
        op: match c.op {
            O::Equals => CriterionOp::Equals,
            O::Contains => CriterionOp::Contains,
            O::In => CriterionOp::In,
            O::Matches => CriterionOp::Matches,
        },
        value: c.value.clone(),
        values: c.values.clone(),
    }
}

/// The file as a request gives it: its source, or (`server_path`) its
/// path on the server; None (reported) when it cannot be read here.
pub(crate) fn file_of(file: &Path, server_path: bool) -> Option<(Option<String>, Option<String>)> {
    if server_path {
        // A relative path that exists here is most likely meant from here
        // (the server on this machine); otherwise the server resolves it.
        let path = match std::path::absolute(file) {
            Ok(abs) if file.is_relative() && file.exists() => abs,
            _ => file.to_path_buf(),
        };
        return Some((None, Some(path.display().to_string())));
    }
    match std::fs::read_to_string(file) {
        Ok(source) => Some((Some(source), None)),
        Err(e) => {
            eprintln!(
                "drover: cannot read {}: {e} (for a file on the server, add --server-path)",
                file.display()
            );
            None
        }
    }
}

/// `drover batch exec`.
pub(super) async fn exec(client: &Client, args: Args, out: &mut impl Write) -> Outcome {
    let command = args.command.join(" ");
    if command.trim().is_empty() {
        eprintln!(
            "drover: no command: give it after `--`, e.g. `drover batch exec {} -- uptime`",
            args.file.display()
        );
        return Ok(ExitCode::from(USAGE));
    }
    let Some((source, path)) = file_of(&args.file, args.server_path) else {
        return Ok(ExitCode::from(INVALID));
    };
    let req = ExecRequest {
        source,
        path,
        selector: FleetSelector {
            servers: args.servers,
            groups: args.groups,
            tags: args.tags,
            criteria: args.criteria.iter().map(criterion).collect(),
        },
        command,
        parallel: args.parallel,
        rolling: args.rolling.map(|batch| ExecRolling {
            batch,
            pause: args.pause.map_or(0, |d| d.as_secs()),
            max_fail: args.max_fail.map(|m| m.to_string()),
        }),
        become_root: args.become_root,
        timeout: args.timeout.map(|d| d.as_secs().max(1)),
    };
    let accepted: ExecAccepted = client
        .call(client.request(Method::POST, &["fleet", "exec"]).json(&req))
        .await?;
    let run = accepted.run_id;
    writeln!(
        out,
        "run {run} {}: exec on {} ({}): {}",
        accepted.status,
        drover_exec::fleet::hostlist(&accepted.servers),
        super::render::servers(accepted.servers.len()),
        accepted.command
    )?;
    out.flush()?;
    if !args.watch {
        return Ok(ExitCode::SUCCESS);
    }
    // The run's end comes through its event stream (which survives the
    // server restarting); the answers are read once it has ended.
    let mut steps = spawn_follow(client.clone(), run.clone(), Feed::Transitions, true, None);
    loop {
        let step = tokio::select! {
            s = steps.recv() => s,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("drover: stopped watching; exec {run} goes on on the server (`drover batch status {run} --follow`)");
                return Ok(ExitCode::from(INTERRUPTED));
            }
        };
        match step {
            Some(Ok(Step::Note(text))) => eprintln!("drover: {text}"),
            Some(Ok(Step::End(_))) | None => break,
            Some(Ok(Step::Transition(_) | Step::Log(_))) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
    let view: ExecView = client
        .call(client.request(Method::GET, &["fleet", "exec", &run]))
        .await?;
    write!(out, "{}", exec_text(&view))?;
    Ok(match super::parse_status(&view.status) {
        Some(s) => exit_for(s, Ending::Run),
        None => ExitCode::from(RUN_FAILED),
    })
}
