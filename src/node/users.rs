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
use crate::meta::users::UserOp;
use crate::store::Db;

/// Users written per step.
const BATCH: u32 = 256;
/// How often the mirror looks even without a wake-up (a missed one costs this much).
const MIRROR_EVERY: Duration = Duration::from_secs(1);
/// How often the queue is looked at.
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
                let written = db
                    .run(move |s| {
                        let mut n = 0;
                        for (user, _) in &users {
                            n += usize::from(s.mirror_user(user)?);
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
        if meta.status().leader.is_none() {
            continue;
        }
        let queued = match db.run(|s| s.user_ops(BATCH)).await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the queued user changes");
                continue;
            }
        };
        for (id, email, op) in queued {
            if !commit_one(&meta, &db, id, &email, op).await {
                break;
            }
        }
    }
}

/// Commits queued change `id`; `false` if it must wait (no leader, a store error).
async fn commit_one(meta: &Meta, db: &Db, id: i64, email: &str, op: Option<String>) -> bool {
    let op = match op {
        Some(raw) => match serde_json::from_str::<UserOp>(&raw) {
            Ok(op) => op,
            Err(e) => {
                tracing::error!(%email, error = %e, "dropping an unreadable queued user change");
                return db.run(move |s| s.user_op_done(id, None)).await.is_ok();
            }
        },
        None => {
            let key = email.to_string();
            match db.run(move |s| s.stored_user(&key)).await {
                Ok(Some(user)) => UserOp::Import(user),
                Ok(None) => return db.run(move |s| s.user_op_done(id, None)).await.is_ok(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a user to import");
                    return false;
                }
            }
        }
    };
    match meta.change_user(email, op).await {
        Ok(changed) => {
            let now = match changed {
                Ok(user) => Some(user),
                Err(refused) => {
                    // Refused (an admin made at start on every node: the first one stands).
                    tracing::info!(%email, %refused, "a queued user change was refused by the metadata");
                    meta.users().get(email).map(|u| (*u).clone())
                }
            };
            match db.run(move |s| s.user_op_done(id, now.as_ref())).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a committed user change");
                    false
                }
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "queued user changes wait for the metadata");
            false
        }
    }
}
