//! Event streams served straight onto the socket.
//!
//! An idle HTTP/1 subscriber is most of what a hub holds, so its connection keeps no more than
//! the subscription's cursors: no per-connection read or write buffer, no HTTP state machine.
//! The subscribe handler still runs through the router (validation, CORS and errors stay in one
//! place); it leaves the subscription in a [`Handoff`] that the connection takes over. Over
//! HTTP/2, hyper polls the same handoff as an ordinary response body.

use super::socket::Socket;
use crate::access::Admission;
use crate::hub::Subscription;
use crate::telemetry::access::StreamEnd;
use crate::telemetry::counters;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A subscription waiting for whoever serves the response: carried as a response extension
/// (for the socket path) and as the response body (for hyper).
#[derive(Clone)]
pub struct Handoff(Arc<Mutex<Option<(Subscription, Admission)>>>);

impl Handoff {
    /// The subscription, and what access control's admission holds while it streams.
    pub fn new(subscription: Subscription, admission: Admission) -> Self {
        Handoff(Arc::new(Mutex::new(Some((subscription, admission)))))
    }

    /// Takes the subscription; the body then ends at once if anybody polls it.
    pub fn take(&self) -> Option<(Subscription, Admission)> {
        self.0.lock().take()
    }

    pub fn into_body(self) -> HandoffBody {
        HandoffBody::Waiting(self)
    }
}

/// The response body hyper polls: the subscription, taken from the handoff on first poll.
pub enum HandoffBody {
    Waiting(Handoff),
    Streaming(Box<(Subscription, Admission)>),
    Done,
}

impl Body for HandoffBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let HandoffBody::Waiting(handoff) = this {
            *this = match handoff.take() {
                Some(taken) => HandoffBody::Streaming(Box::new(taken)),
                None => HandoffBody::Done,
            };
        }
        match this {
            HandoffBody::Streaming(taken) => taken.0.poll_chunk(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes)))),
            _ => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, HandoffBody::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// How the body after an HTTP/1 response head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// A body of this many bytes (every answer that is not an event stream).
    Exact(usize),
    /// `Transfer-Encoding: chunked`, each write one chunk: an HTTP/1.1 event stream. A client
    /// that reads fixed-size blocks (Python's `requests` and `urllib3` do) can only tell where a
    /// close-delimited body's bytes end by waiting for the block to fill; a chunk tells it how
    /// many bytes to wait for, so each event is handed over as it arrives.
    Chunked,
    /// Until the connection closes: an HTTP/1.0 event stream (HTTP/1.0 has no chunks).
    UntilClose,
}

/// Serialises a response head for HTTP/1.1.
pub fn response_head(parts: &http::response::Parts, length: BodyLength, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING || name == http::header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    out.extend_from_slice(b"\r\n");
    match length {
        BodyLength::Exact(len) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyLength::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyLength::UntilClose => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A subscription's response, ready to stream on the socket.
pub struct OpenStream {
    /// The response head, sent with the preamble.
    pub head: Vec<u8>,
    pub length: BodyLength,
    pub sub: Subscription,
    /// Held until the stream ends (its drop gives access control's slot back); never read.
    #[allow(dead_code)]
    pub admission: Admission,
}

/// Writes the head and then the subscription's output until the stream ends or the client
/// goes, as chunks when the length is [`BodyLength::Chunked`]. The stream is borrowed, not
/// taken, so that the connection's task holds it once. A write that waits longer than
/// `write_timeout` for the socket to drain ends the stream.
pub async fn pump<S: Socket>(stream: &mut S, open: &mut OpenStream, write_timeout: WriteTimeout) -> io::Result<()> {
    // One async function with the fields borrowed apart, so that its future (part of every
    // idle stream's task) holds references and one write, not a second copy of the head.
    let OpenStream { head, length, sub, .. } = open;
    let chunked = *length == BodyLength::Chunked;
    // The head and the preamble (always ready) leave in one write.
    if let Poll::Ready(true) = sub.poll_pending(&mut Context::from_waker(std::task::Waker::noop())) {
        if chunked {
            chunk::put(head, sub.pending());
        } else {
            head.extend_from_slice(sub.pending());
        }
        sub.sent();
    }
    let first = write_within(stream, head, false, write_timeout).await;
    *head = Vec::new();
    first.map_err(|e| failed(sub, e))?;
    loop {
        let next = std::future::poll_fn(|cx| match sub.poll_pending(cx) {
            Poll::Ready(more) => Poll::Ready(Some(more)),
            // Only a stream with nothing to write needs to watch for the client going away: a
            // write to a closed connection fails by itself.
            Poll::Pending if stream.poll_peer_closed(cx) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        match next {
            Some(true) => write_within(stream, sub.pending(), chunked, write_timeout).await.map_err(|e| failed(sub, e))?,
            // The hub is closing or the lag policy ended the stream: end it cleanly (a chunked
            // body with its last chunk, so the client can tell an end from a cut).
            Some(false) => {
                if chunked {
                    write_within(stream, chunk::LAST, false, write_timeout).await.map_err(|e| failed(sub, e))?;
                }
                return stream.shutdown().await;
            }
            None => return Ok(()),
        }
        sub.sent();
    }
}

/// Records why the stream ended when a write failed (`TimedOut`: the write timeout).
fn failed(sub: &mut Subscription, e: io::Error) -> io::Error {
    let end = if e.kind() == io::ErrorKind::TimedOut {
        counters::write_timed_out();
        StreamEnd::WriteTimeout
    } else {
        StreamEnd::WriteFailed
    };
    sub.set_end(end);
    e
}

/// `limits.write_timeout` in milliseconds, 0 for none: four bytes rather than an
/// `Option<Duration>`'s sixteen, in a future every idle stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteTimeout(u32);

impl WriteTimeout {
    pub fn new(limit: Duration) -> Self {
        WriteTimeout(u32::try_from(limit.as_millis()).unwrap_or(u32::MAX))
    }

    pub fn get(self) -> Option<Duration> {
        (self.0 > 0).then(|| Duration::from_millis(u64::from(self.0)))
    }
}

/// Writes `data` (as one chunk when `chunked`) and flushes it (TLS holds what the socket did
/// not take), failing with `TimedOut` when the socket does not drain within `limit`.
fn write_within<'a, S: Socket>(stream: &'a mut S, data: &'a [u8], chunked: bool, limit: WriteTimeout) -> chunk::StreamWrite<'a, S> {
    chunk::StreamWrite::new(stream, data, chunked, limit)
}

/// HTTP/1.1 chunks (RFC 9112, section 7.1), written without copying the data.
mod chunk {
    use std::io::{self, IoSlice};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::AsyncWrite;

    /// The last chunk, with no trailer fields.
    pub const LAST: &[u8] = b"0\r\n\r\n";

    /// Longest size line: 16 hex digits and CRLF.
    const SIZE_LINE: usize = 18;

    /// The size line of a chunk of `len` bytes, in `line`; returns its length.
    fn size_line(len: usize, line: &mut [u8; SIZE_LINE]) -> usize {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
        for (i, slot) in line[..digits].iter_mut().enumerate() {
            *slot = HEX[(len >> (4 * (digits - 1 - i))) & 0xf];
        }
        line[digits..digits + 2].copy_from_slice(b"\r\n");
        digits + 2
    }

    /// Appends `data` as one chunk to `out`.
    pub fn put(out: &mut Vec<u8>, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut line = [0u8; SIZE_LINE];
        let n = size_line(data.len(), &mut line);
        out.extend_from_slice(&line[..n]);
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }

    /// One write of a stream: `data` (with its size line and CRLF around it when chunked, all
    /// in one `writev`, so a chunked write costs the system call a close-delimited one does),
    /// then a flush. An empty chunk is skipped, as it would end the body. The write's clock
    /// starts only if the socket is full: a write that completes at once, nearly all of them,
    /// reads no clock and arms no timer.
    ///
    /// Kept small on purpose: it is part of every stream's task, idle ones included, so it
    /// holds the size line and a count, makes its `IoSlice`s on each poll, and boxes its timer.
    pub struct StreamWrite<'a, S> {
        stream: &'a mut S,
        data: &'a [u8],
        line: [u8; SIZE_LINE],
        line_len: u8,
        /// Bytes of the CRLF after the data: 2 when chunked.
        tail: u8,
        written: usize,
        limit: super::WriteTimeout,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl<'a, S: AsyncWrite + Unpin> StreamWrite<'a, S> {
        pub fn new(stream: &'a mut S, data: &'a [u8], chunked: bool, limit: super::WriteTimeout) -> Self {
            let mut line = [0u8; SIZE_LINE];
            let framed = chunked && !data.is_empty();
            let line_len = if framed { size_line(data.len(), &mut line) as u8 } else { 0 };
            // An empty chunk is never written: nothing to write but the flush.
            let data = if chunked && data.is_empty() { &[][..] } else { data };
            StreamWrite { stream, data, line, line_len, tail: if framed { 2 } else { 0 }, written: 0, limit, deadline: None }
        }

        /// The socket is full: `Pending` until it drains, or `TimedOut` once `limit` has passed.
        fn wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let Some(limit) = self.limit.get() else { return Poll::Pending };
            let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading (limits.write_timeout)")))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }

    impl<S: AsyncWrite + Unpin> Future for StreamWrite<'_, S> {
        type Output = io::Result<()>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let total = usize::from(this.line_len) + this.data.len() + usize::from(this.tail);
            while this.written < total {
                let line = &this.line[..usize::from(this.line_len)];
                let mut parts = [IoSlice::new(line), IoSlice::new(this.data), IoSlice::new(&b"\r\n"[..usize::from(this.tail)])];
                let mut left = &mut parts[..];
                IoSlice::advance_slices(&mut left, this.written);
                match Pin::new(&mut *this.stream).poll_write_vectored(cx, left) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => this.written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return this.wait(cx),
                }
            }
            match Pin::new(&mut *this.stream).poll_flush(cx) {
                Poll::Ready(done) => Poll::Ready(done),
                Poll::Pending => this.wait(cx),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::time::Duration;

        #[test]
        fn size_lines_are_lowercase_hex_without_leading_zeros() {
            let mut line = [0u8; SIZE_LINE];
            for (len, want) in [(1, "1"), (15, "f"), (16, "10"), (255, "ff"), (4096, "1000"), (200_017, "30d51")] {
                let n = size_line(len, &mut line);
                assert_eq!(std::str::from_utf8(&line[..n]).unwrap(), format!("{want}\r\n"));
            }
            let n = size_line(usize::MAX, &mut line);
            assert_eq!(&line[..n], b"ffffffffffffffff\r\n");
        }

        #[tokio::test]
        async fn a_write_the_reader_does_not_drain_times_out_and_one_it_drains_does_not() {
            let (mut ours, _theirs) = tokio::io::duplex(16);
            let data = [b'x'; 64];
            let err = StreamWrite::new(&mut ours, &data, true, crate::http::event_stream::WriteTimeout::new(Duration::from_millis(50)))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            // Drained as it goes: done, framed as one chunk.
            let (mut ours, mut theirs2) = tokio::io::duplex(16);
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut theirs2, &mut got).await.unwrap();
                got
            });
            StreamWrite::new(&mut ours, &data, true, crate::http::event_stream::WriteTimeout::new(Duration::from_secs(5))).await.unwrap();
            StreamWrite::new(&mut ours, b"", true, crate::http::event_stream::WriteTimeout::new(Duration::from_secs(5))).await.unwrap();
            StreamWrite::new(&mut ours, LAST, false, crate::http::event_stream::WriteTimeout::new(Duration::ZERO)).await.unwrap();
            drop(ours);
            let mut want = b"40\r\n".to_vec();
            want.extend_from_slice(&data);
            want.extend_from_slice(b"\r\n0\r\n\r\n");
            assert_eq!(reader.await.unwrap(), want);
        }

        #[test]
        fn an_empty_chunk_is_never_put() {
            let mut out = Vec::new();
            put(&mut out, b"");
            assert!(out.is_empty());
            put(&mut out, b"data: x\n\n");
            assert_eq!(out, b"9\r\ndata: x\n\n\r\n");
        }
    }
}
