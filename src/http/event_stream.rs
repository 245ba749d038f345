//! Event streams served straight onto the socket.
//!
//! An idle HTTP/1 subscriber is most of what a hub holds, so its connection keeps no more than
//! the subscription's cursors: no per-connection read or write buffer, no HTTP state machine.
//! The subscribe handler still runs through the router (validation, CORS and errors stay in one
//! place); it leaves the subscription in a [`Handoff`] that the connection takes over. Over
//! HTTP/2, hyper polls the same handoff as an ordinary response body.

use crate::hub::Subscription;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A subscription waiting for whoever serves the response: carried as a response extension
/// (for the socket path) and as the response body (for hyper).
#[derive(Clone)]
pub struct Handoff(Arc<Mutex<Option<Subscription>>>);

impl Handoff {
    pub fn new(subscription: Subscription) -> Self {
        Handoff(Arc::new(Mutex::new(Some(subscription))))
    }

    /// Takes the subscription; the body then ends at once if anybody polls it.
    pub fn take(&self) -> Option<Subscription> {
        self.0.lock().take()
    }

    pub fn into_body(self) -> HandoffBody {
        HandoffBody::Waiting(self)
    }
}

/// The response body hyper polls: the subscription, taken from the handoff on first poll.
pub enum HandoffBody {
    Waiting(Handoff),
    Streaming(Box<Subscription>),
    Done,
}

impl Body for HandoffBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let HandoffBody::Waiting(handoff) = this {
            *this = match handoff.take() {
                Some(sub) => HandoffBody::Streaming(Box::new(sub)),
                None => HandoffBody::Done,
            };
        }
        match this {
            HandoffBody::Streaming(sub) => sub.poll_chunk(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes)))),
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

/// Serialises a response head for HTTP/1.1. `body_len` of `None` means the body runs until the
/// connection closes, which is how an event stream is delimited here: no chunk framing to
/// write around every batch, and it works for HTTP/1.0 clients as well.
pub fn response_head(parts: &http::response::Parts, body_len: Option<usize>, close: bool) -> Vec<u8> {
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
    if let Some(len) = body_len {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes `head` and then the subscription's output until the stream ends or the client goes.
pub async fn pump(stream: &mut TcpStream, head: Vec<u8>, mut sub: Subscription) -> io::Result<()> {
    // The head and the preamble (always ready) leave in one write.
    let mut first = head;
    if let Poll::Ready(true) = sub.poll_pending(&mut Context::from_waker(std::task::Waker::noop())) {
        first.extend_from_slice(sub.pending());
        sub.sent();
    }
    stream.write_all(&first).await?;
    drop(first);
    loop {
        let next = std::future::poll_fn(|cx| match sub.poll_pending(cx) {
            Poll::Ready(more) => Poll::Ready(Some(more)),
            // Only a stream with nothing to write needs to watch for the client going away: a
            // write to a closed connection fails by itself.
            Poll::Pending if peer_closed(stream, cx) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        match next {
            Some(true) => {
                stream.write_all(sub.pending()).await?;
                sub.sent();
            }
            // The hub is closing or the lag policy ended the stream: close it cleanly.
            Some(false) => return stream.shutdown().await,
            None => return Ok(()),
        }
    }
}

/// Whether the client has closed its side. An event stream has nothing more to read, so
/// whatever arrives (a careless client's pipelined bytes) is read and dropped; a stack buffer
/// is enough for that, so an idle connection holds no read buffer.
fn peer_closed(stream: &TcpStream, cx: &mut Context<'_>) -> bool {
    // A client that keeps sending gets no more than this many reads per wake-up.
    for _ in 0..16 {
        match stream.poll_read_ready(cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(())) => {}
        }
        let mut sink = [0u8; 512];
        match stream.try_read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return true,
        }
    }
    cx.waker().wake_by_ref();
    false
}
