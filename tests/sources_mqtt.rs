//! The MQTT source against real Mosquitto brokers, with messages published by Mosquitto's own
//! client (`mosquitto_pub`): topic filters with `+` and `#` mapped onto channels over MQTT 3.1.1
//! and 5, a malformed message rejected while the next arrives; every message exactly once across
//! a restart of a private mosquitto; what is published while Herald is away delivered when it
//! comes back (the persistent session); no duplicate after Herald dies between accepting a
//! message and acknowledging it; two cluster nodes in one shared subscription publishing each
//! message once.

mod support;

use herald::sse::Item;
use std::time::Duration;
use support::mqtt::{PORT, PrivateMosquitto, publish, publish_with};
use support::process::Served;
use support::sources::{
    accepted_by, assert_each_once, cluster_pair, connected, data, recovered, reported_down, source, source_stats, stays_refused,
    trusted_and_refused, unique,
};
use support::{Sse, TestServer, WAIT, eventually};

/// Ends the persistent session a test made on the shared broker (a clean-session connection
/// with its client id does), so that runs leave nothing queued behind.
fn forget_session(client_id: &str) {
    let _ = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &PORT.to_string(), "-i", client_id, "-t", "herald-test/forget", "-E"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

#[tokio::test]
async fn topic_filters_map_onto_channels_over_3_1_1_and_5_and_a_malformed_message_is_rejected() {
    for (protocol, publisher) in [("3.1.1", "mqttv311"), ("5", "mqttv5")] {
        let name = unique("herald-test-", "filters", '-');
        let config = source(&format!(
            "name = \"{name}\"\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{PORT}\"\nprotocol = \"{protocol}\"\n\
             topics = [\"{name}/orders/+\", \"{name}/audit/#\"]\n\
             [map]\nformat = \"json\"\nchannels = [\"{{2}}/{{3}}\"]\nevent_field = \"/kind\""
        ));
        let server = TestServer::with(|c| c.sources = vec![config]).await;
        connected(&server.url("")).await;
        let mut orders = Sse::open(&server.url("/sse/orders/7")).await;
        let mut audit = Sse::open(&server.url("/sse/audit/x")).await;
        support::subscribers(&server, "orders/7", 1).await;
        support::subscribers(&server, "audit/x", 1).await;
        let orders_topic = format!("{name}/orders/7");
        publish(PORT, publisher, &orders_topic, &[r#"{"kind": "created", "n": 1}"#, "not json", r#"{"kind": "paid", "n": 2}"#]);
        publish(PORT, publisher, &format!("{name}/audit/x/deep"), &[r#"{"kind": "seen"}"#]);
        // `+` is one level: not delivered.
        publish(PORT, publisher, &format!("{name}/orders/7/extra"), &[r#"{"kind": "no"}"#]);
        let mut got = Vec::new();
        while got.len() < 2 {
            if let Item::Event(e) = tokio::time::timeout(WAIT, orders.next_item()).await.unwrap().unwrap() {
                got.push((e.event, e.data));
            }
        }
        assert_eq!(
            got,
            [("created".into(), r#"{"kind":"created","n":1}"#.into()), ("paid".into(), r#"{"kind":"paid","n":2}"#.into())],
            "MQTT {protocol}"
        );
        assert_eq!(data(&mut audit, 1).await, [r#"{"kind":"seen"}"#]);
        orders.expect_no_event(Duration::from_millis(300)).await;
        let stats = source_stats(&server.url("")).await;
        assert_eq!(
            (stats["accepted"].as_u64(), stats["rejected"].as_u64(), stats["type"].as_str()),
            (Some(3), Some(1), Some("mqtt")),
            "{stats}"
        );
        server.shutdown().await;
        forget_session(&format!("herald-{name}"));
    }
}

#[tokio::test]
async fn every_message_arrives_once_across_a_broker_restart() {
    let mut broker = PrivateMosquitto::start();
    let name = unique("herald-test-", "restart", '-');
    let config = source(&format!(
        "name = \"{name}\"\ntype = \"mqtt\"\nurl = \"{}\"\ntopics = [\"news/#\"]\nrequired = true\n[map]\nchannels = [\"news\"]",
        broker.url()
    ));
    let hub = TestServer::with(|c| c.sources = vec![config]).await;
    connected(&hub.url("")).await;
    let mut sub = Sse::open(&hub.url("/sse/news")).await;
    support::subscribers(&hub, "news", 1).await;
    let batch = |range: std::ops::Range<usize>| range.map(|i| format!("m{i}")).collect::<Vec<_>>();
    let port = broker.port;
    let send = move |msgs: &[String]| publish(port, "mqttv5", "news/a", &msgs.iter().map(String::as_str).collect::<Vec<_>>());
    send(&batch(0..20));
    assert_eq!(data(&mut sub, 20).await, batch(0..20));
    broker.stop();
    // Down, and required: not ready, until it is back.
    reported_down(&hub.url(""), &name).await;
    broker.resume();
    // Published as soon as the broker is back, most likely before Herald has reconnected: kept
    // in Herald's session.
    send(&batch(20..40));
    assert_eq!(data(&mut sub, 20).await, batch(20..40), "each once, in order");
    connected(&hub.url("")).await;
    send(&batch(40..50));
    assert_eq!(data(&mut sub, 10).await, batch(40..50));
    sub.expect_no_event(Duration::from_millis(500)).await;
    recovered(&hub.url(""), 50).await;
    hub.shutdown().await;
}

#[tokio::test]
async fn what_is_published_while_herald_is_away_arrives_when_it_comes_back() {
    let name = unique("herald-test-", "away", '-');
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[history]\nstore = \"memory\"\n[[sources]]\nname = \"{name}\"\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{PORT}\"\n\
         protocol = \"3.1.1\"\ntopics = [\"{name}/#\"]\n[sources.map]\nchannels = [\"c\"]\n"
    );
    std::fs::write(dir.path().join("herald.toml"), toml).unwrap();
    let args = ["--config", "herald.toml"];
    let mut first = Served::start_with(dir.path(), &args);
    connected(&first.url("")).await;
    first.kill_9();
    let away: Vec<String> = (0..5).map(|i| format!("away {i}")).collect();
    publish(PORT, "mqttv311", &format!("{name}/x"), &away.iter().map(String::as_str).collect::<Vec<_>>());
    let second = Served::start_with(dir.path(), &args);
    eventually(async || source_stats(&second.url("")).await["accepted"] == 5).await;
    let mut sse = Sse::open_with(&second.url("/sse/c"), &[("last-event-id", "0")]).await;
    assert_eq!(data(&mut sse, 5).await, away);
    sse.expect_no_event(Duration::from_millis(300)).await;
    drop(second);
    forget_session(&format!("herald-{name}"));
}

#[tokio::test]
async fn a_message_accepted_but_not_acknowledged_before_kill_9_is_not_published_twice() {
    let name = unique("herald-test-", "crash", '-');
    let toml = format!(
        "name = \"{name}\"\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{PORT}\"\ntopics = [\"{name}/#\"]\n[sources.map]\nchannels = [\"c\"]\n"
    );
    let topic = format!("{name}/a");
    let send = async |body: &str| publish(PORT, "mqttv5", &topic, &[body]);
    support::sources::no_duplicate_after_a_crash_between_accept_and_ack(&name, &toml, send).await;
    forget_session(&format!("herald-{name}"));
}

#[tokio::test]
async fn two_cluster_nodes_in_one_shared_subscription_publish_each_message_once() {
    let name = unique("herald-test-", "pair", '-');
    let config = |node: &str| {
        source(&format!(
            "name = \"{name}\"\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{PORT}\"\ntopics = [\"{name}/#\"]\n\
             share_group = \"herald\"\nclient_id = \"herald-{name}-{node}\"\n[map]\nchannels = [\"c\"]"
        ))
    };
    let (a, b) = cluster_pair(config("a"), config("b")).await;
    let mut on_a = Sse::open(&a.url("/sse/c")).await;
    let mut on_b = Sse::open(&b.url("/sse/c")).await;
    support::subscribers(&a, "c", 1).await;
    support::subscribers(&b, "c", 1).await;
    let sent: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    publish(PORT, "mqttv5", &format!("{name}/x"), &sent.iter().map(String::as_str).collect::<Vec<_>>());
    for sub in [&mut on_a, &mut on_b] {
        assert_each_once(data(sub, 40).await, 40);
        sub.expect_no_event(Duration::from_millis(300)).await;
    }
    let (na, nb) = accepted_by(&a, &b).await;
    assert_eq!(na + nb, 40);
    assert!(na > 0 && nb > 0, "both nodes took messages: {na} {nb}");
    a.shutdown().await;
    b.shutdown().await;
    forget_session(&format!("herald-{name}-a"));
    forget_session(&format!("herald-{name}-b"));
}

#[tokio::test]
async fn a_tls_broker_is_used_with_its_ca_and_credentials_and_refused_without_the_ca() {
    let certs = tempfile::tempdir().unwrap();
    support::tls::certificates(certs.path(), "ca");
    support::tls::certificates(certs.path(), "other");
    let path = |f: &str| certs.path().join(f).display().to_string();
    let passwords = certs.path().join("passwords");
    std::fs::write(&passwords, "").unwrap();
    let made = std::process::Command::new("mosquitto_passwd").args(["-b"]).arg(&passwords).args(["herald", "p@ss:word"]).status();
    assert!(made.unwrap().success(), "mosquitto_passwd (Debian package mosquitto) makes the broker's password file");
    let broker = PrivateMosquitto::start_with(&format!(
        "certfile {}\nkeyfile {}\npassword_file {}\nallow_anonymous false",
        path("server.pem"),
        path("server.key"),
        passwords.display()
    ));
    // Credentials in the URL, percent-encoded.
    let url = format!("mqtts://herald:p%40ss%3Aword@127.0.0.1:{}", broker.port);
    let config = |name: &str, ca: &str| {
        source(&format!(
            "name = \"{name}\"\ntype = \"mqtt\"\nurl = \"{url}\"\ntopics = [\"t/#\"]\n[tls]\nca_file = \"{}\"\n[map]\nchannels = [\"t\"]",
            path(ca)
        ))
    };
    let (good, bad, mut sub) = trusted_and_refused(config("good", "ca.pem"), config("bad", "other.pem"), "t").await;
    let tls_args = ["--cafile", &path("ca.pem"), "-u", "herald", "-P", "p@ss:word"];
    publish_with(broker.port, "mqttv5", "t/x", &["over tls"], &tls_args);
    assert_eq!(data(&mut sub, 1).await, ["over tls"]);
    // A broker whose certificate does not chain to the configured CA is never trusted.
    stays_refused(&bad).await;
    good.shutdown().await;
    bad.shutdown().await;
}

#[tokio::test]
async fn a_message_larger_than_the_client_librarys_default_limit_arrives() {
    // 100 KB: past the MQTT client's own 10 KiB default, within limits.max_event_size.
    let big = "x".repeat(100_000);
    for (protocol, publisher) in [("3.1.1", "mqttv311"), ("5", "mqttv5")] {
        let name = unique("herald-test-", "big", '-');
        let config = source(&format!(
            "name = \"{name}\"\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{PORT}\"\nprotocol = \"{protocol}\"\ntopics = [\"{name}/#\"]\n[map]\nchannels = [\"c\"]"
        ));
        let server = TestServer::with(|c| c.sources = vec![config]).await;
        connected(&server.url("")).await;
        let mut sub = Sse::open(&server.url("/sse/c")).await;
        support::subscribers(&server, "c", 1).await;
        publish(PORT, publisher, &format!("{name}/x"), &[&big, "after"]);
        assert_eq!(data(&mut sub, 2).await, [big.clone(), "after".into()], "MQTT {protocol}");
        server.shutdown().await;
        forget_session(&format!("herald-{name}"));
    }
}
