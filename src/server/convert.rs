//! Conversions between the model and the public API, and the one place where errors become gRPC
//! statuses.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::Status;

use crate::model::{self, ErrorKind, OpError, ValidationError};
use crate::proto;

/// The single mapping of state-machine errors to gRPC statuses.
pub fn op_error(e: &OpError) -> Status {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::NotFound => Status::not_found(msg),
        ErrorKind::FailedPrecondition | ErrorKind::Stale => Status::failed_precondition(msg),
        ErrorKind::PermissionDenied => Status::permission_denied(msg),
        ErrorKind::InvalidArgument => Status::invalid_argument(msg),
        ErrorKind::ResourceExhausted => Status::resource_exhausted(msg),
        ErrorKind::Unauthenticated => Status::unauthenticated(msg),
    }
}

/// Input that failed validation.
pub fn invalid(e: ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A request's intent: validated, and (since a human may read it before approving) free of control
/// and invisible formatting characters. Stored intents are not re-checked against the latter rule.
pub fn intent_to_model(intent: Option<proto::Intent>) -> Result<model::Intent, Status> {
    let intent = intent.unwrap_or_default();
    let readable = |what: String, text: &str| {
        model::types::check_readable_text(text)
            .map_err(|why| Status::invalid_argument(format!("{what}: {why}")))
    };
    readable("intent text".into(), &intent.text)?;
    for (k, v) in &intent.labels {
        readable(format!("intent label {k:?}"), k)?;
        readable(format!("intent label {k:?}"), v)?;
    }
    let labels: BTreeMap<String, String> = intent.labels.into_iter().collect();
    model::Intent::new(intent.text, labels).map_err(invalid)
}

pub fn intent_to_proto(intent: &model::Intent) -> proto::Intent {
    proto::Intent {
        text: intent.text().to_string(),
        labels: intent.labels().clone().into_iter().collect(),
    }
}

pub fn lease(l: &model::Lease, remaining: Option<Duration>) -> proto::Lease {
    proto::Lease {
        lease_id: l.lease_id.to_string(),
        resource: l.resource.to_string(),
        principal: l.principal.to_string(),
        instance: l.instance.to_string(),
        token: l.token.0,
        ttl_ms: l.ttl_ms,
        intent: Some(intent_to_proto(&l.intent)),
        task_key: l
            .task_key
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default(),
        granted_at_ms: l.granted_at_ms,
        expires_in_ms: remaining.map(|d| d.as_millis() as u64).unwrap_or(0),
        checkpoint: l.checkpoint.clone(),
    }
}

pub fn previous(p: &model::Previous) -> proto::Previous {
    proto::Previous {
        lease_id: p.lease_id.to_string(),
        principal: p.principal.to_string(),
        instance: p.instance.to_string(),
        token: p.token.0,
        ended: p.ended.to_string(),
        ended_at_ms: p.ended_at_ms,
        checkpoint: p.checkpoint.clone(),
    }
}

pub fn completion(c: &model::Completion) -> proto::Completion {
    proto::Completion {
        lease_id: c.lease_id.to_string(),
        principal: c.principal.to_string(),
        instance: c.instance.to_string(),
        token: c.token.0,
        completed_at_ms: c.completed_at_ms,
        checkpoint: c.checkpoint.clone(),
    }
}

pub fn denied(d: &model::Denial) -> proto::Denied {
    proto::Denied {
        action: d.action.clone(),
        policy_version: d.policy_version,
        policies: d.policies.clone(),
        reason: d.reason.clone().unwrap_or_default(),
        message: d.to_string(),
    }
}

/// A pending request as shown to humans; `policy_version_now` is the version in force as it is
/// read, which its digest covers.
pub fn pending(p: &model::PendingView, policy_version_now: u64) -> proto::PendingApproval {
    proto::PendingApproval {
        digest: p.digest(policy_version_now),
        policy_version_now,
        request_id: p.request_id.to_string(),
        approvals_needed: p.needed,
        approvers: p
            .approvers
            .iter()
            .map(|(who, comment)| proto::Approver {
                principal: who.to_string(),
                comment: comment.clone(),
            })
            .collect(),
        expires_at_ms: p.expires_at_ms,
        policy_version: p.policy_version,
        policies: p.policies.clone(),
        resource: p.resource.to_string(),
        principal: p.principal.to_string(),
        instance: p.instance.to_string(),
        ttl_ms: p.ttl_ms,
        intent: Some(intent_to_proto(&p.intent)),
        created_at_ms: p.created_at_ms,
    }
}

pub fn not_approved(n: &model::NotApproved) -> proto::NotApproved {
    match n {
        model::NotApproved::Rejected { by, reason } => proto::NotApproved {
            kind: "rejected".into(),
            by: by.to_string(),
            reason: reason.clone(),
        },
        model::NotApproved::Expired => proto::NotApproved {
            kind: "expired".into(),
            by: String::new(),
            reason: n.to_string(),
        },
        model::NotApproved::Cancelled { reason } => proto::NotApproved {
            kind: "cancelled".into(),
            by: String::new(),
            reason: reason.clone(),
        },
    }
}
