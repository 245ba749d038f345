//! The one publish path every source shares (HTTP today; brokers, upstream streams and the
//! Mercure endpoint next): each event is validated (its fields, its size, its channels' names,
//! its users), its channels or its users' logs are found or made, and the whole batch is
//! numbered, appended to history and fanned out, all or nothing.

use super::dedupe::{Claim, Covered};
use super::{Hub, Publication, PublishError, users};
use crate::event::now_wall_us;
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

/// An idempotency key for a publish, with a digest of what is published under it.
#[derive(Debug, Clone)]
pub struct Once {
    /// Unique across origins: a source's keys start with its name, HTTP's with `http:`.
    pub key: String,
    pub fingerprint: [u8; 32],
    /// The broker says this delivery is a first one, whatever the key held before (MQTT packet
    /// ids are used again): see [`Dedupe::claim_new`](super::dedupe::Dedupe::claim_new).
    pub new: bool,
}

impl Once {
    /// A key for `batch`, with a digest of everything that is published: two requests with the
    /// same events have the same digest, however their bodies were written.
    pub fn of_batch(key: String, batch: &[Submission]) -> Once {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        for sub in batch {
            // Counts first, so that no list can pass for another.
            field(&(sub.channels.len() as u64).to_le_bytes());
            for c in &sub.channels {
                field(c.as_bytes());
            }
            field(&(sub.users.len() as u64).to_le_bytes());
            for u in &sub.users {
                field(u.as_bytes());
            }
            let d = &sub.draft;
            // Absent and present fields never hash alike: a present one has a mark before it.
            for f in [d.id.clone(), d.event.clone(), d.retry.map(|r| r.to_string())] {
                match f {
                    Some(v) => {
                        field(b"=");
                        field(v.as_bytes());
                    }
                    None => field(b"-"),
                }
            }
            field(d.data.as_bytes());
        }
        Once { key, fingerprint: h.finalize().into(), new: false }
    }
}

/// What a keyed publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    Published(Vec<String>),
    /// The key was published under within `dedupe_window`: nothing was, now; these are the
    /// first publish's ids.
    Repeat(Vec<String>),
}

impl Ingested {
    pub fn ids(&self) -> &[String] {
        match self {
            Ingested::Published(ids) | Ingested::Repeat(ids) => ids,
        }
    }

    pub fn is_repeat(&self) -> bool {
        matches!(self, Ingested::Repeat(_))
    }
}

impl Hub {
    /// Validates every submission, then publishes them all in order; returns their ids. The
    /// first invalid one refuses the batch, saying which it was and why.
    pub async fn ingest(&self, batch: Vec<Submission>) -> Result<Vec<String>, PublishError> {
        let items = self.prepare(batch)?;
        self.publish(items).await
    }

    /// [`Hub::ingest`] at most once per key within `dedupe_window`: a repeat publishes nothing
    /// and gets the first publish's ids. A repeat that arrives while the first is being
    /// published waits for it; if the first fails, the repeat publishes.
    pub async fn ingest_once(&self, once: Once, batch: Vec<Submission>) -> Result<Ingested, PublishError> {
        loop {
            match self.claim(&once, now_wall_us()) {
                Claim::Repeat(ids) => return Ok(Ingested::Repeat(ids)),
                Claim::Reused => return Err(PublishError::KeyReused(once.key)),
                Claim::Wait(mut first) => {
                    // Ends with the first publish, whichever way it went.
                    let _ = first.changed().await;
                }
                Claim::Mine(claim) => {
                    let items = self.prepare(batch)?;
                    let (ids, repeat) = self.publish_keyed(items, Some(&claim)).await?;
                    claim.done(&ids, now_wall_us());
                    return Ok(if repeat { Ingested::Repeat(ids) } else { Ingested::Published(ids) });
                }
            }
        }
    }

    /// Publishes independent submissions, each under its own key (or none), in one go: one
    /// pass through the sequencer and one wait for the store, however many there are, which is
    /// what lets a broker source keep up with `fsync = "always"`. Unlike [`Hub::ingest`], each
    /// stands alone: an invalid one is refused by itself and the others are published, in
    /// order. One result per submission, in order. In a cluster they go one by one (the bus
    /// takes one key per append).
    pub async fn ingest_each(&self, batch: Vec<(Option<Once>, Submission)>) -> Vec<Result<Ingested, PublishError>> {
        if self.bus.get().is_some() {
            let mut out = Vec::with_capacity(batch.len());
            for (once, sub) in batch {
                out.push(match once {
                    Some(once) => self.ingest_once(once, vec![sub]).await,
                    None => self.ingest(vec![sub]).await.map(Ingested::Published),
                });
            }
            return out;
        }
        let mut results: Vec<Option<Result<Ingested, PublishError>>> = (0..batch.len()).map(|_| None).collect();
        // Keys someone else is publishing under right now: tried once this batch is out.
        let mut waiting = Vec::new();
        let mut items = Vec::with_capacity(batch.len());
        let mut owners = Vec::with_capacity(batch.len());
        let now = now_wall_us();
        for (i, (once, sub)) in batch.into_iter().enumerate() {
            let claim = match once {
                None => None,
                Some(once) => match self.claim(&once, now) {
                    Claim::Repeat(ids) => {
                        results[i] = Some(Ok(Ingested::Repeat(ids)));
                        continue;
                    }
                    Claim::Reused => {
                        results[i] = Some(Err(PublishError::KeyReused(once.key)));
                        continue;
                    }
                    Claim::Wait(_) => {
                        waiting.push((i, once, sub));
                        continue;
                    }
                    Claim::Mine(claim) => Some(claim),
                },
            };
            // A refused one drops its claim, which frees its key.
            match self.prepare(vec![sub]) {
                Ok(prepared) => {
                    items.extend(prepared);
                    owners.push((i, claim));
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if !items.is_empty() {
            let covered: Vec<Covered> =
                owners.iter().enumerate().filter_map(|(k, (_, c))| c.as_ref().map(|claim| Covered { claim, items: k..k + 1 })).collect();
            let published = self.publish_local(items, &covered).await;
            drop(covered);
            match published {
                Ok(events) => {
                    let now = now_wall_us();
                    for ((i, claim), ev) in owners.into_iter().zip(events) {
                        let ids = vec![ev.wire_id().into_owned()];
                        if let Some(claim) = claim {
                            claim.done(&ids, now);
                        }
                        results[i] = Some(Ok(Ingested::Published(ids)));
                    }
                }
                Err(e) => {
                    for (i, _) in owners {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        for (i, once, sub) in waiting {
            results[i] = Some(self.ingest_once(once, vec![sub]).await);
        }
        results.into_iter().map(|r| r.expect("every submission is answered")).collect()
    }

    fn claim(&self, once: &Once, now_us: u64) -> Claim {
        if once.new {
            self.dedupe.claim_new(&once.key, once.fingerprint, now_us)
        } else {
            self.dedupe.claim(&once.key, once.fingerprint, now_us)
        }
    }

    /// Idempotency keys held now.
    pub fn dedupe_keys(&self) -> usize {
        self.dedupe.len()
    }

    /// Checks every submission and turns it into a publication.
    fn prepare(&self, batch: Vec<Submission>) -> Result<Vec<Publication>, PublishError> {
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
        Ok(items)
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

    #[tokio::test]
    async fn a_key_publishes_once_and_a_failed_publish_does_not_use_it_up() {
        let hub = hub();
        let once = |key: &str, fp: u8| Once { key: key.into(), fingerprint: [fp; 32], new: false };
        let first = hub.ingest_once(once("k", 1), vec![event(&["a"], &[], "x")]).await.unwrap();
        assert!(!first.is_repeat());
        let again = hub.ingest_once(once("k", 1), vec![event(&["a"], &[], "x")]).await.unwrap();
        assert_eq!(again, Ingested::Repeat(first.ids().to_vec()));
        assert!(matches!(hub.ingest_once(once("k", 2), vec![event(&["a"], &[], "y")]).await, Err(PublishError::KeyReused(_))));
        assert_eq!(hub.stats(10, None).totals.published, 1);
        let bad = Submission { draft: Draft { id: Some("a\nb".into()), ..Draft::default() }, ..event(&["a"], &[], "") };
        assert!(hub.ingest_once(once("j", 1), vec![bad]).await.is_err());
        assert!(
            !hub.ingest_once(once("j", 1), vec![event(&["a"], &[], "z")]).await.unwrap().is_repeat(),
            "the failed one left the key free"
        );
        assert_eq!(hub.dedupe_keys(), 2);
    }

    #[tokio::test]
    async fn each_submission_of_a_batch_stands_alone() {
        let hub = hub();
        let once = |key: &str| Some(Once { key: key.into(), fingerprint: [1; 32], new: false });
        let first = hub.ingest_once(once("seen").unwrap(), vec![event(&["a"], &[], "x")]).await.unwrap();
        let bad = Submission { draft: Draft { id: Some("a\nb".into()), ..Draft::default() }, ..event(&["a"], &[], "") };
        let results = hub
            .ingest_each(vec![
                (once("n1"), event(&["a"], &[], "1")),
                (once("seen"), event(&["a"], &[], "x")),
                (once("bad"), bad),
                (None, event(&["b"], &[], "2")),
                (once("n1"), event(&["a"], &[], "1")),
            ])
            .await;
        assert!(matches!(&results[0], Ok(Ingested::Published(_))));
        assert_eq!(results[1].as_ref().unwrap(), &Ingested::Repeat(first.ids().to_vec()), "a repeat of an earlier publish");
        assert!(matches!(results[2], Err(PublishError::Event { .. })));
        assert!(matches!(&results[3], Ok(Ingested::Published(_))));
        assert_eq!(
            results[4].as_ref().unwrap(),
            &Ingested::Repeat(results[0].as_ref().unwrap().ids().to_vec()),
            "a repeat within the batch"
        );
        assert_eq!(hub.stats(10, None).totals.published, 3);
        assert!(
            !hub.ingest_once(once("bad").unwrap(), vec![event(&["a"], &[], "ok")]).await.unwrap().is_repeat(),
            "the refused one's key is free"
        );
    }
}
