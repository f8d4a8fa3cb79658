//! `sluice pki ...`: the cluster CA and the certificates of coordinators, agents, clients
//! and etcd. Works on files only; no coordinator is involved.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use sluice_proto::security::{
    access::Role,
    identity::Kind,
    pki::{self, DEFAULT_LEAF_DAYS, LeafSpec},
};

use crate::diagnose::with_article;
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
    /// and OUT/ca.crt, replacing files of those names.
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
    /// Coordinator or agent id (as its --id: 1-64 characters of a-z, 0-9, '.', '_' and '-'),
    /// client name, or etcd member name (A-Z allowed too).
    #[arg(long)]
    id: String,
    /// Agents in computer mode: the computer name (as the agent's --computer).
    #[arg(long)]
    computer: Option<String>,
    /// Clients: viewer, operator, restore-operator or admin.
    #[arg(long, value_parser = parse_role)]
    role: Option<Role>,
    /// Servers: a DNS name or IP address peers reach it at (localhost and 127.0.0.1 are
    /// always included; anything else is refused); repeat for several.
    #[arg(long = "host", value_name = "NAME_OR_IP")]
    hosts: Vec<String>,
    /// Days of validity (at least 1).
    #[arg(long, default_value_t = DEFAULT_LEAF_DAYS, value_parser = parse_days)]
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

fn parse_days(text: &str) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(days) if days >= 1 => Ok(days),
        Ok(_) => Err("must be at least 1".to_string()),
        Err(_) => Err("must be a whole number of days, at least 1".to_string()),
    }
}

/// Refuses a flag the kind has no use for, naming that flag alone.
fn check_kind_flags(args: &IssueArgs) -> Result<(), Failure> {
    let kind = with_article(args.kind);
    if args.computer.is_some() && args.kind != Kind::Agent {
        return Err(Failure::usage(format!(
            "--computer is only for agents, not for {kind} certificate"
        )));
    }
    if args.role.is_some() && args.kind != Kind::Client {
        return Err(Failure::usage(format!(
            "--role is only for clients, not for {kind} certificate"
        )));
    }
    Ok(())
}

/// Runs one `pki` subcommand.
pub fn run(cmd: PkiCommand) -> Result<Exit, Failure> {
    match cmd {
        PkiCommand::Init { dir } => {
            pki::init_dir(&dir).map_err(|e| Failure::usage(e.to_string()))?;
            output::emit(&format!("wrote {0}/ca.crt and {0}/ca.key", dir.display()))?;
        }
        PkiCommand::Issue(args) => {
            check_kind_flags(&args)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(kind: Kind, computer: Option<&str>, role: Option<Role>) -> IssueArgs {
        IssueArgs {
            dir: "ca".into(),
            kind,
            id: "x".into(),
            computer: computer.map(str::to_string),
            role,
            hosts: Vec::new(),
            days: 1,
            out: "o".into(),
        }
    }

    #[test]
    fn a_flag_the_kind_has_no_use_for_is_named_alone() {
        let refused = check_kind_flags(&issue(Kind::Agent, Some("pc"), Some(Role::Admin)))
            .expect_err("--role for an agent");
        assert_eq!(
            refused.message(),
            "error: --role is only for clients, not for an agent certificate"
        );
        let refused = check_kind_flags(&issue(Kind::Coordinator, Some("pc"), None))
            .expect_err("--computer for a coordinator");
        assert_eq!(
            refused.message(),
            "error: --computer is only for agents, not for a coordinator certificate"
        );
        check_kind_flags(&issue(Kind::Agent, Some("pc"), None)).expect("an agent's computer");
        check_kind_flags(&issue(Kind::Client, None, Some(Role::Viewer))).expect("a client's role");
    }

    #[test]
    fn days_must_be_at_least_one() {
        assert_eq!(parse_days("0"), Err("must be at least 1".to_string()));
        assert!(parse_days("-3").is_err() && parse_days("soon").is_err());
        assert_eq!(parse_days("30"), Ok(30));
    }
}
