//! Who may call what: roles, principals and the one table that maps every RPC of every
//! Sluice server to what it needs. A method missing from the table is refused (fail closed:
//! UNIMPLEMENTED, as no service has it),
//! and a test checks the table against the service definitions, so a new RPC cannot be left
//! open by accident.

use std::fmt;

use super::identity::{CertIdentity, Kind};
use crate::pb;

/// What a principal may do. Every role reads; `admin` does everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Starts, stops and retries sessions; verifies restore points.
    Operator,
    /// Restores restore points.
    RestoreOperator,
    /// Everything: jobs, tokens, StopAll, drains.
    Admin,
}

impl Role {
    /// Every role, smallest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::RestoreOperator, Role::Admin];

    /// The role's name on the wire and the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::RestoreOperator => "restore-operator",
            Role::Admin => "admin",
        }
    }

    /// The role of that name.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }

    /// Whether this role may do what `needed` may: the same role, admin, or reading.
    pub fn grants(self, needed: Role) -> bool {
        self == needed || self == Role::Admin || needed == Role::Viewer
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a method needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health and reflection.
    Public,
    /// Any authenticated principal (`WhoAmI`).
    Authenticated,
    /// A principal with a role that grants this one.
    Role(Role),
    /// A certificate of this kind: agents heartbeat, coordinators drive agents.
    Peer(Kind),
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A bearer API token.
    Token,
    /// A certificate of the cluster CA.
    Cert(Kind),
    /// Nobody: the server runs with `--insecure` and checks nothing.
    Insecure,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// How it authenticated.
    pub kind: PrincipalKind,
    /// Token name or certificate id.
    pub name: String,
    /// Its role, for tokens and client certificates.
    pub role: Option<Role>,
    /// An agent certificate's computer name.
    pub computer: Option<String>,
    /// A token's id: the streams it opened end when the token is revoked.
    pub token_id: Option<String>,
}

/// Why an authenticated principal may not make a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Its role is too small (or it has none).
    #[error("requires role {0}")]
    Role(Role),
    /// The method is only for certificates of another kind.
    #[error("requires a certificate of kind {0}")]
    Peer(Kind),
    /// The method is in no table, so no Sluice service has it (a test holds the table to
    /// the services): UNIMPLEMENTED, whoever calls.
    #[error("unknown method {0}: no service of this server has it")]
    Unlisted(String),
}

impl Principal {
    /// The caller of a server that runs with `--insecure`.
    pub fn insecure() -> Principal {
        Principal {
            kind: PrincipalKind::Insecure,
            name: "insecure".into(),
            role: None,
            computer: None,
            token_id: None,
        }
    }

    /// The principal of a verified certificate. A client certificate's role must be known,
    /// else it has none (and can do nothing that needs one).
    pub fn from_cert(identity: CertIdentity) -> Principal {
        let role = match identity.kind {
            Kind::Client => identity.role.as_deref().and_then(Role::parse),
            _ => None,
        };
        Principal {
            kind: PrincipalKind::Cert(identity.kind),
            name: identity.id,
            role,
            computer: identity.computer,
            token_id: None,
        }
    }

    /// Whether this principal may call a method that needs `need`.
    pub fn authorize(&self, need: Need) -> Result<(), Denied> {
        if self.kind == PrincipalKind::Insecure {
            return Ok(());
        }
        match need {
            Need::Public | Need::Authenticated => Ok(()),
            Need::Role(needed) => match self.role {
                Some(role) if role.grants(needed) => Ok(()),
                _ => Err(Denied::Role(needed)),
            },
            Need::Peer(kind) if self.kind == PrincipalKind::Cert(kind) => Ok(()),
            Need::Peer(kind) => Err(Denied::Peer(kind)),
        }
    }

    /// The `kind` field of the wire principal.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            PrincipalKind::Token => "token",
            PrincipalKind::Cert(kind) => kind.as_str(),
            PrincipalKind::Insecure => "insecure",
        }
    }

    /// The role as WhoAmI names it: `admin` for anyone while security is off (anyone may do
    /// everything), empty for none.
    pub fn role_name(&self) -> &'static str {
        match (self.kind, self.role) {
            (PrincipalKind::Insecure, _) => Role::Admin.as_str(),
            (_, Some(role)) => role.as_str(),
            (_, None) => "",
        }
    }

    /// The wire form (`WhoAmI`).
    pub fn to_pb(&self) -> pb::Principal {
        pb::Principal {
            name: self.name.clone(),
            role: self.role_name().to_string(),
            kind: self.kind_name().to_string(),
        }
    }
}

/// `token:NAME`, `client:ID`, `agent:ID`, `coordinator:ID` or `insecure`: how sessions,
/// tokens and logs record who did something.
impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PrincipalKind::Insecure => f.write_str("insecure"),
            _ => write!(f, "{}:{}", self.kind_name(), self.name),
        }
    }
}

/// Every RPC of every Sluice server and what it needs.
pub const ACCESS: &[(&str, Need)] = &[
    // Health and reflection: anyone, so probes and grpcurl work without credentials.
    ("/grpc.health.v1.Health/Check", Need::Public),
    ("/grpc.health.v1.Health/Watch", Need::Public),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Need::Public),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Need::Public),
    // Jobs, sessions, restore points.
    ("/sluice.v1.JobService/CreateJob", Need::Role(Role::Admin)),
    ("/sluice.v1.JobService/GetJob", Need::Role(Role::Viewer)),
    ("/sluice.v1.JobService/ListJobs", Need::Role(Role::Viewer)),
    ("/sluice.v1.JobService/UpdateJob", Need::Role(Role::Admin)),
    ("/sluice.v1.JobService/DeleteJob", Need::Role(Role::Admin)),
    ("/sluice.v1.JobService/StartJob", Need::Role(Role::Operator)),
    ("/sluice.v1.JobService/StopJob", Need::Role(Role::Operator)),
    ("/sluice.v1.JobService/StopAll", Need::Role(Role::Admin)),
    ("/sluice.v1.JobService/RetrySession", Need::Role(Role::Operator)),
    ("/sluice.v1.JobService/GetSession", Need::Role(Role::Viewer)),
    ("/sluice.v1.JobService/ListSessions", Need::Role(Role::Viewer)),
    ("/sluice.v1.JobService/WatchSession", Need::Role(Role::Viewer)),
    ("/sluice.v1.JobService/ListRestorePoints", Need::Role(Role::Viewer)),
    ("/sluice.v1.JobService/VerifyRestorePoint", Need::Role(Role::Operator)),
    ("/sluice.v1.JobService/RestoreRestorePoint", Need::Role(Role::RestoreOperator)),
    ("/sluice.v1.JobService/DeleteRestorePoint", Need::Role(Role::Admin)),
    ("/sluice.v1.JobService/ListScheduleRuns", Need::Role(Role::Viewer)),
    // Cluster.
    ("/sluice.v1.ClusterService/ListAgents", Need::Role(Role::Viewer)),
    ("/sluice.v1.ClusterService/DrainAgent", Need::Role(Role::Admin)),
    ("/sluice.v1.ClusterService/ListCoordinators", Need::Role(Role::Viewer)),
    // Tokens.
    ("/sluice.v1.AuthService/CreateToken", Need::Role(Role::Admin)),
    ("/sluice.v1.AuthService/ListTokens", Need::Role(Role::Admin)),
    ("/sluice.v1.AuthService/RevokeToken", Need::Role(Role::Admin)),
    ("/sluice.v1.AuthService/WhoAmI", Need::Authenticated),
    // Agents -> coordinators: the handler also checks that the agent speaks for itself.
    ("/sluice.v1.AgentRegistry/Heartbeat", Need::Peer(Kind::Agent)),
    // Coordinators -> coordinators.
    ("/sluice.v1.CoordinatorPeer/DeliverStop", Need::Peer(Kind::Coordinator)),
    // Coordinators -> agents.
    ("/sluice.v1.AgentService/RunTask", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/RunTasks", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/CancelTasks", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/ListTasks", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/AckTasks", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/AckTaskGroups", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/WatchTasks", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/Drain", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/VerifyRestorePoint", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/RestoreRestorePoint", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/DeleteRestorePoints", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/MergeRestorePoint", Need::Peer(Kind::Coordinator)),
    ("/sluice.v1.AgentService/CollectGarbage", Need::Peer(Kind::Coordinator)),
];

/// What the method at `path` (`/package.Service/Method`) needs; `None` = refuse it.
pub fn need_of(path: &str) -> Option<Need> {
    ACCESS.iter().find(|(listed, _)| *listed == path).map(|(_, need)| *need)
}

/// Whether a method changes something (or reads restore point data), so its calls are
/// written to the audit log.
pub fn is_audited(need: Need) -> bool {
    matches!(need, Need::Role(role) if role != Role::Viewer)
}

#[cfg(test)]
mod tests;
