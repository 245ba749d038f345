//! Encoding events to `text/event-stream` bytes.
//!
//! An event is encoded once at publish time. Its `id:` line is written last: field order inside an
//! event block does not matter to a client (the event is dispatched at the blank line), and
//! putting the id last lets the publish path encode the payload outside the hub's sequencing lock
//! and append only the few bytes of the id once the id is known.

use bytes::{BufMut, Bytes, BytesMut};

/// Longest `id` or `event` value accepted from a publisher, in bytes.
pub const MAX_FIELD_LEN: usize = 256;

/// Why a field value cannot be written to the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    #[error("`{0}` must not contain CR, LF or NUL (it would inject SSE fields)")]
    LineBreak(&'static str),
    #[error("`{0}` is longer than {MAX_FIELD_LEN} bytes")]
    TooLong(&'static str),
}

/// Check an `id` or `event` value: a line break would let a publisher inject fields or whole
/// events into every subscriber's stream, and NUL in an id makes clients ignore it.
pub fn check_field(name: &'static str, value: &str) -> Result<(), EncodeError> {
    if value.is_empty() {
        return Err(EncodeError::Empty(name));
    }
    if value.len() > MAX_FIELD_LEN {
        return Err(EncodeError::TooLong(name));
    }
    if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(EncodeError::LineBreak(name));
    }
    Ok(())
}

/// Room reserved after the payload so that appending `id: <u64>\n\n` never reallocates.
const ID_TAIL_RESERVE: usize = 4 + 20 + 2;

/// Builds one event block. Fields are validated by [`check_field`] before they get here.
pub struct FrameBuilder {
    buf: BytesMut,
}

impl FrameBuilder {
    /// Starts a block with its `event:`, `retry:` and `data:` lines.
    pub fn new(event: Option<&str>, data: &str, retry_ms: Option<u64>) -> Self {
        let mut buf = BytesMut::with_capacity(data.len() + 16 + ID_TAIL_RESERVE + event.map_or(0, |e| e.len() + 8));
        if let Some(event) = event {
            buf.put_slice(b"event: ");
            buf.put_slice(event.as_bytes());
            buf.put_u8(b'\n');
        }
        if let Some(ms) = retry_ms {
            buf.put_slice(b"retry: ");
            buf.put_slice(itoa::Buffer::new().format(ms).as_bytes());
            buf.put_u8(b'\n');
        }
        put_data_lines(&mut buf, data);
        FrameBuilder { buf }
    }

    /// Size of the block so far (everything but the id line).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Always false: a block has at least one `data:` line.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The block so far (everything but the id line), to finish elsewhere: a cluster node sends
    /// it over the bus, and every node ends it with the id the bus gave.
    pub fn into_partial(self) -> Bytes {
        self.buf.freeze()
    }

    /// A block received as [`into_partial`](Self::into_partial) made it.
    pub fn from_partial(partial: &[u8]) -> Self {
        let mut buf = BytesMut::with_capacity(partial.len() + ID_TAIL_RESERVE);
        buf.put_slice(partial);
        FrameBuilder { buf }
    }

    /// Ends the block with a numeric id.
    pub fn finish_with_seq(mut self, id: u64) -> Bytes {
        self.buf.put_slice(b"id: ");
        self.buf.put_slice(itoa::Buffer::new().format(id).as_bytes());
        self.buf.put_slice(b"\n\n");
        self.buf.freeze()
    }

    /// Ends the block with a publisher's id (already checked by [`check_field`]).
    pub fn finish_with_id(mut self, id: &str) -> Bytes {
        self.buf.reserve(id.len() + 6);
        self.buf.put_slice(b"id: ");
        self.buf.put_slice(id.as_bytes());
        self.buf.put_slice(b"\n\n");
        self.buf.freeze()
    }
}

/// Writes `data` as one `data:` line per line of input. LF, CR and CRLF all end a line, as they
/// do for the parser, so a client reassembles the text with LF between lines.
fn put_data_lines(buf: &mut BytesMut, data: &str) {
    let bytes = data.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' | b'\r' => {
                put_data_line(buf, &bytes[start..i]);
                if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    put_data_line(buf, &bytes[start..]);
}

fn put_data_line(buf: &mut BytesMut, line: &[u8]) {
    buf.put_slice(b"data: ");
    buf.put_slice(line);
    buf.put_u8(b'\n');
}

/// An event block without an id (Herald's own notices: they must not move the client's
/// last-event-id, or its next reconnect would skip real events).
pub fn notice(event: &str, data: &str) -> Bytes {
    FrameBuilder::new(Some(event), data, None).finish_without_id()
}

impl FrameBuilder {
    fn finish_without_id(mut self) -> Bytes {
        self.buf.put_u8(b'\n');
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_data_is_split_on_every_line_ending() {
        let f = FrameBuilder::new(Some("t"), "a\nb\r\nc\rd", Some(1500)).finish_with_seq(7);
        assert_eq!(&f[..], b"event: t\nretry: 1500\ndata: a\ndata: b\ndata: c\ndata: d\nid: 7\n\n");
    }

    #[test]
    fn empty_and_trailing_lines_survive() {
        assert_eq!(&FrameBuilder::new(None, "", None).finish_with_id("x")[..], b"data: \nid: x\n\n");
        assert_eq!(&FrameBuilder::new(None, "a\n", None).finish_with_seq(1)[..], b"data: a\ndata: \nid: 1\n\n");
    }

    #[test]
    fn injected_fields_are_rejected() {
        assert_eq!(check_field("id", "1\ndata: x"), Err(EncodeError::LineBreak("id")));
        assert_eq!(check_field("event", "a\rb"), Err(EncodeError::LineBreak("event")));
        assert_eq!(check_field("id", "a\0"), Err(EncodeError::LineBreak("id")));
        assert_eq!(check_field("id", ""), Err(EncodeError::Empty("id")));
        assert!(check_field("id", &"x".repeat(300)).is_err());
        assert!(check_field("event", "order.created").is_ok());
    }
}
