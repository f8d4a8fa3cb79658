//! When the session actor writes to etcd, and what a write's answer means.

use tokio::time::Instant;
use tracing::warn;

use super::{BYTES_FLUSH, Exit, LAZY_FLUSH, Msg, RETRY_BACKOFF, SessionActor};
use crate::{
    error::Error,
    sessions::{persist, records},
};

impl SessionActor {
    pub(super) fn maybe_flush(&mut self) {
        if self.outbox.is_flushing() || self.retry_flush_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let lazy_due = self.machine.has_lazy_changes() && self.last_flush.elapsed() >= LAZY_FLUSH;
        let bytes_due =
            self.machine.has_byte_changes() && self.last_bytes_flush.elapsed() >= BYTES_FLUSH;
        let urgent = self.machine.has_urgent_changes() || self.outbox.has_catalog();
        if !urgent && !lazy_due && !bytes_due {
            // Outcomes already stored (duplicates): acknowledge without writing.
            let acks = self.outbox.take_stored_acks();
            self.send_acks(acks);
            return;
        }
        self.retry_flush_at = None;
        let stopped = self.machine.is_stopped();
        let (items, session) = self.machine.take_dirty(lazy_due || stopped, bytes_due || stopped);
        if bytes_due {
            self.last_bytes_flush = Instant::now();
        }
        let late = self.outbox.flush_started();
        let batch = records::flush(&self.base, &self.machine, (&items, late), session);
        self.last_flush = Instant::now();
        let (store, id, epoch) =
            (self.ctx.store.clone(), self.machine.id().to_string(), self.epoch);
        self.report(async move {
            let result = persist::flush(&store, &id, epoch, batch).await;
            Msg::Flushed { result, items, session }
        });
    }

    pub(super) fn on_flushed(
        &mut self,
        result: crate::error::Result<()>,
        items: Vec<usize>,
        session: bool,
    ) -> Option<Exit> {
        match result {
            Ok(()) => {
                self.gauge.stored(&self.machine, &items);
                // Only what this flush stored: later dispatches and outcomes wait for theirs.
                let stored = self.outbox.flush_stored();
                for dispatch in stored.runs {
                    self.send_run(dispatch);
                }
                self.send_acks(stored.acks);
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
}
