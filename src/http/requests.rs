//! Every request on the public listener: its id (`X-Request-Id`, taken from the client or
//! made), its count by status class, the publish latency, its access-log line, and (with
//! `tracing.enabled`) its span.

use crate::telemetry::{access, counters, otlp, request_id};
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;
use std::time::Instant;

/// What a publish handler leaves on its answer for the access log.
#[derive(Clone)]
pub struct PublishRecord {
    /// The channels its events named, comma-separated.
    pub channels: String,
    pub events: usize,
}

/// What an error answer leaves for the access log: the message the client was told.
#[derive(Clone)]
pub struct ErrorNote(pub String);

pub async fn layer(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req.headers().get("x-request-id").and_then(request_id::from_client).unwrap_or_else(request_id::generate);
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    // The route, never the path: a token route's path holds the token.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let publish =
        method == http::Method::POST && route.as_ref().is_some_and(|r| r.as_str() == "/publish" || r.as_str().starts_with("/sse/"));
    // A span for the publish, continuing the caller's trace, when traces are exported.
    let span = (publish && otlp::enabled()).then(|| otlp::publish_span(req.headers(), route.as_ref().map_or("", MatchedPath::as_str), &id));
    let answer = request_id::scope(id.clone(), next.run(req));
    let mut resp = match &span {
        Some(span) => tracing::Instrument::instrument(answer, span.clone()).await,
        None => answer.await,
    };
    let status = resp.status();
    if let Some(span) = &span {
        otlp::record_status(span, status);
    }
    counters::http_answer(status);
    let took = started.elapsed();
    if publish {
        counters::publish_took(took);
    }
    if access::enabled() {
        log_line(&mut resp, (peer, &method, route.as_ref(), publish), took, &id);
    }
    resp.headers_mut().insert("x-request-id", id);
    resp
}

/// The request's access-log line, from what the request and its answer say.
fn log_line(
    resp: &mut Response,
    (peer, method, route, publish): (Option<SocketAddr>, &http::Method, Option<&MatchedPath>, bool),
    took: std::time::Duration,
    id: &http::HeaderValue,
) {
    let status = resp.status();
    let route = route.map_or("(no route)", MatchedPath::as_str);
    let request_id = id.to_str().unwrap_or_default();
    let error = resp.extensions_mut().remove::<ErrorNote>();
    let error = error.as_ref().map(|e| e.0.as_str());
    if publish {
        let record = resp.extensions_mut().remove::<PublishRecord>();
        access::publish(&access::PublishLine {
            peer,
            route,
            status: status.as_u16(),
            channels: record.as_ref().map_or("", |r| &r.channels),
            events: record.as_ref().map_or(0, |r| r.events),
            took,
            request_id,
            error,
        });
    } else if status.is_client_error() || status.is_server_error() {
        access::refused(peer, method.as_str(), route, status.as_u16(), request_id, error);
    }
}
