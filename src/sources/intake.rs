//! One message into the hub: mapped to an event, published through the hub's one publish path
//! under the message's id as idempotency key, and answered with what the source must tell its
//! broker. A message the hub cannot take now (the store or the bus is down, the hub is full) is
//! held and tried again with backoff: the source acknowledges nothing meanwhile, so the broker
//! stops delivering once its prefetch is used up, and nothing is buffered without bound.

use super::backoff::Backoff;
use super::mapping::{Mapper, Message};
use super::status::SourceStatus;
use crate::hub::{ChannelError, Hub, Once, PublishError};
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

    /// Takes one message; `id` is the broker's id for it. `None` when the hub is shutting down
    /// before it could be taken: leave it unacknowledged, the broker gives it again.
    pub async fn take(&self, msg: &Message<'_>, id: Option<&str>) -> Option<Outcome> {
        self.status.received();
        let submission = match self.mapper.map(msg) {
            Ok(s) => s,
            Err(why) => return Some(self.reject(why)),
        };
        let key = id.filter(|_| self.dedupe).map(|id| format!("src:{}:{id}", self.name()));
        let mut backoff = Backoff::new();
        loop {
            let batch = vec![submission.clone()];
            let result = match &key {
                Some(key) => {
                    let once = Once::of_batch(key.clone(), &batch);
                    self.hub.ingest_once(once, batch).await.map(|i| i.is_repeat())
                }
                None => self.hub.ingest(batch).await.map(|_| false),
            };
            match result {
                Ok(repeat) => {
                    self.status.stall(None);
                    return Some(if repeat {
                        self.status.duplicate();
                        tracing::debug!(source = %self.name(), id, "a message published before: acknowledged, not published again");
                        Outcome::Duplicate
                    } else {
                        self.status.accepted();
                        if self.abort_before_ack {
                            tracing::error!(source = %self.name(), "{}: aborting between accept and acknowledgement", super::ABORT_BEFORE_ACK);
                            std::process::abort();
                        }
                        Outcome::Accepted
                    });
                }
                Err(PublishError::Channel(ChannelError::Closing)) => return None,
                Err(e @ (PublishError::Store(_) | PublishError::Bus(_) | PublishError::Channel(ChannelError::Limit(_)))) => {
                    if self.hub.is_closing() {
                        return None;
                    }
                    let why = e.to_string();
                    tracing::warn!(source = %self.name(), error = %why, "the hub cannot take the message now: holding it and trying again");
                    self.status.stall(Some(why));
                    backoff.wait().await;
                }
                Err(PublishError::KeyReused(_)) => {
                    return Some(self.reject(format!("message id `{}` was already used for a different message", id.unwrap_or(""))));
                }
                Err(e) => return Some(self.reject(e.to_string())),
            }
        }
    }

    fn reject(&self, why: String) -> Outcome {
        self.status.rejected();
        tracing::warn!(source = %self.name(), reason = %why, "message rejected");
        Outcome::Rejected(why)
    }
}
