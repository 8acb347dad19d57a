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
    /// Kube discovery (absent with static peers or alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    discovery: Option<DiscoveryStatus>,
    /// What an operator should know: the reason the node is not ready, a mesh in clear
    /// text (`--cluster-insecure`), a failing discovery.
    warnings: Vec<String>,
}

/// Kube discovery as this node sees it.
#[derive(Serialize, ToSchema)]
pub(super) struct DiscoveryStatus {
    /// The pods have been listed once (a node is not ready before).
    listed: bool,
    /// Running pods seen (this one included).
    pods: usize,
    /// The StatefulSet's declared replicas, once read.
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<u32>,
    /// The last failure and what to fix, until the next listing or change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
}

impl DiscoveryStatus {
    pub(super) fn of(view: crate::cluster::mesh::DiscoveryView) -> Self {
        DiscoveryStatus {
            listed: view.listed,
            pods: view.pods,
            replicas: view.replicas,
            error: view.error,
        }
    }
}

/// Kube discovery as the mesh reports it (`None`: static peers or alone).
pub(super) async fn discovery(
    config: &crate::config::Config,
) -> Result<Option<crate::cluster::mesh::DiscoveryView>, crate::actors::CallError> {
    match config.cluster.as_ref().and_then(|c| c.kube_selector.as_ref()) {
        Some(_) => ask(Role::Cluster, |reply| ClusterMsg::Discovery { reply }, CALL_TIMEOUT).await,
        None => Ok(None),
    }
}

/// What every status tells an operator about the mesh: a failing discovery (what to fix)
/// and a mesh in clear text.
pub(super) fn mesh_warnings(
    config: &crate::config::Config,
    discovery: Option<&crate::cluster::mesh::DiscoveryView>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(error) = discovery.and_then(|d| d.error.as_ref()) {
        warnings.push(format!("discovery: {error}"));
    }
    if config.cluster.as_ref().is_some_and(|c| c.insecure) {
        warnings.push(INSECURE.to_string());
    }
    warnings
}

/// The warning every status of a node whose mesh runs in clear text carries.
const INSECURE: &str = "the mesh runs in clear text (--cluster-insecure): MP4/MP3 bytes and password hashes cross the pod network unencrypted";

/// When this process started (the first readiness check forces it: the gateway's start).
static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// How long a starting node waits for its peers before it is ready anyway.
const JOINING: Duration = Duration::from_secs(15);

/// Forces [`STARTED`] (called when the routes are built).
fn started() {
    LazyLock::force(&STARTED);
}

/// Readiness: every role runs, the node is not shutting down, under kube discovery the pods
/// have been listed once, and (for its first seconds in a cluster) it has reached its peers.
/// A full data volume does not make a node unready: downloads and deletes still work there.
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
    let cluster = state.config.cluster.as_ref();
    let kube = cluster.is_some_and(|c| c.kube_selector.is_some());
    let view = discovery(&state.config).await.ok().flatten();
    let mut warnings = Vec::new();
    // Kube discovery: not ready before the pods were listed once (a pod that cannot list
    // them would run alone and take work as if it were the whole cluster).
    let unlisted = kube && view.as_ref().is_none_or(|d| !d.listed);
    if unlisted {
        warnings.push("discovery has not listed the pods yet".to_string());
    }
    warnings.extend(mesh_warnings(&state.config, view.as_ref()));
    // Just started in a cluster (or just found its pods): not ready until it has a session
    // with every wanted peer (a node that cannot reach the others cannot answer for their
    // jobs), for at most JOINING; after that a missing peer is the peer's problem.
    let since = view
        .as_ref()
        .and_then(|d| d.listed_at)
        .map_or(STARTED.elapsed(), |at| at.elapsed().min(STARTED.elapsed()));
    let joining = cluster.is_some()
        && !unlisted
        && since < JOINING
        && ask(Role::Cluster, |reply| ClusterMsg::Unreached { reply }, CALL_TIMEOUT)
            .await
            .map_or(true, |away| !away.is_empty());
    if joining {
        warnings.push("joining: not every peer reached yet".to_string());
    }
    let discovery = view.map(DiscoveryStatus::of);
    let ready = missing.is_empty() && !stopping && !joining && !unlisted;
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
            discovery,
            warnings,
        }),
    )
}
