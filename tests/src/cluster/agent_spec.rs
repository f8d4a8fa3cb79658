//! How the harness runs one agent.

/// How one agent is run.
#[derive(Debug, Clone, Default)]
pub struct AgentSpec {
    /// `--slots`; the builder's default when `None`.
    pub slots: Option<u32>,
    /// `--computer NAME`: computer mode.
    pub computer: Option<String>,
    /// `--transfer-rate-limit BYTES_PER_SEC`.
    pub transfer_rate_limit: Option<u64>,
    /// `--heartbeat-ttl`; the builder's default when `None`.
    pub heartbeat_ttl: Option<u32>,
    /// `--enable-sim-executor`; on unless `Some(false)` (harness agents run sim jobs).
    pub sim_executor: Option<bool>,
    /// `--coordinators`: where the agent heartbeats (e.g. a proxy in front of a coordinator);
    /// every coordinator of the cluster when `None`.
    pub heartbeat_to: Option<Vec<String>>,
    /// `--repository-root DIR`: the only repositories it writes or deletes in.
    pub repository_root: Option<String>,
}

impl AgentSpec {
    /// An agent with the builder's defaults.
    pub fn new() -> AgentSpec {
        AgentSpec::default()
    }

    /// Sets `--slots`.
    pub fn slots(mut self, slots: u32) -> AgentSpec {
        self.slots = Some(slots);
        self
    }

    /// Sets `--computer`.
    pub fn computer(mut self, name: &str) -> AgentSpec {
        self.computer = Some(name.to_string());
        self
    }

    /// Sets `--transfer-rate-limit`.
    pub fn transfer_rate_limit(mut self, bytes_per_sec: u64) -> AgentSpec {
        self.transfer_rate_limit = Some(bytes_per_sec);
        self
    }

    /// Sets `--heartbeat-ttl`.
    pub fn heartbeat_ttl(mut self, seconds: u32) -> AgentSpec {
        self.heartbeat_ttl = Some(seconds);
        self
    }

    /// Heartbeats to these URLs instead of the cluster's coordinators (the harness still
    /// checks that the agent is listed through the coordinators themselves).
    pub fn heartbeat_to(mut self, urls: &[String]) -> AgentSpec {
        self.heartbeat_to = Some(urls.to_vec());
        self
    }

    /// Sets `--repository-root`.
    pub fn repository_root(mut self, dir: &str) -> AgentSpec {
        self.repository_root = Some(dir.to_string());
        self
    }

    /// Passes `--enable-sim-executor` or not (default: passed).
    pub fn sim_executor(mut self, enabled: bool) -> AgentSpec {
        self.sim_executor = Some(enabled);
        self
    }
}
