//! Access-log lines: one per publish request, one per refused request, and one per event
//! stream when it ends, under the target `herald::access` (so that `access_log = false`, or a
//! `RUST_LOG` directive, turns them off without touching the rest).

use std::net::SocketAddr;
use std::time::Duration;

/// The `tracing` target of every access-log line.
pub const TARGET: &str = "herald::access";

/// Whether access-log lines are written at all (`access_log`, and a level or `RUST_LOG` that
/// lets `herald::access` through at info): what is kept only for them is not kept otherwise.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// A publish request's outcome.
pub struct PublishLine<'a> {
    pub peer: Option<SocketAddr>,
    pub route: &'a str,
    pub status: u16,
    /// The channels its events named (empty when it was refused before they were read).
    pub channels: &'a str,
    pub events: usize,
    pub took: Duration,
    pub request_id: &'a str,
    /// Why it was refused, as the client was told.
    pub error: Option<&'a str>,
}

pub fn publish(line: &PublishLine<'_>) {
    tracing::info!(
        target: TARGET,
        kind = "publish",
        peer = line.peer.map(tracing::field::display),
        route = line.route,
        status = line.status,
        channels = line.channels,
        events = line.events,
        duration_ms = millis(line.took),
        request_id = line.request_id,
        error = line.error,
        "publish"
    );
}

/// A request other than a publish that was answered with an error (a refused subscription,
/// most often). Successful reads of `/stats` or `/healthz` get no line: probes would drown
/// everything else.
pub fn refused(peer: Option<SocketAddr>, method: &str, route: &str, status: u16, request_id: &str, error: Option<&str>) {
    tracing::info!(
        target: TARGET,
        kind = "refused",
        peer = peer.map(tracing::field::display),
        method,
        route,
        status,
        request_id,
        error,
        "request refused"
    );
}

/// Why an event stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The client closed its connection (or the connection broke).
    ClientClosed,
    /// The server is shutting down.
    Shutdown,
    /// Its token expired.
    TokenExpired,
    /// It fell behind history and `lag_policy = "disconnect"` ended it.
    Lagged,
    /// History was reset under it (a store repaired, a cluster's bus replaced); the client
    /// resumes and is told what it missed.
    HistoryReset,
    /// Writing to its socket failed.
    WriteFailed,
    /// Its socket stopped draining for longer than `limits.write_timeout`.
    WriteTimeout,
}

impl StreamEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::ClientClosed => "client closed",
            StreamEnd::Shutdown => "shutdown",
            StreamEnd::TokenExpired => "token expired",
            StreamEnd::Lagged => "lagged",
            StreamEnd::HistoryReset => "history reset",
            StreamEnd::WriteFailed => "write failed",
            StreamEnd::WriteTimeout => "write timeout",
        }
    }
}

/// An event stream that ended.
pub struct StreamLine<'a> {
    pub peer: SocketAddr,
    pub channels: &'a str,
    pub user: Option<&'a str>,
    pub lasted: Duration,
    pub events: u64,
    pub bytes: u64,
    pub end: StreamEnd,
    pub request_id: &'a str,
}

pub fn stream_ended(line: &StreamLine<'_>) {
    tracing::info!(
        target: TARGET,
        kind = "stream",
        peer = %line.peer,
        channels = line.channels,
        user = line.user,
        duration_ms = millis(line.lasted),
        events = line.events,
        bytes = line.bytes,
        reason = line.end.as_str(),
        request_id = line.request_id,
        "stream ended"
    );
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}
