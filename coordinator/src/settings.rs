//! Coordinator settings, merged from flags, `SLUICE_*` variables and a TOML file.

use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

use serde::Deserialize;
use sluice_proto::security::tls::{TlsError, Transport};

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
    #[serde(deserialize_with = "node_id")]
    pub(crate) id: String,
    /// Lease TTL in seconds.
    #[serde(default = "default_lease_ttl", deserialize_with = "lease_ttl_seconds")]
    pub(crate) lease_ttl: u64,
    /// Key prefix in etcd.
    #[serde(default = "default_prefix", deserialize_with = "key_prefix")]
    pub(crate) prefix: String,
    /// Address advertised to peers and agents (defaults to the bound address).
    #[serde(default)]
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
    #[serde(default = "default_compaction_interval")]
    pub(crate) etcd_compaction_interval: u64,
    /// Seconds an owner waits for an agent's answer to RunTask before it withdraws the
    /// attempt, and as long again for the withdrawal's answer.
    #[serde(default = "default_task_answer_timeout")]
    pub(crate) task_answer_timeout: u64,
    /// Threads that run the coordinator's tasks; one per core when not set.
    #[serde(default)]
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

/// The longest lease TTL: it is also how long a crashed coordinator's sessions wait for a
/// peer, so an hour is already far more than anyone wants.
const MAX_LEASE_TTL: u64 = 3600;

fn lease_ttl_seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let seconds = u64::deserialize(deserializer)?;
    if !(1..=MAX_LEASE_TTL).contains(&seconds) {
        let message = format!("lease-ttl must be 1 to {MAX_LEASE_TTL} seconds, not {seconds}");
        return Err(serde::de::Error::custom(message));
    }
    Ok(seconds)
}

fn history_days<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    at_least_one(deserializer, "session-history-days")
}

fn history_per_job<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    at_least_one(deserializer, "session-history-per-job")
}

/// A count of at least one: 0 would keep nothing, which no one means (and some read as "no
/// limit").
fn at_least_one<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    name: &str,
) -> Result<u32, D::Error> {
    let value = u32::deserialize(deserializer)?;
    if value == 0 {
        return Err(serde::de::Error::custom(format!("{name} must be at least 1")));
    }
    Ok(value)
}

/// An etcd key prefix: visible characters, at least one (`/sluice` by convention; prefixes
/// that clusters already run under, without a leading `/` or with a trailing one, still go).
fn key_prefix<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let prefix = String::deserialize(deserializer)?;
    if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        let message =
            format!("prefix must be a key path like /sluice, without spaces, not {prefix:?}");
        return Err(serde::de::Error::custom(message));
    }
    Ok(prefix)
}

/// The id rule of agents (`sluice_proto::node::check_id`): ids name etcd keys, sessions'
/// owners and certificates, so `''` or `a/b` must not start.
fn node_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let id = String::deserialize(deserializer)?;
    let field = sluice_proto::node::flag_field("--id", &id);
    sluice_proto::node::check_id(&field, &id).map_err(serde::de::Error::custom)?;
    Ok(id)
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

    /// TLS or `--insecure`, from the flags: refuses to run without either.
    pub(crate) fn transport(&self) -> Result<Transport, TlsError> {
        Transport::from_flags(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_ca.as_deref(),
            self.insecure,
        )
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
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_is_secure() {
        let example = include_str!("../../deploy/coordinator.toml");
        let settings: Settings = toml::from_str(example).expect("the example parses");
        assert!(matches!(settings.transport(), Ok(Transport::Tls(_))));
        let etcd = settings.etcd_tls().expect("etcd TLS flags").expect("etcd over TLS");
        assert!(etcd.identity.is_some(), "with a client certificate");
        assert!(settings.bootstrap_token_file.is_some());
        assert_eq!(settings.advertised_address(None), "https://192.0.2.10:7400");
    }

    /// A coordinator's id follows the agents' id rule, under `--insecure` too.
    #[test]
    fn the_id_follows_the_node_id_rule() {
        let base = "etcd = \"http://e:2379\"\nlisten = \"a:1\"\ninsecure = true\n";
        let parse = |id: &str| toml::from_str::<Settings>(&format!("{base}id = {id:?}\n"));
        assert_eq!(parse("coord-1.a_b").expect("a valid id").id, "coord-1.a_b");
        for bad in ["", "a/b", "Coord-A"] {
            let error = parse(bad).map(drop).expect_err(bad).to_string();
            assert!(error.contains(&format!("--id {bad:?}: ")), "{bad}: {error}");
        }
    }

    #[test]
    fn etcd_tls_flags_go_together() {
        let base = "etcd = \"https://e:2379\"\nlisten = \"a:1\"\nid = \"c1\"\ninsecure = true\n";
        let settings = |extra: &str| -> Settings {
            toml::from_str(&format!("{base}{extra}")).expect("settings parse")
        };
        assert!(settings("").etcd_tls().expect("no etcd TLS").is_none());
        assert!(settings("etcd-ca = \"/ca\"\n").etcd_tls().expect("CA only").is_some());
        assert!(settings("etcd-cert = \"/c\"\netcd-key = \"/k\"\n").etcd_tls().is_err());
        assert!(settings("etcd-ca = \"/ca\"\netcd-cert = \"/c\"\n").etcd_tls().is_err());
        assert_eq!(settings("").advertised_address(None), "http://a:1");
    }

    #[test]
    fn a_lease_ttl_shorter_than_an_etcd_election_is_warned_about() {
        let base = "etcd = \"http://e:2379\"\nlisten = \"a:1\"\nid = \"c1\"\ninsecure = true\n";
        let warning = |extra: &str| {
            let settings: Settings = toml::from_str(&format!("{base}{extra}")).expect("settings");
            settings.lease_ttl_warning()
        };
        let short = warning("lease-ttl = 3\n").expect("3 s is warned about");
        assert!(
            short.starts_with("--lease-ttl 3 s is below 5 s: an etcd leader election"),
            "{short}"
        );
        assert_eq!(warning("lease-ttl = 5\n"), None);
        assert_eq!(warning(""), None, "the default");
    }

    #[test]
    fn the_lease_ttl_and_the_prefix_are_checked() {
        let base = "etcd = \"http://e:2379\"\nlisten = \"a:1\"\nid = \"c1\"\ninsecure = true\n";
        let parse = |extra: &str| toml::from_str::<Settings>(&format!("{base}{extra}"));
        for (extra, says) in [
            ("lease-ttl = 0\n", "lease-ttl must be 1 to 3600 seconds, not 0"),
            ("lease-ttl = 99999999999\n", "not 99999999999"),
            ("prefix = \"\"\n", "prefix must be a key path"),
            ("prefix = \"/a b\"\n", "prefix must be a key path"),
            ("prefix = \"/a\\n\"\n", "prefix must be a key path"),
            ("session-history-per-job = 0\n", "session-history-per-job must be at least 1"),
            ("session-history-days = 0\n", "session-history-days must be at least 1"),
        ] {
            let error = parse(extra).expect_err(extra);
            assert!(error.to_string().contains(says), "{extra}: {error}");
        }
        let fine = parse("lease-ttl = 3\nprefix = \"/team-a/sluice\"\n").expect("valid");
        assert_eq!((fine.lease_ttl, fine.prefix.as_str()), (3, "/team-a/sluice"));
    }

    #[test]
    fn worker_threads_are_at_least_one() {
        let base = "etcd = \"http://e:2379\"\nlisten = \"a:1\"\nid = \"c1\"\ninsecure = true\n";
        let parse = |extra: &str| toml::from_str::<Settings>(&format!("{base}{extra}"));
        let error = parse("worker-threads = 0\n").expect_err("0 threads is refused");
        assert!(error.to_string().contains("nonzero"), "{error}");
        let one = parse("worker-threads = 1\n").expect("one thread");
        assert_eq!(
            one.runtime().expect("runtime").handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let two = parse("worker-threads = 2\n").expect("two threads");
        assert_eq!(
            two.runtime().expect("runtime").handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
        assert!(parse("").expect("default").worker_threads.is_none());
    }

    /// A limit of 0 would refuse every watch: it is a mistake, told at start.
    #[test]
    fn the_watch_stream_limit_is_at_least_one() {
        let base = "etcd = \"http://e:2379\"\nlisten = \"a:1\"\nid = \"c1\"\ninsecure = true\n";
        let parse = |extra: &str| toml::from_str::<Settings>(&format!("{base}{extra}"));
        let error = parse("max-watch-streams = 0\n").expect_err("0 is refused");
        assert!(error.to_string().contains("nonzero"), "{error}");
        assert_eq!(parse("").expect("default").max_watch_streams.get(), 512);
        assert_eq!(parse("max-watch-streams = 3\n").expect("3").max_watch_streams.get(), 3);
    }
}
