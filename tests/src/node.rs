//! One `sluice-coordinator` or `sluice-agent` process: start, readiness, signals; its
//! clients are in `node/clients.rs`.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sluice_proto::pb::{self, cluster_service_client::ClusterServiceClient};
use sluice_proto::security::tls::DialTls;
use tokio::time::Instant;

use crate::{PATIENCE, http::HttpClient, logs, security::Pki, wait_for, watchdog::Watchdog};

mod clients;

use clients::connect;

/// Line prefix each binary prints on stdout once its listener is bound.
const LISTENING: &str = "listening on ";
/// Line prefix a coordinator prints on stdout for its HTTP listener (`--http-listen`), before
/// `https://ADDR/` (`http://` under `--insecure`).
const CONSOLE_AT: &str = "console at ";

/// What a node is, and what it needs to know to tell that it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A coordinator: ready when its health check answers `SERVING`.
    Coordinator,
    /// An agent: ready when it serves health `SERVING` and a coordinator lists it.
    Agent {
        /// Coordinator URLs the agent heartbeats to.
        coordinators: Vec<String>,
    },
}

/// A Sluice process run by the harness. Restarts keep its id, arguments, address and
/// directory (an agent keeps its state dir).
pub struct Node {
    id: String,
    role: Role,
    program: PathBuf,
    args: Vec<OsString>,
    dir: PathBuf,
    /// The cluster's PKI; `None` when the cluster runs `--insecure`.
    pki: Option<Pki>,
    addr: Option<SocketAddr>,
    /// A coordinator's HTTP address (the console, the JSON API, `/metrics`).
    http_addr: Option<SocketAddr>,
    process: Option<(Child, Watchdog)>,
    starts: u32,
    /// How the process is placed on the network (netns, listen host, advertised URL).
    placement: Placement,
}

/// Where a node runs on the network; the default is a process on loopback.
#[derive(Debug, Clone, Default)]
pub(crate) struct Placement {
    /// Command the program is run through, e.g. `ip netns exec NS` (empty: run directly).
    pub(crate) wrapper: Vec<OsString>,
    /// Host of `--listen` (default `127.0.0.1`).
    pub(crate) host: Option<String>,
    /// URL coordinators list an agent at when it is not the node's own (`--advertise`).
    pub(crate) advertised: Option<String>,
}

impl Node {
    pub(crate) fn new(
        id: &str,
        role: Role,
        program: PathBuf,
        args: Vec<OsString>,
        dir: PathBuf,
        pki: Option<Pki>,
    ) -> Node {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        let placement = Placement::default();
        Node {
            id: id.to_string(),
            role,
            program,
            args,
            dir,
            pki,
            addr: None,
            http_addr: None,
            process: None,
            starts: 0,
            placement,
        }
    }

    /// Places the node: run through a wrapper, listen on a host and port chosen up front
    /// (`port` 0: any), be listed at an advertised URL. Call before the first start.
    pub(crate) fn place(&mut self, placement: Placement, port: u16) {
        let host = placement.host.clone().unwrap_or_else(|| "127.0.0.1".to_string());
        if port != 0 {
            let addr = format!("{host}:{port}");
            self.addr = Some(addr.parse().unwrap_or_else(|e| panic!("bad address {addr}: {e}")));
        }
        self.placement = placement;
    }

    /// Makes the node listen on `addr` and register under `advertised` (which must forward
    /// to `addr`, e.g. a proxy) from its next start on.
    pub(crate) fn advertise_at(&mut self, addr: SocketAddr, advertised: String) {
        self.addr = Some(addr);
        self.args.extend([OsString::from("--advertise"), OsString::from(&advertised)]);
        self.placement.advertised = Some(advertised);
    }

    /// The URL coordinators list this node at (its own URL unless it advertises another).
    pub fn advertised_url(&self) -> String {
        self.placement.advertised.clone().unwrap_or_else(|| self.url())
    }

    /// The `--id` of the node, e.g. `c1` or `a2`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this is a coordinator or an agent.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Directory of the node's logs (and an agent's state dir).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Log file of the process's stdout.
    pub fn stdout_log(&self) -> PathBuf {
        self.dir.join("stdout.log")
    }

    /// Log file of the process's stderr.
    pub fn stderr_log(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }

    /// Address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr.unwrap_or_else(|| panic!("{} was never started", self.id))
    }

    /// gRPC URL of the node, `https://127.0.0.1:PORT` (`http://` when insecure).
    pub fn url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr())
    }

    /// The TLS the harness calls this node with (admin on a coordinator, a coordinator
    /// certificate on an agent); `None` when the cluster is insecure.
    pub fn harness_tls(&self) -> Option<DialTls> {
        let calls_agent = matches!(self.role, Role::Agent { .. });
        self.pki.as_ref().map(|pki| pki.harness_tls(calls_agent))
    }

    /// A coordinator's HTTP base URL, `https://127.0.0.1:PORT` (`http://` when insecure; the
    /// console is at `/`).
    pub fn http_url(&self) -> String {
        let addr = self.http_addr.unwrap_or_else(|| panic!("{} serves no HTTP", self.id));
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// A client of a coordinator's HTTP server, trusting the cluster CA, without a token.
    pub fn http_client(&self) -> HttpClient {
        HttpClient::new(&self.http_url(), self.pki.as_ref().map(Pki::ca_cert).as_deref())
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|(child, _)| child.id())
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none() && self.process.is_some()
    }

    /// The exit status, if the process exited; it is then reaped and forgotten.
    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        let (child, _) = self.process.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.process = None;
                Some(status)
            }
            Ok(None) => None,
            Err(e) => panic!("cannot query process {} ({}): {e}", self.id, child.id()),
        }
    }

    /// Starts the process and waits until it is ready. On a restart it listens on the address
    /// it had before, so clients and agents that know that address find it again.
    pub(crate) async fn launch(&mut self) {
        assert!(self.process.is_none(), "{} is already running", self.id);
        self.starts += 1;
        let host = self.placement.host.as_deref().unwrap_or("127.0.0.1");
        let listen = self.addr.map_or_else(|| format!("{host}:0"), |a| a.to_string());
        let (stdout, stderr) = (self.stdout_log(), self.stderr_log());
        let marker = format!("start #{} of {} on {listen}", self.starts, self.id);
        logs::mark(&stdout, &marker);
        logs::mark(&stderr, &marker);
        let offset = logs::len(&stdout);
        let mut command = match self.placement.wrapper.split_first() {
            Some((wrapper, wrapper_args)) => {
                let mut command = Command::new(wrapper);
                command.args(wrapper_args).arg(&self.program);
                command
            }
            None => Command::new(&self.program),
        };
        command.args(&self.args).args(["--listen", &listen]);
        if self.role == Role::Coordinator {
            let http = self.http_addr.map_or_else(|| format!("{host}:0"), |a| a.to_string());
            command.args(["--http-listen", &http]);
        }
        command
            .stdin(Stdio::null())
            .stdout(logs::append(&stdout))
            .stderr(logs::append(&stderr))
            .env("NO_COLOR", "1");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SLUICE_") {
                command.env_remove(key);
            }
        }
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // As their systemd units run them (deploy/systemd): freed memory goes back at once.
            command.env("MIMALLOC_PURGE_DELAY", "0");
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,sluice_coordinator=debug,sluice_agent=debug");
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        let watchdog = Watchdog::watch(child.id(), None);
        self.process = Some((child, watchdog));
        let addr = self.wait_line(offset, LISTENING).await;
        self.addr = Some(addr);
        if self.role == Role::Coordinator {
            self.http_addr = Some(self.wait_line(offset, CONSOLE_AT).await);
        }
        self.wait_ready().await;
    }

    /// Reads the address of the first `{prefix}ADDR` line from stdout, failing if the process
    /// exits first.
    async fn wait_line(&mut self, offset: u64, prefix: &str) -> SocketAddr {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(addr) = parse_address(&logs::read_from(&self.stdout_log(), offset), prefix)
            {
                return addr;
            }
            if let Some(status) = self.try_exit_status() {
                self.fail(&format!("exited with {status} before printing `{prefix}ADDR`"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!("printed no `{prefix}ADDR` within {PATIENCE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panics with a message and the tails of the node's logs.
    fn fail(&self, problem: &str) -> ! {
        panic!(
            "{} ({}) {problem}\n----- {} -----\n{}\n----- {} -----\n{}",
            self.id,
            self.program.display(),
            self.stdout_log().display(),
            logs::tail(&self.stdout_log(), logs::TAIL_LINES),
            self.stderr_log().display(),
            logs::tail(&self.stderr_log(), logs::TAIL_LINES),
        )
    }

    async fn wait_ready(&self) {
        let what = format!("{} at {} to answer health SERVING", self.id, self.url());
        wait_for(
            || async { self.health_status("").await.map_err(|e| e.to_string()) },
            PATIENCE,
            &what,
        )
        .await;
        if let Role::Agent { coordinators } = &self.role {
            let what = format!("agent {} to be listed ONLINE by a coordinator", self.id);
            wait_for(|| self.listed_online(coordinators), PATIENCE, &what).await;
        }
    }

    /// `Ok` when some coordinator lists this agent online at its address.
    async fn listed_online(&self, coordinators: &[String]) -> Result<(), String> {
        let mut seen = Vec::new();
        for url in coordinators {
            let answer = async {
                let admin = self.pki.as_ref().map(|pki| pki.harness_tls(false));
                let mut client = ClusterServiceClient::new(connect(url, admin).await?);
                let agents = client.list_agents(pb::ListAgentsRequest {}).await?.into_inner();
                Ok::<_, anyhow::Error>(agents.agents)
            };
            match answer.await {
                Ok(agents) => {
                    let mine = agents.iter().find(|a| a.id == self.id);
                    if mine.is_some_and(|a| {
                        a.state == pb::AgentState::Online as i32
                            && a.address == self.advertised_url()
                    }) {
                        return Ok(());
                    }
                    seen.push(format!("{url}: {mine:?}"));
                }
                Err(e) => seen.push(format!("{url}: {e:#}")),
            }
        }
        Err(seen.join("; "))
    }

    /// Kills the process with SIGKILL and reaps it. No-op if it is not running.
    pub fn kill9(&mut self) {
        if let Some((mut child, watchdog)) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
            drop(watchdog);
        }
    }

    /// Sends SIGTERM and waits (up to [`PATIENCE`]) for the process to exit.
    pub async fn sigterm(&mut self) -> ExitStatus {
        let pid = self.pid().unwrap_or_else(|| panic!("{} is not running", self.id));
        if let Err(e) = kill(Pid::from_raw(pid as i32), Signal::SIGTERM) {
            panic!("cannot send SIGTERM to {} ({pid}): {e}", self.id);
        }
        self.wait_exit(PATIENCE).await
    }

    /// Waits for the process to exit on its own and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return status;
            }
            assert!(self.process.is_some(), "{} is not running", self.id);
            if Instant::now() >= deadline {
                self.fail(&format!("did not exit within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the process again (after killing it if it still runs) on the same address and
    /// waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill9();
        self.launch().await;
    }

    /// Kills the process without ceremony; used when the cluster is dropped.
    pub(crate) fn teardown(&mut self) {
        self.kill9();
    }

    pub(crate) fn log_paths(&self) -> [PathBuf; 2] {
        [self.stdout_log(), self.stderr_log()]
    }
}

/// Finds the address in the first parseable line that has `prefix` before it.
fn parse_address(stdout: &str, prefix: &str) -> Option<SocketAddr> {
    stdout.lines().find_map(|line| {
        let (_, rest) = line.split_once(prefix)?;
        let rest = rest.trim_start_matches("https://").trim_start_matches("http://");
        rest.split_whitespace().next()?.trim_end_matches(['.', ',', '/']).parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_line() {
        let text = "=== start ===\nsome log\nlistening on 127.0.0.1:4567\nconsole at https://127.0.0.1:80/\n";
        assert_eq!(parse_address(text, LISTENING), Some(SocketAddr::from(([127, 0, 0, 1], 4567))));
        assert_eq!(parse_address(text, CONSOLE_AT), Some(SocketAddr::from(([127, 0, 0, 1], 80))));
        assert_eq!(parse_address("listening on soon\n", LISTENING), None);
    }
}
