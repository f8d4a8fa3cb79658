//! Helpers: qcow2 disks, task specs, a fake coordinator and an in-process agent.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice_agent::Settings;
use sluice_agent::exec::{CancelSignal, Reporter, TaskContext, Update};
use sluice_agent::key::{self, TaskId};
use sluice_proto::pb::{
    self,
    agent_registry_server::{AgentRegistry, AgentRegistryServer},
    agent_service_client::AgentServiceClient,
    job_item::Target,
};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Longest wait for any event in these tests (a hang guard, not a timing assertion).
pub const WAIT: Duration = Duration::from_secs(60);

/// The phases of a task that runs to its end, in order.
pub const EVERY_PHASE: [pb::TaskPhase; 4] = [
    pb::TaskPhase::Snapshot,
    pb::TaskPhase::Transfer,
    pb::TaskPhase::Commit,
    pb::TaskPhase::Cleanup,
];

/// A temporary folder with an empty source folder `src` and a repository path `repo` (not
/// created).
pub struct Scratch {
    pub dir: TempDir,
    pub src: PathBuf,
    pub repo: PathBuf,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).expect("src");
        let repo = dir.path().join("repo");
        Self { dir, src, repo }
    }
}

/// Runs a command and panics with its stderr if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect("command runs");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A qcow2 disk of 16 MiB with `data_mib` MiB of 0x5a at the start.
pub fn make_disk(dir: &Path, name: &str, data_mib: u32) -> PathBuf {
    let path = dir.join(name);
    let text = path.to_str().expect("utf-8 path");
    sh("qemu-img", &["create", "-q", "-f", "qcow2", text, "16M"]);
    let write = format!("write -P 0x5a 0 {data_mib}M");
    sh("qemu-io", &["-c", &write, text]);
    path
}

/// Names of the `sluice-` snapshots of a disk.
pub fn sluice_snapshots(disk: &Path) -> Vec<String> {
    let json = sh("qemu-img", &["info", "-U", "--output=json", disk.to_str().expect("utf-8")]);
    let info: serde_json::Value = serde_json::from_str(&json).expect("info json");
    let list = info["snapshots"].as_array().cloned().unwrap_or_default();
    list.iter()
        .filter_map(|s| s["name"].as_str())
        .filter(|name| name.starts_with("sluice-"))
        .map(String::from)
        .collect()
}

/// A VM task spec.
pub fn vm_spec(session: &str, index: u32, disks: &[&Path], repository: &Path) -> pb::TaskSpec {
    let disks = disks.iter().map(|d| d.display().to_string()).collect();
    pb::TaskSpec {
        key: Some(pb::TaskKey { session_id: session.into(), item_index: index, attempt: 1 }),
        epoch: 1,
        job: "nightly".into(),
        job_type: pb::JobType::VmBackup as i32,
        item: Some(pb::JobItem {
            name: format!("vm{index}"),
            target: Some(Target::Vm(pb::VmTarget { disks, qmp_socket: String::new() })),
        }),
        repository: repository.display().to_string(),
        sim_duration_ms: None,
        ..Default::default()
    }
}

/// A computer task spec of job `homes`, item `pc<index>`, computer `pc1`.
pub fn computer_spec(
    session: &str,
    index: u32,
    paths: &[&Path],
    repository: &Path,
) -> pb::TaskSpec {
    let paths = paths.iter().map(|p| p.display().to_string()).collect();
    let target = pb::ComputerTarget { computer: "pc1".into(), paths };
    pb::TaskSpec {
        job: "homes".into(),
        job_type: pb::JobType::AgentBackup as i32,
        item: Some(pb::JobItem {
            name: format!("pc{index}"),
            target: Some(Target::Computer(target)),
        }),
        ..vm_spec(session, index, &[], repository)
    }
}

/// An executor's context and the receiver of its updates.
pub struct Run {
    pub ctx: TaskContext,
    pub updates: mpsc::Receiver<(TaskId, Update)>,
}

/// A context for running `spec` directly with an executor.
pub fn prepare(spec: pb::TaskSpec, rate_limit: Option<u64>) -> Run {
    let (id, _) = key::validate_spec("task", &spec).expect("valid spec");
    let (tx, updates) = mpsc::channel(1024);
    let (_sessions_tx, running_sessions) = watch::channel(BTreeSet::from([id.session.clone()]));
    let ctx = TaskContext {
        reporter: Reporter::new(id.clone(), tx),
        id,
        spec,
        cancel: CancelSignal::default(),
        rate_limit,
        running_sessions,
        daemons: Default::default(),
        vm_holds: Default::default(),
    };
    Run { ctx, updates }
}

/// The phases reported so far.
pub fn phases(updates: &mut mpsc::Receiver<(TaskId, Update)>) -> Vec<pb::TaskPhase> {
    let mut phases = Vec::new();
    while let Ok((_, update)) = updates.try_recv() {
        if let Update::Phase(phase, _) = update {
            phases.push(phase);
        }
    }
    phases
}

/// Waits for the first update matching `wanted`; panics if the task ends without one.
pub async fn update_matching(
    updates: &mut mpsc::Receiver<(TaskId, Update)>,
    wanted: impl Fn(&Update) -> bool,
) -> Update {
    let found = tokio::time::timeout(WAIT, async {
        while let Some((_, update)) = updates.recv().await {
            if wanted(&update) {
                return Some(update);
            }
        }
        None
    });
    found.await.expect("update in time").expect("the update is reported")
}

/// Names of the entries of a folder (none when it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|read| read.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Names of the folders in `dir`, sorted (a VM item folder also holds its chain lock file).
pub fn folders(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|read| {
            read.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A sim task spec.
pub fn sim_spec(session: &str, index: u32, epoch: i64, ms: u32) -> pb::TaskSpec {
    pb::TaskSpec {
        epoch,
        sim_duration_ms: Some(ms),
        ..vm_spec(session, index, &[Path::new("/sim/disk.qcow2")], Path::new("/sim-repo"))
    }
}

/// RunTask, waiting while the agent takes no task (before its first confirmed heartbeat,
/// or after a pause of heartbeats longer than its TTL on a loaded machine).
pub async fn run_task(
    client: &mut AgentServiceClient<Channel>,
    spec: pb::TaskSpec,
) -> Result<pb::TaskStatus, tonic::Status> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let request = pb::RunTaskRequest { task: Some(spec.clone()) };
        match client.run_task(request).await {
            Ok(response) => return Ok(response.into_inner().status.expect("status")),
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && status.message().contains("takes no task now")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => return Err(status),
        }
    }
}

/// A fake coordinator that records every heartbeat.
pub struct FakeCoordinator {
    pub url: String,
    pub heartbeats: mpsc::UnboundedReceiver<pb::HeartbeatRequest>,
}

struct Registry(mpsc::UnboundedSender<pb::HeartbeatRequest>);

#[tonic::async_trait]
impl AgentRegistry for Registry {
    async fn heartbeat(
        &self,
        request: tonic::Request<pb::HeartbeatRequest>,
    ) -> Result<tonic::Response<pb::HeartbeatResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(pb::HeartbeatResponse {
            coordinator: "fake".into(),
            interval_seconds: 1,
            registration: 1,
        }))
    }
}

impl FakeCoordinator {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, heartbeats) = mpsc::unbounded_channel();
        let server = tonic::transport::Server::builder()
            .add_service(AgentRegistryServer::new(Registry(tx)))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        Self { url: format!("http://{addr}"), heartbeats }
    }

    /// The next heartbeat matching `wanted`.
    pub async fn wait_for(
        &mut self,
        wanted: impl Fn(&pb::HeartbeatRequest) -> bool,
    ) -> pb::HeartbeatRequest {
        tokio::time::timeout(WAIT, async {
            loop {
                let beat = self.heartbeats.recv().await.expect("heartbeat");
                if wanted(&beat) {
                    return beat;
                }
            }
        })
        .await
        .expect("heartbeat in time")
    }
}

/// An agent running in-process.
pub struct TestAgent {
    pub client: AgentServiceClient<Channel>,
    pub shutdown: CancellationToken,
    /// Begins a drain like SIGTERM does.
    pub drain: CancellationToken,
    pub handle: JoinHandle<Result<(), sluice_agent::AgentError>>,
}

impl TestAgent {
    /// An agent in computer mode (`pc1`) with the sim executor on.
    pub async fn start(coordinator: &str, state_dir: &Path, slots: u32) -> Self {
        let sim_executor = |settings: &mut Settings| settings.enable_sim_executor = true;
        Self::start_with(coordinator, state_dir, slots, sim_executor).await
    }

    /// An agent with the settings of [`Self::start`] (computer `pc1`, the sim executor on)
    /// changed by `configure`.
    pub async fn start_with(
        coordinator: &str,
        state_dir: &Path,
        slots: u32,
        configure: impl FnOnce(&mut Settings),
    ) -> Self {
        let mut settings = Settings::new(coordinator, "agent-1", slots, state_dir.to_path_buf());
        // The default ttl: a loaded machine's pause of heartbeats must not make the agent give
        // its running tasks up (it does so once silent past the ttl).
        settings.heartbeat_ttl = 10;
        settings.computer = Some("pc1".into());
        // In-process agent tests talk plaintext; TLS and authentication are the e2e tests'.
        settings.insecure = true;
        configure(&mut settings);
        Self::launch(settings).await
    }

    /// An agent with exactly these settings.
    pub async fn launch(settings: Settings) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let drain = CancellationToken::new();
        let handle =
            tokio::spawn(sluice_agent::run(settings, listener, shutdown.clone(), drain.clone()));
        let client = AgentServiceClient::connect(format!("http://{addr}")).await.expect("connect");
        Self { client, shutdown, drain, handle }
    }

    /// An agent with a new state directory (kept until the returned folder is dropped).
    pub async fn start_fresh(coordinator: &str, slots: u32) -> (TempDir, Self) {
        let state = tempfile::tempdir().expect("tempdir");
        let agent = Self::start(coordinator, state.path(), slots).await;
        (state, agent)
    }

    /// Stops the agent at once and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(WAIT, self.handle).await.expect("agent stops in time");
        result.expect("agent task").expect("agent run");
    }
}
