//! gRPC services of the coordinator: thin adapters from the wire to the domain modules.

mod cluster;
mod job_service;
mod registry;

pub(crate) use cluster::ClusterApi;
pub(crate) use job_service::JobApi;
pub(crate) use registry::RegistryApi;

/// What every call answers.
type Reply<T> = Result<tonic::Response<T>, tonic::Status>;
