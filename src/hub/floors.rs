//! The floors of channels that are not in the registry.
//!
//! A channel's floor is the newest position that left its history: a client resuming from an
//! id before it may have missed events and is told so. A channel made on first use starts with
//! the floor it had when it last left the registry (an idle channel whose events all expired),
//! so that such a client is still told; a channel that never lost an event starts at the hub's
//! base floor, so that a client resuming from a good id is not told of a loss that never was.
//! The base is what this hub cannot know about: 0 with the disk store (it knows every floor),
//! its start with the memory store (whatever came before is gone), and where the bus's history
//! begins in a cluster. Remembered floors are bounded by `max_channels`: past that they are
//! folded into the base, which errs on the side of a notice.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

pub(super) struct Floors {
    inner: Mutex<Inner>,
    cap: usize,
}

struct Inner {
    base: u64,
    departed: HashMap<Arc<str>, u64>,
}

impl Floors {
    pub fn new(base: u64, cap: usize) -> Self {
        Floors { inner: Mutex::new(Inner { base, departed: HashMap::new() }), cap }
    }

    /// The floor a channel called `name` starts with now.
    pub fn for_new(&self, name: &str) -> u64 {
        let mut inner = self.inner.lock();
        let base = inner.base;
        inner.departed.remove(name).map_or(base, |f| f.max(base))
    }

    /// `name` left the registry with `floor`.
    pub fn departed(&self, name: Arc<str>, floor: u64) {
        let mut inner = self.inner.lock();
        if floor <= inner.base {
            return;
        }
        if inner.departed.len() >= self.cap {
            let newest = inner.departed.drain().map(|(_, f)| f).max().unwrap_or(0);
            inner.base = inner.base.max(newest);
            tracing::info!(floor = inner.base, "too many departed channels to remember each floor: folded into one");
        }
        inner.departed.insert(name, floor);
    }

    /// Nothing before `pos` can be replayed any more, on any channel.
    pub fn raise_base(&self, pos: u64) {
        let mut inner = self.inner.lock();
        inner.base = inner.base.max(pos);
        inner.departed.retain(|_, f| *f > pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn departed_floors_come_back_and_stay_bounded() {
        let floors = Floors::new(0, 2);
        assert_eq!(floors.for_new("fresh"), 0, "a channel that never lost an event has no floor");
        floors.departed("a".into(), 10);
        floors.departed("quiet".into(), 0);
        assert_eq!(floors.for_new("a"), 10);
        assert_eq!(floors.for_new("a"), 0, "taken back once");
        floors.departed("b".into(), 20);
        floors.departed("c".into(), 30);
        floors.departed("d".into(), 40);
        // Past the cap, the floors known so far became the base: conservative for everyone.
        assert_eq!(floors.for_new("x"), 30);
        assert_eq!(floors.for_new("d"), 40);
        floors.raise_base(50);
        assert_eq!(floors.for_new("y"), 50);
    }
}
