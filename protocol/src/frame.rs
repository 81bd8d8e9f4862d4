//! WebSocket frames. Every frame is `{"type","data"}`: either an [`Event`] or a
//! [`Control`] frame such as the `hello` that opens every connection.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{ErrorDetail, Event};

/// Frames that are not conversation events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Control {
    /// The first frame of every connection.
    #[serde(rename = "hello")]
    Hello(Hello),
    /// The answer to a client's `{"type":"ping"}`.
    #[serde(rename = "pong")]
    Pong,
    /// A client frame the server could not act on.
    #[serde(rename = "error")]
    Error(ErrorDetail),
}

/// Opens every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Identifies this connection's session.
    pub session_id: Uuid,
    /// The session's position; events after it follow.
    pub cursor: u64,
}

/// Anything the server sends over a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerFrame {
    Event(Event),
    Control(Control),
}
