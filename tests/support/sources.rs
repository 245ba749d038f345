//! What the broker source tests share: a source from TOML, its `/stats` entry, and the data of
//! the events a stream receives.

use super::{Sse, WAIT, eventually, http};
use herald::config::sources::SourceConfig;
use herald::sse::Item;

/// A name no earlier run used: `<prefix><test><sep><nanoseconds>`.
pub fn unique(prefix: &str, test: &str, sep: char) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}{test}{sep}{nanos}")
}

/// A source's configuration from its TOML table, validated.
pub fn source(toml: &str) -> SourceConfig {
    let config: SourceConfig = toml::from_str(toml).unwrap();
    config.validate().unwrap();
    config
}

/// The first source's entry in `/stats`.
pub async fn source_stats(url: &str) -> serde_json::Value {
    let stats: serde_json::Value = http().get(format!("{url}/stats")).send().await.unwrap().json().await.unwrap();
    stats["sources"][0].clone()
}

/// Waits until the first source says it is connected.
pub async fn connected(url: &str) {
    eventually(async || source_stats(url).await["connected"] == true).await;
}

/// The next `n` events (notices skipped) as (id, type, data).
pub async fn events(sse: &mut Sse, n: usize) -> Vec<(String, String, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(WAIT, sse.next_item()).await.expect("events arrive in time").expect("stream open") {
            Item::Event(e) if e.event != "missed" => got.push((e.last_event_id, e.event, e.data)),
            _ => {}
        }
    }
    got
}

/// The data of the next `n` events.
pub async fn data(sse: &mut Sse, n: usize) -> Vec<String> {
    events(sse, n).await.into_iter().map(|(_, _, d)| d).collect()
}
