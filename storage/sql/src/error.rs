//! sqlx's errors as the store's.

use switchboard_storage::StoreError;

/// A sqlx failure as a [`StoreError`]: a missing row is `NotFound`, a
/// unique violation a `Conflict`, the rest the backend's failure.
pub(crate) fn db(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        other => StoreError::Backend(other.to_string()),
    }
}
