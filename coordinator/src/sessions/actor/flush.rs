//! When the session actor writes to etcd, and what a write's answer means.

use tokio::time::Instant;
use tracing::warn;

use super::{BYTES_FLUSH, Exit, Msg, RETRY_BACKOFF, SessionActor};
use crate::{
    error::Error,
    sessions::{
        machine::ItemState,
        persist::{self, Flushed, Written},
        records,
    },
};

impl SessionActor {
    pub(super) fn maybe_flush(&mut self) {
        if self.outbox.is_flushing() || self.retry_flush_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let now = Instant::now();
        if self.machine.has_waits() && self.lazy.take_waits(now) {
            // Written once the session is quiet (or now and then): most rounds' reasons are
            // replaced by the next round's.
            self.machine.show_waits();
        }
        let lazy_due = self.lazy.take_lazy(now) && self.machine.has_lazy_changes();
        let bytes_due =
            self.machine.has_byte_changes() && self.last_bytes_flush.elapsed() >= BYTES_FLUSH;
        let urgent = self.machine.has_urgent_changes();
        if !urgent && !lazy_due && !bytes_due {
            // A retry now due that finds nothing to write is over (its time, past, would
            // wake the actor again and again).
            self.retry_flush_at = None;
            // Outcomes already stored (duplicates): acknowledge without writing.
            let acks = self.outbox.take_stored_acks();
            self.send_acks(acks);
            return;
        }
        self.retry_flush_at = None;
        let stopped = self.machine.is_stopped();
        let (items, session) = self.machine.take_dirty(lazy_due || stopped, bytes_due || stopped);
        let items = self.drop_implied(items);
        if bytes_due {
            self.last_bytes_flush = Instant::now();
        }
        self.outbox.flush_started();
        let batch = records::flush(&self.base, &self.machine, &items, session);
        self.lazy.wrote(Instant::now());
        let (store, id, owner) =
            (self.ctx.store.clone(), self.machine.id().to_string(), self.owner.clone());
        let stop_seen = self.stop_seen;
        self.report(async move {
            let result = persist::flush(&store, &id, &owner, batch, stop_seen).await;
            Msg::Flushed { result, items, session }
        });
    }

    pub(super) fn on_flushed(
        &mut self,
        result: crate::error::Result<Written>,
        items: Vec<usize>,
        session: bool,
    ) -> Option<Exit> {
        match result {
            Ok(written) => {
                self.owner.revision = written.revision;
                self.gauge.stored(&self.machine, &items);
                self.machine.catalogued(&items);
                // Only what this flush stored: later dispatches and outcomes wait for theirs.
                let released = self.outbox.flush_stored();
                for dispatch in released.runs {
                    self.send_run(dispatch);
                }
                self.send_acks(released.acks);
                if let Some(Flushed::StopChanged(stop, revision)) = written.session {
                    self.on_stop_changed(stop, revision);
                }
                None
            }
            Err(Error::Fenced(_)) => {
                warn!("session write refused: another coordinator owns it now");
                Some(Exit::Fenced)
            }
            Err(error) => {
                warn!(%error, "session write failed; retrying");
                self.machine.mark_dirty(&items, session);
                self.outbox.flush_failed();
                self.retry_flush_at = Some(Instant::now() + RETRY_BACKOFF);
                None
            }
        }
    }

    /// Leaves out the items a stop closed that were never written: under a stop, an item
    /// without a record reads as NOT_PROCESSED (`SessionView`), so a stop of a large session
    /// writes only the items that ran or waited with a reason, not every pending one. Every
    /// other item is entered as stored from now on.
    fn drop_implied(&mut self, items: Vec<usize>) -> Vec<usize> {
        let (implied, items): (Vec<usize>, Vec<usize>) = items.into_iter().partition(|&pos| {
            self.machine.item(pos).state() == ItemState::NotProcessed && !self.stored[pos]
        });
        self.gauge.stored(&self.machine, &implied);
        for &pos in &items {
            self.stored[pos] = true;
        }
        items
    }
}
