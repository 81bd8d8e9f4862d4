//! A rolling restart on real processes: three nodes on PostgreSQL and Redis
//! behind a TCP balancer this test owns, as a Service in front of pods.
//! Each node in turn leaves the rotation (its endpoints removed during the
//! pod's preStop pause), gets SIGTERM, drains, and is started again on its
//! port and data folder; then a second round sends SIGTERM while the node
//! is still in the rotation; clients reconnect through the balancer to another
//! node and resume or sync while senders keep sending with the client's
//! retry policy. Every acknowledged message must reach every client exactly
//! once, in order, and no send may be given up. Prints, per node, the drain
//! time and the longest gap in delivery a client saw while it restarted.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_client::{
    Client, Live, LiveEvent, LiveOptions, Place, RetryPolicy, SendReport, Sender, Settled,
};
use switchboard_protocol::{ConversationKind, CreateConversation, Event, SendMessage};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::cluster::{Database, node, redis_server};
use crate::{Process, free_port, token};

const NODES: usize = 3;
const RECEIVERS: usize = 6;
const SENDERS: usize = 3;
/// Between one sender's sends.
const SEND_EVERY: Duration = Duration::from_millis(20);

/// A TCP balancer: each new connection goes to the next backend in the
/// rotation, round-robin, and bytes are copied both ways until either side
/// closes. Connections already open stay where they are, as with a
/// Kubernetes Service: a draining node closes them itself.
struct Balancer {
    port: u16,
    in_rotation: Arc<Mutex<Vec<bool>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    async fn start(backends: Vec<u16>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let in_rotation = Arc::new(Mutex::new(vec![true; backends.len()]));
        let rotation = Arc::clone(&in_rotation);
        let task = tokio::spawn(async move {
            let next = AtomicUsize::new(0);
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let candidates: Vec<u16> = {
                    let up = rotation.lock().unwrap();
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    (0..backends.len())
                        .map(|k| (start + k) % backends.len())
                        .filter(|&i| up[i])
                        .map(|i| backends[i])
                        .collect()
                };
                tokio::spawn(async move {
                    for backend in candidates {
                        if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", backend)).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                    // Nothing in rotation answers: the client sees a reset
                    // and retries.
                });
            }
        });
        Self {
            port,
            in_rotation,
            task,
        }
    }

    fn set(&self, backend: usize, in_rotation: bool) {
        self.in_rotation.lock().unwrap()[backend] = in_rotation;
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the node on `port` answers `/health/ready` with 200.
fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let request = b"GET /health/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut answer = String::new();
    socket.write_all(request).is_ok()
        && socket.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

async fn until_ready(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ready(port) {
        assert!(tokio::time::Instant::now() < deadline, "{port} never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, then the time until the process has exited (cleanly).
async fn drain(mut process: Process) -> Duration {
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || process.0.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "a clean stop: {exit}");
    started.elapsed()
}

/// What one receiver got: each message's seq and id, and when.
type Received = Arc<Mutex<Vec<(i64, Uuid, Instant)>>>;

/// Follows `client` with the library's reconnecting stream in a task of
/// its own, recording every message it hands over and counting
/// connections; aborting the task drops the stream.
fn receive(
    client: Client,
    received: Received,
    connected: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let options = LiveOptions {
        reconnect: RetryPolicy {
            attempts_max: 60,
            delay_min: Duration::from_millis(50),
            delay_max: Duration::from_secs(1),
            jitter: 0.2,
        },
        buffer_len: 4096,
    };
    let mut live = Live::start(client, Place::new(), options);
    tokio::spawn(async move {
        while let Some(event) = live.next().await {
            match event {
                LiveEvent::Event(Event::MessageNew(m)) => {
                    received.lock().unwrap().push((m.seq, m.id, Instant::now()));
                }
                LiveEvent::Connected => {
                    connected.fetch_add(1, Ordering::SeqCst);
                }
                LiveEvent::GaveUp { attempts, reason } => {
                    panic!("a receiver gave up after {attempts} attempts: {reason}")
                }
                _ => {}
            }
        }
    })
}

/// Sends until `stop`, one message per `SEND_EVERY`, through the client's
/// retrying sender; returns every acknowledged message, and fails on any
/// send given up.
async fn send_until(
    client: Client,
    sender_no: usize,
    conversation: Uuid,
    stop: Arc<AtomicBool>,
    retries: Arc<AtomicUsize>,
) -> Vec<(i64, Uuid)> {
    let policy = RetryPolicy {
        attempts_max: 10,
        delay_min: Duration::from_millis(50),
        delay_max: Duration::from_secs(2),
        jitter: 0.2,
    };
    let mut sender = Sender::start(client, policy, 1024);
    let mut queued = 0usize;
    let mut acked = Vec::new();
    let mut tick = tokio::time::interval(SEND_EVERY);
    while !stop.load(Ordering::SeqCst) {
        tokio::select! {
            _ = tick.tick() => {
                sender.send(SendMessage {
                    conversation_id: conversation,
                    encrypted_content: "aGVsbG8=".into(),
                    nonce: "bm9uY2U=".into(),
                    message_type: "text".into(),
                    idempotency_key: Some(format!("s{sender_no}-{queued}")),
                }).await.unwrap();
                queued += 1;
            }
            Some(report) = sender.next() => settle(report, &mut acked, &retries),
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.len() < queued {
        let report = tokio::time::timeout_at(deadline, sender.next())
            .await
            .unwrap_or_else(|_| panic!("sender {sender_no}: {} of {queued} settled", acked.len()))
            .unwrap();
        settle(report, &mut acked, &retries);
    }
    acked
}

fn settle(report: SendReport, acked: &mut Vec<(i64, Uuid)>, retries: &AtomicUsize) {
    if let SendReport::Retrying { .. } = report {
        retries.fetch_add(1, Ordering::Relaxed);
    }
    if let SendReport::Settled(settled) = report {
        match *settled {
            Settled::Sent { message, .. } => acked.push((message.seq, message.id)),
            Settled::Failed { request, reason } => {
                panic!("{:?} was given up: {reason:?}", request.idempotency_key)
            }
        }
    }
}

/// The longest wait between two deliveries to any receiver that overlaps
/// `window`.
fn longest_gap(receivers: &[Received], window: (Instant, Instant)) -> Duration {
    receivers
        .iter()
        .flat_map(|received| {
            let times: Vec<Instant> = received.lock().unwrap().iter().map(|r| r.2).collect();
            times
                .windows(2)
                .filter(|w| w[1] >= window.0 && w[0] <= window.1)
                .map(|w| w[1] - w[0])
                .collect::<Vec<_>>()
        })
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_acknowledged_message() {
    let database = Database::create();
    let redis_port = free_port();
    let _redis = redis_server(redis_port);
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let data = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let folder = |i: usize| data.path().join(i.to_string());
    let mut nodes: Vec<Option<Process>> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        nodes.push(Some(node(*port, &database.url, &redis_url, &folder(i))));
        until_ready(*port).await;
    }
    let balancer = Balancer::start(ports.clone()).await;
    let base = format!("http://127.0.0.1:{}", balancer.port);

    let users: Vec<(Uuid, String)> = (0..RECEIVERS)
        .map(|_| {
            let id = Uuid::new_v4();
            (id, token(id))
        })
        .collect();
    let conversation = Client::new(&base, &users[0].1)
        .create_conversation(&CreateConversation {
            kind: ConversationKind::Group,
            title: Some("rolling".into()),
            member_ids: users[1..].iter().map(|(id, _)| *id).collect(),
        })
        .await
        .unwrap()
        .id;
    let connected = Arc::new(AtomicUsize::new(0));
    let received: Vec<Received> = (0..RECEIVERS).map(|_| Received::default()).collect();
    let _receivers: Vec<_> = users
        .iter()
        .zip(&received)
        .map(|((_, token), got)| {
            let task = receive(
                Client::new(&base, token),
                Arc::clone(got),
                Arc::clone(&connected),
            );
            AbortOnDrop(task)
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while connected.load(Ordering::SeqCst) < RECEIVERS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "receivers never connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = users[..SENDERS]
        .iter()
        .enumerate()
        .map(|(n, (_, token))| {
            tokio::spawn(send_until(
                Client::new(&base, token),
                n,
                conversation,
                Arc::clone(&stop),
                Arc::clone(&retries),
            ))
        })
        .collect();
    // Traffic first, so every node has clients and sends in flight.
    let until_delivered = |count: usize| {
        let received = received.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while received.iter().any(|r| r.lock().unwrap().len() < count) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{count} never arrived"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    until_delivered(50).await;

    // First as Kubernetes does it (the endpoint is removed during the
    // preStop pause, then SIGTERM), then harsher: SIGTERM while the
    // balancer still sends it new connections, which it refuses once its
    // listener is closed.
    let mut figures = Vec::new();
    for pre_stop in [true, false] {
        for i in 0..NODES {
            let before = received[0].lock().unwrap().len();
            if pre_stop {
                balancer.set(i, false);
            }
            let stopped_at = Instant::now();
            let drained = drain(nodes[i].take().unwrap()).await;
            balancer.set(i, false);
            nodes[i] = Some(node(ports[i], &database.url, &redis_url, &folder(i)));
            until_ready(ports[i]).await;
            balancer.set(i, true);
            // Delivery has gone on past the restart before the next one.
            until_delivered(before + 50).await;
            figures.push((pre_stop, i, drained, stopped_at, Instant::now()));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    acked.sort_unstable();
    let seqs: BTreeMap<i64, Uuid> = acked.iter().copied().collect();
    assert_eq!(seqs.len(), acked.len(), "no seq acknowledged twice");

    until_delivered(acked.len()).await;
    // Anything more would be a duplicate; give it a moment to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (n, got) in received.iter().enumerate() {
        let got: Vec<(i64, Uuid)> = got.lock().unwrap().iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            got, acked,
            "receiver {n}: every acknowledged message once, in order"
        );
    }
    let reconnects = connected.load(Ordering::SeqCst) - RECEIVERS;
    assert!(
        reconnects > 0,
        "no client was moved: the restarts proved nothing"
    );
    eprintln!(
        "rolling restart: {} messages acknowledged, each received once by {RECEIVERS} clients; \
         {reconnects} reconnects, {} send attempts retried",
        acked.len(),
        retries.load(Ordering::Relaxed)
    );
    for (pre_stop, i, drained, from, to) in figures {
        eprintln!(
            "rolling restart ({}): node {i} drained in {} ms; longest delivery gap meanwhile {} ms",
            if pre_stop {
                "out of rotation first"
            } else {
                "SIGTERM in rotation"
            },
            drained.as_millis(),
            longest_gap(&received, (from, to)).as_millis()
        );
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
