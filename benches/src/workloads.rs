//! The workloads, each run the same way against Warrant and against etcd's lock recipe.
//!
//! etcd cycle: grant lease (ttl 10 s); txn `if create_revision(key) == 0 then put(key, lease)` (the
//! put's revision is the fencing token; a failed compare is "busy", retried after 5 ms with the same
//! lease); then delete + revoke. Warrant cycle: acquire (ttl 10 s; busy retried after 5 ms) + release.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use etcd_client::{Compare, CompareOp, LockOptions, PutOptions, Txn, TxnOp};
use hdrhistogram::Histogram;
use warrant::client::{AcquireOptions, Acquired, Client};

use crate::clusters::Cluster;
use crate::tls;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Warrant,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Warrant => "warrant",
            System::Etcd => "etcd",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contention {
    /// Each client cycles over its own resources.
    Uncontended,
    /// All clients fight over 8 resources; a busy answer is retried after 5 ms.
    Contended,
    /// All clients fight over 8 resources, each system's waiting primitive queueing them: Warrant's
    /// FIFO wait (`AcquireOptions::wait`), etcd's Lock RPC (its server-side lock recipe).
    ContendedWait,
}

/// What one measured run produced.
pub struct Stats {
    pub ops: u64,
    pub busy: u64,
    pub seconds: f64,
    pub acquire: Histogram<u64>,
    pub cycle: Histogram<u64>,
    /// Server CPU over the window, in percent of one core (summed over the 3 processes).
    pub cpu_percent: f64,
}

impl Stats {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One client's connection to either system.
enum Conn {
    Warrant(Client),
    Etcd(Box<etcd_client::Client>),
}

async fn connect(system: System, endpoints: &[String], principal: &str) -> Result<Conn> {
    Ok(match system {
        System::Warrant => Conn::Warrant(tls::warrant_client(endpoints.to_vec(), principal)?),
        System::Etcd => Conn::Etcd(Box::new(tls::etcd_client(endpoints).await?)),
    })
}

const TTL: Duration = Duration::from_secs(10);
const BUSY_RETRY: Duration = Duration::from_millis(5);
/// A waiter's longest wait (the server's default `lease.max_wait` is 300 s).
const MAX_WAIT: Duration = Duration::from_secs(60);

/// One full cycle on `key`: returns (acquire latency, busy answers seen, token).
async fn cycle(
    conn: &mut Conn,
    key: &str,
    deadline: Instant,
    contention: Contention,
) -> Result<Option<(Duration, u64, u64)>> {
    if contention == Contention::ContendedWait {
        return waiting_cycle(conn, key, deadline).await;
    }
    let start = Instant::now();
    let mut busy = 0;
    match conn {
        Conn::Warrant(c) => loop {
            match c.acquire(AcquireOptions::new(key, TTL)).await? {
                Acquired::Granted(lease) => {
                    let acquired = start.elapsed();
                    let token = lease.token();
                    lease.release(None).await?;
                    return Ok(Some((acquired, busy, token)));
                }
                Acquired::Busy { .. } => {
                    busy += 1;
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    tokio::time::sleep(BUSY_RETRY).await;
                }
                other => return Err(anyhow!("unexpected answer {other:?}")),
            }
        },
        Conn::Etcd(c) => {
            let lease = c.lease_grant(TTL.as_secs() as i64, None).await?.id();
            loop {
                let txn = Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key,
                        "",
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                let resp = c.txn(txn).await?;
                if resp.succeeded() {
                    let acquired = start.elapsed();
                    let token = resp.header().map(|h| h.revision() as u64).unwrap_or(0);
                    c.delete(key, None).await?;
                    c.lease_revoke(lease).await?;
                    return Ok(Some((acquired, busy, token)));
                }
                busy += 1;
                if Instant::now() >= deadline {
                    c.lease_revoke(lease).await?;
                    return Ok(None);
                }
                tokio::time::sleep(BUSY_RETRY).await;
            }
        }
    }
}

/// One full cycle with the system's waiting primitive; None when the run ended while waiting.
async fn waiting_cycle(
    conn: &mut Conn,
    key: &str,
    deadline: Instant,
) -> Result<Option<(Duration, u64, u64)>> {
    let start = Instant::now();
    // Waiters still queued when the run ends give up a little after it.
    let patience = deadline.saturating_duration_since(start) + Duration::from_secs(2);
    match conn {
        Conn::Warrant(c) => {
            let mut options = AcquireOptions::new(key, TTL);
            options.wait = Some(patience.min(MAX_WAIT));
            match c.acquire(options).await? {
                Acquired::Granted(lease) => {
                    let acquired = start.elapsed();
                    let token = lease.token();
                    lease.release(None).await?;
                    Ok(Some((acquired, 0, token)))
                }
                // Only a waiter still queued when the run ended gives up.
                Acquired::WaitEnded => Ok(None),
                other => Err(anyhow!("unexpected answer {other:?}")),
            }
        }
        Conn::Etcd(c) => {
            let lease = c.lease_grant(TTL.as_secs() as i64, None).await?.id();
            let locked = tokio::time::timeout(
                patience,
                c.lock(key, Some(LockOptions::new().with_lease(lease))),
            )
            .await;
            match locked {
                Ok(resp) => {
                    let resp = resp?;
                    let acquired = start.elapsed();
                    let token = resp.header().map(|h| h.revision() as u64).unwrap_or(0);
                    c.unlock(resp.key()).await?;
                    c.lease_revoke(lease).await?;
                    Ok(Some((acquired, 0, token)))
                }
                Err(_elapsed) => {
                    c.lease_revoke(lease).await?;
                    Ok(None)
                }
            }
        }
    }
}

/// Run `clients` concurrent clients doing full cycles: warm up, then measure for `duration`.
pub async fn cycles(
    system: System,
    cluster: &Cluster,
    contention: Contention,
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Stats> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let endpoints = cluster.endpoints.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(system, &endpoints, &format!("agent/bench-{i}")).await?;
            let (mut acq, mut cyc, mut ops, mut busy) = (hist(), hist(), 0u64, 0u64);
            let mut n = 0u64;
            while Instant::now() < end {
                let key = match contention {
                    Contention::Uncontended => format!("bench/{run}/c{i}/r{}", n % 8),
                    Contention::Contended | Contention::ContendedWait => {
                        format!("bench/{run}/shared/r{}", n % 8)
                    }
                };
                n += 1;
                let t0 = Instant::now();
                let Some((acquired, b, _token)) = cycle(&mut conn, &key, end, contention).await?
                else {
                    break;
                };
                if t0 >= measure_from && Instant::now() <= end {
                    acq.record(acquired.as_micros() as u64)?;
                    cyc.record(t0.elapsed().as_micros() as u64)?;
                    ops += 1;
                    busy += b;
                }
            }
            anyhow::Ok((acq, cyc, ops, busy))
        }));
    }
    let now = Instant::now();
    if measure_from > now {
        tokio::time::sleep(measure_from - now).await;
    }
    let cpu0 = cluster.cpu_seconds();
    let (mut acquire, mut cycle_h, mut ops, mut busy) = (hist(), hist(), 0, 0);
    for t in tasks {
        let (a, c, o, b) = t.await??;
        acquire.add(a)?;
        cycle_h.add(c)?;
        ops += o;
        busy += b;
    }
    let seconds = duration.as_secs_f64();
    let cpu_percent = (cluster.cpu_seconds() - cpu0) / seconds * 100.0;
    Ok(Stats {
        ops,
        busy,
        seconds,
        acquire,
        cycle: cycle_h,
        cpu_percent,
    })
}

/// Keepalives in flight on one stream, answered in order: send times and measured latencies.
struct InFlight {
    sent: std::collections::VecDeque<Instant>,
    measure_from: Instant,
    latency: Histogram<u64>,
    ops: u64,
}

impl InFlight {
    fn new(measure_from: Instant) -> Self {
        Self {
            sent: Default::default(),
            measure_from,
            latency: hist(),
            ops: 0,
        }
    }

    fn sent(&mut self) {
        self.sent.push_back(Instant::now());
    }

    /// The oldest keepalive in flight was answered: count it if it was sent after the warm-up.
    fn answered(&mut self) -> Result<()> {
        if let Some(t) = self.sent.pop_front() {
            if t >= self.measure_from {
                self.latency.record(t.elapsed().as_micros() as u64)?;
                self.ops += 1;
            }
        }
        Ok(())
    }
}

/// Keepalive throughput: `streams` streams, each keeping one lease alive with `window` keepalives in
/// flight, for `duration` after a warm-up.
pub async fn keepalives(
    system: System,
    cluster: &Cluster,
    streams: usize,
    window: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Stats> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let leader = match system {
        System::Warrant => {
            let c = tls::warrant_client(cluster.endpoints.clone(), "agent/bench")?;
            let s = c.status().await?;
            if s.leader_address.is_empty() {
                return Err(anyhow!("no leader"));
            }
            s.leader_address
        }
        System::Etcd => cluster.endpoints[0].clone(),
    };
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for i in 0..streams {
        let endpoints = cluster.endpoints.clone();
        let leader = leader.clone();
        let key = format!("ka/{run}/{i}");
        tasks.push(tokio::spawn(async move {
            let mut flight = InFlight::new(measure_from);
            match system {
                System::Warrant => {
                    let client = tls::warrant_client(endpoints, &format!("agent/ka-{i}"))?;
                    let lease = match client
                        .acquire(AcquireOptions::new(&key, Duration::from_secs(60)))
                        .await?
                    {
                        Acquired::Granted(l) => l,
                        other => return Err(anyhow!("not granted: {other:?}")),
                    };
                    let id = lease.lease_id().to_string();
                    let principal = format!("agent/ka-{i}");
                    let mut raw = warrant::proto::warrant_client::WarrantClient::new(
                        tls::warrant_channel(&leader, &principal).await?,
                    );
                    let (tx, rx) = tokio::sync::mpsc::channel(window * 2);
                    let mut answers = raw
                        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                        .await?
                        .into_inner();
                    let req = warrant::proto::KeepAliveRequest {
                        lease_id: id,
                        principal,
                        certificate: false,
                    };
                    for _ in 0..window {
                        flight.sent();
                        tx.send(req.clone()).await?;
                    }
                    while let Some(answer) = answers.message().await? {
                        if answer.result.is_none() {
                            return Err(anyhow!("empty keepalive answer"));
                        }
                        flight.answered()?;
                        if Instant::now() >= end {
                            break;
                        }
                        flight.sent();
                        tx.send(req.clone()).await?;
                    }
                    let _ = lease.release(None).await;
                }
                System::Etcd => {
                    let mut c = tls::etcd_client(std::slice::from_ref(&leader)).await?;
                    let id = c.lease_grant(60, None).await?.id();
                    let (mut keeper, mut answers) = c.lease_keep_alive(id).await?;
                    for _ in 0..window {
                        flight.sent();
                        keeper.keep_alive().await?;
                    }
                    while let Some(_answer) = answers.message().await? {
                        flight.answered()?;
                        if Instant::now() >= end {
                            break;
                        }
                        flight.sent();
                        keeper.keep_alive().await?;
                    }
                }
            }
            anyhow::Ok((flight.latency, flight.ops))
        }));
    }
    let now = Instant::now();
    if measure_from > now {
        tokio::time::sleep(measure_from - now).await;
    }
    let cpu0 = cluster.cpu_seconds();
    let (mut lat, mut ops) = (hist(), 0);
    for t in tasks {
        let (l, o) = t.await??;
        lat.add(l)?;
        ops += o;
    }
    let seconds = duration.as_secs_f64();
    let cpu_percent = (cluster.cpu_seconds() - cpu0) / seconds * 100.0;
    Ok(Stats {
        ops,
        busy: 0,
        seconds,
        acquire: lat.clone(),
        cycle: lat,
        cpu_percent,
    })
}

/// Create `count` live leases (ttl 30 min) with `clients` concurrent clients; returns the rate.
pub async fn fill(system: System, cluster: &Cluster, count: usize, clients: usize) -> Result<f64> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let endpoints = cluster.endpoints.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(system, &endpoints, &format!("agent/scale-{i}")).await?;
            for n in (i..count).step_by(clients) {
                let key = format!("scale/{run}/{n}");
                match &mut conn {
                    Conn::Warrant(c) => match c
                        .acquire(AcquireOptions::new(&key, Duration::from_secs(1800)))
                        .await?
                    {
                        // Dropping the handle stops its keepalives; the lease lives on for its ttl.
                        Acquired::Granted(lease) => drop(lease),
                        other => return Err(anyhow!("not granted: {other:?}")),
                    },
                    Conn::Etcd(c) => {
                        let lease = c.lease_grant(1800, None).await?.id();
                        c.put(key, "", Some(PutOptions::new().with_lease(lease)))
                            .await?;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(count as f64 / start.elapsed().as_secs_f64())
}
