//! A channel: its history window and the wakers of the subscriptions reading it.

use super::pending::PendingSet;
use super::settings::ChannelSettings;
use crate::history::ChannelLog;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use slab::Slab;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A multi-channel subscription's registration: its marks (and waker), and which mark is this
/// channel's.
pub struct MergedWaiter {
    pub pending: Arc<PendingSet>,
    pub slot: u32,
}

pub struct Channel {
    pub name: Arc<str>,
    pub settings: Arc<ChannelSettings>,
    pub log: ChannelLog,
    /// Declared in configuration: never removed when idle.
    pub declared: bool,
    /// One waker per subscription reading this channel alone. Publishing wakes them all; each
    /// then copies what it has not sent yet straight from the log.
    wakers: Mutex<Slab<Arc<AtomicWaker>>>,
    /// Subscriptions reading this channel among others: woken the same way, and told which of
    /// their channels has new events (see `pending.rs`).
    merged: Mutex<Slab<MergedWaiter>>,
    published: AtomicU64,
    /// When it was last published to or subscribed to (ms since the epoch): at `max_channels`,
    /// the idle channels used longest ago are reclaimed first.
    last_used: AtomicU64,
    /// Set (under the hub's registry and sequencing locks) when the channel is dropped from the
    /// registry; a publisher that still holds it looks it up again.
    removed: AtomicBool,
}

impl Channel {
    pub fn new(name: Arc<str>, settings: Arc<ChannelSettings>, declared: bool, floor: u64) -> Self {
        let log = ChannelLog::new(settings.retention, floor);
        Channel {
            name,
            settings,
            log,
            declared,
            wakers: Mutex::new(Slab::new()),
            merged: Mutex::new(Slab::new()),
            published: AtomicU64::new(0),
            last_used: AtomicU64::new(crate::event::now_wall_us() / 1000),
            removed: AtomicBool::new(false),
        }
    }

    pub fn register(&self, waker: Arc<AtomicWaker>) -> usize {
        self.touch(crate::event::now_wall_us() / 1000);
        self.wakers.lock().insert(waker)
    }

    pub fn unregister(&self, key: usize) {
        self.touch(crate::event::now_wall_us() / 1000);
        self.wakers.lock().try_remove(key);
    }

    pub fn register_merged(&self, waiter: MergedWaiter) -> usize {
        self.touch(crate::event::now_wall_us() / 1000);
        self.merged.lock().insert(waiter)
    }

    pub fn unregister_merged(&self, key: usize) {
        self.touch(crate::event::now_wall_us() / 1000);
        self.merged.lock().try_remove(key);
    }

    /// An event entered the window: the multi-channel subscriptions reading it are told which
    /// of their channels to look at. Called before the event can become visible.
    pub fn mark_appended(&self) {
        for (_, w) in self.merged.lock().iter() {
            w.pending.mark(w.slot);
        }
    }

    /// Used now (`now_ms`, ms since the epoch).
    pub fn touch(&self, now_ms: u64) {
        self.last_used.store(now_ms, Ordering::Relaxed);
    }

    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    pub fn subscribers(&self) -> usize {
        self.wakers.lock().len() + self.merged.lock().len()
    }

    pub fn wake_all(&self) {
        for (_, waker) in self.wakers.lock().iter() {
            waker.wake();
        }
        for (_, w) in self.merged.lock().iter() {
            w.pending.wake();
        }
    }

    pub fn count_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }

    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    pub(super) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
}
