//! Property: while publishers publish, subscribers that disconnect at random points and
//! reconnect with their last event id each end with exactly the published sequence of their
//! channels: in order, every event once.

mod support;

use futures_util::future::join_all;
use proptest::prelude::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use support::{Sse, TestServer, http};

const CHANNELS: [&str; 3] = ["p/a", "p/b", "p/c"];

#[derive(Debug, Clone)]
struct Scenario {
    /// Per event: a bit mask of the channels it is published to.
    events: Vec<u8>,
    /// Per subscriber: a bit mask of its channels, and how many events it reads between drops.
    subscribers: Vec<(u8, Vec<usize>)>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (prop::collection::vec(1u8..8, 40..160), prop::collection::vec((1u8..8, prop::collection::vec(1usize..25, 1..8)), 1..5))
        .prop_map(|(events, subscribers)| Scenario { events, subscribers })
}

fn channels_of(mask: u8) -> Vec<&'static str> {
    CHANNELS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, c)| *c).collect()
}

/// Reads until it has `want` events, dropping the connection after each chunk of reads and
/// reconnecting with the last id seen (or `replay=all` before it saw any).
async fn subscriber(
    server: Arc<TestServer>,
    mask: u8,
    chunks: Vec<usize>,
    want: tokio::sync::watch::Receiver<Option<HashMap<u8, usize>>>,
) -> Vec<String> {
    let query: Vec<String> = channels_of(mask).iter().map(|c| format!("channel={c}")).collect();
    let base = server.url(&format!("/sse?{}", query.join("&")));
    let mut got: Vec<String> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut round = 0;
    loop {
        let mut sse = match &last_id {
            Some(id) => Sse::open_with(&base, &[("Last-Event-ID", id)]).await,
            None => Sse::open(&format!("{base}&replay=all")).await,
        };
        let chunk = chunks[round % chunks.len()];
        round += 1;
        let mut read = 0;
        while read < chunk {
            if want.borrow().as_ref().is_some_and(|w| got.len() >= w[&mask]) {
                // Nothing more may come: a duplicate of the last event would show here.
                sse.expect_no_event(Duration::from_millis(150)).await;
                return got;
            }
            match sse.next_item_within(Duration::from_millis(300)).await {
                Ok(Some(herald::sse::Item::Event(ev))) => {
                    assert_ne!(ev.event, "missed", "nothing may be evicted in this test");
                    last_id = Some(ev.last_event_id.clone());
                    got.push(ev.data);
                    read += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("stream ended"),
                Err(()) => break,
            }
        }
        assert!(round < 10_000, "bounded loop");
    }
}

fn run(s: Scenario) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let server = Arc::new(TestServer::with(|c| c.history.size = 1000).await);
        let (set_want, want) = tokio::sync::watch::channel(None);
        let subs: Vec<_> = s
            .subscribers
            .iter()
            .map(|(mask, chunks)| tokio::spawn(subscriber(server.clone(), *mask, chunks.clone(), want.clone())))
            .collect();
        // Two publishers share the events; publish order is the order of the ids they get.
        let halves: Vec<Vec<(usize, u8)>> =
            (0..2).map(|p| s.events.iter().copied().enumerate().filter(|(i, _)| i % 2 == p).collect()).collect();
        let published = join_all(halves.into_iter().map(|events| {
            let server = server.clone();
            async move {
                let mut out = Vec::new();
                for (i, mask) in events {
                    let body = json!({ "channels": channels_of(mask), "data": format!("e{i}") });
                    let resp = http().post(server.url("/publish")).json(&body).send().await.unwrap();
                    assert_eq!(resp.status(), 200);
                    let v: serde_json::Value = resp.json().await.unwrap();
                    out.push((v["ids"][0].as_str().unwrap().parse::<u64>().unwrap(), mask, format!("e{i}")));
                }
                out
            }
        }))
        .await;
        let mut order: Vec<(u64, u8, String)> = published.into_iter().flatten().collect();
        order.sort();
        let expected: HashMap<u8, Vec<String>> = s
            .subscribers
            .iter()
            .map(|(mask, _)| (*mask, order.iter().filter(|(_, m, _)| m & mask != 0).map(|(_, _, d)| d.clone()).collect()))
            .collect();
        // Each subscriber stops at the length of what it should get; anything extra, missing
        // or out of order shows up as a difference in content.
        set_want.send(Some(expected.iter().map(|(m, v)| (*m, v.len())).collect())).unwrap();
        for ((mask, _), sub) in s.subscribers.iter().zip(subs) {
            let want = &expected[mask];
            let got = tokio::time::timeout(Duration::from_secs(60), sub).await.expect("subscriber finished").unwrap();
            assert_eq!(&got, want, "subscriber of {:?}", channels_of(*mask));
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn reconnecting_subscribers_get_every_event_once_in_order(s in scenario()) {
        run(s);
    }
}
