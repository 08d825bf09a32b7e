//! `FenceGuard`: the check a protected resource makes on every write (DESIGN rule 4).
//!
//! A lease alone cannot make a resource safe: a holder can be paused (GC, SIGSTOP, a slow network)
//! past its lease, wake up and write after someone else was granted the resource. The fencing token
//! fixes that only if the *resource* rejects every token lower than the highest it has seen. Embed a
//! `FenceGuard` in the resource (one per protected resource), call [`FenceGuard::admit`] with the
//! writer's token before applying each write, and persist [`FenceGuard::highest`] with the resource's
//! data if the resource itself is durable.

use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::security::grant::{GrantCertError, GrantClaims, GrantVerifier};

/// Why [`FenceGuard::admit_certificate`] refused a grant certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateRefused {
    /// Forged, altered, another cluster's, for another resource, or run out.
    #[error(transparent)]
    Invalid(#[from] GrantCertError),
    /// Genuine, but superseded: the resource has seen a newer grant.
    #[error(transparent)]
    Stale(#[from] StaleToken),
}

/// A write carried a token lower than one the resource has already seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token {token}: this resource has already seen token {highest}; the writer's lease was superseded")]
pub struct StaleToken {
    /// The rejected token.
    pub token: u64,
    /// The highest token seen so far.
    pub highest: u64,
}

/// Accepts a token greater than or equal to the highest seen, and remembers it; rejects lower ones.
/// Thread-safe and lock-free.
#[derive(Debug, Default)]
pub struct FenceGuard {
    highest: AtomicU64,
}

impl FenceGuard {
    /// A guard that has seen no token yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A guard restored with the highest token the resource recorded before (e.g. after its restart).
    pub fn with_highest(highest: u64) -> Self {
        Self {
            highest: AtomicU64::new(highest),
        }
    }

    /// Admit a write carrying `token`: Ok if `token` ≥ every token admitted before (and remember it),
    /// `Err(StaleToken)` otherwise. Equal tokens are admitted: one holder writes many times.
    pub fn admit(&self, token: u64) -> Result<(), StaleToken> {
        self.highest
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |highest| {
                (token >= highest).then_some(token)
            })
            .map(|_| ())
            .map_err(|highest| StaleToken { token, highest })
    }

    /// Admit a write that carries a grant certificate instead of a bare token, checked offline:
    /// the cluster's signature, that it is for `resource`, that it has not run out by this machine's
    /// clock (less the verifier's skew allowance), and — like [`admit`](Self::admit) — that its
    /// token is not below the highest seen. A resource that cannot reach the cluster still refuses a
    /// forged, altered, expired or superseded grant. Returns what the certificate says.
    pub fn admit_certificate(
        &self,
        verifier: &GrantVerifier,
        certificate: &str,
        resource: &str,
    ) -> Result<GrantClaims, CertificateRefused> {
        let claims =
            verifier.verify(certificate, resource, crate::security::grant::unix_now_ms())?;
        self.admit(claims.token)?;
        Ok(claims)
    }

    /// The highest token admitted so far (0 if none).
    pub fn highest(&self) -> u64 {
        self.highest.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_equal_and_higher_tokens_and_rejects_lower_ones() {
        let g = FenceGuard::new();
        assert!(g.admit(5).is_ok());
        assert!(g.admit(5).is_ok(), "the same holder writes again");
        assert!(g.admit(9).is_ok());
        assert_eq!(
            g.admit(5),
            Err(StaleToken {
                token: 5,
                highest: 9
            })
        );
        assert_eq!(g.highest(), 9);
    }

    #[test]
    fn certificates_are_checked_offline_then_fenced() {
        use crate::security::SigningKey;
        let key = SigningKey::generate();
        let verifier = GrantVerifier::new(key.verifying_key(), "c");
        let cert = |token: u64, resource: &str, not_after_ms: u64| {
            GrantClaims {
                cluster: "c".into(),
                resource: resource.into(),
                token,
                lease_id: "0000000000000001".into(),
                principal: "agent/a".into(),
                instance: "i".into(),
                not_after_ms,
            }
            .sign(&key)
        };
        let later = crate::security::grant::unix_now_ms() + 60_000;
        let g = FenceGuard::new();
        assert_eq!(
            g.admit_certificate(&verifier, &cert(7, "db", later), "db")
                .unwrap()
                .token,
            7
        );
        // Superseded: a genuine certificate with a lower token.
        assert!(matches!(
            g.admit_certificate(&verifier, &cert(6, "db", later), "db"),
            Err(CertificateRefused::Stale(_))
        ));
        // Expired, for another resource, forged: refused and the fence does not move.
        for (bad, what) in [
            (cert(9, "db", 1), "expired"),
            (cert(9, "other", later), "other resource"),
            (
                GrantClaims {
                    cluster: "c".into(),
                    resource: "db".into(),
                    token: 9,
                    lease_id: "1".into(),
                    principal: "agent/a".into(),
                    instance: "i".into(),
                    not_after_ms: later,
                }
                .sign(&SigningKey::generate()),
                "forged",
            ),
        ] {
            assert!(
                matches!(
                    g.admit_certificate(&verifier, &bad, "db"),
                    Err(CertificateRefused::Invalid(_))
                ),
                "{what}"
            );
        }
        assert_eq!(g.highest(), 7);
    }

    #[test]
    fn restored_guard_remembers_the_highest_token() {
        let g = FenceGuard::with_highest(42);
        assert!(g.admit(41).is_err());
        assert!(g.admit(43).is_ok());
    }
}
