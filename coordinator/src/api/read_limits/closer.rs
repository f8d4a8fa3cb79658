//! A gRPC connection that its calls can end. An HTTP/2 stream whose client never opens its
//! flow-control window parks in hyper (waiting for send capacity) without polling the answer's
//! body again, and h2 keeps what it was handed: the answer's place was held until the whole
//! connection went. Only the connection can be ended from outside (hyper owns the stream), so
//! each accepted connection gets a [`Closer`], which tonic hands to every request of it
//! (`Connected::connect_info`, taken apart again by [`unwrap_connection`]), and whose
//! closing makes the connection's IO fail.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use http::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{
    body::Body,
    transport::server::{Connected, TcpConnectInfo, TlsConnectInfo},
};

/// Ends one connection (a request extension of each of its requests).
#[derive(Debug, Clone, Default)]
pub(crate) struct Closer(CancellationToken);

impl Closer {
    /// Its IO fails from now on, which ends the connection and every call on it.
    pub(crate) fn close(&self) {
        self.0.cancel();
    }
}

/// A connection `S` that its [`Closer`] can end.
pub(crate) struct Closable<S> {
    inner: S,
    closer: Closer,
    /// Wakes the connection's task when it is closed.
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> Closable<S> {
    pub(crate) fn new(inner: S) -> Self {
        let closer = Closer::default();
        let closed = Box::pin(closer.0.clone().cancelled_owned());
        Closable { inner, closer, closed }
    }

    /// `polled`, unless the connection was closed (before, or while it waits).
    fn unless_closed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let closed = match polled {
            Poll::Pending => self.closed.as_mut().poll(cx).is_ready(),
            _ => self.closer.0.is_cancelled(),
        };
        if closed {
            let message = "closed: a large read's client took none of its answer";
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, message)));
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Closable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.unless_closed(cx, polled)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Closable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.unless_closed(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.unless_closed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What tonic attaches to each request: the connection's own info and its closer.
#[derive(Clone)]
pub(crate) struct Closing<I> {
    info: I,
    closer: Closer,
}

impl<S: Connected> Connected for Closable<S> {
    type ConnectInfo = Closing<S::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        Closing { info: self.inner.connect_info(), closer: self.closer.clone() }
    }
}

/// Puts a request's connect info back as tonic would have attached it (the auth layer and
/// `Request::remote_addr` look it up by its type), and its [`Closer`] beside it.
pub(crate) fn unwrap_connection(mut request: Request<Body>) -> Request<Body> {
    let extensions = request.extensions_mut();
    if let Some(Closing { info, closer }) = extensions.remove::<Closing<TcpConnectInfo>>() {
        extensions.insert(info);
        extensions.insert(closer);
    } else if let Some(closing) = extensions.remove::<Closing<TlsConnectInfo<TcpConnectInfo>>>() {
        extensions.insert(closing.info);
        extensions.insert(closing.closer);
    }
    request
}
