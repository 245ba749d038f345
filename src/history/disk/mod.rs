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

mod record;
mod writer;

use super::{Durable, HistoryStore, StoreError};
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
    /// The newest position on disk.
    pub newest: u64,
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
                "history.dir: the store in {} cannot be opened: {other}. It may be damaged: keep a copy of the directory, \
                 then start with another history.dir, or move this one aside",
                dir.display()
            ),
        })?;
        let recovered = recover(&engine.events, &engine.floors).with_context(|| format!("history.dir: read back {}", dir.display()))?;
        let health = Arc::new(Health::default());
        let mut writer = Writer::new(engine, dir.clone(), config.fsync, config.fsync_interval, retention_of, health.clone());
        for (name, _, evs) in &recovered.channels {
            writer.know(name.clone(), evs.len() as u64);
        }
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
        self.send(|done| Command::Append { events: events.to_vec(), done }).map(Some)
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

/// Reads every stored event back, channel by channel.
fn recover(events: &fjall::Keyspace, floors: &fjall::Keyspace) -> anyhow::Result<Recovered> {
    let mut by_pos: HashMap<u64, Arc<Event>> = HashMap::new();
    let mut names: HashMap<String, Arc<str>> = HashMap::new();
    let mut channels: Vec<(Arc<str>, u64, Vec<Arc<Event>>)> = Vec::new();
    let mut newest = 0;
    let mut intern = |n: &str| names.entry(n.to_owned()).or_insert_with(|| Arc::from(n)).clone();
    for guard in events.iter() {
        let (key, value) = guard.into_inner().context("read a stored event")?;
        let Some((channel, pos)) = record::split_key(&key) else {
            tracing::warn!("history store: skipping a key that is not an event");
            continue;
        };
        newest = newest.max(pos);
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
        match channels.last_mut() {
            Some((name, _, evs)) if &**name == channel => evs.push(event),
            _ => channels.push((intern(channel), 0, vec![event])),
        }
    }
    // One pass over the floors. Positions deleted by retention were issued too: a channel whose
    // events all aged out still keeps the next ids above them, even if the clock went back.
    let mut floor_of: HashMap<Vec<u8>, u64> = HashMap::new();
    for guard in floors.iter() {
        let (name, v) = guard.into_inner().context("read a channel's floor")?;
        let Ok(bytes) = <[u8; 8]>::try_from(v.as_ref()) else {
            tracing::error!(channel = %String::from_utf8_lossy(&name), "history store: skipping a floor that is not 8 bytes");
            continue;
        };
        let floor = u64::from_be_bytes(bytes);
        newest = newest.max(floor);
        floor_of.insert(name.to_vec(), floor);
    }
    for (name, floor, _) in &mut channels {
        *floor = floor_of.remove(name.as_bytes()).unwrap_or(0);
    }
    let dormant = floor_of.into_iter().filter_map(|(name, floor)| Some((Arc::from(String::from_utf8(name).ok()?), floor))).collect();
    Ok(Recovered { channels, dormant, newest })
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
