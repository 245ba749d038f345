//! Cluster mode, over the local Redis and over the local NATS JetStream: three nodes on
//! different ports sharing one stream. Needs Redis on 127.0.0.1:6379 and NATS with JetStream on
//! 127.0.0.1:4222 (`.ci/run` starts them); each test uses a stream of its own. The NATS outage
//! test runs a private `nats-server` so that it can restart it.

mod support;

use herald::sse::{Item, MessageEvent};
use serde_json::json;
use std::time::Duration;
use support::nats::PrivateNats;
use support::{Sse, TestServer, http};

const REDIS: &str = "redis://127.0.0.1:6379";
const NATS: &str = "nats://127.0.0.1:4222";

/// A bus for one test: its URL and a stream of the test's own.
#[derive(Clone)]
struct Bus {
    url: String,
    stream: String,
}

/// A Redis stream key of this test's own, after checking that Redis answers.
async fn redis_bus(test: &str) -> Bus {
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
        .await
        .unwrap_or_else(|_| panic!("Redis did not answer at {REDIS} within 5s: start it (redis-server --daemonize yes --port 6379)"))
        .unwrap_or_else(|e| panic!("Redis is not reachable at {REDIS}: {e}. Start it (redis-server --daemonize yes --port 6379)"));
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    // Housekeeping: streams earlier runs left behind (their names end in their creation time).
    let old: Vec<String> = redis::cmd("KEYS").arg("herald-test:*").query_async(&mut conn).await.unwrap();
    for key in old.into_iter().filter(|k| stale(k)) {
        let _: redis::Value = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    }
    Bus { url: REDIS.into(), stream: format!("herald-test:{test}:{}", nanos()) }
}

/// A JetStream stream name of this test's own, after checking that NATS answers with JetStream.
async fn nats_bus(test: &str, url: &str) -> Bus {
    let client = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url))
        .await
        .unwrap_or_else(|_| panic!("NATS did not answer at {url} within 5s: start it (nats-server -js -p 4222)"))
        .unwrap_or_else(|e| panic!("NATS is not reachable at {url}: {e}. Start it (nats-server -js -p 4222)"));
    let stream = format!("herald_test_{test}_{}", nanos());
    let js = async_nats::jetstream::new(client);
    // Housekeeping: streams earlier runs left behind (their names end in their creation time).
    let names: Vec<String> =
        futures_util::StreamExt::collect::<Vec<_>>(js.stream_names()).await.into_iter().filter_map(Result::ok).collect();
    for name in names.into_iter().filter(|n| n.starts_with("herald_test_") && stale(n)) {
        let _ = js.delete_stream(&name).await;
    }
    // Creating the test's stream proves JetStream is on (the nodes would create it anyway). The
    // server can refuse a creation that races another test's stream deletion (it removes and
    // makes the account's directory again), so a refusal is retried a few times.
    let config =
        async_nats::jetstream::stream::Config { name: stream.clone(), subjects: vec![format!("{stream}.>")], ..Default::default() };
    let mut attempts = 0;
    while let Err(e) = js.get_or_create_stream(config.clone()).await {
        attempts += 1;
        assert!(attempts < 5, "NATS at {url} has no usable JetStream ({e}): start it with -js");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Bus { url: url.into(), stream }
}

/// A test stream made more than ten minutes ago.
fn stale(name: &str) -> bool {
    let made: u128 = name.rsplit([':', '_']).next().and_then(|n| n.parse().ok()).unwrap_or(u128::MAX);
    nanos().saturating_sub(made) > 600 * 1_000_000_000
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

async fn node(bus: &Bus) -> TestServer {
    let bus = bus.clone();
    TestServer::with(move |c| {
        c.cluster.bus = bus.url;
        c.cluster.stream = bus.stream;
    })
    .await
}

async fn publish(node: &TestServer, channel: &str, data: &str) -> reqwest::Response {
    http().post(node.url(&format!("/sse/{channel}"))).json(&json!({ "data": data })).send().await.unwrap()
}

async fn publish_ok(node: &TestServer, channel: &str, data: &str) -> String {
    let resp = publish(node, channel, data).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json::<serde_json::Value>().await.unwrap()["ids"][0].as_str().unwrap().to_owned()
}

fn ids(events: &[MessageEvent]) -> Vec<String> {
    events.iter().map(|e| e.last_event_id.clone()).collect()
}

async fn an_event_published_on_one_node_reaches_every_node_once_and_in_order(bus: Bus) {
    let (a, b, c) = (node(&bus).await, node(&bus).await, node(&bus).await);
    let mut subs = Vec::new();
    for n in [&a, &b, &c] {
        subs.push(Sse::open(&n.url("/sse/orders")).await);
        support::subscribers(n, "orders", 1).await;
    }
    let mut acked = Vec::new();
    for i in 0..60 {
        // Publishers on every node: one order for all.
        let on = [&a, &b, &c][i % 3];
        acked.push(publish_ok(on, "orders", &i.to_string()).await);
    }
    for sub in &mut subs {
        let got = sub.events(60).await;
        assert_eq!(ids(&got), acked, "same ids, same order, on every node");
        assert_eq!(got.iter().map(|e| e.data.clone()).collect::<Vec<_>>(), (0..60).map(|i| i.to_string()).collect::<Vec<_>>());
        sub.expect_no_event(Duration::from_millis(300)).await;
    }
    let health: serde_json::Value = http().get(b.url("/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["bus"]["connected"], true, "{health}");
    let stats = b.stats().await;
    assert!(stats["store"] == "redis" || stats["store"] == "nats", "{stats}");
    assert_eq!(stats["totals"]["published"], 60, "every node counts every event once");
}

async fn a_client_moving_to_another_node_resumes_exactly(bus: Bus) {
    let (a, b, c) = (node(&bus).await, node(&bus).await, node(&bus).await);
    let mut on_b = Sse::open(&b.url("/sse?channel=x&channel=y")).await;
    support::subscribers(&b, "x", 1).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(publish_ok(&a, if i % 2 == 0 { "x" } else { "y" }, &i.to_string()).await);
    }
    let seen = on_b.events(10).await;
    assert_eq!(ids(&seen), acked[..10]);
    drop(on_b);
    for i in 20..30 {
        acked.push(publish_ok(&a, if i % 2 == 0 { "x" } else { "y" }, &i.to_string()).await);
    }
    // On C, from the last id B delivered: exactly the 20 missed, no notice.
    let last = seen.last().unwrap().last_event_id.clone();
    let mut on_c = Sse::open_with(&c.url("/sse?channel=x&channel=y"), &[("last-event-id", &last)]).await;
    let mut got = Vec::new();
    while got.len() < 20 {
        if let Item::Event(e) = on_c.next_item().await.unwrap() {
            assert_ne!(e.event, "missed", "resuming inside the stream's history");
            got.push(e);
        }
    }
    assert_eq!(ids(&got), acked[10..]);
    on_c.expect_no_event(Duration::from_millis(300)).await;
}

async fn a_node_restarted_mid_stream_catches_up(bus: Bus) {
    let a = node(&bus).await;
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(publish_ok(&a, "news", &i.to_string()).await);
    }
    let c = node(&bus).await;
    c.shutdown().await;
    for i in 10..30 {
        acked.push(publish_ok(&a, "news", &i.to_string()).await);
    }
    // A new C on the same stream: its history is the stream's.
    let c = node(&bus).await;
    let mut sub = Sse::open(&c.url("/sse/news?replay=all")).await;
    assert_eq!(ids(&sub.events(30).await), acked);
    let mut resumed = Sse::open_with(&c.url("/sse/news"), &[("last-event-id", &acked[14])]).await;
    assert_eq!(ids(&resumed.events(15).await), acked[15..]);
    // And it follows what is published afterwards.
    let next = publish_ok(&a, "news", "after").await;
    assert_eq!(sub.next_event().await.last_event_id, next);
}

/// Publishes 300 events on A while `cut` breaks the bus connection (in the background), then
/// checks that every acknowledged event reaches B's subscriber, once and in order.
async fn cutting_the_bus_while_publishing_loses_no_acknowledged_event(bus: Bus, cut: impl Future<Output = ()> + Send + 'static) {
    let (a, b) = (node(&bus).await, node(&bus).await);
    let mut sub = Sse::open(&b.url("/sse/cut")).await;
    support::subscribers(&b, "cut", 1).await;
    let cutter = tokio::spawn(cut);
    let (mut acked, mut refused) = (Vec::new(), 0);
    // At least 300 events, and on until the cut is over (so that some are published after it),
    // but never more than 3,000.
    let mut i = 0;
    while (i < 300 || !cutter.is_finished()) && i < 3000 {
        i += 1;
        let resp = publish(&a, "cut", &i.to_string()).await;
        match resp.status().as_u16() {
            200 => acked.push(resp.json::<serde_json::Value>().await.unwrap()["ids"][0].as_str().unwrap().to_owned()),
            503 => {
                let body = resp.text().await.unwrap();
                assert!(body.contains("cluster bus"), "{body}");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    assert!(cutter.is_finished(), "the cut was over before publishing stopped");
    cutter.await.unwrap();
    assert!(!acked.is_empty());
    // Every acknowledged event reaches B's subscriber, in order, once. An event refused with 503
    // may have reached the stream anyway (at least once), so it may be delivered too.
    let mut got: Vec<String> = Vec::new();
    let mut pending = acked.iter().peekable();
    while pending.peek().is_some() {
        let ev = sub.next_event().await;
        assert!(!got.contains(&ev.last_event_id), "delivered twice: {}", ev.last_event_id);
        if pending.peek() == Some(&&ev.last_event_id) {
            pending.next();
        }
        got.push(ev.last_event_id);
    }
    let positions: Vec<u64> = got.iter().map(|id| id.parse().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order");
    // Both nodes are still serving, and connected again.
    support::eventually(async || http().get(a.url("/healthz")).send().await.unwrap().status() == 200).await;
    support::eventually(async || http().get(b.url("/healthz")).send().await.unwrap().status() == 200).await;
    eprintln!("{} acknowledged, {refused} refused while the bus was cut", acked.len());
}

async fn an_unreachable_bus_refuses_publishes_and_keeps_subscribers(url: &'static str, kind: &str) {
    let n = TestServer::with(|c| c.cluster.bus = url.into()).await;
    let resp = publish(&n, "x", "lost?").await;
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    assert!(body.contains(&format!("cluster bus ({kind}) unavailable")), "{body}");
    // What the client library said stays in the log.
    assert!(!body.contains("127.0.0.1") && !body.contains("refused"), "{body}");
    let health = http().get(n.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["bus"]["connected"], false, "{health}");
    assert!(health["bus"]["last_error"].is_string(), "{health}");
    // Subscribers are still served.
    let mut sub = Sse::open(&n.url("/sse/x")).await;
    assert_eq!(sub.status, 200);
    assert_eq!(sub.next_item().await, Some(Item::Comment("connected".into())));
}

/// Node B reaches the bus through a relay that is cut while node A publishes more than the
/// stream keeps (`max_len` 10). When B is back, the entries it never read are gone: its live
/// stream ends without delivering anything past the gap, and the client, resuming with the last
/// id it got, is told it missed events, then gets what the stream still holds, in order.
async fn a_node_cut_off_longer_than_the_bus_retains_tells_its_clients_what_they_missed(
    bus: Bus,
    upstream: std::net::SocketAddr,
    scheme: &str,
    published: usize,
) {
    let proxy = support::proxy::Proxy::start(upstream).await;
    let limited = |url: String, stream: String| {
        move |c: &mut herald::config::Config| {
            c.cluster.bus = url;
            c.cluster.stream = stream;
            c.cluster.max_len = 10;
        }
    };
    let a = TestServer::with(limited(bus.url.clone(), bus.stream.clone())).await;
    let b = TestServer::with(limited(format!("{scheme}://127.0.0.1:{}", proxy.port), bus.stream.clone())).await;
    let mut sub = Sse::open(&b.url("/sse/gap")).await;
    support::subscribers(&b, "gap", 1).await;
    let first = publish_ok(&a, "gap", "before").await;
    assert_eq!(sub.next_event().await.last_event_id, first);

    proxy.cut();
    support::eventually(async || http().get(b.url("/healthz")).send().await.unwrap().status() == 503).await;
    let mut acked = Vec::new();
    for i in 0..published {
        acked.push(publish_ok(&a, "gap", &i.to_string()).await);
    }
    proxy.restore();

    // Nothing from past the gap as if nothing was lost: the stream just ends.
    while let Some(item) = sub.next_item().await {
        assert!(!matches!(item, Item::Event(_)), "delivered across the gap: {item:?}");
    }
    support::eventually(async || http().get(b.url("/healthz")).send().await.unwrap().status() == 200).await;

    let mut resumed = Sse::open_with(&b.url("/sse/gap"), &[("last-event-id", &first)]).await;
    let notice = resumed.next_event().await;
    assert_eq!(notice.event, "missed", "{notice:?}");
    let notice: serde_json::Value = serde_json::from_str(&notice.data).unwrap();
    assert_eq!(notice["last_event_id"], first.as_str(), "{notice}");
    // Then what the stream kept: the newest events, in order, ending with the last one.
    let mut got = Vec::new();
    while got.last() != acked.last() {
        got.push(resumed.next_event().await.last_event_id);
        assert!(got.len() <= published, "more events than were published");
    }
    let kept = &acked[acked.len() - got.len()..];
    assert_eq!(got, kept, "the newest events, in order");
    assert!(got.len() < published, "the stream kept them all: nothing was trimmed");
}

/// A node stopped with SIGSTOP while its bus connection stays up, and the stream trimmed past
/// what it read meanwhile: when it continues, its subscriber gets exactly a prefix of what was
/// published and then the end of the stream, never events from past the gap as if nothing was
/// lost; resuming, it is told what it missed (or gets exactly the rest, if nothing was).
async fn a_paused_node_never_skips_silently(bus: Bus, published: usize) {
    let a = TestServer::with({
        let bus = bus.clone();
        move |c| {
            c.cluster.bus = bus.url;
            c.cluster.stream = bus.stream;
            c.cluster.max_len = 10;
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.toml"),
        format!("[cluster]\nbus = \"{}\"\nstream = \"{}\"\nmax_len = 10\n", bus.url, bus.stream),
    )
    .unwrap();
    let b = support::process::Served::start(dir.path());
    let mut sub = Sse::open(&b.url("/sse/pause")).await;
    support::eventually(async || {
        let stats: serde_json::Value = http().get(b.url("/stats")).send().await.unwrap().json().await.unwrap();
        stats["channels"]["pause"]["subscribers"] == 1
    })
    .await;
    let first = publish_ok(&a, "pause", "before").await;
    assert_eq!(sub.next_event().await.last_event_id, first);

    let pid = b.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let mut acked = Vec::new();
    for i in 0..published {
        acked.push(publish_ok(&a, "pause", &i.to_string()).await);
    }
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());

    // A prefix of what was published, then (if anything was lost) the end of the stream.
    let mut got: Vec<String> = Vec::new();
    while got.last() != acked.last() {
        match sub.next_item().await {
            Some(Item::Event(ev)) => {
                assert_eq!(Some(&ev.last_event_id), acked.get(got.len()), "skipped silently after {} events", got.len());
                got.push(ev.last_event_id);
            }
            Some(_) => {}
            None => break,
        }
    }
    if got.len() == acked.len() {
        return;
    }
    let resume_from = got.last().unwrap_or(&first).clone();
    let mut resumed = Sse::open_with(&b.url("/sse/pause"), &[("last-event-id", &resume_from)]).await;
    let notice = resumed.next_event().await;
    assert_eq!(notice.event, "missed", "the stream ended, so something was lost: {notice:?}");
    let mut rest = Vec::new();
    while rest.last() != acked.last() {
        rest.push(resumed.next_event().await.last_event_id);
        assert!(rest.len() <= published);
    }
    assert_eq!(rest, acked[acked.len() - rest.len()..], "then the newest events, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_paused_node_never_skips_silently() {
    // `MAXLEN ~` trims whole stream nodes (100 entries): publish enough for it to trim.
    a_paused_node_never_skips_silently(redis_bus("pause").await, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_paused_node_never_skips_silently() {
    let _ = nats_bus("pause", NATS).await;
    let bus = Bus { url: NATS.into(), stream: format!("herald_test_pauselimited_{}", nanos()) };
    a_paused_node_never_skips_silently(bus, 100).await;
}

/// `history_ttl` counts from the publish, also for history a node loads from the bus when it
/// starts: a node started after the events aged out replays none of them.
async fn history_loaded_from_the_bus_keeps_its_age(bus: Bus) {
    let with_ttl = |bus: &Bus| {
        let bus = bus.clone();
        move |c: &mut herald::config::Config| {
            c.cluster.bus = bus.url;
            c.cluster.stream = bus.stream;
            c.history.ttl = Duration::from_millis(1500);
        }
    };
    let a = TestServer::with(with_ttl(&bus)).await;
    let old = publish_ok(&a, "aged", "old").await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let fresh = publish_ok(&a, "aged", "fresh").await;
    // A node started now loads both from the bus; only the fresh one is within the ttl.
    let b = TestServer::with(with_ttl(&bus)).await;
    let mut sub = Sse::open(&b.url("/sse/aged?replay=all")).await;
    let got = sub.next_event().await;
    assert_eq!(got.last_event_id, fresh, "the event published {old} 1.7s ago is past the 1.5s ttl");
    sub.expect_no_event(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_refuses_publishes_and_keeps_subscribers() {
    // Nothing listens on port 1.
    an_unreachable_bus_refuses_publishes_and_keeps_subscribers("redis://127.0.0.1:1", "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_unreachable_refuses_publishes_and_keeps_subscribers() {
    an_unreachable_bus_refuses_publishes_and_keeps_subscribers("nats://127.0.0.1:1", "nats").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_client_kill_while_publishing_loses_no_acknowledged_event() {
    let bus = redis_bus("cut").await;
    let name = format!("herald:{}", bus.stream);
    cutting_the_bus_while_publishing_loses_no_acknowledged_event(bus, async move {
        let client = redis::Client::open(REDIS).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut killed = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            // Both nodes' publishing and reading connections (they are named after their
            // stream), and no other test's.
            let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap();
            let ours = list
                .lines()
                .filter(|l| l.split(' ').any(|f| f == format!("name={name}")))
                .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")).map(str::to_owned));
            for id in ours.collect::<Vec<_>>() {
                let _: redis::Value = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&id).query_async(&mut conn).await.unwrap();
                killed += 1;
            }
        }
        assert!(killed >= 3, "the nodes' connections were cut ({killed})");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restart_while_publishing_loses_no_acknowledged_event() {
    let server = std::sync::Arc::new(parking_lot::Mutex::new(PrivateNats::start()));
    let url = server.lock().url();
    let bus = nats_bus("cut", &url).await;
    let restarter = server.clone();
    cutting_the_bus_while_publishing_loses_no_acknowledged_event(bus, async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tokio::task::spawn_blocking(move || restarter.lock().restart()).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_node_cut_off_longer_than_the_bus_retains_tells_its_clients_what_they_missed() {
    let bus = redis_bus("gap").await;
    // `MAXLEN ~` trims whole stream nodes (100 entries): publish enough for it to trim.
    a_node_cut_off_longer_than_the_bus_retains_tells_its_clients_what_they_missed(bus, "127.0.0.1:6379".parse().unwrap(), "redis", 400)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_node_cut_off_longer_than_the_bus_retains_tells_its_clients_what_they_missed() {
    // A stream the nodes make themselves, with their limit of 10 messages.
    let _ = nats_bus("gap", NATS).await;
    let bus = Bus { url: NATS.into(), stream: format!("herald_test_gaplimited_{}", nanos()) };
    a_node_cut_off_longer_than_the_bus_retains_tells_its_clients_what_they_missed(bus, "127.0.0.1:4222".parse().unwrap(), "nats", 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_recreated_stream_makes_the_node_refuse_publishes() {
    let bus = nats_bus("recreated", NATS).await;
    let a = node(&bus).await;
    publish_ok(&a, "r", "one").await;
    publish_ok(&a, "r", "two").await;
    let js = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
    js.delete_stream(&bus.stream).await.unwrap();
    // Its sequences, the cluster's ids, would start over at 1 and be dropped as repeats: the node
    // says so and refuses publishes instead.
    // The reason is the operator's to read in /healthz; the publisher is told the bus is down.
    support::eventually(async || {
        let health = http().get(a.url("/healthz")).send().await.unwrap();
        let code = health.status();
        let health: serde_json::Value = health.json().await.unwrap();
        code == 503 && health["bus"]["last_error"].as_str().is_some_and(|e| e.contains("was recreated"))
    })
    .await;
    let resp = publish(&a, "r", "three").await;
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cluster bus (nats) unavailable"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_foreign_message_on_the_stream_is_skipped_without_ending_streams() {
    let bus = nats_bus("foreign", NATS).await;
    let a = node(&bus).await;
    let mut sub = Sse::open(&a.url("/sse/f")).await;
    support::subscribers(&a, "f", 1).await;
    let first = publish_ok(&a, "f", "one").await;
    assert_eq!(sub.next_event().await.last_event_id, first);
    // Something else publishes on the stream's subjects: not an event, and not a gap either.
    let js = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
    js.publish(format!("{}.f", bus.stream), "not an event".into()).await.unwrap().await.unwrap();
    let next = publish_ok(&a, "f", "two").await;
    let ev = sub.next_event().await;
    assert_eq!((ev.last_event_id.as_str(), ev.data.as_str()), (next.as_str(), "two"));
}

/// A client that published on one node and at once resumes on another with that id is served
/// from it: the node, which reads the bus late here (its link to the bus delays answers by
/// 300 ms), waits until it has read the id (read-your-writes) instead of answering
/// `missed: unknown` and replaying everything.
async fn a_client_resuming_on_a_lagging_node_reads_its_own_writes(bus: Bus, upstream: std::net::SocketAddr, scheme: &str) {
    let slow = support::proxy::Proxy::start_with_delay(upstream, Duration::from_millis(300)).await;
    let a = node(&bus).await;
    let b = TestServer::with({
        let (url, stream) = (format!("{scheme}://127.0.0.1:{}", slow.port), bus.stream.clone());
        move |c| {
            c.cluster.bus = url;
            c.cluster.stream = stream;
            // Each read takes two delayed answers on Redis (the wake-up, then the read).
            c.cluster.catch_up_wait = Duration::from_secs(5);
        }
    })
    .await;
    for i in 0..3 {
        let id = publish_ok(&a, "ryw", &format!("mine {i}")).await;
        let mut sse = Sse::open_with(&b.url("/sse/ryw"), &[("last-event-id", &id)]).await;
        publish_ok(&a, "ryw", &format!("next {i}")).await;
        let ev = sse.next_event().await;
        assert_eq!(ev.data, format!("next {i}"), "round {i}: {ev:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_client_resuming_on_a_lagging_node_reads_its_own_writes() {
    a_client_resuming_on_a_lagging_node_reads_its_own_writes(redis_bus("ryw").await, "127.0.0.1:6379".parse().unwrap(), "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_client_resuming_on_a_lagging_node_reads_its_own_writes() {
    a_client_resuming_on_a_lagging_node_reads_its_own_writes(nats_bus("ryw", NATS).await, "127.0.0.1:4222".parse().unwrap(), "nats").await;
}

/// An event a node cannot take (every one of its `max_channels` has a subscriber) is counted,
/// logged and shown in `/stats` and `/healthz`, never dropped without a trace.
async fn an_event_a_node_cannot_apply_is_counted_and_shown(bus: Bus) {
    let a = node(&bus).await;
    let b = TestServer::with({
        let bus = bus.clone();
        move |c| {
            c.cluster.bus = bus.url;
            c.cluster.stream = bus.stream;
            c.max_channels = 1;
        }
    })
    .await;
    let _held = Sse::open(&b.url("/sse/held")).await;
    support::subscribers(&b, "held", 1).await;
    publish_ok(&a, "other", "b has no room for it").await;
    support::eventually(async || b.stats().await["totals"]["bus_unapplied"] == 1).await;
    let health: serde_json::Value = http().get(b.url("/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["bus"]["unapplied"], 1, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_stream_recreated_past_the_old_sequence_is_detected() {
    let bus = nats_bus("recreated_past", NATS).await;
    let a = node(&bus).await;
    publish_ok(&a, "r", "one").await;
    publish_ok(&a, "r", "two").await;
    let js = async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap());
    js.delete_stream(&bus.stream).await.unwrap();
    // Made again at once and filled past the node's sequence before it looks: only the creation
    // time tells the streams apart.
    let config = async_nats::jetstream::stream::Config {
        name: bus.stream.clone(),
        subjects: vec![format!("{}.>", bus.stream)],
        ..Default::default()
    };
    js.get_or_create_stream(config).await.unwrap();
    for i in 0..10 {
        js.publish(format!("{}.foreign", bus.stream), format!("{i}").into()).await.unwrap().await.unwrap();
    }
    support::eventually(async || {
        let health: serde_json::Value = http().get(a.url("/healthz")).send().await.unwrap().json().await.unwrap();
        health["bus"]["last_error"].as_str().is_some_and(|e| e.contains("was recreated"))
    })
    .await;
    assert_eq!(publish(&a, "r", "three").await.status(), 503);
}

/// An `Idempotency-Key` holds across nodes: a retry sent to another node (its first node went
/// away before answering, say) publishes nothing and is answered with the first ids.
async fn a_key_published_on_one_node_is_a_repeat_on_another(bus: Bus) {
    let (a, b) = (node(&bus).await, node(&bus).await);
    let mut sub = Sse::open(&b.url("/sse/k")).await;
    support::subscribers(&b, "k", 1).await;
    let send = |n: &TestServer, data: &str| {
        http().post(n.url("/sse/k")).header("idempotency-key", "cluster-retry").json(&json!([{ "data": data }, { "data": "2" }])).send()
    };
    let first = send(&a, "1").await.unwrap();
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = send(&b, "1").await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<serde_json::Value>().await.unwrap(), first, "the first publish's ids");
    let got = sub.events(2).await;
    assert_eq!(got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["1", "2"]);
    assert_eq!(ids(&got), first["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect::<Vec<_>>());
    sub.expect_no_event(Duration::from_millis(500)).await;
}

/// The scenarios that run the same way on both buses: once over Redis, once over NATS.
macro_rules! on_both_buses {
    ($($scenario:ident: $tag:literal),* $(,)?) => {
        mod redis_bus {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::redis_bus($tag).await).await;
                }
            )*
        }
        mod nats_bus {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::nats_bus($tag, super::NATS).await).await;
                }
            )*
        }
    };
}

on_both_buses! {
    an_event_published_on_one_node_reaches_every_node_once_and_in_order: "fanout",
    a_client_moving_to_another_node_resumes_exactly: "move",
    a_node_restarted_mid_stream_catches_up: "restart",
    history_loaded_from_the_bus_keeps_its_age: "aged",
    an_event_a_node_cannot_apply_is_counted_and_shown: "unapplied",
    a_key_published_on_one_node_is_a_repeat_on_another: "once",
}

/// An event addressed to a user, published on one node, reaches that user's stream on another
/// node, and no other user's.
#[tokio::test]
async fn redis_an_event_for_a_user_reaches_the_users_stream_on_every_node() {
    let bus = redis_bus("users").await;
    let secret = "cluster-users-secret";
    let make = |bus: &Bus| {
        let bus = bus.clone();
        TestServer::with(move |c| {
            c.cluster.bus = bus.url;
            c.cluster.stream = bus.stream;
            c.access.subscribe.jwt = true;
            c.access.jwt.secret = secret.into();
        })
    };
    let (a, b) = (make(&bus).await, make(&bus).await);
    let token = |user: &str| {
        let claims = json!({"sub": user, "exp": herald::hub::unix_now() + 600});
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let mut grace = Sse::open_with(&b.url("/sse"), &[("authorization", &format!("Bearer {}", token("grace")))]).await;
    let mut heidi = Sse::open_with(&b.url("/sse"), &[("authorization", &format!("Bearer {}", token("heidi")))]).await;
    assert_eq!((grace.status.as_u16(), heidi.status.as_u16()), (200, 200));
    support::eventually(async || b.stats().await["totals"]["subscriptions"].as_u64() == Some(2)).await;
    let resp = http().post(a.url("/publish")).json(&json!({"users": ["grace"], "data": "from a"})).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(grace.data(1).await, ["from a"]);
    heidi.expect_no_event(Duration::from_millis(300)).await;
    a.shutdown().await;
    b.shutdown().await;
}
