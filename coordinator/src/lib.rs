//! The Sluice coordinator: keeps every job session's state and lease in etcd, serves the
//! operator API and the agent registry, and dispatches tasks to agents.

mod agent_client;
mod agents;
mod api;
mod cluster;
mod error;
mod http;
mod jobs;
mod keys;
mod maintenance;
mod membership;
mod metrics;
mod registry;
mod restore_points;
mod scheduler;
mod schedules;
mod server;
mod sessions;
mod settings;
mod store;
#[cfg(test)]
mod testing;

use std::sync::Arc;

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
    http::HttpParts,
    jobs::Jobs,
    membership::{LeaseWatch, MembershipConfig},
    metrics::Metrics,
    registry::Registry,
    restore_points::RestorePoints,
    scheduler::Scheduler,
    server::Services,
    sessions::{Parts, Router, Sessions, context::SessionContext},
    store::Store,
};

/// The listeners a coordinator serves on.
pub struct Listeners {
    /// gRPC (`--listen`).
    pub grpc: TcpListener,
    /// The console, the HTTP API and `/metrics` (`--http-listen`), if served.
    pub http: Option<TcpListener>,
}

/// Runs a coordinator on `listeners` until `shutdown` is cancelled; then it stops
/// dispatching, hands its sessions over (revokes its lease) and returns.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let address = settings.advertised_address(listeners.grpc.local_addr().ok());
    let metrics = Metrics::default();
    let store =
        Store::connect(&settings.etcd, &settings.prefix, settings.etcd_timeout(), &metrics).await?;
    let tasks = Background { tracker: TaskTracker::new(), stop: CancellationToken::new() };
    let membership_config =
        MembershipConfig { id: settings.id.clone(), address, ttl: settings.lease_ttl() };
    let (lease, membership) =
        membership::spawn(store.clone(), membership_config, tasks.stop.clone());
    let (services, http) = start(&settings, (store, metrics), lease, &tasks, &shutdown);
    info!(id = %settings.id, prefix = %settings.prefix, "coordinator serving");
    let served = serve(services, http, listeners, &shutdown).await;
    // Session actors have stopped on `shutdown`; now release the lease so peers take over.
    tasks.tracker.close();
    tasks.stop.cancel();
    tasks.tracker.wait().await;
    let _ = membership.await;
    info!(id = %settings.id, "coordinator stopped");
    served
}

/// Serves gRPC and, if it has a listener, HTTP, until `shutdown` or until the gRPC server
/// fails (which ends the HTTP server too).
async fn serve(
    services: Services,
    http: HttpParts,
    listeners: Listeners,
    shutdown: &CancellationToken,
) -> Result<()> {
    let serving = shutdown.child_token();
    let http = listeners.http.map(|listener| {
        let serving = serving.clone();
        tokio::spawn(http::serve(http, listener, serving))
    });
    let served = server::serve(services, listeners.grpc, serving.clone()).await;
    serving.cancel();
    let Some(http) = http else { return served };
    let http_served = http.await.unwrap_or(Ok(()));
    served.and(http_served)
}

/// Tasks that run beside the server, and the token that stops them after it.
struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// Starts the agent directory, the agent links, the session claimer and the metrics' watches,
/// and builds the APIs.
fn start(
    settings: &Settings,
    (store, metrics): (Store, Metrics),
    lease: LeaseWatch,
    tasks: &Background,
    shutdown: &CancellationToken,
) -> (Services, HttpParts) {
    let (ctx, router) = follow_agents(store.clone(), metrics.clone(), tasks, shutdown);
    tasks.tracker.spawn(router.strays().clone().run(ctx.clone(), tasks.stop.clone()));
    let id = settings.id.clone();
    let (directory, clients) = (ctx.directory.clone(), ctx.clients.clone());
    let restore_points = RestorePoints::new(
        store.clone(),
        directory.clone(),
        clients.clone(),
        lease.clone(),
        id.clone(),
    );
    tasks.tracker.spawn(metrics.clone().follow_lease(lease.clone(), tasks.stop.clone()));
    tasks.tracker.spawn(metrics::follow_last_success(
        store.clone(),
        metrics.clone(),
        tasks.stop.clone(),
    ));
    let sessions = Sessions::new(Parts {
        ctx,
        router,
        lease: lease.clone(),
        coordinator: id.clone(),
        tracker: tasks.tracker.clone(),
        restore_points: restore_points.clone(),
        starting: Default::default(),
    });
    tasks.tracker.spawn(sessions.clone().run_claimer(settings.lease_ttl(), tasks.stop.clone()));
    tasks.tracker.spawn(schedules::run(sessions.clone(), shutdown.clone()));
    let upkeep = maintenance::Maintenance {
        store: store.clone(),
        lease: lease.clone(),
        coordinator: id.clone(),
        history: settings.history(),
        compaction: settings.compaction_interval(),
    };
    tasks.tracker.spawn(upkeep.run(tasks.stop.clone()));
    let registry = Registry::new(store.clone());
    let jobs = JobApi::new(Jobs::new(store.clone()), sessions, restore_points, shutdown.clone());
    let services = Services {
        jobs: Arc::new(jobs),
        cluster: Arc::new(ClusterApi::new(registry.clone(), Cluster::new(store), clients)),
        registry: RegistryApi::new(registry, id),
    };
    let http = HttpParts {
        services: http::Services { jobs: services.jobs.clone(), cluster: services.cluster.clone() },
        metrics,
        directory,
        authenticator: Arc::new(http::auth::Open),
    };
    (services, http)
}

/// Starts the agent directory and a task stream from every agent, routed to the sessions.
fn follow_agents(
    store: Store,
    metrics: Metrics,
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
    let shutdown = shutdown.clone();
    let ctx = SessionContext { store, directory, scheduler, clients, acks, shutdown, metrics };
    (ctx, router)
}
