//! Users between the replicated metadata and this node's database.
//!
//! - [`mirror`]: every user the log changes is written into this node's `users` table (the
//!   mirror that logins, quotas, webhooks and removed users' job deletion read), in log
//!   order, woken by each change.
//! - [`commit_queued`]: changes made beside the node (`mp4tomp3 user add`, the first admin
//!   at start, and every user of a data directory from the version before) wait in the
//!   database's `user_ops` queue until the node commits them through the log; the user as
//!   the log then has it is mirrored in the same step.

use std::time::Duration;

use crate::meta::Meta;
use crate::store::Db;

/// Users written per step.
const BATCH: u32 = 256;
/// How often the mirror looks even without a wake-up (a missed one costs this much).
const MIRROR_EVERY: Duration = Duration::from_secs(1);
/// How often the queue is looked at. (1 s was tried: the first admin's import then raced
/// the first change of that user in CI's push test; see issue 32's note.)
const QUEUE_EVERY: Duration = Duration::from_millis(100);

/// Mirrors the log's users into `db` for as long as the process runs.
pub async fn mirror(meta: Meta, db: Db) {
    let view = meta.users();
    let mut seq = 0;
    loop {
        // Registered before reading, so a change applied meanwhile is not missed.
        let changed = view.changed();
        let mut full = false;
        match meta.users_since(seq, BATCH).await {
            Ok(users) => {
                full = users.len() == BATCH as usize;
                let last = users.last().map(|(_, s)| *s);
                // Each user as the view has it when written (never older than the batch):
                // a change mirrored meanwhile by the node that made it stays.
                let latest = view.clone();
                let written = db
                    .run(move |s| {
                        let mut n = 0;
                        for (user, _) in users {
                            n += usize::from(s.mirror_user(&latest.latest(user))?);
                        }
                        Ok(n)
                    })
                    .await;
                match written {
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(users = n, "users mirrored from the metadata");
                        }
                        if let Some(last) = last {
                            seq = last;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot mirror users; trying again"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the metadata's users; trying again"),
        }
        if !full {
            let _ = tokio::time::timeout(MIRROR_EVERY, changed).await;
        }
    }
}

/// Commits the changes queued in `db` through the log, oldest first, for as long as the
/// process runs. A change waits while no leader is known.
pub async fn commit_queued(meta: Meta, db: Db) {
    loop {
        tokio::time::sleep(QUEUE_EVERY).await;
        if meta.leader_known() {
            crate::meta::users::commit_queued(&meta, &db, None).await;
        }
    }
}
