//! Server CPU per subscription connect, without access control and with JWT (HS256 and RS256,
//! the same token every time, which the verifier remembers, and a new token every time, which
//! it must verify). Starts `herald serve` (release build) pinned to CPU 0 for each mode, opens
//! and closes `--connections` streams one after another (each waits for the `: connected`
//! preamble), and reads the server's CPU time from /proc/PID/task/*/schedstat (nanoseconds).
//!
//!     cargo build --release && taskset -c 1 cargo run --release --example connect_auth -- 5000 [path/to/herald]

#[path = "common/mod.rs"]
mod common;

use common::cpu_ns;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "connect-bench-secret-of-some-length";

struct Mode {
    name: &'static str,
    config: String,
    tokens: Vec<String>,
}

fn tokens(alg: Algorithm, distinct: bool, n: usize) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&std::fs::read(root.join("tests/fixtures/jwt/rsa_private.pem")).unwrap()).unwrap(),
        _ => EncodingKey::from_secret(SECRET.as_bytes()),
    };
    let exp = herald::hub::unix_now() + 3600;
    // The warm-up takes the first 50.
    let count = if distinct { n + 50 } else { 1 };
    (0..count)
        .map(|i| {
            let claims = serde_json::json!({"sub": format!("user-{i}"), "exp": exp, "subscribe": "bench/*"});
            jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
        })
        .collect()
}

fn modes(n: usize) -> Vec<Mode> {
    let base = "[history]\nstore = \"memory\"\n";
    let public_key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt/rsa_public.pem");
    let hs = format!("{base}[access.subscribe]\njwt = true\n[access.jwt]\nsecret = \"{SECRET}\"\n");
    let rs = format!(
        "{base}[access.subscribe]\njwt = true\n[access.jwt]\nalgorithms = [\"RS256\"]\npublic_key_file = \"{}\"\n",
        public_key.display()
    );
    vec![
        Mode { name: "no access control", config: base.into(), tokens: Vec::new() },
        Mode { name: "HS256, same token", config: hs.clone(), tokens: tokens(Algorithm::HS256, false, n) },
        Mode { name: "HS256, new token each time", config: hs, tokens: tokens(Algorithm::HS256, true, n) },
        Mode { name: "RS256, same token", config: rs.clone(), tokens: tokens(Algorithm::RS256, false, n) },
        Mode { name: "RS256, new token each time", config: rs, tokens: tokens(Algorithm::RS256, true, n) },
    ]
}

async fn connect(addr: &str, token: Option<&str>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET /sse/bench/1 HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(11).any(|w| w == b": connected") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream closed before its preamble: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args().nth(1).map_or(5000, |a| a.parse().expect("connections"));
    // The binary to measure: the second argument, else this build's.
    let herald = common::herald_binary(std::env::args().nth(2));
    let dir = tempfile::tempdir().unwrap();
    println!("{n} connects, one after another; server on CPU 0 (taskset), one worker");
    println!("{:<28} {:>12} {:>12}", "mode", "us CPU/conn", "vs none");
    let mut none = 0.0;
    for mode in modes(n) {
        let config = dir.path().join("herald.toml");
        std::fs::write(&config, &mode.config).unwrap();
        let (mut child, addr) = common::start(&herald, &config);
        // Warm up: the first connections pay for lazy set-up.
        for i in 0..50 {
            connect(&addr, mode.tokens.get(i % mode.tokens.len().max(1)).map(String::as_str)).await;
        }
        let cpu0 = cpu_ns(child.id());
        for i in 50..n + 50 {
            connect(&addr, mode.tokens.get(i % mode.tokens.len().max(1)).map(String::as_str)).await;
        }
        let per = (cpu_ns(child.id()) - cpu0) as f64 / n as f64 / 1000.0;
        if mode.tokens.is_empty() {
            none = per;
        }
        println!("{:<28} {:>12.1} {:>11.2}x", mode.name, per, per / none);
        let _ = child.kill();
        let _ = child.wait();
    }
}
