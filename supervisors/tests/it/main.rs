//! The supervisor and its workers through their public surface, on tokio's
//! paused clock: time moves only when every task waits, so each test knows
//! exactly when things happen.

// Tests drive time from outside, by sleeping on the paused clock.
#![allow(clippy::disallowed_methods)]

mod tasks;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use switchboard_storage::TokioClock;
use switchboard_supervisors::Supervisor;

const MS: Duration = Duration::from_millis(1);

fn supervisor() -> Supervisor {
    Supervisor::new(Arc::new(TokioClock::new(chrono::DateTime::UNIX_EPOCH)))
}

/// Lets every ready task run (paused time does not move while any can).
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// The value of one series in the supervisor's metrics (a histogram's
/// `_count`), as Prometheus would scrape it.
fn metric(supervisor: &Supervisor, series: &str) -> f64 {
    let registry = prometheus::Registry::new();
    for collector in supervisor.collectors() {
        registry.register(collector).unwrap();
    }
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .unwrap();
    String::from_utf8(text)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}
