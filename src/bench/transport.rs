//! How the bench reaches a server: plain TCP, or TLS over it for `https://` URLs (the server's
//! certificate is not checked), and HTTP/2 streams over either for `--http2`.

use super::target::UrlTemplate;
use super::wire;
use anyhow::{Context, bail};
use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// One connection to the server.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a TLS connection offers by ALPN.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    Http2,
}

/// Opens connection number `i` to the server `url` names, with a TLS handshake when it is
/// `https://`.
pub async fn open(url: &UrlTemplate, i: usize, alpn: Alpn) -> anyhow::Result<Conn> {
    let tcp = wire::connect(url.addr, i).await.with_context(|| format!("connect to {}", url.addr))?;
    if !url.tls {
        return Ok(Conn::Plain(tcp));
    }
    let name = rustls_pki_types::ServerName::IpAddress(url.addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(client_config(alpn)?).connect(name, tcp).await.context("TLS handshake")?;
    Ok(Conn::Tls(Box::new(tls)))
}

thread_local! {
    /// One client configuration per ALPN offer, made once (the bench is one thread).
    static CONFIGS: std::cell::RefCell<[Option<Arc<rustls::ClientConfig>>; 2]> = const { std::cell::RefCell::new([None, None]) };
}

fn client_config(alpn: Alpn) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let slot = alpn as usize;
    if let Some(config) = CONFIGS.with(|c| c.borrow()[slot].clone()) {
        return Ok(config);
    }
    let tls = crate::tls::ClientTls { insecure: true, ..Default::default() };
    let mut config = tls.client_config("bench", &crate::tls::KeyNames::PLAIN)?;
    config.alpn_protocols = vec![match alpn {
        Alpn::Http1 => b"http/1.1".to_vec(),
        Alpn::Http2 => b"h2".to_vec(),
    }];
    let config = Arc::new(config);
    CONFIGS.with(|c| c.borrow_mut()[slot] = Some(config.clone()));
    Ok(config)
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An HTTP/2 connection that event streams are opened on.
#[derive(Clone)]
pub struct H2 {
    send: h2::client::SendRequest<Bytes>,
}

/// Window per stream and per connection: large, so that flow control never holds a stream
/// back and the run measures the server, not the windows.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 1 << 26;

impl H2 {
    /// Connection number `i`: h2 by ALPN over TLS, prior knowledge over plain TCP.
    pub async fn open(url: &UrlTemplate, i: usize) -> anyhow::Result<H2> {
        let conn = open(url, i, Alpn::Http2).await?;
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(conn)
            .await
            .context("HTTP/2 handshake")?;
        tokio::task::spawn_local(async move {
            let _ = connection.await;
        });
        Ok(H2 { send })
    }

    /// Opens an event stream on `path`; returns its body once the response head has come.
    pub async fn subscribe(&self, url: &UrlTemplate, path: &str) -> anyhow::Result<h2::RecvStream> {
        let uri = format!("{}://{}{path}", if url.tls { "https" } else { "http" }, url.host());
        let request = http::Request::get(uri).header("accept", "text/event-stream").body(())?;
        let mut send = self.send.clone().ready().await.context("HTTP/2 connection")?;
        let (response, _) = send.send_request(request, true).context("HTTP/2 request")?;
        let response = response.await.context("HTTP/2 response")?;
        if response.status() != 200 {
            bail!("subscribing over HTTP/2 answered {}", response.status());
        }
        Ok(response.into_body())
    }
}

/// The next data of an HTTP/2 stream (its flow-control window given back at once); `None`
/// at its end.
pub async fn next_data(body: &mut h2::RecvStream) -> anyhow::Result<Option<Bytes>> {
    match body.data().await {
        None => Ok(None),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(data)) => {
            let _ = body.flow_control().release_capacity(data.len());
            Ok(Some(data))
        }
    }
}
