//! `GET /metrics` on the debug listener: Prometheus text format, rendered by
//! metrics-exporter-prometheus from a recorder made for the scrape.
//!
//! Every figure is read at scrape time from what the hub and the sources already count, so the
//! metrics cost the publish and delivery paths nothing. Series are per node and per source,
//! never per channel, so their number does not grow with the channels clients invent.

use crate::hub::Hub;
use crate::sources::Sources;
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

/// The metrics page, as a scraper reads it.
pub fn render(hub: &Hub, sources: &Sources) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || record(hub, sources));
    handle.render()
}

fn record(hub: &Hub, sources: &Sources) {
    let totals = hub.stats(1, None).totals;
    let store_writable = if hub.store().problem().is_none() { 1.0 } else { 0.0 };
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
        describe_gauge!(name, help);
        gauge!(name).set(value);
    }
    describe_counter!("herald_events_published_total", "Events published on this node (in a cluster, read back from the bus).");
    counter!("herald_events_published_total").absolute(totals.published);
    describe_gauge!("herald_store_writable", "1 while the history store takes appends, 0 while it cannot (a full disk).");
    gauge!("herald_store_writable", "store" => hub.store().kind()).set(store_writable);
    if let Some(bus) = hub.bus() {
        describe_gauge!("herald_bus_connected", "1 while the cluster bus is reachable.");
        gauge!("herald_bus_connected", "bus" => bus.kind()).set(if bus.state().connected() { 1.0 } else { 0.0 });
        describe_counter!("herald_bus_unapplied_total", "Events from the bus this node could not apply (once per channel).");
        counter!("herald_bus_unapplied_total").absolute(hub.unapplied());
    }
    describe_gauge!("herald_source_connected", "1 while the source is connected to its broker.");
    describe_counter!("herald_source_messages_total", "Messages a source received, by what became of them.");
    for report in sources.reports() {
        let labels = [("source", report.name.clone()), ("type", report.kind.to_owned())];
        gauge!("herald_source_connected", &labels).set(if report.connected { 1.0 } else { 0.0 });
        for (outcome, n) in [
            ("received", report.received),
            ("accepted", report.accepted),
            ("rejected", report.rejected),
            ("duplicate", report.duplicates),
            ("dropped", report.dropped),
        ] {
            let labels = [("source", report.name.clone()), ("type", report.kind.to_owned()), ("outcome", outcome.to_owned())];
            counter!("herald_source_messages_total", &labels).absolute(n);
        }
    }
}
