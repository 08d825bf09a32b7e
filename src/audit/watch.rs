//! The watch history: the lease lifecycle events of the latest audit records, kept in memory so that
//! any number of watchers read them without touching the disk.
//!
//! An event's **revision** is the seq of the audit record it comes from, so revisions are the same on
//! every node and a watcher can resume on any node from the revision after the last one it saw.
//! Revisions grow but are not dense in events: records that are not lifecycle events (denials,
//! approvals, policy changes, …) advance the revision too.
//!
//! Invariant kept by [`History`]: it holds every event with a revision in `floor..=head`, in order,
//! and at most `capacity` of them. When a push would exceed the capacity the oldest event is
//! dropped and `floor` moves past it: a watcher still behind it must resynchronise (etcd's
//! "compacted"), rather than the node buffering without bound for it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use super::{filter::in_subtree, AuditDecision, AuditRecord};

/// What happened to a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    Granted,
    Released,
    Done,
    Failed,
    Expired,
    Revoked,
    TakenOver,
    Checkpoint,
}

impl WatchKind {
    /// The lifecycle event an audit decision records, if it is one.
    fn of(decision: AuditDecision) -> Option<Self> {
        Some(match decision {
            AuditDecision::Granted => Self::Granted,
            AuditDecision::Released => Self::Released,
            AuditDecision::Done => Self::Done,
            AuditDecision::Failed => Self::Failed,
            AuditDecision::Expired => Self::Expired,
            AuditDecision::Revoked => Self::Revoked,
            AuditDecision::TakenOver => Self::TakenOver,
            AuditDecision::Checkpoint => Self::Checkpoint,
            _ => return None,
        })
    }

    /// The name on the wire and in `warrant watch`: the audit decision's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::Released => "released",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::TakenOver => "taken_over",
            Self::Checkpoint => "checkpoint",
        }
    }
}

impl std::str::FromStr for WatchKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Self::Granted,
            Self::Released,
            Self::Done,
            Self::Failed,
            Self::Expired,
            Self::Revoked,
            Self::TakenOver,
            Self::Checkpoint,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| format!("unknown watch event kind {s:?}"))
    }
}

impl fmt::Display for WatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lifecycle event of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The audit record's seq.
    pub revision: u64,
    /// The Raft log index of the entry that produced it.
    pub log_index: u64,
    /// The entry's time, Unix milliseconds.
    pub at_ms: u64,
    pub kind: WatchKind,
    pub resource: String,
    pub lease_id: String,
    pub token: u64,
    /// The holder; for a revocation, who revoked.
    pub principal: String,
    pub instance: String,
    /// The audit record's reason (e.g. the previous holder of a grant, a revocation's reason).
    pub reason: String,
}

impl WatchEvent {
    /// The event `r` records, if it is a lifecycle event.
    pub fn from_record(r: &AuditRecord) -> Option<Self> {
        let kind = WatchKind::of(r.entry.decision)?;
        Some(Self {
            revision: r.seq,
            log_index: r.index,
            at_ms: r.at_ms,
            kind,
            resource: r.entry.resource.clone(),
            lease_id: r.entry.lease_id.clone(),
            token: r.entry.token,
            principal: r.entry.principal.clone(),
            instance: r.entry.instance.clone(),
            reason: r.entry.reason.clone(),
        })
    }
}

/// A watcher asked for (or fell behind to) a revision whose events are no longer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "compacted: the events before revision {floor} are no longer kept (the latest revision is \
     {head}); resync: read the current state (List gives its revision R) and watch from R + 1"
)]
pub struct Compacted {
    /// The oldest revision still complete.
    pub floor: u64,
    /// The latest revision.
    pub head: u64,
}

/// What a read of the history gives: the events found, and where to read next.
#[derive(Debug, Default)]
pub struct Page {
    pub events: Vec<Arc<WatchEvent>>,
    /// The revision to read from next time.
    pub next: u64,
}

/// The events of revisions `floor..=head`, at most `capacity` of them.
#[derive(Debug)]
pub struct History {
    events: VecDeque<Arc<WatchEvent>>,
    capacity: usize,
    floor: u64,
    head: u64,
}

impl History {
    /// An empty history whose next revision is `head + 1`.
    pub fn new(capacity: usize, head: u64) -> Self {
        Self {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            floor: head + 1,
            head,
        }
    }

    /// The latest revision.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The oldest revision whose events are all held.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Take in the next record (its seq must follow the head: records arrive in order).
    pub fn push(&mut self, r: &AuditRecord) {
        debug_assert!(r.seq > self.head, "audit records arrive in order");
        self.head = r.seq;
        if let Some(event) = WatchEvent::from_record(r) {
            self.events.push_back(Arc::new(event));
            if self.events.len() > self.capacity {
                if let Some(dropped) = self.events.pop_front() {
                    self.floor = dropped.revision + 1;
                }
            }
        }
    }

    /// Forget everything: the state jumped to a snapshot whose chain reaches `head`.
    pub fn reset(&mut self, head: u64) {
        *self = Self::new(self.capacity, head);
    }

    /// Whether every event from revision `from` on is still held.
    pub fn check(&self, from: u64) -> Result<(), Compacted> {
        if from < self.floor {
            return Err(Compacted {
                floor: self.floor,
                head: self.head,
            });
        }
        Ok(())
    }

    /// Up to `max` events from revision `from` on under `prefix` (segment-wise; empty: all), looking
    /// at no more than `scan` events (keeps a reader's hold on the history short).
    pub fn read(
        &self,
        from: u64,
        prefix: &str,
        max: usize,
        scan: usize,
    ) -> Result<Page, Compacted> {
        self.check(from)?;
        let start = self.events.partition_point(|e| e.revision < from);
        let mut page = Page {
            events: Vec::new(),
            next: self.head.max(from.saturating_sub(1)) + 1,
        };
        for (looked, e) in self.events.range(start..).enumerate() {
            if looked >= scan || page.events.len() >= max {
                page.next = e.revision;
                break;
            }
            if in_subtree(&e.resource, prefix) {
                page.events.push(e.clone());
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AuditChain, AuditEntry};
    use super::*;

    fn chain(records: &[(&str, AuditDecision)]) -> Vec<AuditRecord> {
        let mut c = AuditChain::default();
        records
            .iter()
            .enumerate()
            .map(|(i, (resource, decision))| {
                let mut e = AuditEntry::new("x", *decision);
                e.resource = resource.to_string();
                e.token = i as u64 + 1;
                c.append(i as u64 + 1, 1000, e)
            })
            .collect()
    }

    fn filled(capacity: usize, records: &[AuditRecord]) -> History {
        let mut h = History::new(capacity, 0);
        for r in records {
            h.push(r);
        }
        h
    }

    fn revisions(p: &Page) -> Vec<u64> {
        p.events.iter().map(|e| e.revision).collect()
    }

    #[test]
    fn only_lifecycle_events_are_kept_with_the_record_seq_as_revision() {
        let records = chain(&[
            ("a/1", AuditDecision::Granted),
            ("a/1", AuditDecision::Busy),
            ("a/1", AuditDecision::Released),
            ("", AuditDecision::PolicyPut),
            ("a/2", AuditDecision::Expired),
        ]);
        let h = filled(10, &records);
        let page = h.read(1, "", 100, 100).unwrap();
        assert_eq!(revisions(&page), vec![1, 3, 5]);
        assert_eq!(page.events[1].kind, WatchKind::Released);
        assert_eq!(page.next, 6);
        assert_eq!(h.head(), 5);
    }

    #[test]
    fn a_prefix_selects_a_subtree_segment_wise() {
        let records = chain(&[
            ("k8s/prod/a", AuditDecision::Granted),
            ("k8s/production", AuditDecision::Granted),
            ("k8s/prod", AuditDecision::Revoked),
        ]);
        let h = filled(10, &records);
        assert_eq!(
            revisions(&h.read(1, "k8s/prod", 100, 100).unwrap()),
            vec![1, 3]
        );
    }

    #[test]
    fn reading_resumes_where_the_last_page_ended_without_gaps_or_repeats() {
        let records = chain(&[("r", AuditDecision::Granted); 10]);
        let h = filled(100, &records);
        let mut seen = Vec::new();
        let mut from = 1;
        loop {
            let page = h.read(from, "", 3, 100).unwrap();
            if page.events.is_empty() {
                assert_eq!(page.next, 11);
                break;
            }
            seen.extend(revisions(&page));
            from = page.next;
        }
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
        // The scan bound ends a page early without skipping anything.
        let page = h.read(1, "nothing/here", 100, 4).unwrap();
        assert!(page.events.is_empty());
        assert_eq!(page.next, 5);
    }

    #[test]
    fn a_reader_behind_the_floor_is_told_compacted_with_the_floor() {
        let records = chain(&[("r", AuditDecision::Granted); 10]);
        let mut h = History::new(4, 0);
        for r in &records {
            h.push(r);
        }
        assert_eq!(h.floor(), 7);
        assert_eq!(
            h.read(6, "", 100, 100).unwrap_err(),
            Compacted { floor: 7, head: 10 }
        );
        assert_eq!(
            revisions(&h.read(7, "", 100, 100).unwrap()),
            vec![7, 8, 9, 10]
        );
        // A reader ahead of the head waits there.
        let page = h.read(15, "", 100, 100).unwrap();
        assert!(page.events.is_empty());
        assert_eq!(page.next, 15);
    }

    #[test]
    fn a_reset_forgets_everything_before_the_new_head() {
        let records = chain(&[("r", AuditDecision::Granted); 3]);
        let mut h = filled(10, &records);
        h.reset(50);
        assert_eq!(h.floor(), 51);
        assert!(h.read(3, "", 10, 10).is_err());
        assert!(h.read(51, "", 10, 10).unwrap().events.is_empty());
    }
}
