//! The accept loop: hyper connections with buffers sized for event streams, graceful shutdown,
//! and the hub's background upkeep.

use super::router;
use crate::hub::Hub;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Most bytes hyper buffers per connection before it stops polling a stream's body: with it,
/// a subscriber that stops reading holds at most this much beyond the kernel's socket buffer.
const MAX_CONN_BUFFER: usize = 64 * 1024;

/// How often expired events and idle channels are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Serves `hub` on `listener` until `shutdown` resolves, then ends every stream, stops
/// accepting, and waits up to `shutdown_timeout` for connections to close.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let app = router(hub.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(MAX_CONN_BUFFER).timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
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
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // The peer address rides on each request (for later IP rules). A request mapping over the
        // shared router costs nothing per connection; `Router::layer` would rebuild every route.
        let service = TowerToHyperService::new(app.clone().map_request(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            req
        }));
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: ending streams");
    hub.close();
    sweeper.abort();
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(hub.shutdown_timeout()) => tracing::warn!("shutdown_timeout reached with connections still open"),
    }
    Ok(())
}

/// Binds the configured address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
