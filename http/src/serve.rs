//! Serving the router: client addresses for the per-address limits, socket
//! options and a write-stall limit that reap vanished or non-reading peers,
//! and a shutdown with a bounded drain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::AppState;
use crate::edge::EdgeMetrics;

/// The client's address, as the per-address limit sees it.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Accepts TCP connections with the socket options set and every write
/// bounded in time.
#[derive(Debug)]
struct Accept {
    listener: TcpListener,
    write_stall_max: Duration,
    tcp_user_timeout: Duration,
    /// One per open connection, at most `tcp_connections_max`.
    slots: Arc<Semaphore>,
    metrics: EdgeMetrics,
}

/// A connection's place under the cap, given back when it closes.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Listener for Accept {
    type Io = StallGuard;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // At the cap, stop accepting until a connection closes: the
            // kernel's backlog holds the next ones meanwhile.
            let permit = match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    self.metrics.tcp_accept_paused_total.inc();
                    match Arc::clone(&self.slots).acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => std::future::pending().await,
                    }
                }
            };
            match self.listener.accept().await {
                Ok((tcp, address)) => {
                    configure(&tcp, self.tcp_user_timeout);
                    self.metrics.tcp_connections_open.inc();
                    return (
                        StallGuard {
                            inner: tcp,
                            stall_max: self.write_stall_max,
                            stalled: None,
                            _slot: Slot {
                                _permit: permit,
                                open: self.metrics.tcp_connections_open.clone(),
                            },
                        },
                        address,
                    );
                }
                Err(error) => {
                    // Out of descriptors and the like: back off instead of
                    // spinning, as axum's own listener does.
                    tracing::warn!(%error, "accept failed");
                    #[allow(clippy::disallowed_methods)] // A real back-off.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

impl Connected<IncomingStream<'_, Accept>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, Accept>) -> Self {
        Self(*stream.remote_addr())
    }
}

fn configure(tcp: &TcpStream, tcp_user_timeout: Duration) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let socket = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "cannot set TCP keepalive");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(error) = socket.set_tcp_user_timeout(Some(tcp_user_timeout)) {
        tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT");
    }
}

/// A TCP stream whose writes fail once they have made no progress for
/// `stall_max`: a peer that stops reading (its window stays shut) is
/// dropped, with everything its connection holds, instead of pinning it.
#[derive(Debug)]
pub(crate) struct StallGuard {
    inner: TcpStream,
    stall_max: Duration,
    /// Running while a write is blocked.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Its place under the connection cap.
    _slot: Slot,
}

impl StallGuard {
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let stall_max = self.stall_max;
        #[allow(clippy::disallowed_methods)] // The stall limit is real time.
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall_max)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer has not read for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.guard(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.guard(cx, poll)
    }
}

/// Serves `state`'s router on `listener` until `shutdown` resolves; then
/// readiness turns false, every live connection is told to reconnect, and
/// the server waits at most `drain_timeout` for requests and streams to end.
///
/// # Errors
///
/// The listener's I/O errors.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> io::Result<()> {
    let listener = Accept {
        listener,
        write_stall_max: state.limits.write_stall_max,
        tcp_user_timeout: state.limits.tcp_user_timeout,
        slots: Arc::new(Semaphore::new(state.limits.edge.tcp_connections_max.max(1))),
        metrics: state.edge.metrics.clone(),
    };
    let router = crate::router(state.clone());
    let (began, draining) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<PeerAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: draining connections");
        state.start_draining();
        state.node.close_connections();
        let _ = began.send(());
    })
    .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        _ = draining => {}
    }
    match tokio::time::timeout(drain_timeout, server).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(?drain_timeout, "drain timed out: closing what is left");
            Ok(())
        }
    }
}
