//! Which node answers for a job: its owner, named in its id. Local jobs go to this node's
//! request actor; other nodes' jobs go through the cluster to the owner's jobs actor. While
//! the owner is unreachable the answer is `503` + `Retry-After`, never `404`.
//!
//! A job handed over on scale-down keeps its id but lives on another node: when the named
//! owner does not have a job (or is gone), the other nodes are asked, and where it was
//! found is remembered ([`Moved`]).

use std::time::Duration;

use axum::body::Body;
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use ractor::RpcReplyPort;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use super::{ApiError, AppState, ErrorCode};
use crate::actors::request::jobs::{self, JobQuery, JobsMsg, ListQuery, RemoteError, status};
use crate::actors::request::{JobError, RequestMsg};
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::auth::Principal;
use crate::cluster::mesh::ClusterMsg;
use crate::store::{Job, JobId};

fn unreachable(e: RemoteError) -> ApiError {
    ApiError::new(ErrorCode::OwnerUnavailable, e.to_string()).retry_after(Duration::from_secs(5))
}

/// Where a job lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum At {
    /// On this node.
    Here,
    /// On this other node.
    Node(String),
}

/// Jobs found elsewhere than their id says, and where (bounded: forgotten when full).
#[derive(Clone, Default)]
pub struct Moved(Arc<Mutex<HashMap<JobId, At>>>);

impl Moved {
    const MAX: usize = 100_000;

    fn get(&self, id: &JobId) -> Option<At> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    fn set(&self, id: &JobId, at: Option<At>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match at {
            Some(at) => {
                if map.len() >= Self::MAX {
                    map.clear();
                }
                map.insert(id.clone(), at);
            }
            None => {
                map.remove(id);
            }
        }
    }
}

/// An admin's look: whether a job exists, whoever it belongs to (the real caller's rights
/// are checked by the call that follows).
fn existence() -> Principal {
    Principal {
        email: String::new(),
        admin: true,
    }
}

/// Does `at` have job `id`? (`Err`: it cannot say now.) Asked of the other nodes when the
/// expected one has no such job.
async fn has(at: &At, id: &JobId) -> Result<bool, RemoteError> {
    match at {
        At::Here => {
            let (id, who) = (id.clone(), existence());
            let found = ask(Role::Request, |reply| RequestMsg::Get { id, who, reply }, CALL_TIMEOUT).await;
            Ok(!matches!(found, Ok(Err(JobError::NotFound))))
        }
        At::Node(node) => {
            let q = query(id, Some(&existence()), 0);
            let answer = jobs::call(node, |reply| JobsMsg::Get(q, reply)).await?;
            Ok(answer.status != status::NOT_FOUND)
        }
    }
}

/// Runs `op` where job `id` lives: on the node its id names (or where it was last found);
/// when that node has no such job or cannot be reached, on whichever other node has it (a
/// job handed over on scale-down). When no other node has it, `op`'s own answer stands
/// (`404`, or `503` while the named owner is unreachable).
pub(super) async fn at_owner<T, Fut>(state: &AppState, id: &JobId, op: impl Fn(At) -> Fut) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, ApiError>>,
{
    let own = &state.config.node_name;
    if state.config.cluster.is_none() {
        return op(At::Here).await;
    }
    let named = if id.owner() == own {
        At::Here
    } else {
        At::Node(id.owner().to_string())
    };
    let first = state.moved.get(id).unwrap_or(named);
    let missed = match op(first.clone()).await {
        // `ApiError::not_found` and `unreachable`.
        Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::OwnerUnavailable) => e,
        answered => return answered,
    };
    let mut others: Vec<At> = jobs::other_owners(own).into_iter().map(At::Node).collect();
    others.push(At::Here);
    others.retain(|at| *at != first);
    let answers = futures_util::future::join_all(others.iter().map(|at| has(at, id))).await;
    let found = others.into_iter().zip(answers).find(|(_, a)| matches!(a, Ok(true)));
    state.moved.set(id, found.as_ref().map(|(at, _)| at.clone()));
    match found {
        Some((at, _)) => op(at).await,
        None => Err(missed),
    }
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

/// Runs a caller's operation on job `id` where it lives: `remote` on the jobs actor of
/// the node that has it (its answer read by `found`), `local` on this node's request actor.
async fn on_job<T: Send + 'static>(
    state: &AppState,
    id: &JobId,
    who: &Principal,
    remote: fn(JobQuery, RpcReplyPort<jobs::JobAnswer>) -> JobsMsg,
    local: fn(JobId, Principal, RpcReplyPort<Result<T, JobError>>) -> RequestMsg,
    found: fn(Option<Job>) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    at_owner(state, id, |at| async move {
        match at {
            At::Node(owner) => {
                let q = query(id, Some(who), 0);
                let answer = jobs::call(&owner, |reply| remote(q, reply))
                    .await
                    .map_err(unreachable)?;
                found(remote_job(answer)?)
            }
            At::Here => {
                let (id, who) = (id.clone(), who.clone());
                Ok(ask(Role::Request, |reply| local(id, who, reply), CALL_TIMEOUT).await??)
            }
        }
    })
    .await
}

/// A job's status, from wherever it lives.
pub(super) async fn get(state: &AppState, id: JobId, who: Principal) -> Result<Job, ApiError> {
    on_job(
        state,
        &id,
        &who,
        JobsMsg::Get,
        |id, who, reply| RequestMsg::Get { id, who, reply },
        |job| job.ok_or_else(ApiError::not_found),
    )
    .await
}

/// Cancels or deletes a job, wherever it lives: the canceled job, or `None` once deleted.
pub(super) async fn delete(state: &AppState, id: JobId, who: Principal) -> Result<Option<Job>, ApiError> {
    on_job(
        state,
        &id,
        &who,
        JobsMsg::Delete,
        |id, who, reply| RequestMsg::Delete { id, who, reply },
        Ok,
    )
    .await
}

/// The job `email` submitted with Idempotency-Key `key` on another node, if one has it: a
/// retry that the load balancer sends to another pod (or that follows a job handed over on
/// scale-down) gets the same job. Every wanted peer must answer: while one cannot be asked
/// (down, partitioned, paused), it may hold the key, and accepting a new job could make two
/// (`503 owner_unavailable`: retry with the same key). Two retries racing on two nodes at
/// the same moment may still both be accepted.
pub(super) async fn keyed_elsewhere(state: &AppState, email: &str, key: &str) -> Result<Option<Job>, ApiError> {
    // A standalone node has nobody to ask.
    if state.config.cluster.is_none() {
        return Ok(None);
    }
    let away = ask(Role::Cluster, |reply| ClusterMsg::Unreached { reply }, CALL_TIMEOUT).await?;
    if !away.is_empty() {
        return Err(key_unsure(&away.join(", ")));
    }
    let owners = jobs::other_owners(&state.config.node_name);
    let asks = owners.iter().map(|owner| {
        let q = jobs::KeyQuery {
            email: email.to_string(),
            key: key.to_string(),
        };
        jobs::call(owner, |reply| JobsMsg::Keyed(q, reply))
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut found = None;
    for (owner, answer) in owners.iter().zip(answers) {
        match answer.map_err(ApiError::from).and_then(remote_job) {
            Ok(job) => found = found.or(job),
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => {
                tracing::debug!(node = %owner, error = %e.message, "could not ask that node for an idempotency key");
                return Err(key_unsure(owner));
            }
        }
    }
    Ok(found)
}

fn key_unsure(nodes: &str) -> ApiError {
    ApiError::new(
        ErrorCode::OwnerUnavailable,
        format!("{nodes} may hold a job with this Idempotency-Key and cannot be asked now; retry with the same key"),
    )
    .retry_after(Duration::from_secs(2))
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
    // A job being handed over may be on two nodes for a moment.
    found.dedup_by(|a, b| a.id == b.id);
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
    let stream = remote_chunks(owner.to_string(), q, first.data, start, end + 1);
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

/// Bytes `start..end` of a job's MP3 on `owner`, [`CHUNK`] by [`CHUNK`] (`first`: the
/// piece at `start`, already fetched).
fn remote_chunks(
    owner: String,
    q: JobQuery,
    first: Vec<u8>,
    start: u64,
    end: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold(
        (Some(first), start, q, owner),
        move |(pending, at, q, owner)| async move {
            let left = end.saturating_sub(at);
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
                                (None, end, q, owner),
                            ));
                        }
                    }
                }
            };
            let take = (data.len() as u64).min(left) as usize;
            let mut data = data;
            data.truncate(take);
            let next = at + take as u64;
            Some((Ok(bytes::Bytes::from(data)), (None, next, q, owner)))
        },
    )
}

/// A done job's MP3 as a stream of bytes, from wherever it lives: its user's file name,
/// size, and bytes.
pub(super) async fn mp3_stream(
    state: &AppState,
    id: &JobId,
    who: &Principal,
) -> Result<
    (
        String,
        u64,
        futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    ),
    ApiError,
> {
    use futures_util::StreamExt;
    at_owner(state, id, |at| async move {
        match at {
            At::Here => {
                let (id, who) = (id.clone(), Some(who.clone()));
                let file = ask(Role::Request, |reply| RequestMsg::Mp3 { id, who, reply }, CALL_TIMEOUT).await??;
                let opened = tokio::fs::File::open(&file.path).await.map_err(ApiError::internal)?;
                let total = opened.metadata().await.map_err(ApiError::internal)?.len();
                let stream = tokio_util::io::ReaderStream::with_capacity(opened, 256 << 10);
                Ok((file.file_name, total, stream.boxed()))
            }
            At::Node(owner) => {
                let q = query(id, Some(who), 0);
                let first = jobs::call(&owner, |reply| JobsMsg::Chunk(q.clone(), reply))
                    .await
                    .map_err(unreachable)?;
                if first.status != status::OK {
                    return Err(jobs::error(first.status, first.message).into());
                }
                let total = first.total;
                let stream = remote_chunks(owner, q, first.data, 0, total);
                Ok((first.file_name, total, stream.boxed()))
            }
        }
    })
    .await
}

impl From<RemoteError> for ApiError {
    fn from(e: RemoteError) -> Self {
        unreachable(e)
    }
}
