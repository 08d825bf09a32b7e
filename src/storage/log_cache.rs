//! The most recent Raft log entries, kept in memory beside RocksDB, as etcd's raft keeps its
//! unstable entries and TiKV its entry cache.
//!
//! Under load every entry is read back soon after it is written: by each follower's replication
//! task on the leader, and by the apply on every node. From RocksDB each read is an iterator and a
//! fresh decode (and validation) of every command; from here it is a clone that shares the entry's
//! request (`Arc`).
//!
//! Invariant: the cache holds a contiguous run of entries (or nothing), each exactly as RocksDB
//! holds it; normally the newest ones. The log store keeps it so by writing RocksDB before adding
//! an entry here and removing entries here before deleting them there. A read of a bounded range is
//! answered here only when the whole range lies in the cache; every other read goes to RocksDB.

use std::collections::VecDeque;

use crate::typeconfig::Entry;

/// Bounds of the cache: the oldest entries go first when either is passed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub entries: usize,
    /// Of the entries' encoded sizes.
    pub bytes: usize,
}

/// Recent log entries, in index order.
#[derive(Debug)]
pub(super) struct LogCache {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    limits: Limits,
}

impl LogCache {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    /// Add an entry just written to the log, `size` its encoded length. One that overwrites cached
    /// entries drops them first (the log was overwritten from there); one that does not follow the
    /// newest cached entry starts the cache anew (the log has a gap before it, as after a snapshot).
    pub(super) fn push(&mut self, entry: Entry, size: usize) {
        let index = entry.log_id.index;
        match self.last() {
            Some(last) if index <= last => self.truncate(index),
            Some(last) if index != last.saturating_add(1) => self.clear(),
            _ => {}
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.entries.len() > self.limits.entries
            || (self.bytes > self.limits.bytes && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    /// Drop the entries at `index` and after (the log is truncated there).
    pub(super) fn truncate(&mut self, index: u64) {
        while self.last().is_some_and(|last| last >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Drop the entries up to and including `index` (the log is purged up to there).
    pub(super) fn purge(&mut self, index: u64) {
        while self.first().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    /// The entries with index in `start..end` (`end` exclusive), if the cache holds that whole range;
    /// `None` when the log store must read it from RocksDB. Only bounded ranges are answered here: a
    /// range to the end of the log is RocksDB's to answer, so no answer depends on the cache ending
    /// where the log ends.
    pub(super) fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let (first, last) = (self.first()?, self.last()?);
        if start < first || end > last.saturating_add(1) {
            return None;
        }
        if start >= end {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Command, Request};
    use crate::typeconfig::LogId;
    use openraft::{CommittedLeaderId, EntryPayload};
    use std::sync::Arc;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Arc::new(Request {
                now_ms: index,
                cmd: Command::Batch(Vec::new()),
            })),
        }
    }

    fn cache(entries: usize, bytes: usize) -> LogCache {
        LogCache::new(Limits { entries, bytes })
    }

    fn indexes(got: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        got.map(|v| {
            v.iter()
                .map(|e| (e.log_id.index, e.log_id.leader_id.term))
                .collect()
        })
    }

    #[test]
    fn a_range_inside_the_cache_is_answered_and_one_reaching_outside_it_is_not() {
        let mut c = cache(100, 1 << 20);
        assert_eq!(indexes(c.get(1, 2)), None, "an empty cache answers nothing");
        for i in 5..=9 {
            c.push(entry(i, 1), 10);
        }
        assert_eq!(indexes(c.get(6, 8)), Some(vec![(6, 1), (7, 1)]));
        assert_eq!(indexes(c.get(5, 10)).map(|v| v.len()), Some(5));
        assert_eq!(indexes(c.get(9, 9)), Some(vec![]));
        assert_eq!(
            indexes(c.get(8, 13)),
            None,
            "past the newest cached entry RocksDB answers"
        );
        assert_eq!(indexes(c.get(4, 6)), None, "index 4 is only in RocksDB");
        assert_eq!(indexes(c.get(8, 11)), None, "index 10 was never cached");
    }

    #[test]
    fn an_overwritten_suffix_is_replaced_and_a_gap_starts_the_cache_anew() {
        let mut c = cache(100, 1 << 20);
        for i in 1..=5 {
            c.push(entry(i, 1), 10);
        }
        // A new leader's entries overwrite 4 and 5.
        c.push(entry(4, 2), 10);
        assert_eq!(
            indexes(c.get(1, 5)),
            Some(vec![(1, 1), (2, 1), (3, 1), (4, 2)])
        );
        assert_eq!(c.bytes, 40);
        // A snapshot moved the log on: 100 follows nothing cached.
        c.push(entry(100, 2), 10);
        assert_eq!(indexes(c.get(100, 101)), Some(vec![(100, 2)]));
        assert_eq!(indexes(c.get(4, 5)), None);
        assert_eq!(c.bytes, 10);
    }

    #[test]
    fn truncate_and_purge_drop_exactly_their_entries() {
        let mut c = cache(100, 1 << 20);
        for i in 1..=10 {
            c.push(entry(i, 1), 10);
        }
        c.truncate(8);
        assert_eq!(indexes(c.get(1, 8)).map(|v| v.len()), Some(7));
        c.purge(3);
        assert_eq!(indexes(c.get(3, 4)), None);
        assert_eq!(
            indexes(c.get(4, 8)),
            Some(vec![(4, 1), (5, 1), (6, 1), (7, 1)])
        );
        assert_eq!(c.bytes, 40);
        c.purge(50);
        assert_eq!(indexes(c.get(7, 8)), None);
        assert_eq!(c.bytes, 0);
    }

    #[test]
    fn the_oldest_entries_go_first_past_either_limit() {
        let mut c = cache(3, 1 << 20);
        for i in 1..=5 {
            c.push(entry(i, 1), 10);
        }
        assert_eq!(indexes(c.get(2, 6)), None);
        assert_eq!(indexes(c.get(3, 6)).map(|v| v.len()), Some(3));

        let mut c = cache(100, 25);
        for i in 1..=5 {
            c.push(entry(i, 1), 10);
        }
        assert_eq!(indexes(c.get(4, 6)).map(|v| v.len()), Some(2));
        assert_eq!(indexes(c.get(3, 6)), None);
        // An entry larger than the whole budget is still kept alone (it is the newest).
        c.push(entry(6, 1), 1000);
        assert_eq!(indexes(c.get(6, 7)), Some(vec![(6, 1)]));
        assert_eq!(c.bytes, 1000);
    }
}
