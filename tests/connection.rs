//! How connections are served: HTTP/1 subscriptions go straight onto the socket (chunked over
//! HTTP/1.1, close-delimited over HTTP/1.0), an error on the subscribe path leaves the
//! connection usable for the next request, HTTP/2 subscriptions go through hyper, bytes a careless client sends after
//! subscribing change nothing, and HTTP/1.1 publishes are served on the socket too (pipelined,
//! split, refused, or cut short).

mod support;

use futures_util::StreamExt;
use herald::sse::{Item, Parser};
use support::{Sse, TestServer, WAIT};
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

/// An HTTP/1.1 stream is chunked, one chunk per write, every chunk whole SSE lines, and ends
/// with the last chunk when the hub closes; checked with a strict chunk parser on both paths
/// (the socket's and hyper's, which a request with an `Expect` field goes to: the socket path
/// leaves `100-continue` to hyper).
#[tokio::test]
async fn http11_streams_are_chunked_on_either_path() {
    let server = TestServer::start().await;
    let mut bodies = Vec::new();
    for (channel, extra) in [("socket", String::new()), ("hyper", "Expect: 100-continue\r\n".to_owned())] {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(format!("GET /sse/{channel} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let head = support::chunked::read_head(&mut conn, &mut rest).await;
        assert_eq!(head.status, 200);
        assert_eq!(head.field("transfer-encoding"), Some("chunked"), "{channel}");
        assert_eq!(head.field("content-length"), None);
        assert_eq!(head.field("content-type"), Some("text/event-stream; charset=utf-8"));
        assert!(head.field("date").is_some());
        let mut body = support::chunked::Chunked { buf: rest };
        // The preamble is one chunk of its own: whole lines, no event.
        let preamble = body.data(&mut conn).await;
        assert!(preamble.starts_with(b": connected\n") && preamble.ends_with(b"\n"), "{:?}", String::from_utf8_lossy(&preamble));
        support::subscribers(&server, channel, 1).await;
        let id = server.publish_data(channel, "one\ntwo").await;
        let chunk = String::from_utf8(body.data(&mut conn).await).unwrap();
        assert_eq!(chunk, format!("data: one\ndata: two\nid: {id}\n\n"), "one event, one chunk");
        // A burst leaves in as few chunks as the writes it took, each whole events.
        let ids: Vec<String> = futures_util::future::join_all((0..20).map(|i| {
            let server = &server;
            async move { server.publish_data(channel, &format!("b{i}")).await }
        }))
        .await;
        let mut got = String::new();
        while !got.contains(&format!("id: {}\n\n", ids.iter().max_by_key(|id| id.parse::<u64>().unwrap()).unwrap())) {
            let chunk = String::from_utf8(body.data(&mut conn).await).unwrap();
            assert!(chunk.ends_with("\n\n") && !chunk.is_empty(), "a chunk ends at an event's end: {chunk:?}");
            got.push_str(&chunk);
        }
        assert_eq!(got.matches("data: b").count(), 20);
        bodies.push((conn, body));
    }
    // Shutting down ends each body with its last chunk, then closes.
    tokio::spawn(server.shutdown());
    for (mut conn, mut body) in bodies {
        loop {
            match body.next(&mut conn).await {
                support::chunked::Chunk::Last => break,
                // A keep-alive or the like before the end is fine; whole lines all the same.
                support::chunked::Chunk::Data(data) => assert!(data.ends_with(b"\n")),
            }
        }
    }
}

/// HTTP/1.0 has no chunks: its stream runs until the connection closes, unframed.
#[tokio::test]
async fn http10_streams_are_close_delimited() {
    let server = TestServer::start().await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"GET /sse/plain HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut conn, &mut buf, ": connected\n").await;
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.contains("\r\ncontent-type: text/event-stream"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(!text.contains("content-length"), "{text}");
    let body_start = text.find("\r\n\r\n").unwrap() + 4;
    assert!(text[body_start..].starts_with(": connected\n"), "the body is the stream itself: {text}");
    support::subscribers(&server, "plain", 1).await;
    let id = server.publish_data("plain", "over 1.0").await;
    read_until(&mut conn, &mut buf, &format!("id: {id}\n\n")).await;
    assert!(String::from_utf8_lossy(&buf).ends_with(&format!("\ndata: over 1.0\nid: {id}\n\n")));
    // The end of the stream is the connection closing.
    server.shutdown().await;
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut rest)).await.expect("the server closes").unwrap();
    assert!(!String::from_utf8_lossy(&rest).contains("0\r\n"), "no chunk framing: {rest:?}");
}

/// `HEAD` on a stream answers its head and nothing else, and leaves no subscription behind.
#[tokio::test]
async fn head_answers_the_stream_head_without_a_body() {
    let server = TestServer::start().await;
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(format!("HEAD /sse/peek {version}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(WAIT, conn.read_to_end(&mut all)).await.expect("HEAD is answered and closed").unwrap();
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        let len = match response.parse(&all).unwrap() {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => panic!("a whole head: {:?}", String::from_utf8_lossy(&all)),
        };
        assert_eq!(response.code, Some(200), "{version}");
        let content_type = response.headers.iter().find(|f| f.name.eq_ignore_ascii_case("content-type")).unwrap();
        assert_eq!(content_type.value, b"text/event-stream; charset=utf-8");
        assert_eq!(len, all.len(), "no body after the head: {:?}", String::from_utf8_lossy(&all[len..]));
    }
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let resp = h2.head(server.url("/sse/peek")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 0);
    support::eventually(async || server.stats().await["totals"]["subscriptions"] == 0).await;
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

fn post(path: &str, body: &str, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}", body.len())
}

#[tokio::test]
async fn publishes_are_served_on_the_socket_pipelined_split_and_refused_alike() {
    let server = TestServer::start().await;
    let mut sub = support::Sse::open(&server.url("/sse/fast")).await;
    support::subscribers(&server, "fast", 1).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    // Two publishes and a bad one pipelined in one write, then a request that is hyper's.
    let pipelined = [
        post("/sse/fast", r#"{"data":"one"}"#, ""),
        post("/sse/fast", r#"{"data":"two"}"#, ""),
        post("/sse/fast", r#"{"data":"#, ""),
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
    ]
    .concat();
    conn.write_all(pipelined.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut conn, &mut buf, "\"status\":\"ok\"").await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let statuses: Vec<&str> = text.match_indices("HTTP/1.1 ").map(|(i, _)| &text[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "200", "400", "200"], "{text}");
    assert_eq!(sub.data(2).await, ["one", "two"]);

    // Hyper had the connection after /healthz; a fresh one for a body that arrives in pieces,
    // the head first.
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let request = post("/sse/fast", r#"{"data":"three"}"#, "");
    let (head, body) = request.split_at(request.find("\r\n\r\n").unwrap() + 4);
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    conn.write_all(&body.as_bytes()[..5]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    conn.write_all(&body.as_bytes()[5..]).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut conn, &mut buf, "\"ids\"").await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200 OK\r\n"));
    assert_eq!(sub.data(1).await, ["three"]);

    // Keep-alive goes on after an answer; `Connection: close` ends it after the answer.
    conn.write_all(post("/sse/fast", r#"{"data":"four"}"#, "Connection: close\r\n").as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut rest)).await.expect("the server closes").unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n") && rest.contains("connection: close"), "{rest}");
    assert_eq!(sub.data(1).await, ["four"]);

    // A client that stops in the middle of a body gets nothing published.
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let request = post("/sse/fast", r#"{"data":"never"}"#, "");
    let cut = request.find("\r\n\r\n").unwrap() + 4 + 5;
    conn.write_all(&request.as_bytes()[..cut]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop(conn);
    server.publish_data("fast", "after").await;
    assert_eq!(sub.data(1).await, ["after"], "the cut publish was not delivered");
}

#[tokio::test]
async fn http_root_puts_every_public_route_under_a_prefix_on_every_path() {
    let server = TestServer::with(|c| c.http_root = "/events/".into()).await;
    // The socket fast path (HTTP/1.1) and hyper's (HTTP/2) both serve under the root.
    let mut fast = Sse::open(&server.url("/events/sse/rooted")).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let mut over_h2 = Sse::open_on(&h2, &server.url("/events/sse?channel=rooted"), &[]).await;
    assert_eq!((fast.status.as_u16(), over_h2.status.as_u16()), (200, 200));
    let stats: serde_json::Value = support::http().get(server.url("/events/stats")).send().await.unwrap().json().await.unwrap();
    assert!(stats["totals"].is_object(), "{stats}");
    support::eventually(async || {
        let stats: serde_json::Value = support::http().get(server.url("/events/stats")).send().await.unwrap().json().await.unwrap();
        stats["channels"]["rooted"]["subscribers"] == 2
    })
    .await;
    // Published on the fast path, and through /publish.
    let one = support::http().post(server.url("/events/sse/rooted")).json(&serde_json::json!({ "data": "one" })).send().await.unwrap();
    assert_eq!(one.status(), 200);
    let two = support::http()
        .post(server.url("/events/publish"))
        .json(&serde_json::json!({ "channel": "rooted", "data": "two" }))
        .send()
        .await
        .unwrap();
    assert_eq!(two.status(), 200, "{}", two.text().await.unwrap());
    for sse in [&mut fast, &mut over_h2] {
        assert_eq!(sse.data(2).await, ["one", "two"]);
    }
    assert_eq!(support::http().get(server.url("/events/healthz")).send().await.unwrap().status(), 200);
    // Outside the root, nothing is served, on either path, and the answer says why.
    for path in ["/sse/rooted", "/stats", "/eventsx/sse/rooted"] {
        let resp = support::http().get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().is_some_and(|e| e.contains(path) && e.contains("http_root")), "{path}: {body}");
        assert_eq!(h2.get(server.url(path)).send().await.unwrap().status(), 404, "{path} over HTTP/2");
    }
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"POST /sse/rooted HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"data\":\"x\"}").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(support::WAIT, raw.read_to_end(&mut out)).await.unwrap().unwrap();
    assert!(out.starts_with(b"HTTP/1.1 404"), "{}", String::from_utf8_lossy(&out));

    let mut config = herald::config::Config::default();
    for bad in ["events", "/a//b", "/a b", "/a?b"] {
        config.http_root = bad.into();
        assert!(config.validate().unwrap_err().to_string().contains("http_root"), "{bad}");
    }
    for good in ["/", "/events", "/ocs/v2.php/apps/notifications/api/v1/notifications/"] {
        config.http_root = good.into();
        config.validate().unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}
