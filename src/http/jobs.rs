//! `/v1/jobs`: submit (multipart upload or JSON URL import), list, status, cancel/delete.
//! The seed's `POST /upload` reuses [`submit`].

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::route;
use super::upload::{self, Upload};
use super::{ApiError, AppState, Authed};
use crate::actors::request::RequestMsg;
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::auth::Principal;
use crate::convert::Quality;
use crate::store::{Job, JobId, NewJob, Source};

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 200;
/// Largest page of `GET /v1/jobs`.
const MAX_PAGE: u32 = 100;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(create).layer(DefaultBodyLimit::disable()).get(list))
        .route("/v1/jobs/{id}", get(status).delete(remove))
}

/// A job as the API shows it.
pub(super) fn job_json(job: &Job) -> serde_json::Value {
    let time = |ms: i64| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        humantime::format_rfc3339_millis(t).to_string()
    };
    let error = job
        .error_code
        .as_ref()
        .map(|code| serde_json::json!({"code": code, "message": job.error_message.clone().unwrap_or_default()}));
    let (source, url) = match &job.source {
        Source::Upload => ("upload", None),
        Source::Url(url) => ("url", Some(url.clone())),
    };
    serde_json::json!({
        "id": job.id.as_str(),
        "state": job.state.as_str(),
        "progress": job.progress,
        "error": error,
        "file_name": job.file_name,
        "source": source,
        "url": url,
        "bitrate": job.bitrate_kbps,
        "vbr": job.vbr_quality,
        "attempt": job.attempt,
        "created_at": time(job.created_at_ms),
        "updated_at": time(job.updated_at_ms),
        "finished_at": job.finished_at_ms.map(time),
        "links": {
            "self": format!("/v1/jobs/{}", job.id),
            "mp3": format!("/v1/jobs/{}/mp3", job.id),
        },
    })
}

/// Parses the optional bitrate / VBR settings (from form fields or JSON).
pub(super) fn quality(bitrate: Option<u16>, vbr: Option<u8>) -> Result<(Option<u16>, Option<u8>), ApiError> {
    let chosen = match (bitrate, vbr) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_settings",
                "give either bitrate or vbr, not both",
            ));
        }
        (Some(kbps), None) => Some(Quality::Cbr { kbps }),
        (None, Some(quality)) => Some(Quality::Vbr { quality }),
        (None, None) => None,
    };
    if let Some(q) = chosen {
        q.validate()
            .map_err(|e| ApiError::bad_request("invalid_settings", e.to_string()))?;
    }
    Ok((bitrate, vbr))
}

fn parse_field<T: std::str::FromStr>(name: &str, value: Option<String>) -> Result<Option<T>, ApiError> {
    value
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| ApiError::bad_request("invalid_settings", format!("{name} must be a number")))
        })
        .transpose()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .ok_or_else(|| ApiError::bad_request("invalid_request", "Idempotency-Key must be 1-200 visible characters"))?;
    Ok(Some(key.to_string()))
}

/// Hands a job (and its staged upload) to the request actor: `202` for a new job, `200`
/// for an idempotent retry (whichever node holds the earlier job).
pub(super) async fn submit(
    state: &AppState,
    job: NewJob,
    staged: Option<std::path::PathBuf>,
) -> Result<Response, ApiError> {
    let earlier = match &job.idempotency_key {
        Some(key) => route::keyed_elsewhere(state, &job.owner_email, key).await,
        None => None,
    };
    let (job, new) = match earlier {
        Some(earlier) => {
            if let Some(path) = staged {
                let _ = tokio::fs::remove_file(path).await;
            }
            (earlier, false)
        }
        None => {
            let staged_copy = staged.clone();
            let result = ask(
                Role::Request,
                |reply| RequestMsg::Submit { job, staged, reply },
                CALL_TIMEOUT,
            )
            .await;
            if let (Err(_), Some(path)) = (&result, staged_copy) {
                let _ = tokio::fs::remove_file(path).await;
            }
            result??
        }
    };
    let status = if new { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((
        status,
        [("location", format!("/v1/jobs/{}", job.id))],
        Json(job_json(&job)),
    )
        .into_response())
}

/// Submits an uploaded file for `who`.
pub(super) async fn submit_upload(
    state: &AppState,
    who: Principal,
    upload: Upload,
    key: Option<String>,
) -> Result<Response, ApiError> {
    let settings = parse_field::<u16>("bitrate", upload.bitrate.clone())
        .and_then(|b| Ok((b, parse_field::<u8>("vbr", upload.vbr.clone())?)))
        .and_then(|(b, v)| quality(b, v));
    let (bitrate, vbr) = match settings {
        Ok(s) => s,
        Err(e) => {
            let _ = tokio::fs::remove_file(&upload.path).await;
            return Err(e);
        }
    };
    let job = NewJob {
        id: JobId::new(&state.config.node_name),
        owner_email: who.email,
        source: Source::Upload,
        file_name: upload.file_name,
        bitrate_kbps: bitrate,
        vbr_quality: vbr,
        idempotency_key: key,
    };
    submit(state, job, Some(upload.path)).await
}

#[derive(Deserialize)]
struct UrlJob {
    url: String,
    access_token: Option<String>,
    bitrate: Option<u16>,
    vbr: Option<u8>,
}

async fn create(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let key = idempotency_key(&headers)?;
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (parts, body) = request.into_parts();
    let header_auth = super::bearer(&parts.headers).map(str::to_string);
    if content_type.starts_with("multipart/form-data") {
        let token = header_auth.ok_or_else(ApiError::missing_credentials)?;
        let who = super::verify(&token).await?;
        let multipart = upload::multipart(Request::from_parts(parts, body), &state).await?;
        let one_file = ApiError::bad_request("invalid_request", "exactly 1 file required");
        let upload = upload::receive(multipart, &state.config, one_file).await?;
        submit_upload(&state, who, upload, key).await
    } else if content_type.starts_with("application/json") {
        // The seed's download request may carry the token in the body; a header is checked
        // first, so a caller without one can only make us read MAX_JSON_BYTES.
        let who = match &header_auth {
            Some(token) => Some(super::verify(token).await?),
            None => None,
        };
        let over = upload::declared_length(&parts.headers).is_some_and(|n| n > super::MAX_JSON_BYTES as u64);
        let read = if over {
            None
        } else {
            let read = axum::body::to_bytes(body, super::MAX_JSON_BYTES);
            tokio::time::timeout(state.config.http_limits.header_timeout, read)
                .await
                .ok()
                .and_then(Result::ok)
        };
        let Some(bytes) = read else {
            // Without credentials in the header, a body we did not read has none either.
            return Err(if who.is_some() {
                ApiError::json_too_large()
            } else {
                ApiError::missing_credentials()
            });
        };
        let body: UrlJob = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request("invalid_request", format!("invalid JSON body: {e}")))?;
        let who = match who {
            Some(who) => who,
            None => {
                let token = body.access_token.as_deref().ok_or_else(ApiError::missing_credentials)?;
                super::verify(token).await?
            }
        };
        let (bitrate, vbr) = quality(body.bitrate, body.vbr)?;
        upload::room_for(&state.config, 0).await?;
        let url = state.fetcher.parse(&body.url)?;
        // Refused addresses fail the request now; the fetch checks again (DNS may change).
        state.fetcher.check(&url).await?;
        let file_name = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|s| !s.is_empty())
            .unwrap_or("download.mp4")
            .to_string();
        let job = NewJob {
            id: JobId::new(&state.config.node_name),
            owner_email: who.email,
            source: Source::Url(url.to_string()),
            file_name,
            bitrate_kbps: bitrate,
            vbr_quality: vbr,
            idempotency_key: key,
        };
        submit(&state, job, None).await
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send multipart/form-data with one file, or application/json with a url",
        ))
    }
}

#[derive(Deserialize)]
struct Page {
    limit: Option<u32>,
    offset: Option<u32>,
    all: Option<bool>,
}

async fn list(
    State(state): State<AppState>,
    Authed(who): Authed,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let limit = page.limit.unwrap_or(20).clamp(1, MAX_PAGE);
    let offset = page.offset.unwrap_or(0);
    let all = page.all.unwrap_or(false);
    if all && !who.admin {
        return Err(ApiError::forbidden("only admins list every user's jobs"));
    }
    let jobs = super::route::list(&state, who, all, limit, offset).await?;
    let next = (jobs.len() as u32 == limit).then_some(offset + limit);
    Ok(Json(serde_json::json!({
        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
        "limit": limit,
        "offset": offset,
        "next_offset": next,
    })))
}

/// Parses a job id from a path; malformed ids are simply not found.
pub(super) fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).ok_or_else(ApiError::not_found)
}

async fn status(
    State(state): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = job_id(&id)?;
    let job = super::route::get(&state, id, who).await?;
    Ok(Json(job_json(&job)))
}

async fn remove(
    State(state): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let canceled = super::route::delete(&state, id, who).await?;
    Ok(match canceled {
        Some(job) => Json(job_json(&job)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}
