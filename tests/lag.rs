//! A subscriber that stops reading: the publisher and the other subscribers do not notice, and
//! when it reads again it is told exactly how many events it lost (or is disconnected).

mod support;

use herald::config::LagPolicy;
use herald::sse::Item;
use std::time::Duration;
use support::{Sse, TestServer};

const EVENTS: usize = 1000;
const EVENT_BYTES: usize = 16 * 1024;

async fn run(policy: LagPolicy) -> (Vec<Item>, TestServer) {
    let server = TestServer::with(|c| {
        c.history.size = 100;
        c.lag_policy = policy;
        c.keepalive_interval = Duration::ZERO;
    })
    .await;
    let mut stuck = Sse::open(&server.url("/sse/lag")).await;
    let mut healthy = Sse::open(&server.url("/sse/lag")).await;
    let reader = tokio::spawn(async move {
        let got = healthy.data(EVENTS).await;
        assert_eq!(got, (0..EVENTS).map(|i| format!("{i:0>8}{}", "x".repeat(EVENT_BYTES - 8))).collect::<Vec<_>>());
    });
    // 16 MB through a subscriber that reads nothing: far more than socket and connection buffers.
    for i in 0..EVENTS {
        server.publish_data("lag", &format!("{i:0>8}{}", "x".repeat(EVENT_BYTES - 8))).await;
    }
    reader.await.expect("the healthy subscriber got every event in order");
    let stats = server.stats().await;
    assert!(stats["totals"]["history_bytes"].as_u64().unwrap() < 3 * 1024 * 1024, "history stays bounded: {stats}");
    // Now the stuck subscriber reads again.
    let mut items = Vec::new();
    while let Ok(Some(item)) = stuck.next_item_within(Duration::from_secs(2)).await {
        let last = matches!(&item, Item::Event(e) if e.data.starts_with(&format!("{:0>8}", EVENTS - 1)));
        items.push(item);
        if last {
            break;
        }
    }
    (items, server)
}

fn seq(data: &str) -> usize {
    data[..8].parse().unwrap()
}

#[tokio::test]
async fn a_stuck_subscriber_is_told_exactly_what_it_lost() {
    let (items, _server) = run(LagPolicy::Notify).await;
    let mut expected_next = 0usize;
    let mut lag_notices = 0;
    for item in &items {
        let Item::Event(ev) = item else { continue };
        if ev.event == "error" {
            let n: usize = ev.data.strip_prefix("lagged: ").and_then(|s| s.strip_suffix(" messages skipped")).unwrap().parse().unwrap();
            expected_next += n;
            lag_notices += 1;
        } else {
            // Every event is either delivered in order or counted in a lag notice.
            assert_eq!(seq(&ev.data), expected_next);
            expected_next += 1;
        }
    }
    assert!(lag_notices >= 1, "the subscriber should have lagged");
    assert_eq!(expected_next, EVENTS, "delivered + skipped = published");
}

#[tokio::test]
async fn lag_policy_disconnect_ends_the_stream_after_the_notice() {
    let (items, _server) = run(LagPolicy::Disconnect).await;
    let events: Vec<_> = items.iter().filter_map(|i| if let Item::Event(e) = i { Some(e) } else { None }).collect();
    let notice = events.last().expect("at least the notice");
    assert_eq!(notice.event, "error");
    assert!(notice.data.starts_with("lagged: "), "{}", notice.data);
    // In order up to the notice, and nothing after it.
    for (i, ev) in events[..events.len() - 1].iter().enumerate() {
        assert_eq!(seq(&ev.data), i);
    }
}
