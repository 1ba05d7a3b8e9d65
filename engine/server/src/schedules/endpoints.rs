//! `/schedules`: create, list, show, change, pause, resume and delete
//! schedules. Viewers read them; operators manage them; a schedule of a
//! file by its path on the server is an admin's to create, as a path
//! submission is. Every change is in the audit trail.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use drover_state::{AuditRecord, Role, ScheduleRecord, Store};

use super::{Target, settings_of, timing};
use crate::auth::{Caller, outcome_of, record_audit};
use crate::error::{ApiError, ApiJson, blocking};
use crate::orchestrator::Orchestrator;
use crate::wire::{
    ApiErrorBody, MissedPolicy, OverlapPolicy, ScheduleList, SchedulePatch, ScheduleRequest, ScheduleSlot,
    ScheduleView, ScheduledRun, SubmitRequest,
};

/// Record an action on a schedule in the audit trail with how it ended.
async fn audit<T>(orch: &Orchestrator, caller: &Caller, action: &str, detail: String, result: &Result<T, ApiError>) {
    let record = AuditRecord {
        id: 0,
        at_ms: drover_exec::scheduler::now_ms(),
        actor: caller.name.to_string(),
        action: action.to_string(),
        run_id: None,
        detail: Some(detail),
        outcome: match result {
            Ok(_) => "ok".into(),
            Err(e) => outcome_of(e),
        },
    };
    record_audit(orch.store(), record).await;
}

/// A request body as `T`, with the path to a wrong field named.
fn body_of<T: serde::de::DeserializeOwned>(body: serde_json::Value, shape: &str) -> Result<T, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be a JSON object: {shape}"
        )));
    }
    serde_path_to_error::deserialize(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

/// What a target is, in a few words.
fn describe(target: &Target) -> (&'static str, String) {
    let file = |source: &Option<String>, path: &Option<String>| match (source, path) {
        (_, Some(p)) => format!("path {p}"),
        (Some(s), None) => format!("source ({} bytes)", s.len()),
        (None, None) => "no file".into(),
    };
    match target {
        Target::Workflow(w) => ("workflow", file(&w.source, &w.path)),
        Target::Exec(e) => (
            "exec",
            format!("command {:?} on {}", e.command, file(&e.source, &e.path)),
        ),
    }
}

/// The view of `s` with its last run and at most `slots` of its latest
/// slots.
fn view_of(store: &Store, s: &ScheduleRecord, slots: i64, now_ms: i64) -> Result<ScheduleView, ApiError> {
    let target: Target = serde_json::from_value(s.target.clone()).map_err(ApiError::internal)?;
    let (kind, what) = describe(&target);
    let (timing, overlap, missed) = settings_of(s).map_err(ApiError::internal)?;
    let tz = timing.tz();
    let last = store.last_fired(&s.id)?;
    let last_status = match last.as_ref().and_then(|l| l.run_id.as_deref()) {
        Some(run) => match store.run(run) {
            Ok(r) => Some(r.status.as_str().to_string()),
            // Removed by retention.
            Err(drover_state::StateError::UnknownRun(_)) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let next = if s.paused {
        None
    } else {
        let last_slot = store.slots(&s.id, 1)?.first().map(|r| r.slot_ms);
        let after = last_slot.map_or(s.since_ms, |l| l.max(s.since_ms)).max(now_ms);
        timing.next_after(after)
    };
    Ok(ScheduleView {
        id: s.id.clone(),
        kind: kind.into(),
        target: what,
        cron: s.cron.clone(),
        timezone: s.timezone.clone(),
        overlap: match overlap {
            timing::Overlap::Skip => OverlapPolicy::Skip,
            timing::Overlap::Queue => OverlapPolicy::Queue,
        },
        missed: match missed {
            timing::Missed::Skip => MissedPolicy::Skip,
            timing::Missed::RunOnce => MissedPolicy::RunOnce,
        },
        paused: s.paused,
        created_at_ms: s.created_at_ms,
        created_by: s.created_by.clone(),
        next_run_ms: next,
        next_run: next.map(|n| timing::show(n, tz)),
        last_run: last.as_ref().and_then(|l| {
            l.run_id.as_ref().map(|run_id| ScheduledRun {
                run_id: run_id.clone(),
                slot_ms: l.slot_ms,
                slot: timing::show(l.slot_ms, tz),
            })
        }),
        last_status,
        slots: store
            .slots(&s.id, slots)?
            .into_iter()
            .map(|r| ScheduleSlot {
                slot_ms: r.slot_ms,
                slot: timing::show(r.slot_ms, tz),
                outcome: r.outcome,
                run_id: r.run_id,
                count: r.count,
                detail: r.detail,
                at_ms: r.at_ms,
            })
            .collect(),
    })
}

async fn view(orch: &Orchestrator, s: ScheduleRecord, slots: i64) -> Result<ScheduleView, ApiError> {
    let store = orch.store().clone();
    blocking(move || view_of(&store, &s, slots, drover_exec::scheduler::now_ms())).await
}

/// A new schedule id: time-ordered and unique, as run ids are.
fn new_id() -> String {
    format!("sch-{}", drover_exec::run::new_run_id())
}

/// Create a schedule: a workflow (its source, or a path on the server:
/// admin role) or an exec, started on the slots of a cron expression in a
/// time zone. The workflow (or the exec's file and selector) is checked
/// now. Operator role (admin for a path).
#[utoipa::path(
    post, path = "/schedules", request_body = ScheduleRequest,
    responses(
        (status = 201, description = "Created", body = ScheduleView),
        (status = 400, description = "The request, the cron expression, the time zone, the workflow or the exec is wrong (each problem listed)", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it (operator; admin for a path), or the path is outside the server's workflows directories", body = ApiErrorBody),
        (status = 415, description = "Not JSON", body = ApiErrorBody),
        (status = 422, description = "The file's evaluation hit a limit (time, memory, stack)", body = ApiErrorBody),
        (status = 429, description = "The evaluators' queue is full", body = ApiErrorBody),
        (status = 503, description = "Shutting down, or no KCL engine", body = ApiErrorBody),
        (status = 507, description = "The server's disk is full; nothing was recorded", body = ApiErrorBody),
    )
)]
pub async fn create(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let req: ScheduleRequest = body_of(body, "{\"workflow\": {\"source\": ...}, \"cron\": \"*/5 * * * *\"}")?;
    let id = new_id();
    let target = match (req.workflow.clone(), req.exec.clone()) {
        (Some(w), None) => Target::Workflow(w),
        (None, Some(e)) => Target::Exec(e),
        _ => {
            return Err(ApiError::bad_request(
                "give what the schedule starts: workflow ({\"source\": ...} or {\"path\": ...}) or exec (as POST /fleet/exec takes it), one of them",
            ));
        }
    };
    let (_, what) = describe(&target);
    let detail = format!("schedule {id}: {what} on {:?} ({})", req.cron, req.timezone);
    let result = async {
        let path = match &target {
            Target::Workflow(w) => w.path.as_deref(),
            Target::Exec(e) => e.path.as_deref(),
        };
        if path.is_some() && !caller.may(Role::Admin) {
            return Err(caller.forbidden(Role::Admin, "a schedule of a file by its path on the server"));
        }
        timing::Timing::parse(&req.cron, &req.timezone).map_err(ApiError::bad_request)?;
        // Checked now: a wrong workflow or selector is the creator's to
        // hear about, not a failed slot's.
        match &target {
            Target::Workflow(w) => {
                let check = SubmitRequest {
                    source: w.source.clone(),
                    path: w.path.clone(),
                    validate_only: true,
                    dry_run: false,
                };
                orch.submit(check).await?;
            }
            Target::Exec(e) => {
                let spec = crate::fleet::spec_of(e)?;
                orch.fleet_select(e.source.as_deref(), e.path.as_deref(), &spec.selector)
                    .await?;
            }
        }
        let now = drover_exec::scheduler::now_ms();
        let record = ScheduleRecord {
            id: id.clone(),
            target: serde_json::to_value(&target).map_err(ApiError::internal)?,
            cron: req.cron.trim().to_string(),
            timezone: req.timezone.trim().to_string(),
            overlap: req.overlap.as_str().into(),
            missed: req.missed.as_str().into(),
            paused: req.paused,
            created_at_ms: now,
            updated_at_ms: now,
            since_ms: now,
            created_by: caller.name.to_string(),
        };
        let store = orch.store().clone();
        let saved = record.clone();
        blocking(move || Ok(store.create_schedule(&saved)?)).await?;
        orch.schedules_changed.notify_one();
        view(&orch, record, 100).await
    }
    .await;
    audit(&orch, &caller, "schedule_create", detail, &result).await;
    Ok((StatusCode::CREATED, Json(result?)))
}

/// Every schedule, oldest first, each with its last run, that run's
/// status, its next slot and its latest 10 slots. Viewer role.
#[utoipa::path(
    get, path = "/schedules",
    responses(
        (status = 200, body = ScheduleList),
        (status = 401, body = ApiErrorBody),
    )
)]
pub async fn list(State(orch): State<Arc<Orchestrator>>) -> Result<Json<ScheduleList>, ApiError> {
    let store = orch.store().clone();
    let schedules = blocking(move || {
        let now = drover_exec::scheduler::now_ms();
        store
            .schedules()?
            .iter()
            .map(|s| view_of(&store, s, 10, now))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(Json(ScheduleList { schedules }))
}

/// One schedule, with its latest 100 slots (fired, skipped, missed,
/// failed). Viewer role.
#[utoipa::path(
    get, path = "/schedules/{id}",
    params(("id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 200, body = ScheduleView),
        (status = 401, body = ApiErrorBody),
        (status = 404, description = "No such schedule", body = ApiErrorBody),
    )
)]
pub async fn show(
    State(orch): State<Arc<Orchestrator>>,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let store = orch.store().clone();
    let s = blocking(move || Ok(store.schedule(&id)?)).await?;
    Ok(Json(view(&orch, s, 100).await?))
}

/// Apply `patch` to schedule `id`; the audit trail says who did what.
async fn change(
    orch: &Arc<Orchestrator>,
    caller: &Caller,
    id: String,
    action: &str,
    patch: SchedulePatch,
) -> Result<Json<ScheduleView>, ApiError> {
    let detail = format!(
        "schedule {id}: {}",
        serde_json::to_string(&patch).unwrap_or_else(|_| "a change".into())
    );
    let result = async {
        let store = orch.store().clone();
        let sid = id.clone();
        let mut s = blocking(move || Ok(store.schedule(&sid)?)).await?;
        let now = drover_exec::scheduler::now_ms();
        let mut timing_changed = false;
        if let Some(cron) = &patch.cron {
            timing_changed |= cron.trim() != s.cron;
            s.cron = cron.trim().to_string();
        }
        if let Some(tz) = &patch.timezone {
            timing_changed |= tz.trim() != s.timezone;
            s.timezone = tz.trim().to_string();
        }
        timing::Timing::parse(&s.cron, &s.timezone).map_err(ApiError::bad_request)?;
        if let Some(o) = patch.overlap {
            s.overlap = o.as_str().into();
        }
        if let Some(m) = patch.missed {
            s.missed = m.as_str().into();
        }
        let resumed = s.paused && patch.paused == Some(false);
        if let Some(p) = patch.paused {
            s.paused = p;
        }
        // Slots before a resume or a new timing are not the schedule's:
        // neither run nor counted as missed.
        if resumed || timing_changed {
            s.since_ms = now;
        }
        s.updated_at_ms = now;
        let store = orch.store().clone();
        let saved = s.clone();
        blocking(move || Ok(store.update_schedule(&saved)?)).await?;
        orch.schedules_changed.notify_one();
        view(orch, s, 100).await
    }
    .await;
    audit(orch, caller, action, detail, &result).await;
    Ok(Json(result?))
}

/// Change a schedule's cron expression, time zone, policies or pause.
/// Only what is given changes. Operator role.
#[utoipa::path(
    patch, path = "/schedules/{id}", request_body = SchedulePatch,
    params(("id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 200, body = ScheduleView),
        (status = 400, description = "The request, the cron expression or the time zone is wrong", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it (operator)", body = ApiErrorBody),
        (status = 404, description = "No such schedule", body = ApiErrorBody),
        (status = 415, description = "Not JSON", body = ApiErrorBody),
    )
)]
pub async fn update(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<ScheduleView>, ApiError> {
    let patch: SchedulePatch = body_of(body, "{\"cron\": ..., \"timezone\": ..., \"paused\": ...}")?;
    change(&orch, &caller, id, "schedule_update", patch).await
}

/// Pause a schedule: no slot fires until it is resumed. Operator role.
#[utoipa::path(
    post, path = "/schedules/{id}/pause",
    params(("id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 200, body = ScheduleView),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it (operator)", body = ApiErrorBody),
        (status = 404, description = "No such schedule", body = ApiErrorBody),
    )
)]
pub async fn pause(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let patch = SchedulePatch {
        paused: Some(true),
        ..SchedulePatch::default()
    };
    change(&orch, &caller, id, "schedule_pause", patch).await
}

/// Resume a paused schedule: slots from now on fire (the ones while it
/// was paused are neither run nor missed). Operator role.
#[utoipa::path(
    post, path = "/schedules/{id}/resume",
    params(("id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 200, body = ScheduleView),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it (operator)", body = ApiErrorBody),
        (status = 404, description = "No such schedule", body = ApiErrorBody),
    )
)]
pub async fn resume(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let patch = SchedulePatch {
        paused: Some(false),
        ..SchedulePatch::default()
    };
    change(&orch, &caller, id, "schedule_resume", patch).await
}

/// Delete a schedule. The runs it started stay, and still say which
/// schedule and slot started them. Answers with the schedule as it was.
/// Operator role.
#[utoipa::path(
    delete, path = "/schedules/{id}",
    params(("id" = String, Path, description = "The schedule's id")),
    responses(
        (status = 200, description = "Deleted", body = ScheduleView),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it (operator)", body = ApiErrorBody),
        (status = 404, description = "No such schedule", body = ApiErrorBody),
    )
)]
pub async fn delete(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let detail = format!("schedule {id}");
    let result = async {
        let store = orch.store().clone();
        let sid = id.clone();
        let s = blocking(move || Ok(store.schedule(&sid)?)).await?;
        let shown = view(&orch, s, 100).await?;
        let store = orch.store().clone();
        blocking(move || Ok(store.delete_schedule(&id)?)).await?;
        orch.schedules_changed.notify_one();
        Ok(shown)
    }
    .await;
    audit(&orch, &caller, "schedule_delete", detail, &result).await;
    Ok(Json(result?))
}
