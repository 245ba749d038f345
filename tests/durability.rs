//! Subscribers see only what will survive: an event reaches a live subscriber only once the store
//! has made it as durable as `fsync` promises; an append that fails delivers nothing (so the
//! publisher's retry is no duplicate); a `kill -9` never erases an event somebody already saw.

mod support;

use herald::event::Event;
use herald::history::{Durable, HistoryStore, StoreError};
use herald::sse::Item;
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use support::process::Served;
use support::{Sse, TestServer, http, subscribers};
use tokio::sync::oneshot;

/// A store whose next appends fail when told to, or wait until the test releases them.
#[derive(Default)]
struct FaultyStore {
    /// For each coming append: what it waits for, and whether it then fails. Appends beyond the
    /// script succeed at once.
    script: Mutex<std::collections::VecDeque<(Option<oneshot::Receiver<()>>, bool)>>,
}

impl FaultyStore {
    /// The next append fails (at once).
    fn fails_next(&self) {
        self.script.lock().push_back((None, true));
    }

    /// The next append answers (`fails` or not) only when the returned sender is used.
    fn holds_next(&self, fails: bool) -> oneshot::Sender<()> {
        let (release, held) = oneshot::channel();
        self.script.lock().push_back((Some(held), fails));
        release
    }
}

impl HistoryStore for FaultyStore {
    fn kind(&self) -> &'static str {
        "faulty"
    }

    fn append(&self, _events: &[Arc<Event>]) -> Result<Option<Durable>, StoreError> {
        let (held, fails) = self.script.lock().pop_front().unwrap_or_default();
        Ok(Some(Box::pin(async move {
            if let Some(held) = held {
                let _ = held.await;
            }
            if fails { Err(StoreError("injected write failure".into())) } else { Ok(()) }
        })))
    }
}

/// A server over a [`FaultyStore`], with a subscriber on channel `c`.
async fn faulty_server() -> (Arc<FaultyStore>, TestServer, Sse) {
    let store = Arc::new(FaultyStore::default());
    let server = TestServer::with_store(store.clone()).await;
    let sse = Sse::open(&server.url("/sse/c")).await;
    subscribers(&server, "c", 1).await;
    (store, server, sse)
}

async fn post(server: &TestServer, channel: &str, data: &str) -> reqwest::Response {
    http().post(server.url(&format!("/sse/{channel}"))).json(&json!({ "data": data })).send().await.unwrap()
}

/// Publishes `data` to `c` from a task of its own: its status once the hub answers.
fn post_in_background(server: &TestServer, data: &'static str) -> tokio::task::JoinHandle<reqwest::StatusCode> {
    let url = server.url("/sse/c");
    tokio::spawn(async move { http().post(url).json(&json!({ "data": data })).send().await.map(|r| r.status()).unwrap_or_default() })
}

#[tokio::test]
async fn a_failed_append_delivers_nothing_and_later_events_still_flow() {
    let (store, server, mut sse) = faulty_server().await;
    assert_eq!(post(&server, "c", "a").await.status(), 200);
    assert_eq!(sse.data(1).await, ["a"]);

    store.fails_next();
    let refused = post(&server, "c", "lost").await;
    assert_eq!(refused.status(), 503);
    let body = refused.text().await.unwrap();
    assert!(body.contains("history store unavailable") && !body.contains("injected"), "the engine's words stay in the log: {body}");
    assert_eq!(post(&server, "c", "b").await.status(), 200);
    // The subscriber gets `b` next: the refused event never reached it.
    assert_eq!(sse.data(1).await, ["b"]);
    let mut replay = Sse::open(&server.url("/sse/c?replay=all")).await;
    assert_eq!(replay.data(2).await, ["a", "b"], "history holds no refused event");
    replay.expect_no_event(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn an_event_waits_for_the_appends_before_it() {
    let (store, server, mut sse) = faulty_server().await;
    // A held append that will fail, and one after it that succeeds at once: the second is
    // durable first, but shown only once the first has settled, and the first never is.
    let release = store.holds_next(true);
    let slow = post_in_background(&server, "slow");
    support::eventually(async || store.script.lock().is_empty()).await;
    assert_eq!(post(&server, "c", "quick").await.status(), 200);
    sse.expect_no_event(Duration::from_millis(300)).await;
    release.send(()).unwrap();
    assert_eq!(slow.await.unwrap(), 503);
    assert_eq!(sse.data(1).await, ["quick"]);
    sse.expect_no_event(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_publisher_that_goes_away_does_not_hold_back_later_events() {
    let (store, server, mut sse) = faulty_server().await;
    let release = store.holds_next(false);
    // The client gives up before the store answers; its request is cancelled.
    let gave_up = http().post(server.url("/sse/c")).json(&json!({ "data": "abandoned" })).timeout(Duration::from_millis(100)).send().await;
    assert!(gave_up.is_err(), "the request timed out");
    let next = post_in_background(&server, "next");
    release.send(()).unwrap();
    assert_eq!(next.await.unwrap(), 200);
    // The abandoned event was made durable all the same, so it is shown, in its place.
    assert_eq!(sse.data(2).await, ["abandoned", "next"]);
}

/// A round: a live subscriber and four publishers on a disk-store node, killed with `kill -9`
/// in the middle. Returns the ids the subscriber saw and those the node replays after restart.
async fn crash_round(dir: &std::path::Path, round: u64) -> (Vec<String>, HashSet<String>) {
    let node = Served::start(dir);
    let mut sse = Sse::open(&node.url("/sse/crash")).await;
    assert_eq!(sse.status, 200);
    let mut publishers = Vec::new();
    for p in 0..4 {
        let url = node.url("/sse/crash");
        publishers.push(tokio::spawn(async move {
            let client = http();
            for i in 0.. {
                let sent = client.post(&url).json(&json!({ "data": format!("{round}-{p}-{i}") })).send().await;
                if sent.is_err() {
                    return;
                }
            }
        }));
    }
    // Let events flow, then kill the node while they do.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(150 + (round * 37) % 200);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, sse.next_item()).await {
            Ok(Some(Item::Event(ev))) => seen.push(ev.last_event_id),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let mut node = node;
    node.kill_9();
    // What was already on its way to the subscriber when the node died counts as seen.
    while let Ok(Some(item)) = sse.next_item_within(Duration::from_millis(200)).await {
        if let Item::Event(ev) = item {
            seen.push(ev.last_event_id);
        }
    }
    for p in publishers {
        p.await.unwrap();
    }
    let node = Served::start(dir);
    let resp = http().get(node.url("/stats")).send().await.unwrap();
    let stats: serde_json::Value = resp.json().await.unwrap();
    let kept = stats["channels"]["crash"]["history_len"].as_u64().unwrap_or(0) as usize;
    let mut replay = Sse::open(&node.url("/sse/crash?replay=all")).await;
    let mut stored = HashSet::new();
    for _ in 0..kept {
        stored.insert(replay.next_event().await.last_event_id);
    }
    (seen, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_a_live_subscriber_saw_is_gone_after_kill_9() {
    let mut rounds = 0;
    let mut seen_total = 0;
    for mode in ["always", "interval", "never"] {
        let dir = tempfile::tempdir().unwrap();
        // Room for every event of every round, so that retention removes none.
        std::fs::write(dir.path().join("herald.toml"), format!("[history]\nfsync = \"{mode}\"\nfsync_interval = \"1h\"\nsize = 1000000\n"))
            .unwrap();
        for round in 0..8 {
            let (seen, stored) = crash_round(dir.path(), round).await;
            let gone: Vec<&String> = seen.iter().filter(|id| !stored.contains(*id)).collect();
            assert!(gone.is_empty(), "fsync = {mode}, round {round}: {} of {} events seen live are gone: {gone:?}", gone.len(), seen.len());
            rounds += 1;
            seen_total += seen.len();
        }
    }
    assert!(seen_total > rounds * 10, "the rounds delivered events ({seen_total} in {rounds} rounds)");
}
