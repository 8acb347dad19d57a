//! `/v1/users/{email}/quota`: a user's limits and usage, cluster-wide (how they are
//! enforced: `actors/request/quota.rs`).

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::responses::{BadRequest, Forbidden, NotFound, TooLarge, Unauthorized, Unavailable};
use super::{ApiError, AppState, Authed, ErrorCode};
use crate::actors::auth::AuthMsg;
use crate::actors::request::client::JobsError;
use crate::actors::request::quota;
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::auth::Principal;
use crate::meta::{Admission, Command, Listed};
use crate::store::{JobId, Quota, Usage, now_ms};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show, set))
}

/// New limits for a user; a missing or `null` limit is the configured default.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"max_active": 5, "max_jobs_per_day": 100, "max_stored_bytes": 10000000000_i64}))]
struct QuotaRequest {
    /// Unfinished jobs (and resumable uploads) at once.
    #[schema(minimum = 0)]
    max_active: Option<i64>,
    /// Jobs created in any 24 hours.
    #[schema(minimum = 0)]
    max_jobs_per_day: Option<i64>,
    /// Bytes stored: inputs, MP3s and unfinished uploads.
    #[schema(minimum = 0)]
    max_stored_bytes: Option<i64>,
}

/// A user's limits and what they use, on every reachable node.
#[derive(Serialize, ToSchema)]
struct QuotaJson {
    /// The user.
    email: String,
    /// Admins have no limits.
    admin: bool,
    /// The limits that apply (the user's own, else the defaults).
    limits: Quota,
    /// The limits set for this user (`null`: the default applies).
    own: Quota,
    /// What the user uses now.
    usage: Usage,
}

async fn answer(state: &AppState, email: String, set: Option<Quota>) -> Result<QuotaJson, ApiError> {
    let key = email.clone();
    let (own, admin) = ask(
        Role::Auth,
        |reply| AuthMsg::Quota { email: key, set, reply },
        CALL_TIMEOUT,
    )
    .await??;
    let usage = quota::usage(&state.meta, &email).await?;
    Ok(QuotaJson {
        email: email.trim().to_ascii_lowercase(),
        admin,
        limits: if admin {
            Quota::default()
        } else {
            own.or(state.config.quota)
        },
        own,
        usage,
    })
}

fn may_see(who: &Principal, email: &str) -> Result<(), ApiError> {
    if who.admin || who.email.eq_ignore_ascii_case(email.trim()) {
        Ok(())
    } else {
        Err(ApiError::forbidden("only admins see other users' quotas"))
    }
}

/// A user's limits and usage (admins: anyone's; users: their own).
#[utoipa::path(get, path = "/v1/users/{email}/quota", tag = "auth", operation_id = "get_quota",
    security(("bearer" = [])),
    params(("email" = String, Path, description = "The user's email")),
    responses(
        (status = 200, description = "Limits and usage", body = QuotaJson),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ))]
async fn show(
    State(state): State<AppState>,
    Authed(who): Authed,
    Path(email): Path<String>,
) -> Result<Json<QuotaJson>, ApiError> {
    may_see(&who, &email)?;
    Ok(Json(answer(&state, email, None).await?))
}

/// Sets a user's limits (admins only); they apply on every node.
#[utoipa::path(put, path = "/v1/users/{email}/quota", tag = "auth", operation_id = "set_quota",
    security(("bearer" = [])),
    params(("email" = String, Path, description = "The user's email")),
    request_body = QuotaRequest,
    responses(
        (status = 200, description = "Limits and usage", body = QuotaJson),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = TooLarge),
        (status = 415, description = "Not JSON"),
        (status = 503, response = Unavailable),
    ))]
async fn set(
    State(state): State<AppState>,
    Authed(who): Authed,
    Path(email): Path<String>,
    body: Result<Json<QuotaRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<QuotaJson>, ApiError> {
    if !who.admin {
        return Err(ApiError::forbidden("only admins set quotas"));
    }
    let Json(body) = body.map_err(ApiError::json)?;
    let quota = Quota {
        max_active: body.max_active,
        max_jobs_per_day: body.max_jobs_per_day,
        max_stored_bytes: body.max_stored_bytes,
    };
    if [quota.max_active, quota.max_jobs_per_day, quota.max_stored_bytes]
        .iter()
        .flatten()
        .any(|n| *n < 0)
    {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "limits must not be negative"));
    }
    Ok(Json(answer(&state, email, Some(quota)).await?))
}

/// Refuses a new job (or upload) of `incoming` bytes over the caller's quota (`429`); else
/// the request's place among the caller's unfinished jobs, to hold until it is submitted. A
/// retry under a used Idempotency-Key never gets here ([`earlier_job`](super::jobs::earlier_job) answers it first).
pub(super) async fn within_quota(state: &AppState, who: &Principal, incoming: u64) -> Result<quota::Place, ApiError> {
    Ok(quota::check(&state.config, &state.meta, who, incoming).await?)
}

/// Admits job (or upload) `id` of `email` bringing `bytes` through the metadata log, with
/// `entry` (a job's first directory entry) in the same step: the quota is checked there
/// against the committed counters, so no node's request overshoots another's (`429`). No
/// leader within `WRITE_PATIENCE`: `503` with `Retry-After`, nothing admitted.
pub(super) async fn admit(
    state: &AppState,
    id: &JobId,
    email: &str,
    entry: Option<Listed>,
    bytes: i64,
) -> Result<(), ApiError> {
    match admit_as(state, id, email, entry, bytes, None).await? {
        Keyed::Admitted => Ok(()),
        Keyed::HeldBy(job) => Err(JobsError::Internal(format!("an unkeyed admission found key holder {job}")).into()),
    }
}

/// What a keyed admission ([`admit_keyed`]) found.
pub(super) enum Keyed {
    /// Admitted: the key is the job's.
    Admitted,
    /// Another job (or upload) holds the key: nothing was admitted.
    HeldBy(JobId),
}

/// [`admit`] with Idempotency-Key `key` claimed for `id` in the same log entry, taking over
/// a claim that `stale` (found gone) holds: a keyed submission is one commit.
pub(super) async fn admit_keyed(
    state: &AppState,
    id: &JobId,
    email: &str,
    entry: Option<Listed>,
    bytes: i64,
    key: &str,
    stale: Option<&JobId>,
) -> Result<Keyed, ApiError> {
    admit_as(state, id, email, entry, bytes, Some((key, stale))).await
}

async fn admit_as(
    state: &AppState,
    id: &JobId,
    email: &str,
    entry: Option<Listed>,
    bytes: i64,
    key: Option<(&str, Option<&JobId>)>,
) -> Result<Keyed, ApiError> {
    let limits = quota::admission_limits(&state.config, email).await?;
    let admission = Admission {
        id: id.to_string(),
        email: email.to_ascii_lowercase(),
        node: id.owner().to_string(),
        entry,
        bytes,
        limits,
        at_ms: now_ms(),
    };
    let answer = match key {
        None => state.meta.admit(Command::Admit(admission)).await.map(Ok),
        Some((key, stale)) => {
            let command = Command::KeyedAdmit {
                key: key.to_string(),
                stale: stale.map(JobId::to_string),
                admission,
            };
            state.meta.keyed_admit(command).await
        }
    };
    match answer {
        Ok(Ok(Ok(()))) => Ok(Keyed::Admitted),
        Ok(Ok(Err(over))) => Err(quota::refusal(&state.config, &limits.unwrap_or_default(), &over, bytes).into()),
        Ok(Err(held)) => JobId::parse(&held)
            .map(Keyed::HeldBy)
            .ok_or_else(|| JobsError::Internal(format!("unreadable claim {held:?}")).into()),
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "a new job or upload could not be admitted");
            Err(JobsError::Meta(e).into())
        }
    }
}
