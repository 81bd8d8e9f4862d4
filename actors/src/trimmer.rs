//! The trimmer: a worker that keeps a conversation's replay stream near
//! `stream_len_max` with one `XTRIM MAXLEN ~` each time the publisher finds
//! the stream due (once per `trim_every` appends), so trimming is about 1%
//! of stream writes and never on the request path.

use std::sync::Arc;

use switchboard_storage::{Bus, BusError};
use switchboard_supervisors::{Refusal, Supervisor, Worker, WorkerHandle};
use uuid::Uuid;

use crate::Metrics;
use crate::node::BusLimits;

/// The trimmer's name, in metrics, readiness and fault points.
pub(crate) const TRIMMER: &str = "trimmer";
/// The dependency its breaker guards.
pub(crate) const TRIM_DEPENDENCY: &str = "redis_trim";

/// Trims one conversation's stream per request.
pub(crate) struct Trimmer {
    bus: Arc<dyn Bus>,
    stream_len_max: usize,
    metrics: Metrics,
}

impl Trimmer {
    pub(crate) fn start(
        supervisor: &Supervisor,
        bus: Arc<dyn Bus>,
        limits: &BusLimits,
        metrics: &Metrics,
    ) -> WorkerHandle<Self> {
        supervisor.start_worker(
            TRIMMER,
            TRIM_DEPENDENCY,
            limits.trimmer,
            Self {
                bus,
                stream_len_max: limits.stream_len_max,
                metrics: metrics.clone(),
            },
        )
    }
}

impl Worker for Trimmer {
    type Request = Uuid;
    type Reply = ();
    type Error = BusError;

    async fn handle(&mut self, conversation: Uuid) -> Result<(), BusError> {
        let trims = &self.metrics.stream_trims_total;
        match self.bus.trim(conversation, self.stream_len_max).await {
            Ok(removed) => {
                trims.with_label_values(&["ok"]).inc();
                self.metrics.stream_trimmed_entries_total.inc_by(removed);
                Ok(())
            }
            Err(error) => {
                tracing::debug!(%error, "trim failed");
                trims.with_label_values(&["error"]).inc();
                Err(error)
            }
        }
    }

    async fn probe(&mut self) -> Result<(), BusError> {
        self.bus.ping().await
    }

    fn refused(&mut self, why: Refusal) {
        count_refusal(&self.metrics, why);
    }
}

/// Counts a trim that did not happen, by why.
pub(crate) fn count_refusal(metrics: &Metrics, why: Refusal) {
    let outcome = match why {
        Refusal::Unavailable => "breaker_open",
        Refusal::TimedOut => "timeout",
        Refusal::Overloaded => "queue_full",
    };
    metrics
        .stream_trims_total
        .with_label_values(&[outcome])
        .inc();
}
