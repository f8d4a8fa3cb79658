//! The session actor's side of a stop: the cancels first, the pending items closed once the
//! agents answered them, and a stop that came before the end was stored.

use sluice_proto::pb;
use tracing::info;

use super::{SessionActor, now_ms};
use crate::sessions::records::{StopKey, stop_from};

impl SessionActor {
    /// Applies a stop read from its key; the newest key revision seen guards the final write.
    /// Its first half: the cancels go out now, the pending items are closed once the agents
    /// answered them.
    pub(super) fn take_stop(&mut self, stop: StopKey) {
        self.stop_seen = self.stop_seen.max(stop.revision);
        let effects = self.machine.begin_stop(stop.stop);
        self.needs_dispatch = true;
        self.execute(effects);
        self.yield_due = true;
        self.close_due = true;
    }

    /// The second half of a stop. Closing pending items takes time in proportion to the
    /// session's size: it waits until the agents answered the cancels or every cancelled
    /// task has ended (the CPU it takes would otherwise be taken from the agents cancelling,
    /// on a small machine), so how soon a task is cancelled does not depend on how many items
    /// the session has, and the session's end waits for no answer it does not need. Closed
    /// items without a record are not written; the gauge counts them here.
    pub(super) fn close_after_cancels(&mut self) {
        let implied = self.machine.end_stop(now_ms(), &self.stored);
        self.gauge.stored(&self.machine, &implied);
    }

    /// The final record was not written: a stop came after the actor last saw the stop key.
    /// The end is decided again with it (graceful: cancelled, immediate: failed) and written.
    pub(super) fn on_stop_changed(&mut self, stop: Option<pb::StopRequest>, revision: i64) {
        info!(revision, "a stop came before the session's end was stored; it applies");
        self.machine.mark_dirty(&[], true);
        self.stop_seen = revision;
        if let Some(stop) = stop {
            self.take_stop(StopKey { stop: stop_from(&stop), revision });
        }
    }
}
