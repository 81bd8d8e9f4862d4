//! Conversations and their members.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use switchboard_protocol::{
    AddMember, ChangeRole, Conversation, ConversationKind, ConversationList, CreateConversation,
    Member,
};
use uuid::Uuid;

use crate::extract::{AuthUser, Json, Path, Query};
use crate::{ApiError, AppState, validate};

/// `POST /conversations`: 201 with the new conversation, or 200 with the
/// direct conversation the two people already share.
pub(super) async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<CreateConversation>,
) -> Result<(StatusCode, axum::Json<Conversation>), ApiError> {
    if body.member_ids.len() > state.limits.create_members_max {
        return Err(ApiError::unprocessable(format!(
            "at most {} members may be listed",
            state.limits.create_members_max
        )));
    }
    if let Some(title) = &body.title
        && (title.chars().count() > state.limits.title_len_max || title.trim().is_empty())
    {
        return Err(ApiError::unprocessable(format!(
            "title must be 1 to {} characters",
            state.limits.title_len_max
        )));
    }
    if body.kind == ConversationKind::Direct && body.member_ids.contains(&user) {
        return Err(ApiError::unprocessable(
            "a direct conversation is with someone else",
        ));
    }
    let (conversation, created) = state.node.create_conversation(user, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(conversation)))
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    limit: Option<u32>,
}

/// `GET /conversations`: the caller's conversations, newest activity first.
pub(super) async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<ConversationList>, ApiError> {
    let limit = validate::page_len(query.limit, 50, state.limits.page_len_max)?;
    let conversations = state.node.conversations(user, limit).await?;
    Ok(axum::Json(ConversationList { conversations }))
}

/// `GET /conversations/{id}`: 404 unless the caller is a member.
pub(super) async fn get(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Conversation>, ApiError> {
    Ok(axum::Json(state.node.conversation(user, id).await?))
}

/// `POST /conversations/{id}/members`.
pub(super) async fn add_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<AddMember>,
) -> Result<(StatusCode, axum::Json<Member>), ApiError> {
    let member = state.node.add_member(user, id, body).await?;
    Ok((StatusCode::CREATED, axum::Json(member)))
}

/// `PATCH /conversations/{id}/members/{user_id}`.
pub(super) async fn change_role(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, target)): Path<(Uuid, Uuid)>,
    Json(body): Json<ChangeRole>,
) -> Result<axum::Json<Conversation>, ApiError> {
    state.node.change_role(user, id, target, body.role).await?;
    Ok(axum::Json(state.node.conversation(user, id).await?))
}

/// `DELETE /conversations/{id}/members/{user_id}`: removes a member, or lets
/// the caller leave.
pub(super) async fn remove_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((id, target)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    state.node.remove_member(user, id, target).await?;
    Ok(StatusCode::NO_CONTENT)
}
