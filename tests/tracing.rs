//! OpenTelemetry traces over OTLP/HTTP: a publish request's span continues the caller's W3C
//! `traceparent`, with the hub's publish and the store's sync as its children, exported (as
//! OTLP JSON here) to a collector: a small one in the test that keeps what it is sent.

mod support;

use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::process::{Served, herald};
use support::{WAIT, http};

/// An OTLP/HTTP traces endpoint on an ephemeral port: every export request's JSON body.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
                keep.lock().unwrap().push(serde_json::from_slice(&body).expect("an OTLP JSON export"));
                ([("content-type", "application/json")], "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), got)
}

/// Every span exported: (trace id, span id, parent span id, name).
fn spans(exports: &[Value]) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for export in exports {
        for resource in export["resourceSpans"].as_array().into_iter().flatten() {
            let service = resource["resource"]["attributes"]
                .as_array()
                .and_then(|a| a.iter().find(|kv| kv["key"] == "service.name"))
                .map(|kv| kv["value"]["stringValue"].clone());
            assert_eq!(service, Some(Value::from("herald")), "{resource}");
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let field = |k: &str| span[k].as_str().unwrap_or_default().to_lowercase();
                    out.push((field("traceId"), field("spanId"), field("parentSpanId"), field("name")));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_continues_the_callers_trace_with_the_hub_and_the_store_as_children() {
    let (endpoint, exports) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = herald(dir.path());
    command.env("HERALD_TRACING__ENABLED", "true").env("HERALD_TRACING__ENDPOINT", &endpoint).env("HERALD_TRACING__PROTOCOL", "http/json");
    let mut served = tokio::task::spawn_blocking(move || Served::spawn(command, &["--log-level", "info"])).await.unwrap();
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let resp = http()
        .post(served.url("/sse/traced"))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&serde_json::json!({ "data": "followed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // One with no caller starts a trace of its own.
    let resp = http().post(served.url("/sse/traced")).json(&serde_json::json!({ "data": "alone" })).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // A subscription is no publish: no span.
    let _ = tokio::time::timeout(Duration::from_millis(300), http().get(served.url("/sse/traced")).send()).await;
    // SIGTERM: the batch still held is exported before the process exits.
    let status = tokio::task::spawn_blocking(move || served.terminate(WAIT)).await.unwrap();
    assert!(status.success());
    let spans = spans(&exports.lock().unwrap());
    let named = |name: &str| spans.iter().filter(|s| s.3 == name).cloned().collect::<Vec<_>>();
    let publishes = named("publish");
    assert_eq!(publishes.len(), 2, "a span per publish request: {spans:?}");
    let followed = publishes.iter().find(|s| s.0 == caller_trace).expect("the caller's trace is continued");
    assert_eq!(followed.2, caller_span, "its parent is the caller's span");
    let alone = publishes.iter().find(|s| s.0 != caller_trace).unwrap();
    assert!(alone.2.is_empty() && alone.0.len() == 32, "a new trace, with no parent: {alone:?}");
    for publish in [followed, alone] {
        let hub = named("hub.publish").into_iter().find(|s| s.2 == publish.1).expect("the hub's publish is a child of the request's span");
        assert_eq!(hub.0, publish.0);
        let sync = named("store.sync").into_iter().find(|s| s.2 == hub.1).expect("the store's sync is a child of the hub's publish");
        assert_eq!(sync.0, publish.0);
    }
    assert_eq!(spans.len(), 6, "nothing else is traced: {spans:?}");
}

#[test]
fn tracing_needs_an_endpoint_and_a_ratio_between_0_and_1() {
    let mut config = herald::config::Config::default();
    config.tracing.enabled = true;
    assert!(config.validate().unwrap_err().to_string().contains("tracing.endpoint"));
    config.tracing.endpoint = "http://127.0.0.1:4318".into();
    config.tracing.sample_ratio = 1.5;
    assert!(config.validate().unwrap_err().to_string().contains("tracing.sample_ratio"));
    config.tracing.sample_ratio = 0.25;
    config.validate().unwrap();
    // The collector's headers (an API key) are not printed.
    config.tracing.headers.insert("authorization".into(), "Bearer k3y".into());
    let printed = herald::config::redacted_toml(&config);
    assert!(!printed.contains("k3y"), "{printed}");
}
