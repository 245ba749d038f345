//! NATS: core subscriptions (subjects with `*` and `>`, optionally in a queue group) and
//! JetStream durable pull consumers.
//!
//! Core NATS is at most once: what is published while Herald is away or disconnected is not
//! kept by the server, so it never arrives. JetStream keeps it: the consumer (`herald-<name>`,
//! durable, explicit acknowledgements, at most `prefetch` unacknowledged) resumes where it was
//! after a restart or a reconnect, each message is acknowledged once its event is accepted, a
//! malformed one is terminated (`+TERM`: never redelivered), and the stream sequence is its
//! idempotency key. The nodes of a cluster share the durable consumer (each message goes to one
//! of them); with core NATS they share the queue group.

use super::backoff::supervise;
use super::intake::{Intake, MAX_BATCH, Outcome, next_batch};
use super::mapping::Message;
use crate::config::sources::{DeliverFrom, SourceConfig, SourceKind};
use async_nats::jetstream::{self, AckKind, consumer};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_PREFETCH: u16 = 100;

/// Connects (in the background, retrying for ever) with the source's TLS and reports the
/// connection's state to the source's status.
async fn connect(config: &SourceConfig, intake: &Arc<Intake>, tls: Option<rustls::ClientConfig>) -> Result<async_nats::Client, String> {
    let status = intake.status.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("herald-{}", config.name))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let status = status.clone();
            async move {
                match event {
                    async_nats::Event::Connected => status.up(),
                    async_nats::Event::Disconnected => status.down("disconnected from the NATS server".into()),
                    async_nats::Event::ServerError(e) => tracing::warn!(source = %status.name, error = %e, "NATS server error"),
                    async_nats::Event::ClientError(e) => status.down(e.to_string()),
                    _ => {}
                }
            }
        });
    if let Some(tls) = tls {
        options = options.tls_client_config(tls).require_tls(true);
    }
    options.connect(config.url.as_str()).await.map_err(|e| e.to_string())
}

pub async fn run(config: SourceConfig, intake: Arc<Intake>, tls: Option<rustls::ClientConfig>) {
    let client = match connect(&config, &intake, tls).await {
        Ok(client) => client,
        Err(e) => {
            // Only an invalid address fails here (a server that is down is retried inside).
            intake.status.down(e);
            return;
        }
    };
    let result = match config.kind {
        SourceKind::Jetstream => jetstream(&config, &intake, client.clone()).await,
        _ => core(&config, &intake, &client).await,
    };
    if let Err(e) = result {
        intake.status.down(e);
    }
}

/// Core subscriptions: re-made by the client after a reconnect.
async fn core(config: &SourceConfig, intake: &Intake, client: &async_nats::Client) -> Result<(), String> {
    let mut subscribers = Vec::new();
    for subject in config.subjects.as_deref().unwrap_or_default() {
        let sub = match &config.queue_group {
            Some(group) => client.queue_subscribe(subject.clone(), group.clone()).await,
            None => client.subscribe(subject.clone()).await,
        };
        subscribers.push(sub.map_err(|e| format!("subscribe to `{subject}`: {e}"))?);
    }
    if client.connection_state() == async_nats::connection::State::Connected {
        intake.status.up();
    }
    let mut all = futures_util::stream::select_all(subscribers);
    while let Some(batch) = next_batch(&mut all, MAX_BATCH).await {
        let msgs: Vec<(Message, Option<&str>)> = batch
            .iter()
            .map(|m| {
                let id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str());
                (Message { subject: m.subject.as_str(), payload: &m.payload, event: None }, id)
            })
            .collect();
        if intake.take(&msgs).await.is_none() {
            return Ok(());
        }
    }
    Err("the subscriptions ended".into())
}

fn consumer_config(config: &SourceConfig) -> Result<consumer::pull::Config, String> {
    let deliver_policy = match config.deliver.unwrap_or_default() {
        DeliverFrom::New => consumer::DeliverPolicy::New,
        DeliverFrom::All => consumer::DeliverPolicy::All,
        DeliverFrom::Sequence => consumer::DeliverPolicy::ByStartSequence { start_sequence: config.start_sequence.unwrap_or(1) },
        DeliverFrom::Time => {
            let t = config.start_time.as_deref().unwrap_or_default();
            let start_time = async_nats::datetime::parse_rfc3339(t).map_err(|e| format!("start_time `{t}`: {e}"))?;
            consumer::DeliverPolicy::ByStartTime { start_time }
        }
    };
    Ok(consumer::pull::Config {
        durable_name: Some(consumer_name(config)),
        deliver_policy,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait.unwrap_or(Duration::from_secs(30)),
        max_ack_pending: i64::from(config.prefetch.unwrap_or(DEFAULT_PREFETCH)),
        filter_subjects: config.subjects.clone().unwrap_or_default(),
        ..Default::default()
    })
}

fn consumer_name(config: &SourceConfig) -> String {
    config.consumer.clone().unwrap_or_else(|| format!("herald-{}", config.name))
}

/// The durable consumer, made if it is not there, read until the hub shuts down; what fails
/// (the stream is missing, the server went away) is retried with backoff.
async fn jetstream(config: &SourceConfig, intake: &Intake, client: async_nats::Client) -> Result<(), String> {
    let js = jetstream::new(client);
    let stream_name = config.stream.clone().unwrap_or_default();
    let consumer_config = consumer_config(config)?;
    let (js, stream_name, consumer_config) = (&js, stream_name.as_str(), &consumer_config);
    supervise(intake, move || consume(js, stream_name, consumer_config, intake)).await;
    Ok(())
}

async fn consume(
    js: &jetstream::Context,
    stream_name: &str,
    consumer_config: &consumer::pull::Config,
    intake: &Intake,
) -> Result<(), String> {
    let stream = js.get_stream(stream_name).await.map_err(|e| format!("stream `{stream_name}`: {e}"))?;
    let name = consumer_config.durable_name.clone().unwrap_or_default();
    let consumer: consumer::PullConsumer =
        stream.get_or_create_consumer(&name, consumer_config.clone()).await.map_err(|e| format!("consumer `{name}`: {e}"))?;
    let mut messages = consumer.messages().await.map_err(|e| format!("consume `{name}`: {e}"))?;
    intake.status.up();
    let max = usize::try_from(consumer_config.max_ack_pending).unwrap_or(1).clamp(1, MAX_BATCH);
    while let Some(batch) = next_batch(&mut messages, max).await {
        let batch = batch.into_iter().collect::<Result<Vec<_>, _>>().map_err(|e| format!("receive: {e}"))?;
        // The stream's sequence identifies a message across redeliveries and consumers.
        let ids = batch
            .iter()
            .map(|m| {
                Ok(format!("{stream_name}:{}", m.info().map_err(|e| format!("a message without JetStream metadata: {e}"))?.stream_sequence))
            })
            .collect::<Result<Vec<String>, String>>()?;
        let msgs: Vec<(Message, Option<&str>)> = batch
            .iter()
            .zip(&ids)
            .map(|(m, id)| (Message { subject: m.subject.as_str(), payload: &m.payload, event: None }, Some(id.as_str())))
            .collect();
        // Left unacknowledged: redelivered after ack_wait.
        let Some(outcomes) = intake.take(&msgs).await else { return Ok(()) };
        for (msg, outcome) in batch.iter().zip(outcomes) {
            match outcome {
                Outcome::Accepted | Outcome::Duplicate => msg.ack().await,
                Outcome::Rejected(_) => msg.ack_with(AckKind::Term).await,
            }
            .map_err(|e| format!("acknowledge: {e}"))?;
        }
    }
    Err("the consumer's messages ended".into())
}
