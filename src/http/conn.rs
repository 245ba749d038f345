//! One client connection. Its request heads are read here: an HTTP/1 subscription is served
//! straight onto the socket, and an HTTP/1.1 publish with a small `Content-Length` body is read,
//! routed and answered here, request after request. Anything else (stats, HTTP/2, chunked
//! bodies, anything malformed) goes to hyper with the bytes already read put back in front.

use super::ApiError;
use super::event_stream::{self, Handoff};
use super::rewind::Rewind;
use super::socket::Socket;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A response body collected here to be written with a length is one of ours: small JSON.
const MAX_PLAIN_BODY: usize = 1024 * 1024;
/// Largest publish body read here; a larger one goes to hyper (and the body limits).
const MAX_PUBLISH_BODY: usize = 64 * 1024;

/// What every connection shares.
pub struct Shared {
    pub app: Router,
    pub hyper: auto::Builder<TokioExecutor>,
    pub shutdown: CancellationToken,
    /// `limits.body_read_timeout`.
    pub body_read_timeout: Duration,
    /// `limits.header_read_timeout`: for a request head, and for an idle keep-alive connection.
    pub header_read_timeout: Duration,
    /// `limits.max_head_size`.
    pub max_head: usize,
    /// `limits.max_headers`.
    pub max_headers: usize,
    /// `limits.write_timeout`.
    pub write_timeout: event_stream::WriteTimeout,
    /// `http_root` without its trailing slash: empty for `/`. Shared with each hyper
    /// connection's request mapping.
    pub root: std::sync::Arc<str>,
}

/// What the first request head turned out to be.
enum Head {
    /// A complete `GET` under `/sse` over HTTP/1, `len` bytes long.
    Subscribe { request: Box<http::Request<axum::body::Body>>, len: usize, keep_alive: bool },
    /// A `POST` under `/sse` over HTTP/1.1 with a `Content-Length` body of at most
    /// [`MAX_PUBLISH_BODY`]: a publish. Served here rather than by hyper because hyper hands the
    /// body over through a channel that wakes the connection's own task while it runs, and
    /// tokio then puts that task behind every subscriber the publish just woke (measured: the
    /// next publish on the connection was read about 1 ms after the answer, with 1,000
    /// subscribers).
    Publish { request: Box<http::Request<axum::body::Body>>, len: usize, body_len: usize, keep_alive: bool },
    /// Not complete yet.
    Partial,
    /// A request framed two ways (`Transfer-Encoding` and `Content-Length`): a proxy in front
    /// may read it one way and this server the other (request smuggling), so it is refused with
    /// 400 and the connection closed, whichever path would have served it.
    Ambiguous,
    /// A head longer than `limits.max_head_size` or with more than `limits.max_headers`
    /// fields: refused with 431 and the connection closed.
    TooLarge,
    /// Anything else: hyper's to serve.
    Other,
}

pub async fn serve<S: Socket>(mut stream: S, peer: SocketAddr, shared: std::sync::Arc<Shared>) {
    // A stream lives for hours and holds its task all that time, so the task is kept to what a
    // stream needs: the requests before it are served in a future of their own on the heap
    // (a future keeps room for every local that lives across one of its awaits, the request,
    // the router's future and the response's included), freed once the stream starts.
    let mut next = Box::pin(serve_requests(&mut stream, peer, &shared)).await;
    match &mut next {
        Next::Stream(open) => {
            if let Err(e) = event_stream::pump(&mut stream, open, shared.write_timeout).await {
                tracing::debug!(%peer, error = %e, "event stream ended with an error");
            }
        }
        Next::Hyper(prefix) => {
            let prefix = std::mem::take(prefix);
            Box::pin(serve_with_hyper(prefix, stream, peer, &shared)).await;
        }
        Next::Done => {}
    }
}

/// What the connection does once `serve_requests` is through with it.
enum Next {
    /// Streams a subscription.
    Stream(event_stream::OpenStream),
    /// Goes to hyper, with the bytes read so far.
    Hyper(Bytes),
    /// Closes.
    Done,
}

/// Serves the connection's requests, one after another on a keep-alive connection, until one
/// is a subscription (returned, for [`serve`] to stream) or the connection is hyper's to serve
/// or done.
async fn serve_requests<S: Socket>(stream: &mut S, peer: SocketAddr, shared: &Shared) -> Next {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let read = read_head(stream, &mut buf, shared);
        let Some(Some(head)) = within(shared, shared.header_read_timeout, read).await else { return Next::Done };
        let (mut request, len, keep_alive) = match head {
            Head::Subscribe { request, len, keep_alive } => (request, len, keep_alive),
            Head::Publish { mut request, len, body_len, keep_alive } => {
                match within(shared, shared.body_read_timeout, read_body(stream, &mut buf, len + body_len)).await {
                    Some(true) => {}
                    // The client stopped sending its body: told so, as hyper's path tells it.
                    None if !shared.shutdown.is_cancelled() => {
                        refuse(stream, &ApiError::body_timeout(shared.body_read_timeout)).await;
                        return Next::Done;
                    }
                    _ => return Next::Done,
                }
                *request.body_mut() = axum::body::Body::from(Bytes::copy_from_slice(&buf[len..len + body_len]));
                (request, len + body_len, keep_alive)
            }
            Head::Ambiguous => {
                let error = ApiError::bad_request("Transfer-Encoding and Content-Length in one request: send one of them");
                refuse(stream, &error).await;
                return Next::Done;
            }
            Head::TooLarge => {
                let error = ApiError::new(
                    http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("request head over {} bytes or {} header fields", shared.max_head, shared.max_headers),
                );
                refuse(stream, &error).await;
                return Next::Done;
            }
            Head::Other | Head::Partial => {
                return Next::Hyper(Bytes::from(buf));
            }
        };
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        let stream_length = if request.version() == http::Version::HTTP_10 {
            event_stream::BodyLength::UntilClose
        } else {
            event_stream::BodyLength::Chunked
        };
        let response = match shared.app.clone().oneshot(*request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        if let Some((sub, admission)) = parts.extensions.get::<Handoff>().and_then(Handoff::take) {
            drop(body);
            drop(buf);
            let head = event_stream::response_head(&parts, stream_length, true);
            return Next::Stream(event_stream::OpenStream { head, length: stream_length, sub, admission });
        }
        // Any other answer (a publish's, or an error): written with a length.
        let body = match http_body_util::Limited::new(body, MAX_PLAIN_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                tracing::warn!(error = %e, "could not collect a response body");
                return Next::Done;
            }
        };
        let mut out = event_stream::response_head(&parts, event_stream::BodyLength::Exact(body.len()), !keep_alive);
        out.extend_from_slice(&body);
        // Flushed: under TLS, what the socket did not take at once waits in the TLS layer.
        if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() || !keep_alive {
            let _ = stream.shutdown().await;
            return Next::Done;
        }
        // What the client sent after this request (pipelining) is the next one.
        buf.drain(..len);
    }
}

/// `read`'s outcome, or `None` when the client took longer than `limit` or the server is
/// shutting down.
async fn within<T>(shared: &Shared, limit: Duration, read: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        done = read => Some(done),
        () = tokio::time::sleep(limit) => None,
        () = shared.shutdown.cancelled() => None,
    }
}

/// Answers `error` and closes the connection: what is left of the request cannot be trusted.
async fn refuse<S: Socket>(stream: &mut S, error: &ApiError) {
    let body = error.json_body();
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = error.status;
    parts.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    let mut out = event_stream::response_head(&parts, event_stream::BodyLength::Exact(body.len()), true);
    out.extend_from_slice(&body);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Reads until `buf` holds `total` bytes (a request head and its body). `false` when the
/// client closed first.
async fn read_body<S: Socket>(stream: &mut S, buf: &mut Vec<u8>, total: usize) -> bool {
    while buf.len() < total {
        buf.reserve(total - buf.len());
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// Reads until a request head is complete, is not ours, or is too long; bytes already in `buf`
/// (pipelined after the previous request) come first. `None` when the client closed first.
/// The head is parsed once, when its blank line has arrived: each read only looks at its own
/// bytes for it, so a client sending one byte at a time costs no more than one sending it whole.
async fn read_head<S: Socket>(stream: &mut S, buf: &mut Vec<u8>, shared: &Shared) -> Option<Head> {
    let max_head = shared.max_head;
    let mut scanned = 0;
    loop {
        if let Some(end) = head_end(buf, scanned) {
            if end > max_head {
                return Some(Head::TooLarge);
            }
            return Some(parse_head(&buf[..end], shared.max_headers, &shared.root));
        }
        if buf.len() >= max_head {
            return Some(Head::TooLarge);
        }
        scanned = buf.len();
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(if buf.is_empty() { 1024 } else { buf.len() });
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Where the head in `buf` ends (after its blank line), looking from `scanned` on (less the
/// three bytes a line end split across reads may have left before it).
fn head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let from = scanned.saturating_sub(3);
    let mut at = from;
    while let Some(i) = memchr::memchr(b'\n', &buf[at..]) {
        let lf = at + i;
        // A blank line: LF LF, or CR LF CR LF (httparse accepts both).
        if (lf >= 1 && buf[lf - 1] == b'\n') || (lf >= 3 && &buf[lf - 3..lf] == b"\r\n\r") {
            return Some(lf + 1);
        }
        at = lf + 1;
    }
    None
}

/// Looks at a request head without allocating unless it is a subscription. `root` is taken off
/// the path (see `root.rs`); a path outside it is hyper's to answer.
fn parse_head(buf: &[u8], max_headers: usize, root: &str) -> Head {
    // Left uninitialised: httparse writes the fields it finds (zeroing room for the most a
    // configuration allows would cost every request).
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; crate::config::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields[..max_headers.min(crate::config::MAX_HEADERS)]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(httparse::Error::TooManyHeaders) => return Head::TooLarge,
        Err(_) => return Head::Other,
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else { return Head::Other };
    let chunked = req.headers.iter().any(|f| f.name.eq_ignore_ascii_case("transfer-encoding"));
    let lengths = req.headers.iter().filter(|f| f.name.eq_ignore_ascii_case("content-length")).count();
    if chunked && lengths > 0 {
        return Head::Ambiguous;
    }
    let publish = match method {
        "GET" => false,
        // HTTP/1.0 publishers, and their keep-alive rules, are left to hyper.
        "POST" if minor == 1 => true,
        _ => return Head::Other,
    };
    let Some(path) = super::root::within_target(path, root) else { return Head::Other };
    if !(path == "/sse" || path.starts_with("/sse/") || path.starts_with("/sse?")) {
        return Head::Other;
    }
    let mut builder = http::Request::builder()
        .method(if publish { http::Method::POST } else { http::Method::GET })
        .uri(path)
        .version(if minor == 0 { http::Version::HTTP_10 } else { http::Version::HTTP_11 });
    // HTTP/1.1 connections persist unless the client says otherwise; HTTP/1.0 ones only if asked.
    let mut keep_alive = minor == 1;
    let mut body_len: Option<usize> = None;
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("expect") {
            // A chunked body, a protocol switch or `100-continue`: hyper knows what to do.
            return Head::Other;
        }
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = content_length(field.value);
            match (parsed, body_len) {
                // One length, small enough to read here (and none on a subscription).
                (Some(n), None) if (publish && n <= MAX_PUBLISH_BODY) || n == 0 => body_len = Some(n),
                _ => return Head::Other,
            }
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
    let Ok(request) = builder.body(axum::body::Body::empty()) else {
        // A header or path that `http` refuses: let hyper answer it.
        return Head::Other;
    };
    let request = Box::new(request);
    match (publish, body_len) {
        (false, _) => Head::Subscribe { request, len, keep_alive },
        (true, Some(body_len)) => Head::Publish { request, len, body_len, keep_alive },
        // A publish without a length: hyper answers it.
        (true, None) => Head::Other,
    }
}

/// A `Content-Length` value: ASCII digits only, as HTTP defines it (Rust's `parse` would also
/// take `+5`, which hyper refuses: one server must not read one request two ways).
fn content_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

async fn serve_with_hyper<S: Socket>(prefix: Bytes, stream: S, peer: SocketAddr, shared: &Shared) {
    let root = shared.root.clone();
    let service = TowerToHyperService::new(shared.app.clone().map_request(move |mut req: http::Request<hyper::body::Incoming>| {
        super::root::strip(&mut req, &root);
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

    /// The size of the future an async function returns, without calling it.
    fn future_size<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_connection_task_holds_little_more_than_its_stream() {
        // Every idle subscriber is one of these futures, alive for hours: the request, the
        // router's future and the response must not be kept in it. In a debug build it was
        // 1,184 bytes when they were, 464 since; 496 with the write timeout (600 before its
        // state was made small).
        let size = future_size(serve::<tokio::net::TcpStream>);
        assert!(size <= 640, "conn::serve's future is {size} bytes: is something large awaited in it rather than boxed?");
    }

    fn kind(raw: &[u8]) -> &'static str {
        match parse_head(raw, 64, "") {
            Head::Subscribe { keep_alive: true, .. } => "subscribe",
            Head::Subscribe { keep_alive: false, .. } => "subscribe-close",
            Head::Publish { keep_alive: true, .. } => "publish",
            Head::Publish { keep_alive: false, .. } => "publish-close",
            Head::Partial => "partial",
            Head::Ambiguous => "ambiguous",
            Head::TooLarge => "too large",
            Head::Other => "other",
        }
    }

    #[test]
    fn http11_posts_under_sse_with_a_small_length_are_publishes() {
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"), "publish");
        assert_eq!(kind(b"POST /sse?channel=a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), "publish");
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"), "publish-close");
        // Everything else goes to hyper, which knows the rules.
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\n\r\n"), "other", "no length");
        assert_eq!(kind(b"POST /sse/a HTTP/1.0\r\nContent-Length: 5\r\n\r\n"), "other", "HTTP/1.0");
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"), "other", "large");
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"), "other", "two lengths");
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\nContent-Length: x\r\n\r\n"), "other", "bad length");
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\nContent-Length: +5\r\n\r\n"), "other", "a sign is no digit");
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n"), "other", "two numbers");
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\nContent-Length:  5 \r\n\r\n"), "publish", "spaces around are allowed");
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"), "ambiguous");
        assert_eq!(kind(b"POST /publish HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), "ambiguous", "any path");
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), "other", "chunked");
        assert_eq!(kind(b"POST /sse/a HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"), "other", "expect");
        assert_eq!(kind(b"POST /stats HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), "other", "not under /sse");
        assert_eq!(kind(b"PUT /sse/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), "other", "another method");
    }

    #[test]
    fn the_end_of_a_head_is_found_however_it_is_split() {
        let head = b"GET /sse/a HTTP/1.1\r\nHost: x\r\n\r\nnext";
        let whole = head.len() - 4;
        assert_eq!(head_end(head, 0), Some(whole));
        // Byte by byte, each look starting where the previous one stopped.
        let found = (1..=head.len()).find_map(|n| head_end(&head[..n], n - 1));
        assert_eq!(found, Some(whole));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
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
        assert_eq!(kind(b"GET /stats HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(kind(b"GET /sse/a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"), "other");
        assert_eq!(kind(b"GET /sse/a HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"), "other");
        assert_eq!(kind(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "other");
        assert_eq!(kind(b"\x16\x03\x01garbage"), "other");
    }
}
