//! Sustained events per second from RabbitMQ, NATS JetStream and MQTT (Mosquitto) into one channel with
//! 1,000 subscribers, each message acknowledged after acceptance, against the same events
//! published over HTTP (one event per request, four keep-alive connections), with the memory
//! store and with the disk store at `fsync = "always"`.
//!
//! Starts `herald serve` pinned to CPU 0 with one worker for each case, opens the streams, then
//! sends `N` messages as fast as the broker takes them and waits until every subscriber has
//! every event. Reports messages per second (first send to last delivery), the server's CPU per
//! message and deliveries per server CPU-second. The brokers run on the same machine and share
//! its cores: the rates are this machine's, not the brokers' limits.
//!
//!     cargo build --release --bins --examples && taskset -c 1 target/release/examples/source_throughput 5000 [path/to/herald]

#[path = "common/mod.rs"]
mod common;

use common::{cpu_ns, read_events};
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SUBSCRIBERS: usize = 1000;
const RABBIT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const NATS: &str = "nats://127.0.0.1:4222";
const EXCHANGE: &str = "herald-bench-x";
const STREAM: &str = "HERALD_BENCH";

#[derive(Clone, Copy, Debug)]
enum Via {
    Http,
    Amqp,
    Jetstream,
    Mqtt,
}

fn config(via: Via, disk: bool, dir: &Path) -> String {
    let store = if disk {
        format!("store = \"disk\"\nfsync = \"always\"\ndir = \"{}\"", dir.join("data").display())
    } else {
        "store = \"memory\"".into()
    };
    let mut c = format!("keepalive_interval = \"0s\"\n[history]\n{store}\nsize = 100000\n");
    match via {
        Via::Http => {}
        Via::Amqp => c.push_str(&format!(
            "[[sources]]\nname = \"bench\"\ntype = \"amqp\"\nurl = \"{RABBIT}\"\nexchange = \"{EXCHANGE}\"\nexchange_type = \"fanout\"\nprefetch = 1000\n[sources.map]\nchannels = [\"bench\"]\n"
        )),
        Via::Jetstream => c.push_str(&format!(
            "[[sources]]\nname = \"bench\"\ntype = \"jetstream\"\nurl = \"{NATS}\"\nstream = \"{STREAM}\"\nprefetch = 1000\n[sources.map]\nchannels = [\"bench\"]\n"
        )),
        Via::Mqtt => c.push_str(&format!(
            "[[sources]]\nname = \"bench\"\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\ntopics = [\"herald-bench/#\"]\nclient_id = \"{}\"\nprefetch = 1000\n[sources.map]\nchannels = [\"bench\"]\n",
            mqtt_client_id()
        )),
    }
    c
}

/// A client id of this run's own: a persistent session left by an earlier run would hold its
/// messages.
fn mqtt_client_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("herald-bench-{}", std::process::id())).clone()
}

async fn source_connected(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats: serde_json::Value = reqwest::get(format!("http://{addr}/stats")).await.unwrap().json().await.unwrap();
        if stats["sources"][0]["connected"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "the source did not connect: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(via: Via, addr: &str, n: usize) {
    match via {
        Via::Http => {
            let client = reqwest::Client::new();
            let per = n / 4;
            let sends = (0..4).map(|p| {
                let (client, url) = (client.clone(), format!("http://{addr}/sse/bench"));
                async move {
                    for i in 0..per {
                        let resp = client.post(&url).header("content-type", "text/plain").body(format!("m{p}-{i}")).send().await.unwrap();
                        assert_eq!(resp.status(), 200);
                    }
                }
            });
            futures_util::future::join_all(sends).await;
        }
        Via::Amqp => {
            let conn = Connection::connect(RABBIT, ConnectionProperties::default()).await.expect("RabbitMQ at 127.0.0.1:5672");
            let ch = conn.create_channel().await.unwrap();
            for i in 0..n {
                let props = BasicProperties::default().with_message_id(format!("m{i}").into());
                ch.basic_publish(EXCHANGE.into(), "".into(), BasicPublishOptions::default(), format!("m{i}").as_bytes(), props)
                    .await
                    .unwrap();
            }
        }
        Via::Jetstream => {
            let js = async_nats::jetstream::new(async_nats::connect(NATS).await.expect("NATS at 127.0.0.1:4222"));
            let mut acks = Vec::with_capacity(1000);
            for i in 0..n {
                acks.push(js.publish("bench.m", format!("m{i}").into()).await.unwrap());
                if acks.len() == 1000 {
                    for ack in acks.drain(..) {
                        ack.await.unwrap();
                    }
                }
            }
            for ack in acks {
                ack.await.unwrap();
            }
        }
        Via::Mqtt => {
            // Mosquitto's own client, QoS 1, one message per line.
            use std::io::Write;
            let mut child = std::process::Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", "herald-bench/m", "-l"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("mosquitto_pub (Debian package mosquitto-clients)");
            let mut stdin = child.stdin.take().unwrap();
            for i in 0..n {
                writeln!(stdin, "m{i}").unwrap();
            }
            drop(stdin);
            assert!(child.wait().unwrap().success(), "mosquitto_pub at 127.0.0.1:1883");
        }
    }
}

async fn prepare_brokers() {
    let conn = Connection::connect(RABBIT, ConnectionProperties::default()).await.expect("RabbitMQ at 127.0.0.1:5672");
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        EXCHANGE.into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = ch.queue_delete("herald.bench".into(), Default::default()).await;
    let js = async_nats::jetstream::new(async_nats::connect(NATS).await.expect("NATS at 127.0.0.1:4222"));
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(async_nats::jetstream::stream::Config { name: STREAM.into(), subjects: vec!["bench.>".into()], ..Default::default() })
        .await
        .unwrap();
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).map_or(5000, |a| a.parse().expect("messages"));
    let herald = common::herald_binary(std::env::args().nth(2));
    println!("{n} messages into 1 channel with {SUBSCRIBERS} subscribers; server on CPU 0, one worker");
    println!("{:<10} {:<14} {:>12} {:>16} {:>18}", "via", "store", "messages/s", "server µs/msg", "delivered/CPU-s");
    for disk in [false, true] {
        for via in [Via::Http, Via::Amqp, Via::Jetstream, Via::Mqtt] {
            prepare_brokers().await;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("herald.toml");
            std::fs::write(&path, config(via, disk, dir.path())).unwrap();
            let (mut child, addr) = common::start(&herald, &path);
            if !matches!(via, Via::Http) {
                source_connected(&addr).await;
            }
            let received = Arc::new(AtomicU64::new(0));
            let mut readers = Vec::with_capacity(SUBSCRIBERS);
            for _ in 0..SUBSCRIBERS / 250 {
                let opened = futures_util::future::join_all((0..250).map(|_| common::open_stream(&addr, "/sse/bench", ""))).await;
                readers.extend(opened.into_iter().map(|s| tokio::spawn(read_events(s, received.clone()))));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let expected = (n - n % 4) as u64 * SUBSCRIBERS as u64;
            let n = n - n % 4;
            let cpu0 = cpu_ns(child.id());
            let t0 = Instant::now();
            send(via, &addr, n).await;
            let deadline = Instant::now() + Duration::from_secs(120);
            while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let wall = t0.elapsed().as_secs_f64();
            let cpu = (cpu_ns(child.id()) - cpu0) as f64 / 1e9;
            let got = received.load(Ordering::Relaxed);
            assert_eq!(got, expected, "{via:?}: every event reaches every subscriber once");
            let store = if disk { "disk, always" } else { "memory" };
            println!(
                "{:<10} {store:<14} {:>12.0} {:>16.1} {:>18.0}",
                format!("{via:?}").to_lowercase(),
                n as f64 / wall,
                cpu * 1e6 / n as f64,
                got as f64 / cpu
            );
            for r in readers {
                r.abort();
            }
            let _ = child.kill();
            let _ = child.wait();
            if matches!(via, Via::Mqtt) {
                // A clean-session connection with the run's client id ends its persistent session.
                let _ = std::process::Command::new("mosquitto_sub")
                    .args(["-h", "127.0.0.1", "-p", "1883", "-i", &mqtt_client_id(), "-t", "herald-bench/end", "-E"])
                    .status();
            }
        }
    }
}
