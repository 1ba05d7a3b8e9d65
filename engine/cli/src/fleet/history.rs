//! `drover history`: past execs, read back from the state store's journal.
//!
//! `drover history` lists them newest first (filters: a server, a run
//! status, text in the command or in any server's output); `history show
//! ID` prints one exec's grouped answers exactly as `drover exec` printed
//! them; `history diff A B` says which servers' exit status or output
//! changed between two execs. All of it opens the store read-only, so it
//! works beside a running exec or `drover serve`.

use std::io::Write;
use std::process::ExitCode;

use drover_exec::fleet;
use drover_state::{RunStatus, Store};

use super::exec::{self, Exec, Format, View};
use crate::batch::render::utc;

/// Exit status of a refusal (an unknown run, a run that is not an exec,
/// execs of different commands).
const INVALID: u8 = 1;

/// How many execs are listed when --limit is not given.
const DEFAULT_LIMIT: usize = 20;

/// Arguments of `drover history`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Only execs that ran (or were to run) the command on this server.
    #[arg(long, value_name = "S")]
    pub server: Option<String>,
    /// Only execs whose run stands so.
    #[arg(long, value_name = "STATUS", value_parser = status_arg)]
    pub status: Option<RunStatus>,
    /// Only execs whose command, or some server's output (stdout or
    /// stderr), contains TEXT (case-sensitive).
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// At most this many execs, the newest (0: all).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    pub limit: usize,
    #[command(flatten)]
    pub state: crate::StateArgs,
}

const AFTER_HELP: &str = "\
`drover history diff A B` exits 0 whether or not servers changed (1 for an unknown run, a run that is
not an exec, or execs of different commands without --force); read the answer from its output.";

/// `drover history` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// One exec's answers, grouped, exactly as `drover exec` printed them.
    Show {
        /// The exec's run id.
        run_id: String,
        /// Text: each group but the largest as a unified diff against it.
        #[arg(long)]
        diff: bool,
        /// How the answers are printed.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        state: crate::StateArgs,
    },
    /// The servers whose exit status or output changed from exec A to
    /// exec B, each with a unified diff of its output; servers only one of
    /// them ran on are listed.
    Diff {
        /// The earlier exec's run id.
        a: String,
        /// The later exec's run id.
        b: String,
        /// Compare execs of different commands (warned about on stderr).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        state: crate::StateArgs,
    },
}

/// A `--status` argument: a run status by its name.
fn status_arg(s: &str) -> Result<RunStatus, String> {
    RunStatus::parse(s).ok_or_else(|| {
        let names: Vec<&str> = RunStatus::ALL.iter().map(|st| st.as_str()).collect();
        format!("no run status is called {s:?}; give one of {}", names.join(", "))
    })
}

/// `drover history`.
pub fn main(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    match args.command {
        None => {
            let filter = Filter::of(&args);
            list(&args.state.target().state, &filter, args.limit, out)
        }
        Some(Command::Show {
            run_id,
            diff,
            format,
            state,
        }) => {
            if diff && format != Format::Text {
                eprintln!("drover: --diff shapes the text output: it cannot go with --format json or jsonl");
                return Ok(ExitCode::from(2));
            }
            let Some(store) = open(&merge(state, args.state))? else {
                eprintln!("drover: no run {run_id}: the state store does not exist yet");
                return Ok(ExitCode::from(INVALID));
            };
            match Exec::load(&store, &run_id)? {
                Ok(e) => {
                    View { format, diff }.print(&e, out)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(why) => {
                    eprintln!("drover: {why}");
                    Ok(ExitCode::from(INVALID))
                }
            }
        }
        Some(Command::Diff { a, b, force, state }) => {
            let Some(store) = open(&merge(state, args.state))? else {
                eprintln!("drover: no run {a} nor {b}: the state store does not exist yet");
                return Ok(ExitCode::from(INVALID));
            };
            let (old, new) = match (Exec::load(&store, &a)?, Exec::load(&store, &b)?) {
                (Ok(old), Ok(new)) => (old, new),
                (x, y) => {
                    for why in [x.err(), y.err()].into_iter().flatten() {
                        eprintln!("drover: {why}");
                    }
                    return Ok(ExitCode::from(INVALID));
                }
            };
            if old.command != new.command {
                let what = format!(
                    "run {a} ran `{}` and run {b} ran `{}`",
                    one_line(&old.command),
                    one_line(&new.command)
                );
                if !force {
                    eprintln!("drover: {what}: their answers are not comparable (--force compares them anyway)");
                    return Ok(ExitCode::from(INVALID));
                }
                eprintln!("drover: warning: {what}; compared anyway (--force)");
            }
            write!(out, "{}", changes(&old, &new))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The state path: given after the subcommand, else before it.
fn merge(inner: crate::StateArgs, outer: crate::StateArgs) -> std::path::PathBuf {
    match inner.state {
        Some(_) => inner.target().state,
        None => outer.target().state,
    }
}

/// The store, read-only; None when it does not exist.
fn open(state: &std::path::Path) -> anyhow::Result<Option<Store>> {
    if !state.exists() {
        return Ok(None);
    }
    Ok(Some(Store::open_read_only(state)?))
}

/// What `drover history` lists.
struct Filter {
    server: Option<String>,
    status: Option<RunStatus>,
    grep: Option<String>,
}

impl Filter {
    fn of(args: &Args) -> Filter {
        Filter {
            server: args.server.clone(),
            status: args.status,
            grep: args.grep.clone(),
        }
    }

    fn keeps(&self, e: &Exec) -> bool {
        self.status.is_none_or(|s| e.record.status == s)
            && self
                .server
                .as_deref()
                .is_none_or(|s| e.answers.iter().any(|a| a.server == s))
            && self.grep.as_deref().is_none_or(|t| {
                e.command.contains(t) || e.answers.iter().any(|a| a.stdout.contains(t) || a.stderr.contains(t))
            })
    }
}

/// `drover history`: the execs, newest first.
fn list(state: &std::path::Path, filter: &Filter, limit: usize, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let Some(store) = open(state)? else {
        writeln!(out, "no execs in {} (it does not exist yet)", state.display())?;
        return Ok(ExitCode::SUCCESS);
    };
    let mut runs = store.runs()?;
    runs.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then_with(|| b.id.cmp(&a.id)));
    let mut shown = Vec::new();
    // An exec's workflow is named `exec`: other runs are not planned again
    // just to be left out.
    for r in runs.iter().filter(|r| r.workflow == "exec") {
        let Ok(e) = Exec::load(&store, &r.id)? else { continue };
        if filter.keeps(&e) {
            shown.push(e);
            if limit > 0 && shown.len() == limit {
                break;
            }
        }
    }
    if shown.is_empty() {
        writeln!(out, "no execs match in {}", state.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<22}  {:<20}  {:<12}  {:<26}  command",
        "run", "when (UTC)", "status", "servers"
    )?;
    for e in &shown {
        writeln!(
            out,
            "{:<22}  {:<20}  {:<12}  {:<26}  {}",
            e.id(),
            utc(e.record.created_at_ms),
            e.record.status.as_str(),
            counts(&e.answers),
            one_line(&e.command)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `20: 17 ok, 2 failed, 1 not run`.
fn counts(answers: &[fleet::Answer]) -> String {
    let ok = answers.iter().filter(|a| a.ok()).count();
    let failed = answers
        .iter()
        .filter(|a| !a.ok() && a.status == drover_exec::Status::Failed)
        .count();
    let rest = answers.len() - ok - failed;
    let mut s = format!("{}: {ok} ok", answers.len());
    if failed > 0 {
        s.push_str(&format!(", {failed} failed"));
    }
    if rest > 0 {
        s.push_str(&format!(", {rest} not run"));
    }
    s
}

/// A command on one line: its lines joined with ` ⏎ `.
fn one_line(command: &str) -> String {
    command.trim_end().lines().collect::<Vec<_>>().join(" ⏎ ")
}

/// What changed from exec `old` to exec `new`: each changed server
/// (`==> web-03: exit 0 -> exit 1`, then a unified diff of its output,
/// indented), the servers only one of them ran on, and a count.
pub(crate) fn changes(old: &Exec, new: &Exec) -> String {
    let c = fleet::compare(&old.answers, &new.answers);
    let mut s = format!("changes from run {} to run {}:\n", old.id(), new.id());
    for (before, after) in &c.changed {
        let (was, now) = (before.outcome(), after.outcome());
        if was == now {
            s.push_str(&format!("==> {}: {now}, output changed\n", after.server));
        } else {
            s.push_str(&format!("==> {}: {was} -> {now}\n", after.server));
        }
        let diff = fleet::unified_diff(
            &before.body(),
            &after.body(),
            &format!("{} in run {}", before.server, old.id()),
            &format!("{} in run {}", after.server, new.id()),
        );
        for line in diff.lines() {
            s.push_str("    ");
            s.push_str(line);
            s.push('\n');
        }
    }
    for (only, id) in [(&c.only_old, old.id()), (&c.only_new, new.id())] {
        if !only.is_empty() {
            s.push_str(&format!(
                "only in run {id}: {} ({})\n",
                fleet::hostlist(only),
                exec::servers(only.len())
            ));
        }
    }
    let both = c.changed.len() + c.same.len();
    if c.changed.is_empty() {
        s.push_str(&format!(
            "no server's exit status or output changed ({} in both)\n",
            exec::servers(both)
        ));
    } else {
        s.push_str(&format!(
            "{} of {} changed\n",
            exec::servers(c.changed.len()),
            exec::servers(both)
        ));
    }
    s
}

/// After an exec (`drover exec --diff-last`): what changed since the
/// previous exec of the same command over the same file, or that there is
/// none.
pub(crate) fn diff_last(store: &Store, new: &Exec, out: &mut impl Write) -> anyhow::Result<()> {
    let mut earlier: Vec<_> = store
        .runs()?
        .into_iter()
        .filter(|r| {
            r.workflow == "exec"
                && r.id != new.id()
                && r.file == new.record.file
                && (r.created_at_ms, &r.id) < (new.record.created_at_ms, &new.record.id)
        })
        .collect();
    earlier.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then_with(|| b.id.cmp(&a.id)));
    for r in earlier {
        if let Ok(prev) = Exec::load(store, &r.id)?
            && prev.command == new.command
        {
            write!(out, "{}", changes(&prev, new))?;
            return Ok(());
        }
    }
    writeln!(
        out,
        "no earlier exec of `{}` over {} to compare with",
        one_line(&new.command),
        new.record.file
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_read_by_name_and_unknown_ones_listed() {
        assert_eq!(status_arg("failed"), Ok(RunStatus::Failed));
        let e = status_arg("broken").expect_err("no such status");
        assert!(
            e.contains("\"broken\"") && e.contains("succeeded, failed, cancelled"),
            "{e}"
        );
    }
}
