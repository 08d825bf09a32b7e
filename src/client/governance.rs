//! The governance calls: the cluster's Cedar policy set, and human approval of the acquisitions
//! policy sends to approval.
//!
//! Like every call they go through the client's leader discovery and retries. Changes (putting a
//! policy, approving, rejecting) are made by the leader through the Raft log, so a retry after a
//! lost answer is answered from the replicated state: approving twice counts once, rejecting an
//! already-decided request is refused with a message saying so.

use std::time::Duration;

use super::{millis, Client, ClientError, ATTEMPT_TIMEOUT};
use crate::model::Principal;
use crate::policy::Action;
use crate::proto;

/// A question for [`Client::test_policy`]: what would the cluster decide now if `principal` asked
/// to do `action` on `resource`, in this context?
#[derive(Debug, Clone)]
pub struct PolicyTest {
    /// Whose request is evaluated (not necessarily the caller).
    pub principal: Principal,
    /// What it asks to do.
    pub action: Action,
    /// The resource path; ignored for [`Action::Admin`].
    pub resource: String,
    /// Requested time to live (`context.ttl_ms`); `None` is 0.
    pub ttl: Option<Duration>,
    /// Intent sentence (`context.intent`).
    pub intent: String,
    /// Intent labels K:V (`context.labels`).
    pub labels: Vec<(String, String)>,
    /// Whether the request would carry a task key (`context.has_task_key`).
    pub has_task_key: bool,
}

impl PolicyTest {
    /// A question with an empty context (no ttl, intent, labels or task key).
    pub fn new(principal: Principal, action: Action, resource: &str) -> Self {
        Self {
            principal,
            action,
            resource: resource.to_string(),
            ttl: None,
            intent: String::new(),
            labels: Vec::new(),
            has_task_key: false,
        }
    }
}

impl Client {
    /// Replace the cluster's active Cedar policy set, with an optional Cedar JSON entities file
    /// (group membership) and intent-conflict window (`None`: the cluster's default, 10 minutes).
    /// Returns the new version. A set Cedar or the schema rejects is
    /// [`ClientError::Invalid`] with Cedar's message, and changes nothing. The caller must be
    /// permitted Cedar `admin`, or be one of the config's `admins` (break-glass); audited either way.
    pub async fn put_policy(
        &self,
        policies: &str,
        entities: Option<&str>,
        intent_window: Option<Duration>,
    ) -> Result<u64, ClientError> {
        let req = proto::PutPolicyRequest {
            policies: policies.to_string(),
            entities: entities.unwrap_or_default().to_string(),
            intent_window_ms: millis(intent_window),
            principal: self.inner.config.principal.to_string(),
        };
        let resp = self
            .call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
                let req = req.clone();
                async move { c.put_policy(req).await }
            })
            .await?;
        Ok(resp.version)
    }

    /// The active policy set: its version (0 when none is loaded and the cluster's
    /// `default_decision` applies), texts, intent window and default decision.
    pub async fn get_policy(&self) -> Result<proto::GetPolicyResponse, ClientError> {
        self.call(
            self.inner.config.call_timeout,
            ATTEMPT_TIMEOUT,
            |mut c| async move { c.get_policy(proto::GetPolicyRequest {}).await },
        )
        .await
    }

    /// What the cluster would decide now for `test`, and why: `allow`, `deny` or `approval`, the
    /// determining policies, the `@reason` of a deny and the approvals needed. Changes nothing and
    /// is not audited.
    pub async fn test_policy(
        &self,
        test: &PolicyTest,
    ) -> Result<proto::TestPolicyResponse, ClientError> {
        let req = proto::TestPolicyRequest {
            principal: test.principal.to_string(),
            action: test.action.as_str().to_string(),
            resource: test.resource.clone(),
            ttl_ms: millis(test.ttl),
            intent: Some(proto::Intent {
                text: test.intent.clone(),
                labels: test.labels.iter().cloned().collect(),
            }),
            has_task_key: test.has_task_key,
        };
        self.call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.test_policy(req).await }
        })
        .await
    }

    /// Acquisitions waiting for human approval, with the approvals each has so far.
    pub async fn list_approvals(&self) -> Result<Vec<proto::PendingApproval>, ClientError> {
        let resp = self
            .call(
                self.inner.config.call_timeout,
                ATTEMPT_TIMEOUT,
                |mut c| async move { c.list_approvals(proto::ListApprovalsRequest {}).await },
            )
            .await?;
        Ok(resp.pending)
    }

    /// Approve a pending acquisition as this client's principal, with an optional comment
    /// (≤ 1024 bytes). The answer's `pending` shows the approvals so far; `outcome` is set when this
    /// approval reached the quorum and says what the requester got (the grant, with a fresh token;
    /// the requester, not the approver, holds it). The requester cannot approve its own request, an
    /// approver must be permitted Cedar `approve` on the resource, and the same approver counts once.
    ///
    /// This approves whatever the request is when the cluster applies it; a human deciding on
    /// what they were shown uses [`Client::approve_seen`].
    pub async fn approve(
        &self,
        request_id: &str,
        comment: &str,
    ) -> Result<proto::ApproveResponse, ClientError> {
        self.approve_seen(request_id, comment, "", 0).await
    }

    /// [`Client::approve`] of exactly the request the human was shown: `digest` and
    /// `policy_version` are the shown `PendingApproval`'s `digest` and `policy_version_now`.
    /// Refused (FAILED_PRECONDITION, nothing counted) when the request or the policy in force
    /// changed since.
    pub async fn approve_seen(
        &self,
        request_id: &str,
        comment: &str,
        digest: &str,
        policy_version: u64,
    ) -> Result<proto::ApproveResponse, ClientError> {
        let req = proto::ApproveRequest {
            request_id: request_id.to_string(),
            comment: comment.to_string(),
            principal: self.inner.config.principal.to_string(),
            digest: digest.to_string(),
            policy_version,
        };
        self.call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
            let req = req.clone();
            async move { c.approve(req).await }
        })
        .await
    }

    /// Reject a pending acquisition as this client's principal, with a required reason
    /// (≤ 1024 bytes): the request ends at once and its requester gets `not_approved`. Returns the
    /// request as it was rejected.
    pub async fn reject(
        &self,
        request_id: &str,
        reason: &str,
    ) -> Result<proto::PendingApproval, ClientError> {
        self.reject_seen(request_id, reason, "", 0).await
    }

    /// [`Client::reject`] of exactly the request the human was shown (as
    /// [`Client::approve_seen`]).
    pub async fn reject_seen(
        &self,
        request_id: &str,
        reason: &str,
        digest: &str,
        policy_version: u64,
    ) -> Result<proto::PendingApproval, ClientError> {
        let req = proto::RejectRequest {
            request_id: request_id.to_string(),
            reason: reason.to_string(),
            principal: self.inner.config.principal.to_string(),
            digest: digest.to_string(),
            policy_version,
        };
        let resp = self
            .call(self.inner.config.call_timeout, ATTEMPT_TIMEOUT, |mut c| {
                let req = req.clone();
                async move { c.reject(req).await }
            })
            .await?;
        resp.rejected.ok_or_else(|| ClientError::Server {
            code: tonic::Code::Internal,
            message: "server answered a rejection without the rejected request".into(),
        })
    }
}
