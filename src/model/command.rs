//! The Raft log payload (`Request`/`Command`) and what applying it answers (`Response`, `Event`).
//!
//! Owns: the shapes that cross the boundary between the state machine and the server. Invariant: a
//! `Request` carries everything a decision needs, including the time (`now_ms`, stamped by the leader),
//! so every replica applying the same entry makes the same decision.

use serde::{Deserialize, Serialize};

use super::error::{Denial, OpError};
use super::types::{
    Completion, EndReason, FencingToken, Grant, InstanceId, Intent, Lease, LeaseId, Principal,
    ReleaseOutcome, RequestId, ResourcePath, TaskKey,
};
use crate::audit::AuditRecord;

/// Position of an entry in the Raft log.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct EntryMeta {
    pub index: u64,
    pub term: u64,
}

/// One state-machine entry: the leader's wall-clock stamp and the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Leader's wall clock when it proposed the entry. The state machine only ever moves its own time
    /// forward (`max`), so out-of-order stamps after a failover cannot make time run backwards.
    pub now_ms: u64,
    pub cmd: Command,
}

/// Ask for a lease on `resource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireCmd {
    pub request_id: RequestId,
    pub resource: ResourcePath,
    pub principal: Principal,
    pub instance: InstanceId,
    pub ttl_ms: u64,
    pub intent: Intent,
    pub task_key: Option<TaskKey>,
    /// Queue FIFO for at most this long if the resource is held (`None` or `Some(0)`: answer `Busy`).
    pub wait_ms: Option<u64>,
    /// End the holder's lease at once if it is held by another instance of the same principal.
    pub takeover: bool,
    /// The leader's configured defaults, stamped into the entry so every replica decides the same.
    pub defaults: PolicyDefaults,
}

/// What the cluster decides when no policy is loaded, and how long an approval may stay pending.
/// Come from the leader's config and travel in each acquire, so the decision is a pure function of
/// the log (a node with a different config cannot decide differently when it replays the entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDefaults {
    /// `default_decision = "allow"`: with no policy loaded, every acquisition is allowed.
    pub allow_without_policy: bool,
    /// A pending approval not decided within this long (entry time) expires.
    pub approval_timeout_ms: u64,
}

impl Default for PolicyDefaults {
    fn default() -> Self {
        Self {
            allow_without_policy: true,
            approval_timeout_ms: 3_600_000,
        }
    }
}

/// What to revoke: whatever lease holds a resource, or one lease by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeTarget {
    Resource(ResourcePath),
    Lease(LeaseId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Several commands in one log entry (group commit), applied in order as if each were its own
    /// entry. Never nested.
    Batch(Vec<Command>),
    Acquire(AcquireCmd),
    Release {
        lease_id: LeaseId,
        principal: Principal,
        outcome: Option<ReleaseOutcome>,
    },
    Checkpoint {
        lease_id: LeaseId,
        principal: Principal,
        token: FencingToken,
        data: Vec<u8>,
    },
    Revoke {
        target: RevokeTarget,
        by: Principal,
        reason: String,
        /// The server found `by` in its config's `admins` (the break-glass path when no policy is
        /// loaded; with a policy, Cedar decides).
        by_admin: bool,
    },
    /// Replace the active policy set. Validated again in apply; a bad one changes nothing.
    PutPolicy {
        by: Principal,
        /// `by` is one of the config's `admins`: may always put policy (break-glass, audited).
        by_admin: bool,
        policies: String,
        entities: Option<String>,
        intent_window_ms: u64,
    },
    /// One human's approval of a pending acquire.
    Approve {
        request_id: RequestId,
        by: Principal,
        comment: String,
    },
    /// One human's rejection of a pending acquire: it ends at once.
    Reject {
        request_id: RequestId,
        by: Principal,
        reason: String,
    },
    /// Proposed by the leader for pending approvals whose time ran out.
    ExpireApprovals {
        request_ids: Vec<RequestId>,
    },
    /// Proposed by the leader after it answered an acquire from its state without a log write
    /// (busy, already done): the answer joins the audit trail, batched and off the caller's path.
    NoteAnswer {
        cmd: Box<AcquireCmd>,
        outcome: Box<AcquireOutcome>,
    },
    CancelWait {
        request_id: RequestId,
        principal: Principal,
    },
    /// Proposed by the leader for the first keepalive of a lease in its term (DESIGN rule 3).
    Renew {
        lease_ids: Vec<LeaseId>,
    },
    /// Proposed by the leader for leases whose countdown ran out (batched).
    Expire {
        lease_ids: Vec<LeaseId>,
    },
    /// Proposed by the leader: remaining ttl of leases that had no keepalive in its term.
    CheckpointTtl {
        remaining: Vec<(LeaseId, u64)>,
    },
    /// Register an access token (admin only; the server signs it after commit).
    MintToken {
        record: super::types::TokenRecord,
        /// `record.minted_by` is one of the config's admins.
        by_admin: bool,
    },
    /// Revoke an access token by id (admin only).
    RevokeToken {
        id: String,
        by: Principal,
        by_admin: bool,
        reason: String,
    },
    /// An admin action that changes no state (an audit export): authorized and audited in apply.
    AdminCheck {
        by: Principal,
        by_admin: bool,
        action: String,
        detail: String,
    },
    /// `cmd` from a caller that authenticated with access token `token_id`: refused in apply if
    /// the token was revoked by an earlier entry, so a revocation holds from its log position on,
    /// on every node, whatever a node checked when the request arrived. Wraps one client command
    /// (never a batch or another wrapper). Written by data format 4; applied as then, without
    /// naming the token in audit records, so replaying such a log gives the records it gave.
    AsToken {
        token_id: String,
        cmd: Box<Command>,
    },
    /// Data format 5's `AsToken`: every audit record `cmd` causes names the token
    /// (`AuditEntry::via_token`). With `recheck`, refused in apply like `AsToken` when the token
    /// was revoked first; without (a caller withdrawing its own wait, the audit note of an answer
    /// already given), applied anyway. A format-4 member cannot decode it, and so stops instead of
    /// writing audit records that differ from its peers'.
    ViaToken {
        token_id: String,
        recheck: bool,
        cmd: Box<Command>,
    },
    /// `Approve` of exactly what the human was shown: `digest` is [`PendingView::digest`] of the
    /// request under the policy version in force when it was read (`policy_version`). Refused in
    /// apply when the request or the policy changed since. (Appended last: older entries decode.)
    ApproveSeen {
        request_id: RequestId,
        by: Principal,
        comment: String,
        digest: String,
        policy_version: u64,
    },
    /// `Reject` of exactly what the human was shown; as [`Command::ApproveSeen`].
    RejectSeen {
        request_id: RequestId,
        by: Principal,
        reason: String,
        digest: String,
        policy_version: u64,
    },
    /// How long request-id and ended-lease records are kept and how many request records may exist;
    /// proposed by a leader whose config differs from the replicated limits.
    SetRecordLimits(super::types::RecordLimits),
    /// `Revoke` with a request id: a retry (same id, principal and target) answers as the first and
    /// ends nothing else (issue 24 item 5).
    RevokeOnce {
        request_id: RequestId,
        target: RevokeTarget,
        by: Principal,
        reason: String,
        by_admin: bool,
    },
    /// `Acquire` held to per-principal quotas (issue 25 item 7), from the proposing node's config:
    /// decided in apply, so every replica refuses the same acquires.
    AcquireWithin {
        cmd: AcquireCmd,
        quotas: Quotas,
    },
}

/// Per-principal quotas an acquire is held to; 0 is no limit. A takeover of one's own lease is
/// not refused (the count does not grow), nor is a waiter granted from its queue or a request
/// granted after human approval (each counted as a lease when it queued or went to humans).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    /// Live leases one principal holds, counting its acquires waiting in queues or for humans.
    pub leases: u32,
    /// Requests of one principal waiting for human approval.
    pub pending: u32,
    /// Acquires of one principal waiting in resource queues, over all resources.
    pub queued: u32,
}

/// The answer to an acquire; also what the dedup table stores per request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcquireOutcome {
    Granted(Grant),
    Busy {
        holder: Lease,
    },
    /// Waiting in the resource's FIFO queue; 1-based position at the time of queuing.
    Queued {
        position: u32,
    },
    AlreadyDone(Completion),
    /// The wait's deadline passed or it was cancelled before a grant.
    WaitEnded,
    Rejected(OpError),
    /// Policy (or the default decision) refused it.
    Denied(Denial),
    /// Policy sent it to humans; the current state of the approval.
    PendingApproval(PendingView),
    /// It needed approval and did not get it.
    NotApproved(NotApproved),
}

impl AcquireOutcome {
    /// A short fixed name for the kind of answer (a metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            AcquireOutcome::Granted(_) => "granted",
            AcquireOutcome::Busy { .. } => "busy",
            AcquireOutcome::Queued { .. } => "queued",
            AcquireOutcome::AlreadyDone(_) => "already_done",
            AcquireOutcome::WaitEnded => "wait_ended",
            AcquireOutcome::Rejected(_) => "rejected",
            AcquireOutcome::Denied(_) => "denied",
            AcquireOutcome::PendingApproval(_) => "pending_approval",
            AcquireOutcome::NotApproved(_) => "not_approved",
        }
    }
}

/// A pending approval as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingView {
    pub request_id: RequestId,
    pub resource: ResourcePath,
    pub principal: Principal,
    pub instance: InstanceId,
    pub ttl_ms: u64,
    pub intent: Intent,
    /// Distinct approvals needed in all.
    pub needed: u32,
    /// Who approved so far, in order, with their comments.
    pub approvers: Vec<(Principal, String)>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub policy_version: u64,
    pub policies: Vec<String>,
}

impl PendingView {
    /// What a human approves: SHA-256 (hex, 128 bits) over the request as shown (who, instance,
    /// resource, ttl, intent, when it opened and expires, approvals needed, the policy version and
    /// ids that sent it to approval) and `policy_version_now`, the version in force when it was
    /// read. Approvals so far are left out: another human's approval does not change what this
    /// one decides on. A request id reopened on another resource, or a policy change, gives
    /// another digest.
    pub fn digest(&self, policy_version_now: u64) -> String {
        use sha2::{Digest, Sha256};
        let shown = (
            self.request_id.as_str(),
            self.resource.as_str(),
            self.principal.as_str(),
            self.instance.as_str(),
            self.ttl_ms,
            &self.intent,
            self.created_at_ms,
            self.expires_at_ms,
            self.needed,
            self.policy_version,
            &self.policies,
            policy_version_now,
        );
        // Plain structs and ordered maps: encoding cannot fail, and is the same on every node.
        let bytes = bincode::serialize(&shown).unwrap_or_default();
        hex::encode(&Sha256::digest(&bytes)[..16])
    }
}

/// How an approval ended without a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotApproved {
    Rejected {
        by: Principal,
        reason: String,
    },
    Expired,
    /// A policy change now denies it.
    Cancelled {
        reason: String,
    },
}

impl std::fmt::Display for NotApproved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotApproved::Rejected { by, reason } => write!(f, "rejected by {by}: {reason}"),
            NotApproved::Expired => write!(f, "the approval expired before it reached its quorum"),
            NotApproved::Cancelled { reason } => {
                write!(f, "cancelled by a policy change: {reason}")
            }
        }
    }
}

/// The answer to an `Approve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalProgress {
    pub pending: PendingView,
    /// Set when this approval reached the quorum: what the request got then.
    pub outcome: Option<AcquireOutcome>,
}

/// A successful release. `already` is true for an idempotent retry of a release that already happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseOk {
    pub lease: Lease,
    pub ended: EndReason,
    pub already: bool,
}

/// The result of applying one `Request`, one variant per `Command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// One answer per command of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
    Acquire(AcquireOutcome),
    Release(Result<ReleaseOk, OpError>),
    Checkpoint(Result<(), OpError>),
    /// The revoked lease.
    Revoke(Result<Lease, OpError>),
    /// The request's final answer after the cancel (`Granted` if it was granted meanwhile).
    CancelWait(AcquireOutcome),
    Renew(Vec<(LeaseId, Result<Lease, OpError>)>),
    Expire {
        expired: Vec<LeaseId>,
    },
    CheckpointTtl,
    /// The new policy version.
    PutPolicy(Result<u64, OpError>),
    Approve(Result<Box<ApprovalProgress>, OpError>),
    Reject(Result<Box<PendingView>, OpError>),
    ExpireApprovals {
        expired: Vec<RequestId>,
    },
    NoteAnswer,
    MintToken(Result<super::types::TokenRecord, OpError>),
    RevokeToken(Result<super::types::TokenRecord, OpError>),
    AdminCheck(Result<(), OpError>),
    /// The command was not applied (its access token was revoked).
    Refused(OpError),
    SetRecordLimits,
}

/// A response that is not the answer the proposer's command gets (a bug, never an input error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected answer to {0}")]
pub struct UnexpectedAnswer(pub &'static str);

/// One typed taker per command's answer: `Response::into_checkpoint(r)` is the answer to a
/// `Checkpoint`, or [`UnexpectedAnswer`]. A proposer names the answer it expects once.
macro_rules! answer_takers {
    ($($take:ident => $variant:ident($answer:ty);)*) => {
        impl Response {
            $(
                #[doc = concat!("The answer to `", stringify!($variant), "`.")]
                pub fn $take(self) -> Result<$answer, UnexpectedAnswer> {
                    match self {
                        Response::$variant(answer) => Ok(answer),
                        _ => Err(UnexpectedAnswer(stringify!($variant))),
                    }
                }
            )*
        }
    };
}

answer_takers! {
    into_acquire => Acquire(AcquireOutcome);
    into_release => Release(Result<ReleaseOk, OpError>);
    into_checkpoint => Checkpoint(Result<(), OpError>);
    into_revoke => Revoke(Result<Lease, OpError>);
    into_cancel_wait => CancelWait(AcquireOutcome);
    into_renew => Renew(Vec<(LeaseId, Result<Lease, OpError>)>);
    into_put_policy => PutPolicy(Result<u64, OpError>);
    into_approve => Approve(Result<Box<ApprovalProgress>, OpError>);
    into_reject => Reject(Result<Box<PendingView>, OpError>);
    into_mint_token => MintToken(Result<super::types::TokenRecord, OpError>);
    into_revoke_token => RevokeToken(Result<super::types::TokenRecord, OpError>);
    into_admin_check => AdminCheck(Result<(), OpError>);
}

/// What one apply produced besides its answers: events for the server and audit records for
/// storage, both in log order.
#[derive(Debug, Default)]
pub struct Effects {
    pub events: Vec<Event>,
    pub audit: Vec<AuditRecord>,
    /// While a `Command::ViaToken` is applied: its token id, stamped into every audit record the
    /// command causes (`AuditEntry::via_token`).
    pub(super) via_token: Option<String>,
}

/// Side effects of an apply the server acts on: waking waiting acquires and keepalive streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A lease was granted, at once or to a waiter (`grant.lease.request_id` names the request).
    Granted { grant: Grant },
    /// A lease ended (release, expiry, revoke or takeover).
    Ended { lease: Lease, reason: EndReason },
    /// A queued request left the queue without a grant; its final answer is in the dedup table.
    WaiterEnded { request_id: RequestId },
}

/// An acquire waiting for humans: the exact request and what policy said about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub(super) cmd: AcquireCmd,
    pub(super) needed: u32,
    pub(super) approvers: Vec<(Principal, String)>,
    pub(super) created_ms: u64,
    pub(super) expires_ms: u64,
    pub(super) policy_version: u64,
    pub(super) policies: Vec<String>,
}

/// What policy says about one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        policy_version: u64,
        policies: Vec<String>,
    },
    Deny(Denial),
    Approval {
        needed: u32,
        policy_version: u64,
        policies: Vec<String>,
    },
}
