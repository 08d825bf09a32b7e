//! `--tls`: run the cluster as in production — mutual TLS on the client and Raft ports, every client
//! authenticated by its own certificate — instead of `insecure = true`.
//!
//! `warrant certs init` material is made in the run's directory (`certs/`): node certificates valid
//! for every node's address, and a client certificate per principal issued on first use.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use warrant::client::ClientConfig;
use warrant::security::certs::{self, Ca, ClientIssuer, InitOptions};

struct Tls {
    clients: ClientIssuer,
    /// The run's `certs` directory.
    dir: std::path::PathBuf,
}

/// Certificate files for a client in another process: the CA, its certificate and key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TlsPaths {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// How the run's nodes and clients authenticate; cheap to clone. `Default` is insecure.
#[derive(Clone, Default)]
pub struct Security(Option<Arc<Tls>>);

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_tls() {
            "Security(tls)"
        } else {
            "Security(insecure)"
        })
    }
}

impl Security {
    /// A CA, node certificates 1..=`nodes` valid for `hosts` (and 127.0.0.1), and the cluster
    /// signing key, written to `dir` (the run's `certs`, next to the node configs).
    pub fn tls(dir: &Path, nodes: u64, hosts: Vec<String>) -> anyhow::Result<Self> {
        let mut options = InitOptions::local("jepsen", nodes);
        options.hosts = hosts;
        options.principals = Vec::new();
        certs::init(dir, &options).map_err(|e| anyhow::anyhow!("certs init: {e}"))?;
        let ca = Ca::load(dir).map_err(|e| anyhow::anyhow!("the run's CA: {e}"))?;
        Ok(Self(Some(Arc::new(Tls {
            clients: ClientIssuer::new(ca, Duration::from_secs(7 * 86_400)),
            dir: dir.to_path_buf(),
        }))))
    }

    pub fn is_tls(&self) -> bool {
        self.0.is_some()
    }

    /// A client configuration acting as `principal`: with its own certificate under TLS, by claim
    /// on an insecure cluster.
    pub fn client<I, S>(&self, endpoints: I, principal: &str) -> anyhow::Result<ClientConfig>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut config = ClientConfig::new(endpoints, principal)?;
        if let Some(t) = &self.0 {
            config.tls = Some(
                t.clients
                    .material(principal)
                    .map_err(|e| anyhow::anyhow!("a certificate for {principal}: {e}"))?,
            );
        }
        Ok(config)
    }

    /// For a client in its own process acting as `principal`: its certificate and key written to
    /// the run's `certs` directory (None on an insecure cluster).
    pub fn client_files(&self, principal: &str) -> anyhow::Result<Option<TlsPaths>> {
        let Some(t) = &self.0 else { return Ok(None) };
        let identity = warrant::security::identity::Identity::Principal(
            warrant::model::Principal::parse(principal)?,
        );
        let stem = certs::file_stem(&identity);
        certs::issue_into(&t.dir, &identity, &[], Duration::from_secs(7 * 86_400))
            .map_err(|e| anyhow::anyhow!("a certificate for {principal}: {e}"))?;
        Ok(Some(TlsPaths {
            ca: t.dir.join("ca.pem"),
            cert: t.dir.join(format!("{stem}.pem")),
            key: t.dir.join(format!("{stem}.key")),
        }))
    }

    /// A client configuration from files made by [`Security::client_files`].
    pub fn client_from_files(
        endpoints: Vec<String>,
        principal: &str,
        tls: Option<&TlsPaths>,
    ) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new(endpoints, principal)?;
        if let Some(t) = tls {
            let files = warrant::security::tls::TlsFiles {
                ca: t.ca.clone(),
                cert_and_key: Some((t.cert.clone(), t.key.clone())),
            };
            config.tls = Some(files.load().map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        Ok(config)
    }

    /// Node `id`'s settings: a top-level line, and a table that goes after every other table. Paths
    /// are relative to the node's config file, which is next to the `certs` directory.
    pub fn node_config(&self, id: u64) -> (&'static str, String) {
        match &self.0 {
            // Nodes listen on network-namespace addresses, not loopback.
            None => (
                "insecure = true\ninsecure_beyond_loopback = true\n",
                String::new(),
            ),
            Some(_) => (
                "",
                format!(
                    "[security]\nca = \"certs/ca.pem\"\ncert = \"certs/node{id}.pem\"\n\
                     key = \"certs/node{id}.key\"\nsigning_key = \"certs/cluster-signing.key\"\n"
                ),
            ),
        }
    }
}
