//! Printing a plan: a table for people, JSON for programs, DOT for
//! Graphviz. All three are deterministic, so they can be snapshot-tested.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use comfy_table::{Table, presets};
use drover_core::Plan;
use drover_core::model::{Backoff, Condition, DependencyType, OnFailure, RetryPolicy, Target};
use drover_core::plan::{Edge, GateKind, Node, OperationPlan};
use petgraph::graph::NodeIndex;
use serde_json::{Value, json};

/// The readable summary.
pub fn table(plan: &Plan, file: &Path) -> String {
    let wf = &plan.workflow;
    let mut s = String::new();
    let kind = serde_json::to_value(wf.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let gates = plan.graph.node_count() - plan.task_count();
    let _ = writeln!(s, "Plan for workflow {} ({kind}) from {}", wf.name, file.display());
    if let Some(d) = &wf.description {
        let _ = writeln!(s, "  {d}");
    }
    let _ = writeln!(
        s,
        "  {} servers · {} operations · {} tasks · {} gates · at most {} tasks at once · longest chain {} tasks{}",
        wf.servers.len(),
        plan.operations.len(),
        plan.task_count(),
        gates,
        plan.max_parallel(),
        longest_chain(plan),
        wf.timeout.map(|t| format!(" · run timeout {t}s")).unwrap_or_default()
    );
    if !plan.provider_limits.is_empty() {
        let limits: Vec<String> = plan
            .provider_limits
            .iter()
            .map(|(p, l)| format!("{p}: {} calls in flight, {} calls/s", l.batch_size, l.api_rate_limit))
            .collect();
        let _ = writeln!(s, "  provider limits: {}", limits.join(" · "));
    }

    for (i, op) in plan.operations.iter().enumerate() {
        let _ = writeln!(s);
        let _ = writeln!(s, "[{}] {} — {}", i + 1, op.id, operation_line(op));
        let after = if op.depends_on.is_empty() {
            "start of run".to_string()
        } else {
            op.depends_on.join(", ")
        };
        let cond = match op.condition {
            Condition::OnSuccess => "",
            Condition::OnFailure => " · runs only if one of them failed",
            Condition::Always => " · runs whatever their outcome",
        };
        let _ = writeln!(s, "    after: {after}{cond}");
        if let Some(desc) = wf.operations.get(i).and_then(|o| o.description.as_deref()) {
            let _ = writeln!(s, "    {desc}");
        }
        s.push_str(&operation_table(plan, op));
    }

    if !wf.dependencies.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Dependencies");
        for (k, d) in wf.dependencies.iter().enumerate() {
            let kind = match d.kind {
                DependencyType::Hard => "hard: must succeed",
                DependencyType::Soft => "soft: must finish",
                DependencyType::Optional => "optional: ordering only",
            };
            let in_plan = plan.graph.node_weights().any(
                |n| matches!(n, Node::Gate(g) if matches!(g.kind, GateKind::Dependency { index, .. } if index == k)),
            );
            let _ = write!(s, "  [{k}] {} waits for {} ({kind})", d.source, d.target);
            if !in_plan {
                let _ = write!(s, " — not in this plan, no effect");
            }
            let _ = writeln!(s);
            if let Some(w) = &d.wait_condition {
                let on = w
                    .server
                    .as_deref()
                    .map(|h| format!("on {h}"))
                    .unwrap_or_else(|| "on the orchestrator".into());
                let _ = writeln!(
                    s,
                    "      then polls `{}` {on} every {}s, for up to {}s",
                    w.command, w.interval, w.timeout
                );
            }
        }
    }

    let _ = writeln!(s);
    let rb = &wf.rollback_strategy;
    if rb.enabled {
        let mut parts = vec!["enabled".to_string()];
        if rb.on_partial_failure {
            parts.push("also on partial failure".into());
        }
        if rb.checkpoint_interval > 0 {
            parts.push(format!("safe point every {} operations", rb.checkpoint_interval));
        }
        if rb.preserve_successful {
            parts.push("keeps operations that fully succeeded".into());
        }
        let _ = writeln!(s, "Rollback: {}", parts.join(" · "));
    } else {
        let _ = writeln!(s, "Rollback: disabled");
    }
    let _ = writeln!(s, "Retry (default): {}", retry_line(&wf.retry_policy));
    if let Some(sec) = &wf.secrets {
        let key = sec
            .age_key_file
            .as_deref()
            .map(|k| format!(" (age key {k})"))
            .unwrap_or_default();
        let _ = writeln!(s, "Secrets: {} {}{key}", sec.kind, sec.files.join(", "));
    }
    if !wf.variables.is_empty() {
        let names: Vec<&str> = wf.variables.keys().map(String::as_str).collect();
        let _ = writeln!(s, "Variables: {}", names.join(", "));
    }
    s
}

fn operation_line(op: &OperationPlan) -> String {
    let kind = serde_json::to_value(op.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let target = match op.target {
        Target::Server => "server",
        Target::Taskserv => "taskserv",
        Target::Cluster => "cluster taskserv",
        Target::Command => "command",
    };
    let parallel = match op.max_parallel {
        Some(1) => "one at a time".to_string(),
        Some(n) => format!("parallel, at most {n}"),
        None => "parallel".to_string(),
    };
    let on_failure = match op.on_failure {
        OnFailure::Fail => "fail",
        OnFailure::Continue => "continue",
        OnFailure::Rollback => "rollback",
    };
    let mut parts = vec![
        format!("{kind} {target}"),
        parallel,
        format!("timeout {}s", op.timeout),
        format!("retry {}", retry_line(&op.retry)),
        format!("on failure: {on_failure}"),
    ];
    if let Some(r) = &op.rolling {
        parts.push(format!(
            "rolling {} at a time, {}s pause, halt above {}% failed",
            r.batch_size, r.pause, r.failure_threshold
        ));
    }
    parts.join(" · ")
}

fn retry_line(r: &RetryPolicy) -> String {
    if r.max_attempts <= 1 {
        return "none".into();
    }
    let backoff = match r.backoff {
        Backoff::Linear => "linear",
        Backoff::Exponential => "exponential",
    };
    format!(
        "{}× {backoff} {}s–{}s{}",
        r.max_attempts,
        r.initial_delay,
        r.max_delay,
        if r.jitter { " with jitter" } else { "" }
    )
}

/// One row per server: the operation's tasks on it, as a pipeline.
fn operation_table(plan: &Plan, op: &OperationPlan) -> String {
    let servers: HashMap<&str, &drover_core::model::Server> =
        plan.workflow.servers.iter().map(|s| (s.hostname.as_str(), s)).collect();
    // Rows keyed by server (or provider, for network tasks), in task order.
    let mut rows: Vec<(String, Vec<NodeIndex>)> = Vec::new();
    for &t in &op.tasks {
        let Some(task) = plan.graph[t].task() else { continue };
        let key = match (&task.server, &task.provider) {
            (Some(s), _) => s.clone(),
            (None, Some(p)) => format!("network:{p}"),
            (None, None) => task.id.clone(),
        };
        match rows.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(t),
            None => rows.push((key, vec![t])),
        }
    }
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    let waits_header = "waits for (outside this operation)";
    match op.target {
        Target::Server => table.set_header(vec!["server", "action", "provider", "plan", "zone", waits_header]),
        Target::Taskserv | Target::Cluster | Target::Command => {
            table.set_header(vec!["server", "tasks, in order", waits_header])
        }
    };
    for (key, tasks) in rows {
        let waits = outside_waits(plan, op, &tasks);
        match op.target {
            Target::Server => {
                let Some(task) = plan.graph[tasks[0]].task() else {
                    continue;
                };
                let server = task.server.as_deref().and_then(|h| servers.get(h));
                table.add_row(vec![
                    key,
                    task.action.to_string(),
                    task.provider.clone().unwrap_or_default(),
                    server.map(|s| s.plan.clone()).unwrap_or_default(),
                    server.and_then(|s| s.zone.clone()).unwrap_or_default(),
                    waits,
                ]);
            }
            Target::Taskserv | Target::Cluster | Target::Command => {
                table.add_row(vec![key, pipeline(plan, &tasks), waits]);
            }
        }
    }
    let mut out = String::new();
    for line in table.to_string().lines() {
        let _ = writeln!(out, "    {}", line.trim_end());
    }
    out
}

/// Tasks of one server in stages: "os → containerd, resolv → kubernetes".
fn pipeline(plan: &Plan, tasks: &[NodeIndex]) -> String {
    let mut level: HashMap<NodeIndex, usize> = HashMap::new();
    let order = plan.topological_order();
    for n in order.into_iter().filter(|n| tasks.contains(n)) {
        let l = plan
            .upstream(n)
            .iter()
            .filter_map(|(u, _)| level.get(u))
            .max()
            .map_or(0, |m| m + 1);
        level.insert(n, l);
    }
    let mut stages: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for &t in tasks {
        if let Some(task) = plan.graph[t].task() {
            let name = format!("{} {}", task.action, task.taskserv.as_deref().unwrap_or("?"));
            stages.entry(level[&t]).or_default().push(name);
        }
    }
    stages
        .into_values()
        .map(|v| v.join(", "))
        .collect::<Vec<_>>()
        .join(" → ")
}

/// What the tasks wait for outside their operation, besides the barrier:
/// per-server hard edges and dependency gates.
fn outside_waits(plan: &Plan, op: &OperationPlan, tasks: &[NodeIndex]) -> String {
    let mut waits: Vec<String> = Vec::new();
    for &t in tasks {
        for (u, edge) in plan.upstream(t) {
            if op.tasks.contains(&u) {
                continue;
            }
            let label = match &plan.graph[u] {
                Node::Task(task) => task.id.clone(),
                Node::Gate(g) => match g.kind {
                    GateKind::OperationDone { .. } => continue,
                    GateKind::Dependency { index, .. } => format!("dependencies[{index}]"),
                },
            };
            let label = match edge {
                Edge::Success => format!("{label} ✓"),
                Edge::Finish => label,
            };
            if !waits.contains(&label) {
                waits.push(label);
            }
        }
    }
    waits.join(", ")
}

/// The number of tasks on the longest path (gates not counted).
fn longest_chain(plan: &Plan) -> usize {
    let mut depth: HashMap<NodeIndex, usize> = HashMap::new();
    let mut best = 0;
    for n in plan.topological_order() {
        let own = usize::from(plan.graph[n].task().is_some());
        let d = plan
            .upstream(n)
            .iter()
            .filter_map(|(u, _)| depth.get(u))
            .max()
            .copied()
            .unwrap_or(0)
            + own;
        best = best.max(d);
        depth.insert(n, d);
    }
    best
}

/// Every node and edge.
pub fn json(plan: &Plan, file: &Path) -> String {
    let wf = &plan.workflow;
    let id = |n: NodeIndex| plan.graph[n].id().to_string();
    let operations: Vec<Value> = plan
        .operations
        .iter()
        .map(|op| {
            json!({
                "id": op.id,
                "type": op.kind,
                "target": op.target,
                "depends_on": op.depends_on,
                "condition": op.condition,
                "on_failure": op.on_failure,
                "timeout": op.timeout,
                "retry_policy": op.retry,
                "rolling": op.rolling,
                "max_parallel": op.max_parallel,
                "tasks": op.tasks.iter().map(|&t| id(t)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let nodes: Vec<Value> = plan
        .graph
        .node_indices()
        .map(|n| {
            let after: Vec<Value> = plan
                .upstream(n)
                .iter()
                .map(|&(u, e)| json!({"id": id(u), "edge": e}))
                .collect();
            let mut v = match &plan.graph[n] {
                Node::Task(t) => json!({
                    "node": "task",
                    "id": t.id,
                    "operation": plan.operations[t.operation].id,
                    "action": t.action,
                    "server": t.server,
                    "taskserv": t.taskserv,
                    "provider": t.provider,
                }),
                Node::Gate(g) => match &g.kind {
                    GateKind::OperationDone { operation } => json!({
                        "node": "gate",
                        "id": g.id,
                        "kind": "operation_done",
                        "operation": plan.operations[*operation].id,
                    }),
                    GateKind::Dependency { index, wait_condition } => json!({
                        "node": "gate",
                        "id": g.id,
                        "kind": "dependency",
                        "dependency": wf.dependencies.get(*index),
                        "wait_condition": wait_condition,
                    }),
                },
            };
            v["after"] = Value::Array(after);
            v
        })
        .collect();
    let limits: BTreeMap<&str, Value> = plan
        .provider_limits
        .iter()
        .map(|(p, l)| {
            (
                p.as_str(),
                json!({"batch_size": l.batch_size, "api_rate_limit": l.api_rate_limit}),
            )
        })
        .collect();
    let doc = json!({
        "file": file.display().to_string(),
        "workflow": wf.name,
        "type": wf.kind,
        "max_parallel": plan.max_parallel(),
        "timeout": wf.timeout,
        "task_count": plan.task_count(),
        "provider_limits": limits,
        "rollback_strategy": wf.rollback_strategy,
        "operations": operations,
        "nodes": nodes,
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

/// Graphviz DOT: one cluster per operation; solid edges must succeed,
/// dashed edges must finish; diamonds are dependency gates.
pub fn dot(plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph {} {{", quote(&plan.workflow.name));
    let _ = writeln!(s, "  rankdir=LR;");
    let _ = writeln!(
        s,
        "  node [shape=box, style=rounded, fontname=\"Helvetica\", fontsize=10];"
    );
    let _ = writeln!(s, "  edge [fontname=\"Helvetica\", fontsize=9];");
    for (i, op) in plan.operations.iter().enumerate() {
        let _ = writeln!(s, "  subgraph {} {{", quote(&format!("cluster_{i}")));
        let _ = writeln!(
            s,
            "    label={};",
            quote(&format!("{} ({})", op.id, operation_kind(op)))
        );
        let _ = writeln!(s, "    style=dashed;");
        for &t in &op.tasks {
            if let Some(task) = plan.graph[t].task() {
                let subject = match (&task.taskserv, &task.server, &task.provider) {
                    (Some(ts), Some(sv), _) => format!("{ts}@{sv}"),
                    (None, Some(sv), _) => sv.clone(),
                    (_, None, Some(p)) => format!("network {p}"),
                    _ => task.id.clone(),
                };
                let _ = writeln!(
                    s,
                    "    {} [label={}];",
                    quote(&task.id),
                    quote(&format!("{subject}\\n{}", task.action))
                );
            }
        }
        let _ = writeln!(s, "    {} [shape=point, label=\"\"];", quote(plan.graph[op.done].id()));
        let _ = writeln!(s, "  }}");
    }
    for n in plan.graph.node_indices() {
        if let Node::Gate(g) = &plan.graph[n]
            && let GateKind::Dependency { index, wait_condition } = &g.kind
        {
            let label = match wait_condition {
                Some(w) => format!("dependencies[{index}]\\nwait: {}", w.command),
                None => format!("dependencies[{index}]"),
            };
            let _ = writeln!(
                s,
                "  {} [shape=diamond, style=\"\", label={}];",
                quote(&g.id),
                quote(&label)
            );
        }
    }
    for e in plan.graph.edge_indices() {
        let Some((a, b)) = plan.graph.edge_endpoints(e) else {
            continue;
        };
        let style = match plan.graph[e] {
            Edge::Success => "solid",
            Edge::Finish => "dashed",
        };
        let _ = writeln!(
            s,
            "  {} -> {} [style={style}];",
            quote(plan.graph[a].id()),
            quote(plan.graph[b].id())
        );
    }
    let _ = writeln!(s, "}}");
    s
}

fn operation_kind(op: &OperationPlan) -> String {
    let v = serde_json::to_value((op.kind, op.target)).unwrap_or(Value::Null);
    format!("{} {}", v[0].as_str().unwrap_or(""), v[1].as_str().unwrap_or(""))
}

fn quote(s: &str) -> String {
    let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
    // Keep our own "\n" line breaks in labels.
    format!("\"{}\"", escaped.replace("\\\\n", "\\n"))
}
