//! `GET /stats` and `GET /healthz`.

use super::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

pub async fn stats(State(state): State<AppState>) -> Json<crate::hub::Stats> {
    Json(state.hub.stats())
}

/// `200 {"status":"ok"}` when the node can take publishes; `503` while shutting down or, in a
/// cluster, while the bus is unreachable (the body says which, and the bus's last error).
pub async fn healthz(State(state): State<AppState>) -> Response {
    if state.hub.is_closing() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "shutting down" }))).into_response();
    }
    let Some(bus) = state.hub.bus() else {
        return Json(serde_json::json!({ "status": "ok", "store": state.hub.store().kind() })).into_response();
    };
    let bus_state = bus.state();
    let body = serde_json::json!({
        "status": if bus_state.connected() { "ok" } else { "bus unavailable" },
        "store": bus.kind(),
        "bus": { "kind": bus.kind(), "connected": bus_state.connected(), "last_error": bus_state.last_error() },
    });
    let code = if bus_state.connected() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}
