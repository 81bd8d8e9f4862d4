//! Request counts and durations by route and status, how many frames a
//! WebSocket write carries, and how many WebSockets went stale.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, Registry};

use crate::AppState;

#[derive(Debug, Clone)]
pub(crate) struct HttpMetrics {
    /// Request duration by route template, method and status.
    request_duration_seconds: HistogramVec,
    /// Frames a WebSocket writer put into one write to its socket.
    pub(crate) websocket_frames_per_write: Histogram,
    /// WebSockets closed because the client answered nothing, not even a
    /// ping, for the idle timeout.
    pub(crate) websocket_stale_closes_total: IntCounter,
}

impl HttpMetrics {
    pub(crate) fn register(registry: &Registry) -> Self {
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request duration by route, method and status",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let websocket_frames_per_write = Histogram::with_opts(
            HistogramOpts::new(
                "websocket_frames_per_write",
                "Frames a WebSocket connection wrote to its socket at once",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )
        .expect("valid metric");
        let websocket_stale_closes_total = IntCounter::new(
            "websocket_stale_closes_total",
            "WebSockets closed after the client answered nothing for the idle timeout",
        )
        .expect("valid metric");
        // A second router over the same node reuses the registered collectors.
        for collector in [
            Box::new(request_duration_seconds.clone()) as Box<dyn Collector>,
            Box::new(websocket_frames_per_write.clone()),
            Box::new(websocket_stale_closes_total.clone()),
        ] {
            if let Err(error) = registry.register(collector) {
                tracing::debug!(%error, "http metrics already registered");
            }
        }
        Self {
            request_duration_seconds,
            websocket_frames_per_write,
            websocket_stale_closes_total,
        }
    }
}

#[allow(clippy::disallowed_methods)] // Request latency is measured in real time.
pub(crate) async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    state
        .metrics
        .request_duration_seconds
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}
