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
//!
//! With `--notifications FILE` (as `drover serve --notifications`), each
//! later round with changes is one `watch_change` notice to the targets
//! that want it: which servers changed, each with its new outcome and the
//! first lines of its diff (never the full output). The notices are
//! journaled in the state store's outbox and sent by the server's own
//! [`Notifier`] (cooldown folding and retries included), which is why
//! watch then owns the store as `drover run` does; at the end, queued
//! deliveries get [`DELIVERY_GRACE`] to go out and the rest stay queued
//! for the next `drover serve` on the store.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_core::model::{NotificationDef, NotificationEvent};
use drover_exec::Status;
use drover_exec::fleet::{Answer, CancellationToken, Fleet, group, hostlist, unified_diff};
use drover_server::notify::{Notice, Notifier};
use drover_state::Store;

/// How long queued notices may take to go out once watching ends.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);

/// The lines of a server's diff a notice carries, at most.
const NOTICE_DIFF_LINES: usize = 8;

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
    /// Notification targets (as `drover serve --notifications`: a JSON
    /// list of NotificationDef, or a KCL file (.k) setting `notifications
    /// = [...]`): those wanting `watch_change` get one notice per round
    /// with changes (the servers, their new outcome, the first lines of
    /// each diff). Deliveries are journaled in the state store (--state),
    /// which watch then owns: it refuses to start while `drover serve` or
    /// `drover run` holds it. When watching ends, queued deliveries get
    /// 10 s to go out; those left (retries, cooldowns) are sent by the
    /// next `drover serve` on that state store.
    #[arg(long, value_name = "FILE")]
    pub notifications: Option<std::path::PathBuf>,
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
/// selection that does not load or selects nothing; 3 (an error) for a
/// `--notifications` file that does not load or a state store owned by
/// another process.
pub fn main(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (_, servers) = match args.selection.load() {
        Ok(loaded) => loaded,
        Err(refusal) => return refusal.report(&args.selection.file, out),
    };
    let state = args.state.target().state;
    let telling = match &args.notifications {
        None => None,
        Some(file) => {
            let targets = load_notifications(file)?;
            // The outbox is the store's: owning it here (as `drover run`
            // does) is what keeps two processes from sending one row.
            let store =
                Arc::new(Store::open(&state).with_context(|| {
                    format!("--notifications: the deliveries are journaled in {}", state.display())
                })?);
            Some(Telling {
                notifier: Notifier::new(store.clone(), targets)?,
                store,
            })
        }
    };
    let plan = Rounds {
        script: args.command.join(" "),
        interval: args.interval,
        count: args.count,
        timeout: args.timeout,
        format: args.format,
        file: args.selection.file.display().to_string(),
    };
    let opts = drover_exec::Options::for_state(&state, drover_registry::providers());
    let fleet = Arc::new(Fleet::new(servers, args.selection.base_dir(), &opts, "watch"));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(watch(fleet, plan, telling, out))
}

/// The targets of `--notifications FILE`: JSON, or KCL (.k) as `drover
/// serve` reads it (with the engine found here).
pub(crate) fn load_notifications(file: &std::path::Path) -> anyhow::Result<Vec<NotificationDef>> {
    let loader = if file.extension().is_some_and(|e| e == "k") {
        Some(drover_kcl::Loader::discover().map_err(|e| {
            anyhow::anyhow!(
                "--notifications {}: a KCL file needs the KCL engine, which is not available ({e}); give a JSON file",
                file.display()
            )
        })?)
    } else {
        None
    };
    notification_targets(file, loader.as_ref())
}

/// The targets of `--notifications FILE`, a `.k` file evaluated by
/// `loader`.
pub(crate) fn notification_targets(
    file: &std::path::Path,
    loader: Option<&drover_kcl::Loader>,
) -> anyhow::Result<Vec<NotificationDef>> {
    match loader {
        Some(loader) if file.extension().is_some_and(|e| e == "k") => {
            let value = loader
                .load_value(file)
                .map_err(|e| anyhow::anyhow!("--notifications {}: {e}", file.display()))?;
            drover_server::notify::defaults_from_value(file, value).map_err(|e| anyhow::anyhow!("--notifications: {e}"))
        }
        None if file.extension().is_some_and(|e| e == "k") => anyhow::bail!(
            "--notifications {}: a KCL file needs the KCL engine, which is not available; give a JSON file",
            file.display()
        ),
        _ => drover_server::notify::load_defaults(file).map_err(|e| anyhow::anyhow!("--notifications: {e}")),
    }
}

/// What to run, how often and how to show it.
#[derive(Debug)]
struct Rounds {
    script: String,
    interval: Duration,
    count: Option<u64>,
    timeout: Duration,
    format: Format,
    /// The inventory (or workflow) file, as the notices name it.
    file: String,
}

/// What is known of one server between rounds.
#[derive(Debug, Default)]
struct Seen {
    /// Its last answer (from a round in which it was reached), and when.
    last: Option<(Answer, i64)>,
    /// Why it could not be reached, while it cannot (said once).
    down: Option<String>,
}

/// A server that changed in a later round, as a `watch_change` notice
/// tells it.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    server: String,
    /// `changed`, `unreachable` or `reachable` (as `--format jsonl`).
    event: &'static str,
    /// Its new outcome (`exit 0`, `unreachable: ...`).
    outcome: String,
    /// What changed in its output, if it did.
    diff: Option<String>,
}

/// Where the changes are told (`--notifications`).
struct Telling {
    notifier: Arc<Notifier>,
    /// The store the notifier journals into, read here to know when the
    /// queued deliveries are out.
    store: Arc<Store>,
}

impl Telling {
    /// Whether a queued delivery falls due before `ms` (since the epoch).
    async fn due_before(&self, ms: i64) -> bool {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.next_delivery_at()).await {
            Ok(Ok(next)) => next.is_some_and(|at| at < ms),
            // The outbox cannot be read: nothing to wait for that can be
            // known.
            Ok(Err(_)) | Err(_) => false,
        }
    }
}

/// Run the rounds until `--count` or Ctrl-C, telling `telling` of every
/// later round with changes.
async fn watch(
    fleet: Arc<Fleet>,
    rounds: Rounds,
    telling: Option<Telling>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    // Listening from here on: SIGINT no longer kills the process.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let names: Vec<String> = fleet.servers().iter().map(|s| s.hostname.clone()).collect();
    let mut seen: Vec<Seen> = names.iter().map(|_| Seen::default()).collect();
    let cancel = CancellationToken::new();
    let stop_delivering = CancellationToken::new();
    let delivering = telling
        .as_ref()
        .map(|t| tokio::spawn(t.notifier.clone().deliver(stop_delivering.clone())));
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
            first_round(&answers, &mut seen, at, rounds.format, out).map(|()| Vec::new())
        } else {
            later_round(round, &answers, &mut seen, at, rounds.format, out)
        };
        let changes = match shown.and_then(|changes| out.flush().map(|()| changes)) {
            Ok(changes) => changes,
            Err(e) => break Err(e),
        };
        if let (Some(t), Some(notice)) = (&telling, notice(&rounds, round, at, &changes)) {
            t.notifier.emit_server(notice).await;
        }
    };
    cancel.cancel();
    fleet.finish().await;
    if let (Some(t), Some(task)) = (&telling, delivering) {
        let deadline = Instant::now() + DELIVERY_GRACE;
        // Until nothing is due before the deadline (delivered, failed for
        // good, or waiting for a cooldown or a retry beyond it), or a
        // second Ctrl-C.
        while Instant::now() < deadline && t.due_before(now_ms() + remaining_ms(deadline)).await {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = interrupt.recv() => break,
            }
        }
        stop_delivering.cancel();
        let _ = task.await;
    }
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
/// unreachable, or that are reachable again; returned as well as printed.
fn later_round(
    round: u64,
    answers: &[Answer],
    seen: &mut [Seen],
    at: i64,
    format: Format,
    out: &mut impl Write,
) -> std::io::Result<Vec<Change>> {
    let mut changes = Vec::new();
    for (a, s) in answers.iter().zip(seen.iter_mut()) {
        if let Some(why) = unreachable(a) {
            if s.down.is_none() {
                s.down = Some(why.to_string());
                changes.push(Change {
                    server: a.server.clone(),
                    event: "unreachable",
                    outcome: format!("unreachable: {why}"),
                    diff: None,
                });
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
        changes.push(Change {
            server: a.server.clone(),
            event: if back { "reachable" } else { "changed" },
            outcome: a.outcome(),
            diff: diff.clone(),
        });
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
    Ok(changes)
}

/// The `watch_change` notice of round `round` (at `at`), None when
/// nothing changed. Each diff is cut to its first [`NOTICE_DIFF_LINES`]
/// lines: a notice says what to look at, not the output itself.
fn notice(rounds: &Rounds, round: u64, at: i64, changes: &[Change]) -> Option<Notice> {
    if changes.is_empty() {
        return None;
    }
    let names: Vec<String> = changes.iter().map(|c| c.server.clone()).collect();
    let n = names.len();
    let summary = format!(
        "drover watch: {} {} changed in round {round}: {}",
        n,
        if n == 1 { "server" } else { "servers" },
        hostlist(&names)
    );
    let servers: Vec<serde_json::Value> = changes
        .iter()
        .map(|c| {
            let mut v = serde_json::json!({
                "server": c.server,
                "change": c.event,
                "outcome": c.outcome,
            });
            if let (Some(obj), Some(diff)) = (v.as_object_mut(), &c.diff) {
                obj.insert("diff".into(), first_lines(diff, NOTICE_DIFF_LINES).into());
            }
            v
        })
        .collect();
    Some(Notice {
        at_ms: at,
        workflow: Some(rounds.file.clone()),
        detail: serde_json::json!({
            "round": round,
            "command": rounds.script,
            "servers": servers,
        }),
        ..Notice::new(NotificationEvent::WatchChange, summary)
    })
}

/// The first `n` lines of `text`, and how many more there were.
fn first_lines(text: &str, n: usize) -> String {
    let total = text.lines().count();
    let mut s: String = text.lines().take(n).map(|l| format!("{l}\n")).collect();
    if total > n {
        s.push_str(&format!("... {} more lines\n", total - n));
    }
    s
}

/// Milliseconds from now to `deadline` (0 once it passed).
fn remaining_ms(deadline: Instant) -> i64 {
    i64::try_from(deadline.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(i64::MAX)
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
    fn a_notice_names_the_changed_servers_and_cuts_their_diffs() {
        let rounds = Rounds {
            script: "cat f".into(),
            interval: Duration::from_secs(2),
            count: None,
            timeout: Duration::from_secs(30),
            format: Format::Text,
            file: "hosts.yaml".into(),
        };
        assert_eq!(notice(&rounds, 2, 0, &[]), None);
        let long: String = (0..20).map(|i| format!("+line {i}\n")).collect();
        let changes = [
            Change {
                server: "web-01".into(),
                event: "changed",
                outcome: "exit 0".into(),
                diff: Some(long),
            },
            Change {
                server: "web-02".into(),
                event: "unreachable",
                outcome: "unreachable: connection refused".into(),
                diff: None,
            },
        ];
        let n = notice(&rounds, 3, 7, &changes).expect("a notice");
        assert_eq!(n.kind, NotificationEvent::WatchChange);
        assert_eq!(n.at_ms, 7);
        assert_eq!(n.workflow.as_deref(), Some("hosts.yaml"));
        assert_eq!(n.summary, "drover watch: 2 servers changed in round 3: web-[01-02]");
        let servers = &n.detail["servers"];
        assert_eq!(
            servers[0]["diff"],
            "+line 0\n+line 1\n+line 2\n+line 3\n+line 4\n+line 5\n+line 6\n+line 7\n... 12 more lines\n"
        );
        assert_eq!(servers[1]["outcome"], "unreachable: connection refused");
        assert_eq!(servers[1].get("diff"), None);
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
