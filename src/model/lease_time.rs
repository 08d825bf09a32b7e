//! Lease time: keepalive renewals, expiry, ttl checkpoints and the countdown a new leader starts.
//!
//! The state machine has no clock. The leader counts each lease down in memory and acknowledges
//! keepalives without a log write once it has confirmed its leadership with a quorum (DESIGN rule 3:
//! a deposed leader never extends a lease). Only three things reach the log:
//! - `Renew`: the first keepalive of a lease in a leader's term, which records `renew_term`;
//! - `CheckpointTtl`: the remaining ttl of leases that had no keepalive in the leader's term;
//! - `Expire`: leases whose countdown ran out (no earlier than `ttl` after the last acknowledged
//!   keepalive; DESIGN rule 2), which ends them and raises their fences.
//!
//! Invariant: a lease's countdown after an election is never longer than `ttl`, and once a term has
//! passed without a keepalive it is bounded by the ttl checkpointed then, so repeated elections cannot
//! keep a dead holder's lease alive forever.

use super::command::Effects;
use super::error::OpError;
use super::state::State;
use super::types::{EndReason, Lease, LeaseId};

impl State {
    /// Record that each live lease got a keepalive in the current term. Clears the ttl checkpoint:
    /// a renewal supersedes any remaining-ttl computed before it.
    pub(super) fn renew(&mut self, ids: &[LeaseId]) -> Vec<(LeaseId, Result<Lease, OpError>)> {
        let term = self.current_term;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let result = match self.leases.get_mut(&id) {
                Some(lease) => {
                    lease.renew_term = term;
                    lease.ttl_checkpoint_ms = None;
                    Ok(lease.clone())
                }
                None => Err(self.not_live(id)),
            };
            out.push((id, result));
        }
        out
    }

    /// End each still-live lease as expired; ids that already ended or are unknown are ignored (the
    /// leader may propose an expiry that races a release). Returns the ids actually expired.
    pub(super) fn expire(&mut self, ids: &[LeaseId], fx: &mut Effects) -> Vec<LeaseId> {
        ids.iter()
            .filter_map(|&id| {
                self.end_lease(id, EndReason::Expired, true, fx)
                    .map(|l| l.lease_id)
            })
            .collect()
    }

    /// Persist the leader's remaining ttl for leases not renewed in this term. A lease renewed in
    /// this term is skipped: the leader computed `remaining` before (or regardless of) that renewal,
    /// and a renewal must never be shortened by an older countdown.
    pub(super) fn checkpoint_ttl(&mut self, remaining: &[(LeaseId, u64)]) {
        let term = self.current_term;
        for (id, ms) in remaining {
            if let Some(lease) = self.leases.get_mut(id) {
                if lease.renew_term != term {
                    lease.ttl_checkpoint_ms = Some(*ms);
                }
            }
        }
    }

    /// For a restore (`warrant snapshot restore`): the state goes to a new cluster, whose terms start
    /// again at 1 (its log ids carry terms of their own). Forget the old cluster's terms, so the new
    /// cluster's first leader sees its term as the newest and starts the lease clock (else no
    /// keepalive is acknowledged and no lease ever expires), and give every live lease a full ttl
    /// from that leader on: the old cluster may have acknowledged keepalives up to the backup and
    /// past it, which no checkpoint in the backup reflects (DESIGN rule 3, "restart every lease's
    /// countdown at a full ttl").
    pub fn restart_terms(&mut self) {
        self.current_term = 0;
        self.prev_term = 0;
        for lease in self.leases.values_mut() {
            lease.renew_term = 0;
            lease.ttl_checkpoint_ms = None;
        }
    }

    /// The countdown a new leader starts for `lease`, once its first entry is applied (so
    /// `current_term` is its term and `prev_term` the last term with entries before it).
    ///
    /// Why: a leader logs a `Renew` for the first keepalive of a lease in its term, then acknowledges
    /// later ones without a log write. So:
    /// - `renew_term >= prev_term`: the previous leader renewed the lease in its term and may have
    ///   acknowledged more keepalives right up to its last moment, which we cannot see. The holder
    ///   may therefore believe it holds a full ttl from about now: restart at the full `ttl`.
    /// - `renew_term < prev_term`: the previous leader saw no keepalive for this lease (else a `Renew`
    ///   in its term would be in the log), nor did any leader since `renew_term`. Nothing unlogged
    ///   extended it, so a remaining ttl checkpointed by one of those leaders bounds it: start at
    ///   `min(ttl, checkpoint)`. Without this bound every election would hand a dead holder a fresh
    ///   ttl, and repeated elections could keep its lease alive forever (etcd#9395).
    pub fn initial_countdown_ms(&self, lease: &Lease) -> u64 {
        if lease.renew_term >= self.prev_term {
            lease.ttl_ms
        } else {
            lease
                .ttl_ms
                .min(lease.ttl_checkpoint_ms.unwrap_or(lease.ttl_ms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::{Command, Event, Response};
    use super::super::error::OpError;
    use super::super::testkit::{acq, res, Harness};
    use super::super::types::{EndReason, LeaseId};
    use super::Lease;

    fn renew(h: &mut Harness, ids: &[LeaseId]) -> Vec<(LeaseId, Result<Lease, OpError>)> {
        match h.apply(Command::Renew {
            lease_ids: ids.to_vec(),
        }) {
            Response::Renew(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn checkpoint_ttl(h: &mut Harness, remaining: &[(LeaseId, u64)]) {
        let r = h.apply(Command::CheckpointTtl {
            remaining: remaining.to_vec(),
        });
        assert_eq!(r, Response::CheckpointTtl);
    }

    #[test]
    fn a_restored_state_counts_time_in_the_new_clusters_terms() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        for _ in 0..3 {
            h.elect();
        }
        checkpoint_ttl(&mut h, &[(g.lease.lease_id, 4_000)]);
        h.elect();
        let mut restored = h.state.clone();
        restored.restart_terms();
        assert_eq!((restored.current_term(), restored.prev_term()), (0, 0));
        // The new cluster's first leader (term 1) sees its own term as the newest ...
        restored.observe(super::super::command::EntryMeta { index: 99, term: 1 });
        assert_eq!(restored.current_term(), 1);
        // ... and restarts the lease at its full ttl.
        let lease = restored.lease(&g.lease.lease_id).unwrap().clone();
        assert_eq!(restored.initial_countdown_ms(&lease), lease.ttl_ms);
    }

    #[test]
    fn renew_records_the_term_and_clears_the_ttl_checkpoint() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        let gone = h.grant(acq("r2", "b", "agent/x", "i1"));
        h.release(gone.lease.lease_id, "agent/x", None).unwrap();
        h.elect();
        checkpoint_ttl(&mut h, &[(g.lease.lease_id, 4_000)]);
        assert_eq!(
            h.state.lease(&g.lease.lease_id).unwrap().ttl_checkpoint_ms,
            Some(4_000)
        );
        h.elect();
        let out = renew(
            &mut h,
            &[g.lease.lease_id, gone.lease.lease_id, LeaseId(99)],
        );
        let renewed = out[0].1.clone().unwrap();
        assert_eq!(renewed.renew_term, h.term);
        assert_eq!(renewed.ttl_checkpoint_ms, None);
        assert_eq!(h.state.lease(&g.lease.lease_id), Some(&renewed));
        assert_eq!(
            out[1].1,
            Err(OpError::LeaseEnded {
                lease_id: gone.lease.lease_id,
                reason: EndReason::Released
            })
        );
        assert_eq!(out[2].1, Err(OpError::UnknownLease(LeaseId(99))));
    }

    #[test]
    fn expire_ends_live_leases_and_ignores_the_rest() {
        let mut h = Harness::new();
        let a = h.grant(acq("r1", "a", "agent/x", "i1"));
        let b = h.grant(acq("r2", "b", "agent/x", "i1"));
        h.release(b.lease.lease_id, "agent/x", None).unwrap();
        h.advance(10_000);
        let expired = h.expire(&[a.lease.lease_id, b.lease.lease_id, LeaseId(42)]);
        assert_eq!(expired, vec![a.lease.lease_id]);
        assert_eq!(
            h.events,
            vec![Event::Ended {
                lease: a.lease.clone(),
                reason: EndReason::Expired
            }]
        );
        assert_eq!(h.state.ended(&a.lease.lease_id), Some(&EndReason::Expired));
        assert!(h.state.resource(&res("a")).unwrap().fence > a.lease.token);
        assert_eq!(h.expire(&[a.lease.lease_id]), Vec::<LeaseId>::new());
    }

    #[test]
    fn ttl_checkpoint_skips_leases_renewed_in_this_term() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        // Granted in this term: counts as renewed in this term.
        checkpoint_ttl(&mut h, &[(g.lease.lease_id, 1_000), (LeaseId(99), 5)]);
        assert_eq!(
            h.state.lease(&g.lease.lease_id).unwrap().ttl_checkpoint_ms,
            None
        );
        h.elect();
        renew(&mut h, &[g.lease.lease_id]);
        checkpoint_ttl(&mut h, &[(g.lease.lease_id, 1_000)]);
        assert_eq!(
            h.state.lease(&g.lease.lease_id).unwrap().ttl_checkpoint_ms,
            None
        );
    }

    #[test]
    fn initial_countdown_is_full_ttl_after_one_election() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.elect();
        // The term-1 leader may have acknowledged keepalives without a log write until it fell.
        let lease = h.state.lease(&g.lease.lease_id).unwrap();
        assert_eq!(h.state.initial_countdown_ms(lease), g.lease.ttl_ms);
    }

    #[test]
    fn initial_countdown_uses_checkpoint_after_two_elections() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        let id = g.lease.lease_id;
        h.elect(); // term 2: no keepalive arrives; the leader checkpoints what is left.
        checkpoint_ttl(&mut h, &[(id, 3_000)]);
        h.elect(); // term 3
        let lease = h.state.lease(&id).unwrap();
        assert_eq!(h.state.prev_term(), 2);
        assert_eq!(h.state.initial_countdown_ms(lease), 3_000);
        // Further elections can only keep shrinking it, never restore a full ttl.
        checkpoint_ttl(&mut h, &[(id, 1_000)]);
        h.elect();
        let lease = h.state.lease(&id).unwrap();
        assert_eq!(h.state.initial_countdown_ms(lease), 1_000);
        // A checkpoint larger than the ttl is still capped by the ttl.
        checkpoint_ttl(&mut h, &[(id, 50_000)]);
        h.elect();
        let lease = h.state.lease(&id).unwrap();
        assert_eq!(h.state.initial_countdown_ms(lease), g.lease.ttl_ms);
        // A keepalive in a later term restores the full ttl for the next leader.
        renew(&mut h, &[id]);
        h.elect();
        let lease = h.state.lease(&id).unwrap();
        assert_eq!(h.state.initial_countdown_ms(lease), g.lease.ttl_ms);
    }

    #[test]
    fn initial_countdown_without_checkpoint_after_two_elections_is_bounded_by_ttl() {
        let mut h = Harness::new();
        let g = h.grant(acq("r1", "a", "agent/x", "i1"));
        h.elect();
        h.elect();
        let lease = h.state.lease(&g.lease.lease_id).unwrap();
        assert_eq!(h.state.initial_countdown_ms(lease), g.lease.ttl_ms);
    }
}
