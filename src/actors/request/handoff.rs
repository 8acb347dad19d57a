//! Scale-down handoff: a pod that stops while its ordinal is no longer within its
//! StatefulSet's desired replicas gives every job it owns to the nodes that stay, then
//! exits, so nothing it accepted becomes unreachable.
//!
//! ```text
//! leaving: request ──Release──▶ (work stopped, every job listed)
//!          for each job, to a staying node's jobs actor (jobs.v1:<node>):
//!            HandoffPiece… (its MP4 if unfinished, its MP3 if done) ──▶ staged in tmp/
//!            Adopt(job, key, mail state, sizes) ──▶ request actor: files, then row, resumed
//!          request ──HandedOver──▶ row and files removed here
//! ```
//!
//! A job keeps its id; routing finds it on its new owner (`request/client.rs`). Unfinished
//! jobs start again from `queued` there (a conversion cut short here is redone); a pending
//! email is sent by the new owner. One job moves at a time per target, and a job is removed
//! here only after its new owner committed it, so an interrupted handoff loses nothing: what
//! was not handed over stays on this pod's volume. A plain restart (ordinal still wanted)
//! never hands over.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use super::events::Kind;
use super::jobs::{self, DeliveryView, JobView, JobsMsg};
use super::placement::stop;
use super::{JobError, RequestMsg, RequestState};
use crate::actors::converter::host::{Answer, Status};
use crate::actors::notifier::NotifierMsg;
use crate::actors::{CALL_TIMEOUT, Role, ask, tell};
use crate::cluster::mesh::ClusterMsg;
use crate::cluster::pieces::{next_chunk, stage};
use crate::config::Config;
use crate::store::{Files, Handover, JobId, JobState, MailState, StoreError};

/// How long the desired replica count may take to read.
const KUBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A job handed over, on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HandoverMsg {
    /// The job (boxed: it is most of the message).
    #[prost(message, optional, boxed, tag = "1")]
    pub job: Option<Box<JobView>>,
    /// The client's `Idempotency-Key`.
    #[prost(string, optional, tag = "2")]
    pub idempotency_key: Option<String>,
    /// Its email: 0 none, 1 pending, 2 sent.
    #[prost(int32, tag = "3")]
    pub mail: i32,
    /// The size of its MP4, sent before in pieces.
    #[prost(uint64, optional, tag = "4")]
    pub mp4_size: Option<u64>,
    /// The size of its MP3, sent before in pieces.
    #[prost(uint64, optional, tag = "5")]
    pub mp3_size: Option<u64>,
    /// Its webhook deliveries, done or pending.
    #[prost(message, repeated, tag = "6")]
    pub webhooks: Vec<DeliveryView>,
}

/// A piece of a handed-over job's file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FilePiece {
    /// The job.
    #[prost(string, tag = "1")]
    pub job_id: String,
    /// `mp4` or `mp3`.
    #[prost(string, tag = "2")]
    pub kind: String,
    /// Where `data` starts.
    #[prost(uint64, tag = "3")]
    pub offset: u64,
    /// At most [`CHUNK`](crate::cluster::pieces::CHUNK) bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
    /// The file's size (on the last piece).
    #[prost(uint64, optional, tag = "5")]
    pub total: Option<u64>,
}

ractor_cluster::derive_serialization_for_prost_type! {HandoverMsg}
ractor_cluster::derive_serialization_for_prost_type! {FilePiece}

fn mail_code(mail: MailState) -> i32 {
    match mail {
        MailState::None => 0,
        MailState::Pending => 1,
        MailState::Sent => 2,
    }
}

fn mail_state(code: i32) -> Option<MailState> {
    Some(match code {
        0 => MailState::None,
        1 => MailState::Pending,
        2 => MailState::Sent,
        _ => return None,
    })
}

fn answer(status: Status, message: impl Into<String>) -> Answer {
    Answer {
        status: status.into(),
        message: message.into(),
    }
}

/// Where a piece of `id`'s `kind` file is staged on the receiving node.
fn staged(config: &Config, id: &JobId, kind: &str) -> PathBuf {
    Files::at(&config.data_dir)
        .tmp_dir()
        .join(format!("handoff-{id}.{kind}.part"))
}

/// The desired replicas when this pod is no longer wanted by its StatefulSet (and so must
/// hand its jobs over); `None` for a plain stop. Only under `--discovery kube`: elsewhere
/// there is no desired size to read. If the kube API cannot be read, the pod stops plainly
/// and keeps its data on its volume.
pub async fn leaving(config: &Config) -> Option<u32> {
    let cluster = config.cluster.as_ref()?;
    cluster.kube_selector.as_ref()?;
    let Some((set, ordinal)) = crate::cluster::kube::ordinal(&config.node_name) else {
        tracing::warn!(node = %config.node_name, "not a StatefulSet pod name; stopping without a handoff");
        return None;
    };
    let read = tokio::time::timeout(
        KUBE_TIMEOUT,
        crate::cluster::kube::desired_replicas(cluster.kube_namespace.clone(), set),
    )
    .await;
    match read {
        Ok(Ok(replicas)) if ordinal >= replicas => {
            tracing::info!(
                statefulset = set,
                replicas,
                ordinal,
                "scaled down: handing this node's jobs over"
            );
            Some(replicas)
        }
        Ok(Ok(replicas)) => {
            tracing::info!(
                statefulset = set,
                replicas,
                ordinal,
                "still wanted: stopping without a handoff"
            );
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the StatefulSet; stopping without a handoff (the jobs stay on this volume)");
            None
        }
        Err(_) => {
            tracing::warn!("the kube API did not answer; stopping without a handoff (the jobs stay on this volume)");
            None
        }
    }
}

/// What a handoff did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    /// Jobs now owned by another node.
    pub moved: usize,
    /// Jobs no staying node took (they stay on this volume).
    pub kept: usize,
}

/// The staying nodes (ordinal below `replicas`) that are connected now.
async fn targets(config: &Config, replicas: u32) -> Vec<String> {
    let members = ask(Role::Cluster, |reply| ClusterMsg::Members { reply }, CALL_TIMEOUT)
        .await
        .unwrap_or_default();
    let mut nodes: Vec<String> = members
        .into_iter()
        .filter(|m| m.state == "up" && m.node != config.node_name)
        .filter(|m| crate::cluster::kube::ordinal(&m.node).is_some_and(|(_, n)| n < replicas))
        .filter(|m| jobs::owner_actor(&m.node).is_some())
        .map(|m| m.node)
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

/// Hands every job of this node to the staying nodes (round-robin, one stream per
/// target, the next target when one fails).
pub async fn hand_over(config: Arc<Config>, replicas: u32) -> Summary {
    let targets = targets(&config, replicas).await;
    let released = ask(Role::Request, |reply| RequestMsg::Release { reply }, CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let all = match released {
        Ok(all) => all,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the jobs to hand over; they stay on this volume");
            return Summary::default();
        }
    };
    if targets.is_empty() {
        tracing::error!(
            jobs = all.len(),
            "no staying node is connected; the jobs stay on this volume"
        );
        return Summary {
            moved: 0,
            kept: all.len(),
        };
    }
    tracing::info!(jobs = all.len(), targets = ?targets, "handing jobs over");
    let files = Files::at(&config.data_dir);
    let mut shares: Vec<Vec<Handover>> = vec![Vec::new(); targets.len()];
    for (i, h) in all.into_iter().enumerate() {
        shares[i % targets.len()].push(h);
    }
    let streams = shares.into_iter().enumerate().map(|(i, share)| {
        let (targets, files) = (targets.clone(), files.clone());
        async move {
            let mut summary = Summary::default();
            for h in share {
                // This stream's own target first, then the others.
                let order = targets.iter().cycle().skip(i).take(targets.len());
                let mut moved = false;
                for target in order {
                    match send_job(target, &files, &h).await {
                        Ok(()) => {
                            moved = true;
                            break;
                        }
                        Err(e) => tracing::warn!(job_id = %h.job.id, node = %target, error = %e, "handover refused"),
                    }
                }
                if moved {
                    let id = h.job.id.clone();
                    let forgotten = ask(
                        Role::Request,
                        |reply| RequestMsg::HandedOver { id, reply },
                        CALL_TIMEOUT,
                    )
                    .await;
                    if !matches!(forgotten, Ok(Ok(()))) {
                        tracing::warn!(job_id = %h.job.id, "handed over, but not removed here; its new owner has it");
                    }
                    summary.moved += 1;
                } else {
                    tracing::error!(job_id = %h.job.id, "no staying node took this job; it stays on this volume");
                    summary.kept += 1;
                }
            }
            summary
        }
    });
    let results = futures_util::future::join_all(streams).await;
    results.into_iter().fold(Summary::default(), |a, s| Summary {
        moved: a.moved + s.moved,
        kept: a.kept + s.kept,
    })
}

/// Sends one job (its files first, then the job) to `target`.
async fn send_job(target: &str, files: &Files, h: &Handover) -> Result<(), String> {
    let id = &h.job.id;
    let mp4 = (!h.job.state.is_final()).then(|| files.input(id));
    let mp3 = (h.job.state == JobState::Done).then(|| files.output(id));
    let mut sizes = [None, None];
    for (slot, (kind, path)) in [("mp4", mp4), ("mp3", mp3)].into_iter().enumerate() {
        let Some(path) = path else { continue };
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            continue;
        }
        sizes[slot] = Some(send_file(target, id, kind, &path).await?);
    }
    let message = HandoverMsg {
        job: Some(Box::new(JobView::from(&h.job))),
        idempotency_key: h.idempotency_key.clone(),
        mail: mail_code(h.mail),
        mp4_size: sizes[0],
        mp3_size: sizes[1],
        webhooks: h.webhooks.iter().map(DeliveryView::from).collect(),
    };
    let answer = jobs::call(target, |reply| JobsMsg::Adopt(message, reply))
        .await
        .map_err(|e| e.to_string())?;
    if Status::of(answer.status) == Status::Ok {
        Ok(())
    } else {
        Err(answer.message)
    }
}

/// Streams `path` to `target` in pieces; returns its size.
async fn send_file(target: &str, id: &JobId, kind: &str, path: &Path) -> Result<u64, String> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| e.to_string())?;
    let size = file.metadata().await.map_err(|e| e.to_string())?.len();
    let mut offset = 0u64;
    loop {
        let data = next_chunk(&mut file).await.map_err(|e| e.to_string())?;
        let len = data.len() as u64;
        let last = offset + len >= size;
        let piece = FilePiece {
            job_id: id.to_string(),
            kind: kind.to_string(),
            offset,
            data,
            total: last.then_some(size),
        };
        let answer = jobs::call(target, |reply| JobsMsg::HandoffPiece(piece, reply))
            .await
            .map_err(|e| e.to_string())?;
        if Status::of(answer.status) != Status::Ok {
            return Err(answer.message);
        }
        if last {
            return Ok(size);
        }
        offset += len;
    }
}

/// The receiving side of a piece (called by the jobs actor): staged in `tmp/`.
pub async fn receive_piece(config: &Config, piece: FilePiece, reply: RpcReplyPort<Answer>) {
    let (Some(id), true) = (
        JobId::parse(&piece.job_id),
        matches!(piece.kind.as_str(), "mp4" | "mp3"),
    ) else {
        let _ = reply.send(answer(Status::Error, "bad job id or file kind"));
        return;
    };
    let path = staged(config, &id, &piece.kind);
    let written = stage(&path, piece.offset, &piece.data, piece.total).await;
    let _ = reply.send(match written {
        Ok(()) => answer(Status::Ok, ""),
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            answer(Status::Error, format!("cannot stage the {}: {e}", piece.kind))
        }
    });
}

/// The receiving side of a job (called by the jobs actor): its staged files are checked
/// and the request actor takes it over.
pub async fn adopt(config: &Config, message: HandoverMsg) -> Answer {
    let Some(job) = message.job.as_deref().and_then(JobView::to_job) else {
        return answer(Status::Error, "unreadable job");
    };
    let Some(mail) = mail_state(message.mail) else {
        return answer(Status::Error, "unknown mail state");
    };
    let mut files = Vec::new();
    for (kind, size) in [("mp4", message.mp4_size), ("mp3", message.mp3_size)] {
        let Some(size) = size else {
            files.push(None);
            continue;
        };
        let path = staged(config, &job.id, kind);
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.len() == size => files.push(Some(path)),
            _ => return answer(Status::Error, format!("its {kind} did not arrive whole")),
        }
    }
    let (input, mp3) = (files[0].take(), files[1].take());
    let Some(webhooks) = message.webhooks.iter().map(DeliveryView::to_delivery).collect() else {
        return answer(Status::Error, "unreadable webhook delivery");
    };
    let handover = Handover {
        job,
        idempotency_key: message.idempotency_key,
        mail,
        webhooks,
    };
    let taken = ask(
        Role::Request,
        |reply| RequestMsg::Adopt {
            handover,
            input,
            mp3,
            reply,
        },
        CALL_TIMEOUT,
    )
    .await;
    match taken {
        Ok(Ok(_)) => answer(Status::Ok, ""),
        Ok(Err(e)) => answer(Status::Refused, e.to_string()),
        Err(e) => answer(Status::Error, e.to_string()),
    }
}

/// The request actor's side of a handoff: releasing every job when this node leaves, and
/// adopting one that a leaving node hands over.
impl RequestState {
    /// Stops all work for a scale-down handoff and lists every job.
    pub(super) async fn release(&mut self) -> Result<Vec<Handover>, JobError> {
        self.released = true;
        self.draining.get_or_insert_with(Vec::new);
        self.queue.clear();
        for (_, (_, task)) in self.fetching.drain() {
            task.abort();
        }
        for (id, placed) in self.running.drain() {
            stop(id, placed);
        }
        self.drained();
        Ok(self.db.run(|s| s.handovers()).await?)
    }

    /// Takes over a job another node hands over: its files into place, then its row.
    pub(super) async fn adopt(
        &mut self,
        myself: &ActorRef<RequestMsg>,
        handover: Handover,
        input: Option<PathBuf>,
        mp3: Option<PathBuf>,
    ) -> Result<bool, JobError> {
        let staged: Vec<PathBuf> = input.iter().chain(mp3.iter()).cloned().collect();
        let (files, mail) = (self.files.clone(), handover.mail);
        let taken = if self.draining.is_some() {
            Err(JobError::Draining)
        } else {
            self.db
                .run(move |s| {
                    let id = &handover.job.id;
                    if s.job(id)?.is_some() {
                        return Ok(None);
                    }
                    let placed = input
                        .as_ref()
                        .map_or(Ok(()), |p| files.adopt_input(id, p))
                        .and_then(|()| mp3.as_ref().map_or(Ok(()), |p| files.adopt_output(id, p)));
                    if let Err(e) = placed {
                        let _ = files.remove_job(id);
                        return Err(StoreError::Worker(format!("cannot store its files: {e}")));
                    }
                    s.adopt(&handover)
                })
                .await
                .map_err(JobError::from)
        };
        let job = match taken {
            Ok(Some(job)) => job,
            refused => {
                // Not taken (already here, draining, or failed): its staged files go.
                for path in &staged {
                    let _ = tokio::fs::remove_file(path).await;
                }
                return refused.map(|_| false);
            }
        };
        tracing::info!(job_id = %job.id, state = %job.state, "took over a job from a leaving node");
        crate::metrics::adopted();
        if !job.state.is_final() {
            self.announce(Kind::Progress, &job);
            self.resume(myself, &job).await?;
        }
        if mail == MailState::Pending {
            tell(Role::Notifier, NotifierMsg::Wake);
        }
        Ok(true)
    }
}
