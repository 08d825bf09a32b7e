//! warrant-bench: Warrant against etcd's lock recipe, side by side, in one run on one machine.
//!
//! ```sh
//! cargo build --release -p warrant -p warrant-bench
//! target/release/warrant-bench all            # every workload, Markdown table on stdout
//! ```
//! Both 3-node clusters run on 127.0.0.1 with their data in temp dirs and are stopped at the end.

mod clusters;
mod tls;
mod workloads;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use warrant::client::{AcquireOptions, Acquired};

use clusters::{start_etcd, start_warrant, wait_until, Cluster};
use workloads::{Contention, Stats, System};

#[derive(Parser)]
#[command(about = "Warrant vs etcd's lock recipe, side by side")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every workload against both systems; prints a Markdown table.
    All {
        /// The warrant binary (default: next to this one).
        #[arg(long)]
        warrant_bin: Option<PathBuf>,
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd_bin: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        duration: Duration,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
        warmup: Duration,
        #[arg(long, default_value_t = 2)]
        repeats: usize,
        /// Keepalive streams (one lease each) and keepalives in flight per stream.
        #[arg(long, default_value_t = 64)]
        keepalive_streams: usize,
        #[arg(long, default_value_t = 32)]
        keepalive_window: usize,
        /// Live leases for the scale workload (0 skips it): RSS per node, restart-and-catch-up time.
        #[arg(long, default_value_t = 100_000)]
        scale_leases: usize,
        /// Only these systems (profiling one side); the ratio column needs both.
        #[arg(long, value_delimiter = ',', default_value = "warrant,etcd")]
        systems: Vec<String>,
        /// Only these workloads: uncontended, contended, contended-wait, keepalive, failover, scale.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "uncontended,contended,contended-wait,keepalive,failover,scale"
        )]
        workloads: Vec<String>,
        /// TOML added to every Warrant node's config, with real newlines (in bash:
        /// `$'[raft]\nsnapshot_after_entries = 50000'`).
        #[arg(long, default_value = "")]
        warrant_config: String,
        /// Both clusters with mutual TLS on client and peer traffic (one CA from `warrant certs
        /// init`; etcd with --client-cert-auth and --peer-client-cert-auth), as run in production.
        #[arg(long)]
        tls: bool,
    },
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn lat(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "–".into();
    }
    format!(
        "{:.2} / {:.2} / {:.2}",
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 0.999)
    )
}

struct Row {
    workload: String,
    clients: usize,
    run: usize,
    system: System,
    stats: Stats,
}

async fn ready(system: System, cluster: &Cluster) -> Result<()> {
    let endpoints = cluster.endpoints.clone();
    wait_until(Duration::from_secs(30), system.name(), || {
        let endpoints = endpoints.clone();
        async move {
            match system {
                System::Warrant => {
                    match tls::warrant_client(endpoints, "agent/bench")
                        .unwrap()
                        .status()
                        .await
                    {
                        Ok(s) => s.leader != 0,
                        Err(_) => false,
                    }
                }
                System::Etcd => match tls::etcd_client(&endpoints).await {
                    Ok(mut c) => c.put("bench/ready", "1", None).await.is_ok(),
                    Err(_) => false,
                },
            }
        }
    })
    .await
}

/// Kill -9 Warrant's leader under load (16 clients cycling); report the time from the kill to the
/// first grant of an acquire sent after it (one sent before may still be answered by the old leader,
/// which says nothing about failover), and check that no acknowledged grant was lost (each resource's fence is at
/// least every token acknowledged for it).
async fn failover(cluster: &mut Cluster) -> Result<String> {
    let client = tls::warrant_client(cluster.endpoints.clone(), "agent/bench")?;
    let leader = client.status().await?.leader as usize;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let stop_at = Instant::now() + Duration::from_secs(8);
    let kill_at = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let endpoints = cluster.endpoints.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let c = tls::warrant_client(endpoints, &format!("agent/fo-{i}"))?;
            // (resource, token, acquire sent, grant received)
            let mut acked: Vec<(String, u64, Instant, Instant)> = Vec::new();
            let mut n = 0;
            while Instant::now() < stop_at {
                let key = format!("fo/{run}/c{i}/r{}", n % 4);
                n += 1;
                let sent = Instant::now();
                if let Ok(Acquired::Granted(l)) = c
                    .acquire(AcquireOptions::new(&key, Duration::from_secs(10)))
                    .await
                {
                    acked.push((key, l.token(), sent, Instant::now()));
                    let _ = l.release(None).await;
                }
            }
            anyhow::Ok(acked)
        }));
    }
    tokio::time::sleep_until(kill_at.into()).await;
    let killed = Instant::now();
    cluster.procs[leader - 1].kill();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await??);
    }
    let first_after = acked
        .iter()
        .filter(|(_, _, sent, _)| *sent > killed)
        .map(|(_, _, _, at)| *at)
        .min();
    let gap = first_after.map(|t| t - killed);
    let mut lost = 0;
    let mut checked = std::collections::BTreeMap::<String, u64>::new();
    for (key, token, _, _) in &acked {
        let e = checked.entry(key.clone()).or_default();
        *e = (*e).max(*token);
    }
    for (key, token) in &checked {
        if client.get(key).await?.fence < *token {
            lost += 1;
        }
    }
    cluster.procs[leader - 1].start()?;
    Ok(format!(
        "leader (node {leader}) killed with 16 clients cycling: next grant after {}; {} acknowledged grants on {} resources, {} lost",
        gap.map(|g| format!("{:.0} ms", g.as_secs_f64() * 1000.0)).unwrap_or_else(|| "never (within 5 s)".into()),
        acked.len(),
        checked.len(),
        lost
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    // Ctrl-C or SIGTERM: stop the servers we started and remove their data before exiting.
    tokio::spawn(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install a SIGTERM handler");
        let code = tokio::select! {
            _ = tokio::signal::ctrl_c() => 130,
            _ = term.recv() => 143,
        };
        clusters::cleanup_on_signal();
        eprintln!("interrupted: servers stopped, temp dirs removed");
        std::process::exit(code);
    });
    let Cmd::All {
        warrant_bin,
        etcd_bin,
        clients,
        duration,
        warmup,
        repeats,
        keepalive_streams,
        keepalive_window,
        scale_leases,
        systems,
        workloads,
        warrant_config,
        tls,
    } = Cli::parse().command;
    let wants = |w: &str| workloads.iter().any(|x| x == w);
    let warrant_bin = match warrant_bin {
        Some(b) => b,
        None => clusters::sibling_warrant()?,
    };
    clusters::ensure_etcd(&etcd_bin)?;
    // Kept until the end: etcd reads its certificate files again at every handshake.
    let certs = clusters::temp_dir()?;
    if tls {
        tls::enable(certs.path())?;
    }
    let mut warrant = start_warrant(&warrant_bin, &warrant_config).context("start warrant")?;
    let mut etcd = start_etcd(&etcd_bin).context("start etcd")?;
    ready(System::Warrant, &warrant).await?;
    ready(System::Etcd, &etcd).await?;

    let mut rows = Vec::new();
    for run in 1..=repeats {
        for (key, workload, contention) in [
            ("uncontended", "uncontended", Contention::Uncontended),
            (
                "contended",
                "contended (8 resources)",
                Contention::Contended,
            ),
            (
                "contended-wait",
                "contended, waiting (8 resources)",
                Contention::ContendedWait,
            ),
        ] {
            if !wants(key) {
                continue;
            }
            for &c in &clients {
                for (system, cluster) in [(System::Warrant, &warrant), (System::Etcd, &etcd)] {
                    if !systems.iter().any(|s| s == system.name()) {
                        continue;
                    }
                    let stats =
                        workloads::cycles(system, cluster, contention, c, warmup, duration).await?;
                    eprintln!(
                        "{workload} C={c} run {run} {}: {:.0} cycles/s",
                        system.name(),
                        stats.ops_per_sec()
                    );
                    rows.push(Row {
                        workload: workload.into(),
                        clients: c,
                        run,
                        system,
                        stats,
                    });
                }
            }
        }
        for (system, cluster) in [(System::Warrant, &warrant), (System::Etcd, &etcd)] {
            if !systems.iter().any(|s| s == system.name()) || !wants("keepalive") {
                continue;
            }
            let stats = workloads::keepalives(
                system,
                cluster,
                keepalive_streams,
                keepalive_window,
                warmup,
                duration,
            )
            .await?;
            eprintln!(
                "keepalive run {run} {}: {:.0}/s",
                system.name(),
                stats.ops_per_sec()
            );
            rows.push(Row {
                workload: format!("keepalive ({keepalive_streams}×{keepalive_window} in flight)"),
                clients: keepalive_streams,
                run,
                system,
                stats,
            });
        }
    }
    let failover = if wants("failover") {
        failover(&mut warrant).await?
    } else {
        "not run".to_string()
    };
    let mut scale_lines = Vec::new();
    if scale_leases > 0 && wants("scale") {
        for (system, cluster) in [(System::Warrant, &mut warrant), (System::Etcd, &mut etcd)] {
            if !systems.iter().any(|s| s == system.name()) {
                continue;
            }
            scale_lines.push(scale(system, cluster, scale_leases).await?);
        }
    }

    let mut out = String::new();
    writeln!(
        out,
        "Transport: {}.\n",
        if tls {
            "mutual TLS on client and peer traffic for both systems (--tls)"
        } else {
            "plaintext for both systems (Warrant `insecure = true`; run with --tls for mutual TLS)"
        }
    )?;
    writeln!(out, "| workload | C | run | system | ops/s | acquire p50 / p99 / p99.9 ms | cycle p50 / p99 / p99.9 ms | busy answers / grant | server CPU % | Warrant ÷ etcd ops/s |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|")?;
    for r in &rows {
        // The ratio pairs each Warrant row with etcd's row of the same workload, C and run.
        let etcd = rows.iter().find(|e| {
            e.system == System::Etcd
                && e.workload == r.workload
                && e.clients == r.clients
                && e.run == r.run
        });
        let ratio = match (r.system, etcd) {
            (System::Warrant, Some(e)) => {
                format!(
                    "**{:.2}×**",
                    r.stats.ops_per_sec() / e.stats.ops_per_sec().max(f64::MIN_POSITIVE)
                )
            }
            _ => String::new(),
        };
        let keepalive = r.workload.starts_with("keepalive");
        writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {:.2} | {:.0} | {} |",
            r.workload,
            r.clients,
            r.run,
            r.system.name(),
            r.stats.ops_per_sec(),
            if keepalive {
                format!("keepalive: {}", lat(&r.stats.acquire))
            } else {
                lat(&r.stats.acquire)
            },
            if keepalive {
                "–".to_string()
            } else {
                lat(&r.stats.cycle)
            },
            r.stats.busy as f64 / r.stats.ops.max(1) as f64,
            r.stats.cpu_percent,
            ratio,
        )?;
    }
    writeln!(out, "\nFailover: {failover}")?;
    for line in &scale_lines {
        writeln!(out, "\n{line}")?;
    }
    writeln!(
        out,
        "\nRSS after the run: warrant {:?} MiB, etcd {:?} MiB",
        mib(&warrant.rss_bytes()),
        mib(&etcd.rss_bytes())
    )?;
    println!("{out}");
    Ok(())
}

/// Fill `n` live leases, report RSS per node, then kill -9 a follower (Warrant) or a member (etcd),
/// restart it and time until it serves the full state again.
async fn scale(system: System, cluster: &mut Cluster, n: usize) -> Result<String> {
    let rss_before = mib(&cluster.rss_bytes());
    let rate = workloads::fill(system, cluster, n, 64).await?;
    let rss = mib(&cluster.rss_bytes());
    let (victim, probe) = match system {
        System::Warrant => {
            let c = tls::warrant_client(cluster.endpoints.clone(), "agent/bench")?;
            let status = c.status().await?;
            let victim = (1..=3)
                .find(|id| *id != status.leader as usize)
                .context("a follower")?;
            (victim, status.live_leases)
        }
        System::Etcd => (3, 0),
    };
    cluster.procs[victim - 1].kill();
    let restarted = Instant::now();
    cluster.procs[victim - 1].start()?;
    let endpoint = cluster.endpoints[victim - 1].clone();
    wait_until(Duration::from_secs(600), "restart and catch-up", || {
        let endpoint = endpoint.clone();
        async move {
            match system {
                System::Warrant => {
                    match tls::warrant_client([endpoint], "agent/bench")
                        .unwrap()
                        .status()
                        .await
                    {
                        Ok(s) => s.live_leases >= probe && s.leader != 0,
                        Err(_) => false,
                    }
                }
                System::Etcd => match tls::etcd_client(&[endpoint]).await {
                    Ok(mut c) => c.status().await.is_ok(),
                    Err(_) => false,
                },
            }
        }
    })
    .await?;
    let catch_up = restarted.elapsed();
    let membership = match system {
        System::Warrant => membership(cluster).await? + &backup(cluster).await?,
        System::Etcd => String::new(),
    };
    Ok(format!(
        "Scale, {}: {n} live leases created at {rate:.0}/s; RSS per node {rss_before:?} → {rss:?} MiB; \
         kill -9 + restart of a member until it serves all of them: {:.1} s{membership}",
        system.name(),
        catch_up.as_secs_f64()
    ))
}

/// 3 → 5 → 3 with the scale workload's leases live: start the two spares, add each (learner,
/// catch-up by snapshot, promotion), then remove them again.
async fn membership(cluster: &mut Cluster) -> Result<String> {
    let admin = tls::warrant_client(cluster.endpoints.clone(), "human/admin")?;
    let started = Instant::now();
    let mut adds = Vec::new();
    for (proc, raft, client) in cluster.spares.iter_mut() {
        proc.start()?;
        let id: u64 = proc.name.trim_start_matches("warrant-").parse()?;
        let r = admin
            .add_node(warrant::proto::AddNodeRequest {
                node_id: id,
                raft_address: raft.clone(),
                client_address: client.clone(),
                catch_up_timeout_ms: 600_000,
                principal: String::new(),
                learner: false,
            })
            .await?;
        adds.push(r.took_ms);
    }
    let grow = started.elapsed();
    let started = Instant::now();
    for id in [4u64, 5] {
        admin
            .remove_node(warrant::proto::RemoveNodeRequest {
                node_id: id,
                principal: String::new(),
            })
            .await?;
    }
    let shrink = started.elapsed();
    for (proc, _, _) in cluster.spares.iter_mut() {
        proc.kill();
    }
    Ok(format!(
        "; 3 → 5 (start both spares, add-node each: {adds:?} ms): {:.1} s; 5 → 3 (remove-node ×2): {:.1} s",
        grow.as_secs_f64(),
        shrink.as_secs_f64()
    ))
}

/// `snapshot save` of the whole state (and audit log) through the client, then `snapshot restore`
/// of it into a fresh data directory, timed.
async fn backup(cluster: &Cluster) -> Result<String> {
    let admin = tls::warrant_client(cluster.endpoints.clone(), "human/admin")?;
    let file = cluster.dir.path().join("backup.wbak");
    let started = Instant::now();
    let saved = admin.save_snapshot(&file).await?;
    let save = started.elapsed();
    let mut config = warrant::server::Config::load(&cluster.dir.path().join("node1.toml"))?;
    config.data_dir = cluster.dir.path().join("restored1");
    let started = Instant::now();
    let restored = warrant::server::backup::restore(&file, &config, 1_000_000_000)
        .map_err(|e| anyhow::anyhow!(e))?;
    let restore = started.elapsed();
    Ok(format!(
        "; snapshot save ({} MiB, {} leases, {} audit records): {:.1} s; restore into a new data dir: {:.1} s",
        saved.bytes / (1024 * 1024),
        restored.leases,
        saved.header.audit_records,
        save.as_secs_f64(),
        restore.as_secs_f64()
    ))
}

fn mib(v: &[u64]) -> Vec<u64> {
    v.iter().map(|b| b / (1024 * 1024)).collect()
}
