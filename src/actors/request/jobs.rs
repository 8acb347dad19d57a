//! The request role's face to other nodes (`jobs.v1:<stable name>`): every node's jobs actor (pg group `jobs.v1:<stable name>`) answers
//! status, list, cancel/delete and MP3 chunks for the jobs it owns, so any node's gateway
//! can serve any job. Messages are protobuf (prost) structs: typed, and extensible by
//! adding fields with new tags.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;

use super::{JobError, RequestMsg, handoff, placement, quota, resumable};
use crate::actors::converter::host;
use crate::actors::{CALL_TIMEOUT, Role, ask, tell};
use crate::auth::Principal;
pub use crate::cluster::RemoteError;
use crate::cluster::pieces::CHUNK;
use crate::config::Config;
use crate::meta::Meta;
use crate::store::{Delivery, DeliveryState, Job, JobId, JobState, Produced, Source};

/// The group of `node`'s jobs actor.
pub fn group(node: &str) -> String {
    format!("jobs.v1:{node}")
}

/// Answer codes of the request role's cross-node answers (`jobs.v1`, `placement.v1`
/// handoffs, quota questions and forwarded tus requests). An unknown number (from a newer
/// node) reads as [`Status::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// No such job (or not the caller's).
    NotFound = 1,
    /// Wrong state.
    Conflict = 2,
    /// The owner failed.
    Error = 3,
    /// The owner is shutting down.
    Draining = 4,
    /// The job expired (retention).
    Expired = 5,
    /// The owner is short of disk space.
    NoSpace = 6,
    /// Resumable uploads: `Upload-Offset` is not where the upload is.
    Offset = 101,
    /// Resumable uploads: the body goes past `Upload-Length`.
    TooLong = 102,
    /// Resumable uploads: another request is writing the upload.
    Busy = 103,
    /// Resumable uploads: the body's digest is not `Upload-Checksum`'s.
    Checksum = 104,
    /// Resumable uploads: the client's body broke off.
    Broken = 105,
    /// Resumable uploads: the data volume is full.
    Full = 106,
    /// Resumable uploads: the forwarded session is gone.
    Lost = 107,
}

impl Status {
    /// The status a wire number stands for.
    pub fn of(raw: i32) -> Status {
        Status::try_from(raw).unwrap_or(Status::Error)
    }
}

/// Who asks, about which job.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobQuery {
    /// The job.
    #[prost(string, tag = "1")]
    pub job_id: String,
    /// The caller's email (empty for a signed link).
    #[prost(string, tag = "2")]
    pub email: String,
    /// The caller is an admin.
    #[prost(bool, tag = "3")]
    pub admin: bool,
    /// A verified signed link: no caller.
    #[prost(bool, tag = "4")]
    pub link: bool,
    /// First byte (chunks only).
    #[prost(uint64, tag = "5")]
    pub offset: u64,
    /// A chunk for a copy (`copies.rs`): the converted MP3 before its job is `done`.
    #[prost(bool, tag = "6")]
    pub copy: bool,
}

/// A job on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobView {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    owner_email: String,
    #[prost(string, tag = "3")]
    state: String,
    #[prost(double, tag = "4")]
    progress: f64,
    #[prost(string, optional, tag = "5")]
    error_code: Option<String>,
    #[prost(string, optional, tag = "6")]
    error_message: Option<String>,
    #[prost(string, optional, tag = "7")]
    source_url: Option<String>,
    #[prost(string, tag = "8")]
    file_name: String,
    #[prost(uint32, optional, tag = "9")]
    bitrate_kbps: Option<u32>,
    #[prost(uint32, optional, tag = "10")]
    vbr_quality: Option<u32>,
    #[prost(int64, tag = "11")]
    attempt: i64,
    #[prost(int64, tag = "12")]
    created_at_ms: i64,
    #[prost(int64, tag = "13")]
    updated_at_ms: i64,
    #[prost(int64, optional, tag = "14")]
    finished_at_ms: Option<i64>,
    #[prost(string, optional, tag = "15")]
    webhook_url: Option<String>,
    #[prost(message, optional, boxed, tag = "16")]
    webhook: Option<Box<DeliveryView>>,
    #[prost(int64, optional, tag = "17")]
    mp3_bytes: Option<i64>,
    #[prost(int64, optional, tag = "18")]
    duration_ms: Option<i64>,
    #[prost(string, optional, tag = "19")]
    warnings: Option<String>,
}

/// A webhook delivery on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeliveryView {
    #[prost(string, tag = "1")]
    event_id: String,
    #[prost(string, tag = "2")]
    event_type: String,
    #[prost(string, tag = "3")]
    url: String,
    #[prost(int64, tag = "4")]
    created_at_ms: i64,
    #[prost(string, tag = "5")]
    state: String,
    #[prost(int64, tag = "6")]
    attempts: i64,
    #[prost(int64, tag = "7")]
    next_attempt_ms: i64,
    #[prost(int64, optional, tag = "8")]
    last_status: Option<i64>,
    #[prost(string, optional, tag = "9")]
    last_error: Option<String>,
    #[prost(int64, optional, tag = "10")]
    delivered_at_ms: Option<i64>,
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        DeliveryView {
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            url: d.url.clone(),
            created_at_ms: d.created_at_ms,
            state: d.state.as_str().to_string(),
            attempts: d.attempts,
            next_attempt_ms: d.next_attempt_ms,
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            delivered_at_ms: d.delivered_at_ms,
        }
    }
}

impl DeliveryView {
    /// Back to a [`Delivery`]; `None` if its state is not understood.
    pub fn to_delivery(&self) -> Option<Delivery> {
        Some(Delivery {
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            url: self.url.clone(),
            created_at_ms: self.created_at_ms,
            state: DeliveryState::parse(&self.state)?,
            attempts: self.attempts,
            next_attempt_ms: self.next_attempt_ms,
            last_status: self.last_status,
            last_error: self.last_error.clone(),
            delivered_at_ms: self.delivered_at_ms,
        })
    }
}

/// One job, or why not.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobAnswer {
    /// A [`Status`].
    #[prost(enumeration = "Status", tag = "1")]
    pub status: i32,
    /// Why not.
    #[prost(string, tag = "2")]
    pub message: String,
    /// The job (absent after a delete).
    #[prost(message, optional, tag = "3")]
    pub job: Option<JobView>,
}

/// Which job a user submitted with an Idempotency-Key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyQuery {
    /// The submitter.
    #[prost(string, tag = "1")]
    pub email: String,
    /// The key.
    #[prost(string, tag = "2")]
    pub key: String,
}

/// A page of jobs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListQuery {
    /// The caller.
    #[prost(string, tag = "1")]
    pub email: String,
    /// An admin...
    #[prost(bool, tag = "2")]
    pub admin: bool,
    /// ...asking for everyone's.
    #[prost(bool, tag = "3")]
    pub all: bool,
    /// Most jobs wanted.
    #[prost(uint32, tag = "4")]
    pub limit: u32,
}

/// The jobs found.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListAnswer {
    /// A [`Status`].
    #[prost(enumeration = "Status", tag = "1")]
    pub status: i32,
    /// Newest first.
    #[prost(message, repeated, tag = "2")]
    pub jobs: Vec<JobView>,
}

/// A piece of an MP3.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunkAnswer {
    /// A [`Status`].
    #[prost(enumeration = "Status", tag = "1")]
    pub status: i32,
    /// Why not.
    #[prost(string, tag = "2")]
    pub message: String,
    /// The user's file name.
    #[prost(string, tag = "3")]
    pub file_name: String,
    /// The MP3's size.
    #[prost(uint64, tag = "4")]
    pub total: u64,
    /// Up to [`CHUNK`] bytes from the query's offset.
    #[prost(bytes = "vec", tag = "5")]
    pub data: Vec<u8>,
}

ractor_cluster::derive_serialization_for_prost_type! {JobQuery}
ractor_cluster::derive_serialization_for_prost_type! {JobAnswer}
ractor_cluster::derive_serialization_for_prost_type! {KeyQuery}
ractor_cluster::derive_serialization_for_prost_type! {ListQuery}
ractor_cluster::derive_serialization_for_prost_type! {ListAnswer}
ractor_cluster::derive_serialization_for_prost_type! {ChunkAnswer}

/// The jobs actor's messages (these cross nodes).
#[derive(RactorClusterMessage)]
pub enum JobsMsg {
    /// A job's status.
    #[rpc]
    Get(JobQuery, RpcReplyPort<JobAnswer>),
    /// Cancel or delete a job.
    #[rpc]
    Delete(JobQuery, RpcReplyPort<JobAnswer>),
    /// Jobs of a user (or all).
    #[rpc]
    List(ListQuery, RpcReplyPort<ListAnswer>),
    /// The job a user submitted with an Idempotency-Key (`NOT_FOUND` if not on this node).
    #[rpc]
    Keyed(KeyQuery, RpcReplyPort<JobAnswer>),
    /// A chunk of a done job's MP3.
    #[rpc]
    Chunk(JobQuery, RpcReplyPort<ChunkAnswer>),
    /// Progress of one of this node's jobs, converting on another node.
    Progress(host::Progress),
    /// A piece of the result of one of this node's jobs, converted on another node.
    #[rpc]
    Result(host::Piece, RpcReplyPort<host::Answer>),
    /// A piece of a file of a job that a leaving node hands over (scale-down).
    #[rpc]
    HandoffPiece(handoff::FilePiece, RpcReplyPort<host::Answer>),
    /// A job that a leaving node hands over, after its files' pieces.
    #[rpc]
    Adopt(handoff::HandoverMsg, RpcReplyPort<host::Answer>),
    /// What a user uses on this node (quotas).
    #[rpc]
    Usage(quota::UsageQuery, RpcReplyPort<quota::UsageAnswer>),
    /// A tus request about one of this node's uploads, forwarded by the node it reached.
    #[rpc]
    Upload(
        resumable::forwarded::UploadRequest,
        RpcReplyPort<resumable::forwarded::UploadAnswer>,
    ),
    /// Take a copy of this job's MP3 now, from its node (which waits for it before the job
    /// is `done`).
    #[rpc]
    Replicate(JobQuery, RpcReplyPort<JobAnswer>),
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> Self {
        JobView {
            id: job.id.to_string(),
            owner_email: job.owner_email.clone(),
            state: job.state.to_string(),
            progress: job.progress,
            error_code: job.error_code.clone(),
            error_message: job.error_message.clone(),
            source_url: match &job.source {
                Source::Url(url) => Some(url.clone()),
                Source::Upload => None,
            },
            file_name: job.file_name.clone(),
            bitrate_kbps: job.bitrate_kbps.map(u32::from),
            vbr_quality: job.vbr_quality.map(u32::from),
            attempt: job.attempt,
            created_at_ms: job.created_at_ms,
            updated_at_ms: job.updated_at_ms,
            finished_at_ms: job.finished_at_ms,
            webhook_url: job.webhook_url.clone(),
            webhook: job.webhook.as_deref().map(|d| Box::new(DeliveryView::from(d))),
            mp3_bytes: job.produced.as_ref().map(|p| p.mp3_bytes),
            duration_ms: job.produced.as_ref().map(|p| p.duration_ms),
            warnings: job.produced.as_ref().and_then(|p| p.warnings.clone()),
        }
    }
}

impl JobView {
    /// Back to a [`Job`]; `None` if a field is not understood.
    pub fn to_job(&self) -> Option<Job> {
        Some(Job {
            id: JobId::parse(&self.id)?,
            owner_email: self.owner_email.clone(),
            state: self.state.parse::<JobState>().ok()?,
            progress: self.progress,
            error_code: self.error_code.clone(),
            error_message: self.error_message.clone(),
            source: self.source_url.clone().map_or(Source::Upload, Source::Url),
            file_name: self.file_name.clone(),
            bitrate_kbps: self.bitrate_kbps.and_then(|b| u16::try_from(b).ok()),
            vbr_quality: self.vbr_quality.and_then(|q| u8::try_from(q).ok()),
            attempt: self.attempt,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            finished_at_ms: self.finished_at_ms,
            webhook_url: self.webhook_url.clone(),
            webhook: match &self.webhook {
                Some(d) => Some(Box::new(d.to_delivery()?)),
                None => None,
            },
            produced: match (self.mp3_bytes, self.duration_ms) {
                (Some(mp3_bytes), Some(duration_ms)) => Some(Produced {
                    mp3_bytes,
                    duration_ms,
                    warnings: self.warnings.clone(),
                }),
                _ => None,
            },
        })
    }
}

/// The [`Status`] of an error.
pub fn code(e: &JobError) -> Status {
    match e {
        JobError::NotFound => Status::NotFound,
        JobError::Conflict(_) => Status::Conflict,
        JobError::Draining => Status::Draining,
        JobError::Expired(_) => Status::Expired,
        JobError::NoSpace => Status::NoSpace,
        JobError::Store(_) | JobError::Io(_) => Status::Error,
    }
}

/// The error an answer's status stands for.
pub fn error(status: i32, message: String) -> JobError {
    match Status::of(status) {
        Status::NotFound => JobError::NotFound,
        Status::Conflict => JobError::Conflict(message),
        Status::Draining => JobError::Draining,
        Status::Expired => JobError::Expired(message),
        Status::NoSpace => JobError::NoSpace,
        _ => JobError::Io(std::io::Error::other(format!("on the owner node: {message}"))),
    }
}

fn principal(q: &JobQuery) -> Option<Principal> {
    (!q.link).then(|| Principal {
        email: q.email.clone(),
        admin: q.admin,
    })
}

fn job_answer(result: Result<Option<Job>, JobError>) -> JobAnswer {
    match result {
        Ok(job) => JobAnswer {
            status: Status::Ok.into(),
            message: String::new(),
            job: job.as_ref().map(JobView::from),
        },
        Err(e) => JobAnswer {
            status: code(&e).into(),
            message: e.to_string(),
            job: None,
        },
    }
}

async fn answer(config: Arc<Config>, meta: Meta, message: JobsMsg) {
    match message {
        JobsMsg::Progress(p) => {
            if let Some(id) = JobId::parse(&p.job_id) {
                let (attempt, fraction) = (p.attempt, p.fraction);
                tell(Role::Request, RequestMsg::Progress { id, attempt, fraction });
            }
        }
        JobsMsg::Result(piece, reply) => {
            let _ = reply.send(placement::remote::receive(&config, piece).await);
        }
        JobsMsg::HandoffPiece(piece, reply) => handoff::receive_piece(&config, piece, reply).await,
        JobsMsg::Adopt(message, reply) => {
            let _ = reply.send(handoff::adopt(&config, message).await);
        }
        JobsMsg::Usage(q, reply) => {
            let _ = reply.send(quota::answer(q).await);
        }
        JobsMsg::Upload(request, reply) => {
            let _ = reply.send(resumable::forwarded::answer(config, request).await);
        }
        JobsMsg::Replicate(q, reply) => {
            let result = match JobId::parse(&q.job_id) {
                Some(id) => super::copies::take(&meta, &config, &id)
                    .await
                    .map(|_| None)
                    .map_err(|e| JobError::Io(std::io::Error::other(e))),
                None => Err(JobError::NotFound),
            };
            let _ = reply.send(job_answer(result));
        }
        JobsMsg::Get(q, reply) => {
            let (id, who) = (JobId::parse(&q.job_id), principal(&q));
            let result = match (id, who) {
                (Some(id), Some(who)) => request(|reply| RequestMsg::Get { id, who, reply }).await.map(Some),
                _ => Err(JobError::NotFound),
            };
            let _ = reply.send(job_answer(result));
        }
        JobsMsg::Delete(q, reply) => {
            let (id, who) = (JobId::parse(&q.job_id), principal(&q));
            let result = match (id, who) {
                (Some(id), Some(who)) => request(|reply| RequestMsg::Delete { id, who, reply }).await,
                _ => Err(JobError::NotFound),
            };
            let _ = reply.send(job_answer(result));
        }
        JobsMsg::Keyed(q, reply) => {
            let (email, key) = (q.email, q.key);
            let result = request(|reply| RequestMsg::Keyed { email, key, reply })
                .await
                .and_then(|job| job.ok_or(JobError::NotFound).map(Some));
            let _ = reply.send(job_answer(result));
        }
        JobsMsg::List(q, reply) => {
            let who = Principal {
                email: q.email,
                admin: q.admin,
            };
            let (all, limit) = (q.all, q.limit);
            let result = request(|reply| RequestMsg::List {
                who,
                all,
                limit,
                offset: 0,
                reply,
            })
            .await;
            let answer = match result {
                Ok(jobs) => ListAnswer {
                    status: Status::Ok.into(),
                    jobs: jobs.iter().map(JobView::from).collect(),
                },
                Err(_) => ListAnswer {
                    status: Status::Error.into(),
                    jobs: Vec::new(),
                },
            };
            let _ = reply.send(answer);
        }
        JobsMsg::Chunk(q, reply) => {
            let Some(id) = JobId::parse(&q.job_id) else {
                let _ = reply.send(chunk_error(JobError::NotFound));
                return;
            };
            let who = principal(&q);
            let asked = id.clone();
            let mut file = if q.copy {
                request(|reply| RequestMsg::Output { id, reply }).await
            } else {
                request(|reply| RequestMsg::Mp3 { id, who, reply }).await
            };
            if !q.copy && matches!(file, Err(JobError::NotFound)) {
                // Not a job of this node: a copy of another node's MP3, if this node holds one.
                file = super::copies::copy_file(&meta, &config.data_dir, &asked, principal(&q).as_ref()).await;
            }
            let answer = match file {
                Ok(file) => {
                    let offset = q.offset;
                    let file_name = file.file_name.clone();
                    let read = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, Vec<u8>)> {
                        let mut f = std::fs::File::open(&file.path)?;
                        let total = f.metadata()?.len();
                        f.seek(SeekFrom::Start(offset.min(total)))?;
                        let mut data = Vec::with_capacity(CHUNK as usize);
                        f.take(u64::from(CHUNK)).read_to_end(&mut data)?;
                        Ok((total, data))
                    })
                    .await;
                    match read {
                        Ok(Ok((total, data))) => ChunkAnswer {
                            status: Status::Ok.into(),
                            message: String::new(),
                            file_name,
                            total,
                            data,
                        },
                        Ok(Err(e)) => chunk_error(JobError::Io(e)),
                        Err(e) => chunk_error(JobError::Io(std::io::Error::other(e))),
                    }
                }
                Err(e) => chunk_error(e),
            };
            let _ = reply.send(answer);
        }
    }
}

/// Asks this node's request actor; its being unreachable is an I/O error.
pub(super) async fn request<T: Send + 'static>(
    make: impl FnOnce(RpcReplyPort<Result<T, JobError>>) -> RequestMsg,
) -> Result<T, JobError> {
    ask(Role::Request, make, CALL_TIMEOUT)
        .await
        .map_err(|e| JobError::Io(std::io::Error::other(e)))
        .and_then(|r| r)
}

fn chunk_error(e: JobError) -> ChunkAnswer {
    ChunkAnswer {
        status: code(&e).into(),
        message: e.to_string(),
        file_name: String::new(),
        total: 0,
        data: Vec::new(),
    }
}

/// The jobs actor: answers other nodes about this node's jobs (and the MP3 copies it
/// holds), with the node's member of the metadata group.
pub struct JobsActor(pub Meta);

impl Actor for JobsActor {
    type Msg = JobsMsg;
    type State = Arc<Config>;
    type Arguments = Arc<Config>;

    async fn pre_start(
        &self,
        myself: ActorRef<JobsMsg>,
        config: Arc<Config>,
    ) -> Result<Arc<Config>, ActorProcessingErr> {
        ractor::pg::join(group(&config.node_name), vec![myself.get_cell()]);
        Ok(config)
    }

    async fn handle(
        &self,
        _myself: ActorRef<JobsMsg>,
        message: JobsMsg,
        config: &mut Arc<Config>,
    ) -> Result<(), ActorProcessingErr> {
        // Each request runs on its own task: one slow download never holds up a status call.
        tokio::spawn(answer(config.clone(), self.0.clone(), message));
        Ok(())
    }
}

/// The owner's jobs actor, if connected.
pub fn owner_actor(owner: &str) -> Option<ActorCell> {
    ractor::pg::get_members(&group(owner))
        .into_iter()
        .find(|c| !c.get_id().is_local())
}

/// Calls `owner`'s jobs actor.
pub async fn call<T: Send + 'static + ractor::BytesConvertable>(
    owner: &str,
    make: impl FnOnce(RpcReplyPort<T>) -> JobsMsg,
) -> Result<T, RemoteError> {
    let cell = owner_actor(owner).ok_or_else(|| RemoteError::OwnerDown(owner.to_string()))?;
    crate::cluster::call_actor(&cell, owner, make).await
}

/// The stable names of the other nodes whose jobs actors are connected.
pub fn other_owners(own: &str) -> Vec<String> {
    let mut owners: Vec<String> = ractor::pg::which_groups()
        .into_iter()
        .filter_map(|g| g.strip_prefix("jobs.v1:").map(str::to_string))
        .filter(|n| n != own && owner_actor(n).is_some())
        .collect();
    owners.sort();
    owners.dedup();
    owners
}
