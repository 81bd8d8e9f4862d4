//! Frames of the live event stream, over a WebSocket or as Server-Sent Events.
//!
//! Every server frame is `{"type","data"}`. An event frame also carries its
//! `cursor`, the event's position in the session's stream: a client that
//! reconnects resumes from the last cursor it saw. See `docs/protocol.md`.

use std::collections::BTreeMap;

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
    /// A `resume` succeeded: the events after `cursor` follow, then live ones.
    #[serde(rename = "resumed")]
    Resumed(Hello),
    /// A `resume` could not be served; the connection stays on the session
    /// its `hello` named, and the client catches up with `sync`.
    #[serde(rename = "resume_failed")]
    ResumeFailed(ResumeFailed),
    /// A `sync` is done: the events it asked for were sent before this frame.
    #[serde(rename = "synced")]
    Synced(Synced),
    /// The answer to a client's `{"type":"ping"}`.
    #[serde(rename = "pong")]
    Pong,
    /// A client frame the server could not act on.
    #[serde(rename = "error")]
    Error(ErrorDetail),
    /// The last frame of a Server-Sent Events stream the server ends (a
    /// WebSocket gets a close frame with the same code and reason instead).
    #[serde(rename = "close")]
    Close(CloseReason),
    /// One of the user's scheduled messages could not be sent (to the
    /// sender's sessions only; `GET /scheduled-messages` lists it too).
    #[serde(rename = "scheduled.failed")]
    ScheduledFailed(ScheduledFailed),
}

/// A scheduled message that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledFailed {
    /// The entry.
    pub id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// Why.
    pub reason: crate::ScheduledFailure,
}

/// Names a session and a position in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The session this connection delivers.
    pub session_id: Uuid,
    /// Events after this cursor follow.
    pub cursor: u64,
}

/// Why a session could not be resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumeRefusal {
    /// No such session here: it expired, or another node holds it.
    NotFound,
    /// The session no longer holds every event after the cursor.
    Overflowed,
    /// The cursor is ahead of the session.
    InvalidCursor,
}

/// The answer to a `resume` that could not be served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeFailed {
    /// The session the client asked for, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    /// Why it could not be resumed.
    pub reason: ResumeRefusal,
}

/// The answer to a `sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    /// Every conversation the user belongs to and the last `seq` sent to
    /// this session for it (its log position, for one the client did not
    /// list). A conversation missing from the client's own list is one it
    /// has not seen: fetch it over HTTP.
    pub positions: BTreeMap<Uuid, i64>,
    /// Listed conversations whose backlog was larger than one `sync` sends:
    /// their live events wait until the client syncs them again from the
    /// position given here.
    pub incomplete: Vec<Uuid>,
    /// Listed conversations the user does not belong to (any more).
    pub not_member: Vec<Uuid>,
}

/// Why the server ended a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseReason {
    /// The WebSocket close code: 1012 restart, 4008 slow consumer, 4009
    /// session taken by another connection, 4010 session ended.
    pub code: u16,
    /// For people.
    pub reason: String,
}

/// An event as the live stream carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFrame {
    /// `type` and `data`.
    #[serde(flatten)]
    pub event: Event,
    /// The event's position in the session's stream.
    pub cursor: u64,
}

/// Anything the server sends on the live stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerFrame {
    Event(EventFrame),
    Control(Control),
}

/// Frames a WebSocket client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Application-level keep-alive, answered with `pong`.
    Ping,
    /// Continue an earlier session from `cursor`; only as the first frame.
    Resume(Resume),
    /// Send every event after each position, then `synced`.
    Sync(Sync),
}

/// The body of a `resume` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The session from the earlier connection's `hello`.
    pub session_id: Uuid,
    /// The last cursor the client received.
    pub cursor: u64,
}

/// The body of a `sync` frame, and of `POST /api/v1/sessions/{id}/sync`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// The last `seq` the client holds, by conversation.
    #[serde(default)]
    pub positions: BTreeMap<Uuid, i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageRead;

    #[test]
    fn event_frames_round_trip_with_their_cursor() {
        let frame = EventFrame {
            event: Event::MessageRead(MessageRead {
                conversation_id: Uuid::nil(),
                seq: 4,
                user_id: Uuid::nil(),
                read_seq: 3,
            }),
            cursor: 9,
        };
        let text = serde_json::to_string(&frame).unwrap();
        assert!(
            text.starts_with(r#"{"type":"message.read","data":{"#),
            "{text}"
        );
        assert!(text.ends_with(r#","cursor":9}"#), "{text}");
        let back: ServerFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ServerFrame::Event(frame));
    }

    #[test]
    fn client_frames_have_the_documented_shape() {
        let resume: ClientFrame = serde_json::from_str(
            r#"{"type":"resume","data":{"session_id":"00000000-0000-0000-0000-000000000000","cursor":3}}"#,
        )
        .unwrap();
        assert_eq!(
            resume,
            ClientFrame::Resume(Resume {
                session_id: Uuid::nil(),
                cursor: 3
            })
        );
        let ping: ClientFrame = serde_json::from_str(r#"{"type":"ping"}"#).unwrap();
        assert_eq!(ping, ClientFrame::Ping);
        let sync: ClientFrame = serde_json::from_str(
            r#"{"type":"sync","data":{"positions":{"00000000-0000-0000-0000-000000000000":7}}}"#,
        )
        .unwrap();
        let ClientFrame::Sync(sync) = sync else {
            panic!("not a sync")
        };
        assert_eq!(sync.positions[&Uuid::nil()], 7);
    }

    #[test]
    fn a_control_frame_is_not_mistaken_for_an_event() {
        let text = serde_json::to_string(&Control::Pong).unwrap();
        let frame: ServerFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(frame, ServerFrame::Control(Control::Pong));
    }
}
