//! Herald in a real browser: Debian's Chromium, driven by `playwright-core` (installed by
//! `.ci/run` into `tests/browser/node_modules`), with a plain `EventSource` against a real
//! server. A publisher's non-ASCII id (`café`) comes back from the browser as UTF-8 in
//! `Last-Event-ID` when it reconnects by itself, and Herald resumes from it.

mod support;

use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;
use support::TestServer;

/// The page's EventSource, its messages as JSON lines.
struct Browser {
    child: Child,
    lines: Receiver<serde_json::Value>,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
        assert!(
            std::path::Path::new(&format!("{dir}/node_modules/playwright-core")).exists(),
            "playwright-core is not installed: run `npm ci --prefix tests/browser` (.ci/run does)"
        );
        assert!(std::path::Path::new("/usr/bin/chromium").exists(), "Chromium is missing: apt-get install chromium (.ci/run does)");
        let mut child = Command::new("node")
            .arg(format!("{dir}/eventsource.mjs"))
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs (Node 20 is on this machine)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str(&line).expect("the page prints JSON lines"));
            }
        });
        Browser { child, lines }
    }

    /// The next message the page dispatched, skipping its reconnect errors.
    fn next_message(&self) -> serde_json::Value {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.get("error").is_some() => continue,
                Ok(line) => return line,
                Err(RecvTimeoutError::Timeout) => panic!("no message from the browser within 20s"),
                Err(RecvTimeoutError::Disconnected) => panic!("the browser script ended"),
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_resumes_from_a_non_ascii_id_by_itself() {
    let server = TestServer::with(|c| c.retry = Duration::from_millis(200)).await;
    let proxy = support::proxy::Proxy::start(server.addr).await;
    let browser = Browser::open(&format!("http://127.0.0.1:{}/sse/u", proxy.port));
    support::subscribers(&server, "u", 1).await;
    server.publish("u", json!({ "id": "café", "data": "one" })).await;
    let first = tokio::task::block_in_place(|| browser.next_message());
    assert_eq!(first, json!({ "id": "café", "type": "message", "data": "one" }));

    // The connection drops; while it is down, two more events.
    proxy.cut();
    support::eventually(async || server.stats().await["channels"]["u"]["subscribers"] == 0).await;
    server.publish("u", json!({ "id": "naïve-2", "data": "two" })).await;
    server.publish("u", json!({ "id": "日本-3", "data": "three" })).await;
    proxy.restore();
    // The browser reconnects on its own with `Last-Event-ID: café` and gets exactly the rest.
    let rest: Vec<serde_json::Value> = tokio::task::block_in_place(|| (0..2).map(|_| browser.next_message()).collect());
    assert_eq!(
        rest,
        [json!({ "id": "naïve-2", "type": "message", "data": "two" }), json!({ "id": "日本-3", "type": "message", "data": "three" })]
    );
}
