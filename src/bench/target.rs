//! What is being measured: URL templates for subscribing and publishing, and how a publish
//! body is written, so that the same load runs against Herald, Nchan or any other hub.

use anyhow::{Context, bail};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// How the event's data travels in a publish request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyMode {
    /// `{"data":"<payload>"}` as application/json (Herald).
    Json,
    /// The payload itself as text/plain (Nchan, and Herald too).
    Raw,
}

/// `http://host:port/path` or `https://…` where the path holds `{channel}`.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    pub addr: SocketAddr,
    /// `https://`: connections are made over TLS (the server's certificate is not checked: the
    /// bench measures, it does not authenticate).
    pub tls: bool,
    host: String,
    path: String,
}

impl UrlTemplate {
    pub fn parse(template: &str, allow_remote: bool) -> anyhow::Result<Self> {
        let (tls, rest) = match (template.strip_prefix("http://"), template.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            _ => bail!("`{template}`: only http:// and https:// URLs are supported"),
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !path.contains("{channel}") {
            bail!("`{template}`: the path must contain {{channel}}");
        }
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolve `{authority}`"))?
            .next()
            .with_context(|| format!("`{authority}` resolves to nothing"))?;
        if !allow_remote && !addr.ip().is_loopback() {
            bail!("`{template}` is not a loopback address; pass --allow-remote to load another machine");
        }
        Ok(UrlTemplate { addr, tls, host: authority.to_owned(), path: path.to_owned() })
    }

    pub fn path(&self, channel: &str) -> String {
        self.path.replace("{channel}", channel)
    }

    pub fn host(&self) -> &str {
        &self.host
    }
}

/// The bench's name for channel `i`.
pub fn channel_name(i: usize) -> String {
    format!("bench-{i}")
}

/// `GET` for an event stream.
pub fn subscribe_request(url: &UrlTemplate, channel: &str) -> Vec<u8> {
    format!("GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n", url.path(channel), url.host())
        .into_bytes()
}

/// A publish request, rewritten in place for every event: only the payload changes, so the
/// head is built once per channel and the body is written into the same buffer.
pub struct PublishRequest {
    head: Vec<u8>,
    mode: BodyMode,
}

impl PublishRequest {
    pub fn new(url: &UrlTemplate, channel: &str, mode: BodyMode) -> Self {
        let content_type = match mode {
            BodyMode::Json => "application/json",
            BodyMode::Raw => "text/plain",
        };
        let head =
            format!("POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: ", url.path(channel), url.host())
                .into_bytes();
        PublishRequest { head, mode }
    }

    /// Writes the whole request for `payload` into `out` (cleared first).
    pub fn write(&self, payload: &[u8], out: &mut Vec<u8>) {
        let (open, close): (&[u8], &[u8]) = match self.mode {
            BodyMode::Json => (b"{\"data\":\"", b"\"}"),
            BodyMode::Raw => (b"", b""),
        };
        out.clear();
        out.extend_from_slice(&self.head);
        out.extend_from_slice(itoa::Buffer::new().format(open.len() + payload.len() + close.len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(open);
        out.extend_from_slice(payload);
        out.extend_from_slice(close);
    }
}

/// Writes the event payload: `<publisher> <seq> <sent µs> ` padded with `x` to `size` bytes.
/// Text only, so it needs no escaping in JSON and reads the same whatever the hub does with it.
pub fn write_payload(publisher: usize, seq: u64, sent_us: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(itoa::Buffer::new().format(publisher).as_bytes());
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(sent_us).as_bytes());
    out.push(b' ');
    if out.len() < size {
        out.resize(size, b'x');
    }
}

/// What a payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: usize,
    pub seq: u64,
    pub sent_us: u64,
}

/// Reads `<publisher> <seq> <sent µs>` back from a payload.
pub fn read_payload(data: &[u8]) -> Option<Stamp> {
    let mut fields = data.splitn(4, |&b| b == b' ');
    let publisher = usize::try_from(parse_u64(fields.next()?)?).ok()?;
    let seq = parse_u64(fields.next()?)?;
    let sent_us = parse_u64(fields.next()?)?;
    Some(Stamp { publisher, seq, sent_us })
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))
}

/// Source address for connection `i`: connections are spread over 127.0.0.1–127.0.0.250 when
/// the target is on loopback, so that more than one address's ~28,000 ephemeral ports can be
/// used.
pub fn source_ip(target: &SocketAddr, i: usize) -> Option<IpAddr> {
    match target.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 250) as u8))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_is_padded() {
        let mut out = Vec::new();
        write_payload(3, 42, 1_700_000_000_000_000, 100, &mut out);
        assert_eq!(out.len(), 100);
        assert_eq!(read_payload(&out), Some(Stamp { publisher: 3, seq: 42, sent_us: 1_700_000_000_000_000 }));
        write_payload(0, 7, 9, 1, &mut out);
        assert_eq!(read_payload(&out), Some(Stamp { publisher: 0, seq: 7, sent_us: 9 }));
        assert_eq!(read_payload(b"0 x 1 "), None);
        assert_eq!(read_payload(b"0 1"), None);
        assert_eq!(read_payload(b"0 99999999999999999999 1 "), None);
    }

    #[test]
    fn templates() {
        let url = UrlTemplate::parse("http://127.0.0.1:8080/pub/{channel}?x=1", false).unwrap();
        assert_eq!(url.path("a"), "/pub/a?x=1");
        assert!(UrlTemplate::parse("http://127.0.0.1:8080/pub", false).is_err());
        assert!(UrlTemplate::parse("ftp://127.0.0.1/{channel}", false).is_err());
        let tls = UrlTemplate::parse("https://127.0.0.1/{channel}", false).unwrap();
        assert!(tls.tls && tls.addr.port() == 443);
        assert!(!url.tls);
        let mut out = Vec::new();
        PublishRequest::new(&url, "c", BodyMode::Json).write(b"1 2 ", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /pub/c?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.ends_with("Content-Length: 15\r\n\r\n{\"data\":\"1 2 \"}"));
    }
}
