//! What the two live transports share: the per-address limit, device names,
//! and the `sync` endpoint for clients that cannot send frames.

use std::net::IpAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use switchboard_actors::Transport;
use switchboard_protocol::{Sync, Synced};
use uuid::Uuid;

use crate::extract::{AuthUser, Json, Path, authenticate, bearer};
use crate::peers::PeerTicket;
use crate::{ApiError, AppState, PeerAddr};

/// The longest device name a client may give.
const DEVICE_LEN_MAX: usize = 64;

/// Counts the connection against its address's limit: the peer's address,
/// or behind a proxy the last entry of the configured header. Without
/// either (a router served without connect info) nothing is counted.
pub(super) fn admit_peer(
    state: &AppState,
    parts: &Parts,
    transport: Transport,
) -> Result<Option<PeerTicket>, ApiError> {
    let Some(address) = client_address(state, &parts.headers, &parts.extensions) else {
        return Ok(None);
    };
    state.peers.admit(address).map(Some).inspect_err(|_| {
        state
            .node
            .metrics()
            .connection_refused(transport.label(), "ip")
    })
}

/// The client's address: the trusted proxy's header's last entry when one
/// is configured, else the peer's.
pub(crate) fn client_address(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    extensions: &axum::http::Extensions,
) -> Option<IpAddr> {
    let forwarded = state
        .client_ip_header
        .as_ref()
        .and_then(|name| headers.get_all(name).iter().next_back())
        .and_then(|value| value.to_str().ok())
        .and_then(|list| list.rsplit(',').next())
        .and_then(|last| last.trim().parse::<IpAddr>().ok());
    forwarded.or_else(|| {
        extensions
            .get::<ConnectInfo<PeerAddr>>()
            .map(|ConnectInfo(PeerAddr(address))| address.ip())
    })
}

/// The user of a live connection: from the bearer header, else from
/// `access_token` (browsers cannot set headers on a WebSocket or an
/// `EventSource`).
pub(super) async fn live_user(
    state: &AppState,
    parts: &Parts,
    access_token: Option<String>,
) -> Result<Uuid, ApiError> {
    let token = bearer(parts)
        .map(str::to_owned)
        .or(access_token)
        .ok_or_else(|| ApiError::unauthorized("missing bearer token or access_token"))?;
    authenticate(state, &token).await
}

/// Checks a client's device name: 1 to 64 visible ASCII characters.
pub(super) fn device_name(device: Option<String>) -> Result<Option<String>, ApiError> {
    match device {
        Some(name)
            if name.is_empty()
                || name.len() > DEVICE_LEN_MAX
                || !name.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Err(ApiError::unprocessable(format!(
                "device is 1 to {DEVICE_LEN_MAX} visible ASCII characters"
            )))
        }
        other => Ok(other),
    }
}

/// `POST /api/v1/sessions/{id}/sync`: catch a session up from the store.
/// The events go out on the session's stream, followed by `synced`, which
/// is also the answer.
pub(super) async fn sync(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(session_id): Path<Uuid>,
    Json(body): Json<Sync>,
) -> Result<axum::Json<Synced>, ApiError> {
    Ok(axum::Json(state.node.sync(user, session_id, body).await?))
}
