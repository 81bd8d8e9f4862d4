//! The router: every path the node serves.

mod blobs;
mod conversations;
mod feed;
mod live;
mod media;
mod messages;
mod ops;
mod scheduled;
mod sse;
mod ws;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderName;
use axum::routing::{get, patch, post, put};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub(crate) use live::client_address;

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
        .route("/posts", post(feed::create))
        .route("/posts/attachments", post(feed::presign))
        .route("/posts/{id}", get(feed::get).delete(feed::delete))
        .route("/posts/{id}/attachment", get(feed::attachment))
        .route("/posts/{id}/like", put(feed::like).delete(feed::unlike))
        .route(
            "/users/{id}/follow",
            put(feed::follow).delete(feed::unfollow),
        )
        .route("/feed", get(feed::feed))
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
            crate::edge::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(state.limits.body_len_max))
        // Innermost first: the span reads the request id the layers outside
        // it accepted or made, and the response carries it back.
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_bad_request_id))
        .with_state(state)
}

/// 201 with what a request made, or 200 with `Idempotent-Replayed: true`
/// and what its idempotency key made before.
fn created_or_replayed<T: serde::Serialize>(
    (made, created): (T, bool),
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if created {
        return (axum::http::StatusCode::CREATED, axum::Json(made)).into_response();
    }
    let mut response = axum::Json(made).into_response();
    response.headers_mut().insert(
        HeaderName::from_static("idempotent-replayed"),
        axum::http::HeaderValue::from_static("true"),
    );
    response
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest `x-request-id` taken from a client.
const REQUEST_ID_LEN_MAX: usize = 128;

/// Removes a client's `x-request-id` that is too long or holds anything
/// but letters, digits and `-_.:`, so one is made instead: the id goes into
/// every log line of the request, and must not forge or break them.
async fn drop_bad_request_id(mut request: Request) -> Request {
    let fits = |value: &[u8]| {
        !value.is_empty()
            && value.len() <= REQUEST_ID_LEN_MAX
            && value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    };
    if let Some(value) = request.headers().get(&REQUEST_ID)
        && !fits(value.as_bytes())
    {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// The span every line of a request is logged in: method, path and request
/// id. Never the query, which carries `access_token` on WebSocket and SSE
/// requests, and never a header.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "http",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        switchboard_protocol::ErrorCode::NotFound,
        "no such endpoint",
    )
}
