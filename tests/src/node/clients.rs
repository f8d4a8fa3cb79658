//! The harness's gRPC clients of a node: channels, service clients, health and reflection.

use std::time::Duration;

use sluice_proto::pb::{
    agent_service_client::AgentServiceClient, cluster_service_client::ClusterServiceClient,
    job_service_client::JobServiceClient,
};
use sluice_proto::security::tls::DialTls;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use super::Node;
use crate::MAX_MESSAGE_BYTES;

/// Per-request timeout of the harness's gRPC channels (until response headers arrive).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Node {
    /// A new gRPC channel to the node, as the harness.
    pub async fn channel(&self) -> Channel {
        self.channel_with(self.harness_tls())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {} at {}: {e:#}", self.id, self.url()))
    }

    /// A new gRPC channel to the node with this TLS (plaintext to `http://` when `None`),
    /// e.g. to call it with another identity.
    pub async fn channel_with(&self, tls: Option<DialTls>) -> anyhow::Result<Channel> {
        let url = match &tls {
            Some(_) => format!("https://{}", self.addr()),
            None => format!("http://{}", self.addr()),
        };
        connect(&url, tls).await
    }

    /// `JobService` client (coordinators).
    pub async fn job_client(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// `ClusterService` client (coordinators).
    pub async fn cluster_client(&self) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// `AgentService` client (agents).
    pub async fn agent_client(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// `grpc.health.v1.Health` client.
    pub async fn health_client(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// The health status of `service` (`""` for the whole server).
    pub async fn health_status(&self, service: &str) -> anyhow::Result<ServingStatus> {
        let mut client = HealthClient::new(self.channel_with(self.harness_tls()).await?);
        let request = HealthCheckRequest { service: service.to_string() };
        let status = client.check(request).await?.into_inner().status;
        Ok(ServingStatus::try_from(status)?)
    }

    /// Names of the services the node lists through `grpc.reflection.v1` server reflection.
    pub async fn reflected_services(&self) -> anyhow::Result<Vec<String>> {
        match self.reflect(MessageRequest::ListServices(String::new())).await? {
            MessageResponse::ListServicesResponse(list) => {
                Ok(list.service.into_iter().map(|s| s.name).collect())
            }
            other => anyhow::bail!("unexpected reflection answer {other:?}"),
        }
    }

    /// How many file descriptors the node's server reflection answers for `symbol` (an
    /// error answer is an error).
    pub async fn reflected_files_of(&self, symbol: &str) -> anyhow::Result<usize> {
        match self.reflect(MessageRequest::FileContainingSymbol(symbol.to_string())).await? {
            MessageResponse::FileDescriptorResponse(files) => Ok(files.file_descriptor_proto.len()),
            MessageResponse::ErrorResponse(error) => {
                anyhow::bail!("{symbol}: {} {}", error.error_code, error.error_message)
            }
            other => anyhow::bail!("unexpected reflection answer {other:?}"),
        }
    }

    async fn reflect(&self, request: MessageRequest) -> anyhow::Result<MessageResponse> {
        let mut client = ServerReflectionClient::new(self.channel_with(self.harness_tls()).await?);
        let request =
            ServerReflectionRequest { host: String::new(), message_request: Some(request) };
        let mut responses =
            client.server_reflection_info(tokio_stream::iter([request])).await?.into_inner();
        let response = responses
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("reflection stream ended without an answer"))?;
        response.message_response.ok_or_else(|| anyhow::anyhow!("an empty reflection answer"))
    }
}

/// Connects a channel with the harness's timeouts, over TLS with `tls`.
pub(crate) async fn connect(url: &str, tls: Option<DialTls>) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    if let Some(tls) = tls {
        endpoint = tls.endpoint(endpoint)?;
    }
    Ok(endpoint.connect().await?)
}
