//! tus requests that reached another node than the one storing the upload (as they do
//! behind the StatefulSet's Service): that node's gateway forwards them over the mesh to
//! this node's jobs actor (`JobsMsg::Upload`), and the answers are the ones this node's own
//! gateway would give.
//!
//! ```text
//! gateway on B ──Upload{HEAD|DELETE}──▶ jobs actor on A ──▶ request actor on A
//! gateway on B ──Upload{PIECE, first}──▶ A: session opened (an Appender), piece written
//!              ──Upload{PIECE}… (≤ 1 MiB each, one at a time, at least every 5 s)──▶ A
//!              ──Upload{PIECE, last}──▶ A: recorded, answered like a local PATCH
//! ```
//!
//! A session is one forwarded `PATCH`: it holds the upload's writer on A, and ends with the
//! last piece, the first error, or [`IDLE`] without a piece (B gone): what was recorded
//! stays, as when a client is cut off.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::appender::{AppendError, Appender, Opened, Written};
use super::{UploadCall, UploadState, upload_call};
use crate::actors::request::JobError;
use crate::actors::request::jobs::{self, JobsMsg, RemoteError, Status};
use crate::auth::Principal;
use crate::config::Config;
use crate::store::{Files, JobId};

/// A forwarding node sends a piece at least this often while its client sends anything.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// A session without a piece for this long is ended.
const IDLE: Duration = Duration::from_secs(30);

/// What a forwarded request asks.
pub mod kind {
    /// tus `HEAD`.
    pub const HEAD: i32 = 0;
    /// tus `DELETE`.
    pub const DELETE: i32 = 1;
    /// A piece of a `PATCH` body.
    pub const PIECE: i32 = 2;
}

/// A forwarded tus request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UploadRequest {
    /// A [`kind`].
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// The upload.
    #[prost(string, tag = "2")]
    pub upload_id: String,
    /// The caller.
    #[prost(string, tag = "3")]
    pub email: String,
    /// The caller is an admin.
    #[prost(bool, tag = "4")]
    pub admin: bool,
    /// The `PATCH` this piece belongs to (chosen by the forwarding node).
    #[prost(uint64, tag = "5")]
    pub session: u64,
    /// Where `data` starts (the first piece's: `Upload-Offset`).
    #[prost(uint64, tag = "6")]
    pub offset: u64,
    /// At most [`CHUNK`](crate::cluster::pieces::CHUNK) bytes of the body.
    #[prost(bytes = "vec", tag = "7")]
    pub data: Vec<u8>,
    /// The first piece of its `PATCH`.
    #[prost(bool, tag = "8")]
    pub first: bool,
    /// The body ended after this piece.
    #[prost(bool, tag = "9")]
    pub last: bool,
    /// `Upload-Checksum`'s SHA-256 (first piece).
    #[prost(bytes = "vec", optional, tag = "10")]
    pub checksum: Option<Vec<u8>>,
    /// The body's `Content-Length` (first piece).
    #[prost(uint64, optional, tag = "11")]
    pub declared: Option<u64>,
    /// The body broke off after this piece: why.
    #[prost(string, optional, tag = "12")]
    pub broken: Option<String>,
}

/// The answer to a forwarded tus request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UploadAnswer {
    /// A [`Status`] (a job's, or an append's).
    #[prost(enumeration = "Status", tag = "1")]
    pub status: i32,
    /// Why not.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Bytes recorded (for an offset mismatch: where the upload is).
    #[prost(uint64, tag = "3")]
    pub received: u64,
    /// Its total size (`HEAD`; for an offset mismatch: the offset asked).
    #[prost(uint64, tag = "4")]
    pub length: u64,
    /// Its expiry (ms since the epoch).
    #[prost(int64, tag = "5")]
    pub expires_ms: i64,
    /// The client's `Upload-Metadata` (`HEAD`).
    #[prost(string, tag = "6")]
    pub metadata: String,
    /// The job it became.
    #[prost(string, optional, tag = "7")]
    pub job_id: Option<String>,
    /// The `PATCH` is over (its last answer).
    #[prost(bool, tag = "8")]
    pub done: bool,
}

ractor_cluster::derive_serialization_for_prost_type! {UploadRequest}
ractor_cluster::derive_serialization_for_prost_type! {UploadAnswer}

fn failed(e: AppendError) -> UploadAnswer {
    let (status, received, length) = match &e {
        AppendError::Offset { at, asked } => (Status::Offset, *at, *asked),
        AppendError::TooLong(length) => (Status::TooLong, 0, *length),
        AppendError::Busy => (Status::Busy, 0, 0),
        AppendError::Checksum => (Status::Checksum, 0, 0),
        AppendError::Broken(_) => (Status::Broken, 0, 0),
        AppendError::Full => (Status::Full, 0, 0),
        AppendError::Lost => (Status::Lost, 0, 0),
        AppendError::Job(job) => (jobs::code(job), 0, 0),
    };
    let message = match e {
        AppendError::Broken(m) => m,
        AppendError::Job(JobError::Conflict(m) | JobError::Expired(m)) => m,
        e => e.to_string(),
    };
    UploadAnswer {
        status: status.into(),
        message,
        received,
        length,
        done: true,
        ..UploadAnswer::default()
    }
}

fn error_of(a: UploadAnswer) -> AppendError {
    match Status::of(a.status) {
        Status::Offset => AppendError::Offset {
            at: a.received,
            asked: a.length,
        },
        Status::TooLong => AppendError::TooLong(a.length),
        Status::Busy => AppendError::Busy,
        Status::Checksum => AppendError::Checksum,
        Status::Broken => AppendError::Broken(a.message),
        Status::Full => AppendError::Full,
        Status::Lost => AppendError::Lost,
        _ => AppendError::Job(jobs::error(a.status, a.message)),
    }
}

fn written(w: Written, done: bool) -> UploadAnswer {
    UploadAnswer {
        status: Status::Ok.into(),
        received: w.received,
        expires_ms: w.expires_ms,
        job_id: w.job.map(|j| j.to_string()),
        done,
        ..UploadAnswer::default()
    }
}

type Piece = (UploadRequest, oneshot::Sender<UploadAnswer>);

/// Forwarded `PATCH`es being written here, by session.
static SESSIONS: LazyLock<Mutex<HashMap<u64, mpsc::Sender<Piece>>>> = LazyLock::new(Mutex::default);

fn sessions() -> std::sync::MutexGuard<'static, HashMap<u64, mpsc::Sender<Piece>>> {
    SESSIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers a forwarded tus request (on the node storing the upload).
pub async fn answer(config: Arc<Config>, r: UploadRequest) -> UploadAnswer {
    tracing::debug!(kind = r.kind, session = r.session, offset = r.offset, len = r.data.len(), first = r.first, last = r.last, broken = ?r.broken, "forwarded upload request");
    let a = answer_inner(config, r).await;
    tracing::debug!(status = a.status, received = a.received, done = a.done, message = %a.message, "forwarded upload answer");
    a
}

async fn answer_inner(config: Arc<Config>, r: UploadRequest) -> UploadAnswer {
    let Some(id) = JobId::parse(&r.upload_id) else {
        return failed(JobError::NotFound.into());
    };
    let who = Principal {
        email: r.email.clone(),
        admin: r.admin,
    };
    match r.kind {
        kind::HEAD => match upload_call(|reply| UploadCall::State { id, who, reply }).await {
            Ok(s) => UploadAnswer {
                status: Status::Ok.into(),
                received: s.received,
                length: s.length,
                expires_ms: s.expires_ms,
                metadata: s.metadata,
                job_id: s.job.map(|j| j.to_string()),
                done: true,
                ..UploadAnswer::default()
            },
            Err(e) => failed(e.into()),
        },
        kind::DELETE => match upload_call(|reply| UploadCall::Delete { id, who, reply }).await {
            Ok(()) => UploadAnswer {
                done: true,
                ..UploadAnswer::default()
            },
            Err(e) => failed(e.into()),
        },
        kind::PIECE if r.first => open(&config, id, who, r).await,
        kind::PIECE => {
            let sender = sessions().get(&r.session).cloned();
            let Some(sender) = sender else {
                return failed(AppendError::Lost);
            };
            let (tx, rx) = oneshot::channel();
            if sender.send((r, tx)).await.is_err() {
                return failed(AppendError::Lost);
            }
            rx.await.unwrap_or_else(|_| failed(AppendError::Lost))
        }
        _ => failed(JobError::Conflict("unknown upload request".into()).into()),
    }
}

/// The first piece: the upload is checked and opened, and a session takes the pieces.
async fn open(config: &Config, id: JobId, who: Principal, first: UploadRequest) -> UploadAnswer {
    let upload = match upload_call(|reply| UploadCall::Get { id, who, reply }).await {
        Ok(upload) => upload,
        Err(e) => return failed(e.into()),
    };
    let files = Files::at(&config.data_dir);
    let opened = Appender::open(&files, upload, first.offset, first.checksum.clone(), first.declared).await;
    let appender = match opened {
        Ok(Opened::Writing(appender)) => appender,
        Ok(Opened::Complete(w)) => return written(w, true),
        Err(e) => return failed(e),
    };
    let (sender, receiver) = mpsc::channel(1);
    let session = first.session;
    sessions().insert(session, sender.clone());
    tokio::spawn(write_session(appender, receiver, session));
    let (tx, rx) = oneshot::channel();
    if sender.send((first, tx)).await.is_err() {
        return failed(AppendError::Lost);
    }
    rx.await.unwrap_or_else(|_| failed(AppendError::Lost))
}

/// Writes one forwarded `PATCH`'s pieces, in order, until its last piece, an error, or
/// [`IDLE`].
async fn write_session(mut appender: Box<Appender>, mut pieces: mpsc::Receiver<Piece>, session: u64) {
    loop {
        let Ok(Some((piece, reply))) = tokio::time::timeout(IDLE, pieces.recv()).await else {
            sessions().remove(&session);
            let quiet = AppendError::Broken("the forwarding node went quiet".into());
            let _ = appender.finish(Some(quiet)).await;
            return;
        };
        let pushed = if piece.offset != appender.at() {
            Err(AppendError::Broken("a piece arrived out of order".into()))
        } else {
            appender.push(&piece.data).await
        };
        let end = match (pushed, piece.broken) {
            (Err(e), _) => Some(Some(e)),
            (Ok(()), Some(why)) => Some(Some(AppendError::Broken(why))),
            (Ok(()), None) if piece.last => Some(None),
            (Ok(()), None) => None,
        };
        match end {
            None => {
                let at = appender.at();
                let _ = reply.send(UploadAnswer {
                    received: at,
                    ..UploadAnswer::default()
                });
            }
            Some(failure) => {
                sessions().remove(&session);
                let answer = match appender.finish(failure).await {
                    Ok(w) => written(w, true),
                    Err(e) => failed(e),
                };
                let _ = reply.send(answer);
                return;
            }
        }
    }
}

/// The forwarding side: asks `owner` (the node storing the upload).
pub struct Forward {
    owner: String,
    base: UploadRequest,
}

impl Forward {
    /// Requests about `id` on `owner` for `who`.
    pub fn new(owner: &str, id: &JobId, who: &Principal) -> Self {
        Forward {
            owner: owner.to_string(),
            base: UploadRequest {
                upload_id: id.to_string(),
                email: who.email.clone(),
                admin: who.admin,
                ..UploadRequest::default()
            },
        }
    }

    async fn call(&self, r: UploadRequest) -> Result<UploadAnswer, RemoteError> {
        jobs::call(&self.owner, |reply| JobsMsg::Upload(r, reply)).await
    }

    /// tus `HEAD`.
    pub async fn state(&self) -> Result<Result<UploadState, AppendError>, RemoteError> {
        let a = self
            .call(UploadRequest {
                kind: kind::HEAD,
                ..self.base.clone()
            })
            .await?;
        if Status::of(a.status) != Status::Ok {
            return Ok(Err(error_of(a)));
        }
        Ok(Ok(UploadState {
            received: a.received,
            length: a.length,
            expires_ms: a.expires_ms,
            metadata: a.metadata,
            job: a.job_id.as_deref().and_then(JobId::parse),
        }))
    }

    /// tus `DELETE`.
    pub async fn delete(&self) -> Result<Result<(), AppendError>, RemoteError> {
        let a = self
            .call(UploadRequest {
                kind: kind::DELETE,
                ..self.base.clone()
            })
            .await?;
        Ok(if Status::of(a.status) == Status::Ok {
            Ok(())
        } else {
            Err(error_of(a))
        })
    }

    /// Starts forwarding a `PATCH` at `offset`.
    pub fn patch(self, offset: u64, checksum: Option<Vec<u8>>, declared: Option<u64>) -> Patch {
        let mut session = [0u8; 8];
        let _ = getrandom::fill(&mut session);
        Patch {
            forward: self,
            session: u64::from_le_bytes(session),
            offset,
            first: true,
            ended: false,
            checksum,
            declared,
        }
    }
}

/// A `PATCH` being forwarded, piece by piece.
pub struct Patch {
    forward: Forward,
    session: u64,
    offset: u64,
    first: bool,
    /// The storing node has answered the whole `PATCH`.
    ended: bool,
    checksum: Option<Vec<u8>>,
    declared: Option<u64>,
}

impl Drop for Patch {
    /// A `PATCH` dropped before its answer (the client went away and the server dropped the
    /// request) ends its session on the storing node now, not after [`IDLE`].
    fn drop(&mut self) {
        if self.ended || self.first {
            return;
        }
        let r = UploadRequest {
            kind: kind::PIECE,
            session: self.session,
            offset: self.offset,
            last: true,
            broken: Some("the client went away".into()),
            ..self.forward.base.clone()
        };
        let owner = self.forward.owner.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = jobs::call(&owner, |reply| JobsMsg::Upload(r, reply)).await;
            });
        }
    }
}

/// After a piece: go on, or the `PATCH`'s answer.
pub enum Sent {
    /// Send the next piece.
    More,
    /// The answer (no more pieces are taken).
    Done(Result<Written, AppendError>),
}

impl Patch {
    /// Sends the next piece; `last` ends the body, `broken` says it broke off.
    pub async fn send(&mut self, data: Vec<u8>, last: bool, broken: Option<String>) -> Result<Sent, RemoteError> {
        let n = data.len() as u64;
        let r = UploadRequest {
            kind: kind::PIECE,
            session: self.session,
            offset: self.offset,
            data,
            first: self.first,
            last: last || broken.is_some(),
            checksum: if self.first { self.checksum.take() } else { None },
            declared: if self.first { self.declared } else { None },
            broken,
            ..self.forward.base.clone()
        };
        self.first = false;
        // On an error the session there may live on: dropping `self` ends it.
        let a = self.forward.call(r).await?;
        self.offset += n;
        if !a.done {
            return Ok(Sent::More);
        }
        self.ended = true;
        if Status::of(a.status) != Status::Ok {
            return Ok(Sent::Done(Err(error_of(a))));
        }
        Ok(Sent::Done(Ok(Written {
            received: a.received,
            expires_ms: a.expires_ms,
            job: a.job_id.as_deref().and_then(JobId::parse),
        })))
    }
}
