//! User replication: every node keeps every user (users are few and rarely written).
//!
//! Each node's users actor (pg group `users.v1`) pushes the users changed since its last
//! push to every peer every [`SYNC_EVERY`], and its whole table to any peer it has not
//! met yet (a node that joins later, or a node back from a partition). Receivers keep the
//! newer version of each user (last writer wins by `updated_at_ms`), so nodes that were
//! apart converge. Users added with `mp4tomp3 user add` on any node spread the same way.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorClusterMessage;

use crate::config::Config;
use crate::store::{Db, Quota, User};

/// The process group of the users actors.
pub const USERS_GROUP: &str = "users.v1";
/// How often changes are pushed.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);

/// One user on the wire.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserRecord {
    /// Lower-case email.
    #[prost(string, tag = "1")]
    pub email: String,
    /// argon2id PHC string.
    #[prost(string, tag = "2")]
    pub password_hash: String,
    /// Admin flag.
    #[prost(bool, tag = "3")]
    pub is_admin: bool,
    /// Version: newer wins.
    #[prost(int64, tag = "4")]
    pub updated_at_ms: i64,
    /// Token generation (older tokens are revoked).
    #[prost(int64, tag = "5")]
    pub token_gen: i64,
    /// Removed: a tombstone (its jobs go on every node).
    #[prost(bool, tag = "6")]
    pub removed: bool,
    /// Default webhook URL.
    #[prost(string, optional, tag = "7")]
    pub webhook_url: Option<String>,
    /// Webhook events, comma-separated.
    #[prost(string, optional, tag = "8")]
    pub webhook_events: Option<String>,
    /// Webhook signing secret (the mesh is private, and TLS where configured).
    #[prost(string, optional, tag = "9")]
    pub webhook_secret: Option<String>,
    /// Limit: unfinished jobs at once (unset: the default).
    #[prost(int64, optional, tag = "10")]
    pub max_active: Option<i64>,
    /// Limit: jobs per 24 hours.
    #[prost(int64, optional, tag = "11")]
    pub max_jobs_per_day: Option<i64>,
    /// Limit: bytes stored.
    #[prost(int64, optional, tag = "12")]
    pub max_stored_bytes: Option<i64>,
    /// Signed-out sessions (JSON `[[sid, expires_at_ms], ...]`; absent from older nodes).
    #[prost(string, optional, tag = "13")]
    pub revoked_sessions: Option<String>,
}

/// A batch of users.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserBatch {
    /// The users.
    #[prost(message, repeated, tag = "1")]
    pub users: Vec<UserRecord>,
}

ractor_cluster::derive_serialization_for_prost_type! {UserBatch}

/// The users actor's messages.
#[derive(RactorClusterMessage)]
pub enum UsersMsg {
    /// Users from a peer, to merge.
    Merge(UserBatch),
    /// Push local changes (local timer).
    Sync,
}

/// The users actor.
pub struct UsersActor;

/// Its state.
pub struct UsersState {
    db: Db,
    /// Highest `updated_at_ms` already pushed to every known peer.
    pushed_up_to: i64,
    /// Peers (their users actors) that have had our whole table.
    met: HashSet<ActorId>,
}

fn batch(users: &[User]) -> UserBatch {
    UserBatch {
        users: users
            .iter()
            .map(|u| UserRecord {
                email: u.email.clone(),
                password_hash: u.password_hash.clone(),
                is_admin: u.is_admin,
                updated_at_ms: u.updated_at_ms,
                token_gen: u.token_gen,
                removed: u.removed,
                webhook_url: u.webhook[0].clone(),
                webhook_events: u.webhook[1].clone(),
                webhook_secret: u.webhook[2].clone(),
                max_active: u.quota.max_active,
                max_jobs_per_day: u.quota.max_jobs_per_day,
                max_stored_bytes: u.quota.max_stored_bytes,
                revoked_sessions: (!u.revoked_sessions.is_empty()).then(|| u.revoked_sessions.clone()),
            })
            .collect(),
    }
}

impl Actor for UsersActor {
    type Msg = UsersMsg;
    type State = UsersState;
    type Arguments = Arc<Config>;

    async fn pre_start(
        &self,
        myself: ActorRef<UsersMsg>,
        config: Arc<Config>,
    ) -> Result<UsersState, ActorProcessingErr> {
        ractor::pg::join(USERS_GROUP.to_string(), vec![myself.get_cell()]);
        myself.send_interval(SYNC_EVERY, || UsersMsg::Sync);
        Ok(UsersState {
            db: Db::open(&config.db_path())?,
            pushed_up_to: 0,
            met: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<UsersMsg>,
        message: UsersMsg,
        state: &mut UsersState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UsersMsg::Merge(batch) => {
                let users: Vec<User> = batch
                    .users
                    .into_iter()
                    .map(|u| User {
                        email: u.email,
                        password_hash: u.password_hash,
                        is_admin: u.is_admin,
                        updated_at_ms: u.updated_at_ms,
                        token_gen: u.token_gen,
                        removed: u.removed,
                        webhook: [u.webhook_url, u.webhook_events, u.webhook_secret],
                        quota: Quota {
                            max_active: u.max_active,
                            max_jobs_per_day: u.max_jobs_per_day,
                            max_stored_bytes: u.max_stored_bytes,
                        },
                        revoked_sessions: u.revoked_sessions.unwrap_or_default(),
                    })
                    .collect();
                let changed = state
                    .db
                    .run(move |s| {
                        let mut changed = 0;
                        for user in &users {
                            changed += usize::from(s.merge_user(user)?);
                        }
                        Ok(changed)
                    })
                    .await?;
                if changed > 0 {
                    tracing::info!(users = changed, "users updated from a peer");
                }
            }
            UsersMsg::Sync => {
                let peers: Vec<_> = ractor::pg::get_members(&USERS_GROUP.to_string())
                    .into_iter()
                    .filter(|c| !c.get_id().is_local())
                    .collect();
                state.met.retain(|id| peers.iter().any(|p| p.get_id() == *id));
                let since = state.pushed_up_to;
                let changed = state.db.run(move |s| s.users_changed_since(since)).await?;
                let fresh: Vec<_> = peers.iter().filter(|p| !state.met.contains(&p.get_id())).collect();
                if !fresh.is_empty() {
                    let all = batch(&state.db.run(|s| s.users_changed_since(0)).await?);
                    for peer in fresh {
                        if peer.send_message(UsersMsg::Merge(all.clone())).is_ok() {
                            state.met.insert(peer.get_id());
                        }
                    }
                }
                if let Some(last) = changed.last() {
                    let update = batch(&changed);
                    for peer in peers.iter().filter(|p| state.met.contains(&p.get_id())) {
                        let _ = peer.send_message(UsersMsg::Merge(update.clone()));
                    }
                    state.pushed_up_to = last.updated_at_ms;
                }
            }
        }
        Ok(())
    }
}
