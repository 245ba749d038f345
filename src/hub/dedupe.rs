//! Publishing at most once per idempotency key: a broker's message id (AMQP `message-id`, the
//! JetStream sequence, a Redis Stream entry id, an upstream event id) or an HTTP publisher's
//! `Idempotency-Key`. Brokers redeliver (after a crash between accept and ack, after a cut
//! connection) and HTTP clients retry: a key seen within the window publishes nothing and
//! answers with the first publish's ids.
//!
//! Keys are held here, in memory, for `dedupe_window`; the disk store writes each with the
//! events it covers (in the same batch) and gives them back at start-up, so a redelivery after a
//! crash is caught too. In a cluster the bus holds them (see `replication.rs`).

pub use crate::history::Mark;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::watch;

/// What the key says of a publish about to be made.
pub enum Claim {
    /// Nobody published under it: the holder does, then [`Claimed::done`].
    Mine(Claimed),
    /// Published already: these are its ids.
    Repeat(Vec<String>),
    /// Published already, with other contents.
    Reused,
    /// Being published now by someone else: wait, then claim again.
    Wait(watch::Receiver<()>),
}

enum Slot {
    Pending { fingerprint: [u8; 32], done: watch::Receiver<()> },
    Done { ids: Arc<[String]>, fingerprint: [u8; 32], expires_wall_us: u64 },
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Box<str>, Slot>,
    /// Finished keys, oldest expiry first (the window is fixed, so this is also claim order;
    /// keys loaded at start-up come first).
    expiring: VecDeque<(u64, Box<str>)>,
}

pub struct Dedupe {
    window_us: u64,
    inner: Arc<Mutex<Inner>>,
}

impl Dedupe {
    pub fn new(window: std::time::Duration) -> Self {
        Dedupe { window_us: window.as_micros() as u64, inner: Arc::default() }
    }

    /// Keys the store kept from before a restart.
    pub fn restore(&self, mut marks: Vec<Mark>, now_us: u64) {
        marks.sort_unstable_by_key(|m| m.expires_wall_us);
        let mut inner = self.inner.lock();
        for m in marks.into_iter().filter(|m| m.expires_wall_us > now_us) {
            inner.expiring.push_back((m.expires_wall_us, m.key.clone()));
            inner.slots.insert(m.key, Slot::Done { ids: m.ids.into(), fingerprint: m.fingerprint, expires_wall_us: m.expires_wall_us });
        }
    }

    pub fn claim(&self, key: &str, fingerprint: [u8; 32], now_us: u64) -> Claim {
        self.claim_as(key, fingerprint, false, now_us)
    }

    /// Claims `key` for a delivery its broker says is a first one (an MQTT packet id without
    /// DUP: the broker uses packet ids again once a message is acknowledged): an earlier
    /// publish under the key does not make this one a repeat, and this one's mark replaces it.
    pub fn claim_new(&self, key: &str, fingerprint: [u8; 32], now_us: u64) -> Claim {
        self.claim_as(key, fingerprint, true, now_us)
    }

    fn claim_as(&self, key: &str, fingerprint: [u8; 32], new: bool, now_us: u64) -> Claim {
        let mut inner = self.inner.lock();
        inner.expire(now_us);
        match inner.slots.get(key) {
            Some(Slot::Done { ids, fingerprint: f, expires_wall_us }) if *expires_wall_us > now_us && !new => {
                return if *f == fingerprint { Claim::Repeat(ids.to_vec()) } else { Claim::Reused };
            }
            Some(Slot::Pending { fingerprint: f, done }) => {
                return if *f == fingerprint { Claim::Wait(done.clone()) } else { Claim::Reused };
            }
            _ => {}
        }
        let (tx, rx) = watch::channel(());
        inner.slots.insert(key.into(), Slot::Pending { fingerprint, done: rx });
        Claim::Mine(Claimed {
            inner: self.inner.clone(),
            key: key.into(),
            new,
            fingerprint,
            window_us: self.window_us,
            _tx: tx,
            finished: false,
        })
    }

    /// Drops keys past their window.
    pub fn expire(&self, now_us: u64) {
        self.inner.lock().expire(now_us);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn expire(&mut self, now_us: u64) {
        while let Some((at, _)) = self.expiring.front() {
            if *at > now_us {
                break;
            }
            let (at, key) = self.expiring.pop_front().expect("looked at");
            // A key published again after it expired has a later expiry of its own.
            if matches!(self.slots.get(&key), Some(Slot::Done { expires_wall_us, .. }) if *expires_wall_us == at) {
                self.slots.remove(&key);
            }
        }
    }
}

/// The publications of a batch a claimed key covers.
pub struct Covered<'a> {
    pub claim: &'a Claimed,
    pub items: std::ops::Range<usize>,
}

/// The right to publish under a key. Dropped without [`done`](Claimed::done) (the publish
/// failed, or its caller went away), the key is free again and whoever waits claims it.
pub struct Claimed {
    inner: Arc<Mutex<Inner>>,
    key: Box<str>,
    /// Claimed with [`Dedupe::claim_new`].
    new: bool,
    fingerprint: [u8; 32],
    window_us: u64,
    /// Dropped when the claim ends, which wakes the waiters.
    _tx: watch::Sender<()>,
    finished: bool,
}

impl Claimed {
    /// The mark to store with the publish, once its ids are known.
    pub fn mark(&self, ids: Vec<String>, now_us: u64) -> Mark {
        Mark { key: self.key.clone(), ids, fingerprint: self.fingerprint, expires_wall_us: now_us + self.window_us }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key the cluster bus checks and records, which cannot be told that a delivery is a
    /// new one: none for a [`Dedupe::claim_new`] claim, so that a new message is never taken
    /// for an old one. (Its redelivery after a crash is then not recognised in a cluster.)
    pub fn bus_key(&self) -> Option<&str> {
        (!self.new).then_some(&*self.key)
    }

    /// The publish succeeded with these ids.
    pub fn done(mut self, ids: &[String], now_us: u64) {
        let expires_wall_us = now_us + self.window_us;
        let mut inner = self.inner.lock();
        inner.slots.insert(self.key.clone(), Slot::Done { ids: ids.into(), fingerprint: self.fingerprint, expires_wall_us });
        inner.expiring.push_back((expires_wall_us, self.key.clone()));
        self.finished = true;
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if !self.finished {
            let mut inner = self.inner.lock();
            if matches!(inner.slots.get(&self.key), Some(Slot::Pending { .. })) {
                inner.slots.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FP: [u8; 32] = [7; 32];

    #[test]
    fn a_key_repeats_its_first_ids_until_its_window_passes() {
        let d = Dedupe::new(Duration::from_secs(10));
        let Claim::Mine(c) = d.claim("k", FP, 0) else { panic!("a new key is free") };
        c.done(&["1".into(), "2".into()], 0);
        assert!(matches!(d.claim("k", FP, 9_999_999), Claim::Repeat(ids) if ids == ["1", "2"]));
        assert!(matches!(d.claim("k", [0; 32], 1), Claim::Reused));
        assert!(matches!(d.claim("k", FP, 10_000_000), Claim::Mine(_)), "expired");
    }

    #[test]
    fn a_new_delivery_replaces_an_earlier_publish_under_its_key() {
        let d = Dedupe::new(Duration::from_secs(10));
        let Claim::Mine(c) = d.claim("p7", FP, 0) else { panic!() };
        c.done(&["1".into()], 0);
        let Claim::Mine(c) = d.claim_new("p7", FP, 1) else { panic!("a new delivery publishes whatever the key holds") };
        assert_eq!(c.bus_key(), None);
        c.done(&["2".into()], 1);
        assert!(matches!(d.claim("p7", FP, 2), Claim::Repeat(ids) if ids == ["2"]), "its redelivery repeats the new one");
        d.expire(10_000_000);
        assert!(matches!(d.claim("p7", FP, 10_000_000), Claim::Repeat(_)), "the replacing mark has its own window");
    }

    #[tokio::test]
    async fn a_failed_publish_frees_its_key_and_wakes_who_waits() {
        let d = Dedupe::new(Duration::from_secs(10));
        let Claim::Mine(c) = d.claim("k", FP, 0) else { panic!() };
        let Claim::Wait(mut rx) = d.claim("k", FP, 0) else { panic!("in flight") };
        drop(c);
        assert!(rx.changed().await.is_err(), "the waiter wakes when the claim ends");
        assert!(matches!(d.claim("k", FP, 0), Claim::Mine(_)));
        assert!(d.is_empty(), "the claim above was dropped too");
    }

    #[test]
    fn restored_keys_count_and_expired_ones_do_not() {
        let d = Dedupe::new(Duration::from_secs(10));
        let mark = |k: &str, at| Mark { key: k.into(), ids: vec!["9".into()], fingerprint: FP, expires_wall_us: at };
        d.restore(vec![mark("old", 5), mark("new", 50)], 10);
        assert!(matches!(d.claim("new", FP, 20), Claim::Repeat(_)));
        assert!(matches!(d.claim("old", FP, 20), Claim::Mine(_)));
        d.expire(51);
        assert_eq!(d.len(), 0);
    }
}
