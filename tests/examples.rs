//! Every configuration in `examples/config/` starts `herald serve` and serves: health on the
//! public and debug listeners, a publish that a subscriber receives (with a token where the
//! example asks for one), and every broker source connected. A new file there is tested
//! without being named here.

mod support;

use std::path::{Path, PathBuf};
use support::WAIT;
use support::process::{Served, herald};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    files
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An HS256 token for `channels`, signed with the secret the JWT example reads.
fn token(secret: &str, channels: &[&str]) -> String {
    let claims = serde_json::json!({ "sub": "example-user", "channels": channels, "exp": 4_000_000_000u64 });
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_configuration_starts_and_serves() {
    let files = examples();
    assert!(files.len() >= 6, "examples/config holds the examples: {files:?}");
    // The JetStream source of sources.toml reads a stream its operator made.
    let nats = async_nats::connect("127.0.0.1:4222").await.expect("NATS with JetStream on 127.0.0.1:4222 (.ci/run starts it)");
    async_nats::jetstream::new(nats)
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "HERALD_EXAMPLE".into(),
            subjects: vec!["example.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let client = reqwest::Client::builder().tls_danger_accept_invalid_certs(true).timeout(WAIT).build().unwrap();
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let table: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap_or_else(|e| panic!("{name}: {e}"));
        let dir = tempfile::tempdir().unwrap();
        let debug_port = free_port();
        let secret = "example-secret-of-enough-length";
        let mut command = herald(dir.path());
        command.env("HERALD_DEBUG__LISTEN", format!("127.0.0.1:{debug_port}")).env("JWT_SECRET", secret);
        let served = tokio::task::spawn_blocking(move || Served::spawn(command, &["--config", file.to_str().unwrap()])).await.unwrap();
        let tls = table.get("tls").and_then(|t| t.get("enabled")).and_then(toml::Value::as_bool) == Some(true);
        let base = if tls { served.url.replace("http://", "https://") } else { served.url.clone() };

        // Ready once the store is open and the bus (in a cluster) connected.
        support::eventually(async || client.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status() == 200)).await;
        let debug = format!("http://127.0.0.1:{debug_port}");
        support::eventually(async || client.get(format!("{debug}/readyz")).send().await.is_ok_and(|r| r.status() == 200)).await;

        // A subscriber gets what is published, with a token where the example asks for one.
        let jwt =
            table.get("access").and_then(|a| a.get("subscribe")).and_then(|s| s.get("jwt")).and_then(toml::Value::as_bool) == Some(true);
        let url = format!("{base}/sse/example-{name}");
        if jwt {
            let refused = client.get(&url).send().await.unwrap();
            assert_eq!(refused.status(), 401, "{name}: no token");
        }
        let headers: Vec<(String, String)> =
            if jwt { vec![("Authorization".into(), format!("Bearer {}", token(secret, &["example-*"])))] } else { Vec::new() };
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut sse = support::Sse::open_on(&client, &url, &headers).await;
        assert_eq!(sse.status, 200, "{name}: subscribe");
        support::eventually(async || {
            let stats: serde_json::Value = match client.get(format!("{base}/stats")).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => return false,
            };
            stats["totals"]["subscriptions"] == 1
                && stats["sources"].as_array().is_none_or(|sources| sources.iter().all(|s| s["connected"] == true))
        })
        .await;
        let published = client.post(&url).json(&serde_json::json!({ "data": format!("hello from {name}") })).send().await.unwrap();
        assert_eq!(published.status(), 200, "{name}: publish");
        assert_eq!(sse.next_event().await.data, format!("hello from {name}"), "{name}");
        drop(served);
    }
}
