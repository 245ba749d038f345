//! Redis: pub/sub (channels and patterns, at most once) and Streams read by a consumer group.
//!
//! A Streams source reads with `XREADGROUP` as consumer `consumer` (`herald-<hostname>` by
//! default) of group `group` (`herald`, made with `MKSTREAM` if it is not there), and `XACK`s an
//! entry once its event is accepted; a malformed entry is acknowledged too (it can never be an
//! event), and logged. At every connect it first reads back its own pending entries (delivered
//! before a crash or a cut, never acknowledged), then entries that stayed pending with another
//! consumer of the group longer than `claim_idle` (a node that died: `XAUTOCLAIM`), then new
//! ones. The entry id is the idempotency key, so what was accepted but not acknowledged is not
//! published twice. The nodes of a cluster are consumers of one group: each entry goes to one.

use super::backoff::supervise;
use super::intake::{Intake, MAX_BATCH, next_batch};
use super::mapping::Message;
use crate::config::sources::{DeliverFrom, SourceConfig};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_PREFETCH: u16 = 100;
/// How long one `XREADGROUP` waits for new entries.
const BLOCK: Duration = Duration::from_secs(2);
const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(60);

/// The source's Redis client: `rediss://` is TLS, with the CA, client certificate and key of
/// `[sources.tls]` (none: the system's roots). A file that cannot be read stops start-up.
pub fn client(config: &SourceConfig) -> anyhow::Result<redis::Client> {
    let key = |k: &str| format!("sources.{}.{k}", config.name);
    if !config.url.starts_with("rediss://") {
        return redis::Client::open(config.url.as_str()).map_err(|e| anyhow::anyhow!("{}: {e}", key("url")));
    }
    crate::tls::install_default_provider();
    let read = |k: &str, path: &std::path::Path| std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {}: {e}", key(k), path.display()));
    let tls = &config.tls;
    let root_cert = tls.ca_file.as_deref().map(|p| read("tls.ca_file", p)).transpose()?;
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(k)) => {
            Some(redis::ClientTlsConfig { client_cert: read("tls.cert_file", cert)?, client_key: read("tls.key_file", k)? })
        }
        (None, None) => None,
        _ => anyhow::bail!("{}: cert_file and key_file go together", key("tls")),
    };
    // The redis crate's way to take any certificate.
    let url = if tls.insecure && !config.url.contains('#') { format!("{}#insecure", config.url) } else { config.url.clone() };
    redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls, root_cert }).map_err(|e| anyhow::anyhow!("{}: {e}", key("tls")))
}

/// A connection named `herald-source-<name>` (`CLIENT SETNAME`), so that an operator reading
/// `CLIENT LIST` sees which source it is.
async fn connection(client: &redis::Client, name: &str) -> Result<MultiplexedConnection, String> {
    let options = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
    let mut conn = client.get_multiplexed_async_connection_with_config(&options).await.map_err(|e| format!("connect: {e}"))?;
    let named: redis::RedisResult<()> =
        redis::cmd("CLIENT").arg("SETNAME").arg(format!("herald-source-{name}")).query_async(&mut conn).await;
    named.map_err(|e| format!("CLIENT SETNAME: {e}"))?;
    Ok(conn)
}

fn consumer_name(config: &SourceConfig) -> String {
    config.consumer.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
        if host.is_empty() { "herald".into() } else { format!("herald-{host}") }
    })
}

/// Runs a pub/sub source (`streams` false: subscribed again after every reconnect, and what
/// was published meanwhile is gone) or a Streams source, reconnecting with backoff.
pub async fn run(config: SourceConfig, intake: Arc<Intake>, client: redis::Client, streams: bool) {
    let (config, intake, client) = (&config, &*intake, &client);
    supervise(intake, move || async move {
        if streams { read_streams(config, intake, client).await } else { pubsub(config, intake, client).await }
    })
    .await;
}

async fn pubsub(config: &SourceConfig, intake: &Intake, client: &redis::Client) -> Result<(), String> {
    let mut pubsub = client.get_async_pubsub().await.map_err(|e| format!("connect: {e}"))?;
    for channel in config.subjects.as_deref().unwrap_or_default() {
        pubsub.subscribe(channel).await.map_err(|e| format!("subscribe `{channel}`: {e}"))?;
    }
    for pattern in config.patterns.as_deref().unwrap_or_default() {
        pubsub.psubscribe(pattern).await.map_err(|e| format!("psubscribe `{pattern}`: {e}"))?;
    }
    intake.status.up();
    let mut messages = pubsub.on_message();
    while let Some(batch) = next_batch(&mut messages, MAX_BATCH).await {
        let msgs: Vec<(Message, Option<&str>)> =
            batch.iter().map(|m| (Message { subject: m.get_channel_name(), payload: m.get_payload_bytes(), event: None }, None)).collect();
        if intake.take(&msgs).await.is_none() {
            return Ok(());
        }
    }
    Err("the connection ended".into())
}

struct Reader<'a> {
    config: &'a SourceConfig,
    intake: &'a Intake,
    conn: MultiplexedConnection,
    group: String,
    consumer: String,
    count: usize,
    field: String,
}

async fn read_streams(config: &SourceConfig, intake: &Intake, client: &redis::Client) -> Result<(), String> {
    let mut reader = Reader {
        config,
        intake,
        conn: connection(client, &config.name).await?,
        group: config.group.clone().unwrap_or_else(|| "herald".into()),
        consumer: consumer_name(config),
        count: usize::from(config.prefetch.unwrap_or(DEFAULT_PREFETCH)).min(MAX_BATCH),
        field: config.field.clone().unwrap_or_else(|| "data".into()),
    };
    let keys = config.streams.clone().unwrap_or_default();
    let start = if config.deliver == Some(DeliverFrom::All) { "0" } else { "$" };
    for key in &keys {
        let made: redis::RedisResult<()> = reader.conn.xgroup_create_mkstream(key, &reader.group, start).await;
        if let Err(e) = made
            && e.code() != Some("BUSYGROUP")
        {
            return Err(format!("create group `{}` on `{key}`: {e}", reader.group));
        }
    }
    intake.status.up();
    // This consumer's own pending entries first: what it took before a crash or a cut.
    for key in &keys {
        loop {
            let entries = reader.read(key, "0").await?;
            if entries.is_empty() {
                break;
            }
            if !reader.take(key, entries).await? {
                return Ok(());
            }
        }
    }
    let claim_idle = config.claim_idle.unwrap_or(DEFAULT_CLAIM_IDLE);
    let mut next_claim = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_claim {
            for key in &keys {
                if !reader.claim(key, claim_idle).await? {
                    return Ok(());
                }
            }
            next_claim = tokio::time::Instant::now() + claim_idle.min(Duration::from_secs(10)).max(Duration::from_millis(100));
        }
        // Woken at the next claim round at the latest.
        let block = next_claim.saturating_duration_since(tokio::time::Instant::now()).min(BLOCK);
        let options = StreamReadOptions::default()
            .group(&reader.group, &reader.consumer)
            .count(reader.count)
            .block(block.as_millis().max(1) as usize);
        let ids: Vec<&str> = keys.iter().map(|_| ">").collect();
        let reply: Option<StreamReadReply> =
            reader.conn.xread_options(&keys, &ids, &options).await.map_err(|e| format!("XREADGROUP: {e}"))?;
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            if !reader.take(&stream.key, stream.ids).await? {
                return Ok(());
            }
        }
        if intake.hub.is_closing() {
            return Ok(());
        }
    }
}

impl Reader<'_> {
    /// This consumer's entries of `key` after `id` (`0`: its pending ones).
    async fn read(&mut self, key: &str, id: &str) -> Result<Vec<StreamId>, String> {
        let options = StreamReadOptions::default().group(&self.group, &self.consumer).count(self.count);
        let reply: Option<StreamReadReply> =
            self.conn.xread_options(&[key], &[id], &options).await.map_err(|e| format!("XREADGROUP: {e}"))?;
        Ok(reply.and_then(|r| r.keys.into_iter().next()).map(|k| k.ids).unwrap_or_default())
    }

    /// Entries pending longer than `idle` with consumers that went away, taken over.
    async fn claim(&mut self, key: &str, idle: Duration) -> Result<bool, String> {
        let mut cursor = "0-0".to_owned();
        loop {
            let options = StreamAutoClaimOptions::default().count(self.count);
            let reply: StreamAutoClaimReply = self
                .conn
                .xautoclaim_options(key, &self.group, &self.consumer, idle.as_millis() as usize, &cursor, options)
                .await
                .map_err(|e| format!("XAUTOCLAIM: {e}"))?;
            if !reply.claimed.is_empty() {
                tracing::info!(source = %self.intake.name(), stream = key, entries = reply.claimed.len(), "took over entries another consumer left pending");
                if !self.take(key, reply.claimed).await? {
                    return Ok(false);
                }
            }
            if reply.next_stream_id == "0-0" {
                return Ok(true);
            }
            cursor = reply.next_stream_id;
        }
    }

    /// Publishes entries and acknowledges them; `false` when the hub is shutting down.
    async fn take(&mut self, key: &str, entries: Vec<StreamId>) -> Result<bool, String> {
        let mut good = Vec::with_capacity(entries.len());
        for entry in &entries {
            match self.payload(entry) {
                Ok(payload) => good.push((format!("{key}:{}", entry.id), payload)),
                Err(why) => {
                    // Malformed: it can never be an event, and is acknowledged with the rest.
                    self.intake.status.received();
                    self.intake.status.rejected();
                    tracing::warn!(source = %self.intake.name(), stream = key, id = %entry.id, reason = %why, "message rejected");
                }
            }
        }
        let msgs: Vec<(Message, Option<&str>)> =
            good.iter().map(|(id, payload)| (Message { subject: key, payload, event: None }, Some(id.as_str()))).collect();
        if !msgs.is_empty() && self.intake.take(&msgs).await.is_none() {
            return Ok(false);
        }
        // Accepted, repeated or rejected: every entry is done with.
        let done: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        if !done.is_empty() {
            let _: i64 = self.conn.xack(key, &self.group, &done).await.map_err(|e| format!("XACK: {e}"))?;
        }
        Ok(true)
    }

    /// The entry's message: the configured field, or its only field.
    fn payload(&self, entry: &StreamId) -> Result<Vec<u8>, String> {
        let value = match entry.map.get(&self.field) {
            Some(v) => v,
            None if entry.map.len() == 1 => entry.map.values().next().expect("one field"),
            None => return Err(format!("the entry has no field `{}` (sources.{}.field)", self.field, self.config.name)),
        };
        match value {
            Value::BulkString(b) => Ok(b.clone()),
            Value::SimpleString(s) => Ok(s.clone().into_bytes()),
            other => Err(format!("field `{}` is not a string: {other:?}", self.field)),
        }
    }
}
