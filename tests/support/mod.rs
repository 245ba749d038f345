//! Test support: a real Herald server on an ephemeral loopback port, and an SSE client that
//! parses streams with Herald's spec-conformant parser.
#![allow(dead_code)]

pub mod chunked;
pub mod mqtt;
pub mod nats;
pub mod process;
pub mod proxy;
pub mod sources;
pub mod tls;

use futures_util::StreamExt;
use herald::config::Config;
use herald::hub::Hub;
use herald::sse::{Item, MessageEvent, Parser};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// Starts a server whose configuration `tweak` adjusted from the defaults.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::with_hub(tweak, |config| Hub::new(config).expect("the hub starts")).await
    }

    /// Starts a server over a history store of the test's own (one that fails on demand).
    pub async fn with_store(store: Arc<dyn herald::history::HistoryStore>) -> Self {
        Self::with_hub(|_| {}, |config| Hub::with_store(config, store)).await
    }

    /// [`TestServer::with_store`] with a configuration `tweak` too.
    pub async fn with_store_and(store: Arc<dyn herald::history::HistoryStore>, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::with_hub(tweak, |config| Hub::with_store(config, store)).await
    }

    async fn with_hub(tweak: impl FnOnce(&mut Config), make: impl FnOnce(Config) -> Arc<Hub>) -> Self {
        // The server's warnings and errors go to the test's captured output: shown when it fails.
        let _ = tracing_subscriber::fmt().with_env_filter("warn,lsm_tree=error,fjall=error").with_test_writer().try_init();
        let mut config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
        config.shutdown_timeout = Duration::from_secs(2);
        // In-process tests keep history in memory unless one opts into the disk store.
        config.history.store = herald::config::StoreKind::Memory;
        // Many servers run at once: no debug listener on its fixed port unless a test asks.
        config.debug.listen = String::new();
        tweak(&mut config);
        config.validate().expect("test configuration is valid");
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hub = make(config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(herald::http::server::serve(listener, hub.clone(), async move {
            let _ = stopped.await;
        }));
        TestServer { addr, hub, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Graceful shutdown; returns once the server has finished.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task.take().unwrap()).await.expect("server stops in time").unwrap().unwrap();
    }

    /// Publishes one JSON event to `channel`; returns its id.
    pub async fn publish(&self, channel: &str, body: serde_json::Value) -> String {
        let resp = http().post(self.url(&format!("/sse/{channel}"))).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "publish failed: {}", resp.text().await.unwrap());
        let v: serde_json::Value = resp.json().await.unwrap();
        v["ids"][0].as_str().unwrap().to_owned()
    }

    pub async fn publish_data(&self, channel: &str, data: &str) -> String {
        self.publish(channel, serde_json::json!({ "data": data })).await
    }

    pub async fn stats(&self) -> serde_json::Value {
        self.stats_with(&[]).await
    }

    /// `/stats` with the headers its access rules ask for.
    pub async fn stats_with(&self, headers: &[(&str, &str)]) -> serde_json::Value {
        let mut req = http().get(self.url("/stats"));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.unwrap().json().await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

/// One open event stream.
pub struct Sse {
    pub status: reqwest::StatusCode,
    pub version: reqwest::Version,
    pub headers: reqwest::header::HeaderMap,
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: Parser,
    pending: VecDeque<Item>,
    ended: bool,
}

impl Sse {
    pub async fn open(url: &str) -> Sse {
        Self::open_with(url, &[]).await
    }

    pub async fn open_with(url: &str, headers: &[(&str, &str)]) -> Sse {
        Self::open_on(&http(), url, headers).await
    }

    /// Opened with a client of the test's own (one that trusts a test certificate, say).
    pub async fn open_on(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Sse {
        let mut req = client.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(WAIT, req.send()).await.expect("response headers in time").unwrap();
        let status = resp.status();
        let version = resp.version();
        let headers = resp.headers().clone();
        Sse { status, version, headers, stream: resp.bytes_stream().boxed(), parser: Parser::new(), pending: VecDeque::new(), ended: false }
    }

    /// The next item, or `None` when the stream ended. Panics after `WAIT`.
    pub async fn next_item(&mut self) -> Option<Item> {
        self.next_item_within(WAIT).await.expect("an item within the wait")
    }

    /// The next item within `limit`: `Err(())` on time-out, `Ok(None)` at the end of the stream.
    pub async fn next_item_within(&mut self, limit: Duration) -> Result<Option<Item>, ()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            if self.ended {
                return Ok(None);
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Err(()),
                Ok(Some(Ok(chunk))) => {
                    let mut out = Vec::new();
                    self.parser.feed(&chunk, &mut out);
                    self.pending.extend(out);
                }
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
            }
        }
    }

    /// The next dispatched event, skipping comments and retry fields.
    pub async fn next_event(&mut self) -> MessageEvent {
        loop {
            match self.next_item().await {
                Some(Item::Event(ev)) => return ev,
                Some(_) => continue,
                None => panic!("stream ended while waiting for an event"),
            }
        }
    }

    /// `n` events, in order.
    pub async fn events(&mut self, n: usize) -> Vec<MessageEvent> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.next_event().await);
        }
        v
    }

    /// The data of `n` events.
    pub async fn data(&mut self, n: usize) -> Vec<String> {
        self.events(n).await.into_iter().map(|e| e.data).collect()
    }

    /// Asserts no event arrives within `quiet`.
    pub async fn expect_no_event(&mut self, quiet: Duration) {
        loop {
            match self.next_item_within(quiet).await {
                Err(()) | Ok(None) => return,
                Ok(Some(Item::Event(ev))) => panic!("unexpected event {ev:?}"),
                Ok(Some(_)) => {}
            }
        }
    }

    /// Waits for the end of the stream, skipping whatever comes before it.
    pub async fn expect_end(&mut self) {
        while self.next_item().await.is_some() {}
    }
}

/// Polls `f` until it returns true, for at most `WAIT`.
pub async fn eventually(mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met within {WAIT:?}");
}

/// Waits until the hub counts `n` subscribers on `channel`: a stream is registered once its
/// response headers arrived, but tests that publish right after opening wait for this too.
pub async fn subscribers(server: &TestServer, channel: &str, n: u64) {
    eventually(async || server.stats().await["channels"][channel]["subscribers"].as_u64() == Some(n)).await;
}

/// Waits until something listens on 127.0.0.1:`port` (a broker a test started), for at most
/// `seconds`; fails naming `what`.
pub fn wait_for_port(port: u16, seconds: u64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not start within {seconds}s");
        std::thread::sleep(Duration::from_millis(20));
    }
}
