//! Static API keys, kept in the configuration as SHA-256 hashes (`sha256:<hex>`), so that the
//! file does not hold the keys themselves. A key is made by `herald hash-key`: 32 random bytes,
//! so a fast hash is enough (there is no dictionary to try, unlike with passwords).

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The hashes of the accepted keys.
pub struct ApiKeys(Vec<[u8; 32]>);

pub const PREFIX: &str = "sha256:";

/// Parses `sha256:<64 hex digits>`.
pub fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let hex_digits = s.strip_prefix(PREFIX).ok_or_else(|| format!("must start with `{PREFIX}` (make one with `herald hash-key`)"))?;
    let bytes = hex::decode(hex_digits).map_err(|e| format!("not hex after `{PREFIX}`: {e}"))?;
    bytes.try_into().map_err(|_| "a SHA-256 hash is 64 hex digits".to_owned())
}

/// The configuration line for `key`.
pub fn hash_of(key: &str) -> String {
    format!("{PREFIX}{}", hex::encode(Sha256::digest(key.as_bytes())))
}

impl ApiKeys {
    pub fn new(hashes: Vec<[u8; 32]>) -> Self {
        ApiKeys(hashes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `key` is one of them; every hash is compared, in constant time.
    pub fn accepts(&self, key: &[u8]) -> bool {
        let digest = Sha256::digest(key);
        self.0.iter().fold(false, |found, hash| found | bool::from(hash.ct_eq(digest.as_slice())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_matches_its_hash_only() {
        let line = hash_of("k3y");
        let keys = ApiKeys::new(vec![parse_hash(&line).unwrap(), parse_hash(&hash_of("other")).unwrap()]);
        assert!(keys.accepts(b"k3y") && keys.accepts(b"other"));
        assert!(!keys.accepts(b"k3") && !keys.accepts(b"") && !keys.accepts(line.as_bytes()));
        assert!(parse_hash("k3y").unwrap_err().contains("herald hash-key"));
        assert!(parse_hash("sha256:abcd").unwrap_err().contains("64 hex digits"));
        assert!(parse_hash("sha256:zz").is_err());
    }
}
