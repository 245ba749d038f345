//! TLS on the public listener: a given certificate and a generated one, checked by real
//! clients (reqwest with rustls, and curl); HTTP/2 chosen by ALPN with many event streams on one
//! connection; the certificate replaced while a stream stays open.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Sse, TestServer, WAIT};

/// A CA and a server certificate for 127.0.0.1 it signed, in `dir`.
fn pair(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    support::tls::certificates(dir, "ca");
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// A client that trusts only the CA in `ca`.
fn trusting(ca: &Path) -> reqwest::Client {
    trusting_builder(ca).pool_max_idle_per_host(0).timeout(WAIT).build().unwrap()
}

/// The same, speaking HTTP/1.1 only (no ALPN `h2`).
fn trusting_http1(ca: &Path) -> reqwest::Client {
    trusting_builder(ca).http1_only().build().unwrap()
}

fn trusting_builder(ca: &Path) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder().tls_certs_only([ca])
}

async fn tls_server(cert: &Path, key: &Path, tweak: impl FnOnce(&mut herald::config::Config)) -> TestServer {
    let (cert, key) = (cert.to_owned(), key.to_owned());
    TestServer::with(move |c| {
        c.tls.enabled = true;
        c.tls.cert_file = cert;
        c.tls.key_file = key;
        tweak(c);
    })
    .await
}

fn https(server: &TestServer, path: &str) -> String {
    format!("https://{}{path}", server.addr)
}

async fn publish(client: &reqwest::Client, url: &str, data: &str) -> String {
    let resp = client.post(url).json(&serde_json::json!({ "data": data })).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["ids"][0].as_str().unwrap().to_owned()
}

fn curl_blocking(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("curl is installed");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// curl, off the runtime's thread (the server under test runs on it).
async fn curl(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || curl_blocking(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

/// `/stats` over TLS.
async fn stats(client: &reqwest::Client, server: &TestServer) -> serde_json::Value {
    client.get(https(server, "/stats")).send().await.unwrap().json().await.unwrap()
}

async fn subscriptions(client: &reqwest::Client, server: &TestServer, n: usize) {
    support::eventually(async || stats(client, server).await["totals"]["subscriptions"] == n).await;
}

#[tokio::test]
async fn a_given_certificate_serves_https_to_reqwest_and_curl_over_http1_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pair(dir.path());
    let server = tls_server(&cert, &key, |_| {}).await;
    let client = trusting(&ca);

    // HTTP/1.1 over TLS: the socket fast path streams through the TLS layer.
    let h1 = trusting_http1(&ca);
    let mut sse = Sse::open_on(&h1, &https(&server, "/sse/a"), &[]).await;
    assert_eq!((sse.status.as_u16(), sse.version), (200, reqwest::Version::HTTP_11));
    // ALPN picks HTTP/2 for a client that offers it.
    let mut sse2 = Sse::open_on(&client, &https(&server, "/sse/a"), &[]).await;
    assert_eq!((sse2.status.as_u16(), sse2.version), (200, reqwest::Version::HTTP_2));
    subscriptions(&client, &server, 2).await;
    let id = publish(&h1, &https(&server, "/sse/a"), "over tls").await;
    for sse in [&mut sse, &mut sse2] {
        let ev = sse.next_event().await;
        assert_eq!((ev.data.as_str(), ev.last_event_id.as_str()), ("over tls", id.as_str()));
    }

    // curl, checking the certificate against the CA, over each protocol.
    let url = https(&server, "/sse/a");
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (ok, out, err) = curl(&[
            flag,
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"data":"from curl"}"#,
            "-w",
            "\n%{http_code} %{http_version}",
            &url,
        ])
        .await;
        assert!(ok, "curl {flag}: {err}");
        assert!(out.ends_with(&format!("\n200 {version}")), "curl {flag}: {out}");
        assert_eq!(sse.next_event().await.data, "from curl");
    }
    // A client that does not trust the CA is refused at the handshake.
    let (ok, _, err) = curl(&[&url]).await;
    assert!(!ok && err.to_lowercase().contains("certificate"), "{err}");
    assert!(support::http().get(https(&server, "/stats")).send().await.is_err());
    // Plain HTTP to the TLS port is not served.
    let (ok, _, _) = curl(&[&format!("http://{}/stats", server.addr)]).await;
    assert!(!ok);
}

#[tokio::test]
async fn with_no_files_a_temporary_self_signed_certificate_is_served() {
    let server = TestServer::with(|c| c.tls.enabled = true).await;
    let insecure = reqwest::Client::builder().tls_danger_accept_invalid_certs(true).build().unwrap();
    let stats: serde_json::Value = insecure.get(https(&server, "/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["totals"]["subscriptions"], 0);
    // It is no certificate anybody trusts.
    let err = reqwest::Client::new().get(https(&server, "/stats")).send().await.unwrap_err();
    assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");
    // Its names: localhost and the loopback addresses, which curl checks even when it does
    // not check who signed the certificate.
    for host in [format!("localhost:{}", server.addr.port()), server.addr.to_string()] {
        let (ok, out, err) = curl(&["--insecure", &format!("https://{host}/stats")]).await;
        assert!(ok && out.contains("subscriptions"), "{host}: {err}");
    }
}

/// Established TCP connections from this process to `port` (the client ends, in
/// /proc/net/tcp).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() > 3 && cols[2].ends_with(&want) && cols[3] == "01"
        })
        .count()
}

#[tokio::test]
async fn many_event_streams_share_one_http2_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pair(dir.path());
    let server = tls_server(&cert, &key, |_| {}).await;
    // One client: HTTP/2 multiplexes every request on one connection (browsers do the same,
    // lifting HTTP/1's six connections per host).
    let client = trusting_builder(&ca).build().unwrap();
    const STREAMS: usize = 60;
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let sse = Sse::open_on(&client, &https(&server, &format!("/sse/c{i}")), &[]).await;
        assert_eq!(sse.version, reqwest::Version::HTTP_2);
        streams.push(sse);
    }
    subscriptions(&client, &server, STREAMS).await;
    assert_eq!(connections_to(server.addr.port()), 1, "every stream on one connection");
    for i in 0..STREAMS {
        publish(&client, &https(&server, &format!("/sse/c{i}")), &format!("to {i}")).await;
    }
    for (i, sse) in streams.iter_mut().enumerate() {
        assert_eq!(sse.next_event().await.data, format!("to {i}"));
    }
    // Closing one stream leaves the others and the connection open.
    drop(streams.remove(0));
    subscriptions(&client, &server, STREAMS - 1).await;
    publish(&client, &https(&server, "/sse/c1"), "still here").await;
    assert_eq!(streams[0].next_event().await.data, "still here");
}

/// Copies a pair over the files the server was configured with, as a certificate manager
/// renewing them would (write to a temporary name, then rename).
fn install(from: &Path, cert: &Path, key: &Path) {
    for (src, dst) in [(from.join("server.pem"), cert), (from.join("server.key"), key)] {
        let tmp = dst.with_extension("new");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_dropping_open_streams() {
    let (one, two, live) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ca_one, _, _) = pair(one.path());
    let (ca_two, _, _) = pair(two.path());
    let (cert, key) = (live.path().join("cert.pem"), live.path().join("key.pem"));
    install(one.path(), &cert, &key);
    let server = tls_server(&cert, &key, |c| c.tls.watch_interval = Duration::from_millis(100)).await;
    let (old, new) = (trusting(&ca_one), trusting(&ca_two));
    let mut h1 = Sse::open_on(&old, &https(&server, "/sse/r"), &[]).await;
    let h1_only = trusting_http1(&ca_one);
    let mut h1_fast = Sse::open_on(&h1_only, &https(&server, "/sse/r"), &[]).await;
    assert!(new.get(https(&server, "/stats")).send().await.is_err(), "the second CA is not trusted yet");

    install(two.path(), &cert, &key);
    support::eventually(async || new.get(https(&server, "/stats")).send().await.is_ok()).await;
    // A new client (no session to resume) that trusts only the first CA is now refused.
    assert!(trusting(&ca_one).get(https(&server, "/stats")).send().await.is_err(), "new handshakes get the new certificate");
    // The streams opened before the renewal carry on.
    publish(&new, &https(&server, "/sse/r"), "after renewal").await;
    assert_eq!(h1.next_event().await.data, "after renewal");
    assert_eq!(h1_fast.next_event().await.data, "after renewal");

    // A broken renewal (a key that is not the certificate's) is refused; the pair in use stays.
    std::fs::copy(one.path().join("server.key"), &key).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(new.get(https(&server, "/stats")).send().await.is_ok());
}

#[test]
fn sighup_reloads_the_certificate_of_the_binary() {
    let (one, two, live) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, _, _) = pair(one.path());
    let (ca_two, _, _) = pair(two.path());
    let (cert, key) = (live.path().join("cert.pem"), live.path().join("key.pem"));
    install(one.path(), &cert, &key);
    let mut command = support::process::herald(live.path());
    command
        .env("HERALD_TLS__ENABLED", "true")
        .env("HERALD_TLS__CERT_FILE", &cert)
        .env("HERALD_TLS__KEY_FILE", &key)
        // On SIGHUP only: the test proves the signal, not the watch.
        .env("HERALD_TLS__WATCH_INTERVAL", "0s")
        .env("HERALD_HISTORY__STORE", "memory");
    let served = support::process::Served::spawn(command, &["--log-level", "info"]);
    let url = served.url("/stats").replace("http://", "https://");
    let ca = ca_two.to_str().unwrap();
    let (ok, _, _) = curl_blocking(&["--cacert", ca, &url]);
    assert!(!ok, "the second certificate is not served yet");
    install(two.path(), &cert, &key);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, _, _) = curl_blocking(&["--cacert", ca, &url]);
    assert!(!ok, "no reload without the signal");
    let status = std::process::Command::new("kill").args(["-HUP", &served.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (ok, out, err) = curl_blocking(&["--cacert", ca, &url]);
        if ok {
            assert!(out.contains("subscriptions"), "{out}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not reloaded on SIGHUP: {err}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served.log.lock().unwrap().iter().any(|l| l.contains("TLS certificate reloaded")));
}
