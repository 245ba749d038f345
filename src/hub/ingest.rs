//! The one publish path every source shares (HTTP today; brokers, upstream streams and the
//! Mercure endpoint next): each event is validated (its fields, its size, its channels' names,
//! its users), its channels or its users' logs are found or made, and the whole batch is
//! numbered, appended to history and fanned out, all or nothing.

use super::{Hub, Publication, PublishError, users};
use crate::event::{Draft, DraftError};
use std::sync::Arc;

/// An event as a source hands it in: where it goes, and what it is.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The channels it is published to; with `users`, the channels whose streams of those users
    /// receive it (none: the users' every stream).
    pub channels: Vec<String>,
    /// The users it is addressed to; empty: everyone on its channels.
    pub users: Vec<String>,
    pub draft: Draft,
}

impl Hub {
    /// Validates every submission, then publishes them all in order; returns their ids. The
    /// first invalid one refuses the batch, saying which it was and why.
    pub async fn ingest(&self, batch: Vec<Submission>) -> Result<Vec<String>, PublishError> {
        let config = self.config();
        let max_event = config.limits.max_event_size.as_usize();
        let max_channels = config.max_channels_per_connection;
        let max_users = config.limits.max_users_per_event;
        let refuse = |index: usize, reason: String| PublishError::Event { index, reason, too_large: false };
        // Channels of events addressed to users are not made: their users' logs are.
        self.admit_new(batch.iter().filter(|s| s.users.is_empty()).flat_map(|s| s.channels.iter().map(String::as_str)))?;
        let mut items = Vec::with_capacity(batch.len());
        for (i, sub) in batch.into_iter().enumerate() {
            if sub.channels.len() > max_channels {
                return Err(refuse(
                    i,
                    format!("{} channels named, at most {max_channels} (max_channels_per_connection)", sub.channels.len()),
                ));
            }
            // A source names channels, never a user's log: those come from `users`.
            for channel in &sub.channels {
                self.check_name(channel)?;
            }
            let names = if sub.users.is_empty() {
                sub.channels
            } else {
                if sub.users.len() > max_users {
                    return Err(refuse(i, format!("{} users named, at most {max_users} (limits.max_users_per_event)", sub.users.len())));
                }
                for user in &sub.users {
                    users::validate_user(user).map_err(|e| refuse(i, format!("{e}: {user:?}")))?;
                }
                // Their channels are not made, but must be ones that may exist.
                for channel in &sub.channels {
                    self.check_channel_name(channel)?;
                }
                users::targets(&sub.users, &sub.channels)
            };
            let frame = sub.draft.encode(max_event).map_err(|e| match e {
                DraftError::TooLarge { .. } => PublishError::Event { index: i, reason: e.to_string(), too_large: true },
                e => refuse(i, e.to_string()),
            })?;
            let mut channels = Vec::with_capacity(names.len());
            for name in &names {
                let ch = self.channel(name)?;
                if !channels.iter().any(|c| Arc::ptr_eq(c, &ch)) {
                    channels.push(ch);
                }
            }
            items.push(Publication { channels, frame, custom_id: sub.draft.id, pos: None, published_wall_us: None });
        }
        self.publish(items).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, StoreKind};

    fn hub() -> Arc<Hub> {
        let mut config = Config::default();
        config.history.store = StoreKind::Memory;
        Hub::new(config).unwrap()
    }

    fn event(channels: &[&str], users: &[&str], data: &str) -> Submission {
        Submission {
            channels: channels.iter().map(|c| c.to_string()).collect(),
            users: users.iter().map(|u| u.to_string()).collect(),
            draft: Draft { data: data.into(), ..Draft::default() },
        }
    }

    #[tokio::test]
    async fn a_batch_is_all_or_nothing_and_says_which_event_failed() {
        let hub = hub();
        let bad_id =
            Submission { draft: Draft { id: Some("a\nb".into()), data: "x".into(), ..Draft::default() }, ..event(&["a"], &[], "") };
        let err = hub.ingest(vec![event(&["a"], &[], "first"), bad_id]).await.unwrap_err();
        assert!(matches!(err, PublishError::Event { index: 1, too_large: false, .. }), "{err}");
        let err = hub.ingest(vec![event(&["a"], &["u#1"], "x")]).await.unwrap_err();
        assert!(err.to_string().starts_with("event 0: a user id contains `#`"), "{err}");
        let huge = "x".repeat(hub.config().limits.max_event_size.as_usize() + 1);
        assert!(matches!(hub.ingest(vec![event(&["a"], &[], &huge)]).await.unwrap_err(), PublishError::Event { too_large: true, .. }));
        assert_eq!(hub.stats(10, None).totals.published, 0, "nothing of a refused batch is published");
        let ids = hub.ingest(vec![event(&["a", "b"], &[], "to both"), event(&[], &["alice"], "to alice")]).await.unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(hub.stats(10, None).totals.published, 2);
    }
}
