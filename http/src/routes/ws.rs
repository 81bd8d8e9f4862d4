//! `GET /api/v1/ws`: the live event stream over a WebSocket.
//!
//! Authentication and the connection limits are checked before the upgrade,
//! so a refused client gets a JSON error with the right status. After the
//! upgrade one task writes the connection's frames to the socket, pings the
//! client, and reads the client's frames into the connection actor;
//! whichever side ends first ends both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prometheus::{Histogram, IntCounter};
use serde::Deserialize;
use switchboard_actors::{
    Close, ConnectRequest, Connection, ConnectionLink, LinkReceivers, ResumeAt, Transport,
};
use tokio::time::Instant;
use uuid::Uuid;

use super::live::{admit_peer, device_name, live_user};
use crate::extract::Query;
use crate::peers::PeerTicket;
use crate::{ApiError, AppState};

/// Bytes of frames the socket's write buffer gathers before writing them.
const WRITE_BUFFER_LEN: usize = 4 * 1024;
/// Queued frames the writer takes for one write at most.
const FRAMES_PER_WRITE_MAX: u32 = 64;

#[derive(Debug, Deserialize)]
pub(super) struct WsQuery {
    /// Browsers cannot set headers on a WebSocket, so the token may come here.
    access_token: Option<String>,
    /// The client's name for its device: one session per user and device.
    device: Option<String>,
    /// Resume this session at connect instead of with a `resume` frame.
    session_id: Option<Uuid>,
    /// The last cursor received, with `session_id`.
    cursor: Option<u64>,
}

pub(super) async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    parts: Parts,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let user = live_user(&state, &parts, query.access_token).await?;
    let device = device_name(query.device)?;
    let resume = match (query.session_id, query.cursor) {
        (Some(session_id), Some(cursor)) => Some(ResumeAt {
            session_id: Some(session_id),
            cursor,
        }),
        (None, None) => None,
        _ => {
            return Err(ApiError::unprocessable(
                "session_id and cursor come together",
            ));
        }
    };
    let peer = admit_peer(&state, &parts, Transport::WebSocket)?;
    let socket_task = SocketTask {
        ping_interval: state.limits.websocket_ping_interval,
        idle_timeout: state.limits.websocket_idle_timeout,
        close_write_timeout: state.limits.close_write_timeout,
        frames_per_write: state.metrics.websocket_frames_per_write.clone(),
        stale_closes: state.metrics.websocket_stale_closes_total.clone(),
    };
    let (link, receivers) = ConnectionLink::new(state.limits.websocket_outbound_len_max);
    let connection = state
        .node
        .connect(ConnectRequest {
            user,
            link,
            transport: Transport::WebSocket,
            device,
            resume,
        })
        .await?;
    // Clients send small frames (ping, resume, sync); a 1 KiB read buffer
    // (it grows for a larger frame) saves 3.5 KiB per idle connection over
    // 4 KiB, measured with `switchboard-bench connections`. The write
    // buffer gathers the frames the writer takes together (see `run`) and
    // goes to the socket once it holds `WRITE_BUFFER_LEN` bytes or on flush;
    // it keeps its capacity, so it is small too.
    Ok(upgrade
        .read_buffer_size(1024)
        .write_buffer_size(WRITE_BUFFER_LEN)
        .max_message_size(state.limits.websocket_frame_len_max)
        .max_frame_size(state.limits.websocket_frame_len_max)
        .on_upgrade(move |socket| {
            // Split before the task's future exists, so it holds the two
            // halves and not the moved-from socket besides.
            let (sink, stream) = socket.split();
            run(sink, stream, socket_task, connection, receivers, peer)
        }))
}

/// What the socket task takes from the app state. The task keeps its
/// arguments, and the upgrade closure's captures, for as long as the
/// connection lives, so it takes these rather than a clone of `AppState`.
struct SocketTask {
    ping_interval: Duration,
    idle_timeout: Duration,
    close_write_timeout: Duration,
    frames_per_write: Histogram,
    stale_closes: IntCounter,
}

// The transport's heartbeats and idle timeout run on real time.
#[allow(clippy::disallowed_methods)]
async fn run(
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    task: SocketTask,
    connection: Connection,
    receivers: LinkReceivers,
    peer: Option<PeerTicket>,
) {
    let LinkReceivers {
        mut frames,
        mut close,
    } = receivers;
    let frames_per_write = &task.frames_per_write;
    // The reader records when it last heard from the client (ms since
    // `opened`); the writer pings, and when the idle timer fires closes a
    // client silent that long, or sets the timer to the new deadline.
    let opened = Instant::now();
    let heard = AtomicU64::new(0);
    let writer = async {
        let mut ping = tokio::time::interval(task.ping_interval);
        ping.reset();
        let idle = tokio::time::sleep(task.idle_timeout);
        tokio::pin!(idle);
        let closing = loop {
            let message = tokio::select! {
                biased;
                changed = close.changed() => {
                    break if changed.is_ok() { *close.borrow() } else { None };
                }
                frame = frames.recv() => {
                    let Some(frame) = frame else { break None };
                    match text_message(frame) {
                        Ok(message) => message,
                        Err(close) => break Some(close),
                    }
                }
                _ = ping.tick() => Message::Ping(Default::default()),
                () = &mut idle => {
                    let deadline = opened
                        + Duration::from_millis(heard.load(Ordering::Relaxed))
                        + task.idle_timeout;
                    if deadline <= Instant::now() {
                        task.stale_closes.inc();
                        break Some(Close::STALE);
                    }
                    idle.as_mut().reset(deadline);
                    continue;
                }
            };
            // Frames queued behind this one go out in the same write: under
            // load one syscall (and one wake-up of the client) carries many
            // frames instead of one each.
            let write = async {
                sink.feed(message).await.map_err(|_| None)?;
                let mut count: u32 = 1;
                while count < FRAMES_PER_WRITE_MAX {
                    let Ok(frame) = frames.try_recv() else { break };
                    sink.feed(text_message(frame).map_err(Some)?)
                        .await
                        .map_err(|_| None)?;
                    count += 1;
                }
                frames_per_write.observe(f64::from(count));
                sink.flush().await.map_err(|_| None)
            };
            // A client that stops reading blocks this write; the close that
            // its full queue causes must still get through.
            tokio::select! {
                biased;
                changed = close.changed() => {
                    break if changed.is_ok() { *close.borrow() } else { None };
                }
                written = write => {
                    if let Err(closing) = written {
                        break closing;
                    }
                }
            }
        };
        if let Some(Close { code, reason }) = closing {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let _ = tokio::time::timeout(
                task.close_write_timeout,
                sink.send(Message::Close(Some(frame))),
            )
            .await;
        }
    };
    let reader = async {
        while let Some(Ok(message)) = stream.next().await {
            let since_opened = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            heard.store(since_opened, Ordering::Relaxed);
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
    // Dropping the handle stops the connection actor, which detaches it from
    // its session; the session keeps buffering for its grace period.
    drop(connection);
    drop(peer);
}

/// A queued frame as a text message; a frame that is not UTF-8 (frames are
/// encoded JSON, so a bug) closes the connection.
fn text_message(frame: switchboard_actors::Frame) -> Result<Message, Close> {
    Utf8Bytes::try_from(frame.json)
        .map(Message::Text)
        .map_err(|_| {
            tracing::error!("a frame that is not utf-8");
            Close::INTERNAL
        })
}
