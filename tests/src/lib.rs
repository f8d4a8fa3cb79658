//! Cluster harness of the Sluice end-to-end tests.
//!
//! Everything here is real: an `etcd` process ([`Etcd`]), the built `sluice-coordinator` and
//! `sluice-agent` binaries as child processes ([`Cluster`], [`Node`]) talking gRPC on loopback,
//! and qcow2 disks made with `qemu-img` ([`disk`]). Tests isolate from each other through a
//! unique etcd key prefix per cluster, so one etcd serves a whole test-binary run
//! ([`Etcd::shared`]).
//!
//! Nothing sleeps in place of an event: tests wait for what they expect with [`wait_for`],
//! which fails naming what never happened and what it saw instead.
//!
//! Scenarios call the public API through [`api`] (one place for every call, wait and session
//! summary), define jobs with [`jobs::JobBuilder`] and share the helpers of their theme
//! ([`sessions`], [`stops`], [`computers`], [`manifests`], [`ownership`], [`tasks`],
//! [`records`], [`watch`]). A coordinator's HTTP server (console, JSON API, metrics) is
//! reached through [`http`].
//!
//! Clusters are secure by default ([`security`]): a CA per cluster made with the product's
//! own PKI code, TLS between every process, the harness calling as admin.
//!
//! Child processes are watched by a tiny shell watchdog each (see `watchdog.rs`), so they die
//! with the test process even when it is killed, without `prctl` or unsafe code.

pub mod api;
pub mod campaign;
pub mod cli;
mod cluster;
pub mod computers;
pub mod disk;
mod etcd;
pub mod etcd_cluster;
pub mod fixtures;
pub mod http;
pub mod jobs;
pub mod live;
mod logs;
pub mod manifests;
pub mod netns;
mod node;
pub mod ownership;
mod ports;
pub mod proxy;
pub mod raw_grpc;
pub mod records;
pub mod schedules;
pub mod security;
pub mod sessions;
pub mod stops;
pub mod tasks;
pub mod vm;
mod wait;
pub mod watch;
mod watchdog;

pub use cluster::{
    AgentSpec, BIN_DIR_ENV, Cluster, ClusterBuilder, EtcdClientTls, KEEP_ENV, binary,
};
pub use etcd::{Etcd, EtcdTls};
pub use node::{Node, Role};
pub use security::{ADMIN_PRINCIPAL, Pki};
pub use wait::{PATIENCE, wait_for};

/// Largest gRPC message the harness's clients send or accept (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A random key prefix such as `/t-3f9c0a12b7e4`, unique per test.
pub fn unique_prefix() -> String {
    format!("/t-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}
