//! Every workflow in workflows/ validates and plans; its plan is a
//! reviewed snapshot (table and JSON), and its DOT renders with Graphviz.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Inventory files (servers and groups that workflows import) live in
/// workflows/inventory/; everything else under workflows/ is a workflow.
fn is_inventory(file: &str) -> bool {
    file.starts_with("workflows/inventory/")
}

fn workflow_files() -> Vec<String> {
    all_k_files().into_iter().filter(|f| !is_inventory(f)).collect()
}

fn inventory_files() -> Vec<String> {
    all_k_files().into_iter().filter(|f| is_inventory(f)).collect()
}

fn all_k_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("readable").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "k") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("workflows"), &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(root()).expect("below root").display().to_string())
        .collect();
    rel.sort();
    rel
}

fn drover(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run drover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn snapshot_name(file: &str, format: &str) -> String {
    format!("{}.{format}", file.trim_end_matches(".k").replace('/', "__"))
}

#[test]
fn every_workflow_validates_and_its_plan_matches_the_reviewed_snapshot() {
    let files = workflow_files();
    assert!(
        files.len() >= 7,
        "expected the full deployment, the quickstart and the examples, found {files:?}"
    );
    for f in &files {
        let (code, out, err) = drover(&["validate", f]);
        assert_eq!(code, 0, "{f} does not validate:\n{err}");
        assert!(out.starts_with(&format!("ok: {f} is valid")), "{out}");

        for format in ["table", "json"] {
            let (code, out, err) = drover(&["plan", f, "--format", format]);
            assert_eq!(code, 0, "{f}: plan --format {format} failed:\n{err}");
            insta::with_settings!({snapshot_path => "snapshots", prepend_module_to_snapshot => false, omit_expression => true}, {
                insta::assert_snapshot!(snapshot_name(f, format), out);
            });
        }
    }
}

#[test]
fn every_inventory_lists_its_servers_and_groups() {
    let files = inventory_files();
    assert!(!files.is_empty(), "expected workflows/inventory/fleet.k");
    for f in &files {
        let (code, out, err) = drover(&["inventory", "list", f]);
        assert_eq!(code, 0, "{f}: inventory list failed:\n{err}");
        insta::with_settings!({snapshot_path => "snapshots", prepend_module_to_snapshot => false, omit_expression => true}, {
            insta::assert_snapshot!(snapshot_name(f, "list"), out);
        });
        let (code, out, err) = drover(&["inventory", "groups", f]);
        assert_eq!(code, 0, "{f}: inventory groups failed:\n{err}");
        insta::with_settings!({snapshot_path => "snapshots", prepend_module_to_snapshot => false, omit_expression => true}, {
            insta::assert_snapshot!(snapshot_name(f, "groups"), out);
        });
    }
    // Tags given with commas all apply; the workflow that imports the
    // inventory sees the same servers.
    let (code, out, _) = drover(&["inventory", "list", "workflows/inventory/fleet.k", "--tag", "debian,db"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("db-1") && out.contains("db-2") && !out.contains("web-1"),
        "{out}"
    );
    assert!(out.contains("2 of 6 servers"), "{out}");
    let (code, from_workflow, _) = drover(&["inventory", "list", "workflows/fleet.k"]);
    let (_, from_inventory, _) = drover(&["inventory", "list", "workflows/inventory/fleet.k"]);
    assert_eq!(code, 0);
    assert_eq!(from_workflow, from_inventory);
}

#[test]
fn every_plan_renders_with_graphviz() {
    let dot = Command::new("dot").arg("-V").output();
    assert!(
        dot.is_ok_and(|o| o.status.success()),
        "Graphviz `dot` is missing: run `make setup` (it installs the graphviz package)"
    );
    for f in workflow_files() {
        let (code, out, err) = drover(&["plan", &f, "--format", "dot"]);
        assert_eq!(code, 0, "{f}: {err}");
        let mut child = Command::new("dot")
            .arg("-Tsvg")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dot");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(out.as_bytes())
            .expect("write dot");
        let res = child.wait_with_output().expect("dot runs");
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(
            res.status.success() && stderr.trim().is_empty(),
            "{f}: dot rejected the plan: {stderr}"
        );
        let svg = String::from_utf8_lossy(&res.stdout);
        assert!(svg.contains("<svg"), "{f}: no SVG produced");
    }
}

#[test]
fn the_full_deployment_plan_reads_as_intended() {
    let (code, out, err) = drover(&["plan", "workflows/wuji.k"]);
    assert_eq!(code, 0, "{err}");
    // The plan a person reads names the operations, the servers and the
    // order of the per-server pipelines.
    for want in [
        "Plan for workflow",
        "provider limits:",
        "install os",
        "install os → install resolv",
        "Rollback:",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}
