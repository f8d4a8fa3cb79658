//! Scenarios: agent-computer jobs (`JOB_TYPE_AGENT_BACKUP`): backups, incremental runs and
//! offline computers (stops: `computer_stops`).
//!
//! Every computer is a real `sluice-agent --computer NAME` with its own directory tree made
//! in the cluster's temp dir. Restore points are checked the way an operator restores them:
//! each manifest is read and the tree rebuilt from the repository's content-addressed store,
//! then compared with the source byte for byte (contents, link targets, permission bits).
//! Stops catch a computer mid-transfer through `--transfer-rate-limit`, observed as phase
//! TRANSFER with bytes done in `GetSession`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use sluice_proto::pb::{self, ItemState, SessionResult, SessionState};
use sluice_tests::{
    AgentSpec, Cluster,
    api::{create_job, item, restore_points, start_job, summary, wait_session, wait_stopped},
    computers::{
        KIB, TreeStats, computer_job, computer_paths, make_tree, outcome_of, pseudo_random,
        seed_of, tree_stats, write_file,
    },
    jobs::computer_item,
    manifests::{
        Manifest, assert_restores, read_manifest, restore, restored_path, store_blobs, temporaries,
    },
    sessions::restore_point_dir,
    stops::assert_item_states,
    watch::watch_to_end,
};

use ItemState::{Failed, Pending, Success};

/// Files of the bulk folder a rate-limited computer reads for a while.
pub(super) const BULK_FILES: u64 = 16;
/// Size of each bulk file: under the executor's 1 MiB buffer, so each is read once.
pub(super) const BULK_SIZE: u64 = 256 * KIB;
/// `--transfer-rate-limit` of the slow computer: its bulk takes about 8 s.
pub(super) const SLOW_RATE: u64 = 512 * KIB;

/// Folders of the scenario: the computers' trees and the repository.
pub(super) struct Lab {
    pub(super) dir: PathBuf,
    pub(super) repository: PathBuf,
}

impl Lab {
    pub(super) fn new(cluster: &Cluster) -> Lab {
        let dir = cluster.dir().to_path_buf();
        let repository = dir.join("repository");
        std::fs::create_dir_all(&repository)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", repository.display()));
        Lab { dir, repository }
    }

    /// A tree `<dir>/computers/<computer>/<folder>` with content unique to both names.
    pub(super) fn tree(&self, computer: &str, folder: &str) -> PathBuf {
        let root = self.dir.join("computers").join(computer).join(folder);
        make_tree(&root, seed_of(&format!("{computer}/{folder}")));
        root
    }

    /// A fresh folder to restore into.
    pub(super) fn restore_dir(&self, name: &str) -> PathBuf {
        self.dir.join("restores").join(name)
    }

    pub(super) fn rp_dir(&self, session: &pb::Session, index: usize) -> PathBuf {
        let status = &session.items[index];
        restore_point_dir(&self.repository, &session.job, &status.name, &status.restore_point)
    }
}

/// What a tree set of paths holds together.
pub(super) fn stats_of(paths: &[PathBuf]) -> TreeStats {
    paths.iter().map(|p| tree_stats(p)).fold(TreeStats::default(), |a, b| TreeStats {
        files: a.files + b.files,
        bytes: a.bytes + b.bytes,
    })
}

/// Asserts item `index` of `session` succeeded on `agent` with restore point
/// `<session>-<index>` whose manifest describes `paths` of `computer`, and that restoring it
/// under `restore_dir` gives those paths back byte for byte. Returns the manifest.
#[track_caller]
pub(super) fn assert_backed_up(
    lab: &Lab,
    job: &pb::Job,
    session: &pb::Session,
    index: usize,
    (computer, agent): (&str, &str),
    restore_dir: &Path,
) -> Manifest {
    let status = &session.items[index];
    let seen = summary(session);
    assert_eq!(status.state(), Success, "{}: {seen}", status.name);
    assert_eq!(status.agent, agent, "{} ran on the agent of {computer}: {seen}", status.name);
    assert_eq!(status.restore_point, format!("{}-{index}", session.id), "{}: {seen}", status.name);
    let paths = computer_paths(job, index);
    let stats = stats_of(&paths);
    let outcome = outcome_of(status);
    assert_eq!(outcome.files, stats.files, "{}: files in {:?}", status.name, status.message);
    assert_eq!(outcome.size_bytes, stats.bytes, "{}: bytes in {:?}", status.name, status.message);
    assert!(outcome.warnings.is_empty(), "{}: no warning: {:?}", status.name, status.message);

    let folder = lab.rp_dir(session, index);
    let manifest = assert_restores(&lab.repository, &folder, restore_dir, &paths);
    assert_eq!(manifest.restore_point, status.restore_point, "{}", folder.display());
    assert_eq!(manifest.job, session.job, "{}", folder.display());
    assert_eq!(manifest.item, status.name, "{}", folder.display());
    assert_eq!(manifest.session_id, session.id, "{}", folder.display());
    assert_eq!(manifest.computer, computer, "{}", folder.display());
    assert_eq!(
        (manifest.files, manifest.size_bytes, manifest.bytes_written),
        (outcome.files, outcome.size_bytes, outcome.new_bytes),
        "{}: the manifest's totals are the outcome message's",
        folder.display()
    );
    let count = |kind: &str| manifest.entries.iter().filter(|e| e.kind == kind).count() as u64;
    assert_eq!(
        (count("file"), count("dir"), count("symlink")),
        (manifest.files, manifest.directories, manifest.symlinks),
        "{}: the totals count the entries",
        folder.display()
    );
    manifest
}

/// Asserts that no `.partial-*` folder and no temporary blob file is left in the repository.
#[track_caller]
pub(super) fn assert_no_temporaries(lab: &Lab, when: &str) {
    let left = temporaries(&lab.repository);
    assert!(left.is_empty(), "{when}: temporaries left in the repository: {left:?}");
}

/// Asserts that the store holds exactly the blobs the given manifests name.
#[track_caller]
pub(super) fn assert_store_is(lab: &Lab, manifests: &[&Manifest], when: &str) {
    let named: BTreeSet<String> = manifests.iter().flat_map(|m| m.blobs()).collect();
    let stored = store_blobs(&lab.repository);
    let extra: Vec<&String> = stored.difference(&named).collect();
    let missing: Vec<&String> = named.difference(&stored).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{when}: the store holds blobs no restore point names: {extra:?}; \
         blobs named but missing: {missing:?}"
    );
}

/// Asserts item `index` of `session` has no restore point: none in its status, no folder,
/// not in the catalog.
#[track_caller]
pub(super) fn assert_no_restore_point(
    lab: &Lab,
    session: &pb::Session,
    index: usize,
    listed: &[pb::RestorePoint],
) {
    let status = &session.items[index];
    assert!(
        status.restore_point.is_empty(),
        "{} has a restore point: {}",
        status.name,
        summary(session)
    );
    let folder = lab
        .repository
        .join(&session.job)
        .join(&status.name)
        .join(format!("{}-{index}", session.id));
    assert!(!folder.exists(), "{} has a restore point folder {}", status.name, folder.display());
    let entries: Vec<&pb::RestorePoint> =
        listed.iter().filter(|rp| rp.item == status.name && rp.session_id == session.id).collect();
    assert!(entries.is_empty(), "{} is in the catalog: {entries:?}", status.name);
}

/// Scenario 1: a job over three computers succeeds, each item on its own computer's agent
/// (never on the plain proxy), and every restore point restores its tree byte for byte.
#[tokio::test]
async fn three_computers_are_backed_up_and_restore_byte_for_byte() {
    let mut cluster =
        Cluster::builder().agent(AgentSpec::new()).computers(&["pc1", "pc2", "pc3"]).start().await;
    let lab = Lab::new(&cluster);
    let pc1 = [lab.tree("pc1", "home"), lab.tree("pc1", "etc")];
    let pc2 = lab.tree("pc2", "home");
    let pc3 = lab.tree("pc3", "srv");
    let items = vec![
        computer_item("pc1", "pc1", &[&pc1[0], &pc1[1]]),
        computer_item("pc2", "pc2", &[&pc2]),
        computer_item("pc3", "pc3", &[&pc3]),
    ];
    let job = computer_job("laptops", &lab.repository).items(items).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job.clone()).await;

    let started = start_job(&mut jobs, "laptops").await;
    assert_eq!(started.job_type(), pb::JobType::AgentBackup, "{}", summary(&started));
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert!(!ended.canceled, "nobody cancelled: {}", summary(&ended));

    let placements = [("pc1", "a2"), ("pc2", "a3"), ("pc3", "a4")];
    let mut manifests = Vec::new();
    for (index, placement) in placements.into_iter().enumerate() {
        let restore_dir = lab.restore_dir(placement.0);
        let manifest = assert_backed_up(&lab, &job, &ended, index, placement, &restore_dir);
        let outcome = outcome_of(&ended.items[index]);
        assert_eq!(
            outcome.new_bytes, outcome.size_bytes,
            "{}: a first backup of content unique to it stores all of it: {:?}",
            placement.0, ended.items[index].message
        );
        manifests.push(manifest);
    }
    assert_no_temporaries(&lab, "after a successful session");
    assert_store_is(&lab, &manifests.iter().collect::<Vec<_>>(), "after a successful session");
    assert_private(&lab.repository);

    let listed = restore_points(&jobs, "laptops").await;
    assert_eq!(listed.len(), 3, "one catalog entry per computer: {listed:?}");
    for (index, status) in ended.items.iter().enumerate() {
        let entry = listed.iter().find(|rp| rp.item == status.name);
        let entry =
            entry.unwrap_or_else(|| panic!("{} is not in the catalog: {listed:?}", status.name));
        assert_eq!(entry.id, status.restore_point, "{}", status.name);
        assert_eq!(entry.session_id, ended.id, "{}", status.name);
        assert_eq!(
            entry.size_bytes,
            stats_of(&computer_paths(&job, index)).bytes,
            "{}",
            status.name
        );
    }
}

/// Every file and folder the agents wrote into `repository` (blobs of files any user could
/// not read, manifests naming every path) is readable by the agent's user only.
fn assert_private(repository: &Path) {
    let mut pending = vec![repository.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).expect("list").flatten();
            pending.extend(entries.map(|entry| entry.path()));
        }
        if path == repository {
            continue;
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
    }
}

/// Scenario 2: a second run copies only what changed: an unchanged tree stores no new byte,
/// one changed file stores exactly its bytes; earlier restore points still restore the old
/// content.
#[tokio::test]
async fn a_second_run_stores_only_changed_files() {
    let mut cluster = Cluster::builder().computers(&["pc1", "pc2"]).start().await;
    let lab = Lab::new(&cluster);
    let pc1 = lab.tree("pc1", "home");
    let pc2 = lab.tree("pc2", "home");
    let items = vec![computer_item("pc1", "pc1", &[&pc1]), computer_item("pc2", "pc2", &[&pc2])];
    let job = computer_job("incremental", &lab.repository).items(items).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job.clone()).await;
    let placements = [("pc1", "a1"), ("pc2", "a2")];

    // Run 1: everything is new.
    let first = start_job(&mut jobs, "incremental").await;
    let first = wait_stopped(&jobs, &first.id).await;
    assert_eq!(first.result(), SessionResult::Success, "run 1: {}", summary(&first));
    for (index, placement) in placements.into_iter().enumerate() {
        let restore_dir = lab.restore_dir(&format!("run1-{}", placement.0));
        assert_backed_up(&lab, &job, &first, index, placement, &restore_dir);
        let outcome = outcome_of(&first.items[index]);
        assert_eq!(outcome.new_bytes, outcome.size_bytes, "run 1 stores all: {}", summary(&first));
        // Every read counts: a file that does not fit in memory is read to hash it, then to
        // store it.
        let status = &first.items[index];
        assert!(status.bytes_read >= outcome.size_bytes, "run 1 reads all: {status:?}");
        assert_eq!(status.bytes_transferred, outcome.new_bytes, "run 1 stores all: {status:?}");
    }

    // Run 2: nothing changed, nothing new is stored.
    let second = start_job(&mut jobs, "incremental").await;
    assert_ne!(second.id, first.id, "a new session");
    let second = wait_stopped(&jobs, &second.id).await;
    assert_eq!(second.result(), SessionResult::Success, "run 2: {}", summary(&second));
    for (index, placement) in placements.into_iter().enumerate() {
        let status = &second.items[index];
        assert!(
            status.message.ends_with(", 0 new bytes stored"),
            "run 2, {}: an unchanged tree reports `0 new bytes stored`: {:?}",
            status.name,
            status.message
        );
        let restore_dir = lab.restore_dir(&format!("run2-{}", placement.0));
        let manifest = assert_backed_up(&lab, &job, &second, index, placement, &restore_dir);
        assert_eq!(manifest.bytes_written, 0, "run 2, {}", status.name);
        assert_eq!(status.bytes_transferred, 0, "run 2, {}: nothing stored", status.name);
    }

    // Run 3: one file of pc1 changed (new content, new length): exactly its bytes are new.
    let changed = pc1.join("docs/report.bin");
    let old_content = std::fs::read(&changed).unwrap_or_else(|e| panic!("cannot read: {e}"));
    let new_content = pseudo_random(seed_of("pc1 changed report"), 200 * KIB + 11);
    write_file(&changed, &new_content);
    let third = start_job(&mut jobs, "incremental").await;
    let third = wait_stopped(&jobs, &third.id).await;
    assert_eq!(third.result(), SessionResult::Success, "run 3: {}", summary(&third));
    let restore_dir = lab.restore_dir("run3-pc1");
    assert_backed_up(&lab, &job, &third, 0, placements[0], &restore_dir);
    let outcome = outcome_of(&third.items[0]);
    assert_eq!(
        outcome.new_bytes,
        new_content.len() as u64,
        "run 3, pc1: only the changed file {} is stored: {:?}",
        changed.display(),
        third.items[0].message
    );
    let restore_dir = lab.restore_dir("run3-pc2");
    assert_backed_up(&lab, &job, &third, 1, placements[1], &restore_dir);
    assert!(
        third.items[1].message.ends_with(", 0 new bytes stored"),
        "run 3, pc2 is unchanged: {:?}",
        third.items[1].message
    );

    // The restore point of run 1 still restores the old content of the changed file.
    let manifest = read_manifest(&lab.rp_dir(&first, 0));
    let again = lab.restore_dir("run1-pc1-again");
    restore(&lab.repository, &manifest, &again);
    let restored = restored_path(&again, &changed);
    let bytes = std::fs::read(&restored)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", restored.display()));
    assert!(
        bytes == old_content,
        "run 1's restore point of pc1 restores the old {}",
        changed.display()
    );

    assert_no_temporaries(&lab, "after three runs");
    let listed = restore_points(&jobs, "incremental").await;
    assert_eq!(listed.len(), 6, "two restore points per run: {listed:?}");
}

/// Scenario 4: an item whose computer has no agent waits, visibly, then fails naming the
/// computer after the job's offline wait; the other computers are backed up; the session
/// ends FAILED (not canceled).
#[tokio::test]
async fn an_offline_computer_waits_then_fails_while_the_others_succeed() {
    let mut cluster = Cluster::builder().computers(&["pc1", "pc2"]).start().await;
    let lab = Lab::new(&cluster);
    let pc1 = lab.tree("pc1", "home");
    let ghost = lab.dir.join("computers/ghost/home");
    let pc2 = lab.tree("pc2", "home");
    let items = vec![
        computer_item("pc1", "pc1", &[&pc1]),
        computer_item("ghost", "ghost", &[&ghost]),
        computer_item("pc2", "pc2", &[&pc2]),
    ];
    let job = computer_job("with-ghost", &lab.repository).items(items).offline_wait(2).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job.clone()).await;

    let started = start_job(&mut jobs, "with-ghost").await;
    let mut reasons: BTreeSet<String> = BTreeSet::new();
    let snapshots = watch_to_end(&mut jobs, &started.id, |session| {
        let ghost = item(session, "ghost");
        if ghost.state() == Pending && !ghost.waiting_reason.is_empty() {
            reasons.insert(ghost.waiting_reason.clone());
        }
    })
    .await;
    let ended = snapshots.last().cloned().unwrap_or_default();
    assert!(
        reasons.contains("computer ghost is offline"),
        "ghost was seen PENDING with waiting_reason `computer ghost is offline`; reasons seen: \
         {reasons:?}; last: {}",
        summary(&ended)
    );

    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Failed, "{}", summary(&ended));
    assert!(!ended.canceled, "nobody cancelled: {}", summary(&ended));
    assert_item_states(&ended, &[("pc1", Success), ("ghost", Failed), ("pc2", Success)]);
    let failed = item(&ended, "ghost");
    assert!(
        failed.message.contains("ghost"),
        "the failure names the computer: {:?}",
        failed.message
    );
    assert!(
        failed.message.contains("offline"),
        "the failure says it was offline: {:?}",
        failed.message
    );
    assert!(failed.agent.is_empty(), "ghost never ran on any agent: {}", summary(&ended));
    assert_backed_up(&lab, &job, &ended, 0, ("pc1", "a1"), &lab.restore_dir("pc1"));
    assert_backed_up(&lab, &job, &ended, 2, ("pc2", "a2"), &lab.restore_dir("pc2"));
    let listed = restore_points(&jobs, "with-ghost").await;
    assert_no_restore_point(&lab, &ended, 1, &listed);
    assert_no_temporaries(&lab, "after an offline computer failed");
}

/// Scenario 5: an item whose computer is offline when the session starts waits (the other
/// computer goes on), and runs and succeeds once the computer's agent comes up.
#[tokio::test]
async fn a_computer_that_comes_online_later_is_backed_up() {
    let mut cluster = Cluster::builder().agent(AgentSpec::new()).computers(&["pc1"]).start().await;
    let lab = Lab::new(&cluster);
    let pc1 = lab.tree("pc1", "home");
    let late = lab.tree("pc-late", "home");
    let items =
        vec![computer_item("pc1", "pc1", &[&pc1]), computer_item("late", "pc-late", &[&late])];
    let job = computer_job("latecomer", &lab.repository).items(items).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job.clone()).await;

    let started = start_job(&mut jobs, "latecomer").await;
    let what = "pc1 SUCCESS while late waits with `computer pc-late is offline`";
    let waiting = wait_session(&jobs, &started.id, what, |s| {
        let late = item(s, "late");
        item(s, "pc1").state() == Success
            && late.state() == Pending
            && late.waiting_reason == "computer pc-late is offline"
    })
    .await;
    assert_ne!(waiting.state(), SessionState::Stopped, "the session waits: {}", summary(&waiting));

    let agent = cluster.add_agent(AgentSpec::new().computer("pc-late")).await;
    assert_eq!(agent.id(), "a3");
    let ended = wait_stopped(&jobs, &started.id).await;
    assert_eq!(ended.result(), SessionResult::Success, "{}", summary(&ended));
    assert!(!ended.canceled, "nobody cancelled: {}", summary(&ended));
    assert_backed_up(&lab, &job, &ended, 0, ("pc1", "a2"), &lab.restore_dir("pc1"));
    assert_backed_up(&lab, &job, &ended, 1, ("pc-late", "a3"), &lab.restore_dir("late"));
    assert_eq!(ended.items[1].attempt, 1, "the wait was not a failed attempt: {}", summary(&ended));
    assert_no_temporaries(&lab, "after the late computer was backed up");
}
