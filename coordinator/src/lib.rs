//! The Sluice coordinator: keeps every job session's state and lease in etcd, serves the
//! operator API and the agent registry, and dispatches tasks to agents.

mod agent_client;
mod agents;
mod api;
mod cluster;
mod error;
mod jobs;
mod keys;
mod membership;
mod registry;
mod restore_points;
mod retention;
mod scheduler;
mod server;
mod sessions;
mod settings;
mod store;

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::info;

pub use error::{Error, Result};
pub use settings::Settings;

use crate::{
    agent_client::AgentClients,
    agents::AgentDirectory,
    api::{ClusterApi, JobApi, RegistryApi},
    cluster::Cluster,
    jobs::Jobs,
    membership::MembershipConfig,
    registry::Registry,
    restore_points::RestorePoints,
    scheduler::Scheduler,
    server::Services,
    sessions::{Router, Sessions, context::SessionContext},
    store::Store,
};

/// Runs a coordinator on `listener` until `shutdown` is cancelled; then it stops dispatching,
/// hands its sessions over (revokes its lease) and returns.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let address = settings.advertised_address(listener.local_addr().ok());
    let store = Store::connect(&settings.etcd, &settings.prefix, settings.etcd_timeout()).await?;
    let tracker = TaskTracker::new();
    let background = CancellationToken::new();
    let membership_config =
        MembershipConfig { id: settings.id.clone(), address, ttl: settings.lease_ttl() };
    let (lease, membership) =
        membership::spawn(store.clone(), membership_config, background.clone());
    let (directory, _) = AgentDirectory::spawn(store.clone(), background.clone());
    let clients = AgentClients::default();
    let router = Router::default();
    tracker.spawn(agents::links::run(
        directory.clone(),
        clients.clone(),
        router.clone(),
        background.clone(),
    ));
    let ctx = SessionContext {
        store: store.clone(),
        directory,
        scheduler: Scheduler::default(),
        clients: clients.clone(),
        shutdown: shutdown.clone(),
    };
    let restore_points = RestorePoints::new(
        store.clone(),
        ctx.directory.clone(),
        clients.clone(),
        lease.clone(),
        settings.id.clone(),
    );
    let sessions = Sessions::new(ctx, router, lease, settings.id.clone(), tracker.clone());
    tracker.spawn(sessions.clone().run_claimer(settings.lease_ttl(), background.clone()));
    let registry = Registry::new(store.clone());
    let services = Services {
        jobs: JobApi::new(Jobs::new(store.clone()), sessions, restore_points, shutdown.clone()),
        cluster: ClusterApi::new(registry.clone(), Cluster::new(store.clone()), clients),
        registry: RegistryApi::new(registry, settings.id.clone()),
    };
    info!(id = %settings.id, prefix = %settings.prefix, "coordinator serving");
    let served = server::serve(services, listener, shutdown).await;
    // Session actors have stopped on `shutdown`; now release the lease so peers take over.
    tracker.close();
    background.cancel();
    tracker.wait().await;
    let _ = membership.await;
    info!(id = %settings.id, "coordinator stopped");
    served
}
