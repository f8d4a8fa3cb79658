//! The coordinator's gRPC server: API services, health and reflection, every request
//! through the authorisation layer, over TLS unless `--insecure`.

use std::{sync::Arc, time::Duration};

use sluice_proto::{
    pb::{
        agent_registry_server::AgentRegistryServer, auth_service_server::AuthServiceServer,
        cluster_service_server::ClusterServiceServer, job_service_server::JobServiceServer,
    },
    security::{
        layer::AuthLayer,
        tls::{HANDSHAKE_TIMEOUT, NodeTls, tls_incoming},
    },
    telemetry,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::Router};
use tower::layer::util::{Identity, Stack};

use crate::{
    api::{AuthApi, ClusterApi, JobApi, RegistryApi},
    auth::Authenticator,
    error::{Error, Result},
};

const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
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
    /// Authenticates every call.
    pub(crate) authenticator: Arc<Authenticator>,
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
        Some(tls) => {
            let incoming = tls_incoming(listener, tls, HANDSHAKE_TIMEOUT);
            graceful(router.serve_with_incoming_shutdown(incoming, stopping), shutdown).await
        }
        None => {
            let incoming = TcpListenerStream::new(listener);
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

/// The API services with health and reflection, behind the authorisation layer.
async fn router(services: Services) -> Result<Router<Stack<AuthLayer<Authenticator>, Identity>>> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<JobServiceServer<JobApi>>().await;
    health_reporter.set_serving::<ClusterServiceServer<ClusterApi>>().await;
    health_reporter.set_serving::<AgentRegistryServer<RegistryApi>>().await;
    health_reporter.set_serving::<AuthServiceServer<AuthApi>>().await;
    let reflection =
        sluice_proto::reflection::v1().map_err(|e| Error::Reflection(e.to_string()))?;
    let reflection_alpha =
        sluice_proto::reflection::v1alpha().map_err(|e| Error::Reflection(e.to_string()))?;
    let jobs = JobServiceServer::from_arc(services.jobs)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok(Server::builder()
        .trace_fn(telemetry::server_span)
        .layer(AuthLayer::new(services.authenticator))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(jobs)
        .add_service(ClusterServiceServer::from_arc(services.cluster))
        .add_service(AgentRegistryServer::new(services.registry))
        .add_service(AuthServiceServer::new(services.auth)))
}
