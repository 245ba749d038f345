//! The real `herald` binary as a child process, for tests of what only a process shows: flags,
//! environment, signals, `kill -9` and restarts.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `herald` run in `dir`, with none of the test's own `HERALD_*` or `RUST_LOG` leaking in.
pub fn herald(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    // Servers run side by side: none takes the debug listener's fixed port unless a test sets it.
    cmd.env("HERALD_DEBUG__LISTEN", "");
    cmd
}

/// A `herald serve` process on an ephemeral port, in `dir` (so its disk store is `dir/data`).
/// Killed when dropped.
pub struct Served {
    pub child: Child,
    pub url: String,
    /// Every line the server logged.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    pub fn start(dir: &Path) -> Served {
        Self::start_with(dir, &["--log-level", "info"])
    }

    /// `herald serve` with more arguments (`--config`, `--log-level`).
    pub fn start_with(dir: &Path, args: &[&str]) -> Served {
        Self::spawn(herald(dir), args)
    }

    /// `herald serve` from a command the caller prepared (with environment variables, say).
    pub fn spawn(command: Command, args: &[&str]) -> Served {
        Self::spawn_on(command, "127.0.0.1:0", args)
    }

    /// Listening on `listen` (a restarted server keeping its address).
    pub fn spawn_on(mut command: Command, listen: &str, args: &[&str]) -> Served {
        let mut child =
            command.args(["serve", "--listen", listen]).args(args).stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = loop {
            assert!(Instant::now() < deadline, "server did not report its address");
            let line = lines.next().expect("the server logs until it listens").unwrap();
            log.lock().unwrap().push(line.clone());
            if let Some(i) = line.find("addr=") {
                break line[i + 5..].split_whitespace().next().unwrap().to_owned();
            }
            // JSON logs (`log_format = "json"`).
            if let Some(i) = line.find("\"addr\":\"") {
                break line[i + 8..].split('"').next().unwrap().to_owned();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Served { child, url: format!("http://{addr}"), log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// SIGKILL: no shutdown, no last sync.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM; returns how the process exited.
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM");
        wait_with_timeout(&mut self.child, limit)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
