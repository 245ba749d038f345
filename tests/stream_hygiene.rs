//! Hygiene for connections that live for hours: a subscriber whose socket stops draining is
//! cut by the write timeout, oversized request heads are refused with 431, idle keep-alive
//! connections are closed, and shutdown leaves every stream with a `retry:` hint.

mod support;

use herald::sse::Item;
use std::time::Duration;
use support::{Sse, TestServer, WAIT, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_by_the_write_timeout_and_counted() {
    let server = TestServer::with(|c| {
        c.limits.write_timeout = Duration::from_millis(500);
        c.keepalive_interval = Duration::ZERO;
    })
    .await;
    let before = herald::telemetry::counters::totals().write_timeouts;
    // A reader with the smallest receive buffer the kernel allows, that reads the response
    // head and then nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(server.addr).await.unwrap();
    stalled.write_all(b"GET /sse/slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(WAIT, stalled.read(&mut head)).await.unwrap().unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    // A reader that keeps up, on the same channel, is not affected.
    let mut reader = Sse::open(&server.url("/sse/slow")).await;
    support::subscribers(&server, "slow", 2).await;
    let data = "x".repeat(100 * 1024);
    let client = http();
    let mut published = 0;
    // Enough to fill the kernel's buffers on both ends (a few MiB on loopback), bounded.
    while published < 300 && server.stats().await["channels"]["slow"]["subscribers"] == 2 {
        let resp = client.post(server.url("/sse/slow")).json(&serde_json::json!({ "data": data })).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        published += 1;
        assert_eq!(reader.next_event().await.data.len(), data.len());
    }
    support::subscribers(&server, "slow", 1).await;
    assert!(herald::telemetry::counters::totals().write_timeouts > before, "the cut is counted");
    // The reader that kept up still gets what comes next.
    server.publish_data("slow", "after").await;
    assert_eq!(reader.next_event().await.data, "after");
}

/// Sends `raw` and returns the status of the answer (its first line is enough: a stream that
/// is served does not end).
async fn status_for(server: &TestServer, raw: &[u8]) -> String {
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        let n = tokio::time::timeout(WAIT, conn.read(&mut byte)).await.expect("an answer in time").unwrap();
        if n == 0 {
            break;
        }
        out.push(byte[0]);
    }
    String::from_utf8_lossy(&out).split(' ').nth(1).unwrap_or("").to_owned()
}

fn head_with(path: &str, fields: usize, field_len: usize) -> Vec<u8> {
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
    for i in 0..fields {
        raw.push_str(&format!("X-Field-{i}: {}\r\n", "v".repeat(field_len)));
    }
    raw.push_str("Connection: close\r\n\r\n");
    raw.into_bytes()
}

#[tokio::test]
async fn request_heads_over_the_limits_are_refused_with_431_on_every_path() {
    let server = TestServer::start().await;
    for path in ["/sse/a", "/stats"] {
        assert_eq!(status_for(&server, &head_with(path, 100, 4)).await, "431", "{path}: 100 fields (64 allowed)");
        assert_eq!(status_for(&server, &head_with(path, 1, 20_000)).await, "431", "{path}: a 20 KB head (16 KiB allowed)");
        assert_eq!(status_for(&server, &head_with(path, 60, 4)).await, "200", "{path}: within the limits");
    }
    // A head that never ends is refused once it passes the limit, not read forever.
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /sse/a HTTP/1.1\r\nX-Long: ").await.unwrap();
    let _ = conn.write_all(&vec![b'v'; 17 * 1024]).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, conn.read_to_end(&mut out)).await.expect("answered and closed");
    assert!(out.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&out));
    // Over HTTP/2, the header list is held to the same size.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let big = h2.get(server.url("/stats")).header("x-big", "v".repeat(20_000)).send().await;
    assert!(big.map(|r| r.status()).map_or(true, |s| s == 431), "a 20 KB header list over HTTP/2 is not served");
    assert_eq!(h2.get(server.url("/stats")).send().await.unwrap().status(), 200);

    // The limits are settings.
    let roomy = TestServer::with(|c| {
        c.limits.max_headers = 128;
        c.limits.max_head_size = herald::config::ByteSize::kib(32);
    })
    .await;
    assert_eq!(status_for(&roomy, &head_with("/stats", 100, 4)).await, "200");
    assert_eq!(status_for(&roomy, &head_with("/sse/a?channel=b", 1, 20_000)).await.as_str(), "200");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let server = TestServer::with(|c| c.limits.header_read_timeout = Duration::from_millis(300)).await;
    // One on the publish fast path, one on hyper's.
    let requests: [&[u8]; 2] = [
        b"POST /sse/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"data\":\"x\"}",
        b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for request in requests {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(request).await.unwrap();
        let mut out = Vec::new();
        // The answer comes, then the connection stays quiet until the server closes it.
        let closed = tokio::time::timeout(WAIT, conn.read_to_end(&mut out)).await;
        assert!(closed.is_ok(), "an idle connection is closed");
        assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    }
}

/// Every item until the stream ends.
async fn rest_of(sse: &mut Sse) -> Vec<Item> {
    let mut items = Vec::new();
    while let Some(item) = sse.next_item().await {
        items.push(item);
    }
    items
}

#[tokio::test]
async fn shutdown_leaves_each_stream_with_a_spread_retry_hint() {
    let server = TestServer::with(|c| {
        c.retry = Duration::from_secs(3);
        c.shutdown_retry = Duration::from_secs(1);
    })
    .await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut sse = Sse::open(&server.url("/sse/bye")).await;
        assert_eq!(sse.next_item().await, Some(Item::Comment("connected".into())));
        assert_eq!(sse.next_item().await, Some(Item::Retry(3000)), "the usual delay when connecting");
        streams.push(sse);
    }
    // Over HTTP/2 too.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let mut over_h2 = Sse::open_on(&h2, &server.url("/sse/bye"), &[]).await;
    assert_eq!(over_h2.next_item().await, Some(Item::Comment("connected".into())));
    assert_eq!(over_h2.next_item().await, Some(Item::Retry(3000)));
    support::subscribers(&server, "bye", 9).await;
    server.shutdown().await;
    let mut hints = Vec::new();
    for sse in streams.iter_mut().chain([&mut over_h2]) {
        let items = rest_of(sse).await;
        let retries: Vec<u64> = items.iter().filter_map(|i| if let Item::Retry(ms) = i { Some(*ms) } else { None }).collect();
        assert_eq!(retries.len(), 1, "{items:?}");
        assert!((500..1500).contains(&retries[0]), "{retries:?}");
        assert!(!items.iter().any(|i| matches!(i, Item::Event(_))), "no event is made of it: {items:?}");
        hints.push(retries[0]);
    }
    hints.sort_unstable();
    hints.dedup();
    assert!(hints.len() > 1, "the hints are spread: {hints:?}");

    // `0s`: streams end with no hint.
    let server = TestServer::with(|c| c.shutdown_retry = Duration::ZERO).await;
    let mut sse = Sse::open(&server.url("/sse/bye")).await;
    support::subscribers(&server, "bye", 1).await;
    server.shutdown().await;
    let items = rest_of(&mut sse).await;
    assert_eq!(items.iter().filter(|i| matches!(i, Item::Retry(_))).count(), 1, "only the one sent on connecting: {items:?}");
}
