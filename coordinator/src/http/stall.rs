//! A connection's IO whose writes may not wait on the client for long. hyper's HTTP/1 server
//! has no write timeout: a client that asks for a large answer (or an event stream) and stops
//! reading left hyper waiting to write for as long as the TCP connection lived, and the answer
//! kept its caller's large-read place (`api/read_limits/held.rs`) and its memory. Once a write
//! or flush has waited longer than the limit, the IO fails with `TimedOut`: hyper ends the
//! connection and drops the answer's body, which gives the place back.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Sleep, sleep},
};

/// `io`, whose writes fail once one has been pending for `limit`.
pub(super) struct StallGuard<T> {
    io: T,
    limit: Duration,
    /// Runs from the first write (or flush, or shutdown) found pending; gone once one goes on.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> StallGuard<T> {
    pub(super) fn new(io: T, limit: Duration) -> Self {
        StallGuard { io, limit, stalled: None }
    }

    /// What a write answered, unless it has been pending past the limit.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(sleep(limit)));
        ready!(stalled.as_mut().poll(cx));
        let message = format!("the client took no data for {limit:?}");
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    /// Paused time: the runtime, idle while the write waits, skips to the limit.
    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_fails_after_the_limit() {
        let (near, _far) = duplex(16);
        let mut guarded = StallGuard::new(near, LIMIT);
        let started = tokio::time::Instant::now();
        let error = guarded.write_all(&[7; 64]).await.expect_err("the peer reads nothing");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= LIMIT, "not before the limit: {:?}", started.elapsed());
    }

    /// A peer that takes a little now and then, each time within the limit, is waited for.
    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_not_a_stalled_one() {
        let (near, mut far) = duplex(16);
        let mut guarded = StallGuard::new(near, LIMIT);
        let reader = tokio::spawn(async move {
            let mut read = Vec::new();
            let mut byte = [0; 1];
            while far.read(&mut byte).await.expect("read") == 1 {
                read.push(byte[0]);
                tokio::time::sleep(LIMIT / 2).await;
            }
            read
        });
        guarded.write_all(&[7; 64]).await.expect("written, slowly");
        guarded.flush().await.expect("flushed");
        drop(guarded);
        assert_eq!(reader.await.expect("the reader"), vec![7; 64]);
    }
}
