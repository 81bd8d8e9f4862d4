//! `GET /api/v1/ws`: the live event stream over a WebSocket.
//!
//! Authentication and the connection limits are checked before the upgrade,
//! so a refused client gets a JSON error with the right status. After the
//! upgrade one task writes the connection actor's frames to the socket and
//! reads the client's frames into the actor; whichever side ends first ends
//! both.

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use switchboard_actors::{Close, Connection, ConnectionLink, LinkReceivers};

use crate::extract::{Query, authenticate, bearer};
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize)]
pub(super) struct WsQuery {
    /// Browsers cannot set headers on a WebSocket, so the token may come here.
    access_token: Option<String>,
}

pub(super) async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    parts: Parts,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let token = bearer(&parts)
        .map(str::to_owned)
        .or(query.access_token)
        .ok_or_else(|| ApiError::unauthorized("missing bearer token or access_token"))?;
    let user = authenticate(&state, &token)?;
    let (link, receivers) = ConnectionLink::new(state.limits.websocket_outbound_len_max);
    let connection = state.node.connect(user, link).await?;
    Ok(upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(state.limits.websocket_frame_len_max)
        .max_frame_size(state.limits.websocket_frame_len_max)
        .on_upgrade(move |socket| run(socket, connection, receivers)))
}

async fn run(socket: WebSocket, connection: Connection, receivers: LinkReceivers) {
    let (mut sink, mut stream) = socket.split();
    let LinkReceivers {
        mut frames,
        mut close,
    } = receivers;
    let writer = async {
        loop {
            tokio::select! {
                biased;
                changed = close.changed() => {
                    let reason = if changed.is_ok() { *close.borrow() } else { None };
                    if let Some(Close { code, reason }) = reason {
                        let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
                        let _ = sink.send(Message::Close(Some(frame))).await;
                    }
                    break;
                }
                frame = frames.recv() => {
                    let Some(frame) = frame else { break };
                    let Ok(text) = Utf8Bytes::try_from(frame) else {
                        tracing::error!("connection actor produced a frame that is not utf-8");
                        break;
                    };
                    if sink.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let reader = async {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) => {
                    if connection.client_frame(text.to_string()).is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
    // Dropping the handle stops the connection actor, which unregisters it.
    drop(connection);
}
