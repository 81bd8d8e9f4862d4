//! The node's Prometheus metrics, in a registry of its own so that several
//! nodes in one process keep separate counts.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the actors record. The supervisor's (restarts, queues,
/// breakers), the store's and the transports' are registered in
/// [`Metrics::registry`] too, so `/metrics` shows one registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry everything here is registered in.
    registry: Registry,
    /// Open WebSocket connections on this node.
    pub(crate) websocket_active_connections: IntGauge,
    /// Open Server-Sent Events connections on this node.
    pub(crate) sse_active_connections: IntGauge,
    /// Connections refused by a limit, by transport and limit (`user`,
    /// `node`).
    pub(crate) connections_refused_total: IntCounterVec,
    /// Sessions on this node, connected or not.
    pub(crate) sessions_active: IntGauge,
    pub(crate) session_buffer_events_peak: IntGauge,
    pub(crate) session_buffer_bytes_peak: IntGauge,
    /// Sessions on this node waiting, within their grace period, for a
    /// connection to resume them.
    pub(crate) sessions_detached: IntGauge,
    /// Sessions ended because their grace period passed.
    pub(crate) sessions_expired_total: IntCounter,
    /// Sessions ended to make room, or replaced by a new one for the device.
    pub(crate) sessions_replaced_total: IntCounter,
    /// Connections attaching to a session, by outcome (`attached`,
    /// `not_found`, `overflowed`, `invalid_cursor`).
    pub(crate) session_attaches_total: IntCounterVec,
    /// Events a session did not send, by reason (`duplicate`,
    /// `awaiting_sync`).
    pub(crate) session_events_skipped_total: IntCounterVec,
    /// Events dropped from session buffers to stay within their bounds.
    pub(crate) session_buffer_evicted_total: IntCounter,
    /// Events sent again from a session buffer on resume.
    pub(crate) session_replayed_events_total: IntCounter,
    /// Events read from the store to answer `sync`.
    pub(crate) sync_events_total: IntCounter,
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
    /// Events published to the bus.
    pub(crate) redis_pubsub_success_total: IntCounter,
    /// Events not published, by reason (`error`, `breaker_open`,
    /// `queue_full`, `timeout`, `stopped`); other nodes catch up from the
    /// store.
    pub(crate) redis_pubsub_failure_total: IntCounterVec,
    /// Stream trims, by outcome.
    pub(crate) stream_trims_total: IntCounterVec,
    /// Stream entries removed by trims.
    pub(crate) stream_trimmed_entries_total: IntCounter,
    /// Events other nodes published that reached this node.
    pub(crate) bus_events_received_total: IntCounter,
    pub(crate) sweep_catch_ups_total: IntCounter,
    /// Bus notes dropped because a conversation actor was full; gap checks
    /// and catch-ups deliver what they carried.
    pub(crate) bus_notes_dropped_total: IntCounter,
    /// Events delivered to fill a gap in what the bus brought, by source
    /// (`stream` or `store`).
    pub(crate) gap_filled_events_total: IntCounterVec,
    /// Calls to the blob store, by operation and outcome (`ok`, `error`,
    /// `refused`).
    pub(crate) s3_requests_total: IntCounterVec,
    /// How long each blob store call took, by operation.
    pub(crate) s3_request_duration_seconds: HistogramVec,
    /// Objects the deleter removed (`deleted`) or put off after a failure
    /// (`deferred`).
    pub(crate) attachment_deletes_total: IntCounterVec,
    /// What the sweeper removed, by kind (`unattached`, `never_uploaded`,
    /// `orphan`, `late_upload`).
    pub(crate) attachment_orphans_removed_total: IntCounterVec,
    /// Deletions the blob store is still owed, as of the deleter's last
    /// look.
    pub(crate) blob_deletions_owed: IntGauge,
    /// Scheduled messages pending in the store, as of the dispatcher's last
    /// round.
    pub(crate) scheduled_messages_pending: IntGauge,
    /// Scheduled messages that went, by outcome (`sent`, `failed`,
    /// `cancelled`).
    pub(crate) scheduled_messages_total: IntCounterVec,
    /// From a scheduled message's due time to its send's commit.
    pub(crate) scheduled_delivery_lag_seconds: Histogram,
    /// Feed requests, by where the page came from (`ranked`, `cache`,
    /// `recent`).
    pub(crate) feed_request_duration_seconds: HistogramVec,
    /// Feed cache lookups, by `event` (`hit`, `miss`).
    pub(crate) feed_cache_events_total: IntCounterVec,
    /// Candidates a ranking looked at.
    pub(crate) feed_candidate_count: Histogram,
    /// Engagement events not recorded: the buffer was full, or ClickHouse
    /// failed or refused the batch.
    pub(crate) feed_engagement_dropped_total: IntCounter,
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
        let r = &registry;
        Self {
            websocket_active_connections: gauge(
                r,
                "websocket_active_connections",
                "Open WebSocket connections on this node",
            ),
            sse_active_connections: gauge(
                r,
                "sse_active_connections",
                "Open Server-Sent Events connections on this node",
            ),
            connections_refused_total: counters(
                r,
                "connections_refused_total",
                "Connections refused by a limit",
                &["transport", "limit"],
            ),
            sessions_active: gauge(r, "sessions_active", "Sessions on this node"),
            session_buffer_events_peak: gauge(
                r,
                "session_buffer_events_peak",
                "The most events any session has buffered since the node started",
            ),
            session_buffer_bytes_peak: gauge(
                r,
                "session_buffer_bytes_peak",
                "The most bytes any session has buffered since the node started",
            ),
            sessions_detached: gauge(
                r,
                "sessions_detached",
                "Sessions without a connection, within their grace period",
            ),
            sessions_expired_total: counter(
                r,
                "sessions_expired_total",
                "Sessions ended after their grace period",
            ),
            sessions_replaced_total: counter(
                r,
                "sessions_replaced_total",
                "Sessions ended to make room or replaced for their device",
            ),
            session_attaches_total: counters(
                r,
                "session_attaches_total",
                "Connections attaching to a session, by outcome",
                &["outcome"],
            ),
            session_events_skipped_total: counters(
                r,
                "session_events_skipped_total",
                "Events a session did not send, by reason",
                &["reason"],
            ),
            session_buffer_evicted_total: counter(
                r,
                "session_buffer_evicted_total",
                "Events dropped from session buffers to stay within bounds",
            ),
            session_replayed_events_total: counter(
                r,
                "session_replayed_events_total",
                "Events replayed from session buffers on resume",
            ),
            sync_events_total: counter(
                r,
                "sync_events_total",
                "Events read from the store to answer sync",
            ),
            conversation_actors_active: gauge(
                r,
                "conversation_actors_active",
                "Conversation actors alive on this node",
            ),
            conversation_actor_failures_total: counter(
                r,
                "conversation_actor_failures_total",
                "Conversation actors that failed and were restarted",
            ),
            mailbox_full_total: counters(
                r,
                "mailbox_full_total",
                "Messages refused because an actor's mailbox was full",
                &["actor"],
            ),
            events_committed_total: counters(
                r,
                "events_committed_total",
                "Events committed to the log",
                &["type"],
            ),
            deliveries_total: counter(r, "deliveries_total", "Events handed to local connections"),
            slow_consumer_disconnects_total: counter(
                r,
                "slow_consumer_disconnects_total",
                "Connections closed because they did not keep up",
            ),
            message_delivery_latency_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "message_delivery_latency_seconds",
                        "Time per stage of delivering a message",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5,
                    ]),
                    &["stage"],
                ),
            ),
            redis_pubsub_success_total: counter(
                r,
                "redis_pubsub_success_total",
                "Events published to the bus",
            ),
            redis_pubsub_failure_total: counters(
                r,
                "redis_pubsub_failure_total",
                "Events not published to the bus, by reason",
                &["reason"],
            ),
            stream_trims_total: counters(
                r,
                "stream_trims_total",
                "Stream trims, by outcome",
                &["outcome"],
            ),
            stream_trimmed_entries_total: counter(
                r,
                "stream_trimmed_entries_total",
                "Stream entries removed by trims",
            ),
            bus_events_received_total: counter(
                r,
                "bus_events_received_total",
                "Events from other nodes received over the bus",
            ),
            sweep_catch_ups_total: counter(
                r,
                "sweep_catch_ups_total",
                "Held conversations re-read by the sweep for events no bus message announced",
            ),
            bus_notes_dropped_total: counter(
                r,
                "bus_notes_dropped_total",
                "Bus notes dropped because a conversation actor was full",
            ),
            gap_filled_events_total: counters(
                r,
                "gap_filled_events_total",
                "Events delivered to fill a gap, by source",
                &["source"],
            ),
            s3_requests_total: counters(
                r,
                "s3_requests_total",
                "Calls to the blob store, by operation and outcome",
                &["op", "outcome"],
            ),
            s3_request_duration_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "s3_request_duration_seconds",
                        "How long each blob store call took",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ]),
                    &["op"],
                ),
            ),
            attachment_deletes_total: counters(
                r,
                "attachment_deletes_total",
                "Objects the deleter removed or put off",
                &["outcome"],
            ),
            attachment_orphans_removed_total: counters(
                r,
                "attachment_orphans_removed_total",
                "Attachments and objects the sweeper removed, by kind",
                &["kind"],
            ),
            blob_deletions_owed: gauge(
                r,
                "blob_deletions_owed",
                "Deletions the blob store is still owed",
            ),
            scheduled_messages_pending: gauge(
                r,
                "scheduled_messages_pending",
                "Scheduled messages pending in the store",
            ),
            scheduled_messages_total: counters(
                r,
                "scheduled_messages_total",
                "Scheduled messages that went, by outcome",
                &["outcome"],
            ),
            scheduled_delivery_lag_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "scheduled_delivery_lag_seconds",
                        "From a scheduled message's due time to its send's commit",
                    )
                    .buckets(vec![
                        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    ]),
                ),
            ),
            feed_request_duration_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "feed_request_duration_seconds",
                        "Feed requests, by where the page came from",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
                    ]),
                    &["source"],
                ),
            ),
            feed_cache_events_total: counters(
                r,
                "feed_cache_events_total",
                "Feed cache lookups, by event",
                &["event"],
            ),
            feed_candidate_count: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "feed_candidate_count",
                        "Candidates a feed ranking looked at",
                    )
                    .buckets(vec![0.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0]),
                ),
            ),
            feed_engagement_dropped_total: counter(
                r,
                "feed_engagement_dropped_total",
                "Engagement events not recorded (buffer full, or ClickHouse down)",
            ),
            registry,
        }
    }

    /// Counts a connection a transport refused by one of its own limits
    /// (such as `ip`), next to the node's refusals.
    pub fn connection_refused(&self, transport: &str, limit: &str) {
        self.connections_refused_total
            .with_label_values(&[transport, limit])
            .inc();
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

fn register<C: Collector + Clone + 'static>(registry: &Registry, made: prometheus::Result<C>) -> C {
    let collector = made.expect("valid metric");
    registry
        .register(Box::new(collector.clone()))
        .expect("unique metric");
    collector
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}
