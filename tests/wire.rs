//! The wire format as a client sees it: headers, the connect preamble, framing of multi-line
//! data, publisher fields that could inject SSE lines, and keep-alives.

mod support;

use herald::sse::Item;
use serde_json::json;
use std::time::Duration;
use support::{Sse, TestServer, http};

#[tokio::test]
async fn stream_headers_and_preamble_arrive_at_once() {
    let server = TestServer::with(|c| c.retry = Duration::from_millis(1500)).await;
    let mut sse = Sse::open(&server.url("/sse/news")).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.headers["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    // Nothing was published: the comment and retry arrive anyway, so EventSource.onopen fires.
    assert_eq!(sse.next_item().await, Some(Item::Comment("connected".into())));
    assert_eq!(sse.next_item().await, Some(Item::Retry(1500)));
}

#[tokio::test]
async fn multi_line_data_and_every_line_ending_round_trip() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse/t")).await;
    let cases = ["one line", "a\nb", "a\r\nb\rc", "trailing\n", "\nleading", "", "  spaced  ", "ünïcödé ✓", "x\n\n\ny"];
    for data in cases {
        server.publish("t", json!({ "data": data, "event": "e" })).await;
    }
    for data in cases {
        let ev = sse.next_event().await;
        assert_eq!(ev.event, "e");
        // CR and CRLF arrive as LF: SSE has no way to carry a CR in data.
        assert_eq!(ev.data, data.replace("\r\n", "\n").replace('\r', "\n"));
    }
}

#[tokio::test]
async fn json_data_is_written_compactly() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse/t")).await;
    server.publish("t", json!({ "data": { "b": [1, 2], "a": "x\ny" } })).await;
    server.publish("t", json!({ "data": 42 })).await;
    let got = sse.data(2).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&got[0]).unwrap(), json!({ "b": [1, 2], "a": "x\ny" }));
    assert!(!got[0].contains(' ') && !got[0].contains('\n'), "{}", got[0]);
    assert_eq!(got[1], "42");
}

#[tokio::test]
async fn ids_event_types_and_retry_reach_the_client() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse/t")).await;
    let assigned = server.publish("t", json!({ "data": "a" })).await;
    server.publish("t", json!({ "data": "b", "id": "order-7", "event": "created", "retry": 2500 })).await;
    server.publish("t", json!({ "data": "c", "id": 12 })).await;
    let a = sse.next_event().await;
    assert_eq!((a.event.as_str(), a.last_event_id.as_str()), ("message", assigned.as_str()));
    assert!(assigned.parse::<u64>().is_ok(), "Herald ids are decimal: {assigned}");
    loop {
        match sse.next_item().await.unwrap() {
            Item::Retry(ms) => assert_eq!(ms, 2500),
            Item::Event(b) => {
                assert_eq!((b.event.as_str(), b.data.as_str(), b.last_event_id.as_str()), ("created", "b", "order-7"));
                break;
            }
            Item::Comment(_) => {}
        }
    }
    assert_eq!(sse.next_event().await.last_event_id, "12");
}

#[tokio::test]
async fn assigned_ids_increase() {
    let server = TestServer::start().await;
    let mut last = 0u64;
    for i in 0..50 {
        let id: u64 = server.publish_data(if i % 2 == 0 { "a" } else { "b" }, "x").await.parse().unwrap();
        assert!(id > last);
        last = id;
    }
}

#[tokio::test]
async fn injected_fields_are_rejected_and_nothing_is_delivered() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse/t")).await;
    let bad = [
        json!({ "data": "x", "id": "1\ndata: injected" }),
        json!({ "data": "x", "id": "1\rdata: injected" }),
        json!({ "data": "x", "event": "a\r\nid: 9" }),
        json!({ "data": "x", "id": "nul\u{0}" }),
        json!({ "data": "x", "event": "" }),
    ];
    for body in bad {
        let resp = http().post(server.url("/sse/t")).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let err: serde_json::Value = resp.json().await.unwrap();
        assert!(err["error"].as_str().unwrap().contains("must not"), "{err}");
    }
    // Text publishing takes the same fields from the query string.
    let resp = http().post(server.url("/sse/t?event=a%0Adata:%20x")).header("content-type", "text/plain").body("x").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // A batch with one bad event is refused whole.
    let resp = http().post(server.url("/sse/t")).json(&json!([{ "data": "ok" }, { "data": "x", "id": "a\nb" }])).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("event 1"));
    server.publish_data("t", "after").await;
    assert_eq!(sse.next_event().await.data, "after");
}

#[tokio::test]
async fn data_lines_cannot_forge_fields() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse/t")).await;
    server.publish_data("t", "x\nid: 666\nevent: evil\n\ndata: forged").await;
    let ev = sse.next_event().await;
    assert_eq!(ev.event, "message");
    assert_eq!(ev.data, "x\nid: 666\nevent: evil\n\ndata: forged");
    assert_ne!(ev.last_event_id, "666");
}

#[tokio::test]
async fn text_plain_publishing() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse/t")).await;
    let resp = http()
        .post(server.url("/sse/t?event=note&id=n1"))
        .header("content-type", "text/plain; charset=utf-8")
        .body("line1\nline2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), json!({ "ids": ["n1"] }));
    let ev = sse.next_event().await;
    assert_eq!((ev.event.as_str(), ev.data.as_str(), ev.last_event_id.as_str()), ("note", "line1\nline2", "n1"));
}

#[tokio::test]
async fn keepalive_comments_on_an_idle_stream() {
    let server = TestServer::with(|c| c.keepalive_interval = Duration::from_millis(100)).await;
    let mut sse = Sse::open(&server.url("/sse/idle")).await;
    let mut keepalives = 0;
    while keepalives < 3 {
        match sse.next_item().await.unwrap() {
            Item::Comment(c) if c == "keep-alive" => keepalives += 1,
            Item::Comment(_) | Item::Retry(_) => {}
            Item::Event(e) => panic!("unexpected event {e:?}"),
        }
    }
}

#[tokio::test]
async fn a_busy_stream_gets_no_keepalive() {
    let server = TestServer::with(|c| c.keepalive_interval = Duration::from_millis(300)).await;
    let mut sse = Sse::open(&server.url("/sse/busy")).await;
    assert_eq!(sse.next_item().await, Some(Item::Comment("connected".into())));
    assert_eq!(sse.next_item().await, Some(Item::Retry(3000)));
    // An event every 20 ms for 800 ms: every 300 ms tick finds the stream has written.
    for i in 0..40 {
        server.publish_data("busy", &i.to_string()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..40 {
        match sse.next_item().await.unwrap() {
            Item::Event(e) => assert_eq!(e.data, i.to_string()),
            other => panic!("expected event {i}, got {other:?}"),
        }
    }
    // Then idle: the keep-alive comes back.
    assert_eq!(sse.next_item().await, Some(Item::Comment("keep-alive".into())));
}

#[tokio::test]
async fn keepalive_as_ping_events() {
    let server = TestServer::with(|c| {
        c.keepalive_interval = Duration::from_millis(100);
        c.ping_event = true;
    })
    .await;
    let mut sse = Sse::open(&server.url("/sse/idle")).await;
    let ev = sse.next_event().await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("ping", ""));
}

#[tokio::test]
async fn keepalive_off_sends_nothing() {
    let server = TestServer::with(|c| c.keepalive_interval = Duration::ZERO).await;
    let mut sse = Sse::open(&server.url("/sse/idle")).await;
    assert_eq!(sse.next_item().await, Some(Item::Comment("connected".into())));
    assert_eq!(sse.next_item().await, Some(Item::Retry(3000)));
    assert!(sse.next_item_within(Duration::from_millis(400)).await.is_err(), "no keep-alive expected");
}
