//! How events are laid out in the disk store.
//!
//! Key: the channel name, a NUL byte (never part of a name), and the position as 8 big-endian
//! bytes, so that one channel's events are contiguous and in publish order. An event published
//! to several channels is stored once under each.
//!
//! Value: a version byte, the publish time (µs since the epoch), the publisher's id, the names of
//! all the event's channels, and the encoded frame.
//!
//! The `floors` keyspace: under each channel's name, its floor (the newest position retention
//! deleted) as 8 big-endian bytes; and two keys that start with NUL, so that no channel has
//! them: [`BASE_FLOOR`], the floor that dormant channels' floors are folded into, and
//! [`DELETED`], the count of event records retention ever deleted.

use crate::event::Event;
use crate::history::Mark;
use bytes::Bytes;
use std::sync::Arc;

const VERSION: u8 = 1;

/// The floors key of the shared floor.
pub const BASE_FLOOR: &[u8] = b"\0";
/// The floors key of the count of deleted event records.
pub const DELETED: &[u8] = b"\0deleted";

/// A floor (or the deletion count) as stored.
pub fn floor_value(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

/// A stored floor value, or `None` when it is not 8 bytes (torn).
pub fn decode_floor(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_be_bytes)
}

pub fn key(channel: &str, pos: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(channel.len() + 9);
    k.extend_from_slice(channel.as_bytes());
    k.push(0);
    k.extend_from_slice(&pos.to_be_bytes());
    k
}

/// The prefix every key of `channel` starts with.
pub fn channel_prefix(channel: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(channel.len() + 1);
    k.extend_from_slice(channel.as_bytes());
    k.push(0);
    k
}

/// Splits a key into channel name and position.
pub fn split_key(key: &[u8]) -> Option<(&str, u64)> {
    if key.len() < 10 {
        return None;
    }
    let (name, rest) = key.split_at(key.len() - 9);
    if rest[0] != 0 {
        return None;
    }
    let pos = u64::from_be_bytes(rest[1..].try_into().ok()?);
    Some((std::str::from_utf8(name).ok()?, pos))
}

pub fn encode(event: &Event, published_wall_us: u64) -> Vec<u8> {
    let id = event.custom_id.as_deref().unwrap_or("");
    let names: usize = event.channels.iter().map(|c| 2 + c.len()).sum();
    let mut v = Vec::with_capacity(1 + 8 + 2 + id.len() + 2 + names + event.frame.len());
    v.push(VERSION);
    v.extend_from_slice(&published_wall_us.to_le_bytes());
    v.push(u8::from(event.custom_id.is_some()));
    v.extend_from_slice(&(id.len() as u16).to_le_bytes());
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(&(event.channels.len() as u16).to_le_bytes());
    for c in event.channels.iter() {
        v.extend_from_slice(&(c.len() as u16).to_le_bytes());
        v.extend_from_slice(c.as_bytes());
    }
    v.extend_from_slice(&event.frame);
    v
}

/// The `marks` keyspace (idempotency keys, see `hub/dedupe.rs`): the key is when the mark
/// expires (µs since the epoch, 8 big-endian bytes, so that expired marks are one range at the
/// front) then the idempotency key; the value is the digest of what was published (32 bytes)
/// then the publish's ids, separated by newlines (which no id holds).
pub fn mark_key(mark: &Mark) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + mark.key.len());
    k.extend_from_slice(&mark.expires_wall_us.to_be_bytes());
    k.extend_from_slice(mark.key.as_bytes());
    k
}

pub fn mark_value(mark: &Mark) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + mark.ids.iter().map(|i| i.len() + 1).sum::<usize>());
    v.extend_from_slice(&mark.fingerprint);
    v.extend_from_slice(mark.ids.join("\n").as_bytes());
    v
}

/// The first key of marks that expire after `wall_us`.
pub fn marks_after(wall_us: u64) -> [u8; 8] {
    (wall_us + 1).to_be_bytes()
}

pub fn decode_mark(key: &[u8], value: &[u8]) -> Option<Mark> {
    let expires_wall_us = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let key = std::str::from_utf8(&key[8..]).ok()?.into();
    let fingerprint = value.get(..32)?.try_into().ok()?;
    let ids = std::str::from_utf8(&value[32..]).ok()?;
    let ids = if ids.is_empty() { Vec::new() } else { ids.split('\n').map(str::to_owned).collect() };
    Some(Mark { key, ids, fingerprint, expires_wall_us })
}

/// A stored event, read back.
pub struct Decoded {
    pub published_wall_us: u64,
    pub custom_id: Option<Box<str>>,
    pub channels: Vec<String>,
    pub frame: Bytes,
}

pub fn decode(value: &[u8]) -> Result<Decoded, &'static str> {
    let mut r = Reader(value);
    if r.u8()? != VERSION {
        return Err("unknown record version");
    }
    let published_wall_us = u64::from_le_bytes(r.take(8)?.try_into().map_err(|_| "short record")?);
    let has_id = r.u8()? == 1;
    let id = r.str()?;
    let custom_id = has_id.then(|| id.into());
    let n = r.u16()?;
    let channels = (0..n).map(|_| r.str().map(str::to_owned)).collect::<Result<_, _>>()?;
    Ok(Decoded { published_wall_us, custom_id, channels, frame: Bytes::copy_from_slice(r.0) })
}

/// The event as the hub holds it. Its age is carried over: an event stored a minute ago is a
/// minute old now.
pub fn into_event(pos: u64, d: Decoded, channels: Box<[Arc<str>]>) -> Event {
    Event { pos, custom_id: d.custom_id, channels, frame: d.frame, published_at: crate::event::published_instant(d.published_wall_us) }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("short record");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().map_err(|_| "short record")?))
    }
    fn str(&mut self) -> Result<&'a str, &'static str> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| "record holds a name that is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn keys_sort_by_channel_then_position() {
        assert!(key("a", 2) < key("a", 256));
        assert!(key("a", u64::MAX) < key("a.b", 0), "a channel's keys are contiguous");
        assert_eq!(split_key(&key("orders/42", 77)), Some(("orders/42", 77)));
        assert_eq!(split_key(b"short"), None);
        assert!(key("a", 5).starts_with(&channel_prefix("a")));
        assert!(!key("ab", 5).starts_with(&channel_prefix("a")));
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let ev = Event {
            pos: 9,
            custom_id: Some("order-1".into()),
            channels: vec![Arc::from("a"), Arc::from("b/c")].into(),
            frame: Bytes::from_static(b"id: order-1\ndata: x\n\n"),
            published_at: Instant::now(),
        };
        let v = encode(&ev, 1234);
        let d = decode(&v).unwrap();
        assert_eq!((d.published_wall_us, d.custom_id.as_deref(), &d.frame[..]), (1234, Some("order-1"), &ev.frame[..]));
        assert_eq!(d.channels, ["a", "b/c"]);
        let plain = Event { custom_id: None, ..ev };
        assert_eq!(decode(&encode(&plain, 1)).unwrap().custom_id, None);
        assert!(decode(&v[..5]).is_err());
        assert!(decode(&[2, 0, 0]).is_err());
    }

    #[test]
    fn marks_round_trip_and_sort_by_expiry() {
        let mark = Mark { key: "amqp:orders:m-1".into(), ids: vec!["5".into(), "o-2".into()], fingerprint: [3; 32], expires_wall_us: 77 };
        assert_eq!(decode_mark(&mark_key(&mark), &mark_value(&mark)), Some(mark.clone()));
        let later = Mark { expires_wall_us: 300, key: "a".into(), ..mark.clone() };
        assert!(mark_key(&mark) < mark_key(&later));
        assert!(mark_key(&mark).as_slice() < marks_after(77).as_slice() && marks_after(77).as_slice() <= mark_key(&later).as_slice());
        assert_eq!(decode_mark(b"short", b""), None);
    }
}
