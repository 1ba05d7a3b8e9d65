//! KCL evaluation throughput: how many workflows a second `drover serve`
//! evaluates now that submitted workflows go to KCL worker processes,
//! against the one in-process engine it used before, in the same run.
//!
//! 1. In-process: one `Loader` (the engine behind its one lock), the
//!    declarations evaluated once (the server caches them), then for
//!    `--seconds`: evaluate `workflows/examples/sequential.k` and plan it,
//!    one after the other: what a server did per `validate_only`
//!    submission before the workers, without HTTP.
//! 2. `drover serve --kcl-workers W` for W = 1 and W = `--workers`
//!    (default: the number of CPUs): `--clients` clients send
//!    `POST /workflows/batch {"path": ..., "validate_only": true}` back to
//!    back for `--seconds`; every answer must be 200. Submissions/s is the
//!    answers over the time.
//!
//! Each worker evaluates one workflow at a time with an engine of its own,
//! so W workers can use W cores; the in-process engine uses one whatever
//! the cores. The limit shown is W × the in-process rate.
//!
//! Usage: drover-bench-kcl [--seconds S] [--workers N] [--clients C]
//!        [--json FILE] (`--help` for the options). Run it from the
//!        repository root, with the drover binary of the same build next
//!        to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use drover_bench::figures::{Better, Figure, Headline, Report, Stat, peak_rss_mib, percentile};
use drover_bench::server::{client_for, start};
use serde_json::json;

/// KCL evaluation throughput: validate_only submissions/s against a real
/// `drover serve` with one KCL worker and with N, and in-process
/// evaluations/s with one engine, in the same run.
#[derive(Debug, Parser)]
#[command(name = "drover-bench-kcl", version, about, long_about)]
struct Args {
    /// Seconds each of the three measurements lasts.
    #[arg(long, default_value_t = 10, value_name = "S", value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    seconds: u64,
    /// The pool measured against one worker (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    workers: Option<usize>,
    /// Clients submitting at once (default: 4 × workers).
    #[arg(long, value_name = "C", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    clients: Option<usize>,
    /// Write every figure to this JSON file (read by scripts/bench.py).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// What one server configuration did.
struct Served {
    per_s: f64,
    answered: usize,
    latency_ms: Vec<f64>,
    server_rss_mib: f64,
}

async fn measure_server(workflow: &Path, workers: usize, clients: usize, seconds: u64) -> Result<Served> {
    let dir = tempfile::Builder::new()
        .prefix("drover-bench-kcl")
        .tempdir_in("/var/tmp")?;
    let root = workflow.parent().context("the workflow's directory")?;
    let server = start(
        dir.path(),
        [
            "--workflows-dir".as_ref(),
            root.as_os_str(),
            "--kcl-workers".as_ref(),
            workers.to_string().as_ref(),
            // Every client's request may wait for a worker.
            "--max-pending".as_ref(),
            "10000".as_ref(),
        ],
    )?;
    let client = client_for(dir.path())?;
    let url = Arc::new(server.url.clone());
    let body = json!({"path": workflow, "validate_only": true});
    // Every worker has evaluated once before the clock starts.
    for _ in 0..workers * 2 {
        let r = client.post(format!("{url}/workflows/batch")).json(&body).send().await?;
        if r.status() != 200 {
            bail!(
                "warm-up submission answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let t = Instant::now();
                let r = client.post(format!("{url}/workflows/batch")).json(&body).send().await?;
                let status = r.status();
                let text = r.text().await?;
                if status != 200 {
                    bail!("validate_only answered {status}: {text}");
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut latency_ms = Vec::new();
    for t in tasks {
        latency_ms.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latency_ms.sort_by(f64::total_cmp);
    let server_rss_mib = peak_rss_mib(Some(server.child.id()));
    Ok(Served {
        per_s: latency_ms.len() as f64 / elapsed,
        answered: latency_ms.len(),
        latency_ms,
        server_rss_mib,
    })
}

/// Evaluations/s of the in-process engine, and each one's time.
fn measure_in_process(workflow: &Path, seconds: u64) -> Result<(f64, Vec<f64>)> {
    let loader = drover_kcl::Loader::discover().map_err(|e| anyhow::anyhow!("{e}"))?;
    let catalog = loader.load_catalog().map_err(|e| anyhow::anyhow!("{e}"))?;
    let each = |lat: &mut Vec<f64>| -> Result<()> {
        let t = Instant::now();
        let source = loader.load_workflow(workflow).map_err(|e| anyhow::anyhow!("{e}"))?;
        drover_core::compile(&source, &catalog)
            .map_err(|d| anyhow::anyhow!("{} does not plan: {} problem(s)", workflow.display(), d.len()))?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        Ok(())
    };
    let mut warm = Vec::new();
    each(&mut warm)?;
    let mut lat = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        each(&mut lat)?;
    }
    Ok((lat.len() as f64 / started.elapsed().as_secs_f64(), lat))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = args.workers.unwrap_or(cpus);
    let clients = args.clients.unwrap_or(4 * workers);
    let root = std::env::current_dir()?;
    let workflow = root.join("workflows/examples/sequential.k");
    if !workflow.is_file() {
        bail!("run from the repository root ({} not found)", workflow.display());
    }
    let mut report = Report::new("kcl", "KCL evaluation: worker processes against the in-process engine");
    report.params = json!({"seconds": args.seconds, "workers": workers, "clients": clients, "cpus": cpus,
        "workflow": "workflows/examples/sequential.k"});
    println!(
        "KCL evaluation of workflows/examples/sequential.k: in-process, then drover serve with 1 and {workers} KCL workers ({clients} clients, {} s each)",
        args.seconds
    );

    let (in_process, eval_ms) = {
        let (w, s) = (workflow.clone(), args.seconds);
        tokio::task::spawn_blocking(move || measure_in_process(&w, s)).await??
    };
    let eval = Stat::new("ms", eval_ms);
    println!(
        "  in-process, one engine: {in_process:.1} evaluations/s (evaluate + plan, {} ms each)",
        eval.spread(1)
    );
    let one = measure_server(&workflow, 1, clients, args.seconds).await?;
    let many = measure_server(&workflow, workers, clients, args.seconds).await?;
    for (w, s) in [(1, &one), (workers, &many)] {
        println!(
            "  drover serve --kcl-workers {w}: {:.1} validate_only submissions/s ({} answered; latency p50 {:.1} ms, p99 {:.1} ms; server peak RSS {:.1} MiB)",
            s.per_s,
            s.answered,
            percentile(&s.latency_ms, 0.5),
            percentile(&s.latency_ms, 0.99),
            s.server_rss_mib
        );
    }
    let limit = in_process * workers as f64;
    report.headlines.push(
        Headline::new(
            "kcl-workers",
            format!("drover serve, validate_only submissions with {workers} KCL workers, per second"),
            "submissions/s",
            Better::Higher,
            Figure::single(many.per_s),
        )
        .peer("the same server with 1 KCL worker", Figure::single(one.per_s))
        .peer(
            "one in-process engine (the server before the workers), evaluate + plan",
            Figure::single(in_process),
        )
        .limit(
            format!("{workers} × the in-process rate (one engine per core)"),
            Figure::single(limit),
        )
        .note(format!(
            "{workers} KCL workers on {cpus} CPUs, {clients} clients; in-process evaluation {} ms",
            eval.spread(1)
        )),
    );
    let lat = |v: &[f64]| json!({"n": v.len(), "p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "max": percentile(v, 1.0)});
    report.results = json!({
        "workers": workers,
        "clients": clients,
        "cpus": cpus,
        "in_process_per_s": in_process,
        "in_process_eval_ms": eval.json(),
        "one_worker": {"per_s": one.per_s, "answered": one.answered, "latency_ms": lat(&one.latency_ms), "server_peak_rss_mib": one.server_rss_mib},
        "pool": {"per_s": many.per_s, "answered": many.answered, "latency_ms": lat(&many.latency_ms), "server_peak_rss_mib": many.server_rss_mib},
        "limit_per_s": limit,
    });
    report.write(args.json.as_deref())
}
