//! What a request costs the database, counted from the statements sqlx logs
//! (`sqlx::query` at `debug`) in a real node's JSON log: one feed request,
//! the same whatever its page size or the number of people the caller
//! follows; one sync, a bounded number whatever the number of
//! conversations. Each line is written synchronously before the
//! statement's result returns, so before the answer leaves.

use serde_json::Value;
use std::process::{Command, Stdio};
use switchboard_client::{Client, RetryPolicy};
use switchboard_protocol::{
    ClientFrame, Control, ConversationKind, CreateConversation, ServerFrame, Sync,
};
use uuid::Uuid;

use crate::{BIN, Process, SECRET, free_port, token, wait_for_port};

/// Statements on any of `tables` in the log, from byte `from` on.
fn statements(log: &std::path::Path, from: usize, tables: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap();
    text[from..]
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "sqlx::query")
        .filter_map(|line| line["db.statement"].as_str().map(str::to_owned))
        .filter(|sql| tables.iter().any(|t| sql.contains(t)))
        .collect()
}

fn feed_statements(log: &std::path::Path, from: usize) -> Vec<String> {
    statements(log, from, &["posts", "follows", "post_likes"])
}

fn log_len(log: &std::path::Path) -> usize {
    usize::try_from(std::fs::metadata(log).unwrap().len()).unwrap()
}

/// A node logging every statement, as JSON, into `log` (rate limits off:
/// the tests set up in bursts).
fn node(port: u16, data: &std::path::Path, log: &std::path::Path) -> Process {
    let child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--jwt-secret", SECRET, "--rate-limits", "false"])
        .args(["--log", "warn,sqlx::query=debug", "--log-format", "json"])
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::from(std::fs::File::create(log).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let process = Process(child);
    wait_for_port(port);
    process
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_of_many_conversations_costs_a_bounded_number_of_queries() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("node.log");
    let _node = node(port, data.path(), &log);
    let base = format!("http://127.0.0.1:{port}");
    let me = Uuid::new_v4();
    let client = Client::new(&base, token(me));
    let mut positions = std::collections::BTreeMap::new();
    for _ in 0..300 {
        let room = client
            .create_conversation(&CreateConversation {
                kind: ConversationKind::Group,
                title: None,
                member_ids: Vec::new(),
            })
            .await
            .unwrap();
        positions.insert(room.id, 0);
    }
    let mut stream = client.connect().await.unwrap();
    assert!(matches!(
        stream.next().await.unwrap(),
        Some(ServerFrame::Control(Control::Hello(_)))
    ));
    let from = log_len(&log);
    stream
        .send(&ClientFrame::Sync(Sync { positions }))
        .await
        .unwrap();
    let mut events = 0;
    loop {
        match stream.next().await.unwrap() {
            Some(ServerFrame::Event(_)) => events += 1,
            Some(ServerFrame::Control(Control::Synced(synced))) => {
                assert!(synced.incomplete.is_empty(), "{synced:?}");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(events, 300, "each conversation's creation");
    let reads = statements(&log, from, &["FROM events", "JOIN events"]);
    eprintln!(
        "a sync of 300 conversations: {} reads of events",
        reads.len()
    );
    assert_eq!(
        reads.len(),
        2,
        "300 conversations in chunks of 256: {reads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_request_costs_the_same_queries_at_any_size() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("node.log");
    let _node = node(port, data.path(), &log);
    let base = format!("http://127.0.0.1:{port}");
    let client = |user: Uuid| Client::new(&base, token(user));

    // 40 authors with 3 posts each; one reader follows 2 of them, another 40.
    let authors: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    for author in &authors {
        let author = client(*author);
        for n in 0..3 {
            author
                .create_post_retried(&format!("post {n}"), None, RetryPolicy::default())
                .await
                .unwrap();
        }
    }
    let mut counts = Vec::new();
    for graph in [2, 40] {
        let reader = Uuid::new_v4();
        let reader_client = client(reader);
        for author in &authors[..graph] {
            reader_client.follow(*author, true).await.unwrap();
        }
        for limit in [5, 50] {
            let from = log_len(&log);
            let page = reader_client.feed(Some(limit), None).await.unwrap();
            assert_eq!(page.source, switchboard_protocol::FeedSource::Ranked);
            assert_eq!(page.posts.len(), (limit as usize).min(graph * 3));
            let ranked = feed_statements(&log, from);
            let last = page.posts.last().unwrap();
            let cursor = format!(
                "t{}_{}",
                last.created_at.timestamp_micros(),
                last.id.simple()
            );
            let from = log_len(&log);
            reader_client
                .feed(Some(limit), Some(&cursor))
                .await
                .unwrap();
            let recent = feed_statements(&log, from);
            eprintln!(
                "follows {graph}, limit {limit}: {} ranked, {} recent",
                ranked.len(),
                recent.len()
            );
            counts.push((ranked.len(), recent.len()));
        }
    }
    assert!(
        counts.iter().all(|c| *c == (1, 1)),
        "one query per feed page whatever its size or graph: {counts:?}"
    );
}
