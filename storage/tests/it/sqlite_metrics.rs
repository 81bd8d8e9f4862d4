//! The SQLite group committer's metrics count what it committed.

use prometheus::{Encoder, Registry, TextEncoder};
use switchboard_storage::{SendOutcome, SqliteOptions, SqliteStore, Store};
use uuid::Uuid;

use crate::contract::{group, message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_committer_reports_its_batches_and_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteOptions::new(dir.path().join("metrics.db")))
        .await
        .unwrap();
    let registry = Registry::new();
    for collector in store.collectors() {
        registry.register(collector).unwrap();
    }
    let owner = Uuid::now_v7();
    let conversation = group(&store, owner, &[]).await;
    let batch = (0..3)
        .map(|i| message(conversation, owner, &i.to_string()))
        .collect();
    let outcomes = store.send_batch(batch).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(SendOutcome::Created(_))))
    );
    // A refused send (not a member) is still a send the committer took.
    let refused = store
        .send(message(conversation, Uuid::now_v7(), "refused"))
        .await;
    assert!(refused.is_err(), "{refused:?}");

    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    // The three queued back to back may share one commit or not; the
    // refused one came after them.
    let commits = value("store_group_commit_sends_count");
    assert!((2.0..=4.0).contains(&commits), "{text}");
    assert!((value("store_group_commit_sends_sum") - 4.0).abs() < f64::EPSILON);
    assert!((value("store_group_commit_seconds_count") - commits).abs() < f64::EPSILON);
    assert!(value("store_group_commit_seconds_sum") > 0.0);
    store.close().await;
}
