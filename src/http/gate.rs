//! The access gate's place in the router: every request gets a [`Checkpoint`], and a successful
//! answer is sent only if its handler asked the gate (or declared its route public). A route
//! added without an access decision fails closed, with a 500 and an error in the log, instead
//! of serving everyone. Error answers pass: they serve nothing (and an extractor's rejection,
//! a 400 for a malformed path say, comes before any handler could ask).

use super::ApiError;
use crate::access::{Checkpoint, Facts};
use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use std::net::SocketAddr;

pub async fn layer(mut req: Request, next: Next) -> Response {
    let checkpoint = Checkpoint::default();
    req.extensions_mut().insert(checkpoint.clone());
    // The route, not the path: a token route's path holds the token.
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or_else(|| "(no route)".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().clone();
    let resp = next.run(req).await;
    if checkpoint.decided() || !(resp.status().is_success() || resp.status().is_redirection()) {
        return resp;
    }
    tracing::error!(%method, route, "answer withheld: its route made no access decision (a bug: every handler must ask the gate)");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error: this route made no access decision").into_response()
}

/// Who is asking: what the access gate needs to know of a request.
pub struct Asker {
    pub checkpoint: Checkpoint,
    pub peer: SocketAddr,
    pub headers: HeaderMap,
    /// The query string (where a token may travel).
    pub query: Option<String>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Asker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, _: &S) -> Result<Self, ApiError> {
        let internal = |what: &str| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: no {what} on the request"));
        let checkpoint = parts.extensions.get::<Checkpoint>().cloned().ok_or_else(|| internal("access checkpoint"))?;
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0).ok_or_else(|| internal("peer address"))?;
        let query = parts.uri.query().map(str::to_owned);
        Ok(Asker { checkpoint, peer, headers: std::mem::take(&mut parts.headers), query })
    }
}

impl Asker {
    /// The facts for the gate, with the request body a signature covers.
    pub fn facts<'a>(&'a self, body: &'a [u8]) -> Facts<'a> {
        Facts { peer: self.peer.ip(), headers: &self.headers, body, query: self.query.as_deref(), path_credential: None }
    }
}
