//! Lease time, all of it (DESIGN rules 2 and 3): the leader's countdowns, their start after an
//! election, keepalive acknowledgement, expiry proposals and ttl checkpoints. The state machine's
//! half (what `Renew`, `Expire` and `CheckpointTtl` entries do, and the countdown a new leader starts
//! from) is `model::lease_time`.
//!
//! - **Where time is measured:** only here, only on the leader, only with the monotonic clock
//!   ([`LeaseClock`]). Followers count nothing.
//! - **A new leader** ([`activate`]) starts every countdown afresh once its first entry is applied, at
//!   the bound the state machine gives (`State::initial_countdown_ms`): a full ttl for leases the
//!   previous leader may have renewed without a log write, the checkpointed remaining ttl otherwise,
//!   so repeated elections cannot keep a dead holder's lease alive forever (rule 3).
//! - **A keepalive** ([`acknowledge`]): the first of a lease in a term is logged (`Renew`, batched by
//!   [`renew_batch`]); later ones are answered after a quorum confirms this node still leads. The
//!   deadline moves only in [`LeaseClock::renew`], under one lock with the check that the clock
//!   still counts for the term that was confirmed (rule 3: a deposed leader never extends a lease).
//! - **Expiry** ([`expire_due`]): leases whose countdown ran out are ended by replicated `Expire`
//!   entries, never before `ttl` after the last acknowledged keepalive (rule 2). A lease past its
//!   deadline is never renewed, so an expiry this leader proposes never races an acknowledgement.
//! - **Ttl checkpoints** ([`checkpoint_quiet`]): the remaining time of leases with no keepalive this
//!   term is logged every `lease.ttl_checkpoint_interval`, which bounds a later leader's countdown.
//!
//! Costs grow with the work due, not the leases held: deadlines are kept in order (a tick looks at
//! the due ones only), and the leases still quiet this term are kept in a set walked a batch at a
//! time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::Status;

use super::{auth, config, Shared, MAX_PER_ENTRY};
use crate::model::{self, Command, Event, LeaseId, Principal};

#[derive(Default)]
struct Inner {
    /// The term this node leads with its countdowns initialised, or None (not leader / not ready).
    term: Option<u64>,
    deadlines: HashMap<LeaseId, Instant>,
    /// The same deadlines, in order.
    order: BTreeSet<(Instant, LeaseId)>,
    /// Leases with no keepalive logged in this term (their remaining ttl is checkpointed).
    quiet: BTreeSet<LeaseId>,
    /// Where the last checkpoint batch stopped in `quiet`.
    quiet_cursor: Option<LeaseId>,
}

impl Inner {
    fn set(&mut self, id: LeaseId, deadline: Instant) {
        if let Some(old) = self.deadlines.insert(id, deadline) {
            self.order.remove(&(old, id));
        }
        self.order.insert((deadline, id));
    }

    fn forget(&mut self, id: LeaseId) {
        if let Some(old) = self.deadlines.remove(&id) {
            self.order.remove(&(old, id));
        }
        self.quiet.remove(&id);
    }
}

/// What [`LeaseClock::renew`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The countdown ran out (or the lease is unknown here): it is being expired.
    Expired,
    /// This clock does not count for the term the caller confirmed.
    NotLeading,
}

/// Deadlines of live leases, kept by the leader.
#[derive(Default)]
pub struct LeaseClock {
    inner: Mutex<Inner>,
}

impl LeaseClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start counting for `term`: each lease with its initial countdown, and whether it is quiet
    /// (no keepalive logged in `term` yet).
    pub fn activate(
        &self,
        term: u64,
        countdowns: impl IntoIterator<Item = (LeaseId, Duration, bool)>,
    ) {
        let now = Instant::now();
        let mut inner = self.lock();
        *inner = Inner::default();
        for (id, countdown, quiet) in countdowns {
            inner.set(id, now + countdown);
            if quiet {
                inner.quiet.insert(id);
            }
        }
        inner.term = Some(term);
    }

    /// Stop counting (leadership lost).
    pub fn deactivate(&self) {
        *self.lock() = Inner::default();
    }

    /// The term this clock counts for, if this node is an initialised leader.
    pub fn active_term(&self) -> Option<u64> {
        self.lock().term
    }

    /// A lease was granted (applied): it runs a full ttl from now.
    pub fn on_granted(&self, id: LeaseId, ttl: Duration) {
        let mut inner = self.lock();
        if inner.term.is_some() {
            inner.set(id, Instant::now() + ttl);
        }
    }

    /// A lease ended (applied).
    pub fn on_ended(&self, id: LeaseId) {
        self.lock().forget(id);
    }

    /// A lease's keepalive was logged in `term` (`Renew` applied, recording `term`): no more ttl
    /// checkpoints in that term. A `Renew` of an earlier term answered late changes nothing.
    pub fn on_renewed(&self, id: LeaseId, term: u64) {
        let mut inner = self.lock();
        if inner.term == Some(term) {
            inner.quiet.remove(&id);
        }
    }

    /// How many leases are quiet (no keepalive logged in this term).
    pub fn quiet_count(&self) -> usize {
        self.lock().quiet.len()
    }

    /// Acknowledge a keepalive: the lease runs `ttl` from now, if this clock still counts for
    /// `term` (the term whose leadership the caller confirmed) and the lease's countdown has not
    /// run out (it is being expired) — decided under one lock.
    pub fn renew(&self, id: LeaseId, ttl: Duration, term: u64) -> Renewal {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.term != Some(term) {
            return Renewal::NotLeading;
        }
        match inner.deadlines.get(&id) {
            Some(deadline) if *deadline > now => {
                inner.set(id, now + ttl);
                // Acknowledged in `term` only after its keepalive was logged in `term`: not quiet
                // (also when the `Renew`'s answer was lost but it applied).
                inner.quiet.remove(&id);
                Renewal::Renewed
            }
            _ => Renewal::Expired,
        }
    }

    /// Time left for a lease, if this clock is active and knows it.
    pub fn remaining(&self, id: LeaseId) -> Option<Duration> {
        let inner = self.lock();
        inner.term?;
        inner
            .deadlines
            .get(&id)
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Leases whose countdown has run out, at most `max`, by id.
    pub fn due(&self, max: usize) -> Vec<LeaseId> {
        let now = Instant::now();
        let inner = self.lock();
        let mut due: Vec<LeaseId> = inner
            .order
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, id)| *id)
            .take(max)
            .collect();
        due.sort();
        due
    }

    /// The next batch (at most `max`) of quiet leases with their remaining time in ms, going round
    /// the set batch after batch so every quiet lease gets its turn.
    pub fn quiet_batch(&self, max: usize) -> Vec<(LeaseId, u64)> {
        let now = Instant::now();
        let mut inner = self.lock();
        let after = inner.quiet_cursor;
        let mut batch: Vec<LeaseId> = match after {
            Some(cursor) => inner
                .quiet
                .range((
                    std::ops::Bound::Excluded(cursor),
                    std::ops::Bound::Unbounded,
                ))
                .take(max)
                .copied()
                .collect(),
            None => inner.quiet.iter().take(max).copied().collect(),
        };
        if batch.len() < max && after.is_some() {
            let more = max - batch.len();
            // From the start up to the cursor: none of these is in the batch already.
            let wrapped: Vec<LeaseId> = inner
                .quiet
                .iter()
                .take_while(|id| Some(**id) <= after)
                .take(more)
                .copied()
                .collect();
            batch.extend(wrapped);
        }
        inner.quiet_cursor = batch.last().copied();
        batch
            .into_iter()
            .filter_map(|id| {
                let left = inner.deadlines.get(&id)?.saturating_duration_since(now);
                Some((id, left.as_millis() as u64))
            })
            .collect()
    }
}

/// How long the clock counts a lease of `ttl` down for: `ttl`, but for the chaos suite's
/// `early-expiry` broken mode (a quarter of it).
pub(super) fn counted_ttl(shared: &Shared, ttl: Duration) -> Duration {
    match shared.config.chaos() {
        Some(config::ChaosBreak::EarlyExpiry) => ttl / 4,
        _ => ttl,
    }
}

/// The clock's half of an applied event: a grant starts a countdown, an end stops one.
pub(super) fn on_event(shared: &Shared, event: &Event) {
    match event {
        Event::Granted { grant } => shared.clock.on_granted(
            grant.lease.lease_id,
            counted_ttl(shared, Duration::from_millis(grant.lease.ttl_ms)),
        ),
        Event::Ended { lease, .. } => shared.clock.on_ended(lease.lease_id),
        Event::WaiterEnded { .. } => {}
    }
}

/// Start counting on a new leader: once its first entry is applied, every live lease gets the
/// countdown the state machine's rule gives it (DESIGN rule 3). True once the clock runs.
pub(super) async fn activate(shared: &Shared, term: u64) -> bool {
    if shared.confirm_leadership().await.is_err() {
        return false;
    }
    // Hold the state machine's read guard while the clock starts: no entry is applied in between,
    // so every grant or end after this point reaches the clock as an event, and none before is lost.
    let sm = shared.sm.read();
    if sm.state.current_term() != term {
        return false; // our first entry is not applied yet; try again on the next tick
    }
    let countdowns: Vec<(LeaseId, Duration, bool)> = sm
        .state
        .leases()
        .map(|l| {
            (
                l.lease_id,
                Duration::from_millis(sm.state.initial_countdown_ms(l)),
                l.renew_term != term,
            )
        })
        .collect();
    tracing::info!(
        term,
        leases = countdowns.len(),
        "leader: lease clock started"
    );
    shared.entry_clock.start_from(sm.state.now_ms());
    shared.clock.activate(term, countdowns);
    true
}

/// Propose the expiry of leases whose countdown ran out (a batch per entry).
pub(super) async fn expire_due(shared: &Shared) {
    let due = shared.clock.due(MAX_PER_ENTRY);
    if due.is_empty() {
        return;
    }
    match shared
        .propose(Command::Expire {
            lease_ids: due.clone(),
        })
        .await
    {
        Ok(_) => {
            // Every id proposed is gone from the state machine now (expired by this entry, or ended
            // earlier by one whose event has not reached the clock yet): stop counting it either way.
            for id in &due {
                shared.clock.on_ended(*id);
            }
            tracing::debug!(count = due.len(), "expired leases");
        }
        Err(e) => tracing::warn!(error = %e, "could not propose expiry"),
    }
}

/// Log the remaining ttl of every lease with no keepalive in this term, a batch per entry: each
/// interval covers them all, so whatever the count, a leader that lives one interval bounds every
/// quiet lease's countdown for the next (rule 3).
pub(super) async fn checkpoint_quiet(shared: &Shared) {
    let batches = shared.clock.quiet_count().div_ceil(MAX_PER_ENTRY);
    for _ in 0..batches {
        let remaining = shared.clock.quiet_batch(MAX_PER_ENTRY);
        if remaining.is_empty() {
            return;
        }
        if let Err(e) = shared.propose(Command::CheckpointTtl { remaining }).await {
            tracing::warn!(error = %e, "could not checkpoint remaining ttl");
            return;
        }
    }
}

/// Renew a batch of leases with one `Renew` entry (the first keepalive of each in this term).
pub(super) async fn renew_batch(
    shared: std::sync::Weak<Shared>,
    ids: Vec<LeaseId>,
) -> Vec<Result<Result<model::Lease, model::OpError>, Status>> {
    let Some(shared) = shared.upgrade() else {
        return ids
            .iter()
            .map(|_| Err(Status::unavailable("node is shutting down")))
            .collect();
    };
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    let renewed = shared
        .propose_for(
            Command::Renew { lease_ids: unique },
            model::Response::into_renew,
        )
        .await;
    match renewed {
        Ok(results) => {
            let by_id: HashMap<_, _> = results.into_iter().collect();
            for (id, result) in &by_id {
                if let Ok(lease) = result {
                    shared.clock.on_renewed(*id, lease.renew_term);
                }
            }
            ids.iter()
                .map(|id| {
                    Ok(by_id
                        .get(id)
                        .cloned()
                        .unwrap_or(Err(model::OpError::UnknownLease(*id))))
                })
                .collect()
        }
        Err(status) => ids.iter().map(|_| Err(status.clone())).collect(),
    }
}

/// What a keepalive came to.
pub(super) enum Ack {
    /// Acknowledged: the lease runs its ttl from now.
    Renewed { lease: model::Lease },
    /// The lease ended (or is unknown, or its countdown ran out): why.
    Lost(String),
    /// The chaos suite's `lose-grants` break keeps up its lie: a grant it lost is answered as
    /// alive, so its checkers, not the client, catch it.
    ChaosAlive,
}

/// Acknowledge a keepalive of lease `id` by `who` (DESIGN rule 3): the first in this term is logged,
/// a later one needs a quorum's confirmation of this node's leadership; then the deadline moves,
/// in the term confirmed. Not the leader (or no longer): UNAVAILABLE with the leader's address.
pub(super) async fn acknowledge(
    shared: &Shared,
    caller: &auth::Caller,
    id: LeaseId,
    who: &Principal,
) -> Result<Ack, Status> {
    let Some(term) = shared.clock.active_term() else {
        return Err(shared.redirect());
    };
    let (ttl_ms, renewed_this_term) = {
        let sm = shared.sm.read();
        match sm.state.lease(&id) {
            Some(l) if &l.principal != who => {
                return Err(Status::permission_denied(format!(
                    "lease {id} is held by {}, not {who}",
                    l.principal
                )))
            }
            Some(l) => (l.ttl_ms, l.renew_term == term),
            None => {
                return Ok(match sm.state.ended(&id) {
                    Some(reason) => Ack::Lost(reason.to_string()),
                    None if shared.config.chaos() == Some(config::ChaosBreak::LoseGrants) => {
                        Ack::ChaosAlive
                    }
                    None => Ack::Lost("unknown lease".to_string()),
                });
            }
        }
    };
    if renewed_this_term {
        shared.confirm_for(caller).await?;
    } else {
        match shared.renewer.submit(id).await {
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err(e))) => return Ok(Ack::Lost(e.to_string())),
            Some(Err(status)) => return Err(status),
            None => return Err(Status::unavailable("node is shutting down")),
        }
    }
    // Only a leader that just confirmed its leadership, in the term its clock counts for, moves
    // the deadline (checked again in `renew`, under the clock's lock).
    let raft_term = shared.raft.metrics().borrow().current_term;
    if raft_term != term {
        return Err(shared.redirect());
    }
    // The confirmation waited until everything committed before it was applied: a revoke,
    // release or takeover that won the race is visible now, with its reason (etcd#14758).
    let lease = {
        let sm = shared.sm.read();
        // Checked again after the confirmation: a revocation of the caller's access token that
        // committed while this keepalive waited refuses it here, not one ttl later.
        if let auth::Via::Token(token) = &caller.via {
            if sm.state.token_revoked(token) {
                return Err(Status::unauthenticated(format!(
                    "access token {token} was revoked"
                )));
            }
        }
        match sm.state.lease(&id) {
            Some(l) => l.clone(),
            None => {
                let reason = sm.state.ended(&id).map(|r| r.to_string());
                return Ok(Ack::Lost(
                    reason.unwrap_or_else(|| "unknown lease".to_string()),
                ));
            }
        }
    };
    let ttl = counted_ttl(shared, Duration::from_millis(ttl_ms));
    match shared.clock.renew(id, ttl, term) {
        Renewal::Renewed => {
            metrics::counter!("warrant_keepalives_total").increment(1);
            Ok(Ack::Renewed { lease })
        }
        Renewal::Expired => Ok(Ack::Lost("expired".to_string())),
        Renewal::NotLeading => Err(shared.redirect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inactive_clock_tracks_nothing() {
        let c = LeaseClock::default();
        c.on_granted(LeaseId(1), Duration::from_secs(5));
        assert_eq!(c.remaining(LeaseId(1)), None);
        assert_eq!(
            c.renew(LeaseId(1), Duration::from_secs(5), 1),
            Renewal::NotLeading
        );
    }

    #[test]
    fn a_lease_past_its_deadline_is_due_and_cannot_be_renewed() {
        let c = LeaseClock::default();
        c.activate(
            3,
            [
                (LeaseId(1), Duration::ZERO, false),
                (LeaseId(2), Duration::from_secs(60), false),
            ],
        );
        assert_eq!(c.due(10), vec![LeaseId(1)]);
        assert_eq!(
            c.renew(LeaseId(1), Duration::from_secs(5), 3),
            Renewal::Expired,
            "an expiring lease is never renewed"
        );
        assert_eq!(
            c.renew(LeaseId(2), Duration::from_secs(5), 2),
            Renewal::NotLeading,
            "a keepalive confirmed in another term moves no deadline"
        );
        assert_eq!(
            c.renew(LeaseId(2), Duration::from_secs(5), 3),
            Renewal::Renewed
        );
        assert!(c.remaining(LeaseId(2)).unwrap() <= Duration::from_secs(5));
        c.on_ended(LeaseId(1));
        assert!(c.due(10).is_empty());
        c.deactivate();
        assert_eq!(c.active_term(), None);
    }

    #[test]
    fn only_due_leases_are_looked_at_and_a_renewal_moves_a_lease_out_of_due() {
        let c = LeaseClock::default();
        let ids: Vec<_> = (1..=1000u64).map(LeaseId).collect();
        c.activate(
            1,
            ids.iter().map(|id| {
                let d = if id.0 % 100 == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_secs(60)
                };
                (*id, d, false)
            }),
        );
        assert_eq!(
            c.due(100),
            (1..=10).map(|i| LeaseId(i * 100)).collect::<Vec<_>>()
        );
        assert_eq!(c.due(3).len(), 3, "at most max");
        c.on_granted(LeaseId(100), Duration::from_secs(60));
        assert!(
            !c.due(100).contains(&LeaseId(100)),
            "a re-granted id counts afresh"
        );
        c.on_ended(LeaseId(200));
        assert!(!c.due(100).contains(&LeaseId(200)));
        assert_eq!(c.due(100).len(), 8);
    }

    #[test]
    fn quiet_leases_are_checkpointed_in_turn_until_renewed_or_ended() {
        let c = LeaseClock::default();
        c.activate(
            1,
            (1..=5u64).map(|i| (LeaseId(i), Duration::from_secs(30), i != 3)),
        );
        let ids = |b: Vec<(LeaseId, u64)>| b.into_iter().map(|(id, _)| id.0).collect::<Vec<_>>();
        let first = c.quiet_batch(2);
        assert!(first.iter().all(|(_, ms)| *ms <= 30_000 && *ms > 29_000));
        assert_eq!(ids(first), [1, 2], "lease 3 had its keepalive logged");
        assert_eq!(ids(c.quiet_batch(2)), [4, 5]);
        assert_eq!(ids(c.quiet_batch(3)), [1, 2, 4], "round again");
        c.on_renewed(LeaseId(4), 0);
        assert_eq!(
            c.quiet_count(),
            4,
            "a renewal of an earlier term leaves it quiet"
        );
        c.on_renewed(LeaseId(5), 1);
        c.on_ended(LeaseId(1));
        assert_eq!(c.quiet_count(), 2);
        assert_eq!(ids(c.quiet_batch(10)), [2, 4]);
        c.deactivate();
        assert!(c.quiet_batch(10).is_empty());
    }
}
