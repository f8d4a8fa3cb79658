//! `AuthService`: API tokens and `WhoAmI`.

use sluice_proto::pb::{self, auth_service_server::AuthService};
use tonic::{Request, Response};

use super::Reply;
use crate::auth::{caller, tokens::Tokens};

/// Serves `sluice.v1.AuthService`.
pub(crate) struct AuthApi {
    tokens: Tokens,
}

impl AuthApi {
    /// Serves the tokens of `tokens`.
    pub(crate) fn new(tokens: Tokens) -> Self {
        AuthApi { tokens }
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Reply<pb::CreateTokenResponse> {
        let by = caller(&request)?;
        let (token, secret) = self.tokens.create(request.into_inner(), &by).await?;
        Ok(Response::new(pb::CreateTokenResponse { token: Some(token), secret }))
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Reply<pb::ListTokensResponse> {
        Ok(Response::new(pb::ListTokensResponse { tokens: self.tokens.list().await? }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Reply<pb::RevokeTokenResponse> {
        let by = caller(&request)?;
        let request = request.into_inner();
        let token = self.tokens.revoke(&request.id, request.force, &by).await?;
        Ok(Response::new(pb::RevokeTokenResponse { token: Some(token) }))
    }

    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Reply<pb::Principal> {
        Ok(Response::new(caller(&request)?.to_pb()))
    }
}
