//! Serving the router: client addresses for the per-address limits, socket
//! options that reap vanished peers, and a shutdown with a bounded drain.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::AppState;

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
) -> std::io::Result<()> {
    let tcp_user_timeout = state.limits.tcp_user_timeout;
    let listener = listener.tap_io(move |tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let socket = socket2::SockRef::from(&*tcp);
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
    });
    let router = crate::router(state.clone());
    let (began, draining) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
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
