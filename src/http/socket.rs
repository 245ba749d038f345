//! What a client connection is carried on: a TCP socket, or TLS over one. The HTTP/1 fast
//! paths (subscriptions streamed straight onto the socket, small publishes answered in place)
//! work on either.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether the client has closed its side. An event stream has nothing more to read, so
    /// whatever arrives (a careless client's pipelined bytes) is read and dropped; a stack
    /// buffer is enough for that, so an idle connection holds no read buffer of its own.
    fn poll_peer_closed(&mut self, cx: &mut Context<'_>) -> bool;
}

/// Reads per wake-up given to a client that keeps sending on an event stream.
const DRAIN_READS: usize = 16;

impl Socket for TcpStream {
    fn poll_peer_closed(&mut self, cx: &mut Context<'_>) -> bool {
        for _ in 0..DRAIN_READS {
            match self.poll_read_ready(cx) {
                Poll::Pending => return false,
                Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(())) => {}
            }
            let mut sink = [0u8; 512];
            match self.try_read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return true,
            }
        }
        cx.waker().wake_by_ref();
        false
    }
}

impl Socket for TlsStream<TcpStream> {
    fn poll_peer_closed(&mut self, cx: &mut Context<'_>) -> bool {
        // Through the TLS layer: a close_notify, or the TCP connection closing, is the end.
        for _ in 0..DRAIN_READS {
            let mut sink = [0u8; 512];
            let mut buf = ReadBuf::new(&mut sink);
            match Pin::new(&mut *self).poll_read(cx, &mut buf) {
                Poll::Pending => return false,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return true,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return true,
            }
        }
        cx.waker().wake_by_ref();
        false
    }
}

/// TCP keep-alive on an accepted socket: probes after `idle` without traffic, then every 10 s,
/// and the connection is given up after 3 unanswered probes. `idle` zero: left off.
pub fn set_keepalive(stream: &TcpStream, idle: Duration) {
    if idle.is_zero() {
        return;
    }
    let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(Duration::from_secs(10));
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "freebsd"))]
    let keepalive = keepalive.with_retries(3);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not set TCP keep-alive");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_is_set_on_accepted_sockets_when_asked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let sock = socket2::SockRef::from(&accepted);
        set_keepalive(&accepted, Duration::ZERO);
        assert!(!sock.keepalive().unwrap());
        set_keepalive(&accepted, Duration::from_secs(45));
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(45));
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
    }
}
