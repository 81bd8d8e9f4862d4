//! Routes committed events to the sessions of their recipients on this node,
//! and keeps the node's table of sessions.
//!
//! A conversation actor knows its members; the hub knows which of them have
//! sessions here. Each event is encoded once and the same bytes go to every
//! recipient. A session whose mailbox is full has fallen behind for good: it
//! is ended, and its client syncs from the store, rather than allowed to grow
//! server memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use ractor::{ActorId, ActorRef};
use switchboard_protocol::{Control, Event};
use uuid::Uuid;

use crate::connection::{Close, CloseSender};
use crate::mailbox::{Mailbox, MailboxError};
use crate::session::SessionMsg;
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

/// One registered session.
#[derive(Debug)]
struct Registered {
    /// The session id clients resume with.
    session_id: Uuid,
    /// The session actor.
    actor_id: ActorId,
    /// The device the client named, if any; one session per user and device.
    device: Option<String>,
    /// Its bounded mailbox.
    mailbox: Mailbox<SessionMsg>,
    /// Closes the connection attached to it, if one is.
    attached: Option<CloseSender>,
    /// Registration order, to end the oldest unconnected session first.
    order: u64,
}

#[derive(Debug, Default)]
struct Routes {
    /// Sessions by user.
    by_user: BTreeMap<Uuid, Vec<Registered>>,
    /// The user of each session.
    by_id: BTreeMap<Uuid, Uuid>,
    /// The session of each session actor, to unregister by actor id.
    by_actor: HashMap<ActorId, Uuid>,
    /// Registrations so far.
    registered: u64,
}

impl Routes {
    fn entry(&self, session_id: Uuid) -> Option<&Registered> {
        let user = self.by_id.get(&session_id)?;
        self.by_user
            .get(user)?
            .iter()
            .find(|r| r.session_id == session_id)
    }

    fn remove(&mut self, session_id: Uuid) -> Option<(Uuid, Registered)> {
        let user = self.by_id.remove(&session_id)?;
        let sessions = self.by_user.get_mut(&user)?;
        let i = sessions.iter().position(|r| r.session_id == session_id)?;
        let removed = sessions.swap_remove(i);
        if sessions.is_empty() {
            self.by_user.remove(&user);
        }
        self.by_actor.remove(&removed.actor_id);
        Some((user, removed))
    }

    /// The user's oldest session with no connection.
    fn oldest_unattached(&self, user: Uuid) -> Option<Uuid> {
        self.by_user
            .get(&user)?
            .iter()
            .filter(|r| r.attached.is_none())
            .min_by_key(|r| r.order)
            .map(|r| r.session_id)
    }
}

/// A session to register.
#[derive(Debug)]
pub(crate) struct NewSession {
    pub(crate) session_id: Uuid,
    pub(crate) user: Uuid,
    pub(crate) device: Option<String>,
    pub(crate) mailbox: Mailbox<SessionMsg>,
}

/// The node's sessions by user.
#[derive(Debug)]
pub(crate) struct Hub {
    /// Never held across an await.
    routes: RwLock<Routes>,
    /// The most sessions this node keeps.
    sessions_max: usize,
    /// The most sessions one user may keep on this node.
    sessions_per_user_max: usize,
    metrics: Metrics,
}

impl Hub {
    pub(crate) fn new(sessions_max: usize, sessions_per_user_max: usize, metrics: Metrics) -> Self {
        Self {
            routes: RwLock::default(),
            sessions_max,
            sessions_per_user_max,
            metrics,
        }
    }

    /// Adds a session. The user's earlier session for the same device, and
    /// the oldest unconnected session of a user at the limit, are removed
    /// and returned for the caller to stop.
    pub(crate) fn register(
        &self,
        new: NewSession,
    ) -> Result<Vec<ActorRef<SessionMsg>>, ActorError> {
        let mut routes = self.routes.write().expect("hub lock");
        let mut ended = Vec::new();
        let mut end = |routes: &mut Routes, session_id: Uuid| {
            if let Some((_, removed)) = routes.remove(session_id) {
                self.forget(&removed);
                if let Some(close) = &removed.attached {
                    close.close(Close::SESSION_TAKEN);
                }
                ended.push(removed.mailbox.actor().clone());
            }
        };
        if let Some(device) = &new.device {
            let same = routes.by_user.get(&new.user).and_then(|sessions| {
                sessions
                    .iter()
                    .find(|r| r.device.as_ref() == Some(device))
                    .map(|r| r.session_id)
            });
            if let Some(same) = same {
                end(&mut routes, same);
            }
        }
        let held = routes.by_user.get(&new.user).map_or(0, Vec::len);
        if held >= self.sessions_per_user_max {
            match routes.oldest_unattached(new.user) {
                Some(oldest) => end(&mut routes, oldest),
                None => {
                    self.refused("user");
                    return Err(ActorError::TooMany("too many sessions for this user"));
                }
            }
        }
        if routes.by_actor.len() >= self.sessions_max {
            match routes.oldest_unattached(new.user) {
                Some(oldest) => end(&mut routes, oldest),
                None => {
                    self.refused("node");
                    return Err(ActorError::Overloaded(
                        "this node has no room for more sessions",
                    ));
                }
            }
        }
        routes.registered += 1;
        let order = routes.registered;
        let actor_id = new.mailbox.actor().get_id();
        routes.by_id.insert(new.session_id, new.user);
        routes.by_actor.insert(actor_id, new.session_id);
        routes
            .by_user
            .entry(new.user)
            .or_default()
            .push(Registered {
                session_id: new.session_id,
                actor_id,
                device: new.device,
                mailbox: new.mailbox,
                attached: None,
                order,
            });
        self.metrics.sessions_active.inc();
        self.metrics.sessions_detached.inc();
        if !ended.is_empty() {
            self.metrics
                .sessions_replaced_total
                .inc_by(ended.len() as u64);
        }
        Ok(ended)
    }

    fn refused(&self, limit: &str) {
        self.metrics.connection_refused("session", limit);
    }

    fn forget(&self, removed: &Registered) {
        self.metrics.sessions_active.dec();
        if removed.attached.is_none() {
            self.metrics.sessions_detached.dec();
        }
    }

    /// Records whether a session has a connection, and how to close it.
    pub(crate) fn set_attached(&self, session_id: Uuid, close: Option<CloseSender>) {
        let mut routes = self.routes.write().expect("hub lock");
        let Some(user) = routes.by_id.get(&session_id).copied() else {
            return;
        };
        let Some(entry) = routes
            .by_user
            .get_mut(&user)
            .and_then(|s| s.iter_mut().find(|r| r.session_id == session_id))
        else {
            return;
        };
        match (entry.attached.is_some(), close.is_some()) {
            (false, true) => self.metrics.sessions_detached.dec(),
            (true, false) => self.metrics.sessions_detached.inc(),
            _ => {}
        }
        entry.attached = close;
    }

    /// The session `session_id` of `user`, if this node holds it.
    pub(crate) fn session(&self, user: Uuid, session_id: Uuid) -> Option<Mailbox<SessionMsg>> {
        let routes = self.routes.read().expect("hub lock");
        routes
            .entry(session_id)
            .filter(|_| routes.by_id.get(&session_id) == Some(&user))
            .map(|r| r.mailbox.clone())
    }

    /// The session of `user` on `device`, if this node holds one.
    pub(crate) fn session_on(
        &self,
        user: Uuid,
        device: &str,
    ) -> Option<(Uuid, Mailbox<SessionMsg>)> {
        let routes = self.routes.read().expect("hub lock");
        routes
            .by_user
            .get(&user)?
            .iter()
            .find(|r| r.device.as_deref() == Some(device))
            .map(|r| (r.session_id, r.mailbox.clone()))
    }

    /// Removes a session, closing its connection with `close` if it has
    /// one, and returns its user. Removing one already gone does nothing.
    pub(crate) fn unregister(&self, session_id: Uuid, close: Close) -> Option<Uuid> {
        let mut routes = self.routes.write().expect("hub lock");
        let (user, removed) = routes.remove(session_id)?;
        self.forget(&removed);
        if let Some(attached) = &removed.attached {
            attached.close(close);
        }
        Some(user)
    }

    /// The session id of a session actor.
    pub(crate) fn session_of(&self, actor_id: ActorId) -> Option<Uuid> {
        self.routes
            .read()
            .expect("hub lock")
            .by_actor
            .get(&actor_id)
            .copied()
    }

    /// Hands `event` to every session of every recipient on this node.
    pub(crate) fn deliver<'a>(
        &self,
        recipients: impl IntoIterator<Item = &'a Uuid>,
        event: &Arc<EncodedEvent>,
    ) {
        let routes = self.routes.read().expect("hub lock");
        let mut delivered = 0;
        for user in recipients {
            let Some(sessions) = routes.by_user.get(user) else {
                continue;
            };
            for session in sessions {
                match session
                    .mailbox
                    .try_send(|permit| SessionMsg::Event(Arc::clone(event), permit))
                {
                    Ok(()) => delivered += 1,
                    Err(MailboxError::Full) => {
                        self.metrics
                            .mailbox_full_total
                            .with_label_values(&["session"])
                            .inc();
                        // Its place in the stream is lost; the client syncs.
                        session.mailbox.actor().stop(Some("mailbox full".into()));
                    }
                    // Stopping; its connection is already closing.
                    Err(MailboxError::Closed) => {}
                }
            }
        }
        self.metrics.deliveries_total.inc_by(delivered);
    }

    /// Tells `user`'s sessions that they may have missed events of these
    /// conversations (the node just found the user is in them): each has
    /// its client sync them.
    pub(crate) fn resync(&self, user: Uuid, conversations: &[Uuid]) {
        if conversations.is_empty() {
            return;
        }
        let routes = self.routes.read().expect("hub lock");
        for session in routes.by_user.get(&user).into_iter().flatten() {
            // A full mailbox is ended by the next delivery; its client syncs.
            let _ = session
                .mailbox
                .try_send(|permit| SessionMsg::Resync(conversations.to_vec(), permit));
        }
    }

    /// Hands a frame to `user`'s sessions on this node, for their attached
    /// connections (a detached session misses it: what it tells is also
    /// kept where the client can list it).
    pub(crate) fn tell(&self, user: Uuid, control: &Control) {
        let routes = self.routes.read().expect("hub lock");
        for session in routes.by_user.get(&user).into_iter().flatten() {
            let _ = session
                .mailbox
                .try_send(|permit| SessionMsg::Tell(control.clone(), permit));
        }
    }

    /// Tells every connection to close, for shutdown.
    pub(crate) fn close_all(&self, close: Close) {
        let routes = self.routes.read().expect("hub lock");
        for session in routes.by_user.values().flatten() {
            if let Some(attached) = &session.attached {
                attached.close(close);
            }
        }
    }

    /// How many sessions are registered.
    pub(crate) fn len(&self) -> usize {
        self.routes.read().expect("hub lock").by_actor.len()
    }
}
