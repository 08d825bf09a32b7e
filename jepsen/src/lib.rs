//! warrant-jepsen: a Jepsen-style fault-injection suite for Warrant (issue 4).
//!
//! A run starts real `warrant server` processes ([`cluster`]), drives the fenced-register workload
//! ([`workload`]) and the replacement-mid-deploy workload ([`deploy`], checked by [`deploy_check`])
//! against them while a seeded nemesis injects faults ([`nemesis`]), heals, reads the
//! final state, and checks the recorded history ([`checker`]). Everything lands in one directory:
//! history.jsonl, nemesis.jsonl, node logs and results.json.

pub mod audit_check;
pub mod checker;
pub mod cluster;
pub mod deploy;
pub mod deploy_check;
pub mod history;
pub mod linearizable;
pub mod nemesis;
pub mod node_check;
pub mod procs;
pub mod proxy;
pub mod restore;
pub mod security;
pub mod timeline_svg;
pub mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use cluster::{Cluster, Mode};
use history::{Clock, Kind, Recorder};
use nemesis::{Fault, Timeline};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOpts {
    pub nodes: u64,
    pub time: Duration,
    pub seed: u64,
    pub nemesis: String,
    pub mode: Mode,
    pub out: PathBuf,
    pub bin: PathBuf,
    pub clients: u64,
    pub resources: u64,
    pub ttl: Duration,
    pub broken: Option<workload::Broken>,
    /// Run the fenced-register workload.
    pub register: bool,
    /// Run the replacement-mid-deploy workload.
    pub deploy: bool,
    /// Mutual TLS and certificate-authenticated clients (the production path) instead of an
    /// insecure cluster.
    pub tls: bool,
    /// How many register clients run as their own OS process (`client-pause` stops them).
    pub os_clients: u64,
    /// Probability of a simulated client pause (None: the default for the mode).
    pub sim_pause: Option<f64>,
    /// This program (the client processes run `SELF client-worker`).
    pub self_bin: PathBuf,
    /// The restore step ([`restore`]): save a backup mid-run, then run the register workload
    /// against a second cluster restored from it, with every checker.
    pub restore: bool,
}

/// results.json.
#[derive(Debug, Serialize)]
pub struct Results {
    pub valid: bool,
    pub mode: Mode,
    pub nodes: u64,
    pub seed: u64,
    pub time_s: f64,
    pub nemesis: Vec<Fault>,
    pub clients: u64,
    /// Of those, how many ran as their own OS process.
    pub os_clients: u64,
    pub resources: u64,
    pub ttl_ms: u64,
    /// A deliberately broken mode, if one was asked for (then the run is expected to fail).
    pub broken: Option<workload::Broken>,
    /// Whether the cluster ran with mutual TLS (`--tls`) or insecure.
    pub tls: bool,
    /// Completions per operation and outcome, e.g. "acquire.ok".
    pub ops: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub checkers: BTreeMap<String, checker::Verdict>,
    pub final_registers: BTreeMap<String, Option<String>>,
    pub workloads: Vec<String>,
    /// Deploy workload: deploys started (task keys) and steps each deployment accepted.
    pub deploys_started: u64,
    pub deploy_steps_applied: BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

/// Run the whole test. The caller must call [`cluster::cleanup`] afterwards on every path (this
/// function also does on its own normal and error paths).
pub async fn run(opts: RunOpts) -> anyhow::Result<Results> {
    let r = run_inner(&opts).await;
    cluster::cleanup();
    r
}

async fn run_inner(opts: &RunOpts) -> anyhow::Result<Results> {
    // A run's nodes keep their data in the output directory: an old run's data there would be
    // another cluster's (or another format's), so a run starts only in an empty directory.
    if std::fs::read_dir(&opts.out).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "output directory {} is not empty (an earlier run's data would be reused); choose a new one",
            opts.out.display()
        );
    }
    std::fs::create_dir_all(&opts.out)?;
    let mut faults = Fault::parse_list(&opts.nemesis, opts.mode)?;
    let mut notes = Vec::new();
    let faketime = if faults.contains(&Fault::Clock) {
        match cluster::find_faketime() {
            Some(lib) => Some(lib),
            None if opts.nemesis.split(',').any(|p| p.trim() == "clock") => {
                anyhow::bail!("--nemesis clock needs libfaketime: apt-get install faketime")
            }
            None => {
                // `mixed` without libfaketime: run the other faults (results.json lists those run).
                faults.retain(|f| *f != Fault::Clock);
                eprintln!("clock nemesis skipped: libfaketime is not installed (apt-get install faketime)");
                None
            }
        }
    } else {
        None
    };
    let os_clients = if opts.register {
        opts.os_clients.min(opts.clients)
    } else {
        0
    };
    if os_clients == 0 && faults.contains(&Fault::ClientPause) {
        if opts.nemesis.split(',').any(|p| p.trim() == "client-pause") {
            anyhow::bail!(
                "--nemesis client-pause needs the register workload and --os-clients of at least 1"
            );
        }
        faults.retain(|f| *f != Fault::ClientPause);
    }
    // The wait for another run's lock blocks; keep it off the runtime so Ctrl-C is still handled.
    let _lock = tokio::task::spawn_blocking(cluster::lock_run).await??;
    cluster::cleanup_leftovers();
    let clock = Clock::new();
    let rec = Recorder::new(clock, Some(&opts.out.join("history.jsonl")))?;
    let timeline = Timeline::new(clock, &opts.out.join("nemesis.jsonl"))?;

    let top_level = match opts.broken.and_then(workload::Broken::chaos_break) {
        Some(mode) => format!("chaos_break = \"{mode}\"\n"),
        None => String::new(),
    };
    let spares = if faults.contains(&Fault::Membership) {
        nemesis::SPARES
    } else {
        0
    };
    let cluster = Arc::new(Cluster::start(cluster::Setup {
        mode: opts.mode,
        nodes: opts.nodes,
        spares,
        bin: &opts.bin,
        dir: &opts.out,
        faketime: faketime.clone(),
        top_level: &top_level,
        tls: opts.tls,
        restore_from: None,
    })?);
    let Some(leader) = cluster.wait_leader(Duration::from_secs(30)).await else {
        anyhow::bail!(
            "no leader within 30 s of start; see the node logs in {}",
            opts.out.display()
        );
    };
    eprintln!(
        "cluster up ({:?} mode, {} nodes, leader {leader}); running {:?} with nemesis {faults:?}",
        opts.mode, opts.nodes, opts.time
    );

    let deadline = tokio::time::Instant::now() + opts.time;
    let regs = workload::Registers::new(opts.broken);
    let params = workload::Params {
        clients: opts.clients,
        resources: opts.resources,
        ttl: opts.ttl,
        seed: opts.seed,
        // A process that ignores expiry only shows when it pauses: pause more often then, so a
        // short run catches it every time.
        p_pause: opts
            .sim_pause
            .unwrap_or(if opts.broken == Some(workload::Broken::IgnoreExpiry) {
                0.4
            } else {
                0.08
            }),
        broken: opts.broken,
        security: cluster.security.clone(),
        os_clients,
        worker_bin: opts.self_bin.clone(),
        log_dir: opts.out.clone(),
    };
    let nem = tokio::spawn(nemesis::run(
        cluster.clone(),
        faults.clone(),
        opts.seed,
        deadline,
        timeline.clone(),
    ));
    let restoring = opts.restore && opts.register;
    if opts.restore && !opts.register {
        notes.push(
            "restore step skipped: it runs the register workload (--workload register or all)"
                .into(),
        );
    }
    let backup_path = opts.out.join(restore::BACKUP_FILE);
    let backup = restoring.then(|| {
        tokio::spawn(restore::save_midway(
            cluster.clone(),
            tokio::time::Instant::now() + opts.time / 2,
            // Also after the heal, so a run that was cut off for its whole second half still
            // gets its backup.
            deadline + Duration::from_secs(30),
            backup_path.clone(),
        ))
    });
    let deps = deploy::Deployments::new(opts.broken == Some(workload::Broken::SkipFence));
    let register_work = async {
        if opts.register {
            workload::run(
                cluster.endpoints(),
                params.clone(),
                deadline,
                rec.clone(),
                regs.clone(),
            )
            .await
        } else {
            Ok(())
        }
    };
    let deploy_work = async {
        if opts.deploy {
            deploy::run(
                cluster.endpoints(),
                params.clone(),
                deadline,
                rec.clone(),
                deps.clone(),
            )
            .await
        } else {
            Ok(Vec::new())
        }
    };
    let (work, deploy_keys) = tokio::join!(register_work, deploy_work);
    if let Err(e) = &work {
        notes.push(format!("workload: {e:#}"));
    }
    let deploy_keys = match deploy_keys {
        Ok(k) => k,
        Err(e) => {
            notes.push(format!("deploy workload: {e:#}"));
            Vec::new()
        }
    };
    let work = if notes.is_empty() { Ok(()) } else { Err(()) };
    // The nemesis heals everything once the deadline passes.
    settle(nem, &cluster, &timeline, &mut notes, "").await;
    let mut names: Vec<String> = Vec::new();
    if opts.register {
        names.extend((0..opts.resources).map(workload::resource_name));
    }
    if opts.deploy {
        names.extend((0..deploy::SLOTS).map(deploy::deploy_resource));
    }
    workload::final_reads(
        cluster.endpoints(),
        &names,
        Duration::from_secs(20),
        &rec,
        &cluster.security,
    )
    .await?;
    if opts.deploy {
        deploy::probe(
            cluster.endpoints(),
            &cluster.security,
            &deploy_keys,
            opts.ttl,
            Duration::from_secs(60),
            &rec,
        )
        .await?;
    }
    rec.flush();

    let events = rec.events();
    let mut checkers = check_run(&cluster, &names, &events).await;
    let mut restored = None;
    if let Some(saving) = backup {
        let mut v = checker::Verdict::new();
        match saving.await {
            Ok(Ok(what)) => {
                v.count("saved");
                notes.push(what);
                match restore::run_restored(
                    opts,
                    &cluster,
                    &events,
                    &faults,
                    faketime.clone(),
                    &backup_path,
                )
                .await
                {
                    Ok(phase) => restored = Some(phase),
                    Err(e) => v.violation(serde_json::json!({
                        "what": "the restored cluster could not be run",
                        "error": format!("{e:#}"),
                    })),
                }
            }
            Ok(Err(why)) => v.violation(serde_json::json!({ "what": why })),
            Err(e) => v.violation(serde_json::json!({
                "what": "the backup task failed",
                "error": e.to_string(),
            })),
        }
        checkers.insert("restore".into(), v);
    }
    let mut ops = count_ops(&events, "")?;
    ops.insert(
        "total_invocations".into(),
        events.iter().filter(|e| e.kind == Kind::Invoke).count() as u64,
    );
    let mut fault_counts = timeline.counts();
    let mut work = work;
    if let Some(phase) = restored {
        if !phase.work_ok {
            work = Err(());
        }
        checkers.extend(phase.checkers);
        ops.extend(phase.ops);
        fault_counts.extend(phase.faults);
        notes.extend(phase.notes);
    }
    let valid = checkers.values().all(|v| v.valid) && work.is_ok();
    let results = Results {
        valid,
        mode: opts.mode,
        nodes: opts.nodes,
        seed: opts.seed,
        time_s: opts.time.as_secs_f64(),
        nemesis: faults,
        clients: opts.clients,
        os_clients,
        resources: opts.resources,
        ttl_ms: opts.ttl.as_millis() as u64,
        broken: opts.broken,
        tls: opts.tls,
        ops,
        faults: fault_counts,
        checkers,
        final_registers: regs.values().into_iter().collect(),
        workloads: [("register", opts.register), ("deploy", opts.deploy)]
            .iter()
            .filter(|w| w.1)
            .map(|w| w.0.to_string())
            .collect(),
        deploys_started: deploy_keys.len() as u64,
        deploy_steps_applied: deps.applied().into_iter().collect(),
        notes,
    };
    std::fs::write(
        opts.out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    std::fs::write(
        opts.out.join("timeline.svg"),
        timeline_svg::render(&events, &timeline.events(), &results.checkers),
    )?;
    Ok(results)
}

/// Wait (30 s at most) for the nemesis, which heals everything once its deadline passes; past
/// that, stop it first (so no step of it, a membership change say, acts after the heal) and heal by
/// force. Then wait for a leader. What went wrong is noted, each note starting with `who`.
pub(crate) async fn settle(
    nem: tokio::task::JoinHandle<()>,
    cluster: &Cluster,
    timeline: &Timeline,
    notes: &mut Vec<String>,
    who: &str,
) {
    let abort = nem.abort_handle();
    if tokio::time::timeout(Duration::from_secs(30), nem)
        .await
        .is_err()
    {
        abort.abort();
        notes.push(format!(
            "{who}nemesis did not finish in time; healed by force"
        ));
        nemesis::heal_all(cluster, timeline);
    }
    if cluster.wait_leader(Duration::from_secs(20)).await.is_none() {
        notes.push(format!("{who}no leader within 20 s after healing"));
    }
}

/// Every checker over a run's history: the history's own, then `node_state` and `audit` against
/// the cluster's nodes. node_state first: it waits until every node has applied as far as the
/// leader had, so the audit checker then compares logs that hold everything acknowledged.
pub(crate) async fn check_run(
    cluster: &Cluster,
    names: &[String],
    events: &[history::Event],
) -> BTreeMap<String, checker::Verdict> {
    let mut checkers = checker::check_all(events);
    checkers.insert(
        "node_state".into(),
        node_check::check(cluster, names, events).await,
    );
    checkers.insert(
        "audit".into(),
        audit_check::check(&cluster.endpoints(), events, &cluster.security).await,
    );
    checkers
}

/// Completions per operation and outcome (`<prefix><op>.<kind>`).
pub(crate) fn count_ops(
    events: &[history::Event],
    prefix: &str,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut ops: BTreeMap<String, u64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind != Kind::Invoke) {
        let key = format!(
            "{prefix}{}.{}",
            serde_json::to_value(e.f)?.as_str().unwrap_or("?"),
            serde_json::to_value(e.kind)?.as_str().unwrap_or("?")
        );
        *ops.entry(key).or_default() += 1;
    }
    Ok(ops)
}

/// Where the `warrant` binary is: `$WARRANT_BIN`, else next to this executable (cargo puts both in
/// one target directory), else `warrant` on PATH.
pub fn find_warrant_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WARRANT_BIN") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/warrant-jepsen, or target/debug/deps/<test> for tests.
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("warrant");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    Path::new("warrant").to_path_buf()
}
