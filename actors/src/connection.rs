//! The connection actor: the server side of one client connection.
//!
//! A connection delivers one session (see [`crate::session`]): the session
//! writes event frames into the connection's bounded outbound queue, and the
//! connection actor answers the client's own frames: `ping`, `resume` (move
//! to an earlier session) and `sync`. The transport (a WebSocket or an SSE
//! response in `switchboard-http`) drains the queue into the socket; no actor
//! sees the socket itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use switchboard_protocol::{
    ClientFrame, Control, ErrorCode, ErrorDetail, ResumeFailed, ResumeRefusal,
};
use tokio::sync::{Semaphore, mpsc, watch};
use uuid::Uuid;

use crate::mailbox::{Mailbox, MailboxError, Permit};
use crate::node::Shared;
use crate::session::{Attach, SessionMsg, Start};
use crate::{ActorError, Metrics};

/// Why the server closes a connection, as a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// WebSocket close code.
    pub code: u16,
    /// Short reason the client can log.
    pub reason: &'static str,
}

impl Close {
    /// The client did not read its events fast enough; its session keeps
    /// buffering, so it reconnects and resumes.
    pub const SLOW_CONSUMER: Self = Self {
        code: 4008,
        reason: "slow consumer: reconnect and resume",
    };
    /// Another connection resumed this connection's session.
    pub const SESSION_TAKEN: Self = Self {
        code: 4009,
        reason: "session resumed by another connection",
    };
    /// The session ended (evicted, or it lost its place): reconnect and sync.
    pub const SESSION_ENDED: Self = Self {
        code: 4010,
        reason: "session ended: reconnect and sync",
    };
    /// The client answered nothing, not even a ping, for too long.
    pub const STALE: Self = Self {
        code: 4011,
        reason: "no answer to pings: reconnect and resume",
    };
    /// The node is shutting down; another node (or this one, restarted) will
    /// take the reconnect.
    pub const SHUTDOWN: Self = Self {
        code: 1012,
        reason: "server restarting: reconnect",
    };
    /// The connection's actor failed.
    pub const INTERNAL: Self = Self {
        code: 1011,
        reason: "internal error: reconnect",
    };
}

/// One frame for the client: UTF-8 JSON, with the event's cursor (for an
/// SSE `id:` line) when it is an event.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The event's position in its session; `None` for control frames.
    pub cursor: Option<u64>,
    /// The frame, `{"type","data"[,"cursor"]}`.
    pub json: Bytes,
}

/// Encodes a control frame.
pub(crate) fn control(frame: &Control) -> Frame {
    Frame {
        cursor: None,
        json: Bytes::from(serde_json::to_vec(frame).expect("control frames always encode")),
    }
}

/// Sets a connection's close reason once; later calls change nothing.
#[derive(Debug, Clone)]
pub(crate) struct CloseSender(Arc<watch::Sender<Option<Close>>>);

impl CloseSender {
    /// Returns whether this call was the one that closed it.
    pub(crate) fn close(&self, close: Close) -> bool {
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(close);
            true
        })
    }
}

/// The server's side of a connection: where frames go and how to close it.
#[derive(Debug, Clone)]
pub struct ConnectionLink {
    /// Frames, bounded.
    frames: mpsc::Sender<Frame>,
    /// Out-of-band close, never blocked by a full frame queue.
    close: CloseSender,
    /// Counts slow-consumer closes, once the node has the link.
    slow_consumers: Option<prometheus::IntCounter>,
}

/// The transport's side of a connection.
#[derive(Debug)]
pub struct LinkReceivers {
    /// Frames to write, in order.
    pub frames: mpsc::Receiver<Frame>,
    /// Becomes `Some` when the server wants the connection closed.
    pub close: watch::Receiver<Option<Close>>,
}

impl ConnectionLink {
    /// A link whose frame queue holds at most `frames_len_max` frames.
    #[must_use]
    pub fn new(frames_len_max: usize) -> (Self, LinkReceivers) {
        let (frames, frames_rx) = mpsc::channel(frames_len_max.max(1));
        let (close, close_rx) = watch::channel(None);
        (
            Self {
                frames,
                close: CloseSender(Arc::new(close)),
                slow_consumers: None,
            },
            LinkReceivers {
                frames: frames_rx,
                close: close_rx,
            },
        )
    }

    /// Queues `frame` without waiting; a full queue closes the connection as
    /// a slow consumer. Returns whether the frame was queued.
    pub(crate) fn send(&self, frame: Frame) -> bool {
        match self.frames.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.slow_consumer();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues `frame`, waiting up to `timeout` for room (a replay may be
    /// longer than the queue); a client that does not make room in time is
    /// closed as a slow consumer.
    pub(crate) async fn send_waiting(&self, frame: Frame, timeout: Duration) -> bool {
        match self.frames.send_timeout(frame, timeout).await {
            Ok(()) => true,
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                self.slow_consumer();
                false
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
        }
    }

    fn slow_consumer(&self) {
        if self.close.close(Close::SLOW_CONSUMER)
            && let Some(counter) = &self.slow_consumers
        {
            counter.inc();
        }
    }

    /// Counts this link's slow-consumer closes in `metrics`.
    pub(crate) fn observed(mut self, metrics: &Metrics) -> Self {
        self.slow_consumers = Some(metrics.slow_consumer_disconnects_total.clone());
        self
    }

    pub(crate) fn close(&self, close: Close) {
        self.close.close(close);
    }

    pub(crate) fn closer(&self) -> CloseSender {
        self.close.clone()
    }
}

/// The transport a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `GET /api/v1/ws`.
    WebSocket,
    /// `GET /api/v1/subscribe`.
    Sse,
}

impl Transport {
    /// Its name in metric labels.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
        }
    }
}

/// Open connections by user, against the node's limits.
#[derive(Debug)]
pub(crate) struct Sockets {
    /// Never held across an await.
    by_user: Mutex<(usize, BTreeMap<Uuid, usize>)>,
    connections_max: usize,
    connections_per_user_max: usize,
    metrics: Metrics,
}

/// One counted connection; dropping it releases the count.
#[derive(Debug)]
pub(crate) struct SocketTicket {
    sockets: Arc<Sockets>,
    user: Uuid,
    transport: Transport,
}

impl Sockets {
    pub(crate) fn new(
        connections_max: usize,
        connections_per_user_max: usize,
        metrics: Metrics,
    ) -> Self {
        Self {
            by_user: Mutex::default(),
            connections_max,
            connections_per_user_max,
            metrics,
        }
    }

    pub(crate) fn open(
        self: &Arc<Self>,
        user: Uuid,
        transport: Transport,
    ) -> Result<SocketTicket, ActorError> {
        let mut guard = self.by_user.lock().expect("sockets lock");
        let (total, by_user) = &mut *guard;
        let refused = |limit| self.metrics.connection_refused(transport.label(), limit);
        if *total >= self.connections_max {
            refused("node");
            return Err(ActorError::Overloaded(
                "this node has no room for more connections",
            ));
        }
        let count = by_user.entry(user).or_default();
        if *count >= self.connections_per_user_max {
            refused("user");
            return Err(ActorError::TooMany("too many connections for this user"));
        }
        *count += 1;
        *total += 1;
        self.gauge(transport).inc();
        Ok(SocketTicket {
            sockets: Arc::clone(self),
            user,
            transport,
        })
    }

    fn gauge(&self, transport: Transport) -> &prometheus::IntGauge {
        match transport {
            Transport::WebSocket => &self.metrics.websocket_active_connections,
            Transport::Sse => &self.metrics.sse_active_connections,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_user.lock().expect("sockets lock").0
    }
}

impl Drop for SocketTicket {
    fn drop(&mut self) {
        let mut guard = self.sockets.by_user.lock().expect("sockets lock");
        let (total, by_user) = &mut *guard;
        *total -= 1;
        if let Some(count) = by_user.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                by_user.remove(&self.user);
            }
        }
        self.sockets.gauge(self.transport).dec();
    }
}

/// Why a client frame was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientFrameError {
    /// The client sends faster than the server answers.
    #[error("too many frames in flight")]
    Overloaded,
    /// The connection is closing.
    #[error("connection closed")]
    Closed,
}

/// The handle a transport keeps for one open connection. Dropping it stops
/// the connection actor, which detaches it from its session.
#[derive(Debug)]
pub struct Connection {
    /// The session this connection opened on.
    session_id: Uuid,
    /// Set when a resume at connect was refused.
    refused: Option<ResumeRefusal>,
    /// The actor, behind its bounded mailbox.
    mailbox: Mailbox<ConnectionMsg>,
}

impl Connection {
    pub(crate) fn new(
        session_id: Uuid,
        refused: Option<ResumeRefusal>,
        mailbox: Mailbox<ConnectionMsg>,
    ) -> Self {
        Self {
            session_id,
            refused,
            mailbox,
        }
    }

    /// The session named in `hello`.
    #[must_use]
    pub fn session_id(&self) -> Uuid {
        self.session_id
    }

    /// Why the resume asked for at connect was refused, if it was.
    #[must_use]
    pub fn resume_refused(&self) -> Option<ResumeRefusal> {
        self.refused
    }

    /// Passes a text frame from the client to the actor.
    ///
    /// # Errors
    ///
    /// [`ClientFrameError::Overloaded`] when the client has too many frames
    /// waiting, [`ClientFrameError::Closed`] when the actor is gone.
    pub fn client_frame(&self, text: String) -> Result<(), ClientFrameError> {
        self.mailbox
            .try_send(|permit| ConnectionMsg::ClientFrame(text, permit))
            .map_err(|e| match e {
                MailboxError::Full => ClientFrameError::Overloaded,
                MailboxError::Closed => ClientFrameError::Closed,
            })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.mailbox.actor().stop(None);
    }
}

/// What a connection actor handles.
#[derive(Debug)]
pub(crate) enum ConnectionMsg {
    /// A text frame from the client.
    ClientFrame(String, Permit),
}

pub(crate) struct ConnectionArgs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) user: Uuid,
    pub(crate) link: ConnectionLink,
    pub(crate) link_id: u64,
    pub(crate) session: Mailbox<SessionMsg>,
    pub(crate) session_id: Uuid,
    /// Whether the session is new and holding for the first frame, so a
    /// `resume` may still move the connection to another one.
    pub(crate) may_resume: bool,
    pub(crate) ticket: SocketTicket,
}

pub(crate) struct ConnectionState {
    shared: Arc<Shared>,
    user: Uuid,
    link: ConnectionLink,
    link_id: u64,
    session: Mailbox<SessionMsg>,
    session_id: Uuid,
    may_resume: bool,
    _ticket: SocketTicket,
}

impl ConnectionState {
    fn reply(&self, frame: &Control) {
        self.link.send(control(frame));
    }

    fn refuse(&self, code: ErrorCode, message: impl Into<String>) {
        self.reply(&Control::Error(ErrorDetail {
            code,
            message: message.into(),
        }));
    }

    /// The first frame of a fresh session's connection, if not a resume,
    /// ends the session's hold.
    fn first_frame(&mut self) {
        if std::mem::take(&mut self.may_resume) {
            self.go_live();
        }
    }

    fn go_live(&self) {
        let _ = self
            .session
            .actor()
            .send_message(SessionMsg::GoLive(self.link_id));
    }

    async fn resume(&mut self, session_id: Uuid, cursor: u64) {
        if !std::mem::take(&mut self.may_resume) {
            self.refuse(
                ErrorCode::BadRequest,
                "resume is only accepted as the first frame",
            );
            return;
        }
        let target = self.shared.hub.session(self.user, session_id);
        if target
            .as_ref()
            .is_some_and(|t| t.actor().get_id() == self.session.actor().get_id())
        {
            // Its own session: nothing to move, just go live.
            self.go_live();
            return;
        }
        let attach = Attach {
            link: self.link.clone(),
            link_id: self.link_id,
            start: Start::Resume {
                cursor,
                by_frame: true,
            },
        };
        let refusal = match (self.shared.attach(target.as_ref(), attach).await, target) {
            (Ok(()), Some(target)) => {
                let _ = self
                    .session
                    .actor()
                    .send_message(SessionMsg::Release(self.link_id));
                self.session = target;
                self.session_id = session_id;
                None
            }
            (Err(refusal), _) => Some(refusal),
            (Ok(()), None) => Some(ResumeRefusal::NotFound),
        };
        if let Some(reason) = refusal {
            self.reply(&Control::ResumeFailed(ResumeFailed {
                session_id: Some(session_id),
                reason,
            }));
        }
    }

    fn sync(&mut self, positions: std::collections::BTreeMap<Uuid, i64>) {
        self.may_resume = false;
        if positions.len() > self.shared.limits.sessions.sync_conversations_max {
            self.refuse(
                ErrorCode::Unprocessable,
                format!(
                    "a sync lists at most {} conversations",
                    self.shared.limits.sessions.sync_conversations_max
                ),
            );
            return;
        }
        let sent = self.session.try_send(|permit| SessionMsg::Sync {
            positions,
            permit,
            reply: None,
        });
        if sent.is_err() {
            self.refuse(ErrorCode::Unavailable, "session busy: retry the sync");
        }
    }
}

/// The connection actor.
#[derive(Debug)]
pub(crate) struct ConnectionActor;

impl Actor for ConnectionActor {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ConnectionState {
            shared: args.shared,
            user: args.user,
            link: args.link,
            link_id: args.link_id,
            session: args.session,
            session_id: args.session_id,
            may_resume: args.may_resume,
            _ticket: args.ticket,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state
            .session
            .actor()
            .send_message(SessionMsg::Detach(state.link_id));
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ConnectionMsg::ClientFrame(text, _permit) = message;
        match serde_json::from_str::<ClientFrame>(&text) {
            Ok(ClientFrame::Ping) => {
                state.first_frame();
                state.reply(&Control::Pong);
            }
            Ok(ClientFrame::Resume(resume)) => {
                // Boxed: the task keeps this future's largest state for the
                // connection's life, and a resume is rare.
                Box::pin(state.resume(resume.session_id, resume.cursor)).await;
            }
            Ok(ClientFrame::Sync(sync)) => state.sync(sync.positions),
            Err(error) => {
                state.first_frame();
                state.refuse(ErrorCode::BadRequest, format!("unsupported frame: {error}"));
            }
        }
        Ok(())
    }
}

/// Supervises connection actors. A failed connection is not restarted (its
/// socket state is gone); its transport is closed so the client reconnects
/// and resumes.
#[derive(Debug)]
pub(crate) struct ConnectionSupervisor;

impl Actor for ConnectionSupervisor {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        (): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            tracing::error!(actor = %cell.get_id(), %error, "connection actor failed");
        }
        Ok(())
    }
}

pub(crate) fn slots(len_max: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(len_max.max(1)))
}
