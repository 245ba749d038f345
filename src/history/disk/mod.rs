//! The disk store: history in a data directory, on fjall (an LSM-tree engine in pure Rust), so
//! that it survives restarts and crashes.
//!
//! fjall over redb, measured on this workload (100-byte events, keys per channel and position;
//! `cargo run --release --example store_engines`): appends are what every publish costs, and
//! fjall appended 9,226 events/s against 5,853 with an fsync each, 134,536 against 57,880 with
//! an fsync per 32, 447,463 against 137,251 per 256, and 429,749 against 30,537 without fsync.
//! redb read ranges of 100 events 4.5× faster (96,901/s against 21,338), but ranges are read
//! only at start-up. fjall's journal also reaches the operating system on every commit, so
//! `fsync = "interval"` and `"never"` still survive a crash of the process.
//!
//! One writer thread owns the writes (`writer.rs`); the channel windows in memory stay what
//! subscribers read, and start-up fills them from here.

pub mod maintenance;
mod record;
mod tally;
mod writer;

use super::{Durable, HistoryStore, MIN_WINDOW, Mark, StoreError};
use crate::config::HistoryConfig;
use crate::event::Event;
use anyhow::Context;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;
use writer::{Command, Engine, Health, Writer};

pub use writer::RetentionOf;

/// What start-up finds on disk.
pub struct Recovered {
    /// Per channel: the newest deleted position (0 when none was), and its events, oldest first.
    /// An event of several channels is one shared `Event`.
    pub channels: Vec<(Arc<str>, u64, Vec<Arc<Event>>)>,
    /// The floors of channels with no event on disk (all of them left by retention).
    pub dormant: Vec<(Arc<str>, u64)>,
    /// The floor shared by every channel made on first use: dormant floors folded together
    /// (see `writer::MAX_DORMANT_FLOORS`).
    pub base_floor: u64,
    /// Events on disk per channel (more than `channels` holds when memory bounded the load).
    pub on_disk: Vec<(Arc<str>, u64)>,
    /// Set when the store gave back less than it held (see `tally.rs`): every position up to
    /// this may be lost, and no floor is below it.
    pub lost_upto: Option<u64>,
    /// Event records on disk (every one, damaged or left on disk by `max_memory`), and the
    /// store's count of those retention deleted.
    pub present: u64,
    pub deleted: u64,
    /// The newest position on disk.
    pub newest: u64,
    /// Idempotency keys not yet expired.
    pub marks: Vec<Mark>,
}

pub struct DiskStore {
    commands: mpsc::Sender<Command>,
    health: Arc<Health>,
    writer: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl DiskStore {
    /// Opens (or creates) the store in `config.dir`, reads back what it holds, and starts the
    /// writer. `retention_of` gives each channel's retention.
    pub fn open(config: &HistoryConfig, retention_of: RetentionOf) -> anyhow::Result<(DiskStore, Recovered)> {
        let dir = &config.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("history.dir: cannot create {}", dir.display()))?;
        let engine = Engine::open(dir).map_err(|e| match e {
            fjall::Error::Locked => anyhow::anyhow!("history.dir: the store in {} is in use by another herald", dir.display()),
            other => anyhow::anyhow!(
                "history.dir: the store in {} cannot be opened: {other}. It may be damaged: `herald store check` says \
                 what it finds, and `herald store repair` moves the directory aside (deleting nothing) and starts a new \
                 store above its ids",
                dir.display()
            ),
        })?;
        let mut recovered = recover(&engine.events, &engine.floors, config.max_memory.as_usize(), &retention_of)
            .with_context(|| format!("history.dir: read back {}", dir.display()))?;
        recovered.marks = recover_marks(&engine.marks).with_context(|| format!("history.dir: read back {}", dir.display()))?;
        if let Some(recorded) = tally::read(dir) {
            let missing = recorded.appended.map_or(0, |a| a.saturating_sub(recovered.present + recovered.deleted));
            if missing > 0 || recorded.newest > recovered.newest {
                tracing::error!(
                    dir = %dir.display(),
                    lost_records = missing,
                    newest_kept = recovered.newest,
                    newest_recorded = recorded.newest,
                    "history store: events the store held are gone (its journal was damaged or cut): {missing} event \
                     records (one per channel of each event) are missing, and the newest position read back is {} where \
                     {} was held. New ids go on above them, and clients resuming from before them are told they missed events",
                    recovered.newest,
                    recorded.newest
                );
                let upto = recorded.newest.max(recovered.newest);
                recovered.lost_upto = Some(upto);
                recovered.newest = upto;
            }
        }
        let health = Arc::new(Health::default());
        let mut writer = Writer::new(engine, dir.clone(), config.fsync, config.fsync_interval, retention_of, health.clone());
        writer.start_tally(recovered.newest, recovered.present, recovered.deleted);
        for (name, count) in &recovered.on_disk {
            writer.know(name.clone(), *count);
        }
        for (name, floor) in &recovered.dormant {
            writer.know_dormant(name.clone(), *floor);
        }
        writer.know_base_floor(recovered.base_floor);
        let (tx, rx) = mpsc::channel();
        let handle =
            std::thread::Builder::new().name("herald-store".into()).spawn(move || writer.run(rx)).context("start the store writer")?;
        Ok((DiskStore { commands: tx, health, writer: parking_lot::Mutex::new(Some(handle)) }, recovered))
    }

    /// Queues a command for the writer; what it returns resolves with the writer's answer.
    fn send(&self, make: impl FnOnce(oneshot::Sender<Result<(), StoreError>>) -> Command) -> Result<Durable, StoreError> {
        let stopped = || StoreError("the store writer has stopped".into());
        let (done, answer) = oneshot::channel();
        self.commands.send(make(done)).map_err(|_| stopped())?;
        Ok(Box::pin(async move { answer.await.map_err(|_| stopped())? }))
    }
}

impl HistoryStore for DiskStore {
    fn kind(&self) -> &'static str {
        "disk"
    }

    fn append(&self, events: &[Arc<Event>]) -> Result<Option<Durable>, StoreError> {
        self.send(|done| Command::Append { events: events.to_vec(), marks: Vec::new(), done }).map(Some)
    }

    fn append_marked(&self, events: &[Arc<Event>], marks: Vec<Mark>) -> Result<Option<Durable>, StoreError> {
        self.send(|done| Command::Append { events: events.to_vec(), marks, done }).map(Some)
    }

    fn problem(&self) -> Option<String> {
        self.health.problem()
    }

    fn forget(&self, channel: &str, upto: u64) {
        // Nobody waits for it: the writer applies it after the appends queued before it.
        if self.commands.send(Command::Forget { channel: channel.into(), upto }).is_err() {
            tracing::error!(channel, "history store: the writer has stopped; a reclaimed channel stays on disk");
        }
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        match self.send(|done| Command::Flush { done }) {
            Ok(durable) => durable,
            Err(e) => Box::pin(futures_util::future::ready(Err(e))),
        }
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer after a last sync; wait for it, so that the data
        // directory is released when the store is gone.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.commands, tx));
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

/// One channel while it is read back: its name, its floor so far, the events kept, their
/// window, and how many it has on disk.
type Loading = (Arc<str>, u64, std::collections::VecDeque<Arc<Event>>, usize, u64);

/// Reads the stored events back, channel by channel: the newest that fit in `max_memory`
/// hub-wide (less a tenth, as the memory cap evicts to) and in each channel's window. What stays
/// on disk beyond that raises its channel's floor, so a client resuming from before it is told,
/// and start-up never holds more than the cap in memory.
fn recover(events: &fjall::Keyspace, floors: &fjall::Keyspace, max_memory: usize, retention_of: &RetentionOf) -> anyhow::Result<Recovered> {
    let cutoff = memory_cutoff(events, max_memory - max_memory / 10)?;
    let mut by_pos: HashMap<u64, Arc<Event>> = HashMap::new();
    let mut names: HashMap<String, Arc<str>> = HashMap::new();
    let mut channels: Vec<Loading> = Vec::new();
    let mut newest = 0;
    let mut left_on_disk = 0u64;
    let mut present = 0u64;
    let mut intern = |n: &str| names.entry(n.to_owned()).or_insert_with(|| Arc::from(n)).clone();
    for guard in events.iter() {
        let (key, value) = guard.into_inner().context("read a stored event")?;
        let Some((channel, pos)) = record::split_key(&key) else {
            tracing::warn!("history store: skipping a key that is not an event");
            continue;
        };
        newest = newest.max(pos);
        if channels.last().is_none_or(|(name, ..)| &**name != channel) {
            let name = intern(channel);
            let window = retention_of(&name).map_or(MIN_WINDOW, |r| r.max_events.max(MIN_WINDOW));
            channels.push((name, 0, std::collections::VecDeque::new(), window, 0));
        }
        let (_, floor, kept, window, on_disk) = channels.last_mut().expect("pushed above");
        *on_disk += 1;
        present += 1;
        if pos < cutoff {
            *floor = (*floor).max(pos);
            left_on_disk += 1;
            continue;
        }
        let event = match by_pos.get(&pos) {
            Some(ev) => ev.clone(),
            None => {
                // One damaged record costs that event, not the whole store: start anyway.
                let decoded = match record::decode(&value) {
                    Ok(decoded) => decoded,
                    Err(e) => {
                        tracing::error!(channel, pos, error = e, "history store: skipping an event that cannot be read");
                        continue;
                    }
                };
                let chans: Box<[Arc<str>]> = decoded.channels.iter().map(|c| intern(c)).collect();
                let ev = Arc::new(record::into_event(pos, decoded, chans));
                by_pos.insert(pos, ev.clone());
                ev
            }
        };
        kept.push_back(event);
        if kept.len() > *window {
            let gone = kept.pop_front().expect("over the window");
            *floor = (*floor).max(gone.pos);
        }
    }
    if left_on_disk > 0 {
        tracing::info!(events = left_on_disk, before = cutoff, "history store: older events stay on disk, beyond history.max_memory");
    }
    // One pass over the floors. Positions deleted by retention were issued too: a channel whose
    // events all aged out still keeps the next ids above them, even if the clock went back.
    let mut floor_of: HashMap<Vec<u8>, u64> = HashMap::new();
    for guard in floors.iter() {
        let (name, v) = guard.into_inner().context("read a channel's floor")?;
        let Some(floor) = record::decode_floor(&v) else {
            tracing::error!(channel = %String::from_utf8_lossy(&name), "history store: skipping a floor that is not 8 bytes");
            continue;
        };
        // The deletion counter is a count, not a position.
        if &*name != record::DELETED {
            newest = newest.max(floor);
        }
        floor_of.insert(name.to_vec(), floor);
    }
    let on_disk = channels.iter().map(|(name, .., n)| (name.clone(), *n)).collect();
    let channels = channels
        .into_iter()
        .map(|(name, floor, kept, ..)| {
            let floor = floor.max(floor_of.remove(name.as_bytes()).unwrap_or(0));
            (name, floor, Vec::from(kept))
        })
        .collect();
    let base_floor = floor_of.remove(record::BASE_FLOOR).unwrap_or(0);
    let deleted = floor_of.remove(record::DELETED).unwrap_or(0);
    let dormant = floor_of.into_iter().filter_map(|(name, floor)| Some((Arc::from(String::from_utf8(name).ok()?), floor))).collect();
    Ok(Recovered { channels, dormant, base_floor, on_disk, lost_upto: None, present, deleted, newest, marks: Vec::new() })
}

/// The idempotency keys still inside their window.
fn recover_marks(marks: &fjall::Keyspace) -> anyhow::Result<Vec<Mark>> {
    let mut kept = Vec::new();
    for guard in marks.range(record::marks_after(crate::event::now_wall_us()).as_slice()..) {
        let (key, value) = guard.into_inner().context("read an idempotency key")?;
        match record::decode_mark(&key, &value) {
            Some(mark) => kept.push(mark),
            None => tracing::warn!("history store: skipping an idempotency key that cannot be read"),
        }
    }
    Ok(kept)
}

/// The oldest position to load so that what is loaded fits in `budget` bytes: the newest
/// events first, counted by the size of their stored records. One pass sums them in buckets of
/// about a minute; if the budget runs out inside a bucket, a second pass sizes that bucket's
/// events one by one. What is held grows with the store's time span and one bucket, not with
/// the whole store.
fn memory_cutoff(events: &fjall::Keyspace, budget: usize) -> anyhow::Result<u64> {
    // About 67 s: a year of history is under half a million buckets, and one bucket of a busy
    // hub a few hundred thousand events.
    const BUCKET_BITS: u32 = 26;
    let mut buckets: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for guard in events.iter() {
        let (key, value) = guard.into_inner().context("read a stored event")?;
        if let Some((_, pos)) = record::split_key(&key) {
            *buckets.entry(pos >> BUCKET_BITS).or_default() += value.len() as u64;
        }
    }
    let mut newer = 0u64;
    let Some((&bucket, _)) = buckets.iter().rev().find(|&(_, &bytes)| {
        newer += bytes;
        newer > budget as u64
    }) else {
        return Ok(0);
    };
    // Bytes of the buckets newer than that one, and what is left for it.
    let room = budget as u64 - (newer - buckets[&bucket]);
    let mut sizes: Vec<(u64, u64)> = Vec::new();
    for guard in events.iter() {
        let (key, value) = guard.into_inner().context("read a stored event")?;
        if let Some((_, pos)) = record::split_key(&key)
            && pos >> BUCKET_BITS == bucket
        {
            sizes.push((pos, value.len() as u64));
        }
    }
    sizes.sort_unstable_by_key(|&(pos, _)| std::cmp::Reverse(pos));
    let mut used = 0;
    for (pos, size) in sizes {
        used += size;
        if used > room {
            return Ok(pos + 1);
        }
    }
    Ok(bucket << BUCKET_BITS)
}

/// The retention lookup for the writer: a channel's own settings, else the defaults.
pub fn retention_lookup(settings: Arc<crate::hub::SettingsResolver>) -> RetentionOf {
    Box::new(move |name: &str| settings.resolve(name).map(|s| s.retention))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(pos: u64) -> Arc<Event> {
        Arc::new(Event {
            pos,
            custom_id: None,
            channels: vec![Arc::from("c")].into(),
            frame: Bytes::from(format!("id: {pos}\ndata: x\n\n")),
            published_at: std::time::Instant::now(),
        })
    }

    fn open(dir: &std::path::Path) -> (DiskStore, Recovered) {
        let config = HistoryConfig { dir: dir.to_owned(), ..HistoryConfig::default() };
        DiskStore::open(&config, Box::new(|_| None)).expect("the store opens")
    }

    #[tokio::test]
    async fn damaged_records_are_skipped_and_floors_keep_ids_above_deleted_positions() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        store.append(&[event(10), event(30)]).unwrap().unwrap().await.unwrap();
        drop(store);
        {
            // What a torn or foreign write could leave: a value that does not decode, and the
            // floor of a channel whose events all aged out, above every stored position.
            let db = fjall::Database::builder(dir.path()).open().unwrap();
            let events = db.keyspace("events", fjall::KeyspaceCreateOptions::default).unwrap();
            let floors = db.keyspace("floors", fjall::KeyspaceCreateOptions::default).unwrap();
            events.insert(record::key("c", 20), [9u8, 1, 2]).unwrap();
            floors.insert("gone", 500u64.to_be_bytes()).unwrap();
            floors.insert("c", 5u64.to_be_bytes()).unwrap();
            floors.insert("torn", [1u8, 2, 3]).unwrap();
            db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        let (_store, recovered) = open(dir.path());
        let (name, floor, events) = &recovered.channels[0];
        assert_eq!(&**name, "c");
        assert_eq!(*floor, 5, "a channel keeps its floor; a torn one elsewhere is skipped");
        assert_eq!(events.iter().map(|e| e.pos).collect::<Vec<_>>(), [10, 30], "the damaged event alone is lost");
        assert_eq!(recovered.newest, 500, "positions go on above the deleted ones");
    }
}
