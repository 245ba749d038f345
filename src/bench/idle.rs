//! `herald bench idle`: hold N quiet subscriptions open and report what each costs the server.

use super::server_proc::ServerProc;
use super::target::{UrlTemplate, channel_name, subscribe_request};
use super::transport::{self, Alpn, Conn, H2};
use super::wire::read_response_head;
use anyhow::{Context, bail};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Channels they are spread over.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// How long to hold them open before the second reading.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

#[derive(Debug, serde::Serialize)]
pub struct IdleReport {
    pub mode: &'static str,
    pub connections: usize,
    pub failed: usize,
    pub connect_seconds: f64,
    pub server_rss_before: Option<u64>,
    pub server_rss_after: Option<u64>,
    /// (after - before) / connections, read after the hold.
    pub server_rss_per_connection: Option<f64>,
}

pub async fn run(args: &IdleArgs, sub_url: &UrlTemplate, h2: Option<usize>, server: Option<&ServerProc>) -> anyhow::Result<IdleReport> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let rss_before = server.map(ServerProc::rss).transpose()?;
    let started = Instant::now();
    let url = Rc::new(sub_url.clone());
    let gate = Rc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    // Over HTTP/2, `connections` streams on connections of `streams_per_connection` each.
    let mut h2_conns = Vec::new();
    if let Some(per) = h2 {
        for c in 0..args.connections.div_ceil(per) {
            h2_conns.push(H2::open(&url, c).await?);
        }
    }
    let mut opening = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (url, gate) = (url.clone(), gate.clone());
        let channel = channel_name(i % args.channels.max(1));
        let h2_conn = h2.map(|per| h2_conns[i / per].clone());
        opening.push(tokio::task::spawn_local(async move {
            let _permit = gate.acquire().await.expect("semaphore is never closed");
            match h2_conn {
                Some(conn) => conn.subscribe(&url, &url.path(&channel)).await.map(Held::Stream),
                None => open_one(&url, &channel, i).await.map(Held::Conn),
            }
        }));
    }
    let mut held = Vec::with_capacity(args.connections);
    let mut failed = 0;
    let mut first_error = None;
    for task in opening {
        match task.await.context("connection task")? {
            Ok(stream) => held.push(stream),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    if let Some(e) = &first_error {
        eprintln!("{failed} connections failed; the first: {e:#}");
    }
    tokio::time::sleep(args.hold).await;
    let rss_after = server.map(ServerProc::rss).transpose()?;
    let per = match (rss_before, rss_after) {
        (Some(b), Some(a)) if !held.is_empty() => Some((a as f64 - b as f64) / held.len() as f64),
        _ => None,
    };
    let report = IdleReport {
        mode: if h2.is_some() { "idle-h2" } else { "idle" },
        connections: held.len(),
        failed,
        connect_seconds,
        server_rss_before: rss_before,
        server_rss_after: rss_after,
        server_rss_per_connection: per,
    };
    drop(held);
    Ok(report)
}

/// An open subscription, held until the report is made.
#[allow(dead_code)]
enum Held {
    Conn(Conn),
    Stream(h2::RecvStream),
}

/// Opens one subscription and waits for its response head.
async fn open_one(url: &UrlTemplate, channel: &str, i: usize) -> anyhow::Result<Conn> {
    let mut stream = transport::open(url, i, Alpn::Http1).await?;
    stream.write_all(&subscribe_request(url, channel)).await?;
    let mut buf = Vec::new();
    let head = read_response_head(&mut stream, &mut buf).await?;
    if head.status != 200 {
        bail!("subscribe answered {}", head.status);
    }
    Ok(stream)
}

pub fn print_human(r: &IdleReport) {
    println!("idle: {} connections open ({} failed) in {:.2}s", r.connections, r.failed, r.connect_seconds);
    if let (Some(b), Some(a), Some(per)) = (r.server_rss_before, r.server_rss_after, r.server_rss_per_connection) {
        println!("server RSS: {:.1} MiB before, {:.1} MiB after: {:.0} bytes per connection", mib(b), mib(a), per);
    } else {
        println!("server RSS: not measured (give --server-pid)");
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
