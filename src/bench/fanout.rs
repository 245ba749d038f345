//! `herald bench fanout`: S subscribers over C channels, publishers at a set rate or as fast as
//! they can, and what arrives: rates, publish-to-receive latency, loss, duplicates, order, and
//! the server's CPU time.
//!
//! Everything runs on one thread (the bench is meant to be pinned to its own core). Subscribers
//! share one read buffer and read `data:` lines where they lie, so the cost per event is a
//! line scan, two integer parses and a histogram record.

use super::server_proc::{CpuTimes, ServerProc};
use super::target::{BodyMode, PublishRequest, UrlTemplate, channel_name, read_payload, subscribe_request, write_payload};
use super::transport::{self, Alpn, Conn, H2};
use super::wire::{DataLines, Dechunker, Framing, read_response_head};
use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Subscribers; subscriber i listens to channel i mod --channels.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Channels.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Publisher connections (keep-alive). Each publishes to every channel in turn with its own
    /// sequence numbers, so order is checked per channel and publisher.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Publishes per second over all publishers; 0 publishes as fast as the answers come.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Payload bytes per event (it carries a sequence number and the send time).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after this many publishes, if that comes first.
    #[arg(long)]
    pub events: Option<u64>,
    /// How long to wait for stragglers once publishing has stopped.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Subscriptions being opened at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct FanoutReport {
    pub mode: &'static str,
    pub subscribers: usize,
    pub channels: usize,
    pub publishers: usize,
    pub rate: f64,
    pub payload: usize,
    pub body: BodyMode,
    pub publish_seconds: f64,
    pub published: u64,
    pub publish_errors: u64,
    pub published_per_second: f64,
    /// Events each subscriber should have got, summed.
    pub expected: u64,
    pub delivered: u64,
    pub delivered_per_second: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Subscriptions the server ended during the run.
    pub disconnected: usize,
    pub latency_ms: Latency,
    pub server_cpu: Option<CpuTimes>,
    pub delivered_per_server_cpu_second: Option<f64>,
    pub server_rss: Option<u64>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What one subscriber has seen.
#[derive(Default)]
struct Seen {
    channel: usize,
    /// Per publisher: one bit per sequence number it sent to the channel, and the highest seen.
    streams: Vec<(Vec<u64>, Option<u64>)>,
    unique: u64,
    duplicated: u64,
    reordered: u64,
    disconnected: bool,
}

impl Seen {
    fn observe(&mut self, publisher: usize, seq: u64) {
        if publisher >= self.streams.len() {
            self.streams.resize_with(publisher + 1, Default::default);
        }
        let (bits, highest) = &mut self.streams[publisher];
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= bits.len() {
            bits.resize(word + 1, 0);
        }
        if bits[word] & bit != 0 {
            self.duplicated += 1;
            return;
        }
        bits[word] |= bit;
        self.unique += 1;
        if highest.is_some_and(|h| seq < h) {
            self.reordered += 1;
        }
        *highest = Some(highest.map_or(seq, |h| h.max(seq)));
    }
}

/// State every task of the run shares (one thread, so cells are enough).
struct Run {
    clock: Instant,
    seen: RefCell<Vec<Seen>>,
    delivered: Cell<u64>,
    latency: RefCell<Histogram<u64>>,
    read_buf: RefCell<Vec<u8>>,
    /// Successful publishes per channel.
    published: RefCell<Vec<u64>>,
    publish_errors: Cell<u64>,
    first_publish_error: RefCell<Option<String>>,
    /// Publishes still allowed by --events.
    budget: Cell<u64>,
}

impl Run {
    fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }
}

pub async fn run(
    args: &FanoutArgs,
    sub_url: &UrlTemplate,
    pub_url: &UrlTemplate,
    body: BodyMode,
    h2: Option<usize>,
    server: Option<&ServerProc>,
) -> anyhow::Result<FanoutReport> {
    if args.subscribers == 0 || args.channels == 0 || args.publishers == 0 {
        bail!("--subscribers, --channels and --publishers must be at least 1");
    }
    if args.rate < 0.0 || !args.rate.is_finite() {
        bail!("--rate must be 0 (as fast as possible) or a positive number");
    }
    let run = Rc::new(Run {
        clock: Instant::now(),
        seen: RefCell::new((0..args.subscribers).map(|i| Seen { channel: i % args.channels, ..Seen::default() }).collect()),
        delivered: Cell::new(0),
        latency: RefCell::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).context("histogram")?),
        read_buf: RefCell::new(vec![0; 256 * 1024]),
        published: RefCell::new(vec![0; args.channels]),
        publish_errors: Cell::new(0),
        first_publish_error: RefCell::new(None),
        budget: Cell::new(args.events.unwrap_or(u64::MAX)),
    });

    let subscribers = open_subscribers(args, sub_url, h2, &run).await?;

    let cpu_before = server.map(ServerProc::cpu).transpose()?;
    let started = Instant::now();
    let publishers = args.publishers;
    if publishers > 1000 {
        bail!("--publishers must be at most 1000");
    }
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut tasks = Vec::with_capacity(publishers);
    for k in 0..publishers {
        let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(publishers as f64 / args.rate));
        let (run, url) = (run.clone(), pub_url.clone());
        let (payload, channels) = (args.payload, args.channels);
        tasks.push(tokio::task::spawn_local(async move {
            publish_loop(&run, &url, body, k, publishers, channels, payload, interval, deadline).await
        }));
    }
    for task in tasks {
        task.await.context("publisher task")??;
    }
    let publish_seconds = started.elapsed().as_secs_f64();

    // Everyone should now get what was published to their channel.
    let expected: u64 = {
        let published = run.published.borrow();
        run.seen.borrow().iter().map(|s| published[s.channel]).sum()
    };
    let drain_until = Instant::now() + args.drain;
    let mut last_count = run.delivered.get();
    let mut last_progress = Instant::now();
    while run.delivered.get() < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if run.delivered.get() != last_count {
            last_count = run.delivered.get();
            last_progress = Instant::now();
        }
    }
    // The delivery rate is over the time the events took to arrive.
    let delivery_seconds = last_progress.duration_since(started).as_secs_f64().max(publish_seconds);
    let cpu = match (cpu_before, server.map(ServerProc::cpu).transpose()?) {
        (Some(before), Some(after)) => Some(after.since(&before)),
        _ => None,
    };
    let server_rss = server.map(ServerProc::rss).transpose()?;
    for task in subscribers {
        task.abort();
    }

    let published_total: u64 = run.published.borrow().iter().sum();
    let seen = run.seen.borrow();
    let published = run.published.borrow();
    let lost = seen.iter().map(|s| published[s.channel].saturating_sub(s.unique)).sum();
    let delivered = run.delivered.get();
    let hist = run.latency.borrow();
    let ms = |us: u64| us as f64 / 1000.0;
    if let Some(e) = run.first_publish_error.borrow().as_ref() {
        eprintln!("{} publishes failed; the first: {e}", run.publish_errors.get());
    }
    Ok(FanoutReport {
        mode: "fanout",
        subscribers: args.subscribers,
        channels: args.channels,
        publishers,
        rate: args.rate,
        payload: args.payload,
        body,
        publish_seconds,
        published: published_total,
        publish_errors: run.publish_errors.get(),
        published_per_second: published_total as f64 / publish_seconds,
        expected,
        delivered,
        delivered_per_second: delivered as f64 / delivery_seconds,
        lost,
        duplicated: seen.iter().map(|s| s.duplicated).sum(),
        reordered: seen.iter().map(|s| s.reordered).sum(),
        disconnected: seen.iter().filter(|s| s.disconnected).count(),
        latency_ms: if hist.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: ms(hist.value_at_quantile(0.5)),
                p99: ms(hist.value_at_quantile(0.99)),
                p999: ms(hist.value_at_quantile(0.999)),
                max: ms(hist.max()),
            }
        },
        server_cpu: cpu,
        delivered_per_server_cpu_second: cpu.filter(|c| c.total() > 0.0).map(|c| delivered as f64 / c.total()),
        server_rss,
    })
}

/// Opens every subscription (a bounded number at a time) and returns their reading tasks once
/// all have their response head.
async fn open_subscribers(
    args: &FanoutArgs,
    url: &UrlTemplate,
    h2: Option<usize>,
    run: &Rc<Run>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let gate = Rc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    // Over HTTP/2, subscriber i opens its stream on connection i / streams_per_connection.
    let mut h2_conns = Vec::new();
    if let Some(per) = h2 {
        for c in 0..args.subscribers.div_ceil(per) {
            h2_conns.push(H2::open(url, c).await?);
        }
    }
    let h2_conns = Rc::new(h2_conns);
    let ready = Rc::new(Cell::new(0usize));
    let failed: Rc<RefCell<Option<anyhow::Error>>> = Rc::new(RefCell::new(None));
    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let (run, url, gate, ready, failed) = (run.clone(), url.clone(), gate.clone(), ready.clone(), failed.clone());
        let h2_conn = h2.map(|per| h2_conns[i / per].clone());
        tasks.push(tokio::task::spawn_local(async move {
            let permit = gate.acquire().await.expect("semaphore is never closed");
            if let Some(conn) = h2_conn {
                let channel = channel_name(run.seen.borrow()[i].channel);
                let opened = conn.subscribe(&url, &url.path(&channel)).await;
                drop(permit);
                return match opened {
                    Ok(body) => {
                        ready.set(ready.get() + 1);
                        read_h2_events(body, i, &run).await
                    }
                    Err(e) => {
                        failed.borrow_mut().get_or_insert(e);
                        Ok(())
                    }
                };
            }
            let opened = open_subscriber(&url, i, &run).await;
            drop(permit);
            match opened {
                Ok((stream, leftover, framing)) => {
                    ready.set(ready.get() + 1);
                    read_events(stream, leftover, framing, i, &run).await
                }
                Err(e) => {
                    failed.borrow_mut().get_or_insert(e);
                    Ok(())
                }
            }
        }));
    }
    let give_up = Instant::now() + Duration::from_secs(120);
    while ready.get() < args.subscribers {
        if let Some(e) = failed.borrow_mut().take() {
            for t in &tasks {
                t.abort();
            }
            return Err(e.context(format!("opening subscriptions ({} of {} open)", ready.get(), args.subscribers)));
        }
        if Instant::now() > give_up {
            bail!("only {} of {} subscriptions opened in 120s", ready.get(), args.subscribers);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(tasks)
}

async fn open_subscriber(url: &UrlTemplate, i: usize, run: &Run) -> anyhow::Result<(Conn, Vec<u8>, Framing)> {
    let channel = channel_name(run.seen.borrow()[i].channel);
    let mut stream = transport::open(url, i, Alpn::Http1).await?;
    stream.write_all(&subscribe_request(url, &channel)).await?;
    let mut leftover = Vec::new();
    let head = read_response_head(&mut stream, &mut leftover).await?;
    if head.status != 200 {
        bail!("subscribing to {channel} answered HTTP {}", head.status);
    }
    Ok((stream, leftover, head.framing))
}

/// What subscriber `i` does with the body bytes it reads: events counted and timed.
fn consumer<'a>(run: &'a Run, i: usize, framing: Framing) -> impl FnMut(&[u8]) -> anyhow::Result<()> + 'a {
    let mut lines = DataLines::default();
    let mut chunked = (framing == Framing::Chunked).then(|| (Dechunker::default(), Vec::new()));
    move |bytes: &[u8]| -> anyhow::Result<()> {
        let now = run.now_us();
        let mut seen = run.seen.borrow_mut();
        let seen = &mut seen[i];
        let mut latency = run.latency.borrow_mut();
        let mut count = 0;
        let mut on_data = |data: &[u8]| {
            if let Some(stamp) = read_payload(data) {
                seen.observe(stamp.publisher, stamp.seq);
                let _ = latency.record(now.saturating_sub(stamp.sent_us).max(1));
                count += 1;
            }
        };
        match &mut chunked {
            Some((dechunker, body)) => {
                body.clear();
                dechunker.feed(bytes, body)?;
                lines.feed(body, &mut on_data);
            }
            None => lines.feed(bytes, &mut on_data),
        }
        run.delivered.set(run.delivered.get() + count);
        Ok(())
    }
}

/// Reads an HTTP/2 subscription until the run ends or the server ends the stream.
async fn read_h2_events(mut body: h2::RecvStream, i: usize, run: &Run) -> anyhow::Result<()> {
    let mut consume = consumer(run, i, Framing::UntilClose);
    loop {
        match transport::next_data(&mut body).await {
            Ok(Some(data)) => consume(&data)?,
            Ok(None) => {
                run.seen.borrow_mut()[i].disconnected = true;
                return Ok(());
            }
            Err(e) => {
                run.seen.borrow_mut()[i].disconnected = true;
                return Err(e);
            }
        }
    }
}

/// Reads a subscription until the run ends (the task is aborted) or the server closes it.
async fn read_events(stream: Conn, leftover: Vec<u8>, framing: Framing, i: usize, run: &Run) -> anyhow::Result<()> {
    let mut consume = consumer(run, i, framing);
    consume(&leftover)?;
    drop(leftover);
    let mut stream = stream;
    loop {
        // Read into the shared buffer inside one poll, so no borrow outlives it. tokio's
        // `poll_read` takes a short read as proof the socket is drained, which saves the second
        // read (the one that would only say "nothing more") on every event.
        let read = std::future::poll_fn(|cx| {
            let mut buf = run.read_buf.borrow_mut();
            let mut rb = tokio::io::ReadBuf::new(&mut buf);
            match std::pin::Pin::new(&mut stream).poll_read(cx, &mut rb) {
                std::task::Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    std::task::Poll::Ready(if n == 0 { Ok(0) } else { consume(rb.filled()).map(|()| n) })
                }
                std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e.into())),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
        .await;
        match read {
            Ok(0) => {
                run.seen.borrow_mut()[i].disconnected = true;
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => {
                run.seen.borrow_mut()[i].disconnected = true;
                return Err(e);
            }
        }
    }
}

/// Where publisher `me` starts going round the channels. Publishers start evenly spaced, so that
/// each channel is published to at a steady rate. Starting on neighbouring channels would move
/// them in step, and every channel would get a burst of one event from each publisher in turn,
/// which a hub can batch into fewer writes: not what "many channels, few events each" measures.
fn first_channel(me: usize, publishers: usize, channels: usize) -> usize {
    me * channels / publishers.max(1)
}

/// Publisher connection `me`: sends events to every channel in turn until the deadline.
#[allow(clippy::too_many_arguments)]
async fn publish_loop(
    run: &Run,
    url: &UrlTemplate,
    body: BodyMode,
    me: usize,
    publishers: usize,
    channels: usize,
    payload_size: usize,
    interval: Option<Duration>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let requests: Vec<PublishRequest> = (0..channels).map(|c| PublishRequest::new(url, &channel_name(c), body)).collect();
    let mut seqs = vec![0u64; channels];
    let (mut payload, mut request, mut response) = (Vec::new(), Vec::new(), Vec::new());
    let mut stream: Option<Conn> = None;
    let mut next_due = tokio::time::Instant::now();
    let mut turn = first_channel(me, publishers, channels);
    while tokio::time::Instant::now() < deadline && run.budget.get() > 0 {
        if let Some(every) = interval {
            next_due += every;
            if next_due >= deadline {
                break;
            }
            tokio::time::sleep_until(next_due).await;
        }
        run.budget.set(run.budget.get() - 1);
        let k = turn % channels;
        turn += 1;
        if stream.is_none() {
            stream = Some(transport::open(url, 1000 + turn, Alpn::Http1).await?);
            response.clear();
        }
        let conn = stream.as_mut().expect("connected above");
        write_payload(me, seqs[k], run.now_us(), payload_size, &mut payload);
        requests[k].write(&payload, &mut request);
        match exchange(conn, &request, &mut response).await {
            Ok((status, keep)) if (200..300).contains(&status) => {
                seqs[k] += 1;
                run.published.borrow_mut()[k] += 1;
                if !keep {
                    stream = None;
                }
            }
            Ok((status, keep)) => {
                note_error(run, format!("HTTP {status}: {}", String::from_utf8_lossy(&response).trim()));
                if !keep {
                    stream = None;
                }
            }
            Err(e) => {
                note_error(run, format!("{e:#}"));
                stream = None;
            }
        }
    }
    Ok(())
}

fn note_error(run: &Run, message: String) {
    run.publish_errors.set(run.publish_errors.get() + 1);
    run.first_publish_error.borrow_mut().get_or_insert(message);
}

/// Sends one request and reads its answer; `response` ends up holding the body. Returns the
/// status and whether the connection can be used again.
async fn exchange(stream: &mut Conn, request: &[u8], response: &mut Vec<u8>) -> anyhow::Result<(u16, bool)> {
    response.clear();
    stream.write_all(request).await?;
    let head = read_response_head(stream, response).await?;
    match head.framing {
        Framing::Length(n) => {
            while response.len() < n {
                response.reserve(n - response.len());
                if stream.read_buf(response).await? == 0 {
                    bail!("connection closed inside a response body");
                }
            }
            // Whatever follows belongs to no request of ours: drop it with the body.
            let body_end = n;
            response.truncate(body_end);
            Ok((head.status, !head.close))
        }
        Framing::Chunked => {
            let mut dechunker = Dechunker::default();
            let mut body = Vec::new();
            let mut input = std::mem::take(response);
            loop {
                dechunker.feed(&input, &mut body)?;
                if dechunker.is_done() {
                    break;
                }
                input.clear();
                input.reserve(4096);
                if stream.read_buf(&mut input).await? == 0 {
                    bail!("connection closed inside a chunked response");
                }
            }
            *response = body;
            Ok((head.status, !head.close))
        }
        Framing::UntilClose => {
            stream.read_to_end(response).await?;
            Ok((head.status, false))
        }
    }
}

pub fn print_human(r: &FanoutReport) {
    println!(
        "fanout: {} subscribers over {} channels, {} publisher(s), rate {}, {}-byte payloads ({:?} bodies)",
        r.subscribers,
        r.channels,
        r.publishers,
        if r.rate > 0.0 { format!("{}/s", r.rate) } else { "max".into() },
        r.payload,
        r.body
    );
    println!("published: {} in {:.2}s = {:.0}/s ({} errors)", r.published, r.publish_seconds, r.published_per_second, r.publish_errors);
    println!(
        "delivered: {} of {} expected = {:.0}/s; lost {}, duplicated {}, reordered {}, disconnected {}",
        r.delivered, r.expected, r.delivered_per_second, r.lost, r.duplicated, r.reordered, r.disconnected
    );
    println!(
        "latency (publish to receive): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        r.latency_ms.p50, r.latency_ms.p99, r.latency_ms.p999, r.latency_ms.max
    );
    match (r.server_cpu, r.delivered_per_server_cpu_second) {
        (Some(cpu), Some(per)) => println!(
            "server CPU: {:.2}s user + {:.2}s system = {:.2}s: {:.0} delivered events per server CPU-second",
            cpu.user_s,
            cpu.system_s,
            cpu.total(),
            per
        ),
        _ => println!("server CPU: not measured (give --server-pid)"),
    }
}

#[cfg(test)]
mod tests {
    use super::first_channel;

    #[test]
    fn publishers_start_evenly_spaced() {
        let starts: Vec<usize> = (0..16).map(|me| first_channel(me, 16, 1000)).collect();
        assert_eq!(&starts[..4], &[0, 62, 125, 187]);
        // Every gap between neighbours is 62 or 63 channels, and the last wraps to the first.
        for (a, b) in starts.iter().zip(starts.iter().skip(1).chain([&1000])) {
            assert!((62..=63).contains(&(b - a)), "{starts:?}");
        }
        assert_eq!(first_channel(0, 4, 1), 0);
        assert_eq!((0..4).map(|me| first_channel(me, 4, 3)).collect::<Vec<_>>(), [0, 0, 1, 2]);
    }
}
