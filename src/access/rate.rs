//! Publish rate limits: `access.publish_rate.per_second` events-carrying requests per client,
//! with bursts of `burst`, keyed by the API key when the request sends one (a key is one
//! publisher wherever it publishes from) and by the client address otherwise. A request over
//! its rate answers 429 with `Retry-After`. GCRA from the `governor` crate.

use super::Denied;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// Past this many publishers tracked, those idle long enough to have their full burst back are
/// forgotten, so invented keys or addresses cannot grow the table without end.
const PRUNE_AT: usize = 100_000;

#[derive(Clone, Hash, PartialEq, Eq)]
enum Publisher {
    Addr(IpAddr),
    /// The key's SHA-256: the table never holds the key itself.
    Key([u8; 32]),
}

pub struct PublishRate {
    limiter: DefaultKeyedRateLimiter<Publisher>,
    clock: DefaultClock,
}

impl PublishRate {
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        PublishRate {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one publish of `client` (sending `key`, if any); refused when over the rate.
    pub fn check(&self, client: IpAddr, key: Option<&[u8]>) -> Result<(), Denied> {
        let publisher = match key {
            Some(key) => Publisher::Key(Sha256::digest(key).into()),
            None => Publisher::Addr(client),
        };
        if self.limiter.len() > PRUNE_AT {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&publisher).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            Denied::rate_limited(wait.max(Duration::from_millis(1)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_publisher_has_its_own_burst_and_is_told_when_to_retry() {
        let rate = PublishRate::new(NonZeroU32::new(1).unwrap(), NonZeroU32::new(2).unwrap());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(rate.check(a, None).is_ok() && rate.check(a, None).is_ok());
        let denied = rate.check(a, None).unwrap_err();
        assert_eq!(denied.status, http::StatusCode::TOO_MANY_REQUESTS);
        assert!(denied.retry_after.is_some_and(|s| (1..=1).contains(&s)), "{:?}", denied.retry_after);
        assert!(rate.check("192.0.2.2".parse().unwrap(), None).is_ok(), "another address");
        // A key is its own publisher, from any address.
        assert!(rate.check(a, Some(b"k")).is_ok() && rate.check(a, Some(b"k")).is_ok());
        assert!(rate.check("192.0.2.9".parse().unwrap(), Some(b"k")).is_err());
    }
}
