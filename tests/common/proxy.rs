//! A TCP proxy on 127.0.0.1 in front of the broker, for cutting a client's connection
//! without stopping the broker: it forwards bytes both ways, `cut` closes both sockets of
//! every live connection and turns new ones away until `restore`, while the listener stays
//! up so the client can reconnect through it.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running proxy; its tasks (and every connection through it) end when it is dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

struct Shared {
    down: AtomicBool,
    accepted: AtomicUsize,
    /// One task per forwarded connection; it owns both sockets.
    live: Mutex<Vec<JoinHandle<()>>>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            down: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            live: Mutex::new(Vec::new()),
        });
        let state = Arc::clone(&shared);
        let acceptor = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if state.down.load(Ordering::SeqCst) {
                    continue; // dropped at once: the client sees its connection fail
                }
                state.accepted.fetch_add(1, Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let mut live = state.live.lock().expect("proxy lock");
                live.retain(|t| !t.is_finished());
                live.push(task);
            }
        });
        Proxy {
            addr,
            shared,
            acceptor,
        }
    }

    /// `http://ADDR` of the proxy.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes both sockets of every live connection and refuses new ones until
    /// [`Proxy::restore`]. Returns how many connections were cut.
    pub async fn cut(&self) -> usize {
        self.shared.down.store(true, Ordering::SeqCst);
        let live: Vec<_> = std::mem::take(&mut *self.shared.live.lock().expect("proxy lock"));
        let mut cut = 0;
        for task in live {
            if !task.is_finished() {
                cut += 1;
            }
            task.abort();
            // Awaited so that the sockets are closed when this returns.
            let _ = task.await;
        }
        cut
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for task in self.shared.live.lock().expect("proxy lock").drain(..) {
            task.abort();
        }
    }
}
