use super::*;

use pb::RestorePointKind::{Full, Incremental, Unspecified};

fn rp(
    item: &str,
    id: &str,
    seconds: i64,
    kind: pb::RestorePointKind,
    parent: &str,
) -> pb::RestorePoint {
    pb::RestorePoint {
        id: id.into(),
        item: item.into(),
        created_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        kind: kind as i32,
        parent_id: parent.into(),
        ..Default::default()
    }
}

fn standalone(item: &str, id: &str, seconds: i64) -> pb::RestorePoint {
    rp(item, id, seconds, Unspecified, "")
}

fn none() -> BTreeSet<String> {
    BTreeSet::new()
}

fn ids(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

/// `-x` for a deletion, `a>b` for a merge of a into b.
fn show(steps: Vec<Step>) -> Vec<String> {
    steps
        .into_iter()
        .map(|step| match step {
            Step::Delete(rp) => format!("-{}", rp.id),
            Step::Merge { base, child } => format!("{}>{}", base.id, child.id),
        })
        .collect()
}

#[test]
fn standalone_restore_points_beyond_keep_are_deleted_newest_first() {
    let in_commit_order = [
        standalone("a", "s1-0", 10),
        standalone("b", "s1-1", 10),
        standalone("a", "s2-0", 20),
        standalone("a", "s3-0", 30),
        standalone("b", "s3-1", 30),
    ];
    let all = in_commit_order;
    assert_eq!(show(plan(&all, 2, &none(), &none())), ["-s1-0"]);
    assert_eq!(show(plan(&all, 1, &none(), &none())), ["-s2-0", "-s1-0", "-s1-1"]);
    assert_eq!(show(plan(&all, 0, &none(), &none())), Vec::<String>::new(), "0 keeps all");
    assert_eq!(show(plan(&all, 3, &none(), &none())), Vec::<String>::new());
}

/// Finding 13: which restore points are the newest is the order etcd committed them in (the
/// order given), never the agents' clocks.
#[test]
fn the_newest_are_the_last_committed_whatever_the_agents_clocks_say() {
    let in_commit_order =
        [standalone("a", "s1-0", 30), standalone("a", "s2-0", 10), standalone("a", "s3-0", 20)];
    assert_eq!(show(plan(&in_commit_order, 2, &none(), &none())), ["-s1-0"]);
}

#[test]
fn the_oldest_full_is_merged_forward_until_the_first_kept_point() {
    let all = [
        rp("a", "f", 10, Full, ""),
        rp("a", "i1", 20, Incremental, "f"),
        rp("a", "i2", 30, Incremental, "i1"),
        rp("a", "i3", 40, Incremental, "i2"),
    ];
    assert_eq!(show(plan(&all, 3, &none(), &none())), ["f>i1"]);
    assert_eq!(show(plan(&all, 2, &none(), &none())), ["f>i1", "i1>i2"]);
    assert_eq!(show(plan(&all, 1, &none(), &none())), ["f>i1", "i1>i2", "i2>i3"]);
}

#[test]
fn an_older_chain_nothing_kept_builds_on_is_deleted_children_first() {
    let all = [
        rp("a", "f1", 10, Full, ""),
        rp("a", "i1", 20, Incremental, "f1"),
        rp("a", "f2", 30, Full, ""),
        rp("a", "i2", 40, Incremental, "f2"),
    ];
    assert_eq!(show(plan(&all, 2, &none(), &none())), ["-i1", "-f1"]);
    assert_eq!(show(plan(&all, 1, &none(), &none())), ["-i1", "-f1", "f2>i2"]);
}

#[test]
fn a_chain_that_cannot_be_merged_is_kept_whole() {
    let orphan = [rp("a", "i1", 20, Incremental, "gone"), rp("a", "i2", 30, Incremental, "i1")];
    assert_eq!(
        show(plan(&orphan, 1, &none(), &none())),
        Vec::<String>::new(),
        "its base is not in the catalog"
    );
    let branched = [
        rp("a", "f", 10, Full, ""),
        rp("a", "x", 20, Incremental, "f"),
        rp("a", "y", 30, Incremental, "f"),
    ];
    assert_eq!(
        show(plan(&branched, 1, &none(), &none())),
        ["-x"],
        "f keeps y whole once x is gone"
    );
    assert_eq!(
        show(plan(&branched, 2, &none(), &none())),
        Vec::<String>::new(),
        "f has two kept children"
    );
}

/// Finding F3: a deletion that began (durable mark) and did not end is finished by the next
/// plan whatever `keep` says, chain-aware: a restore point a kept one builds on is merged into
/// it, never deleted under it, and one in the middle of a chain is kept whole.
#[test]
fn a_deletion_that_began_is_finished_without_breaking_a_chain() {
    let standalones = [standalone("a", "s1", 10), standalone("a", "s2", 20)];
    assert_eq!(show(plan(&standalones, 5, &ids(&["s1"]), &none())), ["-s1"], "within keep");
    assert_eq!(show(plan(&standalones, 0, &ids(&["s2"]), &none())), ["-s2"], "with retention off");
    let chain = [
        rp("a", "f", 10, Full, ""),
        rp("a", "i1", 20, Incremental, "f"),
        rp("a", "i2", 30, Incremental, "i1"),
    ];
    assert_eq!(show(plan(&chain, 5, &ids(&["f"]), &none())), ["f>i1"], "its child is kept");
    assert_eq!(show(plan(&chain, 5, &ids(&["i2"]), &none())), ["-i2"], "nothing builds on it");
    assert_eq!(
        show(plan(&chain, 5, &ids(&["i1"]), &none())),
        Vec::<String>::new(),
        "in the middle of a chain: kept whole (its root is not falling out)"
    );
    assert_eq!(show(plan(&chain, 2, &ids(&["f"]), &none())), ["f>i1"], "once, not twice");
}

#[test]
fn an_earlier_job_of_the_same_name_leaves_restore_points_this_job_neither_counts_nor_deletes() {
    let all = [
        rp("vm", "old1", 10, Full, ""),
        rp("vm", "old2", 20, Incremental, "old1"),
        standalone("pc", "oldpc", 20),
        rp("vm", "new1", 30, Full, ""),
        rp("vm", "new2", 40, Incremental, "new1"),
        standalone("pc", "newpc", 40),
    ];
    let earlier = ids(&["old1", "old2", "oldpc"]);
    assert_eq!(show(plan(&all, 1, &none(), &earlier)), ["new1>new2"], "only this job's");
    assert_eq!(show(plan(&all, 2, &none(), &earlier)), Vec::<String>::new());
    assert_eq!(
        show(plan(&all, 1, &ids(&["old2"]), &earlier)),
        ["-old2", "new1>new2"],
        "a deletion begun is finished"
    );
    assert_eq!(
        show(plan(&all, 1, &none(), &none())),
        ["-oldpc", "-old2", "-old1", "new1>new2"],
        "the same restore points as this job's own"
    );
}
