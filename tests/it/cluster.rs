//! Three real `switchboard` processes on loopback ports, sharing PostgreSQL
//! and a `redis-server` this test starts and stops: clients spread over the
//! nodes each receive every acknowledged message exactly once, in `seq`
//! order, even when Redis stops in the middle of the send load.

use std::process::{Command, Stdio};
use std::time::Duration;

use switchboard_client::{Client, EventStream};
use switchboard_protocol::{
    ClientFrame, Control, ConversationKind, CreateConversation, Event, EventFrame, Message,
    SendMessage, ServerFrame, Sync,
};
use uuid::Uuid;

use crate::{BIN, Process, SECRET, free_port, token, wait_for_port};

pub(crate) fn redis_server(port: u16) -> Process {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let process = Process(child);
    wait_for_port(port);
    process
}

/// A fresh database on the test server, dropped afterwards.
pub(crate) struct Database {
    admin: String,
    name: String,
    pub(crate) url: String,
}

impl Database {
    pub(crate) fn create() -> Self {
        let admin = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
            .expect("cluster tests need SWITCHBOARD_TEST_POSTGRES_URL");
        let name = format!("cluster_{}", Uuid::new_v4().simple());
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let base = admin.split('?').next().unwrap();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        Self { admin, name, url }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) {
    let status = Command::new("psql")
        .args([url, "-qc", sql])
        .stdout(Stdio::null())
        .status()
        .expect("psql is installed");
    assert!(status.success(), "psql failed: {sql}");
}

pub(crate) fn node(port: u16, database: &str, redis: &str, data: &std::path::Path) -> Process {
    let child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", database, "--redis-url", redis])
        .args(["--jwt-secret", SECRET, "--log", "warn"])
        .arg("--data-dir")
        .arg(data)
        .spawn()
        .unwrap();
    let process = Process(child);
    wait_for_port(port);
    process
}

/// Connects and starts live delivery with an empty `sync`.
async fn connect(client: &Client) -> EventStream {
    let mut stream = client.connect().await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        Ok(Ok(Some(ServerFrame::Control(Control::Hello(_))))) => {}
        other => panic!("expected hello, got {other:?}"),
    }
    stream
        .send(&ClientFrame::Sync(Sync::default()))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        Ok(Ok(Some(ServerFrame::Control(Control::Synced(_))))) => stream,
        other => panic!("expected synced, got {other:?}"),
    }
}

/// Exactly `want`, in order, and nothing more.
async fn assert_got(i: usize, stream: &mut EventStream, want: &[Message]) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < want.len() {
        let frame = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("client {i}: only {} of {} arrived", got.len(), want.len()))
            .unwrap()
            .unwrap();
        match frame {
            ServerFrame::Event(EventFrame {
                event: Event::MessageNew(m),
                ..
            }) => got.push((m.seq, m.id)),
            other => panic!("client {i}: unexpected {other:?}"),
        }
    }
    let want: Vec<(i64, Uuid)> = want.iter().map(|m| (m.seq, m.id)).collect();
    assert_eq!(
        got, want,
        "client {i}: every acknowledged message once, in seq order"
    );
    let extra = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
    assert!(extra.is_err(), "client {i}: got more: {extra:?}");
}

/// `redis_pubsub_failure_total`, summed over reasons, from a node's `/metrics`.
fn publish_failures(port: u16) -> u64 {
    crate::metric(port, "redis_pubsub_failure_total{")
}

fn text(conversation_id: Uuid, n: usize) -> SendMessage {
    SendMessage {
        conversation_id,
        encrypted_content: "aGVsbG8=".into(),
        nonce: "bm9uY2U=".into(),
        message_type: "text".into(),
        idempotency_key: Some(format!("k{n}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_deliver_everything_once_across_a_redis_restart() {
    let database = Database::create();
    let redis_port = free_port();
    let redis = redis_server(redis_port);
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let data = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // The first node creates the schema; the others find it there.
    let mut nodes = vec![node(
        ports[0],
        &database.url,
        &redis_url,
        &data.path().join("0"),
    )];
    for (i, port) in ports.iter().enumerate().skip(1) {
        nodes.push(node(
            *port,
            &database.url,
            &redis_url,
            &data.path().join(i.to_string()),
        ));
    }
    let base = |i: usize| format!("http://127.0.0.1:{}", ports[i % 3]);

    let users: Vec<(Uuid, String)> = (0..6)
        .map(|_| {
            let id = Uuid::new_v4();
            (id, token(id))
        })
        .collect();
    let conversation = Client::new(base(0), &users[0].1)
        .create_conversation(&CreateConversation {
            kind: ConversationKind::Group,
            title: Some("processes".into()),
            member_ids: users[1..].iter().map(|(id, _)| *id).collect(),
        })
        .await
        .unwrap()
        .id;
    let mut streams = Vec::new();
    for (i, (_, token)) in users.iter().enumerate() {
        streams.push(connect(&Client::new(base(i), token)).await);
    }

    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for (i, (_, token)) in users.iter().enumerate() {
        let client = Client::new(base(i + 1), token);
        let sent = std::sync::Arc::clone(&sent);
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..60 {
                let message = client.send(&text(conversation, n)).await.unwrap().message;
                acked.push(message);
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            acked
        }));
    }
    let reach = |count: usize| {
        let sent = std::sync::Arc::clone(&sent);
        async move {
            while sent.load(std::sync::atomic::Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    reach(80).await;
    drop(redis);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let during = sent.load(std::sync::atomic::Ordering::SeqCst);
    let _redis = redis_server(redis_port);
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    acked.sort_by_key(|m| m.seq);
    assert_eq!(acked.len(), 360);
    assert!(during < 360, "the outage ended before the load did");
    // The outage was real: the nodes failed to publish and said so.
    let failures: u64 = ports.iter().map(|port| publish_failures(*port)).sum();
    assert!(failures > 0, "no node noticed Redis was gone");
    for (i, stream) in streams.iter_mut().enumerate() {
        assert_got(i, stream, &acked).await;
    }
}
