//! The planner: a validated workflow becomes a DAG of tasks.
//!
//! Pure: no I/O, no clock, no randomness; the same input gives the same
//! plan, node for node.
//!
//! Expansion rules (see schemas/workflow.k for the fields):
//! - target server: one task per selected server; a create waits for its
//!   provider's network task when the provider declares
//!   network_before_servers.
//! - target taskserv: one task per (taskserv, server carrying it); on one
//!   server the tasks form a pipeline ordered by `requires` (reversed for
//!   delete), so each server advances at its own pace.
//! - target cluster: one task per taskserv, on `run_on` or the first
//!   selected server carrying it.
//! - target command (built by `drover exec`, not by a workflow): one task
//!   per selected server running the operation's command.
//! - depends_on: a barrier gate per operation; every task of the upstream
//!   operation finishes before the downstream operation's first tasks.
//! - per server, a taskserv task hard-depends on the creation of its server
//!   and on the installs of what it requires, when upstream operations do
//!   those: a failed create skips that server's later work only.
//! - DependencyDef: a gate between the tasks of the target and of the
//!   source (hard: success edges; soft and optional: finish edges).
//! - type sequential: each operation also depends on the previous one.
//!
//! Gates keep the edge count linear: n upstream and m downstream tasks are
//! joined by n + m edges, not n × m.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use crate::diagnostic::{Diagnostic, known};
use crate::graph::{cycles, cycles_in};
use crate::inventory::Inventory;
use crate::model::{
    Catalog, Condition, DependencyType, OnFailure, Operation, OperationType, RetryPolicy, RollingStrategy, Server,
    Source, Target, WaitCondition, Workflow, WorkflowType,
};

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Provider: create the network its servers need.
    CreateNetwork,
    /// Provider: create a server.
    CreateServer,
    /// Provider: update a server.
    UpdateServer,
    /// Provider: delete a server.
    DeleteServer,
    /// Provider: report a server's status.
    CheckServer,
    /// Taskserv: run install.sh.
    Install,
    /// Taskserv: run update.sh.
    Update,
    /// Taskserv: run remove.sh.
    Remove,
    /// Taskserv: run check.sh.
    Check,
    /// Run the operation's shell command (`drover exec`).
    Exec,
}

impl Action {
    /// Short human name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::CreateNetwork => "create network",
            Action::CreateServer => "create server",
            Action::UpdateServer => "update server",
            Action::DeleteServer => "delete server",
            Action::CheckServer => "check server",
            Action::Install => "install",
            Action::Update => "update",
            Action::Remove => "remove",
            Action::Check => "check",
            Action::Exec => "exec",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit of work on one server (or one provider).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    /// Unique, stable id, e.g. `install/containerd@web-0`.
    pub id: String,
    /// Index into [`Plan::operations`].
    pub operation: usize,
    /// What it does.
    pub action: Action,
    /// The server it works on (absent for a network task).
    pub server: Option<String>,
    /// The taskserv it runs (taskserv and cluster targets).
    pub taskserv: Option<String>,
    /// The provider it calls (server targets and network tasks).
    pub provider: Option<String>,
}

/// A node that does no work of its own: it opens when what it waits for
/// has finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gate {
    /// Unique id, e.g. `install/done` or `dependencies[0]`.
    pub id: String,
    /// Why it exists.
    pub kind: GateKind,
}

/// Why a gate exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    /// Every task of the operation has finished.
    OperationDone {
        /// Index into [`Plan::operations`].
        operation: usize,
    },
    /// A DependencyDef: its target has finished (and the wait condition,
    /// if any, holds).
    Dependency {
        /// Index into the workflow's dependencies.
        index: usize,
        /// Polled before the gate opens.
        wait_condition: Option<WaitCondition>,
    },
}

/// A node of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "node", rename_all = "snake_case")]
pub enum Node {
    /// Work.
    Task(Task),
    /// A join point.
    Gate(Gate),
}

impl Node {
    /// The node's id.
    pub fn id(&self) -> &str {
        match self {
            Node::Task(t) => &t.id,
            Node::Gate(g) => &g.id,
        }
    }

    /// The task, if this node is one.
    pub fn task(&self) -> Option<&Task> {
        match self {
            Node::Task(t) => Some(t),
            Node::Gate(_) => None,
        }
    }
}

/// What the downstream node needs of the upstream one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Edge {
    /// The upstream must succeed, else the downstream is skipped.
    Success,
    /// The upstream must finish, in any state.
    Finish,
}

/// An operation as planned.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationPlan {
    /// The operation's id.
    pub id: String,
    /// create | update | delete | check.
    pub kind: OperationType,
    /// server | taskserv | cluster.
    pub target: Target,
    /// Operations it waits for (declared, plus the previous one in a
    /// sequential workflow).
    pub depends_on: Vec<String>,
    /// When it runs, given its upstream operations.
    pub condition: Condition,
    /// What a failed task does to the run.
    pub on_failure: OnFailure,
    /// Seconds per attempt.
    pub timeout: u64,
    /// The retry policy in force (the operation's or the workflow's).
    pub retry: RetryPolicy,
    /// Rolling batches, if any.
    pub rolling: Option<RollingStrategy>,
    /// At most this many of its tasks at once (1 when not parallel).
    pub max_parallel: Option<u32>,
    /// Its tasks, in expansion order.
    pub tasks: Vec<NodeIndex>,
    /// The gate that opens when all its tasks have finished.
    pub done: NodeIndex,
}

/// Limits on a provider's calls.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderLimit {
    /// Calls in flight.
    pub batch_size: u32,
    /// Calls started per second.
    pub api_rate_limit: f64,
    /// Resources its servers share (per zone): calls about servers that
    /// share one never run at once.
    pub shared_resources: Vec<String>,
}

/// A workflow compiled into a DAG.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The workflow it came from.
    pub workflow: Workflow,
    /// Tasks and gates; an edge a → b means b waits for a.
    pub graph: DiGraph<Node, Edge>,
    /// Operations in declaration order.
    pub operations: Vec<OperationPlan>,
    /// Limits of the providers the plan calls.
    pub provider_limits: BTreeMap<String, ProviderLimit>,
}

impl Plan {
    /// Number of task nodes (gates excluded).
    pub fn task_count(&self) -> usize {
        self.graph.node_weights().filter(|n| n.task().is_some()).count()
    }

    /// The global bound on tasks running at once.
    pub fn max_parallel(&self) -> u32 {
        match self.workflow.kind {
            WorkflowType::Sequential => 1,
            WorkflowType::Batch | WorkflowType::Parallel => self.workflow.max_parallel,
        }
    }

    /// Nodes in a topological order (the plan is acyclic by construction).
    pub fn topological_order(&self) -> Vec<NodeIndex> {
        petgraph::algo::toposort(&self.graph, None).unwrap_or_default()
    }

    /// The upstream nodes of `n` with their edges, in insertion order.
    pub fn upstream(&self, n: NodeIndex) -> Vec<(NodeIndex, Edge)> {
        let mut v: Vec<(NodeIndex, Edge)> = self
            .graph
            .edges_directed(n, Direction::Incoming)
            .map(|e| (petgraph::visit::EdgeRef::source(&e), *e.weight()))
            .collect();
        v.sort();
        v
    }
}

/// Expand a validated workflow into a plan. Problems that only show in the
/// expansion (a selection that picks nothing, a dependency on nothing, a
/// cycle) are collected and returned together.
pub fn build(source: &Source, catalog: &Catalog) -> Result<Plan, Vec<Diagnostic>> {
    let mut b = Builder {
        source,
        inventory: Inventory::new(&source.workflow),
        catalog,
        graph: DiGraph::new(),
        diags: Vec::new(),
        edges: HashSet::new(),
    };
    let order = b.operation_order()?;
    let mut operations = Vec::with_capacity(source.workflow.operations.len());
    for (i, op) in source.workflow.operations.iter().enumerate() {
        let plan = b.expand(i, op, &order.depends_on[i]);
        operations.push(plan);
    }
    b.barriers(&operations, &order);
    b.server_edges(&operations, &order);
    b.dependencies(&operations);
    if !b.diags.is_empty() {
        return Err(b.diags);
    }
    b.check_acyclic()?;

    let mut provider_limits = BTreeMap::new();
    for n in b.graph.node_weights() {
        if let Some(p) = n.task().and_then(|t| t.provider.as_ref())
            && let Some(decl) = catalog.providers.get(p)
        {
            provider_limits.entry(p.clone()).or_insert_with(|| ProviderLimit {
                batch_size: decl.batch_size,
                api_rate_limit: decl.api_rate_limit,
                shared_resources: decl.shared_resources.clone(),
            });
        }
    }
    Ok(Plan {
        workflow: source.workflow.clone(),
        graph: b.graph,
        operations,
        provider_limits,
    })
}

/// Effective operation ordering.
struct OperationOrder {
    /// depends_on by operation index, with the sequential chain added.
    depends_on: Vec<Vec<usize>>,
    /// upstream[i] = every operation i waits for, transitively.
    upstream: Vec<HashSet<usize>>,
}

struct Builder<'a> {
    source: &'a Source,
    inventory: Inventory<'a>,
    catalog: &'a Catalog,
    graph: DiGraph<Node, Edge>,
    diags: Vec<Diagnostic>,
    // Edges already added, so overlapping rules do not add an edge twice.
    edges: HashSet<(NodeIndex, NodeIndex)>,
}

impl<'a> Builder<'a> {
    fn wf(&self) -> &'a Workflow {
        &self.source.workflow
    }

    fn edge(&mut self, from: NodeIndex, to: NodeIndex, kind: Edge) {
        if self.edges.insert((from, to)) {
            self.graph.add_edge(from, to, kind);
        } else if kind == Edge::Success
            && let Some(e) = self.graph.find_edge(from, to)
        {
            // The stricter requirement wins.
            self.graph[e] = Edge::Success;
        }
    }

    fn task(&mut self, task: Task) -> NodeIndex {
        self.graph.add_node(Node::Task(task))
    }

    /// Effective depends_on and its transitive closure; a cycle between
    /// operations is reported here, naming every operation on it.
    fn operation_order(&mut self) -> Result<OperationOrder, Vec<Diagnostic>> {
        let wf = self.wf();
        let index: HashMap<&str, usize> = wf
            .operations
            .iter()
            .enumerate()
            .map(|(i, o)| (o.id.as_str(), i))
            .collect();
        let mut depends_on: Vec<Vec<usize>> = wf
            .operations
            .iter()
            .map(|o| {
                o.depends_on
                    .iter()
                    .filter_map(|d| index.get(d.as_str()).copied())
                    .collect()
            })
            .collect();
        if wf.kind == WorkflowType::Sequential {
            for (i, deps) in depends_on.iter_mut().enumerate().skip(1) {
                if !deps.contains(&(i - 1)) {
                    deps.push(i - 1);
                }
            }
        }
        let nodes: Vec<usize> = (0..wf.operations.len()).collect();
        let found = cycles(&nodes, |i| depends_on[i].clone());
        if !found.is_empty() {
            let file = self.source.file.clone();
            return Err(found
                .into_iter()
                .map(|c| {
                    let mut names: Vec<&str> = c.iter().map(|&i| wf.operations[i].id.as_str()).collect();
                    let first = names[0];
                    let field = format!("operations[{}].depends_on", c[0]);
                    names.push(first);
                    let help = if wf.kind == WorkflowType::Sequential {
                        "remove one of these depends_on entries; in a sequential workflow every operation also \
                         depends on the one declared before it, so a depends_on that points forward closes a cycle"
                    } else {
                        "remove one of these depends_on entries"
                    };
                    Diagnostic::new(
                        &file,
                        field,
                        format!(
                            "operations depend on each other in a cycle: {} (each depends on the next)",
                            names.join(" → ")
                        ),
                    )
                    .help(help)
                    .at(first)
                })
                .collect());
        }
        let mut upstream: Vec<HashSet<usize>> = vec![HashSet::new(); nodes.len()];
        for &i in &nodes {
            let mut stack = depends_on[i].clone();
            while let Some(j) = stack.pop() {
                if upstream[i].insert(j) {
                    stack.extend(depends_on[j].iter().copied());
                }
            }
        }
        Ok(OperationOrder { depends_on, upstream })
    }

    /// The servers an operation works on, in declaration order.
    fn selected(&self, op: &Operation) -> Vec<&'a Server> {
        self.wf()
            .servers
            .iter()
            .filter(|s| op.providers.is_empty() || op.providers.contains(&s.provider))
            .filter(|s| op.selector.as_ref().is_none_or(|sel| self.inventory.selects(sel, s)))
            .filter(|s| op.target != Target::Server || op.items.is_empty() || op.items.contains(&s.hostname))
            .collect()
    }

    fn expand(&mut self, i: usize, op: &Operation, depends_on: &[usize]) -> OperationPlan {
        let wf = self.wf();
        let servers: Vec<&Server> = self.selected(op);
        let mut tasks = Vec::new();
        let reported = self.diags.len();
        match op.target {
            Target::Server => self.expand_servers(i, op, &servers, &mut tasks),
            Target::Taskserv => self.expand_taskservs(i, op, &servers, &mut tasks),
            Target::Cluster => self.expand_cluster(i, op, &servers, &mut tasks),
            Target::Command => {
                for s in &servers {
                    tasks.push(self.task(Task {
                        id: format!("{}/{}", op.id, s.hostname),
                        operation: i,
                        action: Action::Exec,
                        server: Some(s.hostname.clone()),
                        taskserv: None,
                        provider: None,
                    }));
                }
            }
        }
        // A cluster operation reports each item that has no server itself.
        if tasks.is_empty() && !(op.target == Target::Cluster && self.diags.len() > reported) {
            let what = match op.target {
                Target::Server | Target::Command => "no server".to_string(),
                Target::Taskserv if op.items.is_empty() => {
                    "no (taskserv, server) pair: no selected server carries a taskserv".to_string()
                }
                Target::Taskserv => format!(
                    "no (taskserv, server) pair: no selected server carries any of its items ({})",
                    op.items.join(", ")
                ),
                Target::Cluster => "nothing".to_string(),
            };
            self.diags.push(
                Diagnostic::new(&self.source.file, format!("operations[{i}]"), format!("operation {} selects {what}", op.id))
                    .help("check its items, providers and selector against the servers' taskservs, providers, groups and tags")
                    .at(&op.id),
            );
        }
        let done = self.graph.add_node(Node::Gate(Gate {
            id: format!("{}/done", op.id),
            kind: GateKind::OperationDone { operation: i },
        }));
        let max_parallel = if op.parallel && wf.kind != WorkflowType::Sequential {
            op.max_parallel
        } else {
            Some(1)
        };
        OperationPlan {
            id: op.id.clone(),
            kind: op.kind,
            target: op.target,
            depends_on: depends_on.iter().map(|&j| wf.operations[j].id.clone()).collect(),
            condition: op.condition,
            on_failure: op.on_failure,
            timeout: op.timeout,
            retry: op.retry_policy.clone().unwrap_or_else(|| wf.retry_policy.clone()),
            rolling: op.rolling.clone(),
            max_parallel,
            tasks,
            done,
        }
    }

    fn expand_servers(&mut self, i: usize, op: &Operation, servers: &[&Server], tasks: &mut Vec<NodeIndex>) {
        let action = match op.kind {
            OperationType::Create => Action::CreateServer,
            OperationType::Update => Action::UpdateServer,
            OperationType::Delete => Action::DeleteServer,
            OperationType::Check => Action::CheckServer,
        };
        let mut networks: BTreeMap<String, NodeIndex> = BTreeMap::new();
        for s in servers {
            // A provider that requires a network gets one network task per
            // operation creating its servers; with network_before_servers
            // the creations wait for it (hard edge), otherwise they run
            // beside it.
            let decl = self.catalog.providers.get(&s.provider);
            let needs_network =
                action == Action::CreateServer && decl.is_some_and(|p| p.requires_network || p.network_before_servers);
            let waits_for_network = decl.is_some_and(|p| p.network_before_servers);
            let network = if needs_network {
                let id = format!("{}/network:{}", op.id, s.provider);
                let provider = s.provider.clone();
                let n = *networks.entry(provider.clone()).or_insert_with(|| {
                    self.graph.add_node(Node::Task(Task {
                        id,
                        operation: i,
                        action: Action::CreateNetwork,
                        server: None,
                        taskserv: None,
                        provider: Some(provider),
                    }))
                });
                if !tasks.contains(&n) {
                    tasks.push(n);
                }
                Some(n)
            } else {
                None
            };
            let t = self.task(Task {
                id: format!("{}/{}", op.id, s.hostname),
                operation: i,
                action,
                server: Some(s.hostname.clone()),
                taskserv: None,
                provider: Some(s.provider.clone()),
            });
            if let Some(n) = network
                && waits_for_network
            {
                self.edge(n, t, Edge::Success);
            }
            tasks.push(t);
        }
    }

    fn expand_taskservs(&mut self, i: usize, op: &Operation, servers: &[&Server], tasks: &mut Vec<NodeIndex>) {
        let action = taskserv_action(op.kind);
        for s in servers {
            let on_server: Vec<&String> = s
                .taskservs
                .iter()
                .filter(|t| op.items.is_empty() || op.items.contains(t))
                .filter(|t| self.catalog.taskservs.contains_key(*t))
                .collect();
            let mut here: HashMap<&str, NodeIndex> = HashMap::new();
            for t in &on_server {
                let n = self.task(Task {
                    id: format!("{}/{}@{}", op.id, t, s.hostname),
                    operation: i,
                    action,
                    server: Some(s.hostname.clone()),
                    taskserv: Some((*t).clone()),
                    provider: None,
                });
                here.insert(t.as_str(), n);
                tasks.push(n);
            }
            // The per-server pipeline: each taskserv after the nearest of
            // its requires that this operation also handles here.
            for t in &on_server {
                for r in self.nearest_required(t, &here) {
                    let (before, after) = if op.kind == OperationType::Delete {
                        (here[t.as_str()], here[r])
                    } else {
                        (here[r], here[t.as_str()])
                    };
                    self.edge(before, after, Edge::Success);
                }
            }
        }
    }

    /// The taskservs in `present` that `t` requires, directly or through
    /// requires that are not in `present`.
    fn nearest_required<'p>(&self, t: &str, present: &HashMap<&'p str, NodeIndex>) -> Vec<&'p str> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut stack: Vec<&str> = self.requires(t).collect();
        while let Some(r) = stack.pop() {
            if !seen.insert(r) {
                continue;
            }
            if let Some((&name, _)) = present.get_key_value(r) {
                if !out.contains(&name) {
                    out.push(name);
                }
            } else {
                stack.extend(self.requires(r));
            }
        }
        out.sort();
        out
    }

    fn requires<'c>(&'c self, t: &str) -> impl Iterator<Item = &'c str> {
        self.catalog
            .taskservs
            .get(t)
            .into_iter()
            .flat_map(|d| d.requires.iter().map(String::as_str))
    }

    fn expand_cluster(&mut self, i: usize, op: &Operation, servers: &[&Server], tasks: &mut Vec<NodeIndex>) {
        let action = taskserv_action(op.kind);
        for (k, item) in op.items.iter().enumerate() {
            let host = match &op.run_on {
                Some(h) => Some(h.clone()),
                None => servers
                    .iter()
                    .find(|s| s.taskservs.contains(item))
                    .map(|s| s.hostname.clone()),
            };
            let Some(host) = host else {
                self.diags.push(
                    Diagnostic::new(
                        &self.source.file,
                        format!("operations[{i}].items[{k}]"),
                        format!(
                            "operation {}: no selected server carries cluster taskserv {item} to run it on",
                            op.id
                        ),
                    )
                    .help(format!(
                        "set run_on, or add {item} to the taskservs of one of the selected servers"
                    ))
                    .at(item),
                );
                continue;
            };
            let n = self.task(Task {
                id: format!("{}/{}@{}", op.id, item, host),
                operation: i,
                action,
                server: Some(host),
                taskserv: Some(item.clone()),
                provider: None,
            });
            tasks.push(n);
        }
    }

    /// depends_on: upstream tasks → upstream's done gate → downstream roots.
    fn barriers(&mut self, ops: &[OperationPlan], order: &OperationOrder) {
        for op in ops {
            for &t in &op.tasks {
                self.edge(t, op.done, Edge::Finish);
            }
        }
        for (i, op) in ops.iter().enumerate() {
            let members: HashSet<NodeIndex> = op.tasks.iter().copied().collect();
            let roots: Vec<NodeIndex> = op
                .tasks
                .iter()
                .copied()
                .filter(|&t| {
                    !self
                        .graph
                        .neighbors_directed(t, Direction::Incoming)
                        .any(|u| members.contains(&u))
                })
                .collect();
            for &j in &order.depends_on[i] {
                for &r in &roots {
                    self.edge(ops[j].done, r, Edge::Finish);
                }
            }
        }
    }

    /// Per server: a taskserv task hard-depends on the creation of its
    /// server, on the installs of what it requires and, for a check,
    /// update or remove, on the install of the taskserv itself, when an
    /// upstream operation does them.
    fn server_edges(&mut self, ops: &[OperationPlan], order: &OperationOrder) {
        let mut by_server: HashMap<String, Vec<(usize, NodeIndex)>> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            for &t in &op.tasks {
                if let Some(s) = self.graph[t].task().and_then(|t| t.server.clone()) {
                    by_server.entry(s).or_default().push((i, t));
                }
            }
        }
        let mut add = Vec::new();
        for on_server in by_server.values() {
            for &(i, t) in on_server {
                let task = self.graph[t].task().cloned();
                let Some(task) = task else { continue };
                let Some(ts) = task.taskserv.as_deref() else { continue };
                if task.action == Action::Remove {
                    continue;
                }
                let required = self.requires_closure(ts);
                for &(j, u) in on_server {
                    if !order.upstream[i].contains(&j) {
                        continue;
                    }
                    let Some(up) = self.graph[u].task() else { continue };
                    let hard = match up.action {
                        Action::CreateServer => true,
                        // What it requires, and (for a check, update or
                        // remove) the install of the taskserv itself.
                        Action::Install => up
                            .taskserv
                            .as_deref()
                            .is_some_and(|r| required.contains(r) || (r == ts && task.action != Action::Install)),
                        _ => false,
                    };
                    if hard {
                        add.push((u, t));
                    }
                }
            }
        }
        add.sort();
        for (u, t) in add {
            self.edge(u, t, Edge::Success);
        }
    }

    fn requires_closure(&self, t: &str) -> HashSet<&str> {
        let mut out = HashSet::new();
        let mut stack: Vec<&str> = self.requires(t).collect();
        while let Some(r) = stack.pop() {
            if out.insert(r) {
                stack.extend(self.requires(r));
            }
        }
        out
    }

    fn dependencies(&mut self, ops: &[OperationPlan]) {
        let deps = self.wf().dependencies.clone();
        for (k, dep) in deps.iter().enumerate() {
            let target = self.resolve(k, "target", &dep.target, ops, dep.kind == DependencyType::Optional);
            let source = self.resolve(k, "source", &dep.source, ops, dep.kind == DependencyType::Optional);
            let (Some(target), Some(source)) = (target, source) else {
                continue;
            };
            if target.is_empty() || source.is_empty() {
                // Optional, and one side is not in the plan: no ordering.
                continue;
            }
            let gate = self.graph.add_node(Node::Gate(Gate {
                id: format!("dependencies[{k}]"),
                kind: GateKind::Dependency {
                    index: k,
                    wait_condition: dep.wait_condition.clone(),
                },
            }));
            let into = if dep.kind == DependencyType::Hard {
                Edge::Success
            } else {
                Edge::Finish
            };
            for t in target {
                self.edge(t, gate, into);
            }
            for s in source {
                self.edge(gate, s, Edge::Success);
            }
        }
    }

    /// The tasks "kind.name" stands for. None when the reference is wrong
    /// (reported); an empty list when it is right but not in the plan
    /// (reported unless `optional`).
    fn resolve(
        &mut self,
        k: usize,
        side: &str,
        reference: &str,
        ops: &[OperationPlan],
        optional: bool,
    ) -> Option<Vec<NodeIndex>> {
        let file = self.source.file.clone();
        let field = format!("dependencies[{k}].{side}");
        let Some((kind, name)) = reference.split_once('.') else {
            self.diags.push(
                Diagnostic::new(&file, field, format!("\"{reference}\" is not of the form kind.name"))
                    .help("write operation.<id>, server.<hostname> or taskserv.<name>")
                    .at(reference),
            );
            return None;
        };
        let wf = self.wf();
        let (known_here, nodes): (bool, Vec<NodeIndex>) = match kind {
            "operation" => match wf.operations.iter().position(|o| o.id == name) {
                Some(i) => (true, ops[i].tasks.clone()),
                None => {
                    let help = format!(
                        "known operations: {}",
                        known(wf.operations.iter().map(|o| o.id.as_str()))
                    );
                    self.diags.push(
                        Diagnostic::new(
                            &file,
                            field,
                            format!("dependency {side} names unknown operation \"{name}\""),
                        )
                        .help(help)
                        .at(reference),
                    );
                    return None;
                }
            },
            "server" => (
                wf.servers.iter().any(|s| s.hostname == name),
                self.nodes_where(|t| t.server.as_deref() == Some(name)),
            ),
            "taskserv" => (
                self.catalog.taskservs.contains_key(name),
                self.nodes_where(|t| t.taskserv.as_deref() == Some(name)),
            ),
            other => {
                self.diags.push(
                    Diagnostic::new(&file, field, format!("unknown kind \"{other}\" in \"{reference}\""))
                        .help("the kind is one of operation, server, taskserv")
                        .at(reference),
                );
                return None;
            }
        };
        if !known_here {
            let help = match kind {
                "server" => format!(
                    "servers of this workflow: {}",
                    known(wf.servers.iter().map(|s| s.hostname.as_str()))
                ),
                _ => format!(
                    "known taskservs: {}",
                    known(self.catalog.taskservs.keys().map(String::as_str))
                ),
            };
            self.diags.push(
                Diagnostic::new(
                    &file,
                    field,
                    format!("dependency {side} names unknown {kind} \"{name}\""),
                )
                .help(help)
                .at(reference),
            );
            return None;
        }
        if nodes.is_empty() && !optional {
            self.diags.push(
                Diagnostic::new(
                    &file,
                    field,
                    format!("dependency {side} {reference} matches no task of the plan"),
                )
                .help("use type = \"optional\" for ordering that applies only when it is in the plan")
                .at(reference),
            );
            return None;
        }
        Some(nodes)
    }

    fn nodes_where(&self, pred: impl Fn(&Task) -> bool) -> Vec<NodeIndex> {
        self.graph
            .node_indices()
            .filter(|&n| self.graph[n].task().is_some_and(&pred))
            .collect()
    }

    /// A cycle through tasks (from dependencies or requires crossing
    /// operations) is reported naming every node on it.
    fn check_acyclic(&self) -> Result<(), Vec<Diagnostic>> {
        let found = cycles_in(&self.graph);
        if found.is_empty() {
            return Ok(());
        }
        Err(found
            .into_iter()
            .map(|c| {
                let mut names: Vec<&str> = c.iter().map(|&n| self.graph[n].id()).collect();
                let first = names[0];
                names.push(first);
                let field = c
                    .iter()
                    .find_map(|&n| match &self.graph[n] {
                        Node::Gate(Gate {
                            kind: GateKind::Dependency { index, .. },
                            ..
                        }) => Some(format!("dependencies[{index}]")),
                        _ => None,
                    })
                    .unwrap_or_else(|| "operations".into());
                let needle = c.iter().find_map(|&n| match &self.graph[n] {
                    Node::Gate(Gate {
                        kind: GateKind::Dependency { index, .. },
                        ..
                    }) => self.wf().dependencies.get(*index).map(|d| d.source.clone()),
                    _ => None,
                });
                Diagnostic::new(
                    &self.source.file,
                    field,
                    format!(
                        "the plan has a cycle through {} nodes: {} (each must finish before the next)",
                        c.len(),
                        names.join(" → ")
                    ),
                )
                .help("a dependency or a taskserv's requires points against the order of the operations")
                .at(needle.unwrap_or_default())
            })
            .collect())
    }
}

fn taskserv_action(kind: OperationType) -> Action {
    match kind {
        OperationType::Create => Action::Install,
        OperationType::Update => Action::Update,
        OperationType::Delete => Action::Remove,
        OperationType::Check => Action::Check,
    }
}
