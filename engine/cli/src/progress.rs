//! The live progress view of a run: one bar per operation with its tasks'
//! counts (running / ok / failed / retrying / skipped) and the servers in
//! flight, and a line per notable transition. Without a terminal it prints
//! one line per transition instead.
//!
//! The view is driven by a channel of [`Update`]s and a [`Layout`], so the
//! same view follows a run executing in this process (`drover run`, fed
//! from the scheduler's broadcast) and a run on `drover serve` (`drover
//! batch submit --watch`, fed from the API's event stream).

use std::collections::HashMap;
use std::io::IsTerminal;

use drover_core::Plan;
use drover_exec::Progress;
use drover_exec::runner::TaskLine;
use drover_state::Event;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{broadcast, mpsc};

/// What the view shows bars for: the operations in plan order, each with
/// its tasks and their servers.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Operations in plan order.
    pub operations: Vec<OperationLayout>,
}

/// One operation of a [`Layout`].
#[derive(Debug, Clone)]
pub struct OperationLayout {
    /// Operation id.
    pub id: String,
    /// Its tasks: id and server.
    pub tasks: Vec<(String, Option<String>)>,
}

impl Layout {
    /// The layout of a plan compiled in this process.
    pub fn of_plan(plan: &Plan) -> Layout {
        Layout {
            operations: plan
                .operations
                .iter()
                .map(|op| OperationLayout {
                    id: op.id.clone(),
                    tasks: op
                        .tasks
                        .iter()
                        .filter_map(|&n| plan.graph[n].task().map(|t| (t.id.clone(), t.server.clone())))
                        .collect(),
                })
                .collect(),
        }
    }
}

/// What drives the view.
#[derive(Debug, Clone)]
pub enum Update {
    /// A journal transition.
    Progress(Progress),
    /// A line shown as it is (e.g. the connection to the API was lost).
    Note(String),
}

/// Feed the view from an in-process run's broadcast of transitions; ends
/// when the run drops its sender or the view goes away.
pub async fn bridge(mut events: broadcast::Receiver<Progress>, tx: mpsc::UnboundedSender<Update>) {
    loop {
        match events.recv().await {
            Ok(p) => {
                if tx.send(Update::Progress(p)).is_err() {
                    break;
                }
            }
            // The view only loses counts, as it did when it read the
            // broadcast itself.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

#[derive(Default, Clone)]
struct Counts {
    running: Vec<String>,
    ok: u64,
    failed: u64,
    retrying: u64,
    skipped: u64,
    cancelled: u64,
}

/// Follow a run until its journal says it finished, or `updates` closes.
pub async fn watch(
    layout: Layout,
    mut updates: mpsc::UnboundedReceiver<Update>,
    mut lines: Option<mpsc::UnboundedReceiver<TaskLine>>,
    verbose: bool,
) {
    let tty = std::io::stderr().is_terminal();
    let mp = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("{prefix:<18.bold} [{bar:28.cyan/blue}] {pos:>4}/{len:<4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("█▉ ");
    let mut bars = Vec::new();
    for op in &layout.operations {
        let pb = mp.add(ProgressBar::new(op.tasks.len() as u64));
        pb.set_style(style.clone());
        pb.set_prefix(op.id.clone());
        bars.push(pb);
    }
    let mut op_of: HashMap<String, usize> = HashMap::new();
    let mut server_of: HashMap<String, String> = HashMap::new();
    for (i, op) in layout.operations.iter().enumerate() {
        for (task, server) in &op.tasks {
            op_of.insert(task.clone(), i);
            if let Some(s) = server {
                server_of.insert(task.clone(), s.clone());
            }
        }
    }
    let mut counts = vec![Counts::default(); layout.operations.len()];
    let say = |mp: &MultiProgress, text: String| {
        if tty {
            let _ = mp.println(text);
        } else {
            eprintln!("{text}");
        }
    };
    loop {
        let update = tokio::select! {
            u = updates.recv() => u,
            l = async {
                match lines.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match l {
                    Some(l) if verbose => say(&mp, format!("  {} | {}", l.task, l.line.line)),
                    Some(_) => {}
                    None => lines = None,
                }
                continue;
            }
        };
        let p = match update {
            Some(Update::Progress(p)) => p,
            Some(Update::Note(text)) => {
                say(&mp, text);
                continue;
            }
            None => break,
        };
        let Some(node) = p.node.clone() else {
            match &p.event {
                Event::RunFinished { .. } => break,
                Event::RunStarted { resumed: true } => say(&mp, "run continues from its journal".into()),
                Event::RunPaused => say(&mp, "run paused".into()),
                Event::RunUnpaused => say(&mp, "run resumed".into()),
                Event::CancelRequested => say(&mp, "stopping: running tasks are being cancelled".into()),
                Event::RollbackStarted { reason, .. } => say(&mp, format!("rolling back: {reason}")),
                Event::RollbackFinished { complete } => say(
                    &mp,
                    format!("rollback {}", if *complete { "complete" } else { "incomplete" }),
                ),
                Event::Checkpoint { operations_completed } => {
                    say(&mp, format!("safe point after {}", operations_completed.join(", ")))
                }
                _ => {}
            }
            continue;
        };
        let Some(&op) = op_of.get(&node) else {
            if let Event::GateBlocked { reason } = &p.event {
                say(&mp, format!("{node} blocked: {reason}"));
            }
            continue;
        };
        let c = &mut counts[op];
        let server = server_of.get(&node).cloned().unwrap_or_else(|| node.clone());
        let mut advance = false;
        match &p.event {
            Event::TaskStarted { attempt, .. } => {
                if *attempt > 1 {
                    c.retrying = c.retrying.saturating_sub(1);
                }
                c.running.push(server);
                if !tty {
                    say(&mp, format!("{node}: running (attempt {attempt})"));
                }
            }
            Event::TaskSucceeded { duration_ms, .. } => {
                c.running.retain(|s| *s != server);
                c.ok += 1;
                advance = true;
                if !tty {
                    say(&mp, format!("{node}: ok in {:.1}s", *duration_ms as f64 / 1000.0));
                }
            }
            Event::TaskFailed {
                error,
                will_retry,
                attempt,
                kind,
                ..
            } => {
                c.running.retain(|s| *s != server);
                if *will_retry {
                    c.retrying += 1;
                    say(&mp, format!("{node}: attempt {attempt} failed, retrying: {error}"));
                } else {
                    c.failed += 1;
                    advance = true;
                    say(&mp, format!("{node}: FAILED ({kind}): {error}"));
                }
            }
            Event::TaskSkipped { reason } => {
                c.skipped += 1;
                advance = true;
                say(&mp, format!("{node}: skipped: {reason}"));
            }
            Event::TaskCancelled { .. } => {
                c.running.retain(|s| *s != server);
                c.cancelled += 1;
                advance = true;
            }
            Event::UndoSucceeded { .. } => say(&mp, format!("{node}: undone")),
            Event::UndoFailed { error, .. } => say(&mp, format!("{node}: undo FAILED: {error}")),
            Event::NotUndoable { reason } => say(&mp, format!("{node}: cannot be undone: {reason}")),
            _ => {}
        }
        let bar = &bars[op];
        if advance {
            bar.inc(1);
        }
        bar.set_message(message(c));
    }
    for b in bars {
        b.finish();
    }
}

fn message(c: &Counts) -> String {
    let mut parts = vec![format!("ok {}", c.ok)];
    if c.failed > 0 {
        parts.push(format!("failed {}", c.failed));
    }
    if c.retrying > 0 {
        parts.push(format!("retrying {}", c.retrying));
    }
    if c.skipped > 0 {
        parts.push(format!("skipped {}", c.skipped));
    }
    if c.cancelled > 0 {
        parts.push(format!("cancelled {}", c.cancelled));
    }
    if !c.running.is_empty() {
        let shown: Vec<&str> = c.running.iter().take(4).map(String::as_str).collect();
        let more = if c.running.len() > 4 {
            format!(" +{}", c.running.len() - 4)
        } else {
            String::new()
        };
        parts.push(format!("running {}{more}", shown.join(" ")));
    }
    parts.join(" · ")
}
