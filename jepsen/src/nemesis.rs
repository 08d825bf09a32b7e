//! Nemeses: faults injected on a seeded schedule, each logged to nemesis.jsonl with start and end on
//! the harness clock.
//!
//! - `kill`: SIGKILL a node (the leader with probability 0.6), keep it down 1–4 s, restart it on the
//!   same data directory.
//! - `pause`: SIGSTOP a node (the leader with probability 0.5) for 1–4 s, then SIGCONT: a GC pause or
//!   a frozen VM; its sockets stay open but it answers nothing.
//! - `partition` (netns mode only): nft drop rules inside the namespaces, either isolating the leader
//!   or splitting the nodes into a random minority and majority, for 2–5 s; then heal.
//! - `mixed`: each step picks one of the above at random.
//!
//! The schedule (which fault, waits, durations, random choices) comes from `--seed`; which node is
//! the leader at a given moment depends on the run, so a seed reproduces the schedule, not the run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::cluster::{Cluster, Mode};
use crate::history::{wall_ms, Clock};

/// A fault kind a run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    Kill,
    Pause,
    Partition,
}

impl Fault {
    /// Parse `--nemesis`: a comma list of kill, pause, partition, or mixed (all), or none.
    pub fn parse_list(s: &str, mode: Mode) -> anyhow::Result<Vec<Fault>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "none" => {}
                "kill" => out.push(Fault::Kill),
                "pause" => out.push(Fault::Pause),
                "partition" => out.push(Fault::Partition),
                "mixed" | "all" => out.extend([Fault::Kill, Fault::Pause, Fault::Partition]),
                other => anyhow::bail!(
                    "--nemesis: unknown fault {other:?} (kill, pause, partition, mixed, none)"
                ),
            }
        }
        if mode == Mode::Local && out.contains(&Fault::Partition) {
            if s.split(',').any(|p| p.trim() == "partition") {
                anyhow::bail!("--nemesis partition needs --mode netns");
            }
            // `mixed` in local mode: partitions are not available there.
            out.retain(|f| *f != Fault::Partition);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// One line of nemesis.jsonl.
#[derive(Debug, Clone, Serialize)]
pub struct NemesisEvent {
    /// "start" or "end" of a fault, "heal-all" at the end, "error" if an action failed.
    pub phase: &'static str,
    pub fault: Option<Fault>,
    pub nodes: Vec<u64>,
    /// For partitions: the other side.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other: Vec<u64>,
    pub leader_before: Option<u64>,
    pub detail: String,
    pub t_ns: u64,
    pub wall_ms: u64,
}

/// The events so far and the file they are streamed to.
type TimelineState = (Vec<NemesisEvent>, Option<BufWriter<File>>);

/// The timeline, streamed to a file.
#[derive(Clone)]
pub struct Timeline {
    clock: Clock,
    inner: Arc<Mutex<TimelineState>>,
}

impl Timeline {
    pub fn new(clock: Clock, path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            clock,
            inner: Arc::new(Mutex::new((
                Vec::new(),
                Some(BufWriter::new(File::create(path)?)),
            ))),
        })
    }

    fn log(
        &self,
        phase: &'static str,
        fault: Option<Fault>,
        nodes: Vec<u64>,
        other: Vec<u64>,
        leader_before: Option<u64>,
        detail: String,
    ) {
        let ev = NemesisEvent {
            phase,
            fault,
            nodes,
            other,
            leader_before,
            detail,
            t_ns: self.clock.now_ns(),
            wall_ms: wall_ms(),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(out) = inner.1.as_mut() {
            if let Ok(line) = serde_json::to_string(&ev) {
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
        inner.0.push(ev);
    }

    pub fn events(&self) -> Vec<NemesisEvent> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Faults started, per kind.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for e in self.events() {
            if e.phase == "start" {
                if let Some(f) = e.fault {
                    *out.entry(format!("{f:?}").to_lowercase()).or_default() += 1;
                }
            } else if e.phase == "error" {
                *out.entry("errors".to_string()).or_default() += 1;
            }
        }
        out
    }
}

/// Sleep until `d` passes or `deadline`, whichever is first; false if the deadline was reached.
async fn sleep_before(d: Duration, deadline: tokio::time::Instant) -> bool {
    let until = (tokio::time::Instant::now() + d).min(deadline);
    tokio::time::sleep_until(until).await;
    tokio::time::Instant::now() < deadline
}

/// Run faults from `faults` until `deadline`, then heal everything.
pub async fn run(
    cluster: Arc<Cluster>,
    faults: Vec<Fault>,
    seed: u64,
    deadline: tokio::time::Instant,
    timeline: Timeline,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6e656d65_73697321);
    // Let the workload get going before the first fault.
    let mut first = true;
    // Bounded: each step takes ≥ 1 s, and the run is bounded by the deadline.
    for _step in 0..100_000u32 {
        if faults.is_empty() {
            break;
        }
        let wait = if first {
            Duration::from_millis(rng.gen_range(2000..4000))
        } else {
            Duration::from_millis(rng.gen_range(1000..3500))
        };
        first = false;
        if !sleep_before(wait, deadline).await {
            break;
        }
        let fault = *faults.choose(&mut rng).expect("faults is not empty");
        let hold = Duration::from_millis(rng.gen_range(1000..4000));
        let leader = cluster.leader().await;
        let ids = cluster.ids();
        let pick = |rng: &mut ChaCha8Rng, p_leader: f64| -> u64 {
            let coin = rng.gen_bool(p_leader);
            let any = *ids.choose(rng).expect("at least one node");
            match leader {
                Some(l) if coin => l,
                _ => any,
            }
        };
        match fault {
            Fault::Kill => {
                let id = pick(&mut rng, 0.6);
                let killed = cluster.kill(id);
                timeline.log(
                    "start",
                    Some(fault),
                    vec![id],
                    vec![],
                    leader,
                    format!(
                        "kill -9 node {id}{}",
                        if killed { "" } else { " (was not running)" }
                    ),
                );
                sleep_before(hold, deadline).await;
                match cluster.start_node(id) {
                    Ok(()) => timeline.log(
                        "end",
                        Some(fault),
                        vec![id],
                        vec![],
                        None,
                        format!("restarted node {id}"),
                    ),
                    Err(e) => timeline.log(
                        "error",
                        Some(fault),
                        vec![id],
                        vec![],
                        None,
                        format!("restart node {id}: {e:#}"),
                    ),
                }
            }
            Fault::Pause => {
                let id = pick(&mut rng, 0.5);
                cluster.signal(id, Signal::SIGSTOP);
                timeline.log(
                    "start",
                    Some(fault),
                    vec![id],
                    vec![],
                    leader,
                    format!("SIGSTOP node {id}"),
                );
                sleep_before(hold, deadline).await;
                cluster.signal(id, Signal::SIGCONT);
                timeline.log(
                    "end",
                    Some(fault),
                    vec![id],
                    vec![],
                    None,
                    format!("SIGCONT node {id}"),
                );
            }
            Fault::Partition => {
                let (a, b, how) = match leader {
                    Some(l) if rng.gen_bool(0.5) => (
                        vec![l],
                        ids.iter().copied().filter(|&i| i != l).collect(),
                        "isolate leader",
                    ),
                    _ => {
                        let mut shuffled = ids.clone();
                        shuffled.shuffle(&mut rng);
                        let minority = (ids.len() - 1) / 2;
                        let (a, b) = shuffled.split_at(minority.max(1));
                        (a.to_vec(), b.to_vec(), "minority | majority")
                    }
                };
                let hold = hold + Duration::from_millis(1000);
                match cluster.partition(&a, &b) {
                    Ok(()) => {
                        timeline.log(
                            "start",
                            Some(fault),
                            a.clone(),
                            b.clone(),
                            leader,
                            how.to_string(),
                        );
                        sleep_before(hold, deadline).await;
                        let r = cluster.heal();
                        timeline.log(
                            if r.is_ok() { "end" } else { "error" },
                            Some(fault),
                            a,
                            b,
                            None,
                            format!(
                                "heal{}",
                                r.err().map(|e| format!(": {e:#}")).unwrap_or_default()
                            ),
                        );
                    }
                    Err(e) => timeline.log(
                        "error",
                        Some(fault),
                        a,
                        b,
                        leader,
                        format!("partition: {e:#}"),
                    ),
                }
            }
        }
    }
    heal_all(&cluster, &timeline);
}

/// Resume, restart and reconnect every node.
pub fn heal_all(cluster: &Cluster, timeline: &Timeline) {
    let mut detail = Vec::new();
    if let Err(e) = cluster.heal() {
        detail.push(format!("heal partitions: {e:#}"));
    }
    for id in cluster.ids() {
        if cluster.is_running(id) {
            cluster.signal(id, Signal::SIGCONT);
        } else {
            match cluster.start_node(id) {
                Ok(()) => detail.push(format!("restarted node {id}")),
                Err(e) => detail.push(format!("restart node {id}: {e:#}")),
            }
        }
    }
    timeline.log(
        "heal-all",
        None,
        cluster.ids(),
        vec![],
        None,
        detail.join("; "),
    );
}
