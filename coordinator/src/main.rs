//! `sluice-coordinator`: parses flags, loads config, starts telemetry and runs the coordinator.

use std::{num::NonZeroUsize, path::PathBuf};

use anyhow::Context;
use clap::{Parser, builder::RangedU64ValueParser, value_parser};
use serde::Serialize;
use sluice_coordinator::{
    COMPACTION_INTERVAL_SECS, LEASE_TTL_SECS, Listeners, Settings, TASK_ANSWER_TIMEOUT_SECS,
    WORKER_THREADS,
};
use sluice_proto::{
    config,
    security::flags::{TLS_CERT_ARG, TlsFlags},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `--tls-cert`'s help: a coordinator takes only a coordinator certificate naming its id.
const TLS_CERT_HELP: &str =
    "Certificate of this coordinator (`sluice pki issue --kind coordinator --id ID`, ID its --id)";

/// Sluice coordinator: keeps job sessions in etcd and dispatches tasks to agents.
#[derive(Debug, Parser, Serialize)]
#[command(version, about, mut_arg(TLS_CERT_ARG, |arg| arg.help(TLS_CERT_HELP)))]
#[serde(rename_all = "kebab-case")]
struct Flags {
    /// etcd endpoints, comma-separated, each http(s)://HOST:PORT (e.g. http://127.0.0.1:2379).
    #[arg(long, env = "SLUICE_ETCD", value_name = "URL[,URL]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd: Option<String>,
    /// Address to serve the API on (e.g. 0.0.0.0:7400).
    #[arg(long, env = "SLUICE_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Address to serve the console, the HTTP API and /metrics on (e.g. 0.0.0.0:7480).
    #[arg(long, env = "SLUICE_HTTP_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_listen: Option<String>,
    /// Unique coordinator id.
    #[arg(long, env = "SLUICE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// Lease TTL in seconds: how long a dead coordinator keeps its sessions (1-3600, default
    /// 10).
    #[arg(long, env = "SLUICE_LEASE_TTL", value_name = "SECS",
          value_parser = value_parser!(u64).range(LEASE_TTL_SECS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ttl: Option<u64>,
    /// Key prefix in etcd, a key path (default /sluice).
    #[arg(long, env = "SLUICE_PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    /// URL peers and agents use to reach this coordinator, https://HOST:PORT (http:// with
    /// --insecure; default: the bound address).
    #[arg(long, env = "SLUICE_ADVERTISE", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    /// TLS: the node's certificate and key, the cluster CA, or `--insecure`.
    #[command(flatten)]
    #[serde(flatten)]
    tls: TlsFlags,
    /// CA of etcd's server certificate (talk to etcd over TLS; URLs must be https://).
    #[arg(long, env = "SLUICE_ETCD_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd (etcd with --client-cert-auth).
    #[arg(long, env = "SLUICE_ETCD_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd_cert: Option<PathBuf>,
    /// Private key of the etcd client certificate.
    #[arg(long, env = "SLUICE_ETCD_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd_key: Option<PathBuf>,
    /// On a cluster that never had a token: create one admin token and write its secret
    /// to FILE (0600), once per prefix.
    #[arg(long, env = "SLUICE_BOOTSTRAP_TOKEN_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    bootstrap_token_file: Option<PathBuf>,
    /// Finished sessions older than this many days are deleted (default 400; at least 1).
    #[arg(long, env = "SLUICE_SESSION_HISTORY_DAYS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    session_history_days: Option<u32>,
    /// Finished sessions kept per job, newest first; older ones are deleted (default 400; at
    /// least 1).
    #[arg(long, env = "SLUICE_SESSION_HISTORY_PER_JOB", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    session_history_per_job: Option<u32>,
    /// Seconds between compactions of etcd's history (0-604800, a week; default 300; 0 turns
    /// it off).
    #[arg(long, env = "SLUICE_ETCD_COMPACTION_INTERVAL", value_name = "SECS",
          value_parser = value_parser!(u64).range(COMPACTION_INTERVAL_SECS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd_compaction_interval: Option<u64>,
    /// Seconds to wait for an agent's answer to RunTask before the attempt is withdrawn, and
    /// as long again for the withdrawal's answer (1-604800, a week; default 60).
    #[arg(long, env = "SLUICE_TASK_ANSWER_TIMEOUT", value_name = "SECS",
          value_parser = value_parser!(u64).range(TASK_ANSWER_TIMEOUT_SECS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    task_answer_timeout: Option<u64>,
    /// Threads that run the coordinator's tasks (1-1024, default: one per core; past the
    /// cores more only add switching, and each costs a stack). 1 runs them all on one
    /// thread, which spends less CPU per item where other busy processes share the cores.
    #[arg(long, env = "SLUICE_WORKER_THREADS", value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(WORKER_THREADS))]
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_threads: Option<usize>,
    /// Session watches (gRPC WatchSession, HTTP event streams) this coordinator serves at
    /// once; past it, and past 32 per caller, a new one is refused (RESOURCE_EXHAUSTED, HTTP
    /// 429). Default 512.
    #[arg(long, env = "SLUICE_MAX_WATCH_STREAMS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_watch_streams: Option<NonZeroUsize>,
    /// TOML file with any of these settings (keys are the long flag names).
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
}

// mimalloc: glibc's malloc took about a quarter of the coordinator's CPU over 100 sessions
// of 1,000 items (consolidating and unlinking freed chunks). Run it with
// `MIMALLOC_PURGE_DELAY=0` (its systemd unit, the local cluster and the test harness do):
// freed memory then goes back at once, and a large session's peak stays near what it holds.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice_proto::report::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    sluice_proto::security::tls::install_default_provider();
    let (flags, origins) = config::parse::<Flags>();
    let settings: Settings = config::load_from(&flags, &origins, flags.config.as_deref())?;
    let runtime = settings.runtime().context("cannot start the async runtime")?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let telemetry = sluice_proto::telemetry::init("sluice-coordinator");
    let served = serve_traced(settings).await;
    telemetry.shutdown().await;
    served
}

async fn serve_traced(settings: Settings) -> anyhow::Result<()> {
    let grpc = bind(&settings.listen).await?;
    let http = match &settings.http_listen {
        Some(address) => Some(bind(address).await?),
        None => None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    sluice_coordinator::run(settings, Listeners { grpc, http }, shutdown).await?;
    Ok(())
}

async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown signal received; handing sessions over");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_tls_cert_help_names_a_coordinator_certificate_only() {
        let help = Flags::command().render_help().to_string();
        assert!(help.contains("--kind coordinator --id ID"), "{help}");
        assert!(!help.contains("--kind agent"), "{help}");
    }
}
