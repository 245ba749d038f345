//! The debug listener: liveness, readiness (a required source that is down makes the node not
//! ready), the effective configuration with its secrets redacted, a bearer token in front of
//! all of it, and its default address, which a second server on the machine cannot take.

mod support;

use support::process::{Served, herald};
use support::sources::source;
use support::{TestServer, eventually, http};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The debug listener's URL once it listens (the server binds it as it starts).
async fn debug_url(port: u16) -> String {
    eventually(async || tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()).await;
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn the_debug_listener_serves_liveness_readiness_and_the_redacted_configuration() {
    let port = free_port();
    // A required source whose broker is not there: the node is alive, and not ready.
    let nowhere = free_port();
    let down =
        source(&format!("name = \"down\"\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{nowhere}\"\nsubjects = [\"x\"]\nrequired = true"));
    let server = TestServer::with(|c| {
        c.debug.listen = format!("127.0.0.1:{port}");
        c.access.jwt.secret = "jwt-s3cret".into();
        c.sources = vec![down];
    })
    .await;
    let debug = debug_url(port).await;
    let alive = http().get(format!("{debug}/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), 200);
    assert_eq!(alive.json::<serde_json::Value>().await.unwrap()["status"], "alive");
    eventually(async || http().get(format!("{debug}/readyz")).send().await.unwrap().status() == 503).await;
    let ready: serde_json::Value = http().get(format!("{debug}/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["sources_down"][0]["name"].as_str()),
        (Some("source unavailable"), Some("down")),
        "{ready}"
    );
    let config = http().get(format!("{debug}/config")).send().await.unwrap();
    assert_eq!(config.status(), 200);
    let config = config.text().await.unwrap();
    let table: toml::Table = config.parse().expect("the configuration is TOML");
    assert_eq!(table["debug"]["listen"].as_str(), Some(format!("127.0.0.1:{port}").as_str()));
    assert!(!config.contains("jwt-s3cret") && config.contains("<redacted>"), "{config}");
    // Each listener serves its own routes only.
    assert_eq!(http().get(server.url("/readyz")).send().await.unwrap().status(), 404);
    assert_eq!(http().get(format!("{debug}/stats")).send().await.unwrap().status(), 404);
    server.shutdown().await;
}

#[tokio::test]
async fn a_debug_token_guards_every_debug_route() {
    let port = free_port();
    let server = TestServer::with(|c| {
        c.debug.listen = format!("127.0.0.1:{port}");
        c.debug.token = "dbg-t0ken".into();
    })
    .await;
    let debug = debug_url(port).await;
    for route in ["/healthz", "/readyz", "/config"] {
        let none = http().get(format!("{debug}{route}")).send().await.unwrap();
        assert_eq!(
            (none.status().as_u16(), none.headers().get("www-authenticate").map(|v| v.to_str().unwrap())),
            (401, Some("Bearer")),
            "{route}"
        );
        let wrong = http().get(format!("{debug}{route}")).bearer_auth("dbg-t0keN").send().await.unwrap();
        assert_eq!(wrong.status(), 403, "{route}");
        let right = http().get(format!("{debug}{route}")).bearer_auth("dbg-t0ken").send().await.unwrap();
        assert_eq!(right.status(), 200, "{route}");
    }
    let ready: serde_json::Value =
        http().get(format!("{debug}/readyz")).bearer_auth("dbg-t0ken").send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ok");
    let config = http().get(format!("{debug}/config")).bearer_auth("dbg-t0ken").send().await.unwrap().text().await.unwrap();
    assert!(!config.contains("dbg-t0ken"), "the token itself is redacted: {config}");
    server.shutdown().await;
}

#[tokio::test]
async fn herald_serve_listens_for_debug_on_127_0_0_1_9139_and_a_second_server_says_why_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = herald(dir.path());
    cmd.env_remove("HERALD_DEBUG__LISTEN");
    let first = Served::spawn(cmd, &["--log-level", "info"]);
    let alive = http().get("http://127.0.0.1:9139/healthz").send().await.expect("the debug listener is on by default");
    assert_eq!(alive.status(), 200);
    let other = tempfile::tempdir().unwrap();
    let mut cmd = herald(other.path());
    cmd.env_remove("HERALD_DEBUG__LISTEN");
    let out = cmd.args(["serve", "--listen", "127.0.0.1:0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("debug.listen 127.0.0.1:9139"), "{err}");
    drop(first);
}
