//! The conversation actor, its per-node registry and its supervisor.
//!
//! One actor per active conversation serializes every mutation of it. Each
//! handler checks the caller's right against the member table the actor holds
//! and performs the write before the next message is looked at, and the
//! store's statement repeats the same condition. So an edit can never slip in
//! between a member's removal and the moment it takes effect, on this node or
//! any other.
//!
//! Actors start on demand, stop after `conversation_idle_timeout`, and are
//! restarted after a panic under a [`RestartTracker`]'s bounds: lazily, by the
//! next request, once the backoff has passed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use switchboard_protocol::{
    Attachment, ConversationKind, EditMessage, Event, Member, Message, Role, SendMessage,
};
use switchboard_storage::{
    Committed, DeleteMessage, EditMessage as StoreEdit, NewMessage, Rejection, ScheduledClaim,
    SendOutcome, StoreError,
};
use switchboard_supervisors::RestartTracker;
use tokio::sync::{Mutex, oneshot};
use uuid::Uuid;

use crate::ActorError;
use crate::hub::EncodedEvent;
use crate::mailbox::{Mailbox, MailboxError, Permit};
use crate::node::Shared;
use crate::publisher::Publishing;

/// How a conversation actor answers a command.
#[derive(Debug)]
pub(crate) enum Outcome<T> {
    /// The command ran (or was refused by the rules).
    Done(Result<T, ActorError>),
    /// The actor is stopping and did not look at the command: send it again.
    Closing,
}

pub(crate) type Reply<T> = oneshot::Sender<Outcome<T>>;

/// The mutations a conversation actor serializes.
#[derive(Debug)]
pub(crate) enum Command {
    Send {
        user: Uuid,
        input: SendMessage,
        /// Checked against the blob store already; the store claims it.
        attachment: Option<Box<Attachment>>,
        /// The scheduled entry this send delivers, under the dispatcher's
        /// claim; the store turns it `sent` with the send.
        scheduled: Option<ScheduledClaim>,
        reply: Reply<(Message, bool)>,
    },
    Edit {
        user: Uuid,
        message_id: Uuid,
        input: EditMessage,
        reply: Reply<Message>,
    },
    Delete {
        user: Uuid,
        message_id: Uuid,
        reply: Reply<()>,
    },
    MarkRead {
        user: Uuid,
        seq: i64,
        reply: Reply<()>,
    },
    AddMember {
        user: Uuid,
        target: Uuid,
        role: Role,
        reply: Reply<Member>,
    },
    ChangeRole {
        user: Uuid,
        target: Uuid,
        role: Role,
        reply: Reply<()>,
    },
    RemoveMember {
        user: Uuid,
        target: Uuid,
        reply: Reply<()>,
    },
}

impl Command {
    fn refuse(self) {
        match self {
            Self::Send { reply, .. } => drop(reply.send(Outcome::Closing)),
            Self::Edit { reply, .. } => drop(reply.send(Outcome::Closing)),
            Self::Delete { reply, .. }
            | Self::MarkRead { reply, .. }
            | Self::ChangeRole { reply, .. }
            | Self::RemoveMember { reply, .. } => drop(reply.send(Outcome::Closing)),
            Self::AddMember { reply, .. } => drop(reply.send(Outcome::Closing)),
        }
    }
}

/// What a conversation actor handles.
#[derive(Debug)]
pub(crate) enum ConversationMsg {
    /// A mutation, holding its mailbox slot.
    Command(Command, Permit),
    /// Something from the bus, holding its mailbox slot.
    Note(Note, Permit),
    /// Timer: stop if nothing happened for the idle timeout.
    IdleCheck,
    /// Commit the sends taken since the last flush, together. The actor
    /// sends this to itself when it takes the first of them, so it comes
    /// after whatever was already queued.
    FlushSends,
}

/// What the bus tells a conversation actor.
#[derive(Debug, Clone)]
pub(crate) enum Note {
    /// An event another node committed.
    Remote(Event),
    /// Events may have been missed: deliver whatever the store has after
    /// this node's watermark.
    CatchUp,
}

#[derive(Debug, Default)]
struct Live {
    /// The running actor of each active conversation.
    by_conversation: BTreeMap<Uuid, Mailbox<ConversationMsg>>,
    /// The conversation of each running actor.
    by_actor: HashMap<ActorId, Uuid>,
}

/// The node's conversation actors: finds the running one or starts it.
#[derive(Debug)]
pub(crate) struct Conversations {
    /// Never held across an await.
    live: RwLock<Live>,
    /// Serializes starts, so one conversation never gets two actors.
    starting: Mutex<()>,
    /// Failure history of conversations whose actors failed recently.
    failures: std::sync::Mutex<BTreeMap<Uuid, RestartTracker>>,
    /// The supervisor new actors are linked to; set once at node start.
    supervisor: std::sync::OnceLock<ActorCell>,
}

impl Conversations {
    pub(crate) fn new() -> Self {
        Self {
            live: RwLock::default(),
            starting: Mutex::new(()),
            failures: std::sync::Mutex::default(),
            supervisor: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn set_supervisor(&self, cell: ActorCell) {
        let _ = self.supervisor.set(cell);
    }

    fn get(&self, id: Uuid) -> Option<Mailbox<ConversationMsg>> {
        self.live
            .read()
            .expect("registry lock")
            .by_conversation
            .get(&id)
            .cloned()
    }

    /// The running actor of `id`, started if needed.
    async fn mailbox(
        &self,
        shared: &Arc<Shared>,
        id: Uuid,
    ) -> Result<Mailbox<ConversationMsg>, ActorError> {
        if let Some(mailbox) = self.get(id) {
            return Ok(mailbox);
        }
        let _starting = self.starting.lock().await;
        if let Some(mailbox) = self.get(id) {
            return Ok(mailbox);
        }
        let now = shared.clock.monotonic();
        {
            let mut failures = self.failures.lock().expect("failures lock");
            if let Some(tracker) = failures.get(&id) {
                if !tracker.may_run(now) {
                    return Err(ActorError::Unavailable(
                        "conversation is recovering from a failure; retry shortly".into(),
                    ));
                }
                if tracker.is_quiet(now) {
                    failures.remove(&id);
                }
            }
        }
        if self.live.read().expect("registry lock").by_actor.len()
            >= shared.limits.conversation_actors_max
        {
            shared
                .metrics
                .mailbox_full_total
                .with_label_values(&["conversation_registry"])
                .inc();
            return Err(ActorError::Overloaded(
                "too many active conversations on this node",
            ));
        }
        let supervisor = self
            .supervisor
            .get()
            .cloned()
            .ok_or_else(|| ActorError::Unavailable("node is not running".into()))?;
        let slots = crate::connection::slots(shared.limits.conversation_mailbox_len_max);
        let (actor, _) = Actor::spawn_linked(
            None,
            ConversationActor,
            ConversationArgs {
                id,
                shared: Arc::clone(shared),
            },
            supervisor,
        )
        .await
        .map_err(|e| ActorError::Internal(format!("cannot start conversation actor: {e}")))?;
        let mailbox = Mailbox::new(actor.clone(), slots);
        let mut live = self.live.write().expect("registry lock");
        live.by_conversation.insert(id, mailbox.clone());
        live.by_actor.insert(actor.get_id(), id);
        shared.metrics.conversation_actors_active.inc();
        Ok(mailbox)
    }

    /// Stops routing new commands of `id` to `actor_id`, so the next command
    /// starts a successor. The actor stays counted until it terminates.
    fn retire(&self, id: Uuid, actor_id: ActorId) {
        let mut live = self.live.write().expect("registry lock");
        if live
            .by_conversation
            .get(&id)
            .is_some_and(|m| m.actor().get_id() == actor_id)
        {
            live.by_conversation.remove(&id);
        }
    }

    /// Removes a terminated actor; returns its conversation if it was
    /// registered. Only the supervisor calls this, once per actor.
    fn forget(&self, shared: &Shared, actor_id: ActorId) -> Option<Uuid> {
        let id = self
            .live
            .write()
            .expect("registry lock")
            .by_actor
            .remove(&actor_id)?;
        self.retire(id, actor_id);
        shared.metrics.conversation_actors_active.dec();
        Some(id)
    }

    fn record_failure(&self, shared: &Shared, id: Uuid) {
        let now = shared.clock.monotonic();
        let mut failures = self.failures.lock().expect("failures lock");
        // Bounded: only conversations that failed within a restart window stay.
        failures.retain(|_, tracker| !tracker.is_quiet(now));
        let decision = failures
            .entry(id)
            .or_insert_with(|| RestartTracker::new(shared.limits.restart))
            .on_failure(now);
        let delay = decision.restart_at.saturating_sub(now);
        if decision.exhausted {
            tracing::error!(conversation = %id, ?delay, "conversation actor keeps failing; holding it back");
        } else {
            tracing::warn!(conversation = %id, ?delay, "conversation actor failed; restarting on next request");
        }
    }

    /// Runs a command on the conversation's actor and waits for its answer.
    /// A command that reaches an actor as it stops for idleness is sent again
    /// to its successor; nothing else is retried, so nothing runs twice.
    pub(crate) async fn call<T>(
        &self,
        shared: &Arc<Shared>,
        id: Uuid,
        command: impl Fn(Reply<T>) -> Command,
    ) -> Result<T, ActorError> {
        const ATTEMPTS_MAX: usize = 3;
        for _ in 0..ATTEMPTS_MAX {
            let mailbox = self.mailbox(shared, id).await?;
            let (reply, answer) = oneshot::channel();
            match mailbox.try_send(|permit| ConversationMsg::Command(command(reply), permit)) {
                Ok(()) => {}
                Err(MailboxError::Full) => {
                    shared
                        .metrics
                        .mailbox_full_total
                        .with_label_values(&["conversation"])
                        .inc();
                    return Err(ActorError::Overloaded(
                        "conversation is busy; retry shortly",
                    ));
                }
                Err(MailboxError::Closed) => {
                    self.retire(id, mailbox.actor().get_id());
                    continue;
                }
            }
            match tokio::time::timeout(shared.limits.call_timeout, answer).await {
                Ok(Ok(Outcome::Done(result))) => return result,
                Ok(Ok(Outcome::Closing)) => continue,
                Ok(Err(_)) => {
                    return Err(ActorError::Unavailable(
                        "conversation actor failed; retry shortly".into(),
                    ));
                }
                Err(_) => {
                    return Err(ActorError::Unavailable("conversation timed out".into()));
                }
            }
        }
        Err(ActorError::Unavailable(
            "conversation is restarting; retry shortly".into(),
        ))
    }

    /// Hands a note from the bus to the conversation's actor, starting it if
    /// needed. A note that does not fit is dropped and counted; the next
    /// event's gap check or the next catch-up delivers what it carried.
    pub(crate) async fn notify(&self, shared: &Arc<Shared>, id: Uuid, note: Note) -> bool {
        for _ in 0..3 {
            let Ok(mailbox) = self.mailbox(shared, id).await else {
                break;
            };
            match mailbox.try_send(|permit| ConversationMsg::Note(note.clone(), permit)) {
                Ok(()) => return true,
                Err(MailboxError::Full) => break,
                Err(MailboxError::Closed) => self.retire(id, mailbox.actor().get_id()),
            }
        }
        shared.metrics.bus_notes_dropped_total.inc();
        false
    }

    /// Stops every conversation actor after it finishes what it has queued.
    pub(crate) async fn drain(&self, timeout: Duration) {
        if let Some(supervisor) = self.supervisor.get() {
            supervisor.drain_children_and_wait(Some(timeout)).await;
        }
    }
}

pub(crate) struct ConversationArgs {
    id: Uuid,
    shared: Arc<Shared>,
}

/// The conversation's state as the actor caches it, loaded on first use.
#[derive(Debug)]
struct Loaded {
    kind: ConversationKind,
    /// Members and roles; kept in step with every membership event the actor
    /// commits.
    members: BTreeMap<Uuid, Role>,
    /// The newest `seq` committed.
    last_seq: i64,
    /// Who hears the next event: the members as of `audience_seq`, moved
    /// forward event by event as they are delivered. The snapshot above is
    /// as of the actor's load, which can be ahead of what this node has
    /// delivered; an older event goes to the members of its own time, not
    /// to those of the snapshot.
    audience: BTreeSet<Uuid>,
    /// The last event the audience reflects.
    audience_seq: i64,
}

/// The most events replayed to find who heard an older event; a node
/// further behind delivers to today's members.
const AUDIENCE_REPLAY_MAX: u32 = 10_000;

pub(crate) struct ConversationState {
    id: Uuid,
    shared: Arc<Shared>,
    loaded: Option<Loaded>,
    /// Monotonic time of the last command.
    last_active: Duration,
    /// Set once the actor decided to stop; commands are refused from then on.
    closing: bool,
    /// The idle-check timer, aborted on stop.
    timer: Option<JoinHandle<()>>,
    /// Sends taken and not yet committed, in the order they came; each
    /// keeps its mailbox slot until answered, so the mailbox bound holds.
    sends: Vec<PendingSend>,
    /// A `FlushSends` is on its way.
    flush_scheduled: bool,
}

/// A send's caller, from when the actor takes the send until it is
/// answered.
#[derive(Debug)]
struct Waiting {
    reply: Reply<(Message, bool)>,
    /// When the actor took it, for the commit-latency metric.
    started: Duration,
    /// Its mailbox slot, held until it is answered.
    _permit: Permit,
}

/// A send waiting for its batch.
#[derive(Debug)]
struct PendingSend {
    user: Uuid,
    input: SendMessage,
    attachment: Option<Box<Attachment>>,
    scheduled: Option<ScheduledClaim>,
    waiting: Waiting,
}

/// Answers sends that were taken but will not be committed here: their
/// callers send them again to the conversation's successor.
fn refuse_closing(sends: impl IntoIterator<Item = PendingSend>) {
    for send in sends {
        let _ = send.waiting.reply.send(Outcome::Closing);
    }
}

/// The conversation actor.
#[derive(Debug)]
pub(crate) struct ConversationActor;

impl Actor for ConversationActor {
    type Msg = ConversationMsg;
    type State = ConversationState;
    type Arguments = ConversationArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let period = args.shared.limits.conversation_idle_timeout / 2;
        let timer = myself.send_interval(period.max(Duration::from_millis(10)), || {
            ConversationMsg::IdleCheck
        });
        Ok(ConversationState {
            id: args.id,
            last_active: args.shared.clock.monotonic(),
            shared: args.shared,
            loaded: None,
            closing: false,
            timer: Some(timer),
            sends: Vec::new(),
            flush_scheduled: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        refuse_closing(state.sends.drain(..));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConversationMsg::IdleCheck => {
                let idle = state
                    .shared
                    .clock
                    .monotonic()
                    .saturating_sub(state.last_active);
                if !state.closing && idle >= state.shared.limits.conversation_idle_timeout {
                    state.close(&myself);
                }
            }
            ConversationMsg::Note(note, _permit) => {
                if state.closing {
                    // The successor takes it; nothing from the bus is lost
                    // to an idle stop.
                    let shared = Arc::clone(&state.shared);
                    shared.conversations.notify(&shared, state.id, note).await;
                    return Ok(());
                }
                state.last_active = state.shared.clock.monotonic();
                match state.load().await {
                    Ok(true) => match note {
                        Note::Remote(event) => state.accept(vec![event], false).await,
                        Note::CatchUp => state.catch_up().await,
                    },
                    Ok(false) => state.close(&myself),
                    Err(error) => tracing::warn!(%error, "cannot load conversation for a bus note"),
                }
            }
            ConversationMsg::FlushSends => {
                state.flush_scheduled = false;
                let sends = std::mem::take(&mut state.sends);
                if state.closing {
                    refuse_closing(sends);
                    return Ok(());
                }
                state.last_active = state.shared.clock.monotonic();
                match state.load().await {
                    Ok(true) => state.send_batch(sends).await,
                    Ok(false) => {
                        for send in sends {
                            answer(send.waiting.reply, Err(NOT_FOUND));
                        }
                        state.close(&myself);
                    }
                    Err(error) => {
                        for send in sends {
                            answer(send.waiting.reply, Err(error.clone()));
                        }
                    }
                }
            }
            ConversationMsg::Command(command, permit) => {
                if state.closing {
                    command.refuse();
                    return Ok(());
                }
                state.last_active = state.shared.clock.monotonic();
                match state.load().await {
                    Ok(true) => state.execute(command, permit, &myself).await,
                    Ok(false) => {
                        reply_all(command, ActorError::NotFound("conversation not found"));
                        state.close(&myself);
                    }
                    Err(error) => reply_all(command, error),
                }
            }
        }
        Ok(())
    }
}

fn reply_all(command: Command, error: ActorError) {
    match command {
        Command::Send { reply, .. } => drop(reply.send(Outcome::Done(Err(error)))),
        Command::Edit { reply, .. } => drop(reply.send(Outcome::Done(Err(error)))),
        Command::AddMember { reply, .. } => drop(reply.send(Outcome::Done(Err(error)))),
        Command::Delete { reply, .. }
        | Command::MarkRead { reply, .. }
        | Command::ChangeRole { reply, .. }
        | Command::RemoveMember { reply, .. } => drop(reply.send(Outcome::Done(Err(error)))),
    }
}

fn answer<T>(reply: Reply<T>, result: Result<T, ActorError>) {
    // The caller may have timed out and gone; the write stands either way.
    let _ = reply.send(Outcome::Done(result));
}

const NOT_FOUND: ActorError = ActorError::NotFound("conversation not found");
const MESSAGE_NOT_FOUND: ActorError = ActorError::NotFound("message not found");
const MEMBER_NOT_FOUND: ActorError = ActorError::NotFound("member not found");

impl ConversationState {
    /// Stops taking commands: leaves the registry so the next command starts
    /// a successor, and drains what is queued (each answered `Closing`).
    fn close(&mut self, myself: &ActorRef<ConversationMsg>) {
        self.closing = true;
        self.shared.conversations.retire(self.id, myself.get_id());
        if myself.drain().is_err() {
            myself.stop(None);
        }
    }

    /// Loads the conversation on first use; `false` if it does not exist.
    async fn load(&mut self) -> Result<bool, ActorError> {
        if self.loaded.is_some() {
            return Ok(true);
        }
        let Some(conversation) = self.shared.store.conversation(self.id).await? else {
            return Ok(false);
        };
        let members: BTreeMap<Uuid, Role> = conversation
            .members
            .iter()
            .map(|m| (m.user_id, m.role))
            .collect();
        let mut audience: BTreeSet<Uuid> = members.keys().copied().collect();
        let mut audience_seq = conversation.last_seq;
        // Where this node's deliveries stand behind the snapshot, walk the
        // membership back to that point.
        let delivered = self
            .shared
            .subscriptions
            .as_ref()
            .and_then(|s| s.delivered(self.id));
        if let Some(delivered) = delivered
            && delivered < conversation.last_seq
            && conversation.last_seq - delivered <= i64::from(AUDIENCE_REPLAY_MAX)
        {
            let since = self
                .shared
                .store
                .events(self.id, delivered, AUDIENCE_REPLAY_MAX)
                .await?;
            for event in since.iter().rev().filter(|e| e.seq() <= audience_seq) {
                match event {
                    Event::MemberJoined(e) => {
                        audience.remove(&e.user_id);
                    }
                    Event::MemberLeft(e) => {
                        audience.insert(e.user_id);
                    }
                    Event::ConversationCreated(_) => audience.clear(),
                    _ => {}
                }
            }
            audience_seq = delivered;
        }
        self.loaded = Some(Loaded {
            kind: conversation.kind,
            members,
            last_seq: conversation.last_seq,
            audience,
            audience_seq,
        });
        Ok(true)
    }

    fn loaded(&self) -> &Loaded {
        self.loaded.as_ref().expect("loaded before execute")
    }

    fn role(&self, user: Uuid) -> Result<Role, ActorError> {
        self.loaded().members.get(&user).copied().ok_or(NOT_FOUND)
    }

    /// Maps a store failure. A rejection means the cached members were stale
    /// (another node changed them), so they are reloaded.
    async fn store_error(&mut self, error: StoreError) -> ActorError {
        match error {
            StoreError::Rejected(Rejection::NotMember) => {
                self.loaded = None;
                let _ = self.load().await;
                NOT_FOUND
            }
            StoreError::Rejected(Rejection::NotPermitted) => {
                self.loaded = None;
                let _ = self.load().await;
                ActorError::Forbidden("not permitted")
            }
            StoreError::Rejected(Rejection::Deleted) => {
                ActorError::Conflict("message was deleted".into())
            }
            other => other.into(),
        }
    }

    async fn execute(
        &mut self,
        command: Command,
        permit: Permit,
        myself: &ActorRef<ConversationMsg>,
    ) {
        match command {
            Command::Send {
                user,
                input,
                attachment,
                scheduled,
                reply,
            } => {
                // A stranger is refused at once; a member's send waits for
                // the flush, with the others taken before it runs.
                if let Err(error) = self.role(user) {
                    answer(reply, Err(error));
                    return;
                }
                self.sends.push(PendingSend {
                    user,
                    input,
                    attachment,
                    scheduled,
                    waiting: Waiting {
                        reply,
                        started: self.shared.clock.monotonic(),
                        _permit: permit,
                    },
                });
                if !self.flush_scheduled {
                    self.flush_scheduled = myself.cast(ConversationMsg::FlushSends).is_ok();
                    if !self.flush_scheduled {
                        refuse_closing(self.sends.drain(..));
                    }
                }
            }
            Command::Edit {
                user,
                message_id,
                input,
                reply,
            } => {
                let result = self.edit(user, message_id, input).await;
                answer(reply, result);
            }
            Command::Delete {
                user,
                message_id,
                reply,
            } => {
                let result = self.delete(user, message_id).await;
                answer(reply, result);
            }
            Command::MarkRead { user, seq, reply } => {
                let result = self.mark_read(user, seq).await;
                answer(reply, result);
            }
            Command::AddMember {
                user,
                target,
                role,
                reply,
            } => {
                let result = self.add_member(user, target, role).await;
                answer(reply, result);
            }
            Command::ChangeRole {
                user,
                target,
                role,
                reply,
            } => {
                let result = self.change_role(user, target, role).await;
                answer(reply, result);
            }
            Command::RemoveMember {
                user,
                target,
                reply,
            } => {
                let result = self.remove_member(user, target).await;
                answer(reply, result);
            }
        }
    }

    /// Commits the sends taken since the last flush in one store call, in
    /// the order they came (so a conversation's concurrent sends share a
    /// group commit), then delivers and answers each in that order. The
    /// store re-checks each sender's membership in the transaction; a
    /// member removed meanwhile is refused there.
    async fn send_batch(&mut self, sends: Vec<PendingSend>) {
        if sends.is_empty() {
            return;
        }
        let at = self.shared.clock.now();
        // The inputs move into the commands; what answers each send (and
        // its mailbox slot) waits beside them.
        let mut commands = Vec::with_capacity(sends.len());
        let mut waiting = Vec::with_capacity(sends.len());
        for send in sends {
            commands.push(NewMessage {
                id: self.shared.new_id(),
                conversation_id: self.id,
                sender_id: send.user,
                encrypted_content: send.input.encrypted_content,
                nonce: send.input.nonce,
                message_type: send.input.message_type,
                idempotency_key: send.input.idempotency_key,
                attachment: send.attachment,
                scheduled: send.scheduled,
                at,
            });
            waiting.push(send.waiting);
        }
        let outcomes = self.shared.store.send_batch(commands).await;
        let committed_at = self.shared.clock.monotonic();
        let latency = &self.shared.metrics.message_delivery_latency_seconds;
        let (commit_latency, fanout_latency) = (
            latency.with_label_values(&["commit"]),
            latency.with_label_values(&["local_fanout"]),
        );
        for (send, outcome) in waiting.into_iter().zip(outcomes) {
            let result = match outcome {
                Ok(SendOutcome::Created(committed)) => {
                    commit_latency.observe(committed_at.saturating_sub(send.started).as_secs_f64());
                    let delivering = self.shared.clock.monotonic();
                    self.accept(committed.events, true).await;
                    fanout_latency.observe(
                        self.shared
                            .clock
                            .monotonic()
                            .saturating_sub(delivering)
                            .as_secs_f64(),
                    );
                    Ok((committed.value, true))
                }
                Ok(SendOutcome::Duplicate(message)) => Ok((message, false)),
                Err(error) => Err(self.store_error(error).await),
            };
            answer(send.reply, result);
        }
    }

    /// Reads a message of this conversation.
    async fn message(&self, message_id: Uuid) -> Result<Message, ActorError> {
        self.shared
            .store
            .message(message_id)
            .await?
            .filter(|m| m.conversation_id == self.id)
            .ok_or(MESSAGE_NOT_FOUND)
    }

    async fn edit(
        &mut self,
        user: Uuid,
        message_id: Uuid,
        input: EditMessage,
    ) -> Result<Message, ActorError> {
        self.role(user)?;
        let message = self.message(message_id).await?;
        if message.sender_id != user {
            return Err(ActorError::Forbidden("only the sender may edit a message"));
        }
        if message.deleted_at.is_some() {
            return Err(ActorError::Conflict("message was deleted".into()));
        }
        let result = self
            .shared
            .store
            .edit(StoreEdit {
                conversation_id: self.id,
                message_id,
                editor: user,
                encrypted_content: input.encrypted_content,
                nonce: input.nonce,
                at: self.shared.clock.now(),
            })
            .await;
        self.settle(result).await
    }

    async fn delete(&mut self, user: Uuid, message_id: Uuid) -> Result<(), ActorError> {
        let role = self.role(user)?;
        let message = self.message(message_id).await?;
        if message.sender_id != user && !role.moderates() {
            return Err(ActorError::Forbidden(
                "only the sender or a conversation admin may delete a message",
            ));
        }
        if message.deleted_at.is_some() {
            return Ok(());
        }
        let result = self
            .shared
            .store
            .delete(DeleteMessage {
                conversation_id: self.id,
                message_id,
                by: user,
                at: self.shared.clock.now(),
            })
            .await;
        match result {
            // Someone else deleted it first: the outcome the caller wanted.
            Err(StoreError::Rejected(Rejection::Deleted)) => Ok(()),
            other => self.settle(other).await.map(drop),
        }
    }

    async fn mark_read(&mut self, user: Uuid, seq: i64) -> Result<(), ActorError> {
        self.role(user)?;
        if seq < 1 {
            return Err(ActorError::Invalid("seq must be at least 1".into()));
        }
        if seq > self.loaded().last_seq {
            return Err(ActorError::Invalid(format!(
                "seq {seq} is beyond the conversation's last event {}",
                self.loaded().last_seq
            )));
        }
        let result = self
            .shared
            .store
            .mark_read(self.id, user, seq, self.shared.clock.now())
            .await;
        match result {
            Ok(Some(event)) => {
                self.accept(vec![event], true).await;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) => Err(self.store_error(error).await),
        }
    }

    fn moderator_of_group(&self, user: Uuid, denied: &'static str) -> Result<(), ActorError> {
        let role = self.role(user)?;
        if self.loaded().kind == ConversationKind::Direct {
            return Err(ActorError::Invalid(
                "a direct conversation's members cannot change".into(),
            ));
        }
        if !role.moderates() {
            return Err(ActorError::Forbidden(denied));
        }
        Ok(())
    }

    async fn add_member(
        &mut self,
        user: Uuid,
        target: Uuid,
        role: Role,
    ) -> Result<Member, ActorError> {
        self.moderator_of_group(user, "only the owner or an admin may add members")?;
        if role == Role::Owner {
            return Err(ActorError::Invalid(
                "a conversation has one owner; add as admin or member".into(),
            ));
        }
        if self.loaded().members.contains_key(&target) {
            return Err(ActorError::Conflict("already a member".into()));
        }
        if self.loaded().members.len() >= self.shared.limits.conversation_members_max {
            return Err(ActorError::Invalid(format!(
                "a conversation has at most {} members",
                self.shared.limits.conversation_members_max
            )));
        }
        let result = self
            .shared
            .store
            .add_member(self.id, user, target, role, self.shared.clock.now())
            .await;
        self.settle(result).await
    }

    async fn change_role(
        &mut self,
        user: Uuid,
        target: Uuid,
        role: Role,
    ) -> Result<(), ActorError> {
        self.moderator_of_group(user, "only the owner or an admin may change roles")?;
        let current = *self.loaded().members.get(&target).ok_or(MEMBER_NOT_FOUND)?;
        if role == Role::Owner {
            return Err(ActorError::Invalid(
                "ownership passes only when the owner leaves".into(),
            ));
        }
        if current == Role::Owner {
            return Err(ActorError::Forbidden("the owner's role cannot be changed"));
        }
        if current == role {
            return Ok(());
        }
        let result = self
            .shared
            .store
            .change_role(self.id, user, target, role, self.shared.clock.now())
            .await;
        self.settle(result).await
    }

    async fn remove_member(&mut self, user: Uuid, target: Uuid) -> Result<(), ActorError> {
        if user == target {
            self.role(user)?;
            if self.loaded().kind == ConversationKind::Direct {
                return Err(ActorError::Invalid(
                    "a direct conversation cannot be left".into(),
                ));
            }
        } else {
            self.moderator_of_group(user, "only the owner or an admin may remove members")?;
            let current = *self.loaded().members.get(&target).ok_or(MEMBER_NOT_FOUND)?;
            if current == Role::Owner {
                return Err(ActorError::Forbidden("the owner cannot be removed"));
            }
        }
        let result = self
            .shared
            .store
            .remove_member(self.id, user, target, self.shared.clock.now())
            .await;
        self.settle(result).await
    }

    /// Publishes a committed write's events and returns its value, or maps
    /// its failure.
    async fn settle<T>(
        &mut self,
        result: Result<Committed<T>, StoreError>,
    ) -> Result<T, ActorError> {
        match result {
            Ok(committed) => {
                self.accept(committed.events, true).await;
                Ok(committed.value)
            }
            Err(error) => Err(self.store_error(error).await),
        }
    }

    /// Delivers events to this node's members of the conversation, in `seq`
    /// order and each once: this node's own commits (`local`, which are also
    /// published to the bus) and other nodes' (from the bus). Where the
    /// node's watermark shows a gap, the store fills it first. Runs inside
    /// the handler, so one conversation's deliveries never interleave.
    async fn accept(&mut self, events: Vec<Event>, local: bool) {
        for event in events {
            let seq = event.seq();
            if local {
                self.shared
                    .metrics
                    .events_committed_total
                    .with_label_values(&[event.kind()])
                    .inc();
            }
            let mut skip = false;
            let shared = Arc::clone(&self.shared);
            if let Some(subscriptions) = &shared.subscriptions {
                // Before the watermark check: a conversation newly held for
                // a joining member starts right before the join.
                let joined = self.note_joins(&event);
                if !self.align(Some(seq)).await {
                    // Nothing is delivered here until it loads; the sweep
                    // comes back to it. Other nodes still hear of it.
                    if local && let Some(publishing) = &self.shared.publishing {
                        publishing.publish(&EncodedEvent::new(event));
                    }
                    continue;
                }
                if let Some(delivered) = subscriptions.delivered(self.id) {
                    skip = seq <= delivered;
                    // The node already delivered this join (to others)
                    // before it held the conversation for these members:
                    // their clients sync it.
                    if skip {
                        for user in &joined {
                            self.shared.hub.resync(*user, &[self.id]);
                        }
                    }
                    if seq > delivered + 1 && !self.fill(delivered, seq).await {
                        // Nothing past an unfilled gap is delivered here;
                        // the sweep comes back to it. Other nodes still
                        // hear of a commit of this node's.
                        if local && let Some(publishing) = &self.shared.publishing {
                            publishing.publish(&EncodedEvent::new(event));
                        }
                        continue;
                    }
                }
            }
            // Another node's event this node already delivered: nothing to
            // encode, deliver or publish.
            if skip && !local {
                continue;
            }
            let encoded = EncodedEvent::new(event);
            if !skip {
                self.deliver(&encoded);
            }
            if local && let Some(publishing) = &self.shared.publishing {
                publishing.publish(&encoded);
            }
        }
    }

    /// Members joining with `event` who are connected here now hold the
    /// conversation on this node. Idempotent; runs for every event
    /// delivered, whether it came live or filled a gap.
    fn note_joins(&self, event: &Event) -> Vec<Uuid> {
        let Some(subscriptions) = &self.shared.subscriptions else {
            return Vec::new();
        };
        let joining: Vec<Uuid> = match event {
            Event::MemberJoined(e) => vec![e.user_id],
            Event::ConversationCreated(e) => {
                e.conversation.members.iter().map(|m| m.user_id).collect()
            }
            _ => Vec::new(),
        };
        joining
            .into_iter()
            .filter(|user| subscriptions.joined(*user, self.id, event.seq()))
            .collect()
    }

    /// Makes the actor's snapshot match where this node's deliveries
    /// stand, before it delivers `next` (or catches up): behind them (the
    /// node let the conversation go and held it again from the store's
    /// position), its members are stale; ahead of them (the actor loaded
    /// before the node held the conversation), older events would go to
    /// today's members; and while the node does not hold the conversation
    /// no gap is filled, so an event past ones the actor never saw means
    /// its members may be stale. Any of these: load again. Returns whether
    /// the actor is loaded.
    async fn align(&mut self, next: Option<i64>) -> bool {
        let delivered = self
            .shared
            .subscriptions
            .as_ref()
            .and_then(|s| s.delivered(self.id));
        let mismatched = match (delivered, self.loaded.as_ref()) {
            (Some(delivered), Some(loaded)) => {
                loaded.last_seq < delivered
                    || (delivered < loaded.audience_seq
                        && loaded.audience_seq - delivered <= i64::from(AUDIENCE_REPLAY_MAX))
            }
            (None, Some(loaded)) => next.is_some_and(|seq| seq > loaded.last_seq + 1),
            (_, None) => false,
        };
        if mismatched {
            self.loaded = None;
        }
        if self.loaded.is_none()
            && let Err(error) = self.load().await
        {
            tracing::warn!(conversation = %self.id, %error, "cannot reload the conversation");
            return false;
        }
        true
    }

    /// Delivers what the store has after this node's watermark.
    async fn catch_up(&mut self) {
        if !self.align(None).await {
            return;
        }
        if let Some(delivered) = self
            .shared
            .subscriptions
            .as_ref()
            .and_then(|s| s.delivered(self.id))
        {
            let _ = self.fill(delivered, i64::MAX).await;
        }
    }

    /// Delivers the events strictly between `after` and `before`: from the
    /// bus's replay tail when it holds them without a hole, else from the
    /// store.
    /// Returns whether it got everything up to `before` (or, for an open
    /// end, to the end of the log): a fill that stopped short must not be
    /// followed by the event after the gap.
    async fn fill(&mut self, after: i64, before: i64) -> bool {
        const BATCH: i64 = 500;
        let mut cursor = after;
        while cursor.saturating_add(1) < before {
            let want = (before - cursor - 1).min(BATCH);
            let (batch, source) = match self.tail_from_stream(cursor, want).await {
                Some(batch) => (batch, "stream"),
                None => match self
                    .shared
                    .store
                    .events(self.id, cursor, u32::try_from(want).unwrap_or(500))
                    .await
                {
                    Ok(batch) => (batch, "store"),
                    Err(error) => {
                        tracing::warn!(conversation = %self.id, %error, "cannot fill a gap from the store");
                        return false;
                    }
                },
            };
            if batch.is_empty() {
                return before == i64::MAX;
            }
            self.shared
                .metrics
                .gap_filled_events_total
                .with_label_values(&[source])
                .inc_by(batch.len() as u64);
            for event in batch {
                cursor = event.seq();
                self.deliver(&EncodedEvent::new(event));
            }
        }
        true
    }

    /// Up to `want` events after `after` from the bus's replay tail, if it
    /// has them starting right after `after` and without a hole. Skipped
    /// while publishing to the bus fails, so a Redis outage never slows the
    /// actor down.
    async fn tail_from_stream(&self, after: i64, want: i64) -> Option<Vec<Event>> {
        let bus = self.shared.bus.as_ref()?;
        let healthy = self
            .shared
            .publishing
            .as_ref()
            .is_some_and(Publishing::is_healthy);
        if !healthy {
            return None;
        }
        let limit = usize::try_from(want).ok()?;
        let tail = tokio::time::timeout(
            std::time::Duration::from_millis(250),
            bus.tail(self.id, after, limit),
        )
        .await
        .ok()?
        .ok()?;
        let contiguous = tail
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq() == after + 1 + i as i64 && e.conversation_id() == self.id);
        (!tail.is_empty() && contiguous).then_some(tail)
    }

    /// Applies one event to the cached state and hands it to the members it
    /// concerns on this node; moves the watermark.
    fn deliver(&mut self, encoded: &Arc<EncodedEvent>) {
        let event = &encoded.event;
        // Again at delivery, in `seq` order: `accept` notes a join before
        // its watermark check, but a gap filled since may have delivered
        // the same member's departure.
        let _ = self.note_joins(event);
        let seq = event.seq();
        let loaded = self.loaded.as_mut().expect("loaded before delivery");
        loaded.last_seq = loaded.last_seq.max(seq);
        // The audience moves with each event in order; past events this
        // actor never saw, today's members are the best it knows.
        let in_order = seq == loaded.audience_seq + 1;
        let mut departed = None;
        match event {
            Event::MemberJoined(e) => {
                loaded.members.insert(e.user_id, e.role);
                if in_order {
                    loaded.audience.insert(e.user_id);
                }
            }
            Event::MemberRoleChanged(e) => {
                loaded.members.insert(e.user_id, e.role);
            }
            Event::MemberLeft(e) => {
                loaded.members.remove(&e.user_id);
                if in_order {
                    loaded.audience.remove(&e.user_id);
                }
                // The member who left hears of it too.
                departed = Some(e.user_id);
            }
            Event::ConversationCreated(e) if in_order => {
                loaded.audience = e.conversation.members.iter().map(|m| m.user_id).collect();
            }
            _ => {}
        }
        if in_order {
            loaded.audience_seq = seq;
        } else if seq > loaded.audience_seq {
            loaded.audience = loaded.members.keys().copied().collect();
            loaded.audience_seq = seq;
        }
        // The departed member is no longer a key, so nobody is named twice.
        let recipients = loaded.audience.iter().chain(departed.as_ref());
        match &self.shared.subscriptions {
            // With other nodes, a member connected here gets the
            // conversation's events only once this node holds it for them:
            // a commit here can overtake the bus's news of their joining,
            // and the join's arrival catches them up in order.
            Some(subscriptions) => {
                let holding = subscriptions.holders(recipients, self.id);
                self.shared.hub.deliver(&holding, encoded);
            }
            None => self.shared.hub.deliver(recipients, encoded),
        }
        if let Some(subscriptions) = &self.shared.subscriptions {
            subscriptions.advance(self.id, seq);
            if let Some(user) = departed {
                subscriptions.left(user, self.id);
            }
        }
    }
}

/// Supervises the node's conversation actors: forgets stopped ones and
/// records failures, so the next request restarts a failed conversation once
/// its backoff has passed.
#[derive(Debug)]
pub(crate) struct ConversationSupervisor;

impl Actor for ConversationSupervisor {
    type Msg = ();
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        shared: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(shared)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                shared.metrics.conversation_actor_failures_total.inc();
                tracing::error!(actor = %cell.get_id(), %error, "conversation actor failed");
                if let Some(id) = shared.conversations.forget(shared, cell.get_id()) {
                    shared.conversations.record_failure(shared, id);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                shared.conversations.forget(shared, cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}
