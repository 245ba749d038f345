//! Request ids: every answer carries one in `X-Request-Id`, and every log line about the
//! request names it, so that a client's report ("500, request id 5f3a…") finds the log line
//! that says what went wrong (which the client is not told).

use http::HeaderValue;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

tokio::task_local! {
    /// The id of the request this task is answering.
    static CURRENT: HeaderValue;
}

/// Runs `answer` with `id` as the current request's id.
pub async fn scope<F: Future>(id: HeaderValue, answer: F) -> F::Output {
    CURRENT.scope(id, answer).await
}

/// The id of the request being answered, if any.
pub fn current() -> Option<HeaderValue> {
    CURRENT.try_with(HeaderValue::clone).ok()
}

/// Longest id taken from a client (or the proxy in front).
const MAX_LEN: usize = 128;

/// The id a client or its proxy gave, if it is one we can repeat safely in a header and a log:
/// 1 to 128 letters, digits and `-._:`.
pub fn from_client(value: &HeaderValue) -> Option<HeaderValue> {
    let bytes = value.as_bytes();
    let fits = !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(b));
    fits.then(|| value.clone())
}

/// A new id: 16 hex digits, a random prefix for this process and a count, so that ids from
/// several nodes (or restarts) do not collide and making one costs no system call.
pub fn generate() -> HeaderValue {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut seed = [0u8; 4];
        // Without randomness the ids are still unique within the process.
        let _ = getrandom::fill(&mut seed);
        u32::from_le_bytes(seed)
    });
    let n = COUNT.fetch_add(1, Ordering::Relaxed) as u32;
    let mut text = [0u8; 16];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, slot) in text.iter_mut().enumerate() {
        let word = if i < 8 { prefix } else { n };
        *slot = HEX[((word >> (4 * (7 - (i % 8)))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).expect("hex digits make a header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_differ_and_share_the_process_prefix() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(a.as_bytes()[..8], b.as_bytes()[..8]);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn only_short_plain_client_ids_are_repeated() {
        let take = |s: &str| from_client(&HeaderValue::from_str(s).unwrap()).is_some();
        assert!(take("5f3a-91c2.trace:1"));
        assert!(!take(""));
        assert!(!take("has space"));
        assert!(!take("semi;colon"));
        assert!(!take(&"x".repeat(129)));
        assert!(take(&"x".repeat(128)));
    }
}
