//! Scenario 5, data path: a VM backup of one qcow2 disk against plain `qemu-img convert` of
//! the same image (and, printed beside it without a target, against that convert followed
//! by an fsync of its output, as durable as a restore point), then an incremental backup
//! after 1% of the disk changed against that full one (time and size), and a computer
//! backup of a tree (first, then unchanged) against `cp -r`. Each ratio is ours/plain
//! throughput, i.e. plain time / our StartJob → STOPPED time.

mod files;

use std::{path::Path, time::Duration};

use sluice_proto::pb::{self, SessionResult};
use sluice_tests::{
    AgentSpec, Cluster,
    jobs::{JobBuilder, computer_item, vm_item},
};

use super::Ctx;
use crate::{
    jobs::{self, Jobs, Store},
    stats::ms_between,
};

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
    let mut cluster = Cluster::builder().etcd(&ctx.etcd).agents(1).slots(1).start().await;
    let dir = cluster.dir().to_path_buf();
    let disk = dir.join("vm.qcow2");
    let plain_out = dir.join("plain.qcow2");
    let disk_path = disk.clone();
    tokio::task::spawn_blocking(move || files::make_disk(&disk_path, bytes)).await?;
    let (source, out) = (disk.clone(), plain_out.clone());
    let plain = tokio::task::spawn_blocking(move || files::plain_convert(&source, &out)).await??;
    files::remove(&plain_out);
    let (source, out) = (disk.clone(), plain_out.clone());
    let durable =
        tokio::task::spawn_blocking(move || files::plain_convert_durable(&source, &out)).await??;
    files::remove(&plain_out);

    let mut api = cluster.job_client().await;
    let mut store = Store::of(&cluster).await;
    let job = vm_job(&disk, &dir.join("repository"));
    jobs::create(&mut api, job).await?;
    let ours = backup(ctx, &mut api, &mut store, "bench-vm").await?;
    let results = &ctx.results;
    results.set("data.vm_bytes", bytes as f64);
    results.set("data.vm_plain_s", plain.as_secs_f64());
    results.set("data.vm_ours_s", ours.as_secs_f64());
    results.set("data.vm_ratio", plain.as_secs_f64() / ours.as_secs_f64());
    results.set("data.vm_plain_fsync_s", durable.as_secs_f64());
    results.set("data.vm_ratio_durable", durable.as_secs_f64() / ours.as_secs_f64());
    let changed_disk = disk.clone();
    let changed =
        tokio::task::spawn_blocking(move || files::change_one_percent(&changed_disk, bytes))
            .await??;
    let incremental = backup(ctx, &mut api, &mut store, "bench-vm").await?;
    let sizes = restore_point_sizes(&mut api, "bench-vm").await?;
    let [full_size, incremental_size] = sizes[..] else {
        anyhow::bail!("expected a full and an incremental restore point, found {sizes:?}");
    };
    results.set("data.vm_changed_bytes", changed as f64);
    results.set("data.vm_incremental_s", incremental.as_secs_f64());
    results.set("data.vm_incremental_bytes", incremental_size as f64);
    results.set("data.vm_incremental_speedup", ours.as_secs_f64() / incremental.as_secs_f64());
    results.set("data.vm_incremental_smaller", full_size as f64 / incremental_size.max(1) as f64);
    Ok(())
}

/// The sizes of the job's restore points, oldest first.
async fn restore_point_sizes(api: &mut Jobs, job: &str) -> anyhow::Result<Vec<u64>> {
    let request = pb::ListRestorePointsRequest { job: job.to_string() };
    let mut listed = api.list_restore_points(request).await?.into_inner().restore_points;
    listed.sort_by_key(|rp| rp.created_at.map(|t| (t.seconds, t.nanos)));
    Ok(listed.iter().map(|rp| rp.size_bytes).collect())
}

fn vm_job(disk: &Path, repository: &Path) -> pb::Job {
    let item = vm_item("vm", &[disk]);
    JobBuilder::vm("bench-vm").item(item).repository(repository).retry(1, 0).build()
}

async fn computer(ctx: Ctx) -> anyhow::Result<()> {
    let bytes = ctx.sizes.data_bytes;
    let builder = Cluster::builder().etcd(&ctx.etcd);
    let cluster = builder.agent(AgentSpec::new().slots(1).computer(COMPUTER)).start().await;
    let dir = cluster.dir().to_path_buf();
    let (tree, copy) = (dir.join("tree"), dir.join("copy"));
    let root = tree.clone();
    tokio::task::spawn_blocking(move || files::make_tree(&root, bytes)).await??;
    let (source, target) = (tree.clone(), copy.clone());
    let plain = tokio::task::spawn_blocking(move || files::plain_copy(&source, &target)).await??;
    files::remove(&copy);

    let mut api = cluster.coordinators()[0].job_client().await;
    let mut store = Store::of(&cluster).await;
    jobs::create(&mut api, computer_job(&tree, &dir.join("repository"))).await?;
    let first = backup(&ctx, &mut api, &mut store, "bench-pc").await?;
    let unchanged = backup(&ctx, &mut api, &mut store, "bench-pc").await?;
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

/// Runs one session of `job` and returns StartJob → STOPPED; fails unless it succeeded.
async fn backup(
    ctx: &Ctx,
    api: &mut Jobs,
    store: &mut Store,
    job: &str,
) -> anyhow::Result<Duration> {
    let (id, started) = jobs::start(api, job).await?;
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
    let request = pb::GetSessionRequest { session_id: id.to_string() };
    match api.get_session(request).await {
        Ok(session) => {
            let session = session.into_inner();
            let message = session.items.iter().map(|i| i.message.as_str()).find(|m| !m.is_empty());
            message.unwrap_or(&session.message).to_string()
        }
        Err(status) => status.message().to_string(),
    }
}
