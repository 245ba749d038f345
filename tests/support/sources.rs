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

/// The crash window between accepting a message and acknowledging it: a node (disk store,
/// `fsync = "always"`, the source `source_toml`, which must map onto channel `c`) aborts right
/// after the source's first accepted message, `send("once")`. The broker gives it again to the
/// restarted node, which must see it as a repeat; `send("next")` is then published, and the
/// channel's history holds each once.
pub async fn no_duplicate_after_a_crash_between_accept_and_ack(name: &str, source_toml: &str, send: impl AsyncFn(&str)) {
    use super::process::{Served, herald, wait_with_timeout};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.toml"), format!("[history]\nfsync = \"always\"\n[[sources]]\n{source_toml}")).unwrap();
    let args = ["--config", "herald.toml", "--log-level", "info"];
    let mut first = {
        let mut cmd = herald(dir.path());
        cmd.env(herald::sources::ABORT_BEFORE_ACK, name);
        Served::spawn(cmd, &args)
    };
    connected(&first.url("")).await;
    send("once").await;
    assert!(!wait_with_timeout(&mut first.child, WAIT).success(), "aborted between accept and ack");
    let node = Served::start_with(dir.path(), &args);
    eventually(async || source_stats(&node.url("")).await["duplicates"] == 1).await;
    send("next").await;
    eventually(async || source_stats(&node.url("")).await["accepted"] == 1).await;
    let mut sse = Sse::open_with(&node.url("/sse/c"), &[("last-event-id", "0")]).await;
    assert_eq!(data(&mut sse, 2).await, ["once", "next"]);
    sse.expect_no_event(std::time::Duration::from_millis(300)).await;
}
