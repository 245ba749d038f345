//! Replay from history: by `Last-Event-ID`, by `lastEventId`, `replay=all` and `getcache=1`;
//! the notice for ids history no longer holds; several channels on one connection.

mod support;

use serde_json::json;
use std::time::Duration;
use support::{Sse, TestServer};

async fn publish_n(server: &TestServer, channel: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let mut ids = Vec::new();
    for i in range {
        ids.push(server.publish_data(channel, &format!("m{i}")).await);
    }
    ids
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

#[tokio::test]
async fn reconnect_with_last_event_id_header_gets_exactly_the_missed_events() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse/c")).await;
    publish_n(&server, "c", 0..3).await;
    let seen = sse.events(3).await;
    drop(sse);
    publish_n(&server, "c", 3..7).await;
    let mut again = Sse::open_with(&server.url("/sse/c"), &[("Last-Event-ID", &seen[2].last_event_id)]).await;
    assert_eq!(again.data(4).await, names(3..7));
    // Then live, with nothing repeated.
    publish_n(&server, "c", 7..8).await;
    assert_eq!(again.data(1).await, names(7..8));
}

#[tokio::test]
async fn reconnect_with_last_event_id_query_parameter() {
    let server = TestServer::start().await;
    let ids = publish_n(&server, "c", 0..5).await;
    let mut sse = Sse::open(&server.url(&format!("/sse/c?lastEventId={}", ids[1]))).await;
    assert_eq!(sse.data(3).await, names(2..5));
    // The header, sent by a reconnecting EventSource, wins over the URL's id.
    let mut sse = Sse::open_with(&server.url(&format!("/sse/c?lastEventId={}", ids[0])), &[("last-event-id", &ids[3])]).await;
    assert_eq!(sse.data(1).await, names(4..5));
}

#[tokio::test]
async fn replay_all_and_getcache() {
    let server = TestServer::start().await;
    publish_n(&server, "c", 0..4).await;
    for q in ["replay=all", "getcache=1"] {
        let mut sse = Sse::open(&server.url(&format!("/sse/c?{q}"))).await;
        assert_eq!(sse.data(4).await, names(0..4), "{q}");
    }
    // Without either, a new subscriber starts live.
    let mut sse = Sse::open(&server.url("/sse/c")).await;
    publish_n(&server, "c", 4..5).await;
    assert_eq!(sse.data(1).await, names(4..5));
}

#[tokio::test]
async fn publisher_ids_resume_too() {
    let server = TestServer::start().await;
    for i in 0..4 {
        server.publish("c", json!({ "data": format!("m{i}"), "id": format!("evt-{i}") })).await;
    }
    let mut sse = Sse::open_with(&server.url("/sse/c"), &[("Last-Event-ID", "evt-1")]).await;
    assert_eq!(sse.data(2).await, names(2..4));
}

#[tokio::test]
async fn history_is_bounded_by_size() {
    let server = TestServer::with(|c| c.history.size = 3).await;
    publish_n(&server, "c", 0..10).await;
    let mut sse = Sse::open(&server.url("/sse/c?replay=all")).await;
    assert_eq!(sse.data(3).await, names(7..10));
    let stats = server.stats().await;
    assert_eq!(stats["channels"]["c"]["history_len"], 3);
    assert_eq!(stats["channels"]["c"]["published"], 10);
}

#[tokio::test]
async fn history_is_bounded_by_age() {
    let server = TestServer::with(|c| c.history.ttl = Duration::from_millis(300)).await;
    publish_n(&server, "c", 0..2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_n(&server, "c", 2..3).await;
    let mut sse = Sse::open(&server.url("/sse/c?replay=all")).await;
    assert_eq!(sse.data(1).await, names(2..3));
    sse.expect_no_event(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn evicted_id_gets_the_missed_notice_then_what_history_holds() {
    let server = TestServer::with(|c| c.history.size = 3).await;
    let ids = publish_n(&server, "c", 0..10).await;
    let mut sse = Sse::open_with(&server.url("/sse/c"), &[("Last-Event-ID", &ids[2])]).await;
    let notice = sse.next_event().await;
    assert_eq!(notice.event, "missed");
    let body: serde_json::Value = serde_json::from_str(&notice.data).unwrap();
    assert_eq!(body, json!({ "reason": "evicted", "last_event_id": ids[2], "channels": ["c"] }));
    // The notice carries no id field (this fresh parser has none), so a client's last id stays
    // what it was until real events come.
    assert_eq!(notice.last_event_id, "");
    assert_eq!(sse.data(3).await, names(7..10));
}

#[tokio::test]
async fn id_just_before_history_is_not_a_loss() {
    let server = TestServer::with(|c| c.history.size = 3).await;
    let ids = publish_n(&server, "c", 0..10).await;
    let mut sse = Sse::open_with(&server.url("/sse/c"), &[("Last-Event-ID", &ids[6])]).await;
    assert_eq!(sse.data(3).await, names(7..10));
}

#[tokio::test]
async fn unknown_id_gets_the_notice_and_all_history() {
    let server = TestServer::start().await;
    publish_n(&server, "c", 0..2).await;
    for bad in ["no-such-id", "99999999999999999999", "007"] {
        let mut sse = Sse::open_with(&server.url("/sse/c"), &[("Last-Event-ID", bad)]).await;
        let notice = sse.next_event().await;
        assert_eq!(notice.event, "missed", "{bad}");
        assert!(notice.data.contains("\"reason\":\"unknown\""), "{bad}: {}", notice.data);
        assert_eq!(sse.data(2).await, names(0..2));
    }
}

#[tokio::test]
async fn several_channels_on_one_connection_in_publish_order() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse?channel=a&channel=b&channel=c")).await;
    for i in 0..30 {
        let ch = ["a", "b", "c", "elsewhere"][i % 4];
        server.publish(ch, json!({ "data": format!("{ch}{i}"), "event": ch })).await;
    }
    let got = sse.events(23).await;
    let want: Vec<String> = (0..30).filter(|i| i % 4 != 3).map(|i| format!("{}{i}", ["a", "b", "c"][i % 4])).collect();
    assert_eq!(got.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), want);
    // The event type tells channels apart when publishers set it.
    assert!(got.iter().all(|e| e.data.starts_with(&e.event)));
}

#[tokio::test]
async fn an_event_for_several_channels_arrives_once() {
    let server = TestServer::start().await;
    let mut both = Sse::open(&server.url("/sse?channel=a&channel=b")).await;
    let mut only_b = Sse::open(&server.url("/sse/b")).await;
    let resp = support::http()
        .post(server.url("/publish"))
        .json(&json!([{ "channels": ["a", "b"], "data": "shared" }, { "channel": "a", "data": "next" }]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(both.data(2).await, ["shared", "next"]);
    assert_eq!(only_b.data(1).await, ["shared"]);
    // Replay of both channels has it once too.
    let mut replay = Sse::open(&server.url("/sse?channel=a&channel=b&replay=all")).await;
    assert_eq!(replay.data(2).await, ["shared", "next"]);
}

#[tokio::test]
async fn multi_channel_resume_by_one_id() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(server.publish_data(if i % 2 == 0 { "a" } else { "b" }, &format!("m{i}")).await);
    }
    let mut sse = Sse::open_with(&server.url("/sse?channel=a&channel=b"), &[("Last-Event-ID", &ids[2])]).await;
    assert_eq!(sse.data(3).await, names(3..6));
}

#[tokio::test]
async fn replayed_then_live_without_seam_while_publishing() {
    let server = std::sync::Arc::new(TestServer::start().await);
    let ids = publish_n(&server, "c", 0..50).await;
    let publisher = {
        let server = server.clone();
        tokio::spawn(async move { publish_n(&server, "c", 50..250).await })
    };
    let mut sse = Sse::open_with(&server.url("/sse/c"), &[("Last-Event-ID", &ids[9])]).await;
    assert_eq!(sse.data(240).await, names(10..250));
    publisher.await.unwrap();
    sse.expect_no_event(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn global_memory_cap_evicts_the_oldest_events_hub_wide() {
    let server = TestServer::with(|c| c.history.max_memory = herald::config::ByteSize::kib(64)).await;
    let payload = "x".repeat(1000);
    // The old channel's events come first, so they are the first to go.
    let old_ids: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(server.publish_data("old", &payload).await);
        }
        v
    };
    for i in 0..100 {
        server.publish_data(&format!("new/{}", i % 5), &payload).await;
    }
    let stats = server.stats().await;
    let bytes = stats["totals"]["history_bytes"].as_u64().unwrap();
    assert!(bytes <= 64 * 1024, "history within the cap: {bytes}");
    assert!(bytes >= 48 * 1024, "eviction stops near the low-water mark: {bytes}");
    assert!(stats["channels"]["old"]["history_len"].as_u64().unwrap_or(0) == 0, "{stats}");
    assert!(stats["channels"]["new/4"]["history_len"].as_u64().unwrap() > 0);
    // A client resuming in the old channel is told events were lost.
    let mut sse = Sse::open_with(&server.url("/sse/old"), &[("Last-Event-ID", &old_ids[3])]).await;
    assert_eq!(sse.next_event().await.event, "missed");
}

/// The first item of a stream that is an event, or `None` when nothing arrives within `quiet`.
async fn first_event_within(sse: &mut Sse, quiet: Duration) -> Option<herald::sse::MessageEvent> {
    loop {
        match sse.next_item_within(quiet).await {
            Ok(Some(herald::sse::Item::Event(ev))) => return Some(ev),
            Ok(Some(_)) => continue,
            Ok(None) | Err(()) => return None,
        }
    }
}

#[tokio::test]
async fn resuming_from_0_on_a_fresh_channel_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with(|c| {
        c.history.store = herald::config::StoreKind::Disk;
        c.history.dir = dir.path().to_owned();
    })
    .await;
    let mut sse = Sse::open_with(&server.url("/sse/fresh"), &[("Last-Event-ID", "0")]).await;
    publish_n(&server, "fresh", 0..1).await;
    let first = first_event_within(&mut sse, Duration::from_secs(5)).await.unwrap();
    assert_eq!((first.event.as_str(), first.data.as_str()), ("message", "m0"), "no missed notice: nothing was ever evicted");
}

#[tokio::test]
async fn a_channel_reclaimed_while_idle_is_no_false_loss() {
    let server = TestServer::start().await;
    let ids = publish_n(&server, "aa", 0..1).await;
    // `bb` is made by this subscription and never holds an event.
    let sse = Sse::open(&server.url("/sse?channel=aa&channel=bb")).await;
    support::subscribers(&server, "bb", 1).await;
    drop(sse);
    publish_n(&server, "elsewhere", 1..2).await;
    // The idle sweep reclaims `bb` (no subscriber, no history).
    support::eventually(async || server.stats().await["channels"].get("bb").is_none()).await;
    let mut sse = Sse::open_with(&server.url("/sse?channel=aa&channel=bb"), &[("Last-Event-ID", &ids[0])]).await;
    publish_n(&server, "aa", 2..3).await;
    let first = first_event_within(&mut sse, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.data, "m2", "no missed notice: bb never lost an event ({first:?})");
}

#[tokio::test]
async fn a_channel_reclaimed_after_its_events_expired_still_says_so() {
    let server = TestServer::with(|c| c.history.ttl = Duration::from_millis(200)).await;
    let ids = publish_n(&server, "gone", 0..2).await;
    // Its events expire, then the sweep reclaims it; made again, it remembers its floor.
    support::eventually(async || server.stats().await["channels"].get("gone").is_none()).await;
    let mut sse = Sse::open_with(&server.url("/sse/gone"), &[("Last-Event-ID", &ids[0])]).await;
    let notice = first_event_within(&mut sse, Duration::from_secs(5)).await.unwrap();
    assert_eq!(notice.event, "missed");
    assert!(notice.data.contains("\"reason\":\"evicted\""), "{}", notice.data);
}
