//! The replacement-mid-deploy workload (the design card's headline).
//!
//! A deploy is `STEPS` steps under a task key on a resource `jepsen/deploy/<slot>`. Each slot runs
//! deploys one after another (`deploy-<slot>-<n>`); the slots run concurrently. Every deployer
//! "instance" is its own `Client` with the same principal (`agent/jepsen-deployer-<slot>`) and a
//! fresh instance id. An instance acquires with the task key (takeover when it is a replacement),
//! reads `previous` to learn where its predecessor stopped, re-records that progress as its own first
//! checkpoint (a lease's checkpoint is per lease: a holder that never checkpoints would hand its
//! successor an empty `previous`), applies the remaining steps to an in-process deployment guarded by
//! `FenceGuard`, checkpoints after each step and releases with outcome Done after the last one.
//!
//! Faults from the workload itself: an instance is *killed* (drops its lease and stops) after a step
//! or after its checkpoint, or *paused* (drops its lease — keepalives stop — sleeps past the ttl and
//! then applies its next step and checkpoints with its old token, without checking). Either way the
//! supervisor starts a replacement at once. After healing, every task key is probed with an acquire
//! that must answer AlreadyDone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::oneshot;
use tokio::time::Instant;
use warrant::client::{AcquireOptions, Acquired, Client, FenceGuard, Lease};
use warrant::model::ReleaseOutcome;

use crate::history::{Event, Kind, Op, Recorder};
use crate::security::Security;
use crate::workload::{describe, kind_of, Params};

/// Steps per deploy.
pub const STEPS: u64 = 5;
/// Deploy slots (resources) running concurrently.
pub const SLOTS: u64 = 2;
/// Process ids of deployer instances start here (register processes are 0.., the reader 1_000_000).
const FIRST_PROCESS: u64 = 10_000;
/// The prober's process id.
const PROBER: u64 = 1_000_001;

pub fn deploy_resource(slot: u64) -> String {
    format!("jepsen/deploy/{slot}")
}

fn principal(slot: u64) -> String {
    format!("agent/jepsen-deployer-{slot}")
}

/// One protected deployment: its fence and the steps applied so far.
#[derive(Default)]
struct Deployment {
    guard: FenceGuard,
    applied: u64,
}

/// All deployments; a step is decided and recorded under the lock, so the history lists steps in the
/// order the deployments saw them.
#[derive(Clone, Default)]
pub struct Deployments {
    inner: Arc<Mutex<HashMap<String, Deployment>>>,
    skip_fence: bool,
}

impl Deployments {
    pub fn new(skip_fence: bool) -> Self {
        Self {
            inner: Default::default(),
            skip_fence,
        }
    }

    /// Apply step `step` of `key` with `token`; false when the fence rejected it.
    fn apply(
        &self,
        rec: &Recorder,
        p: u64,
        resource: &str,
        key: &str,
        token: u64,
        step: u64,
    ) -> bool {
        let mut deps = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let d = deps.entry(resource.to_string()).or_default();
        let admitted = if self.skip_fence {
            Ok(())
        } else {
            d.guard.admit(token)
        };
        let mut e = match admitted {
            Ok(()) => {
                d.applied += 1;
                Event::new(Kind::Ok, Op::Step, p, resource)
            }
            Err(stale) => {
                let mut e = Event::new(Kind::Fail, Op::Step, p, resource).error(stale);
                e.fence = Some(stale.highest);
                e
            }
        };
        e.token = Some(token);
        e.value = Some(step.to_string());
        e.task_key = Some(key.to_string());
        let ok = e.kind == Kind::Ok;
        rec.record(e);
        ok
    }

    /// Steps applied per deployment.
    pub fn applied(&self) -> HashMap<String, u64> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, d)| (k.clone(), d.applied))
            .collect()
    }
}

/// How an instance ended, as its supervisor sees it.
enum End {
    /// The deploy is complete (released Done, or the acquire answered AlreadyDone).
    Completed,
    /// Killed, paused, lapsed, fenced out or gave up: start a replacement.
    Died,
}

struct Ctx {
    endpoints: Vec<String>,
    params: Params,
    rec: Recorder,
    deps: Deployments,
    next_process: AtomicU64,
    zombies: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Run the deploy slots until `deadline` (a deploy under way then may finish within 30 s); returns
/// every task key started, for [`probe`].
pub async fn run(
    endpoints: Vec<String>,
    params: Params,
    deadline: Instant,
    rec: Recorder,
    deps: Deployments,
) -> anyhow::Result<Vec<(u64, String)>> {
    let ctx = Arc::new(Ctx {
        endpoints,
        params,
        rec,
        deps,
        next_process: AtomicU64::new(FIRST_PROCESS),
        zombies: Mutex::new(Vec::new()),
    });
    let grace = deadline + Duration::from_secs(30);
    let mut set = tokio::task::JoinSet::new();
    for slot in 0..SLOTS {
        set.spawn(supervise(ctx.clone(), slot, deadline, grace));
    }
    let mut keys = Vec::new();
    let all = async {
        while let Some(r) = set.join_next().await {
            if let Ok(k) = r {
                keys.extend(k);
            }
        }
    };
    let finished = tokio::time::timeout_at(grace + Duration::from_secs(10), all)
        .await
        .is_ok();
    // Paused instances sleep at most ttl + 2 s and then make bounded calls.
    let zombies: Vec<_> =
        std::mem::take(&mut *ctx.zombies.lock().unwrap_or_else(|e| e.into_inner()));
    for z in zombies {
        if tokio::time::timeout(Duration::from_secs(15), z)
            .await
            .is_err()
        {
            anyhow::bail!("a paused deployer did not finish");
        }
    }
    if !finished {
        set.abort_all();
        anyhow::bail!("deploy supervisors did not finish within 40 s after the deadline");
    }
    Ok(keys)
}

/// One slot: deploys one after another; each deploy's instances one after another.
async fn supervise(
    ctx: Arc<Ctx>,
    slot: u64,
    deadline: Instant,
    grace: Instant,
) -> Vec<(u64, String)> {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.params.seed ^ (0xdeb1_0000 + slot));
    let mut keys = Vec::new();
    for job in 0..1_000_000u64 {
        if Instant::now() >= deadline {
            break;
        }
        let key = format!("deploy-{slot}-{job}");
        keys.push((slot, key.clone()));
        for n in 0..100u32 {
            if Instant::now() >= grace {
                break;
            }
            let p = ctx.next_process.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            let seed = rng.gen::<u64>();
            let h = tokio::spawn(instance(
                ctx.clone(),
                slot,
                p,
                key.clone(),
                n > 0,
                grace,
                seed,
                tx,
            ));
            let end = rx.await;
            ctx.zombies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(h);
            if matches!(end, Ok(End::Completed)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(10..150))).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..100))).await;
    }
    keys
}

#[allow(clippy::too_many_arguments)]
async fn instance(
    ctx: Arc<Ctx>,
    slot: u64,
    p: u64,
    key: String,
    replacement: bool,
    grace: Instant,
    seed: u64,
    tx: oneshot::Sender<End>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let resource = deploy_resource(slot);
    let rec = &ctx.rec;
    let ttl = ctx.params.ttl;
    let client = match ctx
        .params
        .security
        .client(ctx.endpoints.clone(), &principal(slot))
        .and_then(|mut c| {
            c.call_timeout = Duration::from_secs(5);
            Ok(Client::new(c)?)
        }) {
        Ok(c) => c,
        Err(e) => {
            rec.record(
                Event::new(Kind::Fail, Op::Acquire, p, &resource)
                    .key(&key)
                    .error(e),
            );
            let _ = tx.send(End::Died);
            return;
        }
    };
    let nodes = crate::workload::node_map(&ctx.endpoints);
    // A completion the cluster gave names the node that answered (see `Event::answered`).
    let ev = |kind, f| {
        Event::new(kind, f, p, &resource)
            .key(&key)
            .answered(&client, &nodes)
    };

    // Acquire: one logical acquire, retried with the same request id so a lost answer is returned
    // on retry instead of granting (and taking over) a second lease.
    let request_id = format!("deploy-{p}-{seed:x}");
    let mut lease: Option<Lease> = None;
    for attempt in 0..30u32 {
        if Instant::now() >= grace {
            break;
        }
        let mut opts = AcquireOptions::new(&resource, ttl);
        opts.task_key = Some(key.clone());
        opts.intent = format!("deploy {key}");
        opts.takeover = replacement;
        opts.wait = Some(ttl * 2);
        opts.request_id = Some(request_id.clone());
        let mut inv = ev(Kind::Invoke, Op::Acquire);
        inv.wait_ms = Some((ttl * 2).as_millis() as u64);
        inv.value = Some(if replacement { "takeover" } else { "first" }.into());
        rec.record(inv);
        match client.acquire(opts).await {
            Ok(Acquired::Granted(l)) => {
                rec.record(ev(Kind::Ok, Op::Acquire).granted(&l));
                lease = Some(l);
                break;
            }
            Ok(Acquired::AlreadyDone(c)) => {
                let mut e = ev(Kind::Fail, Op::Acquire).error("already done");
                e.prev_token = Some(c.token);
                rec.record(e);
                let _ = tx.send(End::Completed);
                return;
            }
            Ok(other) => {
                let what = match other {
                    Acquired::Busy { .. } => "busy",
                    _ => "wait ended",
                };
                rec.record(ev(Kind::Fail, Op::Acquire).error(what));
            }
            Err(e) => {
                rec.record(ev(kind_of(&e), Op::Acquire).error(describe(&e)));
            }
        }
        tokio::time::sleep(Duration::from_millis(
            rng.gen_range(100..400) + 50 * attempt as u64,
        ))
        .await;
    }
    let Some(lease) = lease else {
        let _ = tx.send(End::Died);
        return;
    };
    let token = lease.token();
    let lease_id = lease.lease_id().to_string();
    let done_steps = lease
        .previous()
        .and_then(|p| p.checkpoint.as_ref())
        .and_then(|c| String::from_utf8_lossy(c).parse::<u64>().ok())
        .unwrap_or(0)
        .min(STEPS);

    // Carry the inherited progress forward into this lease's own checkpoint.
    if done_steps > 0
        && checkpoint(
            rec,
            (&client, &nodes),
            &lease,
            p,
            &resource,
            &key,
            done_steps,
        )
        .await
            == Kind::Fail
    {
        let _ = tx.send(End::Died);
        return;
    }
    let clock = rec.clock();
    for k in done_steps + 1..=STEPS {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..150))).await;
        let t_check = clock.now_ns();
        if lease.remaining().is_none() {
            rec.record(ev(Kind::Info, Op::Lapse).token(token));
            let _ = tx.send(End::Died);
            return;
        }
        let mut inv = ev(Kind::Invoke, Op::Step).token(token);
        inv.claim = Some(true);
        inv.value = Some(k.to_string());
        rec.record_at(inv, t_check);
        if !ctx.deps.apply(rec, p, &resource, &key, token, k) {
            let _ = tx.send(End::Died);
            return;
        }
        // Killed after the step, before its checkpoint: the step is applied but not acknowledged.
        if rng.gen_bool(0.04) {
            rec.record(
                ev(Kind::Info, Op::Kill)
                    .token(token)
                    .error("killed before checkpoint"),
            );
            drop(lease);
            let _ = tx.send(End::Died);
            return;
        }
        if checkpoint(rec, (&client, &nodes), &lease, p, &resource, &key, k).await == Kind::Fail {
            let _ = tx.send(End::Died);
            return;
        }
        if k < STEPS && rng.gen_bool(0.04) {
            rec.record(
                ev(Kind::Info, Op::Kill)
                    .token(token)
                    .error("killed after checkpoint"),
            );
            drop(lease);
            let _ = tx.send(End::Died);
            return;
        }
        if k < STEPS && rng.gen_bool(0.05) {
            // Paused: keepalives stop with the process; the supervisor gives up on it and starts a
            // replacement; on waking it carries on with its old token without checking.
            let nap = ttl + Duration::from_millis(rng.gen_range(300..2000));
            let mut e = ev(Kind::Info, Op::Pause).token(token);
            e.error = Some(format!("pausing {} ms without keepalives", nap.as_millis()));
            rec.record(e);
            drop(lease);
            let _ = tx.send(End::Died);
            tokio::time::sleep(nap).await;
            let mut inv = ev(Kind::Invoke, Op::Step).token(token);
            inv.claim = Some(false);
            inv.value = Some((k + 1).to_string());
            rec.record(inv);
            ctx.deps.apply(rec, p, &resource, &key, token, k + 1);
            let data = (k + 1).to_string();
            let mut inv = ev(Kind::Invoke, Op::Checkpoint).token(token);
            inv.value = Some(data.clone());
            rec.record(inv);
            let mut e = match client
                .checkpoint(&lease_id, token, data.clone().into_bytes())
                .await
            {
                Ok(()) => ev(Kind::Ok, Op::Checkpoint),
                Err(e) => ev(kind_of(&e), Op::Checkpoint).error(describe(&e)),
            };
            e.token = Some(token);
            e.value = Some(data);
            rec.record(e);
            return;
        }
    }
    let mut inv = ev(Kind::Invoke, Op::Release).token(token);
    inv.lease_id = Some(lease_id.clone());
    inv.value = Some("done".into());
    rec.record(inv);
    let (mut e, completed) = match lease.release(Some(ReleaseOutcome::Done)).await {
        Ok(r) => {
            let mut e = ev(Kind::Ok, Op::Release);
            let completed = r.ended == "done";
            e.value = Some(r.ended);
            (e, completed)
        }
        Err(e) => (ev(kind_of(&e), Op::Release).error(describe(&e)), false),
    };
    e.token = Some(token);
    e.lease_id = Some(lease_id);
    rec.record(e);
    let _ = tx.send(if completed { End::Completed } else { End::Died });
}

/// Record a checkpoint "<k>" (k steps done) with the lease's token; returns how it completed.
async fn checkpoint(
    rec: &Recorder,
    (client, nodes): (&Client, &[(String, u64)]),
    lease: &Lease,
    p: u64,
    resource: &str,
    key: &str,
    k: u64,
) -> Kind {
    let token = lease.token();
    let mut inv = Event::new(Kind::Invoke, Op::Checkpoint, p, resource)
        .key(key)
        .token(token);
    inv.value = Some(k.to_string());
    rec.record(inv);
    let mut e = match lease.checkpoint(k.to_string().into_bytes()).await {
        Ok(()) => Event::new(Kind::Ok, Op::Checkpoint, p, resource),
        Err(e) => Event::new(kind_of(&e), Op::Checkpoint, p, resource).error(describe(&e)),
    };
    e.token = Some(token);
    e.value = Some(k.to_string());
    e.task_key = Some(key.to_string());
    rec.record(e.answered(client, nodes)).kind
}

/// After healing: every task key started must answer AlreadyDone to a fresh acquire (a grant is
/// released at once, leaving the task open).
pub async fn probe(
    endpoints: Vec<String>,
    security: &Security,
    keys: &[(u64, String)],
    ttl: Duration,
    timeout: Duration,
    rec: &Recorder,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let nodes = crate::workload::node_map(&endpoints);
    let mut clients: HashMap<u64, Client> = HashMap::new();
    for (slot, key) in keys {
        let client = match clients.get(slot) {
            Some(c) => c.clone(),
            None => {
                let mut cfg = security.client(endpoints.clone(), &principal(*slot))?;
                cfg.call_timeout = Duration::from_secs(5);
                let c = Client::new(cfg)?;
                clients.insert(*slot, c.clone());
                c
            }
        };
        let resource = deploy_resource(*slot);
        for _attempt in 0..20u32 {
            rec.record(Event::new(Kind::Invoke, Op::Probe, PROBER, &resource).key(key));
            let mut opts = AcquireOptions::new(&resource, ttl);
            opts.task_key = Some(key.clone());
            opts.intent = "jepsen probe".into();
            let e = Event::new(Kind::Ok, Op::Probe, PROBER, &resource).key(key);
            match client.acquire(opts).await {
                Ok(Acquired::AlreadyDone(c)) => {
                    let mut e = e.token(c.token);
                    e.value = Some("already done".into());
                    rec.record(e.answered(&client, &nodes));
                    break;
                }
                Ok(Acquired::Granted(l)) => {
                    let mut e = e.token(l.token());
                    e.value = Some("granted".into());
                    rec.record(e.answered(&client, &nodes));
                    let _ = l.release(None).await;
                    break;
                }
                // Busy, wait ended, or (not expected without a policy) any governance answer.
                Ok(_) => {
                    let mut e = e;
                    e.value = Some("busy".into());
                    rec.record(e.answered(&client, &nodes));
                }
                Err(err) => {
                    rec.record(
                        Event::new(kind_of(&err), Op::Probe, PROBER, &resource)
                            .key(key)
                            .error(describe(&err)),
                    );
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(())
}
