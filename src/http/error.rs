//! One error type for every route: status, stable code, message a human can act on.
//!
//! v1 routes answer `{"error":{"code","message"}}`; the seed-compatible routes keep the
//! seed's plain-text bodies ([`ApiError::plain`]). Internal details are logged, never sent.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::actors::CallError;
use crate::actors::auth::AuthError;
use crate::actors::request::JobError;
use crate::actors::request::client::JobsError;
use crate::actors::request::jobs::RemoteError;
use crate::actors::request::quota::QuotaError;
use crate::actors::request::resumable::appender::AppendError;
use crate::actors::request::resumable::client::ResumableError;
use crate::auth::jwt::TokenError;
use crate::fetch::FetchError;

/// Every error code of the API, in snake_case (`not_found`). Each has the HTTP status it
/// usually answers with (`ErrorCode::status` in the code); a few answers pick another, e.g.
/// an `invalid_request` that is well-formed but not acceptable is 422.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A bad JSON body, query, header or form field.
    InvalidRequest,
    /// Bad bitrate/vbr settings.
    InvalidSettings,
    /// A multipart body that could not be read.
    InvalidMultipart,
    /// Bad tus `Upload-Metadata`.
    InvalidMetadata,
    /// A bad webhook setting.
    InvalidWebhook,
    /// A tus checksum that is not sha256 or not a digest.
    InvalidChecksum,
    /// A URL that is not http(s) or does not parse.
    InvalidUrl,
    /// A `Tus-Resumable` version other than ours.
    UnsupportedVersion,
    /// A `Content-Type` the route does not take.
    UnsupportedMediaType,
    /// A `Range` outside the file.
    RangeNotSatisfiable,
    /// No credentials.
    MissingCredentials,
    /// A wrong email or password.
    InvalidCredentials,
    /// A token past its expiry.
    TokenExpired,
    /// A token that is not ours or does not parse.
    InvalidToken,
    /// A token revoked by sign-out, a password change or a removal.
    TokenRevoked,
    /// Not allowed for this user.
    Forbidden,
    /// No such job, upload or user.
    NotFound,
    /// No such route.
    NoRoute,
    /// The request conflicts with the resource's state.
    Conflict,
    /// The user exists already.
    Exists,
    /// A tus `Upload-Offset` that is not the upload's.
    OffsetMismatch,
    /// Another request is appending to this upload.
    UploadBusy,
    /// A job in the archive is not done.
    NotDone,
    /// The MP3 was deleted by retention.
    Expired,
    /// Over a size limit.
    TooLarge,
    /// A URL to an address the service does not call.
    ForbiddenUrl,
    /// A URL that could not be fetched.
    FetchFailed,
    /// Over a per-user quota.
    QuotaExceeded,
    /// Too many sign-in attempts.
    TooManyRequests,
    /// A tus chunk whose checksum does not match.
    ChecksumMismatch,
    /// Our fault; the detail is in the server log.
    Internal,
    /// This node cannot serve it now.
    Unavailable,
    /// The node that owns the job cannot be reached now.
    OwnerUnavailable,
    /// The data volume is under its reserve.
    InsufficientStorage,
}

impl ErrorCode {
    /// The HTTP status it answers with.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            InvalidRequest | InvalidSettings | InvalidMultipart | InvalidMetadata | InvalidWebhook
            | InvalidChecksum | InvalidUrl => StatusCode::BAD_REQUEST,
            MissingCredentials | InvalidCredentials | TokenExpired | InvalidToken | TokenRevoked => {
                StatusCode::UNAUTHORIZED
            }
            Forbidden => StatusCode::FORBIDDEN,
            NotFound | NoRoute => StatusCode::NOT_FOUND,
            Conflict | Exists | OffsetMismatch | UploadBusy | NotDone => StatusCode::CONFLICT,
            Expired => StatusCode::GONE,
            UnsupportedVersion => StatusCode::PRECONDITION_FAILED,
            TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ForbiddenUrl | FetchFailed => StatusCode::UNPROCESSABLE_ENTITY,
            QuotaExceeded | TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ChecksumMismatch => StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Unavailable | OwnerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        }
    }
}

/// Every error answer of the `/v1` routes.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "no such job"}}))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// A stable code for programs and a message for people.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable; each response lists the codes it can carry.
    pub code: ErrorCode,
    /// For people; may change between versions.
    pub message: String,
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// Answer in plain text (seed-compatible routes).
    pub plain: bool,
    /// The `WWW-Authenticate` challenge of a 401.
    pub challenge: &'static str,
}

impl ApiError {
    /// An error with its code's status and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status: code.status(),
            code,
            message: message.into(),
            retry_after: None,
            plain: false,
            challenge: "Bearer",
        }
    }

    /// The same error with another status than its code's.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// 401 without credentials.
    pub fn missing_credentials() -> Self {
        Self::new(ErrorCode::MissingCredentials, "missing credentials")
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// 404.
    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such job")
    }

    /// 413.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            ErrorCode::TooLarge,
            format!("the file is larger than the limit of {limit} bytes"),
        )
    }

    /// 413 for a JSON body over [`super::MAX_JSON_BYTES`].
    pub fn json_too_large() -> Self {
        Self::new(
            ErrorCode::TooLarge,
            format!("JSON bodies are limited to {} bytes", super::MAX_JSON_BYTES),
        )
    }

    /// A JSON body that could not be read: too large (413) or malformed (400).
    pub fn json(rejection: axum::extract::rejection::JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::json_too_large()
        } else {
            Self::new(ErrorCode::InvalidRequest, rejection.body_text())
        }
    }

    /// 507: the data volume is under its reserve.
    pub fn insufficient_storage() -> Self {
        Self::new(
            ErrorCode::InsufficientStorage,
            "this server is short of disk space; try again later",
        )
        .retry_after(std::time::Duration::from_secs(60))
    }

    /// 500; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "internal error; see the server log")
    }

    /// Sets `Retry-After`.
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        self
    }

    /// A 401 that asks for HTTP Basic credentials (`POST /login`).
    pub fn basic_challenge(mut self) -> Self {
        self.challenge = "Basic realm=\"mp4tomp3\"";
        self
    }

    /// Plain-text body (the seed's style).
    pub fn plain(mut self) -> Self {
        self.plain = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = if self.plain {
            (self.status, self.message).into_response()
        } else {
            let body = ErrorBody {
                error: ErrorDetail {
                    code: self.code,
                    message: self.message,
                },
            };
            (self.status, axum::Json(body)).into_response()
        };
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(self.challenge));
        }
        response
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        ApiError::new(ErrorCode::Unavailable, e.to_string()).retry_after(Duration::from_secs(1))
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let code = match e {
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::Invalid => ErrorCode::InvalidToken,
            TokenError::Revoked => ErrorCode::TokenRevoked,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::BadCredentials => ApiError::new(ErrorCode::InvalidCredentials, e.to_string()),
            AuthError::Throttled(wait) => ApiError::new(ErrorCode::TooManyRequests, e.to_string()).retry_after(wait),
            AuthError::Token(t) => t.into(),
            AuthError::Invalid(m) => {
                ApiError::new(ErrorCode::InvalidRequest, m).with_status(StatusCode::UNPROCESSABLE_ENTITY)
            }
            AuthError::Exists => ApiError::new(ErrorCode::Exists, e.to_string()),
            AuthError::NoSuchUser => ApiError::new(ErrorCode::NotFound, e.to_string()),
            AuthError::Store(e) => ApiError::internal(e),
            AuthError::Unavailable(_) => {
                ApiError::new(ErrorCode::Unavailable, e.to_string()).retry_after(Duration::from_secs(2))
            }
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::NotFound => ApiError::not_found(),
            JobError::Expired(_) => ApiError::new(ErrorCode::Expired, e.to_string()),
            JobError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            JobError::Draining => {
                ApiError::new(ErrorCode::Unavailable, e.to_string()).retry_after(Duration::from_secs(5))
            }
            JobError::NoSpace => ApiError::insufficient_storage(),
            JobError::Store(e) => ApiError::internal(e),
            JobError::Io(e) => ApiError::internal(e),
        }
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        let message = e.to_string();
        match e {
            AppendError::Offset { .. } => ApiError::new(ErrorCode::OffsetMismatch, message),
            AppendError::TooLong(_) => ApiError::new(ErrorCode::TooLarge, message),
            AppendError::Busy => ApiError::new(ErrorCode::UploadBusy, message),
            AppendError::Checksum => ApiError::new(ErrorCode::ChecksumMismatch, message),
            AppendError::Broken(_) => ApiError::new(ErrorCode::InvalidRequest, message),
            AppendError::Full => ApiError::insufficient_storage(),
            AppendError::Lost => ApiError::new(ErrorCode::Unavailable, message).retry_after(Duration::from_secs(1)),
            AppendError::Job(e) => e.into(),
        }
    }
}

impl From<QuotaError> for ApiError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::Exceeded {
                message, retry_after, ..
            } => ApiError::new(ErrorCode::QuotaExceeded, message).retry_after(retry_after),
            QuotaError::Failed(m) => ApiError::internal(m),
        }
    }
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> Self {
        let code = match e {
            FetchError::BadUrl(_) => ErrorCode::InvalidUrl,
            FetchError::TooLarge(_) => ErrorCode::TooLarge,
            FetchError::Io(_) => return ApiError::internal(e),
            FetchError::Forbidden(_) => ErrorCode::ForbiddenUrl,
            FetchError::Failed(_) => ErrorCode::FetchFailed,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<ResumableError> for ApiError {
    fn from(e: ResumableError) -> Self {
        match e {
            ResumableError::Append(e) => e.into(),
            ResumableError::Call(e) => e.into(),
            ResumableError::Remote(e) => e.into(),
        }
    }
}

impl From<RemoteError> for ApiError {
    fn from(e: RemoteError) -> Self {
        ApiError::new(ErrorCode::OwnerUnavailable, e.to_string()).retry_after(Duration::from_secs(5))
    }
}

impl From<JobsError> for ApiError {
    fn from(e: JobsError) -> Self {
        match e {
            JobsError::Job(e) => e.into(),
            JobsError::OwnerUnreachable(e) => e.into(),
            JobsError::Meta(_) => {
                ApiError::new(ErrorCode::Unavailable, e.to_string()).retry_after(Duration::from_secs(2))
            }
            JobsError::Local(e) => e.into(),
            JobsError::Internal(m) => ApiError::internal(m),
        }
    }
}
