//! Multipart uploads, streamed to `DATA/tmp/` with the size cap; never whole in memory.

use axum::extract::multipart::Field;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::CONTENT_LENGTH;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{ApiError, AppState, ErrorCode};
use crate::actors::request::quota::Place;
use crate::actors::request::room_for;
use crate::auth::Principal;
use crate::config::Config;
use crate::store::{Files, StagedInput};

/// Multipart overhead allowed above the file cap in `Content-Length`.
const MULTIPART_SLACK: u64 = 64 * 1024;
/// Most bytes of a refused body read (and discarded) so the client gets the answer.
const DRAIN_LIMIT: u64 = 16 << 20;
/// Longest text field accepted.
const MAX_FIELD: usize = 1024;
/// How often (in bytes received) an upload of unknown length checks the free space.
const SPACE_CHECK_EVERY: u64 = 8 << 20;

/// The body's length as its `Content-Length` announces it.
pub(super) fn declared_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The request's one file, on disk, and its text fields.
pub(super) struct MultipartForm {
    /// The staged file (deleted unless a job adopts it).
    pub input: StagedInput,
    /// The client's file name.
    pub file_name: String,
    /// `bitrate` field.
    pub bitrate: Option<String>,
    /// `vbr` field.
    pub vbr: Option<String>,
    /// `webhook_url` field.
    pub webhook_url: Option<String>,
}

/// Refuses a body whose declared length is already over the cap (or the disk's room, or the
/// caller's quota), else reads it as multipart.
///
/// A refused body of moderate size is read and discarded first: a client still sending
/// would otherwise meet a reset connection instead of the `413`.
pub(super) async fn open(
    request: Request,
    state: &AppState,
    who: &Principal,
    new: bool,
) -> Result<(Multipart, Place), ApiError> {
    let declared = declared_length(request.headers());
    let cap = state.config.max_upload_bytes;
    if let Some(n) = declared.filter(|n| *n > cap + MULTIPART_SLACK) {
        if n <= cap + DRAIN_LIMIT {
            let mut body = request.into_body().into_data_stream();
            while let Some(Ok(_)) = body.next().await {}
        }
        return Err(ApiError::too_large(cap));
    }
    // A retry (`new` false) becomes no job: it needs no room and no quota.
    let place = if new {
        room_for(&state.config, declared.unwrap_or(0)).await?;
        super::quota::within_quota(state, who, declared.unwrap_or(0)).await?
    } else {
        Place::none()
    };
    let (config, request) = (&state.config, request);
    let request = request.map(|body| super::serve::min_rate(body, config.min_upload_rate, config.slow_upload_window));
    let multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::new(ErrorCode::InvalidMultipart, e.body_text()))?;
    Ok((multipart, place))
}

/// Reads and discards the rest of a refused multipart body, up to [`DRAIN_LIMIT`].
async fn drain(mut field: Field<'_>) {
    let mut read = 0u64;
    while let Ok(Some(chunk)) = field.chunk().await {
        read += chunk.len() as u64;
        if read > DRAIN_LIMIT {
            return;
        }
    }
}

/// Reads the multipart body: exactly one file part (any field name), optional `bitrate`,
/// `vbr` and `webhook_url` text fields. `one_file` is the error for zero or several files.
/// The file's bytes count against the caller's quota as they arrive (`place`).
pub(super) async fn receive(
    mut multipart: Multipart,
    config: &Config,
    one_file: ApiError,
    place: &mut Place,
) -> Result<MultipartForm, ApiError> {
    let files = Files::new(&config.data_dir).map_err(ApiError::internal)?;
    let bad = |e: axum::extract::multipart::MultipartError| ApiError::new(ErrorCode::InvalidMultipart, e.body_text());
    let mut staged: Option<StagedInput> = None;
    let mut file_name = None;
    let (mut bitrate, mut vbr, mut webhook_url) = (None, None, None);
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        if let Some(name) = field.file_name().map(str::to_string) {
            if staged.is_some() {
                return Err(one_file);
            }
            let path = files
                .tmp_dir()
                .join(format!("upload-{}", crate::store::JobId::new("u").as_str()));
            let input = StagedInput::new(path);
            let mut out = tokio::fs::File::create(input.path())
                .await
                .map_err(ApiError::internal)?;
            staged = Some(input);
            let mut size = 0u64;
            let mut checked = 0u64;
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                size += chunk.len() as u64;
                if size > config.max_upload_bytes {
                    drain(field).await;
                    return Err(ApiError::too_large(config.max_upload_bytes));
                }
                if let Err(e) = place.grow(size) {
                    drain(field).await;
                    return Err(e.into());
                }
                // A body without a length (or a lying one) is checked as it grows.
                if size - checked >= SPACE_CHECK_EVERY {
                    checked = size;
                    room_for(config, 0).await?;
                }
                out.write_all(&chunk).await.map_err(ApiError::internal)?;
            }
            out.sync_all().await.map_err(ApiError::internal)?;
            file_name = Some(name);
        } else {
            let key = field.name().unwrap_or_default().to_string();
            let mut value = String::new();
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                value.push_str(&String::from_utf8_lossy(&chunk));
                if value.len() > MAX_FIELD {
                    return Err(ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!("field {key:?} is too long"),
                    ));
                }
            }
            match key.as_str() {
                "bitrate" => bitrate = Some(value),
                "vbr" => vbr = Some(value),
                "webhook_url" => webhook_url = Some(value),
                _ => {}
            }
        }
    }
    match (staged, file_name) {
        (Some(input), Some(file_name)) => Ok(MultipartForm {
            input,
            file_name,
            bitrate,
            vbr,
            webhook_url,
        }),
        _ => Err(one_file),
    }
}
