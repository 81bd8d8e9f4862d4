//! `fanout`: C WebSocket clients, each its own user, in conversations of M
//! members; one member of each conversation sends over HTTP, flat out and
//! then at half the rate it reached (or at a fixed `--rate`), and every
//! member's connection receives. Measured against Switchboard, the bare
//! broadcast server (the ceiling) and Socket.IO with its Redis adapter
//! (the peer), one after the other in the same run, with the same
//! workload code.
//!
//! Each message carries its scheduled send time, so end-to-end latency is
//! measured from when the send was due, not from when a delayed sender got
//! round to it (no coordinated omission).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{StreamExt as _, TryStreamExt as _};
use hdrhistogram::Histogram;
use switchboard_client::{Client, EventStream};
use switchboard_protocol::{
    ClientFrame, Control, ConversationKind, CreateConversation, Event, SendMessage, ServerFrame,
    Sync,
};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::peer::{Peer, SocketIo};
use crate::process::CpuMeter;
use crate::report::{self, Latency, round};
use crate::server::Server;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// WebSocket clients, each its own user.
    #[arg(long, default_value_t = 1000)]
    pub(crate) clients: usize,
    /// Members per conversation (each conversation has one sender).
    #[arg(long, default_value_t = 10)]
    pub(crate) members: usize,
    /// Sends per second in all; without it, flat out and then at half the
    /// rate flat out reached.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Seconds each measured phase lasts (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    pub(crate) secs: u64,
    /// Skip the Socket.IO peer.
    #[arg(long)]
    pub(crate) no_peer: bool,
    /// Node processes the Socket.IO peer runs (one per core is how it
    /// scales).
    #[arg(long, default_value_t = 2)]
    pub(crate) peer_processes: usize,
    /// The Socket.IO peer's folder [default: bench/peers/socketio].
    #[arg(long)]
    pub(crate) peer_dir: Option<PathBuf>,
    /// Write the end-to-end latency plot (SVG) here.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
}

/// What a fanout run is measured against.
enum Target<'a> {
    Switchboard(&'a Server),
    Bare(&'a Server),
    SocketIo(&'a Peer),
}

impl Target<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Switchboard(_) => "switchboard",
            Self::Bare(_) => "bare broadcast server",
            Self::SocketIo(_) => "socket.io + redis adapter",
        }
    }

    fn user(&self) -> (Uuid, String) {
        match self {
            Self::Switchboard(server) | Self::Bare(server) => server.user(),
            Self::SocketIo(_) => {
                let id = Uuid::new_v4();
                (id, id.to_string())
            }
        }
    }

    fn base(&self, i: usize) -> String {
        match self {
            Self::Switchboard(server) | Self::Bare(server) => server.base.clone(),
            Self::SocketIo(peer) => peer.bases[i % peer.bases.len()].clone(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Self::Switchboard(server) | Self::Bare(server) => vec![server.pid()],
            Self::SocketIo(peer) => peer.pids(),
        }
    }

    fn peak_rss(&self) -> anyhow::Result<u64> {
        match self {
            Self::Switchboard(server) | Self::Bare(server) => server.peak_rss(),
            Self::SocketIo(peer) => peer.peak_rss(),
        }
    }

    /// Creates a conversation of `members` (the first creates it).
    async fn room(&self, members: &[(Uuid, String)]) -> anyhow::Result<Uuid> {
        match self {
            Self::Switchboard(server) | Self::Bare(server) => {
                let client = Client::new(&server.base, &members[0].1);
                Ok(client
                    .create_conversation(&CreateConversation {
                        kind: ConversationKind::Group,
                        title: Some("fanout".into()),
                        member_ids: members[1..].iter().map(|m| m.0).collect(),
                    })
                    .await?
                    .id)
            }
            // Socket.IO rooms exist once someone joins them.
            Self::SocketIo(_) => Ok(Uuid::new_v4()),
        }
    }

    /// A live connection for `token`, in `room`, ready to receive.
    async fn connect(&self, i: usize, token: &str, room: Uuid) -> anyhow::Result<Feed> {
        match self {
            Self::Switchboard(server) | Self::Bare(server) => {
                let mut stream = Client::new(&server.base, token).connect().await?;
                match stream.next().await? {
                    Some(ServerFrame::Control(Control::Hello(_))) => {}
                    other => bail!("expected hello, got {other:?}"),
                }
                stream.send(&ClientFrame::Sync(Sync::default())).await?;
                loop {
                    match stream.next().await?.context("stream ended before synced")? {
                        ServerFrame::Control(Control::Synced(_)) => break,
                        _ => continue,
                    }
                }
                Ok(Feed::Stream(stream))
            }
            Self::SocketIo(peer) => Ok(Feed::SocketIo(
                SocketIo::connect(&peer.bases[i % peer.bases.len()], &[room]).await?,
            )),
        }
    }
}

/// A receiving connection.
enum Feed {
    Stream(EventStream),
    SocketIo(SocketIo),
}

impl Feed {
    async fn next(&mut self) -> anyhow::Result<Option<ServerFrame>> {
        match self {
            Self::Stream(stream) => Ok(stream.next().await?),
            Self::SocketIo(socket) => socket.next().await,
        }
    }
}

/// Microseconds since the run's origin, carried in each message.
#[derive(Debug)]
struct Clock(Instant);

impl Clock {
    fn micros(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }

    fn at(&self, micros: u64) -> Instant {
        self.0 + Duration::from_micros(micros)
    }
}

/// Which send times count: `[start, end)`.
#[derive(Debug)]
struct Window {
    start: AtomicU64,
    end: AtomicU64,
}

impl Window {
    fn contains(&self, micros: u64) -> bool {
        micros >= self.start.load(Ordering::Relaxed) && micros < self.end.load(Ordering::Relaxed)
    }
}

/// What the receivers share.
#[derive(Debug)]
struct Receiving {
    clock: Arc<Clock>,
    window: Window,
    deliveries: AtomicU64,
}

impl Receiving {
    /// A fresh clock, and no window open yet.
    fn new() -> Self {
        Self {
            clock: Arc::new(Clock(Instant::now())),
            window: Window {
                start: AtomicU64::new(u64::MAX),
                end: AtomicU64::new(u64::MAX),
            },
            deliveries: AtomicU64::new(0),
        }
    }
}

/// One phase's figures.
#[derive(Debug)]
pub(crate) struct Phase {
    pub(crate) rate: Option<f64>,
    pub(crate) secs: f64,
    pub(crate) sends: u64,
    pub(crate) deliveries: u64,
    pub(crate) expected_deliveries: u64,
    pub(crate) ack: Histogram<u64>,
    pub(crate) e2e: Histogram<u64>,
    pub(crate) server_cores: f64,
    pub(crate) bench_cores: f64,
}

impl Phase {
    pub(crate) fn sends_per_sec(&self) -> f64 {
        self.sends as f64 / self.secs
    }

    pub(crate) fn deliveries_per_sec(&self) -> f64 {
        self.deliveries as f64 / self.secs
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "target_rate": self.rate.map(round),
            "sends_per_sec": round(self.sends_per_sec()),
            "deliveries_per_sec": round(self.deliveries_per_sec()),
            "delivered_fraction": round(self.deliveries as f64 / self.expected_deliveries.max(1) as f64),
            "send_ack_latency_ms": Latency::of(&self.ack).json(),
            "latency_ms": Latency::of(&self.e2e).json(),
            "server_cpu_cores": round(self.server_cores),
            "bench_cpu_cores": round(self.bench_cores),
        })
    }
}

/// One target's run: flat out (or at `--rate`), then at half that rate.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) name: &'static str,
    pub(crate) max: Phase,
    pub(crate) half: Option<Phase>,
    pub(crate) server_rss_bytes: u64,
}

impl Run {
    /// The phase whose latency is reported: half rate where there is one.
    pub(crate) fn latency_phase(&self) -> &Phase {
        self.half.as_ref().unwrap_or(&self.max)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "sends_per_sec": round(self.max.sends_per_sec()),
            "deliveries_per_sec": round(self.max.deliveries_per_sec()),
            "latency_ms": Latency::of(&self.latency_phase().e2e).json(),
            "send_ack_latency_ms": Latency::of(&self.latency_phase().ack).json(),
            "server_rss_bytes": self.server_rss_bytes,
            "max": self.max.json(),
            "half_rate": self.half.as_ref().map(Phase::json),
        })
    }
}

pub(crate) async fn run(binary: &Path, args: &Args, json: bool) -> anyhow::Result<()> {
    if args.members < 2 || args.clients < args.members {
        bail!("--members must be at least 2 and --clients at least --members");
    }
    crate::limits::check_open_files(args.clients * 2 + 256)?;
    let mut runs = Vec::new();
    {
        let server = Server::start(binary, &crate::server::OPEN_LIMITS).await?;
        runs.push(measure(&Target::Switchboard(&server), args).await?);
    }
    {
        let bare = Server::start_bare().await?;
        runs.push(measure(&Target::Bare(&bare), args).await?);
    }
    if !args.no_peer {
        let dir = args
            .peer_dir
            .clone()
            .unwrap_or_else(crate::peer::default_dir);
        let peer = Peer::start(&dir, args.peer_processes).await?;
        runs.push(measure(&Target::SocketIo(&peer), args).await?);
    }
    let (switchboard, ceiling, peer) = (&runs[0], &runs[1], runs.get(2));
    let ratio = switchboard.max.deliveries_per_sec() / ceiling.max.deliveries_per_sec();
    let over_peer = peer.map(|p| switchboard.max.deliveries_per_sec() / p.max.deliveries_per_sec());
    if let Some(path) = &args.plot {
        let series: Vec<(String, &Histogram<u64>)> = runs
            .iter()
            .map(|r| {
                let phase = r.latency_phase();
                (
                    format!("{} ({:.0}/s)", r.name, phase.sends_per_sec()),
                    &phase.e2e,
                )
            })
            .collect();
        report::plot(
            path,
            &format!(
                "fanout end-to-end latency at half rate: {} clients, {} per conversation",
                args.clients, args.members
            ),
            &series,
        )?;
    }
    if json {
        let mut out = serde_json::json!({
            "scenario": "fanout",
            "clients": args.clients,
            "members": args.members,
            "deliveries_per_sec": round(switchboard.max.deliveries_per_sec()),
            "sends_per_sec": round(switchboard.max.sends_per_sec()),
            "latency_ms": Latency::of(&switchboard.latency_phase().e2e).json(),
            "send_ack_latency_ms": Latency::of(&switchboard.latency_phase().ack).json(),
            "server_rss_bytes": switchboard.server_rss_bytes,
            "server_cpu_cores": round(switchboard.max.server_cores),
            "ceiling": ceiling.json(),
            "ratio_to_ceiling": round(ratio),
            "switchboard": switchboard.json(),
        });
        if let Some(peer) = peer {
            out["peer"] = peer.json();
            out["ratio_to_peer"] = over_peer.map(round).into();
        }
        println!("{out}");
        return Ok(());
    }
    println!(
        "fanout: {} WebSocket clients, {} per conversation, {} s per phase",
        args.clients, args.members, args.secs
    );
    for r in &runs {
        println!("  {}", r.name);
        for phase in std::iter::once(&r.max).chain(&r.half) {
            let label = match phase.rate {
                None => "flat out".to_owned(),
                Some(rate) => format!("at {rate:.0}/s"),
            };
            println!(
                "    {label:<12} {:>9.0} sends/s {:>10.0} deliveries/s ({:.1}% delivered), server {:.2} cores, bench {:.2} cores",
                phase.sends_per_sec(),
                phase.deliveries_per_sec(),
                100.0 * phase.deliveries as f64 / phase.expected_deliveries.max(1) as f64,
                phase.server_cores,
                phase.bench_cores,
            );
            println!(
                "                 end-to-end {}; send ack {}",
                Latency::of(&phase.e2e).text(),
                Latency::of(&phase.ack).text()
            );
        }
        println!(
            "    peak RSS {:.1} MiB",
            r.server_rss_bytes as f64 / 1048576.0
        );
    }
    println!("  ratio to the bare ceiling (deliveries/s): {ratio:.3}");
    if let Some(over_peer) = over_peer {
        println!("  ratio to socket.io + redis adapter (deliveries/s): {over_peer:.2}×");
    }
    Ok(())
}

/// Runs the workload against one target: flat out, then at half the rate
/// reached (or at `--rate` only).
async fn measure(target: &Target<'_>, args: &Args) -> anyhow::Result<Run> {
    let groups = args.clients / args.members;
    let receiving = Arc::new(Receiving::new());

    // Users and conversations.
    let mut users = Vec::with_capacity(groups * args.members);
    let mut rooms = Vec::with_capacity(groups);
    for _ in 0..groups {
        let members: Vec<(Uuid, String)> = (0..args.members).map(|_| target.user()).collect();
        rooms.push(target.room(&members).await?);
        users.push(members);
    }

    // Every member connects and listens, 64 connecting at a time.
    let connecting = users
        .iter()
        .enumerate()
        .flat_map(|(g, members)| members.iter().map(move |m| (g, m.1.as_str())))
        .enumerate()
        .map(|(i, (g, token))| target.connect(i, token, rooms[g]));
    let feeds: Vec<Feed> = futures_util::stream::iter(connecting)
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let mut receivers = JoinSet::new();
    let mut recorders = Vec::new();
    for feed in feeds {
        let recorder = Arc::new(Mutex::new(report::histogram()));
        recorders.push(Arc::clone(&recorder));
        receivers.spawn(receive(feed, Arc::clone(&receiving), recorder));
    }

    let senders: Vec<(Client, Uuid)> = users
        .iter()
        .zip(&rooms)
        .enumerate()
        .map(|(i, (members, &room))| (Client::new(target.base(i), &members[0].1), room))
        .collect();
    let pids = target.pids();
    let max = phase(
        &senders,
        &receiving,
        &recorders,
        &pids,
        args.rate,
        args.secs,
        args.members,
    )
    .await?;
    let half = match args.rate {
        Some(_) => None,
        None => {
            let rate = max.sends_per_sec() / 2.0;
            Some(
                phase(
                    &senders,
                    &receiving,
                    &recorders,
                    &pids,
                    Some(rate),
                    args.secs,
                    args.members,
                )
                .await?,
            )
        }
    };
    receivers.abort_all();
    Ok(Run {
        name: target.name(),
        max,
        half,
        server_rss_bytes: target.peak_rss()?,
    })
}

async fn receive(
    mut feed: Feed,
    receiving: Arc<Receiving>,
    recorder: Arc<Mutex<Histogram<u64>>>,
) -> anyhow::Result<()> {
    while let Some(frame) = feed.next().await? {
        let ServerFrame::Event(frame) = frame else {
            continue;
        };
        let Event::MessageNew(message) = frame.event else {
            continue;
        };
        let Some(sent) = decode(&message.encrypted_content) else {
            continue;
        };
        if receiving.window.contains(sent) {
            let latency = receiving.clock.micros().saturating_sub(sent);
            recorder
                .lock()
                .expect("recorder lock")
                .saturating_record(latency.max(1));
            receiving.deliveries.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn encode(micros: u64) -> String {
    BASE64.encode(micros.to_le_bytes())
}

fn decode(content: &str) -> Option<u64> {
    let bytes = BASE64.decode(content).ok()?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// A phase of sends with nobody receiving (the `durable` scenario).
pub(crate) async fn send_phase(
    senders: &[(Client, Uuid)],
    pids: &[u32],
    rate: Option<f64>,
    secs: u64,
) -> anyhow::Result<Phase> {
    let receiving = Arc::new(Receiving::new());
    phase(senders, &receiving, &[], pids, rate, secs, 0).await
}

/// One measured phase: a 1 s warm-up, then `secs` of sends at `rate` (or
/// flat out), then up to 2 s for the last deliveries to arrive.
async fn phase(
    senders: &[(Client, Uuid)],
    receiving: &Arc<Receiving>,
    recorders: &[Arc<Mutex<Histogram<u64>>>],
    pids: &[u32],
    rate: Option<f64>,
    secs: u64,
    members: usize,
) -> anyhow::Result<Phase> {
    let clock = &receiving.clock;
    let begin = clock.micros() + 10_000;
    let start = begin + 1_000_000;
    let end = start + secs * 1_000_000;
    receiving.window.start.store(start, Ordering::Relaxed);
    receiving.window.end.store(end, Ordering::Relaxed);
    receiving.deliveries.store(0, Ordering::Relaxed);
    for recorder in recorders {
        recorder.lock().expect("recorder lock").reset();
    }
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let count = senders.len() as u64;
    for (i, (client, room)) in senders.iter().enumerate() {
        let (client, room, clock, acked) =
            (client.clone(), *room, Arc::clone(clock), Arc::clone(&acked));
        // At a fixed rate each sender sends every `interval`, the senders
        // staggered across it.
        let interval = rate.map(|r| (count as f64 * 1_000_000.0 / r) as u64);
        let offset = interval.map_or(0, |iv| iv * i as u64 / count);
        tasks.spawn(async move {
            let mut ack = report::histogram();
            let mut k = 0u64;
            loop {
                let due = match interval {
                    Some(iv) => {
                        let due = begin + offset + k * iv;
                        tokio::time::sleep_until(clock.at(due).into()).await;
                        due
                    }
                    None => clock.micros(),
                };
                if due >= end {
                    break;
                }
                k += 1;
                client
                    .send(&SendMessage {
                        conversation_id: room,
                        encrypted_content: encode(due),
                        nonce: "bm9uY2UtMDEyMzQ1Njc4OQ==".into(),
                        message_type: "text".into(),
                        idempotency_key: None,
                    })
                    .await?;
                if due >= start {
                    ack.saturating_record(clock.micros().saturating_sub(due).max(1));
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(ack)
        });
    }
    tokio::time::sleep_until(clock.at(start).into()).await;
    let server = CpuMeter::start(pids)?;
    let bench = CpuMeter::start(&[crate::process::own_pid()])?;
    tokio::time::sleep_until(clock.at(end).into()).await;
    let (server_cores, bench_cores) = (server.cores()?, bench.cores()?);
    let mut ack = report::histogram();
    while let Some(done) = tasks.join_next().await {
        ack.add(done.context("sender task")??)?;
    }
    let sends = acked.load(Ordering::Relaxed);
    let expected_deliveries = sends * members as u64;
    // The last sends' deliveries are still on their way.
    let drain = Instant::now();
    while receiving.deliveries.load(Ordering::Relaxed) < expected_deliveries
        && drain.elapsed() < Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut e2e = report::histogram();
    for recorder in recorders {
        e2e.add(&*recorder.lock().expect("recorder lock"))?;
    }
    Ok(Phase {
        rate,
        secs: secs as f64,
        sends,
        deliveries: receiving.deliveries.load(Ordering::Relaxed),
        expected_deliveries,
        ack,
        e2e,
        server_cores,
        bench_cores,
    })
}
