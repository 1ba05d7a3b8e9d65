//! Shared by the end-to-end tests of `drover run` and `drover serve` +
//! `drover batch`: the repository, the test home, a slow workflow over the
//! deterministic test taskservs, and reading what ran.
// Each test binary uses part of this.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use drover_state::{Entry, Event};

pub mod server;
pub mod webdriver;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The home of the deterministic test taskservs (behave.sh).
pub fn test_home() -> PathBuf {
    repo().join("engine/exec/tests/home")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A workflow over the deterministic test taskservs, slow enough to be
/// interrupted: 4 servers × (create, a → b, c → d), every install 0.4 s.
pub fn slow_workflow(dir: &Path) -> (PathBuf, PathBuf) {
    let control = dir.join("control");
    std::fs::create_dir_all(&control).expect("control");
    std::fs::write(control.join("install"), "sleep 0.4").expect("control file");
    let file = dir.join("crash.k");
    std::fs::write(
        &file,
        format!(
            r#"import drover

workflow = drover.WorkflowDef {{
    name = "crash"
    max_parallel = 2
    variables = {{CONTROL = "{}"}}
    servers = [drover.ServerDef {{
        hostname = "c${{i}}"
        provider = "local"
        plan = "small"
        connection = "local"
        taskservs = ["a", "b", "c", "d"]
    }} for i in range(4)]
    operations = [
        drover.OperationDef {{id = "create", type = "create", target = "server"}}
        drover.OperationDef {{id = "install", type = "create", target = "taskserv", depends_on = ["create"]}}
    ]
}}
"#,
            control.display()
        ),
    )
    .expect("workflow");
    (file, control)
}

/// The script executions behave.sh recorded, each split into its fields.
pub fn executions(control: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(control.join("executions.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

/// From a journal: how many times each task succeeded, and how many times
/// each was in flight when a resume began (interrupted). Asserts that no
/// task started again after it succeeded.
pub fn succeeded_and_interrupted(journal: &[Entry]) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let mut succeeded: HashMap<String, usize> = HashMap::new();
    let mut interrupted: HashMap<String, usize> = HashMap::new();
    let mut in_flight: HashMap<String, bool> = HashMap::new();
    for e in journal {
        let node = e.node.clone().unwrap_or_default();
        match &e.event {
            Event::TaskStarted { .. } => {
                assert_eq!(succeeded.get(&node), None, "{node} started again after it succeeded");
                in_flight.insert(node, true);
            }
            Event::TaskSucceeded { .. } => {
                *succeeded.entry(node.clone()).or_default() += 1;
                in_flight.insert(node, false);
            }
            Event::RunStarted { resumed: true } => {
                for (n, flying) in in_flight.iter_mut() {
                    if *flying {
                        *interrupted.entry(n.clone()).or_default() += 1;
                        *flying = false;
                    }
                }
            }
            _ => {}
        }
    }
    (succeeded, interrupted)
}
