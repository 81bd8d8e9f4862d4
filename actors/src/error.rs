//! What a node operation can fail with, in terms a transport can map to status
//! codes without knowing the actors.

use switchboard_storage::StoreError;

/// A node operation's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActorError {
    /// The thing does not exist, or the caller may not know that it does.
    #[error("{0}")]
    NotFound(&'static str),
    /// The caller may see the thing but lacks the right to do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// A content type the call does not take.
    #[error("{0}")]
    UnsupportedType(String),
    /// Larger than the call allows.
    #[error("{0}")]
    TooLarge(String),
    /// The caller holds too much of a per-user allowance.
    #[error("{0}")]
    TooMany(&'static str),
    /// The caller, or the node, holds as much of an allowance as it may
    /// until some of it is used up, which comes no sooner than
    /// `retry_after`.
    #[error("{message}")]
    Full {
        /// What is full.
        message: String,
        /// When a retry may succeed.
        retry_after: std::time::Duration,
    },
    /// A bounded queue is full; the caller should retry later.
    #[error("{0}")]
    Overloaded(&'static str),
    /// A dependency or actor is not available right now.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a backend failure; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for ActorError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => Self::NotFound("not found"),
            StoreError::Rejected(_) => Self::Forbidden("not permitted"),
            StoreError::Conflict(message) => Self::Conflict(message),
            StoreError::Backend(message) => Self::Internal(message),
            StoreError::Unavailable(message) => {
                tracing::warn!(%message, "database unavailable");
                Self::Unavailable("the database is unavailable: retry".into())
            }
            StoreError::Interrupted => Self::Unavailable(
                "the write was interrupted: retry it with the same idempotency key".into(),
            ),
        }
    }
}
