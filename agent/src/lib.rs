//! The Sluice agent: runs backup tasks for coordinators and keeps their outcomes until a
//! coordinator acknowledges them.
//!
//! [`run`] is the whole agent: it recovers the journal, serves `AgentService` on the given
//! listener, heartbeats to the coordinators, and returns after a drain (cancel the `drain`
//! token, or call `AgentService.Drain`) or at once when `shutdown` is cancelled.

// The public surface is what the binary and the integration tests use; everything else is
// `pub(crate)`, and this lint keeps it so.
#![warn(unreachable_pub)]

mod drain;
mod error;
pub mod exec;
mod fsutil;
mod heartbeat;
pub mod journal;
pub mod key;
mod liveness;
mod orphans;
mod qemu_img;
pub mod recovery;
mod repository;
mod restore_points;
mod roots;
mod server;
mod service;
mod settings;
mod state_lock;
mod tasks;
#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

use sluice_proto::{
    pb,
    security::{
        identity::Kind,
        tls::{ClientAuth, NodeTls, RELOAD_EVERY, Transport},
    },
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use error::AgentError;
pub use settings::{Settings, TRANSFER_RATE_LIMIT};

use crate::drain::Drainer;
use crate::exec::Daemons;
use crate::heartbeat::Heartbeater;
use crate::journal::Journal;
use crate::liveness::Liveness;
use crate::restore_points::RestoreLog;
use crate::roots::Roots;
use crate::service::AgentApi;
use crate::tasks::{TasksConfig, TasksHandle};

/// How long cancelled tasks get for their cleanup on an immediate shutdown.
const SHUTDOWN_CLEANUP: Duration = Duration::from_secs(10);

/// Why [`run`] stops.
enum Exit {
    Drained,
    Shutdown,
    ServerEnded(Result<Result<(), AgentError>, tokio::task::JoinError>),
}

/// Runs an agent on a bound listener.
///
/// - Cancelling `drain` begins a drain with `settings.drain_deadline`: no new tasks, running
///   ones finish (at the deadline they are cancelled with cleanup), finished outcomes get a
///   bounded time to be acknowledged, a last heartbeat announces `leaving`, and `run`
///   returns `Ok(())`. A `Drain` call over gRPC does the same with its own deadline.
/// - Cancelling `shutdown` stops at once: running tasks are cancelled (their cleanup gets a
///   bounded time, their outcomes stay in the journal), no leaving heartbeat is sent.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    drain: CancellationToken,
) -> Result<(), AgentError> {
    settings.validate()?;
    let tls = load_tls(&settings)?;
    let roots =
        Arc::new(Roots::new(settings.repository_root.clone(), settings.restore_root.clone()));
    roots.warn_if_open();
    if settings.enable_sim_executor {
        warn!(
            "sim executor enabled: sim tasks commit restore points without data (load tests only)"
        );
    }
    let address = advertised_address(&settings, &listener)?;
    let ttl = Duration::from_secs(u64::from(settings.heartbeat_ttl));
    let (liveness_tx, liveness) = watch::channel(Liveness::new(settings.id.clone(), ttl));
    let heartbeater = Heartbeater::new(&settings, address.clone(), tls.clone(), liveness_tx)?;
    // Held to the end of `run`: the journal is this agent's alone.
    let _state_lock = state_lock::lock(&settings.state_dir).await?;
    let journal = Journal::open(&settings.state_dir).await?;
    let restores = restore_log(&settings.state_dir)?;
    let recovered = recovery::recover(&journal).await?;
    let tracker = TaskTracker::new();
    let daemons = Daemons::in_dir(daemon_dir(&settings.state_dir).await?);
    let config =
        tasks_config(&settings, journal.clone(), &tracker, roots.clone(), liveness, &daemons);
    let tasks = TasksHandle::spawn(config, recovered);
    let left = CancellationToken::new();
    let drainer = Drainer::new(tasks.clone(), left.clone());
    let server_stop = CancellationToken::new();
    // Not on the tasks' tracker: it runs until the server stops, after their cleanup.
    let reload = tls.clone().map(|tls| tokio::spawn(tls.watch(RELOAD_EVERY, server_stop.clone())));
    let api = AgentApi::new(tasks.clone(), drainer.clone(), roots, restores, server_stop.clone());
    announce(&listener)?;
    let mut server = tokio::spawn(server::serve(api, listener, tls, server_stop.clone()));
    let (beats, beats_stop) = spawn_heartbeats(heartbeater, &tasks);
    info!(id = settings.id, %address, "agent started");
    let exit = wait_for_exit(&settings, &drainer, &shutdown, &drain, &left, &mut server).await;
    match &exit {
        Exit::Drained => leave(&tasks, beats, &beats_stop).await,
        Exit::Shutdown | Exit::ServerEnded(_) => stop_tasks(&tasks, &tracker, &beats_stop).await,
    }
    daemons.close().await;
    tracker.close();
    server_stop.cancel();
    if let Some(reload) = reload {
        let _ = reload.await;
    }
    if let Err(error) = journal.flush().await {
        warn!(%error, "acknowledgements not journaled: their outcomes are reported again");
    }
    let served = match exit {
        Exit::ServerEnded(result) => result,
        Exit::Drained | Exit::Shutdown => server.await,
    };
    info!(id = settings.id, "agent stopped");
    served.map_err(|e| AgentError::Internal(format!("server task failed: {e}")))?
}

/// Prints the bound address, which scripts and tests wait for: only once the settings, the
/// certificates and the state directory are known good, so a line means a running agent. A
/// closed stdout (its reader gone) is no reason to stop serving, as for coordinators.
fn announce(listener: &TcpListener) -> Result<(), AgentError> {
    use std::io::Write;
    let bound = listener.local_addr().map_err(|e| AgentError::Internal(e.to_string()))?;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening on {bound}").and_then(|()| stdout.flush());
    Ok(())
}

fn tasks_config(
    settings: &Settings,
    journal: Journal,
    tracker: &TaskTracker,
    roots: Arc<Roots>,
    liveness: watch::Receiver<Liveness>,
    daemons: &Daemons,
) -> TasksConfig {
    TasksConfig {
        agent_id: settings.id.clone(),
        computer: settings.computer_name().to_owned(),
        slots: usize::try_from(settings.slots).unwrap_or(usize::MAX),
        rate_limit: settings.transfer_rate_limit,
        sim_executor: settings.enable_sim_executor,
        roots,
        journal,
        tracker: tracker.clone(),
        liveness,
        daemons: daemons.clone(),
    }
}

/// Heartbeats until the returned token is cancelled; the task gives the heartbeater back
/// for the leaving heartbeat.
fn spawn_heartbeats(
    mut heartbeater: Heartbeater,
    tasks: &TasksHandle,
) -> (JoinHandle<Heartbeater>, CancellationToken) {
    let stop = CancellationToken::new();
    let (status, token) = (tasks.status(), stop.clone());
    let beats = tokio::spawn(async move {
        heartbeater.run(status, token).await;
        heartbeater
    });
    (beats, stop)
}

fn advertised_address(settings: &Settings, listener: &TcpListener) -> Result<String, AgentError> {
    if let Some(address) = &settings.advertise {
        return Ok(address.clone());
    }
    let bound = listener
        .local_addr()
        .map_err(|e| AgentError::Config(format!("listener has no address: {e}")))?;
    Ok(format!("{}://{bound}", settings.scheme()))
}

/// The agent's TLS (its certificate must name this agent and computer), or `None` under
/// `--insecure`, which is logged loudly.
fn load_tls(settings: &Settings) -> Result<Option<Arc<NodeTls>>, AgentError> {
    let files = match settings.transport()? {
        Transport::Insecure => {
            warn!(
                "running with --insecure: no TLS and no authentication; anyone who reaches this \
                 agent can run, cancel and read its tasks. Development only."
            );
            return Ok(None);
        }
        Transport::Tls(files) => files,
    };
    // Only coordinators call an agent, and each must show its certificate.
    let accept = ClientAuth { kinds: &[Kind::Coordinator], required: true };
    let tls = NodeTls::load(files, accept).map_err(|e| AgentError::Config(e.to_string()))?;
    let identity = tls.identity();
    let computer = identity.computer.as_deref().unwrap_or_default();
    if identity.kind != Kind::Agent
        || identity.id != settings.id
        || computer != settings.computer_name()
    {
        return Err(AgentError::Config(format!(
            "--tls-cert names {} {:?} (computer {computer:?}), but this is agent {:?} (computer \
             {:?}): issue one with `sluice pki issue --kind agent --id ID [--computer NAME]`",
            identity.kind.with_article(),
            identity.id,
            settings.id,
            settings.computer_name()
        )));
    }
    Ok(Some(tls))
}

/// The folder of this agent's storage daemons, in its state directory, emptied of what a
/// run killed with SIGKILL left there (daemons and their folders).
/// The log of restores under way. What restores interrupted by this agent's death wrote is
/// removed meanwhile, off the start: a target on a share that hangs must not keep the
/// agent from serving.
fn restore_log(state_dir: &std::path::Path) -> Result<RestoreLog, AgentError> {
    let (log, leftovers) = RestoreLog::in_state_dir(state_dir)
        .map_err(|e| AgentError::Internal(format!("cannot open the restore log: {e}")))?;
    tokio::task::spawn_blocking(move || leftovers.clean_up());
    Ok(log)
}

async fn daemon_dir(state_dir: &std::path::Path) -> Result<std::path::PathBuf, AgentError> {
    let dir = state_dir.join("qsd");
    let cleared = dir.clone();
    let stopped = fsutil::blocking(move || orphans::clear_daemon_dir(&cleared)).await;
    let stopped = stopped.map_err(|source| AgentError::Journal {
        context: format!("cannot empty {}", dir.display()),
        source,
    })?;
    if stopped > 0 {
        info!(count = stopped, "stopped storage daemons left by the previous run");
    }
    Ok(dir)
}

async fn wait_for_exit(
    settings: &Settings,
    drainer: &Drainer,
    shutdown: &CancellationToken,
    drain: &CancellationToken,
    left: &CancellationToken,
    server: &mut JoinHandle<Result<(), AgentError>>,
) -> Exit {
    let mut drain_requested = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Exit::Shutdown,
            () = left.cancelled() => return Exit::Drained,
            result = &mut *server => return Exit::ServerEnded(result),
            () = drain.cancelled(), if !drain_requested => {
                drain_requested = true;
                if let Err(error) = drainer.begin(settings.drain_deadline()).await {
                    warn!(%error, "drain could not begin");
                }
            }
        }
    }
}

/// After a drain: stop the periodic heartbeats and announce that the agent leaves.
async fn leave(
    tasks: &TasksHandle,
    beats: JoinHandle<Heartbeater>,
    beats_stop: &CancellationToken,
) {
    beats_stop.cancel();
    let Ok(mut heartbeater) = beats.await else {
        warn!("heartbeat task failed: leaving without a last heartbeat");
        return;
    };
    let status = tasks.status().borrow().clone();
    if !heartbeater.beat(&status, true).await {
        warn!("no coordinator took the leaving heartbeat");
    }
}

/// Immediate shutdown: cancel what runs and give its cleanup a bounded time.
async fn stop_tasks(tasks: &TasksHandle, tracker: &TaskTracker, beats_stop: &CancellationToken) {
    if let Ok(keys) = tasks.cancel_all(pb::CancelReason::Drain).await
        && !keys.is_empty()
    {
        warn!(tasks = keys.len(), "shutting down: running tasks canceled");
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_CLEANUP, tracker.wait()).await.is_err() {
        warn!("canceled tasks did not finish their cleanup before shutdown");
    }
    beats_stop.cancel();
}
