//! The cluster under test: real `warrant server` processes, either each in its own network namespace
//! joined by a veth pair to the bridge `wjbr0` (10.77.0.0/24; node i listens on 10.77.0.(10+i)), or
//! on 127.0.0.1 ports (local mode, the fallback).
//!
//! Invariant: everything this module creates — processes, namespaces `wj-n*`, veths `wj-v*`, the
//! bridge, nft tables (they live inside the namespaces) — is registered in one process-wide registry
//! and removed by [`cleanup`], which the harness calls on every exit path: normal end, failed check,
//! Ctrl-C / SIGTERM and panic. [`cleanup_leftovers`] removes what a previous, killed run left behind.
//! Processes are only ever signalled by the PIDs this harness started (or found inside its own
//! namespaces).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use warrant::client::Client;

use crate::security::Security;

pub const BRIDGE: &str = "wjbr0";
const BRIDGE_ADDR: &str = "10.77.0.1/24";
const MAX_NODES: u64 = 9;
/// The nft table a partition installs inside a namespace.
const PART_TABLE: &str = "wjpart";
/// The nft table the loss nemesis installs inside a namespace.
const LOSS_TABLE: &str = "wjloss";

/// Where the nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Netns,
    Local,
    /// Local addresses, and the nodes' Raft traffic through proxies in the harness, which cut
    /// partitions ([`crate::proxy`]): for where namespaces are not available.
    Proxy,
}

/// What the process-wide registry holds for cleanup.
struct Registry {
    children: BTreeMap<u64, Child>,
    /// Client processes (fenced-register clients in their own OS process), by process number.
    workers: BTreeMap<u64, Child>,
    netns: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    children: BTreeMap::new(),
    workers: BTreeMap::new(),
    netns: false,
});
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// PIDs of running nodes, so a run that was itself killed (SIGKILL) can be cleaned up by the next one.
fn pidfile() -> PathBuf {
    std::env::temp_dir().join("warrant-jepsen.pids")
}

fn write_pidfile(r: &Registry) {
    let pids: Vec<String> = r
        .children
        .values()
        .chain(r.workers.values())
        .map(|c| c.id().to_string())
        .collect();
    let _ = std::fs::write(pidfile(), pids.join("\n"));
}

/// Is `pid` a process this harness started (a warrant server on a `wj-node*.toml` config, or a
/// client worker)?
fn is_our_node(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let c = String::from_utf8_lossy(&c);
            (c.contains("server") && c.contains("wj-node"))
                || c.contains(crate::procs::WORKER_COMMAND)
        })
        .unwrap_or(false)
}

/// Hold a client worker for signals and cleanup. False (and the worker is killed) once cleanup has
/// begun.
pub fn register_worker(p: u64, mut child: Child) -> bool {
    let mut r = registry();
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        let _ = child.kill();
        let _ = child.wait();
        return false;
    }
    r.workers.insert(p, child);
    write_pidfile(&r);
    true
}

/// Client workers still registered (not yet reaped).
pub fn worker_ids() -> Vec<u64> {
    registry().workers.keys().copied().collect()
}

/// Signal a client worker; false if it is not registered.
pub fn signal_worker(p: u64, sig: Signal) -> bool {
    let r = registry();
    match r.workers.get(&p) {
        Some(c) => kill(Pid::from_raw(c.id() as i32), sig).is_ok(),
        None => false,
    }
}

/// Take a client worker out of the registry and wait for it (after its stdout closed); None if
/// cleanup took it already. `force` kills it first (SIGCONT, SIGKILL).
pub fn reap_worker(p: u64, force: bool) -> Option<std::process::ExitStatus> {
    let mut child = {
        let mut r = registry();
        let c = r.workers.remove(&p);
        write_pidfile(&r);
        c?
    };
    if force {
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGKILL);
    }
    child.wait().ok()
}

fn ns_name(id: u64) -> String {
    format!("wj-n{id}")
}

fn ip_of(id: u64) -> String {
    format!("10.77.0.{}", 10 + id)
}

/// Run a short administrative command (ip, nft); fail with its stderr.
fn run(cmd: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Kill every process this harness started and remove every network object it created. Safe to call
/// many times and from a signal or panic path; after it, no node is (re)started.
pub fn cleanup() {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    let (children, workers, netns) = {
        let mut r = registry();
        (
            std::mem::take(&mut r.children),
            std::mem::take(&mut r.workers),
            std::mem::take(&mut r.netns),
        )
    };
    for (_, mut child) in children.into_iter().chain(workers) {
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
    }
    let _ = std::fs::remove_file(pidfile());
    if netns {
        teardown_network();
    }
}

/// Held for a whole run: one run at a time per machine, since runs share the bridge, the namespace
/// names and the pidfile.
pub struct RunLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// How long a run waits for another one to finish before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(180);

/// Take the machine-wide run lock, waiting up to [`LOCK_WAIT`] for a run in progress to end (so
/// runs queue instead of failing; the suite's own tests rely on that).
pub fn lock_run() -> anyhow::Result<RunLock> {
    let path = std::env::temp_dir().join("warrant-jepsen.lock");
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut said = false;
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(RunLock(lock)),
            Err((_, e)) if std::time::Instant::now() >= deadline => {
                bail!(
                    "another warrant-jepsen run has held {} for {LOCK_WAIT:?} ({e}); one run at a time",
                    path.display()
                )
            }
            Err(_) => {
                if !said {
                    eprintln!(
                        "waiting (up to {LOCK_WAIT:?}) for another warrant-jepsen run to finish ({})",
                        path.display()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Remove what an earlier run may have left: processes inside our namespaces (by the PIDs the kernel
/// lists for those namespaces), the namespaces, the bridge.
pub fn cleanup_leftovers() {
    if let Ok(text) = std::fs::read_to_string(pidfile()) {
        for pid in text
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if is_our_node(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(pidfile());
    }
    let have_ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("wj-n"))
        .unwrap_or(false);
    if have_ns {
        for id in 1..=MAX_NODES {
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &ns_name(id)])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    teardown_network();
}

fn teardown_network() {
    for id in 1..=MAX_NODES {
        let _ = run(&["ip", "netns", "del", &ns_name(id)]);
        let _ = run(&["ip", "link", "del", &format!("wj-v{id}")]);
    }
    let _ = run(&["ip", "link", "del", BRIDGE]);
}

fn setup_network(nodes: u64) -> anyhow::Result<()> {
    registry().netns = true;
    run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
    run(&["ip", "addr", "add", BRIDGE_ADDR, "dev", BRIDGE])?;
    run(&["ip", "link", "set", BRIDGE, "up"])?;
    for id in 1..=nodes {
        let ns = ns_name(id);
        let (host, peer) = (format!("wj-v{id}"), format!("wj-p{id}"));
        run(&["ip", "netns", "add", &ns])?;
        run(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
        ])?;
        run(&["ip", "link", "set", &peer, "netns", &ns])?;
        run(&["ip", "link", "set", &host, "master", BRIDGE])?;
        run(&["ip", "link", "set", &host, "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", ip_of(id)),
            "dev",
            &peer,
        ])?;
        run(&["ip", "-n", &ns, "link", "set", &peer, "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// Can this process create namespaces (root, `ip` present)?
pub fn netns_available() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
        && Command::new("nft")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// One node's addresses and files.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: u64,
    pub client_addr: String,
    pub raft_addr: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub data: PathBuf,
}

/// The nodes of one run.
pub struct Cluster {
    pub mode: Mode,
    /// The founding members, then the spares (configured, not members, not running).
    pub nodes: Vec<Node>,
    /// How many of `nodes` founded the cluster; the rest are spares for the membership nemesis.
    members: usize,
    bin: PathBuf,
    /// With the clock nemesis: libfaketime, preloaded into every node, and the directory of the
    /// per-node offset files it re-reads every second.
    faketime: Option<(PathBuf, PathBuf)>,
    /// How nodes and clients authenticate (`--tls`, or insecure).
    pub security: Security,
    /// Proxy mode: the proxies between nodes.
    proxies: Option<crate::proxy::Proxies>,
}

/// Where Debian's `libfaketime` package puts the thread-safe preload library.
pub fn find_faketime() -> Option<PathBuf> {
    let arch = std::env::consts::ARCH;
    [
        format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketimeMT.so.1"),
        "/usr/lib/faketime/libfaketimeMT.so.1".to_string(),
        "/usr/local/lib/faketime/libfaketimeMT.so.1".to_string(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Settings that make faults matter: short elections and fast expiry.
const LEASE_AND_RAFT: &str = "[lease]\nmin_ttl = \"500ms\"\nmax_ttl = \"1h\"\nmax_wait = \"30s\"\n\
expiry_interval = \"50ms\"\nttl_checkpoint_interval = \"250ms\"\n[raft]\nheartbeat_interval = \"100ms\"\n\
election_timeout_min = \"400ms\"\nelection_timeout_max = \"800ms\"\nsnapshot_after_entries = 2000\n\
keep_entries_after_snapshot = 500\n";

/// A port for a local-mode node: free now, below Linux's ephemeral range (so no outgoing connection
/// takes it before the node binds it, nor a test that asks the kernel for port 0), and never handed
/// out twice by this process.
fn free_port() -> anyhow::Result<u16> {
    use rand::Rng;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(20_000..32_000);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no free port in 20000..32000 on 127.0.0.1 after 1000 tries")
}

/// What [`Cluster::start`] sets up.
pub struct Setup<'a> {
    pub mode: Mode,
    /// Founding members.
    pub nodes: u64,
    /// Nodes configured but not started, for the membership nemesis.
    pub spares: u64,
    /// The `warrant` binary.
    pub bin: &'a Path,
    /// The run's directory: configs, data, logs, certificates.
    pub dir: &'a Path,
    /// Preload this libfaketime into every node so the clock nemesis can move its wall clock
    /// ([`Cluster::set_clock`]).
    pub faketime: Option<PathBuf>,
    /// More top-level config keys for every node (a deliberately broken mode), one per line.
    pub top_level: &'a str,
    /// Mutual TLS and certificate-authenticated clients instead of an insecure cluster.
    pub tls: bool,
    /// Seed every founding node from this backup (`warrant snapshot restore`) before starting it.
    pub restore_from: Option<&'a Path>,
}

impl Cluster {
    /// Write configs under `dir`, set up the network (netns mode) and start every founding node.
    pub fn start(setup: Setup<'_>) -> anyhow::Result<Cluster> {
        let Setup {
            mode,
            nodes,
            spares,
            bin,
            dir,
            faketime,
            top_level,
            tls,
            restore_from,
        } = setup;
        if !(1..=MAX_NODES).contains(&nodes) {
            bail!("--nodes must be 1..={MAX_NODES}");
        }
        if nodes + spares > MAX_NODES {
            bail!("--nodes {nodes} leaves no room for {spares} spare nodes (at most {MAX_NODES} in all)");
        }
        let founders = nodes;
        let nodes = founders + spares;
        if mode == Mode::Netns {
            setup_network(nodes)?;
        }
        let mut addrs = Vec::new();
        for id in 1..=nodes {
            addrs.push(match mode {
                Mode::Netns => (format!("{}:7100", ip_of(id)), format!("{}:7000", ip_of(id))),
                Mode::Local | Mode::Proxy => (
                    format!("127.0.0.1:{}", free_port()?),
                    format!("127.0.0.1:{}", free_port()?),
                ),
            });
        }
        let security = if tls {
            let hosts = (1..=nodes).map(ip_of).collect();
            // Node configs name the files relative to themselves (`certs/…`).
            Security::tls(&dir.join("certs"), nodes, hosts)?
        } else {
            Security::default()
        };
        let rafts: Vec<(u64, String)> = addrs
            .iter()
            .enumerate()
            .map(|(i, (raft, _))| (i as u64 + 1, raft.clone()))
            .collect();
        let proxies = match mode {
            Mode::Proxy => Some(crate::proxy::Proxies::start(&rafts, free_port)?),
            _ => None,
        };
        // Founders list the founders; a spare lists them and itself (it joins through add-node).
        let peer = |i: usize, (raft, client): &(String, String)| {
            format!(
                "[peers.{}]\nraft = \"{raft}\"\nclient = \"{client}\"\n",
                i + 1
            )
        };
        let founding: String = addrs[..founders as usize]
            .iter()
            .enumerate()
            .map(|(i, a)| peer(i, a))
            .collect();
        let mut list = Vec::new();
        for (i, (raft, client)) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let config = dir.join(format!("wj-node{id}.toml"));
            let (insecure, security_table) = security.node_config(id);
            let peers = if id <= founders {
                founding.clone()
            } else {
                format!("{founding}{}", peer(i, &addrs[i]))
            };
            let dial_via = proxies
                .as_ref()
                .map(|p| p.dial_via(id, &rafts))
                .unwrap_or_default();
            let text = format!(
                "node_id = {id}\ncluster_name = \"jepsen\"\ndata_dir = \"data{id}\"\nbootstrap = {}\n\
                 {insecure}default_decision = \"allow\"\nadmins = [\"human/admin\"]\n{top_level}{LEASE_AND_RAFT}{dial_via}{peers}{security_table}",
                id == 1
            );
            std::fs::write(&config, text)?;
            list.push(Node {
                id,
                client_addr: client.clone(),
                raft_addr: raft.clone(),
                config,
                log: dir.join(format!("node{id}.log")),
                data: dir.join(format!("data{id}")),
            });
        }
        let faketime = match faketime {
            Some(lib) => {
                let clocks = dir.join("clocks");
                std::fs::create_dir_all(&clocks)?;
                Some((lib, clocks))
            }
            None => None,
        };
        let cluster = Cluster {
            mode,
            nodes: list,
            members: founders as usize,
            bin: bin.to_path_buf(),
            faketime,
            security,
            proxies,
        };
        if cluster.has_clock_control() {
            for id in 1..=nodes {
                cluster.set_clock(id, 0)?;
            }
        }
        if let Some(backup) = restore_from {
            for id in 1..=founders {
                let out = Command::new(&cluster.bin)
                    .args(["snapshot", "restore"])
                    .arg(backup)
                    .arg("--config")
                    .arg(&cluster.node(id).config)
                    .output()
                    .context("run warrant snapshot restore")?;
                if !out.status.success() {
                    bail!(
                        "snapshot restore for node {id}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
            }
        }
        for id in 1..=founders {
            cluster.start_node(id)?;
        }
        Ok(cluster)
    }

    /// kill -9 every node and take the network down (netns mode), so another cluster can start
    /// on the same addresses.
    pub fn stop_all(&self) {
        for node in &self.nodes {
            self.kill(node.id);
        }
        let netns = std::mem::take(&mut registry().netns);
        if netns {
            teardown_network();
        }
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// The founding members: what the workloads talk to and the other nemeses act on.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes[..self.members].iter().map(|n| n.id).collect()
    }

    /// Nodes configured to join (and leave) through the membership nemesis.
    pub fn spare_ids(&self) -> Vec<u64> {
        self.nodes[self.members..].iter().map(|n| n.id).collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes[..self.members]
            .iter()
            .map(|n| n.client_addr.clone())
            .collect()
    }

    /// An admin client (the config's `human/admin`) over the founding members.
    pub fn admin_client(&self) -> anyhow::Result<Client> {
        let mut cfg = self.security.client(self.endpoints(), "human/admin")?;
        cfg.call_timeout = Duration::from_secs(10);
        Ok(Client::new(cfg)?)
    }

    /// Forget a stopped spare's data: a node removed from the cluster refuses to start on it.
    pub fn wipe(&self, id: u64) -> anyhow::Result<()> {
        if self.is_running(id) {
            bail!("node {id} is running");
        }
        match std::fs::remove_dir_all(&self.node(id).data) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Start (or restart after a kill) a node; its stderr is appended to its log.
    pub fn start_node(&self, id: u64) -> anyhow::Result<()> {
        if SHUTTING_DOWN.load(Ordering::SeqCst) {
            bail!("shutting down");
        }
        let node = self.node(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut cmd = match self.mode {
            // `ip netns exec` execs the server in place: the child's PID is the server's.
            Mode::Netns => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns_name(id)]).arg(&self.bin);
                c
            }
            Mode::Local | Mode::Proxy => Command::new(&self.bin),
        };
        if let Some((lib, clocks)) = &self.faketime {
            // Only the wall clock moves (CLOCK_REALTIME): the offset file is re-read every second;
            // the monotonic clock, which every lease deadline uses, is left alone.
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", clocks.join(format!("node{id}")))
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        cmd.args(["server", "--config"])
            .arg(&node.config)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Own process group: a terminal's Ctrl-C reaches the harness, which then cleans up in order.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let mut r = registry();
        if SHUTTING_DOWN.load(Ordering::SeqCst) {
            bail!("shutting down");
        }
        if r.children.contains_key(&id) {
            bail!("node {id} is already running");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start node {id} ({})", self.bin.display()))?;
        r.children.insert(id, child);
        write_pidfile(&r);
        Ok(())
    }

    pub fn is_running(&self, id: u64) -> bool {
        registry().children.contains_key(&id)
    }

    /// kill -9 a node (also when paused) and reap it.
    pub fn kill(&self, id: u64) -> bool {
        let child = {
            let mut r = registry();
            let c = r.children.remove(&id);
            write_pidfile(&r);
            c
        };
        match child {
            Some(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
                true
            }
            None => false,
        }
    }

    /// SIGSTOP or SIGCONT a running node.
    pub fn signal(&self, id: u64, sig: Signal) -> bool {
        let r = registry();
        match r.children.get(&id) {
            Some(c) => kill(Pid::from_raw(c.id() as i32), sig).is_ok(),
            None => false,
        }
    }

    /// Install a grudge (both directions; see `nemesis::bipartite`, `bridge`, `ring`), with nft
    /// rules inside each namespace. The harness (10.77.0.1) still reaches every node, as Jepsen's
    /// clients do.
    ///
    /// Each node drops every packet from and to the nodes listed for it. The
    /// caller makes it symmetric; it need not be transitive (a bridge node or a ring sees nodes that
    /// cannot see each other).
    pub fn cut(&self, grudge: &BTreeMap<u64, Vec<u64>>) -> anyhow::Result<()> {
        if let Some(proxies) = &self.proxies {
            // Both directions, as nft's rules at one end drop traffic both ways.
            proxies.set_cut(
                grudge
                    .iter()
                    .flat_map(|(&a, v)| v.iter().flat_map(move |&b| [(a, b), (b, a)]))
                    .collect(),
            );
            return Ok(());
        }
        if self.mode != Mode::Netns {
            bail!("partitions need netns or proxy mode");
        }
        self.heal()?;
        for (&id, other) in grudge {
            if other.is_empty() {
                continue;
            }
            let ips: Vec<String> = other.iter().map(|&i| ip_of(i)).collect();
            let set = ips.join(", ");
            let rules = format!(
                "table inet {PART_TABLE} {{\n chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n}}\n"
            );
            let path = std::env::temp_dir().join(format!("wj-part-{id}.nft"));
            std::fs::write(&path, rules)?;
            let r = run(&[
                "ip",
                "netns",
                "exec",
                &ns_name(id),
                "nft",
                "-f",
                &path.to_string_lossy(),
            ]);
            let _ = std::fs::remove_file(&path);
            r?;
        }
        Ok(())
    }

    /// Set node `id`'s wall clock `offset_s` seconds away from the real one (0: back in step). It
    /// takes effect within a second, without a restart. Fails without the clock nemesis.
    pub fn set_clock(&self, id: u64, offset_s: i64) -> anyhow::Result<()> {
        let Some((_, clocks)) = &self.faketime else {
            bail!("the clock nemesis needs libfaketime (apt-get install faketime)");
        };
        let path = clocks.join(format!("node{id}"));
        let tmp = clocks.join(format!(".node{id}.tmp"));
        std::fs::write(&tmp, format!("{offset_s:+}\n"))?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    pub fn has_clock_control(&self) -> bool {
        self.faketime.is_some()
    }

    /// Remove every partition and loss rule.
    pub fn heal(&self) -> anyhow::Result<()> {
        if let Some(proxies) = &self.proxies {
            proxies.set_cut(Default::default());
            return Ok(());
        }
        if self.mode != Mode::Netns {
            return Ok(());
        }
        for id in self.ids() {
            for table in [PART_TABLE, LOSS_TABLE] {
                // Absent table is fine (nothing to heal).
                let _ = run(&[
                    "ip",
                    "netns",
                    "exec",
                    &ns_name(id),
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    table,
                ]);
            }
        }
        Ok(())
    }

    /// Drop `percent` % of the packets each of `ids` sends or receives on its link (to and from
    /// every peer and client), chosen at random per packet by nft's `numgen random`. The kernel
    /// here has no `sch_netem`, so this is loss without delay.
    pub fn lossy(&self, ids: &[u64], percent: u32) -> anyhow::Result<()> {
        if self.mode != Mode::Netns {
            bail!("packet loss needs netns mode");
        }
        anyhow::ensure!((1..100).contains(&percent), "loss of {percent} %");
        for &id in ids {
            let link = format!("wj-p{id}");
            let rules = format!(
                "table inet {LOSS_TABLE} {{\n chain input {{ type filter hook input priority 0; policy accept; iifname \"{link}\" numgen random mod 100 < {percent} drop; }}\n chain output {{ type filter hook output priority 0; policy accept; oifname \"{link}\" numgen random mod 100 < {percent} drop; }}\n}}\n"
            );
            let path = std::env::temp_dir().join(format!("wj-loss-{id}.nft"));
            std::fs::write(&path, rules)?;
            let r = run(&[
                "ip",
                "netns",
                "exec",
                &ns_name(id),
                "nft",
                "-f",
                &path.to_string_lossy(),
            ]);
            let _ = std::fs::remove_file(&path);
            r?;
        }
        Ok(())
    }

    /// A client that talks to one node only.
    pub fn node_client(&self, id: u64) -> anyhow::Result<Client> {
        let mut cfg = self
            .security
            .client([self.node(id).client_addr.clone()], "human/jepsen")?;
        cfg.call_timeout = Duration::from_secs(2);
        Ok(Client::new(cfg)?)
    }

    /// The leader as the running nodes see it: the leader named by the highest term any node
    /// reports (a partitioned old leader may still think it leads). None if nobody knows.
    pub async fn leader(&self) -> Option<u64> {
        let mut set = tokio::task::JoinSet::new();
        for id in self.ids() {
            if !self.is_running(id) {
                continue;
            }
            let Ok(client) = self.node_client(id) else {
                continue;
            };
            set.spawn(async move {
                tokio::time::timeout(Duration::from_secs(1), client.status())
                    .await
                    .ok()
                    .and_then(|r| r.ok())
            });
        }
        let mut best: Option<(u64, u64)> = None;
        while let Some(r) = set.join_next().await {
            if let Ok(Some(s)) = r {
                if s.leader != 0 && best.is_none_or(|(term, _)| s.term > term) {
                    best = Some((s.term, s.leader));
                }
            }
        }
        best.map(|(_, l)| l)
    }

    /// Wait (bounded) until a leader is known and answers as leader.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(l) = self.leader().await {
                if let Ok(c) = self.node_client(l) {
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_secs(1), c.status()).await
                    {
                        if s.leader == l {
                            return Some(l);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}
