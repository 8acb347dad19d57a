//! This node's jobs in the replicated job directory (`meta/`): every node can answer for a
//! job whose node is away (restarting, lost, on the other side of a partition).
//!
//! The jobs table records every change that the directory shows in a feed (SQLite
//! triggers: inserts, deletes, a new state, result or attempt; not progress). [`publish`]
//! reads the feed, commits the jobs named as they are now (one `Publish` command per batch)
//! and clears what it committed. A change made while no leader can be reached waits in the
//! feed; nothing is lost, a restart goes on from the feed. Every job already on a node
//! when it first starts this version is in the feed (the migration), so old data reaches
//! the directory too.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use prost::Message;

use super::jobs::JobView;
use crate::meta::{Command, Listed, Meta};
use crate::store::{Db, Job};

/// Changes per command.
const BATCH: u32 = 256;

/// How often an empty feed is looked at again.
const IDLE: Duration = Duration::from_millis(200);

/// How long to wait after a failure (no leader, a store error).
const BACKOFF: Duration = Duration::from_secs(1);

/// Job `job` (submitted with Idempotency-Key `key`) as the directory carries it.
pub fn listed(job: &Job, key: Option<String>) -> Listed {
    Listed {
        id: job.id.to_string(),
        node: String::new(),
        owner_email: job.owner_email.clone(),
        created_at_ms: job.created_at_ms,
        key,
        record: STANDARD_NO_PAD.encode(JobView::from(job).encode_to_vec()),
        state: job.state.to_string(),
        seq: 0,
        // What an ended job keeps: its MP3 (its input goes when it ends).
        bytes: job.produced.as_ref().map_or(0, |p| p.mp3_bytes),
        ended_at_ms: job.finished_at_ms,
    }
}

/// The job a directory entry describes (`None`: a record this version cannot read).
pub fn job(listed: &Listed) -> Option<Job> {
    let bytes = STANDARD_NO_PAD.decode(&listed.record).ok()?;
    JobView::decode(bytes.as_slice()).ok()?.to_job()
}

/// Publishes node `node`'s job changes from `db` for as long as the process runs.
pub async fn publish(meta: Meta, db: Db, node: String) {
    loop {
        let wait = match db.run(|s| s.job_changes(BATCH)).await {
            Ok(None) => IDLE,
            Ok(Some((seq, changed))) => {
                let mut put = Vec::new();
                let mut gone = Vec::new();
                for (id, job) in changed {
                    match job {
                        Some((job, key)) => put.push(listed(&job, key)),
                        None => gone.push(id.to_string()),
                    }
                }
                let command = Command::Publish {
                    node: node.clone(),
                    put,
                    gone,
                    only_new: false,
                };
                match meta.write(command).await {
                    Ok(_) => match db.run(move |s| s.forget_changes(seq)).await {
                        Ok(()) => Duration::ZERO,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot clear the job change feed");
                            BACKOFF
                        }
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "job directory: cannot publish now; retrying");
                        BACKOFF
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the job change feed");
                BACKOFF
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Waits (up to `patience`) until every change in `db`'s feed is published: a stopping node
/// leaves the directory up to date. `false` if some were not.
pub async fn settled(db: &Db, patience: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match db.run(|s| s.job_changes(1)).await {
            Ok(None) => return true,
            Ok(Some(_)) if tokio::time::Instant::now() < deadline => tokio::time::sleep(IDLE).await,
            _ => return false,
        }
    }
}
