//! Client requests into commands: each call's input checks, pure (no state, no I/O, no clock), so
//! the handlers, the unit tests and the fuzz targets run the same code on the same bytes. An error
//! is the status the caller gets (INVALID_ARGUMENT, or PERMISSION_DENIED for a non-human approver).
//!
//! The caller's principal comes in already checked against its credential (`auth::Caller`);
//! authorization (policy) is decided when the command is applied.

use std::time::Duration;

use tonic::Status;

use super::config::Config;
use super::convert::{intent_to_model, invalid};
use crate::model::{
    self, AcquireCmd, Command, FencingToken, InstanceId, LeaseId, PolicyDefaults, Principal,
    PrincipalKind, ReleaseOutcome, RequestId, ResourcePath, RevokeTarget, TaskKey,
    MAX_CHECKPOINT_BYTES,
};
use crate::policy;
use crate::proto;

/// Largest policy text or entities document accepted.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;
/// Longest approval comment, rejection or revocation reason.
pub const MAX_NOTE_BYTES: usize = 1024;
/// Longest intent window a policy may ask for.
pub const MAX_INTENT_WINDOW_MS: u64 = 7 * 24 * 3_600_000;

/// A principal named in a request (not necessarily the caller's).
pub fn principal(s: &str) -> Result<Principal, Status> {
    if s.is_empty() {
        return Err(Status::invalid_argument(
            "principal is required (agent/NAME or human/NAME; the CLI takes --principal or WARRANT_PRINCIPAL)",
        ));
    }
    Principal::parse(s).map_err(invalid)
}

pub fn lease_id(s: &str) -> Result<LeaseId, Status> {
    s.parse::<LeaseId>().map_err(|_| {
        Status::invalid_argument(format!(
            "lease_id {s:?} is not a lease id (1 to 16 hex digits)"
        ))
    })
}

pub fn request_id(s: &str) -> Result<RequestId, Status> {
    RequestId::parse(s).map_err(invalid)
}

/// A resource a request acquires or asks policy about: canonical (one spelling per resource).
pub fn resource(s: &str) -> Result<ResourcePath, Status> {
    ResourcePath::parse(s).map_err(invalid)
}

/// A resource or prefix a request reads, fences or revokes: the stored rules, so a resource
/// acquired before the canonical-path rule can still be named.
pub fn existing_resource(s: &str) -> Result<ResourcePath, Status> {
    ResourcePath::parse_stored(s).map_err(invalid)
}

/// A human's free text (reason, comment): required or not, bounded, no control characters.
pub fn note(what: &str, text: &str, required: bool) -> Result<(), Status> {
    if (required && text.trim().is_empty())
        || text.len() > MAX_NOTE_BYTES
        || text.chars().any(char::is_control)
    {
        return Err(Status::invalid_argument(format!(
            "{what}: {}at most {MAX_NOTE_BYTES} bytes of text without control characters",
            if required { "required, " } else { "" }
        )));
    }
    model::types::check_readable_text(text)
        .map_err(|why| Status::invalid_argument(format!("{what}: {why}")))
}

/// Only a human approves or rejects, whatever the policy says: the README promises "N distinct
/// humans", and an agent's approval would let agents wave each other through.
fn human_approver(by: &Principal, what: &str) -> Result<(), Status> {
    if by.kind() == PrincipalKind::Human {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{by} cannot {what}: only human principals approve or reject requests (use a human's certificate)"
    )))
}

/// A digest an approver sends back (`PendingApproval.digest`): 32 lowercase hex digits.
fn seen_digest(digest: &str) -> Result<String, Status> {
    if digest.len() == 32
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(digest.to_string())
    } else {
        Err(Status::invalid_argument(format!(
            "digest {digest:?} is not a request digest (32 lowercase hex digits, as `warrant approvals list` shows)"
        )))
    }
}

/// The cluster's bounds an acquire is checked against.
#[derive(Debug, Clone)]
pub struct AcquireBounds {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub max_wait: Duration,
    pub approval_timeout: Duration,
}

impl AcquireBounds {
    pub fn of(config: &Config) -> Self {
        Self {
            min_ttl: config.lease.min_ttl,
            max_ttl: config.lease.max_ttl,
            max_wait: config.lease.max_wait,
            approval_timeout: config.approval_timeout,
        }
    }
}

/// A checked acquire: the command, and how long its caller waits for the resource and for humans.
#[derive(Debug)]
pub struct Acquire {
    pub cmd: AcquireCmd,
    pub wait_ms: u64,
    pub approval_wait: Duration,
}

/// An acquire by `principal`.
pub fn acquire(
    mut r: proto::AcquireRequest,
    principal: Principal,
    bounds: &AcquireBounds,
    defaults: PolicyDefaults,
) -> Result<Acquire, Status> {
    // `warrant acquire --wait 10m` asks to wait for humans and then for the resource: the queue
    // part is capped at max_wait rather than refused.
    if r.approval_wait_ms > 0 {
        r.wait_ms = r.wait_ms.min(bounds.max_wait.as_millis() as u64);
    }
    let request_id = request_id(&r.request_id)?;
    // Shown to the humans who approve: no invisible formatting characters (issue 25 item 5).
    for (what, text) in [
        ("request_id", &r.request_id),
        ("instance", &r.instance),
        ("task_key", &r.task_key),
    ] {
        model::types::check_readable_text(text)
            .map_err(|why| Status::invalid_argument(format!("{what}: {why}")))?;
    }
    let cmd = AcquireCmd {
        request_id,
        resource: resource(&r.resource)?,
        principal,
        instance: InstanceId::parse(&r.instance).map_err(invalid)?,
        ttl_ms: r.ttl_ms,
        intent: intent_to_model(r.intent)?,
        task_key: if r.task_key.is_empty() {
            None
        } else {
            Some(TaskKey::parse(&r.task_key).map_err(invalid)?)
        },
        wait_ms: (r.wait_ms > 0).then_some(r.wait_ms),
        takeover: r.takeover,
        defaults,
    };
    let approval_wait = Duration::from_millis(r.approval_wait_ms);
    if approval_wait > bounds.approval_timeout {
        return Err(Status::invalid_argument(format!(
            "approval_wait {} is longer than this cluster's approval_timeout {}",
            humantime::format_duration(approval_wait),
            humantime::format_duration(bounds.approval_timeout)
        )));
    }
    let ttl = Duration::from_millis(r.ttl_ms);
    if ttl < bounds.min_ttl || ttl > bounds.max_ttl {
        return Err(Status::invalid_argument(format!(
            "ttl {} is outside this cluster's bounds [{}, {}]",
            humantime::format_duration(ttl),
            humantime::format_duration(bounds.min_ttl),
            humantime::format_duration(bounds.max_ttl)
        )));
    }
    if Duration::from_millis(r.wait_ms) > bounds.max_wait {
        return Err(Status::invalid_argument(format!(
            "wait {} is longer than this cluster's maximum {}",
            humantime::format_duration(Duration::from_millis(r.wait_ms)),
            humantime::format_duration(bounds.max_wait)
        )));
    }
    Ok(Acquire {
        cmd,
        wait_ms: r.wait_ms,
        approval_wait,
    })
}

/// A checkpoint by `principal`.
pub fn checkpoint(r: proto::CheckpointRequest, principal: Principal) -> Result<Command, Status> {
    if r.data.len() > MAX_CHECKPOINT_BYTES {
        return Err(Status::invalid_argument(format!(
            "checkpoint is {} bytes; the limit is {MAX_CHECKPOINT_BYTES}",
            r.data.len()
        )));
    }
    Ok(Command::Checkpoint {
        lease_id: lease_id(&r.lease_id)?,
        principal,
        token: FencingToken(r.token),
        data: r.data,
    })
}

/// A release by `principal`: the lease's id and the command.
pub fn release(
    r: &proto::ReleaseRequest,
    principal: Principal,
) -> Result<(LeaseId, Command), Status> {
    let outcome = match proto::ReleaseOutcome::try_from(r.outcome) {
        Ok(proto::ReleaseOutcome::Unspecified) => None,
        Ok(proto::ReleaseOutcome::Done) => Some(ReleaseOutcome::Done),
        Ok(proto::ReleaseOutcome::Failed) => Some(ReleaseOutcome::Failed),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "outcome {} is not done, failed or unspecified",
                r.outcome
            )))
        }
    };
    let lease_id = lease_id(&r.lease_id)?;
    Ok((
        lease_id,
        Command::Release {
            lease_id,
            principal,
            outcome,
        },
    ))
}

/// A revoke by `by` (`by_admin`: one of the config's admins).
pub fn revoke(r: proto::RevokeRequest, by: Principal, by_admin: bool) -> Result<Command, Status> {
    let target = match (r.resource.is_empty(), r.lease_id.is_empty()) {
        (false, true) => RevokeTarget::Resource(existing_resource(&r.resource)?),
        (true, false) => RevokeTarget::Lease(lease_id(&r.lease_id)?),
        _ => {
            return Err(Status::invalid_argument(
                "give exactly one of resource or lease_id",
            ))
        }
    };
    note("reason", &r.reason, true)?;
    Ok(if r.request_id.is_empty() {
        Command::Revoke {
            target,
            by,
            reason: r.reason,
            by_admin,
        }
    } else {
        Command::RevokeOnce {
            request_id: request_id(&r.request_id)?,
            target,
            by,
            reason: r.reason,
            by_admin,
        }
    })
}

/// One human's approval.
pub fn approve(r: proto::ApproveRequest, by: Principal) -> Result<Command, Status> {
    let id = request_id(&r.request_id)?;
    human_approver(&by, "approve")?;
    note("comment", &r.comment, false)?;
    Ok(if r.digest.is_empty() {
        Command::Approve {
            request_id: id,
            by,
            comment: r.comment,
        }
    } else {
        Command::ApproveSeen {
            request_id: id,
            by,
            comment: r.comment,
            digest: seen_digest(&r.digest)?,
            policy_version: r.policy_version,
        }
    })
}

/// One human's rejection.
pub fn reject(r: proto::RejectRequest, by: Principal) -> Result<Command, Status> {
    let id = request_id(&r.request_id)?;
    human_approver(&by, "reject")?;
    note("reason", &r.reason, true)?;
    Ok(if r.digest.is_empty() {
        Command::Reject {
            request_id: id,
            by,
            reason: r.reason,
        }
    } else {
        Command::RejectSeen {
            request_id: id,
            by,
            reason: r.reason,
            digest: seen_digest(&r.digest)?,
            policy_version: r.policy_version,
        }
    })
}

/// A new policy set put by `by` (`by_admin`: one of the config's admins). The checks apply runs,
/// made here first so a bad set costs no log write; apply checks again (and audits the refusal).
pub fn put_policy(
    r: proto::PutPolicyRequest,
    by: Principal,
    by_admin: bool,
) -> Result<Command, Status> {
    if r.policies.len() > MAX_POLICY_BYTES || r.entities.len() > MAX_POLICY_BYTES {
        return Err(Status::invalid_argument(format!(
            "policies and entities are each limited to {MAX_POLICY_BYTES} bytes"
        )));
    }
    if r.intent_window_ms > MAX_INTENT_WINDOW_MS {
        return Err(Status::invalid_argument(format!(
            "intent_window_ms {} is longer than the maximum {MAX_INTENT_WINDOW_MS} (7 days)",
            r.intent_window_ms
        )));
    }
    let entities = (!r.entities.trim().is_empty()).then_some(r.entities);
    policy::validate(&r.policies, entities.as_deref())
        .map_err(|e| Status::invalid_argument(format!("policy rejected, nothing changed: {e}")))?;
    // One resource, one spelling (issue 25 item 4): a literal no request can name would make its
    // rule silently never apply.
    for literal in policy::resource_literals(&r.policies, entities.as_deref()) {
        if let Err(e) = ResourcePath::parse(&literal) {
            return Err(Status::invalid_argument(format!(
                "policy rejected, nothing changed: Resource::{literal:?} is not a resource \
                 path a request can name ({e}), so a rule on it would never apply"
            )));
        }
    }
    let intent_window_ms = if r.intent_window_ms == 0 {
        policy::DEFAULT_INTENT_WINDOW_MS
    } else {
        r.intent_window_ms
    };
    Ok(Command::PutPolicy {
        by,
        by_admin,
        policies: r.policies,
        entities,
        intent_window_ms,
    })
}
