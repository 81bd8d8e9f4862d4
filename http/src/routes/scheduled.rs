//! Scheduled messages: a member's messages to send later.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use switchboard_protocol::{EditScheduled, ScheduleMessage, ScheduledList, ScheduledMessage};
use uuid::Uuid;

use crate::extract::{AuthUser, Json, Path, Query};
use crate::{ApiError, AppState, validate};

/// `POST /conversations/{id}/scheduled-messages`: 201 with the pending
/// entry; 200 with the same entry, marked `Idempotent-Replayed: true`, when
/// its idempotency key stored it before.
pub(super) async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(conversation): Path<Uuid>,
    Json(body): Json<ScheduleMessage>,
) -> Result<Response, ApiError> {
    let limits = &state.limits;
    validate::ciphertext(
        "encrypted_content",
        &body.encrypted_content,
        limits.content_len_max,
    )?;
    validate::ciphertext("nonce", &body.nonce, limits.nonce_len_max)?;
    validate::message_type(&body.message_type)?;
    if let Some(key) = &body.idempotency_key {
        validate::idempotency_key(key, limits)?;
    }
    Ok(super::created_or_replayed(
        state.node.schedule(user, conversation, body).await?,
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    conversation_id: Option<Uuid>,
}

/// `GET /scheduled-messages`: the caller's pending entries and recent
/// failures, by time due.
pub(super) async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<ScheduledList>, ApiError> {
    let scheduled_messages = state
        .node
        .scheduled_messages(user, query.conversation_id)
        .await?;
    Ok(axum::Json(ScheduledList { scheduled_messages }))
}

/// `PATCH /scheduled-messages/{id}`: a new time, new content, or both,
/// while pending.
pub(super) async fn edit(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<EditScheduled>,
) -> Result<axum::Json<ScheduledMessage>, ApiError> {
    let limits = &state.limits;
    if let Some(content) = &body.encrypted_content {
        validate::ciphertext("encrypted_content", content, limits.content_len_max)?;
    }
    if let Some(nonce) = &body.nonce {
        validate::ciphertext("nonce", nonce, limits.nonce_len_max)?;
    }
    Ok(axum::Json(state.node.edit_scheduled(user, id, body).await?))
}

/// `DELETE /scheduled-messages/{id}`: cancels it while pending (204).
pub(super) async fn cancel(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.node.cancel_scheduled(user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
