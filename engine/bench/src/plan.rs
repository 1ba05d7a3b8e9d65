//! Planning benchmark: a generated workflow of 1,000 servers × 10
//! taskservs (11,000 tasks), with KCL evaluation and planning timed
//! separately, and the in-process KCL bridge compared with the obvious
//! alternative, a Python subprocess calling the same engine.
//!
//! Usage: drover-bench-plan [--servers N] [--runs R]
//! Run it through `make bench`, which installs the engine first.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drover_kcl::{Home, Loader};

mod home;
use home::{TASKSERVS, generate_home};

fn main() -> Result<()> {
    let mut servers = 1000usize;
    let mut runs = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--servers" => servers = args.next().context("--servers N")?.parse()?,
            "--runs" => runs = args.next().context("--runs R")?.parse()?,
            other => bail!("unknown argument {other}; usage: drover-bench-plan [--servers N] [--runs R]"),
        }
    }
    let real_home = Home::discover()?;
    let dir = tempfile::tempdir()?;
    let home = generate_home(real_home.root(), dir.path(), servers)?;
    // The engine comes from the real home's venv.
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("DROVER_VENV", real_home.root().join(".venv")) };
    let loader = Loader::new(Home::at(&home)?)?;
    let workflow = home.join("bench.k");

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

    // The same evaluation through a Python subprocess (interpreter start,
    // module import, evaluation), to show what in-process saves.
    let python = real_home.root().join(".venv/bin/python");
    let small = home.join("small.k");
    let mut sub = Vec::new();
    let mut inproc = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = Command::new(&python)
            .arg("-c")
            .arg(SUBPROCESS)
            .arg(&small)
            .arg(home.join("schemas"))
            .output()?;
        if !out.status.success() {
            bail!("python subprocess failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        sub.push(t.elapsed());
        let t = Instant::now();
        loader.load_workflow(&small)?;
        inproc.push(t.elapsed());
    }

    println!(
        "planning benchmark: {servers} servers × {TASKSERVS} taskservs = {tasks} tasks, {runs} runs (median, min–max)"
    );
    println!("  KCL evaluation of the workflow   {}", stats(&eval));
    println!("  KCL evaluation of declarations   {}", stats(&catalog));
    println!("  validation + planning            {}", stats(&plan));
    println!(
        "  planning throughput              {:.0} tasks/s",
        tasks as f64 / median(&plan).as_secs_f64()
    );
    println!("bridge cost, a 3-server workflow:");
    println!("  in-process C API                 {}", stats(&inproc));
    println!("  python subprocess (kcl_lib)      {}", stats(&sub));
    println!(
        "  ratio                            in-process is {:.0}× faster",
        median(&sub).as_secs_f64() / median(&inproc).as_secs_f64()
    );
    Ok(())
}

const SUBPROCESS: &str = "import sys, kcl_lib.api as api\n\
r = api.API().exec_program(api.ExecProgramArgs(k_filename_list=[sys.argv[1]], \
external_pkgs=[api.ExternalPkg(pkg_name='drover', pkg_path=sys.argv[2])]))\n\
assert not r.err_message, r.err_message\n\
sys.stdout.write(r.json_result)\n";

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn stats(v: &[Duration]) -> String {
    let mut s = v.to_vec();
    s.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!("{:>9.1} ms  ({:.1}–{:.1})", ms(median(v)), ms(s[0]), ms(s[s.len() - 1]))
}
