//! The HTTP API (axum): one module per resource, merged here.
//!
//! Handlers are thin: they parse, authenticate through the auth actor, and call the
//! request actor; `/v1` routes and the seed-compatible routes (`/login`, `/upload`,
//! `/download`) share the same core functions and differ only in how they answer.

mod archive;
mod auth;
mod cluster;
mod download;
mod error;
mod events;
mod health;
mod jobs;
mod metrics;
mod multipart;
pub mod openapi;
mod quota;
pub mod responses;
mod seed;
pub mod serve;
pub mod session;
mod tus;
mod web;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ErrorCode};

use crate::actors::auth::AuthMsg;
use crate::actors::request::client::JobsClient;
use crate::actors::request::events::Events;
use crate::actors::request::resumable::client::ResumableClient;
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::auth::Principal;
use crate::cluster::probe::Facts;
use crate::config::Config;
use crate::fetch::Fetcher;
use crate::meta::Meta;

/// The largest JSON body any route reads (uploads have their own limit).
pub const MAX_JSON_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The configuration.
    pub config: Arc<Config>,
    /// URL checks at submission.
    pub fetcher: Fetcher,
    /// Set when the node starts shutting down (`/readyz` turns 503).
    pub stopping: Arc<AtomicBool>,
    /// Jobs wherever they live (this node or another).
    pub jobs: JobsClient,
    /// Resumable (tus) uploads wherever they are stored.
    pub resumable: ResumableClient,
    /// What this node's roles publish (its status in `/v1/cluster`).
    pub facts: Facts,
    /// This node's ring of job events, cluster-wide (`/v1/events`).
    pub events: Events,
    /// Cancelled when the server stops: long-lived responses (event streams) end.
    pub shutdown: CancellationToken,
    /// This node's member of the metadata group (keys, the job directory).
    pub meta: Meta,
}

impl AppState {
    /// The state for `config`.
    pub fn new(
        config: Arc<Config>,
        stopping: Arc<AtomicBool>,
        shutdown: CancellationToken,
        facts: Facts,
        events: Events,
        meta: Meta,
    ) -> Self {
        let fetcher = Fetcher::from_config(&config);
        let jobs = JobsClient::new(&config, meta.clone());
        let resumable = ResumableClient::new(config.clone());
        AppState {
            config,
            fetcher,
            stopping,
            jobs,
            resumable,
            facts,
            events,
            shutdown,
            meta,
        }
    }
}

/// `/metrics` alone, for its own port (`--metrics-listen`).
pub fn metrics_router(state: AppState) -> Router {
    let (router, _) = metrics::router().split_for_parts();
    router.fallback(no_route).with_state(state)
}

/// The whole API, and its OpenAPI document (published at `/openapi.json`).
pub fn router(state: AppState) -> Router {
    let api = openapi::router()
        .merge(health::router())
        .merge(auth::router())
        .merge(cluster::router())
        .merge(jobs::router())
        .merge(events::router())
        .merge(webhooks::router())
        .merge(quota::router())
        .merge(archive::router())
        .merge(session::router())
        .merge(web::router())
        .merge(tus::router())
        .merge(download::router())
        .merge(seed::router());
    // `/metrics` is here unless it has a port of its own (`--metrics-listen`).
    let api = match state.config.metrics_listen {
        Some(_) => api,
        None => api.merge(metrics::router()),
    };
    let (router, mut document) = api.split_for_parts();
    openapi::add_session_alternative(&mut document);
    openapi::publish(&document, state.config.max_upload_bytes);
    router
        .fallback(no_route)
        // Bodies read whole (JSON) are capped; upload routes lift this for their stream.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BYTES))
        .layer(axum::middleware::from_fn(one_authorization))
        .layer(axum::middleware::from_fn(close_after_refusal))
        .layer(axum::middleware::from_fn(metrics::count))
        // No answer is to be read as anything but its declared type (JSON errors included).
        .layer(tower_http::set_header::SetResponseHeaderLayer::if_not_present(
            axum::http::header::X_CONTENT_TYPE_OPTIONS,
            axum::http::HeaderValue::from_static("nosniff"),
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// `404 no_route`: no such path (told apart from `not_found`, a missing job on a real route).
async fn no_route() -> ApiError {
    ApiError::new(ErrorCode::NoRoute, "no such route; see /openapi.json")
}

/// Refuses a request with more than one `Authorization` header (`400`): which one counts
/// would depend on who reads them (a proxy may check one, we another).
async fn one_authorization(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    if request.headers().get_all(AUTHORIZATION).iter().nth(1).is_some() {
        use axum::response::IntoResponse;
        return ApiError::new(ErrorCode::InvalidRequest, "send exactly one Authorization header").into_response();
    }
    next.run(request).await
}

/// An error answer to an HTTP/1 request that carried a body says `Connection: close`: the
/// body may be left unread (refused before reading: 401, 413, 507), so the connection cannot
/// carry another request, and a client told so does not send its next one into a closing
/// socket.
async fn close_after_refusal(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
    let headers = request.headers();
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()) != Some(0));
    let http1 = request.version() < axum::http::Version::HTTP_2;
    let mut response = next.run(request).await;
    let refused = response.status().is_client_error() || response.status().is_server_error();
    if has_body && http1 && refused {
        response
            .headers_mut()
            .insert(CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// Verifies a request's token in the request's own task when the metadata's in-memory
/// view knows its user (the signature, then the user's generation and signed-out
/// sessions: no message, no database read); otherwise the auth actor answers ([`verify`]).
pub async fn verify_in(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    if let Ok(v) = state.config.keys.verify_gen(token)
        && let Some(user) = state.meta.users().get(&v.who.email)
    {
        return match crate::meta::users::token_current(&user, v.generation, &v.sid) {
            true => Ok(v.who),
            false => Err(crate::auth::jwt::TokenError::Revoked.into()),
        };
    }
    verify(token).await
}

/// Verifies a bearer token with the auth actor.
pub async fn verify(token: &str) -> Result<Principal, ApiError> {
    let token = token.to_string();
    Ok(ask(Role::Auth, |reply| AuthMsg::Verify { token, reply }, CALL_TIMEOUT).await??)
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// An authenticated caller: a valid `Authorization: Bearer` access token, or the web
/// session's cookie (with its CSRF token on state-changing requests; `http/session.rs`).
pub struct Authed(pub Principal);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        session::caller(state, parts).await.map(Authed)
    }
}
