//! Subscriptions to many channels cost what they deliver: the merge of 256 channels full of
//! history holds about one write batch per connection, and replays every event once, in order.

mod support;

use herald::sse::{Item, Parser};
use serde_json::json;
use std::io::Write;
use std::time::Duration;
use support::http;
use support::process::Served;
use tokio::io::AsyncWriteExt;

const CHANNELS: usize = 256;
const PER_CHANNEL: usize = 256;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").trim().parse().unwrap();
    kb * 1024
}

fn subscription_request(channels: usize) -> String {
    let query: Vec<String> = (0..channels).map(|c| format!("channel=m{c}")).collect();
    format!("GET /sse?{}&replay=all HTTP/1.1\r\nHost: x\r\n\r\n", query.join("&"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_channel_replay_holds_one_write_batch_and_arrives_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.toml"),
        "[history]\nstore = \"memory\"\nsize = 1000\n[limits]\nmax_new_channels_per_request = 256\n",
    )
    .unwrap();
    let node = Served::start(dir.path());
    // 65,536 events of 100 bytes, interleaved across the channels, in batches of 1,000.
    let mut order = 0;
    for chunk in 0..(CHANNELS * PER_CHANNEL).div_ceil(1000) {
        let batch: Vec<serde_json::Value> = (chunk * 1000..((chunk + 1) * 1000).min(CHANNELS * PER_CHANNEL))
            .map(|n| {
                order += 1;
                json!({ "channel": format!("m{}", n % CHANNELS), "data": format!("{n:0>100}") })
            })
            .collect();
        let resp = http().post(node.url("/publish")).json(&batch).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    assert_eq!(order, CHANNELS * PER_CHANNEL);

    // Connections that ask for all of it and then do not read: each is served one write batch
    // at a time, and holds what that takes.
    let pid = node.child.id();
    let before = rss_bytes(pid);
    let addr = node.url.trim_start_matches("http://").to_owned();
    let request = subscription_request(CHANNELS);
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        idle.push(conn);
    }
    support::eventually(async || {
        let stats: serde_json::Value = http().get(node.url("/stats")).send().await.unwrap().json().await.unwrap();
        stats["totals"]["subscriptions"] == 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_connection = rss_bytes(pid).saturating_sub(before) / 20;
    let _ = writeln!(std::io::stderr(), "server memory per 256-channel replaying connection: {per_connection} bytes");
    assert!(per_connection < 512 * 1024, "a 256-channel subscription holds {per_connection} bytes of server memory");
    drop(idle);

    // And one that reads gets every event once, in publish order.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut parser = Parser::new();
    let mut next = 0usize;
    let mut rest = Vec::new();
    assert_eq!(support::chunked::read_head(&mut conn, &mut rest).await.status, 200);
    let mut body = support::chunked::Chunked { buf: rest };
    while next < CHANNELS * PER_CHANNEL {
        let chunk = body.data(&mut conn).await;
        let mut items = Vec::new();
        parser.feed(&chunk, &mut items);
        for item in items {
            if let Item::Event(ev) = item {
                assert_eq!(ev.data, format!("{next:0>100}"), "event {next}");
                next += 1;
            }
        }
    }
}
