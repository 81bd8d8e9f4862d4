//! The SQL [`Store`](switchboard_storage::Store)s: [`SqliteStore`], the
//! embedded default, and [`PostgresStore`] for a cluster.
//!
//! Both run the same conditional statements: every write re-checks the
//! permission the calling actor already checked, in the transaction that
//! writes, so a second node or a stale cache can never slip an unauthorized
//! change through. They share their row decoding (`rows.rs`); the contract
//! suite in `storage/tests/it` keeps their behaviour identical to each other
//! and to the in-memory store.

mod error;
mod feed_sql;
mod migrations;
mod postgres;
mod rows;
mod sqlite;

pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{CHECKPOINT_TASK, GROUP_COMMIT_TASK, SqliteOptions, SqliteStore};
