//! Which node answers for a job: its owner (named in its id). Local jobs go to this node's
//! request actor; other nodes' jobs go through the cluster to the owner's jobs actor. While
//! the owner is unreachable the answer is `503` + `Retry-After`, never `404`.

use std::time::Duration;

use axum::body::Body;
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use super::{ApiError, AppState};
use crate::actors::request::RequestMsg;
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::auth::Principal;
use crate::cluster::jobs::{self, JobQuery, JobsMsg, ListQuery, RemoteError, status};
use crate::store::{Job, JobId};

fn unreachable(e: RemoteError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "owner_unavailable", e.to_string())
        .retry_after(Duration::from_secs(5))
}

/// The owner of `id` when it is another node of the cluster.
pub(super) fn remote_owner<'a>(state: &AppState, id: &'a JobId) -> Option<&'a str> {
    (state.config.cluster.is_some() && id.owner() != state.config.node_name).then(|| id.owner())
}

fn query(id: &JobId, who: Option<&Principal>, offset: u64) -> JobQuery {
    JobQuery {
        job_id: id.to_string(),
        email: who.map(|w| w.email.clone()).unwrap_or_default(),
        admin: who.is_some_and(|w| w.admin),
        link: who.is_none(),
        offset,
    }
}

fn remote_job(answer: jobs::JobAnswer) -> Result<Option<Job>, ApiError> {
    if answer.status != status::OK {
        return Err(jobs::error(answer.status, answer.message).into());
    }
    match answer.job {
        Some(view) => view
            .to_job()
            .map(Some)
            .ok_or_else(|| ApiError::internal("unreadable job from its owner")),
        None => Ok(None),
    }
}

/// A job's status, from wherever it lives.
pub(super) async fn get(state: &AppState, id: JobId, who: Principal) -> Result<Job, ApiError> {
    if let Some(owner) = remote_owner(state, &id) {
        let q = query(&id, Some(&who), 0);
        let answer = jobs::call(owner, |reply| JobsMsg::Get(q, reply))
            .await
            .map_err(unreachable)?;
        return remote_job(answer)?.ok_or_else(ApiError::not_found);
    }
    Ok(ask(Role::Request, |reply| RequestMsg::Get { id, who, reply }, CALL_TIMEOUT).await??)
}

/// Cancels or deletes a job, wherever it lives.
pub(super) async fn delete(state: &AppState, id: JobId, who: Principal) -> Result<Option<Job>, ApiError> {
    if let Some(owner) = remote_owner(state, &id) {
        let q = query(&id, Some(&who), 0);
        let answer = jobs::call(owner, |reply| JobsMsg::Delete(q, reply))
            .await
            .map_err(unreachable)?;
        return remote_job(answer);
    }
    Ok(ask(
        Role::Request,
        |reply| RequestMsg::Delete { id, who, reply },
        CALL_TIMEOUT,
    )
    .await??)
}

/// The caller's jobs from every reachable node, newest first.
pub(super) async fn list(
    state: &AppState,
    who: Principal,
    all: bool,
    limit: u32,
    offset: u32,
) -> Result<Vec<Job>, ApiError> {
    let want = limit.saturating_add(offset);
    let local_who = who.clone();
    let mut found = ask(
        Role::Request,
        |reply| RequestMsg::List {
            who: local_who,
            all,
            limit: want,
            offset: 0,
            reply,
        },
        CALL_TIMEOUT,
    )
    .await??;
    if state.config.cluster.is_some() {
        for owner in jobs::other_owners(&state.config.node_name) {
            let q = ListQuery {
                email: who.email.clone(),
                admin: who.admin,
                all,
                limit: want,
            };
            match jobs::call(&owner, |reply| JobsMsg::List(q, reply)).await {
                Ok(answer) if answer.status == status::OK => {
                    found.extend(answer.jobs.iter().filter_map(|v| v.to_job()))
                }
                Ok(_) | Err(_) => tracing::warn!(node = %owner, "could not list that node's jobs"),
            }
        }
    }
    found.sort_by(|a, b| {
        b.created_at_ms
            .cmp(&a.created_at_ms)
            .then_with(|| b.id.as_str().cmp(a.id.as_str()))
    });
    Ok(found.into_iter().skip(offset as usize).take(limit as usize).collect())
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

/// Streams another node's MP3 in chunks (never whole in memory), honouring one Range.
pub(super) async fn remote_mp3(
    owner: &str,
    id: &JobId,
    who: Option<&Principal>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let range = byte_range(headers);
    let start = range.map_or(0, |(s, _)| s);
    let q = query(id, who, start);
    let first = jobs::call(owner, |reply| JobsMsg::Chunk(q.clone(), reply))
        .await
        .map_err(unreachable)?;
    if first.status != status::OK {
        return Err(jobs::error(first.status, first.message).into());
    }
    let total = first.total;
    let end = range
        .and_then(|(_, e)| e)
        .unwrap_or(total.saturating_sub(1))
        .min(total.saturating_sub(1));
    if range.is_some() && (start >= total || start > end) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
        r.headers_mut().insert(
            CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{total}")).map_err(ApiError::internal)?,
        );
        return Ok(r);
    }
    let length = end + 1 - start;
    let owner = owner.to_string();
    let stream = futures_util::stream::unfold(
        (Some(first.data), start, q, owner),
        move |(pending, at, q, owner)| async move {
            let left = (end + 1).saturating_sub(at);
            if left == 0 {
                return None;
            }
            let data = match pending {
                Some(data) => data,
                None => {
                    let next = JobQuery {
                        offset: at,
                        ..q.clone()
                    };
                    match jobs::call(&owner, |reply| JobsMsg::Chunk(next, reply)).await {
                        Ok(answer) if answer.status == status::OK && !answer.data.is_empty() => answer.data,
                        _ => {
                            return Some((
                                Err(std::io::Error::other("the owner stopped sending the MP3")),
                                (None, at, q, owner),
                            ));
                        }
                    }
                }
            };
            let take = (data.len() as u64).min(left) as usize;
            let mut data = data;
            data.truncate(take);
            let next = at + take as u64;
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from(data)),
                (None, next, q, owner),
            ))
        },
    );
    let mut response = Response::new(Body::from_stream(stream));
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
    if let Ok(value) = HeaderValue::from_str(&super::download::content_disposition(&first.file_name)) {
        response.headers_mut().insert(CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

impl From<RemoteError> for ApiError {
    fn from(e: RemoteError) -> Self {
        unreachable(e)
    }
}
