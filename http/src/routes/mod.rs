//! The router: every path the node serves.

mod blobs;
mod conversations;
mod live;
mod media;
mod messages;
mod ops;
mod scheduled;
mod sse;
mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post, put};
use tower_http::trace::TraceLayer;

use crate::{ApiError, AppState};

/// The whole HTTP surface over `state`.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/conversations",
            post(conversations::create).get(conversations::list),
        )
        .route("/conversations/{id}", get(conversations::get))
        .route(
            "/conversations/{id}/members",
            post(conversations::add_member),
        )
        .route(
            "/conversations/{id}/members/{user_id}",
            patch(conversations::change_role).delete(conversations::remove_member),
        )
        .route("/conversations/{id}/messages", get(messages::list))
        .route(
            "/conversations/{id}/messages/audio/presigned-url",
            post(media::presign_audio),
        )
        .route(
            "/conversations/{id}/messages/audio",
            post(media::send_audio),
        )
        .route(
            "/conversations/{id}/messages/attachment",
            post(media::send_attachment),
        )
        .route(
            "/conversations/{id}/attachments",
            post(media::create_attachment),
        )
        .route(
            "/attachments/{id}",
            get(media::download).delete(media::delete),
        )
        // Bounded by the signed size, not the JSON body limit.
        .route(
            "/blobs/{*key}",
            put(blobs::put)
                .get(blobs::get)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/conversations/{id}/scheduled-messages",
            post(scheduled::create),
        )
        .route("/scheduled-messages", get(scheduled::list))
        .route(
            "/scheduled-messages/{id}",
            patch(scheduled::edit).delete(scheduled::cancel),
        )
        .route("/conversations/{id}/events", get(messages::events))
        .route("/conversations/{id}/read", post(messages::mark_read))
        .route("/messages", post(messages::send))
        .route(
            "/messages/{id}",
            patch(messages::edit).delete(messages::delete),
        )
        .route("/ws", get(ws::upgrade))
        .route("/subscribe", get(sse::subscribe))
        .route("/sessions/{id}/sync", post(live::sync));
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(ops::metrics))
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(state.limits.body_len_max))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        switchboard_protocol::ErrorCode::NotFound,
        "no such endpoint",
    )
}
