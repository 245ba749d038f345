//! The RabbitMQ source against the real local RabbitMQ (127.0.0.1:5672, guest/guest), with
//! messages published by RabbitMQ's own Rust client (lapin): mapping onto channel, type, id and
//! data; a malformed message dead-lettered while the next good one arrives; every message
//! exactly once across `rabbitmqctl close_all_connections`; no duplicate after Herald dies
//! between accepting a message and acknowledging it; held messages while the store is down;
//! two cluster nodes sharing the queue publish each message once; TLS (`amqps://`) with a client
//! certificate to a private RabbitMQ that asks for one, and with `insecure`.
//!
//! The tests of this file take turns (`close_all_connections` cuts every connection).

mod support;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::Duration;
use support::sources::{
    accepted_by, assert_each_once, client_cert_keys, cluster_pair, connected, data, events, source, source_stats, stays_refused,
    trusted_and_refused, unique,
};
use support::{Sse, TestServer, eventually};

const RABBIT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn rabbit() -> Connection {
    tokio::time::timeout(Duration::from_secs(5), Connection::connect(RABBIT, ConnectionProperties::default()))
        .await
        .unwrap_or_else(|_| panic!("RabbitMQ did not answer at {RABBIT} within 5s: start it (rabbitmq-server -detached)"))
        .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {RABBIT}: {e}. Start it (rabbitmq-server -detached)"))
}

/// Publishes with a fresh connection (the test's own may have been cut), retrying while the
/// broker closes connections.
async fn publish(exchange: &str, key: &str, body: &str, message_id: Option<&str>) {
    for _ in 0..50 {
        let conn = rabbit().await;
        let Ok(ch) = conn.create_channel().await else { continue };
        let mut props = BasicProperties::default();
        if let Some(id) = message_id {
            props = props.with_message_id(id.into());
        }
        ch.confirm_select(Default::default()).await.unwrap();
        if let Ok(confirm) = ch.basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body.as_bytes(), props).await
            && confirm.await.is_ok()
        {
            let _ = conn.close(200, "".into()).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not publish to RabbitMQ");
}

async fn cleanup(queues: &[&str], exchanges: &[&str]) {
    let conn = rabbit().await;
    let ch = conn.create_channel().await.unwrap();
    for q in queues {
        let _ = ch.queue_delete((*q).into(), QueueDeleteOptions::default()).await;
    }
    for x in exchanges {
        let _ = ch.exchange_delete((*x).into(), Default::default()).await;
    }
}

#[tokio::test]
async fn a_message_is_mapped_and_a_malformed_one_is_dead_lettered_while_the_next_arrives() {
    let _turn = TURNS.lock().await;
    let name = unique("herald-test-", "map", '-');
    let (exchange, dlx, dlq) = (format!("{name}-x"), format!("{name}-dlx"), format!("{name}-dlq"));
    // The dead letters' exchange and a queue to read them from.
    let admin = rabbit().await;
    let ch = admin.create_channel().await.unwrap();
    ch.exchange_declare(dlx.as_str().into(), lapin::ExchangeKind::Fanout, ExchangeDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_declare(dlq.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    ch.queue_bind(dlq.as_str().into(), dlx.as_str().into(), "".into(), QueueBindOptions::default(), FieldTable::default()).await.unwrap();
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"amqp\"\nurl = \"{RABBIT}\"\nexchange = \"{exchange}\"\nexchange_type = \"topic\"\n\
         binding_keys = [\"orders.*\"]\ndead_letter_exchange = \"{dlx}\"\n\
         [map]\nchannels = [\"orders/{{2}}\"]\nevent_field = \"/type\"\nid_field = \"/order\"\ndata_field = \"/body\""
    ));
    let server = TestServer::with(|c| c.sources = vec![config.clone()]).await;
    connected(&server.url("")).await;
    let mut sub = Sse::open(&server.url("/sse/orders/42")).await;
    support::subscribers(&server, "orders/42", 1).await;
    publish(&exchange, "orders.42", r#"{"type": "created", "order": "o-1", "body": {"total": 10.50, "a": [1]}}"#, Some("m1")).await;
    publish(&exchange, "orders.42", "this is not JSON", Some("m2")).await;
    publish(&exchange, "orders.42", r#"{"type": "paid", "order": 7, "body": "cash"}"#, Some("m3")).await;
    // Not bound: never arrives.
    publish(&exchange, "invoices.42", r#"{"type": "x", "order": "i", "body": 1}"#, None).await;
    let got = events(&mut sub, 2).await;
    assert_eq!(
        got,
        [
            ("o-1".to_string(), "created".to_string(), r#"{"total":10.50,"a":[1]}"#.to_string()),
            ("7".to_string(), "paid".to_string(), "cash".to_string())
        ]
    );
    sub.expect_no_event(Duration::from_millis(300)).await;
    // The malformed one went to the dead-letter exchange, as it was.
    let mut dead = None;
    for _ in 0..50 {
        if let Some(m) = ch.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap() {
            dead = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.expect("the malformed message was dead-lettered").delivery.data, b"this is not JSON");
    let stats = source_stats(&server.url("")).await;
    assert_eq!(
        (stats["received"].as_u64(), stats["accepted"].as_u64(), stats["rejected"].as_u64()),
        (Some(3), Some(2), Some(1)),
        "{stats}"
    );
    assert_eq!(stats["type"], "amqp");
    server.shutdown().await;
    cleanup(&[&herald::sources::queue_name(&config), &dlq], &[&exchange, &dlx]).await;
}

#[tokio::test]
async fn every_message_arrives_once_across_close_all_connections() {
    let _turn = TURNS.lock().await;
    let name = unique("herald-test-", "cut", '-');
    // ssehub's set-up: the default amq.fanout exchange, JSON events carrying `path`.
    let config =
        source(&format!("name = \"{name}\"\ntype = \"amqp\"\nurl = \"{RABBIT}\"\nexchange = \"{name}-x\"\nexchange_type = \"fanout\""));
    let server = TestServer::with(|c| c.sources = vec![config.clone()]).await;
    connected(&server.url("")).await;
    let mut sub = Sse::open(&server.url("/sse/news")).await;
    support::subscribers(&server, "news", 1).await;
    let send = async |range: std::ops::Range<usize>| {
        for i in range {
            let body = format!(r#"{{"path": "news", "data": "m{i}"}}"#);
            publish(&format!("{name}-x"), "", &body, Some(&format!("id-{i}"))).await;
        }
    };
    send(0..20).await;
    let status = std::process::Command::new("rabbitmqctl").args(["close_all_connections", "herald test"]).output().unwrap();
    assert!(status.status.success(), "rabbitmqctl: {}", String::from_utf8_lossy(&status.stderr));
    // While Herald is away the durable queue keeps them.
    send(20..35).await;
    connected(&server.url("")).await;
    send(35..50).await;
    let got = events(&mut sub, 50).await;
    let data: Vec<String> = got.into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(data, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>(), "each once, in order");
    sub.expect_no_event(Duration::from_millis(500)).await;
    let stats = source_stats(&server.url("")).await;
    assert!(stats["last_error"].is_string(), "the cut shows: {stats}");
    server.shutdown().await;
    cleanup(&[&herald::sources::queue_name(&config)], &[&format!("{name}-x")]).await;
}

#[tokio::test]
async fn a_message_accepted_but_not_acknowledged_before_kill_9_is_not_published_twice() {
    let _turn = TURNS.lock().await;
    let name = unique("herald-test-", "crash", '-');
    let toml = format!(
        "name = \"{name}\"\ntype = \"amqp\"\nurl = \"{RABBIT}\"\nexchange = \"{name}-x\"\nexchange_type = \"fanout\"\n[sources.map]\nchannels = [\"c\"]\n"
    );
    // RabbitMQ redelivers the unacknowledged message; its message-id says it was published.
    let send = async |body: &str| publish(&format!("{name}-x"), "", body, Some(&format!("id-{body}"))).await;
    support::sources::no_duplicate_after_a_crash_between_accept_and_ack(&name, &toml, send).await;
    cleanup(&[&format!("herald.{name}")], &[&format!("{name}-x")]).await;
}

/// A store that refuses every write while it is down.
#[derive(Default)]
struct DownStore(std::sync::atomic::AtomicBool);

impl herald::history::HistoryStore for DownStore {
    fn kind(&self) -> &'static str {
        "down-on-demand"
    }

    fn append(&self, _: &[std::sync::Arc<herald::event::Event>]) -> Result<Option<herald::history::Durable>, herald::history::StoreError> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            Err(herald::history::StoreError("the disk is full".into()))
        } else {
            Ok(None)
        }
    }
}

#[tokio::test]
async fn while_the_store_is_down_messages_wait_in_the_broker_and_then_arrive_once() {
    let _turn = TURNS.lock().await;
    let name = unique("herald-test-", "stall", '-');
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"amqp\"\nurl = \"{RABBIT}\"\nexchange = \"{name}-x\"\nexchange_type = \"fanout\"\nprefetch = 3\n[map]\nchannels = [\"c\"]"
    ));
    let store = std::sync::Arc::new(DownStore::default());
    let server = TestServer::with_store_and(store.clone(), |c| c.sources = vec![config.clone()]).await;
    connected(&server.url("")).await;
    let mut sub = Sse::open(&server.url("/sse/c")).await;
    support::subscribers(&server, "c", 1).await;
    store.0.store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 0..10 {
        publish(&format!("{name}-x"), "", &format!("m{i}"), Some(&format!("{i}"))).await;
    }
    eventually(async || source_stats(&server.url("")).await["stalled"].as_str().is_some_and(|s| s.contains("the disk is full"))).await;
    // Herald holds at most `prefetch` of them; the rest wait in the queue.
    let queue = herald::sources::queue_name(&config);
    let admin = rabbit().await;
    let ch = admin.create_channel().await.unwrap();
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let ready = ch.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await.unwrap().message_count();
    assert!(ready >= 7, "{ready} messages ready in the queue");
    sub.expect_no_event(Duration::from_millis(300)).await;
    assert_eq!(source_stats(&server.url("")).await["accepted"], 0);
    store.0.store(false, std::sync::atomic::Ordering::SeqCst);
    let got: Vec<String> = events(&mut sub, 10).await.into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(got, (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    sub.expect_no_event(Duration::from_millis(300)).await;
    eventually(async || source_stats(&server.url("")).await["stalled"].is_null()).await;
    server.shutdown().await;
    cleanup(&[&queue], &[&format!("{name}-x")]).await;
}

#[tokio::test]
async fn two_cluster_nodes_sharing_the_queue_publish_each_message_once() {
    let _turn = TURNS.lock().await;
    let name = unique("herald-test-", "pair", '-');
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"amqp\"\nurl = \"{RABBIT}\"\nexchange = \"{name}-x\"\nexchange_type = \"fanout\"\nprefetch = 1\n[map]\nchannels = [\"c\"]"
    ));
    let (a, b) = cluster_pair(config.clone(), config.clone()).await;
    let mut on_a = Sse::open(&a.url("/sse/c")).await;
    let mut on_b = Sse::open(&b.url("/sse/c")).await;
    support::subscribers(&a, "c", 1).await;
    support::subscribers(&b, "c", 1).await;
    for i in 0..40 {
        publish(&format!("{name}-x"), "", &format!("m{i}"), Some(&format!("{i}"))).await;
    }
    for sub in [&mut on_a, &mut on_b] {
        assert_each_once(data(sub, 40).await, 40);
        sub.expect_no_event(Duration::from_millis(300)).await;
    }
    let (na, nb) = accepted_by(&a, &b).await;
    assert_eq!(na + nb, 40);
    assert!(na > 0 && nb > 0, "both nodes took messages: {na} {nb}");
    a.shutdown().await;
    b.shutdown().await;
    cleanup(&[&herald::sources::queue_name(&config)], &[&format!("{name}-x")]).await;
}

/// A RabbitMQ node of the test's own (its own name, ports and data), with a plain listener for
/// the test's publisher and a TLS one that asks for a client certificate. Stopped when dropped.
struct TlsRabbit {
    child: std::process::Child,
    plain: u16,
    tls: u16,
    _dir: tempfile::TempDir,
}

impl TlsRabbit {
    fn start(certs: &std::path::Path) -> TlsRabbit {
        use std::os::unix::process::CommandExt;
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (plain, tls, dist) = (free(), free(), free());
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cert = |f: &str| certs.join(f).display().to_string();
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{plain}\nlisteners.ssl.default = 127.0.0.1:{tls}\nloopback_users = none\n\
                 ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n",
                cert("ca.pem"),
                cert("server.pem"),
                cert("server.key")
            ),
        )
        .unwrap();
        std::fs::write(d.join("enabled_plugins"), "[].").unwrap();
        let child = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("RABBITMQ_NODENAME", format!("herald-test-{tls}@localhost"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rabbitmq-server is installed (Debian package rabbitmq-server): the AMQP TLS test runs a node of its own");
        support::wait_for_port(tls, 60, "the private RabbitMQ node's TLS listener");
        support::wait_for_port(plain, 10, "the private RabbitMQ node's plain listener");
        TlsRabbit { child, plain, tls, _dir: dir }
    }
}

impl Drop for TlsRabbit {
    fn drop(&mut self) {
        // The whole process group: the script and the Erlang VM it started.
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_tls_broker_is_used_with_its_ca_and_a_client_certificate_and_refused_without_one() {
    let certs = tempfile::tempdir().unwrap();
    support::tls::certificates(certs.path(), "ca");
    let path = |f: &str| certs.path().join(f).display().to_string();
    let rabbit = TlsRabbit::start(certs.path());
    let config = |name: &str, client_cert: bool| {
        let cert = client_cert_keys(certs.path(), client_cert);
        source(&format!(
            "name = \"{name}\"\ntype = \"amqp\"\nurl = \"amqps://guest:guest@127.0.0.1:{}/%2f\"\nexchange = \"amq.fanout\"\n\
             [tls]\nca_file = \"{}\"\n{cert}[map]\nchannels = [\"t\"]",
            rabbit.tls,
            path("ca.pem")
        ))
    };
    let (good, bad, mut sub) = trusted_and_refused(config("good", true), config("bad", false), "t").await;
    // The test publishes on the node's plain listener.
    let plain = format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit.plain);
    let conn = Connection::connect(&plain, ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let confirm = ch
        .basic_publish("amq.fanout".into(), "".into(), BasicPublishOptions::default(), b"over tls", BasicProperties::default())
        .await
        .unwrap();
    confirm.await.unwrap();
    assert_eq!(events(&mut sub, 1).await[0].2, "over tls");
    // Without a client certificate the broker refuses the handshake.
    stays_refused(&bad).await;
    // `insecure` takes the broker's certificate without the CA.
    let loose = source(&format!(
        "name = \"loose\"\ntype = \"amqp\"\nurl = \"amqps://guest:guest@127.0.0.1:{}/%2f\"\n[tls]\ninsecure = true\n{}",
        rabbit.tls,
        client_cert_keys(certs.path(), true)
    ));
    let loose = TestServer::with(|c| c.sources = vec![loose]).await;
    connected(&loose.url("")).await;
    good.shutdown().await;
    bad.shutdown().await;
    loose.shutdown().await;
}

/// The Go RabbitMQ server's set-up: messages name their user in a field, and reach only that
/// user's streams (here authenticated with a JWT), on no channel of their own.
#[tokio::test]
async fn messages_routed_to_users_by_a_field_reach_only_those_users_streams() {
    let _turn = TURNS.lock().await;
    let name = unique("herald-test-", "users", '-');
    let secret = "users-from-a-source-secret";
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"amqp\"\nurl = \"{RABBIT}\"\nexchange = \"{name}-x\"\nexchange_type = \"fanout\"\n\
         [map]\nusers_field = \"/userid\"\nevent_field = \"/type\"\ndata_field = \"/payload\""
    ));
    let server = TestServer::with(|c| {
        c.sources = vec![config.clone()];
        c.access.subscribe.jwt = true;
        c.access.jwt.secret = secret.into();
    })
    .await;
    connected(&server.url("")).await;
    let bearer = |user: &str| {
        let claims = serde_json::json!({"sub": user, "exp": herald::hub::unix_now() + 600});
        let token =
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()))
                .unwrap();
        format!("Bearer {token}")
    };
    let mut grace = Sse::open_with(&server.url("/sse"), &[("authorization", &bearer("grace"))]).await;
    let mut heidi = Sse::open_with(&server.url("/sse"), &[("authorization", &bearer("heidi"))]).await;
    assert_eq!((grace.status.as_u16(), heidi.status.as_u16()), (200, 200));
    eventually(async || server.stats().await["totals"]["subscriptions"].as_u64() == Some(2)).await;
    let x = format!("{name}-x");
    publish(&x, "", r#"{"userid": "grace", "type": "notification", "payload": {"n": 1}}"#, Some("u1")).await;
    publish(&x, "", r#"{"userid": "heidi", "type": "notification", "payload": {"n": 2}}"#, Some("u2")).await;
    publish(&x, "", r#"{"userid": ["grace", "heidi"], "type": "broadcast", "payload": "both"}"#, Some("u3")).await;
    let types_and_data = |got: Vec<(String, String, String)>| got.into_iter().map(|(_, t, d)| (t, d)).collect::<Vec<_>>();
    assert_eq!(
        types_and_data(events(&mut grace, 2).await),
        [("notification".into(), r#"{"n":1}"#.into()), ("broadcast".into(), "both".into())]
    );
    assert_eq!(
        types_and_data(events(&mut heidi, 2).await),
        [("notification".into(), r#"{"n":2}"#.into()), ("broadcast".into(), "both".into())]
    );
    grace.expect_no_event(Duration::from_millis(300)).await;
    heidi.expect_no_event(Duration::from_millis(300)).await;
    server.shutdown().await;
    cleanup(&[&herald::sources::queue_name(&config)], &[&x]).await;
}
