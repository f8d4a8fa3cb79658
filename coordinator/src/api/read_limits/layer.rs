//! The gRPC server's side of the large-read caps: a tower layer inside the auth layer (so the
//! caller's principal is known), which holds each large read's turn until its answer is sent.

use std::{
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use http::{Request, Response};
use sluice_proto::security::access::Principal;
use tonic::{
    Status,
    body::Body,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

use super::{Closer, HeldBody, LARGE_READS, ReadLimits};

/// Applies [`ReadLimits`] to the gRPC methods in [`LARGE_READS`].
#[derive(Clone)]
pub(crate) struct ReadLimitLayer(pub(crate) ReadLimits);

impl<S> Layer<S> for ReadLimitLayer {
    type Service = ReadLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadLimited { inner, limits: self.0.clone() }
    }
}

/// The layer's service around the server.
#[derive(Clone)]
pub(crate) struct ReadLimited<S> {
    inner: S,
    limits: ReadLimits,
}

impl<S> Service<Request<Body>> for ReadLimited<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // Call the instance that was polled ready; leave a fresh clone in its place.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        if !LARGE_READS.contains(&request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let limits = self.limits.clone();
        Box::pin(async move {
            let principal = request.extensions().get::<Principal>();
            let admitted = limits.admit(principal, peer(&request)).await;
            // Ends the connection should the answer stall (`held.rs`).
            let closer = request.extensions().get::<Closer>().cloned();
            match admitted {
                Ok(turn) => {
                    let response = inner.call(request).await?;
                    Ok(response.map(|body| Body::new(HeldBody::new(body, turn, closer))))
                }
                // A trailers-only gRPC answer; the handler never runs.
                Err(error) => Ok(Status::from(error).into_http()),
            }
        })
    }
}

/// The caller's address, over TLS or not.
fn peer(request: &Request<Body>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    let tls = extensions.get::<TlsConnectInfo<TcpConnectInfo>>().map(|info| info.get_ref());
    tls.or_else(|| extensions.get::<TcpConnectInfo>()).and_then(TcpConnectInfo::remote_addr)
}
