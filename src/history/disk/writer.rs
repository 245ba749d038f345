//! The one thread that writes the disk store.
//!
//! Publishers queue their events and wait. The writer takes everything queued at once, writes it
//! as one batch, syncs once (with `fsync = "always"`), and then answers every publisher of the
//! group: concurrent publishers share an fsync, so durable publishing keeps a high rate. Between
//! groups it applies retention (count and age per channel) and, with `fsync = "interval"`, syncs
//! on time.

use super::record;
use crate::config::FsyncMode;
use crate::event::Event;
use crate::history::{Retention, StoreError};
use fjall::{Database, Keyspace, PersistMode};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often retention by age is applied.
const AGE_SWEEP_EVERY: Duration = Duration::from_secs(1);

pub enum Command {
    Append {
        events: Vec<Arc<Event>>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Make everything written so far durable.
    Flush {
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Delete a reclaimed channel's events up to `upto`.
    Forget {
        channel: Arc<str>,
        upto: u64,
    },
}

/// Looks up a channel's retention (its `[[channels]]` settings, or the defaults).
pub type RetentionOf = Box<dyn Fn(&str) -> Option<Retention> + Send>;

struct ChannelState {
    /// Events of the channel on disk.
    count: u64,
    retention: Option<Retention>,
}

pub struct Writer {
    pub db: Database,
    pub events: Keyspace,
    pub floors: Keyspace,
    pub fsync: FsyncMode,
    pub fsync_interval: Duration,
    pub retention_of: RetentionOf,
    channels: HashMap<Arc<str>, ChannelState>,
    /// Written since the last sync to disk.
    unsynced: bool,
}

impl Writer {
    pub fn new(
        db: Database,
        events: Keyspace,
        floors: Keyspace,
        fsync: FsyncMode,
        fsync_interval: Duration,
        retention_of: RetentionOf,
    ) -> Self {
        Writer { db, events, floors, fsync, fsync_interval, retention_of, channels: HashMap::new(), unsynced: false }
    }

    /// Events already on disk for `channel` (from recovery).
    pub fn know(&mut self, channel: Arc<str>, count: u64) {
        let retention = (self.retention_of)(&channel);
        self.channels.insert(channel, ChannelState { count, retention });
    }

    pub fn run(mut self, commands: Receiver<Command>) {
        let mut next_age_sweep = Instant::now() + AGE_SWEEP_EVERY;
        let mut next_sync = Instant::now() + self.fsync_interval;
        loop {
            let now = Instant::now();
            let mut deadline = next_age_sweep;
            if self.fsync == FsyncMode::Interval && self.unsynced {
                deadline = deadline.min(next_sync);
            }
            match commands.recv_timeout(deadline.saturating_duration_since(now)) {
                Ok(first) => {
                    let mut group = vec![first];
                    group.extend(commands.try_iter());
                    self.write_group(group);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(e) = self.sync() {
                        tracing::error!(error = %e, "history store: final sync failed");
                    }
                    return;
                }
            }
            let now = Instant::now();
            if self.fsync == FsyncMode::Interval && now >= next_sync {
                next_sync = now + self.fsync_interval;
                if let Err(e) = self.sync() {
                    tracing::error!(error = %e, "history store: interval sync failed");
                }
            }
            if now >= next_age_sweep {
                next_age_sweep = now + AGE_SWEEP_EVERY;
                if let Err(e) = self.expire() {
                    tracing::error!(error = %e, "history store: retention by age failed");
                }
            }
        }
    }

    /// Writes a group of commands as one batch, syncs as configured, answers them all.
    fn write_group(&mut self, group: Vec<Command>) {
        let mut batch = self.db.batch();
        let mut flush = false;
        let mut touched: Vec<Arc<str>> = Vec::new();
        let mut forgotten: Vec<(Arc<str>, u64)> = Vec::new();
        let wall = crate::event::now_wall_us();
        for cmd in &group {
            match cmd {
                Command::Append { events, .. } => {
                    for ev in events {
                        let value = record::encode(ev, wall);
                        for ch in ev.channels.iter() {
                            batch.insert(&self.events, record::key(ch, ev.pos), value.clone());
                            let state = self
                                .channels
                                .entry(ch.clone())
                                .or_insert_with(|| ChannelState { count: 0, retention: (self.retention_of)(ch) });
                            state.count += 1;
                            touched.push(ch.clone());
                        }
                    }
                }
                Command::Flush { .. } => flush = true,
                Command::Forget { channel, upto } => forgotten.push((channel.clone(), *upto)),
            }
        }
        let result = batch
            .commit()
            .and_then(|()| {
                self.unsynced = true;
                // Every batch reaches the operating system as it commits (fjall's journal is
                // flushed on each write unless `manual_journal_persist` is set), so an answered
                // event survives a crash of the process in every mode; `always` also survives a
                // crash of the machine.
                if self.fsync == FsyncMode::Always || flush { self.sync() } else { Ok(()) }
            })
            .map_err(|e| StoreError(format!("write: {e}")));
        for cmd in group {
            let done = match cmd {
                Command::Append { done, .. } | Command::Flush { done } => done,
                Command::Forget { .. } => continue,
            };
            let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| StoreError(e.0.clone())));
        }
        // After the batch: a forget only ever follows the appends of what it forgets.
        for (channel, upto) in forgotten {
            match self.delete_oldest(&channel, |pos, _| pos <= upto) {
                Ok(removed) => self.removed(&channel, removed),
                Err(e) => tracing::error!(%channel, error = %e, "history store: could not delete a reclaimed channel"),
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for ch in touched {
            if let Err(e) = self.trim(&ch) {
                tracing::error!(channel = %ch, error = %e, "history store: retention by count failed");
            }
        }
    }

    fn sync(&mut self) -> fjall::Result<()> {
        self.db.persist(PersistMode::SyncAll)?;
        self.unsynced = false;
        Ok(())
    }

    /// Retention by count: once a channel is well over its size, deletes its oldest events.
    fn trim(&mut self, channel: &Arc<str>) -> fjall::Result<()> {
        let Some(state) = self.channels.get(channel) else { return Ok(()) };
        let Some(retention) = state.retention else { return Ok(()) };
        let keep = retention.max_events as u64;
        // Trimmed back to its size once a tenth over it, so that trimming is one range delete now
        // and then rather than one delete per publish.
        if state.count <= keep + (keep / 10).max(1) {
            return Ok(());
        }
        let excess = state.count - keep;
        let removed = self.delete_oldest(channel, |_, n| n < excess)?;
        self.removed(channel, removed);
        Ok(())
    }

    /// Retention by age, for every channel that has one.
    fn expire(&mut self) -> fjall::Result<()> {
        let now = crate::event::now_wall_us();
        let aged: Vec<(Arc<str>, u64)> = self
            .channels
            .iter()
            .filter_map(|(name, s)| {
                let age = s.retention?.max_age?;
                (s.count > 0).then(|| (name.clone(), now.saturating_sub(age.as_micros() as u64)))
            })
            .collect();
        for (channel, cutoff) in aged {
            // Positions are µs since the epoch, never earlier than the publish time.
            let removed = self.delete_oldest(&channel, |pos, _| pos < cutoff)?;
            self.removed(&channel, removed);
        }
        Ok(())
    }

    /// Counts `n` events of `channel` as deleted. A channel left with none is forgotten, so
    /// that one-off channels (one per user, per order...) do not accumulate here; it comes back
    /// with its next event. Its floor stays on disk.
    fn removed(&mut self, channel: &str, n: u64) {
        if let Some(state) = self.channels.get_mut(channel) {
            state.count -= n;
            if state.count == 0 {
                self.channels.remove(channel);
            }
        }
    }

    /// Deletes a channel's oldest events while `more(pos, deleted so far)` holds, and records
    /// the newest deleted position as the channel's floor (a client resuming from before it has
    /// missed events). Returns how many were deleted.
    fn delete_oldest(&mut self, channel: &str, more: impl Fn(u64, u64) -> bool) -> fjall::Result<u64> {
        let mut batch = self.db.batch();
        let mut removed = 0;
        let mut floor = None;
        for guard in self.events.prefix(record::channel_prefix(channel)) {
            let key = guard.key()?;
            let Some((_, pos)) = record::split_key(&key) else { continue };
            if !more(pos, removed) {
                break;
            }
            batch.remove(&self.events, key.clone());
            floor = Some(pos);
            removed += 1;
        }
        if let Some(pos) = floor {
            batch.insert(&self.floors, channel.as_bytes(), pos.to_be_bytes().to_vec());
            batch.commit()?;
            self.unsynced = true;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn channels_whose_events_all_aged_out_are_forgotten_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let events = db.keyspace("events", fjall::KeyspaceCreateOptions::default).unwrap();
        let floors = db.keyspace("floors", fjall::KeyspaceCreateOptions::default).unwrap();
        let retention = Retention { max_events: 10, max_age: Some(Duration::from_millis(1)) };
        let mut writer = Writer::new(db, events, floors, FsyncMode::Never, Duration::from_secs(1), Box::new(move |_| Some(retention)));
        // Positions are µs since the epoch; these are long past the 1 ms age.
        let event = |pos: u64, channel: &str| {
            Arc::new(Event {
                pos,
                custom_id: None,
                channels: vec![Arc::from(channel)].into(),
                frame: Bytes::from_static(b"data: x\n\n"),
                published_at: Instant::now(),
            })
        };
        let append = |writer: &mut Writer, events: Vec<Arc<Event>>| {
            let (done, _answer) = oneshot::channel();
            writer.write_group(vec![Command::Append { events, done }]);
        };
        append(&mut writer, (1..=1000).map(|i| event(i, &format!("user-{i}"))).collect());
        assert_eq!(writer.channels.len(), 1000);
        writer.expire().unwrap();
        assert!(writer.channels.is_empty(), "every channel's events aged out");
        assert_eq!(writer.events.iter().count(), 0);
        append(&mut writer, vec![event(crate::event::now_wall_us(), "user-1")]);
        assert_eq!(writer.channels["user-1"].count, 1, "a channel comes back with its next event");
    }
}
