//! `/healthz` (the process serves) and `/readyz` (every actor runs, not shutting down).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use crate::actors::Role;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let missing: Vec<&str> = Role::ALL
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
    (
        status,
        Json(
            serde_json::json!({"ready": ready, "stopping": stopping, "missing": missing, "node": state.config.node_name}),
        ),
    )
}
