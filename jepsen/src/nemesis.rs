//! Nemeses: faults injected on a seeded schedule, each logged to nemesis.jsonl with start and end on
//! the harness clock.
//!
//! - `kill`: SIGKILL a node (the leader with probability 0.6), keep it down 1–4 s, restart it on the
//!   same data directory.
//! - `pause`: SIGSTOP a node (the leader with probability 0.5) for 1–4 s, then SIGCONT: a GC pause or
//!   a frozen VM; its sockets stay open but it answers nothing.
//! - `partition` (netns mode only): nft drop rules inside the namespaces, either isolating the leader
//!   or splitting the nodes into a random minority and majority, for 2–5 s; then heal.
//! - `bridge` (netns): two halves that cannot reach each other, and one node that reaches both.
//! - `ring` (netns, 4+ nodes): nodes in a random ring, each reaching only its nearest neighbours —
//!   every node sees a majority, but no two neighbours see the same one.
//! - `loss` (netns): drop 10–50 % of the packets on the links of one node (the leader with
//!   probability 0.5) or of every node, at random per packet (nft `numgen random`; this kernel has no
//!   `sch_netem`), for 2–5 s; then heal. Heartbeats, votes, replication and client calls all suffer.
//! - `clock`: jump one node's wall clock (the leader with probability 0.5) by ±2 s … ±5 min for
//!   2–5 s, then back; libfaketime moves CLOCK_REALTIME only, the monotonic clock keeps running.
//! - `membership`: grow the cluster by two voters and shrink it back (3 → 5 → 3, or 5 → 7 → 5) under
//!   load: start the two spare nodes, `add-node` each (learner, catch-up, promotion), hold 1–4 s,
//!   `remove-node` both (a hand-over when one of them leads by then), stop them and wipe their data.
//! - `client-pause`: SIGSTOP one of the fenced-register clients that run as their own OS process
//!   (`--os-clients`) for 2.5–4.5 s (p = 0.7; longer than the default 2 s ttl) or 0.3–1.5 s, then SIGCONT: its keepalives,
//!   timers and calls in flight stop wherever the signal lands, also between its validity check and
//!   its write, so only the fence can stop the write it makes on waking.
//! - `wipe`: a follower loses its disk: kill -9 it (never node 1, which bootstraps), delete its data
//!   directory and restart it on its old config, with p = 0.3 while another follower is down too
//!   (the scenario where a blank vote would elect a node missing acknowledged grants), held
//!   1–4 s. Then the other node returns, and Warrant must refuse the blank one ("its data was lost
//!   or wiped", DESIGN rule 6) within 20 s, else the step is an error; then the nemesis replaces
//!   it as the operator's page says: `remove-node`, empty its directory, start it, `add-node`.
//! - `mixed`: each step picks one of the above at random. In any schedule with both kinds, with
//!   p = 0.25 a step runs two at once, a network fault (partition, bridge, ring, loss) with a
//!   process fault (kill, pause, clock, client-pause), each with its own hold (`combined` in the
//!   timeline).
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
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, Mode};
use crate::history::{wall_ms, Clock};

/// A fault kind a run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    Kill,
    Pause,
    Partition,
    Bridge,
    Ring,
    Clock,
    Membership,
    /// SIGSTOP a client process (a fenced-register client in its own OS process), then SIGCONT.
    #[serde(rename = "client-pause")]
    ClientPause,
    /// Random packet loss on some nodes' links.
    Loss,
    /// A follower loses its disk: kill -9, data directory deleted, restarted on the same config.
    Wipe,
}

/// Spare nodes the membership nemesis adds and removes.
pub const SPARES: u64 = 2;

impl Fault {
    fn is_network(self) -> bool {
        matches!(
            self,
            Fault::Partition | Fault::Bridge | Fault::Ring | Fault::Loss
        )
    }
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
                "bridge" => out.push(Fault::Bridge),
                "ring" => out.push(Fault::Ring),
                "clock" => out.push(Fault::Clock),
                "membership" => out.push(Fault::Membership),
                "client-pause" => out.push(Fault::ClientPause),
                "loss" => out.push(Fault::Loss),
                "wipe" => out.push(Fault::Wipe),
                "mixed" | "all" => out.extend([
                    Fault::Kill,
                    Fault::Pause,
                    Fault::Partition,
                    Fault::Bridge,
                    Fault::Ring,
                    Fault::Clock,
                    Fault::Membership,
                    Fault::ClientPause,
                    Fault::Loss,
                    Fault::Wipe,
                ]),
                other => anyhow::bail!(
                    "--nemesis: unknown fault {other:?} (kill, pause, partition, bridge, ring, loss, clock, membership, client-pause, wipe, mixed, none)"
                ),
            }
        }
        if mode == Mode::Proxy {
            // Proxies cut connections; they cannot drop single packets.
            if s.split(',').any(|p| p.trim() == "loss") {
                anyhow::bail!(
                    "--nemesis loss needs --mode netns (proxies cannot drop single packets)"
                );
            }
            out.retain(|f| *f != Fault::Loss);
        }
        if mode == Mode::Local && out.iter().any(|f| f.is_network()) {
            if let Some(p) = s
                .split(',')
                .map(str::trim)
                .find(|p| ["partition", "bridge", "ring", "loss"].contains(p))
            {
                anyhow::bail!("--nemesis {p} needs --mode netns (or proxy, but for loss)");
            }
            // `mixed` in local mode: partitions are not available there.
            out.retain(|f| !f.is_network());
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// One line of nemesis.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NemesisEvent {
    /// "start" or "end" of a fault, "heal-all" at the end, "error" if an action failed.
    pub phase: String,
    pub fault: Option<Fault>,
    pub nodes: Vec<u64>,
    /// For partitions: the other side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
            phase: phase.to_string(),
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
                    let name = serde_json::to_value(f)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| format!("{f:?}").to_lowercase());
                    *out.entry(name).or_default() += 1;
                }
            } else if e.phase == "combined" {
                *out.entry("combined".to_string()).or_default() += 1;
            } else if e.phase == "error" {
                *out.entry("errors".to_string()).or_default() += 1;
            }
        }
        out
    }
}

/// How late a node may see a change of its clock offset (libfaketime's cache of 1 s, checked only
/// when it has expired).
const CLOCK_LAG: Duration = Duration::from_millis(2_100);

/// A grudge: for each node, the nodes it must not reach (kept symmetric).
pub type Grudge = BTreeMap<u64, Vec<u64>>;

fn add_cut(grudge: &mut Grudge, a: u64, b: u64) {
    grudge.entry(a).or_default().push(b);
    grudge.entry(b).or_default().push(a);
}

/// Every node of `a` cut from every node of `b`, both ways.
pub fn bipartite(a: &[u64], b: &[u64]) -> Grudge {
    let mut grudge = Grudge::new();
    for &x in a {
        for &y in b {
            add_cut(&mut grudge, x, y);
        }
    }
    grudge
}

/// Install `grudge`, log it, hold it (1 s longer than `hold`), heal, log the heal.
#[allow(clippy::too_many_arguments)]
async fn hold_cut(
    cluster: &Cluster,
    timeline: &Timeline,
    fault: Fault,
    grudge: &Grudge,
    a: Vec<u64>,
    b: Vec<u64>,
    leader: Option<u64>,
    how: String,
    hold: Duration,
    deadline: tokio::time::Instant,
) {
    if let Err(e) = cluster.cut(grudge) {
        timeline.log("error", Some(fault), a, b, leader, format!("{how}: {e:#}"));
        return;
    }
    timeline.log("start", Some(fault), a.clone(), b.clone(), leader, how);
    sleep_before(hold + Duration::from_millis(1000), deadline).await;
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

/// Two halves joined only through one node (`order` is a shuffled node list): returns the grudge,
/// the halves and the bridge node.
pub fn bridge(order: &[u64]) -> (Grudge, Vec<u64>, u64, Vec<u64>) {
    let mid = order.len() / 2;
    let (a, rest) = order.split_at(mid);
    let (bridge, b) = rest.split_first().expect("at least one node");
    (bipartite(a, b), a.to_vec(), *bridge, b.to_vec())
}

/// The nodes in ring `order`, each reaching only the nearest `h` on either side, with `h` the
/// smallest that still lets every node see a majority (itself included). Empty for fewer than 4
/// nodes, where such a ring cuts nothing.
pub fn ring(order: &[u64]) -> Grudge {
    let n = order.len();
    let h = (n / 2).div_ceil(2);
    let mut grudge = Grudge::new();
    for i in 0..n {
        for j in i + 1..n {
            let d = (j - i).min(n - (j - i));
            if d > h {
                add_cut(&mut grudge, order[i], order[j]);
            }
        }
    }
    grudge
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
        // Sometimes two faults at once: a network fault and a process fault, each on its own
        // schedule drawn from this one.
        let partners = partners(fault, &faults);
        let partner = if !partners.is_empty() && rng.gen_bool(P_COMBINED) {
            partners.choose(&mut rng).copied()
        } else {
            None
        };
        match partner {
            Some(other) => {
                let mut r1 = ChaCha8Rng::seed_from_u64(rng.gen());
                let mut r2 = ChaCha8Rng::seed_from_u64(rng.gen());
                let hold2 = Duration::from_millis(rng.gen_range(1000..4000));
                timeline.log(
                    "combined",
                    None,
                    vec![],
                    vec![],
                    leader,
                    format!("{} and {} at once", name(fault), name(other)),
                );
                tokio::join!(
                    inject(&cluster, &timeline, fault, &mut r1, leader, hold, deadline),
                    inject(&cluster, &timeline, other, &mut r2, leader, hold2, deadline),
                );
            }
            None => inject(&cluster, &timeline, fault, &mut rng, leader, hold, deadline).await,
        }
    }
    heal_all(&cluster, &timeline);
}

/// How often a step of a schedule with both kinds combines a network and a process fault.
const P_COMBINED: f64 = 0.25;

/// A fault's name as in `--nemesis` and results.json.
pub fn name(f: Fault) -> String {
    serde_json::to_value(f)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{f:?}").to_lowercase())
}

/// The faults of `faults` that may run at the same time as `f`: a process fault (kill, pause,
/// clock, client-pause) with a network fault (partition, bridge, ring, loss), either way round.
/// Membership changes carry their own crash and are never combined.
pub fn partners(f: Fault, faults: &[Fault]) -> Vec<Fault> {
    let process = |f: &Fault| {
        matches!(
            f,
            Fault::Kill | Fault::Pause | Fault::Clock | Fault::ClientPause
        )
    };
    faults
        .iter()
        .copied()
        .filter(|g| (process(&f) && g.is_network()) || (f.is_network() && process(g)))
        .collect()
}

/// Inject `fault`, hold it and heal it (or log why it could not be injected).
async fn inject(
    cluster: &Cluster,
    timeline: &Timeline,
    fault: Fault,
    rng: &mut ChaCha8Rng,
    leader: Option<u64>,
    hold: Duration,
    deadline: tokio::time::Instant,
) {
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
        Fault::Loss => {
            let (nodes, how) = if rng.gen_bool(0.5) {
                (ids.clone(), "every node".to_string())
            } else {
                let id = pick(rng, 0.5);
                (vec![id], format!("node {id}"))
            };
            let percent = rng.gen_range(10..=50u32);
            match cluster.lossy(&nodes, percent) {
                Ok(()) => {
                    timeline.log(
                        "start",
                        Some(fault),
                        nodes.clone(),
                        vec![],
                        leader,
                        format!("drop {percent} % of the packets of {how}"),
                    );
                    sleep_before(hold + Duration::from_millis(1000), deadline).await;
                    let r = cluster.heal();
                    timeline.log(
                        if r.is_ok() { "end" } else { "error" },
                        Some(fault),
                        nodes,
                        vec![],
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
                    nodes,
                    vec![],
                    leader,
                    // Rules already installed on other nodes must not outlive the step.
                    format!(
                        "loss: {e:#}{}",
                        cluster
                            .heal()
                            .err()
                            .map(|h| format!("; heal: {h:#}"))
                            .unwrap_or_default()
                    ),
                ),
            }
        }
        Fault::ClientPause => {
            // Mostly past the lease ttl (default 2 s), so its lease expires and the resource
            // moves on while it is stopped; sometimes shorter than that. Drawn first, so the
            // schedule does not depend on which workers are still running.
            let stop = if rng.gen_bool(0.7) {
                Duration::from_millis(rng.gen_range(2500..4500))
            } else {
                Duration::from_millis(rng.gen_range(300..1500))
            };
            let workers = crate::cluster::worker_ids();
            let Some(&p) = workers.choose(rng) else {
                // The client processes have finished (the run is ending).
                return;
            };
            if !crate::cluster::signal_worker(p, Signal::SIGSTOP) {
                return;
            }
            timeline.log(
                "start",
                Some(fault),
                vec![],
                vec![],
                leader,
                format!("SIGSTOP client process {p}"),
            );
            sleep_before(stop, deadline).await;
            crate::cluster::signal_worker(p, Signal::SIGCONT);
            timeline.log(
                "end",
                Some(fault),
                vec![],
                vec![],
                None,
                format!("SIGCONT client process {p}"),
            );
        }
        Fault::Wipe => wipe(cluster, timeline, rng, leader, hold, deadline).await,
        Fault::Membership => {
            // Half the changes get a crash in the middle: a founding node (the leader with
            // p = 0.5) is killed 0–1.2 s after the first spare starts — during its catch-up, its
            // promotion (joint consensus), or the second add — and restarted 1–3 s later.
            let crash = rng.gen_bool(0.5).then(|| Crash {
                after: Duration::from_millis(rng.gen_range(0..1200)),
                victim: pick(rng, 0.5),
                down: Duration::from_millis(rng.gen_range(1000..3000)),
            });
            membership(cluster, timeline, leader, hold, deadline, crash).await
        }
        Fault::Clock => {
            let id = pick(rng, 0.5);
            let size = rng.gen_range(2..=300i64);
            let offset = if rng.gen_bool(0.5) { size } else { -size };
            match cluster.set_clock(id, offset) {
                Ok(()) => {
                    timeline.log(
                        "start",
                        Some(fault),
                        vec![id],
                        vec![],
                        leader,
                        format!("node {id} wall clock {offset:+} s (monotonic unchanged)"),
                    );
                    // libfaketime re-reads the offset up to ~2 s late: hold long enough that
                    // the jump is in effect for at least the drawn hold.
                    sleep_before(hold + CLOCK_LAG, deadline).await;
                    let r = cluster.set_clock(id, 0);
                    timeline.log(
                        if r.is_ok() { "end" } else { "error" },
                        Some(fault),
                        vec![id],
                        vec![],
                        None,
                        match r {
                            Ok(()) => format!("node {id} wall clock back in step"),
                            Err(e) => format!("reset clock of node {id}: {e:#}"),
                        },
                    );
                }
                Err(e) => timeline.log(
                    "error",
                    Some(fault),
                    vec![id],
                    vec![],
                    leader,
                    format!("clock: {e:#}"),
                ),
            }
        }
        Fault::Kill => {
            let id = pick(rng, 0.6);
            kill_and_restart(cluster, timeline, id, leader, "", hold, Some(deadline)).await;
        }
        Fault::Pause => {
            let id = pick(rng, 0.5);
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
        Fault::Bridge | Fault::Ring => {
            let mut order = ids.clone();
            order.shuffle(rng);
            // Fewer than 4 nodes make no ring: a bridge runs instead, and is logged as one.
            let fault = if order.len() >= 4 {
                fault
            } else {
                Fault::Bridge
            };
            let (grudge, a, b, how) = if fault == Fault::Ring {
                let how = format!(
                    "ring {}: each node reaches only its neighbours",
                    order
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join("-")
                );
                (ring(&order), order.clone(), vec![], how)
            } else {
                let (grudge, a, mid, b) = bridge(&order);
                let how = format!("bridge: {a:?} | {mid} | {b:?} (node {mid} reaches both)");
                (grudge, a, b, how)
            };
            hold_cut(
                cluster, timeline, fault, &grudge, a, b, leader, how, hold, deadline,
            )
            .await;
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
                    shuffled.shuffle(rng);
                    let minority = (ids.len() - 1) / 2;
                    let (a, b) = shuffled.split_at(minority.max(1));
                    (a.to_vec(), b.to_vec(), "minority | majority")
                }
            };
            let grudge = bipartite(&a, &b);
            let how = how.to_string();
            hold_cut(
                cluster, timeline, fault, &grudge, a, b, leader, how, hold, deadline,
            )
            .await;
        }
    }
}

/// Grow by the spares and shrink back: see the module docs. Logged as one fault whose `nodes` are
/// the spares that became voters; an add or remove that fails is logged as an error, and whatever
/// was added is removed again.
/// kill -9 node `id`, keep it down for `down` (cut short at `deadline`, if given), restart it on
/// its data directory; the timeline gets the start (with `why` after "kill -9 node N") and the end.
async fn kill_and_restart(
    cluster: &Cluster,
    timeline: &Timeline,
    id: u64,
    leader: Option<u64>,
    why: &str,
    down: Duration,
    deadline: Option<tokio::time::Instant>,
) {
    let fault = Some(Fault::Kill);
    let killed = cluster.kill(id);
    timeline.log(
        "start",
        fault,
        vec![id],
        vec![],
        leader,
        format!(
            "kill -9 node {id}{why}{}",
            if killed { "" } else { " (was not running)" }
        ),
    );
    match deadline {
        Some(d) => {
            sleep_before(down, d).await;
        }
        None => tokio::time::sleep(down).await,
    }
    match cluster.start_node(id) {
        Ok(()) => timeline.log(
            "end",
            fault,
            vec![id],
            vec![],
            None,
            format!("restarted node {id}"),
        ),
        Err(e) => timeline.log(
            "error",
            fault,
            vec![id],
            vec![],
            None,
            format!("restart node {id}: {e:#}"),
        ),
    }
}

/// The `wipe` fault: see the module docs.
async fn wipe(
    cluster: &Cluster,
    timeline: &Timeline,
    rng: &mut ChaCha8Rng,
    leader: Option<u64>,
    hold: Duration,
    deadline: tokio::time::Instant,
) {
    let fault = Some(Fault::Wipe);
    // Drawn first, so the schedule does not depend on the run.
    let also_down = rng.gen_bool(0.3);
    let r: u64 = rng.gen();
    // A replacement takes seconds (removal, catch-up, promotion): not one the run's end would cut.
    if deadline.saturating_duration_since(tokio::time::Instant::now()) < Duration::from_secs(25) {
        return;
    }
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| Some(*id) != leader && *id != 1 && cluster.is_running(*id))
        .collect();
    let Some(&victim) = followers.get((r % followers.len().max(1) as u64) as usize) else {
        return;
    };
    let other = also_down
        .then(|| {
            cluster
                .ids()
                .into_iter()
                .find(|id| Some(*id) != leader && *id != victim && cluster.is_running(*id))
        })
        .flatten();
    cluster.kill(victim);
    if let Some(o) = other {
        cluster.kill(o);
    }
    let mut trouble = Vec::new();
    if let Err(e) = cluster.wipe(victim) {
        trouble.push(format!("wipe node {victim}: {e:#}"));
    }
    let log_from = std::fs::metadata(&cluster.node(victim).log).map_or(0, |m| m.len());
    if let Err(e) = cluster.start_node(victim) {
        trouble.push(format!("restart node {victim}: {e:#}"));
    }
    timeline.log(
        "start",
        fault,
        vec![victim],
        other.into_iter().collect(),
        leader,
        format!(
            "kill -9 node {victim}, delete its data directory, restart it{}",
            other.map_or(String::new(), |o| format!(" while node {o} is down"))
        ),
    );
    // The window: the blank node is up, maybe with another node down, so a blank vote would be
    // the only way to elect anyone. It grants none (the checkers see whether anything was lost).
    sleep_before(hold, deadline).await;
    if let Some(o) = other {
        if let Err(e) = cluster.start_node(o) {
            trouble.push(format!("restart node {o}: {e:#}"));
        }
    }
    // Warrant must find it out once a leader confirmed by a quorum lists it as a voter (with
    // another node down, the leader could not confirm, so this waits for that node's return).
    let refused = wait_for_log(
        &cluster.node(victim).log,
        log_from,
        "its data was lost or wiped",
        Duration::from_secs(20),
    )
    .await;
    if !refused {
        trouble.push(format!(
            "node {victim} restarted blank was not refused within 20 s: it may vote blank"
        ));
    }
    // The replacement, as the operator's page says.
    if let Err(e) = replace(cluster, victim).await {
        trouble.push(format!("replace node {victim}: {e:#}"));
    }
    timeline.log(
        if trouble.is_empty() { "end" } else { "error" },
        fault,
        vec![victim],
        vec![],
        None,
        if trouble.is_empty() {
            format!("node {victim} refused, then removed, emptied and added again")
        } else {
            trouble.join("; ")
        },
    );
}

/// Wait (bounded) until `line` appears in the log at `path` past byte `from`.
async fn wait_for_log(path: &Path, from: u64, line: &str, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    loop {
        let found = std::fs::read(path)
            .ok()
            .and_then(|b| {
                b.get(from as usize..)
                    .map(|t| String::from_utf8_lossy(t).contains(line))
            })
            .unwrap_or(false);
        if found {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replace a voter that lost its data: remove it, stop it, empty its data directory, start it,
/// add it again (learner, catch-up, promotion). Each call is retried a bounded number of times
/// (a leader change or a membership change in progress needs a moment).
async fn replace(cluster: &Cluster, id: u64) -> anyhow::Result<()> {
    let admin = cluster.admin_client()?;
    let remove = warrant::proto::RemoveNodeRequest {
        node_id: id,
        principal: String::new(),
    };
    let add = add_voter(cluster, id);
    retry(|| admin.remove_node(remove.clone())).await?;
    cluster.kill(id);
    cluster.wipe(id)?;
    cluster.start_node(id)?;
    retry(|| admin.add_node(add.clone())).await?;
    Ok(())
}

/// `add-node` of node `id` as a voter at its addresses (learner, catch-up within 15 s, promotion).
fn add_voter(cluster: &Cluster, id: u64) -> warrant::proto::AddNodeRequest {
    let node = cluster.node(id);
    warrant::proto::AddNodeRequest {
        node_id: id,
        raft_address: node.raft_addr.clone(),
        client_address: node.client_addr.clone(),
        catch_up_timeout_ms: 15_000,
        principal: String::new(),
        learner: false,
    }
}

/// Up to 10 tries, 0.5–2 s apart.
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    mut call: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let mut last = String::new();
    for attempt in 0..10u64 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * attempt.min(4))).await;
        }
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => last = e.to_string(),
        }
    }
    anyhow::bail!("{last}")
}

/// A founding node killed in the middle of a membership change.
// (`membership` below: grow by the spares and shrink back, see the module docs.)
struct Crash {
    /// After the first spare starts.
    after: Duration,
    /// Drawn among the founding nodes (the leader at draw time with p = 0.5).
    victim: u64,
    down: Duration,
}

/// A membership change, with a crash in the middle of it if `crash` says so.
async fn membership(
    cluster: &Cluster,
    timeline: &Timeline,
    leader: Option<u64>,
    hold: Duration,
    deadline: tokio::time::Instant,
    crash: Option<Crash>,
) {
    let (began_tx, began) = tokio::sync::oneshot::channel::<()>();
    let change = membership_change(cluster, timeline, leader, hold, deadline, began_tx);
    let crash = async {
        // Only once the change has begun (it may be skipped).
        let (Some(c), Ok(())) = (crash, began.await) else {
            return;
        };
        tokio::time::sleep(c.after).await;
        let leader = cluster.leader().await;
        let why = " during a membership change";
        kill_and_restart(cluster, timeline, c.victim, leader, why, c.down, None).await;
    };
    tokio::join!(change, crash);
}

async fn membership_change(
    cluster: &Cluster,
    timeline: &Timeline,
    leader: Option<u64>,
    hold: Duration,
    deadline: tokio::time::Instant,
    began: tokio::sync::oneshot::Sender<()>,
) {
    let fault = Some(Fault::Membership);
    let spares = cluster.spare_ids();
    if let Some(id) = spares.iter().find(|&&id| cluster.is_running(id)) {
        timeline.log(
            "error",
            fault,
            vec![*id],
            vec![],
            leader,
            format!("skipped: spare node {id} is still a voter from an earlier step"),
        );
        return;
    }
    // A step takes seconds (catch-up, promotion, two removals): do not start one the run's end
    // would cut short, since the final checks begin right after it.
    if deadline.saturating_duration_since(tokio::time::Instant::now()) < Duration::from_secs(20) {
        return;
    }
    let admin = match cluster.admin_client() {
        Ok(c) => c,
        Err(e) => {
            timeline.log(
                "error",
                fault,
                spares,
                vec![],
                leader,
                format!("admin client: {e:#}"),
            );
            return;
        }
    };
    let before = cluster.ids().len();
    let mut added = Vec::new();
    let mut trouble = Vec::new();
    let _ = began.send(());
    for &id in &spares {
        if let Err(e) = cluster.start_node(id) {
            trouble.push(format!("start node {id}: {e:#}"));
            break;
        }
        match admin.add_node(add_voter(cluster, id)).await {
            Ok(_) => added.push(id),
            Err(e) => {
                // It may have become a voter even so (an answer lost to a leader change): remove
                // it below like the others.
                trouble.push(format!("add node {id}: {e}"));
                added.push(id);
                break;
            }
        }
    }
    if trouble.is_empty() {
        timeline.log(
            "start",
            fault,
            added.clone(),
            vec![],
            leader,
            format!(
                "{before} → {} voters: added nodes {added:?}",
                before + added.len()
            ),
        );
        sleep_before(hold, deadline).await;
    } else {
        timeline.log(
            "error",
            fault,
            added.clone(),
            vec![],
            leader,
            trouble.join("; "),
        );
    }
    // A spare that leads by now goes last (one hand-over, not two).
    let now_leader = cluster.leader().await;
    let mut order = added.clone();
    order.sort_by_key(|id| Some(*id) == now_leader);
    let mut removed = Vec::new();
    for &id in &order {
        let request = warrant::proto::RemoveNodeRequest {
            node_id: id,
            principal: String::new(),
        };
        // Removing a node that is not (or no longer) a member answers OK, so retrying is safe; a
        // change still in progress (ABORTED) or a leader change needs a moment. Bounded: 8 tries.
        let mut last = None;
        for attempt in 0..8u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt.min(4)))).await;
            }
            match admin.remove_node(request.clone()).await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e.to_string()),
            }
        }
        match last {
            None => removed.push(id),
            Some(e) => trouble.push(format!("remove node {id}: {e}")),
        }
    }
    // Only a spare that is not a voter may be stopped and wiped: a voter wiped and later restarted
    // would rejoin with neither its vote nor its log, which breaks Raft itself (the harness's fault,
    // not Warrant's). One whose removal failed keeps running as a voter; later steps skip.
    for &id in &spares {
        if added.contains(&id) && !removed.contains(&id) {
            continue;
        }
        cluster.kill(id);
        if let Err(e) = cluster.wipe(id) {
            trouble.push(format!("wipe node {id}: {e:#}"));
        }
    }
    let detail = format!(
        "{} → {before} voters: removed nodes {removed:?}, stopped and wiped{}",
        before + added.len(),
        if trouble.is_empty() {
            String::new()
        } else {
            format!("; {}", trouble.join("; "))
        }
    );
    let phase = if removed.len() == added.len() {
        "end"
    } else {
        "error"
    };
    timeline.log(phase, fault, added, vec![], None, detail);
}

/// Resume, restart and reconnect every node.
pub fn heal_all(cluster: &Cluster, timeline: &Timeline) {
    let mut detail = Vec::new();
    if let Err(e) = cluster.heal() {
        detail.push(format!("heal partitions: {e:#}"));
    }
    if cluster.has_clock_control() {
        for id in cluster.ids() {
            if let Err(e) = cluster.set_clock(id, 0) {
                detail.push(format!("reset clock of node {id}: {e:#}"));
            }
        }
        // Every node has read its reset offset before the final reads begin.
        std::thread::sleep(CLOCK_LAG);
    }
    for p in crate::cluster::worker_ids() {
        crate::cluster::signal_worker(p, Signal::SIGCONT);
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

/// Read a nemesis.jsonl written by a run.
pub fn load(path: &Path) -> anyhow::Result<Vec<NemesisEvent>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_is_selectable_and_in_mixed_in_both_modes() {
        let local = Fault::parse_list("mixed", Mode::Local).unwrap();
        assert!(local.contains(&Fault::Membership) && !local.contains(&Fault::Partition));
        assert_eq!(
            Fault::parse_list("membership", Mode::Netns).unwrap(),
            [Fault::Membership]
        );
        let e = Fault::parse_list("members", Mode::Netns).unwrap_err();
        assert!(e.to_string().contains("membership"), "{e}");
        assert!(local.contains(&Fault::Wipe), "wipe is a process fault");
        assert_eq!(
            Fault::parse_list("wipe", Mode::Local).unwrap(),
            [Fault::Wipe]
        );
        assert!(partners(Fault::Wipe, &local).is_empty(), "never combined");
    }

    #[test]
    fn loss_and_client_pause_are_selectable_and_loss_needs_netns() {
        let netns = Fault::parse_list("mixed", Mode::Netns).unwrap();
        assert!(netns.contains(&Fault::Loss) && netns.contains(&Fault::ClientPause));
        let local = Fault::parse_list("mixed", Mode::Local).unwrap();
        assert!(!local.contains(&Fault::Loss) && local.contains(&Fault::ClientPause));
        let e = Fault::parse_list("loss", Mode::Local).unwrap_err();
        assert!(e.to_string().contains("netns"), "{e}");
        assert_eq!(
            Fault::parse_list("client-pause,loss", Mode::Netns).unwrap(),
            [Fault::ClientPause, Fault::Loss]
        );
    }

    #[test]
    fn only_a_network_fault_and_a_process_fault_combine() {
        let all = Fault::parse_list("mixed", Mode::Netns).unwrap();
        let mut p = partners(Fault::Kill, &all);
        p.sort();
        assert_eq!(
            p,
            [Fault::Partition, Fault::Bridge, Fault::Ring, Fault::Loss]
        );
        let mut p = partners(Fault::Ring, &all);
        p.sort();
        assert_eq!(
            p,
            [Fault::Kill, Fault::Pause, Fault::Clock, Fault::ClientPause]
        );
        assert!(partners(Fault::Membership, &all).is_empty());
        // Local mode has no network faults: nothing combines.
        let local = Fault::parse_list("mixed", Mode::Local).unwrap();
        assert!(local.iter().all(|&f| partners(f, &local).is_empty()));
        assert_eq!(name(Fault::ClientPause), "client-pause");
    }

    fn reaches(g: &Grudge, a: u64, b: u64) -> bool {
        !g.get(&a).is_some_and(|v| v.contains(&b))
    }

    fn symmetric(g: &Grudge) -> bool {
        g.iter()
            .all(|(a, v)| v.iter().all(|b| g.get(b).is_some_and(|w| w.contains(a))))
    }

    #[test]
    fn a_bridge_node_reaches_both_halves_which_cannot_reach_each_other() {
        for order in [vec![3, 1, 2], vec![5, 2, 4, 1, 3]] {
            let (g, a, mid, b) = bridge(&order);
            assert!(symmetric(&g));
            assert_eq!(a.len(), b.len());
            assert!(!g.contains_key(&mid), "the bridge node is cut from nobody");
            for &x in &a {
                for &y in &b {
                    assert!(!reaches(&g, x, y) && !reaches(&g, y, x));
                }
                assert!(reaches(&g, x, mid));
            }
        }
    }

    #[test]
    fn in_a_ring_every_node_sees_a_majority_but_not_everyone() {
        for n in 4..=9u64 {
            let order: Vec<u64> = (1..=n).rev().collect();
            let g = ring(&order);
            assert!(symmetric(&g));
            for &id in &order {
                let seen = order.iter().filter(|&&o| reaches(&g, id, o)).count() as u64;
                assert!(seen > n / 2, "n={n}: node {id} sees {seen}");
                assert!(seen < n, "n={n}: node {id} sees everyone");
            }
        }
        // 5 nodes: each reaches exactly its two neighbours in the ring order.
        let g = ring(&[1, 2, 3, 4, 5]);
        assert_eq!(g[&1], vec![3, 4]);
        assert!(ring(&[1, 2, 3]).is_empty());
    }
}
