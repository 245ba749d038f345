//! A few-second run of `herald bench` against a real hub, so the load generator keeps working.
//! Nothing here is timed: the checks are on counts (everything published arrives, once, in
//! order) and on the report being complete.

mod support;

use std::process::Command;
use support::TestServer;

/// Runs `command`, which must succeed, and returns the last line it printed, parsed as JSON
/// (`herald bench` and the tools in `bench/` end their output with one JSON line).
fn last_json_line(command: &mut Command) -> serde_json::Value {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?} ({e}); the tools in bench/ need python3"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{command:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is JSON ({e}): {last}"))
}

/// Runs `herald bench <args>` and returns its JSON line.
fn bench<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> serde_json::Value {
    last_json_line(Command::new(env!("CARGO_BIN_EXE_herald")).arg("bench").args(args))
}

/// A one-second `herald bench fanout` against `sub`/`publish` URL templates, with `shape` giving
/// subscribers, channels, publishers and rate.
async fn fanout(sub: &str, publish: &str, body: &str, pid: &str, shape: &[&str]) -> serde_json::Value {
    let mut args: Vec<String> = ["fanout", "--duration", "1s", "--body", body, "--sub-url", sub, "--pub-url", publish, "--server-pid", pid]
        .map(str::to_owned)
        .into();
    args.extend(shape.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || bench(&args)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_everything_and_reports_it() {
    let server = TestServer::start().await;
    let sub = server.url("/sse/{channel}");
    let pid = std::process::id().to_string();
    for body in ["json", "raw"] {
        let report = fanout(&sub, &sub, body, &pid, &["--subscribers", "30", "--channels", "3", "--publishers", "2"]).await;
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

/// Runs one of the Python tools in `bench/` and returns its JSON line.
fn python_json(args: &[&str]) -> serde_json::Value {
    last_json_line(Command::new("python3").args(args).current_dir(env!("CARGO_MANIFEST_DIR")))
}

/// The pieces of `bench/compare.sh` that need no Nchan: the floor hub (`bench/floor_hub.py`)
/// delivers everything `herald bench` publishes through it, the kernel floor
/// (`bench/kernel_floor.py`) reports its figures, and `bench/report.py` turns those reports and
/// Herald's into the benchmarks page with the floor beside Herald.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_hub_kernel_floor_and_report_work_together() {
    use std::io::{BufRead, BufReader};
    let root = env!("CARGO_MANIFEST_DIR");
    /// The floor hub goes with the test, whether it passes or not.
    struct Hub(std::process::Child);
    impl Drop for Hub {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut hub = Hub(Command::new("python3")
        .args([&format!("{root}/bench/floor_hub.py"), "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed for bench/floor_hub.py (install it: apt-get install python3)"));
    let mut first = String::new();
    BufReader::new(hub.0.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let port: u16 = first.trim().parse().unwrap_or_else(|_| panic!("floor_hub.py printed `{first}`, not its port"));
    let server = TestServer::start().await;

    let shape = ["--subscribers", "20", "--channels", "2", "--publishers", "2", "--rate", "50"];
    let (floor_sub, floor_pub) = (format!("http://127.0.0.1:{port}/sub/{{channel}}"), format!("http://127.0.0.1:{port}/pub/{{channel}}"));
    let floor = fanout(&floor_sub, &floor_pub, "raw", &hub.0.id().to_string(), &shape).await;
    let sub = server.url("/sse/{channel}");
    let herald = fanout(&sub, &sub, "json", &std::process::id().to_string(), &shape).await;
    drop(hub);
    server.shutdown().await;
    for report in [&floor, &herald] {
        assert!(report["published"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["delivered"], report["expected"], "{report}");
        for zero in ["publish_errors", "lost", "duplicated", "reordered", "disconnected"] {
            assert_eq!(report[zero], 0, "{zero}: {report}");
        }
    }

    let kernel = python_json(&["bench/kernel_floor.py", "200", "50"]);
    assert_eq!(kernel["writes"], 10_000, "{kernel}");
    assert!(kernel["us_per_write"].as_f64().unwrap() > 0.0, "{kernel}");

    // A one-second run at 50/s may use less server CPU than /proc's ticks can show, and the
    // report leaves out ratios it cannot compute: the 1,000 x 10 entries get set CPU figures.
    let with_cpu = |report: &serde_json::Value, per_cpu_second: f64| {
        let mut report = report.clone();
        report["server_cpu"] = serde_json::json!({"user_s": 0.1, "system_s": 0.9});
        report["delivered_per_server_cpu_second"] = per_cpu_second.into();
        report
    };
    let dir = tempfile::tempdir().unwrap();
    let line = |server: &str, workload: &str, report: &serde_json::Value| {
        serde_json::json!({"server": server, "workload": workload, "command": "test", "report": report}).to_string()
    };
    let jsonl = [
        line("kernel", "floor", &kernel),
        line("herald", "1x1000@50-fresh", &herald),
        line("floor", "1x1000@50-fresh", &floor),
        line("herald", "1000x10@max16", &with_cpu(&herald, 60_000.0)),
        line("nchan", "1000x10@max16", &with_cpu(&floor, 40_000.0)),
    ]
    .join("\n");
    let results = dir.path().join("all.jsonl");
    std::fs::write(&results, jsonl).unwrap();
    let out = Command::new("python3")
        .args(["bench/report.py", results.to_str().unwrap(), dir.path().to_str().unwrap()])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "report.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(dir.path().join("benchmarks.md")).unwrap();
    for expected in [
        "## The machine's floor, measured in this run",
        "| floor hub | 50/s |",
        "| herald | 50/s |",
        "| 1 × 1,000 at 50 publishes/s: p99 publish-to-receive under 10 ms |",
        "one-write deliveries per CPU-second over 200 connections in this run",
    ] {
        assert!(page.contains(expected), "`{expected}` missing from the report:\n{page}");
    }
}
