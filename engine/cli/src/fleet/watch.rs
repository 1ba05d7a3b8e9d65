//! `drover watch FILE [selection] [--interval DUR] [--count N] [--timeout DUR]
//! [--format text|jsonl] -- COMMAND...`: run a command on every selected
//! server, again and again, and say what changed.
//!
//! The connections are opened once ([`Fleet`]) and each round runs the
//! command on every server at once over them. The first round prints every
//! answer, identical answers grouped as `drover exec` and herd do (`==>
//! web-[01-03] (3 servers): exit 0`, the output indented below); each
//! later round prints only the servers whose exit status or output
//! changed since their previous answer (`==> HOST changed at HH:MM:SS
//! UTC` and a unified diff). A round in which nothing changed prints
//! nothing.
//!
//! A server that cannot be reached (or whose connection drops during a
//! round) is said so once, `==> HOST unreachable at ...`; its connection
//! is forgotten and the next round tries again, and `==> HOST reachable
//! again at ...` says when it answers (with what changed meanwhile).
//!
//! Rounds start `--interval` apart (a round that runs longer delays the
//! next one rather than overlapping it). Watching ends after `--count`
//! rounds, or on Ctrl-C (SIGINT), both with exit status 0: a round in
//! progress is cancelled (the transport kills each command's process group
//! on its server) and not reported, and the connections are closed.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_exec::Status;
use drover_exec::fleet::{Answer, Fleet, group, unified_diff};

/// Arguments of `drover watch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub selection: super::Selection,
    /// Time from the start of one round to the start of the next (10s,
    /// 5m, ...).
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, default_value = "10s")]
    pub interval: Duration,
    /// Stop after this many rounds (the first included); default: until
    /// Ctrl-C.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Time before the command is killed on a server, in each round.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Output format: text for people, or jsonl: one JSON object per
    /// server in the first round, then one per change.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The shell command (run by /bin/sh on each server; words are joined
    /// with spaces, as ssh does).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
    #[command(flatten)]
    pub state: crate::StateArgs,
}

/// How changes are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Grouped answers, then a diff per change.
    Text,
    /// One JSON object per line: `event` is `answer` (first round),
    /// `changed`, `unreachable` or `reachable`.
    Jsonl,
}

/// A duration of at least a second.
fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = crate::duration_arg(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be at least 1s"));
    }
    Ok(d)
}

/// `drover watch`: exit 0 after `--count` rounds or on Ctrl-C; 1 for a
/// selection that does not load or selects nothing.
pub fn main(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (_, servers) = match args.selection.load() {
        Ok(loaded) => loaded,
        Err(refusal) => return refusal.report(&args.selection.file, out),
    };
    let plan = Rounds {
        script: args.command.join(" "),
        interval: args.interval,
        count: args.count,
        timeout: args.timeout,
        format: args.format,
    };
    let opts = drover_exec::Options::for_state(&args.state.target().state, drover_registry::providers());
    let fleet = Arc::new(Fleet::new(servers, args.selection.base_dir(), &opts, "watch"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(watch(fleet, plan, out))
}

/// What to run, how often and how to show it.
#[derive(Debug)]
struct Rounds {
    script: String,
    interval: Duration,
    count: Option<u64>,
    timeout: Duration,
    format: Format,
}

/// What is known of one server between rounds.
#[derive(Debug, Default)]
struct Seen {
    /// Its last answer (from a round in which it was reached), and when.
    last: Option<(Answer, i64)>,
    /// Why it could not be reached, while it cannot (said once).
    down: Option<String>,
}

/// Run the rounds until `--count` or Ctrl-C.
async fn watch(fleet: Arc<Fleet>, rounds: Rounds, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    // Listening from here on: SIGINT no longer kills the process.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let names: Vec<String> = fleet.servers().iter().map(|s| s.hostname.clone()).collect();
    let mut seen: Vec<Seen> = names.iter().map(|_| Seen::default()).collect();
    let cancel = drover_exec::fleet::CancellationToken::new();
    let mut ticks = tokio::time::interval(rounds.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    let written = loop {
        if rounds.count.is_some_and(|n| round >= n) {
            break Ok(());
        }
        tokio::select! {
            _ = interrupt.recv() => break Ok(()),
            _ = ticks.tick() => {}
        }
        round += 1;
        let at = now_ms();
        let mut runs = tokio::task::JoinSet::new();
        for (index, name) in names.iter().enumerate() {
            let (fleet, name, script, cancel) = (fleet.clone(), name.clone(), rounds.script.clone(), cancel.clone());
            let timeout = rounds.timeout;
            runs.spawn(async move {
                let began = Instant::now();
                let result = fleet.run(&name, &script, Some(timeout), None, cancel).await;
                if result.is_err() {
                    // Broken or never made: the next round reconnects.
                    fleet.forget(&name).await;
                }
                let found = result.map(|(outcome, captured)| captured.found(&outcome));
                (index, answer(&name, found, began.elapsed(), timeout))
            });
        }
        let mut answers: Vec<Option<Answer>> = names.iter().map(|_| None).collect();
        let mut interrupted = false;
        loop {
            tokio::select! {
                _ = interrupt.recv(), if !interrupted => {
                    interrupted = true;
                    cancel.cancel();
                }
                done = runs.join_next() => match done {
                    Some(Ok((index, a))) => answers[index] = Some(a),
                    // A task that panicked has no answer to show.
                    Some(Err(_)) => {}
                    None => break,
                },
            }
        }
        if interrupted {
            break Ok(());
        }
        let answers: Vec<Answer> = answers.into_iter().flatten().collect();
        let shown = if round == 1 {
            first_round(&answers, &mut seen, at, rounds.format, out)
        } else {
            later_round(round, &answers, &mut seen, at, rounds.format, out)
        };
        if let Err(e) = shown.and_then(|()| out.flush()) {
            break Err(e);
        }
    };
    cancel.cancel();
    fleet.finish().await;
    match written {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// A server's answer in a round: what [`Captured::found`] made of its
/// command's outcome and output, or why it could not run.
///
/// [`Captured::found`]: drover_exec::fleet::Captured::found
fn answer(server: &str, found: Result<BTreeMap<String, String>, String>, took: Duration, timeout: Duration) -> Answer {
    let duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    match found {
        Ok(found) => {
            let exit_code = found.get("exit_code").and_then(|v| v.parse().ok());
            let signal = found.get("signal").and_then(|v| v.parse().ok());
            Answer {
                server: server.to_string(),
                status: if exit_code == Some(0) {
                    Status::Succeeded
                } else {
                    Status::Failed
                },
                exit_code,
                signal,
                stdout: found.get("stdout").cloned().unwrap_or_default(),
                stderr: found.get("stderr").cloned().unwrap_or_default(),
                truncated: found.contains_key("truncated"),
                // Neither an exit status nor a signal: the timeout (a
                // cancelled round is not reported).
                error: (exit_code.is_none() && signal.is_none())
                    .then(|| format!("timed out after {}s", timeout.as_secs())),
                duration_ms,
            }
        }
        Err(why) => Answer {
            server: server.to_string(),
            status: Status::Failed,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            error: Some(why),
            duration_ms,
        },
    }
}

/// Whether `a` is an answer of a server that could not be reached (as
/// made by [`answer`]: no exit status, signal or timeout).
fn unreachable(a: &Answer) -> Option<&str> {
    match (a.exit_code, a.signal, &a.error) {
        (None, None, Some(why)) if !why.starts_with("timed out after ") => Some(why),
        _ => None,
    }
}

/// The first round: every answer, identical ones grouped.
fn first_round(
    answers: &[Answer],
    seen: &mut [Seen],
    at: i64,
    format: Format,
    out: &mut impl Write,
) -> std::io::Result<()> {
    for (a, s) in answers.iter().zip(seen.iter_mut()) {
        match unreachable(a) {
            Some(why) => s.down = Some(why.to_string()),
            None => s.last = Some((a.clone(), at)),
        }
    }
    match format {
        Format::Text => {
            let mut shown: Vec<Answer> = answers.to_vec();
            for a in &mut shown {
                if let Some(why) = unreachable(a) {
                    a.error = Some(format!("unreachable: {why}"));
                }
            }
            for g in group(&shown) {
                let n = g.servers.len();
                let servers = if n == 1 { "server" } else { "servers" };
                writeln!(out, "==> {} ({n} {servers}): {}", g.hosts(), g.outcome)?;
                write!(out, "{}", indent(&g.body()))?;
            }
        }
        Format::Jsonl => {
            for a in answers {
                let event = if unreachable(a).is_some() {
                    "unreachable"
                } else {
                    "answer"
                };
                json_line(out, 1, at, event, a, None)?;
            }
        }
    }
    Ok(())
}

/// A later round: the servers whose answer changed, that became
/// unreachable, or that are reachable again.
fn later_round(
    round: u64,
    answers: &[Answer],
    seen: &mut [Seen],
    at: i64,
    format: Format,
    out: &mut impl Write,
) -> std::io::Result<()> {
    for (a, s) in answers.iter().zip(seen.iter_mut()) {
        if let Some(why) = unreachable(a) {
            if s.down.is_none() {
                s.down = Some(why.to_string());
                match format {
                    Format::Text => writeln!(out, "==> {} unreachable at {}: {why}", a.server, clock(at))?,
                    Format::Jsonl => json_line(out, round, at, "unreachable", a, None)?,
                }
            }
            continue;
        }
        let back = s.down.take().is_some();
        let diff = match &s.last {
            Some((last, last_at)) => change(last, *last_at, a, at),
            None => None,
        };
        let first_answer = s.last.is_none();
        s.last = Some((a.clone(), at));
        if !back && diff.is_none() {
            continue;
        }
        match format {
            Format::Text => {
                if back {
                    writeln!(
                        out,
                        "==> {} reachable again at {}: {}",
                        a.server,
                        clock(at),
                        a.outcome()
                    )?;
                } else {
                    writeln!(out, "==> {} changed at {}", a.server, clock(at))?;
                }
                if let Some(d) = &diff {
                    write!(out, "{}", indent(d))?;
                } else if first_answer {
                    write!(out, "{}", indent(&body(a)))?;
                }
            }
            Format::Jsonl => {
                let event = if back { "reachable" } else { "changed" };
                json_line(out, round, at, event, a, diff.as_deref())?;
            }
        }
    }
    Ok(())
}

/// How `new` (at `new_at`) differs from `old` (at `old_at`): its outcome
/// when that differs, and a unified diff of the output; None when they
/// are the same.
fn change(old: &Answer, old_at: i64, new: &Answer, new_at: i64) -> Option<String> {
    let mut s = String::new();
    let (was, is) = (old.outcome(), new.outcome());
    if was != is {
        s.push_str(&format!("-{was}\n+{is}\n"));
    }
    s.push_str(&unified_diff(
        &body(old),
        &body(new),
        &format!("{} {}", old.server, clock(old_at)),
        &format!("{} {}", new.server, clock(new_at)),
    ));
    (!s.is_empty()).then_some(s)
}

/// The output as shown and compared: stdout, then stderr with each line
/// marked `stderr| ` (as [`drover_exec::fleet::Group::body`]).
fn body(a: &Answer) -> String {
    let mut s = a.stdout.clone();
    for line in a.stderr.lines() {
        s.push_str("stderr| ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// Each line of `text` indented by four spaces.
fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// One JSON object of `--format jsonl`.
fn json_line(
    out: &mut impl Write,
    round: u64,
    at: i64,
    event: &str,
    a: &Answer,
    diff: Option<&str>,
) -> std::io::Result<()> {
    let mut v = serde_json::json!({
        "round": round,
        "at": crate::batch::render::utc(at).replace(' ', "T") + "Z",
        "server": a.server,
        "event": event,
        "outcome": a.outcome(),
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some(code) = a.exit_code {
            obj.insert("exit_code".into(), code.into());
        }
        if let Some(sig) = a.signal {
            obj.insert("signal".into(), sig.into());
        }
        if let Some(why) = &a.error {
            obj.insert("error".into(), why.as_str().into());
        }
        if unreachable(a).is_none() {
            obj.insert("stdout".into(), a.stdout.as_str().into());
            obj.insert("stderr".into(), a.stderr.as_str().into());
        }
        if let Some(d) = diff {
            obj.insert("diff".into(), d.into());
        }
    }
    writeln!(out, "{v}")
}

/// `HH:MM:SS UTC` of ms since the epoch.
fn clock(ms: i64) -> String {
    let full = crate::batch::render::utc(ms);
    format!("{} UTC", full.get(11..).unwrap_or(&full))
}

/// Now, ms since the epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(server: &str, code: i32, out: &str) -> Answer {
        let found: BTreeMap<String, String> = [
            ("exit_code".to_string(), code.to_string()),
            ("stdout".to_string(), out.to_string()),
            ("stderr".to_string(), String::new()),
        ]
        .into();
        answer(server, Ok(found), Duration::ZERO, Duration::from_secs(30))
    }

    #[test]
    fn a_change_is_a_diff_of_output_and_outcome() {
        let at = 1_763_935_803_000;
        let old = reply("h1", 0, "a\nb\n");
        assert_eq!(change(&old, at, &reply("h1", 0, "a\nb\n"), at + 10_000), None);
        assert_eq!(
            change(&old, at, &reply("h1", 0, "a\nc\n"), at + 10_000).as_deref(),
            Some("--- h1 22:10:03 UTC\n+++ h1 22:10:13 UTC\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n")
        );
        assert_eq!(
            change(&old, at, &reply("h1", 2, "a\nb\n"), at).as_deref(),
            Some("-exit 0\n+exit 2\n")
        );
    }

    #[test]
    fn unreachable_servers_are_told_from_timeouts() {
        let down = answer(
            "h1",
            Err("connection refused".into()),
            Duration::ZERO,
            Duration::from_secs(5),
        );
        assert_eq!(unreachable(&down), Some("connection refused"));
        let slow = answer("h1", Ok(BTreeMap::new()), Duration::ZERO, Duration::from_secs(5));
        assert_eq!(unreachable(&slow), None);
        assert_eq!(slow.outcome(), "failed: timed out after 5s");
    }

    #[test]
    fn later_rounds_print_changes_only_and_unreachability_once() {
        let at = 1_763_935_803_000;
        let mut seen: Vec<Seen> = (0..2).map(|_| Seen::default()).collect();
        let mut out = Vec::new();
        let first = [reply("h1", 0, "x\n"), reply("h2", 0, "x\n")];
        first_round(&first, &mut seen, at, Format::Text, &mut out).expect("write");
        assert_eq!(String::from_utf8_lossy(&out), "==> h[1-2] (2 servers): exit 0\n    x\n");

        let down = answer(
            "h2",
            Err("connection refused".into()),
            Duration::ZERO,
            Duration::from_secs(5),
        );
        for _ in 0..2 {
            out.clear();
            later_round(
                2,
                &[reply("h1", 0, "x\n"), down.clone()],
                &mut seen,
                at,
                Format::Text,
                &mut out,
            )
            .expect("write");
        }
        // Said in the first of the two rounds only.
        assert_eq!(String::from_utf8_lossy(&out), "");

        out.clear();
        later_round(
            4,
            &[reply("h1", 0, "y\n"), reply("h2", 0, "x\n")],
            &mut seen,
            at,
            Format::Text,
            &mut out,
        )
        .expect("write");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "==> h1 changed at 22:10:03 UTC\n    --- h1 22:10:03 UTC\n    +++ h1 22:10:03 UTC\n    @@ -1 +1 @@\n    -x\n    +y\n\
             ==> h2 reachable again at 22:10:03 UTC: exit 0\n"
        );
    }

    #[test]
    fn jsonl_is_one_object_per_change() {
        let at = 1_763_935_803_000;
        let mut seen: Vec<Seen> = (0..1).map(|_| Seen::default()).collect();
        let mut out = Vec::new();
        first_round(&[reply("h1", 0, "x\n")], &mut seen, at, Format::Jsonl, &mut out).expect("write");
        later_round(2, &[reply("h1", 1, "x\n")], &mut seen, at, Format::Jsonl, &mut out).expect("write");
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "answer");
        assert_eq!(lines[0]["at"], "2025-11-23T22:10:03Z");
        assert_eq!(lines[0]["stdout"], "x\n");
        assert_eq!(lines[1]["event"], "changed");
        assert_eq!(lines[1]["round"], 2);
        assert_eq!(lines[1]["exit_code"], 1);
        assert_eq!(lines[1]["diff"], "-exit 0\n+exit 1\n");
    }
}
