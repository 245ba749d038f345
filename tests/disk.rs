//! The disk store, through the real binary: acknowledged events survive `kill -9` in every fsync
//! mode, with the same ids and order; ids keep growing across restarts; retention by count and by
//! age is applied on disk; an unusable data directory stops start-up with the key named.

mod support;

use herald::sse::Item;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use support::process::{Served as Node, herald};
use support::{Sse, http};

/// One publish request; the ids it was answered with.
async fn publish(node: &Node, path: &str, body: serde_json::Value) -> Vec<String> {
    let resp = http().post(node.url(path)).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let answer: serde_json::Value = resp.json().await.unwrap();
    answer["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

fn write_config(dir: &Path, toml: &str) {
    std::fs::write(dir.join("herald.toml"), toml).unwrap();
}

/// The events of a replay, up to the first `n`.
async fn replay(node: &Node, path: &str, last_event_id: Option<&str>, n: usize) -> (Vec<(String, String, String)>, bool) {
    let headers: Vec<(&str, &str)> = last_event_id.map(|id| vec![("last-event-id", id)]).unwrap_or_default();
    let mut sse = Sse::open_with(&node.url(path), &headers).await;
    let mut got = Vec::new();
    let mut missed = false;
    while got.len() < n {
        match sse.next_item().await.expect("stream open") {
            Item::Event(e) if e.event == "missed" => missed = true,
            Item::Event(e) => got.push((e.last_event_id, e.event, e.data)),
            _ => {}
        }
    }
    // Nothing beyond what was expected.
    assert!(
        sse.next_item_within(Duration::from_millis(200)).await.map_or(true, |item| !matches!(item, Some(Item::Event(_)))),
        "an event beyond the {n} expected"
    );
    (got, missed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_in_every_fsync_mode() {
    for mode in ["always", "interval", "never"] {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &format!("[history]\nfsync = \"{mode}\"\nfsync_interval = \"1h\"\n"));
        let node = Node::start(dir.path());
        // Four publishers at once, so that groups share a commit; one channel's order is one
        // publisher's, and every event is acknowledged before the kill.
        let mut expected: Vec<Vec<(String, String, String)>> = Vec::new();
        let mut tasks = Vec::new();
        for p in 0..4 {
            let url = node.url(&format!("/sse/k{p}"));
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..60 {
                    let custom = i % 10 == 9;
                    let mut body = json!({ "data": format!("{p}-{i}"), "event": "e" });
                    if custom {
                        body["id"] = format!("custom-{p}-{i}").into();
                    }
                    let resp = http().post(&url).json(&body).send().await.unwrap();
                    assert_eq!(resp.status(), 200);
                    let answer: serde_json::Value = resp.json().await.unwrap();
                    acked.push((answer["ids"][0].as_str().unwrap().to_owned(), "e".to_owned(), format!("{p}-{i}")));
                }
                acked
            }));
        }
        for t in tasks {
            expected.push(t.await.unwrap());
        }
        // One event in two channels: stored under both, one event after the restart.
        let both = publish(&node, "/publish", json!({ "channels": ["k0", "k1"], "data": "both", "event": "e" })).await;
        expected[0].push((both[0].clone(), "e".into(), "both".into()));
        expected[1].push((both[0].clone(), "e".into(), "both".into()));
        let mut node = node;
        node.kill_9();

        let mut node = Node::start(dir.path());
        for (p, acked) in expected.iter().enumerate() {
            let (got, missed) = replay(&node, &format!("/sse/k{p}?replay=all"), None, acked.len()).await;
            assert!(!missed);
            assert_eq!(&got, acked, "fsync = {mode}: channel k{p} after kill -9");
            // Resuming from the middle gets exactly the rest, and no notice.
            let (rest, missed) = replay(&node, &format!("/sse/k{p}"), Some(&acked[29].0), acked.len() - 30).await;
            assert!(!missed, "fsync = {mode}: no missed notice resuming inside history");
            assert_eq!(&rest[..], &acked[30..]);
        }
        // A subscriber to both channels gets the shared event once.
        let (merged, _) = replay(&node, "/sse?channel=k0&channel=k1&replay=all", None, 121).await;
        assert_eq!(merged.iter().filter(|(_, _, d)| d == "both").count(), 1);
        // New ids go on after every id issued before the restart.
        let newest_before: u64 = expected.iter().flatten().filter_map(|(id, _, _)| id.parse().ok()).max().unwrap();
        let after = publish(&node, "/sse/k0", json!({ "data": "after" })).await;
        assert!(after[0].parse::<u64>().unwrap() > newest_before, "fsync = {mode}: ids grow across restarts");
        assert!(node.terminate(Duration::from_secs(10)).success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_count_and_age_applies_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        "[[channels]]\npattern = \"short\"\nhistory_size = 5\n\n[[channels]]\npattern = \"aged\"\nhistory_ttl = \"1s\"\n",
    );
    let node = Node::start(dir.path());
    let mut short = Vec::new();
    for i in 0..50 {
        short.extend(publish(&node, "/sse/short", json!({ "data": i.to_string() })).await);
    }
    for i in 0..3 {
        publish(&node, "/sse/aged", json!({ "data": format!("old {i}") })).await;
    }
    // Past the age, and past the store's once-a-second sweep.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let fresh = publish(&node, "/sse/aged", json!({ "data": "fresh" })).await;
    let mut node = node;
    assert!(node.terminate(Duration::from_secs(10)).success());

    // What the store itself holds now.
    {
        let mut config = herald::config::Config::default();
        config.history.dir = dir.path().join("data");
        let (store, recovered) = herald::history::disk::DiskStore::open(&config.history, Box::new(|_| None)).unwrap();
        let held = |name: &str| {
            recovered
                .channels
                .iter()
                .find(|(n, _, _)| &**n == name)
                .map(|(_, floor, evs)| (*floor, evs.iter().map(|e| e.pos.to_string()).collect::<Vec<_>>()))
        };
        let (floor, ids) = held("short").expect("short has events on disk");
        // Trimmed in steps: at most a tenth (at least one) over its size of 5.
        assert!((5..=6).contains(&ids.len()), "short holds {} events on disk", ids.len());
        assert_eq!(ids[ids.len() - 5..], short[45..], "the newest are kept");
        assert!(floor >= short[43].parse::<u64>().unwrap(), "the floor is the newest deleted event");
        let (_, aged) = held("aged").expect("aged has its fresh event");
        assert_eq!(aged, fresh, "events past history_ttl are deleted from disk");
        drop(store);
    }

    let node = Node::start(dir.path());
    let (got, _) = replay(&node, "/sse/short?replay=all", None, 5).await;
    assert_eq!(got.iter().map(|(id, _, _)| id.clone()).collect::<Vec<_>>(), short[45..]);
    // A client whose id left history is told so.
    let (_, missed) = replay(&node, "/sse/short", Some(&short[10]), 5).await;
    assert!(missed, "resuming from a deleted event gets the missed notice");
}

#[test]
fn an_unusable_data_directory_stops_startup_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data"), "not a directory").unwrap();
    let out = herald(dir.path()).args(["serve", "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("history.dir"), "{err}");

    // A directory another herald is using.
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let out = herald(dir.path()).args(["serve", "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success(), "a second herald on the same data directory must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("history.dir"), "{err}");
    drop(node);
}

/// A tmpfs of `mb` MiB mounted for one test (needs root, as CI runs), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mb: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "could not mount a {mb} MiB tmpfs: this test needs root (CI runs as root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Data that does not compress: the store must really use the disk.
fn incompressible(n: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_publishes_reports_not_ready_and_recovers_when_space_returns() {
    let disk = SmallDisk::mount(200);
    // Room the test gives back later.
    std::fs::write(disk.path().join("filler"), vec![1u8; 70 << 20]).unwrap();
    // With its debug listener, whose /readyz an orchestrator watches.
    let debug_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = herald(disk.path());
    command.env("HERALD_DEBUG__LISTEN", format!("127.0.0.1:{debug_port}"));
    let node = Node::spawn(command, &["--log-level", "info"]);
    let readyz = format!("http://127.0.0.1:{debug_port}/readyz");
    support::eventually(async || http().get(&readyz).send().await.is_ok_and(|r| r.status() == 200)).await;
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..2000u64 {
        let resp = http().post(node.url("/sse/full")).json(&json!({ "data": incompressible(150_000, i) })).send().await.unwrap();
        match resp.status().as_u16() {
            200 => acked.push(resp.json::<serde_json::Value>().await.unwrap()["ids"][0].as_str().unwrap().to_owned()),
            503 => {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("publish {i}: {other}"),
        }
    }
    assert_eq!(refused, 3, "the disk filled up ({} events acknowledged)", acked.len());
    let health = http().get(node.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503, "not ready while the store cannot be written");
    let health: serde_json::Value = health.json().await.unwrap();
    // Anyone is told the store cannot be written; the engine's own words (which may name a
    // path) are for the operator, on the debug listener.
    let public = health["store_error"].as_str().unwrap_or_default().to_owned();
    assert!(public.contains("not writable") && !public.contains(&disk.path().display().to_string()), "{health}");
    let ready = http().get(&readyz).send().await.unwrap();
    assert_eq!(ready.status(), 503, "/readyz says not ready too");
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "store unavailable", "{ready}");
    let detail = ready["store_error"].as_str().unwrap_or_default();
    assert!(detail.contains("not writable") && detail != public, "the operator is told why: {ready}");

    // Space comes back: the hub reopens its store by itself and takes publishes again.
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    support::eventually(async || http().get(node.url("/healthz")).send().await.unwrap().status() == 200).await;
    assert_eq!(http().get(&readyz).send().await.unwrap().status(), 200, "ready again");
    acked.extend(publish(&node, "/sse/full", json!({ "data": "after" })).await);
    // Exactly the acknowledged events, in order: none of the refused ones.
    let stats: serde_json::Value = http().get(node.url("/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["channels"]["full"]["history_len"].as_u64(), Some(acked.len() as u64), "{}", stats["channels"]);
    let (got, _) = replay(&node, "/sse/full?replay=all", None, acked.len()).await;
    assert_eq!(got.iter().map(|(id, _, _)| id.clone()).collect::<Vec<_>>(), acked);
    // And so after a crash and a restart.
    let mut node = node;
    node.kill_9();
    let node = Node::start(disk.path());
    let (got, _) = replay(&node, "/sse/full?replay=all", None, acked.len()).await;
    assert_eq!(got.iter().map(|(id, _, _)| id.clone()).collect::<Vec<_>>(), acked, "after kill -9 and a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_reported_and_resuming_clients_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let mut acked = Vec::new();
    for i in 0..300 {
        acked.extend(publish(&node, "/sse/j", json!({ "data": format!("event {i}") })).await);
    }
    // The tally is written once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut node = node;
    node.kill_9();
    // 512 zeroed bytes in the middle of the journal: the engine drops everything after them.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut journal = std::fs::OpenOptions::new().write(true).open(dir.path().join("data/0.jnl")).unwrap();
        journal.seek(SeekFrom::Start(10_000)).unwrap();
        journal.write_all(&[0u8; 512]).unwrap();
    }
    // The check counts what is missing.
    let check = herald(dir.path()).args(["store", "check"]).output().unwrap();
    let report = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(!check.status.success(), "{report}");
    let missing: usize = report
        .lines()
        .find_map(|l| l.strip_prefix("LOST: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count of what was lost: {report}"));
    let node = Node::start(dir.path());
    let stats: serde_json::Value = http().get(node.url("/stats")).send().await.unwrap().json().await.unwrap();
    let kept = stats["channels"]["j"]["history_len"].as_u64().unwrap_or(0) as usize;
    assert!(kept < acked.len(), "the damage cost events ({kept} of {} kept), or this test damaged nothing", acked.len());
    assert_eq!(missing, acked.len() - kept, "the count of lost records is exact");
    // A client resuming from an id whose successors are gone is told so.
    let mut sse = Sse::open_with(&node.url("/sse/j"), &[("last-event-id", &acked[kept + 10])]).await;
    assert_eq!(sse.next_event().await.event, "missed", "a client resuming inside the lost range is told");
    // And no id is issued twice: new ones go on above every id acknowledged before.
    let after = publish(&node, "/sse/j", json!({ "data": "after" })).await;
    let newest_before: u64 = acked.iter().map(|id| id.parse::<u64>().unwrap()).max().unwrap();
    assert!(after[0].parse::<u64>().unwrap() > newest_before, "lost ids are not issued again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_loads_no_more_than_max_memory() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let mut acked = Vec::new();
    for i in 0..200 {
        acked.extend(publish(&node, "/sse/m", json!({ "data": format!("{i:0>10000}") })).await);
    }
    let mut node = node;
    assert!(node.terminate(Duration::from_secs(10)).success());
    write_config(dir.path(), "[history]\nmax_memory = \"256KiB\"\n");
    let node = Node::start(dir.path());
    let stats: serde_json::Value = http().get(node.url("/stats")).send().await.unwrap().json().await.unwrap();
    let bytes = stats["totals"]["history_bytes"].as_u64().unwrap();
    assert!(bytes <= 256 * 1024, "loaded {bytes} bytes with max_memory = 256KiB");
    let kept = stats["channels"]["m"]["history_len"].as_u64().unwrap() as usize;
    assert!(kept > 0 && kept < acked.len(), "the newest events are loaded ({kept})");
    // The newest are there, in order; a client resuming from before them is told.
    let (got, _) = replay(&node, "/sse/m?replay=all", None, kept).await;
    assert_eq!(got.iter().map(|(id, _, _)| id.clone()).collect::<Vec<_>>(), acked[acked.len() - kept..]);
    let (_, missed) = replay(&node, "/sse/m", Some(&acked[0]), kept).await;
    assert!(missed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_opened_says_why_and_herald_store_repair_is_the_way_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let ids = publish(&node, "/sse/r", json!({ "data": "before" })).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut node = node;
    assert!(node.terminate(Duration::from_secs(10)).success());
    std::fs::write(dir.path().join("data/version"), b"not a version").unwrap();

    let out = herald(dir.path()).args(["serve", "--listen", "127.0.0.1:0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start-up stops");
    assert!(err.contains("cannot be opened") && err.contains("herald store repair") && !err.contains("another herald"), "{err}");
    let check = herald(dir.path()).args(["store", "check"]).output().unwrap();
    assert!(!check.status.success(), "check reports the damage");

    let repair = herald(dir.path()).args(["store", "repair"]).output().unwrap();
    let said = String::from_utf8_lossy(&repair.stdout);
    assert!(repair.status.success() && said.contains("nothing was deleted"), "{said}{}", String::from_utf8_lossy(&repair.stderr));
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged store is kept beside");

    let node = Node::start(dir.path());
    let mut sse = Sse::open_with(&node.url("/sse/r"), &[("last-event-id", &ids[0])]).await;
    assert_eq!(sse.next_event().await.event, "missed", "a client of the old store is told");
    let after = publish(&node, "/sse/r", json!({ "data": "after" })).await;
    assert!(after[0].parse::<u64>().unwrap() > ids[0].parse::<u64>().unwrap(), "ids go on above the old ones");
    let check = herald(dir.path()).args(["store", "check"]).output();
    // The store is in use now: check says so rather than reading under a running hub.
    assert!(!check.unwrap().status.success());
}
