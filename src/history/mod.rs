//! Channel history: the recent events a reconnecting or lagging subscriber is served from.
//!
//! Every channel has a [`ChannelLog`], an in-memory window of its most recent events that
//! subscribers read by cursor: live delivery and replay are the same operation, so a reconnect
//! has neither gap nor duplicate at the seam. A [`HistoryStore`] sits behind the window: it is
//! handed every accepted event in position order, and an event is shown to subscribers (and its
//! publisher answered) only once the store says it is as durable as configured. The memory
//! store keeps nothing beyond the window and is durable at once.

pub mod disk;
pub mod log;
pub mod memory;

pub use log::{Batch, ChannelLog, MIN_WINDOW, Missed, ReadStep, Resume, Retention, Take};
pub use memory::{MemoryBudget, MemoryStore};

use crate::event::Event;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// Where history is kept beyond the in-memory window.
pub trait HistoryStore: Send + Sync + 'static {
    /// Name shown in stats and logs.
    fn kind(&self) -> &'static str;

    /// Records accepted events (each names its channels), oldest first. Called under the hub's
    /// sequencing lock, so it must not block: it queues the events (the store then writes them in
    /// the order of these calls) and returns what resolves once they are durable, or `None` when
    /// they already are. Subscribers see the events, and the publisher gets its answer, only
    /// after that.
    fn append(&self, events: &[Arc<Event>]) -> Result<Option<Durable>, StoreError>;

    /// Like [`append`](Self::append), with the idempotency keys the events were published
    /// under, written with them so that they outlive a restart. A store that keeps nothing
    /// across restarts has no use for them.
    fn append_marked(&self, events: &[Arc<Event>], marks: Vec<Mark>) -> Result<Option<Durable>, StoreError> {
        let _ = marks;
        self.append(events)
    }

    /// Events of `channel` after position `after` that are older than the window, oldest first,
    /// at most `limit`. `None` (what both stores answer: the windows hold all they keep) means the
    /// store keeps nothing beyond the window.
    fn read_after<'a>(&'a self, channel: &'a str, after: u64, limit: usize) -> BoxFuture<'a, Result<Option<Vec<Arc<Event>>>, StoreError>> {
        let _ = (channel, after, limit);
        Box::pin(futures_util::future::ready(Ok(None)))
    }

    /// Why the store cannot take writes now (a full disk, say), for `/healthz`; `None` when
    /// it can.
    fn problem(&self) -> Option<String> {
        None
    }

    /// The hub dropped `channel` and its history up to `upto` (it reclaimed the channel at
    /// `max_channels`): the store lets those events go too, in order with the appends before.
    fn forget(&self, channel: &str, upto: u64) {
        let _ = (channel, upto);
    }

    /// Makes everything appended so far durable (at shutdown).
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(futures_util::future::ready(Ok(())))
    }
}

/// An idempotency key and what it stands for (see `hub/dedupe.rs`): the ids of the publish
/// made under it, and a digest of what was published (an HTTP retry must repeat the same
/// request, or it is told the key is reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub key: Box<str>,
    pub ids: Vec<String>,
    pub fingerprint: [u8; 32],
    /// When the key is forgotten (µs since the epoch).
    pub expires_wall_us: u64,
}

/// Resolves once appended events are durable (or could not be made so).
pub type Durable = BoxFuture<'static, Result<(), StoreError>>;

#[derive(Debug, Clone, thiserror::Error)]
#[error("history store: {0}")]
pub struct StoreError(pub String);
