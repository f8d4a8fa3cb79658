//! What the coordinator knows of agents: the registered set (an etcd watch) and one task-event
//! stream per agent.

pub(crate) mod acks;
pub(crate) mod directory;
pub(crate) mod links;

pub(crate) use directory::AgentDirectory;
