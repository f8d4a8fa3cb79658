//! The coordinator's gRPC server: API services, health and reflection, every request
//! through the authorisation layer, over TLS unless `--insecure`.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{StreamExt, TryFutureExt};
use http::HeaderValue;
use sluice_proto::{
    pb::{
        self, agent_registry_server::AgentRegistryServer, auth_service_server::AuthServiceServer,
        cluster_service_server::ClusterServiceServer,
        coordinator_peer_server::CoordinatorPeerServer, job_service_server::JobServiceServer,
    },
    security::{
        layer::AuthLayer,
        tls::{HANDSHAKE_TIMEOUT, NodeTls, tcp_incoming, tls_incoming},
    },
    telemetry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    codegen::Service,
    server::NamedService,
    transport::{Server, server::Router},
};
use tower::{
    layer::util::{Identity, Stack},
    util::MapRequestLayer,
};

use crate::{
    api::{
        AuthApi, Closable, ClusterApi, JobApi, PeerApi, ReadLimitLayer, ReadLimits, RegistryApi,
        SharedWatches, unwrap_connection,
    },
    auth::Authenticator,
    error::{Error, Result},
};

/// Largest answer the JobService sends (a session of 100,000 items, several jobs).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest JobService request: one job at its limit and a margin for the request around it;
/// anything larger is refused with RESOURCE_EXHAUSTED before it is decoded.
const MAX_REQUEST_BYTES: usize = sluice_proto::job::MAX_JOB_BYTES + 64 * 1024;
/// How long open streams get to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The services a coordinator serves (the HTTP API calls the same ones).
pub(crate) struct Services {
    /// `JobService`.
    pub(crate) jobs: Arc<JobApi>,
    /// `ClusterService`.
    pub(crate) cluster: Arc<ClusterApi>,
    /// `AgentRegistry`.
    pub(crate) registry: RegistryApi,
    /// `AuthService`.
    pub(crate) auth: AuthApi,
    /// `CoordinatorPeer`.
    pub(crate) peer: PeerApi,
    /// Authenticates every call.
    pub(crate) authenticator: Arc<Authenticator>,
    /// Caps the large reads (shared with the HTTP API).
    pub(crate) reads: ReadLimits,
}

/// Serves until `shutdown` (over TLS with `tls`, else plaintext), then gives open calls a
/// bounded grace period.
pub(crate) async fn serve(
    services: Services,
    listener: TcpListener,
    tls: Option<Arc<NodeTls>>,
    shutdown: CancellationToken,
) -> Result<()> {
    let router = router(services).await?;
    let stopping = shutdown.clone().cancelled_owned();
    match tls {
        // Each connection closable by its calls: a large read its client stalls ends it.
        Some(tls) => {
            let incoming = tls_incoming(listener, tls, HANDSHAKE_TIMEOUT);
            let incoming = incoming.map(|io| io.map(Closable::new));
            graceful(router.serve_with_incoming_shutdown(incoming, stopping), shutdown).await
        }
        None => {
            let incoming = tcp_incoming(listener, HANDSHAKE_TIMEOUT);
            let incoming = incoming.map(|io| io.map(Closable::new));
            graceful(router.serve_with_incoming_shutdown(incoming, stopping), shutdown).await
        }
    }
}

/// Runs `server`; once `shutdown` is cancelled, waits at most the grace period for it.
async fn graceful(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: CancellationToken,
) -> Result<()> {
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return Ok(result?),
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!("open calls did not finish within the shutdown grace period");
            Ok(())
        }
    }
}

/// The `sluice.v1` services a coordinator serves (reflection lists these).
const SERVED: [&str; 5] = [
    pb::job_service_server::SERVICE_NAME,
    pb::cluster_service_server::SERVICE_NAME,
    pb::agent_registry_server::SERVICE_NAME,
    pb::auth_service_server::SERVICE_NAME,
    pb::coordinator_peer_server::SERVICE_NAME,
];

/// The layers around every call: the connection's info and closer as extensions, then
/// authorisation, then the large-read caps (which need the caller's principal).
type Layers = Stack<
    ReadLimitLayer,
    Stack<AuthLayer<Authenticator>, Stack<MapRequestLayer<Unwrap>, Identity>>,
>;
type Unwrap = fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body>;

/// The API services with health and reflection, behind the authorisation layer.
async fn router(services: Services) -> Result<Router<Layers>> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<JobServiceServer<JobApi>>().await;
    health_reporter.set_serving::<ClusterServiceServer<ClusterApi>>().await;
    health_reporter.set_serving::<AgentRegistryServer<RegistryApi>>().await;
    health_reporter.set_serving::<AuthServiceServer<AuthApi>>().await;
    health_reporter.set_serving::<CoordinatorPeerServer<PeerApi>>().await;
    let reflection =
        sluice_proto::reflection::v1(&SERVED).map_err(|e| Error::Reflection(e.to_string()))?;
    let reflection_alpha =
        sluice_proto::reflection::v1alpha(&SERVED).map_err(|e| Error::Reflection(e.to_string()))?;
    // The generated JobService, but WatchSession sends each event's shared encoding.
    let jobs = TooLarge(SharedWatches::new(services.jobs, MAX_REQUEST_BYTES, MAX_MESSAGE_BYTES));
    let (ping_every, ping_timeout) = sluice_proto::KEEPALIVE;
    Ok(Server::builder()
        .http2_keepalive_interval(Some(ping_every))
        .http2_keepalive_timeout(Some(ping_timeout))
        .trace_fn(telemetry::server_span)
        .layer(MapRequestLayer::new(unwrap_connection as Unwrap))
        .layer(AuthLayer::new(services.authenticator))
        .layer(ReadLimitLayer(services.reads))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(jobs)
        .add_service(TooLarge(ClusterServiceServer::from_arc(services.cluster)))
        .add_service(TooLarge(AgentRegistryServer::new(services.registry)))
        .add_service(TooLarge(AuthServiceServer::new(services.auth)))
        .add_service(TooLarge(CoordinatorPeerServer::new(services.peer))))
}

/// A service whose OUT_OF_RANGE answers say RESOURCE_EXHAUSTED, the code of every size limit
/// here. tonic refuses a request over the decoding limit (from its length prefix, before
/// reading it) with OUT_OF_RANGE; nothing else the coordinator's services answer has that
/// code (an agent's is mapped in `error.rs`).
#[derive(Clone)]
struct TooLarge<S>(S);

impl<S: NamedService> NamedService for TooLarge<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for TooLarge<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, fn(http::Response<R>) -> http::Response<R>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.0.call(request).map_ok(resource_exhausted)
    }
}

fn resource_exhausted<R>(mut response: http::Response<R>) -> http::Response<R> {
    let out_of_range = HeaderValue::from(Code::OutOfRange as i32);
    if response.headers().get(GRPC_STATUS) == Some(&out_of_range) {
        response
            .headers_mut()
            .insert(GRPC_STATUS, HeaderValue::from(Code::ResourceExhausted as i32));
    }
    response
}

const GRPC_STATUS: &str = "grpc-status";
