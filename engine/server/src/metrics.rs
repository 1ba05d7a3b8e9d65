//! Prometheus metrics, in the text exposition format, with the Prometheus
//! project's Rust client. Task counters and durations are fed from the
//! journal events of the runs this process executes; run counts by status
//! and queue figures are read when scraped.

use std::collections::HashMap;

use drover_exec::Progress;
use drover_state::{Event, RunStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    operation: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    code: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn task_buckets() -> Histogram {
    // Scripts take from milliseconds (checks) to an hour (a cluster).
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ])
}

fn request_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The orchestrator's metrics.
pub struct Metrics {
    registry: Registry,
    runs: Family<StatusLabel, Gauge>,
    queue_depth: Gauge,
    runs_active: Gauge,
    ssh_connections: Gauge,
    tasks: Family<TaskLabels, Counter>,
    task_duration: HistogramFamily<OperationLabel>,
    attempts: Family<OperationLabel, Counter>,
    retries: Family<OperationLabel, Counter>,
    rollbacks: Counter,
    undo: Family<ResultLabel, Counter>,
    submissions: Family<ResultLabel, Counter>,
    requests: HistogramFamily<RequestLabels>,
    schedule_fired: Counter,
    schedule_skipped: Family<ReasonLabel, Counter>,
    schedule_late: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            runs: Family::default(),
            queue_depth: Gauge::default(),
            runs_active: Gauge::default(),
            ssh_connections: Gauge::default(),
            tasks: Family::default(),
            task_duration: Family::new_with_constructor(task_buckets as fn() -> Histogram),
            attempts: Family::default(),
            retries: Family::default(),
            rollbacks: Counter::default(),
            undo: Family::default(),
            submissions: Family::default(),
            requests: Family::new_with_constructor(request_buckets as fn() -> Histogram),
            schedule_fired: Counter::default(),
            schedule_skipped: Family::default(),
            // From on time (ms: the loop's wake-up) to a slot run once
            // after hours down.
            schedule_late: Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0]),
            registry: Registry::default(),
        };
        registry.register("drover_runs", "Runs in the state store, by status", m.runs.clone());
        registry.register(
            "drover_queue_depth",
            "Runs accepted and waiting for a free slot (on a shared store: across instances)",
            m.queue_depth.clone(),
        );
        registry.register(
            "drover_runs_active",
            "Runs executing in this process",
            m.runs_active.clone(),
        );
        registry.register(
            "drover_ssh_connections",
            "SSH connections to hosts held open by this process",
            m.ssh_connections.clone(),
        );
        registry.register(
            "drover_tasks",
            "Tasks that reached a final state, by operation and status",
            m.tasks.clone(),
        );
        registry.register(
            "drover_task_duration_seconds",
            "Duration of task attempts, by operation",
            m.task_duration.clone(),
        );
        registry.register(
            "drover_task_attempts",
            "Task attempts started, by operation",
            m.attempts.clone(),
        );
        registry.register(
            "drover_task_retries",
            "Task attempts that were retries, by operation",
            m.retries.clone(),
        );
        registry.register("drover_rollbacks", "Rollbacks started", m.rollbacks.clone());
        registry.register(
            "drover_rollback_compensations",
            "Compensations run by rollbacks, by result",
            m.undo.clone(),
        );
        registry.register(
            "drover_submissions",
            "Workflow submissions, by result (accepted, validated, planned, invalid, rejected)",
            m.submissions.clone(),
        );
        registry.register(
            "drover_http_request_duration_seconds",
            "API requests by method, route and status code",
            m.requests.clone(),
        );
        registry.register(
            "drover_schedule_fired",
            "Schedule slots that fired a run",
            m.schedule_fired.clone(),
        );
        registry.register(
            "drover_schedule_skipped",
            "Schedule slots that did not fire, by reason (overlap: the previous run was active; missed: the server was down; failed: the run could not be created)",
            m.schedule_skipped.clone(),
        );
        registry.register(
            "drover_schedule_late_seconds",
            "How long after its slot a schedule's run was created",
            m.schedule_late.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Account for a schedule's slot: `fired` (`late` seconds after its
    /// time), or `skipped`, `missed`, `failed`.
    pub fn schedule_slot(&self, outcome: &str, late: Option<f64>) {
        let reason = match outcome {
            "fired" => {
                self.schedule_fired.inc();
                if let Some(late) = late {
                    self.schedule_late.observe(late);
                }
                return;
            }
            "skipped" => "overlap",
            "missed" => "missed",
            _ => "failed",
        };
        self.schedule_skipped
            .get_or_create(&ReasonLabel { reason: reason.into() })
            .inc();
    }

    /// Account for one journal event of a run whose tasks belong to the
    /// operations in `operation_of`.
    pub fn observe(&self, operation_of: &HashMap<String, String>, p: &Progress) {
        let op = || {
            p.node
                .as_ref()
                .and_then(|n| operation_of.get(n))
                .cloned()
                .unwrap_or_default()
        };
        let done = |status: &str| {
            self.tasks
                .get_or_create(&TaskLabels {
                    operation: op(),
                    status: status.into(),
                })
                .inc();
        };
        let duration = |ms: u64| {
            self.task_duration
                .get_or_create(&OperationLabel { operation: op() })
                .observe(ms as f64 / 1000.0);
        };
        match &p.event {
            Event::TaskStarted { attempt, .. } if operation_of.contains_key(p.node.as_deref().unwrap_or("")) => {
                self.attempts.get_or_create(&OperationLabel { operation: op() }).inc();
                if *attempt > 1 {
                    self.retries.get_or_create(&OperationLabel { operation: op() }).inc();
                }
            }
            Event::TaskSucceeded { duration_ms, .. } => {
                duration(*duration_ms);
                done("succeeded");
            }
            Event::TaskFailed {
                duration_ms,
                will_retry,
                ..
            } => {
                duration(*duration_ms);
                if !will_retry {
                    done("failed");
                }
            }
            Event::TaskSkipped { .. } if operation_of.contains_key(p.node.as_deref().unwrap_or("")) => done("skipped"),
            Event::TaskCancelled { .. } => done("cancelled"),
            Event::RollbackStarted { .. } => {
                self.rollbacks.inc();
            }
            Event::UndoSucceeded { .. } => {
                self.undo.get_or_create(&ResultLabel { result: "ok".into() }).inc();
            }
            Event::UndoFailed { .. } => {
                self.undo
                    .get_or_create(&ResultLabel {
                        result: "failed".into(),
                    })
                    .inc();
            }
            _ => {}
        }
    }

    /// Count a submission's outcome.
    pub fn submission(&self, result: &str) {
        self.submissions
            .get_or_create(&ResultLabel { result: result.into() })
            .inc();
    }

    /// Record an API request.
    pub fn request(&self, method: &str, route: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.into(),
                route: route.into(),
                code: code.to_string(),
            })
            .observe(seconds);
    }

    /// The exposition text (Prometheus text format 0.0.4), with run counts, queue depth and active runs as
    /// of now.
    pub fn render(&self, runs_by_status: &HashMap<RunStatus, usize>, queued: usize, active: usize) -> String {
        for s in RunStatus::ALL {
            self.runs
                .get_or_create(&StatusLabel {
                    status: s.as_str().into(),
                })
                .set(runs_by_status.get(&s).copied().unwrap_or(0) as i64);
        }
        self.queue_depth.set(queued as i64);
        self.runs_active.set(active as i64);
        self.ssh_connections.set(drover_transport::ssh::open_connections());
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        text_format(&out)
    }
}

/// Prometheus's text format 0.0.4 from the OpenMetrics text the client
/// library encodes. They differ in what 0.0.4 parsers (promtool, scrapers
/// reading `text/plain`) check: a counter's HELP and TYPE name its samples,
/// `_total` suffix included, and there is no `# EOF` or `# UNIT` line.
fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {rest}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}
