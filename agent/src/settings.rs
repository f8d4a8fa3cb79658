//! Settings of an agent, merged from flags, `SLUICE_*` variables and the `--config` file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use sluice_proto::job::JobError;
use sluice_proto::node;
use sluice_proto::security::tls::Transport;

use crate::error::AgentError;

/// Default heartbeat TTL in seconds.
pub(crate) const DEFAULT_HEARTBEAT_TTL: u32 = 10;
/// Default drain deadline in seconds.
pub(crate) const DEFAULT_DRAIN_DEADLINE: u32 = 600;

/// Everything an agent needs to run. Keys are the long flag names (kebab-case).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Coordinator endpoints, comma-separated (`http://host:port,...`).
    pub(crate) coordinators: String,
    /// Address to listen on (used by `main`; the library takes a bound listener).
    #[serde(default)]
    pub listen: Option<String>,
    /// Agent id.
    pub(crate) id: String,
    /// Task slots.
    pub(crate) slots: u32,
    /// Directory of the journal.
    pub(crate) state_dir: PathBuf,
    /// Computer name in computer mode.
    #[serde(default)]
    pub computer: Option<String>,
    /// Seconds after which the agent counts as lost without a heartbeat.
    #[serde(default = "default_ttl")]
    pub heartbeat_ttl: u32,
    /// Transfer rate limit in bytes per second (VM: the block jobs' `speed`; computer: reads).
    #[serde(default, deserialize_with = "rate_limit")]
    pub(crate) transfer_rate_limit: Option<u64>,
    /// Address announced to coordinators; defaults to `http://<bound addr>`.
    #[serde(default)]
    pub(crate) advertise: Option<String>,
    /// Seconds a drain lets running tasks finish before cancelling them.
    #[serde(default = "default_drain_deadline")]
    pub(crate) drain_deadline: u32,
    /// Certificate of this agent (kind agent, its id and computer name).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA: coordinators must present certificates it signed.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Plaintext and no authentication: development only.
    #[serde(default)]
    pub insecure: bool,
    /// Runs sim tasks (load tests and benchmarks only); an agent without it refuses them.
    #[serde(default)]
    pub enable_sim_executor: bool,
    /// Folders under which repositories may lie; none: any absolute path.
    #[serde(default)]
    pub repository_root: Vec<PathBuf>,
    /// Folders under which restores may write; none: any absolute path.
    #[serde(default)]
    pub restore_root: Vec<PathBuf>,
}

fn default_ttl() -> u32 {
    DEFAULT_HEARTBEAT_TTL
}

fn default_drain_deadline() -> u32 {
    DEFAULT_DRAIN_DEADLINE
}

/// `--transfer-rate-limit`'s range in bytes per second: 0 would move nothing, and past
/// 1 TiB/s no disk or link is held back (QEMU takes the speed as a signed 64-bit number).
pub const TRANSFER_RATE_LIMIT: std::ops::RangeInclusive<u64> = 1..=1 << 40;

fn rate_limit<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    sluice_proto::config::in_range(deserializer, &TRANSFER_RATE_LIMIT, "bytes per second").map(Some)
}

impl Settings {
    /// Settings with defaults for the optional fields (for tests and embedding).
    pub fn new(coordinators: &str, id: &str, slots: u32, state_dir: PathBuf) -> Self {
        Self {
            coordinators: coordinators.to_owned(),
            listen: None,
            id: id.to_owned(),
            slots,
            state_dir,
            computer: None,
            heartbeat_ttl: DEFAULT_HEARTBEAT_TTL,
            transfer_rate_limit: None,
            advertise: None,
            drain_deadline: DEFAULT_DRAIN_DEADLINE,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            insecure: false,
            enable_sim_executor: false,
            repository_root: Vec::new(),
            restore_root: Vec::new(),
        }
    }

    /// TLS or `--insecure`, from the flags: refuses to run without either.
    pub(crate) fn transport(&self) -> Result<Transport, AgentError> {
        Transport::from_flags(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_ca.as_deref(),
            self.insecure,
        )
        .map_err(|e| AgentError::Config(e.to_string()))
    }

    /// Checks the values that the agent cannot run without.
    pub(crate) fn validate(&self) -> Result<(), AgentError> {
        self.validate_announced()?;
        if self.transfer_rate_limit == Some(0) {
            return Err(AgentError::Config("--transfer-rate-limit must be at least 1".into()));
        }
        if self.coordinator_list().is_empty() {
            return Err(AgentError::Config("--coordinators must name an endpoint".into()));
        }
        let roots =
            [("--repository-root", &self.repository_root), ("--restore-root", &self.restore_root)];
        for (flag, roots) in roots {
            if let Some(relative) = roots.iter().find(|root| !root.is_absolute()) {
                let relative = relative.display();
                return Err(AgentError::Config(format!("{flag} {relative}: must be absolute")));
            }
        }
        Ok(())
    }

    /// Checks what every heartbeat announces by the rules each coordinator's registry
    /// applies: an agent it would refuse must not start, print `listening on` and retry.
    fn validate_announced(&self) -> Result<(), AgentError> {
        let config = |e: JobError| AgentError::Config(e.to_string());
        node::check_id(&node::flag_field("--id", &self.id), &self.id).map_err(config)?;
        let slots = format!("--slots {}", self.slots);
        node::check_slots(&slots, self.slots).map_err(config)?;
        let ttl = format!("--heartbeat-ttl {}", self.heartbeat_ttl);
        node::check_heartbeat_ttl(&ttl, self.heartbeat_ttl).map_err(config)?;
        if let Some(address) = &self.advertise {
            let scheme = self.scheme();
            if !node::address_fits(address, scheme) {
                let flag = node::flag_field("--advertise", address);
                let under = if self.insecure { " under --insecure" } else { "" };
                return Err(AgentError::Config(format!(
                    "{flag}: must be {scheme}://host:port{under}, the URL coordinators call \
                     this agent at"
                )));
            }
        }
        Ok(())
    }

    /// The scheme coordinators call this agent with: https, or http under `--insecure`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.insecure { "http" } else { "https" }
    }

    /// The coordinator endpoints.
    pub(crate) fn coordinator_list(&self) -> Vec<String> {
        sluice_proto::config::split_list(&self.coordinators)
    }

    /// The computer name, empty when not in computer mode.
    pub(crate) fn computer_name(&self) -> &str {
        self.computer.as_deref().unwrap_or_default()
    }

    /// Time between heartbeats: a third of the TTL, never below 100 ms.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        let third = Duration::from_millis(u64::from(self.heartbeat_ttl) * 1000 / 3);
        third.max(Duration::from_millis(100))
    }

    /// The configured drain deadline.
    pub(crate) fn drain_deadline(&self) -> Duration {
        Duration::from_secs(u64::from(self.drain_deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_interval_is_a_third_of_the_ttl() {
        let text = "coordinators = \"http://a:1, http://b:2\"\nid = \"a1\"\nslots = 2\n\
                    state-dir = \"/tmp/x\"\n";
        let settings: Settings = toml::from_str(text).expect("settings parse");
        assert_eq!(settings.heartbeat_ttl, DEFAULT_HEARTBEAT_TTL);
        assert_eq!(settings.coordinator_list(), vec!["http://a:1", "http://b:2"]);
        assert_eq!(settings.heartbeat_interval(), Duration::from_millis(3333));
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn the_example_configuration_is_secure() {
        let settings: Settings =
            toml::from_str(include_str!("../../deploy/agent.toml")).expect("the example parses");
        assert!(matches!(settings.transport(), Ok(Transport::Tls(_))));
        assert!(settings.validate().is_ok());
        let mut plain = settings.clone();
        plain.tls_cert = None;
        let refused = plain.transport().expect_err("half the TLS flags");
        assert_eq!(refused.to_string(), "invalid configuration: TLS needs --tls-cert as well");
    }

    #[test]
    fn roots_are_read_from_the_file_and_must_be_absolute() {
        let text = "coordinators = \"http://a:1\"\nid = \"a1\"\nslots = 2\n\
                    state-dir = \"/tmp/x\"\nrepository-root = [\"/srv/a\", \"/srv/b\"]\n\
                    restore-root = [\"restores\"]\n";
        let settings: Settings = toml::from_str(text).expect("settings parse");
        assert_eq!(settings.repository_root, [PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]);
        let error = settings.validate().expect_err("a relative root");
        assert_eq!(
            error.to_string(),
            "invalid configuration: --restore-root restores: must be absolute"
        );
    }

    fn refusal(settings: &Settings) -> String {
        settings.validate().map_err(|e| e.to_string()).expect_err("refused")
    }

    /// What every coordinator would refuse in a heartbeat is refused at start, naming the
    /// flag.
    #[test]
    fn values_every_coordinator_refuses_are_refused_at_start() {
        let base = Settings::new("http://a:1", "a1", 1, PathBuf::from("/tmp"));
        let invalid = "invalid configuration: ";
        let id = Settings { id: "Proxy-A".into(), ..base.clone() };
        let expected = "--id \"Proxy-A\": may hold only a-z, 0-9, '.', '_' and '-', found 'P'";
        assert_eq!(refusal(&id), format!("{invalid}{expected}"));
        for bad in ["", "a/b", "x y"] {
            assert!(Settings { id: bad.into(), ..base.clone() }.validate().is_err(), "{bad:?}");
        }
        let slots = Settings { slots: 5000, ..base.clone() };
        assert_eq!(refusal(&slots), format!("{invalid}--slots 5000: must be 1-4096"));
        assert!(Settings { slots: 0, ..base.clone() }.validate().is_err());
        let ttl = Settings { heartbeat_ttl: 3601, ..base.clone() };
        assert_eq!(refusal(&ttl), format!("{invalid}--heartbeat-ttl 3601: must be 1-3600 seconds"));
        let url = Settings { advertise: Some("not a url".into()), ..base.clone() };
        assert_eq!(
            refusal(&url),
            format!(
                "{invalid}--advertise \"not a url\": must be https://host:port, the URL \
                 coordinators call this agent at"
            )
        );
        let plain = Settings { advertise: Some("http://h:1".into()), ..base.clone() };
        assert!(plain.validate().is_err(), "http:// needs --insecure");
        let insecure = Settings { insecure: true, ..plain };
        assert!(insecure.validate().is_ok());
        let refused = Settings { advertise: Some("https://h:1".into()), ..insecure };
        assert!(refusal(&refused).contains("must be http://host:port under --insecure"));
    }
}
