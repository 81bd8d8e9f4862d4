//! Nodes with a Redis bus, against private `redis-server` processes that the
//! tests stop and start.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use switchboard_actors::{
    BreakerPolicy, BusLimits, Dependencies, Limits, Node, Supervisor, WorkerPolicy,
};
use switchboard_protocol::{ConversationKind, CreateConversation};
use switchboard_storage::{Bus, OsRandom, SystemClock};
use switchboard_storage_redis::{RedisBus, RedisOptions};
use switchboard_storage_sql::{SqliteOptions, SqliteStore};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::support::{eventually, text};

/// A private `redis-server` that keeps nothing on disk.
pub(crate) struct RedisServer {
    child: Option<Child>,
    pub(crate) port: u16,
    args: Vec<String>,
}

impl RedisServer {
    pub(crate) fn start(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            child: None,
            port,
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.restart();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(crate::support::listening(child, self.port, "redis-server"));
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `calls` of one command from `INFO commandstats`.
    pub(crate) async fn calls(&self, command: &str) -> u64 {
        let client = redis::Client::open(self.url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut connection)
            .await
            .unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) struct TestNode {
    pub(crate) node: Node,
    pub(crate) bus: RedisBus,
    _dir: tempfile::TempDir,
}

pub(crate) async fn node(redis_url: &str, bus_limits: BusLimits) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let mut options = SqliteOptions::new(dir.path().join("node.db"));
    options.synchronous_full = false;
    let clock = Arc::new(SystemClock::new());
    let supervisor = Supervisor::new(clock.clone());
    let store = Arc::new(SqliteStore::open(&options, &supervisor).await.unwrap());
    let feed = store.clone();
    let (signals, receiver) = mpsc::channel(4096);
    let bus = RedisBus::new(RedisOptions::new(redis_url), signals, &supervisor).unwrap();
    let node = Node::start(
        Dependencies {
            store,
            clock,
            random: Arc::new(OsRandom),
            bus: Some((Arc::new(bus.clone()), receiver)),
            blobs: None,
            feed,
            analytics: None,
            feed_cache: Some(Arc::new(bus.clone())),
            supervisor,
        },
        Limits {
            bus: bus_limits,
            ..Limits::default()
        },
    )
    .await
    .unwrap();
    TestNode {
        node,
        bus,
        _dir: dir,
    }
}

fn metric(node: &Node, name: &str) -> u64 {
    node.metrics()
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

async fn group(node: &Node, owner: Uuid) -> Uuid {
    node.create_conversation(
        owner,
        CreateConversation {
            kind: ConversationKind::Group,
            title: None,
            member_ids: vec![],
        },
    )
    .await
    .unwrap()
    .0
    .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_never_wait_on_redis_and_failures_are_counted() {
    let mut redis = RedisServer::start(&[]);
    let defaults = BusLimits::default();
    let limits = BusLimits {
        publisher: WorkerPolicy {
            breaker: BreakerPolicy {
                failures_max: 3,
                cool_down_min: Duration::from_millis(100),
                cool_down_max: Duration::from_millis(400),
            },
            ..defaults.publisher
        },
        ..defaults
    };
    let t = node(&redis.url(), limits).await;
    let owner = Uuid::new_v4();
    let id = group(&t.node, owner).await;
    for i in 0..5 {
        t.node.send(owner, text(id, &format!("{i}"))).await.unwrap();
    }
    eventually("the publishes succeed", || {
        metric(&t.node, "redis_pubsub_success_total") == 6
    })
    .await;

    redis.stop();
    for i in 0..30 {
        t.node
            .send(owner, text(id, &format!("down {i}")))
            .await
            .unwrap();
    }
    eventually("the failures are counted", || {
        metric(&t.node, "redis_pubsub_failure_total{reason=\"error\"}")
            + metric(
                &t.node,
                "redis_pubsub_failure_total{reason=\"breaker_open\"}",
            )
            == 30
    })
    .await;
    assert_eq!(t.node.breakers().get("redis_publish"), Some(&"open"));
    // Every send is in the store all the same.
    let log = t.node.events(owner, id, 0, 1000).await.unwrap();
    assert_eq!(log.len(), 36);

    redis.restart();
    // After the cool-down a probe closes the breaker and publishing resumes.
    let mut sent = 0;
    for _ in 0..200 {
        t.node.send(owner, text(id, "back")).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if metric(&t.node, "redis_pubsub_success_total") > 6 {
            break;
        }
    }
    assert!(
        metric(&t.node, "redis_pubsub_success_total") > 6,
        "publishing resumed after {sent} sends"
    );
    assert_eq!(t.node.breakers().get("redis_publish"), Some(&"closed"));
    t.bus.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_stay_near_their_bound_and_only_the_trimmer_trims() {
    // Small macro nodes make `MAXLEN ~` trim close to the bound.
    let redis = RedisServer::start(&["--stream-node-max-entries", "10"]);
    let limits = BusLimits {
        stream_len_max: 5_000,
        trim_every: 100,
        ..BusLimits::default()
    };
    let t = node(&redis.url(), limits).await;
    let owner = Uuid::new_v4();
    let id = group(&t.node, owner).await;
    let appends: u64 = 12_000;
    for i in 1..appends {
        t.node.send(owner, text(id, &format!("{i}"))).await.unwrap();
    }
    eventually("every event is published", || {
        metric(&t.node, "redis_pubsub_success_total") == appends
    })
    .await;
    let expected_trims = appends / 100;
    eventually("the trimmer has caught up", || {
        metric(&t.node, "stream_trims_total{outcome=\"ok\"}") == expected_trims
    })
    .await;

    let len = t.bus.stream_len(id).await.unwrap();
    assert!(
        (5_000..=5_000 * 103 / 100).contains(&len),
        "stream length {len} is not within 3% of 5000"
    );
    // Redis saw exactly the trimmer's trims, one per 100 appends, and no
    // append carried a MAXLEN of its own.
    let (xtrim, xadd) = (redis.calls("xtrim").await, redis.calls("xadd").await);
    eprintln!(
        "stream: {len} entries kept of {appends} appended (bound 5000); XADD {xadd}, XTRIM {xtrim}"
    );
    assert_eq!(xtrim, expected_trims);
    assert_eq!(xadd, appends);
    assert!(xtrim * 100 <= xadd, "trims are at most 1% of appends");
}

const CLUSTER_SECRET: &[u8] = b"cluster test secret, long enough for hs256";

/// A node of an in-process cluster, with its HTTP server.
struct Member {
    base: String,
    node: Node,
}

/// Nodes sharing one SQLite file and one Redis, each serving HTTP.
struct Cluster {
    members: Vec<Member>,
    auth: switchboard_http::Auth,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(size: usize, redis_url: &str) -> Self {
        Self::with_limits(size, redis_url, Limits::default()).await
    }

    async fn with_limits(size: usize, redis_url: &str, limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut members = Vec::with_capacity(size);
        for _ in 0..size {
            let mut options = SqliteOptions::new(dir.path().join("cluster.db"));
            options.synchronous_full = false;
            let clock = Arc::new(SystemClock::new());
            let supervisor = Supervisor::new(clock.clone());
            let sqlite = Arc::new(SqliteStore::open(&options, &supervisor).await.unwrap());
            let store: Arc<dyn switchboard_storage::Store> = sqlite.clone();
            let (signals, receiver) = mpsc::channel(4096);
            let bus: Arc<dyn Bus> = Arc::new(
                RedisBus::new(RedisOptions::new(redis_url), signals, &supervisor).unwrap(),
            );
            let node = Node::start(
                Dependencies {
                    store: Arc::clone(&store),
                    clock,
                    random: Arc::new(OsRandom),
                    bus: Some((Arc::clone(&bus), receiver)),
                    blobs: None,
                    feed: sqlite,
                    analytics: None,
                    feed_cache: None,
                    supervisor,
                },
                limits,
            )
            .await
            .unwrap();
            let state = switchboard_http::AppState::new(
                node.clone(),
                store,
                switchboard_http::Auth::new(CLUSTER_SECRET),
                switchboard_http::HttpLimits::default(),
            )
            .with_bus(Some(bus));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move {
                axum::serve(listener, switchboard_http::router(state))
                    .await
                    .unwrap();
            });
            members.push(Member { base, node });
        }
        Self {
            members,
            auth: switchboard_http::Auth::new(CLUSTER_SECRET),
            _dir: dir,
        }
    }

    /// Publishes that failed or were skipped, over all nodes.
    fn publish_failures(&self) -> u64 {
        self.members
            .iter()
            .map(|m| {
                ["error", "breaker_open", "queue_full", "timeout", "stopped"]
                    .iter()
                    .map(|reason| {
                        metric(
                            &m.node,
                            &format!("redis_pubsub_failure_total{{reason=\"{reason}\"}}"),
                        )
                    })
                    .sum::<u64>()
            })
            .sum()
    }

    /// A user acting through node `node`.
    fn user(&self, id: Uuid, node: usize) -> crate::support::User {
        let token = self.auth.mint(id, Duration::from_secs(3600)).unwrap();
        crate::support::User {
            id,
            client: switchboard_client::Client::new(
                &self.members[node % self.members.len()].base,
                token,
            ),
        }
    }
}

/// Users in one group, each watching through node `i % 3` and sending
/// through node `(i + 1) % 3`.
async fn spread_group(
    cluster: &Cluster,
    users: usize,
) -> (Uuid, Vec<Uuid>, Vec<switchboard_client::EventStream>) {
    let ids: Vec<Uuid> = (0..users).map(|_| Uuid::new_v4()).collect();
    let owner = cluster.user(ids[0], 0);
    let conversation = owner
        .client
        .create_conversation(&CreateConversation {
            kind: ConversationKind::Group,
            title: Some("spread".into()),
            member_ids: ids[1..].to_vec(),
        })
        .await
        .unwrap()
        .id;
    let mut streams = Vec::with_capacity(users);
    for (i, id) in ids.iter().enumerate() {
        streams.push(crate::support::connect(&cluster.user(*id, i)).await);
    }
    (conversation, ids, streams)
}

/// Every stream holds exactly `acked`, in `seq` order, and nothing more.
async fn assert_each_got_all(
    streams: &mut [switchboard_client::EventStream],
    acked: &[switchboard_protocol::Message],
) {
    for (i, stream) in streams.iter_mut().enumerate() {
        let events = crate::support::events(stream, acked.len()).await;
        let got: Vec<(i64, Uuid)> = events
            .iter()
            .map(|event| match event {
                switchboard_protocol::Event::MessageNew(m) => (m.seq, m.id),
                other => panic!("client {i} got an unexpected {other:?}"),
            })
            .collect();
        let want: Vec<(i64, Uuid)> = acked.iter().map(|m| (m.seq, m.id)).collect();
        assert_eq!(
            got, want,
            "client {i}: every acknowledged message once, in seq order"
        );
        assert!(
            crate::support::next(stream).await.is_none(),
            "client {i} got a duplicate"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_three_nodes_each_get_every_message_once_in_order() {
    let redis = RedisServer::start(&[]);
    let cluster = Cluster::start(3, &redis.url()).await;
    let (conversation, ids, mut streams) = spread_group(&cluster, 6).await;
    let mut senders = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let sender = cluster.user(*id, i + 1);
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..15 {
                let sent = sender
                    .client
                    .send(&text(conversation, &format!("{i}:{n}")))
                    .await
                    .unwrap();
                acked.push(sent.message);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    acked.sort_by_key(|m| m.seq);
    assert_eq!(acked.len(), 90);
    assert_each_got_all(&mut streams, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_while_redis_stops_and_returns() {
    let mut redis = RedisServer::start(&[]);
    let cluster = Cluster::start(3, &redis.url()).await;
    let (conversation, ids, mut streams) = spread_group(&cluster, 6).await;
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let sender = cluster.user(*id, i + 1);
        let sent = Arc::clone(&sent);
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..30 {
                let message = sender
                    .client
                    .send(&text(conversation, &format!("{i}:{n}")))
                    .await
                    .unwrap();
                acked.push(message.message);
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        }));
    }
    let at = |count: usize| {
        let sent = Arc::clone(&sent);
        async move {
            while sent.load(std::sync::atomic::Ordering::SeqCst) < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    at(50).await;
    redis.stop();
    at(110).await;
    redis.restart();
    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    acked.sort_by_key(|m| m.seq);
    assert_eq!(acked.len(), 180);
    // Sends went on after Redis came back, so gaps were seen and filled.
    assert_each_got_all(&mut streams, &acked).await;

    // Now an outage at the end of the load: nothing is sent after Redis
    // returns, so only the catch-up on recovery can deliver these.
    redis.stop();
    let failed_before = cluster.publish_failures();
    let mut tail = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let sender = cluster.user(*id, i + 1);
        for n in 0..5 {
            let message = sender
                .client
                .send(&text(conversation, &format!("late {i}:{n}")))
                .await
                .unwrap();
            tail.push(message.message);
        }
    }
    // Keep Redis down until every late publish has failed, so none of them
    // can slip through late from a publisher's queue.
    let late = u64::try_from(tail.len()).unwrap();
    eventually("every late publish fails", || {
        cluster.publish_failures() >= failed_before + late
    })
    .await;
    redis.restart();
    tail.sort_by_key(|m| m.seq);
    assert_each_got_all(&mut streams, &tail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_and_serves_with_redis_unreachable_and_says_so() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cluster = Cluster::start(1, &format!("redis://127.0.0.1:{port}")).await;
    let user = cluster.user(Uuid::new_v4(), 0);
    let conversation = user
        .client
        .create_conversation(&CreateConversation {
            kind: ConversationKind::Group,
            title: None,
            member_ids: vec![],
        })
        .await
        .unwrap()
        .id;
    let mut stream = crate::support::connect(&user).await;
    let sent = user
        .client
        .send(&text(conversation, "still here"))
        .await
        .unwrap();
    assert!(sent.created);
    // Delivered on its own node without Redis.
    let events = crate::support::events(&mut stream, 1).await;
    assert!(
        matches!(&events[0], switchboard_protocol::Event::MessageNew(m) if m.id == sent.message.id)
    );

    let ready: serde_json::Value =
        reqwest::get(format!("{}/health/ready", cluster.members[0].base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["dependencies"]["database"]["ok"], true);
    assert_eq!(ready["dependencies"]["redis"]["ok"], false, "{ready}");
    assert!(ready["dependencies"]["redis"]["breakers"]["redis_publish"].is_string());
}

/// The reconnect chaos run across three nodes: a client that comes back
/// through another node finds no session there, is told so, and syncs from
/// the shared store; every client still ends with every acknowledged
/// message of its conversations once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnecting_to_other_nodes_lose_nothing() {
    use crate::sessions::{Chaos, Follower, chaos, chaos_seed, three_groups};
    let redis = RedisServer::start(&[]);
    let mut limits = Limits::default();
    limits.sessions.grace = Duration::from_millis(300);
    limits.sessions.buffer_len_max = 16;
    let cluster = Cluster::with_limits(3, &redis.url(), limits).await;
    let ids: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    let users: Vec<crate::support::User> = ids.iter().map(|id| cluster.user(*id, 0)).collect();
    let conversations = three_groups(&users).await;
    let senders = conversations
        .iter()
        .enumerate()
        .map(|(i, c)| cluster.user(c.members[0].user_id, i))
        .collect();
    let followers = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut follower = Follower::on_nodes((0..3).map(|n| cluster.user(*id, n)).collect());
            follower.node = i % 3;
            follower
        })
        .collect();
    chaos(Chaos {
        seed: chaos_seed(),
        conversations,
        followers,
        senders,
        expect: &["resumed", "expired"],
    })
    .await;
}

/// Each bus task panics once, on a different node, while messages flow:
/// every one is restarted and counted, every node stays ready, and every
/// client still gets every acknowledged message once, in order (what a
/// task had in hand when it died is recovered by catch-ups and sweeps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_tasks_that_panic_are_restarted_and_lose_no_message() {
    let redis = RedisServer::start(&[]);
    let mut limits = Limits::default();
    // Trims often enough that the trimmer has requests to die on.
    limits.bus.trim_every = 5;
    let cluster = Cluster::with_limits(3, &redis.url(), limits).await;
    let (conversation, ids, mut streams) = spread_group(&cluster, 6).await;
    let faults = [
        (0, "router", "signal"),
        (1, "publisher", "request"),
        (2, switchboard_storage_redis::SUBSCRIBER_TASK, "listen"),
        (0, "trimmer", "request"),
    ];
    for (node, task, point) in faults {
        cluster.members[node]
            .node
            .supervisor()
            .inject_panic(task, point);
    }
    let mut acked = Vec::new();
    for round in 0..10 {
        for (i, id) in ids.iter().enumerate() {
            let sender = cluster.user(*id, i + 1);
            let sent = sender
                .client
                .send(&text(conversation, &format!("{round}:{i}")))
                .await
                .unwrap();
            acked.push(sent.message);
        }
    }
    acked.sort_by_key(|m| m.seq);
    assert_each_got_all(&mut streams, &acked).await;
    for (node, task, _) in faults {
        let member = &cluster.members[node];
        eventually(&format!("{task} on node {node} restarted"), || {
            member.node.tasks().iter().any(|t| {
                t.name == task
                    && t.restarts == 1
                    && t.state == switchboard_actors::TaskState::Running
            })
        })
        .await;
        assert_eq!(
            metric(
                &member.node,
                &format!("worker_restarts_total{{worker=\"{task}\"}}")
            ),
            1
        );
    }
    for member in &cluster.members {
        let ready = reqwest::get(format!("{}/health/ready", member.base))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
}
