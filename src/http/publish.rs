//! `POST /sse/{channel}` and `POST /publish`: hand events to the hub.
//!
//! Bodies: a JSON event `{"id"?, "event"?, "data", "retry"?}` (data a string, or any JSON value
//! written compactly), a JSON array of them (one batch, all or nothing), or `text/plain` taken
//! as the data with `event`, `id` and `retry` in the query string. On `/publish` each JSON event
//! names `channel` or `channels`; a text body names them with `?channel=`.

use super::AppState;
use super::error::ApiError;
use super::gate::Asker;
use super::requests::PublishRecord;
use crate::event::Draft;
use crate::hub::{Hub, Ingested, Once, Submission};
use crate::json::EventInput;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};

#[derive(serde::Serialize)]
pub struct Published {
    /// The id of each accepted event, in the order given.
    pub ids: Vec<String>,
}

enum Format {
    Json,
    Text,
}

fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let unsupported = |what: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{what}; send application/json (an event or an array of events) or text/plain (the data)"),
        )
    };
    let Some(ct) = headers.get(header::CONTENT_TYPE) else { return Err(unsupported("no Content-Type")) };
    let ct = ct.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match ct.as_str() {
        "application/json" => Ok(Format::Json),
        "text/plain" => Ok(Format::Text),
        s if s.starts_with("application/") && s.ends_with("+json") => Ok(Format::Json),
        other => Err(unsupported(&format!("Content-Type `{other}` is not accepted"))),
    }
}

async fn read_body(hub: &Hub, headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, ApiError> {
    let limit = hub.config().limits.max_body_size.as_usize();
    let too_large = || ApiError::too_large(format!("request body is larger than limits.max_body_size ({limit} bytes)"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // hyper has no timeout for a body that stops arriving; without this, a publisher that sends
    // its head and then nothing holds its connection for ever.
    let timeout = hub.config().limits.body_read_timeout;
    let collected =
        tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await.map_err(|_| ApiError::body_timeout(timeout))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    }
}

/// Where the channels of a request's events come from.
enum Target {
    /// `POST /sse/{channel}`: the URL.
    Path(String),
    /// `POST /publish`: each JSON event's `channel`/`channels`, or `?channel=` for text.
    Body,
}

/// Where an event goes: its channels, and the users it is addressed to (none: everyone).
struct Destination {
    channels: Vec<String>,
    users: Vec<String>,
}

impl Target {
    fn json_destination(&self, i: usize, input: EventInput) -> Result<Destination, ApiError> {
        let users = input.users.unwrap_or_default();
        let channels = match self {
            Target::Path(channel) => {
                if input.channel.is_some() || input.channels.is_some() {
                    return Err(at(i, "the channel comes from the URL here; name channels in the body with POST /publish".into()));
                }
                vec![channel.clone()]
            }
            Target::Body => match (input.channel, input.channels, input.path) {
                (Some(c), None, _) | (None, None, Some(c)) => vec![c],
                (None, Some(cs), _) if !cs.is_empty() => cs,
                (Some(_), Some(_), _) => return Err(at(i, "name either `channel` or `channels`, not both".into())),
                // Addressed to users alone: their own streams.
                (None, None, None) if !users.is_empty() => Vec::new(),
                _ => return Err(at(i, "name the event's `channel` (or `channels`), or the `users` it is for".into())),
            },
        };
        Ok(Destination { channels, users })
    }

    fn text_destination(&self, from_query: Vec<String>, users: Vec<String>) -> Result<Destination, ApiError> {
        let channels = match self {
            Target::Path(channel) => vec![channel.clone()],
            Target::Body if from_query.is_empty() && users.is_empty() => {
                return Err(ApiError::bad_request("name the channel with ?channel= (repeat it for several), or the users with ?user="));
            }
            Target::Body => from_query,
        };
        Ok(Destination { channels, users })
    }
}

/// `POST /sse/{channel}`.
pub async fn to_path(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    RawQuery(raw): RawQuery,
    asker: Asker,
    body: Body,
) -> Result<Answer, ApiError> {
    handle(&state, Target::Path(channel), raw.as_deref(), &asker, body).await
}

/// `POST /publish`.
pub async fn to_body(State(state): State<AppState>, RawQuery(raw): RawQuery, asker: Asker, body: Body) -> Result<Answer, ApiError> {
    handle(&state, Target::Body, raw.as_deref(), &asker, body).await
}

/// The ids, and on a repeat of an `Idempotency-Key`, `Idempotent-Replayed: true`; and for the
/// access log, what was published.
type Answer = (HeaderMap, Option<axum::Extension<PublishRecord>>, Json<Published>);

/// The longest `Idempotency-Key` taken.
const MAX_KEY_LEN: usize = 255;

/// The request's `Idempotency-Key`, if it has one that can be used.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let bad = || ApiError::bad_request(format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"));
    let key = value.to_str().map_err(|_| bad())?;
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(bad());
    }
    Ok(Some(key))
}

async fn handle(state: &AppState, target: Target, raw: Option<&str>, asker: &Asker, body: Body) -> Result<Answer, ApiError> {
    let hub = &*state.hub;
    let headers = &asker.headers;
    let key = idempotency_key(headers)?;
    let format = format_of(headers)?;
    let bytes = read_body(hub, headers, body).await?;
    let drafts = match format {
        Format::Json => parse_json(hub, &bytes)?
            .into_iter()
            .enumerate()
            .map(|(i, (input, draft))| Ok((target.json_destination(i, input)?, draft)))
            .collect::<Result<Vec<_>, ApiError>>()?,
        Format::Text => {
            let (draft, channels, users) = parse_text(raw, &bytes, &hub.config().access.jwt.query)?;
            vec![(target.text_destination(channels, users)?, draft)]
        }
    };
    // Once the channels are known (a `/publish` body names them) and before anything is made
    // or published; with the body, which a signature rule covers.
    let mut named: Vec<&str> = drafts.iter().flat_map(|(to, _)| to.channels.iter().map(String::as_str)).collect();
    named.sort_unstable();
    named.dedup();
    // Names are checked before the gate matches them against its patterns.
    for name in &named {
        hub.check_name(name)?;
    }
    let to_users = drafts.iter().any(|(to, _)| !to.users.is_empty());
    state.gate.publish(&asker.checkpoint, &named, to_users, &asker.facts(&bytes)).await?;
    // For the access log only, and only when it is written.
    let channels = crate::telemetry::access::enabled().then(|| named.join(","));
    let (headers, published) = publish(hub, drafts, key).await?;
    let record = channels.map(|channels| axum::Extension(PublishRecord { channels, events: published.ids.len() }));
    Ok((headers, record, Json(published)))
}

fn at(index: usize, message: String) -> ApiError {
    ApiError::bad_request(format!("event {index}: {message}"))
}

/// Parses a JSON event or batch into drafts, checking the batch length.
fn parse_json(hub: &Hub, bytes: &[u8]) -> Result<Vec<(EventInput, Draft)>, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    let inputs: Vec<EventInput> = match first {
        None => return Err(ApiError::bad_request("empty body: send an event such as {\"data\": \"hello\"}")),
        Some(b'[') => serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON batch: {e}")))?,
        Some(_) => vec![serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON event: {e}")))?],
    };
    if inputs.is_empty() {
        return Err(ApiError::bad_request("empty batch"));
    }
    let max = hub.config().limits.max_batch_events;
    if inputs.len() > max {
        return Err(ApiError::too_large(format!("batch of {} events, more than limits.max_batch_events ({max})", inputs.len())));
    }
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, mut input)| {
            let draft = input.take_draft().map_err(|e| at(i, e))?;
            Ok((input, draft))
        })
        .collect()
}

/// A `text/plain` body is the data; `event`, `id`, `retry`, `channel` and `user` come from the
/// query, beside the token's own parameter (`token_param`, for access control).
fn parse_text(raw_query: Option<&str>, bytes: &[u8], token_param: &str) -> Result<(Draft, Vec<String>, Vec<String>), ApiError> {
    let data = std::str::from_utf8(bytes).map_err(|e| ApiError::bad_request(format!("text body is not UTF-8: {e}")))?;
    let mut draft = Draft { data: data.to_owned(), ..Draft::default() };
    let mut channels = Vec::new();
    let mut users = Vec::new();
    for (key, value) in form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()) {
        match &*key {
            "event" => draft.event = Some(value.into_owned()),
            "id" => draft.id = Some(value.into_owned()),
            "retry" => {
                draft.retry = Some(value.parse().map_err(|_| ApiError::bad_request(format!("retry must be milliseconds, not `{value}`")))?)
            }
            "channel" => channels.push(value.into_owned()),
            "user" => users.push(value.into_owned()),
            other if other == token_param => {}
            other => return Err(ApiError::bad_request(format!("unknown query parameter `{other}` (event, id, retry, channel, user)"))),
        }
    }
    Ok((draft, channels, users))
}

/// Hands the request's events to the hub's publish path: a batch is all or nothing, and with
/// an `Idempotency-Key`, published once.
async fn publish(hub: &Hub, drafts: Vec<(Destination, Draft)>, key: Option<&str>) -> Result<(HeaderMap, Published), ApiError> {
    let batch: Vec<Submission> =
        drafts.into_iter().map(|(to, draft)| Submission { channels: to.channels, users: to.users, draft }).collect();
    let mut headers = HeaderMap::new();
    let ids = match key {
        None => hub.ingest(batch).await?,
        Some(key) => {
            let once = Once::of_batch(format!("http:{key}"), &batch);
            let ingested = hub.ingest_once(once, batch).await?;
            if ingested.is_repeat() {
                headers.insert("idempotent-replayed", http::HeaderValue::from_static("true"));
            }
            let (Ingested::Published(ids) | Ingested::Repeat(ids)) = ingested;
            ids
        }
    };
    Ok((headers, Published { ids }))
}
