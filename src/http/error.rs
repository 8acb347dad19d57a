//! One error type for every route: status, stable code, message a human can act on.
//!
//! v1 routes answer `{"error":{"code","message"}}`; the seed-compatible routes keep the
//! seed's plain-text bodies ([`ApiError::plain`]). Internal details are logged, never sent.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::actors::CallError;
use crate::actors::auth::AuthError;
use crate::actors::request::JobError;
use crate::actors::request::appender::AppendError;
use crate::actors::request::quota::QuotaError;
use crate::auth::jwt::TokenError;
use crate::fetch::FetchError;

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
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
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            plain: false,
            challenge: "Bearer",
        }
    }

    /// 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 without credentials.
    pub fn missing_credentials() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "missing_credentials", "missing credentials")
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such job")
    }

    /// 413.
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the file is larger than the limit of {limit} bytes"),
        )
    }

    /// 413 for a JSON body over [`super::MAX_JSON_BYTES`].
    pub fn json_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("JSON bodies are limited to {} bytes", super::MAX_JSON_BYTES),
        )
    }

    /// A JSON body that could not be read: too large (413) or malformed (400).
    pub fn json(rejection: axum::extract::rejection::JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::json_too_large()
        } else {
            Self::bad_request("invalid_request", rejection.body_text())
        }
    }

    /// 507: the data volume is under its reserve.
    pub fn insufficient_storage() -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            "this server is short of disk space; try again later",
        )
        .retry_after(std::time::Duration::from_secs(60))
    }

    /// 500; the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
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
            let body = super::openapi::ErrorBody {
                error: super::openapi::ErrorDetail {
                    code: self.code.to_string(),
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
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()).retry_after(Duration::from_secs(1))
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let code = match e {
            TokenError::Expired => "token_expired",
            TokenError::Invalid => "invalid_token",
            TokenError::Revoked => "token_revoked",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::BadCredentials => ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", e.to_string()),
            AuthError::Throttled(wait) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", e.to_string()).retry_after(wait)
            }
            AuthError::Token(t) => t.into(),
            AuthError::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m),
            AuthError::Exists => ApiError::new(StatusCode::CONFLICT, "exists", e.to_string()),
            AuthError::NoSuchUser => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            AuthError::Store(e) => ApiError::internal(e),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::NotFound => ApiError::not_found(),
            JobError::Expired(_) => ApiError::new(StatusCode::GONE, "expired", e.to_string()),
            JobError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            JobError::Draining => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
                .retry_after(Duration::from_secs(5)),
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
            AppendError::Offset { .. } => ApiError::new(StatusCode::CONFLICT, "offset_mismatch", message),
            AppendError::TooLong(_) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message),
            AppendError::Busy => ApiError::new(StatusCode::CONFLICT, "upload_busy", message),
            AppendError::Checksum => ApiError::new(
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
                "checksum_mismatch",
                message,
            ),
            AppendError::Broken(_) => ApiError::bad_request("invalid_request", message),
            AppendError::Full => ApiError::insufficient_storage(),
            AppendError::Lost => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
                .retry_after(Duration::from_secs(1)),
            AppendError::Job(e) => e.into(),
        }
    }
}

impl From<QuotaError> for ApiError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::Exceeded {
                message, retry_after, ..
            } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message).retry_after(retry_after),
            QuotaError::Failed(m) => ApiError::internal(m),
        }
    }
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> Self {
        let status = match e {
            FetchError::BadUrl(_) => StatusCode::BAD_REQUEST,
            FetchError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            FetchError::Io(_) => return ApiError::internal(e),
            FetchError::Forbidden(_) | FetchError::Failed(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}
