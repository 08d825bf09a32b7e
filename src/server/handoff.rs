//! Releases on their way to the log, so that an acquire finding its resource held by a lease that is
//! being released rides into the log right behind the release instead of being answered busy.
//!
//! Without this, a contended resource changes hands in a chain of two commits plus a gap: the
//! holder's release commits, and only the next busy retry to arrive after it can propose its
//! acquire, one more commit round later. With it, the first acquire that finds the holder releasing
//! is proposed at once, queued behind the release (both enter the proposal queue under this
//! registry's lock, release first, and batches reach the log in queue order),
//! and is granted by the state machine when it applies, in the release's entry or the next one.
//!
//! At most one acquire rides behind a release (its retries, same request id, too), and none when
//! acquires wait in the resource's queue (the release hands it to them). Every other caller is
//! answered busy without a write, which is true: the releasing holder still holds the resource when
//! they are answered. A rider is answered busy from the log only when the release did not free the
//! resource (refused, or lost with the leader), so busy answers stay off the log in every ordinary
//! case.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::model::{LeaseId, RequestId};

/// Releases being proposed on this node, by lease.
#[derive(Default)]
pub struct Handoffs {
    map: Mutex<HashMap<LeaseId, Pending>>,
}

#[derive(Default)]
struct Pending {
    /// Release calls of the lease not yet answered (a retried release counts again).
    releases: usize,
    /// The acquire let through behind them.
    rider: Option<RequestId>,
}

impl Handoffs {
    fn lock(&self) -> MutexGuard<'_, HashMap<LeaseId, Pending>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mark `lease` as being released while `enqueue` puts its release in the proposal queue; the
    /// mark stays until the returned guard drops (when the release is answered or abandoned).
    pub fn release<T>(&self, lease: LeaseId, enqueue: impl FnOnce() -> T) -> (Releasing<'_>, T) {
        // The guard first: should `enqueue` panic, unwinding drops the lock and then the guard,
        // which takes the mark away again.
        let releasing = Releasing {
            handoffs: self,
            lease,
        };
        let mut map = self.lock();
        map.entry(lease).or_default().releases += 1;
        let queued = enqueue();
        drop(map);
        (releasing, queued)
    }

    /// Let the acquire `request` ride behind a release of `lease` that is on its way: `enqueue`
    /// (which puts the acquire in the proposal queue) runs, and its result is returned, when `lease`
    /// is being released and no other acquire rides behind it. `None` otherwise: the caller answers
    /// busy.
    pub fn ride<T>(
        &self,
        lease: LeaseId,
        request: &RequestId,
        enqueue: impl FnOnce() -> T,
    ) -> Option<T> {
        let mut map = self.lock();
        let pending = map.get_mut(&lease)?;
        if pending.rider.as_ref().is_some_and(|r| r != request) {
            return None;
        }
        pending.rider = Some(request.clone());
        Some(enqueue())
    }
}

/// A release on its way to the log; dropping it ends the mark.
pub struct Releasing<'a> {
    handoffs: &'a Handoffs,
    lease: LeaseId,
}

impl Drop for Releasing<'_> {
    fn drop(&mut self) {
        let mut map = self.handoffs.lock();
        if let Some(pending) = map.get_mut(&self.lease) {
            pending.releases -= 1;
            if pending.releases == 0 {
                map.remove(&self.lease);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> RequestId {
        RequestId::parse(s).unwrap()
    }

    #[test]
    fn one_acquire_rides_behind_a_release_and_only_while_it_is_on_its_way() {
        let h = Handoffs::default();
        let lease = LeaseId(7);
        assert_eq!(
            h.ride(lease, &id("a"), || 1),
            None,
            "nothing is being released"
        );

        let (releasing, queued) = h.release(lease, || "release queued");
        assert_eq!(queued, "release queued");
        assert_eq!(h.ride(LeaseId(8), &id("a"), || 1), None, "another lease");
        assert_eq!(
            h.ride(lease, &id("a"), || 1),
            Some(1),
            "the first acquire rides"
        );
        assert_eq!(h.ride(lease, &id("a"), || 2), Some(2), "and its retry");
        assert_eq!(
            h.ride(lease, &id("b"), || 3),
            None,
            "a second acquire is busy"
        );

        drop(releasing);
        assert_eq!(
            h.ride(lease, &id("b"), || 4),
            None,
            "the release was answered"
        );
        assert!(h.lock().is_empty());
    }

    #[test]
    fn the_mark_lasts_until_every_release_call_of_the_lease_is_answered() {
        let h = Handoffs::default();
        let lease = LeaseId(7);
        let (first, _) = h.release(lease, || ());
        let (retry, _) = h.release(lease, || ());
        assert_eq!(h.ride(lease, &id("a"), || ()), Some(()));
        drop(first);
        assert_eq!(h.ride(lease, &id("b"), || ()), None, "the rider is kept");
        assert_eq!(h.ride(lease, &id("a"), || ()), Some(()));
        drop(retry);
        assert_eq!(h.ride(lease, &id("a"), || ()), None);
        assert!(h.lock().is_empty());
    }
}
