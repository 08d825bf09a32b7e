//! Minting and revoking access tokens: authorized and audited in apply (`model::access`), signed
//! here after the mint entry commits. The token's text is returned to the minting call (and to its
//! retries with the same id within five minutes, each audited) and never logged.

use std::time::Duration;

use tonic::{Response, Status};

use super::api::Api;
use super::auth::Caller;
use super::convert::op_error;
use super::requests::note;
use super::requests::principal;
use crate::model::{self, Command, TokenRecord};
use crate::proto;
use crate::security::AccessClaims;

/// Longest access token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

impl Api {
    pub(super) async fn mint_token_rpc(
        &self,
        caller: Caller,
        r: proto::MintTokenRequest,
    ) -> Result<Response<proto::MintTokenResponse>, Status> {
        let Some(key) = &self.shared.auth.signing else {
            return Err(Status::failed_precondition(
                "this cluster runs in insecure mode: there is no signing key and tokens would mean nothing",
            ));
        };
        let by = caller.principal("")?;
        caller.require_certificate("minting an access token")?;
        let subject = principal(&r.principal)?;
        // Humans approve and administer with certificates: a minted human token would let one admin
        // act as N approvers.
        if subject.kind() != crate::model::PrincipalKind::Agent {
            return Err(Status::invalid_argument(format!(
                "access tokens are for agents; {subject} is a human and authenticates with a certificate"
            )));
        }
        let ttl = Duration::from_millis(r.ttl_ms);
        if ttl < Duration::from_secs(1) || ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument(format!(
                "ttl must be between 1s and {}",
                humantime::format_duration(MAX_TOKEN_TTL)
            )));
        }
        let id = if r.id.is_empty() {
            uuid::Uuid::new_v4().simple().to_string()
        } else {
            token_id(&r.id)?.to_string()
        };
        let now = super::wall_now_ms();
        let record = TokenRecord {
            id,
            principal: subject,
            minted_by: by.clone(),
            issued_at_ms: now,
            expires_at_ms: now.saturating_add(r.ttl_ms),
            revoked_by: None,
        };
        let by_admin = self.shared.admins.contains(&by);
        let stored = self
            .shared
            .propose_for(
                caller.wrap(Command::MintToken { record, by_admin }),
                model::Response::into_mint_token,
            )
            .await?
            .map_err(|e| op_error(&e))?;
        // A retry of a mint whose token was revoked meanwhile gets no token text.
        if stored.revoked_by.is_some() {
            return Err(Status::failed_precondition(format!(
                "access token {} was minted and then revoked; mint a new one",
                stored.id
            )));
        }
        let token = AccessClaims {
            id: stored.id.clone(),
            principal: stored.principal.clone(),
            cluster: self.shared.config.cluster_name.clone(),
            issued_at_ms: stored.issued_at_ms,
            expires_at_ms: stored.expires_at_ms,
        }
        .sign(key);
        tracing::info!(id = %stored.id, principal = %stored.principal, by = %by, "access token minted");
        Ok(Response::new(proto::MintTokenResponse {
            token,
            id: stored.id,
            principal: stored.principal.to_string(),
            expires_at_ms: stored.expires_at_ms,
        }))
    }

    pub(super) async fn revoke_token_rpc(
        &self,
        caller: Caller,
        r: proto::RevokeTokenRequest,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        let by = caller.principal("")?;
        caller.require_certificate("revoking an access token")?;
        token_id(&r.id)?;
        note("reason", &r.reason, true)?;
        let by_admin = self.shared.admins.contains(&by);
        let revoke = caller.wrap(Command::RevokeToken {
            id: r.id,
            by,
            by_admin,
            reason: r.reason,
        });
        let t = self
            .shared
            .propose_for(revoke, model::Response::into_revoke_token)
            .await?
            .map_err(|e| op_error(&e))?;
        Ok(Response::new(proto::RevokeTokenResponse {
            id: t.id,
            principal: t.principal.to_string(),
        }))
    }
}

/// A token id as `warrant token create` prints it: 1 to `MAX_TOKEN_ID_BYTES` letters and digits.
pub(super) fn token_id(id: &str) -> Result<&str, Status> {
    if id.is_empty()
        || id.len() > model::access::MAX_TOKEN_ID_BYTES
        || !id.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(Status::invalid_argument(format!(
            "token id must be 1 to {} letters and digits (the id `warrant token create` printed)",
            model::access::MAX_TOKEN_ID_BYTES
        )));
    }
    Ok(id)
}
