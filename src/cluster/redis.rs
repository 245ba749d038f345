//! The Redis bus: one Redis Stream that every node appends to and reads.
//!
//! One stream for all channels rather than one per channel: the nodes then share a single
//! order of events (the order of the stream), which is what lets a subscription to several
//! channels resume from one `Last-Event-ID` on any node; each node reads one key with one
//! blocking `XREAD`, whatever the number of channels; and the replay window is one cap
//! (`MAXLEN ~ cluster.max_len`). Each entry holds the event's channels (`c`, one per line),
//! the publisher's id if any (`i`), and the encoded block without its id line (`f`).
//!
//! Positions are the entry ids: `<ms>-<seq>` becomes `ms << 20 | seq`, the same number on every
//! node, written as the decimal event id.

use super::{Bus, BusError, BusState, Incoming, Outgoing};
use crate::config::ClusterConfig;
use crate::hub::Hub;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamMaxlen, StreamRangeReply, StreamReadOptions, StreamReadReply};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long one `XREAD` waits for new entries.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries taken per read.
const READ_COUNT: usize = 1000;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bits of the entry id's sequence part in a position.
const SEQ_BITS: u32 = 20;

pub struct RedisBus {
    client: redis::Client,
    stream: String,
    max_len: usize,
    /// The connection publishes go through, made on first use and dropped on error.
    conn: Mutex<Option<MultiplexedConnection>>,
    state: Arc<BusState>,
}

impl RedisBus {
    /// Starts the reader; the receiver resolves once the retained entries are loaded.
    pub fn start(hub: &Arc<Hub>, config: &ClusterConfig) -> anyhow::Result<(Arc<RedisBus>, oneshot::Receiver<()>)> {
        let client = redis::Client::open(config.bus.as_str()).map_err(|e| anyhow::anyhow!("cluster.bus: {e}"))?;
        let state = Arc::new(BusState::default());
        let bus = Arc::new(RedisBus {
            client: client.clone(),
            stream: config.stream.clone(),
            max_len: config.max_len,
            conn: Mutex::new(None),
            state: state.clone(),
        });
        let (loaded, on_loaded) = oneshot::channel();
        let reader = Reader { hub: Arc::downgrade(hub), client, stream: config.stream.clone(), max_len: config.max_len, state };
        tokio::spawn(reader.run(loaded));
        Ok((bus, on_loaded))
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.conn.lock().clone() {
            return Ok(conn);
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let conn = self.client.get_multiplexed_async_connection_with_config(&config).await?;
        *self.conn.lock() = Some(conn.clone());
        Ok(conn)
    }

    async fn append_all(&self, events: &[Outgoing]) -> Result<Vec<u64>, BusError> {
        let fail = |e: redis::RedisError| BusError { kind: "redis", message: e.to_string() };
        let mut conn = self.connection().await.map_err(fail)?;
        let mut pipe = redis::pipe();
        for ev in events {
            let channels = ev.channels.iter().map(|c| &**c).collect::<Vec<_>>().join("\n");
            let mut fields: Vec<(&str, &[u8])> = vec![("c", channels.as_bytes()), ("f", &ev.partial)];
            if let Some(id) = &ev.custom_id {
                fields.push(("i", id.as_bytes()));
            }
            pipe.xadd_maxlen(&self.stream, StreamMaxlen::Approx(self.max_len), "*", &fields);
        }
        let ids: Vec<String> = match pipe.query_async(&mut conn).await {
            Ok(ids) => ids,
            Err(e) => {
                // The next publish reconnects.
                *self.conn.lock() = None;
                return Err(fail(e));
            }
        };
        ids.iter()
            .map(|id| position(id).ok_or_else(|| BusError { kind: "redis", message: format!("unexpected entry id `{id}`") }))
            .collect()
    }
}

impl Bus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn append<'a>(&'a self, events: &'a [Outgoing]) -> BoxFuture<'a, Result<Vec<u64>, BusError>> {
        Box::pin(self.append_all(events))
    }

    fn state(&self) -> &BusState {
        &self.state
    }
}

/// `<ms>-<seq>` as a position.
pub fn position(entry_id: &str) -> Option<u64> {
    let (ms, seq) = entry_id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    (seq < 1 << SEQ_BITS && ms < 1 << (64 - SEQ_BITS)).then_some(ms << SEQ_BITS | seq)
}

/// Reads the stream into the hub, reconnecting with backoff and resuming after the last entry
/// it applied, so that nothing is skipped or applied twice.
struct Reader {
    hub: Weak<Hub>,
    client: redis::Client,
    stream: String,
    max_len: usize,
    state: Arc<BusState>,
}

impl Reader {
    async fn run(self, loaded: oneshot::Sender<()>) {
        let mut loaded = Some(loaded);
        // The last entry applied; `None` until the retained entries are loaded.
        let mut last: Option<String> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.hub.upgrade().is_none_or(|hub| hub.is_closing()) {
                return;
            }
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
            let result = match self.client.get_multiplexed_async_connection_with_config(&config).await {
                Ok(mut conn) => self.read(&mut conn, &mut last, &mut loaded, &mut backoff).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return,
                Err(e) => {
                    self.state.down(e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Loads what the stream retains (once), then follows it. `Ok` when the hub is gone.
    /// The bus counts as up, and the backoff starts over, only once a command has succeeded:
    /// a Redis that takes connections but refuses the commands is still down.
    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        last: &mut Option<String>,
        loaded: &mut Option<oneshot::Sender<()>>,
        backoff: &mut Duration,
    ) -> redis::RedisResult<()> {
        match last {
            None => {
                let reply: StreamRangeReply = conn.xrevrange_count(&self.stream, "+", "-", self.max_len).await?;
                let mut entries = reply.ids;
                entries.reverse();
                let Some(hub) = self.hub.upgrade() else { return Ok(()) };
                if let Some(first) = entries.first().and_then(|e| position(&e.id)) {
                    // Whatever came before the oldest retained entry is out of reach.
                    hub.begin_history_at(first - 1);
                }
                *last = Some(entries.last().map_or_else(|| "0-0".to_owned(), |e| e.id.clone()));
                apply(&hub, entries);
                if let Some(tx) = loaded.take() {
                    let _ = tx.send(());
                }
            }
            Some(after) => {
                // Back after an outage: entries trimmed before this node read them are gone.
                if let Some(floor) = self.trimmed_after(conn, after).await? {
                    let Some(hub) = self.hub.upgrade() else { return Ok(()) };
                    tracing::warn!(
                        stream = %self.stream,
                        last_read = %after,
                        "cluster bus: entries were trimmed from the stream before this node read them; \
                         live streams end so that their clients resume and are told what they missed"
                    );
                    hub.begin_history_at(floor);
                }
            }
        }
        self.state.up();
        *backoff = Duration::from_millis(100);
        loop {
            let from = last.clone().expect("set above");
            let options = StreamReadOptions::default().block(BLOCK.as_millis() as usize).count(READ_COUNT);
            let reply: Option<StreamReadReply> = conn.xread_options(&[&self.stream], &[&from], &options).await?;
            let Some(hub) = self.hub.upgrade() else { return Ok(()) };
            if hub.is_closing() {
                return Ok(());
            }
            let entries: Vec<StreamId> = reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default();
            if let Some(newest) = entries.last() {
                *last = Some(newest.id.clone());
            }
            apply(&hub, entries);
        }
    }

    /// Whether entries after `last` may have been removed before this node read them, and if
    /// so the position history now starts after: the stream no longer holds `last`, or the
    /// stream itself is gone.
    async fn trimmed_after(&self, conn: &mut MultiplexedConnection, last: &str) -> redis::RedisResult<Option<u64>> {
        let last_pos = position(last).unwrap_or(0);
        let info: redis::Value = match redis::cmd("XINFO").arg("STREAM").arg(&self.stream).query_async(conn).await {
            Ok(info) => info,
            Err(e) if is_no_such_key(&e) && last_pos > 0 => {
                // No such key: the stream was deleted (or Redis restarted without persistence)
                // with entries this node may not have read. New entries get ids from Redis's
                // clock, so history starts just before now.
                tracing::warn!(stream = %self.stream, error = %e, "cluster bus: the stream is gone");
                let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
                let ms = secs * 1000 + micros / 1000;
                return Ok(Some((ms << SEQ_BITS).saturating_sub(1).max(last_pos)));
            }
            Err(e) if is_no_such_key(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let field = |name: &str| info_field(&info, name);
        let id_of = |v: &redis::Value| match v {
            redis::Value::Array(entry) => entry.first().and_then(value_str).and_then(|id| position(&id)),
            other => value_str(other).and_then(|id| position(&id)),
        };
        let number = |name: &str| match field(name) {
            Some(redis::Value::Int(n)) => Some(*n),
            _ => None,
        };
        if let (Some(added), Some(length)) = (number("entries-added"), number("length"))
            && added == length
        {
            // Nothing was ever removed (Redis 7 counts what was added).
            return Ok(None);
        }
        // Trimming removes the oldest entries first: if the last entry read is still there,
        // nothing after it was removed. If it is gone, entries after it may be too (Redis does
        // not say how many were trimmed), so history is taken to start at the oldest entry kept.
        match field("first-entry") {
            Some(first @ redis::Value::Array(_)) => Ok(id_of(first).filter(|&f| f > last_pos).map(|f| f - 1)),
            // Empty: everything was removed; new entries come after the last id generated.
            _ => Ok(field("last-generated-id").and_then(id_of).filter(|&g| g > last_pos)),
        }
    }
}

fn is_no_such_key(e: &redis::RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::Server(_)) && e.to_string().contains("no such key")
}

/// A field of an `XINFO STREAM` reply (a map in RESP3, name/value pairs in RESP2).
fn info_field<'a>(info: &'a redis::Value, name: &str) -> Option<&'a redis::Value> {
    match info {
        redis::Value::Map(pairs) => pairs.iter().find(|(k, _)| value_str(k).as_deref() == Some(name)).map(|(_, v)| v),
        redis::Value::Array(items) => items.chunks_exact(2).find(|kv| value_str(&kv[0]).as_deref() == Some(name)).map(|kv| &kv[1]),
        _ => None,
    }
}

fn value_str(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Hands stream entries to the hub, skipping (and logging) any that cannot be read.
fn apply(hub: &Hub, entries: Vec<StreamId>) {
    let incoming: Vec<Incoming> = entries
        .into_iter()
        .filter_map(|e| decode(&e).map_err(|why| tracing::warn!(entry = %e.id, why, "skipping a stream entry")).ok())
        .collect();
    if !incoming.is_empty() {
        hub.apply_from_bus(incoming);
    }
}

fn decode(entry: &StreamId) -> Result<Incoming, &'static str> {
    let pos = position(&entry.id).ok_or("entry id out of range")?;
    let field = |name: &str| -> Result<Option<Vec<u8>>, &'static str> {
        entry.map.get(name).map(|v| redis::from_redis_value_ref::<Vec<u8>>(v).map_err(|_| "field is not a string")).transpose()
    };
    let channels = String::from_utf8(field("c")?.ok_or("no channels")?).map_err(|_| "channels are not UTF-8")?;
    let custom_id = field("i")?.map(String::from_utf8).transpose().map_err(|_| "id is not UTF-8")?;
    let partial = Bytes::from(field("f")?.ok_or("no frame")?);
    // The entry id's first part is Redis's clock, in ms, when it took the entry.
    let published_wall_us = (pos >> SEQ_BITS) * 1000;
    Ok(Incoming { pos, channels: channels.split('\n').map(str::to_owned).collect(), custom_id, partial, published_wall_us })
}

#[cfg(test)]
mod tests {
    use super::position;

    #[test]
    fn entry_ids_map_to_increasing_positions() {
        assert_eq!(position("0-1"), Some(1));
        assert!(position("1700000000000-0").unwrap() < position("1700000000000-1").unwrap());
        assert!(position("1700000000000-999999").unwrap() < position("1700000000001-0").unwrap());
        assert_eq!(position("1700000000000-1048576"), None, "a sequence past 20 bits");
        assert_eq!(position("garbage"), None);
        assert_eq!(position("1-x"), None);
    }
}
