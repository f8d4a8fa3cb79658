//! Every figure the issue asks for, in table order, with its unit and target.

/// A goal to work toward; reported against, never asserted.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The figure should be at least this.
    AtLeast(f64),
    /// The figure should be at most this.
    AtMost(f64),
}

impl Target {
    /// Whether `value` meets the target.
    pub fn met_by(self, value: f64) -> bool {
        match self {
            Target::AtLeast(goal) => value >= goal,
            Target::AtMost(goal) => value <= goal,
        }
    }
}

/// One figure of the results.
#[derive(Debug, Clone, Copy)]
pub struct Figure {
    /// Dotted key, also the JSON path (`dispatch.items_per_s`).
    pub key: &'static str,
    /// Unit shown in the table.
    pub unit: &'static str,
    /// Goal from the issue, if it sets one.
    pub target: Option<Target>,
}

const fn figure(key: &'static str, unit: &'static str, target: Option<Target>) -> Figure {
    Figure { key, unit, target }
}

/// Lease TTL of the takeover cluster, in seconds.
pub const TAKEOVER_LEASE_TTL: u32 = 3;

/// Items per second the dispatch scenario aims at.
pub const DISPATCH_TARGET: f64 = 10_000.0;

/// The figures of the issue, in the order of the table.
pub const FIGURES: &[Figure] = &[
    figure("dispatch.items_per_s", "items/s", Some(Target::AtLeast(DISPATCH_TARGET))),
    figure("dispatch.latency_p50_ms", "ms", None),
    figure("dispatch.latency_p99_ms", "ms", None),
    figure("dispatch.etcd_txns_per_item", "txn", Some(Target::AtMost(0.05))),
    figure("dispatch.etcd_bytes_per_item", "B", None),
    figure("dispatch.coordinator_cpu_s_per_1k_items", "s", None),
    figure("dispatch.run_cpu_s_per_1k_items", "s", None),
    figure("dispatch.cores_for_target", "cores", None),
    figure("stop.immediate_p50_ms", "ms", None),
    figure("stop.immediate_p99_ms", "ms", Some(Target::AtMost(15.0))),
    figure("stop.immediate_p99_max_ms", "ms", None),
    figure("stop.immediate_answer_p99_ms", "ms", None),
    figure("stop.immediate_report_p99_ms", "ms", None),
    figure("stop.immediate_call_ms", "ms", None),
    figure("stop.immediate_max_ms", "ms", None),
    figure("stop.immediate_to_stopped_ms", "ms", None),
    figure("stop.graceful_tail_ms", "ms", None),
    figure("stop.graceful_new_dispatches", "", Some(Target::AtMost(0.0))),
    figure("takeover.kill_ms", "ms", Some(Target::AtMost(TAKEOVER_LEASE_TTL as f64 * 1e3 + 500.0))),
    figure("takeover.sigterm_ms", "ms", Some(Target::AtMost(500.0))),
    figure("memory.coordinator_rss_bytes_per_item", "B", Some(Target::AtMost(1024.0))),
    figure("memory.agent_idle_rss_bytes", "B", None),
    figure("data.vm_ratio", "x", Some(Target::AtLeast(0.9))),
    figure("data.vm_ratio_durable", "x", None),
    figure("data.vm_incremental_speedup", "x", Some(Target::AtLeast(20.0))),
    figure("data.vm_incremental_smaller", "x", Some(Target::AtLeast(20.0))),
    figure("data.computer_first_ratio", "x", None),
    figure("data.computer_unchanged_ratio", "x", Some(Target::AtLeast(20.0))),
    figure("scale.items_per_s_spread_pct", "%", Some(Target::AtMost(20.0))),
    figure("scale.cpu_per_item_spread_pct", "%", Some(Target::AtMost(20.0))),
    figure("scale.100k.coordinator_rss_bytes_per_item", "B", Some(Target::AtMost(1024.0))),
    figure("scale.stop_p99_growth_x", "x", Some(Target::AtMost(1.2))),
    figure("scale.stop_p99_concurrent_x", "x", None),
];

/// Figures measured twice in one run, with TLS (the default) and with `--insecure`; the
/// insecure value is recorded under `<scenario>_insecure.<figure>`.
pub const COMPARED: &[&str] = &[
    "dispatch.items_per_s",
    "dispatch.latency_p50_ms",
    "dispatch.latency_p99_ms",
    "dispatch.coordinator_cpu_s_per_1k_items",
    "stop.immediate_p50_ms",
    "stop.immediate_p99_ms",
    "stop.immediate_p99_max_ms",
    "stop.immediate_answer_p99_ms",
    "stop.immediate_report_p99_ms",
    "stop.immediate_max_ms",
    "stop.immediate_to_stopped_ms",
    "stop.graceful_tail_ms",
];

/// The key of a [`COMPARED`] figure's insecure twin.
pub fn insecure_key(key: &str) -> String {
    match key.split_once('.') {
        Some((scenario, figure)) => format!("{scenario}_insecure.{figure}"),
        None => format!("{key}_insecure"),
    }
}

/// The catalog entry of `key`, if it is one of the figures.
pub fn find(key: &str) -> Option<&'static Figure> {
    FIGURES.iter().find(|f| f.key == key)
}
