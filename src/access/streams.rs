//! At most `access.max_streams_per_client` open event streams per client address, and at most
//! `access.max_streams_per_user` per user: one host or one account cannot hold all of a hub's
//! connections. A slot is taken when a stream is admitted and given back when the stream ends,
//! however it ends (the slot is dropped with the stream).

use super::Denied;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::Arc;

pub struct StreamLimit<K: Hash + Eq> {
    max: usize,
    /// What the key is and the setting that limits it, for the 429: ("one address",
    /// "access.max_streams_per_client").
    what: (&'static str, &'static str),
    open: Mutex<HashMap<K, usize>>,
}

/// An admitted stream's hold on its slot.
pub struct StreamSlot<K: Hash + Eq> {
    limit: Arc<StreamLimit<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone + Display> StreamLimit<K> {
    pub fn new(max: usize, what: (&'static str, &'static str)) -> Arc<Self> {
        Arc::new(StreamLimit { max, what, open: Mutex::new(HashMap::new()) })
    }

    pub fn acquire(self: &Arc<Self>, key: K) -> Result<StreamSlot<K>, Denied> {
        let mut open = self.open.lock();
        let n = open.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            let (one, setting) = self.what;
            return Err(Denied::too_many(format!("{key} has {} event streams open, the most {one} may ({setting})", self.max)));
        }
        *n += 1;
        Ok(StreamSlot { limit: self.clone(), key })
    }
}

impl<K: Hash + Eq> Drop for StreamSlot<K> {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn slots_are_per_key_and_come_back() {
        let limit = StreamLimit::new(2, ("one address", "access.max_streams_per_client"));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let first = limit.acquire(a).unwrap();
        let _second = limit.acquire(a).unwrap();
        let refused = limit.acquire(a).err().unwrap();
        assert_eq!(refused.status, http::StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.message.contains("max_streams_per_client"), "{}", refused.message);
        let _other = limit.acquire(b).expect("another address has its own");
        drop(first);
        let _again = limit.acquire(a).expect("a slot back once a stream ends");
        drop(_again);
        drop(_second);
        assert!(!limit.open.lock().contains_key(&a), "an address with no stream is forgotten");

        let users = StreamLimit::<Arc<str>>::new(1, ("one user", "access.max_streams_per_user"));
        let _alice = users.acquire("alice".into()).unwrap();
        assert!(users.acquire("alice".into()).err().unwrap().message.contains("alice has 1 event streams open, the most one user may"));
        assert!(users.acquire("bob".into()).is_ok());
    }
}
