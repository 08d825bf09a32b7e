//! The one test harness: real `warrant server` processes on 127.0.0.1 (free ports, temp dirs),
//! killed with SIGKILL and restarted like a user would; and the `warrant` CLI run as a process.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use warrant::client::{AcquireOptions, Acquired, Client, ClientConfig, Lease};

pub const BIN: &str = env!("CARGO_BIN_EXE_warrant");

/// Knobs a test may turn.
#[derive(Clone)]
pub struct Opts {
    pub nodes: usize,
    pub snapshot_after_entries: u64,
    pub keep_entries_after_snapshot: u64,
    pub min_ttl: &'static str,
    pub max_ttl: &'static str,
    /// mTLS with certificates made by `warrant::security::certs` (for [`SECURE_PRINCIPALS`]).
    pub secure: bool,
    /// More TOML tables for every node's config (e.g. `[limits]`).
    pub extra: String,
    /// More top-level keys for every node's config (e.g. `watch_history = 20`).
    pub top: String,
    /// More keys for every node's `[lease]` table (e.g. `certificate_lifetime = "2s"`).
    pub lease: String,
    /// Seed every node from this backup (`warrant snapshot restore`) before starting it.
    pub restore_from: Option<PathBuf>,
    /// Nodes configured (ports, certificates, `bootstrap = false`) but not started: ids
    /// `nodes + 1 ..`, for `warrant cluster add-node`.
    pub spare: usize,
    /// With `secure`: copy this certificate directory (CA, node and principal certificates, the
    /// signing key) instead of making new ones, as a cluster restored onto the same hosts would.
    pub certs_from: Option<PathBuf>,
}

/// The principals a secure test cluster has client certificates for.
pub const SECURE_PRINCIPALS: &[&str] = &[
    "agent/deployer",
    "agent/other",
    "agent/flood",
    "agent/calm",
    "human/alice",
    "human/bob",
    "human/admin",
    "human/test",
];

impl Default for Opts {
    fn default() -> Self {
        Self {
            nodes: 3,
            snapshot_after_entries: 10_000,
            keep_entries_after_snapshot: 1_000,
            min_ttl: "500ms",
            max_ttl: "1h",
            secure: false,
            extra: String::new(),
            top: String::new(),
            lease: String::new(),
            restore_from: None,
            spare: 0,
            certs_from: None,
        }
    }
}

pub struct Node {
    pub id: u64,
    pub client_addr: String,
    pub raft_addr: String,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http_addr: String,
    /// Clients list it among the endpoints (false for a spare until the test adds it).
    pub joined: bool,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// The certificates directory of a secure cluster.
    pub certs: Option<PathBuf>,
}

/// The state letter of a process or thread from its `/proc/.../stat` file (None if it is gone).
pub fn proc_state(stat: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(stat).ok()?;
    text.rsplit(')')
        .next()?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// Write configs and start every node.
    pub fn start(opts: Opts) -> Cluster {
        // Free ports are found by binding and releasing them, so a test running in parallel can take
        // one first; then a node cannot listen and exits. Start afresh on new ports when that happens.
        for _attempt in 0..3 {
            let mut cluster = Self::start_once(&opts);
            if cluster.all_listening() {
                cluster.all_know_the_leader();
                return cluster;
            }
            for n in &mut cluster.nodes {
                if let Some(mut c) = n.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        panic!("could not start a cluster on free ports in 3 attempts");
    }

    /// Wait (bounded) until every started node names a leader: the cluster is formed (a node on
    /// a new data directory knows none until it is admitted). Tests that need more wait for it.
    fn all_know_the_leader(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let ids: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect();
        // Its own thread and runtime: the caller may be inside a test's runtime.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the start-up check")
                    .block_on(self.wait_all_know_the_leader(&ids, deadline))
            });
        });
    }

    async fn wait_all_know_the_leader(&self, ids: &[u64], deadline: Instant) {
        while Instant::now() < deadline {
            let mut known = 0;
            for id in ids {
                if let Ok(s) = self.node_client(*id, "human/test").status().await {
                    if s.leader != 0 {
                        known += 1;
                    }
                }
            }
            if known == ids.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until every node logged that it listens (true), or one exited first (false).
    fn all_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut up = 0;
            let expected = self.nodes.iter().filter(|n| n.child.is_some()).count();
            for n in self.nodes.iter_mut().filter(|n| n.child.is_some()) {
                if std::fs::read_to_string(&n.log)
                    .unwrap_or_default()
                    .contains("node started")
                {
                    up += 1;
                } else if let Some(c) = n.child.as_mut() {
                    if c.try_wait().ok().flatten().is_some() {
                        return false;
                    }
                }
            }
            if up == expected {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "nodes did not start within 20s; logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_once(opts: &Opts) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..opts.nodes + opts.spare)
            .map(|_| (free_port(), free_port()))
            .collect();
        let mut peers = String::new();
        for (i, (raft, client)) in ports.iter().enumerate().take(opts.nodes) {
            peers.push_str(&format!(
                "[peers.{}]\nraft = \"127.0.0.1:{raft}\"\nclient = \"127.0.0.1:{client}\"\n",
                i + 1
            ));
        }
        let certs = opts.secure.then(|| {
            let certs = dir.path().join("certs");
            if let Some(from) = &opts.certs_from {
                std::fs::create_dir_all(&certs).expect("make the certificate directory");
                for file in std::fs::read_dir(from).expect("read the certificate directory") {
                    let file = file.expect("list the certificate directory").path();
                    std::fs::copy(&file, certs.join(file.file_name().unwrap()))
                        .expect("copy a certificate file");
                }
                return certs;
            }
            let mut options = warrant::security::certs::InitOptions::local(
                "test",
                (opts.nodes + opts.spare) as u64,
            );
            options.principals = SECURE_PRINCIPALS.iter().map(|s| s.to_string()).collect();
            warrant::security::certs::init(&certs, &options).expect("make certificates");
            certs
        });
        let mut nodes = Vec::new();
        for (i, (raft, client)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let spare = i >= opts.nodes;
            // A spare lists the bootstrap members and itself.
            let peers = if spare {
                format!("{peers}[peers.{id}]\nraft = \"127.0.0.1:{raft}\"\nclient = \"127.0.0.1:{client}\"\n")
            } else {
                peers.clone()
            };
            let (insecure, security) = if opts.secure {
                (
                    "",
                    format!(
                        "[security]\nca = \"certs/ca.pem\"\ncert = \"certs/node{id}.pem\"\nkey = \"certs/node{id}.key\"\n\
                         signing_key = \"certs/cluster-signing.key\"\n"
                    ),
                )
            } else {
                ("insecure = true\n", String::new())
            };
            let config = dir.path().join(format!("node{id}.toml"));
            let http_addr = format!("127.0.0.1:{}", free_port());
            let text = format!(
                "node_id = {id}\ncluster_name = \"test\"\ndata_dir = \"data{id}\"\nhttp_addr = \"{http_addr}\"\nbootstrap = {}\n{insecure}default_decision = \"allow\"\n\
                 admins = [\"human/admin\"]\n{}\n[lease]\nmin_ttl = \"{}\"\nmax_ttl = \"{}\"\nexpiry_interval = \"50ms\"\n\
                 ttl_checkpoint_interval = \"250ms\"\n{}\n[raft]\nheartbeat_interval = \"100ms\"\nelection_timeout_min = \"400ms\"\n\
                 election_timeout_max = \"800ms\"\nsnapshot_after_entries = {}\nkeep_entries_after_snapshot = {}\n{peers}",
                id == 1,
                opts.top,
                opts.min_ttl,
                opts.max_ttl,
                opts.lease,
                opts.snapshot_after_entries,
                opts.keep_entries_after_snapshot
            );
            let text = format!("{text}\n{security}\n{}\n", opts.extra);
            std::fs::write(&config, text).expect("write config");
            let log = dir.path().join(format!("node{id}.log"));
            nodes.push(Node {
                id,
                client_addr: format!("127.0.0.1:{client}"),
                raft_addr: format!("127.0.0.1:{raft}"),
                http_addr,
                joined: !spare,
                config,
                log,
                child: None,
            });
        }
        let mut cluster = Cluster { dir, nodes, certs };
        if let Some(backup) = &opts.restore_from {
            for node in cluster.nodes.iter().filter(|n| n.joined) {
                let out = Command::new(BIN)
                    .args(["snapshot", "restore"])
                    .arg(backup)
                    .arg("--config")
                    .arg(&node.config)
                    .output()
                    .expect("run warrant snapshot restore");
                assert!(
                    out.status.success(),
                    "restore node {}: {}",
                    node.id,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        for id in 1..=opts.nodes as u64 {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// Start (or restart) a node process; its stderr goes to its log file.
    pub fn start_node(&mut self, id: u64) {
        self.start_node_env(id, &[]);
    }

    /// [`Cluster::start_node`] with more environment variables (the debug build's test pauses).
    pub fn start_node_env(&mut self, id: u64, env: &[(&str, &str)]) {
        let node = &mut self.nodes[(id - 1) as usize];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open log");
        let child = Command::new(BIN)
            .args(["server", "--config"])
            .arg(&node.config)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn warrant server");
        node.child = Some(child);
    }

    /// Start a spare node and wait until it listens. Its ports were found free when the cluster
    /// started, so a test running in parallel may have taken one since: then it moves to new ports.
    pub fn start_spare(&mut self, id: u64) {
        for _attempt in 0..3 {
            self.start_node(id);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if self.log_of(id).contains("node started") {
                    return;
                }
                let node = &mut self.nodes[(id - 1) as usize];
                if let Some(status) = node
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    node.child = None;
                    assert!(
                        self.log_of(id).contains("cannot listen"),
                        "spare {id} exited ({status}): {}",
                        self.log_of(id)
                    );
                    let node = &mut self.nodes[(id - 1) as usize];
                    let text = std::fs::read_to_string(&node.config).expect("read config");
                    let (raft, client, http) = (
                        format!("127.0.0.1:{}", free_port()),
                        format!("127.0.0.1:{}", free_port()),
                        format!("127.0.0.1:{}", free_port()),
                    );
                    let text = text
                        .replace(&node.raft_addr, &raft)
                        .replace(&node.client_addr, &client)
                        .replace(&node.http_addr, &http);
                    std::fs::write(&node.config, text).expect("rewrite config");
                    (node.raft_addr, node.client_addr, node.http_addr) = (raft, client, http);
                    std::fs::write(&node.log, "").expect("truncate log");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "spare {id} did not start within 30s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("spare {id} could not listen on free ports in 3 attempts");
    }

    /// kill -9 a node.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[(id - 1) as usize].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP a node: it keeps its sockets but answers nothing (a GC pause, a frozen VM). Returns
    /// once the kernel reports every thread of the process stopped.
    pub fn pause(&self, id: u64) {
        self.signal(id, nix::sys::signal::Signal::SIGSTOP);
        let pid = self.nodes[(id - 1) as usize]
            .child
            .as_ref()
            .expect("node is running")
            .id();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|tasks| {
                    tasks.flatten().all(|t| {
                        matches!(
                            proc_state(&t.path().join("stat")).as_deref(),
                            Some("T" | "t")
                        )
                    })
                })
                .unwrap_or(false);
            if stopped {
                return;
            }
            assert!(Instant::now() < deadline, "node {id} did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT a paused node.
    pub fn resume(&self, id: u64) {
        self.signal(id, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, id: u64, sig: nix::sys::signal::Signal) {
        let child = self.nodes[(id - 1) as usize]
            .child
            .as_ref()
            .expect("node is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)
            .expect("signal node");
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.joined)
            .map(|n| n.client_addr.clone())
            .collect()
    }

    /// SIGTERM a node (a graceful stop) and wait until it exits; returns its exit status.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        self.signal(id, nix::sys::signal::Signal::SIGTERM);
        let mut child = self.nodes[(id - 1) as usize]
            .child
            .take()
            .expect("node is running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait for node") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node {id} did not exit within 20s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until node `id` logged `line` (it started, say), or fail after `timeout`.
    pub fn wait_log(&self, id: u64, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_of(id).contains(line) {
            assert!(
                Instant::now() < deadline,
                "node {id} did not log {line:?} within {timeout:?}; logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn endpoints_csv(&self) -> String {
        self.endpoints().join(",")
    }

    pub fn client(&self, principal: &str) -> Client {
        Client::new(self.client_config(self.endpoints(), principal)).unwrap()
    }

    /// A client that talks to one node only.
    pub fn node_client(&self, id: u64, principal: &str) -> Client {
        Client::new(self.client_config(vec![self.node(id).client_addr.clone()], principal)).unwrap()
    }

    /// A client config as `principal`: on a secure cluster, with its certificate.
    pub fn client_config(&self, endpoints: Vec<String>, principal: &str) -> ClientConfig {
        let mut config = ClientConfig::new(endpoints, principal).unwrap();
        if let Some(certs) = &self.certs {
            let stem = principal.replace('/', "-");
            config.tls = Some(
                warrant::client::TlsFiles {
                    ca: certs.join("ca.pem"),
                    cert_and_key: Some((
                        certs.join(format!("{stem}.pem")),
                        certs.join(format!("{stem}.key")),
                    )),
                }
                .load()
                .expect("load test certificates"),
            );
        }
        config
    }

    /// Wait until node `id` has applied as far as the leader had when this was called.
    pub async fn wait_caught_up(&self, id: u64, timeout: Duration) {
        let leader = self.wait_leader(timeout).await;
        let target = self
            .node_client(leader, "human/test")
            .status()
            .await
            .expect("the leader's status")
            .last_applied;
        let node = self.node_client(id, "human/test");
        eventually(timeout, &format!("node {id} to catch up"), || async {
            (node.status().await.ok()?.last_applied >= target).then_some(())
        })
        .await;
    }

    /// Wait until some live node reports a leader that the others agree on; returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                if let Ok(s) = self.node_client(n.id, "human/test").status().await {
                    let alive = self
                        .nodes
                        .iter()
                        .any(|m| m.id == s.leader && m.child.is_some());
                    if s.leader != 0 && alive {
                        // Confirm the leader itself agrees.
                        if let Ok(ls) = self.node_client(s.leader, "human/test").status().await {
                            if ls.leader == s.leader {
                                return s.leader;
                            }
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {timeout:?}; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Run the CLI against this cluster.
    pub fn cli(&self, principal: &str, args: &[&str]) -> Output {
        self.cli_at(&self.endpoints_csv(), principal, args)
    }

    /// Run the CLI against the given endpoints (comma-separated) of this cluster.
    pub fn cli_at(&self, endpoints: &str, principal: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("PATH", path_with_warrant())
            .env("WARRANT_ENDPOINTS", endpoints)
            .env("WARRANT_PRINCIPAL", principal)
            .envs(self.certs.iter().flat_map(|c| {
                let stem = principal.replace('/', "-");
                [
                    ("WARRANT_CA", c.join("ca.pem")),
                    ("WARRANT_CERT", c.join(format!("{stem}.pem"))),
                    ("WARRANT_KEY", c.join(format!("{stem}.key"))),
                ]
            }))
            .output()
            .expect("run warrant")
    }

    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test shows the end of every node's log (its directory goes with the cluster).
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("==== node {} log (last {} lines) ====", n.id, tail.len());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        if std::env::var_os("WARRANT_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("kept the cluster's directory: {}", dir.keep().display());
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // A paused node must be resumed to die promptly.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGCONT,
                );
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A plain HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Poll `check` until it returns Some, at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PATH with the built `warrant` first, as an installed binary would be (children of `warrant run`
/// call it).
pub fn path_with_warrant() -> String {
    let bin_dir = std::path::Path::new(BIN)
        .parent()
        .expect("binary has a directory");
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not json ({e}): {} / {}", stdout(o), stderr(o)))
}

/// A TCP relay on 127.0.0.1 in front of `target` that a test can cut (live connections close, new
/// ones are refused) and heal: a one-way partition for whoever dials the relay's address.
pub struct Relay {
    pub addr: String,
    open: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().unwrap().to_string();
        let (open, rx) = tokio::sync::watch::channel(true);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !*rx.borrow() {
                    continue;
                }
                let mut rx = rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Relay { addr, open, accept }
    }

    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Samples of a Prometheus text exposition, after checking every line's syntax.
pub fn prometheus_samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let words: Vec<&str> = rest.split_whitespace().collect();
            assert!(
                matches!(words.first(), Some(&"HELP" | &"TYPE")),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample is `series value`");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        assert!(
            !series.contains('{') || series.ends_with('}'),
            "bad labels in {line:?}"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

pub fn metrics_of(cluster: &Cluster, id: u64) -> std::collections::BTreeMap<String, f64> {
    let (code, body) = http_get(&cluster.node(id).http_addr, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    prometheus_samples(&body)
}

/// Acquire with `opts` and expect a grant.
pub async fn granted(client: &Client, opts: AcquireOptions) -> Lease {
    match client.acquire(opts).await.expect("acquire") {
        Acquired::Granted(l) => l,
        other => panic!("expected a grant, got {other:?}"),
    }
}
