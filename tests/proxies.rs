//! The reverse-proxy snippets in docs/operations.md, run as written (with this test's ports,
//! and plain HTTP in place of the certificate lines): nginx and Caddy in front of Herald pass
//! each event through as it is published, keep a quiet stream open, and take publishes.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{Sse, TestServer};

/// The first fenced block of `lang` in docs/operations.md.
fn snippet(lang: &str) -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md")).unwrap();
    let start = doc.find(&format!("```{lang}\n")).unwrap_or_else(|| panic!("docs/operations.md has a ```{lang} block")) + lang.len() + 4;
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(program: &str, args: &[&str], port: u16) -> Proxy {
    // Caddy keeps its state under XDG_DATA_HOME and XDG_CONFIG_HOME: a directory of the test's.
    let home = std::env::temp_dir().join(format!("herald-proxy-test-{port}"));
    let child = Command::new(program)
        .args(args)
        .env("XDG_DATA_HOME", &home)
        .env("XDG_CONFIG_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is not installed (Debian package nginx-light / caddy; .ci/run installs them): {e}"));
    support::wait_for_port(port, 20, program);
    Proxy(child)
}

/// Events published straight to Herald reach a subscriber through the proxy at `base`, one
/// by one, on one open stream.
async fn events_pass_through(server: &TestServer, base: &str, name: &str) {
    let mut sse = Sse::open(&format!("{base}/sse/{name}")).await;
    assert_eq!(sse.status, 200, "{name}");
    support::subscribers(server, name, 1).await;
    for data in ["first", "second"] {
        server.publish_data(name, data).await;
        // Within the wait: a proxy that buffered would hold a small event back.
        assert_eq!(sse.next_event().await.data, data, "{name}");
    }
    // A quiet spell does not end the stream.
    sse.expect_no_event(Duration::from_millis(1500)).await;
    server.publish_data(name, "after a pause").await;
    assert_eq!(sse.next_event().await.data, "after a pause", "{name}");
    // A publish through the proxy is accepted (the proxy is a trusted loopback publisher).
    let resp = support::http().post(format!("{base}/sse/{name}")).json(&serde_json::json!({ "data": "via proxy" })).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{name}");
    assert_eq!(sse.next_event().await.data, "via proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nginx_snippet_streams_events_unbuffered() {
    let server = TestServer::with(|c| c.access.trusted_proxies = vec!["127.0.0.1/32".into()]).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let site: String = snippet("nginx")
        .lines()
        .filter(|l| !l.contains("ssl") && !l.contains("http2 on"))
        .map(|l| l.replace("server 127.0.0.1:8080", &format!("server {}", server.addr)))
        .map(|l| if l.contains("server_name") { format!("    listen 127.0.0.1:{port};\n{l}") } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    let d = dir.path().display();
    let conf = format!(
        "daemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{site}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let conf = dir.path().join("nginx.conf");
    let error_log = format!("{d}/error.log");
    let _nginx = start("nginx", &["-p", &d.to_string(), "-e", &error_log, "-c", conf.to_str().unwrap()], port);
    events_pass_through(&server, &format!("http://127.0.0.1:{port}"), "nginx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caddy_snippet_streams_events_unbuffered() {
    let server = TestServer::with(|c| c.access.trusted_proxies = vec!["127.0.0.1/32".into()]).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let site = snippet("caddyfile")
        .replace("events.example.com", &format!("http://127.0.0.1:{port}"))
        .replace("127.0.0.1:8080", &server.addr.to_string());
    // No admin endpoint, no automatic certificates: the site is plain HTTP on loopback.
    let caddyfile = format!("{{\n    admin off\n    auto_https off\n    storage file_system {}\n}}\n{site}", dir.path().display());
    std::fs::write(dir.path().join("Caddyfile"), caddyfile).unwrap();
    let file = dir.path().join("Caddyfile");
    let _caddy = start("caddy", &["run", "--config", file.to_str().unwrap(), "--adapter", "caddyfile"], port);
    events_pass_through(&server, &format!("http://127.0.0.1:{port}"), "caddy").await;
}
