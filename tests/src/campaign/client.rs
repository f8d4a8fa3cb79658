//! The public API as a client that rides out faults uses it: any coordinator will do, so a
//! call that finds one unavailable goes to the next.

use std::{future::Future, time::Duration};

use sluice_proto::pb::{
    agent_service_client::AgentServiceClient, job_service_client::JobServiceClient,
};
use tonic::{
    Code, Response, Status,
    transport::{Channel, Endpoint},
};

use crate::MAX_MESSAGE_BYTES;

/// Longest one call to one coordinator may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `JobService` clients of every coordinator, on lazy channels that reconnect by themselves.
#[derive(Clone)]
pub struct Api {
    jobs: Vec<JobServiceClient<Channel>>,
}

impl Api {
    /// Clients of the coordinators at `urls`.
    pub fn new(urls: &[String]) -> Api {
        let jobs = urls
            .iter()
            .map(|url| {
                JobServiceClient::new(lazy_channel(url))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            })
            .collect();
        Api { jobs }
    }

    /// Makes `call` on coordinator `first`, then on the next ones while the answer says the
    /// coordinator could not serve it (unavailable, timed out, transport error). Returns the
    /// first other answer, or the last failure.
    pub async fn call<T, F, Fut>(&self, first: usize, mut call: F) -> Result<T, Status>
    where
        F: FnMut(JobServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut last = Status::unavailable("no coordinator");
        for step in 0..self.jobs.len() {
            let client = self.jobs[(first + step) % self.jobs.len()].clone();
            let answer = match tokio::time::timeout(CALL_TIMEOUT, call(client)).await {
                Ok(answer) => answer,
                Err(_) => Err(Status::deadline_exceeded("no answer within the call timeout")),
            };
            match answer {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if could_not_serve(&status) => last = status,
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }
}

/// Whether a status means this coordinator could not serve the call (another might).
pub fn could_not_serve(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

/// A channel that connects on first use and again after a failure.
pub fn lazy_channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .unwrap_or_else(|e| panic!("bad URL {url}: {e}"))
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect_lazy()
}

/// An `AgentService` client of the agent at `url`.
pub fn agent_client(url: &str) -> AgentServiceClient<Channel> {
    AgentServiceClient::new(lazy_channel(url))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}
