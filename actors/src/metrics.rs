//! The node's Prometheus metrics, in a registry of its own so that several
//! nodes in one process keep separate counts.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the actors record. Transports register theirs in
/// [`Metrics::registry`] too, so `/metrics` shows one registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry everything here is registered in.
    registry: Registry,
    /// Open WebSocket connections on this node.
    pub(crate) websocket_active_connections: IntGauge,
    /// Conversation actors alive on this node.
    pub(crate) conversation_actors_active: IntGauge,
    /// Conversation actors that failed (panicked) and were restarted.
    pub(crate) conversation_actor_failures_total: IntCounter,
    /// Messages refused because an actor's mailbox was full, by actor kind.
    pub(crate) mailbox_full_total: IntCounterVec,
    /// Events committed to the log, by type.
    pub(crate) events_committed_total: IntCounterVec,
    /// Events handed to local connections.
    pub(crate) deliveries_total: IntCounter,
    /// Connections closed because they did not keep up with their events.
    pub(crate) slow_consumer_disconnects_total: IntCounter,
    /// Time spent per stage of a message's way to its recipients.
    pub(crate) message_delivery_latency_seconds: HistogramVec,
}

impl Metrics {
    /// Creates and registers the metrics in a fresh registry.
    ///
    /// # Panics
    ///
    /// Never in practice: the names are fixed and registered once.
    #[must_use]
    pub fn new() -> Self {
        let registry = Registry::new();
        let metrics = Self {
            websocket_active_connections: IntGauge::new(
                "websocket_active_connections",
                "Open WebSocket connections on this node",
            )
            .expect("valid metric"),
            conversation_actors_active: IntGauge::new(
                "conversation_actors_active",
                "Conversation actors alive on this node",
            )
            .expect("valid metric"),
            conversation_actor_failures_total: IntCounter::new(
                "conversation_actor_failures_total",
                "Conversation actors that failed and were restarted",
            )
            .expect("valid metric"),
            mailbox_full_total: IntCounterVec::new(
                Opts::new(
                    "mailbox_full_total",
                    "Messages refused because an actor's mailbox was full",
                ),
                &["actor"],
            )
            .expect("valid metric"),
            events_committed_total: IntCounterVec::new(
                Opts::new("events_committed_total", "Events committed to the log"),
                &["type"],
            )
            .expect("valid metric"),
            deliveries_total: IntCounter::new(
                "deliveries_total",
                "Events handed to local connections",
            )
            .expect("valid metric"),
            slow_consumer_disconnects_total: IntCounter::new(
                "slow_consumer_disconnects_total",
                "Connections closed because they did not keep up",
            )
            .expect("valid metric"),
            message_delivery_latency_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "message_delivery_latency_seconds",
                    "Time per stage of delivering a message",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ]),
                &["stage"],
            )
            .expect("valid metric"),
            registry,
        };
        for collector in [
            Box::new(metrics.websocket_active_connections.clone())
                as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.conversation_actors_active.clone()),
            Box::new(metrics.conversation_actor_failures_total.clone()),
            Box::new(metrics.mailbox_full_total.clone()),
            Box::new(metrics.events_committed_total.clone()),
            Box::new(metrics.deliveries_total.clone()),
            Box::new(metrics.slow_consumer_disconnects_total.clone()),
            Box::new(metrics.message_delivery_latency_seconds.clone()),
        ] {
            metrics.registry.register(collector).expect("unique metric");
        }
        metrics
    }

    /// The registry, for transports to add their own metrics to.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in the Prometheus text format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
