//! The NATS sources against real NATS servers, with messages published by NATS's own client
//! (async-nats): core subjects with wildcards mapped onto channels, a malformed message rejected
//! while the next arrives; JetStream durable consumers with every message exactly once across a
//! restart of a private nats-server, no duplicate after Herald dies between accepting a message
//! and acknowledging it, `deliver = "all"` reading what was stored before Herald came, and two
//! cluster nodes sharing the durable consumer publishing each message once.

mod support;

use herald::sse::Item;
use std::time::Duration;
use support::nats::PrivateNats;
use support::sources::{
    assert_each_once, cluster_pair, connected, data, recovered, reported_down, source, source_stats, stays_refused, trusted_and_refused,
    unique,
};
use support::{Sse, TestServer, WAIT, eventually};

const NATS: &str = "nats://127.0.0.1:4222";

async fn nats(url: &str) -> async_nats::Client {
    tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url))
        .await
        .unwrap_or_else(|_| panic!("NATS did not answer at {url} within 5s: start it (nats-server -js -p 4222)"))
        .unwrap_or_else(|e| panic!("NATS is not reachable at {url}: {e}. Start it (nats-server -js -p 4222)"))
}

/// A JetStream stream of the test's own over `subjects`.
async fn stream(js: &async_nats::jetstream::Context, name: &str, subjects: &[&str]) {
    let config = async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    js.get_or_create_stream(config).await.unwrap_or_else(|e| panic!("NATS has no usable JetStream ({e}): start it with -js"));
}

async fn js_publish(js: &async_nats::jetstream::Context, subject: &str, body: &str) {
    // Retried while a restarted server comes back.
    for _ in 0..100 {
        if let Ok(ack) = js.publish(subject.to_owned(), body.to_owned().into()).await
            && ack.await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not publish to JetStream");
}

#[tokio::test]
async fn core_subjects_map_onto_channels_and_a_malformed_message_is_rejected() {
    let name = unique("herald_test_", "core", '_');
    let client = nats(NATS).await;
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"nats\"\nurl = \"{NATS}\"\nsubjects = [\"{name}.orders.*\", \"{name}.audit.>\"]\n\
         [map]\nformat = \"json\"\nchannels = [\"{{2}}/{{3}}\"]\nevent_field = \"/kind\""
    ));
    let server = TestServer::with(|c| c.sources = vec![config]).await;
    connected(&server.url("")).await;
    let mut orders = Sse::open(&server.url("/sse/orders/7")).await;
    let mut audit = Sse::open(&server.url("/sse/audit/x")).await;
    support::subscribers(&server, "orders/7", 1).await;
    support::subscribers(&server, "audit/x", 1).await;
    client.publish(format!("{name}.orders.7"), r#"{"kind": "created", "n": 1}"#.into()).await.unwrap();
    client.publish(format!("{name}.orders.7"), "not json".into()).await.unwrap();
    client.publish(format!("{name}.orders.7"), r#"{"kind": "paid", "n": 2}"#.into()).await.unwrap();
    client.publish(format!("{name}.audit.x.deep"), r#"{"kind": "seen"}"#.into()).await.unwrap();
    // `*` is one token: not delivered.
    client.publish(format!("{name}.orders.7.extra"), r#"{"kind": "no"}"#.into()).await.unwrap();
    client.flush().await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        if let Item::Event(e) = tokio::time::timeout(WAIT, orders.next_item()).await.unwrap().unwrap() {
            got.push((e.event, e.data));
        }
    }
    assert_eq!(got, [("created".into(), r#"{"kind":"created","n":1}"#.into()), ("paid".into(), r#"{"kind":"paid","n":2}"#.into())]);
    assert_eq!(data(&mut audit, 1).await, [r#"{"kind":"seen"}"#]);
    orders.expect_no_event(Duration::from_millis(300)).await;
    let stats = source_stats(&server.url("")).await;
    assert_eq!(
        (stats["accepted"].as_u64(), stats["rejected"].as_u64(), stats["type"].as_str()),
        (Some(3), Some(1), Some("nats")),
        "{stats}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn jetstream_delivers_every_message_once_across_a_server_restart() {
    let mut server = PrivateNats::start();
    let name = unique("herald_test_", "js_restart", '_');
    let client = nats(&server.url()).await;
    let js = async_nats::jetstream::new(client);
    stream(&js, &name, &[&format!("{name}.>")]).await;
    let config =
        source(&format!("name = \"{name}\"\ntype = \"jetstream\"\nurl = \"{}\"\nstream = \"{name}\"\nrequired = true", server.url()));
    let hub = TestServer::with(|c| c.sources = vec![config]).await;
    connected(&hub.url("")).await;
    let mut sub = Sse::open(&hub.url(&format!("/sse/{name}.news"))).await;
    support::subscribers(&hub, &format!("{name}.news"), 1).await;
    for i in 0..20 {
        js_publish(&js, &format!("{name}.news"), &format!("m{i}")).await;
    }
    assert_eq!(data(&mut sub, 20).await, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
    server.stop();
    // Down, and required: not ready, until it is back.
    reported_down(&hub.url(""), &name).await;
    server.resume();
    let client = nats(&server.url()).await;
    let js = async_nats::jetstream::new(client);
    for i in 20..40 {
        js_publish(&js, &format!("{name}.news"), &format!("m{i}")).await;
    }
    assert_eq!(data(&mut sub, 20).await, (20..40).map(|i| format!("m{i}")).collect::<Vec<_>>(), "each once, in order");
    sub.expect_no_event(Duration::from_millis(500)).await;
    recovered(&hub.url(""), 40).await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_jetstream_message_accepted_but_not_acknowledged_before_kill_9_is_not_published_twice() {
    let name = unique("herald_test_", "js_crash", '_');
    let client = nats(NATS).await;
    let js = async_nats::jetstream::new(client);
    stream(&js, &name, &[&format!("{name}.>")]).await;
    // The durable consumer redelivers the unacknowledged message after ack_wait.
    let toml = format!(
        "name = \"{name}\"\ntype = \"jetstream\"\nurl = \"{NATS}\"\nstream = \"{name}\"\nack_wait = \"1s\"\n[sources.map]\nchannels = [\"c\"]\n"
    );
    let send = async |body: &str| js_publish(&js, &format!("{name}.a"), body).await;
    support::sources::no_duplicate_after_a_crash_between_accept_and_ack(&name, &toml, send).await;
    let _ = js.delete_stream(&name).await;
}

#[tokio::test]
async fn deliver_all_reads_what_the_stream_held_before_and_malformed_messages_are_terminated() {
    let name = unique("herald_test_", "js_all", '_');
    let client = nats(NATS).await;
    let js = async_nats::jetstream::new(client);
    stream(&js, &name, &[&format!("{name}.>")]).await;
    for i in 0..5 {
        js_publish(&js, &format!("{name}.x"), &format!(r#"{{"path": "early", "data": "m{i}"}}"#)).await;
    }
    js_publish(&js, &format!("{name}.x"), r#"{"path": "early", "data": "bad", "id": "a\nb"}"#).await;
    js_publish(&js, &format!("{name}.x"), r#"{"path": "early", "data": "m5"}"#).await;
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"jetstream\"\nurl = \"{NATS}\"\nstream = \"{name}\"\ndeliver = \"all\"\nack_wait = \"1s\"\nprefetch = 2"
    ));
    let hub = TestServer::with(|c| c.sources = vec![config]).await;
    eventually(async || source_stats(&hub.url("")).await["accepted"] == 6).await;
    let mut sse = Sse::open_with(&hub.url("/sse/early"), &[("last-event-id", "0")]).await;
    assert_eq!(data(&mut sse, 6).await, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    // Terminated, not redelivered after ack_wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = source_stats(&hub.url("")).await;
    assert_eq!((stats["rejected"].as_u64(), stats["received"].as_u64()), (Some(1), Some(7)), "{stats}");
    hub.shutdown().await;
    let _ = js.delete_stream(&name).await;
}

#[tokio::test]
async fn a_tls_broker_is_used_with_its_ca_and_refused_without_it() {
    let certs = tempfile::tempdir().unwrap();
    support::tls::certificates(certs.path(), "ca");
    support::tls::certificates(certs.path(), "other");
    let path = |f: &str| certs.path().join(f).display().to_string();
    let server = PrivateNats::start_with(&["--tls", "--tlscert", &path("server.pem"), "--tlskey", &path("server.key")]);
    let url = format!("tls://127.0.0.1:{}", server.port);
    let config = |name: &str, ca: &str| {
        source(&format!("name = \"{name}\"\ntype = \"nats\"\nurl = \"{url}\"\nsubjects = [\"t.>\"]\n[tls]\nca_file = \"{}\"", path(ca)))
    };
    let (good, bad, mut sub) = trusted_and_refused(config("good", "ca.pem"), config("bad", "other.pem"), "t.x").await;
    let tls = herald::tls::ClientTls { ca_file: Some(path("ca.pem").into()), ..Default::default() };
    let client = async_nats::ConnectOptions::new()
        .tls_client_config(tls.client_config("test", &herald::tls::KeyNames::PLAIN).unwrap())
        .require_tls(true)
        .connect(url.as_str())
        .await
        .unwrap();
    client.publish("t.x", "over tls".into()).await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(data(&mut sub, 1).await, ["over tls"]);
    // A server whose certificate does not chain to the configured CA is never trusted.
    stays_refused(&bad).await;
    good.shutdown().await;
    bad.shutdown().await;
}

#[tokio::test]
async fn two_cluster_nodes_sharing_the_durable_consumer_publish_each_message_once() {
    let name = unique("herald_test_", "js_pair", '_');
    let client = nats(NATS).await;
    let js = async_nats::jetstream::new(client);
    stream(&js, &name, &[&format!("{name}.>")]).await;
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"jetstream\"\nurl = \"{NATS}\"\nstream = \"{name}\"\nprefetch = 1\n[map]\nchannels = [\"c\"]"
    ));
    let (a, b) = cluster_pair(config.clone(), config.clone()).await;
    let mut on_a = Sse::open(&a.url("/sse/c")).await;
    support::subscribers(&a, "c", 1).await;
    for i in 0..40 {
        js_publish(&js, &format!("{name}.x"), &format!("m{i}")).await;
    }
    assert_each_once(data(&mut on_a, 40).await, 40);
    on_a.expect_no_event(Duration::from_millis(300)).await;
    // One consumer for both: no message was taken by both nodes.
    let (sa, sb) = (source_stats(&a.url("")).await, source_stats(&b.url("")).await);
    let taken = |s: &serde_json::Value| s["accepted"].as_u64().unwrap() + s["duplicates"].as_u64().unwrap();
    assert_eq!(taken(&sa) + taken(&sb), 40, "{sa} {sb}");
    a.shutdown().await;
    b.shutdown().await;
    let _ = js.delete_stream(&name).await;
}

#[tokio::test]
async fn two_cluster_nodes_in_one_queue_group_publish_each_core_message_once() {
    let name = unique("herald_test_", "core_pair", '_');
    let client = nats(NATS).await;
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"nats\"\nurl = \"{NATS}\"\nsubjects = [\"{name}.>\"]\nqueue_group = \"herald\"\n[map]\nchannels = [\"c\"]"
    ));
    let (a, b) = cluster_pair(config.clone(), config.clone()).await;
    let mut on_b = Sse::open(&b.url("/sse/c")).await;
    support::subscribers(&b, "c", 1).await;
    for i in 0..40 {
        client.publish(format!("{name}.x"), format!("m{i}").into()).await.unwrap();
    }
    client.flush().await.unwrap();
    assert_each_once(data(&mut on_b, 40).await, 40);
    on_b.expect_no_event(Duration::from_millis(300)).await;
    let (sa, sb) = (source_stats(&a.url("")).await, source_stats(&b.url("")).await);
    assert_eq!(sa["received"].as_u64().unwrap() + sb["received"].as_u64().unwrap(), 40, "one node received each: {sa} {sb}");
    a.shutdown().await;
    b.shutdown().await;
}
