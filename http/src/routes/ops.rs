//! Operational endpoints: metrics, liveness and readiness.

use std::time::Duration;

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

/// How long a readiness probe waits on each dependency.
const DEPENDENCY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health/live`: the process answers, and no supervised task has
/// spent its restart budget. A node with such a task cannot heal itself
/// (its supervisor has given up on it), so the orchestrator should restart
/// the process, as an Erlang supervisor escalates to its parent.
pub(super) async fn live(State(state): State<AppState>) -> impl IntoResponse {
    let failed = state.node.supervisor().failed();
    if failed.is_empty() {
        (StatusCode::OK, axum::Json(json!({ "status": "ok" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "failed", "failed_tasks": failed })),
        )
    }
}

/// `GET /health/ready`: whether this node should get traffic, with each
/// dependency's and each supervised task's state. 503 while draining, when
/// the database's writer path does not commit (SQLite's group committer is
/// asked, not a reader), or when a task has spent its restart budget.
/// Redis being down is reported but keeps the node ready, since it only
/// slows delivery to other nodes (the database still has every message);
/// so is the blob store, which only media needs.
pub(super) async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    // Every dependency is asked at once, so the probe takes the slowest
    // one's time (at most DEPENDENCY_PROBE_TIMEOUT), not their sum.
    let (database, bus, blobs, analytics) = tokio::join!(
        tokio::time::timeout(DEPENDENCY_PROBE_TIMEOUT, state.store.ping()),
        async {
            let bus = state.bus.as_ref()?;
            Some(tokio::time::timeout(DEPENDENCY_PROBE_TIMEOUT, bus.ping()).await)
        },
        async {
            let (blobs, _) = state.blobs.as_ref()?;
            Some(tokio::time::timeout(DEPENDENCY_PROBE_TIMEOUT, blobs.ping()).await)
        },
        tokio::time::timeout(DEPENDENCY_PROBE_TIMEOUT, state.node.ping_analytics()),
    );
    let database = database.unwrap_or_else(|_| {
        Err(switchboard_storage::StoreError::Backend(
            "the database did not answer in time".into(),
        ))
    });
    let draining = state.is_draining();
    let supervisor = state.node.supervisor();
    let failed = supervisor.failed();
    let ready = database.is_ok() && !draining && failed.is_empty();
    let mut dependencies = serde_json::Map::new();
    dependencies.insert("database".into(), health(&database));
    if let Some(ping) = bus {
        let ping = ping.unwrap_or_else(|_| {
            Err(switchboard_storage::BusError::Unavailable(
                "ping timed out".into(),
            ))
        });
        let mut redis = health(&ping);
        redis["breakers"] = json!(state.node.breakers());
        dependencies.insert("redis".into(), redis);
    }
    if let (Some(ping), Some((_, kind))) = (blobs, &state.blobs) {
        let ping = ping.unwrap_or_else(|_| {
            Err(switchboard_storage::BlobError::Unavailable(
                "ping timed out".into(),
            ))
        });
        // Reported, never a reason to leave the load balancer: only media
        // depends on it.
        let mut entry = health(&ping);
        entry["store"] = json!(kind);
        entry["breaker"] = json!(state.node.breakers().get("blobs"));
        dependencies.insert("blobs".into(), entry);
    }
    // Reported, never a reason to leave the load balancer: the feed falls
    // back to the cache and the database without it.
    let (ranking, breaker) = state.node.feed_ranking();
    let analytics = analytics.unwrap_or_else(|_| {
        Some(Err(switchboard_storage::AnalyticsError(
            "ping timed out".into(),
        )))
    });
    if let Some(ping) = analytics {
        let mut entry = health(&ping);
        entry["breaker"] = json!(breaker);
        dependencies.insert(ranking.into(), entry);
    } else {
        dependencies.insert(
            ranking.into(),
            json!({ "ok": breaker != "open", "breaker": breaker }),
        );
    }
    let tasks: serde_json::Map<String, serde_json::Value> = supervisor
        .tasks()
        .into_iter()
        .map(|t| {
            (
                t.name.to_owned(),
                json!({ "state": t.state.as_str(), "restarts": t.restarts }),
            )
        })
        .collect();
    let body = json!({
        "ready": ready,
        "draining": draining,
        "dependencies": dependencies,
        "tasks": tasks,
        "failed_tasks": failed,
        "connections": state.node.connection_count(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}
