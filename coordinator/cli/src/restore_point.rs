//! `sluice restore-point list JOB`.

use std::time::SystemTime;

use sluice_proto::pb;

use crate::client::Ctx;
use crate::error::{Exit, Failure};
use crate::output::{self, json, views};

/// Lists the restore points of a job.
pub async fn list(ctx: &Ctx, job: String) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let request = pb::ListRestorePointsRequest { job };
    let points = clients.jobs.list_restore_points(request).await?.into_inner().restore_points;
    let table = || views::restore_point_list(&points, SystemTime::now());
    output::print(ctx.format, table, || json::restore_points(&points))?;
    Ok(Exit::Success)
}
