//! Users in the replicated state: each change is an operation ([`UserOp`]) that the log
//! orders, applied by the same rule on every node ([`change`]). No timestamps decide
//! anything (a node's clock that jumps changes nothing), except when a data directory of
//! the version before is imported ([`UserOp::Import`], last writer wins, once).
//!
//! Every node keeps the users as the log has them in memory ([`UsersView`]): token checks
//! read it without a message or a database read. The node's own database mirrors the same
//! records (`node/users.rs`) for everything else that reads users (logins, quotas,
//! webhooks, removing a removed user's jobs).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::Meta;
use crate::store::{Db, Quota, User};

/// How long a signed-out session is remembered past its tokens' expiry: a proposer's clock
/// that runs ahead (by up to this) does not forget a session whose tokens still work.
const REMEMBER_SIGNED_OUT_MS: i64 = 24 * 3600 * 1000;

/// At most this many signed-out sessions per user (the oldest expiring go first).
const MAX_SIGNED_OUT: usize = 1000;

/// A change to one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserOp {
    /// Creates the user if the email is free (a removed user's email is).
    Add {
        /// argon2id PHC string.
        password_hash: String,
        /// Admin flag.
        admin: bool,
    },
    /// Creates or replaces the user (`mp4tomp3 user add`): a replaced one's tokens stop.
    Put {
        /// argon2id PHC string.
        password_hash: String,
        /// Admin flag.
        admin: bool,
    },
    /// A new password: the user's tokens stop working.
    SetPassword {
        /// argon2id PHC string.
        password_hash: String,
    },
    /// Removes the user (a tombstone: their jobs go on every node, their tokens stop).
    Remove,
    /// Signs out one session, whose tokens expire at `until_ms` at the latest.
    SignOut {
        /// The session id.
        sid: String,
        /// Its tokens' expiry.
        until_ms: i64,
    },
    /// The user's own limits (unset: the defaults).
    SetQuota(Quota),
    /// Admin or not: the user's tokens (which carry the flag) stop working.
    SetAdmin(bool),
    /// The default webhook URL (`None`: removed) and events; `secret_if_none` becomes the
    /// signing secret if there is none yet.
    SetWebhook {
        /// The URL.
        url: Option<String>,
        /// The events.
        events: Vec<String>,
        /// A fresh secret, kept only if the user has none.
        secret_if_none: Option<String>,
    },
    /// Replaces the signing secret.
    SetSecret(String),
    /// A user as a data directory of the version before had it: taken if the email is
    /// unknown or this copy is newer (`updated_at_ms`), as that version's replication did.
    Import(User),
}

/// Why a change was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// [`UserOp::Add`] of an email in use.
    #[error("a user with this email exists")]
    Exists,
    /// A change of a user that does not exist (or was removed).
    #[error("no such user")]
    NoSuchUser,
}

/// `old` (the user as stored, tombstones included) after `op`, applied at `at_ms` (the
/// proposer's clock: it only stamps `updated_at_ms`).
pub fn change(email: &str, old: Option<&User>, op: &UserOp, at_ms: i64) -> Result<User, Refusal> {
    let live = old.filter(|u| !u.removed);
    let stamp = |u: &mut User| u.updated_at_ms = at_ms.max(old.map_or(i64::MIN, |o| o.updated_at_ms + 1));
    let fresh = |hash: &str, admin: bool| User {
        email: email.to_string(),
        password_hash: hash.to_string(),
        is_admin: admin,
        updated_at_ms: at_ms,
        // A user created again under a removed email starts past the old generation.
        token_gen: old.map_or(0, |o| o.token_gen + 1),
        removed: false,
        webhook: [None, None, None],
        quota: Quota::default(),
        revoked_sessions: String::new(),
    };
    // A write retried after its answer was lost finds its own change applied: the same
    // hash (salted per request) is the same request, answered as it was.
    if let (
        Some(u),
        UserOp::Add { password_hash, .. } | UserOp::Put { password_hash, .. } | UserOp::SetPassword { password_hash },
    ) = (live, op)
        && u.password_hash == *password_hash
    {
        return Ok(u.clone());
    }
    let mut user = match op {
        UserOp::Import(theirs) => {
            return Ok(match old {
                Some(ours) if ours.updated_at_ms >= theirs.updated_at_ms => ours.clone(),
                _ => User {
                    email: email.to_string(),
                    token_gen: theirs.token_gen.max(old.map_or(0, |o| o.token_gen)),
                    ..theirs.clone()
                },
            });
        }
        UserOp::Add { password_hash, admin } => match live {
            Some(_) => return Err(Refusal::Exists),
            None => fresh(password_hash, *admin),
        },
        UserOp::Put { password_hash, admin } => match live {
            Some(u) => User {
                password_hash: password_hash.clone(),
                is_admin: *admin,
                token_gen: u.token_gen + 1,
                ..u.clone()
            },
            None => fresh(password_hash, *admin),
        },
        _ => {
            let mut u = live.cloned().ok_or(Refusal::NoSuchUser)?;
            match op {
                UserOp::SetPassword { password_hash } => {
                    u.password_hash = password_hash.clone();
                    u.token_gen += 1;
                }
                UserOp::Remove => {
                    u = User {
                        password_hash: String::new(),
                        is_admin: false,
                        token_gen: u.token_gen + 1,
                        removed: true,
                        webhook: [None, None, None],
                        quota: Quota::default(),
                        ..u
                    };
                }
                UserOp::SignOut { sid, until_ms } => {
                    let mut sessions: Vec<(String, i64)> =
                        serde_json::from_str(&u.revoked_sessions).unwrap_or_default();
                    sessions.retain(|(s, until)| until.saturating_add(REMEMBER_SIGNED_OUT_MS) > at_ms && s != sid);
                    sessions.push((sid.clone(), *until_ms));
                    if sessions.len() > MAX_SIGNED_OUT {
                        sessions.sort_by_key(|(_, until)| std::cmp::Reverse(*until));
                        sessions.truncate(MAX_SIGNED_OUT);
                    }
                    u.revoked_sessions = serde_json::to_string(&sessions).unwrap_or_default();
                }
                UserOp::SetQuota(quota) => u.quota = *quota,
                UserOp::SetAdmin(admin) => {
                    u.is_admin = *admin;
                    u.token_gen += 1;
                }
                UserOp::SetWebhook {
                    url,
                    events,
                    secret_if_none,
                } => {
                    u.webhook[0] = url.clone();
                    u.webhook[1] = Some(events.join(","));
                    if u.webhook[2].is_none() {
                        u.webhook[2] = secret_if_none.clone();
                    }
                }
                UserOp::SetSecret(secret) => u.webhook[2] = Some(secret.clone()),
                UserOp::Add { .. } | UserOp::Put { .. } | UserOp::Import(_) => unreachable!("handled above"),
            }
            u
        }
    };
    stamp(&mut user);
    Ok(user)
}

/// Whether a token issued to `user` under token generation `generation` for session `sid`
/// still works: the user is not removed, the generation is current, the session is not
/// signed out.
pub fn token_current(user: &User, generation: i64, sid: &str) -> bool {
    !user.removed && user.token_gen == generation && !user.signed_out(sid)
}

/// Every user as this node's replica has applied them (tombstones included), in memory.
#[derive(Clone, Default)]
pub struct UsersView {
    users: Arc<RwLock<HashMap<String, Arc<User>>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl UsersView {
    /// The user with this (lower-case) email, tombstones included.
    pub fn get(&self, email: &str) -> Option<Arc<User>> {
        self.users.read().unwrap_or_else(|p| p.into_inner()).get(email).cloned()
    }

    /// `user` as this view has it now if it has it (never older: the state machine
    /// updates the view before its file), else `user`. What this node's mirror writes: two
    /// writers (the mirror task, the node that made a change) each writing the newest at
    /// the moment of writing, one after the other, never put an older version back.
    pub fn latest(&self, user: User) -> User {
        self.get(&user.email).map_or(user, |u| (*u).clone())
    }

    /// Whether the view holds no user at all.
    pub fn is_empty(&self) -> bool {
        self.users.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Takes in `users` without waking anyone (the state machine wakes them once its file
    /// shows them too, [`UsersView::notify`]); whether there were any.
    pub(super) fn put(&self, users: impl IntoIterator<Item = User>) -> bool {
        let mut map = self.users.write().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for user in users {
            map.insert(user.email.clone(), Arc::new(user));
            any = true;
        }
        any
    }

    /// Wakes whoever waits for a change ([`UsersView::changed`]).
    pub(super) fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// Replaces every user (a snapshot is being installed), without waking anyone.
    pub(super) fn replace(&self, users: impl IntoIterator<Item = User>) {
        let fresh: HashMap<String, Arc<User>> = users.into_iter().map(|u| (u.email.clone(), Arc::new(u))).collect();
        *self.users.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    /// Completes at the next change after this call (not after its first poll).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// Commits the user changes queued in `db` (`mp4tomp3 user …`, the first admin, users of a
/// data dir from the version before; `only`: those of one user), oldest first, mirroring
/// each user as the log then has it. Stops at the first that must wait (no leader).
pub async fn commit_queued(meta: &Meta, db: &Db, only: Option<&str>) {
    let queued = match db.run(|s| s.user_ops(256)).await {
        Ok(q) => q,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queued user changes");
            return;
        }
    };
    for (id, email, op) in queued {
        if only.is_some_and(|o| o != email) {
            continue;
        }
        if !commit_one(meta, db, id, &email, op).await {
            break;
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
            let view = meta.users();
            match db
                .run(move |s| s.user_op_done(id, now.map(|u| view.latest(u)).as_ref()))
                .await
            {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn add(hash: &str) -> UserOp {
        UserOp::Add {
            password_hash: hash.into(),
            admin: false,
        }
    }

    /// What the node's mirror writes is the view's version whenever the view has the user:
    /// a batch read before a change cannot put the older version back after it.
    #[test]
    fn the_mirror_writes_the_views_newer_version_over_a_stale_one() {
        let v1 = change("ann@x.test", None, &add("h1"), 1_000).unwrap();
        let v2 = change("ann@x.test", Some(&v1), &UserOp::SetSecret("whsec_2".into()), 2_000).unwrap();
        let bob = change("bob@x.test", None, &add("h2"), 1_000).unwrap();
        let view = UsersView::default();
        view.put([v2.clone()]);
        assert_eq!(view.latest(v1.clone()), v2, "the stale version is replaced");
        assert_eq!(
            view.latest(bob.clone()),
            bob,
            "a user the view lacks is written as given"
        );
    }

    #[test]
    fn each_change_follows_its_rule_and_clocks_only_stamp() {
        let ann = change("ann@x.test", None, &add("h1"), 1_000).unwrap();
        assert_eq!(
            (ann.token_gen, ann.removed, ann.password_hash.as_str()),
            (0, false, "h1")
        );
        assert_eq!(
            change("ann@x.test", Some(&ann), &add("h2"), 2_000),
            Err(Refusal::Exists)
        );
        assert_eq!(
            change("ann@x.test", Some(&ann), &add("h1"), 2_000),
            Ok(ann.clone()),
            "a retried add"
        );
        // A clock an hour behind still orders after the stored change.
        let moved = change(
            "ann@x.test",
            Some(&ann),
            &UserOp::SetPassword {
                password_hash: "h3".into(),
            },
            1_000 - 3_600_000,
        )
        .unwrap();
        assert_eq!((moved.token_gen, moved.password_hash.as_str()), (1, "h3"));
        assert!(moved.updated_at_ms > ann.updated_at_ms);
        let admin = change("ann@x.test", Some(&moved), &UserOp::SetAdmin(true), 3_000).unwrap();
        assert_eq!((admin.is_admin, admin.token_gen), (true, 2));
        let quota = Quota {
            max_active: Some(3),
            ..Quota::default()
        };
        let limited = change("ann@x.test", Some(&admin), &UserOp::SetQuota(quota), 4_000).unwrap();
        assert_eq!((limited.quota, limited.token_gen), (quota, 2));
        let hooked = change(
            "ann@x.test",
            Some(&limited),
            &UserOp::SetWebhook {
                url: Some("https://h.test/".into()),
                events: vec!["job.done".into()],
                secret_if_none: Some("s1".into()),
            },
            5_000,
        )
        .unwrap();
        let again = change(
            "ann@x.test",
            Some(&hooked),
            &UserOp::SetWebhook {
                url: None,
                events: vec![],
                secret_if_none: Some("s2".into()),
            },
            6_000,
        )
        .unwrap();
        assert_eq!(
            again.webhook,
            [None, Some(String::new()), Some("s1".into())],
            "the secret stays"
        );
        let removed = change("ann@x.test", Some(&again), &UserOp::Remove, 7_000).unwrap();
        assert!(removed.removed && removed.password_hash.is_empty() && removed.token_gen == 3);
        assert_eq!(removed.webhook, [None, None, None]);
        for op in [UserOp::Remove, UserOp::SetAdmin(false), UserOp::SetSecret("s".into())] {
            assert_eq!(
                change("ann@x.test", Some(&removed), &op, 8_000),
                Err(Refusal::NoSuchUser)
            );
        }
        assert_eq!(
            change("bob@x.test", None, &UserOp::Remove, 8_000),
            Err(Refusal::NoSuchUser)
        );
        // Created again: past every token of the removed one.
        let back = change("ann@x.test", Some(&removed), &add("h4"), 9_000).unwrap();
        assert!(!back.removed && back.token_gen == 4 && back.quota == Quota::default());
        // Put replaces a live user and bumps the generation; creates a missing one.
        let put = UserOp::Put {
            password_hash: "h5".into(),
            admin: true,
        };
        assert_eq!(change("ann@x.test", Some(&back), &put, 10_000).unwrap().token_gen, 5);
        assert_eq!(change("cid@x.test", None, &put, 10_000).unwrap().token_gen, 0);
    }

    #[test]
    fn signed_out_sessions_outlive_a_clock_that_runs_ahead_and_stay_bounded() {
        let mut u = change("ann@x.test", None, &add("h"), 0).unwrap();
        let hour = 3_600_000;
        u = change(
            "ann@x.test",
            Some(&u),
            &UserOp::SignOut {
                sid: "a".into(),
                until_ms: hour,
            },
            0,
        )
        .unwrap();
        // The next sign-out is proposed by a node whose clock is two hours ahead: session
        // `a` (its tokens valid for another hour by the true time) is still refused.
        u = change(
            "ann@x.test",
            Some(&u),
            &UserOp::SignOut {
                sid: "b".into(),
                until_ms: 3 * hour,
            },
            2 * hour,
        )
        .unwrap();
        let sessions: Vec<(String, i64)> = serde_json::from_str(&u.revoked_sessions).unwrap();
        assert_eq!(sessions.len(), 2);
        assert!(u.signed_out("a") && u.signed_out("b") && !u.signed_out("c"));
        // A day past their expiry they are forgotten.
        u = change(
            "ann@x.test",
            Some(&u),
            &UserOp::SignOut {
                sid: "c".into(),
                until_ms: 30 * hour,
            },
            26 * hour,
        )
        .unwrap();
        assert!(!u.signed_out("a") && u.signed_out("b") && u.signed_out("c"));
        for i in 0..MAX_SIGNED_OUT + 10 {
            u = change(
                "ann@x.test",
                Some(&u),
                &UserOp::SignOut {
                    sid: format!("s{i}"),
                    until_ms: 40 * hour + i as i64,
                },
                29 * hour,
            )
            .unwrap();
        }
        let sessions: Vec<(String, i64)> = serde_json::from_str(&u.revoked_sessions).unwrap();
        assert_eq!(sessions.len(), MAX_SIGNED_OUT);
        assert!(u.signed_out(&format!("s{}", MAX_SIGNED_OUT + 9)));
    }

    #[test]
    fn an_import_keeps_the_newer_copy_and_never_lowers_a_generation() {
        let ours = change("ann@x.test", None, &add("h1"), 5_000).unwrap();
        let older = User {
            password_hash: "old".into(),
            updated_at_ms: 4_000,
            ..ours.clone()
        };
        assert_eq!(
            change("ann@x.test", Some(&ours), &UserOp::Import(older), 9_000).unwrap(),
            ours
        );
        let newer = User {
            password_hash: "new".into(),
            updated_at_ms: 6_000,
            token_gen: 0,
            ..ours.clone()
        };
        let ours = User { token_gen: 2, ..ours };
        let taken = change("ann@x.test", Some(&ours), &UserOp::Import(newer), 9_000).unwrap();
        assert_eq!((taken.password_hash.as_str(), taken.token_gen), ("new", 2));
    }
}
