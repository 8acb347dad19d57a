//! The seed project's routes, kept for its users: `POST /login` (HTTP Basic → the JWT as
//! the body), `POST /upload` (multipart, exactly one file), `GET /download?fid=ID`.
//! Errors keep the seed's plain-text bodies; the work is done by the `/v1` cores.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;

use super::{ApiError, AppState, download, jobs, upload};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/login", post(login))
        .route("/upload", post(upload_file).layer(DefaultBodyLimit::disable()))
        .route("/download", get(download_file))
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

async fn login(ConnectInfo(client): ConnectInfo<SocketAddr>, headers: HeaderMap) -> Result<String, ApiError> {
    let (email, password) = basic_credentials(&headers).ok_or_else(|| ApiError::missing_credentials().plain())?;
    super::auth::login(email, password, client.ip())
        .await
        .map(|issued| issued.token)
        .map_err(ApiError::plain)
}

async fn seed_principal(headers: &HeaderMap) -> Result<crate::auth::Principal, ApiError> {
    let token = super::bearer(headers).ok_or_else(|| ApiError::missing_credentials().plain())?;
    super::verify(token).await.map_err(ApiError::plain)
}

async fn upload_file(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let who = seed_principal(request.headers()).await?;
    let multipart = upload::multipart(request, &state).await.map_err(|e| {
        if e.code == "invalid_multipart" {
            ApiError::bad_request("invalid_request", "exactly 1 file required").plain()
        } else {
            // Too large, short of space, ...: said as the v1 routes say it, in plain text.
            e.plain()
        }
    })?;
    let one_file = ApiError::bad_request("invalid_request", "exactly 1 file required").plain();
    let upload = upload::receive(multipart, &state.config, one_file)
        .await
        .map_err(ApiError::plain)?;
    jobs::submit_upload(&state, who, upload, None).await
}

#[derive(Deserialize)]
struct Fid {
    fid: Option<String>,
}

async fn download_file(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(fid): Query<Fid>,
    request: Request,
) -> Result<Response, ApiError> {
    let who = seed_principal(&headers).await?;
    let fid = fid
        .fid
        .filter(|f| !f.is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid_request", "fid is required").plain())?;
    let id = jobs::job_id(&fid).map_err(ApiError::plain)?;
    download::serve(&state, id, Some(who), request)
        .await
        .map_err(ApiError::plain)
}
