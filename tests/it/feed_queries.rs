//! One feed request costs the same number of database queries whatever its
//! page size or the number of people the caller follows: counted from the
//! statements sqlx logs (`sqlx::query` at `debug`) in a real node's JSON
//! log, while nothing else touches the feed's tables. Each line is written
//! synchronously before the statement's result returns, so before the
//! answer leaves.

use serde_json::Value;
use std::process::{Command, Stdio};
use switchboard_client::{Client, RetryPolicy};
use uuid::Uuid;

use crate::{BIN, Process, SECRET, free_port, token, wait_for_port};

/// Statements on the feed's tables in the log, from byte `from` on.
fn feed_statements(log: &std::path::Path, from: usize) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap();
    text[from..]
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "sqlx::query")
        .filter_map(|line| line["db.statement"].as_str().map(str::to_owned))
        .filter(|sql| {
            ["posts", "follows", "post_likes"]
                .iter()
                .any(|t| sql.contains(t))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_request_costs_the_same_queries_at_any_size() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("node.log");
    let child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--jwt-secret", SECRET])
        .args(["--log", "warn,sqlx::query=debug", "--log-format", "json"])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _node = Process(child);
    wait_for_port(port);
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
            let from = std::fs::metadata(&log).unwrap().len() as usize;
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
            let from = std::fs::metadata(&log).unwrap().len() as usize;
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
