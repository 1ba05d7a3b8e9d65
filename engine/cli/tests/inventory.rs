//! `drover inventory`: servers and groups of a workflow, with the group
//! hierarchy and dynamic criteria resolved.

use std::path::Path;
use std::process::Command;

fn drover(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .expect("run drover");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn list_filters_by_resolved_groups_and_tags() {
    let (code, out) = drover(&[
        "inventory",
        "list",
        "workflows/wuji.k",
        "--group",
        "upcloud-frankfurt",
        "--tag",
        "!control-plane",
    ]);
    assert_eq!(code, 0, "{out}");
    let servers: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| s.starts_with("wuji-"))
        .collect();
    assert_eq!(servers, ["wuji-worker-0", "wuji-worker-1", "wuji-worker-2"], "{out}");
    assert!(out.contains("3 of 8 servers"), "{out}");
    // A server's groups include those it is in through the hierarchy.
    assert!(
        out.lines()
            .any(|l| l.starts_with("wuji-worker-0") && l.contains("cluster,upcloud-frankfurt,workers")),
        "{out}"
    );
}

#[test]
fn groups_show_how_each_is_defined_and_what_it_holds_now() {
    let (code, out) = drover(&["inventory", "groups", "workflows/wuji.k"]);
    assert_eq!(code, 0, "{out}");
    let line = |g: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{g} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("cluster").contains("contains control-plane,workers,storage"),
        "{out}"
    );
    assert!(line("cluster").contains("wuji-storage-1"), "{out}");
    assert!(
        line("upcloud-frankfurt").contains("2 criteria") && !line("upcloud-frankfurt").contains("storage"),
        "{out}"
    );
}

#[test]
fn an_unknown_group_is_named() {
    let (code, out) = drover(&["inventory", "list", "workflows/wuji.k", "--group", "nope"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no group nope") && out.contains("cluster"), "{out}");
}
