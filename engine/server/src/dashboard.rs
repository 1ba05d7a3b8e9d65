//! The web dashboard: static files embedded in the binary (plain ES
//! modules, no build step, no CDN: it works offline), served at `/` and
//! `/ui/…` without a token (they hold no data), and the two API endpoints
//! written for it: who the caller is (`/whoami`) and a run's graph
//! (`/workflows/{id}/graph`). Everything the page shows comes from the
//! documented API, called with the token the operator enters (kept in the
//! browser session only).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use petgraph::visit::EdgeRef;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::orchestrator::{Orchestrator, exec_error};
use crate::wire::{GraphEdge, GraphNode, RunGraph, WhoAmI};

/// The page's files: name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../dashboard/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/api.js"),
    ),
    (
        "graph.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/graph.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../dashboard/style.css"),
    ),
];

/// Whether `path` is the dashboard's (served without a token).
pub fn is_dashboard(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}

fn asset(name: &str) -> Response {
    let Some((_, kind, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return ApiError::not_found(format!("no dashboard file {name:?}")).into_response();
    };
    let mut r = (StatusCode::OK, *body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Scripts and styles from this server only; no inline script; no
    // framing by other sites.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `/`: the dashboard.
pub async fn index() -> Response {
    asset("index.html")
}

/// `/ui/{file}`: its scripts and style.
pub async fn file(Path(name): Path<String>) -> Response {
    asset(&name)
}

/// The caller's token: its name and role (what the page may offer).
#[utoipa::path(
    get, path = "/whoami",
    responses(
        (status = 200, body = WhoAmI),
        (status = 401, body = crate::wire::ApiErrorBody),
    )
)]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.name.to_string(),
        role: caller.role.as_str().to_string(),
    })
}

/// A run's plan as a graph: its operations, its tasks and gates (join
/// points that do no work), and the dependency edges between them (an
/// edge from a to b: b waits for a). States are in the run's status and
/// its event stream.
#[utoipa::path(
    get, path = "/workflows/{id}/graph", params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, body = RunGraph),
        (status = 401, body = crate::wire::ApiErrorBody),
        (status = 403, description = "The token's role does not allow it", body = crate::wire::ApiErrorBody),
        (status = 404, body = crate::wire::ApiErrorBody),
    )
)]
pub async fn graph(State(orch): State<Arc<Orchestrator>>, Path(id): Path<String>) -> Result<Json<RunGraph>, ApiError> {
    let plan = {
        let (store, id) = (orch.store().clone(), id.clone());
        crate::error::blocking(move || drover_exec::run::plan(&store, &id).map_err(exec_error)).await?
    };
    let operations = plan.operations.iter().map(|o| o.id.clone()).collect();
    let nodes = plan
        .graph
        .node_indices()
        .map(|n| match &plan.graph[n] {
            drover_core::plan::Node::Task(t) => GraphNode {
                id: t.id.clone(),
                kind: "task".into(),
                operation: Some(t.operation),
                server: t.server.clone(),
                taskserv: t.taskserv.clone(),
            },
            drover_core::plan::Node::Gate(g) => GraphNode {
                id: g.id.clone(),
                kind: "gate".into(),
                operation: match g.kind {
                    drover_core::plan::GateKind::OperationDone { operation } => Some(operation),
                    drover_core::plan::GateKind::Dependency { .. } => None,
                },
                server: None,
                taskserv: None,
            },
        })
        .collect();
    let edges = plan
        .graph
        .edge_references()
        .map(|e| GraphEdge {
            from: e.source().index(),
            to: e.target().index(),
            needs: match e.weight() {
                drover_core::plan::Edge::Success => "success".into(),
                drover_core::plan::Edge::Finish => "finish".into(),
            },
        })
        .collect();
    Ok(Json(RunGraph {
        run_id: id,
        workflow: plan.workflow.name.clone(),
        operations,
        nodes,
        edges,
    }))
}
