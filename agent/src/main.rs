//! `sluice-agent`: parses flags, loads the configuration and runs the agent.
//! SIGTERM or Ctrl-C begins a drain; a second signal stops at once.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use clap::builder::BoolishValueParser;
use serde::Serialize;
use sluice_agent::{Settings, TRANSFER_RATE_LIMIT};
use sluice_proto::{
    config,
    security::flags::{TLS_CERT_ARG, TlsFlags},
    telemetry,
};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

// mimalloc: glibc's malloc, its frees and its consolidation of freed chunks took about a
// sixth of the agents' CPU while they ran 10,000 tasks a second (`perf record -a`, scale
// bench); the coordinator runs on it for the same reason. Run it with
// `MIMALLOC_PURGE_DELAY=0`, as its systemd unit, the local cluster and the test harness do:
// freed memory then goes back at once, at no CPU cost the bench could measure.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--tls-cert`'s help: an agent takes only an agent certificate naming its id.
const TLS_CERT_HELP: &str = "Certificate of this agent (`sluice pki issue --kind agent --id ID \
                             [--computer NAME]`, ID its --id)";

/// Runs backup tasks for Sluice coordinators.
#[derive(Debug, Parser, Serialize)]
#[command(name = "sluice-agent", version, mut_arg(TLS_CERT_ARG, |arg| arg.help(TLS_CERT_HELP)))]
#[serde(rename_all = "kebab-case")]
struct Flags {
    /// Coordinator endpoints, comma-separated (https://host:port; http:// with --insecure).
    #[arg(long, env = "SLUICE_COORDINATORS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinators: Option<String>,
    /// Address to serve AgentService on (host:port).
    #[arg(long, env = "SLUICE_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Agent id: 1-64 characters of a-z, 0-9, '.', '_' and '-' (as coordinators register
    /// it), not starting with '.'.
    #[arg(long, env = "SLUICE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// Task slots: tasks run at once (1-4096).
    #[arg(long, env = "SLUICE_SLOTS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    slots: Option<u32>,
    /// Directory of the task journal.
    #[arg(long, env = "SLUICE_STATE_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    state_dir: Option<PathBuf>,
    /// Computer name (computer mode).
    #[arg(long, env = "SLUICE_COMPUTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    computer: Option<String>,
    /// Seconds after which the agent counts as lost without a heartbeat (default 10;
    /// 1-3600).
    #[arg(long, env = "SLUICE_HEARTBEAT_TTL", value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_ttl: Option<u32>,
    /// Transfer rate limit in bytes per second (VM: the block jobs' speed; computer: reads;
    /// 1 to 1099511627776, 1 TiB/s).
    #[arg(long, env = "SLUICE_TRANSFER_RATE_LIMIT",
          value_parser = clap::value_parser!(u64).range(TRANSFER_RATE_LIMIT))]
    #[serde(skip_serializing_if = "Option::is_none")]
    transfer_rate_limit: Option<u64>,
    /// URL coordinators call this agent at: https://host:port (http:// with --insecure;
    /// default: the bound address).
    #[arg(long, env = "SLUICE_ADVERTISE", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    /// Seconds a drain lets running tasks finish before cancelling them (default 600).
    #[arg(long, env = "SLUICE_DRAIN_DEADLINE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    drain_deadline: Option<u32>,
    /// TLS: the node's certificate and key, the cluster CA, or `--insecure`.
    #[command(flatten)]
    #[serde(flatten)]
    tls: TlsFlags,
    /// Runs sim tasks (load tests and benchmarks only: they commit restore points without
    /// data); without it the agent refuses them. `=false` overrides the file.
    #[arg(
        long,
        env = "SLUICE_ENABLE_SIM_EXECUTOR",
        value_parser = BoolishValueParser::new(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    enable_sim_executor: Option<bool>,
    /// A folder repositories must lie under (repeatable; comma-separated in the variable).
    /// Without any, repositories at any absolute path are accepted.
    #[arg(long, env = "SLUICE_REPOSITORY_ROOT", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    repository_root: Vec<PathBuf>,
    /// A folder restores must write under (repeatable; comma-separated in the variable).
    /// Without any, restores into any absolute path are accepted, except inside the restore
    /// point's own repository (refused either way).
    #[arg(long, env = "SLUICE_RESTORE_ROOT", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    restore_root: Vec<PathBuf>,
    /// TOML file with any of these settings (keys are the long flag names).
    #[arg(long, env = "SLUICE_CONFIG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<PathBuf>,
}

// One runtime thread: the agent's async side only coordinates (calls, the task actor,
// QMP, the streams); file I/O, hashing and journal commits run on blocking threads. With
// two worker threads the bench's 20 agents spent 8-45 % more CPU per task (wake-ups and
// work stealing between the threads).
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    sluice_proto::report::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    // What the agent writes (restore points, the store's blobs, manifests, its journal)
    // holds the protected machines' data: readable by this agent's user only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    sluice_proto::security::tls::install_default_provider();
    let (flags, origins) = config::parse::<Flags>();
    let settings: Settings = config::load_from(&flags, &origins, flags.config.as_deref())?;
    let telemetry = telemetry::init("sluice-agent");
    let served = serve(settings).await;
    telemetry.shutdown().await;
    served
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listen = settings.listen.clone().context("--listen is required")?;
    let listener =
        TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let shutdown = CancellationToken::new();
    let drain = CancellationToken::new();
    tokio::spawn(watch_signals(drain.clone(), shutdown.clone()));
    sluice_agent::run(settings, listener, shutdown, drain).await?;
    Ok(())
}

/// First SIGTERM or Ctrl-C: drain. Second: stop at once.
async fn watch_signals(drain: CancellationToken, shutdown: CancellationToken) {
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            warn!(%error, "cannot listen for SIGTERM");
            return;
        }
    };
    let mut next_signal = async || {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    next_signal().await;
    info!("signal received: draining");
    drain.cancel();
    next_signal().await;
    warn!("second signal received: stopping at once");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str], toml: &str) -> Settings {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        let base = "coordinators = \"http://a:1\"\nid = \"a1\"\nslots = 1\nstate-dir = \"/s\"\n";
        std::fs::write(&file, format!("{base}{toml}")).expect("config");
        let flags = Flags::try_parse_from([&["sluice-agent"], args].concat()).expect("flags");
        config::load(&flags, Some(&file)).expect("settings")
    }

    #[test]
    fn the_tls_cert_help_names_an_agent_certificate_only() {
        use clap::CommandFactory;
        let help = Flags::command().render_help().to_string();
        assert!(help.contains("--kind agent --id ID"), "{help}");
        assert!(!help.contains("--kind coordinator"), "{help}");
    }

    /// The ranges `--help` states are the ones the agent (and every registry) checks.
    #[test]
    fn the_help_states_the_checked_ranges() {
        use clap::CommandFactory;
        use sluice_proto::node::{MAX_HEARTBEAT_TTL, MAX_SLOTS};
        let help = Flags::command().render_long_help().to_string();
        assert!(help.contains(&format!("(1-{MAX_SLOTS})")), "{help}");
        assert!(help.contains(&format!("1-{MAX_HEARTBEAT_TTL})")), "{help}");
        assert!(help.contains("--slots <N>") && help.contains("--heartbeat-ttl <SECS>"), "{help}");
    }

    #[test]
    fn the_sim_executor_is_off_unless_a_flag_or_the_file_turns_it_on() {
        assert!(!settings(&[], "").enable_sim_executor);
        assert!(settings(&["--enable-sim-executor"], "").enable_sim_executor);
        assert!(settings(&[], "enable-sim-executor = true\n").enable_sim_executor);
    }

    /// A boolean in the file is overridden by a flag given as well, either way.
    #[test]
    fn booleans_layer_like_other_values() {
        let on = "enable-sim-executor = true\ninsecure = true\n";
        let off = settings(&["--enable-sim-executor=false", "--insecure=false"], on);
        assert!(!off.enable_sim_executor && !off.insecure);
        let kept = settings(&[], on);
        assert!(kept.enable_sim_executor && kept.insecure);
        let given = settings(&["--insecure", "--enable-sim-executor=true"], "");
        assert!(given.enable_sim_executor && given.insecure);
    }

    #[test]
    fn the_transfer_rate_limit_has_a_range() {
        let parsed = |value: &str| Flags::try_parse_from(["a", "--transfer-rate-limit", value]);
        let error = parsed("18446744073709551615").err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("--transfer-rate-limit")));
        assert!(parsed("1099511627776").is_ok());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("agent.toml");
        let base = "coordinators = \"http://a:1\"\nid = \"a1\"\nslots = 1\nstate-dir = \"/s\"\n";
        std::fs::write(&file, format!("{base}transfer-rate-limit = 0\n")).expect("config");
        let flags = Flags::try_parse_from(["a"]).expect("flags");
        let error = config::load::<_, Settings>(&flags, Some(&file)).expect_err("0 is refused");
        let says = format!(
            "invalid configuration: transfer-rate-limit in {}: must be 1 to 1099511627776 bytes \
             per second, not 0",
            file.display()
        );
        assert_eq!(error.to_string(), says);
    }

    #[test]
    fn roots_repeat_and_flags_replace_the_files_list() {
        let args = ["--repository-root", "/a", "--repository-root", "/b", "--restore-root", "/r"];
        let given = settings(&args, "repository-root = [\"/file\"]\n");
        assert_eq!(given.repository_root, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(given.restore_root, [PathBuf::from("/r")]);
        let from_file = settings(&[], "repository-root = [\"/file\"]\n");
        assert_eq!(from_file.repository_root, [PathBuf::from("/file")]);
        assert!(from_file.restore_root.is_empty());
    }
}
