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

fn health<E: std::fmt::Display>(result: &Result<(), E>) -> serde_json::Value {
    match result {
        Ok(()) => json!({ "ok": true }),
        Err(error) => json!({ "ok": false, "error": error.to_string() }),
    }
}

/// `GET /health/live`: the process answers.
pub(super) async fn live() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// `GET /health/ready`: whether this node should get traffic, with each
/// dependency's state. 503 while draining or when the database fails; Redis
/// being down is reported but keeps the node ready, since it only slows
/// delivery to other nodes (the database still has every message).
pub(super) async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let database = state.store.ping().await;
    let draining = state.is_draining();
    let ready = database.is_ok() && !draining;
    let mut dependencies = serde_json::Map::new();
    dependencies.insert("database".into(), health(&database));
    if let Some(bus) = &state.bus {
        let ping = tokio::time::timeout(std::time::Duration::from_secs(1), bus.ping())
            .await
            .unwrap_or_else(|_| {
                Err(switchboard_storage::BusError::Unavailable(
                    "ping timed out".into(),
                ))
            });
        let mut redis = health(&ping);
        redis["breakers"] = json!(state.node.breakers());
        dependencies.insert("redis".into(), redis);
    }
    let body = json!({
        "ready": ready,
        "draining": draining,
        "dependencies": dependencies,
        "connections": state.node.connection_count(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}
