//! The upstream SSE source: another Herald followed across its own restart (kill -9) and across
//! the downstream's, every event exactly once and in order; a plain SSE server of the test's
//! own shows the source sending its headers and `Last-Event-ID`, following `retry:`, publishing
//! an event the upstream sends again once, and reporting an upstream that refuses it; two
//! cluster nodes following one upstream publish each event once (the bus holds the ids).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::process::{Served, herald};
use support::sources::{cluster_pair, connected, data, events, source, source_stats};
use support::{Sse, TestServer, WAIT, eventually, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn publish(base: &str, channel: &str, data: &str, event: Option<&str>) {
    let body = match event {
        Some(t) => serde_json::json!({ "data": data, "event": t }),
        None => serde_json::json!({ "data": data }),
    };
    let resp = http().post(format!("{base}/sse/{channel}")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

#[tokio::test]
async fn an_upstream_herald_is_followed_across_its_restart_and_the_downstreams() {
    // The upstream: a Herald on a fixed port (so it comes back where it was), durable history.
    let up_dir = tempfile::tempdir().unwrap();
    std::fs::write(up_dir.path().join("herald.toml"), "[history]\nfsync = \"always\"\n").unwrap();
    let up_listen = format!("127.0.0.1:{}", free_port());
    let up_args = ["--config", "herald.toml"];
    let mut upstream = Served::spawn_on(herald(up_dir.path()), &up_listen, &up_args);
    let up = upstream.url.clone();
    // The downstream: its own durable history, the upstream's channel `news` into `mirror`.
    let down_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        down_dir.path().join("herald.toml"),
        format!(
            "[history]\nfsync = \"always\"\n[[sources]]\nname = \"up\"\ntype = \"sse\"\nurl = \"{up}/sse/news\"\nrequired = true\n\
             [sources.map]\nchannels = [\"mirror\"]\n"
        ),
    )
    .unwrap();
    let down_args = ["--config", "herald.toml", "--log-level", "info"];
    let mut downstream = Served::start_with(down_dir.path(), &down_args);
    connected(&downstream.url("")).await;
    let accepted = async |node: &Served, n: u64| eventually(async || source_stats(&node.url("")).await["accepted"] == n).await;
    for i in 0..5 {
        publish(&up, "news", &format!("a{i}"), (i == 0).then_some("first")).await;
    }
    accepted(&downstream, 5).await;

    // The upstream dies with no warning and comes back: the downstream resumes after its last id.
    upstream.kill_9();
    eventually(async || http().get(downstream.url("/healthz")).send().await.unwrap().status() == 503).await;
    upstream = Served::spawn_on(herald(up_dir.path()), &up_listen, &up_args);
    for i in 0..5 {
        publish(&up, "news", &format!("b{i}"), None).await;
    }
    accepted(&downstream, 10).await;

    // The downstream dies; what the upstream publishes meanwhile arrives when it is back.
    downstream.kill_9();
    for i in 0..5 {
        publish(&up, "news", &format!("c{i}"), None).await;
    }
    let downstream = Served::start_with(down_dir.path(), &down_args);
    accepted(&downstream, 5).await;
    let mut sse = Sse::open_with(&downstream.url("/sse/mirror"), &[("last-event-id", "0")]).await;
    let got = events(&mut sse, 15).await;
    let want: Vec<String> = ["a", "b", "c"].iter().flat_map(|p| (0..5).map(move |i| format!("{p}{i}"))).collect();
    assert_eq!(got.iter().map(|(_, _, d)| d.clone()).collect::<Vec<_>>(), want, "each once, in order");
    assert_eq!(got[0].1, "first", "the event type passes through");
    assert_eq!(got[1].1, "message");
    sse.expect_no_event(Duration::from_millis(500)).await;
    drop(upstream);
}

/// What a plain SSE server of the test's own saw of each request: its `Last-Event-ID` and
/// `Authorization`.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

/// Serves connection `n` (from 0) with `script(n)` (a whole HTTP response) and closes it.
async fn plain_upstream(script: impl Fn(usize) -> String + Send + Sync + 'static) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let kept = seen.clone();
    tokio::spawn(async move {
        for n in 0..100 {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => head.extend_from_slice(&buf[..k]),
                }
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(|v| v.trim().to_owned()));
            kept.lock().unwrap().push((header("last-event-id"), header("authorization")));
            let _ = socket.write_all(script(n).as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (url, seen)
}

fn stream(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}")
}

#[tokio::test]
async fn the_source_sends_last_event_id_follows_retry_and_publishes_a_replayed_event_once() {
    let (url, seen) = plain_upstream(|n| match n {
        0 => "HTTP/1.1 401 Unauthorized\r\ncontent-length: 6\r\nconnection: close\r\n\r\nwho?\r\n".into(),
        1 => stream("retry: 50\n\nid: 1\ndata: a\n\nid: 2\nevent: order\ndata: b\n\n"),
        // Sends event 2 again, then 3, then one without an id of its own.
        2 => stream("id: 2\nevent: order\ndata: b\n\nid: 3\ndata: c\n\ndata: d\n\n"),
        _ => stream(": nothing new\n\n"),
    })
    .await;
    // A credential in the query never shows in the errors /stats and /healthz carry.
    let config = source(&format!(
        "name = \"plain\"\ntype = \"sse\"\nurl = \"{url}?access_token=tok-in-query\"\nheaders = {{ authorization = \"Bearer s3cret\" }}\n[map]\nchannels = [\"copy\"]"
    ));
    let server = TestServer::with(|c| c.sources = vec![config]).await;
    // The refusal is reported, then the next attempt goes through.
    eventually(async || source_stats(&server.url("")).await["last_error"].as_str().is_some_and(|e| e.contains("401"))).await;
    let error = source_stats(&server.url("")).await["last_error"].to_string();
    assert!(!error.contains("tok-in-query") && error.contains("/events"), "{error}");
    let mut sse = Sse::open_with(&server.url("/sse/copy"), &[("last-event-id", "0")]).await;
    let got = events(&mut sse, 4).await;
    let got: Vec<(&str, &str)> = got.iter().map(|(_, t, d)| (t.as_str(), d.as_str())).collect();
    assert_eq!(got, [("message", "a"), ("order", "b"), ("message", "c"), ("message", "d")]);
    // 50 ms between reconnects: several within the wait (3 s each without `retry:` would not).
    tokio::time::timeout(WAIT, async {
        while seen.lock().unwrap().len() < 8 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the upstream's retry: is followed");
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|(_, auth)| auth.as_deref() == Some("bearer s3cret")), "{seen:?}");
    assert_eq!(seen[1].0, None, "the first stream starts with no id");
    assert_eq!(seen[2].0.as_deref(), Some("2"));
    assert_eq!(seen[3].0.as_deref(), Some("3"), "an event without an id keeps the one before it");
    sse.expect_no_event(Duration::from_millis(300)).await;
    let stats = source_stats(&server.url("")).await;
    assert_eq!((stats["accepted"].as_u64(), stats["duplicates"].as_u64()), (Some(4), Some(1)), "{stats}");
    assert_eq!(data(&mut Sse::open_with(&server.url("/sse/copy"), &[("last-event-id", "0")]).await, 4).await, ["a", "b", "c", "d"]);
    server.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_is_not_an_event_stream_is_reported() {
    let (url, _) = plain_upstream(|_| "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\n\r\n<html></html>".into()).await;
    let config = source(&format!("name = \"html\"\ntype = \"sse\"\nurl = \"{url}\"\n[map]\nchannels = [\"copy\"]"));
    let server = TestServer::with(|c| c.sources = vec![config]).await;
    eventually(async || source_stats(&server.url("")).await["last_error"].as_str().is_some_and(|e| e.contains("text/html"))).await;
    assert_eq!(source_stats(&server.url("")).await["connected"], false);
    server.shutdown().await;
}

#[tokio::test]
async fn two_cluster_nodes_following_one_upstream_publish_each_event_once() {
    let upstream = TestServer::with(|_| {}).await;
    let config =
        source(&format!("name = \"mirror\"\ntype = \"sse\"\nurl = \"{}\"\n[map]\nchannels = [\"copy\"]", upstream.url("/sse/news")));
    let (a, b) = cluster_pair(config.clone(), config.clone()).await;
    support::subscribers(&upstream, "news", 2).await;
    let mut on_b = Sse::open(&b.url("/sse/copy")).await;
    support::subscribers(&b, "copy", 1).await;
    for i in 0..20 {
        upstream.publish_data("news", &format!("e{i}")).await;
    }
    assert_eq!(data(&mut on_b, 20).await, (0..20).map(|i| format!("e{i}")).collect::<Vec<_>>(), "each once, in order");
    on_b.expect_no_event(Duration::from_millis(500)).await;
    // Both nodes read every event; the bus took each id once.
    let (sa, sb) = (source_stats(&a.url("")).await, source_stats(&b.url("")).await);
    let n = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap();
    assert_eq!((n(&sa, "accepted") + n(&sb, "accepted"), n(&sa, "duplicates") + n(&sb, "duplicates")), (20, 20), "{sa} {sb}");
    a.shutdown().await;
    b.shutdown().await;
    upstream.shutdown().await;
}

#[tokio::test]
async fn a_malformed_upstream_event_is_rejected_and_the_next_arrives() {
    // The upstream's data are Herald events naming their channel; one is not.
    let (url, _) = plain_upstream(|n| match n {
        0 => stream(concat!(
            "id: 1\ndata: {\"channel\": \"orders\", \"data\": \"first\"}\n\n",
            "id: 2\ndata: not an event\n\n",
            "id: 3\ndata: {\"channel\": \"orders\", \"data\": \"second\", \"event\": \"paid\"}\n\n",
        )),
        _ => stream(": idle\n\n"),
    })
    .await;
    let config = source(&format!("name = \"herald-format\"\ntype = \"sse\"\nurl = \"{url}\"\n[map]\nformat = \"herald\""));
    let server = TestServer::with(|c| c.sources = vec![config]).await;
    let mut sse = Sse::open_with(&server.url("/sse/orders"), &[("last-event-id", "0")]).await;
    let got = events(&mut sse, 2).await;
    assert_eq!(got.iter().map(|(_, t, d)| (t.as_str(), d.as_str())).collect::<Vec<_>>(), [("message", "first"), ("paid", "second")]);
    let stats = source_stats(&server.url("")).await;
    assert_eq!((stats["accepted"].as_u64(), stats["rejected"].as_u64()), (Some(2), Some(1)), "{stats}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_never_ends_an_event_is_cut_off() {
    // 1 MB of data lines and no blank line: the parser would buffer it all.
    let (url, _) = plain_upstream(|_| {
        stream(&"data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n".repeat(10_000))
    })
    .await;
    let config = source(&format!("name = \"endless\"\ntype = \"sse\"\nurl = \"{url}\"\n[map]\nchannels = [\"copy\"]"));
    let server = TestServer::with(|c| c.sources = vec![config]).await;
    eventually(async || source_stats(&server.url("")).await["last_error"].as_str().is_some_and(|e| e.contains("without ending an event")))
        .await;
    assert_eq!(source_stats(&server.url("")).await["accepted"], 0);
    server.shutdown().await;
}
