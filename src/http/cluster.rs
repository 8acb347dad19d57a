//! `GET /v1/cluster` (admins): this node and every member it sees, their roles, state,
//! converter slots, version, and the round-trip time of the last heartbeat to it.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState, Authed};
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::cluster::mesh::ClusterMsg;
use crate::cluster::probe::NodeStatus;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/v1/cluster", get(cluster))
}

fn status_json(status: &NodeStatus) -> serde_json::Value {
    serde_json::json!({
        "node": status.node,
        "incarnation": status.incarnation,
        "version": status.version,
        "roles": status.roles,
        "slots": {"busy": status.busy_slots, "free": status.total_slots.saturating_sub(status.busy_slots), "total": status.total_slots},
        "storage": {"free_bytes": status.free_bytes, "low": status.low_storage},
    })
}

async fn cluster(State(state): State<AppState>, Authed(who): Authed) -> Result<Json<serde_json::Value>, ApiError> {
    if !who.admin {
        return Err(ApiError::forbidden("only admins see the cluster"));
    }
    let me = state.facts.status(&state.config.node_name, "");
    let members = if state.config.cluster.is_some() {
        ask(Role::Cluster, |reply| ClusterMsg::Members { reply }, CALL_TIMEOUT).await?
    } else {
        Vec::new()
    };
    let members: Vec<serde_json::Value> = members
        .iter()
        .map(|m| {
            let mut v = m
                .status
                .as_ref()
                .map(status_json)
                .unwrap_or_else(|| serde_json::json!({"node": m.node}));
            v["incarnation"] = m.name.clone().into();
            v["address"] = m.address.clone().into();
            v["state"] = m.state.into();
            v["heartbeat_rtt_ms"] = m.rtt.map(|d| d.as_secs_f64() * 1000.0).into();
            v
        })
        .collect();
    let mut this = status_json(&me);
    this["state"] = "up".into();
    Ok(Json(serde_json::json!({"self": this, "members": members})))
}
