//! `idle`: server memory per idle connection. N WebSockets, then N SSE
//! streams, are opened against Switchboard and held; the same N
//! WebSockets are opened against the bare broadcast server, whose figure
//! is the floor the socket stack itself costs. Each figure is (RSS with
//! the connections − RSS right before) / N.

use std::path::Path;

use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, TryStreamExt as _};
use hdrhistogram::Histogram;

use crate::connections::{self, Open};
use crate::report::{self, Latency, round};
use crate::server::{OPEN_LIMITS, Server};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Idle WebSocket connections.
    #[arg(long, default_value_t = 5000)]
    pub(crate) websockets: usize,
    /// Idle SSE connections.
    #[arg(long, default_value_t = 5000)]
    pub(crate) sse: usize,
}

/// The target for one idle WebSocket, in bytes of server memory.
const WEBSOCKET_TARGET: u64 = 8 * 1024;

pub(crate) async fn run(binary: &Path, args: &Args, json: bool) -> anyhow::Result<()> {
    crate::limits::check_open_files(args.websockets.max(args.sse) * 2 + 256)?;
    let mut flags = OPEN_LIMITS.to_vec();
    flags.extend(["--session-grace-secs", "1"]);
    let server = Server::start(binary, &flags).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    // Warm-up: the first connections initialize what every later one shares.
    drop(open(&server, &http, 64, true).await?);
    drop(open(&server, &http, 64, false).await?);
    let (ws, connect) = per_connection(&server, &http, args.websockets, true).await?;
    server.wait_for("websocket_active_connections", 0.0).await?;
    let (sse, _) = per_connection(&server, &http, args.sse, false).await?;
    let rss = server.peak_rss()?;
    drop(server);

    let bare = Server::start_bare().await?;
    drop(open(&bare, &http, 64, true).await?);
    let (ceiling, _) = per_connection(&bare, &http, args.websockets, true).await?;
    drop(bare);

    let ratio = ceiling as f64 / ws.max(1) as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "idle",
                "websockets": args.websockets,
                "sse": args.sse,
                "websocket_bytes_per_connection": ws,
                "sse_bytes_per_connection": sse,
                "target_bytes_per_websocket": WEBSOCKET_TARGET,
                "ceiling": {
                    "name": "bare broadcast server",
                    "websocket_bytes_per_connection": ceiling,
                },
                "ratio_to_ceiling": round(ratio),
                "latency_ms": Latency::of(&connect).json(),
                "server_rss_bytes": rss,
            })
        );
        return Ok(());
    }
    println!(
        "idle: server memory per idle connection ({} WebSockets, {} SSE streams)",
        args.websockets, args.sse
    );
    println!(
        "  switchboard WebSocket: {:>6.1} KiB (target {:.0} KiB)",
        ws as f64 / 1024.0,
        WEBSOCKET_TARGET as f64 / 1024.0
    );
    println!("  switchboard SSE:       {:>6.1} KiB", sse as f64 / 1024.0);
    println!(
        "  opening a WebSocket to its hello and pong: {}",
        Latency::of(&connect).text()
    );
    println!(
        "  bare WebSocket server: {:>6.1} KiB; ratio (bare / switchboard) {ratio:.3}",
        ceiling as f64 / 1024.0
    );
    Ok(())
}

/// (RSS holding `count` connections − RSS right before) / `count`, and
/// how long they took to open.
async fn per_connection(
    server: &Server,
    http: &reqwest::Client,
    count: usize,
    websocket: bool,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    connections::settle().await;
    let baseline = server.rss()?;
    let (held, took) = open(server, http, count, websocket).await?;
    connections::settle().await;
    let with = server.rss()?;
    drop(held);
    Ok((with.saturating_sub(baseline) / count.max(1) as u64, took))
}

/// Opens `count` connections, 64 at a time, with how long each took to
/// be ready (connect to `hello`, and for a WebSocket a `pong`), in µs.
async fn open(
    server: &Server,
    http: &reqwest::Client,
    count: usize,
    websocket: bool,
) -> anyhow::Result<(Vec<Open>, Histogram<u64>)> {
    let opening = (0..count).map(|_| {
        let (_, token) = server.user();
        let base = server.base.clone();
        async move {
            let started = Instant::now();
            let open = if websocket {
                connections::open_websocket(&base, &token).await
            } else {
                connections::open_sse(http, &base, &token).await
            }?;
            anyhow::Ok((open, started.elapsed()))
        }
    });
    let opened: Vec<(Open, Duration)> = futures_util::stream::iter(opening)
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let mut took = report::histogram();
    let mut held = Vec::with_capacity(opened.len());
    for (open, elapsed) in opened {
        took.saturating_record((elapsed.as_micros() as u64).max(1));
        held.push(open);
    }
    Ok((held, took))
}
