//! `GET /api/v1/subscribe`: the live event stream as Server-Sent Events.
//!
//! Each event's `id:` is `{session_id}:{cursor}` and its `data:` the same
//! JSON frame a WebSocket gets, so a browser's `EventSource` resumes with
//! `Last-Event-ID` on its own, with no `device` or `session_id` in its URL
//! (a bare cursor is still taken, with `device` or `session_id`). The stream carries heartbeat comments; it
//! ends with a `close` event when the server ends it (shutdown, slow
//! consumer), and a client that vanishes is reaped when a write fails.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use switchboard_actors::{
    Close, ConnectRequest, Connection, ConnectionLink, LinkReceivers, ResumeAt, Transport,
};
use switchboard_protocol::{CloseReason, Control};
use uuid::Uuid;

use super::live::{admit_peer, device_name, live_user};
use crate::extract::Query;
use crate::peers::PeerTicket;
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
pub(super) struct SseQuery {
    /// `EventSource` cannot set headers, so the token may come here.
    access_token: Option<String>,
    /// The client's name for its device; an `EventSource` reconnecting to
    /// the same URL finds its session by it.
    device: Option<String>,
    /// The session to resume, when the client tracks it itself.
    session_id: Option<Uuid>,
    /// The last event id received (`{session_id}:{cursor}`, or a cursor),
    /// for clients that cannot set `Last-Event-ID`.
    last_event_id: Option<String>,
}

/// Parses an event id: `{session_id}:{cursor}`, or a bare cursor.
fn event_id(value: &str) -> Option<(Option<Uuid>, u64)> {
    let value = value.trim();
    match value.split_once(':') {
        Some((session, cursor)) => {
            Some((Some(Uuid::parse_str(session).ok()?), cursor.parse().ok()?))
        }
        None => Some((None, value.parse().ok()?)),
    }
}

pub(super) async fn subscribe(
    State(state): State<AppState>,
    Query(query): Query<SseQuery>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let user = live_user(&state, &parts, query.access_token).await?;
    let device = device_name(query.device)?;
    let last_event_id = match parts.headers.get("last-event-id") {
        Some(value) => Some(value.to_str().ok().and_then(event_id).ok_or_else(|| {
            ApiError::unprocessable("Last-Event-ID is not an event id of this stream")
        })?),
        None => match &query.last_event_id {
            Some(value) => Some(
                event_id(value)
                    .ok_or_else(|| ApiError::unprocessable("last_event_id is not an event id"))?,
            ),
            None => None,
        },
    };
    let resume = last_event_id.map(|(session, cursor)| ResumeAt {
        session_id: session.or(query.session_id),
        cursor,
    });
    let peer = admit_peer(&state, &parts, Transport::Sse)?;
    let (link, receivers) = ConnectionLink::new(state.limits.websocket_outbound_len_max);
    let connection = state
        .node
        .connect(ConnectRequest {
            user,
            link,
            transport: Transport::Sse,
            device,
            resume,
        })
        .await?;
    let stream = events(Open {
        receivers,
        session: connection.session_id(),
        connection,
        _peer: peer,
        done: false,
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(state.limits.sse_heartbeat_interval))
        .into_response();
    // Tells proxies such as nginx not to buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// What an open stream holds; dropping it (the client went away) stops the
/// connection actor and releases the address's slot.
struct Open {
    receivers: LinkReceivers,
    /// The session the stream is on, the first half of every event id.
    session: Uuid,
    connection: Connection,
    _peer: Option<PeerTicket>,
    done: bool,
}

fn events(open: Open) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(open, |mut open| async move {
        if open.done {
            return None;
        }
        let session = open.session;
        let event = tokio::select! {
            biased;
            changed = open.receivers.close.changed() => {
                open.done = true;
                let close = if changed.is_ok() { *open.receivers.close.borrow() } else { None };
                close.map(closing)
            }
            frame = open.receivers.frames.recv() => frame.map(|frame| {
                let data = String::from_utf8_lossy(&frame.json);
                let event = Event::default().data(data);
                match frame.cursor {
                    Some(cursor) => event.id(format!("{session}:{cursor}")),
                    None => event,
                }
            }),
        };
        let _ = &open.connection;
        event.map(|event| (Ok(event), open))
    })
}

/// The last event of a stream the server ends.
fn closing(close: Close) -> Event {
    let frame = Control::Close(CloseReason {
        code: close.code,
        reason: close.reason.to_owned(),
    });
    Event::default().data(serde_json::to_string(&frame).expect("control frames always encode"))
}
