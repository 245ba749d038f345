//! A small Herald client, used by `herald publish` / `herald subscribe` and by the tests.

use crate::event::Draft;
use crate::sse::{Item, MessageEvent, Parser};
use anyhow::{Context, bail};
use futures_util::StreamExt;
use std::time::Duration;

/// Publishes one event to `channel` on the hub at `base` (e.g. `http://127.0.0.1:8080`);
/// returns the id the hub gave it.
pub async fn publish(http: &reqwest::Client, base: &str, channel: &str, draft: &Draft) -> anyhow::Result<String> {
    let mut body = serde_json::json!({ "data": draft.data });
    if let Some(id) = &draft.id {
        body["id"] = id.clone().into();
    }
    if let Some(event) = &draft.event {
        body["event"] = event.clone().into();
    }
    if let Some(retry) = draft.retry {
        body["retry"] = retry.into();
    }
    let url = format!("{}/sse/{}", base.trim_end_matches('/'), channel);
    let resp = http.post(&url).json(&body).send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    let answer: serde_json::Value = serde_json::from_str(&text).context("hub answered something that is not JSON")?;
    answer["ids"][0].as_str().map(str::to_owned).context("hub answer has no id")
}

/// How to subscribe.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    pub last_event_id: Option<String>,
    pub replay_all: bool,
    /// Reconnect (with the last id seen) when the stream ends or fails.
    pub reconnect: bool,
}

/// Subscribes to `channels` and calls `on_item` for every event, comment and retry until it
/// returns false. Reconnects like an `EventSource`: after the server's `retry` delay, sending
/// `Last-Event-ID`.
pub async fn subscribe(
    http: &reqwest::Client,
    base: &str,
    channels: &[String],
    options: SubscribeOptions,
    mut on_item: impl FnMut(&Item) -> bool,
) -> anyhow::Result<()> {
    let query: Vec<String> = channels.iter().map(|c| format!("channel={}", urlencode(c))).collect();
    let mut url = format!("{}/sse?{}", base.trim_end_matches('/'), query.join("&"));
    if options.replay_all {
        url.push_str("&replay=all");
    }
    let mut last_id = options.last_event_id.clone();
    let mut retry = Duration::from_secs(3);
    loop {
        let mut req = http.get(&url).header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id.as_str());
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                let mut parser = Parser::new();
                if let Some(id) = &last_id {
                    // A fresh parser has no id; keep the one we resume from until a new one arrives.
                    let mut items = Vec::new();
                    parser.feed(format!("id: {id}\n\n").as_bytes(), &mut items);
                }
                let mut stream = resp.bytes_stream();
                let mut items = Vec::new();
                while let Some(chunk) = stream.next().await {
                    let Ok(chunk) = chunk else { break };
                    parser.feed(&chunk, &mut items);
                    for item in items.drain(..) {
                        if let Item::Retry(ms) = item {
                            retry = Duration::from_millis(ms);
                        }
                        if !on_item(&item) {
                            return Ok(());
                        }
                    }
                    if !parser.last_event_id().is_empty() {
                        last_id = Some(parser.last_event_id().to_owned());
                    }
                }
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                bail!("{status}: {text}");
            }
            Err(e) if !options.reconnect => return Err(e.into()),
            Err(e) => tracing::warn!(error = %e, "subscription failed; retrying"),
        }
        if !options.reconnect {
            return Ok(());
        }
        tokio::time::sleep(retry).await;
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// An event as `herald subscribe --json` prints it.
pub fn event_json(ev: &MessageEvent) -> serde_json::Value {
    serde_json::json!({ "id": ev.last_event_id, "event": ev.event, "data": ev.data })
}
