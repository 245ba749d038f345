//! Herald against the SSE clients people use, each in a process of its own against a real
//! server: Python's `sseclient-py` over `requests` (cdviz-collector's example) and over
//! `urllib3`, `httpx-sse`, the npm `eventsource` package, and `EventSource` in Debian's
//! Chromium driven by `playwright-core`. `.ci/run` installs them, pinned
//! (`tests/clients/requirements.txt`, `tests/clients/package-lock.json`).
//!
//! Every client gets the same scenario ([`scenario`]):
//! - the connect preamble and keep-alives, before and after an event with an id, make no events
//!   (httpx-sse 0.4 makes an empty event of every blank line once it has seen an id);
//! - the first event arrives within 500 ms of its publish on a hub that sends nothing after it
//!   (a client that reads fixed-size blocks of a close-delimited stream waits for more bytes);
//! - data comes through exactly: line breaks of each kind, unicode, empty data, data that looks
//!   like SSE fields, 200 KB, JSON byte for byte, an event type, the publisher's ids.
//!
//! The clients that reconnect by themselves (npm `eventsource`, Chromium) also resume with
//! `Last-Event-ID` from a non-ASCII id and get exactly what they missed.

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use support::{TestServer, http};

const CLIENTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

#[derive(Debug, Clone, Copy)]
enum Kind {
    SseclientRequests,
    SseclientUrllib3,
    HttpxSse,
    NpmEventsource,
    Chromium,
}

impl Kind {
    fn command(self, url: &str) -> Command {
        // The event types a browser-style client must be told to listen for.
        let types = "update,missed";
        match self {
            Kind::SseclientRequests | Kind::SseclientUrllib3 | Kind::HttpxSse => {
                let python = format!("{CLIENTS_DIR}/.venv/bin/python");
                assert!(
                    Path::new(&python).exists(),
                    "the Python SSE clients are not installed: python3 -m venv tests/clients/.venv && \
                     tests/clients/.venv/bin/pip install --no-deps -r tests/clients/requirements.txt (.ci/run does)"
                );
                let name = match self {
                    Kind::SseclientRequests => "sseclient-requests",
                    Kind::SseclientUrllib3 => "sseclient-urllib3",
                    _ => "httpx-sse",
                };
                let mut command = Command::new(python);
                command.arg(format!("{CLIENTS_DIR}/sse_client.py")).arg(name).arg(url);
                command
            }
            Kind::NpmEventsource | Kind::Chromium => {
                let (script, module) = match self {
                    Kind::NpmEventsource => ("eventsource.mjs", "eventsource"),
                    _ => ("chromium.mjs", "playwright-core"),
                };
                assert!(
                    Path::new(&format!("{CLIENTS_DIR}/node_modules/{module}")).exists(),
                    "{module} is not installed: run `npm ci --prefix tests/clients` (.ci/run does)"
                );
                if matches!(self, Kind::Chromium) {
                    assert!(Path::new("/usr/bin/chromium").exists(), "Chromium is missing: apt-get install chromium (.ci/run does)");
                }
                let mut command = Command::new("node");
                command.arg(format!("{CLIENTS_DIR}/{script}")).arg(url).arg(types);
                command
            }
        }
    }
}

/// A client process; what it dispatched, as JSON lines `{"id", "type", "data"}`.
struct Client {
    kind: Kind,
    child: Child,
    lines: Receiver<Value>,
}

impl Client {
    fn start(kind: Kind, url: &str) -> Client {
        let mut child =
            kind.command(url).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap_or_else(|e| panic!("{kind:?} starts: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str(&line).expect("the client prints JSON lines"));
            }
        });
        Client { kind, child, lines }
    }

    /// The next event the client dispatched within `limit` (its reconnect errors skipped).
    fn next_within(&self, limit: Duration) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.get("error").is_some() => continue,
                Ok(line) => return Some(line),
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => panic!("{:?} ended", self.kind),
            }
        }
    }

    fn next(&self) -> Value {
        self.next_within(Duration::from_secs(20)).unwrap_or_else(|| panic!("{:?}: no event within 20s", self.kind))
    }

    /// Asserts the client dispatches nothing for `quiet`.
    fn expect_nothing_for(&self, quiet: Duration, during: &str) {
        if let Some(event) = self.next_within(quiet) {
            panic!("{:?} dispatched {event} {during}", self.kind);
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a client reports for an event: its id (the last one seen), type and data.
fn event(id: &str, kind: &str, data: &str) -> Value {
    json!({ "id": id, "type": kind, "data": data })
}

/// Publishes a request body exactly as written (JSON text the test chose byte for byte).
async fn publish_raw(server: &TestServer, channel: &str, body: &str) {
    let resp = http()
        .post(server.url(&format!("/sse/{channel}")))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{body}: {}", resp.text().await.unwrap());
}

/// A JSON value written the way a publisher might (spaces, key order, a big integer, trailing
/// zeros, escapes), and the data every client must get: the same text less the whitespace.
const JSON_AS_WRITTEN: &str = r#"{ "z": 1, "a": [1, 2.50, 0.1000, -0.0, 1e400], "amount": 123456789012345678901234567890, "text": "caf\u00e9 \"q\" \n", "nested": {"y": null, "b": true} }"#;
const JSON_ON_THE_WIRE: &str = r#"{"z":1,"a":[1,2.50,0.1000,-0.0,1e400],"amount":123456789012345678901234567890,"text":"caf\u00e9 \"q\" \n","nested":{"y":null,"b":true}}"#;

/// The data cases: (what is published as `data`, what the client must hand over).
fn data_cases() -> Vec<(String, String)> {
    let big: String = (0..200_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    [
        ("line one\nline two", "line one\nline two"),
        ("crlf\r\nline", "crlf\nline"),
        ("cr\rline", "cr\nline"),
        ("trailing\n", "trailing\n"),
        ("\nleading", "\nleading"),
        ("héllo wörld 日本語 🎉 \u{2028} ∑", "héllo wörld 日本語 🎉 \u{2028} ∑"),
        ("", ""),
        ("   ", "   "),
        ("data: fake\n\nevent: evil\nid: 666\nretry: 1\n: not a comment", "data: fake\n\nevent: evil\nid: 666\nretry: 1\n: not a comment"),
        (":colon first", ":colon first"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .chain([(big.clone(), big)])
    .collect()
}

async fn scenario(kind: Kind) {
    // 1. A hub that sends keep-alives often and a `retry:` on connect: none of it is an event,
    // before an id was seen or after.
    let chatty = TestServer::with(|c| {
        c.keepalive_interval = Duration::from_millis(100);
        c.retry = Duration::from_millis(1500);
    })
    .await;
    let mut watcher = support::Sse::open(&chatty.url("/sse/talk")).await;
    let client = Client::start(kind, &chatty.url("/sse/talk"));
    support::subscribers(&chatty, "talk", 2).await;
    let quiet = Duration::from_millis(600);
    tokio::task::block_in_place(|| client.expect_nothing_for(quiet, "from the preamble and keep-alives"));
    chatty.publish("talk", json!({ "id": "k1", "data": "between keep-alives" })).await;
    let got = tokio::task::block_in_place(|| client.next());
    assert_eq!(got, event("k1", "message", "between keep-alives"), "{kind:?}");
    tokio::task::block_in_place(|| client.expect_nothing_for(quiet, "from keep-alives after an id"));
    // The keep-alives did go out meanwhile, to this stream's neighbour as to the client.
    let mut comments = 0;
    while comments < 4 {
        match watcher.next_item().await {
            Some(herald::sse::Item::Comment(c)) if c == "keep-alive" => comments += 1,
            Some(_) => {}
            None => panic!("the neighbour's stream ended"),
        }
    }
    drop(client);

    // 2. A hub that sends nothing but events: the first arrives with nothing behind it.
    let server = TestServer::with(|c| c.keepalive_interval = Duration::ZERO).await;
    let client = Client::start(kind, &server.url("/sse/data"));
    support::subscribers(&server, "data", 1).await;
    let published = Instant::now();
    server.publish("data", json!({ "id": "first", "data": "first" })).await;
    let first = tokio::task::block_in_place(|| client.next_within(Duration::from_millis(500)));
    let latency = published.elapsed();
    assert_eq!(first, Some(event("first", "message", "first")), "{kind:?}: the first event within 500 ms of its publish");
    eprintln!("{kind:?}: first event {:.1} ms after its publish began", latency.as_secs_f64() * 1000.0);

    // 3. Data, exactly.
    let cases = data_cases();
    for (i, (data, _)) in cases.iter().enumerate() {
        server.publish("data", json!({ "id": format!("c{i}"), "data": data })).await;
    }
    publish_raw(&server, "data", &format!(r#"{{"id": "json", "data": {JSON_AS_WRITTEN}}}"#)).await;
    publish_raw(&server, "data", r#"{"id":"big-id-12345678901234567890","event":"update","data":12345678901234567890.50}"#).await;
    for (i, (_, want)) in cases.iter().enumerate() {
        let got = tokio::task::block_in_place(|| client.next());
        let shown = |v: &Value| v.to_string().chars().take(200).collect::<String>();
        assert_eq!(got, event(&format!("c{i}"), "message", want), "{kind:?}, case {i}: {} vs {}", shown(&got), shown(&json!(want)));
    }
    assert_eq!(tokio::task::block_in_place(|| client.next()), event("json", "message", JSON_ON_THE_WIRE), "{kind:?}");
    assert_eq!(
        tokio::task::block_in_place(|| client.next()),
        event("big-id-12345678901234567890", "update", "12345678901234567890.50"),
        "{kind:?}"
    );
    tokio::task::block_in_place(|| client.expect_nothing_for(Duration::from_millis(200), "after the last event"));
}

/// A client that reconnects by itself: the connection is cut, two events are published while it
/// is down, and the client comes back with `Last-Event-ID` (a non-ASCII id, sent as UTF-8) and
/// gets exactly those two.
async fn resumes_by_itself(kind: Kind) {
    let server = TestServer::with(|c| c.retry = Duration::from_millis(200)).await;
    let proxy = support::proxy::Proxy::start(server.addr).await;
    let client = Client::start(kind, &format!("http://127.0.0.1:{}/sse/u", proxy.port));
    support::subscribers(&server, "u", 1).await;
    server.publish("u", json!({ "id": "café", "data": "one" })).await;
    assert_eq!(tokio::task::block_in_place(|| client.next()), event("café", "message", "one"));

    proxy.cut();
    support::eventually(async || server.stats().await["channels"]["u"]["subscribers"] == 0).await;
    server.publish("u", json!({ "id": "naïve-2", "data": "two" })).await;
    server.publish("u", json!({ "id": "日本-3", "data": "three" })).await;
    proxy.restore();
    let rest: Vec<Value> = tokio::task::block_in_place(|| (0..2).map(|_| client.next()).collect());
    assert_eq!(rest, [event("naïve-2", "message", "two"), event("日本-3", "message", "three")], "{kind:?}");
    tokio::task::block_in_place(|| client.expect_nothing_for(Duration::from_millis(300), "after resuming"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sseclient_py_over_requests() {
    scenario(Kind::SseclientRequests).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sseclient_py_over_urllib3() {
    scenario(Kind::SseclientUrllib3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpx_sse() {
    scenario(Kind::HttpxSse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_eventsource() {
    scenario(Kind::NpmEventsource).await;
    resumes_by_itself(Kind::NpmEventsource).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_eventsource() {
    scenario(Kind::Chromium).await;
    resumes_by_itself(Kind::Chromium).await;
}
