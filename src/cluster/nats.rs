//! The NATS JetStream bus: one stream whose subjects are one per channel.
//!
//! The stream (`cluster.stream`, with characters NATS does not allow in a stream name turned
//! into `_`) takes the subjects `<stream>.<channel>`, a channel's dots written `%2E` so that a
//! channel is one subject token, and keeps at most `cluster.max_len` messages and, if set,
//! `cluster.max_age`. A message carries the encoded block without its id line; its headers carry
//! the event's channels (`Herald-Channels`, comma-separated: commas never occur in channel names)
//! and the publisher's id (`Herald-Id`). Positions are the stream sequence numbers, the same on
//! every node. Each node reads the stream with an ordered consumer, and starts a new one after
//! the last sequence it applied when the old one fails.

use super::{Appended, Bus, BusError, BusState, Incoming, Outgoing};
use crate::config::ClusterConfig;
use crate::hub::Hub;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use sha2::Digest;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Messages applied to the hub in one go, when that many are waiting.
const APPLY_BATCH: usize = 1000;

pub struct NatsBus {
    js: jetstream::Context,
    client: async_nats::Client,
    subject_prefix: String,
    state: Arc<BusState>,
    /// This node's prefix for message ids (`Nats-Msg-Id`), and the counter after it.
    node: String,
    sent: std::sync::atomic::AtomicU64,
}

/// Tries of one batch: JetStream drops a message whose `Nats-Msg-Id` it already has (within
/// its duplicate window), so sending a batch again after a lost acknowledgement adds only what
/// was missing, and its positions are those of the first copy.
const PUBLISH_TRIES: u32 = 3;

/// `cluster.stream` as a JetStream stream name.
pub fn stream_name(configured: &str) -> String {
    configured.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

fn subject(prefix: &str, channel: &str) -> String {
    format!("{prefix}.{}", channel.replace('.', "%2E"))
}

impl NatsBus {
    pub async fn start(hub: &Arc<Hub>, config: &ClusterConfig) -> anyhow::Result<(Arc<NatsBus>, oneshot::Receiver<()>)> {
        // Connects in the background when the server is not there yet, and reconnects by itself.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(config.bus.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("cluster.bus: {e}"))?;
        let mut js = jetstream::new(client.clone());
        // A publish that gets no acknowledgement in this time is answered 503.
        js.set_timeout(Duration::from_secs(2));
        let name = stream_name(&config.stream);
        let stream_config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            max_messages: config.max_len as i64,
            max_age: config.max_age,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            // How long JetStream drops a message whose `Nats-Msg-Id` it has seen: what makes an
            // idempotency key hold across nodes.
            duplicate_window: hub.config().dedupe_window,
            ..Default::default()
        };
        let state = Arc::new(BusState::default());
        let node = format!("{:x}-{:x}", std::process::id(), crate::event::now_wall_us());
        let bus = Arc::new(NatsBus {
            js: js.clone(),
            client,
            subject_prefix: name,
            state: state.clone(),
            node,
            sent: std::sync::atomic::AtomicU64::new(0),
        });
        let (loaded, on_loaded) = oneshot::channel();
        let reader = Reader { hub: Arc::downgrade(hub), js, client: bus.client.clone(), stream_config, state };
        tokio::spawn(reader.run(loaded));
        Ok((bus, on_loaded))
    }

    async fn append_all(&self, events: &[Outgoing], key: Option<&str>) -> Result<Appended, BusError> {
        self.state.check_usable("nats")?;
        let ids: Vec<String> = match key {
            // The same on every node, so JetStream drops another node's repeat. Hashed: a key
            // may hold what a header value may not.
            Some(key) => {
                let digest = hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16]);
                (0..events.len()).map(|i| format!("k-{digest}-{i}")).collect()
            }
            None => {
                let first = self.sent.fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
                (0..events.len() as u64).map(|i| format!("{}-{}", self.node, first + i)).collect()
            }
        };
        let mut tries = 0;
        loop {
            tries += 1;
            match self.send_batch(events, &ids).await {
                Ok(positions) => return Ok(positions),
                Err(e) if tries < PUBLISH_TRIES => {
                    tracing::debug!(error = %e, tries, "cluster bus: sending the batch again");
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(tries))).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn send_batch(&self, events: &[Outgoing], ids: &[String]) -> Result<Appended, BusError> {
        let fail = |message: String| BusError { kind: "nats", message };
        // Send them all, then collect the acknowledgements: one round trip for a batch, and the
        // stream keeps the order they were sent in.
        let mut acks = Vec::with_capacity(events.len());
        for (ev, id) in events.iter().zip(ids) {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let channels = ev.channels.iter().map(|c| &**c).collect::<Vec<_>>().join(",");
            headers.insert("Herald-Channels", channels.as_str());
            if let Some(id) = &ev.custom_id {
                headers.insert("Herald-Id", id.as_str());
            }
            let first = ev.channels.first().map_or("", |c| &**c);
            let ack = self
                .js
                .publish_with_headers(subject(&self.subject_prefix, first), headers, ev.partial.clone())
                .await
                .map_err(|e| fail(e.to_string()))?;
            acks.push(ack);
        }
        let mut positions = Vec::with_capacity(acks.len());
        let mut repeat = false;
        for ack in acks {
            let ack = ack.await.map_err(|e| fail(e.to_string()))?;
            // A repeat's acknowledgement carries the first copy's sequence.
            repeat |= ack.duplicate;
            positions.push(ack.sequence);
        }
        Ok(Appended { positions, repeat })
    }
}

impl Bus for NatsBus {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn append<'a>(&'a self, events: &'a [Outgoing], key: Option<&'a str>) -> BoxFuture<'a, Result<Appended, BusError>> {
        Box::pin(self.append_all(events, key))
    }

    fn state(&self) -> &BusState {
        // The reader keeps it; a lost connection shows here at once.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            self.state.down("not connected to the NATS server".into());
        }
        &self.state
    }
}

struct Reader {
    hub: Weak<Hub>,
    js: jetstream::Context,
    client: async_nats::Client,
    stream_config: stream::Config,
    state: Arc<BusState>,
}

/// How often the reader checks whether the client reconnected meanwhile.
const RECONNECT_CHECK: Duration = Duration::from_millis(200);
/// Every this many reconnect checks, it also asks for the stream's state: an ordered consumer
/// whose stream was deleted keeps retrying quietly, so this is how a deletion shows.
const STREAM_CHECK_EVERY: u32 = 5;

impl Reader {
    async fn run(self, loaded: oneshot::Sender<()>) {
        let mut loaded = Some(loaded);
        // The last sequence applied; `None` until the retained messages are loaded.
        let mut last: Option<u64> = None;
        // When the stream was made, as first seen: a stream deleted and made again, even past
        // the old sequence numbers, has another.
        let mut created = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.hub.upgrade().is_none_or(|hub| hub.is_closing()) {
                return;
            }
            match self.read(&mut last, &mut created, &mut loaded, &mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    self.state.down(e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Makes sure the stream exists, loads what it retains (once), then follows it with an
    /// ordered consumer. `Ok` when the hub is gone.
    async fn read(
        &self,
        last: &mut Option<u64>,
        created: &mut Option<async_nats::datetime::DateTime>,
        loaded: &mut Option<oneshot::Sender<()>>,
        backoff: &mut Duration,
    ) -> Result<(), String> {
        let mut stream = self.js.get_or_create_stream(self.stream_config.clone()).await.map_err(|e| e.to_string())?;
        let full = stream.info().await.map_err(|e| e.to_string())?.clone();
        let info = full.state.clone();
        let made = *created.get_or_insert(full.created);
        let start = match *last {
            Some(seq) if info.last_sequence < seq || full.created != made => {
                // The stream was deleted and made again: its sequences, which are this
                // cluster's ids, started over. Events numbered again from 1 would be taken for
                // repeats and dropped, so refuse publishes instead and say why.
                self.state.break_for_good(format!(
                    "the JetStream stream `{}` was recreated (made {}, not {made}; its last sequence is {}, this node had read up to {seq}): \
                     restart every node",
                    self.stream_config.name, full.created, info.last_sequence
                ));
                return Err("the stream was recreated".into());
            }
            // Back after an outage: messages the stream's limits removed meanwhile show as a
            // jump in sequence numbers when the consumer delivers the next one (below).
            Some(seq) => seq + 1,
            None => {
                let Some(hub) = self.hub.upgrade() else { return Ok(()) };
                // Whatever came before the oldest retained message is out of reach.
                hub.begin_history_at(if info.messages == 0 { info.last_sequence } else { info.first_sequence - 1 });
                *last = Some(if info.messages == 0 { info.last_sequence } else { info.first_sequence - 1 });
                if info.messages == 0 {
                    if let Some(tx) = loaded.take() {
                        let _ = tx.send(());
                    }
                }
                last.expect("set above") + 1
            }
        };
        let loaded_at = info.last_sequence;
        // A reconnect means the server may have lost the consumer (a restart): the ordered
        // consumer would notice only after missed heartbeats, seconds later, so start a new one
        // after the last sequence applied as soon as the connection count moves.
        let stats = self.client.statistics();
        let connects = stats.connects.load(std::sync::atomic::Ordering::Relaxed);
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: start },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?.ready_chunks(APPLY_BATCH);
        self.state.up();
        *backoff = Duration::from_millis(100);
        let mut checks = tokio::time::interval(RECONNECT_CHECK);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        loop {
            let batch = tokio::select! {
                batch = messages.next() => match batch {
                    Some(batch) => batch,
                    None => return Err("the ordered consumer ended".into()),
                },
                _ = checks.tick() => {
                    if stats.connects.load(std::sync::atomic::Ordering::Relaxed) != connects {
                        return Err("reconnected to the NATS server".into());
                    }
                    ticks += 1;
                    if ticks % STREAM_CHECK_EVERY == 0 {
                        let info = stream.info().await.map_err(|e| format!("stream `{}`: {e}", self.stream_config.name))?;
                        if last.is_some_and(|seq| info.state.last_sequence < seq) || info.created != made {
                            return Err(format!("stream `{}` went back to sequence {}", self.stream_config.name, info.state.last_sequence));
                        }
                    }
                    continue;
                }
            };
            let Some(hub) = self.hub.upgrade() else { return Ok(()) };
            if hub.is_closing() {
                return Ok(());
            }
            let mut incoming = Vec::with_capacity(batch.len());
            let mut failure = None;
            for message in batch {
                match message {
                    Ok(m) => match decode(&m) {
                        Ok(ev) => {
                            if let Some(prev) = *last
                                && ev.pos > prev + 1
                            {
                                // The ordered consumer came back after the stream's limits
                                // removed messages this node never read: sequences are
                                // contiguous, so a jump is a loss.
                                tracing::warn!(
                                    stream = %self.stream_config.name,
                                    last_read = prev,
                                    next = ev.pos,
                                    "cluster bus: messages were removed from the stream before this node read them; \
                                     live streams end so that their clients resume and are told what they missed"
                                );
                                hub.apply_from_bus(std::mem::take(&mut incoming));
                                hub.begin_history_at(ev.pos - 1);
                            }
                            *last = Some(ev.pos);
                            incoming.push(ev);
                        }
                        Err(why) => {
                            tracing::warn!(why, "skipping a stream message");
                            // Read all the same: the next message is not a gap.
                            if let Ok(info) = m.info() {
                                *last = Some(info.stream_sequence);
                            }
                        }
                    },
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            if !incoming.is_empty() {
                hub.apply_from_bus(incoming);
            }
            if last.is_some_and(|seq| seq >= loaded_at)
                && let Some(tx) = loaded.take()
            {
                let _ = tx.send(());
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }
}

fn decode(m: &jetstream::Message) -> Result<Incoming, &'static str> {
    let info = m.info().map_err(|_| "no stream sequence")?;
    let (pos, published_wall_us) = (info.stream_sequence, (info.published.unix_timestamp_nanos() / 1000).max(0) as u64);
    let headers = m.headers.as_ref().ok_or("no headers")?;
    let channels = headers.get("Herald-Channels").ok_or("no channels")?.as_str().split(',').map(str::to_owned).collect();
    let custom_id = headers.get("Herald-Id").map(|v| v.as_str().to_owned());
    Ok(Incoming { pos, channels, custom_id, partial: Bytes::copy_from_slice(&m.payload), published_wall_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_subjects_are_what_nats_accepts() {
        assert_eq!(stream_name("herald:events"), "herald_events");
        assert_eq!(stream_name("a.b c"), "a_b_c");
        assert_eq!(subject("herald_events", "orders/v1.2"), "herald_events.orders/v1%2E2");
    }
}
