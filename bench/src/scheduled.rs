//! `scheduled`: a burst of scheduled messages all due in the same second
//! (10,000 by default), on SQLite and on PostgreSQL: the time from their
//! due time until every one is committed, and until every one has reached
//! a live WebSocket member. The baseline, measured in the same run on the
//! same server, is the same number of messages sent at once by 64
//! concurrent clients through `POST /messages`: the time until those have
//! all reached the members.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use futures_util::{StreamExt, TryStreamExt};
use switchboard_client::{Client, EventStream};
use switchboard_protocol::{
    ClientFrame, Control, ConversationKind, CreateConversation, Event, ScheduleMessage,
    SendMessage, ServerFrame, Sync,
};
use tokio::task::JoinSet;

use crate::report::{Latency, histogram, round};
use crate::server::{OPEN_LIMITS, Server};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Scheduled messages in the burst.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) entries: usize,
    /// Conversations they go to, each with one sender and one live member
    /// (100 keeps each sender within the default cap of 100 pending).
    #[arg(long, default_value_t = 100)]
    pub(crate) conversations: usize,
    /// Seconds ahead the burst is due; scheduling it must be done by then.
    #[arg(long, default_value_t = 20)]
    pub(crate) lead_secs: u64,
    /// PostgreSQL to measure on too (a fresh database is created in it and
    /// dropped afterwards).
    #[arg(long, env = "SWITCHBOARD_BENCH_POSTGRES_URL")]
    pub(crate) postgres_url: Option<String>,
}

/// Requests in flight while scheduling or sending.
const CONCURRENCY: usize = 64;

/// Messages the members received: when, and the commit time each carries.
#[derive(Debug, Default)]
struct Arrivals {
    seen: Mutex<Vec<(Instant, DateTime<Utc>)>>,
}

impl Arrivals {
    fn len(&self) -> usize {
        self.seen.lock().expect("arrivals lock").len()
    }

    /// Waits until `count` have arrived; fails after `within`.
    async fn until(&self, count: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while self.len() < count {
            if Instant::now() > deadline {
                bail!("only {} of {count} messages arrived", self.len());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Those after the first `skip`.
    fn after(&self, skip: usize) -> Vec<(Instant, DateTime<Utc>)> {
        self.seen.lock().expect("arrivals lock")[skip..].to_vec()
    }
}

/// One database's figures.
#[derive(Debug)]
struct Run {
    database: &'static str,
    scheduled_per_sec: f64,
    /// From the due time until the last commit, and the last arrival.
    committed_after: Duration,
    delivered_after: Duration,
    lag: Latency,
    /// The same messages sent at once: until the last arrival.
    immediate_delivered_after: Duration,
}

impl Run {
    fn ratio(&self) -> f64 {
        self.delivered_after.as_secs_f64() / self.immediate_delivered_after.as_secs_f64()
    }
}

pub(crate) async fn run(binary: &Path, args: &Args, json: bool) -> anyhow::Result<()> {
    let mut runs = vec![measure(binary, "sqlite", &OPEN_LIMITS, args).await?];
    if let Some(url) = &args.postgres_url {
        let database = crate::durable::Scratch::create(url).await?;
        let mut flags = OPEN_LIMITS.to_vec();
        flags.extend(["--database-url", database.url.as_str()]);
        let result = measure(binary, "postgres", &flags, args).await;
        database.drop_it().await;
        runs.push(result?);
    }
    for r in &runs {
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "scenario": "scheduled",
                    "database": r.database,
                    "entries": args.entries,
                    "conversations": args.conversations,
                    "scheduled_per_sec": round(r.scheduled_per_sec),
                    "committed_after_secs": round(r.committed_after.as_secs_f64()),
                    "delivered_after_secs": round(r.delivered_after.as_secs_f64()),
                    "lag_ms": r.lag.json(),
                    "baseline": {
                        "name": format!("the same messages sent at once by {CONCURRENCY} clients"),
                        "delivered_after_secs": round(r.immediate_delivered_after.as_secs_f64()),
                    },
                    "ratio_to_baseline": round(r.ratio()),
                })
            );
        } else {
            println!(
                "scheduled ({}): {} messages due in the same second, {} conversations",
                r.database, args.entries, args.conversations
            );
            println!(
                "  due → all committed {:.2} s, all delivered {:.2} s; lag {}",
                r.committed_after.as_secs_f64(),
                r.delivered_after.as_secs_f64(),
                r.lag.text()
            );
            println!(
                "  baseline: sent at once by {CONCURRENCY} clients, all delivered in {:.2} s; ratio {:.3}",
                r.immediate_delivered_after.as_secs_f64(),
                r.ratio()
            );
            println!("  (scheduling ran at {:.0}/s)", r.scheduled_per_sec);
        }
    }
    Ok(())
}

async fn measure(
    binary: &Path,
    database: &'static str,
    flags: &[&str],
    args: &Args,
) -> anyhow::Result<Run> {
    let server = Server::start(binary, flags).await?;
    let arrivals = Arc::new(Arrivals::default());
    let mut senders = Vec::with_capacity(args.conversations);
    let mut receivers = JoinSet::new();
    for _ in 0..args.conversations.max(1) {
        let (_, sender_token) = server.user();
        let (member, member_token) = server.user();
        let sender = Client::new(&server.base, &sender_token);
        let room = sender
            .create_conversation(&CreateConversation {
                kind: ConversationKind::Group,
                title: Some("scheduled".into()),
                member_ids: vec![member],
            })
            .await?
            .id;
        let stream = live(&Client::new(&server.base, &member_token)).await?;
        receivers.spawn(receive(stream, Arc::clone(&arrivals)));
        senders.push((sender, room));
    }
    // Each sender's share of the messages.
    let work: Vec<(usize, usize)> = (0..args.entries).map(|i| (i % senders.len(), i)).collect();
    let within = Duration::from_secs(120);

    // The baseline: the same messages, sent at once.
    let started = Instant::now();
    futures_util::stream::iter(work.iter().map(|&(s, i)| {
        let (client, room) = &senders[s];
        let request = SendMessage {
            conversation_id: *room,
            encrypted_content: STANDARD.encode(format!("now {i}")),
            nonce: STANDARD.encode("nonce-0123456789"),
            message_type: "text".into(),
            idempotency_key: None,
        };
        async move { client.send(&request).await.map(drop) }
    }))
    .buffer_unordered(CONCURRENCY)
    .try_collect::<()>()
    .await
    .context("a baseline send failed")?;
    arrivals.until(args.entries, within).await?;
    let immediate_delivered_after = arrivals
        .after(0)
        .iter()
        .map(|(at, _)| at.duration_since(started))
        .max()
        .unwrap_or_default();

    // The burst: scheduled for one instant, then waited for.
    // To the millisecond, as the server keeps it.
    let due = chrono::DurationRound::duration_trunc(
        Utc::now() + TimeDelta::seconds(i64::try_from(args.lead_secs).unwrap_or(20)),
        TimeDelta::milliseconds(1),
    )?;
    let scheduling = Instant::now();
    futures_util::stream::iter(work.iter().map(|&(s, i)| {
        let (client, room) = &senders[s];
        let request = ScheduleMessage {
            deliver_at: due,
            encrypted_content: STANDARD.encode(format!("later {i}")),
            nonce: STANDARD.encode("nonce-0123456789"),
            message_type: "text".into(),
            idempotency_key: None,
        };
        async move { client.schedule(*room, &request).await.map(drop) }
    }))
    .buffer_unordered(CONCURRENCY)
    .try_collect::<()>()
    .await
    .context("scheduling failed")?;
    let scheduled_per_sec = args.entries as f64 / scheduling.elapsed().as_secs_f64();
    let until_due = (due - Utc::now())
        .to_std()
        .context("scheduling took past the due time: raise --lead-secs")?;
    let due_instant = Instant::now() + until_due;
    arrivals.until(2 * args.entries, until_due + within).await?;
    let burst = arrivals.after(args.entries);
    let mut lag = histogram();
    for (at, _) in &burst {
        let micros = at.saturating_duration_since(due_instant).as_micros();
        lag.saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
    }
    let committed_after = burst
        .iter()
        .map(|(_, committed)| *committed - due)
        .max()
        .and_then(|d| d.to_std().ok())
        .unwrap_or_default();
    let delivered_after = burst
        .iter()
        .map(|(at, _)| at.saturating_duration_since(due_instant))
        .max()
        .unwrap_or_default();
    let sent = server
        .metric("scheduled_messages_total{outcome=\"sent\"}")
        .await?;
    if sent as usize != args.entries {
        bail!("the server counts {sent} scheduled messages sent");
    }
    receivers.abort_all();
    Ok(Run {
        database,
        scheduled_per_sec,
        committed_after,
        delivered_after,
        lag: Latency::of(&lag),
        immediate_delivered_after,
    })
}

/// A member's live stream, past its `hello` and first `synced`.
async fn live(client: &Client) -> anyhow::Result<EventStream> {
    let mut stream = client.connect().await?;
    match stream.next().await? {
        Some(ServerFrame::Control(Control::Hello(_))) => {}
        other => bail!("expected hello, got {other:?}"),
    }
    stream.send(&ClientFrame::Sync(Sync::default())).await?;
    loop {
        if let Some(ServerFrame::Control(Control::Synced(_))) = stream.next().await? {
            return Ok(stream);
        }
    }
}

async fn receive(mut stream: EventStream, arrivals: Arc<Arrivals>) -> anyhow::Result<()> {
    while let Some(frame) = stream.next().await? {
        if let ServerFrame::Event(frame) = frame
            && let Event::MessageNew(message) = frame.event
        {
            arrivals
                .seen
                .lock()
                .expect("arrivals lock")
                .push((Instant::now(), message.created_at));
        }
    }
    Ok(())
}
