//! `GET /metrics` on the debug listener: Prometheus text format, encoded by prometheus-client
//! from a collector filled at scrape time.
//!
//! The hub's own figures (streams, channels, history, sources) are read from what it already
//! keeps; deliveries, lag, replay, HTTP answers and the latency histograms come from the
//! per-thread counters of `telemetry::counters`, which cost the hot paths a load and a store
//! per write. Series are per node, per source, per status class, and per channel only for the
//! channels declared by name in `[[channels]]`, so their number does not grow with the channels
//! clients invent.

use crate::hub::Hub;
use crate::sources::Sources;
use crate::telemetry::counters::{self, BUCKETS, Histogram};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The metrics page, as a scraper reads it.
pub fn render(hub: &Hub, sources: &Sources) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Page::gather(hub, sources)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Histogram),
}

/// One metric: its name (a counter's without `_total`, which the encoder adds), help, and
/// its samples by label set.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Labels, Value)>,
}

/// Everything one scrape shows, read at once.
#[derive(Debug, Default)]
struct Page {
    families: Vec<Family>,
}

impl Page {
    fn add(&mut self, name: &'static str, help: &'static str, value: Value) {
        self.families.push(Family { name, help, samples: vec![(Vec::new(), value)] });
    }

    fn gather(hub: &Hub, sources: &Sources) -> Page {
        let mut page = Page::default();
        let totals = hub.stats(1, None).totals;
        let counted = counters::totals();
        let gauges = [
            ("herald_subscriptions", "Open event streams.", totals.subscriptions as f64),
            ("herald_subscribers", "Open event streams counted once per channel they read.", totals.subscribers as f64),
            ("herald_channels", "Channels that exist now.", totals.channels as f64),
            ("herald_user_logs", "Users' logs (events addressed to users) that exist now.", totals.user_logs as f64),
            ("herald_history_events", "Events held in history.", totals.history_len as f64),
            ("herald_history_bytes", "Bytes of the events held in history.", totals.history_bytes as f64),
            ("herald_history_max_bytes", "history.max_memory: the cap on history's bytes.", totals.history_memory_cap as f64),
            ("herald_idempotency_keys", "Idempotency keys held (dedupe_window).", hub.dedupe_keys() as f64),
        ];
        for (name, help, value) in gauges {
            page.add(name, help, Value::Gauge(value));
        }
        let counts = [
            ("herald_events_published", "Events published on this node (in a cluster, read back from the bus).", totals.published),
            ("herald_events_delivered", "Events written to subscribers (an event counts once per subscriber).", counted.delivered_events),
            ("herald_delivered_bytes", "Bytes written to subscribers: events, keep-alives and notices.", counted.delivered_bytes),
            ("herald_stream_writes", "Writes to subscribers (a write carries every event a subscriber had due).", counted.writes),
            ("herald_lag_notices", "Times a subscriber was told it fell behind history (lag_policy).", counted.lag_notices),
            ("herald_events_skipped", "Events lagging subscribers skipped (evicted before they read them).", counted.lag_skipped),
            ("herald_events_replayed", "Events resuming subscriptions had to catch up on from history when they opened.", counted.replayed),
            (
                "herald_write_timeouts",
                "Streams ended because their socket stopped draining for limits.write_timeout.",
                counted.write_timeouts,
            ),
        ];
        for (name, help, value) in counts {
            page.add(name, help, Value::Counter(value));
        }
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        page.families.push(Family {
            name: "herald_http_responses",
            help: "Answers on the public listener, by status class (an event stream counts when it opens).",
            samples: classes.iter().zip(counted.http).map(|(class, n)| (vec![("class", (*class).to_owned())], Value::Counter(n))).collect(),
        });
        let histograms = [
            (
                "herald_http_publish_duration_seconds",
                "Publish requests, from arrival to answer (fsync included when history.fsync = always).",
                counted.publish,
            ),
            (
                "herald_delivery_delay_seconds",
                "From an event's acceptance to its write to a subscriber (the oldest event of one write in 8).",
                counted.delay,
            ),
            ("herald_store_fsync_duration_seconds", "Syncs of the disk store to disk.", counted.fsync),
        ];
        for (name, help, h) in histograms {
            page.add(name, help, Value::Histogram(h));
        }
        // Per channel only for the channels the configuration declares by name: their number is
        // the operator's, whatever names clients invent.
        let declared = hub.declared_channel_stats();
        if !declared.is_empty() {
            let per_channel = |name: &'static str, help: &'static str, value: fn(&crate::hub::ChannelStats) -> Value| Family {
                name,
                help,
                samples: declared.iter().map(|(channel, s)| (vec![("channel", channel.to_string())], value(s))).collect(),
            };
            page.families.push(per_channel("herald_channel_subscribers", "Open streams reading a declared channel.", |s| {
                Value::Gauge(s.subscribers as f64)
            }));
            page.families.push(per_channel("herald_channel_events_published", "Events published to a declared channel.", |s| {
                Value::Counter(s.published)
            }));
            page.families.push(per_channel("herald_channel_history_events", "Events a declared channel holds in history.", |s| {
                Value::Gauge(s.history_len as f64)
            }));
            page.families.push(per_channel(
                "herald_channel_history_bytes",
                "Bytes of the events a declared channel holds in history.",
                |s| Value::Gauge(s.history_bytes as f64),
            ));
        }
        let writable = if hub.store().problem().is_none() { 1.0 } else { 0.0 };
        page.families.push(Family {
            name: "herald_store_writable",
            help: "1 while the history store takes appends, 0 while it cannot (a full disk).",
            samples: vec![(vec![("store", hub.store().kind().to_owned())], Value::Gauge(writable))],
        });
        if let Some(bus) = hub.bus() {
            let kind = vec![("bus", bus.kind().to_owned())];
            let up = if bus.state().connected() { 1.0 } else { 0.0 };
            page.families.push(Family {
                name: "herald_bus_connected",
                help: "1 while the cluster bus is reachable.",
                samples: vec![(kind, Value::Gauge(up))],
            });
            page.add(
                "herald_bus_unapplied",
                "Events from the bus this node could not apply (once per channel).",
                Value::Counter(hub.unapplied()),
            );
        }
        let mut connected =
            Family { name: "herald_source_connected", help: "1 while the source is connected to its broker.", samples: Vec::new() };
        let mut messages =
            Family { name: "herald_source_messages", help: "Messages a source received, by what became of them.", samples: Vec::new() };
        for report in sources.reports() {
            let labels = vec![("source", report.name.clone()), ("type", report.kind.to_owned())];
            connected.samples.push((labels.clone(), Value::Gauge(if report.connected { 1.0 } else { 0.0 })));
            for (outcome, n) in [
                ("received", report.received),
                ("accepted", report.accepted),
                ("rejected", report.rejected),
                ("duplicate", report.duplicates),
                ("dropped", report.dropped),
            ] {
                let mut labels = labels.clone();
                labels.push(("outcome", outcome.to_owned()));
                messages.samples.push((labels, Value::Counter(n)));
            }
        }
        if !connected.samples.is_empty() {
            page.families.push(connected);
            page.families.push(messages);
        }
        page
    }
}

impl Collector for Page {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            let kind = match family.samples.first().map(|(_, v)| v) {
                Some(Value::Counter(_)) => MetricType::Counter,
                Some(Value::Histogram(_)) => MetricType::Histogram,
                _ => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            for (labels, value) in &family.samples {
                if labels.is_empty() {
                    encode_value(&mut metric, value)?;
                } else {
                    encode_value(&mut metric.encode_family(labels)?, value)?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(metric: &mut MetricEncoder<'_>, value: &Value) -> Result<(), std::fmt::Error> {
    match value {
        Value::Counter(n) => metric.encode_counter::<NoLabelSet, _, u64>(n, None),
        Value::Gauge(v) => metric.encode_gauge(v),
        Value::Histogram(h) => {
            // Per-bucket counts (the encoder makes them cumulative); the last bucket is +Inf,
            // which the encoder writes for f64::MAX.
            let bounds = BUCKETS.iter().copied().chain(std::iter::once(f64::MAX));
            let buckets: Vec<(f64, u64)> = bounds.zip(h.counts.iter().copied().chain(std::iter::repeat(0))).collect();
            metric.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count(), &buckets, None)
        }
    }
}
