//! Every status code a careless or hostile client can provoke, each with a clear JSON error,
//! and CORS preflights and credentials.

mod support;

use herald::config::{ByteSize, ChannelConfig, CorsConfig};
use serde_json::json;
use std::time::Duration;
use support::{Sse, TestServer, http};

async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("error bodies are JSON");
    assert_eq!(body["status"], status);
    (status, body["error"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn bad_requests_say_what_is_wrong() {
    let server = TestServer::start().await;
    let post = |path: &str, ct: &str, body: &'static str| http().post(server.url(path)).header("content-type", ct).body(body).send();
    let cases: Vec<(reqwest::Response, &str)> = vec![
        (post("/sse/c", "application/json", "{not json").await.unwrap(), "invalid JSON"),
        (post("/sse/c", "application/json", "{\"event\":\"x\"}").await.unwrap(), "missing field `data`"),
        (post("/sse/c", "application/json", "{\"data\":\"x\",\"colour\":1}").await.unwrap(), "unknown field `colour`"),
        (post("/sse/c", "application/json", "{\"data\":\"x\",\"id\":[1]}").await.unwrap(), "`id` must be"),
        (post("/sse/c", "application/json", "[]").await.unwrap(), "empty batch"),
        (post("/sse/c", "application/json", "  ").await.unwrap(), "empty body"),
        (post("/sse/c", "application/json", "{\"data\":\"x\",\"channel\":\"d\"}").await.unwrap(), "comes from the URL"),
        (post("/publish", "application/json", "{\"data\":\"x\"}").await.unwrap(), "name the event's `channel`"),
        (post("/publish", "text/plain", "x").await.unwrap(), "?channel="),
        (post("/sse/c?retry=soon", "text/plain", "x").await.unwrap(), "retry must be"),
        (post("/sse/c?colour=red", "text/plain", "x").await.unwrap(), "unknown query parameter"),
        (post("/sse/bad%20name", "application/json", "{\"data\":\"x\"}").await.unwrap(), "invalid channel name"),
        (post("/sse/a//b", "application/json", "{\"data\":\"x\"}").await.unwrap(), "segment"),
        (http().get(server.url("/sse/has%20space")).send().await.unwrap(), "invalid channel name"),
        (http().get(server.url("/sse")).send().await.unwrap(), "at least one channel"),
        (http().get(server.url("/sse/c?replay=some")).send().await.unwrap(), "replay must be"),
        (http().get(server.url("/sse/c")).header("last-event-id", "x".repeat(2000)).send().await.unwrap(), "longer than"),
    ];
    for (resp, needle) in cases {
        let (status, msg) = error_of(resp).await;
        assert_eq!(status, 400, "{msg}");
        assert!(msg.contains(needle), "`{msg}` should mention `{needle}`");
    }
    let resp = http().post(server.url("/sse/c")).header("content-type", "text/plain").body(vec![0xff, 0xfe]).send().await.unwrap();
    assert_eq!(error_of(resp).await.0, 400);
}

#[tokio::test]
async fn limits_answer_413() {
    let server = TestServer::with(|c| {
        c.limits.max_body_size = ByteSize(4096);
        c.limits.max_event_size = ByteSize(1024);
        c.limits.max_batch_events = 3;
    })
    .await;
    let big_body = "x".repeat(5000);
    let resp = http().post(server.url("/sse/c")).header("content-type", "text/plain").body(big_body).send().await.unwrap();
    let (status, msg) = error_of(resp).await;
    assert_eq!((status, msg.contains("max_body_size")), (413, true), "{msg}");
    let resp = http().post(server.url("/sse/c")).json(&json!({ "data": "y".repeat(2000) })).send().await.unwrap();
    let (status, msg) = error_of(resp).await;
    assert_eq!((status, msg.contains("max_event_size")), (413, true), "{msg}");
    let batch: Vec<_> = (0..4).map(|i| json!({ "data": i })).collect();
    let resp = http().post(server.url("/sse/c")).json(&batch).send().await.unwrap();
    let (status, msg) = error_of(resp).await;
    assert_eq!((status, msg.contains("max_batch_events")), (413, true), "{msg}");
    // A chunked body with no Content-Length is cut off at the limit too.
    let stream = futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'z'; 1000]))));
    let resp = http()
        .post(server.url("/sse/c"))
        .header("content-type", "text/plain")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await.0, 413);
    // Nothing of the refused requests was published.
    assert_eq!(server.stats().await["totals"]["published"], 0);
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let server = TestServer::start().await;
    for ct in [Some("application/x-www-form-urlencoded"), Some("image/png"), None] {
        let mut req = http().post(server.url("/sse/c")).body("data=x");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let (status, msg) = error_of(req.send().await.unwrap()).await;
        assert_eq!(status, 415, "{ct:?}");
        assert!(msg.contains("application/json"), "{msg}");
    }
}

#[tokio::test]
async fn wrong_method_is_405_with_allow_and_unknown_path_404() {
    let server = TestServer::start().await;
    let resp = http().delete(server.url("/sse/c")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let resp = http().put(server.url("/publish")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert!(resp.headers()["allow"].to_str().unwrap().contains("POST"));
    let (status, msg) = error_of(http().get(server.url("/nope")).send().await.unwrap()).await;
    assert_eq!((status, msg.as_str()), (404, "no route for /nope"));
}

#[tokio::test]
async fn undefined_channels_are_404_when_not_allowed() {
    let server = TestServer::with(|c| {
        c.allow_undefined_channels = false;
        c.channels = vec![
            ChannelConfig { pattern: "news".into(), history_size: None, history_ttl: None, cors: None, access: None },
            ChannelConfig { pattern: "orders/*".into(), history_size: Some(2), history_ttl: None, cors: None, access: None },
        ];
    })
    .await;
    let (status, msg) = error_of(http().get(server.url("/sse/other")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert!(msg.contains("allow_undefined_channels"), "{msg}");
    assert_eq!(error_of(http().post(server.url("/sse/orders/1/2")).json(&json!({"data":"x"})).send().await.unwrap()).await.0, 404);
    // Declared and pattern channels work, with their own settings.
    assert_eq!(Sse::open(&server.url("/sse/news")).await.status, 200);
    for i in 0..5 {
        server.publish_data("orders/7", &i.to_string()).await;
    }
    let mut sse = Sse::open(&server.url("/sse/orders/7?replay=all")).await;
    assert_eq!(sse.data(2).await, ["3", "4"]);
    // The declared channel exists before anyone uses it.
    assert!(server.stats().await["channels"]["news"].is_object());
}

#[tokio::test]
async fn channel_limits_are_enforced() {
    let server = TestServer::with(|c| {
        c.max_channels = 3;
        c.max_channels_per_connection = 2;
    })
    .await;
    // Every channel has a subscriber: none can be reclaimed, so a fourth is refused.
    let mut held = Vec::new();
    for ch in ["a", "b", "c"] {
        held.push(Sse::open(&server.url(&format!("/sse/{ch}"))).await);
        support::subscribers(&server, ch, 1).await;
    }
    let (status, msg) = error_of(http().post(server.url("/sse/d")).json(&json!({"data":"x"})).send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert!(msg.contains("max_channels"), "{msg}");
    let (status, msg) = error_of(http().get(server.url("/sse?channel=a&channel=b&channel=c")).send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(msg.contains("max_channels_per_connection"), "{msg}");
}

#[tokio::test]
async fn idle_dynamic_channels_are_reclaimed() {
    let server = TestServer::with(|c| c.history.ttl = Duration::from_millis(100)).await;
    server.publish_data("temp", "x").await;
    support::eventually(async || server.stats().await["channels"]["temp"].is_null()).await;
    // And the name works again afterwards.
    let mut sse = Sse::open(&server.url("/sse/temp")).await;
    server.publish_data("temp", "again").await;
    assert_eq!(sse.data(1).await, ["again"]);
}

fn cors(origins: &[&str], credentials: bool) -> CorsConfig {
    CorsConfig { allowed_origins: origins.iter().map(|s| s.to_string()).collect(), allow_credentials: credentials, ..CorsConfig::default() }
}

async fn preflight(server: &TestServer, path: &str, origin: &str, method: &str, headers: Option<&str>) -> reqwest::Response {
    let mut req =
        http().request(reqwest::Method::OPTIONS, server.url(path)).header("origin", origin).header("access-control-request-method", method);
    if let Some(h) = headers {
        req = req.header("access-control-request-headers", h);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn cors_any_origin_by_default() {
    let server = TestServer::start().await;
    let resp = preflight(&server, "/sse/c", "https://app.example", "POST", Some("content-type")).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(resp.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(resp.headers()["access-control-allow-headers"].to_str().unwrap().to_lowercase().contains("content-type"));
    assert_eq!(resp.headers()["access-control-max-age"], "3600");
    let sse = Sse::open_with(&server.url("/sse/c"), &[("origin", "https://app.example")]).await;
    assert_eq!(sse.headers["access-control-allow-origin"], "*");
    assert!(sse.headers.get("access-control-allow-credentials").is_none());
}

#[tokio::test]
async fn cors_with_credentials_reflects_only_listed_origins() {
    let server = TestServer::with(|c| c.cors = cors(&["https://app.example", "*"], true)).await;
    let resp = preflight(&server, "/sse/c", "https://app.example", "GET", Some("last-event-id")).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example");
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    assert!(resp.headers()["vary"].to_str().unwrap().contains("Origin"));
    // `*` does not count when credentials are allowed.
    let resp = preflight(&server, "/sse/c", "https://evil.example", "GET", None).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let sse = Sse::open_with(&server.url("/sse/c"), &[("origin", "https://evil.example")]).await;
    assert!(sse.headers.get("access-control-allow-origin").is_none());
    let sse = Sse::open_with(&server.url("/sse/c"), &[("origin", "https://app.example")]).await;
    assert_eq!(sse.headers["access-control-allow-origin"], "https://app.example");
    assert_eq!(sse.headers["access-control-allow-credentials"], "true");
}

#[tokio::test]
async fn cors_refuses_unlisted_methods_and_headers() {
    let server = TestServer::start().await;
    assert_eq!(preflight(&server, "/sse/c", "https://a.example", "DELETE", None).await.status(), 403);
    let resp = preflight(&server, "/sse/c", "https://a.example", "POST", Some("content-type, x-secret")).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("x-secret"));
}

#[tokio::test]
async fn cors_per_channel() {
    let server = TestServer::with(|c| {
        c.cors = cors(&["https://a.example"], false);
        c.channels = vec![ChannelConfig {
            pattern: "public/**".into(),
            history_size: None,
            history_ttl: None,
            cors: Some(cors(&["*"], false)),
            access: None,
        }];
    })
    .await;
    let resp = preflight(&server, "/sse/public/feed", "https://b.example", "GET", None).await;
    assert_eq!((resp.status().as_u16(), resp.headers()["access-control-allow-origin"].to_str().unwrap()), (204, "*"));
    assert_eq!(preflight(&server, "/sse/private", "https://b.example", "GET", None).await.status(), 403);
    let resp = preflight(&server, "/sse/private", "https://a.example", "GET", None).await;
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://a.example");
    // A multi-channel subscription needs the origin allowed on every channel it names.
    assert_eq!(preflight(&server, "/sse?channel=public/x&channel=private", "https://b.example", "GET", None).await.status(), 403);
}

#[tokio::test]
async fn stats_and_health() {
    let server = TestServer::with(|c| c.keepalive_interval = Duration::ZERO).await;
    let _sse = Sse::open(&server.url("/sse/s")).await;
    server.publish_data("s", "hello").await;
    let stats = server.stats().await;
    assert_eq!(stats["channels"]["s"]["subscribers"], 1);
    assert_eq!(stats["channels"]["s"]["published"], 1);
    assert_eq!(stats["channels"]["s"]["history_len"], 1);
    assert!(stats["channels"]["s"]["history_bytes"].as_u64().unwrap() > 5);
    assert_eq!(stats["totals"]["subscriptions"], 1);
    assert!(stats["uptime_seconds"].is_u64());
    let health: serde_json::Value = http().get(server.url("/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    // A client that goes away, even from an idle stream, stops being counted.
    drop(_sse);
    support::eventually(async || server.stats().await["totals"]["subscriptions"] == 0).await;
    assert_eq!(server.stats().await["channels"]["s"]["subscribers"], 0);
}

#[tokio::test]
async fn graceful_shutdown_ends_streams() {
    let server = TestServer::start().await;
    let mut sse = Sse::open(&server.url("/sse/s")).await;
    server.publish_data("s", "last words").await;
    assert_eq!(sse.data(1).await, ["last words"]);
    server.shutdown().await;
    sse.expect_end().await;
}
