//! Access tokens through the client: mint and revoke (admin actions, authorized and audited by the
//! cluster).

use super::{Client, ClientError, ATTEMPT_TIMEOUT};
use crate::proto;

impl Client {
    /// Mint an access token for `req.principal`. Safe to retry: every attempt carries one token id
    /// (`req.id`, set here when empty), so a retry after a lost answer returns the same token.
    pub async fn mint_token(
        &self,
        mut req: proto::MintTokenRequest,
    ) -> Result<proto::MintTokenResponse, ClientError> {
        // One id for every attempt: a retry after a lost answer returns the token the first
        // attempt minted instead of minting a second one.
        if req.id.is_empty() {
            req.id = uuid::Uuid::new_v4().simple().to_string();
        }
        self.call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.mint_token(req).await }
        })
        .await
    }

    /// Revoke an access token by id. Safe to retry.
    pub async fn revoke_token(
        &self,
        req: proto::RevokeTokenRequest,
    ) -> Result<proto::RevokeTokenResponse, ClientError> {
        self.call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.revoke_token(req).await }
        })
        .await
    }
}
