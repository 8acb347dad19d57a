//! `/v1/jobs`: submit (multipart upload or JSON URL import), list, status, cancel/delete.
//! The seed's `POST /upload` reuses [`submit`].

use axum::Json;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::multipart::{self, MultipartForm};
use super::quota::Keyed;
use super::responses::{
    BadRequest, Forbidden, InsufficientStorage, NotFound, QuotaExceeded, TooLarge, Unauthorized, Unavailable,
    Unprocessable, UnsupportedMediaType,
};
use super::{ApiError, AppState, Authed, ErrorCode};
use std::time::Duration;

use crate::actors::request::client::JobsError;
use crate::actors::request::resumable::appender::AppendError;
use crate::actors::request::resumable::client::ResumableError;
use crate::actors::request::{JobError, RequestMsg};
use crate::actors::{CALL_TIMEOUT, Role, ask};
use crate::auth::Principal;
use crate::convert::Quality;
use crate::meta::Listed;
use crate::store::{Job, JobId, NewJob, Source, StagedInput, now_ms};
use crate::view::JobJson;

/// Longest accepted `Idempotency-Key`.
pub(super) const MAX_IDEMPOTENCY_KEY: usize = 200;
/// Largest page of `GET /v1/jobs`.
const MAX_PAGE: u32 = 100;

pub(super) fn router() -> OpenApiRouter<AppState> {
    // Uploads stream past the JSON cap (and are bounded by --max-upload-bytes instead).
    let (schemas, paths, methods) = routes!(create, list);
    OpenApiRouter::new()
        .routes((schemas, paths, methods.layer(DefaultBodyLimit::disable())))
        .routes(routes!(status, remove))
}

/// Parses the optional bitrate / VBR settings (from form fields or JSON).
pub(super) fn quality(bitrate: Option<u16>, vbr: Option<u8>) -> Result<(Option<u16>, Option<u8>), ApiError> {
    let chosen = match (bitrate, vbr) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidSettings,
                "give either bitrate or vbr, not both",
            ));
        }
        (Some(kbps), None) => Some(Quality::Cbr { kbps }),
        (None, Some(quality)) => Some(Quality::Vbr { quality }),
        (None, None) => None,
    };
    if let Some(q) = chosen {
        q.validate()
            .map_err(|e| ApiError::new(ErrorCode::InvalidSettings, e.to_string()))?;
    }
    Ok((bitrate, vbr))
}

pub(super) fn parse_field<T: std::str::FromStr>(name: &str, value: Option<String>) -> Result<Option<T>, ApiError> {
    value
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| ApiError::new(ErrorCode::InvalidSettings, format!("{name} must be a number")))
        })
        .transpose()
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "Idempotency-Key must be 1-200 visible characters",
            )
        })?;
    Ok(Some(key.to_string()))
}

/// The job `who` already submitted with Idempotency-Key `key`, on whichever node.
///
/// One rule for every route that creates a job (multipart, JSON import, tus creation): a
/// request is first checked for its form (what the document's schema says: settings, the
/// syntax of URLs), then its key is looked up, and a retry answers the earlier job (`200`)
/// before anything about the world is checked (where a URL leads, room, quota). This look
/// reads this node's replica of the claims (it may be a moment behind); the claim
/// committed at submission ([`claim_and_admit`]) decides.
pub(super) async fn earlier_job(state: &AppState, who: &Principal, key: Option<&str>) -> Result<Option<Job>, ApiError> {
    let Some(key) = key else {
        return Ok(None);
    };
    let (email, k) = (who.email.clone(), key.to_string());
    let here = ask(
        Role::Request,
        |reply| RequestMsg::Keyed { email, key: k, reply },
        CALL_TIMEOUT,
    )
    .await??;
    if here.is_some() {
        return Ok(here);
    }
    let Some(held) = state.jobs.claimed(&who.email, key).await? else {
        return Ok(None);
    };
    match state.jobs.get(held, who.clone()).await {
        Ok(job) => Ok(Some(job)),
        // Not a job (yet): an upload in progress, or a claim about to be taken over.
        Err(_) => Ok(None),
    }
}

/// How long a claim's job may take to appear before the claim counts as left behind.
const CLAIM_PATIENCE: Duration = Duration::from_secs(3);

/// What holds an Idempotency-Key.
pub(super) enum Holder {
    /// The caller's own job or upload `id`: go on.
    Mine,
    /// An earlier job.
    Job(Box<Job>),
    /// A resumable upload not finished yet.
    Upload(JobId),
}

/// Claims `key` of `who` for job (or upload) `id` and admits `id` (its quota, `entry` in
/// the directory), in one metadata log entry, before anything is accepted
/// ([`super::quota::admit_keyed`]): a claim that loses admits nothing and answers what holds
/// the key. A holder that is neither a job nor an upload once [`CLAIM_PATIENCE`] has passed
/// (deleted, expired, a submission that failed before its release) is taken over. Without
/// a key, `id` is only admitted.
pub(super) async fn claim_and_admit(
    state: &AppState,
    who: &Principal,
    key: Option<&str>,
    id: &JobId,
    entry: Option<Listed>,
    bytes: i64,
) -> Result<Holder, ApiError> {
    let Some(key) = key else {
        return super::quota::admit(state, id, &who.email, entry, bytes)
            .await
            .map(|()| Holder::Mine);
    };
    let mut stale: Option<JobId> = None;
    loop {
        let admitted =
            super::quota::admit_keyed(state, id, &who.email, entry.clone(), bytes, key, stale.as_ref()).await?;
        let held = match admitted {
            Keyed::Admitted => return Ok(Holder::Mine),
            Keyed::HeldBy(held) => held,
        };
        let deadline = tokio::time::Instant::now() + CLAIM_PATIENCE;
        loop {
            match state.jobs.get(held.clone(), who.clone()).await {
                Ok(job) => return Ok(Holder::Job(Box::new(job))),
                Err(JobsError::Job(JobError::NotFound)) => {}
                Err(e) => return Err(e.into()),
            }
            match state.resumable.state(held.clone(), who.clone()).await {
                Ok(_) => return Ok(Holder::Upload(held)),
                Err(ResumableError::Append(AppendError::Job(JobError::NotFound))) => {}
                Err(e) => return Err(e.into()),
            }
            if tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if stale.as_ref() == Some(&held) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this Idempotency-Key is held by a submission that cannot be found; use another key",
            ));
        }
        stale = Some(held);
    }
}

/// The answer to a retry: the earlier job, `200`.
pub(super) fn retry_answer(job: &Job) -> Response {
    (
        StatusCode::OK,
        [("location", format!("/v1/jobs/{}", job.id))],
        Json(JobJson::from(job)),
    )
        .into_response()
}

/// Hands a job (and its staged upload) to the request actor: `202` for a new job, `200`
/// for an idempotent retry (whichever node holds the earlier job).
pub(super) async fn submit(state: &AppState, job: NewJob, staged: Option<StagedInput>) -> Result<Response, ApiError> {
    // On a task of its own: a client that goes away (or times out) while its job is being
    // admitted does not cancel the rest half-way, which would leave the admission (a
    // directory entry, a quota count) of a job never made. It is made, or taken back.
    let state = state.clone();
    tokio::spawn(async move { submit_whole(&state, job, staged).await })
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("a submission's task ended: {e}"))))
}

async fn submit_whole(state: &AppState, job: NewJob, staged: Option<StagedInput>) -> Result<Response, ApiError> {
    // What is not accepted is not kept: `staged` deletes its file unless a job adopts it.
    let owner = Principal {
        email: job.owner_email.clone(),
        admin: false,
    };
    let key = job.idempotency_key.clone();
    // Admitted and in the directory before it exists, in one log entry (with its key's
    // claim): the quota is checked against the committed counters (`429`), and once the
    // client hears `202` every node answers for the job even if this one is lost a moment
    // later. With no quorum (this node is cut off, or the group has lost its majority)
    // nothing is created: `503`, and the client retries (through the Service, likely
    // elsewhere) with the same key.
    let id = job.id.clone();
    let bytes = match &staged {
        Some(staged) => tokio::fs::metadata(staged.path())
            .await
            .map_or(0, |m| i64::try_from(m.len()).unwrap_or(i64::MAX)),
        None => 0,
    };
    let entry = crate::actors::request::directory::listed(&job.queued(now_ms()), key.clone());
    match claim_and_admit(state, &owner, key.as_deref(), &id, Some(entry), bytes).await {
        Ok(Holder::Mine) => {}
        Ok(Holder::Job(earlier)) => return Ok(retry_answer(&earlier)),
        Ok(Holder::Upload(id)) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("this Idempotency-Key belongs to upload {id}, not finished yet"),
            ));
        }
        Err(e) => {
            // A write that timed out may still commit: take it back (compare-and-delete).
            state.jobs.forget(id, owner.email, key);
            return Err(e);
        }
    }
    let submitted = ask(
        Role::Request,
        |reply| RequestMsg::Submit { job, staged, reply },
        CALL_TIMEOUT,
    )
    .await
    .map_err(ApiError::from)
    .and_then(|answer| answer.map_err(ApiError::from));
    let (job, new) = match submitted {
        // An earlier job of the key, found here: the entry announced for `id` goes.
        Ok((job, new)) if job.id != id => {
            state.jobs.forget(id, owner.email, None);
            (job, new)
        }
        Ok(answer) => answer,
        Err(e) => {
            state.jobs.forget(id, owner.email, key);
            return Err(e);
        }
    };
    let status = if new { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((
        status,
        [("location", format!("/v1/jobs/{}", job.id))],
        Json(JobJson::from(&job)),
    )
        .into_response())
}

/// Puts a job that a resumable upload just became in the directory before the client hears
/// of it (jobs submitted otherwise are listed by their admission, [`super::quota::admit`]):
/// any node answers for the job even if its node is lost a moment later. Best effort: the
/// upload was admitted at its creation, so a failure here refuses nothing, and the change
/// feed publishes the job once a leader is back.
pub(super) async fn announce(state: &AppState, job: &Job, key: Option<String>) -> Result<(), crate::meta::MetaError> {
    let listed = crate::actors::request::directory::listed(job, key);
    let publish = crate::meta::Command::Publish {
        node: job.id.owner().to_string(),
        put: vec![listed],
        gone: Vec::new(),
        only_new: true,
    };
    match state.meta.write(publish).await {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "the new job is not in the directory yet");
            Err(e)
        }
    }
}

/// Submits an uploaded file for `who`.
pub(super) async fn submit_upload(
    state: &AppState,
    who: Principal,
    upload: MultipartForm,
    key: Option<String>,
    earlier: Option<Job>,
) -> Result<Response, ApiError> {
    let settings = parse_field::<u16>("bitrate", upload.bitrate.clone())
        .and_then(|b| Ok((b, parse_field::<u8>("vbr", upload.vbr.clone())?)))
        .and_then(|(b, v)| quality(b, v))
        .and_then(|s| webhook_syntax(state, upload.webhook_url.as_deref()).map(|()| s));
    if let (Ok(_), Some(job)) = (&settings, &earlier) {
        // A well-formed retry: the earlier job, this upload not kept.
        return Ok(retry_answer(job));
    }
    let settings = match settings {
        Ok(s) => webhook_url(state, &who.email, upload.webhook_url.as_deref())
            .await
            .map(|w| (s, w)),
        Err(e) => Err(e),
    };
    let ((bitrate, vbr), webhook_url) = settings?;
    let job = NewJob {
        id: JobId::new(&state.config.node_name),
        owner_email: who.email,
        source: Source::Upload,
        file_name: upload.file_name,
        bitrate_kbps: bitrate,
        vbr_quality: vbr,
        idempotency_key: key,
        webhook_url,
    };
    submit(state, job, Some(upload.input)).await
}

/// A job's own webhook URL, if any, is a URL we could call (its form only; [`webhook_url`]
/// checks where it leads).
pub(super) fn webhook_syntax(state: &AppState, raw: Option<&str>) -> Result<(), ApiError> {
    match raw.map(str::trim).filter(|u| !u.is_empty()) {
        Some(raw) => state
            .fetcher
            .parse(raw)
            .map(|_| ())
            .map_err(|e| super::webhooks::invalid_webhook(e.to_string())),
        None => Ok(()),
    }
}

/// A job's own webhook URL, checked; its owner must have a signing secret.
pub(super) async fn webhook_url(state: &AppState, email: &str, raw: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let url = super::webhooks::check_url(state, raw).await?;
    if !super::webhooks::has_secret(email.to_string()).await? {
        return Err(super::webhooks::invalid_webhook(
            "make a signing secret first (POST /v1/me/webhook/secret, or PUT /v1/me/webhook)",
        ));
    }
    Ok(Some(url))
}

/// A URL import.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"url": "https://media.example.org/talk.mp4", "bitrate": 192}))]
struct UrlJob {
    /// An `http` or `https` URL of an MP4/M4A/MOV file on a public address.
    #[schema(format = "uri")]
    url: String,
    /// The seed's way: the token in the body instead of the `Authorization` header.
    access_token: Option<String>,
    /// CBR bitrate in kbit/s, a standard MP3 bitrate (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256 or 320); not with `vbr`.
    #[schema(minimum = 32, maximum = 320)]
    bitrate: Option<u16>,
    /// VBR quality, 0 (best) to 9; not with `bitrate`.
    #[schema(minimum = 0, maximum = 9)]
    vbr: Option<u8>,
    /// Where this job's webhook events go (instead of the default of `PUT /v1/me/webhook`);
    /// needs a signing secret.
    #[schema(format = "uri")]
    webhook_url: Option<String>,
}

/// An upload: one file part (any field name) and optional settings.
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "describes the multipart body, which upload.rs reads as a stream"
)]
pub(super) struct UploadForm {
    /// The MP4/M4A/MOV file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// CBR bitrate in kbit/s, a standard MP3 bitrate (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256 or 320); not with `vbr`.
    #[schema(minimum = 32, maximum = 320)]
    bitrate: Option<u16>,
    /// VBR quality, 0 (best) to 9; not with `bitrate`.
    #[schema(minimum = 0, maximum = 9)]
    vbr: Option<u8>,
    /// Where this job's webhook events go (instead of the default of `PUT /v1/me/webhook`);
    /// needs a signing secret.
    #[schema(format = "uri")]
    webhook_url: Option<String>,
}

/// Submits a job: a multipart upload of one file, or a JSON URL import. With an
/// `Idempotency-Key`, a retry answers the job of the first request (`200`) on any node.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", operation_id = "create_job",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1–200 visible characters; one job per key and user")),
    request_body(content(
        (UploadForm = "multipart/form-data"),
        (UrlJob = "application/json"),
    )),
    responses(
        (status = 202, description = "Accepted: a new job", body = JobJson,
            headers(("Location" = String, description = "The job's URL")),
            links(
                ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")))),
                ("GetMp3" = (operation_id = "get_mp3", parameters(("id" = "$response.body#/id")))),
                ("DeleteJob" = (operation_id = "delete_job", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 200, description = "The job an earlier request with this Idempotency-Key made", body = JobJson,
            headers(("Location" = String, description = "The job's URL")),
            links(
                ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")))),
                ("GetMp3" = (operation_id = "get_mp3", parameters(("id" = "$response.body#/id")))),
                ("DeleteJob" = (operation_id = "delete_job", parameters(("id" = "$response.body#/id")))),
            )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = TooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = QuotaExceeded),
        (status = 503, response = Unavailable),
        (status = 507, response = InsufficientStorage),
    ))]

async fn create(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let key = idempotency_key(&headers)?;
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (parts, body) = request.into_parts();
    // A Bearer token or the web session (checked before any body is read).
    let header_who = match super::session::caller(&state, &parts).await {
        Ok(who) => Some(who),
        Err(e) if e.code == ErrorCode::MissingCredentials => None,
        Err(e) => return Err(e),
    };
    if content_type.starts_with("multipart/form-data") {
        let who = header_who.ok_or_else(ApiError::missing_credentials)?;
        // A retry's body is read (and checked for its form) but needs no room or quota.
        let earlier = earlier_job(&state, &who, key.as_deref()).await?;
        let (multipart, mut place) =
            multipart::open(Request::from_parts(parts, body), &state, &who, earlier.is_none()).await?;
        let one_file = ApiError::new(ErrorCode::InvalidRequest, "exactly 1 file required");
        let upload = multipart::receive(multipart, &state.config, one_file, &mut place).await?;
        submit_upload(&state, who, upload, key, earlier).await
    } else if content_type.starts_with("application/json") {
        // The seed's download request may carry the token in the body; a header is checked
        // first, so a caller without one can only make us read MAX_JSON_BYTES.
        let who = header_who;
        let over = multipart::declared_length(&parts.headers).is_some_and(|n| n > super::MAX_JSON_BYTES as u64);
        let read = if over {
            None
        } else {
            let read = axum::body::to_bytes(body, super::MAX_JSON_BYTES);
            tokio::time::timeout(state.config.http_limits.header_timeout, read)
                .await
                .ok()
                .and_then(Result::ok)
        };
        let Some(bytes) = read else {
            // Without credentials in the header, a body we did not read has none either.
            return Err(if who.is_some() {
                ApiError::json_too_large()
            } else {
                ApiError::missing_credentials()
            });
        };
        let body: UrlJob = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("invalid JSON body: {e}")))?;
        let who = match who {
            Some(who) => who,
            None => {
                let token = body.access_token.as_deref().ok_or_else(ApiError::missing_credentials)?;
                super::verify(token).await?
            }
        };
        let (bitrate, vbr) = quality(body.bitrate, body.vbr)?;
        webhook_syntax(&state, body.webhook_url.as_deref())?;
        let url = state.fetcher.parse(&body.url)?;
        if let Some(job) = earlier_job(&state, &who, key.as_deref()).await? {
            return Ok(retry_answer(&job));
        }
        let webhook_url = webhook_url(&state, &who.email, body.webhook_url.as_deref()).await?;
        crate::actors::request::room_for(&state.config, 0).await?;
        let _place = super::quota::within_quota(&state, &who, 0).await?;
        // Refused addresses fail the request now; the fetch checks again (DNS may change).
        state.fetcher.check(&url).await?;
        let file_name = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|s| !s.is_empty())
            .unwrap_or("download.mp4")
            .to_string();
        let job = NewJob {
            id: JobId::new(&state.config.node_name),
            owner_email: who.email,
            source: Source::Url(url.to_string()),
            file_name,
            bitrate_kbps: bitrate,
            vbr_quality: vbr,
            idempotency_key: key,
            webhook_url,
        };
        submit(&state, job, None).await
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send multipart/form-data with one file, or application/json with a url",
        ))
    }
}

/// A page of jobs.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Jobs per page (1–100, default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// Jobs to skip (default 0).
    #[param(maximum = 2147483647)]
    offset: Option<u32>,
    /// Every user's jobs (admins only).
    all: Option<bool>,
}

/// The largest `offset` taken (what the document says).
const MAX_OFFSET: u32 = i32::MAX as u32;

/// A page of jobs, newest first.
#[derive(Serialize, ToSchema)]
struct JobPage {
    jobs: Vec<JobJson>,
    limit: u32,
    offset: u32,
    /// The `offset` of the next page, if there may be one.
    next_offset: Option<u32>,
}

/// Lists the caller's jobs (admins: `all=true` for everyone's), newest first, from every
/// node of the cluster.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs",
    security(("bearer" = [])),
    params(Page),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ))]

async fn list(
    State(state): State<AppState>,
    Authed(who): Authed,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let limit = page.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit is from 1 to {MAX_PAGE}"),
        ));
    }
    let offset = page.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("offset is at most {MAX_OFFSET}"),
        ));
    }
    let all = page.all.unwrap_or(false);
    if all && !who.admin {
        return Err(ApiError::forbidden("only admins list every user's jobs"));
    }
    let jobs = state.jobs.list(who, all, limit, offset).await?;
    let next = (jobs.len() as u32 == limit).then_some(offset + limit);
    Ok(Json(JobPage {
        jobs: jobs.iter().map(JobJson::from).collect(),
        limit,
        offset,
        next_offset: next,
    }))
}

/// Parses a job id from a path; malformed ids are simply not found.
pub(super) fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).ok_or_else(ApiError::not_found)
}

/// A job: its state, progress, and why it failed if it did.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobJson),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ))]
async fn status(
    State(state): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
) -> Result<Json<JobJson>, ApiError> {
    let id = job_id(&id)?;
    let job = state.jobs.get(id, who).await?;
    Ok(Json(JobJson::from(&job)))
}

/// Cancels a job that has not ended (answering it, `canceled`) or deletes an ended one and
/// its files (`204`). Files are deleted even when the data volume is full.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "delete_job",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Canceled", body = JobJson),
        (status = 204, description = "Deleted"),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ))]
async fn remove(
    State(state): State<AppState>,
    Authed(who): Authed,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let canceled = state.jobs.delete(id, who).await?;
    Ok(match canceled {
        Some(job) => Json(JobJson::from(&job)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}
