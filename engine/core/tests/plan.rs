//! The planner's expansion rules, on workflows written as JSON (the shape
//! the KCL engine produces), without the engine.

use std::collections::BTreeSet;

use drover_core::model::{Catalog, ProviderDecl, Resources, Script, Source, TaskservDecl, Workflow};
use drover_core::plan::{Action, Edge, GateKind, Node};
use drover_core::{Diagnostic, Plan, compile};
use petgraph::graph::NodeIndex;
use serde_json::{Value, json};

fn catalog() -> Catalog {
    let mut c = Catalog::default();
    // (name, requires_network, network_before_servers, shared_resources)
    for (name, requires, before, shared) in [
        ("local", false, false, vec![]),
        ("aws", true, true, vec!["vpc".to_string()]),
        ("sdn", true, false, vec![]),
    ] {
        c.providers.insert(
            name.into(),
            ProviderDecl {
                name: name.into(),
                requires_network: requires,
                network_before_servers: before,
                shared_resources: shared,
                api_rate_limit: 5.0,
                batch_size: 3,
                plans: [
                    (
                        "small".to_string(),
                        Resources {
                            cpu: 1,
                            memory: 512,
                            disk: 1,
                        },
                    ),
                    (
                        "big".to_string(),
                        Resources {
                            cpu: 4,
                            memory: 8192,
                            disk: 50,
                        },
                    ),
                ]
                .into(),
                origin: format!("providers/{name}/kcl/dependencies.k").into(),
            },
        );
    }
    let ts = |name: &str, requires: &[&str], conflicts: &[&str], cpu: u32, scripts: &[Script]| TaskservDecl {
        name: name.into(),
        description: None,
        requires: requires.iter().map(|s| s.to_string()).collect(),
        conflicts_with: conflicts.iter().map(|s| s.to_string()).collect(),
        minimum_resources: Resources {
            cpu,
            memory: 0,
            disk: 0,
        },
        health_check: None,
        scripts: scripts.iter().copied().collect::<BTreeSet<_>>(),
        origin: format!("taskservs/{name}/kcl/dependencies.k").into(),
    };
    let basic = [Script::Install, Script::Remove, Script::Check];
    for t in [
        ts("os", &[], &[], 1, &basic),
        ts("resolv", &["os"], &[], 1, &basic),
        ts("containerd", &["os"], &[], 1, &basic),
        ts("kubernetes", &["containerd", "resolv"], &[], 2, &basic),
        ts("nfs", &["kubernetes"], &["ceph"], 1, &basic),
        ts("ceph", &["kubernetes"], &["nfs"], 1, &basic),
        ts("web", &["os"], &[], 1, &Script::ALL),
    ] {
        c.taskservs.insert(t.name.clone(), t);
    }
    c
}

fn source(v: Value) -> Source {
    let workflow: Workflow = serde_json::from_value(v).expect("workflow JSON fits the model");
    Source {
        file: "wf.k".into(),
        workflow,
    }
}

fn server(name: &str, provider: &str, taskservs: &[&str]) -> Value {
    json!({"hostname": name, "provider": provider, "plan": "big", "taskservs": taskservs, "tags": [], "groups": []})
}

fn op(id: &str, kind: &str, target: &str) -> Value {
    json!({"id": id, "type": kind, "target": target})
}

fn plan(v: Value) -> Plan {
    compile(&source(v), &catalog()).unwrap_or_else(|d| panic!("expected a plan, got {d:#?}"))
}

fn problems(v: Value) -> Vec<Diagnostic> {
    match compile(&source(v), &catalog()) {
        Ok(_) => panic!("expected problems, got a plan"),
        Err(d) => d,
    }
}

fn node(p: &Plan, id: &str) -> NodeIndex {
    p.graph
        .node_indices()
        .find(|&n| p.graph[n].id() == id)
        .unwrap_or_else(|| {
            panic!(
                "no node {id}; nodes: {:?}",
                p.graph.node_weights().map(Node::id).collect::<Vec<_>>()
            )
        })
}

fn edge(p: &Plan, from: &str, to: &str) -> Option<Edge> {
    let e = p.graph.find_edge(node(p, from), node(p, to))?;
    Some(p.graph[e])
}

/// Whether `to` is reachable from `from`.
fn before(p: &Plan, from: &str, to: &str) -> bool {
    petgraph::algo::has_path_connecting(&p.graph, node(p, from), node(p, to), None)
}

#[test]
fn taskservs_on_a_server_form_a_pipeline_ordered_by_requires() {
    let p = plan(json!({
        "name": "w",
        "servers": [server("a", "local", &["os", "resolv", "containerd", "kubernetes"]), server("b", "local", &["os", "web"])],
        "operations": [op("install", "create", "taskserv")],
    }));
    assert_eq!(p.task_count(), 6);
    assert_eq!(edge(&p, "install/os@a", "install/resolv@a"), Some(Edge::Success));
    assert_eq!(edge(&p, "install/os@a", "install/containerd@a"), Some(Edge::Success));
    assert_eq!(
        edge(&p, "install/containerd@a", "install/kubernetes@a"),
        Some(Edge::Success)
    );
    assert_eq!(
        edge(&p, "install/resolv@a", "install/kubernetes@a"),
        Some(Edge::Success)
    );
    // No transitive shortcut edge, and servers are independent.
    assert_eq!(edge(&p, "install/os@a", "install/kubernetes@a"), None);
    assert!(!before(&p, "install/os@a", "install/web@b"));
    assert!(!before(&p, "install/os@b", "install/kubernetes@a"));
    assert!(before(&p, "install/os@b", "install/web@b"));
}

#[test]
fn pipeline_skips_over_taskservs_the_operation_does_not_handle() {
    let p = plan(json!({
        "name": "w",
        "servers": [server("a", "local", &["os", "resolv", "containerd", "kubernetes"])],
        "operations": [{"id": "i", "type": "create", "target": "taskserv", "items": ["os", "kubernetes"]}],
    }));
    assert_eq!(p.task_count(), 2);
    assert_eq!(edge(&p, "i/os@a", "i/kubernetes@a"), Some(Edge::Success));
}

#[test]
fn delete_pipelines_run_in_reverse() {
    let p = plan(json!({
        "name": "w",
        "servers": [server("a", "local", &["os", "web"])],
        "operations": [op("rm", "delete", "taskserv")],
    }));
    assert_eq!(edge(&p, "rm/web@a", "rm/os@a"), Some(Edge::Success));
    assert_eq!(edge(&p, "rm/os@a", "rm/web@a"), None);
    let t = p.graph[node(&p, "rm/web@a")].task().cloned().expect("task");
    assert_eq!(t.action, Action::Remove);
}

#[test]
fn depends_on_is_a_barrier_through_one_gate() {
    let p = plan(json!({
        "name": "w",
        "servers": [server("a", "local", &["os", "web"]), server("b", "local", &["os", "web"])],
        "operations": [op("create", "create", "server"), {"id": "inst", "type": "create", "target": "taskserv", "depends_on": ["create"]}],
    }));
    // Every upstream task feeds the gate; the gate feeds only the roots of
    // the downstream pipelines.
    assert_eq!(edge(&p, "create/a", "create/done"), Some(Edge::Finish));
    assert_eq!(edge(&p, "create/b", "create/done"), Some(Edge::Finish));
    assert_eq!(edge(&p, "create/done", "inst/os@a"), Some(Edge::Finish));
    assert_eq!(edge(&p, "create/done", "inst/os@b"), Some(Edge::Finish));
    assert_eq!(edge(&p, "create/done", "inst/web@a"), None);
    assert!(before(&p, "create/b", "inst/web@a"));
    // Per server, the taskserv work hard-depends on its own server's creation
    // only: a failed create of b skips b's work, not a's.
    assert_eq!(edge(&p, "create/a", "inst/os@a"), Some(Edge::Success));
    assert_eq!(edge(&p, "create/b", "inst/os@a"), None);
}

#[test]
fn barrier_edges_stay_linear_in_the_number_of_tasks() {
    let servers: Vec<Value> = (0..200).map(|i| server(&format!("s{i}"), "local", &["os"])).collect();
    let p = plan(json!({
        "name": "w",
        "servers": servers,
        "operations": [op("c", "create", "server"), {"id": "i", "type": "create", "target": "taskserv", "depends_on": ["c"]}],
    }));
    assert_eq!(p.task_count(), 400);
    // 200 into the gate, 200 out, 200 per-server hard edges, 200 into i/done.
    assert_eq!(p.graph.edge_count(), 800);
}

#[test]
fn cross_operation_requires_become_per_server_hard_edges() {
    let p = plan(json!({
        "name": "w",
        "servers": [server("a", "local", &["os", "containerd", "resolv", "kubernetes"])],
        "operations": [
            {"id": "base", "type": "create", "target": "taskserv", "items": ["os", "resolv", "containerd"]},
            {"id": "k8s", "type": "create", "target": "taskserv", "items": ["kubernetes"], "depends_on": ["base"]},
        ],
    }));
    assert_eq!(edge(&p, "base/containerd@a", "k8s/kubernetes@a"), Some(Edge::Success));
    assert_eq!(edge(&p, "base/resolv@a", "k8s/kubernetes@a"), Some(Edge::Success));
    assert_eq!(edge(&p, "base/os@a", "k8s/kubernetes@a"), Some(Edge::Success));
}

#[test]
fn network_comes_before_the_servers_of_providers_that_ask_for_it() {
    let p = plan(json!({
        "name": "w",
        "servers": [server("x", "aws", &[]), server("y", "aws", &[]), server("l", "local", &[])],
        "operations": [op("c", "create", "server")],
    }));
    assert_eq!(edge(&p, "c/network:aws", "c/x"), Some(Edge::Success));
    assert_eq!(edge(&p, "c/network:aws", "c/y"), Some(Edge::Success));
    assert!(!before(&p, "c/network:aws", "c/l"));
    assert_eq!(p.task_count(), 4);
    let aws = &p.provider_limits["aws"];
    assert_eq!((aws.batch_size, aws.api_rate_limit), (3, 5.0));
    assert_eq!(aws.shared_resources, ["vpc"], "shared resources reach the executor");
    // Deleting needs no network task.
    let p =
        plan(json!({"name": "w", "servers": [server("x", "aws", &[])], "operations": [op("d", "delete", "server")]}));
    assert_eq!(p.task_count(), 1);
}

#[test]
fn a_provider_that_requires_a_network_gets_one_even_when_its_servers_do_not_wait() {
    let p = plan(json!({
        "name": "w",
        "servers": [server("x", "sdn", &[]), server("y", "sdn", &[])],
        "operations": [op("c", "create", "server")],
    }));
    // requires_network: the network task is planned (and rolled back);
    // without network_before_servers the servers do not wait for it.
    assert_eq!(p.task_count(), 3);
    assert!(!before(&p, "c/network:sdn", "c/x"));
    assert!(!before(&p, "c/network:sdn", "c/y"));
}

#[test]
fn selection_by_provider_selector_and_items() {
    let mut a = server("a", "local", &["os"]);
    a["tags"] = json!(["web", "canary"]);
    a["groups"] = json!(["front"]);
    let mut b = server("b", "local", &["os"]);
    b["tags"] = json!(["web"]);
    b["groups"] = json!(["front"]);
    let mut c = server("c", "aws", &["os"]);
    c["groups"] = json!(["back"]);
    let ids = |p: &Plan, op: usize| -> Vec<String> {
        p.operations[op]
            .tasks
            .iter()
            .map(|&t| p.graph[t].id().to_string())
            .collect()
    };
    let p = plan(json!({
        "name": "w",
        "servers": [a, b, c],
        "operations": [
            {"id": "by-tag", "type": "check", "target": "taskserv", "selector": {"tags": ["web", "!canary"]}},
            {"id": "by-group", "type": "check", "target": "taskserv", "selector": {"groups": ["back"], "servers": ["a"]}},
            {"id": "by-provider", "type": "check", "target": "server", "providers": ["aws"]},
            {"id": "by-items", "type": "check", "target": "server", "items": ["b"]},
        ],
    }));
    assert_eq!(ids(&p, 0), ["by-tag/os@b"]);
    assert_eq!(ids(&p, 1), ["by-group/os@a", "by-group/os@c"]);
    assert_eq!(ids(&p, 2), ["by-provider/c"]);
    assert_eq!(ids(&p, 3), ["by-items/b"]);
}

#[test]
fn cluster_tasks_run_once_on_the_designated_server() {
    let p = plan(json!({
        "name": "w",
        "servers": [server("a", "local", &["os"]), server("b", "local", &["os", "web"])],
        "operations": [
            {"id": "c1", "type": "create", "target": "cluster", "items": ["web"]},
            {"id": "c2", "type": "create", "target": "cluster", "items": ["os"], "run_on": "b"},
        ],
    }));
    assert_eq!(p.operations[0].tasks.len(), 1);
    node(&p, "c1/web@b");
    node(&p, "c2/os@b");
}

#[test]
fn dependency_types_map_to_gate_edges() {
    let p = plan(json!({
        "name": "w",
        "servers": [server("a", "local", &["os", "web"]), server("b", "local", &["os"])],
        "operations": [op("i", "create", "taskserv")],
        "dependencies": [
            {"source": "server.b", "target": "taskserv.web", "type": "hard",
             "wait_condition": {"command": "true", "timeout": 10, "interval": 1}},
        ],
    }));
    // Hard: the target must succeed, and the gate must open, before b starts.
    assert_eq!(edge(&p, "i/web@a", "dependencies[0]"), Some(Edge::Success));
    assert_eq!(edge(&p, "dependencies[0]", "i/os@b"), Some(Edge::Success));
    let g = node(&p, "dependencies[0]");
    assert!(
        matches!(&p.graph[g], Node::Gate(gate) if matches!(&gate.kind, GateKind::Dependency { wait_condition: Some(w), .. } if w.command == "true"))
    );
}

#[test]
fn a_soft_dependency_waits_for_finish_only() {
    let p = plan(json!({
        "name": "w",
        "servers": [server("a", "local", &["os"]), server("b", "local", &["os"])],
        "operations": [op("i", "create", "taskserv")],
        "dependencies": [
            {"source": "server.b", "target": "server.a", "type": "soft"},
            {"source": "server.a", "target": "taskserv.nfs", "type": "optional"},
        ],
    }));
    assert_eq!(edge(&p, "i/os@a", "dependencies[0]"), Some(Edge::Finish));
    assert_eq!(edge(&p, "dependencies[0]", "i/os@b"), Some(Edge::Success));
    assert!(!p.graph.node_weights().any(|n| n.id() == "dependencies[1]"));
}

#[test]
fn a_cycle_through_dependencies_names_every_node_on_it() {
    let d = problems(json!({
        "name": "w",
        "servers": [server("a", "local", &["os", "web"]), server("b", "local", &["os"])],
        "operations": [op("i", "create", "taskserv")],
        "dependencies": [
            {"source": "server.b", "target": "taskserv.web", "type": "hard"},
            {"source": "taskserv.web", "target": "server.b", "type": "soft"},
        ],
    }));
    assert_eq!(d.len(), 1, "{d:#?}");
    let m = &d[0].message;
    for n in ["i/web@a", "dependencies[0]", "i/os@b", "dependencies[1]"] {
        assert!(m.contains(n), "{m}");
    }
}

#[test]
fn sequential_workflows_chain_operations_and_run_one_task_at_a_time() {
    let p = plan(json!({
        "name": "w",
        "type": "sequential",
        "servers": [server("a", "local", &["os"]), server("b", "local", &["os"])],
        "operations": [op("c", "create", "server"), op("i", "create", "taskserv"), op("k", "check", "taskserv")],
    }));
    assert_eq!(p.operations[1].depends_on, ["c"]);
    assert_eq!(p.operations[2].depends_on, ["i"]);
    assert_eq!(p.max_parallel(), 1);
    assert!(p.operations.iter().all(|o| o.max_parallel == Some(1)));
    assert!(before(&p, "i/os@b", "k/os@a"));
}

#[test]
fn operation_cycles_name_every_operation() {
    let d = problems(json!({
        "name": "w",
        "servers": [server("a", "local", &["os"])],
        "operations": [
            {"id": "x", "type": "check", "target": "server", "depends_on": ["z"]},
            {"id": "y", "type": "check", "target": "server", "depends_on": ["x"]},
            {"id": "z", "type": "check", "target": "server", "depends_on": ["y"]},
        ],
    }));
    assert_eq!(d.len(), 1);
    assert!(
        d[0].message.contains("x → z → y → x (each depends on the next)"),
        "{}",
        d[0].message
    );
    assert_eq!(d[0].field, "operations[0].depends_on");
}

#[test]
fn validation_collects_every_problem() {
    let mut bad = server("a", "local", &["kubernetes", "nfs", "ceph", "ghost"]);
    bad["plan"] = json!("small");
    let d = problems(json!({
        "name": "w",
        "servers": [bad, server("b", "mars", &[]), server("a", "local", &[])],
        "operations": [
            {"id": "i", "type": "update", "target": "taskserv", "items": ["os"], "depends_on": ["nope"]},
            {"id": "i", "type": "check", "target": "server", "items": ["zz"], "providers": ["gcp"], "selector": {"groups": ["g0"], "tags": ["t0"]}},
        ],
    }));
    let text: Vec<String> = d.iter().map(ToString::to_string).collect();
    let all = text.join("\n");
    for want in [
        "servers[2].hostname: duplicate server hostname \"a\"",
        "server b uses unknown provider \"mars\"",
        "server a carries unknown taskserv \"ghost\"",
        "server a carries kubernetes, which requires containerd",
        "server a carries nfs and ceph, which conflict",
        "plan small does not meet the minimum resources of kubernetes: cpu 1 < 2",
        "operations[1].id: duplicate operation id \"i\"",
        "operation i depends on unknown operation \"nope\"",
        "needs the update.sh script of taskserv os",
        "operation i targets unknown server \"zz\"",
        "operation i names unknown provider \"gcp\"",
        "group \"g0\", which is neither declared nor named by a server",
        "tag \"t0\", which no server carries",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    assert!(d.iter().all(|x| x.file.to_str() == Some("wf.k")));
}

#[test]
fn an_operation_that_selects_nothing_is_an_error() {
    let d = problems(json!({
        "name": "w",
        "servers": [server("a", "local", &["os"])],
        "operations": [{"id": "i", "type": "create", "target": "taskserv", "items": ["web"]}],
    }));
    assert_eq!(d.len(), 1);
    assert!(
        d[0].message.contains("operation i selects no (taskserv, server) pair"),
        "{}",
        d[0].message
    );
}

#[test]
fn requires_cycles_in_declarations_are_reported_in_the_declaration_file() {
    let mut c = catalog();
    c.taskservs.get_mut("os").expect("os").requires = vec!["web".into()];
    let d = compile(
        &source(json!({"name": "w", "servers": [server("a", "local", &["os", "web"])], "operations": [op("i", "create", "taskserv")]})),
        &c,
    )
    .expect_err("cycle");
    let cycle = d
        .iter()
        .find(|x| x.message.contains("cycle"))
        .expect("a cycle diagnostic");
    assert!(cycle.message.contains("os → web → os"), "{}", cycle.message);
    assert_eq!(cycle.file.to_str(), Some("taskservs/os/kcl/dependencies.k"));
}

#[test]
fn planning_is_deterministic() {
    let wf = json!({
        "name": "w",
        "servers": (0..30).map(|i| server(&format!("s{i}"), if i % 2 == 0 { "aws" } else { "local" }, &["os", "resolv", "containerd", "kubernetes"])).collect::<Vec<_>>(),
        "operations": [op("c", "create", "server"), {"id": "i", "type": "create", "target": "taskserv", "depends_on": ["c"]}],
    });
    let a = plan(wf.clone());
    let b = plan(wf);
    let ids = |p: &Plan| p.graph.node_weights().map(|n| n.id().to_string()).collect::<Vec<_>>();
    let edges = |p: &Plan| {
        p.graph
            .edge_indices()
            .map(|e| {
                let (x, y) = p.graph.edge_endpoints(e).expect("edge");
                (p.graph[x].id().to_string(), p.graph[y].id().to_string(), p.graph[e])
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(edges(&a), edges(&b));
}
