//! What the coordinator knows of agents: the registered set (an etcd watch) and one task-event
//! stream per agent.

pub mod directory;
pub mod links;

pub use directory::AgentDirectory;
