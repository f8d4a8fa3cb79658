//! gRPC services of the coordinator: thin adapters from the wire to the domain modules.

mod cluster;
mod job_service;
mod registry;

pub use cluster::ClusterApi;
pub use job_service::JobApi;
pub use registry::RegistryApi;
