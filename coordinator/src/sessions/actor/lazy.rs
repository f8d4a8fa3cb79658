//! When the session actor writes what may wait: its phases and refusals at most once per
//! [`LAZY_FLUSH`], timed apart from its other writes, and its waiting reasons once it has
//! been quiet for as long, or [`WAITS_AT_LEAST`] after they were last shown. Timed from any
//! write, a busy session (outcomes written every few hundred ms) never stored its running
//! items' phases; waiting reasons shown while it is busy would cost many small sessions a
//! write per item (the first waiting items change with every freed slot), and shown only
//! once quiet, a busy session's never were.

use std::time::Duration;

use tokio::time::Instant;

use super::LAZY_FLUSH;

/// Longest a busy session's waiting reasons go unshown.
const WAITS_AT_LEAST: Duration = Duration::from_secs(30);

/// The two clocks of the lazy writes.
#[derive(Debug)]
pub(super) struct LazyClock {
    /// When the actor last wrote anything.
    last_write: Instant,
    /// When the lazy changes were last taken for a write (or found to be none).
    last_lazy: Instant,
    /// When waiting reasons were last shown.
    last_waits: Instant,
}

impl LazyClock {
    pub(super) fn new(now: Instant) -> Self {
        LazyClock { last_write: now, last_lazy: now, last_waits: now }
    }

    /// Whether waiting reasons are shown now (no write for [`LAZY_FLUSH`], or none shown for
    /// [`WAITS_AT_LEAST`]); if so, the next are shown from then on.
    pub(super) fn take_waits(&mut self, now: Instant) -> bool {
        let due = now >= self.waits_due();
        if due {
            self.last_waits = now;
        }
        due
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

    /// When waiting reasons are shown.
    pub(super) fn waits_due(&self) -> Instant {
        (self.last_write + LAZY_FLUSH).min(self.last_waits + WAITS_AT_LEAST)
    }
}

#[cfg(test)]
mod tests {
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
            assert!(now < clock.waits_due(), "busy at {tick}");
            if clock.take_lazy(now) {
                taken.push(tick);
            }
            clock.wrote(now);
        }
        assert_eq!(taken, vec![5, 10, 15, 20], "once per period, however busy");
        let last = start + Duration::from_millis(2_000);
        assert!(!clock.take_waits(last + Duration::from_millis(499)));
        assert!(clock.take_waits(last + LAZY_FLUSH), "quiet a period after the last write");
    }

    /// A session busy for minutes shows why its items wait every 30 s all the same.
    #[test]
    fn a_session_busy_for_long_shows_its_waits_every_so_often() {
        let start = Instant::now();
        let mut clock = LazyClock::new(start);
        let mut shown = Vec::new();
        for tick in 1..=700u32 {
            let now = start + Duration::from_millis(100) * tick;
            if clock.take_waits(now) {
                shown.push(tick);
            }
            clock.wrote(now);
        }
        assert_eq!(shown, vec![300, 600], "every WAITS_AT_LEAST");
    }
}
