//! The HTTP API: routes, handlers, server-sent event streams and the
//! OpenAPI document (served at `/openapi.json`).
//!
//! Architecture invariant: only this crate knows HTTP. Handlers translate
//! between the wire types ([`crate::wire`]) and the orchestrator; run state
//! shown here is rebuilt from the journal.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use drover_exec::Status;
use drover_state::{AuditQuery, AuditRecord, Notice, RunRecord, RunStatus};
use futures_util::Stream;
use utoipa::OpenApi;

use crate::auth::{Auth, Caller, outcome_of, record_audit, record_refusal};
use crate::error::{ApiError, ApiJson, ApiQuery, blocking};
use crate::fleet;
use crate::logs::{StreamReader, stream_file};
use crate::orchestrator::{Orchestrator, exec_error};
use crate::schedules::endpoints as schedules;
use crate::wire::*;

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "drover orchestrator API",
        description = "Submit workflows, follow their runs (status, live events and logs as server-sent events), control them (pause, resume, cancel, retry, rollback), scrape metrics, manage API tokens and read the audit trail. Every endpoint but /healthz takes `Authorization: Bearer <token>`. A token has a role: `viewer` reads; `operator` also submits workflows as source and steers runs; `admin` also submits workflow files by path, manages tokens and reads the audit trail. A token without the role an endpoint needs gets 403, naming both roles. Submitting a workflow runs its scripts on the servers it names. Errors are JSON: {code, message}.",
        version = "1"
    ),
    paths(
        submit, list, status, logs, events, rollback, retry, pause, resume, cancel, run_metrics, metrics, healthz,
        list_tokens, create_token, revoke_token, audit, fleet::select, fleet::exec, fleet::exec_status, fleet::take_snapshot, fleet::list_snapshots,
        fleet::show_snapshot, fleet::drift, crate::notify::list,
        crate::schedules::endpoints::create, crate::schedules::endpoints::list, crate::schedules::endpoints::show,
        crate::schedules::endpoints::update, crate::schedules::endpoints::delete,
        crate::schedules::endpoints::pause, crate::schedules::endpoints::resume,
        crate::dashboard::whoami, crate::dashboard::graph
    ),
    components(schemas(
        SubmitRequest, SubmitResponse, OperationPlan, TaskRef, RunInfo, RunListItem, RunList, RunState, RunStatusView, NotUndone,
        OperationStatus, TaskStatus, LogEvent, LogStreamEvent, JournalEvent, TransitionStreamEvent, RetryRequest,
        ActionResponse, RunMetrics, OperationMetrics, ApiErrorBody, Health, RunAction, RunNotification, TokenRole, CreateTokenRequest,
        CreatedToken, TokenInfo, TokenList, AuditEntry, AuditList, FleetSelector, FleetCriterion, CriterionField,
        CriterionOp, SelectRequest, SelectResponse, FleetServer, ExecRequest, ExecRolling, ExecAccepted, ExecView,
        ExecProgress, ExecAnswer, ExecGroup, SnapshotRequest, SnapshotInfo, SnapshotTaken, Unreachable, SnapshotList,
        SnapshotView, DriftRequest, DriftChange, DriftResponse, NotificationDelivery, NotificationList,
        DeliveryState,
        ScheduleRequest, SchedulePatch, ScheduleView, ScheduleList, ScheduleSlot, ScheduledRun, ScheduledWorkflow,
        OverlapPolicy, MissedPolicy, WhoAmI, RunGraph, GraphNode, GraphEdge
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The router, with authentication and request metrics.
pub fn router(orch: Arc<Orchestrator>, auth: Auth) -> Router {
    let api = Router::new()
        .route("/workflows/batch", post(submit))
        .route("/workflows", get(list))
        .route("/workflows/{id}/status", get(status))
        .route("/workflows/{id}/logs", get(logs))
        .route("/workflows/{id}/events", get(events))
        .route("/workflows/{id}/rollback", post(rollback))
        .route("/workflows/{id}/retry", post(retry))
        .route("/workflows/{id}/pause", post(pause))
        .route("/workflows/{id}/resume", post(resume))
        .route("/workflows/{id}/cancel", post(cancel))
        .route("/workflows/{id}/metrics", get(run_metrics))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{name}", axum::routing::delete(revoke_token))
        .route("/audit", get(audit))
        .route("/fleet/select", post(fleet::select))
        .route("/fleet/exec", post(fleet::exec))
        .route("/fleet/exec/{id}", get(fleet::exec_status))
        .route(
            "/fleet/snapshots",
            get(fleet::list_snapshots).post(fleet::take_snapshot),
        )
        .route("/fleet/snapshots/{id}", get(fleet::show_snapshot))
        .route("/fleet/drift", post(fleet::drift))
        .route("/schedules", get(schedules::list).post(schedules::create))
        .route(
            "/schedules/{id}",
            get(schedules::show).patch(schedules::update).delete(schedules::delete),
        )
        .route("/schedules/{id}/pause", post(schedules::pause))
        .route("/schedules/{id}/resume", post(schedules::resume))
        .route("/notifications", get(crate::notify::list))
        .route("/whoami", get(crate::dashboard::whoami))
        .route("/workflows/{id}/graph", get(crate::dashboard::graph))
        .route("/", get(crate::dashboard::index))
        .route("/ui/{file}", get(crate::dashboard::file))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(orch.clone());
    api.layer(axum::middleware::from_fn_with_state(auth.clone(), crate::auth::check))
        .layer(axum::Extension(auth))
        .layer(axum::middleware::from_fn_with_state(orch, timing))
}

const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

/// Request durations by route, for /metrics.
async fn timing(State(orch): State<Arc<Orchestrator>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // The client picks the method, before authentication: only the
    // standard ones become label values, so no request can add series
    // without bound.
    let method = if STANDARD_METHODS.contains(req.method()) {
        req.method().as_str()
    } else {
        "other"
    }
    .to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let resp = next.run(req).await;
    orch.metrics
        .request(&method, &route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

fn info(r: &RunRecord) -> RunInfo {
    RunInfo {
        run_id: r.id.clone(),
        workflow: r.workflow.clone(),
        file: r.file.clone(),
        status: r.status.as_str().into(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
    }
}

/// A run as listed: as recorded, except a run the server holds because
/// its journal cannot be written (disk full), shown `aborted`: nothing of
/// it executes until it can be written again.
fn shown(orch: &Orchestrator, r: &RunRecord) -> RunInfo {
    let mut i = info(r);
    if orch.stalled(&r.id).is_some() {
        i.status = RunStatus::Aborted.as_str().into();
    }
    i
}

/// A task state as the API names it (`succeeded`, `running`, ...).
pub(crate) fn status_name(s: Status) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}").to_lowercase())
}

/// Submit a workflow: its source (operator role), or a file on the server
/// by its path (admin role). Its scripts will run on the servers it names.
#[utoipa::path(
    post, path = "/workflows/batch", request_body = SubmitRequest,
    responses(
        (status = 202, description = "Accepted and queued", body = SubmitResponse),
        (status = 200, description = "Validated or planned (validate_only, dry_run); nothing recorded", body = SubmitResponse),
        (status = 400, description = "The request or the workflow is wrong", body = ApiErrorBody),
        (status = 401, description = "No or wrong token", body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it (operator; admin for a path), or the path is outside the server's workflows directories", body = ApiErrorBody),
        (status = 413, description = "The body is over 2 MiB", body = ApiErrorBody),
        (status = 415, description = "Not JSON", body = ApiErrorBody),
        (status = 422, description = "The workflow's evaluation hit a limit (time, memory, stack) and was stopped", body = ApiErrorBody),
        (status = 429, description = "The queue (or the evaluators' queue) is full", body = ApiErrorBody),
        (status = 503, description = "Shutting down, or no KCL engine", body = ApiErrorBody),
        (status = 507, description = "The server's disk is full; nothing was recorded", body = ApiErrorBody),
    )
)]
async fn submit(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    // serde would also build the struct from a JSON array; only an object
    // is a submission.
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object: {\"source\": ...} or {\"path\": ...}",
        ));
    }
    // The path to a wrong field is named (`path: invalid type ...`).
    let req: SubmitRequest = serde_path_to_error::deserialize(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))?;
    let detail = match (&req.source, &req.path) {
        (Some(src), _) => format!("source ({} bytes)", src.len()),
        (None, Some(path)) => format!("path {path}"),
        (None, None) => "no workflow".to_string(),
    } + if req.validate_only {
        ", validate only"
    } else if req.dry_run {
        ", dry run"
    } else {
        ""
    };
    // A path names a file on the server: reading files there is the
    // admin's (the server confines where, too).
    let result = if req.path.is_some() && !caller.may(drover_state::Role::Admin) {
        Err(caller.forbidden(
            drover_state::Role::Admin,
            "submitting a workflow by its path on the server",
        ))
    } else {
        orch.submit(req).await
    };
    let run_id = result.as_ref().ok().and_then(|(_, r)| r.run_id.clone());
    journal_action(&orch, &caller, "submit", run_id, Some(detail), &result).await;
    let (queued, resp) = result?;
    let code = if queued { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((code, Json(resp)).into_response())
}

/// List runs, newest first.
#[utoipa::path(
    get, path = "/workflows", params(ListQuery),
    responses(
        (status = 200, body = RunList),
        (status = 400, description = "Bad filter", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
    )
)]
async fn list(
    State(orch): State<Arc<Orchestrator>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<RunList>, ApiError> {
    let want = match q.status.as_deref() {
        None => None,
        Some(s) => Some(RunStatus::ALL.into_iter().find(|x| x.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad_request(format!("unknown status {s:?}; one of {}", known.join(", ")))
        })?),
    };
    if q.limit == Some(0) {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    let store = orch.store().clone();
    let (all, submitters) = blocking(move || {
        let all = store.runs()?;
        // Who started each run: the audit trail's accepted submissions.
        let mut by = HashMap::new();
        for action in ["submit", "exec", "schedule"] {
            let q = AuditQuery {
                action: Some(action.into()),
                ..AuditQuery::default()
            };
            for a in store.audit(&q)? {
                if let (Some(run), "ok") = (a.run_id, a.outcome.as_str()) {
                    by.insert(run, a.actor);
                }
            }
        }
        Ok((all, by))
    })
    .await?;
    let queue_depth = queue_depth(&orch, &all);
    let runs: Vec<RunListItem> = all
        .iter()
        .filter(|r| want.is_none_or(|w| r.status == w))
        .take(q.limit.map_or(usize::MAX, |l| l as usize))
        .map(|r| RunListItem {
            run: shown(&orch, r),
            submitted_by: submitters.get(&r.id).cloned(),
        })
        .collect();
    Ok(Json(RunList { runs, queue_depth }))
}

/// Runs waiting: this server's queue; on a shared store, every queued run
/// (whichever instance takes it up) and those claimed here not started.
fn queue_depth(orch: &Orchestrator, all: &[RunRecord]) -> usize {
    let here = orch.counts().1;
    if orch.store().is_shared() {
        all.iter().filter(|r| r.status == RunStatus::Queued).count().max(here)
    } else {
        here
    }
}

/// Runs `f` (store reads: SQLite, the journal) on the blocking pool, off
/// the runtime's workers.
async fn summary_of(
    orch: &Orchestrator,
    id: &str,
) -> Result<(RunRecord, Arc<drover_core::Plan>, drover_exec::report::Summary), ApiError> {
    let (store, opts, id) = (orch.store().clone(), orch.options().clone(), id.to_string());
    blocking(move || drover_exec::run::status(&store, &id, &opts).map_err(exec_error)).await
}

/// A run's state: per operation and per task; who submitted it and every
/// operator action on it.
#[utoipa::path(
    get, path = "/workflows/{id}/status", params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, body = RunStatusView),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
        (status = 404, description = "No such run", body = ApiErrorBody),
    )
)]
async fn status(
    State(orch): State<Arc<Orchestrator>>,
    Path(id): Path<String>,
) -> Result<Json<RunStatusView>, ApiError> {
    let (record, plan, summary) = summary_of(&orch, &id).await?;
    let trail = {
        let (store, id) = (orch.store().clone(), id.clone());
        let q = AuditQuery {
            run_id: Some(id),
            ..AuditQuery::default()
        };
        blocking(move || Ok(store.audit(&q)?)).await?
    };
    let notifications = {
        let (store, id) = (orch.store().clone(), id.clone());
        let mut rows = blocking(move || Ok(store.deliveries(Some(&id), None, 100)?)).await?;
        rows.reverse();
        rows.into_iter()
            .map(|d| crate::wire::RunNotification {
                target: d.target,
                target_kind: d.target_kind,
                event: d.event,
                count: d.count,
                status: d.status.as_str().to_string(),
                attempts: d.attempts,
                last_error: d.last_error,
            })
            .collect()
    };
    let executed_by = if orch.store().is_shared() {
        let (store, id) = (orch.store().clone(), id.clone());
        let lease = blocking(move || Ok(store.lease(&id)?)).await?;
        lease.owner.filter(|_| lease.live)
    } else {
        None
    };
    let submitted_by = trail
        .iter()
        .rev()
        .find(|a| (a.action == "submit" || a.action == "exec" || a.action == "schedule") && a.outcome == "ok")
        .map(|a| a.actor.clone());
    let actions = trail
        .into_iter()
        .rev()
        .map(|a| RunAction {
            at_ms: a.at_ms,
            by: a.actor,
            action: a.action,
            detail: a.detail,
            outcome: a.outcome,
        })
        .collect();
    let by_task: HashMap<&str, &drover_exec::report::TaskSummary> =
        summary.tasks.iter().map(|t| (t.task.as_str(), t)).collect();
    let operations = plan
        .operations
        .iter()
        .map(|op| {
            let tasks: Vec<TaskStatus> = op
                .tasks
                .iter()
                .filter_map(|&n| plan.graph[n].task())
                .filter_map(|t| by_task.get(t.id.as_str()))
                .map(|t| TaskStatus {
                    id: t.task.clone(),
                    action: t.action.clone(),
                    server: t.server.clone(),
                    status: status_name(t.status),
                    attempts: t.attempts,
                    duration_ms: t.duration_ms,
                    error: t.error.clone(),
                    failure: t.failure.map(|k| k.as_str().to_string()),
                    rollback: t.rollback.clone(),
                })
                .collect();
            OperationStatus {
                id: op.id.clone(),
                status: operation_status(&tasks),
                tasks,
            }
        })
        .collect();
    Ok(Json(RunStatusView {
        run: shown(&orch, &record),
        reason: orch.stalled(&id).unwrap_or(summary.reason),
        operations,
        not_undone: summary
            .not_undone
            .into_iter()
            .map(|(task, reason)| NotUndone { task, reason })
            .collect(),
        submitted_by,
        actions,
        notifications,
        executed_by,
    }))
}

fn operation_status(tasks: &[TaskStatus]) -> String {
    let any = |s: &str| tasks.iter().any(|t| t.status == s);
    let all = |s: &str| !tasks.is_empty() && tasks.iter().all(|t| t.status == s);
    if any("running") || any("waiting") || any("ready") {
        "running"
    } else if any("failed") {
        "failed"
    } else if all("succeeded") {
        "succeeded"
    } else if all("skipped") {
        "skipped"
    } else if any("cancelled") {
        "cancelled"
    } else if any("succeeded") && !any("pending") {
        "succeeded"
    } else if any("succeeded") {
        "running"
    } else {
        "pending"
    }
    .into()
}

/// Whether a stream over `id` should go on waiting: the run executes or is
/// queued here.
struct Follow {
    orch: Arc<Orchestrator>,
    id: String,
    follow: bool,
    /// The store's notices (a shared store).
    notices: Option<tokio::sync::broadcast::Receiver<Notice>>,
    /// One more read after the run was found over: what it wrote last.
    last_read_done: bool,
}

impl Follow {
    /// Wait for something new. False: end the stream.
    async fn wait(&mut self, hub: &mut Option<tokio::sync::broadcast::Receiver<()>>, logs: bool) -> bool {
        if !self.follow || self.orch.stopping.is_cancelled() {
            return false;
        }
        let here = self.orch.is_active(&self.id) || self.orch.is_queued(&self.id);
        // On a shared store another instance may execute it, or take it
        // up: the store says whether it is over.
        let live = here
            || (self.orch.store().is_shared() && {
                let (store, id) = (self.orch.store().clone(), self.id.clone());
                blocking(move || Ok(store.run(&id)?.status.is_unfinished()))
                    .await
                    .unwrap_or(false)
            });
        if !live {
            if self.last_read_done {
                return false;
            }
            self.last_read_done = true;
            return true;
        }
        self.last_read_done = false;
        let mut progress = if logs { None } else { self.orch.subscribe(&self.id) };
        if logs && hub.is_none() {
            *hub = self.orch.log_hub(&self.id).map(|h| h.subscribe());
        }
        tokio::select! {
            _ = async {
                match (&mut progress, hub.as_mut()) {
                    (Some(rx), _) => { let _ = rx.recv().await; }
                    (None, Some(rx)) => {
                        if let Err(tokio::sync::broadcast::error::RecvError::Closed) = rx.recv().await {
                            *hub = None;
                        }
                    }
                    (None, None) => std::future::pending::<()>().await,
                }
            } => {}
            // Another instance's writes, told through the store.
            _ = async {
                match (here, self.notices.as_mut()) {
                    (false, Some(rx)) => loop {
                        match rx.recv().await {
                            Ok(Notice::Journal(id) | Notice::Logs(id)) if id == self.id => return,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                            Ok(_) => {}
                        }
                    },
                    _ => std::future::pending::<()>().await,
                }
            } => {}
            // A bound on the wait: covers a run that starts after the
            // stream began, and keeps the stream's cost low.
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = self.orch.stopping.cancelled() => return false,
        }
        true
    }
}

fn last_event_id(headers: &HeaderMap, q: &StreamQuery) -> Result<i64, ApiError> {
    // Checked even when the header wins: a wrong parameter is an error.
    if q.after.is_some_and(|n| n < 0) {
        return Err(ApiError::bad_request("after must be a non-negative event id"));
    }
    if let Some(v) = headers.get("last-event-id") {
        return v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a non-negative event id"));
    }
    Ok(q.after.unwrap_or(0))
}

type EventStream = Sse<
    axum::response::sse::KeepAliveStream<std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>>>,
>;

fn sse(stream: impl Stream<Item = SseEvent> + Send + 'static) -> EventStream {
    use futures_util::StreamExt;
    let boxed: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> = Box::pin(stream.map(Ok));
    Sse::new(boxed).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A run's task output as server-sent events (`event: log`, data:
/// LogEvent, id: its position).
#[utoipa::path(
    get, path = "/workflows/{id}/logs",
    params(("id" = String, Path, description = "Run id"), StreamQuery, ResumeHeader),
    responses(
        (status = 200, description = "text/event-stream of `log` events", content_type = "text/event-stream", body = LogStreamEvent),
        (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
    )
)]
async fn logs(
    State(orch): State<Arc<Orchestrator>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<EventStream, ApiError> {
    let after = last_event_id(&headers, &q)?;
    // The run's plan is built once and shared (not the whole status).
    let plan = {
        let (store, id) = (orch.store().clone(), id.clone());
        blocking(move || drover_exec::run::plan(&store, &id).map_err(exec_error)).await?
    };
    let path = stream_file(&drover_exec::run::logs_dir(&plan, orch.options(), &id));
    let source = if orch.store().is_shared() {
        LogSource::Store {
            store: orch.store().clone(),
            id: id.clone(),
            last: after,
            at_end: true,
        }
    } else {
        LogSource::File(StreamReader::new(path))
    };
    let state = (
        source,
        Follow {
            notices: orch.store().subscribe(),
            orch,
            id,
            follow: q.follow,
            last_read_done: false,
        },
        None::<tokio::sync::broadcast::Receiver<()>>,
        q.task,
        q.server,
        after,
    );
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            let (reader, follow, hub, task, server, after) = &mut st;
            let batch: Vec<SseEvent> = reader
                .read_new(1000)
                .await
                .into_iter()
                .filter(|e| e.seq > *after)
                .filter(|e| task.as_ref().is_none_or(|t| *t == e.task))
                .filter(|e| server.as_ref().is_none_or(|s| Some(s) == e.server.as_ref()))
                .map(|e| {
                    SseEvent::default()
                        .id(e.seq.to_string())
                        .event("log")
                        .json_data(&e)
                        .unwrap_or_default()
                })
                .collect();
            if !batch.is_empty() {
                return Some((futures_util::stream::iter(batch), st));
            }
            // Lines that match nothing asked for are no reason to stop:
            // the stream waits only once the file is read to its end.
            if !reader.at_end() {
                tokio::task::yield_now().await;
                continue;
            }
            if !follow.wait(hub, true).await {
                return None;
            }
        }
    });
    use futures_util::StreamExt;
    Ok(sse(stream.flatten()))
}

/// Where a run's output stream is read from: its file, or a shared
/// store's chunks.
enum LogSource {
    File(StreamReader),
    Store {
        store: Arc<drover_state::Store>,
        id: String,
        /// The last line read.
        last: i64,
        at_end: bool,
    },
}

impl LogSource {
    /// New lines, at most about `limit`.
    async fn read_new(&mut self, limit: usize) -> Vec<LogEvent> {
        match self {
            LogSource::File(r) => r.read_new(limit),
            LogSource::Store {
                store,
                id,
                last,
                at_end,
            } => {
                let (s, i, after) = (store.clone(), id.clone(), *last);
                // A chunk holds what 200 ms of output was: read about
                // `limit` lines' worth, counting 100 lines a chunk.
                let chunks_asked = (limit / 100).max(1) as i64;
                let chunks = match blocking(move || Ok(s.log_chunks_since(&i, after, chunks_asked)?)).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e.body.message, "cannot read the run's output stream");
                        Vec::new()
                    }
                };
                *at_end = (chunks.len() as i64) < chunks_asked;
                let mut out = Vec::new();
                for c in chunks {
                    for line in c.body.lines() {
                        if let Ok(ev) = serde_json::from_str::<LogEvent>(line)
                            && ev.seq > *last
                        {
                            out.push(ev);
                        }
                    }
                    *last = (*last).max(c.last_seq);
                }
                out
            }
        }
    }

    fn at_end(&self) -> bool {
        match self {
            LogSource::File(r) => r.at_end(),
            LogSource::Store { at_end, .. } => *at_end,
        }
    }
}

/// A run's journal (state transitions) as server-sent events (`event:
/// transition`, data: JournalEvent, id: its position).
#[utoipa::path(
    get, path = "/workflows/{id}/events",
    params(("id" = String, Path, description = "Run id"), StreamQuery, ResumeHeader),
    responses(
        (status = 200, description = "text/event-stream of `transition` events", content_type = "text/event-stream", body = TransitionStreamEvent),
        (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
    )
)]
async fn events(
    State(orch): State<Arc<Orchestrator>>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<EventStream, ApiError> {
    let after = last_event_id(&headers, &q)?;
    {
        let (store, id) = (orch.store().clone(), id.clone());
        blocking(move || Ok(store.run(&id)?)).await?;
    }
    let state = (
        Follow {
            notices: orch.store().subscribe(),
            orch,
            id,
            follow: q.follow,
            last_read_done: false,
        },
        after,
    );
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            let (follow, after) = &mut st;
            let entries = {
                let (store, id, from) = (follow.orch.store().clone(), follow.id.clone(), *after);
                match blocking(move || Ok(store.journal_since(&id, from, 1000)?)).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(error = %e.body.message, "cannot read the journal for a stream");
                        return None;
                    }
                }
            };
            if let Some(last) = entries.last() {
                *after = last.seq;
                let batch: Vec<SseEvent> = entries
                    .into_iter()
                    .map(|e| {
                        let data = JournalEvent {
                            seq: e.seq,
                            at_ms: e.at_ms,
                            node: e.node,
                            event: serde_json::to_value(&e.event).unwrap_or_default(),
                        };
                        SseEvent::default()
                            .id(e.seq.to_string())
                            .event("transition")
                            .json_data(&data)
                            .unwrap_or_default()
                    })
                    .collect();
                return Some((futures_util::stream::iter(batch), st));
            }
            let mut none = None;
            if !follow.wait(&mut none, false).await {
                return None;
            }
        }
    });
    use futures_util::StreamExt;
    Ok(sse(stream.flatten()))
}

fn action(id: String, action: &str, status: RunStatus) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(ActionResponse {
            run_id: id,
            action: action.into(),
            status: status.as_str().into(),
        }),
    )
        .into_response()
}

/// Roll a finished, failed or interrupted run back (operator role).
#[utoipa::path(
    post, path = "/workflows/{id}/rollback", params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 202, body = ActionResponse),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
        (status = 409, description = "The run is executing or queued", body = ApiErrorBody),
        (status = 503, body = ApiErrorBody),
    )
)]
async fn rollback(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let result = orch.rollback(&id).await;
    journal_action(&orch, &caller, "rollback", Some(id.clone()), None, &result).await;
    Ok(action(id, "rollback", result?))
}

/// Retry the failed and cancelled tasks of a finished run (or one
/// operation's). The body is optional. Operator role.
#[utoipa::path(
    post, path = "/workflows/{id}/retry", params(("id" = String, Path, description = "Run id")),
    request_body(content = Option<RetryRequest>, description = "Optionally one operation"),
    responses(
        (status = 202, body = ActionResponse),
        (status = 400, body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody),
        (status = 503, body = ApiErrorBody),
    )
)]
async fn retry(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // No body, and a JSON null (what the optional body's schema allows),
    // both mean every failed and cancelled task. Anything else must be an
    // object: serde would also take a struct from an array.
    let invalid = |e: &dyn std::fmt::Display| ApiError::bad_request(format!("the request body is not valid: {e}"));
    let req: RetryRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RetryRequest::default()
    } else {
        match serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| invalid(&e))? {
            serde_json::Value::Null => RetryRequest::default(),
            v @ serde_json::Value::Object(_) => serde_path_to_error::deserialize(v).map_err(|e| invalid(&e))?,
            _ => return Err(invalid(&"expected a JSON object, or null")),
        }
    };
    let result = orch.retry(&id, req.operation.as_deref()).await;
    let detail = req.operation.as_ref().map(|op| format!("operation {op}"));
    journal_action(&orch, &caller, "retry", Some(id.clone()), detail, &result).await;
    Ok(action(id, "retry", result?))
}

/// Pause dispatching of a running run; running tasks go on Operator role.
#[utoipa::path(
    post, path = "/workflows/{id}/pause", params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 202, body = ActionResponse),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody),
    )
)]
async fn pause(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let result = orch.command(&id, crate::orchestrator::Command::Pause).await;
    journal_action(&orch, &caller, "pause", Some(id.clone()), None, &result).await;
    Ok(action(id, "pause", result?))
}

/// Resume a paused run, or take up an interrupted one Operator role.
#[utoipa::path(
    post, path = "/workflows/{id}/resume", params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 202, body = ActionResponse),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody),
    )
)]
async fn resume(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let result = orch.command(&id, crate::orchestrator::Command::Resume).await;
    journal_action(&orch, &caller, "resume", Some(id.clone()), None, &result).await;
    Ok(action(id, "resume", result?))
}

/// Cancel a queued, running or paused run Operator role.
#[utoipa::path(
    post, path = "/workflows/{id}/cancel", params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 202, body = ActionResponse),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody),
    )
)]
async fn cancel(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let result = orch.command(&id, crate::orchestrator::Command::Cancel).await;
    journal_action(&orch, &caller, "cancel", Some(id.clone()), None, &result).await;
    Ok(action(id, "cancel", result?))
}

/// A run's counters and durations, from its journal.
#[utoipa::path(
    get, path = "/workflows/{id}/metrics", params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, body = RunMetrics),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
        (status = 404, body = ApiErrorBody),
    )
)]
async fn run_metrics(
    State(orch): State<Arc<Orchestrator>>,
    Path(id): Path<String>,
) -> Result<Json<RunMetrics>, ApiError> {
    let (record, plan, summary) = summary_of(&orch, &id).await?;
    let journal = {
        let (store, id) = (orch.store().clone(), id.clone());
        blocking(move || Ok(store.journal(&id)?)).await?
    };
    let mut attempts = 0u64;
    let mut retries = 0u64;
    let mut undone = 0u64;
    for e in &journal {
        match &e.event {
            drover_state::Event::TaskStarted { attempt, .. } => {
                attempts += 1;
                if *attempt > 1 {
                    retries += 1;
                }
            }
            drover_state::Event::UndoSucceeded { .. } => undone += 1,
            _ => {}
        }
    }
    let mut tasks: BTreeMap<String, usize> = BTreeMap::new();
    for t in &summary.tasks {
        *tasks.entry(status_name(t.status)).or_default() += 1;
    }
    let operations = plan
        .operations
        .iter()
        .map(|op| {
            let ts: Vec<&drover_exec::report::TaskSummary> =
                summary.tasks.iter().filter(|t| t.operation == op.id).collect();
            OperationMetrics {
                id: op.id.clone(),
                tasks: ts.len(),
                succeeded: ts.iter().filter(|t| t.status == Status::Succeeded).count(),
                failed: ts.iter().filter(|t| t.status == Status::Failed).count(),
                task_time_ms: ts.iter().map(|t| t.duration_ms).sum(),
                max_task_ms: ts.iter().map(|t| t.duration_ms).max().unwrap_or(0),
            }
        })
        .collect();
    let elapsed_ms = match (journal.first(), journal.last()) {
        (Some(a), Some(b)) => b.at_ms - a.at_ms,
        _ => 0,
    };
    Ok(Json(RunMetrics {
        run_id: record.id,
        status: record.status.as_str().into(),
        tasks_total: summary.tasks.len(),
        tasks,
        attempts,
        retries,
        undone,
        events: journal.len(),
        elapsed_ms,
        task_time_ms: summary.tasks.iter().map(|t| t.duration_ms).sum(),
        operations,
    }))
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(
    get, path = "/metrics",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
    )
)]
async fn metrics(State(orch): State<Arc<Orchestrator>>) -> Result<Response, ApiError> {
    let mut by_status = HashMap::new();
    let store = orch.store().clone();
    let all = blocking(move || Ok(store.runs()?)).await?;
    for r in &all {
        *by_status.entry(r.status).or_insert(0usize) += 1;
    }
    let (active, _) = orch.counts();
    let queued = queue_depth(&orch, &all);
    let text = orch.metrics.render(&by_status, queued, active);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}

/// Liveness: answers without a token.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, body = Health)))]
async fn healthz(State(orch): State<Arc<Orchestrator>>) -> Json<Health> {
    let (running, queued) = orch.counts();
    Json(Health {
        status: "ok".into(),
        running,
        queued,
    })
}

/// Record an operator action in the audit trail with how it ended; the
/// caller answers after this (the record is durable first).
async fn journal_action<T>(
    orch: &Orchestrator,
    caller: &Caller,
    action: &str,
    run_id: Option<String>,
    detail: Option<String>,
    result: &Result<T, ApiError>,
) {
    let record = AuditRecord {
        id: 0,
        at_ms: drover_exec::scheduler::now_ms(),
        actor: caller.name.to_string(),
        action: action.to_string(),
        run_id,
        detail,
        outcome: match result {
            Ok(_) => "ok".into(),
            Err(e) => outcome_of(e),
        },
    };
    record_audit(orch.store(), record).await;
}

fn token_info(t: crate::auth::TokenView) -> TokenInfo {
    TokenInfo {
        name: t.name,
        role: TokenRole::of(t.role),
        source: t.source.as_str().into(),
        created_at_ms: t.created_at_ms,
        created_by: t.created_by,
        last_used_ms: t.last_used_ms,
        revoked_at_ms: t.revoked_at_ms,
    }
}

/// Every API token: the server's own admin token, then those created
/// (revoked ones too), with role and last use; never a token or its hash.
/// Admin role.
#[utoipa::path(
    get, path = "/tokens",
    responses(
        (status = 200, body = TokenList),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "Not an admin token", body = ApiErrorBody),
    )
)]
async fn list_tokens(axum::Extension(auth): axum::Extension<Auth>) -> Result<Json<TokenList>, ApiError> {
    let tokens = blocking(move || auth.list()).await?;
    Ok(Json(TokenList {
        tokens: tokens.into_iter().map(token_info).collect(),
    }))
}

/// Create a named token with a role. The answer holds the token: the only
/// time it is shown (the server keeps its hash). Admin role.
#[utoipa::path(
    post, path = "/tokens", request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Created; the token is in the answer, shown once", body = CreatedToken),
        (status = 400, description = "The name or the role is not valid", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "Not an admin token", body = ApiErrorBody),
        (status = 409, description = "The name is taken (or was, by a revoked token), or the server runs with --no-auth", body = ApiErrorBody),
        (status = 415, description = "Not JSON", body = ApiErrorBody),
    )
)]
async fn create_token(
    State(orch): State<Arc<Orchestrator>>,
    axum::Extension(auth): axum::Extension<Auth>,
    caller: Caller,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object: {\"name\": ..., \"role\": \"viewer\"|\"operator\"|\"admin\"}",
        ));
    }
    let req: CreateTokenRequest = serde_path_to_error::deserialize(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))?;
    let audit = AuditRecord {
        id: 0,
        at_ms: drover_exec::scheduler::now_ms(),
        actor: caller.name.to_string(),
        action: "token_create".into(),
        run_id: None,
        detail: Some(format!("token {}, role {}", req.name, req.role.as_str())),
        outcome: "ok".into(),
    };
    let created = {
        let (auth, audit) = (auth.clone(), audit.clone());
        blocking(move || auth.create(&req.name, req.role.to_role(), &audit)).await
    };
    match created {
        Ok((token, record)) => Ok((
            StatusCode::CREATED,
            Json(CreatedToken {
                name: record.name,
                role: TokenRole::of(record.role),
                created_at_ms: record.created_at_ms,
                token,
            }),
        )
            .into_response()),
        Err(e) => {
            // The creation and its record are one write; a refusal is
            // recorded on its own.
            record_refusal(orch.store(), audit, &e).await;
            Err(e)
        }
    }
}

/// Revoke a token: it opens nothing from the moment this answers. Its
/// name stays taken. Admin role.
#[utoipa::path(
    delete, path = "/tokens/{name}",
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 200, description = "Revoked", body = TokenInfo),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "Not an admin token", body = ApiErrorBody),
        (status = 404, description = "No token has this name", body = ApiErrorBody),
        (status = 409, description = "Revoked already, or the server's own admin token", body = ApiErrorBody),
    )
)]
async fn revoke_token(
    State(orch): State<Arc<Orchestrator>>,
    axum::Extension(auth): axum::Extension<Auth>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let audit = AuditRecord {
        id: 0,
        at_ms: drover_exec::scheduler::now_ms(),
        actor: caller.name.to_string(),
        action: "token_revoke".into(),
        run_id: None,
        detail: Some(format!("token {name}")),
        outcome: "ok".into(),
    };
    let revoked = {
        let audit = audit.clone();
        blocking(move || auth.revoke(&name, &audit)).await
    };
    match revoked {
        Ok(t) => Ok(Json(TokenInfo {
            name: t.name,
            role: TokenRole::of(t.role),
            source: crate::auth::Source::Store.as_str().into(),
            created_at_ms: Some(t.created_at_ms),
            created_by: Some(t.created_by),
            last_used_ms: t.last_used_ms,
            revoked_at_ms: t.revoked_at_ms,
        })),
        Err(e) => {
            record_refusal(orch.store(), audit, &e).await;
            Err(e)
        }
    }
}

/// The audit trail, newest first: who did what (submissions, run
/// commands, token changes), refusals included. Admin role.
#[utoipa::path(
    get, path = "/audit", params(AuditParams),
    responses(
        (status = 200, body = AuditList),
        (status = 400, description = "Bad filter", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "Not an admin token", body = ApiErrorBody),
    )
)]
async fn audit(
    State(orch): State<Arc<Orchestrator>>,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Json<AuditList>, ApiError> {
    if q.limit == Some(0) {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    if q.since_ms.is_some_and(|t| t < 0) {
        return Err(ApiError::bad_request(
            "since_ms must be a time in ms since the Unix epoch (0 or more)",
        ));
    }
    let query = AuditQuery {
        run_id: q.run_id,
        actor: q.actor,
        action: q.action,
        since_ms: q.since_ms,
        limit: Some(q.limit.unwrap_or(1000)),
    };
    let store = orch.store().clone();
    let entries = blocking(move || Ok(store.audit(&query)?)).await?;
    Ok(Json(AuditList {
        entries: entries
            .into_iter()
            .map(|a| AuditEntry {
                id: a.id,
                at_ms: a.at_ms,
                actor: a.actor,
                action: a.action,
                run_id: a.run_id,
                detail: a.detail,
                outcome: a.outcome,
            })
            .collect(),
    }))
}
