//! A node's supervised tasks as an operator and a client see them: a panic
//! in the SQLite group committer or checkpointer is survived, counted in
//! `/metrics` and costs no acknowledged message; past the restart budget,
//! readiness and liveness answer 503 and name the task.

use serde_json::{Value, json};
use sqlx::Connection;
use switchboard_actors::TaskState;
use switchboard_storage_sql::{CHECKPOINT_TASK, GROUP_COMMIT_TASK};
use uuid::Uuid;

use crate::support::{TestServer, User, eventually, group, send_texts};

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let response = reqwest::get(server.url(path)).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A send with an idempotency key, as the raw HTTP call: status and body.
async fn send_keyed(
    server: &TestServer,
    user: &User,
    conversation: Uuid,
    key: &str,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/messages"))
        .bearer_auth(server.token(user.id))
        .json(&json!({
            "conversation_id": conversation,
            "encrypted_content": "aGVsbG8=",
            "nonce": "bm9uY2U=",
            "message_type": "text",
            "idempotency_key": key,
        }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn restarts(server: &TestServer, task: &str) -> (TaskState, u64) {
    let report = server
        .node
        .tasks()
        .into_iter()
        .find(|t| t.name == task)
        .unwrap_or_else(|| panic!("no task {task}"));
    (report.state, report.restarts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_succeed_again_after_the_group_committer_restarts_and_none_is_lost() {
    let server = TestServer::start().await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await.id;
    let before = send_texts(&alice, conversation, 5).await;

    // The committer dies with this send in hand, before it commits: the
    // sender is told to retry, never that it succeeded.
    server
        .node
        .supervisor()
        .inject_panic(GROUP_COMMIT_TASK, "batch");
    let (status, body) = send_keyed(&server, &alice, conversation, "k-before").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    let (status, first) = send_keyed(&server, &alice, conversation, "k-before").await;
    assert_eq!(status, 201, "the retry is stored: {first}");

    // It dies after committing: the retry finds the stored message.
    server
        .node
        .supervisor()
        .inject_panic(GROUP_COMMIT_TASK, "committed");
    let (status, _) = send_keyed(&server, &alice, conversation, "k-after").await;
    assert_eq!(status, 503);
    let (status, second) = send_keyed(&server, &alice, conversation, "k-after").await;
    assert_eq!(
        status, 200,
        "a retry of a committed send is its duplicate: {second}"
    );

    let after = send_texts(&alice, conversation, 5).await;
    assert_eq!(
        restarts(&server, GROUP_COMMIT_TASK),
        (TaskState::Running, 2)
    );
    assert!(server.metrics().await.contains(&format!(
        "worker_restarts_total{{worker=\"{GROUP_COMMIT_TASK}\"}} 2"
    )));

    // Every acknowledged message is stored, once.
    let stored = alice
        .client
        .messages(conversation, None, None, Some(100))
        .await
        .unwrap()
        .messages;
    let mut expected: Vec<Uuid> = before.iter().chain(&after).map(|m| m.id).collect();
    expected.push(first["id"].as_str().unwrap().parse().unwrap());
    expected.push(second["id"].as_str().unwrap().parse().unwrap());
    expected.sort_unstable();
    let mut ids: Vec<Uuid> = stored.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, expected);
    let (status, ready) = get(&server, "/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["tasks"][GROUP_COMMIT_TASK]["restarts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_budget_the_committer_turns_readiness_and_liveness_off_by_name() {
    let server = TestServer::start().await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await.id;
    let (status, _) = get(&server, "/health/ready").await;
    assert_eq!(status, 200);

    // The default budget is five restarts a minute: the sixth panic is one
    // too many.
    for i in 0..6 {
        eventually("the committer is back", || {
            restarts(&server, GROUP_COMMIT_TASK).0 == TaskState::Running
        })
        .await;
        server
            .node
            .supervisor()
            .inject_panic(GROUP_COMMIT_TASK, "batch");
        let (status, _) = send_keyed(&server, &alice, conversation, &format!("k{i}")).await;
        assert_eq!(status, 503);
    }
    eventually("the committer has failed", || {
        restarts(&server, GROUP_COMMIT_TASK).0 == TaskState::Failed
    })
    .await;

    let (status, ready) = get(&server, "/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["failed_tasks"], json!([GROUP_COMMIT_TASK]));
    assert_eq!(ready["tasks"][GROUP_COMMIT_TASK]["state"], "failed");
    assert_eq!(ready["dependencies"]["database"]["ok"], false);
    let (status, live) = get(&server, "/health/live").await;
    assert_eq!(status, 503);
    assert_eq!(live["failed_tasks"], json!([GROUP_COMMIT_TASK]));

    // A send now fails at once, and stores nothing.
    let (status, _) = send_keyed(&server, &alice, conversation, "late").await;
    assert!(status >= 500);
    assert!(
        server
            .metrics()
            .await
            .contains(&format!("worker_up{{worker=\"{GROUP_COMMIT_TASK}\"}} 0"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_restarts_and_the_node_stays_ready() {
    let server = TestServer::start().await;
    let alice = server.user();
    let conversation = group(&alice, &[]).await.id;
    server
        .node
        .supervisor()
        .inject_panic(CHECKPOINT_TASK, "checkpoint");
    eventually("the checkpointer restarted", || {
        restarts(&server, CHECKPOINT_TASK) == (TaskState::Running, 1)
    })
    .await;
    send_texts(&alice, conversation, 3).await;
    let (status, ready) = get(&server, "/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["tasks"][CHECKPOINT_TASK]["restarts"], 1);
}

/// Readiness asks the writer path: with the committer stuck behind a write
/// lock another connection holds, it answers 503 though every reader works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reflects_the_writer_not_a_reader() {
    let server = TestServer::start().await;
    let (status, _) = get(&server, "/health/ready").await;
    assert_eq!(status, 200);
    // Another process takes SQLite's write lock and keeps it.
    let mut holder =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", server.database_path().display()))
            .await
            .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let (status, ready) = get(&server, "/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["dependencies"]["database"]["ok"], false);
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let (status, _) = get(&server, "/health/ready").await;
    assert_eq!(status, 200);
}
