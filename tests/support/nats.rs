//! A `nats-server` of a test's own, for tests that restart their broker.

use std::time::Duration;

/// A `nats-server` of the test's own (so that it can be restarted), with JetStream on a temporary
/// directory.
pub struct PrivateNats {
    pub child: std::process::Child,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl PrivateNats {
    pub fn start() -> PrivateNats {
        Self::start_with(&[])
    }

    /// With more arguments for nats-server (`--tls …`, say).
    pub fn start_with(extra: &[&str]) -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(port, dir.path(), &extra);
        PrivateNats { child, port, dir, extra }
    }

    fn spawn(port: u16, dir: &std::path::Path, extra: &[String]) -> std::process::Child {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nats-server is not installed (Debian package nats-server): the NATS outage test runs one of its own");
        let child = std::process::Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        super::wait_for_port(port, 10, "the private nats-server");
        child
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        std::thread::sleep(Duration::from_millis(300));
        self.resume();
    }

    /// Kills the server (its storage stays).
    pub fn stop(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts a stopped server again on the same port and storage.
    pub fn resume(&mut self) {
        self.child = Self::spawn(self.port, self.dir.path(), &self.extra);
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
