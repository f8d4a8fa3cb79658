//! What the coordinator knows of agents: the registered set (an etcd watch) and one task-event
//! stream per agent.

pub(crate) mod acks;
pub(crate) mod directory;
#[cfg(test)]
pub(crate) mod fake_agent;
pub(crate) mod links;
pub(crate) mod runs;

pub(crate) use directory::AgentDirectory;
