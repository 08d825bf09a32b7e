//! A Warrant node: opens storage, starts openraft, serves the Raft transport and the client API, and
//! runs the leader's duties (lease time, approval expiry, record limits).
//!
//! Decisions are never made here: every mutation is a [`model::Command`] proposed through Raft and
//! decided in the state machine's apply. This module validates input, proposes, and carries out the
//! effects (waking waiting acquires, moving lease deadlines).
//!
//! Where to look:
//! - a request's input checks: `requests.rs`; the calls: `api.rs` (leases, reads), `governance.rs`
//!   (policy, approvals, audit), `tokens.rs`, `membership.rs`, `backup.rs`, `watcher.rs`;
//! - lease time (countdowns, keepalive acknowledgement, expiry, ttl checkpoints): `lease_time.rs`;
//! - who the caller is, limits and rates: `auth.rs`; connections before that: `admission.rs`;
//! - proposals and their batching: `Shared::propose`, `batch.rs`; a release's waiting acquire:
//!   `handoff.rs`; acquires waiting for an event: `waiters.rs`;
//! - decisions themselves (grants, policy, tokens raised, leases expired): `crate::model`.

mod admission;
mod api;
mod audit_sync;
pub mod auth;
pub mod backup;
mod batch;
pub mod config;
pub(crate) mod convert;
mod governance;
mod handoff;
mod lease_time;
mod membership;
mod observe;
pub mod requests;
mod standing;
mod tokens;
mod waiters;
mod watcher;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::Status;

pub use config::Config;

use crate::model::{self, Command, Event, LeaseId, Principal};
use crate::raft::{network::Network, service::RaftService, NodeAddr, Raft};
use crate::storage::{self, AppliedEvents, SmReader};
use batch::Batcher;
use lease_time::LeaseClock;
use waiters::Waiters;

/// How long a proposal may take to commit before the caller is told the outcome is unknown.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leadership confirmation may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a follower waits for the leader to decide a forwarded admin check.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most leases named in one leader maintenance entry (Expire / CheckpointTtl).
const MAX_PER_ENTRY: usize = 10_000;
pub use crate::proto::LEADER_METADATA;

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("config [security]: {0}")]
    Security(String),
    #[error("{0}")]
    Retired(String),
    #[error(
        "refusing to bootstrap: peer {peer} ({addr}) already belongs to cluster id {cluster_id}, so \
         this cluster was bootstrapped before and this node's data directory is new (lost or wiped). \
         A voter that lost its data must not come back as itself (it may have voted): remove it \
         (`warrant cluster remove-node {me}`), then start it with an empty data directory and \
         `bootstrap = false`, and add it again (`warrant cluster add-node`)"
    )]
    AlreadyBootstrapped {
        peer: u64,
        addr: String,
        cluster_id: String,
        me: u64,
    },
}

/// Wall-clock milliseconds since the Unix epoch: stamped into entries for audit and policy only;
/// durations are measured with the monotonic clock.
pub(crate) fn wall_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The time stamped into the entries this node proposes as leader (the state machine's only
/// clock): its wall clock, but never behind the state machine's clock as this leader found it
/// plus the time passed since by its monotonic clock. The state machine's clock only moves
/// forward, so a new leader whose wall clock is behind its predecessor's would otherwise hold it
/// still for the difference, and every deadline counted in it (queued waiters, approvals) would
/// stretch by as much (issue 24 item 9). Audit times then run ahead of such a leader's wall
/// clock, never behind the cluster's.
#[derive(Default)]
pub(crate) struct EntryClock {
    /// The state machine's clock when this node's lease clock started, and when that was.
    floor: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
}

impl EntryClock {
    /// This node starts leading: the state machine's clock stood at `state_now_ms`.
    pub fn start_from(&self, state_now_ms: u64) {
        *self.floor.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((state_now_ms, std::time::Instant::now()));
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms_with(wall_now_ms())
    }

    fn now_ms_with(&self, wall_ms: u64) -> u64 {
        match *self.floor.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((ms, at)) => wall_ms.max(ms.saturating_add(at.elapsed().as_millis() as u64)),
            None => wall_ms,
        }
    }
}

/// Everything the services and background tasks of one node share.
pub(crate) struct Shared {
    pub node_id: u64,
    pub raft: Raft,
    pub sm: SmReader,
    /// This node's copy of the replicated audit log (records of applied entries).
    pub audit: storage::AuditLog,
    pub config: Config,
    pub admins: Vec<Principal>,
    pub clock: LeaseClock,
    pub waiters: Waiters,
    /// Releases on their way to the log, which one acquire each may ride behind.
    pub handoffs: handoff::Handoffs,
    /// Shares one quorum confirmation among concurrent callers: keepalives (DESIGN rule 3), answers
    /// given without a write, linearizable reads. Use it through [`Shared::confirm_leadership`].
    pub confirmer: Batcher<(), Result<(), Status>>,
    /// Gathers concurrent proposals into batch entries.
    pub proposer: Batcher<Command, Result<model::Response, Status>>,
    /// Audit notes of answers given without a write, proposed and not yet committed.
    pub notes_in_flight: std::sync::atomic::AtomicUsize,
    /// One `VerifyAudit` at a time on this node: each reads the whole audit log.
    pub verifying: tokio::sync::Semaphore,
    /// Shares one `Renew` entry among the first keepalives of leases in a new term.
    pub renewer: Batcher<LeaseId, Result<Result<model::Lease, model::OpError>, Status>>,
    /// Authentication, the signing key and per-principal limits.
    pub auth: Arc<auth::Auth>,
    /// This node's TLS material (secure mode): its node certificate also serves as its client
    /// certificate towards peers.
    pub tls: Option<crate::security::tls::TlsMaterial>,
    /// The node-to-node transport, for Warrant's own notices (`raft::Control`).
    pub network: Network,
    /// Set while this leader hands leadership over: it proposes nothing more and confirms no
    /// leadership (a confirmation round would renew the followers' leader lease).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Proposals accepted by [`Shared::propose`] and not answered yet.
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// Nodes this leader removed: where they were and the membership's log index (a retried
    /// remove-node tells them again).
    pub removed: std::sync::Mutex<BTreeMap<crate::raft::NodeId, (crate::raft::NodeAddr, u64)>>,
    /// The watch history and its head revision.
    pub watch: storage::WatchFeed,
    /// Becomes true when the node stops (long-lived streams end).
    pub stopping: watch::Receiver<bool>,
    /// Set once this node learns it was removed: why it no longer serves.
    pub retired: Arc<std::sync::OnceLock<String>>,
    /// Whether this node may vote yet (DESIGN rule 6; `standing.rs`).
    pub standing: storage::Standing,
    /// The time this node stamps into the entries it proposes.
    pub entry_clock: Arc<EntryClock>,
}

impl Shared {
    /// The defaults stamped into every acquire (DESIGN: decisions are a function of the log).
    pub fn policy_defaults(&self) -> model::PolicyDefaults {
        model::PolicyDefaults {
            allow_without_policy: self.config.default_decision == config::DefaultDecision::Allow,
            approval_timeout_ms: self.config.approval_timeout.as_millis() as u64,
        }
    }

    /// Propose a command and wait for the state machine's answer. Concurrent proposals share one
    /// log entry (group commit; DESIGN "Performance stance").
    pub async fn propose(&self, cmd: Command) -> Result<model::Response, Status> {
        self.enqueue(cmd).answer().await
    }

    /// Propose `cmd` and take its answer out with `take` (one of `model::Response`'s `into_…`):
    /// any other answer is INTERNAL.
    pub async fn propose_for<T>(
        &self,
        cmd: Command,
        take: fn(model::Response) -> Result<T, model::UnexpectedAnswer>,
    ) -> Result<T, Status> {
        take(self.propose(cmd).await?).map_err(|e| Status::internal(e.to_string()))
    }

    /// Put a command in the proposal queue now, ahead of anything queued later; await
    /// [`Proposal::answer`] for the state machine's answer.
    pub fn enqueue(&self, cmd: Command) -> Proposal<'_> {
        // Counted before the check: a hand-over sets `draining` and then waits for the count to
        // reach zero, so every proposal either sees the flag or is waited for (both SeqCst).
        let counted = InFlight::enter(&self.in_flight);
        let queued = if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            Err(handing_over())
        } else {
            self.proposer
                .enqueue(cmd)
                .ok_or_else(|| Status::unavailable("node is shutting down"))
        };
        Proposal {
            _counted: counted,
            queued,
        }
    }

    /// Authorize (and audit) an admin `action` by `by`: a log entry decided in apply.
    pub async fn admin_check(
        &self,
        caller: &auth::Caller,
        by: model::Principal,
        action: &str,
        detail: String,
    ) -> Result<(), Status> {
        caller.require_certificate(action)?;
        let by_admin = self.admins.contains(&by);
        let check = caller.wrap(Command::AdminCheck {
            by,
            by_admin,
            action: action.into(),
            detail,
        });
        // On a follower the check goes to the leader over the Raft port, so audited admin calls
        // (a backup, an audit read, a watch) work on any member.
        let answer = match self.leader_elsewhere() {
            Some(leader) => self.forward(&leader, check).await?,
            None => self.propose(check).await?,
        };
        answer
            .into_admin_check()
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| convert::op_error(&e))
    }

    /// Access-token requests are served only by a leader whose lease clock runs: it has applied
    /// the first entry of its term, so every revocation committed before is applied too and the
    /// interceptor's revocation check cannot miss one. Elsewhere they are sent to the leader.
    fn token_gate(&self, request: &tonic::Request<()>) -> Result<(), Status> {
        match auth::caller(request) {
            Ok(caller) => self.token_gate_for(&caller),
            Err(_) => Ok(()),
        }
    }

    /// [`token_gate`](Self::token_gate) for a known caller (one message of a session).
    fn token_gate_for(&self, caller: &auth::Caller) -> Result<(), Status> {
        if !matches!(caller.via, auth::Via::Token(_)) {
            return Ok(());
        }
        let leading = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader == Some(self.node_id)).then_some(m.current_term)
        };
        match leading {
            Some(term) if self.clock.active_term() == Some(term) => self.token_known(caller),
            Some(_) => Err(Status::unavailable(
                "this leader is still applying its predecessors' entries; retry in a moment",
            )),
            None => Err(self.redirect()),
        }
    }

    /// An access token is honoured only while this cluster's registry holds it (minted here, not
    /// yet expired): a token minted by the cluster a backup came from after the backup was taken,
    /// or revoked there after it, is unknown to the restored cluster (a restore starts with an
    /// empty registry), so the signing key they share does not bring it back.
    fn token_known(&self, caller: &auth::Caller) -> Result<(), Status> {
        let auth::Via::Token(id) = &caller.via else {
            return Ok(());
        };
        // The record must be this token's, not one minted since under the same id (ids may be
        // chosen by the minting admin, and a restored cluster keeps the signing key).
        let same = |t: &crate::model::access::TokenRecord| {
            t.expires_at_ms == caller.valid_until_ms
                && caller.identity.as_ref().is_some_and(|i| match i {
                    crate::security::Identity::Principal(p) => *p == t.principal,
                    crate::security::Identity::Node(_) => false,
                })
        };
        if self.sm.read().state.token(id).is_some_and(same) {
            return Ok(());
        }
        Err(Status::unauthenticated(format!(
            "access token {id} is not known to this cluster: it was minted by another cluster, or \
             before this cluster was restored from a backup; ask an admin for a new one"
        )))
    }

    /// The checks a unary call gets at the door, for one message of a session: this node is not
    /// retired, the caller's credential still holds and it is within its rate, token callers reach
    /// only an active leader.
    pub fn session_gate(&self, caller: &auth::Caller) -> Result<(), Status> {
        if let Some(why) = self.retired.get() {
            return Err(Status::unavailable(why.clone()));
        }
        self.auth.recheck(caller)?;
        self.token_gate_for(caller)
    }

    /// The leader's address when another node leads (as far as this node knows).
    fn leader_elsewhere(&self) -> Option<NodeAddr> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader.filter(|l| *l != self.node_id)?;
        m.membership_config.membership().get_node(&leader).cloned()
    }

    /// Have `leader` decide `cmd` (an admin check), then wait until this node has applied what the
    /// leader had when it answered: what the caller reads here next (a backup, the audit) then
    /// holds every write acknowledged before the check, as it would on the leader.
    async fn forward(&self, leader: &NodeAddr, cmd: Command) -> Result<model::Response, Status> {
        let (answer, applied) = match self.network.forward(leader, &cmd, FORWARD_TIMEOUT).await {
            Ok(Ok(answered)) => answered,
            Ok(Err((code, message))) => return Err(Status::new(tonic::Code::from(code), message)),
            // A leader of an older version: the client goes there itself.
            Err(s) if s.code() == tonic::Code::Unimplemented => return Err(self.redirect()),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => return Err(s),
            Err(s) => {
                return Err(Status::unavailable(format!(
                    "could not reach the leader at {} to check this admin call: {}; retry",
                    leader.raft,
                    s.message()
                )))
            }
        };
        self.raft
            .wait(Some(FORWARD_TIMEOUT))
            .applied_index_at_least(Some(applied), "apply up to the leader's answer")
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "this node has not applied up to the leader's index {applied} within {}; ask \
                     another node",
                    humantime::format_duration(FORWARD_TIMEOUT)
                ))
            })?;
        Ok(answer)
    }

    /// The leader's side of [`Self::forward`]: propose the admin check, with the admin flag taken
    /// from this node's config (not the sender's), and answer with the applied index after it.
    async fn decide_forwarded(&self, mut cmd: Command) -> crate::raft::Forwarded {
        let check = match &mut cmd {
            Command::AsToken { cmd, .. } | Command::ViaToken { cmd, .. } => cmd.as_mut(),
            cmd => cmd,
        };
        if let Command::AdminCheck { by, by_admin, .. } = check {
            *by_admin = self.admins.contains(by);
        }
        let answer = self
            .propose(cmd)
            .await
            .map_err(|s| (s.code() as i32, s.message().to_string()))?;
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        Ok((answer, applied))
    }

    /// Confirm this node leads (quorum round trip) and that its state machine has applied everything
    /// committed before the call: after this, reads are linearizable.
    pub async fn confirm_leadership(&self) -> Result<(), Status> {
        if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(handing_over());
        }
        self.confirmer
            .submit(())
            .await
            .unwrap_or_else(|| Err(Status::unavailable("node is shutting down")))
    }

    /// [`Self::confirm_leadership`] for an answer given to `caller` without a log write, then
    /// check the caller's access token again: a revocation committed before the call arrived is
    /// applied by now, and no log entry orders this answer after it (as a write's `ViaToken`
    /// check would), so the answer checks the confirmed state itself, as keepalives do.
    pub async fn confirm_for(&self, caller: &auth::Caller) -> Result<(), Status> {
        #[cfg(debug_assertions)]
        crate::failpoint::pause("WARRANT_TEST_PAUSE_BEFORE_CONFIRM_MS").await;
        self.confirm_leadership().await?;
        self.auth.still_valid(caller)
    }

    /// A "not the leader" answer naming the leader this node knows of.
    pub fn redirect(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let node = m
            .current_leader
            .and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        not_leader(node.as_ref())
    }
}

/// Batches of proposals in flight at once. One: everything that arrives while a batch commits
/// forms the next batch, so the log gets fewer, larger entries and every node pays its per-entry
/// costs (append, fsync, AppendEntries, apply) less often. Measured on 2 cores (benches/RESULTS.md,
/// 2026-11-24): uncontended C = 64 went from 4.7–6.0 k to 6.6–8.2 k cycles/s against 8 in flight,
/// with a lower p99, and C = 1 is unchanged (a lone request never waits for another batch).
///
/// Whatever this is, batches reach the log in queue order: the batcher builds each batch's work in
/// order and [`propose_entry`] hands the entry to Raft before its first await (an acquire queued
/// behind a release, `handoff.rs`, relies on it).
const PROPOSALS_IN_FLIGHT: usize = 1;

/// Under load (the previous batch held more than one command), how long a batch waits for more after
/// its first command could go: long enough for the callers the previous batch just answered to send
/// their next request (a release after its grant) into this entry instead of the next one. Nothing is
/// acknowledged before its entry is committed; a request after a quiet spell never waits. Measured on 2 cores
/// (benches/RESULTS.md, 2026-11-24), Warrant alone: 300 µs took uncontended C = 64 from 7.3–8.9 k to
/// 8.0–10.0 k cycles/s and contended from 1.5–2.0 k to 2.1–2.2 k grants/s, C = 1 unchanged.
const PROPOSAL_LINGER: Duration = Duration::from_micros(300);

/// Most bytes of commands in one batch entry (a single larger command, at most the request limit,
/// goes alone): keeps entries, and the AppendEntries that carry them, far below the Raft port's
/// 64 MiB message limit however many large requests arrive at once.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The answer while this leader hands leadership over.
fn handing_over() -> Status {
    Status::unavailable("this leader is handing leadership over; retry in a moment")
}

/// A command in the proposal queue ([`Shared::enqueue`]), counted in flight until answered.
pub(crate) struct Proposal<'a> {
    _counted: InFlight<'a>,
    queued: Result<ProposalAnswer, Status>,
}

type ProposalAnswer = tokio::sync::oneshot::Receiver<Result<model::Response, Status>>;

impl Proposal<'_> {
    /// The state machine's answer (or why there is none).
    pub async fn answer(self) -> Result<model::Response, Status> {
        match self.queued?.await {
            Err(_) => Err(Status::unavailable("node is shutting down")),
            // Not applied: the caller's access token was revoked first (`Command::ViaToken`).
            Ok(Ok(model::Response::Refused(e))) => Err(convert::op_error(&e)),
            Ok(answer) => answer,
        }
    }
}

/// Counts proposals accepted and not yet answered (a hand-over waits for none).
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Propose one entry: handed to Raft at once (so entries reach the log in the order of these calls),
/// then the returned future waits until it is applied.
fn propose_entry(
    raft: &Raft,
    clock: &EntryClock,
    cmd: Command,
) -> impl Future<Output = Result<model::Response, Status>> + Send + 'static {
    let request = model::Request {
        now_ms: clock.now_ms(),
        cmd,
    };
    let started = std::time::Instant::now();
    // Sending to the Raft core is a send on an unbounded channel: it completes in its first poll,
    // unless the core has stopped.
    let sent = raft.client_write_ff(Arc::new(request)).now_or_never();
    async move {
        let answer = match sent {
            Some(Ok(rx)) => Ok(tokio::time::timeout(PROPOSE_TIMEOUT, rx).await),
            // Not sent: Raft has stopped.
            Some(Err(fatal)) => Err(Status::unavailable(format!("cannot commit: {fatal}"))),
            None => Err(Status::unavailable("cannot commit: Raft is shutting down")),
        };
        metrics::histogram!("warrant_raft_commit_duration_seconds").record(started.elapsed());
        match answer? {
            Err(_) => Err(Status::deadline_exceeded(
                "the cluster did not commit the request in time; its outcome is unknown: retry with the same request_id",
            )),
            // Sent, and Raft stopped before answering: the entry may still commit.
            Ok(Err(_)) => Err(Status::unavailable(
                "the node stopped before the request was answered; its outcome is unknown: retry with the same request_id",
            )),
            Ok(Ok(Ok(resp))) => resp.data.0.ok_or_else(|| Status::internal("the state machine gave no answer")),
            Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => Err(not_leader(f.leader_node.as_ref())),
            Ok(Ok(Err(e))) => Err(Status::unavailable(format!("cannot commit: {e}"))),
        }
    }
}

/// One quorum confirmation of this node's leadership, waited for until everything committed before
/// it is applied (openraft's read index). Shared by a batch of callers, each of which arrived before
/// it started, so every one of them reads a state at least as new as its own arrival.
async fn confirm_once(raft: &Raft) -> Result<(), Status> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, raft.ensure_linearizable()).await {
        Err(_) => Err(Status::unavailable(
            "could not confirm leadership with a quorum in time; retry",
        )),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(not_leader(f.leader_node.as_ref()))
        }
        Ok(Err(e)) => Err(Status::unavailable(format!(
            "cannot confirm leadership: {e}"
        ))),
    }
}

/// Propose a batch of commands as one entry (a single command as itself), handed to Raft at once,
/// and answer each.
fn propose_batch(
    raft: &Raft,
    clock: &EntryClock,
    mut cmds: Vec<Command>,
) -> impl Future<Output = Vec<Result<model::Response, Status>>> + Send + 'static {
    let n = cmds.len();
    let entry = if n == 1 {
        propose_entry(raft, clock, cmds.remove(0))
    } else {
        propose_entry(raft, clock, Command::Batch(cmds))
    };
    async move {
        match entry.await {
            Ok(answer) if n == 1 => vec![Ok(answer)],
            Ok(model::Response::Batch(answers)) if answers.len() == n => {
                answers.into_iter().map(Ok).collect()
            }
            Ok(_) => (0..n)
                .map(|_| Err(Status::internal("a batch entry was answered out of shape")))
                .collect(),
            Err(status) => (0..n).map(|_| Err(status.clone())).collect(),
        }
    }
}

fn not_leader(leader: Option<&NodeAddr>) -> Status {
    match leader {
        Some(node) => {
            let mut status = Status::unavailable(format!(
                "not the leader; the leader is at {} (clients retry there)",
                node.client
            ));
            if let Ok(v) = node.client.parse() {
                status.metadata_mut().insert(LEADER_METADATA, v);
            }
            status
        }
        None => Status::unavailable(
            "not the leader, and no leader is known yet (an election is under way); retry shortly",
        ),
    }
}

/// A running node. Dropping it does not stop it; call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    pub raft: Raft,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeHandle {
    /// Leave gracefully (SIGTERM): a leader first hands leadership to an up-to-date voter, so the
    /// cluster does not wait out an election timeout; then stop.
    pub async fn shutdown(self) {
        let wait = self.shared.config.raft.election_timeout_max * 3;
        self.shared.hand_over(wait).await;
        self.stop().await;
    }

    /// Stop serving and shut Raft down at once.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.raft.shutdown().await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Start a node from its config: storage, Raft, both gRPC servers and the leader's duties.
/// Read and check the `[security]` files: the node certificate must name this node.
fn load_security(
    config: &Config,
) -> Result<
    Option<(
        crate::security::tls::TlsMaterial,
        crate::security::SigningKey,
        crate::security::KeyRing,
    )>,
    Error,
> {
    let Some(sec) = &config.security else {
        return Ok(None);
    };
    let files = crate::security::tls::TlsFiles {
        ca: sec.ca.clone(),
        cert_and_key: Some((sec.cert.clone(), sec.key.clone())),
    };
    let material = files.load().map_err(Error::Security)?;
    let want = crate::security::Identity::Node(config.node_id);
    if material.identity.as_ref() != Some(&want) {
        return Err(Error::Security(format!(
            "{} names {}, but this is node {} (its certificate must carry the URI SAN {})",
            sec.cert.display(),
            material
                .identity
                .as_ref()
                .map_or("nothing".to_string(), |i| i.to_string()),
            config.node_id,
            want.to_uri()
        )));
    }
    // Whoever reads the signing key can mint tokens and grant certificates for any principal.
    crate::storage::files::check_private(&sec.signing_key, "the cluster signing key")
        .map_err(Error::Security)?;
    let signing = crate::security::SigningKey::load(&sec.signing_key)
        .map_err(|e| Error::Security(e.to_string()))?;
    let ring = match &sec.verifying_keys {
        None => crate::security::KeyRing::from(signing.verifying_key()),
        Some(path) => {
            let ring =
                crate::security::KeyRing::load(path).map_err(|e| Error::Security(e.to_string()))?;
            // A node that signs with a key its own ring lacks would refuse its own tokens.
            if ring.find(&signing.key_id()).is_none() {
                return Err(Error::Security(format!(
                    "{}: the signing key {} ({}) is not in this key ring; put the ring that \
                     `warrant keys rotate` wrote on every node",
                    path.display(),
                    signing.key_id(),
                    sec.signing_key.display()
                )));
            }
            ring
        }
    };
    Ok(Some((material, signing, ring)))
}

pub async fn start(config: Config) -> Result<NodeHandle, Error> {
    let security = load_security(&config)?;
    let marker = config.data_dir.join(membership::RETIRED_FILE);
    if let Ok(why) = std::fs::read_to_string(&marker) {
        return Err(Error::Retired(format!(
            "{} ({} says so)",
            why.trim(),
            marker.display()
        )));
    }
    crate::storage::files::private_dir(&config.data_dir).map_err(|source| Error::Bind {
        addr: config.data_dir.display().to_string(),
        what: "data directory",
        source,
    })?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let storage::Opened {
        log: log_store,
        sm: mut sm_store,
        cluster_id,
        standing,
    } = storage::open(
        &config.data_dir,
        &config.cluster_name,
        config.node_id,
        true,
        events_tx,
        config.watch_history,
    )?;
    if config.chaos() == Some(config::ChaosBreak::LoseGrants) {
        sm_store.chaos_lose_grants();
    }
    let sm = sm_store.reader();
    let audit = sm_store.audit_log();
    let watch_feed = sm_store.watch_feed();

    let rc = &config.raft;
    let raft_config = openraft::Config {
        cluster_name: config.cluster_name.clone(),
        heartbeat_interval: rc.heartbeat_interval.as_millis() as u64,
        election_timeout_min: rc.election_timeout_min.as_millis() as u64,
        election_timeout_max: rc.election_timeout_max.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(rc.snapshot_after_entries),
        max_in_snapshot_log_to_keep: rc.keep_entries_after_snapshot,
        install_snapshot_timeout: 2000,
        // A joining node (new data directory, not admitted yet) never stands for election
        // (DESIGN rule 6); admission turns elections on (`standing.rs`).
        enable_elect: !standing.is_joining(),
        ..Default::default()
    }
    .validate()
    .map_err(|e| Error::Raft(e.to_string()))?;
    if !config.raft.dial_via.is_empty() {
        tracing::warn!(
            dial_via = ?config.raft.dial_via,
            "raft.dial_via is set: Raft traffic to these peers goes through other addresses (for \
             fault injection only)"
        );
    }
    let network = Network::new(
        security.as_ref().map(|(m, _, _)| m.client()),
        cluster_id.clone(),
        config.raft.dial_via.clone(),
    );
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        network.clone(),
        log_store,
        sm_store,
    )
    .await
    .map_err(|e| Error::Raft(e.to_string()))?;

    let me = config.me().clone();
    let raft_listener = TcpListener::bind(config::listen_addr(&me.raft))
        .await
        .map_err(|source| Error::Bind {
            addr: me.raft.clone(),
            what: "raft",
            source,
        })?;
    let http_listener = match &config.http_addr {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    addr: addr.clone(),
                    what: "HTTP (metrics, health)",
                    source,
                })?,
        ),
    };
    let client_listener = TcpListener::bind(config::listen_addr(&me.client))
        .await
        .map_err(|source| Error::Bind {
            addr: me.client.clone(),
            what: "client API",
            source,
        })?;

    let confirm_raft = raft.clone();
    let propose_raft = raft.clone();
    let entry_clock = Arc::new(EntryClock::default());
    let propose_clock = entry_clock.clone();
    let shape = batch::Shape {
        max_in_flight: PROPOSALS_IN_FLIGHT,
        max_weight: MAX_BATCH_BYTES,
        linger: PROPOSAL_LINGER,
    };
    let proposer = Batcher::spawn_shaped(
        shape,
        |cmd: &Command| bincode::serialized_size(cmd).map_or(usize::MAX, |n| n as usize),
        move |cmds: Vec<Command>| propose_batch(&propose_raft, &propose_clock, cmds),
    );
    let draining: Arc<std::sync::atomic::AtomicBool> = Default::default();
    let confirmer = Batcher::spawn(1, {
        let draining = draining.clone();
        move |items: Vec<()>| {
            let raft = confirm_raft.clone();
            let draining = draining.clone();
            async move {
                if draining.load(std::sync::atomic::Ordering::SeqCst) {
                    return vec![Err(handing_over()); items.len()];
                }
                let result = confirm_once(&raft).await;
                vec![result; items.len()]
            }
        }
    });
    let (tls, auth) = match security {
        Some((material, signing, ring)) => (
            Some(material),
            auth::Auth::secure(
                signing,
                ring,
                config.cluster_name.clone(),
                sm.clone(),
                config.limits.clone(),
            ),
        ),
        None => (None, auth::Auth::insecure(config.limits.clone())),
    };
    let auth = Arc::new(auth);
    let retired: Arc<std::sync::OnceLock<String>> = Default::default();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Shared>| {
        let weak = weak.clone();
        let renewer = Batcher::spawn(1, move |ids: Vec<LeaseId>| {
            let weak = weak.clone();
            async move { lease_time::renew_batch(weak, ids).await }
        });
        Shared {
            node_id: config.node_id,
            raft: raft.clone(),
            sm,
            audit,
            admins: config.admin_principals(),
            config: config.clone(),
            clock: LeaseClock::default(),
            waiters: Waiters::default(),
            handoffs: handoff::Handoffs::default(),
            proposer,
            confirmer,
            renewer,
            notes_in_flight: Default::default(),
            verifying: tokio::sync::Semaphore::new(1),
            auth: auth.clone(),
            tls: tls.clone(),
            network: network.clone(),
            draining: draining.clone(),
            in_flight: Default::default(),
            removed: Default::default(),
            watch: watch_feed,
            stopping: shutdown_rx.clone(),
            retired: retired.clone(),
            standing: standing.clone(),
            entry_clock: entry_clock.clone(),
        }
    });

    let mut tasks = Vec::new();
    let raft_admission = admission::Admission::new("raft", &config.limits);
    let client_admission = admission::Admission::client(&config.limits);
    let admissions = [raft_admission.clone(), client_admission.clone()];
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server_builder = |require_client_cert: bool| -> Result<tonic::transport::Server, Error> {
        let builder = tonic::transport::Server::builder();
        match &tls {
            None => Ok(builder),
            Some(m) => builder
                .tls_config(
                    m.server(require_client_cert, config.limits.handshake_timeout)
                        .map_err(Error::Security)?,
                )
                .map_err(|e| Error::Security(e.to_string())),
        }
    };
    // Pings end the append streams of a peer that vanished without closing its connection.
    let mut raft_server = server_builder(true)?
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    // HTTP/2 pings find clients that vanished without closing their keepalive streams or sessions,
    // so their slots are freed.
    let client_server = server_builder(false)?
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    tasks.push(tokio::spawn({
        let shared = shared.clone();
        async move {
            while let Some(notice) = control_rx.recv().await {
                shared.on_control(notice).await;
            }
        }
    }));
    let (forward_tx, mut forward_rx) = mpsc::channel::<crate::raft::ForwardRequest>(64);
    tasks.push(tokio::spawn({
        let shared = shared.clone();
        async move {
            while let Some(f) = forward_rx.recv().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = f.reply.send(shared.decide_forwarded(f.command).await);
                });
            }
        }
    }));
    tasks.push(tokio::spawn(membership::watch_removal(shared.clone())));
    if standing.is_joining() {
        tasks.push(tokio::spawn(standing::await_admission(
            shared.clone(),
            standing.clone(),
            cluster_id.clone(),
        )));
    }
    if let Some(listener) = http_listener {
        tasks.push(tokio::spawn(observe::serve(
            shared.clone(),
            listener,
            stop(shutdown_rx.clone()),
        )));
        tasks.push(tokio::spawn(observe::sample(shared.clone())));
    }
    let learned: crate::raft::Learned = Default::default();
    let (learn_tx, learn_rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.push(tokio::spawn(learn_members(
        shared.clone(),
        learned.clone(),
        learn_rx,
    )));
    tasks.push(tokio::spawn({
        let peer_auth = auth.clone();
        let svc = tonic::service::interceptor::InterceptedService::new(
            RaftService::new(
                config.node_id,
                raft.clone(),
                cluster_id.clone(),
                (standing.clone(), retired.clone()),
                (control_tx, forward_tx),
                shutdown_rx.clone(),
                (learned, learn_tx),
            ),
            move |r| peer_auth.intercept_peer(r),
        );
        let stop = stop(shutdown_rx.clone());
        async move {
            if let Err(e) = raft_server
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    admission::incoming(raft_listener, raft_admission),
                    stop,
                )
                .await
            {
                tracing::error!(error = %e, "raft transport stopped");
            }
        }
    }));
    tasks.push(tokio::spawn({
        let client_auth = auth.clone();
        let retired = retired.clone();
        let gate = shared.clone();
        let proving = client_admission.clone();
        let svc = tonic::service::interceptor::InterceptedService::new(
            api::service(shared.clone()),
            // UNAVAILABLE, not FAILED_PRECONDITION: every gRPC client then tries another member.
            move |r| match retired.get() {
                Some(why) => Err(Status::unavailable(why.clone())),
                None => {
                    let r = client_auth.intercept(r)?;
                    // An unknown token counts against its address; a redirect to the leader does not.
                    gate.token_gate(&r).inspect_err(|s| {
                        if s.code() == tonic::Code::Unauthenticated {
                            client_auth.refused_at_door(&r);
                        }
                    })?;
                    client_auth.charge_request(&r)?;
                    if let Some(peer) = r.remote_addr() {
                        proving.proven(peer);
                    }
                    Ok(r)
                }
            },
        );
        let stop = stop(shutdown_rx.clone());
        async move {
            if let Err(e) = client_server
                .layer(tower::util::MapResponseLayer::new(
                    api::request_too_large_is_resource_exhausted,
                ))
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    admission::incoming(client_listener, client_admission),
                    stop,
                )
                .await
            {
                tracing::error!(error = %e, "client API stopped");
            }
        }
    }));
    tasks.push(tokio::spawn(dispatch_events(shared.clone(), events_rx)));
    tasks.push(tokio::spawn(leader_duties(shared.clone())));
    tasks.push(tokio::spawn(audit_sync::fill_audit_gaps(shared.clone())));
    tasks.push(tokio::spawn({
        let auth = auth.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                auth.forget_idle();
                admissions.iter().for_each(|a| a.forget_idle());
            }
        }
    }));

    if config.bootstrap
        && !raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?
    {
        if cluster_id.get().is_none() {
            // Every peer answers and none has a cluster yet (else this node lost its data), and
            // the founding members to tell are on disk, before the cluster gets its id.
            standing::await_founding_peers(&network, &config).await?;
            standing.set_founding(
                config
                    .peers
                    .keys()
                    .copied()
                    .filter(|id| *id != config.node_id)
                    .collect(),
            )?;
            cluster_id.adopt(&storage::ClusterId::generate())?;
        }
        // The founding members are on disk and no peer has a cluster: this node founds it, with
        // nothing lost to forget. (Had a peer one, this node lost its data and refused above.)
        if standing.is_joining() {
            standing.admit()?;
            raft.runtime_config().elect(true);
        }
        let members: BTreeMap<u64, NodeAddr> = config
            .peers
            .iter()
            .map(|(id, p)| {
                (
                    *id,
                    NodeAddr {
                        raft: p.raft.clone(),
                        client: p.client.clone(),
                    },
                )
            })
            .collect();
        // Another start may have initialised it already (e.g. a restart before the first commit).
        if let Err(e) = raft.initialize(members).await {
            tracing::warn!(error = %e, "cluster initialisation skipped");
        } else {
            tracing::info!("initialised the cluster with {} voters", config.peers.len());
        }
    }
    match config.default_decision {
        config::DefaultDecision::Allow => tracing::warn!(
            "default_decision = \"allow\": while no policy is loaded, EVERY acquisition is allowed \
             (development only; load one with `warrant policy put FILE`)"
        ),
        config::DefaultDecision::Deny => tracing::info!(
            "default_decision = \"deny\": nothing is granted until a policy is loaded"
        ),
    }
    tracing::info!(node = config.node_id, client = %me.client, raft = %me.raft, "node started");
    Ok(NodeHandle {
        raft,
        shared,
        shutdown,
        tasks,
    })
}

/// Carry out the state machine's events: wake waiting acquires, keep the lease clock in step.
async fn dispatch_events(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<AppliedEvents>) {
    while let Some(events) = rx.recv().await {
        for event in events {
            lease_time::on_event(&shared, &event);
            match event {
                Event::Granted { grant } => {
                    metrics::counter!("warrant_leases_granted_total").increment(1);
                    tracing::info!(node = shared.node_id, resource = %grant.lease.resource, lease = %grant.lease.lease_id,
                        token = grant.lease.token.0, principal = %grant.lease.principal, "granted");
                    let request_id = grant.lease.request_id.clone();
                    shared
                        .waiters
                        .notify(&request_id, model::AcquireOutcome::Granted(grant));
                }
                Event::Ended { lease, reason } => {
                    metrics::counter!("warrant_leases_ended_total", "reason" => reason.kind())
                        .increment(1);
                    tracing::info!(node = shared.node_id, resource = %lease.resource, lease = %lease.lease_id, token = lease.token.0,
                        ended = %reason, "lease ended");
                }
                Event::WaiterEnded { request_id } => {
                    // The request's final answer (wait ended, already done, not approved, …) is in
                    // the dedup table: events are sent after the entries that caused them applied.
                    let outcome = shared
                        .sm
                        .read()
                        .state
                        .request(&request_id)
                        .unwrap_or(model::AcquireOutcome::WaitEnded);
                    shared.waiters.notify(&request_id, outcome);
                }
            }
        }
    }
}

/// The leader's duties: initialise the lease clock on winning an election, propose expiries of leases
/// whose countdown ran out (batched), and checkpoint the remaining ttl of quiet leases.
async fn leader_duties(shared: Arc<Shared>) {
    // Server metrics change only with the node's role, leader or term (the full metrics change with
    // every log write, which would wake this loop thousands of times a second).
    let mut metrics = shared.raft.server_metrics();
    let lease = shared.config.lease.clone();
    let mut ticker = tokio::time::interval(lease.expiry_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = tokio::time::Instant::now();
    loop {
        let leading = {
            let m = metrics.borrow();
            (m.state.is_leader() && m.current_leader == Some(shared.node_id))
                .then_some(m.vote.leader_id().get_term())
        };
        match (leading, shared.clock.active_term()) {
            (Some(term), Some(active)) if term == active => {
                lease_time::expire_due(&shared).await;
                expire_approvals_due(&shared).await;
                settle_record_limits(&shared).await;
                if last_checkpoint.elapsed() >= lease.ttl_checkpoint_interval {
                    last_checkpoint = tokio::time::Instant::now();
                    lease_time::checkpoint_quiet(&shared).await;
                }
            }
            (Some(term), active) => {
                // A clock left over from an earlier term must never answer a keepalive in this one.
                if active.is_some() {
                    shared.clock.deactivate();
                }
                if lease_time::activate(&shared, term).await {
                    // The first checkpoint comes one interval after activation, so each leader that
                    // lives that long lowers the remaining ttl of quiet leases (DESIGN rule 3).
                    last_checkpoint = tokio::time::Instant::now();
                }
            }
            (None, Some(_)) => shared.clock.deactivate(),
            (None, None) => {}
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = ticker.tick() => {}
        }
    }
}

/// The Raft service refused a node that is not in this node's membership: ask this node's voters
/// whether it is a member after all (this node may have missed the entries that added it), at most
/// once every 2 s per node, and let it speak Raft if a majority of them say so.
async fn learn_members(
    shared: Arc<Shared>,
    learned: crate::raft::Learned,
    mut asks: tokio::sync::mpsc::UnboundedReceiver<crate::raft::NodeId>,
) {
    let mut last: std::collections::BTreeMap<crate::raft::NodeId, tokio::time::Instant> =
        Default::default();
    while let Some(id) = asks.recv().await {
        let now = tokio::time::Instant::now();
        if last
            .get(&id)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(2))
        {
            continue;
        }
        last.insert(id, now);
        let at = shared
            .raft
            .metrics()
            .borrow()
            .membership_config
            .log_id()
            .map_or(0, |l| l.index);
        if standing::members_vouch_for(&shared, id).await {
            tracing::info!(
                node = id,
                "a majority of the voters name node {id} a member: it may speak Raft to this node"
            );
            if let Ok(mut l) = learned.lock() {
                l.insert(id, at);
            }
        } else {
            tracing::warn!(node = id, "refused Raft messages from node {id}: not a member (a node certificate of a non-member, or a removed node)");
        }
    }
}

/// Replicate this leader's configured record limits when they differ from the cluster's (a new
/// cluster, one upgraded from a build with the older rules, or a config change rolled out to the
/// nodes).
async fn settle_record_limits(shared: &Shared) {
    let limits = &shared.config.limits;
    let wanted = model::RecordLimits {
        min_age_ms: limits.request_retention.as_millis() as u64,
        max_records: limits.request_records,
    };
    if shared.sm.read().state.record_limits() == Some(wanted) {
        return;
    }
    match shared.propose(Command::SetRecordLimits(wanted)).await {
        Ok(_) => tracing::info!(
            min_age_ms = wanted.min_age_ms,
            max_records = wanted.max_records,
            "request records: retention and table size set from this leader's config"
        ),
        Err(e) => tracing::warn!(error = %e, "could not propose the request record limits"),
    }
}

/// Propose the expiry of pending approvals whose time ran out (by the leader's wall clock; apply
/// checks again against entry time).
async fn expire_approvals_due(shared: &Shared) {
    let due = shared
        .sm
        .read()
        .state
        .approvals_due(shared.entry_clock.now_ms());
    if due.is_empty() {
        return;
    }
    if let Err(e) = shared
        .propose(Command::ExpireApprovals { request_ids: due })
        .await
    {
        tracing::warn!(error = %e, "could not propose approval expiry");
    }
}

#[cfg(test)]
mod tests {
    use super::EntryClock;

    #[test]
    fn a_leader_whose_wall_clock_is_behind_stamps_the_state_machines_time_moving_on() {
        let clock = EntryClock::default();
        assert_eq!(clock.now_ms_with(5_000), 5_000, "no floor: the wall clock");
        // The state machine stood at 600 s when this leader started; its wall clock says 300 s.
        clock.start_from(600_000);
        let first = clock.now_ms_with(300_000);
        assert!(first >= 600_000, "{first}");
        std::thread::sleep(std::time::Duration::from_millis(30));
        let later = clock.now_ms_with(300_030);
        assert!(
            later >= first + 30,
            "time moves on by the monotonic clock: {later}"
        );
        // A wall clock ahead of the floor is taken as it is.
        assert_eq!(clock.now_ms_with(10_000_000), 10_000_000);
    }
}
