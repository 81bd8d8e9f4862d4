//! The Socket.IO peer (`bench/peers/socketio`): a private `redis-server`
//! and Node processes running Socket.IO with `@socket.io/redis-adapter`,
//! started for one run and killed when it ends; and the Engine.IO v4
//! client side the benchmark reads them with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::ServerFrame;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::server::free_port;

/// Where the peer's sources are.
pub(crate) fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/socketio")
}

/// The running peer: Redis first, then the Node processes.
pub(crate) struct Peer {
    children: Vec<Child>,
    /// The HTTP base of each Node process.
    pub(crate) bases: Vec<String>,
}

impl Peer {
    /// Installs the peer's npm packages if they are missing, starts a
    /// private Redis and `processes` Node servers, and waits until each is
    /// ready.
    pub(crate) async fn start(dir: &Path, processes: usize) -> anyhow::Result<Self> {
        if !dir.join("node_modules").exists() {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(dir)
                .stdout(Stdio::null())
                .status()
                .context("cannot run npm (Node.js and npm are needed for the Socket.IO peer)")?;
            if !status.success() {
                bail!("npm ci failed in {}", dir.display());
            }
        }
        let redis_port = free_port()?;
        let mut peer = Self {
            children: Vec::new(),
            bases: Vec::new(),
        };
        peer.children.push(
            Command::new("redis-server")
                .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start redis-server for the Socket.IO peer")?,
        );
        wait_for_port(redis_port).await?;
        for _ in 0..processes.max(1) {
            let port = free_port()?;
            peer.children.push(
                Command::new("node")
                    .arg("server.js")
                    .current_dir(dir)
                    .env("PORT", port.to_string())
                    .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("cannot start node for the Socket.IO peer")?,
            );
            let base = format!("http://127.0.0.1:{port}");
            wait_ready(&base).await?;
            peer.bases.push(base);
        }
        Ok(peer)
    }

    /// Every process of the peer, Redis included.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Peak resident memory of all its processes, summed, in bytes.
    pub(crate) fn peak_rss(&self) -> anyhow::Result<u64> {
        self.pids().into_iter().map(crate::process::peak_rss).sum()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing came to listen on port {port}")
}

async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let ready = format!("{base}/health/ready");
    for _ in 0..200 {
        if let Ok(response) = reqwest::get(&ready).await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the Socket.IO peer at {base} did not become ready")
}

/// A Socket.IO client connection (Engine.IO v4 over WebSocket, default
/// namespace) in the given rooms.
#[derive(Debug)]
pub(crate) struct SocketIo {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl SocketIo {
    /// Connects, opens the default namespace and waits until it is joined.
    pub(crate) async fn connect(base: &str, rooms: &[Uuid]) -> anyhow::Result<Self> {
        let rooms = rooms
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let url = format!(
            "{}/socket.io/?EIO=4&transport=websocket&rooms={rooms}",
            base.replacen("http", "ws", 1)
        );
        let (socket, _) = tokio_tungstenite::connect_async(&url).await?;
        let mut client = Self { socket };
        // `0{…}` opens the Engine.IO session; `40` asks for the namespace,
        // `40{…}` grants it.
        client.expect_prefix("0").await?;
        client.socket.send(WsMessage::text("40")).await?;
        client.expect_prefix("40").await?;
        Ok(client)
    }

    async fn expect_prefix(&mut self, prefix: &str) -> anyhow::Result<()> {
        match self.socket.next().await {
            Some(Ok(WsMessage::Text(text))) if text.starts_with(prefix) => Ok(()),
            other => bail!("expected a Socket.IO `{prefix}` packet, got {other:?}"),
        }
    }

    /// The next event frame (`42["event",frame]`), answering pings on the
    /// way; `None` once the connection ended.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<ServerFrame>> {
        loop {
            match self.socket.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    if text.as_str() == "2" {
                        self.socket.send(WsMessage::text("3")).await?;
                    } else if let Some(packet) = text.strip_prefix("42") {
                        let (_, frame): (String, ServerFrame) = serde_json::from_str(packet)?;
                        return Ok(Some(frame));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
                None => return Ok(None),
            }
        }
    }
}
