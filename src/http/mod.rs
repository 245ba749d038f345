//! The HTTP face of the hub: routes, CORS, and the server that runs them.

mod conn;
pub mod cors;
mod debug;
mod error;
mod event_stream;
mod gate;
mod metrics;
mod publish;
mod requests;
mod rewind;
pub mod root;
pub mod server;
mod socket;
mod stats;
mod subscribe;
mod tls;

pub use error::ApiError;

use crate::access::{Checkpoint, Gate};
use crate::config::ConfigError;
use crate::hub::Hub;
use crate::hub::rules::RuleTable;
use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub cors: Arc<RuleTable<Arc<cors::CorsPolicy>>>,
    pub gate: Arc<Gate>,
    /// The broker sources' states, for `/stats` and `/healthz`.
    pub sources: Arc<crate::sources::Sources>,
}

/// All routes. Subscribing and publishing share `/sse/{channel}`, as in ssehub. Every request
/// but a CORS preflight passes the access gate (see `gate::layer`). Fails when an access policy
/// cannot be compiled (a `secret` rule's environment variable is missing, say).
pub fn router(hub: Arc<Hub>, sources: Arc<crate::sources::Sources>) -> Result<Router, ConfigError> {
    let cors = Arc::new(cors::rules(hub.config()));
    let gate = Arc::new(Gate::new(hub.config())?);
    let token_route = (!hub.config().access.postgres.dsn.is_empty() && !hub.config().access.postgres.route.is_empty())
        .then(|| hub.config().access.postgres.route.clone());
    let stats_here = !hub.config().debug.stats;
    let state = AppState { hub, cors, gate, sources };
    let mut router = Router::new();
    if stats_here {
        router = router.route("/stats", get(stats::stats));
    }
    if let Some(route) = token_route {
        // Validated: literal segments and {channel}, {user}, {token}, which is axum's syntax too.
        router = router.route(&route, get(subscribe::by_token_route));
    }
    let router = router
        .route("/sse", get(subscribe::by_query))
        .route("/sse/{*channel}", get(subscribe::by_path).post(publish::to_path))
        .route("/publish", post(publish::to_body))
        .route("/healthz", get(stats::healthz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(gate::layer))
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors::layer))
        .layer(axum::middleware::from_fn(requests::layer))
        .with_state(state);
    Ok(router)
}

async fn not_found(
    axum::Extension(checkpoint): axum::Extension<Checkpoint>,
    outside: Option<axum::Extension<root::OutsideRoot>>,
    uri: http::Uri,
) -> ApiError {
    checkpoint.public();
    match outside {
        Some(axum::Extension(root::OutsideRoot(path))) => {
            ApiError::new(http::StatusCode::NOT_FOUND, format!("no route for {path} (the routes are under http_root)"))
        }
        None => ApiError::new(http::StatusCode::NOT_FOUND, format!("no route for {}", uri.path())),
    }
}
