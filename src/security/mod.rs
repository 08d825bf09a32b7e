//! Who is calling, and what the cluster vouches for.
//!
//! - [`identity`]: the `spiffe://warrant/…` URI scheme that names agents, humans and nodes in
//!   certificates;
//! - [`certs`]: a CA, node and client certificates (`warrant certs init|issue`);
//! - [`keys`]: the cluster's Ed25519 signing key (PASERK files) and the PASETO v4.public envelope;
//! - [`token`]: access tokens (bearer credentials for runtimes without a certificate);
//! - [`grant`]: grant certificates a resource verifies offline;
//! - [`tls`]: loading the PEM files of a node or client into tonic's TLS settings.
//!
//! Pure except for reading and writing key files; the server and client wire it in.

pub mod certs;
pub mod grant;
pub mod identity;
pub mod keys;
pub mod tls;
pub mod token;

pub use grant::{GrantCertError, GrantClaims, GrantVerifier};
pub use identity::{Identity, IdentityError};
pub use keys::{KeyRing, SigningKey, VerifyingKey};
pub use token::{AccessClaims, TokenError};
