//! `sluice token ...` and `sluice whoami`: API tokens and the caller's principal.

use std::time::SystemTime;

use clap::Subcommand;
use sluice_proto::pb;

use crate::client::Ctx;
use crate::error::{Exit, Failure};
use crate::output::{self, json, views};

/// `sluice token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token; its secret is printed once and stored nowhere.
    Create {
        /// Name of its holder, recorded as `token:NAME` in what it does.
        name: String,
        /// Role: viewer, operator, restore-operator or admin.
        #[arg(long)]
        role: String,
        /// Seconds until it expires (default: never).
        #[arg(long, value_name = "SECS")]
        ttl: Option<u32>,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token: it is refused from the next call on.
    Revoke {
        /// Token id.
        id: String,
        /// Revoke the token you call with even when it is the last live admin token (only an
        /// admin client certificate, or the CA key, makes an admin then).
        #[arg(long)]
        force: bool,
    },
}

/// Runs one `token` subcommand.
pub async fn run(ctx: &Ctx, cmd: TokenCommand) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    match cmd {
        TokenCommand::Create { name, role, ttl } => {
            let request = pb::CreateTokenRequest { name, role, ttl_seconds: ttl.unwrap_or(0) };
            let created = clients.auth.create_token(request).await?.into_inner();
            let token = created.token.unwrap_or_default();
            let table = || views::token_created(&token, &created.secret, SystemTime::now());
            output::print(ctx.format, table, || json::token_created(&token, &created.secret))?;
        }
        TokenCommand::List => {
            let tokens = clients.auth.list_tokens(pb::ListTokensRequest {}).await?.into_inner();
            let tokens = tokens.tokens;
            let table = || views::token_list(&tokens, SystemTime::now());
            output::print(ctx.format, table, || json::tokens(&tokens))?;
        }
        TokenCommand::Revoke { id, force } => {
            let revoked = clients.auth.revoke_token(pb::RevokeTokenRequest { id, force }).await?;
            let token = revoked.into_inner().token.unwrap_or_default();
            let table = || format!("revoked token {} ({})", token.id, token.name);
            output::print(ctx.format, table, || json::token(&token))?;
        }
    }
    Ok(Exit::Success)
}

/// `sluice whoami`: the principal the coordinator sees.
pub async fn whoami(ctx: &Ctx) -> Result<Exit, Failure> {
    let mut clients = ctx.connect().await?;
    let principal = clients.auth.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
    let table = || views::principal(&principal);
    output::print(ctx.format, table, || json::principal(&principal))?;
    Ok(Exit::Success)
}
