//! A real browser (Debian's Chromium, driven by `playwright-core`) holds an
//! `EventSource` on a node through a proxy that drops the stream; the
//! browser reconnects by itself with `Last-Event-ID` and the page ends with
//! every message once, in order (`tests/browser/eventsource.mjs`).

use std::process::Command;

use switchboard_client::Client;
use switchboard_protocol::{ConversationKind, CreateConversation};
use uuid::Uuid;

use crate::{BIN, Process, SECRET, free_port, token, wait_for_port};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browsers_event_source_resumes_by_itself_and_misses_nothing() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--jwt-secret", SECRET, "--log", "warn"])
        .arg("--data-dir")
        .arg(data.path())
        .spawn()
        .unwrap();
    let _node = Process(child);
    wait_for_port(port);
    let base = format!("http://127.0.0.1:{port}");
    let (receiver, sender) = (Uuid::new_v4(), Uuid::new_v4());
    let room = Client::new(&base, token(sender))
        .create_conversation(&CreateConversation {
            kind: ConversationKind::Group,
            title: Some("browser".into()),
            member_ids: vec![receiver],
        })
        .await
        .unwrap();
    let home = std::env::var("HOME").unwrap_or_default();
    let playwright = std::env::var("SWITCHBOARD_TEST_PLAYWRIGHT")
        .unwrap_or_else(|_| format!("{home}/.cache/switchboard/tools/browser"));
    let chromium =
        std::env::var("SWITCHBOARD_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/eventsource.mjs");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("SWITCHBOARD_BASE", &base)
            .env("RECEIVER_TOKEN", token(receiver))
            .env("SENDER_TOKEN", token(sender))
            .env("CONVERSATION", room.id.to_string())
            .env("CHROMIUM", chromium)
            .env("PLAYWRIGHT", playwright)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("the browser saw: {seen}");
    assert!(
        seen["opens"].as_u64().unwrap() >= 2,
        "it reconnected: {seen}"
    );
    let texts: Vec<&str> = seen["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let expected: Vec<String> = (1..=16).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected, "every message once, in order");
}
