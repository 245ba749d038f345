//! Which channels of a multi-channel subscription may have something new: one bit per channel,
//! set by the channel when an event is appended to its window and taken by the subscription
//! when it reads. A wake then costs the channels that changed, not every channel named.
//!
//! The bit is set when the event enters the window, before the watermark can pass it (the
//! watermark moves only after the append to the store settles), and the subscription loads the
//! watermark before it takes the bits. So every event at or below the watermark it loaded has
//! its bit visible to it: the merge never emits a later event while an earlier one waits
//! unseen on a channel it did not look at. A channel whose new event is not visible yet keeps
//! its bit (the subscription sets it again) and is looked at on the next wake.

use futures_util::task::AtomicWaker;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The marks, and the subscription's waker beside them: a channel's registration is then one
/// pointer and a slot, whatever the number of channels.
pub struct PendingSet {
    waker: Arc<AtomicWaker>,
    bits: Box<[AtomicU64]>,
}

impl PendingSet {
    /// `n` channels, all marked: a new subscription looks at each once (its replay).
    pub fn all(n: usize, waker: Arc<AtomicWaker>) -> Self {
        let bits = (0..n.div_ceil(64)).map(|w| AtomicU64::new(if (w + 1) * 64 <= n { u64::MAX } else { (1u64 << (n % 64)) - 1 })).collect();
        PendingSet { waker, bits }
    }

    pub fn mark(&self, slot: u32) {
        let slot = slot as usize;
        self.bits[slot / 64].fetch_or(1 << (slot % 64), Ordering::Release);
    }

    pub fn wake(&self) {
        self.waker.wake();
    }

    pub fn words(&self) -> usize {
        self.bits.len()
    }

    /// Takes word `w`'s marks, clearing them.
    pub fn take(&self, w: usize) -> u64 {
        self.bits[w].swap(0, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(set: &PendingSet) -> Vec<usize> {
        let mut out = Vec::new();
        for w in 0..set.words() {
            let mut bits = set.take(w);
            while bits != 0 {
                out.push(w * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
        out
    }

    #[test]
    fn all_marks_exactly_the_slots_and_take_clears_them() {
        for n in [2, 63, 64, 65, 128, 1000] {
            let set = PendingSet::all(n, Arc::new(AtomicWaker::new()));
            assert_eq!(slots(&set), (0..n).collect::<Vec<_>>(), "{n}");
            assert!(slots(&set).is_empty());
            set.mark(n as u32 - 1);
            set.mark(0);
            set.mark(0);
            assert_eq!(slots(&set), vec![0, n - 1]);
        }
    }
}
