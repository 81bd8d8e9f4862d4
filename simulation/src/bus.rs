//! The bus between simulated nodes: pub/sub and a replay stream per
//! conversation, like the Redis bus, with deliveries dropped, delayed (and so
//! reordered) and nodes cut off and healed, as the run's [`Faults`] decide.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use switchboard_protocol::{Control, Event};
use switchboard_storage::{Bus, BusError, BusSignal, Topic};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::faults::{FaultKind, Faults};

/// Signals that may wait for a node's router, as a Redis subscriber's
/// channel holds.
const SIGNALS_LEN_MAX: usize = 4096;

/// The bus every node of a run shares.
#[derive(Debug)]
pub struct Network {
    state: Mutex<State>,
    faults: Arc<Faults>,
    /// Trims refused because the trimming node was cut off.
    refused_trims: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Attached nodes by slot; a crashed node's slot is empty until it
    /// restarts with a new endpoint.
    endpoints: BTreeMap<usize, Endpoint>,
    /// The replay stream of each conversation, ascending by `seq`.
    streams: BTreeMap<Uuid, VecDeque<Event>>,
}

#[derive(Debug)]
struct Endpoint {
    /// Which attachment of the slot this is, so a crashed node's bus handle
    /// cannot act for its successor.
    generation: u64,
    wanted: BTreeSet<Topic>,
    signals: mpsc::Sender<BusSignal>,
    /// Cut off: publishes and reads fail, deliveries are lost.
    partitioned: bool,
}

impl Network {
    /// An empty bus.
    #[must_use]
    pub fn new(faults: Arc<Faults>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            faults,
            refused_trims: AtomicU64::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Attaches the node in `slot` (replacing a crashed one): its bus handle
    /// and the signals it will hear.
    pub fn attach(self: &Arc<Self>, slot: usize) -> (NodeBus, mpsc::Receiver<BusSignal>) {
        let (signals, receiver) = mpsc::channel(SIGNALS_LEN_MAX);
        let mut state = self.state();
        let generation = state.endpoints.get(&slot).map_or(0, |e| e.generation + 1);
        state.endpoints.insert(
            slot,
            Endpoint {
                generation,
                wanted: BTreeSet::new(),
                signals,
                partitioned: false,
            },
        );
        let bus = NodeBus {
            network: Arc::clone(self),
            slot,
            generation,
        };
        (bus, receiver)
    }

    /// Detaches a crashed node: nothing more reaches it.
    pub fn detach(&self, slot: usize) {
        if let Some(endpoint) = self.state().endpoints.get_mut(&slot) {
            endpoint.wanted.clear();
            endpoint.partitioned = true;
        }
    }

    /// Cuts the node in `slot` off from the bus (its link drops, as a Redis
    /// connection does).
    pub fn partition(&self, slot: usize) {
        if let Some(endpoint) = self.state().endpoints.get_mut(&slot) {
            endpoint.partitioned = true;
            let _ = endpoint.signals.try_send(BusSignal::Lost);
        }
    }

    /// Reconnects the node in `slot`; it hears `Lost` and catches up.
    pub fn heal(&self, slot: usize) {
        if let Some(endpoint) = self.state().endpoints.get_mut(&slot)
            && endpoint.partitioned
        {
            endpoint.partitioned = false;
            let _ = endpoint.signals.try_send(BusSignal::Lost);
        }
    }

    /// Trims refused so far (each lets a stream grow by another round of
    /// appends before its node trims again).
    pub fn refused_trims(&self) -> u64 {
        self.refused_trims.load(Ordering::Relaxed)
    }

    /// The longest replay stream, for the bounds checker.
    pub fn longest_stream(&self) -> usize {
        self.state()
            .streams
            .values()
            .map(VecDeque::len)
            .max()
            .unwrap_or(0)
    }

    /// Delivers `event` to every attached node subscribed to `topic`, each
    /// delivery dropped or delayed on its own.
    fn deliver(&self, state: &State, topic: Topic, event: &Event) {
        self.signal(state, topic, &BusSignal::Event(event.clone()));
    }

    /// Delivers `signal` as [`Self::deliver`] does an event.
    fn signal(&self, state: &State, topic: Topic, signal: &BusSignal) {
        for endpoint in state.endpoints.values() {
            if endpoint.partitioned || !endpoint.wanted.contains(&topic) {
                continue;
            }
            if self
                .faults
                .roll(FaultKind::BusDrop, self.faults.plan.bus_drop)
            {
                // Redis loses pub/sub messages only with the subscriber's
                // link, which the subscriber notices and reports as `Lost`.
                let signals = endpoint.signals.clone();
                let noticed = self.faults.delay(self.faults.plan.bus_delay_max);
                tokio::spawn(async move {
                    #[allow(clippy::disallowed_methods)] // The link's drop, noticed later.
                    tokio::time::sleep(noticed).await;
                    let _ = signals.try_send(BusSignal::Lost);
                });
                continue;
            }
            let delay = self.faults.delay(self.faults.plan.bus_delay_max);
            let signals = endpoint.signals.clone();
            let signal = signal.clone();
            if delay.is_zero() {
                let _ = signals.try_send(signal);
            } else {
                self.faults.count(FaultKind::BusDelay);
                tokio::spawn(async move {
                    #[allow(clippy::disallowed_methods)] // A slow bus, in the run's time.
                    tokio::time::sleep(delay).await;
                    let _ = signals.try_send(signal);
                });
            }
        }
    }
}

/// One node's handle on the [`Network`].
#[derive(Debug)]
pub struct NodeBus {
    network: Arc<Network>,
    slot: usize,
    generation: u64,
}

impl NodeBus {
    /// The endpoint, if this handle is still the slot's and connected.
    fn endpoint<'a>(&self, state: &'a mut State) -> Result<&'a mut Endpoint, BusError> {
        state
            .endpoints
            .get_mut(&self.slot)
            .filter(|e| e.generation == self.generation && !e.partitioned)
            .ok_or_else(|| BusError::Unavailable("bus unreachable".into()))
    }
}

fn decode(frame: &[u8]) -> Result<Event, BusError> {
    serde_json::from_slice(frame).map_err(|e| BusError::Protocol(format!("undecodable: {e}")))
}

#[async_trait]
impl Bus for NodeBus {
    async fn publish(&self, event: &Event, _frame: &[u8]) -> Result<(), BusError> {
        let mut state = self.network.state();
        self.endpoint(&mut state)?;
        let stream = state.streams.entry(event.conversation_id()).or_default();
        // Like an explicit stream id: an entry at or below the top is refused.
        if stream.back().is_none_or(|top| top.seq() < event.seq()) {
            stream.push_back(event.clone());
        }
        self.network
            .deliver(&state, Topic::Conversation(event.conversation_id()), event);
        Ok(())
    }

    async fn publish_to_user(&self, user: Uuid, frame: &[u8]) -> Result<(), BusError> {
        let event = decode(frame)?;
        let mut state = self.network.state();
        self.endpoint(&mut state)?;
        self.network.deliver(&state, Topic::User(user), &event);
        Ok(())
    }

    async fn notify_user(&self, user: Uuid, control: &Control) -> Result<(), BusError> {
        let mut state = self.network.state();
        self.endpoint(&mut state)?;
        let notice = BusSignal::Notice {
            user,
            control: control.clone(),
        };
        self.network.signal(&state, Topic::User(user), &notice);
        Ok(())
    }

    async fn tail(
        &self,
        conversation_id: Uuid,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<Event>, BusError> {
        let mut state = self.network.state();
        self.endpoint(&mut state)?;
        Ok(state
            .streams
            .get(&conversation_id)
            .map(|s| {
                s.iter()
                    .filter(|e| e.seq() > after_seq)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn stream_len(&self, conversation_id: Uuid) -> Result<u64, BusError> {
        let mut state = self.network.state();
        self.endpoint(&mut state)?;
        Ok(state
            .streams
            .get(&conversation_id)
            .map_or(0, |s| s.len() as u64))
    }

    async fn trim(&self, conversation_id: Uuid, len_max: usize) -> Result<u64, BusError> {
        let mut state = self.network.state();
        if let Err(error) = self.endpoint(&mut state) {
            self.network.refused_trims.fetch_add(1, Ordering::Relaxed);
            return Err(error);
        }
        let Some(stream) = state.streams.get_mut(&conversation_id) else {
            return Ok(0);
        };
        let excess = stream.len().saturating_sub(len_max);
        stream.drain(..excess);
        Ok(excess as u64)
    }

    async fn ping(&self) -> Result<(), BusError> {
        let mut state = self.network.state();
        self.endpoint(&mut state).map(drop)
    }

    fn subscribe(&self, topic: Topic) {
        let mut state = self.network.state();
        let Some(endpoint) = state
            .endpoints
            .get_mut(&self.slot)
            .filter(|e| e.generation == self.generation)
        else {
            return;
        };
        // A partitioned node subscribes when it heals (and catches up then).
        if endpoint.wanted.insert(topic)
            && !endpoint.partitioned
            && let Topic::Conversation(id) = topic
        {
            let _ = endpoint.signals.try_send(BusSignal::Subscribed(vec![id]));
        }
    }

    fn unsubscribe(&self, topic: Topic) {
        let mut state = self.network.state();
        if let Some(endpoint) = state
            .endpoints
            .get_mut(&self.slot)
            .filter(|e| e.generation == self.generation)
        {
            endpoint.wanted.remove(&topic);
        }
    }
}
