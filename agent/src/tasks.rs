//! The task actor: the agent's table of tasks, behind a cloneable handle.

pub mod state;
