use std::path::PathBuf;

use sluice_proto::pb;

use super::*;

fn task(session: &str, index: u32) -> TaskId {
    let key = pb::TaskKey { session_id: session.into(), item_index: index, attempt: 1 };
    TaskId::from_wire("key", &key).expect("a task id")
}

fn claim(session: &str, index: u32, socket: &str, disks: &[&str]) -> Claim {
    Claim {
        task: task(session, index),
        job: format!("job-{session}"),
        item: format!("vm{index}"),
        socket: (!socket.is_empty()).then(|| PathBuf::from(socket)),
        disks: disks.iter().map(PathBuf::from).collect(),
    }
}

fn queued(answer: Answer) -> u64 {
    match answer {
        Answer::Queued { id, .. } => id,
        other => panic!("expected a queued claim, got {other:?}"),
    }
}

fn granted(answer: Answer) -> u64 {
    match answer {
        Answer::Granted(id) => id,
        other => panic!("expected a granted claim, got {other:?}"),
    }
}

#[test]
fn a_second_task_on_one_socket_waits_naming_the_first_and_goes_on_when_it_ends() {
    let mut ledger = Ledger::default();
    let first = granted(ledger.ask(claim("s1", 0, "/vm.qmp", &["/a"])));
    let answer = ledger.ask(claim("s2", 0, "/vm.qmp", &["/a"]));
    assert_eq!(
        answer,
        Answer::Queued { id: 2, behind: "task s1/0#1 (item \"vm0\") of job \"job-s1\"".into() }
    );
    assert_eq!(ledger.waiting(), 1);
    assert_eq!(ledger.end(first), [2]);
    assert_eq!(ledger.waiting(), 0);
    assert_eq!(ledger.end(2), Vec::<u64>::new());
}

#[test]
fn other_sockets_and_offline_images_do_not_wait() {
    let mut ledger = Ledger::default();
    granted(ledger.ask(claim("s1", 0, "/vm.qmp", &["/a"])));
    granted(ledger.ask(claim("s2", 0, "/other.qmp", &["/b"])));
    granted(ledger.ask(claim("s3", 0, "", &["/c"])));
    granted(ledger.ask(claim("s4", 0, "", &["/c"])));
}

#[test]
fn waiting_claims_are_granted_in_the_order_asked_and_a_withdrawn_one_is_skipped() {
    let mut ledger = Ledger::default();
    let holder = granted(ledger.ask(claim("s1", 0, "/vm.qmp", &["/a"])));
    let second = queued(ledger.ask(claim("s2", 0, "/vm.qmp", &["/a"])));
    let third = queued(ledger.ask(claim("s3", 0, "/vm.qmp", &["/a"])));
    let fourth = queued(ledger.ask(claim("s4", 0, "/vm.qmp", &["/a"])));
    assert_eq!(ledger.end(third), Vec::<u64>::new(), "a stopped waiter lets nobody in");
    assert_eq!(ledger.end(holder), [second]);
    assert_eq!(ledger.end(second), [fourth]);
    assert_eq!(ledger.waiting(), 0);
}

#[test]
fn a_waiter_is_not_overtaken_by_a_later_claim() {
    let mut ledger = Ledger::default();
    let holder = granted(ledger.ask(claim("s1", 0, "/vm.qmp", &["/a"])));
    let waiter = queued(ledger.ask(claim("s2", 0, "/vm.qmp", &["/a"])));
    let answer = ledger.ask(claim("s3", 0, "/vm.qmp", &["/a"]));
    assert!(matches!(&answer, Answer::Queued { behind, .. } if behind.contains("s1/0#1")));
    assert_eq!(ledger.end(holder), [waiter], "the first waiter only");
}

#[test]
fn two_items_of_a_session_on_one_image_are_refused_naming_the_other() {
    let mut ledger = Ledger::default();
    granted(ledger.ask(claim("s1", 0, "/vm.qmp", &["/a", "/b"])));
    let Answer::Refused(why) = ledger.ask(claim("s1", 1, "", &["/b"])) else { panic!("refused") };
    assert!(why.starts_with("disk /b is also a disk of task s1/0#1 (item \"vm0\")"), "{why}");
    assert_eq!(ledger.waiting(), 0, "a refused claim is not kept");
    // A retry of the same item, or another session, is no second item on the image.
    queued(ledger.ask(claim("s1", 0, "/vm.qmp", &["/a"])));
    queued(ledger.ask(claim("s2", 1, "/vm.qmp", &["/b"])));
}

#[tokio::test]
async fn a_dropped_waiter_withdraws_its_claim_and_a_dropped_hold_lets_the_next_in() {
    let holds = VmHolds::default();
    let first = holds.hold(claim("s1", 0, "/vm.qmp", &["/a"])).await.expect("granted");
    let mut second = Box::pin(holds.hold(claim("s2", 0, "/vm.qmp", &["/a"])));
    let mut third = Box::pin(holds.hold(claim("s3", 0, "/vm.qmp", &["/a"])));
    assert!(futures::poll!(&mut second).is_pending());
    assert!(futures::poll!(&mut third).is_pending());
    assert_eq!(holds.waiting(), 2);
    drop(second);
    assert_eq!(holds.waiting(), 1, "the stopped waiter withdrew");
    drop(first);
    let third = third.await.expect("granted once the holder ended");
    assert_eq!(holds.waiting(), 0);
    drop(third);
    drop(holds.hold(claim("s4", 0, "/vm.qmp", &["/a"])).await.expect("free again"));
}
