//! The Redis sources against the real local Redis (127.0.0.1:6379), with messages written by
//! Redis's own Rust client: Streams entries mapped onto channels, a malformed entry rejected
//! while the next arrives; every entry exactly once across `CLIENT KILL` of Herald's
//! connection; no duplicate after Herald dies between accepting an entry and acknowledging it;
//! entries left pending by a consumer that died taken over; two cluster nodes in one group
//! publishing each entry once; pub/sub with a pattern; TLS (`rediss://`) with a client
//! certificate to a private redis-server that asks for one.

mod support;

use redis::AsyncCommands;
use std::time::Duration;
use support::sources::{
    accepted_by, assert_each_once, client_cert_keys, cluster_pair, connected, data, source, source_stats, stays_refused,
    trusted_and_refused, unique,
};
use support::{Sse, TestServer};

const REDIS: &str = "redis://127.0.0.1:6379";

async fn redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(REDIS).unwrap();
    tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
        .await
        .unwrap_or_else(|_| panic!("Redis did not answer at {REDIS} within 5s: start it (redis-server --daemonize yes --port 6379)"))
        .unwrap_or_else(|e| panic!("Redis is not reachable at {REDIS}: {e}. Start it (redis-server --daemonize yes --port 6379)"))
}

async fn add(conn: &mut redis::aio::MultiplexedConnection, stream: &str, fields: &[(&str, &[u8])]) {
    let _: String = conn.xadd(stream, "*", fields).await.unwrap();
}

#[tokio::test]
async fn stream_entries_are_mapped_and_a_malformed_one_is_rejected_while_the_next_arrives() {
    let name = unique("herald-test-src-", "map", '-');
    let mut conn = redis().await;
    let config = source(&format!("name = \"{name}\"\ntype = \"redis_stream\"\nurl = \"{REDIS}\"\nstreams = [\"{name}\"]"));
    let server = TestServer::with(|c| c.sources = vec![config]).await;
    connected(&server.url("")).await;
    let mut sub = Sse::open(&server.url("/sse/news")).await;
    support::subscribers(&server, "news", 1).await;
    add(&mut conn, &name, &[("data", br#"{"path": "news", "event": "e", "data": {"k": 1.0}}"#)]).await;
    add(&mut conn, &name, &[("other", b"x"), ("more", b"y")]).await;
    add(&mut conn, &name, &[("data", b"\xff not utf-8")]).await;
    // One field, whatever its name, is the message.
    add(&mut conn, &name, &[("payload", br#"{"path": "news", "data": "second"}"#)]).await;
    assert_eq!(data(&mut sub, 2).await, [r#"{"k":1.0}"#, "second"]);
    sub.expect_no_event(Duration::from_millis(300)).await;
    let stats = source_stats(&server.url("")).await;
    assert_eq!(
        (stats["accepted"].as_u64(), stats["rejected"].as_u64(), stats["type"].as_str()),
        (Some(2), Some(2), Some("redis_stream")),
        "{stats}"
    );
    // Everything was acknowledged: nothing is pending in the group.
    let pending: (u64, redis::Value, redis::Value, redis::Value) =
        redis::cmd("XPENDING").arg(&name).arg("herald").query_async(&mut conn).await.unwrap();
    assert_eq!(pending.0, 0);
    server.shutdown().await;
    let _: () = conn.del(&name).await.unwrap();
}

#[tokio::test]
async fn every_entry_arrives_once_across_client_kill() {
    let name = unique("herald-test-src-", "kill", '-');
    let mut conn = redis().await;
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"redis_stream\"\nurl = \"{REDIS}\"\nstreams = [\"{name}\"]\n[map]\nchannels = [\"c\"]"
    ));
    let server = TestServer::with(|c| c.sources = vec![config]).await;
    connected(&server.url("")).await;
    let mut sub = Sse::open(&server.url("/sse/c")).await;
    support::subscribers(&server, "c", 1).await;
    for i in 0..20 {
        add(&mut conn, &name, &[("data", format!("m{i}").as_bytes())]).await;
    }
    // Herald's source connection, by its name.
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut conn).await.unwrap();
    let id = list
        .lines()
        .find(|l| l.contains(&format!("name=herald-source-{name} ")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")).map(str::to_owned))
        .expect("the source's connection is named");
    let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&id).query_async(&mut conn).await.unwrap();
    assert_eq!(killed, 1, "Herald's connection was killed");
    for i in 20..35 {
        add(&mut conn, &name, &[("data", format!("m{i}").as_bytes())]).await;
    }
    connected(&server.url("")).await;
    for i in 35..50 {
        add(&mut conn, &name, &[("data", format!("m{i}").as_bytes())]).await;
    }
    assert_eq!(data(&mut sub, 50).await, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>(), "each once, in order");
    sub.expect_no_event(Duration::from_millis(500)).await;
    server.shutdown().await;
    let _: () = conn.del(&name).await.unwrap();
}

#[tokio::test]
async fn an_entry_accepted_but_not_acknowledged_before_kill_9_is_not_published_twice() {
    let name = unique("herald-test-src-", "crash", '-');
    let conn = tokio::sync::Mutex::new(redis().await);
    // The same consumer, restarted, reads its pending entry back first: a repeat.
    let toml = format!(
        "name = \"{name}\"\ntype = \"redis_stream\"\nurl = \"{REDIS}\"\nstreams = [\"{name}\"]\nconsumer = \"node-1\"\n[sources.map]\nchannels = [\"c\"]\n"
    );
    let send = async |body: &str| add(&mut *conn.lock().await, &name, &[("data", body.as_bytes())]).await;
    support::sources::no_duplicate_after_a_crash_between_accept_and_ack(&name, &toml, send).await;
    let _: () = conn.lock().await.del(&name).await.unwrap();
}

#[tokio::test]
async fn entries_a_dead_consumer_left_pending_are_taken_over() {
    let name = unique("herald-test-src-", "claim", '-');
    let mut conn = redis().await;
    let _: () = conn.xgroup_create_mkstream(&name, "herald", "$").await.unwrap();
    add(&mut conn, &name, &[("data", b"left behind")]).await;
    // Another node takes it and dies before acknowledging it.
    let opts = redis::streams::StreamReadOptions::default().group("herald", "dead-node").count(10);
    let taken: redis::streams::StreamReadReply = conn.xread_options(&[&name], &[">"], &opts).await.unwrap();
    assert_eq!(taken.keys[0].ids.len(), 1);
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"redis_stream\"\nurl = \"{REDIS}\"\nstreams = [\"{name}\"]\nclaim_idle = \"500ms\"\n[map]\nchannels = [\"c\"]"
    ));
    let server = TestServer::with(|c| c.sources = vec![config]).await;
    let mut sse = Sse::open_with(&server.url("/sse/c"), &[("last-event-id", "0")]).await;
    assert_eq!(data(&mut sse, 1).await, ["left behind"]);
    server.shutdown().await;
    let _: () = conn.del(&name).await.unwrap();
}

#[tokio::test]
async fn two_cluster_nodes_in_one_group_publish_each_entry_once() {
    let name = unique("herald-test-src-", "pair", '-');
    let mut conn = redis().await;
    let config = |consumer: &str| {
        source(&format!(
            "name = \"{name}\"\ntype = \"redis_stream\"\nurl = \"{REDIS}\"\nstreams = [\"{name}\"]\nconsumer = \"{consumer}\"\nprefetch = 1\n[map]\nchannels = [\"c\"]"
        ))
    };
    let (a, b) = cluster_pair(config("a"), config("b")).await;
    let mut on_a = Sse::open(&a.url("/sse/c")).await;
    let mut on_b = Sse::open(&b.url("/sse/c")).await;
    support::subscribers(&a, "c", 1).await;
    support::subscribers(&b, "c", 1).await;
    for i in 0..40 {
        add(&mut conn, &name, &[("data", format!("m{i}").as_bytes())]).await;
    }
    for sub in [&mut on_a, &mut on_b] {
        assert_each_once(data(sub, 40).await, 40);
        sub.expect_no_event(Duration::from_millis(300)).await;
    }
    let (na, nb) = accepted_by(&a, &b).await;
    assert_eq!(na + nb, 40);
    a.shutdown().await;
    b.shutdown().await;
    let _: () = conn.del(&[&name]).await.unwrap();
}

#[tokio::test]
async fn pubsub_patterns_map_onto_channels() {
    let name = unique("herald-test-src-", "ps", '-');
    let mut conn = redis().await;
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"redis\"\nurl = \"{REDIS}\"\npatterns = [\"{name}.*\"]\nsubjects = [\"{name}-exact\"]\n[map]\nchannels = [\"ps/{{2}}\"]"
    ));
    let server = TestServer::with(|c| c.sources = vec![config]).await;
    connected(&server.url("")).await;
    let mut sub = Sse::open(&server.url("/sse/ps/weather")).await;
    support::subscribers(&server, "ps/weather", 1).await;
    // Subscribed once connected (the source reports connected after its subscriptions).
    let _: i64 = conn.publish(format!("{name}.weather"), "sunny").await.unwrap();
    let _: i64 = conn.publish(format!("{name}.weather"), "rain").await.unwrap();
    assert_eq!(data(&mut sub, 2).await, ["sunny", "rain"]);
    let stats = source_stats(&server.url("")).await;
    assert_eq!(stats["type"], "redis");
    server.shutdown().await;
}

/// A `redis-server` of the test's own that speaks only TLS and asks for a client certificate.
struct TlsRedis(std::process::Child);

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_tls_redis_is_used_with_its_ca_and_a_client_certificate_and_refused_without_one() {
    let certs = tempfile::tempdir().unwrap();
    support::tls::certificates(certs.path(), "ca");
    let path = |f: &str| certs.path().join(f).display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--tls-cert-file", &path("server.pem"), "--tls-key-file", &path("server.key"), "--tls-ca-cert-file", &path("ca.pem")])
        .args(["--tls-auth-clients", "yes"])
        .current_dir(certs.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is installed (Debian package redis-server)");
    let _server = TlsRedis(child);
    support::wait_for_port(port, 10, "the private redis-server");
    let config = |name: &str, client_cert: bool| {
        let cert = client_cert_keys(certs.path(), client_cert);
        source(&format!(
            "name = \"{name}\"\ntype = \"redis\"\nurl = \"rediss://127.0.0.1:{port}\"\nsubjects = [\"news\"]\n[tls]\nca_file = \"{}\"\n{cert}",
            path("ca.pem")
        ))
    };
    let (good, bad, mut sub) = trusted_and_refused(config("good", true), config("bad", false), "news").await;
    // Published with Redis's own command-line client, over TLS too.
    let out = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert", &path("ca.pem"), "--cert", &path("server.pem"), "--key", &path("server.key")])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "PUBLISH", "news", "over tls"])
        .output()
        .expect("redis-cli is installed (Debian package redis-tools)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "one subscriber, Herald: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(data(&mut sub, 1).await, ["over tls"]);
    // Without a client certificate the server refuses the handshake.
    stays_refused(&bad).await;
    good.shutdown().await;
    bad.shutdown().await;
}
