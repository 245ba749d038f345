//! What subscribers may see: the visibility watermark.
//!
//! An event goes into its channels' windows the moment it is numbered, under the sequencing
//! lock, so that window order is position order. But subscribers read only up to the watermark:
//! the newest position such that every event at or before it is as durable as the store
//! promises (`fsync`). A publish whose store append is in flight holds the watermark back; when
//! the append settles, the watermark moves past it, past its events when they are durable and
//! past their voided slots when the append failed, and the channels it touched are woken. So a
//! live subscriber never receives an event that a crash then erases, and an event whose publisher
//! was told 503 was never delivered, so its retry is no duplicate.
//!
//! With the memory store an append is durable at once: the watermark moves under the sequencing
//! lock as before, after one look at the (empty, uncontended) queue of publishes in flight;
//! nothing is allocated and nothing waits.

use super::Channel;
use crate::history::{Durable, MemoryBudget, StoreError};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) struct Visibility {
    watermark: AtomicU64,
    /// Publishes not yet shown, in position order (pushed under the hub's sequencing lock).
    inflight: Mutex<VecDeque<Inflight>>,
    budget: Arc<MemoryBudget>,
}

/// Each event's position and the channels whose windows hold it.
pub(super) type Targets = Vec<(u64, Vec<Arc<Channel>>)>;

/// One publish (a batch) whose append has not settled, or has settled behind one that has not.
struct Inflight {
    last_pos: u64,
    targets: Targets,
    /// `Some(durable)` once the append answered.
    settled: Option<bool>,
}

impl Visibility {
    pub fn new(start: u64, budget: Arc<MemoryBudget>) -> Self {
        Visibility { watermark: AtomicU64::new(start), inflight: Mutex::new(VecDeque::new()), budget }
    }

    /// The newest position subscribers may read.
    pub fn watermark(&self) -> u64 {
        self.watermark.load(Ordering::Acquire)
    }

    /// Under the sequencing lock: events up to `last_pos` were just pushed to `targets`'
    /// windows, and the store answered whether they are `durable` already. Gives the targets
    /// back when the events are visible at once, for the caller to wake their channels;
    /// otherwise [`settle`](Self::settle) wakes them.
    pub fn pushed(&self, last_pos: u64, targets: Targets, durable: bool) -> Option<Targets> {
        let mut inflight = self.inflight.lock();
        if durable && inflight.is_empty() {
            drop(inflight);
            self.watermark.store(last_pos, Ordering::Release);
            return Some(targets);
        }
        inflight.push_back(Inflight { last_pos, targets, settled: durable.then_some(true) });
        None
    }

    /// Moves the watermark straight to `pos` (a cluster node learning where the bus's history
    /// starts; nothing is in flight there, the memory store being durable at once).
    pub fn raise_to(&self, pos: u64) {
        self.watermark.fetch_max(pos, Ordering::AcqRel);
    }

    /// The append of the publish ending at `last_pos` answered. Moves the watermark past every
    /// settled publish at the front of the queue, voiding the events of failed ones, then wakes
    /// their channels.
    pub fn settle(&self, last_pos: u64, durable: bool) {
        let mut shown: Targets = Vec::new();
        {
            let mut inflight = self.inflight.lock();
            if let Some(entry) = inflight.iter_mut().find(|e| e.last_pos == last_pos) {
                entry.settled = Some(durable);
            }
            while inflight.front().is_some_and(|e| e.settled.is_some()) {
                let entry = inflight.pop_front().expect("checked above");
                if entry.settled == Some(false) {
                    for (pos, channels) in &entry.targets {
                        for ch in channels {
                            self.budget.release(ch.log.void(*pos));
                        }
                    }
                }
                self.watermark.store(entry.last_pos, Ordering::Release);
                shown.extend(entry.targets);
            }
        }
        wake_targets(shown);
    }
}

/// Wakes each channel of `targets` once.
pub(super) fn wake_targets(targets: Targets) {
    let mut woken: Vec<Arc<Channel>> = Vec::new();
    for ch in targets.into_iter().flat_map(|(_, chans)| chans) {
        if !woken.iter().any(|w| Arc::ptr_eq(w, &ch)) {
            woken.push(ch);
        }
    }
    for ch in &woken {
        ch.wake_all();
    }
}

/// A publisher waiting for its append. Dropped before the answer (the publish request was
/// cancelled), it hands the wait to a task of its own: the watermark must still move, or every
/// later event would stay hidden.
pub(super) struct Settling {
    visibility: Arc<Visibility>,
    last_pos: u64,
    durable: Option<Durable>,
}

impl Settling {
    pub fn new(visibility: Arc<Visibility>, last_pos: u64, durable: Durable) -> Self {
        Settling { visibility, last_pos, durable: Some(durable) }
    }

    pub async fn wait(mut self) -> Result<(), StoreError> {
        let outcome = self.durable.as_mut().expect("waited once").await;
        self.durable = None;
        self.visibility.settle(self.last_pos, outcome.is_ok());
        outcome
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        let Some(durable) = self.durable.take() else { return };
        let (visibility, last_pos) = (self.visibility.clone(), self.last_pos);
        let finish = async move {
            let durable = durable.await.is_ok();
            visibility.settle(last_pos, durable);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(finish)),
            Err(_) => {
                // Outside a runtime (a test dropping a hub's future): wait on a thread.
                std::thread::spawn(move || {
                    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() {
                        rt.block_on(finish);
                    }
                });
            }
        }
    }
}
