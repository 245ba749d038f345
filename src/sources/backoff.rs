//! Capped exponential backoff with jitter, so that many sources (or many nodes) that lost the
//! same broker do not all come back at the same instant.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(10);

pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { next: FIRST }
    }

    /// The next delay: between half and all of the current step, which doubles up to the cap.
    pub fn delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(CAP);
        let mut b = [0u8; 2];
        let _ = getrandom::fill(&mut b);
        let fraction = 0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0;
        step.mul_f64(fraction)
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.delay()).await;
    }

    pub fn reset(&mut self) {
        self.next = FIRST;
    }
}

/// Runs `session` until it ends well (`Ok`: the hub is shutting down), reporting each failure
/// to the source's status and waiting the next backoff step before the next try. A session
/// that got connected starts the backoff over.
pub async fn supervise<F, Fut>(intake: &super::intake::Intake, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut backoff = Backoff::new();
    loop {
        if intake.hub.is_closing() {
            return;
        }
        let connects = intake.status.connects();
        match session().await {
            Ok(()) => return,
            Err(e) => intake.status.down(e),
        }
        if intake.status.connects() != connects {
            backoff.reset();
        }
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter() {
        let mut b = Backoff::new();
        let first = b.delay();
        assert!(first >= FIRST / 2 && first <= FIRST);
        for _ in 0..20 {
            let d = b.delay();
            assert!(d <= CAP && d >= Duration::from_millis(50));
        }
        let late = b.delay();
        assert!(late >= CAP / 2, "{late:?}");
        b.reset();
        assert!(b.delay() <= FIRST);
    }
}
