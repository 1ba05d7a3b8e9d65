//! `drover tail FILE [selection] [--grep RE] [-n LINES] (PATH... | --unit NAME)`:
//! follow files (or a systemd unit's journal) on every selected server at
//! once, each line printed as `HOST: line` as it arrives.
//!
//! Layout: one follower task per server runs `tail -F` (or `journalctl
//! -f`) over the server's [`Fleet`] connection and sends what happens as
//! [`Event`]s on one channel; the command's own thread is the only one
//! that writes, so lines of different servers never interleave within a
//! line and stdout needs no lock shared between tasks.
//!
//! A follower never gives up: when its command ends or its connection
//! drops it says so on stderr, forgets the connection and reconnects with
//! a backoff (1 s, 2 s, 4 s, ... at most 30 s). Lines written while a
//! server was disconnected are not shown: a restarted `tail` starts at the
//! end of the files (`-n LINES` applies to the first start only, so that
//! a reconnection does not repeat lines already printed).
//!
//! Ctrl-C (SIGINT) ends it with exit status 0: every remote command is
//! cancelled, which makes the transport kill its process group on the
//! server, and the connections are closed. A second Ctrl-C exits at once
//! (130). A closed stdout (`| head`) ends it the same way, quietly.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_exec::fleet::Fleet;
use tokio::sync::mpsc;

/// The first wait before reconnecting.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Arguments of `drover tail`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub selection: super::Selection,
    /// Only lines matching this regular expression (the `regex` crate's
    /// syntax).
    #[arg(long, value_name = "REGEX", value_parser = grep_arg)]
    pub grep: Option<regex::Regex>,
    /// Follow this systemd unit's journal (`journalctl -f -u NAME`)
    /// instead of files.
    #[arg(long, value_name = "NAME", conflicts_with = "paths")]
    pub unit: Option<String>,
    /// Show the last LINES lines of each file (or of the journal) first.
    #[arg(short = 'n', long = "lines", value_name = "LINES", default_value_t = 0)]
    pub lines: u64,
    /// The files to follow on each server (`tail -F`: a file replaced or
    /// created later is followed too). A leading `~/` is the login user's
    /// home; a relative path is relative to it.
    #[arg(value_name = "PATH", required_unless_present = "unit")]
    pub paths: Vec<String>,
    #[command(flatten)]
    pub state: crate::StateArgs,
}

fn grep_arg(s: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(s).map_err(|e| format!("{s:?} is not a regular expression: {e}"))
}

impl Args {
    /// The shell script that follows what was asked for, showing the last
    /// `lines` lines first.
    fn script(&self, lines: u64) -> String {
        match &self.unit {
            Some(unit) => format!("exec journalctl --no-pager -f -n {lines} -u {} 2>&1", quote(unit)),
            None => {
                let paths: Vec<String> = self.paths.iter().map(|p| path_word(p)).collect();
                format!("exec tail -n {lines} -F -- {} 2>&1", paths.join(" "))
            }
        }
    }

    /// What the script runs, for messages.
    fn program(&self) -> &'static str {
        if self.unit.is_some() { "journalctl" } else { "tail" }
    }
}

/// `s` as one single-quoted shell word.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A path as a shell word: quoted, but for a leading `~/`, which the
/// remote shell expands to the login user's home.
fn path_word(p: &str) -> String {
    match p.strip_prefix("~/") {
        Some(rest) => format!("~/{}", quote(rest)),
        None if p == "~" => "~".into(),
        None => quote(p),
    }
}

/// What a follower reports to the writer.
#[derive(Debug)]
enum Event {
    /// A line of output of server `server` (an index into the fleet's
    /// servers). The command's stderr (tail's own notices, such as a file
    /// that appeared) is sent to its stdout: shown, and filtered, alike.
    Line { server: usize, text: String },
    /// The server could not be reached at the start; retrying.
    Unreachable { server: usize, why: String },
    /// The command ended or the connection dropped; reconnecting.
    Lost { server: usize, why: String },
    /// Reached after an [`Event::Unreachable`] (`again`: false) or an
    /// [`Event::Lost`] (`again`: true).
    Connected { server: usize, again: bool },
}

/// `drover tail`: exit 0 when ended by Ctrl-C or a closed stdout; 1 for
/// a selection that does not load or selects nothing.
pub fn main(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (_, servers) = match args.selection.load() {
        Ok(loaded) => loaded,
        Err(refusal) => return refusal.report(&args.selection.file, out),
    };
    let what = Follow {
        first: args.script(args.lines),
        again: args.script(0),
        program: args.program(),
        grep: args.grep.clone(),
    };
    let opts = drover_exec::Options::for_state(&args.state.target().state, drover_registry::providers());
    let fleet = Arc::new(Fleet::new(servers, args.selection.base_dir(), &opts, "tail"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(follow(fleet, what, out))
}

/// What to run on each server and what to show of it.
#[derive(Debug)]
struct Follow {
    /// The script that starts following the first time.
    first: String,
    /// The script after a reconnection (no lines repeated).
    again: String,
    /// Its program, for messages.
    program: &'static str,
    /// Only lines matching this.
    grep: Option<regex::Regex>,
}

/// Follow every server of `fleet` until Ctrl-C or a closed stdout.
async fn follow(fleet: Arc<Fleet>, what: Follow, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    // Listening from here on: SIGINT no longer kills the process.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let names: Vec<String> = fleet.servers().iter().map(|s| s.hostname.clone()).collect();
    // `HOST:` padded to the longest name, so that the lines line up.
    let width = names.iter().map(String::len).max().unwrap_or(0) + 1;
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    // Cancels every remote command.
    let cancel = drover_exec::fleet::CancellationToken::new();
    let mut followers = tokio::task::JoinSet::new();
    for (index, name) in names.iter().enumerate() {
        let (fleet, name, events) = (fleet.clone(), name.clone(), events_tx.clone());
        let cancel = cancel.clone();
        let (first_script, again_script, program) = (what.first.clone(), what.again.clone(), what.program);
        followers.spawn(async move {
            let mut delay = Duration::ZERO;
            let mut started_once = false;
            // Whether a loss (or the first failure) was reported and not yet
            // the recovery.
            let mut announced = false;
            loop {
                if !delay.is_zero() {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                let reached = tokio::select! {
                    () = cancel.cancelled() => return,
                    r = fleet.reach(&name) => r,
                };
                if let Err(why) = reached {
                    if !announced {
                        announced = true;
                        let _ = events.send(Event::Unreachable { server: index, why });
                    }
                    fleet.forget(&name).await;
                    delay = next_delay(delay);
                    continue;
                }
                if std::mem::take(&mut announced) {
                    let _ = events.send(Event::Connected {
                        server: index,
                        again: started_once,
                    });
                }
                let script = if started_once { &again_script } else { &first_script };
                started_once = true;
                let (tx, mut rx) = mpsc::unbounded_channel();
                let began = Instant::now();
                let run = fleet.run(&name, script, None, Some(tx), cancel.clone());
                let forward = async {
                    while let Some(line) = rx.recv().await {
                        let _ = events.send(Event::Line {
                            server: index,
                            text: line.line,
                        });
                    }
                };
                let (result, ()) = tokio::join!(run, forward);
                if cancel.is_cancelled() {
                    return;
                }
                let why = match result {
                    Ok((outcome, captured)) => format!("{program} ended: {}", describe(&captured.found(&outcome))),
                    Err(e) => e,
                };
                announced = true;
                let _ = events.send(Event::Lost { server: index, why });
                fleet.forget(&name).await;
                // A command that ran for a while starts the backoff over.
                delay = if began.elapsed() >= BACKOFF_MAX {
                    BACKOFF_START
                } else {
                    next_delay(delay)
                };
            }
        });
    }
    drop(events_tx);

    let grep = what.grep.as_ref();
    let written: std::io::Result<()> = loop {
        tokio::select! {
            _ = interrupt.recv() => break Ok(()),
            event = events.recv() => match event {
                // Followers end only when cancelled.
                None => break Ok(()),
                Some(event) => {
                    if let Err(e) = show(event, &names, width, grep, out) {
                        break Err(e);
                    }
                }
            },
        }
    };
    cancel.cancel();
    // Stopping the remote commands takes a moment (the transport ends each
    // process group, SIGTERM then SIGKILL); a second Ctrl-C does not wait.
    tokio::spawn(async move {
        if interrupt.recv().await.is_some() {
            std::process::exit(130);
        }
    });
    while followers.join_next().await.is_some() {}
    fleet.finish().await;
    match written {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// The wait after `delay`: 1 s first, then doubled, at most 30 s.
fn next_delay(delay: Duration) -> Duration {
    if delay.is_zero() {
        BACKOFF_START
    } else {
        (delay * 2).min(BACKOFF_MAX)
    }
}

/// How a command that ran without a timeout ended, in a few words, from
/// what [`Captured::found`](drover_exec::fleet::Captured::found) makes of
/// its outcome.
fn describe(found: &drover_exec::runner::Found) -> String {
    match (found.get("exit_code"), found.get("signal")) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "stopped".into(),
    }
}

/// Print one event: output lines that `grep` matches on `out`, the rest
/// on stderr.
fn show(
    event: Event,
    names: &[String],
    width: usize,
    grep: Option<&regex::Regex>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let name = |i: usize| names.get(i).map_or("?", String::as_str);
    match event {
        Event::Line { server, text } => {
            if grep.is_none_or(|re| re.is_match(&text)) {
                let label = format!("{}:", name(server));
                writeln!(out, "{label:<width$} {text}")?;
                out.flush()?;
            }
        }
        Event::Unreachable { server, why } => {
            let why = unprefixed(&why, name(server));
            eprintln!("drover: {}: cannot be reached ({why}); retrying", name(server));
        }
        Event::Lost { server, why } => {
            let why = unprefixed(&why, name(server));
            eprintln!("drover: {}: connection lost ({why}); reconnecting", name(server));
        }
        Event::Connected { server, again } => {
            let what = if again { "reconnected" } else { "connected" };
            eprintln!("drover: {}: {what}", name(server));
        }
    }
    Ok(())
}

/// `why` without the `HOST: ` the transport's errors start with: the
/// message names the host already.
fn unprefixed<'a>(why: &'a str, host: &str) -> &'a str {
    why.strip_prefix(host)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_but_for_a_leading_home() {
        assert_eq!(path_word("~/app.log"), "~/'app.log'");
        assert_eq!(path_word("/var/log/it's here"), r"'/var/log/it'\''s here'");
        assert_eq!(path_word("~"), "~");
        assert_eq!(path_word("~bob/x"), "'~bob/x'");
    }

    #[test]
    fn the_backoff_doubles_up_to_thirty_seconds() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..7 {
            d = next_delay(d);
            seen.push(d.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30]);
    }
}
