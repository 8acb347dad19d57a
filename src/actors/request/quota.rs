//! Per-user quotas, cluster-wide: unfinished jobs at once, jobs per 24 hours, bytes stored.
//!
//! A user's limits are replicated with the user (`auth`), defaults come from the config,
//! and admins have none. The counters are in the replicated metadata (`meta::quota`): a
//! new job or resumable upload is admitted by a log entry that checks them, so requests
//! on every node are checked one after another against the same counts (no overshoot by
//! the number of nodes, a pod that is away still counted). What passes a limit gets
//! `429 quota_exceeded`, naming the limit, with `Retry-After` for when it frees.
//!
//! Before that, a request is checked early against this node's replica of the counters
//! and this node's requests in flight (so a body is not received only to be refused): a
//! request that passed holds a [`Place`] (counted as unfinished, with the bytes it
//! announced, and held to `max_stored_bytes` as a body of unknown length arrives) until it
//! has become a job or ended; one user's early checks on a node run one at a time. A
//! request admitted and not yet answered counts twice in that early check for a moment
//! (its place and its committed row): the admission decides, the early check only spares
//! uploads that cannot fit.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use super::jobs::{self, Status};
use super::{JobError, RequestMsg};
use crate::actors::auth::{AuthError, AuthMsg};
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::auth::Principal;
use crate::config::Config;
use crate::meta::Meta;
use crate::meta::quota::Over;
use crate::store::{Quota, Usage, now_ms};

const DAY_MS: i64 = 24 * 3600 * 1000;
/// `Retry-After` of the unfinished-jobs limit (one of them has to end; we cannot know when).
const ACTIVE_RETRY: Duration = Duration::from_secs(30);

/// Why a request is refused.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// Over a limit.
    #[error("{message}")]
    Exceeded {
        /// Which limit (`max_active`, `max_jobs_per_day`, `max_stored_bytes`).
        limit: &'static str,
        /// What to tell the user.
        message: String,
        /// When it frees.
        retry_after: Duration,
    },
    /// The usage or the limits could not be read.
    #[error("{0}")]
    Failed(String),
}

/// What a user uses on one node, asked by another.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UsageQuery {
    /// The user.
    #[prost(string, tag = "1")]
    pub email: String,
    /// The start of the last 24 hours.
    #[prost(int64, tag = "2")]
    pub since_ms: i64,
}

/// One node's answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UsageAnswer {
    /// A [`Status`].
    #[prost(enumeration = "Status", tag = "1")]
    pub status: i32,
    /// Unfinished jobs and uploads.
    #[prost(int64, tag = "2")]
    pub active: i64,
    /// Jobs in the last 24 hours.
    #[prost(int64, tag = "3")]
    pub jobs_today: i64,
    /// The oldest of them.
    #[prost(int64, optional, tag = "4")]
    pub oldest_today_ms: Option<i64>,
    /// Bytes stored.
    #[prost(int64, tag = "5")]
    pub stored_bytes: i64,
    /// When the first ended job ended.
    #[prost(int64, optional, tag = "6")]
    pub first_end_ms: Option<i64>,
}

ractor_cluster::derive_serialization_for_prost_type! {UsageQuery}
ractor_cluster::derive_serialization_for_prost_type! {UsageAnswer}

async fn local(email: String, since_ms: i64) -> Result<Usage, JobError> {
    Ok(local_counting(email, since_ms).await?.0)
}

/// This node's usage for `email`, and the bytes of its requests in flight counted in it.
async fn local_counting(email: String, since_ms: i64) -> Result<(Usage, i64), JobError> {
    let (requests, bytes) = in_flight(&email);
    let stored = jobs::request(|reply| RequestMsg::Usage { email, since_ms, reply }).await?;
    let usage = Usage {
        active: stored.active + requests,
        stored_bytes: stored.stored_bytes + bytes,
        ..stored
    };
    Ok((usage, bytes))
}

/// Requests on this node that passed the quota check and are not jobs yet, per user:
/// how many, and the bytes they announced.
static IN_FLIGHT: LazyLock<Mutex<HashMap<String, (i64, i64)>>> = LazyLock::new(Mutex::default);
/// One user's checks on this node run one at a time, so each sees the places of those
/// before it.
static CHECKING: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = LazyLock::new(Mutex::default);

fn in_flight(email: &str) -> (i64, i64) {
    let key = email.to_ascii_lowercase();
    IN_FLIGHT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .copied()
        .unwrap_or((0, 0))
}

/// A request's place among its user's unfinished jobs while it is read and submitted (an
/// admin's counts nothing); given back when dropped, by which time the job counts itself.
#[derive(Debug)]
pub struct Place {
    held: Option<(String, i64)>,
    /// `max_stored_bytes`, what the user stored (cluster-wide, less this node's requests in
    /// flight) when the place was taken, and when room frees: a body of unknown length is
    /// held to it as it arrives ([`Place::grow`]).
    stored_limit: Option<(i64, i64, Duration)>,
}

impl Place {
    /// A place that counts nothing (a request that makes no job).
    pub fn none() -> Place {
        Place {
            held: None,
            stored_limit: None,
        }
    }

    fn take(email: &str, bytes: i64) -> Place {
        let key = email.to_ascii_lowercase();
        let mut all = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        let counts = all.entry(key.clone()).or_insert((0, 0));
        counts.0 += 1;
        counts.1 += bytes;
        Place {
            held: Some((key, bytes)),
            stored_limit: None,
        }
    }

    /// The request's body has reached `received` bytes: what passes the bytes counted when
    /// the place was taken (a chunked body counts 0 then) counts from now on, and a body
    /// that would take the user past `max_stored_bytes`, with what this user's other
    /// requests on this node are sending, is refused.
    pub fn grow(&mut self, received: u64) -> Result<(), QuotaError> {
        let Some((key, held)) = self.held.as_mut() else {
            return Ok(());
        };
        let received = i64::try_from(received).unwrap_or(i64::MAX);
        if received <= *held {
            return Ok(());
        }
        let in_flight = {
            let mut all = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
            let counts = all.entry(key.clone()).or_insert((0, 0));
            counts.1 += received - *held;
            counts.1
        };
        *held = received;
        match self.stored_limit {
            Some((max, stored, retry_after)) if stored.saturating_add(in_flight) > max => Err(QuotaError::Exceeded {
                limit: "max_stored_bytes",
                message: format!(
                    "max_stored_bytes: you store {stored} bytes and your uploads in progress add {in_flight}, \
                         the most allowed is {max}; delete jobs you no longer need, or wait until old ones expire"
                ),
                retry_after,
            }),
            _ => Ok(()),
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some((key, bytes)) = self.held.take() {
            let mut all = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(counts) = all.get_mut(&key) {
                counts.0 -= 1;
                counts.1 -= bytes;
                if counts.0 <= 0 {
                    all.remove(&key);
                }
            }
        }
    }
}

/// Answers another node's [`UsageQuery`] (the jobs actor).
pub async fn answer(q: UsageQuery) -> UsageAnswer {
    match local(q.email, q.since_ms).await {
        Ok(u) => UsageAnswer {
            status: Status::Ok.into(),
            active: u.active,
            jobs_today: u.jobs_today,
            oldest_today_ms: u.oldest_today_ms,
            stored_bytes: u.stored_bytes,
            first_end_ms: u.first_end_ms,
        },
        Err(e) => UsageAnswer {
            status: jobs::code(&e).into(),
            ..UsageAnswer::default()
        },
    }
}

/// What `email` uses: the committed counters (read index first), and this
/// node's requests in flight.
pub async fn usage(meta: &Meta, email: &str) -> Result<Usage, QuotaError> {
    // Fresh: after the read index, this replica has applied every admission acknowledged
    // anywhere before (a user who was just admitted on another node sees it counted).
    if let Err(e) = meta.fresh().await {
        tracing::debug!(error = %e, "usage as this replica has it");
    }
    Ok(usage_counting(meta, email).await?.0)
}

/// [`usage`], and the bytes of this node's requests in flight counted in it.
async fn usage_counting(meta: &Meta, email: &str) -> Result<(Usage, i64), QuotaError> {
    let used: Usage = meta
        .used(email)
        .await
        .map_err(|e| QuotaError::Failed(e.to_string()))?
        .into();
    let (requests, bytes) = in_flight(email);
    let usage = Usage {
        active: used.active + requests,
        stored_bytes: used.stored_bytes + bytes,
        ..used
    };
    Ok((usage, bytes))
}

/// The limits a new job or upload of `email` is admitted under: `None` for an admin or a
/// user without limits.
pub async fn admission_limits(config: &Config, email: &str) -> Result<Option<Quota>, QuotaError> {
    let (_, limits, admin) = limits(config, email)
        .await
        .map_err(|e| QuotaError::Failed(e.to_string()))?;
    Ok((!admin && limits != Quota::default()).then_some(limits))
}

/// The refusal the log's admission gave ([`Over`]), in words, for `incoming` bytes.
pub fn refusal(config: &Config, limits: &Quota, over: &Over, incoming: i64) -> QuotaError {
    let incoming = u64::try_from(incoming).unwrap_or(0);
    exceeded(config.retention, limits, &over.used.into(), incoming).unwrap_or_else(|| QuotaError::Exceeded {
        limit: match over.limit.as_str() {
            "max_jobs_per_day" => "max_jobs_per_day",
            "max_stored_bytes" => "max_stored_bytes",
            _ => "max_active",
        },
        message: format!("{}: over your limit", over.limit),
        retry_after: ACTIVE_RETRY,
    })
}

/// A user's limits: their own (unset: the defaults), and whether they are an admin.
pub async fn limits(config: &Config, email: &str) -> Result<(Quota, Quota, bool), AuthError> {
    let email = email.to_string();
    let (own, admin) = ask(
        Role::Auth,
        |reply| AuthMsg::Quota {
            email,
            set: None,
            reply,
        },
        CALL_TIMEOUT,
    )
    .await
    .map_err(|e| AuthError::Invalid(format!("the auth role did not answer: {e}")))??;
    Ok((own, own.or(config.quota), admin))
}

fn retry_at(at_ms: i64) -> Duration {
    Duration::from_millis((at_ms - now_ms()).max(1000) as u64)
}

/// Refuses a new job (or upload) of `incoming` bytes that would take `who` past a limit;
/// else its [`Place`], to hold until the job is submitted (or the request ends).
pub async fn check(config: &Config, meta: &Meta, who: &Principal, incoming: u64) -> Result<Place, QuotaError> {
    let free = Place::none();
    if who.admin {
        return Ok(free);
    }
    let (_, limits, admin) = limits(config, &who.email)
        .await
        .map_err(|e| QuotaError::Failed(e.to_string()))?;
    if admin || limits == Quota::default() {
        return Ok(free);
    }
    let turn = CHECKING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(who.email.to_ascii_lowercase())
        .or_default()
        .clone();
    let _turn = turn.lock().await;
    // (`here`: the in-flight bytes counted in `u`, read once, so the stored base below is
    // exact even while other requests' bodies grow.)
    let (u, here) = usage_counting(meta, &who.email).await?;
    if let Some(e) = exceeded(config.retention, &limits, &u, incoming) {
        return Err(e);
    }
    let mut place = Place::take(&who.email, i64::try_from(incoming).unwrap_or(i64::MAX));
    place.stored_limit = limits
        .max_stored_bytes
        .map(|max| (max, u.stored_bytes - here, stored_retry(config.retention, &u)));
    Ok(place)
}

/// When stored bytes free: when the first ended job expires (else in an hour).
fn stored_retry(retention: Duration, u: &Usage) -> Duration {
    let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    match u.first_end_ms {
        Some(ended) => retry_at(ended.saturating_add(retention)),
        None => Duration::from_secs(3600),
    }
}

/// The first limit that one more job of `incoming` bytes would pass.
fn exceeded(retention: Duration, limits: &Quota, u: &Usage, incoming: u64) -> Option<QuotaError> {
    let incoming = i64::try_from(incoming).unwrap_or(i64::MAX);
    let over = limits.first_over(u, incoming)?;
    if let (Some(max), "max_active") = (limits.max_active, over) {
        return Some(QuotaError::Exceeded {
            limit: "max_active",
            message: format!(
                "max_active: you have {} unfinished jobs and uploads, the most allowed at once is {max}; \
                 try again when one has ended",
                u.active
            ),
            retry_after: ACTIVE_RETRY,
        });
    }
    if let (Some(max), "max_jobs_per_day") = (limits.max_jobs_per_day, over) {
        let retry_after = retry_at(u.oldest_today_ms.unwrap_or_else(now_ms) + DAY_MS);
        return Some(QuotaError::Exceeded {
            limit: "max_jobs_per_day",
            message: format!(
                "max_jobs_per_day: you created {} jobs in the last 24 hours, the most allowed is {max}; \
                 the next one is possible in {} s",
                u.jobs_today,
                retry_after.as_secs()
            ),
            retry_after,
        });
    }
    if let (Some(max), "max_stored_bytes") = (limits.max_stored_bytes, over) {
        let retry_after = stored_retry(retention, u);
        return Some(QuotaError::Exceeded {
            limit: "max_stored_bytes",
            message: format!(
                "max_stored_bytes: you store {} bytes and this adds {incoming}, the most allowed is {max}; \
                 delete jobs you no longer need, or wait until old ones expire",
                u.stored_bytes
            ),
            retry_after,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_names_itself_and_when_it_frees() {
        let retention = Duration::from_secs(7 * 86400);
        let limits = Quota {
            max_active: Some(2),
            max_jobs_per_day: Some(5),
            max_stored_bytes: Some(1000),
        };
        let fine = Usage {
            active: 1,
            jobs_today: 4,
            oldest_today_ms: Some(now_ms() - 3_600_000),
            stored_bytes: 400,
            first_end_ms: Some(now_ms() - 1000),
        };
        assert!(
            exceeded(retention, &limits, &fine, 600).is_none(),
            "exactly at the limit is fine"
        );
        let limit = |u: Usage, incoming| match exceeded(retention, &limits, &u, incoming) {
            Some(QuotaError::Exceeded { limit, retry_after, .. }) => (limit, retry_after.as_secs()),
            other => panic!("{other:?}"),
        };
        assert_eq!(limit(Usage { active: 2, ..fine }, 0), ("max_active", 30));
        // The day's oldest job was an hour ago: 23 hours to wait.
        let (name, secs) = limit(Usage { jobs_today: 5, ..fine }, 0);
        assert_eq!(name, "max_jobs_per_day");
        assert!((23 * 3600 - 5..=23 * 3600).contains(&secs), "{secs}");
        // Bytes free when the first ended job expires (retention after it ended).
        let (name, secs) = limit(fine, 601);
        assert_eq!(name, "max_stored_bytes");
        let days = retention.as_secs();
        assert!((days - 5..=days).contains(&secs), "{secs}");
        let unlimited = Quota::default();
        assert!(
            exceeded(
                retention,
                &unlimited,
                &Usage {
                    active: 99,
                    jobs_today: 99,
                    ..fine
                },
                u64::MAX
            )
            .is_none()
        );
    }
}
