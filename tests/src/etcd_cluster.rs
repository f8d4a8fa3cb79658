//! A real etcd cluster of several members, each a process the harness may kill and start
//! again (on loopback ports, or each in its own network namespace).

use std::{
    ffi::OsString,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::time::Instant;

use crate::{logs, ports::free_port, watchdog::Watchdog};

const MAX_REQUEST_BYTES: &str = "33554432";
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Client and peer ports of a member that has an address of its own.
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// Where one member runs.
#[derive(Debug, Clone)]
pub struct MemberHost {
    /// Address the member listens on (`127.0.0.1` on loopback).
    pub host: String,
    /// Command the member is run through, e.g. `ip netns exec NS` (empty: directly).
    pub wrapper: Vec<OsString>,
}

impl MemberHost {
    /// A member on loopback.
    pub fn loopback() -> MemberHost {
        MemberHost { host: "127.0.0.1".to_string(), wrapper: Vec::new() }
    }
}

struct Member {
    name: String,
    at: MemberHost,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    process: Option<(Child, Watchdog)>,
}

/// An etcd cluster whose members the harness runs. Killed on drop.
pub struct EtcdCluster {
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts one member per host under `dir` and waits until every member is healthy.
    pub async fn start(dir: &Path, hosts: Vec<MemberHost>) -> EtcdCluster {
        let mut taken = Vec::new();
        let members = hosts
            .into_iter()
            .enumerate()
            .map(|(i, at)| {
                let own_address = at.host != "127.0.0.1";
                let (client_port, peer_port) = if own_address {
                    (CLIENT_PORT, PEER_PORT)
                } else {
                    (distinct_port(&mut taken), distinct_port(&mut taken))
                };
                let name = format!("etcd{}", i + 1);
                let dir = dir.join(&name);
                std::fs::create_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
                Member { name, at, client_port, peer_port, dir, process: None }
            })
            .collect();
        let mut cluster = EtcdCluster { members };
        let initial = cluster.initial_cluster();
        for member in &mut cluster.members {
            member.spawn(&initial);
        }
        for index in 0..cluster.members.len() {
            cluster.wait_healthy(index).await;
        }
        cluster
    }

    fn initial_cluster(&self) -> String {
        let peers: Vec<String> =
            self.members.iter().map(|m| format!("{}={}", m.name, m.peer_url())).collect();
        peers.join(",")
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URL of every member, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Client URL of member `index`.
    pub fn client_url(&self, index: usize) -> String {
        self.members[index].client_url()
    }

    /// Log file of member `index`.
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.members[index].log_path()
    }

    /// Whether member `index` runs (reaps it if it exited).
    pub fn is_running(&mut self, index: usize) -> bool {
        let member = &mut self.members[index];
        match member.process.as_mut().map(|(child, _)| child.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                member.process = None;
                false
            }
            None => false,
        }
    }

    /// Kills member `index` with SIGKILL and reaps it. No-op if it is not running.
    pub fn kill9(&mut self, index: usize) {
        if let Some((mut child, watchdog)) = self.members[index].process.take() {
            let _ = child.kill();
            let _ = child.wait();
            drop(watchdog);
        }
    }

    /// Starts member `index` again on its ports and data, and waits until it is healthy.
    pub async fn restart(&mut self, index: usize) {
        self.kill9(index);
        let initial = self.initial_cluster();
        self.members[index].spawn(&initial);
        self.wait_healthy(index).await;
    }

    /// Index of the member that leads now, as the running members report it.
    pub async fn leader(&mut self) -> Option<usize> {
        for index in 0..self.members.len() {
            if !self.is_running(index) {
                continue;
            }
            let url = self.client_url(index);
            let status = async {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(2));
                let mut client = etcd_client::Client::connect([url], Some(options)).await.ok()?;
                client.status().await.ok()
            };
            let Some(status) = status.await else { continue };
            let leader = status.leader();
            let this = status.header().map(|h| h.member_id());
            if this == Some(leader) {
                return Some(index);
            }
        }
        None
    }

    async fn wait_healthy(&mut self, index: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if !self.is_running(index) {
                self.fail(index, "exited");
            }
            let member = &self.members[index];
            let (host, port) = (member.at.host.clone(), member.client_port);
            let answer = tokio::task::spawn_blocking(move || health(&host, port)).await;
            match answer {
                Ok(Ok(body)) if body.contains("\"health\":\"true\"") => return,
                Ok(Ok(body)) => last = body,
                Ok(Err(e)) => last = e.to_string(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail(index, &format!("was not healthy within {START_TIMEOUT:?}; last: {last}"));
    }

    fn fail(&self, index: usize, problem: &str) -> ! {
        let log = self.log_path(index);
        panic!(
            "etcd member {} {problem}\n----- {} -----\n{}",
            self.members[index].name,
            log.display(),
            logs::tail(&log, logs::TAIL_LINES)
        )
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill9(index);
        }
    }
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://{}:{}", self.at.host, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.at.host, self.peer_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn spawn(&mut self, initial_cluster: &str) {
        assert!(self.process.is_none(), "{} is already running", self.name);
        let log = self.log_path();
        logs::mark(&log, &format!("starting {}", self.name));
        let (client, peer) = (self.client_url(), self.peer_url());
        let mut command = match self.at.wrapper.split_first() {
            Some((wrapper, args)) => {
                let mut command = Command::new(wrapper);
                command.args(args).arg("etcd");
                command
            }
            None => Command::new("etcd"),
        };
        command
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "sluice-campaign"])
            .args(["--max-request-bytes", MAX_REQUEST_BYTES])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(logs::append(&log))
            .stderr(logs::append(&log));
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot start etcd (apt-get install etcd-server): {e}");
        });
        let watchdog = Watchdog::watch(child.id(), None);
        self.process = Some((child, watchdog));
    }
}

/// A port free now and not in `taken`, which it joins.
fn distinct_port(taken: &mut Vec<u16>) -> u16 {
    let mut port = free_port();
    while taken.contains(&port) {
        port = free_port();
    }
    taken.push(port);
    port
}

/// One plain HTTP/1.0 `GET /health`, returning the response text.
fn health(host: &str, port: u16) -> std::io::Result<String> {
    let addr = std::net::SocketAddr::new(host.parse().map_err(std::io::Error::other)?, port);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /health HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
