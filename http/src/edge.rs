//! Limits at the edge, before a request reaches the node: requests in
//! flight (503 past the cap), a deadline per request (503 past it), and
//! token buckets per client address and per user on every mutation (429
//! with `Retry-After`, the time until the bucket holds a token again).
//! The buckets are `governor`'s, on the node's monotonic clock.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock as GovernorClock;
use governor::{Quota, RateLimiter};
use prometheus::core::Collector;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use switchboard_storage::Clock;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::{ApiError, AppState};

/// A token bucket's size and refill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: u32,
    /// Tokens the bucket holds at most: the burst.
    pub burst: u32,
}

/// The edge's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Whether the two rate limits apply (off where a gateway in front
    /// limits rates, and for benchmarks).
    pub rate_limits: bool,
    /// Mutations (POST, PUT, PATCH, DELETE) one user may make.
    pub per_user: Rate,
    /// Mutations one client address may make (many users may share one).
    pub per_ip: Rate,
    /// Users or addresses the buckets remember; past it, idle buckets are
    /// dropped, and if that is not enough new requests are shed (503).
    pub keys_max: usize,
    /// How long one request may take before it is answered 503 (uploads
    /// to the embedded blob store and live streams are not cut).
    pub request_timeout: Duration,
    /// Requests handled at once; more are answered 503 at once.
    pub in_flight_max: usize,
    /// TCP connections open at once; past it the listener stops accepting
    /// until one closes (the kernel's backlog holds the rest).
    pub tcp_connections_max: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            rate_limits: true,
            per_user: Rate {
                per_sec: 50,
                burst: 200,
            },
            per_ip: Rate {
                per_sec: 500,
                burst: 2_000,
            },
            keys_max: 100_000,
            request_timeout: Duration::from_secs(30),
            in_flight_max: 2_048,
            tcp_connections_max: 60_000,
        }
    }
}

/// `governor`'s view of the node's clock.
#[derive(Debug, Clone)]
struct NodeClock(Arc<dyn Clock>);

impl GovernorClock for NodeClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.monotonic()
    }
}

type Keyed<K> = RateLimiter<
    K,
    governor::state::keyed::DefaultKeyedStateStore<K>,
    NodeClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

/// What the edge keeps.
#[derive(Debug)]
pub(crate) struct Edge {
    limits: EdgeLimits,
    clock: NodeClock,
    users: Keyed<Uuid>,
    addresses: Keyed<IpAddr>,
    in_flight: Arc<Semaphore>,
    pub(crate) metrics: EdgeMetrics,
}

/// The edge's metrics.
#[derive(Debug, Clone)]
pub(crate) struct EdgeMetrics {
    /// Requests refused by a bucket, by `key` (`user`, `ip`).
    rate_limited_total: IntCounterVec,
    /// Requests answered 503 by the edge, by `reason` (`in_flight`,
    /// `timeout`, `keys`).
    shed_total: IntCounterVec,
    /// TCP connections open.
    pub(crate) tcp_connections_open: IntGauge,
    /// Times the listener waited for a connection to close before
    /// accepting the next.
    pub(crate) tcp_accept_paused_total: prometheus::IntCounter,
}

impl EdgeMetrics {
    fn register(registry: &Registry) -> Self {
        let metrics = Self {
            rate_limited_total: IntCounterVec::new(
                Opts::new(
                    "http_rate_limited_total",
                    "Mutations refused by a rate limit, by key",
                ),
                &["key"],
            )
            .expect("valid metric"),
            shed_total: IntCounterVec::new(
                Opts::new(
                    "http_requests_shed_total",
                    "Requests the edge answered 503, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            tcp_connections_open: IntGauge::new("tcp_connections_open", "TCP connections open")
                .expect("valid metric"),
            tcp_accept_paused_total: prometheus::IntCounter::new(
                "tcp_accept_paused_total",
                "Times the listener waited for a connection to close before accepting",
            )
            .expect("valid metric"),
        };
        for collector in [
            Box::new(metrics.rate_limited_total.clone()) as Box<dyn Collector>,
            Box::new(metrics.shed_total.clone()),
            Box::new(metrics.tcp_connections_open.clone()),
            Box::new(metrics.tcp_accept_paused_total.clone()),
        ] {
            if let Err(error) = registry.register(collector) {
                tracing::debug!(%error, "edge metrics already registered");
            }
        }
        metrics
    }
}

fn quota(rate: Rate) -> Quota {
    let per_sec = NonZeroU32::new(rate.per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst.max(rate.per_sec).max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_sec).allow_burst(burst)
}

/// Whether a request changes something, and so spends a token.
fn mutates(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

impl Edge {
    pub(crate) fn new(limits: EdgeLimits, clock: Arc<dyn Clock>, registry: &Registry) -> Self {
        let clock = NodeClock(clock);
        Self {
            users: RateLimiter::dashmap_with_clock(quota(limits.per_user), clock.clone()),
            addresses: RateLimiter::dashmap_with_clock(quota(limits.per_ip), clock.clone()),
            in_flight: Arc::new(Semaphore::new(limits.in_flight_max.max(1))),
            metrics: EdgeMetrics::register(registry),
            limits,
            clock,
        }
    }

    /// Takes a token of `key`'s bucket, or says when one comes.
    fn spend<K>(&self, limiter: &Keyed<K>, key: &K, label: &str) -> Result<(), ApiError>
    where
        K: std::hash::Hash + Eq + Clone,
    {
        if limiter.len() >= self.limits.keys_max {
            limiter.retain_recent();
            if limiter.len() >= self.limits.keys_max {
                self.metrics.shed_total.with_label_values(&["keys"]).inc();
                return Err(ApiError::unavailable("too many clients at once: retry", 1));
            }
        }
        limiter.check_key(key).map_err(|not_until| {
            self.metrics
                .rate_limited_total
                .with_label_values(&[label])
                .inc();
            let wait = not_until.wait_time_from(self.clock.now());
            let seconds = wait
                .as_secs()
                .saturating_add(u64::from(wait.subsec_nanos() > 0))
                .max(1);
            ApiError::rate_limited(
                "too many requests: slow down",
                u32::try_from(seconds).unwrap_or(u32::MAX),
            )
        })
    }

    /// A mutation by `user`: spends a token of their bucket.
    pub(crate) fn user(&self, method: &Method, user: Uuid) -> Result<(), ApiError> {
        if self.limits.rate_limits && mutates(method) {
            self.spend(&self.users, &user, "user")
        } else {
            Ok(())
        }
    }
}

/// The middleware: in-flight cap, the address's bucket, the deadline.
/// Probes and metrics pass untouched, so an overloaded node still says so.
pub(crate) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path.starts_with("/health/") || path == "/metrics" {
        return next.run(request).await;
    }
    let edge = &state.edge;
    let Ok(_permit) = Arc::clone(&edge.in_flight).try_acquire_owned() else {
        edge.metrics
            .shed_total
            .with_label_values(&["in_flight"])
            .inc();
        return ApiError::unavailable("the server is busy: retry", 1).into_response();
    };
    if edge.limits.rate_limits
        && mutates(request.method())
        && let Some(ip) =
            crate::routes::client_address(&state, request.headers(), request.extensions())
        && let Err(refused) = edge.spend(&edge.addresses, &ip, "ip")
    {
        return refused.into_response();
    }
    // An upload's body is read by its handler, as slowly as the client
    // sends it; it is bounded by its signed size instead.
    if path.starts_with("/api/v1/blobs/") {
        return next.run(request).await;
    }
    match tokio::time::timeout(edge.limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            edge.metrics
                .shed_total
                .with_label_values(&["timeout"])
                .inc();
            ApiError::unavailable("the request took too long: retry", 1).into_response()
        }
    }
}
