//! Scenario 5, data path: a VM backup of one qcow2 disk against plain `qemu-img convert` of
//! the same image (and, printed beside it without a target, against that convert followed
//! by an fsync of its output, as durable as a restore point), then an incremental backup
//! after 1% of the disk changed against that full one (time and size), and a computer
//! backup of a tree (first, then unchanged) against `cp -r`. Each ratio is ours/plain
//! throughput, i.e. plain time / our StartJob → STOPPED time. Every timed step starts with
//! no dirty page left by the one before it (`files::settle`); the incremental figure is the
//! median of [`TRIALS`] backups, each after a new 1% change.

mod files;

use std::{path::Path, time::Duration};

use sluice_proto::pb::{self, SessionResult};
use sluice_tests::{
    AgentSpec,
    jobs::{JobBuilder, computer_item, vm_item},
};

use super::Ctx;
use crate::{
    jobs::{self, Jobs, Store},
    stats::{ms_between, percentile},
};

/// Incremental backups, each after a change of its own; their median is the figure (the
/// fixed costs of one small backup vary by half between runs). Fulls run once: this
/// machine's disk writes about 2 GiB at full speed, then a fifth as fast for a while.
const TRIALS: usize = 3;

const COMPUTER: &str = "bench-pc";
const COMPUTER_KEYS: [&str; 2] = ["data.computer_first_ratio", "data.computer_unchanged_ratio"];

/// Runs the scenario and records its figures.
pub async fn run(ctx: Ctx) -> anyhow::Result<()> {
    if let Err(error) = vm(&ctx).await {
        ctx.results.note("data.vm_ratio", &format!("n/a ({error:#})"));
    }
    let task = tokio::spawn(computer(ctx.clone()));
    let failure = match task.await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(error)) => format!("{error:#}"),
        Err(join) => join.to_string(),
    };
    let text = format!("n/a (computer executor not available: {failure})");
    for key in COMPUTER_KEYS {
        ctx.results.note(key, &text);
    }
    Ok(())
}

async fn vm(ctx: &Ctx) -> anyhow::Result<()> {
    let bytes = ctx.sizes.data_bytes;
    let mut cluster = ctx.cluster().agents(1).slots(1).start().await;
    let dir = cluster.dir().to_path_buf();
    let disk = dir.join("vm.qcow2");
    let disk_path = disk.clone();
    tokio::task::spawn_blocking(move || files::make_disk(&disk_path, bytes)).await?;
    settle().await?;
    let out = dir.join("plain.qcow2");
    // Untimed: the first 1 GiB written into memory this VM has not used yet takes several
    // times as long (the host backs the pages on first touch); each timed step after it
    // reuses pages it freed.
    plain_run(&disk, &out, files::plain_convert).await?;
    let plain = plain_run(&disk, &out, files::plain_convert).await?.as_secs_f64();
    let durable = plain_run(&disk, &out, files::plain_convert_durable).await?.as_secs_f64();

    let mut api = cluster.job_client().await;
    let mut store = Store::of(&cluster).await;
    let job = vm_job(&disk, &dir.join("repository"));
    jobs::create(&mut api, job).await?;
    let ours = backup(ctx, &mut api, &mut store, "bench-vm", false).await?.as_secs_f64();
    let (mut incrementals, mut changed) = (Vec::new(), 0);
    for round in 0..TRIALS {
        let changed_disk = disk.clone();
        changed = tokio::task::spawn_blocking(move || {
            files::change_one_percent(&changed_disk, bytes, round as u8)
        })
        .await??;
        settle().await?;
        incrementals.push(backup(ctx, &mut api, &mut store, "bench-vm", false).await?);
    }
    let incremental = median(&incrementals);
    let (full_size, incremental_size) = restore_point_sizes(&mut api, "bench-vm").await?;
    let results = &ctx.results;
    results.set("data.vm_bytes", bytes as f64);
    results.set("data.vm_plain_s", plain);
    results.set("data.vm_ours_s", ours);
    results.set("data.vm_ratio", plain / ours);
    results.set("data.vm_plain_fsync_s", durable);
    results.set("data.vm_ratio_durable", durable / ours);
    results.set("data.vm_changed_bytes", changed as f64);
    results.set("data.vm_incremental_s", incremental);
    results.set("data.vm_incremental_bytes", incremental_size);
    results.set("data.vm_incremental_speedup", ours / incremental);
    results.set("data.vm_incremental_smaller", full_size / incremental_size.max(1.0));
    Ok(())
}

/// One timed run of a plain tool from `disk` to `out`, which is then removed (its pages
/// still dirty go with it, sparing the disk a write) before the dirty pages left are synced.
async fn plain_run(
    disk: &Path,
    out: &Path,
    tool: fn(&Path, &Path) -> anyhow::Result<Duration>,
) -> anyhow::Result<Duration> {
    let (source, target) = (disk.to_path_buf(), out.to_path_buf());
    let took = tokio::task::spawn_blocking(move || tool(&source, &target)).await??;
    files::remove(out);
    settle().await?;
    Ok(took)
}

/// The median of `durations`, in seconds.
fn median(durations: &[Duration]) -> f64 {
    let seconds: Vec<f64> = durations.iter().map(Duration::as_secs_f64).collect();
    percentile(&seconds, 50.0).unwrap_or(f64::NAN)
}

/// [`files::settle`] on a blocking thread.
async fn settle() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(files::settle).await?
}

/// The median size of the job's full restore points and of its incremental ones.
async fn restore_point_sizes(api: &mut Jobs, job: &str) -> anyhow::Result<(f64, f64)> {
    let request = pb::ListRestorePointsRequest { job: job.to_string() };
    let listed = api.list_restore_points(request).await?.into_inner().restore_points;
    let size = |kind: pb::RestorePointKind| -> Vec<f64> {
        listed.iter().filter(|rp| rp.kind() == kind).map(|rp| rp.size_bytes as f64).collect()
    };
    let (fulls, incrementals) =
        (size(pb::RestorePointKind::Full), size(pb::RestorePointKind::Incremental));
    match (percentile(&fulls, 50.0), percentile(&incrementals, 50.0)) {
        (Some(full), Some(incremental)) => Ok((full, incremental)),
        _ => anyhow::bail!(
            "expected full and incremental restore points, found {} and {}",
            fulls.len(),
            incrementals.len()
        ),
    }
}

fn vm_job(disk: &Path, repository: &Path) -> pb::Job {
    let item = vm_item("vm", &[disk]);
    JobBuilder::vm("bench-vm").item(item).repository(repository).retry(1, 0).build()
}

async fn computer(ctx: Ctx) -> anyhow::Result<()> {
    let bytes = ctx.sizes.data_bytes;
    let builder = ctx.cluster();
    let cluster = builder.agent(AgentSpec::new().slots(1).computer(COMPUTER)).start().await;
    let dir = cluster.dir().to_path_buf();
    let (tree, copy) = (dir.join("tree"), dir.join("copy"));
    let root = tree.clone();
    tokio::task::spawn_blocking(move || files::make_tree(&root, bytes)).await??;
    settle().await?;
    let mut plain = Duration::ZERO;
    // The first, untimed, as for the VM's convert.
    for _ in 0..2 {
        let (source, target) = (tree.clone(), copy.clone());
        plain = tokio::task::spawn_blocking(move || files::plain_copy(&source, &target)).await??;
        files::remove(&copy);
        settle().await?;
    }

    let mut api = cluster.coordinators()[0].job_client().await;
    let mut store = Store::of(&cluster).await;
    jobs::create(&mut api, computer_job(&tree, &dir.join("repository"))).await?;
    let first = backup(&ctx, &mut api, &mut store, "bench-pc", false).await?;
    settle().await?;
    let unchanged = backup(&ctx, &mut api, &mut store, "bench-pc", false).await?;
    let results = &ctx.results;
    results.set("data.computer_bytes", bytes as f64);
    results.set("data.computer_plain_s", plain.as_secs_f64());
    results.set("data.computer_first_s", first.as_secs_f64());
    results.set("data.computer_unchanged_s", unchanged.as_secs_f64());
    results.set("data.computer_first_ratio", plain.as_secs_f64() / first.as_secs_f64());
    results.set("data.computer_unchanged_ratio", plain.as_secs_f64() / unchanged.as_secs_f64());
    Ok(())
}

fn computer_job(tree: &Path, repository: &Path) -> pb::Job {
    let item = computer_item("pc", COMPUTER, &[tree]);
    JobBuilder::computer("bench-pc").item(item).repository(repository).retry(1, 0).build()
}

/// Runs one session of `job` (an active full one when `full`) and returns StartJob →
/// STOPPED; fails unless it succeeded.
async fn backup(
    ctx: &Ctx,
    api: &mut Jobs,
    store: &mut Store,
    job: &str,
    full: bool,
) -> anyhow::Result<Duration> {
    let (id, started) = jobs::start_with(api, job, full).await?;
    let Some(session) = store.wait_stopped(job, &id, ctx.sizes.session_budget).await? else {
        anyhow::bail!("session {id} of {job} did not stop within {:?}", ctx.sizes.session_budget);
    };
    if !matches!(session.result(), SessionResult::Success | SessionResult::Warning) {
        anyhow::bail!(
            "session of {job} ended {}: {}",
            session.result().as_str_name(),
            why(api, &id).await
        );
    }
    let ended = jobs::ended_at(&session).unwrap_or_else(std::time::SystemTime::now);
    Ok(Duration::from_secs_f64(ms_between(started, ended).max(0.0) / 1e3))
}

/// The first item message of a session, to say why it failed.
async fn why(api: &mut Jobs, id: &str) -> String {
    let request = pb::GetSessionRequest { session_id: id.to_string(), ..Default::default() };
    match api.get_session(request).await {
        Ok(session) => {
            let session = session.into_inner();
            let message = session.items.iter().map(|i| i.message.as_str()).find(|m| !m.is_empty());
            message.unwrap_or(&session.message).to_string()
        }
        Err(status) => status.message().to_string(),
    }
}
