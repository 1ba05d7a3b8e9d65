//! The corpus of bad inputs: every file in tests/bad/ is a workflow that
//! must be refused with a clear message.
//!
//! Each file starts with comment lines that say what to expect:
//!
//! ```text
//! # exit: 1
//! # expect: depends on unknown operation "instal"
//! # expect: tests/bad/unknown-depends-on.k:12:
//! ```
//!
//! `exit` is the exit status of `drover validate` and `drover plan`;
//! every `expect` must appear in what `drover validate` prints (stderr).
//! Paths are printed relative to the working directory, which is the
//! crate directory when cargo runs tests. `drover validate --format json`
//! must give the same verdict as parseable JSON naming the file. Nothing
//! may panic.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Expectation {
    exit: i32,
    contains: Vec<String>,
}

fn expectation(file: &Path) -> Expectation {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut exit = None;
    let mut contains = Vec::new();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(v) = line.strip_prefix("# exit:") {
            exit = Some(
                v.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: bad exit line", file.display())),
            );
        } else if let Some(v) = line.strip_prefix("# expect:") {
            contains.push(v.trim().to_string());
        }
    }
    let exit = exit.unwrap_or_else(|| panic!("{}: no `# exit:` line", file.display()));
    assert!(!contains.is_empty(), "{}: no `# expect:` line", file.display());
    Expectation { exit, contains }
}

fn drover(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run drover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/bad exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "k"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_bad_input_is_refused_with_a_message_naming_what_is_wrong() {
    let files = corpus();
    assert!(
        files.len() >= 20,
        "the corpus has {} files; it must have at least 20",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let rel = format!(
            "tests/bad/{}",
            file.file_name().and_then(|n| n.to_str()).unwrap_or_default()
        );
        let want = expectation(file);

        let (code, _, stderr) = drover(&["validate", &rel]);
        if stderr.contains("panicked") {
            failures.push(format!("{rel}: drover panicked:\n{stderr}"));
            continue;
        }
        if code != want.exit {
            failures.push(format!(
                "{rel}: validate exited {code}, expected {}:\n{stderr}",
                want.exit
            ));
        }
        for s in &want.contains {
            if !stderr.contains(s.as_str()) {
                failures.push(format!("{rel}: validate output lacks {s:?}:\n{stderr}"));
            }
        }

        let (code, stdout, stderr) = drover(&["plan", &rel]);
        if code != want.exit || !stdout.is_empty() || stderr.contains("panicked") {
            failures.push(format!(
                "{rel}: plan exited {code} (expected {}), stdout {stdout:?}, stderr:\n{stderr}",
                want.exit
            ));
        }

        let (code, stdout, _) = drover(&["validate", "--format", "json", &rel]);
        match serde_json::from_str::<serde_json::Value>(&stdout) {
            Ok(v) => {
                let errors = v["errors"].as_array().cloned().unwrap_or_default();
                if code != want.exit || v["ok"] != false || errors.is_empty() {
                    failures.push(format!("{rel}: json verdict wrong (exit {code}): {stdout}"));
                }
                if !errors
                    .iter()
                    .all(|e| e["file"].as_str().is_some_and(|f| !f.is_empty()) && e["message"].is_string())
                {
                    failures.push(format!("{rel}: a json error lacks file or message: {stdout}"));
                }
            }
            Err(e) => failures.push(format!("{rel}: --format json is not JSON ({e}): {stdout:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs misreported:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn a_missing_file_is_invalid_input() {
    let (code, _, stderr) = drover(&["validate", "tests/bad/does-not-exist.k"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("tests/bad/does-not-exist.k") && stderr.contains("no such workflow file"),
        "{stderr}"
    );
}

#[test]
fn wrong_arguments_are_a_usage_error() {
    let (code, _, stderr) = drover(&["plan", "--format", "yaml", "x.k"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("yaml"), "{stderr}");
    let (code, _, _) = drover(&["frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn a_missing_engine_is_an_environment_error_that_says_what_to_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["validate", "../../workflows/quickstart.k"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DROVER_VENV", "/nonexistent-venv")
        .env_remove("DROVER_KCL_LIB")
        .output()
        .expect("run drover");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("kcl-lib is not installed in /nonexistent-venv") && stderr.contains("make setup"),
        "{stderr}"
    );
}
