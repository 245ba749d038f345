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
}

/// The settings of an MQTT source; a TLS file that cannot be read stops start-up.
pub fn settings(config: &SourceConfig) -> anyhow::Result<Settings> {
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
                // Bounded by what the broker sends before Herald acknowledges.
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let taker = tokio::spawn(take(intake.clone(), client.clone(), rx));
                let mut backoff = Backoff::new();
                // Subscriptions made on this connection and not yet answered: the source is
                // up once the broker has them all, so nothing published after that is missed.
                let mut unanswered = 0usize;
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                            backoff.reset();
                            tracing::debug!(source = %intake.name(), session_present = ack.session_present, concat!("connected over MQTT ", $version));
                            if ack.session_present {
                                intake.status.up();
                                continue;
                            }
                            unanswered = 0;
                            for filter in &$settings.filters {
                                match client.subscribe(filter.as_str(), QoS::AtLeastOnce).await {
                                    Ok(()) => unanswered += 1,
                                    Err(e) => intake.status.down(format!("subscribe to `{filter}`: {e}")),
                                }
                            }
                        }
                        Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                            let refused: Vec<String> =
                                ack.return_codes.iter().filter(|c| !matches!(c, $krate::SubscribeReasonCode::Success(_))).map(|c| format!("{c:?}")).collect();
                            if refused.is_empty() {
                                unanswered = unanswered.saturating_sub(1);
                                if unanswered == 0 {
                                    intake.status.up();
                                }
                            } else {
                                // An ACL or a filter the broker does not take: no reconnect mends it.
                                intake.status.down(format!("the broker refused a subscription ({}): check `topics` and the broker's ACL", refused.join(", ")));
                            }
                        }
                        Ok(Event::Incoming(Incoming::Publish(publish))) => {
                            if tx.send(publish).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
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
            async fn take(intake: Arc<Intake>, client: AsyncClient, mut rx: tokio::sync::mpsc::UnboundedReceiver<Publish>) {
                let mut arrived = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
                while let Some(batch) = next_batch(&mut arrived, MAX_BATCH).await {
                    let topics: Vec<std::borrow::Cow<str>> = batch.iter().map(|p| String::from_utf8_lossy(&p.topic)).collect();
                    let msgs: Vec<(Message, Redelivery)> = batch
                        .iter()
                        .zip(&topics)
                        .map(|(p, topic)| (Message { subject: topic, payload: &p.payload, event: None }, redelivery(p.qos != QoS::AtMostOnce, p.pkid, p.dup)))
                        .collect();
                    if intake.take(&msgs).await.is_none() {
                        return;
                    }
                    for publish in &batch {
                        if let Err(e) = client.ack(publish).await {
                            tracing::warn!(source = %intake.name(), error = %e, "acknowledgement not sent; the broker sends the message again");
                        }
                    }
                }
            }
        }
    };
}

session!(v311, mqtt4, "3.1.1", |options, settings| {});
session!(v5, mqtt5, "5", |options, settings| {
    // At most `prefetch` messages unacknowledged, and a session the broker resumes is taken
    // up even though this process has no record of it (after a restart, that is the point).
    options
        .set_receive_maximum(Some(settings.prefetch))
        .set_broker_session_resume_policy(mqtt5::BrokerSessionResumePolicy::AllowBrokerOnly);
});
