//! `resume`: how long a client that missed K events waits for them after it
//! reconnects: resumed from its session's buffer, and, for comparison in
//! the same run, synced from the store.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard_client::{Client, EventStream};
use switchboard_protocol::{
    ClientFrame, Control, ConversationKind, CreateConversation, Event, Resume, SendMessage,
    ServerFrame, Sync,
};
use uuid::Uuid;

use crate::server::Server;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Events the client misses while it is away.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) events: usize,
    /// Concurrent senders producing them.
    #[arg(long, default_value_t = 4)]
    pub(crate) senders: usize,
}

pub(crate) async fn run(binary: &Path, args: &Args, json: bool) -> anyhow::Result<()> {
    let buffer = (args.events * 2).to_string();
    let mut flags = crate::server::OPEN_LIMITS.to_vec();
    flags.extend([
        "--session-buffer-events",
        &buffer,
        "--session-buffer-bytes",
        "268435456",
    ]);
    let server = Server::start(binary, &flags).await?;
    let (_, alice_token) = server.user();
    let (bob, bob_token) = server.user();
    let alice = Client::new(&server.base, &alice_token);
    let bob_client = Client::new(&server.base, &bob_token);
    let conversation = alice
        .create_conversation(&CreateConversation {
            kind: ConversationKind::Group,
            title: Some("resume".into()),
            member_ids: vec![bob],
        })
        .await?
        .id;

    // Bob connects, goes live, and drops his connection.
    let mut stream = bob_client.connect().await?;
    let session_id = match stream.next().await? {
        Some(ServerFrame::Control(Control::Hello(hello))) => hello.session_id,
        other => bail!("expected hello, got {other:?}"),
    };
    stream.send(&ClientFrame::Sync(Sync::default())).await?;
    let position = loop {
        if let Some(ServerFrame::Control(Control::Synced(synced))) = stream.next().await? {
            break synced.positions[&conversation];
        }
    };
    stream.close().await;
    server.wait_for("sessions_detached", 1.0).await?;

    // He misses `events` messages.
    let started = Instant::now();
    send_many(&alice, conversation, args.events, args.senders).await?;
    let send_secs = started.elapsed().as_secs_f64();

    // He resumes from his session's buffer.
    let mut stream = bob_client.connect().await?;
    expect_hello(&mut stream).await?;
    let started = Instant::now();
    stream
        .send(&ClientFrame::Resume(Resume {
            session_id,
            cursor: 0,
        }))
        .await?;
    match stream.next().await? {
        Some(ServerFrame::Control(Control::Resumed(_))) => {}
        other => bail!("expected resumed, got {other:?}"),
    }
    let mut arrivals = crate::report::histogram();
    receive(
        &mut stream,
        conversation,
        position,
        args.events,
        started,
        &mut arrivals,
    )
    .await?;
    let resume = started.elapsed();
    stream.close().await;

    // The same catch-up from the store, as a client whose session is gone.
    let mut stream = bob_client.connect().await?;
    expect_hello(&mut stream).await?;
    let started = Instant::now();
    let mut positions = BTreeMap::from([(conversation, position)]);
    let mut last = position;
    loop {
        stream
            .send(&ClientFrame::Sync(Sync {
                positions: positions.clone(),
            }))
            .await?;
        let synced = loop {
            match stream.next().await?.context("stream ended")? {
                ServerFrame::Event(frame) => last = frame.event.seq(),
                ServerFrame::Control(Control::Synced(synced)) => break synced,
                _ => {}
            }
        };
        if synced.incomplete.is_empty() {
            break;
        }
        positions.insert(conversation, last);
    }
    let sync = started.elapsed();
    if last != position + args.events as i64 {
        bail!(
            "sync ended at seq {last}, expected {}",
            position + args.events as i64
        );
    }

    let per_sec = |d: Duration| args.events as f64 / d.as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "resume",
                "deliveries_per_sec": per_sec(resume),
                "latency_ms": crate::report::Latency::of(&arrivals).json(),
                "ceiling": {
                    "name": "sync from the store (the baseline a client without a session gets)",
                    "deliveries_per_sec": per_sec(sync),
                },
                "ratio_to_ceiling": sync.as_secs_f64() / resume.as_secs_f64(),
                "server_rss_bytes": server.peak_rss()?,
                "events": args.events,
                "resume_ms": resume.as_secs_f64() * 1000.0,
                "resume_events_per_sec": per_sec(resume),
                "sync_ms": sync.as_secs_f64() * 1000.0,
                "sync_events_per_sec": per_sec(sync),
                "sync_over_resume": sync.as_secs_f64() / resume.as_secs_f64(),
                "sends_per_sec_while_away": args.events as f64 / send_secs,
            })
        );
        return Ok(());
    }
    println!(
        "resume: {} missed events delivered after a reconnect",
        args.events
    );
    println!(
        "  from the session buffer: {:>8.1} ms ({:.0} events/s)",
        resume.as_secs_f64() * 1000.0,
        per_sec(resume)
    );
    println!(
        "  from the store (sync):   {:>8.1} ms ({:.0} events/s), {:.1}× the buffer's time",
        sync.as_secs_f64() * 1000.0,
        per_sec(sync),
        sync.as_secs_f64() / resume.as_secs_f64()
    );
    println!(
        "  (the {} sends while away took {:.1} s)",
        args.events, send_secs
    );
    Ok(())
}

async fn expect_hello(stream: &mut EventStream) -> anyhow::Result<()> {
    match stream.next().await? {
        Some(ServerFrame::Control(Control::Hello(_))) => Ok(()),
        other => bail!("expected hello, got {other:?}"),
    }
}

/// Reads until `count` messages after `position` arrived, in order.
async fn receive(
    stream: &mut EventStream,
    conversation: Uuid,
    position: i64,
    count: usize,
    started: Instant,
    arrivals: &mut hdrhistogram::Histogram<u64>,
) -> anyhow::Result<()> {
    let mut seq = position;
    let mut got = 0;
    while got < count {
        match stream.next().await?.context("stream ended")? {
            ServerFrame::Event(frame) if frame.event.conversation_id() == conversation => {
                if frame.event.seq() != seq + 1 {
                    bail!("after seq {seq} came {}", frame.event.seq());
                }
                seq += 1;
                if matches!(frame.event, Event::MessageNew(_)) {
                    got += 1;
                    // When each event arrived, counted from the resume.
                    arrivals.saturating_record((started.elapsed().as_micros() as u64).max(1));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

async fn send_many(
    client: &Client,
    conversation: Uuid,
    count: usize,
    senders: usize,
) -> anyhow::Result<()> {
    let senders = senders.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..senders {
        let client = client.clone();
        let share = count / senders + usize::from(s < count % senders);
        tasks.spawn(async move {
            for i in 0..share {
                client
                    .send(&SendMessage {
                        conversation_id: conversation,
                        encrypted_content: "aGVsbG8gd29ybGQ=".into(),
                        nonce: "bm9uY2UtMDEyMzQ1Njc4OQ==".into(),
                        message_type: "text".into(),
                        idempotency_key: Some(format!("{s}-{i}")),
                    })
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}
