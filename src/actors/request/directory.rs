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
    let mut swept = tokio::time::Instant::now();
    loop {
        if swept.elapsed() >= SWEEP_EVERY {
            swept = tokio::time::Instant::now();
            match sweep(&meta, &db, &node, crate::store::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(jobs = n, "job directory: removed entries of jobs never made here"),
                Err(e) => tracing::debug!(error = %e, "job directory: no sweep now"),
            }
        }
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

/// How often the directory is swept for entries of jobs never made here ([`sweep`]).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// How old an entry of a job this node does not have must be to be swept: a submission
/// is admitted (its entry committed) a moment before its job is stored.
const STRAY_AFTER_MS: i64 = 60_000;

/// Removes the directory's `queued` entries naming `node` that it does not have, admitted
/// more than [`STRAY_AFTER_MS`] before `now_ms`: admissions whose job was never made (a
/// write that committed after its client had been told `503` and the admission taken back,
/// or a crash between the two). The node is the authority on its jobs. Answers how many.
pub async fn sweep(meta: &Meta, db: &Db, node: &str, now_ms: i64) -> Result<usize, crate::meta::MetaError> {
    let queued = meta.queued_of(node, now_ms - STRAY_AFTER_MS, 1000).await?;
    if queued.is_empty() {
        return Ok(0);
    }
    let missing = db
        .run(move |s| {
            let mut missing = Vec::new();
            for id in queued {
                let known = match crate::store::JobId::parse(&id) {
                    Some(job) => s.job(&job)?.is_some(),
                    None => false,
                };
                if !known {
                    missing.push(id);
                }
            }
            Ok(missing)
        })
        .await
        .map_err(|e| crate::meta::MetaError::Store(e.to_string()))?;
    if missing.is_empty() {
        return Ok(0);
    }
    let n = missing.len();
    let gone = Command::Publish {
        node: node.to_string(),
        put: Vec::new(),
        gone: missing,
        only_new: false,
    };
    meta.write(gone).await?;
    Ok(n)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobId, NewJob, Source, Store};

    /// An admitted job the node never made is swept once old enough; its own jobs, and one
    /// just admitted, stay.
    #[tokio::test(flavor = "multi_thread")]
    async fn entries_of_jobs_never_made_here_are_swept_once_old() {
        let dir = tempfile::tempdir().unwrap();
        let node = "sweep-t1";
        let meta = Meta::start(node, dir.path(), &[node.to_string()]).await.unwrap();
        let db = Db::from(Store::open(&dir.path().join("node.db")).unwrap());
        let new = |id: &JobId| NewJob {
            id: id.clone(),
            owner_email: "a@example.com".into(),
            source: Source::Upload,
            file_name: "song.mp4".into(),
            bitrate_kbps: None,
            vbr_quality: None,
            idempotency_key: None,
            webhook_url: None,
        };
        let (made, never) = (JobId::new(node), JobId::new(node));
        let job = new(&made);
        let stored = db.run(move |s| s.insert_job(&job)).await.unwrap().0;
        let t = stored.created_at_ms;
        let ghost = listed(&new(&never).queued(t), None);
        let put = vec![listed(&stored, None), ghost];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let publish = Command::Publish {
                node: node.into(),
                put: put.clone(),
                gone: Vec::new(),
                only_new: true,
            };
            match meta.write(publish).await {
                Ok(_) => break,
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
            }
        }
        assert_eq!(sweep(&meta, &db, node, t + 1_000).await.unwrap(), 0, "too young");
        assert_eq!(sweep(&meta, &db, node, t + STRAY_AFTER_MS + 1).await.unwrap(), 1);
        assert!(meta.listed(never.as_str()).await.unwrap().is_none(), "swept");
        assert!(meta.listed(made.as_str()).await.unwrap().is_some(), "its own job stays");
        assert_eq!(sweep(&meta, &db, node, t + STRAY_AFTER_MS + 1).await.unwrap(), 0);
        meta.stop().await;
    }
}
