//! `sluice agent ...` and `sluice coordinator list`: cluster membership.

use std::time::SystemTime;

use sluice_proto::pb;

use crate::AgentCommand;
use crate::client::Ctx;
use crate::error::{Exit, Failure};
use crate::output::{self, json, views};

/// Runs one `agent` subcommand.
pub async fn run_agent(ctx: &Ctx, cmd: AgentCommand) -> Result<Exit, Failure> {
    match cmd {
        AgentCommand::List => list_agents(ctx).await,
        AgentCommand::Drain { id, deadline } => drain(ctx, id, deadline.unwrap_or(0)).await,
    }
}

async fn list_agents(ctx: &Ctx) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let agents = clients.cluster.list_agents(pb::ListAgentsRequest {}).await?.into_inner().agents;
    output::print(ctx.format, || views::agent_list(&agents), || json::agents(&agents))?;
    Ok(Exit::Success)
}

async fn drain(ctx: &Ctx, agent: String, deadline_seconds: u32) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let request = pb::DrainAgentRequest { agent: agent.clone(), deadline_seconds };
    let drained = clients.cluster.drain_agent(request).await?.into_inner().agent;
    let agents: Vec<pb::Agent> = drained.into_iter().collect();
    let table = || format!("draining agent {agent}\n\n{}", views::agent_list(&agents));
    let value = || serde_json::json!({ "agent": agents.first().map(json::agent) });
    output::print(ctx.format, table, value)?;
    Ok(Exit::Success)
}

/// `coordinator list`.
pub async fn list_coordinators(ctx: &Ctx) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let request = pb::ListCoordinatorsRequest {};
    let list = clients.cluster.list_coordinators(request).await?.into_inner().coordinators;
    let table = || views::coordinator_list(&list, SystemTime::now());
    output::print(ctx.format, table, || json::coordinators(&list))?;
    Ok(Exit::Success)
}
