//! The fleet endpoints (`/fleet/*`): which servers a selector picks in a
//! fleet file, and a shell command on them (an exec).
//!
//! An exec is a run like any other (see `drover_exec::fleet`): it is
//! queued under the same limits as a submitted workflow, and its events,
//! logs, cancel and retry are those of `/workflows/{id}/...`. What is
//! particular to it, each server's exit status and output and identical
//! answers grouped, is rebuilt from its journal by `GET /fleet/exec/{id}`.
//!
//! Snapshots record files and command outputs of servers (read over
//! `drover_exec::fleet::Fleet`, outside any run) in the state store;
//! drift reads them again and lists what changed.
//!
//! Roles: selecting reads (viewer); an exec, taking a snapshot and drift
//! run commands on servers (operator); the list of snapshots is a
//! viewer's, but a snapshot's contents are the servers' files, so reading
//! one is an operator's; naming a file on the server by `path` reads the
//! server's files (admin), as for a submission.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drover_core::model::Selector;
use drover_exec::Status;
use drover_exec::fleet::{self as exec_fleet, ExecSpec, Fleet, MaxFail, Rolling};
use drover_exec::snapshot::{self, ServerState, SnapshotSpec};
use drover_state::{AuditQuery, AuditRecord, Role, SnapshotRecord, StateError};

use crate::auth::{Caller, outcome_of, record_audit};
use crate::error::{ApiError, ApiJson, blocking};
use crate::orchestrator::{Orchestrator, exec_error};
use crate::wire::{
    ApiErrorBody, DriftChange, DriftRequest, DriftResponse, ExecAccepted, ExecAnswer, ExecGroup, ExecProgress,
    ExecRequest, ExecView, FleetServer, SelectRequest, SelectResponse, SnapshotInfo, SnapshotList, SnapshotRequest,
    SnapshotTaken, SnapshotView, Unreachable,
};

/// A request body as `T`: a JSON object, with the path to a wrong field
/// named (`selector.groups: invalid type ...`).
fn body_of<T: serde::de::DeserializeOwned>(body: serde_json::Value, shape: &str) -> Result<T, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(format!(
            "the request body must be a JSON object: {shape}"
        )));
    }
    serde_path_to_error::deserialize(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}

/// A path names a file on the server: reading files there is the
/// admin's.
fn may_read_path(caller: &Caller, path: Option<&str>, what: &str) -> Result<(), ApiError> {
    if path.is_some() && !caller.may(Role::Admin) {
        return Err(caller.forbidden(Role::Admin, what));
    }
    Ok(())
}

/// Record an action in the audit trail with how it ended; answered after
/// (the record is durable first).
async fn audit<T>(
    orch: &Orchestrator,
    caller: &Caller,
    action: &str,
    run_id: Option<String>,
    detail: String,
    result: &Result<T, ApiError>,
) {
    let record = AuditRecord {
        id: 0,
        at_ms: drover_exec::scheduler::now_ms(),
        actor: caller.name.to_string(),
        action: action.to_string(),
        run_id,
        detail: Some(detail),
        outcome: match result {
            Ok(_) => "ok".into(),
            Err(e) => outcome_of(e),
        },
    };
    record_audit(orch.store(), record).await;
}

/// What a fleet request names as its file, for the audit trail.
fn file_detail(source: Option<&str>, path: Option<&str>) -> String {
    match (source, path) {
        (Some(src), _) => format!("source ({} bytes)", src.len()),
        (None, Some(path)) => format!("path {path}"),
        (None, None) => "no file".into(),
    }
}

/// The servers a selector picks in a fleet file (an inventory or
/// workflow file: its KCL source, or a path on the server, admin role),
/// in declaration order, with the groups each is in. Viewer role.
#[utoipa::path(
    post, path = "/fleet/select", request_body = SelectRequest,
    responses(
        (status = 200, body = SelectResponse),
        (status = 400, description = "The request, the file (invalid_workflow, each problem listed) or the selector (an unknown group, tag or server; nothing selected: each problem listed) is wrong", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "A path needs the admin role, and must be under the server's workflows directories", body = ApiErrorBody),
        (status = 415, description = "Not JSON", body = ApiErrorBody),
        (status = 422, description = "The file's evaluation hit a limit (time, memory, stack)", body = ApiErrorBody),
        (status = 429, description = "The evaluators' queue is full", body = ApiErrorBody),
        (status = 503, description = "Shutting down, or no KCL engine", body = ApiErrorBody),
    )
)]
pub async fn select(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<SelectResponse>, ApiError> {
    let req: SelectRequest = body_of(body, "{\"source\": ..., \"selector\": {...}}")?;
    may_read_path(
        &caller,
        req.path.as_deref(),
        "selecting servers of a file by its path on the server",
    )?;
    let (inputs, servers) = orch
        .fleet_select(req.source.as_deref(), req.path.as_deref(), &req.selector.to_model())
        .await?;
    let inventory = drover_core::inventory::Inventory::new(&inputs.source.workflow);
    let names = inventory.group_names();
    let servers: Vec<FleetServer> = servers
        .iter()
        .map(|s| FleetServer {
            hostname: s.hostname.clone(),
            provider: s.provider.clone(),
            plan: s.plan.clone(),
            zone: s.zone.clone(),
            address: s.address.clone(),
            tags: s.tags.clone(),
            groups: names
                .iter()
                .filter(|g| inventory.in_group(s, g))
                .map(|g| g.to_string())
                .collect(),
        })
        .collect();
    Ok(Json(SelectResponse {
        count: servers.len(),
        servers,
    }))
}

/// The executor's exec spec of a request, or what is wrong with it.
pub(crate) fn spec_of(req: &ExecRequest) -> Result<ExecSpec, ApiError> {
    if req.command.trim().is_empty() {
        return Err(ApiError::bad_request("command is empty: give the shell command to run"));
    }
    if req.parallel == Some(0) {
        return Err(ApiError::bad_request("parallel must be at least 1"));
    }
    if req.timeout == Some(0) {
        return Err(ApiError::bad_request("timeout must be at least 1 (seconds)"));
    }
    let rolling = match &req.rolling {
        None => None,
        Some(r) if r.batch == 0 => return Err(ApiError::bad_request("rolling.batch must be at least 1")),
        Some(r) => Some(Rolling {
            batch: r.batch,
            pause: r.pause,
            max_fail: match &r.max_fail {
                None => MaxFail::default(),
                Some(m) => m
                    .parse()
                    .map_err(|e: String| ApiError::bad_request(format!("rolling.max_fail: {e}")))?,
            },
        }),
    };
    Ok(ExecSpec {
        command: req.command.clone(),
        selector: req.selector.to_model(),
        parallel: req.parallel.unwrap_or(exec_fleet::DEFAULT_PARALLEL),
        rolling,
        become_root: req.become_root,
        timeout: req.timeout.unwrap_or(600),
    })
}

/// Run a shell command on the servers a selector picks in a fleet file:
/// queued as a run of its own (one task per server), like a submitted
/// workflow. Follow it with `GET /fleet/exec/{id}`, or the run's events
/// and logs; cancel or retry it as any run. Operator role (admin for a
/// path).
#[utoipa::path(
    post, path = "/fleet/exec", request_body = ExecRequest,
    responses(
        (status = 202, description = "Accepted and queued", body = ExecAccepted),
        (status = 400, description = "The request, the file or the selector is wrong (each problem listed)", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it (operator; admin for a path), or the path is outside the server's workflows directories", body = ApiErrorBody),
        (status = 413, description = "The body is over 2 MiB", body = ApiErrorBody),
        (status = 415, description = "Not JSON", body = ApiErrorBody),
        (status = 422, description = "The file's evaluation hit a limit (time, memory, stack)", body = ApiErrorBody),
        (status = 429, description = "The queue (or the evaluators' queue) is full", body = ApiErrorBody),
        (status = 503, description = "Shutting down, or no KCL engine", body = ApiErrorBody),
        (status = 507, description = "The server's disk is full; nothing was recorded", body = ApiErrorBody),
    )
)]
pub async fn exec(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let req: ExecRequest = body_of(body, "{\"source\": ..., \"selector\": {...}, \"command\": ...}")?;
    let detail = format!(
        "command {:?} on {}",
        req.command,
        file_detail(req.source.as_deref(), req.path.as_deref())
    );
    let result = async {
        may_read_path(
            &caller,
            req.path.as_deref(),
            "an exec on a file by its path on the server",
        )?;
        let spec = spec_of(&req)?;
        let (run_id, servers) = orch
            .submit_exec(req.source.as_deref(), req.path.as_deref(), &spec)
            .await?;
        Ok(ExecAccepted {
            run_id,
            status: drover_state::RunStatus::Queued.as_str().into(),
            command: spec.command,
            servers: servers.into_iter().map(|s| s.hostname).collect(),
        })
    }
    .await;
    let run_id = result.as_ref().ok().map(|r| r.run_id.clone());
    audit(&orch, &caller, "exec", run_id, detail, &result).await;
    Ok((StatusCode::ACCEPTED, Json(result?)).into_response())
}

/// An exec's state: each server's status, exit code and output, identical
/// answers grouped (the largest group first), and how far it is. Viewer
/// role.
#[utoipa::path(
    get, path = "/fleet/exec/{id}", params(("id" = String, Path, description = "The exec's run id")),
    responses(
        (status = 200, body = ExecView),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
        (status = 404, description = "No such run, or the run is not an exec", body = ApiErrorBody),
    )
)]
pub async fn exec_status(
    State(orch): State<Arc<Orchestrator>>,
    Path(id): Path<String>,
) -> Result<Json<ExecView>, ApiError> {
    let (store, opts, run) = (orch.store().clone(), orch.options().clone(), id.clone());
    let (record, plan, summary, journal, trail) = blocking(move || {
        let (record, plan, summary) = drover_exec::run::status(&store, &run, &opts).map_err(exec_error)?;
        let journal = store.journal(&run)?;
        let trail = store.audit(&AuditQuery {
            run_id: Some(run.clone()),
            action: Some("exec".into()),
            ..AuditQuery::default()
        })?;
        Ok((record, plan, summary, journal, trail))
    })
    .await?;
    let Some(command) = exec_fleet::exec_command(&plan) else {
        return Err(ApiError::not_found(format!(
            "run {id} is not an exec (it runs workflow {}); see /workflows/{id}/status",
            plan.workflow.name
        )));
    };
    let answers = exec_fleet::answers(&plan, &journal);
    let groups = exec_fleet::group(&answers);
    // Done: the server will not run the command again in this run
    // (cancelled ones run again when it is resumed), as `drover exec`
    // counts.
    let finished = |s: Status| matches!(s, Status::Succeeded | Status::Failed | Status::Skipped);
    let total = answers.len();
    let done = answers.iter().filter(|a| finished(a.status)).count();
    let failed = answers.iter().filter(|a| a.status == Status::Failed).count();
    // Nothing selected is nothing left to do.
    let percent = (done * 100)
        .checked_div(total)
        .map_or(100, |p| u32::try_from(p).unwrap_or(100));
    let mut status = record.status.as_str().to_string();
    if orch.stalled(&id).is_some() {
        status = drover_state::RunStatus::Aborted.as_str().into();
    }
    Ok(Json(ExecView {
        run_id: record.id,
        command: command.to_string(),
        status,
        reason: orch.stalled(&id).unwrap_or(summary.reason),
        submitted_by: trail.iter().find(|a| a.outcome == "ok").map(|a| a.actor.clone()),
        progress: ExecProgress {
            total,
            done,
            failed,
            percent,
        },
        groups: groups
            .iter()
            .map(|g| ExecGroup {
                servers: g.servers.clone(),
                hosts: g.hosts(),
                outcome: g.outcome.clone(),
                stdout: g.stdout.clone(),
                stderr: g.stderr.clone(),
            })
            .collect(),
        servers: answers
            .into_iter()
            .map(|a| ExecAnswer {
                server: a.server,
                status: crate::api::status_name(a.status),
                exit_code: a.exit_code,
                signal: a.signal,
                stdout: a.stdout,
                stderr: a.stderr,
                truncated: a.truncated,
                error: a.error,
                duration_ms: a.duration_ms,
            })
            .collect(),
    }))
}

fn snapshot_info(r: &SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        created_at_ms: r.created_at_ms,
        file: r.file.clone(),
        selector: r.selector.clone(),
        spec: r.spec.clone(),
    }
}

/// A snapshot's errors: an unknown one is 404, a taken name 409.
fn snapshot_error(e: StateError) -> ApiError {
    match e {
        StateError::UnknownSnapshot(_) => ApiError::not_found(e.to_string()),
        StateError::SnapshotExists(_) => ApiError::conflict(e.to_string()),
        other => other.into(),
    }
}

/// The fleet file as a snapshot records it: the path given, or
/// `<source>`.
fn recorded_file(path: Option<&str>) -> String {
    path.map_or_else(|| "<source>".to_string(), str::to_string)
}

/// Read `spec` on the servers of `fleet`; until done or the server stops.
async fn read_fleet(orch: &Orchestrator, fleet: Fleet, spec: &SnapshotSpec) -> Vec<ServerState> {
    let states = snapshot::take(&fleet, spec, orch.stopping.child_token()).await;
    fleet.finish().await;
    states
}

/// Take a snapshot: read files (existence, size, SHA-256, the first 64
/// KiB of text) and run commands (exit status, output) on the servers a
/// selector picks in a fleet file, and keep it. A server that cannot be
/// read is listed as unreachable; the snapshot is kept regardless.
/// Operator role (admin for a path).
#[utoipa::path(
    post, path = "/fleet/snapshots", request_body = SnapshotRequest,
    responses(
        (status = 201, description = "Taken and kept", body = SnapshotTaken),
        (status = 400, description = "The request, the file or the selector is wrong (each problem listed)", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it (operator; admin for a path)", body = ApiErrorBody),
        (status = 409, description = "A snapshot has this name already", body = ApiErrorBody),
        (status = 415, description = "Not JSON", body = ApiErrorBody),
        (status = 422, description = "The file's evaluation hit a limit", body = ApiErrorBody),
        (status = 429, description = "The evaluators' queue is full", body = ApiErrorBody),
        (status = 503, description = "Shutting down, or no KCL engine", body = ApiErrorBody),
    )
)]
pub async fn take_snapshot(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let req: SnapshotRequest = body_of(
        body,
        "{\"source\": ..., \"selector\": {...}, \"files\": [...], \"commands\": [...]}",
    )?;
    let detail = format!(
        "snapshot{} of {} file(s), {} command(s) on {}",
        req.name.as_deref().map(|n| format!(" {n}")).unwrap_or_default(),
        req.files.len(),
        req.commands.len(),
        file_detail(req.source.as_deref(), req.path.as_deref())
    );
    let result = async {
        may_read_path(
            &caller,
            req.path.as_deref(),
            "a snapshot of a file's servers by its path on the server",
        )?;
        if req.files.is_empty() && req.commands.is_empty() {
            return Err(ApiError::bad_request(
                "nothing to record: give files (paths on the servers) or commands, or both",
            ));
        }
        if let Some(name) = &req.name {
            if name.trim().is_empty() {
                return Err(ApiError::bad_request("name is empty: give a name, or none"));
            }
            let (store, name) = (orch.store().clone(), name.clone());
            match blocking(move || Ok(store.snapshot(&name))).await? {
                Ok(_) => {
                    return Err(snapshot_error(StateError::SnapshotExists(
                        req.name.clone().unwrap_or_default(),
                    )));
                }
                Err(StateError::UnknownSnapshot(_)) => {}
                Err(e) => return Err(snapshot_error(e)),
            }
        }
        let selector = req.selector.to_model();
        let fleet = orch
            .fleet(req.source.as_deref(), req.path.as_deref(), &selector, "snapshot")
            .await?;
        let spec = SnapshotSpec {
            files: req.files.clone(),
            commands: req.commands.clone(),
        };
        let states = read_fleet(&orch, fleet, &spec).await;
        let record = SnapshotRecord {
            id: drover_exec::run::new_run_id(),
            name: req.name.clone(),
            created_at_ms: drover_exec::scheduler::now_ms(),
            file: recorded_file(req.path.as_deref()),
            selector: serde_json::to_value(&selector).map_err(ApiError::internal)?,
            spec: serde_json::to_value(&spec).map_err(ApiError::internal)?,
            servers: serde_json::to_value(&states).map_err(ApiError::internal)?,
        };
        {
            let (store, record) = (orch.store().clone(), record.clone());
            blocking(move || store.save_snapshot(&record).map_err(snapshot_error)).await?;
        }
        Ok(SnapshotTaken {
            snapshot: snapshot_info(&record),
            servers: states.iter().map(|s| s.server.clone()).collect(),
            unreachable: states
                .iter()
                .filter_map(|s| {
                    s.error.as_ref().map(|e| Unreachable {
                        server: s.server.clone(),
                        error: e.clone(),
                    })
                })
                .collect(),
        })
    }
    .await;
    audit(&orch, &caller, "snapshot", None, detail, &result).await;
    Ok((StatusCode::CREATED, Json(result?)).into_response())
}

/// Every snapshot, newest first: when, of which file and selector, what
/// was recorded; not what was found (`GET /fleet/snapshots/{id}`, operator
/// role). Viewer role.
#[utoipa::path(
    get, path = "/fleet/snapshots",
    responses(
        (status = 200, body = SnapshotList),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = ApiErrorBody),
    )
)]
pub async fn list_snapshots(State(orch): State<Arc<Orchestrator>>) -> Result<Json<SnapshotList>, ApiError> {
    let store = orch.store().clone();
    let list = blocking(move || Ok(store.snapshots()?)).await?;
    Ok(Json(SnapshotList {
        snapshots: list.iter().map(snapshot_info).collect(),
    }))
}

/// One snapshot, by id or name, with what was found on each server: the
/// servers' files, so operator role.
#[utoipa::path(
    get, path = "/fleet/snapshots/{id}", params(("id" = String, Path, description = "The snapshot's id or name")),
    responses(
        (status = 200, body = SnapshotView),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "Not an operator or admin token", body = ApiErrorBody),
        (status = 404, description = "No snapshot has this id or name", body = ApiErrorBody),
    )
)]
pub async fn show_snapshot(
    State(orch): State<Arc<Orchestrator>>,
    Path(id): Path<String>,
) -> Result<Json<SnapshotView>, ApiError> {
    let store = orch.store().clone();
    let r = blocking(move || store.snapshot(&id).map_err(snapshot_error)).await?;
    Ok(Json(SnapshotView {
        snapshot: snapshot_info(&r),
        servers: r.servers,
    }))
}

/// Compare the servers now with a snapshot (by id or name): its files
/// and commands are read again on the servers a selector picks in a fleet
/// file (none given: all of it; given: only those are compared), and
/// every difference is listed per server with a unified diff. Operator
/// role (admin for a path).
#[utoipa::path(
    post, path = "/fleet/drift", request_body = DriftRequest,
    responses(
        (status = 200, body = DriftResponse),
        (status = 400, description = "The request, the file or the selector is wrong (each problem listed)", body = ApiErrorBody),
        (status = 401, body = ApiErrorBody),
        (status = 403, description = "The token's role does not allow it (operator; admin for a path)", body = ApiErrorBody),
        (status = 404, description = "No snapshot has this id or name", body = ApiErrorBody),
        (status = 415, description = "Not JSON", body = ApiErrorBody),
        (status = 422, description = "The file's evaluation hit a limit", body = ApiErrorBody),
        (status = 429, description = "The evaluators' queue is full", body = ApiErrorBody),
        (status = 503, description = "Shutting down, or no KCL engine", body = ApiErrorBody),
    )
)]
pub async fn drift(
    State(orch): State<Arc<Orchestrator>>,
    caller: Caller,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<DriftResponse>, ApiError> {
    let req: DriftRequest = body_of(body, "{\"source\": ..., \"against\": \"ID or NAME\"}")?;
    let detail = format!(
        "against {} on {}",
        req.against,
        file_detail(req.source.as_deref(), req.path.as_deref())
    );
    let result = async {
        may_read_path(
            &caller,
            req.path.as_deref(),
            "drift of a file's servers by its path on the server",
        )?;
        let record = {
            let (store, against) = (orch.store().clone(), req.against.clone());
            blocking(move || store.snapshot(&against).map_err(snapshot_error)).await?
        };
        let undecodable = |what: &str, e: serde_json::Error| {
            ApiError::internal(format!(
                "snapshot {}: its {what} does not decode ({e}); was it written by another version of drover?",
                record.id
            ))
        };
        let spec: SnapshotSpec = serde_json::from_value(record.spec.clone()).map_err(|e| undecodable("spec", e))?;
        let mut before: Vec<ServerState> =
            serde_json::from_value(record.servers.clone()).map_err(|e| undecodable("servers", e))?;
        let selector = req.selector.to_model();
        let fleet = orch
            .fleet(req.source.as_deref(), req.path.as_deref(), &selector, "drift")
            .await?;
        if selector != Selector::default() {
            before.retain(|b| fleet.servers().iter().any(|s| s.hostname == b.server));
        }
        let now = read_fleet(&orch, fleet, &spec).await;
        let label = record.name.clone().unwrap_or_else(|| record.id.clone());
        let changes = snapshot::diff_labeled(&before, &now, &label, "now");
        let mut compared: Vec<&str> = before.iter().chain(&now).map(|s| s.server.as_str()).collect();
        compared.sort_unstable();
        compared.dedup();
        Ok(DriftResponse {
            against: snapshot_info(&record),
            servers: compared.len(),
            changes: changes
                .into_iter()
                .map(|c| DriftChange {
                    server: c.server,
                    kind: c.kind,
                    item: c.item,
                    summary: c.summary,
                    diff: c.diff,
                })
                .collect(),
        })
    }
    .await;
    if let (Ok(found), Some(notifier)) = (&result, orch.notifier())
        && !found.changes.is_empty()
    {
        notifier.emit_server(drift_notice(found, &detail)).await;
    }
    audit(&orch, &caller, "drift", None, detail, &result).await;
    result.map(Json)
}

/// The `drift_found` notice of a drift answer: which servers changed and
/// how, in a few words each (never the diffs: they hold the servers'
/// file contents).
fn drift_notice(found: &DriftResponse, detail: &str) -> crate::notify::Notice {
    let mut servers: Vec<&str> = found.changes.iter().map(|c| c.server.as_str()).collect();
    servers.sort_unstable();
    servers.dedup();
    crate::notify::Notice {
        detail: serde_json::json!({
            "against": found.against.id,
            "servers": servers,
            "changes": found.changes.iter().map(|c| serde_json::json!({
                "server": c.server, "kind": c.kind, "item": c.item, "summary": c.summary,
            })).collect::<Vec<_>>(),
        }),
        ..crate::notify::Notice::new(
            drover_core::model::NotificationEvent::DriftFound,
            format!(
                "{} change(s) on {} of {} server(s) ({detail})",
                found.changes.len(),
                servers.len(),
                found.servers
            ),
        )
    }
}
