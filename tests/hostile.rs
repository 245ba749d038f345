//! What a hostile or careless client sends: each gets a clear answer, nothing accepted is lost,
//! nothing is read two ways. Request framing (signed lengths, `Transfer-Encoding` beside
//! `Content-Length`, heads sent a byte at a time), bodies that stall on either connection path,
//! ids and data the publisher expects back exactly, and configuration the build cannot serve.

mod support;

use herald::sse::{Item, Parser};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;
use support::process::herald;
use support::{Sse, TestServer, WAIT, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `raw` and reads until the server closes or `WAIT` passes; returns what came back.
async fn exchange(server: &TestServer, raw: &[u8]) -> String {
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(raw).await.unwrap();
    read_to_close(&mut conn).await
}

async fn read_to_close(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, conn.read_to_end(&mut out)).await.expect("the server closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> &str {
    response.split(' ').nth(1).unwrap_or("")
}

#[tokio::test]
async fn a_signed_content_length_is_refused_on_every_path() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse/c")).await;
    support::subscribers(&server, "c", 1).await;
    let body = r#"{"data":"smuggled"}"#;
    for path in ["/sse/c", "/publish?channel=c"] {
        let raw =
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: +{}\r\n\r\n{body}", body.len());
        let answer = exchange(&server, raw.as_bytes()).await;
        assert_eq!(status_of(&answer), "400", "{path}: {answer}");
    }
    sse.expect_no_event(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn transfer_encoding_beside_content_length_is_refused_and_the_connection_closed() {
    let server = TestServer::start().await;
    for (path, order) in [("/sse/c", 0), ("/sse/c", 1), ("/publish", 0), ("/stats", 1)] {
        let framing = ["Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"][order];
        let raw =
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n{framing}\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n");
        let answer = exchange(&server, raw.as_bytes()).await;
        assert_eq!(status_of(&answer), "400", "{path}: {answer}");
        assert!(answer.contains("Transfer-Encoding and Content-Length"), "{answer}");
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "nothing after it is served: {answer}");
    }
    assert_eq!(server.stats().await["totals"]["published"], 0);
}

#[tokio::test]
async fn a_head_sent_one_byte_at_a_time_is_served() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse/slow")).await;
    support::subscribers(&server, "slow", 1).await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let raw = b"POST /sse/slow HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
    for b in raw.iter() {
        conn.write_all(&[*b]).await.unwrap();
    }
    let answer = read_to_close(&mut conn).await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert_eq!(sse.data(1).await, ["hi"]);
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_on_every_path() {
    let server = TestServer::with(|c| c.limits.body_read_timeout = Duration::from_millis(300)).await;
    let big = 100 * 1024;
    let heads = [
        // Read on the socket.
        "POST /sse/c HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nabc".to_owned(),
        // Over 64 KiB: hyper's.
        format!("POST /sse/c HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {big}\r\n\r\nabc"),
        // Chunked: hyper's.
        "POST /sse/c HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n".to_owned(),
        // HTTP/1.0: hyper's.
        "POST /publish?channel=c HTTP/1.0\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nabc".to_owned(),
    ];
    for head in heads {
        let started = std::time::Instant::now();
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        // The client then sends nothing more, and keeps its side open.
        let answer = read_to_close(&mut conn).await;
        assert_eq!(status_of(&answer), "408", "{head:?}: {answer}");
        assert!(answer.contains("limits.body_read_timeout"), "{answer}");
        assert!(started.elapsed() < WAIT, "answered after the timeout, not at the end of the wait");
    }
    assert_eq!(server.stats().await["totals"]["published"], 0);
}

#[tokio::test]
async fn non_ascii_ids_come_back_and_resume_on_both_connection_paths() {
    let server = TestServer::start().await;
    for (i, id) in ["café", "ü-1", "日本"].iter().enumerate() {
        server.publish("u", json!({ "id": id, "data": format!("m{i}") })).await;
    }
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    for client in [http(), h2] {
        // The header as a browser sends it back: the UTF-8 bytes of the id it received.
        let value = reqwest::header::HeaderValue::from_bytes("café".as_bytes()).unwrap();
        let resp = client.get(server.url("/sse/u")).header("last-event-id", value).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.bytes_stream();
        let mut parser = Parser::new();
        let mut got = Vec::new();
        while got.len() < 2 {
            let chunk = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut body)).await.unwrap().unwrap().unwrap();
            let mut out = Vec::new();
            parser.feed(&chunk, &mut out);
            got.extend(out.into_iter().filter_map(|i| if let Item::Event(e) = i { Some((e.last_event_id, e.data)) } else { None }));
        }
        assert_eq!(got, [("ü-1".to_owned(), "m1".to_owned()), ("日本".to_owned(), "m2".to_owned())]);
    }
    // Bytes that are not UTF-8 are a clear 400.
    let value = reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap();
    let resp = http().get(server.url("/sse/u")).header("last-event-id", value).send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn ids_and_json_data_arrive_exactly_as_published() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse/exact")).await;
    support::subscribers(&server, "exact", 1).await;
    let body = r#"[{"id": 123456789012345678901234567890, "data": {"z": 1, "a": [0.1000, 123456789012345678901234567890], "s": "\u00e9 \"q\""}},
                  {"data": 12.50}, {"data": "plain \u00e9"}]"#;
    let resp = http().post(server.url("/sse/exact")).header("content-type", "application/json").body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["ids"][0], "123456789012345678901234567890", "a numeric id keeps its digits");
    let got = sse.events(3).await;
    assert_eq!(got[0].last_event_id, "123456789012345678901234567890");
    assert_eq!(got[0].data, r#"{"z":1,"a":[0.1000,123456789012345678901234567890],"s":"\u00e9 \"q\""}"#);
    assert_eq!(got[1].data, "12.50");
    assert_eq!(got[2].data, "plain é", "a string is its text");
}

#[test]
fn bus_urls_the_build_cannot_serve_stop_start_up_and_tokens_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["rediss://h:6379", "tls://h:4222", "http://h"] {
        let out = herald(dir.path()).args(["config"]).env("HERALD_CLUSTER__BUS", url).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("cluster.bus"), "{url}: {err}");
    }
    let out = herald(dir.path()).args(["config"]).env("HERALD_CLUSTER__BUS", "nats://s3cr3t@127.0.0.1:4222").output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && printed.contains("nats://<redacted>@127.0.0.1:4222") && !printed.contains("s3cr3t"), "{printed}");
}

#[test]
fn at_the_file_descriptor_limit_the_accept_loop_backs_off_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_herald");
    // A hub allowed 40 open files, then 150 connections at once.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n 40 && exec {bin} serve --listen 127.0.0.1:0 --log-level info"))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HERALD_DEBUG__LISTEN", "")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server logs until it listens").unwrap();
        if let Some(i) = line.find("addr=") {
            break line[i + 5..].split_whitespace().next().unwrap().to_owned();
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let conns: Vec<std::net::TcpStream> = (0..150).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect();
    std::thread::sleep(Duration::from_secs(2));
    let logged: Vec<String> = rx.try_iter().collect();
    let warnings = logged.iter().filter(|l| l.contains("accept failed")).count();
    assert_eq!(warnings, 1, "one warning for the whole run of failures, not one per try: {logged:#?}");
    drop(conns);
    let _ = child.kill();
    let _ = child.wait();
}
