//! [`ApiError`]: every failure a client sees, as `{"error":{"code","message"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use switchboard_actors::ActorError;
use switchboard_protocol::{ErrorBody, ErrorCode, ErrorDetail};

/// An error answer: a code from the closed set and a message for people.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people; never internal details.
    pub message: String,
    /// Seconds after which a retry may succeed, sent as `Retry-After`.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 503 with `Retry-After: seconds`.
    pub(crate) fn unavailable(message: impl Into<String>, seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(ErrorCode::Unavailable, message)
        }
    }

    /// 429 with `Retry-After: seconds`.
    pub(crate) fn rate_limited(message: impl Into<String>, seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// A bug or a failure the caller cannot act on: logged, answered 500.
    pub(crate) fn internal(detail: &str) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unprocessable, message)
    }

    /// Maps a framework rejection by its status.
    pub(crate) fn from_rejection(status: StatusCode, text: &str) -> Self {
        let code = match status.as_u16() {
            401 => ErrorCode::Unauthorized,
            404 => ErrorCode::NotFound,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            422 => ErrorCode::Unprocessable,
            400..=499 => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        };
        Self::new(code, text.to_lowercase())
    }
}

impl From<ActorError> for ApiError {
    fn from(error: ActorError) -> Self {
        match error {
            ActorError::NotFound(m) => Self::new(ErrorCode::NotFound, m),
            ActorError::Forbidden(m) => Self::new(ErrorCode::Forbidden, m),
            ActorError::Conflict(m) => Self::new(ErrorCode::Conflict, m),
            ActorError::Invalid(m) => Self::new(ErrorCode::Unprocessable, m),
            ActorError::UnsupportedType(m) => Self::new(ErrorCode::UnsupportedMediaType, m),
            ActorError::TooLarge(m) => Self::new(ErrorCode::PayloadTooLarge, m),
            ActorError::TooMany(m) => Self {
                retry_after: Some(5),
                ..Self::new(ErrorCode::RateLimited, m)
            },
            ActorError::Full {
                message,
                retry_after,
            } => Self {
                // Whole seconds, rounded up: a retry sooner would fail.
                retry_after: Some(
                    u32::try_from(
                        retry_after
                            .as_secs()
                            .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
                            .max(1),
                    )
                    .unwrap_or(u32::MAX),
                ),
                ..Self::new(ErrorCode::RateLimited, message)
            },
            ActorError::Overloaded(m) => Self {
                retry_after: Some(1),
                ..Self::new(ErrorCode::Unavailable, m)
            },
            ActorError::Unavailable(m) => Self {
                retry_after: Some(1),
                ..Self::new(ErrorCode::Unavailable, m)
            },
            ActorError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Self::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
