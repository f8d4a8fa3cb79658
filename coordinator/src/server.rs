//! The coordinator's gRPC server: API services, health and reflection.

use std::time::Duration;

use sluice_proto::{
    pb::{
        agent_registry_server::AgentRegistryServer, cluster_service_server::ClusterServiceServer,
        job_service_server::JobServiceServer,
    },
    telemetry,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Server, server::Router};

use crate::{
    api::{ClusterApi, JobApi, RegistryApi},
    error::{Error, Result},
};

const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How long open streams get to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The services a coordinator serves.
pub(crate) struct Services {
    /// `JobService`.
    pub(crate) jobs: JobApi,
    /// `ClusterService`.
    pub(crate) cluster: ClusterApi,
    /// `AgentRegistry`.
    pub(crate) registry: RegistryApi,
}

/// Serves until `shutdown`, then gives open calls a bounded grace period.
pub(crate) async fn serve(
    services: Services,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let incoming = TcpListenerStream::new(listener);
    let stopping = shutdown.clone();
    let server =
        router(services).await?.serve_with_incoming_shutdown(incoming, stopping.cancelled_owned());
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

/// The API services with health and reflection.
async fn router(services: Services) -> Result<Router> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<JobServiceServer<JobApi>>().await;
    health_reporter.set_serving::<ClusterServiceServer<ClusterApi>>().await;
    health_reporter.set_serving::<AgentRegistryServer<RegistryApi>>().await;
    let reflection =
        sluice_proto::reflection::v1().map_err(|e| Error::Reflection(e.to_string()))?;
    let reflection_alpha =
        sluice_proto::reflection::v1alpha().map_err(|e| Error::Reflection(e.to_string()))?;
    let jobs = JobServiceServer::new(services.jobs)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok(Server::builder()
        .trace_fn(telemetry::server_span)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(jobs)
        .add_service(ClusterServiceServer::new(services.cluster))
        .add_service(AgentRegistryServer::new(services.registry)))
}
