//! Upstream SSE: another SSE endpoint (another Herald, Nchan, cdviz-collector, anything that
//! speaks `text/event-stream`) followed like an `EventSource` would, its events republished into
//! local channels.
//!
//! Every reconnect sends the id of the last event accepted as `Last-Event-ID`, and waits the
//! upstream's `retry:` first, so an upstream with history (Herald) resumes without gap. Each
//! event's own id is its idempotency key, so one the upstream sends again (a replay that
//! overlaps) is not published twice. With the disk store, the last id is kept in
//! `<history.dir>/sources/<name>.last-event-id` (written after each accepted batch), so a
//! restarted Herald resumes too; what it had accepted past that point is caught by the keys the
//! disk store kept. An event's type passes through unless the map sets one.

use super::backoff::Backoff;
use super::intake::{Intake, Redelivery};
use super::mapping::Message;
use crate::config::StoreKind;
use crate::config::sources::SourceConfig;
use crate::sse::{Item, MessageEvent, Parser};
use futures_util::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `EventSource`'s reconnection time until the upstream sets one.
const DEFAULT_RETRY: Duration = Duration::from_secs(3);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A `retry:` is followed, within reason: a hostile upstream can neither stall the source for
/// days nor make it reconnect in a tight loop.
const MAX_RETRY: Duration = Duration::from_secs(300);
const MIN_RETRY: Duration = Duration::from_millis(100);
/// What is read of a refusal's body, for the error it shows.
const REFUSAL_BYTES: usize = 200;

pub struct Upstream {
    url: String,
    /// The URL as errors show it: no password, no credentials in its query.
    shown: String,
    /// The most an event may hold (`limits.max_event_size`): an upstream that sends more
    /// without ending an event is cut off, so the parser's buffers stay bounded.
    max_event: usize,
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
    idle_timeout: Duration,
    /// Where the last accepted id is kept (disk store only).
    cursor_file: Option<PathBuf>,
    /// The id to resume from.
    last_id: Option<String>,
}

/// The settings of an upstream source; a TLS file that cannot be read stops start-up.
pub fn settings(config: &SourceConfig, hub: &crate::config::Config) -> anyhow::Result<Upstream> {
    let history = &hub.history;
    let mut builder =
        reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")));
    if !config.tls.is_default() {
        let section = format!("sources.{}.tls", config.name);
        builder = builder.tls_backend_preconfigured(config.tls.client_config(&section, &crate::tls::KeyNames::PLAIN)?);
    }
    let client = builder.build().map_err(|e| anyhow::anyhow!("sources.{}: cannot make an HTTP client: {e}", config.name))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in config.headers.iter().flatten() {
        // Checked when the configuration was read.
        headers.insert(reqwest::header::HeaderName::from_bytes(name.as_bytes())?, reqwest::header::HeaderValue::from_str(value)?);
    }
    let cursor_file =
        (history.store == StoreKind::Disk).then(|| history.dir.join("sources").join(format!("{}.last-event-id", config.name)));
    let saved = match &cursor_file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(id) => Some(id.trim().to_owned()).filter(|id| sendable(id)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => anyhow::bail!("sources.{}: cannot read {}: {e}", config.name, path.display()),
        },
        None => None,
    };
    Ok(Upstream {
        url: config.url.clone(),
        shown: crate::config::redact::url(&config.url),
        max_event: hub.limits.max_event_size.as_usize(),
        client,
        headers,
        idle_timeout: config.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT),
        cursor_file,
        last_id: saved.or_else(|| config.last_event_id.clone()),
    })
}

pub async fn run(intake: Arc<Intake>, mut upstream: Upstream) {
    let mut retry = DEFAULT_RETRY;
    let mut backoff = Backoff::new();
    loop {
        if intake.hub.is_closing() {
            return;
        }
        let connects = intake.status.connects();
        match session(&intake, &mut upstream, &mut retry).await {
            Ok(()) => return,
            Err(e) => intake.status.down(e),
        }
        // A stream that was open ends like an `EventSource`'s: wait the upstream's `retry`.
        // One that could not open waits at least that, and longer each time.
        let wait = if intake.status.connects() != connects {
            backoff.reset();
            retry
        } else {
            backoff.delay().max(retry)
        };
        tokio::time::sleep(wait).await;
    }
}

/// One connection: `Ok` when the hub shuts down, else why it ended.
async fn session(intake: &Intake, upstream: &mut Upstream, retry: &mut Duration) -> Result<(), String> {
    let mut request = upstream
        .client
        .get(&upstream.url)
        .headers(upstream.headers.clone())
        .header(reqwest::header::ACCEPT, "text/event-stream")
        .header(reqwest::header::CACHE_CONTROL, "no-cache");
    if let Some(id) = &upstream.last_id {
        request = request.header("last-event-id", id.as_str());
    }
    let shown = &upstream.shown;
    let mut response = tokio::time::timeout(upstream.idle_timeout, request.send())
        .await
        .map_err(|_| format!("no answer from {shown} within {:?}", upstream.idle_timeout))?
        .map_err(|e| format!("{shown}: {}", e.without_url()))?;
    let status = response.status();
    if !status.is_success() || status == reqwest::StatusCode::NO_CONTENT {
        // The first bytes only, and not for long: the body is the upstream's to make endless.
        let first = tokio::time::timeout(Duration::from_secs(2), response.chunk()).await.ok().and_then(Result::ok).flatten();
        let body = first.map(|b| String::from_utf8_lossy(&b[..b.len().min(REFUSAL_BYTES)]).into_owned()).unwrap_or_default();
        return Err(format!("{shown} answered {status}: {}", body.trim()));
    }
    let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("text/event-stream") {
        let content_type: String = content_type.chars().take(100).collect();
        return Err(format!("{shown} answered with `{content_type}`, not text/event-stream"));
    }
    intake.status.up();
    let mut parser = Parser::new();
    if let Some(id) = &upstream.last_id {
        // A fresh parser has no id: the one resumed from stands until the upstream sends another.
        parser.feed(format!("id: {id}\n\n").as_bytes(), &mut Vec::new());
    }
    let mut body = response.bytes_stream();
    let mut items = Vec::new();
    // Bytes read since the last event was dispatched: past an event's limit (and room for its
    // field names), the upstream is sending an event Herald would refuse, or no event at all.
    let mut pending = 0usize;
    loop {
        let chunk = match tokio::time::timeout(upstream.idle_timeout, body.next()).await {
            Err(_) => return Err(format!("nothing from the upstream for {:?}", upstream.idle_timeout)),
            Ok(None) => return Err("the upstream ended the stream".into()),
            Ok(Some(Err(e))) => return Err(format!("reading the upstream: {}", e.without_url())),
            Ok(Some(Ok(chunk))) => chunk,
        };
        parser.feed(&chunk, &mut items);
        pending += chunk.len();
        let mut events = Vec::new();
        for item in items.drain(..) {
            match item {
                Item::Event(e) => events.push(e),
                Item::Retry(ms) => *retry = Duration::from_millis(ms).clamp(MIN_RETRY, MAX_RETRY),
                Item::Comment(_) => {}
            }
        }
        if !events.is_empty() {
            pending = 0;
            if !take(intake, upstream, &events).await {
                return Ok(());
            }
        } else if pending > 2 * upstream.max_event + 4096 {
            return Err(format!(
                "the upstream sent {pending} bytes without ending an event (limits.max_event_size is {})",
                upstream.max_event
            ));
        }
    }
}

/// Publishes the events of one read as one batch; false when the hub shuts down first.
async fn take(intake: &Intake, upstream: &mut Upstream, events: &[MessageEvent]) -> bool {
    // An event without an id of its own carries the one before it, which keys nothing.
    let msgs: Vec<(Message, Redelivery)> = events
        .iter()
        .map(|e| {
            let key = if e.has_id && !e.last_event_id.is_empty() { Redelivery::Id(&e.last_event_id) } else { Redelivery::Unknown };
            let event = Some(e.event.as_str()).filter(|t| *t != "message");
            (Message { subject: &e.event, payload: e.data.as_bytes(), event }, key)
        })
        .collect();
    if intake.take(&msgs).await.is_none() {
        return false;
    }
    // An id that cannot be sent back as a header (SSE allows control characters in ids) is not
    // kept: resuming from the last one that can is the best the source can do.
    let last = events.iter().rev().map(|e| e.last_event_id.as_str()).find(|id| sendable(id));
    if let Some(id) = last
        && upstream.last_id.as_deref() != Some(id)
    {
        upstream.last_id = Some(id.to_owned());
        if let Some(path) = &upstream.cursor_file
            && let Err(e) = save(path, id)
        {
            tracing::warn!(source = %intake.name(), error = %e, path = %path.display(), "the last event id could not be kept: a restart resumes from an earlier one");
        }
    }
    true
}

/// Whether `id` can be sent as `Last-Event-ID`.
fn sendable(id: &str) -> bool {
    !id.is_empty() && reqwest::header::HeaderValue::from_str(id).is_ok()
}

/// Replaces the file whole (a new file renamed over the old), so a crash leaves one id or the other.
fn save(path: &std::path::Path, id: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, id)?;
    std::fs::rename(&tmp, path)
}
