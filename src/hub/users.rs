//! Events addressed to users. Each user has a log of its own, `#u:<user>`, for the events
//! addressed to the user alone, and a log per channel, `#u:<user>#<channel>`, for the events of
//! that channel addressed to the user. They are channels in every other respect (history,
//! replay by position, the disk store, the cluster bus), in a namespace that client channel
//! names cannot reach (`#` is not allowed in them), so that no one can subscribe to another
//! user's events by name. A stream of a known user reads its user's logs beside its channels:
//! routing an event to a user costs in proportion to that user's connections, not to all.

use std::borrow::Cow;

/// Longest user id accepted.
pub const MAX_USER_LEN: usize = 256;

const PREFIX: &str = "#u:";

/// Why a user id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("a user id is empty")]
    Empty,
    #[error("a user id is longer than {MAX_USER_LEN} bytes")]
    TooLong,
    #[error("a user id contains `#` or a control character")]
    BadChar,
}

pub fn validate_user(user: &str) -> Result<(), UserError> {
    if user.is_empty() {
        return Err(UserError::Empty);
    }
    if user.len() > MAX_USER_LEN {
        return Err(UserError::TooLong);
    }
    if user.chars().any(|c| c == '#' || c.is_control()) {
        return Err(UserError::BadChar);
    }
    Ok(())
}

/// The log of the events addressed to `user` alone.
pub fn user_log(user: &str) -> String {
    format!("{PREFIX}{user}")
}

/// The log of the events of `channel` addressed to `user`.
pub fn pair_log(user: &str, channel: &str) -> String {
    format!("{PREFIX}{user}#{channel}")
}

/// Whether `name` is a user log (no client channel name starts with `#`).
pub fn is_user_log(name: &str) -> bool {
    name.starts_with('#')
}

/// A user log's user and, for a per-channel one, its channel; `None` when `name` is not one.
pub fn parse(name: &str) -> Option<(&str, Option<&str>)> {
    let rest = name.strip_prefix(PREFIX)?;
    Some(match rest.split_once('#') {
        Some((user, channel)) => (user, Some(channel)),
        None => (rest, None),
    })
}

/// The logs a stream of `user` reads beside `channels`: the user's own (when `own`), and one per
/// channel.
pub fn logs_of<'a>(user: &'a str, own: bool, channels: &'a [String]) -> impl Iterator<Item = Cow<'static, str>> + 'a {
    own.then(|| Cow::Owned(user_log(user))).into_iter().chain(channels.iter().map(move |c| Cow::Owned(pair_log(user, c))))
}

/// The logs an event addressed to `users` goes to: their own logs when it names no channel,
/// else their logs of each channel it names.
pub fn targets(users: &[String], channels: &[String]) -> Vec<String> {
    if channels.is_empty() {
        users.iter().map(|u| user_log(u)).collect()
    } else {
        users.iter().flat_map(|u| channels.iter().map(move |c| pair_log(u, c))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_cannot_be_forged() {
        assert_eq!(parse(&user_log("alice@example.com")), Some(("alice@example.com", None)));
        assert_eq!(parse(&pair_log("4c51-ada", "orders/42")), Some(("4c51-ada", Some("orders/42"))));
        assert_eq!(parse("orders/42"), None);
        assert!(validate_user("a#b").is_err() && validate_user("").is_err() && validate_user("a\nb").is_err());
        assert!(validate_user(&"x".repeat(MAX_USER_LEN + 1)).is_err());
        // A client channel name can never be a user log: `#` is refused in names.
        assert!(crate::config::pattern::validate_channel("#u:alice", 256).is_err());
        assert_eq!(targets(&["a".into(), "b".into()], &[]), ["#u:a", "#u:b"]);
        assert_eq!(targets(&["a".into()], &["x".into(), "y".into()]), ["#u:a#x", "#u:a#y"]);
    }
}
