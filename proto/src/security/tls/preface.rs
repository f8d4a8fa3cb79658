//! A gRPC connection must send HTTP/2's connection preface within a deadline. HTTP/2's
//! keepalive pings begin only once the preface is in, so without one a client that opens
//! a connection (and, over TLS, finishes the handshake) and then sends nothing would hold
//! it, and a socket, for as long as it liked.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Sleep, sleep};
use tonic::transport::server::Connected;

/// Bytes of the client's connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
const PREFACE_LEN: usize = 24;

/// `S`, whose reads fail with `TimedOut` if its first [`PREFACE_LEN`] bytes have not come
/// within the deadline. Its connect info is `S`'s (so handlers still see a TLS peer's
/// certificates).
#[derive(Debug)]
pub struct PrefaceDeadline<S> {
    inner: S,
    /// Until the preface is in.
    deadline: Option<Pin<Box<Sleep>>>,
    read: usize,
}

impl<S> PrefaceDeadline<S> {
    /// `inner`, whose preface must come within `within` from now.
    pub fn new(inner: S, within: Duration) -> Self {
        Self { inner, deadline: Some(Box::pin(sleep(within))), read: 0 }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.read += buf.filled().len() - before;
                if this.read >= PREFACE_LEN {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            // Only a read that must wait is late: bytes already here are taken first.
            Poll::Pending => {
                let late = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if late {
                    let late = io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface in time");
                    return Poll::Ready(Err(late));
                }
                Poll::Pending
            }
            failed => failed,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for PrefaceDeadline<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    const WITHIN: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn reads_fail_once_the_deadline_passes_before_the_preface_is_in() {
        let (mut client, server) = duplex(1024);
        let mut server = PrefaceDeadline::new(server, WITHIN);
        client.write_all(&[b'P'; PREFACE_LEN - 1]).await.expect("write");
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.expect("in time"), PREFACE_LEN - 1);
        let late = server.read(&mut buf).await.expect_err("the last byte never comes");
        assert_eq!(late.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn once_the_preface_is_in_the_connection_may_stay_quiet() {
        let (mut client, server) = duplex(1024);
        let mut server = PrefaceDeadline::new(server, WITHIN);
        client.write_all(&[b'P'; PREFACE_LEN]).await.expect("write");
        let mut buf = [0u8; 64];
        server.read_exact(&mut buf[..PREFACE_LEN]).await.expect("in time");
        tokio::time::advance(WITHIN * 2).await;
        client.write_all(b"later").await.expect("write");
        assert_eq!(server.read(&mut buf).await.expect("no deadline any more"), 5);
        server.write_all(b"answer").await.expect("writes pass through");
        assert_eq!(client.read(&mut buf).await.expect("read"), 6);
    }
}
