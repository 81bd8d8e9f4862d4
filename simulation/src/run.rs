//! One run: a cluster of real nodes on the chosen backends, clients that
//! connect, drop and come back, a workload of racing operations, and the
//! faults the seed draws; then the faults stop, the run waits for quiet, and
//! the checkers judge what was recorded.
//!
//! In the default mode everything runs on one current-thread tokio runtime
//! with paused time: tasks run in a fixed order, timers fire in simulated
//! time (jumping ahead whenever every task waits), the store and bus are in
//! memory, and ids and every draw come from the seed. The same seed gives
//! the same history, and so the same trace hash.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine;
use chrono::{TimeZone, Utc};
use switchboard_actors::{
    ActorError, BusLimits, ConnectRequest, ConnectionLink, Dependencies, Limits, MediaLimits, Node,
    ResumeAt, ScheduledLimits, SessionLimits, Supervisor, Transport,
};
use switchboard_client::{Class, Failure, Place, RetryPolicy, Step, classify};
use switchboard_protocol::{
    AddMember, ConversationKind, CreateConversation, CreatePost, EditMessage, EditScheduled, Event,
    Message, Role, ScheduleMessage, ScheduledStatus, SendAudio, SendMessage, ServerFrame,
    UploadRequest,
};
use switchboard_storage::{
    AttachmentState, Blobs, Bus, Clock, FeedStore, MemoryBlobs, MemoryStore, Store, TokioClock,
};
use switchboard_storage_redis::{RedisBus, RedisOptions};
use switchboard_storage_sql::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::blobs::FaultyBlobs;
use crate::bus::Network;
use crate::check::{self, AttachmentEnd, ClientEnd, Outcome, ScheduledEnd, Violation};
use crate::faults::{FaultKind, FaultPlan, Faults};
use crate::history::{History, Record};
use crate::rng::{Rng, SharedRng};
use crate::store::FaultyStore;

/// Which backends the nodes run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory store and bus, on simulated time: deterministic.
    Memory,
    /// A real SQLite file and a real Redis, on real time.
    Sqlite {
        /// `redis://…` of the bus.
        redis_url: String,
    },
    /// A real PostgreSQL and a real Redis, on real time.
    Postgres {
        /// `postgres://…` of the store (each run takes a schema of its own).
        url: String,
        /// `redis://…` of the bus.
        redis_url: String,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Everything else is drawn from it.
    pub seed: u64,
    /// The backends.
    pub backend: Backend,
    /// How long the workload and the faults run.
    pub duration: Duration,
    /// How long the system may take to go quiet once the faults stop.
    pub quiet_within: Duration,
    /// Whether to inject faults at all.
    pub faults: bool,
}

impl Options {
    /// The default deterministic run of `seed`.
    #[must_use]
    pub fn seed(seed: u64) -> Self {
        Self {
            seed,
            backend: Backend::Memory,
            duration: Duration::from_secs(20),
            quiet_within: Duration::from_secs(60),
            faults: true,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The hash of the recorded history.
    pub trace_hash: u64,
    /// What the checkers found; empty for a good run.
    pub violations: Vec<Violation>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// The run's size.
    pub stats: Stats,
    /// Everything recorded, in order.
    pub history: Vec<crate::history::Entry>,
    /// Each conversation's final log.
    pub logs: BTreeMap<Uuid, Vec<Event>>,
    /// Each client's user, by index.
    pub client_users: Vec<usize>,
    /// Each user's id, by index.
    pub users: Vec<Uuid>,
}

/// How much a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Users.
    pub users: usize,
    /// Clients (devices).
    pub clients: usize,
    /// Conversations.
    pub conversations: usize,
    /// Operations answered (every attempt).
    pub operations: usize,
    /// Sends acknowledged.
    pub acknowledged: usize,
    /// Events applied by clients.
    pub deliveries: usize,
    /// Events in the logs.
    pub events: usize,
    /// Simulated (or real) milliseconds from the end of the faults to quiet.
    pub quiet_after_ms: Option<u64>,
    /// Scheduled messages by how they ended (`sent`, `cancelled`,
    /// `failed: too_late`…).
    pub scheduled: BTreeMap<String, usize>,
    /// Feed pages served, by source (`ranked`, `cache`, `recent`).
    pub feed: BTreeMap<String, usize>,
}

/// Runs one seed and checks it.
///
/// # Errors
///
/// When the runtime or a real backend cannot be set up; a run that breaks
/// an invariant is a [`Report`] with violations, not an error.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    quiet_injected_panics();
    let runtime = match options.backend {
        Backend::Memory => tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };
    runtime.block_on(simulate(options.clone()))
}

/// Keeps the panics the faults inject out of stderr (each is counted and
/// recorded instead); any other panic still prints.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info
                .payload()
                .is::<switchboard_supervisors::InjectedPanic>()
            {
                report(info);
            }
        }));
    });
}

/// Bounds the nodes run with: small, so the runs reach them.
fn limits(rng: &mut Rng) -> Limits {
    Limits {
        connections_per_user_max: 4,
        call_timeout: Duration::from_secs(5),
        sessions: SessionLimits {
            grace: rng.millis(1_000, 8_000),
            buffer_len_max: usize::try_from(rng.between(8, 256)).unwrap_or(64),
            sync_events_max: usize::try_from(rng.between(4, 200)).unwrap_or(64),
            sessions_per_user_max: 4,
            ..SessionLimits::default()
        },
        bus: BusLimits {
            stream_len_max: 64,
            trim_every: 8,
            ..BusLimits::default()
        },
        media: media_limits(),
        scheduled: ScheduledLimits {
            // Small, so runs meet both caps.
            per_user_max: 4,
            total_max: 12,
            // Sometimes short enough that a crash or an outage makes an
            // entry too late.
            late_max: rng.millis(2_000, 20_000),
            batch_len: u32::try_from(rng.between(1, 8)).unwrap_or(4),
            deliveries_max: usize::try_from(rng.between(1, 4)).unwrap_or(2),
            // A crashed node's claims come free this soon.
            lease: Duration::from_secs(2),
            poll_every: Duration::from_millis(500),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            ..ScheduledLimits::default()
        },
        ..Limits::default()
    }
}

/// Short enough that a run sees URLs expire and the sweeper settle
/// everything within its quiet bound.
fn media_limits() -> MediaLimits {
    let mut media = MediaLimits {
        upload_url_ttl: Duration::from_secs(2),
        orphan_grace: Duration::from_millis(500),
        unattached_ttl: Duration::from_secs(4),
        sweep_every: Duration::from_millis(500),
        sweep_batch_len: 16,
        delete_poll_every: Duration::from_millis(500),
        // A crashed node's claims come free this soon.
        delete_lease: Duration::from_secs(2),
        delete_retry_min: Duration::from_millis(100),
        delete_retry_max: Duration::from_secs(2),
        ..MediaLimits::default()
    };
    for worker in [&mut media.worker, &mut media.cleanup_worker] {
        worker.call_timeout = Duration::from_secs(1);
        worker.breaker.cool_down_min = Duration::from_millis(200);
        worker.breaker.cool_down_max = Duration::from_secs(2);
    }
    media
}

async fn simulate(options: Options) -> anyhow::Result<Report> {
    let seed = options.seed;
    let mut rng = Rng::new(seed, "setup");
    let plan = if options.faults {
        FaultPlan::draw(&mut Rng::new(seed, "plan"))
    } else {
        FaultPlan::calm()
    };
    let faults = Arc::new(Faults::new(plan, SharedRng::new(seed, "faults")));
    let clock = TokioClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    let (store, feed, cleanup) = open_store(&options.backend, seed, clock).await?;
    let network = matches!(options.backend, Backend::Memory).then(|| Network::new(faults.clone()));
    let redis = match &options.backend {
        Backend::Memory => None,
        Backend::Sqlite { redis_url } | Backend::Postgres { redis_url, .. } => Some(RedisOptions {
            key_prefix: format!("sim{seed}-{}:", unique()),
            ..RedisOptions::new(redis_url.clone())
        }),
    };
    let nodes = usize::try_from(rng.between(2, 3)).unwrap_or(2);
    let limits = limits(&mut rng);
    // One blob store for the cluster, as one bucket would be.
    let blobs = Arc::new(MemoryBlobs::new(Arc::new(clock), seed));
    let cluster = Cluster {
        slots: (0..nodes)
            .map(|_| Slot {
                node: Mutex::new(None),
                lifecycle: tokio::sync::Mutex::new(()),
                crashes: AtomicU64::new(0),
                crashed: tokio::sync::Notify::new(),
            })
            .collect(),
        limits,
        store: Arc::new(FaultyStore::new(store.clone(), faults.clone())),
        feed: feed.clone(),
        clock,
        random: SharedRng::new(seed, "ids"),
        network: network.clone(),
        redis,
        blobs: Arc::new(FaultyBlobs::new(Arc::clone(&blobs), faults.clone())),
    };
    for slot in 0..nodes {
        cluster.start(slot).await?;
    }
    let users: Vec<Uuid> = (0..rng.between(3, 6))
        .map(|_| {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            bytes[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
            uuid::Builder::from_random_bytes(bytes).into_uuid()
        })
        .collect();
    let mut clients = Vec::new();
    for (user_index, user) in users.iter().enumerate() {
        for device in 0..rng.between(1, 2) {
            let index = clients.len();
            let slot = rng.index(nodes);
            clients.push(Arc::new(Client {
                index,
                user: *user,
                // Half name their device and resume at connect (as with
                // `?device=&session_id=&cursor=`); the rest resume by frame,
                // as the Rust client does.
                device: rng.chance(0.5).then(|| format!("u{user_index}d{device}")),
                place: Mutex::new(Place::new()),
                want: watch::channel(Want {
                    online: true,
                    slot,
                    epoch: 0,
                })
                .0,
                connected: AtomicBool::new(false),
                retry: Mutex::new(None),
            }));
        }
    }
    let ctx = Arc::new(Ctx {
        clock,
        history: History::default(),
        faults: faults.clone(),
        cluster,
        users,
        clients,
        rng: SharedRng::new(seed, "workload"),
        store: store.clone(),
        conversations: Mutex::new(Vec::new()),
        acked: Mutex::new(Vec::new()),
        keys: AtomicU64::new(0),
        pending: Mutex::new(BTreeMap::new()),
        calls: AtomicU64::new(0),
        link_len: usize::try_from(rng.between(8, 128)).unwrap_or(32),
        grace: limits.sessions.grace,
        blobs,
        uploads: Mutex::new(Vec::new()),
        scheduled: Mutex::new(Vec::new()),
        posts: Mutex::new(Vec::new()),
        post_uploads: Mutex::new(Vec::new()),
    });
    let mut background = JoinSet::new();
    for client in &ctx.clients {
        background.spawn(client_loop(ctx.clone(), client.clone()));
    }
    background.spawn(monitor(ctx.clone()));
    schedule_faults(&ctx, &mut rng, options.duration);

    setup(&ctx, &mut rng).await;
    let mut ops = JoinSet::new();
    let started = ctx.clock.elapsed();
    while ctx.clock.elapsed() - started < options.duration {
        let pause = ctx.rng.with(|r| r.millis(5, 120));
        sleep(pause).await;
        while ops.len() >= OPS_IN_FLIGHT_MAX {
            ops.join_next().await;
        }
        step(&ctx, &mut ops);
    }

    // The faults stop; everything comes back; the system must settle.
    faults.stop();
    let calm_from = ctx.clock.elapsed();
    for slot in 0..nodes {
        if let Some(network) = &network {
            network.heal(slot);
        }
        ctx.cluster.start(slot).await?;
    }
    for client in &ctx.clients {
        let slot = client.want.borrow().slot;
        ctx.place_client(client, true, slot);
    }
    let quiet_after = loop {
        while ops.try_join_next().is_some() {}
        if ops.is_empty()
            && ctx.quiet().await
            && ctx.media_settled().await
            && ctx.scheduled_settled().await
        {
            break Some(ctx.clock.elapsed() - calm_from);
        }
        if ctx.clock.elapsed() - calm_from > options.quiet_within {
            break None;
        }
        sleep(Duration::from_millis(100)).await;
    };
    background.abort_all();
    ops.abort_all();
    if quiet_after.is_none() {
        for call in lock(&ctx.pending).values().take(10) {
            tracing::warn!(seed, "not quiet: still waiting for {call}");
        }
    }

    let outcome = ctx.outcome(quiet_after).await?;
    let history = ctx.history.entries();
    let violations = check::check(&history, &outcome, options.quiet_within);
    let conversations = outcome.logs.len();
    let stats = Stats {
        nodes,
        users: ctx.users.len(),
        clients: ctx.clients.len(),
        conversations,
        operations: history
            .iter()
            .filter(|e| matches!(e.record, Record::Op { .. }))
            .count(),
        acknowledged: history
            .iter()
            .filter(|e| matches!(e.record, Record::Acked { .. }))
            .count(),
        deliveries: history
            .iter()
            .filter(|e| matches!(e.record, Record::Delivered { .. }))
            .count(),
        events: outcome.logs.values().map(Vec::len).sum(),
        quiet_after_ms: quiet_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        scheduled: outcome
            .scheduled
            .iter()
            .fold(BTreeMap::new(), |mut ended, end| {
                let how = match end.entry.failure_reason {
                    Some(reason) => format!("failed: {}", reason.as_str()),
                    None => end.entry.status.as_str().to_owned(),
                };
                *ended.entry(how).or_default() += 1;
                ended
            }),
        feed: history.iter().fold(BTreeMap::new(), |mut pages, entry| {
            if let Record::FeedRead { source, .. } = &entry.record {
                *pages.entry(source.clone()).or_default() += 1;
            }
            pages
        }),
    };
    let report = Report {
        seed,
        trace_hash: ctx.history.hash(),
        violations,
        faults: faults.counts(),
        stats,
        history,
        client_users: ctx.clients.iter().map(|c| ctx.user_index(c.user)).collect(),
        users: ctx.users.clone(),
        logs: outcome.logs,
    };
    for node in ctx.cluster.all() {
        node.shutdown(Duration::ZERO).await;
    }
    cleanup.finish().await;
    Ok(report)
}

/// Operations that may be in flight at once.
const OPS_IN_FLIGHT_MAX: usize = 64;

/// Sleeps in the run's time.
async fn sleep(duration: Duration) {
    #[allow(clippy::disallowed_methods)] // The simulation's own pacing.
    tokio::time::sleep(duration).await;
}

/// A name no other run on the same real server uses.
fn unique() -> String {
    #[allow(clippy::disallowed_methods)] // Real backends are shared between runs.
    let id = Uuid::now_v7();
    id.simple().to_string()
}

/// What must be undone after a run on real backends.
enum Cleanup {
    Nothing,
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Schema { url: String, schema: String },
}

impl Cleanup {
    async fn finish(self) {
        if let Self::Schema { url, schema } = self
            && let Ok(pool) = sqlx::PgPool::connect(&url).await
        {
            let drop = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await;
        }
    }
}

/// The cluster's one store. A real one runs under a supervisor of its own,
/// as a database server would outlive the nodes that crash around it.
async fn open_store(
    backend: &Backend,
    seed: u64,
    clock: TokioClock,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn FeedStore>, Cleanup)> {
    Ok(match backend {
        Backend::Memory => {
            let store = Arc::new(MemoryStore::new());
            (store.clone(), store, Cleanup::Nothing)
        }
        Backend::Sqlite { .. } => {
            let dir = tempfile::tempdir()?;
            let mut options = SqliteOptions::new(dir.path().join("simulation.db"));
            options.synchronous_full = false;
            let store = SqliteStore::open(&options, &Supervisor::new(Arc::new(clock)))
                .await
                .context("cannot open SQLite")?;
            let store = Arc::new(store);
            (store.clone(), store, Cleanup::Dir(dir))
        }
        Backend::Postgres { url, .. } => {
            let schema = format!("sim_{seed}_{}", unique());
            let mut options = PostgresOptions::new(url.clone());
            options.schema = Some(schema.clone());
            options.connections_max = 8;
            let store = PostgresStore::open(&options)
                .await
                .with_context(|| format!("cannot open PostgreSQL at {url}"))?;
            let store = Arc::new(store);
            (
                store.clone(),
                store,
                Cleanup::Schema {
                    url: url.clone(),
                    schema,
                },
            )
        }
    })
}

/// One node's place in the cluster.
#[derive(Debug)]
struct Slot {
    node: Mutex<Option<Node>>,
    /// Held while the node starts or crashes, so the two never interleave.
    lifecycle: tokio::sync::Mutex<()>,
    /// Counts crashes.
    crashes: AtomicU64,
    /// Wakes every call and connection on the node when it crashes, in the
    /// order they began waiting (a `watch` would wake them in an order
    /// drawn from tokio's unseeded generator).
    crashed: tokio::sync::Notify,
}

impl Slot {
    fn crash_count(&self) -> u64 {
        self.crashes.load(Ordering::Relaxed)
    }

    /// Returns once the node has crashed since it had crashed `count` times.
    async fn crashed_since(&self, count: u64) {
        loop {
            let notified = self.crashed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.crash_count() != count {
                return;
            }
            notified.await;
        }
    }
}

/// The nodes.
#[derive(Debug)]
struct Cluster {
    slots: Vec<Slot>,
    limits: Limits,
    store: Arc<dyn Store>,
    /// Posts and follows, in the same database.
    feed: Arc<dyn FeedStore>,
    clock: TokioClock,
    random: SharedRng,
    network: Option<Arc<Network>>,
    redis: Option<RedisOptions>,
    /// The cluster's blob store, with faults.
    blobs: Arc<dyn Blobs>,
}

impl Cluster {
    /// Starts the node in `slot` unless it runs.
    async fn start(&self, slot: usize) -> anyhow::Result<()> {
        let _lifecycle = self.slots[slot].lifecycle.lock().await;
        if self.node(slot).is_some() {
            return Ok(());
        }
        let supervisor = Supervisor::new(Arc::new(self.clock));
        let bus: Option<(Arc<dyn Bus>, mpsc::Receiver<_>)> = match (&self.network, &self.redis) {
            (Some(network), _) => {
                let (bus, signals) = network.attach(slot);
                Some((Arc::new(bus), signals))
            }
            (None, Some(options)) => {
                let (sender, signals) = mpsc::channel(4096);
                let bus = RedisBus::new(options.clone(), sender, &supervisor)?;
                Some((Arc::new(bus), signals))
            }
            (None, None) => None,
        };
        let node = Node::start(
            Dependencies {
                store: self.store.clone(),
                clock: Arc::new(self.clock),
                random: Arc::new(self.random.clone()),
                bus,
                blobs: Some(Arc::clone(&self.blobs)),
                feed: Arc::clone(&self.feed),
                analytics: None,
                feed_cache: None,
                supervisor,
            },
            self.limits,
        )
        .await?;
        *lock(&self.slots[slot].node) = Some(node);
        Ok(())
    }

    /// Crashes the node in `slot`: every call and connection on it ends
    /// unanswered, its actors and sessions are gone.
    async fn crash(&self, slot: usize) {
        let _lifecycle = self.slots[slot].lifecycle.lock().await;
        let Some(node) = lock(&self.slots[slot].node).take() else {
            return;
        };
        self.slots[slot].crashes.fetch_add(1, Ordering::Relaxed);
        self.slots[slot].crashed.notify_waiters();
        if let Some(network) = &self.network {
            network.detach(slot);
        }
        node.shutdown(Duration::ZERO).await;
    }

    fn node(&self, slot: usize) -> Option<Node> {
        lock(&self.slots[slot].node).clone()
    }

    fn all(&self) -> Vec<Node> {
        (0..self.slots.len()).filter_map(|s| self.node(s)).collect()
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|s| self.node(*s).is_some())
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where a client wants to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Want {
    online: bool,
    slot: usize,
    /// Bumped on every move, so the client drops its current connection.
    epoch: u64,
}

/// A device: one user's live connection, reconnecting as the run moves it,
/// with the real client library's `Place` deciding what to apply and what
/// to ask for.
#[derive(Debug)]
struct Client {
    index: usize,
    user: Uuid,
    /// Set for clients that resume at connect.
    device: Option<String>,
    place: Mutex<Place>,
    want: watch::Sender<Want>,
    /// Connected and greeted.
    connected: AtomicBool,
    /// A frame to send again after a pause.
    retry: Mutex<Option<String>>,
}

/// What every task of a run shares.
#[derive(Debug)]
struct Ctx {
    clock: TokioClock,
    history: History,
    faults: Arc<Faults>,
    cluster: Cluster,
    users: Vec<Uuid>,
    clients: Vec<Arc<Client>>,
    /// The workload's draws.
    rng: SharedRng,
    /// The store without faults, for the workload's own reads.
    store: Arc<dyn Store>,
    conversations: Mutex<Vec<Uuid>>,
    /// Acknowledged messages: conversation, message, sender's index.
    acked: Mutex<Vec<(Uuid, Uuid, usize)>>,
    keys: AtomicU64,
    /// Calls in flight, by number, for the report of a run that never went
    /// quiet.
    pending: Mutex<BTreeMap<u64, String>>,
    calls: AtomicU64,
    link_len: usize,
    grace: Duration,
    /// The blob store without faults: where clients upload to, and what
    /// the checkers look in.
    blobs: Arc<MemoryBlobs>,
    /// Every attachment an upload URL was issued for.
    uploads: Mutex<Vec<Uuid>>,
    /// Every scheduled message a client was told it scheduled.
    scheduled: Mutex<Vec<Tracked>>,
    /// Every acknowledged post and its author.
    posts: Mutex<Vec<(Uuid, usize)>>,
    /// Every upload for a post a URL was issued for.
    post_uploads: Mutex<Vec<Uuid>>,
}

/// A scheduled message and what its sender was told of it.
#[derive(Debug, Clone)]
struct Tracked {
    id: Uuid,
    /// What its content starts with.
    marker: String,
    cancelled: bool,
    edited: Option<String>,
}

/// Why a call got no answer from a node.
#[derive(Debug)]
enum CallError {
    /// The node is down.
    Down,
    /// The node crashed during the call.
    Crashed,
    /// The node answered with an error.
    Refused(ActorError),
}

impl CallError {
    fn label(&self) -> String {
        match self {
            Self::Down => "node_down".into(),
            Self::Crashed => "node_crashed".into(),
            Self::Refused(error) => format!("{error:?}")
                .split('(')
                .next()
                .unwrap_or("error")
                .to_lowercase(),
        }
    }

    /// The failure as an HTTP client would see it.
    fn failure(&self) -> Failure {
        let code = match self {
            Self::Down | Self::Crashed => return Failure::Network,
            Self::Refused(error) => match error {
                ActorError::NotFound(_) => 404,
                ActorError::Forbidden(_) => 403,
                ActorError::Conflict(_) => 409,
                ActorError::Invalid(_) => 422,
                ActorError::UnsupportedType(_) => 415,
                ActorError::TooLarge(_) => 413,
                ActorError::TooMany(_) | ActorError::Full { .. } => 429,
                ActorError::Overloaded(_) | ActorError::Unavailable(_) => 503,
                ActorError::Internal(_) => 500,
            },
        };
        Failure::Status {
            code,
            retry_after: None,
        }
    }
}

impl Ctx {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn record(&self, record: Record) {
        self.history.push(self.now_ms(), record);
    }

    /// Runs `call` on the node in `slot`, as a client over the network
    /// would: if the node crashes meanwhile, the answer never comes (though
    /// the call may still take effect).
    async fn call<T, F>(
        &self,
        slot: usize,
        what: &str,
        call: impl FnOnce(Node) -> F,
    ) -> Result<T, CallError>
    where
        F: Future<Output = Result<T, ActorError>>,
    {
        let Some(node) = self.cluster.node(slot) else {
            return Err(CallError::Down);
        };
        let number = self.calls.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(
            number,
            format!("{what} on node {slot} since {} ms", self.now_ms()),
        );
        let crashes = self.cluster.slots[slot].crash_count();
        let answer = tokio::select! {
            biased;
            () = self.cluster.slots[slot].crashed_since(crashes) => Err(CallError::Crashed),
            answer = call(node) => answer.map_err(CallError::Refused),
        };
        lock(&self.pending).remove(&number);
        answer
    }

    /// A node for a user's call: a random live one.
    fn slot(&self) -> usize {
        let alive = self.cluster.alive();
        let slots = self.cluster.slots.len();
        self.rng
            .with(|r| r.pick(&alive).copied().unwrap_or_else(|| r.index(slots)))
    }

    fn place_client(&self, client: &Client, online: bool, slot: usize) {
        client.want.send_modify(|want| {
            want.online = online;
            want.slot = slot;
            want.epoch += 1;
        });
    }

    /// Crashes a node and moves its clients to others, as a load balancer
    /// would; restarts it after `down_for`.
    async fn crash(&self, slot: usize, down_for: Duration) {
        self.record(Record::Fault {
            kind: "crash".into(),
            target: slot,
        });
        self.faults.count(FaultKind::Crash);
        self.cluster.crash(slot).await;
        for client in &self.clients {
            let want = *client.want.borrow();
            if want.slot == slot {
                let others: Vec<usize> = self.cluster.alive();
                let next = self.rng.with(|r| r.pick(&others).copied()).unwrap_or(slot);
                self.place_client(client, want.online, next);
            }
        }
        sleep(down_for).await;
        if let Err(error) = self.cluster.start(slot).await {
            tracing::warn!(%error, slot, "node did not restart; the heal phase retries");
        }
    }

    async fn members(&self, conversation: Uuid) -> Vec<(Uuid, Role)> {
        self.store
            .members(conversation)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.user_id, m.role))
            .collect()
    }

    fn user_index(&self, user: Uuid) -> usize {
        self.users.iter().position(|u| *u == user).unwrap_or(0)
    }

    /// Quiet: every client connected and holding every conversation its
    /// user is a member of up to the end of the log.
    async fn quiet(&self) -> bool {
        let conversations = lock(&self.conversations).clone();
        let mut logs = BTreeMap::new();
        for id in &conversations {
            let Ok(Some(conversation)) = self.store.conversation(*id).await else {
                return false;
            };
            logs.insert(*id, conversation);
        }
        self.clients.iter().all(|client| {
            let place = lock(&client.place);
            client.connected.load(Ordering::Relaxed)
                && logs.values().all(|c| {
                    !c.members.iter().any(|m| m.user_id == client.user)
                        || place.positions().get(&c.id) == Some(&c.last_seq)
                })
        })
    }

    /// Media settled: no deletion owed, no attachment pending, and every
    /// object claimed by a sent attachment (the sweeper took the rest).
    async fn media_settled(&self) -> bool {
        if self.store.deletions_owed().await.ok() != Some(0) {
            return false;
        }
        let far = self.clock.now() + chrono::TimeDelta::days(365);
        if self
            .store
            .pending_attachments(far, None, 1)
            .await
            .map_or(true, |p| !p.is_empty())
        {
            return false;
        }
        let (posts, keys): (Vec<String>, Vec<String>) = self
            .blobs
            .keys()
            .into_iter()
            .partition(|k| k.starts_with("posts/"));
        let uploads = lock(&self.post_uploads).clone();
        for id in uploads {
            match self.cluster.feed.post_upload(id).await {
                Ok(Some(u)) if u.state != AttachmentState::Pending => {}
                _ => return false,
            }
        }
        for key in posts {
            let upload = match key.rsplit('/').next().map(Uuid::try_parse) {
                Some(Ok(id)) => self.cluster.feed.post_upload(id).await,
                _ => return false,
            };
            if !matches!(upload, Ok(Some(u)) if u.state == AttachmentState::Attached) {
                return false;
            }
        }
        self.store
            .attachments_by_keys(&keys)
            .await
            .is_ok_and(|rows| {
                rows.len() == keys.len()
                    && rows.iter().all(|r| r.state == AttachmentState::Attached)
            })
    }

    /// Every scheduled message the clients know of has gone: sent, failed
    /// or cancelled.
    async fn scheduled_settled(&self) -> bool {
        let ids: Vec<Uuid> = lock(&self.scheduled).iter().map(|t| t.id).collect();
        for id in ids {
            match self.store.scheduled(id).await {
                Ok(Some(entry)) if entry.status != ScheduledStatus::Pending => {}
                _ => return false,
            }
        }
        true
    }

    /// The end state the checkers judge.
    async fn outcome(&self, quiet_after: Option<Duration>) -> anyhow::Result<Outcome> {
        let mut outcome = Outcome {
            quiet_after,
            ..Outcome::default()
        };
        let conversations = lock(&self.conversations).clone();
        for id in conversations {
            let mut log: Vec<Event> = Vec::new();
            loop {
                let after = log.last().map_or(0, Event::seq);
                let page = self.store.events(id, after, 1_000).await?;
                if page.is_empty() {
                    break;
                }
                log.extend(page);
            }
            outcome.logs.insert(id, log);
            let members = self.store.members(id).await?;
            outcome
                .members
                .insert(id, members.iter().map(|m| m.user_id).collect());
        }
        outcome.clients = self
            .clients
            .iter()
            .map(|c| ClientEnd {
                user: c.user,
                positions: lock(&c.place).positions().clone(),
            })
            .collect();
        outcome.objects = self.blobs.keys().into_iter().collect();
        let tracked = lock(&self.scheduled).clone();
        for t in tracked {
            if let Some(entry) = self.store.scheduled(t.id).await? {
                outcome.scheduled.push(ScheduledEnd {
                    entry,
                    marker: t.marker,
                    cancelled: t.cancelled,
                    edited: t.edited,
                });
            }
        }
        let uploads = lock(&self.uploads).clone();
        for id in uploads {
            if let Some(row) = self.store.attachment(id).await? {
                outcome.attachments.push(AttachmentEnd {
                    key: row.attachment.s3_key,
                    state: row.state,
                });
            }
        }
        // A post's upload is held to the same rules: an object only while
        // it is attached to a post that exists, nothing left pending.
        let uploads = lock(&self.post_uploads).clone();
        for id in uploads {
            if let Some(row) = self.cluster.feed.post_upload(id).await? {
                outcome.attachments.push(AttachmentEnd {
                    key: row.attachment.s3_key,
                    state: row.state,
                });
            }
        }
        Ok(outcome)
    }
}

/// The node's supervised tasks a worker crash hits, each at its fault point.
const WORKER_FAULTS: &[(&str, &str)] = &[
    ("router", "signal"),
    ("publisher", "request"),
    ("trimmer", "request"),
    ("media", "request"),
    ("blob_cleanup", "request"),
    ("blob_deleter", "delete"),
    ("attachment_sweeper", "object"),
    ("scheduled_dispatcher", "deliver"),
    ("feed_ranker_0", "request"),
    ("feed_ranker_1", "request"),
];

/// Draws when each crash, worker crash and partition happens, and
/// schedules them.
fn schedule_faults(ctx: &Arc<Ctx>, rng: &mut Rng, duration: Duration) {
    let nodes = ctx.cluster.slots.len();
    let window = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    for _ in 0..ctx.faults.plan.crashes {
        let at = Duration::from_millis(rng.between(window / 10, window * 8 / 10));
        let down_for = rng.millis(200, 3_000);
        let slot = rng.index(nodes);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            sleep(at).await;
            if ctx.faults.active() {
                ctx.crash(slot, down_for).await;
            }
        });
    }
    // Partitions need the simulated bus; a real Redis cannot be cut.
    let partitions = if ctx.cluster.network.is_some() {
        ctx.faults.plan.partitions
    } else {
        0
    };
    for _ in 0..partitions {
        let at = Duration::from_millis(rng.between(window / 10, window * 8 / 10));
        let cut_for = rng.millis(100, 5_000);
        let slot = rng.index(nodes);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            sleep(at).await;
            let Some(network) = ctx.cluster.network.clone() else {
                return;
            };
            if !ctx.faults.active() {
                return;
            }
            ctx.record(Record::Fault {
                kind: "partition".into(),
                target: slot,
            });
            ctx.faults.count(FaultKind::Partition);
            network.partition(slot);
            sleep(cut_for).await;
            network.heal(slot);
        });
    }
    for _ in 0..ctx.faults.plan.worker_crashes {
        let at = Duration::from_millis(rng.between(window / 10, window * 8 / 10));
        let slot = rng.index(nodes);
        let (task, point) = *rng.pick(WORKER_FAULTS).unwrap_or(&WORKER_FAULTS[0]);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            sleep(at).await;
            let Some(node) = ctx.cluster.node(slot) else {
                return;
            };
            if !ctx.faults.active() {
                return;
            }
            ctx.record(Record::Fault {
                kind: format!("worker_crash {task}"),
                target: slot,
            });
            ctx.faults.count(FaultKind::WorkerCrash);
            node.supervisor().inject_panic(task, point);
        });
    }
}

/// Records what the nodes and the bus hold against their bounds, twice a
/// second.
async fn monitor(ctx: Arc<Ctx>) {
    let limits = ctx.cluster.limits;
    let nodes = ctx.cluster.slots.len();
    loop {
        sleep(Duration::from_millis(500)).await;
        for slot in 0..nodes {
            if let Some(node) = ctx.cluster.node(slot) {
                ctx.record(Record::Bounds {
                    node: slot,
                    sessions: node.session_count(),
                    connections: node.connection_count(),
                    sessions_max: limits.sessions.sessions_max,
                    connections_max: limits.connections_max,
                    buffer_peak: node.session_buffer_peak(),
                    buffer_max: (
                        limits.sessions.buffer_len_max,
                        limits.sessions.buffer_bytes_max,
                    ),
                    failed_tasks: node.supervisor().failed(),
                });
            }
        }
        if let Some(network) = &ctx.cluster.network {
            // Each node trims after `trim_every` of its own appends; a trim
            // the bus refused starts that count over.
            let crashes: u64 = ctx.cluster.slots.iter().map(Slot::crash_count).sum();
            let refused = network.refused_trims();
            let sources = nodes as u64 + crashes + refused + 1;
            let len_max = limits.bus.stream_len_max
                + usize::try_from(sources).unwrap_or(usize::MAX)
                    * usize::try_from(limits.bus.trim_every).unwrap_or(usize::MAX);
            ctx.record(Record::Stream {
                len: network.longest_stream(),
                len_max,
            });
        }
    }
}

/// Creates the run's conversations: a few groups and a direct pair.
async fn setup(ctx: &Arc<Ctx>, rng: &mut Rng) {
    let users = ctx.users.len();
    let groups = rng.between(2, 3);
    let mut plans = Vec::new();
    for _ in 0..groups {
        let owner = rng.index(users);
        let mut members: Vec<Uuid> = (0..users)
            .filter(|u| *u != owner && rng.chance(0.7))
            .map(|u| ctx.users[u])
            .collect();
        if members.is_empty() {
            members.push(ctx.users[(owner + 1) % users]);
        }
        plans.push((owner, ConversationKind::Group, members));
    }
    plans.push((0, ConversationKind::Direct, vec![ctx.users[1]]));
    // Let the clients connect first, so they see the conversations begin.
    sleep(Duration::from_millis(200)).await;
    for (owner, kind, members) in plans {
        for _ in 0..50 {
            let request = CreateConversation {
                kind,
                title: None,
                member_ids: members.clone(),
            };
            let user = ctx.users[owner];
            let slot = ctx.slot();
            let answer = ctx
                .call(slot, "create", |node| async move {
                    node.create_conversation(user, request).await
                })
                .await;
            let outcome = answer
                .as_ref()
                .map_or_else(CallError::label, |_| "ok".into());
            ctx.record(Record::Op {
                user: owner,
                op: format!("create {kind:?}"),
                outcome,
            });
            match answer {
                Ok((conversation, _)) => {
                    let mut conversations = lock(&ctx.conversations);
                    if !conversations.contains(&conversation.id) {
                        conversations.push(conversation.id);
                    }
                    break;
                }
                Err(_) => sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// One workload step: maybe a client drops, and one operation starts.
fn step(ctx: &Arc<Ctx>, ops: &mut JoinSet<()>) {
    if ctx.faults.chance(ctx.faults.plan.disconnect) {
        disconnect(ctx);
    }
    let conversations = lock(&ctx.conversations).clone();
    let Some(conversation) = ctx.rng.with(|r| r.pick(&conversations).copied()) else {
        return;
    };
    let choice = ctx.rng.with(|r| r.below(100));
    let ctx = ctx.clone();
    match choice {
        0..6 => {
            ops.spawn(media(ctx, conversation));
        }
        6..10 => {
            ops.spawn(schedule(ctx, conversation));
        }
        // Feed operations leave the conversation alone.
        96..100 => {
            ops.spawn(feed(ctx));
        }
        10..50 => {
            ops.spawn(async move {
                let members = ctx.members(conversation).await;
                let user = ctx.rng.with(|r| {
                    if r.chance(0.9)
                        && let Some((user, _)) = r.pick(&members)
                    {
                        ctx.user_index(*user)
                    } else {
                        r.index(ctx.users.len())
                    }
                });
                let key = format!("u{user}k{}", ctx.keys.fetch_add(1, Ordering::Relaxed));
                if ctx
                    .faults
                    .roll(FaultKind::DuplicateSend, ctx.faults.plan.duplicate_send)
                {
                    let twin = ctx.clone();
                    let twin_key = key.clone();
                    tokio::spawn(send(twin, user, conversation, twin_key));
                }
                send(ctx, user, conversation, key).await;
            });
        }
        50..60 => {
            ops.spawn(edit(ctx, conversation, None));
        }
        60..67 => {
            ops.spawn(delete(ctx, conversation, None));
        }
        67..74 => {
            ops.spawn(mark_read(ctx, conversation));
        }
        74..81 => {
            ops.spawn(add_member(ctx, conversation));
        }
        81..87 => {
            ops.spawn(change_role(ctx, conversation, None));
        }
        87..92 => {
            ops.spawn(remove_member(ctx, conversation, None));
        }
        _ => {
            ops.spawn(race(ctx, conversation));
        }
    }
}

/// A client drops its connection and comes back, within its session's
/// grace period or after it.
fn disconnect(ctx: &Arc<Ctx>) {
    let (index, long) = ctx
        .rng
        .with(|r| (r.index(ctx.clients.len()), r.chance(0.3)));
    let client = ctx.clients[index].clone();
    let want = *client.want.borrow();
    if !want.online {
        return;
    }
    let grace = u64::try_from(ctx.grace.as_millis()).unwrap_or(u64::MAX);
    let offline = ctx.rng.with(|r| {
        if long {
            Duration::from_millis(grace + r.between(500, 3_000))
        } else {
            r.millis(20, grace / 2)
        }
    });
    ctx.faults.count(if long {
        FaultKind::DisconnectLong
    } else {
        FaultKind::DisconnectShort
    });
    ctx.record(Record::Fault {
        kind: if long {
            "disconnect_long"
        } else {
            "disconnect"
        }
        .into(),
        target: index,
    });
    ctx.place_client(&client, false, want.slot);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        sleep(offline).await;
        let slot = ctx.slot();
        ctx.place_client(&client, true, slot);
    });
}

fn content(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Sends with the client library's retry policy and one idempotency key
/// across attempts, each attempt on whichever node is up.
async fn send(ctx: Arc<Ctx>, user: usize, conversation: Uuid, key: String) {
    let text = content(&key);
    retried_send(
        &ctx,
        user,
        conversation,
        key,
        "send",
        move |node, id, key| {
            let request = SendMessage {
                conversation_id: conversation,
                encrypted_content: text.clone(),
                nonce: content("nonce"),
                message_type: "text".into(),
                idempotency_key: Some(key),
            };
            async move { node.send(id, request).await }
        },
    )
    .await;
}

/// One send through `call`, retried as a client would: the same key on
/// every attempt, on whichever node is up; an acknowledgement is recorded.
async fn retried_send<F, Fut>(
    ctx: &Ctx,
    user: usize,
    conversation: Uuid,
    key: String,
    what: &str,
    call: F,
) where
    F: Fn(Node, Uuid, String) -> Fut,
    Fut: Future<Output = Result<(Message, bool), ActorError>>,
{
    let policy = RetryPolicy::default();
    let mut failures = 0;
    loop {
        let slot = ctx.slot();
        let id = ctx.users[user];
        let answer = ctx
            .call(slot, what, |node| call(node, id, key.clone()))
            .await;
        ctx.record(Record::Op {
            user,
            op: format!("{what} {key} via {slot}"),
            outcome: answer
                .as_ref()
                .map_or_else(CallError::label, |_| "ok".into()),
        });
        let error = match answer {
            Ok((message, _)) => {
                ctx.record(Record::Acked {
                    conversation,
                    key,
                    message: message.id,
                    seq: message.seq,
                });
                lock(&ctx.acked).push((conversation, message.id, user));
                return;
            }
            Err(error) => error,
        };
        if classify(error.failure()) == Class::Permanent {
            return;
        }
        failures += 1;
        let sample = ctx.rng.with(Rng::unit);
        let Some(delay) = policy.delay(failures, sample, None) else {
            return;
        };
        ctx.faults.count(FaultKind::Retry);
        sleep(delay).await;
    }
}

/// A voice message's life: presigned by a member (mostly), then as the
/// draw says uploaded or not, with the right size or not, sent or left
/// unsent, or deleted before its upload lands (which it may still do).
async fn media(ctx: Arc<Ctx>, conversation: Uuid) {
    let members = ctx.members(conversation).await;
    let user = ctx.rng.with(|r| match r.pick(&members) {
        Some((user, _)) if r.chance(0.9) => ctx.user_index(*user),
        _ => r.index(ctx.users.len()),
    });
    let key = format!("u{user}k{}", ctx.keys.fetch_add(1, Ordering::Relaxed));
    let (size, fate, wrong_size) = ctx
        .rng
        .with(|r| (r.between(1, 4096), r.below(100), r.chance(0.05)));
    let id = ctx.users[user];
    let slot = ctx.slot();
    let request = UploadRequest {
        content_type: "audio/ogg".into(),
        size_bytes: size,
        file_name: None,
    };
    let presigned = ctx
        .call(slot, "presign", |node| async move {
            node.presign_audio(id, conversation, request).await
        })
        .await;
    answered(&ctx, user, format!("presign {key} via {slot}"), &presigned);
    let Ok(upload) = presigned else {
        return;
    };
    lock(&ctx.uploads).push(upload.attachment_id);
    if fate < 10 {
        // Deleted while its upload is on the way.
        let attachment = upload.attachment_id;
        let slot = ctx.slot();
        let deleted = ctx
            .call(slot, "delete attachment", |node| async move {
                node.delete_attachment(id, attachment).await
            })
            .await;
        answered(&ctx, user, format!("delete attachment {key}"), &deleted);
    }
    if (10..20).contains(&fate) {
        return; // Never uploaded.
    }
    // The upload takes a while: a deletion meanwhile may be done before it
    // lands, or its URL may expire first.
    let upload_time = ctx.rng.with(|r| r.millis(0, 2_500));
    sleep(upload_time).await;
    let uploaded = ctx.blobs.upload(
        &upload.presigned_url,
        "audio/ogg",
        if wrong_size { size + 1 } else { size },
    );
    ctx.record(Record::Op {
        user,
        op: format!("upload {key}"),
        outcome: uploaded.map_or_else(|e| e.to_string(), |()| "ok".into()),
    });
    if uploaded.is_err() || fate < 30 {
        return; // Refused, deleted, or uploaded and never sent.
    }
    let s3_key = upload.s3_key;
    retried_send(
        &ctx,
        user,
        conversation,
        key,
        "send audio",
        move |node, id, key| {
            let request = SendAudio {
                s3_key: s3_key.clone(),
                content_type: "audio/ogg".into(),
                size_bytes: size,
                duration_ms: 1_000,
                encrypted_content: Some(content(&key)),
                nonce: Some(content("nonce")),
                idempotency_key: Some(key),
            };
            async move { node.send_audio(id, conversation, request).await }
        },
    )
    .await;
}

/// A scheduled message's life: scheduled a second or a few ahead by a
/// member (mostly), retried with its key while no node answers, then as
/// the draw says left alone, changed, or cancelled before it is due (or
/// about when it is).
async fn schedule(ctx: Arc<Ctx>, conversation: Uuid) {
    let members = ctx.members(conversation).await;
    let user = ctx.rng.with(|r| match r.pick(&members) {
        Some((user, _)) if r.chance(0.9) => ctx.user_index(*user),
        _ => r.index(ctx.users.len()),
    });
    let key = format!("u{user}k{}", ctx.keys.fetch_add(1, Ordering::Relaxed));
    let marker = format!("sched {key}.");
    let (ahead, fate, wait, moved) = ctx.rng.with(|r| {
        (
            r.millis(1_100, 4_000),
            r.below(100),
            r.millis(0, 4_000),
            r.millis(1_100, 3_000),
        )
    });
    let id = ctx.users[user];
    let request = ScheduleMessage {
        deliver_at: ctx.clock.now() + chrono::TimeDelta::from_std(ahead).unwrap_or_default(),
        encrypted_content: content(&marker),
        nonce: content("nonce"),
        message_type: "text".into(),
        idempotency_key: Some(key.clone()),
    };
    let mut scheduled = None;
    for _ in 0..5 {
        let slot = ctx.slot();
        let body = request.clone();
        let answer = ctx
            .call(slot, "schedule", |node| async move {
                node.schedule(id, conversation, body).await
            })
            .await;
        answered(&ctx, user, format!("schedule {key} via {slot}"), &answer);
        match answer {
            Ok((entry, _)) => {
                scheduled = Some(entry);
                break;
            }
            Err(error) if classify(error.failure()) == Class::Permanent => return,
            Err(_) => sleep(ctx.rng.with(|r| r.millis(100, 500))).await,
        }
    }
    let Some(entry) = scheduled else {
        return;
    };
    let index = {
        let mut tracked = lock(&ctx.scheduled);
        tracked.push(Tracked {
            id: entry.id,
            marker: marker.clone(),
            cancelled: false,
            edited: None,
        });
        tracked.len() - 1
    };
    if fate >= 40 {
        return;
    }
    sleep(wait).await;
    let slot = ctx.slot();
    if fate < 20 {
        let answer = ctx
            .call(slot, "unschedule", |node| async move {
                node.cancel_scheduled(id, entry.id).await
            })
            .await;
        answered(&ctx, user, format!("unschedule {key} via {slot}"), &answer);
        if answer.is_ok() {
            lock(&ctx.scheduled)[index].cancelled = true;
        }
        return;
    }
    let edited = format!("{marker}edited");
    let change = EditScheduled {
        deliver_at: Some(ctx.clock.now() + chrono::TimeDelta::from_std(moved).unwrap_or_default()),
        encrypted_content: Some(content(&edited)),
        nonce: Some(content("nonce2")),
    };
    let answer = ctx
        .call(slot, "reschedule", |node| async move {
            node.edit_scheduled(id, entry.id, change).await
        })
        .await;
    answered(&ctx, user, format!("reschedule {key} via {slot}"), &answer);
    if answer.is_ok() {
        lock(&ctx.scheduled)[index].edited = Some(edited);
    }
}

/// One feed operation by a random user: post, follow or unfollow, like or
/// unlike, delete one of theirs, or read a page (and maybe the next).
async fn feed(ctx: Arc<Ctx>) {
    let users = ctx.users.len();
    let (user, what, other, pick, limit) = ctx.rng.with(|r| {
        (
            r.index(users),
            r.below(100),
            r.index(users),
            r.next_u64(),
            u32::try_from(r.between(1, 8)).unwrap_or(5),
        )
    });
    let id = ctx.users[user];
    let slot = ctx.slot();
    let posts = lock(&ctx.posts).clone();
    let chosen =
        (!posts.is_empty()).then(|| posts[usize::try_from(pick % posts.len() as u64).unwrap_or(0)]);
    match what {
        0..30 => {
            let n = ctx.keys.fetch_add(1, Ordering::Relaxed);
            // A third carry an upload, uploaded (or not) a while before.
            let attachment = if pick % 3 == 0 {
                post_upload(&ctx, user, slot, pick).await
            } else {
                None
            };
            let answer = ctx
                .call(slot, "post", |node| async move {
                    let request = CreatePost {
                        text: format!("post {n}"),
                        attachment_id: attachment,
                        idempotency_key: None,
                    };
                    node.create_post(id, request).await.map(|(post, _)| post)
                })
                .await;
            answered(&ctx, user, format!("post {n} via {slot}"), &answer);
            if let Ok(post) = answer {
                lock(&ctx.posts).push((post.id, user));
                ctx.record(Record::Posted {
                    post: post.id,
                    author: user,
                });
            }
        }
        30..50 if other != user => {
            let followee = ctx.users[other];
            let unfollow = pick % 5 == 0;
            if !unfollow {
                ctx.record(Record::FollowAsked {
                    user,
                    followee: other,
                });
            }
            let answer = ctx
                .call(slot, "follow", |node| async move {
                    if unfollow {
                        node.unfollow(id, followee).await
                    } else {
                        node.follow(id, followee).await
                    }
                })
                .await;
            let op = if unfollow { "unfollow" } else { "follow" };
            answered(&ctx, user, format!("{op} {other} via {slot}"), &answer);
        }
        50..65 => {
            let Some((post, _)) = chosen else { return };
            let unlike = pick % 4 == 0;
            let answer = ctx
                .call(slot, "like", |node| async move {
                    if unlike {
                        node.unlike(id, post).await
                    } else {
                        node.like(id, post).await.map(drop)
                    }
                })
                .await;
            let op = if unlike { "unlike" } else { "like" };
            answered(&ctx, user, format!("{op} {post} via {slot}"), &answer);
        }
        65..70 => {
            let Some((post, author)) = chosen else { return };
            let by = ctx.users[author];
            let answer = ctx
                .call(slot, "delete post", |node| async move {
                    node.delete_post(by, post).await
                })
                .await;
            answered(
                &ctx,
                author,
                format!("delete post {post} via {slot}"),
                &answer,
            );
            if answer.is_ok() {
                lock(&ctx.posts).retain(|(p, _)| *p != post);
                ctx.record(Record::PostDeleted { post });
            }
        }
        _ => {
            let mut cursor: Option<String> = None;
            for page in 0..2 {
                let started_ms = ctx.now_ms();
                let after = cursor.clone();
                let answer = ctx
                    .call(slot, "feed", |node| async move {
                        node.feed(id, Some(limit), after.as_deref()).await
                    })
                    .await;
                answered(&ctx, user, format!("feed {page} via {slot}"), &answer);
                let Ok(found) = answer else { return };
                ctx.record(Record::FeedRead {
                    user,
                    started_ms,
                    source: found.source.as_str().to_owned(),
                    posts: found
                        .posts
                        .iter()
                        .map(|p| (p.id, ctx.user_index(p.author_id)))
                        .collect(),
                });
                match found.next_cursor {
                    Some(next) if pick % 2 == 0 => cursor = Some(next),
                    _ => return,
                }
            }
        }
    }
}

/// An upload for a post: presigned, then uploaded after a while (or, now
/// and then, never); its id, to post with.
async fn post_upload(ctx: &Arc<Ctx>, user: usize, slot: usize, pick: u64) -> Option<Uuid> {
    let id = ctx.users[user];
    let size = 1 + pick % 2048;
    let request = UploadRequest {
        content_type: "image/png".into(),
        size_bytes: size,
        file_name: None,
    };
    let presigned = ctx
        .call(slot, "presign post", |node| async move {
            node.presign_post_attachment(id, request).await
        })
        .await;
    answered(ctx, user, format!("presign post via {slot}"), &presigned);
    let upload = presigned.ok()?;
    lock(&ctx.post_uploads).push(upload.attachment_id);
    if !pick.is_multiple_of(7) {
        sleep(ctx.rng.with(|r| r.millis(0, 1_500))).await;
        let uploaded = ctx.blobs.upload(&upload.presigned_url, "image/png", size);
        ctx.record(Record::Op {
            user,
            op: format!("upload {}", upload.s3_key),
            outcome: uploaded.map_or_else(|e| e.to_string(), |()| "ok".into()),
        });
    }
    Some(upload.attachment_id)
}

/// Records a one-shot operation's answer.
fn answered<T>(ctx: &Ctx, user: usize, op: String, answer: &Result<T, CallError>) {
    ctx.record(Record::Op {
        user,
        op,
        outcome: answer
            .as_ref()
            .map_or_else(CallError::label, |_| "ok".into()),
    });
}

/// An acknowledged message of the conversation: its id and sender.
fn acked_in(ctx: &Ctx, conversation: Uuid) -> Option<(Uuid, usize)> {
    let acked: Vec<(Uuid, usize)> = lock(&ctx.acked)
        .iter()
        .filter(|(c, _, _)| *c == conversation)
        .map(|(_, m, s)| (*m, *s))
        .collect();
    ctx.rng.with(|r| r.pick(&acked).copied())
}

/// Someone edits a message: mostly its sender, sometimes someone else.
async fn edit(ctx: Arc<Ctx>, conversation: Uuid, editor: Option<usize>) {
    let Some((message, sender)) = acked_in(&ctx, conversation) else {
        return;
    };
    let editor = editor.unwrap_or_else(|| {
        ctx.rng.with(|r| {
            if r.chance(0.7) {
                sender
            } else {
                r.index(ctx.users.len())
            }
        })
    });
    let request = EditMessage {
        encrypted_content: content("edited"),
        nonce: content("nonce"),
    };
    let (slot, id) = (ctx.slot(), ctx.users[editor]);
    let answer = ctx
        .call(slot, "edit", |node| async move {
            node.edit(id, message, request).await
        })
        .await;
    answered(&ctx, editor, format!("edit {message}"), &answer);
}

/// Someone deletes a message: its sender, a moderator, or anyone.
async fn delete(ctx: Arc<Ctx>, conversation: Uuid, by: Option<usize>) {
    let Some((message, sender)) = acked_in(&ctx, conversation) else {
        return;
    };
    let by = by.unwrap_or_else(|| {
        ctx.rng.with(|r| {
            if r.chance(0.5) {
                sender
            } else {
                r.index(ctx.users.len())
            }
        })
    });
    let (slot, id) = (ctx.slot(), ctx.users[by]);
    let answer = ctx
        .call(slot, "delete", |node| async move {
            node.delete(id, message).await
        })
        .await;
    answered(&ctx, by, format!("delete {message}"), &answer);
}

/// A member marks the conversation read up to its end.
async fn mark_read(ctx: Arc<Ctx>, conversation: Uuid) {
    let members = ctx.members(conversation).await;
    let Some((user, _)) = ctx.rng.with(|r| r.pick(&members).copied()) else {
        return;
    };
    let Ok(Some(current)) = ctx.store.conversation(conversation).await else {
        return;
    };
    let (slot, seq) = (ctx.slot(), current.last_seq);
    let answer = ctx
        .call(slot, "read", |node| async move {
            node.mark_read(user, conversation, seq).await
        })
        .await;
    answered(&ctx, ctx.user_index(user), format!("read {seq}"), &answer);
}

/// A member (moderator or not) adds someone.
async fn add_member(ctx: Arc<Ctx>, conversation: Uuid) {
    let members = ctx.members(conversation).await;
    let outsiders: Vec<Uuid> = ctx
        .users
        .iter()
        .copied()
        .filter(|u| !members.iter().any(|(m, _)| m == u))
        .collect();
    let picked = ctx.rng.with(|r| {
        let by = r.pick(&members).map(|(u, _)| *u)?;
        let target = r.pick(&outsiders).copied()?;
        let role = if r.chance(0.3) {
            Role::Admin
        } else {
            Role::Member
        };
        Some((by, target, role))
    });
    let Some((by, target, role)) = picked else {
        return;
    };
    let slot = ctx.slot();
    let request = AddMember {
        user_id: target,
        role: Some(role),
    };
    let answer = ctx
        .call(slot, "add", |node| async move {
            node.add_member(by, conversation, request).await
        })
        .await;
    answered(
        &ctx,
        ctx.user_index(by),
        format!("add {} as {role:?}", ctx.user_index(target)),
        &answer,
    );
}

/// A member changes another's role.
async fn change_role(ctx: Arc<Ctx>, conversation: Uuid, target: Option<(Uuid, Role)>) {
    let members = ctx.members(conversation).await;
    let picked = ctx.rng.with(|r| {
        let by = r.pick(&members).map(|(u, _)| *u)?;
        let (target, role) = match target {
            Some(fixed) => fixed,
            None => {
                let target = r.pick(&members).map(|(u, _)| *u)?;
                let role = if r.chance(0.5) {
                    Role::Admin
                } else {
                    Role::Member
                };
                (target, role)
            }
        };
        Some((by, target, role))
    });
    let Some((by, target, role)) = picked else {
        return;
    };
    let slot = ctx.slot();
    let answer = ctx
        .call(slot, "role", |node| async move {
            node.change_role(by, conversation, target, role).await
        })
        .await;
    answered(
        &ctx,
        ctx.user_index(by),
        format!("role {} {role:?}", ctx.user_index(target)),
        &answer,
    );
}

/// A member removes another, or leaves; never below two members.
async fn remove_member(ctx: Arc<Ctx>, conversation: Uuid, target: Option<Uuid>) {
    let members = ctx.members(conversation).await;
    if members.len() <= 2 {
        return;
    }
    let picked = ctx.rng.with(|r| {
        let by = r.pick(&members).map(|(u, _)| *u)?;
        let target = match target {
            Some(target) => target,
            None if r.chance(0.3) => by,
            None => r.pick(&members).map(|(u, _)| *u)?,
        };
        Some((by, target))
    });
    let Some((by, target)) = picked else {
        return;
    };
    let slot = ctx.slot();
    let answer = ctx
        .call(slot, "remove", |node| async move {
            node.remove_member(by, conversation, target).await
        })
        .await;
    answered(
        &ctx,
        ctx.user_index(by),
        format!("remove {}", ctx.user_index(target)),
        &answer,
    );
}

/// A permission change and a mutation by the same member at the same
/// instant: a removal racing their edit, or a demotion racing their delete.
async fn race(ctx: Arc<Ctx>, conversation: Uuid) {
    let members = ctx.members(conversation).await;
    let Some((target, role)) = ctx.rng.with(|r| r.pick(&members).copied()) else {
        return;
    };
    let index = ctx.user_index(target);
    let demote = ctx.rng.with(|r| r.chance(0.5));
    let mut both = JoinSet::new();
    if demote {
        let flipped = if role == Role::Admin {
            Role::Member
        } else {
            Role::Admin
        };
        both.spawn(change_role(
            ctx.clone(),
            conversation,
            Some((target, flipped)),
        ));
        both.spawn(delete(ctx, conversation, Some(index)));
    } else {
        both.spawn(remove_member(ctx.clone(), conversation, Some(target)));
        both.spawn(edit(ctx, conversation, Some(index)));
    }
    while both.join_next().await.is_some() {}
}

/// A client's life: connect where it is told, apply what arrives through
/// its `Place`, answer what the `Place` asks, and reconnect when the
/// connection ends.
async fn client_loop(ctx: Arc<Ctx>, client: Arc<Client>) {
    let mut wants = client.want.subscribe();
    loop {
        let want = *wants.borrow_and_update();
        if !want.online {
            if wants.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(node) = ctx.cluster.node(want.slot) else {
            // The node is down; wait for it or for a move.
            tokio::select! {
                biased;
                _ = wants.changed() => {}
                () = sleep(Duration::from_millis(250)) => {}
            }
            continue;
        };
        let slot = &ctx.cluster.slots[want.slot];
        let crashes = slot.crash_count();
        let (link, mut receivers) = ConnectionLink::new(ctx.link_len);
        let request = ConnectRequest {
            user: client.user,
            link,
            transport: Transport::WebSocket,
            device: client.device.clone(),
            resume: client
                .device
                .as_ref()
                .and(lock(&client.place).session())
                .map(|(session_id, cursor)| ResumeAt {
                    session_id: Some(session_id),
                    cursor,
                }),
        };
        let connection = tokio::select! {
            biased;
            () = slot.crashed_since(crashes) => continue,
            connection = node.connect(request) => connection,
        };
        let connection = match connection {
            Ok(connection) => connection,
            Err(error) => {
                ctx.record(Record::Disconnected {
                    client: client.index,
                    reason: format!("refused: {error}"),
                });
                sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        ctx.record(Record::Connected {
            client: client.index,
            node: want.slot,
        });
        client.connected.store(true, Ordering::Relaxed);
        let reason = loop {
            tokio::select! {
                biased;
                () = slot.crashed_since(crashes) => break "node crashed".to_owned(),
                changed = wants.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *wants.borrow() != want {
                        break "moved".to_owned();
                    }
                }
                _ = receivers.close.changed() => {
                    let close = *receivers.close.borrow();
                    break close.map_or_else(|| "closed".to_owned(), |c| c.code.to_string());
                }
                frame = receivers.frames.recv() => match frame {
                    Some(frame) => apply(&ctx, &client, &connection, &frame.json),
                    None => break "closed".to_owned(),
                },
            }
            let retry = lock(&client.retry).take();
            if let Some(text) = retry {
                let pause = ctx.rng.with(|r| r.millis(100, 1_000));
                sleep(pause).await;
                let _ = connection.client_frame(text);
            }
        };
        client.connected.store(false, Ordering::Relaxed);
        drop(connection);
        let server_closed = reason.chars().all(|c| c.is_ascii_digit()) || reason == "closed";
        ctx.record(Record::Disconnected {
            client: client.index,
            reason,
        });
        if server_closed {
            let pause = ctx.rng.with(|r| r.millis(50, 1_000));
            sleep(pause).await;
        }
    }
}

/// A control frame in a few words, for the history.
fn summary(control: &switchboard_protocol::Control) -> String {
    use switchboard_protocol::Control;
    match control {
        Control::Hello(h) => format!("hello {} {}", h.session_id, h.cursor),
        Control::Resumed(r) => format!("resumed {} {}", r.session_id, r.cursor),
        Control::ResumeFailed(f) => format!("resume_failed {:?}", f.reason),
        Control::Synced(s) => format!(
            "synced {:?} incomplete {:?} not_member {:?}",
            s.positions, s.incomplete, s.not_member
        ),
        Control::Error(e) => format!("error {:?}", e.code),
        other => format!("{other:?}"),
    }
}

/// Feeds one frame to the client's `Place` and does what it says.
fn apply(ctx: &Ctx, client: &Client, connection: &switchboard_actors::Connection, json: &[u8]) {
    let Ok(frame) = serde_json::from_slice::<ServerFrame>(json) else {
        ctx.record(Record::Undecodable {
            client: client.index,
        });
        return;
    };
    let (before, opens) = match &frame {
        ServerFrame::Event(e) => {
            let conversation = e.event.conversation_id();
            let opens = match &e.event {
                Event::ConversationCreated(_) => true,
                Event::MemberJoined(j) => j.user_id == client.user,
                _ => false,
            };
            let before = lock(&client.place).positions().get(&conversation).copied();
            (before, opens)
        }
        ServerFrame::Control(control) => {
            ctx.record(Record::Control {
                client: client.index,
                frame: summary(control),
            });
            (None, false)
        }
    };
    let step = lock(&client.place).apply(frame);
    match step {
        Step::Deliver(event) => ctx.record(Record::Delivered {
            client: client.index,
            conversation: event.conversation_id(),
            seq: event.seq(),
            prev: before,
            opens,
        }),
        Step::Reply(reply) => {
            if let Ok(text) = serde_json::to_string(&reply) {
                let _ = connection.client_frame(text);
            }
        }
        Step::RetryLater(reply) => {
            if let Ok(text) = serde_json::to_string(&reply) {
                *lock(&client.retry) = Some(text);
            }
        }
        Step::Duplicate | Step::Control(_) | Step::Nothing => {}
    }
}
