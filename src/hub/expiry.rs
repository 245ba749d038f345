//! Streams that must end at a given second (their token's `exp`). Rather than a timer per
//! connection, the hub's once-a-second upkeep wakes the streams whose second has come: the cost
//! is one map entry per such stream, and nothing for streams without an end.

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

#[derive(Default)]
pub(crate) struct Expiries {
    /// Second (since the Unix epoch) -> the wakers of the streams ending then. Weak: a stream
    /// that ended earlier leaves a dead entry, dropped when its second comes.
    due: Mutex<BTreeMap<u64, Vec<Weak<AtomicWaker>>>>,
}

impl Expiries {
    pub(crate) fn add(&self, at: u64, waker: &Arc<AtomicWaker>) {
        self.due.lock().entry(at).or_default().push(Arc::downgrade(waker));
    }

    /// Wakes every stream whose second is `now` or earlier; each sees its end when it polls.
    pub(crate) fn wake_due(&self, now: u64) {
        let ready = {
            let mut due = self.due.lock();
            let later = due.split_off(&(now + 1));
            std::mem::replace(&mut *due, later)
        };
        for waker in ready.into_values().flatten() {
            if let Some(w) = waker.upgrade() {
                w.wake();
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.due.lock().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_seconds_that_came_are_taken() {
        let e = Expiries::default();
        let (a, b) = (Arc::new(AtomicWaker::new()), Arc::new(AtomicWaker::new()));
        e.add(100, &a);
        e.add(101, &b);
        e.add(105, &b);
        e.wake_due(99);
        assert_eq!(e.len(), 3);
        e.wake_due(101);
        assert_eq!(e.len(), 1);
        drop(b);
        e.wake_due(1_000);
        assert_eq!(e.len(), 0);
    }
}
