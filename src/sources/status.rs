//! What each source shows in `/stats` and `/healthz`: connected or not, the last error, and
//! its counters.

use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default)]
pub struct SourceStatus {
    pub name: String,
    pub kind: &'static str,
    pub required: bool,
    connected: AtomicBool,
    /// Times a session connected, so that a supervisor sees one did.
    connects: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Why the source holds its message back (the store or the bus cannot take it), while it does.
    stalled: Mutex<Option<String>>,
    received: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    duplicates: AtomicU64,
    /// At-most-once messages (MQTT QoS 0) dropped while the hub could not take them.
    dropped: AtomicU64,
}

/// A source as `/stats` shows it.
#[derive(Debug, Serialize)]
pub struct SourceReport {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub required: bool,
    pub connected: bool,
    pub last_error: Option<String>,
    pub stalled: Option<String>,
    pub received: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub dropped: u64,
}

impl SourceStatus {
    pub fn new(name: &str, kind: &'static str, required: bool) -> Self {
        SourceStatus { name: name.into(), kind, required, ..SourceStatus::default() }
    }

    pub fn up(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        if !self.connected.swap(true, Ordering::AcqRel) {
            tracing::info!(source = %self.name, "source connected");
        }
    }

    pub fn down(&self, error: String) {
        if self.connected.swap(false, Ordering::AcqRel) {
            tracing::warn!(source = %self.name, %error, "source disconnected; reconnecting");
        } else {
            tracing::debug!(source = %self.name, %error, "source still not connected");
        }
        *self.last_error.lock() = Some(error);
    }

    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    pub fn stall(&self, why: Option<String>) {
        *self.stalled.lock() = why;
    }

    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self) {
        if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(source = %self.name, "the hub cannot take messages now: at-most-once messages are dropped (counted in /stats)");
        }
    }

    pub fn report(&self) -> SourceReport {
        SourceReport {
            name: self.name.clone(),
            kind: self.kind,
            required: self.required,
            connected: self.is_connected(),
            last_error: self.last_error(),
            stalled: self.stalled.lock().clone(),
            received: self.received.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}
