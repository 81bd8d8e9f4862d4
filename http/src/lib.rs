//! The HTTP surface of a node: the JSON API under `/api/v1`, the live event
//! stream over a WebSocket (`/api/v1/ws`) or Server-Sent Events
//! (`/api/v1/subscribe`), and the operational endpoints `/metrics`,
//! `/health/live` and `/health/ready`.
//!
//! Architecture invariant: only this crate speaks JSON to clients. Handlers
//! authenticate, validate and translate; every rule about conversations lives
//! in `switchboard-actors`.

mod auth;
mod edge;
mod error;
mod extract;
mod metrics;
mod peers;
mod routes;
mod serve;
mod validate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use auth::{Auth, AuthError, JWKS_URL_REFETCH};
pub use edge::{EdgeLimits, Rate};
pub use error::ApiError;
pub use routes::router;
pub use serve::{PeerAddr, serve};
use switchboard_actors::Node;
use switchboard_storage::{BlobServer, Blobs, Bus, Store};

/// Bounds on what clients may send and ask for.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request body accepted, in bytes.
    pub body_len_max: usize,
    /// Longest `encrypted_content`, in base64 characters.
    pub content_len_max: usize,
    /// Longest `nonce`, in base64 characters.
    pub nonce_len_max: usize,
    /// Longest `idempotency_key`.
    pub idempotency_key_len_max: usize,
    /// Longest conversation title, in characters.
    pub title_len_max: usize,
    /// Most members listed when creating a conversation.
    pub create_members_max: usize,
    /// Largest page of messages or conversations.
    pub page_len_max: u32,
    /// Largest page of events.
    pub events_page_len_max: u32,
    /// Frames that may wait to be written to one WebSocket or SSE stream;
    /// a client that lets more pile up is disconnected as a slow consumer.
    pub websocket_outbound_len_max: usize,
    /// Largest frame a client may send over a WebSocket, in bytes.
    pub websocket_frame_len_max: usize,
    /// WebSocket and SSE connections one IP address may hold.
    pub connections_per_ip_max: usize,
    /// How often the server pings a WebSocket client.
    pub websocket_ping_interval: Duration,
    /// A WebSocket client silent (no frame, no pong) for this long is
    /// closed as stale.
    pub websocket_idle_timeout: Duration,
    /// How often an SSE stream gets a heartbeat comment.
    pub sse_heartbeat_interval: Duration,
    /// How long a final close frame or event may take to write before the
    /// connection is dropped anyway.
    pub close_write_timeout: Duration,
    /// How long unacknowledged data may sit on a connection before the
    /// kernel drops it (`TCP_USER_TIMEOUT`): reaps peers that vanished.
    pub tcp_user_timeout: Duration,
    /// How long a write may make no progress before the connection is
    /// dropped: reaps peers that are there but stopped reading.
    pub write_stall_max: Duration,
    /// Rate limits, the request deadline, requests in flight and TCP
    /// connections.
    pub edge: EdgeLimits,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            body_len_max: 256 * 1024,
            content_len_max: 64 * 1024,
            nonce_len_max: 256,
            idempotency_key_len_max: 128,
            title_len_max: 256,
            create_members_max: 1_000,
            page_len_max: 200,
            events_page_len_max: 1_000,
            websocket_outbound_len_max: 256,
            websocket_frame_len_max: 64 * 1024,
            connections_per_ip_max: 256,
            websocket_ping_interval: Duration::from_secs(30),
            websocket_idle_timeout: Duration::from_secs(75),
            sse_heartbeat_interval: Duration::from_secs(15),
            close_write_timeout: Duration::from_secs(5),
            tcp_user_timeout: Duration::from_secs(60),
            write_stall_max: Duration::from_secs(30),
            edge: EdgeLimits::default(),
        }
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The node the handlers drive.
    pub node: Node,
    /// The store, for readiness checks only.
    pub store: Arc<dyn Store>,
    /// The bus, for readiness checks only; `None` on a single node.
    pub bus: Option<Arc<dyn Bus>>,
    /// The blob store and what kind it is (`s3`, `local`), for readiness
    /// checks only.
    pub blobs: Option<(Arc<dyn Blobs>, &'static str)>,
    /// The embedded blob store's side of its URLs, when the node serves
    /// them itself.
    pub blob_server: Option<Arc<dyn BlobServer>>,
    /// Verifies bearer tokens.
    pub auth: Arc<Auth>,
    /// Request bounds.
    pub limits: HttpLimits,
    /// Set when shutdown begins, so readiness turns false before anything stops.
    draining: Arc<AtomicBool>,
    /// HTTP metrics, registered in the node's registry.
    metrics: metrics::HttpMetrics,
    /// Live connections by client address.
    peers: Arc<peers::Peers>,
    /// Rate limits and load shedding.
    edge: Arc<edge::Edge>,
    /// The header a trusted proxy puts the client's address in, if the
    /// node sits behind one.
    client_ip_header: Option<axum::http::HeaderName>,
}

/// The task that fetches a key set URL again every minute.
pub const JWKS_REFRESH: &str = "jwks_refresh";

struct JwksRefresh(Arc<Auth>);

impl switchboard_supervisors::Task for JwksRefresh {
    async fn run(&mut self, context: &switchboard_supervisors::TaskContext) {
        loop {
            #[allow(clippy::disallowed_methods)] // The key set's clock is real time.
            tokio::time::sleep(auth::JWKS_URL_REFETCH).await;
            context.fault_point("fetch");
            self.0.refetch_keys(auth::JWKS_URL_REFETCH).await;
        }
    }
}

impl AppState {
    /// Shared state for the router.
    #[must_use]
    pub fn new(node: Node, store: Arc<dyn Store>, auth: Auth, limits: HttpLimits) -> Self {
        let metrics = metrics::HttpMetrics::register(node.metrics().registry());
        let peers = Arc::new(peers::Peers::new(limits.connections_per_ip_max));
        let edge = Arc::new(edge::Edge::new(
            limits.edge,
            Arc::clone(node.clock()),
            node.metrics().registry(),
        ));
        let auth = Arc::new(auth);
        if auth.fetches_keys() {
            node.supervisor().spawn(
                JWKS_REFRESH,
                switchboard_supervisors::RestartPolicy::default(),
                JwksRefresh(Arc::clone(&auth)),
            );
        }
        Self {
            peers,
            edge,
            client_ip_header: None,
            node,
            store,
            bus: None,
            blobs: None,
            blob_server: None,
            auth,
            limits,
            draining: Arc::new(AtomicBool::new(false)),
            metrics,
        }
    }

    /// Behind a proxy, takes the client's address for the per-address limit
    /// from `header` (such as `x-forwarded-for`): its last entry, the one
    /// the nearest proxy added, so a client cannot choose it.
    #[must_use]
    pub fn with_client_ip_header(mut self, header: Option<axum::http::HeaderName>) -> Self {
        self.client_ip_header = header;
        self
    }

    /// Reports `bus` in readiness.
    #[must_use]
    pub fn with_bus(mut self, bus: Option<Arc<dyn Bus>>) -> Self {
        self.bus = bus;
        self
    }

    /// Reports `blobs` (of `kind`) in readiness, and serves `server`'s URLs
    /// when the node keeps its blobs itself.
    #[must_use]
    pub fn with_blobs(
        mut self,
        blobs: Option<(Arc<dyn Blobs>, &'static str)>,
        server: Option<Arc<dyn BlobServer>>,
    ) -> Self {
        self.blobs = blobs;
        self.blob_server = server;
        self
    }

    /// Marks the node as draining: readiness answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
