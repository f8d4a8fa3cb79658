//! `sluice session ...`: show, list, watch and retry sessions.

use std::time::SystemTime;

use sluice_proto::pb;

use crate::SessionCommand;
use crate::client::Ctx;
use crate::error::{Exit, Failure};
use crate::output::{self, json, views};
use crate::watch;

/// Runs one `session` subcommand.
pub async fn run(ctx: &Ctx, cmd: SessionCommand) -> Result<Exit, Failure> {
    match cmd {
        SessionCommand::Show { id, item_offset, item_limit } => {
            show(ctx, pb::GetSessionRequest { session_id: id, item_offset, item_limit }).await
        }
        SessionCommand::List { job } => list(ctx, job.unwrap_or_default()).await,
        SessionCommand::Watch { id, item_offset, item_limit } => {
            let page = watch::Page { offset: item_offset, limit: item_limit };
            watch::follow(ctx, ctx.connect().await?, &id, page).await
        }
        SessionCommand::Retry { id } => retry(ctx, id).await,
        SessionCommand::Stop { id, mode, timeout } => {
            let timeout = timeout.unwrap_or(0);
            crate::stop::stop_one(ctx, crate::stop::Stopped::Session(id), mode.mode(), timeout)
                .await
        }
    }
}

async fn show(ctx: &Ctx, request: pb::GetSessionRequest) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let offset = request.item_offset;
    let paged = offset > 0 || request.item_limit > 0;
    let session = clients.jobs.get_session(request).await?.into_inner();
    let table = || match paged {
        true => views::session_page(&session, offset, SystemTime::now()),
        false => views::session_detail(&session, SystemTime::now()),
    };
    output::print(ctx.format, table, || json::session(&session))?;
    Ok(Exit::Success)
}

async fn list(ctx: &Ctx, job: String) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let request = pb::ListSessionsRequest { job, ..Default::default() };
    let sessions = clients.jobs.list_sessions(request).await?.into_inner().sessions;
    let table = || views::session_list(&sessions, SystemTime::now());
    output::print(ctx.format, table, || json::sessions(&sessions))?;
    Ok(Exit::Success)
}

async fn retry(ctx: &Ctx, session_id: String) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let request = pb::RetrySessionRequest { session_id: session_id.clone() };
    let session = clients.jobs.retry_session(request).await?.into_inner();
    let table = || {
        let detail = views::session_started(&session, SystemTime::now());
        format!("started session {} retrying {session_id}\n\n{detail}", session.id)
    };
    output::print(ctx.format, table, || json::session(&session))?;
    Ok(Exit::Success)
}
