//! Sources: brokers Herald takes events from (`[[sources]]`). Each runs as a task of its own
//! that maps every message to an event and hands it to the hub's one publish path
//! ([`Hub::ingest_once`](crate::hub::Hub::ingest_once)), acknowledging a message only once its
//! event is accepted (see `intake.rs`), and reconnecting with capped, jittered backoff when its
//! broker goes away. A source never stops the hub: what goes wrong shows in `/stats` and, for
//! a `required` source, in `/healthz`.

mod amqp;
mod backoff;
mod intake;
pub mod mapping;
mod mqtt;
mod nats;
mod redis;
mod sse_upstream;
mod status;

pub use intake::Outcome;
pub use status::{SourceReport, SourceStatus};

use crate::config::sources::{SourceConfig, SourceKind};
use crate::hub::Hub;
use std::sync::Arc;

/// Fault injection for tests of the crash window between accepting a message and acknowledging
/// it: set to a source's name, the process aborts (as `kill -9` would stop it) right after that
/// source's first accepted message, before its acknowledgement is sent.
pub const ABORT_BEFORE_ACK: &str = "HERALD_TEST_ABORT_BEFORE_ACK";

/// The running sources' states.
#[derive(Default)]
pub struct Sources {
    statuses: Vec<Arc<SourceStatus>>,
}

impl Sources {
    pub fn reports(&self) -> Vec<SourceReport> {
        self.statuses.iter().map(|s| s.report()).collect()
    }

    /// Required sources that are not connected, with why.
    pub fn required_down(&self) -> Vec<(String, Option<String>)> {
        self.statuses.iter().filter(|s| s.required && !s.is_connected()).map(|s| (s.name.clone(), s.last_error())).collect()
    }
}

/// Starts every configured source. What cannot work at all (a TLS file that cannot be read)
/// stops start-up; a broker that is not reachable is retried in the background.
pub fn start(hub: &Arc<Hub>) -> anyhow::Result<Arc<Sources>> {
    let mut sources = Sources::default();
    for config in hub.config().sources.clone() {
        let status = Arc::new(SourceStatus::new(&config.name, config.kind.as_str(), config.required));
        let intake = Arc::new(intake::Intake::new(hub.clone(), status.clone(), mapping::Mapper::new(&config), config.dedupe));
        match config.kind {
            SourceKind::Amqp => {
                let tls = amqp::tls_of(&config)?;
                tokio::spawn(amqp::run(config, intake, tls));
            }
            SourceKind::Nats | SourceKind::Jetstream => {
                let tls = nats_tls(&config)?;
                tokio::spawn(nats::run(config, intake, tls));
            }
            SourceKind::Redis | SourceKind::RedisStream => {
                let client = redis::client(&config)?;
                let streams = config.kind == SourceKind::RedisStream;
                tokio::spawn(redis::run(config, intake, client, streams));
            }
            SourceKind::Mqtt => {
                if !hub.config().cluster.bus.is_empty() && config.client_id.is_none() {
                    // Nodes with one client id would take each other's session in turn.
                    anyhow::bail!("sources.{}.client_id: in a cluster, give each node's MQTT source its own client id", config.name);
                }
                let settings = mqtt::settings(&config, hub.config().limits.max_event_size.as_usize())?;
                tokio::spawn(mqtt::run(intake, settings));
            }
            SourceKind::Sse => drop(tokio::spawn(sse_upstream::run(intake, sse_upstream::settings(&config, hub.config())?))),
        }
        sources.statuses.push(status);
    }
    Ok(Arc::new(sources))
}

/// A rustls configuration when the source asks for TLS (`tls://`, or any `[sources.tls]` key).
fn nats_tls(config: &SourceConfig) -> anyhow::Result<Option<rustls::ClientConfig>> {
    if config.tls.is_default() && !config.url.starts_with("tls://") {
        return Ok(None);
    }
    let section = format!("sources.{}.tls", config.name);
    Ok(Some(config.tls.client_config(&section, &crate::tls::KeyNames::PLAIN)?))
}

/// The queue an AMQP source declares and consumes (`herald.<name>` unless `queue` is set).
pub fn queue_name(config: &SourceConfig) -> String {
    amqp::queue_name(config)
}
