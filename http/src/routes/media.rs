//! Voice messages and attachments: upload URLs, the messages that carry
//! them, downloads and deletions.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use switchboard_protocol::{SendAttachment, SendAudio, UploadRequest};
use uuid::Uuid;

use crate::extract::{AuthUser, Json, Path, Query};
use crate::{ApiError, AppState, validate};

/// `POST /conversations/{id}/messages/audio/presigned-url`: 200 with the
/// URL to `PUT` the voice note to, valid for `expiration` seconds.
pub(super) async fn presign_audio(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<UploadRequest>,
) -> Result<Response, ApiError> {
    let upload = state.node.presign_audio(user, id, body).await?;
    Ok((StatusCode::OK, axum::Json(upload)).into_response())
}

/// `POST /conversations/{id}/attachments`: 201 with the attachment's id and
/// the URL to `PUT` it to.
pub(super) async fn create_attachment(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<UploadRequest>,
) -> Result<Response, ApiError> {
    let upload = state.node.create_attachment(user, id, body).await?;
    Ok((StatusCode::CREATED, axum::Json(upload)).into_response())
}

/// Optional ciphertext beside an attachment: both or neither, each valid.
fn caption(
    state: &AppState,
    content: Option<&String>,
    nonce: Option<&String>,
    key: Option<&String>,
) -> Result<(), ApiError> {
    let limits = &state.limits;
    match (content, nonce) {
        (None, None) => {}
        (Some(content), Some(nonce)) => {
            validate::ciphertext("encrypted_content", content, limits.content_len_max)?;
            validate::ciphertext("nonce", nonce, limits.nonce_len_max)?;
        }
        _ => {
            return Err(ApiError::unprocessable(
                "encrypted_content and nonce come together",
            ));
        }
    }
    if let Some(key) = key {
        validate::idempotency_key(key, limits)?;
    }
    Ok(())
}

/// `POST /conversations/{id}/messages/audio`: sends the voice message
/// once its object is uploaded and matches what was presigned.
pub(super) async fn send_audio(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<SendAudio>,
) -> Result<Response, ApiError> {
    caption(
        &state,
        body.encrypted_content.as_ref(),
        body.nonce.as_ref(),
        body.idempotency_key.as_ref(),
    )?;
    Ok(super::created_or_replayed(
        state.node.send_audio(user, id, body).await?,
    ))
}

/// `POST /conversations/{id}/messages/attachment`: sends a message
/// carrying an uploaded attachment.
pub(super) async fn send_attachment(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<SendAttachment>,
) -> Result<Response, ApiError> {
    caption(
        &state,
        body.encrypted_content.as_ref(),
        body.nonce.as_ref(),
        body.idempotency_key.as_ref(),
    )?;
    Ok(super::created_or_replayed(
        state.node.send_attachment(user, id, body).await?,
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct DownloadQuery {
    /// `false` answers the URL as JSON instead of redirecting to it.
    redirect: Option<bool>,
}

/// `GET /attachments/{id}`: 302 to a short-lived download URL, or with
/// `?redirect=false` the URL as JSON.
pub(super) async fn download(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
    Query(query): Query<DownloadQuery>,
) -> Result<Response, ApiError> {
    let get = state.node.attachment_url(user, id).await?;
    redirect_to(&state, &get, &query)
}

/// A download URL as `GET /attachments/{id}` and `GET
/// /posts/{id}/attachment` answer it: 302 to it, or the URL as JSON.
pub(super) fn redirect_to(
    state: &AppState,
    get: &switchboard_storage::PresignedRequest,
    query: &DownloadQuery,
) -> Result<Response, ApiError> {
    let expires_in = state.node.limits().media.download_url_ttl.as_secs();
    if query.redirect == Some(false) {
        return Ok(axum::Json(json!({
            "url": get.url,
            "method": get.method,
            "expiration": expires_in,
        }))
        .into_response());
    }
    let location = HeaderValue::from_str(&get.url)
        .map_err(|_| ApiError::internal("the download URL is not a header value"))?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

/// `DELETE /attachments/{id}`: 204; its object is removed soon after.
pub(super) async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    state.node.delete_attachment(user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
