//! `herald store check` and `herald store repair`: what an operator runs on a data directory
//! when start-up reports damage, with the hub stopped.
//!
//! `check` reads every record and floor and compares the newest position with the tally; it
//! changes nothing. `repair` deletes what cannot be read (so start-up stops reporting it), and
//! when the engine cannot open the directory at all, moves it aside (nothing is deleted) and
//! starts a new one whose tally carries the old newest position: the hub then numbers new
//! events above every old id, and tells clients resuming from an old id that they missed events.

use super::tally::{self, Tally};
use super::{record, writer};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use writer::Engine;

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub events: u64,
    pub channels: BTreeMap<String, u64>,
    pub damaged_events: Vec<Vec<u8>>,
    pub floors: u64,
    pub damaged_floors: Vec<Vec<u8>>,
    pub newest: u64,
    /// The store's count of event records retention deleted.
    pub deleted: u64,
    pub tally: Option<Tally>,
}

impl Report {
    /// Event records the tally says the store took beyond what it gives back or deleted.
    pub fn missing(&self) -> u64 {
        let present = self.events + self.damaged_events.len() as u64;
        self.tally.and_then(|t| t.appended).map_or(0, |a| a.saturating_sub(present + self.deleted))
    }

    /// Whether the tally shows events the store no longer gives back.
    pub fn lost(&self) -> bool {
        self.missing() > 0 || self.tally.is_some_and(|t| t.newest > self.newest)
    }

    pub fn clean(&self) -> bool {
        self.damaged_events.is_empty() && self.damaged_floors.is_empty() && !self.lost()
    }

    pub fn render(&self, dir: &Path) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "store: {}", dir.display());
        let _ =
            writeln!(out, "events: {} in {} channels (an event of several channels counts once in each)", self.events, self.channels.len());
        let _ = writeln!(out, "floors: {}", self.floors);
        let _ = writeln!(out, "newest position: {}", self.newest);
        match self.tally {
            Some(t) if self.lost() => {
                let _ = writeln!(
                    out,
                    "LOST: {} event records are missing; the tally records position {} where the store gives back {}",
                    self.missing(),
                    t.newest,
                    self.newest
                );
            }
            Some(t) => {
                let _ = writeln!(out, "tally: newest {} (consistent)", t.newest);
            }
            None => {
                let _ = writeln!(out, "tally: none (written once a second by a running hub)");
            }
        }
        if !self.damaged_events.is_empty() {
            let _ = writeln!(out, "DAMAGED: {} event records cannot be read", self.damaged_events.len());
        }
        if !self.damaged_floors.is_empty() {
            let _ = writeln!(out, "DAMAGED: {} floor records cannot be read", self.damaged_floors.len());
        }
        let _ = writeln!(out, "{}", if self.clean() { "ok" } else { "damage found: `herald store repair` removes what cannot be read" });
        out
    }
}

/// Reads every record of the store in `dir`.
pub fn check(dir: &Path) -> anyhow::Result<Report> {
    let engine = open(dir)?;
    inspect(&engine, dir)
}

fn open(dir: &Path) -> anyhow::Result<Engine> {
    if !dir.join("version").exists() {
        anyhow::bail!("{} holds no herald store", dir.display());
    }
    Engine::open(dir).map_err(|e| match e {
        fjall::Error::Locked => anyhow::anyhow!("the store in {} is in use: stop the herald that runs on it first", dir.display()),
        other => anyhow::anyhow!("the store in {} cannot be opened: {other}", dir.display()),
    })
}

fn inspect(engine: &Engine, dir: &Path) -> anyhow::Result<Report> {
    let mut report = Report { tally: tally::read(dir), ..Report::default() };
    for guard in engine.events.iter() {
        let (key, value) = guard.into_inner()?;
        match record::split_key(&key) {
            Some((channel, pos)) if record::decode(&value).is_ok() => {
                report.events += 1;
                report.newest = report.newest.max(pos);
                *report.channels.entry(channel.to_owned()).or_default() += 1;
            }
            _ => report.damaged_events.push(key.to_vec()),
        }
    }
    for guard in engine.floors.iter() {
        let (key, value) = guard.into_inner()?;
        match record::decode_floor(&value) {
            Some(count) if &*key == record::DELETED => report.deleted = count,
            Some(floor) => {
                report.floors += 1;
                report.newest = report.newest.max(floor);
            }
            None => report.damaged_floors.push(key.to_vec()),
        }
    }
    Ok(report)
}

/// What a repair did.
pub enum Repaired {
    /// Damaged records removed from the store in place.
    InPlace(Report),
    /// The engine could not open the directory: it was moved to this path, and a new store
    /// starts above the old newest position.
    MovedAside { old: PathBuf, error: String, newest: u64 },
}

pub fn repair(dir: &Path) -> anyhow::Result<Repaired> {
    match open(dir) {
        Ok(engine) => {
            let report = inspect(&engine, dir)?;
            let mut batch = engine.db.batch();
            for key in &report.damaged_events {
                batch.remove(&engine.events, key.clone());
            }
            for key in &report.damaged_floors {
                batch.remove(&engine.floors, key.clone());
            }
            batch.commit()?;
            engine.db.persist(fjall::PersistMode::SyncAll)?;
            Ok(Repaired::InPlace(report))
        }
        Err(e) if e.to_string().contains("in use") || e.to_string().contains("holds no herald store") => Err(e),
        Err(e) => {
            let stamp = crate::event::now_wall_us() / 1_000_000;
            let old = dir.with_file_name(format!("{}.damaged-{stamp}", dir.file_name().map_or("data".into(), |n| n.to_string_lossy())));
            // The newest position the damaged store is known to have issued: its tally, or now
            // (positions are µs since the epoch, so nothing it issued is newer).
            let newest = tally::read(dir).map_or(0, |t| t.newest).max(crate::event::now_wall_us());
            std::fs::rename(dir, &old)?;
            std::fs::create_dir_all(dir)?;
            drop(Engine::open(dir)?);
            tally::write(dir, Tally { newest, appended: None })?;
            Ok(Repaired::MovedAside { old, error: e.to_string(), newest })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_finds_damage_and_repair_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = Engine::open(dir.path()).unwrap();
            engine.events.insert(record::key("c", 5), [9u8, 1]).unwrap();
            engine.floors.insert("c", [1u8, 2, 3]).unwrap();
            engine.floors.insert("d", 7u64.to_be_bytes()).unwrap();
            engine.db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        tally::write(dir.path(), Tally { newest: 100, appended: Some(5) }).unwrap();
        let report = check(dir.path()).unwrap();
        assert_eq!((report.damaged_events.len(), report.damaged_floors.len(), report.floors, report.newest), (1, 1, 1, 7));
        assert!(report.lost(), "the tally says 100, the store gives back 7");
        assert_eq!(report.missing(), 4, "5 records taken, 1 given back (damaged)");
        assert!(report.render(dir.path()).contains("LOST"));
        let Repaired::InPlace(_) = repair(dir.path()).unwrap() else { panic!("repaired in place") };
        let again = check(dir.path()).unwrap();
        assert!(again.damaged_events.is_empty() && again.damaged_floors.is_empty());
    }

    #[test]
    fn a_store_the_engine_cannot_open_is_moved_aside_and_started_anew_above_it() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        drop(Engine::open(&dir).unwrap());
        tally::write(&dir, Tally { newest: u64::MAX / 2, appended: Some(3) }).unwrap();
        std::fs::write(dir.join("version"), b"garbage").unwrap();
        let Repaired::MovedAside { old, newest, .. } = repair(&dir).unwrap() else { panic!("moved aside") };
        assert!(old.exists() && old.join("version").exists(), "nothing deleted");
        assert_eq!(newest, u64::MAX / 2);
        assert_eq!(tally::read(&dir), Some(Tally { newest: u64::MAX / 2, appended: None }));
        assert!(check(&dir).unwrap().lost(), "the new store knows it lost what came before");
    }
}
