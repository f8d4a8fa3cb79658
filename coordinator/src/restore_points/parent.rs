//! The restore point a VM item's next backup builds on, named in its task: the item's newest
//! catalog entry by commit order (etcd's create revisions, whatever the agents' clocks say).
//! Agents build on no other, so a folder the catalog does not list (a late commit of a lost
//! attempt) never gets children and can always be deleted, and retention, which follows the
//! catalog's chains, never leaves an incremental whose parent it does not know.
//!
//! Only restore points made since the job was created count: those of an earlier job of the
//! same name (deleted, its restore points kept) are not this job's to build on, nor (see
//! retention) to delete. A restore point known to be damaged (`RestorePoint.damage`), or one
//! whose chain holds such a restore point, is never built on: the agent takes a full backup
//! and warns with the reason.
//!
//! A restore point whose deletion began (its deletion mark, see `restore_points.rs`) is never
//! built on either: a deletion by hand marks the restore point before it checks that no
//! session of the job runs, so a session that starts after the mark picks the newest
//! restore point not marked (whose bitmaps are usually gone: the agent then takes a full).

use std::collections::{BTreeSet, HashMap};

use sluice_proto::pb;

use crate::{
    error::Result,
    store::{Store, Versioned},
};

/// Longest part of a damage text quoted in a backup's warning.
const QUOTED_DAMAGE_BYTES: usize = 300;

/// What a VM item's next backup builds on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChainParent {
    /// The catalog holds no restore point of the item made by this job: a full.
    None,
    /// The id of the restore point to build on.
    Named(String),
    /// The newest restore point cannot be built on: why (a full, with this as its warning).
    Unusable(String),
}

/// What item `item` of job `job` builds on next.
pub(crate) async fn chain_parent(store: &Store, job: &str, item: &str) -> Result<ChainParent> {
    let keys = store.keys();
    let prefix = format!("{}{item}/", keys.restore_points(job));
    let marks = keys.restore_points_deleting(job);
    let (since, in_commit_order, deleting) =
        store.created_listed_and_named(&keys.job(job), &prefix, &marks).await?;
    let deleting: BTreeSet<String> = deleting.into_iter().collect();
    Ok(choose(&in_commit_order, item, since, &deleting))
}

/// From the item's entries in commit order: the last one of `item` created after revision
/// `since` (the job's creation) whose deletion has not begun (`deleting`), unless it or a
/// link of its chain is known to be damaged.
fn choose(
    in_commit_order: &[Versioned<pb::RestorePoint>],
    item: &str,
    since: i64,
    deleting: &BTreeSet<String>,
) -> ChainParent {
    let newest = in_commit_order.iter().rev().find(|entry| {
        entry.create_revision > since
            && entry.value.item == item
            && !deleting.contains(&entry.value.id)
    });
    let Some(newest) = newest else { return ChainParent::None };
    let by_id: HashMap<&str, &pb::RestorePoint> =
        in_commit_order.iter().map(|entry| (entry.value.id.as_str(), &entry.value)).collect();
    match damaged_link(&by_id, &newest.value) {
        None => ChainParent::Named(newest.value.id.clone()),
        Some(damaged) => ChainParent::Unusable(damage_reason(damaged, &newest.value.id)),
    }
}

/// The first restore point known to be damaged on the chain from `top` down to its root.
fn damaged_link<'a>(
    by_id: &HashMap<&str, &'a pb::RestorePoint>,
    top: &'a pb::RestorePoint,
) -> Option<&'a pb::RestorePoint> {
    let mut seen = BTreeSet::new();
    let mut link = Some(top);
    while let Some(point) = link.filter(|point| seen.insert(point.id.as_str())) {
        if point.damage.is_some() {
            return Some(point);
        }
        link = by_id.get(point.parent_id.as_str()).copied();
    }
    None
}

fn damage_reason(damaged: &pb::RestorePoint, newest: &str) -> String {
    let damage = damaged.damage.as_deref().cloned().unwrap_or_default();
    let which = if damaged.id == newest {
        format!("restore point {newest}")
    } else {
        format!("restore point {}, which {newest} builds on,", damaged.id)
    };
    let found = damage
        .found_at
        .as_ref()
        .map(|at| {
            format!(" (found {})", sluice_proto::time::format_utc(at.seconds, "%Y-%m-%dT%H:%M:%SZ"))
        })
        .unwrap_or_default();
    format!("{which} is damaged{found}: {}", quoted(&damage.problem))
}

/// `text` cut to [`QUOTED_DAMAGE_BYTES`] on a character boundary.
fn quoted(text: &str) -> String {
    if text.len() <= QUOTED_DAMAGE_BYTES {
        return text.to_owned();
    }
    let mut end = QUOTED_DAMAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(id: &str, parent: &str, created_at_seconds: i64) -> pb::RestorePoint {
        let created_at = Some(prost_types::Timestamp { seconds: created_at_seconds, nanos: 0 });
        pb::RestorePoint {
            id: id.into(),
            item: "vm".into(),
            parent_id: parent.into(),
            created_at,
            ..Default::default()
        }
    }

    fn at(revision: i64, value: pb::RestorePoint) -> Versioned<pb::RestorePoint> {
        Versioned { value, mod_revision: revision, create_revision: revision, lease: 0 }
    }

    fn damaged(mut point: pb::RestorePoint, damage: &str) -> pb::RestorePoint {
        let found_at = Some(prost_types::Timestamp { seconds: 1_796_000_000, nanos: 0 });
        point.damage = Some(Box::new(pb::RestorePointDamage { problem: damage.into(), found_at }));
        point
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn a_restore_point_whose_deletion_began_is_not_built_on() {
        let listed = [at(10, rp("s1-0", "", 1)), at(11, rp("s2-0", "s1-0", 2))];
        let deleting = BTreeSet::from(["s2-0".to_owned()]);
        assert_eq!(choose(&listed, "vm", 0, &deleting), ChainParent::Named("s1-0".into()));
        let all = BTreeSet::from(["s1-0".to_owned(), "s2-0".to_owned()]);
        assert_eq!(choose(&listed, "vm", 0, &all), ChainParent::None, "nothing left: a full");
    }

    #[test]
    fn the_parent_is_the_last_committed_whatever_the_agents_clocks_say() {
        // The second commit came from an agent whose clock is behind.
        let listed = [at(10, rp("s1-0", "", 200)), at(11, rp("s2-0", "s1-0", 100))];
        assert_eq!(choose(&listed, "vm", 0, &none()), ChainParent::Named("s2-0".into()));
        assert_eq!(choose(&[], "vm", 0, &none()), ChainParent::None, "nothing to build on: a full");
        let other = pb::RestorePoint { item: "other".into(), ..rp("s1-0", "", 1) };
        assert_eq!(
            choose(&[at(10, other)], "vm", 0, &none()),
            ChainParent::None,
            "another item's chain"
        );
    }

    #[test]
    fn restore_points_of_an_earlier_job_of_the_same_name_are_not_built_on() {
        let listed = [at(10, rp("old1-0", "", 1)), at(11, rp("old2-0", "old1-0", 2))];
        assert_eq!(
            choose(&listed, "vm", 20, &none()),
            ChainParent::None,
            "the job was created at 20"
        );
        let mut listed = listed.to_vec();
        listed.push(at(25, rp("new1-0", "", 3)));
        assert_eq!(choose(&listed, "vm", 20, &none()), ChainParent::Named("new1-0".into()));
    }

    #[test]
    fn a_chain_known_to_be_damaged_is_not_built_on() {
        let listed = [
            at(10, rp("s1-0", "", 1)),
            at(11, damaged(rp("s2-0", "s1-0", 2), "disk0.qcow2: blake3 is 89df")),
            at(12, rp("s3-0", "s2-0", 3)),
        ];
        let ChainParent::Unusable(why) = choose(&listed, "vm", 0, &none()) else {
            panic!("a damaged link must not be built on");
        };
        assert!(why.contains("restore point s2-0, which s3-0 builds on, is damaged"), "{why}");
        assert!(why.contains("blake3 is 89df"), "{why}");
        let ChainParent::Unusable(why) = choose(&listed[..2], "vm", 0, &none()) else {
            panic!("the damaged newest must not be built on");
        };
        assert!(why.starts_with("restore point s2-0 is damaged (found 2026-11-30T"), "{why}");
        assert_eq!(choose(&listed[..1], "vm", 0, &none()), ChainParent::Named("s1-0".into()));
    }

    #[test]
    fn a_new_full_after_the_damage_is_built_on() {
        let listed = [
            at(10, damaged(rp("s1-0", "", 1), "bad")),
            at(11, rp("s2-0", "s1-0", 2)),
            at(12, rp("s3-0", "", 3)),
        ];
        assert_eq!(choose(&listed, "vm", 0, &none()), ChainParent::Named("s3-0".into()));
    }

    #[test]
    fn a_long_damage_text_is_cut_in_the_warning() {
        let long = "é".repeat(400);
        let listed = [at(10, damaged(rp("s1-0", "", 1), &long))];
        let ChainParent::Unusable(why) = choose(&listed, "vm", 0, &none()) else {
            panic!("unusable")
        };
        assert!(why.len() < 400 && why.ends_with(" ..."), "{why}");
    }
}
