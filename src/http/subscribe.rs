//! `GET /sse/{channel}` and `GET /sse?channel=a&channel=b`: open an event stream.

use super::AppState;
use super::error::ApiError;
use super::event_stream::Handoff;
use super::gate::Asker;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};

/// Longest `Last-Event-ID` accepted.
const MAX_LAST_EVENT_ID: usize = 1024;

/// What the query string of a subscription may say.
#[derive(Default)]
struct SubscribeQuery {
    channels: Vec<String>,
    last_event_id: Option<String>,
    replay_all: bool,
}

fn parse_query(raw: Option<&str>) -> Result<SubscribeQuery, ApiError> {
    let mut q = SubscribeQuery::default();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*key {
            "channel" => q.channels.push(value.into_owned()),
            // `lastEventId` is what EventSource polyfills and ssehub clients send.
            "lastEventId" | "last_event_id" => q.last_event_id = Some(value.into_owned()),
            "replay" => match &*value {
                "all" => q.replay_all = true,
                "none" | "" => {}
                other => return Err(ApiError::bad_request(format!("replay must be `all` or `none`, not `{other}`"))),
            },
            // ssehub's way of asking for the whole history.
            "getcache" => q.replay_all = value == "1" || value == "true",
            // Anything else (cache busters, tokens for later layers) is not ours to judge.
            _ => {}
        }
    }
    Ok(q)
}

pub async fn by_path(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    RawQuery(raw): RawQuery,
    asker: Asker,
) -> Result<Response, ApiError> {
    let mut q = parse_query(raw.as_deref())?;
    q.channels = vec![channel];
    open(&state, q, &asker, None).await
}

/// The token route (`access.postgres.route`, `/subscribe/{channel}/{user}/{token}` by default):
/// the path names the channel, and the user and token that the token database checks.
pub async fn by_token_route(
    State(state): State<AppState>,
    Path(segments): Path<std::collections::HashMap<String, String>>,
    RawQuery(raw): RawQuery,
    asker: Asker,
) -> Result<Response, ApiError> {
    let mut q = parse_query(raw.as_deref())?;
    let (Some(channel), Some(user), Some(token)) = (segments.get("channel"), segments.get("user"), segments.get("token")) else {
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error: the token route lacks a placeholder"));
    };
    q.channels = vec![channel.clone()];
    open(&state, q, &asker, Some((user, token))).await
}

/// `GET /sse?channel=a&channel=b`, or `GET /sse` alone with a token naming a user: the user's
/// own stream (oCIS's `/sse`), of the events addressed to the user.
pub async fn by_query(State(state): State<AppState>, RawQuery(raw): RawQuery, asker: Asker) -> Result<Response, ApiError> {
    let q = parse_query(raw.as_deref())?;
    open(&state, q, &asker, None).await
}

async fn open(state: &AppState, q: SubscribeQuery, asker: &Asker, path_credential: Option<(&str, &str)>) -> Result<Response, ApiError> {
    let limit = state.hub.config().max_channels_per_connection;
    if q.channels.len() > limit {
        return Err(ApiError::bad_request(format!(
            "{} channels named, at most {limit} per connection (max_channels_per_connection)",
            q.channels.len()
        )));
    }
    // Names are checked before the gate matches them against its patterns.
    for name in &q.channels {
        state.hub.check_name(name)?;
    }
    // Before anything is looked up, replayed or streamed.
    let facts = crate::access::Facts { path_credential, ..asker.facts(b"") };
    let admission = state.gate.subscribe(&asker.checkpoint, &q.channels, &facts).await?;
    let headers = &asker.headers;
    // The header is what a reconnecting EventSource sends; it is newer than any id in the URL.
    let last_event_id = match headers.get("last-event-id") {
        // Browsers send an id back as the UTF-8 bytes they received (`café` included), which
        // is not the visible ASCII `to_str` insists on.
        Some(v) => Some(std::str::from_utf8(v.as_bytes()).map_err(|_| ApiError::bad_request("Last-Event-ID is not UTF-8"))?.to_owned()),
        None => q.last_event_id,
    };
    if last_event_id.as_ref().is_some_and(|id| id.len() > MAX_LAST_EVENT_ID) {
        return Err(ApiError::bad_request(format!("Last-Event-ID is longer than {MAX_LAST_EVENT_ID} bytes")));
    }
    // An empty Last-Event-ID is what a client sends when it never saw an id.
    let last_event_id = last_event_id.filter(|id| !id.is_empty());
    if let Some(pos) = last_event_id.as_deref().and_then(crate::hub::parse_position) {
        state.hub.caught_up_to(pos, state.hub.config().cluster.catch_up_wait).await;
    }
    let mut subscription =
        state.hub.subscribe(&q.channels, (admission.user(), admission.reads_own_log()), last_event_id.as_deref(), q.replay_all)?;
    if let Some(at) = admission.ends_at() {
        subscription.end_at(at);
    }
    if crate::telemetry::access::enabled() {
        let id = crate::telemetry::request_id::current().unwrap_or_else(crate::telemetry::request_id::generate);
        subscription.log_as(asker.peer, admission.user().map(std::sync::Arc::from), id.to_str().unwrap_or_default().into());
    }
    tracing::debug!(peer = %asker.peer, channels = ?q.channels, user = admission.user(), ends_at = admission.ends_at(), "event stream opened");
    // Whoever serves the connection takes the subscription: the socket path from the extension,
    // hyper by polling the body.
    let handoff = Handoff::new(subscription, admission);
    let mut resp = Response::new(Body::new(handoff.clone().into_body()));
    resp.extensions_mut().insert(handoff);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx (and proxies that copy it) not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
