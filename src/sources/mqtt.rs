//! MQTT 3.1.1 and 5: topic filters subscribed with QoS 1 in a persistent session, each message
//! acknowledged (PUBACK) once its event is accepted.
//!
//! The session (named by the client id, `herald-<name>` by default) outlives Herald: what is
//! published while Herald is away or disconnected is kept by the broker and delivered when it
//! comes back, and a message Herald had not acknowledged is sent again, marked DUP. MQTT gives
//! messages no id of their own, only a packet id that the broker uses again once a message is
//! acknowledged; so a message is known by its packet id and contents, and only a DUP delivery
//! can be a repeat (see [`Redelivery::Packet`]). The broker sends at most `prefetch` messages
//! (MQTT 5's receive maximum; the broker's own in-flight limit with 3.1.1) before Herald
//! acknowledges, which is what holds a slow store back.
//!
//! Subscriptions are made when the broker holds no session for the client id; a session it
//! resumes keeps its own (a changed `topics` takes effect with a new `client_id`).
//!
//! The two protocol versions are two crates with the same interface; `session!` writes the
//! session loop once for both.

use super::backoff::Backoff;
use super::intake::{Intake, MAX_BATCH, Redelivery, next_batch};
use super::mapping::Message;
use crate::config::sources::{MqttAddress, MqttProtocol, SourceConfig, mqtt_address};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const DEFAULT_PREFETCH: u16 = 100;
const DEFAULT_KEEP_ALIVE_SECS: u16 = 30;

/// What a session needs, read from the configuration at start-up.
pub struct Settings {
    address: MqttAddress,
    client_id: String,
    filters: Vec<String>,
    keep_alive_secs: u16,
    prefetch: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    protocol: MqttProtocol,
    /// The largest packet taken: an event's size limit, and room for a topic.
    max_packet: usize,
}

/// The settings of an MQTT source; a TLS file that cannot be read stops start-up.
pub fn settings(config: &SourceConfig, max_event_size: usize) -> anyhow::Result<Settings> {
    let address = mqtt_address(&config.url).map_err(|e| anyhow::anyhow!("sources.{}.url: {e}", config.name))?;
    let tls = if address.tls || !config.tls.is_default() {
        let section = format!("sources.{}.tls", config.name);
        Some(Arc::new(config.tls.client_config(&section, &crate::tls::KeyNames::PLAIN)?))
    } else {
        None
    };
    let filters = config
        .topics
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|f| match &config.share_group {
            Some(group) => format!("$share/{group}/{f}"),
            None => f,
        })
        .collect();
    Ok(Settings {
        client_id: config.client_id.clone().unwrap_or_else(|| format!("herald-{}", config.name)),
        filters,
        keep_alive_secs: config.keep_alive.map_or(DEFAULT_KEEP_ALIVE_SECS, |k| u16::try_from(k.as_secs()).unwrap_or(u16::MAX)),
        prefetch: config.prefetch.unwrap_or(DEFAULT_PREFETCH),
        protocol: config.protocol.unwrap_or_default(),
        max_packet: max_event_size + 65_536,
        address,
        tls,
    })
}

pub async fn run(intake: Arc<Intake>, settings: Settings) {
    match settings.protocol {
        MqttProtocol::V311 => v311::run(intake, settings).await,
        MqttProtocol::V5 => v5::run(intake, settings).await,
    }
}

/// Messages waiting for the intake, at most: QoS 1 ones are bounded by what the broker sends
/// before Herald acknowledges; QoS 0 ones past this, while the hub cannot take them, are dropped
/// (at most once is what their publisher asked for) and counted.
const QUEUED: usize = 4 * MAX_BATCH;

/// How a delivery is known again: QoS 0 messages (a publisher's choice the broker keeps) are
/// never sent twice, nor acknowledged.
fn redelivery(qos1: bool, pkid: u16, dup: bool) -> Redelivery<'static> {
    if qos1 { Redelivery::Packet { id: pkid, dup } } else { Redelivery::Unknown }
}

macro_rules! session {
    ($module:ident, $krate:ident, $version:literal, |$options:ident, $settings:ident| $extra:block) => {
        mod $module {
            use super::*;
            use $krate::{AckMode, AsyncClient, Broker, Event, Incoming, MqttOptions, Publish, QoS, SessionMode, TlsConfiguration, Transport};

            pub async fn run(intake: Arc<Intake>, $settings: Settings) {
                let address = &$settings.address;
                let mut $options = MqttOptions::new($settings.client_id.clone(), Broker::tcp(address.host.clone(), address.port));
                $options.set_keep_alive($settings.keep_alive_secs).set_session_mode(SessionMode::Persistent).set_ack_mode(AckMode::Manual);
                if let Some(user) = &address.username {
                    $options.set_credentials(user.clone(), address.password.clone().unwrap_or_default());
                }
                if let Some(tls) = &$settings.tls {
                    $options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
                }
                $extra
                let (client, mut eventloop) = AsyncClient::builder($options).unbounded().build();
                let (tx, rx) = tokio::sync::mpsc::channel(QUEUED);
                // Counts connections: the client library forgets a message it received on an
                // earlier one, and takes an acknowledgement of it as a protocol error (the
                // broker sends it again instead, marked DUP), so only this connection's
                // messages are acknowledged.
                let connection = Arc::new(AtomicU64::new(0));
                let taker = tokio::spawn(take(intake.clone(), client.clone(), rx, connection.clone()));
                let mut backoff = Backoff::new();
                // Subscriptions made on this connection and not yet answered: the source is
                // up once the broker has them all, so nothing published after that is missed.
                let mut unanswered = 0usize;
                // A subscription the broker refused, kept across reconnects to a session that
                // the broker resumes (it holds the subscriptions it granted, not this one).
                let mut refused: Option<String> = None;
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                            backoff.reset();
                            tracing::debug!(source = %intake.name(), session_present = ack.session_present, concat!("connected over MQTT ", $version));
                            if ack.session_present {
                                match &refused {
                                    Some(why) => intake.status.down(why.clone()),
                                    None => intake.status.up(),
                                }
                                continue;
                            }
                            unanswered = 0;
                            refused = None;
                            for filter in &$settings.filters {
                                match client.subscribe(filter.as_str(), QoS::AtLeastOnce).await {
                                    Ok(()) => unanswered += 1,
                                    Err(e) => intake.status.down(format!("subscribe to `{filter}`: {e}")),
                                }
                            }
                        }
                        Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                            let codes: Vec<String> =
                                ack.return_codes.iter().filter(|c| !matches!(c, $krate::SubscribeReasonCode::Success(_))).map(|c| format!("{c:?}")).collect();
                            unanswered = unanswered.saturating_sub(1);
                            if codes.is_empty() {
                                if unanswered == 0 && refused.is_none() {
                                    intake.status.up();
                                }
                            } else {
                                // An ACL or a filter the broker does not take: no reconnect mends it.
                                let why = format!("the broker refused a subscription ({}): check `topics` and the broker's ACL", codes.join(", "));
                                intake.status.down(why.clone());
                                refused = Some(why);
                            }
                        }
                        Ok(Event::Incoming(Incoming::Publish(publish))) => {
                            let this = connection.load(Ordering::Acquire);
                            if publish.qos == QoS::AtMostOnce {
                                match tx.try_send((this, publish)) {
                                    Ok(()) => {}
                                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => intake.status.dropped(),
                                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                                }
                            } else if tx.send((this, publish)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            connection.fetch_add(1, Ordering::AcqRel);
                            if intake.hub.is_closing() || taker.is_finished() {
                                return;
                            }
                            intake.status.down(e.to_string());
                            backoff.wait().await;
                        }
                    }
                }
            }

            /// Takes what arrived, in order, and acknowledges each message once the intake has
            /// answered for it (MQTT has no way to refuse one: a malformed message is
            /// acknowledged and counted as rejected, never redelivered).
            async fn take(intake: Arc<Intake>, client: AsyncClient, mut rx: tokio::sync::mpsc::Receiver<(u64, Publish)>, connection: Arc<AtomicU64>) {
                let mut arrived = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
                while let Some(batch) = next_batch(&mut arrived, MAX_BATCH).await {
                    let topics: Vec<std::borrow::Cow<str>> = batch.iter().map(|(_, p)| String::from_utf8_lossy(&p.topic)).collect();
                    let msgs: Vec<(Message, Redelivery)> = batch
                        .iter()
                        .zip(&topics)
                        .map(|((_, p), topic)| (Message { subject: topic, payload: &p.payload, event: None }, redelivery(p.qos != QoS::AtMostOnce, p.pkid, p.dup)))
                        .collect();
                    if intake.take(&msgs).await.is_none() {
                        return;
                    }
                    let current = connection.load(Ordering::Acquire);
                    for (_, publish) in batch.iter().filter(|(on, _)| *on == current) {
                        if let Err(e) = client.ack(publish).await {
                            tracing::warn!(source = %intake.name(), error = %e, "acknowledgement not sent; the broker sends the message again");
                        }
                    }
                }
            }
        }
    };
}

session!(v311, mqtt4, "3.1.1", |options, settings| {
    // A larger message would end the connection at every delivery: 3.1.1 cannot tell the
    // broker the limit (Mosquitto's `message_size_limit` can).
    options.set_max_packet_size(settings.max_packet, settings.max_packet);
});
session!(v5, mqtt5, "5", |options, settings| {
    // At most `prefetch` messages unacknowledged, and a session the broker resumes is taken
    // up even though this process has no record of it (after a restart, that is the point).
    options
        .set_receive_maximum(Some(settings.prefetch))
        .set_broker_session_resume_policy(mqtt5::BrokerSessionResumePolicy::AllowBrokerOnly);
    // Told to the broker, which then drops a larger message instead of sending it.
    options.set_max_packet_size(Some(u32::try_from(settings.max_packet).unwrap_or(u32::MAX)));
});
