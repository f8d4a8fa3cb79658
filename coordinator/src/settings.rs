//! Coordinator settings, merged from flags, `SLUICE_*` variables and a TOML file.

use std::{net::SocketAddr, num::NonZeroUsize, ops::RangeInclusive, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};
use sluice_proto::{
    config::{check_endpoint, in_range},
    security::tls::{TlsError, Transport, check_url},
};

/// Everything a coordinator is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// etcd endpoints.
    #[serde(deserialize_with = "etcd_endpoints")]
    pub(crate) etcd: Vec<String>,
    /// Address to listen on.
    pub listen: String,
    /// Address of the console, the HTTP API and `/metrics`; none when not set.
    #[serde(default)]
    pub http_listen: Option<String>,
    /// Coordinator id.
    #[serde(deserialize_with = "node_id")]
    pub(crate) id: String,
    /// Lease TTL in seconds.
    #[serde(default = "default_lease_ttl", deserialize_with = "lease_ttl_seconds")]
    pub(crate) lease_ttl: u64,
    /// Key prefix in etcd.
    #[serde(default = "default_prefix", deserialize_with = "key_prefix")]
    pub(crate) prefix: String,
    /// Address advertised to peers and agents (defaults to the bound address).
    #[serde(default, deserialize_with = "advertised_url")]
    pub(crate) advertise: Option<String>,
    /// Timeout of one etcd call, in milliseconds.
    #[serde(default = "default_etcd_timeout_ms")]
    pub(crate) etcd_timeout_ms: u64,
    /// Certificate of this coordinator (kind coordinator), served and shown to agents.
    #[serde(default)]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub(crate) tls_key: Option<PathBuf>,
    /// The cluster CA, which every peer and client certificate must chain to.
    #[serde(default)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Plaintext and no authentication: development only.
    #[serde(default)]
    pub(crate) insecure: bool,
    /// CA of etcd's server certificate: talk to etcd over TLS.
    #[serde(default)]
    pub(crate) etcd_ca: Option<PathBuf>,
    /// Client certificate presented to etcd.
    #[serde(default)]
    pub(crate) etcd_cert: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub(crate) etcd_key: Option<PathBuf>,
    /// On a cluster that never had a token, create one admin token and write its secret
    /// here (mode 0600); the coordinator that wins the race writes it, once per prefix.
    #[serde(default)]
    pub(crate) bootstrap_token_file: Option<PathBuf>,
    /// Finished sessions older than this many days are deleted.
    #[serde(default = "default_history_days", deserialize_with = "history_days")]
    pub(crate) session_history_days: u32,
    /// Finished sessions kept per job.
    #[serde(default = "default_history_per_job", deserialize_with = "history_per_job")]
    pub(crate) session_history_per_job: u32,
    /// Seconds between compactions of etcd's history; 0 turns compaction off.
    #[serde(default = "default_compaction_interval", deserialize_with = "compaction_interval")]
    pub(crate) etcd_compaction_interval: u64,
    /// Seconds an owner waits for an agent's answer to RunTask before it withdraws the
    /// attempt, and as long again for the withdrawal's answer.
    #[serde(default = "default_task_answer_timeout", deserialize_with = "answer_timeout")]
    pub(crate) task_answer_timeout: u64,
    /// Threads that run the coordinator's tasks; one per core when not set.
    #[serde(default, deserialize_with = "worker_threads")]
    pub(crate) worker_threads: Option<NonZeroUsize>,
    /// Session watches (gRPC `WatchSession` and HTTP event streams) open at most at once.
    #[serde(default = "default_max_watch_streams")]
    pub(crate) max_watch_streams: NonZeroUsize,
}

/// Default of `--max-watch-streams`.
fn default_max_watch_streams() -> NonZeroUsize {
    NonZeroUsize::new(512).unwrap_or(NonZeroUsize::MIN)
}

/// Default of `--task-answer-timeout`.
pub(crate) const DEFAULT_TASK_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

fn default_task_answer_timeout() -> u64 {
    DEFAULT_TASK_ANSWER_TIMEOUT.as_secs()
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

/// `--lease-ttl`'s range in seconds. The longest is also how long a crashed coordinator's
/// sessions wait for a peer, so an hour is already far more than anyone wants.
pub const LEASE_TTL_SECS: RangeInclusive<u64> = 1..=3600;

/// `--task-answer-timeout`'s range in seconds: 0 would withdraw every attempt before its
/// answer could come, and an agent that has not answered in a week never will.
pub const TASK_ANSWER_TIMEOUT_SECS: RangeInclusive<u64> = 1..=WEEK_SECS;

/// `--etcd-compaction-interval`'s range in seconds (0: off); past a week etcd's history
/// would grow with every write of a week's sessions.
pub const COMPACTION_INTERVAL_SECS: RangeInclusive<u64> = 0..=WEEK_SECS;

/// `--worker-threads`' range: past the cores, threads only add switching, and each costs a
/// stack; a few thousand are more than the OS lets one process start.
pub const WORKER_THREADS: RangeInclusive<u64> = 1..=1024;

const WEEK_SECS: u64 = 7 * 86_400;

fn lease_ttl_seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    in_range(deserializer, &LEASE_TTL_SECS, "seconds")
}

fn answer_timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    in_range(deserializer, &TASK_ANSWER_TIMEOUT_SECS, "seconds")
}

fn compaction_interval<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    in_range(deserializer, &COMPACTION_INTERVAL_SECS, "seconds (0: off)")
}

fn worker_threads<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<NonZeroUsize>, D::Error> {
    let threads = in_range(deserializer, &WORKER_THREADS, "threads")?;
    let threads = usize::try_from(threads).ok().and_then(NonZeroUsize::new);
    threads.map(Some).ok_or_else(|| serde::de::Error::custom("must be at least 1"))
}

fn history_days<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    at_least_one(deserializer)
}

fn history_per_job<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    at_least_one(deserializer)
}

/// A count of at least one: 0 would keep nothing, which no one means (and some read as "no
/// limit").
fn at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = u32::deserialize(deserializer)?;
    if value == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(value)
}

/// An etcd key prefix: a key path of visible characters under the root (`/sluice`; a
/// trailing `/` is dropped where keys are made).
fn key_prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let prefix = String::deserialize(deserializer)?;
    let visible = !prefix.chars().any(|c| c.is_whitespace() || c.is_control());
    if prefix.len() < 2 || !prefix.starts_with('/') || !visible {
        let message = format!("must be a key path like /sluice, without spaces, not {prefix:?}");
        return Err(serde::de::Error::custom(message));
    }
    Ok(prefix)
}

/// The id rule of agents (`sluice_proto::node::check_id`): ids name etcd keys, sessions'
/// owners and certificates, so `''` or `a/b` must not start.
fn node_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let id = String::deserialize(deserializer)?;
    // The config layer names the key: the error names only the value.
    let value = sluice_proto::node::flag_field("", &id);
    sluice_proto::node::check_id(value.trim_start(), &id).map_err(serde::de::Error::custom)?;
    Ok(id)
}

/// `--etcd`: each endpoint an http:// or https:// URL with a host and port.
fn etcd_endpoints<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    let endpoints = list(deserializer)?;
    if endpoints.is_empty() {
        return Err(serde::de::Error::custom("must list at least one etcd endpoint"));
    }
    for endpoint in &endpoints {
        check_endpoint(endpoint).map_err(serde::de::Error::custom)?;
    }
    Ok(endpoints)
}

/// `--advertise`: published to peers and `coordinator list`, so an http(s) URL with a host
/// and port (its scheme is checked against `--insecure` in [`Settings::transport`]).
fn advertised_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(deserializer)?;
    check_endpoint(&url).map_err(serde::de::Error::custom)?;
    Ok(Some(url))
}

fn default_etcd_timeout_ms() -> u64 {
    2000
}

fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
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

/// Below this lease TTL, an etcd leader election (a 3 s campaign with etcd's default 1 s
/// election timeout, during which no member renews leases) outlasts a coordinator's renewal
/// margin and fences it.
const SAFE_LEASE_TTL_SECS: u64 = 5;

impl Settings {
    /// What to warn about at start-up when the lease TTL is shorter than an etcd election.
    pub(crate) fn lease_ttl_warning(&self) -> Option<String> {
        (self.lease_ttl < SAFE_LEASE_TTL_SECS).then(|| {
            format!(
                "--lease-ttl {} s is below {SAFE_LEASE_TTL_SECS} s: an etcd leader election takes \
                 longer than this coordinator's lease can wait, so it fences itself and its \
                 sessions are taken over whenever etcd's leader fails (the default is 10 s)",
                self.lease_ttl
            )
        })
    }

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
            max_age: Duration::from_secs(u64::from(self.session_history_days) * 86_400),
            per_job: self.session_history_per_job as usize,
        }
    }

    /// How long an unanswered RunTask (then its withdrawal) is waited on; at least a second.
    pub(crate) fn task_answer_timeout(&self) -> Duration {
        Duration::from_secs(self.task_answer_timeout.max(1))
    }

    /// Time between compactions of etcd's history, if compaction is on.
    pub(crate) fn compaction_interval(&self) -> Option<Duration> {
        (self.etcd_compaction_interval > 0)
            .then(|| Duration::from_secs(self.etcd_compaction_interval))
    }

    /// The async runtime: tokio's current-thread runtime for one worker thread (no
    /// wake-ups or work stealing between threads), the multi-thread one otherwise.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.worker_threads.map(NonZeroUsize::get) {
            Some(1) => tokio::runtime::Builder::new_current_thread(),
            Some(threads) => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(threads);
                builder
            }
            None => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all().build()
    }

    /// The scheme of the HTTP server (`--http-listen`): HTTPS unless `--insecure`.
    pub(crate) fn http_scheme(&self) -> &'static str {
        if self.insecure { "http" } else { "https" }
    }

    /// The URL peers and agents reach this coordinator at.
    pub(crate) fn advertised_address(&self, bound: Option<SocketAddr>) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        match (&self.advertise, bound) {
            (Some(address), _) => address.clone(),
            (None, Some(bound)) => format!("{scheme}://{bound}"),
            (None, None) => format!("{scheme}://{}", self.listen),
        }
    }

    /// TLS or `--insecure`, from the flags: refuses to run without either, and an
    /// `--advertise` URL whose scheme the mode's peers would not speak.
    pub(crate) fn transport(&self) -> Result<Transport, TlsError> {
        let transport = Transport::from_flags(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_ca.as_deref(),
            self.insecure,
        )?;
        if let Some(url) = &self.advertise {
            check_url("--advertise", url, !transport.is_insecure())?;
        }
        Ok(transport)
    }

    /// etcd's TLS, when `--etcd-ca` (and optionally a client certificate) is given.
    pub(crate) fn etcd_tls(&self) -> Result<Option<EtcdTls>, TlsError> {
        let (ca, cert, key) = (&self.etcd_ca, &self.etcd_cert, &self.etcd_key);
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), None, None) => Ok(Some(EtcdTls { ca: ca.clone(), identity: None })),
            (Some(ca), Some(cert), Some(key)) => {
                Ok(Some(EtcdTls { ca: ca.clone(), identity: Some((cert.clone(), key.clone())) }))
            }
            (None, _, _) => {
                Err(TlsError::Flags("--etcd-cert and --etcd-key need --etcd-ca".into()))
            }
            _ => Err(TlsError::Flags("--etcd-cert and --etcd-key go together".into())),
        }
    }
}

/// Files of the TLS connection to etcd.
#[derive(Debug, Clone)]
pub(crate) struct EtcdTls {
    /// CA of etcd's server certificate.
    pub(crate) ca: PathBuf,
    /// Client certificate and key, for an etcd with `--client-cert-auth`.
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
}

#[cfg(test)]
mod tests;
