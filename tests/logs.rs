//! Logs as an operator's tools read them: JSON lines with the documented fields, access-log
//! lines for publishes, refusals and ended streams (with the request id the client was given),
//! a log file that SIGHUP reopens after a rotation, and `access_log = false`.

mod support;

use std::path::Path;
use std::time::Duration;
use support::process::{Served, herald};
use support::{eventually, http};

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

fn access_lines(lines: &[serde_json::Value], kind: &str) -> Vec<serde_json::Value> {
    lines.iter().filter(|l| l["target"] == "herald::access" && l["kind"] == kind).cloned().collect()
}

fn logged(served: &Served) -> Vec<serde_json::Value> {
    json_lines(&served.log.lock().unwrap().join("\n"))
}

/// Publishes one event to `news` and reads it on a stream that then closes; returns the
/// publish's request id.
async fn publish_and_read(url: &str) -> String {
    let mut sub = support::Sse::open(&format!("{url}/sse/news")).await;
    let resp =
        http().post(format!("{url}/sse/news")).header("content-type", "application/json").body(r#"{"data":"hello"}"#).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(sub.data(1).await, ["hello"]);
    drop(sub);
    id
}

#[tokio::test]
async fn json_logs_carry_the_documented_fields_and_an_access_line_per_publish_refusal_and_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = herald(dir.path());
    cmd.env("HERALD_LOG_FORMAT", "json").env("HERALD_HISTORY__STORE", "memory");
    let served = Served::spawn(cmd, &["--log-level", "info"]);
    let publish_id = publish_and_read(&served.url).await;
    // A client's own request id is kept (a proxy's, say); a refused publish gets a line too.
    let refused = http().post(served.url("/sse/news")).header("x-request-id", "proxy-42").body("no content type").send().await.unwrap();
    assert_eq!((refused.status().as_u16(), refused.headers()["x-request-id"].to_str().unwrap()), (415, "proxy-42"));
    let not_found = http().get(served.url("/nowhere")).send().await.unwrap();
    assert_eq!(not_found.status(), 404);
    // The server's stderr is read by a thread of its own: wait until every line is in.
    eventually(async || {
        let lines = logged(&served);
        !access_lines(&lines, "stream").is_empty()
            && !access_lines(&lines, "refused").is_empty()
            && access_lines(&lines, "publish").len() >= 2
    })
    .await;
    let lines = logged(&served);
    for line in &lines {
        for field in ["timestamp", "level", "target", "message"] {
            assert!(line.get(field).is_some(), "no {field} in {line}");
        }
        // RFC 3339, which Logstash and Filebeat take as it is.
        let ts = line["timestamp"].as_str().unwrap();
        assert!(ts.len() >= 20 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'), "{ts}");
    }
    let listening = lines.iter().find(|l| l["message"] == "herald listening").expect("the start-up line");
    assert_eq!(listening["level"], "INFO");
    assert!(listening["addr"].as_str().is_some(), "fields sit beside the message: {listening}");

    let publishes = access_lines(&lines, "publish");
    let ok = publishes.iter().find(|l| l["status"] == 200).expect("the publish's line");
    assert_eq!((ok["channels"].as_str(), ok["events"].as_u64(), ok["route"].as_str()), (Some("news"), Some(1), Some("/sse/{*channel}")));
    assert_eq!(ok["request_id"].as_str(), Some(publish_id.as_str()));
    assert!(ok["duration_ms"].as_f64().is_some() && ok["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{ok}");
    let bad = publishes.iter().find(|l| l["status"] == 415).expect("the refused publish's line");
    assert_eq!(bad["request_id"], "proxy-42");
    assert!(bad["error"].as_str().unwrap().contains("Content-Type"), "{bad}");
    let refusals = access_lines(&lines, "refused");
    assert!(refusals.iter().any(|l| l["status"] == 404 && l["method"] == "GET"), "{refusals:?}");

    let streams = access_lines(&lines, "stream");
    let ended = &streams[0];
    assert_eq!(
        (ended["channels"].as_str(), ended["events"].as_u64(), ended["reason"].as_str()),
        (Some("news"), Some(1), Some("client closed")),
        "{ended}"
    );
    // The preamble, the event and nothing else: at least the event's own bytes.
    assert!(ended["bytes"].as_u64().unwrap() >= "data: hello\n\n".len() as u64, "{ended}");
    assert!(ended["duration_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn a_stream_ended_by_shutdown_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = herald(dir.path());
    cmd.env("HERALD_LOG_FORMAT", "json").env("HERALD_HISTORY__STORE", "memory");
    let mut served = Served::spawn(cmd, &["--log-level", "info"]);
    // Open once its response head has arrived.
    let sub = support::Sse::open(&served.url("/sse/news")).await;
    assert!(served.terminate(Duration::from_secs(15)).success());
    let lines = logged(&served);
    let streams = access_lines(&lines, "stream");
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0]["reason"], "shutdown");
    drop(sub);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn the_log_file_is_reopened_on_sighup_and_access_lines_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("herald.log");
    let port = free_port();
    let mut cmd = herald(dir.path());
    cmd.env("HERALD_LOG_FILE", &log).env("HERALD_ACCESS_LOG", "false").env("HERALD_HISTORY__STORE", "memory");
    let mut child = cmd
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log-level", "info"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_for_port(port, 20, "herald");
    let url = format!("http://127.0.0.1:{port}");
    eventually(async || read(&log).contains("herald listening")).await;
    publish_and_read(&url).await;
    // logrotate's move, then its signal.
    let rotated = dir.path().join("herald.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    assert!(std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
    eventually(async || read(&log).contains("log file reopened")).await;
    assert!(read(&rotated).contains("herald listening") && !read(&rotated).contains("log file reopened"));
    // Text lines, no colour in a file; and no access lines when they are off.
    let all = read(&rotated) + &read(&log);
    assert!(!all.contains('\u{1b}'), "colour codes in a file: {all}");
    assert!(!all.contains("herald::access"), "{all}");
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.is_empty(), "with a log file, nothing goes to stderr: {stderr}");
}

#[tokio::test]
async fn a_log_file_that_cannot_be_opened_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald(dir.path())
        .env("HERALD_LOG_FILE", dir.path().join("no/such/dir/herald.log"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("log_file") && err.contains("no/such/dir"), "{err}");
}
