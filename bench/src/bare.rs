//! The bare broadcast server: the ceiling `fanout` and `idle` are measured
//! against. It speaks the slice of Switchboard's API the benchmarks use,
//! over the same WebSocket stack (axum), with the same frames, but with no
//! actors, no sessions, no storage and no authentication beyond taking the
//! bearer token as the user id: a message is encoded once and its bytes
//! are handed to every member's connection, as fast as tokio allows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::ws::{Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::{
    ClientFrame, Control, Conversation, CreateConversation, Event, EventFrame, Hello, Member,
    Message, Role, SendMessage, ServerFrame, Synced,
};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Frames a connection may have queued before it is dropped, as in
/// Switchboard.
const QUEUE_LEN: usize = 256;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to listen.
    #[arg(long)]
    listen: SocketAddr,
}

#[derive(Debug)]
struct Room {
    members: Vec<Uuid>,
    seq: AtomicI64,
}

/// One connection's id and its outbound queue.
type Connection = (u64, mpsc::Sender<Utf8Bytes>);

#[derive(Debug, Default)]
struct Bare {
    rooms: RwLock<HashMap<Uuid, Arc<Room>>>,
    connections: RwLock<HashMap<Uuid, Vec<Connection>>>,
    next_connection: std::sync::atomic::AtomicU64,
}

pub(crate) async fn serve(args: &Args) -> anyhow::Result<()> {
    let state = Arc::new(Bare::default());
    let app = Router::new()
        .route("/health/ready", get(|| async { "ready" }))
        .route("/api/v1/conversations", post(create))
        .route("/api/v1/messages", post(send))
        .route("/api/v1/ws", get(connect))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn user(headers: &HeaderMap) -> Result<Uuid, StatusCode> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok()?.strip_prefix("Bearer ")?.parse().ok())
        .ok_or(StatusCode::UNAUTHORIZED)
}

async fn create(
    State(bare): State<Arc<Bare>>,
    headers: HeaderMap,
    Json(input): Json<CreateConversation>,
) -> Result<Response, StatusCode> {
    let creator = user(&headers)?;
    let id = Uuid::now_v7();
    let now = Utc::now();
    let mut members = vec![creator];
    members.extend(input.member_ids.iter().filter(|&&m| m != creator));
    let conversation = Conversation {
        id,
        kind: input.kind,
        title: input.title,
        members: members
            .iter()
            .map(|&user_id| Member {
                user_id,
                role: if user_id == creator {
                    Role::Owner
                } else {
                    Role::Member
                },
                joined_at: now,
                last_read_seq: 0,
            })
            .collect(),
        last_seq: 1,
        created_at: now,
        updated_at: now,
    };
    let room = Room {
        members,
        seq: AtomicI64::new(1),
    };
    bare.rooms
        .write()
        .expect("rooms lock")
        .insert(id, Arc::new(room));
    Ok((StatusCode::CREATED, Json(conversation)).into_response())
}

async fn send(
    State(bare): State<Arc<Bare>>,
    headers: HeaderMap,
    Json(input): Json<SendMessage>,
) -> Result<Response, StatusCode> {
    let sender = user(&headers)?;
    let room = bare
        .rooms
        .read()
        .expect("rooms lock")
        .get(&input.conversation_id)
        .cloned()
        .ok_or(StatusCode::NOT_FOUND)?;
    if !room.members.contains(&sender) {
        return Err(StatusCode::NOT_FOUND);
    }
    let message = Message {
        id: Uuid::now_v7(),
        conversation_id: input.conversation_id,
        seq: room.seq.fetch_add(1, Ordering::Relaxed) + 1,
        sender_id: sender,
        encrypted_content: input.encrypted_content,
        nonce: input.nonce,
        message_type: input.message_type,
        created_at: Utc::now(),
        edited_at: None,
        deleted_at: None,
        attachment: None,
    };
    // Encoded once; every recipient gets the same bytes.
    let frame = Utf8Bytes::from(
        serde_json::to_string(&EventFrame {
            event: Event::MessageNew(message.clone()),
            cursor: 0,
        })
        .expect("frames encode"),
    );
    {
        let connections = bare.connections.read().expect("connections lock");
        for member in &room.members {
            for (_, queue) in connections.get(member).into_iter().flatten() {
                // A full queue drops the frame, as a slow consumer would be
                // dropped; the benchmark counts what arrives.
                let _ = queue.try_send(frame.clone());
            }
        }
    }
    Ok((StatusCode::CREATED, Json(message)).into_response())
}

#[derive(Debug, serde::Deserialize)]
struct ConnectQuery {
    access_token: Uuid,
}

async fn connect(
    State(bare): State<Arc<Bare>>,
    Query(query): Query<ConnectQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade
        .read_buffer_size(1024)
        .on_upgrade(move |socket| live(bare, query.access_token, socket))
}

async fn live(bare: Arc<Bare>, user: Uuid, socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel(QUEUE_LEN);
    let id = bare.next_connection.fetch_add(1, Ordering::Relaxed);
    bare.connections
        .write()
        .expect("connections lock")
        .entry(user)
        .or_default()
        .push((id, tx));
    let (mut write, mut read) = socket.split();
    let hello = ServerFrame::Control(Control::Hello(Hello {
        session_id: Uuid::now_v7(),
        cursor: 0,
    }));
    let mut ok = write
        .send(WsMessage::Text(
            serde_json::to_string(&hello).expect("frames encode").into(),
        ))
        .await
        .is_ok();
    while ok {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => ok = write.send(WsMessage::Text(frame)).await.is_ok(),
                None => break,
            },
            incoming = read.next() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    let answer = match serde_json::from_str::<ClientFrame>(&text) {
                        Ok(ClientFrame::Sync(_)) => Control::Synced(Synced {
                            positions: std::collections::BTreeMap::new(),
                            incomplete: Vec::new(),
                            not_member: Vec::new(),
                        }),
                        Ok(ClientFrame::Ping) => Control::Pong,
                        _ => continue,
                    };
                    let answer = serde_json::to_string(&ServerFrame::Control(answer))
                        .expect("frames encode");
                    ok = write.send(WsMessage::Text(answer.into())).await.is_ok();
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    let mut connections = bare.connections.write().expect("connections lock");
    if let Some(list) = connections.get_mut(&user) {
        list.retain(|(other, _)| *other != id);
        if list.is_empty() {
            connections.remove(&user);
        }
    }
}
