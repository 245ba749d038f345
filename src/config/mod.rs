//! Herald's configuration: what every key means, its default, and its validation.
//!
//! Layers, lowest first: built-in defaults < `herald.toml` < `HERALD_…` environment variables <
//! command-line flags (see [`load`]). Unknown keys and invalid values stop start-up with an error
//! that names the key.

pub mod access;
mod bytesize;
mod load;
pub mod pattern;
pub mod redact;
pub mod sources;

pub use access::{AccessConfig, ChannelAccessConfig};
pub use bytesize::ByteSize;
pub use load::{ConfigError, Overrides, load};
pub use redact::{redacted_toml, url as redacted_url};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Path prefix of every public route (`/events`: subscriptions at `/events/sse/{channel}`),
    /// as oCIS's `SSE_HTTP_ROOT`. `/`: none.
    pub http_root: String,
    /// Runtime worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a `tracing` directive list).
    /// `RUST_LOG`, when set, wins.
    pub log_level: String,
    /// `text` for people (`pretty` is the same), `json` for log shippers: one JSON object per
    /// line with `timestamp`, `level`, `target`, `message` and the fields at the top level.
    pub log_format: LogFormat,
    /// Colour in text logs: `auto` (at a terminal, unless `NO_COLOR` is set), `always`, `never`.
    pub log_color: LogColor,
    /// Append logs to this file instead of stderr; reopened on SIGHUP (for logrotate). Empty:
    /// stderr.
    pub log_file: std::path::PathBuf,
    /// Access-log lines (target `herald::access`): one per publish request, per refused
    /// request, and per event stream when it ends.
    pub access_log: bool,
    /// How often an idle stream gets a `: keep-alive` comment (or a ping event). `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Send `event: ping` instead of a comment, for clients that must see keep-alives as events.
    pub ping_event: bool,
    /// Reconnection delay sent to clients as `retry:` when they connect. `0s` sends none.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// Create channels on first use. When false, only channels declared in `[[channels]]` (by
    /// name or pattern) exist and anything else is a 404.
    pub allow_undefined_channels: bool,
    /// Most channels that may exist at once (declared ones included).
    pub max_channels: usize,
    /// Most channels one subscription may name.
    pub max_channels_per_connection: usize,
    /// Longest channel name, in bytes.
    pub max_channel_name_length: usize,
    /// What happens to a subscriber that falls further behind than history reaches.
    pub lag_policy: LagPolicy,
    /// How long an idempotency key (a broker message's id, an HTTP `Idempotency-Key`) is
    /// remembered: a repeat within it publishes nothing.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// How long shutdown waits for connections to finish after streams are ended.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// At shutdown every stream ends with this `retry:` hint, so that clients come back soon
    /// (to another node, or to this one restarted) rather than after their usual delay. Each
    /// stream gets a value between half and one and a half times it, so that reconnections
    /// spread out instead of arriving at once. `0s`: no hint.
    #[serde(with = "humantime_serde")]
    pub shutdown_retry: Duration,
    /// TCP keep-alive on accepted connections: after this long without traffic the kernel
    /// probes the peer, and a peer that is gone (a laptop closed, a NAT that forgot the
    /// connection) is found after three unanswered probes 10 s apart and its stream ended.
    /// `0s`: off.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    pub limits: Limits,
    pub history: HistoryConfig,
    pub cluster: ClusterConfig,
    pub cors: CorsConfig,
    pub access: AccessConfig,
    /// Declared channels and patterns, first match wins.
    pub channels: Vec<ChannelConfig>,
    /// Brokers and upstream streams events are taken from.
    pub sources: Vec<sources::SourceConfig>,
    pub debug: DebugConfig,
    pub tls: TlsConfig,
    pub tracing: TracingConfig,
}

/// OpenTelemetry traces exported over OTLP/HTTP (docs/operations.md, "Tracing").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    pub enabled: bool,
    /// The collector: `http://127.0.0.1:4318` (the traces path `/v1/traces` is added) or the
    /// full URL of its traces endpoint. Jaeger, Tempo and the OpenTelemetry Collector take OTLP.
    pub endpoint: String,
    /// `http/protobuf` (the OTLP default) or `http/json`.
    pub protocol: OtlpProtocol,
    /// The `service.name` the spans carry.
    pub service_name: String,
    /// Share of the traces started here that are kept, 0 to 1; a trace continued from a
    /// caller's `traceparent` keeps the caller's decision.
    pub sample_ratio: f64,
    /// How long one export may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Headers sent with every export (a collector's API key, say); redacted in `herald config`.
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            enabled: false,
            endpoint: String::new(),
            protocol: OtlpProtocol::HttpProtobuf,
            service_name: "herald".into(),
            sample_ratio: 1.0,
            timeout: Duration::from_secs(10),
            headers: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

/// TLS on the public listener (HTTP/2 is offered to TLS clients by ALPN, and taken without TLS
/// from clients that speak it directly).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Serve HTTPS instead of plain HTTP.
    pub enabled: bool,
    /// PEM certificate chain, end-entity certificate first. Empty (with `enabled`): a
    /// temporary self-signed certificate is made at start-up and a warning logged.
    pub cert_file: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate.
    pub key_file: std::path::PathBuf,
    /// How often the two files are checked for a change (they are reloaded when they change,
    /// and on SIGHUP). `0s`: on SIGHUP only.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: false,
            cert_file: std::path::PathBuf::new(),
            key_file: std::path::PathBuf::new(),
            watch_interval: Duration::from_secs(5),
        }
    }
}

/// The debug listener, apart from the public one: liveness, readiness and the effective
/// configuration, for operators and orchestrators only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Where it listens (`127.0.0.1:9139`, as oCIS's); empty: no debug listener.
    pub listen: String,
    /// A bearer token every request to it must carry; empty: none.
    pub token: String,
    /// Serve `/stats` here instead of on the public listener (where it then answers 404).
    pub stats: bool,
}

impl Default for DebugConfig {
    fn default() -> Self {
        DebugConfig { listen: "127.0.0.1:9139".into(), token: String::new(), stats: false }
    }
}

impl DebugConfig {
    /// The address, when the listener is on (the configuration was validated).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[serde(alias = "pretty")]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogColor {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LagPolicy {
    /// Send `event: error` / `data: lagged: N messages skipped` and continue from the oldest
    /// event still in history.
    Notify,
    /// Send the same notice, then end the stream; the client reconnects with its last id.
    Disconnect,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest publish request body.
    pub max_body_size: ByteSize,
    /// Largest single event once encoded (data plus fields).
    pub max_event_size: ByteSize,
    /// Most events in one publish request.
    pub max_batch_events: usize,
    /// Most channels one request (a publish or a subscription) may create: past it, the request
    /// is refused with 400 and creates none.
    pub max_new_channels_per_request: usize,
    /// Most users one event may be addressed to (`"users": [...]`).
    pub max_users_per_event: usize,
    /// Most bytes a subscriber writes in one go when catching up: the coalescing unit, and the
    /// bound on what one connection holds beyond the shared history.
    pub write_batch: ByteSize,
    /// How long a publisher may take to send a request body once its head has arrived; a
    /// body that stalls longer is answered 408 and its connection closed.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// How long a client may take to send a request head, which is also how long a keep-alive
    /// connection may sit idle between requests before it is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest request head (request line and header fields); a longer one is answered 431.
    pub max_head_size: ByteSize,
    /// Most header fields in one request; more is answered 431.
    pub max_headers: usize,
    /// How long a write to a subscriber may wait for its socket to drain. A client that stops
    /// reading (a frozen tab, a dead network path the kernel has not noticed) has its stream
    /// ended after this, with the reason `write timeout`, rather than holding its buffers
    /// forever. `0s`: no limit.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Kept in a data directory on disk: survives restarts.
    Disk,
    /// Kept in memory only.
    Memory,
}

/// When the disk store makes accepted events durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Before the publisher gets its answer (publishes arriving together share one fsync).
    Always,
    /// Every `history.fsync_interval`; an operating-system crash may lose that much.
    Interval,
    /// Left to the operating system.
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Where history lives: `disk` (the default) or `memory`.
    pub store: StoreKind,
    /// The disk store's data directory.
    pub dir: std::path::PathBuf,
    /// When the disk store syncs accepted events to disk.
    pub fsync: FsyncMode,
    /// How often `fsync = "interval"` syncs.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Events kept per channel (the default for channels without their own `history_size`).
    pub size: usize,
    /// Age after which events leave history. `0s` keeps them until `size` or `max_memory` evicts.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Age limit for channels made on first use whose settings give none (`ttl` is `0s` and
    /// their `[[channels]]` pattern sets no `history_ttl`), so that names anyone can invent do
    /// not hold history, and so a place under `max_channels`, for ever. `0s` keeps it.
    #[serde(with = "humantime_serde")]
    pub undeclared_ttl: Duration,
    /// Cap on the bytes held by all channels' history together; past it the oldest events of the
    /// whole hub are evicted first.
    pub max_memory: ByteSize,
}

/// Several nodes sharing channels through a bus.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The bus: `redis://host:port[/db]` or `nats://host:port`. Empty: a single node.
    pub bus: String,
    /// The stream every node appends to and reads (a Redis Stream key, or a JetStream stream
    /// name with characters NATS does not allow turned into `_`).
    pub stream: String,
    /// Entries the stream keeps (approximately, with Redis): the cluster's replay window.
    pub max_len: usize,
    /// Age past which the stream drops entries (NATS JetStream only). `0s`: no age limit.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How long a subscription resuming from an id this node has not read from the bus yet
    /// (the client published it on another node a moment ago) waits for it.
    #[serde(with = "humantime_serde")]
    pub catch_up_wait: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            bus: String::new(),
            stream: "herald:events".into(),
            max_len: 100_000,
            max_age: Duration::ZERO,
            catch_up_wait: Duration::from_secs(1),
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.bus.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed to subscribe and publish from a browser. `*` allows any origin (but never
    /// with credentials: then only the listed origins are reflected). Empty: no CORS headers.
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_headers: Vec<String>,
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// A channel name (declared: it exists from start-up) or a pattern with `*` (one segment) or
    /// `**` (any depth) that gives settings to channels created on first use.
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_size: Option<usize>,
    #[serde(default, with = "humantime_serde::option", skip_serializing_if = "Option::is_none")]
    pub history_ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<ChannelAccessConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            http_root: "/".into(),
            workers: 0,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            log_color: LogColor::Auto,
            log_file: std::path::PathBuf::new(),
            access_log: true,
            keepalive_interval: Duration::from_secs(30),
            ping_event: false,
            retry: Duration::from_secs(3),
            allow_undefined_channels: true,
            max_channels: 100_000,
            max_channels_per_connection: 1024,
            max_channel_name_length: 200,
            lag_policy: LagPolicy::Notify,
            dedupe_window: Duration::from_secs(120),
            shutdown_timeout: Duration::from_secs(10),
            shutdown_retry: Duration::from_secs(1),
            tcp_keepalive: Duration::from_secs(60),
            limits: Limits::default(),
            history: HistoryConfig::default(),
            cluster: ClusterConfig::default(),
            cors: CorsConfig::default(),
            access: AccessConfig::default(),
            channels: Vec::new(),
            sources: Vec::new(),
            debug: DebugConfig::default(),
            tls: TlsConfig::default(),
            tracing: TracingConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_size: ByteSize::mib(1),
            max_event_size: ByteSize::kib(256),
            max_batch_events: 1000,
            max_new_channels_per_request: 128,
            max_users_per_event: 1000,
            write_batch: ByteSize::kib(64),
            body_read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_head_size: ByteSize::kib(16),
            max_headers: 64,
            write_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            store: StoreKind::Disk,
            dir: "./data".into(),
            fsync: FsyncMode::Always,
            fsync_interval: Duration::from_secs(1),
            size: 1000,
            ttl: Duration::ZERO,
            undeclared_ttl: Duration::from_secs(3600),
            max_memory: ByteSize::mib(256),
        }
    }
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: vec!["*".into()],
            allowed_methods: vec!["GET".into(), "POST".into(), "OPTIONS".into()],
            allowed_headers: vec!["Content-Type".into(), "Last-Event-ID".into(), "Authorization".into(), "Cache-Control".into()],
            allow_credentials: false,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// Upper bound on `history.size` and per-channel `history_size`, so a typo cannot ask for more
/// memory than any machine has.
pub const MAX_HISTORY_SIZE: usize = 10_000_000;

/// Upper bound on `limits.max_headers`.
pub const MAX_HEADERS: usize = 256;

impl Config {
    /// `http_root` as the connections compare it: without a trailing slash, empty for `/`.
    pub fn http_root_prefix(&self) -> &str {
        self.http_root.trim_end_matches('/')
    }

    /// Checks what serde's types cannot. Each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| Err(ConfigError::Invalid { key: key.to_owned(), message: msg });
        if self.tracing.enabled && self.tracing.endpoint.is_empty() {
            return bad(
                "tracing.endpoint",
                "tracing.enabled needs the collector's OTLP/HTTP endpoint, such as http://127.0.0.1:4318".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.tracing.sample_ratio) {
            return bad("tracing.sample_ratio", "must be between 0 and 1".into());
        }
        let root = &self.http_root;
        let segment_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !root.starts_with('/') || !self.http_root_prefix().split('/').skip(1).all(segment_ok) {
            return bad("http_root", format!("`{root}` is not a path such as /events (letters, digits and -._~ between slashes)"));
        }
        let tls = &self.tls;
        if tls.cert_file.as_os_str().is_empty() != tls.key_file.as_os_str().is_empty() {
            return bad("tls.key_file", "tls.cert_file and tls.key_file go together".into());
        }
        if !tls.enabled && !tls.cert_file.as_os_str().is_empty() {
            return bad("tls.enabled", "tls.cert_file is set but TLS is off: set tls.enabled = true".into());
        }
        if self.limits.max_headers == 0 || self.limits.max_headers > MAX_HEADERS {
            return bad("limits.max_headers", format!("must be between 1 and {MAX_HEADERS}"));
        }
        if self.limits.max_head_size.0 < 1024 || self.limits.max_head_size.0 > 1024 * 1024 {
            return bad("limits.max_head_size", "must be between 1KiB and 1MiB".into());
        }
        if self.limits.header_read_timeout.is_zero() {
            return bad("limits.header_read_timeout", "must be more than 0s".into());
        }
        if self.debug.stats && self.debug.listen.is_empty() {
            return bad("debug.stats", "moves /stats to the debug listener, which debug.listen turns off".into());
        }
        if !self.debug.listen.is_empty() {
            match self.debug.listen.parse::<SocketAddr>() {
                Err(_) => {
                    return bad("debug.listen", format!("`{}` is not an address such as 127.0.0.1:9139 (empty: off)", self.debug.listen));
                }
                Ok(addr) if addr == self.listen && addr.port() != 0 => return bad("debug.listen", "must differ from listen".into()),
                Ok(_) => {}
            }
        }
        if self.workers > 1024 {
            return bad("workers", "must be at most 1024 (0 means one per CPU core)".into());
        }
        if self.dedupe_window < Duration::from_secs(1) || self.dedupe_window > Duration::from_secs(7 * 86_400) {
            return bad("dedupe_window", "must be between 1s and 7d".into());
        }
        if self.max_channels == 0 {
            return bad("max_channels", "must be at least 1".into());
        }
        // The disk store and the buses record an event's channels with a 16-bit count.
        if !(1..=65535).contains(&self.max_channels_per_connection) {
            return bad("max_channels_per_connection", "must be between 1 and 65535".into());
        }
        if !(1..=4096).contains(&self.max_channel_name_length) {
            return bad("max_channel_name_length", "must be between 1 and 4096".into());
        }
        if self.history.store == StoreKind::Disk && self.history.dir.as_os_str().is_empty() {
            return bad("history.dir", "must name a directory for the disk store".into());
        }
        if self.history.fsync == FsyncMode::Interval && self.history.fsync_interval.is_zero() {
            return bad("history.fsync_interval", "must be more than 0s with fsync = \"interval\"".into());
        }
        if self.cluster.enabled() {
            // Refused here rather than at the first publish: this build speaks to both buses
            // over plain TCP only (TLS to them is not built in yet).
            let redis = self.cluster.bus.starts_with("redis://");
            if !redis && !self.cluster.bus.starts_with("nats://") {
                return bad(
                    "cluster.bus",
                    format!(
                        "`{}` is not a redis:// or nats:// URL (or empty for a single node); rediss:// and tls:// are not supported by this build",
                        redact::url(&self.cluster.bus)
                    ),
                );
            }
            if redis && !self.cluster.max_age.is_zero() {
                return bad("cluster.max_age", "is for NATS JetStream; a Redis stream is capped by cluster.max_len".into());
            }
            if self.cluster.stream.is_empty() {
                return bad("cluster.stream", "must name the stream".into());
            }
            if self.cluster.max_len == 0 {
                return bad("cluster.max_len", "must be at least 1".into());
            }
        }
        if self.history.size > MAX_HISTORY_SIZE {
            return bad("history.size", format!("must be at most {MAX_HISTORY_SIZE}"));
        }
        if self.limits.write_batch.0 < 1024 {
            return bad("limits.write_batch", "must be at least 1KiB".into());
        }
        if self.limits.max_event_size.0 == 0 || self.limits.max_event_size > self.limits.max_body_size {
            return bad("limits.max_event_size", "must be more than 0 and at most limits.max_body_size".into());
        }
        if self.limits.body_read_timeout < Duration::from_millis(10) {
            return bad("limits.body_read_timeout", "must be at least 10ms".into());
        }
        if self.limits.max_users_per_event == 0 {
            return bad("limits.max_users_per_event", "must be at least 1".into());
        }
        if self.limits.max_new_channels_per_request == 0 {
            return bad("limits.max_new_channels_per_request", "must be at least 1".into());
        }
        if self.limits.max_batch_events == 0 {
            return bad("limits.max_batch_events", "must be at least 1".into());
        }
        if !self.keepalive_interval.is_zero() && self.keepalive_interval < Duration::from_millis(10) {
            return bad("keepalive_interval", "must be 0s (off) or at least 10ms".into());
        }
        self.cors.validate("cors")?;
        self.access.validate(self.channels.iter().filter_map(|c| c.access.as_ref()))?;
        sources::validate_all(&self.sources)?;
        let declared = self.channels.iter().filter(|c| !pattern::is_pattern(&c.pattern)).count();
        if declared > self.max_channels {
            return bad("channels", format!("declares {declared} channels but max_channels is {}", self.max_channels));
        }
        for (i, ch) in self.channels.iter().enumerate() {
            let key = format!("channels[{i}]");
            pattern::validate_pattern(&ch.pattern, self.max_channel_name_length)
                .or_else(|e| bad(&format!("{key}.pattern"), format!("`{}`: {e}", ch.pattern)))?;
            if ch.history_size.is_some_and(|n| n > MAX_HISTORY_SIZE) {
                return bad(&format!("{key}.history_size"), format!("must be at most {MAX_HISTORY_SIZE}"));
            }
            if let Some(cors) = &ch.cors {
                cors.validate(&format!("{key}.cors"))?;
            }
            if let Some(access) = &ch.access {
                access.validate(&format!("{key}.access"))?;
            }
        }
        Ok(())
    }
}

impl CorsConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for origin in &self.allowed_origins {
            let ok = origin == "*" || is_origin(origin);
            if !ok {
                return Err(ConfigError::Invalid {
                    key: format!("{key}.allowed_origins"),
                    message: format!("`{origin}` is not `*` or an origin such as `https://app.example.com` (scheme and host, no path)"),
                });
            }
        }
        for m in &self.allowed_methods {
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                return Err(ConfigError::Invalid {
                    key: format!("{key}.allowed_methods"),
                    message: format!("`{m}` is not an HTTP method"),
                });
            }
        }
        for h in &self.allowed_headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(ConfigError::Invalid { key: format!("{key}.allowed_headers"), message: format!("`{h}` is not a header name") });
            }
        }
        Ok(())
    }
}

/// `https://host[:port]`: a scheme and a host, no path.
fn is_origin(s: &str) -> bool {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.contains('/'))
}
