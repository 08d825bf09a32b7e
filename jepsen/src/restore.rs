//! The restore step (issue 24 item 2). Halfway through a run a backup is saved (`snapshot save`,
//! retried under the faults); after the run is checked, its cluster is stopped and a second one is
//! seeded from the backup (`snapshot restore` on every node). The register workload then runs
//! against the restored cluster under the same faults (but membership changes, which need spares),
//! with every checker on its own history, and one more: every token the restored cluster grants
//! is above every token the first cluster acknowledged, the promise `--skip-tokens` makes. A
//! restored cluster whose lease clock never starts (a backup taken after a failover) fails here:
//! its clients get no grant, so no resource is read after healing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::checker::Verdict;
use crate::cluster::{self, Cluster};
use crate::history::{Clock, Event, Kind, Op, Recorder};
use crate::nemesis::{self, Fault, Timeline};
use crate::{workload, RunOpts};

/// The backup's file name in the run's directory; the restored cluster lives in `restored/`.
pub const BACKUP_FILE: &str = "backup.wbak";
pub const RESTORED_DIR: &str = "restored";

/// A resource the admin holds while the backup is saved, so the backup always carries a live lease
/// that nobody keeps alive in the restored cluster: `restore/lease_clock` must see it expire.
pub const PROBE_RESOURCE: &str = "jepsen/restore-probe";

/// How long the restored cluster runs: a quarter of the run, 20 s to 2 min.
pub fn phase_time(run: Duration) -> Duration {
    (run / 4).clamp(Duration::from_secs(20), Duration::from_secs(120))
}

/// Save a backup of `cluster` into `path` once `at` has come, retrying (faults are running) until
/// it is saved or `deadline` passes. The answer says where it came from, or why there is none.
pub async fn save_midway(
    cluster: Arc<Cluster>,
    at: Instant,
    deadline: Instant,
    path: PathBuf,
) -> Result<String, String> {
    tokio::time::sleep_until(at).await;
    let admin = cluster.admin_client().map_err(|e| format!("{e:#}"))?;
    let mut last = String::from("no attempt");
    // Held (kept alive by its handle) until the backup is saved; a backup counts only if the probe
    // was still valid when it completed (so it was live when the backup was taken).
    let mut probe: Option<warrant::client::Lease> = None;
    while Instant::now() < deadline {
        if probe.is_none() {
            let opts = warrant::client::AcquireOptions::new(PROBE_RESOURCE, Duration::from_secs(5));
            match admin.acquire(opts).await {
                Ok(warrant::client::Acquired::Granted(lease)) => probe = Some(lease),
                Ok(other) => last = format!("probe lease: {other:?}"),
                Err(e) => last = format!("probe lease: {e}"),
            }
            if probe.is_none() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), admin.save_snapshot(&path)).await {
            Ok(Ok(_)) if !probe.as_ref().is_some_and(|p| p.is_valid()) => {
                last = "the probe lease lapsed while the backup was saved".into();
                probe = None;
            }
            Ok(Ok(saved)) => {
                return Ok(format!(
                    "backup saved mid-run from node {} at log index {} ({} bytes)",
                    saved.header.node, saved.header.log_index, saved.bytes
                ))
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer in 30 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "no backup could be saved before the run ended: {last}"
    ))
}

/// What the restored cluster's run gave: its checkers (named `restore/<checker>`), its completions
/// (`restore.<op>.<kind>`), its fault counts and notes.
pub struct Phase {
    pub checkers: BTreeMap<String, Verdict>,
    pub ops: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub notes: Vec<String>,
    /// The workload itself ran (a client that could not start is a failed run).
    pub work_ok: bool,
}

/// Stop the first cluster, start a second from `backup` and run the register workload against it.
pub async fn run_restored(
    opts: &RunOpts,
    first: &Cluster,
    first_events: &[Event],
    faults: &[Fault],
    faketime: Option<PathBuf>,
    backup: &Path,
) -> anyhow::Result<Phase> {
    first.stop_all();
    let dir = opts.out.join(RESTORED_DIR);
    std::fs::create_dir_all(&dir)?;
    // Membership changes need spare nodes, which a restored cluster (its peers = the founders)
    // does not have; every other fault runs again.
    let faults: Vec<Fault> = faults
        .iter()
        .copied()
        .filter(|f| *f != Fault::Membership)
        .collect();
    let cluster = Arc::new(Cluster::start(cluster::Setup {
        mode: opts.mode,
        nodes: opts.nodes,
        spares: 0,
        bin: &opts.bin,
        dir: &dir,
        faketime: if faults.contains(&Fault::Clock) {
            faketime
        } else {
            None
        },
        top_level: "",
        tls: opts.tls,
        restore_from: Some(backup),
    })?);
    let Some(leader) = cluster.wait_leader(Duration::from_secs(30)).await else {
        anyhow::bail!(
            "the restored cluster had no leader within 30 s; see the node logs in {}",
            dir.display()
        );
    };
    let names: Vec<String> = (0..opts.resources).map(workload::resource_name).collect();
    // The backup holds the probe lease and the first run's live leases; nobody keeps them alive
    // now, so each must expire after its ttl (the lease clock of a restored cluster runs). The
    // workload starts on free resources, as its checkers' lock model does.
    let lease_clock = restored_leases_expire(&cluster, &names, Duration::from_secs(60)).await;
    let time = phase_time(opts.time);
    eprintln!(
        "restored cluster up (leader {leader}); running the register workload for {time:?} with nemesis {faults:?}"
    );
    let clock = Clock::new();
    let rec = Recorder::new(clock, Some(&dir.join("history.jsonl")))?;
    let timeline = Timeline::new(clock, &dir.join("nemesis.jsonl"))?;
    let deadline = Instant::now() + time;
    let seed = opts.seed ^ 0x7e57_0de5;
    let params = workload::Params {
        clients: opts.clients,
        resources: opts.resources,
        ttl: opts.ttl,
        // Other instance ids than the first run's: the restored leases are theirs.
        seed,
        p_pause: opts.sim_pause.unwrap_or(0.08),
        broken: None,
        security: cluster.security.clone(),
        os_clients: 0,
        worker_bin: opts.self_bin.clone(),
        log_dir: dir.clone(),
    };
    let nem = tokio::spawn(nemesis::run(
        cluster.clone(),
        faults.clone(),
        seed,
        deadline,
        timeline.clone(),
    ));
    let mut notes = Vec::new();
    let regs = workload::Registers::new(None);
    let work = workload::run(cluster.endpoints(), params, deadline, rec.clone(), regs).await;
    if let Err(e) = &work {
        notes.push(format!("restored cluster's workload: {e:#}"));
    }
    crate::settle(nem, &cluster, &timeline, &mut notes, "restored cluster: ").await;
    workload::final_reads(
        cluster.endpoints(),
        &names,
        Duration::from_secs(20),
        &rec,
        &cluster.security,
    )
    .await?;
    rec.flush();
    let events = rec.events();
    let mut checkers = crate::check_run(&cluster, &names, &events).await;
    // Only the register workload runs here.
    checkers.retain(|name, _| !name.starts_with("deploy_"));
    checkers.insert(
        "tokens_after_restore".into(),
        tokens_after_restore(first_events, &events),
    );
    checkers.insert("lease_clock".into(), lease_clock);
    let ops = crate::count_ops(&events, "restore.")?;
    let faults = timeline
        .counts()
        .into_iter()
        .map(|(k, v)| (format!("restore.{k}"), v))
        .collect();
    Ok(Phase {
        checkers: checkers
            .into_iter()
            .map(|(k, v)| (format!("restore/{k}"), v))
            .collect(),
        ops,
        faults,
        notes,
        work_ok: work.is_ok(),
    })
}

/// Wait (at most `within`) until no resource of `names` is held in the restored cluster.
async fn restored_leases_expire(cluster: &Cluster, names: &[String], within: Duration) -> Verdict {
    let mut v = Verdict::new();
    let admin = match cluster.admin_client() {
        Ok(c) => c,
        Err(e) => {
            v.violation(json!({"what": "no admin client", "error": format!("{e:#}")}));
            return v;
        }
    };
    let deadline = Instant::now() + within;
    let probe = [PROBE_RESOURCE.to_string()];
    for name in probe.iter().chain(names) {
        let mut held_at_start = None;
        loop {
            match admin.get(name).await {
                Ok(r) if r.holder.is_none() => {
                    if held_at_start == Some(true) {
                        v.count("restored_leases_expired");
                    } else if name == PROBE_RESOURCE {
                        v.violation(json!({
                            "what": "the probe lease held while the backup was saved is not in the restored cluster",
                            "resource": name,
                        }));
                    }
                    break;
                }
                Ok(_) => {
                    held_at_start.get_or_insert(true);
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                v.violation(json!({
                    "what": "a lease restored from the backup did not expire (the restored cluster's lease clock does not run?)",
                    "resource": name, "waited_s": within.as_secs(),
                }));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    v
}

/// Every token the restored cluster granted is above every token the first cluster acknowledged
/// (tokens only grow, across a restore too); and the restored cluster granted something.
pub fn tokens_after_restore(first: &[Event], restored: &[Event]) -> Verdict {
    let granted = |events: &[Event]| -> Vec<(String, u64)> {
        events
            .iter()
            .filter(|e| e.f == Op::Acquire && e.kind == Kind::Ok)
            .filter_map(|e| e.token.map(|t| (e.resource.clone(), t)))
            .collect()
    };
    let mut v = Verdict::new();
    let before = granted(first)
        .into_iter()
        .map(|(_, t)| t)
        .max()
        .unwrap_or(0);
    let after = granted(restored);
    if after.is_empty() {
        v.violation(json!({
            "what": "the restored cluster acknowledged no grant (its lease clock never started?)",
        }));
    }
    for (resource, token) in after {
        v.count("grants_checked");
        if token <= before {
            v.violation(json!({
                "what": "a token the first cluster may have issued was granted again after the restore",
                "resource": resource, "token": token, "highest_before_restore": before,
            }));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(resource: &str, token: u64) -> Event {
        let mut e = Event::new(Kind::Ok, Op::Acquire, 1, resource);
        e.token = Some(token);
        e
    }

    #[test]
    fn a_token_reissued_after_a_restore_is_a_violation() {
        let first = [grant("r0", 5), grant("r1", 9)];
        assert!(tokens_after_restore(&first, &[grant("r0", 1_000_010)]).valid);
        let v = tokens_after_restore(&first, &[grant("r1", 1_000_010), grant("r0", 7)]);
        assert!(!v.valid);
        assert_eq!(v.counts["violations"], 1);
        assert!(
            !tokens_after_restore(&first, &[]).valid,
            "no grant at all fails"
        );
    }
}
