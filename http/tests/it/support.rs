//! A server per test and helpers to drive it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use switchboard_actors::{Dependencies, Limits, Node, Supervisor};
use switchboard_client::{Client, EventStream};
use switchboard_http::{AppState, Auth, HttpLimits};
use switchboard_protocol::{
    ClientFrame, Control, Conversation, ConversationKind, CreateConversation, Event, SendMessage,
    ServerFrame, Sync,
};
use switchboard_storage::{OsRandom, Store, SystemClock};
use switchboard_storage_blobs::LocalBlobs;
use switchboard_storage_sql::{SqliteOptions, SqliteStore};
use tempfile::TempDir;
use uuid::Uuid;

const SECRET: &[u8] = b"test secret that is long enough for hs256 use";

/// Where a test server keeps its blobs.
enum Blobs {
    /// A folder it serves itself.
    Local,
    /// An S3 bucket.
    #[cfg(feature = "s3-tests")]
    S3(Arc<switchboard_storage_blobs::S3Blobs>),
}

/// A node with its HTTP server on 127.0.0.1 and a fresh database.
pub(crate) struct TestServer {
    pub(crate) base: String,
    pub(crate) node: Node,
    /// The node's store, for what a test checks behind the API.
    pub(crate) store: Arc<dyn Store>,
    auth: Auth,
    /// Begins the server's graceful shutdown.
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The node's data folder, removed with the server.
    dir: TempDir,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::with_limits(Limits::default()).await
    }

    pub(crate) async fn with_limits(limits: Limits) -> Self {
        Self::with_config(limits, HttpLimits::default()).await
    }

    pub(crate) async fn with_config(limits: Limits, http_limits: HttpLimits) -> Self {
        Self::with_state(limits, http_limits, |state| state).await
    }

    /// A server whose `AppState` `setup` adjusts before it serves, with its
    /// blobs in a folder it serves itself.
    pub(crate) async fn with_state(
        limits: Limits,
        http_limits: HttpLimits,
        setup: impl FnOnce(AppState) -> AppState,
    ) -> Self {
        Self::build(limits, http_limits, setup, Blobs::Local, None).await
    }

    /// A server whose blobs are in this S3 bucket.
    #[cfg(feature = "s3-tests")]
    pub(crate) async fn with_s3(
        limits: Limits,
        options: switchboard_storage_blobs::S3Options,
    ) -> Self {
        let s3 = Arc::new(switchboard_storage_blobs::S3Blobs::connect(&options).await);
        Self::build(
            limits,
            HttpLimits::default(),
            |state| state,
            Blobs::S3(s3),
            None,
        )
        .await
    }

    /// A server whose feed ranks with `analytics`.
    #[cfg(feature = "clickhouse-tests")]
    pub(crate) async fn with_analytics(
        limits: Limits,
        analytics: Arc<dyn switchboard_storage::Analytics>,
    ) -> Self {
        Self::build(
            limits,
            HttpLimits::default(),
            |state| state,
            Blobs::Local,
            Some(analytics),
        )
        .await
    }

    async fn build(
        limits: Limits,
        http_limits: HttpLimits,
        setup: impl FnOnce(AppState) -> AppState,
        blobs: Blobs,
        analytics: Option<Arc<dyn switchboard_storage::Analytics>>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options = SqliteOptions::new(dir.path().join("switchboard.db"));
        // Durability settings do not change behaviour; skip the fsyncs.
        options.synchronous_full = false;
        let clock = Arc::new(SystemClock::new());
        let supervisor = Supervisor::new(clock.clone());
        let sqlite = Arc::new(
            SqliteStore::open(&options, &supervisor)
                .await
                .expect("store"),
        );
        let store: Arc<dyn Store> = sqlite.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let base = format!("http://{addr}");
        let (blobs, kind, server): (Arc<dyn switchboard_storage::Blobs>, _, _) = match blobs {
            Blobs::Local => {
                let local = Arc::new(
                    LocalBlobs::open(dir.path().join("blobs"), &base, SECRET, clock.clone())
                        .expect("blob folder"),
                );
                let server: Arc<dyn switchboard_storage::BlobServer> = local.clone();
                (local, "local", Some(server))
            }
            #[cfg(feature = "s3-tests")]
            Blobs::S3(s3) => (s3, "s3", None),
        };
        let node = Node::start(
            Dependencies {
                store: Arc::clone(&store),
                clock,
                random: Arc::new(OsRandom),
                bus: None,
                blobs: Some(Arc::clone(&blobs)),
                feed: sqlite,
                analytics,
                feed_cache: None,
                supervisor,
            },
            limits,
        )
        .await
        .expect("node");
        let state = setup(
            AppState::new(
                node.clone(),
                Arc::clone(&store),
                Auth::new(SECRET),
                http_limits,
            )
            .with_blobs(Some((blobs, kind)), server),
        );
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let signal = async move {
                let _ = signal.await;
            };
            switchboard_http::serve(listener, state, signal, Duration::from_secs(5))
                .await
                .expect("serve");
        });
        Self {
            base,
            node,
            store,
            auth: Auth::new(SECRET),
            shutdown: Some(shutdown),
            dir,
        }
    }

    /// Begins a graceful shutdown, as SIGTERM does.
    pub(crate) fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    pub(crate) fn token(&self, user: Uuid) -> String {
        self.auth
            .mint(user, Duration::from_secs(3600))
            .expect("token")
    }

    /// A new user and a client acting as them.
    pub(crate) fn user(&self) -> User {
        let id = Uuid::new_v4();
        User {
            id,
            client: Client::new(&self.base, self.token(id)),
        }
    }

    /// A client acting as `id`.
    pub(crate) fn user_as(&self, id: Uuid) -> User {
        User {
            id,
            client: Client::new(&self.base, self.token(id)),
        }
    }

    /// Where the embedded blob store keeps an object's bytes.
    pub(crate) fn blob_path(&self, key: &str) -> std::path::PathBuf {
        self.dir.path().join("blobs").join("objects").join(key)
    }

    /// The SQLite file the node stores in.
    pub(crate) fn database_path(&self) -> std::path::PathBuf {
        self.dir.path().join("switchboard.db")
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The node's metrics, as `/metrics` serves them.
    pub(crate) async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub(crate) struct User {
    pub(crate) id: Uuid,
    pub(crate) client: Client,
}

pub(crate) fn text(conversation_id: Uuid, body: &str) -> SendMessage {
    SendMessage {
        conversation_id,
        encrypted_content: STANDARD.encode(body),
        nonce: STANDARD.encode("nonce-0123456789"),
        message_type: "text".into(),
        idempotency_key: None,
    }
}

pub(crate) async fn group(owner: &User, members: &[&User]) -> Conversation {
    owner
        .client
        .create_conversation(&CreateConversation {
            kind: ConversationKind::Group,
            title: Some("test".into()),
            member_ids: members.iter().map(|m| m.id).collect(),
        })
        .await
        .expect("create group")
}

/// Node limits whose session buffers hold everything a test sends, so a
/// client that falls behind can always resume.
pub(crate) fn roomy_sessions() -> Limits {
    let mut limits = Limits::default();
    limits.sessions.buffer_len_max = 10_000;
    limits.sessions.buffer_bytes_max = 64 * 1024 * 1024;
    limits
}

/// Sends `count` texts `m0`, `m1`, … and returns the stored messages.
pub(crate) async fn send_texts(
    sender: &User,
    conversation: Uuid,
    count: usize,
) -> Vec<switchboard_protocol::Message> {
    let mut sent = Vec::new();
    for i in 0..count {
        let request = text(conversation, &format!("m{i}"));
        sent.push(sender.client.send(&request).await.expect("send").message);
    }
    sent
}

/// Connects, consumes the `hello`, and starts live delivery with an empty
/// `sync` (a new session holds live events until the client's first frame).
pub(crate) async fn connect(user: &User) -> EventStream {
    let mut stream = user.client.connect().await.expect("connect");
    match next(&mut stream).await {
        Some(ServerFrame::Control(Control::Hello(_))) => {}
        other => panic!("expected hello, got {other:?}"),
    }
    stream
        .send(&ClientFrame::Sync(Sync::default()))
        .await
        .expect("sync");
    match next(&mut stream).await {
        Some(ServerFrame::Control(Control::Synced(_))) => stream,
        other => panic!("expected synced, got {other:?}"),
    }
}

/// The next frame, or `None` when none comes within a second.
pub(crate) async fn next(stream: &mut EventStream) -> Option<ServerFrame> {
    match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        Ok(frame) => frame.expect("stream"),
        Err(_) => None,
    }
}

/// Collects events until `count` arrived; fails after 10 s.
pub(crate) async fn events(stream: &mut EventStream, count: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while events.len() < count {
        let frame = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} events arrived", events.len()))
            .expect("stream")
            .expect("stream open");
        if let ServerFrame::Event(frame) = frame {
            events.push(frame.event);
        }
    }
    events
}

/// The whole event log of a conversation.
pub(crate) async fn log(user: &User, conversation: Uuid) -> Vec<Event> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, Event::seq);
        let page = user
            .client
            .events(conversation, after, 1000)
            .await
            .expect("events");
        if page.events.is_empty() {
            return all;
        }
        all.extend(page.events);
    }
}

/// `child` once it listens on `port`; killed, and the test failed, when it
/// does not within 5 s.
#[cfg_attr(
    not(any(feature = "redis-tests", feature = "s3-tests")),
    allow(dead_code)
)]
pub(crate) fn listening(
    mut child: std::process::Child,
    port: u16,
    what: &str,
) -> std::process::Child {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what} did not start on {port}");
}

/// Waits until `check` holds; fails after 30 s.
pub(crate) async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A small seeded generator (SplitMix64), so a failing run can be replayed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
