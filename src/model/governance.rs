//! The governance plane inside the state machine: the policy decision on every acquisition (and on
//! takeover, release, checkpoint, revoke and approve), pending human approvals, and policy changes.
//!
//! Invariants kept here:
//! - a decision is a pure function of the state and the entry: Cedar is evaluated in apply with the
//!   entry's time, so every replica decides the same; deny wins;
//! - with no policy loaded, acquisitions follow the default decision stamped into the entry, and only
//!   the config's admins may revoke or put policy;
//! - policy is asked again whenever a request that waited is about to be granted (an approval's
//!   quorum, a queued waiter's turn): a deny that appeared meanwhile wins;
//! - a holder can always release; checkpoints are refused only by an explicit forbid;
//! - an approval is bound to its exact request (the stored `AcquireCmd`: resource, principal,
//!   instance, ttl, intent) and to the policy version it was evaluated under; a policy change that
//!   would now deny it cancels it;
//! - approvers are distinct, never the requester, and each is permitted `approve` on the resource;
//! - the grant that follows a quorum happens in the same apply, with a fresh token.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;

use sha2::{Digest, Sha256};

use super::command::{
    AcquireCmd, AcquireOutcome, ApprovalProgress, Effects, Event, NotApproved, Pending, PendingView,
};
use super::error::{Denial, OpError};
use super::state::State;
use super::types::{Intent, Principal, PrincipalKind, RequestId};
use crate::audit::{AuditDecision, AuditEntry};
use crate::policy::{Action, Decision, PolicyBundle, Query, DEFAULT_INTENT_WINDOW_MS};

/// At most this many acquisitions wait for approval at once; more are refused.
pub const MAX_PENDING_APPROVALS: usize = 10_000;
/// At most this many recent labelled grants are remembered for intent-conflict policies.
pub const MAX_RECENT_INTENTS: usize = 100_000;
/// The resource `admin` decisions are made on (`Cluster::"warrant"` in Cedar).
pub(super) const CLUSTER_RESOURCE: &str = "";

impl Pending {
    fn view(&self) -> PendingView {
        PendingView {
            request_id: self.cmd.request_id.clone(),
            resource: self.cmd.resource.clone(),
            principal: self.cmd.principal.clone(),
            instance: self.cmd.instance.clone(),
            ttl_ms: self.cmd.ttl_ms,
            intent: self.cmd.intent.clone(),
            needed: self.needed,
            approvers: self.approvers.clone(),
            created_at_ms: self.created_ms,
            expires_at_ms: self.expires_ms,
            policy_version: self.policy_version,
            policies: self.policies.clone(),
        }
    }
}

pub use super::command::Verdict;

/// The facts about a request that policy sees besides principal, action and resource.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub ttl_ms: u64,
    pub intent: &'a Intent,
    pub has_task_key: bool,
    pub takeover: bool,
}

impl<'a> Facts<'a> {
    /// What policy sees about an action on a live lease (release, checkpoint, revoke).
    pub fn of_lease(lease: &'a super::types::Lease) -> Self {
        Self {
            ttl_ms: lease.ttl_ms,
            intent: &lease.intent,
            has_task_key: lease.task_key.is_some(),
            takeover: false,
        }
    }

    pub fn of(cmd: &'a AcquireCmd) -> Self {
        Self {
            ttl_ms: cmd.ttl_ms,
            intent: &cmd.intent,
            has_task_key: cmd.task_key.is_some(),
            takeover: cmd.takeover,
        }
    }
}

impl State {
    // ---- queries -------------------------------------------------------------------------------

    /// The active policy set, if one was put.
    pub fn policy(&self) -> Option<&PolicyBundle> {
        self.policy.as_ref()
    }

    /// The active policy version; 0 when none is loaded.
    pub fn policy_version(&self) -> u64 {
        self.policy.as_ref().map_or(0, PolicyBundle::version)
    }

    /// Pending approvals in request-id order.
    pub fn pending_approvals(&self) -> impl Iterator<Item = PendingView> + '_ {
        self.pending.values().map(Pending::view)
    }

    /// Pending approvals whose time ran out by `now_ms` (the leader proposes their expiry).
    pub fn approvals_due(&self, now_ms: u64) -> Vec<RequestId> {
        self.pending
            .values()
            .filter(|p| p.expires_ms <= now_ms)
            .map(|p| p.cmd.request_id.clone())
            .collect()
    }

    /// What policy decides for `principal` doing `action` on `resource` at `now_ms`, with the state's
    /// recent intents: the answer `warrant policy test` shows.
    pub fn evaluate(
        &self,
        principal: &Principal,
        action: Action,
        resource: &str,
        facts: &Facts<'_>,
        now_ms: u64,
        allow_without_policy: bool,
    ) -> Verdict {
        let Some(policy) = &self.policy else {
            return if allow_without_policy {
                Verdict::Allow {
                    policy_version: 0,
                    policies: Vec::new(),
                }
            } else {
                Verdict::Deny(Denial {
                    action: action.as_str().to_owned(),
                    policy_version: 0,
                    policies: Vec::new(),
                    reason: None,
                })
            };
        };
        let recent = if matches!(action, Action::Admin | Action::Read) {
            BTreeSet::new()
        } else {
            self.recent_labels(resource, now_ms, policy.intent_window_ms())
        };
        let query = Query {
            principal: principal.as_str(),
            action,
            resource,
            ttl_ms: facts.ttl_ms,
            intent: facts.intent.text(),
            labels: facts.intent.labels(),
            has_task_key: facts.has_task_key,
            takeover: facts.takeover,
            now_ms,
            recent_labels: &recent,
        };
        let policy_version = policy.version();
        match policy.evaluate(&query) {
            Decision::Allow { policies } => Verdict::Allow {
                policy_version,
                policies,
            },
            Decision::Deny { policies, reason } => Verdict::Deny(Denial {
                action: action.as_str().to_owned(),
                policy_version,
                policies,
                reason,
            }),
            Decision::NeedsApproval {
                approvals,
                policies,
            } => Verdict::Approval {
                needed: approvals,
                policy_version,
                policies,
            },
        }
    }

    /// The decision on an acquire (action `takeover` when it asks to take over).
    pub(super) fn acquire_verdict(&self, cmd: &AcquireCmd, now_ms: u64) -> Verdict {
        let action = if cmd.takeover {
            Action::Takeover
        } else {
            Action::Acquire
        };
        self.evaluate(
            &cmd.principal,
            action,
            cmd.resource.as_str(),
            &Facts::of(cmd),
            now_ms,
            cmd.defaults.allow_without_policy,
        )
    }

    /// Checkpoints belong to the holder by its grant: refused only when a `forbid` explicitly
    /// matches, never by Cedar's default deny (a policy written for acquisitions must not stop the
    /// holders it granted). Release is never refused at all (`release.rs`).
    pub(super) fn holder_action_allowed(
        &self,
        principal: &Principal,
        action: Action,
        lease: &super::types::Lease,
    ) -> Result<(), OpError> {
        match self.evaluate(
            principal,
            action,
            lease.resource.as_str(),
            &Facts::of_lease(lease),
            self.now_ms,
            true,
        ) {
            Verdict::Deny(denial) if !denial.policies.is_empty() => Err(OpError::Denied(denial)),
            _ => Ok(()),
        }
    }

    /// Revocation: Cedar decides when a policy is loaded; without one, only the config's admins.
    pub(super) fn revoke_allowed(
        &self,
        by: &Principal,
        by_admin: bool,
        lease: &super::types::Lease,
    ) -> Result<(), OpError> {
        match self.evaluate(
            by,
            Action::Revoke,
            lease.resource.as_str(),
            &Facts::of_lease(lease),
            self.now_ms,
            by_admin,
        ) {
            Verdict::Deny(denial) => Err(OpError::Denied(denial)),
            _ => Ok(()),
        }
    }

    // ---- pending approvals ---------------------------------------------------------------------

    /// Park `cmd` until `needed` humans approve it or its time runs out.
    pub(super) fn open_approval(
        &mut self,
        cmd: &AcquireCmd,
        needed: u32,
        policy_version: u64,
        policies: Vec<String>,
    ) -> AcquireOutcome {
        if self.pending.len() >= MAX_PENDING_APPROVALS {
            return AcquireOutcome::Rejected(OpError::TooManyPending {
                max: MAX_PENDING_APPROVALS,
            });
        }
        let pending = Pending {
            cmd: cmd.clone(),
            needed,
            approvers: Vec::new(),
            created_ms: self.now_ms,
            expires_ms: self.now_ms.saturating_add(cmd.defaults.approval_timeout_ms),
            policy_version,
            policies,
        };
        let view = pending.view();
        self.pending.insert(cmd.request_id.clone(), pending);
        AcquireOutcome::PendingApproval(view)
    }

    /// Before an approve or reject that names what the human saw (`digest` under policy
    /// `seen`): the pending request, under the policy in force now, must digest the same. A
    /// request that is not pending passes, for `approve`/`reject` to refuse with their reason.
    pub(super) fn decide_seen(
        &mut self,
        action: &str,
        id: &RequestId,
        by: &Principal,
        digest: &str,
        seen: u64,
        fx: &mut Effects,
    ) -> Result<(), OpError> {
        // Only humans decide, whatever the policy says (checked by the server for every approval,
        // and here for the commands that carry what the human saw, which only builds with this
        // rule write).
        if by.kind() != PrincipalKind::Human {
            let e = OpError::NotHuman { by: by.clone() };
            self.audit_refusal(action, id, by, &e, fx);
            return Err(e);
        }
        let Some(pending) = self.pending.get(id) else {
            return Ok(());
        };
        let now = self.policy_version();
        let view = pending.view();
        if view.digest(now) == digest {
            return Ok(());
        }
        let what_now = if now != seen {
            format!("under policy version {now}")
        } else {
            format!(
                "a request of {} for {} (ttl {} ms, opened at {})",
                view.principal, view.resource, view.ttl_ms, view.created_at_ms
            )
        };
        let e = OpError::ChangedSinceSeen {
            request_id: id.clone(),
            seen,
            what_now,
        };
        self.audit_refusal(action, id, by, &e, fx);
        Err(e)
    }

    pub(super) fn approve(
        &mut self,
        id: &RequestId,
        by: &Principal,
        comment: &str,
        fx: &mut Effects,
    ) -> Result<ApprovalProgress, OpError> {
        let result = self.try_approve(id, by, comment, fx);
        if let Err(e) = &result {
            self.audit_refusal("approve", id, by, e, fx);
        }
        result
    }

    fn try_approve(
        &mut self,
        id: &RequestId,
        by: &Principal,
        comment: &str,
        fx: &mut Effects,
    ) -> Result<ApprovalProgress, OpError> {
        self.check_approver(id, by, fx)?;
        let Some(pending) = self.pending.get_mut(id) else {
            return Err(self.not_pending(id));
        };
        if pending.approvers.iter().any(|(a, _)| a == by) {
            return Err(OpError::AlreadyApproved {
                request_id: id.clone(),
                by: by.clone(),
            });
        }
        pending.approvers.push((by.clone(), comment.to_owned()));
        let reached = pending.approvers.len() >= pending.needed as usize;
        let view = pending.view();
        let mut entry = self.pending_entry(&view, "approve", AuditDecision::Approved);
        entry.principal = by.to_string();
        entry.instance = String::new();
        entry.reason = comment.to_owned();
        self.audit(fx, entry);

        if !reached {
            self.update_request(id, AcquireOutcome::PendingApproval(view.clone()));
            return Ok(ApprovalProgress {
                pending: view,
                outcome: None,
            });
        }

        // Quorum: the request proceeds in this same apply. If the resource is held it queues for
        // what is left of the approval's time, so the humans' decision is not wasted on a busy answer.
        let Some(pending) = self.pending.remove(id) else {
            return Err(self.not_pending(id));
        };
        // Policy is asked again now: time-of-day rules and intent conflicts may have changed since
        // the request opened, and the humans' approval does not override a deny.
        if let Verdict::Deny(denial) = self.acquire_verdict(&pending.cmd, self.now_ms) {
            let why = NotApproved::Cancelled {
                reason: denial.to_string(),
            };
            self.end_approval(&view, why.clone(), fx);
            return Ok(ApprovalProgress {
                pending: view,
                outcome: Some(AcquireOutcome::NotApproved(why)),
            });
        }
        let entry = self.pending_entry(&view, "approve", AuditDecision::ApprovalGranted);
        self.audit(fx, entry);
        let remaining = pending.expires_ms.saturating_sub(self.now_ms).max(1);
        let outcome = self.decide_acquire(&pending.cmd, Some(remaining), None, fx);
        self.update_request(id, outcome.clone());
        if !matches!(
            outcome,
            AcquireOutcome::Granted(_) | AcquireOutcome::Queued { .. }
        ) {
            fx.events.push(Event::WaiterEnded {
                request_id: id.clone(),
            });
        }
        let approvers = view.approvers.iter().map(|(a, _)| a.to_string()).collect();
        self.audit_acquire(&pending.cmd, &outcome, pending.policies, approvers, fx);
        Ok(ApprovalProgress {
            pending: view,
            outcome: Some(outcome),
        })
    }

    pub(super) fn reject(
        &mut self,
        id: &RequestId,
        by: &Principal,
        reason: &str,
        fx: &mut Effects,
    ) -> Result<PendingView, OpError> {
        if let Err(e) = self.check_approver(id, by, fx) {
            self.audit_refusal("reject", id, by, &e, fx);
            return Err(e);
        }
        let Some(pending) = self.pending.remove(id) else {
            return Err(self.not_pending(id));
        };
        let view = pending.view();
        self.end_approval(
            &view,
            NotApproved::Rejected {
                by: by.clone(),
                reason: reason.to_owned(),
            },
            fx,
        );
        Ok(view)
    }

    /// Expire the given pending approvals whose time has run out by entry time; others are ignored
    /// (the leader's clock may be ahead of the entry's).
    pub(super) fn expire_approvals(
        &mut self,
        ids: &[RequestId],
        fx: &mut Effects,
    ) -> Vec<RequestId> {
        let mut expired = Vec::new();
        for id in ids {
            if self
                .pending
                .get(id)
                .is_some_and(|p| p.expires_ms <= self.now_ms)
            {
                if let Some(p) = self.pending.remove(id) {
                    self.end_approval(&p.view(), NotApproved::Expired, fx);
                    expired.push(id.clone());
                }
            }
        }
        expired
    }

    /// The requester withdraws a pending request (its wait for humans is over); no-op if not pending.
    pub(super) fn withdraw_approval(&mut self, id: &RequestId, fx: &mut Effects) {
        if let Some(p) = self.pending.remove(id) {
            let why = NotApproved::Cancelled {
                reason: "withdrawn by the requester".to_owned(),
            };
            self.end_approval(&p.view(), why, fx);
        }
    }

    /// A pending request ends without a grant: record its final answer, wake its waiter, audit it.
    fn end_approval(&mut self, view: &PendingView, why: NotApproved, fx: &mut Effects) {
        let (decision, principal, reason) = match &why {
            NotApproved::Rejected { by, reason } => {
                (AuditDecision::Rejected, by.to_string(), reason.clone())
            }
            NotApproved::Expired => (
                AuditDecision::ApprovalExpired,
                view.principal.to_string(),
                why.to_string(),
            ),
            NotApproved::Cancelled { reason } => (
                AuditDecision::ApprovalCancelled,
                view.principal.to_string(),
                reason.clone(),
            ),
        };
        self.update_request(&view.request_id, AcquireOutcome::NotApproved(why));
        fx.events.push(Event::WaiterEnded {
            request_id: view.request_id.clone(),
        });
        let action = if decision == AuditDecision::Rejected {
            "reject"
        } else {
            "approve"
        };
        let mut entry = self.pending_entry(view, action, decision);
        entry.principal = principal;
        entry.reason = reason;
        self.audit(fx, entry);
    }

    /// The approver must be permitted `approve` on the resource, must not be the requester, and the
    /// request must still be pending (one past its time is expired here and now).
    fn check_approver(
        &mut self,
        id: &RequestId,
        by: &Principal,
        fx: &mut Effects,
    ) -> Result<(), OpError> {
        let Some(pending) = self.pending.get(id) else {
            return Err(self.not_pending(id));
        };
        if pending.expires_ms <= self.now_ms {
            if let Some(p) = self.pending.remove(id) {
                self.end_approval(&p.view(), NotApproved::Expired, fx);
            }
            return Err(self.not_pending(id));
        }
        if &pending.cmd.principal == by {
            return Err(OpError::OwnRequest {
                request_id: id.clone(),
                by: by.clone(),
            });
        }
        // An `@approval` annotation on an `approve` permit means nothing: permitted is permitted.
        match self.evaluate(
            by,
            Action::Approve,
            pending.cmd.resource.as_str(),
            &Facts::of(&pending.cmd),
            self.now_ms,
            false,
        ) {
            Verdict::Deny(denial) => Err(OpError::Denied(denial)),
            _ => Ok(()),
        }
    }

    fn not_pending(&self, id: &RequestId) -> OpError {
        match self.request(id).as_ref() {
            None => OpError::UnknownRequest {
                request_id: id.clone(),
            },
            Some(outcome) => OpError::NotPending {
                request_id: id.clone(),
                state: match outcome {
                    AcquireOutcome::Granted(g) => format!(
                        "it was granted (lease {}, token {})",
                        g.lease.lease_id, g.lease.token
                    ),
                    AcquireOutcome::Queued { .. } => {
                        "it was approved and waits for the resource".to_owned()
                    }
                    AcquireOutcome::NotApproved(why) => why.to_string(),
                    AcquireOutcome::Denied(d) => d.to_string(),
                    AcquireOutcome::Busy { .. } => "it was answered busy".to_owned(),
                    AcquireOutcome::AlreadyDone(_) => "its task is already done".to_owned(),
                    AcquireOutcome::WaitEnded => "its wait ended".to_owned(),
                    AcquireOutcome::Rejected(e) => e.to_string(),
                    AcquireOutcome::PendingApproval(_) => "it is pending".to_owned(),
                },
            },
        }
    }

    // ---- policy changes ------------------------------------------------------------------------

    /// Replace the active policy set. The config's admins may always (break-glass); otherwise Cedar
    /// must permit `admin`, and with no policy loaded nobody else may. A set that does not compile
    /// changes nothing. Pending approvals the new set would deny are cancelled.
    pub(super) fn put_policy(
        &mut self,
        by: &Principal,
        by_admin: bool,
        policies: &str,
        entities: Option<&str>,
        intent_window_ms: u64,
        fx: &mut Effects,
    ) -> Result<u64, OpError> {
        let digest = policy_digest(policies, entities);
        let mut refused = |state: &mut State, e: OpError, decision: AuditDecision| {
            let mut entry = AuditEntry::new("policy_put", decision);
            entry.principal = by.to_string();
            entry.reason = format!("{digest}: {e}");
            entry.policy_version = state.policy_version();
            if let OpError::Denied(d) = &e {
                entry.policies = d.policies.clone();
            }
            state.audit(fx, entry);
            Err(e)
        };
        if let Err(denial) = self.admin_allowed(by, by_admin) {
            return refused(self, OpError::Denied(denial), AuditDecision::Denied);
        }
        let version = self.policy_version().saturating_add(1);
        let bundle = match PolicyBundle::compile(version, policies, entities, intent_window_ms) {
            Ok(b) => b,
            Err(e) => {
                return refused(
                    self,
                    OpError::InvalidPolicy {
                        message: e.to_string(),
                    },
                    AuditDecision::PolicyRejected,
                )
            }
        };
        self.policy = Some(bundle);
        let mut entry = AuditEntry::new("policy_put", AuditDecision::PolicyPut);
        entry.principal = by.to_string();
        entry.reason = if by_admin {
            format!("{digest} (break-glass: config admin)")
        } else {
            digest
        };
        entry.policy_version = version;
        self.audit(fx, entry);

        // An approval is bound to the policy it was evaluated under: one the new set would deny
        // is cancelled (approvals already given do not carry over into a denial).
        let ids: Vec<RequestId> = self.pending.keys().cloned().collect();
        for id in ids {
            let Some(p) = self.pending.get(&id) else {
                continue;
            };
            let view = p.view();
            match self.acquire_verdict(&p.cmd, self.now_ms) {
                Verdict::Deny(denial) => {
                    self.pending.remove(&view.request_id);
                    self.end_approval(
                        &view,
                        NotApproved::Cancelled {
                            reason: denial.to_string(),
                        },
                        fx,
                    );
                }
                // Still (or no longer) needing approval: the new version's requirement applies
                // (never fewer approvals than asked for when it opened), and approvals from people
                // the new policy no longer permits to approve are dropped.
                verdict => {
                    let (needed, policies) = match verdict {
                        Verdict::Approval {
                            needed, policies, ..
                        } => (needed, policies),
                        Verdict::Allow { policies, .. } => (p.needed, policies),
                        Verdict::Deny(_) => unreachable!("handled above"),
                    };
                    let cmd = p.cmd.clone();
                    let approvers: Vec<(Principal, String)> = p
                        .approvers
                        .iter()
                        .filter(|(who, _)| {
                            !matches!(
                                self.evaluate(
                                    who,
                                    Action::Approve,
                                    cmd.resource.as_str(),
                                    &Facts::of(&cmd),
                                    self.now_ms,
                                    false,
                                ),
                                Verdict::Deny(_)
                            )
                        })
                        .cloned()
                        .collect();
                    if let Some(p) = self.pending.get_mut(&view.request_id) {
                        p.needed = needed.max(p.needed);
                        p.policy_version = version;
                        p.policies = policies;
                        p.approvers = approvers;
                        let now = AcquireOutcome::PendingApproval(p.view());
                        self.update_request(&view.request_id, now);
                    }
                }
            }
        }
        Ok(version)
    }

    // ---- recent intents ------------------------------------------------------------------------

    /// Remember a grant's intent labels for intent-conflict policies (unlabelled grants cost nothing).
    pub(super) fn remember_intent(&mut self, cmd: &AcquireCmd) {
        let labels = cmd.intent.labels();
        if labels.is_empty() {
            return;
        }
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        self.recent_intents
            .entry(cmd.resource.clone())
            .or_default()
            .push_back((self.now_ms, labels));
        self.recent_order
            .push_back((self.now_ms, cmd.resource.clone()));
    }

    /// Labels granted within `window_ms` before `now_ms` on `resource`, its ancestors and its
    /// descendants.
    fn recent_labels(&self, resource: &str, now_ms: u64, window_ms: u64) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if self.recent_intents.is_empty() {
            return out;
        }
        let since = now_ms.saturating_sub(window_ms);
        let mut add = |q: &VecDeque<(u64, Vec<String>)>| {
            for (at, labels) in q {
                if *at >= since {
                    out.extend(labels.iter().cloned());
                }
            }
        };
        let mut path = resource;
        loop {
            if let Some(q) = self.recent_intents.get(path) {
                add(q);
            }
            match path.rfind('/') {
                Some(i) => path = &path[..i],
                None => break,
            }
        }
        let below = format!("{resource}/");
        for (_, q) in self
            .recent_intents
            .range::<str, _>((Bound::Excluded(resource), Bound::Unbounded))
            .take_while(|(p, _)| p.as_str().starts_with(resource))
            .filter(|(p, _)| p.as_str().starts_with(&below))
        {
            add(q);
        }
        out
    }

    /// Forget labelled grants older than the intent window (or past the bound), oldest first. Each
    /// `recent_order` pair matches the front of its resource's queue, as both are pushed together.
    pub(super) fn evict_recent_intents(&mut self) {
        let window = self
            .policy
            .as_ref()
            .map_or(DEFAULT_INTENT_WINDOW_MS, PolicyBundle::intent_window_ms);
        let since = self.now_ms.saturating_sub(window);
        while let Some((at, _)) = self.recent_order.front() {
            if *at >= since && self.recent_order.len() <= MAX_RECENT_INTENTS {
                break;
            }
            let Some((_, path)) = self.recent_order.pop_front() else {
                break;
            };
            if let Some(q) = self.recent_intents.get_mut(&path) {
                q.pop_front();
                if q.is_empty() {
                    self.recent_intents.remove(&path);
                }
            }
        }
    }

    /// An audit entry describing a pending request.
    fn pending_entry(
        &self,
        view: &PendingView,
        action: &str,
        decision: AuditDecision,
    ) -> AuditEntry {
        let mut entry = AuditEntry::new(action, decision);
        entry.principal = view.principal.to_string();
        entry.instance = view.instance.to_string();
        entry.resource = view.resource.to_string();
        entry.request_id = view.request_id.to_string();
        entry.intent = view.intent.text().to_owned();
        entry.labels = view.intent.labels().clone();
        entry.policy_version = view.policy_version;
        entry.policies = view.policies.clone();
        entry.approvers = view.approvers.iter().map(|(a, _)| a.to_string()).collect();
        entry
    }

    /// Audit a refused approve/reject (nothing else changes).
    fn audit_refusal(
        &mut self,
        action: &str,
        id: &RequestId,
        by: &Principal,
        e: &OpError,
        fx: &mut Effects,
    ) {
        let decision = if matches!(e, OpError::Denied(_)) {
            AuditDecision::Denied
        } else {
            AuditDecision::Invalid
        };
        let mut entry = match self.pending.get(id) {
            Some(p) => self.pending_entry(&p.view(), action, decision),
            None => {
                let mut entry = AuditEntry::new(action, decision);
                entry.request_id = id.to_string();
                entry
            }
        };
        entry.principal = by.to_string();
        entry.instance = String::new();
        entry.reason = e.to_string();
        entry.policy_version = self.policy_version();
        if let OpError::Denied(d) = e {
            entry.policies = d.policies.clone();
        }
        self.audit(fx, entry);
    }
}

/// `sha256:HEX` of a policy set and its entities: names the exact text in the audit trail.
fn policy_digest(policies: &str, entities: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update((policies.len() as u64).to_be_bytes());
    h.update(policies.as_bytes());
    if let Some(e) = entities {
        h.update(e.as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::command::{AcquireOutcome, Command, Response};
    use super::super::testkit::{acq, res, rid, who, Harness};
    use super::*;
    use crate::audit::AuditRecord;

    const EXAMPLE: &str = include_str!("../../cluster/policies/example.cedar");
    const ENTITIES: &str = include_str!("../../cluster/policies/example.entities.json");
    /// A Wednesday, 10:00 UTC (2026-11-18), inside the example's working hours.
    const WEDNESDAY_10H: u64 = 1_794_996_000_000;

    fn with_example() -> Harness {
        let mut h = Harness::new();
        h.now_ms = WEDNESDAY_10H;
        assert_eq!(put(&mut h, "human/admin", true, EXAMPLE), Ok(1));
        h
    }

    fn put(h: &mut Harness, by: &str, by_admin: bool, text: &str) -> Result<u64, OpError> {
        match h.apply(Command::PutPolicy {
            by: who(by),
            by_admin,
            policies: text.to_owned(),
            entities: Some(ENTITIES.to_owned()),
            intent_window_ms: DEFAULT_INTENT_WINDOW_MS,
        }) {
            Response::PutPolicy(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn approve(h: &mut Harness, id: &str, by: &str) -> Result<Box<ApprovalProgress>, OpError> {
        match h.apply(Command::Approve {
            request_id: rid(id),
            by: who(by),
            comment: "lgtm".into(),
        }) {
            Response::Approve(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn reject(h: &mut Harness, id: &str, by: &str) -> Result<Box<PendingView>, OpError> {
        match h.apply(Command::Reject {
            request_id: rid(id),
            by: who(by),
            reason: "not during the freeze".into(),
        }) {
            Response::Reject(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn labelled(id: &str, resource: &str, principal: &str, labels: &[(&str, &str)]) -> AcquireCmd {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AcquireCmd {
            intent: Intent::new("scale web", labels).unwrap(),
            ..acq(id, resource, principal, "i1")
        }
    }

    fn pending_payments(h: &mut Harness) -> PendingView {
        match h.acquire(acq("pay", "k8s/prod/payments", "agent/deployer", "i1")) {
            AcquireOutcome::PendingApproval(p) => p,
            other => panic!("expected pending approval, got {other:?}"),
        }
    }

    /// Issue 25 item 7: one principal's requests waiting for humans are capped, so it cannot fill
    /// the cluster's table of pending approvals and lock out everyone else's.
    #[test]
    fn one_principal_cannot_fill_the_pending_approvals() {
        let mut h = with_example();
        let quotas = crate::model::Quotas {
            leases: 0,
            pending: 1,
            queued: 0,
        };
        let within =
            |h: &mut Harness, id: &str, principal: &str| match h.apply(Command::AcquireWithin {
                cmd: acq(id, "k8s/prod/payments", principal, "i1"),
                quotas,
            }) {
                Response::Acquire(o) => o,
                other => panic!("{other:?}"),
            };
        assert!(matches!(
            within(&mut h, "pay1", "agent/deployer"),
            AcquireOutcome::PendingApproval(_)
        ));
        match within(&mut h, "pay2", "agent/deployer") {
            AcquireOutcome::Rejected(e @ OpError::QuotaExceeded { .. }) => {
                assert!(
                    e.to_string().contains("limits.pending_per_principal"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            h.state.pending_approvals().count(),
            1,
            "nothing more is pending"
        );
        // Another principal still reaches the humans.
        assert!(matches!(
            within(&mut h, "pay3", "agent/other"),
            AcquireOutcome::PendingApproval(_)
        ));
        // A request waiting for humans counts as the lease it may become: approvals cannot carry
        // a principal past its lease quota.
        let one_lease = crate::model::Quotas {
            leases: 1,
            pending: 5,
            queued: 0,
        };
        match h.apply(Command::AcquireWithin {
            cmd: acq("pay4", "k8s/prod/payments", "agent/other", "i2"),
            quotas: one_lease,
        }) {
            Response::Acquire(AcquireOutcome::Rejected(e @ OpError::QuotaExceeded { .. })) => {
                assert!(e.to_string().contains("limits.leases_per_principal"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn without_policy_the_stamped_default_decides() {
        let mut h = Harness::new();
        let mut cmd = acq("r1", "a", "agent/x", "i1");
        cmd.defaults.allow_without_policy = false;
        match h.acquire(cmd) {
            AcquireOutcome::Denied(d) => {
                assert_eq!(d.policy_version, 0);
                assert!(d.to_string().contains("default_decision is deny"), "{d}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            h.acquire(acq("r2", "a", "agent/x", "i1")),
            AcquireOutcome::Granted(_)
        ));
    }

    #[test]
    fn only_admins_put_the_first_policy_and_a_bad_one_changes_nothing() {
        let mut h = Harness::new();
        assert!(matches!(
            put(&mut h, "agent/x", false, EXAMPLE),
            Err(OpError::Denied(_))
        ));
        assert_eq!(h.state.policy_version(), 0);
        assert_eq!(h.audit[0].entry.decision, AuditDecision::Denied);
        assert_eq!(put(&mut h, "human/admin", true, EXAMPLE), Ok(1));
        let err = put(
            &mut h,
            "human/admin",
            true,
            "permit(principal, action, resource) when { nonsense };",
        )
        .unwrap_err();
        assert!(matches!(err, OpError::InvalidPolicy { .. }), "{err}");
        assert_eq!(h.state.policy_version(), 1, "a bad policy changes nothing");
        assert_eq!(h.audit[0].entry.decision, AuditDecision::PolicyRejected);
        // With a policy loaded, Cedar's `admin` decides for non-admins.
        assert_eq!(put(&mut h, "human/root", false, EXAMPLE), Ok(2));
        assert!(matches!(
            put(&mut h, "human/alice", false, EXAMPLE),
            Err(OpError::Denied(_))
        ));
    }

    #[test]
    fn a_denial_names_the_policy_and_its_reason() {
        let mut h = with_example();
        let mut cmd = acq("long", "k8s/prod/web", "agent/deployer", "i1");
        cmd.ttl_ms = 20 * 60_000;
        match h.acquire(cmd) {
            AcquireOutcome::Denied(d) => {
                assert_eq!(d.policies, vec!["prod-max-15-minutes".to_string()]);
                assert_eq!(d.policy_version, 1);
                assert!(d.reason.unwrap().contains("15 minutes"));
            }
            other => panic!("{other:?}"),
        }
        let record = &h.audit[0];
        assert_eq!(record.entry.decision, AuditDecision::Denied);
        assert_eq!(
            record.entry.policies,
            vec!["prod-max-15-minutes".to_string()]
        );
        // A denial changed nothing, so it is not kept (a denied caller cannot fill the request
        // table): a retry is decided again, the same denial, audited again.
        let mut retry = acq("long", "k8s/prod/web", "agent/deployer", "i1");
        retry.ttl_ms = 20 * 60_000;
        assert!(matches!(h.acquire(retry), AcquireOutcome::Denied(_)));
        assert_eq!(h.audit.len(), 1);
        assert_eq!(h.audit[0].entry.decision, AuditDecision::Denied);
        assert_eq!(h.state.request_record_count(), 0);
    }

    #[test]
    fn two_distinct_oncall_humans_grant_in_the_same_apply() {
        let mut h = with_example();
        let p = pending_payments(&mut h);
        assert_eq!(p.needed, 2);
        assert!(p.policies.contains(&"prod-payments-two-humans".to_string()));
        assert!(h
            .state
            .resource(&res("k8s/prod/payments"))
            .and_then(|r| r.holder)
            .is_none());

        let first = approve(&mut h, "pay", "human/alice").unwrap();
        assert_eq!(first.pending.approvers.len(), 1);
        assert_eq!(first.outcome, None);
        assert!(matches!(
            approve(&mut h, "pay", "human/alice"),
            Err(OpError::AlreadyApproved { .. })
        ));
        assert!(matches!(
            approve(&mut h, "pay", "agent/deployer"),
            Err(OpError::OwnRequest { .. })
        ));
        assert!(
            matches!(approve(&mut h, "pay", "human/eve"), Err(OpError::Denied(_))),
            "eve is not on call"
        );
        let fence_before = h.state.resource(&res("k8s/prod/payments")).map(|r| r.fence);
        let done = approve(&mut h, "pay", "human/bob").unwrap();
        let Some(AcquireOutcome::Granted(g)) = done.outcome else {
            panic!("quorum should grant: {done:?}")
        };
        assert!(Some(g.lease.token) > fence_before);
        assert!(h.events.iter().any(|e| matches!(e, Event::Granted { .. })));
        let granted = h
            .audit
            .iter()
            .find(|r| r.entry.decision == AuditDecision::Granted)
            .unwrap();
        assert_eq!(granted.entry.approvers, vec!["human/alice", "human/bob"]);
        // The requester that did not wait learns it by retrying its request id.
        assert!(matches!(
            h.acquire(acq("pay", "k8s/prod/payments", "agent/deployer", "i1")),
            AcquireOutcome::Granted(g2) if g2 == g
        ));
        assert!(matches!(
            approve(&mut h, "pay", "human/carol"),
            Err(OpError::NotPending { .. })
        ));
    }

    fn approve_seen(
        h: &mut Harness,
        id: &str,
        by: &str,
        digest: &str,
        seen: u64,
    ) -> Result<Box<ApprovalProgress>, OpError> {
        match h.apply(Command::ApproveSeen {
            request_id: rid(id),
            by: who(by),
            comment: "lgtm".into(),
            digest: digest.into(),
            policy_version: seen,
        }) {
            Response::Approve(r) => r,
            other => panic!("{other:?}"),
        }
    }

    /// Issue 25 item 5: an agent never approves, whatever the policy permits; refused, audited, and
    /// nothing counted.
    #[test]
    fn an_agent_never_approves_or_rejects() {
        let mut h = with_example();
        let p = pending_payments(&mut h);
        let shown = p.digest(h.state.policy_version());
        let e = approve_seen(&mut h, "pay", "agent/other", &shown, 1).unwrap_err();
        assert_eq!(
            e,
            OpError::NotHuman {
                by: who("agent/other")
            }
        );
        assert_eq!(e.kind(), super::super::error::ErrorKind::PermissionDenied);
        assert_eq!(
            h.audit.last().unwrap().entry.decision,
            AuditDecision::Invalid
        );
        let rejected = h.apply(Command::RejectSeen {
            request_id: rid("pay"),
            by: who("agent/other"),
            reason: "no".into(),
            digest: shown,
            policy_version: 1,
        });
        assert!(
            matches!(rejected, Response::Reject(Err(OpError::NotHuman { .. }))),
            "{rejected:?}"
        );
        let still = h.state.pending_approvals().next().unwrap();
        assert!(still.approvers.is_empty(), "nothing counted");
    }

    #[test]
    fn an_approval_counts_only_for_the_request_and_policy_the_human_was_shown() {
        let mut h = with_example();
        let p = pending_payments(&mut h);
        let shown = p.digest(h.state.policy_version());
        assert_eq!(shown.len(), 32);
        // Alice saw it under version 1; the policy changes to version 2 before her approval.
        assert_eq!(put(&mut h, "human/admin", true, EXAMPLE), Ok(2));
        let e = approve_seen(&mut h, "pay", "human/alice", &shown, 1).unwrap_err();
        assert!(matches!(e, OpError::ChangedSinceSeen { .. }), "{e}");
        assert!(e.to_string().contains("policy version 2"), "{e}");
        assert_eq!(
            h.audit.last().unwrap().entry.decision,
            AuditDecision::Invalid
        );
        // Nothing counted; shown again (version 2), her approval counts.
        let listed = h.state.pending_approvals().next().unwrap();
        let again = listed.digest(h.state.policy_version());
        assert_ne!(again, shown);
        let first = approve_seen(&mut h, "pay", "human/alice", &again, 2).unwrap();
        assert_eq!(first.pending.approvers.len(), 1);
        // The same request id reopened on another resource after its record aged out is another
        // request: an approval of the first does not count for it.
        let mut other = listed.clone();
        other.resource = res("k8s/prod/ledger");
        assert_ne!(other.digest(2), again);
        // A plain Approve (an older client) still works as before.
        assert!(approve(&mut h, "pay", "human/bob")
            .unwrap()
            .outcome
            .is_some());
    }

    #[test]
    fn a_human_never_approves_their_own_request() {
        let mut h = with_example();
        assert!(matches!(
            h.acquire(acq("mine", "k8s/prod/auth", "human/alice", "i1")),
            AcquireOutcome::PendingApproval(_)
        ));
        assert!(matches!(
            approve(&mut h, "mine", "human/alice"),
            Err(OpError::OwnRequest { .. })
        ));
    }

    #[test]
    fn a_rejection_ends_the_request_and_wakes_its_waiter() {
        let mut h = with_example();
        pending_payments(&mut h);
        assert!(matches!(
            reject(&mut h, "pay", "human/eve"),
            Err(OpError::Denied(_))
        ));
        reject(&mut h, "pay", "human/alice").unwrap();
        assert!(h.events.contains(&Event::WaiterEnded {
            request_id: rid("pay")
        }));
        assert!(matches!(
            h.state.request(&rid("pay")),
            Some(AcquireOutcome::NotApproved(NotApproved::Rejected { .. }))
        ));
        assert!(matches!(
            approve(&mut h, "pay", "human/bob"),
            Err(OpError::NotPending { .. })
        ));
        assert_eq!(h.state.pending_approvals().count(), 0);
    }

    #[test]
    fn an_approval_expires_on_entry_time() {
        let mut h = with_example();
        let p = pending_payments(&mut h);
        h.now_ms = p.expires_at_ms - 1;
        assert_eq!(h.state.approvals_due(h.now_ms), Vec::<RequestId>::new());
        match h.apply(Command::ExpireApprovals {
            request_ids: vec![rid("pay")],
        }) {
            Response::ExpireApprovals { expired } => assert!(expired.is_empty(), "not yet"),
            other => panic!("{other:?}"),
        }
        h.now_ms = p.expires_at_ms;
        match h.apply(Command::ExpireApprovals {
            request_ids: vec![rid("pay")],
        }) {
            Response::ExpireApprovals { expired } => assert_eq!(expired, vec![rid("pay")]),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.audit[0].entry.decision, AuditDecision::ApprovalExpired);
        assert!(matches!(
            h.state.request(&rid("pay")),
            Some(AcquireOutcome::NotApproved(NotApproved::Expired))
        ));
    }

    #[test]
    fn an_approval_past_its_time_is_refused_even_before_the_leader_expires_it() {
        let mut h = with_example();
        let p = pending_payments(&mut h);
        approve(&mut h, "pay", "human/alice").unwrap();
        h.now_ms = p.expires_at_ms;
        assert!(matches!(
            approve(&mut h, "pay", "human/bob"),
            Err(OpError::NotPending { .. })
        ));
        assert!(h
            .state
            .resource(&res("k8s/prod/payments"))
            .and_then(|r| r.holder)
            .is_none());
    }

    #[test]
    fn a_policy_change_that_denies_a_pending_request_cancels_it() {
        let mut h = with_example();
        pending_payments(&mut h);
        approve(&mut h, "pay", "human/alice").unwrap();
        let stricter = format!(
            "{EXAMPLE}\n@id(\"payments-frozen\")\n@reason(\"payments is frozen for the audit\")\n\
             forbid (principal, action, resource in Resource::\"k8s/prod/payments\");"
        );
        assert_eq!(put(&mut h, "human/root", false, &stricter), Ok(2));
        match h.state.request(&rid("pay")) {
            Some(AcquireOutcome::NotApproved(NotApproved::Cancelled { reason })) => {
                assert!(reason.contains("frozen"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(h.events.contains(&Event::WaiterEnded {
            request_id: rid("pay")
        }));
        // A change that still allows it keeps it pending.
        let mut h = with_example();
        pending_payments(&mut h);
        assert_eq!(put(&mut h, "human/root", false, EXAMPLE), Ok(2));
        assert_eq!(h.state.pending_approvals().count(), 1);
    }

    #[test]
    fn an_approved_request_queues_behind_a_holder_for_the_rest_of_its_time() {
        // Someone holds payments already (granted before the policy existed).
        let mut h = Harness::new();
        h.now_ms = WEDNESDAY_10H;
        let holder = h.grant(acq("first", "k8s/prod/payments", "agent/other", "i9"));
        assert_eq!(put(&mut h, "human/admin", true, EXAMPLE), Ok(1));
        pending_payments(&mut h);
        approve(&mut h, "pay", "human/alice").unwrap();
        let done = approve(&mut h, "pay", "human/bob").unwrap();
        assert!(
            matches!(done.outcome, Some(AcquireOutcome::Queued { .. })),
            "{done:?}"
        );
        h.release(holder.lease.lease_id, "agent/other", None)
            .unwrap();
        assert!(matches!(
            h.state.request(&rid("pay")),
            Some(AcquireOutcome::Granted(g)) if g.lease.principal == who("agent/deployer")
        ));
    }

    #[test]
    fn opposite_scale_intents_conflict_within_the_window() {
        let mut h = with_example();
        let up = h.grant(labelled(
            "up",
            "k8s/staging/web",
            "agent/deployer",
            &[("scale", "up")],
        ));
        h.release(up.lease.lease_id, "agent/deployer", None)
            .unwrap();
        // The parent resource, a different agent, the opposite direction: refused.
        match h.acquire(labelled(
            "down",
            "k8s/staging",
            "agent/other",
            &[("scale", "down")],
        )) {
            AcquireOutcome::Denied(d) => {
                assert_eq!(
                    d.policies,
                    vec!["no-scale-against-recent-scale".to_string()]
                )
            }
            other => panic!("{other:?}"),
        }
        // The same direction is fine, and so is the opposite one once the window has passed.
        assert!(matches!(
            h.acquire(labelled(
                "up2",
                "k8s/staging/api",
                "agent/other",
                &[("scale", "up")]
            )),
            AcquireOutcome::Granted(_)
        ));
        h.advance(DEFAULT_INTENT_WINDOW_MS + 1);
        assert!(matches!(
            h.acquire(labelled(
                "down2",
                "k8s/staging/web",
                "agent/other",
                &[("scale", "down")]
            )),
            AcquireOutcome::Granted(_)
        ));
    }

    #[test]
    fn revoke_needs_admin_without_policy_and_cedar_with_one() {
        let mut h = Harness::new();
        h.now_ms = WEDNESDAY_10H;
        h.grant(acq("g", "k8s/prod/web", "agent/deployer", "i1"));
        let revoke = |h: &mut Harness, by: &str, by_admin: bool| match h.apply(Command::Revoke {
            target: super::super::command::RevokeTarget::Resource(res("k8s/prod/web")),
            by: who(by),
            reason: "incident".into(),
            by_admin,
        }) {
            Response::Revoke(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            revoke(&mut h, "agent/x", false),
            Err(OpError::Denied(_))
        ));
        assert_eq!(put(&mut h, "human/admin", true, EXAMPLE), Ok(1));
        assert!(
            matches!(revoke(&mut h, "agent/intern-bot", false), Err(OpError::Denied(d)) if d.policies == vec!["intern-bot-never-revokes".to_string()])
        );
        assert_eq!(h.audit[0].entry.decision, AuditDecision::Denied);
        assert!(revoke(&mut h, "human/alice", false).is_ok());
    }

    #[test]
    fn a_denied_request_is_never_answered_without_a_write() {
        let h = with_example();
        let mut cmd = acq("long", "k8s/prod/web", "agent/deployer", "i1");
        cmd.ttl_ms = 20 * 60_000;
        assert_eq!(h.state.answer_without_write(&cmd, h.now_ms), None);
        assert_eq!(
            h.state.answer_without_write(
                &acq("p", "k8s/prod/payments", "agent/deployer", "i1"),
                h.now_ms
            ),
            None
        );
    }

    #[test]
    fn the_audit_chain_covers_every_decision_and_survives_a_snapshot() {
        let mut h = with_example();
        let mut records: Vec<AuditRecord> = h.audit.clone();
        let mut run = |h: &mut Harness, cmd: Command| {
            h.apply(cmd);
            records.extend(h.audit.clone());
        };
        run(
            &mut h,
            Command::Acquire(acq("pay", "k8s/prod/payments", "agent/deployer", "i1")),
        );
        run(
            &mut h,
            Command::Approve {
                request_id: rid("pay"),
                by: who("human/alice"),
                comment: String::new(),
            },
        );
        run(
            &mut h,
            Command::Approve {
                request_id: rid("pay"),
                by: who("human/bob"),
                comment: String::new(),
            },
        );
        run(
            &mut h,
            Command::Acquire(acq("busy", "k8s/prod/payments", "agent/x", "i1")),
        );
        let back = State::from_snapshot(&h.state.to_snapshot()).unwrap();
        assert_eq!(back, h.state);
        let decisions: Vec<_> = records.iter().map(|r| r.entry.decision).collect();
        assert_eq!(
            decisions,
            vec![
                AuditDecision::PolicyPut,
                AuditDecision::PendingApproval,
                AuditDecision::Approved,
                AuditDecision::Approved,
                AuditDecision::ApprovalGranted,
                AuditDecision::Granted,
                AuditDecision::PendingApproval,
            ]
        );
        let report = crate::audit::verify(records.into_iter().map(Ok));
        assert!(report.matches_chain(h.state.audit_chain()), "{report}");
    }

    #[test]
    fn a_deny_that_appears_before_the_quorum_wins_over_the_humans() {
        let mut h = with_example();
        let up = labelled(
            "up",
            "k8s/prod/payments",
            "agent/deployer",
            &[("scale", "up")],
        );
        assert!(matches!(h.acquire(up), AcquireOutcome::PendingApproval(_)));
        // Meanwhile someone scales the whole of prod down (allowed at once).
        h.grant(labelled(
            "down",
            "k8s/prod",
            "agent/other",
            &[("scale", "down")],
        ));
        approve(&mut h, "up", "human/alice").unwrap();
        let done = approve(&mut h, "up", "human/bob").unwrap();
        assert!(
            matches!(done.outcome, Some(AcquireOutcome::NotApproved(NotApproved::Cancelled { ref reason })) if reason.contains("no-scale-against-recent-scale")),
            "{done:?}"
        );
        assert!(h
            .state
            .resource(&res("k8s/prod/payments"))
            .and_then(|r| r.holder)
            .is_none());
    }

    #[test]
    fn the_requester_withdraws_a_pending_request_by_cancelling_its_wait() {
        let mut h = with_example();
        pending_payments(&mut h);
        h.apply(Command::CancelWait {
            request_id: rid("pay"),
            principal: who("agent/deployer"),
        });
        assert!(matches!(
            h.state.request(&rid("pay")),
            Some(AcquireOutcome::NotApproved(NotApproved::Cancelled { .. }))
        ));
        assert_eq!(h.state.pending_approvals().count(), 0);
        assert!(matches!(
            approve(&mut h, "pay", "human/alice"),
            Err(OpError::NotPending { .. })
        ));
    }

    #[test]
    fn a_queued_waiter_is_denied_when_policy_changed_while_it_waited_and_holders_can_always_release(
    ) {
        let mut h = with_example();
        let holder = h.grant(acq("h", "k8s/staging/web", "agent/deployer", "i1"));
        let mut waiter = acq("w", "k8s/staging/web", "agent/other", "i2");
        waiter.wait_ms = Some(60_000);
        assert!(matches!(h.acquire(waiter), AcquireOutcome::Queued { .. }));
        let frozen = format!(
            "{EXAMPLE}\n@id(\"staging-frozen\")\n@reason(\"staging is frozen\")\n\
             forbid (principal, action, resource in Resource::\"k8s/staging\");"
        );
        assert_eq!(put(&mut h, "human/root", false, &frozen), Ok(2));
        // The freeze names every action, release included: the holder still gives its lease back.
        h.release(holder.lease.lease_id, "agent/deployer", None)
            .unwrap();
        assert!(matches!(
            h.state.request(&rid("w")),
            Some(AcquireOutcome::Denied(d)) if d.policies == vec!["staging-frozen".to_string()]
        ));
        assert!(h
            .state
            .resource(&res("k8s/staging/web"))
            .and_then(|r| r.holder)
            .is_none());
    }
}
