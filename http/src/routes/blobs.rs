//! The embedded blob store's URLs (`/api/v1/blobs/{key}`), served only when
//! the node keeps its blobs itself: a `PUT` or `GET` is authorized by the
//! URL's own signature, not by a bearer token, as a presigned S3 URL is.
//! A refused signature, an expired URL, or a body of another type or size
//! than signed answers 403 and stores nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use switchboard_protocol::ErrorCode;
use switchboard_storage::{BlobError, BlobServer};
use tokio::io::AsyncReadExt;

use crate::extract::Path;
use crate::{ApiError, AppState};

/// Bytes read from an object per chunk of a download.
const DOWNLOAD_CHUNK_LEN: usize = 64 * 1024;

fn server(state: &AppState) -> Result<&Arc<dyn BlobServer>, ApiError> {
    state
        .blob_server
        .as_ref()
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such endpoint"))
}

fn forbidden(reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, reason.to_string())
}

fn blob_error(error: BlobError) -> ApiError {
    match error {
        BlobError::Refused(reason) => forbidden(reason),
        BlobError::Unavailable(detail) => ApiError::internal(&detail),
    }
}

fn header_value(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `PUT /blobs/{key}?…&signature=`: stores the body, exactly as signed.
pub(super) async fn put(
    State(state): State<AppState>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let server = server(&state)?;
    let headers = request.headers();
    let content_type = header_value(headers, header::CONTENT_TYPE).map(str::to_owned);
    let length = header_value(headers, header::CONTENT_LENGTH).and_then(|l| l.parse().ok());
    server
        .check_put(
            &key,
            query.as_deref().unwrap_or(""),
            content_type.as_deref(),
            length,
        )
        .map_err(forbidden)?;
    let (Some(content_type), Some(length)) = (content_type, length) else {
        return Err(forbidden("the upload names no type or length"));
    };
    let mut upload = server
        .begin_put(&key, &content_type, length)
        .await
        .map_err(blob_error)?;
    let mut body = request.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| ApiError::unprocessable("the upload was cut off"))?;
        upload.write(&chunk).await.map_err(blob_error)?;
    }
    upload.finish().await.map_err(blob_error)?;
    Ok(StatusCode::OK)
}

/// `GET /blobs/{key}?expires=&signature=`: the object's bytes.
pub(super) async fn get(
    State(state): State<AppState>,
    Path(key): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let server = server(&state)?;
    server
        .check_get(&key, query.as_deref().unwrap_or(""))
        .map_err(forbidden)?;
    let read = server
        .open(&key)
        .await
        .map_err(blob_error)?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such object"))?;
    let chunks = futures_util::stream::unfold(read.body, |mut body| async move {
        let mut chunk = vec![0; DOWNLOAD_CHUNK_LEN];
        match body.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), body))
            }
            Err(error) => Some((Err(error), body)),
        }
    });
    let content_type = read
        .head
        .content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, read.head.size_bytes.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}
