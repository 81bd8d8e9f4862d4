//! The SQLite group committer and checkpointer under their supervisor: a
//! panic is survived, counted, and costs no acknowledged send; a send in a
//! batch that died is told so, never a false success, and is stored once
//! when retried with its key; past the budget the writer path says so.

use std::collections::BTreeMap;
use std::time::Duration;

use switchboard_storage::{MessageRange, NewMessage, SendOutcome, Store, StoreError};
use switchboard_storage_sql::{CHECKPOINT_TASK, GROUP_COMMIT_TASK, SqliteOptions, SqliteStore};
use switchboard_supervisors::{RestartPolicy, Supervisor, TaskState};
use uuid::Uuid;

use crate::contract::{group, message};

async fn open(
    dir: &tempfile::TempDir,
    supervisor: &Supervisor,
    restart: RestartPolicy,
) -> SqliteStore {
    let mut options = SqliteOptions::new(dir.path().join("supervised.db"));
    options.synchronous_full = false;
    options.restart = restart;
    SqliteStore::open(&options, supervisor).await.unwrap()
}

fn quick_restarts(restarts_max: u32) -> RestartPolicy {
    RestartPolicy {
        restarts_max,
        restart_window: Duration::from_secs(60),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
    }
}

fn state(supervisor: &Supervisor, task: &str) -> (TaskState, u64) {
    let report = supervisor
        .tasks()
        .into_iter()
        .find(|t| t.name == task)
        .unwrap();
    (report.state, report.restarts)
}

fn keyed(conversation: Uuid, sender: Uuid, key: usize) -> NewMessage {
    NewMessage {
        idempotency_key: Some(format!("k{key}")),
        ..message(conversation, sender, &format!("bTx7{key}"))
    }
}

/// What the senders heard.
#[derive(Debug, Default)]
struct Answers {
    /// Each key's message.
    stored: BTreeMap<String, Uuid>,
    /// Sends told their write was interrupted.
    interrupted: usize,
    /// Retries answered with the message their first try had stored.
    duplicates: usize,
}

/// Sends `commands` at once, and again those that were interrupted, until
/// each has an answer.
async fn send_until_answered(store: &SqliteStore, mut commands: Vec<NewMessage>) -> Answers {
    let mut answers = Answers::default();
    for _round in 0..20 {
        if commands.is_empty() {
            break;
        }
        let outcomes =
            futures_util::future::join_all(commands.iter().map(|c| store.send(c.clone()))).await;
        let mut again = Vec::new();
        for (command, outcome) in commands.into_iter().zip(outcomes) {
            let key = command.idempotency_key.clone().unwrap();
            match outcome {
                Ok(SendOutcome::Created(c)) => {
                    assert!(answers.stored.insert(key, c.value.id).is_none());
                }
                Ok(SendOutcome::Duplicate(m)) => {
                    // A retry of a send whose batch committed before dying.
                    answers.duplicates += 1;
                    assert!(answers.stored.insert(key, m.id).is_none());
                }
                Err(StoreError::Interrupted) => {
                    answers.interrupted += 1;
                    again.push(command);
                }
                Err(error) => panic!("a send failed: {error}"),
            }
        }
        commands = again;
    }
    assert!(commands.is_empty(), "every send was answered");
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committer_panic_before_or_after_the_commit_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = crate::supervisor();
    let store = open(&dir, &supervisor, quick_restarts(5)).await;
    let owner = Uuid::now_v7();
    let conversation = group(&store, owner, &[]).await;

    // One batch dies before its commit, one after it.
    supervisor.inject_panic(GROUP_COMMIT_TASK, "batch");
    supervisor.inject_panic(GROUP_COMMIT_TASK, "committed");
    let commands: Vec<NewMessage> = (0..200).map(|i| keyed(conversation, owner, i)).collect();
    let answers = send_until_answered(&store, commands).await;
    assert!(
        answers.duplicates > 0 && answers.interrupted > answers.duplicates,
        "sends rode in both batches that died: {answers:?}"
    );
    assert_eq!(
        state(&supervisor, GROUP_COMMIT_TASK),
        (TaskState::Running, 2)
    );

    // Each key stored exactly one message, and every answer is in the log.
    let messages = store
        .messages(
            conversation,
            MessageRange {
                after_seq: None,
                before_seq: None,
                limit: 1000,
            },
        )
        .await
        .unwrap();
    assert_eq!(messages.len(), 200);
    let mut ids: Vec<Uuid> = answers.stored.values().copied().collect();
    ids.sort_unstable();
    let mut in_log: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    in_log.sort_unstable();
    assert_eq!(ids, in_log);
    store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committer_past_its_budget_fails_every_send_and_the_ping() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = crate::supervisor();
    let store = open(&dir, &supervisor, quick_restarts(1)).await;
    let owner = Uuid::now_v7();
    let conversation = group(&store, owner, &[]).await;
    store.ping().await.unwrap();
    for i in 0..2 {
        supervisor.inject_panic(GROUP_COMMIT_TASK, "batch");
        let outcome = store.send(keyed(conversation, owner, i)).await;
        assert!(
            matches!(outcome, Err(StoreError::Interrupted)),
            "{outcome:?}"
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while state(&supervisor, GROUP_COMMIT_TASK).0 != TaskState::Failed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the committer never failed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(supervisor.failed(), vec![GROUP_COMMIT_TASK]);
    assert!(matches!(
        store.send(keyed(conversation, owner, 9)).await,
        Err(StoreError::Backend(_))
    ));
    assert!(store.ping().await.is_err(), "the writer path is down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_is_restarted_after_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = crate::supervisor();
    let _store = open(&dir, &supervisor, quick_restarts(5)).await;
    supervisor.inject_panic(CHECKPOINT_TASK, "checkpoint");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while state(&supervisor, CHECKPOINT_TASK) != (TaskState::Running, 1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checkpointer never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
