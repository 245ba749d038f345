//! Events: what a publisher hands in ([`Draft`]) and what the hub keeps and delivers ([`Event`]).

use crate::sse::encode::{self, EncodeError, FrameBuilder};
use bytes::Bytes;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An event as a publisher describes it, before it has a position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draft {
    /// The publisher's own id; Herald assigns one when absent.
    pub id: Option<String>,
    /// The SSE event type (`event:` field).
    pub event: Option<String>,
    pub data: String,
    /// Reconnection delay for clients, in milliseconds.
    pub retry: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DraftError {
    #[error(transparent)]
    Field(#[from] EncodeError),
    #[error("event is {size} bytes encoded, more than limits.max_event_size ({limit} bytes)")]
    TooLarge { size: usize, limit: usize },
}

impl Draft {
    /// Validates the fields and encodes everything but the id line.
    pub fn encode(&self, max_event_size: usize) -> Result<FrameBuilder, DraftError> {
        if let Some(id) = &self.id {
            encode::check_field("id", id)?;
        }
        if let Some(event) = &self.event {
            encode::check_field("event", event)?;
        }
        let frame = FrameBuilder::new(self.event.as_deref(), &self.data, self.retry);
        if frame.len() > max_event_size {
            return Err(DraftError::TooLarge { size: frame.len(), limit: max_event_size });
        }
        Ok(frame)
    }
}

/// An accepted event: sequenced, encoded once, shared by every subscriber and by history.
#[derive(Debug)]
pub struct Event {
    /// Position in the hub's single order of events. Herald-assigned ids are this number.
    pub pos: u64,
    /// The publisher's id, when it gave one (then it is the id on the wire instead of `pos`).
    pub custom_id: Option<Box<str>>,
    /// The channels it was published to.
    pub channels: Box<[Arc<str>]>,
    /// The complete wire block, blank line included.
    pub frame: Bytes,
    pub published_at: Instant,
}

impl Event {
    /// The id a client sees and sends back as `Last-Event-ID`.
    pub fn wire_id(&self) -> Cow<'_, str> {
        match &self.custom_id {
            Some(id) => Cow::Borrowed(id),
            None => Cow::Owned(self.pos.to_string()),
        }
    }
}

/// Microseconds since the Unix epoch, now: the clock positions and stored publish times use.
pub fn now_wall_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The `Instant` at which an event published at `wall_us` (µs since the epoch) was published,
/// so that an event stored or sent on a bus a minute ago is a minute old here too.
pub fn published_instant(wall_us: u64) -> Instant {
    let now = Instant::now();
    now.checked_sub(Duration::from_micros(now_wall_us().saturating_sub(wall_us))).unwrap_or(now)
}
