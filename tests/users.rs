//! Events addressed to users: they reach every stream of those users and no one else's; an
//! event of a channel addressed to users reaches those users' streams of that channel; `GET
//! /sse` is a user's own stream; each user has history, replayed by `Last-Event-ID`; a property
//! test with many users, random addressing and random reconnects finds no event delivered to
//! another user and every user's sequence whole.

mod support;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use support::{Sse, TestServer, http};

const SECRET: &str = "users-test-secret";

fn token(user: &str) -> String {
    let claims = json!({"sub": user, "exp": herald::hub::unix_now() + 3600, "subscribe": "**"});
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

async fn server() -> TestServer {
    TestServer::with(|c| {
        c.access.subscribe.jwt = true;
        c.access.jwt.secret = SECRET.into();
        c.keepalive_interval = Duration::ZERO;
    })
    .await
}

async fn open(server: &TestServer, path: &str, user: &str, last_id: Option<&str>) -> Sse {
    let auth = format!("Bearer {}", token(user));
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(id) = last_id {
        headers.push(("last-event-id", id));
    }
    let sse = Sse::open_with(&server.url(path), &headers).await;
    assert_eq!(sse.status, 200, "{path} as {user}");
    sse
}

/// POSTs `body` to `path`; the ids, or the status and error.
async fn post(server: &TestServer, path: &str, body: Value) -> Result<Vec<String>, (u16, String)> {
    let resp = http().post(server.url(path)).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    if status != 200 {
        return Err((status, v["error"].as_str().unwrap_or("").to_owned()));
    }
    Ok(v["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_owned()).collect())
}

/// Waits until the hub counts `n` open streams.
async fn streams(server: &TestServer, n: u64) {
    support::eventually(async || server.stats().await["totals"]["subscriptions"].as_u64() == Some(n)).await;
}

#[tokio::test]
async fn an_event_for_users_reaches_all_of_their_streams_and_no_one_else() {
    let server = server().await;
    let mut alice_own = open(&server, "/sse", "alice", None).await;
    let mut alice_orders = open(&server, "/sse/orders/1", "alice", None).await;
    let mut bob_own = open(&server, "/sse", "bob", None).await;
    let mut bob_orders = open(&server, "/sse/orders/1", "bob", None).await;
    streams(&server, 4).await;

    post(&server, "/publish", json!({"users": ["alice"], "data": "for alice"})).await.unwrap();
    post(&server, "/publish", json!({"users": ["alice", "bob"], "event": "notice", "data": "for both"})).await.unwrap();
    // An event of the channel for alice only, then one for every subscriber of the channel.
    post(&server, "/sse/orders/1", json!({"users": ["alice"], "data": "alice's order"})).await.unwrap();
    server.publish_data("orders/1", "everyone's order").await;

    assert_eq!(alice_own.data(2).await, ["for alice", "for both"]);
    assert_eq!(alice_orders.data(4).await, ["for alice", "for both", "alice's order", "everyone's order"]);
    assert_eq!(bob_own.data(1).await, ["for both"]);
    assert_eq!(bob_orders.data(2).await, ["for both", "everyone's order"]);
    for stream in [&mut alice_own, &mut bob_own, &mut bob_orders] {
        stream.expect_no_event(Duration::from_millis(200)).await;
    }
    // User ids are not listed with the channels.
    let stats = server.stats().await;
    assert!(stats["channels"].as_object().unwrap().keys().all(|k| !k.contains("alice")), "{stats}");
    assert!(stats["totals"]["user_logs"].as_u64().unwrap() >= 4, "{stats}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_users_own_stream_replays_what_it_missed() {
    let server = server().await;
    let mut first = open(&server, "/sse", "carol", None).await;
    streams(&server, 1).await;
    let ids = post(
        &server,
        "/publish",
        json!([{"users": ["carol"], "data": "1"}, {"users": ["dave"], "data": "x"}, {"users": ["carol"], "data": "2"}]),
    )
    .await
    .unwrap();
    let got = first.events(2).await;
    assert_eq!(got.iter().map(|e| e.last_event_id.as_str()).collect::<Vec<_>>(), [ids[0].as_str(), ids[2].as_str()]);
    drop(first);
    post(&server, "/publish", json!({"users": ["carol"], "data": "3"})).await.unwrap();
    post(&server, "/publish", json!({"users": ["dave"], "data": "y"})).await.unwrap();
    let mut again = open(&server, "/sse", "carol", Some(&ids[2])).await;
    assert_eq!(again.data(1).await, ["3"]);
    again.expect_no_event(Duration::from_millis(200)).await;
    // From the start of history, with the text form of publishing too.
    let resp = http().post(server.url("/publish?user=carol&event=t")).header("content-type", "text/plain").body("4").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut all = Sse::open_with(&server.url("/sse?replay=all"), &[("authorization", &format!("Bearer {}", token("carol")))]).await;
    assert_eq!(all.data(4).await, ["1", "2", "3", "4"]);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_addressing_and_missing_users_get_clear_errors() {
    let server = server().await;
    for (body, why) in [
        (json!({"users": ["a#b"], "data": "x"}), "`#`"),
        (json!({"users": [""], "data": "x"}), "empty"),
        (json!({"users": ["x".repeat(300)], "data": "x"}), "longer than 256"),
        (json!({"users": (0..1001).map(|i| format!("u{i}")).collect::<Vec<_>>(), "data": "x"}), "max_users_per_event"),
        (json!({"users": ["a"], "channel": "bad channel", "data": "x"}), "invalid channel name"),
        (json!({"data": "x"}), "`users`"),
    ] {
        let (status, error) = post(&server, "/publish", body).await.unwrap_err();
        assert_eq!(status, 400, "{why}: {error}");
        assert!(error.contains(why), "{why}: {error}");
    }
    // A user's own stream needs a token, and a token that names a user.
    let anonymous = http().get(server.url("/sse")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let nameless = jsonwebtoken::encode(
        &Header::default(),
        &json!({"exp": herald::hub::unix_now() + 60}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let resp = http().get(server.url("/sse")).bearer_auth(nameless).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("names no user"));
    server.shutdown().await;

    // Without tokens there are no users' streams: the old answer.
    let plain = TestServer::start().await;
    let resp = http().get(plain.url("/sse")).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("name at least one channel"));
    plain.shutdown().await;
}

/// A small deterministic generator, so that a failing script can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Many users with several streams each; events addressed to random sets of users; streams
/// dropped and reopened with the last id they got. Every stream must end up with exactly its
/// user's events, in order, once each.
#[tokio::test]
async fn property_no_stream_gets_another_users_event_and_every_user_gets_all_of_its_own() {
    for seed in [0x9e3779b97f4a7c15u64, 0x2545f4914f6cdd1d, 0xdeadbeefcafef00d] {
        let mut rng = Rng(seed);
        let server = server().await;
        let users: Vec<String> = (0..6).map(|i| format!("user-{i}")).collect();
        // Two streams per user: its own stream, and a channel's (which gets its events too).
        let paths = ["/sse", "/sse/room/1"];
        // (user, path, the stream, the (id, data) it got so far)
        type Conn<'a> = (usize, &'a str, Sse, Vec<(String, String)>);
        let mut conns: Vec<Conn> = Vec::new();
        for (u, user) in users.iter().enumerate() {
            for path in paths {
                conns.push((u, path, open(&server, path, user, None).await, Vec::new()));
            }
        }
        streams(&server, conns.len() as u64).await;
        let mut expected: HashMap<usize, Vec<(String, String)>> = HashMap::new();
        for step in 0..40 {
            if rng.below(4) == 0 {
                // Reconnect one stream from the last id it got (after reading what is due).
                let k = rng.below(conns.len());
                let (u, path, stream, got) = &mut conns[k];
                let due = expected.get(u).map_or(0, Vec::len) - got.len();
                for ev in stream.events(due).await {
                    got.push((ev.last_event_id, ev.data));
                }
                let last = got.last().map(|(id, _)| id.clone());
                *stream = open(&server, path, &users[*u], last.as_deref()).await;
                streams(&server, conns.len() as u64).await;
            }
            let n = 1 + rng.below(3);
            let to: Vec<usize> = (0..n).map(|_| rng.below(users.len())).collect();
            let names: Vec<&str> = to.iter().map(|&u| users[u].as_str()).collect();
            let data = format!("seed {seed:x} step {step} for {names:?}");
            let id = post(&server, "/publish", json!({"users": names, "data": data})).await.unwrap().remove(0);
            let mut once = to.clone();
            once.sort_unstable();
            once.dedup();
            for u in once {
                expected.entry(u).or_default().push((id.clone(), data.clone()));
            }
        }
        for (u, path, stream, got) in &mut conns {
            let want = expected.get(u).cloned().unwrap_or_default();
            for ev in stream.events(want.len() - got.len()).await {
                got.push((ev.last_event_id, ev.data));
            }
            stream.expect_no_event(Duration::from_millis(100)).await;
            assert_eq!(got, &want, "seed {seed:x}: {} on {path}", users[*u]);
        }
        server.shutdown().await;
    }
}

/// A user's history survives a restart with the disk store, even where channels must be
/// declared (users' logs are not channels a configuration lists).
#[tokio::test]
async fn a_users_history_survives_a_restart_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "allow_undefined_channels = false\n[history]\nstore = \"disk\"\nfsync = \"always\"\n[access.subscribe]\njwt = true\n[access.jwt]\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let mut node = support::process::Served::start_with(dir.path(), &args);
    let publish = |node: &support::process::Served, body: Value| {
        let url = node.url("/publish");
        async move { http().post(url).json(&body).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let first = publish(&node, json!({"users": ["erin"], "data": "before"})).await;
    let first_id = first["ids"][0].as_str().unwrap().to_owned();
    publish(&node, json!({"users": ["frank"], "data": "not erin's"})).await;
    node.kill_9();
    let node = support::process::Served::start_with(dir.path(), &args);
    publish(&node, json!({"users": ["erin"], "data": "after"})).await;
    let auth = format!("Bearer {}", token("erin"));
    let mut all = Sse::open_with(&node.url("/sse?replay=all"), &[("authorization", &auth)]).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.data(2).await, ["before", "after"]);
    all.expect_no_event(Duration::from_millis(200)).await;
    let mut resumed = Sse::open_with(&node.url("/sse"), &[("authorization", &auth), ("last-event-id", &first_id)]).await;
    assert_eq!(resumed.data(1).await, ["after"]);
}

/// A user's log cannot be named by a client: not to subscribe to it, nor to publish into it.
#[tokio::test]
async fn no_client_can_name_a_users_log() {
    let server = TestServer::start().await;
    for path in ["/sse/%23u:alice", "/sse?channel=%23u:alice", "/sse?channel=a&channel=%23u:alice%23a"] {
        let resp = http().get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        assert!(resp.text().await.unwrap().contains("invalid channel name"), "{path}");
    }
    let resp = http().post(server.url("/sse/%23u:alice")).json(&json!({"data": "x"})).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    for body in [json!({"channel": "#u:alice", "data": "x"}), json!({"channels": ["a", "#u:alice#a"], "data": "x"})] {
        let (status, error) = post(&server, "/publish", body).await.unwrap_err();
        assert_eq!(status, 400, "{error}");
    }
    assert_eq!(server.stats().await["totals"]["user_logs"], 0);
    server.shutdown().await;
}

/// A user's own log is the global subscribe policy's to give: a stream admitted by its
/// channel's policy alone gets that channel's events for the user, not the user's private ones.
#[tokio::test]
async fn a_channel_stream_reads_the_users_own_log_only_where_the_global_policy_admits() {
    let server = TestServer::with(|c| {
        c.access.jwt.secret = SECRET.into();
        // Nobody on this machine passes the global policy.
        c.access.subscribe.allow_from = vec!["192.0.2.0/24".into()];
        c.channels.push(herald::config::ChannelConfig {
            pattern: "rooms/*".into(),
            access: Some(herald::config::ChannelAccessConfig {
                subscribe: Some(herald::config::access::PolicyConfig { jwt: true, ..Default::default() }),
                publish: None,
            }),
            ..Default::default()
        });
    })
    .await;
    let mut room = open(&server, "/sse/rooms/1", "ivan", None).await;
    streams(&server, 1).await;
    post(&server, "/publish", json!({"users": ["ivan"], "data": "private"})).await.unwrap();
    post(&server, "/sse/rooms/1", json!({"users": ["ivan"], "data": "the room's, for ivan"})).await.unwrap();
    assert_eq!(room.data(1).await, ["the room's, for ivan"]);
    room.expect_no_event(Duration::from_millis(200)).await;
    // And the user's own stream is refused by the global policy.
    let own = http().get(server.url("/sse")).bearer_auth(token("ivan")).send().await.unwrap();
    assert_eq!(own.status(), 403);
    server.shutdown().await;
}
