//! The wire contract of Sluice (`sluice.v1`), its domain rules and what every binary shares:
//! the ids of sessions, agents, jobs and tasks and the epoch (`ids`), the rules for node ids
//! and what an agent announces (`node`), configuration loading,
//! time conversions, schedules (due times, next runs, backup windows), the protobuf JSON
//! mapping (`json`) and security (TLS, certificates, principals and roles); with the
//! `telemetry` feature (the servers only), logging, span export and W3C trace-context
//! propagation.

pub mod codec;
pub mod config;
pub mod ids;
pub mod job;
pub mod json;
pub mod node;
pub mod progress;
pub mod reflection;
pub mod refusal;
pub mod report;
pub mod schedule;
pub mod security;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod time;

/// Generated protobuf and gRPC code of the `sluice.v1` package: the messages and clients,
/// then the servers, generated apart so that only they use [`codec::ServerCodec`].
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("sluice.v1");
    include!(concat!(env!("OUT_DIR"), "/server/sluice.v1.rs"));
}

/// Encoded file descriptor set for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sluice_descriptor");

/// Most tasks one `RunTasks` call may carry: an agent refuses more, a coordinator sends no
/// more in one call.
pub const MAX_RUN_TASKS: usize = 256;

/// Most groups one `AckTaskGroups` call may carry: an agent refuses more, a coordinator sends
/// no more in one call.
pub const MAX_ACK_GROUPS: usize = 256;

/// Version of the Sluice binaries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How often a gRPC server pings an HTTP/2 connection, and how long it waits for the
/// answer before closing it: the streams of a client that vanished (powered off, cut off
/// by a partition) end within a minute, not after the kernel's retransmissions (about 15).
pub const KEEPALIVE: (std::time::Duration, std::time::Duration) =
    (std::time::Duration::from_secs(30), std::time::Duration::from_secs(10));
