//! The session actor: a client's place in the live stream, which outlives any
//! one connection.
//!
//! The hub hands a session every event of its user's conversations. The
//! session gives each a cursor, keeps the most recent ones in a bounded
//! buffer (count and bytes), and writes them to its connection when it has
//! one. When the connection drops, the session keeps buffering for a grace
//! period; a connection that resumes with a cursor the buffer still covers
//! gets the missed events and then the live ones, from this one actor, so
//! there is no window between replay and live delivery. When the buffer
//! cannot cover the gap, the client is told so and catches up with `sync`,
//! served from the store.
//!
//! Per conversation, the session remembers the last `seq` it sent, and never
//! sends that conversation an older or equal one again: a `sync` and live
//! delivery can overlap without duplicating anything.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use switchboard_protocol::{Control, Event, Hello, ResumeRefusal, Synced};
use switchboard_storage::EVENTS_OF_MAX;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::ActorError;
use crate::connection::{Close, ConnectionLink, Frame, control};
use crate::hub::EncodedEvent;
use crate::mailbox::Permit;
use crate::node::Shared;

/// Bounds and timings of sessions.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// How long a session without a connection keeps buffering.
    pub grace: Duration,
    /// Events a session keeps for a resume.
    pub buffer_len_max: usize,
    /// Bytes of encoded events a session keeps for a resume.
    pub buffer_bytes_max: usize,
    /// How long a new WebSocket session holds live events while it waits for
    /// the client's first frame (a `resume` or `sync` must come first).
    pub hold_timeout: Duration,
    /// Sessions, connected or not, on this node; past it the oldest
    /// unconnected session of the user is ended, else new ones are refused.
    pub sessions_max: usize,
    /// Sessions one user may hold on this node, likewise.
    pub sessions_per_user_max: usize,
    /// Events one `sync` sends; conversations past it are reported
    /// `incomplete` and synced again by the client.
    pub sync_events_max: usize,
    /// Conversations one `sync` may list.
    pub sync_conversations_max: usize,
    /// How long a replay waits for room in a connection's outbound queue
    /// before it treats the client as a slow consumer.
    pub replay_send_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(120),
            buffer_len_max: 2_048,
            buffer_bytes_max: 1024 * 1024,
            hold_timeout: Duration::from_secs(1),
            sessions_max: 100_000,
            sessions_per_user_max: 32,
            sync_events_max: 5_000,
            sync_conversations_max: 10_000,
            replay_send_timeout: Duration::from_secs(10),
        }
    }
}

/// How a connection starts on a session.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// The session's first connection: `hello`, then live events, held until
    /// the client's first frame when `hold` is set.
    Fresh { hold: bool },
    /// Continue after `cursor`: `hello` (resume at connect) or `resumed`
    /// (resume by frame), then the buffered events, then live ones.
    Resume { cursor: u64, by_frame: bool },
}

/// A connection asking to be the session's connection.
#[derive(Debug)]
pub(crate) struct Attach {
    pub(crate) link: ConnectionLink,
    pub(crate) link_id: u64,
    pub(crate) start: Start,
}

/// What a session actor handles.
#[derive(Debug)]
pub(crate) enum SessionMsg {
    /// An event for the session's user, from the hub.
    Event(Arc<EncodedEvent>, Permit),
    /// A connection takes the session over.
    Attach(Attach, oneshot::Sender<Result<(), ResumeRefusal>>),
    /// A connection ended.
    Detach(u64),
    /// A fresh session's connection ends its hold.
    GoLive(u64),
    /// A connection moved to another session (a `resume` succeeded): let it
    /// go without closing it, and end.
    Release(u64),
    /// Send the events after each position, then `synced`.
    Sync {
        positions: BTreeMap<Uuid, i64>,
        permit: Permit,
        reply: Option<oneshot::Sender<Result<Synced, ActorError>>>,
    },
    /// The user may have missed events of these conversations: have the
    /// client sync them.
    Resync(Vec<Uuid>, Permit),
    /// A frame for the attached connection, such as `scheduled.failed`.
    Tell(Control, Permit),
    /// The grace period that began with detach number `.0` is over.
    Expire(u64),
}

pub(crate) struct SessionArgs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: Uuid,
    pub(crate) user: Uuid,
    /// Where the user's conversations stood when the session began.
    pub(crate) positions: Vec<(Uuid, i64)>,
}

/// The connection currently attached.
#[derive(Debug)]
struct Attached {
    link: ConnectionLink,
    link_id: u64,
    /// Live events held until the client's first frame, not yet given a
    /// cursor; `None` once live.
    held: Option<VecDeque<Arc<EncodedEvent>>>,
}

pub(crate) struct SessionState {
    shared: Arc<Shared>,
    id: Uuid,
    user: Uuid,
    limits: SessionLimits,
    /// The last cursor given out.
    cursor: u64,
    /// The most recent events, by ascending cursor.
    buffer: VecDeque<(u64, Arc<EncodedEvent>)>,
    /// Encoded bytes in `buffer`.
    buffer_bytes: usize,
    /// The highest cursor evicted from the buffer (0: none).
    evicted: u64,
    /// The last `seq` sent, by conversation.
    sent: BTreeMap<Uuid, i64>,
    /// Conversations whose `sync` ran out of budget: their live events wait
    /// for the client's next `sync`.
    incomplete: BTreeSet<Uuid>,
    /// Conversations a `sync` found the user is not a member of, with the
    /// conversation's last `seq` then: events up to it (the user's own
    /// departure, old held ones) are not sent; a later one means the user
    /// is a member again (the node delivers only to members). At most one
    /// sync's list.
    departed: BTreeMap<Uuid, i64>,
    /// Whether the client must be told to sync the `incomplete`
    /// conversations (a gap was found, or it came back while some were).
    resync_owed: bool,
    attached: Option<Attached>,
    /// Counts detaches, so a stale grace timer is ignored.
    detaches: u64,
    /// The one pending timer (grace expiry or hold), replaced rather than
    /// stacked, so a client reconnecting in a loop cannot pile up timers.
    timer: Option<Timer>,
}

type Timer = tokio::task::JoinHandle<Result<(), ractor::MessagingErr<SessionMsg>>>;

/// Appends `,"cursor":N` to an encoded event; the JSON object's closing
/// brace is its last byte.
pub(crate) fn event_frame(cursor: u64, event: &EncodedEvent) -> Frame {
    let json = &event.frame;
    let mut out = Vec::with_capacity(json.len() + 32);
    out.extend_from_slice(&json[..json.len() - 1]);
    write!(out, ",\"cursor\":{cursor}}}").expect("writing to a Vec cannot fail");
    Frame {
        cursor: Some(cursor),
        json: Bytes::from(out),
    }
}

impl SessionState {
    /// Gives `event` the next cursor and buffers it, unless this
    /// conversation already had it; returns the cursor. The frame is built
    /// only by a caller that has a connection to write it to.
    fn admit(&mut self, event: &Arc<EncodedEvent>) -> Option<u64> {
        let conversation = event.event.conversation_id();
        let seq = event.event.seq();
        let metrics = &self.shared.metrics;
        if let Some(&until) = self.departed.get(&conversation) {
            if seq <= until {
                metrics
                    .session_events_skipped_total
                    .with_label_values(&["not_member"])
                    .inc();
                return None;
            }
            // A member again: the gap check below has the client sync it.
            self.departed.remove(&conversation);
        }
        if self.incomplete.contains(&conversation) {
            metrics
                .session_events_skipped_total
                .with_label_values(&["awaiting_sync"])
                .inc();
            return None;
        }
        if self
            .sent
            .get(&conversation)
            .is_some_and(|&sent| seq <= sent)
        {
            metrics
                .session_events_skipped_total
                .with_label_values(&["duplicate"])
                .inc();
            return None;
        }
        // An event past a gap is never sent: the conversation waits for the
        // client's sync, which fills the gap from the store. The user's own
        // join may follow a gap (what came between was not theirs), and it
        // or the creation opens a conversation the session has not seen.
        let opens = match &event.event {
            Event::MemberJoined(joined) => joined.user_id == self.user,
            Event::ConversationCreated(_) => true,
            _ => false,
        };
        let gap = match self.sent.get(&conversation) {
            Some(&sent) => seq > sent + 1 && !opens,
            None => !opens,
        };
        if gap {
            metrics
                .session_events_skipped_total
                .with_label_values(&["gap"])
                .inc();
            self.incomplete.insert(conversation);
            self.resync_owed = true;
            return None;
        }
        self.sent.insert(conversation, seq);
        self.cursor += 1;
        self.buffer_bytes += event.frame.len();
        self.buffer.push_back((self.cursor, Arc::clone(event)));
        while self.buffer.len() > self.limits.buffer_len_max
            || self.buffer_bytes > self.limits.buffer_bytes_max
        {
            let Some((cursor, old)) = self.buffer.pop_front() else {
                break;
            };
            self.buffer_bytes -= old.frame.len();
            self.evicted = cursor;
            metrics.session_buffer_evicted_total.inc();
        }
        // The gauges move only when a peak rises, which is rare once
        // buffers have filled: one atomic read-modify-write each per event.
        let (events, bytes) = &self.shared.buffer_peak;
        if events.fetch_max(self.buffer.len(), Ordering::Relaxed) < self.buffer.len() {
            metrics
                .session_buffer_events_peak
                .set(i64::try_from(self.buffer.len()).unwrap_or(i64::MAX));
        }
        if bytes.fetch_max(self.buffer_bytes, Ordering::Relaxed) < self.buffer_bytes {
            metrics
                .session_buffer_bytes_peak
                .set(i64::try_from(self.buffer_bytes).unwrap_or(i64::MAX));
        }
        Some(self.cursor)
    }

    /// A live event: hold it, or admit it and write it without waiting.
    fn live(&mut self, myself: &ActorRef<SessionMsg>, event: Arc<EncodedEvent>) {
        if let Some(held) = self.attached.as_mut().and_then(|a| a.held.as_mut()) {
            if held.len() < self.limits.buffer_len_max {
                held.push_back(event);
                return;
            }
            // A client that neither resumes nor syncs while this much
            // arrives has lost its place; it starts over.
            tracing::warn!(session = %self.id, "held events overflowed before the first frame");
            myself.stop(Some("held events overflowed".into()));
            return;
        }
        let Some(cursor) = self.admit(&event) else {
            self.ask_resync();
            return;
        };
        if let Some(attached) = &self.attached
            && !attached.link.send(event_frame(cursor, &event))
        {
            self.detach(myself);
        }
    }

    /// Tells a live client which conversations to sync (`synced` with only
    /// `incomplete`), when it is owed that.
    fn ask_resync(&mut self) {
        if let Some(frame) = self.resync_frame()
            && let Some(attached) = &self.attached
        {
            attached.link.send(frame);
        }
    }

    /// As [`Self::ask_resync`], waiting for room in the client's queue (after
    /// a replay, which may just have filled it).
    async fn ask_resync_waiting(&mut self, myself: &ActorRef<SessionMsg>) {
        if let Some(frame) = self.resync_frame() {
            self.send_waiting(myself, frame).await;
        }
    }

    /// The `synced` that asks the client to sync the `incomplete`
    /// conversations, when it is owed one and can take it.
    fn resync_frame(&mut self) -> Option<Frame> {
        let attached = self.attached.as_ref()?;
        if !self.resync_owed || attached.held.is_some() || self.incomplete.is_empty() {
            return None;
        }
        self.resync_owed = false;
        // Where each stands here, for a client that no longer knows one (it
        // was told it had left, and it joined again): it syncs from there.
        let positions = self
            .incomplete
            .iter()
            .map(|c| (*c, self.sent.get(c).copied().unwrap_or(0)))
            .collect();
        Some(control(&Control::Synced(Synced {
            positions,
            incomplete: self.incomplete.iter().copied().collect(),
            not_member: Vec::new(),
        })))
    }

    /// Writes `frame`, waiting for room; detaches a client that stays full.
    async fn send_waiting(&mut self, myself: &ActorRef<SessionMsg>, frame: Frame) {
        let Some(attached) = &self.attached else {
            return;
        };
        if !attached
            .link
            .send_waiting(frame, self.limits.replay_send_timeout)
            .await
        {
            self.detach(myself);
        }
    }

    /// Ends the hold: held events are admitted (the duplicates of a `sync`
    /// fall out here) and written.
    async fn go_live(&mut self, myself: &ActorRef<SessionMsg>) {
        let Some(held) = self.attached.as_mut().and_then(|a| a.held.take()) else {
            return;
        };
        for event in held {
            if let Some(cursor) = self.admit(&event) {
                self.send_waiting(myself, event_frame(cursor, &event)).await;
            }
        }
        self.ask_resync_waiting(myself).await;
    }

    /// Forgets the connection (already closed or closing) and starts the
    /// grace period.
    fn detach(&mut self, myself: &ActorRef<SessionMsg>) {
        let Some(attached) = self.attached.take() else {
            return;
        };
        for event in attached.held.into_iter().flatten() {
            self.admit(&event);
        }
        self.detaches += 1;
        let detaches = self.detaches;
        self.shared.hub.set_attached(self.id, None);
        self.arm(myself.send_after(self.limits.grace, move || SessionMsg::Expire(detaches)));
    }

    /// Makes `timer` the pending one, cancelling any other.
    fn arm(&mut self, timer: Timer) {
        if let Some(previous) = self.timer.replace(timer) {
            previous.abort();
        }
    }

    fn disarm(&mut self) {
        if let Some(previous) = self.timer.take() {
            previous.abort();
        }
    }

    /// Attaches a connection. The caller hears the outcome as soon as the
    /// greeting is queued, before the replay: a transport only starts
    /// draining its queue once its connect returns.
    async fn attach(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        attach: Attach,
        reply: oneshot::Sender<Result<(), ResumeRefusal>>,
    ) -> Result<(), ResumeRefusal> {
        let replay_from = match attach.start {
            Start::Resume { cursor, .. } if cursor > self.cursor => {
                let _ = reply.send(Err(ResumeRefusal::InvalidCursor));
                return Err(ResumeRefusal::InvalidCursor);
            }
            Start::Resume { cursor, .. } if cursor < self.evicted => {
                let _ = reply.send(Err(ResumeRefusal::Overflowed));
                return Err(ResumeRefusal::Overflowed);
            }
            Start::Resume { cursor, .. } => Some(cursor),
            Start::Fresh { .. } => None,
        };
        if let Some(previous) = self.attached.take() {
            previous.link.close(Close::SESSION_TAKEN);
            for event in previous.held.into_iter().flatten() {
                self.admit(&event);
            }
        }
        let hold = matches!(attach.start, Start::Fresh { hold: true });
        let greeting = Hello {
            session_id: self.id,
            cursor: replay_from.unwrap_or(self.cursor),
        };
        let greeting = match attach.start {
            Start::Resume { by_frame: true, .. } => Control::Resumed(greeting),
            _ => Control::Hello(greeting),
        };
        self.shared
            .hub
            .set_attached(self.id, Some(attach.link.closer()));
        self.attached = Some(Attached {
            link: attach.link,
            link_id: attach.link_id,
            held: hold.then(VecDeque::new),
        });
        self.send_waiting(myself, control(&greeting)).await;
        let _ = reply.send(Ok(()));
        if hold {
            let link_id = attach.link_id;
            self.arm(myself.send_after(self.limits.hold_timeout, move || {
                SessionMsg::GoLive(link_id)
            }));
        } else {
            // Attached: the grace period's expiry no longer applies.
            self.disarm();
        }
        if let Some(after) = replay_from {
            let start = self.buffer.partition_point(|(cursor, _)| *cursor <= after);
            let replay: Vec<Frame> = self
                .buffer
                .range(start..)
                .map(|(cursor, event)| event_frame(*cursor, event))
                .collect();
            self.shared
                .metrics
                .session_replayed_events_total
                .inc_by(replay.len() as u64);
            for frame in replay {
                self.send_waiting(myself, frame).await;
            }
            // Conversations still waiting for a sync: the client may not
            // have heard, or not have asked yet.
            self.resync_owed |= !self.incomplete.is_empty();
            self.ask_resync_waiting(myself).await;
        }
        Ok(())
    }

    /// Sends each listed conversation's events after its position from the
    /// store, within the sync budget, then `synced`; then ends any hold.
    async fn sync(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        positions: BTreeMap<Uuid, i64>,
    ) -> Result<Synced, ActorError> {
        let shared = Arc::clone(&self.shared);
        let store = shared.store.as_ref();
        let limit = u32::try_from(self.limits.sync_conversations_max).unwrap_or(u32::MAX);
        // Where every conversation the client or this session knows stands,
        // read *before* the membership: a conversation the user is not in
        // when the membership is read is skipped up to here and no
        // further, so a join committed after that read (whose seq is past
        // this one) still reaches the client. Read after, it would hide the
        // join, and the client would never hold the conversation again.
        let known: Vec<Uuid> = positions
            .keys()
            .chain(self.sent.keys())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let last_seqs: BTreeMap<Uuid, i64> = store.last_seqs(&known).await?.into_iter().collect();
        // A conversation that does not exist has nothing left to send.
        let until = |conversation: &Uuid| last_seqs.get(conversation).copied().unwrap_or(i64::MAX);
        let mine: BTreeMap<Uuid, i64> = store
            .positions_for(self.user, limit)
            .await?
            .into_iter()
            .collect();
        // Conversations this session sent from that the user has left, and
        // the client does not list: it may never have heard of them (it
        // synced late), or hold them and have asked about others only (a
        // sync of the incomplete ones). Either way they are reported gone,
        // as the listed ones are, so a client that holds one drops it, and
        // a join later opens it afresh rather than continuing past a gap.
        let forgotten: Vec<Uuid> = self
            .sent
            .keys()
            .filter(|c| !mine.contains_key(c) && !positions.contains_key(c))
            .copied()
            .collect();
        let mut not_member = Vec::new();
        for conversation in forgotten {
            self.sent.remove(&conversation);
            self.incomplete.remove(&conversation);
            self.departed.insert(conversation, until(&conversation));
            not_member.push(conversation);
        }
        let mut budget = self.limits.sync_events_max;
        let mut listed = Vec::new();
        for (&conversation, &position) in &positions {
            if !mine.contains_key(&conversation) {
                // The client drops it: from here only the user's join opens
                // it again, and anything else of it is past a gap. Events
                // up to `until` are the departed conversation's and are
                // skipped without asking the client to sync; one after it
                // (the user's own leave, committed after `until` was read)
                // has the client sync, which finds them gone again.
                not_member.push(conversation);
                self.sent.remove(&conversation);
                self.incomplete.remove(&conversation);
                self.departed.insert(conversation, until(&conversation));
                continue;
            }
            self.departed.remove(&conversation);
            self.incomplete.remove(&conversation);
            let after = position.max(0);
            self.sent.insert(conversation, after);
            listed.push((conversation, after));
        }
        // The listed conversations' events, a few hundred conversations per
        // query, by conversation and seq, until the budget is spent: the
        // conversation the budget ran out in, and those after it, wait for
        // the client's next sync.
        for chunk in listed.chunks(EVENTS_OF_MAX) {
            let asked = budget;
            let page = if asked == 0 {
                Vec::new()
            } else {
                let limit = u32::try_from(asked).unwrap_or(u32::MAX);
                store.events_of(chunk, limit).await?
            };
            let exhausted = page.len() >= asked;
            let last = page.last().map(Event::conversation_id);
            for event in page {
                budget -= 1;
                shared.metrics.sync_events_total.inc();
                let event = EncodedEvent::new(event);
                if let Some(cursor) = self.admit(&event) {
                    self.send_waiting(myself, event_frame(cursor, &event)).await;
                }
            }
            if exhausted {
                for (conversation, _) in chunk {
                    if last.is_none_or(|last| *conversation >= last) {
                        self.incomplete.insert(*conversation);
                    }
                }
            }
        }
        let positions = mine
            .iter()
            .map(|(&conversation, &last_seq)| {
                // A member again (the client hears so in `positions`).
                self.departed.remove(&conversation);
                let at = *self.sent.entry(conversation).or_insert_with(|| {
                    // Neither listed nor sent from here: the client may not
                    // know it, or hold it further back (it asked about
                    // others only, and this session forgot it while the user
                    // was away). Its live events wait for the client's sync,
                    // from wherever the client holds it, or from here.
                    self.incomplete.insert(conversation);
                    last_seq
                });
                (conversation, at)
            })
            .collect();
        // Every conversation still waiting for a sync, listed this time or
        // not (a gap found meanwhile, or one the client never knew of: it
        // syncs it from the position reported here).
        self.incomplete.retain(|c| mine.contains_key(c));
        self.resync_owed = false;
        let synced = Synced {
            positions,
            incomplete: self.incomplete.iter().copied().collect(),
            not_member,
        };
        self.send_waiting(myself, control(&Control::Synced(synced.clone())))
            .await;
        self.go_live(myself).await;
        Ok(synced)
    }
}

/// The session actor.
#[derive(Debug)]
pub(crate) struct SessionActor;

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let limits = args.shared.limits.sessions;
        Ok(SessionState {
            shared: args.shared,
            id: args.id,
            user: args.user,
            limits,
            cursor: 0,
            buffer: VecDeque::new(),
            buffer_bytes: 0,
            evicted: 0,
            sent: args.positions.into_iter().collect(),
            incomplete: BTreeSet::new(),
            departed: BTreeMap::new(),
            resync_owed: false,
            attached: None,
            detaches: 0,
            timer: None,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.disarm();
        state.shared.session_ended(state.id, Close::SESSION_ENDED);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The arms that wait are boxed: the task holds this future's
        // largest state for as long as the session lives, idle or not, and
        // these run once per attach or sync.
        match message {
            SessionMsg::Event(event, _permit) => state.live(&myself, event),
            SessionMsg::Tell(frame, _permit) => {
                if let Some(attached) = &state.attached {
                    attached.link.send(control(&frame));
                }
            }
            SessionMsg::Resync(conversations, _permit) => {
                state.incomplete.extend(conversations);
                state.resync_owed = true;
                state.ask_resync();
            }
            SessionMsg::Attach(attach, reply) => {
                let outcome = Box::pin(state.attach(&myself, attach, reply)).await;
                let label = match outcome {
                    Ok(()) => "attached",
                    Err(ResumeRefusal::Overflowed) => "overflowed",
                    Err(ResumeRefusal::InvalidCursor) => "invalid_cursor",
                    Err(ResumeRefusal::NotFound) => "not_found",
                };
                state
                    .shared
                    .metrics
                    .session_attaches_total
                    .with_label_values(&[label])
                    .inc();
                if outcome.is_err() {
                    // The client gave up on this session and syncs on a
                    // fresh one; nothing will resume it now.
                    myself.stop(Some("resume refused".into()));
                }
            }
            SessionMsg::Detach(link_id) => {
                if state
                    .attached
                    .as_ref()
                    .is_some_and(|a| a.link_id == link_id)
                {
                    state.detach(&myself);
                }
            }
            SessionMsg::GoLive(link_id) => {
                if state
                    .attached
                    .as_ref()
                    .is_some_and(|a| a.link_id == link_id)
                {
                    Box::pin(state.go_live(&myself)).await;
                }
            }
            SessionMsg::Release(link_id) => {
                if state
                    .attached
                    .as_ref()
                    .is_some_and(|a| a.link_id == link_id)
                {
                    // The link is the other session's now: not closed here.
                    state.attached = None;
                    state.shared.hub.set_attached(state.id, None);
                    myself.stop(Some("resumed elsewhere".into()));
                }
            }
            SessionMsg::Sync {
                positions,
                permit,
                reply,
            } => {
                let asked: Vec<Uuid> = positions.keys().copied().collect();
                let outcome = Box::pin(state.sync(&myself, positions)).await;
                drop(permit);
                if let Err(error) = &outcome {
                    tracing::warn!(session = %state.id, %error, "sync failed");
                    // Every conversation's live events wait for the retry,
                    // as if the sync had run out of budget: nothing
                    // overtakes a gap, and the client hears where the ones
                    // it did not list start only from a sync that succeeds.
                    let known: Vec<Uuid> = state.sent.keys().copied().collect();
                    state.incomplete.extend(asked);
                    state.incomplete.extend(known);
                    if let Some(attached) = &state.attached {
                        attached.link.send(control(&Control::Error(
                            switchboard_protocol::ErrorDetail {
                                code: switchboard_protocol::ErrorCode::Unavailable,
                                message: "sync failed: retry".into(),
                            },
                        )));
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            SessionMsg::Expire(detaches) => {
                if state.attached.is_none() && state.detaches == detaches {
                    state.shared.metrics.sessions_expired_total.inc();
                    myself.stop(Some("grace period over".into()));
                }
            }
        }
        Ok(())
    }
}

/// Supervises session actors. A failed session is not restarted: its buffer
/// is gone, so its connection is closed and the client resumes, is told the
/// session is unknown, and syncs.
#[derive(Debug)]
pub(crate) struct SessionSupervisor;

impl Actor for SessionSupervisor {
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
                tracing::error!(actor = %cell.get_id(), %error, "session actor failed");
                shared.session_failed(cell.get_id());
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                shared.session_failed(cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use switchboard_protocol::{Event, EventFrame, MessageRead};

    use super::*;

    #[test]
    fn a_frame_is_the_shared_encoding_with_its_cursor_appended() {
        let event = EncodedEvent::new(Event::MessageRead(MessageRead {
            conversation_id: Uuid::nil(),
            seq: 7,
            user_id: Uuid::nil(),
            read_seq: 6,
        }));
        let frame = event_frame(42, &event);
        assert_eq!(frame.cursor, Some(42));
        let parsed: EventFrame = serde_json::from_slice(&frame.json).unwrap();
        assert_eq!(parsed.cursor, 42);
        assert_eq!(parsed.event, event.event);
        assert!(
            frame
                .json
                .starts_with(&event.frame[..event.frame.len() - 1])
        );
    }
}
