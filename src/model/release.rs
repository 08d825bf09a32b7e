//! Holder-driven and operator-driven changes to a live lease: `Release`, `Checkpoint` and `Revoke`.
//!
//! Invariants: only the holder's principal may release or checkpoint a lease; a checkpoint is
//! accepted only with the lease's current token (fenced progress) and at most `MAX_CHECKPOINT_BYTES`;
//! a retried release that already took effect answers the same success again (`already: true`)
//! instead of an error, so clients can retry blindly after a lost reply.

use super::command::{Effects, ReleaseOk, RevokeTarget};
use super::error::OpError;
use super::state::{RequestKey, RevokeRecord, State, MAX_REVOKE_RECORDS};
use super::types::{
    EndReason, FencingToken, Lease, LeaseId, Principal, ReleaseOutcome, RequestId,
    MAX_CHECKPOINT_BYTES,
};
use crate::audit::AuditDecision;
use crate::policy::Action;

impl State {
    pub(super) fn release(
        &mut self,
        id: LeaseId,
        principal: &Principal,
        outcome: Option<ReleaseOutcome>,
        fx: &mut Effects,
    ) -> Result<ReleaseOk, OpError> {
        let result = self.try_release(id, principal, outcome, fx);
        if let Err(e) = &result {
            let decision = refusal(e);
            let lease = self.leases.get(&id).cloned();
            self.audit_lease_op(
                lease.as_ref(),
                principal.as_str(),
                "release",
                decision,
                e.to_string(),
                fx,
            );
        }
        result
    }

    fn try_release(
        &mut self,
        id: LeaseId,
        principal: &Principal,
        outcome: Option<ReleaseOutcome>,
        fx: &mut Effects,
    ) -> Result<ReleaseOk, OpError> {
        let reason = match outcome {
            Some(ReleaseOutcome::Done) => EndReason::Done,
            Some(ReleaseOutcome::Failed) => EndReason::Failed,
            None => EndReason::Released,
        };
        if let Some(lease) = self.leases.get(&id) {
            if &lease.principal != principal {
                return Err(OpError::NotHolder {
                    lease_id: id,
                    holder: lease.principal.clone(),
                });
            }
            // Never refused by policy: a holder must always be able to give a lease back (a
            // forbid put after the grant would otherwise strand it while keepalives renew it).
            let lease = self
                .end_lease(id, reason.clone(), true, fx)
                .ok_or(OpError::UnknownLease(id))?;
            return Ok(ReleaseOk {
                lease,
                ended: reason,
                already: false,
            });
        }
        let ended = self.ended.get(&id).ok_or(OpError::UnknownLease(id))?;
        if &ended.lease.principal != principal {
            return Err(OpError::NotHolder {
                lease_id: id,
                holder: ended.lease.principal.clone(),
            });
        }
        if ended.reason == reason {
            // The retry of a release that already happened (its reply was lost): same answer.
            return Ok(ReleaseOk {
                lease: ended.lease.clone(),
                ended: reason,
                already: true,
            });
        }
        Err(OpError::LeaseEnded {
            lease_id: id,
            reason: ended.reason.clone(),
        })
    }

    pub(super) fn checkpoint(
        &mut self,
        id: LeaseId,
        principal: &Principal,
        token: FencingToken,
        data: &[u8],
        fx: &mut Effects,
    ) -> Result<(), OpError> {
        let result = self.try_checkpoint(id, principal, token, data);
        let (decision, reason) = match &result {
            Ok(()) => (AuditDecision::Checkpoint, format!("{} bytes", data.len())),
            Err(e) => (refusal(e), e.to_string()),
        };
        let lease = self.leases.get(&id).cloned();
        self.audit_lease_op(
            lease.as_ref(),
            principal.as_str(),
            "checkpoint",
            decision,
            reason,
            fx,
        );
        result
    }

    fn try_checkpoint(
        &mut self,
        id: LeaseId,
        principal: &Principal,
        token: FencingToken,
        data: &[u8],
    ) -> Result<(), OpError> {
        if let Some(lease) = self.leases.get(&id) {
            if &lease.principal == principal {
                self.holder_action_allowed(principal, Action::Checkpoint, lease)?;
            }
        }
        let Some(lease) = self.leases.get_mut(&id) else {
            return Err(self.not_live(id));
        };
        if &lease.principal != principal {
            return Err(OpError::NotHolder {
                lease_id: id,
                holder: lease.principal.clone(),
            });
        }
        if token != lease.token {
            return Err(OpError::StaleToken {
                given: token,
                current: lease.token,
            });
        }
        if data.len() > MAX_CHECKPOINT_BYTES {
            return Err(OpError::CheckpointTooLarge {
                size: data.len(),
                max: MAX_CHECKPOINT_BYTES,
            });
        }
        lease.checkpoint = Some(data.to_vec());
        Ok(())
    }

    pub(super) fn revoke(
        &mut self,
        target: &RevokeTarget,
        by: &Principal,
        reason: &str,
        by_admin: bool,
        fx: &mut Effects,
    ) -> Result<Lease, OpError> {
        let result = self.try_revoke(target, by, reason, by_admin, fx);
        if let Err(e) = &result {
            let lease = match target {
                RevokeTarget::Lease(id) => self.leases.get(id).cloned(),
                RevokeTarget::Resource(path) => self
                    .resources
                    .get(path)
                    .and_then(|r| r.holder)
                    .and_then(|id| self.leases.get(&id))
                    .cloned(),
            };
            let mut why = e.to_string();
            if let (None, RevokeTarget::Resource(path)) = (&lease, target) {
                why = format!("{path}: {why}");
            }
            self.audit_lease_op(lease.as_ref(), by.as_str(), "revoke", refusal(e), why, fx);
        }
        result
    }

    /// A revoke with a request id: the first answer is kept and given to every retry (same id,
    /// principal and target), so a retry after a lost answer never ends the next holder's lease.
    /// A denial changed nothing and is not kept (a refused caller cannot fill the table); the lease
    /// is kept without its checkpoint (at most 4 KiB that the answer does not need).
    pub(super) fn revoke_once(
        &mut self,
        request_id: &RequestId,
        target: &RevokeTarget,
        by: &Principal,
        reason: &str,
        by_admin: bool,
        fx: &mut Effects,
    ) -> Result<Lease, OpError> {
        let key = RequestKey::of(request_id);
        let refused = if let Some(rec) = self.revokes.get(&key) {
            if &rec.by == by && &rec.target == target {
                return rec.answer.clone();
            }
            OpError::RequestIdReused {
                request_id: request_id.clone(),
            }
        } else if self.revokes.len() >= MAX_REVOKE_RECORDS {
            OpError::RequestTableFull {
                max: MAX_REVOKE_RECORDS,
                min_age_s: self.record_min_age_ms() / 1000,
            }
        } else {
            let answer = self.revoke(target, by, reason, by_admin, fx);
            if !matches!(answer, Err(OpError::Denied(_))) {
                let kept = answer.clone().map(|mut lease| {
                    lease.checkpoint = None;
                    lease
                });
                let rec = RevokeRecord {
                    by: by.clone(),
                    target: target.clone(),
                    answer: kept,
                    updated_ms: self.now_ms,
                };
                self.revokes.insert(key, rec);
                self.revoke_order.push_back((self.now_ms, key));
            }
            return answer;
        };
        let why = match target {
            RevokeTarget::Resource(path) => format!("{path}: {refused}"),
            RevokeTarget::Lease(id) => format!("lease {id}: {refused}"),
        };
        self.audit_lease_op(None, by.as_str(), "revoke", refusal(&refused), why, fx);
        Err(refused)
    }

    fn try_revoke(
        &mut self,
        target: &RevokeTarget,
        by: &Principal,
        reason: &str,
        by_admin: bool,
        fx: &mut Effects,
    ) -> Result<Lease, OpError> {
        let id = match target {
            RevokeTarget::Lease(id) => {
                if !self.leases.contains_key(id) {
                    // A retry of a revoke that was applied (its answer lost to a timeout) answers
                    // as the first did; it never reaches whoever holds the resource now.
                    if let Some(ended) = self.ended.get(id) {
                        let same = EndReason::Revoked {
                            by: by.clone(),
                            reason: reason.to_owned(),
                        };
                        if ended.reason == same {
                            return Ok(ended.lease.clone());
                        }
                    }
                    return Err(self.not_live(*id));
                }
                *id
            }
            RevokeTarget::Resource(path) => self
                .resources
                .get(path)
                .and_then(|r| r.holder)
                .ok_or_else(|| OpError::NotHeld {
                    resource: path.clone(),
                })?,
        };
        if let Some(lease) = self.leases.get(&id) {
            self.revoke_allowed(by, by_admin, lease)?;
        }
        let reason = EndReason::Revoked {
            by: by.clone(),
            reason: reason.to_owned(),
        };
        self.end_lease(id, reason, true, fx)
            .ok_or(OpError::UnknownLease(id))
    }

    /// The error for a lease id that is not live: why it ended if we still know, else unknown.
    pub(super) fn not_live(&self, id: LeaseId) -> OpError {
        match self.ended.get(&id) {
            Some(e) => OpError::LeaseEnded {
                lease_id: id,
                reason: e.reason.clone(),
            },
            None => OpError::UnknownLease(id),
        }
    }
}

/// How a refused operation appears in the audit trail.
fn refusal(e: &OpError) -> AuditDecision {
    match e {
        OpError::Denied(_) => AuditDecision::Denied,
        _ => AuditDecision::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::{AcquireCmd, AcquireOutcome, Command, Event, Response};
    use super::super::error::OpError;
    use super::super::state::FenceStatus;
    use super::super::testkit::{acq, res, rid, who, Harness};
    use super::super::types::{EndReason, FencingToken, LeaseId, ReleaseOutcome};
    use super::{RevokeTarget, MAX_CHECKPOINT_BYTES};

    #[test]
    fn release_raises_fence_so_old_token_is_stale() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        assert_eq!(
            h.state.check_fence(&res("a"), g.lease.token),
            FenceStatus::Current
        );
        let ok = h.release(g.lease.lease_id, "agent/x", None).unwrap();
        assert_eq!(ok.ended, EndReason::Released);
        assert!(!ok.already);
        assert_eq!(ok.lease, g.lease);
        let fence = h.state.resource(&res("a")).unwrap().fence;
        assert!(fence > g.lease.token, "ending burns a token into the fence");
        assert_eq!(
            h.state.check_fence(&res("a"), g.lease.token),
            FenceStatus::Stale { fence }
        );
        assert_eq!(
            h.events,
            vec![Event::Ended {
                lease: g.lease.clone(),
                reason: EndReason::Released
            }]
        );
        assert_eq!(h.state.ended(&g.lease.lease_id), Some(&EndReason::Released));
        let next = h.grant(acq("r2", "a", "agent/y", "i1"));
        assert!(next.lease.token > fence);
    }

    #[test]
    fn release_by_someone_else_is_refused() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        assert_eq!(
            h.release(g.lease.lease_id, "agent/y", None),
            Err(OpError::NotHolder {
                lease_id: g.lease.lease_id,
                holder: who("agent/x")
            })
        );
        assert!(h.state.lease(&g.lease.lease_id).is_some());
        assert!(h.events.is_empty());
    }

    #[test]
    fn retried_release_is_idempotent_but_a_different_outcome_is_refused() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        let first = h
            .release(g.lease.lease_id, "agent/x", Some(ReleaseOutcome::Failed))
            .unwrap();
        let again = h
            .release(g.lease.lease_id, "agent/x", Some(ReleaseOutcome::Failed))
            .unwrap();
        assert!(again.already);
        assert_eq!(again.lease, first.lease);
        assert_eq!(again.ended, EndReason::Failed);
        assert!(h.events.is_empty(), "a retry ends nothing");
        assert_eq!(
            h.release(g.lease.lease_id, "agent/x", Some(ReleaseOutcome::Done)),
            Err(OpError::LeaseEnded {
                lease_id: g.lease.lease_id,
                reason: EndReason::Failed
            })
        );
        assert!(matches!(
            h.release(g.lease.lease_id, "agent/y", Some(ReleaseOutcome::Failed)),
            Err(OpError::NotHolder { .. })
        ));
        h.advance(10);
        let expired = h.grant(acq("r2", "a", "agent/x", "i1"));
        h.expire(&[expired.lease.lease_id]);
        assert_eq!(
            h.release(expired.lease.lease_id, "agent/x", None),
            Err(OpError::LeaseEnded {
                lease_id: expired.lease.lease_id,
                reason: EndReason::Expired
            })
        );
    }

    #[test]
    fn release_of_unknown_lease_is_not_found() {
        let mut h = Harness::new();
        let err = h.release(LeaseId(77), "agent/x", None).unwrap_err();
        assert_eq!(err, OpError::UnknownLease(LeaseId(77)));
        assert_eq!(err.kind(), super::super::error::ErrorKind::NotFound);
    }

    #[test]
    fn checkpoint_needs_holder_and_current_token() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        let id = g.lease.lease_id;
        assert_eq!(
            h.checkpoint(id, "agent/x", FencingToken(99), b"x"),
            Err(OpError::StaleToken {
                given: FencingToken(99),
                current: g.lease.token
            })
        );
        assert!(matches!(
            h.checkpoint(id, "agent/y", g.lease.token, b"x"),
            Err(OpError::NotHolder { .. })
        ));
        h.checkpoint(id, "agent/x", g.lease.token, b"v1").unwrap();
        h.checkpoint(id, "agent/x", g.lease.token, b"v2").unwrap();
        assert_eq!(
            h.state.lease(&id).unwrap().checkpoint.as_deref(),
            Some(&b"v2"[..])
        );
        h.release(id, "agent/x", None).unwrap();
        assert_eq!(
            h.checkpoint(id, "agent/x", g.lease.token, b"v3"),
            Err(OpError::LeaseEnded {
                lease_id: id,
                reason: EndReason::Released
            })
        );
        assert_eq!(
            h.checkpoint(LeaseId(500), "agent/x", g.lease.token, b"v3"),
            Err(OpError::UnknownLease(LeaseId(500)))
        );
    }

    #[test]
    fn oversized_checkpoint_is_refused_and_changes_nothing() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        let id = g.lease.lease_id;
        let max = vec![7u8; MAX_CHECKPOINT_BYTES];
        h.checkpoint(id, "agent/x", g.lease.token, &max).unwrap();
        let before = h.state.clone();
        let big = vec![0u8; MAX_CHECKPOINT_BYTES + 1];
        assert_eq!(
            h.checkpoint(id, "agent/x", g.lease.token, &big),
            Err(OpError::CheckpointTooLarge {
                size: MAX_CHECKPOINT_BYTES + 1,
                max: MAX_CHECKPOINT_BYTES
            })
        );
        assert_eq!(h.state.lease(&id), before.lease(&id));
    }

    fn revoke(h: &mut Harness, target: RevokeTarget) -> Result<super::Lease, OpError> {
        match h.apply(Command::Revoke {
            target,
            by: who("human/x"),
            reason: "incident 42".to_owned(),
            by_admin: true,
        }) {
            Response::Revoke(r) => r,
            other => panic!("{other:?}"),
        }
    }

    /// Resource `a` held by agent/x (the grant returned), agent/y waiting for it.
    fn held_with_a_waiter() -> (Harness, super::super::types::Grant) {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.acquire(AcquireCmd {
            wait_ms: Some(60_000),
            ..acq("w1", "a", "agent/y", "j1")
        });
        (h, g)
    }

    #[test]
    fn a_retried_revoke_of_a_lease_answers_as_the_first_and_spares_the_next_holder() {
        let (mut h, g) = held_with_a_waiter();
        let target = RevokeTarget::Lease(g.lease.lease_id);
        let first = revoke(&mut h, target.clone()).unwrap();
        let next = h.state.resource(&res("a")).unwrap().holder.unwrap().clone();
        assert_eq!(next.principal.as_str(), "agent/y");
        // The retry (same lease, same principal and reason) answers the same and ends nothing.
        assert_eq!(revoke(&mut h, target).unwrap(), first);
        assert_eq!(
            h.state
                .resource(&res("a"))
                .unwrap()
                .holder
                .unwrap()
                .lease_id,
            next.lease_id
        );
        // Another reason is another request: told the lease ended, still nothing ended.
        let other = h.apply(Command::Revoke {
            target: RevokeTarget::Lease(g.lease.lease_id),
            by: who("human/x"),
            reason: "another incident".to_owned(),
            by_admin: true,
        });
        assert!(
            matches!(other, Response::Revoke(Err(OpError::LeaseEnded { .. }))),
            "{other:?}"
        );
        assert!(h.state.lease(&next.lease_id).is_some());
    }

    /// Issue 24 item 5: a revoke of a *resource* whose answer was lost, retried with its request id
    /// after the waiter took the resource, answers as the first and leaves the next holder alone.
    #[test]
    fn a_retried_revoke_with_a_request_id_never_hits_the_next_holder() {
        let (mut h, g) = held_with_a_waiter();
        let once = |by: &str, target: RevokeTarget| Command::RevokeOnce {
            request_id: rid("rv-1"),
            target,
            by: who(by),
            reason: "incident 42".to_owned(),
            by_admin: true,
        };
        let first = h.apply(once("human/x", RevokeTarget::Resource(res("a"))));
        let Response::Revoke(Ok(first)) = first else {
            panic!("{first:?}")
        };
        assert_eq!(first.lease_id, g.lease.lease_id);
        let next = h.state.resource(&res("a")).unwrap().holder.unwrap().clone();
        assert_eq!(next.principal.as_str(), "agent/y");
        // The retry: the first answer, and the next holder keeps its lease.
        assert_eq!(
            h.apply(once("human/x", RevokeTarget::Resource(res("a")))),
            Response::Revoke(Ok(first.clone()))
        );
        assert!(h.state.lease(&next.lease_id).is_some());
        // The same id from someone else, or for another target, is refused and ends nothing.
        for (by, target) in [
            ("human/z", RevokeTarget::Resource(res("a"))),
            ("human/x", RevokeTarget::Lease(next.lease_id)),
        ] {
            assert_eq!(
                h.apply(once(by, target)),
                Response::Revoke(Err(OpError::RequestIdReused {
                    request_id: rid("rv-1")
                }))
            );
        }
        assert!(h.state.lease(&next.lease_id).is_some());
        // A denied revoke is not kept (a refused caller cannot fill the table), and is audited.
        let denied = h.apply(Command::RevokeOnce {
            request_id: rid("rv-2"),
            target: RevokeTarget::Lease(next.lease_id),
            by: who("agent/z"),
            reason: "mine".to_owned(),
            by_admin: false,
        });
        assert!(
            matches!(denied, Response::Revoke(Err(OpError::Denied(_)))),
            "{denied:?}"
        );
        assert_eq!(h.state.revokes.len(), 1);
        assert!(h.state.lease(&next.lease_id).is_some());
        // Once the retention has passed, the id is forgotten.
        h.advance(h.state.record_limits().unwrap().min_age_ms + 1);
        h.grant(acq("tick", "b", "agent/x", "i1"));
        assert!(h.state.revokes.is_empty());
    }

    #[test]
    fn revoke_ends_the_lease_and_hands_over_to_the_queue() {
        let (mut h, g) = held_with_a_waiter();
        let revoked = revoke(&mut h, RevokeTarget::Resource(res("a"))).unwrap();
        assert_eq!(revoked, g.lease);
        let reason = h.state.ended(&g.lease.lease_id).cloned().unwrap();
        assert_eq!(reason.to_string(), "revoked by human/x: incident 42");
        assert!(matches!(
            h.state.request(&rid("w1")),
            Some(AcquireOutcome::Granted(_))
        ));
        // Revoking it again (the same reason, by the same principal: a retry) answers as the
        // first revoke did; see the retry test below.
        assert_eq!(reason.to_string(), "revoked by human/x: incident 42");
        assert_eq!(
            revoke(&mut h, RevokeTarget::Lease(g.lease.lease_id)),
            Ok(g.lease.clone())
        );
        let holder = h
            .state
            .resource(&res("a"))
            .unwrap()
            .holder
            .cloned()
            .unwrap();
        assert_eq!(
            revoke(&mut h, RevokeTarget::Lease(holder.lease_id)),
            Ok(holder)
        );
    }

    #[test]
    fn revoke_of_nothing_is_refused() {
        let mut h = Harness::new();
        assert_eq!(
            revoke(&mut h, RevokeTarget::Resource(res("a"))),
            Err(OpError::NotHeld { resource: res("a") })
        );
        assert_eq!(
            revoke(&mut h, RevokeTarget::Lease(LeaseId(3))),
            Err(OpError::UnknownLease(LeaseId(3)))
        );
        assert!(h.events.is_empty());
    }
}
