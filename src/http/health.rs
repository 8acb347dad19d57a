//! `/healthz` (the process serves) and `/readyz` (every actor runs, not shutting down).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::actors::Role;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

/// The process serves.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz",
    responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Whether this node takes work.
#[derive(Serialize, ToSchema)]
struct Readiness {
    /// Every role runs and the node is not shutting down.
    ready: bool,
    /// The node is shutting down.
    stopping: bool,
    /// Roles that are not running (being restarted by their supervisor).
    missing: Vec<&'static str>,
    /// This node's name.
    node: String,
}

/// Readiness: every role runs and the node is not shutting down (a full data volume does not
/// make a node unready: downloads and deletes still work there).
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready", body = Readiness),
    ))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let missing: Vec<&'static str> = Role::ALL
        .iter()
        .filter(|r| r.local().is_none())
        .map(|r| r.name())
        .collect();
    let stopping = state.stopping.load(Ordering::Relaxed);
    let ready = missing.is_empty() && !stopping;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let node = state.config.node_name.clone();
    (
        status,
        Json(Readiness {
            ready,
            stopping,
            missing,
            node,
        }),
    )
}
