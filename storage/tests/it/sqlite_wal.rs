//! SQLite's write-ahead log stays bounded under a steady stream of commits.
//! The background checkpointer copies frames beside the writer, but the log
//! only starts over when a transaction begins with every frame copied, which
//! under continuous commits never happens by itself (the log grew without
//! bound when only the checkpointer ran; see BENCHMARKS.md). So the writer
//! finishes a checkpoint itself in the commit that takes the WAL past
//! `wal_pages_max`, and its next transaction starts the log over.

use switchboard_storage::{MessageRange, SendOutcome, Store};
use switchboard_storage_sql::{SqliteOptions, SqliteStore};
use uuid::Uuid;

use crate::contract::{group, message};

/// Sends, each committed on its own (the next waits for the last).
const SENDS: usize = 400;
/// The WAL's bound in this test, in 4 KiB pages: half SQLite's default, so
/// the test fails should the option not reach the writer.
const WAL_PAGES_MAX: u32 = 500;
/// The WAL file at most: `WAL_PAGES_MAX` pages (about 2 MB) and the commit
/// that crosses them. Without a rewind these sends write about 16 MB of
/// frames.
const WAL_LEN_MAX: u64 = 3 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_under_continuous_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = SqliteOptions::new(dir.path().join("wal.db"));
    options.synchronous_full = false;
    options.wal_pages_max = WAL_PAGES_MAX;
    let store = SqliteStore::open(&options, &crate::supervisor())
        .await
        .unwrap();
    let owner = Uuid::now_v7();
    let conversation = group(&store, owner, &[]).await;
    let wal = dir.path().join("wal.db-wal");
    let mut wal_len_max = 0;
    for i in 0..SENDS {
        let outcome = store
            .send(message(conversation, owner, &format!("{i:0>1000}")))
            .await
            .unwrap();
        assert!(matches!(outcome, SendOutcome::Created(_)));
        wal_len_max = wal_len_max.max(std::fs::metadata(&wal).unwrap().len());
    }
    assert!(
        wal_len_max <= WAL_LEN_MAX,
        "the WAL grew to {wal_len_max} bytes"
    );

    // Nothing was lost to the checkpoints, before or after reopening.
    let range = MessageRange {
        after_seq: None,
        before_seq: None,
        limit: 1000,
    };
    let messages = store.messages(conversation, range).await.unwrap();
    assert_eq!(messages.len(), SENDS);
    store.close().await;
    let store = SqliteStore::open(&options, &crate::supervisor())
        .await
        .unwrap();
    let messages = store.messages(conversation, range).await.unwrap();
    assert_eq!(messages.len(), SENDS);
    assert!(messages.iter().all(|m| m.encrypted_content.len() == 1000));
}
