//! A TCP front for the mock WeCom: the gateway's `api_base` points here, and the test
//! decides whether WeCom is reachable. While up it forwards every connection to the mock
//! byte for byte; while down it accepts each connection and resets it at once (as a dead
//! upstream behind a load balancer does), and counts them: the connection attempts WeCom
//! would have seen during the outage, `gettoken` included.
//!
//! Only the network edge is simulated; the gateway's client code runs unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Handle to a running front; dropping it stops accepting (open forwards end with it).
pub struct TcpFront {
    /// Use as `wecom.api_base`.
    pub base_url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    /// `true` while WeCom is "down".
    down: watch::Sender<bool>,
    /// Where connections are forwarded while up (set before or after start).
    upstream: std::sync::Mutex<Option<SocketAddr>>,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl Drop for TcpFront {
    fn drop(&mut self) {
        self.task.abort();
        // Cuts the forwards that are still open.
        self.shared.down.send_replace(true);
    }
}

impl TcpFront {
    /// A front that forwards to `upstream` (a base URL such as the mock's), or to nothing
    /// yet (`None`: set it with [`Self::forward_to`] before the first connection).
    pub async fn start(upstream: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TCP front");
        let addr = listener.local_addr().expect("front address");
        let (down, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            down,
            upstream: std::sync::Mutex::new(upstream.map(socket_addr)),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Self {
            base_url: format!("http://{addr}"),
            shared,
            task,
        }
    }

    /// Forward to `base_url` (e.g. `MockWeCom::base_url`) from now on.
    pub fn forward_to(&self, base_url: &str) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(socket_addr(base_url));
    }

    /// WeCom goes away: open forwards are cut (reset), new connections are accepted and
    /// reset at once, and counted.
    pub fn go_down(&self) {
        self.shared.down.send_replace(true);
    }

    /// WeCom is back: connections are forwarded again.
    pub fn come_up(&self) {
        self.shared.down.send_replace(false);
    }

    /// Connections accepted so far, up or down.
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted (and reset) while down.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

fn socket_addr(base_url: &str) -> SocketAddr {
    let host = base_url.trim_start_matches("http://").trim_end_matches('/');
    host.parse()
        .unwrap_or_else(|e| panic!("front upstream {base_url:?} is not http://IP:PORT: {e}"))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if *shared.down.borrow() {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            reset(stream);
            continue;
        }
        let upstream = *shared.upstream.lock().unwrap_or_else(|e| e.into_inner());
        let mut down = shared.down.subscribe();
        tokio::spawn(async move {
            let Some(upstream) = upstream else {
                reset(stream);
                return;
            };
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                reset(stream);
                return;
            };
            let mut client = stream;
            let went_down = tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                _ = down.wait_for(|down| *down) => true,
            };
            if went_down {
                reset(client);
            }
        });
    }
}

/// Closes with RST rather than FIN: the peer sees "connection reset".
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
