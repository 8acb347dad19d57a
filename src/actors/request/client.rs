//! [`JobsClient`]: how the rest of a node (the HTTP gateway) reaches a job wherever it
//! lives. A job's owner is named in its id: local jobs go to this node's request actor,
//! other nodes' jobs through the cluster to the owner's jobs face (`jobs.rs`). While the
//! owner cannot be asked the answer is [`JobsError::OwnerUnreachable`], never "not found".
//!
//! A job handed over on scale-down keeps its id but lives on another node: when the named
//! owner does not have it (or is gone), the other nodes are asked, and where it was found
//! is remembered ([`Moved`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use ractor::RpcReplyPort;

use super::jobs::{self, JobAnswer, JobQuery, JobsMsg, RemoteError, Status};
use super::{JobError, Mp3File, RequestMsg};
use crate::actors::{CALL_TIMEOUT, CallError, Role, ask};
use crate::auth::Principal;
use crate::config::Config;
use crate::meta::{Command, Meta, MetaError};
use crate::store::{Db, Job, JobId};

/// Why a call about a job got no answer from it.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The answer of the node that has the job (or of this node's request actor).
    #[error(transparent)]
    Job(#[from] JobError),
    /// The node that owns (or may own) the job cannot be asked now.
    #[error(transparent)]
    OwnerUnreachable(#[from] RemoteError),
    /// The cluster's metadata (Idempotency-Key claims) cannot be written now: no leader
    /// is reachable (an election, or this node is on a minority side).
    #[error("{0}; try again (with the same Idempotency-Key, if one was sent)")]
    Meta(#[from] MetaError),
    /// This node's request actor did not answer.
    #[error(transparent)]
    Local(#[from] CallError),
    /// Ours: an answer we cannot read, a file we cannot open.
    #[error("{0}")]
    Internal(String),
}

impl JobsError {
    /// The job is not where it was looked for: not there, or there cannot be asked.
    fn missed(&self) -> bool {
        matches!(
            self,
            JobsError::Job(JobError::NotFound) | JobsError::OwnerUnreachable(_)
        )
    }
}

/// Where a job lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
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

/// A done job's MP3, from wherever it lives.
pub enum Mp3 {
    /// On this node: the file (the caller serves it, ranges and all).
    Here(Mp3File),
    /// On another node: bytes `start..=end` of `total`, streamed from there.
    Streamed {
        /// The user's original file name.
        file_name: String,
        /// The MP3's size.
        total: u64,
        /// The first byte sent.
        start: u64,
        /// The last byte sent.
        end: u64,
        /// The bytes.
        bytes: BoxStream<'static, std::io::Result<bytes::Bytes>>,
    },
    /// On another node, and the range asked starts past its end.
    Unsatisfiable {
        /// The MP3's size.
        total: u64,
    },
}

/// Jobs wherever they live: status, list, cancel/delete, MP3 bytes, and idempotency keys
/// across the cluster.
#[derive(Clone)]
pub struct JobsClient {
    node_name: String,
    replicas: usize,
    data_dir: std::path::PathBuf,
    clustered: bool,
    moved: Moved,
    meta: Meta,
    /// Status reads of this node's jobs read its database directly (a connection of
    /// their own, opened at the first read): they never queue behind the request actor's
    /// work. `None`: it could not be opened; the actor answers instead.
    reads: Arc<OnceLock<Option<Db>>>,
    db_path: std::path::PathBuf,
    retention: std::time::Duration,
}

/// An admin's look: whether a job exists, whoever it belongs to (the real caller's rights
/// are checked by the call that follows).
fn existence() -> Principal {
    Principal {
        email: String::new(),
        admin: true,
    }
}

fn query(id: &JobId, who: Option<&Principal>, offset: u64) -> JobQuery {
    JobQuery {
        job_id: id.to_string(),
        email: who.map(|w| w.email.clone()).unwrap_or_default(),
        admin: who.is_some_and(|w| w.admin),
        link: who.is_none(),
        offset,
        copy: false,
    }
}

fn remote_job(answer: JobAnswer) -> Result<Option<Job>, JobsError> {
    if Status::of(answer.status) != Status::Ok {
        return Err(jobs::error(answer.status, answer.message).into());
    }
    match answer.job {
        Some(view) => view
            .to_job()
            .map(Some)
            .ok_or_else(|| JobsError::Internal("unreadable job from its owner".into())),
        None => Ok(None),
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
            let answer = within(node, jobs::call(node, |reply| JobsMsg::Get(q, reply))).await?;
            Ok(Status::of(answer.status) != Status::NotFound)
        }
    }
}

/// How long a read waits for another node (a frozen or cut-off node is fenced only after
/// ~3 s, and the remote call's own limit is 10 s): past it, the read is answered from the
/// directory, as when that node is known to be away.
const READ_WAIT: Duration = Duration::from_secs(2);

/// `call` to `node`, given up (as a timeout) after [`READ_WAIT`].
async fn within<T>(node: &str, call: impl Future<Output = Result<T, RemoteError>>) -> Result<T, RemoteError> {
    tokio::time::timeout(READ_WAIT, call)
        .await
        .unwrap_or_else(|_| Err(RemoteError::Timeout(node.to_string())))
}

/// How long a cancel or delete waits for the directory to show it.
const SETTLE_WAIT: Duration = Duration::from_secs(3);

impl JobsClient {
    /// The client of the node `config` describes, with its member of the metadata group
    /// (keys, the job directory, MP3 copies).
    pub fn new(config: &Config, meta: Meta) -> Self {
        JobsClient {
            node_name: config.node_name.clone(),
            replicas: config.mp3_replicas,
            data_dir: config.data_dir.clone(),
            clustered: config.cluster.is_some(),
            moved: Moved::default(),
            meta,
            reads: Arc::default(),
            db_path: config.db_path(),
            retention: config.retention,
        }
    }

    /// This node's database, for reads.
    fn reads(&self) -> Option<&Db> {
        self.reads
            .get_or_init(|| match Db::open(&self.db_path) {
                Ok(db) => Some(db),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the database for reads; the request actor answers them");
                    None
                }
            })
            .as_ref()
    }

    /// Runs `op` where job `id` lives: on the node its id names (or where it was last
    /// found); when that node has no such job or cannot be reached, on whichever other
    /// node has it (a job handed over on scale-down). When no other node has it, `op`'s own
    /// answer stands (not found, or the named owner unreachable).
    pub async fn at_owner<T, Fut>(&self, id: &JobId, op: impl Fn(At) -> Fut) -> Result<T, JobsError>
    where
        Fut: Future<Output = Result<T, JobsError>>,
    {
        let own = &self.node_name;
        if !self.clustered {
            return op(At::Here).await;
        }
        let named = if id.owner() == own {
            At::Here
        } else {
            At::Node(id.owner().to_string())
        };
        let first = self.moved.get(id).unwrap_or(named);
        let missed = match op(first.clone()).await {
            Err(e) if e.missed() => e,
            answered => return answered,
        };
        let mut others: Vec<At> = jobs::other_owners(own).into_iter().map(At::Node).collect();
        others.push(At::Here);
        others.retain(|at| *at != first);
        let answers = futures_util::future::join_all(others.iter().map(|at| has(at, id))).await;
        let found = others.into_iter().zip(answers).find(|(_, a)| matches!(a, Ok(true)));
        self.moved.set(id, found.as_ref().map(|(at, _)| at.clone()));
        match found {
            Some((at, _)) => op(at).await,
            None => Err(missed),
        }
    }

    /// Runs a caller's operation on job `id` where it lives: `remote` on the jobs face of
    /// the node that has it (its answer read by `found`), `local` on this node's request
    /// actor.
    async fn on_job<T: Send + 'static>(
        &self,
        id: &JobId,
        who: &Principal,
        remote: fn(JobQuery, RpcReplyPort<JobAnswer>) -> JobsMsg,
        local: fn(JobId, Principal, RpcReplyPort<Result<T, JobError>>) -> RequestMsg,
        found: fn(Option<Job>) -> Result<T, JobsError>,
    ) -> Result<T, JobsError> {
        self.at_owner(id, |at| async move {
            match at {
                At::Node(owner) => {
                    let q = query(id, Some(who), 0);
                    let answer = jobs::call(&owner, |reply| remote(q, reply)).await?;
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

    /// A job's status: from the node that has it (with its progress), or while that node
    /// cannot be asked, from this node's replica of the job directory (the job as its node
    /// last published it).
    pub async fn get(&self, id: JobId, who: Principal) -> Result<Job, JobsError> {
        let asked = match self.reads() {
            Some(db) => {
                self.at_owner(&id, |at| async {
                    match at {
                        At::Here => Ok(super::lifecycle::load(db, self.retention, &id, Some(&who)).await?),
                        At::Node(owner) => {
                            let q = query(&id, Some(&who), 0);
                            let answer = within(&owner, jobs::call(&owner, |reply| JobsMsg::Get(q, reply))).await?;
                            remote_job(answer)?.ok_or(JobsError::Job(JobError::NotFound))
                        }
                    }
                })
                .await
            }
            None => {
                self.on_job(
                    &id,
                    &who,
                    JobsMsg::Get,
                    |id, who, reply| RequestMsg::Get { id, who, reply },
                    |job| job.ok_or(JobsError::Job(JobError::NotFound)),
                )
                .await
            }
        };
        match asked {
            Err(JobsError::OwnerUnreachable(e)) => {
                let mut listed = self.listed(&id).await;
                if listed.is_none() {
                    // This replica may lag (cut off a moment ago, or cut off from the leader
                    // now): it after Raft's read index, or another member's that is up to
                    // date, whichever has the job first.
                    let here = async {
                        self.meta.fresh().await.ok()?;
                        self.listed(&id).await
                    };
                    let elsewhere = async {
                        let listed = self.meta.listed_elsewhere(id.as_str()).await?;
                        super::directory::job(&listed)
                    };
                    tokio::pin!(here, elsewhere);
                    listed = tokio::select! {
                        found = &mut here => match found {
                            Some(job) => Some(job),
                            None => elsewhere.await,
                        },
                        found = &mut elsewhere => match found {
                            Some(job) => Some(job),
                            None => here.await,
                        },
                    };
                }
                match listed {
                    Some(job) if who.admin || job.owner_email == who.email => Ok(job),
                    // Someone else's job: what its node would say.
                    Some(_) => Err(JobsError::Job(JobError::NotFound)),
                    None => {
                        tracing::info!(job = %id, error = %e, "owner unreachable and the job not in this replica's directory");
                        Err(JobsError::OwnerUnreachable(e))
                    }
                }
            }
            answered => answered,
        }
    }

    /// Job `id` as this node's replica of the directory has it.
    async fn listed(&self, id: &JobId) -> Option<Job> {
        let listed = match self.meta.listed(id.as_str()).await {
            Ok(listed) => listed?,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cannot read the directory");
                return None;
            }
        };
        let job = super::directory::job(&listed);
        if job.is_none() {
            tracing::warn!(job = %id, "an unreadable directory entry");
        }
        job
    }

    /// Cancels or deletes a job: the canceled job, or `None` once deleted.
    pub async fn delete(&self, id: JobId, who: Principal) -> Result<Option<Job>, JobsError> {
        let answer = self
            .on_job(
                &id,
                &who,
                JobsMsg::Delete,
                |id, who, reply| RequestMsg::Delete { id, who, reply },
                Ok,
            )
            .await?;
        self.settled(&id, answer.as_ref().map(|job| job.state.as_str())).await;
        Ok(answer)
    }

    /// Waits (at most [`SETTLE_WAIT`]) until this node's replica of the directory shows job
    /// `id` in `state` (`None`: gone), as its owner's change feed publishes it: a cancel or
    /// a delete is answered once the directory, lists and quota counters everywhere agree
    /// (a place freed is free for the user's next upload on any node).
    async fn settled(&self, id: &JobId, state: Option<&str>) {
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            // Up to date first: a learner's replica is otherwise fed a few times a second.
            if let Err(e) = self.meta.fresh().await {
                tracing::debug!(error = %e, "settling on the directory as this replica has it");
            }
            match self.meta.listed(id.as_str()).await {
                Ok(entry) if entry.as_ref().map(|e| e.state.as_str()) == state => return,
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(_) | Err(_) => {
                    tracing::info!(job = %id, "answered before the directory showed the change");
                    return;
                }
            }
        }
    }

    /// The job (or resumable upload: they share ids) holding Idempotency-Key `key` of
    /// `email`, as this node's replica of the claims has it. A replica can be a moment
    /// behind: the claim committed at submission (a keyed admission, `Command::KeyedAdmit`) decides.
    pub async fn claimed(&self, email: &str, key: &str) -> Result<Option<JobId>, JobsError> {
        let held = self.meta.claim(email, key).await?;
        Ok(held.as_deref().and_then(JobId::parse))
    }

    /// Takes back what a refused submission of job `id` wrote to the metadata (its
    /// directory entry, its key's claim), in the background: the refusal is answered now,
    /// the writes wait for a leader as long as any write does.
    pub fn forget(&self, id: JobId, email: String, key: Option<String>) {
        let meta = self.meta.clone();
        tokio::spawn(async move {
            let gone = Command::Publish {
                node: id.owner().to_string(),
                put: Vec::new(),
                gone: vec![id.to_string()],
                only_new: false,
            };
            if let Err(e) = meta.write(gone).await {
                tracing::warn!(job = %id, error = %e, "a refused job's directory entry could not be removed");
            }
            if let Some(key) = key {
                let release = Command::ReleaseKey {
                    email,
                    key,
                    job: id.to_string(),
                };
                if let Err(e) = meta.write(release).await {
                    tracing::warn!(job = %id, error = %e, "could not release an Idempotency-Key claim");
                }
            }
        });
    }

    /// The caller's jobs, newest first: this node's own as they are now, every other
    /// node's from this node's replica of the job directory (after Raft's read index, so
    /// a job accepted anywhere before this call is in it; with no leader reachable, the
    /// replica as it is). No other node is asked: a list costs the same at 50 nodes as at 3,
    /// and a node that is away does not take its jobs out of the list. Other nodes' jobs
    /// show their last published state (no live progress: the event stream has it).
    pub async fn list(&self, who: Principal, all: bool, limit: u32, offset: u32) -> Result<Vec<Job>, JobsError> {
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
        if self.clustered {
            if let Err(e) = self.meta.fresh().await {
                tracing::debug!(error = %e, "listing from the directory as this replica has it");
            }
            let email = (!(all && who.admin)).then_some(who.email.as_str());
            // This node's own entries are left out in the query, not after it: they would
            // take places in the `want` newest that other nodes' jobs need (a page would
            // end one job early and the next repeat it).
            let listed = self.meta.list(email, &self.node_name, want).await?;
            found.extend(listed.iter().filter_map(super::directory::job));
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

    /// A done job's MP3 for `who` (`None`: a verified signed link): the file when it is
    /// here, else its bytes `range` (`(first, last)`, one range; `None`: all) streamed from
    /// the node that has it, never whole in memory.
    pub async fn mp3(
        &self,
        id: &JobId,
        who: Option<&Principal>,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Mp3, JobsError> {
        let asked = self
            .at_owner(id, |at| async move {
                match at {
                    At::Here => {
                        let (id, who) = (id.clone(), who.cloned());
                        Ok(Mp3::Here(
                            ask(Role::Request, |reply| RequestMsg::Mp3 { id, who, reply }, CALL_TIMEOUT).await??,
                        ))
                    }
                    At::Node(owner) => remote_mp3(&owner, id, who, range).await,
                }
            })
            .await;
        match asked {
            Err(JobsError::OwnerUnreachable(e)) => match self.copied_mp3(id, who, range).await {
                Some(mp3) => Ok(mp3),
                None => Err(JobsError::OwnerUnreachable(e)),
            },
            answered => answered,
        }
    }

    /// A done job's MP3 from a node that holds a copy (`copies.rs`), while its own node
    /// cannot be asked.
    async fn copied_mp3(&self, id: &JobId, who: Option<&Principal>, range: Option<(u64, Option<u64>)>) -> Option<Mp3> {
        let mut holders = self.meta.copies(id.as_str()).await.ok()?;
        // And the nodes that should hold one: a copy taken just before its job reached the
        // directory is on disk before it is recorded.
        if let Some(listed) = self.meta.listed(id.as_str()).await.ok().flatten() {
            let members = self.meta.status().members();
            for holder in super::copies::holders(&listed.node, &members, self.replicas) {
                if !holders.contains(&holder) {
                    holders.push(holder);
                }
            }
        }
        for holder in holders {
            let found = if holder == self.node_name {
                super::copies::copy_file(&self.meta, &self.data_dir, id, who)
                    .await
                    .map(Mp3::Here)
                    .map_err(JobsError::from)
            } else {
                remote_mp3(&holder, id, who, range).await
            };
            match found {
                Ok(mp3) => return Some(mp3),
                Err(e) => tracing::debug!(job = %id, node = %holder, error = %e, "no MP3 copy there"),
            }
        }
        None
    }

    /// A done job's MP3 as a stream of bytes, from wherever it lives: its user's file
    /// name, size, and bytes.
    pub async fn mp3_stream(
        &self,
        id: &JobId,
        who: &Principal,
    ) -> Result<(String, u64, BoxStream<'static, std::io::Result<bytes::Bytes>>), JobsError> {
        match self.mp3(id, Some(who), None).await? {
            Mp3::Here(file) => {
                let internal = |e: std::io::Error| JobsError::Internal(e.to_string());
                let opened = tokio::fs::File::open(&file.path).await.map_err(internal)?;
                let total = opened.metadata().await.map_err(internal)?.len();
                let stream = tokio_util::io::ReaderStream::with_capacity(opened, 256 << 10);
                Ok((file.file_name, total, stream.boxed()))
            }
            Mp3::Streamed {
                bytes,
                file_name,
                total,
                ..
            } => Ok((file_name, total, bytes)),
            // (Only a range can be unsatisfiable.)
            Mp3::Unsatisfiable { .. } => Err(JobsError::Internal("no MP3 stream from the owner".into())),
        }
    }
}

/// Another node's MP3, bytes `range` of it.
pub(super) async fn remote_mp3(
    owner: &str,
    id: &JobId,
    who: Option<&Principal>,
    range: Option<(u64, Option<u64>)>,
) -> Result<Mp3, JobsError> {
    let start = range.map_or(0, |(s, _)| s);
    remote_read(owner, query(id, who, start), range).await
}

/// Another node's converted MP3 of job `id`, for a copy (before the job is `done`).
pub(super) async fn remote_output(owner: &str, id: &JobId) -> Result<Mp3, JobsError> {
    let q = JobQuery {
        copy: true,
        ..query(id, None, 0)
    };
    remote_read(owner, q, None).await
}

/// Bytes `range` of an MP3 on node `owner`, read with chunk queries like `q`.
async fn remote_read(owner: &str, q: JobQuery, range: Option<(u64, Option<u64>)>) -> Result<Mp3, JobsError> {
    let first = jobs::call(owner, |reply| JobsMsg::Chunk(q.clone(), reply)).await?;
    if Status::of(first.status) != Status::Ok {
        return Err(jobs::error(first.status, first.message).into());
    }
    let total = first.total;
    let Some((start, end, stop)) = span(range, total) else {
        return Ok(Mp3::Unsatisfiable { total });
    };
    Ok(Mp3::Streamed {
        bytes: remote_chunks(owner.to_string(), q, first.data, start, stop).boxed(),
        file_name: first.file_name,
        total,
        start,
        end,
    })
}

/// For bytes `range` of `total` (`None`: all): the first and last byte sent and the end
/// (exclusive) to stream to; `None` when the range starts past the end.
fn span(range: Option<(u64, Option<u64>)>, total: u64) -> Option<(u64, u64, u64)> {
    let start = range.map_or(0, |(s, _)| s);
    let last = total.saturating_sub(1);
    let end = range.and_then(|(_, e)| e).unwrap_or(last).min(last);
    if range.is_some() && (start >= total || start > end) {
        return None;
    }
    // (An empty MP3 has no last byte: nothing is streamed.)
    let stop = if total == 0 { 0 } else { end + 1 };
    Some((start, end, stop))
}

/// Bytes `start..end` of a job's MP3 on `owner`, a chunk at a time (`first`: the piece
/// at `start`, already fetched).
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
                        Ok(answer) if Status::of(answer.status) == Status::Ok && !answer.data.is_empty() => answer.data,
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

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::{JobQuery, remote_chunks, span};

    #[test]
    fn spans_of_whole_files_ranges_and_empty_files() {
        assert_eq!(span(None, 10), Some((0, 9, 10)));
        assert_eq!(span(None, 0), Some((0, 0, 0)), "an empty MP3 streams nothing");
        assert_eq!(span(Some((2, Some(100))), 10), Some((2, 9, 10)));
        assert_eq!(span(Some((2, Some(4))), 10), Some((2, 4, 5)));
        assert_eq!(span(Some((9, None)), 10), Some((9, 9, 10)));
        assert_eq!(span(Some((10, None)), 10), None);
        assert_eq!(span(Some((0, None)), 0), None);
        assert_eq!(span(Some((5, Some(3))), 10), None);
    }

    async fn collect(first: &[u8], start: u64, end: u64) -> Vec<std::io::Result<bytes::Bytes>> {
        // No node is asked while the first piece covers the range (`nobody` is not a node).
        remote_chunks("nobody".into(), JobQuery::default(), first.to_vec(), start, end)
            .collect()
            .await
    }

    #[tokio::test]
    async fn an_empty_range_streams_nothing_and_a_piece_is_cut_at_the_range_end() {
        assert!(collect(b"", 0, 0).await.is_empty());
        let got = collect(b"abcdef", 2, 6).await;
        let bytes: Vec<u8> = got.into_iter().flat_map(|b| b.unwrap().to_vec()).collect();
        assert_eq!(bytes, b"abcd");
    }

    #[tokio::test]
    async fn a_missing_next_piece_ends_the_stream_with_an_error() {
        let got = collect(b"ab", 0, 4).await;
        assert_eq!(got.len(), 2, "the first piece, then the error");
        assert_eq!(got[0].as_ref().unwrap().as_ref(), b"ab");
        assert!(got[1].is_err());
    }
}
