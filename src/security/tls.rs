//! PEM files into tonic's TLS settings (rustls underneath).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity as TlsIdentity, ServerTlsConfig};

use super::identity::Identity;

/// Where a party's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate: peers must present a certificate it signed.
    pub ca: PathBuf,
    /// This party's certificate (PEM) and private key; a token-only client has none.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
}

/// PEM contents, read once.
#[derive(Clone)]
pub struct TlsMaterial {
    ca: String,
    pair: Option<(String, String)>,
    /// Who the certificate names, when there is one.
    pub identity: Option<Identity>,
}

fn read(path: &Path, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

fn first_cert_der(pem: &str, path: &Path) -> Result<Vec<u8>, String> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map(|(_, p)| p.contents)
        .map_err(|e| format!("{} is not a PEM certificate: {e}", path.display()))
}

impl TlsFiles {
    /// Read the files and learn who the certificate names.
    pub fn load(&self) -> Result<TlsMaterial, String> {
        let ca = read(&self.ca, "CA certificate")?;
        let pair = match &self.cert_and_key {
            None => None,
            Some((cert, key)) => Some((
                read(cert, "certificate")?,
                read(key, "private key")?,
                cert.as_path(),
            )),
        };
        TlsMaterial::from_pem(ca, pair, &self.ca)
    }
}

impl TlsMaterial {
    /// Material from PEM text already in memory (e.g. just issued by [`super::certs::Ca`]):
    /// the CA certificate, and this party's certificate and key if it has one.
    pub fn from_pems(ca: String, cert_and_key: Option<(String, String)>) -> Result<Self, String> {
        let pair = cert_and_key.map(|(c, k)| (c, k, Path::new("certificate")));
        Self::from_pem(ca, pair, Path::new("CA certificate"))
    }

    /// Checks the PEM and learns who the certificate names; paths only name the files in errors.
    fn from_pem(
        ca: String,
        pair: Option<(String, String, &Path)>,
        ca_path: &Path,
    ) -> Result<Self, String> {
        first_cert_der(&ca, ca_path)?;
        let (pair, identity) = match pair {
            None => (None, None),
            Some((c, k, cert_path)) => {
                let der = first_cert_der(&c, cert_path)?;
                let id = Identity::from_cert_der(&der)
                    .map_err(|e| format!("{}: {e}", cert_path.display()))?;
                (Some((c, k)), Some(id))
            }
        };
        Ok(TlsMaterial { ca, pair, identity })
    }
}

impl TlsMaterial {
    /// Server side. `require_client_cert`: the Raft port demands one; the client port also lets
    /// token holders in (TLS without a client certificate) and authenticates them per request.
    /// A handshake not finished within `handshake_timeout` is dropped.
    pub fn server(
        &self,
        require_client_cert: bool,
        handshake_timeout: std::time::Duration,
    ) -> Result<ServerTlsConfig, String> {
        let (cert, key) = self
            .pair
            .as_ref()
            .ok_or("a server needs a certificate and key")?;
        Ok(ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(!require_client_cert)
            .timeout(handshake_timeout))
    }

    /// Client side: trust the cluster CA, present our certificate if we have one.
    pub fn client(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca));
        if let Some((cert, key)) = &self.pair {
            c = c.identity(TlsIdentity::from_pem(cert, key));
        }
        c
    }
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}
