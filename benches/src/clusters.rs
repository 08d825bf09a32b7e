//! Local 3-node clusters of Warrant (`warrant server` processes) and etcd (Debian's `etcd`), on
//! 127.0.0.1 with their data in a temp dir, stopped (by PID) when dropped; with `--tls`, both with mutual
//! TLS on client and peer traffic (`tls.rs`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use procfs::WithCurrentSystemInfo;

/// What a Ctrl-C or SIGTERM must clean up: the PIDs of running servers and the clusters' temp dirs
/// (a signal ends the process without running destructors).
/// The third field: cleanup has begun, so nothing may be started any more.
type Live = (Vec<u32>, Vec<PathBuf>, bool);
static LIVE: std::sync::Mutex<Live> = std::sync::Mutex::new((Vec::new(), Vec::new(), false));

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kill every server this process started (by PID, SIGKILL after SIGCONT) and remove the clusters'
/// temp dirs. For the signal path; a normal exit drops the clusters instead.
pub fn cleanup_on_signal() {
    let (pids, dirs) = {
        let mut live = live();
        live.2 = true;
        (std::mem::take(&mut live.0), std::mem::take(&mut live.1))
    };
    for &pid in &pids {
        // Children this process spawned and has not reaped: the PIDs cannot have been reused.
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    // Reap them before removing their data directories.
    for pid in pids {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A port nothing listens on now and that this process has not handed out before: a port is only
/// bound when its server starts, so without the second rule a port given to a Warrant node that is
/// still starting could be given to etcd as well (seen once: a client reached etcd at a Warrant
/// endpoint and got "unknown service warrant.v1.Warrant").
fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 after 100 tries")
}

/// A temp dir removed when dropped, and also by `cleanup_on_signal`.
pub fn temp_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    live().1.push(dir.path().to_path_buf());
    Ok(dir)
}

/// A server process we started.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub restart: Command,
}

impl Proc {
    fn spawn(name: String, restart: Command) -> Result<Self> {
        let mut p = Proc::idle(name, restart);
        p.start()?;
        Ok(p)
    }

    /// Configured, not started.
    fn idle(name: String, restart: Command) -> Self {
        Proc {
            name,
            child: None,
            restart,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            live().0.retain(|&p| p != c.id());
            let _ = c.wait();
        }
    }

    pub fn start(&mut self) -> Result<()> {
        let mut live = live();
        if live.2 {
            bail!("interrupted: not starting {}", self.name);
        }
        let child = self
            .restart
            .spawn()
            .with_context(|| format!("start {}", self.name))?;
        live.0.push(child.id());
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running 3-node cluster of either system.
pub struct Cluster {
    pub endpoints: Vec<String>,
    pub procs: Vec<Proc>,
    /// Warrant only: nodes 4 and 5, configured (`bootstrap = false`) but not started, with their
    /// raft and client addresses, for the membership change.
    pub spares: Vec<(Proc, String, String)>,
    /// Data, configs and logs, removed when the cluster is dropped.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// A cluster whose clients reach member i at 127.0.0.1:ports[i].1.
    fn of(ports: &[(u16, u16)], procs: Vec<Proc>, dir: tempfile::TempDir) -> Self {
        let endpoints = ports
            .iter()
            .map(|(_, c)| format!("127.0.0.1:{c}"))
            .collect();
        Cluster {
            endpoints,
            procs,
            spares: Vec::new(),
            dir,
        }
    }

    /// CPU seconds used so far by each server process (utime + stime).
    pub fn cpu_seconds(&self) -> f64 {
        let tps = procfs::ticks_per_second() as f64;
        self.procs
            .iter()
            .filter_map(|p| p.pid())
            .filter_map(|pid| procfs::process::Process::new(pid as i32).ok()?.stat().ok())
            .map(|s| (s.utime + s.stime) as f64 / tps)
            .sum()
    }

    /// Resident memory of each live server process, in bytes.
    pub fn rss_bytes(&self) -> Vec<u64> {
        self.procs
            .iter()
            .filter_map(|p| p.pid())
            .filter_map(|pid| {
                let p = procfs::process::Process::new(pid as i32).ok()?;
                Some(p.stat().ok()?.rss_bytes().get())
            })
            .collect()
    }
}

/// Start a 3-node Warrant cluster from the `warrant` binary.
/// `extra` is TOML inserted into every node's config before the peer tables (e.g. `[raft]` settings).
pub fn start_warrant(bin: &Path, extra: &str) -> Result<Cluster> {
    let dir = temp_dir()?;
    let ports: Vec<(u16, u16)> = (0..5)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_>>()?;
    let mut peers = String::new();
    for (i, (raft, client)) in ports.iter().enumerate() {
        peers.push_str(&format!(
            "[peers.{}]\nraft = \"127.0.0.1:{raft}\"\nclient = \"127.0.0.1:{client}\"\n",
            i + 1
        ));
    }
    // A benchmark drives one principal far past the per-principal rate a production node allows.
    let extra = if extra.contains("[limits]") {
        extra.to_string()
    } else {
        format!("{extra}\n[limits]\nrequests_per_second = 0\n")
    };
    let mut procs = Vec::new();
    let mut spares = Vec::new();
    for id in 1..=5u64 {
        let config = dir.path().join(format!("node{id}.toml"));
        let (insecure, security) = crate::tls::warrant_node_security(id);
        // Prometheus metrics, for looking inside a run (`curl 127.0.0.1:PORT/metrics`).
        let http = format!("127.0.0.1:{}", free_port()?);
        eprintln!("warrant-{id}: metrics at http://{http}/metrics");
        std::fs::write(
            &config,
            format!(
                "node_id = {id}\ncluster_name = \"bench\"\ndata_dir = \"data{id}\"\nbootstrap = {}\nhttp_addr = \"{http}\"\n{insecure}default_decision = \"allow\"\n\
                 admins = [\"human/admin\"]\n{extra}\n{}\n{security}",
                id == 1,
                // Bootstrap members list the first three; a spare lists them too (and itself).
                if id <= 3 {
                    peers.lines().take(9).collect::<Vec<_>>().join("\n")
                } else {
                    peers.clone()
                },
            ),
        )?;
        let log = std::fs::File::create(dir.path().join(format!("node{id}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.args(["server", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        if id <= 3 {
            procs.push(Proc::spawn(format!("warrant-{id}"), cmd)?);
        } else {
            let (raft, client) = ports[(id - 1) as usize];
            spares.push((
                Proc::idle(format!("warrant-{id}"), cmd),
                format!("127.0.0.1:{raft}"),
                format!("127.0.0.1:{client}"),
            ));
        }
    }
    let mut cluster = Cluster::of(&ports[..3], procs, dir);
    cluster.spares = spares;
    Ok(cluster)
}

/// Start a 3-node etcd cluster (default durability: fsync on every commit).
pub fn start_etcd(bin: &Path) -> Result<Cluster> {
    let dir = temp_dir()?;
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_>>()?;
    let scheme = crate::tls::scheme();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (peer, _))| format!("n{}={scheme}://127.0.0.1:{peer}", i + 1))
        .collect();
    let mut procs = Vec::new();
    for (i, (peer, client)) in ports.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let log = std::fs::File::create(dir.path().join(format!("{name}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.args(["--name", &name])
            .arg("--data-dir")
            .arg(dir.path().join(&name))
            .args([
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{client}"),
            ])
            .args([
                "--listen-peer-urls",
                &format!("{scheme}://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("{scheme}://127.0.0.1:{peer}"),
            ])
            .args(["--initial-cluster", &initial.join(",")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "warrant-bench",
            ])
            .args(["--log-level", "warn", "--logger", "zap"])
            .args(crate::tls::etcd_args(i + 1))
            .stdout(Stdio::null())
            .stderr(log);
        procs.push(Proc::spawn(format!("etcd-{name}"), cmd)?);
    }
    Ok(Cluster::of(&ports, procs, dir))
}

/// Wait until `ready` answers true, at most `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what} not ready within {timeout:?}")
}

/// Debian's etcd-server, installed by the harness when `bin` is missing (apt-get, non-interactive;
/// its package lists refreshed once if the first try fails). Needs root, as the README's install
/// step does; a custom `--etcd-bin` that is missing is an error, not an install.
pub fn ensure_etcd(bin: &Path) -> Result<()> {
    if bin.exists() {
        return Ok(());
    }
    anyhow::ensure!(
        bin == Path::new(DEBIAN_ETCD),
        "{} not found (give --etcd-bin the path of an etcd 3.4+ binary)",
        bin.display()
    );
    eprintln!("{DEBIAN_ETCD} not found: installing Debian's etcd-server with apt-get");
    let apt = |args: &[&str]| -> Result<bool> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .context("run apt-get (install etcd-server by hand: apt-get install etcd-server)")?;
        Ok(status.success())
    };
    let install = [
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "etcd-server",
    ];
    if !apt(&install)? {
        anyhow::ensure!(apt(&["update", "-q"])?, "apt-get update failed");
        anyhow::ensure!(
            apt(&install)?,
            "apt-get install etcd-server failed (run it by hand, as root)"
        );
    }
    anyhow::ensure!(
        bin.exists(),
        "etcd-server installed but {} is still missing",
        bin.display()
    );
    Ok(())
}

/// Where Debian's etcd-server puts the server binary (the default `--etcd-bin`).
pub const DEBIAN_ETCD: &str = "/usr/bin/etcd";

/// The `warrant` binary next to this one (both built by one `cargo build`).
pub fn sibling_warrant() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.parent().context("exe has a directory")?.join("warrant");
    if !bin.exists() {
        bail!("{} not found: build it with `cargo build --release -p warrant` (or pass --warrant-bin)", bin.display());
    }
    Ok(bin)
}
