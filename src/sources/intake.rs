//! One message into the hub: mapped to an event, published through the hub's one publish path
//! under the message's id as idempotency key, and answered with what the source must tell its
//! broker. A message the hub cannot take now (the store or the bus is down, the hub is full) is
//! held and tried again with backoff: the source acknowledges nothing meanwhile, so the broker
//! stops delivering once its prefetch is used up, and nothing is buffered without bound.

use super::backoff::Backoff;
use super::mapping::{Mapper, Message};
use super::status::SourceStatus;
use crate::hub::{ChannelError, Hub, Ingested, Once, PublishError, Submission};
use std::sync::Arc;

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published (and as durable as the store promises): acknowledge it.
    Accepted,
    /// Published before, within `dedupe_window`: acknowledge it, nothing was published now.
    Duplicate,
    /// It can never be an event: reject it without requeueing (to a dead-letter exchange where
    /// there is one).
    Rejected(String),
}

/// Most messages taken in one go.
pub const MAX_BATCH: usize = 512;

/// The next item of a broker's stream, and every item already delivered after it (up to
/// `max`): what is taken as one batch. `None` once the stream has ended.
pub async fn next_batch<S: futures_util::Stream + Unpin>(stream: &mut S, max: usize) -> Option<Vec<S::Item>> {
    use futures_util::{FutureExt, StreamExt};
    let first = stream.next().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match stream.next().now_or_never() {
            Some(Some(item)) => batch.push(item),
            _ => break,
        }
    }
    Some(batch)
}

/// How a message is known again when its broker delivers it twice.
#[derive(Debug, Clone, Copy)]
pub enum Redelivery<'a> {
    /// The broker gives no id: a redelivery cannot be told from a new message.
    Unknown,
    /// The broker's own id of the message, the same on every delivery.
    Id(&'a str),
    /// MQTT's packet id, which the broker gives another message once this one is
    /// acknowledged, and whether this delivery is a retransmission (DUP). A message is known by
    /// its packet id and contents; only a retransmission can be a repeat.
    Packet { id: u16, dup: bool },
}

impl<'a> From<Option<&'a str>> for Redelivery<'a> {
    fn from(id: Option<&'a str>) -> Self {
        id.map_or(Redelivery::Unknown, Redelivery::Id)
    }
}

pub struct Intake {
    pub hub: Arc<Hub>,
    pub status: Arc<SourceStatus>,
    mapper: Mapper,
    dedupe: bool,
    /// See [`super::ABORT_BEFORE_ACK`].
    abort_before_ack: bool,
}

impl Intake {
    pub fn new(hub: Arc<Hub>, status: Arc<SourceStatus>, mapper: Mapper, dedupe: bool) -> Self {
        let abort_before_ack = std::env::var(super::ABORT_BEFORE_ACK).is_ok_and(|name| name == status.name);
        Intake { hub, status, mapper, dedupe, abort_before_ack }
    }

    pub fn name(&self) -> &str {
        &self.status.name
    }

    /// Takes the messages a broker has delivered so far, in order (`id` is the broker's id
    /// of each), as one publish: one pass through the sequencer and one store sync for all.
    /// Returns what became of each, or `None` when the hub is shutting down before they could
    /// be taken: leave them unacknowledged, the broker gives them again.
    pub async fn take<'a, K: Into<Redelivery<'a>> + Copy>(&self, msgs: &[(Message<'_>, K)]) -> Option<Vec<Outcome>> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; msgs.len()];
        // What is still to publish: (index, key, event).
        let mut pending = Vec::with_capacity(msgs.len());
        for (i, (msg, id)) in msgs.iter().enumerate() {
            self.status.received();
            match self.mapper.map(msg) {
                Ok(sub) => {
                    let once = if self.dedupe { self.once((*id).into(), &sub) } else { None };
                    pending.push((i, once, sub));
                }
                Err(why) => outcomes[i] = Some(self.reject(why)),
            }
        }
        let mut backoff = Backoff::new();
        while !pending.is_empty() {
            // The events are handed over; one the hub could not take now is mapped again from
            // its message (the rare path) rather than copied for every message.
            let mut held = Vec::with_capacity(pending.len());
            let mut batch = Vec::with_capacity(pending.len());
            for (i, once, sub) in pending {
                held.push((i, once.clone()));
                batch.push((once, sub));
            }
            let results = self.hub.ingest_each(batch).await;
            let mut again = Vec::new();
            let mut stalled = None;
            for ((i, once), result) in held.into_iter().zip(results) {
                match result {
                    Ok(Ingested::Repeat(_)) => {
                        self.status.duplicate();
                        tracing::debug!(source = %self.name(), key = ?once.as_ref().map(|o| &o.key), "a message published before: acknowledged, not published again");
                        outcomes[i] = Some(Outcome::Duplicate);
                    }
                    Ok(Ingested::Published(_)) => {
                        self.status.accepted();
                        if self.abort_before_ack {
                            tracing::error!(source = %self.name(), "{}: aborting between accept and acknowledgement", super::ABORT_BEFORE_ACK);
                            std::process::abort();
                        }
                        outcomes[i] = Some(Outcome::Accepted);
                    }
                    Err(PublishError::Channel(ChannelError::Closing)) => return None,
                    Err(e @ (PublishError::Store(_) | PublishError::Bus(_) | PublishError::Channel(ChannelError::Limit(_)))) => {
                        stalled = Some(e.to_string());
                        let sub = self.mapper.map(&msgs[i].0).expect("a message that mapped once maps again");
                        again.push((i, once, sub));
                    }
                    Err(PublishError::KeyReused(key)) => {
                        outcomes[i] = Some(self.reject(format!("its id ({key}) was already used for a different message")));
                    }
                    Err(e) => outcomes[i] = Some(self.reject(e.to_string())),
                }
            }
            pending = again;
            if let Some(why) = stalled {
                if self.hub.is_closing() {
                    return None;
                }
                tracing::warn!(source = %self.name(), error = %why, held = pending.len(), "the hub cannot take messages now: holding them and trying again");
                self.status.stall(Some(why));
                backoff.wait().await;
            }
        }
        self.status.stall(None);
        Some(outcomes.into_iter().map(|o| o.expect("every message has an outcome")).collect())
    }

    /// The idempotency key of a message, if its broker lets it be known again.
    fn once(&self, redelivery: Redelivery<'_>, sub: &Submission) -> Option<Once> {
        let subs = std::slice::from_ref(sub);
        match redelivery {
            Redelivery::Unknown => None,
            Redelivery::Id(id) => Some(Once::of_batch(format!("src:{}:{id}", self.name()), subs)),
            Redelivery::Packet { id, dup } => {
                let mut once = Once::of_batch(String::new(), subs);
                once.key = format!("src:{}:p{id}:{}", self.name(), hex::encode(&once.fingerprint[..8]));
                once.new = !dup;
                Some(once)
            }
        }
    }

    fn reject(&self, why: String) -> Outcome {
        self.status.rejected();
        tracing::warn!(source = %self.name(), reason = %why, "message rejected");
        Outcome::Rejected(why)
    }
}
