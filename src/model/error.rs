//! Errors of the state machine: why an operation was refused (`OpError`) and why a snapshot could not
//! be read (`SnapshotError`).
//!
//! Invariant: every `OpError` maps to exactly one `ErrorKind`, so the server maps errors to gRPC
//! statuses in one place.

use serde::{Deserialize, Serialize};

use super::types::{EndReason, FencingToken, LeaseId, Principal, RequestId, ResourcePath};

/// Why the state machine refused an operation. Replicated (it is part of responses and the dedup
/// table), hence Serialize/Deserialize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    #[error("unknown lease {0}: it never existed, or it ended long enough ago to be forgotten")]
    UnknownLease(LeaseId),
    #[error("lease {lease_id} has ended ({reason}); acquire the resource again")]
    LeaseEnded {
        lease_id: LeaseId,
        reason: EndReason,
    },
    #[error("lease {lease_id} is held by {holder}, not by you")]
    NotHolder {
        lease_id: LeaseId,
        holder: Principal,
    },
    #[error(
        "fencing token {given} is stale: the current token is {current}; stop acting on the resource"
    )]
    StaleToken {
        given: FencingToken,
        current: FencingToken,
    },
    #[error(
        "checkpoint is {size} bytes, at most {max} allowed; store bulk data elsewhere and checkpoint a reference"
    )]
    CheckpointTooLarge { size: usize, max: usize },
    #[error(
        "request id {request_id} was already used for another resource, principal or instance; use a fresh request id"
    )]
    RequestIdReused { request_id: RequestId },
    #[error("resource {resource} is not held by anyone")]
    NotHeld { resource: ResourcePath },
    #[error("wait queue for {resource} is full ({max} waiters); retry later or without waiting")]
    QueueFull { resource: ResourcePath, max: usize },
    /// Added beyond the brief: `CancelWait` for a request id the dedup table does not know.
    #[error("unknown request {request_id}: it never existed, or it ended long enough ago to be forgotten")]
    UnknownRequest { request_id: RequestId },
    /// Added beyond the brief: `CancelWait` by someone other than the requester.
    #[error("request {request_id} was made by {requester}, not by you")]
    NotRequester {
        request_id: RequestId,
        requester: Principal,
    },
    /// Policy (or the default decision) refused the operation.
    #[error("{0}")]
    Denied(Denial),
    #[error("policy rejected, nothing changed: {message}")]
    InvalidPolicy { message: String },
    #[error("request {request_id} is not pending approval: {state}")]
    NotPending {
        request_id: RequestId,
        state: String,
    },
    #[error("{by} made request {request_id} and cannot approve or reject it; another human must")]
    OwnRequest {
        request_id: RequestId,
        by: Principal,
    },
    #[error("{max} acquisitions already wait for approval; decide some before asking for more")]
    TooManyPending { max: usize },
    #[error("unknown access token {id}: it was never minted here, or it has expired")]
    UnknownToken { id: String },
    #[error("access token id {id} is already in use")]
    TokenIdReused { id: String },
    #[error("{max} access tokens are live; revoke some or wait for them to expire")]
    TooManyTokens { max: usize },
    #[error("{by} already approved request {request_id}; an approver counts once")]
    AlreadyApproved {
        request_id: RequestId,
        by: Principal,
    },
    #[error("access token {id} was revoked before this request was applied")]
    TokenRevoked { id: String },
    /// An approve or reject sent the digest of the request as the human saw it, and the request
    /// or the policy in force has changed since (issue 24 item 7).
    #[error(
        "request {request_id} is not what you were shown: you saw it under policy version {seen}, \
         it is now {what_now}; look again (`warrant approvals list`) and decide on what it shows now"
    )]
    ChangedSinceSeen {
        request_id: RequestId,
        seen: u64,
        what_now: String,
    },
    /// The dedup table holds `max` request ids, none older than the retention; a new request id
    /// would push out a record some client may still retry, so it is refused instead (issue 24
    /// item 4). Nothing was recorded: retrying the same request id later is safe.
    #[error(
        "the cluster is remembering {max} recent request ids, each for at least {min_age_s} s so \
         retries stay idempotent, and has no room for a new one; retry shortly (an operator can \
         raise limits.request_records)"
    )]
    RequestTableFull { max: usize, min_age_s: u64 },
    /// Only human principals approve or reject (issue 25 item 5).
    #[error("{by} cannot approve or reject: only human principals decide on requests")]
    NotHuman { by: Principal },
    /// A per-principal quota (issue 25 item 7): `what` the principal has reached `max` of, and the
    /// config setting that sets it.
    #[error(
        "{principal} already has {max} {what} (limits.{setting}); end some first, or ask an \
         operator to raise limits.{setting}"
    )]
    QuotaExceeded {
        principal: Principal,
        what: String,
        setting: String,
        max: u32,
    },
}

/// Coarse class of an `OpError`, mapped to a gRPC status code (and CLI exit code) in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    FailedPrecondition,
    PermissionDenied,
    InvalidArgument,
    ResourceExhausted,
    /// A fencing token lower than the current one: the caller must stop acting (DESIGN rule 4).
    Stale,
    /// The caller's credential is no longer good.
    Unauthenticated,
}

impl OpError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            OpError::UnknownLease(_)
            | OpError::UnknownRequest { .. }
            | OpError::UnknownToken { .. } => ErrorKind::NotFound,
            OpError::TokenIdReused { .. } => ErrorKind::InvalidArgument,
            OpError::TooManyTokens { .. } => ErrorKind::ResourceExhausted,
            OpError::LeaseEnded { .. } | OpError::NotHeld { .. } => ErrorKind::FailedPrecondition,
            OpError::NotHolder { .. }
            | OpError::NotRequester { .. }
            | OpError::Denied(_)
            | OpError::OwnRequest { .. }
            | OpError::NotHuman { .. } => ErrorKind::PermissionDenied,
            OpError::CheckpointTooLarge { .. }
            | OpError::RequestIdReused { .. }
            | OpError::InvalidPolicy { .. } => ErrorKind::InvalidArgument,
            OpError::NotPending { .. }
            | OpError::AlreadyApproved { .. }
            | OpError::ChangedSinceSeen { .. } => ErrorKind::FailedPrecondition,
            OpError::QueueFull { .. }
            | OpError::TooManyPending { .. }
            | OpError::RequestTableFull { .. }
            | OpError::QuotaExceeded { .. } => ErrorKind::ResourceExhausted,
            OpError::StaleToken { .. } => ErrorKind::Stale,
            OpError::TokenRevoked { .. } => ErrorKind::Unauthenticated,
        }
    }
}

/// Why `State::from_snapshot` refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is empty: expected a format-version byte followed by the state")]
    Empty,
    #[error(
        "snapshot format version {found} is not supported (this build reads version {supported}); upgrade this node"
    )]
    UnknownVersion { found: u8, supported: u8 },
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
}

/// Why policy refused a request: the policy version, the determining policies and the `@reason` text
/// a human wrote on the determining forbid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub action: String,
    pub policy_version: u64,
    pub policies: Vec<String>,
    pub reason: Option<String>,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.reason, self.policy_version) {
            (_, 0) if self.action == "acquire" || self.action == "takeover" => write!(
                f,
                "{} denied: no policy is loaded and the cluster's default_decision is deny",
                self.action
            ),
            (_, 0) => write!(
                f,
                "{} denied: no policy is loaded, so only the config's admins may {}",
                self.action, self.action
            ),
            (Some(reason), v) => write!(
                f,
                "{} denied by policy {} (version {v}): {reason}",
                self.action,
                self.policies.join(", ")
            ),
            (None, v) if self.policies.is_empty() => write!(
                f,
                "{} denied: no policy of version {v} permits it",
                self.action
            ),
            (None, v) => write!(
                f,
                "{} denied by policy {} (version {v})",
                self.action,
                self.policies.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_kind_and_an_actionable_message() {
        let lease_id = LeaseId(1);
        let who = Principal::parse("agent/x").unwrap();
        let resource = ResourcePath::parse("a/b").unwrap();
        let request_id = RequestId::parse("r1").unwrap();
        let cases = [
            (OpError::UnknownLease(lease_id), ErrorKind::NotFound),
            (
                OpError::LeaseEnded {
                    lease_id,
                    reason: EndReason::Expired,
                },
                ErrorKind::FailedPrecondition,
            ),
            (
                OpError::NotHolder {
                    lease_id,
                    holder: who.clone(),
                },
                ErrorKind::PermissionDenied,
            ),
            (
                OpError::StaleToken {
                    given: FencingToken(1),
                    current: FencingToken(2),
                },
                ErrorKind::Stale,
            ),
            (
                OpError::CheckpointTooLarge {
                    size: 5000,
                    max: 4096,
                },
                ErrorKind::InvalidArgument,
            ),
            (
                OpError::RequestIdReused {
                    request_id: request_id.clone(),
                },
                ErrorKind::InvalidArgument,
            ),
            (
                OpError::NotHeld {
                    resource: resource.clone(),
                },
                ErrorKind::FailedPrecondition,
            ),
            (
                OpError::QueueFull {
                    resource,
                    max: 1024,
                },
                ErrorKind::ResourceExhausted,
            ),
            (
                OpError::UnknownRequest {
                    request_id: request_id.clone(),
                },
                ErrorKind::NotFound,
            ),
            (
                OpError::NotRequester {
                    request_id,
                    requester: who,
                },
                ErrorKind::PermissionDenied,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(
            OpError::LeaseEnded {
                lease_id,
                reason: EndReason::Expired
            }
            .to_string(),
            "lease 0000000000000001 has ended (expired); acquire the resource again"
        );
    }
}
