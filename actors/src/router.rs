//! The router: turns what the bus says into notes for conversation
//! actors, and sweeps for what it never said.
//!
//! A dropped remote event is recovered by the next event's gap check, but a
//! dropped catch-up has nothing after it to notice: those conversations are
//! owed a catch-up, retried every second until their actor takes it. And an
//! event nobody announced (its publish failed, or its node crashed first)
//! has nothing at all to reveal it: a sweep catches up a few held
//! conversations at a time, round-robin, so each is re-read within
//! `held / sweep_batch_len` sweeps.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use switchboard_storage::BusSignal;
use switchboard_supervisors::{Task, TaskContext};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::conversation::Note;
use crate::node::Shared;
use crate::subscriptions::Subscriptions;

/// The router's name, in metrics, readiness and fault points.
pub(crate) const ROUTER: &str = "router";

/// The router's task. Ends when the node or the bus goes away.
pub(crate) struct Router {
    shared: Weak<Shared>,
    /// What the bus hears; outlives a panic, so a restart loses at most the
    /// signal in hand.
    signals: mpsc::Receiver<BusSignal>,
    /// Conversations owed a catch-up their actor had no room for.
    owed: BTreeSet<Uuid>,
    /// Where the round-robin sweeps of conversations and users go on from.
    swept: Uuid,
    swept_user: Uuid,
    /// Whether `run` ran before, so this run follows a panic.
    restarted: bool,
}

impl Router {
    pub(crate) fn new(shared: &Arc<Shared>, signals: mpsc::Receiver<BusSignal>) -> Self {
        Self {
            shared: Arc::downgrade(shared),
            signals,
            owed: BTreeSet::new(),
            swept: Uuid::nil(),
            swept_user: Uuid::nil(),
            restarted: false,
        }
    }
}

impl Task for Router {
    async fn run(&mut self, context: &TaskContext) {
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let Some(limits) = self.shared.upgrade().map(|s| s.limits.bus) else {
            return;
        };
        if self.restarted {
            // A panic may have taken a signal with it: catch up on everything.
            if let Some(shared) = self.shared.upgrade()
                && let Some(subscriptions) = &shared.subscriptions
            {
                self.owed.extend(subscriptions.held());
            }
        }
        self.restarted = true;
        let mut sweep = tokio::time::interval_at(
            tokio::time::Instant::now() + limits.sweep_every,
            limits.sweep_every,
        );
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                // In order, so a simulated run polls the same way every time.
                biased;
                signal = self.signals.recv() => match signal {
                    Some(signal) => Wake::Signal(signal),
                    None => return,
                },
                _ = retry.tick(), if !self.owed.is_empty() => Wake::Retry,
                _ = sweep.tick() => Wake::Sweep,
            };
            context.fault_point("signal");
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let signal = match wake {
                Wake::Signal(signal) => Some(signal),
                Wake::Retry => None,
                Wake::Sweep => {
                    let held = shared
                        .subscriptions
                        .as_ref()
                        .map(Subscriptions::held)
                        .unwrap_or_default();
                    let batch = round_robin(&held, self.swept, limits.sweep_batch_len);
                    self.swept = batch.last().copied().unwrap_or_else(Uuid::nil);
                    shared
                        .metrics
                        .sweep_catch_ups_total
                        .inc_by(batch.len() as u64);
                    self.owed.extend(batch);
                    // And a few connected users' conversations, for a join or
                    // leave whose bus message was lost.
                    if let Some(subscriptions) = &shared.subscriptions {
                        let users = subscriptions.users();
                        let batch: Vec<Uuid> =
                            round_robin(&users, self.swept_user, limits.sweep_batch_len);
                        self.swept_user = batch.last().copied().unwrap_or_else(Uuid::nil);
                        for user in batch {
                            match subscriptions.refresh(shared.store.as_ref(), user).await {
                                Ok(held) => {
                                    // A join this node never heard of: the user's
                                    // clients may not know the conversation.
                                    shared.hub.resync(user, &held);
                                    self.owed.extend(held);
                                }
                                Err(error) => {
                                    tracing::debug!(%error, "cannot refresh a user's conversations");
                                }
                            }
                        }
                    }
                    None
                }
            };
            let catch_up: Vec<Uuid> = match signal {
                None => std::mem::take(&mut self.owed).into_iter().collect(),
                Some(BusSignal::Event(event)) => {
                    shared.metrics.bus_events_received_total.inc();
                    let id = event.conversation_id();
                    shared
                        .conversations
                        .notify(&shared, id, Note::Remote(event))
                        .await;
                    Vec::new()
                }
                Some(BusSignal::Lost) => {
                    let held = shared
                        .subscriptions
                        .as_ref()
                        .map(Subscriptions::held)
                        .unwrap_or_default();
                    tracing::info!(
                        conversations = held.len(),
                        "bus link was lost; catching up from the store"
                    );
                    held
                }
                Some(BusSignal::Subscribed(ids)) => ids,
                Some(BusSignal::Notice { user, control }) => {
                    shared.hub.tell(user, &control);
                    Vec::new()
                }
            };
            for id in catch_up {
                if !shared
                    .conversations
                    .notify(&shared, id, Note::CatchUp)
                    .await
                {
                    self.owed.insert(id);
                }
            }
        }
    }
}

/// Up to `len` of `ids` (ascending), starting after `after` and wrapping.
fn round_robin(ids: &[Uuid], after: Uuid, len: usize) -> Vec<Uuid> {
    ids.iter()
        .filter(|id| **id > after)
        .chain(ids.iter().filter(|id| **id <= after))
        .take(len)
        .copied()
        .collect()
}

/// What wakes the router.
enum Wake {
    Signal(BusSignal),
    Retry,
    Sweep,
}
