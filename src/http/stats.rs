//! `GET /stats` and `GET /healthz`.

use super::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;

pub async fn stats(State(state): State<AppState>) -> Json<crate::hub::Stats> {
    Json(state.hub.stats())
}

pub async fn healthz(State(state): State<AppState>) -> Response {
    if state.hub.is_closing() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "shutting down" }))).into_response()
    } else {
        Json(serde_json::json!({ "status": "ok", "store": state.hub.store().kind() })).into_response()
    }
}
