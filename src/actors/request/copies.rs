//! Copies of done jobs' MP3s on other nodes (`--mp3-replicas`, default 2 in a cluster), so
//! that a download works while the job's own node restarts or is lost.
//!
//! - **Who holds a copy.** The `replicas − 1` nodes after the job's node in the name order
//!   of the metadata group's members ([`holders`]): every node computes the same.
//! - **When.** Each node follows the job directory (`meta/`): a job that became `done` on
//!   another node and names this node as a holder is pulled from its node in chunks (the
//!   same reads a remote download makes), written to `DATA/copies/<id>.mp3` (fsynced, then
//!   renamed), and recorded in the directory (`Copied`) once it is on disk. The copy is
//!   recorded when it lands rather than before `done` is committed: a job's email and
//!   webhook never wait for another pod, and a holder that is away takes its copy when it
//!   is back. Besides, a job's node asks its holders to take their copies ([`push`],
//!   answered by [`take`]) before it marks the job done, so a client that saw `done` can
//!   download it even if that node is lost before the directory shows `done` (a copy is
//!   served for a job the directory still shows unfinished: only a finished conversion is
//!   ever copied).
//! - **Serving.** A download whose job's node cannot be asked goes to a holder
//!   (`client.rs`); a holder answers a chunk read of a job it does not own from its copy
//!   ([`copy_file`]).
//! - **Consistency.** A job removed from the directory (deleted, expired, a removed user's)
//!   loses its copies: each node drops copies of jobs the directory no longer has
//!   ([`sweep`]). Copies do not count against a user's `max_stored_bytes`: a quota counts
//!   what a user stored, once.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::client::{Mp3, remote_output};
use super::jobs::{self, JobQuery, JobsMsg, Status};
use super::{JobError, Mp3File};
use crate::auth::Principal;
use crate::config::Config;
use crate::meta::Meta;
use crate::store::{Files, JobId, JobState};

/// How often the directory is looked at for new done jobs.
const TICK: Duration = Duration::from_millis(250);

/// How often copies of removed jobs are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Done jobs looked at per tick.
const BATCH: u32 = 200;

/// The nodes after `node` (excluded) in name order among `members`, `replicas − 1` of them:
/// the holders of copies of `node`'s MP3s.
pub fn holders(node: &str, members: &BTreeSet<String>, replicas: usize) -> Vec<String> {
    let after = members.iter().filter(|m| m.as_str() > node);
    let before = members.iter().filter(|m| m.as_str() < node);
    after.chain(before).take(replicas.saturating_sub(1)).cloned().collect()
}

/// Runs for as long as the process: takes the copies this node should hold, drops those of
/// removed jobs.
pub async fn keep(meta: Meta, config: Arc<Config>) {
    if config.mp3_replicas < 2 {
        return;
    }
    let files = Files::at(&config.data_dir);
    let dir = files.copies_dir();
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        tracing::warn!(error = %e, "cannot create the copies directory; no MP3 copies on this node");
        return;
    }
    let me = config.node_name.clone();
    let mut seen = 0u64;
    // Copies that failed (their node away): retried from the start of the feed.
    let mut behind = false;
    let mut swept = Instant::now() - SWEEP_EVERY;
    loop {
        let members = meta.status().members();
        match meta.done_since(seen, BATCH).await {
            Ok(done) => {
                for listed in &done {
                    seen = seen.max(listed.seq);
                    if listed.node == me || !holders(&listed.node, &members, config.mp3_replicas).contains(&me) {
                        continue;
                    }
                    let Some(id) = JobId::parse(&listed.id) else { continue };
                    let path = files.copy(&id);
                    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
                        match pull(&listed.node, &id, &path).await {
                            Ok(bytes) => tracing::info!(job = %id, from = %listed.node, bytes, "MP3 copied"),
                            Err(e) => {
                                tracing::debug!(job = %id, error = %e, "cannot copy this MP3 now");
                                behind = true;
                                continue;
                            }
                        }
                    }
                    // Recorded here too: a copy taken before its job reached the directory
                    // (`take`) could not be recorded then.
                    let recorded = meta.copies(&listed.id).await.unwrap_or_default();
                    if !recorded.contains(&me) {
                        let command = crate::meta::Command::Copied {
                            id: id.to_string(),
                            node: me.clone(),
                        };
                        if let Err(e) = meta.write(command).await {
                            tracing::debug!(job = %id, error = %e, "copy not recorded yet");
                            behind = true;
                        }
                    }
                }
                if done.len() < BATCH as usize && behind {
                    // Everything new is seen: go over the feed again for what failed.
                    seen = 0;
                    behind = false;
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the job directory"),
        }
        if swept.elapsed() >= SWEEP_EVERY {
            swept = Instant::now();
            sweep(&meta, &files).await;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Waits (up to `patience`) until every done job of this node has its copies on the other
/// nodes (as many as there are, up to `--mp3-replicas − 1`): a node that stops for a
/// restart leaves its MP3s readable. `false` if some have none yet.
pub async fn settled(meta: &Meta, config: &Config, patience: Duration) -> bool {
    if config.mp3_replicas < 2 {
        return true;
    }
    let deadline = Instant::now() + patience;
    loop {
        let others = meta
            .status()
            .members()
            .iter()
            .filter(|n| **n != config.node_name)
            .count();
        let want = others.min(config.mp3_replicas - 1) as u32;
        match meta.uncopied(&config.node_name, want).await {
            Ok(0) => return true,
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(TICK).await,
            _ => return false,
        }
    }
}

/// Pulls job `id`'s MP3 from `node` into `path` (through a temporary file).
async fn pull(node: &str, id: &JobId, path: &std::path::Path) -> Result<u64, String> {
    let Mp3::Streamed { mut bytes, total, .. } = remote_output(node, id).await.map_err(|e| e.to_string())? else {
        return Err("no MP3 stream".into());
    };
    let tmp = path.with_extension("part");
    let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| e.to_string())?;
    let mut written = 0u64;
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        written += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    if written != total {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(format!("got {written} of {total} bytes"));
    }
    file.sync_all().await.map_err(|e| e.to_string())?;
    drop(file);
    tokio::fs::rename(&tmp, path).await.map_err(|e| e.to_string())?;
    Ok(written)
}

/// At a holder, asked by job `id`'s node before the job is `done`: takes the copy now
/// (nothing to do if it is here) and records it.
pub async fn take(meta: &Meta, config: &Config, id: &JobId) -> Result<(), String> {
    let files = Files::at(&config.data_dir);
    tokio::fs::create_dir_all(files.copies_dir())
        .await
        .map_err(|e| e.to_string())?;
    let path = files.copy(id);
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        let bytes = pull(id.owner(), id, &path).await?;
        tracing::info!(job = %id, from = %id.owner(), bytes, "MP3 copied before its job is done");
    }
    let command = crate::meta::Command::Copied {
        id: id.to_string(),
        node: config.node_name.clone(),
    };
    meta.write(command).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// At job `id`'s node, before the job is `done`: asks its holders to take their copies and
/// waits for them (each call bounded by the mesh's call timeout). `false` if a holder did
/// not confirm; the holders' followers take it later then (the directory feed).
pub async fn push(meta: &Meta, config: &Config, id: &JobId) -> bool {
    if config.mp3_replicas < 2 || config.cluster.is_none() {
        return true;
    }
    let members = meta.status().members();
    let holders = holders(&config.node_name, &members, config.mp3_replicas);
    let asks = holders.iter().map(|holder| {
        let q = JobQuery {
            job_id: id.to_string(),
            ..JobQuery::default()
        };
        jobs::call(holder, |reply| JobsMsg::Replicate(q, reply))
    });
    let mut all = true;
    for (holder, answer) in holders.iter().zip(futures_util::future::join_all(asks).await) {
        match answer {
            Ok(a) if Status::of(a.status) == Status::Ok => {}
            Ok(a) => {
                tracing::warn!(job = %id, node = %holder, error = %a.message, "no MP3 copy there yet");
                all = false;
            }
            Err(e) => {
                tracing::warn!(job = %id, node = %holder, error = %e, "no MP3 copy there yet");
                all = false;
            }
        }
    }
    all
}

/// Drops copies of jobs the directory no longer has (and unfinished pulls).
async fn sweep(meta: &Meta, files: &Files) {
    let Ok(mut entries) = tokio::fs::read_dir(files.copies_dir()).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        let keep = match name.strip_suffix(".mp3").and_then(JobId::parse) {
            // A copy of a job that failed or was canceled meanwhile goes too.
            Some(id) => match meta.listed(id.as_str()).await {
                Ok(Some(l)) => !matches!(l.state.as_str(), "failed" | "canceled"),
                Ok(None) => false,
                Err(_) => true,
            },
            // A `.part` of a pull that broke off (or anything else): not a copy.
            None => false,
        };
        if !keep {
            tracing::debug!(file = %path.display(), "dropping an MP3 copy of a removed job");
            let _ = tokio::fs::remove_file(&path).await;
        }
    }
}

/// This node's copy of job `id`'s MP3, if it holds one and `who` (`None`: a verified
/// signed link) may read it.
pub async fn copy_file(
    meta: &Meta,
    data_dir: &std::path::Path,
    id: &JobId,
    who: Option<&Principal>,
) -> Result<Mp3File, JobError> {
    let listed = meta
        .listed(id.as_str())
        .await
        .map_err(|e| JobError::Io(std::io::Error::other(e)))?
        .ok_or(JobError::NotFound)?;
    let job = super::directory::job(&listed).ok_or(JobError::NotFound)?;
    if who.is_some_and(|w| !w.admin && w.email != job.owner_email) {
        return Err(JobError::NotFound);
    }
    // Not only `done`: a copy exists only once its node converted the MP3 and pushed it
    // (before marking the job done), so a job whose `done` had not reached the directory
    // when its node was lost is still served. A job canceled or failed meanwhile is not.
    if matches!(job.state, JobState::Failed | JobState::Canceled) {
        return Err(JobError::NotFound);
    }
    let path: PathBuf = Files::at(data_dir).copy(id);
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Err(JobError::NotFound);
    }
    Ok(Mp3File {
        path,
        file_name: job.file_name,
        id: id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn holders_are_the_next_nodes_in_name_order_wrapping_around() {
        let three = set(&["n-0", "n-1", "n-2"]);
        assert_eq!(holders("n-0", &three, 2), ["n-1"]);
        assert_eq!(holders("n-2", &three, 2), ["n-0"]);
        assert_eq!(holders("n-1", &three, 3), ["n-2", "n-0"]);
        // One replica: no copies; more replicas than nodes: every other node.
        assert!(holders("n-1", &three, 1).is_empty());
        assert_eq!(holders("n-1", &three, 5), ["n-2", "n-0"]);
        // A node that is not (or no longer) a member still has holders.
        assert_eq!(holders("n-15", &three, 2), ["n-2"]);
    }
}
