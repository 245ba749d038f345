//! A TCP relay between a node and its bus, which a test can cut and restore: the node's
//! connections drop and new ones are refused, as when a network link fails, while the bus
//! itself stays up for everyone else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    links: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Relays 127.0.0.1:`port` (an ephemeral port) to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        Self::start_with_delay(upstream, Duration::ZERO).await
    }

    /// Like [`start`](Self::start), holding back what `upstream` answers by `delay` (a slow
    /// link, or a node that reads its bus late).
    pub async fn start_with_delay(upstream: SocketAddr, delay: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let links = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (open2, links2) = (open.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open2.load(Ordering::Acquire) {
                    // Refused: closed at once.
                    continue;
                }
                let link = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    if delay.is_zero() {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    let up = tokio::io::copy(&mut in_read, &mut out_write);
                    let down = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match out_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            tokio::time::sleep(delay).await;
                            if in_write.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        () = down => {}
                    }
                });
                links2.lock().push(link);
            }
        });
        Proxy { port, open, links, accept }
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        for link in self.links.lock().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
