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
mod scheduler;
mod server;
mod sessions;
mod settings;
mod store;
#[cfg(test)]
mod testing;

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::info;

pub use error::{Error, Result};
pub use settings::Settings;

use crate::{
    agent_client::AgentClients,
    agents::{AgentDirectory, acks::Acks},
    api::{ClusterApi, JobApi, RegistryApi},
    cluster::Cluster,
    jobs::Jobs,
    membership::{LeaseWatch, MembershipConfig},
    registry::Registry,
    restore_points::RestorePoints,
    scheduler::Scheduler,
    server::Services,
    sessions::{Parts, Router, Sessions, context::SessionContext},
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
    let tasks = Background { tracker: TaskTracker::new(), stop: CancellationToken::new() };
    let membership_config =
        MembershipConfig { id: settings.id.clone(), address, ttl: settings.lease_ttl() };
    let (lease, membership) =
        membership::spawn(store.clone(), membership_config, tasks.stop.clone());
    let services = start(&settings, store, lease, &tasks, &shutdown);
    info!(id = %settings.id, prefix = %settings.prefix, "coordinator serving");
    let served = server::serve(services, listener, shutdown).await;
    // Session actors have stopped on `shutdown`; now release the lease so peers take over.
    tasks.tracker.close();
    tasks.stop.cancel();
    tasks.tracker.wait().await;
    let _ = membership.await;
    info!(id = %settings.id, "coordinator stopped");
    served
}

/// Tasks that run beside the server, and the token that stops them after it.
struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// Starts the agent directory, the agent links and the session claimer, and builds the API.
fn start(
    settings: &Settings,
    store: Store,
    lease: LeaseWatch,
    tasks: &Background,
    shutdown: &CancellationToken,
) -> Services {
    let (ctx, router) = follow_agents(store.clone(), tasks, shutdown);
    tasks.tracker.spawn(router.strays().clone().run(ctx.clone(), tasks.stop.clone()));
    let id = settings.id.clone();
    let (directory, clients) = (ctx.directory.clone(), ctx.clients.clone());
    let restore_points =
        RestorePoints::new(store.clone(), directory, clients.clone(), lease.clone(), id.clone());
    let sessions = Sessions::new(Parts {
        ctx,
        router,
        lease,
        coordinator: id.clone(),
        tracker: tasks.tracker.clone(),
        restore_points: restore_points.clone(),
        starting: Default::default(),
    });
    tasks.tracker.spawn(sessions.clone().run_claimer(settings.lease_ttl(), tasks.stop.clone()));
    let registry = Registry::new(store.clone());
    Services {
        jobs: JobApi::new(Jobs::new(store.clone()), sessions, restore_points, shutdown.clone()),
        cluster: ClusterApi::new(registry.clone(), Cluster::new(store), clients),
        registry: RegistryApi::new(registry, id),
    }
}

/// Starts the agent directory and a task stream from every agent, routed to the sessions.
fn follow_agents(
    store: Store,
    tasks: &Background,
    shutdown: &CancellationToken,
) -> (SessionContext, Router) {
    let (directory, _) = AgentDirectory::spawn(store.clone(), tasks.stop.clone());
    let clients = AgentClients::default();
    let router = Router::default();
    let links =
        agents::links::run(directory.clone(), clients.clone(), router.clone(), tasks.stop.clone());
    tasks.tracker.spawn(links);
    let scheduler = Scheduler::default();
    let acks =
        Acks::new(directory.clone(), clients.clone(), tasks.tracker.clone(), tasks.stop.clone());
    let ctx =
        SessionContext { store, directory, scheduler, clients, acks, shutdown: shutdown.clone() };
    (ctx, router)
}
