//! Channel name validation and the glob patterns that give dynamic channels their settings.

/// Why a channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {0} bytes")]
    TooLong(usize),
    #[error("channel name contains `{0}`; allowed are ASCII letters, digits and - _ . ~ : @ + = ! and / between segments")]
    BadChar(char),
    #[error("channel name has an empty, `.` or `..` segment (no leading, trailing or double `/`)")]
    BadSegment,
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | ':' | '@' | '+' | '=' | '!')
}

/// Checks a channel name. Names travel in URL paths, so they are kept to characters that need no
/// escaping and to segments a proxy will not normalise away.
pub fn validate_channel(name: &str, max_len: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max_len {
        return Err(NameError::TooLong(max_len));
    }
    if let Some(c) = name.chars().find(|&c| c != '/' && !allowed(c)) {
        return Err(NameError::BadChar(c));
    }
    if name.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err(NameError::BadSegment);
    }
    Ok(())
}

/// Validates a pattern: a channel name in which `*` stands for one segment's worth of characters
/// (never `/`) and `**` for anything, `/` included.
pub fn validate_pattern(pattern: &str, max_len: usize) -> Result<(), NameError> {
    // Replace wildcards with a letter so the name rules apply to the rest.
    validate_channel(&pattern.replace('*', "x"), max_len)
}

pub fn is_pattern(s: &str) -> bool {
    s.contains('*')
}

/// Glob match: `*` matches any run of characters other than `/`, `**` matches any run at all.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    match_from(p, n)
}

fn match_from(p: &[u8], n: &[u8]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some(b'*') => {
            let (deep, rest) = if p.get(1) == Some(&b'*') { (true, &p[2..]) } else { (false, &p[1..]) };
            // Try every possible length for the wildcard, shortest first.
            for i in 0..=n.len() {
                if match_from(rest, &n[i..]) {
                    return true;
                }
                if i < n.len() && !deep && n[i] == b'/' {
                    return false;
                }
            }
            false
        }
        Some(&c) => n.first() == Some(&c) && match_from(&p[1..], &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_channel("orders/42", 64).is_ok());
        assert!(validate_channel("user:7@eu", 64).is_ok());
        assert_eq!(validate_channel("", 64), Err(NameError::Empty));
        assert_eq!(validate_channel("a b", 64), Err(NameError::BadChar(' ')));
        assert_eq!(validate_channel("/a", 64), Err(NameError::BadSegment));
        assert_eq!(validate_channel("a//b", 64), Err(NameError::BadSegment));
        assert_eq!(validate_channel("a/../b", 64), Err(NameError::BadSegment));
        assert_eq!(validate_channel("abc", 2), Err(NameError::TooLong(2)));
    }

    #[test]
    fn globs() {
        assert!(matches("orders/*", "orders/42"));
        assert!(!matches("orders/*", "orders/42/items"));
        assert!(matches("orders/**", "orders/42/items"));
        assert!(matches("*/feed", "news/feed"));
        assert!(!matches("orders/*", "orders"));
        assert!(matches("a*c", "abbc"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }
}
