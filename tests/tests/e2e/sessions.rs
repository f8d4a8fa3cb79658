//! Issue 3: job sessions. Real VM backups of qcow2 disks into a repository directory: results,
//! order and slots, failures with retries and `RetrySession`, one active session per job, and
//! session reads (an agent restart mid-transfer: `agent_restarts`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use sluice_proto::pb::{self, ItemState, SessionResult, SessionState};
use sluice_tests::{
    AgentSpec, Cluster,
    api::{create_job, get_session, restore_points, start_job, summary, wait_stopped},
    disk::same_content,
    fixtures::{expect_code, expect_ok},
    sessions::{
        VmDisks, make_vm_disk, make_vm_disks, partial_folders, restore_point_dir, sluice_snapshots,
        vm_backup,
    },
    watch::watch_to_end,
};
use tonic::Code;

pub(super) const MIB: u64 = 1 << 20;

/// Item names of a session, in the order it lists them.
fn item_names(session: &pb::Session) -> Vec<&str> {
    session.items.iter().map(|item| item.name.as_str()).collect()
}

fn vm_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("vm-{i}")).collect()
}

/// Asserts that every item of a finished session succeeded with a committed restore point
/// whose `disk0.qcow2` holds what the item's disk holds, and that each restore point folder
/// carries its manifest.
#[track_caller]
pub(super) fn assert_backed_up(
    session: &pb::Session,
    repository: &Path,
    job: &str,
    disks: &[PathBuf],
) {
    assert_eq!(session.items.len(), disks.len(), "one item per disk: {}", summary(session));
    for (item, disk) in session.items.iter().zip(disks) {
        assert_eq!(item.state(), ItemState::Success, "{}: {}", item.name, summary(session));
        assert!(
            item.restore_point.starts_with(&format!("{}-", session.id)),
            "{}: restore point {:?} is named <session>-<index>",
            item.name,
            item.restore_point
        );
        let folder = restore_point_dir(repository, job, &item.name, &item.restore_point);
        let copy = folder.join("disk0.qcow2");
        assert!(copy.is_file(), "{}: {} exists", item.name, copy.display());
        assert!(
            same_content(&copy, disk),
            "{}: {} holds what {} holds",
            item.name,
            copy.display(),
            disk.display()
        );
        let manifest = std::fs::read_to_string(folder.join("manifest.json")).unwrap_or_else(|e| {
            panic!("{}: cannot read the manifest in {}: {e}", item.name, folder.display())
        });
        assert!(
            manifest.contains(&session.id),
            "{}: the manifest names session {}: {manifest}",
            item.name,
            session.id
        );
    }
}

/// Asserts that no partial data and no Sluice snapshot was left behind.
#[track_caller]
pub(super) fn assert_clean(repository: &Path, disks: &[PathBuf]) {
    assert_eq!(partial_folders(repository), Vec::<PathBuf>::new(), "no partial folder remains");
    assert_eq!(sluice_snapshots(disks), Vec::new(), "no sluice- snapshot remains on any disk");
}

/// Scenario 1: a 5-VM job over 2 agents of 2 slots succeeds with a faithful restore point per
/// VM, a catalog entry each, and nothing left behind.
#[tokio::test]
async fn five_vms_on_two_agents_are_backed_up_completely() {
    let mut cluster = Cluster::builder()
        .agent(AgentSpec::new().slots(2))
        .agent(AgentSpec::new().slots(2))
        .start()
        .await;
    let VmDisks { repository, disks, .. } = VmDisks::make(cluster.dir(), 5, 2 * MIB);
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, vm_backup("nightly", &repository, &disks).retry(2, 0).build()).await;

    let started = start_job(&mut jobs, "nightly").await;
    assert_eq!(started.job, "nightly");
    assert!(
        matches!(started.state(), SessionState::Starting | SessionState::Working),
        "StartJob answers a STARTING or WORKING session: {}",
        summary(&started)
    );
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert!(!ended.canceled, "nobody cancelled: {}", summary(&ended));
    assert_eq!(item_names(&ended), vm_names(5), "items are listed in job order");
    for item in &ended.items {
        assert!(["a1", "a2"].contains(&item.agent.as_str()), "{}: ran on an agent", item.name);
        assert_eq!(item.attempt, 1, "{}: one attempt was enough: {}", item.name, summary(&ended));
    }
    assert_backed_up(&ended, &repository, "nightly", &disks);
    assert_clean(&repository, &disks);

    let catalog = restore_points(&jobs, "nightly").await;
    assert_eq!(catalog.len(), 5, "ListRestorePoints lists one per VM: {catalog:?}");
    for item in &ended.items {
        let listed: Vec<&pb::RestorePoint> =
            catalog.iter().filter(|rp| rp.item == item.name).collect();
        assert_eq!(listed.len(), 1, "{}: one catalog entry: {catalog:?}", item.name);
        assert_eq!(listed[0].id, item.restore_point, "{}: the item's restore point", item.name);
        assert_eq!(listed[0].session_id, ended.id, "{}: made by the session", item.name);
        assert_eq!(listed[0].job, "nightly");
        assert!(listed[0].size_bytes > 0, "{}: the entry has a size", item.name);
    }
}

/// Scenario 2, order: with one agent of one slot, items start strictly in job order, and the
/// ones that wait say why.
#[tokio::test]
async fn items_start_in_job_order_and_wait_visibly_for_the_slot() {
    let agent = AgentSpec::new().slots(1).transfer_rate_limit(MIB);
    let mut cluster = Cluster::builder().agent(agent).start().await;
    let VmDisks { repository, disks, .. } = VmDisks::make(cluster.dir(), 4, 3 * MIB);
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, vm_backup("ordered", &repository, &disks).retry(1, 0).build()).await;

    let started = start_job(&mut jobs, "ordered").await;
    let mut started_order: Vec<String> = Vec::new();
    let mut waiting_reasons: BTreeSet<String> = BTreeSet::new();
    let snapshots = watch_to_end(&mut jobs, &started.id, |session| {
        let processing: Vec<&pb::ItemStatus> =
            session.items.iter().filter(|i| i.state() == ItemState::Processing).collect();
        assert!(processing.len() <= 1, "one slot, one task at a time: {}", summary(session));
        for (index, item) in session.items.iter().enumerate() {
            if item.state() == ItemState::Pending {
                if !item.waiting_reason.is_empty() {
                    waiting_reasons.insert(item.waiting_reason.clone());
                }
                continue;
            }
            if started_order.contains(&item.name) {
                continue;
            }
            let earlier: Vec<&str> =
                session.items[..index].iter().map(|i| i.name.as_str()).collect();
            let not_yet: Vec<&&str> =
                earlier.iter().filter(|name| !started_order.iter().any(|s| s == **name)).collect();
            assert!(
                not_yet.is_empty(),
                "{} started before {not_yet:?}, which come earlier in the job: {}",
                item.name,
                summary(session)
            );
            started_order.push(item.name.clone());
        }
    })
    .await;
    let ended = snapshots.last().cloned().unwrap_or_default();
    assert_eq!(started_order, vm_names(4), "every item started, in job order");
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert!(
        !waiting_reasons.is_empty(),
        "items waiting for the busy slot show a waiting_reason (seen {} snapshots)",
        snapshots.len()
    );
    assert_backed_up(&ended, &repository, "ordered", &disks);
}

/// Scenario 2, slots: with overlapping tasks, no agent ever runs more of them than its slots,
/// and the slots are used.
#[tokio::test]
async fn no_agent_runs_more_tasks_than_its_slots() {
    let mut cluster = Cluster::builder()
        .agent(AgentSpec::new().slots(2).transfer_rate_limit(MIB))
        .agent(AgentSpec::new().slots(1).transfer_rate_limit(MIB))
        .start()
        .await;
    let slots: BTreeMap<&str, usize> = [("a1", 2), ("a2", 1)].into();
    let VmDisks { repository, disks, .. } = VmDisks::make(cluster.dir(), 6, 3 * MIB);
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, vm_backup("slotted", &repository, &disks).retry(1, 0).build()).await;

    let started = start_job(&mut jobs, "slotted").await;
    let mut most_at_once = 0;
    let snapshots = watch_to_end(&mut jobs, &started.id, |session| {
        let mut running: BTreeMap<&str, usize> = BTreeMap::new();
        for item in session.items.iter().filter(|i| i.state() == ItemState::Processing) {
            *running.entry(item.agent.as_str()).or_default() += 1;
        }
        for (agent, count) in &running {
            let limit = slots.get(agent).copied().unwrap_or_else(|| {
                panic!("an item runs on unknown agent {agent:?}: {}", summary(session))
            });
            assert!(
                *count <= limit,
                "{agent} runs {count} tasks but has {limit} slots: {}",
                summary(session)
            );
        }
        most_at_once = most_at_once.max(running.values().sum::<usize>());
    })
    .await;
    let ended = snapshots.last().cloned().unwrap_or_default();
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert_eq!(most_at_once, 3, "the 3 slots of the cluster were all used at some point");
    assert_backed_up(&ended, &repository, "slotted", &disks);
}

/// Scenario 3: a missing and a corrupt disk fail their items after the retries, the others
/// succeed, the session fails; `RetrySession` redoes only the failed items, which succeed once
/// the disks are fixed, and the first session's restore points stay.
#[tokio::test]
async fn failed_items_are_retried_then_redone_by_a_retry_session() {
    let mut cluster = Cluster::builder().agent(AgentSpec::new().slots(2)).start().await;
    let dir = cluster.dir().to_path_buf();
    let repository = dir.join("repository");
    let good = make_vm_disks(&dir, 2, MIB);
    let missing = dir.join("disks").join("missing.qcow2");
    let corrupt = dir.join("disks").join("corrupt.qcow2");
    let noise: Vec<u8> = (0..MIB).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&corrupt, noise)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", corrupt.display()));
    // vm-0 good, vm-1 missing, vm-2 good, vm-3 corrupt.
    let disks = vec![good[0].clone(), missing.clone(), good[1].clone(), corrupt.clone()];
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, vm_backup("flaky", &repository, &disks).retry(2, 1).build()).await;

    let first = start_job(&mut jobs, "flaky").await;
    let ended = wait_stopped(&jobs, &first.id).await;
    assert_eq!(
        ended.result(),
        SessionResult::Failed,
        "a failed item fails the session: {}",
        summary(&ended)
    );
    assert!(!ended.canceled, "nobody cancelled: {}", summary(&ended));
    assert_eq!(item_names(&ended), vm_names(4));
    for (index, disk) in [(1, &missing), (3, &corrupt)] {
        let item = &ended.items[index];
        assert_eq!(item.state(), ItemState::Failed, "{}: {}", item.name, summary(&ended));
        assert_eq!(item.attempt, 2, "{}: both attempts were made: {}", item.name, summary(&ended));
        assert!(item.restore_point.is_empty(), "{}: no restore point", item.name);
        assert!(
            item.message.contains(&disk.display().to_string()),
            "{}: the message names the disk {}: {:?}",
            item.name,
            disk.display(),
            item.message
        );
        assert!(
            ["SNAPSHOT", "TRANSFER", "COMMIT"].iter().any(|phase| item.message.contains(phase)),
            "{}: the message names the phase that failed: {:?}",
            item.name,
            item.message
        );
        let item_dir = repository.join("flaky").join(&item.name);
        let entries: Vec<PathBuf> = std::fs::read_dir(&item_dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert_eq!(
            entries,
            Vec::<PathBuf>::new(),
            "{}: nothing in {}",
            item.name,
            item_dir.display()
        );
    }
    for index in [0, 2] {
        let item = &ended.items[index];
        assert_eq!(item.state(), ItemState::Success, "{}: {}", item.name, summary(&ended));
        assert_eq!(item.attempt, 1, "{}: {}", item.name, summary(&ended));
    }
    let first_points = restore_points(&jobs, "flaky").await;
    let first_items: BTreeSet<&str> = first_points.iter().map(|rp| rp.item.as_str()).collect();
    assert_eq!(
        first_items,
        ["vm-0", "vm-2"].into(),
        "catalog after the first session: {first_points:?}"
    );

    // Fix the disks, then retry.
    make_vm_disk(&missing, 1, MIB);
    std::fs::remove_file(&corrupt)
        .unwrap_or_else(|e| panic!("cannot remove {}: {e}", corrupt.display()));
    make_vm_disk(&corrupt, 3, MIB);
    let request = pb::RetrySessionRequest { session_id: first.id.clone() };
    let retry = expect_ok(jobs.retry_session(request).await, "RetrySession of the failed session");
    assert_ne!(retry.id, first.id, "a retry is a new session");
    assert_eq!(retry.retry_of, first.id, "the retry names the session it retries");
    assert_eq!(retry.job, "flaky");
    assert_eq!(retry.item_count, 2, "the answer counts the items: {}", summary(&retry));
    let retry = get_session(&jobs, &retry.id).await;
    assert_eq!(item_names(&retry), ["vm-1", "vm-3"], "only the failed items: {}", summary(&retry));

    let retried = wait_stopped(&jobs, &retry.id).await;
    assert_eq!(retried.result(), SessionResult::Success, "{}", summary(&retried));
    assert_eq!(retried.retry_of, first.id);
    assert_eq!(item_names(&retried), ["vm-1", "vm-3"]);
    assert_backed_up(&retried, &repository, "flaky", &[missing.clone(), corrupt.clone()]);

    let after = restore_points(&jobs, "flaky").await;
    assert_eq!(after.len(), 4, "one restore point per VM over both sessions: {after:?}");
    for rp in &first_points {
        assert!(
            after.contains(rp),
            "restore point {} of the first session is kept: {after:?}",
            rp.id
        );
    }
    let again = get_session(&jobs, &first.id).await;
    assert_eq!(
        again.result(),
        SessionResult::Failed,
        "the retry does not rewrite the first session"
    );
    assert_backed_up(
        &pb::Session {
            items: vec![again.items[0].clone(), again.items[2].clone()],
            ..again.clone()
        },
        &repository,
        "flaky",
        &good,
    );
    assert_clean(&repository, &disks);
}

/// Scenario 5: one active session per job, on every coordinator; unknown jobs are NOT_FOUND;
/// once the session ended the job starts again.
#[tokio::test]
async fn a_job_has_one_active_session_at_a_time() {
    let agent = AgentSpec::new().slots(1).transfer_rate_limit(MIB);
    let mut cluster = Cluster::builder().coordinators(2).agent(agent).start().await;
    let VmDisks { repository, disks, .. } = VmDisks::make(cluster.dir(), 1, 3 * MIB);
    let mut jobs = cluster.job_client().await;
    let mut other = cluster.coordinator(1).job_client().await;
    create_job(&mut jobs, vm_backup("single", &repository, &disks).retry(1, 0).build()).await;

    let first = start_job(&mut jobs, "single").await;
    for (client, which) in
        [(&mut jobs, "the same coordinator"), (&mut other, "another coordinator")]
    {
        let status = expect_code(
            client.start_job(pb::StartJobRequest { job: "single".into(), full: false }).await,
            Code::FailedPrecondition,
            &format!("a second StartJob on {which} while {} is active", first.id),
        );
        assert!(
            status.message().contains(&first.id),
            "the refusal names the running session {}: {}",
            first.id,
            status.message()
        );
    }
    expect_code(
        jobs.start_job(pb::StartJobRequest { job: "no-such-job".into(), full: false }).await,
        Code::NotFound,
        "StartJob of an unknown job",
    );

    let ended = wait_stopped(&jobs, &first.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    let second = start_job(&mut other, "single").await;
    assert_ne!(second.id, first.id, "a new session");
    let ended = wait_stopped(&jobs, &second.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert_eq!(restore_points(&jobs, "single").await.len(), 2, "one restore point per session");
}

/// Scenario 6: ListSessions lists a job's sessions newest first; GetSession refuses unknown
/// and malformed ids.
#[tokio::test]
async fn sessions_are_listed_newest_first_and_bad_ids_are_refused() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    let VmDisks { repository, disks, .. } = VmDisks::make(cluster.dir(), 1, MIB);
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, vm_backup("listed", &repository, &disks).retry(1, 0).build()).await;
    create_job(&mut jobs, vm_backup("other", &repository, &disks).retry(1, 0).build()).await;

    let mut started = Vec::new();
    for _ in 0..3 {
        let session = start_job(&mut jobs, "listed").await;
        wait_stopped(&jobs, &session.id).await;
        started.push(session.id);
    }
    let other_session = start_job(&mut jobs, "other").await;
    wait_stopped(&jobs, &other_session.id).await;

    let listed = expect_ok(
        jobs.list_sessions(pb::ListSessionsRequest { job: "listed".into(), ..Default::default() })
            .await,
        "ListSessions listed",
    );
    let ids: Vec<&str> = listed.sessions.iter().map(|s| s.id.as_str()).collect();
    let newest_first: Vec<&str> = started.iter().rev().map(String::as_str).collect();
    let created: Vec<Option<(i64, i32)>> =
        listed.sessions.iter().map(|s| s.created_at.map(|t| (t.seconds, t.nanos))).collect();
    assert!(
        created.windows(2).all(|pair| pair[0] >= pair[1]),
        "ListSessions lists newer sessions (by created_at) first: {ids:?} created at {created:?}"
    );
    assert_eq!(ids, newest_first, "ListSessions lists the job's sessions, newest first");
    for session in &listed.sessions {
        assert_eq!(session.job, "listed");
        assert_eq!(session.state(), SessionState::Stopped, "{}", summary(session));
    }
    let others = expect_ok(
        jobs.list_sessions(pb::ListSessionsRequest { job: "other".into(), ..Default::default() })
            .await,
        "ListSessions other",
    );
    let ids: Vec<&str> = others.sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [other_session.id.as_str()], "ListSessions of the other job");
    let newest = |newest_per_job, limit| pb::ListSessionsRequest {
        newest_per_job,
        limit,
        ..Default::default()
    };
    let two_each = expect_ok(jobs.list_sessions(newest(2, 0)).await, "ListSessions 2 per job");
    let mut ids: Vec<&str> = two_each.sessions.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![started[2].as_str(), started[1].as_str(), other_session.id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "the newest two of each job");
    let one = expect_ok(jobs.list_sessions(newest(0, 1)).await, "ListSessions limit 1");
    let ids: Vec<&str> = one.sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [other_session.id.as_str()], "the newest in all");

    expect_code(
        jobs.get_session(pb::GetSessionRequest {
            session_id: "20200101-000000-0000".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "GetSession of an unknown id",
    );
    expect_code(
        jobs.get_session(pb::GetSessionRequest { session_id: "A/B".into(), ..Default::default() })
            .await,
        Code::InvalidArgument,
        "GetSession of the malformed id A/B",
    );
}
