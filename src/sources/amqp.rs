//! RabbitMQ (AMQP 0.9.1): a queue bound to an exchange, consumed with manual acknowledgements.
//!
//! The queue (`herald.<name>` by default, durable) is declared and bound at every connect, so a
//! broker that lost it gets it back. Each message is acknowledged once the hub has accepted its
//! event (after the store's fsync, as configured), rejected without requeue when it can never
//! be an event (to the queue's dead-letter exchange when one is configured), and left
//! unacknowledged while the hub cannot take it: with `prefetch` messages outstanding, the
//! broker stops delivering, which is the backpressure. The nodes of a cluster share the named
//! queue: RabbitMQ hands each message to one of them (competing consumers).

use super::backoff::supervise;
use super::intake::{Intake, MAX_BATCH, Outcome, next_batch};
use super::mapping::Message;
use crate::config::sources::{ExchangeKind, QueueKind, SourceConfig};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use std::sync::Arc;

/// An AMQP error, saying what was being done.
fn fail(what: &str) -> impl Fn(lapin::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

const DEFAULT_PREFETCH: u16 = 100;
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The source's TLS, built once at start-up from `[sources.tls]` as every source's is (the CA,
/// a client certificate and key, `insecure`); none for `amqp://`. An unreadable file stops
/// start-up, naming its key.
pub fn tls_of(config: &SourceConfig) -> anyhow::Result<Option<Arc<RustlsConnector>>> {
    if !config.url.starts_with("amqps://") {
        return Ok(None);
    }
    let section = format!("sources.{}.tls", config.name);
    let tls = config.tls.client_config(&section, &crate::tls::KeyNames::PLAIN)?;
    Ok(Some(Arc::new(RustlsConnector::from(tls))))
}

pub async fn run(config: SourceConfig, intake: Arc<Intake>, tls: Option<Arc<RustlsConnector>>) {
    let (config, intake, tls) = (&config, &*intake, &tls);
    supervise(intake, move || session(config, intake, tls.clone())).await;
}

/// Connects over TCP, and for `amqps://` over TLS with the source's own rustls configuration
/// (lapin's `connector` is its way in for a transport made by its caller).
async fn connect(config: &SourceConfig, tls: Option<Arc<RustlsConnector>>) -> Result<Connection, String> {
    let uri: AMQPUri = config.url.parse().map_err(|e| format!("url: {e}"))?;
    let runtime = lapin::runtime::default_runtime().map_err(fail("runtime"))?;
    let properties = ConnectionProperties::default().with_connection_name(format!("herald source {}", config.name).into());
    // lapin's parser takes only a domain name as the host (an IP address becomes `localhost`),
    // so the host comes from the URL itself.
    let host = url::Url::parse(&config.url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned()))
        .filter(|h| !h.is_empty())
        .ok_or("url: no host")?;
    let transport = async move |uri: AMQPUri, runtime| {
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), uri.authority.port)).await?.collect();
        let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
        Ok(match (&uri.scheme, &tls) {
            (AMQPScheme::AMQPS, Some(tls)) => stream.into_rustls(tls, &host).await?,
            _ => stream,
        })
    };
    let connecting = Connection::connector(uri, runtime, transport, properties);
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| format!("connect: no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(fail("connect"))
}

/// The queue's name.
pub fn queue_name(config: &SourceConfig) -> String {
    config.queue.clone().unwrap_or_else(|| format!("herald.{}", config.name))
}

/// One connection, closed when it is done with. `Ok` only when the hub shuts down.
async fn session(config: &SourceConfig, intake: &Intake, tls: Option<Arc<RustlsConnector>>) -> Result<(), String> {
    let conn = connect(config, tls).await?;
    let result = consume(config, intake, &conn).await;
    let _ = conn.close(200, "herald: done".into()).await;
    result
}

/// Declare, bind, consume until it fails.
async fn consume(config: &SourceConfig, intake: &Intake, conn: &Connection) -> Result<(), String> {
    let channel = conn.create_channel().await.map_err(fail("open a channel"))?;
    channel.basic_qos(config.prefetch.unwrap_or(DEFAULT_PREFETCH), BasicQosOptions::default()).await.map_err(fail("set the prefetch"))?;
    let exchange = config.exchange.clone().unwrap_or_else(|| "amq.fanout".into());
    let kind = config.exchange_type().expect("validated");
    if !exchange.starts_with("amq.") {
        let kind = match kind {
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Headers => lapin::ExchangeKind::Headers,
        };
        let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        channel
            .exchange_declare(exchange.as_str().into(), kind, options, FieldTable::default())
            .await
            .map_err(fail(&format!("declare exchange `{exchange}`")))?;
    }
    let queue = queue_name(config);
    let mut arguments = FieldTable::default();
    if config.queue_type == Some(QueueKind::Quorum) {
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    }
    if let Some(dlx) = &config.dead_letter_exchange {
        arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dlx.as_str().into()));
    }
    let options = QueueDeclareOptions {
        durable: config.durable.unwrap_or(true),
        exclusive: config.exclusive.unwrap_or(false),
        auto_delete: config.auto_delete.unwrap_or(false),
        ..QueueDeclareOptions::default()
    };
    channel.queue_declare(queue.as_str().into(), options, arguments).await.map_err(fail(&format!("declare queue `{queue}`")))?;
    let keys = match (&config.binding_keys, kind) {
        (Some(keys), _) => keys.clone(),
        (None, ExchangeKind::Topic) => vec!["#".into()],
        (None, _) => vec![String::new()],
    };
    for key in &keys {
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(fail(&format!("bind queue `{queue}` to `{exchange}` with `{key}`")))?;
    }
    let tag = format!("herald-{}-{}", config.name, std::process::id());
    let mut consumer = channel
        .basic_consume(queue.as_str().into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(fail(&format!("consume `{queue}`")))?;
    intake.status.up();
    let max = usize::from(config.prefetch.unwrap_or(DEFAULT_PREFETCH)).min(MAX_BATCH);
    while let Some(batch) = next_batch(&mut consumer, max).await {
        let deliveries = batch.into_iter().collect::<Result<Vec<_>, _>>().map_err(fail("receive"))?;
        let ids: Vec<Option<&str>> = deliveries.iter().map(|d| d.properties.message_id().as_ref().map(|s| s.as_str())).collect();
        let msgs: Vec<(Message, Option<&str>)> = deliveries
            .iter()
            .zip(&ids)
            .map(|(d, id)| (Message { subject: d.routing_key.as_str(), payload: &d.data, event: None }, *id))
            .collect();
        // Shutting down: left unacknowledged, so the broker gives them to another consumer.
        let Some(outcomes) = intake.take(&msgs).await else { return Ok(()) };
        // The events are published; if an acknowledgement is lost with the connection, the
        // redelivery is caught by its id. All taken: one acknowledgement for the lot.
        let last = deliveries.last().expect("a batch is never empty");
        if !outcomes.iter().any(|o| matches!(o, Outcome::Rejected(_))) {
            last.acker.ack(BasicAckOptions { multiple: true }).await.map_err(fail("acknowledge"))?;
            continue;
        }
        for (delivery, outcome) in deliveries.iter().zip(outcomes) {
            match outcome {
                Outcome::Accepted | Outcome::Duplicate => delivery.acker.ack(BasicAckOptions::default()).await,
                Outcome::Rejected(_) => delivery.acker.reject(BasicRejectOptions { requeue: false }).await,
            }
            .map_err(fail("acknowledge"))?;
        }
    }
    Err("the broker ended the consumer".into())
}
