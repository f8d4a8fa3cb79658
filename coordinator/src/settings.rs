//! Coordinator settings, merged from flags, `SLUICE_*` variables and a TOML file.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

/// Everything a coordinator is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// etcd endpoints.
    #[serde(deserialize_with = "list")]
    pub(crate) etcd: Vec<String>,
    /// Address to listen on.
    pub listen: String,
    /// Address of the console, the HTTP API and `/metrics`; none when not set.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// Coordinator id.
    pub(crate) id: String,
    /// Lease TTL in seconds.
    #[serde(default = "default_lease_ttl")]
    pub(crate) lease_ttl: u64,
    /// Key prefix in etcd.
    #[serde(default = "default_prefix")]
    pub(crate) prefix: String,
    /// Address advertised to peers and agents (defaults to the bound address).
    #[serde(default)]
    pub(crate) advertise: Option<String>,
    /// Timeout of one etcd call, in milliseconds.
    #[serde(default = "default_etcd_timeout_ms")]
    pub(crate) etcd_timeout_ms: u64,
    /// Finished sessions older than this many days are deleted.
    #[serde(default = "default_history_days")]
    pub(crate) session_history_days: u32,
    /// Finished sessions kept per job.
    #[serde(default = "default_history_per_job")]
    pub(crate) session_history_per_job: u32,
    /// Seconds between compactions of etcd's history; 0 turns compaction off.
    #[serde(default = "default_compaction_interval")]
    pub(crate) etcd_compaction_interval: u64,
}

/// A year of nightly runs, with room for retries and manual starts.
fn default_history_days() -> u32 {
    400
}

fn default_history_per_job() -> u32 {
    400
}

/// What the Kubernetes API server uses for its etcd.
fn default_compaction_interval() -> u64 {
    300
}

fn default_lease_ttl() -> u64 {
    10
}

fn default_prefix() -> String {
    "/sluice".into()
}

fn default_etcd_timeout_ms() -> u64 {
    2000
}

fn list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => sluice_proto::config::split_list(&text),
        OneOrMany::Many(list) => list,
    })
}

impl Settings {
    /// Lease TTL (at least one second).
    pub(crate) fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl.max(1))
    }

    /// Timeout of one etcd call.
    pub(crate) fn etcd_timeout(&self) -> Duration {
        Duration::from_millis(self.etcd_timeout_ms.max(100))
    }

    /// How long finished sessions and schedule runs are kept, and how many per job.
    pub(crate) fn history(&self) -> crate::maintenance::History {
        crate::maintenance::History {
            max_age: Duration::from_secs(u64::from(self.session_history_days.max(1)) * 86_400),
            per_job: self.session_history_per_job.max(1) as usize,
        }
    }

    /// Time between compactions of etcd's history, if compaction is on.
    pub(crate) fn compaction_interval(&self) -> Option<Duration> {
        (self.etcd_compaction_interval > 0)
            .then(|| Duration::from_secs(self.etcd_compaction_interval))
    }

    /// The URL peers and agents reach this coordinator at.
    pub(crate) fn advertised_address(&self, bound: Option<SocketAddr>) -> String {
        match (&self.advertise, bound) {
            (Some(address), _) => address.clone(),
            (None, Some(bound)) => format!("http://{bound}"),
            (None, None) => format!("http://{}", self.listen),
        }
    }
}
