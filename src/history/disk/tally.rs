//! The tally: the newest position the store held, written beside it once a second.
//!
//! fjall reads its journal back to the first damaged batch and drops the rest without an error
//! (its only recovery mode), so a flipped byte or a zeroed block in the journal silently costs
//! every event written after it. The tally is how start-up notices: if the newest position the
//! store gives back is older than the one recorded here, events were lost. Start-up then says
//! so, numbers new events above the recorded position (lost ids are never issued again), and
//! raises every channel's floor to it, so that clients resuming from before it are told they
//! missed events. One small write a second, synced, costs publishing nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "herald.tally";

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The newest position recorded, if a tally was written and reads back whole.
pub fn read(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path(dir)).ok()?;
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("herald-tally"), Some("1"), Some(newest), None) => newest.parse().ok(),
        _ => {
            tracing::warn!(file = %path(dir).display(), "history store: the tally cannot be read; it is written again");
            None
        }
    }
}

/// Records `newest`: a new file synced and then renamed over the old, so a crash leaves one
/// whole tally or the other.
pub fn write(dir: &Path, newest: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    writeln!(file, "herald-tally 1 {newest}")?;
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
        write(dir.path(), 1_796_000_000_000_001).unwrap();
        assert_eq!(read(dir.path()), Some(1_796_000_000_000_001));
        std::fs::write(path(dir.path()), "herald-tally 1 ").unwrap();
        assert_eq!(read(dir.path()), None);
    }
}
