//! The supervisor's Prometheus metrics, labelled by task (or worker) and by
//! dependency. They are created unregistered; the node registers them in
//! its registry (see [`crate::Supervisor::collectors`]).

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

/// Every metric a [`crate::Supervisor`] and its workers record.
#[derive(Debug, Clone)]
pub(crate) struct SupervisionMetrics {
    /// Restarts after a panic, by task or worker.
    pub(crate) worker_restarts_total: IntCounterVec,
    /// 1 while a task or worker runs, 0 while it waits to restart, has
    /// stopped, or has spent its restart budget.
    pub(crate) worker_up: IntGaugeVec,
    /// Requests waiting in a worker's queue.
    pub(crate) worker_queue_depth: IntGaugeVec,
    /// Seconds from a request's arrival to its outcome (`ok`, `failed`,
    /// `timed_out`, `unavailable`, `overloaded`), by worker.
    pub(crate) worker_request_duration_seconds: HistogramVec,
    /// Each breaker's state: 0 closed, 1 half-open, 2 open.
    pub(crate) breaker_state: IntGaugeVec,
    /// Breaker state changes, by dependency and the state entered.
    pub(crate) breaker_transitions_total: IntCounterVec,
}

impl SupervisionMetrics {
    pub(crate) fn new() -> Self {
        Self {
            worker_restarts_total: IntCounterVec::new(
                Opts::new(
                    "worker_restarts_total",
                    "Supervised tasks and workers restarted after a panic",
                ),
                &["worker"],
            )
            .expect("valid counter"),
            worker_up: IntGaugeVec::new(
                Opts::new(
                    "worker_up",
                    "1 while a supervised task or worker runs, 0 otherwise",
                ),
                &["worker"],
            )
            .expect("valid gauge"),
            worker_queue_depth: IntGaugeVec::new(
                Opts::new("worker_queue_depth", "Requests waiting in a worker's queue"),
                &["worker"],
            )
            .expect("valid gauge"),
            worker_request_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "worker_request_duration_seconds",
                    "Time from a worker request's arrival to its outcome",
                )
                .buckets(vec![
                    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0,
                    2.5, 5.0,
                ]),
                &["worker", "outcome"],
            )
            .expect("valid histogram"),
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "breaker_state",
                    "Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open",
                ),
                &["dependency"],
            )
            .expect("valid gauge"),
            breaker_transitions_total: IntCounterVec::new(
                Opts::new(
                    "breaker_transitions_total",
                    "Circuit breaker state changes, by dependency and the state entered",
                ),
                &["dependency", "to"],
            )
            .expect("valid counter"),
        }
    }

    pub(crate) fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.worker_restarts_total.clone()),
            Box::new(self.worker_up.clone()),
            Box::new(self.worker_queue_depth.clone()),
            Box::new(self.worker_request_duration_seconds.clone()),
            Box::new(self.breaker_state.clone()),
            Box::new(self.breaker_transitions_total.clone()),
        ]
    }
}
