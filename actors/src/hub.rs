//! Routes committed events to the connections of their recipients on this
//! node.
//!
//! A conversation actor knows its members; the hub knows which of them have
//! connections here. Each event is encoded once and the same bytes go to every
//! recipient. A connection whose mailbox is full is closed as a slow consumer
//! rather than allowed to grow server memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use ractor::ActorId;
use switchboard_protocol::Event;
use uuid::Uuid;

use crate::connection::{Close, CloseSender, ConnectionMsg};
use crate::mailbox::{Mailbox, MailboxError};
use crate::{ActorError, Metrics};

/// An event with its wire encoding, shared by every recipient.
#[derive(Debug)]
pub struct EncodedEvent {
    /// The event.
    pub event: Event,
    /// `{"type","data"}` as UTF-8 JSON, encoded once.
    pub frame: Bytes,
}

impl EncodedEvent {
    /// Encodes `event`.
    #[must_use]
    pub fn new(event: Event) -> Arc<Self> {
        let frame = serde_json::to_vec(&event).expect("events always encode");
        Arc::new(Self {
            event,
            frame: Bytes::from(frame),
        })
    }
}

/// One registered connection.
#[derive(Debug)]
struct Registered {
    /// The connection actor.
    actor_id: ActorId,
    /// Its bounded mailbox.
    mailbox: Mailbox<ConnectionMsg>,
    /// Tells its transport to close the socket, bypassing every queue.
    close: CloseSender,
}

#[derive(Debug, Default)]
struct Routes {
    /// Connections by user.
    by_user: HashMap<Uuid, Vec<Registered>>,
    /// The user of each connection actor, to unregister by actor id.
    by_actor: HashMap<ActorId, Uuid>,
}

/// The node's table of connections by user.
#[derive(Debug)]
pub(crate) struct Hub {
    /// Never held across an await.
    routes: RwLock<Routes>,
    /// The most connections this node accepts.
    connections_max: usize,
    /// The most connections one user may hold on this node.
    connections_per_user_max: usize,
    metrics: Metrics,
}

impl Hub {
    pub(crate) fn new(
        connections_max: usize,
        connections_per_user_max: usize,
        metrics: Metrics,
    ) -> Self {
        Self {
            routes: RwLock::default(),
            connections_max,
            connections_per_user_max,
            metrics,
        }
    }

    /// Adds a connection unless a limit says no.
    pub(crate) fn register(
        &self,
        user: Uuid,
        actor_id: ActorId,
        mailbox: Mailbox<ConnectionMsg>,
        close: CloseSender,
    ) -> Result<(), ActorError> {
        let mut routes = self.routes.write().expect("hub lock");
        if routes.by_actor.len() >= self.connections_max {
            return Err(ActorError::Overloaded(
                "this node has no room for more connections",
            ));
        }
        let connections = routes.by_user.entry(user).or_default();
        if connections.len() >= self.connections_per_user_max {
            return Err(ActorError::TooMany("too many connections for this user"));
        }
        connections.push(Registered {
            actor_id,
            mailbox,
            close,
        });
        routes.by_actor.insert(actor_id, user);
        self.metrics.websocket_active_connections.inc();
        Ok(())
    }

    /// Removes a connection, closing its transport with `close` if given,
    /// and returns its user. Removing one that is already gone does nothing.
    pub(crate) fn unregister(&self, actor_id: ActorId, close: Option<Close>) -> Option<Uuid> {
        let mut routes = self.routes.write().expect("hub lock");
        let user = routes.by_actor.remove(&actor_id)?;
        self.metrics.websocket_active_connections.dec();
        if let Some(connections) = routes.by_user.get_mut(&user) {
            if let Some(i) = connections.iter().position(|c| c.actor_id == actor_id) {
                let removed = connections.swap_remove(i);
                if let Some(close) = close {
                    removed.close.close(close);
                }
            }
            if connections.is_empty() {
                routes.by_user.remove(&user);
            }
        }
        Some(user)
    }

    /// Hands `event` to every connection of every recipient on this node.
    pub(crate) fn deliver<'a>(
        &self,
        recipients: impl IntoIterator<Item = &'a Uuid>,
        event: &Arc<EncodedEvent>,
    ) {
        let routes = self.routes.read().expect("hub lock");
        let mut delivered = 0;
        for user in recipients {
            let Some(connections) = routes.by_user.get(user) else {
                continue;
            };
            for connection in connections {
                match connection
                    .mailbox
                    .try_send(|permit| ConnectionMsg::Event(Arc::clone(event), permit))
                {
                    Ok(()) => delivered += 1,
                    Err(MailboxError::Full) => {
                        if connection.close.close(Close::SLOW_CONSUMER) {
                            self.metrics.slow_consumer_disconnects_total.inc();
                            self.metrics
                                .mailbox_full_total
                                .with_label_values(&["connection"])
                                .inc();
                        }
                        connection
                            .mailbox
                            .actor()
                            .stop(Some("slow consumer".into()));
                    }
                    // Stopping; its transport is already closing.
                    Err(MailboxError::Closed) => {}
                }
            }
        }
        self.metrics.deliveries_total.inc_by(delivered);
    }

    /// Tells every connection to close, for shutdown.
    pub(crate) fn close_all(&self, close: Close) {
        let routes = self.routes.read().expect("hub lock");
        for connection in routes.by_user.values().flatten() {
            connection.close.close(close);
        }
    }

    /// How many connections are registered.
    pub(crate) fn len(&self) -> usize {
        self.routes.read().expect("hub lock").by_actor.len()
    }
}
