//! The feed: posts, likes, follows, and the ranked feed.

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use switchboard_protocol::{CreatePost, Post, PresignedUpload, UploadRequest};
use uuid::Uuid;

use crate::extract::{AuthUser, Json, Path, Query};
use crate::{ApiError, AppState};

/// `POST /posts`: 201 with the post; 200 with the same post, marked
/// `Idempotent-Replayed: true`, when its idempotency key stored it before.
pub(super) async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<CreatePost>,
) -> Result<Response, ApiError> {
    if let Some(key) = &body.idempotency_key {
        crate::validate::idempotency_key(key, &state.limits)?;
    }
    Ok(super::created_or_replayed(
        state.node.create_post(user, body).await?,
    ))
}

/// `POST /posts/attachments`: 201 with a presigned upload of an image or
/// file to post.
pub(super) async fn presign(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<UploadRequest>,
) -> Result<(StatusCode, axum::Json<PresignedUpload>), ApiError> {
    let upload = state.node.presign_post_attachment(user, body).await?;
    Ok((StatusCode::CREATED, axum::Json(upload)))
}

/// `GET /posts/{id}/attachment`: 302 to a short-lived download URL, or
/// with `?redirect=false` the URL as JSON.
pub(super) async fn attachment(
    State(state): State<AppState>,
    AuthUser(_): AuthUser,
    Path(id): Path<Uuid>,
    Query(query): Query<super::media::DownloadQuery>,
) -> Result<Response, ApiError> {
    let get = state.node.post_attachment_url(id).await?;
    super::media::redirect_to(&state, &get, &query)
}

/// `GET /posts/{id}`.
pub(super) async fn get(
    State(state): State<AppState>,
    AuthUser(_): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Post>, ApiError> {
    Ok(axum::Json(state.node.post(id).await?))
}

/// `DELETE /posts/{id}`: the author's only (204).
pub(super) async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.node.delete_post(user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /posts/{id}/like`: 200 with the post; liking twice is one like.
pub(super) async fn like(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Post>, ApiError> {
    Ok(axum::Json(state.node.like(user, id).await?))
}

/// `DELETE /posts/{id}/like` (204, liked or not).
pub(super) async fn unlike(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.node.unlike(user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /users/{id}/follow` (204, following already or not).
pub(super) async fn follow(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.node.follow(user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /users/{id}/follow` (204, following or not).
pub(super) async fn unfollow(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.node.unfollow(user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub(super) struct FeedQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /feed`: a page, and where it came from in `source` and the
/// `Feed-Source` header.
pub(super) async fn feed(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(query): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    let page = state
        .node
        .feed(user, query.limit, query.cursor.as_deref())
        .await?;
    let source = HeaderValue::from_static(page.source.as_str());
    let mut response = axum::Json(page).into_response();
    response
        .headers_mut()
        .insert(HeaderName::from_static("feed-source"), source);
    Ok(response)
}
