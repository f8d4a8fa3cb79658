//! One retention per job at a time on a coordinator: a session that finishes while its
//! job's retention runs asks that one to go round again.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The jobs whose retention runs on this coordinator now, each with whether another of its
/// sessions finished meanwhile (so it goes round again).
#[derive(Clone, Default)]
pub(crate) struct Running(Arc<Mutex<HashMap<String, bool>>>);

/// A job's place in [`Running`], given back by [`Turn::again`] or on drop.
pub(super) struct Turn {
    running: Running,
    job: String,
    released: bool,
}

impl Running {
    /// The job's turn, unless its retention runs already: that one is asked to go round
    /// again.
    pub(super) fn take(&self, job: &str) -> Option<Turn> {
        match self.jobs().entry(job.to_string()) {
            Entry::Occupied(mut running) => {
                running.insert(true);
                None
            }
            Entry::Vacant(free) => {
                free.insert(false);
                Some(Turn { running: self.clone(), job: job.to_string(), released: false })
            }
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Turn {
    /// Whether another session of the job finished since the turn began or last went round
    /// (then the turn goes round again); otherwise gives the turn back, in the same step, so
    /// no session's request falls between the two.
    pub(super) fn again(&mut self) -> bool {
        let mut jobs = self.running.jobs();
        if let Some(asked) = jobs.get_mut(&self.job).filter(|asked| **asked) {
            *asked = false;
            return true;
        }
        jobs.remove(&self.job);
        self.released = true;
        false
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.released {
            self.running.jobs().remove(&self.job);
        }
    }
}

/// When a merge's base was last settled on request, by job and restore point: asking about
/// it again and again runs its retention at most once a [`SETTLE_EVERY`] (an agent may
/// retry a long `qemu-img commit` each time).
#[derive(Clone, Default)]
pub(crate) struct Settles(Arc<Mutex<HashMap<(String, String), Instant>>>);

/// Shortest time between two retentions run for the same merge's base on request.
const SETTLE_EVERY: Duration = Duration::from_secs(60);

impl Settles {
    /// Whether the base may be settled now; if so, the time is noted.
    pub(super) fn due(&self, job: &str, base: &str) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last.retain(|_, at| at.elapsed() < SETTLE_EVERY);
        let key = (job.to_owned(), base.to_owned());
        if last.contains_key(&key) {
            return false;
        }
        last.insert(key, Instant::now());
        true
    }
}
