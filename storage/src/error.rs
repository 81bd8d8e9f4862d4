//! What a store call can fail with.

/// A store call's failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The conversation or message does not exist.
    #[error("not found")]
    NotFound,
    /// The write's condition did not hold when it ran, so nothing changed.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// The write conflicts with what is stored (a duplicate member, an
    /// idempotency key reused for a different message).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend failed; the caller cannot know more than that.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The backend cannot be reached or is shutting down (connection
    /// refused or lost, no connection free in time, a database busy):
    /// nothing was done, and a retry may succeed.
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    /// The call was cut off before its outcome was known (the store's
    /// writer restarted under it): it may or may not have taken effect, and
    /// a retry with the same idempotency key is safe.
    #[error("the write was interrupted before its outcome was known")]
    Interrupted,
}

/// Why a conditional write changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The principal is not a member of the conversation.
    #[error("not a member")]
    NotMember,
    /// The principal is a member but lacks the right.
    #[error("not permitted")]
    NotPermitted,
    /// The message was already deleted.
    #[error("message deleted")]
    Deleted,
}
