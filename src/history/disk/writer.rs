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
use crate::history::{Mark, Retention, StoreError};
use fjall::{Database, Keyspace, PersistMode};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often retention by age is applied.
const AGE_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often a store that failed is reopened to see whether it can be written again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);
/// Floors kept for channels with no event left on disk (all expired or reclaimed). Past it the
/// oldest are folded into the one shared floor (`record::BASE_FLOOR`): a client resuming in such
/// a channel is then told it may have missed events if its id is older than that, which errs on
/// the side of a notice, and one-off channels cannot grow the store for ever.
pub const MAX_DORMANT_FLOORS: usize = 100_000;

pub enum Command {
    Append {
        events: Vec<Arc<Event>>,
        /// The idempotency keys they were published under, written in the same batch.
        marks: Vec<Mark>,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Make everything written so far durable.
    Flush { done: oneshot::Sender<Result<(), StoreError>> },
    /// Delete a reclaimed channel's events up to `upto`.
    Forget { channel: Arc<str>, upto: u64 },
}

/// Looks up a channel's retention (its `[[channels]]` settings, or the defaults).
pub type RetentionOf = Box<dyn Fn(&str) -> Option<Retention> + Send>;

struct ChannelState {
    /// Events of the channel on disk.
    count: u64,
    retention: Option<Retention>,
}

/// The open database and its keyspaces.
pub struct Engine {
    pub db: Database,
    pub events: Keyspace,
    pub floors: Keyspace,
    /// Idempotency keys (see `record::mark_key`).
    pub marks: Keyspace,
}

impl Engine {
    pub fn open(dir: &Path) -> fjall::Result<Engine> {
        let db = Database::builder(dir).open()?;
        let events = db.keyspace("events", fjall::KeyspaceCreateOptions::default)?;
        let floors = db.keyspace("floors", fjall::KeyspaceCreateOptions::default)?;
        let marks = db.keyspace("marks", fjall::KeyspaceCreateOptions::default)?;
        Ok(Engine { db, events, floors, marks })
    }
}

/// Whether the store takes writes, for `/healthz`: `None` when it does, else why not.
#[derive(Default)]
pub struct Health(parking_lot::Mutex<Option<String>>);

impl Health {
    pub fn problem(&self) -> Option<String> {
        self.0.lock().clone()
    }

    fn set(&self, problem: Option<String>) {
        *self.0.lock() = problem;
    }
}

/// A write or a sync failed (a full disk, an I/O error). Nothing more is written, and nothing
/// acknowledged, until the store has been reopened (which reads back and checks what really
/// is on disk) and the events of the failed writes, which may or may not have reached it, are
/// deleted: a later sync that succeeds says nothing about writes before a failed one, so they
/// must not count as safe (the fsync-gate problem).
struct Poison {
    why: String,
    /// Keys of the events whose writes failed.
    failed: Vec<Vec<u8>>,
    /// Keys of the marks written with them: a publish that failed is no repeat.
    failed_marks: Vec<Vec<u8>>,
    /// Reclaimed channels to delete once the store is back.
    forgets: Vec<(Arc<str>, u64)>,
}

pub struct Writer {
    /// `None` while a failed store is closed to be reopened.
    engine: Option<Engine>,
    dir: PathBuf,
    fsync: FsyncMode,
    fsync_interval: Duration,
    retention_of: RetentionOf,
    channels: HashMap<Arc<str>, ChannelState>,
    /// Written since the last sync to disk.
    unsynced: bool,
    poison: Option<Poison>,
    health: Arc<Health>,
    /// The newest position written, and the newest recorded in the tally (see `tally.rs`).
    newest: u64,
    tallied: Option<super::tally::Tally>,
    /// Event records ever committed, and ever deleted (as the store's own counter says).
    appended: u64,
    deleted: u64,
    /// Channels whose events all left the disk but whose floor is kept, with that floor.
    dormant: Vec<(u64, Arc<str>)>,
    dormant_cap: usize,
    /// The shared floor on disk (`record::BASE_FLOOR`) that folded dormant floors went into.
    base_floor: u64,
}

impl Writer {
    pub fn new(
        engine: Engine,
        dir: PathBuf,
        fsync: FsyncMode,
        fsync_interval: Duration,
        retention_of: RetentionOf,
        health: Arc<Health>,
    ) -> Self {
        Writer {
            engine: Some(engine),
            dir,
            fsync,
            fsync_interval,
            retention_of,
            channels: HashMap::new(),
            unsynced: false,
            poison: None,
            health,
            newest: 0,
            tallied: None,
            appended: 0,
            deleted: 0,
            dormant: Vec::new(),
            dormant_cap: MAX_DORMANT_FLOORS,
            base_floor: 0,
        }
    }

    /// A channel with floor `floor` on disk and no events (from recovery).
    pub fn know_dormant(&mut self, channel: Arc<str>, floor: u64) {
        self.dormant.push((floor, channel));
    }

    /// The shared floor start-up read back.
    pub fn know_base_floor(&mut self, base: u64) {
        self.base_floor = base;
    }

    /// Folds the oldest dormant floors past [`MAX_DORMANT_FLOORS`] into the shared floor.
    fn fold_dormant(&mut self) {
        if self.dormant.len() <= self.dormant_cap || self.poison.is_some() {
            return;
        }
        let Some(engine) = &self.engine else { return };
        let floor_of = |key: &[u8]| engine.floors.get(key).ok().flatten().and_then(|v| record::decode_floor(&v));
        let mut base = floor_of(record::BASE_FLOOR).unwrap_or(0);
        let mut batch = engine.db.batch();
        // The newest floors stay: the oldest are folded.
        self.dormant.sort_unstable_by_key(|(floor, _)| std::cmp::Reverse(*floor));
        while self.dormant.len() > self.dormant_cap {
            let (_, name) = self.dormant.pop().expect("over the cap");
            // Back in use: its floor is its own again.
            if self.channels.contains_key(&name) {
                continue;
            }
            if let Some(floor) = floor_of(name.as_bytes()) {
                base = base.max(floor);
                batch.remove(&engine.floors, name.as_bytes());
            }
        }
        batch.insert(&engine.floors, record::BASE_FLOOR, record::floor_value(base));
        match batch.commit() {
            Ok(()) => {
                self.unsynced = true;
                self.base_floor = base;
            }
            Err(e) => self.poisoned(format!("folding floors: {e}"), Vec::new()),
        }
    }

    /// What start-up read back is accounted for (`present` records on disk, `deleted` by
    /// retention so far, positions up to `newest` read back or known lost): the tally starts
    /// there, written at once so that a loss found now is not reported again.
    pub fn start_tally(&mut self, newest: u64, present: u64, deleted: u64) {
        self.newest = newest;
        self.deleted = deleted;
        self.appended = present + deleted;
        self.write_tally();
    }

    fn write_tally(&mut self) {
        let tally = super::tally::Tally { newest: self.newest, appended: Some(self.appended) };
        if self.tallied == Some(tally) {
            return;
        }
        match super::tally::write(&self.dir, tally) {
            Ok(()) => self.tallied = Some(tally),
            Err(e) => tracing::warn!(error = %e, "history store: could not write the tally"),
        }
    }

    /// Events already on disk for `channel` (from recovery).
    pub fn know(&mut self, channel: Arc<str>, count: u64) {
        let retention = (self.retention_of)(&channel);
        self.channels.insert(channel, ChannelState { count, retention });
    }

    pub fn run(mut self, commands: Receiver<Command>) {
        let mut next_age_sweep = Instant::now() + AGE_SWEEP_EVERY;
        let mut next_sync = Instant::now() + self.fsync_interval;
        let mut next_reopen = Instant::now();
        loop {
            let now = Instant::now();
            let mut deadline = next_age_sweep;
            if self.fsync == FsyncMode::Interval && self.unsynced {
                deadline = deadline.min(next_sync);
            }
            if self.poison.is_some() {
                deadline = deadline.min(next_reopen);
            }
            match commands.recv_timeout(deadline.saturating_duration_since(now)) {
                Ok(first) => {
                    let mut group = vec![first];
                    group.extend(commands.try_iter());
                    self.write_group(group);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    if self.poison.is_none() {
                        match self.sync() {
                            Ok(()) => self.write_tally(),
                            Err(e) => tracing::error!(error = %e, "history store: final sync failed"),
                        }
                    }
                    return;
                }
            }
            let now = Instant::now();
            if self.poison.is_some() && now >= next_reopen {
                next_reopen = now + REOPEN_EVERY;
                self.reopen();
            }
            if self.fsync == FsyncMode::Interval && now >= next_sync {
                next_sync = now + self.fsync_interval;
                if let Err(e) = self.sync() {
                    self.poisoned(format!("interval sync: {e}"), Vec::new());
                }
            }
            if now >= next_age_sweep {
                next_age_sweep = now + AGE_SWEEP_EVERY;
                if self.poison.is_none() {
                    self.fold_dormant();
                    self.write_tally();
                }
                if let Err(e) = self.expire() {
                    self.poisoned(format!("retention by age: {e}"), Vec::new());
                }
                if let Err(e) = self.expire_marks() {
                    self.poisoned(format!("expiring idempotency keys: {e}"), Vec::new());
                }
            }
        }
    }

    /// Writes a group of commands as one batch, syncs as configured, answers them all.
    fn write_group(&mut self, group: Vec<Command>) {
        if let Some(poison) = &mut self.poison {
            let refusal = StoreError(format!("the store is not writable ({}); it is reopened every second", poison.why));
            for cmd in group {
                match cmd {
                    Command::Append { done, .. } | Command::Flush { done } => drop(done.send(Err(refusal.clone()))),
                    Command::Forget { channel, upto } => poison.forgets.push((channel, upto)),
                }
            }
            return;
        }
        let Some(engine) = &self.engine else { return };
        let mut batch = engine.db.batch();
        let mut flush = false;
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut mark_keys: Vec<Vec<u8>> = Vec::new();
        let mut touched: Vec<Arc<str>> = Vec::new();
        let mut forgotten: Vec<(Arc<str>, u64)> = Vec::new();
        let wall = crate::event::now_wall_us();
        for cmd in &group {
            match cmd {
                Command::Append { events, marks, .. } => {
                    for mark in marks {
                        let key = record::mark_key(mark);
                        batch.insert(&engine.marks, key.clone(), record::mark_value(mark));
                        mark_keys.push(key);
                    }
                    for ev in events {
                        let value = record::encode(ev, wall);
                        for ch in ev.channels.iter() {
                            // A channel back on disk after its floor was folded into the shared
                            // one takes that floor as its own (as the hub gave it when it came
                            // back), so that once it has events again, start-up does not lose
                            // it. Looked up only for channels new to the writer, only once
                            // floors were ever folded.
                            if self.base_floor > 0
                                && !self.channels.contains_key(ch)
                                && matches!(engine.floors.get(ch.as_bytes()), Ok(None))
                            {
                                batch.insert(&engine.floors, ch.as_bytes(), record::floor_value(self.base_floor));
                            }
                            let key = record::key(ch, ev.pos);
                            batch.insert(&engine.events, key.clone(), value.clone());
                            keys.push(key);
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
        if let Err(e) = &result {
            self.poisoned(e.0.clone(), keys);
            if let Some(poison) = &mut self.poison {
                poison.forgets.append(&mut forgotten);
                poison.failed_marks.append(&mut mark_keys);
            }
            touched.clear();
        } else {
            if let Some(pos) =
                group.iter().filter_map(|c| if let Command::Append { events, .. } = c { events.last() } else { None }).map(|e| e.pos).max()
            {
                self.newest = self.newest.max(pos);
            }
            self.appended += keys.len() as u64;
            for ch in &touched {
                let retention_of = &self.retention_of;
                self.channels.entry(ch.clone()).or_insert_with(|| ChannelState { count: 0, retention: retention_of(ch) }).count += 1;
            }
        }
        for cmd in group {
            let done = match cmd {
                Command::Append { done, .. } | Command::Flush { done } => done,
                Command::Forget { .. } => continue,
            };
            let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| StoreError(e.0.clone())));
        }
        // After the batch: a forget only ever follows the appends of what it forgets.
        self.forget(forgotten);
        touched.sort_unstable();
        touched.dedup();
        for ch in touched {
            if let Err(e) = self.trim(&ch) {
                self.poisoned(format!("retention by count on `{ch}`: {e}"), Vec::new());
            }
        }
    }

    /// Deletes the idempotency keys past their window: one range at the front of `marks`.
    fn expire_marks(&mut self) -> fjall::Result<()> {
        if self.poison.is_some() {
            return Ok(());
        }
        let Some(engine) = &self.engine else { return Ok(()) };
        let end = record::marks_after(crate::event::now_wall_us());
        let mut batch = engine.db.batch();
        let mut n = 0;
        for guard in engine.marks.range(..end.as_slice()) {
            batch.remove(&engine.marks, guard.key()?);
            n += 1;
        }
        if n > 0 {
            batch.commit()?;
            self.unsynced = true;
        }
        Ok(())
    }

    fn forget(&mut self, forgotten: Vec<(Arc<str>, u64)>) {
        for (channel, upto) in forgotten {
            match self.delete_oldest(&channel, |pos, _| pos <= upto) {
                Ok((removed, floor)) => self.removed(&channel, removed, floor),
                Err(e) => tracing::error!(%channel, error = %e, "history store: could not delete a reclaimed channel"),
            }
        }
    }

    /// A write failed: refuse everything until [`reopen`](Self::reopen) succeeds.
    fn poisoned(&mut self, why: String, failed: Vec<Vec<u8>>) {
        match &mut self.poison {
            Some(poison) => poison.failed.extend(failed),
            None => {
                tracing::error!(
                    error = %why,
                    dir = %self.dir.display(),
                    "history store: a write failed; publishes are refused (503) and /healthz reports it until the store \
                     is reopened, which is tried every second"
                );
                self.health.set(Some(format!("history store not writable: {why}")));
                self.poison = Some(Poison { why, failed, failed_marks: Vec::new(), forgets: Vec::new() });
            }
        }
    }

    /// Closes the store, opens it again (which reads back and checks what is on disk), deletes
    /// the events whose writes failed and syncs. Once that works, writes go on.
    fn reopen(&mut self) {
        let Some(poison) = &self.poison else { return };
        // Closed first: the directory is locked while it is open.
        self.engine = None;
        let attempt = Engine::open(&self.dir).and_then(|engine| {
            let mut batch = engine.db.batch();
            for key in &poison.failed {
                batch.remove(&engine.events, key.clone());
            }
            for key in &poison.failed_marks {
                batch.remove(&engine.marks, key.clone());
            }
            batch.commit()?;
            engine.db.persist(PersistMode::SyncAll)?;
            Ok(engine)
        });
        match attempt {
            Ok(engine) => {
                self.engine = Some(engine);
                let poison = self.poison.take().expect("checked above");
                tracing::warn!(
                    after = %poison.why,
                    removed = poison.failed.len(),
                    "history store: reopened and writable again; the events of the failed writes were removed"
                );
                self.health.set(None);
                self.unsynced = false;
                self.forget(poison.forgets);
            }
            Err(e) => {
                tracing::debug!(error = %e, "history store: still not writable");
                self.health.set(Some(format!("history store not writable: {} (reopening: {e})", poison.why)));
            }
        }
    }

    fn sync(&mut self) -> fjall::Result<()> {
        if let Some(engine) = &self.engine {
            let started = std::time::Instant::now();
            engine.db.persist(PersistMode::SyncAll)?;
            crate::telemetry::counters::fsync_took(started.elapsed());
        }
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
        let (removed, floor) = self.delete_oldest(channel, |_, n| n < excess)?;
        self.removed(channel, removed, floor);
        Ok(())
    }

    /// Retention by age, for every channel that has one.
    fn expire(&mut self) -> fjall::Result<()> {
        if self.poison.is_some() {
            return Ok(());
        }
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
            let (removed, floor) = self.delete_oldest(&channel, |pos, _| pos < cutoff)?;
            self.removed(&channel, removed, floor);
        }
        Ok(())
    }

    /// Counts `n` events of `channel` as deleted. A channel left with none is forgotten, so
    /// that one-off channels (one per user, per order...) do not accumulate here; it comes back
    /// with its next event. Its floor stays on disk.
    fn removed(&mut self, channel: &str, n: u64, floor: u64) {
        if let Some(state) = self.channels.get_mut(channel) {
            state.count = state.count.saturating_sub(n);
            if state.count == 0
                && let Some((name, _)) = self.channels.remove_entry(channel)
            {
                self.dormant.push((floor, name));
            }
        }
    }

    /// Deletes a channel's oldest events while `more(pos, deleted so far)` holds, and records
    /// the newest deleted position as the channel's floor (a client resuming from before it has
    /// missed events). Returns how many were deleted, and that floor.
    fn delete_oldest(&mut self, channel: &str, more: impl Fn(u64, u64) -> bool) -> fjall::Result<(u64, u64)> {
        let Some(engine) = &self.engine else { return Ok((0, 0)) };
        let mut batch = engine.db.batch();
        let mut removed = 0;
        let mut floor = None;
        for guard in engine.events.prefix(record::channel_prefix(channel)) {
            let key = guard.key()?;
            let Some((_, pos)) = record::split_key(&key) else { continue };
            if !more(pos, removed) {
                break;
            }
            batch.remove(&engine.events, key.clone());
            floor = Some(pos);
            removed += 1;
        }
        if let Some(pos) = floor {
            batch.insert(&engine.floors, channel.as_bytes(), record::floor_value(pos));
            batch.insert(&engine.floors, record::DELETED, record::floor_value(self.deleted + removed));
            batch.commit()?;
            self.deleted += removed;
            self.unsynced = true;
        }
        Ok((removed, floor.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn channels_whose_events_all_aged_out_are_forgotten_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention { max_events: 10, max_age: Some(Duration::from_millis(1)) };
        let mut writer = Writer::new(
            Engine::open(dir.path()).unwrap(),
            dir.path().to_owned(),
            FsyncMode::Never,
            Duration::from_secs(1),
            Box::new(move |_| Some(retention)),
            Arc::default(),
        );
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
            writer.write_group(vec![Command::Append { events, marks: Vec::new(), done }]);
        };
        append(&mut writer, (1..=1000).map(|i| event(i, &format!("user-{i}"))).collect());
        assert_eq!(writer.channels.len(), 1000);
        writer.expire().unwrap();
        assert!(writer.channels.is_empty(), "every channel's events aged out");
        assert_eq!(writer.engine.as_ref().unwrap().events.iter().count(), 0);
        append(&mut writer, vec![event(crate::event::now_wall_us(), "user-1")]);
        assert_eq!(writer.channels["user-1"].count, 1, "a channel comes back with its next event");
        // 1,000 floors of gone channels: past the cap, the oldest are folded into one.
        writer.dormant_cap = 10;
        writer.fold_dormant();
        let floors = &writer.engine.as_ref().unwrap().floors;
        assert_eq!(floors.iter().count(), 13, "the ten newest floors, user-1's (back in use), the shared one and the deletion count");
        let base = floors.get(record::BASE_FLOOR).unwrap().unwrap();
        assert_eq!(record::decode_floor(&base), Some(990), "the newest folded floor");

        // user-5's floor (5) was folded. Back with an event, it takes the shared floor as its
        // own, so that start-up gives it that floor while it has events (it used to give it
        // none: a client resuming from before 5 was told nothing). user-995 kept its own.
        let now = crate::event::now_wall_us();
        append(&mut writer, vec![event(now + 1, "user-5"), event(now + 2, "user-995"), event(now + 3, "user-5")]);
        let floors = &writer.engine.as_ref().unwrap().floors;
        let own = |name: &str| floors.get(name).unwrap().and_then(|v| record::decode_floor(&v));
        assert_eq!(own("user-5"), Some(990));
        assert_eq!(own("user-995"), Some(995), "an own floor stays as it is");
        let engine = writer.engine.as_ref().unwrap();
        let retention_of: RetentionOf = Box::new(move |_| Some(retention));
        let recovered = super::super::recover(&engine.events, &engine.floors, usize::MAX, &retention_of).unwrap();
        let floor_of = |name: &str| recovered.channels.iter().find(|(n, ..)| &**n == name).map(|(_, floor, _)| *floor);
        assert_eq!(floor_of("user-5"), Some(990), "start-up keeps the floor of a channel that came back");
        assert_eq!(floor_of("user-995"), Some(995));
    }
}
