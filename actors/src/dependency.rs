//! Worker actors for slow or failing dependencies, each behind a circuit
//! breaker, under a supervisor that restarts them with backoff.
//!
//! - The publisher sends committed events to the bus. It sits behind a
//!   bounded queue that the send path only `try_send`s into, so a send never
//!   waits on Redis; when the bus fails the breaker opens and the queue drains
//!   at once, every skipped publish counted in `redis_pubsub_failure_total`.
//! - The trimmer keeps each conversation's stream near `stream_len_max` with
//!   one `XTRIM MAXLEN ~` per `trim_every` appends to that stream, so trimming
//!   is about 1% of stream writes and never on the request path.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use switchboard_protocol::Event;
use switchboard_storage::{Bus, Clock};
use switchboard_supervisors::{
    Admission, Breaker, BreakerPolicy, BreakerState, RestartPolicy, RestartTracker, Transition,
};
use uuid::Uuid;

use crate::Metrics;
use crate::connection::slots;
use crate::hub::EncodedEvent;
use crate::mailbox::{Mailbox, MailboxError, Permit};

/// Bounds and pacing for the bus workers.
#[derive(Debug, Clone, Copy)]
pub struct BusLimits {
    /// Events waiting to be published.
    pub publish_queue_len_max: usize,
    /// Append notices waiting for the trimmer.
    pub trim_queue_len_max: usize,
    /// Entries a conversation's stream keeps, about.
    pub stream_len_max: usize,
    /// Appends to one stream between two trims of it.
    pub trim_every: u32,
    /// Conversations the trimmer counts at once; past it, a new one is
    /// trimmed right away instead of counted.
    pub trim_counts_len_max: usize,
    /// Conversations a node subscribes to per connected user.
    pub conversations_per_user_max: u32,
    /// How often the node re-reads a batch of the conversations it holds,
    /// to deliver what no bus message announced (an event whose publish
    /// failed, or whose node crashed before publishing it).
    pub sweep_every: Duration,
    /// Conversations re-read per sweep, round-robin: each costs one read
    /// of the replay stream or the store.
    pub sweep_batch_len: usize,
    /// The breakers in front of publishing and trimming.
    pub breaker: BreakerPolicy,
    /// How the workers are restarted after a panic.
    pub restart: RestartPolicy,
}

impl Default for BusLimits {
    fn default() -> Self {
        Self {
            publish_queue_len_max: 4096,
            trim_queue_len_max: 4096,
            stream_len_max: 50_000,
            trim_every: 100,
            trim_counts_len_max: 100_000,
            conversations_per_user_max: 10_000,
            sweep_every: Duration::from_secs(1),
            sweep_batch_len: 32,
            breaker: BreakerPolicy::default(),
            restart: RestartPolicy::default(),
        }
    }
}

/// Which worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Worker {
    Publisher,
    Trimmer,
}

/// The running workers, replaced by the supervisor after a restart, and the
/// state of their breakers.
#[derive(Debug, Default)]
struct Slots {
    publisher: RwLock<Option<Mailbox<PublisherMsg>>>,
    trimmer: RwLock<Option<Mailbox<TrimmerMsg>>>,
    breakers: std::sync::Mutex<BTreeMap<&'static str, BreakerState>>,
}

/// What the rest of the node uses to reach the bus workers.
#[derive(Debug, Clone)]
pub(crate) struct BusWorkers {
    slots: Arc<Slots>,
    metrics: Metrics,
    supervisor: ActorRef<SupervisorMsg>,
}

impl BusWorkers {
    /// Starts the supervisor and both workers.
    pub(crate) async fn start(
        bus: Arc<dyn Bus>,
        clock: Arc<dyn Clock>,
        limits: BusLimits,
        metrics: Metrics,
    ) -> Result<Self, ractor::SpawnErr> {
        let slots = Arc::new(Slots::default());
        let context = Context {
            bus,
            clock,
            limits,
            metrics: metrics.clone(),
            slots: Arc::clone(&slots),
        };
        let (supervisor, _) = Actor::spawn(None, BusSupervisor, context).await?;
        Ok(Self {
            slots,
            metrics,
            supervisor,
        })
    }

    /// Hands a committed event to the publisher without waiting.
    pub(crate) fn publish(&self, event: &Arc<EncodedEvent>) {
        let slot = self.slots.publisher.read().expect("slot lock");
        let outcome = match slot.as_ref() {
            Some(mailbox) => mailbox.try_send(|permit| PublisherMsg(Arc::clone(event), permit)),
            None => Err(MailboxError::Closed),
        };
        if let Err(error) = outcome {
            let reason = match error {
                MailboxError::Full => "queue_full",
                MailboxError::Closed => "restarting",
            };
            self.metrics
                .redis_pubsub_failure_total
                .with_label_values(&[reason])
                .inc();
        }
    }

    /// Each breaker's state, by dependency.
    pub(crate) fn breakers(&self) -> BTreeMap<&'static str, &'static str> {
        self.slots
            .breakers
            .lock()
            .expect("breakers lock")
            .iter()
            .map(|(name, state)| (*name, state.as_str()))
            .collect()
    }

    /// Stops the workers.
    pub(crate) fn stop(&self) {
        self.supervisor.stop(None);
    }
}

/// Everything the supervisor and its workers share.
#[derive(Clone)]
struct Context {
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    limits: BusLimits,
    metrics: Metrics,
    slots: Arc<Slots>,
}

/// A breaker with its transitions recorded in metrics and in the state map
/// readiness shows.
struct Guard {
    name: &'static str,
    breaker: Breaker,
    state: IntGaugeVec,
    transitions: IntCounterVec,
    slots: Arc<Slots>,
}

impl Guard {
    fn new(name: &'static str, context: &Context) -> Self {
        let guard = Self {
            name,
            breaker: Breaker::new(context.limits.breaker),
            state: context.metrics.breaker_state.clone(),
            transitions: context.metrics.breaker_transitions_total.clone(),
            slots: Arc::clone(&context.slots),
        };
        guard.show(BreakerState::Closed);
        guard
    }

    fn show(&self, state: BreakerState) {
        self.state
            .with_label_values(&[self.name])
            .set(state.level());
        self.slots
            .breakers
            .lock()
            .expect("breakers lock")
            .insert(self.name, state);
    }

    fn record(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            tracing::warn!(
                dependency = self.name,
                from = t.from.as_str(),
                to = t.to.as_str(),
                "breaker"
            );
            self.show(t.to);
            self.transitions
                .with_label_values(&[self.name, t.to.as_str()])
                .inc();
        }
    }

    /// Runs `call` if the breaker allows, probing with `ping` first when
    /// half-open. `None` means the breaker refused.
    async fn run<T, E>(
        &mut self,
        now: Duration,
        bus: &dyn Bus,
        call: impl Future<Output = Result<T, E>>,
    ) -> Option<Result<T, E>> {
        let (admission, transition) = self.breaker.admit(now);
        self.record(transition);
        match admission {
            Admission::Reject => return None,
            Admission::Probe => {
                if bus.ping().await.is_err() {
                    let transition = self.breaker.on_failure(now);
                    self.record(transition);
                    return None;
                }
                let transition = self.breaker.on_success();
                self.record(transition);
            }
            Admission::Call => {}
        }
        let result = call.await;
        let transition = match &result {
            Ok(_) => self.breaker.on_success(),
            Err(_) => self.breaker.on_failure(now),
        };
        self.record(transition);
        Some(result)
    }
}

#[derive(Debug)]
struct PublisherMsg(Arc<EncodedEvent>, Permit);

struct Publisher;

struct PublisherState {
    context: Context,
    guard: Guard,
}

impl Actor for Publisher {
    type Msg = PublisherMsg;
    type State = PublisherState;
    type Arguments = Context;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        context: Context,
    ) -> Result<Self::State, ActorProcessingErr> {
        let guard = Guard::new("redis_publish", &context);
        Ok(PublisherState { context, guard })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        PublisherMsg(event, _permit): Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let context = &state.context;
        let started = context.clock.monotonic();
        let publish = async {
            context.bus.publish(&event.event, &event.frame).await?;
            // The node serving a member learns of their joins and leaves,
            // and of the conversations they start in, on the member's own
            // channel: it does not hold the conversation's yet.
            let members: Vec<Uuid> = match &event.event {
                Event::MemberJoined(e) => vec![e.user_id],
                Event::MemberLeft(e) => vec![e.user_id],
                Event::ConversationCreated(e) => {
                    e.conversation.members.iter().map(|m| m.user_id).collect()
                }
                _ => Vec::new(),
            };
            for user in members {
                context.bus.publish_to_user(user, &event.frame).await?;
            }
            Ok::<(), switchboard_storage::BusError>(())
        };
        let outcome = state
            .guard
            .run(started, context.bus.as_ref(), publish)
            .await;
        let metrics = &context.metrics;
        match outcome {
            Some(Ok(())) => {
                metrics.redis_pubsub_success_total.inc();
                metrics
                    .message_delivery_latency_seconds
                    .with_label_values(&["redis_publish"])
                    .observe(
                        context
                            .clock
                            .monotonic()
                            .saturating_sub(started)
                            .as_secs_f64(),
                    );
                notify_trimmer(context, event.event.conversation_id());
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "publish failed");
                metrics
                    .redis_pubsub_failure_total
                    .with_label_values(&["error"])
                    .inc();
            }
            None => metrics
                .redis_pubsub_failure_total
                .with_label_values(&["breaker_open"])
                .inc(),
        }
        Ok(())
    }
}

fn notify_trimmer(context: &Context, conversation_id: Uuid) {
    let slot = context.slots.trimmer.read().expect("slot lock");
    if let Some(mailbox) = slot.as_ref()
        && mailbox
            .try_send(|permit| TrimmerMsg(conversation_id, permit))
            .is_err()
    {
        // The next append of that stream notifies again.
        context
            .metrics
            .mailbox_full_total
            .with_label_values(&["trimmer"])
            .inc();
    }
}

#[derive(Debug)]
struct TrimmerMsg(Uuid, Permit);

struct Trimmer;

struct TrimmerState {
    context: Context,
    guard: Guard,
    /// Appends since each stream's last trim.
    appends: BTreeMap<Uuid, u32>,
}

impl Actor for Trimmer {
    type Msg = TrimmerMsg;
    type State = TrimmerState;
    type Arguments = Context;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        context: Context,
    ) -> Result<Self::State, ActorProcessingErr> {
        let guard = Guard::new("redis_trim", &context);
        Ok(TrimmerState {
            context,
            guard,
            appends: BTreeMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        TrimmerMsg(conversation_id, _permit): Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let limits = state.context.limits;
        let counted = state.appends.len();
        let due = match state.appends.get_mut(&conversation_id) {
            Some(count) => {
                *count += 1;
                *count >= limits.trim_every
            }
            // At the bound the map stops growing: trim this one now.
            None if counted >= limits.trim_counts_len_max => true,
            None => {
                state.appends.insert(conversation_id, 1);
                limits.trim_every <= 1
            }
        };
        if !due {
            return Ok(());
        }
        state.appends.remove(&conversation_id);
        let context = &state.context;
        let trim = context.bus.trim(conversation_id, limits.stream_len_max);
        let outcome = state
            .guard
            .run(context.clock.monotonic(), context.bus.as_ref(), trim)
            .await;
        let metrics = &context.metrics;
        match outcome {
            Some(Ok(removed)) => {
                metrics.stream_trims_total.with_label_values(&["ok"]).inc();
                metrics.stream_trimmed_entries_total.inc_by(removed);
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "trim failed");
                metrics
                    .stream_trims_total
                    .with_label_values(&["error"])
                    .inc();
            }
            None => metrics
                .stream_trims_total
                .with_label_values(&["breaker_open"])
                .inc(),
        }
        Ok(())
    }
}

#[derive(Debug)]
enum SupervisorMsg {
    Start(Worker),
}

/// Starts the bus workers and restarts them after a failure, with backoff.
struct BusSupervisor;

struct SupervisorState {
    context: Context,
    restarts: HashMap<Worker, RestartTracker>,
    /// Which worker each running actor is.
    running: HashMap<ractor::ActorId, Worker>,
}

impl BusSupervisor {
    async fn start(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        worker: Worker,
    ) -> Result<(), ActorProcessingErr> {
        let context = state.context.clone();
        let cell = myself.get_cell();
        let id = match worker {
            Worker::Publisher => {
                let (actor, _) =
                    Actor::spawn_linked(None, Publisher, context.clone(), cell).await?;
                let mailbox =
                    Mailbox::new(actor.clone(), slots(context.limits.publish_queue_len_max));
                *context.slots.publisher.write().expect("slot lock") = Some(mailbox);
                actor.get_id()
            }
            Worker::Trimmer => {
                let (actor, _) = Actor::spawn_linked(None, Trimmer, context.clone(), cell).await?;
                let mailbox = Mailbox::new(actor.clone(), slots(context.limits.trim_queue_len_max));
                *context.slots.trimmer.write().expect("slot lock") = Some(mailbox);
                actor.get_id()
            }
        };
        state.running.insert(id, worker);
        Ok(())
    }
}

impl Actor for BusSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Context;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        context: Context,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            restarts: HashMap::new(),
            running: HashMap::new(),
            context,
        };
        Self::start(&myself, &mut state, Worker::Publisher).await?;
        Self::start(&myself, &mut state, Worker::Trimmer).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        SupervisorMsg::Start(worker): Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        Self::start(&myself, state, worker).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, error) = event else {
            return Ok(());
        };
        let Some(worker) = state.running.remove(&cell.get_id()) else {
            return Ok(());
        };
        match worker {
            Worker::Publisher => *state.context.slots.publisher.write().expect("slot lock") = None,
            Worker::Trimmer => *state.context.slots.trimmer.write().expect("slot lock") = None,
        }
        let now = state.context.clock.monotonic();
        let policy = state.context.limits.restart;
        let decision = state
            .restarts
            .entry(worker)
            .or_insert_with(|| RestartTracker::new(policy))
            .on_failure(now);
        let delay = decision.restart_at.saturating_sub(now);
        state
            .context
            .metrics
            .worker_restarts_total
            .with_label_values(&[match worker {
                Worker::Publisher => "publisher",
                Worker::Trimmer => "trimmer",
            }])
            .inc();
        tracing::error!(?worker, %error, ?delay, exhausted = decision.exhausted, "bus worker failed; restarting");
        myself.send_after(delay, move || SupervisorMsg::Start(worker));
        Ok(())
    }
}
