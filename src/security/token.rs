//! Access tokens: the second way in, for agent runtimes that cannot hold a certificate.
//!
//! A token is a PASETO v4.public token (Ed25519) signed with the cluster key, carrying the principal,
//! a random id and an expiry. PASETO over a home-made format or JWT: one algorithm per version (no
//! `alg` header to confuse), a maintained Rust implementation (`pasetors`) and libraries in every
//! common language for runtimes that want to inspect their own token. Tokens are minted by an admin
//! through a Raft entry (so minting is authorized and audited like any admin action) and revoked by
//! one; every member refuses an expired token and one whose id is in the replicated revocation list.
//! A token's text is never logged; its id is.

use serde::{Deserialize, Serialize};

use super::keys::{sign_json, verify_json, EnvelopeError, KeyRing, SigningKey};
use crate::model::Principal;

pub(crate) const PURPOSE: &[u8] = b"warrant access token v1";

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessClaims {
    /// Random id; what revocation names and the audit records.
    pub id: String,
    /// Who the bearer acts as.
    pub principal: Principal,
    /// The cluster the token is for.
    pub cluster: String,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("access token refused: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("access token refused: it is for cluster {0:?}")]
    OtherCluster(String),
    #[error("access token {id} expired {ago_s} s ago")]
    Expired { id: String, ago_s: u64 },
    #[error("access token {0} was revoked")]
    Revoked(String),
}

impl AccessClaims {
    pub fn sign(&self, key: &SigningKey) -> String {
        sign_json(key, PURPOSE, self)
    }

    /// Check signature, cluster and expiry (against `now_ms`, the verifier's wall clock).
    /// Revocation is the caller's check: it needs the replicated list.
    pub fn verify(
        keys: &KeyRing,
        cluster: &str,
        text: &str,
        now_ms: u64,
    ) -> Result<Self, TokenError> {
        let claims: Self = verify_json(keys, PURPOSE, "access token", text)?;
        if claims.cluster != cluster {
            return Err(TokenError::OtherCluster(claims.cluster));
        }
        if now_ms >= claims.expires_at_ms {
            return Err(TokenError::Expired {
                id: claims.id,
                ago_s: (now_ms - claims.expires_at_ms) / 1000,
            });
        }
        Ok(claims)
    }
}

/// The principal a token names, read WITHOUT checking its signature: only for choosing a default
/// (the CLI's `--principal`); the cluster verifies the token on every request.
pub fn peek_principal(text: &str) -> Option<Principal> {
    use pasetors::token::UntrustedToken;
    use pasetors::version4::V4;
    use pasetors::Public;
    let untrusted = UntrustedToken::<Public, V4>::try_from(text.trim()).ok()?;
    serde_json::from_slice::<AccessClaims>(untrusted.untrusted_payload())
        .ok()
        .map(|c| c.principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> AccessClaims {
        AccessClaims {
            id: "t1".into(),
            principal: Principal::parse("agent/deployer").unwrap(),
            cluster: "c".into(),
            issued_at_ms: 1_000,
            expires_at_ms: 10_000,
        }
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let k = SigningKey::generate();
        let t = claims().sign(&k);
        assert!(t.starts_with("v4.public."));
        assert_eq!(
            AccessClaims::verify(&k.verifying_key().into(), "c", &t, 9_999).unwrap(),
            claims()
        );
        assert_eq!(peek_principal(&t), Some(claims().principal));
        assert!(matches!(
            AccessClaims::verify(&k.verifying_key().into(), "c", &t, 10_000),
            Err(TokenError::Expired { .. })
        ));
        assert!(matches!(
            AccessClaims::verify(&k.verifying_key().into(), "other", &t, 5_000),
            Err(TokenError::OtherCluster(_))
        ));
    }

    #[test]
    fn forged_and_altered_tokens_are_refused() {
        let k = SigningKey::generate();
        let t = claims().sign(&k);
        let other = SigningKey::generate();
        assert!(matches!(
            AccessClaims::verify(&other.verifying_key().into(), "c", &t, 5_000),
            Err(TokenError::Envelope(EnvelopeError::UnknownKey(_)))
        ));
        // Flip one character of the payload.
        let mut bytes = t.clone().into_bytes();
        let i = "v4.public.".len() + 5;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert!(AccessClaims::verify(&k.verifying_key().into(), "c", &altered, 5_000).is_err());
        assert!(AccessClaims::verify(&k.verifying_key().into(), "c", "garbage", 5_000).is_err());
    }
}
