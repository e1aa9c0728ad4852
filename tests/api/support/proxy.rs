//! A TCP proxy in front of one address that a test can tell, while it runs,
//! to behave like a bad network: slow replies, a silent partition (sockets
//! open, no bytes either way), cut connections, refused connections.
//! Every task it starts ends when it is dropped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the network does now; every connection watches it.
#[derive(Debug, Clone, Copy, Default)]
struct Controls {
    /// Added to every server→client chunk: a slow database.
    reply_delay: Duration,
    /// Nothing is forwarded while set; what was read waits.
    stalled: bool,
    /// New connections are closed as soon as they are accepted.
    refusing: bool,
    /// Bumped by [`Proxy::cut`]: connections from an older epoch close.
    epoch: u64,
}

pub struct Proxy {
    addr: SocketAddr,
    /// The connection tasks end when this is dropped (their receivers
    /// see it closed).
    controls: watch::Sender<Controls>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (controls, watching) = watch::channel(Controls::default());
        let accepting = tokio::spawn(accept(listener, upstream, watching));
        Self {
            addr,
            controls,
            accepting,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of database `db` on the upstream PostgreSQL, reached through
    /// the proxy.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@{}/{db}", self.addr())
    }

    /// Delays every chunk the server sends by `delay` (zero: none). Chunks
    /// keep their order; the delay does not limit throughput.
    pub fn delay_replies(&self, delay: Duration) {
        self.controls.send_modify(|c| c.reply_delay = delay);
    }

    /// Stops forwarding in both directions, keeping every socket open.
    pub fn stall(&self) {
        self.controls.send_modify(|c| c.stalled = true);
    }

    /// Forwards again what a stall held back, and from then on.
    pub fn resume(&self) {
        self.controls.send_modify(|c| c.stalled = false);
    }

    /// Closes every open connection, abruptly (RST), both sides.
    pub fn cut(&self) {
        self.controls.send_modify(|c| c.epoch += 1);
    }

    /// While `refusing`, new connections are closed as soon as accepted.
    pub fn refuse(&self, refusing: bool) {
        self.controls.send_modify(|c| c.refusing = refusing);
    }

    /// No delay, no stall, no refusal.
    pub fn forward_normally(&self) {
        self.controls.send_modify(|c| {
            c.reply_delay = Duration::ZERO;
            c.stalled = false;
            c.refusing = false;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, controls: watch::Receiver<Controls>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of descriptors, say: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if controls.borrow().refusing {
            let _ = client.set_zero_linger();
            continue;
        }
        tokio::spawn(connection(client, upstream, controls.clone()));
    }
}

/// One client connection, until either side closes, it is cut, or the
/// proxy is dropped.
async fn connection(client: TcpStream, upstream: SocketAddr, controls: watch::Receiver<Controls>) {
    let epoch = controls.borrow().epoch;
    let mut watching = controls.clone();
    let cut = async move {
        // Err: the proxy is gone. Either way, this connection ends.
        let _ = watching.wait_for(|c| c.epoch != epoch).await;
    };
    let _ = client.set_nodelay(true);
    let _ = client.set_zero_linger();
    tokio::select! {
        _ = cut => {}
        _ = relay(client, upstream, controls) => {}
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, controls: watch::Receiver<Controls>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = server.set_zero_linger();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, controls.clone(), false),
        pump(server_read, client_write, controls, true),
    );
}

/// Copies one direction. A reader and a writer joined by a queue, so a
/// delay postpones each chunk without holding up the reading of the next.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    controls: watch::Receiver<Controls>,
    delayed: bool,
) {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let mut reading = controls.clone();
    let read = async move {
        let mut buf = vec![0; 16 * 1024];
        loop {
            flowing(&mut reading).await;
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = if delayed {
                reading.borrow().reply_delay
            } else {
                Duration::ZERO
            };
            if queue
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let mut writing = controls;
    let write = async move {
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            flowing(&mut writing).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The other side closed its end: pass the half-close on.
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// Waits while the proxy is stalled (returns at once if it is gone).
async fn flowing(controls: &mut watch::Receiver<Controls>) {
    let _ = controls.wait_for(|c| !c.stalled).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that echoes its first `n` connections, then ends.
    async fn echo(n: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..n {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Reads what is there, or `None` at the end of the stream (or reset).
    async fn read(socket: &mut TcpStream) -> Option<Vec<u8>> {
        let mut buf = [0; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf));
        match read.await.expect("an answer, not a hang") {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(buf[..n].to_vec()),
        }
    }

    #[tokio::test]
    async fn a_stall_holds_the_bytes_until_resumed() {
        let proxy = Proxy::start(echo(1).await).await;
        let mut socket = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.stall();

        socket.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        let silent = tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await;
        proxy.resume();

        assert!(silent.is_err(), "nothing passes while stalled");
        assert_eq!(read(&mut socket).await.as_deref(), Some(&b"ping"[..]));
    }

    #[tokio::test]
    async fn a_cut_closes_open_connections_and_dropping_the_proxy_closes_all() {
        let proxy = Proxy::start(echo(2).await).await;
        let mut first = TcpStream::connect(proxy.addr()).await.unwrap();
        first.write_all(b"1").await.unwrap();
        assert_eq!(read(&mut first).await.as_deref(), Some(&b"1"[..]));

        proxy.cut();
        assert_eq!(read(&mut first).await, None, "cut");

        let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
        second.write_all(b"2").await.unwrap();
        assert_eq!(
            read(&mut second).await.as_deref(),
            Some(&b"2"[..]),
            "new ones work"
        );
        drop(proxy);
        assert_eq!(read(&mut second).await, None, "the proxy is gone");
    }
}
