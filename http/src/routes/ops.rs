//! Operational endpoints: metrics, liveness and readiness.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use crate::AppState;

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.node.metrics().encode(),
    )
}

/// `GET /health/live`: the process answers.
pub(super) async fn live() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// `GET /health/ready`: whether this node should get traffic, with each
/// dependency's state. 503 while draining or when the database fails.
pub(super) async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let database = state.store.ping().await;
    let draining = state.is_draining();
    let ready = database.is_ok() && !draining;
    let body = json!({
        "ready": ready,
        "draining": draining,
        "dependencies": {
            "database": match &database {
                Ok(()) => json!({ "ok": true }),
                Err(error) => json!({ "ok": false, "error": error.to_string() }),
            },
        },
        "connections": state.node.connection_count(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}
