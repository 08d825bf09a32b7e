//! Access tokens through the client: mint and revoke (admin actions, authorized and audited by the
//! cluster).

use super::{Client, ClientError, ATTEMPT_TIMEOUT};
use crate::proto;

impl Client {
    /// Mint an access token for `req.principal`. A retried call after a lost answer may mint a
    /// second token; only the one returned is ever shown.
    pub async fn mint_token(
        &self,
        req: proto::MintTokenRequest,
    ) -> Result<proto::MintTokenResponse, ClientError> {
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
