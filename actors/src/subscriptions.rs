//! This node's subscriptions to the bus and, for each subscribed
//! conversation, the last `seq` delivered here.
//!
//! A node subscribes to the channel of every user with a connection here and
//! to every conversation of those users, and drops them when the last such
//! connection closes. The watermark lives here rather than in the
//! conversation actor so it survives the actor's idle stops and restarts:
//! it is what lets the node deliver each event exactly once, in order, and
//! fill any gap from the store.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use switchboard_storage::{Bus, Store, StoreError, Topic};
use uuid::Uuid;

#[derive(Debug, Default)]
struct Local {
    /// Open connections of the user on this node.
    connections: usize,
    /// The user's conversations this node holds for them.
    conversations: BTreeSet<Uuid>,
}

#[derive(Debug)]
struct Held {
    /// Local users holding the subscription.
    users: usize,
    /// The last `seq` delivered on this node.
    delivered: i64,
}

#[derive(Debug, Default)]
struct State {
    users: BTreeMap<Uuid, Local>,
    conversations: BTreeMap<Uuid, Held>,
}

/// The node's subscriptions.
#[derive(Debug)]
pub(crate) struct Subscriptions {
    bus: Arc<dyn Bus>,
    /// Never held across an await.
    state: Mutex<State>,
    /// Conversations loaded per user on connect.
    conversations_per_user_max: u32,
}

impl Subscriptions {
    pub(crate) fn new(bus: Arc<dyn Bus>, conversations_per_user_max: u32) -> Self {
        Self {
            bus,
            state: Mutex::default(),
            conversations_per_user_max,
        }
    }

    /// A connection of `user` opened here. The user's conversations are
    /// read from the store on every connect, not only the first: a join or
    /// leave this node never heard of (its bus message lost) is put right.
    /// Returns the positions read, and the conversations newly held for a
    /// user who was already connected here (their other sessions may have
    /// missed those conversations' events).
    pub(crate) async fn connect(
        &self,
        store: &dyn Store,
        user: Uuid,
    ) -> Result<(Vec<(Uuid, i64)>, Vec<Uuid>), StoreError> {
        let positions = store
            .positions_for(user, self.conversations_per_user_max)
            .await?;
        let mut state = self.state.lock().expect("subscriptions lock");
        if !state.users.contains_key(&user) {
            self.bus.subscribe(Topic::User(user));
        }
        let local = state.users.entry(user).or_default();
        local.connections += 1;
        let returning = local.connections > 1;
        let added = self.reconcile(&mut state, user, &positions);
        Ok((positions, if returning { added } else { Vec::new() }))
    }

    /// Reads `user`'s conversations from the store again, if they are
    /// connected here; returns the conversations newly held for them.
    pub(crate) async fn refresh(
        &self,
        store: &dyn Store,
        user: Uuid,
    ) -> Result<Vec<Uuid>, StoreError> {
        let positions = store
            .positions_for(user, self.conversations_per_user_max)
            .await?;
        let mut state = self.state.lock().expect("subscriptions lock");
        Ok(self.reconcile(&mut state, user, &positions))
    }

    /// Users connected here.
    pub(crate) fn users(&self) -> Vec<Uuid> {
        self.state
            .lock()
            .expect("subscriptions lock")
            .users
            .keys()
            .copied()
            .collect()
    }

    /// Makes the conversations held for `user` those of `positions`:
    /// holds the new ones from their current position, releases the ones
    /// the user is no longer in. Returns the newly held ones.
    fn reconcile(&self, state: &mut State, user: Uuid, positions: &[(Uuid, i64)]) -> Vec<Uuid> {
        let Some(local) = state.users.get_mut(&user) else {
            return Vec::new();
        };
        let fresh: BTreeSet<Uuid> = positions.iter().map(|(id, _)| *id).collect();
        let added: Vec<(Uuid, i64)> = positions
            .iter()
            .filter(|(id, _)| !local.conversations.contains(id))
            .copied()
            .collect();
        let removed: Vec<Uuid> = local.conversations.difference(&fresh).copied().collect();
        local.conversations = fresh;
        for (id, last_seq) in &added {
            self.hold(state, *id, *last_seq);
        }
        for id in removed {
            self.release(state, id);
        }
        added.into_iter().map(|(id, _)| id).collect()
    }

    /// A connection of `user` closed here.
    pub(crate) fn disconnect(&self, user: Uuid) {
        let mut state = self.state.lock().expect("subscriptions lock");
        let Some(local) = state.users.get_mut(&user) else {
            return;
        };
        local.connections = local.connections.saturating_sub(1);
        if local.connections > 0 {
            return;
        }
        let local = state.users.remove(&user).expect("present above");
        self.bus.unsubscribe(Topic::User(user));
        for id in local.conversations {
            self.release(&mut state, id);
        }
    }

    /// `user` joined `conversation` with the event at `seq`. If the user is
    /// connected here, the node holds the conversation for them; a newly held
    /// conversation starts right before the join, so it is delivered.
    /// Returns whether the node now holds it for the user and did not.
    pub(crate) fn joined(&self, user: Uuid, conversation: Uuid, seq: i64) -> bool {
        let mut state = self.state.lock().expect("subscriptions lock");
        let added = state
            .users
            .get_mut(&user)
            .is_some_and(|local| local.conversations.insert(conversation));
        if added {
            self.hold(&mut state, conversation, seq - 1);
        }
        added
    }

    /// `user` left `conversation`.
    pub(crate) fn left(&self, user: Uuid, conversation: Uuid) {
        let mut state = self.state.lock().expect("subscriptions lock");
        let removed = state
            .users
            .get_mut(&user)
            .is_some_and(|local| local.conversations.remove(&conversation));
        if removed {
            self.release(&mut state, conversation);
        }
    }

    /// Those of `users` this node holds `conversation` for (connected
    /// here), under one lock whatever their number.
    pub(crate) fn holders<'a>(
        &self,
        users: impl IntoIterator<Item = &'a Uuid>,
        conversation: Uuid,
    ) -> Vec<Uuid> {
        let state = self.state.lock().expect("subscriptions lock");
        users
            .into_iter()
            .filter(|user| {
                state
                    .users
                    .get(user)
                    .is_some_and(|local| local.conversations.contains(&conversation))
            })
            .copied()
            .collect()
    }

    /// The last `seq` delivered here, for a held conversation.
    pub(crate) fn delivered(&self, conversation: Uuid) -> Option<i64> {
        self.state
            .lock()
            .expect("subscriptions lock")
            .conversations
            .get(&conversation)
            .map(|held| held.delivered)
    }

    /// Records that `seq` was delivered here.
    pub(crate) fn advance(&self, conversation: Uuid, seq: i64) {
        if let Some(held) = self
            .state
            .lock()
            .expect("subscriptions lock")
            .conversations
            .get_mut(&conversation)
        {
            held.delivered = held.delivered.max(seq);
        }
    }

    /// Every held conversation.
    pub(crate) fn held(&self) -> Vec<Uuid> {
        self.state
            .lock()
            .expect("subscriptions lock")
            .conversations
            .keys()
            .copied()
            .collect()
    }

    fn hold(&self, state: &mut State, conversation: Uuid, delivered: i64) {
        state
            .conversations
            .entry(conversation)
            .or_insert_with(|| {
                self.bus.subscribe(Topic::Conversation(conversation));
                Held {
                    users: 0,
                    delivered,
                }
            })
            .users += 1;
    }

    fn release(&self, state: &mut State, conversation: Uuid) {
        if let Entry::Occupied(mut entry) = state.conversations.entry(conversation) {
            entry.get_mut().users -= 1;
            if entry.get().users == 0 {
                entry.remove();
                self.bus.unsubscribe(Topic::Conversation(conversation));
            }
        }
    }
}
