//! A log file that can be reopened under its name, so that logrotate (or an operator) can move
//! it away and send SIGHUP.

use parking_lot::RwLock;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing_subscriber::fmt::MakeWriter;

pub struct LogFile {
    path: PathBuf,
    file: RwLock<Arc<File>>,
}

fn open_append(path: &Path) -> io::Result<File> {
    // Appending: every line is one write(2), which the kernel keeps whole in an O_APPEND file.
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(LogFile { path: path.to_owned(), file: RwLock::new(Arc::new(open_append(path)?)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn reopen(&self) -> io::Result<()> {
        let fresh = open_append(&self.path)?;
        *self.file.write() = Arc::new(fresh);
        Ok(())
    }
}

/// One log line's writer: the file as it was when the line began.
pub struct Line(Arc<File>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for &'static LogFile {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(self.file.read().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_file_takes_the_lines_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herald.log");
        let log: &'static LogFile = Box::leak(Box::new(LogFile::open(&path).unwrap()));
        log.make_writer().write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("herald.log.1")).unwrap();
        log.make_writer().write_all(b"two\n").unwrap();
        log.reopen().unwrap();
        log.make_writer().write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("herald.log.1")).unwrap(), "one\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
