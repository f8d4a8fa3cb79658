//! The metrics a session owner keeps: `sluice_items{job,state}` for the stored state of its
//! items (moved as flushes store changes; given up when the actor ends, so the next owner
//! counts them), and, when it ends the session, `sluice_sessions_total`,
//! `sluice_bytes_read_total`, `sluice_bytes_transferred_total` and `sluice_stop_latency_seconds`.

use prometheus_client::metrics::gauge::Gauge;

use crate::sessions::machine::{ItemState, Machine, SessionResult};

use super::{Bytes, Metrics};

/// One owned session's contribution to the metrics.
pub(crate) struct SessionGauge {
    metrics: Metrics,
    job: String,
    /// The state each item (by position) is counted under.
    counted: Vec<ItemState>,
    /// The job's `sluice_items` gauge of each state, by ordinal (looked up once each).
    gauges: [Option<Gauge>; ItemState::ALL.len()],
}

impl SessionGauge {
    /// Counts the items of `machine` as they were loaded.
    pub(crate) fn new(metrics: Metrics, job: &str, machine: &Machine) -> Self {
        let counted: Vec<ItemState> = machine.items().iter().map(|item| item.state()).collect();
        let mut gauge = SessionGauge {
            metrics,
            job: job.to_string(),
            counted: Vec::new(),
            gauges: Default::default(),
        };
        for (state, count) in tally(&counted) {
            gauge.add(state, count);
        }
        gauge.counted = counted;
        gauge
    }

    fn add(&mut self, state: ItemState, count: i64) {
        let (metrics, job) = (&self.metrics, self.job.as_str());
        let gauge = self.gauges[state.ordinal()]
            .get_or_insert_with(|| metrics.items_gauge(job, state_label(state)));
        gauge.inc_by(count);
    }

    /// The items at `positions` were stored: count them under their state now.
    pub(crate) fn stored(&mut self, machine: &Machine, positions: &[usize]) {
        // Net change per state, added once each: a stop of a large session stores (or
        // implies) as many items as it has, and each label lookup allocates and locks.
        let mut changes = [0i64; ItemState::ALL.len()];
        for &pos in positions {
            let now = machine.item(pos).state();
            let Some(counted) = self.counted.get_mut(pos) else { continue };
            if *counted != now {
                changes[std::mem::replace(counted, now).ordinal()] -= 1;
                changes[now.ordinal()] += 1;
            }
        }
        for (state, change) in ItemState::ALL.into_iter().zip(changes) {
            if change != 0 {
                self.add(state, change);
            }
        }
    }

    pub(crate) fn finished(&self, machine: &Machine) {
        let status = machine.status();
        let result = match status.result {
            Some(SessionResult::Success) => "success",
            Some(SessionResult::Warning) => "warning",
            Some(SessionResult::Failed) | None => "failed",
        };
        let items = machine.items();
        let read = items.iter().map(|item| item.status.bytes_read).sum();
        let transferred = items.iter().map(|item| item.status.bytes_transferred).sum();
        self.metrics.session_ended(&self.job, result, Bytes { read, transferred });
        if let (Some(stop), Some(ended_ms)) = (&status.stop, status.ended_at_ms) {
            let seconds = (ended_ms - stop.requested_at_ms).max(0) as f64 / 1000.0;
            self.metrics.stop_latency(stop.mode, seconds);
        }
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        for (state, count) in tally(&self.counted) {
            self.add(state, -count);
        }
    }
}

/// How many items are in each state.
fn tally(states: &[ItemState]) -> Vec<(ItemState, i64)> {
    let mut counts = [0i64; ItemState::ALL.len()];
    for &state in states {
        counts[state.ordinal()] += 1;
    }
    ItemState::ALL.into_iter().zip(counts).filter(|&(_, count)| count != 0).collect()
}

fn state_label(state: ItemState) -> &'static str {
    match state {
        ItemState::Pending => "pending",
        ItemState::Processing => "processing",
        ItemState::Success => "success",
        ItemState::Warning => "warning",
        ItemState::Failed => "failed",
        ItemState::Canceled => "canceled",
        ItemState::NotProcessed => "not_processed",
    }
}
