//! `/healthz` (the process serves) and `/readyz` (every actor runs, not shutting down, and
//! a node that just started has reached its peers).

use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::cluster::mesh::ClusterMsg;

pub(super) fn router() -> OpenApiRouter<AppState> {
    started();
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

/// When this process started (the first readiness check forces it: the gateway's start).
static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// How long a starting node waits for its peers before it is ready anyway.
const JOINING: Duration = Duration::from_secs(15);

/// Forces [`STARTED`] (called when the routes are built).
fn started() {
    LazyLock::force(&STARTED);
}

/// Readiness: every role runs, the node is not shutting down, and (for its first seconds
/// in a cluster) it has reached its peers. A full data volume does not make a node unready:
/// downloads and deletes still work there.
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
    // Just started in a cluster: not ready until it has a session with every wanted peer
    // (a node that cannot reach the others cannot answer for their jobs), for at most
    // JOINING; after that a missing peer is the peer's problem, not this node's.
    let joining = state.config.cluster.is_some()
        && STARTED.elapsed() < JOINING
        && ask(Role::Cluster, |reply| ClusterMsg::Unreached { reply }, CALL_TIMEOUT)
            .await
            .map_or(true, |away| !away.is_empty());
    let ready = missing.is_empty() && !stopping && !joining;
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
