//! The debug listener (`debug.listen`, `127.0.0.1:9139` by default, as oCIS's): for operators
//! and orchestrators, apart from the public listener and off its access rules.
//!
//! - `GET /healthz`: the process is alive and serving (200 whenever it answers).
//! - `GET /readyz`: the node can take publishes: what the public `/healthz` says (the store is
//!   writable, the bus and every required source connected), 503 with the reason otherwise.
//! - `GET /config`: the effective configuration as TOML, secrets redacted.
//! - `GET /metrics`: Prometheus text format (see `metrics.rs`).
//! - `GET /stats`: with `debug.stats`, the public `/stats` page moved here.
//!
//! With `debug.token` set, every request must carry `Authorization: Bearer <token>`: 401
//! without it, 403 with another (compared in constant time).

use crate::hub::Hub;
use crate::sources::Sources;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use std::sync::Arc;

#[derive(Clone)]
struct DebugState {
    hub: Arc<Hub>,
    sources: Arc<Sources>,
    token: Arc<str>,
}

pub fn router(hub: Arc<Hub>, sources: Arc<Sources>) -> Router {
    let token: Arc<str> = hub.config().debug.token.as_str().into();
    let with_stats = hub.config().debug.stats;
    let state = DebugState { hub, sources, token };
    let mut router = Router::new()
        .route("/healthz", get(alive))
        .route("/readyz", get(ready))
        .route("/config", get(config))
        .route("/metrics", get(metrics));
    if with_stats {
        router = router.route("/stats", get(stats));
    }
    router
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: /healthz, /readyz, /config, /metrics (and /stats with debug.stats)\n") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Serves the debug routes until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    sources: Arc<Sources>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, router(hub, sources)).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "the debug listener stopped");
    }
}

async fn authorize(State(state): State<DebugState>, request: Request, next: Next) -> Response {
    if state.token.is_empty() {
        return next.run(request).await;
    }
    let given = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => {
            (StatusCode::UNAUTHORIZED, [(http::header::WWW_AUTHENTICATE, "Bearer")], "debug.token: send Authorization: Bearer <token>\n")
                .into_response()
        }
        Some(token) if bool::from(subtle::ConstantTimeEq::ct_eq(token.as_bytes(), state.token.as_bytes())) => next.run(request).await,
        Some(_) => (StatusCode::FORBIDDEN, "debug.token: not this token\n").into_response(),
    }
}

async fn alive() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "alive" }))
}

async fn ready(State(state): State<DebugState>) -> Response {
    super::stats::readiness(&state.hub, &state.sources, super::stats::Audience::Operator)
}

async fn metrics(State(state): State<DebugState>) -> impl IntoResponse {
    // The exposition format's content type, version 0.0.4.
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], super::metrics::render(&state.hub, &state.sources))
}

/// `/stats` moved here by `debug.stats`: the same page, behind the debug token instead of the
/// public listener's access rules.
async fn stats(
    State(state): State<DebugState>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<axum::Json<super::stats::StatsPage>, super::ApiError> {
    super::stats::page(&state.hub, &state.sources, raw).map(axum::Json)
}

async fn config(State(state): State<DebugState>) -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], crate::config::redact::redacted_toml(state.hub.config()))
}
