//! The cluster's Ed25519 signing key, which signs access tokens and grant certificates.
//!
//! Keys are stored as PASERK strings (`k4.secret.…`, `k4.public.…`), the key format that goes with
//! PASETO v4, so any PASETO library can verify what Warrant signs with the public half.
//!
//! Everything signed carries its key's id (the PASERK id, `k4.pid.…`) in the PASETO footer, which
//! the signature covers. Verifiers hold a [`KeyRing`]: the active key and older ones not yet
//! retired, so `warrant keys rotate` can bring in a new key while what the old one signed still
//! verifies until it runs out.

use std::path::Path;

use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::{FormatAsPaserk, Id};
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
    #[error(
        "{0} keys in one ring; at most {MAX_RING_KEYS} (retire old ones: warrant keys retire)"
    )]
    TooMany(usize),
    #[error("no key {0} in the ring (warrant keys list shows the ids)")]
    NoSuchKey(String),
    #[error("that is the ring's only key; rotate first (warrant keys rotate)")]
    LastKey,
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

    /// The id of this key (its public half's), carried in everything it signs.
    pub fn key_id(&self) -> String {
        self.verifying_key().key_id()
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

    /// The key's PASERK id, `k4.pid.…`: a hash of the key, safe to show and to log.
    pub fn key_id(&self) -> String {
        let mut s = String::new();
        Id::from(&self.0)
            .fmt(&mut s)
            .expect("writing to a String cannot fail");
        s
    }
}

/// The public keys a verifier accepts, oldest first. Its file is `cluster-signing.pub`: one
/// `k4.public.…` per line (`#` comments and blank lines allowed, not kept when the ring is written
/// again), so the one-key file of a cluster made before rotation is a ring of one.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRing(Vec<VerifyingKey>);

/// Most keys a ring holds: rotation keeps a few, never an unbounded list.
pub const MAX_RING_KEYS: usize = 16;

impl KeyRing {
    /// Parse a ring file's text.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut ring = Self(Vec::new());
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = VerifyingKey::from_paserk(line)?;
            if !ring.0.contains(&key) {
                ring.0.push(key);
            }
            if ring.0.len() > MAX_RING_KEYS {
                return Err(KeyError::TooMany(ring.0.len()));
            }
        }
        if ring.0.is_empty() {
            return Err(KeyError::Format {
                expected: "public",
                expected_prefix: "k4.public.",
            });
        }
        Ok(ring)
    }

    /// Read a ring file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        in_file(path, Self::parse(&read(path)?))
    }

    /// The ring's file text: one key per line (a ring of one is the plain one-key file that other
    /// PASETO libraries read; `warrant keys list` shows the ids).
    pub fn to_text(&self) -> String {
        self.0.iter().map(|k| k.to_paserk() + "\n").collect()
    }

    /// The keys, oldest first.
    pub fn keys(&self) -> &[VerifyingKey] {
        &self.0
    }

    /// The key with this id.
    pub fn find(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.0.iter().find(|k| k.key_id() == key_id)
    }

    /// This ring with `key` last (the newest), moved there if the ring holds it already.
    pub fn with(mut self, key: VerifyingKey) -> Result<Self, KeyError> {
        self.0.retain(|k| k != &key);
        self.0.push(key);
        if self.0.len() > MAX_RING_KEYS {
            return Err(KeyError::TooMany(self.0.len()));
        }
        Ok(self)
    }

    /// This ring without the key of this id; an error if it has no such key, or no other.
    pub fn without(mut self, key_id: &str) -> Result<Self, KeyError> {
        let before = self.0.len();
        self.0.retain(|k| k.key_id() != key_id);
        if self.0.len() == before {
            return Err(KeyError::NoSuchKey(key_id.to_string()));
        }
        if self.0.is_empty() {
            return Err(KeyError::LastKey);
        }
        Ok(self)
    }
}

impl From<VerifyingKey> for KeyRing {
    fn from(key: VerifyingKey) -> Self {
        Self(vec![key])
    }
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

/// Why a signed envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a PASETO v4.public token")]
    Malformed,
    #[error("signature does not verify with the cluster key (forged, altered, another cluster's, or another kind of token)")]
    BadSignature,
    #[error("signed with key {0}, which this verifier does not hold (retired, not yet distributed, or another cluster's; warrant keys list shows the ring)")]
    UnknownKey(String),
    #[error("payload is not a {0}: {1}")]
    Payload(&'static str, String),
}

/// The PASETO footer of everything Warrant signs: the signing key's id.
#[derive(serde::Serialize, serde::Deserialize)]
struct Footer {
    kid: String,
}

/// Longest footer read: a key id is 51 bytes; anything much longer is not ours.
const MAX_FOOTER: usize = 256;

/// Sign `payload` (as JSON, fields in declaration order, so the same value always gives the same
/// bytes and Ed25519 the same signature) as a PASETO v4.public token, with the key's id in the
/// footer. `purpose` is bound in as the implicit assertion, so a token of one kind never verifies
/// as another.
pub(crate) fn sign_json<T: serde::Serialize>(
    key: &SigningKey,
    purpose: &[u8],
    payload: &T,
) -> String {
    let body = serde_json::to_vec(payload).expect("plain structs serialize");
    let footer = serde_json::to_vec(&Footer { kid: key.key_id() }).expect("a string serializes");
    pasetors::version4::PublicToken::sign(key.secret(), &body, Some(&footer), Some(purpose))
        .expect("a non-empty payload signs")
}

/// Verify a token made by [`sign_json`] with the same `purpose` by the ring's key its footer names
/// (by each key in turn for a token made before key ids, which has no footer), and decode its
/// payload.
pub(crate) fn verify_json<T: serde::de::DeserializeOwned>(
    keys: &KeyRing,
    purpose: &[u8],
    what: &'static str,
    text: &str,
) -> Result<T, EnvelopeError> {
    use pasetors::token::UntrustedToken;
    use pasetors::Public;
    let untrusted = UntrustedToken::<Public, V4>::try_from(text.trim())
        .map_err(|_| EnvelopeError::Malformed)?;
    let footer = untrusted.untrusted_footer();
    let candidates: Vec<&VerifyingKey> = if footer.is_empty() {
        keys.keys().iter().collect()
    } else {
        if footer.len() > MAX_FOOTER {
            return Err(EnvelopeError::Malformed);
        }
        let Footer { kid } =
            serde_json::from_slice(footer).map_err(|_| EnvelopeError::Malformed)?;
        // Only a key id's shape (33 bytes of hash, base64url) is ever echoed back (into errors
        // and logs).
        let shaped = kid.strip_prefix("k4.pid.").is_some_and(|id| {
            id.len() == 44
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !shaped {
            return Err(EnvelopeError::Malformed);
        }
        vec![keys.find(&kid).ok_or(EnvelopeError::UnknownKey(kid))?]
    };
    for key in candidates {
        // The footer (when there is one) is covered by the signature: `None` verifies the token's own.
        if let Ok(trusted) =
            pasetors::version4::PublicToken::verify(key.public(), &untrusted, None, Some(purpose))
        {
            return serde_json::from_str(trusted.payload())
                .map_err(|e| EnvelopeError::Payload(what, e.to_string()));
        }
    }
    Err(EnvelopeError::BadSignature)
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

    #[test]
    fn a_ring_file_round_trips_keeps_the_active_key_last_and_never_empties() {
        let (a, b) = (SigningKey::generate(), SigningKey::generate());
        let one = KeyRing::parse(&a.verifying_key().to_paserk()).unwrap();
        assert_eq!(
            one.keys(),
            &[a.verifying_key()],
            "a one-key file is a ring of one"
        );
        let two = one.clone().with(b.verifying_key()).unwrap();
        assert_eq!(KeyRing::parse(&two.to_text()).unwrap(), two);
        assert_eq!(two.keys().last(), Some(&b.verifying_key()));
        assert_eq!(two.find(&a.key_id()), Some(&a.verifying_key()));
        assert!(a.key_id().starts_with("k4.pid."), "{}", a.key_id());
        let back = two.clone().with(a.verifying_key()).unwrap();
        assert_eq!(
            back.keys().last(),
            Some(&a.verifying_key()),
            "re-adding makes it newest"
        );
        assert_eq!(back.keys().len(), 2);
        let repeated = format!(
            "{}\n{}\n{}\n",
            a.verifying_key().to_paserk(),
            b.verifying_key().to_paserk(),
            a.verifying_key().to_paserk()
        );
        assert_eq!(
            KeyRing::parse(&repeated).unwrap(),
            one.with(b.verifying_key()).unwrap(),
            "a repeated key counts once"
        );
        let retired = two.without(&a.key_id()).unwrap();
        assert_eq!(retired.keys(), &[b.verifying_key()]);
        assert!(matches!(
            retired.clone().without(&b.key_id()),
            Err(KeyError::LastKey)
        ));
        assert!(matches!(
            retired.without("k4.pid.nope"),
            Err(KeyError::NoSuchKey(_))
        ));
        assert!(KeyRing::parse("# only a comment\n").is_err());
        let many: String = (0..=MAX_RING_KEYS)
            .map(|_| SigningKey::generate().verifying_key().to_paserk() + "\n")
            .collect();
        assert!(matches!(KeyRing::parse(&many), Err(KeyError::TooMany(_))));
    }

    #[test]
    fn a_token_names_its_key_and_verifies_with_any_ring_that_holds_it() {
        let (old, new) = (SigningKey::generate(), SigningKey::generate());
        let ring = KeyRing::from(old.verifying_key())
            .with(new.verifying_key())
            .unwrap();
        for key in [&old, &new] {
            let token = sign_json(key, b"p", &"claims");
            let got: String = verify_json(&ring, b"p", "test", &token).unwrap();
            assert_eq!(got, "claims");
        }
        let token = sign_json(&new, b"p", &"claims");
        let only_old = KeyRing::from(old.verifying_key());
        assert_eq!(
            verify_json::<String>(&only_old, b"p", "test", &token),
            Err(EnvelopeError::UnknownKey(new.key_id()))
        );
        // Made before key ids (no footer): each key of the ring is tried.
        let bare =
            pasetors::version4::PublicToken::sign(old.secret(), b"\"claims\"", None, Some(b"p"))
                .unwrap();
        assert_eq!(
            verify_json::<String>(&ring, b"p", "test", &bare).unwrap(),
            "claims"
        );
        // A footer naming another ring key than the one that signed does not verify.
        let other = SigningKey::generate();
        let forged_footer = serde_json::to_vec(&Footer { kid: old.key_id() }).unwrap();
        let forged = pasetors::version4::PublicToken::sign(
            other.secret(),
            b"\"claims\"",
            Some(&forged_footer),
            Some(b"p"),
        )
        .unwrap();
        assert_eq!(
            verify_json::<String>(&ring, b"p", "test", &forged),
            Err(EnvelopeError::BadSignature)
        );
        // A footer whose key id is not a key id's shape is refused unread (never echoed back).
        for footer in [
            r#"{"kid":"k4.pid.\n2026 forged log line"}"#,
            r#"{"kid":1}"#,
            "not json",
        ] {
            let odd = pasetors::version4::PublicToken::sign(
                old.secret(),
                b"\"claims\"",
                Some(footer.as_bytes()),
                Some(b"p"),
            )
            .unwrap();
            assert_eq!(
                verify_json::<String>(&ring, b"p", "test", &odd),
                Err(EnvelopeError::Malformed),
                "{footer}"
            );
        }
    }
}
