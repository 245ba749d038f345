//! The in-memory store: history is exactly what the channels' windows hold, under one cap on the
//! bytes of all channels together.

use super::{Durable, HistoryStore, StoreError};
use crate::event::Event;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// History kept only in memory: nothing survives a restart, and nothing is kept beyond the
/// channel windows, whose size is the configured history size.
pub struct MemoryStore;

impl HistoryStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn append(&self, _events: &[Arc<Event>]) -> Result<Option<Durable>, StoreError> {
        // The window the hub appended to is this store's whole content: nothing to wait for.
        Ok(None)
    }
}

/// Bytes held by every channel window together, against `history.max_memory`.
pub struct MemoryBudget {
    cap: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(cap: usize) -> Self {
        MemoryBudget { cap, used: AtomicUsize::new(0) }
    }

    pub fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn over(&self) -> bool {
        self.used() > self.cap
    }

    /// What eviction brings usage down to, so that a full hub does not evict on every publish.
    pub fn low_water(&self) -> usize {
        self.cap - self.cap / 10
    }
}
