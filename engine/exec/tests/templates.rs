//! Templates: rendered per server into the task's environment, and a
//! template that does not render stops the run before it starts, naming
//! the template, the line and the variable.

mod support;

use drover_exec::ExecError;
use drover_state::RunStatus;
use serde_json::json;
use support::{Fixture, server};

fn workflow(vars: serde_json::Value) -> serde_json::Value {
    json!({
        "name": "tmpl", "variables": vars,
        "servers": [server("t0", &["tmpl"]), server("t1", &["tmpl"])],
        "operations": [
            {"id": "create", "type": "create", "target": "server"},
            {"id": "install", "type": "create", "target": "taskserv", "depends_on": ["create"]},
        ],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_rendered_per_server_for_the_scripts() {
    let f = Fixture::new();
    let s = f.run(workflow(json!({"NEEDED": "hello"}))).await;
    assert_eq!(s.status, RunStatus::Succeeded, "{}", s.reason);
    for host in ["t0", "t1"] {
        let conf = std::fs::read_to_string(f.host(host).join("conf")).expect("rendered file installed");
        assert_eq!(conf, format!("host={host}\nneeded=hello\n"));
    }
    // The rendered payload does not outlive the task.
    let work = f.dir.path().join("work");
    let mut left = Vec::new();
    for e in walk(&work) {
        if e.is_file() && e.to_string_lossy().contains("templates") {
            left.push(e);
        }
    }
    assert!(left.is_empty(), "rendered templates left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undefined_variable_stops_the_run_before_it_starts() {
    let f = Fixture::new();
    let err = drover_exec::run::start(f.store.clone(), f.inputs(workflow(json!({}))), &f.options(), None)
        .expect_err("the template cannot render");
    let ExecError::Template(msg) = err else {
        panic!("not a template error: {err}")
    };
    assert!(msg.contains("templates/conf.j2:2"), "{msg}");
    assert!(
        msg.contains("undefined") && msg.contains("`vars.NEEDED`") && msg.contains("tmpl on t0"),
        "{msg}"
    );
    assert!(f.store.runs().expect("runs").is_empty(), "a run was recorded");
    assert!(!f.host("t0").exists(), "something ran");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.clone());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}
