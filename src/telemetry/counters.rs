//! The counts behind `/metrics` that the hot paths keep: deliveries, lag, replay, HTTP answers
//! and latency histograms.
//!
//! Each thread writes a shard of its own, with a plain load and store (no locked instruction,
//! no cache line shared with another core), and a scrape sums the shards. Deliveries are
//! counted once per write (a batch of events), not once per event, and the delivery delay is
//! timed on one write in [`DELAY_SAMPLE`].

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the latency histograms' buckets, in seconds (Prometheus `le`), from 100 µs
/// to 10 s; slower ones land in `+Inf`.
pub const BUCKETS: [f64; 16] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One write in this many has its delivery delay timed (reading the clock is the costly part).
pub const DELAY_SAMPLE: u32 = 8;

/// A latency histogram's shard: counts per bucket (the last one is `+Inf`), and their sum.
#[derive(Default)]
struct Buckets {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Buckets {
    fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BUCKETS.iter().position(|&le| secs <= le).unwrap_or(BUCKETS.len());
        bump(&self.counts[i], 1);
        bump(&self.sum_nanos, u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }
}

#[derive(Default)]
struct Shard {
    delivered_events: AtomicU64,
    delivered_bytes: AtomicU64,
    writes: AtomicU64,
    lag_notices: AtomicU64,
    lag_skipped: AtomicU64,
    replayed: AtomicU64,
    write_timeouts: AtomicU64,
    /// Answers by status class, 1xx to 5xx.
    http: [AtomicU64; 5],
    publish: Buckets,
    delay: Buckets,
    fsync: Buckets,
    /// Writes since the last timed one, for [`DELAY_SAMPLE`].
    untimed: AtomicU64,
}

/// Adds to a counter only this thread writes: a load and a store, no read-modify-write.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Every shard ever made (they are never freed: what a thread counted stays counted), and the
/// ones whose thread ended, for the next thread to take.
static ALL: Mutex<Vec<&'static Shard>> = Mutex::new(Vec::new());
static FREE: Mutex<Vec<&'static Shard>> = Mutex::new(Vec::new());

/// This thread's shard, given back when the thread ends.
struct Slot(&'static Shard);

impl Drop for Slot {
    fn drop(&mut self) {
        FREE.lock().push(self.0);
    }
}

thread_local! {
    static LOCAL: Slot = Slot(FREE.lock().pop().unwrap_or_else(|| {
        let shard: &'static Shard = Box::leak(Box::default());
        ALL.lock().push(shard);
        shard
    }));
}

fn with(f: impl FnOnce(&Shard)) {
    // During thread teardown the slot may be gone; such a count is lost, nothing else.
    let _ = LOCAL.try_with(|slot| f(slot.0));
}

/// A subscriber's write of `events` events, `bytes` bytes in all.
pub fn delivered(events: u32, bytes: usize) {
    with(|s| {
        bump(&s.writes, 1);
        bump(&s.delivered_events, u64::from(events));
        bump(&s.delivered_bytes, bytes as u64);
    });
}

/// Whether this write should have its delivery delay timed.
pub fn time_this_delivery() -> bool {
    let mut due = false;
    with(|s| {
        let n = s.untimed.load(Ordering::Relaxed) + 1;
        due = n >= u64::from(DELAY_SAMPLE);
        s.untimed.store(if due { 0 } else { n }, Ordering::Relaxed);
    });
    due
}

/// The oldest event of a write was accepted at `accepted`.
pub fn delivery_delay(accepted: Instant) {
    let took = accepted.elapsed();
    with(|s| s.delay.record(took));
}

/// A subscriber lagged: `skipped` events it will never get, and one notice telling it so.
pub fn lagged(skipped: u64) {
    with(|s| {
        bump(&s.lag_notices, 1);
        bump(&s.lag_skipped, skipped);
    });
}

/// A resuming subscription had this many events of history to catch up on.
pub fn replaying(events: u64) {
    with(|s| bump(&s.replayed, events));
}

/// A subscriber's stream ended because its socket stopped draining (`limits.write_timeout`).
pub fn write_timed_out() {
    with(|s| bump(&s.write_timeouts, 1));
}

/// An HTTP answer on the public listener.
pub fn http_answer(status: http::StatusCode) {
    let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
    with(|s| bump(&s.http[class], 1));
}

/// A publish request, from its arrival to its answer.
pub fn publish_took(took: Duration) {
    with(|s| s.publish.record(took));
}

/// One sync of the disk store.
pub fn fsync_took(took: Duration) {
    with(|s| s.fsync.record(took));
}

/// A histogram summed over every shard: per-bucket (not cumulative) counts, the last one
/// `+Inf`, and the sum of what was recorded, in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn add(&mut self, b: &Buckets) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len() + 1];
        }
        for (total, c) in self.counts.iter_mut().zip(&b.counts) {
            *total += c.load(Ordering::Relaxed);
        }
        self.sum_seconds += b.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    }
}

/// Everything counted, summed over the threads.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub delivered_events: u64,
    pub delivered_bytes: u64,
    pub writes: u64,
    pub lag_notices: u64,
    pub lag_skipped: u64,
    pub replayed: u64,
    pub write_timeouts: u64,
    pub http: [u64; 5],
    pub publish: Histogram,
    pub delay: Histogram,
    pub fsync: Histogram,
}

pub fn totals() -> Totals {
    let mut t = Totals::default();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for s in ALL.lock().iter() {
        t.delivered_events += load(&s.delivered_events);
        t.delivered_bytes += load(&s.delivered_bytes);
        t.writes += load(&s.writes);
        t.lag_notices += load(&s.lag_notices);
        t.lag_skipped += load(&s.lag_skipped);
        t.replayed += load(&s.replayed);
        t.write_timeouts += load(&s.write_timeouts);
        for (total, c) in t.http.iter_mut().zip(&s.http) {
            *total += load(c);
        }
        t.publish.add(&s.publish);
        t.delay.add(&s.delay);
        t.fsync.add(&s.fsync);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_every_thread_are_summed() {
        let before = totals();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        delivered(3, 100);
                    }
                    publish_took(Duration::from_micros(700));
                });
            }
        });
        let after = totals();
        // Other tests in this process count too: at least ours arrived.
        assert!(after.writes - before.writes >= 4000);
        assert!(after.delivered_events - before.delivered_events >= 12_000);
        assert!(after.delivered_bytes - before.delivered_bytes >= 400_000);
        let bucket = BUCKETS.iter().position(|&le| le >= 0.0007).unwrap();
        assert!(after.publish.counts[bucket] - before.publish.counts.get(bucket).copied().unwrap_or(0) >= 4);
    }

    #[test]
    fn a_latency_lands_in_the_first_bucket_that_holds_it() {
        let b = Buckets::default();
        b.record(Duration::from_micros(100));
        b.record(Duration::from_micros(101));
        b.record(Duration::from_secs(11));
        let mut h = Histogram::default();
        h.add(&b);
        assert_eq!(h.counts[0], 1, "100 µs is within le=0.0001");
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[BUCKETS.len()], 1, "+Inf");
        assert!((h.sum_seconds - 11.000201).abs() < 1e-9);
    }
}
