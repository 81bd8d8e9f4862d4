//! Messages, the event log and read positions.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use switchboard_protocol::{EditMessage, EventPage, MarkRead, Message, MessagePage, SendMessage};
use switchboard_storage::MessageRange;
use uuid::Uuid;

use crate::extract::{AuthUser, Json, Path, Query};
use crate::{ApiError, AppState, validate};

/// `POST /messages`: 201 with the stored message; 200 with the same message,
/// marked `Idempotent-Replayed: true`, when the idempotency key stored it
/// before.
pub(super) async fn send(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<SendMessage>,
) -> Result<Response, ApiError> {
    let limits = &state.limits;
    validate::ciphertext(
        "encrypted_content",
        &body.encrypted_content,
        limits.content_len_max,
    )?;
    validate::ciphertext("nonce", &body.nonce, limits.nonce_len_max)?;
    validate::message_type(&body.message_type)?;
    if switchboard_protocol::AttachmentKind::reserves(&body.message_type) {
        return Err(ApiError::unprocessable(format!(
            "a {} message carries an attachment: send it through \
             /conversations/{{id}}/messages/audio or /conversations/{{id}}/messages/attachment",
            body.message_type
        )));
    }
    if let Some(key) = &body.idempotency_key {
        validate::idempotency_key(key, limits)?;
    }
    Ok(super::created_or_replayed(
        state.node.send(user, body).await?,
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    after_seq: Option<i64>,
    before_seq: Option<i64>,
    limit: Option<u32>,
}

/// `GET /conversations/{id}/messages`: ascending by `seq`; the newest page
/// unless `after_seq` is given.
pub(super) async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<MessagePage>, ApiError> {
    let limit = validate::page_len(query.limit, 50, state.limits.page_len_max)?;
    if query.after_seq.is_some_and(|s| s < 0) || query.before_seq.is_some_and(|s| s < 1) {
        return Err(ApiError::unprocessable(
            "after_seq must be at least 0 and before_seq at least 1",
        ));
    }
    let range = MessageRange {
        after_seq: query.after_seq,
        before_seq: query.before_seq,
        limit,
    };
    let messages = state.node.messages(user, id, range).await?;
    Ok(axum::Json(MessagePage { messages }))
}

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    after_seq: Option<i64>,
    limit: Option<u32>,
}

/// `GET /conversations/{id}/events`: the log after `after_seq`, gap-free, for
/// catching up after a disconnect or polling without a socket.
pub(super) async fn events(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Query(query): Query<EventsQuery>,
) -> Result<axum::Json<EventPage>, ApiError> {
    let limit = validate::page_len(query.limit, 100, state.limits.events_page_len_max)?;
    let after_seq = query.after_seq.unwrap_or(0);
    if after_seq < 0 {
        return Err(ApiError::unprocessable("after_seq must be at least 0"));
    }
    let events = state.node.events(user, id, after_seq, limit).await?;
    Ok(axum::Json(EventPage { events }))
}

/// `PATCH /messages/{id}`: the sender replaces the content.
pub(super) async fn edit(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<EditMessage>,
) -> Result<axum::Json<Message>, ApiError> {
    validate::ciphertext(
        "encrypted_content",
        &body.encrypted_content,
        state.limits.content_len_max,
    )?;
    validate::ciphertext("nonce", &body.nonce, state.limits.nonce_len_max)?;
    Ok(axum::Json(state.node.edit(user, id, body).await?))
}

/// `DELETE /messages/{id}`: the sender, an admin or the owner leaves a tombstone.
pub(super) async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.node.delete(user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /conversations/{id}/read`.
pub(super) async fn mark_read(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<MarkRead>,
) -> Result<StatusCode, ApiError> {
    state.node.mark_read(user, id, body.seq).await?;
    Ok(StatusCode::NO_CONTENT)
}
