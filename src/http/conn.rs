//! One client connection: its first request head is read here, and an HTTP/1 subscription is
//! served straight onto the socket; every other request (publishing, stats, HTTP/2, anything
//! malformed) goes to hyper with the bytes already read put back in front.

use super::event_stream::{self, Handoff};
use super::rewind::Rewind;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Longest request head looked at here; a longer one is left to hyper (which refuses it).
const MAX_HEAD: usize = 16 * 1024;
/// Most header fields looked at here.
const MAX_HEADERS: usize = 64;
/// How long a client may take to send its request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A response body collected here to be written with a length is one of ours: small JSON.
const MAX_PLAIN_BODY: usize = 1024 * 1024;

/// What every connection shares.
pub struct Shared {
    pub app: Router,
    pub hyper: auto::Builder<TokioExecutor>,
    pub shutdown: CancellationToken,
}

/// What the first request head turned out to be.
enum Head {
    /// A complete `GET` under `/sse` over HTTP/1, `len` bytes long.
    Subscribe { request: Box<http::Request<axum::body::Body>>, len: usize, keep_alive: bool },
    /// Not complete yet.
    Partial,
    /// Anything else: hyper's to serve.
    Other,
}

pub async fn serve(mut stream: TcpStream, peer: SocketAddr, shared: std::sync::Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::new();
    let head = tokio::select! {
        head = read_head(&mut stream, &mut buf) => head,
        () = tokio::time::sleep(HEADER_READ_TIMEOUT) => return,
        () = shared.shutdown.cancelled() => return,
    };
    let Some(head) = head else { return };
    match head {
        Head::Subscribe { mut request, len, keep_alive } => {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            let response = match shared.app.clone().oneshot(*request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let (parts, body) = response.into_parts();
            if let Some(sub) = parts.extensions.get::<Handoff>().and_then(Handoff::take) {
                drop(body);
                drop(buf);
                let head = event_stream::response_head(&parts, None, true);
                drop(parts);
                if let Err(e) = event_stream::pump(&mut stream, head, sub).await {
                    tracing::debug!(%peer, error = %e, "event stream ended with an error");
                }
                return;
            }
            // An error (or any other answer): write it with a length, then carry on with hyper.
            let body = match http_body_util::Limited::new(body, MAX_PLAIN_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not collect a response body");
                    return;
                }
            };
            let mut out = event_stream::response_head(&parts, Some(body.len()), !keep_alive);
            out.extend_from_slice(&body);
            if stream.write_all(&out).await.is_err() || !keep_alive {
                let _ = stream.shutdown().await;
                return;
            }
            let rest = Bytes::copy_from_slice(&buf[len..]);
            drop(buf);
            Box::pin(serve_with_hyper(rest, stream, peer, &shared)).await;
        }
        Head::Other | Head::Partial => Box::pin(serve_with_hyper(Bytes::from(buf), stream, peer, &shared)).await,
    }
}

/// Reads until the first request head is complete, is not ours, or is too long. `None` when
/// the client closed first.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Head> {
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(if buf.is_empty() { 1024 } else { buf.len() });
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        match parse_head(buf) {
            Head::Partial if buf.len() < MAX_HEAD => continue,
            Head::Partial => return Some(Head::Other),
            head => return Some(head),
        }
    }
}

/// Looks at a request head without allocating unless it is a subscription.
fn parse_head(buf: &[u8]) -> Head {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    let (Some("GET"), Some(path), Some(minor)) = (req.method, req.path, req.version) else { return Head::Other };
    if !(path == "/sse" || path.starts_with("/sse/") || path.starts_with("/sse?")) {
        return Head::Other;
    }
    let mut builder = http::Request::builder().method(http::Method::GET).uri(path).version(if minor == 0 {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    });
    // HTTP/1.1 connections persist unless the client says otherwise; HTTP/1.0 ones only if asked.
    let mut keep_alive = minor == 1;
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") && field.value != b"0"
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
        {
            // A request body or a protocol switch: hyper knows what to do with those.
            return Head::Other;
        }
        if name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(field.value).to_ascii_lowercase();
            if value.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if value.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        }
        builder = builder.header(field.name, field.value);
    }
    match builder.body(axum::body::Body::empty()) {
        Ok(request) => Head::Subscribe { request: Box::new(request), len, keep_alive },
        // A header or path that `http` refuses: let hyper answer it.
        Err(_) => Head::Other,
    }
}

async fn serve_with_hyper(prefix: Bytes, stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let service = TowerToHyperService::new(shared.app.clone().map_request(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        req
    }));
    let conn = shared.hyper.serve_connection(TokioIo::new(Rewind::new(prefix, stream)), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shared.shutdown.cancelled() => {
            // Finish the request in flight (streams end as the hub closes), take no new one.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(raw: &[u8]) -> &'static str {
        match parse_head(raw) {
            Head::Subscribe { keep_alive: true, .. } => "subscribe",
            Head::Subscribe { keep_alive: false, .. } => "subscribe-close",
            Head::Partial => "partial",
            Head::Other => "other",
        }
    }

    #[test]
    fn only_bodiless_http1_gets_under_sse_are_taken() {
        assert_eq!(kind(b"GET /sse/a HTTP/1.1\r\nHost: x\r\n\r\n"), "subscribe");
        assert_eq!(kind(b"GET /sse?channel=a HTTP/1.1\r\n\r\n"), "subscribe");
        assert_eq!(kind(b"GET /sse HTTP/1.0\r\n\r\n"), "subscribe-close");
        assert_eq!(kind(b"GET /sse HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), "subscribe");
        assert_eq!(kind(b"GET /sse/a HTTP/1.1\r\nConnection: Close\r\n\r\n"), "subscribe-close");
        assert_eq!(kind(b"GET /sse/a HTTP/1.1\r\nHost: x\r\n"), "partial");
        assert_eq!(kind(b"GET /sseother HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind(b"GET /stats HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind(b"GET /sse/a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"), "other");
        assert_eq!(kind(b"GET /sse/a HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"), "other");
        assert_eq!(kind(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "other");
        assert_eq!(kind(b"\x16\x03\x01garbage"), "other");
    }
}
