//! What the state machine writes into the audit chain: one record per request, decision and state
//! change, appended in the same apply as the decision (so the trail is exactly as replicated as the
//! state it describes).
//!
//! Not audited: keepalive bookkeeping (`Renew`, `CheckpointTtl`), which changes no holder, and the
//! retry of a request already answered (the first answer is in the trail).

use super::command::{AcquireCmd, AcquireOutcome, Effects};
use super::state::State;
use super::types::{EndReason, Lease};
use crate::audit::{AuditDecision, AuditEntry};

impl State {
    /// Append `entry` to the chain at this entry's index and time; storage persists the record.
    pub(super) fn audit(&mut self, fx: &mut Effects, mut entry: AuditEntry) {
        if entry.policy_version == 0 {
            entry.policy_version = self.policy_version();
        }
        if let Some(id) = &fx.via_token {
            entry.via_token.clone_from(id);
        }
        let record = self.audit.append(self.last_index, self.now_ms, entry);
        fx.audit.push(record);
    }

    /// Audit the answer to an acquire (decided in apply, or given by the leader without a write).
    pub(super) fn audit_acquire(
        &mut self,
        cmd: &AcquireCmd,
        outcome: &AcquireOutcome,
        policies: Vec<String>,
        approvers: Vec<String>,
        fx: &mut Effects,
    ) {
        let action = if cmd.takeover { "takeover" } else { "acquire" };
        let (decision, reason) = match outcome {
            AcquireOutcome::Granted(g) => (
                AuditDecision::Granted,
                match &g.previous {
                    Some(p) => format!("previous holder {} ({})", p.principal, p.ended),
                    None => String::new(),
                },
            ),
            AcquireOutcome::Busy { holder } => (
                AuditDecision::Busy,
                format!(
                    "held by {} ({}) with token {}",
                    holder.principal, holder.instance, holder.token
                ),
            ),
            AcquireOutcome::Queued { position } => (
                AuditDecision::Queued,
                format!("queued at position {position}"),
            ),
            AcquireOutcome::AlreadyDone(c) => (
                AuditDecision::AlreadyDone,
                format!("task completed under token {}", c.token),
            ),
            AcquireOutcome::WaitEnded => (AuditDecision::WaitEnded, String::new()),
            AcquireOutcome::Rejected(e) => (AuditDecision::Invalid, e.to_string()),
            AcquireOutcome::Denied(d) => (AuditDecision::Denied, d.to_string()),
            AcquireOutcome::PendingApproval(p) => (
                AuditDecision::PendingApproval,
                format!("needs {} approvals", p.needed),
            ),
            AcquireOutcome::NotApproved(n) => (AuditDecision::Rejected, n.to_string()),
        };
        let mut entry = entry_for_cmd(cmd, action, decision);
        entry.reason = reason;
        entry.approvers = approvers;
        match outcome {
            AcquireOutcome::Granted(g) => {
                entry.lease_id = g.lease.lease_id.to_string();
                entry.token = g.lease.token.0;
                entry.policies = policies;
            }
            AcquireOutcome::Denied(d) => {
                entry.policy_version = d.policy_version;
                entry.policies = d.policies.clone();
            }
            AcquireOutcome::PendingApproval(p) => {
                entry.policy_version = p.policy_version;
                entry.policies = p.policies.clone();
            }
            _ => entry.policies = policies,
        }
        self.audit(fx, entry);
    }

    /// Audit the end of a lease; the principal is whoever ended it.
    pub(super) fn audit_end(&mut self, lease: &Lease, reason: &EndReason, fx: &mut Effects) {
        let (action, decision) = match reason {
            EndReason::Released => ("release", AuditDecision::Released),
            EndReason::Done => ("release", AuditDecision::Done),
            EndReason::Failed => ("release", AuditDecision::Failed),
            EndReason::Expired => ("expire", AuditDecision::Expired),
            EndReason::Revoked { .. } => ("revoke", AuditDecision::Revoked),
            EndReason::TakenOver { .. } => ("takeover", AuditDecision::TakenOver),
        };
        let mut entry = entry_for_lease(lease, action, decision);
        entry.reason = reason.to_string();
        if let EndReason::Revoked { by, .. } = reason {
            entry.principal = by.to_string();
            entry.instance = String::new();
        }
        self.audit(fx, entry);
    }

    /// Audit an operation on a lease that was refused or succeeded without ending it.
    pub(super) fn audit_lease_op(
        &mut self,
        lease: Option<&Lease>,
        principal: &str,
        action: &str,
        decision: AuditDecision,
        reason: String,
        fx: &mut Effects,
    ) {
        let mut entry = match lease {
            Some(l) => entry_for_lease(l, action, decision),
            None => AuditEntry::new(action, decision),
        };
        if entry.principal != principal {
            entry.principal = principal.to_owned();
            entry.instance = String::new();
        }
        entry.reason = reason;
        self.audit(fx, entry);
    }
}

pub(super) fn entry_for_cmd(cmd: &AcquireCmd, action: &str, decision: AuditDecision) -> AuditEntry {
    let mut entry = AuditEntry::new(action, decision);
    entry.principal = cmd.principal.to_string();
    entry.instance = cmd.instance.to_string();
    entry.resource = cmd.resource.to_string();
    entry.request_id = cmd.request_id.to_string();
    entry.intent = cmd.intent.text().to_owned();
    entry.labels = cmd.intent.labels().clone();
    entry
}

fn entry_for_lease(lease: &Lease, action: &str, decision: AuditDecision) -> AuditEntry {
    let mut entry = AuditEntry::new(action, decision);
    entry.principal = lease.principal.to_string();
    entry.instance = lease.instance.to_string();
    entry.resource = lease.resource.to_string();
    entry.request_id = lease.request_id.to_string();
    entry.lease_id = lease.lease_id.to_string();
    entry.token = lease.token.0;
    entry.intent = lease.intent.text().to_owned();
    entry.labels = lease.intent.labels().clone();
    entry
}
