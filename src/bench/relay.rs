//! A TCP relay between the service and PostgreSQL that counts round trips:
//! every `Sync` (the end of an extended-protocol exchange, which is how
//! sqlx sends each statement) and every simple `Query` (how it sends
//! `BEGIN` and `COMMIT`) the service sends is one wait for the server.
//! Only for `bench --count-round-trips`: it reads the protocol, so the
//! sessions through it must not use TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Relay {
    port: u16,
    round_trips: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl Relay {
    /// Listens on a free local port and relays each connection to
    /// `host:port`.
    pub async fn start(host: &str, port: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("Failed to bind the round-trip relay")?;
        let local = listener.local_addr()?.port();
        let round_trips = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let upstream = format!("{host}:{port}");
        let counter = round_trips.clone();
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let upstream = upstream.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(client, &upstream, counter).await {
                        tracing::debug!(error = %e, "bench relay connection ended");
                    }
                });
            }
        });
        Ok(Self {
            port: local,
            round_trips,
            connections,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Round trips counted so far, over every connection.
    pub fn round_trips(&self) -> Arc<AtomicU64> {
        self.round_trips.clone()
    }

    /// Connections opened through the relay so far: a pool that keeps its
    /// connections opens none while it runs.
    pub fn connections(&self) -> Arc<AtomicU64> {
        self.connections.clone()
    }
}

async fn relay(client: TcpStream, upstream: &str, counter: Arc<AtomicU64>) -> anyhow::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let back = tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
    let mut frontend = Frontend::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from_client.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let trips = frontend.feed(&buf[..n]);
        counter.fetch_add(trips, Ordering::Relaxed);
        to_server.write_all(&buf[..n]).await?;
    }
    back.abort();
    Ok(())
}

/// The frontend (client → server) message stream, split into messages as
/// bytes arrive: first untyped start-up messages (length, code), then
/// typed ones (type byte, length).
#[derive(Debug, Default)]
struct Frontend {
    started: bool,
    header: Vec<u8>,
    /// Bytes of the current message's body still to pass.
    skip: usize,
}

/// The start-up codes that ask for encryption; another start-up message
/// follows them.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

impl Frontend {
    /// Takes the next bytes; returns the round trips they complete.
    fn feed(&mut self, mut bytes: &[u8]) -> u64 {
        let mut trips = 0;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let k = self.skip.min(bytes.len());
                self.skip -= k;
                bytes = &bytes[k..];
                continue;
            }
            let want = if self.started { 5 } else { 8 };
            let k = (want - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..k]);
            bytes = &bytes[k..];
            if self.header.len() < want {
                break;
            }
            let h = &self.header;
            if self.started {
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                if matches!(h[0], b'S' | b'Q') {
                    trips += 1;
                }
                self.skip = len.saturating_sub(4);
            } else {
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let code = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                self.started = !matches!(code, SSL_REQUEST | GSSENC_REQUEST);
                self.skip = len.saturating_sub(8);
            }
            self.header.clear();
        }
        trips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// A start-up, then a statement as sqlx sends it (Parse, Bind,
    /// Describe, Execute, Sync), then `BEGIN` as a simple query.
    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        let params = b"user\0postgres\0\0";
        s.extend_from_slice(&(8 + params.len() as u32).to_be_bytes());
        s.extend_from_slice(&196_608u32.to_be_bytes());
        s.extend_from_slice(params);
        s.extend(message(b'P', b"\0SELECT 1\0\0\0"));
        s.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        s.extend(message(b'D', b"P\0"));
        s.extend(message(b'E', b"\0\0\0\0\0"));
        s.extend(message(b'S', b""));
        s.extend(message(b'Q', b"BEGIN\0"));
        s
    }

    #[test]
    fn counts_syncs_and_simple_queries_however_the_bytes_arrive() {
        let bytes = stream();
        for chunk in [1, 2, 3, 7, bytes.len()] {
            let mut f = Frontend::default();
            let trips: u64 = bytes.chunks(chunk).map(|c| f.feed(c)).sum();
            assert_eq!(trips, 2, "in chunks of {chunk}");
        }
    }

    #[test]
    fn a_refused_ssl_request_is_followed_by_the_real_start_up() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&8u32.to_be_bytes());
        bytes.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        bytes.extend(stream());
        assert_eq!(Frontend::default().feed(&bytes), 2);
    }
}

#[cfg(test)]
mod live {
    use sqlx::Connection;
    use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

    use super::*;

    /// Through a relay to the test server (`DATABASE_URL`), a statement is
    /// one round trip. Skipped without a server.
    #[tokio::test]
    async fn a_statement_through_the_relay_is_one_round_trip() {
        let Ok(url) = std::env::var("DATABASE_URL") else {
            return;
        };
        let options: PgConnectOptions = url.parse().unwrap();
        let relay = Relay::start(options.get_host(), options.get_port())
            .await
            .unwrap();
        let through = options
            .host("127.0.0.1")
            .port(relay.port())
            .ssl_mode(PgSslMode::Disable);
        let mut conn = PgConnection::connect_with(&through).await.unwrap();
        let before = relay.round_trips().load(Ordering::Relaxed);
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(one, 1);
        let after = relay.round_trips().load(Ordering::Relaxed);
        // A new statement is prepared first (Parse, Describe, Sync), then run.
        assert_eq!(after - before, 2);
    }
}
