//! Issue 3, scenario 4: an agent restarted or killed mid-transfer loses no result; every item
//! ends with exactly one committed restore point and nothing is left behind.

use std::path::{Path, PathBuf};

use sluice_proto::pb::{self, ItemState, SessionResult, TaskPhase};
use sluice_tests::{
    AgentSpec, Cluster,
    api::{
        Jobs, create_job, restore_points, start_job, summary, wait_agents_listed, wait_session,
        wait_stopped,
    },
    sessions::{VmDisks, partial_folders, processes_mentioning, vm_backup},
};

use super::sessions::{MIB, assert_backed_up, assert_clean};

/// Scenario 4 set-up: 2 agents of 2 slots, slowed down so that tasks stay in TRANSFER for
/// seconds, and a 4-VM job that retries 3 times without waiting.
struct RestartCase {
    cluster: Cluster,
    jobs: Jobs,
    dir: PathBuf,
    repository: PathBuf,
    disks: Vec<PathBuf>,
}

const RESTART_JOB: &str = "restarts";

impl RestartCase {
    async fn start() -> (RestartCase, pb::Session) {
        let mut cluster = Cluster::builder()
            .agent(AgentSpec::new().slots(2).transfer_rate_limit(512 * 1024))
            .agent(AgentSpec::new().slots(2).transfer_rate_limit(512 * 1024))
            .start()
            .await;
        let VmDisks { dir, repository, disks } = VmDisks::make(cluster.dir(), 4, 4 * MIB);
        let mut jobs = cluster.job_client().await;
        create_job(&mut jobs, vm_backup(RESTART_JOB, &repository, &disks).retry(3, 0).build())
            .await;
        let started = start_job(&mut jobs, RESTART_JOB).await;
        (RestartCase { cluster, jobs, dir, repository, disks }, started)
    }

    fn item_dir(&self, item: &str) -> PathBuf {
        self.repository.join(RESTART_JOB).join(item)
    }

    /// Waits until an item is in TRANSFER on a1 with data in its partial folder.
    async fn wait_a1_mid_transfer(&self, id: &str) {
        let what = "an item in TRANSFER on a1 with data in its partial folder";
        wait_session(&self.jobs, id, what, |session| {
            session.items.iter().any(|i| {
                i.state() == ItemState::Processing
                    && i.agent == "a1"
                    && i.phase() == TaskPhase::Transfer
                    && partial_folders(&self.item_dir(&i.name)).iter().any(|p| has_data(p))
            })
        })
        .await;
    }

    /// The session succeeded with exactly one committed restore point per item, each listed
    /// once in the catalog, and nothing was left behind: no partial folder, no snapshot, no
    /// process still working on a disk.
    async fn assert_no_result_lost(&mut self, id: &str) {
        let ended = wait_stopped(&self.jobs, id).await;
        assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
        assert_backed_up(&ended, &self.repository, RESTART_JOB, &self.disks);
        for item in &ended.items {
            let folders: Vec<String> = std::fs::read_dir(self.item_dir(&item.name))
                .map(|rd| {
                    rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
                })
                .unwrap_or_default();
            assert_eq!(
                folders,
                std::slice::from_ref(&item.restore_point),
                "{}: exactly one restore point",
                item.name
            );
        }
        let catalog = restore_points(&self.jobs, RESTART_JOB).await;
        let mut listed: Vec<(&str, &str)> =
            catalog.iter().map(|rp| (rp.item.as_str(), rp.id.as_str())).collect();
        listed.sort_unstable();
        let expected: Vec<(&str, &str)> =
            ended.items.iter().map(|i| (i.name.as_str(), i.restore_point.as_str())).collect();
        assert_eq!(listed, expected, "the catalog holds each restore point once");
        assert_clean(&self.repository, &self.disks);
        let disk_dir = self.dir.join("disks").display().to_string();
        assert_eq!(
            processes_mentioning(&disk_dir),
            Vec::<String>::new(),
            "no process works on the disks after the session ended"
        );
    }
}

/// Scenario 4: an agent restarted (kill -9, same address and state dir) while it transfers
/// loses no result: every item ends with exactly one committed restore point and the
/// interrupted transfers leave nothing behind.
#[tokio::test]
async fn agent_restart_mid_transfer_loses_no_result() {
    let (mut case, started) = RestartCase::start().await;
    case.wait_a1_mid_transfer(&started.id).await;
    case.cluster.agent(0).restart().await;
    case.assert_no_result_lost(&started.id).await;
}

/// Scenario 4, variant: an agent killed mid-transfer stays away past its heartbeat TTL (its
/// items count as lost and are retried), then comes back with its journal; the outcome it
/// replays for the lost attempt changes nothing, and no result is lost or doubled.
#[tokio::test]
async fn agent_killed_mid_transfer_and_back_after_its_ttl_loses_no_result() {
    let (mut case, started) = RestartCase::start().await;
    case.wait_a1_mid_transfer(&started.id).await;
    case.cluster.agent(0).kill9();
    let admin = case.cluster.cluster_client().await;
    wait_agents_listed(&admin, &["a2"], "killed agent a1 to leave ListAgents after its TTL").await;
    let what = "no item to be PROCESSING on the lost agent a1 any more";
    wait_session(&case.jobs, &started.id, what, |session| {
        session.items.iter().all(|i| i.agent != "a1" || i.state() != ItemState::Processing)
    })
    .await;
    case.cluster.agent(0).restart().await;
    case.assert_no_result_lost(&started.id).await;
}

/// Whether a partial folder holds a file with data in it.
fn has_data(partial: &Path) -> bool {
    std::fs::read_dir(partial).is_ok_and(|entries| {
        entries.flatten().any(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
    })
}
