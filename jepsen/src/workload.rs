//! The fenced-register workload.
//!
//! Each resource has a protected register in this process, guarded by Warrant's `FenceGuard`: it
//! accepts a write only with a token ≥ the highest it has seen. Client processes (each with its own
//! `Client`, principal and instance id) loop: acquire a random resource (ttl 2 s, sometimes queueing),
//! write a few times — checking `Lease::remaining()` before every write, which is the claim the
//! exclusivity checker counts — checkpoint now and then, and release. Sometimes a process "pauses":
//! it stops keeping its lease alive, sleeps past the ttl and then writes with its old token without
//! checking, as a process waking from a GC pause would; only the fence can stop that write.
//!
//! Every acquire uses the task key "jepsen", so each grant carries its predecessor's last checkpoint
//! (`previous`), which the durability checker compares with the acknowledged checkpoints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use warrant::client::{AcquireOptions, Acquired, Client, ClientError, FenceGuard};
use warrant::model::InstanceId;

use crate::history::{Event, Kind, Op, Recorder};
use crate::security::Security;

pub const TASK_KEY: &str = "jepsen";

/// Workload knobs.
#[derive(Debug, Clone)]
pub struct Params {
    pub clients: u64,
    pub resources: u64,
    pub ttl: Duration,
    pub seed: u64,
    /// Probability that a holder simulates a pause after its first write.
    pub p_pause: f64,
    /// A deliberately broken mode, to show the checkers catch it.
    pub broken: Option<Broken>,
    /// How clients authenticate (the cluster's).
    pub security: Security,
    /// How many of the clients (the first ones) run as their own OS process ([`crate::procs`]),
    /// which the `client-pause` nemesis stops and continues.
    pub os_clients: u64,
    /// The `warrant-jepsen` binary those processes run.
    pub worker_bin: std::path::PathBuf,
    /// Where their logs go.
    pub log_dir: std::path::PathBuf,
}

/// What one client process needs of [`Params`]; sent to a client in its own OS process.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProcessParams {
    /// Client endpoint → node id, to name the node that answered each completion.
    pub nodes: Vec<(String, u64)>,
    pub resources: u64,
    pub ttl_ms: u64,
    pub seed: u64,
    pub p_pause: f64,
    pub broken: Option<Broken>,
}

impl ProcessParams {
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
}

impl Params {
    pub fn process(&self, nodes: &[(String, u64)]) -> ProcessParams {
        ProcessParams {
            nodes: nodes.to_vec(),
            resources: self.resources,
            ttl_ms: self.ttl.as_millis() as u64,
            seed: self.seed,
            p_pause: self.p_pause,
            broken: self.broken,
        }
    }
}

/// Deliberately broken behaviour (`--break`): the suite must be able to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Broken {
    /// The protected register accepts every write without the fence check.
    SkipFence,
    /// A client that ignores expiry: it acts on its lease until it releases it, never checking its
    /// validity (also after a real pause, `client-pause`), and a process waking from a simulated
    /// pause counts its write as a claim.
    IgnoreExpiry,
    /// Server side: every node answers a busy acquire from its own state without confirming
    /// leadership (`chaos_break = "unconfirmed-answers"`), and each client starts at a different
    /// node, so followers and deposed leaders get asked.
    UnconfirmedAnswers,
    /// Server side: the leader's lease clock runs four times fast (`chaos_break = "early-expiry"`),
    /// so it hands a lease to the next client while its holder still rightly believes it holds it.
    EarlyExpiry,
    /// Server side: an acquire that finds the resource held by another client first revokes the
    /// holder's lease, unasked (`chaos_break = "grant-over-holder"`): a grant without checking the
    /// holder, which learns of it only at its next keepalive.
    GrantOverHolder,
    /// Server side: every node answers one acquire in four as applied but never applies it
    /// (`chaos_break = "lose-grants"`): acknowledged grants lost from every node's state and audit.
    LoseGrants,
}

impl Broken {
    /// The server's `chaos_break` value for a server-side mode.
    pub fn chaos_break(self) -> Option<&'static str> {
        match self {
            Broken::UnconfirmedAnswers => Some("unconfirmed-answers"),
            Broken::EarlyExpiry => Some("early-expiry"),
            Broken::GrantOverHolder => Some("grant-over-holder"),
            Broken::LoseGrants => Some("lose-grants"),
            Broken::SkipFence | Broken::IgnoreExpiry => None,
        }
    }
}

pub fn resource_name(i: u64) -> String {
    format!("jepsen/reg/{i}")
}

/// A protected resource: a register whose writes are fenced.
#[derive(Default)]
struct Register {
    guard: FenceGuard,
    value: Option<String>,
}

/// All registers; a write is decided and recorded under the register's lock, so the history lists
/// writes in the order the register saw them.
#[derive(Clone, Default)]
pub struct Registers {
    inner: Arc<Mutex<HashMap<String, Register>>>,
    skip_fence: bool,
}

impl Registers {
    pub fn new(broken: Option<Broken>) -> Self {
        Self {
            inner: Default::default(),
            skip_fence: broken == Some(Broken::SkipFence),
        }
    }

    pub(crate) fn write(
        &self,
        rec: &Recorder,
        process: u64,
        resource: &str,
        token: u64,
        value: String,
    ) {
        let mut regs = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let reg = regs.entry(resource.to_string()).or_default();
        let admitted = if self.skip_fence {
            Ok(())
        } else {
            reg.guard.admit(token)
        };
        match admitted {
            Ok(()) => {
                let mut e = Event::new(Kind::Ok, Op::Write, process, resource).token(token);
                e.value = Some(value.clone());
                reg.value = Some(value);
                rec.record(e);
            }
            Err(stale) => {
                let mut e = Event::new(Kind::Fail, Op::Write, process, resource)
                    .token(token)
                    .error(stale);
                e.value = Some(value);
                e.fence = Some(stale.highest);
                rec.record(e);
            }
        }
    }

    /// The final value of each register.
    pub fn values(&self) -> HashMap<String, Option<String>> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, r)| (k.clone(), r.value.clone()))
            .collect()
    }
}

/// Completion kind for a failed call: a refusal is `fail`; anything that may have taken effect
/// (timeout, unreachable) is `info`.
pub(crate) fn kind_of(e: &ClientError) -> Kind {
    use tonic::Code;
    // Granted, then ended before the caller could use it (a retry of its request, or a waiting
    // acquire whose caller was paused past the ttl): the grant took effect and the resource was
    // held meanwhile, so it is not a refusal.
    if matches!(e, ClientError::LeaseEnded { .. }) {
        return Kind::Info;
    }
    match e.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::AlreadyExists => Kind::Fail,
        _ => Kind::Info,
    }
}

/// An error as recorded: its gRPC code and message.
pub(crate) fn describe(e: &ClientError) -> String {
    format!("{:?}: {e}", e.code())
}

/// Run the client processes until `deadline`; each finishes its current lease (bounded) and stops.
pub async fn run(
    endpoints: Vec<String>,
    params: Params,
    deadline: Instant,
    rec: Recorder,
    regs: Registers,
) -> anyhow::Result<()> {
    let mut set = tokio::task::JoinSet::new();
    let clock = rec.clock();
    let deadline_ns = clock.now_ns()
        + deadline
            .saturating_duration_since(Instant::now())
            .as_nanos() as u64;
    let nodes = node_map(&endpoints);
    let mut start = || -> anyhow::Result<()> {
        for p in 0..params.clients {
            let mut endpoints = endpoints.clone();
            if params.broken == Some(Broken::UnconfirmedAnswers) && !endpoints.is_empty() {
                let n = endpoints.len();
                endpoints.rotate_left(p as usize % n);
            }
            let principal = format!("agent/jepsen-{p}");
            let instance = format!("jepsen-{p}-{}", params.seed);
            if p < params.os_clients {
                let spec = crate::procs::WorkerSpec {
                    process: p,
                    endpoints,
                    tls: params.security.client_files(&principal)?,
                    principal,
                    instance,
                    params: params.process(&nodes),
                    clock_base_ns: clock.base_ns(),
                    deadline_ns,
                };
                let exited = crate::procs::spawn(
                    &params.worker_bin,
                    &params.log_dir.join(format!("client-{p}.log")),
                    &spec,
                    rec.clone(),
                    regs.clone(),
                )?;
                set.spawn(async move {
                    match exited.await {
                        Ok(r) => r,
                        Err(_) => Err(anyhow::anyhow!("client worker {p}: its pump thread died")),
                    }
                });
                continue;
            }
            let mut cfg = params.security.client(endpoints, &principal)?;
            cfg.instance = InstanceId::parse(&instance)?;
            cfg.call_timeout = Duration::from_secs(5);
            let client = Client::new(cfg)?;
            let sink = Local {
                rec: rec.clone(),
                regs: regs.clone(),
            };
            let pp = params.process(&nodes);
            set.spawn(async move {
                process(client, p, pp, deadline, sink).await;
                Ok(())
            });
        }
        Ok(())
    };
    if let Err(e) = start() {
        // Nothing started may outlive the failure (a worker would go on writing history).
        set.abort_all();
        for p in crate::cluster::worker_ids() {
            crate::cluster::reap_worker(p, true);
        }
        return Err(e);
    }
    // Each process stops starting work at the deadline; one lease's worth of work plus a few call
    // timeouts later it must be done.
    let grace = Duration::from_secs(30);
    let all = async {
        let mut errors = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Err(e) => errors.push(format!("client task: {e}")),
            }
        }
        errors
    };
    match tokio::time::timeout_at(deadline + grace, all).await {
        Err(_) => {
            set.abort_all();
            for p in crate::cluster::worker_ids() {
                crate::cluster::reap_worker(p, true);
            }
            anyhow::bail!("client processes did not finish within {grace:?} after the deadline");
        }
        Ok(errors) if !errors.is_empty() => anyhow::bail!("{}", errors.join("; ")),
        Ok(_) => Ok(()),
    }
}

/// Client endpoint → node id: the founding members' endpoints in node order (node 1 first).
pub fn node_map(endpoints: &[String]) -> Vec<(String, u64)> {
    endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| (e.clone(), i as u64 + 1))
        .collect()
}

/// Where a client process records its history and reaches the protected registers: the harness
/// itself ([`Local`], a task in the harness) or pipes to the harness (a client in its own OS
/// process, [`crate::procs`]).
pub trait Sink: Send + Sync {
    /// Now, on the harness's one clock.
    fn now_ns(&self) -> u64;
    /// Record an event stamped at `t_ns` on the harness's clock.
    fn record_at(&self, ev: Event, t_ns: u64);
    /// Record an event stamped now.
    fn record(&self, ev: Event) {
        self.record_at(ev, self.now_ns())
    }
    /// Write to the protected register of `resource` with `token`: the register decides and records
    /// the outcome. Returns once it has.
    fn write(
        &self,
        process: u64,
        resource: &str,
        token: u64,
        value: String,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// A client process that is a task in the harness.
pub struct Local {
    pub rec: Recorder,
    pub regs: Registers,
}

impl Sink for Local {
    fn now_ns(&self) -> u64 {
        self.rec.clock().now_ns()
    }

    fn record_at(&self, ev: Event, t_ns: u64) {
        self.rec.record_at(ev, t_ns);
    }

    async fn write(&self, process: u64, resource: &str, token: u64, value: String) {
        self.regs.write(&self.rec, process, resource, token, value)
    }
}

/// One client process's loop (a task in the harness, or the whole of a client OS process).
pub async fn process(
    client: Client,
    p: u64,
    params: ProcessParams,
    deadline: Instant,
    sink: impl Sink,
) {
    let rec = &sink;
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed.wrapping_mul(1_000_003).wrapping_add(p));
    let mut seq = 0u64;
    // Bounded: every iteration takes at least a few ms of sleeping, and stops at the deadline.
    for _iteration in 0..1_000_000u32 {
        if Instant::now() >= deadline {
            break;
        }
        let resource = resource_name(rng.gen_range(0..params.resources));
        let wait = rng
            .gen_bool(0.4)
            .then(|| Duration::from_millis(rng.gen_range(200..1500)));
        let mut opts = AcquireOptions::new(&resource, params.ttl());
        opts.task_key = Some(TASK_KEY.to_string());
        opts.intent = format!("jepsen process {p}");
        opts.wait = wait;
        let mut inv = Event::new(Kind::Invoke, Op::Acquire, p, &resource);
        inv.wait_ms = wait.map(|w| w.as_millis() as u64);
        rec.record(inv);
        let lease = match client.acquire(opts).await {
            Ok(Acquired::Granted(lease)) => {
                // Stamped after the answer arrived: an upper bound on when the holder learned.
                rec.record(
                    Event::new(Kind::Ok, Op::Acquire, p, &resource)
                        .granted(&lease)
                        .answered(&client, &params.nodes),
                );
                lease
            }
            Ok(other) => {
                let what = match other {
                    Acquired::Busy { .. } => "busy",
                    Acquired::WaitEnded => "wait ended",
                    Acquired::AlreadyDone(_) => "already done",
                    Acquired::Granted(_) => unreachable!("handled above"),
                    // The suite's clusters run without a policy (default allow): not expected.
                    _ => "not granted",
                };
                rec.record(
                    Event::new(Kind::Fail, Op::Acquire, p, &resource)
                        .error(what)
                        .answered(&client, &params.nodes),
                );
                tokio::time::sleep(Duration::from_millis(rng.gen_range(20..200))).await;
                continue;
            }
            Err(e) => {
                rec.record(
                    Event::new(kind_of(&e), Op::Acquire, p, &resource)
                        .error(describe(&e))
                        .answered(&client, &params.nodes),
                );
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
                continue;
            }
        };
        let token = lease.token();
        let writes = rng.gen_range(1..=6);
        let mut paused = false;
        for w in 0..writes {
            if w > 0 {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..700))).await;
            }
            // The claim: stamped *before* the check, a lower bound on when the holder believed it.
            let t_check = rec.now_ns();
            let remaining = match lease.remaining() {
                Some(r) => r,
                // Broken: a client that ignores expiry acts on a lease it no longer holds.
                None if params.broken == Some(Broken::IgnoreExpiry) => Duration::ZERO,
                None => {
                    rec.record(Event::new(Kind::Info, Op::Lapse, p, &resource).token(token));
                    break;
                }
            };
            seq += 1;
            let value = format!("p{p}:t{token}:s{seq}");
            let mut inv = Event::new(Kind::Invoke, Op::Write, p, &resource).token(token);
            inv.claim = Some(true);
            inv.remaining_ms = Some(remaining.as_millis() as u64);
            inv.value = Some(value.clone());
            rec.record_at(inv, t_check);
            rec.write(p, &resource, token, value).await;

            if rng.gen_bool(0.4) {
                let data = format!("{token}:{seq}");
                let mut inv = Event::new(Kind::Invoke, Op::Checkpoint, p, &resource).token(token);
                inv.value = Some(data.clone());
                rec.record(inv);
                let mut done = match lease.checkpoint(data.clone().into_bytes()).await {
                    Ok(()) => Event::new(Kind::Ok, Op::Checkpoint, p, &resource),
                    Err(e) => {
                        Event::new(kind_of(&e), Op::Checkpoint, p, &resource).error(describe(&e))
                    }
                };
                done.token = Some(token);
                done.value = Some(data);
                rec.record(done.answered(&client, &params.nodes));
            }
            if w == 0 && rng.gen_bool(params.p_pause) {
                paused = true;
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if paused {
            // A simulated process pause: keepalives stop with the process, and on waking it writes
            // with its old token without looking at the clock.
            let nap = params.ttl() + Duration::from_millis(rng.gen_range(300..2000));
            let mut e = Event::new(Kind::Info, Op::Pause, p, &resource).token(token);
            e.error = Some(format!("pausing {} ms without keepalives", nap.as_millis()));
            rec.record(e);
            drop(lease);
            tokio::time::sleep(nap).await;
            seq += 1;
            let value = format!("p{p}:t{token}:s{seq}:zombie");
            let mut inv = Event::new(Kind::Invoke, Op::Write, p, &resource).token(token);
            inv.claim = Some(params.broken == Some(Broken::IgnoreExpiry));
            inv.value = Some(value.clone());
            rec.record(inv);
            rec.write(p, &resource, token, value).await;
            continue;
        }
        let lease_id = lease.lease_id().to_string();
        let mut inv = Event::new(Kind::Invoke, Op::Release, p, &resource).token(token);
        inv.lease_id = Some(lease_id.clone());
        rec.record(inv);
        let mut done = match lease.release(None).await {
            Ok(r) => {
                let mut e = Event::new(Kind::Ok, Op::Release, p, &resource);
                e.value = Some(r.ended);
                e
            }
            Err(e) => Event::new(kind_of(&e), Op::Release, p, &resource).error(describe(&e)),
        };
        done.token = Some(token);
        done.lease_id = Some(lease_id);
        rec.record(done.answered(&client, &params.nodes));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..150))).await;
    }
}

/// After healing: read every resource's fence (linearizable Get), retrying within `timeout`.
pub async fn final_reads(
    endpoints: Vec<String>,
    names: &[String],
    timeout: Duration,
    rec: &Recorder,
    security: &Security,
) -> anyhow::Result<()> {
    const READER: u64 = 1_000_000;
    let nodes = node_map(&endpoints);
    let mut cfg = security.client(endpoints, "human/jepsen-reader")?;
    cfg.call_timeout = Duration::from_secs(5);
    let client = Client::new(cfg)?;
    let deadline = Instant::now() + timeout;
    for resource in names.iter().map(String::as_str) {
        // Bounded by the deadline; each attempt by the call timeout.
        for _attempt in 0..100u32 {
            rec.record(Event::new(Kind::Invoke, Op::Read, READER, resource));
            match client.get(resource).await {
                Ok(resp) => {
                    let mut e = Event::new(Kind::Ok, Op::Read, READER, resource);
                    e.fence = Some(resp.fence);
                    e.token = resp.holder.map(|h| h.token);
                    rec.record(e.answered(&client, &nodes));
                    break;
                }
                Err(e) => {
                    rec.record(
                        Event::new(kind_of(&e), Op::Read, READER, resource)
                            .error(describe(&e))
                            .answered(&client, &nodes),
                    );
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }
    Ok(())
}
