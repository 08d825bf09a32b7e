//! The history: one event per invoke / ok / fail / info, stamped on the harness's one monotonic clock
//! (`t_ns`, nanoseconds since the run started) and with wall time (`wall_ms`, Unix milliseconds).
//!
//! Every client process is sequential (Jepsen's "process"): its completion event always answers its
//! latest invoke, so checkers pair them by `process`. Writes to the protected registers are recorded
//! while the register's lock is held, so their order in the history is the order the registers saw.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// invoke / ok / fail / info, as in Jepsen: `info` means the outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// What a process did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Acquire a lease on a resource.
    Acquire,
    /// Write to the protected register of a resource, carrying a fencing token.
    Write,
    /// Record a checkpoint with the lease's token.
    Checkpoint,
    /// Release a lease.
    Release,
    /// The holder's own check found its lease no longer valid (by its clock) before a write.
    Lapse,
    /// A simulated client pause: the process stops keeping its lease alive and sleeps past its ttl.
    Pause,
    /// A linearizable read of a resource's fence after the cluster healed.
    Read,
    /// Deploy workload: apply one deploy step to the protected deployment (value = step index).
    Step,
    /// Deploy workload: an instance is killed (drops its lease and stops).
    Kill,
    /// Deploy workload: after healing, an acquire with a task key that should answer AlreadyDone.
    Probe,
}

/// One line of history.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub index: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub f: Op,
    pub process: u64,
    /// A completion the cluster answered (ok or fail of an acquire, release, checkpoint, read or
    /// probe): the node that gave the answer, as the client saw it (`Client::answered_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// Write: the value written; checkpoint: the data recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Write invoke: true when the process checked `Lease::remaining()` just before (at `t_ns`) and
    /// found the lease valid — a claim "I hold it now" that the exclusivity checker counts. False for
    /// a write by a process that woke from a pause without checking (only the fence may stop it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<bool>,
    /// Write invoke with a claim: the remaining validity the process saw, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<u64>,
    /// Rejected write: the highest token the register had seen. Read: the resource's fence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// Acquire ok: the predecessor's token and last checkpoint the grant carried (task `previous`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_checkpoint: Option<String>,
    /// Acquire invoke: how long the caller is willing to queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Deploy workload: the task key the operation works on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_key: Option<String>,
    pub t_ns: u64,
    pub wall_ms: u64,
}

impl Event {
    /// A bare event; the recorder fills in index and times.
    pub fn new(kind: Kind, f: Op, process: u64, resource: &str) -> Self {
        Self {
            index: 0,
            kind,
            f,
            process,
            node: None,
            resource: resource.to_string(),
            token: None,
            lease_id: None,
            value: None,
            claim: None,
            remaining_ms: None,
            fence: None,
            prev_token: None,
            prev_checkpoint: None,
            wait_ms: None,
            error: None,
            task_key: None,
            t_ns: 0,
            wall_ms: 0,
        }
    }

    pub fn token(mut self, t: u64) -> Self {
        self.token = Some(t);
        self
    }

    /// What a grant carries: its token and lease id, and the predecessor's token and checkpoint.
    pub fn granted(mut self, lease: &warrant::client::Lease) -> Self {
        self.token = Some(lease.token());
        self.lease_id = Some(lease.lease_id().to_string());
        if let Some(prev) = lease.previous() {
            self.prev_token = Some(prev.token);
            self.prev_checkpoint = prev
                .checkpoint
                .as_ref()
                .map(|c| String::from_utf8_lossy(c).into_owned());
        }
        self
    }

    /// For a completion the cluster gave (ok or fail of a cluster operation): the node that
    /// answered, looked up in `nodes` (client endpoint → node id).
    pub fn answered(mut self, client: &warrant::client::Client, nodes: &[(String, u64)]) -> Self {
        let from_cluster = matches!(self.kind, Kind::Ok | Kind::Fail)
            && matches!(
                self.f,
                Op::Acquire | Op::Release | Op::Checkpoint | Op::Read | Op::Probe
            );
        if from_cluster {
            if let Some(endpoint) = client.answered_by() {
                self.node = nodes
                    .iter()
                    .find(|(e, _)| *e == endpoint)
                    .map(|(_, id)| *id);
            }
        }
        self
    }

    pub fn key(mut self, k: &str) -> Self {
        self.task_key = Some(k.to_string());
        self
    }

    pub fn error(mut self, e: impl std::fmt::Display) -> Self {
        self.error = Some(e.to_string());
        self
    }
}

/// The harness's one clock: monotonic nanoseconds since the run began, plus wall time for humans.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Where this clock's zero is on the machine's CLOCK_MONOTONIC, in ns: another process on this
    /// machine rebuilds the same clock from it ([`Clock::from_base_ns`]).
    pub fn base_ns(&self) -> u64 {
        monotonic_ns().saturating_sub(self.now_ns())
    }

    /// The clock whose zero is `base` ns on CLOCK_MONOTONIC (which `Instant` reads on Linux, and
    /// which keeps counting while a process is stopped).
    pub fn from_base_ns(base: u64) -> Self {
        let since = monotonic_ns().saturating_sub(base);
        let now = Instant::now();
        Self {
            start: now
                .checked_sub(std::time::Duration::from_nanos(since))
                .unwrap_or(now),
        }
    }
}

/// CLOCK_MONOTONIC in ns, the clock every process on this machine shares.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Inner {
    events: Vec<Event>,
    out: Option<BufWriter<File>>,
}

/// Collects the history in memory and streams it to history.jsonl as it happens (so a crashed run
/// still leaves what it saw).
#[derive(Clone)]
pub struct Recorder {
    clock: Clock,
    inner: Arc<Mutex<Inner>>,
}

impl Recorder {
    pub fn new(clock: Clock, path: Option<&Path>) -> anyhow::Result<Self> {
        let out = match path {
            Some(p) => Some(BufWriter::new(File::create(p)?)),
            None => None,
        };
        Ok(Self {
            clock,
            inner: Arc::new(Mutex::new(Inner {
                events: Vec::new(),
                out,
            })),
        })
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Record an event stamped now.
    pub fn record(&self, ev: Event) -> Event {
        let t = self.clock.now_ns();
        self.record_at(ev, t)
    }

    /// Record an event stamped at `t_ns` (taken by the caller on this recorder's clock).
    pub fn record_at(&self, mut ev: Event, t_ns: u64) -> Event {
        ev.t_ns = t_ns;
        ev.wall_ms = wall_ms();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        ev.index = inner.events.len() as u64;
        if let Some(out) = inner.out.as_mut() {
            if let Ok(line) = serde_json::to_string(&ev) {
                let _ = writeln!(out, "{line}");
            }
        }
        inner.events.push(ev.clone());
        ev
    }

    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(out) = inner.out.as_mut() {
            let _ = out.flush();
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .events
            .clone()
    }
}

/// Read a history.jsonl back (for re-checking a run).
pub fn load(path: &Path) -> anyhow::Result<Vec<Event>> {
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
    fn a_clock_rebuilt_from_its_base_reads_the_same_time() {
        let a = Clock::new();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = Clock::from_base_ns(a.base_ns());
        let (ta, tb) = (a.now_ns(), b.now_ns());
        assert!(ta >= 20_000_000, "{ta}");
        assert!(ta.abs_diff(tb) < 1_000_000, "{ta} vs {tb}");
    }
}
