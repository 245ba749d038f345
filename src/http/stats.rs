//! `GET /stats` and `GET /healthz`.

use super::ApiError;
use super::AppState;
use super::gate::Asker;
use crate::access::Checkpoint;
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// Channels listed per page unless `?limit=` says otherwise, and the most it may say.
const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;

/// `GET /stats?limit=&after=`: totals, and one page of channels in name order.
/// The hub's figures, and the sources' when there are any.
#[derive(serde::Serialize)]
pub struct StatsPage {
    #[serde(flatten)]
    hub: crate::hub::Stats,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sources: Vec<crate::sources::SourceReport>,
}

pub async fn stats(State(state): State<AppState>, RawQuery(raw): RawQuery, asker: Asker) -> Result<Json<StatsPage>, ApiError> {
    state.gate.stats(&asker.checkpoint, &asker.facts(b"")).await?;
    page(&state.hub, &state.sources, raw).map(Json)
}

/// The page `?limit=&after=` asks for (on the public listener, or on the debug one with
/// `debug.stats`).
pub fn page(hub: &crate::hub::Hub, sources: &crate::sources::Sources, raw: Option<String>) -> Result<StatsPage, ApiError> {
    let mut limit = DEFAULT_PAGE;
    let mut after = None;
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*key {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| ApiError::bad_request(format!("limit must be a number from 1 to {MAX_PAGE}, not `{value}`")))?
            }
            "after" => after = Some(value.into_owned()),
            other => return Err(ApiError::bad_request(format!("unknown query parameter `{other}` (limit, after)"))),
        }
    }
    Ok(StatsPage { hub: hub.stats(limit, after.as_deref()), sources: sources.reports() })
}

/// `200 {"status":"ok"}` when the node can take publishes; `503` while shutting down, while the
/// history store cannot be written (a full disk), or, in a cluster, while the bus is unreachable
/// (the body says which, and why), or while a source marked `required` is disconnected.
pub async fn healthz(State(state): State<AppState>, axum::Extension(checkpoint): axum::Extension<Checkpoint>) -> Response {
    // A liveness probe tells nothing about channels or events.
    checkpoint.public();
    readiness(&state.hub, &state.sources, Audience::Public)
}

/// Who reads a readiness answer: anyone (the public `/healthz`), or the operator (the debug
/// listener's `/readyz`). The store's own words (an engine message, a path) are the
/// operator's only.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Public,
    Operator,
}

/// What the public `/healthz` says of a store that cannot be written.
const STORE_NOT_WRITABLE: &str = "history store not writable (the server log, and /readyz on the debug listener, say why)";

/// Whether the node can take publishes, and if not why (`/healthz` on the public listener,
/// `/readyz` on the debug one).
pub fn readiness(hub: &crate::hub::Hub, sources: &crate::sources::Sources, audience: Audience) -> Response {
    if hub.is_closing() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "shutting down" }))).into_response();
    }
    // A required source that is down makes the node not ready, whatever else is fine.
    let down = sources.required_down();
    let with_sources = |code: StatusCode, mut body: serde_json::Value| {
        if down.is_empty() {
            return (code, Json(body)).into_response();
        }
        body["status"] = "source unavailable".into();
        body["sources_down"] = down.iter().map(|(name, error)| serde_json::json!({ "name": name, "last_error": error })).collect();
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    };
    let Some(bus) = hub.bus() else {
        let store = hub.store();
        return match store.problem() {
            None => with_sources(StatusCode::OK, serde_json::json!({ "status": "ok", "store": store.kind() })),
            Some(problem) => {
                let said = if audience == Audience::Operator { problem } else { STORE_NOT_WRITABLE.to_owned() };
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(serde_json::json!({ "status": "store unavailable", "store": store.kind(), "store_error": said })),
                )
                    .into_response()
            }
        };
    };
    let bus_state = bus.state();
    let body = serde_json::json!({
        "status": if bus_state.connected() { "ok" } else { "bus unavailable" },
        "store": bus.kind(),
        "bus": {
            "kind": bus.kind(),
            "connected": bus_state.connected(),
            "last_error": bus_state.last_error(),
            "unapplied": hub.unapplied(),
        },
    });
    if !bus_state.connected() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    with_sources(StatusCode::OK, body)
}
