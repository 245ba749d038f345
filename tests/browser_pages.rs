//! The browser examples of docs/access.md (`examples/browser/`), run as they are in headless
//! Chromium against a real Herald: the cookie page receives events with the cookie its back end
//! set and is refused without it; the query-token page renews its expiring token and resumes
//! from the last id it got, so every event arrives once, in order.

mod support;

use herald::config::Config;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;
use support::TestServer;

const SECRET: &str = "browser-example-secret";
const CLIENTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

fn token(lifetime: u64) -> String {
    let claims = json!({"sub": "alice", "exp": herald::hub::unix_now() + lifetime, "subscribe": "orders/*"});
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn example(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/browser").join(name)).unwrap()
}

/// The application: serves the example pages (the cookie page sets the cookie, as a login
/// would, unless asked not to) and `/token`, which hands out tokens valid for two seconds.
async fn app() -> String {
    use axum::response::{Html, IntoResponse};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route(
            "/cookie.html",
            axum::routing::get(|| async {
                let cookie = format!("herald_token={}; Path=/; HttpOnly; SameSite=Lax", token(3600));
                ([(axum::http::header::SET_COOKIE, cookie)], Html(example("cookie.html"))).into_response()
            }),
        )
        .route("/logged-out/cookie.html", axum::routing::get(|| async { Html(example("cookie.html")) }))
        .route("/query-token.html", axum::routing::get(|| async { Html(example("query-token.html")) }))
        .route("/token", axum::routing::get(|| async { axum::Json(json!({"token": token(2)})) }));
    tokio::spawn(async move { axum::serve(listener, router).await });
    origin
}

async fn herald(origin: &str) -> TestServer {
    let origin = origin.to_owned();
    TestServer::with(move |c: &mut Config| {
        c.access.subscribe.jwt = true;
        c.access.jwt.secret = SECRET.into();
        c.access.jwt.cookie = "herald_token".into();
        c.access.jwt.leeway = Duration::ZERO;
        c.cors.allowed_origins = vec![origin];
        c.cors.allow_credentials = true;
        // The browser's own reconnection comes quickly.
        c.retry = Duration::from_millis(300);
    })
    .await
}

/// Chromium showing a page; what the page logged, as JSON lines.
struct Page {
    child: Child,
    lines: Receiver<Value>,
}

impl Page {
    fn open(url: &str) -> Page {
        assert!(
            Path::new(&format!("{CLIENTS_DIR}/node_modules/playwright-core")).exists(),
            "playwright-core is not installed: run `npm ci --prefix tests/clients` (.ci/run does)"
        );
        assert!(Path::new("/usr/bin/chromium").exists(), "Chromium is missing: apt-get install chromium (.ci/run does)");
        let mut child = Command::new("node")
            .arg(format!("{CLIENTS_DIR}/page.mjs"))
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str(&line).expect("the page script prints JSON lines"));
            }
        });
        Page { child, lines }
    }

    /// The next message the page logged; the browser's own report of a refused stream is
    /// skipped, any other console output fails the test.
    fn next(&self) -> Value {
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(30)).expect("the page logs within 30 s");
            if line.get("console").is_some() {
                let text = line["text"].as_str().unwrap_or("");
                assert!(text.contains("403") || text.contains("401"), "the page logged an unexpected message: {line}");
                continue;
            }
            return line;
        }
    }

    fn wait_for_state(&self, state: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let line = self.next();
            if line["state"] == state {
                return events;
            }
            if line.get("data").is_some() {
                events.push(line);
            }
        }
    }

    fn next_event(&self) -> Value {
        loop {
            let line = self.next();
            if line.get("data").is_some() {
                return line;
            }
        }
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_page_streams_with_its_cookie_and_is_refused_without() {
    let origin = app().await;
    let server = herald(&origin).await;
    let herald_url = format!("http://{}", server.addr);
    let page = Page::open(&format!("{origin}/cookie.html?herald={herald_url}&channel=orders/1"));
    page.wait_for_state("open");
    support::subscribers(&server, "orders/1", 1).await;
    let id = server.publish_data("orders/1", "<b>shipped</b>").await;
    let event = page.next_event();
    assert_eq!((event["id"].as_str(), event["data"].as_str()), (Some(id.as_str()), Some("<b>shipped</b>")));
    drop(page);

    // A fresh browser that never logged in has no cookie: refused, and it stops trying.
    let page = Page::open(&format!("{origin}/logged-out/cookie.html?herald={herald_url}&channel=orders/1"));
    page.wait_for_state("refused");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_token_page_renews_its_token_and_misses_nothing() {
    let origin = app().await;
    let server = herald(&origin).await;
    let page = Page::open(&format!("{origin}/query-token.html?herald=http://{}&channel=orders/2", server.addr));
    page.wait_for_state("open");
    support::subscribers(&server, "orders/2", 1).await;
    let mut sent = vec![server.publish_data("orders/2", "one").await];
    let mut got = vec![page.next_event()];
    // Within two seconds the token expires: Herald ends the stream, the browser's reconnection
    // is refused, and the page starts again with a new token. What is published meanwhile
    // comes from history.
    let before = page.wait_for_state("renewing");
    got.extend(before);
    sent.push(server.publish_data("orders/2", "two").await);
    got.extend(page.wait_for_state("open"));
    support::subscribers(&server, "orders/2", 1).await;
    sent.push(server.publish_data("orders/2", "three").await);
    while got.len() < 3 {
        got.push(page.next_event());
    }
    let ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let data: Vec<&str> = got.iter().map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["one", "two", "three"]);
    assert_eq!(ids, sent.iter().map(String::as_str).collect::<Vec<_>>());
    server.shutdown().await;
}
