//! `/v1/uploads`: resumable uploads, tus 1.0.0 (<https://tus.io/protocols/resumable-upload>):
//! Core (`HEAD`, `PATCH`), and the `creation`, `creation-with-upload`, `expiration`,
//! `termination` and `checksum` (sha256) extensions.
//!
//! An upload lives on the node that created it (its id names that node); the handlers here
//! speak the protocol and call `actors/request/resumable/client.rs`, which writes the
//! bytes (what is answered is fsynced) or forwards them to the storing node over the mesh,
//! with the same answers. The last byte turns the upload into a job with the same id
//! (`Mp4tomp3-Job` on that answer and on every later `HEAD`).

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::jobs::Holder;
use super::responses::{
    BadRequest, Conflict, InsufficientStorage, NotFound, QuotaExceeded, TooLarge, Unauthorized, Unavailable,
    Unprocessable, UnsupportedMediaType,
};
use super::{ApiError, AppState, Authed, ErrorCode};
use crate::actors::request::resumable::UploadState;
use crate::actors::request::resumable::appender::Written;
use crate::actors::request::resumable::client::{Append, ResumableError};
use crate::auth::Principal;
use crate::store::{JobId, NewUpload, now_ms};

/// The protocol version spoken.
pub(super) const TUS_VERSION: &str = "1.0.0";
/// The extensions supported.
const TUS_EXTENSIONS: &str = "creation,creation-with-upload,expiration,termination,checksum";
/// The body type of `PATCH` (and of a `POST` with data).
const OFFSET_STREAM: &str = "application/offset+octet-stream";

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(options, create))
        .routes(routes!(head, patch, terminate))
        .layer(axum::middleware::from_fn(tus_headers))
}

/// Every answer from these routes says `Tus-Resumable`, and a `412` the `Tus-Version`.
async fn tus_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let precondition_failed = response.status() == StatusCode::PRECONDITION_FAILED;
    let headers = response.headers_mut();
    headers.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    if precondition_failed {
        headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    }
    response
}

/// A tus request must say `Tus-Resumable: 1.0.0` (`412` otherwise).
fn require_tus(headers: &HeaderMap) -> Result<(), ApiError> {
    if header(headers, "tus-resumable") == Some(TUS_VERSION) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::UnsupportedVersion,
        format!("send Tus-Resumable: {TUS_VERSION}"),
    ))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    header(headers, name)
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, format!("{name} must be a number of bytes")))
        })
        .transpose()
}

fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

fn set(headers: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// The settings `Upload-Metadata` carries: `filename`, `bitrate` or `vbr`, `webhook_url`.
struct Settings {
    file_name: String,
    bitrate: Option<u16>,
    vbr: Option<u8>,
    webhook_url: Option<String>,
}

/// The longest `Upload-Metadata` taken: a file name and three settings fit many times over,
/// and the header is stored with the upload.
const MAX_METADATA_BYTES: usize = 4096;

/// Parses `key base64,key base64,...` (a key alone has an empty value).
fn metadata(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    let bad = |m: String| ApiError::new(ErrorCode::InvalidMetadata, m);
    if raw.len() > MAX_METADATA_BYTES {
        return Err(bad(format!(
            "Upload-Metadata is {} bytes; at most {MAX_METADATA_BYTES} are taken",
            raw.len()
        )));
    }
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| bad(format!("the value of {key:?} is not base64")))?;
            let value = String::from_utf8(bytes).map_err(|_| bad(format!("the value of {key:?} is not UTF-8")))?;
            Ok((key.to_string(), value))
        })
        .collect()
}

/// The settings `Upload-Metadata` carries, checked for their form only (the webhook's
/// address is not looked at yet).
fn shape(state: &AppState, raw: &str) -> Result<Settings, ApiError> {
    let pairs = metadata(raw)?;
    let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let bitrate = super::jobs::parse_field::<u16>("bitrate", get("bitrate"))?;
    let vbr = super::jobs::parse_field::<u8>("vbr", get("vbr"))?;
    let (bitrate, vbr) = super::jobs::quality(bitrate, vbr)?;
    let webhook_url = get("webhook_url");
    super::jobs::webhook_syntax(state, webhook_url.as_deref())?;
    let file_name = get("filename")
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "upload.mp4".to_string());
    Ok(Settings {
        file_name,
        bitrate,
        vbr,
        webhook_url,
    })
}

/// The settings, with the webhook checked where it leads (and the caller's secret).
async fn settings(state: &AppState, who: &Principal, shaped: Settings) -> Result<Settings, ApiError> {
    let webhook_url = super::jobs::webhook_url(state, &who.email, shaped.webhook_url.as_deref()).await?;
    Ok(Settings { webhook_url, ..shaped })
}

/// What the server supports: tus version, extensions, the largest upload, checksums.
#[utoipa::path(options, path = "/v1/uploads", tag = "uploads", operation_id = "tus_options",
    responses((status = 204, description = "Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm",
        headers(("Tus-Version" = String), ("Tus-Extension" = String), ("Tus-Max-Size" = u64),
            ("Tus-Checksum-Algorithm" = String)))))]
async fn options(State(state): State<AppState>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    set(h, "tus-version", TUS_VERSION);
    set(h, "tus-extension", TUS_EXTENSIONS);
    set(h, "tus-max-size", state.config.max_upload_bytes);
    set(h, "tus-checksum-algorithm", "sha256");
    r
}

/// Creates an upload of `Upload-Length` bytes (`413` over the limit), with `filename`,
/// `bitrate` or `vbr`, and `webhook_url` in `Upload-Metadata`; a body
/// (`application/offset+octet-stream`) is its first bytes. With an `Idempotency-Key`
/// already used for an upload, answers that upload.
#[utoipa::path(post, path = "/v1/uploads", tag = "uploads", operation_id = "create_upload",
    security(("bearer" = [])),
    params(
        ("Tus-Resumable" = String, Header, description = "1.0.0"),
        ("Upload-Length" = u64, Header, description = "The file's size in bytes"),
        ("Upload-Metadata" = Option<String>, Header, description = "`filename`, `bitrate`, `vbr`, `webhook_url`: `key base64value` pairs, comma-separated"),
        ("Idempotency-Key" = Option<String>, Header, description = "One upload (and one job) per key and user"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream", description = "Optional: the first bytes"),
    responses(
        (status = 201, description = "Created", headers(("Location" = String, description = "The upload's URL"),
            ("Upload-Offset" = u64), ("Upload-Expires" = String))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 412, description = "No (or another) Tus-Resumable"),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = QuotaExceeded),
        (status = 503, response = Unavailable),
        (status = 507, response = InsufficientStorage),
    ))]
async fn create(State(state): State<AppState>, Authed(who): Authed, request: Request) -> Result<Response, Response> {
    let (parts, body) = request.into_parts();
    require_tus(&parts.headers).map_err(IntoResponse::into_response)?;
    // On a task of its own: a client that goes away while its upload is being admitted
    // does not leave an admission (a quota count, its key's claim) without its upload.
    tokio::spawn(async move { created(&state, &who, &parts.headers, body).await })
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("an upload's creation task ended: {e}"))))
        .map_err(IntoResponse::into_response)
}

async fn created(state: &AppState, who: &Principal, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    if header(headers, "upload-defer-length").is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "Upload-Defer-Length is not supported: send Upload-Length",
        ));
    }
    let length = number(headers, "upload-length")?
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "Upload-Length is required"))?;
    if length > state.config.max_upload_bytes {
        return Err(ApiError::too_large(state.config.max_upload_bytes));
    }
    let key = super::jobs::idempotency_key(headers)?;
    let raw = header(headers, "upload-metadata").unwrap_or("").to_string();
    let shaped = shape(state, &raw)?;
    // Then the key (one rule for every route): a job made under it, on any node and by any
    // route (multipart, import, an upload finished), answers as a finished upload; a new
    // upload would be a second job for one key.
    if let Some(job) = super::jobs::earlier_job(state, who, key.as_deref()).await? {
        let done = Written {
            received: length,
            expires_ms: 0,
            job: Some(job.id.clone()),
        };
        return Ok(created_answer(&job.id, &done));
    }
    let s = settings(state, who, shaped).await?;
    crate::actors::request::room_for(&state.config, length).await?;
    // Held until the upload is stored (it counts as unfinished itself then).
    let _place = super::quota::within_quota(state, who, length).await?;
    let id = JobId::new(&state.config.node_name);
    // Admitted through the log (the quota against the committed counters), with the key
    // claimed for this upload (its id is its job's) in the same entry, before anything is
    // stored.
    let bytes = i64::try_from(length).unwrap_or(i64::MAX);
    match super::jobs::claim_and_admit(state, who, key.as_deref(), &id, None, bytes).await {
        Ok(Holder::Mine) => {}
        Ok(Holder::Job(job)) => {
            let done = Written {
                received: length,
                expires_ms: 0,
                job: Some(job.id.clone()),
            };
            return Ok(created_answer(&job.id, &done));
        }
        Ok(Holder::Upload(earlier)) => {
            let at = state.resumable.state(earlier.clone(), who.clone()).await?;
            let w = Written {
                received: at.received,
                expires_ms: at.expires_ms,
                job: at.job,
            };
            return Ok(created_answer(&earlier, &w));
        }
        Err(e) => {
            // A write that timed out may still commit: its claim is taken back (in the
            // background: compare-and-delete).
            if key.is_some() {
                state.jobs.forget(id, who.email.clone(), key);
            }
            return Err(e);
        }
    }
    let upload = NewUpload {
        id: id.clone(),
        owner_email: who.email.clone(),
        length,
        metadata: raw,
        file_name: s.file_name,
        bitrate_kbps: s.bitrate,
        vbr_quality: s.vbr,
        webhook_url: s.webhook_url,
        idempotency_key: key.clone(),
        expires_at_ms: now_ms() + state.config.upload_expiry.as_millis() as i64,
    };
    let (stored, new) = match state.resumable.create(upload).await {
        Ok(created) => created,
        Err(e) => {
            // Its admission (and claim) given back: nothing was made.
            state.jobs.forget(id, who.email.clone(), key);
            return Err(e.into());
        }
    };
    let with_data = header(headers, "content-type").is_some_and(|t| t.starts_with(OFFSET_STREAM));
    let id = stored.new.id.clone();
    let w = if new && with_data {
        let at = append_at(0, headers)?;
        let body = body_stream(state, body);
        let w = state
            .resumable
            .write_here(stored, at, body)
            .await
            .map_err(upload_error)?;
        became_a_job(state, who, &w, key).await;
        w
    } else {
        Written {
            received: stored.received,
            expires_ms: stored.new.expires_at_ms,
            job: None,
        }
    };
    Ok(created_answer(&id, &w))
}

/// An upload that just became a job goes in the directory before the client hears of it
/// (as a job submitted any other way).
async fn became_a_job(state: &AppState, who: &Principal, w: &Written, key: Option<String>) {
    if let Some(id) = &w.job
        && let Ok(job) = state.jobs.get(id.clone(), who.clone()).await
    {
        // The upload was accepted at its creation: its job stays, and the feed publishes it
        // once a leader is back.
        let _ = super::jobs::announce(state, &job, key).await;
    }
}

/// `201` for upload `id`: its `Location` and progress.
fn created_answer(id: &JobId, w: &Written) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    set(h, "location", format!("/v1/uploads/{id}"));
    progress_headers(h, w);
    r
}

/// `Upload-Offset`, `Upload-Expires` (while unfinished) and, once the upload is a job,
/// `Mp4tomp3-Job` with its URL.
fn progress_headers(h: &mut HeaderMap, w: &Written) {
    set(h, "upload-offset", w.received);
    match &w.job {
        Some(job) => set(h, "mp4tomp3-job", format!("/v1/jobs/{job}")),
        None => set(h, "upload-expires", http_date(w.expires_ms)),
    }
}

/// Upload `raw`'s id.
fn locate(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).ok_or_else(upload_not_found)
}

/// A `not_found` about an upload says so.
fn upload_error(e: ResumableError) -> ApiError {
    let e = ApiError::from(e);
    if e.status == StatusCode::NOT_FOUND {
        upload_not_found()
    } else {
        e
    }
}

fn upload_not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such upload (or it expired)")
}

/// How much of the upload has arrived (`Upload-Offset`), its length and metadata, and when
/// it expires; once complete, its job (`Mp4tomp3-Job`).
#[utoipa::path(head, path = "/v1/uploads/{id}", tag = "uploads", operation_id = "upload_offset",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The upload's id"), ("Tus-Resumable" = String, Header, description = "1.0.0")),
    responses(
        (status = 200, description = "The offset", headers(("Upload-Offset" = u64), ("Upload-Length" = u64),
            ("Upload-Expires" = String), ("Upload-Metadata" = String), ("Mp4tomp3-Job" = String))),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 412, description = "No (or another) Tus-Resumable"),
        (status = 503, response = Unavailable),
    ))]
async fn head(
    State(state): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    require_tus(&headers).map_err(IntoResponse::into_response)?;
    upload_state(&state, who, &id)
        .await
        .map_err(IntoResponse::into_response)
}

async fn upload_state(state: &AppState, who: Principal, raw: &str) -> Result<Response, ApiError> {
    let id = locate(raw)?;
    let s: UploadState = state.resumable.state(id, who).await.map_err(upload_error)?;
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    let w = Written {
        received: s.received,
        expires_ms: s.expires_ms,
        job: s.job,
    };
    progress_headers(h, &w);
    set(h, "upload-length", s.length);
    if !s.metadata.is_empty() {
        set(h, "upload-metadata", &s.metadata);
    }
    set(h, "cache-control", "no-store");
    Ok(r)
}

/// Appends the body at `Upload-Offset` (which must be the upload's offset: else `409`).
/// With `Upload-Checksum: sha256 BASE64`, a body whose digest differs is dropped (`460`).
/// The answer's `Upload-Offset` is on disk; the last byte makes the job (`Mp4tomp3-Job`).
#[utoipa::path(patch, path = "/v1/uploads/{id}", tag = "uploads", operation_id = "upload_bytes",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The upload's id"),
        ("Tus-Resumable" = String, Header, description = "1.0.0"),
        ("Upload-Offset" = u64, Header, description = "Where this body starts"),
        ("Upload-Checksum" = Option<String>, Header, description = "`sha256 BASE64` of this body"),
    ),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "Stored", headers(("Upload-Offset" = u64), ("Upload-Expires" = String),
            ("Mp4tomp3-Job" = String, description = "The job, once the upload is complete"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 412, description = "No (or another) Tus-Resumable"),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 460, description = "Checksum mismatch: nothing of this body was kept"),
        (status = 503, response = Unavailable),
        (status = 507, response = InsufficientStorage),
    ))]
async fn patch(
    State(state): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, Response> {
    let (parts, body) = request.into_parts();
    require_tus(&parts.headers).map_err(IntoResponse::into_response)?;
    patched(&state, &who, &id, &parts.headers, body)
        .await
        .map_err(IntoResponse::into_response)
}

async fn patched(
    state: &AppState,
    who: &Principal,
    raw: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !header(headers, "content-type").is_some_and(|t| t.starts_with(OFFSET_STREAM)) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("send Content-Type: {OFFSET_STREAM}"),
        ));
    }
    let offset = number(headers, "upload-offset")?
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "Upload-Offset is required"))?;
    let id = locate(raw)?;
    let at = append_at(offset, headers)?;
    let body = body_stream(state, body);
    let w = state
        .resumable
        .append(id, who.clone(), at, body)
        .await
        .map_err(upload_error)?;
    became_a_job(state, who, &w, None).await;
    let mut r = StatusCode::NO_CONTENT.into_response();
    progress_headers(r.headers_mut(), &w);
    Ok(r)
}

/// Deletes an unfinished upload and its bytes (a job it became stays).
#[utoipa::path(delete, path = "/v1/uploads/{id}", tag = "uploads", operation_id = "delete_upload",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The upload's id"), ("Tus-Resumable" = String, Header, description = "1.0.0")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 412, description = "No (or another) Tus-Resumable"),
        (status = 503, response = Unavailable),
    ))]
async fn terminate(
    State(state): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Response> {
    require_tus(&headers).map_err(IntoResponse::into_response)?;
    deleted(&state, who, &id).await.map_err(IntoResponse::into_response)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deleted(state: &AppState, who: Principal, raw: &str) -> Result<(), ApiError> {
    let id = locate(raw)?;
    state.resumable.delete(id, who).await.map_err(upload_error)
}

/// The body of a request, as it arrives (dropped when too slow).
fn body_stream(state: &AppState, body: Body) -> axum::body::BodyDataStream {
    let config = &state.config;
    super::serve::min_rate(body, config.min_upload_rate, config.slow_upload_window).into_data_stream()
}

/// A body at `offset`, with its `Upload-Checksum` and `Content-Length`.
fn append_at(offset: u64, headers: &HeaderMap) -> Result<Append, ApiError> {
    let checksum = header(headers, "upload-checksum").map(checksum).transpose()?;
    Ok(Append {
        offset,
        checksum,
        declared: super::multipart::declared_length(headers),
    })
}

/// `sha256 BASE64` → the digest.
fn checksum(raw: &str) -> Result<Vec<u8>, ApiError> {
    let (algorithm, value) = raw.trim().split_once(' ').unwrap_or((raw.trim(), ""));
    if !algorithm.eq_ignore_ascii_case("sha256") {
        return Err(ApiError::new(
            ErrorCode::InvalidChecksum,
            format!("checksum algorithm {algorithm:?} is not supported; use sha256"),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()
        .filter(|d| d.len() == 32)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidChecksum,
                "Upload-Checksum: sha256 needs a base64 SHA-256 digest",
            )
        })
}
