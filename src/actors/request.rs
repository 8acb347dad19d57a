//! The request actor: owns this node's jobs from intake to the end.
//!
//! It persists each job (and its input) before answering `202`, fetches URL imports,
//! places conversions on the converter while it has free slots, and records results:
//! a result is accepted only for the job's current attempt (the fencing token), and the
//! job's email is queued in the same transaction (see `store/jobs.rs`). At start it
//! resumes every unfinished job, so a crash loses nothing that was accepted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use self::events::{Events, Kind};
use self::placement::Placement;
use self::placement::remote::PlaceError;
use self::resumable::UploadCall;
use super::converter::{Failure, Outcome, host};
use super::notifier::NotifierMsg;
use super::{Role, tell};
use crate::auth::Principal;
use crate::cluster::probe::Facts;
use crate::config::Config;
use crate::fetch::{FetchError, Fetcher};
use crate::meta::Meta;
use crate::store::{
    Db, Files, Handover, Job, JobId, JobState, NewJob, Produced, Source, StagedInput, StoreError, Usage,
};

pub mod client;
pub mod copies;
pub mod directory;
pub mod events;
pub mod handoff;
pub mod jobs;
mod lifecycle;

use lifecycle::Input;
pub mod placement;
pub mod quota;
mod storage;
pub use storage::room_for;
pub mod resumable;

/// How often queued work is re-checked even without a wake-up.
const DISPATCH_EVERY: Duration = Duration::from_secs(2);

/// Why a job request was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No such job, or not the caller's.
    #[error("no such job")]
    NotFound,
    /// The job is in the wrong state for this (e.g. downloading an unfinished job).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The files failed.
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Draining,
    /// The job ended longer ago than the retention period: its files and details are gone.
    #[error("the job expired: jobs and their files are deleted {0} after they end")]
    Expired(String),
    /// The data volume, less what unfinished uploads still announce, is under its reserve.
    #[error("this server is short of disk space")]
    NoSpace,
}

/// What a download serves.
#[derive(Debug, Clone)]
pub struct Mp3File {
    /// The MP3 on disk.
    pub path: PathBuf,
    /// The user's original file name (sanitized by the HTTP layer).
    pub file_name: String,
    /// The job.
    pub id: JobId,
}

/// This node's jobs by state, and the number waiting for a converter slot.
pub type JobStats = (Vec<(JobState, u64)>, usize);

/// The request actor's messages.
pub enum RequestMsg {
    /// Accept a job. `staged` is the uploaded MP4 (already on disk, fsynced) for uploads.
    Submit {
        /// The job.
        job: NewJob,
        /// The uploaded file, for `Source::Upload` (deleted unless the job adopts it).
        staged: Option<StagedInput>,
        /// The stored job and whether it is new (`false`: an idempotent retry).
        reply: RpcReplyPort<Result<(Job, bool), JobError>>,
    },
    /// A resumable upload's bookkeeping (`request/resumable.rs`).
    Upload(UploadCall),
    /// A job, if `who` may see it.
    Get {
        /// The job.
        id: JobId,
        /// The caller.
        who: Principal,
        /// The job.
        reply: RpcReplyPort<Result<Job, JobError>>,
    },
    /// The job `email` submitted with Idempotency-Key `key`, if this node has it (asked by
    /// another node about to accept a retry).
    Keyed {
        /// The submitter.
        email: String,
        /// The key.
        key: String,
        /// The job, if here.
        reply: RpcReplyPort<Result<Option<Job>, JobError>>,
    },
    /// What `email` uses on this node (quotas), counting the day from `since_ms`.
    Usage {
        /// The user.
        email: String,
        /// The start of the last 24 hours.
        since_ms: i64,
        /// The usage.
        reply: RpcReplyPort<Result<Usage, JobError>>,
    },
    /// The caller's jobs (all jobs for an admin asking for them), newest first.
    List {
        /// The caller.
        who: Principal,
        /// An admin asks for everyone's.
        all: bool,
        /// Page size.
        limit: u32,
        /// Page start.
        offset: u32,
        /// The page.
        reply: RpcReplyPort<Result<Vec<Job>, JobError>>,
    },
    /// Cancel an unfinished job (returned, now `canceled`) or delete a finished one (`None`).
    Delete {
        /// The job.
        id: JobId,
        /// The caller.
        who: Principal,
        /// The canceled job, or `None` when it was deleted.
        reply: RpcReplyPort<Result<Option<Job>, JobError>>,
    },
    /// The MP3 of a done job: for `who`, or for a signed link (`None`).
    Mp3 {
        /// The job.
        id: JobId,
        /// The caller, or `None` for a signed link.
        who: Option<Principal>,
        /// The file.
        reply: RpcReplyPort<Result<Mp3File, JobError>>,
    },
    /// A job's converted MP3 on this node, whatever its state (for a copy on another node,
    /// taken before the job is `done`).
    Output {
        /// The job.
        id: JobId,
        /// The file.
        reply: RpcReplyPort<Result<Mp3File, JobError>>,
    },
    /// A conversion ended and its MP3's copies were asked for (`copies::push`): now the
    /// job ends.
    Copied {
        /// The job.
        id: JobId,
        /// The attempt reporting.
        attempt: i64,
        /// How it ended.
        outcome: Outcome,
    },
    /// A URL import ended (sent by its task).
    Fetched {
        /// The job.
        id: JobId,
        /// Ok, or why not.
        result: Result<(), FetchError>,
    },
    /// A conversion's progress (from the converter).
    Progress {
        /// The job.
        id: JobId,
        /// The attempt reporting.
        attempt: i64,
        /// 0..=1.
        fraction: f64,
    },
    /// A conversion ended (from the converter).
    Converted {
        /// The job.
        id: JobId,
        /// The attempt reporting.
        attempt: i64,
        /// How it ended.
        outcome: Outcome,
    },
    /// A placement on another node started (its MP4 is there and converting) or failed.
    Placed {
        /// The job.
        id: JobId,
        /// The attempt placed.
        attempt: i64,
        /// The node.
        node: String,
        /// Started, or why not.
        result: Result<(), PlaceError>,
    },
    /// Is `attempt` the job's current placement on another node? (Asked before a result
    /// from another node is taken.)
    IsCurrent {
        /// The job.
        id: JobId,
        /// The attempt reporting.
        attempt: i64,
        /// Current or not.
        reply: RpcReplyPort<bool>,
    },
    /// Another node's conversion of a job arrived whole in `staged`: take it if `attempt` is
    /// still current (`false`: refused, the caller deletes it).
    Delivered {
        /// The job.
        id: JobId,
        /// The attempt reporting.
        attempt: i64,
        /// The MP3, fsynced, in `tmp/`.
        staged: PathBuf,
        /// Its size, duration and warnings.
        produced: Produced,
        /// Taken or refused.
        reply: RpcReplyPort<bool>,
    },
    /// Place queued work on free converter slots (and expire placements' leases).
    Dispatch,
    /// Every 2 s (`DISPATCH_EVERY`): measure the data volume, retry refused deletes, delete
    /// removed users' jobs, then dispatch.
    Tick,
    /// A job whose conversion ran out of disk space goes back to the queue.
    Requeue {
        /// The job.
        id: JobId,
    },
    /// For `/metrics`: this node's jobs by state, and how many wait for a slot.
    Stats {
        /// `(jobs by state, queue depth)`.
        reply: RpcReplyPort<Result<JobStats, JobError>>,
    },
    /// Stop placing work; answer with the number of running conversions once it is zero
    /// (the caller bounds the wait with the grace period).
    Drain {
        /// Answered when nothing runs.
        reply: RpcReplyPort<usize>,
    },
    /// Scale-down: stop all work at once (conversions here are stopped, placements
    /// elsewhere withdrawn, imports aborted) and answer with every job to hand over.
    Release {
        /// The jobs, in handoff order.
        reply: RpcReplyPort<Result<Vec<Handover>, JobError>>,
    },
    /// Another node took this job over: forget it and its files.
    HandedOver {
        /// The job.
        id: JobId,
        /// Done.
        reply: RpcReplyPort<Result<(), JobError>>,
    },
    /// Take over a job another node hands over (it is leaving the cluster), with its files
    /// staged in `tmp/`: the MP4 of an unfinished job, the MP3 of a done one.
    Adopt {
        /// The job.
        handover: Handover,
        /// Its staged MP4.
        input: Option<PathBuf>,
        /// Its staged MP3.
        mp3: Option<PathBuf>,
        /// `true`: taken; `false`: it was already here.
        reply: RpcReplyPort<Result<bool, JobError>>,
    },
}

impl ractor::Message for RequestMsg {}

/// The request actor.
pub struct RequestActor;

/// Its state.
pub struct RequestState {
    config: Arc<Config>,
    db: Db,
    files: Files,
    fetcher: Fetcher,
    /// Jobs whose input is on disk, waiting for a slot.
    queue: VecDeque<JobId>,
    /// Placed conversions.
    running: HashMap<JobId, Placement>,
    /// Nodes that just refused an offer, and until when they are skipped.
    busy_until: HashMap<String, Instant>,
    /// Nodes that just finished one of our jobs: they have a free slot even if their last
    /// heartbeat (up to a tick old) says otherwise.
    freed: HashSet<String>,
    /// URL imports in flight.
    fetching: HashMap<JobId, (i64, tokio::task::AbortHandle)>,
    /// Set once the node drains: callers waiting for `running` to empty.
    draining: Option<Vec<RpcReplyPort<usize>>>,
    /// Set once the node hands its jobs over: results and progress are ignored.
    released: bool,
    /// Where the data volume's free space is published (for the probe and `/metrics`).
    facts: Facts,
    /// Where changes of this node's jobs are published (for `/v1/events`, cluster-wide).
    events: Events,
    /// This node's member of the metadata group (MP3 copies).
    meta: Meta,
    /// Ticks so far (some bookkeeping runs every so many).
    ticks: u64,
    /// Jobs deleted (`true`) or canceled (`false`) whose files are gone but whose row
    /// could not be written (a full disk): retried on every tick.
    undeleted: HashMap<JobId, bool>,
}

impl Actor for RequestActor {
    type Msg = RequestMsg;
    type State = RequestState;
    type Arguments = (Arc<Config>, Facts, Events, Meta);

    async fn pre_start(
        &self,
        myself: ActorRef<RequestMsg>,
        (config, facts, events, meta): (Arc<Config>, Facts, Events, Meta),
    ) -> Result<RequestState, ActorProcessingErr> {
        let db = Db::open(&config.db_path())?;
        let files = Files::new(&config.data_dir)?;
        let fetcher = Fetcher::from_config(&config);
        let mut state = RequestState {
            config,
            db,
            files,
            fetcher,
            queue: VecDeque::new(),
            running: HashMap::new(),
            busy_until: HashMap::new(),
            freed: HashSet::new(),
            fetching: HashMap::new(),
            draining: None,
            released: false,
            facts,
            events,
            meta,
            ticks: 0,
            undeleted: HashMap::new(),
        };
        // Resume what was accepted and not finished: after a crash, a restart, or a
        // restart of this actor alone.
        let unfinished = state.db.run(|s| s.unfinished_jobs()).await?;
        for job in &unfinished {
            state.resume(&myself, job).await?;
        }
        if !unfinished.is_empty() {
            tracing::info!(jobs = unfinished.len(), "resuming unfinished jobs");
        }
        // Another node's converter leaving (its node died or was fenced) re-places its jobs.
        ractor::pg::monitor(host::GROUP.to_string(), myself.get_cell());
        myself.send_interval(DISPATCH_EVERY, || RequestMsg::Tick);
        myself.send_message(RequestMsg::Tick)?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RequestMsg>,
        message: RequestMsg,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        if state.released {
            match message {
                // Handed over: what still arrives about this node's work is moot.
                RequestMsg::Converted { .. }
                | RequestMsg::Progress { .. }
                | RequestMsg::Fetched { .. }
                | RequestMsg::Placed { .. } => return Ok(()),
                RequestMsg::Delivered { reply, .. } | RequestMsg::IsCurrent { reply, .. } => {
                    let _ = reply.send(false);
                    return Ok(());
                }
                _ => {}
            }
        }
        match message {
            RequestMsg::Submit { job, staged, reply } => {
                let _ = reply.send(state.accept(&myself, job, staged.map(Input::Staged)).await);
            }
            RequestMsg::Upload(call) => state.upload_call(&myself, call).await?,
            RequestMsg::Get { id, who, reply } => {
                // Off the actor: reads answer in parallel and never wait behind its work.
                let (db, retention) = (state.db.clone(), state.config.retention);
                tokio::spawn(async move {
                    let _ = reply.send(lifecycle::load(&db, retention, &id, Some(&who)).await);
                });
            }
            RequestMsg::Usage { email, since_ms, reply } => {
                let files = state.files.clone();
                let answer = state.db.run(move |s| s.usage(&files, &email, since_ms)).await;
                let _ = reply.send(answer.map_err(JobError::from));
            }
            RequestMsg::Keyed { email, key, reply } => {
                let answer = state.db.run(move |s| s.keyed_job(&email, &key)).await;
                let _ = reply.send(answer.map_err(JobError::from));
            }
            RequestMsg::List {
                who,
                all,
                limit,
                offset,
                reply,
            } => {
                let owner = (!(all && who.admin)).then_some(who.email);
                let answer = state
                    .db
                    .run(move |s| s.list_jobs(owner.as_deref(), limit, offset))
                    .await;
                let _ = reply.send(answer.map_err(JobError::from));
            }
            RequestMsg::Delete { id, who, reply } => {
                let _ = reply.send(state.delete(id, who).await);
            }
            RequestMsg::Output { id, reply } => {
                let path = state.files.output(&id);
                let answer = match state.load(&id, None).await {
                    Ok(job) if tokio::fs::try_exists(&path).await.unwrap_or(false) => Ok(Mp3File {
                        path,
                        file_name: job.file_name,
                        id,
                    }),
                    Ok(_) => Err(JobError::NotFound),
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
            RequestMsg::Mp3 { id, who, reply } => {
                let answer = match state.load(&id, who.as_ref()).await {
                    Ok(job) if job.state == JobState::Done => Ok(Mp3File {
                        path: state.files.output(&id),
                        file_name: job.file_name,
                        id,
                    }),
                    Ok(job) => Err(JobError::Conflict(format!("the job is {}, not done", job.state))),
                    Err(e) => Err(e),
                };
                let _ = reply.send(answer);
            }
            RequestMsg::Fetched { id, result } => {
                let Some((attempt, _)) = state.fetching.remove(&id) else {
                    return Ok(()); // canceled meanwhile
                };
                match result {
                    Ok(()) => {
                        state.queue.push_back(id);
                        state.dispatch(&myself).await?;
                    }
                    Err(e) => {
                        tracing::info!(job_id = %id, error = %e, "URL import failed");
                        state.fail(&id, attempt, e.code(), &e.to_string()).await?;
                    }
                }
            }
            RequestMsg::Progress { id, attempt, fraction } => {
                if let Some(remote) = state
                    .running
                    .get_mut(&id)
                    .filter(|p| p.attempt == attempt)
                    .and_then(|p| p.remote.as_mut())
                {
                    remote.heard = Instant::now();
                }
                if state.current(&id, attempt) {
                    let recorded = state
                        .db
                        .run(move |s| match s.set_progress(&id, attempt, fraction)? {
                            true => s.job(&id),
                            false => Ok(None),
                        })
                        .await?;
                    if let Some(job) = recorded {
                        state.announce(Kind::Progress, &job);
                    }
                }
            }
            RequestMsg::Converted { id, attempt, outcome } => {
                match outcome {
                    Err(Failure::NoSpace(message)) => {
                        state.no_space(&myself, id, attempt, &message);
                    }
                    Ok(produced) if state.current(&id, attempt) && state.config.mp3_replicas > 1 => {
                        // Its MP3 is copied to the next nodes before the job is done: a
                        // download never finds a done job whose only MP3 is on a lost pod.
                        let (meta, config, me) = (state.meta.clone(), state.config.clone(), myself.clone());
                        tokio::spawn(async move {
                            copies::push(&meta, &config, &id).await;
                            let _ = me.send_message(RequestMsg::Copied {
                                id,
                                attempt,
                                outcome: Ok(produced),
                            });
                        });
                    }
                    outcome => state.converted(id, attempt, outcome).await?,
                }
                state.dispatch(&myself).await?;
            }
            RequestMsg::Copied { id, attempt, outcome } => {
                state.converted(id, attempt, outcome).await?;
                state.dispatch(&myself).await?;
            }
            RequestMsg::Requeue { id } => {
                state.requeue(id).await?;
                state.dispatch(&myself).await?;
            }
            RequestMsg::Placed {
                id,
                attempt,
                node,
                result,
            } => {
                let current = state.current(&id, attempt);
                match result {
                    Ok(()) if current => {
                        tracing::info!(job_id = %id, attempt, %node, "conversion placed on another node");
                        if let Some(remote) = state.running.get_mut(&id).and_then(|p| p.remote.as_mut()) {
                            remote.started = true;
                            remote.heard = Instant::now();
                        }
                    }
                    Ok(()) => placement::remote::withdraw(&node, &id, attempt), // canceled meanwhile
                    Err(e) => {
                        tracing::info!(job_id = %id, attempt, %node, error = %e, "placement refused");
                        if matches!(e, PlaceError::Busy(_)) {
                            state.busy_until.insert(node, Instant::now() + Duration::from_secs(1));
                        }
                        if current {
                            state.running.remove(&id);
                            state.queue.push_front(id);
                            state.drained();
                            state.dispatch(&myself).await?;
                        }
                    }
                }
            }
            RequestMsg::IsCurrent { id, attempt, reply } => {
                let _ = reply.send(state.current_remote(&id, attempt));
            }
            RequestMsg::Delivered {
                id,
                attempt,
                staged,
                produced,
                reply,
            } => {
                if !state.current_remote(&id, attempt) {
                    let _ = reply.send(false);
                    return Ok(());
                }
                let (files, key) = (state.files.clone(), id.clone());
                let adopted = tokio::task::spawn_blocking(move || files.adopt_output(&key, &staged))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r);
                let outcome = adopted
                    .map(|()| produced)
                    .map_err(|e| Failure::Io(format!("cannot store the MP3: {e}")));
                let _ = reply.send(true);
                state.converted(id, attempt, outcome).await?;
                state.dispatch(&myself).await?;
            }
            RequestMsg::Dispatch => state.dispatch(&myself).await?,
            RequestMsg::Tick => {
                state.measure_storage().await;
                state.retry_deletes().await;
                state.purge_removed_users().await;
                state.expire_uploads().await;
                state.expire_jobs().await;
                state.measure_stored().await;
                state.dispatch(&myself).await?;
            }
            RequestMsg::Stats { reply } => {
                let counts = state.db.run(|s| s.count_by_state()).await;
                let _ = reply.send(counts.map(|c| (c, state.queue.len())).map_err(JobError::from));
            }
            RequestMsg::Drain { reply } => {
                state.draining.get_or_insert_with(Vec::new).push(reply);
                state.drained();
            }
            RequestMsg::Release { reply } => {
                let _ = reply.send(state.release().await);
            }
            RequestMsg::HandedOver { id, reply } => {
                let (files, key) = (state.files.clone(), id.clone());
                let forgotten = state
                    .db
                    .run(move |s| {
                        s.forget_job(&key)?;
                        files.remove_job(&key).map_err(|e| StoreError::Worker(e.to_string()))
                    })
                    .await;
                let _ = reply.send(forgotten.map_err(JobError::from));
            }
            RequestMsg::Adopt {
                handover,
                input,
                mp3,
                reply,
            } => {
                let answer = state.adopt(&myself, handover, input, mp3).await;
                let _ = reply.send(answer);
                state.dispatch(&myself).await?;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RequestMsg>,
        event: SupervisionEvent,
        state: &mut RequestState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Leave(_, group, cells)) = event else {
            return Ok(());
        };
        if group != host::GROUP {
            return Ok(());
        }
        state.hosts_left(&myself, &cells).await
    }
}
