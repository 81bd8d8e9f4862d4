//! sqlx's errors as the store's.

use switchboard_storage::StoreError;

/// A sqlx failure as a [`StoreError`]: a missing row is `NotFound`, a
/// unique violation a `Conflict`, a database out of reach (no connection,
/// none free in time, one lost, the server shutting down or not accepting
/// connections, SQLite busy) `Unavailable`, the rest the backend's failure.
pub(crate) fn db(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        sqlx::Error::Database(db) if unavailable_code(db.code().as_deref()) => {
            StoreError::Unavailable(db.message().to_owned())
        }
        error @ (sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed) => StoreError::Unavailable(error.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// PostgreSQL's connection exceptions (class 08), shutdowns and "cannot
/// connect now" (57P01 to 57P03), and SQLite's busy and locked (5, 6).
fn unavailable_code(code: Option<&str>) -> bool {
    code.is_some_and(|code| {
        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "5" | "6")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_out_of_reach_is_unavailable_and_a_bug_is_not() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        for error in [
            sqlx::Error::Io(refused),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
        ] {
            assert!(matches!(db(error), StoreError::Unavailable(_)));
        }
        assert!(matches!(db(sqlx::Error::RowNotFound), StoreError::NotFound));
        assert!(matches!(
            db(sqlx::Error::ColumnNotFound("x".into())),
            StoreError::Backend(_)
        ));
        for code in ["08006", "57P01", "57P03", "5"] {
            assert!(unavailable_code(Some(code)), "{code}");
        }
        for code in ["23505", "42P01", "19"] {
            assert!(!unavailable_code(Some(code)), "{code}");
        }
    }
}
