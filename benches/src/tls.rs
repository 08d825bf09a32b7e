//! `--tls`: both clusters run with mutual TLS on client and peer traffic, as in production.
//!
//! One CA from `warrant certs init` serves both systems: Warrant's nodes use their node certificates
//! and the cluster signing key; etcd's members use the same node certificates (valid for 127.0.0.1)
//! with `--client-cert-auth` and `--peer-client-cert-auth`. Every benchmark client gets its own
//! client certificate, issued on first use, because a Warrant principal comes from its certificate
//! (and the per-principal limits count per principal).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, Result};
use warrant::client::{Client, ClientConfig};
use warrant::security::certs::{self, Ca, ClientIssuer, InitOptions};
use warrant::security::tls::TlsMaterial;

struct Tls {
    /// `certs init`'s files: the CA, node certificates and the signing key.
    dir: PathBuf,
    clients: ClientIssuer,
}

static TLS: OnceLock<Tls> = OnceLock::new();

/// Make a CA, node certificates 1..=5 and the signing key in `dir`; from now on every cluster and
/// client this process makes uses TLS.
pub fn enable(dir: &Path) -> Result<()> {
    let mut options = InitOptions::local("bench", 5);
    options.principals = Vec::new();
    certs::init(dir, &options).map_err(|e| anyhow!("certs init: {e}"))?;
    let ca = Ca::load(dir).map_err(|e| anyhow!("load the bench CA: {e}"))?;
    TLS.set(Tls {
        dir: dir.to_path_buf(),
        clients: ClientIssuer::new(ca, Duration::from_secs(86_400)),
    })
    .map_err(|_| anyhow!("TLS enabled twice"))
}

pub fn enabled() -> bool {
    TLS.get().is_some()
}

/// `https` with TLS on, else `http`.
pub fn scheme() -> &'static str {
    if enabled() {
        "https"
    } else {
        "http"
    }
}

/// The client material for `principal` (`agent/NAME`), issuing its certificate the first time.
fn material(principal: &str) -> Result<Option<TlsMaterial>> {
    TLS.get()
        .map(|t| t.clients.material(principal))
        .transpose()
        .map_err(|e| anyhow!("a certificate for {principal}: {e}"))
}

/// A Warrant client acting as `principal`: with its certificate under `--tls`, by claim otherwise.
pub fn warrant_client<I, S>(endpoints: I, principal: &str) -> Result<Client>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut config = ClientConfig::new(endpoints, principal)?;
    config.tls = material(principal)?;
    Ok(Client::new(config)?)
}

/// A raw gRPC channel to one Warrant node, authenticated as `principal` under `--tls`.
pub async fn warrant_channel(addr: &str, principal: &str) -> Result<tonic::transport::Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{}://{addr}", scheme()))?;
    if let Some(m) = material(principal)? {
        endpoint = endpoint.tls_config(m.client())?;
    }
    Ok(endpoint.connect().await?)
}

/// An etcd client; under `--tls` it trusts the bench CA and presents `agent/bench`'s certificate.
pub async fn etcd_client(endpoints: &[String]) -> Result<etcd_client::Client> {
    let options =
        material("agent/bench")?.map(|m| etcd_client::ConnectOptions::new().with_tls(m.client()));
    let urls: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{}://{e}", scheme()))
        .collect();
    Ok(etcd_client::Client::connect(urls, options).await?)
}

/// Warrant node `id`'s security settings: its `[security]` table (it goes after every other table),
/// or the top-level `insecure = true` without `--tls`.
pub fn warrant_node_security(id: u64) -> (&'static str, String) {
    match TLS.get() {
        None => ("insecure = true\n", String::new()),
        Some(t) => (
            "",
            format!(
                "[security]\nca = {:?}\ncert = {:?}\nkey = {:?}\nsigning_key = {:?}\n",
                t.dir.join("ca.pem"),
                t.dir.join(format!("node{id}.pem")),
                t.dir.join(format!("node{id}.key")),
                t.dir.join("cluster-signing.key"),
            ),
        ),
    }
}

/// etcd member `n`'s TLS flags (none without `--tls`).
pub fn etcd_args(n: usize) -> Vec<String> {
    let Some(t) = TLS.get() else {
        return Vec::new();
    };
    let path = |name: String| t.dir.join(name).display().to_string();
    let (cert, key, ca) = (
        path(format!("node{n}.pem")),
        path(format!("node{n}.key")),
        path("ca.pem".into()),
    );
    vec![
        "--cert-file".into(),
        cert.clone(),
        "--key-file".into(),
        key.clone(),
        "--trusted-ca-file".into(),
        ca.clone(),
        "--client-cert-auth".into(),
        "--peer-cert-file".into(),
        cert,
        "--peer-key-file".into(),
        key,
        "--peer-trusted-ca-file".into(),
        ca,
        "--peer-client-cert-auth".into(),
    ]
}
