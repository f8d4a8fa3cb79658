//! Connection to a coordinator: the endpoint list, the channel and the API clients.

use std::time::Duration;

use sluice_proto::pb::cluster_service_client::ClusterServiceClient;
use sluice_proto::pb::job_service_client::JobServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Failure, chain};
use crate::output::Format;

/// Connect timeout per endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted (a session of 100,000 items is tens of MiB).
const MAX_DECODING_BYTES: usize = 64 * 1024 * 1024;
/// HTTP/2 keep-alive, so a watch notices a vanished coordinator.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// What every command needs: where to connect and how to print.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Comma-separated endpoint list as given.
    endpoints: String,
    /// Output format.
    pub format: Format,
}

/// The API clients on one connection.
///
/// Plain channels: the CLI opens no span of its own, so it has no trace context to send;
/// each request starts its trace on the coordinator.
#[derive(Debug, Clone)]
pub struct Clients {
    /// `sluice.v1.JobService`.
    pub jobs: JobServiceClient<Channel>,
    /// `sluice.v1.ClusterService`.
    pub cluster: ClusterServiceClient<Channel>,
}

impl Ctx {
    /// A context for these endpoints and this format.
    pub fn new(endpoints: String, format: Format) -> Self {
        Ctx { endpoints, format }
    }

    /// Connects to the first endpoint of the list that answers.
    pub async fn connect(&self) -> Result<Clients, Failure> {
        let endpoints = parse_endpoints(&self.endpoints)?;
        let mut errors = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let uri = endpoint.uri().to_string();
            match endpoint.connect().await {
                Ok(channel) => return Ok(Clients::new(channel)),
                Err(error) => errors.push(format!("{uri}: {}", chain(&error))),
            }
        }
        Err(Failure::Connect(format!("cannot connect to a coordinator: {}", errors.join("; "))))
    }
}

impl Clients {
    /// Clients on a connected channel.
    fn new(channel: Channel) -> Self {
        let jobs =
            JobServiceClient::new(channel.clone()).max_decoding_message_size(MAX_DECODING_BYTES);
        let cluster =
            ClusterServiceClient::new(channel).max_decoding_message_size(MAX_DECODING_BYTES);
        Clients { jobs, cluster }
    }
}

/// Parses a comma-separated endpoint list; `host:port` without a scheme means `http://`.
pub fn parse_endpoints(list: &str) -> Result<Vec<Endpoint>, Failure> {
    let urls: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if urls.is_empty() {
        return Err(Failure::usage("--endpoint: no endpoint given"));
    }
    urls.into_iter().map(endpoint).collect()
}

/// One endpoint with the connection settings of the CLI.
fn endpoint(url: &str) -> Result<Endpoint, Failure> {
    let full = if url.contains("://") { url.to_string() } else { format!("http://{url}") };
    let endpoint = Endpoint::from_shared(full)
        .map_err(|error| Failure::usage(format!("--endpoint: bad URL {url:?}: {error}")))?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .keep_alive_while_idle(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_list_keeps_order_and_adds_scheme() {
        let endpoints = parse_endpoints("http://a:7400, b:7401").expect("valid list");
        let uris: Vec<String> = endpoints.iter().map(|e| e.uri().to_string()).collect();
        assert_eq!(uris, ["http://a:7400/", "http://b:7401/"]);
    }

    #[test]
    fn empty_or_bad_endpoint_is_a_usage_error() {
        assert!(matches!(parse_endpoints(" , "), Err(Failure::Usage(_))));
        assert!(matches!(parse_endpoints("http://bad host"), Err(Failure::Usage(_))));
    }
}
