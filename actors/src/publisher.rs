//! The publisher: a worker that sends committed events to the bus, and
//! counts each stream's appends so the trimmer trims it once per
//! `trim_every` of them.
//!
//! The send path only casts a committed event into the publisher's bounded
//! queue, so a send never waits on Redis. While the bus fails the breaker
//! opens and the node stops queueing; every event not published is counted
//! in `redis_pubsub_failure_total{reason}`, and other nodes catch up on it
//! from the store (their sweep, or the gap the next event reveals).

use std::collections::BTreeMap;
use std::sync::Arc;

use switchboard_protocol::{Control, Event};
use switchboard_storage::{Bus, BusError, Clock};
use switchboard_supervisors::{BreakerState, Refusal, Supervisor, Worker, WorkerHandle};
use uuid::Uuid;

use crate::Metrics;
use crate::hub::EncodedEvent;
use crate::node::BusLimits;
use crate::trimmer::Trimmer;

/// The publisher's name, in metrics, readiness and fault points.
pub(crate) const PUBLISHER: &str = "publisher";
/// The dependency its breaker guards.
pub(crate) const PUBLISH_DEPENDENCY: &str = "redis_publish";

/// Publishes one committed event at a time.
pub(crate) struct Publisher {
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    trimmer: WorkerHandle<Trimmer>,
    schedule: TrimSchedule,
    metrics: Metrics,
}

/// What the publisher sends.
#[derive(Debug)]
pub(crate) enum Publication {
    /// A committed event.
    Event(Arc<EncodedEvent>),
    /// A frame for one user's sessions, wherever they are connected.
    Notice(Uuid, Control),
}

impl Worker for Publisher {
    type Request = Publication;
    type Reply = ();
    type Error = BusError;

    async fn handle(&mut self, publication: Publication) -> Result<(), BusError> {
        let event = match publication {
            Publication::Event(event) => event,
            Publication::Notice(user, control) => {
                return self.bus.notify_user(user, &control).await;
            }
        };
        let started = self.clock.monotonic();
        if let Err(error) = publish(self.bus.as_ref(), &event).await {
            tracing::debug!(%error, "publish failed");
            self.failed("error");
            return Err(error);
        }
        let metrics = &self.metrics;
        metrics.redis_pubsub_success_total.inc();
        metrics
            .message_delivery_latency_seconds
            .with_label_values(&["redis_publish"])
            .observe(self.clock.monotonic().saturating_sub(started).as_secs_f64());
        let conversation = event.event.conversation_id();
        if self.schedule.append(conversation)
            && let Err(refusal) = self.trimmer.cast(conversation)
        {
            // The stream is counted afresh and trimmed a round later.
            crate::trimmer::count_refusal(&self.metrics, refusal);
        }
        Ok(())
    }

    async fn probe(&mut self) -> Result<(), BusError> {
        self.bus.ping().await
    }

    fn refused(&mut self, why: Refusal) {
        self.failed(match why {
            Refusal::Unavailable => "breaker_open",
            Refusal::TimedOut => "timeout",
            Refusal::Overloaded => "queue_full",
        });
    }
}

impl Publisher {
    fn failed(&self, reason: &str) {
        self.metrics
            .redis_pubsub_failure_total
            .with_label_values(&[reason])
            .inc();
    }
}

/// Publishes `event` on its conversation's channel and stream, and a
/// membership event on each affected member's channel too: the node
/// serving a member learns of their joins and leaves, and of the
/// conversations they start in, there, since it does not hold the
/// conversation's channel for them yet.
async fn publish(bus: &dyn Bus, event: &EncodedEvent) -> Result<(), BusError> {
    bus.publish(&event.event, &event.frame).await?;
    let members: Vec<Uuid> = match &event.event {
        Event::MemberJoined(e) => vec![e.user_id],
        Event::MemberLeft(e) => vec![e.user_id],
        Event::ConversationCreated(e) => e.conversation.members.iter().map(|m| m.user_id).collect(),
        _ => Vec::new(),
    };
    for user in members {
        bus.publish_to_user(user, &event.frame).await?;
    }
    Ok(())
}

/// The node's way to the bus: the publisher, with the trimmer behind it.
#[derive(Debug, Clone)]
pub(crate) struct Publishing {
    publisher: WorkerHandle<Publisher>,
    metrics: Metrics,
}

impl Publishing {
    /// Starts the trimmer and the publisher under `supervisor`.
    pub(crate) fn start(
        supervisor: &Supervisor,
        bus: &Arc<dyn Bus>,
        clock: Arc<dyn Clock>,
        limits: &BusLimits,
        metrics: &Metrics,
    ) -> Self {
        let trimmer = Trimmer::start(supervisor, Arc::clone(bus), limits, metrics);
        let publisher = supervisor.start_worker(
            PUBLISHER,
            PUBLISH_DEPENDENCY,
            limits.publisher,
            Publisher {
                bus: Arc::clone(bus),
                clock,
                trimmer,
                schedule: TrimSchedule::new(limits.trim_every, limits.trim_counts_len_max),
                metrics: metrics.clone(),
            },
        );
        Self {
            publisher,
            metrics: metrics.clone(),
        }
    }

    /// Hands a committed event to the publisher without waiting.
    pub(crate) fn publish(&self, event: &Arc<EncodedEvent>) {
        if let Err(refusal) = self.publisher.cast(Publication::Event(Arc::clone(event))) {
            let reason = match refusal {
                Refusal::Overloaded => "queue_full",
                Refusal::Unavailable if self.publisher.breaker() != BreakerState::Closed => {
                    "breaker_open"
                }
                Refusal::Unavailable => "stopped",
                Refusal::TimedOut => "timeout",
            };
            self.metrics
                .redis_pubsub_failure_total
                .with_label_values(&[reason])
                .inc();
        }
    }

    /// Hands a frame for `user`'s sessions to the publisher without
    /// waiting; the frame back when it refused it.
    pub(crate) fn notify(&self, user: Uuid, control: Control) -> Result<(), Control> {
        if self.publisher.breaker() != BreakerState::Closed {
            return Err(control);
        }
        let kept = control.clone();
        self.publisher
            .cast(Publication::Notice(user, control))
            .map_err(|_| kept)
    }

    /// Whether publishing works, as far as its breaker knows.
    pub(crate) fn is_healthy(&self) -> bool {
        self.publisher.breaker() == BreakerState::Closed
    }
}

/// When each conversation's stream is due a trim: once per `every` appends
/// to it. It counts at most `counted_max` streams; past that, a stream not
/// yet counted is trimmed at once instead, so the map never grows further.
#[derive(Debug)]
pub(crate) struct TrimSchedule {
    /// Appends since each stream's last trim.
    appends: BTreeMap<Uuid, u32>,
    every: u32,
    counted_max: usize,
}

impl TrimSchedule {
    pub(crate) fn new(every: u32, counted_max: usize) -> Self {
        Self {
            appends: BTreeMap::new(),
            every: every.max(1),
            counted_max,
        }
    }

    /// Counts one append to `conversation`'s stream; true when it is due a
    /// trim (and its count starts over).
    pub(crate) fn append(&mut self, conversation: Uuid) -> bool {
        let counted = self.appends.len();
        let due = match self.appends.get_mut(&conversation) {
            Some(count) => {
                *count += 1;
                *count >= self.every
            }
            None if counted >= self.counted_max => true,
            None => {
                self.appends.insert(conversation, 1);
                self.every == 1
            }
        };
        if due {
            self.appends.remove(&conversation);
        }
        debug_assert!(self.appends.len() <= self.counted_max);
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_due_once_per_every_appends() {
        let mut schedule = TrimSchedule::new(3, 10);
        let a = Uuid::from_u128(1);
        let due: Vec<bool> = (0..7).map(|_| schedule.append(a)).collect();
        assert_eq!(due, [false, false, true, false, false, true, false]);
    }

    #[test]
    fn past_the_bound_a_new_stream_is_trimmed_at_once() {
        let mut schedule = TrimSchedule::new(100, 2);
        assert!(!schedule.append(Uuid::from_u128(1)));
        assert!(!schedule.append(Uuid::from_u128(2)));
        assert!(
            schedule.append(Uuid::from_u128(3)),
            "not counted: trimmed now"
        );
        assert!(
            !schedule.append(Uuid::from_u128(1)),
            "the counted ones go on"
        );
    }

    #[test]
    fn every_append_is_due_when_every_is_one() {
        let mut schedule = TrimSchedule::new(1, 10);
        assert!(schedule.append(Uuid::from_u128(1)));
        assert!(schedule.append(Uuid::from_u128(1)));
    }
}
