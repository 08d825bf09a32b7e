//! Certificates for a cluster: a CA, node certificates (server and client auth, with the node's
//! host names) and client certificates for agents and humans. Used by `warrant certs init|issue`,
//! `warrant dev` and the tests; production sites may use their own CA as long as certificates carry
//! the URI SANs of [`super::identity`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::identity::Identity;
use super::keys::{KeyRing, SigningKey};

/// How long `certs init` makes a CA valid by default.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long `certs init|issue` makes a node or client certificate valid by default.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The principals `certs init` makes client certificates for unless told otherwise: the ones the
/// README and the example policy use.
pub const DEFAULT_PRINCIPALS: &[&str] = &[
    "agent/deployer",
    "agent/other",
    "human/alice",
    "human/bob",
    "human/admin",
];

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct PemPair {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// A certificate authority able to issue Warrant certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: PemPair,
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for peers whose clocks run behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::try_from(valid_for).unwrap_or(time::Duration::MAX);
}

impl Ca {
    /// A fresh CA for `cluster_name`.
    pub fn generate(cluster_name: &str, valid_for: Duration) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Warrant CA ({cluster_name})"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, valid_for);
        let cert = params.self_signed(&key)?;
        let pem = PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// A CA from its PEM certificate and key (as written by `certs init`).
    pub fn from_pem(cert: &str, key: &str) -> Result<Self, CertError> {
        let issuer = Issuer::from_ca_cert_pem(cert, KeyPair::from_pem(key)?)?;
        Ok(Self {
            issuer,
            pem: PemPair {
                cert: cert.to_string(),
                key: key.to_string(),
            },
        })
    }

    /// Read `ca.pem` and `ca.key` from a directory.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert = read(&dir.join("ca.pem"))?;
        let key = read(&dir.join("ca.key"))?;
        Self::from_pem(&cert, &key)
    }

    /// The CA's own certificate and key.
    pub fn pem(&self) -> &PemPair {
        &self.pem
    }

    /// A certificate for `identity`. Nodes get server and client auth and `hosts` (IP addresses or
    /// DNS names) as SANs; agents and humans get client auth only.
    pub fn issue(
        &self,
        identity: &Identity,
        hosts: &[String],
        valid_for: Duration,
    ) -> Result<PemPair, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, identity.to_string());
        let uri = identity
            .to_uri()
            .try_into()
            .map_err(|_| CertError::Invalid(format!("{identity} is not an IA5 string")))?;
        params.subject_alt_names.push(SanType::URI(uri));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if matches!(identity, Identity::Node(_)) {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
            for h in hosts {
                let san = match h.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(h.clone().try_into().map_err(|_| {
                        CertError::Invalid(format!("host {h:?} is neither an IP nor a DNS name"))
                    })?),
                };
                params.subject_alt_names.push(san);
            }
        }
        validity(&mut params, valid_for);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Client TLS material issued from a CA on first use per principal, then kept: for harnesses that
/// act as many principals at once (the benchmark, the chaos suite), where a principal comes from its
/// certificate.
pub struct ClientIssuer {
    ca: Ca,
    valid_for: Duration,
    issued: std::sync::Mutex<std::collections::HashMap<String, super::tls::TlsMaterial>>,
}

impl ClientIssuer {
    pub fn new(ca: Ca, valid_for: Duration) -> Self {
        Self {
            ca,
            valid_for,
            issued: Default::default(),
        }
    }

    /// The material for `principal` (`agent/NAME` or `human/NAME`): the CA and its certificate.
    pub fn material(&self, principal: &str) -> Result<super::tls::TlsMaterial, CertError> {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = issued.get(principal) {
            return Ok(m.clone());
        }
        let identity = Identity::Principal(
            crate::model::Principal::parse(principal)
                .map_err(|e| CertError::Invalid(e.to_string()))?,
        );
        let pair = self.ca.issue(&identity, &[], self.valid_for)?;
        let m = super::tls::TlsMaterial::from_pems(
            self.ca.pem().cert.clone(),
            Some((pair.cert, pair.key)),
        )
        .map_err(CertError::Invalid)?;
        issued.insert(principal.to_string(), m.clone());
        Ok(m)
    }
}

/// What `certs init` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub cluster_name: String,
    /// Node certificates for node ids 1..=nodes.
    pub nodes: u64,
    /// Host names and addresses every node certificate is valid for (always 127.0.0.1 and localhost).
    pub hosts: Vec<String>,
    /// Principals to make client certificates for.
    pub principals: Vec<String>,
    pub valid_for: Duration,
}

impl InitOptions {
    /// The defaults for a local cluster of `nodes` nodes.
    pub fn local(cluster_name: &str, nodes: u64) -> Self {
        Self {
            cluster_name: cluster_name.to_string(),
            nodes,
            hosts: Vec::new(),
            principals: DEFAULT_PRINCIPALS.iter().map(|s| s.to_string()).collect(),
            valid_for: DEFAULT_LEAF_VALIDITY,
        }
    }
}

/// The file stem a principal's certificate is written under: `agent/deployer` → `agent-deployer`.
pub fn file_stem(identity: &Identity) -> String {
    match identity {
        Identity::Node(id) => format!("node{id}"),
        Identity::Principal(p) => p.to_string().replace('/', "-"),
    }
}

/// Create a CA, node and client certificates and the cluster signing key in `out` (which must not
/// hold a CA already). Returns the files written.
pub fn init(out: &Path, options: &InitOptions) -> Result<Vec<PathBuf>, CertError> {
    if out.join("ca.key").exists() {
        return Err(CertError::Invalid(format!(
            "{} already holds a CA (ca.key); use `warrant certs issue` to add certificates, or choose another directory",
            out.display()
        )));
    }
    let principals: Vec<Identity> = options
        .principals
        .iter()
        .map(|p| {
            crate::model::Principal::parse(p)
                .map(Identity::Principal)
                .map_err(|e| CertError::Invalid(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    // It holds the CA's key: a new directory is the owner's alone (one that exists is left as is).
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(out)
        .map_err(|source| CertError::Io {
            path: out.display().to_string(),
            source,
        })?;
    let ca = Ca::generate(&options.cluster_name, DEFAULT_CA_VALIDITY)?;
    let mut written = Vec::new();
    write_pair(out, "ca", ca.pem(), &mut written)?;
    let mut hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    hosts.extend(options.hosts.iter().cloned());
    for id in 1..=options.nodes {
        let node = Identity::Node(id);
        let pair = ca.issue(&node, &hosts, options.valid_for)?;
        write_pair(out, &file_stem(&node), &pair, &mut written)?;
    }
    for p in &principals {
        let pair = ca.issue(p, &[], options.valid_for)?;
        write_pair(out, &file_stem(p), &pair, &mut written)?;
    }
    let signing = SigningKey::generate();
    let secret = out.join(SIGNING_KEY_FILE);
    write_file(&secret, &signing.to_paserk(), true)?;
    written.push(secret);
    let public = out.join(KEY_RING_FILE);
    write_file(
        &public,
        &KeyRing::from(signing.verifying_key()).to_text(),
        false,
    )?;
    written.push(public);
    Ok(written)
}

/// The signing key file, the key staged to replace it, and the key ring file in a certs directory.
pub const SIGNING_KEY_FILE: &str = "cluster-signing.key";
pub const NEXT_KEY_FILE: &str = "cluster-signing.next.key";
pub const KEY_RING_FILE: &str = "cluster-signing.pub";

/// What a certs directory holds: the ring, and the ids of the key that signs and of the staged one.
pub struct KeyFiles {
    pub ring: KeyRing,
    pub signing: Option<String>,
    pub next: Option<String>,
}

fn key_error(e: super::keys::KeyError) -> CertError {
    CertError::Invalid(e.to_string())
}

/// The key ring in `dir`, with the ids of its signing key and staged key (when readable).
pub fn key_files(dir: &Path) -> Result<KeyFiles, CertError> {
    let ring = KeyRing::load(&dir.join(KEY_RING_FILE)).map_err(key_error)?;
    let id = |file: &str| SigningKey::load(&dir.join(file)).ok().map(|k| k.key_id());
    Ok(KeyFiles {
        ring,
        signing: id(SIGNING_KEY_FILE),
        next: id(NEXT_KEY_FILE),
    })
}

/// Stage a new signing key in `dir`: its public half joins the ring, and the key itself waits in
/// `cluster-signing.next.key` until [`activate_next_key`], so the ring can reach every verifier
/// before anything is signed with it, even where nodes share one directory. Returns the new key's id.
pub fn stage_signing_key(dir: &Path) -> Result<String, CertError> {
    let signing = SigningKey::load(&dir.join(SIGNING_KEY_FILE)).map_err(key_error)?;
    let next_file = dir.join(NEXT_KEY_FILE);
    if next_file.exists() {
        return Err(CertError::Invalid(format!(
            "{} is already staged; activate it first (warrant keys activate)",
            next_file.display()
        )));
    }
    let ring_file = dir.join(KEY_RING_FILE);
    let ring = match KeyRing::load(&ring_file) {
        Ok(ring) => ring,
        // A directory whose ring file is gone: the signing key is all that verifies today.
        Err(_) if !ring_file.exists() => KeyRing::from(signing.verifying_key()),
        Err(e) => return Err(key_error(e)),
    };
    let new = SigningKey::generate();
    // The key first: a crash before the ring is written leaves a staged key no ring knows, which
    // `keys list` shows and a second `rotate` refuses to stage over; the other order would leave a
    // ring naming a key whose secret is lost.
    replace_file(&next_file, &new.to_paserk(), true)?;
    let ring = ring
        .with(signing.verifying_key())
        .and_then(|r| r.with(new.verifying_key()))
        .map_err(key_error)?;
    replace_file(&ring_file, &ring.to_text(), false)?;
    Ok(new.key_id())
}

/// Make the staged key the signing key (the file replaced whole, by rename). Refused unless the
/// ring holds it. Returns the previous and the new signing key ids.
pub fn activate_next_key(dir: &Path) -> Result<(String, String), CertError> {
    let next_file = dir.join(NEXT_KEY_FILE);
    let next = SigningKey::load(&next_file).map_err(|e| {
        CertError::Invalid(format!(
            "no staged key ({e}); stage one first (warrant keys rotate)"
        ))
    })?;
    let files = key_files(dir)?;
    if files.ring.find(&next.key_id()).is_none() {
        return Err(CertError::Invalid(format!(
            "the staged key {} is not in the ring {}: run warrant keys rotate again",
            next.key_id(),
            dir.join(KEY_RING_FILE).display()
        )));
    }
    let secret = dir.join(SIGNING_KEY_FILE);
    let previous = SigningKey::load(&secret).map_err(key_error)?;
    replace_file(&secret, &next.to_paserk(), true)?;
    std::fs::remove_file(&next_file).map_err(|source| CertError::Io {
        path: next_file.display().to_string(),
        source,
    })?;
    Ok((previous.key_id(), next.key_id()))
}

/// Drop `key_id` from the ring in `dir`: what it signed no longer verifies where the new ring is.
/// The key that signs and the staged key cannot be retired.
pub fn retire_key(dir: &Path, key_id: &str) -> Result<KeyRing, CertError> {
    let files = key_files(dir)?;
    if files.signing.as_deref() == Some(key_id) || files.next.as_deref() == Some(key_id) {
        return Err(CertError::Invalid(format!(
            "{key_id} is the key that signs now or the one staged to; retire only an older key"
        )));
    }
    let ring = files.ring.without(key_id).map_err(key_error)?;
    replace_file(&dir.join(KEY_RING_FILE), &ring.to_text(), false)?;
    Ok(ring)
}

/// Write `text` to `path` through a temporary file renamed over it, then sync the directory.
fn replace_file(path: &Path, text: &str, secret: bool) -> Result<(), CertError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write_file(&tmp, text, secret)?;
    let io = |source| CertError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::rename(&tmp, path).map_err(io)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// Issue one more certificate from the CA in `dir` (`ca.pem`, `ca.key`), written next to it.
pub fn issue_into(
    dir: &Path,
    identity: &Identity,
    hosts: &[String],
    valid_for: Duration,
) -> Result<Vec<PathBuf>, CertError> {
    let ca = Ca::load(dir)?;
    let mut all = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    all.extend(hosts.iter().cloned());
    let pair = ca.issue(identity, &all, valid_for)?;
    let mut written = Vec::new();
    write_pair(dir, &file_stem(identity), &pair, &mut written)?;
    Ok(written)
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn write_pair(
    dir: &Path,
    stem: &str,
    pair: &PemPair,
    written: &mut Vec<PathBuf>,
) -> Result<(), CertError> {
    let cert = dir.join(format!("{stem}.pem"));
    write_file(&cert, &pair.cert, false)?;
    let key = dir.join(format!("{stem}.key"));
    write_file(&key, &pair.key, true)?;
    written.push(cert);
    written.push(key);
    Ok(())
}

/// Write a file; secrets are created readable by the owner only.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    // `mode` applies only to a file it creates: a secret written over an older file is made
    // owner-only too.
    if secret {
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io)?;
    }
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_identity() {
        let ca = Ca::generate("t", DEFAULT_CA_VALIDITY).unwrap();
        for id in [
            Identity::Node(2),
            Identity::Principal(crate::model::Principal::parse("agent/a").unwrap()),
        ] {
            let pair = ca
                .issue(&id, &["127.0.0.1".into()], DEFAULT_LEAF_VALIDITY)
                .unwrap();
            let der = pem_der(&pair.cert);
            assert_eq!(Identity::from_cert_der(&der).unwrap(), id);
        }
    }

    #[test]
    fn a_client_issuer_makes_one_certificate_per_principal_and_refuses_other_names() {
        let issuer = ClientIssuer::new(
            Ca::generate("t", DEFAULT_CA_VALIDITY).unwrap(),
            DEFAULT_LEAF_VALIDITY,
        );
        let a = issuer.material("agent/a").unwrap();
        let agent_a = Identity::Principal(crate::model::Principal::parse("agent/a").unwrap());
        assert_eq!(a.identity, Some(agent_a.clone()));
        assert_eq!(issuer.material("agent/a").unwrap().identity, Some(agent_a));
        assert_eq!(
            issuer.issued.lock().unwrap().len(),
            1,
            "kept, not issued twice"
        );
        let human = issuer.material("human/b").unwrap();
        assert!(matches!(human.identity, Some(Identity::Principal(_))));
        assert!(issuer.material("node/1").is_err());
        assert!(issuer.material("nobody").is_err());
    }

    #[test]
    fn init_writes_every_file_and_refuses_to_overwrite_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(dir.path(), &InitOptions::local("t", 3)).unwrap();
        for name in [
            "ca.pem",
            "ca.key",
            "node3.pem",
            "agent-deployer.key",
            "human-admin.pem",
            "cluster-signing.key",
            "cluster-signing.pub",
        ] {
            assert!(files.contains(&dir.path().join(name)), "{name}");
        }
        let err = init(dir.path(), &InitOptions::local("t", 3)).unwrap_err();
        assert!(err.to_string().contains("already holds a CA"), "{err}");
        // A later certificate from the same CA.
        let bot = Identity::Principal(crate::model::Principal::parse("agent/bot").unwrap());
        issue_into(dir.path(), &bot, &[], DEFAULT_LEAF_VALIDITY).unwrap();
        let pem = std::fs::read_to_string(dir.path().join("agent-bot.pem")).unwrap();
        assert_eq!(Identity::from_cert_der(&pem_der(&pem)).unwrap(), bot);
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use x509_parser::pem::parse_x509_pem;
        parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }
}
