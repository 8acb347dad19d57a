//! `/v1/me/webhook`: the caller's default webhook (URL and events) and signing secret.
//! How calls are made and signed: `webhook.rs`; how they are queued: `store/webhooks.rs`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::responses::{BadRequest, NotFound, TooLarge, Unauthorized, Unavailable, Unprocessable};
use super::{ApiError, AppState, Authed, ErrorCode};
use crate::actors::auth::{AuthMsg, WebhookChange};
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::store::WebhookSettings;
use crate::store::webhooks::EVENTS;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show, set, remove))
        .routes(routes!(rotate))
}

/// A default webhook.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"url": "https://hooks.example.org/mp4tomp3", "events": ["job.finished", "job.failed"]}))]
struct WebhookRequest {
    /// An `http` or `https` URL on a public address (as for URL imports); redirects are
    /// not followed.
    #[schema(format = "uri")]
    url: String,
    /// Which events to send: `job.created`, `job.finished`, `job.failed` (default: the last
    /// two). They apply to jobs that name their own `webhook_url` too.
    events: Option<Vec<String>>,
}

/// The caller's webhook settings.
#[derive(Serialize, ToSchema)]
struct WebhookJson {
    /// Where events of the caller's jobs go, unless a job names its own `webhook_url`.
    url: Option<String>,
    /// The events sent.
    events: Vec<String>,
    /// Whether a signing secret exists (it is shown only when made).
    has_secret: bool,
    /// The signing secret, only in the answer that made it: keep it, it is not shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

/// A new signing secret.
#[derive(Serialize, ToSchema)]
struct SecretJson {
    /// Verify `Mp4tomp3-Signature` with it: `t=UNIX,v1=HEX`, HEX being HMAC-SHA256 of
    /// `"{t}.{body}"` keyed with this whole string. Shown once.
    #[schema(example = "whsec_4f9c…")]
    secret: String,
}

impl WebhookJson {
    fn of((settings, secret): (WebhookSettings, Option<String>)) -> Self {
        WebhookJson {
            events: settings.wanted(),
            has_secret: settings.secret.is_some(),
            url: settings.url,
            secret,
        }
    }
}

async fn change(email: String, change: WebhookChange) -> Result<(WebhookSettings, Option<String>), ApiError> {
    Ok(ask(
        Role::Auth,
        |reply| AuthMsg::Webhook { email, change, reply },
        CALL_TIMEOUT,
    )
    .await??)
}

/// Checks a webhook URL as URL imports are checked (scheme, credentials, the address
/// guard after DNS); it is checked again at every call.
pub(super) async fn check_url(state: &AppState, raw: &str) -> Result<String, ApiError> {
    let url = state.fetcher.parse(raw).map_err(|e| invalid_webhook(e.to_string()))?;
    state
        .fetcher
        .check(&url)
        .await
        .map_err(|e| ApiError::new(ErrorCode::ForbiddenUrl, e.to_string()))?;
    Ok(url.to_string())
}

/// Whether `email` has a signing secret (a job's own `webhook_url` needs one).
pub(super) async fn has_secret(email: String) -> Result<bool, ApiError> {
    Ok(change(email, WebhookChange::Get).await?.0.secret.is_some())
}

/// `400 invalid_webhook`.
pub(super) fn invalid_webhook(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidWebhook, message)
}

/// The caller's webhook settings.
#[utoipa::path(get, path = "/v1/me/webhook", tag = "webhooks", operation_id = "get_webhook",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The settings (the secret itself is not shown)", body = WebhookJson),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ))]
async fn show(Authed(who): Authed) -> Result<Json<WebhookJson>, ApiError> {
    Ok(Json(WebhookJson::of(change(who.email, WebhookChange::Get).await?)))
}

/// Sets the caller's default webhook. The first time, a signing secret is made and shown in
/// this answer only.
#[utoipa::path(put, path = "/v1/me/webhook", tag = "webhooks", operation_id = "set_webhook",
    security(("bearer" = [])),
    request_body = WebhookRequest,
    responses(
        (status = 200, description = "Set; `secret` is present if this call made it", body = WebhookJson),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = TooLarge),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    ))]
async fn set(
    State(state): State<AppState>,
    Authed(who): Authed,
    body: Result<Json<WebhookRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<WebhookJson>, ApiError> {
    let Json(body) = body.map_err(ApiError::json)?;
    let mut events = body.events.unwrap_or_default();
    if let Some(bad) = events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
        return Err(invalid_webhook(format!(
            "unknown event {bad:?}; events are {}",
            EVENTS.join(", ")
        )));
    }
    events.sort();
    events.dedup();
    let url = check_url(&state, &body.url).await?;
    let set = change(who.email, WebhookChange::Set { url, events }).await?;
    Ok(Json(WebhookJson::of(set)))
}

/// Removes the caller's default webhook (the signing secret stays, for jobs that name their
/// own `webhook_url`).
#[utoipa::path(delete, path = "/v1/me/webhook", tag = "webhooks", operation_id = "delete_webhook",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ))]
async fn remove(Authed(who): Authed) -> Result<StatusCode, ApiError> {
    change(who.email, WebhookChange::Remove).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Makes a new signing secret (the old one stops signing at once, also for calls not yet
/// delivered) and shows it, once.
#[utoipa::path(post, path = "/v1/me/webhook/secret", tag = "webhooks", operation_id = "rotate_webhook_secret",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The new secret", body = SecretJson),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ))]
async fn rotate(Authed(who): Authed) -> Result<(StatusCode, Json<SecretJson>), ApiError> {
    let (_, secret) = change(who.email, WebhookChange::RotateSecret).await?;
    let secret = secret.ok_or_else(|| ApiError::internal("the new secret was not stored"))?;
    Ok((StatusCode::CREATED, Json(SecretJson { secret })))
}
