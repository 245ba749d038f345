//! The debug listener: liveness, readiness (a required source or the cluster bus that is down
//! makes the node not ready, and ready again when it is back), the effective configuration with its secrets redacted, a bearer token in front of
//! all of it, and its default address, which a second server on the machine cannot take.

mod support;

use support::nats::PrivateNats;
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

/// Runs `f` on `nats` off the runtime's threads (it waits for the process), and gives it back.
async fn blocking(mut nats: PrivateNats, f: fn(&mut PrivateNats)) -> PrivateNats {
    tokio::task::spawn_blocking(move || {
        f(&mut nats);
        nats
    })
    .await
    .unwrap()
}

/// `/readyz`'s status and body.
async fn readyz(debug: &str) -> (u16, serde_json::Value) {
    let resp = http().get(format!("{debug}/readyz")).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_cluster_bus_and_a_required_source_away_and_back() {
    // Each on a NATS server of the test's own, which it stops and starts again.
    let mut bus = PrivateNats::start();
    let mut broker = PrivateNats::start();
    let port = free_port();
    let (bus_url, broker_url) = (bus.url(), broker.url());
    let server = TestServer::with(|c| {
        c.debug.listen = format!("127.0.0.1:{port}");
        c.cluster.bus = bus_url;
        c.cluster.stream = "readyz".into();
        c.sources = vec![source(&format!("name = \"feed\"\ntype = \"nats\"\nurl = \"{broker_url}\"\nsubjects = [\"x\"]\nrequired = true"))];
    })
    .await;
    let debug = debug_url(port).await;
    eventually(async || readyz(&debug).await.0 == 200).await;

    bus = blocking(bus, PrivateNats::stop).await;
    eventually(async || readyz(&debug).await.1["status"] == "bus unavailable").await;
    assert_eq!(readyz(&debug).await.0, 503);
    bus = blocking(bus, PrivateNats::resume).await;
    eventually(async || readyz(&debug).await.0 == 200).await;

    broker = blocking(broker, PrivateNats::stop).await;
    eventually(async || readyz(&debug).await.0 == 503).await;
    let (_, body) = readyz(&debug).await;
    assert_eq!((body["status"].as_str(), body["sources_down"][0]["name"].as_str()), (Some("source unavailable"), Some("feed")), "{body}");
    broker = blocking(broker, PrivateNats::resume).await;
    eventually(async || readyz(&debug).await.0 == 200).await;
    server.shutdown().await;
    drop((bus, broker));
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
async fn debug_stats_moves_the_stats_page_behind_the_debug_token() {
    let port = free_port();
    let server = TestServer::with(|c| {
        c.debug.listen = format!("127.0.0.1:{port}");
        c.debug.token = "dbg-t0ken".into();
        c.debug.stats = true;
    })
    .await;
    let debug = debug_url(port).await;
    server.publish_data("counted", "x").await;
    assert_eq!(http().get(server.url("/stats")).send().await.unwrap().status(), 404, "gone from the public listener");
    assert_eq!(http().get(format!("{debug}/stats")).send().await.unwrap().status(), 401);
    let page = http().get(format!("{debug}/stats?limit=10")).bearer_auth("dbg-t0ken").send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page: serde_json::Value = page.json().await.unwrap();
    assert_eq!(page["channels"]["counted"]["published"], 1, "{page}");
    let bad = http().get(format!("{debug}/stats?limit=0")).bearer_auth("dbg-t0ken").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    server.shutdown().await;
    // Without a debug listener there is nowhere to move it.
    let mut config = herald::config::Config::default();
    config.debug.listen = String::new();
    config.debug.stats = true;
    assert!(config.validate().unwrap_err().to_string().contains("debug.stats"));
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

/// `/metrics` as a Prometheus scraper reads it: a sample's value, by name and labels.
async fn scrape(debug: &str) -> prometheus_parse::Scrape {
    let resp = http().get(format!("{debug}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = resp.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

/// A histogram's `_count`, as parsed.
fn histogram_count(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    let sample = scrape.samples.iter().find(|s| s.metric == name).unwrap_or_else(|| panic!("no histogram {name}"));
    match &sample.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than == f64::INFINITY).expect("a +Inf bucket");
            inf.count
        }
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

#[tokio::test]
async fn metrics_move_as_events_flow() {
    let port = free_port();
    let nowhere = free_port();
    let down = source(&format!("name = \"orders\"\ntype = \"nats\"\nurl = \"nats://127.0.0.1:{nowhere}\"\nsubjects = [\"x\"]"));
    let server = TestServer::with(|c| {
        c.debug.listen = format!("127.0.0.1:{port}");
        c.sources = vec![down];
    })
    .await;
    let debug = debug_url(port).await;
    let before = scrape(&debug).await;
    assert_eq!(value(&before, "herald_events_published_total", &[]), 0.0);
    assert_eq!(value(&before, "herald_subscriptions", &[]), 0.0);
    assert_eq!(value(&before, "herald_store_writable", &[("store", "memory")]), 1.0);
    assert_eq!(value(&before, "herald_source_connected", &[("source", "orders"), ("type", "nats")]), 0.0);
    let mut sub = support::Sse::open(&server.url("/sse/news")).await;
    support::subscribers(&server, "news", 1).await;
    for i in 0..3 {
        server.publish_data("news", &format!("e{i}")).await;
    }
    assert_eq!(sub.data(3).await, ["e0", "e1", "e2"]);
    let after = scrape(&debug).await;
    assert_eq!(value(&after, "herald_events_published_total", &[]), 3.0);
    assert_eq!(value(&after, "herald_subscriptions", &[]), 1.0);
    assert_eq!(value(&after, "herald_channels", &[]), 1.0);
    assert_eq!(value(&after, "herald_history_events", &[]), 3.0);
    assert!(value(&after, "herald_history_bytes", &[]) > 0.0);
    assert_eq!(value(&after, "herald_source_messages_total", &[("source", "orders"), ("outcome", "accepted")]), 0.0);
    // The hot-path counters are the process's (tests in this binary run side by side, each
    // with a server of its own): ours moved them at least this far.
    let moved = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels) - value(&before, name, labels);
    assert!(moved("herald_events_delivered_total", &[]) >= 3.0);
    assert!(moved("herald_delivered_bytes_total", &[]) >= 3.0 * "data: e0\n\n".len() as f64);
    assert!(moved("herald_http_responses_total", &[("class", "2xx")]) >= 4.0, "three publishes and a stream");
    assert!(
        histogram_count(&after, "herald_http_publish_duration_seconds") - histogram_count(&before, "herald_http_publish_duration_seconds")
            >= 3.0
    );
    // A resuming client: its backlog counts as replayed.
    let replayed = value(&after, "herald_events_replayed_total", &[]);
    let mut again = support::Sse::open(&server.url("/sse/news?replay=all")).await;
    assert_eq!(again.data(3).await, ["e0", "e1", "e2"]);
    assert!(value(&scrape(&debug).await, "herald_events_replayed_total", &[]) - replayed >= 3.0);
    let refused = value(&after, "herald_http_responses_total", &[("class", "4xx")]);
    assert_eq!(http().post(server.url("/sse/news")).body("x").send().await.unwrap().status(), 415);
    assert!(value(&scrape(&debug).await, "herald_http_responses_total", &[("class", "4xx")]) > refused);
    drop(again);
    drop(sub);
    eventually(async || value(&scrape(&debug).await, "herald_subscriptions", &[]) == 0.0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn per_channel_series_exist_for_declared_channels_only() {
    let port = free_port();
    let declared = |pattern: &str| herald::config::ChannelConfig {
        pattern: pattern.into(),
        history_size: None,
        history_ttl: None,
        cors: None,
        access: None,
    };
    let server = TestServer::with(|c| {
        c.debug.listen = format!("127.0.0.1:{port}");
        c.channels = vec![declared("news"), declared("quiet"), declared("orders/*")];
    })
    .await;
    let debug = debug_url(port).await;
    let _reader = support::Sse::open(&server.url("/sse/news")).await;
    support::subscribers(&server, "news", 1).await;
    for channel in ["news", "news", "orders/1", "invented"] {
        server.publish_data(channel, "x").await;
    }
    let scrape = scrape(&debug).await;
    let news = [("channel", "news")];
    assert_eq!(value(&scrape, "herald_channel_subscribers", &news), 1.0);
    assert_eq!(value(&scrape, "herald_channel_events_published_total", &news), 2.0);
    assert_eq!(value(&scrape, "herald_channel_history_events", &news), 2.0);
    assert!(value(&scrape, "herald_channel_history_bytes", &news) > 0.0);
    assert_eq!(value(&scrape, "herald_channel_events_published_total", &[("channel", "quiet")]), 0.0, "declared, so listed idle");
    // A pattern's channels and invented ones have no series of their own.
    let labelled: std::collections::BTreeSet<&str> =
        scrape.samples.iter().filter(|s| s.metric.starts_with("herald_channel_")).filter_map(|s| s.labels.get("channel")).collect();
    assert_eq!(labelled.into_iter().collect::<Vec<_>>(), ["news", "quiet"]);
    server.shutdown().await;
}
