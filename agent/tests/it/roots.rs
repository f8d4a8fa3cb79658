//! Least privilege: an agent with repository and restore roots uses no folder outside them.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use sluice_agent::Settings;
use sluice_proto::pb::{self, ItemState, agent_service_client::AgentServiceClient};
use tempfile::TempDir;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::{FakeCoordinator, TestAgent, WAIT, computer_spec};

type Client = AgentServiceClient<Channel>;

/// Folders of a test: roots for repositories and restores, a folder outside both (with a
/// link to it inside each root), and a source tree.
struct Folders {
    _dir: TempDir,
    state: PathBuf,
    repos: PathBuf,
    restores: PathBuf,
    outside: PathBuf,
    src: PathBuf,
}

impl Folders {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(&path).expect("folder");
            path
        };
        let (state, repos, restores) = (path("state"), path("repos"), path("restores"));
        let (outside, src) = (path("outside"), path("src"));
        std::fs::write(src.join("a.txt"), b"alpha").expect("file");
        symlink(&outside, repos.join("escape")).expect("link");
        symlink(&outside, restores.join("escape")).expect("link");
        Self { _dir: dir, state, repos, restores, outside, src }
    }

    /// An agent with these roots, configured as a `--config` file would.
    async fn agent(&self, coordinator: &str) -> TestAgent {
        let text = format!(
            "coordinators = {coordinator:?}\nid = \"agent-1\"\nslots = 2\nstate-dir = {:?}\n\
             heartbeat-ttl = 1\ncomputer = \"pc1\"\ninsecure = true\nrepository-root = [{:?}]\n\
             restore-root = [{:?}]\n",
            self.state, self.repos, self.restores
        );
        let settings: Settings = toml::from_str(&text).expect("settings with roots");
        TestAgent::launch(settings).await
    }
}

async fn run(client: &mut Client, spec: pb::TaskSpec) -> Result<pb::TaskStatus, Status> {
    crate::support::run_task(client, spec).await
}

/// Backs `src` up into `repository` as item `index` of session `s1` and waits for it.
async fn back_up(
    client: &mut Client,
    src: &Path,
    repository: &Path,
    index: u32,
) -> pb::TaskOutcome {
    let request = pb::WatchTasksRequest { session_id: "s1".into(), ..Default::default() };
    let mut events = client.watch_tasks(request).await.expect("watch").into_inner();
    run(client, computer_spec("s1", index, &[src], repository)).await.expect("started");
    tokio::time::timeout(WAIT, async {
        loop {
            let status = events.next().await.expect("open").expect("event").status.expect("status");
            if status.key.as_ref().is_some_and(|k| k.item_index == index)
                && let Some(outcome) = status.outcome
            {
                return outcome;
            }
        }
    })
    .await
    .expect("outcome in time")
}

fn refused(result: Result<impl std::fmt::Debug, Status>, message: &str) {
    let status = result.expect_err(message);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), message);
}

fn outside_message(field: &str, path: &Path, kind: &str) -> String {
    format!("{field}: {:?} is not under a {kind} root of this agent", path.display().to_string())
}

#[tokio::test]
async fn backups_run_only_into_repositories_under_the_roots() {
    let coordinator = FakeCoordinator::start().await;
    let folders = Folders::new();
    let agent = folders.agent(&coordinator.url).await;
    let mut client = agent.client.clone();

    let outcome = back_up(&mut client, &folders.src, &folders.repos.join("main"), 0).await;
    assert_eq!(outcome.state(), ItemState::Success, "{outcome:?}");
    for (index, repository) in
        [(1, folders.outside.join("repo")), (2, folders.repos.join("escape/repo"))]
    {
        let spec = computer_spec("s1", index, &[&folders.src], &repository);
        let message = outside_message("task.repository", &repository, "repository");
        refused(run(&mut client, spec).await, &message);
    }
    assert!(std::fs::read_dir(&folders.outside).expect("list").next().is_none(), "untouched");
    agent.stop().await;
}

fn location(repository: &Path, id: &str) -> pb::RestorePointLocation {
    pb::RestorePointLocation {
        repository: repository.display().to_string(),
        job: "homes".into(),
        item: "pc0".into(),
        restore_point_id: id.into(),
    }
}

#[tokio::test]
async fn restore_point_calls_outside_the_roots_are_refused() {
    let coordinator = FakeCoordinator::start().await;
    let folders = Folders::new();
    let agent = folders.agent(&coordinator.url).await;
    let mut client = agent.client.clone();
    let inside = folders.repos.join("main");
    let rp = back_up(&mut client, &folders.src, &inside, 0).await.restore_point.expect("rp");
    // The same restore point, copied outside the roots.
    let outside = folders.outside.join("main");
    crate::support::sh(
        "cp",
        &["-a", &inside.display().to_string(), &outside.display().to_string()],
    );

    let field = "location.repository";
    let message = outside_message(field, &outside, "repository");
    let verify = pb::AgentVerifyRequest { location: Some(location(&outside, &rp.id)) };
    refused(client.verify_restore_point(verify).await, &message);
    let target = folders.restores.join("new").display().to_string();
    let restore = |repository: &Path, target: &str| pb::AgentRestoreRequest {
        location: Some(location(repository, &rp.id)),
        target_dir: target.to_owned(),
    };
    refused(client.restore_restore_point(restore(&outside, &target)).await, &message);
    let delete =
        pb::DeleteRestorePointsRequest { restore_points: vec![location(&outside, &rp.id)] };
    let message = outside_message("restore_points[0].repository", &outside, "repository");
    refused(client.delete_restore_points(delete).await, &message);
    assert!(outside.join("homes/pc0").join(&rp.id).exists(), "not deleted");
    let merge = pb::MergeRestorePointRequest {
        base: Some(location(&outside, &rp.id)),
        child_id: rp.id.clone(),
    };
    let message = outside_message("base.repository", &outside, "repository");
    refused(client.merge_restore_point(merge).await, &message);
    let collect = pb::CollectGarbageRequest { repository: outside.display().to_string() };
    refused(
        client.collect_garbage(collect).await,
        &outside_message("repository", &outside, "repository"),
    );

    for target in [folders.outside.join("new"), folders.restores.join("escape/new")] {
        let message = outside_message("target_dir", &target, "restore");
        let target = target.display().to_string();
        refused(client.restore_restore_point(restore(&inside, &target)).await, &message);
    }
    assert!(std::fs::read_dir(&folders.outside).expect("list").count() == 1, "only the copy");
    let restored = client.restore_restore_point(restore(&inside, &target)).await.expect("inside");
    assert_eq!(restored.into_inner().files, 1);
    agent.stop().await;
}
