//! The governance and audit RPCs: policy put/get/test, approvals, audit query/export/verify.
//!
//! Decisions are made in the state machine (policy changes, approvals, rejections are Raft entries);
//! this module validates input, proposes, and reads. Audit reads come from this node's copy of the
//! replicated audit log (identical on every node up to its applied index) and stream with bounded
//! memory: a blocking task walks RocksDB and feeds a small channel.

use std::str::FromStr;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::api::{Api, AuditStream, ReadAs};
use super::auth::Caller;
use super::convert::{self, op_error};
use super::requests::{self, existing_resource, principal, resource};
use crate::audit::{AuditDecision, AuditFilter, AuditRecord};
use crate::model::{self, Facts, Intent, Verdict};
use crate::policy::Action;
use crate::proto;
use crate::security::Identity;

/// Default and cap of an audit query's answer.
const DEFAULT_AUDIT_LIMIT: usize = 1_000;
const MAX_AUDIT_LIMIT: usize = 100_000;

impl Api {
    pub(super) async fn put_policy_rpc(
        &self,
        caller: Caller,
        r: proto::PutPolicyRequest,
    ) -> Result<Response<proto::PutPolicyResponse>, Status> {
        let by = caller.principal(&r.principal)?;
        caller.require_certificate("changing the policy")?;
        let by_admin = self.shared.admins.contains(&by);
        let cmd = requests::put_policy(r, by, by_admin)?;
        let version = self
            .shared
            .propose_for(caller.wrap(cmd), model::Response::into_put_policy)
            .await?
            .map_err(|e| op_error(&e))?;
        tracing::info!(version, "policy put");
        Ok(Response::new(proto::PutPolicyResponse { version }))
    }

    pub(super) async fn get_policy_rpc(
        &self,
        caller: &Caller,
    ) -> Result<Response<proto::GetPolicyResponse>, Status> {
        self.shared.confirm_for(caller).await?;
        let sm = self.shared.sm.read();
        ReadAs::of(caller, &self.shared).may_read(&sm.state, "", None)?;
        let default_decision = self.shared.config.default_decision.as_str().to_owned();
        Ok(Response::new(match sm.state.policy() {
            Some(p) => proto::GetPolicyResponse {
                version: p.version(),
                policies: p.policies_text().to_owned(),
                entities: p.entities_text().unwrap_or_default().to_owned(),
                intent_window_ms: p.intent_window_ms(),
                default_decision,
            },
            None => proto::GetPolicyResponse {
                default_decision,
                ..Default::default()
            },
        }))
    }

    pub(super) async fn test_policy_rpc(
        &self,
        caller: &Caller,
        r: proto::TestPolicyRequest,
    ) -> Result<Response<proto::TestPolicyResponse>, Status> {
        let who = principal(&r.principal)?;
        let action = Action::from_str(&r.action).map_err(|_| {
            Status::invalid_argument(format!(
                "action {:?} is not one of acquire, takeover, release, checkpoint, approve, revoke, admin, read",
                r.action
            ))
        })?;
        let res = if action == Action::Admin || (action == Action::Read && r.resource.is_empty()) {
            String::new()
        } else {
            resource(&r.resource)?.to_string()
        };
        let intent: Intent = convert::intent_to_model(r.intent)?;
        let facts = Facts {
            ttl_ms: r.ttl_ms,
            intent: &intent,
            has_task_key: r.has_task_key,
            takeover: action == Action::Takeover,
        };
        self.shared.confirm_for(caller).await?;
        let allow_without_policy = match action {
            Action::Acquire | Action::Takeover => {
                self.shared.policy_defaults().allow_without_policy
            }
            Action::Release | Action::Checkpoint | Action::Read => true,
            Action::Revoke | Action::Admin => self.shared.admins.contains(&who),
            Action::Approve => false,
        };
        let verdict = {
            let sm = self.shared.sm.read();
            // What the policy would decide for someone else reveals the policy: a read of it.
            ReadAs::of(caller, &self.shared).may_read(&sm.state, "", Some(who.as_str()))?;
            if action == Action::Read {
                match sm
                    .state
                    .read_allowed(&who, self.shared.admins.contains(&who), &res)
                {
                    Ok(policies) => Verdict::Allow {
                        policy_version: sm.state.policy_version(),
                        policies,
                    },
                    Err(denial) => Verdict::Deny(denial),
                }
            } else {
                sm.state.evaluate(
                    &who,
                    action,
                    &res,
                    &facts,
                    self.shared.entry_clock.now_ms(),
                    allow_without_policy,
                )
            }
        };
        Ok(Response::new(match verdict {
            Verdict::Allow {
                policy_version,
                policies,
            } => proto::TestPolicyResponse {
                decision: "allow".into(),
                policy_version,
                policies,
                ..Default::default()
            },
            Verdict::Deny(d) => proto::TestPolicyResponse {
                decision: "deny".into(),
                policy_version: d.policy_version,
                reason: d.reason.clone().unwrap_or_else(|| d.to_string()),
                policies: d.policies,
                approvals_needed: 0,
            },
            Verdict::Approval {
                needed,
                policy_version,
                policies,
            } => proto::TestPolicyResponse {
                decision: "approval".into(),
                policy_version,
                policies,
                reason: format!("needs {needed} distinct human approvals"),
                approvals_needed: needed,
            },
        }))
    }

    pub(super) async fn list_approvals_rpc(
        &self,
        caller: &Caller,
    ) -> Result<Response<proto::ListApprovalsResponse>, Status> {
        self.shared.confirm_for(caller).await?;
        let sm = self.shared.sm.read();
        let now = sm.state.policy_version();
        // Each request only to whoever asked, or may read its resource (issue 25 item 6).
        let reader = ReadAs::of(caller, &self.shared);
        if let ReadAs::Nobody(_) = reader {
            reader.may_read(&sm.state, "", None)?;
        }
        let pending = sm
            .state
            .pending_approvals()
            .filter(|p| {
                let owner = Some(p.principal.as_str());
                reader
                    .may_read(&sm.state, p.resource.as_str(), owner)
                    .is_ok()
            })
            .map(|p| convert::pending(&p, now))
            .collect();
        drop(sm);
        Ok(Response::new(proto::ListApprovalsResponse { pending }))
    }

    pub(super) async fn approve_rpc(
        &self,
        caller: Caller,
        r: proto::ApproveRequest,
    ) -> Result<Response<proto::ApproveResponse>, Status> {
        let by = caller.principal(&r.principal)?;
        let cmd = requests::approve(r, by)?;
        let progress = self
            .shared
            .propose_for(caller.wrap(cmd), model::Response::into_approve)
            .await?
            .map_err(|e| op_error(&e))?;
        // The approver sees what became of the request, not the agent's grant
        // certificate (proof of holding for a resource) or checkpoints.
        let outcome = match progress.outcome {
            Some(o) => {
                let mut answer = self.outcome(o)?;
                use proto::acquire_response::Outcome;
                match answer.outcome.as_mut() {
                    Some(Outcome::Granted(g)) => {
                        g.certificate.clear();
                        if let Some(lease) = g.lease.as_mut() {
                            lease.checkpoint = None;
                        }
                        if let Some(previous) = g.previous.as_mut() {
                            previous.checkpoint = None;
                        }
                    }
                    Some(Outcome::AlreadyDone(done)) => {
                        if let Some(record) = done.record.as_mut() {
                            record.checkpoint = None;
                        }
                    }
                    _ => {}
                }
                Some(answer)
            }
            None => None,
        };
        let now = self.shared.sm.read().state.policy_version();
        Ok(Response::new(proto::ApproveResponse {
            pending: Some(convert::pending(&progress.pending, now)),
            outcome,
        }))
    }

    pub(super) async fn reject_rpc(
        &self,
        caller: Caller,
        r: proto::RejectRequest,
    ) -> Result<Response<proto::RejectResponse>, Status> {
        let by = caller.principal(&r.principal)?;
        let cmd = requests::reject(r, by)?;
        let view = self
            .shared
            .propose_for(caller.wrap(cmd), model::Response::into_reject)
            .await?
            .map_err(|e| op_error(&e))?;
        let now = self.shared.sm.read().state.policy_version();
        Ok(Response::new(proto::RejectResponse {
            rejected: Some(convert::pending(&view, now)),
        }))
    }

    /// Reading the audit is an admin action when callers are authenticated: Cedar (or the config's
    /// admins) decides in apply, and the read is audited, denials too. Members fetching records they
    /// lack after a snapshot (`audit_sync`) need no policy.
    pub(super) async fn authorize_audit_read(
        &self,
        caller: &Caller,
        detail: String,
    ) -> Result<(), Status> {
        let by = match &caller.identity {
            None => return Ok(()),
            // A member filling its audit gap; any other node certificate of the CA is refused.
            Some(Identity::Node(id)) => {
                let m = self
                    .shared
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .clone();
                if m.membership().get_node(id).is_some() {
                    return Ok(());
                }
                return Err(Status::permission_denied(format!(
                    "node/{id} is not a member of this cluster: only members read the audit with a \
                     node certificate"
                )));
            }
            Some(Identity::Principal(p)) => p.clone(),
        };
        self.shared
            .admin_check(caller, by, "audit_read", detail)
            .await
    }

    pub(super) async fn query_audit_rpc(
        &self,
        caller: Caller,
        r: proto::QueryAuditRequest,
    ) -> Result<Response<AuditStream>, Status> {
        let filter = AuditFilter {
            resource_prefix: if r.resource_prefix.is_empty() {
                None
            } else {
                Some(existing_resource(&r.resource_prefix)?.to_string())
            },
            principal: if r.principal.is_empty() {
                None
            } else {
                Some(principal(&r.principal)?.to_string())
            },
            decision: if r.decision.is_empty() {
                None
            } else {
                Some(AuditDecision::from_str(&r.decision).map_err(|_| {
                    Status::invalid_argument(format!(
                        "decision {:?} is not one of: {}",
                        r.decision,
                        AuditDecision::ALL.map(AuditDecision::as_str).join(", ")
                    ))
                })?)
            },
            since_ms: (r.since_ms > 0).then_some(r.since_ms),
            until_ms: (r.until_ms > 0).then_some(r.until_ms),
            via_token: if r.via_token.is_empty() {
                None
            } else {
                Some(super::tokens::token_id(&r.via_token)?.to_string())
            },
        };
        filter
            .validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let limit = match r.limit as usize {
            0 => DEFAULT_AUDIT_LIMIT,
            n => n.min(MAX_AUDIT_LIMIT),
        };
        self.audit_whole()?;
        self.authorize_audit_read(&caller, format!("query {filter:?}"))
            .await?;
        self.stream_audit(1, move |rec| filter.matches(rec), limit)
    }

    pub(super) async fn export_audit_rpc(
        &self,
        caller: Caller,
        r: proto::ExportAuditRequest,
    ) -> Result<Response<AuditStream>, Status> {
        let from = r.from_seq.max(1);
        self.audit_whole()?;
        self.authorize_audit_read(&caller, format!("export from record {from}"))
            .await?;
        self.stream_audit(from, |_| true, usize::MAX)
    }

    /// UNAVAILABLE while this node still fetches audit records it lacks after a snapshot install: it
    /// answers no audit read until its trail is whole (the client tries another node).
    fn audit_whole(&self) -> Result<(), Status> {
        match self.shared.audit.gap() {
            Ok(None) => Ok(()),
            Ok(Some(gap)) => Err(Status::unavailable(format!(
                "this node is still fetching audit records {}..={} from its peers after a snapshot; \
                 ask another node or retry shortly",
                gap.from, gap.to
            ))),
            Err(e) => Err(Status::internal(format!("reading the audit log: {e}"))),
        }
    }

    /// Stream audit records from `from_seq` that pass `keep`, at most `limit`, with bounded memory.
    fn stream_audit(
        &self,
        from_seq: u64,
        keep: impl Fn(&AuditRecord) -> bool + Send + 'static,
        limit: usize,
    ) -> Result<Response<AuditStream>, Status> {
        self.audit_whole()?;
        let (tx, rx) = mpsc::channel(256);
        let log = self.shared.audit.clone();
        // Stop at the head the state accounts for now: records past it may still be written.
        let head = self.shared.sm.read().state.audit_chain().len();
        tokio::task::spawn_blocking(move || {
            let mut sent = 0;
            for rec in log.iter_from(from_seq) {
                let item = match rec {
                    Ok(rec) if rec.seq > head => break,
                    Ok(rec) if !keep(&rec) => continue,
                    Ok(rec) => Ok(crate::audit::wire::to_proto(&rec)),
                    Err(e) => Err(Status::internal(format!("reading the audit log: {e}"))),
                };
                let failed = item.is_err();
                // The client went away: stop reading.
                if tx.blocking_send(item).is_err() || failed {
                    break;
                }
                sent += 1;
                if sent >= limit {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// Verify this node's whole audit log: an audit read (authorized and audited like an export),
    /// and one at a time per node, since each reads every record from disk.
    pub(super) async fn verify_audit_rpc(
        &self,
        caller: Caller,
    ) -> Result<Response<proto::VerifyAuditResponse>, Status> {
        self.audit_whole()?;
        // Authorized first: a caller refused must not hold the one place while it is refused.
        self.authorize_audit_read(&caller, "verify the audit log".into())
            .await?;
        let _one = self.shared.verifying.try_acquire().map_err(|_| {
            Status::resource_exhausted(
                "an audit verification is already running on this node; retry when it ends",
            )
        })?;
        let chain = self.shared.sm.read().state.audit_chain().clone();
        let log = self.shared.audit.clone();
        let len = chain.len();
        // A corrupt record is a break in the report; a failed disk read is an error, not a break.
        let report = tokio::task::spawn_blocking(move || log.verify_range(1, len))
            .await
            .map_err(|e| Status::internal(format!("verification task failed: {e}")))?
            .map_err(|e| Status::internal(format!("reading the audit log: {e}")))?;
        let complete = report.matches_chain(&chain);
        let (broken_seq, broken_reason) = match &report.broken {
            Some(b) => (b.seq.unwrap_or(b.position), b.reason.to_string()),
            None if !complete => (
                report.last_seq + 1,
                format!(
                    "the log ends at record {} but the replicated chain head is record {}",
                    report.last_seq, len
                ),
            ),
            None => (0, String::new()),
        };
        Ok(Response::new(proto::VerifyAuditResponse {
            checked: report.verified,
            head: if report.verified == 0 {
                String::new()
            } else {
                hex::encode(report.head)
            },
            ok: complete,
            broken_seq,
            broken_reason,
            expected_len: len,
            expected_head: if len == 0 {
                String::new()
            } else {
                hex::encode(chain.head())
            },
        }))
    }
}
