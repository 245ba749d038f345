//! Cluster mode: several Herald nodes sharing channels through a bus.
//!
//! Every accepted event is appended to the bus first; every node (the one that took the publish
//! included) reads the bus in order and feeds the events to its own subscribers, so all nodes
//! hold the same events in the same order, with the same ids: positions come from the bus (the
//! entry id), not from the node. History and replay come from the bus too: a node starting up
//! loads the bus's retained entries into its windows, so any node can replay any channel.

pub mod nats;
pub mod redis;

use crate::hub::Hub;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// An event on its way to the bus.
pub struct Outgoing {
    pub channels: Vec<Arc<str>>,
    pub custom_id: Option<String>,
    /// The encoded block without its id line (each node adds the id the bus gave).
    pub partial: Bytes,
}

/// An event read from the bus.
pub struct Incoming {
    pub pos: u64,
    pub channels: Vec<String>,
    pub custom_id: Option<String>,
    pub partial: Bytes,
    /// When the bus took it (µs since the epoch), so that `history_ttl` counts from the publish,
    /// not from when this node read it (at start-up, long after).
    pub published_wall_us: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("cluster bus ({kind}) unavailable: {message}")]
pub struct BusError {
    pub kind: &'static str,
    pub message: String,
}

pub trait Bus: Send + Sync + 'static {
    fn kind(&self) -> &'static str;

    /// Appends events in order; returns the position the bus gave each.
    fn append<'a>(&'a self, events: &'a [Outgoing]) -> BoxFuture<'a, Result<Vec<u64>, BusError>>;

    fn state(&self) -> &BusState;
}

/// Whether the node's reader is connected to the bus, for `/healthz` and `/stats`.
#[derive(Default)]
pub struct BusState {
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// A fault a reconnect cannot mend (the stream's positions went back): the node refuses
    /// publishes until it is restarted, rather than accept events it would drop.
    broken: Mutex<Option<String>>,
}

impl BusState {
    pub fn up(&self) {
        if let Some(why) = self.broken.lock().clone() {
            self.down(why);
            return;
        }
        if !self.connected.swap(true, Ordering::AcqRel) {
            tracing::info!("cluster bus connected");
        }
        *self.last_error.lock() = None;
    }

    pub fn down(&self, error: String) {
        if self.connected.swap(false, Ordering::AcqRel) {
            tracing::warn!(%error, "cluster bus lost; reconnecting");
        }
        *self.last_error.lock() = Some(error);
    }

    /// Marks the bus unusable for good (see `broken`).
    pub fn break_for_good(&self, why: String) {
        tracing::error!(error = %why, "cluster bus unusable: publishes are refused until this node restarts");
        *self.broken.lock() = Some(why.clone());
        self.down(why);
    }

    /// Refuses a publish when the bus is broken for good.
    pub fn check_usable(&self, kind: &'static str) -> Result<(), BusError> {
        match &*self.broken.lock() {
            Some(why) => Err(BusError { kind, message: why.clone() }),
            None => Ok(()),
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
}

/// Connects the hub to its configured bus: loads what the bus retains (waiting at most a few
/// seconds, so that a node whose bus is down still starts and serves its subscribers), then keeps
/// reading in the background.
pub async fn start(hub: &Arc<Hub>) -> anyhow::Result<()> {
    let config = hub.config().cluster.clone();
    if !config.enabled() {
        return Ok(());
    }
    let loaded = if config.bus.starts_with("nats://") {
        let (bus, loaded) = nats::NatsBus::start(hub, &config).await?;
        hub.attach_bus(bus);
        loaded
    } else {
        let (bus, loaded) = redis::RedisBus::start(hub, &config)?;
        hub.attach_bus(bus);
        loaded
    };
    if tokio::time::timeout(std::time::Duration::from_secs(5), loaded).await.is_err() {
        tracing::warn!("cluster bus not reachable at start-up: serving, and reconnecting in the background");
    }
    Ok(())
}
