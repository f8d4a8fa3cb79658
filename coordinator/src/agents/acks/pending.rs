//! The acknowledgements waiting for one agent, and the rules that batch them (pure): keys
//! of any sessions share a request when they share an epoch, up to `MAX_KEYS`.

use std::collections::BTreeMap;

use sluice_proto::{MAX_ACK_GROUPS, ids::Epoch, pb};

/// Most keys one AckTasks carries: acks piled up while an agent was unreachable still go in
/// requests far below its 4 MiB message limit (a key is well under 100 bytes).
pub(super) const MAX_KEYS: usize = 1000;

/// Acknowledgements owed to one agent that no call carries now.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Keys that may share a request, per epoch (a request carries one epoch).
    shared: BTreeMap<Epoch, Vec<pb::TaskKey>>,
    /// Parts of a request refused as stale, one session each, sent alone so that the stale
    /// session's refusal holds up no other session's acks.
    alone: Vec<Batch>,
}

/// The keys of one AckTasks request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    pub(crate) epoch: Epoch,
    pub(crate) keys: Vec<pb::TaskKey>,
    /// Split out of a request refused as stale: never merged with other keys again.
    alone: bool,
}

impl Pending {
    /// Adds `keys`, acknowledged at `epoch`.
    pub(super) fn add(&mut self, epoch: Epoch, keys: Vec<pb::TaskKey>) {
        if !keys.is_empty() {
            self.shared.entry(epoch).or_default().extend(keys);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.shared.is_empty() && self.alone.is_empty()
    }

    /// Everything pending, as requests: each epoch's keys in requests of at most `MAX_KEYS`,
    /// then the parts sent alone.
    pub(super) fn take(&mut self) -> Vec<Batch> {
        let shared = std::mem::take(&mut self.shared);
        let mut batches: Vec<Batch> =
            shared.into_iter().flat_map(|(epoch, keys)| chunks(epoch, keys)).collect();
        batches.append(&mut self.alone);
        batches
    }

    /// Puts back a batch no call delivered, to go with the next `take`: merged with the keys
    /// that arrived meanwhile, unless it is sent alone.
    pub(super) fn put_back(&mut self, batch: Batch) {
        if batch.alone {
            self.alone.push(batch);
        } else {
            self.add(batch.epoch, batch.keys);
        }
    }
}

impl Batch {
    pub(crate) fn request(&self) -> pb::AckTasksRequest {
        pb::AckTasksRequest { epoch: self.epoch.get(), keys: self.keys.clone() }
    }

    /// What is left to send once the agent refused this batch as stale. The agent refuses a
    /// whole request when one of its sessions is stale, so a batch of several sessions is
    /// split into each session's part, sent alone (only the stale ones are refused again);
    /// a batch of one session is dropped: a newer owner of it acknowledges.
    pub(super) fn after_stale(self) -> Vec<Batch> {
        let mut by_session: BTreeMap<String, Vec<pb::TaskKey>> = BTreeMap::new();
        for key in self.keys {
            by_session.entry(key.session_id.clone()).or_default().push(key);
        }
        if by_session.len() < 2 {
            return Vec::new();
        }
        let epoch = self.epoch;
        by_session.into_values().map(|keys| Batch { epoch, keys, alone: true }).collect()
    }
}

/// `batches` as calls: each call's batches go as the groups of one AckTaskGroups (a lone
/// batch as AckTasks), at most `MAX_ACK_GROUPS` groups and `MAX_KEYS` keys in all (a batch
/// of `MAX_KEYS` goes alone).
pub(crate) fn calls(batches: Vec<Batch>) -> Vec<Vec<Batch>> {
    let mut calls: Vec<Vec<Batch>> = Vec::new();
    let mut keys = 0;
    for batch in batches {
        let fits = calls
            .last()
            .is_some_and(|call| call.len() < MAX_ACK_GROUPS && keys + batch.keys.len() <= MAX_KEYS);
        if !fits {
            calls.push(Vec::new());
            keys = 0;
        }
        keys += batch.keys.len();
        calls.last_mut().expect("a call was pushed").push(batch);
    }
    calls
}

/// One AckTaskGroups request for a call's batches.
pub(super) fn groups_request(call: &[Batch]) -> pb::AckTaskGroupsRequest {
    pb::AckTaskGroupsRequest { groups: call.iter().map(Batch::request).collect() }
}

fn chunks(epoch: Epoch, keys: Vec<pb::TaskKey>) -> Vec<Batch> {
    let mut keys = keys.into_iter().peekable();
    let mut batches = Vec::new();
    while keys.peek().is_some() {
        let chunk = keys.by_ref().take(MAX_KEYS).collect();
        batches.push(Batch { epoch, keys: chunk, alone: false });
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(n: i64) -> Epoch {
        Epoch::try_from(n).expect("a positive epoch")
    }

    fn key(session: &str, item_index: u32) -> pb::TaskKey {
        pb::TaskKey { session_id: session.into(), item_index, attempt: 1 }
    }

    fn keys(batches: &[Batch]) -> Vec<Vec<pb::TaskKey>> {
        batches.iter().map(|b| b.keys.clone()).collect()
    }

    #[test]
    fn keys_of_one_epoch_share_a_request_whatever_their_session() {
        let mut pending = Pending::default();
        pending.add(epoch(1), vec![key("s1", 0)]);
        pending.add(epoch(1), vec![key("s2", 0), key("s2", 1)]);
        pending.add(epoch(1), vec![key("s1", 1)]);
        let batches = pending.take();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].epoch, epoch(1));
        assert_eq!(keys(&batches), [vec![key("s1", 0), key("s2", 0), key("s2", 1), key("s1", 1)]]);
        assert!(pending.is_empty(), "take leaves nothing pending");
        assert!(pending.take().is_empty());
    }

    #[test]
    fn each_epoch_goes_in_its_own_request() {
        let mut pending = Pending::default();
        pending.add(epoch(2), vec![key("s2", 0)]);
        pending.add(epoch(1), vec![key("s1", 0)]);
        pending.add(epoch(2), vec![key("s3", 0)]);
        let batches = pending.take();
        let epochs: Vec<Epoch> = batches.iter().map(|b| b.epoch).collect();
        assert_eq!(epochs, [epoch(1), epoch(2)]);
        assert_eq!(keys(&batches), [vec![key("s1", 0)], vec![key("s2", 0), key("s3", 0)]]);
        assert_eq!(batches[1].request().epoch, 2);
    }

    #[test]
    fn batches_of_several_epochs_share_a_call_up_to_its_limits() {
        let batch = |e: i64, n: u32| Batch {
            epoch: epoch(e),
            keys: (0..n).map(|i| key(&format!("s{e}"), i)).collect(),
            alone: false,
        };
        let sizes = |calls: &[Vec<Batch>]| -> Vec<usize> { calls.iter().map(Vec::len).collect() };
        assert!(calls(Vec::new()).is_empty());
        let small: Vec<Batch> = (1..=MAX_ACK_GROUPS as i64 + 1).map(|e| batch(e, 1)).collect();
        assert_eq!(sizes(&calls(small)), [MAX_ACK_GROUPS, 1], "at most MAX_ACK_GROUPS groups");
        let large = vec![batch(1, 600), batch(2, 400), batch(3, 1), batch(4, MAX_KEYS as u32)];
        let packed = calls(large);
        assert_eq!(sizes(&packed), [2, 1, 1], "at most MAX_KEYS keys, a full batch alone");
        let request = groups_request(&packed[0]);
        let epochs: Vec<i64> = request.groups.iter().map(|g| g.epoch).collect();
        assert_eq!(epochs, [1, 2], "one group per batch, in order");
    }

    #[test]
    fn no_keys_add_nothing() {
        let mut pending = Pending::default();
        pending.add(epoch(1), Vec::new());
        assert!(pending.is_empty());
    }

    #[test]
    fn a_request_carries_at_most_max_keys() {
        let mut pending = Pending::default();
        let many: Vec<pb::TaskKey> = (0..2 * MAX_KEYS as u32 + 1).map(|i| key("s1", i)).collect();
        pending.add(epoch(1), many.clone());
        let batches = pending.take();
        let sizes: Vec<usize> = batches.iter().map(|b| b.keys.len()).collect();
        assert_eq!(sizes, [MAX_KEYS, MAX_KEYS, 1]);
        let sent: Vec<pb::TaskKey> = batches.into_iter().flat_map(|b| b.keys).collect();
        assert_eq!(sent, many, "every key once, in order");
    }

    #[test]
    fn a_failed_batch_goes_back_with_what_arrived_meanwhile() {
        let mut pending = Pending::default();
        pending.add(epoch(1), vec![key("s1", 0)]);
        let mut batches = pending.take();
        pending.add(epoch(1), vec![key("s2", 0)]);
        pending.put_back(batches.remove(0));
        let batches = pending.take();
        assert_eq!(batches.len(), 1);
        assert_eq!(keys(&batches), [vec![key("s2", 0), key("s1", 0)]]);
    }

    #[test]
    fn a_stale_batch_of_one_session_is_dropped() {
        let batch = Batch { epoch: epoch(1), keys: vec![key("s1", 0), key("s1", 1)], alone: false };
        assert!(batch.after_stale().is_empty());
    }

    #[test]
    fn a_stale_batch_of_several_sessions_is_split_by_session() {
        let keys_sent = vec![key("s2", 0), key("s1", 0), key("s2", 1)];
        let batch = Batch { epoch: epoch(3), keys: keys_sent, alone: false };
        let parts = batch.after_stale();
        assert_eq!(keys(&parts), [vec![key("s1", 0)], vec![key("s2", 0), key("s2", 1)]]);
        assert!(parts.iter().all(|p| p.alone && p.epoch == epoch(3)));
    }

    #[test]
    fn split_parts_are_sent_alone_even_when_put_back() {
        let mut pending = Pending::default();
        let batch = Batch { epoch: epoch(1), keys: vec![key("s1", 0), key("s2", 0)], alone: false };
        for part in batch.after_stale() {
            pending.put_back(part);
        }
        pending.add(epoch(1), vec![key("s3", 0)]);
        let mut batches = pending.take();
        assert_eq!(keys(&batches), [vec![key("s3", 0)], vec![key("s1", 0)], vec![key("s2", 0)]]);
        // A part that failed otherwise (say, a timeout) stays alone.
        pending.put_back(batches.remove(1));
        pending.add(epoch(1), vec![key("s4", 0)]);
        assert_eq!(keys(&pending.take()), [vec![key("s4", 0)], vec![key("s1", 0)]]);
        // A part refused as stale in turn is dropped: its session is the stale one.
        assert!(batches.remove(1).after_stale().is_empty());
    }
}
