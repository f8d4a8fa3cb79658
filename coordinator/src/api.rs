//! gRPC services of the coordinator: thin adapters from the wire to the domain modules.

mod auth;
mod callers;
mod cluster;
mod job_service;
mod peer;
mod read_limits;
mod registry;
mod shared_watch;
mod watch_limits;

pub(crate) use auth::AuthApi;
pub(crate) use cluster::ClusterApi;
pub(crate) use job_service::JobApi;
pub(crate) use peer::PeerApi;
#[cfg(test)]
pub(crate) use read_limits::MAX_READS_PER_CALLER;
pub(crate) use read_limits::{Closable, HeldBody, ReadLimitLayer, ReadLimits, unwrap_connection};
pub(crate) use registry::RegistryApi;
pub(crate) use shared_watch::SharedWatches;
pub(crate) use watch_limits::WatchLimits;

/// What every call answers.
type Reply<T> = Result<tonic::Response<T>, tonic::Status>;
