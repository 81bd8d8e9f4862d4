//! The schema's migrations, embedded with `include_str!` rather than
//! `sqlx::migrate!`, which would build the SQLite C library a second time for
//! the host.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The migrator of one dialect's `(version, name, sql)` steps.
fn migrator(steps: &[(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = steps
        .iter()
        .map(|&(version, name, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(name),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// SQLite's.
pub(crate) fn sqlite() -> Migrator {
    migrator(&[
        (
            1,
            "init",
            include_str!("../migrations/sqlite/0001_init.sql"),
        ),
        (
            2,
            "attachments",
            include_str!("../migrations/sqlite/0002_attachments.sql"),
        ),
        (
            3,
            "scheduled",
            include_str!("../migrations/sqlite/0003_scheduled.sql"),
        ),
        (
            4,
            "feed",
            include_str!("../migrations/sqlite/0004_feed.sql"),
        ),
    ])
}

/// PostgreSQL's.
pub(crate) fn postgres() -> Migrator {
    migrator(&[
        (
            1,
            "init",
            include_str!("../migrations/postgres/0001_init.sql"),
        ),
        (
            2,
            "attachments",
            include_str!("../migrations/postgres/0002_attachments.sql"),
        ),
        (
            3,
            "scheduled",
            include_str!("../migrations/postgres/0003_scheduled.sql"),
        ),
        (
            4,
            "feed",
            include_str!("../migrations/postgres/0004_feed.sql"),
        ),
    ])
}
