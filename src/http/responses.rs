//! The reusable error responses of the document, one per status, each naming the codes
//! it can carry (what `#[utoipa::path]` of each handler refers to).

use utoipa::ToResponse;

use super::error::ErrorBody;

/// The request is malformed: `invalid_request` (a bad JSON body, query or header),
/// `invalid_settings` (bitrate/vbr), `invalid_multipart`, `invalid_url`.
#[derive(ToResponse)]
#[response(example = json!({"error": {"code": "invalid_settings", "message": "give either bitrate or vbr, not both"}}))]
pub struct BadRequest(pub ErrorBody);

/// No credentials or bad ones: `missing_credentials`, `invalid_token`, `token_expired`,
/// `token_revoked`, `invalid_credentials`.
#[derive(ToResponse)]
#[response(
    headers(("WWW-Authenticate" = String, description = "`Bearer` (`Basic realm=\"mp4tomp3\"` on `/login`)")),
    example = json!({"error": {"code": "missing_credentials", "message": "missing credentials"}})
)]
pub struct Unauthorized(pub ErrorBody);

/// Not allowed for this user: `forbidden` (admins only).
#[derive(ToResponse)]
#[response(example = json!({"error": {"code": "forbidden", "message": "only admins see the cluster"}}))]
pub struct Forbidden(pub ErrorBody);

/// `not_found`: no such job, user or link (another user's job is not found either).
#[derive(ToResponse)]
#[response(example = json!({"error": {"code": "not_found", "message": "no such job"}}))]
pub struct NotFound(pub ErrorBody);

/// The state does not allow it: `conflict` (e.g. the MP3 of a job that is not done),
/// `exists` (a user with that email).
#[derive(ToResponse)]
#[response(example = json!({"error": {"code": "conflict", "message": "the job is not done yet"}}))]
pub struct Conflict(pub ErrorBody);

/// `too_large`: the upload is over `--max-upload-bytes`, or a JSON body over 64 KiB.
#[derive(ToResponse)]
#[response(example = json!({"error": {"code": "too_large", "message": "the file is larger than the limit of 2147483648 bytes"}}))]
pub struct TooLarge(pub ErrorBody);

/// `unsupported_media_type`: send `multipart/form-data` with one file, or `application/json`.
#[derive(ToResponse)]
#[response(example = json!({"error": {"code": "unsupported_media_type", "message": "send multipart/form-data with one file, or application/json with a url"}}))]
pub struct UnsupportedMediaType(pub ErrorBody);

/// Understood but refused: a URL whose address is not allowed (`forbidden_url`) or that
/// cannot be fetched (`fetch_failed`), or an invalid new user (`invalid_request`).
#[derive(ToResponse)]
#[response(example = json!({"error": {"code": "forbidden_url", "message": "127.0.0.1 is not a public address"}}))]
pub struct Unprocessable(pub ErrorBody);

/// `too_many_requests`: logins are throttled per address and accounts lock out after failed
/// attempts; wait `Retry-After` seconds.
#[derive(ToResponse)]
#[response(
    headers(("Retry-After" = u64, description = "Seconds to wait")),
    example = json!({"error": {"code": "too_many_requests", "message": "too many login attempts; try again later"}})
)]
pub struct TooManyRequests(pub ErrorBody);

/// `quota_exceeded`: one more job would pass one of the caller's limits (the message names
/// it); `Retry-After` says when it frees.
#[derive(ToResponse)]
#[response(
    headers(("Retry-After" = u64, description = "Seconds until the limit frees")),
    example = json!({"error": {"code": "quota_exceeded", "message": "max_active: you have 5 unfinished jobs and uploads, the most allowed at once is 5; try again when one has ended"}})
)]
pub struct QuotaExceeded(pub ErrorBody);

/// `internal`: a fault on our side; the detail is in the server log.
#[derive(ToResponse)]
#[response(example = json!({"error": {"code": "internal", "message": "internal error; see the server log"}}))]
pub struct Internal(pub ErrorBody);

/// Try again after `Retry-After` seconds: `unavailable` (the node is starting or stopping),
/// `owner_unavailable` (the node that owns the job cannot be reached now).
#[derive(ToResponse)]
#[response(
    headers(("Retry-After" = u64, description = "Seconds to wait")),
    example = json!({"error": {"code": "owner_unavailable", "message": "the node that owns this job is not reachable; try again"}})
)]
pub struct Unavailable(pub ErrorBody);

/// `insufficient_storage`: the data volume is under its reserve; downloads and deletes still
/// work.
#[derive(ToResponse)]
#[response(
    headers(("Retry-After" = u64, description = "Seconds to wait")),
    example = json!({"error": {"code": "insufficient_storage", "message": "this server is short of disk space; try again later"}})
)]
pub struct InsufficientStorage(pub ErrorBody);
