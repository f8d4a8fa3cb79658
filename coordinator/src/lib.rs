//! The Sluice coordinator: keeps every job session's state and lease in etcd, serves the
//! operator API and the agent registry, and dispatches tasks to agents.

pub mod agent_client;
pub mod api;
pub mod cluster;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod membership;
pub mod registry;
pub mod server;
pub mod settings;
pub mod store;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use error::{Error, Result};
pub use settings::Settings;

use crate::{
    agent_client::AgentClients, api::ClusterApi, api::JobApi, api::RegistryApi, cluster::Cluster,
    jobs::Jobs, membership::MembershipConfig, registry::Registry, server::Services, store::Store,
};

/// Runs a coordinator on `listener` until `shutdown` is cancelled, then hands its sessions
/// over (revokes its lease) and returns.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let address = settings.advertised_address(listener.local_addr().ok());
    let store = Store::connect(&settings.etcd, &settings.prefix, settings.etcd_timeout()).await?;
    let membership_config =
        MembershipConfig { id: settings.id.clone(), address, ttl: settings.lease_ttl() };
    let membership_stop = CancellationToken::new();
    let (_lease, membership) =
        membership::spawn(store.clone(), membership_config, membership_stop.clone());
    let registry = Registry::new(store.clone());
    let services = Services {
        jobs: JobApi::new(Jobs::new(store.clone())),
        cluster: ClusterApi::new(
            registry.clone(),
            Cluster::new(store.clone()),
            AgentClients::default(),
        ),
        registry: RegistryApi::new(registry, settings.id.clone()),
    };
    info!(id = %settings.id, prefix = %settings.prefix, "coordinator serving");
    let served = server::serve(services, listener, shutdown).await;
    membership_stop.cancel();
    let _ = membership.await;
    info!(id = %settings.id, "coordinator stopped");
    served
}
