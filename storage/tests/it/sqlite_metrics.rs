//! The SQLite group committer's and checkpointer's metrics count what they
//! did.

use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use switchboard_storage::{SendOutcome, Store};
use switchboard_storage_sql::{SqliteOptions, SqliteStore};
use uuid::Uuid;

use crate::contract::{group, message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_committer_reports_its_batches_and_their_time() {
    let m = metered().await;
    let batch = (0..3)
        .map(|i| message(m.conversation, m.owner, &i.to_string()))
        .collect();
    let outcomes = m.store.send_batch(batch).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(SendOutcome::Created(_))))
    );
    // A refused send (not a member) is still a send the committer took.
    let refused = m
        .store
        .send(message(m.conversation, Uuid::now_v7(), "refused"))
        .await;
    assert!(refused.is_err(), "{refused:?}");

    let text = encode(&m.registry);
    let value = |name: &str| value(&text, name);
    // The three queued back to back may share one commit or not; the
    // refused one came after them.
    let commits = value("store_group_commit_sends_count");
    assert!((2.0..=4.0).contains(&commits), "{text}");
    assert!((value("store_group_commit_sends_sum") - 4.0).abs() < f64::EPSILON);
    assert!((value("store_group_commit_seconds_count") - commits).abs() < f64::EPSILON);
    assert!(value("store_group_commit_seconds_sum") > 0.0);
    m.store.close().await;
}

/// The background checkpointer copies what the sends wrote into the
/// database file; the writer alone would not until the WAL reached
/// `wal_pages_max` (4,096 pages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_copies_the_wal_into_the_database() {
    let m = metered().await;
    for i in 0..20 {
        let sent = m
            .store
            .send(message(m.conversation, m.owner, &i.to_string()))
            .await;
        assert!(matches!(sent, Ok(SendOutcome::Created(_))), "{sent:?}");
    }
    // It checkpoints every 100 ms; waiting for an event, not timing one.
    let mut text = encode(&m.registry);
    for _ in 0..100 {
        if value(&text, "store_wal_checkpoint_seconds_count") >= 1.0
            && value(&text, "store_wal_frames_behind") == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = encode(&m.registry);
    }
    assert!(
        value(&text, "store_wal_checkpoint_seconds_count") >= 1.0,
        "{text}"
    );
    assert!(value(&text, "store_wal_frames_behind") == 0.0, "{text}");
    assert!(
        value(&text, "store_wal_checkpoint_failures_total") == 0.0,
        "{text}"
    );
    m.store.close().await;
}

/// A fresh store with its metrics registered, and a group its owner can
/// send to.
struct Metered {
    _dir: tempfile::TempDir,
    store: SqliteStore,
    registry: Registry,
    owner: Uuid,
    conversation: Uuid,
}

async fn metered() -> Metered {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &SqliteOptions::new(dir.path().join("metrics.db")),
        &crate::supervisor(),
    )
    .await
    .unwrap();
    let registry = Registry::new();
    for collector in store.collectors() {
        registry.register(collector).unwrap();
    }
    let owner = Uuid::now_v7();
    let conversation = group(&store, owner, &[]).await;
    Metered {
        _dir: dir,
        store,
        registry,
        owner,
        conversation,
    }
}

fn encode(registry: &Registry) -> String {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    String::from_utf8(text).unwrap()
}

/// The value of the sample `name` (without labels) in `text`.
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
