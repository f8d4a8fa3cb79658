//! The Sluice agent: runs backup tasks for coordinators and keeps their outcomes until
//! a coordinator acknowledges them.

pub mod error;
pub mod exec;
pub mod fsutil;
pub mod journal;
pub mod key;
pub mod settings;
pub mod tasks;

pub use error::AgentError;
pub use settings::Settings;
