//! `GET /v1/jobs/archive?ids=A,B,…` and `POST /v1/jobs/archive {"ids": […]}`: the MP3s of
//! several done jobs as one streamed ZIP, from any node, wherever each job lives.
//!
//! Entries are stored (MP3s do not compress) and written as they are read, through a small
//! pipe: no temporary copy, and memory stays flat (a 256 KiB pipe and one read buffer, or
//! one 1 MiB piece of a job on another node). Every job is checked first (the caller's,
//! and done), so a bad id is a clean `404`/`409`; a job that fails while the archive is
//! being sent (its node gone) breaks the transfer off, so the client sees an error, never
//! a truncated ZIP that looks complete. Names are the download names, made unique
//! (`talk.mp3`, `talk (2).mp3`).

use std::collections::HashSet;

use async_zip::base::write::ZipFileWriter;
use async_zip::{Compression, ZipEntryBuilder};
use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::Response;
use futures_util::StreamExt;
use futures_util::io::AsyncWriteExt;
use serde::Deserialize;
use tokio::sync::oneshot;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::responses::{BadRequest, Conflict, NotFound, TooLarge, Unauthorized, Unavailable};
use super::{ApiError, AppState, Authed, ErrorCode};
use crate::auth::Principal;
use crate::store::{JobId, JobState};

/// Most jobs in one archive.
const MAX_JOBS: usize = 1000;
/// The pipe between the ZIP writer and the response.
const PIPE: usize = 256 << 10;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(by_query, by_body))
}

/// Which jobs, in the query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ArchiveQuery {
    /// Job ids, comma-separated (at most 1000).
    #[param(pattern = "[^,\\s]")]
    ids: String,
}

/// Which jobs, in a body.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"ids": ["node-a~1d133fe7faba199ffc8104b7", "node-b~5e2f0c1a9b8d7e6f5a4b3c2d"]}))]
struct ArchiveRequest {
    /// Job ids (at most 1000).
    #[schema(min_items = 1, max_items = 1000)]
    ids: Vec<String>,
}

/// One ZIP of the MP3s of the caller's done jobs `ids` (comma-separated).
#[utoipa::path(get, path = "/v1/jobs/archive", tag = "downloads", operation_id = "get_archive",
    security(("bearer" = [])),
    params(ArchiveQuery),
    responses(
        (status = 200, description = "A ZIP, streamed", content_type = "application/zip", body = Vec<u8>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = Unavailable),
    ))]
async fn by_query(
    State(state): State<AppState>,
    Authed(who): Authed,
    query: Result<Query<ArchiveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let ids: Vec<String> = q.ids.split(',').map(str::to_string).collect();
    archive(state, who, ids).await
}

/// The same, with the ids in a JSON body (for long lists).
#[utoipa::path(post, path = "/v1/jobs/archive", tag = "downloads", operation_id = "post_archive",
    security(("bearer" = [])),
    request_body = ArchiveRequest,
    responses(
        (status = 200, description = "A ZIP, streamed", content_type = "application/zip", body = Vec<u8>),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = TooLarge),
        (status = 415, description = "Not JSON"),
        (status = 503, response = Unavailable),
    ))]
async fn by_body(
    State(state): State<AppState>,
    Authed(who): Authed,
    body: Result<Json<ArchiveRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(ApiError::json)?;
    archive(state, who, body.ids).await
}

/// `name`, or `stem (2).mp3`, ... : the first not taken yet.
fn unique(name: String, taken: &mut HashSet<String>) -> String {
    let stem = name.strip_suffix(".mp3").unwrap_or(&name).to_string();
    let mut candidate = name;
    let mut n = 1;
    while !taken.insert(candidate.to_lowercase()) {
        n += 1;
        candidate = format!("{stem} ({n}).mp3");
    }
    candidate
}

async fn archive(state: AppState, who: Principal, raw: Vec<String>) -> Result<Response, ApiError> {
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for raw in raw.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let id = JobId::parse(raw).ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no such job: {raw}")))?;
        if seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "name at least one job"));
    }
    if ids.len() > MAX_JOBS {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("at most {MAX_JOBS} jobs in one archive"),
        ));
    }
    // Every job first: the caller's, and done.
    let checks = ids
        .iter()
        .map(|id| async { state.jobs.get(id.clone(), who.clone()).await.map_err(ApiError::from) });
    let mut entries = Vec::new();
    let mut names = HashSet::new();
    for (id, job) in ids.iter().zip(futures_util::future::join_all(checks).await) {
        let job = job.map_err(|e| {
            if e.code == ErrorCode::NotFound {
                ApiError::new(ErrorCode::NotFound, format!("no such job: {id}"))
            } else {
                e
            }
        })?;
        if job.state != JobState::Done {
            return Err(ApiError::new(
                ErrorCode::NotDone,
                format!("job {id} is {}, not done", job.state),
            ));
        }
        entries.push((
            id.clone(),
            unique(super::download::mp3_name(&job.file_name), &mut names),
        ));
    }

    let (pipe_in, pipe_out) = tokio::io::duplex(PIPE);
    let (failed_tx, failed_rx) = oneshot::channel::<String>();
    tokio::spawn(async move {
        if let Err(e) = write_zip(&state, &who, entries, pipe_in).await {
            tracing::warn!(error = %e, "an archive broke off");
            let _ = failed_tx.send(e);
        }
    });
    // The pipe's end, then the writer's failure if there was one: an error ends the body.
    let failure = futures_util::stream::once(async move { failed_rx.await.ok() })
        .filter_map(|f| async move { f.map(|m| Err(std::io::Error::other(m))) });
    let body = tokio_util::io::ReaderStream::with_capacity(pipe_out, 64 << 10).chain(failure);
    let mut response = Response::new(Body::from_stream(body));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    h.insert(
        CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"mp3s.zip\""),
    );
    Ok(response)
}

/// Writes the ZIP of `entries` (job, name) into `out`.
async fn write_zip(
    state: &AppState,
    who: &Principal,
    entries: Vec<(JobId, String)>,
    out: tokio::io::DuplexStream,
) -> Result<(), String> {
    let mut zip = ZipFileWriter::with_tokio(out);
    for (id, name) in entries {
        let (_, _, mut bytes) = state
            .jobs
            .mp3_stream(&id, who)
            .await
            .map_err(|e| format!("job {id}: {}", ApiError::from(e).message))?;
        let entry = ZipEntryBuilder::new(name.into(), Compression::Stored);
        let mut writer = zip.write_entry_stream(entry).await.map_err(|e| e.to_string())?;
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.map_err(|e| format!("job {id}: {e}"))?;
            writer.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        writer.close().await.map_err(|e| e.to_string())?;
    }
    zip.close().await.map_err(|e| e.to_string())?;
    Ok(())
}
