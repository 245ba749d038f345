//! How connections are served: HTTP/1 subscriptions go straight onto the socket (close-delimited,
//! for HTTP/1.0 as well), an error on the subscribe path leaves the connection usable for the
//! next request, HTTP/2 subscriptions go through hyper, and bytes a careless client sends after
//! subscribing change nothing.

mod support;

use futures_util::StreamExt;
use herald::sse::{Item, Parser};
use support::{TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from `stream` until `buf` contains `needle`; panics after `WAIT`.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &str) {
    tokio::time::timeout(WAIT, async {
        while !String::from_utf8_lossy(buf).contains(needle) {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before `{needle}` arrived; got:\n{}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("`{needle}` within the wait; got:\n{}", String::from_utf8_lossy(buf)));
}

#[tokio::test]
async fn http10_and_http11_streams_are_close_delimited() {
    let server = TestServer::start().await;
    for version in ["HTTP/1.0", "HTTP/1.1"] {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(format!("GET /sse/plain {version}\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        read_until(&mut conn, &mut buf, ": connected\n").await;
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-type: text/event-stream"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        support::subscribers(&server, "plain", 1).await;
        let id = server.publish_data("plain", version).await;
        read_until(&mut conn, &mut buf, &format!("id: {id}\n\n")).await;
        assert!(String::from_utf8_lossy(&buf).contains(&format!("data: {version}\n")));
    }
}

#[tokio::test]
async fn an_error_on_the_subscribe_path_keeps_the_connection_for_pipelined_requests() {
    let server = TestServer::start().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /sse?replay=bogus HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut conn, &mut buf, "\"status\":\"ok\"").await;
    let text = String::from_utf8_lossy(&buf);
    let first = text.find("HTTP/1.1 400 Bad Request\r\n").expect("the bad subscription gets 400 first");
    let second = text.find("HTTP/1.1 200 OK\r\n").expect("then the pipelined request is answered");
    assert!(first < second, "{text}");
    assert!(text.contains("replay must be"), "{text}");
    // A 404 for an unknown channel the same way, on a fresh connection, then the connection
    // goes on with a subscription.
    let server = TestServer::with(|c| c.allow_undefined_channels = false).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /sse/nope HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut conn, &mut buf, "does not exist").await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 404 Not Found\r\n"));
    conn.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    read_until(&mut conn, &mut buf, "uptime_seconds").await;
}

#[tokio::test]
async fn connection_close_on_an_error_closes() {
    let server = TestServer::start().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut buf)).await.expect("the server closes").unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("name at least one channel"), "{text}");
}

#[tokio::test]
async fn bytes_after_a_subscription_are_ignored_and_a_close_is_noticed() {
    let server = TestServer::start().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /sse/chatty HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut conn, &mut buf, ": connected\n").await;
    // Garbage, a pipelined request, a lot of it: none of it is answered or breaks the stream.
    conn.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await.unwrap();
    conn.write_all(&vec![b'z'; 256 * 1024]).await.unwrap();
    let id = server.publish_data("chatty", "still here").await;
    read_until(&mut conn, &mut buf, &format!("id: {id}\n\n")).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200 OK\r\ncontent-type: application/json"));
    // Closing our side ends the subscription without anything being published.
    drop(conn);
    support::eventually(async || server.stats().await["totals"]["subscriptions"] == 0).await;
}

#[tokio::test]
async fn http2_subscriptions_go_through_hyper() {
    let server = TestServer::start().await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = client.get(server.url("/sse/h2")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream; charset=utf-8");
    let mut body = resp.bytes_stream();
    support::subscribers(&server, "h2", 1).await;
    let id = server.publish_data("h2", "over h2").await;
    let mut parser = Parser::new();
    let event = tokio::time::timeout(WAIT, async {
        loop {
            let chunk = body.next().await.expect("stream open").unwrap();
            let mut items = Vec::new();
            parser.feed(&chunk, &mut items);
            if let Some(ev) = items.into_iter().find_map(|item| if let Item::Event(ev) = item { Some(ev) } else { None }) {
                return ev;
            }
        }
    })
    .await
    .expect("the event within the wait");
    assert_eq!((event.data.as_str(), event.last_event_id.as_str()), ("over h2", id.as_str()));
    drop(body);
    support::eventually(async || server.stats().await["totals"]["subscriptions"] == 0).await;
}
