//! One page of a session's items, and the count of its items by state. A session of 50,000
//! items was 11-16 MB per read and per watch event, and the only way to learn how far it got
//! was to read every item: readers ask for a page (`item_offset`, `item_limit`) and get the
//! counts of every item beside it. The counts are made when a read is answered, from the
//! items that answer reads anyway; the session actor keeps none.

use std::ops::Range;

use sluice_proto::pb::{self, ItemState};

/// Which items an answer carries, in job order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ItemPage {
    /// The first item (0: from the start).
    pub(crate) offset: u32,
    /// At most this many (0: every item from `offset` on).
    pub(crate) limit: u32,
}

impl ItemPage {
    /// Every item: what a request that names no page gets, as before paging existed.
    pub(crate) const ALL: ItemPage = ItemPage { offset: 0, limit: 0 };

    pub(crate) fn of_get(request: &pb::GetSessionRequest) -> ItemPage {
        ItemPage { offset: request.item_offset, limit: request.item_limit }
    }

    pub(crate) fn of_watch(request: &pb::WatchSessionRequest) -> ItemPage {
        ItemPage { offset: request.item_offset, limit: request.item_limit }
    }

    /// Whether this page is every item.
    pub(crate) fn is_all(self) -> bool {
        self == ItemPage::ALL
    }

    /// The positions of the page among `total` items: empty when `offset` is at or past the
    /// end (a reader that wants only the counts asks for that), cut short at the end.
    pub(crate) fn range(self, total: usize) -> Range<usize> {
        let start = usize::try_from(self.offset).unwrap_or(usize::MAX).min(total);
        let end = match self.limit {
            0 => total,
            limit => start.saturating_add(usize::try_from(limit).unwrap_or(usize::MAX)).min(total),
        };
        start..end
    }
}

/// How many of `states` are in each state.
pub(crate) fn count_states(states: impl IntoIterator<Item = ItemState>) -> pb::ItemStateCounts {
    let mut counts = pb::ItemStateCounts::default();
    for state in states {
        let count = match state {
            ItemState::Pending => &mut counts.pending,
            ItemState::Processing => &mut counts.processing,
            ItemState::Success => &mut counts.success,
            ItemState::Warning => &mut counts.warning,
            ItemState::Failed => &mut counts.failed,
            ItemState::Canceled => &mut counts.canceled,
            ItemState::NotProcessed => &mut counts.not_processed,
        };
        *count = count.saturating_add(1);
    }
    counts
}

/// `session` with only the items of `page`: each stream of a shared watch event that asked
/// for a page gets its own copy, without cloning the items it leaves out. Every field is
/// named (no `..`), so a field added to `Session` fails to compile here until it is copied.
pub(crate) fn paged(session: &pb::Session, page: ItemPage) -> pb::Session {
    let pb::Session {
        id,
        job,
        state,
        result,
        canceled,
        message,
        stop_mode,
        owner,
        epoch,
        items,
        created_at,
        ended_at,
        stopped_by,
        stop_requested_at,
        retry_of,
        job_type,
        full,
        trigger,
        due_at,
        started_by,
        item_count,
        graceful_deadline,
        item_state_counts,
    } = session;
    pb::Session {
        id: id.clone(),
        job: job.clone(),
        state: *state,
        result: *result,
        canceled: *canceled,
        message: message.clone(),
        stop_mode: *stop_mode,
        owner: owner.clone(),
        epoch: *epoch,
        items: items[page.range(items.len())].to_vec(),
        created_at: *created_at,
        ended_at: *ended_at,
        stopped_by: stopped_by.clone(),
        stop_requested_at: *stop_requested_at,
        retry_of: retry_of.clone(),
        job_type: *job_type,
        full: *full,
        trigger: *trigger,
        due_at: *due_at,
        started_by: started_by.clone(),
        item_count: *item_count,
        graceful_deadline: *graceful_deadline,
        item_state_counts: *item_state_counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(offset: u32, limit: u32) -> ItemPage {
        ItemPage { offset, limit }
    }

    #[test]
    fn a_page_is_its_slice_of_the_items_cut_at_the_end() {
        assert_eq!(ItemPage::ALL.range(0), 0..0);
        assert_eq!(ItemPage::ALL.range(7), 0..7);
        assert_eq!(page(0, 3).range(7), 0..3);
        assert_eq!(page(3, 3).range(7), 3..6);
        assert_eq!(page(6, 3).range(7), 6..7, "the last page is cut short");
        assert_eq!(page(2, 0).range(7), 2..7, "no limit: to the end");
        assert_eq!(page(7, 3).range(7), 7..7, "at the end: no items");
        assert_eq!(page(100, 0).range(7), 7..7, "past the end: no items");
        assert_eq!(page(u32::MAX, u32::MAX).range(7), 7..7);
        assert_eq!(page(1, u32::MAX).range(7), 1..7, "any limit is taken");
    }

    #[test]
    fn pages_in_turn_cover_every_item_once() {
        for total in [0_usize, 1, 499, 500, 501, 1_200] {
            let mut covered = Vec::new();
            let mut offset = 0;
            while offset < total {
                covered.extend(page(u32::try_from(offset).unwrap_or(u32::MAX), 500).range(total));
                offset += 500;
            }
            assert_eq!(covered, (0..total).collect::<Vec<_>>(), "{total} items");
        }
    }

    #[test]
    fn counts_name_every_state_and_sum_to_the_items() {
        use ItemState::*;
        let states = [Pending, Processing, Success, Success, Warning, Failed, Canceled];
        let states = states.into_iter().chain([NotProcessed; 3]);
        let counts = count_states(states);
        let expected = pb::ItemStateCounts {
            pending: 1,
            processing: 1,
            success: 2,
            warning: 1,
            failed: 1,
            canceled: 1,
            not_processed: 3,
        };
        assert_eq!(counts, expected);
        assert_eq!(count_states([]), pb::ItemStateCounts::default());
    }

    #[test]
    fn a_paged_copy_keeps_every_field_but_the_items_left_out() {
        let item = |name: &str| pb::ItemStatus { name: name.into(), ..Default::default() };
        let session = pb::Session {
            id: "s-1".into(),
            job: "j".into(),
            owner: "c1".into(),
            epoch: 7,
            item_count: 4,
            items: ["a", "b", "c", "d"].map(item).to_vec(),
            item_state_counts: Some(pb::ItemStateCounts { pending: 4, ..Default::default() }),
            ..Default::default()
        };
        let copy = paged(&session, page(1, 2));
        let names: Vec<&str> = copy.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(pb::Session { items: session.items.clone(), ..copy }, session);
        assert_eq!(paged(&session, ItemPage::ALL), session);
    }
}
