//! API load: N workflow submissions at once against a real `drover serve`
//! on loopback, bounded by its queue, while API latency is probed.
//!
//! Starts `drover serve` (the binary next to this one) on a fresh state
//! store with `--max-running R --max-pending P`, then:
//!
//! 1. idle: the prober's requests on the idle server, back to back (the
//!    floor of API latency: loopback HTTP and the handler, no load);
//! 2. N clients submit `workflows/examples/sequential.k` at the same time
//!    (`POST /workflows/batch {"path": ...}`); a client refused with 429
//!    waits for Retry-After (capped at 1 s here) and submits again, so
//!    every submission is eventually accepted;
//! 3. meanwhile one prober times `GET /workflows/{id}/status`,
//!    `GET /workflows` and `GET /healthz` in turn, back to back;
//! 4. it waits until every accepted run has finished, and checks that
//!    each one is in the store, succeeded: none lost, none duplicated.
//!
//! Prints submissions/s (accepted runs over the time until the last was
//! accepted), 429 refusals, the time until every run finished, p50/p99/max
//! API latency while runs execute, and the server's peak RSS. The
//! physical limit of a submission is one KCL evaluation of the workflow:
//! the server evaluates every submitted workflow in its KCL worker
//! processes (the declarations are cached), so at most (workers) / (one
//! evaluation) submissions a second get in. One evaluation is measured
//! in-process by `drover plan --timings`; drover-bench-kcl measures the
//! workers themselves.
//!
//! Usage: drover-bench-api [--runs N] [--max-running R] [--max-pending P]
//!        [--json FILE] (`--help` for the options).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use drover_bench::figures::{Better, Figure, Headline, Report, Stat, peak_rss_mib, percentile};
use drover_bench::server::{client_for, drover_binary, start};
use serde_json::{Value, json};

/// API load: N workflow submissions at once against a real `drover serve`
/// on loopback (bounded by its queue) while API latency is probed; every
/// run must finish, succeeded, none lost. Run it from the repository root
/// (`make bench` does), with the release build of drover next to it.
#[derive(Debug, Parser)]
#[command(name = "drover-bench-api", version, about, long_about)]
struct Args {
    /// Submissions made at once.
    #[arg(long, default_value_t = 200, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    runs: usize,
    /// The server's --max-running.
    #[arg(long, default_value_t = 8, value_name = "R", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    max_running: usize,
    /// The server's --max-pending.
    #[arg(long, default_value_t = 50, value_name = "P")]
    max_pending: usize,
    /// Write every figure to this JSON file (read by scripts/bench.py).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let Args {
        runs,
        max_running,
        max_pending,
        json: json_out,
    } = Args::parse();
    let root = std::env::current_dir()?;
    let workflow = root.join("workflows/examples/sequential.k");
    if !workflow.is_file() {
        bail!("run from the repository root ({} not found)", workflow.display());
    }
    let dir = tempfile::Builder::new()
        .prefix("drover-bench-api")
        .tempdir_in("/var/tmp")?;

    let mut report = Report::new("api", "Submission throughput and API latency");
    report.params = json!({"runs": runs, "max_running": max_running, "max_pending": max_pending,
        "workflow": "workflows/examples/sequential.k"});

    // The limit: one KCL evaluation of the workflow per submission, and the
    // whole `drover validate` process for comparison.
    let mut evals = Vec::new();
    let mut validates = Vec::new();
    for _ in 0..5 {
        let o = Command::new(drover_binary()?)
            .args(["plan", "--timings"])
            .arg(&workflow)
            .stdout(Stdio::null())
            .output()?;
        if !o.status.success() {
            bail!("drover plan --timings {} failed", workflow.display());
        }
        let err = String::from_utf8_lossy(&o.stderr);
        let ms = err
            .split("workflow evaluation ")
            .nth(1)
            .and_then(|r| r.split(" ms").next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("no workflow evaluation time in drover plan --timings: {err}"))?;
        evals.push(ms);
        let t = Instant::now();
        let st = Command::new(drover_binary()?)
            .arg("validate")
            .arg(&workflow)
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("drover validate {} failed", workflow.display());
        }
        validates.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let eval = Stat::new("ms", evals);
    let validate = Stat::new("ms", validates);

    let server = start(
        dir.path(),
        [
            "--max-running".to_string(),
            max_running.to_string(),
            "--max-pending".to_string(),
            max_pending.to_string(),
        ],
    )?;
    let pid = server.child.id();
    // The server asks for a token on loopback too.
    let client = client_for(dir.path())?;
    let url = Arc::new(server.url.clone());
    println!(
        "API load: {runs} submissions at once of {} to drover serve --max-running {max_running} --max-pending {max_pending} ({})",
        workflow.strip_prefix(&root).unwrap_or(&workflow).display(),
        server.url
    );

    // Idle: the prober's requests with nothing else going on.
    let mut idle = Vec::new();
    for i in 0..90 {
        let path = ["/workflows?limit=20", "/healthz", "/workflows?limit=20"][i % 3];
        let t = Instant::now();
        let r = client.get(format!("{url}{path}")).send().await?;
        if !r.status().is_success() {
            bail!("GET {path} answered {}", r.status());
        }
        r.bytes().await?;
        idle.push(t.elapsed().as_secs_f64() * 1e3);
    }
    idle.sort_by(f64::total_cmp);

    let started = Instant::now();
    let mut submitters = Vec::new();
    for _ in 0..runs {
        let (client, url, path) = (client.clone(), url.clone(), workflow.display().to_string());
        submitters.push(tokio::spawn(async move {
            let mut refused = 0u32;
            loop {
                let t = Instant::now();
                let r = client
                    .post(format!("{url}/workflows/batch"))
                    .json(&json!({ "path": path }))
                    .send()
                    .await?;
                let latency = t.elapsed().as_secs_f64();
                match r.status().as_u16() {
                    202 => {
                        let v: Value = r.json().await?;
                        let id = v["run_id"].as_str().context("no run_id")?.to_string();
                        return anyhow::Ok((id, refused, latency, Instant::now()));
                    }
                    429 => {
                        refused += 1;
                        let wait = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(1)
                            .min(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    s => bail!("submission answered {s}: {}", r.text().await.unwrap_or_default()),
                }
            }
        }));
    }

    // The prober: API latency while runs execute.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (client, url, done) = (client.clone(), url.clone(), done.clone());
        tokio::spawn(async move {
            let mut lat: Vec<(&'static str, f64)> = Vec::new();
            let mut some_id: Option<String> = None;
            let mut i = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (name, path) = match (i % 3, &some_id) {
                    (0, Some(id)) => ("status", format!("/workflows/{id}/status")),
                    (1, _) | (0, None) => ("list", "/workflows?limit=20".to_string()),
                    _ => ("healthz", "/healthz".to_string()),
                };
                i += 1;
                let t = Instant::now();
                let r = client.get(format!("{url}{path}")).send().await;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if let Ok(r) = r
                    && r.status().is_success()
                {
                    if name == "list"
                        && let Ok(v) = r.json::<Value>().await
                        && let Some(id) = v["runs"][0]["run_id"].as_str()
                    {
                        some_id = Some(id.to_string());
                    }
                    lat.push((name, ms));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            lat
        })
    };

    let mut ids = BTreeSet::new();
    let mut refused = 0u32;
    let mut submit_lat = Vec::new();
    let mut last_accept = started;
    for s in submitters {
        let (id, r, l, at) = s.await??;
        if !ids.insert(id.clone()) {
            bail!("run id {id} was handed out twice");
        }
        refused += r;
        submit_lat.push(l * 1e3);
        last_accept = last_accept.max(at);
    }
    let accept_s = last_accept.duration_since(started).as_secs_f64();

    // Wait for every run to finish.
    let deadline = Instant::now() + Duration::from_secs(1800);
    let finished = loop {
        let v: Value = client.get(format!("{url}/workflows")).send().await?.json().await?;
        let listed = v["runs"].as_array().cloned().unwrap_or_default();
        let unfinished = listed
            .iter()
            .filter(|r| matches!(r["status"].as_str(), Some("queued" | "running" | "paused")))
            .count();
        if unfinished == 0 {
            break listed;
        }
        if Instant::now() > deadline {
            bail!("{unfinished} runs still unfinished after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let all_s = started.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let lat = prober.await?;
    let rss = peak_rss_mib(Some(pid));

    // None lost, none duplicated, every one succeeded.
    let stored: BTreeSet<String> = finished
        .iter()
        .filter_map(|r| r["run_id"].as_str().map(str::to_string))
        .collect();
    if stored != ids {
        bail!(
            "the store has {} runs, {} were accepted; missing: {:?}",
            stored.len(),
            ids.len(),
            ids.difference(&stored).take(5).collect::<Vec<_>>()
        );
    }
    let failed: Vec<&Value> = finished.iter().filter(|r| r["status"] != "succeeded").collect();
    if !failed.is_empty() {
        bail!("{} runs did not succeed, e.g. {}", failed.len(), failed[0]);
    }

    let mut all: Vec<f64> = lat.iter().map(|(_, ms)| *ms).collect();
    all.sort_by(f64::total_cmp);
    submit_lat.sort_by(f64::total_cmp);
    let by = |name: &str| {
        let mut v: Vec<f64> = lat.iter().filter(|(n, _)| *n == name).map(|(_, ms)| *ms).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let rate = ids.len() as f64 / accept_s;
    println!(
        "  accepted {} runs in {accept_s:.1} s: {rate:.1} submissions/s ({refused} refusals with 429 along the way)",
        ids.len()
    );
    println!("  every run finished (succeeded, none lost) {all_s:.1} s after the first submission");
    println!(
        "  submission latency, ms: p50 {:.0}, p99 {:.0}, max {:.0}",
        percentile(&submit_lat, 0.5),
        percentile(&submit_lat, 0.99),
        percentile(&submit_lat, 1.0)
    );
    println!(
        "  API latency while runs execute ({} requests), ms: p50 {:.1}, p99 {:.1}, max {:.1}",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    for name in ["status", "list", "healthz"] {
        let v = by(name);
        println!(
            "    {name:<8} n={:<5} p50 {:.1}, p99 {:.1}",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99)
        );
    }
    println!("  server peak RSS {rss:.1} MiB");
    println!(
        "  idle server, same requests ({}), ms: p50 {:.1}, p99 {:.1}",
        idle.len(),
        percentile(&idle, 0.5),
        percentile(&idle, 0.99)
    );
    let limit = 1e3 / eval.median();
    println!(
        "  limit: one KCL evaluation per submission, {} ms in-process (drover plan --timings), one at a time -> at most {limit:.1} submissions/s; `drover validate`, the whole process: {} ms",
        eval.spread(1),
        validate.spread(0),
    );
    report.headlines.push(
        Headline::new(
            "api-submit",
            format!(
                "API: {} submissions at once, accepted per second (queue: {max_running} running + {max_pending} pending)",
                ids.len()
            ),
            "submissions/s",
            Better::Higher,
            Figure::single(rate),
        )
        .limit("one in-process KCL evaluation of the workflow per submission, one at a time", Figure::single(limit)),
    );
    let p = |v: &[f64], q| percentile(v, q);
    report.headlines.push(
        Headline::new(
            "api-latency",
            format!("API latency under that load, p99 of {} requests", all.len()),
            "ms",
            Better::Lower,
            Figure::single(p(&all, 0.99)),
        )
        .limit(
            format!("the same requests on the idle server, p99 of {}", idle.len()),
            Figure::single(p(&idle, 0.99)),
        )
        .note(format!(
            "API latency under load: p50 {:.1} ms (idle {:.1} ms)",
            p(&all, 0.5),
            p(&idle, 0.5)
        )),
    );
    let lat_json = |v: &[f64]| json!({"n": v.len(), "p50": p(v, 0.5), "p99": p(v, 0.99), "max": p(v, 1.0)});
    report.results = json!({
        "runs": ids.len(),
        "max_running": max_running,
        "max_pending": max_pending,
        "accept_s": accept_s,
        "submissions_per_s": rate,
        "refusals_429": refused,
        "all_finished_s": all_s,
        "runs_per_s": ids.len() as f64 / all_s,
        "submit_latency_ms": lat_json(&submit_lat),
        "api_latency_ms": lat_json(&all),
        "api_latency_by_request_ms": {
            "status": lat_json(&by("status")),
            "list": lat_json(&by("list")),
            "healthz": lat_json(&by("healthz")),
        },
        "idle_latency_ms": lat_json(&idle),
        "server_peak_rss_mib": rss,
        "workflow_eval_ms": eval.json(),
        "validate_ms": validate.json(),
        "limit_submissions_per_s": limit,
    });
    drop(server);
    report.write(json_out.as_deref())
}
