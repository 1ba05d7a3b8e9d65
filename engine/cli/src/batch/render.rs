//! How runs are shown: status tables, the end-of-watch summary, one line
//! per transition, the run listing's columns.

use drover_server::wire::{ExecView, JournalEvent, RunAction, RunStatusView, TaskStatus};
use drover_state::Event;

use super::{CommandError, StatusFormat};

pub(super) fn render_status(view: &RunStatusView, format: StatusFormat) -> Result<String, CommandError> {
    Ok(match format {
        StatusFormat::Table => status_table(view),
        StatusFormat::Json => {
            let mut s = serde_json::to_string_pretty(view).map_err(|e| CommandError::Other(e.into()))?;
            s.push('\n');
            s
        }
        StatusFormat::Yaml => serde_yaml_ng::to_string(view).map_err(|e| CommandError::Other(e.into()))?,
    })
}

/// A run per operation: each task's status, attempts, duration and error.
fn status_table(view: &RunStatusView) -> String {
    use std::fmt::Write as _;
    let r = &view.run;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {}: {} (workflow {}, {})",
        r.run_id, r.status, r.workflow, r.file
    );
    let _ = writeln!(
        out,
        "created {}, updated {}",
        utc(r.created_at_ms),
        utc(r.updated_at_ms)
    );
    if let Some(by) = &view.submitted_by {
        let _ = writeln!(out, "submitted by {by}");
    }
    if !view.reason.is_empty() {
        let _ = writeln!(out, "{}", view.reason);
    }
    for op in &view.operations {
        let _ = writeln!(out);
        let _ = writeln!(out, "{}: {}", op.id, op.status);
        let rows: Vec<Vec<String>> = op.tasks.iter().map(task_row).collect();
        let table = columns(&["task", "server", "status", "attempts", "duration", "error"], &rows);
        for line in table.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    not_undone(view, &mut out);
    actions(&view.actions, &mut out);
    notifications(&view.notifications, &mut out);
    out
}

/// Who did what to the run: one line per action, oldest first.
fn actions(actions: &[RunAction], out: &mut String) {
    use std::fmt::Write as _;
    if actions.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Actions:");
    for a in actions {
        let _ = writeln!(
            out,
            "  {}  {}  {}{}: {}",
            utc(a.at_ms),
            a.by,
            a.action,
            a.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default(),
            one_line(&a.outcome)
        );
    }
}

/// What the run's notification targets were told.
fn notifications(sent: &[drover_server::wire::RunNotification], out: &mut String) {
    use std::fmt::Write as _;
    if sent.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Notifications:");
    for n in sent {
        let _ = writeln!(
            out,
            "  {} ({})  {}{}: {} after {} attempt(s){}",
            n.target,
            n.target_kind,
            n.event,
            if n.count > 1 {
                format!(" ×{}", n.count)
            } else {
                String::new()
            },
            n.status,
            n.attempts,
            n.last_error
                .as_ref()
                .map(|e| format!(" ({})", one_line(e)))
                .unwrap_or_default()
        );
    }
}

/// The end of a watched run: every task, then the run's outcome.
pub(super) fn summary(view: &RunStatusView) -> String {
    use std::fmt::Write as _;
    let rows: Vec<Vec<String>> = view
        .operations
        .iter()
        .flat_map(|op| op.tasks.iter().map(task_row))
        .collect();
    let mut out = columns(&["task", "server", "status", "attempts", "duration", "error"], &rows);
    not_undone(view, &mut out);
    let count = |s: &str| {
        view.operations
            .iter()
            .flat_map(|o| &o.tasks)
            .filter(|t| t.status == s)
            .count()
    };
    let r = &view.run;
    let _ = writeln!(out);
    let undone = view
        .operations
        .iter()
        .flat_map(|o| &o.tasks)
        .filter(|t| t.rollback.as_deref() == Some("undone"))
        .count();
    let _ = writeln!(
        out,
        "run {} of {}: {}{} ({} succeeded, {} failed, {} skipped, {} cancelled{})",
        r.run_id,
        r.workflow,
        r.status,
        if view.reason.is_empty() {
            String::new()
        } else {
            format!(" — {}", view.reason)
        },
        count("succeeded"),
        count("failed"),
        count("skipped"),
        count("cancelled"),
        if undone > 0 {
            format!("; {undone} undone by rollback")
        } else {
            String::new()
        }
    );
    out
}

fn not_undone(view: &RunStatusView, out: &mut String) {
    use std::fmt::Write as _;
    if view.not_undone.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Not undone by rollback:");
    for n in &view.not_undone {
        let _ = writeln!(out, "  {}: {}", n.task, n.reason);
    }
}

fn task_row(t: &TaskStatus) -> Vec<String> {
    let status = match t.rollback.as_deref() {
        Some("undone") => "rolled back".to_string(),
        Some(r) => format!("{} ({})", t.status, one_line(r)),
        None => t.status.clone(),
    };
    vec![
        t.id.clone(),
        t.server.clone().unwrap_or_else(|| "-".into()),
        status,
        t.attempts.to_string(),
        format!("{:.1}s", t.duration_ms as f64 / 1000.0),
        match (&t.failure, &t.error) {
            (Some(kind), Some(e)) => format!("({kind}) {}", one_line(e)),
            (None, Some(e)) => one_line(e),
            _ => "-".into(),
        },
    ]
}

/// The first line of a (possibly long) error, for a table cell.
fn one_line(s: &str) -> String {
    const MAX: usize = 100;
    let first = s.lines().next().unwrap_or_default();
    let more = first.len() < s.trim_end().len();
    if first.chars().count() > MAX {
        format!("{}…", first.chars().take(MAX).collect::<String>())
    } else if more {
        format!("{first} …")
    } else {
        first.to_string()
    }
}

/// Left-aligned columns two spaces apart; the last column is not padded.
pub(crate) fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    use std::fmt::Write as _;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (c, w) in cells.zip(&widths) {
            let _ = write!(l, "{c:<w$}  ");
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// One line for a transition, for `status --follow` without a terminal.
pub(super) fn transition_line(j: &JournalEvent) -> String {
    let what = match serde_json::from_value::<Event>(j.event.clone()) {
        Ok(e) => describe(&e),
        Err(_) => j
            .event
            .get("event")
            .and_then(|e| e.as_str())
            .unwrap_or("event")
            .to_string(),
    };
    let time = utc(j.at_ms);
    let clock = time.split(' ').nth(1).unwrap_or(&time);
    match &j.node {
        Some(node) => format!("{clock} {node}: {what}"),
        None => format!("{clock} {what}"),
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn describe(e: &Event) -> String {
    match e {
        Event::RunStarted { resumed: false } => "run started".into(),
        Event::RunStarted { resumed: true } => "run continues from its journal".into(),
        Event::RunPaused => "run paused".into(),
        Event::RunUnpaused => "run resumed".into(),
        Event::CancelRequested => "cancel requested".into(),
        Event::RunFinished { status, reason } => match reason {
            Some(r) => format!("run finished: {}: {}", status.as_str(), one_line(r)),
            None => format!("run finished: {}", status.as_str()),
        },
        Event::TaskStarted { attempt, .. } => format!("running (attempt {attempt})"),
        Event::TaskSucceeded { duration_ms, .. } => format!("succeeded in {}", secs(*duration_ms)),
        Event::TaskFailed {
            attempt,
            error,
            kind,
            will_retry,
            ..
        } => format!(
            "attempt {attempt} failed ({kind}){}: {}",
            if *will_retry { ", will retry" } else { "" },
            one_line(error)
        ),
        Event::TaskRetrying { next_attempt, delay_ms } => format!("attempt {next_attempt} in {}", secs(*delay_ms)),
        Event::TaskSkipped { reason } => format!("skipped: {reason}"),
        Event::TaskCancelled { reason } => format!("cancelled: {reason}"),
        Event::GateWaiting => "waiting for its condition".into(),
        Event::GateOpened => "opened".into(),
        Event::GateBlocked { reason } => format!("blocked: {reason}"),
        Event::Checkpoint { operations_completed } => {
            format!("safe point after {}", operations_completed.join(", "))
        }
        Event::RollbackStarted { reason, .. } => format!("rollback started: {reason}"),
        Event::UndoStarted { action } => format!("undoing ({action})"),
        Event::UndoSucceeded { duration_ms } => format!("undone in {}", secs(*duration_ms)),
        Event::UndoFailed { error, .. } => format!("undo failed: {}", one_line(error)),
        Event::NotUndoable { reason } => format!("cannot be undone: {reason}"),
        Event::RollbackFinished { complete } => {
            format!("rollback {}", if *complete { "complete" } else { "incomplete" })
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC for ms since the Unix epoch.
pub(crate) fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `1 server`, `3 servers`.
pub(super) fn servers(n: usize) -> String {
    crate::fleet::exec::servers(n)
}

/// An exec's answers as `drover exec` prints them: each group of
/// identical answers once, largest first (`==> web-[01-17] (17 servers):
/// exit 0`, then its output indented by four spaces), a count of the
/// servers by outcome, and the run.
pub(super) fn exec_text(view: &ExecView) -> String {
    use drover_exec::fleet::{Answer, Group};
    let groups: Vec<Group> = view
        .groups
        .iter()
        .map(|g| Group {
            servers: g.servers.clone(),
            outcome: g.outcome.clone(),
            stdout: g.stdout.clone(),
            stderr: g.stderr.clone(),
        })
        .collect();
    let mut s = crate::fleet::exec::groups_text(&groups, false);
    // The answers as the executor has them, for the same count `drover
    // exec` prints; a status this build does not know counts as pending.
    let answers: Vec<Answer> = view
        .servers
        .iter()
        .map(|a| Answer {
            server: a.server.clone(),
            status: serde_json::from_value(serde_json::Value::String(a.status.clone()))
                .unwrap_or(drover_exec::Status::Pending),
            exit_code: a.exit_code,
            signal: a.signal,
            stdout: a.stdout.clone(),
            stderr: a.stderr.clone(),
            truncated: a.truncated,
            error: a.error.clone(),
            duration_ms: a.duration_ms,
        })
        .collect();
    s.push_str(&crate::fleet::exec::tally(&answers));
    s.push('\n');
    s.push_str(&format!("run {} {}", view.run_id, view.status));
    if view.status != "succeeded" && !view.reason.is_empty() {
        s.push_str(&format!(": {}", view.reason));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_763_935_803_123), "2025-11-23 22:10:03");
    }

    #[test]
    fn columns_align_and_trim() {
        let rows = vec![vec!["a".to_string(), "long value".into(), "-".into()]];
        assert_eq!(columns(&["x", "y", "z"], &rows), "x  y           z\na  long value  -\n");
    }

    #[test]
    fn the_status_table_says_who_submitted_the_run_and_who_did_what() {
        use drover_server::wire::RunInfo;
        let view = RunStatusView {
            run: RunInfo {
                run_id: "r1".into(),
                workflow: "w".into(),
                file: "w.k".into(),
                status: "cancelled".into(),
                created_at_ms: 0,
                updated_at_ms: 0,
            },
            reason: String::new(),
            operations: Vec::new(),
            not_undone: Vec::new(),
            submitted_by: Some("ci".into()),
            actions: vec![
                RunAction {
                    at_ms: 951_782_400_000,
                    by: "ci".into(),
                    action: "submit".into(),
                    detail: Some("source (120 bytes)".into()),
                    outcome: "ok".into(),
                },
                RunAction {
                    at_ms: 951_782_401_000,
                    by: "watcher".into(),
                    action: "cancel".into(),
                    detail: None,
                    outcome: "refused (403 forbidden): POST needs the operator role".into(),
                },
            ],
            notifications: vec![drover_server::wire::RunNotification {
                target: "ops".into(),
                target_kind: "webhook".into(),
                event: "run_cancelled".into(),
                count: 1,
                status: "delivered".into(),
                attempts: 3,
                last_error: Some("the target answered HTTP 500".into()),
            }],
            executed_by: None,
        };
        let table = status_table(&view);
        assert!(
            table.contains(
                "\nNotifications:\n  ops (webhook)  run_cancelled: delivered after 3 attempt(s) (the target answered HTTP 500)\n"
            ),
            "{table}"
        );
        assert!(table.contains("\nsubmitted by ci\n"), "{table}");
        assert!(
            table.contains("\nActions:\n  2000-02-29 00:00:00  ci  submit (source (120 bytes)): ok\n"),
            "{table}"
        );
        assert!(
            table.contains("  2000-02-29 00:00:01  watcher  cancel: refused (403 forbidden)"),
            "{table}"
        );
    }

    #[test]
    fn long_and_multi_line_errors_fit_a_cell() {
        assert_eq!(one_line("exit 1"), "exit 1");
        assert_eq!(one_line("exit 1\nstderr tail"), "exit 1 …");
        assert_eq!(one_line(&"x".repeat(150)).chars().count(), 101);
    }
}
