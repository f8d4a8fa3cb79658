//! `sluice pki ...`: the cluster CA and the certificates of coordinators, agents, clients
//! and etcd. Works on files only; no coordinator is involved.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use sluice_proto::security::{
    access::Role,
    identity::Kind,
    pki::{self, DEFAULT_LEAF_DAYS, LeafSpec},
};

use crate::error::{Exit, Failure};
use crate::output;

/// `sluice pki ...`
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Make the cluster CA: DIR/ca.crt and DIR/ca.key (0600; keep it offline if you can).
    Init {
        /// Directory of the CA.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Issue a key and a certificate signed by the CA: OUT/<id>.crt, OUT/<id>.key (0600)
    /// and OUT/ca.crt.
    Issue(IssueArgs),
}

/// `sluice pki issue ...`
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Directory of the CA (from `pki init`).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// What the certificate is for: coordinator, agent, client or etcd.
    #[arg(long, value_parser = parse_kind)]
    kind: Kind,
    /// Coordinator or agent id (as its --id), client name, or etcd member name.
    #[arg(long)]
    id: String,
    /// Agents in computer mode: the computer name (as the agent's --computer).
    #[arg(long)]
    computer: Option<String>,
    /// Clients: viewer, operator, restore-operator or admin.
    #[arg(long, value_parser = parse_role)]
    role: Option<Role>,
    /// Servers: a DNS name or IP address peers reach it at (localhost and 127.0.0.1 are
    /// always included); repeat for several.
    #[arg(long = "host", value_name = "NAME_OR_IP")]
    hosts: Vec<String>,
    /// Days of validity.
    #[arg(long, default_value_t = DEFAULT_LEAF_DAYS)]
    days: i64,
    /// Directory to write the files to.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn parse_kind(name: &str) -> Result<Kind, String> {
    Kind::parse(name).ok_or_else(|| "must be coordinator, agent, client or etcd".to_string())
}

fn parse_role(name: &str) -> Result<Role, String> {
    Role::parse(name)
        .ok_or_else(|| "must be viewer, operator, restore-operator or admin".to_string())
}

/// Runs one `pki` subcommand.
pub fn run(cmd: PkiCommand) -> Result<Exit, Failure> {
    match cmd {
        PkiCommand::Init { dir } => {
            pki::init_dir(&dir).map_err(|e| Failure::usage(e.to_string()))?;
            output::emit(&format!("wrote {0}/ca.crt and {0}/ca.key", dir.display()))?;
        }
        PkiCommand::Issue(args) => {
            let spec = LeafSpec {
                kind: args.kind,
                id: args.id,
                computer: args.computer,
                role: args.role,
                hosts: args.hosts,
                valid_days: args.days,
            };
            let files = pki::issue_to_dir(&args.dir, &spec, &args.out)
                .map_err(|e| Failure::usage(e.to_string()))?;
            output::emit(&format!(
                "wrote {}, {} and {}",
                files.cert.display(),
                files.key.display(),
                files.ca.display()
            ))?;
        }
    }
    Ok(Exit::Success)
}
