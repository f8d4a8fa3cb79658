//! `sluice`: the operator command line of Sluice, a client of the coordinator's public API.
//!
//! This file holds only the flags and the dispatch; each command group lives in its own module
//! and all output formatting in [`output`].

mod access;
mod client;
mod cluster;
mod diagnose;
mod error;
mod job;
mod output;
mod pki;
mod restore_point;
mod schedule;
mod session;
mod settings;
mod stop;
mod token;
mod watch;

use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::{EnvFilter, filter::LevelFilter};

use crate::access::Access;
use crate::client::Ctx;
use crate::error::{Exit, Failure};
use crate::output::Format;
use crate::settings::{ConfigFile, Credentials, Sources};

/// Default coordinator endpoint (`https://`, or `http://` with `--insecure`).
const DEFAULT_ENDPOINT: &str = "127.0.0.1:7400";

/// The exit codes, shown at the end of `--help`.
const EXIT_CODES: &str = "Exit codes: 0 done (a watched session ended SUCCESS or WARNING), \
1 a watched session ended FAILED, 2 bad usage or input, 3 server, connection or output error.";

/// Operator command line of Sluice, the distributed backup-job orchestrator.
#[derive(Debug, Parser)]
#[command(name = "sluice", version = sluice_proto::VERSION, after_help = EXIT_CODES)]
// Under a heading of their own, a command's help lists its own options first.
#[command(next_help_heading = "Global options")]
pub struct Cli {
    /// Coordinator endpoint; a comma-separated list uses the first that answers within 5 s
    /// (the error names each one tried) [default: https://127.0.0.1:7400].
    #[arg(long, global = true, env = "SLUICE_ENDPOINT")]
    endpoint: Option<String>,
    /// Output format [default: table].
    #[arg(long, global = true, env = "SLUICE_OUTPUT", value_enum)]
    output: Option<Format>,
    /// API token (from `sluice token create`, or a coordinator's bootstrap token file). On
    /// the command line other local users see it (`ps`): prefer SLUICE_TOKEN or
    /// --token-file. A token and --cert/--key given the same way (both flags, both
    /// variables) are refused; else the more explicit wins (a flag over a variable over the
    /// config file).
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the API token (read, trimmed), instead of --token.
    #[arg(long, global = true, env = "SLUICE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The cluster CA (`ca.crt`) the coordinator's certificate must chain to.
    #[arg(long, global = true, env = "SLUICE_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Client certificate (`sluice pki issue --kind client --role ROLE`), instead of a token
    /// (given more explicitly than the token, it wins: `--cert` over SLUICE_TOKEN).
    #[arg(long, global = true, env = "SLUICE_CERT", value_name = "FILE")]
    cert: Option<std::path::PathBuf>,
    /// Private key of the client certificate.
    #[arg(long, global = true, env = "SLUICE_KEY", value_name = "FILE")]
    key: Option<std::path::PathBuf>,
    /// Plaintext, for a development cluster whose coordinators run with --insecure
    /// (`--insecure=false` overrides the config file).
    #[arg(
        long,
        global = true,
        env = "SLUICE_INSECURE",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    insecure: Option<bool>,
    /// TOML file with any of the flags above, keys their long names (flags and SLUICE_*
    /// variables win).
    #[arg(long, global = true, env = "SLUICE_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Command groups.
#[derive(Debug, Subcommand)]
enum Command {
    /// Create, inspect, start and stop jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Stop every active session of the cluster (maintenance).
    Stop(StopAllArgs),
    /// Inspect, follow and retry job sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Inspect and drain agents.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Inspect coordinators.
    #[command(subcommand)]
    Coordinator(CoordinatorCommand),
    /// Inspect, verify and delete restore points.
    #[command(subcommand)]
    RestorePoint(RestorePointCommand),
    /// Restore a restore point into an empty directory: a computer's files, or a VM's qcow2
    /// disks. Runs as one task; interrupt it (Ctrl-C) to stop it, which removes what it wrote.
    Restore(RestoreArgs),
    /// Create, list and revoke API tokens (admin).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Show who the coordinator takes you for: name, kind and role.
    Whoami,
    /// Make the cluster CA and certificates (local files; no coordinator involved).
    #[command(subcommand)]
    Pki(pki::PkiCommand),
}

/// `sluice restore ID --to DIR`
#[derive(Debug, Args)]
struct RestoreArgs {
    /// Restore point id.
    id: String,
    /// Absolute directory, as the agent sees it; created if absent, refused if not empty.
    #[arg(long, value_name = "DIR")]
    to: String,
    /// Job of the restore point (found by searching every job when omitted).
    #[arg(long)]
    job: Option<String>,
    /// Agent to restore on (default: the computer's own agent, or a proxy for a VM).
    #[arg(long, value_name = "ID")]
    agent: Option<String>,
}

/// `sluice job ...`
#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Create a job from a TOML or JSON file.
    Create(JobFileArgs),
    /// List every job.
    List,
    /// Show one job.
    Show {
        /// Job name.
        name: String,
    },
    /// Delete a job that has no active session.
    Delete {
        /// Job name.
        name: String,
    },
    /// Replace a job's definition from a TOML or JSON file.
    Update(JobFileArgs),
    /// Start a session of a job.
    Start {
        /// Job name.
        name: String,
        /// Follow the session until it stops; the exit code follows its result.
        #[arg(long)]
        watch: bool,
        /// Active full: back every VM up in full, starting new chains.
        #[arg(long)]
        full: bool,
    },
    /// Stop the active session of a job.
    Stop {
        /// Job name.
        name: String,
        /// How to stop.
        #[command(flatten)]
        mode: ModeArgs,
        /// Graceful only: stop immediately what still runs after this many seconds
        /// (0 or absent: the job's graceful timeout; an earlier deadline than the one of a
        /// graceful stop in force takes its place).
        #[arg(long, value_name = "SECS", conflicts_with = "immediately")]
        timeout: Option<u32>,
    },
    /// Set, change, disable or clear a job's schedule.
    Schedule(schedule::ScheduleArgs),
    /// List what became of a job's recent scheduled due times, newest first.
    Runs {
        /// Job name.
        name: String,
    },
}

/// A job file argument.
#[derive(Debug, Args)]
struct JobFileArgs {
    /// Job file, TOML or JSON, with the field names of `sluice.v1.Job`.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: std::path::PathBuf,
}

/// Stop mode: exactly one of `--graceful` and `--immediately`.
#[derive(Debug, Clone, Copy, Args)]
#[group(required = true, multiple = false)]
struct ModeArgs {
    /// Let running tasks finish and commit; start nothing new.
    #[arg(long)]
    graceful: bool,
    /// Cancel running tasks at once; they leave no restore point.
    #[arg(long)]
    immediately: bool,
}

/// `sluice stop --all ...`
#[derive(Debug, Args)]
struct StopAllArgs {
    /// Stop every active session (required: the only form of `stop`).
    #[arg(long, required = true)]
    all: bool,
    /// How to stop.
    #[command(flatten)]
    mode: ModeArgs,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
}

/// `sluice session ...`
#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Show a session with its items (all of them unless a page is asked for) and how many
    /// are in each state.
    Show {
        /// Session id.
        id: String,
        /// Show the items from this one on (0: the first; at or past the end: none, the
        /// counts alone).
        #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
        item_offset: u32,
        /// Show at most this many items (0: every item from --item-offset on).
        #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
        item_limit: u32,
    },
    /// List sessions, newest first.
    List {
        /// Only the sessions of this job.
        job: Option<String>,
    },
    /// Follow a session until it stops; the exit code follows its result.
    Watch {
        /// Session id.
        id: String,
        /// Follow the items from this one on (0: the first; at or past the end: none, the
        /// counts alone).
        #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
        item_offset: u32,
        /// Follow at most this many items (0: every item from --item-offset on).
        #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
        item_limit: u32,
    },
    /// Start a new session of the failed and not-processed items of a finished one.
    Retry {
        /// Session id.
        id: String,
    },
    /// Stop a session (`job stop` stops a job's active one).
    Stop {
        /// Session id.
        id: String,
        /// How to stop.
        #[command(flatten)]
        mode: ModeArgs,
        /// Graceful only: stop immediately what still runs after this many seconds
        /// (0 or absent: the job's graceful timeout; an earlier deadline than the one of a
        /// graceful stop in force takes its place).
        #[arg(long, value_name = "SECS", conflicts_with = "immediately")]
        timeout: Option<u32>,
    },
}

/// `sluice agent ...`
#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// List the registered agents.
    List,
    /// Drain an agent: no new tasks, running ones finish, then it leaves.
    Drain {
        /// Agent id.
        id: String,
        /// Cancel what still runs after this many seconds (default 600).
        #[arg(long, value_name = "SECS")]
        deadline: Option<u32>,
    },
}

/// `sluice coordinator ...`
#[derive(Debug, Subcommand)]
enum CoordinatorCommand {
    /// List the live coordinators and the sessions each owns.
    List,
}

/// `sluice restore-point ...`
#[derive(Debug, Subcommand)]
enum RestorePointCommand {
    /// List the restore points of a job.
    List {
        /// Job name.
        job: String,
    },
    /// Read every byte of a restore point and compare it with its manifest; exits 1 and
    /// lists the problems when something differs.
    Verify {
        /// Restore point id.
        id: String,
        /// Job of the restore point (found by searching every job when omitted).
        #[arg(long)]
        job: Option<String>,
    },
    /// Delete a restore point (admin): its folder, then its catalog entry. Refused while a
    /// later restore point builds on it (delete newest first), while it is verified or
    /// restored, and while a session of its job runs.
    Delete {
        /// Restore point id.
        id: String,
        /// Job of the restore point (found by searching every job when omitted).
        #[arg(long)]
        job: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let sources = Sources::of(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    init_logs();
    let exit = run(cli, sources).await.unwrap_or_else(|failure| failure.report());
    exit.into()
}

/// Sends the logs of the libraries underneath (connection trouble, with `RUST_LOG=debug`) to
/// stderr, filtered by `RUST_LOG` (default `info`). The CLI exports no spans: it opens none.
fn init_logs() {
    // Libraries' warnings repeat what the `error:` line says (a refused certificate, say);
    // RUST_LOG shows them.
    let filter =
        EnvFilter::builder().with_default_directive(LevelFilter::ERROR.into()).from_env_lossy();
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    // Only fails when a subscriber is already installed, which then keeps the logs.
    drop(installed);
}

/// Runs one parsed command line and returns its exit status.
async fn run(cli: Cli, sources: Sources) -> Result<Exit, Failure> {
    let command = match cli.command {
        Command::Pki(cmd) => return pki::run(cmd),
        command => command,
    };
    let file = ConfigFile::read(cli.config.as_deref())?;
    let endpoint =
        cli.endpoint.or(file.endpoint.clone()).unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let credentials = Credentials {
        token: cli.token,
        token_file: cli.token_file,
        ca_cert: cli.ca_cert,
        cert: cli.cert,
        key: cli.key,
        insecure: cli.insecure,
    };
    let access = Access::from_flags(credentials.layered(sources, &file))?;
    let output = match (cli.output, file.output) {
        (Some(format), _) => format,
        (None, Some(text)) => clap::ValueEnum::from_str(&text, true).map_err(|_| {
            Failure::usage(format!("config: output must be table or json, got {text:?}"))
        })?,
        (None, None) => Format::Table,
    };
    let ctx = Ctx::new(endpoint, access, output);
    dispatch(&ctx, command).await.map_err(|failure| ctx.explain(failure))
}

/// Runs a command that talks to a coordinator.
async fn dispatch(ctx: &Ctx, command: Command) -> Result<Exit, Failure> {
    match command {
        Command::Job(cmd) => job::run(ctx, cmd).await,
        Command::Stop(args) => stop::stop_all(ctx, args.mode, args.yes).await,
        Command::Session(cmd) => session::run(ctx, cmd).await,
        Command::Agent(cmd) => cluster::run_agent(ctx, cmd).await,
        Command::Coordinator(CoordinatorCommand::List) => cluster::list_coordinators(ctx).await,
        Command::RestorePoint(RestorePointCommand::List { job }) => {
            restore_point::list(ctx, job).await
        }
        Command::RestorePoint(RestorePointCommand::Verify { id, job }) => {
            restore_point::verify(ctx, id, job.unwrap_or_default()).await
        }
        Command::RestorePoint(RestorePointCommand::Delete { id, job }) => {
            restore_point::delete(ctx, id, job.unwrap_or_default()).await
        }
        Command::Restore(args) => {
            let request = sluice_proto::pb::RestoreRestorePointRequest {
                job: args.job.unwrap_or_default(),
                restore_point_id: args.id,
                target_dir: args.to,
                agent: args.agent.unwrap_or_default(),
            };
            restore_point::restore(ctx, request).await
        }
        Command::Token(cmd) => token::run(ctx, cmd).await,
        Command::Whoami => token::whoami(ctx).await,
        Command::Pki(cmd) => pki::run(cmd),
    }
}

#[cfg(test)]
mod cli_tests;
#[cfg(test)]
mod fixtures;
