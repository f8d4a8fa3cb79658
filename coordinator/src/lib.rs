//! The Sluice coordinator: keeps every job session's state and lease in etcd, serves the
//! operator API and the agent registry, and dispatches tasks to agents.

mod agent_client;
mod agents;
mod api;
mod auth;
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
mod spawn;
mod store;
#[cfg(test)]
mod testing;

use std::sync::Arc;

use sluice_proto::security::{
    identity::Kind,
    tls::{ClientAuth, NodeTls, RELOAD_EVERY, TlsError, Transport},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};

pub use error::{Error, Result};
pub use settings::{
    COMPACTION_INTERVAL_SECS, LEASE_TTL_SECS, Settings, TASK_ANSWER_TIMEOUT_SECS, WORKER_THREADS,
};

use crate::{
    agent_client::AgentClients,
    agents::{
        AgentDirectory,
        acks::Acks,
        runs::{Lanes, RunLanes},
    },
    api::{AuthApi, ClusterApi, JobApi, PeerApi, ReadLimits, RegistryApi, WatchLimits},
    auth::{Authenticator, tokens::Tokens},
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

impl Listeners {
    /// Prints the bound addresses, which tests and scripts wait for: only once the settings
    /// and certificates are known good, so the lines mean a starting coordinator. A closed
    /// stdout does not stop it.
    fn announce(&self, http_scheme: &str) {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        if let Ok(grpc) = self.grpc.local_addr() {
            let _ = writeln!(stdout, "listening on {grpc}");
        }
        if let Some(Ok(http)) = self.http.as_ref().map(TcpListener::local_addr) {
            let _ = writeln!(stdout, "console at {http_scheme}://{http}/");
        }
        let _ = stdout.flush();
    }
}

/// Runs a coordinator on `listeners` until `shutdown` is cancelled; then it stops
/// dispatching, hands its sessions over (revokes its lease) and returns.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let tls = load_tls(&settings)?;
    if let Some(warning) = settings.lease_ttl_warning() {
        warn!("{warning}");
    }
    let address = settings.advertised_address(listeners.grpc.local_addr().ok());
    let metrics = Metrics::default();
    let etcd_tls = settings.etcd_tls()?;
    let timeout = settings.etcd_timeout();
    // Checks the endpoints and reads etcd's certificate files; connects lazily.
    let store =
        Store::connect(&settings.etcd, &settings.prefix, timeout, &metrics, etcd_tls.as_ref())
            .await?;
    listeners.announce(settings.http_scheme());
    let tasks = Background { tracker: TaskTracker::new(), stop: CancellationToken::new() };
    if let Some(tls) = &tls {
        tasks.tracker.spawn(tls.clone().watch(RELOAD_EVERY, tasks.stop.clone()));
    }
    let membership_config =
        MembershipConfig { id: settings.id.clone(), address, ttl: settings.lease_ttl() };
    let connect = {
        let (endpoints, prefix) = (settings.etcd.clone(), settings.prefix.clone());
        let (metrics, etcd_tls) = (metrics.clone(), etcd_tls.clone());
        move || {
            let (endpoints, prefix) = (endpoints.clone(), prefix.clone());
            let (metrics, etcd_tls) = (metrics.clone(), etcd_tls.clone());
            async move {
                Store::connect(&endpoints, &prefix, timeout, &metrics, etcd_tls.as_ref()).await
            }
        }
    };
    let watchdog = membership::watchdog_bound(settings.lease_ttl());
    let (lease, membership) =
        membership::spawn_isolated(connect, membership_config, watchdog, tasks.stop.clone())
            .await
            .map_err(Error::LeaseThread)?;
    // Cancelled on `shutdown`, or when the lease's keep-alive dies.
    let stopping = shutdown.child_token();
    let (services, http) =
        start(&settings, (store, metrics), lease.clone(), tls.clone(), &tasks, &stopping);
    info!(id = %settings.id, prefix = %settings.prefix, tls = tls.is_some(), "coordinator serving");
    let served = serve_while_leased(services, http, listeners, tls, lease, &stopping).await;
    // Session actors have stopped on `stopping`; now release the lease so peers take over.
    tasks.tracker.close();
    tasks.stop.cancel();
    tasks.tracker.wait().await;
    membership.wait().await;
    info!(id = %settings.id, "coordinator stopped");
    served
}

/// Serves until `stopping`, or until the lease's keep-alive ends (its thread died): a
/// coordinator that can never hold a lease again starts and claims no session, so it ends
/// with an error (a supervisor restarts it) instead of looking healthy while useless.
async fn serve_while_leased(
    services: Services,
    http: HttpParts,
    listeners: Listeners,
    tls: Option<Arc<NodeTls>>,
    lease: LeaseWatch,
    stopping: &CancellationToken,
) -> Result<()> {
    let serving = serve(services, http, listeners, tls, stopping);
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => served,
        () = membership::keep_alive_ended(lease) => {
            error!("the lease keep-alive thread died; this coordinator stops");
            stopping.cancel();
            serving.await.and(Err(Error::LeaseThreadDied))
        }
    }
}

/// Serves gRPC and, if it has a listener, HTTP, until `shutdown` or until the gRPC server
/// fails (which ends the HTTP server too).
async fn serve(
    services: Services,
    http: HttpParts,
    listeners: Listeners,
    tls: Option<Arc<NodeTls>>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let serving = shutdown.child_token();
    let http = listeners.http.map(|listener| {
        let (serving, tls) = (serving.clone(), tls.clone());
        tokio::spawn(http::serve(http, listener, tls, serving))
    });
    let served = server::serve(services, listeners.grpc, tls, serving.clone()).await;
    serving.cancel();
    if let Some(http) = http {
        // It ends within its shutdown grace; a panic in it has been reported already.
        let _ = http.await;
    }
    served
}

/// Tasks that run beside the server, and the token that stops them after it.
struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// The coordinator's TLS (its certificate must be a coordinator's, of its own id), or `None`
/// under `--insecure`, which is logged loudly.
fn load_tls(settings: &Settings) -> Result<Option<Arc<NodeTls>>> {
    let files = match settings.transport()? {
        Transport::Insecure => {
            warn!(
                "running with --insecure: no TLS and no authentication; anyone who reaches {} \
                 can do anything. Development only.",
                settings.listen
            );
            return Ok(None);
        }
        Transport::Tls(files) => files,
    };
    // Clients, agents and peer coordinators may call; a client without a certificate may
    // bring a token.
    let accept =
        ClientAuth { kinds: &[Kind::Client, Kind::Agent, Kind::Coordinator], required: false };
    let tls = NodeTls::load(files, accept)?;
    let identity = tls.identity();
    if identity.kind != Kind::Coordinator || identity.id != settings.id {
        return Err(TlsError::Flags(format!(
            "--tls-cert names {} {:?}, but this is coordinator {:?}: issue one with \
             `sluice pki issue --kind coordinator --id {}`",
            identity.kind.with_article(),
            identity.id,
            settings.id,
            settings.id
        ))
        .into());
    }
    Ok(Some(tls))
}

/// Starts the agent directory, the agent links, the session claimer, the metrics' watches
/// and the token bootstrap, and builds the APIs.
fn start(
    settings: &Settings,
    (store, metrics): (Store, Metrics),
    lease: LeaseWatch,
    tls: Option<Arc<NodeTls>>,
    tasks: &Background,
    shutdown: &CancellationToken,
) -> (Services, HttpParts) {
    let clients = AgentClients::new(tls);
    let (mut ctx, router) = follow_agents(store.clone(), metrics.clone(), clients, tasks, shutdown);
    ctx.answer_timeout = settings.task_answer_timeout();
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
        restore_points: restore_points.clone(),
    };
    tasks.tracker.spawn(upkeep.run(tasks.stop.clone()));
    let tokens = Tokens::new(store.clone());
    if let Some(path) = settings.bootstrap_token_file.clone() {
        let bootstrap = tokens.clone();
        let (id, stop) = (id.clone(), tasks.stop.clone());
        tasks.tracker.spawn(async move { bootstrap.bootstrap(&path, &id, stop).await });
    }
    let authenticator = Arc::new(Authenticator::new(tokens.clone(), settings.insecure));
    let registry = Registry::new(store.clone(), if settings.insecure { "http" } else { "https" });
    let peer = PeerApi::new(sessions.clone());
    let jobs = JobApi::new(
        Jobs::new(store.clone()),
        sessions,
        restore_points,
        tokens.clone(),
        WatchLimits::new(settings.max_watch_streams.get()),
        shutdown.clone(),
    );
    let services = Services {
        jobs: Arc::new(jobs),
        cluster: Arc::new(ClusterApi::new(registry.clone(), Cluster::new(store), clients)),
        registry: RegistryApi::new(registry, id),
        auth: AuthApi::new(tokens),
        peer,
        authenticator: authenticator.clone(),
        reads: ReadLimits::half_the_cores(),
    };
    let http = HttpParts {
        services: http::Services { jobs: services.jobs.clone(), cluster: services.cluster.clone() },
        metrics,
        directory,
        authenticator,
        reads: services.reads.clone(),
        own_names: http::origin::OwnNames::new(settings.advertise.as_deref().unwrap_or_default()),
    };
    (services, http)
}

/// Starts the agent directory and a task stream from every agent, routed to the sessions.
fn follow_agents(
    store: Store,
    metrics: Metrics,
    clients: AgentClients,
    tasks: &Background,
    shutdown: &CancellationToken,
) -> (SessionContext, Router) {
    let (directory, _) = AgentDirectory::spawn(store.clone(), tasks.stop.clone());
    let router = Router::default();
    let links =
        agents::links::run(directory.clone(), clients.clone(), router.clone(), tasks.stop.clone());
    tasks.tracker.spawn(links);
    let scheduler = Scheduler::default();
    let (tracker, stop) = (tasks.tracker.clone(), tasks.stop.clone());
    let lanes = Lanes::default();
    let acks =
        Acks::new(directory.clone(), clients.clone(), tracker.clone(), stop.clone(), lanes.clone());
    let runs = RunLanes::new(lanes, acks.clone(), tracker, stop);
    let shutdown = shutdown.clone();
    let answer_timeout = crate::settings::DEFAULT_TASK_ANSWER_TIMEOUT;
    let ctx = SessionContext {
        store,
        directory,
        scheduler,
        clients,
        acks,
        runs,
        shutdown,
        metrics,
        answer_timeout,
    };
    (ctx, router)
}

#[cfg(test)]
mod tests {
    use sluice_proto::security::pki::{self, LeafSpec};

    use super::*;

    #[test]
    fn a_certificate_of_another_kind_is_refused_naming_its_kind_with_its_article() {
        let dir = tempfile::tempdir().expect("tempdir");
        pki::init_dir(&dir.path().join("ca")).expect("CA");
        let spec = LeafSpec::new(Kind::Agent, "c1");
        let files = pki::issue_to_dir(&dir.path().join("ca"), &spec, &dir.path().join("c1"))
            .expect("an agent certificate");
        let toml = format!(
            "etcd = \"https://e:2379\"\nlisten = \"a:1\"\nid = \"c1\"\n\
             tls-cert = {:?}\ntls-key = {:?}\ntls-ca = {:?}\n",
            files.cert, files.key, files.ca
        );
        let settings: Settings = toml::from_str(&toml).expect("settings");

        let refused = load_tls(&settings).map(drop).expect_err("an agent's certificate");

        let expected = "--tls-cert names an agent \"c1\", but this is coordinator \"c1\"";
        assert!(refused.to_string().contains(expected), "{refused}");
    }
}
