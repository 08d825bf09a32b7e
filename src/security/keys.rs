//! The cluster's Ed25519 signing key, which signs access tokens and grant certificates.
//!
//! Keys are stored as PASERK strings (`k4.secret.…`, `k4.public.…`), the key format that goes with
//! PASETO v4, so any PASETO library can verify what Warrant signs with the public half.

use std::path::Path;

use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::FormatAsPaserk;
use pasetors::version4::V4;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("not a PASETO v4 {expected} key in PASERK form ({expected_prefix}…)")]
    Format {
        expected: &'static str,
        expected_prefix: &'static str,
    },
}

/// The secret half; every member holds it (each may be leader).
pub struct SigningKey {
    secret: AsymmetricSecretKey<V4>,
    public: AsymmetricPublicKey<V4>,
}

/// The public half; resources verify grant certificates with it offline.
#[derive(Clone)]
pub struct VerifyingKey(AsymmetricPublicKey<V4>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.verifying_key().to_paserk())
    }
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({})", self.to_paserk())
    }
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| KeyError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

fn in_file<T>(path: &Path, r: Result<T, KeyError>) -> Result<T, KeyError> {
    r.map_err(|e| KeyError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        // Fails only when the OS has no randomness, where nothing else could work either.
        let pair = AsymmetricKeyPair::<V4>::generate().expect("the OS random source works");
        Self {
            secret: pair.secret,
            public: pair.public,
        }
    }

    /// Parse `k4.secret.…`.
    pub fn from_paserk(s: &str) -> Result<Self, KeyError> {
        let secret =
            AsymmetricSecretKey::<V4>::try_from(s.trim()).map_err(|_| KeyError::Format {
                expected: "secret",
                expected_prefix: "k4.secret.",
            })?;
        let public =
            AsymmetricPublicKey::<V4>::try_from(&secret).map_err(|_| KeyError::Format {
                expected: "secret",
                expected_prefix: "k4.secret.",
            })?;
        Ok(Self { secret, public })
    }

    /// Read a `k4.secret.…` file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        in_file(path, Self::from_paserk(&read(path)?))
    }

    pub fn to_paserk(&self) -> String {
        let mut s = String::new();
        self.secret
            .fmt(&mut s)
            .expect("writing to a String cannot fail");
        s
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.public.clone())
    }

    pub(crate) fn secret(&self) -> &AsymmetricSecretKey<V4> {
        &self.secret
    }
}

impl VerifyingKey {
    /// Parse `k4.public.…`.
    pub fn from_paserk(s: &str) -> Result<Self, KeyError> {
        AsymmetricPublicKey::<V4>::try_from(s.trim())
            .map(Self)
            .map_err(|_| KeyError::Format {
                expected: "public",
                expected_prefix: "k4.public.",
            })
    }

    /// Read a `k4.public.…` file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        in_file(path, Self::from_paserk(&read(path)?))
    }

    pub fn to_paserk(&self) -> String {
        let mut s = String::new();
        self.0.fmt(&mut s).expect("writing to a String cannot fail");
        s
    }

    pub(crate) fn public(&self) -> &AsymmetricPublicKey<V4> {
        &self.0
    }
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paserk_round_trips_and_wrong_kinds_are_named() {
        let k = SigningKey::generate();
        let s = k.to_paserk();
        assert!(s.starts_with("k4.secret."), "{s}");
        let back = SigningKey::from_paserk(&s).unwrap();
        assert_eq!(back.verifying_key(), k.verifying_key());
        let p = k.verifying_key().to_paserk();
        assert!(p.starts_with("k4.public."));
        assert_eq!(VerifyingKey::from_paserk(&p).unwrap(), k.verifying_key());
        let e = SigningKey::from_paserk(&p).unwrap_err().to_string();
        assert!(e.contains("k4.secret."), "{e}");
        assert!(VerifyingKey::from_paserk(&s).is_err());
    }
}

/// Why a signed envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a PASETO v4.public token")]
    Malformed,
    #[error("signature does not verify with the cluster key (forged, altered, another cluster's, or another kind of token)")]
    BadSignature,
    #[error("payload is not a {0}: {1}")]
    Payload(&'static str, String),
}

/// Sign `payload` (as JSON, fields in declaration order, so the same value always gives the same
/// bytes and Ed25519 the same signature) as a PASETO v4.public token. `purpose` is bound in as the
/// implicit assertion, so a token of one kind never verifies as another.
pub(crate) fn sign_json<T: serde::Serialize>(
    key: &SigningKey,
    purpose: &[u8],
    payload: &T,
) -> String {
    let body = serde_json::to_vec(payload).expect("plain structs serialize");
    pasetors::version4::PublicToken::sign(key.secret(), &body, None, Some(purpose))
        .expect("a non-empty payload signs")
}

/// Verify a token made by [`sign_json`] with the same `purpose`, and decode its payload.
pub(crate) fn verify_json<T: serde::de::DeserializeOwned>(
    key: &VerifyingKey,
    purpose: &[u8],
    what: &'static str,
    text: &str,
) -> Result<T, EnvelopeError> {
    use pasetors::token::UntrustedToken;
    use pasetors::Public;
    let untrusted = UntrustedToken::<Public, V4>::try_from(text.trim())
        .map_err(|_| EnvelopeError::Malformed)?;
    let trusted =
        pasetors::version4::PublicToken::verify(key.public(), &untrusted, None, Some(purpose))
            .map_err(|_| EnvelopeError::BadSignature)?;
    serde_json::from_str(trusted.payload()).map_err(|e| EnvelopeError::Payload(what, e.to_string()))
}
