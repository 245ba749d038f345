//! MQTT for the tests: messages published with Mosquitto's own client (`mosquitto_pub`), and a
//! `mosquitto` of a test's own for tests that restart their broker.

use std::io::Write;
use std::process::{Command, Stdio};

/// The local Mosquitto the tests share.
pub const PORT: u16 = 1883;

/// Publishes each message (one line each, so no newline inside) to `topic` with QoS 1 through
/// `mosquitto_pub`, speaking `protocol` (`mqttv311` or `mqttv5`), and waits until the broker
/// has acknowledged them all.
pub fn publish(port: u16, protocol: &str, topic: &str, messages: &[&str]) {
    publish_with(port, protocol, topic, messages, &[]);
}

/// [`publish`] with more arguments for `mosquitto_pub` (`--cafile …`).
pub fn publish_with(port: u16, protocol: &str, topic: &str, messages: &[&str], extra: &[&str]) {
    assert!(messages.iter().all(|m| !m.contains('\n')), "one line per message");
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-V", protocol, "-t", topic, "-l"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is not installed (Debian package mosquitto-clients): the MQTT tests publish with it");
    let mut stdin = child.stdin.take().unwrap();
    for m in messages {
        writeln!(stdin, "{m}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_pub could not publish to 127.0.0.1:{port} ({}): is Mosquitto running? (mosquitto -d)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A `mosquitto` of the test's own, persisting its sessions to a temporary directory so that
/// they survive its restart.
pub struct PrivateMosquitto {
    child: std::process::Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PrivateMosquitto {
    pub fn start() -> PrivateMosquitto {
        Self::start_with("")
    }

    /// With more lines for the listener's configuration (`certfile …`).
    pub fn start_with(listener: &str) -> PrivateMosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            "listener {port} 127.0.0.1\n{listener}\nallow_anonymous true\npersistence true\npersistence_location {}/\nuser root\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let child = Self::spawn(port, dir.path());
        PrivateMosquitto { child, port, dir }
    }

    fn spawn(port: u16, dir: &std::path::Path) -> std::process::Child {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is not installed (Debian package mosquitto): the MQTT outage test runs one of its own");
        super::wait_for_port(port, 10, "the private mosquitto");
        child
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops the broker as an operator would (SIGTERM: it saves its sessions), waits until it has.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.child.wait().unwrap();
    }

    /// Starts a stopped broker again on the same port and storage.
    pub fn resume(&mut self) {
        self.child = Self::spawn(self.port, self.dir.path());
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
