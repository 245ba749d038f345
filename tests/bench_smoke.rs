//! A few-second run of `herald bench` against a real hub, so the load generator keeps working.
//! Nothing here is timed: the checks are on counts (everything published arrives, once, in
//! order) and on the report being complete.

mod support;

use std::process::Command;
use support::TestServer;

/// Runs `herald bench <args>` and returns its JSON line.
fn bench<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_herald")).arg("bench").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "herald bench failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().expect("bench printed something");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is JSON ({e}): {last}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_everything_and_reports_it() {
    let server = TestServer::start().await;
    let sub = server.url("/sse/{channel}");
    let pid = std::process::id().to_string();
    for body in ["json", "raw"] {
        let args: Vec<String> = [
            "fanout",
            "--subscribers",
            "30",
            "--channels",
            "3",
            "--publishers",
            "2",
            "--duration",
            "1s",
            "--body",
            body,
            "--sub-url",
            &sub,
            "--pub-url",
            &sub,
            "--server-pid",
            &pid,
        ]
        .map(str::to_owned)
        .into();
        let report = tokio::task::spawn_blocking(move || bench(&args)).await.unwrap();
        let published = report["published"].as_u64().unwrap();
        assert!(published > 0, "{report}");
        assert_eq!(report["publish_errors"], 0, "{report}");
        // Every event went to the 10 subscribers of its channel.
        assert_eq!(report["expected"].as_u64(), Some(published * 10), "{report}");
        assert_eq!(report["delivered"], report["expected"], "{report}");
        for zero in ["lost", "duplicated", "reordered", "disconnected"] {
            assert_eq!(report[zero], 0, "{zero}: {report}");
        }
        assert!(report["latency_ms"]["max"].as_f64().unwrap() > 0.0, "{report}");
        assert!(report["server_cpu"]["user_s"].is_number(), "{report}");
        assert!(report["delivered_per_server_cpu_second"].is_number(), "{report}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_connections_and_reads_server_memory() {
    let server = TestServer::start().await;
    let sub = server.url("/sse/{channel}");
    let pid = std::process::id().to_string();
    let report = tokio::task::spawn_blocking(move || {
        bench(&["idle", "--connections", "200", "--channels", "4", "--hold", "100ms", "--sub-url", &sub, "--server-pid", &pid])
    })
    .await
    .unwrap();
    assert_eq!(report["connections"], 200, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["server_rss_per_connection"].is_number(), "{report}");
    support::eventually(async || server.stats().await["totals"]["subscriptions"] == 0).await;
    server.shutdown().await;
}

#[test]
fn refuses_a_remote_target_and_a_template_without_channel() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["bench", "idle", "--sub-url", "http://192.0.2.1:80/sse/{channel}"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
    let out = Command::new(env!("CARGO_BIN_EXE_herald")).args(["bench", "idle", "--sub-url", "http://127.0.0.1:1/sse"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("{channel}"));
}
