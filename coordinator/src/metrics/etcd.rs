//! `sluice_etcd_request_duration_seconds`: every etcd request of the coordinator, timed in one
//! place, the gRPC channel under the etcd client (whatever module makes the request).

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use etcd_client::{BalancedChannelBuilder, Channel};
use tonic::transport::{Endpoint, channel::Change};
use tower::{BoxError, Service, util::BoxCloneSyncService};

use super::Metrics;
use crate::store::failover::Failover;

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;
type EndpointUpdater = tokio::sync::mpsc::Sender<Change<http::Uri, Endpoint>>;

/// Builds the etcd client's channel, the given [`Failover`] and the sender of its endpoints,
/// with every request timed.
pub(crate) struct TimedChannel(pub(crate) Metrics, pub(crate) Failover, pub(crate) EndpointUpdater);

impl BalancedChannelBuilder for TimedChannel {
    type Error = tonic::transport::Error;

    fn balanced_channel(self, _buffer: usize) -> Result<(Channel, EndpointUpdater), Self::Error> {
        let TimedChannel(metrics, failover, updater) = self;
        let timed = Timed { inner: failover, metrics };
        Ok((Channel::Custom(BoxCloneSyncService::new(timed)), updater))
    }
}

/// A channel that observes how long each request takes to be answered.
#[derive(Clone)]
struct Timed {
    inner: Failover,
    metrics: Metrics,
}

impl Service<HttpRequest> for Timed {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let method = method_label(request.uri().path()).to_string();
        let started = Instant::now();
        let answer = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let answer = answer.await;
            metrics.etcd_request(&method, started.elapsed().as_secs_f64());
            answer
        })
    }
}

/// `KV/Range` of `/etcdserverpb.KV/Range`.
fn method_label(path: &str) -> &str {
    let path = path.trim_start_matches('/');
    path.strip_prefix("etcdserverpb.").unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::method_label;

    #[test]
    fn methods_are_named_by_service_and_call() {
        assert_eq!(method_label("/etcdserverpb.KV/Range"), "KV/Range");
        assert_eq!(
            method_label("/v3electionpb.Election/Campaign"),
            "v3electionpb.Election/Campaign"
        );
    }
}
