//! Issue 12: the fault campaign with every host in a network namespace of its own (an address
//! per etcd member, coordinator and agent, as a multi-host deployment has), where a partition
//! takes a host's link down. Needs root and iproute2, as CI has.

use std::time::Duration;

use sluice_tests::campaign::{self, Config, plan::FaultKind, stop_plan::StopKind};

/// A seed whose schedule takes etcd members' links down (checked below, from the plan alone).
const SEED: u64 = 5;

fn config() -> Config {
    let mut config = Config::new(SEED, Duration::from_secs(25));
    config.netns = true;
    config.faults = vec![FaultKind::PartitionEtcd, FaultKind::KillEtcdLeader];
    config.stops = vec![StopKind::Immediate, StopKind::Graceful, StopKind::GracefulTimeout];
    config.stop_window = 0.4;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_across_network_namespaces_keeps_every_invariant() {
    let config = config();
    let planned = campaign::schedule(&config);
    let partitions = planned.iter().filter(|f| f.kind == FaultKind::PartitionEtcd).count();
    assert!(partitions > 0, "seed {SEED} plans no partition: {planned:?}");
    let report =
        campaign::run(config).await.unwrap_or_else(|e| panic!("the campaign could not run: {e}"));
    print!("{}", report.summary());
    let injected = report.nemesis.injected.get(&FaultKind::PartitionEtcd).copied();
    assert_eq!(injected, Some(partitions), "every planned link-down partition was made");
    assert_eq!(
        report.nemesis.injected_total(),
        report.nemesis.survived_total(),
        "{:?}",
        report.nemesis.problems
    );
    assert!(report.sessions_started > 0, "the workload ran sessions");
    let violations: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
    assert!(
        violations.is_empty(),
        "invariant violations (files in {}):\n{}",
        report.dir.display(),
        violations.join("\n")
    );
}
