//! Issue 12: the fault campaign with every host in a network namespace of its own (an address
//! per etcd member, coordinator and agent, as a multi-host deployment has), where a partition
//! takes a host's link down. Needs root and iproute2, as CI has.

use std::time::Duration;

use sluice_tests::campaign::{
    self, Config,
    plan::{FaultKind, Pace},
};

/// A seed whose schedule takes hosts' links down (checked below, from the plan alone).
const SEED: u64 = 5;

/// Partitions well inside the lease and heartbeat TTLs (3 s; a coordinator fences itself
/// 2.25 s after its last confirmed renewal): the cluster must ride them out. Longer ones make
/// coordinators and agents count as lost, which the soak covers.
const SHORT: Pace = Pace {
    warmup: Duration::from_secs(3),
    gap: (Duration::from_millis(500), Duration::from_millis(2000)),
    hold: (Duration::from_millis(300), Duration::from_millis(800)),
    concurrent: 2,
};

fn config() -> Config {
    let mut config = Config::new(SEED, Duration::from_secs(25));
    config.netns = true;
    config.pace = SHORT;
    // Every stop kind too: a stop that lands while its owner is cut off must still end
    // its session as the stop table says.
    config.faults = vec![FaultKind::PartitionAgent, FaultKind::PartitionCoordinator];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_across_network_namespaces_keeps_every_invariant() {
    let config = config();
    let planned = campaign::schedule(&config);
    let partitions = planned.len();
    assert!(partitions > 3, "seed {SEED} plans few partitions: {planned:?}");
    let report =
        campaign::run(config).await.unwrap_or_else(|e| panic!("the campaign could not run: {e}"));
    print!("{}", report.summary());
    assert_eq!(
        report.nemesis.injected_total(),
        partitions,
        "every planned link-down partition was made"
    );
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
