//! What the broker source tests share: a source from TOML, its `/stats` entry, and the data of
//! the events a stream receives.

use super::{Sse, TestServer, WAIT, eventually, http};
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

/// Two cluster nodes on a Redis bus stream of their own, each with its source (the same one,
/// or one differing only in a per-node key such as a client id), both connected.
pub async fn cluster_pair(a: SourceConfig, b: SourceConfig) -> (TestServer, TestServer) {
    let stream = unique("herald-test:", &a.name, ':');
    let node = |config: SourceConfig| {
        let stream = stream.clone();
        TestServer::with(move |c| {
            c.sources = vec![config];
            c.cluster.bus = "redis://127.0.0.1:6379".into();
            c.cluster.stream = stream;
        })
    };
    let (a, b) = (node(a).await, node(b).await);
    connected(&a.url("")).await;
    connected(&b.url("")).await;
    (a, b)
}

/// `got` holds `m0`…`m<n-1>`, each once, in whatever order the nodes published them.
pub fn assert_each_once(mut got: Vec<String>, n: usize) {
    got.sort_by_key(|d| d[1..].parse::<u32>().unwrap());
    assert_eq!(got, (0..n).map(|i| format!("m{i}")).collect::<Vec<_>>(), "each once");
}

/// How many messages each node's source accepted.
pub async fn accepted_by(a: &TestServer, b: &TestServer) -> (u64, u64) {
    let (sa, sb) = (source_stats(&a.url("")).await, source_stats(&b.url("")).await);
    (sa["accepted"].as_u64().unwrap(), sb["accepted"].as_u64().unwrap())
}

/// A source that trusts the broker and one that must be refused: the first connects and serves
/// a subscriber of `channel`, returned with them.
pub async fn trusted_and_refused(good: SourceConfig, bad: SourceConfig, channel: &str) -> (TestServer, TestServer, Sse) {
    let good = TestServer::with(|c| c.sources = vec![good]).await;
    let bad = TestServer::with(|c| c.sources = vec![bad]).await;
    connected(&good.url("")).await;
    let sub = Sse::open(&good.url(&format!("/sse/{channel}"))).await;
    super::subscribers(&good, channel, 1).await;
    (good, bad, sub)
}

/// The refused source says why and stays disconnected.
pub async fn stays_refused(server: &TestServer) {
    eventually(async || source_stats(&server.url("")).await["last_error"].is_string()).await;
    let stats = source_stats(&server.url("")).await;
    assert_eq!(stats["connected"], false, "{stats}");
}

/// The `[tls]` keys of a client certificate (`server.pem` and its key, made by
/// `support::tls::certificates`), or none.
pub fn client_cert_keys(dir: &std::path::Path, with_cert: bool) -> String {
    if !with_cert {
        return String::new();
    }
    let path = |f: &str| dir.join(f).display().to_string();
    format!("cert_file = \"{}\"\nkey_file = \"{}\"\n", path("server.pem"), path("server.key"))
}

/// A required source that lost its broker: `/healthz` answers 503 and names it.
pub async fn reported_down(url: &str, name: &str) {
    eventually(async || http().get(format!("{url}/healthz")).send().await.unwrap().status() == 503).await;
    let health: serde_json::Value = http().get(format!("{url}/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["sources_down"][0]["name"], name, "{health}");
}

/// The source is back: connected, `/healthz` ready, `accepted` messages in all, and the outage
/// kept as its last error.
pub async fn recovered(url: &str, accepted: u64) {
    connected(url).await;
    assert_eq!(http().get(format!("{url}/healthz")).send().await.unwrap().status(), 200);
    let stats = source_stats(url).await;
    assert_eq!(stats["accepted"], accepted, "{stats}");
    assert!(stats["last_error"].is_string(), "the outage was seen: {stats}");
}
