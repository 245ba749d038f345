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

/// Live events on several channels at once, with the disk store and `fsync = "always"`: each
/// event enters its window before it is durable, so a multi-channel subscriber must look again
/// at a channel whose news was not visible yet when it read. Every subscriber gets every event
/// of its channels once, in position order, whichever channel's publisher was quicker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_on_many_channels_arrive_once_and_in_order() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let server = support::TestServer::with(|c| {
        c.history.store = herald::config::StoreKind::Disk;
        c.history.dir = dir.path().to_owned();
        c.history.fsync = herald::config::FsyncMode::Always;
    })
    .await;
    let all: Vec<String> = (0..PUBLISHERS).map(|p| format!("live{p}")).collect();
    // Subscribers of every channel, of two of them, and of one with 100 idle channels beside it.
    let idle: Vec<String> = (0..100).map(|i| format!("idle{i}")).collect();
    let sets: Vec<Vec<String>> = vec![all.clone(), vec![all[1].clone(), all[3].clone()], [vec![all[2].clone()], idle].concat()];
    let mut subs = Vec::new();
    for set in &sets {
        let query: Vec<String> = set.iter().map(|c| format!("channel={c}")).collect();
        subs.push(support::Sse::open(&server.url(&format!("/sse?{}", query.join("&")))).await);
    }
    for (ch, n) in [(&all[0], 1), (&all[1], 2), (&all[2], 2), (&all[3], 2)] {
        support::subscribers(&server, ch, n).await;
    }
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let url = server.url(&format!("/sse/live{p}"));
            tokio::spawn(async move {
                for i in 0..EACH {
                    let resp = http().post(&url).json(&json!({ "data": format!("{p}:{i}") })).send().await.unwrap();
                    assert_eq!(resp.status(), 200);
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    for (set, sub) in sets.iter().zip(&mut subs) {
        let wanted: Vec<usize> = (0..PUBLISHERS).filter(|p| set.contains(&all[*p])).collect();
        let events = sub.events(wanted.len() * EACH).await;
        let ids: Vec<u64> = events.iter().map(|e| e.last_event_id.parse().expect("numeric ids")).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{set:?}: ids in position order, each once: {ids:?}");
        for p in &wanted {
            let mine: Vec<String> = events.iter().filter(|e| e.data.starts_with(&format!("{p}:"))).map(|e| e.data.clone()).collect();
            assert_eq!(mine, (0..EACH).map(|i| format!("{p}:{i}")).collect::<Vec<_>>(), "{set:?}: channel live{p}");
        }
        sub.expect_no_event(Duration::from_millis(200)).await;
    }
}
