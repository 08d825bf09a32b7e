//! Grant certificates: a grant, signed by the cluster, that a resource can check offline.
//!
//! `{resource, token, lease_id, principal, instance, not_after}` (plus the cluster name), as a
//! PASETO v4.public token signed with the cluster key. A resource that cannot reach the cluster
//! verifies the signature with the cluster's public key, that the certificate is for itself, that it
//! has not run out, and — through `FenceGuard` — that its token is not below the highest it has seen.
//! Signatures are deterministic (Ed25519), so the same grant always gives the same certificate.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys::{sign_json, verify_json, EnvelopeError, KeyRing, SigningKey};

pub(crate) const PURPOSE: &[u8] = b"warrant grant certificate v1";

/// The skew allowance verifiers use by default: a certificate is accepted only while
/// `now + skew ≤ not_after`, so a verifier whose clock runs up to this much behind the cluster's
/// still stops accepting it no later than the cluster's own `not_after`.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(1);

/// What a grant certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantClaims {
    pub cluster: String,
    pub resource: String,
    pub token: u64,
    pub lease_id: String,
    pub principal: String,
    pub instance: String,
    /// Unix milliseconds (cluster clock) after which the grant must not be relied on: the grant's
    /// time plus its ttl. A holder that keeps its lease alive asks for a fresh certificate.
    pub not_after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantCertError {
    #[error("grant certificate refused: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("grant certificate refused: it is for resource {got:?}, not {want:?}")]
    WrongResource { got: String, want: String },
    #[error("grant certificate refused: it is for cluster {got:?}, not {want:?}")]
    WrongCluster { got: String, want: String },
    #[error("grant certificate refused: it ran out at {not_after_ms} (now {now_ms}, skew allowance {skew_ms} ms)")]
    Expired {
        not_after_ms: u64,
        now_ms: u64,
        skew_ms: u64,
    },
}

/// How a resource checks a grant certificate offline: with the cluster's public keys, for that
/// cluster only (a certificate of another cluster that shares a key, such as a staging cluster
/// made from a copy of production's key files, names its own cluster and is refused).
#[derive(Debug, Clone)]
pub struct GrantVerifier {
    pub keys: KeyRing,
    /// The cluster's name (its nodes' `cluster_name`); the certificate must name it.
    pub cluster: String,
    pub skew: Duration,
}

impl GrantClaims {
    pub fn sign(&self, key: &SigningKey) -> String {
        sign_json(key, PURPOSE, self)
    }
}

impl GrantVerifier {
    /// A verifier for `cluster`'s certificates signed by any key of `keys`.
    pub fn new(keys: impl Into<KeyRing>, cluster: impl Into<String>) -> Self {
        Self {
            keys: keys.into(),
            cluster: cluster.into(),
            skew: DEFAULT_SKEW,
        }
    }

    /// Signature, cluster, resource and time; not the token (that is the fence's job).
    pub fn verify(
        &self,
        text: &str,
        resource: &str,
        now_ms: u64,
    ) -> Result<GrantClaims, GrantCertError> {
        let claims: GrantClaims = verify_json(&self.keys, PURPOSE, "grant certificate", text)?;
        if claims.cluster != self.cluster {
            return Err(GrantCertError::WrongCluster {
                got: claims.cluster,
                want: self.cluster.clone(),
            });
        }
        if claims.resource != resource {
            return Err(GrantCertError::WrongResource {
                got: claims.resource,
                want: resource.to_string(),
            });
        }
        let skew_ms = self.skew.as_millis() as u64;
        if now_ms.saturating_add(skew_ms) > claims.not_after_ms {
            return Err(GrantCertError::Expired {
                not_after_ms: claims.not_after_ms,
                now_ms,
                skew_ms,
            });
        }
        Ok(claims)
    }
}

/// When a grant certificate runs out, read WITHOUT checking its signature: only for a holder
/// deciding when to ask for a fresh one (resources verify with [`GrantVerifier`]).
pub fn peek_not_after_ms(text: &str) -> Option<u64> {
    use pasetors::token::UntrustedToken;
    use pasetors::version4::V4;
    use pasetors::Public;
    let untrusted = UntrustedToken::<Public, V4>::try_from(text.trim()).ok()?;
    serde_json::from_slice::<GrantClaims>(untrusted.untrusted_payload())
        .ok()
        .map(|c| c.not_after_ms)
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> GrantClaims {
        GrantClaims {
            cluster: "c".into(),
            resource: "db/orders".into(),
            token: 7,
            lease_id: "0000000000000001".into(),
            principal: "agent/deployer".into(),
            instance: "i-1".into(),
            not_after_ms: 100_000,
        }
    }

    #[test]
    fn a_certificate_verifies_for_its_resource_until_not_after_minus_skew() {
        let k = SigningKey::generate();
        let cert = claims().sign(&k);
        assert_eq!(peek_not_after_ms(&cert), Some(100_000));
        assert_eq!(peek_not_after_ms("v4.public.garbage"), None);
        assert_eq!(cert, claims().sign(&k), "deterministic");
        let v = GrantVerifier::new(k.verifying_key(), "c");
        assert_eq!(v.verify(&cert, "db/orders", 99_000).unwrap(), claims());
        assert!(matches!(
            v.verify(&cert, "db/orders", 99_001),
            Err(GrantCertError::Expired { .. })
        ));
        assert!(matches!(
            v.verify(&cert, "db/users", 1),
            Err(GrantCertError::WrongResource { .. })
        ));
        let mut strict = v.clone();
        strict.cluster = "other".into();
        assert!(matches!(
            strict.verify(&cert, "db/orders", 1),
            Err(GrantCertError::WrongCluster { .. })
        ));
    }

    #[test]
    fn forged_and_cross_purpose_certificates_are_refused() {
        let k = SigningKey::generate();
        let forged = claims().sign(&SigningKey::generate());
        let v = GrantVerifier::new(k.verifying_key(), "c");
        assert!(matches!(
            v.verify(&forged, "db/orders", 1),
            Err(GrantCertError::Envelope(EnvelopeError::UnknownKey(_)))
        ));
        // An access token signed by the same key is not a grant certificate.
        let token = crate::security::token::AccessClaims {
            id: "x".into(),
            principal: crate::model::Principal::parse("agent/a").unwrap(),
            cluster: "c".into(),
            issued_at_ms: 0,
            expires_at_ms: u64::MAX,
        }
        .sign(&k);
        assert!(v.verify(&token, "db/orders", 1).is_err());
    }
}
