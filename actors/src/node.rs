//! The per-node context: the store, clock, hub, registries, limits and
//! metrics, and the operations transports call.
//!
//! There is no process-global state: each [`Node`] owns its supervisors and
//! registries, so a test or the simulation can run several in one process.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use switchboard_protocol::{
    AddMember, Conversation, ConversationKind, ConversationSummary, CreateConversation,
    EditMessage, Event, Member, Message, ResumeFailed, ResumeRefusal, Role, SendMessage, Sync,
    Synced,
};
use switchboard_storage::{
    Analytics, Blobs, Bus, BusSignal, Clock, CreateConversation as StoreCreate, CreateOutcome,
    FeedCache, FeedStore, MessageRange, Random, Store,
};
use switchboard_supervisors::{BreakerPolicy, RestartPolicy, Supervisor, TaskReport, WorkerPolicy};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::connection::{
    Close, Connection, ConnectionActor, ConnectionArgs, ConnectionLink, ConnectionSupervisor,
    Sockets, Transport, control, slots,
};
use crate::conversation::{Command, ConversationSupervisor, Conversations};
use crate::feed::{Feed, FeedLimits, FeedParts};
use crate::hub::{EncodedEvent, Hub, NewSession};
use crate::mailbox::Mailbox;
use crate::media::{Media, MediaLimits};
use crate::publisher::Publishing;
use crate::router::{ROUTER, Router};
use crate::scheduler::{DISPATCHER, Dispatcher, ScheduledLimits, Wake as ScheduledWake};
use crate::session::{
    Attach, SessionActor, SessionArgs, SessionLimits, SessionMsg, SessionSupervisor, Start,
};
use crate::subscriptions::Subscriptions;
use crate::{ActorError, Metrics};

/// Every bound the node enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Commands that may wait in one conversation actor's mailbox.
    pub conversation_mailbox_len_max: usize,
    /// Conversation actors alive at once on this node.
    pub conversation_actors_max: usize,
    /// A conversation actor with no command for this long stops.
    pub conversation_idle_timeout: Duration,
    /// Members one conversation may have.
    pub conversation_members_max: usize,
    /// How long a caller waits for a conversation actor's answer.
    pub call_timeout: Duration,
    /// Events and client frames that may wait in one session or connection
    /// actor.
    pub connection_mailbox_len_max: usize,
    /// Connections (WebSocket and SSE) this node holds at once.
    pub connections_max: usize,
    /// Connections one user may hold on this node.
    pub connections_per_user_max: usize,
    /// Sessions: grace period, buffer bounds, sync budget.
    pub sessions: SessionLimits,
    /// How often and how fast a failing conversation actor is restarted.
    pub restart: RestartPolicy,
    /// Bounds of the bus workers, when there is a bus.
    pub bus: BusLimits,
    /// Bounds of voice messages and attachments, when there is a blob store.
    pub media: MediaLimits,
    /// Bounds of scheduled messages and the pacing of their dispatcher.
    pub scheduled: ScheduledLimits,
    /// The feed's.
    pub feed: FeedLimits,
}

/// Bounds and pacing of the node's use of the bus.
#[derive(Debug, Clone, Copy)]
pub struct BusLimits {
    /// The publisher: committed events waiting to be published, how long
    /// one may wait and take, its breaker and restarts.
    pub publisher: WorkerPolicy,
    /// The trimmer: streams waiting for a trim, and the rest as above.
    pub trimmer: WorkerPolicy,
    /// Entries a conversation's stream keeps, about.
    pub stream_len_max: usize,
    /// Appends to one stream between two trims of it.
    pub trim_every: u32,
    /// Conversations the publisher counts appends of at once; past it, a
    /// new one is trimmed right away instead of counted.
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
    /// How the router is restarted after a panic.
    pub router_restart: RestartPolicy,
}

impl Default for BusLimits {
    fn default() -> Self {
        let worker = WorkerPolicy {
            queue_len_max: 4096,
            call_timeout: Duration::from_secs(5),
            breaker: BreakerPolicy::default(),
            restart: RestartPolicy::default(),
        };
        Self {
            publisher: worker,
            trimmer: worker,
            stream_len_max: 50_000,
            trim_every: 100,
            trim_counts_len_max: 100_000,
            conversations_per_user_max: 10_000,
            sweep_every: Duration::from_secs(1),
            sweep_batch_len: 32,
            router_restart: RestartPolicy::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            conversation_mailbox_len_max: 256,
            conversation_actors_max: 100_000,
            conversation_idle_timeout: Duration::from_secs(300),
            conversation_members_max: 10_000,
            call_timeout: Duration::from_secs(10),
            connection_mailbox_len_max: 1024,
            connections_max: 50_000,
            connections_per_user_max: 16,
            sessions: SessionLimits::default(),
            restart: RestartPolicy::default(),
            bus: BusLimits::default(),
            media: MediaLimits::default(),
            scheduled: ScheduledLimits::default(),
            feed: FeedLimits::default(),
        }
    }
}

/// What a node is built on.
#[derive(Debug)]
pub struct Dependencies {
    /// The source of truth.
    pub store: Arc<dyn Store>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The random part of ids.
    pub random: Arc<dyn Random>,
    /// The bus to other nodes and what it hears from them; `None` for a
    /// single node.
    pub bus: Option<(Arc<dyn Bus>, mpsc::Receiver<BusSignal>)>,
    /// Where voice messages and attachments live; `None` leaves the node
    /// without media (text messaging only).
    pub blobs: Option<Arc<dyn Blobs>>,
    /// Posts and follows: the same database as `store`.
    pub feed: Arc<dyn FeedStore>,
    /// Where the feed's engagement goes and is ranked from; `None` ranks
    /// with the database.
    pub analytics: Option<Arc<dyn Analytics>>,
    /// The feed's last ranked pages; `None` keeps them in this process.
    pub feed_cache: Option<Arc<dyn FeedCache>>,
    /// The supervisor of the node's tasks and workers, the store's and the
    /// bus's included (they were started under it): its metrics join the
    /// node's, and readiness reads it.
    pub supervisor: Supervisor,
}

/// What every actor of a node shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    pub(crate) hub: Hub,
    /// Open connections, against the connection limits.
    pub(crate) sockets: Arc<Sockets>,
    /// Numbers connections, so a session tells its current one from an
    /// earlier one.
    links: AtomicU64,
    /// The most events and bytes any session has buffered, for the bounds
    /// they must stay within.
    pub(crate) buffer_peak: (AtomicUsize, AtomicUsize),
    pub(crate) conversations: Conversations,
    pub(crate) metrics: Metrics,
    pub(crate) limits: Limits,
    /// Publishes committed events to other nodes, off the send path.
    pub(crate) publishing: Option<Publishing>,
    /// What this node listens to on the bus, and what it delivered.
    pub(crate) subscriptions: Option<Subscriptions>,
    /// Voice messages and attachments, when there is a blob store.
    pub(crate) media: Option<Media>,
    /// The bus itself, for its replay tail.
    pub(crate) bus: Option<Arc<dyn Bus>>,
    /// Wakes the scheduled dispatcher for an entry due before it looks.
    pub(crate) scheduled: Arc<ScheduledWake>,
    /// Posts, follows and the ranked feed.
    pub(crate) feed: Feed,
}

impl Shared {
    /// A session ended: forget it, close its connection with `close`, and
    /// release its user's subscriptions if it was their last session here.
    pub(crate) fn session_ended(&self, session_id: Uuid, close: Close) {
        if let Some(user) = self.hub.unregister(session_id, close)
            && let Some(subscriptions) = &self.subscriptions
        {
            subscriptions.disconnect(user);
        }
    }

    /// A session actor failed or stopped without saying so itself.
    pub(crate) fn session_failed(&self, actor_id: ractor::ActorId) {
        if let Some(session_id) = self.hub.session_of(actor_id) {
            self.session_ended(session_id, Close::INTERNAL);
        }
    }

    /// Attaches a connection to a session and waits for the outcome. No
    /// session, or one that is gone or does not answer, is not found (and
    /// counted here; the session counts the outcomes it decides).
    pub(crate) async fn attach(
        &self,
        session: Option<&Mailbox<SessionMsg>>,
        attach: Attach,
    ) -> Result<(), ResumeRefusal> {
        let (reply, answer) = oneshot::channel();
        let sent = session.is_some_and(|session| {
            session
                .actor()
                .send_message(SessionMsg::Attach(attach, reply))
                .is_ok()
        });
        let outcome = if sent {
            match tokio::time::timeout(self.limits.call_timeout, answer).await {
                Ok(Ok(outcome)) => return outcome,
                _ => Err(ResumeRefusal::NotFound),
            }
        } else {
            Err(ResumeRefusal::NotFound)
        };
        self.metrics
            .session_attaches_total
            .with_label_values(&["not_found"])
            .inc();
        outcome
    }
}

impl Shared {
    /// A UUID v7 whose timestamp is the node's clock and whose random bits
    /// come from the node's random source, so ids sort by the node's time
    /// and a seeded node makes the same ids every run.
    pub(crate) fn new_id(&self) -> Uuid {
        let millis = u64::try_from(self.clock.now().timestamp_millis()).unwrap_or(0);
        let mut tail = [0u8; 10];
        self.random.fill(&mut tail);
        uuid::Builder::from_unix_timestamp_millis(millis, &tail).into_uuid()
    }
}

/// One Switchboard node. Cheap to clone; every clone is the same node.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's tasks and workers, and those of its store and bus.
    supervisor: Supervisor,
    shared: Arc<Shared>,
    conversation_supervisor: ActorRef<()>,
    connection_supervisor: ActorRef<()>,
    session_supervisor: ActorRef<()>,
}

/// A connection to open.
#[derive(Debug)]
pub struct ConnectRequest {
    /// Who is connecting.
    pub user: Uuid,
    /// Where the connection's frames go.
    pub link: ConnectionLink,
    /// How the client is connected.
    pub transport: Transport,
    /// The client's name for its device; a new session for a device ends
    /// the device's earlier one, and an SSE resume may find its session by
    /// it.
    pub device: Option<String>,
    /// Resume a session at connect (SSE's `Last-Event-ID`).
    pub resume: Option<ResumeAt>,
}

/// Where to resume.
#[derive(Debug, Clone, Copy)]
pub struct ResumeAt {
    /// The session; `None` for the session of the request's device.
    pub session_id: Option<Uuid>,
    /// The last cursor the client received.
    pub cursor: u64,
}

impl Node {
    /// Starts a node's supervisors over `store`.
    ///
    /// # Errors
    ///
    /// [`ActorError::Internal`] if a supervisor cannot start.
    pub async fn start(dependencies: Dependencies, limits: Limits) -> Result<Self, ActorError> {
        let Dependencies {
            store,
            clock,
            random,
            bus,
            blobs,
            feed,
            analytics,
            feed_cache,
            supervisor,
        } = dependencies;
        limits.media.check().map_err(ActorError::Invalid)?;
        limits.feed.check().map_err(ActorError::Invalid)?;
        limits.scheduled.check().map_err(ActorError::Invalid)?;
        let metrics = Metrics::new();
        for collector in supervisor.collectors() {
            metrics
                .registry()
                .register(collector)
                .map_err(|e| ActorError::Internal(format!("cannot register metrics: {e}")))?;
        }
        let (bus, signals) = bus.unzip();
        let publishing = bus.as_ref().map(|bus| {
            Publishing::start(&supervisor, bus, Arc::clone(&clock), &limits.bus, &metrics)
        });
        let subscriptions = bus
            .clone()
            .map(|bus| Subscriptions::new(bus, limits.bus.conversations_per_user_max));
        let media = blobs.as_ref().map(|blobs| {
            let stores = (&store, &feed);
            Media::start(&supervisor, blobs, stores, &clock, limits.media, &metrics)
        });
        let feed = Feed::start(
            &supervisor,
            FeedParts {
                store: feed,
                analytics,
                cache: feed_cache,
            },
            &clock,
            limits.feed,
            &metrics,
        );
        let shared = Arc::new(Shared {
            feed,
            store,
            clock,
            random,
            publishing,
            subscriptions,
            media,
            bus,
            scheduled: Arc::new(ScheduledWake::default()),
            hub: Hub::new(
                limits.sessions.sessions_max,
                limits.sessions.sessions_per_user_max,
                metrics.clone(),
            ),
            sockets: Arc::new(Sockets::new(
                limits.connections_max,
                limits.connections_per_user_max,
                metrics.clone(),
            )),
            links: AtomicU64::new(0),
            buffer_peak: (AtomicUsize::new(0), AtomicUsize::new(0)),
            conversations: Conversations::new(),
            metrics,
            limits,
        });
        let (conversation_supervisor, _) =
            Actor::spawn(None, ConversationSupervisor, Arc::clone(&shared))
                .await
                .map_err(|e| ActorError::Internal(format!("cannot start supervisor: {e}")))?;
        shared
            .conversations
            .set_supervisor(conversation_supervisor.get_cell());
        let (connection_supervisor, _) = Actor::spawn(None, ConnectionSupervisor, ())
            .await
            .map_err(|e| ActorError::Internal(format!("cannot start supervisor: {e}")))?;
        let (session_supervisor, _) = Actor::spawn(None, SessionSupervisor, Arc::clone(&shared))
            .await
            .map_err(|e| ActorError::Internal(format!("cannot start supervisor: {e}")))?;
        supervisor.spawn(
            DISPATCHER,
            limits.scheduled.restart,
            Dispatcher::new(&shared, Arc::clone(&shared.scheduled)),
        );
        if let Some(signals) = signals {
            supervisor.spawn(
                ROUTER,
                limits.bus.router_restart,
                Router::new(&shared, signals),
            );
        }
        Ok(Self {
            supervisor,
            shared,
            conversation_supervisor,
            connection_supervisor,
            session_supervisor,
        })
    }

    /// The node's metrics.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The node's clock.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// The node's limits.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Each breaker's state by dependency (`closed`, `half_open`, `open`);
    /// empty without a bus.
    #[must_use]
    pub fn breakers(&self) -> std::collections::BTreeMap<&'static str, &'static str> {
        self.supervisor
            .breakers()
            .into_iter()
            .map(|(dependency, state)| (dependency, state.as_str()))
            .collect()
    }

    /// Every supervised task's state (the store's and the bus's included).
    #[must_use]
    pub fn tasks(&self) -> Vec<TaskReport> {
        self.supervisor.tasks()
    }

    /// What every actor of the node shares.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether the blob store answers, as far as its breaker knows; `None`
    /// without one.
    #[must_use]
    pub fn media_healthy(&self) -> Option<bool> {
        self.shared.media.as_ref().map(Media::is_healthy)
    }

    /// The node's supervisor, for fault injection in tests and the
    /// simulation.
    #[must_use]
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Open connections on this node.
    #[must_use]
    pub fn connection_count(&self) -> usize {
        self.shared.sockets.len()
    }

    /// Sessions on this node, connected or within their grace period.
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.shared.hub.len()
    }

    /// The most events and bytes any session of this node has buffered.
    #[must_use]
    pub fn session_buffer_peak(&self) -> (usize, usize) {
        let (events, bytes) = &self.shared.buffer_peak;
        (
            events.load(Ordering::Relaxed),
            bytes.load(Ordering::Relaxed),
        )
    }

    /// Creates a conversation owned by `user`; for a direct conversation that
    /// already exists between the two, returns it with `false`.
    ///
    /// # Errors
    ///
    /// [`ActorError::Invalid`] for a direct conversation without exactly one
    /// other member, or too many members; store failures otherwise.
    pub async fn create_conversation(
        &self,
        user: Uuid,
        request: CreateConversation,
    ) -> Result<(Conversation, bool), ActorError> {
        let members: Vec<Uuid> = request
            .member_ids
            .iter()
            .copied()
            .filter(|&m| m != user)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        match request.kind {
            ConversationKind::Direct if members.len() != 1 => {
                return Err(ActorError::Invalid(
                    "a direct conversation needs exactly one other member".into(),
                ));
            }
            ConversationKind::Direct if request.title.is_some() => {
                return Err(ActorError::Invalid(
                    "a direct conversation has no title".into(),
                ));
            }
            _ => {}
        }
        if members.len() + 1 > self.shared.limits.conversation_members_max {
            return Err(ActorError::Invalid(format!(
                "a conversation has at most {} members",
                self.shared.limits.conversation_members_max
            )));
        }
        let outcome = self
            .shared
            .store
            .create_conversation(StoreCreate {
                id: self.shared.new_id(),
                kind: request.kind,
                title: request.title,
                creator: user,
                members,
                at: self.shared.clock.now(),
            })
            .await?;
        match outcome {
            CreateOutcome::Created(committed) => {
                for event in committed.events {
                    self.shared
                        .metrics
                        .events_committed_total
                        .with_label_values(&[event.kind()])
                        .inc();
                    let recipients: Vec<Uuid> =
                        committed.value.members.iter().map(|m| m.user_id).collect();
                    // Members connected here now hold the conversation, so
                    // what other nodes commit to it reaches them.
                    if let Some(subscriptions) = &self.shared.subscriptions {
                        for member in &recipients {
                            let _ = subscriptions.joined(*member, committed.value.id, event.seq());
                        }
                        subscriptions.advance(committed.value.id, event.seq());
                    }
                    let encoded = EncodedEvent::new(event);
                    self.shared.hub.deliver(&recipients, &encoded);
                    if let Some(publishing) = &self.shared.publishing {
                        publishing.publish(&encoded);
                    }
                }
                Ok((committed.value, true))
            }
            CreateOutcome::Existing(conversation) => Ok((conversation, false)),
        }
    }

    /// A conversation `user` belongs to.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] when it does not exist or `user` is not a member.
    pub async fn conversation(&self, user: Uuid, id: Uuid) -> Result<Conversation, ActorError> {
        self.shared
            .store
            .conversation(id)
            .await?
            .filter(|c| c.members.iter().any(|m| m.user_id == user))
            .ok_or(ActorError::NotFound("conversation not found"))
    }

    /// The conversations of `user`, newest activity first.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn conversations(
        &self,
        user: Uuid,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, ActorError> {
        Ok(self.shared.store.conversations_for(user, limit).await?)
    }

    async fn require_member(&self, user: Uuid, id: Uuid) -> Result<Role, ActorError> {
        self.shared
            .store
            .role(id, user)
            .await?
            .ok_or(ActorError::NotFound("conversation not found"))
    }

    /// A page of messages of a conversation `user` belongs to.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for a non-member.
    pub async fn messages(
        &self,
        user: Uuid,
        id: Uuid,
        range: MessageRange,
    ) -> Result<Vec<Message>, ActorError> {
        self.require_member(user, id).await?;
        Ok(self.shared.store.messages(id, range).await?)
    }

    /// Events after `after_seq` of a conversation `user` belongs to.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for a non-member.
    pub async fn events(
        &self,
        user: Uuid,
        id: Uuid,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Event>, ActorError> {
        self.require_member(user, id).await?;
        Ok(self.shared.store.events(id, after_seq, limit).await?)
    }

    /// Sends a message; `true` when it is new, `false` when the idempotency
    /// key had already stored it.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for a non-member, [`ActorError::Conflict`] for
    /// an idempotency key reused with another message, and the actor's
    /// overload and availability errors.
    pub async fn send(
        &self,
        user: Uuid,
        request: SendMessage,
    ) -> Result<(Message, bool), ActorError> {
        let id = request.conversation_id;
        self.shared
            .conversations
            .call(&self.shared, id, |reply| Command::Send {
                user,
                input: request.clone(),
                attachment: None,
                scheduled: None,
                reply,
            })
            .await
    }

    async fn conversation_of(&self, message_id: Uuid) -> Result<Uuid, ActorError> {
        self.shared
            .store
            .message(message_id)
            .await?
            .map(|m| m.conversation_id)
            .ok_or(ActorError::NotFound("message not found"))
    }

    /// Edits a message `user` sent.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for a non-member, [`ActorError::Forbidden`]
    /// for anyone but the sender, [`ActorError::Conflict`] once deleted.
    pub async fn edit(
        &self,
        user: Uuid,
        message_id: Uuid,
        request: EditMessage,
    ) -> Result<Message, ActorError> {
        let id = self.conversation_of(message_id).await?;
        self.shared
            .conversations
            .call(&self.shared, id, |reply| Command::Edit {
                user,
                message_id,
                input: request.clone(),
                reply,
            })
            .await
            .map_err(hide_message)
    }

    /// Deletes a message, leaving a tombstone. Deleting a deleted message
    /// succeeds and changes nothing.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for a non-member, [`ActorError::Forbidden`]
    /// for anyone but the sender, an admin or the owner.
    pub async fn delete(&self, user: Uuid, message_id: Uuid) -> Result<(), ActorError> {
        let id = self.conversation_of(message_id).await?;
        self.shared
            .conversations
            .call(&self.shared, id, |reply| Command::Delete {
                user,
                message_id,
                reply,
            })
            .await
            .map_err(hide_message)?;
        // An attachment it carried is owed a deletion now.
        if let Some(media) = &self.shared.media {
            media.wake_deleter();
        }
        Ok(())
    }

    /// Marks everything up to `seq` read for `user`.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for a non-member, [`ActorError::Invalid`] for
    /// a `seq` outside the log.
    pub async fn mark_read(&self, user: Uuid, id: Uuid, seq: i64) -> Result<(), ActorError> {
        self.shared
            .conversations
            .call(&self.shared, id, |reply| Command::MarkRead {
                user,
                seq,
                reply,
            })
            .await
    }

    /// Adds a member to a group.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for a non-member, [`ActorError::Forbidden`]
    /// unless `user` moderates, [`ActorError::Conflict`] for a member already
    /// there, [`ActorError::Invalid`] for a direct conversation.
    pub async fn add_member(
        &self,
        user: Uuid,
        id: Uuid,
        request: AddMember,
    ) -> Result<Member, ActorError> {
        let role = request.role.unwrap_or(Role::Member);
        self.shared
            .conversations
            .call(&self.shared, id, |reply| Command::AddMember {
                user,
                target: request.user_id,
                role,
                reply,
            })
            .await
    }

    /// Changes a member's role.
    ///
    /// # Errors
    ///
    /// As [`Node::add_member`], and [`ActorError::Forbidden`] for the owner.
    pub async fn change_role(
        &self,
        user: Uuid,
        id: Uuid,
        target: Uuid,
        role: Role,
    ) -> Result<(), ActorError> {
        self.shared
            .conversations
            .call(&self.shared, id, |reply| Command::ChangeRole {
                user,
                target,
                role,
                reply,
            })
            .await
    }

    /// Removes a member, or lets `user` leave when `target == user`.
    ///
    /// # Errors
    ///
    /// As [`Node::change_role`].
    pub async fn remove_member(
        &self,
        user: Uuid,
        id: Uuid,
        target: Uuid,
    ) -> Result<(), ActorError> {
        self.shared
            .conversations
            .call(&self.shared, id, |reply| Command::RemoveMember {
                user,
                target,
                reply,
            })
            .await
    }

    /// Opens a connection: resumes the session it asks for, or starts a new
    /// one, and starts its connection actor. The session sends `hello` (and,
    /// after a refused resume, `resume_failed`) through the link first.
    ///
    /// # Errors
    ///
    /// [`ActorError::TooMany`] past a per-user limit,
    /// [`ActorError::Overloaded`] past the node's,
    /// [`ActorError::Unavailable`] when the user's conversations cannot be
    /// loaded.
    pub async fn connect(&self, request: ConnectRequest) -> Result<Connection, ActorError> {
        let ConnectRequest {
            user,
            link,
            transport,
            device,
            resume,
        } = request;
        let shared = &self.shared;
        let ticket = shared.sockets.open(user, transport)?;
        let link = link.observed(&shared.metrics);
        let link_id = shared.links.fetch_add(1, Ordering::Relaxed);
        let mut refused = None;
        let mut resumed = None;
        if let Some(resume) = resume {
            let target = match (resume.session_id, device.as_deref()) {
                (Some(id), _) => shared.hub.session(user, id).map(|m| (id, m)),
                (None, Some(device)) => shared.hub.session_on(user, device),
                (None, None) => None,
            };
            let attach = Attach {
                link: link.clone(),
                link_id,
                start: Start::Resume {
                    cursor: resume.cursor,
                    by_frame: false,
                },
            };
            let attached = shared
                .attach(target.as_ref().map(|(_, session)| session), attach)
                .await;
            match attached {
                Ok(()) => resumed = target,
                Err(reason) => {
                    refused = Some(ResumeFailed {
                        session_id: resume.session_id.or(target.map(|(id, _)| id)),
                        reason,
                    });
                }
            }
        }
        let (session_id, session, may_resume) = match resumed {
            Some((id, session)) => (id, session, false),
            None => {
                let (id, session) = self.start_session(user, device).await?;
                // A WebSocket client may still resume by frame, and one whose
                // resume failed syncs next: either way live events wait.
                let hold = transport == Transport::WebSocket || refused.is_some();
                let attach = Attach {
                    link: link.clone(),
                    link_id,
                    start: Start::Fresh { hold },
                };
                if shared.attach(Some(&session), attach).await.is_err() {
                    return Err(ActorError::Unavailable("the new session stopped".into()));
                }
                let may_resume = transport == Transport::WebSocket && refused.is_none();
                (id, session, may_resume)
            }
        };
        let refusal = refused.as_ref().map(|r| r.reason);
        if let Some(refused) = refused {
            link.send(control(&switchboard_protocol::Control::ResumeFailed(
                refused,
            )));
        }
        let slots = slots(shared.limits.connection_mailbox_len_max);
        let spawned = Actor::spawn_linked(
            None,
            ConnectionActor,
            ConnectionArgs {
                shared: Arc::clone(shared),
                user,
                link,
                link_id,
                session: session.clone(),
                session_id,
                may_resume,
                ticket,
            },
            self.connection_supervisor.get_cell(),
        )
        .await;
        match spawned {
            Ok((actor, _)) => Ok(Connection::new(
                session_id,
                refusal,
                Mailbox::new(actor, slots),
            )),
            Err(error) => {
                let _ = session.actor().send_message(SessionMsg::Detach(link_id));
                Err(ActorError::Internal(format!(
                    "cannot start connection actor: {error}"
                )))
            }
        }
    }

    /// Starts and registers a session for `user`, holding the user's bus
    /// subscriptions for as long as it lives.
    async fn start_session(
        &self,
        user: Uuid,
        device: Option<String>,
    ) -> Result<(Uuid, Mailbox<SessionMsg>), ActorError> {
        let shared = &self.shared;
        // Where each of the user's conversations stands: the new session
        // starts there (a client that knows better says so with `sync`).
        let positions = match &shared.subscriptions {
            Some(subscriptions) => subscriptions
                .connect(shared.store.as_ref(), user)
                .await
                .map(|(positions, added)| {
                    shared.hub.resync(user, &added);
                    positions
                }),
            None => {
                let limit = u32::try_from(shared.limits.sessions.sync_conversations_max)
                    .unwrap_or(u32::MAX);
                shared.store.positions_for(user, limit).await
            }
        }
        .map_err(|e| {
            ActorError::Unavailable(format!("cannot load the user's conversations: {e}"))
        })?;
        let release = || {
            if let Some(subscriptions) = &shared.subscriptions {
                subscriptions.disconnect(user);
            }
        };
        let id = shared.new_id();
        let spawned = Actor::spawn_linked(
            None,
            SessionActor,
            SessionArgs {
                shared: Arc::clone(shared),
                id,
                user,
                positions,
            },
            self.session_supervisor.get_cell(),
        )
        .await;
        let actor = match spawned {
            Ok((actor, _)) => actor,
            Err(error) => {
                release();
                return Err(ActorError::Internal(format!(
                    "cannot start session actor: {error}"
                )));
            }
        };
        let mailbox = Mailbox::new(
            actor.clone(),
            slots(shared.limits.connection_mailbox_len_max),
        );
        let registered = shared.hub.register(NewSession {
            session_id: id,
            user,
            device,
            mailbox: mailbox.clone(),
        });
        match registered {
            Ok(ended) => {
                for session in ended {
                    session.stop(Some("replaced".into()));
                    release();
                }
                Ok((id, mailbox))
            }
            Err(error) => {
                actor.stop(None);
                release();
                Err(error)
            }
        }
    }

    /// Runs a `sync` on one of `user`'s sessions (for SSE clients, which
    /// cannot send frames): the events go to the session's connection, then
    /// `synced`, which is also returned.
    ///
    /// # Errors
    ///
    /// [`ActorError::NotFound`] for a session this node does not hold for
    /// `user`, [`ActorError::Overloaded`] when the session is busy,
    /// [`ActorError::Invalid`] for too many conversations.
    pub async fn sync(
        &self,
        user: Uuid,
        session_id: Uuid,
        sync: Sync,
    ) -> Result<Synced, ActorError> {
        let limits = &self.shared.limits.sessions;
        if sync.positions.len() > limits.sync_conversations_max {
            return Err(ActorError::Invalid(format!(
                "a sync lists at most {} conversations",
                limits.sync_conversations_max
            )));
        }
        let session = self
            .shared
            .hub
            .session(user, session_id)
            .ok_or(ActorError::NotFound("session not found"))?;
        let (reply, answer) = oneshot::channel();
        session
            .try_send(|permit| SessionMsg::Sync {
                positions: sync.positions,
                permit,
                reply: Some(reply),
            })
            .map_err(|_| ActorError::Overloaded("session busy: retry the sync"))?;
        answer
            .await
            .map_err(|_| ActorError::NotFound("session not found"))?
    }

    /// Tells every connection to close and reconnect (to another node, or to
    /// this one once it is back).
    pub fn close_connections(&self) {
        self.shared.hub.close_all(Close::SHUTDOWN);
    }

    /// Shuts down: tells every connection to reconnect elsewhere, lets each
    /// conversation actor finish what it has queued (up to `drain_timeout`),
    /// and stops the supervisors.
    pub async fn shutdown(&self, drain_timeout: Duration) {
        self.shared.hub.close_all(Close::SHUTDOWN);
        self.shared.conversations.drain(drain_timeout).await;
        self.conversation_supervisor.stop(None);
        self.connection_supervisor
            .stop_children_and_wait(None, Some(drain_timeout))
            .await;
        self.connection_supervisor.stop(None);
        self.session_supervisor
            .stop_children_and_wait(None, Some(drain_timeout))
            .await;
        self.session_supervisor.stop(None);
        self.supervisor.shutdown();
    }
}

/// A message in a conversation the caller cannot see is, to them, a message
/// that does not exist.
fn hide_message(error: ActorError) -> ActorError {
    match error {
        ActorError::NotFound(_) => ActorError::NotFound("message not found"),
        other => other,
    }
}
