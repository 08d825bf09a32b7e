//! Who a certificate speaks for: the SPIFFE-style URI scheme Warrant puts in a certificate's subject
//! alternative names.
//!
//! | identity | URI SAN |
//! |---|---|
//! | agent `agent/NAME` | `spiffe://warrant/agent/NAME` |
//! | human `human/NAME` | `spiffe://warrant/human/NAME` |
//! | cluster member with node id N | `spiffe://warrant/node/N` |
//!
//! A certificate must carry exactly one `spiffe://warrant/` URI; the cluster CA is what makes it
//! trustworthy (checked by the TLS layer before this module sees the certificate).

use std::fmt;

use crate::model::Principal;

/// The SPIFFE trust domain of every Warrant identity.
pub const TRUST_DOMAIN: &str = "warrant";

const URI_PREFIX: &str = "spiffe://warrant/";

/// An authenticated party.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An agent or a human: may call the client API as this principal.
    Principal(Principal),
    /// A cluster member: may send Raft messages and fetch audit records from its peers.
    Node(u64),
}

/// Why a certificate or URI names no usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("certificate names no Warrant identity (a URI SAN spiffe://warrant/agent/NAME, …/human/NAME or …/node/ID)")]
    Missing,
    #[error("certificate names more than one Warrant identity: {0}")]
    Ambiguous(String),
    #[error("{uri:?} is not a Warrant identity: {reason}")]
    BadUri { uri: String, reason: String },
}

impl Identity {
    /// The URI SAN that names this identity.
    pub fn to_uri(&self) -> String {
        match self {
            Identity::Principal(p) => format!("{URI_PREFIX}{p}"),
            Identity::Node(id) => format!("{URI_PREFIX}node/{id}"),
        }
    }

    /// Parse `spiffe://warrant/agent/NAME`, `…/human/NAME` or `…/node/ID`.
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let bad = |reason: String| IdentityError::BadUri {
            uri: uri.to_string(),
            reason,
        };
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| bad(format!("must start with {URI_PREFIX}")))?;
        if let Some(id) = rest.strip_prefix("node/") {
            let id: u64 = id
                .parse()
                .map_err(|_| bad("node/ID needs a decimal node id".into()))?;
            return Ok(Identity::Node(id));
        }
        Principal::parse(rest)
            .map(Identity::Principal)
            .map_err(|e| bad(e.to_string()))
    }

    /// The identity a DER-encoded certificate names (its one `spiffe://warrant/` URI SAN).
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|s| s.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(u) if u.starts_with(URI_PREFIX) => Some(*u),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::Missing),
            [one] => Self::from_uri(one),
            many => Err(IdentityError::Ambiguous(many.join(", "))),
        }
    }

    /// When a DER-encoded certificate stops being valid, in Unix milliseconds.
    pub fn cert_not_after_ms(der: &[u8]) -> Result<u64, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        Ok(cert.validity().not_after.timestamp().max(0) as u64 * 1000)
    }

    /// The principal, for an agent or human.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Identity::Principal(p) => Some(p),
            Identity::Node(_) => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Principal(p) => write!(f, "{p}"),
            Identity::Node(id) => write!(f, "node/{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for s in [
            "spiffe://warrant/agent/deployer",
            "spiffe://warrant/human/alice",
            "spiffe://warrant/node/3",
        ] {
            assert_eq!(Identity::from_uri(s).unwrap().to_uri(), s);
        }
    }

    #[test]
    fn foreign_or_malformed_uris_are_refused() {
        for s in [
            "spiffe://other/agent/x",
            "spiffe://warrant/robot/x",
            "spiffe://warrant/agent/",
            "spiffe://warrant/node/one",
            "https://warrant/agent/x",
        ] {
            assert!(Identity::from_uri(s).is_err(), "{s}");
        }
    }
}
