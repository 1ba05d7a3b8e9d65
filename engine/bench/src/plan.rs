//! Planning and KCL evaluation.
//!
//! 1. Planning: a generated workflow of 1,000 servers × 10 taskservs
//!    (11,000 tasks), with KCL evaluation and validation + planning timed
//!    separately.
//! 2. The full deployment (workflows/wuji.k, with every provider and
//!    taskserv declaration of the home): KCL evaluation in-process, side
//!    by side with the obvious alternative, a Python process evaluating
//!    the same files with kcl_lib (the same engine).
//! 3. The bridge cost on a 3-server workflow: in-process against a Python
//!    subprocess per evaluation.
//!
//! Usage: drover-bench-plan [--servers N] [--runs R] [--json FILE]
//! (`--help` for the options).
//! Run it through `make bench`, which installs the engine first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use drover_bench::figures::{Better, Headline, Report, Stat, thousands};
use drover_bench::home::{TASKSERVS, generate_home};
use drover_kcl::{Home, Loader};
use serde_json::json;

/// The full deployment.
const FULL: &str = "workflows/wuji.k";

/// Planning and KCL evaluation: a generated workflow of N servers × 10
/// taskservs (KCL evaluation and validation + planning timed apart), the
/// full deployment (workflows/wuji.k) evaluated in-process against a Python
/// process with kcl_lib, and the bridge cost of one small workflow. Run it
/// from the repository root (`make bench` does).
#[derive(Debug, Parser)]
#[command(name = "drover-bench-plan", version, about, long_about)]
struct Args {
    /// Servers of the generated workflow (each with 10 taskservs).
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    servers: usize,
    /// Runs of each measurement (median, min–max).
    #[arg(long, default_value_t = 5, value_name = "R", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
    /// Write every figure to this JSON file (read by scripts/bench.py).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() -> Result<()> {
    let Args {
        servers,
        runs,
        json: json_out,
    } = Args::parse();
    let mut report = Report::new("plan", "Planning and KCL evaluation");
    report.params = json!({"servers": servers, "taskservs": TASKSERVS, "runs": runs});
    let real_home = Home::discover()?;
    let dir = tempfile::tempdir()?;
    let home = generate_home(real_home.root(), dir.path(), servers)?;
    // The engine comes from the real home's venv.
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("DROVER_VENV", real_home.root().join(".venv")) };
    let loader = Loader::new(Home::at(&home)?)?;
    let workflow = home.join("bench.k");

    // 1. Planning 11,000 tasks.
    let mut eval = Vec::new();
    let mut catalog = Vec::new();
    let mut plan = Vec::new();
    let mut tasks = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let source = loader.load_workflow(&workflow)?;
        eval.push(t.elapsed());
        let t = Instant::now();
        let cat = loader.load_catalog()?;
        catalog.push(t.elapsed());
        let t = Instant::now();
        let p = drover_core::compile(&source, &cat).map_err(|d| anyhow::anyhow!("{d:?}"))?;
        plan.push(t.elapsed());
        tasks = p.task_count();
    }
    let (eval, catalog, plan) = (Stat::ms(&eval), Stat::ms(&catalog), Stat::ms(&plan));

    // 2. The full deployment, in-process and through Python.
    let python = real_home.root().join(".venv/bin/python");
    let full = real_home.root().join(FULL);
    let real_loader = Loader::new(Home::at(real_home.root())?)?;
    let decls = declarations(real_home.root());
    let mut full_files = vec![full.clone()];
    full_files.extend(decls.iter().cloned());
    let mut full_eval = Vec::new();
    let mut full_plan = Vec::new();
    let mut full_py = Vec::new();
    let mut py_import = Vec::new();
    let mut full_tasks = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let source = real_loader.load_workflow(&full)?;
        let cat = real_loader.load_catalog()?;
        full_eval.push(t.elapsed());
        let t = Instant::now();
        let p = drover_core::compile(&source, &cat).map_err(|d| anyhow::anyhow!("{d:?}"))?;
        full_plan.push(t.elapsed());
        full_tasks = p.task_count();
        full_py.push(python_eval(&python, &real_home.schemas(), &full_files)?);
        py_import.push(python_eval(&python, &real_home.schemas(), &[])?);
    }
    let (full_eval, full_plan, full_py, py_import) = (
        Stat::ms(&full_eval),
        Stat::ms(&full_plan),
        Stat::ms(&full_py),
        Stat::ms(&py_import),
    );

    // 3. The bridge cost: one evaluation of a 3-server workflow.
    let small = home.join("small.k");
    let mut sub = Vec::new();
    let mut inproc = Vec::new();
    for _ in 0..runs {
        sub.push(python_eval(
            &python,
            &home.join("schemas"),
            std::slice::from_ref(&small),
        )?);
        let t = Instant::now();
        loader.load_workflow(&small)?;
        inproc.push(t.elapsed());
    }
    let (sub, inproc) = (Stat::ms(&sub), Stat::ms(&inproc));

    println!(
        "planning benchmark: {servers} servers × {TASKSERVS} taskservs = {tasks} tasks, {runs} runs (median, min–max)"
    );
    println!("  KCL evaluation of the workflow   {:>26} ms", eval.spread(1));
    println!("  KCL evaluation of declarations   {:>26} ms", catalog.spread(1));
    println!("  validation + planning            {:>26} ms", plan.spread(1));
    let throughput = tasks as f64 / (plan.median() / 1e3);
    println!("  planning throughput              {throughput:.0} tasks/s");
    println!(
        "full deployment, {FULL} and {} declarations ({full_tasks} tasks):",
        decls.len()
    );
    println!("  KCL evaluation, in-process        {:>26} ms", full_eval.spread(1));
    println!("  validation + planning             {:>26} ms", full_plan.spread(1));
    println!("  the same files, python + kcl_lib  {:>26} ms", full_py.spread(1));
    println!("  of which python start + import    {:>26} ms", py_import.spread(1));
    println!(
        "  ratio                             in-process is {:.1}× faster",
        full_py.median() / full_eval.median()
    );
    println!("bridge cost, a 3-server workflow:");
    println!("  in-process C API                 {:>26} ms", inproc.spread(1));
    println!("  python subprocess (kcl_lib)      {:>26} ms", sub.spread(1));
    println!(
        "  ratio                            in-process is {:.0}× faster",
        sub.median() / inproc.median()
    );

    report.headlines.push(
        Headline::new(
            "plan",
            format!("planning {} tasks (validation + DAG)", thousands(tasks)),
            "ms",
            Better::Lower,
            plan.figure(),
        )
        .target("< 1 s", plan.median() < 1000.0),
    );
    report.headlines.push(
        Headline::new(
            "kcl-full",
            format!("KCL evaluation of the full deployment ({FULL} + {} declarations)", decls.len()),
            "ms",
            Better::Lower,
            full_eval.figure(),
        )
        .peer("python + kcl_lib, same files", full_py.figure())
        .note("drover calls the engine in-process, so its figure is the engine's own evaluation time; a Python process adds its start and the kcl_lib import"),
    );
    report.results = json!({
        "tasks": tasks,
        "generated": {
            "workflow_eval": eval.json(),
            "declarations_eval": catalog.json(),
            "plan": plan.json(),
            "plan_tasks_per_s": throughput,
        },
        "full": {
            "file": FULL,
            "declarations": decls.len(),
            "tasks": full_tasks,
            "eval_inprocess": full_eval.json(),
            "plan": full_plan.json(),
            "eval_python": full_py.json(),
            "python_start_import": py_import.json(),
            "ratio": full_py.median() / full_eval.median(),
        },
        "bridge": {
            "inprocess": inproc.json(),
            "python_subprocess": sub.json(),
            "ratio": sub.median() / inproc.median(),
        },
    });
    report.write(json_out.as_deref())
}

/// Every provider and taskserv declaration of a home, as the loader finds
/// them.
fn declarations(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for kind in ["providers", "taskservs"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind)) else {
            continue;
        };
        for e in entries.flatten() {
            let decl = e.path().join("kcl/dependencies.k");
            if decl.is_file() {
                found.push(decl);
            }
        }
    }
    found.sort();
    found
}

/// One Python process evaluating `files` with kcl_lib (none: start and
/// import only); its wall time.
fn python_eval(python: &Path, schemas: &Path, files: &[PathBuf]) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(python)
        .arg("-c")
        .arg(SUBPROCESS)
        .arg(schemas)
        .args(files)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!("python subprocess failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed())
}

const SUBPROCESS: &str = "import sys, kcl_lib.api as api\n\
a = api.API()\n\
for f in sys.argv[2:]:\n    \
r = a.exec_program(api.ExecProgramArgs(k_filename_list=[f], \
external_pkgs=[api.ExternalPkg(pkg_name='drover', pkg_path=sys.argv[1])]))\n    \
assert not r.err_message, r.err_message\n    \
sys.stdout.write(r.json_result)\n";
