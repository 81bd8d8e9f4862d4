//! [`ClientError`] and its retryable/permanent classification.

use std::time::Duration;

use switchboard_protocol::{ErrorBody, ErrorCode};

use crate::retry::{Class, Failure, classify};

/// A failed call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{status} {code:?}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code, when the body carried one.
        code: Option<ErrorCode>,
        /// The server's message.
        message: String,
        /// `Retry-After`, in seconds, when given.
        retry_after: Option<u64>,
    },
    /// The request never got an answer (connection refused, reset, timeout).
    #[error("transport: {0}")]
    Transport(String),
    /// The answer was not what the API promises.
    #[error("decode: {0}")]
    Decode(String),
}

impl ClientError {
    pub(crate) fn transport(error: impl std::fmt::Display) -> Self {
        Self::Transport(error.to_string())
    }

    pub(crate) fn decode(error: impl std::fmt::Display) -> Self {
        Self::Decode(error.to_string())
    }

    pub(crate) async fn from_response(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Self::Api {
                status,
                code: Some(body.error.code),
                message: body.error.message,
                retry_after,
            },
            Err(_) => Self::Api {
                status,
                code: None,
                message: text,
                retry_after,
            },
        }
    }

    /// The HTTP status, for error answers.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code, for error answers that carried one.
    #[must_use]
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { code, .. } => *code,
            _ => None,
        }
    }

    /// The failure as the retry policy sees it; `None` for an answer that
    /// could not be decoded, which no retry mends.
    #[must_use]
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Self::Transport(_) => Some(Failure::Network),
            Self::Api {
                status,
                retry_after,
                ..
            } => Some(Failure::Status {
                code: *status,
                retry_after: retry_after.map(Duration::from_secs),
            }),
            Self::Decode(_) => None,
        }
    }

    /// Whether trying again may succeed: transport failures, 5xx and 429.
    /// Every other answer is permanent; retrying it only repeats the failure.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.failure()
            .is_some_and(|f| matches!(classify(f), Class::Retryable { .. }))
    }
}
