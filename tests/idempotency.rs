//! `Idempotency-Key` on publish requests: a retry within `dedupe_window` publishes nothing and
//! is answered with the first request's ids, also after `kill -9` and a restart (the key is
//! stored with the events); a key reused for another request is refused with 422; bad keys are
//! refused with 400 before anything is published.

mod support;

use herald::sse::Item;
use serde_json::json;
use std::time::Duration;
use support::process::Served;
use support::{Sse, TestServer, http};

async fn post(url: &str, key: Option<&str>, body: serde_json::Value) -> reqwest::Response {
    let mut req = http().post(url).json(&body);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.send().await.unwrap()
}

async fn ids(resp: reqwest::Response) -> (Vec<String>, bool) {
    assert_eq!(resp.status(), 200);
    let replayed = resp.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    let body: serde_json::Value = resp.json().await.unwrap();
    (body["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect(), replayed)
}

/// The data of every event the channel's history holds, read from the start.
async fn history(url: &str) -> Vec<String> {
    let mut sse = Sse::open_with(url, &[("last-event-id", "0")]).await;
    let mut got = Vec::new();
    loop {
        match sse.next_item_within(Duration::from_millis(500)).await {
            Ok(Some(Item::Event(e))) if e.event != "missed" => got.push(e.data),
            Ok(Some(_)) => {}
            _ => return got,
        }
    }
}

#[tokio::test]
async fn a_retried_publish_is_published_once_and_answered_with_the_first_ids() {
    let server = TestServer::start().await;
    let url = server.url("/sse/orders");
    let batch = json!([{ "data": "a" }, { "data": { "n": 1 }, "event": "e" }]);
    let (first, replayed) = ids(post(&url, Some("req-1"), batch.clone()).await).await;
    assert!(!replayed);
    assert_eq!(first.len(), 2);
    // The same events written differently are the same request.
    let same = json!([{ "event": null, "data": "a" }, { "event": "e", "data": {"n": 1} }]);
    let (again, replayed) = ids(post(&url, Some("req-1"), same).await).await;
    assert_eq!((again, replayed), (first.clone(), true));
    // Through `/publish` the key is the same key.
    let resp = post(&server.url("/publish"), Some("req-1"), json!({ "channel": "orders", "data": "other" })).await;
    assert_eq!(resp.status(), 422, "a key reused for another request");
    assert!(resp.text().await.unwrap().contains("req-1"));
    // Without a key, or with another, a request publishes again.
    ids(post(&url, None, batch.clone()).await).await;
    ids(post(&url, Some("req-2"), batch).await).await;
    assert_eq!(history(&url).await, ["a", "{\"n\":1}", "a", "{\"n\":1}", "a", "{\"n\":1}"]);
    assert_eq!(server.stats().await["totals"]["published"], 6);
}

#[tokio::test]
async fn concurrent_retries_publish_once() {
    let server = TestServer::start().await;
    let url = server.url("/sse/c");
    let tries = (0..8).map(|_| post(&url, Some("same"), json!({ "data": "x" })));
    let answers = futures_util::future::join_all(tries).await;
    let mut all = Vec::new();
    for resp in answers {
        all.push(ids(resp).await.0);
    }
    assert!(all.windows(2).all(|w| w[0] == w[1]), "every try got the one publish's ids: {all:?}");
    assert_eq!(history(&url).await, ["x"]);
}

#[tokio::test]
async fn a_refused_publish_does_not_use_up_its_key() {
    let server = TestServer::start().await;
    let url = server.url("/sse/c");
    let resp = post(&url, Some("k"), json!({ "data": "x", "id": "bad\nid" })).await;
    assert_eq!(resp.status(), 400);
    let (_, replayed) = ids(post(&url, Some("k"), json!({ "data": "x" })).await).await;
    assert!(!replayed, "the refused request published nothing, so the key was free");
    assert_eq!(history(&url).await, ["x"]);
}

#[tokio::test]
async fn bad_keys_are_refused_before_anything_is_published() {
    let server = TestServer::start().await;
    let url = server.url("/sse/c");
    for key in ["", &"k".repeat(256), "tab\there"] {
        let resp = post(&url, Some(key), json!({ "data": "x" })).await;
        assert_eq!(resp.status(), 400, "{key:?}");
        assert!(resp.text().await.unwrap().contains("Idempotency-Key"));
    }
    let resp = http().post(&url).header("idempotency-key", &b"caf\xc3\xa9"[..]).json(&json!({ "data": "x" })).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(server.stats().await["totals"]["published"], 0);
}

#[tokio::test]
async fn a_key_outlives_kill_9_with_the_disk_store_and_expires_with_its_window() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("herald.toml"), "dedupe_window = \"3s\"\n[history]\nfsync = \"always\"\n").unwrap();
    let args = ["--config", "herald.toml", "--log-level", "info"];
    let mut node = Served::start_with(dir.path(), &args);
    let (first, _) = ids(post(&node.url("/sse/d"), Some("crash-retry"), json!({ "data": "once" })).await).await;
    node.kill_9();
    let node = Served::start_with(dir.path(), &args);
    let (again, replayed) = ids(post(&node.url("/sse/d"), Some("crash-retry"), json!({ "data": "once" })).await).await;
    assert_eq!((again, replayed), (first, true), "the key came back with the events");
    assert_eq!(history(&node.url("/sse/d")).await, ["once"]);
    // Past the window it is a new request.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (_, replayed) = ids(post(&node.url("/sse/d"), Some("crash-retry"), json!({ "data": "once" })).await).await;
    assert!(!replayed);
    assert_eq!(history(&node.url("/sse/d")).await, ["once", "once"]);
}
