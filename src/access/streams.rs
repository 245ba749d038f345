//! At most `access.max_streams_per_client` open event streams per client address: one host
//! cannot hold all of a hub's connections. A slot is taken when a stream is admitted and given
//! back when the stream ends, however it ends (the slot is dropped with the stream).

use super::Denied;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

pub struct StreamLimit {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// An admitted stream's hold on its slot.
pub struct StreamSlot {
    limit: Arc<StreamLimit>,
    client: IpAddr,
}

impl StreamLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(StreamLimit { max, open: Mutex::new(HashMap::new()) })
    }

    pub fn acquire(self: &Arc<Self>, client: IpAddr) -> Result<StreamSlot, Denied> {
        let mut open = self.open.lock();
        let n = open.entry(client).or_insert(0);
        if *n >= self.max {
            return Err(Denied::too_many(format!(
                "{client} has {} event streams open, the most one address may (access.max_streams_per_client)",
                self.max
            )));
        }
        *n += 1;
        Ok(StreamSlot { limit: self.clone(), client })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.limit.open.lock();
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_per_address_and_come_back() {
        let limit = StreamLimit::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let first = limit.acquire(a).unwrap();
        let _second = limit.acquire(a).unwrap();
        assert_eq!(limit.acquire(a).err().unwrap().status, http::StatusCode::TOO_MANY_REQUESTS);
        let _other = limit.acquire(b).expect("another address has its own");
        drop(first);
        let _again = limit.acquire(a).expect("a slot back once a stream ends");
        drop(_again);
        drop(_second);
        assert!(!limit.open.lock().contains_key(&a), "an address with no stream is forgotten");
    }
}
