//! The pure, deterministic lease state machine at the heart of Warrant.
//!
//! Owns every decision about leases: grants, waits, takeovers, releases, expiry, revocation,
//! checkpoints, fencing tokens, task completions and request dedup. It has no I/O, no async, no
//! clock and no randomness: time comes from the entry (`Request::now_ms`, stamped by the leader) and
//! terms from the log (`EntryMeta`), so every replica applying the same entries reaches the same
//! state and answers. Storage, Raft glue and the gRPC server wrap it; they feed it entries and act
//! on the `Event`s it returns.
//!
//! Where to look: `grant.rs` (where a lease is granted and where it ends), `release.rs` (release,
//! checkpoint, revoke), `lease_time.rs` (renewal, expiry, the countdown after an election),
//! `governance.rs` (policy decisions, pending approvals, policy changes), `audit_trail.rs` (what
//! goes into the audit chain), `state.rs` (the state, `apply`, queries, snapshots), `types.rs`
//! (validated domain types),
//! `command.rs` (log entries and responses), `error.rs`.

pub mod access;
mod audit_trail;
pub mod command;
pub mod error;
pub mod governance;
mod grant;
mod lease_time;
mod release;
pub mod state;
pub mod types;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testkit;

pub use command::{
    AcquireCmd, AcquireOutcome, ApprovalProgress, Command, Effects, EntryMeta, Event, NotApproved,
    PendingView, PolicyDefaults, Quotas, ReleaseOk, Request, Response, RevokeTarget,
    UnexpectedAnswer,
};
pub use error::{Denial, ErrorKind, OpError, SnapshotError};
pub use governance::{Facts, Verdict, MAX_PENDING_APPROVALS};
pub use state::{
    FenceStatus, ResourceView, State, MAX_REVOKE_RECORDS, MAX_WAITERS_PER_RESOURCE,
    SNAPSHOT_FORMAT_VERSION,
};
pub use types::{
    Completion, EndReason, FencingToken, Grant, InstanceId, Intent, Lease, LeaseId, Previous,
    Principal, PrincipalKind, RecordLimits, ReleaseOutcome, RequestId, ResourcePath, TaskKey,
    TokenRecord, ValidationError, DEFAULT_MAX_RECORDS, DEFAULT_RECORD_MIN_AGE_MS,
    MAX_CHECKPOINT_BYTES, MAX_INSTANCE_CHARS, MAX_INTENT_LABELS, MAX_INTENT_TEXT_BYTES,
    MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_BYTES, MAX_PRINCIPAL_NAME_CHARS, MAX_REQUEST_ID_CHARS,
    MAX_RESOURCE_BYTES, MAX_RESOURCE_SEGMENTS, MAX_TASK_KEY_BYTES,
};
