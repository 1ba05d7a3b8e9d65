//! `drover exec`: a shell command on the selected servers, identical
//! answers folded into one group each, as herd and `dshbak -c` print them.
//!
//! An exec is a run ([`drover_exec::fleet`]): it is journaled on the state
//! store as `drover run` journals a workflow, writes the same reports,
//! stops cleanly on Ctrl-C and goes on with `--resume`; `drover history`
//! reads it back from the journal. The answers go to stdout once the run
//! is over; the live view goes to stderr, and only to a terminal. Both
//! print through [`text`] and [`json`], so `drover history show` prints an
//! exec exactly as `drover exec` did.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use drover_core::model::Criterion;
use drover_exec::fleet::{self, Answer, ExecSpec, MaxFail, Rolling};
use drover_exec::report::Summary;
use drover_exec::{ExecError, Options, RunHandle, Status};
use drover_state::{Event, RunRecord, RunStatus, StateError, Store};

use super::Selection;
use crate::runs::{self, Ending};

/// Exit status of wrong arguments (as clap's own).
const USAGE: u8 = 2;
/// Exit status of a refusal the operator can act on (an unknown run).
const INVALID: u8 = 1;

/// Arguments of `drover exec`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// An inventory file or a workflow file (.k): the servers to choose from.
    #[arg(required_unless_present = "resume")]
    pub file: Option<PathBuf>,
    /// Only servers with every one of these tags ("!t": without t);
    /// repeatable or comma-separated.
    #[arg(long = "tag", value_name = "T", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Only servers in one of these groups (hierarchy and criteria
    /// resolved); repeatable or comma-separated.
    #[arg(long = "group", value_name = "G", value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Only these servers (by hostname); repeatable or comma-separated.
    /// With --group: servers named here or in one of the groups.
    #[arg(long = "server", value_name = "S", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Only servers meeting every one of these conditions, on hostname,
    /// provider, plan, zone, address, tag or group: FIELD=VALUE (equals),
    /// FIELD=A|B (one of), FIELD~TEXT (contains), FIELD=~REGEX (matches).
    /// Repeatable.
    #[arg(long = "criteria", value_name = "COND", value_parser = super::criterion)]
    pub criteria: Vec<Criterion>,
    /// At most this many servers at once (default 64).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: Option<u32>,
    /// Roll through the servers N at a time, in batches; the roll halts
    /// (what is left is skipped) when more than --max-fail servers failed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rolling: Option<u32>,
    /// With --rolling: wait this long between batches (30s, 2m, ...).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration_arg)]
    pub pause: Option<Duration>,
    /// With --rolling: how many failed servers the roll tolerates: N
    /// servers, or P% of the selected servers (default 0: the first
    /// failure halts it).
    #[arg(long, value_name = "N|P%")]
    pub max_fail: Option<MaxFail>,
    /// Run the command as root (`sudo -n`) on servers whose ssh access
    /// declares no `become` of its own.
    #[arg(long = "become")]
    pub become_root: bool,
    /// Kill the command on a server that has not ended after this long
    /// (default 10m).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration_arg)]
    pub timeout: Option<Duration>,
    /// How the answers are printed.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Text: print each group but the largest as a unified diff against
    /// the largest one's output.
    #[arg(long)]
    pub diff: bool,
    /// Then compare with the previous exec of the same command over the
    /// same file: the servers whose exit status or output changed (as
    /// `drover history diff PREVIOUS THIS`).
    #[arg(long)]
    pub diff_last: bool,
    /// Continue an interrupted exec (Ctrl-C, a crash) from its journal:
    /// servers that answered do not run the command again. Prints all the
    /// answers.
    #[arg(
        long,
        value_name = "RUN_ID",
        conflicts_with_all = [
            "file", "tags", "groups", "servers", "criteria", "parallel", "rolling", "pause",
            "max_fail", "become_root", "timeout", "command",
        ]
    )]
    pub resume: Option<String>,
    #[command(flatten)]
    pub state: crate::StateArgs,
    /// The command, after `--`: its words joined with spaces and run by
    /// /bin/sh in the login user's home directory of each server.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

const AFTER_HELP: &str = "\
Examples:
  drover exec fleet.k --tag web -- uptime
  drover exec fleet.k --group db --rolling 2 --pause 30s --max-fail 1 --become -- systemctl restart postgresql
  drover exec --resume 20261206-101500-3f2a

Exit status: 0 every server's command exited 0, 1 invalid input (the file, an unknown tag, group or
server, no command), 2 usage, 4 a server failed (a command exited non-zero, a server did not answer,
the roll halted), 5 interrupted (continue it with --resume).";

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Groups of identical answers (`==> hosts (N servers): exit 0`, the
    /// output indented), a count per outcome, the run id.
    Text,
    /// One object: run_id, command, status, progress, groups, servers.
    Json,
    /// One answer per line (each with run_id and outcome).
    Jsonl,
}

/// `drover exec`.
pub fn main(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let view = View {
        format: args.format,
        diff: args.diff,
    };
    let diff_last = args.diff_last;
    let target = args.state.target();
    if let Some(id) = args.resume.as_deref() {
        return resume(id, &target, view, diff_last, out);
    }
    let Some(file) = args.file else {
        eprintln!("drover: give an inventory (or workflow) FILE and a command after `--`, or --resume RUN_ID");
        return Ok(ExitCode::from(USAGE));
    };
    let command = args.command.join(" ");
    let mut problems = Vec::new();
    if command.trim().is_empty() {
        problems.push(format!(
            "no command: give it after `--`, e.g. `drover exec {} -- uptime`",
            file.display()
        ));
    }
    if args.rolling.is_none() {
        if args.pause.is_some() {
            problems.push("--pause is the wait between rolling batches: it needs --rolling N".to_string());
        }
        if args.max_fail.is_some() {
            problems.push("--max-fail is how many failures halt a roll: it needs --rolling N".to_string());
        }
    }
    if args.timeout == Some(Duration::ZERO) {
        problems.push("--timeout must be longer than 0s".to_string());
    }
    if args.diff && view.format != Format::Text {
        problems.push("--diff shapes the text output: it cannot go with --format json or jsonl".to_string());
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("drover: {p}");
        }
        return Ok(ExitCode::from(USAGE));
    }
    let selection = Selection {
        file,
        tags: args.tags,
        groups: args.groups,
        servers: args.servers,
        criteria: args.criteria,
    };
    let (base, _) = match selection.load() {
        Ok(x) => x,
        Err(refusal) => return refusal.report(&selection.file, out),
    };
    let spec = ExecSpec {
        command,
        selector: selection.selector(),
        parallel: args.parallel.unwrap_or(fleet::DEFAULT_PARALLEL),
        rolling: args.rolling.map(|batch| Rolling {
            batch,
            pause: args.pause.map_or(0, |d| d.as_secs()),
            max_fail: args.max_fail.unwrap_or_default(),
        }),
        become_root: args.become_root,
        timeout: args.timeout.map_or(600, |d| d.as_secs().max(1)),
    };
    let inputs = fleet::exec_inputs(&base, &spec);
    let (store, opts) = runs::open(&target)?;
    let rt = runs::runtime()?;
    let handle = match rt.block_on(async { drover_exec::run::start(store.clone(), inputs, &opts, None) }) {
        Ok(h) => h,
        Err(e) => return runs::exec_failure(e),
    };
    finish(&rt, handle, (&store, &opts), view, diff_last, out)
}

/// `drover exec --resume ID`: only an exec's run.
fn resume(
    id: &str,
    target: &runs::Target,
    view: View,
    diff_last: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let (store, opts) = runs::open(target)?;
    if let Err(why) = Exec::load(&store, id)? {
        eprintln!("drover: {why}");
        return Ok(ExitCode::from(INVALID));
    }
    let rt = runs::runtime()?;
    let handle = match rt.block_on(async { drover_exec::run::resume(store.clone(), id, &opts, None) }) {
        Ok(h) => h,
        Err(e) => return runs::exec_failure(e),
    };
    finish(&rt, handle, (&store, &opts), view, diff_last, out)
}

/// Follow the run to its end, print its answers (and the comparison with
/// the previous exec), and end as `drover run` does.
fn finish(
    rt: &tokio::runtime::Runtime,
    handle: RunHandle,
    (store, opts): (&std::sync::Arc<Store>, &Options),
    view: View,
    diff_last: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let id = handle.run_id.clone();
    let plan = handle.plan.clone();
    let summary = match follow(rt, handle) {
        Ok(s) => s,
        Err(e) => return runs::exec_failure(e),
    };
    runs::notify_end(rt, store, &plan, &summary);
    let exec = match Exec::load(store, &id)? {
        Ok(e) => e,
        Err(why) => anyhow::bail!("exec {id} cannot be read back: {why}"),
    };
    view.print(&exec, out)?;
    if diff_last {
        writeln!(out)?;
        super::history::diff_last(store, &exec, out)?;
    }
    runs::retention(store, opts);
    Ok(runs::exit_for(summary.status, Ending::Run))
}

/// Wait for the run to end: Ctrl-C stops it cleanly (running commands
/// are cancelled, the journal and a report marked aborted are written,
/// and it can be resumed); the live view is drawn only on a terminal.
fn follow(rt: &tokio::runtime::Runtime, handle: RunHandle) -> Result<Summary, ExecError> {
    let live = std::io::stderr().is_terminal();
    if live {
        eprintln!(
            "exec {}: {} server(s); logs in {}",
            handle.run_id,
            handle.plan.task_count(),
            handle.logs_dir.display()
        );
    }
    runs::wait_for(rt, handle, live.then_some(false))
}

/// How an exec's answers are printed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    /// The format.
    pub format: Format,
    /// Text: minority groups as diffs against the majority.
    pub diff: bool,
}

impl View {
    /// Print `exec` on `out`.
    pub(crate) fn print(self, exec: &Exec, out: &mut impl Write) -> anyhow::Result<()> {
        match self.format {
            Format::Text => write!(out, "{}", text(exec, self.diff))?,
            Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&json(exec))?)?,
            Format::Jsonl => {
                for line in jsonl(exec) {
                    writeln!(out, "{line}")?;
                }
            }
        }
        Ok(())
    }
}

/// An exec as its journal tells it.
#[derive(Debug, Clone)]
pub(crate) struct Exec {
    /// The run.
    pub record: RunRecord,
    /// The command.
    pub command: String,
    /// Why the run ended as it did (empty while it has not ended).
    pub reason: String,
    /// Every selected server's answer, in the inventory's order.
    pub answers: Vec<Answer>,
}

impl Exec {
    /// Exec `id` of `store`; `Err(why)` when no run has that id or the run
    /// is not an exec (a workflow's run); an error when the store fails.
    pub(crate) fn load(store: &Store, id: &str) -> anyhow::Result<Result<Exec, String>> {
        let record = match store.run(id) {
            Ok(r) => r,
            Err(StateError::UnknownRun(_)) => {
                return Ok(Err(format!(
                    "no run {id} in the state store {} (see `drover history`)",
                    store.path().display()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let plan = match drover_exec::run::plan(store, id) {
            Ok(p) => p,
            Err(ExecError::State(e)) => return Err(e.into()),
            Err(e) => {
                return Ok(Err(format!(
                    "run {id} cannot be planned again from what is stored: {e}"
                )));
            }
        };
        let Some(command) = fleet::exec_command(&plan).map(str::to_string) else {
            return Ok(Err(format!(
                "run {id} is a run of workflow {}, not an exec (`drover runs` lists every run; `drover run --resume {id}` continues it)",
                record.workflow
            )));
        };
        let journal = store.journal(id)?;
        let reason = journal
            .iter()
            .rev()
            .find_map(|e| match &e.event {
                Event::RunFinished { reason, .. } => Some(reason.clone().unwrap_or_default()),
                _ => None,
            })
            .unwrap_or_default();
        let answers = fleet::answers(&plan, &journal);
        Ok(Ok(Exec {
            record,
            command,
            reason,
            answers,
        }))
    }

    /// The run's id.
    pub(crate) fn id(&self) -> &str {
        &self.record.id
    }
}

/// The exec as text: each group of identical answers once, largest first
/// (`==> web-[01-17] (17 servers): exit 0`, then its output indented by
/// four spaces; with `diff`, the other groups as a unified diff against
/// the largest's output), a count of the servers by outcome, and the run.
pub(crate) fn text(exec: &Exec, diff: bool) -> String {
    let mut s = groups_text(&fleet::group(&exec.answers), diff);
    s.push_str(&tally(&exec.answers));
    s.push('\n');
    let status = exec.record.status;
    s.push_str(&format!("run {} {}", exec.id(), status.as_str()));
    if status != RunStatus::Succeeded && !exec.reason.is_empty() {
        s.push_str(&format!(": {}", exec.reason));
    }
    s.push('\n');
    if status.is_unfinished() {
        s.push_str(&format!(
            "not every server has answered: continue with `drover exec --resume {}`\n",
            exec.id()
        ));
    }
    s
}

/// Each group once, largest first: `==> web-[01-17] (17 servers): exit
/// 0`, then its output indented by four spaces (`(no output)` for none);
/// with `diff`, the other groups as a unified diff against the first.
pub(crate) fn groups_text(groups: &[fleet::Group], diff: bool) -> String {
    let mut s = String::new();
    for (i, g) in groups.iter().enumerate() {
        // A group of one names its server where the answers of many say
        // `<server>`.
        let outcome = match g.servers.as_slice() {
            [one] => g.outcome.replace("<server>", one),
            _ => g.outcome.clone(),
        };
        s.push_str(&format!(
            "==> {} ({}): {outcome}\n",
            g.hosts(),
            servers(g.servers.len())
        ));
        let body = match (diff, i) {
            (true, 1..) => fleet::diff_groups(&groups[0], g),
            _ => g.body(),
        };
        if body.is_empty() {
            s.push_str("    (no output)\n");
        }
        for line in body.lines() {
            if line.is_empty() {
                s.push('\n');
            } else {
                s.push_str("    ");
                s.push_str(line);
                s.push('\n');
            }
        }
    }
    s
}

/// `1 server`, `3 servers`.
pub(crate) fn servers(n: usize) -> String {
    if n == 1 {
        "1 server".into()
    } else {
        format!("{n} servers")
    }
}

/// `20 servers: 17 ok, 3 failed (2 exit 1, 1 no answer)`: how many exited
/// 0, how many failed (by exit status, signal, or no answer: the server
/// could not be reached, the command timed out), how many did not run.
pub(crate) fn tally(answers: &[Answer]) -> String {
    let mut failed: Vec<(String, usize)> = Vec::new();
    let mut other: Vec<(String, usize)> = Vec::new();
    let mut ok = 0;
    let bump = |list: &mut Vec<(String, usize)>, label: String| match list.iter_mut().find(|(l, _)| *l == label) {
        Some((_, n)) => *n += 1,
        None => list.push((label, 1)),
    };
    for a in answers {
        if a.ok() {
            ok += 1;
            continue;
        }
        match a.status {
            Status::Failed => bump(
                &mut failed,
                match (a.exit_code, a.signal) {
                    (Some(code), _) => format!("exit {code}"),
                    (None, Some(sig)) => format!("killed by signal {sig}"),
                    (None, None) => "no answer".into(),
                },
            ),
            Status::Skipped => bump(&mut other, "skipped".into()),
            Status::Cancelled => bump(&mut other, "cancelled".into()),
            Status::Running => bump(&mut other, "running".into()),
            // Succeeded without exit 0 cannot happen for a command; shown
            // rather than hidden if it does.
            Status::Succeeded => bump(&mut other, "succeeded".into()),
            Status::Pending | Status::Ready | Status::Waiting => bump(&mut other, "not run".into()),
        }
    }
    let mut parts = vec![format!("{ok} ok")];
    let failures: usize = failed.iter().map(|(_, n)| n).sum();
    if failures > 0 {
        failed.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let detail: Vec<String> = failed.iter().map(|(l, n)| format!("{n} {l}")).collect();
        parts.push(format!("{failures} failed ({})", detail.join(", ")));
    }
    parts.extend(other.iter().map(|(l, n)| format!("{n} {l}")));
    format!("{}: {}", servers(answers.len()), parts.join(", "))
}

/// The exec as one JSON object: `run_id`, `command`, `status`, `reason`,
/// `progress` {total, done, failed, percent}, `groups` [{servers, hosts,
/// outcome, stdout, stderr}] largest first, `servers` [each answer].
pub(crate) fn json(exec: &Exec) -> serde_json::Value {
    let total = exec.answers.len();
    // Done: the server will not run the command again in this run
    // (cancelled ones run again when it is resumed).
    let done = exec
        .answers
        .iter()
        .filter(|a| matches!(a.status, Status::Succeeded | Status::Failed | Status::Skipped))
        .count();
    let failed = exec.answers.iter().filter(|a| a.status == Status::Failed).count();
    let groups: Vec<serde_json::Value> = fleet::group(&exec.answers)
        .iter()
        .map(|g| {
            serde_json::json!({
                "servers": g.servers,
                "hosts": g.hosts(),
                "outcome": g.outcome,
                "stdout": g.stdout,
                "stderr": g.stderr,
            })
        })
        .collect();
    serde_json::json!({
        "run_id": exec.id(),
        "command": exec.command,
        "status": exec.record.status.as_str(),
        "reason": exec.reason,
        "progress": {
            "total": total,
            "done": done,
            "failed": failed,
            "percent": (done * 100).checked_div(total).unwrap_or(100),
        },
        "groups": groups,
        "servers": exec.answers,
    })
}

/// The exec as JSON lines: one answer per line, with `run_id` and
/// `outcome`.
pub(crate) fn jsonl(exec: &Exec) -> Vec<String> {
    exec.answers
        .iter()
        .map(|a| {
            let mut v = serde_json::to_value(a).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("run_id".into(), exec.id().into());
                o.insert("outcome".into(), a.outcome().into());
            }
            v.to_string()
        })
        .collect()
}
