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

use super::{Appended, Bus, BusError, BusState, Incoming, Outgoing};
use crate::config::ClusterConfig;
use crate::hub::Hub;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamMaxlen, StreamRangeReply, StreamReadOptions, StreamReadReply};
use sha2::Digest;
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
    /// How long an idempotency key's record (`<stream>:once:<digest>`) lives.
    dedupe_window: Duration,
}

/// A keyed append, atomic in Redis: the key's record says whether the batch was appended
/// already (by any node) and where; if not, the entries are added and the record written.
/// KEYS: the stream, the key's record. ARGV: the record's lifetime in ms, the stream's MAXLEN,
/// then per entry its field count and fields.
const APPEND_ONCE: &str = r"
local seen = redis.call('GET', KEYS[2])
if seen then return {1, seen} end
local ids = {}
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {KEYS[1], 'MAXLEN', '~', ARGV[2], '*'}
  for j = 1, n do args[#args + 1] = ARGV[i + j] end
  i = i + n + 1
  ids[#ids + 1] = redis.call('XADD', unpack(args))
end
local joined = table.concat(ids, ' ')
redis.call('SET', KEYS[2], joined, 'PX', ARGV[1])
return {0, joined}
";

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
            dedupe_window: hub.config().dedupe_window,
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
        let mut conn = self.client.get_multiplexed_async_connection_with_config(&config).await?;
        name_connection(&mut conn, &self.stream).await?;
        *self.conn.lock() = Some(conn.clone());
        Ok(conn)
    }

    async fn append_all(&self, events: &[Outgoing], key: Option<&str>) -> Result<Appended, BusError> {
        let fail = |e: redis::RedisError| BusError { kind: "redis", message: e.to_string() };
        let mut conn = self.connection().await.map_err(fail)?;
        if let Some(key) = key {
            return self.append_once(&mut conn, events, key).await;
        }
        // One MULTI: the batch is on the stream whole or not at all, so a publisher told 503
        // never has part of its batch delivered.
        let mut pipe = redis::pipe();
        pipe.atomic();
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
        Ok(Appended { positions: positions(ids.iter().map(String::as_str))?, repeat: false })
    }

    async fn append_once(&self, conn: &mut MultiplexedConnection, events: &[Outgoing], key: &str) -> Result<Appended, BusError> {
        let record = format!("{}:once:{}", self.stream, hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16]));
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(APPEND_ONCE).arg(2).arg(&self.stream).arg(&record);
        cmd.arg(self.dedupe_window.as_millis() as u64).arg(self.max_len);
        for ev in events {
            let channels = ev.channels.iter().map(|c| &**c).collect::<Vec<_>>().join("\n");
            let n = if ev.custom_id.is_some() { 6 } else { 4 };
            cmd.arg(n).arg("c").arg(channels).arg("f").arg(&ev.partial[..]);
            if let Some(id) = &ev.custom_id {
                cmd.arg("i").arg(id);
            }
        }
        let (seen, ids): (i64, String) = match cmd.query_async(conn).await {
            Ok(answer) => answer,
            Err(e) => {
                *self.conn.lock() = None;
                return Err(BusError { kind: "redis", message: e.to_string() });
            }
        };
        Ok(Appended { positions: positions(ids.split(' ').filter(|s| !s.is_empty()))?, repeat: seen == 1 })
    }
}

fn positions<'a>(ids: impl Iterator<Item = &'a str>) -> Result<Vec<u64>, BusError> {
    ids.map(|id| position(id).ok_or_else(|| BusError { kind: "redis", message: format!("unexpected entry id `{id}`") })).collect()
}

impl Bus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn append<'a>(&'a self, events: &'a [Outgoing], key: Option<&'a str>) -> BoxFuture<'a, Result<Appended, BusError>> {
        Box::pin(self.append_all(events, key))
    }

    fn state(&self) -> &BusState {
        &self.state
    }
}

/// Names a connection `herald:<stream>` (`CLIENT SETNAME`), so that an operator reading
/// `CLIENT LIST` sees which Herald cluster each connection belongs to. Names may not contain
/// spaces; any in the stream's name become `_`.
async fn name_connection(conn: &mut MultiplexedConnection, stream: &str) -> redis::RedisResult<()> {
    let name = format!("herald:{}", stream.replace([' ', '\n'], "_"));
    redis::cmd("CLIENT").arg("SETNAME").arg(name).query_async(conn).await
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
        // How many entries the stream had ever taken up to `last` (Redis 7's `entries-added`),
        // when known: an entry that leaves before this node read it shows as a jump in it.
        let mut counted: Option<u64> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.hub.upgrade().is_none_or(|hub| hub.is_closing()) {
                return;
            }
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
            let result = match self.client.get_multiplexed_async_connection_with_config(&config).await {
                Ok(mut conn) => match name_connection(&mut conn, &self.stream).await {
                    Ok(()) => self.read(&mut conn, &mut last, &mut counted, &mut loaded, &mut backoff).await,
                    Err(e) => Err(e),
                },
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
    ///
    /// Every read is one `MULTI` of `XREAD` (not blocking) and `XINFO STREAM`, so that what was
    /// read and where the stream stands are one moment: a node that fell behind by more than the
    /// stream keeps while its connection stayed up (a pause, a stopped process) sees the entries
    /// it never read as a jump in `entries-added`, not as nothing. Only when there is nothing to
    /// read does it wait, with a blocking `XREAD` whose answer only wakes it.
    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        last: &mut Option<String>,
        counted: &mut Option<u64>,
        loaded: &mut Option<oneshot::Sender<()>>,
        backoff: &mut Duration,
    ) -> redis::RedisResult<()> {
        if last.is_none() {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .ignore_errors()
                .xrevrange_count(&self.stream, "+", "-", self.max_len)
                .cmd("XINFO")
                .arg("STREAM")
                .arg(&self.stream);
            let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
            let reply: StreamRangeReply = redis::from_redis_value_ref(&replies[0])?;
            let place = place_of(&replies[1]);
            let mut entries = reply.ids;
            entries.reverse();
            let Some(hub) = self.hub.upgrade() else { return Ok(()) };
            match (entries.first().and_then(|e| position(&e.id)), place.as_ref().and_then(|p| p.last_generated)) {
                // Whatever came before the oldest retained entry is out of reach.
                (Some(first), _) => hub.begin_history_at(first - 1),
                // Everything the stream ever took has left it.
                (None, Some(generated)) if generated > 0 => hub.begin_history_at(generated),
                _ => {}
            }
            *counted = place.as_ref().and_then(|p| p.added);
            let generated = place.and_then(|p| p.last_generated).filter(|&g| g > 0);
            *last = Some(match (entries.last(), generated) {
                (Some(e), _) => e.id.clone(),
                (None, Some(g)) => entry_id(g),
                (None, None) => "0-0".to_owned(),
            });
            apply(&hub, entries);
            if let Some(tx) = loaded.take() {
                let _ = tx.send(());
            }
        }
        let mut up = false;
        loop {
            let from = last.clone().expect("set above");
            let mut pipe = redis::pipe();
            pipe.atomic()
                .ignore_errors()
                .xread_options(&[&self.stream], &[&from], &StreamReadOptions::default().count(READ_COUNT))
                .cmd("XINFO")
                .arg("STREAM")
                .arg(&self.stream);
            let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
            if let redis::Value::ServerError(e) = &replies[0] {
                return Err(redis::RedisError::from(e.clone()));
            }
            if !std::mem::replace(&mut up, true) {
                self.state.up();
                *backoff = Duration::from_millis(100);
            }
            let reply: Option<StreamReadReply> = redis::from_redis_value_ref(&replies[0])?;
            let entries: Vec<StreamId> = reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default();
            let place = place_of(&replies[1]);
            let Some(hub) = self.hub.upgrade() else { return Ok(()) };
            if hub.is_closing() {
                return Ok(());
            }
            let from_pos = position(&from).unwrap_or(0);
            let look = match &place {
                Some(place) => check(*counted, entries.first().and_then(|e| position(&e.id)), entries.len(), place),
                // No such key: the stream was deleted (or Redis restarted without persistence)
                // with entries this node may not have read. New entries get ids from Redis's
                // clock, so history starts just before now. Said once: then nothing is counted.
                None if from_pos > 0 && *counted != Some(0) => {
                    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
                    let ms = secs * 1000 + micros / 1000;
                    Look { floor: Some((ms << SEQ_BITS).saturating_sub(1).max(from_pos)), counted: Some(0) }
                }
                None => Look { floor: None, counted: *counted },
            };
            if let Some(floor) = look.floor {
                tracing::warn!(
                    stream = %self.stream,
                    last_read = %from,
                    "cluster bus: entries left the stream before this node read them; \
                     live streams end so that their clients resume and are told what they missed"
                );
                hub.begin_history_at(floor.max(from_pos));
            }
            *counted = look.counted;
            let read = entries.len();
            if let Some(newest) = entries.last() {
                *last = Some(newest.id.clone());
            }
            apply(&hub, entries);
            if read == 0 {
                // Nothing new: wait for something, then look again.
                let options = StreamReadOptions::default().block(BLOCK.as_millis() as usize).count(1);
                let _: Option<StreamReadReply> = conn.xread_options(&[&self.stream], &[&from], &options).await?;
            }
        }
    }
}

/// Where a stream stands, from `XINFO STREAM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    /// Entries it ever took (Redis 7 and later).
    added: Option<u64>,
    length: u64,
    first: Option<u64>,
    last_generated: Option<u64>,
}

/// What one look found: where history now starts, if entries were lost, and the count of
/// entries ever taken up to the last one read.
#[derive(Debug, PartialEq, Eq)]
struct Look {
    floor: Option<u64>,
    counted: Option<u64>,
}

/// Compares a read (`read` entries from `first_read` on) with where the stream stood at the same
/// moment. `counted` entries had been taken up to the last entry read before. The stream trims
/// its oldest entries first, so if the first entry read is the stream's first, the entries
/// before it number `added - length`; more than `counted` means some left unread.
fn check(counted: Option<u64>, first_read: Option<u64>, read: usize, place: &Place) -> Look {
    let Some(added) = place.added else { return Look { floor: None, counted: None } };
    let front = added.saturating_sub(place.length);
    let starts_at_front = first_read.is_some() && first_read == place.first;
    let lost = counted.is_some_and(|c| {
        // Fewer taken than read: the stream was made again.
        added < c || (starts_at_front && front > c) || (read == 0 && place.length == 0 && added > c)
    });
    let floor = lost.then(|| match first_read {
        Some(first) => first - 1,
        None => place.last_generated.unwrap_or(0),
    });
    let counted = if read < READ_COUNT {
        // The read reached the end of the stream.
        Some(added)
    } else if starts_at_front {
        Some(front + read as u64)
    } else {
        counted.map(|c| c + read as u64)
    };
    Look { floor, counted }
}

/// The `XINFO STREAM` reply as a [`Place`]; `None` when there is no such stream.
fn place_of(info: &redis::Value) -> Option<Place> {
    if let redis::Value::ServerError(_) = info {
        return None;
    }
    let field = |name: &str| info_field(info, name);
    let number = |name: &str| match field(name) {
        Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    let id_of = |v: &redis::Value| match v {
        redis::Value::Array(entry) => entry.first().and_then(value_str).and_then(|id| position(&id)),
        other => value_str(other).and_then(|id| position(&id)),
    };
    Some(Place {
        added: number("entries-added"),
        length: number("length").unwrap_or(0),
        first: field("first-entry").and_then(id_of),
        last_generated: field("last-generated-id").and_then(id_of),
    })
}

/// A position as an entry id.
fn entry_id(pos: u64) -> String {
    format!("{}-{}", pos >> SEQ_BITS, pos & ((1 << SEQ_BITS) - 1))
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
    use super::*;

    #[test]
    fn a_read_that_starts_past_unread_entries_is_a_loss() {
        let place = |added, length, first| Place { added: Some(added), length, first: Some(first), last_generated: Some(first + length) };
        // 10 taken up to what was read; the stream holds 6..15 and the read goes on at 11,
        // past its front: nothing lost.
        assert_eq!(check(Some(10), Some(11), 4, &place(15, 10, 6)), Look { floor: None, counted: Some(15) });
        // Stopped at 10 while 200 more came and all but 10 left: reading from the front (191)
        // with 190 entries before it, only 10 of them read.
        assert_eq!(check(Some(10), Some(191), 10, &place(200, 10, 191)), Look { floor: Some(190), counted: Some(200) });
        // Not from the front: the stream still held the entry after ours, nothing left unread.
        assert_eq!(check(Some(10), Some(11), 3, &place(13, 10, 4)).floor, None);
        // Made again from scratch: fewer taken than this node had read.
        assert_eq!(check(Some(50), Some(1), 1, &place(1, 1, 1)).floor, Some(0));
        // Emptied: everything after what was read left.
        let empty = Place { added: Some(30), length: 0, first: None, last_generated: Some(777) };
        assert_eq!(check(Some(10), None, 0, &empty), Look { floor: Some(777), counted: Some(30) });
        // Redis before 7 says nothing of what it took.
        assert_eq!(check(Some(1), Some(5), 1, &Place { added: None, ..empty }), Look { floor: None, counted: None });
        // A full batch: counted from where it started.
        assert_eq!(check(Some(10), Some(11), READ_COUNT, &place(5000, 4000, 1001)).counted, Some(10 + READ_COUNT as u64));
    }

    #[test]
    fn entry_ids_map_to_increasing_positions() {
        assert_eq!(position("0-1"), Some(1));
        assert!(position("1700000000000-0").unwrap() < position("1700000000000-1").unwrap());
        assert!(position("1700000000000-999999").unwrap() < position("1700000000001-0").unwrap());
        assert_eq!(position("1700000000000-1048576"), None, "a sequence past 20 bits");
        assert_eq!(position("garbage"), None);
        assert_eq!(position("1-x"), None);
        assert_eq!(position(&entry_id(position("1700000000000-7").unwrap())), position("1700000000000-7"));
    }
}
