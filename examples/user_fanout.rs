//! Events each addressed to one user among many connected users, against the same workload on
//! channels (one channel per user, one subscriber each, events each published to one channel).
//! Starts `herald serve` pinned to CPU 0 with one worker for each mode, opens the streams, then
//! publishes from four keep-alive connections for a few seconds and reports events delivered
//! per second of server CPU (from /proc/PID/task/*/schedstat), after checking that every event
//! reached its one stream.
//!
//!     cargo build --release && taskset -c 1 cargo run --release --example user_fanout -- 10000 [path/to/herald]

#[path = "common/mod.rs"]
mod common;

use common::{cpu_ns, read_events};
use jsonwebtoken::{EncodingKey, Header};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "user-fanout-bench-secret";
const PUBLISHERS: usize = 4;
const PUBLISH_FOR: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Users,
    Channels,
}

fn start(herald: &Path, dir: &Path, mode: Mode) -> (std::process::Child, String) {
    let mut config = String::from("keepalive_interval = \"0s\"\nmax_channels = 100000\n[history]\nstore = \"memory\"\nsize = 16\n");
    if mode == Mode::Users {
        config.push_str(&format!("[access.subscribe]\njwt = true\n[access.jwt]\nsecret = \"{SECRET}\"\n"));
    }
    let path = dir.join("herald.toml");
    std::fs::write(&path, config).unwrap();
    common::start(herald, &path)
}

/// Opens stream `i`.
async fn subscribe(addr: String, mode: Mode, i: usize, token: Option<String>) -> tokio::net::TcpStream {
    match mode {
        Mode::Users => common::open_stream(&addr, "/sse", &format!("Authorization: Bearer {}\r\n", token.unwrap())).await,
        Mode::Channels => common::open_stream(&addr, &format!("/sse/u/{i}"), "").await,
    }
}

async fn publisher(addr: String, mode: Mode, streams: usize, seed: u64, until: Instant) -> u64 {
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut rng = seed | 1;
    let mut sent = 0;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < until {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = (rng % streams as u64) as usize;
        let (path, body) = match mode {
            Mode::Users => ("/publish".to_owned(), format!("{{\"users\":[\"user-{i}\"],\"data\":\"event for {i}\"}}")),
            Mode::Channels => ("/publish".to_owned(), format!("{{\"channel\":\"u/{i}\",\"data\":\"event for {i}\"}}")),
        };
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        // The answer: a head with Content-Length, then that many bytes.
        let mut got = Vec::new();
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the publish connection closed");
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{head}");
                let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length:")).unwrap().trim().parse().unwrap();
                if got.len() >= end + 4 + len {
                    break;
                }
            }
        }
        sent += 1;
    }
    sent
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).map_or(10_000, |a| a.parse().expect("streams"));
    let herald = common::herald_binary(std::env::args().nth(2));
    let exp = herald::hub::unix_now() + 3600;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let tokens: Vec<String> = (0..n)
        .map(|i| jsonwebtoken::encode(&Header::default(), &serde_json::json!({"sub": format!("user-{i}"), "exp": exp}), &key).unwrap())
        .collect();
    println!("{n} streams, events each to one of them from {PUBLISHERS} publishers for {PUBLISH_FOR:?}; server on CPU 0, one worker");
    println!("{:<34} {:>12} {:>14} {:>16}", "mode", "published/s", "delivered", "delivered/CPU-s");
    for mode in [Mode::Channels, Mode::Users] {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, addr) = start(&herald, dir.path(), mode);
        let received = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::with_capacity(n);
        // Opened 256 at a time.
        for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
            let opened =
                futures_util::future::join_all(chunk.iter().map(|&i| subscribe(addr.clone(), mode, i, Some(tokens[i].clone())))).await;
            for stream in opened {
                readers.push(tokio::spawn(read_events(stream, received.clone())));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu0 = cpu_ns(child.id());
        let until = Instant::now() + PUBLISH_FOR;
        let sent: u64 =
            futures_util::future::join_all((0..PUBLISHERS).map(|p| publisher(addr.clone(), mode, n, 0x9e37_79b9 * (p as u64 + 1), until)))
                .await
                .into_iter()
                .sum();
        // Everything published is delivered before the server's CPU is read.
        let deadline = Instant::now() + Duration::from_secs(10);
        while received.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu = (cpu_ns(child.id()) - cpu0) as f64 / 1e9;
        let delivered = received.load(Ordering::Relaxed);
        assert_eq!(delivered, sent, "every event reaches its one stream");
        let name = match mode {
            Mode::Channels => "channels (one per stream, anonymous)",
            Mode::Users => "users (GET /sse with a token)",
        };
        println!("{name:<34} {:>12.0} {delivered:>14} {:>16.0}", sent as f64 / PUBLISH_FOR.as_secs_f64(), delivered as f64 / cpu);
        for r in readers {
            r.abort();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
