//! The feed's queries, written once with `$n` placeholders; SQLite takes
//! them as `?n`. Only a post's age differs between the dialects.

use std::sync::LazyLock;

/// Whose posts make `$1`'s feed: their own, and those of everyone they
/// follow.
const AUDIENCE: &str = "(p.author_id = $1 \
     OR p.author_id IN (SELECT followee_id FROM follows WHERE follower_id = $1))";

/// A dialect's feed queries.
pub(crate) struct FeedSql {
    /// `$1`'s newest `$3` posts since `$2`.
    pub(crate) candidates: String,
    /// Those ranked at `$5` with likes after `$4`: `$6` from `$7`.
    pub(crate) ranked: String,
    /// `$1`'s newest `$2`.
    pub(crate) recent: String,
    /// `$1`'s newest `$4` before `($2, $3)`.
    pub(crate) recent_after: String,
}

impl FeedSql {
    /// The queries with `age_hours` as the SQL of a candidate `c`'s age at
    /// `$5`, in hours.
    fn new(age_hours: &str, placeholder: char) -> Self {
        let columns = crate::rows::post_columns!();
        let candidates = format!(
            "SELECT {columns} FROM posts p WHERE {AUDIENCE} AND p.created_at >= $2 \
             ORDER BY p.created_at DESC, p.id DESC LIMIT $3"
        );
        // The score is `feed::score`: (1 + likes in the window) / (hours + 2)^2.
        let ranked = format!(
            "WITH candidates AS ({candidates}), \
             aged AS (SELECT c.*, \
                 (SELECT COUNT(*) FROM post_likes l WHERE l.post_id = c.id AND l.created_at > $4) \
                     AS engagement, \
                 {age_hours} + 2.0 AS decay \
               FROM candidates c) \
             SELECT {columns} FROM aged \
             ORDER BY (1.0 + engagement) / (decay * decay) DESC, created_at DESC, id DESC \
             LIMIT $6 OFFSET $7"
        );
        let recent = format!(
            "SELECT {columns} FROM posts p WHERE {AUDIENCE} \
             ORDER BY p.created_at DESC, p.id DESC LIMIT $2"
        );
        let recent_after = format!(
            "SELECT {columns} FROM posts p WHERE {AUDIENCE} AND (p.created_at, p.id) < ($2, $3) \
             ORDER BY p.created_at DESC, p.id DESC LIMIT $4"
        );
        let dialect = |sql: String| sql.replace('$', &placeholder.to_string());
        Self {
            candidates: dialect(candidates),
            ranked: dialect(ranked),
            recent: dialect(recent),
            recent_after: dialect(recent_after),
        }
    }
}

/// SQLite's.
pub(crate) static SQLITE: LazyLock<FeedSql> = LazyLock::new(|| {
    FeedSql::new(
        "max(0.0, (julianday($5) - julianday(c.created_at)) * 24.0)",
        '?',
    )
});

/// PostgreSQL's.
pub(crate) static POSTGRES: LazyLock<FeedSql> = LazyLock::new(|| {
    FeedSql::new(
        "GREATEST(0.0, EXTRACT(EPOCH FROM ($5 - c.created_at))::float8 / 3600.0)",
        '$',
    )
});
