//! MP3 downloads: `GET /v1/jobs/{id}/mp3` (Bearer) and `GET /v1/links/{token}` (the signed
//! link from the email, no login). The seed's `GET /download?fid=` uses [`serve`].
//!
//! tower-http's `ServeFile` streams the file and answers Range, HEAD and conditional
//! requests; we add the `Content-Disposition`, and decide first which Range is honoured
//! ([`honoured_range`]: one byte range, with a matching `If-Range` if any).

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, IF_RANGE, RANGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::responses::{Conflict, NotFound, Unauthorized, Unavailable};
use super::{ApiError, AppState, Authed, ErrorCode};
use crate::actors::request::client::Mp3;
use crate::auth::Principal;
use crate::store::JobId;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(by_job)).routes(routes!(by_link))
}

/// Streams the MP3 of job `id` to `who` (`None`: a verified signed link).
pub(super) async fn serve(
    state: &AppState,
    id: JobId,
    who: Option<Principal>,
    request: Request,
) -> Result<Response, ApiError> {
    // A streamed MP3 (from the node that has it) carries no validator, so no If-Range can
    // match it.
    let mut streamed_headers = request.headers().clone();
    honoured_range(&mut streamed_headers, None);
    let range = byte_range(&streamed_headers);
    let file = match state.jobs.mp3(&id, who.as_ref(), range).await? {
        Mp3::Here(file) => file,
        Mp3::Streamed {
            file_name,
            total,
            start,
            end,
            bytes,
        } => return streamed(&file_name, total, range.map(|_| (start, end)), bytes),
        Mp3::Unsatisfiable { total } => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            r.headers_mut().insert(
                CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{total}")).map_err(ApiError::internal)?,
            );
            return Ok(r);
        }
    };
    let mut request = request;
    let modified = tokio::fs::metadata(&file.path)
        .await
        .and_then(|m| m.modified())
        .ok()
        .map(httpdate::fmt_http_date);
    honoured_range(request.headers_mut(), modified.as_deref());
    let response = ServeFile::new(&file.path)
        .oneshot(request)
        .await
        .map_err(ApiError::internal)?;
    if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        let mut refused =
            ApiError::new(ErrorCode::RangeNotSatisfiable, "the range is outside the file").into_response();
        if let Some(range) = response.headers().get(CONTENT_RANGE) {
            refused.headers_mut().insert(CONTENT_RANGE, range.clone());
        }
        return Ok(refused);
    }
    if response.status() == axum::http::StatusCode::NOT_FOUND {
        return Err(ApiError::internal(format!(
            "MP3 of {} missing at {}",
            file.id,
            file.path.display()
        )));
    }
    let mut response = response.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("audio/mpeg"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    if let Ok(value) = HeaderValue::from_str(&content_disposition(&file.file_name)) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The response of an MP3 streamed from another node: `range` (first, last) of `total`
/// bytes, or all of them.
fn streamed(
    file_name: &str,
    total: u64,
    range: Option<(u64, u64)>,
    bytes: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
) -> Result<Response, ApiError> {
    let (start, end) = range.unwrap_or((0, total.saturating_sub(1)));
    let length = (end + 1).saturating_sub(start);
    let mut response = Response::new(Body::from_stream(bytes));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("audio/mpeg"));
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(length));
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let value = format!("bytes {start}-{end}/{total}");
        response.headers_mut().insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&value).map_err(ApiError::internal)?,
        );
    }
    if let Ok(value) = HeaderValue::from_str(&content_disposition(file_name)) {
        response.headers_mut().insert(CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `bytes=a-b` / `bytes=a-` (one range only); `None` for anything else (whole file).
fn byte_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let spec = headers.get(RANGE)?.to_str().ok()?.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        None
    } else {
        Some(b.trim().parse().ok()?)
    };
    Some((start, end))
}

/// Keeps the request's `Range` only where RFC 9110 says it is honoured: one range in
/// bytes (another unit, or several ranges, get the whole file: 200), and, with `If-Range`,
/// only when its validator equals the file's `last_modified` (a stale or foreign validator
/// gets the whole file). `If-Range` is settled here and removed.
fn honoured_range(headers: &mut HeaderMap, last_modified: Option<&str>) {
    let Some(range) = headers.get(RANGE).and_then(|v| v.to_str().ok()) else {
        headers.remove(IF_RANGE);
        return;
    };
    let range = range.trim();
    let one_byte_range = range.len() > 6 && range[..6].eq_ignore_ascii_case("bytes=") && !range.contains(',');
    let validated = match headers.get(IF_RANGE) {
        None => true,
        Some(v) => last_modified.is_some_and(|lm| v.as_bytes() == lm.as_bytes()),
    };
    if !one_byte_range || !validated {
        headers.remove(RANGE);
    }
    headers.remove(IF_RANGE);
}

/// The MP3 of a done job, streamed; `Range` (one byte range, with `If-Range`) resumes a
/// download; `HEAD` answers the headers only.
#[utoipa::path(get, path = "/v1/jobs/{id}/mp3", tag = "downloads", operation_id = "get_mp3",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The job's id"),
        ("Range" = Option<String>, Header, description = "`bytes=FIRST-LAST`, `bytes=FIRST-` or `bytes=-SUFFIX`"),
    ),
    responses(
        (status = 200, description = "The MP3", body = [u8], content_type = "audio/mpeg",
            headers(("Content-Disposition" = String, description = "`attachment` with the upload's name, `.mp3`"))),
        (status = 206, description = "The requested range of the MP3", body = [u8], content_type = "audio/mpeg",
            headers(("Content-Range" = String))),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 416, description = "`range_not_satisfiable`: the range is outside the file", body = super::error::ErrorBody,
            headers(("Content-Range" = String, description = "`bytes */LENGTH`"))),
        (status = 503, response = Unavailable),
    ))]
async fn by_job(
    State(state): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    serve(&state, super::jobs::job_id(&id)?, Some(who), request).await
}

/// The MP3 behind the signed link of the email: no login; the link expires (`--link-ttl`).
#[utoipa::path(get, path = "/v1/links/{token}", tag = "downloads", operation_id = "get_mp3_by_link",
    params(
        ("token" = String, Path, description = "The signed link's token"),
        ("Range" = Option<String>, Header, description = "`bytes=FIRST-LAST`, `bytes=FIRST-` or `bytes=-SUFFIX`"),
    ),
    responses(
        (status = 200, description = "The MP3", body = [u8], content_type = "audio/mpeg",
            headers(("Content-Disposition" = String, description = "`attachment` with the upload's name, `.mp3`"))),
        (status = 206, description = "The requested range of the MP3", body = [u8], content_type = "audio/mpeg",
            headers(("Content-Range" = String))),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 416, description = "`range_not_satisfiable`: the range is outside the file", body = super::error::ErrorBody,
            headers(("Content-Range" = String, description = "`bytes */LENGTH`"))),
        (status = 503, response = Unavailable),
    ))]
async fn by_link(
    State(state): State<AppState>,
    Path(token): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let id = state.config.keys.verify_link(&token)?;
    let id = JobId::parse(&id).ok_or_else(ApiError::not_found)?;
    serve(&state, id, None, request).await
}

/// The MP3's name for a user's original file name: its stem, without path, control or
/// quoting characters, at most 120 characters (`audio` if nothing is left), then `.mp3`.
pub(super) fn mp3_name(original: &str) -> String {
    let base = original.rsplit(['/', '\\']).next().unwrap_or("");
    let stem = match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => base,
    };
    let clean: String = stem
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\' | '/' | ';' | '%' | '*'))
        .collect::<String>()
        .trim_matches(|c: char| c.is_whitespace() || c == '.')
        .chars()
        .take(120)
        .collect();
    let clean = if clean.is_empty() { "audio".to_string() } else { clean };
    format!("{clean}.mp3")
}

/// `attachment` with the safe [`mp3_name`]: an ASCII `filename` and a UTF-8 `filename*`.
pub(super) fn content_disposition(original: &str) -> String {
    let name = mp3_name(original);
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '_' })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range_after(range: &str, if_range: Option<&str>, last_modified: Option<&str>) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_str(range).unwrap());
        if let Some(v) = if_range {
            headers.insert(IF_RANGE, HeaderValue::from_str(v).unwrap());
        }
        honoured_range(&mut headers, last_modified);
        assert!(headers.get(IF_RANGE).is_none());
        headers.get(RANGE).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn only_one_byte_range_with_a_matching_validator_is_honoured() {
        let lm = "Mon, 30 Nov 2026 21:00:00 GMT";
        assert_eq!(range_after("bytes=0-9", None, Some(lm)).as_deref(), Some("bytes=0-9"));
        assert_eq!(
            range_after("bytes=0-9", Some(lm), Some(lm)).as_deref(),
            Some("bytes=0-9")
        );
        assert_eq!(
            range_after("bytes=0-9", Some("Sun, 29 Nov 2026 21:00:00 GMT"), Some(lm)),
            None
        );
        assert_eq!(range_after("bytes=0-9", Some("\"an-etag\""), Some(lm)), None);
        assert_eq!(range_after("bytes=0-9", Some(lm), None), None);
        assert_eq!(range_after("bytes=0-1,5-6", None, Some(lm)), None);
        assert_eq!(range_after("items=0-9", None, Some(lm)), None);
        assert_eq!(range_after("bytes=", None, Some(lm)), None);
    }

    #[test]
    fn file_names_lose_paths_quotes_and_control_characters() {
        assert_eq!(
            content_disposition("talk.mp4"),
            "attachment; filename=\"talk.mp3\"; filename*=UTF-8''talk.mp3"
        );
        let evil = content_disposition("../../etc/\"pass\r\nwd\".mp4");
        assert_eq!(evil, "attachment; filename=\"passwd.mp3\"; filename*=UTF-8''passwd.mp3");
        assert_eq!(
            content_disposition("C:\\Users\\x\\My Song.m4a"),
            "attachment; filename=\"My Song.mp3\"; filename*=UTF-8''My%20Song.mp3"
        );
        assert_eq!(
            content_disposition("Über.mp4"),
            "attachment; filename=\"_ber.mp3\"; filename*=UTF-8''%C3%9Cber.mp3"
        );
        assert_eq!(
            content_disposition(""),
            "attachment; filename=\"audio.mp3\"; filename*=UTF-8''audio.mp3"
        );
        assert_eq!(
            content_disposition("..."),
            "attachment; filename=\"audio.mp3\"; filename*=UTF-8''audio.mp3"
        );
    }
}
