//! Several `drover serve` instances on one PostgreSQL store.
//!
//! - **Leases.** An instance executes a run only while it holds the run's
//!   lease ([`drover_state::Store::claim_runs`]). The lease keeper (a
//!   thread of its own, so a busy runtime cannot starve it) renews every
//!   lease this instance holds each quarter of the lease's time to live.
//! - **Fencing.** A lease that was not renewed is lost: the store marks
//!   it so (nothing more is written for the run), and the run is stopped
//!   here. The watchdog does the same for every run when no renewal has
//!   succeeded for two thirds of the time to live (the database is
//!   unreachable): this instance stops before any other can take the runs
//!   over, and if it could still reach the database, the fence in each
//!   journal write would refuse it.
//! - **Requests.** Pause, resume and cancel for a run another instance
//!   executes are written to the store for it ([`ask_owner`]); each
//!   instance answers those for its runs ([`answer_requests`]), woken by
//!   LISTEN/NOTIFY and polling at least twice a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drover_state::{ActionAnswer, Notice, RunStatus};
use tokio::sync::broadcast;

use crate::error::{ApiError, blocking};
use crate::orchestrator::{Command, Orchestrator};

/// How long an instance waits for the instance executing a run to carry
/// out a command.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// How often an instance looks for runs to take up besides the notices:
/// a quarter of the lease's time to live, between 100 ms and 1 s.
pub fn claim_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Start the lease keeper, its watchdog and the answering of requests
/// (a shared store only).
pub fn start(orch: &Arc<Orchestrator>) {
    if !orch.store().is_shared() {
        return;
    }
    let epoch = Instant::now();
    let last_ok = Arc::new(AtomicU64::new(0));
    {
        let (orch, last_ok) = (orch.clone(), last_ok.clone());
        let spawned = std::thread::Builder::new()
            .name("drover-leases".into())
            .spawn(move || keep_leases(&orch, &last_ok, epoch));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the lease keeper");
        }
    }
    tokio::spawn(watchdog(orch.clone(), last_ok, epoch));
    tokio::spawn(answer_requests(orch.clone()));
}

/// Renew this instance's leases until it stops and holds none; stop the
/// runs whose lease was lost.
fn keep_leases(orch: &Orchestrator, last_ok: &AtomicU64, epoch: Instant) {
    let ttl = orch.limits().lease_ttl;
    let ttl_ms = ttl.as_millis() as i64;
    loop {
        if orch.stopping.is_cancelled() && orch.store().held().is_empty() {
            return;
        }
        let sent = epoch.elapsed();
        match orch.store().renew_leases(ttl_ms) {
            Ok(lost) => {
                last_ok.store(sent.as_millis() as u64, Ordering::Relaxed);
                for id in lost {
                    tracing::warn!(run_id = %id, "the lease on the run was lost (not renewed in time); stopping it here, another instance takes it up");
                    orch.lose(&id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the leases on this instance's runs"),
        }
        std::thread::sleep(ttl / 4);
    }
}

/// Stop every run here when no renewal succeeded for two thirds of the
/// lease's time to live: the leases may expire any moment, and another
/// instance then takes the runs over.
async fn watchdog(orch: Arc<Orchestrator>, last_ok: Arc<AtomicU64>, epoch: Instant) {
    let ttl = orch.limits().lease_ttl;
    let limit = ttl * 2 / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100).min(ttl / 10)) => {}
            _ = orch.stopping.cancelled() => {
                if orch.store().held().is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let since = epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last_ok.load(Ordering::Relaxed)));
        if since < limit {
            continue;
        }
        let held = orch.store().held();
        if held.is_empty() {
            continue;
        }
        tracing::error!(
            runs = held.len(),
            unrenewed_ms = since.as_millis() as u64,
            "the leases could not be renewed in time (is the database reachable?): stopping this instance's runs; other instances take them up"
        );
        for id in held {
            orch.lose(&id);
        }
    }
}

/// Carry out the commands other instances wrote for this instance's
/// runs.
async fn answer_requests(orch: Arc<Orchestrator>) {
    let mut notices = orch.store().subscribe();
    loop {
        let pending = {
            let store = orch.store().clone();
            tokio::task::spawn_blocking(move || store.pending_requests()).await
        };
        match pending {
            Ok(Ok(requests)) => {
                for r in requests {
                    let answer = match Command::parse(&r.action) {
                        Some(c) => match orch.command_here(&r.run_id, c) {
                            Ok(status) => ActionAnswer::Done(status.as_str().into()),
                            Err(e) => ActionAnswer::Refused(e.status.as_u16(), e.body.message.clone()),
                        },
                        None => ActionAnswer::Refused(400, format!("no command {:?}", r.action)),
                    };
                    tracing::info!(run_id = %r.run_id, action = %r.action, "carried out a command asked through another instance");
                    let store = orch.store().clone();
                    let at = drover_exec::scheduler::now_ms();
                    let answered = tokio::task::spawn_blocking(move || store.answer_request(r.id, &answer, at)).await;
                    if let Ok(Err(e)) = answered {
                        tracing::warn!(error = %e, "cannot answer a command asked through another instance");
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the commands asked of this instance"),
            Err(_) => {}
        }
        tokio::select! {
            _ = next_request(&mut notices) => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = orch.stopping.cancelled() => return,
        }
    }
}

async fn next_request(notices: &mut Option<broadcast::Receiver<Notice>>) {
    match notices.as_mut() {
        Some(rx) => loop {
            match rx.recv().await {
                Ok(Notice::Request(_)) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        },
        None => std::future::pending().await,
    }
}

/// Have the instance executing `id` carry out `command`, and answer as
/// it did.
pub(crate) async fn ask_owner(orch: &Arc<Orchestrator>, id: &str, command: Command) -> Result<RunStatus, ApiError> {
    let request = {
        let (store, id) = (orch.store().clone(), id.to_string());
        let at = drover_exec::scheduler::now_ms();
        blocking(move || Ok(store.request_action(&id, command.as_str(), at)?)).await?
    };
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    loop {
        let answer = {
            let store = orch.store().clone();
            blocking(move || Ok(store.request_answer(request)?)).await?
        };
        match answer {
            Some(ActionAnswer::Done(status)) => {
                return RunStatus::parse(&status)
                    .ok_or_else(|| ApiError::internal(format!("the executing instance answered {status:?}")));
            }
            Some(ActionAnswer::Refused(code, message)) => {
                let mut e = ApiError::conflict(message);
                if let Ok(status) = axum::http::StatusCode::from_u16(code) {
                    e.status = status;
                }
                return Err(e);
            }
            None if tokio::time::Instant::now() >= deadline => {
                return Err(ApiError::unavailable(format!(
                    "the instance executing run {id} did not carry out the {} within {} s; it may be stopping (its runs then move to another instance): try again",
                    command.as_str(),
                    ANSWER_WITHIN.as_secs()
                )));
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
