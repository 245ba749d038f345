//! The HTTP face of the hub: routes, CORS, and the server that runs them.

mod conn;
pub mod cors;
mod error;
mod event_stream;
mod publish;
mod rewind;
pub mod server;
mod stats;
mod subscribe;

pub use error::ApiError;

use crate::hub::Hub;
use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
}

/// All routes. Subscribing and publishing share `/sse/{channel}`, as in ssehub.
pub fn router(hub: Arc<Hub>) -> Router {
    let state = AppState { hub };
    Router::new()
        .route("/sse", get(subscribe::by_query))
        .route("/sse/{*channel}", get(subscribe::by_path).post(publish::to_path))
        .route("/publish", post(publish::to_body))
        .route("/stats", get(stats::stats))
        .route("/healthz", get(stats::healthz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors::layer))
        .with_state(state)
}

async fn not_found(uri: http::Uri) -> ApiError {
    ApiError::new(http::StatusCode::NOT_FOUND, format!("no route for {}", uri.path()))
}
