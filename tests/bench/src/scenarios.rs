//! Runs each scenario in its own task under a time budget, so a scenario that fails, panics
//! (the harness panics on what it cannot do) or hangs costs its own figures and nothing else.

mod data;
mod dispatch;
mod memory;
pub mod scale;
mod stop;
mod takeover;

use std::{any::Any, sync::Arc, time::Duration};

use sluice_tests::{Cluster, ClusterBuilder, Etcd};

use crate::{cli::Args, cli::Sizes, results::Results};

/// The scenarios, in the order they run. `-insecure` runs the scenario again on a cluster
/// of `--insecure` processes (plaintext, no authentication), for figures beside TLS's.
const SCENARIOS: [&str; 8] = [
    "dispatch",
    "dispatch-insecure",
    "stop",
    "stop-insecure",
    "takeover",
    "memory",
    "data",
    "scale",
];

/// Suffix of a scenario run again without TLS.
const INSECURE: &str = "-insecure";

/// What every scenario gets.
#[derive(Clone)]
pub struct Ctx {
    /// Sizes of this run.
    pub sizes: Sizes,
    /// The etcd every cluster of the run uses (each on its own key prefix).
    pub etcd: Arc<Etcd>,
    /// Where figures go.
    pub results: Results,
    /// Whether the clusters run `--insecure` (else TLS, the default).
    pub insecure: bool,
}

impl Ctx {
    /// A cluster builder on the run's etcd, secure unless this is an insecure run, its
    /// coordinators on the run's number of runtime threads.
    pub fn cluster(&self) -> ClusterBuilder {
        // Always given: the harness runs a cluster's first coordinator on one thread unless
        // the flag says otherwise.
        let threads = match self.sizes.coordinator_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            threads => threads,
        };
        let builder = Cluster::builder()
            .etcd(&self.etcd)
            .coordinator_flag("--worker-threads", &threads.to_string());
        if self.insecure { builder.insecure() } else { builder }
    }

    /// This context for the insecure run of `scenario`: its figures go under
    /// `<scenario>_insecure`.
    fn insecure(mut self, scenario: &'static str) -> Ctx {
        self.results = self.results.renamed(scenario, &format!("{scenario}_insecure"));
        self.insecure = true;
        self
    }
}

/// Starts one etcd for the run, then each wanted scenario in turn.
pub async fn run_all(args: &Args, sizes: &Sizes, results: &Results) {
    let etcd = match tokio::task::spawn_blocking(Etcd::dedicated).await {
        Ok(etcd) => Arc::new(etcd),
        Err(error) => {
            results.error("etcd", &failure_text(error));
            return;
        }
    };
    let ctx = Ctx { sizes: sizes.clone(), etcd, results: results.clone(), insecure: false };
    for name in SCENARIOS.into_iter().filter(|name| args.wants(base(name))) {
        println!("\n== {name}");
        guarded(name, sizes.budget(base(name)), ctx.clone()).await;
    }
}

/// The scenario a name runs (`dispatch` for `dispatch-insecure`).
fn base(name: &str) -> &str {
    name.strip_suffix(INSECURE).unwrap_or(name)
}

async fn run_one(name: &'static str, ctx: Ctx) -> anyhow::Result<()> {
    match name {
        "dispatch" => dispatch::run(ctx).await,
        "dispatch-insecure" => dispatch::run(ctx.insecure("dispatch")).await,
        "stop" => stop::run(ctx).await,
        "stop-insecure" => stop::run(ctx.insecure("stop")).await,
        "takeover" => takeover::run(ctx).await,
        "memory" => memory::run(ctx).await,
        "data" => data::run(ctx).await,
        "scale" => scale::run(ctx).await,
        other => anyhow::bail!("unknown scenario {other}"),
    }
}

/// Runs a scenario in a task; records an error when it fails, panics or exceeds `budget`
/// (then it is aborted, which tears its cluster down).
async fn guarded(name: &'static str, budget: Duration, ctx: Ctx) {
    let results = ctx.results.clone();
    let started = tokio::time::Instant::now();
    let mut task = tokio::spawn(run_one(name, ctx));
    match tokio::time::timeout(budget, &mut task).await {
        Ok(Ok(Ok(()))) => println!("   ({name} took {:.1} s)", started.elapsed().as_secs_f64()),
        Ok(Ok(Err(error))) => results.error(name, &format!("{error:#}")),
        Ok(Err(join)) => results.error(name, &failure_text(join)),
        Err(_) => {
            task.abort();
            let _ = task.await;
            results.error(name, &format!("did not finish within {budget:?}; aborted"));
        }
    }
}

fn failure_text(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
        Err(error) => error.to_string(),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".to_string());
    // The harness appends log tails; the first lines say what happened.
    text.lines().take(3).collect::<Vec<_>>().join(" | ")
}
