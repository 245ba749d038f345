//! The replication port: what the hub needs from a cluster bus, defined here so that the hub
//! depends on no bus. `cluster/` adapts Redis Streams and NATS JetStream to it.
//!
//! Every accepted event is appended to the bus first; every node reads the bus in order and
//! feeds the events to its own subscribers, positions coming from the bus.

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

/// What the bus did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub positions: Vec<u64>,
    /// The batch's key was appended under already: `positions` are that append's.
    pub repeat: bool,
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

#[derive(Debug, Clone, thiserror::Error)]
#[error("cluster bus ({kind}) unavailable: {message}")]
pub struct BusError {
    pub kind: &'static str,
    pub message: String,
}

pub trait Bus: Send + Sync + 'static {
    fn kind(&self) -> &'static str;

    /// Appends events in order; returns the position the bus gave each. With an idempotency
    /// key, the bus appends them at most once within the cluster's `dedupe_window`, whichever
    /// node asks: a repeat appends nothing and answers with the first append's positions.
    fn append<'a>(&'a self, events: &'a [Outgoing], key: Option<&'a str>) -> BoxFuture<'a, Result<Appended, BusError>>;

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
