//! End-to-end scenarios of Sluice: real etcd, real coordinator and agent processes, real gRPC
//! on loopback. One test binary; one scenario module per subject under `e2e/`.
//!
//! Run with `cargo build --workspace && cargo test -p sluice-tests` (the binaries under test
//! are found next to this test executable, in `target/debug`).

mod e2e {
    mod agent_restarts;
    mod agents;
    mod attempts;
    mod bad_input;
    mod campaign;
    mod chains;
    mod cli_endpoints;
    mod computer_stops;
    mod computers;
    mod console;
    mod deletions;
    mod drains;
    mod etcd_hygiene;
    mod etcd_members;
    mod etcd_restart;
    mod fencing;
    mod hardening;
    mod harness;
    mod history;
    mod http_api;
    mod http_security;
    mod jobs;
    mod live_vms;
    mod merges;
    mod outages;
    mod ownership;
    mod reflection;
    mod restore_points;
    mod schedules;
    mod security;
    mod session_pages;
    mod sessions;
    mod shutdown;
    mod silence;
    mod snapshots;
    mod stop_races;
    mod stop_takeover;
    mod stops;
    mod store_integrity;
    mod tls;
    mod validation;
    mod watch_limits;
    mod watch_sharing;
    mod windows;
}
