//! Invented channels cannot lock a hub: at `max_channels` the idle channels used longest ago are
//! reclaimed (never one with a subscriber, never a declared one); one request creates at most
//! `limits.max_new_channels_per_request`; channels made on first use age out by default; and
//! `/stats` is paged.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{Sse, TestServer, http};

async fn publish_batch(server: &TestServer, names: impl Iterator<Item = String>) -> reqwest::StatusCode {
    let batch: Vec<serde_json::Value> = names.map(|n| json!({ "channel": n, "data": "x" })).collect();
    http().post(server.url("/publish")).json(&batch).send().await.unwrap().status()
}

#[tokio::test]
async fn a_flood_of_invented_channels_reclaims_idle_ones_and_never_locks_the_hub() {
    let server = TestServer::with(|c| {
        c.max_channels = 200;
        c.channels = vec![herald::config::ChannelConfig {
            pattern: "declared".into(),
            history_size: None,
            history_ttl: None,
            cors: None,
            access: None,
        }];
    })
    .await;
    let kept = server.publish_data("watched", "before the flood").await;
    let mut watcher = Sse::open(&server.url("/sse/watched")).await;
    support::subscribers(&server, "watched", 1).await;
    let old = server.publish_data("old", "first").await;
    // 1,536 names nobody will use again, 128 per request.
    for round in 0..12 {
        let status = publish_batch(&server, (0..128).map(|i| format!("flood/{round}/{i}"))).await;
        assert_eq!(status, 200, "round {round}: the hub keeps taking new channels");
    }
    let stats = server.stats().await;
    assert!(stats["totals"]["channels"].as_u64().unwrap() <= 200, "{}", stats["totals"]);
    assert!(stats["channels"]["declared"].is_object(), "a declared channel is never reclaimed");
    assert!(stats["channels"]["watched"].is_object(), "a channel with a subscriber is never reclaimed");
    assert!(!server.publish_data("brand-new", "still works").await.is_empty());
    server.publish_data("watched", "after").await;
    assert_eq!(watcher.data(1).await, ["after"]);
    // The watched channel kept its history; the reclaimed one says what its clients missed.
    let mut replay = Sse::open_with(&server.url("/sse/watched"), &[("Last-Event-ID", &kept)]).await;
    assert_eq!(replay.data(1).await, ["after"]);
    let mut gone = Sse::open_with(&server.url("/sse/old"), &[("Last-Event-ID", &old)]).await;
    let notice = gone.next_event().await;
    assert_eq!(notice.event, "missed", "{notice:?}");
    assert!(notice.data.contains("evicted"), "{}", notice.data);
}

#[tokio::test]
async fn one_request_creates_at_most_the_configured_number_of_channels() {
    let server = TestServer::with(|c| c.limits.max_new_channels_per_request = 4).await;
    assert_eq!(publish_batch(&server, (0..5).map(|i| format!("n{i}"))).await, 400);
    assert_eq!(server.stats().await["totals"]["channels"], 0, "a refused request creates none");
    let query: Vec<String> = (0..5).map(|i| format!("channel=s{i}")).collect();
    let resp = http().get(server.url(&format!("/sse?{}", query.join("&")))).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("limits.max_new_channels_per_request"));
    // Channels that exist already do not count.
    assert_eq!(publish_batch(&server, (0..4).map(|i| format!("n{i}"))).await, 200);
    assert_eq!(publish_batch(&server, (0..8).map(|i| format!("n{i}"))).await, 200);
}

#[tokio::test]
async fn channels_made_on_first_use_age_out_by_default_and_declared_ones_do_not() {
    let server = TestServer::with(|c| {
        c.history.undeclared_ttl = Duration::from_millis(300);
        c.channels = vec![
            herald::config::ChannelConfig { pattern: "keep".into(), history_size: None, history_ttl: None, cors: None, access: None },
            herald::config::ChannelConfig {
                pattern: "forever/*".into(),
                history_size: None,
                history_ttl: Some(Duration::ZERO),
                cors: None,
                access: None,
            },
        ];
    })
    .await;
    for ch in ["invented", "keep", "forever/1"] {
        server.publish_data(ch, "x").await;
    }
    support::eventually(async || server.stats().await["channels"].get("invented").is_none()).await;
    let stats = server.stats().await;
    assert_eq!(stats["channels"]["keep"]["history_len"], 1, "declared by name: no age limit unless set");
    assert_eq!(stats["channels"]["forever/1"]["history_len"], 1, "history_ttl = 0s keeps it");
}

#[tokio::test]
async fn stats_are_paged_by_name_with_totals_over_everything() {
    let server = TestServer::start().await;
    publish_batch(&server, (0..25).map(|i| format!("p{i:02}"))).await;
    let page: serde_json::Value = http().get(server.url("/stats?limit=10")).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["totals"]["channels"], 25);
    assert_eq!(page["totals"]["history_len"], 25);
    let names: Vec<&String> = page["channels"].as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 10);
    assert_eq!(names[0], "p00");
    assert_eq!(page["next"], "p09");
    let mut seen = 10;
    let mut next = page["next"].as_str().unwrap().to_owned();
    loop {
        let page: serde_json::Value =
            http().get(server.url(&format!("/stats?limit=10&after={next}"))).send().await.unwrap().json().await.unwrap();
        seen += page["channels"].as_object().unwrap().len();
        match page["next"].as_str() {
            Some(n) => next = n.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, 25);
    for bad in ["limit=0", "limit=x", "limit=10001", "bogus=1"] {
        assert_eq!(http().get(server.url(&format!("/stats?{bad}"))).send().await.unwrap().status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn reclaimed_channels_leave_the_disk_store_too() {
    let dir = tempfile::tempdir().unwrap();
    let disk = |c: &mut herald::config::Config| {
        c.max_channels = 20;
        c.history.store = herald::config::StoreKind::Disk;
        c.history.dir = dir.path().to_owned();
    };
    let server = TestServer::with(disk).await;
    for round in 0..3 {
        assert_eq!(publish_batch(&server, (0..20).map(|i| format!("d/{round}/{i}"))).await, 200);
    }
    server.shutdown().await;
    // After a restart the store holds no more channels than the limit, and new ones still work.
    let server = TestServer::with(disk).await;
    let stats = server.stats().await;
    assert!(stats["totals"]["channels"].as_u64().unwrap() <= 20, "{}", stats["totals"]);
    assert!(stats["channels"].get("d/0/0").is_none(), "the first round was reclaimed: {}", stats["channels"]);
    assert_eq!(publish_batch(&server, (0..20).map(|i| format!("after/{i}"))).await, 200);
}
