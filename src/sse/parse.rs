//! An incremental `text/event-stream` parser that follows the WHATWG "Server-sent events"
//! interpretation rules exactly: BOM, the three line endings (also when a CRLF is split across two
//! reads), comments, fields without a colon, the single optional space after the colon, ids with
//! NUL ignored, `retry` accepted only as ASCII digits, and no dispatch for an empty data buffer.

/// One dispatched event, as an `EventSource` would deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEvent {
    /// The event type: the `event:` field, or `message` when there was none.
    pub event: String,
    pub data: String,
    /// The last event id in force when the event was dispatched (empty when none was ever set).
    pub last_event_id: String,
    /// The event had an `id` field of its own; else `last_event_id` is an earlier event's.
    pub has_id: bool,
}

/// What the parser produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Event(MessageEvent),
    /// A comment line without its leading colon (and without one leading space).
    Comment(String),
    /// A valid `retry:` field: the reconnection time in milliseconds.
    Retry(u64),
}

#[derive(Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The previous chunk ended in CR: an LF at the start of the next one belongs to that line end.
    after_cr: bool,
    bom_checked: bool,
    bom_head: Vec<u8>,
    data: String,
    event: String,
    /// The last event ID buffer (set by `id:`, copied to the event at dispatch).
    id_buffer: String,
    /// An `id` field was seen since the last dispatch.
    id_seen: bool,
    last_event_id: String,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last event id as it stands after the events parsed so far: what a client sends back in
    /// `Last-Event-ID` when it reconnects.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Feeds bytes and appends every complete item to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Item>) {
        const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];
        if self.bom_checked {
            return self.feed_lines(chunk, out);
        }
        // A BOM can be split across reads: hold the first bytes until they decide.
        let mut head = std::mem::take(&mut self.bom_head);
        head.extend_from_slice(chunk);
        if head.len() < 3 && BOM.starts_with(&head) {
            self.bom_head = head;
            return;
        }
        self.bom_checked = true;
        let skip = if head.starts_with(&BOM) { 3 } else { 0 };
        self.feed_lines(&head[skip..], out);
    }

    fn feed_lines(&mut self, mut chunk: &[u8], out: &mut Vec<Item>) {
        // An empty read says nothing about the LF a CR may still be waiting for.
        if chunk.is_empty() {
            return;
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line_end = chunk[end];
            if self.line.is_empty() {
                self.process_line(&chunk[..end], out);
            } else {
                self.line.extend_from_slice(&chunk[..end]);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, out);
                self.line = line;
                self.line.clear();
            }
            chunk = &chunk[end + 1..];
            if line_end == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    None => self.after_cr = true,
                    _ => {}
                }
            }
        }
        self.line.extend_from_slice(chunk);
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<Item>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        let line = String::from_utf8_lossy(line);
        if let Some(comment) = line.strip_prefix(':') {
            out.push(Item::Comment(comment.strip_prefix(' ').unwrap_or(comment).to_owned()));
            return;
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(' ').unwrap_or(value))
            }
            None => (&line[..], ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => {
                value.clone_into(&mut self.id_buffer);
                self.id_seen = true;
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // Digits only, so the one failure left is overflow: ignored like any bad value.
                if let Ok(ms) = value.parse() {
                    out.push(Item::Retry(ms));
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Item>) {
        self.last_event_id.clone_from(&self.id_buffer);
        let has_id = std::mem::take(&mut self.id_seen);
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        self.data.pop(); // the data buffer always ends in the LF added after its last line
        let event = if self.event.is_empty() { "message".to_owned() } else { std::mem::take(&mut self.event) };
        out.push(Item::Event(MessageEvent {
            event,
            data: std::mem::take(&mut self.data),
            last_event_id: self.last_event_id.clone(),
            has_id,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::encode::FrameBuilder;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Item> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        out
    }

    fn ev(event: &str, data: &str, id: &str) -> Item {
        Item::Event(MessageEvent { event: event.into(), data: data.into(), last_event_id: id.into(), has_id: !id.is_empty() })
    }

    #[test]
    fn spec_examples() {
        let items = parse_all(&[b"data: YHOO\ndata: +2\ndata: 10\n\n"]);
        assert_eq!(items, vec![ev("message", "YHOO\n+2\n10", "")]);
        let items = parse_all(&[b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"]);
        assert_eq!(
            items,
            vec![
                Item::Comment("test stream".into()),
                ev("message", "first event", "1"),
                // `id` with no value: an id of its own, the empty one.
                Item::Event(MessageEvent {
                    event: "message".into(),
                    data: "second event".into(),
                    last_event_id: String::new(),
                    has_id: true
                }),
                ev("message", " third event", "")
            ]
        );
        let items = parse_all(&[b"data\n\ndata\ndata\n\ndata:"]);
        assert_eq!(items, vec![ev("message", "", ""), ev("message", "\n", "")]);
    }

    #[test]
    fn line_endings_and_split_crlf() {
        let items = parse_all(&[b"event: a\rdata: 1\r", b"\ndata: 2\r\n\r", b"\n"]);
        assert_eq!(items, vec![ev("a", "1\n2", "")]);
    }

    #[test]
    fn an_empty_chunk_between_cr_and_lf_changes_nothing() {
        let items = parse_all(&[b"data: a\r", b"", b"\ndata: b\n\n"]);
        assert_eq!(items, vec![ev("message", "a\nb", "")]);
    }

    #[test]
    fn bom_nul_ids_and_retry() {
        let items = parse_all(&[b"\xEF\xBB", b"\xBFid: a\0b\nretry: 12x\nretry: 250\ndata: x\n\n"]);
        assert_eq!(items, vec![Item::Retry(250), ev("message", "x", "")]);
    }

    #[test]
    fn byte_at_a_time_equals_whole() {
        let frame = FrameBuilder::new(Some("t"), "l1\r\nl2\n\nl4 é", Some(9)).finish_with_seq(42);
        let whole = parse_all(&[&frame]);
        let bytes: Vec<&[u8]> = frame.chunks(1).collect();
        assert_eq!(parse_all(&bytes), whole);
        assert_eq!(whole, vec![Item::Retry(9), ev("t", "l1\nl2\n\nl4 é", "42")]);
    }
}
