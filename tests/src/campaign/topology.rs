//! The campaign's cluster: a 3-member etcd cluster, coordinators and agents, and the links
//! between them that faults act on.
//!
//! On loopback every link goes through a harness [`Proxy`]: each coordinator reaches each
//! etcd member through its own proxy (`--etcd` lists three proxies), each agent heartbeats to
//! each coordinator through its own proxy (`--coordinators`), and every coordinator calls an
//! agent through one proxy in front of it (the agent's `--advertise`). In a [`Network`] of
//! namespaces each process has an address of its own instead, and a partition takes its
//! link down.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use futures::FutureExt;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::plan::Link;
use crate::{
    Node, Role, binary,
    etcd_cluster::{EtcdCluster, MemberHost},
    netns::Network,
    node::Placement,
    ports::free_port,
    proxy::Proxy,
    unique_prefix,
};

/// `--session-history-per-job` of the campaign's coordinators: more than any run starts.
const CAMPAIGN_HISTORY_PER_JOB: u32 = 1_000_000;

/// How the cluster is made.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Coordinators.
    pub coordinators: usize,
    /// Agents acting as proxies for VM and sim items.
    pub proxies: usize,
    /// Computer agents (`--computer pc-<n>`), after the proxies.
    pub computers: usize,
    /// etcd members.
    pub etcd: usize,
    /// `--lease-ttl` of the coordinators.
    pub lease_ttl: u32,
    /// `--heartbeat-ttl` of the agents.
    pub heartbeat_ttl: u32,
    /// `--slots` of the agents.
    pub slots: u32,
    /// `--transfer-rate-limit` of the agents.
    pub rate_limit: u64,
    /// `--drain-deadline` of the agents.
    pub drain_deadline: u32,
    /// Pass `--enable-sim-executor` to every agent.
    pub sim_executor_flag: bool,
    /// Put every process in a network namespace of its own.
    pub netns: bool,
}

/// A process of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Process {
    /// Coordinator index.
    Coordinator(usize),
    /// Agent index.
    Agent(usize),
    /// etcd member index.
    Etcd(usize),
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Process::Coordinator(i) => write!(f, "c{}", i + 1),
            Process::Agent(i) => write!(f, "a{}", i + 1),
            Process::Etcd(i) => write!(f, "etcd{}", i + 1),
        }
    }
}

/// What a link does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Forwards.
    Open,
    /// Connections reset.
    Cut,
    /// Bytes held.
    BlackHole,
    /// Every chunk delayed by this many milliseconds.
    Delay(u32),
}

/// Proxies of the loopback links.
struct Proxies {
    /// `[coordinator][member]`.
    coordinator_etcd: Vec<Vec<Proxy>>,
    /// `[agent][coordinator]`.
    agent_coordinator: Vec<Vec<Proxy>>,
    /// `[agent]`.
    to_agent: Vec<Proxy>,
}

/// The running cluster. Every process is killed on drop, then the namespaces are removed.
pub struct Topology {
    /// Where logs, state dirs, disks and repositories live.
    pub dir: PathBuf,
    /// etcd key prefix of the cluster.
    pub prefix: String,
    /// Settings it was made with.
    pub settings: Settings,
    /// The etcd members.
    pub etcd: EtcdCluster,
    /// Coordinators, `c1`...
    pub coordinators: Vec<Node>,
    /// Agents, `a1`...
    pub agents: Vec<Node>,
    proxies: Option<Proxies>,
    /// When each coordinator or agent was killed, by its id and the number of the start
    /// (from 1) that the kill ended; taken just before the kill, so the process surely ran
    /// until then.
    pub kills: BTreeMap<String, BTreeMap<u32, SystemTime>>,
    network: Option<Network>,
}

impl Topology {
    /// Starts the whole cluster under `dir` and waits until every process is ready.
    pub async fn start(dir: &Path, settings: Settings) -> Result<Topology, String> {
        let names = host_names(&settings);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let network = settings.netns.then(|| Network::create(&names)).transpose()?;
        let hosts: Vec<MemberHost> = (0..settings.etcd)
            .map(|m| match &network {
                Some(net) => MemberHost {
                    host: net.host(&format!("etcd{}", m + 1)).address.clone(),
                    wrapper: net.wrapper(&format!("etcd{}", m + 1)),
                },
                None => MemberHost::loopback(),
            })
            .collect();
        let etcd = EtcdCluster::start(dir, hosts).await;
        let mut topology = Topology {
            dir: dir.to_path_buf(),
            prefix: unique_prefix(),
            settings,
            etcd,
            coordinators: Vec::new(),
            agents: Vec::new(),
            proxies: None,
            kills: BTreeMap::new(),
            network,
        };
        topology.start_coordinators().await;
        topology.start_agents().await;
        Ok(topology)
    }

    async fn start_coordinators(&mut self) {
        let etcd_urls = self.etcd.client_urls();
        let mut coordinator_etcd = Vec::new();
        for c in 0..self.settings.coordinators {
            let id = format!("c{}", c + 1);
            let urls = match &self.network {
                Some(_) => etcd_urls.clone(),
                None => {
                    let proxies: Vec<Proxy> = etcd_urls.iter().map(|u| Proxy::to_url(u)).collect();
                    let urls = proxies.iter().map(Proxy::url).collect();
                    coordinator_etcd.push(proxies);
                    urls
                }
            };
            let mut args = flags(&[
                ("--etcd", urls.join(",")),
                ("--id", id.clone()),
                ("--lease-ttl", self.settings.lease_ttl.to_string()),
                ("--prefix", self.prefix.clone()),
                // The checker holds every session StartJob answered to its record and stop
                // key, so history must keep them all: a soak starts more sessions per job than
                // the default limit keeps (history pruning has its own e2e tests).
                ("--session-history-per-job", CAMPAIGN_HISTORY_PER_JOB.to_string()),
            ]);
            // The campaign runs without TLS: its network-namespace hosts are not in the
            // harness's certificates.
            args.push("--insecure".into());
            // The first coordinator on one runtime thread, the others on one per core, as
            // the e2e harness runs them: faults meet both runtimes.
            if self.coordinators.is_empty() {
                args.extend(flags(&[("--worker-threads", "1".to_string())]));
            }
            let program = binary("sluice-coordinator");
            let dir = self.dir.join(&id);
            let mut node = Node::new(&id, Role::Coordinator, program, args, dir, None);
            node.place(self.placement(&id, None), 0);
            node.launch().await;
            self.coordinators.push(node);
        }
        if self.network.is_none() {
            self.proxies = Some(Proxies {
                coordinator_etcd,
                agent_coordinator: Vec::new(),
                to_agent: Vec::new(),
            });
        }
    }

    async fn start_agents(&mut self) {
        let direct: Vec<String> = self.coordinators.iter().map(Node::url).collect();
        let agents = self.settings.proxies + self.settings.computers;
        for a in 0..agents {
            let id = format!("a{}", a + 1);
            let (coordinators, port, advertised) = match self.proxies.as_mut() {
                Some(proxies) => {
                    let heartbeats: Vec<Proxy> = direct.iter().map(|u| Proxy::to_url(u)).collect();
                    let urls = heartbeats.iter().map(Proxy::url).collect::<Vec<_>>();
                    proxies.agent_coordinator.push(heartbeats);
                    let port = free_port();
                    let inbound = Proxy::start(([127, 0, 0, 1], port).into());
                    let advertised = inbound.url();
                    proxies.to_agent.push(inbound);
                    (urls, port, Some(advertised))
                }
                None => (direct.clone(), 0, None),
            };
            let dir = self.dir.join(&id);
            let mut args = flags(&[
                ("--coordinators", coordinators.join(",")),
                ("--id", id.clone()),
                ("--slots", self.settings.slots.to_string()),
                ("--state-dir", dir.join("state").display().to_string()),
                ("--heartbeat-ttl", self.settings.heartbeat_ttl.to_string()),
                ("--transfer-rate-limit", self.settings.rate_limit.to_string()),
                ("--drain-deadline", self.settings.drain_deadline.to_string()),
            ]);
            if let Some(advertised) = &advertised {
                args.extend(flags(&[("--advertise", advertised.clone())]));
            }
            if a >= self.settings.proxies {
                args.extend(flags(&[("--computer", format!("pc-{}", a + 1))]));
            }
            if self.settings.sim_executor_flag {
                args.push("--enable-sim-executor".into());
            }
            args.push("--insecure".into());
            let role = Role::Agent { coordinators: direct.clone() };
            let mut node = Node::new(&id, role, binary("sluice-agent"), args, dir, None);
            node.place(self.placement(&id, advertised), port);
            node.launch().await;
            self.agents.push(node);
        }
    }

    fn placement(&self, host: &str, advertised: Option<String>) -> Placement {
        match &self.network {
            Some(net) => Placement {
                wrapper: net.wrapper(host),
                host: Some(net.host(host).address.clone()),
                advertised,
            },
            None => Placement { advertised, ..Placement::default() },
        }
    }

    /// URLs of the coordinators as clients reach them.
    pub fn coordinator_urls(&self) -> Vec<String> {
        self.coordinators.iter().map(Node::url).collect()
    }

    /// A client of the etcd cluster (every member's URL, straight, not through a proxy).
    pub async fn etcd_client(&self) -> Result<etcd_client::Client, String> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10));
        etcd_client::Client::connect(self.etcd.client_urls(), Some(options))
            .await
            .map_err(|e| format!("cannot connect to etcd: {e}"))
    }

    fn node(&mut self, process: Process) -> &mut Node {
        match process {
            Process::Coordinator(i) => &mut self.coordinators[i],
            Process::Agent(i) => &mut self.agents[i],
            Process::Etcd(_) => unreachable!("etcd members are not nodes"),
        }
    }

    fn record_kill(&mut self, process: Process) {
        let at = SystemTime::now();
        let start = match process {
            Process::Etcd(_) => return,
            other => {
                let node = self.node(other);
                if !node.is_running() {
                    return;
                }
                node.starts()
            }
        };
        self.kills.entry(process.to_string()).or_default().insert(start, at);
    }

    /// Whether the process runs.
    pub fn is_running(&mut self, process: Process) -> bool {
        match process {
            Process::Etcd(m) => self.etcd.is_running(m),
            other => self.node(other).is_running(),
        }
    }

    /// kill -9.
    pub fn kill9(&mut self, process: Process) {
        self.record_kill(process);
        match process {
            Process::Etcd(m) => self.etcd.kill9(m),
            other => self.node(other).kill9(),
        }
    }

    /// SIGTERM, without waiting.
    pub fn sigterm(&mut self, process: Process) -> Result<(), String> {
        let pid = match process {
            Process::Etcd(_) => None,
            other => self.node(other).pid(),
        };
        let pid = pid.ok_or_else(|| format!("{process} is not running"))?;
        let raw = i32::try_from(pid).map_err(|e| e.to_string())?;
        kill(Pid::from_raw(raw), Signal::SIGTERM).map_err(|e| format!("SIGTERM {process}: {e}"))
    }

    /// Waits up to `grace` for a signalled process to exit, kills it if it has not, then
    /// starts it again and waits until it is ready. `Err` says what went wrong (a process
    /// that outlived its grace, a start that failed).
    pub async fn bring_back(&mut self, process: Process, grace: Duration) -> Result<(), String> {
        let mut note = Ok(());
        let deadline = tokio::time::Instant::now() + grace;
        while self.is_running(process) {
            if tokio::time::Instant::now() >= deadline {
                note = Err(format!("{process} still ran {grace:?} after SIGTERM; killed"));
                self.kill9(process);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = match process {
            Process::Etcd(m) => AssertUnwindSafe(self.etcd.restart(m)).catch_unwind().await,
            other => AssertUnwindSafe(self.node(other).restart()).catch_unwind().await,
        };
        if let Err(panic) = started {
            let text = panic_text(&panic);
            return Err(format!("{process} did not come back: {text}"));
        }
        note
    }

    /// Sets one link (loopback only).
    pub fn set_link(&self, link: Link, state: LinkState) -> Result<(), String> {
        let proxies = self.proxies.as_ref().ok_or("links need the loopback proxies")?;
        let proxy = match link {
            Link::CoordinatorEtcd { coordinator, member } => {
                &proxies.coordinator_etcd[coordinator][member]
            }
            Link::AgentCoordinator { agent, coordinator } => {
                &proxies.agent_coordinator[agent][coordinator]
            }
            Link::ToAgent { agent } => &proxies.to_agent[agent],
        };
        match state {
            LinkState::Open => {
                proxy.delay(Duration::ZERO);
                proxy.restore();
            }
            LinkState::Cut => proxy.cut(),
            LinkState::BlackHole => proxy.black_hole(),
            LinkState::Delay(ms) => proxy.delay(Duration::from_millis(u64::from(ms))),
        }
        Ok(())
    }

    /// Every link of agent `agent` to and from the coordinators set to `state`; in
    /// namespaces, its link taken down (any state but `Open`) or up.
    pub fn set_agent_links(&self, agent: usize, state: LinkState) -> Result<(), String> {
        if let Some(net) = &self.network {
            return set_host_link(net, &format!("a{}", agent + 1), state);
        }
        self.set_link(Link::ToAgent { agent }, state)?;
        for coordinator in 0..self.coordinators.len() {
            self.set_link(Link::AgentCoordinator { agent, coordinator }, state)?;
        }
        Ok(())
    }

    /// Coordinator `coordinator` cut from every etcd member and from every agent's
    /// heartbeats; in namespaces, its link taken down or up.
    pub fn set_coordinator_links(
        &self,
        coordinator: usize,
        state: LinkState,
    ) -> Result<(), String> {
        if let Some(net) = &self.network {
            return set_host_link(net, &format!("c{}", coordinator + 1), state);
        }
        for member in 0..self.etcd.len() {
            self.set_link(Link::CoordinatorEtcd { coordinator, member }, state)?;
        }
        for agent in 0..self.agents.len() {
            self.set_link(Link::AgentCoordinator { agent, coordinator }, state)?;
        }
        Ok(())
    }

    /// etcd member `member` cut from every coordinator (its peers still reach it); in
    /// namespaces, its link taken down, so its peers lose it too.
    pub fn set_etcd_links(&self, member: usize, state: LinkState) -> Result<(), String> {
        if let Some(net) = &self.network {
            return set_host_link(net, &format!("etcd{}", member + 1), state);
        }
        for coordinator in 0..self.coordinators.len() {
            self.set_link(Link::CoordinatorEtcd { coordinator, member }, state)?;
        }
        Ok(())
    }

    /// Opens every link and starts every process that is not running; `Err` lists what
    /// could not be brought back.
    pub async fn heal_all(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        for agent in 0..self.agents.len() {
            if let Err(e) = self.set_agent_links(agent, LinkState::Open) {
                problems.push(e);
            }
        }
        for coordinator in 0..self.coordinators.len() {
            if let Err(e) = self.set_coordinator_links(coordinator, LinkState::Open) {
                problems.push(e);
            }
        }
        for member in 0..self.etcd.len() {
            if let Err(e) = self.set_etcd_links(member, LinkState::Open) {
                problems.push(e);
            }
        }
        let processes = (0..self.etcd.len())
            .map(Process::Etcd)
            .chain((0..self.coordinators.len()).map(Process::Coordinator))
            .chain((0..self.agents.len()).map(Process::Agent));
        for process in processes.collect::<Vec<_>>() {
            if !self.is_running(process)
                && let Err(e) = self.bring_back(process, Duration::ZERO).await
            {
                problems.push(e);
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for node in self.agents.iter_mut().chain(self.coordinators.iter_mut()) {
            node.teardown();
        }
        for member in 0..self.etcd.len() {
            self.etcd.kill9(member);
        }
        // The namespaces go last (field order), once nothing runs in them.
    }
}

fn set_host_link(net: &Network, host: &str, state: LinkState) -> Result<(), String> {
    match state {
        LinkState::Open => net.link_up(host),
        _ => net.link_down(host),
    }
}

fn host_names(settings: &Settings) -> Vec<String> {
    let etcd = (1..=settings.etcd).map(|m| format!("etcd{m}"));
    let coordinators = (1..=settings.coordinators).map(|c| format!("c{c}"));
    let agents = (1..=settings.proxies + settings.computers).map(|a| format!("a{a}"));
    etcd.chain(coordinators).chain(agents).collect()
}

fn flags(pairs: &[(&str, String)]) -> Vec<OsString> {
    pairs.iter().flat_map(|(flag, value)| [OsString::from(flag), OsString::from(value)]).collect()
}

/// The message of a caught panic.
pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".to_string())
}
