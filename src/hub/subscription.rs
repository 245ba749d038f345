//! A subscription: one streaming response body reading one or more channel windows by cursor.
//!
//! The body is the subscriber. There is no task or queue per connection: when hyper asks for the
//! next chunk, the body copies every frame it has not sent yet from the windows into one buffer
//! (coalescing a backlog into one write), or registers its waker and waits. A subscriber that
//! stops reading is simply not polled; the window moves on without it, and when it reads again
//! it is told how many events it lost (`lag_policy`).

use super::pending::PendingSet;
use super::{Channel, Hub};
use crate::config::{Config, LagPolicy};
use crate::history::{Batch, ReadStep, Take};
use crate::telemetry::access::{self, StreamEnd};
use crate::telemetry::counters;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A keep-alive is a comment line with no blank line after it. Under the spec a blank line with
/// nothing buffered dispatches nothing, but some clients (`httpx-sse` 0.4) hand out an empty
/// event at every blank line once they have seen an id; a comment line alone is ignored by
/// every client, and the next event's blank line ends it with that event.
static KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n";
static KEEPALIVE_PING: &[u8] = b"event: ping\ndata: \n\n";

#[derive(Debug, Clone)]
pub struct SubscriptionOptions {
    pub keepalive: Option<Duration>,
    pub ping_event: bool,
    pub retry: Option<Duration>,
    pub lag_policy: LagPolicy,
    pub write_batch: usize,
}

impl SubscriptionOptions {
    pub fn from_config(config: &Config) -> Self {
        SubscriptionOptions {
            keepalive: (!config.keepalive_interval.is_zero()).then_some(config.keepalive_interval),
            ping_event: config.ping_event,
            retry: (!config.retry.is_zero()).then_some(config.retry),
            lag_policy: config.lag_policy,
            write_batch: config.limits.write_batch.as_usize(),
        }
    }
}

struct Cursor {
    channel: Arc<Channel>,
    /// Key of this subscription's waker in the channel.
    key: usize,
    /// Sequence of the next event to send.
    next: u64,
    /// In the merge's heap (several channels only).
    queued: bool,
}

pub struct Subscription {
    hub: Arc<Hub>,
    waker: Arc<AtomicWaker>,
    /// Several channels: which of them may have news (see `pending.rs`).
    pending: Option<Arc<PendingSet>>,
    cursors: Vec<Cursor>,
    /// What is to be sent next; at first the connect preamble (comment, `retry:`, a
    /// missed-events notice).
    buf: BytesMut,
    /// The preamble in `buf` has not been handed out yet.
    preamble_due: bool,
    /// The hub's keep-alive tick last looked at: a stream that wrote nothing between two ticks
    /// gets a keep-alive. One hub-wide ticker instead of a timer per connection keeps idle
    /// connections small and costs a delivery nothing.
    tick_seen: u64,
    wrote_since_tick: bool,
    /// The lag policy asked to end the stream once the buffer is out.
    ending: bool,
    /// The second (since the Unix epoch) the stream ends at, its token's expiry; 0: never. Four
    /// bytes (enough until 2106) fit beside the flags, where eight would grow every stream.
    ends_at: u32,
    /// The hub's history epoch when the stream opened (see `Hub::begin_history_at`).
    epoch: u64,
    finished: bool,
    /// Newest position sent: an event published to several of our channels is sent once.
    last_pos: u64,
    /// The merge of several channels: each cursor with a visible event due, by that event's
    /// position. At most one entry per channel, so it is bounded by the channels named, not by
    /// events; kept from one wake to the next (what a full write batch left).
    heads: BinaryHeap<Reverse<(u64, usize)>>,
    // The options a stream needs after it opened, held as compactly as they can be: every idle
    // connection carries them.
    write_batch: usize,
    keepalive: bool,
    ping_event: bool,
    lag_policy: LagPolicy,
    /// Events in the bytes pending, for the delivery counters.
    batch_events: u32,
    /// What the access log says when the stream ends; absent when access logs are off.
    log: Option<Box<StreamLog>>,
}

/// An event stream's access-log record.
struct StreamLog {
    peer: std::net::SocketAddr,
    user: Option<Arc<str>>,
    request_id: Box<str>,
    opened: std::time::Instant,
    events: u64,
    bytes: u64,
    end: StreamEnd,
}

impl Subscription {
    pub(super) fn new(
        hub: Arc<Hub>,
        // The waker every channel wakes, and the marks of a multi-channel subscription.
        (waker, pending): (Arc<AtomicWaker>, Option<Arc<PendingSet>>),
        channels: Vec<(Arc<Channel>, usize)>,
        starts: Vec<u64>,
        missed_notice: Option<Bytes>,
        options: SubscriptionOptions,
        epoch: u64,
    ) -> Self {
        let mut head = BytesMut::with_capacity(64 + missed_notice.as_ref().map_or(0, Bytes::len));
        // No blank line after the preamble, for the same clients as the keep-alive: a block
        // holding only `retry:` is an empty event to them. A conforming client applies `retry:`
        // as soon as it reads the line; the others take it with the first event.
        head.put_slice(b": connected\n");
        if let Some(retry) = options.retry {
            head.put_slice(b"retry: ");
            head.put_slice(itoa::Buffer::new().format(retry.as_millis()).as_bytes());
            head.put_u8(b'\n');
        }
        if let Some(notice) = missed_notice {
            head.put_slice(&notice);
        }
        let cursors = channels.into_iter().zip(starts).map(|((channel, key), next)| Cursor { channel, key, next, queued: false }).collect();
        let tick_seen = hub.keepalive_ticks();
        hub.subscription_opened();
        Subscription {
            hub,
            waker,
            pending,
            cursors,
            buf: head,
            preamble_due: true,
            tick_seen,
            wrote_since_tick: true,
            ending: false,
            ends_at: 0,
            epoch,
            finished: false,
            last_pos: 0,
            heads: BinaryHeap::new(),
            write_batch: options.write_batch,
            keepalive: options.keepalive.is_some(),
            ping_event: options.ping_event,
            lag_policy: options.lag_policy,
            batch_events: 0,
            log: None,
        }
    }

    /// Keeps an access-log record for the stream, written when it ends (`access_log`).
    pub fn log_as(&mut self, peer: std::net::SocketAddr, user: Option<Arc<str>>, request_id: Box<str>) {
        let opened = std::time::Instant::now();
        self.log = Some(Box::new(StreamLog { peer, user, request_id, opened, events: 0, bytes: 0, end: StreamEnd::ClientClosed }));
    }

    /// Records why the stream ends (the first reason given stands), for its access-log line;
    /// whoever writes it says so when a write failed.
    pub fn set_end(&mut self, end: StreamEnd) {
        if let Some(log) = &mut self.log
            && log.end == StreamEnd::ClientClosed
        {
            log.end = end;
        }
    }

    /// Ends the stream at the second `at` (since the Unix epoch): the client reconnects, with a
    /// fresh token, from the last id it got. The hub's upkeep wakes it then.
    pub fn end_at(&mut self, at: u64) {
        self.ends_at = u32::try_from(at).unwrap_or(u32::MAX).max(1);
        self.hub.wake_at(u64::from(self.ends_at), &self.waker);
    }

    /// Copies whatever is ready into `buf`.
    fn fill(&mut self) {
        let mut batch = Batch::default();
        if self.cursors.len() == 1 {
            self.fill_single(&mut batch)
        } else {
            self.fill_merged(&mut batch)
        }
        self.batch_events = self.batch_events.saturating_add(batch.events);
        if let Some(oldest) = batch.oldest
            && counters::time_this_delivery()
        {
            counters::delivery_delay(oldest);
        }
    }

    fn fill_single(&mut self, batch: &mut Batch) {
        // Events past the watermark are in the window but not yet durable.
        let upto = self.hub.watermark();
        loop {
            let c = &mut self.cursors[0];
            match c.channel.log.read_into(&mut c.next, upto, &mut self.buf, self.write_batch, batch) {
                ReadStep::Done => return,
                ReadStep::Lagged(n) => {
                    if !self.lagged(n) {
                        return;
                    }
                }
            }
        }
    }

    /// Several channels, merged in position order up to the hub's watermark (every event up to
    /// it is visible in all its windows): one event at a time from the cursor whose next event
    /// is oldest, until the write batch is full. Nothing is gathered or sorted beyond one
    /// position per channel, so a subscription to many channels holds what one write holds;
    /// and only the channels marked since the last read are looked at, so a wake costs what
    /// changed, not every channel named.
    fn fill_merged(&mut self, batch: &mut Batch) {
        // The watermark before the marks (see `pending.rs`).
        let upto = self.hub.watermark();
        let words = self.pending.as_ref().map_or(0, |p| p.words());
        for w in 0..words {
            let mut bits = self.pending.as_ref().map_or(0, |p| p.take(w));
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // A cursor in the heap already knows its next event; the ones after it are
                // found as it is taken.
                if !self.cursors[i].queued && !self.push_head(i, upto) {
                    return;
                }
            }
        }
        let start = self.buf.len();
        while let Some(Reverse((pos, i))) = self.heads.pop() {
            self.cursors[i].queued = false;
            // Always at least one event per write, however large.
            let room = if self.buf.len() == start { usize::MAX } else { self.write_batch.saturating_sub(self.buf.len() - start) };
            let c = &mut self.cursors[i];
            match c.channel.log.take(&mut c.next, self.last_pos, &mut self.buf, room, batch) {
                Take::Taken { next } => {
                    self.last_pos = self.last_pos.max(pos);
                    if let Some(next) = next {
                        self.queue(i, next, upto);
                    }
                }
                Take::Full => {
                    // Back in the heap for the next write.
                    self.heads.push(Reverse((pos, i)));
                    self.cursors[i].queued = true;
                    break;
                }
                Take::Lagged(skipped) => {
                    // Evicted since it was looked at: say so, and merge on from where it is now.
                    if !self.lagged(skipped) || !self.push_head(i, upto) {
                        return;
                    }
                }
            }
        }
    }

    /// Puts cursor `i` in the merge if it has an event due, telling of any lag on the way.
    /// Returns whether to go on reading.
    fn push_head(&mut self, i: usize, upto: u64) -> bool {
        loop {
            let c = &mut self.cursors[i];
            match c.channel.log.peek(&mut c.next) {
                Ok(Some(pos)) => self.queue(i, pos, upto),
                Ok(None) => {}
                Err(skipped) if self.lagged(skipped) => continue,
                Err(_) => return false,
            }
            return true;
        }
    }

    /// Cursor `i`'s next event is at `pos`: merged if visible; if not yet, its channel is marked
    /// again, to be looked at once the watermark passes it (the watermark moves, then wakes).
    fn queue(&mut self, i: usize, pos: u64, upto: u64) {
        if pos <= upto {
            self.heads.push(Reverse((pos, i)));
            self.cursors[i].queued = true;
        } else if let Some(pending) = &self.pending {
            pending.mark(i as u32);
        }
    }

    /// Writes the lag notice; returns whether to go on reading.
    fn lagged(&mut self, skipped: u64) -> bool {
        counters::lagged(skipped);
        self.buf.put_slice(b"event: error\ndata: lagged: ");
        self.buf.put_slice(itoa::Buffer::new().format(skipped).as_bytes());
        self.buf.put_slice(b" messages skipped\n\n");
        match self.lag_policy {
            LagPolicy::Notify => true,
            LagPolicy::Disconnect => {
                self.ending = true;
                false
            }
        }
    }
}

/// A send buffer grown past this by a burst is let go once written, so that a quiet
/// subscription does not keep a large allocation.
const KEEP_BUFFER: usize = 4096;

impl Subscription {
    /// Makes the next bytes to send ready in [`pending`](Self::pending): the preamble, a batch
    /// of frames, a lag notice or a keep-alive. `Ready(false)` once the stream is over (the hub
    /// is closing, or the lag policy ended it). The caller writes them and calls
    /// [`sent`](Self::sent); the buffer is reused, so delivery allocates nothing.
    pub fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if std::mem::take(&mut self.preamble_due) {
            return Poll::Ready(true);
        }
        if self.finished {
            return Poll::Ready(false);
        }
        // Register before reading: an event published after the read wakes us.
        self.waker.register(cx.waker());
        if self.hub.is_closing() {
            self.set_end(StreamEnd::Shutdown);
            self.finished = true;
            return Poll::Ready(self.put_shutdown_retry());
        }
        if self.ends_at != 0 && super::unix_now() >= u64::from(self.ends_at) {
            self.set_end(StreamEnd::TokenExpired);
            self.finished = true;
            return Poll::Ready(false);
        }
        if !self.ending {
            self.fill();
        }
        // Checked after reading: events read past a discontinuity are never sent as if
        // nothing was lost. The client reconnects with the last id it got.
        if self.hub.history_epoch() != self.epoch {
            self.buf.clear();
            self.batch_events = 0;
            self.set_end(StreamEnd::HistoryReset);
            self.finished = true;
            return Poll::Ready(false);
        }
        if !self.buf.is_empty() {
            self.wrote_since_tick = true;
            self.finished = self.ending;
            if self.ending {
                self.set_end(StreamEnd::Lagged);
            }
            return Poll::Ready(true);
        }
        if self.ending {
            self.set_end(StreamEnd::Lagged);
            self.finished = true;
            return Poll::Ready(false);
        }
        if self.keepalive {
            let tick = self.hub.keepalive_ticks();
            if tick != self.tick_seen {
                self.tick_seen = tick;
                // Only a stream that was idle for a whole tick needs a keep-alive.
                if !std::mem::take(&mut self.wrote_since_tick) {
                    self.buf.extend_from_slice(if self.ping_event { KEEPALIVE_PING } else { KEEPALIVE_COMMENT });
                    return Poll::Ready(true);
                }
            }
        }
        Poll::Pending
    }

    /// At shutdown: a `retry:` line of about `shutdown_retry` (between half and one and a half
    /// times it, spread by the subscription's address so that clients do not all come back in
    /// the same millisecond), with no blank line after it, as in the preamble. Whether there
    /// is one.
    fn put_shutdown_retry(&mut self) -> bool {
        let base = self.hub.config().shutdown_retry.as_millis() as u64;
        if base == 0 {
            return false;
        }
        // Fibonacci hashing of the waker's address: cheap, and different per subscription.
        let spread = (Arc::as_ptr(&self.waker) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let millis = base / 2 + spread % base.max(1);
        self.buf.put_slice(b"retry: ");
        self.buf.put_slice(itoa::Buffer::new().format(millis.max(1)).as_bytes());
        self.buf.put_u8(b'\n');
        true
    }

    /// The bytes made ready by [`poll_pending`](Self::poll_pending).
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// The pending bytes have been written.
    pub fn sent(&mut self) {
        self.count_sent(self.buf.len());
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = BytesMut::new();
        } else {
            self.buf.clear();
        }
    }

    /// The next bytes to send as an owned chunk, for a caller that queues them (hyper).
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.poll_pending(cx).map(|more| {
            more.then(|| {
                // Handed to hyper, which writes it: counted as sent here.
                self.count_sent(self.buf.len());
                self.buf.split().freeze()
            })
        })
    }

    /// Counts a write of `bytes` (and the events in it) for the metrics and the access log.
    fn count_sent(&mut self, bytes: usize) {
        let events = std::mem::take(&mut self.batch_events);
        counters::delivered(events, bytes);
        if let Some(log) = &mut self.log {
            log.events += u64::from(events);
            log.bytes += bytes as u64;
        }
    }
}

/// As a response body, for connections hyper serves (HTTP/2).
impl Body for Subscription {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().poll_chunk(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            // A user's own logs are the stream's user, not channels it named.
            let channels: Vec<&str> =
                self.cursors.iter().map(|c| &*c.channel.name).filter(|name| !super::users::is_user_log(name)).collect();
            access::stream_ended(&access::StreamLine {
                peer: log.peer,
                channels: &channels.join(","),
                user: log.user.as_deref(),
                lasted: log.opened.elapsed(),
                events: log.events,
                bytes: log.bytes,
                end: log.end,
                request_id: &log.request_id,
            });
        }
        for c in &self.cursors {
            if self.pending.is_some() { c.channel.unregister_merged(c.key) } else { c.channel.unregister(c.key) }
        }
        self.hub.subscription_closed();
    }
}
