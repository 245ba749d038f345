//! `[[sources]]`: brokers and upstream streams Herald takes events from (see `src/sources/`).
//!
//! One flat table per source: the keys every source has (`name`, `type`, `url`, `required`,
//! `[sources.tls]`, `[sources.map]`) and the keys of its type. A key of another type is an error
//! that names it, so a misplaced setting is never silently ignored.

use super::ConfigError;
use crate::tls::ClientTls;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// RabbitMQ (AMQP 0.9.1): a queue bound to an exchange.
    Amqp,
    /// NATS core subjects (at most once: what arrives while Herald is away is not kept).
    Nats,
    /// A NATS JetStream durable consumer.
    Jetstream,
    /// Redis pub/sub (at most once), by channel name or pattern.
    Redis,
    /// A Redis Stream read by a consumer group (`XREADGROUP`, `XACK` after acceptance).
    RedisStream,
    /// MQTT 3.1.1 or 5: topic filters, QoS 1 acknowledged after acceptance, a persistent session.
    Mqtt,
    /// Another SSE endpoint, followed with `Last-Event-ID` across every reconnect.
    Sse,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Amqp => "amqp",
            SourceKind::Nats => "nats",
            SourceKind::Jetstream => "jetstream",
            SourceKind::Redis => "redis",
            SourceKind::RedisStream => "redis_stream",
            SourceKind::Mqtt => "mqtt",
            SourceKind::Sse => "sse",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    Fanout,
    Topic,
    Direct,
    Headers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    #[default]
    Classic,
    Quorum,
}

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum MqttProtocol {
    #[serde(rename = "3.1.1")]
    V311,
    #[default]
    #[serde(rename = "5")]
    V5,
}

/// Where a JetStream consumer made by Herald starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliverFrom {
    /// Messages stored after the consumer is made.
    #[default]
    New,
    /// Everything the stream holds.
    All,
    /// From `start_sequence` on.
    Sequence,
    /// From `start_time` on.
    Time,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Names the source in logs, `/stats` and idempotency keys: unique, and kept across restarts.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: SourceKind,
    /// The broker: `amqp://user:pass@host:5672/vhost` (`amqps://` for TLS), `nats://host:4222`
    /// (`tls://` for TLS).
    pub url: String,
    /// While a required source is disconnected, `/healthz` answers 503.
    #[serde(default)]
    pub required: bool,
    /// A message's own id (AMQP `message-id`, the JetStream sequence) is an idempotency key: a
    /// redelivery within `dedupe_window` publishes nothing.
    #[serde(default = "yes")]
    pub dedupe: bool,
    #[serde(default)]
    pub tls: ClientTls,
    #[serde(default)]
    pub map: MapConfig,

    // AMQP.
    /// The exchange the queue is bound to (`amq.fanout` by default, as ssehub). Exchanges named
    /// `amq.*` exist already; another is declared (durable) with `exchange_type`.
    pub exchange: Option<String>,
    pub exchange_type: Option<ExchangeKind>,
    /// Routing keys the queue is bound with (`#` for a topic exchange by default; a fanout
    /// exchange ignores them).
    pub binding_keys: Option<Vec<String>>,
    /// The queue (`herald.<name>` by default). Nodes of a cluster share it: each message goes to
    /// one of them.
    pub queue: Option<String>,
    pub queue_type: Option<QueueKind>,
    /// Survives a broker restart (true by default).
    pub durable: Option<bool>,
    /// Only this connection may use the queue, and it goes with the connection.
    pub exclusive: Option<bool>,
    /// Deleted once its last consumer goes.
    pub auto_delete: Option<bool>,
    /// Messages rejected as malformed go here (`x-dead-letter-exchange`), else they are dropped.
    pub dead_letter_exchange: Option<String>,

    // NATS and JetStream.
    /// Subjects (`>` and `*` wildcards); for JetStream, the consumer's filter (none: the whole
    /// stream).
    pub subjects: Option<Vec<String>>,
    /// NATS core: nodes in the same queue group share the messages.
    pub queue_group: Option<String>,
    /// JetStream: the stream read.
    pub stream: Option<String>,
    /// JetStream: the durable consumer's name (`herald-<name>` by default), shared by the nodes
    /// of a cluster.
    pub consumer: Option<String>,
    pub deliver: Option<DeliverFrom>,
    pub start_sequence: Option<u64>,
    /// RFC 3339 (`2026-12-01T00:00:00Z`).
    pub start_time: Option<String>,
    /// JetStream: how long the server waits for an acknowledgement before it redelivers.
    #[serde(default, with = "humantime_serde")]
    pub ack_wait: Option<Duration>,

    // Redis.
    /// Redis pub/sub: glob patterns (`PSUBSCRIBE`), beside `subjects` (exact channel names).
    pub patterns: Option<Vec<String>>,
    /// Redis Streams: the stream keys read.
    pub streams: Option<Vec<String>>,
    /// Redis Streams: the consumer group (`herald` by default), made if it is not there.
    pub group: Option<String>,
    /// Redis Streams: the entry field that holds the message (`data` by default; an entry with
    /// one field is that field's value whatever its name).
    pub field: Option<String>,
    /// Redis Streams: how long an entry may stay pending with another consumer (one that died)
    /// before this one claims it.
    #[serde(default, with = "humantime_serde")]
    pub claim_idle: Option<Duration>,

    // MQTT.
    /// Topic filters (`+` one level, `#` every level below), subscribed with QoS 1.
    pub topics: Option<Vec<String>>,
    /// The client id, which names the broker's persistent session for Herald (`herald-<name>`
    /// by default). Each node of a cluster needs its own.
    pub client_id: Option<String>,
    /// `"5"` (default) or `"3.1.1"`.
    pub protocol: Option<MqttProtocol>,
    /// The nodes of a cluster subscribe as one shared subscription (`$share/<group>/<filter>`):
    /// each message goes to one of them.
    pub share_group: Option<String>,
    /// How often the client pings a quiet broker (30 s by default).
    #[serde(default, with = "humantime_serde")]
    pub keep_alive: Option<Duration>,

    // Upstream SSE.
    /// Request headers sent to the upstream (`Authorization`, a cookie, an API key).
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// The `Last-Event-ID` of the first request, when Herald holds none of its own yet.
    pub last_event_id: Option<String>,
    /// With nothing (not even a keep-alive comment) from the upstream this long, reconnect
    /// (60 s by default).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,

    // Brokers with flow control.
    /// Messages delivered and not yet acknowledged, at most: what a slow store holds back.
    pub prefetch: Option<u16>,
}

fn yes() -> bool {
    true
}

/// How a message becomes an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapConfig {
    pub format: MessageFormat,
    /// The channels, as templates: `{subject}` is the routing key, subject or topic, `{1}`…`{9}`
    /// its dot-separated parts, `{source}` the source's name. Used when the message names none
    /// itself (`channel_field`, or a Herald event's `channel`/`channels`/`path`). Default:
    /// `["{subject}"]`.
    pub channels: Vec<String>,
    /// A JSON pointer (`/path`) to the channel, or an array of them, in the message.
    pub channel_field: Option<String>,
    /// A JSON pointer to the user id, or an array of them, the event is addressed to.
    pub users_field: Option<String>,
    /// The event type, fixed.
    pub event: Option<String>,
    /// A JSON pointer to the event type.
    pub event_field: Option<String>,
    /// A JSON pointer to the event id (none: Herald assigns one).
    pub id_field: Option<String>,
    /// A JSON pointer to the data (a string is its text, another value its JSON). None: the
    /// whole message.
    pub data_field: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    /// A JSON object in Herald's event format (with `data`) is taken as one; anything else as
    /// `json` when the map names fields, else as `raw`.
    #[default]
    Auto,
    /// Herald's JSON event format, or the message is rejected.
    Herald,
    /// A JSON document, read with the map's fields; not JSON: rejected.
    Json,
    /// The message is the data, as it is (UTF-8, or rejected).
    Raw,
}

impl SourceConfig {
    /// The channel templates in force.
    pub fn channel_templates(&self) -> Vec<String> {
        if self.map.channels.is_empty() { vec!["{subject}".into()] } else { self.map.channels.clone() }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str| format!("sources.{}.{k}", self.name);
        let bad = |k: &str, message: String| Err(ConfigError::Invalid { key: key(k), message });
        if self.url.is_empty() {
            return bad("url", "is required".into());
        }
        // Keys of other types.
        let given: &[(&str, bool, &[SourceKind])] = &[
            ("exchange", self.exchange.is_some(), &[SourceKind::Amqp]),
            ("exchange_type", self.exchange_type.is_some(), &[SourceKind::Amqp]),
            ("binding_keys", self.binding_keys.is_some(), &[SourceKind::Amqp]),
            ("queue", self.queue.is_some(), &[SourceKind::Amqp]),
            ("queue_type", self.queue_type.is_some(), &[SourceKind::Amqp]),
            ("durable", self.durable.is_some(), &[SourceKind::Amqp]),
            ("exclusive", self.exclusive.is_some(), &[SourceKind::Amqp]),
            ("auto_delete", self.auto_delete.is_some(), &[SourceKind::Amqp]),
            ("dead_letter_exchange", self.dead_letter_exchange.is_some(), &[SourceKind::Amqp]),
            ("subjects", self.subjects.is_some(), &[SourceKind::Nats, SourceKind::Jetstream, SourceKind::Redis]),
            ("queue_group", self.queue_group.is_some(), &[SourceKind::Nats]),
            ("stream", self.stream.is_some(), &[SourceKind::Jetstream]),
            ("consumer", self.consumer.is_some(), &[SourceKind::Jetstream, SourceKind::RedisStream]),
            ("deliver", self.deliver.is_some(), &[SourceKind::Jetstream, SourceKind::RedisStream]),
            ("start_sequence", self.start_sequence.is_some(), &[SourceKind::Jetstream]),
            ("start_time", self.start_time.is_some(), &[SourceKind::Jetstream]),
            ("ack_wait", self.ack_wait.is_some(), &[SourceKind::Jetstream]),
            ("prefetch", self.prefetch.is_some(), &[SourceKind::Amqp, SourceKind::Jetstream, SourceKind::RedisStream, SourceKind::Mqtt]),
            ("topics", self.topics.is_some(), &[SourceKind::Mqtt]),
            ("client_id", self.client_id.is_some(), &[SourceKind::Mqtt]),
            ("protocol", self.protocol.is_some(), &[SourceKind::Mqtt]),
            ("share_group", self.share_group.is_some(), &[SourceKind::Mqtt]),
            ("keep_alive", self.keep_alive.is_some(), &[SourceKind::Mqtt]),
            ("headers", self.headers.is_some(), &[SourceKind::Sse]),
            ("last_event_id", self.last_event_id.is_some(), &[SourceKind::Sse]),
            ("idle_timeout", self.idle_timeout.is_some(), &[SourceKind::Sse]),
            ("patterns", self.patterns.is_some(), &[SourceKind::Redis]),
            ("streams", self.streams.is_some(), &[SourceKind::RedisStream]),
            ("group", self.group.is_some(), &[SourceKind::RedisStream]),
            ("field", self.field.is_some(), &[SourceKind::RedisStream]),
            ("claim_idle", self.claim_idle.is_some(), &[SourceKind::RedisStream]),
        ];
        for &(k, set, kinds) in given {
            if set && !kinds.contains(&self.kind) {
                let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                return bad(k, format!("is a setting of {} sources, not of `{}`", names.join(" and "), self.kind.as_str()));
            }
        }
        let scheme_ok = match self.kind {
            SourceKind::Amqp => self.url.starts_with("amqp://") || self.url.starts_with("amqps://"),
            SourceKind::Nats | SourceKind::Jetstream => {
                self.url.split(',').all(|u| ["nats://", "tls://"].iter().any(|s| u.trim().starts_with(s)))
            }
            SourceKind::Redis | SourceKind::RedisStream => self.url.starts_with("redis://") || self.url.starts_with("rediss://"),
            SourceKind::Mqtt => self.url.starts_with("mqtt://") || self.url.starts_with("mqtts://"),
            SourceKind::Sse => self.url.starts_with("http://") || self.url.starts_with("https://"),
        };
        if !scheme_ok {
            let want = match self.kind {
                SourceKind::Amqp => "amqp:// or amqps://",
                SourceKind::Nats | SourceKind::Jetstream => "nats:// or tls://",
                SourceKind::Redis | SourceKind::RedisStream => "redis:// or rediss://",
                SourceKind::Mqtt => "mqtt:// or mqtts://",
                SourceKind::Sse => "http:// or https://",
            };
            return bad("url", format!("must start with {want}"));
        }
        if matches!(self.kind, SourceKind::Redis | SourceKind::RedisStream) && !self.tls.is_default() && !self.url.starts_with("rediss://")
        {
            return bad("tls", "TLS to Redis is asked for with a rediss:// url".into());
        }
        if self.kind == SourceKind::Amqp && !self.tls.is_default() && !self.url.starts_with("amqps://") {
            return bad("tls", "TLS to RabbitMQ is asked for with an amqps:// url".into());
        }
        if self.prefetch == Some(0) {
            return bad("prefetch", "must be at least 1".into());
        }
        match self.kind {
            SourceKind::Amqp => {
                let exchange = self.exchange.as_deref().unwrap_or("amq.fanout");
                if exchange.is_empty() {
                    return bad("exchange", "must name an exchange (the default exchange cannot be bound to)".into());
                }
                if self.exchange_type().is_none() {
                    return bad("exchange_type", format!("is needed for exchange `{exchange}` (fanout, topic, direct or headers)"));
                }
                if self.queue_type == Some(QueueKind::Quorum) && (self.durable == Some(false) || self.exclusive == Some(true)) {
                    return bad("queue_type", "a quorum queue is durable and not exclusive".into());
                }
            }
            SourceKind::Nats => {
                if self.subjects.as_ref().is_none_or(|s| s.is_empty()) {
                    return bad("subjects", "name at least one subject (wildcards `*` and `>` allowed)".into());
                }
            }
            SourceKind::Redis => {
                if self.subjects.as_ref().is_none_or(|s| s.is_empty()) && self.patterns.as_ref().is_none_or(|s| s.is_empty()) {
                    return bad("subjects", "name at least one Redis channel (subjects) or pattern (patterns)".into());
                }
            }
            SourceKind::RedisStream => {
                if self.streams.as_ref().is_none_or(|s| s.is_empty()) {
                    return bad("streams", "name at least one stream key".into());
                }
                if !matches!(self.deliver.unwrap_or_default(), DeliverFrom::New | DeliverFrom::All) {
                    return bad("deliver", "a Redis consumer group starts at `new` or `all`".into());
                }
            }
            SourceKind::Mqtt => {
                if let Err(e) = mqtt_address(&self.url) {
                    return bad("url", e);
                }
                let Some(topics) = self.topics.as_ref().filter(|t| !t.is_empty()) else {
                    return bad("topics", "name at least one topic filter (wildcards `+` and `#` allowed)".into());
                };
                for t in topics {
                    if let Err(e) = check_topic_filter(t) {
                        return bad("topics", format!("`{t}`: {e}"));
                    }
                }
                if let Some(id) = &self.client_id
                    && (id.is_empty() || id.len() > 65_535 || id.chars().any(char::is_control))
                {
                    return bad("client_id", format!("`{id}` must be 1 to 65,535 bytes without control characters"));
                }
                if let Some(group) = &self.share_group
                    && (group.is_empty() || group.contains(['/', '+', '#']))
                {
                    return bad("share_group", format!("`{group}` must be a name without `/`, `+` or `#`"));
                }
                if self.keep_alive.is_some_and(|k| k.as_secs() == 0 || k.as_secs() > u64::from(u16::MAX)) {
                    return bad("keep_alive", "must be between 1 s and 18 h".into());
                }
            }
            SourceKind::Sse => {
                if let Err(e) = url::Url::parse(&self.url) {
                    return bad("url", format!("`{}` is not a URL: {e}", self.url));
                }
                for (name, value) in self.headers.iter().flatten() {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::from_str(value).is_err() {
                        return bad("headers", format!("`{name}` is not a valid header name and value"));
                    }
                    if name.eq_ignore_ascii_case("last-event-id") {
                        return bad("headers", "Herald sends Last-Event-ID itself: set `last_event_id` for the first request".into());
                    }
                }
                if let Some(id) = &self.last_event_id
                    && (id.is_empty() || id.contains('\0') || http::HeaderValue::from_str(id).is_err())
                {
                    return bad("last_event_id", "must be a non-empty id that can be sent as a header (no control characters)".into());
                }
                if self.idle_timeout.is_some_and(|t| t < Duration::from_secs(1)) {
                    return bad("idle_timeout", "must be at least 1s".into());
                }
                // An event does not say which channel it was on.
                if self.map.channels.is_empty() && self.map.channel_field.is_none() && self.map.format != MessageFormat::Herald {
                    return bad(
                        "map.channels",
                        "name the channels the upstream's events go to (or `channel_field`, or format = \"herald\")".into(),
                    );
                }
            }
            SourceKind::Jetstream => {
                if self.stream.as_deref().is_none_or(str::is_empty) {
                    return bad("stream", "is required: the JetStream stream to read".into());
                }
                match self.deliver.unwrap_or_default() {
                    DeliverFrom::Sequence if self.start_sequence.is_none() => {
                        return bad("start_sequence", "is needed with deliver = \"sequence\"".into());
                    }
                    DeliverFrom::Time => match &self.start_time {
                        None => return bad("start_time", "is needed with deliver = \"time\"".into()),
                        Some(t) if humantime::parse_rfc3339_weak(t).is_err() => {
                            return bad("start_time", format!("`{t}` is not an RFC 3339 time such as 2026-12-01T00:00:00Z"));
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        for (k, subjects) in [("subjects", &self.subjects), ("binding_keys", &self.binding_keys)] {
            if let Some(list) = subjects {
                for s in list {
                    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return bad(k, format!("`{s}` holds white space"));
                    }
                }
            }
        }
        self.map.validate(&key("map"))
    }

    /// The exchange's type: as configured, else what an `amq.*` exchange is.
    pub fn exchange_type(&self) -> Option<ExchangeKind> {
        self.exchange_type.or(match self.exchange.as_deref().unwrap_or("amq.fanout") {
            "amq.fanout" => Some(ExchangeKind::Fanout),
            "amq.topic" => Some(ExchangeKind::Topic),
            "amq.direct" => Some(ExchangeKind::Direct),
            "amq.headers" | "amq.match" => Some(ExchangeKind::Headers),
            _ => None,
        })
    }
}

impl MapConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let bad = |k: &str, message: String| Err(ConfigError::Invalid { key: format!("{key}.{k}"), message });
        for (k, pointer) in [
            ("channel_field", &self.channel_field),
            ("users_field", &self.users_field),
            ("event_field", &self.event_field),
            ("id_field", &self.id_field),
            ("data_field", &self.data_field),
        ] {
            if let Some(p) = pointer
                && !p.is_empty()
                && !p.starts_with('/')
            {
                return bad(k, format!("`{p}` is not a JSON pointer: write `/{p}`"));
            }
        }
        if self.event.is_some() && self.event_field.is_some() {
            return bad("event", "set `event` or `event_field`, not both".into());
        }
        if self.format == MessageFormat::Raw && self.names_fields() {
            return bad("format", "a raw message has no fields: remove the *_field keys or use format = \"json\"".into());
        }
        for t in &self.channels {
            if let Err(e) = check_template(t) {
                return bad("channels", format!("`{t}`: {e}"));
            }
        }
        Ok(())
    }

    /// Whether any field is read from the message.
    pub fn names_fields(&self) -> bool {
        [&self.channel_field, &self.users_field, &self.event_field, &self.id_field, &self.data_field].iter().any(|f| f.is_some())
    }
}

/// A channel template's placeholders are `{subject}`, `{source}` and `{1}`…`{9}`; `{{` and
/// `}}` are literal braces.
pub fn check_template(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("is empty".into());
    }
    let mut rest = t;
    while let Some(i) = rest.find(['{', '}']) {
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err("a `}` without its `{` (write `}}` for a brace)".into());
        }
        let Some(end) = tail.find('}') else { return Err("a `{` without its `}` (write `{{` for a brace)".into()) };
        let name = &tail[1..end];
        let known = matches!(name, "subject" | "source") || (name.len() == 1 && matches!(name.as_bytes()[0], b'1'..=b'9'));
        if !known {
            return Err(format!("unknown placeholder `{{{name}}}` (subject, source, 1 to 9)"));
        }
        rest = &tail[end + 1..];
    }
    Ok(())
}

/// Where an MQTT source connects, from its `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttAddress {
    pub host: String,
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// `mqtt://[user[:password]@]host[:port]` (1883 by default) or `mqtts://…` (8883).
pub fn mqtt_address(url: &str) -> Result<MqttAddress, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{}` is not a URL: {e}", super::redact::url(url)))?;
    // What errors show: never the password.
    let url = &super::redact::url(url);
    let tls = match parsed.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        other => return Err(format!("scheme `{other}`: use mqtt:// or mqtts://")),
    };
    let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| format!("`{url}` names no host"))?;
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("`{url}`: an MQTT address is scheme, credentials, host and port only"));
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().map(|c| c.into_owned()).map_err(|e| e.to_string());
    let username = Some(parsed.username()).filter(|u| !u.is_empty()).map(decode).transpose()?;
    let password = parsed.password().map(decode).transpose()?;
    Ok(MqttAddress {
        host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
        port: parsed.port().unwrap_or(if tls { 8883 } else { 1883 }),
        tls,
        username,
        password,
    })
}

/// An MQTT topic filter: levels split by `/`, `+` a whole level, `#` a whole last level; a
/// shared subscription is made with `share_group`, not written here.
pub fn check_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("is empty".into());
    }
    if filter.starts_with("$share/") {
        return Err("write the filter alone and set `share_group` for a shared subscription".into());
    }
    if filter.contains('\0') {
        return Err("holds a NUL character".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("`#` must be a whole level, the last one".into());
        }
        if level.contains('+') && *level != "+" {
            return Err("`+` must be a whole level".into());
        }
    }
    Ok(())
}

/// Names must be unique: they key idempotency and `/stats`.
pub fn validate_all(sources: &[SourceConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for s in sources {
        let valid = !s.name.is_empty() && s.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(ConfigError::Invalid {
                key: "sources.name".into(),
                message: format!("`{}`: a source's name is letters, digits, `-`, `_` and `.`", s.name),
            });
        }
        if !seen.insert(&s.name) {
            return Err(ConfigError::Invalid { key: format!("sources.{}.name", s.name), message: "two sources have this name".into() });
        }
        s.validate()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<(), ConfigError> {
        #[derive(Deserialize)]
        struct Wrap {
            sources: Vec<SourceConfig>,
        }
        let w: Wrap = toml::from_str(toml).map_err(|e| ConfigError::Invalid { key: "toml".into(), message: e.to_string() })?;
        validate_all(&w.sources)
    }

    fn key_of(r: Result<(), ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn a_misplaced_or_bad_key_is_named() {
        assert!(parse("[[sources]]\nname = \"a\"\ntype = \"amqp\"\nurl = \"amqp://h\"").is_ok());
        assert_eq!(
            key_of(parse("[[sources]]\nname = \"a\"\ntype = \"nats\"\nurl = \"nats://h\"\nexchange = \"x\"\nsubjects = [\"a\"]")),
            "sources.a.exchange"
        );
        assert_eq!(key_of(parse("[[sources]]\nname = \"a\"\ntype = \"nats\"\nurl = \"nats://h\"")), "sources.a.subjects");
        assert_eq!(key_of(parse("[[sources]]\nname = \"a\"\ntype = \"amqp\"\nurl = \"http://h\"")), "sources.a.url");
        assert_eq!(
            key_of(parse("[[sources]]\nname = \"a\"\ntype = \"amqp\"\nurl = \"amqp://h\"\nexchange = \"mine\"")),
            "sources.a.exchange_type"
        );
        assert_eq!(key_of(parse("[[sources]]\nname = \"a\"\ntype = \"jetstream\"\nurl = \"nats://h\"")), "sources.a.stream");
        assert_eq!(
            key_of(parse(
                "[[sources]]\nname = \"a\"\ntype = \"jetstream\"\nurl = \"nats://h\"\nstream = \"S\"\ndeliver = \"time\"\nstart_time = \"yesterday\""
            )),
            "sources.a.start_time"
        );
        assert_eq!(
            key_of(parse("[[sources]]\nname = \"a\"\ntype = \"amqp\"\nurl = \"amqp://h\"\n[sources.map]\nchannels = [\"o/{x}\"]")),
            "sources.a.map.channels"
        );
        assert_eq!(
            key_of(parse("[[sources]]\nname = \"a\"\ntype = \"amqp\"\nurl = \"amqp://h\"\n[sources.map]\nusers_field = \"userid\"")),
            "sources.a.map.users_field"
        );
        assert_eq!(
            key_of(parse(
                "[[sources]]\nname = \"a\"\ntype = \"amqp\"\nurl = \"amqp://h\"\n[[sources]]\nname = \"a\"\ntype = \"amqp\"\nurl = \"amqp://h\""
            )),
            "sources.a.name"
        );
        assert!(parse("[[sources]]\nname = \"a\"\ntype = \"amqp\"\nurl = \"amqp://h\"\nqueue_typo = 1").is_err());
    }

    #[test]
    fn mqtt_sources_check_their_filters() {
        let mqtt = |extra: &str| parse(&format!("[[sources]]\nname = \"m\"\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\n{extra}"));
        assert!(mqtt("topics = [\"sensors/+/temp\", \"orders/#\", \"#\"]\nprotocol = \"3.1.1\"").is_ok());
        assert_eq!(key_of(mqtt("")), "sources.m.topics");
        for bad in ["a/#/b", "a/b#", "a+/b", "$share/g/a", ""] {
            assert_eq!(key_of(mqtt(&format!("topics = [\"{bad}\"]"))), "sources.m.topics", "{bad}");
        }
        assert_eq!(key_of(mqtt("topics = [\"a\"]\nshare_group = \"g/x\"")), "sources.m.share_group");
        assert_eq!(key_of(mqtt("topics = [\"a\"]\nstream = \"S\"")), "sources.m.stream");
        assert!(mqtt("topics = [\"a\"]\nprotocol = \"4\"").is_err());
        let url = |u: &str| parse(&format!("[[sources]]\nname = \"m\"\ntype = \"mqtt\"\nurl = \"{u}\"\ntopics = [\"a\"]"));
        assert!(url("mqtts://user:secret@broker.example:8883").is_ok());
        assert_eq!(key_of(url("tcp://h:1883")), "sources.m.url");
        assert_eq!(key_of(url("mqtt://h:1883/path")), "sources.m.url");
        assert_eq!(key_of(url("mqtt://:1883")), "sources.m.url");
    }

    #[test]
    fn sse_sources_name_their_channels_and_send_valid_headers() {
        let sse =
            |extra: &str| parse(&format!("[[sources]]\nname = \"u\"\ntype = \"sse\"\nurl = \"https://up.example/sse?channel=a\"\n{extra}"));
        assert!(sse("headers = {authorization = \"Bearer x\"}\n[sources.map]\nchannels = [\"mirror\"]").is_ok());
        assert_eq!(key_of(sse("")), "sources.u.map.channels");
        assert_eq!(key_of(sse("headers = {\"bad name\" = \"x\"}\n[sources.map]\nchannels = [\"m\"]")), "sources.u.headers");
        assert_eq!(key_of(sse("headers = {last-event-id = \"3\"}\n[sources.map]\nchannels = [\"m\"]")), "sources.u.headers");
        assert_eq!(key_of(sse("last_event_id = \"a\\nb\"\n[sources.map]\nchannels = [\"m\"]")), "sources.u.last_event_id");
        assert_eq!(key_of(sse("topics = [\"a\"]\n[sources.map]\nchannels = [\"m\"]")), "sources.u.topics");
    }

    #[test]
    fn templates_know_their_placeholders() {
        assert!(check_template("orders/{1}").is_ok());
        assert!(check_template("{source}-{subject}").is_ok());
        assert!(check_template("lit{{eral}}").is_ok());
        assert!(check_template("{0}").is_err());
        assert!(check_template("{10}").is_err());
        assert!(check_template("a{").is_err());
        assert!(check_template("a}").is_err());
    }
}
