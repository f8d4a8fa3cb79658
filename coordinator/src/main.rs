//! `sluice-coordinator`: parses flags, loads config, starts telemetry and runs the coordinator.

use std::{io::Write, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use sluice_coordinator::Settings;
use tokio_util::sync::CancellationToken;

/// Sluice coordinator: keeps job sessions in etcd and dispatches tasks to agents.
#[derive(Debug, Parser, Serialize)]
#[command(version, about)]
#[serde(rename_all = "kebab-case")]
struct Flags {
    /// etcd endpoints, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(long, env = "SLUICE_ETCD", value_name = "URL[,URL]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd: Option<String>,
    /// Address to serve the API on (e.g. 0.0.0.0:7400).
    #[arg(long, env = "SLUICE_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Unique coordinator id.
    #[arg(long, env = "SLUICE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// Lease TTL in seconds: how long a dead coordinator keeps its sessions (default 10).
    #[arg(long, env = "SLUICE_LEASE_TTL", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ttl: Option<u64>,
    /// Key prefix in etcd (default /sluice).
    #[arg(long, env = "SLUICE_PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    /// URL peers and agents use to reach this coordinator (default: the bound address).
    #[arg(long, env = "SLUICE_ADVERTISE", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    /// Certificate of this coordinator (`sluice pki issue --kind coordinator`).
    #[arg(long, env = "SLUICE_TLS_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// Private key of the certificate.
    #[arg(long, env = "SLUICE_TLS_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// The cluster CA (`ca.crt`); agents and clients must present certificates it signed.
    #[arg(long, env = "SLUICE_TLS_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca: Option<PathBuf>,
    /// No TLS and no authentication: anyone who reaches the port can do anything.
    /// Development only.
    #[arg(long, env = "SLUICE_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    insecure: bool,
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
    /// TOML file with any of these settings (keys are the long flag names).
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_proto::security::tls::install_default_provider();
    let flags = Flags::parse();
    let settings: Settings = sluice_proto::config::load(&flags, flags.config.as_deref())?;
    let _telemetry = sluice_proto::telemetry::init("sluice-coordinator");
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    announce(&listener)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    sluice_coordinator::run(settings, listener, shutdown).await?;
    Ok(())
}

/// Prints the bound address, which tests and scripts read to find the coordinator.
fn announce(listener: &tokio::net::TcpListener) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", listener.local_addr()?)?;
    stdout.flush()?;
    Ok(())
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
