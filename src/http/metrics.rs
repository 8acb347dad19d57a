//! `GET /metrics`: the node's metrics in the Prometheus text format (unauthenticated, like
//! `/healthz`: scrapers reach it inside the cluster network), and the middleware that counts
//! HTTP requests by route pattern and status.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::actors::converter::ConverterMsg;
use crate::actors::request::RequestMsg;
use crate::actors::{Role, ask};
use crate::cluster::mesh::ClusterMsg;
use crate::metrics::{self, Snapshot};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(scrape))
}

/// How long a scrape waits for each actor.
const SCRAPE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The node's metrics: jobs by state, queue depth, converter slots, conversions, emails,
/// HTTP requests by route and status, cluster members, the data volume.
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses((status = 200, description = "OpenMetrics text", body = String,
        content_type = "application/openmetrics-text")))]
async fn scrape(State(state): State<AppState>) -> Response {
    let meta = state.meta.status();
    let leads = meta.leader.as_deref() == Some(state.config.node_name.as_str());
    let mut snapshot = Snapshot {
        storage: state.facts.storage(),
        meta: (meta, leads),
        ..Snapshot::default()
    };
    if let Ok(Ok((jobs, queued))) = ask(Role::Request, |reply| RequestMsg::Stats { reply }, SCRAPE_WAIT).await {
        snapshot.jobs = jobs.into_iter().map(|(s, n)| (s.as_str(), n)).collect();
        snapshot.queue_depth = queued;
    }
    if let Ok(slots) = ask(Role::Converter, |reply| ConverterMsg::Status { reply }, SCRAPE_WAIT).await {
        snapshot.slots = slots;
    }
    if state.config.cluster.is_some()
        && let Ok(members) = ask(Role::Cluster, |reply| ClusterMsg::Members { reply }, SCRAPE_WAIT).await
    {
        snapshot.members = members.len();
    }
    // The pods there should be: the StatefulSet's declared replicas (kube discovery, once
    // read), the configured peers and this node (static), or this node alone.
    snapshot.replicas = match state.config.cluster.as_ref() {
        None => Some(1),
        Some(c) if c.kube_selector.is_none() => Some(c.peers.len() + 1),
        Some(_) => ask(Role::Cluster, |reply| ClusterMsg::Discovery { reply }, SCRAPE_WAIT)
            .await
            .ok()
            .flatten()
            .and_then(|d| d.replicas)
            .map(|n| n as usize),
    };
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics::render(&snapshot),
    )
        .into_response()
}

/// Counts every request by its route pattern (`/v1/jobs/{id}`, never the raw path).
pub(super) async fn count(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().to_string();
    let response = next.run(request).await;
    metrics::http_request(&route, &method, response.status().as_u16());
    response
}
