//! The seed project's routes, kept for its users: `POST /login` (HTTP Basic → the JWT as
//! the body), `POST /upload` (multipart, exactly one file), `GET /download?fid=ID`.
//! Errors keep the seed's plain-text bodies; the work is done by the `/v1` cores.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::Response;
use base64::Engine;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorCode, download, jobs, multipart};

pub(super) fn router() -> OpenApiRouter<AppState> {
    let (schemas, paths, upload) = routes!(upload_file);
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes((schemas, paths, upload.layer(DefaultBodyLimit::disable())))
        .routes(routes!(download_file))
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

/// The original project's login: HTTP Basic credentials in, the access token (a JWT) out as
/// the body.
#[utoipa::path(post, path = "/login", tag = "seed", operation_id = "seed_login",
    security(("basic" = [])),
    responses(
        (status = 200, description = "The access token", body = String, content_type = "text/plain"),
        (status = 401, description = "`missing credentials` or `invalid credentials`", body = String, content_type = "text/plain",
            headers(("WWW-Authenticate" = String, description = "`Basic realm=\"mp4tomp3\"`"))),
        (status = 429, description = "Too many login attempts", body = String, content_type = "text/plain",
            headers(("Retry-After" = u64))),
        (status = 503, description = "Starting or stopping", body = String, content_type = "text/plain",
            headers(("Retry-After" = u64))),
    ))]
async fn login(ConnectInfo(client): ConnectInfo<SocketAddr>, headers: HeaderMap) -> Result<String, ApiError> {
    let (email, password) =
        basic_credentials(&headers).ok_or_else(|| ApiError::missing_credentials().plain().basic_challenge())?;
    super::auth::login(email, password, client.ip())
        .await
        .map(|issued| issued.token)
        .map_err(|e| e.plain().basic_challenge())
}

async fn seed_principal(headers: &HeaderMap) -> Result<crate::auth::Principal, ApiError> {
    let token = super::bearer(headers).ok_or_else(|| ApiError::missing_credentials().plain())?;
    super::verify(token).await.map_err(ApiError::plain)
}

/// The original project's upload: multipart with exactly one file; answers the job.
#[utoipa::path(post, path = "/upload", tag = "seed", operation_id = "seed_upload",
    security(("bearer" = [])),
    request_body(content((super::jobs::UploadForm = "multipart/form-data"))),
    responses(
        (status = 202, description = "Accepted: a new job", body = crate::view::JobJson,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 400, description = "`exactly 1 file required` (or bad settings)", body = String, content_type = "text/plain"),
        (status = 401, description = "`missing credentials` or a bad token", body = String, content_type = "text/plain",
            headers(("WWW-Authenticate" = String))),
        (status = 413, description = "Larger than `--max-upload-bytes`", body = String, content_type = "text/plain"),
        (status = 429, description = "Over the caller's quota (the message names the limit)", body = String,
            content_type = "text/plain", headers(("Retry-After" = u64))),
        (status = 503, description = "Starting or stopping", body = String, content_type = "text/plain",
            headers(("Retry-After" = u64))),
        (status = 507, description = "Short of disk space", body = String, content_type = "text/plain",
            headers(("Retry-After" = u64))),
    ))]
async fn upload_file(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let who = seed_principal(request.headers()).await?;
    let (multipart, mut place) = multipart::open(request, &state, &who, true).await.map_err(|e| {
        if e.code == ErrorCode::InvalidMultipart {
            ApiError::new(ErrorCode::InvalidRequest, "exactly 1 file required").plain()
        } else {
            // Too large, short of space, ...: said as the v1 routes say it, in plain text.
            e.plain()
        }
    })?;
    let one_file = ApiError::new(ErrorCode::InvalidRequest, "exactly 1 file required").plain();
    let mut upload = multipart::receive(multipart, &state.config, one_file, &mut place)
        .await
        .map_err(ApiError::plain)?;
    // The original route knows no webhooks (its answers stay as they were).
    upload.webhook_url = None;
    jobs::submit_upload(&state, who, upload, None, None)
        .await
        .map_err(ApiError::plain)
}

/// Which MP3.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Fid {
    /// The job's id.
    #[param(required = true)]
    fid: Option<String>,
}

/// The original project's download: the MP3 of a done job.
#[utoipa::path(get, path = "/download", tag = "seed", operation_id = "seed_download",
    security(("bearer" = [])),
    params(Fid),
    responses(
        (status = 200, description = "The MP3", body = [u8], content_type = "audio/mpeg"),
        (status = 206, description = "The requested range of the MP3", body = [u8], content_type = "audio/mpeg"),
        (status = 400, description = "`fid is required`", body = String, content_type = "text/plain"),
        (status = 401, description = "`missing credentials` or a bad token", body = String, content_type = "text/plain",
            headers(("WWW-Authenticate" = String))),
        (status = 404, description = "No such job", body = String, content_type = "text/plain"),
        (status = 409, description = "The job is not done", body = String, content_type = "text/plain"),
        (status = 503, description = "Starting or stopping, or the owner node is unreachable", body = String, content_type = "text/plain",
            headers(("Retry-After" = u64))),
    ))]

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
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "fid is required").plain())?;
    let id = jobs::job_id(&fid).map_err(ApiError::plain)?;
    download::serve(&state, id, Some(who), request)
        .await
        .map_err(ApiError::plain)
}
