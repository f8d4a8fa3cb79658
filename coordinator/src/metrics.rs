//! Prometheus metrics of a coordinator, served at `/metrics` (Prometheus text format 0.0.4).
//!
//! Two kinds, which add up differently across coordinators:
//! - **Cluster state, the same on every coordinator** (aggregate with `max`): the time of each
//!   job's last successful session (`last_success.rs`, kept from an etcd watch of the session
//!   index, so it includes sessions other coordinators ran) and agent slots (read from the
//!   agent directory at scrape time).
//! - **What this coordinator did** (aggregate with `sum`): sessions it ended, bytes of those
//!   sessions, the items of the sessions it owns now (`session.rs`), stop latencies, etcd
//!   request durations (`etcd.rs`), its lease grants and losses, and its takeovers.
//!
//! Recording is an atomic operation on a metric that already exists; nothing here waits on
//! I/O in the session actor's loop.

mod etcd;
mod last_success;
mod session;

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use sluice_proto::pb;
use tokio_util::sync::CancellationToken;

pub(crate) use self::{
    etcd::TimedChannel, last_success::follow_last_success, session::SessionGauge,
};
use crate::{membership::LeaseWatch, sessions::machine::StopMode};

/// The `Content-Type` of `/metrics`.
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Buckets of the stop latency, seconds: an immediate stop takes milliseconds, a graceful one
/// as long as its running tasks.
const STOP_BUCKETS: [f64; 14] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];
/// Buckets of one etcd request, seconds.
const ETCD_BUCKETS: [f64; 13] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobResult {
    job: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobState {
    job: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentSlots {
    agent: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// The `mode` label of a stop.
fn mode_label(mode: StopMode) -> &'static str {
    match mode {
        StopMode::Immediate => "immediate",
        StopMode::Graceful => "graceful",
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the coordinator (cheap to clone).
#[derive(Clone)]
pub(crate) struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    last_success: Family<JobLabel, Gauge<f64, AtomicU64>>,
    sessions: Family<JobResult, Counter>,
    items: Family<JobState, Gauge>,
    bytes_read: Family<JobLabel, Counter>,
    bytes_transferred: Family<JobLabel, Counter>,
    agent_slots: Family<AgentSlots, Gauge>,
    stop_latency: HistogramFamily<ModeLabel>,
    etcd_requests: HistogramFamily<MethodLabel>,
    lease_grants: Counter,
    lease_losses: Counter,
    takeovers: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut inner = Inner {
            registry: Registry::default(),
            last_success: Family::default(),
            sessions: Family::default(),
            items: Family::default(),
            bytes_read: Family::default(),
            bytes_transferred: Family::default(),
            agent_slots: Family::default(),
            stop_latency: Family::new_with_constructor(|| Histogram::new(STOP_BUCKETS)),
            etcd_requests: Family::new_with_constructor(|| Histogram::new(ETCD_BUCKETS)),
            lease_grants: Counter::default(),
            lease_losses: Counter::default(),
            takeovers: Counter::default(),
        };
        inner.register();
        // Both modes' series from the start: an alert on the latency sees zeroes, not "no
        // data", on a coordinator that has ended no stop yet.
        for mode in [StopMode::Immediate, StopMode::Graceful] {
            drop(inner.stop_latency.get_or_create(&ModeLabel { mode: mode_label(mode) }));
        }
        Metrics { inner: Arc::new(inner) }
    }
}

impl Inner {
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register_with_unit(
            "sluice_job_last_success_timestamp",
            "End time of the job's newest session with result SUCCESS (cluster-wide)",
            Unit::Seconds,
            self.last_success.clone(),
        );
        r.register("sluice_sessions", "Sessions this coordinator ended", self.sessions.clone());
        r.register(
            "sluice_items",
            "Items of the sessions this coordinator owns, by stored state",
            self.items.clone(),
        );
        r.register(
            "sluice_bytes_read",
            "Bytes the items of sessions this coordinator ended read from their sources",
            self.bytes_read.clone(),
        );
        r.register(
            "sluice_bytes_transferred",
            "Bytes the items of sessions this coordinator ended wrote into the repository",
            self.bytes_transferred.clone(),
        );
        r.register(
            "sluice_agent_slots",
            "Task slots of each registered agent: used and free (cluster-wide)",
            self.agent_slots.clone(),
        );
        r.register_with_unit(
            "sluice_stop_latency",
            "From a stop request to the end of its session, for sessions this coordinator ended",
            Unit::Seconds,
            self.stop_latency.clone(),
        );
        r.register_with_unit(
            "sluice_etcd_request_duration",
            "etcd requests of this coordinator until their answer (streams: until they open)",
            Unit::Seconds,
            self.etcd_requests.clone(),
        );
        r.register(
            "sluice_lease_grants",
            "etcd leases this coordinator was granted",
            self.lease_grants.clone(),
        );
        r.register(
            "sluice_lease_losses",
            "Leases this coordinator lost (it fenced itself) other than at shutdown",
            self.lease_losses.clone(),
        );
        r.register(
            "sluice_session_takeovers",
            "Orphaned sessions this coordinator claimed",
            self.takeovers.clone(),
        );
    }
}

/// What the items of an ended session read from their sources and wrote into the repository
/// (an incremental reads and writes only what changed; a full writes what it read, packed).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bytes {
    pub(crate) read: u64,
    pub(crate) transferred: u64,
}

impl Metrics {
    /// The text of `/metrics`, with agent slots read from `agents` now.
    pub(crate) fn render<'a>(&self, agents: impl IntoIterator<Item = &'a pb::Agent>) -> String {
        self.set_agent_slots(agents);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.inner.registry);
        text
    }

    fn set_agent_slots<'a>(&self, agents: impl IntoIterator<Item = &'a pb::Agent>) {
        let family = &self.inner.agent_slots;
        family.clear();
        for agent in agents {
            let used = agent.running_tasks.min(agent.slots);
            let label = |state| AgentSlots { agent: agent.id.clone(), state };
            family.get_or_create(&label("used")).set(i64::from(used));
            family.get_or_create(&label("free")).set(i64::from(agent.slots - used));
        }
    }

    /// A session that this coordinator ended.
    fn session_ended(&self, job: &str, result: &'static str, bytes: Bytes) {
        let inner = &self.inner;
        inner.sessions.get_or_create(&JobResult { job: job.to_string(), result }).inc();
        let label = JobLabel { job: job.to_string() };
        inner.bytes_read.get_or_create(&label).inc_by(bytes.read);
        inner.bytes_transferred.get_or_create(&label).inc_by(bytes.transferred);
    }

    fn stop_latency(&self, mode: StopMode, seconds: f64) {
        let label = ModeLabel { mode: mode_label(mode) };
        self.inner.stop_latency.get_or_create(&label).observe(seconds);
    }

    /// The `sluice_items` gauge of `job` in `state`: a handle on the family's own gauge
    /// (sessions keep theirs, so a flush moves a count without a label lookup).
    fn items_gauge(&self, job: &str, state: &'static str) -> Gauge {
        let label = JobState { job: job.to_string(), state };
        self.inner.items.get_or_create(&label).clone()
    }

    fn etcd_request(&self, method: &str, seconds: f64) {
        let label = MethodLabel { method: method.to_string() };
        self.inner.etcd_requests.get_or_create(&label).observe(seconds);
    }

    /// Replaces the last-success times by `times` (job → seconds since the epoch).
    fn set_last_success(&self, times: impl IntoIterator<Item = (String, f64)>) {
        self.inner.last_success.clear();
        for (job, seconds) in times {
            self.inner.last_success.get_or_create(&JobLabel { job }).set(seconds);
        }
    }

    /// Raises a job's last-success time to `seconds` if that is later.
    fn raise_last_success(&self, job: &str, seconds: f64) {
        let gauge = self.inner.last_success.get_or_create(&JobLabel { job: job.to_string() });
        if gauge.get() < seconds {
            gauge.set(seconds);
        }
    }

    /// Drops a deleted job's last-success series.
    fn forget_last_success(&self, job: &str) {
        self.inner.last_success.remove(&JobLabel { job: job.to_string() });
    }

    /// Orphaned sessions this coordinator claimed.
    pub(crate) fn took_over(&self, sessions: usize) {
        self.inner.takeovers.inc_by(sessions as u64);
    }

    /// Counts lease grants and losses from `lease` until `stop` (a loss is a lease that ends
    /// while the coordinator is not shutting down).
    pub(crate) async fn follow_lease(self, mut lease: LeaseWatch, stop: CancellationToken) {
        let mut held: Option<i64> = None;
        loop {
            let now_held = lease.borrow_and_update().as_ref().map(|lease| lease.id);
            if held.is_some() && held != now_held && !stop.is_cancelled() {
                self.inner.lease_losses.inc();
            }
            if now_held.is_some() && held != now_held {
                self.inner.lease_grants.inc();
            }
            held = now_held;
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = lease.changed() => if changed.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests;
