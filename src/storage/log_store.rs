//! The Raft log and vote in RocksDB (`logs` keyed by big-endian index, `meta` for vote, committed and
//! last purged).
//!
//! Group commit: `append` writes its batch to RocksDB at once (readable, not yet durable) and hands
//! openraft's callback to one flusher thread, which fsyncs the WAL once for everything queued behind
//! it and only then completes the callbacks, in order. openraft acknowledges nothing before its
//! callback, so every acknowledged entry is on disk (DESIGN rule 5), while the Raft core never waits
//! for a disk and many appends share one fsync. The vote, truncation and purge are written synced.
//!
//! Reads of recent entries (replication, apply) are answered from an in-memory cache of the newest
//! entries ([`LogCache`]) that holds nothing RocksDB does not; older ones are read from RocksDB.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode};

use super::log_cache::{Limits, LogCache};
use super::{cf, decode, encode, sync_write, Db, CF_LOGS, CF_META};
use crate::typeconfig::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// How many of the newest entries the cache keeps: enough for every entry a follower that keeps up
/// has yet to receive and every committed entry not yet applied (tens under the benchmark's load; a
/// batch entry of a busy leader carries a few hundred commands), and small beside a node's memory
/// budget (decoded entries take two to three times their encoded size).
const CACHE_LIMITS: Limits = Limits {
    entries: 1024,
    bytes: 16 * 1024 * 1024,
};

/// RocksDB-backed Raft log storage; cheap to clone (shares the database, the cache and the flusher).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    cache: Arc<std::sync::Mutex<LogCache>>,
    flusher: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
    /// Set by the state machine while a snapshot is being received or installed and not yet on
    /// disk ([`super::StateMachineStore`]): purges then go no further than the snapshot on disk.
    receiving: Arc<std::sync::atomic::AtomicBool>,
}

/// Fsync the WAL for every queued append, then complete their callbacks in order. Ends when every
/// `LogStore` is dropped.
fn run_flusher(db: Arc<Db>, queue: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = queue.recv() {
        let mut waiting = vec![first];
        waiting.extend(queue.try_iter());
        let started = std::time::Instant::now();
        let synced = db.flush_wal(true);
        metrics::histogram!("warrant_storage_fsync_duration_seconds").record(started.elapsed());
        metrics::counter!("warrant_storage_fsync_entries_total").increment(waiting.len() as u64);
        for callback in waiting {
            callback.log_io_completed(
                synced
                    .clone()
                    .map_err(|e| std::io::Error::other(e.to_string())),
            );
        }
    }
}

/// `meta` key: a purge `purge` held back while a snapshot was installed (see `finish_held_purge`).
const PURGE_HELD: &[u8] = b"purge_held";

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    pub(super) fn new(db: Arc<Db>) -> Self {
        let (flusher, queue) = std::sync::mpsc::channel();
        let flush_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("warrant-log-fsync".into())
            .spawn(move || run_flusher(flush_db, queue))
            .expect("spawning the log fsync thread at start-up");
        // Joined before the process exits (`wait_until_all_closed`): RocksDB's thread-exit cleanup
        // must not race its static teardown either.
        super::exit_join(thread);
        Self {
            db,
            cache: Arc::new(std::sync::Mutex::new(LogCache::new(CACHE_LIMITS))),
            flusher,
            receiving: Default::default(),
        }
    }

    /// Share the state machine's "snapshot on its way" flag (see [`LogStore::purge`]).
    pub(super) fn with_receiving(mut self, receiving: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.receiving = receiving;
        self
    }

    /// At start (openraft reads the log state once, before anything else): finish a purge that
    /// was held while a snapshot was installed (`purge_held`, see `purge`), as far as the snapshot
    /// on disk now covers it. After such an install the log may hold entries below the new
    /// snapshot, then a gap, then entries above it, and no purge point at all if the node had no
    /// snapshot before: the purge point moves to the snapshot and everything up to it goes, so
    /// the log is contiguous after the snapshot again.
    fn finish_held_purge(&self) -> Result<(), StorageError> {
        let Some(held) = self.meta_get::<LogId>(PURGE_HELD)? else {
            return Ok(());
        };
        let durable = super::snapshot_files::durable_last_log_id(&self.db).map_err(read_err)?;
        let purged: Option<LogId> = self.meta_get(b"last_purged")?;
        if let Some(upto) = durable.map(|d| if d.index < held.index { d } else { held }) {
            if purged.is_none_or(|p| p.index < upto.index) {
                tracing::info!(
                    to = upto.index,
                    "finishing a log purge held while a snapshot was installed"
                );
                self.meta_put(b"last_purged", &upto, true)?;
                self.db
                    .delete_range_cf(cf(&self.db, CF_LOGS), key(0), key(upto.index + 1))
                    .map_err(write_err)?;
            }
        }
        self.db
            .delete_cf_opt(cf(&self.db, CF_META), PURGE_HELD, &sync_write())
            .map_err(write_err)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LogCache> {
        // The cache is changed only by a few non-panicking VecDeque operations: a poisoned lock
        // still guards a consistent cache.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn meta_get<T: serde::de::DeserializeOwned>(
        &self,
        k: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.db.get_cf(cf(&self.db, CF_META), k).map_err(read_err)? {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn meta_put<T: serde::Serialize>(
        &self,
        k: &[u8],
        v: &T,
        sync: bool,
    ) -> Result<(), StorageError> {
        let wo = if sync {
            sync_write()
        } else {
            rocksdb::WriteOptions::default()
        };
        self.db
            .put_cf_opt(cf(&self.db, CF_META), k, encode(v), &wo)
            .map_err(write_err)
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let mut it = self
            .db
            .iterator_cf(cf(&self.db, CF_LOGS), IteratorMode::End);
        match it.next() {
            Some(Ok((_, v))) => Ok(Some(decode::<Entry>(&v).map_err(read_err)?.log_id)),
            Some(Err(e)) => Err(read_err(e)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i.saturating_add(1)),
            Bound::Excluded(&i) => Some(i),
            Bound::Unbounded => None,
        };
        if let Some(cached) = end.and_then(|end| self.cache().get(start, end)) {
            metrics::counter!("warrant_storage_log_reads_total", "from" => "cache").increment(1);
            return Ok(cached);
        }
        metrics::counter!("warrant_storage_log_reads_total", "from" => "rocksdb").increment(1);
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            cf(&self.db, CF_LOGS),
            IteratorMode::From(&key(start), Direction::Forward),
        );
        for item in it {
            let (k, v) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                read_err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "log key is not 8 bytes",
                ))
            })?);
            if !range.contains(&index) {
                break;
            }
            out.push(decode::<Entry>(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.finish_held_purge()?;
        let last_purged: Option<LogId> = self.meta_get(b"last_purged")?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.meta_put(b"vote", vote, true)
            .map_err(|e| StorageIOError::write_vote(&std::io::Error::other(e.to_string())).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.meta_get(b"vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: after a crash openraft learns the commit index from the leader again; this only
        // lets a restarted node re-apply its own committed entries without waiting for it.
        self.meta_put(b"committed", &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta_get::<Option<LogId>>(b"committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let logs = cf(&self.db, CF_LOGS);
        let mut batch = rocksdb::WriteBatch::default();
        let mut written = Vec::new();
        for entry in entries {
            let bytes = encode(&entry);
            batch.put_cf(logs, key(entry.log_id.index), &bytes);
            written.push((entry, bytes.len()));
        }
        // Not synced here: readable now, durable when the flusher's fsync completes the callback.
        if let Err(e) = self.db.write(batch) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(write_err(e));
        }
        // Cached only once RocksDB has them: the cache never holds an entry the log does not.
        let mut cache = self.cache();
        for (entry, size) in written {
            cache.push(entry, size);
        }
        drop(cache);
        if let Err(std::sync::mpsc::SendError(callback)) = self.flusher.send(callback) {
            // The flusher is gone only if the thread panicked: sync inline rather than lose the entry.
            let synced = self.db.flush_wal(true);
            callback.log_io_completed(synced.map_err(|e| std::io::Error::other(e.to_string())));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Out of the cache before out of RocksDB (the cache never holds an entry the log does not).
        self.cache().truncate(log_id.index);
        let logs = cf(&self.db, CF_LOGS);
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(logs, key(log_id.index), key(u64::MAX));
        batch.delete_cf(logs, key(u64::MAX));
        self.db.write_opt(batch, &sync_write()).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // openraft asks to purge up to a snapshot it has handed to the state machine, which may
        // still be installing it (issue 24 item 6): a kill -9 before that snapshot is on disk would
        // leave the durable snapshot behind the purged log, a gap no restart can fill. Purge no
        // further than the snapshot on disk; the rest goes with a later purge.
        let durable = super::snapshot_files::durable_last_log_id(&self.db).map_err(read_err)?;
        let receiving = self.receiving.load(std::sync::atomic::Ordering::SeqCst);
        let held = match durable {
            Some(d) if d.index < log_id.index => Some(d),
            Some(_) => None,
            // No snapshot on disk yet and one on its way: nothing may go.
            None if receiving => {
                self.meta_put(PURGE_HELD, &log_id, true)?;
                return Ok(());
            }
            None => None,
        };
        let log_id = match held {
            Some(d) => {
                tracing::debug!(
                    asked = log_id.index,
                    durable = d.index,
                    "log purge held at the snapshot on disk"
                );
                // Finished at the next start, once the snapshot being installed is on disk.
                self.meta_put(PURGE_HELD, &log_id, true)?;
                d
            }
            None => log_id,
        };
        if self
            .meta_get::<LogId>(b"last_purged")?
            .is_some_and(|done| done.index >= log_id.index)
        {
            return Ok(());
        }
        // Record the purge point first, so a crash in between leaves extra entries, never a gap.
        self.meta_put(b"last_purged", &log_id, true)?;
        self.cache().purge(log_id.index);
        let logs = cf(&self.db, CF_LOGS);
        self.db
            .delete_range_cf(logs, key(0), key(log_id.index + 1))
            .map_err(write_err)
    }
}
