//! What retention does, decided without I/O: each item keeps its `keep` newest restore
//! points, and what falls out goes without ever breaking a chain. Newest means last committed:
//! restore points come in the order etcd created their catalog entries, never ordered by the
//! agents' clocks (`created_at`).
//!
//! A restore point that falls out and that no kept restore point builds on (directly or
//! through others) is deleted, children before parents. One that a kept restore point builds
//! on is merged instead (forever-forward incremental): the full at the root of the chain is
//! merged into its child, which becomes full, then that one into its child, and so on up to
//! the first kept restore point. A chain that cannot be merged that way (its root is not a
//! full restore point, or one of its links has several children) is kept whole.
//!
//! A restore point whose deletion began (its durable deletion mark, left by a retention that
//! failed or died half-way) falls out whatever `keep` says, so the deletion is finished the
//! same chain-aware way: deleted when nothing kept builds on it, else merged into its child.
//!
//! Restore points an earlier job of the same name made (`inherited`: the job was deleted,
//! its restore points kept, and a new one created under its name) are not this job's: they
//! neither count towards `keep` nor fall out, so they stay until deleted by hand. Only a
//! deletion already begun on one (its mark) is finished.

use std::collections::{BTreeMap, BTreeSet};

use sluice_proto::pb;

/// One thing retention does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Delete a restore point that nothing kept builds on.
    Delete(pb::RestorePoint),
    /// Merge the full restore point `base` into `child`, its only child; `base` is gone
    /// afterwards.
    Merge {
        /// The full restore point that falls out.
        base: pb::RestorePoint,
        /// Its child, full afterwards (boxed: the variants stay of one size).
        child: Box<pb::RestorePoint>,
    },
}

/// The steps, in order, that leave each item with its `keep` newest restore points (all
/// when `keep` is 0) and finish the deletions begun (`deleting`, by id), leaving the
/// `inherited` ones (by id) alone. `restore_points` come in commit order (oldest first). The
/// merges of one chain must run in the order given.
pub(crate) fn plan(
    restore_points: &[pb::RestorePoint],
    keep: u32,
    deleting: &BTreeSet<String>,
    inherited: &BTreeSet<String>,
) -> Vec<Step> {
    let mut by_item: BTreeMap<&str, Vec<&pb::RestorePoint>> = BTreeMap::new();
    for rp in restore_points {
        by_item.entry(rp.item.as_str()).or_default().push(rp);
    }
    let marks = Marks { deleting, inherited };
    by_item.into_values().flat_map(|rps| plan_item(rps, keep as usize, &marks)).collect()
}

/// The restore points whose deletion began, and those an earlier job made.
struct Marks<'a> {
    deleting: &'a BTreeSet<String>,
    inherited: &'a BTreeSet<String>,
}

fn plan_item(mut rps: Vec<&pb::RestorePoint>, keep: usize, marks: &Marks<'_>) -> Vec<Step> {
    // Newest first.
    rps.reverse();
    let item = Item::new(&rps);
    let mut own = 0;
    let (mut out, mut kept) = (Vec::new(), Vec::new());
    for rp in &rps {
        let counted = !marks.inherited.contains(&rp.id);
        let beyond_keep = counted && keep > 0 && own >= keep;
        own += usize::from(counted);
        if beyond_keep || marks.deleting.contains(&rp.id) { out.push(*rp) } else { kept.push(*rp) }
    }
    let out_ids: BTreeSet<&str> = out.iter().map(|rp| rp.id.as_str()).collect();
    let mut steps: Vec<Step> = out
        .iter()
        .filter(|rp| !item.has_kept_descendant(&rp.id, &out_ids))
        .map(|rp| Step::Delete((*rp).clone()))
        .collect();
    for top in kept.iter().rev() {
        if let Some(chain) = item.chain_below(top, &out_ids) {
            steps.extend(merges(&chain));
        }
    }
    steps
}

/// The merges that fold `chain` (root first, the kept restore point last) into its top.
fn merges(chain: &[&pb::RestorePoint]) -> Vec<Step> {
    chain
        .windows(2)
        .map(|pair| Step::Merge { base: pair[0].clone(), child: Box::new(pair[1].clone()) })
        .collect()
}

/// An item's restore points by id, with the children of each.
struct Item<'a> {
    by_id: BTreeMap<&'a str, &'a pb::RestorePoint>,
    children: BTreeMap<&'a str, Vec<&'a str>>,
}

impl<'a> Item<'a> {
    fn new(rps: &[&'a pb::RestorePoint]) -> Self {
        let by_id = rps.iter().map(|rp| (rp.id.as_str(), *rp)).collect();
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for rp in rps.iter().filter(|rp| !rp.parent_id.is_empty()) {
            children.entry(rp.parent_id.as_str()).or_default().push(rp.id.as_str());
        }
        Item { by_id, children }
    }

    /// Whether a restore point not in `out` builds on `id`, directly or through others.
    fn has_kept_descendant(&self, id: &str, out: &BTreeSet<&str>) -> bool {
        let mut stack = vec![id];
        let mut seen = BTreeSet::new();
        while let Some(next) = stack.pop() {
            for child in self.children.get(next).into_iter().flatten() {
                if !out.contains(child) {
                    return true;
                }
                if seen.insert(*child) {
                    stack.push(child);
                }
            }
        }
        false
    }

    /// The chain from its full root up to the kept restore point `top`, when `top` builds
    /// on restore points that fall out and the chain can be merged; `None` otherwise.
    fn chain_below(
        &self,
        top: &'a pb::RestorePoint,
        out: &BTreeSet<&str>,
    ) -> Option<Vec<&'a pb::RestorePoint>> {
        if !out.contains(top.parent_id.as_str()) {
            return None;
        }
        let mut chain = vec![top];
        let mut current = top;
        while out.contains(current.parent_id.as_str()) {
            let parent = *self.by_id.get(current.parent_id.as_str())?;
            let only_child = self.children.get(parent.id.as_str()).is_some_and(|c| c.len() == 1);
            if !only_child || chain.iter().any(|rp| rp.id == parent.id) {
                return None;
            }
            chain.push(parent);
            current = parent;
        }
        // The root must stand alone: a full restore point (or one from before kinds).
        if !current.parent_id.is_empty() || current.kind() == pb::RestorePointKind::Incremental {
            return None;
        }
        chain.reverse();
        Some(chain)
    }
}

#[cfg(test)]
mod tests;
