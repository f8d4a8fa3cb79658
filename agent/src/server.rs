//! The agent's gRPC server: `AgentService`, health and reflection, every request through the
//! authorisation layer (only coordinator certificates), over TLS unless `--insecure`.

use std::{sync::Arc, time::Duration};

use sluice_proto::{
    pb::agent_service_server::AgentServiceServer,
    security::{
        layer::{AuthLayer, ByCertificate},
        tls::{HANDSHAKE_TIMEOUT, NodeTls, tcp_incoming, tls_incoming},
    },
    telemetry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::warn;

use crate::error::AgentError;
use crate::service::AgentApi;

/// How long open calls get to finish once the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves until `stop` (over TLS with `tls`, else plaintext), then gives open calls a
/// bounded grace period.
pub(crate) async fn serve(
    api: AgentApi,
    listener: TcpListener,
    tls: Option<Arc<NodeTls>>,
    stop: CancellationToken,
) -> Result<(), AgentError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AgentServiceServer<AgentApi>>().await;
    let served = [sluice_proto::pb::agent_service_server::SERVICE_NAME];
    let reflection = sluice_proto::reflection::v1(&served)
        .map_err(|e| AgentError::Config(format!("reflection service: {e}")))?;
    let reflection_alpha = sluice_proto::reflection::v1alpha(&served)
        .map_err(|e| AgentError::Config(format!("reflection service: {e}")))?;
    let auth = ByCertificate::new(tls.is_none());
    let (ping_every, ping_timeout) = sluice_proto::KEEPALIVE;
    let router = Server::builder()
        .http2_keepalive_interval(Some(ping_every))
        .http2_keepalive_timeout(Some(ping_timeout))
        .trace_fn(telemetry::server_span)
        .layer(AuthLayer::new(Arc::new(auth)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(AgentServiceServer::new(api));
    let stopping = stop.clone().cancelled_owned();
    match tls {
        Some(tls) => {
            let incoming = tls_incoming(listener, tls, HANDSHAKE_TIMEOUT);
            graceful(router.serve_with_incoming_shutdown(incoming, stopping), stop).await
        }
        None => {
            let incoming = tcp_incoming(listener, HANDSHAKE_TIMEOUT);
            graceful(router.serve_with_incoming_shutdown(incoming, stopping), stop).await
        }
    }
}

/// Runs `server`; once `stop` is cancelled, waits at most the grace period for it.
async fn graceful(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    stop: CancellationToken,
) -> Result<(), AgentError> {
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(AgentError::from),
        () = stop.cancelled() => {}
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result.map_err(AgentError::from),
        Err(_) => {
            warn!("open calls did not finish within the shutdown grace period");
            Ok(())
        }
    }
}
