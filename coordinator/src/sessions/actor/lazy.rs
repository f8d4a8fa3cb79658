//! When the session actor writes what may wait: its phases and refusals at most once per
//! [`LAZY_FLUSH`], timed apart from its other writes, and its waiting reasons once it has
//! been quiet for as long. Timed from any write, a busy session (outcomes written every few
//! hundred ms) never stored its running items' phases; waiting reasons shown while it is
//! busy would cost many small sessions a write per item (the first waiting items change
//! with every freed slot).

use tokio::time::Instant;

use super::LAZY_FLUSH;

/// The two clocks of the lazy writes.
#[derive(Debug)]
pub(super) struct LazyClock {
    /// When the actor last wrote anything.
    last_write: Instant,
    /// When the lazy changes were last taken for a write (or found to be none).
    last_lazy: Instant,
}

impl LazyClock {
    pub(super) fn new(now: Instant) -> Self {
        LazyClock { last_write: now, last_lazy: now }
    }

    /// Whether waiting reasons may be shown: no write for [`LAZY_FLUSH`].
    pub(super) fn quiet(&self, now: Instant) -> bool {
        now >= self.waits_due()
    }

    /// Whether the lazy changes are taken now; if so, the next are taken a period later.
    pub(super) fn take_lazy(&mut self, now: Instant) -> bool {
        let due = now >= self.lazy_due();
        if due {
            self.last_lazy = now;
        }
        due
    }

    /// A write was made.
    pub(super) fn wrote(&mut self, now: Instant) {
        self.last_write = now;
    }

    /// When lazy changes waiting now are taken.
    pub(super) fn lazy_due(&self) -> Instant {
        self.last_lazy + LAZY_FLUSH
    }

    /// When waiting reasons are shown if no write comes first.
    pub(super) fn waits_due(&self) -> Instant {
        self.last_write + LAZY_FLUSH
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A session that writes an outcome every 100 ms still has its phases taken every
    /// 500 ms, and shows no waiting reasons until it is quiet.
    #[test]
    fn a_busy_session_takes_its_lazy_changes_every_period_and_shows_waits_once_quiet() {
        let start = Instant::now();
        let mut clock = LazyClock::new(start);
        let mut taken = Vec::new();
        for tick in 1..=20u32 {
            let now = start + Duration::from_millis(100) * tick;
            assert!(!clock.quiet(now), "busy at {tick}");
            if clock.take_lazy(now) {
                taken.push(tick);
            }
            clock.wrote(now);
        }
        assert_eq!(taken, vec![5, 10, 15, 20], "once per period, however busy");
        let last = start + Duration::from_millis(2_000);
        assert!(!clock.quiet(last + Duration::from_millis(499)));
        assert!(clock.quiet(last + LAZY_FLUSH), "quiet a period after the last write");
    }
}
