//! How long each step of a backup took, logged at debug level: the profile behind the
//! data-path figures (`RUST_LOG=sluice_agent::exec=debug`).

use std::time::Instant;

use tracing::debug;

/// A stopwatch that logs each step's time and the time since the backup began.
#[derive(Debug)]
pub(crate) struct Steps {
    began: Instant,
    last: Instant,
}

impl Steps {
    /// Starts the clock.
    pub(crate) fn start() -> Self {
        let now = Instant::now();
        Self { began: now, last: now }
    }

    /// Logs that `step` ended now.
    pub(crate) fn done(&mut self, step: &'static str) {
        let now = Instant::now();
        let ms = now.duration_since(self.last).as_secs_f64() * 1e3;
        let total_ms = now.duration_since(self.began).as_secs_f64() * 1e3;
        debug!(step, ms = format!("{ms:.1}"), total_ms = format!("{total_ms:.1}"), "backup step");
        self.last = now;
    }
}
