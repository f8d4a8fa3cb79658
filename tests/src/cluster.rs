//! A cluster of real coordinator and agent processes on one etcd key prefix.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use sluice_proto::pb::{
    cluster_service_client::ClusterServiceClient, job_service_client::JobServiceClient,
};
use tempfile::TempDir;
use tonic::transport::Channel;

use sluice_proto::security::{identity::Kind, pki::LeafSpec};

use crate::{
    Etcd, logs,
    node::{Node, Role},
    ports::free_port,
    proxy::Proxy,
    security::Pki,
    unique_prefix,
};

/// Environment variable naming the directory of the built binaries (default: the directory
/// above the test executable's `deps/`, i.e. `target/debug`).
pub const BIN_DIR_ENV: &str = "SLUICE_TEST_BIN_DIR";

/// Environment variable that keeps every cluster's temp dir, also of passing tests.
pub const KEEP_ENV: &str = "SLUICE_TEST_KEEP";
/// The coordinator's flag for its runtime threads.
const WORKER_THREADS: &str = "--worker-threads";

const DEFAULT_LEASE_TTL: u32 = 3;
const DEFAULT_HEARTBEAT_TTL: u32 = 3;
const DEFAULT_SLOTS: u32 = 2;

mod agent_spec;
pub use agent_spec::AgentSpec;

/// Builds a [`Cluster`]; see [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    coordinators: usize,
    agents: Vec<AgentSpec>,
    lease_ttl: u32,
    heartbeat_ttl: u32,
    slots: u32,
    etcd_url: Option<String>,
    coordinator_flags: Vec<(String, String)>,
    insecure: bool,
    bootstrap_token: bool,
    etcd_tls: Option<EtcdClientTls>,
}

/// What coordinators need to reach an etcd over TLS (`--etcd-ca --etcd-cert --etcd-key`).
#[derive(Debug, Clone)]
pub struct EtcdClientTls {
    /// CA of etcd's server certificate.
    pub ca: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

impl ClusterBuilder {
    /// Coordinators reach etcd over TLS with these files (see [`Etcd::dedicated_tls`]).
    pub fn etcd_tls(mut self, tls: EtcdClientTls) -> ClusterBuilder {
        self.etcd_tls = Some(tls);
        self
    }

    /// Runs every node with `--insecure` (plaintext, no authentication) instead of TLS.
    pub fn insecure(mut self) -> ClusterBuilder {
        self.insecure = true;
        self
    }

    /// Gives the first coordinator `--bootstrap-token-file` (see [`Cluster::bootstrap_token_file`]).
    pub fn bootstrap_token(mut self) -> ClusterBuilder {
        self.bootstrap_token = true;
        self
    }

    /// Number of coordinators (default 1).
    pub fn coordinators(mut self, count: usize) -> ClusterBuilder {
        self.coordinators = count;
        self
    }

    /// Adds `count` agents with the default settings.
    pub fn agents(mut self, count: usize) -> ClusterBuilder {
        self.agents.extend((0..count).map(|_| AgentSpec::new()));
        self
    }

    /// Adds one agent in computer mode (`--computer NAME`) per name, in that order.
    pub fn computers(mut self, names: &[&str]) -> ClusterBuilder {
        self.agents.extend(names.iter().map(|name| AgentSpec::new().computer(name)));
        self
    }

    /// Adds one agent.
    pub fn agent(mut self, spec: AgentSpec) -> ClusterBuilder {
        self.agents.push(spec);
        self
    }

    /// `--lease-ttl` of the coordinators, in seconds (default 3).
    pub fn lease_ttl(mut self, seconds: u32) -> ClusterBuilder {
        self.lease_ttl = seconds;
        self
    }

    /// Default `--heartbeat-ttl` of the agents, in seconds (default 3).
    pub fn heartbeat_ttl(mut self, seconds: u32) -> ClusterBuilder {
        self.heartbeat_ttl = seconds;
        self
    }

    /// Default `--slots` of the agents (default 2).
    pub fn slots(mut self, slots: u32) -> ClusterBuilder {
        self.slots = slots;
        self
    }

    /// Passes one more flag to every coordinator, e.g. `("--etcd-compaction-interval", "2")`.
    pub fn coordinator_flag(mut self, flag: &str, value: &str) -> ClusterBuilder {
        self.coordinator_flags.push((flag.to_string(), value.to_string()));
        self
    }

    /// Uses this etcd instead of the shared one (e.g. a dedicated [`Etcd`] a test restarts).
    pub fn etcd(mut self, etcd: &Etcd) -> ClusterBuilder {
        self.etcd_url = Some(etcd.url().to_string());
        self
    }

    /// Uses the etcd cluster whose members answer at `urls` (every coordinator's `--etcd`
    /// lists them all).
    pub fn etcd_members(mut self, urls: &[String]) -> ClusterBuilder {
        self.etcd_url = Some(urls.join(","));
        self
    }

    /// Starts the coordinators, then the agents, each waited for until ready.
    pub async fn start(self) -> Cluster {
        let etcd_url = self.etcd_url.clone().unwrap_or_else(|| Etcd::shared().url().to_string());
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-e2e-{}-", test_name()))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create the cluster's temp dir: {e}"));
        let pki = (!self.insecure).then(|| Pki::new(&dir.path().join("pki")));
        let mut cluster = Cluster {
            dir: Some(dir),
            pki,
            prefix: unique_prefix(),
            etcd_url,
            settings: self.clone(),
            coordinators: Vec::new(),
            agents: Vec::new(),
        };
        for _ in 0..self.coordinators {
            cluster.add_coordinator().await;
        }
        for spec in self.agents {
            cluster.add_agent(spec).await;
        }
        cluster
    }
}

/// Real coordinators and agents on a private etcd key prefix, torn down on drop. When the
/// test fails, the cluster's temp dir is kept and the tails of every log are printed
/// (`SLUICE_TEST_KEEP=1` keeps it always).
pub struct Cluster {
    dir: Option<TempDir>,
    pki: Option<Pki>,
    prefix: String,
    etcd_url: String,
    settings: ClusterBuilder,
    coordinators: Vec<Node>,
    agents: Vec<Node>,
}

impl Cluster {
    /// A builder with one coordinator, no agents, lease and heartbeat TTLs of 3 s.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            coordinators: 1,
            agents: Vec::new(),
            lease_ttl: DEFAULT_LEASE_TTL,
            heartbeat_ttl: DEFAULT_HEARTBEAT_TTL,
            slots: DEFAULT_SLOTS,
            etcd_url: None,
            insecure: false,
            bootstrap_token: false,
            etcd_tls: None,
            coordinator_flags: Vec::new(),
        }
    }

    /// The cluster's CA and certificates; `None` when it runs `--insecure`.
    pub fn pki(&self) -> Option<&Pki> {
        self.pki.as_ref()
    }

    /// Flags that let the `sluice` CLI reach the cluster as the harness's admin.
    pub fn cli_flags(&self) -> Vec<String> {
        self.pki.as_ref().map_or_else(|| vec!["--insecure".to_string()], Pki::cli_flags)
    }

    /// Where the first coordinator writes the bootstrap token (with
    /// [`ClusterBuilder::bootstrap_token`]).
    pub fn bootstrap_token_file(&self) -> PathBuf {
        self.dir().join("c1").join("bootstrap.token")
    }

    /// The etcd key prefix of this cluster, e.g. `/t-3f9c0a12b7e4`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// URL of the etcd the cluster uses.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// Connects an etcd client to the cluster's etcd (keys live under [`Cluster::prefix`]).
    pub async fn etcd_client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.etcd_url.split(',').collect::<Vec<_>>(), None)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to etcd at {}: {e}", self.etcd_url))
    }

    /// The cluster's temp dir (logs, agent state dirs; a place for disks and repositories).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or_else(|| Path::new("/nonexistent"), TempDir::path)
    }

    /// Coordinator `index` (from 0; its id is `c{index + 1}`).
    pub fn coordinator(&mut self, index: usize) -> &mut Node {
        let count = self.coordinators.len();
        self.coordinators
            .get_mut(index)
            .unwrap_or_else(|| panic!("no coordinator {index}: the cluster has {count}"))
    }

    /// Agent `index` (from 0; its id is `a{index + 1}`).
    pub fn agent(&mut self, index: usize) -> &mut Node {
        let count = self.agents.len();
        self.agents
            .get_mut(index)
            .unwrap_or_else(|| panic!("no agent {index}: the cluster has {count}"))
    }

    /// Every coordinator.
    pub fn coordinators(&self) -> &[Node] {
        &self.coordinators
    }

    /// Every agent.
    pub fn agents(&self) -> &[Node] {
        &self.agents
    }

    /// URLs of every coordinator, as agents get them in `--coordinators`.
    pub fn coordinator_urls(&self) -> Vec<String> {
        self.coordinators.iter().map(Node::url).collect()
    }

    /// `JobService` client of the first running coordinator.
    pub async fn job_client(&mut self) -> JobServiceClient<Channel> {
        self.first_running_coordinator().job_client().await
    }

    /// `ClusterService` client of the first running coordinator.
    pub async fn cluster_client(&mut self) -> ClusterServiceClient<Channel> {
        self.first_running_coordinator().cluster_client().await
    }

    fn first_running_coordinator(&mut self) -> &Node {
        let index = self
            .coordinators
            .iter_mut()
            .position(Node::is_running)
            .unwrap_or_else(|| panic!("no coordinator is running"));
        &self.coordinators[index]
    }

    /// Starts one more coordinator and waits until it serves.
    pub async fn add_coordinator(&mut self) -> &mut Node {
        let etcd_url = self.etcd_url.clone();
        self.add_coordinator_with_etcd(&etcd_url).await
    }

    /// Starts one more coordinator whose `--etcd` is `etcd_url` instead of the cluster's etcd
    /// (e.g. a [`crate::proxy::Proxy`] in front of it), and waits until it serves. Start it
    /// before the agents that should heartbeat to it.
    pub async fn add_coordinator_with_etcd(&mut self, etcd_url: &str) -> &mut Node {
        let id = format!("c{}", self.coordinators.len() + 1);
        let mut args = flags([
            ("--etcd", etcd_url.to_string()),
            ("--id", id.clone()),
            ("--lease-ttl", self.settings.lease_ttl.to_string()),
            ("--prefix", self.prefix.clone()),
        ]);
        args.extend(self.security_flags(LeafSpec::new(Kind::Coordinator, &id)));
        if let Some(tls) = &self.settings.etcd_tls {
            args.extend(flags([
                ("--etcd-ca", tls.ca.display().to_string()),
                ("--etcd-cert", tls.cert.display().to_string()),
                ("--etcd-key", tls.key.display().to_string()),
            ]));
        }
        if self.settings.bootstrap_token && self.coordinators.is_empty() {
            args.extend(flags([(
                "--bootstrap-token-file",
                self.bootstrap_token_file().display().to_string(),
            )]));
        }
        for (flag, value) in &self.settings.coordinator_flags {
            args.extend([OsString::from(flag), OsString::from(value)]);
        }
        // Each cluster's first coordinator runs on one runtime thread, the others on the
        // default one per core: every test covers the first, and a takeover both.
        let threads_given =
            self.settings.coordinator_flags.iter().any(|(f, _)| f == WORKER_THREADS);
        if self.coordinators.is_empty() && !threads_given {
            args.extend(flags([(WORKER_THREADS, "1".to_string())]));
        }
        let program = binary("sluice-coordinator");
        let dir = self.dir().join(&id);
        let mut node = Node::new(&id, Role::Coordinator, program, args, dir, self.pki.clone());
        node.launch().await;
        self.coordinators.push(node);
        let last = self.coordinators.len() - 1;
        &mut self.coordinators[last]
    }

    /// Starts one more agent whose advertised address is a [`Proxy`] in front of it, so that
    /// every call a coordinator makes to it (RunTask, WatchTasks, AckTasks, ...) goes through
    /// the proxy; its heartbeats do not. Returns the proxy.
    pub async fn add_agent_behind_proxy(&mut self, spec: AgentSpec) -> Proxy {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proxy = Proxy::start(addr);
        // The proxy forwards bytes: TLS passes through it to the agent.
        let url = match self.pki {
            Some(_) => proxy.url().replacen("http://", "https://", 1),
            None => proxy.url(),
        };
        self.start_agent(spec, Some((addr, url))).await;
        proxy
    }

    /// Starts one more agent, heartbeating to every coordinator, and waits until it is listed.
    pub async fn add_agent(&mut self, spec: AgentSpec) -> &mut Node {
        self.start_agent(spec, None).await
    }

    async fn start_agent(
        &mut self,
        spec: AgentSpec,
        advertised: Option<(SocketAddr, String)>,
    ) -> &mut Node {
        assert!(!self.coordinators.is_empty(), "start a coordinator before the agents");
        let id = format!("a{}", self.agents.len() + 1);
        let dir = self.dir().join(&id);
        let coordinators = self.coordinator_urls();
        let slots = spec.slots.unwrap_or(self.settings.slots);
        let ttl = spec.heartbeat_ttl.unwrap_or(self.settings.heartbeat_ttl);
        let heartbeat_to = spec.heartbeat_to.clone().unwrap_or_else(|| coordinators.clone());
        let mut args = flags([
            ("--coordinators", heartbeat_to.join(",")),
            ("--id", id.clone()),
            ("--slots", slots.to_string()),
            ("--state-dir", dir.join("state").display().to_string()),
            ("--heartbeat-ttl", ttl.to_string()),
        ]);
        if let Some(computer) = &spec.computer {
            args.extend(flags([("--computer", computer.clone())]));
        }
        if let Some(limit) = spec.transfer_rate_limit {
            args.extend(flags([("--transfer-rate-limit", limit.to_string())]));
        }
        if let Some(root) = &spec.repository_root {
            args.extend(flags([("--repository-root", root.clone())]));
        }
        if spec.sim_executor != Some(false) {
            args.push("--enable-sim-executor".into());
        }
        let mut cert = LeafSpec::new(Kind::Agent, &id);
        cert.computer = spec.computer.clone();
        args.extend(self.security_flags(cert));
        let role = Role::Agent { coordinators };
        let mut node = Node::new(&id, role, binary("sluice-agent"), args, dir, self.pki.clone());
        if let Some((addr, url)) = advertised {
            node.advertise_at(addr, url);
        }
        node.launch().await;
        self.agents.push(node);
        let last = self.agents.len() - 1;
        &mut self.agents[last]
    }
}

impl Cluster {
    /// `--tls-cert/--tls-key/--tls-ca` with a new certificate for `spec`, or `--insecure`.
    fn security_flags(&self, spec: LeafSpec) -> Vec<OsString> {
        let Some(pki) = &self.pki else { return vec![OsString::from("--insecure")] };
        let files = pki.issue(&spec);
        pki.node_flags(&files)
            .into_iter()
            .flat_map(|(flag, value)| [OsString::from(flag), OsString::from(value)])
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.agents.iter_mut().chain(self.coordinators.iter_mut()) {
            node.teardown();
        }
        let failed = std::thread::panicking();
        if !failed && std::env::var_os(KEEP_ENV).is_none() {
            return;
        }
        let logs: Vec<PathBuf> =
            self.coordinators.iter().chain(&self.agents).flat_map(Node::log_paths).collect();
        if failed {
            logs::print_tails(logs.iter().map(PathBuf::as_path));
        }
        if let Some(dir) = self.dir.take() {
            let why = if failed { "test failed" } else { KEEP_ENV };
            eprintln!(
                "sluice-tests: {why}; kept the cluster dir {} (etcd prefix {})",
                dir.keep().display(),
                self.prefix
            );
        }
    }
}

fn flags<const N: usize>(pairs: [(&str, String); N]) -> Vec<OsString> {
    pairs
        .into_iter()
        .flat_map(|(flag, value)| [OsString::from(flag), OsString::from(value)])
        .collect()
}

/// Path of a built binary of the workspace, next to the test executable's `deps/` folder.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| {
                // A test runs from `target/<profile>/deps`; a harness binary such as the
                // campaign runs from `target/<profile>` itself, beside the node binaries.
                let dir = exe.parent()?;
                let beside = dir.join(name).is_file() && !dir.ends_with("deps");
                Some(if beside { dir.to_path_buf() } else { dir.parent()?.to_path_buf() })
            })
            .unwrap_or_else(|| panic!("cannot locate the test executable's directory")),
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build the binaries first with `cargo build --workspace` \
         (or set {BIN_DIR_ENV})",
        path.display()
    );
    path
}

/// The running test's name made safe for a file name (`jobs::crud` -> `jobs-crud`).
fn test_name() -> String {
    let name = std::thread::current().name().unwrap_or("test").to_string();
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    safe.chars().take(60).collect()
}
