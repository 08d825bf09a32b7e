//! The Raft log payload (`Request`/`Command`) and what applying it answers (`Response`, `Event`).
//!
//! Owns: the shapes that cross the boundary between the state machine and the server. Invariant: a
//! `Request` carries everything a decision needs, including the time (`now_ms`, stamped by the leader),
//! so every replica applying the same entry makes the same decision.

use serde::{Deserialize, Serialize};

use super::error::OpError;
use super::types::{
    Completion, EndReason, FencingToken, Grant, InstanceId, Intent, Lease, LeaseId, Principal,
    ReleaseOutcome, RequestId, ResourcePath, TaskKey,
};

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
