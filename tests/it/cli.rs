//! The client library's sender and live stream, and the CLI, against a real
//! server process that is stopped and started again on the same port and
//! data folder.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use switchboard_client::{Client, Failure, GiveUp, RetryPolicy, SendReport, Sender, Settled};
use switchboard_protocol::{ConversationKind, CreateConversation, Event, Message, SendMessage};
use uuid::Uuid;

use crate::{BIN, Process, SECRET, free_port, token, wait_for_port};

/// A server on `port` over the data folder `data`.
fn server(port: u16, data: &Path) -> Process {
    let child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--jwt-secret", SECRET, "--log", "warn"])
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let process = Process(child);
    wait_for_port(port);
    process
}

fn text(conversation_id: Uuid, body: &str) -> SendMessage {
    SendMessage {
        conversation_id,
        encrypted_content: STANDARD.encode(body),
        nonce: STANDARD.encode("nonce-0123456789"),
        message_type: "text".into(),
        idempotency_key: None,
    }
}

fn body(message: &Message) -> String {
    String::from_utf8(STANDARD.decode(&message.encrypted_content).unwrap()).unwrap()
}

async fn group(owner: &Client, members: &[Uuid]) -> Uuid {
    owner
        .create_conversation(&CreateConversation {
            kind: ConversationKind::Group,
            title: Some("cli".into()),
            member_ids: members.to_vec(),
        })
        .await
        .unwrap()
        .id
}

/// Retries quickly, so an outage of a second or two spans several attempts.
fn quick(attempts_max: u32) -> RetryPolicy {
    RetryPolicy {
        attempts_max,
        delay_min: Duration::from_millis(200),
        delay_max: Duration::from_secs(2),
        jitter: 0.2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_through_a_server_restart_are_stored_once_each_in_order() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut process = Some(server(port, data.path()));
    let alice = Client::new(&base, token(Uuid::new_v4()));
    let conversation = group(&alice, &[Uuid::new_v4()]).await;
    let mut sender = Sender::start(alice.clone(), quick(5), 100);
    for i in 0..40 {
        sender
            .send(text(conversation, &format!("m{i}")))
            .await
            .unwrap();
    }
    let mut settled = Vec::new();
    let mut most_attempts = 0;
    let mut retries = 0;
    while settled.len() < 40 {
        let report = tokio::time::timeout(Duration::from_secs(30), sender.next())
            .await
            .expect("a report")
            .expect("sender running");
        match report {
            SendReport::Attempt { attempt, .. } => most_attempts = most_attempts.max(attempt),
            SendReport::Retrying { .. } => retries += 1,
            SendReport::Settled(outcome) => {
                settled.push(*outcome);
                // Stop the server in the middle of the burst; bring it back
                // after a second and a half.
                if settled.len() == 10 {
                    drop(process.take());
                    let data = data.path().to_owned();
                    process = Some(
                        tokio::task::spawn_blocking(move || {
                            std::thread::sleep(Duration::from_millis(1500));
                            server(port, &data)
                        })
                        .await
                        .unwrap(),
                    );
                }
            }
        }
    }
    assert!(retries > 0, "the outage was noticed");
    assert!(most_attempts <= 5, "no attempt past the limit");
    for outcome in &settled {
        assert!(matches!(outcome, Settled::Sent { .. }), "{outcome:?}");
    }
    let stored = alice
        .messages(conversation, None, None, Some(200))
        .await
        .unwrap()
        .messages;
    let bodies: Vec<String> = stored.iter().map(body).collect();
    let want: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want, "every send stored once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_gives_up_at_the_attempt_limit_and_a_refused_one_at_once() {
    // Nothing listens: every attempt fails, and the third is the last.
    let nowhere = Client::new(format!("http://127.0.0.1:{}", free_port()), "token");
    let mut sender = Sender::start(nowhere, quick(3), 10);
    sender.send(text(Uuid::new_v4(), "lost")).await.unwrap();
    let mut attempts = 0;
    let outcome = loop {
        match sender.next().await.unwrap() {
            SendReport::Attempt { .. } => attempts += 1,
            SendReport::Retrying { .. } => {}
            SendReport::Settled(outcome) => break *outcome,
        }
    };
    assert_eq!(attempts, 3);
    assert!(matches!(
        outcome,
        Settled::Failed {
            reason: GiveUp::Exhausted { attempts: 3, .. },
            ..
        }
    ));
    let more = tokio::time::timeout(Duration::from_secs(1), sender.next()).await;
    assert!(more.is_err(), "no attempt after giving up: {more:?}");

    // A member removed from the conversation: refused for good, at once.
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = server(port, data.path());
    let (alice_id, bob_id) = (Uuid::new_v4(), Uuid::new_v4());
    let alice = Client::new(&base, token(alice_id));
    let bob = Client::new(&base, token(bob_id));
    let conversation = group(&alice, &[bob_id]).await;
    alice.remove_member(conversation, bob_id).await.unwrap();
    let mut sender = Sender::start(bob, quick(5), 10);
    sender.send(text(conversation, "too late")).await.unwrap();
    let mut reports = Vec::new();
    loop {
        let report = sender.next().await.unwrap();
        let done = matches!(report, SendReport::Settled(_));
        reports.push(report);
        if done {
            break;
        }
    }
    assert_eq!(reports.len(), 2, "one attempt, then settled: {reports:?}");
    let SendReport::Settled(settled) = &reports[1] else {
        panic!("settled second: {reports:?}");
    };
    assert!(
        matches!(
            **settled,
            Settled::Failed {
                reason: GiveUp::Permanent(Failure::Status { code: 404, .. }),
                ..
            }
        ),
        "{settled:?}"
    );
}

/// Lines a child process prints, read on a thread.
fn lines(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

/// The `message.new` events among `tail`'s lines until `count` arrived.
fn tail_messages(out: &std::sync::mpsc::Receiver<String>, count: usize) -> Vec<Message> {
    let mut messages = Vec::new();
    while messages.len() < count {
        let line = out
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("only {} of {count} messages", messages.len()));
        if let Event::MessageNew(message) = serde_json::from_str(&line).expect("a JSON event") {
            messages.push(message);
        }
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_survives_a_server_restart_and_shows_everything_once() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let process = server(port, data.path());
    let (alice_id, bob_id) = (Uuid::new_v4(), Uuid::new_v4());
    let alice = Client::new(&base, token(alice_id));
    let conversation = group(&alice, &[bob_id]).await;
    let mut tail = Command::new(BIN)
        .args(["tail", "--server", &base, "--token", &token(bob_id)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(tail.stdout.take().unwrap());
    let err = lines(tail.stderr.take().unwrap());
    let _tail = Process(tail);
    let connected = err.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(connected.starts_with("connected"), "{connected}");
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(
            alice
                .send(&text(conversation, &format!("before {i}")))
                .await
                .unwrap()
                .message,
        );
    }
    let mut shown = tail_messages(&out, 3);
    // Restart the server; send while tail is still reconnecting, then after.
    drop(process);
    let _process = server(port, data.path());
    for i in 0..3 {
        sent.push(
            alice
                .send(&text(conversation, &format!("during {i}")))
                .await
                .unwrap()
                .message,
        );
    }
    let reconnected = loop {
        let line = err.recv_timeout(Duration::from_secs(20)).unwrap();
        if line.starts_with("connected") {
            break line;
        }
    };
    assert!(reconnected.contains(&base));
    for i in 0..2 {
        sent.push(
            alice
                .send(&text(conversation, &format!("after {i}")))
                .await
                .unwrap()
                .message,
        );
    }
    shown.extend(tail_messages(&out, 5));
    assert_eq!(shown, sent, "every message once, in order");
    assert!(
        out.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing twice"
    );
}

#[test]
fn the_cli_sends_lists_and_reads_history_and_says_why_it_fails() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = server(port, data.path());
    let (alice_id, bob_id) = (Uuid::new_v4(), Uuid::new_v4());
    let alice = token(alice_id);
    let run = |token: &str, args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("SWITCHBOARD_SERVER", &base)
            .env("SWITCHBOARD_TOKEN", token)
            .output()
            .unwrap()
    };
    let created = run(
        &alice,
        &[
            "conversations",
            "create",
            "--title",
            "trip",
            "--member",
            &bob_id.to_string(),
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let conversation = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let sent = run(&alice, &["send", &conversation, "hello bob"]);
    assert!(sent.status.success(), "{sent:?}");
    let message: Message = serde_json::from_slice(&sent.stdout).unwrap();
    assert_eq!(message.seq, 2);
    assert_eq!(body(&message), "hello bob");
    let history = run(&alice, &["history", &conversation]);
    let history = String::from_utf8(history.stdout).unwrap();
    assert!(history.starts_with("#2 "), "{history}");
    assert!(
        history
            .trim_end()
            .ends_with(&format!("{alice_id}: hello bob")),
        "{history}"
    );
    let list = run(&alice, &["conversations"]);
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(
        list.contains(&conversation) && list.contains("trip"),
        "{list}"
    );
    // A stranger is refused at once, with a one-line reason and exit 1.
    let refused = run(&token(Uuid::new_v4()), &["send", &conversation, "hi"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert!(stderr.contains("not retried"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
