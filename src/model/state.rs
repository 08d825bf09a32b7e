//! The replicated lease state and the entry point that applies log entries to it.
//!
//! Owns: the lease table, per-resource fences and wait queues, tasks, the request-id dedup table, the
//! ended-lease table, the term bookkeeping and the state machine's clock; `apply` dispatches each
//! command to the file that owns it (`grant.rs`: acquire, grant, ending and queues; `release.rs`:
//! release, checkpoint, revoke; `lease_time.rs`: renew, expiry, ttl checkpoints and the countdown a
//! new leader starts). Queries and snapshots live here too.
//!
//! Invariants: `apply` is a pure function of the state and the entry (no clock, I/O or randomness;
//! only `BTreeMap`/`VecDeque`, so snapshot bytes are identical on every replica); it never panics;
//! a resource has at most one live holder; tokens come from one counter and only grow, and a
//! resource's `fence` never decreases.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use bincode::Options;
use serde::{Deserialize, Serialize};

use super::command::{
    AcquireCmd, AcquireOutcome, Command, Effects, EntryMeta, Pending, Request, Response,
};
use super::error::{OpError, SnapshotError};
use super::types::{
    Completion, EndReason, FencingToken, InstanceId, Lease, LeaseId, Previous, Principal,
    RecordLimits, RequestId, ResourcePath, TaskKey,
};

/// First byte of every snapshot; bump when the encoding of `State` changes.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 4;
/// The previous format, still read (snapshots on disk and backups written before the upgrade).
const SNAPSHOT_FORMAT_V3: u8 = 3;
/// At most this many requests wait on one resource; more are answered `QueueFull`.
pub const MAX_WAITERS_PER_RESOURCE: usize = 1024;
/// Until the first `SetRecordLimits` is applied, records follow the rules of the builds before it
/// (so replicas of both builds apply a rolling upgrade's entries alike): every answer is recorded,
/// kept this long, and the oldest go past [`LEGACY_MAX`], young or not.
pub const LEGACY_RETENTION_MS: u64 = 600_000;
pub const LEGACY_MAX: usize = 100_000;

/// A resource as seen by a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceView<'a> {
    pub holder: Option<&'a Lease>,
    /// Highest token value the resource has reached (a live holder's token, or above it once ended).
    pub fence: FencingToken,
    pub waiters: usize,
}

/// Answer of `check_fence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FenceStatus {
    /// A live lease holds exactly this token: the caller may act.
    Current,
    /// Lower than the fence, or not the live holder's: the caller must stop (DESIGN rule 4).
    Stale { fence: FencingToken },
    /// Higher than the fence: never issued for this resource.
    Unknown { fence: FencingToken },
}

/// Per-resource state. Kept after the lease ends, because the fence must survive it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(super) struct ResourceState {
    pub(super) holder: Option<LeaseId>,
    pub(super) fence: FencingToken,
    pub(super) waiters: VecDeque<Waiter>,
}

/// A queued acquire and the entry time after which it must never be granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Waiter {
    pub(super) cmd: AcquireCmd,
    pub(super) deadline_ms: u64,
}

/// A unit of work on one resource, keyed by (resource, task key).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(super) struct TaskState {
    /// The live lease working on it, if any.
    pub(super) current: Option<LeaseId>,
    /// The last lease that ended without `done`: handed to the next holder as `previous`.
    pub(super) last: Option<Previous>,
    /// Set once, by a release with outcome `done`; the task is never granted again.
    pub(super) done: Option<Completion>,
}

/// Ended-lease records past this many go oldest first, whatever their age: they tell late callers
/// why a lease ended, and a retried acquire whose lease is forgotten is answered `UnknownLease`
/// (never granted again), so they need not be kept as long as request records.
pub const ENDED_MAX: usize = 100_000;

/// The dedup table's key: the first 16 bytes of the SHA-256 of the request id. A fixed 16 bytes per
/// record instead of the id's string (twice: table and eviction order), and no collision is within
/// reach, by chance or on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(super) struct RequestKey([u8; 16]);

impl RequestKey {
    pub(super) fn of(id: &RequestId) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(id.as_str().as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        Self(key)
    }
}

/// One dedup-table entry: the answer a retry gets, and who may retry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RequestRecord {
    pub(super) answer: Recorded,
    /// Entry time of the last update; the retention clock runs from here.
    pub(super) updated_ms: u64,
}

/// A recorded answer, kept small: most records are grants, and a grant's lease (with its resource,
/// principal and instance) is already in the lease table, or in the ended table once it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Recorded {
    Granted {
        lease_id: LeaseId,
        previous: Option<Box<Previous>>,
    },
    Other {
        asker: Box<Asker>,
        outcome: Box<AcquireOutcome>,
    },
}

/// Who made a request: only they may retry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Asker {
    pub(super) resource: ResourcePath,
    pub(super) principal: Principal,
    pub(super) instance: InstanceId,
}

impl Asker {
    pub(super) fn of(cmd: &AcquireCmd) -> Self {
        Self {
            resource: cmd.resource.clone(),
            principal: cmd.principal.clone(),
            instance: cmd.instance.clone(),
        }
    }

    /// Whether `cmd` comes from this asker (same resource, principal and instance).
    pub(super) fn made(&self, cmd: &AcquireCmd) -> bool {
        self.resource == cmd.resource
            && self.principal == cmd.principal
            && self.instance == cmd.instance
    }
}

/// A lease that ended, kept so retried releases are idempotent and late callers learn why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct EndedLease {
    pub(super) lease: Lease,
    pub(super) reason: EndReason,
}

/// The whole replicated state of one Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The state machine's clock: the highest `now_ms` of any applied entry.
    pub(super) now_ms: u64,
    pub(super) current_term: u64,
    pub(super) prev_term: u64,
    /// Source of every fencing token; starts at 1 so token 0 is never issued.
    pub(super) next_token: u64,
    pub(super) next_lease_id: u64,
    pub(super) leases: BTreeMap<LeaseId, Lease>,
    pub(super) resources: BTreeMap<ResourcePath, ResourceState>,
    pub(super) tasks: BTreeMap<(ResourcePath, TaskKey), TaskState>,
    pub(super) requests: BTreeMap<RequestKey, RequestRecord>,
    /// Insertion order of dedup updates (entry time, id); may hold stale pairs for ids updated later,
    /// which eviction skips by comparing with `RequestRecord::updated_ms`.
    pub(super) request_order: VecDeque<(u64, RequestKey)>,
    pub(super) ended: BTreeMap<LeaseId, EndedLease>,
    pub(super) ended_order: VecDeque<(u64, LeaseId)>,
    /// Index of the entry being (or last) applied: stamped into audit records.
    pub(super) last_index: u64,
    /// The active policy set; `None` until the first `PutPolicy` (then the default decision rules).
    pub(super) policy: Option<crate::policy::PolicyBundle>,
    /// Acquires waiting for human approval, by request id.
    pub(super) pending: BTreeMap<RequestId, Pending>,
    /// Intent labels of recent grants per resource ("key:value"), for intent-conflict policies.
    pub(super) recent_intents: BTreeMap<ResourcePath, VecDeque<(u64, Vec<String>)>>,
    /// Insertion order of `recent_intents`, oldest first, for eviction past the intent window.
    pub(super) recent_order: VecDeque<(u64, ResourcePath)>,
    /// The audit chain's head; its records go to storage through `Effects::audit`.
    pub(super) audit: crate::audit::AuditChain,
    /// Access tokens minted and not yet expired, by id (revoked ones marked).
    pub(super) tokens: BTreeMap<String, super::types::TokenRecord>,
    /// How long records are kept and how many request records may exist; `None` until the first
    /// `SetRecordLimits` (the older rules, see [`LEGACY_RETENTION_MS`]).
    pub(super) limits: Option<RecordLimits>,
    /// Answers of revokes that carried a request id, for their retries.
    pub(super) revokes: BTreeMap<RequestKey, RevokeRecord>,
    pub(super) revoke_order: VecDeque<(u64, RequestKey)>,
    /// Live leases and queued waiters per principal, for the quotas of `AcquireWithin`: derived
    /// from `leases` and the queues, never written to a snapshot and rebuilt when one is read.
    #[serde(skip)]
    pub(super) held: BTreeMap<Principal, Held>,
}

/// What one principal holds: live leases, and acquires waiting in resource queues by deadline
/// (a waiter past its deadline stays in its queue until the queue moves, but no longer counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Held {
    pub(super) leases: u32,
    pub(super) queued: BTreeMap<u64, u32>,
}

impl Held {
    /// Waiters whose deadline is `now_ms` or later.
    pub(super) fn queued_at(&self, now_ms: u64) -> u32 {
        self.queued
            .range(now_ms..)
            .fold(0u32, |n, (_, c)| n.saturating_add(*c))
    }
}

/// At most this many revoke answers are remembered; a new revoke request id past it, with all of
/// them younger than the retention, is refused (`RequestTableFull`).
pub const MAX_REVOKE_RECORDS: usize = 100_000;

/// A revoke's answer, kept for its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RevokeRecord {
    pub(super) by: Principal,
    pub(super) target: super::command::RevokeTarget,
    pub(super) answer: Result<Lease, OpError>,
    pub(super) updated_ms: u64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            now_ms: 0,
            current_term: 0,
            prev_term: 0,
            next_token: 1,
            next_lease_id: 1,
            leases: BTreeMap::new(),
            resources: BTreeMap::new(),
            tasks: BTreeMap::new(),
            requests: BTreeMap::new(),
            request_order: VecDeque::new(),
            ended: BTreeMap::new(),
            ended_order: VecDeque::new(),
            last_index: 0,
            policy: None,
            pending: BTreeMap::new(),
            recent_intents: BTreeMap::new(),
            recent_order: VecDeque::new(),
            audit: Default::default(),
            tokens: BTreeMap::new(),
            limits: None,
            revokes: BTreeMap::new(),
            revoke_order: VecDeque::new(),
            held: BTreeMap::new(),
        }
    }
}

impl State {
    /// Track terms; called for every log entry (blank, membership and before each `apply`). A new
    /// leader's first entry makes `prev_term` the last term that had entries before it, which
    /// `initial_countdown_ms` needs (DESIGN rule 3).
    pub fn observe(&mut self, at: EntryMeta) {
        if at.term > self.current_term {
            self.prev_term = self.current_term;
            self.current_term = at.term;
        }
    }

    /// Apply one entry. Deterministic and total: any input gives an answer, never a panic.
    pub fn apply(&mut self, at: EntryMeta, req: &Request, fx: &mut Effects) -> Response {
        self.observe(at);
        self.last_index = at.index;
        self.now_ms = self.now_ms.max(req.now_ms);
        self.evict_old_records();
        match &req.cmd {
            // Group commit: many client commands in one entry, each applied as if it were its own
            // entry (tokens and lease ids come from counters, not from the entry's index). The server
            // never nests batches; a nested one is answered empty and changes nothing.
            Command::Batch(cmds) => Response::Batch(
                cmds.iter()
                    .map(|cmd| match cmd {
                        Command::Batch(_) => Response::Batch(Vec::new()),
                        cmd => self.apply_command(cmd, fx),
                    })
                    .collect(),
            ),
            cmd => self.apply_command(cmd, fx),
        }
    }

    fn apply_command(&mut self, cmd: &Command, fx: &mut Effects) -> Response {
        match cmd {
            Command::Batch(_) => Response::Batch(Vec::new()),
            Command::Acquire(cmd) => Response::Acquire(self.acquire(cmd, None, fx)),
            Command::AcquireWithin { cmd, quotas } => {
                Response::Acquire(self.acquire(cmd, Some(quotas), fx))
            }
            Command::Release {
                lease_id,
                principal,
                outcome,
            } => Response::Release(self.release(*lease_id, principal, *outcome, fx)),
            Command::Checkpoint {
                lease_id,
                principal,
                token,
                data,
            } => Response::Checkpoint(self.checkpoint(*lease_id, principal, *token, data, fx)),
            Command::Revoke {
                target,
                by,
                reason,
                by_admin,
            } => Response::Revoke(self.revoke(target, by, reason, *by_admin, fx)),
            Command::PutPolicy {
                by,
                by_admin,
                policies,
                entities,
                intent_window_ms,
            } => Response::PutPolicy(self.put_policy(
                by,
                *by_admin,
                policies,
                entities.as_deref(),
                *intent_window_ms,
                fx,
            )),
            Command::Approve {
                request_id,
                by,
                comment,
            } => Response::Approve(self.approve(request_id, by, comment, fx).map(Box::new)),
            Command::Reject {
                request_id,
                by,
                reason,
            } => Response::Reject(self.reject(request_id, by, reason, fx).map(Box::new)),
            Command::ExpireApprovals { request_ids } => Response::ExpireApprovals {
                expired: self.expire_approvals(request_ids, fx),
            },
            Command::NoteAnswer { cmd, outcome } => {
                // The policies that allowed it, as policy stands at this entry.
                let policies = match self.acquire_verdict(cmd, self.now_ms) {
                    super::command::Verdict::Allow { policies, .. } => policies,
                    _ => Vec::new(),
                };
                self.audit_acquire(cmd, outcome, policies, Vec::new(), fx);
                Response::NoteAnswer
            }
            Command::CancelWait {
                request_id,
                principal,
            } => Response::CancelWait(self.cancel_wait(request_id, principal, fx)),
            Command::Renew { lease_ids } => Response::Renew(self.renew(lease_ids)),
            Command::Expire { lease_ids } => Response::Expire {
                expired: self.expire(lease_ids, fx),
            },
            Command::CheckpointTtl { remaining } => {
                self.checkpoint_ttl(remaining);
                Response::CheckpointTtl
            }
            Command::MintToken { record, by_admin } => {
                Response::MintToken(self.mint_token(record, *by_admin, fx))
            }
            Command::RevokeToken {
                id,
                by,
                by_admin,
                reason,
            } => Response::RevokeToken(self.revoke_token(id, by, *by_admin, reason, fx)),
            Command::AdminCheck {
                by,
                by_admin,
                action,
                detail,
            } => Response::AdminCheck(self.admin_check(by, *by_admin, action, detail, fx)),
            Command::ApproveSeen {
                request_id,
                by,
                comment,
                digest,
                policy_version,
            } => Response::Approve(
                self.decide_seen("approve", request_id, by, digest, *policy_version, fx)
                    .and_then(|()| self.approve(request_id, by, comment, fx))
                    .map(Box::new),
            ),
            Command::RejectSeen {
                request_id,
                by,
                reason,
                digest,
                policy_version,
            } => Response::Reject(
                self.decide_seen("reject", request_id, by, digest, *policy_version, fx)
                    .and_then(|()| self.reject(request_id, by, reason, fx))
                    .map(Box::new),
            ),
            Command::RevokeOnce {
                request_id,
                target,
                by,
                reason,
                by_admin,
            } => Response::Revoke(self.revoke_once(request_id, target, by, reason, *by_admin, fx)),
            Command::SetRecordLimits(limits) => {
                self.set_record_limits(*limits);
                Response::SetRecordLimits
            }
            Command::AsToken { token_id, cmd } => self.apply_as_token(token_id, true, cmd, fx),
            Command::ViaToken {
                token_id,
                recheck,
                cmd,
            } => {
                fx.via_token = Some(token_id.clone());
                let answer = self.apply_as_token(token_id, *recheck, cmd, fx);
                fx.via_token = None;
                answer
            }
        }
    }

    /// `cmd` made with access token `token_id`; with `recheck`, refused (and audited) if the token
    /// was revoked by an earlier entry.
    fn apply_as_token(
        &mut self,
        token_id: &str,
        recheck: bool,
        cmd: &Command,
        fx: &mut Effects,
    ) -> Response {
        match cmd {
            // Never nested: answered empty and changes nothing, like a nested batch.
            Command::Batch(_) | Command::AsToken { .. } | Command::ViaToken { .. } => {
                Response::Batch(Vec::new())
            }
            inner if recheck && self.token_revoked(token_id) => {
                self.audit_token_refusal(token_id, inner, fx);
                Response::Refused(super::error::OpError::TokenRevoked {
                    id: token_id.to_string(),
                })
            }
            inner => self.apply_command(inner, fx),
        }
    }

    // ---- queries -------------------------------------------------------------------------------

    pub fn lease(&self, id: &LeaseId) -> Option<&Lease> {
        self.leases.get(id)
    }

    /// Why a recently ended lease ended (kept at least `RecordLimits::min_age_ms`).
    pub fn ended(&self, id: &LeaseId) -> Option<&EndReason> {
        self.ended.get(id).map(|e| &e.reason)
    }

    pub fn resource(&self, path: &ResourcePath) -> Option<ResourceView<'_>> {
        self.resources.get(path).map(|r| ResourceView {
            holder: r.holder.and_then(|id| self.leases.get(&id)),
            fence: r.fence,
            waiters: r.waiters.len(),
        })
    }

    /// Linearizable fence check (when served from applied state on the leader).
    pub fn check_fence(&self, path: &ResourcePath, token: FencingToken) -> FenceStatus {
        let (fence, holder_token) = match self.resources.get(path) {
            Some(r) => (
                r.fence,
                r.holder
                    .and_then(|id| self.leases.get(&id))
                    .map(|l| l.token),
            ),
            None => (FencingToken(0), None),
        };
        if holder_token == Some(token) {
            FenceStatus::Current
        } else if token > fence {
            FenceStatus::Unknown { fence }
        } else {
            FenceStatus::Stale { fence }
        }
    }

    /// Live leases in lease-id order.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Live leases whose resource is within `prefix` (segment-wise), sorted by resource.
    pub fn list<'a>(&'a self, prefix: &'a str) -> Vec<&'a Lease> {
        self.list_after(prefix, "").collect()
    }

    /// Live leases under `prefix` in resource order, from the first resource after `after` (empty:
    /// from the start). Lazy: a page costs what it reads.
    pub fn list_after<'a>(
        &'a self,
        prefix: &'a str,
        after: &'a str,
    ) -> impl Iterator<Item = &'a Lease> + 'a {
        let trimmed = prefix.trim_end_matches('/');
        let start = if !after.is_empty() && after >= trimmed {
            Bound::Excluded(after)
        } else {
            Bound::Included(trimmed)
        };
        // Every path within `trimmed` starts with it as a string, so range from there and stop at the
        // first path that does not; `is_within` then drops `a/bc` for prefix `a/b`.
        self.resources
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(move |(path, _)| path.as_str().starts_with(trimmed))
            .filter(move |(path, _)| path.is_within(trimmed))
            .filter_map(|(_, r)| r.holder.and_then(|id| self.leases.get(&id)))
    }

    /// The dedup table: the answer a retry of this request gets.
    pub fn request(&self, id: &RequestId) -> Option<AcquireOutcome> {
        self.requests
            .get(&RequestKey::of(id))
            .map(|r| self.answer_of(r))
    }

    /// How long records are kept and how many request records may exist (replicated); `None` while
    /// the older rules hold (no `SetRecordLimits` applied yet).
    pub fn record_limits(&self) -> Option<RecordLimits> {
        self.limits
    }

    /// How long a record is kept at the least.
    pub(super) fn record_min_age_ms(&self) -> u64 {
        self.limits.map_or(LEGACY_RETENTION_MS, |l| l.min_age_ms)
    }

    /// Whether an acquire's answer goes into the dedup table. Only answers that changed something
    /// (a grant, a place in a queue, a pending approval) must be: a retry of any other answer is
    /// decided again and can grant nothing the first did not. The older rules record every answer.
    pub(super) fn records(&self, outcome: &AcquireOutcome) -> bool {
        self.limits.is_none()
            || matches!(
                outcome,
                AcquireOutcome::Granted(_)
                    | AcquireOutcome::Queued { .. }
                    | AcquireOutcome::PendingApproval(_)
            )
    }

    /// How many request ids the dedup table remembers now.
    pub fn request_record_count(&self) -> usize {
        self.requests.len()
    }

    /// A live or recently ended lease.
    fn any_lease(&self, id: &LeaseId) -> Option<&Lease> {
        self.leases
            .get(id)
            .or_else(|| self.ended.get(id).map(|e| &e.lease))
    }

    /// The answer a record gives. A grant is rebuilt from its lease (as it is now: live, or as it
    /// ended); a grant whose lease has been forgotten too is answered `UnknownLease`, never granted
    /// again.
    pub(super) fn answer_of(&self, rec: &RequestRecord) -> AcquireOutcome {
        match &rec.answer {
            Recorded::Granted { lease_id, previous } => match self.any_lease(lease_id) {
                Some(lease) => AcquireOutcome::Granted(super::types::Grant {
                    lease: lease.clone(),
                    previous: previous.as_deref().cloned(),
                }),
                None => AcquireOutcome::Rejected(OpError::UnknownLease(*lease_id)),
            },
            Recorded::Other { outcome, .. } => (**outcome).clone(),
        }
    }

    /// Who made a recorded request, when still known.
    pub(super) fn asker_of(&self, rec: &RequestRecord) -> Option<Asker> {
        match &rec.answer {
            Recorded::Granted { lease_id, .. } => self.any_lease(lease_id).map(|l| Asker {
                resource: l.resource.clone(),
                principal: l.principal.clone(),
                instance: l.instance.clone(),
            }),
            Recorded::Other { asker, .. } => Some((**asker).clone()),
        }
    }

    /// Whether `cmd` may take the recorded answer of its request id (it is the same request). A
    /// grant whose lease is forgotten has no asker to compare with; its answer (`UnknownLease`)
    /// grants nothing, so it is given to anyone.
    pub(super) fn same_asker(&self, rec: &RequestRecord, cmd: &AcquireCmd) -> bool {
        self.asker_of(rec).is_none_or(|asker| asker.made(cmd))
    }

    /// Whether a new request id would be refused now because the table is full of young records
    /// (never under the older rules). Only meaningful in apply, after this entry's eviction.
    pub(super) fn request_table_full(&self) -> Option<RecordLimits> {
        self.limits.filter(|l| self.requests.len() >= l.max_records)
    }

    pub fn current_term(&self) -> u64 {
        self.current_term
    }

    pub fn prev_term(&self) -> u64 {
        self.prev_term
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The audit chain's head (its records are in storage).
    pub fn audit_chain(&self) -> &crate::audit::AuditChain {
        &self.audit
    }

    /// The watch revision this state reflects: the length of the audit chain it holds the head of
    /// (every change is an audit record).
    pub fn revision(&self) -> u64 {
        self.audit.len()
    }

    pub fn live_lease_count(&self) -> usize {
        self.leases.len()
    }

    // ---- snapshots -----------------------------------------------------------------------------

    /// Fixed-width integers, and trailing bytes refused, so a truncated or padded snapshot is an error.
    fn codec() -> impl Options {
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .reject_trailing_bytes()
    }

    /// `SNAPSHOT_FORMAT_VERSION`, then the bincode encoding of the state. Identical bytes on every
    /// replica with the same state (only ordered collections inside).
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.snapshot_len() as usize);
        // Writing plain structs, ordered maps and strings into a Vec cannot fail; if it ever did, a
        // body cut off after the version byte makes `from_snapshot` report corruption rather than
        // load a wrong state.
        if self.write_snapshot(&mut out).is_err() {
            out.truncate(1);
        }
        out
    }

    /// The length of `to_snapshot`'s bytes, computed without encoding them.
    pub fn snapshot_len(&self) -> u64 {
        1 + Self::codec().serialized_size(self).unwrap_or(0)
    }

    /// Write the snapshot bytes (as `to_snapshot`) to `out` as they are encoded: no copy of the
    /// state and no buffer of its size.
    pub fn write_snapshot<W: std::io::Write>(&self, mut out: W) -> std::io::Result<()> {
        out.write_all(&[SNAPSHOT_FORMAT_VERSION])?;
        Self::codec()
            .serialize_into(out, self)
            .map_err(|e| match *e {
                bincode::ErrorKind::Io(e) => e,
                other => std::io::Error::other(other.to_string()),
            })
    }

    /// Read a snapshot of `len` bytes written by `write_snapshot` from `input`, decoding as it reads;
    /// a length inside it that would reach past `len` is corruption, not an allocation. The caller
    /// checks that all `len` bytes were read. Reads the previous format too.
    pub fn read_snapshot<R: std::io::Read>(mut input: R, len: u64) -> Result<State, SnapshotError> {
        let mut version = [0u8; 1];
        match input.read_exact(&mut version) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(SnapshotError::Empty)
            }
            Err(e) => return Err(SnapshotError::Corrupt(e.to_string())),
        }
        let codec = Self::codec().with_limit(len.saturating_sub(1));
        let corrupt = |e: bincode::Error| SnapshotError::Corrupt(e.to_string());
        let mut state: State = match version[0] {
            SNAPSHOT_FORMAT_VERSION => codec.deserialize_from(input).map_err(corrupt),
            SNAPSHOT_FORMAT_V3 => codec
                .deserialize_from::<_, v3::State>(input)
                .map(State::from)
                .map_err(corrupt),
            found => Err(SnapshotError::UnknownVersion {
                found,
                supported: SNAPSHOT_FORMAT_VERSION,
            }),
        }?;
        state.held = state.count_held();
        Ok(state)
    }

    /// What must hold of any state, however it was reached (the fuzz targets check it after every
    /// entry they apply): the per-principal counts match the leases and queues, each live lease is
    /// its resource's one holder with a current fence, and the snapshot encoding round-trips.
    pub fn check_consistency(&self) -> Result<(), String> {
        if self.held != self.count_held() {
            return Err("the per-principal counts differ from the leases and queues".into());
        }
        let mut holders = std::collections::BTreeSet::new();
        for lease in self.leases() {
            if !holders.insert(&lease.resource) {
                return Err(format!("{} has two live holders", lease.resource));
            }
            if self.resource(&lease.resource).and_then(|v| v.holder) != Some(lease) {
                return Err(format!("{} does not name its holder", lease.resource));
            }
            if self.check_fence(&lease.resource, lease.token) != FenceStatus::Current {
                return Err(format!(
                    "{}'s holder's token is not current",
                    lease.resource
                ));
            }
        }
        match State::from_snapshot(&self.to_snapshot()) {
            Ok(back) if &back == self => Ok(()),
            Ok(_) => Err("the snapshot decodes to another state".into()),
            Err(e) => Err(format!("the snapshot does not decode: {e}")),
        }
    }

    /// [`State::held`] counted afresh from the leases and the queues.
    pub(super) fn count_held(&self) -> BTreeMap<Principal, Held> {
        let mut held: BTreeMap<Principal, Held> = BTreeMap::new();
        for lease in self.leases.values() {
            held.entry(lease.principal.clone()).or_default().leases += 1;
        }
        for waiter in self.resources.values().flat_map(|r| &r.waiters) {
            *held
                .entry(waiter.cmd.principal.clone())
                .or_default()
                .queued
                .entry(waiter.deadline_ms)
                .or_default() += 1;
        }
        held
    }

    /// Count a lease of `principal` in (+1) or out (-1).
    pub(super) fn count_lease(&mut self, principal: &Principal, by: i32) {
        let held = self.held_mut(principal);
        held.leases = held.leases.saturating_add_signed(by);
        self.forget_if_idle(principal);
    }

    /// Count a waiter of `principal` with this deadline in (+1) or out (-1).
    pub(super) fn count_waiter(&mut self, principal: &Principal, deadline_ms: u64, by: i32) {
        let held = self.held_mut(principal);
        let n = held.queued.entry(deadline_ms).or_default();
        *n = n.saturating_add_signed(by);
        if *n == 0 {
            held.queued.remove(&deadline_ms);
        }
        self.forget_if_idle(principal);
    }

    /// `principal`'s counts, cloning its name only the first time (grants are the hot path).
    fn held_mut(&mut self, principal: &Principal) -> &mut Held {
        if !self.held.contains_key(principal) {
            self.held.insert(principal.clone(), Held::default());
        }
        self.held.get_mut(principal).expect("inserted above")
    }

    fn forget_if_idle(&mut self, principal: &Principal) {
        if self
            .held
            .get(principal)
            .is_some_and(|h| *h == Held::default())
        {
            self.held.remove(principal);
        }
    }

    pub fn from_snapshot(bytes: &[u8]) -> Result<State, SnapshotError> {
        if bytes.is_empty() {
            return Err(SnapshotError::Empty);
        }
        let mut input = bytes;
        let state = Self::read_snapshot(&mut input, bytes.len() as u64)?;
        if !input.is_empty() {
            return Err(SnapshotError::Corrupt(format!(
                "{} trailing bytes after the state",
                input.len()
            )));
        }
        Ok(state)
    }

    // ---- bounded tables ------------------------------------------------------------------------

    /// Record (or update) a request's answer; retention restarts from this entry's time.
    pub(super) fn record_request(&mut self, cmd: &AcquireCmd, outcome: AcquireOutcome) {
        if !self.records(&outcome) {
            return;
        }
        let answer = Self::recorded(Asker::of(cmd), outcome);
        self.put_record(&cmd.request_id, answer);
    }

    /// Update the answer of a request already in the table (a waiter's final answer).
    pub(super) fn update_request(&mut self, id: &RequestId, outcome: AcquireOutcome) {
        let Some(rec) = self.requests.get(&RequestKey::of(id)) else {
            return;
        };
        let Some(asker) = self.asker_of(rec) else {
            return;
        };
        let answer = Self::recorded(asker, outcome);
        self.put_record(id, answer);
    }

    fn recorded(asker: Asker, outcome: AcquireOutcome) -> Recorded {
        match outcome {
            AcquireOutcome::Granted(g) => Recorded::Granted {
                lease_id: g.lease.lease_id,
                previous: g.previous.map(Box::new),
            },
            outcome => Recorded::Other {
                asker: Box::new(asker),
                outcome: Box::new(outcome),
            },
        }
    }

    fn put_record(&mut self, id: &RequestId, answer: Recorded) {
        let rec = RequestRecord {
            answer,
            updated_ms: self.now_ms,
        };
        let key = RequestKey::of(id);
        self.requests.insert(key, rec);
        self.request_order.push_back((self.now_ms, key));
    }

    pub(super) fn record_ended(&mut self, lease: Lease, reason: EndReason) {
        let id = lease.lease_id;
        self.ended.insert(id, EndedLease { lease, reason });
        self.ended_order.push_back((self.now_ms, id));
    }

    /// Set how long records are kept and how many request records may exist.
    pub(super) fn set_record_limits(&mut self, limits: RecordLimits) {
        self.limits = Some(RecordLimits {
            min_age_ms: limits.min_age_ms,
            max_records: limits.max_records.max(1),
        });
    }

    /// Drop dedup and ended records older than `limits.min_age_ms`; a request record younger than that
    /// is never dropped (new request ids are refused instead, see `request_table_full`). Ended-lease
    /// records past `ENDED_MAX` go oldest first: a retried acquire whose lease is forgotten
    /// is answered `UnknownLease`, never granted twice. Driven by entry time only, so every replica
    /// evicts the same records at the same entry.
    fn evict_old_records(&mut self) {
        self.evict_recent_intents();
        let now = self.now_ms;
        let min_age = self.record_min_age_ms();
        let expired = |at: u64| now.saturating_sub(at) > min_age;
        // The older rules also drop young records past a count.
        let legacy = self.limits.is_none();

        // A queued or pending request is never evicted: its waiter still needs the record to report its final
        // answer. Such a record is re-stamped and moved to the back; the pass is bounded by the
        // deque's length so a table full of waiters cannot loop forever.
        let mut budget = self.request_order.len();
        while budget > 0 {
            let Some((at, _)) = self.request_order.front() else {
                break;
            };
            let over = legacy && self.requests.len() > LEGACY_MAX;
            if !expired(*at) && !over {
                break;
            }
            budget -= 1;
            let Some((at, id)) = self.request_order.pop_front() else {
                break;
            };
            let Some(rec) = self.requests.get_mut(&id) else {
                continue; // already evicted through an earlier pair
            };
            if rec.updated_ms != at {
                continue; // stale pair: a later update pushed a newer one
            }
            if matches!(&rec.answer, Recorded::Other { outcome, .. }
                if matches!(**outcome, AcquireOutcome::Queued { .. } | AcquireOutcome::PendingApproval(_)))
            {
                rec.updated_ms = now;
                self.request_order.push_back((now, id));
                continue;
            }
            self.requests.remove(&id);
        }

        while let Some((at, _)) = self.revoke_order.front() {
            if !expired(*at) {
                break;
            }
            if let Some((_, key)) = self.revoke_order.pop_front() {
                self.revokes.remove(&key);
            }
        }

        while let Some((at, _)) = self.ended_order.front() {
            if !expired(*at) && self.ended.len() <= ENDED_MAX {
                break;
            }
            if let Some((_, id)) = self.ended_order.pop_front() {
                self.ended.remove(&id);
            }
        }
    }

    /// The token the next grant gets.
    pub fn next_token_value(&self) -> u64 {
        self.next_token
    }

    /// For a restore from a backup: skip `by` tokens, so that tokens the old cluster may have
    /// issued after the backup was taken are never handed out again.
    pub fn skip_tokens(&mut self, by: u64) {
        self.next_token = self.next_token.saturating_add(by);
    }

    /// Hand out the next token. One counter for all resources: a token is never reused anywhere.
    pub(super) fn next_token(&mut self) -> FencingToken {
        let token = FencingToken(self.next_token);
        // Saturating: 2^64 tokens is unreachable; if it were reached, repeating the last token would
        // be refused as Stale by resources, which is the safe failure.
        self.next_token = self.next_token.saturating_add(1);
        token
    }

    pub(super) fn next_lease_id(&mut self) -> LeaseId {
        let id = LeaseId(self.next_lease_id);
        self.next_lease_id = self.next_lease_id.saturating_add(1);
        id
    }
}

/// Snapshot format 3: the state before request records were slimmed and record limits replicated.
mod v3 {
    use std::collections::{BTreeMap, VecDeque};

    use serde::Deserialize;

    use super::super::command::AcquireOutcome;
    use super::super::command::Pending;
    use super::super::types::{
        InstanceId, Lease, LeaseId, Principal, RequestId, ResourcePath, TaskKey,
    };
    use super::{Asker, EndedLease, RequestKey, RequestRecord, ResourceState, TaskState};

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    struct Record {
        resource: ResourcePath,
        principal: Principal,
        instance: InstanceId,
        outcome: AcquireOutcome,
        updated_ms: u64,
    }

    /// Field for field the format-3 `State`.
    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub(super) struct State {
        now_ms: u64,
        current_term: u64,
        prev_term: u64,
        next_token: u64,
        next_lease_id: u64,
        leases: BTreeMap<LeaseId, Lease>,
        resources: BTreeMap<ResourcePath, ResourceState>,
        tasks: BTreeMap<(ResourcePath, TaskKey), TaskState>,
        requests: BTreeMap<RequestId, Record>,
        request_order: VecDeque<(u64, RequestId)>,
        ended: BTreeMap<LeaseId, EndedLease>,
        ended_order: VecDeque<(u64, LeaseId)>,
        last_index: u64,
        policy: Option<crate::policy::PolicyBundle>,
        pending: BTreeMap<RequestId, Pending>,
        recent_intents: BTreeMap<ResourcePath, VecDeque<(u64, Vec<String>)>>,
        recent_order: VecDeque<(u64, ResourcePath)>,
        audit: crate::audit::AuditChain,
        tokens: BTreeMap<String, super::super::types::TokenRecord>,
    }

    /// `state` as format 3 wrote it (for tests of the upgrade path).
    #[cfg(test)]
    pub(super) fn encode_for_test(s: &super::State, ids: &[RequestId]) -> Vec<u8> {
        use bincode::Options;
        let requests: BTreeMap<RequestId, Record> = ids
            .iter()
            .map(|id| {
                let rec = &s.requests[&RequestKey::of(id)];
                let asker = s.asker_of(rec).expect("asker known");
                let r = Record {
                    resource: asker.resource,
                    principal: asker.principal,
                    instance: asker.instance,
                    outcome: s.answer_of(rec),
                    updated_ms: rec.updated_ms,
                };
                (id.clone(), r)
            })
            .collect();
        let request_order = requests
            .iter()
            .map(|(id, r)| (r.updated_ms, id.clone()))
            .collect();
        let old = State {
            now_ms: s.now_ms,
            current_term: s.current_term,
            prev_term: s.prev_term,
            next_token: s.next_token,
            next_lease_id: s.next_lease_id,
            leases: s.leases.clone(),
            resources: s.resources.clone(),
            tasks: s.tasks.clone(),
            requests,
            request_order,
            ended: s.ended.clone(),
            ended_order: s.ended_order.clone(),
            last_index: s.last_index,
            policy: s.policy.clone(),
            pending: s.pending.clone(),
            recent_intents: s.recent_intents.clone(),
            recent_order: s.recent_order.clone(),
            audit: s.audit.clone(),
            tokens: s.tokens.clone(),
        };
        let mut out = vec![super::SNAPSHOT_FORMAT_V3];
        out.extend(super::State::codec().serialize(&old).expect("encodes"));
        out
    }

    impl From<State> for super::State {
        fn from(old: State) -> Self {
            let requests = old
                .requests
                .into_iter()
                .map(|(id, r)| {
                    let asker = Asker {
                        resource: r.resource,
                        principal: r.principal,
                        instance: r.instance,
                    };
                    let answer = super::State::recorded(asker, r.outcome);
                    let rec = RequestRecord {
                        answer,
                        updated_ms: r.updated_ms,
                    };
                    (RequestKey::of(&id), rec)
                })
                .collect();
            super::State {
                now_ms: old.now_ms,
                current_term: old.current_term,
                prev_term: old.prev_term,
                next_token: old.next_token,
                next_lease_id: old.next_lease_id,
                leases: old.leases,
                resources: old.resources,
                tasks: old.tasks,
                requests,
                request_order: old
                    .request_order
                    .into_iter()
                    .map(|(at, id)| (at, RequestKey::of(&id)))
                    .collect(),
                ended: old.ended,
                ended_order: old.ended_order,
                last_index: old.last_index,
                policy: old.policy,
                pending: old.pending,
                recent_intents: old.recent_intents,
                recent_order: old.recent_order,
                audit: old.audit,
                tokens: old.tokens,
                limits: None,
                revokes: BTreeMap::new(),
                revoke_order: VecDeque::new(),
                held: BTreeMap::new(), // counted by `read_snapshot`
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::AcquireCmd;
    use super::super::testkit::{acq, res, rid, Harness};
    use super::*;
    use crate::model::types::DEFAULT_RECORD_MIN_AGE_MS;

    #[test]
    fn entry_time_never_goes_backwards() {
        let mut h = Harness::new();
        h.now_ms = 5_000;
        h.grant(acq("r1", "a", "agent/x", "i1"));
        h.now_ms = 4_000; // a new leader's clock is behind
        let g = h.grant(acq("r2", "b", "agent/x", "i1"));
        assert_eq!(h.state.now_ms(), 5_000);
        assert_eq!(g.lease.granted_at_ms, 5_000);
    }

    #[test]
    fn observe_tracks_current_and_previous_term() {
        let mut s = State::default();
        s.observe(EntryMeta { index: 1, term: 1 });
        s.observe(EntryMeta { index: 2, term: 1 });
        assert_eq!((s.current_term(), s.prev_term()), (1, 0));
        s.observe(EntryMeta { index: 3, term: 4 });
        assert_eq!((s.current_term(), s.prev_term()), (4, 1));
        s.observe(EntryMeta { index: 4, term: 2 }); // stale term: ignored
        assert_eq!((s.current_term(), s.prev_term()), (4, 1));
    }

    #[test]
    fn dedup_records_age_out_after_retention() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.release(g.lease.lease_id, "agent/x", None).unwrap();
        h.advance(DEFAULT_RECORD_MIN_AGE_MS);
        h.grant(acq("other", "b", "agent/x", "i1"));
        assert!(
            h.state.request(&rid("r1")).is_some(),
            "kept for the full retention"
        );
        assert!(h.state.ended(&g.lease.lease_id).is_some());
        h.advance(1);
        h.grant(acq("other2", "c", "agent/x", "i1"));
        assert_eq!(h.state.request(&rid("r1")), None);
        assert_eq!(h.state.ended(&g.lease.lease_id), None);
        assert_eq!(
            h.state.requests.len(),
            2,
            "only the two recent requests remain"
        );
    }

    #[test]
    fn queued_request_is_never_evicted() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.acquire(AcquireCmd {
            wait_ms: Some(u64::MAX),
            ..acq("w1", "a", "agent/y", "j1")
        });
        h.advance(3 * DEFAULT_RECORD_MIN_AGE_MS);
        h.grant(acq("tick", "b", "agent/x", "i1"));
        assert!(matches!(
            h.state.request(&rid("w1")),
            Some(AcquireOutcome::Queued { .. })
        ));
        assert_eq!(h.state.request(&rid("r1")), None);
        h.release(g.lease.lease_id, "agent/x", None).unwrap();
        assert!(matches!(
            h.state.request(&rid("w1")),
            Some(AcquireOutcome::Granted(_))
        ));
    }

    /// Issue 24 item 4: the old table evicted by count (100,000), about 15 s at the benchmark's rate.
    /// More than that many acquires inside one second, then a retry of the first: its first answer.
    #[test]
    fn a_retry_after_more_than_the_old_limit_of_acquires_in_one_second_gets_its_first_answer() {
        let mut h = Harness::new();
        let first = h.grant(acq("first", "r/0", "agent/x", "i1"));
        for n in 1..=120_000u64 {
            if n % 40_000 == 0 {
                h.advance(300); // still inside one second in all
            }
            h.grant(acq(&format!("q{n}"), &format!("r/{n}"), "agent/x", "i1"));
        }
        assert_eq!(h.state.requests.len(), 120_001);
        let again = h.acquire(acq("first", "r/0", "agent/x", "i1"));
        assert_eq!(again, AcquireOutcome::Granted(first.clone()));
        assert_eq!(
            h.state.live_lease_count(),
            120_001,
            "the retry granted nothing"
        );
    }

    #[test]
    fn a_full_table_of_young_records_refuses_new_requests_and_forgets_nothing() {
        let mut h = Harness::new();
        let limits = RecordLimits {
            min_age_ms: 60_000,
            max_records: 1_000,
        };
        h.apply(Command::SetRecordLimits(limits));
        assert_eq!(h.state.record_limits(), Some(limits));
        for n in 0..1_000u64 {
            h.grant(acq(&format!("q{n}"), &format!("r/{n}"), "agent/x", "i1"));
        }
        let next_token = h.state.next_token_value();
        let refused = h.acquire(acq("new", "r/new", "agent/x", "i1"));
        assert_eq!(
            refused,
            AcquireOutcome::Rejected(OpError::RequestTableFull {
                max: 1_000,
                min_age_s: 60
            })
        );
        assert_eq!(
            OpError::RequestTableFull {
                max: 1,
                min_age_s: 1
            }
            .kind(),
            super::super::error::ErrorKind::ResourceExhausted
        );
        assert_eq!(
            h.state.request(&rid("new")),
            None,
            "a refusal is not recorded"
        );
        assert_eq!(h.state.next_token_value(), next_token, "nothing granted");
        // Every young record still answers its retry.
        assert!(matches!(
            h.state.request(&rid("q0")),
            Some(AcquireOutcome::Granted(_))
        ));
        let retry = h.acquire(acq("q0", "r/0", "agent/x", "i1"));
        assert!(matches!(retry, AcquireOutcome::Granted(g) if g.lease.token.0 == 1));
        // The leader does not answer it without a write: apply judges, after its eviction.
        assert_eq!(
            h.state
                .answer_without_write(&acq("new2", "r/0", "agent/x", "i1"), h.now_ms),
            None
        );
        // Once the records are older than the retention, room is made and the refused id works.
        h.advance(60_001);
        let granted = h.acquire(acq("new", "r/new", "agent/x", "i1"));
        assert!(matches!(granted, AcquireOutcome::Granted(_)), "{granted:?}");
        assert_eq!(h.state.requests.len(), 1);
    }

    #[test]
    fn a_retried_grant_is_rebuilt_from_its_lease_until_the_lease_is_forgotten() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.checkpoint(g.lease.lease_id, "agent/x", g.lease.token, b"step 2")
            .unwrap();
        // Live: the lease as it is now.
        let Some(AcquireOutcome::Granted(now)) = h.state.request(&rid("r1")) else {
            panic!("granted")
        };
        assert_eq!(now.lease.checkpoint.as_deref(), Some(&b"step 2"[..]));
        // Another asker cannot take the answer.
        assert_eq!(
            h.acquire(acq("r1", "a", "agent/y", "i1")),
            AcquireOutcome::Rejected(OpError::RequestIdReused {
                request_id: rid("r1")
            })
        );
        // Ended: the lease as it ended (the server reports it ended).
        h.release(g.lease.lease_id, "agent/x", None).unwrap();
        assert!(matches!(
            h.state.request(&rid("r1")),
            Some(AcquireOutcome::Granted(e)) if e.lease.lease_id == g.lease.lease_id
        ));
        // Forgotten (the ended table's bound): refused, never granted again.
        h.state.ended.clear();
        assert_eq!(
            h.acquire(acq("r1", "a", "agent/x", "i1")),
            AcquireOutcome::Rejected(OpError::UnknownLease(g.lease.lease_id))
        );
        assert_eq!(h.state.live_lease_count(), 0);
    }

    /// A rolling upgrade: until a leader of this build writes `SetRecordLimits`, its replicas apply
    /// the older builds' entries under the older rules (every answer recorded, 600 s, the oldest
    /// past 100,000 dropped), exactly as the older replicas beside them do.
    #[test]
    fn until_set_record_limits_the_older_rules_hold() {
        let mut h = Harness::legacy();
        assert_eq!(h.state.record_limits(), None);
        h.grant(acq("r1", "a", "agent/x", "i1"));
        h.acquire(acq("busy", "a", "agent/y", "j1"));
        assert!(
            matches!(
                h.state.request(&rid("busy")),
                Some(AcquireOutcome::Busy { .. })
            ),
            "recorded under the older rules"
        );
        h.advance(DEFAULT_RECORD_MIN_AGE_MS + 1);
        h.grant(acq("tick", "b", "agent/x", "i1"));
        assert!(h.state.request(&rid("busy")).is_some(), "kept 600 s");
        h.advance(LEGACY_RETENTION_MS);
        h.grant(acq("tick2", "c", "agent/x", "i1"));
        assert_eq!(h.state.request(&rid("busy")), None);
        // From the first SetRecordLimits on, this build's rules.
        h.apply(Command::SetRecordLimits(RecordLimits::default()));
        h.acquire(acq("busy2", "a", "agent/y", "j1"));
        assert_eq!(
            h.state.request(&rid("busy2")),
            None,
            "a busy answer is not kept"
        );
        assert!(h.state.request(&rid("tick2")).is_some());
    }

    #[test]
    fn a_format_3_snapshot_is_read_with_default_limits() {
        let mut h = Harness::legacy();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.acquire(acq("b1", "a", "agent/y", "j1")); // busy, recorded
        let v3 = v3::encode_for_test(&h.state, &[rid("r1"), rid("b1")]);
        assert_eq!(v3[0], 3);
        let back = State::from_snapshot(&v3).unwrap();
        assert_eq!(
            back.record_limits(),
            None,
            "the older rules until SetRecordLimits"
        );
        assert_eq!(back.request(&rid("r1")), Some(AcquireOutcome::Granted(g)));
        assert_eq!(back.request(&rid("b1")), h.state.request(&rid("b1")));
        assert_eq!(back.requests, h.state.requests);
        assert_eq!(back.leases, h.state.leases);
        assert_eq!(back.resources, h.state.resources);
    }

    #[test]
    fn check_fence_tells_current_stale_and_unknown() {
        let mut h = Harness::new();
        assert_eq!(
            h.state.check_fence(&res("a"), FencingToken(1)),
            FenceStatus::Unknown {
                fence: FencingToken(0)
            }
        );
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        let t = g.lease.token;
        assert_eq!(h.state.check_fence(&res("a"), t), FenceStatus::Current);
        assert_eq!(
            h.state.check_fence(&res("a"), FencingToken(t.0 + 1)),
            FenceStatus::Unknown { fence: t }
        );
        assert_eq!(
            h.state.check_fence(&res("a"), FencingToken(0)),
            FenceStatus::Stale { fence: t }
        );
        // Another resource's token is not this resource's holder's.
        let other = h.grant(acq("r2", "b", "agent/x", "i1"));
        assert_eq!(
            h.state.check_fence(&res("b"), t),
            FenceStatus::Stale {
                fence: other.lease.token
            }
        );
    }

    #[test]
    fn list_matches_prefix_by_segment_sorted_by_resource() {
        let mut h = Harness::new();
        for (n, path) in ["a/bc", "a/b/z", "a/b", "b", "a/b/c", "ab"]
            .iter()
            .enumerate()
        {
            h.grant(acq(&format!("r{n}"), path, "agent/x", "i1"));
        }
        let names = |v: Vec<&Lease>| -> Vec<String> {
            v.into_iter().map(|l| l.resource.to_string()).collect()
        };
        assert_eq!(names(h.state.list("a/b")), ["a/b", "a/b/c", "a/b/z"]);
        assert_eq!(names(h.state.list("a/b/")), ["a/b", "a/b/c", "a/b/z"]);
        assert_eq!(names(h.state.list("a")), ["a/b", "a/b/c", "a/b/z", "a/bc"]);
        assert_eq!(
            names(h.state.list("")),
            ["a/b", "a/b/c", "a/b/z", "a/bc", "ab", "b"]
        );
        assert!(h.state.list("c").is_empty());
        assert_eq!(h.state.leases().count(), 6);
        assert_eq!(h.state.live_lease_count(), 6);
    }

    #[test]
    fn a_listing_resumes_after_a_resource_and_stays_within_its_prefix() {
        let mut h = Harness::new();
        for path in ["a", "a/x", "a/y", "ab", "b"] {
            h.grant(acq(&format!("r-{path}"), path, "agent/x", "i1"));
        }
        let names = |prefix: &str, after: &str| {
            h.state
                .list_after(prefix, after)
                .map(|l| l.resource.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("a", ""), ["a", "a/x", "a/y"]);
        assert_eq!(names("a", "a"), ["a/x", "a/y"]);
        assert_eq!(names("a", "a/x"), ["a/y"]);
        assert_eq!(names("a", "a/y"), Vec::<String>::new());
        // An `after` outside the prefix neither escapes it nor skips into it.
        assert_eq!(names("a", "0"), ["a", "a/x", "a/y"]);
        assert_eq!(names("a", "ab"), Vec::<String>::new());
        assert_eq!(names("", "a/y"), ["ab", "b"]);
    }

    fn busy_state() -> State {
        let mut h = Harness::new();
        let g = h.grant(AcquireCmd {
            task_key: Some(super::super::testkit::task("t")),
            ..acq("r1", "a", "agent/x", "i1")
        });
        h.checkpoint(g.lease.lease_id, "agent/x", g.lease.token, b"ck")
            .unwrap();
        h.acquire(AcquireCmd {
            wait_ms: Some(1_000),
            ..acq("w1", "a", "agent/y", "j1")
        });
        let b = h.grant(acq("r2", "b", "agent/x", "i1"));
        h.release(b.lease.lease_id, "agent/x", None).unwrap();
        h.state
    }

    #[test]
    fn snapshot_round_trips_and_is_deterministic() {
        let s = busy_state();
        let bytes = s.to_snapshot();
        assert_eq!(bytes[0], SNAPSHOT_FORMAT_VERSION);
        let back = State::from_snapshot(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.to_snapshot(), bytes);
        assert_eq!(
            busy_state().to_snapshot(),
            bytes,
            "same entries, same bytes"
        );
        let empty = State::default();
        assert_eq!(State::from_snapshot(&empty.to_snapshot()).unwrap(), empty);
    }

    #[test]
    fn bad_snapshots_are_refused_with_a_clear_error() {
        let bytes = busy_state().to_snapshot();
        assert_eq!(State::from_snapshot(&[]), Err(SnapshotError::Empty));
        let mut v2 = bytes.clone();
        v2[0] = SNAPSHOT_FORMAT_VERSION + 1;
        assert_eq!(
            State::from_snapshot(&v2),
            Err(SnapshotError::UnknownVersion {
                found: SNAPSHOT_FORMAT_VERSION + 1,
                supported: SNAPSHOT_FORMAT_VERSION
            })
        );
        assert!(v2_message_names_versions(&State::from_snapshot(&v2)));
        let truncated = &bytes[..bytes.len() - 3];
        assert!(matches!(
            State::from_snapshot(truncated),
            Err(SnapshotError::Corrupt(_))
        ));
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(
            State::from_snapshot(&padded),
            Err(SnapshotError::Corrupt(_))
        ));
        let garbage = [1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 3];
        assert!(State::from_snapshot(&garbage).is_err());
    }

    fn v2_message_names_versions(r: &Result<State, SnapshotError>) -> bool {
        match r {
            Err(e) => {
                let m = e.to_string();
                m.contains(&(SNAPSHOT_FORMAT_VERSION + 1).to_string())
                    && m.contains(&SNAPSHOT_FORMAT_VERSION.to_string())
            }
            Ok(_) => false,
        }
    }
}
