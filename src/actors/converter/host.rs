//! The converter's face to other nodes (`placement.v1`): the host actor runs other nodes'
//! conversions on this node's converter pool.
//!
//! An owner's request actor offers a job to a host (pg groups `placement.v1` and
//! `placement.v1:<stable name>`) and streams it the MP4 in pieces (`request/placement.rs`);
//! the host runs it on its own pool, sends progress to the owner's jobs actor as it happens
//! (it doubles as the lease) and hands the MP3 back in pieces when done, retrying while the
//! owner is unreachable. Every message carries the job's attempt, the fencing token.
//!
//! ```text
//! owner: request ──Offer/Input──▶ host (placement.v1) ──Convert──▶ converter (host's pool)
//! owner: jobs    ◀──Progress/Result── host
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use tokio::io::AsyncWriteExt;

use crate::actors::converter::{self, ConvertTask, ConverterMsg, ReportTo};
use crate::actors::request::jobs::{self, JobsMsg};
use crate::actors::{CALL_TIMEOUT, Role, ask, tell};
use crate::cluster::RemoteError;
use crate::cluster::pieces::next_chunk;
use crate::config::Config;
use crate::store::JobId;

/// The group every node's host actor joins.
pub const GROUP: &str = "placement.v1";
/// A reception that gets no input for this long is dropped.
const RECEIVE_IDLE: Duration = Duration::from_secs(60);
/// How long a host keeps trying to hand a result to an unreachable owner.
const DELIVERY_GIVE_UP: Duration = Duration::from_secs(600);

/// The group of `node`'s host actor.
pub fn group(node: &str) -> String {
    format!("{GROUP}:{node}")
}

/// Answer codes of `placement.v1`. An unknown number (from a newer node) reads as
/// [`Status::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Status {
    /// Accepted.
    Ok = 0,
    /// No free slot (or this job's older attempt still runs here).
    Busy = 1,
    /// Not the current attempt (fenced), or unknown.
    Refused = 2,
    /// Something failed.
    Error = 3,
}

impl Status {
    /// The status a wire number stands for.
    pub fn of(raw: i32) -> Status {
        Status::try_from(raw).unwrap_or(Status::Error)
    }
}

/// A job offered to a host.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Offer {
    /// The job (its owner is in its id).
    #[prost(string, tag = "1")]
    pub job_id: String,
    /// The fencing token.
    #[prost(int64, tag = "2")]
    pub attempt: i64,
    /// The MP4's size.
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// CBR bitrate asked for.
    #[prost(uint32, optional, tag = "4")]
    pub bitrate_kbps: Option<u32>,
    /// VBR quality asked for.
    #[prost(uint32, optional, tag = "5")]
    pub vbr_quality: Option<u32>,
    /// The owner's stable name, where progress and the result go (empty: the node named
    /// in the job id; a job handed over on scale-down has another owner).
    #[prost(string, tag = "6")]
    pub owner: String,
}

/// A piece of a file: the MP4 going to the host, or the MP3 coming back (with the outcome
/// on the last piece).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Piece {
    /// The job.
    #[prost(string, tag = "1")]
    pub job_id: String,
    /// The fencing token.
    #[prost(int64, tag = "2")]
    pub attempt: i64,
    /// Where `data` starts.
    #[prost(uint64, tag = "3")]
    pub offset: u64,
    /// At most [`CHUNK`](crate::cluster::pieces::CHUNK) bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
    /// The last piece.
    #[prost(bool, tag = "5")]
    pub last: bool,
    /// The file's size (on the last piece).
    #[prost(uint64, tag = "6")]
    pub total: u64,
    /// A failed conversion's error code (the last and only piece).
    #[prost(string, tag = "7")]
    pub error_code: String,
    /// ...and message.
    #[prost(string, tag = "8")]
    pub error_message: String,
    /// A done conversion's audio duration (the last piece).
    #[prost(uint64, tag = "9")]
    pub duration_ms: u64,
    /// ...and what was recovered from a damaged input (empty: whole).
    #[prost(string, tag = "10")]
    pub warnings: String,
    /// A failed conversion's kind ([`Failed`]).
    #[prost(enumeration = "Failed", tag = "11")]
    pub failed: i32,
}

/// How a placed conversion failed (on its result's last piece, beside the code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Failed {
    /// Not failed (or a node that does not say).
    Unspecified = 0,
    /// The job failed: its code and message say why.
    Job = 1,
    /// The host's data volume is full: not the job's fault; its owner queues it again.
    NoSpace = 2,
}

/// An answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Answer {
    /// A [`Status`].
    #[prost(enumeration = "Status", tag = "1")]
    pub status: i32,
    /// Why not.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// One attempt of one job.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Attempt {
    /// The job.
    #[prost(string, tag = "1")]
    pub job_id: String,
    /// The fencing token.
    #[prost(int64, tag = "2")]
    pub attempt: i64,
}

/// A placed conversion's progress.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Progress {
    /// The job.
    #[prost(string, tag = "1")]
    pub job_id: String,
    /// The fencing token.
    #[prost(int64, tag = "2")]
    pub attempt: i64,
    /// 0..=1.
    #[prost(double, tag = "3")]
    pub fraction: f64,
}

ractor_cluster::derive_serialization_for_prost_type! {Offer}
ractor_cluster::derive_serialization_for_prost_type! {Piece}
ractor_cluster::derive_serialization_for_prost_type! {Answer}
ractor_cluster::derive_serialization_for_prost_type! {Attempt}
ractor_cluster::derive_serialization_for_prost_type! {Progress}

/// The host actor's messages. `Offer`, `Input` and `Cancel` come from owners on other
/// nodes; the rest are local.
#[derive(RactorClusterMessage)]
pub enum HostMsg {
    /// Reserve a slot for a job.
    #[rpc]
    Offer(Offer, RpcReplyPort<Answer>),
    /// The next piece of its MP4; the last one starts the conversion.
    #[rpc]
    Input(Piece, RpcReplyPort<Answer>),
    /// The owner gave up on this attempt.
    Cancel(Attempt),
    /// From this node's converter.
    Progress(Progress),
    /// From this node's converter: the last piece, without data.
    Done(Piece),
    /// A result was handed over (or given up on).
    Delivered(Attempt),
    /// Drop stalled receptions.
    Sweep,
    /// This node is shutting down: refuse new offers.
    Stop,
}

/// An answer with `status` and `message`.
pub(crate) fn answer(status: Status, message: impl Into<String>) -> Answer {
    Answer {
        status: status.into(),
        message: message.into(),
    }
}

#[derive(Debug, PartialEq)]
enum Phase {
    Receiving,
    Converting,
    Delivering,
}

struct Hosted {
    options: Offer,
    received: u64,
    file: Option<tokio::fs::File>,
    last_input: Instant,
    phase: Phase,
    canceled: bool,
}

/// The host actor: runs other nodes' conversions on this node's converter.
pub struct HostActor;

/// Its state.
pub struct HostState {
    config: Arc<Config>,
    dir: PathBuf,
    hosted: HashMap<(JobId, i64), Hosted>,
    /// Shutting down: no new offers.
    stopping: bool,
}

impl HostState {
    fn input(&self, id: &JobId, attempt: i64) -> PathBuf {
        self.dir.join(format!("{id}.{attempt}.mp4"))
    }

    fn output(&self, id: &JobId, attempt: i64) -> PathBuf {
        self.dir.join(format!("{id}.{attempt}.mp3"))
    }

    async fn forget(&mut self, id: &JobId, attempt: i64) {
        self.hosted.remove(&(id.clone(), attempt));
        let _ = tokio::fs::remove_file(self.input(id, attempt)).await;
        let _ = tokio::fs::remove_file(self.output(id, attempt)).await;
    }

    async fn offer(&mut self, mut offer: Offer) -> Answer {
        let Some(id) = JobId::parse(&offer.job_id) else {
            return answer(Status::Error, "bad job id");
        };
        if offer.owner.is_empty() {
            offer.owner = id.owner().to_string();
        }
        let key = (id.clone(), offer.attempt);
        if self.hosted.contains_key(&key) {
            return answer(Status::Ok, "");
        }
        if self.stopping {
            return answer(Status::Busy, "this node is shutting down");
        }
        let receiving = self.hosted.values().filter(|h| h.phase == Phase::Receiving).count();
        let slots = ask(Role::Converter, |reply| ConverterMsg::Status { reply }, CALL_TIMEOUT).await;
        match slots {
            Ok((busy, total)) if busy + receiving < total => {}
            Ok(_) => return answer(Status::Busy, "no free converter slot"),
            Err(e) => return answer(Status::Busy, e.to_string()),
        }
        let file = match tokio::fs::File::create(self.input(&id, offer.attempt)).await {
            Ok(file) => file,
            Err(e) => return answer(Status::Error, format!("cannot store the input: {e}")),
        };
        tracing::info!(job_id = %id, attempt = offer.attempt, bytes = offer.size, "receiving a job to convert");
        self.hosted.insert(
            key,
            Hosted {
                options: offer,
                received: 0,
                file: Some(file),
                last_input: Instant::now(),
                phase: Phase::Receiving,
                canceled: false,
            },
        );
        answer(Status::Ok, "")
    }

    async fn receive_input(&mut self, piece: Piece) -> Answer {
        let Some(id) = JobId::parse(&piece.job_id) else {
            return answer(Status::Error, "bad job id");
        };
        let key = (id.clone(), piece.attempt);
        let Some(hosted) = self.hosted.get_mut(&key) else {
            return answer(Status::Refused, "no such placement");
        };
        if hosted.phase != Phase::Receiving || piece.offset != hosted.received {
            return answer(Status::Error, "out of order");
        }
        let Some(file) = hosted.file.as_mut() else {
            return answer(Status::Error, "no input file");
        };
        let mut written = file.write_all(&piece.data).await;
        hosted.received += piece.data.len() as u64;
        hosted.last_input = Instant::now();
        if written.is_ok() && piece.last {
            written = file.sync_all().await;
        }
        if let Err(e) = written {
            self.forget(&id, piece.attempt).await;
            return answer(Status::Error, format!("cannot store the input: {e}"));
        }
        if !piece.last {
            return answer(Status::Ok, "");
        }
        if hosted.received != hosted.options.size {
            self.forget(&id, piece.attempt).await;
            return answer(Status::Error, "the input is incomplete");
        }
        hosted.file = None;
        let options = self.config.convert_options(
            hosted.options.bitrate_kbps.and_then(|b| u16::try_from(b).ok()),
            hosted.options.vbr_quality.and_then(|q| u8::try_from(q).ok()),
        );
        let task = ConvertTask {
            id: id.clone(),
            attempt: piece.attempt,
            input: self.input(&id, piece.attempt),
            output: self.output(&id, piece.attempt),
            options,
            report: ReportTo::Host,
        };
        if converter::start(task).await {
            tracing::info!(job_id = %id, attempt = piece.attempt, "converting a job for its owner");
            if let Some(hosted) = self.hosted.get_mut(&key) {
                hosted.phase = Phase::Converting;
            }
            answer(Status::Ok, "")
        } else {
            self.forget(&id, piece.attempt).await;
            answer(Status::Busy, "no free converter slot")
        }
    }

    fn done(&mut self, myself: &ActorRef<HostMsg>, piece: Piece) {
        let Some(id) = JobId::parse(&piece.job_id) else { return };
        let attempt = piece.attempt;
        let Some(hosted) = self.hosted.get_mut(&(id.clone(), attempt)) else {
            return;
        };
        hosted.phase = Phase::Delivering;
        let canceled = hosted.canceled;
        let owner = hosted.options.owner.clone();
        let (output, me) = (self.output(&id, attempt), myself.clone());
        tokio::spawn(async move {
            if !canceled {
                deliver(&owner, &id, piece, &output).await;
            }
            let _ = me.send_message(HostMsg::Delivered(Attempt {
                job_id: id.to_string(),
                attempt,
            }));
        });
    }
}

/// Hands a result to its owner, retrying while the owner is unreachable.
async fn deliver(owner: &str, id: &JobId, outcome: Piece, output: &Path) {
    let started = Instant::now();
    let mut wait = Duration::from_secs(1);
    loop {
        match send_result(owner, id, &outcome, output).await {
            Ok(answer) if Status::of(answer.status) == Status::Ok => {
                tracing::info!(job_id = %id, attempt = outcome.attempt, owner, "result handed to its owner");
                return;
            }
            Ok(answer) if Status::of(answer.status) == Status::Refused => {
                tracing::info!(job_id = %id, attempt = outcome.attempt, reason = %answer.message,
                    "the owner refused this result (stale attempt)");
                return;
            }
            Ok(answer) => tracing::warn!(job_id = %id, reason = %answer.message, "the owner could not take the result"),
            Err(e) => tracing::info!(job_id = %id, error = %e, "cannot reach the owner; will retry"),
        }
        if started.elapsed() > DELIVERY_GIVE_UP {
            tracing::warn!(job_id = %id, "giving up handing this result to its owner");
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// One try at handing the result over: the MP3 in pieces, or the error.
async fn send_result(owner: &str, id: &JobId, outcome: &Piece, output: &Path) -> Result<Answer, RemoteError> {
    if !outcome.error_code.is_empty() {
        let piece = outcome.clone();
        return jobs::call(owner, |reply| JobsMsg::Result(piece, reply)).await;
    }
    let mut file = match tokio::fs::File::open(output).await {
        Ok(file) => file,
        Err(e) => return Ok(answer(Status::Error, format!("the MP3 is gone: {e}"))),
    };
    let total = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mut offset = 0u64;
    loop {
        let data = match next_chunk(&mut file).await {
            Ok(data) => data,
            Err(e) => return Ok(answer(Status::Error, format!("cannot read the MP3: {e}"))),
        };
        let len = data.len() as u64;
        let piece = Piece {
            job_id: id.to_string(),
            attempt: outcome.attempt,
            offset,
            data,
            last: offset + len >= total,
            total,
            ..Piece::default()
        };
        let piece = if piece.last {
            Piece {
                duration_ms: outcome.duration_ms,
                warnings: outcome.warnings.clone(),
                ..piece
            }
        } else {
            piece
        };
        let last = piece.last;
        let answer = jobs::call(owner, |reply| JobsMsg::Result(piece, reply)).await?;
        if Status::of(answer.status) != Status::Ok || last {
            return Ok(answer);
        }
        offset += len;
    }
}

impl Actor for HostActor {
    type Msg = HostMsg;
    type State = HostState;
    type Arguments = Arc<Config>;

    async fn pre_start(&self, myself: ActorRef<HostMsg>, config: Arc<Config>) -> Result<HostState, ActorProcessingErr> {
        // Whatever a previous incarnation received is stale: its owners have re-placed it.
        let dir = config.data_dir.join("remote");
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(&dir).await?;
        ractor::pg::join(GROUP.to_string(), vec![myself.get_cell()]);
        ractor::pg::join(group(&config.node_name), vec![myself.get_cell()]);
        myself.send_interval(Duration::from_secs(10), || HostMsg::Sweep);
        Ok(HostState {
            config,
            dir,
            hosted: HashMap::new(),
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<HostMsg>,
        message: HostMsg,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HostMsg::Offer(offer, reply) => {
                let _ = reply.send(state.offer(offer).await);
            }
            HostMsg::Input(piece, reply) => {
                let _ = reply.send(state.receive_input(piece).await);
            }
            HostMsg::Cancel(a) => {
                let Some(id) = JobId::parse(&a.job_id) else {
                    return Ok(());
                };
                let Some(hosted) = state.hosted.get_mut(&(id.clone(), a.attempt)) else {
                    return Ok(());
                };
                tracing::info!(job_id = %id, attempt = a.attempt, "the owner withdrew this job");
                match hosted.phase {
                    Phase::Receiving => state.forget(&id, a.attempt).await,
                    Phase::Converting => {
                        hosted.canceled = true;
                        tell(Role::Converter, ConverterMsg::Cancel { id });
                    }
                    Phase::Delivering => {}
                }
            }
            HostMsg::Progress(p) => {
                let owner = JobId::parse(&p.job_id)
                    .and_then(|id| state.hosted.get(&(id, p.attempt)))
                    .and_then(|h| jobs::owner_actor(&h.options.owner));
                if let Some(owner) = owner {
                    let _ = owner.send_message(JobsMsg::Progress(p));
                }
            }
            HostMsg::Done(piece) => state.done(&myself, piece),
            HostMsg::Delivered(a) => {
                if let Some(id) = JobId::parse(&a.job_id) {
                    state.forget(&id, a.attempt).await;
                }
            }
            HostMsg::Stop => state.stopping = true,
            HostMsg::Sweep => {
                let stalled: Vec<(JobId, i64)> = state
                    .hosted
                    .iter()
                    .filter(|(_, h)| h.phase == Phase::Receiving && h.last_input.elapsed() > RECEIVE_IDLE)
                    .map(|(k, _)| k.clone())
                    .collect();
                for (id, attempt) in stalled {
                    tracing::info!(job_id = %id, attempt, "dropping a stalled reception");
                    state.forget(&id, attempt).await;
                }
            }
        }
        Ok(())
    }
}

/// Sends `message` to this node's host actor (from the converter). The host is found
/// through its process group, not by name: see [`crate::cluster`] on names.
pub fn tell_host(message: HostMsg) -> bool {
    ractor::pg::get_local_members(&GROUP.to_string())
        .first()
        .is_some_and(|cell| cell.send_message(message).is_ok())
}

/// `node`'s host actor, if connected.
pub fn host_actor(node: &str) -> Option<ActorCell> {
    ractor::pg::get_members(&group(node))
        .into_iter()
        .find(|c| !c.get_id().is_local())
}
