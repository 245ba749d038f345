//! The accept loop: each connection is handed to [`conn::serve`](super::conn), which serves
//! HTTP/1 subscriptions itself and everything else with hyper; plus graceful shutdown and the
//! hub's background upkeep.

use super::conn::{self, HEADER_READ_TIMEOUT, Shared};
use super::router;
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
    let mut hyper = auto::Builder::new(TokioExecutor::new());
    hyper.http1().max_buf_size(MAX_CONN_BUFFER).timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let shared = Arc::new(Shared {
        app: router(hub.clone(), sources).map_err(std::io::Error::other)?,
        hyper,
        shutdown: CancellationToken::new(),
        body_read_timeout: hub.config().limits.body_read_timeout,
    });
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
        connections.spawn(conn::serve(stream, peer, shared.clone()));
    }
    drop(listener);
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
