//! The connection actor: the server side of one client connection.
//!
//! It receives the events of every conversation its user belongs to from the
//! [`crate::hub::Hub`], writes their encoded frames into the connection's
//! bounded outbound queue, and answers the client's own frames. The transport
//! (a WebSocket in `switchboard-http`) drains that queue into the socket; the
//! actor never sees the socket itself.

use std::sync::Arc;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::Deserialize;
use switchboard_protocol::{Control, ErrorCode, ErrorDetail, Hello};
use tokio::sync::{Semaphore, mpsc, watch};
use uuid::Uuid;

use crate::hub::EncodedEvent;
use crate::mailbox::{Mailbox, MailboxError, Permit};
use crate::node::Shared;

/// Why the server closes a connection, as a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// WebSocket close code.
    pub code: u16,
    /// Short reason the client can log.
    pub reason: &'static str,
}

impl Close {
    /// The client did not read its events fast enough.
    pub const SLOW_CONSUMER: Self = Self {
        code: 4008,
        reason: "slow consumer: reconnect and catch up",
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

/// The actor's side of a connection: where frames go and how to close it.
#[derive(Debug, Clone)]
pub struct ConnectionLink {
    /// Encoded frames, bounded.
    frames: mpsc::Sender<Bytes>,
    /// Out-of-band close, never blocked by a full frame queue.
    close: CloseSender,
}

/// The transport's side of a connection.
#[derive(Debug)]
pub struct LinkReceivers {
    /// Frames to write, in order.
    pub frames: mpsc::Receiver<Bytes>,
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
            },
            LinkReceivers {
                frames: frames_rx,
                close: close_rx,
            },
        )
    }

    fn send(&self, frame: Bytes) -> bool {
        match self.frames.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close.close(Close::SLOW_CONSUMER);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub(crate) fn closer(&self) -> CloseSender {
        self.close.clone()
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
/// the connection actor.
#[derive(Debug)]
pub struct Connection {
    /// The session this connection opened with.
    session_id: Uuid,
    /// The actor, behind its bounded mailbox.
    mailbox: Mailbox<ConnectionMsg>,
}

impl Connection {
    pub(crate) fn new(session_id: Uuid, mailbox: Mailbox<ConnectionMsg>) -> Self {
        Self {
            session_id,
            mailbox,
        }
    }

    /// The session id sent in `hello`.
    #[must_use]
    pub fn session_id(&self) -> Uuid {
        self.session_id
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
    /// An event for this connection's user.
    Event(Arc<EncodedEvent>, Permit),
    /// A text frame from the client.
    ClientFrame(String, Permit),
}

pub(crate) struct ConnectionArgs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) session_id: Uuid,
    pub(crate) link: ConnectionLink,
}

pub(crate) struct ConnectionState {
    shared: Arc<Shared>,
    link: ConnectionLink,
}

/// The connection actor.
#[derive(Debug)]
pub(crate) struct ConnectionActor;

/// Frames a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
enum ClientFrame {
    /// Application-level keep-alive for clients that cannot send WebSocket pings.
    Ping,
}

fn control(frame: &Control) -> Bytes {
    Bytes::from(serde_json::to_vec(frame).expect("control frames always encode"))
}

impl Actor for ConnectionActor {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // The hello goes out before the hub knows this connection, so it is
        // always the first frame.
        args.link.send(control(&Control::Hello(Hello {
            session_id: args.session_id,
            cursor: 0,
        })));
        Ok(ConnectionState {
            shared: args.shared,
            link: args.link,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.shared.connection_closed(myself.get_id(), None);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ConnectionMsg::Event(event, _permit) => {
                if !state.link.send(event.frame.clone()) {
                    myself.stop(Some("outbound queue full or closed".into()));
                }
            }
            ConnectionMsg::ClientFrame(text, _permit) => {
                let reply = match serde_json::from_str::<ClientFrame>(&text) {
                    Ok(ClientFrame::Ping) => control(&Control::Pong),
                    Err(error) => control(&Control::Error(ErrorDetail {
                        code: ErrorCode::BadRequest,
                        message: format!("unsupported frame: {error}"),
                    })),
                };
                if !state.link.send(reply) {
                    myself.stop(Some("outbound queue full or closed".into()));
                }
            }
        }
        Ok(())
    }
}

/// Supervises connection actors. A failed connection is not restarted (its
/// socket state is gone); its transport is closed so the client reconnects.
#[derive(Debug)]
pub(crate) struct ConnectionSupervisor;

impl Actor for ConnectionSupervisor {
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
                tracing::error!(actor = %cell.get_id(), %error, "connection actor failed");
                shared.connection_closed(cell.get_id(), Some(Close::INTERNAL));
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                shared.connection_closed(cell.get_id(), None);
            }
            _ => {}
        }
        Ok(())
    }
}

pub(crate) fn slots(len_max: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(len_max.max(1)))
}
