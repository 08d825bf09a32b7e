//! The leader's lease clock: when each live lease's countdown runs out (DESIGN rules 2 and 3).
//!
//! Lease time is measured only here, only on the leader, only with the monotonic clock. Keepalives
//! move a deadline without a log write; expiry happens through replicated `Expire` entries that this
//! leader proposes in batches. On becoming leader every countdown starts afresh at the bound the state
//! machine gives (`initial_countdown_ms`): a full ttl for leases the previous leader may have renewed
//! without a log write, the checkpointed remaining ttl otherwise — so repeated elections cannot keep a
//! dead holder's lease alive forever.
//!
//! Invariant: a keepalive is never acknowledged for a lease whose deadline has passed, so an `Expire`
//! this leader proposes never races an acknowledged renewal.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::model::LeaseId;

#[derive(Default)]
struct Inner {
    /// The term this node leads with its countdowns initialised, or None (not leader / not ready).
    term: Option<u64>,
    deadlines: HashMap<LeaseId, Instant>,
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

    /// Start counting for `term` with the given initial countdowns.
    pub fn activate(&self, term: u64, countdowns: impl IntoIterator<Item = (LeaseId, Duration)>) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.deadlines = countdowns
            .into_iter()
            .map(|(id, d)| (id, now + d))
            .collect();
        inner.term = Some(term);
    }

    /// Stop counting (leadership lost).
    pub fn deactivate(&self) {
        let mut inner = self.lock();
        inner.term = None;
        inner.deadlines.clear();
    }

    /// The term this clock counts for, if this node is an initialised leader.
    pub fn active_term(&self) -> Option<u64> {
        self.lock().term
    }

    /// A lease was granted (applied): it runs a full ttl from now.
    pub fn on_granted(&self, id: LeaseId, ttl: Duration) {
        let mut inner = self.lock();
        if inner.term.is_some() {
            inner.deadlines.insert(id, Instant::now() + ttl);
        }
    }

    /// A lease ended (applied).
    pub fn on_ended(&self, id: LeaseId) {
        self.lock().deadlines.remove(&id);
    }

    /// Acknowledge a keepalive: the lease runs `ttl` from now. False if its countdown already ran out
    /// (it is being expired) or it is unknown here.
    pub fn renew(&self, id: LeaseId, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.deadlines.get_mut(&id) {
            Some(deadline) if *deadline > now => {
                *deadline = now + ttl;
                true
            }
            _ => false,
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

    /// Leases whose countdown has run out, at most `max`.
    pub fn due(&self, max: usize) -> Vec<LeaseId> {
        let now = Instant::now();
        let inner = self.lock();
        let mut due: Vec<LeaseId> = inner
            .deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .take(max)
            .collect();
        due.sort();
        due
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
        assert!(!c.renew(LeaseId(1), Duration::from_secs(5)));
    }

    #[test]
    fn a_lease_past_its_deadline_is_due_and_cannot_be_renewed() {
        let c = LeaseClock::default();
        c.activate(
            3,
            [
                (LeaseId(1), Duration::ZERO),
                (LeaseId(2), Duration::from_secs(60)),
            ],
        );
        assert_eq!(c.due(10), vec![LeaseId(1)]);
        assert!(
            !c.renew(LeaseId(1), Duration::from_secs(5)),
            "an expiring lease is never renewed"
        );
        assert!(c.renew(LeaseId(2), Duration::from_secs(5)));
        assert!(c.remaining(LeaseId(2)).unwrap() <= Duration::from_secs(5));
        c.on_ended(LeaseId(1));
        assert!(c.due(10).is_empty());
        c.deactivate();
        assert_eq!(c.active_term(), None);
    }
}
