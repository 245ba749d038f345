//! The accept loop: each connection is handed to [`conn::serve`](super::conn), which serves
//! HTTP/1 subscriptions itself and everything else with hyper; plus graceful shutdown and the
//! hub's background upkeep.

use super::conn::{self, Shared};
use super::router;
use super::socket;
use super::tls::ServerTls;
use crate::hub::Hub;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most bytes hyper buffers per connection before it stops polling a stream's body: with it,
/// a subscriber that stops reading holds at most this much beyond the kernel's socket buffer.
const MAX_CONN_BUFFER: usize = 64 * 1024;

/// How often expired events and idle channels are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Serves `hub` on `listener` until `shutdown` resolves, then ends every stream, stops
/// accepting, and waits up to `shutdown_timeout` for connections to close.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    // A cluster node loads what the bus retains before it serves.
    crate::cluster::start(&hub).await.map_err(std::io::Error::other)?;
    let sources = crate::sources::start(&hub).map_err(std::io::Error::other)?;
    let debug_stop = CancellationToken::new();
    if let Some(addr) = hub.config().debug.addr() {
        let debug_listener = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("debug.listen {addr}: {e} (another herald on this machine? set debug.listen, or empty to turn it off)"),
            )
        })?;
        tracing::info!(on = %debug_listener.local_addr()?, "debug listener (/healthz, /readyz, /config, /metrics)");
        let stop = debug_stop.clone();
        tokio::spawn(super::debug::serve(debug_listener, hub.clone(), sources.clone(), async move { stop.cancelled().await }));
    }
    let limits = &hub.config().limits;
    let tls = ServerTls::from_config(&hub.config().tls, listener.local_addr()?).map_err(std::io::Error::other)?.map(Arc::new);
    let tls_watch = tls.as_ref().map(|tls| tokio::spawn(tls.clone().watch(hub.config().tls.watch_interval)));
    let mut hyper = auto::Builder::new(TokioExecutor::new());
    hyper
        .http1()
        .max_buf_size(MAX_CONN_BUFFER)
        .max_headers(limits.max_headers)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    hyper.http2().max_header_list_size(u32::try_from(limits.max_head_size.0).unwrap_or(u32::MAX)).timer(TokioTimer::new());
    let shared = Arc::new(Shared {
        app: router(hub.clone(), sources).map_err(std::io::Error::other)?,
        hyper,
        shutdown: CancellationToken::new(),
        body_read_timeout: limits.body_read_timeout,
        header_read_timeout: limits.header_read_timeout,
        max_head: limits.max_head_size.as_usize(),
        max_headers: limits.max_headers,
        write_timeout: super::event_stream::WriteTimeout::new(limits.write_timeout),
        root: hub.config().http_root_prefix().into(),
    });
    let tcp_keepalive = hub.config().tcp_keepalive;
    if hub.config().access.anonymous_publish == crate::config::access::AnonymousPublish::Anyone {
        tracing::warn!("access.anonymous_publish = \"anyone\": any address can publish to channels without publish rules");
    }
    let connections = TaskTracker::new();
    let sweeper = tokio::spawn({
        let hub = hub.clone();
        async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                hub.sweep();
            }
        }
    });
    let keepalive = (!hub.config().keepalive_interval.is_zero()).then(|| {
        let hub = hub.clone();
        tokio::spawn(async move {
            let every = hub.config().keepalive_interval;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                hub.keepalive_tick();
            }
        })
    });
    tokio::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    backoff.succeeded();
                    conn
                }
                Err(e) => {
                    // Out of file descriptors, most likely: wait longer each time (as nginx does)
                    // instead of spinning, and say so once rather than at every try.
                    let pause = backoff.failed(&e);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        socket::set_keepalive(&stream, tcp_keepalive);
        match &tls {
            None => connections.spawn(conn::serve(stream, peer, shared.clone())),
            Some(tls) => connections.spawn(serve_tls(stream, peer, tls.clone(), shared.clone())),
        };
    }
    drop(listener);
    if let Some(task) = tls_watch {
        task.abort();
    }
    tracing::info!("shutting down: ending streams");
    shared.shutdown.cancel();
    hub.close();
    sweeper.abort();
    if let Some(task) = keepalive {
        task.abort();
    }
    connections.close();
    tokio::select! {
        () = connections.wait() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(hub.shutdown_timeout()) => tracing::warn!("shutdown_timeout reached with connections still open"),
    }
    if let Err(e) = hub.store().flush().await {
        tracing::error!(error = %e, "could not make history durable at shutdown");
    }
    // Last: an orchestrator sees the node not ready (`/readyz` 503) while it drains.
    debug_stop.cancel();
    Ok(())
}

/// Completes the TLS handshake (within `limits.header_read_timeout`), then serves the
/// connection as any other: HTTP/1 on the fast paths, HTTP/2 (chosen by ALPN) with hyper.
async fn serve_tls(stream: tokio::net::TcpStream, peer: SocketAddr, tls: Arc<ServerTls>, shared: Arc<Shared>) {
    // Boxed: the handshake's state is large and not needed once it is done.
    let handshake = Box::pin(tls.acceptor.accept(stream));
    let stream = tokio::select! {
        done = tokio::time::timeout(shared.header_read_timeout, handshake) => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        () = shared.shutdown.cancelled() => return,
    };
    conn::serve(stream, peer, shared).await;
}

/// How long the accept loop pauses after failures: 10 ms, doubling to 1 s, with one warning per
/// run of failures and a count when it ends.
#[derive(Default)]
struct AcceptBackoff {
    failures: u64,
}

impl AcceptBackoff {
    fn failed(&mut self, error: &std::io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!(%error, "accept failed (file descriptors exhausted?): pausing accepts, up to 1s at a time");
        }
        self.failures += 1;
        Duration::from_millis(10u64 << (self.failures.min(8) - 1)).min(Duration::from_secs(1))
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting connections again");
            self.failures = 0;
        }
    }
}

/// Binds the configured address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_pause_longer_each_time_up_to_a_second() {
        let mut backoff = AcceptBackoff::default();
        let e = std::io::Error::other("too many open files");
        let pauses: Vec<u64> = (0..10).map(|_| backoff.failed(&e).as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(&e), Duration::from_millis(10));
    }
}
