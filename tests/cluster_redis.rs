//! Cluster mode over the local Redis: three nodes on different ports sharing one stream. Needs
//! Redis on 127.0.0.1:6379 (`.ci/run` starts it); each test uses its own stream key.

mod support;

use herald::sse::{Item, MessageEvent};
use serde_json::json;
use std::time::Duration;
use support::{Sse, TestServer, http};

const REDIS: &str = "redis://127.0.0.1:6379";

/// A stream key of this test's own, after checking that Redis answers.
async fn fresh_stream(test: &str) -> String {
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
        .await
        .unwrap_or_else(|_| panic!("Redis did not answer at {REDIS} within 5s: start it (redis-server --daemonize yes --port 6379)"))
        .unwrap_or_else(|e| panic!("Redis is not reachable at {REDIS}: {e}. Start it (redis-server --daemonize yes --port 6379)"));
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("herald-test:{test}:{nanos}")
}

async fn node(stream: &str) -> TestServer {
    let stream = stream.to_owned();
    TestServer::with(move |c| {
        c.cluster.bus = REDIS.into();
        c.cluster.stream = stream;
    })
    .await
}

async fn publish(node: &TestServer, channel: &str, data: &str) -> reqwest::Response {
    http().post(node.url(&format!("/sse/{channel}"))).json(&json!({ "data": data })).send().await.unwrap()
}

async fn publish_ok(node: &TestServer, channel: &str, data: &str) -> String {
    let resp = publish(node, channel, data).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json::<serde_json::Value>().await.unwrap()["ids"][0].as_str().unwrap().to_owned()
}

fn ids(events: &[MessageEvent]) -> Vec<String> {
    events.iter().map(|e| e.last_event_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_on_one_node_reaches_every_node_once_and_in_order() {
    let stream = fresh_stream("fanout").await;
    let (a, b, c) = (node(&stream).await, node(&stream).await, node(&stream).await);
    let mut subs = Vec::new();
    for n in [&a, &b, &c] {
        subs.push(Sse::open(&n.url("/sse/orders")).await);
        support::subscribers(n, "orders", 1).await;
    }
    let mut acked = Vec::new();
    for i in 0..60 {
        // Publishers on every node: one order for all.
        let on = [&a, &b, &c][i % 3];
        acked.push(publish_ok(on, "orders", &i.to_string()).await);
    }
    for sub in &mut subs {
        let got = sub.events(60).await;
        assert_eq!(ids(&got), acked, "same ids, same order, on every node");
        assert_eq!(got.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), (0..60).map(|i| i.to_string()).collect::<Vec<_>>());
        sub.expect_no_event(Duration::from_millis(300)).await;
    }
    let health: serde_json::Value = http().get(b.url("/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["bus"]["connected"], true, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_another_node_resumes_exactly() {
    let stream = fresh_stream("move").await;
    let (a, b, c) = (node(&stream).await, node(&stream).await, node(&stream).await);
    let mut on_b = Sse::open(&b.url("/sse?channel=x&channel=y")).await;
    support::subscribers(&b, "x", 1).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(publish_ok(&a, if i % 2 == 0 { "x" } else { "y" }, &i.to_string()).await);
    }
    let seen = on_b.events(10).await;
    assert_eq!(ids(&seen), acked[..10]);
    drop(on_b);
    for i in 20..30 {
        acked.push(publish_ok(&a, if i % 2 == 0 { "x" } else { "y" }, &i.to_string()).await);
    }
    // On C, from the last id B delivered: exactly the 20 missed, no notice.
    let last = seen.last().unwrap().last_event_id.clone();
    let mut on_c = Sse::open_with(&c.url("/sse?channel=x&channel=y"), &[("last-event-id", &last)]).await;
    let mut got = Vec::new();
    while got.len() < 20 {
        if let Item::Event(e) = on_c.next_item().await.unwrap() {
            assert_ne!(e.event, "missed", "resuming inside the stream's history");
            got.push(e);
        }
    }
    assert_eq!(ids(&got), acked[10..]);
    on_c.expect_no_event(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_mid_stream_catches_up() {
    let stream = fresh_stream("restart").await;
    let a = node(&stream).await;
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(publish_ok(&a, "news", &i.to_string()).await);
    }
    let c = node(&stream).await;
    c.shutdown().await;
    for i in 10..30 {
        acked.push(publish_ok(&a, "news", &i.to_string()).await);
    }
    // A new C on the same stream: its history is the stream's.
    let c = node(&stream).await;
    let mut sub = Sse::open(&c.url("/sse/news?replay=all")).await;
    assert_eq!(ids(&sub.events(30).await), acked);
    let mut resumed = Sse::open_with(&c.url("/sse/news"), &[("last-event-id", &acked[14])]).await;
    assert_eq!(ids(&resumed.events(15).await), acked[15..]);
    // And it follows what is published afterwards.
    let next = publish_ok(&a, "news", "after").await;
    assert_eq!(sub.next_event().await.last_event_id, next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_bus_while_publishing_loses_no_acknowledged_event() {
    let stream = fresh_stream("cut").await;
    let (a, b) = (node(&stream).await, node(&stream).await);
    let mut sub = Sse::open(&b.url("/sse/cut")).await;
    support::subscribers(&b, "cut", 1).await;
    let killer = tokio::spawn(async {
        let client = redis::Client::open(REDIS).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            // Every client but this one: both nodes' publishing and reading connections.
            let _: redis::Value = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query_async(&mut conn).await.unwrap();
        }
    });
    let (mut acked, mut refused) = (Vec::new(), 0);
    for i in 0..300 {
        let resp = publish(&a, "cut", &i.to_string()).await;
        match resp.status().as_u16() {
            200 => acked.push(resp.json::<serde_json::Value>().await.unwrap()["ids"][0].as_str().unwrap().to_owned()),
            503 => {
                let body = resp.text().await.unwrap();
                assert!(body.contains("cluster bus"), "{body}");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    killer.await.unwrap();
    assert!(!acked.is_empty());
    // Every acknowledged event reaches B's subscriber, in order, once. An event refused with 503
    // may have reached the stream anyway (at least once), so it may be delivered too.
    let mut got: Vec<String> = Vec::new();
    let mut pending = acked.iter().peekable();
    while pending.peek().is_some() {
        let ev = sub.next_event().await;
        assert!(!got.contains(&ev.last_event_id), "delivered twice: {}", ev.last_event_id);
        if pending.peek() == Some(&&ev.last_event_id) {
            pending.next();
        }
        got.push(ev.last_event_id);
    }
    let positions: Vec<u64> = got.iter().map(|id| id.parse().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order");
    // Both nodes are still serving, and connected again.
    support::eventually(async || http().get(a.url("/healthz")).send().await.unwrap().status() == 200).await;
    support::eventually(async || http().get(b.url("/healthz")).send().await.unwrap().status() == 200).await;
    eprintln!("{} acknowledged, {refused} refused while the bus was cut", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_bus_refuses_publishes_and_keeps_subscribers() {
    // Nothing listens on port 1.
    let n = TestServer::with(|c| c.cluster.bus = "redis://127.0.0.1:1".into()).await;
    let resp = publish(&n, "x", "lost?").await;
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(body.contains("cluster bus (redis) unavailable"), "{body}");
    let health = http().get(n.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["bus"]["connected"], false, "{health}");
    assert!(health["bus"]["last_error"].is_string(), "{health}");
    // Subscribers are still served.
    let mut sub = Sse::open(&n.url("/sse/x")).await;
    assert_eq!(sub.status, 200);
    assert_eq!(sub.next_item().await, Some(Item::Comment("connected".into())));
}
