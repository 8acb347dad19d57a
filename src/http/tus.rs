//! `/v1/uploads`: resumable uploads, tus 1.0.0 (<https://tus.io/protocols/resumable-upload>):
//! Core (`HEAD`, `PATCH`), and the `creation`, `creation-with-upload`, `expiration`,
//! `termination` and `checksum` (sha256) extensions.
//!
//! Bytes go straight into the upload's file; the offset a `PATCH` answers is fsynced and
//! recorded (on the request actor, `actors/request/uploads.rs`) before the answer, and every
//! [`SYNC_EVERY`] bytes on the way, so a client cut off (or a server killed) resumes from
//! the last recorded offset: bytes past it are cut off before the next write. The last byte
//! turns the upload into a job with the same id (`Location` of that answer, and of every
//! later `HEAD`, names it).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{
    BadRequest, Conflict, InsufficientStorage, NotFound, TooLarge, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::{ApiError, AppState, Authed};
use crate::actors::request::RequestMsg;
use crate::actors::request::uploads::UploadCall;
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::auth::Principal;
use crate::store::{Files, Job, JobId, NewUpload, Upload, now_ms};

/// The protocol version spoken.
const TUS_VERSION: &str = "1.0.0";
/// The extensions supported.
const TUS_EXTENSIONS: &str = "creation,creation-with-upload,expiration,termination,checksum";
/// Bytes written between fsyncs (and recorded offsets) within one `PATCH`.
const SYNC_EVERY: u64 = 16 << 20;
/// The body type of `PATCH` (and of a `POST` with data).
const OFFSET_STREAM: &str = "application/offset+octet-stream";

/// Uploads a `PATCH` is writing now: one writer per upload.
#[derive(Clone, Default)]
pub struct Writing(Arc<Mutex<HashSet<JobId>>>);

/// An upload's place in [`Writing`], given back when dropped.
struct Writer(Writing, JobId);

impl Writing {
    fn take(&self, id: &JobId) -> Option<Writer> {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id.clone()).then(|| Writer(self.clone(), id.clone()))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
    }
}

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
        StatusCode::PRECONDITION_FAILED,
        "unsupported_version",
        format!("send Tus-Resumable: {TUS_VERSION}"),
    ))
}

async fn call<T: Send + 'static>(
    make: impl FnOnce(ractor::RpcReplyPort<Result<T, crate::actors::request::JobError>>) -> UploadCall,
) -> Result<T, ApiError> {
    Ok(ask(Role::Request, |reply| RequestMsg::Upload(make(reply)), CALL_TIMEOUT).await??)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    header(headers, name)
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("invalid_request", format!("{name} must be a number of bytes")))
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

/// Parses `key base64,key base64,...` (a key alone has an empty value).
fn metadata(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_metadata", m);
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

async fn settings(state: &AppState, who: &Principal, raw: &str) -> Result<Settings, ApiError> {
    let pairs = metadata(raw)?;
    let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let bitrate = super::jobs::parse_field::<u16>("bitrate", get("bitrate"))?;
    let vbr = super::jobs::parse_field::<u8>("vbr", get("vbr"))?;
    let (bitrate, vbr) = super::jobs::quality(bitrate, vbr)?;
    let webhook_url = super::jobs::webhook_url(state, &who.email, get("webhook_url").as_deref()).await?;
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
        (status = 503, response = Unavailable),
        (status = 507, response = InsufficientStorage),
    ))]
async fn create(State(state): State<AppState>, Authed(who): Authed, request: Request) -> Result<Response, Response> {
    let (parts, body) = request.into_parts();
    require_tus(&parts.headers).map_err(IntoResponse::into_response)?;
    created(&state, &who, &parts.headers, body)
        .await
        .map_err(IntoResponse::into_response)
}

async fn created(state: &AppState, who: &Principal, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    if header(headers, "upload-defer-length").is_some() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "Upload-Defer-Length is not supported: send Upload-Length",
        ));
    }
    let length = number(headers, "upload-length")?
        .ok_or_else(|| ApiError::bad_request("invalid_request", "Upload-Length is required"))?;
    if length > state.config.max_upload_bytes {
        return Err(ApiError::too_large(state.config.max_upload_bytes));
    }
    let key = super::jobs::idempotency_key(headers)?;
    let raw = header(headers, "upload-metadata").unwrap_or("").to_string();
    let s = settings(state, who, &raw).await?;
    super::upload::room_for(&state.config, length).await?;
    let upload = NewUpload {
        id: JobId::new(&state.config.node_name),
        owner_email: who.email.clone(),
        length,
        metadata: raw,
        file_name: s.file_name,
        bitrate_kbps: s.bitrate,
        vbr_quality: s.vbr,
        webhook_url: s.webhook_url,
        idempotency_key: key,
        expires_at_ms: now_ms() + state.config.upload_expiry.as_millis() as i64,
    };
    let (stored, new) = call(|reply| UploadCall::Create { upload, reply }).await?;
    let with_data = header(headers, "content-type").is_some_and(|t| t.starts_with(OFFSET_STREAM));
    let id = stored.new.id.clone();
    let (received, expires, job) = if new && with_data {
        write(state, stored, 0, headers, body).await?
    } else {
        (stored.received, stored.new.expires_at_ms, None)
    };
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    set(h, "location", format!("/v1/uploads/{id}"));
    progress_headers(h, received, expires, job.as_ref());
    Ok(r)
}

/// `Upload-Offset`, `Upload-Expires` (while unfinished) and, once the upload is a job,
/// `Mp4tomp3-Job` with its URL.
fn progress_headers(h: &mut HeaderMap, received: u64, expires_ms: i64, job: Option<&Job>) {
    set(h, "upload-offset", received);
    match job {
        Some(job) => set(h, "mp4tomp3-job", format!("/v1/jobs/{}", job.id)),
        None => set(h, "upload-expires", http_date(expires_ms)),
    }
}

/// The upload, if the caller's.
async fn find(who: &Principal, raw: &str) -> Result<Upload, ApiError> {
    let id = JobId::parse(raw).ok_or_else(upload_not_found)?;
    let who = who.clone();
    call(|reply| UploadCall::Get { id, who, reply }).await.map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            upload_not_found()
        } else {
            e
        }
    })
}

fn upload_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such upload (or it expired)")
}

/// The job an upload became, if it is complete.
async fn job_of(upload: &Upload) -> Result<Option<Job>, ApiError> {
    if upload.received < upload.new.length {
        return Ok(None);
    }
    let id = upload.new.id.clone();
    call(|reply| UploadCall::Complete { id, reply }).await.map(Some)
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
async fn head(Authed(who): Authed, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, Response> {
    require_tus(&headers).map_err(IntoResponse::into_response)?;
    let upload = find(&who, &id).await.map_err(IntoResponse::into_response)?;
    upload_state(upload).await.map_err(IntoResponse::into_response)
}

async fn upload_state(upload: Upload) -> Result<Response, ApiError> {
    let job = job_of(&upload).await?;
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    progress_headers(h, upload.received, upload.new.expires_at_ms, job.as_ref());
    set(h, "upload-length", upload.new.length);
    if !upload.new.metadata.is_empty() {
        set(h, "upload-metadata", &upload.new.metadata);
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
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !header(headers, "content-type").is_some_and(|t| t.starts_with(OFFSET_STREAM)) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send Content-Type: {OFFSET_STREAM}"),
        ));
    }
    let offset = number(headers, "upload-offset")?
        .ok_or_else(|| ApiError::bad_request("invalid_request", "Upload-Offset is required"))?;
    let upload = find(who, id).await?;
    let (received, expires, job) = write(state, upload, offset, headers, body).await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    progress_headers(r.headers_mut(), received, expires, job.as_ref());
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
async fn terminate(Authed(who): Authed, Path(id): Path<String>, headers: HeaderMap) -> Result<StatusCode, Response> {
    require_tus(&headers).map_err(IntoResponse::into_response)?;
    let upload = find(&who, &id).await.map_err(IntoResponse::into_response)?;
    let id = upload.new.id;
    call(|reply| UploadCall::Delete { id, who, reply })
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Appends `body` at `offset` to the upload's file: answers the offset now on disk, its
/// new expiry, and the job if the upload is now complete.
async fn write(
    state: &AppState,
    upload: Upload,
    offset: u64,
    headers: &HeaderMap,
    body: Body,
) -> Result<(u64, i64, Option<Job>), ApiError> {
    let id = upload.new.id.clone();
    if offset != upload.received {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "offset_mismatch",
            format!("the upload is at offset {}, not {offset}", upload.received),
        ));
    }
    if upload.received == upload.new.length {
        let job = job_of(&upload).await?;
        return Ok((upload.received, upload.new.expires_at_ms, job));
    }
    let checksum = header(headers, "upload-checksum").map(checksum).transpose()?;
    if let Some(n) = super::upload::declared_length(headers)
        && offset + n > upload.new.length
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body would end past Upload-Length ({})", upload.new.length),
        ));
    }
    let _writer = state.writing.take(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "upload_busy",
            "another request is writing this upload",
        )
    })?;
    let path = Files::at(&state.config.data_dir).upload(&id);
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .await
        .map_err(ApiError::internal)?;
    // Bytes past the recorded offset were never confirmed: they go.
    file.set_len(offset).await.map_err(ApiError::internal)?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(ApiError::internal)?;
    let config = &state.config;
    let body = super::serve::min_rate(body, config.min_upload_rate, config.slow_upload_window);
    let mut stream = body.into_data_stream();
    let mut digest = checksum
        .as_ref()
        .map(|_| aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256));
    let (mut at, mut synced, mut expires) = (offset, offset, upload.new.expires_at_ms);
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                failure = Some(ApiError::bad_request(
                    "invalid_request",
                    format!("the body broke off: {e}"),
                ));
                break;
            }
        };
        if at + chunk.len() as u64 > upload.new.length {
            failure = Some(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body goes past Upload-Length ({})", upload.new.length),
            ));
            break;
        }
        if let Err(e) = file.write_all(&chunk).await {
            failure = Some(write_error(e));
            break;
        }
        if let Some(d) = digest.as_mut() {
            d.update(&chunk);
        }
        at += chunk.len() as u64;
        // Without a checksum, what arrived counts as it arrives (a cut-off client resumes
        // close to where it was); with one, only a whole, verified body does.
        if digest.is_none() && at - synced >= SYNC_EVERY {
            expires = record(&mut file, &id, at).await?;
            synced = at;
        }
    }
    if let (Some(expected), Some(d)) = (checksum, digest) {
        let ok = failure.is_none() && d.finish().as_ref() == expected.as_slice();
        if !ok {
            let _ = file.set_len(offset).await;
            return Err(failure.unwrap_or_else(|| {
                ApiError::new(
                    StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
                    "checksum_mismatch",
                    "the body's sha256 differs from Upload-Checksum; nothing of it was kept",
                )
            }));
        }
    }
    if at > synced {
        match record(&mut file, &id, at).await {
            Ok(e) => expires = e,
            Err(e) => return Err(failure.unwrap_or(e)),
        }
    }
    if let Some(failure) = failure {
        return Err(failure);
    }
    let job = if at == upload.new.length {
        drop(file);
        let done = Upload { received: at, ..upload };
        job_of(&done).await?
    } else {
        None
    };
    Ok((at, expires, job))
}

/// Fsyncs the file and records `at` as the upload's offset; answers the new expiry.
async fn record(file: &mut tokio::fs::File, id: &JobId, at: u64) -> Result<i64, ApiError> {
    file.flush().await.map_err(write_error)?;
    file.sync_data().await.map_err(write_error)?;
    let id = id.clone();
    call(|reply| UploadCall::Received {
        id,
        received: at,
        reply,
    })
    .await
}

fn write_error(e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        ApiError::insufficient_storage()
    } else {
        ApiError::internal(e)
    }
}

/// `sha256 BASE64` → the digest.
fn checksum(raw: &str) -> Result<Vec<u8>, ApiError> {
    let (algorithm, value) = raw.trim().split_once(' ').unwrap_or((raw.trim(), ""));
    if !algorithm.eq_ignore_ascii_case("sha256") {
        return Err(ApiError::bad_request(
            "invalid_checksum",
            format!("checksum algorithm {algorithm:?} is not supported; use sha256"),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()
        .filter(|d| d.len() == 32)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_checksum",
                "Upload-Checksum: sha256 needs a base64 SHA-256 digest",
            )
        })
}
