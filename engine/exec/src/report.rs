//! The end-of-run report: a summary table for people (report.txt) and one
//! JSON object per task (report.jsonl), both under the run's log
//! directory. Built from the scheduler's final state and the journal, so a
//! report can always be rebuilt from the journal.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use drover_core::Plan;
use drover_state::{Entry, Event, RunStatus};
use serde::Serialize;

use crate::runner::Runner;
use crate::scheduler::{NodeRt, Status};

/// One task's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    /// Task id.
    pub task: String,
    /// Its operation.
    pub operation: String,
    /// What it did.
    pub action: String,
    /// The server, when there is one.
    pub server: Option<String>,
    /// How it ended.
    pub status: Status,
    /// Attempts made.
    pub attempts: u32,
    /// Time spent in attempts, ms.
    pub duration_ms: u64,
    /// Why it failed, was skipped or cancelled.
    pub error: Option<String>,
    /// How its last failure was classified: transient (retried per
    /// policy), permanent (not retried) or cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<drover_core::FailureKind>,
    /// Its log file.
    pub log: Option<String>,
    /// What rollback did with it, if anything.
    pub rollback: Option<String>,
}

/// A run's report.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The run.
    pub run_id: String,
    /// The workflow.
    pub workflow: String,
    /// How it ended.
    pub status: RunStatus,
    /// Why.
    pub reason: String,
    /// Every task.
    pub tasks: Vec<TaskSummary>,
    /// What rollback could not undo.
    pub not_undone: Vec<(String, String)>,
    /// The report files.
    pub files: Vec<PathBuf>,
}

impl Summary {
    /// Count of tasks in `status`.
    pub fn count(&self, status: Status) -> usize {
        self.tasks.iter().filter(|t| t.status == status).count()
    }
}

/// Build the report of a run.
pub fn summarize(
    run_id: &str,
    plan: &Plan,
    nodes: &[NodeRt],
    status: RunStatus,
    reason: String,
    logs: &Path,
    journal: &[Entry],
) -> Summary {
    let mut rollback: HashMap<&str, String> = HashMap::new();
    let mut not_undone = Vec::new();
    for e in journal {
        let Some(node) = e.node.as_deref() else { continue };
        match &e.event {
            Event::UndoSucceeded { .. } => {
                rollback.insert(node, "undone".into());
            }
            Event::UndoFailed { error, .. } => {
                rollback.insert(node, format!("undo failed: {error}"));
            }
            Event::NotUndoable { reason } => {
                rollback.insert(node, format!("cannot be undone: {reason}"));
                not_undone.push((node.to_string(), reason.clone()));
            }
            _ => {}
        }
    }
    let mut tasks = Vec::new();
    for n in plan.graph.node_indices() {
        let Some(t) = plan.graph[n].task() else { continue };
        let rt = &nodes[n.index()];
        let log = Runner::log_file(logs, &t.id);
        tasks.push(TaskSummary {
            task: t.id.clone(),
            operation: plan.operations[t.operation].id.clone(),
            action: t.action.to_string(),
            server: t.server.clone(),
            status: rt.status,
            attempts: rt.attempt,
            duration_ms: rt.duration_ms,
            error: if rt.status == Status::Succeeded {
                None
            } else {
                rt.error.clone()
            },
            failure: if rt.status == Status::Failed { rt.failure } else { None },
            log: log.is_file().then(|| log.display().to_string()),
            rollback: rollback.get(t.id.as_str()).cloned(),
        });
    }
    Summary {
        run_id: run_id.to_string(),
        workflow: plan.workflow.name.clone(),
        status,
        reason,
        tasks,
        not_undone,
        files: vec![logs.join("report.jsonl"), logs.join("report.txt")],
    }
}

/// The summary table.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 6]> = s
        .tasks
        .iter()
        .map(|t| {
            [
                t.task.clone(),
                t.server.clone().unwrap_or_else(|| "-".into()),
                match (&t.rollback, t.status) {
                    (Some(r), _) if r == "undone" => "rolled back".to_string(),
                    (_, st) => serde_json::to_value(st)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                },
                t.attempts.to_string(),
                format!("{:.1}s", t.duration_ms as f64 / 1000.0),
                t.log.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["task", "server", "status", "attempts", "duration", "log"];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&header.map(String::from)));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    let problems: Vec<&TaskSummary> = s.tasks.iter().filter(|t| t.error.is_some()).collect();
    if !problems.is_empty() {
        let _ = writeln!(out);
        for t in problems.iter().take(20) {
            let kind = t.failure.map(|k| format!(" ({k} failure)")).unwrap_or_default();
            let _ = writeln!(out, "{}{kind}: {}", t.task, t.error.as_deref().unwrap_or_default());
        }
        if problems.len() > 20 {
            let _ = writeln!(out, "… and {} more (see report.jsonl)", problems.len() - 20);
        }
    }
    if !s.not_undone.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Not undone by rollback:");
        for (task, why) in &s.not_undone {
            let _ = writeln!(out, "  {task}: {why}");
        }
    }
    let _ = writeln!(out);
    let undone = s
        .tasks
        .iter()
        .filter(|t| t.rollback.as_deref() == Some("undone"))
        .count();
    let _ = writeln!(
        out,
        "run {} of {}: {} — {} ({} succeeded, {} failed, {} skipped, {} cancelled{})",
        s.run_id,
        s.workflow,
        s.status.as_str(),
        s.reason,
        s.count(Status::Succeeded),
        s.count(Status::Failed),
        s.count(Status::Skipped),
        s.count(Status::Cancelled),
        if undone > 0 {
            format!("; {undone} undone by rollback")
        } else {
            String::new()
        }
    );
    out
}

/// Write report.jsonl and report.txt.
pub fn write(s: &Summary, logs: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(logs)?;
    let mut jsonl = String::new();
    let head = serde_json::json!({
        "run_id": s.run_id, "workflow": s.workflow, "status": s.status, "reason": s.reason,
        "not_undone": s.not_undone,
    });
    jsonl.push_str(&head.to_string());
    jsonl.push('\n');
    for t in &s.tasks {
        jsonl.push_str(&serde_json::to_string(t).map_err(std::io::Error::other)?);
        jsonl.push('\n');
    }
    std::fs::write(logs.join("report.jsonl"), jsonl)?;
    std::fs::write(logs.join("report.txt"), table(s))
}
