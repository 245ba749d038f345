//! What the measuring examples share: a `herald serve` pinned to CPU 0 with one worker, and its
//! CPU time read from /proc (nanoseconds, summed over its threads).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The binary to measure: `arg` when given, else this build's release binary.
pub fn herald_binary(arg: Option<String>) -> PathBuf {
    arg.map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").into());
        Path::new(&target).join("release/herald")
    })
}

/// Starts `herald serve` on an ephemeral loopback port with `config`; returns it and its address.
pub fn start(herald: &Path, config: &Path) -> (Child, String) {
    let mut child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(herald)
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1", "--log-level", "warn,herald=info", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald starts (cargo build --release, or name the binary on the command line)");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if let Some(i) = line.find("addr=") {
            break line[i + 5..].split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// The server's CPU time so far, summed over its threads.
pub fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
