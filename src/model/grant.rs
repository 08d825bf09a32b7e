//! Where a lease is granted and where it ends: `Acquire`, takeover, the FIFO wait queues,
//! `CancelWait`, and the single `end_lease` every release, expiry, revoke and takeover goes through.
//!
//! Invariants kept here:
//! - a request id yields at most one grant: every answer is recorded in the dedup table and a retry
//!   gets the recorded answer back;
//! - a resource has at most one live holder; each grant takes a fresh token from the one counter, so
//!   tokens strictly increase per resource;
//! - ending a lease burns a token into the resource's fence, so the ended holder's token is stale
//!   everywhere (DESIGN rule 2: expiry, release and revoke all raise the fence);
//! - a task released `done` is never granted again;
//! - a waiter whose deadline has passed is never granted (etcd#11456).

use super::command::{AcquireCmd, AcquireOutcome, Effects, Event, Quotas};
use super::error::OpError;
use super::governance::Verdict;
use super::state::{Recorded, RequestKey, State, Waiter, MAX_WAITERS_PER_RESOURCE};
use super::types::{
    Completion, EndReason, Grant, Lease, LeaseId, Previous, Principal, RequestId, ResourcePath,
};
use crate::audit::{AuditDecision, AuditEntry};

/// The per-principal quotas [`Quotas`] sets.
#[derive(Debug, Clone, Copy)]
enum Quota {
    Leases,
    Queued,
    Pending,
}

impl State {
    pub(super) fn acquire(
        &mut self,
        cmd: &AcquireCmd,
        quotas: Option<&Quotas>,
        fx: &mut Effects,
    ) -> AcquireOutcome {
        // 1. Dedup: a retry gets the first answer and changes nothing.
        if let Some(rec) = self.requests.get(&RequestKey::of(&cmd.request_id)) {
            if !self.same_asker(rec, cmd) {
                // Not recorded: the id belongs to the first request.
                let outcome = AcquireOutcome::Rejected(OpError::RequestIdReused {
                    request_id: cmd.request_id.clone(),
                });
                self.audit_acquire(cmd, &outcome, Vec::new(), Vec::new(), fx);
                return outcome;
            }
            return self.answer_of(rec);
        }
        // 2. Policy, before anything about the resource is revealed: deny wins.
        let verdict = self.acquire_verdict(cmd, self.now_ms);
        // 2b. Anything but a denial may need a record; with the table full of records younger than
        // the retention, refuse rather than forget an answer some client may still retry.
        if let (Some(limits), false) = (
            self.request_table_full(),
            matches!(verdict, Verdict::Deny(_)),
        ) {
            let outcome = AcquireOutcome::Rejected(OpError::RequestTableFull {
                max: limits.max_records,
                min_age_s: limits.min_age_ms / 1000,
            });
            self.audit_acquire(cmd, &outcome, Vec::new(), Vec::new(), fx);
            return outcome;
        }
        let (outcome, policies) = match verdict {
            Verdict::Deny(denial) => (AcquireOutcome::Denied(denial), Vec::new()),
            Verdict::Approval {
                needed,
                policy_version,
                policies,
            } => match self
                .over_quota(cmd, quotas, Quota::Pending)
                .or_else(|| self.over_quota(cmd, quotas, Quota::Leases))
            {
                Some(e) => (AcquireOutcome::Rejected(e), Vec::new()),
                None => (
                    self.open_approval(cmd, needed, policy_version, policies),
                    Vec::new(),
                ),
            },
            Verdict::Allow { policies, .. } => {
                (self.decide_acquire(cmd, None, quotas, fx), policies)
            }
        };
        self.record_request(cmd, outcome.clone());
        self.audit_acquire(cmd, &outcome, policies, Vec::new(), fx);
        outcome
    }

    /// The answer to `cmd` when it needs no log entry, or `None` when it must be proposed.
    ///
    /// An acquire changes nothing when its request id is already known (the first answer stands),
    /// when its task is done, or when the resource is held and the caller neither waits nor takes
    /// over its own predecessor (busy). The server answers those from the leader's state after a
    /// quorum confirmation, so a busy answer costs no log write. Must agree with [`State::apply`]:
    /// for any state, proposing `cmd` would give the same outcome and leave the state unchanged
    /// except for the dedup record.
    ///
    /// Policy is evaluated first at `max(state time, now_ms)`; anything but a plain allow (a denial
    /// or an approval) must be written, so it is `None`. The server proposes a `NoteAnswer` for what it
    /// answered here, so the audit trail still has it.
    pub fn answer_without_write(&self, cmd: &AcquireCmd, now_ms: u64) -> Option<AcquireOutcome> {
        if let Some(rec) = self.requests.get(&RequestKey::of(&cmd.request_id)) {
            if !self.same_asker(rec, cmd) {
                return Some(AcquireOutcome::Rejected(OpError::RequestIdReused {
                    request_id: cmd.request_id.clone(),
                }));
            }
            return Some(self.answer_of(rec));
        }
        // A full table is apply's to judge (it first drops the records that have aged out by the
        // entry's time), so the refusal is always written and audited, and in log order with an
        // earlier attempt of the same request.
        if self.request_table_full().is_some() {
            return None;
        }
        if !matches!(
            self.acquire_verdict(cmd, self.now_ms.max(now_ms)),
            Verdict::Allow { .. }
        ) {
            return None;
        }
        if let Some(done) = self.task_completion(&cmd.resource, cmd) {
            return Some(AcquireOutcome::AlreadyDone(done));
        }
        let holder = self
            .resources
            .get(&cmd.resource)
            .and_then(|r| r.holder)
            .and_then(|id| self.leases.get(&id))?;
        let takes_over =
            cmd.takeover && holder.principal == cmd.principal && holder.instance != cmd.instance;
        let waits = cmd.wait_ms.is_some_and(|w| w > 0);
        (!takes_over && !waits).then(|| AcquireOutcome::Busy {
            holder: holder.clone(),
        })
    }

    /// Decide an allowed acquire: done, take over, busy, queue or grant. `wait_override` replaces the
    /// request's own wait (an approved request waits for what is left of its approval's time).
    pub(super) fn decide_acquire(
        &mut self,
        cmd: &AcquireCmd,
        wait_override: Option<u64>,
        quotas: Option<&Quotas>,
        fx: &mut Effects,
    ) -> AcquireOutcome {
        // 2. A task that is done is answered with its completion, never granted again.
        if let Some(done) = self.task_completion(&cmd.resource, cmd) {
            return AcquireOutcome::AlreadyDone(done);
        }

        // 3. Held?
        let holder = self
            .resources
            .get(&cmd.resource)
            .and_then(|r| r.holder)
            .and_then(|id| self.leases.get(&id));
        if let Some(holder) = holder {
            if cmd.takeover && holder.principal == cmd.principal && holder.instance != cmd.instance
            {
                // 3a. A replacement instance ends its predecessor at once and jumps the queue: the
                // predecessor is fenced out by the token burnt in `end_lease`, and the replacement
                // learns where it stopped.
                let holder_id = holder.lease_id;
                let reason = EndReason::TakenOver {
                    by_instance: cmd.instance.clone(),
                };
                let previous = self
                    .end_lease(holder_id, reason.clone(), false, fx)
                    .map(|ended| Previous::of(&ended, reason, self.now_ms));
                return AcquireOutcome::Granted(self.grant(cmd, previous, fx));
            }
            let holder = holder.clone();
            return match wait_override.or(cmd.wait_ms) {
                Some(wait_ms) if wait_ms > 0 => match self
                    .over_quota(cmd, quotas, Quota::Queued)
                    .or_else(|| self.over_quota(cmd, quotas, Quota::Leases))
                {
                    Some(e) => AcquireOutcome::Rejected(e),
                    None => self.enqueue(cmd, wait_ms, fx),
                },
                _ => AcquireOutcome::Busy { holder },
            };
        }

        // 4. Free: grant, passing on what the task's last holder left behind.
        if let Some(e) = self.over_quota(cmd, quotas, Quota::Leases) {
            return AcquireOutcome::Rejected(e);
        }
        let previous = self.task_previous(cmd);
        AcquireOutcome::Granted(self.grant(cmd, previous, fx))
    }

    /// The refusal when `cmd`'s principal already has its quota of `what` (none without quotas).
    fn over_quota(
        &self,
        cmd: &AcquireCmd,
        quotas: Option<&Quotas>,
        what: Quota,
    ) -> Option<OpError> {
        let quotas = quotas?;
        let held = self.held.get(&cmd.principal);
        let (max, has, noun, setting) = match what {
            // A waiter, or a request waiting for humans, may be granted without asking again:
            // each counts as the lease it may become.
            Quota::Leases => (
                quotas.leases,
                held.map_or(0, |h| h.leases.saturating_add(h.queued_at(self.now_ms)))
                    .saturating_add(self.pending_of(&cmd.principal)),
                "live leases and queued acquires",
                "leases_per_principal",
            ),
            Quota::Queued => (
                quotas.queued,
                held.map_or(0, |h| h.queued_at(self.now_ms)),
                "acquires waiting in queues",
                "queued_per_principal",
            ),
            Quota::Pending => (
                quotas.pending,
                self.pending_of(&cmd.principal),
                "requests waiting for approval",
                "pending_per_principal",
            ),
        };
        (max > 0 && has >= max).then(|| OpError::QuotaExceeded {
            principal: cmd.principal.clone(),
            what: noun.to_string(),
            setting: setting.to_string(),
            max,
        })
    }

    /// Requests of `principal` waiting for human approval. Counted by a scan: at most
    /// `MAX_PENDING_APPROVALS`, and usually none (most acquires are not sent to humans).
    fn pending_of(&self, principal: &Principal) -> u32 {
        if self.pending.is_empty() {
            return 0;
        }
        let n = self
            .pending
            .values()
            .filter(|p| &p.cmd.principal == principal)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn task_completion(&self, resource: &ResourcePath, cmd: &AcquireCmd) -> Option<Completion> {
        let key = cmd.task_key.as_ref()?;
        self.tasks
            .get(&(resource.clone(), key.clone()))
            .and_then(|t| t.done.clone())
    }

    fn task_previous(&self, cmd: &AcquireCmd) -> Option<Previous> {
        let key = cmd.task_key.as_ref()?;
        self.tasks
            .get(&(cmd.resource.clone(), key.clone()))
            .and_then(|t| t.last.clone())
    }

    /// Make `cmd` the resource's holder. The caller has checked the resource is free.
    fn grant(&mut self, cmd: &AcquireCmd, previous: Option<Previous>, fx: &mut Effects) -> Grant {
        let token = self.next_token();
        let lease_id = self.next_lease_id();
        let lease = Lease {
            lease_id,
            resource: cmd.resource.clone(),
            principal: cmd.principal.clone(),
            instance: cmd.instance.clone(),
            token,
            ttl_ms: cmd.ttl_ms,
            intent: cmd.intent.clone(),
            task_key: cmd.task_key.clone(),
            request_id: cmd.request_id.clone(),
            granted_at_ms: self.now_ms,
            // Granted in this term: the new lease's countdown starts now (DESIGN rule 3).
            renew_term: self.current_term,
            ttl_checkpoint_ms: None,
            checkpoint: None,
        };
        let resource = self.resources.entry(cmd.resource.clone()).or_default();
        resource.holder = Some(lease_id);
        resource.fence = resource.fence.max(token);
        if let Some(key) = &cmd.task_key {
            self.tasks
                .entry((cmd.resource.clone(), key.clone()))
                .or_default()
                .current = Some(lease_id);
        }
        self.leases.insert(lease_id, lease.clone());
        self.count_lease(&cmd.principal, 1);
        self.remember_intent(cmd);
        let grant = Grant { lease, previous };
        fx.events.push(Event::Granted {
            grant: grant.clone(),
        });
        grant
    }

    /// Queue `cmd` FIFO behind the holder until `now + wait_ms`.
    fn enqueue(&mut self, cmd: &AcquireCmd, wait_ms: u64, fx: &mut Effects) -> AcquireOutcome {
        // Waiters that timed out while the holder kept the resource would otherwise fill the queue.
        self.drop_expired_waiters(&cmd.resource, fx);
        let deadline_ms = self.now_ms.saturating_add(wait_ms);
        let resource = self.resources.entry(cmd.resource.clone()).or_default();
        if resource.waiters.len() >= MAX_WAITERS_PER_RESOURCE {
            return AcquireOutcome::Rejected(OpError::QueueFull {
                resource: cmd.resource.clone(),
                max: MAX_WAITERS_PER_RESOURCE,
            });
        }
        resource.waiters.push_back(Waiter {
            cmd: cmd.clone(),
            deadline_ms,
        });
        let position = u32::try_from(resource.waiters.len()).unwrap_or(u32::MAX);
        self.count_waiter(&cmd.principal, deadline_ms, 1);
        AcquireOutcome::Queued { position }
    }

    fn drop_expired_waiters(&mut self, path: &ResourcePath, fx: &mut Effects) {
        let now = self.now_ms;
        let Some(resource) = self.resources.get_mut(path) else {
            return;
        };
        let (live, dead): (Vec<Waiter>, Vec<Waiter>) = resource
            .waiters
            .drain(..)
            .partition(|w| w.deadline_ms >= now);
        resource.waiters = live.into();
        for waiter in dead {
            self.count_waiter(&waiter.cmd.principal, waiter.deadline_ms, -1);
            self.finish_waiter(&waiter.cmd.request_id, AcquireOutcome::WaitEnded, fx);
        }
    }

    /// A waiter leaves the queue without a grant: record its final answer and tell the server.
    fn finish_waiter(&mut self, id: &RequestId, outcome: AcquireOutcome, fx: &mut Effects) {
        if let Some(asker) = self
            .requests
            .get(&RequestKey::of(id))
            .and_then(|rec| self.asker_of(rec))
        {
            let decision = match &outcome {
                AcquireOutcome::AlreadyDone(_) => AuditDecision::AlreadyDone,
                AcquireOutcome::Denied(_) => AuditDecision::Denied,
                _ => AuditDecision::WaitEnded,
            };
            let mut entry = AuditEntry::new("acquire", decision);
            entry.principal = asker.principal.to_string();
            entry.instance = asker.instance.to_string();
            entry.resource = asker.resource.to_string();
            entry.request_id = id.to_string();
            self.audit(fx, entry);
        }
        self.update_request(id, outcome);
        fx.events.push(Event::WaiterEnded {
            request_id: id.clone(),
        });
    }

    /// End a live lease. The one path for release, expiry, revoke and takeover: it removes the lease,
    /// burns a token into the fence, records why it ended, closes or annotates its task, and (unless
    /// a takeover grants the resource itself) hands the resource to the queue. Returns the ended
    /// lease, or `None` if `id` is not live.
    pub(super) fn end_lease(
        &mut self,
        id: LeaseId,
        reason: EndReason,
        hand_over: bool,
        fx: &mut Effects,
    ) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        self.count_lease(&lease.principal, -1);
        // Burn a token: the fence moves above the ended holder's token, so a resource checking
        // fences refuses it from now on, even before anyone else is granted (DESIGN rule 2).
        let burnt = self.next_token();
        let resource = self.resources.entry(lease.resource.clone()).or_default();
        if resource.holder == Some(id) {
            resource.holder = None;
        }
        resource.fence = resource.fence.max(burnt);

        if let Some(key) = &lease.task_key {
            let task = self
                .tasks
                .entry((lease.resource.clone(), key.clone()))
                .or_default();
            if task.current == Some(id) {
                task.current = None;
            }
            // The task's progress outlives a holder that never checkpointed: such a holder passes on
            // the checkpoint it inherited, so a replacement always learns where the work stopped.
            let inherited = task.last.as_ref().and_then(|p| p.checkpoint.clone());
            match reason {
                EndReason::Done => {
                    let mut done = Completion::of(&lease, self.now_ms);
                    done.checkpoint = done.checkpoint.or(inherited);
                    task.done = Some(done);
                }
                _ => {
                    let mut last = Previous::of(&lease, reason.clone(), self.now_ms);
                    last.checkpoint = last.checkpoint.or(inherited);
                    task.last = Some(last);
                }
            }
        }

        self.record_ended(lease.clone(), reason.clone());
        self.audit_end(&lease, &reason, fx);
        fx.events.push(Event::Ended {
            lease: lease.clone(),
            reason,
        });
        if hand_over {
            self.hand_over(&lease.resource, fx);
        }
        Some(lease)
    }

    /// Give a free resource to the first live waiter, FIFO. Waiters past their deadline are dropped,
    /// never granted: their callers have given up and may act as if refused (etcd#11456).
    fn hand_over(&mut self, path: &ResourcePath, fx: &mut Effects) {
        loop {
            let Some(resource) = self.resources.get_mut(path) else {
                return;
            };
            if resource.holder.is_some() {
                return;
            }
            let Some(waiter) = resource.waiters.pop_front() else {
                return;
            };
            self.count_waiter(&waiter.cmd.principal, waiter.deadline_ms, -1);
            let cmd = waiter.cmd;
            if waiter.deadline_ms < self.now_ms {
                self.finish_waiter(&cmd.request_id, AcquireOutcome::WaitEnded, fx);
                continue;
            }
            // The task may have been finished by someone else while this request waited.
            if let Some(done) = self.task_completion(path, &cmd) {
                self.finish_waiter(&cmd.request_id, AcquireOutcome::AlreadyDone(done), fx);
                continue;
            }
            // Policy may have changed while it waited (a freeze, an intent conflict): deny wins.
            // An approved request's "needs approval" answer is what its humans already gave.
            let policies = match self.acquire_verdict(&cmd, self.now_ms) {
                Verdict::Deny(denial) => {
                    self.finish_waiter(&cmd.request_id, AcquireOutcome::Denied(denial), fx);
                    continue;
                }
                Verdict::Allow { policies, .. } | Verdict::Approval { policies, .. } => policies,
            };
            let previous = self.task_previous(&cmd);
            let outcome = AcquireOutcome::Granted(self.grant(&cmd, previous, fx));
            self.audit_acquire(&cmd, &outcome, policies, Vec::new(), fx);
            self.update_request(&cmd.request_id, outcome);
            return;
        }
    }

    /// Withdraw a queued request. Answers the request's current outcome, so a request granted just
    /// before the cancel returns its grant (the caller owns that lease, never an orphan).
    pub(super) fn cancel_wait(
        &mut self,
        id: &RequestId,
        principal: &Principal,
        fx: &mut Effects,
    ) -> AcquireOutcome {
        let Some(rec) = self.requests.get(&RequestKey::of(id)) else {
            return AcquireOutcome::Rejected(OpError::UnknownRequest {
                request_id: id.clone(),
            });
        };
        let Some(asker) = self.asker_of(rec) else {
            return self.answer_of(rec); // a grant whose lease is forgotten: nothing to withdraw
        };
        if &asker.principal != principal {
            return AcquireOutcome::Rejected(OpError::NotRequester {
                request_id: id.clone(),
                requester: asker.principal,
            });
        }
        if matches!(&rec.answer, Recorded::Other { outcome, .. }
            if matches!(**outcome, AcquireOutcome::Queued { .. }))
        {
            let path = asker.resource;
            if let Some(resource) = self.resources.get_mut(&path) {
                let mut gone = Vec::new();
                resource.waiters.retain(|w| {
                    let stays = &w.cmd.request_id != id;
                    if !stays {
                        gone.push(w.deadline_ms);
                    }
                    stays
                });
                for deadline_ms in gone {
                    self.count_waiter(principal, deadline_ms, -1);
                }
            }
            self.finish_waiter(id, AcquireOutcome::WaitEnded, fx);
        }
        // A requester that stops waiting for humans withdraws its request: no lease is granted
        // later to a caller that has gone.
        self.withdraw_approval(id, fx);
        self.request(id).unwrap_or(AcquireOutcome::WaitEnded)
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::{AcquireOutcome, Command, Event, Response};
    use super::super::error::OpError;
    use super::super::state::MAX_WAITERS_PER_RESOURCE;
    use super::super::testkit::{acq, inst, res, rid, task, who, Harness};
    use super::super::types::{EndReason, FencingToken, LeaseId, ReleaseOutcome};
    use super::{AcquireCmd, Quotas};

    fn waiting(cmd: AcquireCmd, wait_ms: u64) -> AcquireCmd {
        AcquireCmd {
            wait_ms: Some(wait_ms),
            ..cmd
        }
    }

    fn with_task(cmd: AcquireCmd, key: &str) -> AcquireCmd {
        AcquireCmd {
            task_key: Some(task(key)),
            ..cmd
        }
    }

    fn takeover(cmd: AcquireCmd) -> AcquireCmd {
        AcquireCmd {
            takeover: true,
            ..cmd
        }
    }

    fn within(h: &mut Harness, cmd: AcquireCmd, quotas: Quotas) -> AcquireOutcome {
        match h.apply(Command::AcquireWithin { cmd, quotas }) {
            Response::Acquire(o) => o,
            other => panic!("{other:?}"),
        }
    }

    fn over(outcome: AcquireOutcome, setting: &str) {
        match outcome {
            AcquireOutcome::Rejected(e @ OpError::QuotaExceeded { .. }) => {
                assert!(e.to_string().contains(&format!("limits.{setting}")), "{e}");
            }
            other => panic!("expected a quota refusal ({setting}), got {other:?}"),
        }
    }

    /// Issue 25 item 7: one principal cannot hold more leases or queue more acquires than its
    /// quotas, decided in apply; a queued acquire counts as the lease it may become, a refusal
    /// changes nothing and is not remembered, others are not held to its counts, and a takeover
    /// of its own lease does not count twice.
    #[test]
    fn per_principal_quotas_refuse_in_apply_and_change_nothing() {
        let mut h = Harness::new();
        let q = Quotas {
            leases: 3,
            pending: 0,
            queued: 1,
        };
        let granted = |o: AcquireOutcome| match o {
            AcquireOutcome::Granted(g) => g,
            other => panic!("expected a grant, got {other:?}"),
        };
        let queued = |o: AcquireOutcome| {
            assert!(matches!(o, AcquireOutcome::Queued { .. }), "{o:?}");
        };
        granted(within(&mut h, acq("r1", "a", "agent/x", "i1"), q));
        let b = granted(within(&mut h, acq("r2", "b", "agent/x", "i1"), q));
        let c = granted(within(&mut h, acq("r4", "c", "agent/y", "i1"), q));
        // Two leases and one waiter: the quota of three is reached.
        queued(within(
            &mut h,
            waiting(acq("r6", "c", "agent/x", "i1"), 60_000),
            q,
        ));
        let before = h.state.to_snapshot();
        over(
            within(&mut h, acq("r3", "d", "agent/x", "i1"), q),
            "leases_per_principal",
        );
        assert!(h.events.is_empty(), "nothing granted");
        assert_eq!(h.audit.len(), 1, "the refusal is audited");
        assert!(h.state.resource(&res("d")).is_none(), "no lock, no fence");
        let audit_only = {
            // Everything but the audit chain and the applied index is as it was.
            let earlier = super::super::state::State::from_snapshot(&before).unwrap();
            let mut after = h.state.clone();
            after.audit = earlier.audit;
            after.last_index = earlier.last_index;
            after.to_snapshot()
        };
        assert_eq!(audit_only, before);
        over(
            within(&mut h, waiting(acq("r7", "c", "agent/x", "i3"), 60_000), q),
            "queued_per_principal",
        );
        // Another principal is held to its own counts.
        queued(within(
            &mut h,
            waiting(acq("r8", "a", "agent/y", "i1"), 60_000),
            q,
        ));
        // A replacement instance takes over its own lease at the quota.
        granted(within(&mut h, takeover(acq("r5", "a", "agent/x", "i2")), q));
        // The waiter is granted when the holder leaves: three leases, still within the quota.
        h.release(c.lease.lease_id, "agent/y", None).unwrap();
        assert_eq!(
            h.state
                .resource(&res("c"))
                .unwrap()
                .holder
                .unwrap()
                .principal,
            who("agent/x")
        );
        over(
            within(&mut h, acq("r3", "d", "agent/x", "i1"), q),
            "leases_per_principal",
        );
        // An ended lease frees its place, and a refused request was not remembered: its retry is
        // decided afresh.
        h.release(b.lease.lease_id, "agent/x", None).unwrap();
        let d = granted(within(&mut h, acq("r3", "d", "agent/x", "i1"), q));
        h.release(d.lease.lease_id, "agent/x", None).unwrap();
        // A waiter past its deadline no longer counts, though it is still in its queue.
        queued(within(
            &mut h,
            waiting(acq("r9", "c", "agent/x", "i4"), 60_000),
            q,
        ));
        h.advance(60_001);
        queued(within(
            &mut h,
            waiting(acq("r10", "a", "agent/x", "i5"), 120_000),
            q,
        ));
        assert_eq!(
            h.state.resource(&res("c")).unwrap().waiters,
            1,
            "r9 is still queued"
        );
        assert_eq!(h.state.held, h.state.count_held());
        // Without quotas (an entry written before them) nothing is refused.
        granted(h.acquire(acq("r11", "e", "agent/x", "i1")));
    }

    #[test]
    fn first_grant_gets_token_one_and_lease_one() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        assert_eq!(g.lease.token, FencingToken(1));
        assert_eq!(g.lease.lease_id, LeaseId(1));
        assert_eq!(g.lease.granted_at_ms, h.now_ms);
        assert_eq!(g.lease.renew_term, h.term);
        assert_eq!(g.previous, None);
        assert_eq!(h.events, vec![Event::Granted { grant: g.clone() }]);
        let view = h.state.resource(&res("a")).unwrap();
        assert_eq!(view.holder, Some(&g.lease));
        assert_eq!(view.fence, FencingToken(1));
    }

    #[test]
    fn retried_acquire_returns_first_grant() {
        let mut h = Harness::new();
        let first = h.acquire(acq("r1", "a", "agent/x", "i1"));
        let before = h.state.clone();
        h.advance(500);
        let again = h.acquire(acq("r1", "a", "agent/x", "i1"));
        assert_eq!(again, first);
        assert!(h.events.is_empty(), "a retry changes nothing");
        assert_eq!(h.state.live_lease_count(), 1);
        assert_eq!(h.state.leases, before.leases);
        // Even after the lease ended, the retry answers the first grant, never a second one.
        let AcquireOutcome::Granted(g) = &first else {
            panic!("{first:?}")
        };
        h.release(g.lease.lease_id, "agent/x", None).unwrap();
        assert_eq!(h.acquire(acq("r1", "a", "agent/x", "i1")), first);
        assert_eq!(h.state.live_lease_count(), 0);
    }

    #[test]
    fn reused_request_id_for_another_request_is_rejected() {
        let mut h = Harness::new();
        let first = h.acquire(acq("r1", "a", "agent/x", "i1"));
        for other in [
            acq("r1", "b", "agent/x", "i1"),
            acq("r1", "a", "agent/y", "i1"),
            acq("r1", "a", "agent/x", "i2"),
        ] {
            assert_eq!(
                h.acquire(other),
                AcquireOutcome::Rejected(OpError::RequestIdReused {
                    request_id: rid("r1")
                })
            );
        }
        assert_eq!(
            h.state.request(&rid("r1")),
            Some(first.clone()),
            "first answer kept"
        );
    }

    #[test]
    fn held_resource_answers_busy_with_the_holder() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        let busy = h.acquire(acq("r2", "a", "agent/y", "i9"));
        assert_eq!(
            busy,
            AcquireOutcome::Busy {
                holder: g.lease.clone()
            }
        );
        let zero_wait = h.acquire(waiting(acq("r3", "a", "agent/y", "i9"), 0));
        assert!(matches!(zero_wait, AcquireOutcome::Busy { .. }));
        // Takeover by another principal, or by the same instance, is not a takeover.
        let other = h.acquire(takeover(acq("r4", "a", "agent/y", "i1")));
        assert!(matches!(other, AcquireOutcome::Busy { .. }));
        let same = h.acquire(takeover(acq("r5", "a", "agent/x", "i1")));
        assert!(matches!(same, AcquireOutcome::Busy { .. }));
        assert_eq!(h.state.lease(&g.lease.lease_id), Some(&g.lease));
    }

    #[test]
    fn done_task_answers_already_done() {
        let mut h = Harness::new();
        let g = h.grant(with_task(acq("r1", "a", "agent/x", "i1"), "t"));
        h.checkpoint(g.lease.lease_id, "agent/x", g.lease.token, b"step 3")
            .unwrap();
        h.release(g.lease.lease_id, "agent/x", Some(ReleaseOutcome::Done))
            .unwrap();
        let again = h.acquire(with_task(acq("r2", "a", "agent/y", "i2"), "t"));
        let AcquireOutcome::AlreadyDone(done) = again else {
            panic!("{again:?}")
        };
        assert_eq!(done.lease_id, g.lease.lease_id);
        assert_eq!(done.token, g.lease.token);
        assert_eq!(done.checkpoint.as_deref(), Some(&b"step 3"[..]));
        assert!(h.events.is_empty());
        // Tasks are keyed by (resource, task key): the same key elsewhere is a different task.
        h.grant(with_task(acq("r3", "b", "agent/y", "i2"), "t"));
    }

    #[test]
    fn next_grant_of_an_open_task_learns_the_previous_attempt() {
        let mut h = Harness::new();
        let g = h.grant(with_task(acq("r1", "a", "agent/x", "i1"), "t"));
        h.checkpoint(g.lease.lease_id, "agent/x", g.lease.token, b"half")
            .unwrap();
        h.advance(10_000);
        h.expire(&[g.lease.lease_id]);
        let next = h.grant(with_task(acq("r2", "a", "agent/x", "i2"), "t"));
        let prev = next.previous.expect("previous attempt is passed on");
        assert_eq!(prev.lease_id, g.lease.lease_id);
        assert_eq!(prev.instance, inst("i1"));
        assert_eq!(prev.token, g.lease.token);
        assert_eq!(prev.ended, EndReason::Expired);
        assert_eq!(prev.ended_at_ms, h.now_ms);
        assert_eq!(prev.checkpoint.as_deref(), Some(&b"half"[..]));
        // Without a task key nothing is passed on.
        h.release(next.lease.lease_id, "agent/x", None).unwrap();
        assert_eq!(h.grant(acq("r3", "a", "agent/x", "i3")).previous, None);
    }

    #[test]
    fn takeover_raises_token_and_carries_checkpoint() {
        let mut h = Harness::new();
        let old = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.checkpoint(old.lease.lease_id, "agent/x", old.lease.token, b"ckpt")
            .unwrap();
        h.advance(100);
        let new = h.grant(takeover(acq("r2", "a", "agent/x", "i2")));
        assert!(new.lease.token > old.lease.token);
        let prev = new
            .previous
            .clone()
            .expect("takeover carries the predecessor");
        assert_eq!(prev.lease_id, old.lease.lease_id);
        assert_eq!(prev.token, old.lease.token);
        assert_eq!(
            prev.ended,
            EndReason::TakenOver {
                by_instance: inst("i2")
            }
        );
        assert_eq!(prev.checkpoint.as_deref(), Some(&b"ckpt"[..]));
        assert_eq!(h.state.lease(&old.lease.lease_id), None);
        assert_eq!(h.state.ended(&old.lease.lease_id), Some(&prev.ended));
        assert!(
            matches!(&h.events[0], Event::Ended { lease, .. } if lease.lease_id == old.lease.lease_id)
        );
        assert!(matches!(&h.events[1], Event::Granted { grant } if grant == &new));
        assert!(matches!(
            h.state.check_fence(&res("a"), old.lease.token),
            super::super::state::FenceStatus::Stale { .. }
        ));
    }

    #[test]
    fn a_holder_that_never_checkpointed_passes_on_the_task_checkpoint_it_inherited() {
        let mut h = Harness::new();
        let first = h.grant(with_task(acq("r1", "a", "agent/x", "i1"), "deploy"));
        h.checkpoint(
            first.lease.lease_id,
            "agent/x",
            first.lease.token,
            b"step 2",
        )
        .unwrap();
        h.expire(&[first.lease.lease_id]);
        let second = h.grant(with_task(acq("r2", "a", "agent/x", "i2"), "deploy"));
        assert_eq!(
            second
                .previous
                .as_ref()
                .and_then(|p| p.checkpoint.as_deref()),
            Some(&b"step 2"[..])
        );
        // The second holder dies before checkpointing anything itself.
        h.expire(&[second.lease.lease_id]);
        let third = h.grant(with_task(acq("r3", "a", "agent/x", "i3"), "deploy"));
        let prev = third
            .previous
            .expect("a task's next grant carries its predecessor");
        assert_eq!(
            prev.instance,
            inst("i2"),
            "the predecessor is the holder that died"
        );
        assert_eq!(
            prev.checkpoint.as_deref(),
            Some(&b"step 2"[..]),
            "its inherited progress is not lost"
        );
    }

    #[test]
    fn takeover_jumps_the_queue() {
        let mut h = Harness::new();
        h.grant(acq("r1", "a", "agent/x", "i1"));
        let queued = h.acquire(waiting(acq("w1", "a", "agent/y", "j1"), 60_000));
        assert_eq!(queued, AcquireOutcome::Queued { position: 1 });
        let new = h.grant(takeover(acq("r2", "a", "agent/x", "i2")));
        assert_eq!(
            h.state.resource(&res("a")).unwrap().holder,
            Some(&new.lease)
        );
        assert_eq!(h.state.resource(&res("a")).unwrap().waiters, 1);
        assert_eq!(h.state.request(&rid("w1")), Some(queued.clone()));
    }

    #[test]
    fn waiters_are_granted_fifo_when_the_holder_releases() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        assert_eq!(
            h.acquire(waiting(acq("w1", "a", "agent/y", "j1"), 60_000)),
            AcquireOutcome::Queued { position: 1 }
        );
        assert_eq!(
            h.acquire(waiting(acq("w2", "a", "agent/z", "k1"), 60_000)),
            AcquireOutcome::Queued { position: 2 }
        );
        h.advance(1_000);
        h.release(g.lease.lease_id, "agent/x", None).unwrap();
        let Some(AcquireOutcome::Granted(w1)) = h.state.request(&rid("w1")) else {
            panic!("w1 should be granted")
        };
        assert_eq!(w1.lease.principal, who("agent/y"));
        assert_eq!(w1.lease.granted_at_ms, h.now_ms);
        assert!(w1.lease.token > g.lease.token);
        assert!(h.events.contains(&Event::Granted { grant: w1.clone() }));
        assert_eq!(
            h.state.request(&rid("w2")),
            Some(AcquireOutcome::Queued { position: 2 })
        );
        // A retry of the waiter's acquire now answers its grant.
        assert_eq!(
            h.acquire(waiting(acq("w1", "a", "agent/y", "j1"), 60_000)),
            AcquireOutcome::Granted(w1)
        );
    }

    #[test]
    fn expired_waiter_is_never_granted() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.acquire(waiting(acq("w1", "a", "agent/y", "j1"), 1_000));
        h.acquire(waiting(acq("w2", "a", "agent/z", "k1"), 60_000));
        h.advance(1_001);
        h.release(g.lease.lease_id, "agent/x", None).unwrap();
        assert_eq!(h.state.request(&rid("w1")), Some(AcquireOutcome::WaitEnded));
        assert!(h.events.contains(&Event::WaiterEnded {
            request_id: rid("w1")
        }));
        let Some(AcquireOutcome::Granted(w2)) = h.state.request(&rid("w2")) else {
            panic!("w2 should be granted")
        };
        assert_eq!(w2.lease.principal, who("agent/z"));
        assert_eq!(h.state.resource(&res("a")).unwrap().waiters, 0);
    }

    #[test]
    fn waiter_at_its_exact_deadline_is_still_granted() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.acquire(waiting(acq("w1", "a", "agent/y", "j1"), 1_000));
        h.advance(1_000);
        h.release(g.lease.lease_id, "agent/x", None).unwrap();
        assert!(matches!(
            h.state.request(&rid("w1")),
            Some(AcquireOutcome::Granted(_))
        ));
    }

    #[test]
    fn timed_out_waiters_are_dropped_when_someone_else_queues() {
        let mut h = Harness::new();
        h.grant(acq("r1", "a", "agent/x", "i1"));
        h.acquire(waiting(acq("w1", "a", "agent/y", "j1"), 10));
        h.advance(11);
        let q = h.acquire(waiting(acq("w2", "a", "agent/z", "k1"), 10));
        assert_eq!(q, AcquireOutcome::Queued { position: 1 });
        assert_eq!(h.state.request(&rid("w1")), Some(AcquireOutcome::WaitEnded));
        assert!(h.events.contains(&Event::WaiterEnded {
            request_id: rid("w1")
        }));
    }

    #[test]
    fn full_queue_is_rejected() {
        let mut h = Harness::new();
        h.grant(acq("r1", "a", "agent/x", "i1"));
        for n in 0..MAX_WAITERS_PER_RESOURCE {
            let q = h.acquire(waiting(acq(&format!("w{n}"), "a", "agent/y", "j"), 60_000));
            assert!(matches!(q, AcquireOutcome::Queued { .. }));
        }
        let full = h.acquire(waiting(acq("one-more", "a", "agent/y", "j"), 60_000));
        assert_eq!(
            full,
            AcquireOutcome::Rejected(OpError::QueueFull {
                resource: res("a"),
                max: MAX_WAITERS_PER_RESOURCE
            })
        );
        assert_eq!(
            full.clone(),
            h.acquire(waiting(acq("one-more", "a", "agent/y", "j"), 1))
        );
        assert_eq!(
            h.state.resource(&res("a")).unwrap().waiters,
            MAX_WAITERS_PER_RESOURCE
        );
    }

    #[test]
    fn waiter_whose_task_got_done_meanwhile_answers_already_done() {
        let mut h = Harness::new();
        let g = h.grant(with_task(acq("r1", "a", "agent/x", "i1"), "t"));
        h.acquire(waiting(
            with_task(acq("w1", "a", "agent/y", "j1"), "t"),
            60_000,
        ));
        h.acquire(waiting(acq("w2", "a", "agent/z", "k1"), 60_000));
        h.release(g.lease.lease_id, "agent/x", Some(ReleaseOutcome::Done))
            .unwrap();
        assert!(matches!(
            h.state.request(&rid("w1")),
            Some(AcquireOutcome::AlreadyDone(c)) if c.lease_id == g.lease.lease_id
        ));
        assert!(h.events.contains(&Event::WaiterEnded {
            request_id: rid("w1")
        }));
        assert!(matches!(
            h.state.request(&rid("w2")),
            Some(AcquireOutcome::Granted(_))
        ));
    }

    #[test]
    fn cancel_wait_removes_the_queued_request() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.acquire(waiting(acq("w1", "a", "agent/y", "j1"), 60_000));
        let r = h.apply(Command::CancelWait {
            request_id: rid("w1"),
            principal: who("agent/y"),
        });
        assert_eq!(r, Response::CancelWait(AcquireOutcome::WaitEnded));
        assert_eq!(
            h.events,
            vec![Event::WaiterEnded {
                request_id: rid("w1")
            }]
        );
        assert_eq!(h.state.resource(&res("a")).unwrap().waiters, 0);
        h.release(g.lease.lease_id, "agent/x", None).unwrap();
        assert_eq!(h.state.resource(&res("a")).unwrap().holder, None);
        // A retry of the cancelled acquire answers WaitEnded, not a new wait.
        assert_eq!(
            h.acquire(waiting(acq("w1", "a", "agent/y", "j1"), 60_000)),
            AcquireOutcome::WaitEnded
        );
    }

    #[test]
    fn cancel_after_grant_returns_the_grant() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.acquire(waiting(acq("w1", "a", "agent/y", "j1"), 60_000));
        h.release(g.lease.lease_id, "agent/x", None).unwrap();
        let granted = h.state.request(&rid("w1")).unwrap();
        assert!(matches!(granted, AcquireOutcome::Granted(_)));
        let r = h.apply(Command::CancelWait {
            request_id: rid("w1"),
            principal: who("agent/y"),
        });
        assert_eq!(r, Response::CancelWait(granted));
        assert!(h.events.is_empty());
        assert_eq!(h.state.live_lease_count(), 1, "the grant stands");
    }

    #[test]
    fn cancel_wait_by_someone_else_or_unknown_is_rejected() {
        let mut h = Harness::new();
        h.grant(acq("r1", "a", "agent/x", "i1"));
        h.acquire(waiting(acq("w1", "a", "agent/y", "j1"), 60_000));
        let r = h.apply(Command::CancelWait {
            request_id: rid("w1"),
            principal: who("agent/z"),
        });
        assert!(matches!(
            r,
            Response::CancelWait(AcquireOutcome::Rejected(OpError::NotRequester { .. }))
        ));
        let r = h.apply(Command::CancelWait {
            request_id: rid("nope"),
            principal: who("agent/z"),
        });
        assert!(matches!(
            r,
            Response::CancelWait(AcquireOutcome::Rejected(OpError::UnknownRequest { .. }))
        ));
        assert_eq!(h.state.resource(&res("a")).unwrap().waiters, 1);
    }
}
