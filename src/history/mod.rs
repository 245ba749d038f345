//! Channel history: the recent events a reconnecting or lagging subscriber is served from.
//!
//! Every channel has a [`ChannelLog`], an in-memory window of its most recent events that
//! subscribers read by cursor: live delivery and replay are the same operation, so a reconnect
//! has neither gap nor duplicate at the seam. A [`HistoryStore`] sits behind the window: it is
//! told of every accepted event before the publisher gets its answer, and is asked for events
//! older than the window holds. The memory store keeps nothing beyond the window.

pub mod disk;
pub mod log;
pub mod memory;

pub use log::{ChannelLog, Missed, ReadStep, Resume, Retention};
pub use memory::{MemoryBudget, MemoryStore};

use crate::event::Event;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// Where history is kept beyond the in-memory window.
pub trait HistoryStore: Send + Sync + 'static {
    /// Name shown in stats and logs.
    fn kind(&self) -> &'static str;

    /// Records accepted events (each names its channels), oldest first. The publisher is
    /// answered only after this completes, so a durable store completes once they are durable.
    fn append<'a>(&'a self, events: &'a [Arc<Event>]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Events of `channel` after position `after` that are older than the window, oldest first,
    /// at most `limit`. `None` (what both stores answer: the windows hold all they keep) means the
    /// store keeps nothing beyond the window.
    fn read_after<'a>(&'a self, channel: &'a str, after: u64, limit: usize) -> BoxFuture<'a, Result<Option<Vec<Arc<Event>>>, StoreError>> {
        let _ = (channel, after, limit);
        Box::pin(futures_util::future::ready(Ok(None)))
    }

    /// Makes everything appended so far durable (at shutdown).
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(futures_util::future::ready(Ok(())))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("history store: {0}")]
pub struct StoreError(pub String);
