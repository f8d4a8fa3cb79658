//! The coordinator's runtime proves to the lease thread that it still answers.
//!
//! The lease lives on a thread of its own so that load on the runtime cannot cost it; but a
//! runtime that has stopped working (a deadlock, every worker stuck or starved for good)
//! must still lose its lease, or its sessions would never move to a peer. A task on the
//! runtime stores the time every second; the lease thread gives the lease up when that time
//! is older than a bound far above the stalls load causes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

/// How long the runtime may stay silent before the coordinator gives its lease up: three
/// TTLs, and never under 30 s. Load stalls the runtime for seconds at worst; a bound near the
/// TTL would bring back the fencing under load that moving the lease off the runtime ended.
pub(crate) fn default_bound(ttl: Duration) -> Duration {
    (ttl * 3).max(Duration::from_secs(30))
}

/// The runtime's last sign of life, read on the lease thread.
#[derive(Clone)]
pub(crate) struct Watchdog {
    origin: Instant,
    /// Milliseconds from `origin` to the runtime's last beat.
    last_beat: Arc<AtomicU64>,
    bound: Duration,
}

impl Watchdog {
    /// A watchdog that barks once the runtime has been silent for longer than `bound`.
    pub(crate) fn new(bound: Duration) -> Watchdog {
        Watchdog { origin: Instant::now(), last_beat: Arc::new(AtomicU64::new(0)), bound }
    }

    /// Starts the beating task on the caller's runtime (the one to watch) until `stop`.
    pub(crate) fn beat_here(&self, ttl: Duration, stop: CancellationToken) {
        // Often enough that a beat's period is a small part of any bound.
        let period = (ttl / 6).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let beating = self.clone();
        tokio::spawn(async move {
            loop {
                beating.beat();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
            }
        });
    }

    fn beat(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        self.last_beat.store(now, Ordering::Relaxed);
    }

    /// How long the runtime has been silent, if that is longer than the bound.
    pub(crate) fn silent_for(&self) -> Option<Duration> {
        let last = Duration::from_millis(self.last_beat.load(Ordering::Relaxed));
        let silent = self.origin.elapsed().saturating_sub(last);
        (silent > self.bound).then_some(silent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_three_ttls_and_at_least_30_s() {
        assert_eq!(default_bound(Duration::from_secs(3)), Duration::from_secs(30));
        assert_eq!(default_bound(Duration::from_secs(10)), Duration::from_secs(30));
        assert_eq!(default_bound(Duration::from_secs(60)), Duration::from_secs(180));
    }
}
