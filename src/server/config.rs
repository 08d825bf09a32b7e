//! The node's configuration: one TOML file, defaults in one place, validation that names the bad key.
//!
//! Relative paths (`data_dir`) are resolved against the directory of the config file, so
//! `cluster/local-3/node1.toml` keeps its data in `cluster/local-3/data/node1` wherever it is started.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::Principal;

/// Errors loading a config file; each names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config {path}: key `{key}`: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

/// A peer's addresses.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// host:port of its Raft transport.
    pub raft: String,
    /// host:port of its client API.
    pub client: String,
}

/// Lease time bounds and the leader's lease clock.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// Smallest TTL a client may ask for.
    #[serde(with = "humantime_serde_compat")]
    pub min_ttl: Duration,
    /// Largest TTL a client may ask for.
    #[serde(with = "humantime_serde_compat")]
    pub max_ttl: Duration,
    /// Longest `wait` a queued acquire may ask for.
    #[serde(with = "humantime_serde_compat")]
    pub max_wait: Duration,
    /// How often the leader looks for leases whose countdown ran out (the expiry batch interval):
    /// a lease expires no later than ttl + this after its last acknowledged keepalive.
    #[serde(with = "humantime_serde_compat")]
    pub expiry_interval: Duration,
    /// How often the leader records the remaining ttl of leases that got no keepalive this term.
    #[serde(with = "humantime_serde_compat")]
    pub ttl_checkpoint_interval: Duration,
    /// Longest a grant certificate is valid for, whatever the lease's ttl: a resource checking
    /// certificates offline stops accepting a revoked lease's within this long. Holders get fresh
    /// ones with their keepalives.
    #[serde(with = "humantime_serde_compat")]
    pub certificate_lifetime: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            max_wait: Duration::from_secs(300),
            expiry_interval: Duration::from_millis(100),
            ttl_checkpoint_interval: Duration::from_millis(250),
            certificate_lifetime: Duration::from_secs(60),
        }
    }
}

impl LeaseConfig {
    /// How long a grant certificate for a lease of `ttl_ms` is valid from when it is signed.
    pub fn certificate_ms(&self, ttl_ms: u64) -> u64 {
        ttl_ms.min(self.certificate_lifetime.as_millis() as u64)
    }
}

/// Raft timing and log compaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    #[serde(with = "humantime_serde_compat")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub election_timeout_min: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub election_timeout_max: Duration,
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_after_entries: u64,
    /// Log entries kept behind the snapshot, so a briefly lagging follower needs no snapshot.
    pub keep_entries_after_snapshot: u64,
    /// For fault injection without network namespaces: dial a peer's Raft address through another
    /// address (`"127.0.0.1:7100" = "127.0.0.1:27100"`, a proxy the chaos suite controls). Peers
    /// still authenticate each other end to end; the server warns at every start when set.
    pub dial_via: std::collections::BTreeMap<String, String>,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(800),
            snapshot_after_entries: 10_000,
            keep_entries_after_snapshot: 1_000,
            dial_via: Default::default(),
        }
    }
}

/// `default_decision` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultDecision {
    Allow,
    #[default]
    Deny,
}

impl DefaultDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultDecision::Allow => "allow",
            DefaultDecision::Deny => "deny",
        }
    }
}

/// `[security]`: the files that make a node secure. Required unless `insecure = true`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// The cluster CA certificate (PEM): peers and clients must present certificates it signed.
    pub ca: PathBuf,
    /// This node's certificate (PEM); its URI SAN must be `spiffe://warrant/node/<node_id>`.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// The cluster's Ed25519 signing key (`k4.secret.…`, the same on every node): signs access
    /// tokens and grant certificates.
    pub signing_key: PathBuf,
    /// The public keys access tokens are accepted under: a key ring (`cluster-signing.pub`, one
    /// `k4.public.…` per line) holding the signing key's public half and older keys not yet retired.
    /// Default: the signing key's public half alone. When rotating the signing key, every node gets
    /// the ring with the new key before any node signs with it (README, "Rotating the signing key").
    #[serde(default)]
    pub verifying_keys: Option<PathBuf>,
}

/// `[limits]`: what one principal may use, so no principal can starve the others. 0 = no limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Sustained requests per second per principal (RPCs and keepalive-stream opens).
    pub requests_per_second: u32,
    /// Requests a principal may send in a burst above its rate.
    pub burst: u32,
    /// Open keepalive streams per principal; also, counted apart, its open sessions.
    pub keepalive_streams: u32,
    /// Acquires per principal waiting at once (queued with `wait`, or waiting for approval).
    pub waiters: u32,
    /// How long the cluster remembers a request id's answer (and an ended lease), at the least: a
    /// client retry inside this age always gets the first answer. Keep it well above the clients'
    /// retry budget (the Rust client and CLI retry one request for at most 15 s by default).
    #[serde(with = "humantime_serde_compat")]
    pub request_retention: Duration,
    /// How many request ids the cluster remembers at once (about 100 bytes each for a grant). When
    /// all are younger than `request_retention`, new requests are refused with RESOURCE_EXHAUSTED
    /// rather than forgetting an answer a client may still retry.
    pub request_records: usize,
    /// Live leases one principal may hold at once (0: no limit).
    pub leases_per_principal: u32,
    /// Requests of one principal that may wait for human approval at once (0: no limit).
    pub pending_per_principal: u32,
    /// Acquires of one principal that may wait in resource queues at once, over all resources
    /// (0: no limit).
    pub queued_per_principal: u32,
    /// Open connections one port accepts at once (0: no limit); more are closed as they arrive.
    pub max_connections: u32,
    /// Open connections one source address may hold on one port (0: no limit).
    pub max_connections_per_address: u32,
    /// New connections one source address may open per second on one port, with a burst of twice
    /// as many (0: no limit). Each is a TLS handshake: a signature to check before anything else.
    pub new_connections_per_second: u32,
    /// A TLS handshake not finished within this long is dropped.
    #[serde(with = "humantime_serde_compat")]
    pub handshake_timeout: Duration,
    /// A client-port connection that carried no authenticated request within this long is closed
    /// (TLS completes there without a client certificate, so idle connections cost nothing else).
    #[serde(with = "humantime_serde_compat")]
    pub unauthenticated_connection_timeout: Duration,
}

impl LimitsConfig {
    /// The per-principal quotas every acquire this node proposes is held to, in apply.
    pub fn quotas(&self) -> crate::model::Quotas {
        crate::model::Quotas {
            leases: self.leases_per_principal,
            pending: self.pending_per_principal,
            queued: self.queued_per_principal,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 3 * 1024 * 1024,
            // A principal keeping its quota of 10,000 leases alive at a third of a 30 s ttl sends
            // 1,000 keepalives a second, with as much again for acquires and releases. At this
            // rate it can make at most 120,000 request records a minute (the retention), an eighth
            // of the table, so one principal cannot fill it for the others.
            requests_per_second: 2_000,
            burst: 4_000,
            keepalive_streams: 1024,
            waiters: 4096,
            request_retention: Duration::from_millis(crate::model::DEFAULT_RECORD_MIN_AGE_MS),
            request_records: crate::model::DEFAULT_MAX_RECORDS,
            // An agent holds a handful of leases; a fleet behind one principal, thousands.
            leases_per_principal: 10_000,
            // A hundred requests waiting for humans is more than any human queue is read; with
            // the cluster's 10,000, one principal fills at most 1%.
            pending_per_principal: 100,
            // A quarter of one resource's queue (1,024), so one principal cannot fill it.
            queued_per_principal: 256,
            // A node serves a few hundred agent runtimes and its peers; an address with a
            // thousand connections open, or opening a hundred a second, is a flood.
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            new_connections_per_second: 100,
            handshake_timeout: Duration::from_secs(5),
            unauthenticated_connection_timeout: Duration::from_secs(10),
        }
    }
}

fn default_approval_timeout() -> Duration {
    Duration::from_secs(3600)
}

/// One node's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id; must be a key of `peers`.
    pub node_id: u64,
    /// A name shared by the cluster's members; recorded in the data directory.
    pub cluster_name: String,
    /// Where this node keeps its RocksDB database (relative to the config file's directory).
    pub data_dir: PathBuf,
    /// Every voting member at bootstrap, by id (including this node).
    #[serde(deserialize_with = "peers_by_id")]
    pub peers: BTreeMap<u64, PeerConfig>,
    /// ip:port for plain HTTP `/metrics` (Prometheus), `/healthz` and `/readyz`; none when absent.
    /// It shows counts and timings, never lease contents: bind it to a private address.
    #[serde(default)]
    pub http_addr: Option<String>,
    /// When true, this node initialises the cluster (with all `peers` as voters) on its first start.
    #[serde(default)]
    pub bootstrap: bool,
    /// Development only: plaintext gRPC, no authentication, and callers name their own principal.
    /// The server warns at every start. Without it, `[security]` is required.
    #[serde(default)]
    pub insecure: bool,
    /// With `insecure = true`: listen on addresses other than loopback anyway. Without it an
    /// insecure node refuses to start on a raft, client or HTTP address anyone on the network can
    /// reach, since whoever reaches it can act as any principal.
    #[serde(default)]
    pub insecure_beyond_loopback: bool,
    #[serde(default)]
    pub security: Option<SecurityConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Principals allowed to revoke while no policy is loaded, and to put policy at any time (the
    /// break-glass path; audited like everything else).
    #[serde(default)]
    pub admins: Vec<String>,
    /// What an acquisition gets while no policy is loaded. Defaults to deny: a production cluster
    /// grants nothing until someone puts a policy. The local examples and `warrant dev` say allow.
    #[serde(default)]
    pub default_decision: DefaultDecision,
    /// A pending human approval not decided within this long expires.
    #[serde(default = "default_approval_timeout", with = "humantime_serde_compat")]
    pub approval_timeout: Duration,
    /// How many lease events (grants, ends, checkpoints) each node keeps in memory for `Watch`. A
    /// watcher resuming from, or falling behind to, an older revision is told to resync.
    #[serde(default = "default_watch_history")]
    pub watch_history: usize,
    #[serde(default)]
    pub lease: LeaseConfig,
    #[serde(default)]
    pub raft: RaftConfig,
    /// Deliberately break this node, for the chaos suite's tests of its own checkers only. Needs
    /// `insecure = true` and a build with chaos modes ([`CHAOS_MODES`]); the server logs an error
    /// at every start. Read it through [`Config::chaos`].
    #[serde(default)]
    pub chaos_break: Option<ChaosBreak>,
}

pub use crate::CHAOS_MODES;

/// `chaos_break` in the config: a known bug to switch on, so a chaos run can show its checkers
/// catching it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChaosBreak {
    /// Answer a busy (or already-done, or retried) acquire from this node's own state without
    /// confirming leadership, on any node: a follower or a deposed leader answers from a stale state.
    UnconfirmedAnswers,
    /// The leader's lease clock counts every lease down four times too fast (as a leader whose
    /// clock runs fast beyond the drift bound would), so it expires leases — and grants them to
    /// others — while their holders still rightly believe they hold them.
    EarlyExpiry,
    /// Grant over a live holder: an acquire that finds the resource held by another principal first
    /// revokes the holder's lease (as an admin would, unasked), so the next grant goes ahead while
    /// the holder still believes it holds the resource until its next keepalive.
    GrantOverHolder,
    /// Every node answers one acquire in four as if applied but never applies it (the state and
    /// the audit log lack the grant): a state machine that acknowledges writes it then loses.
    LoseGrants,
}

fn default_watch_history() -> usize {
    100_000
}

/// A peer address: `ip:port`, or `host:port` with a DNS name (e.g. a Kubernetes pod's stable name).
pub fn check_host_port(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("{addr:?} is not an ip:port or host:port address");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(())
}

/// Where to listen for an advertised address: itself when its host is an IP; every interface at
/// its port when it is a DNS name (which may resolve to this machine only through a service).
pub fn listen_addr(advertised: &str) -> String {
    if advertised.parse::<SocketAddr>().is_ok() {
        return advertised.to_string();
    }
    match advertised.rsplit_once(':') {
        Some((_, port)) => format!("0.0.0.0:{port}"),
        None => advertised.to_string(),
    }
}

impl Config {
    /// The deliberate bug this node runs with, if any: always `None` in a build without chaos
    /// modes, so the branches that test it are compiled out.
    #[inline]
    pub fn chaos(&self) -> Option<ChaosBreak> {
        if CHAOS_MODES {
            self.chaos_break
        } else {
            None
        }
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut config = Self::parse(&text, &shown)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let mut paths = vec![&mut config.data_dir];
        if let Some(s) = &mut config.security {
            paths.extend([&mut s.ca, &mut s.cert, &mut s.key, &mut s.signing_key]);
            paths.extend(s.verifying_keys.as_mut());
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    /// Parse and validate TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_string(),
            key: key.to_string(),
            message,
        };
        if self.cluster_name.trim().is_empty() {
            return Err(bad("cluster_name", "must not be empty".into()));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad("data_dir", "must not be empty".into()));
        }
        if self.peers.is_empty() {
            return Err(bad("peers", "list every member, e.g. [peers.1] raft = \"127.0.0.1:7101\" client = \"127.0.0.1:7001\"".into()));
        }
        if !self.peers.contains_key(&self.node_id) {
            return Err(bad(
                "node_id",
                format!(
                    "{} is not one of the peers {:?}",
                    self.node_id,
                    self.peers.keys().collect::<Vec<_>>()
                ),
            ));
        }
        for (id, peer) in &self.peers {
            for (field, addr) in [("raft", &peer.raft), ("client", &peer.client)] {
                check_host_port(addr).map_err(|m| bad(&format!("peers.{id}.{field}"), m))?;
            }
        }
        if let Some(addr) = &self.http_addr {
            if addr.parse::<SocketAddr>().is_err() {
                return Err(bad(
                    "http_addr",
                    format!("{addr:?} is not an ip:port address"),
                ));
            }
        }
        if self.watch_history == 0 || self.watch_history > 10_000_000 {
            return Err(bad(
                "watch_history",
                format!("{} is outside 1..=10000000", self.watch_history),
            ));
        }
        for (i, admin) in self.admins.iter().enumerate() {
            Principal::parse(admin).map_err(|e| bad(&format!("admins[{i}]"), e.to_string()))?;
        }
        match (&self.security, self.insecure) {
            (None, false) => {
                return Err(bad(
                    "security",
                    "a secure node needs [security] with ca, cert, key and signing_key (make them with \
                     `warrant certs init --out DIR`), or insecure = true for development only"
                        .into(),
                ))
            }
            (Some(_), true) => {
                return Err(bad(
                    "insecure",
                    "insecure = true and a [security] table both given; remove one".into(),
                ))
            }
            _ => {}
        }
        if self.insecure && !self.insecure_beyond_loopback {
            self.insecure_listens_on_loopback()
                .map_err(|m| bad("insecure", m))?;
        }
        for (from, to) in &self.raft.dial_via {
            for a in [from, to] {
                if a.parse::<std::net::SocketAddr>().is_err() {
                    return Err(bad(
                        "raft.dial_via",
                        format!("{a:?} is not an IP:port address"),
                    ));
                }
            }
        }
        if self.chaos_break.is_some() && !CHAOS_MODES {
            return Err(bad(
                "chaos_break",
                "this build has no chaos modes (a release build; build with --features chaos for \
                 the chaos suite)"
                    .into(),
            ));
        }
        if self.chaos_break.is_some() && !self.insecure {
            return Err(bad(
                "chaos_break",
                "a deliberately broken node is for the chaos suite's tests only and needs \
                 insecure = true"
                    .into(),
            ));
        }
        if self.lease.certificate_lifetime < Duration::from_secs(1)
            || self.lease.certificate_lifetime > Duration::from_secs(24 * 3600)
        {
            return Err(bad(
                "lease.certificate_lifetime",
                "must be between 1s and 24h".into(),
            ));
        }
        if self.limits.unauthenticated_connection_timeout < Duration::from_millis(100)
            || self.limits.unauthenticated_connection_timeout > Duration::from_secs(3600)
        {
            return Err(bad(
                "limits.unauthenticated_connection_timeout",
                "must be between 100ms and 1h".into(),
            ));
        }
        if self.limits.handshake_timeout < Duration::from_millis(100)
            || self.limits.handshake_timeout > Duration::from_secs(60)
        {
            return Err(bad(
                "limits.handshake_timeout",
                "must be between 100ms and 60s".into(),
            ));
        }
        if self.limits.request_retention < Duration::from_secs(30)
            || self.limits.request_retention > Duration::from_secs(24 * 3600)
        {
            return Err(bad(
                "limits.request_retention",
                "must be between 30s (clients retry one request for up to 15s) and 24h".into(),
            ));
        }
        if self.limits.request_records < 1000 {
            return Err(bad(
                "limits.request_records",
                "must be at least 1000".into(),
            ));
        }
        if self.limits.max_request_bytes < 64 * 1024 {
            return Err(bad(
                "limits.max_request_bytes",
                "must be at least 65536 (a policy set and its entities must fit)".into(),
            ));
        }
        if self.approval_timeout < Duration::from_secs(1) {
            return Err(bad("approval_timeout", "must be at least 1s".into()));
        }
        let l = &self.lease;
        if l.min_ttl.is_zero() {
            return Err(bad("lease.min_ttl", "must be greater than zero".into()));
        }
        if l.max_ttl < l.min_ttl {
            return Err(bad(
                "lease.max_ttl",
                "must be at least lease.min_ttl".into(),
            ));
        }
        if l.expiry_interval.is_zero() || l.ttl_checkpoint_interval.is_zero() {
            return Err(bad(
                "lease.expiry_interval",
                "intervals must be greater than zero".into(),
            ));
        }
        let r = &self.raft;
        if r.heartbeat_interval.is_zero() || r.election_timeout_min <= r.heartbeat_interval {
            return Err(bad(
                "raft.election_timeout_min",
                "must be greater than raft.heartbeat_interval".into(),
            ));
        }
        if r.election_timeout_max <= r.election_timeout_min {
            return Err(bad(
                "raft.election_timeout_max",
                "must be greater than raft.election_timeout_min".into(),
            ));
        }
        if r.snapshot_after_entries == 0 {
            return Err(bad(
                "raft.snapshot_after_entries",
                "must be greater than zero".into(),
            ));
        }
        Ok(())
    }

    /// This node's own addresses.
    /// An insecure node's listen addresses are all loopback ones.
    fn insecure_listens_on_loopback(&self) -> Result<(), String> {
        let Some(me) = self.peers.get(&self.node_id) else {
            return Ok(()); // reported by the peers check
        };
        let addresses = [
            ("raft", Some(&me.raft)),
            ("client", Some(&me.client)),
            ("http_addr", self.http_addr.as_ref()),
        ];
        for (what, advertised) in addresses {
            let Some(advertised) = advertised else {
                continue;
            };
            let listen = listen_addr(advertised);
            let loopback = listen
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback());
            if !loopback {
                return Err(format!(
                    "an insecure node listens on loopback only, and its {what} address \
                     {advertised} would listen on {listen}, where anyone who reaches it can act as \
                     any principal: use [security] (warrant certs init), or add \
                     insecure_beyond_loopback = true to say you mean it"
                ));
            }
        }
        Ok(())
    }

    pub fn me(&self) -> &PeerConfig {
        &self.peers[&self.node_id]
    }

    /// Admins as parsed principals (validated at load).
    pub fn admin_principals(&self) -> Vec<Principal> {
        self.admins
            .iter()
            .filter_map(|a| Principal::parse(a).ok())
            .collect()
    }
}

/// TOML table keys are strings: `[peers.1]` has the key "1", parsed here as a node id.
fn peers_by_id<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<u64, PeerConfig>, D::Error> {
    let raw = BTreeMap::<String, PeerConfig>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.parse::<u64>().map(|id| (id, v)).map_err(|_| {
                serde::de::Error::custom(format!(
                    "peers.{k}: a peer's key must be its numeric node id"
                ))
            })
        })
        .collect()
}

/// `Duration` fields written as humantime strings ("500ms", "1h").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("{s:?}: {e} (write e.g. \"500ms\" or \"10s\")"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node_id = 1
cluster_name = "t"
data_dir = "data/node1"
insecure = true
admins = ["human/admin"]
[peers.1]
raft = "127.0.0.1:7101"
client = "127.0.0.1:7001"
[lease]
min_ttl = "2s"
"#;

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(GOOD, "x.toml").unwrap();
        assert_eq!(c.lease.min_ttl, Duration::from_secs(2));
        assert_eq!(c.lease.max_ttl, Duration::from_secs(3600));
        assert_eq!(c.me().client, "127.0.0.1:7001");
    }

    #[test]
    fn peer_addresses_are_ips_or_dns_names_and_names_listen_everywhere() {
        for good in [
            "127.0.0.1:7101",
            "[::1]:7101",
            "warrant-0.warrant.prod.svc:7100",
            "db1:1",
        ] {
            assert!(check_host_port(good).is_ok(), "{good}");
        }
        for bad in [
            "nowhere",
            "host:",
            ":7100",
            "host:99999",
            "bad_name:1",
            "-a.b:1",
            "a..b:1",
        ] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
        assert_eq!(listen_addr("127.0.0.1:7101"), "127.0.0.1:7101");
        assert_eq!(listen_addr("warrant-0.warrant:7100"), "0.0.0.0:7100");
    }

    #[test]
    fn the_deployment_examples_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster");
        for n in 1..=3u64 {
            let path = root.join(format!("systemd/node{n}.toml"));
            let text = std::fs::read_to_string(&path).unwrap();
            let c = Config::parse(&text, &path.display().to_string()).unwrap();
            assert_eq!((c.node_id, c.bootstrap, c.peers.len()), (n, n == 1, 3));
            assert_eq!(c.default_decision, DefaultDecision::Deny);
        }
        // The StatefulSet's command: node_id (and bootstrap on node 1), common.toml, cert and key.
        let yaml = std::fs::read_to_string(root.join("kubernetes/warrant.yaml")).unwrap();
        let start = yaml.find("  common.toml: |\n").unwrap() + "  common.toml: |\n".len();
        let common: String = yaml[start..]
            .lines()
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        for n in 1..=3u64 {
            let bootstrap = if n == 1 { "bootstrap = true\n" } else { "" };
            let text = format!(
                "node_id = {n}\n{bootstrap}{common}cert = \"/etc/warrant/tls/node{n}.pem\"\nkey = \"/etc/warrant/tls/node{n}.key\"\n"
            );
            let c = Config::parse(&text, "kubernetes").unwrap();
            assert_eq!(c.me().raft, format!("warrant-{}.warrant:7100", n - 1));
            assert_eq!(listen_addr(&c.me().client), "0.0.0.0:7000");
            assert!(c.security.is_some() && c.http_addr.is_some());
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse(&format!("{GOOD}\nbogus = 1\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn missing_key_is_named() {
        let err = Config::parse(&GOOD.replace("node_id = 1", ""), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("node_id"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (from, to, key) in [
            ("node_id = 1", "node_id = 9", "node_id"),
            (
                "raft = \"127.0.0.1:7101\"",
                "raft = \"nowhere\"",
                "peers.1.raft",
            ),
            ("min_ttl = \"2s\"", "min_ttl = \"soon\"", "min_ttl"),
            ("min_ttl = \"2s\"", "min_ttl = \"2h\"", "lease.max_ttl"),
            (
                "admins = [\"human/admin\"]",
                "admins = [\"root\"]",
                "admins[0]",
            ),
        ] {
            let err = Config::parse(&GOOD.replace(from, to), "x.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn raft_dial_via_maps_peer_addresses_and_refuses_non_addresses() {
        let c = Config::parse(
            &format!("{GOOD}[raft.dial_via]\n\"127.0.0.1:7102\" = \"127.0.0.1:27102\"\n"),
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.raft.dial_via["127.0.0.1:7102"], "127.0.0.1:27102");
        assert!(Config::parse(GOOD, "x.toml")
            .unwrap()
            .raft
            .dial_via
            .is_empty());
        let err = Config::parse(
            &format!("{GOOD}[raft.dial_via]\n\"127.0.0.1:7102\" = \"proxy\"\n"),
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("raft.dial_via") && err.contains("proxy"),
            "{err}"
        );
    }

    #[test]
    fn an_insecure_node_listens_on_loopback_unless_told_otherwise_in_so_many_words() {
        let c = Config::parse(GOOD, "x.toml").unwrap();
        assert!(c.insecure && !c.insecure_beyond_loopback);
        for (from, to, what) in [
            (
                "127.0.0.1:7101",
                "10.0.0.1:7101",
                "raft address 10.0.0.1:7101",
            ),
            (
                "127.0.0.1:7001",
                "0.0.0.0:7001",
                "client address 0.0.0.0:7001",
            ),
            (
                "127.0.0.1:7001",
                "warrant-0:7001",
                "would listen on 0.0.0.0:7001",
            ),
        ] {
            let open = GOOD.replacen(from, to, 1);
            let err = Config::parse(&open, "x.toml").unwrap_err().to_string();
            assert!(
                err.contains("key `insecure`") && err.contains(what),
                "{err}"
            );
            assert!(err.contains("insecure_beyond_loopback = true"), "{err}");
            let meant = open.replace(
                "insecure = true\n",
                "insecure = true\ninsecure_beyond_loopback = true\n",
            );
            assert!(
                Config::parse(&meant, "x.toml")
                    .unwrap()
                    .insecure_beyond_loopback
            );
        }
        let http = format!("http_addr = \"192.168.1.5:9000\"\n{GOOD}");
        let err = Config::parse(&http, "x.toml").unwrap_err().to_string();
        assert!(err.contains("http_addr address 192.168.1.5:9000"), "{err}");
    }

    #[test]
    fn a_deliberately_broken_node_must_be_insecure() {
        let broken = GOOD.replace(
            "insecure = true\n",
            "insecure = true\nchaos_break = \"unconfirmed-answers\"\n",
        );
        let c = Config::parse(&broken, "x.toml").unwrap();
        assert_eq!(c.chaos_break, Some(ChaosBreak::UnconfirmedAnswers));
        let c = Config::parse(
            &broken.replace("unconfirmed-answers", "early-expiry"),
            "x.toml",
        );
        assert_eq!(c.unwrap().chaos_break, Some(ChaosBreak::EarlyExpiry));
        let c = Config::parse(
            &broken.replace("unconfirmed-answers", "grant-over-holder"),
            "x.toml",
        );
        assert_eq!(c.unwrap().chaos_break, Some(ChaosBreak::GrantOverHolder));
        let c = Config::parse(
            &broken.replace("unconfirmed-answers", "lose-grants"),
            "x.toml",
        );
        assert_eq!(c.unwrap().chaos_break, Some(ChaosBreak::LoseGrants));
        assert_eq!(Config::parse(GOOD, "x.toml").unwrap().chaos_break, None);
        let secure = format!(
            "{}\n[security]\nca = \"c\"\ncert = \"n\"\nkey = \"k\"\nsigning_key = \"s\"\n",
            broken.replace("insecure = true\n", "")
        );
        let err = Config::parse(&secure, "x.toml").unwrap_err().to_string();
        assert!(
            err.contains("key `chaos_break`") && err.contains("insecure = true"),
            "{err}"
        );
        let unknown = broken.replace("unconfirmed-answers", "everything");
        assert!(Config::parse(&unknown, "x.toml").is_err());
    }

    #[test]
    fn a_secure_node_needs_its_security_files_and_the_shipped_configs_name_them() {
        let secure = GOOD.replace("insecure = true\n", "");
        let err = Config::parse(&secure, "x.toml").unwrap_err().to_string();
        assert!(
            err.contains("security") && err.contains("certs init"),
            "{err}"
        );
        let both = format!(
            "{GOOD}\n[security]\nca = \"c\"\ncert = \"n\"\nkey = \"k\"\nsigning_key = \"s\"\n"
        );
        let err = Config::parse(&both, "x.toml").unwrap_err().to_string();
        assert!(err.contains("insecure"), "{err}");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster");
        for (cluster, nodes) in [("local-3", 3), ("local-5", 5)] {
            for n in 1..=nodes {
                let path = root.join(cluster).join(format!("node{n}.toml"));
                let c = Config::load(&path).unwrap();
                assert!(!c.insecure, "{}", path.display());
                let s = c.security.expect("a [security] table");
                assert_eq!(
                    s.cert,
                    root.join(cluster).join(format!("../certs/node{n}.pem"))
                );
                assert_eq!(s.ca, root.join(cluster).join("../certs/ca.pem"));
            }
        }
    }
}
