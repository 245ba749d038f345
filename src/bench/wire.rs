//! The little HTTP/1.1 and SSE a load generator needs, kept cheap per event: connections from
//! spread source addresses, response heads, chunked bodies, and `data:` lines read in place.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens connection number `i` to `addr`.
pub async fn connect(addr: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = super::target::source_ip(&addr, i) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    /// The server said `Connection: close`.
    pub close: bool,
}

/// Reads a response head into `buf` (which may already hold bytes), removing it from `buf`;
/// what follows the head stays in `buf`.
pub async fn read_response_head<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> anyhow::Result<ResponseHead> {
    loop {
        if let Some((len, head)) = parse_response_head(buf)? {
            buf.drain(..len);
            return Ok(head);
        }
        if buf.len() > 64 * 1024 {
            bail!("response head longer than 64 KiB");
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            bail!("connection closed before a response head");
        }
    }
}

fn parse_response_head(buf: &[u8]) -> anyhow::Result<Option<(usize, ResponseHead)>> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf).context("malformed response head")? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let mut framing = Framing::UntilClose;
    let mut close = false;
    for f in resp.headers.iter() {
        if f.name.eq_ignore_ascii_case("connection") && f.value.eq_ignore_ascii_case(b"close") {
            close = true;
        }
        if f.name.eq_ignore_ascii_case("transfer-encoding") && f.value.eq_ignore_ascii_case(b"chunked") {
            framing = Framing::Chunked;
        } else if f.name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let n = std::str::from_utf8(f.value).ok().and_then(|v| v.trim().parse().ok()).context("bad content-length")?;
            framing = Framing::Length(n);
        }
    }
    Ok(Some((len, ResponseHead { status: resp.code.unwrap_or(0), framing, close })))
}

/// Removes chunked transfer framing, incrementally.
#[derive(Default)]
pub struct Dechunker {
    /// Bytes of chunk data still to come in the current chunk.
    remaining: usize,
    state: ChunkState,
    size: usize,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Chunk extensions or the CR after the size, up to LF.
    SizeLineEnd,
    Data,
    /// The CRLF after a chunk's data.
    DataEnd,
    Done,
}

impl Dechunker {
    /// Appends the body bytes found in `input` to `out`. Errors on malformed framing.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Size => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'0'..=b'9' => self.size = self.size * 16 + usize::from(b - b'0'),
                        b'a'..=b'f' => self.size = self.size * 16 + usize::from(b - b'a' + 10),
                        b'A'..=b'F' => self.size = self.size * 16 + usize::from(b - b'A' + 10),
                        b';' | b'\r' => self.state = ChunkState::SizeLineEnd,
                        b'\n' => self.end_size_line(),
                        _ => bail!("bad chunk size"),
                    }
                    if self.size > 1 << 30 {
                        bail!("chunk size too large");
                    }
                }
                ChunkState::SizeLineEnd => {
                    if input[i] == b'\n' {
                        self.end_size_line();
                    }
                    i += 1;
                }
                ChunkState::Data => {
                    let n = self.remaining.min(input.len() - i);
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    self.remaining -= n;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                }
                ChunkState::DataEnd => {
                    if input[i] == b'\n' {
                        self.state = ChunkState::Size;
                    }
                    i += 1;
                }
                ChunkState::Done => return Ok(()),
            }
        }
        Ok(())
    }

    fn end_size_line(&mut self) {
        self.remaining = std::mem::take(&mut self.size);
        self.state = if self.remaining == 0 { ChunkState::Done } else { ChunkState::Data };
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// Finds the `data:` lines of an event stream. Complete lines are read where they lie in the
/// caller's buffer; only a line cut by the end of a read is kept for the next one.
#[derive(Default)]
pub struct DataLines {
    partial: Vec<u8>,
}

impl DataLines {
    /// Calls `on_data` with the value of every complete `data:` line in `input`.
    pub fn feed(&mut self, input: &[u8], mut on_data: impl FnMut(&[u8])) {
        let mut rest = input;
        if !self.partial.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(end) => {
                    self.partial.extend_from_slice(&rest[..end]);
                    let line = std::mem::take(&mut self.partial);
                    if let Some(value) = data_value(&line) {
                        on_data(value);
                    }
                    self.partial = line;
                    self.partial.clear();
                    rest = &rest[end + 1..];
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    return;
                }
            }
        }
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if let Some(value) = data_value(&rest[..end]) {
                on_data(value);
            }
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
    }
}

fn data_value(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let value = line.strip_prefix(b"data:")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_across_any_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            d.feed(&wire[..split], &mut out).unwrap();
            d.feed(&wire[split..], &mut out).unwrap();
            assert_eq!(out, b"hello, world", "split at {split}");
            assert!(d.is_done());
        }
        assert!(Dechunker::default().feed(b"zz\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn data_lines_across_any_split() {
        let wire = b": hi\n\nid: 1\ndata: 1 2 xx\n\nid: 2\r\ndata:3 4\r\n\r\n";
        for split in 0..wire.len() {
            let mut lines = DataLines::default();
            let mut got = Vec::new();
            lines.feed(&wire[..split], |d| got.push(d.to_vec()));
            lines.feed(&wire[split..], |d| got.push(d.to_vec()));
            assert_eq!(got, vec![b"1 2 xx".to_vec(), b"3 4".to_vec()], "split at {split}");
        }
    }

    #[test]
    fn response_heads() {
        let (len, head) = parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nrest").unwrap().unwrap();
        assert_eq!((len, head.status, head.framing), (47, 200, Framing::Chunked));
        let (_, head) = parse_response_head(b"HTTP/1.1 202 Accepted\r\ncontent-length: 12\r\n\r\n").unwrap().unwrap();
        assert_eq!((head.framing, head.close), (Framing::Length(12), false));
        let (_, head) = parse_response_head(b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 1\r\n\r\n").unwrap().unwrap();
        assert!(head.close);
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_response_head(b"NOPE\r\n\r\n").is_err());
    }
}
