//! What the measuring examples share: a `herald serve` pinned to CPU 0 with one worker, and its
//! CPU time read from /proc (nanoseconds, summed over its threads).

#![allow(dead_code)] // Each example uses some of these.
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

/// Counts the events a stream receives (each has one `data:` line) into `received`, until it
/// ends. The last bytes of a read are kept so that a marker split between two reads is counted
/// once.
pub async fn read_events(mut stream: tokio::net::TcpStream, received: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096 + 5];
    let mut carried = 0;
    loop {
        let Ok(n) = stream.read(&mut buf[carried..]).await else { return };
        if n == 0 {
            return;
        }
        let end = carried + n;
        let count = buf[..end].windows(6).filter(|w| w == b"\ndata:").count();
        received.fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
        carried = end.min(5);
        buf.copy_within(end - carried..end, 0);
    }
}

/// Opens `GET {path}` and returns the stream once Herald's `: connected` comment has arrived.
pub async fn open_stream(addr: &str, path: &str, headers: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let mut head = Vec::new();
    while !head.windows(11).any(|w| w == b": connected") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0 && head.len() < 4096, "stream {path} did not open: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    stream
}
