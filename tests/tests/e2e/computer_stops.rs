//! Scenarios: stops of an agent-computer job while one computer transfers: an immediate stop
//! keeps what was processed and leaves nothing of the running computer; a graceful stop lets
//! it commit.

use sluice_proto::pb::{self, ItemState, SessionResult, SessionState, StopMode, TaskPhase};
use sluice_tests::{
    AgentSpec, Cluster,
    api::{
        Jobs, create_job, item, restore_points, start_job, stop_job, summary, wait_session,
        wait_stopped,
    },
    computers::{add_bulk, computer_job, seed_of},
    fixtures::expect_ok,
    jobs::computer_item,
    manifests::{read_manifest, store_blobs},
    stops::{assert_ended, assert_item_states},
};

use super::computers::{
    BULK_FILES, BULK_SIZE, Lab, SLOW_RATE, assert_backed_up, assert_no_restore_point,
    assert_no_temporaries, assert_store_is,
};
use ItemState::{Canceled, NotProcessed, Pending, Success};

/// The stop scenarios' cluster and job: `pc1` (fast) is done in an instant; `pc2` (one slot,
/// rate-limited) reads its bulk for seconds; `pc2-home`, a second item of computer pc2, waits
/// for pc2's slot. Returns once `pc1` succeeded while `pc2` has transferred (and stored) some
/// bulk files.
async fn start_stop_scenario(job_name: &str) -> (Cluster, Lab, pb::Job, Jobs, pb::Session) {
    let mut cluster = Cluster::builder()
        .computers(&["pc1"])
        .agent(AgentSpec::new().computer("pc2").slots(1).transfer_rate_limit(SLOW_RATE))
        .start()
        .await;
    let lab = Lab::new(&cluster);
    let pc1 = lab.tree("pc1", "home");
    let pc2 = lab.tree("pc2", "data");
    add_bulk(&pc2, seed_of("pc2 bulk"), BULK_FILES, BULK_SIZE);
    let pc2_home = lab.tree("pc2", "home");
    let items = vec![
        computer_item("pc1", "pc1", &[&pc1]),
        computer_item("pc2", "pc2", &[&pc2]),
        computer_item("pc2-home", "pc2", &[&pc2_home]),
    ];
    let job = computer_job(job_name, &lab.repository).items(items).build();
    let mut jobs = cluster.job_client().await;
    create_job(&mut jobs, job.clone()).await;
    let started = start_job(&mut jobs, job_name).await;

    let what = "pc1 SUCCESS while pc2 is in TRANSFER past its third bulk file";
    let running = wait_session(&jobs, &started.id, what, |s| {
        let pc2 = item(s, "pc2");
        item(s, "pc1").state() == Success
            && pc2.state() == ItemState::Processing
            && pc2.phase() == TaskPhase::Transfer
            && pc2.bytes_done >= 3 * BULK_SIZE
    })
    .await;
    let waiting = item(&running, "pc2-home");
    assert_eq!(waiting.state(), Pending, "pc2-home waits for pc2's slot: {}", summary(&running));
    (cluster, lab, job, jobs, running)
}

/// A stop of the [`start_stop_scenario`] job while pc2 transfers, and what it must lead to.
struct ComputerStop {
    job: &'static str,
    mode: StopMode,
    by: &'static str,
    result: SessionResult,
    /// States of pc1, pc2 and pc2-home.
    states: [ItemState; 3],
    /// Items that end with a restore point; the others have none, anywhere.
    committed: &'static [usize],
}

/// Scenario 3a: an immediate stop keeps the processed computer's restore point, cancels the
/// one being processed without leaving anything of it (no partial folder; the blobs it had
/// stored are left to garbage collection), leaves the rest NOT_PROCESSED and ends the
/// session FAILED + canceled.
const IMMEDIATE: ComputerStop = ComputerStop {
    job: "agents-now",
    mode: StopMode::Immediate,
    by: "alice@ops",
    result: SessionResult::Failed,
    states: [Success, Canceled, NotProcessed],
    committed: &[0],
};

/// Scenario 3b: a graceful stop lets the computer being processed finish and commit; the
/// rest is NOT_PROCESSED; the session ends WARNING + canceled.
const GRACEFUL: ComputerStop = ComputerStop {
    job: "agents-drain",
    mode: StopMode::Graceful,
    by: "bob@ops",
    result: SessionResult::Warning,
    states: [Success, Success, NotProcessed],
    committed: &[0, 1],
};

#[tokio::test]
async fn immediate_stop_keeps_processed_computers_and_leaves_nothing_of_the_running_one() {
    stop_mid_transfer(&IMMEDIATE).await;
}

#[tokio::test]
async fn graceful_stop_lets_the_running_computer_commit() {
    stop_mid_transfer(&GRACEFUL).await;
}

/// Stops the [`start_stop_scenario`] job as `case` says once pc2 has stored some of its
/// bulk, and checks the end: item states, restore points (restored byte for byte, or absent
/// from disk and catalog), no temporaries, and a store holding exactly the committed blobs
/// once garbage is collected.
async fn stop_mid_transfer(case: &ComputerStop) {
    let (mut cluster, lab, job, mut jobs, running) = start_stop_scenario(case.job).await;
    let pc1_blobs = read_manifest(&lab.rp_dir(&running, 0)).blobs();
    let before = store_blobs(&lab.repository);
    assert!(
        before.is_superset(&pc1_blobs) && before.len() > pc1_blobs.len(),
        "pc2's attempt has stored blobs before the stop: store {before:?}, pc1's {pc1_blobs:?}"
    );

    let stopping = expect_ok(
        stop_job(&mut jobs, case.job, case.mode, case.by).await,
        &format!("StopJob {:?}", case.mode),
    );
    assert_eq!(stopping.state(), SessionState::Stopping, "StopJob answers: {}", summary(&stopping));
    // The answer counts the items but leaves them out (it does not grow with the session).
    assert_eq!(stopping.item_count, 3, "StopJob answers: {}", summary(&stopping));
    assert!(stopping.items.is_empty(), "StopJob answers: {}", summary(&stopping));

    let ended = wait_stopped(&jobs, &running.id).await;
    assert_ended(&ended, case.result, true, case.mode);
    let names = ["pc1", "pc2", "pc2-home"];
    assert_item_states(&ended, &names.into_iter().zip(case.states).collect::<Vec<_>>());
    let listed = restore_points(&jobs, case.job).await;
    let mut kept = Vec::new();
    for (index, name) in names.into_iter().enumerate() {
        if case.committed.contains(&index) {
            let agent = ["a1", "a2"][index];
            let restore_dir = lab.restore_dir(name);
            kept.push(assert_backed_up(&lab, &job, &ended, index, (name, agent), &restore_dir));
        } else {
            assert_no_restore_point(&lab, &ended, index, &listed);
        }
    }
    assert_eq!(listed.len(), case.committed.len(), "the committed items are listed: {listed:?}");
    let when = format!("after a {:?} stop", case.mode);
    assert_no_temporaries(&lab, &when);
    let collect = pb::CollectGarbageRequest { repository: lab.repository.display().to_string() };
    let mut agent = cluster.agent(0).agent_client().await;
    expect_ok(agent.collect_garbage(collect).await, "CollectGarbage");
    assert_store_is(&lab, &kept.iter().collect::<Vec<_>>(), &when);
}
