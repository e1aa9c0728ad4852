//! The connections the server accepts, as h2 should see them.
//!
//! h2 writes a frame's payload of 256 bytes or more (1,024 when the
//! connection does not take vectored writes) as a buffer of its own beside
//! its write buffer, and flushes before it queues anything after it. A
//! unary reply is HEADERS, one DATA frame and the trailers; ours are 0.3 to
//! 1 KiB, so with vectored writes each went out as two writes and two TCP
//! segments: HEADERS and DATA, then the 10 bytes of trailers. Told that
//! vectored writes are not available, h2 copies
//! such a reply into its buffer and sends it whole with one write
//! (docs/performance.md, "A reply in one write").

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted TCP connection whose writes are never vectored.
#[derive(Debug)]
pub struct OneWrite(pub TcpStream);

impl AsyncRead for OneWrite {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for OneWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    // `is_write_vectored` and `poll_write_vectored` keep their defaults:
    // not vectored, which is the point.
}

impl Connected for OneWrite {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn it_reads_and_writes_through_and_is_not_vectored() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut conn = OneWrite(listener.accept().await.unwrap().0);
        assert!(!conn.is_write_vectored());

        conn.write_all(b"reply").await.unwrap();
        let mut got = [0; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"reply");

        client.write_all(b"call").await.unwrap();
        let mut got = [0; 4];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"call");
        assert_eq!(
            conn.connect_info().remote_addr(),
            Some(client.local_addr().unwrap())
        );
    }
}
