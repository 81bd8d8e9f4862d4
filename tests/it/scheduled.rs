//! Scheduled messages across the life of real server processes: stopped
//! before they are due and started after, killed with SIGKILL in the middle
//! of a burst of deliveries, and (feature `cluster-tests`) two nodes on one
//! PostgreSQL with one killed mid-burst. Each is sent exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use switchboard_client::Client;
use switchboard_protocol::{
    ConversationKind, CreateConversation, Event, ScheduleMessage, ScheduledStatus,
};
use uuid::Uuid;

use crate::{BIN, Process, SECRET, free_port, metric, token, wait_for_port};

/// Entries in a burst.
const BURST: usize = 1_000;

/// How far ahead a burst is due: room to schedule all of it on a debug
/// build sharing two cores with the other tests (6 s was once too little).
const BURST_AHEAD: TimeDelta = TimeDelta::seconds(20);

/// A node on `port` over `data`, on `database` (embedded SQLite when
/// `None`), letting one user schedule a whole burst.
fn server(port: u16, data: &Path, database: Option<&str>) -> Process {
    server_with(port, data, database, &[])
}

fn server_with(port: u16, data: &Path, database: Option<&str>, args: &[&str]) -> Process {
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--jwt-secret", SECRET, "--log", "warn"])
        .args(["--scheduled-per-user-max", "100000"])
        // One user schedules the whole burst at once.
        .args([
            "--rate-user-per-sec",
            "100000",
            "--rate-user-burst",
            "100000",
        ])
        .args(["--rate-ip-per-sec", "100000", "--rate-ip-burst", "100000"])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::null());
    if let Some(url) = database {
        command.args(["--database-url", url]);
    }
    let process = Process(command.spawn().unwrap());
    wait_for_port(port);
    process
}

/// Stops a server as an operator does (SIGTERM) and waits for it.
fn stop(mut process: Process) {
    let status = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = process.0.wait().unwrap();
    assert!(exit.success(), "a clean stop: {exit}");
}

fn later(body: &str, deliver_at: DateTime<Utc>) -> ScheduleMessage {
    ScheduleMessage {
        deliver_at,
        encrypted_content: STANDARD.encode(body),
        nonce: STANDARD.encode("nonce-0123456789"),
        message_type: "text".into(),
        idempotency_key: Some(body.replace(' ', "-")),
    }
}

async fn group(owner: &Client, member: Uuid) -> Uuid {
    owner
        .create_conversation(&CreateConversation {
            kind: ConversationKind::Group,
            title: Some("scheduled".into()),
            member_ids: vec![member],
        })
        .await
        .unwrap()
        .id
}

/// How often each message body is in the conversation's log.
async fn bodies(client: &Client, conversation: Uuid) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = client.events(conversation, after, 1000).await.unwrap();
        let Some(last) = page.events.last() else {
            return counts;
        };
        after = last.seq();
        for event in &page.events {
            if let Event::MessageNew(m) = event {
                let body = String::from_utf8(STANDARD.decode(&m.encrypted_content).unwrap());
                *counts.entry(body.unwrap()).or_default() += 1;
            }
        }
    }
}

/// Waits until the log holds `want` distinct bodies; fails after `within`.
async fn until_delivered(
    client: &Client,
    conversation: Uuid,
    want: usize,
    within: Duration,
) -> BTreeMap<String, usize> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let counts = bodies(client, conversation).await;
        if counts.len() >= want {
            return counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {want} delivered",
            counts.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Schedules a burst of entries all due at `due`, eight at a time.
async fn schedule_burst(client: &Client, conversation: Uuid, due: DateTime<Utc>) {
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..8 {
        let client = client.clone();
        tasks.spawn(async move {
            for i in (lane..BURST).step_by(8) {
                let scheduled = client
                    .schedule(conversation, &later(&format!("b{i}"), due))
                    .await
                    .unwrap();
                assert_eq!(scheduled.entry.status, ScheduledStatus::Pending);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert!(
        Utc::now() < due,
        "scheduling the burst took past its due time: the test proves nothing"
    );
}

/// Scheduled messages sent by the nodes on `ports`, from their `/metrics`.
fn sent_by(ports: &[u16]) -> u64 {
    ports
        .iter()
        .map(|port| metric(*port, "scheduled_messages_total{outcome=\"sent\"}"))
        .sum()
}

/// Waits until the nodes on `ports` have sent some of the burst.
async fn until_some_sent(ports: &[u16]) -> u64 {
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(30) + BURST_AHEAD.to_std().unwrap();
    loop {
        let sent = sent_by(ports);
        if sent > 0 {
            return sent;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_once_each(counts: &BTreeMap<String, usize>, bodies: impl Iterator<Item = String>) {
    for body in bodies {
        assert_eq!(counts.get(&body), Some(&1), "{body} sent once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_go_once_across_a_stop_and_a_kill() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (owner_id, member_id) = (Uuid::new_v4(), Uuid::new_v4());
    let owner = Client::new(&base, token(owner_id));
    let process = server(port, data.path(), None);
    let conversation = group(&owner, member_id).await;

    // Stopped before it is due, started after: sent once, on start.
    let due = Utc::now() + TimeDelta::seconds(2);
    owner
        .schedule(conversation, &later("across the stop", due))
        .await
        .unwrap();
    stop(process);
    while Utc::now() < due + TimeDelta::seconds(1) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let process = server(port, data.path(), None);
    let counts = until_delivered(&owner, conversation, 1, Duration::from_secs(20)).await;
    assert_eq!(counts.get("across the stop"), Some(&1));

    // Killed in the middle of a burst and started again.
    let due = Utc::now() + BURST_AHEAD;
    schedule_burst(&owner, conversation, due).await;
    let before_kill = until_some_sent(&[port]).await;
    eprintln!("sent before the kill: {before_kill}");
    drop(process);
    assert!(
        before_kill < BURST as u64,
        "the kill came after the burst ({before_kill} sent)"
    );
    let _process = server(port, data.path(), None);
    let counts = until_delivered(&owner, conversation, BURST + 1, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts_later = bodies(&owner, conversation).await;
    assert_eq!(counts, counts_later, "nothing more goes later");
    assert_once_each(&counts, (0..BURST).map(|i| format!("b{i}")));
    assert_eq!(counts.values().sum::<usize>(), BURST + 1);
    let pending = owner.scheduled(None).await.unwrap().scheduled_messages;
    assert!(pending.is_empty(), "{} still pending", pending.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_found_long_past_due_fails_too_late_instead_of_going_stale() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let late_max = ["--scheduled-late-max-secs", "1"];
    let process = server_with(port, data.path(), None, &late_max);
    let owner = Client::new(format!("http://127.0.0.1:{port}"), token(Uuid::new_v4()));
    let conversation = group(&owner, Uuid::new_v4()).await;
    let due = Utc::now() + TimeDelta::seconds(2);
    let entry = owner
        .schedule(conversation, &later("stale", due))
        .await
        .unwrap()
        .entry;
    stop(process);
    while Utc::now() < due + TimeDelta::seconds(2) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _process = server_with(port, data.path(), None, &late_max);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let listed = owner.scheduled(None).await.unwrap().scheduled_messages;
        if let Some(failed) = listed
            .into_iter()
            .find(|e| e.status == ScheduledStatus::Failed)
        {
            break failed;
        }
        assert!(tokio::time::Instant::now() < deadline, "never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed.id, entry.id);
    assert_eq!(
        failed.failure_reason,
        Some(switchboard_protocol::ScheduledFailure::TooLate)
    );
    assert!(
        bodies(&owner, conversation).await.is_empty(),
        "nothing sent"
    );
}

/// Two nodes on one PostgreSQL share the queue; one is killed with SIGKILL
/// in the middle of a burst, and the other delivers what it held once its
/// claims run out.
#[cfg(feature = "cluster-tests")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgres_send_each_once_when_one_is_killed() {
    let database = crate::cluster::Database::create();
    let data = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    // The first node creates the schema; the second finds it there.
    let first = server(ports[0], &data.path().join("0"), Some(&database.url));
    let _second = server(ports[1], &data.path().join("1"), Some(&database.url));
    let (owner_id, member_id) = (Uuid::new_v4(), Uuid::new_v4());
    let owner = Client::new(format!("http://127.0.0.1:{}", ports[0]), token(owner_id));
    let reader = Client::new(format!("http://127.0.0.1:{}", ports[1]), token(owner_id));
    let conversation = group(&owner, member_id).await;

    let due = Utc::now() + BURST_AHEAD;
    schedule_burst(&owner, conversation, due).await;
    let before_kill = until_some_sent(&ports).await;
    drop(first);
    assert!(
        before_kill < BURST as u64,
        "the kill came after the burst ({before_kill} sent)"
    );
    // The killed node's claims run out after their lease (15 s).
    let counts = until_delivered(&reader, conversation, BURST, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(counts, bodies(&reader, conversation).await);
    assert_once_each(&counts, (0..BURST).map(|i| format!("b{i}")));
    assert_eq!(counts.values().sum::<usize>(), BURST);
    assert!(
        sent_by(&ports[1..]) > 0,
        "the surviving node delivered its share"
    );
}
