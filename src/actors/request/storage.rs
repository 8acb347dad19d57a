//! The request role and a full data volume.
//!
//! - Free space is measured on every tick (every 2 s) and published in the
//!   node's facts: `/metrics`, `/v1/cluster` and the heartbeats report it, the gateway
//!   refuses uploads and imports with `507` under the reserve (`--min-free-bytes`), and no
//!   conversion is placed on (or by) a node under its reserve.
//! - A conversion that runs out of space (`converter::Failure::NoSpace`) is not a failed job: it goes back
//!   to the queue after [`REQUEUE_AFTER`] and runs again once there is room.
//! - Retention: jobs that ended longer ago than `--retention` are deleted on the tick (an
//!   indexed query by end time, a batch at a time), leaving a tombstone so their ids answer
//!   `410 expired`; a job's input goes when it ends unless `--keep-inputs`. The bytes stored
//!   (inputs, MP3s, unfinished uploads) are measured every minute for `/metrics`.
//! - A delete frees the job's files first; if its row cannot be written then (SQLite needs
//!   a little space too), the row is retried on every tick and the caller is told the
//!   job is gone.

use std::time::Duration;

use ractor::ActorRef;

use super::events::Kind;
use super::placement::stop;
use super::{JobError, RequestMsg, RequestState};
use crate::auth::Principal;
use crate::cluster::probe::Storage;
use crate::config::Config;
use crate::store::{Files, Job, JobId, JobState, StoreError};

/// Jobs expired per tick at most.
const EXPIRE_BATCH: u32 = 100;
/// Ticks (2 s each) between measurements of the bytes stored.
const MEASURE_STORED_EVERY: u64 = 30;

/// How long a job whose conversion ran out of space waits before it is queued again.
const REQUEUE_AFTER: Duration = Duration::from_secs(10);

/// Refuses new files ([`JobError::NoSpace`]) while the data volume, less `incoming` bytes,
/// would be under its reserve.
pub async fn room_for(config: &Config, incoming: u64) -> Result<(), JobError> {
    let files = Files::at(&config.data_dir);
    let free = tokio::task::spawn_blocking(move || files.free_bytes())
        .await
        .map_err(|e| JobError::Io(std::io::Error::other(e)))??;
    if free < config.min_free_bytes.saturating_add(incoming) {
        tracing::warn!(
            free,
            incoming,
            reserve = config.min_free_bytes,
            "refusing a new file: short of disk space"
        );
        return Err(JobError::NoSpace);
    }
    Ok(())
}

impl RequestState {
    /// Measures the data volume and publishes it; an unreadable volume counts as full.
    pub(super) async fn measure_storage(&self) {
        let files = self.files.clone();
        let free = tokio::task::spawn_blocking(move || files.free_bytes())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        let storage = match free {
            Ok(free_bytes) => Storage {
                free_bytes,
                low: free_bytes < self.config.min_free_bytes,
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure the data volume's free space");
                Storage {
                    free_bytes: 0,
                    low: true,
                }
            }
        };
        if storage.low && !self.facts.storage().low {
            tracing::warn!(
                free = storage.free_bytes,
                reserve = self.config.min_free_bytes,
                "the data volume is under its reserve: refusing uploads and placing no conversions"
            );
        } else if !storage.low && self.facts.storage().low {
            tracing::info!(free = storage.free_bytes, "the data volume has room again");
        }
        self.facts.publish_storage(storage);
    }

    /// A conversion of attempt `attempt` ran out of disk space: its placement ends and the
    /// job is queued again after [`REQUEUE_AFTER`] (not failed).
    pub(super) fn no_space(&mut self, myself: &ActorRef<RequestMsg>, id: JobId, attempt: i64, why: &str) {
        if !self.current(&id, attempt) {
            return;
        }
        if let Some(placed) = self.running.remove(&id)
            && let Some(remote) = placed.remote
        {
            self.freed.insert(remote.node);
        }
        self.drained();
        tracing::warn!(job_id = %id, attempt, error = why, "conversion ran out of disk space; it will run again");
        myself.send_after(REQUEUE_AFTER, move || RequestMsg::Requeue { id });
    }

    /// Queues a job again after [`Self::no_space`], unless it ended or runs meanwhile.
    pub(super) async fn requeue(&mut self, id: JobId) -> Result<(), StoreError> {
        if self.queue.contains(&id) || self.running.contains_key(&id) || self.draining.is_some() {
            return Ok(());
        }
        let key = id.clone();
        if let Some(job) = self.db.run(move |s| s.job(&key)).await?
            && !job.state.is_final()
        {
            self.queue.push_back(id);
        }
        Ok(())
    }

    /// Cancels an unfinished job (`Some`, now canceled) or deletes a finished one (`None`),
    /// always freeing its files.
    pub(super) async fn delete(&mut self, id: JobId, who: Principal) -> Result<Option<Job>, JobError> {
        let job = self.load(&id, Some(&who)).await?;
        let is_final = job.state.is_final();
        let row = if is_final {
            // Files first: on a full disk the row's delete may fail, the space must not.
            self.remove_files(&id).await;
            let key = id.clone();
            self.db.run(move |s| s.delete_job(&key)).await.map(|_| None)
        } else {
            let key = id.clone();
            let canceled = match self.db.run(move |s| s.cancel(&key)).await {
                // It ended meanwhile: say so, and keep its files.
                Err(e @ StoreError::Conflict { .. }) => return Err(e.into()),
                other => other,
            };
            self.stop_work(&id);
            self.remove_files(&id).await;
            canceled.map(Some)
        };
        match row {
            Ok(answer) => {
                match &answer {
                    Some(canceled) => self.announce(Kind::Canceled, canceled),
                    None => self.announce(Kind::Deleted, &job),
                }
                Ok(answer)
            }
            Err(e) => {
                tracing::warn!(job_id = %id, error = %e, "files freed, but the job's row could not be written; retrying");
                self.undeleted.insert(id, is_final);
                Ok((!is_final).then_some(Job {
                    state: JobState::Canceled,
                    ..job
                }))
            }
        }
    }

    /// Every [`MEASURE_STORED_EVERY`] ticks: the bytes stored, for `/metrics`.
    pub(super) async fn measure_stored(&mut self) {
        self.ticks += 1;
        if !(self.ticks - 1).is_multiple_of(MEASURE_STORED_EVERY) {
            return;
        }
        let files = self.files.clone();
        match tokio::task::spawn_blocking(move || files.stored_bytes()).await {
            Ok(Ok((inputs, mp3s, uploads))) => crate::metrics::stored(inputs, mp3s, uploads),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot measure the bytes stored"),
            Err(e) => tracing::warn!(error = %e, "cannot measure the bytes stored"),
        }
    }

    /// A job ended: its input goes, unless `--keep-inputs` (its MP3 stays until it expires).
    pub(super) async fn drop_input(&self, id: &JobId) {
        if self.config.keep_inputs {
            return;
        }
        if let Err(e) = tokio::fs::remove_file(self.files.input(id)).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(job_id = %id, error = %e, "cannot remove the input of an ended job");
        }
    }

    /// Deletes the jobs that ended longer ago than `--retention` (files first, then the row,
    /// which leaves a tombstone), a batch per tick; the query is indexed by end time.
    pub(super) async fn expire_jobs(&mut self) {
        let before = crate::store::now_ms() - self.config.retention.as_millis() as i64;
        let due = match self.db.run(move |s| s.jobs_ended_before(before, EXPIRE_BATCH)).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for expired jobs");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        let mut expired = 0;
        for id in &due {
            self.remove_files(id).await;
            let key = id.clone();
            match self.db.run(move |s| s.expire_job(&key)).await {
                Ok(_) => expired += 1,
                Err(e) => tracing::warn!(job_id = %id, error = %e, "cannot expire a job"),
            }
        }
        tracing::info!(jobs = expired, retention = %humantime::format_duration(self.config.retention), "deleted jobs past the retention period");
    }

    /// Removes the job's files (off the runtime), logging a failure.
    pub(super) async fn remove_files(&self, id: &JobId) {
        let (files, key) = (self.files.clone(), id.clone());
        let removed = tokio::task::spawn_blocking(move || files.remove_job(&key)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(job_id = %id, error = %e, "cannot remove the job's files");
        }
    }

    /// Deletes the jobs (work, files, rows) of users removed here or on another node (their
    /// tombstones replicate), a batch per tick.
    pub(super) async fn purge_removed_users(&mut self) {
        let orphans = match self.db.run(|s| s.jobs_of_removed_users(50)).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for removed users' jobs");
                return;
            }
        };
        for id in orphans {
            self.stop_work(&id);
            self.remove_files(&id).await;
            let key = id.clone();
            match self.db.run(move |s| s.forget_job(&key)).await {
                Ok(_) => tracing::info!(job_id = %id, "deleted a removed user's job"),
                Err(e) => tracing::warn!(job_id = %id, error = %e, "cannot delete a removed user's job"),
            }
        }
    }

    /// Stops whatever runs for `id`: unqueued, its import aborted, its conversion stopped
    /// here or withdrawn from its host.
    fn stop_work(&mut self, id: &JobId) {
        self.queue.retain(|q| q != id);
        if let Some((_, task)) = self.fetching.remove(id) {
            task.abort();
        }
        if let Some(placed) = self.running.remove(id) {
            stop(id.clone(), placed);
        }
        self.drained();
    }

    /// Retries the rows of deletes and cancels that a full disk refused.
    pub(super) async fn retry_deletes(&mut self) {
        let pending: Vec<(JobId, bool)> = self.undeleted.iter().map(|(id, f)| (id.clone(), *f)).collect();
        for (id, is_final) in pending {
            let key = id.clone();
            let done = if is_final {
                self.db.run(move |s| s.delete_job(&key)).await.map(|_| ())
            } else {
                self.db.run(move |s| s.cancel(&key)).await.map(|_| ())
            };
            match done {
                Ok(()) | Err(StoreError::Conflict { .. }) => {
                    self.undeleted.remove(&id);
                    self.remove_files(&id).await;
                }
                Err(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => {
                    self.undeleted.remove(&id);
                }
                Err(_) => {}
            }
        }
    }
}
