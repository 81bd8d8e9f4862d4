//! The Redis bus against real servers: the machine's Redis (named by
//! `SWITCHBOARD_TEST_REDIS_URL`, each test under its own key prefix) and
//! private `redis-server` processes for the tests that stop Redis.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use switchboard_protocol::{Event, MessageRead};
use switchboard_storage::{Bus, BusError, BusSignal, Topic};
use switchboard_storage_redis::{RedisBus, RedisOptions};
use tokio::sync::mpsc;
use uuid::Uuid;

fn url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL")
        .expect("the redis-tests feature needs SWITCHBOARD_TEST_REDIS_URL")
}

fn options(url: &str, prefix: &str) -> RedisOptions {
    let mut options = RedisOptions::new(url);
    options.key_prefix = prefix.to_owned();
    options
}

fn bus(url: &str, prefix: &str) -> (RedisBus, mpsc::Receiver<BusSignal>) {
    let (tx, rx) = mpsc::channel(1024);
    (
        RedisBus::new(options(url, prefix), tx, &crate::supervisor()).unwrap(),
        rx,
    )
}

fn event(conversation_id: Uuid, seq: i64) -> Event {
    Event::MessageRead(MessageRead {
        conversation_id,
        seq,
        user_id: Uuid::nil(),
        read_seq: seq - 1,
    })
}

async fn publish(bus: &RedisBus, event: &Event) -> Result<(), BusError> {
    bus.publish(event, &serde_json::to_vec(event).unwrap())
        .await
}

/// The next event signal, skipping `Lost`; fails after 5 s.
async fn next_event(rx: &mut mpsc::Receiver<BusSignal>) -> Event {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(BusSignal::Event(event))) => return event,
            Ok(Some(BusSignal::Lost | BusSignal::Subscribed(_))) => {}
            other => panic!("no event arrived: {other:?}"),
        }
    }
}

/// Publishes until the subscriber hears one (subscribing is asynchronous).
/// The warm-up uses seq 0, which no stream accepts, so the stream stays clean.
async fn until_heard(publisher: &RedisBus, rx: &mut mpsc::Receiver<BusSignal>, conversation: Uuid) {
    for _ in 0..100 {
        publish(publisher, &event(conversation, 0)).await.unwrap();
        if let Ok(Some(BusSignal::Event(_))) =
            tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
        {
            // Drain any duplicates of the warm-up.
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await
            {
            }
            return;
        }
    }
    panic!("the subscription never took effect");
}

#[tokio::test]
async fn events_reach_subscribers_in_order_on_the_seed_channel() {
    let url = url();
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    let conversation = Uuid::new_v4();
    let (publisher, _) = bus(&url, &prefix);
    let (listener, mut rx) = bus(&url, &prefix);

    // An operator's view: a plain PSUBSCRIBE on the documented pattern.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut operator = client.get_async_pubsub().await.unwrap();
    operator
        .psubscribe(format!("{prefix}conversation:*:messages"))
        .await
        .unwrap();

    listener.subscribe(Topic::Conversation(conversation));
    until_heard(&publisher, &mut rx, conversation).await;
    let mut operator_messages = operator.on_message();
    let warmup: redis::Msg = tokio::time::timeout(Duration::from_secs(5), operator_messages.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        warmup.get_channel_name(),
        format!("{prefix}conversation:{conversation}:messages")
    );
    let shown: serde_json::Value = serde_json::from_slice(warmup.get_payload_bytes()).unwrap();
    assert_eq!(shown["type"], "message.read");
    assert_eq!(shown["data"]["conversation_id"], conversation.to_string());

    for seq in 1..=20 {
        publish(&publisher, &event(conversation, seq))
            .await
            .unwrap();
    }
    for seq in 1..=20 {
        assert_eq!(next_event(&mut rx).await, event(conversation, seq));
    }
    // The stream holds them by seq.
    let tail = listener.tail(conversation, 15, 100).await.unwrap();
    assert_eq!(
        tail.iter().map(Event::seq).collect::<Vec<_>>(),
        vec![16, 17, 18, 19, 20]
    );
    listener.ping().await.unwrap();

    // Unsubscribed, nothing more arrives.
    listener.unsubscribe(Topic::Conversation(conversation));
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx.try_recv().is_ok() {}
    publish(&publisher, &event(conversation, 21)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), next_event(&mut rx))
            .await
            .is_err()
    );
    forget(&url, &prefix).await;
}

#[tokio::test]
async fn a_trim_keeps_the_stream_near_its_bound() {
    let url = url();
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    let conversation = Uuid::new_v4();
    let (bus, _) = bus(&url, &prefix);
    for seq in 1..=2_000 {
        publish(&bus, &event(conversation, seq)).await.unwrap();
    }
    assert_eq!(bus.stream_len(conversation).await.unwrap(), 2_000);
    let removed = bus.trim(conversation, 500).await.unwrap();
    let len = bus.stream_len(conversation).await.unwrap();
    assert_eq!(removed + len, 2_000);
    assert!((500..=600).contains(&len), "about 500 kept, got {len}");
    // The tail still answers from what is left, oldest first.
    let tail = bus.tail(conversation, 0, 10).await.unwrap();
    assert_eq!(tail.len(), 10);
    assert_eq!(tail[0].seq(), 2_000 - i64::try_from(len).unwrap() + 1);
    forget(&url, &prefix).await;
}

#[tokio::test]
async fn an_unreachable_redis_fails_fast_and_nothing_blocks() {
    let port = free_port();
    let (bus, _) = bus(&format!("redis://127.0.0.1:{port}"), "");
    let started = std::time::Instant::now();
    let error = publish(&bus, &event(Uuid::new_v4(), 1)).await.unwrap_err();
    assert!(matches!(error, BusError::Unavailable(_)), "{error:?}");
    assert!(bus.ping().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_subscriber_comes_back_after_redis_restarts() {
    let port = free_port();
    let mut server = RedisServer::start(port);
    let url = format!("redis://127.0.0.1:{port}");
    let conversation = Uuid::new_v4();
    let (publisher, _) = bus(&url, "");
    let (listener, mut rx) = bus(&url, "");
    listener.subscribe(Topic::Conversation(conversation));
    until_heard(&publisher, &mut rx, conversation).await;

    server.stop();
    assert!(publish(&publisher, &event(conversation, 1)).await.is_err());
    let lost = async {
        loop {
            if let Some(BusSignal::Lost) = rx.recv().await {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), lost)
        .await
        .expect("the loss is reported");

    let _server = RedisServer::start(port);
    // Publishing works again once the connection is re-made, and the
    // subscription is back without anyone asking.
    until_heard(
        &publisher_when_up(&publisher, conversation).await,
        &mut rx,
        conversation,
    )
    .await;
}

async fn publisher_when_up(publisher: &RedisBus, conversation: Uuid) -> RedisBus {
    for _ in 0..100 {
        if publish(publisher, &event(conversation, 0)).await.is_ok() {
            return publisher.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("publishing never recovered");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private `redis-server` that keeps nothing on disk.
struct RedisServer(Child);

impl RedisServer {
    fn start(port: u16) -> Self {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self(child);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start on {port}");
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deletes a test's keys from the shared server.
async fn forget(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    if !keys.is_empty() {
        let () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
}
