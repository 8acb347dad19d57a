//! The auth actor: checks passwords, issues and verifies tokens, creates users, throttles
//! logins.
//!
//! argon2 runs on a blocking thread; its verdict comes back as [`AuthMsg::Checked`], so the
//! actor keeps answering (and token checks never wait behind a slow hash). The throttle's
//! counters live in this actor's state.
//!
//! Users live in the replicated metadata (`meta/users.rs`): every change is committed
//! through its log (refused with [`AuthError::Unavailable`] while no leader can be
//! reached), then written to this node's mirror of the users, which logins, quotas and
//! webhooks read. Token checks read the metadata's in-memory view (`http/auth.rs`); this
//! actor's [`AuthMsg::Verify`] is the path for users the view does not know yet.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::auth::jwt::TokenError;
use crate::auth::limiter::LoginLimiter;
use crate::auth::{Principal, normalize_email, password};
use crate::config::Config;
use crate::meta::users::{Refusal, UserOp};
use crate::meta::{Meta, MetaError};
use crate::store::{Db, Quota, StoreError, User, WebhookSettings};

/// Why an auth request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password (deliberately not telling which).
    #[error("invalid credentials")]
    BadCredentials,
    /// Too many attempts: wait this long.
    #[error("too many login attempts; retry in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// The token is expired or invalid.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The request is malformed (bad email, weak password).
    #[error("{0}")]
    Invalid(String),
    /// The user exists already.
    #[error("a user with this email exists")]
    Exists,
    /// No such user.
    #[error("no such user")]
    NoSuchUser,
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The replicated metadata cannot be written now (no leader reachable): retry.
    #[error("{0}")]
    Unavailable(#[from] MetaError),
}

impl From<Refusal> for AuthError {
    fn from(r: Refusal) -> AuthError {
        match r {
            Refusal::Exists => AuthError::Exists,
            Refusal::NoSuchUser => AuthError::NoSuchUser,
        }
    }
}

/// Commits `op` on user `email` through the metadata log, writes the user as it is now
/// into this node's mirror (so this node reads its own change at once), and waits for the
/// other members to apply it ([`Meta::applied_everywhere`]).
async fn commit(meta: &Meta, db: &Db, email: &str, op: UserOp) -> Result<User, AuthError> {
    if meta.users().get(email).is_none() {
        // Made here but still queued for the log (the first admin, `mp4tomp3 user add`
        // moments ago): committed first, so this change finds it.
        crate::meta::users::commit_queued(meta, db, Some(email)).await;
    }
    let user = meta.change_user(email, op).await??;
    let (mirrored, view) = (user.clone(), meta.users());
    db.run(move |s| s.mirror_user(&view.latest(mirrored))).await?;
    // Acknowledged once every reachable member has applied it: a revoked token is then
    // refused by every pod that can be reached.
    let behind = meta.applied_everywhere().await;
    if !behind.is_empty() {
        tracing::info!(%email, ?behind, "a user change is acknowledged before these members applied it");
    }
    Ok(user)
}

/// A freshly issued access token.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The JWT.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// The auth actor's messages.
pub enum AuthMsg {
    /// Log in with email and password from `client`.
    Login {
        /// The email as typed.
        email: String,
        /// The password.
        password: String,
        /// The client's address, for the rate limit.
        client: IpAddr,
        /// The token, or why not.
        reply: RpcReplyPort<Result<Issued, AuthError>>,
    },
    /// The blocking password check finished (sent by the actor to itself).
    Checked {
        /// The normalized email.
        email: String,
        /// The user and their token generation, if the password matched.
        user: Option<(Principal, i64)>,
        /// Where the login's answer goes.
        reply: RpcReplyPort<Result<Issued, AuthError>>,
    },
    /// Verify an access token.
    Verify {
        /// The JWT.
        token: String,
        /// Who it names.
        reply: RpcReplyPort<Result<Principal, AuthError>>,
    },
    /// Sign out the session of an access token: its tokens stop working on every node (the
    /// user's other sessions and keys go on).
    SignOut {
        /// The session's token.
        token: String,
        /// Done, or why not.
        reply: RpcReplyPort<Result<(), AuthError>>,
    },
    /// Remove a user (admins only; the gateway checks): their tokens stop working on every
    /// node, and every node deletes their jobs (`request/storage.rs`).
    RemoveUser {
        /// Email.
        email: String,
        /// Done, or why not.
        reply: RpcReplyPort<Result<(), AuthError>>,
    },
    /// Set a user's new password (the gateway has checked the current one with a login):
    /// their other tokens stop working on every node; a token under the new generation.
    SetPassword {
        /// The (normalized) email.
        email: String,
        /// The new password.
        password: String,
        /// A token that works after the change, or why not.
        reply: RpcReplyPort<Result<Issued, AuthError>>,
    },
    /// Read or change a user's webhook settings.
    Webhook {
        /// The (normalized) email.
        email: String,
        /// What to do.
        change: WebhookChange,
        /// The settings after it, and a signing secret made by it (shown once), or why not.
        reply: RpcReplyPort<Result<(WebhookSettings, Option<String>), AuthError>>,
    },
    /// Every live user: email and admin flag.
    ListUsers {
        /// The users, by email.
        reply: RpcReplyPort<Result<Vec<(String, bool)>, AuthError>>,
    },
    /// Make a user an admin or not (admins only; the gateway checks): their tokens stop
    /// working on every node.
    SetAdmin {
        /// The email.
        email: String,
        /// Admin or not.
        admin: bool,
        /// Done, or why not.
        reply: RpcReplyPort<Result<(), AuthError>>,
    },
    /// Read a user's own limits, or set them first (admins only; the gateway checks).
    Quota {
        /// The email.
        email: String,
        /// New limits (unset ones: the defaults), or `None` to read.
        set: Option<Quota>,
        /// The user's limits as set (unset: the defaults) and whether they are an admin.
        reply: RpcReplyPort<Result<(Quota, bool), AuthError>>,
    },
    /// Create a user (admins only; the gateway checks).
    CreateUser {
        /// Email.
        email: String,
        /// Password.
        password: String,
        /// Admin flag.
        admin: bool,
        /// The normalized email, or why not.
        reply: RpcReplyPort<Result<String, AuthError>>,
    },
}

impl ractor::Message for AuthMsg {}

/// What [`AuthMsg::Webhook`] does.
#[derive(Debug, Clone)]
pub enum WebhookChange {
    /// Nothing: read them.
    Get,
    /// Set the default URL and events (a signing secret is made if there is none).
    Set {
        /// The URL (checked by the gateway).
        url: String,
        /// The events (checked by the gateway).
        events: Vec<String>,
    },
    /// Remove the default URL (the secret stays, for jobs that name their own URL).
    Remove,
    /// Replace the signing secret (or make the first one).
    RotateSecret,
}

/// An access token for `who` under token generation `generation`.
fn issue(config: &Config, who: &Principal, generation: i64) -> Issued {
    Issued {
        token: config.keys.issue_gen(who, generation, config.token_ttl),
        expires_in: config.token_ttl.as_secs(),
    }
}

/// The auth actor.
pub struct AuthActor;

/// Its state.
pub struct AuthState {
    config: Arc<Config>,
    db: Db,
    limiter: LoginLimiter,
    meta: Meta,
}

impl Actor for AuthActor {
    type Msg = AuthMsg;
    type State = AuthState;
    type Arguments = (Arc<Config>, Meta);

    async fn pre_start(
        &self,
        _myself: ActorRef<AuthMsg>,
        (config, meta): (Arc<Config>, Meta),
    ) -> Result<AuthState, ActorProcessingErr> {
        Ok(AuthState {
            db: Db::open(&config.db_path())?,
            limiter: LoginLimiter::new(config.login_per_minute, config.lockout_after, config.lockout_for),
            config,
            meta,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AuthMsg>,
        message: AuthMsg,
        state: &mut AuthState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AuthMsg::Login {
                email,
                password,
                client,
                reply,
            } => {
                let account = normalize_email(&email).unwrap_or_else(|| email.trim().to_ascii_lowercase());
                if let Err(wait) = state.limiter.check(client, &account) {
                    let _ = reply.send(Err(AuthError::Throttled(wait)));
                    return Ok(());
                }
                let lookup = account.clone();
                let user = match state.db.run(move |s| s.user(&lookup)).await {
                    Ok(user) => user,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        return Ok(());
                    }
                };
                tokio::spawn(async move {
                    let checked = tokio::task::spawn_blocking(move || {
                        let hash = user
                            .as_ref()
                            .map_or(password::dummy_hash(), |u| u.password_hash.as_str());
                        let ok = password::verify(&password, hash);
                        user.filter(|_| ok).map(|u| {
                            let who = Principal {
                                email: u.email,
                                admin: u.is_admin,
                            };
                            (who, u.token_gen)
                        })
                    })
                    .await
                    .unwrap_or(None);
                    let _ = myself.send_message(AuthMsg::Checked {
                        email: account,
                        user: checked,
                        reply,
                    });
                });
            }
            AuthMsg::Checked { email, user, reply } => {
                let answer = match user {
                    Some((who, generation)) => {
                        state.limiter.succeeded(&email);
                        Ok(issue(&state.config, &who, generation))
                    }
                    None => {
                        state.limiter.failed(&email);
                        Err(AuthError::BadCredentials)
                    }
                };
                let _ = reply.send(answer);
            }
            AuthMsg::Verify { token, reply } => {
                let verified = match state.config.keys.verify_gen(&token) {
                    Ok(verified) => verified,
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                        return Ok(());
                    }
                };
                // The signature is not enough: the user must still exist, under the token
                // generation the token was issued with, its session not signed out. The
                // metadata's in-memory view answers for every user it has (no task, no
                // database read).
                if let Some(user) = state.meta.users().get(&verified.who.email) {
                    let current = crate::meta::users::token_current(&user, verified.generation, &verified.sid);
                    let _ = reply.send(match current {
                        true => Ok(verified.who),
                        false => Err(AuthError::Token(TokenError::Revoked)),
                    });
                    return Ok(());
                }
                // A user the metadata does not have yet (made here before the group had a
                // leader): this node's database answers (off the actor).
                let db = state.db.clone();
                tokio::spawn(async move {
                    let email = verified.who.email.clone();
                    let answer = match db.run(move |s| s.user(&email)).await {
                        Ok(Some(user)) if user.token_gen == verified.generation && !user.signed_out(&verified.sid) => {
                            Ok(verified.who)
                        }
                        Ok(_) => Err(AuthError::Token(TokenError::Revoked)),
                        Err(e) => Err(e.into()),
                    };
                    let _ = reply.send(answer);
                });
            }
            AuthMsg::SignOut { token, reply } => {
                let answer = match state.config.keys.verify_gen(&token) {
                    // A token from before sessions had ids is left to expire.
                    Ok(v) if v.sid.is_empty() => Ok(()),
                    Ok(v) => {
                        let op = UserOp::SignOut {
                            sid: v.sid,
                            until_ms: v.expires_at_ms,
                        };
                        match commit(&state.meta, &state.db, &v.who.email, op).await {
                            // Removed meanwhile: its tokens stopped anyway.
                            Ok(_) | Err(AuthError::NoSuchUser) => Ok(()),
                            Err(e) => Err(e),
                        }
                    }
                    // Expired or not ours: nothing to revoke.
                    Err(_) => Ok(()),
                };
                let _ = reply.send(answer);
            }
            AuthMsg::RemoveUser { email, reply } => {
                let key = normalize_email(&email).unwrap_or_else(|| email.trim().to_ascii_lowercase());
                let (meta, db) = (state.meta.clone(), state.db.clone());
                tokio::spawn(async move {
                    let _ = reply.send(commit(&meta, &db, &key, UserOp::Remove).await.map(|_| ()));
                });
            }
            AuthMsg::SetPassword { email, password, reply } => {
                let (db, config, meta) = (state.db.clone(), state.config.clone(), state.meta.clone());
                tokio::spawn(async move {
                    let hashed = tokio::task::spawn_blocking(move || password::hash(&password)).await;
                    let answer = match hashed {
                        Ok(Ok(password_hash)) => commit(&meta, &db, &email, UserOp::SetPassword { password_hash })
                            .await
                            .map(|user| {
                                let who = Principal {
                                    email: user.email,
                                    admin: user.is_admin,
                                };
                                issue(&config, &who, user.token_gen)
                            }),
                        Ok(Err(e)) => Err(AuthError::Invalid(e.to_string())),
                        Err(e) => Err(AuthError::Invalid(e.to_string())),
                    };
                    let _ = reply.send(answer);
                });
            }
            AuthMsg::ListUsers { reply } => {
                let answer = state
                    .db
                    .run(|s| Ok(s.users()?.into_iter().map(|u| (u.email, u.is_admin)).collect()))
                    .await;
                let _ = reply.send(answer.map_err(AuthError::from));
            }
            AuthMsg::SetAdmin { email, admin, reply } => {
                let key = normalize_email(&email).unwrap_or_else(|| email.trim().to_ascii_lowercase());
                let (meta, db) = (state.meta.clone(), state.db.clone());
                tokio::spawn(async move {
                    let _ = reply.send(commit(&meta, &db, &key, UserOp::SetAdmin(admin)).await.map(|_| ()));
                });
            }
            AuthMsg::Quota { email, set, reply } => {
                let key = normalize_email(&email).unwrap_or_else(|| email.trim().to_ascii_lowercase());
                let (meta, db) = (state.meta.clone(), state.db.clone());
                tokio::spawn(async move {
                    let answer = match set {
                        Some(quota) => commit(&meta, &db, &key, UserOp::SetQuota(quota))
                            .await
                            .map(|u| (u.quota, u.is_admin)),
                        None => match db.run(move |s| s.user(&key)).await {
                            Ok(Some(u)) => Ok((u.quota, u.is_admin)),
                            Ok(None) => Err(AuthError::NoSuchUser),
                            Err(e) => Err(e.into()),
                        },
                    };
                    let _ = reply.send(answer);
                });
            }
            AuthMsg::Webhook { email, change, reply } => {
                let (meta, db) = (state.meta.clone(), state.db.clone());
                tokio::spawn(async move {
                    let _ = reply.send(webhook(&meta, &db, email, change).await);
                });
            }
            AuthMsg::CreateUser {
                email,
                password,
                admin,
                reply,
            } => {
                let Some(email) = normalize_email(&email) else {
                    let _ = reply.send(Err(AuthError::Invalid("not an email address".into())));
                    return Ok(());
                };
                let (meta, db) = (state.meta.clone(), state.db.clone());
                // Hash and store off the actor: hashing takes a while, storing is independent.
                tokio::spawn(async move {
                    let hashed = tokio::task::spawn_blocking(move || password::hash(&password)).await;
                    let answer = match hashed {
                        Ok(Ok(password_hash)) => {
                            let op = UserOp::Add { password_hash, admin };
                            commit(&meta, &db, &email, op).await.map(|u| u.email)
                        }
                        Ok(Err(e)) => Err(AuthError::Invalid(e.to_string())),
                        Err(e) => Err(AuthError::Invalid(e.to_string())),
                    };
                    let _ = reply.send(answer);
                });
            }
        }
        Ok(())
    }
}

/// Reads or changes `email`'s webhook settings; a secret made here is returned once.
async fn webhook(
    meta: &Meta,
    db: &Db,
    email: String,
    change: WebhookChange,
) -> Result<(WebhookSettings, Option<String>), AuthError> {
    let fresh = match change {
        WebhookChange::Set { .. } | WebhookChange::RotateSecret => Some(
            crate::actors::notifier::webhook::new_secret()
                .map_err(|e| AuthError::Invalid(format!("no randomness: {e}")))?,
        ),
        WebhookChange::Get | WebhookChange::Remove => None,
    };
    let op = match change {
        WebhookChange::Get => None,
        WebhookChange::Set { url, events } => Some(UserOp::SetWebhook {
            url: Some(url),
            events,
            secret_if_none: fresh.clone(),
        }),
        WebhookChange::Remove => Some(UserOp::SetWebhook {
            url: None,
            events: Vec::new(),
            secret_if_none: None,
        }),
        WebhookChange::RotateSecret => Some(UserOp::SetSecret(fresh.clone().unwrap_or_default())),
    };
    if let Some(op) = op {
        commit(meta, db, &email, op).await?;
    }
    let settings = db
        .run(move |s| s.webhook_settings(&email))
        .await?
        .ok_or(AuthError::NoSuchUser)?;
    // Shown only if it is the one stored now (a `Set` keeps an existing secret).
    let shown = fresh.filter(|f| settings.secret.as_ref() == Some(f));
    Ok((settings, shown))
}
