//! A channel's in-memory window of recent events, read by cursor.
//!
//! Cursors are channel-local sequence numbers: event `i` of the channel's life has sequence `i`,
//! so finding where a cursor points is an index computation, and a cursor that points before the
//! first kept event tells exactly how many events it missed.

use crate::event::Event;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The fewest events a channel keeps for subscribers that fall behind, even when its history
/// (what is replayed to reconnecting clients) is shorter.
pub const MIN_WINDOW: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events replayed to a reconnecting client.
    pub max_events: usize,
    /// Age past which events leave the log.
    pub max_age: Option<Duration>,
}

/// Where a new subscription starts in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Only events published from now on.
    Live,
    /// Everything history holds, then live.
    All,
    /// Events after this hub position, then live.
    After(u64),
    /// The client named an id nobody knows: everything history holds, and a notice.
    Unknown,
}

/// Why a resuming client may not get everything it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Events after its id have already left history (or were lost in a restart).
    Evicted,
    /// Its id was never issued by this hub.
    Unknown,
}

/// What one write's reads gathered: how many events, and when the oldest of them was accepted
/// (for the delivery-delay histogram).
#[derive(Debug, Clone, Copy, Default)]
pub struct Batch {
    pub events: u32,
    pub oldest: Option<Instant>,
}

impl Batch {
    fn add(&mut self, ev: &Event) {
        // A voided slot is not an event.
        if !ev.frame.is_empty() {
            self.events += 1;
            self.oldest.get_or_insert(ev.published_at);
        }
    }
}

/// The outcome of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStep {
    /// Everything up to the limits was copied.
    Done,
    /// The cursor pointed before the oldest kept event; it now points at it, and this many
    /// events were skipped.
    Lagged(u64),
}

/// The outcome of [`ChannelLog::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The event was sent (or skipped as sent already); the position of the next one in the
    /// window, visible or not.
    Taken { next: Option<u64> },
    /// The event does not fit in what is left of the write batch.
    Full,
    /// The cursor lagged (see [`ReadStep::Lagged`]).
    Lagged(u64),
}

pub struct ChannelLog {
    retention: Retention,
    /// Events kept: at least the history size, at least [`MIN_WINDOW`].
    window: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    events: VecDeque<Arc<Event>>,
    /// Sequence of `events[0]`, which is also the number of events that have left the log.
    first_seq: u64,
    bytes: usize,
    /// Position of the newest event that left the log, or the floor it was created with: a
    /// client resuming from before it may have missed events.
    floor_pos: u64,
    /// Slots voided by [`ChannelLog::void`] still held: not events, for the stats.
    holes: usize,
}

impl ChannelLog {
    /// A log whose floor is `floor`: a client resuming from before it may have missed events.
    pub fn new(retention: Retention, floor: u64) -> Self {
        ChannelLog {
            retention,
            window: retention.max_events.max(MIN_WINDOW),
            inner: Mutex::new(Inner { events: VecDeque::new(), first_seq: 0, bytes: 0, floor_pos: floor, holes: 0 }),
        }
    }

    /// Sets the floor: the newest position known to have left history (at start-up, from the
    /// store, before any event is pushed), so that a client resuming from before it is told it
    /// missed events.
    pub fn set_floor(&self, pos: u64) {
        self.inner.lock().floor_pos = pos;
    }

    /// The newest position known to have left history.
    pub fn floor(&self) -> u64 {
        self.inner.lock().floor_pos
    }

    /// Raises the floor to `pos` if it is lower (a cluster node learning where the bus's
    /// history starts).
    pub fn raise_floor(&self, pos: u64) {
        let mut inner = self.inner.lock();
        inner.floor_pos = inner.floor_pos.max(pos);
    }

    /// Appends an event; returns the bytes that left the log to make room.
    pub fn push(&self, event: Arc<Event>) -> usize {
        let mut inner = self.inner.lock();
        inner.bytes += event.frame.len();
        inner.events.push_back(event);
        let mut freed = 0;
        while inner.events.len() > self.window {
            freed += inner.pop_front();
        }
        freed
    }

    /// Takes back the event at `pos`, whose store append failed before anyone could see it:
    /// its slot stays (cursors are indexes) but holds nothing, so it is never delivered, replayed
    /// or resumed from. Returns the bytes freed.
    pub fn void(&self, pos: u64) -> usize {
        let mut inner = self.inner.lock();
        let i = inner.events.partition_point(|e| e.pos < pos);
        let Some(ev) = inner.events.get(i).filter(|e| e.pos == pos) else { return 0 };
        let freed = ev.frame.len();
        let hole = Arc::new(Event { pos, custom_id: None, channels: Box::new([]), frame: Bytes::new(), published_at: ev.published_at });
        inner.events[i] = hole;
        inner.bytes -= freed;
        inner.holes += 1;
        freed
    }

    /// Where a new subscription starts, and whether the client may have missed events.
    /// `hub_last` is the newest position the hub has issued.
    pub fn start(&self, resume: Resume, hub_last: u64) -> (u64, Option<Missed>) {
        let inner = self.inner.lock();
        let replay_from = inner.replay_start(&self.retention, Instant::now());
        let replay_seq = inner.first_seq + replay_from as u64;
        match resume {
            Resume::Live => (inner.first_seq + inner.events.len() as u64, None),
            Resume::All => (replay_seq, None),
            Resume::Unknown => (replay_seq, Some(Missed::Unknown)),
            Resume::After(pos) if pos > hub_last => (replay_seq, Some(Missed::Unknown)),
            Resume::After(pos) => {
                // Events before the replay start are out of reach just as evicted ones are.
                let floor = if replay_from == 0 { inner.floor_pos } else { inner.events[replay_from - 1].pos };
                // Positions in a log only grow: binary search. What the client already has is
                // not sent again, even when events after it are known to be gone (a cluster
                // node's floor can rise above events it still holds).
                let first_after = inner.events.partition_point(|e| e.pos <= pos).max(replay_from);
                let missed = (pos < floor).then_some(Missed::Evicted);
                (inner.first_seq + first_after as u64, missed)
            }
        }
    }

    /// The position of the newest event in history whose wire id is `id` (publishers' ids).
    pub fn find_custom(&self, id: &str) -> Option<u64> {
        let inner = self.inner.lock();
        inner.events.iter().rev().find(|e| e.custom_id.as_deref() == Some(id)).map(|e| e.pos)
    }

    /// Copies the frames of events from `cursor` on into `buf`: events up to position `upto`,
    /// and no more than `max_bytes` (but always at least one event).
    pub fn read_into(&self, cursor: &mut u64, upto: u64, buf: &mut BytesMut, max_bytes: usize, batch: &mut Batch) -> ReadStep {
        let inner = self.inner.lock();
        let mut i = match inner.index_of(cursor) {
            Ok(i) => i,
            Err(skipped) => return ReadStep::Lagged(skipped),
        };
        let start = buf.len();
        while let Some(ev) = inner.events.get(i) {
            if ev.pos > upto || (buf.len() > start && buf.len() - start + ev.frame.len() > max_bytes) {
                break;
            }
            buf.extend_from_slice(&ev.frame);
            batch.add(ev);
            i += 1;
        }
        *cursor = inner.first_seq + i as u64;
        ReadStep::Done
    }

    /// The position of the event at `cursor`, if the window has one (the caller compares it
    /// with the watermark). `Err(n)` when the cursor pointed before the oldest kept event: it
    /// now points at it, and `n` events were skipped.
    pub fn peek(&self, cursor: &mut u64) -> Result<Option<u64>, u64> {
        let inner = self.inner.lock();
        let i = inner.index_of(cursor)?;
        Ok(inner.events.get(i).map(|e| e.pos))
    }

    /// Takes the event at `cursor` (one [`peek`](Self::peek) found): copies its frame into `buf`
    /// unless its position is at most `sent` (a subscriber of several channels already sent it
    /// through another) or the frame is larger than `room`, in which case nothing moves. Returns
    /// the position of the next event, for the caller's merge.
    pub fn take(&self, cursor: &mut u64, sent: u64, buf: &mut BytesMut, room: usize, batch: &mut Batch) -> Take {
        let inner = self.inner.lock();
        let i = match inner.index_of(cursor) {
            Ok(i) => i,
            Err(skipped) => return Take::Lagged(skipped),
        };
        let Some(ev) = inner.events.get(i) else { return Take::Taken { next: None } };
        if ev.pos > sent {
            if ev.frame.len() > room {
                return Take::Full;
            }
            buf.extend_from_slice(&ev.frame);
            batch.add(ev);
        }
        *cursor += 1;
        Take::Taken { next: inner.events.get(i + 1).map(|e| e.pos) }
    }

    /// How many events a cursor at `cursor` has yet to read (voided slots included).
    pub fn backlog(&self, cursor: u64) -> u64 {
        let inner = self.inner.lock();
        (inner.first_seq + inner.events.len() as u64).saturating_sub(cursor)
    }

    /// Sequence the next event will get: a cursor equal to it is caught up.
    #[cfg(test)]
    pub fn end_seq(&self) -> u64 {
        let inner = self.inner.lock();
        inner.first_seq + inner.events.len() as u64
    }

    /// Position of the oldest event kept.
    pub fn front_pos(&self) -> Option<u64> {
        self.inner.lock().events.front().map(|e| e.pos)
    }

    /// Removes every event (the channel is reclaimed); returns the bytes freed and the floor
    /// it leaves: the newest position that was in it.
    pub fn clear(&self) -> (usize, u64) {
        let mut inner = self.inner.lock();
        let mut freed = 0;
        while !inner.events.is_empty() {
            freed += inner.pop_front();
        }
        (freed, inner.floor_pos)
    }

    /// Removes the oldest event (for the global memory cap); returns its size.
    pub fn evict_front(&self) -> usize {
        self.inner.lock().pop_front()
    }

    /// Removes events older than the retention age; returns the bytes freed.
    pub fn expire(&self, now: Instant) -> usize {
        let Some(age) = self.retention.max_age else { return 0 };
        let mut inner = self.inner.lock();
        let mut freed = 0;
        while inner.events.front().is_some_and(|e| now.duration_since(e.published_at) > age) {
            freed += inner.pop_front();
        }
        freed
    }

    /// Events replayable to a reconnecting client, and the bytes the log holds.
    pub fn stats(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        let from = inner.replay_start(&self.retention, Instant::now());
        let replayable = match inner.holes {
            0 => inner.events.len() - from,
            // Rare (a failed store write): counted one by one.
            _ => inner.events.range(from..).filter(|e| !e.frame.is_empty()).count(),
        };
        (replayable, inner.bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lock().events.is_empty()
    }
}

impl Inner {
    /// The index of the event at `cursor`, or how far before the oldest kept event it pointed
    /// (it then points at that event).
    fn index_of(&self, cursor: &mut u64) -> Result<usize, u64> {
        if *cursor < self.first_seq {
            let skipped = self.first_seq - *cursor;
            *cursor = self.first_seq;
            return Err(skipped);
        }
        Ok((*cursor - self.first_seq) as usize)
    }

    fn pop_front(&mut self) -> usize {
        match self.events.pop_front() {
            Some(ev) => {
                if ev.frame.is_empty() {
                    self.holes -= 1;
                }
                self.first_seq += 1;
                self.floor_pos = ev.pos;
                self.bytes -= ev.frame.len();
                ev.frame.len()
            }
            None => 0,
        }
    }

    /// Index of the first event a reconnecting client may be given: within the history size and
    /// younger than the retention age.
    fn replay_start(&self, retention: &Retention, now: Instant) -> usize {
        let by_count = self.events.len().saturating_sub(retention.max_events);
        match retention.max_age {
            Some(age) => by_count.max(self.events.partition_point(|e| now.duration_since(e.published_at) > age)),
            None => by_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(pos: u64) -> Arc<Event> {
        Arc::new(Event {
            pos,
            custom_id: None,
            channels: Box::new([]),
            frame: Bytes::from(format!("data: {pos}\n\n")),
            published_at: Instant::now(),
        })
    }

    #[test]
    fn resume_after_and_eviction() {
        let log = ChannelLog::new(Retention { max_events: 3, max_age: None }, 5);
        // Fill past the window so that the first events leave it.
        for pos in 10..10 + MIN_WINDOW as u64 + 2 {
            log.push(ev(pos));
        }
        let last = 10 + MIN_WINDOW as u64 + 1;
        assert_eq!(log.start(Resume::After(last), last), (MIN_WINDOW as u64 + 2, None));
        assert_eq!(log.start(Resume::After(last - 1), last), (MIN_WINDOW as u64 + 1, None));
        // Only three events are history; older ids are treated as evicted.
        assert_eq!(log.start(Resume::After(12), last).1, Some(Missed::Evicted));
        assert_eq!(log.start(Resume::After(last + 1), last).1, Some(Missed::Unknown));
        assert_eq!(log.start(Resume::All, last).0, MIN_WINDOW as u64 - 1);
        let mut cursor = 0;
        let mut buf = BytesMut::new();
        assert_eq!(log.read_into(&mut cursor, u64::MAX, &mut buf, 1 << 20, &mut Batch::default()), ReadStep::Lagged(2));
        assert_eq!(log.read_into(&mut cursor, u64::MAX, &mut buf, 1 << 20, &mut Batch::default()), ReadStep::Done);
        assert!(buf.starts_with(b"data: 12\n\n"));
        assert_eq!(cursor, log.end_seq());
    }
}
