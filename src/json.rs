//! Herald's JSON event format (`{"id"?, "event"?, "data", "retry"?, "channel"?, …}`), which HTTP
//! publishers send and broker messages may carry, and JSON values passed on as their publisher
//! wrote them. Every publish path takes an event's `data` and `id` as
//! [`serde_json::value::RawValue`], checked but not parsed into numbers and maps, and hands the
//! text on through [`data_text`] and [`string_text`], so key order, numbers' digits and escapes
//! survive.

use crate::event::Draft;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Ids and data are kept as the publisher wrote them ([`RawValue`]): a JSON value in `data` is
/// passed on byte for byte less its insignificant whitespace (keys in their order, numbers as
/// their text, escapes as written), and a numeric id keeps its digits however many there are.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    #[serde(default)]
    pub id: Option<Box<RawValue>>,
    #[serde(default)]
    pub event: Option<String>,
    pub data: Box<RawValue>,
    #[serde(default)]
    pub retry: Option<u64>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    /// ssehub's name for the channel; on `POST /sse/{channel}` the URL wins, as in ssehub.
    #[serde(default)]
    pub path: Option<String>,
    /// The users the event is addressed to: it reaches only their streams (of its channels, or
    /// all of their streams when it names no channel).
    #[serde(default)]
    pub users: Option<Vec<String>>,
}

impl EventInput {
    /// The event itself, taken out of the input (which keeps where it goes).
    pub fn take_draft(&mut self) -> Result<Draft, String> {
        let id = match self.id.take().as_deref().map(RawValue::get) {
            None | Some("null") => None,
            Some(raw) if raw.starts_with('"') => Some(string_text(raw)),
            // ssehub publishers send numeric ids: their digits, exactly.
            Some(raw) if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => Some(raw.to_owned()),
            Some(_) => return Err("`id` must be a string or a number".into()),
        };
        Ok(Draft { id, event: self.event.take(), data: data_text(self.data.get()), retry: self.retry })
    }
}

/// An event's `data` from its JSON value: a string is its text, any other value its JSON text
/// less insignificant whitespace. Every publish path takes data through this one function.
pub fn data_text(raw: &str) -> String {
    if raw.starts_with('"') { string_text(raw) } else { compact(raw) }
}

/// The text of a JSON string that serde_json has already checked (escapes resolved).
pub fn string_text(raw: &str) -> String {
    // Without a backslash the text is what lies between the quotes (most data is such text);
    // only escapes need a second parse.
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => inner.to_owned(),
        _ => serde_json::from_str(raw).expect("a JSON string serde_json has validated"),
    }
}

/// Valid JSON text without its insignificant whitespace: everything else (key order, numbers'
/// text, escapes) stays byte for byte what the publisher sent, which a parse and re-serialise
/// would not keep (`{"z":1,"a":2}` reordered, `123456789012345678901234567890` rounded).
///
/// Works on bytes: whitespace, quotes and backslashes are ASCII and never part of a multi-byte
/// UTF-8 sequence, so the runs between whitespace are copied whole. Meant for text serde_json
/// has validated; on anything else it still returns without panicking.
pub fn compact(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip to the closing quote: a string is copied as it is, spaces and all.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.extend_from_slice(&bytes[run..i]);
                run = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.extend_from_slice(&bytes[run..]);
    String::from_utf8(out).expect("whitespace removed from UTF-8 at ASCII bytes is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_keeps_everything_but_insignificant_whitespace() {
        let raw = "{ \"z\" : 1,\n \"a\": [ 0.1000, 123456789012345678901234567890 ],\t\"s\": \" sp \\\" \\u00e9 é\" }";
        assert_eq!(compact(raw), "{\"z\":1,\"a\":[0.1000,123456789012345678901234567890],\"s\":\" sp \\\" \\u00e9 é\"}");
        assert_eq!(compact("[ \"\\\\\", 2 ]"), "[\"\\\\\",2]", "an escaped backslash ends before the quote");
        assert_eq!(compact(" \r\n\t12.50e-3 "), "12.50e-3");
        assert_eq!(compact("\"日本 語\""), "\"日本 語\"");
        assert_eq!(compact("{}"), "{}");
        // Not JSON (never passed here by the publish paths): no panic.
        assert_eq!(compact("\"open \\"), "\"open \\");
    }

    #[test]
    fn compact_is_the_text_less_whitespace_for_any_value() {
        // Against serde_json's own view: the compacted text parses to the same value, and has
        // no whitespace outside strings left.
        for raw in ["{\"a\" : [1, {\"b\" :\"c d\"}], \"e\": null}", "[ true , false ]", "\"x\"", " -0.0 "] {
            let compacted = compact(raw);
            let a: serde_json::Value = serde_json::from_str(raw).unwrap();
            let b: serde_json::Value = serde_json::from_str(&compacted).unwrap();
            assert_eq!(a, b, "{raw}");
            assert_eq!(compacted.len(), raw.len() - raw.matches(' ').count() + compacted.matches(' ').count(), "{raw}");
        }
    }

    #[test]
    fn string_text_resolves_escapes() {
        assert_eq!(string_text("\"caf\\u00e9 \\\"q\\\"\""), "café \"q\"");
        assert_eq!(string_text("\"plain 日本\""), "plain 日本");
        assert_eq!(string_text("\"\""), "");
    }
}
