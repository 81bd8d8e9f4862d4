//! `connections`: open thousands of WebSocket and SSE connections, hold
//! them, close them, and read the server's memory at each step.
//!
//! Each phase measures its own baseline right before it opens anything, so
//! the per-connection figure is (peak − baseline) / connections, and "after"
//! shows whether memory came back once the connections closed, their
//! sessions' grace period passed and the allocator returned the pages.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use switchboard_client::{Client, EventStream};
use switchboard_protocol::{ClientFrame, Control, ServerFrame};
use tokio::task::JoinSet;

use crate::server::Server;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// WebSocket connections in the WebSocket phase.
    #[arg(long, default_value_t = 4000)]
    websockets: usize,
    /// SSE connections in the SSE phase.
    #[arg(long, default_value_t = 4000)]
    sse: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Times the mixed phase (half of each) is repeated, to show memory
    /// does not creep from cycle to cycle.
    #[arg(long, default_value_t = 2)]
    cycles: usize,
}

/// One open connection, kept alive until dropped.
pub(crate) enum Open {
    WebSocket(#[allow(dead_code)] EventStream),
    Sse(#[allow(dead_code)] reqwest::Response),
}

/// What one phase measured, in bytes.
#[derive(Debug)]
struct Phase {
    name: String,
    websockets: usize,
    sse: usize,
    baseline: u64,
    peak: u64,
    after_close: u64,
    after: u64,
}

impl Phase {
    fn connections(&self) -> usize {
        self.websockets + self.sse
    }

    fn per_connection(&self) -> u64 {
        self.peak.saturating_sub(self.baseline) / self.connections().max(1) as u64
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "phase": self.name,
            "websockets": self.websockets,
            "sse": self.sse,
            "rss_baseline_bytes": self.baseline,
            "rss_peak_bytes": self.peak,
            "rss_after_close_bytes": self.after_close,
            "rss_after_bytes": self.after,
            "per_connection_bytes": self.per_connection(),
            "after_over_baseline": self.after as f64 / self.baseline as f64,
        })
    }
}

pub(crate) async fn run(binary: &Path, args: &Args, json: bool) -> anyhow::Result<()> {
    let mut flags = crate::server::OPEN_LIMITS.to_vec();
    flags.extend(["--session-grace-secs", "1"]);
    let server = Server::start(binary, &flags).await?;
    let sse_http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    // Warm-up: the first connections initialize what every later one shares.
    let mut phases = Vec::new();
    let warm = phase(&server, &sse_http, "warm-up", 64, 64, args.concurrency).await?;
    drop(warm);
    phases.push(
        phase(
            &server,
            &sse_http,
            "websocket",
            args.websockets,
            0,
            args.concurrency,
        )
        .await?,
    );
    phases.push(phase(&server, &sse_http, "sse", 0, args.sse, args.concurrency).await?);
    for cycle in 1..=args.cycles {
        phases.push(
            phase(
                &server,
                &sse_http,
                &format!("mixed-{cycle}"),
                args.websockets / 2,
                args.sse / 2,
                args.concurrency,
            )
            .await?,
        );
    }
    let high_water = server.peak_rss()?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "connections",
                "server_peak_rss_bytes": high_water,
                "phases": phases.iter().map(Phase::json).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    println!("connections: server memory (RSS) while connections open and close");
    println!(
        "{:<10} {:>6} {:>6} {:>10} {:>10} {:>12} {:>10} {:>10} {:>12}",
        "phase", "ws", "sse", "baseline", "peak", "after close", "after", "per conn", "after/base"
    );
    for p in &phases {
        println!(
            "{:<10} {:>6} {:>6} {:>10} {:>10} {:>12} {:>10} {:>10} {:>12.3}",
            p.name,
            p.websockets,
            p.sse,
            mib(p.baseline),
            mib(p.peak),
            mib(p.after_close),
            mib(p.after),
            format!("{:.1} KiB", p.per_connection() as f64 / 1024.0),
            p.after as f64 / p.baseline as f64,
        );
    }
    println!("server high-water RSS: {}", mib(high_water));
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Opens `websockets` + `sse` connections, holds them, closes them, and
/// waits for their sessions to expire, reading memory at each step.
async fn phase(
    server: &Server,
    sse_http: &reqwest::Client,
    name: &str,
    websockets: usize,
    sse: usize,
    concurrency: usize,
) -> anyhow::Result<Phase> {
    settle().await;
    let baseline = server.rss()?;
    let mut open = Vec::with_capacity(websockets + sse);
    let mut tasks = JoinSet::new();
    let mut queued = (0..websockets)
        .map(|_| true)
        .chain((0..sse).map(|_| false))
        .collect::<Vec<_>>()
        .into_iter();
    loop {
        while tasks.len() < concurrency.max(1) {
            let Some(websocket) = queued.next() else {
                break;
            };
            let (_, token) = server.user();
            let base = server.base.clone();
            let http = sse_http.clone();
            tasks.spawn(async move {
                if websocket {
                    open_websocket(&base, &token).await
                } else {
                    open_sse(&http, &base, &token).await
                }
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        open.push(done.context("connection task")??);
    }
    let held = (
        server.metric("websocket_active_connections").await?,
        server.metric("sse_active_connections").await?,
    );
    if held != (websockets as f64, sse as f64) {
        bail!("the server holds {held:?}, expected ({websockets}, {sse})");
    }
    settle().await;
    let peak = server.rss()?;
    drop(open);
    server.wait_for("websocket_active_connections", 0.0).await?;
    server.wait_for("sse_active_connections", 0.0).await?;
    settle().await;
    let after_close = server.rss()?;
    server.wait_for("sessions_active", 0.0).await?;
    // The allocator hands freed pages back to the OS over seconds (its
    // decay, 10 s by default): sample for up to 20 s and keep the lowest,
    // stopping early once within a quarter of the baseline.
    let mut after = server.rss()?;
    for _ in 0..20 {
        if after <= baseline + baseline / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = after.min(server.rss()?);
    }
    Ok(Phase {
        name: name.to_owned(),
        websockets,
        sse,
        baseline,
        peak,
        after_close,
        after,
    })
}

pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// A WebSocket past `hello` and live (`ping` answered).
pub(crate) async fn open_websocket(base: &str, token: &str) -> anyhow::Result<Open> {
    let mut stream = Client::new(base, token).connect().await?;
    let first = stream.next().await?;
    if !matches!(first, Some(ServerFrame::Control(Control::Hello(_)))) {
        bail!("expected hello, got {first:?}");
    }
    stream.send(&ClientFrame::Ping).await?;
    let pong = stream.next().await?;
    if !matches!(pong, Some(ServerFrame::Control(Control::Pong))) {
        bail!("expected pong, got {pong:?}");
    }
    Ok(Open::WebSocket(stream))
}

/// An SSE stream past its `hello`.
pub(crate) async fn open_sse(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<Open> {
    let mut response = http
        .get(format!("{base}/api/v1/subscribe"))
        .bearer_auth(token)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("subscribe answered {}", response.status());
    }
    let chunk = response.chunk().await?.context("the stream ended")?;
    if !String::from_utf8_lossy(&chunk).contains("\"hello\"") {
        bail!("expected hello, got {chunk:?}");
    }
    Ok(Open::Sse(response))
}
