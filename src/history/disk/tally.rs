//! The tally: the newest position the store held and how many event records it ever took,
//! written beside it once a second.
//!
//! fjall reads its journal back to the first damaged batch and drops the rest without an error
//! (its only recovery mode), so a flipped byte or a zeroed block in the journal silently costs
//! every event written after it. The tally is how start-up notices, and counts: the records the
//! store gives back plus those retention deleted (a counter kept in the store, written in the
//! same batch as each deletion, so it never runs ahead or behind them) must be at least the
//! records the tally says were ever taken; the shortfall is what was lost. And if the newest
//! position given back is older than the one recorded, events after it were lost. Start-up then
//! says so, numbers new events above the recorded position (lost ids are never issued again),
//! and raises every channel's floor to it, so that clients resuming from before it are told
//! they missed events. The tally lags the store by up to a second, so it can miss a loss in that
//! last second but never reports one that did not happen. One small synced write a second costs
//! publishing nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "herald.tally";

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// What a tally records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub newest: u64,
    /// Event records (one per channel of each event) the store ever took; `None` in a tally
    /// that only knows the newest position (one written by `herald store repair`).
    pub appended: Option<u64>,
}

/// The tally recorded, if one was written and reads back whole.
pub fn read(dir: &Path) -> Option<Tally> {
    let text = std::fs::read_to_string(path(dir)).ok()?;
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    let number = |w: &str| w.parse::<u64>().ok();
    let tally = match words[..] {
        ["herald-tally", "1", newest] => number(newest).map(|newest| Tally { newest, appended: None }),
        ["herald-tally", "2", newest, appended] => {
            number(newest).zip(number(appended)).map(|(newest, appended)| Tally { newest, appended: Some(appended) })
        }
        _ => None,
    };
    match tally {
        Some(tally) => Some(tally),
        None => {
            tracing::warn!(file = %path(dir).display(), "history store: the tally cannot be read; it is written again");
            None
        }
    }
}

/// Records `tally`: a new file synced and then renamed over the old, so a crash leaves one
/// whole tally or the other.
pub fn write(dir: &Path, tally: Tally) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    match tally.appended {
        Some(appended) => writeln!(file, "herald-tally 2 {} {appended}", tally.newest)?,
        None => writeln!(file, "herald-tally 1 {}", tally.newest)?,
    }
    file.sync_data()?;
    std::fs::rename(&tmp, path(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_reads_back_and_a_torn_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        let tally = Tally { newest: 1_796_000_000_000_001, appended: Some(42) };
        write(dir.path(), tally).unwrap();
        assert_eq!(read(dir.path()), Some(tally));
        write(dir.path(), Tally { appended: None, ..tally }).unwrap();
        assert_eq!(read(dir.path()), Some(Tally { appended: None, ..tally }));
        std::fs::write(path(dir.path()), "herald-tally 1 ").unwrap();
        assert_eq!(read(dir.path()), None);
    }
}
