//! The metrics as Prometheus reads them: binding names, units and the session gauge's life.

use sluice_proto::{ids::SessionId, pb};

use super::*;
use crate::sessions::machine::{
    Event, Item, Machine, Retry, SessionStatus, Stop, StopMode as MachineStopMode,
};

fn machine(items: u32) -> Machine {
    let items = (0..items)
        .map(|index| {
            let mut item = Item::new(index, format!("vm{index}"), None);
            // What an incremental of a large disk reports: all of it processed, little read.
            (item.status.bytes_done, item.status.bytes_read, item.status.bytes_transferred) =
                (1_000, 300, 200);
            item
        })
        .collect();
    let retry = Retry { attempts: 1, wait_ms: 0, offline_wait_ms: 60_000 };
    let id = SessionId::parse("session", "s1").expect("valid session id");
    Machine::new(id, items, Vec::new(), retry, SessionStatus::default())
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|line| line.starts_with(prefix))
}

#[test]
fn a_session_moves_its_items_and_counts_its_end() {
    let metrics = Metrics::default();
    let mut session = machine(3);
    let mut gauge = SessionGauge::new(metrics.clone(), "nightly", &session);
    let text = metrics.render([]);
    assert_eq!(
        line(&text, "sluice_items{"),
        Some("sluice_items{job=\"nightly\",state=\"pending\"} 3")
    );

    let stop = Stop {
        mode: MachineStopMode::Graceful,
        deadline_ms: None,
        requested_by: "me".into(),
        requested_at_ms: 400,
        reason: String::new(),
    };
    session.apply(1_000, Event::Stop(stop));
    gauge.stored(&session, &[0, 1, 2]);
    let text = metrics.render([]);
    assert!(text.contains("sluice_items{job=\"nightly\",state=\"pending\"} 0"), "{text}");
    assert!(text.contains("sluice_items{job=\"nightly\",state=\"not_processed\"} 3"), "{text}");

    gauge.finished(&session);
    drop(gauge);
    let text = metrics.render([]);
    assert!(text.contains("sluice_sessions_total{job=\"nightly\",result=\"failed\"} 1"), "{text}");
    assert!(text.contains("sluice_bytes_read_total{job=\"nightly\"} 900"), "{text}");
    assert!(text.contains("sluice_bytes_transferred_total{job=\"nightly\"} 600"), "{text}");
    assert!(text.contains("sluice_stop_latency_seconds_sum{mode=\"graceful\"} 0.6"), "{text}");
    assert!(text.contains("sluice_items{job=\"nightly\",state=\"not_processed\"} 0"), "{text}");
}

#[test]
fn cluster_state_is_named_as_bound_and_read_at_scrape_time() {
    let metrics = Metrics::default();
    metrics.set_last_success([("nightly".to_string(), 1_700_000_000.5)]);
    metrics.raise_last_success("nightly", 1_600_000_000.0);
    metrics.etcd_request("KV/Range", 0.002);
    metrics.took_over(2);
    let agent = pb::Agent { id: "a1".into(), slots: 4, running_tasks: 3, ..Default::default() };
    let text = metrics.render([&agent]);
    for expected in [
        "# TYPE sluice_job_last_success_timestamp_seconds gauge",
        "sluice_job_last_success_timestamp_seconds{job=\"nightly\"} 1700000000.5",
        "sluice_agent_slots{agent=\"a1\",state=\"used\"} 3",
        "sluice_agent_slots{agent=\"a1\",state=\"free\"} 1",
        "# TYPE sluice_etcd_request_duration_seconds histogram",
        "sluice_etcd_request_duration_seconds_bucket{method=\"KV/Range\",le=\"0.0025\"} 1",
        "sluice_session_takeovers_total 2",
        "sluice_lease_grants_total 0",
        "sluice_lease_losses_total 0",
    ] {
        assert!(text.contains(expected), "no {expected:?} in\n{text}");
    }
    let gone = metrics.render([]);
    assert!(!gone.contains("sluice_agent_slots{"), "an agent that left has no slots: {gone}");
}

#[test]
fn the_stop_latency_has_both_modes_before_any_stop() {
    let text = Metrics::default().render([]);
    for mode in ["immediate", "graceful"] {
        let count = format!("sluice_stop_latency_seconds_count{{mode=\"{mode}\"}} 0");
        assert!(text.lines().any(|line| line == count), "{count} in {text}");
    }
}
