//! The replicated state machine as openraft sees it: the pure [`model::State`] in memory, its snapshots
//! in RocksDB (`snapshot` column family), and the events each applied batch produced, handed to the
//! server (to wake waiting acquires and to keep the leader's lease clock in step).
//!
//! At start the last snapshot is loaded; openraft then re-applies the committed log after it.
//!
//! The audit chain's records live in their own column family (`AuditLog`), written in each applied
//! batch under the state's lock; the model keeps only the chain's head. They are derived from the
//! committed log, so a replay rewrites exactly the same records. Snapshots carry the state only (so
//! building, sending and loading one stays O(state), not O(history)): a follower that installs one
//! records the audit records it now lacks as an `AuditGap`, and the server fetches them from peers,
//! checking that they link to the chain head the replicated state names.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use rocksdb::DB;
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedSender;

use super::{cf, decode, encode, sync_write, AuditGap, AuditLog, Error, CF_SNAPSHOT};
use crate::audit::watch::History;
use crate::model::{self, Effects, EntryMeta, Event};
use crate::raft::{
    CommandResponse, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

/// The events produced by one applied batch of entries, in log order.
pub type AppliedEvents = Vec<Event>;

/// What the state machine holds besides the model: where it is in the log.
#[derive(Default)]
pub struct SmData {
    pub state: model::State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// A snapshot as stored on disk and sent to followers: openraft's meta plus the model's own bytes
/// (which start with the model's snapshot format version), bincode-encoded as the pair. Read back
/// borrowing `data` from the stored bytes, and written by `encode_stored` straight from the state:
/// a snapshot is never copied whole once it exists.
#[derive(Deserialize)]
struct StoredSnapshot<'a> {
    meta: SnapshotMeta,
    #[serde(borrow)]
    data: &'a [u8],
}

impl<'a> StoredSnapshot<'a> {
    fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        bincode::deserialize(bytes).map_err(|e| Error::Corrupt(e.to_string()))
    }
}

/// The stored bytes of a snapshot: `meta`, then the model's bytes as `write` appends them, with the
/// length prefix bincode gives a byte sequence (patched in once the length is known).
fn encode_stored(meta: &SnapshotMeta, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = encode(meta);
    let len_at = out.len();
    out.extend_from_slice(&[0; 8]);
    write(&mut out);
    let len = (out.len() - len_at - 8) as u64;
    out[len_at..len_at + 8].copy_from_slice(&len.to_le_bytes());
    out
}

/// A snapshot's stored bytes, for seeding a data directory from a backup.
pub(super) fn encoded_snapshot(meta: SnapshotMeta, data: Vec<u8>) -> Vec<u8> {
    encode_stored(&meta, |out| out.extend_from_slice(&data))
}

/// Read access to the state machine for the server (queries, leader duties).
#[derive(Clone)]
pub struct SmReader(Arc<RwLock<SmData>>);

impl SmReader {
    /// Read the current state. Hold the guard briefly: applies wait for it.
    pub fn read(&self) -> RwLockReadGuard<'_, SmData> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// openraft's state machine and snapshot builder; cheap to clone.
#[derive(Clone)]
pub struct StateMachineStore {
    data: Arc<RwLock<SmData>>,
    /// Serialises snapshot saves: openraft builds snapshots in a task of their own, which may finish
    /// after a newer snapshot was installed.
    snapshot_save: Arc<std::sync::Mutex<()>>,
    db: Arc<DB>,
    audit: AuditLog,
    events: UnboundedSender<AppliedEvents>,
    watch: WatchFeed,
}

/// The watch history and a signal of its head revision, shared by the state machine (which fills
/// it in apply) and the server's watchers.
#[derive(Clone)]
pub struct WatchFeed {
    history: Arc<std::sync::Mutex<History>>,
    head: Arc<tokio::sync::watch::Sender<u64>>,
}

impl WatchFeed {
    /// Hold the history briefly: apply waits for it.
    pub fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes whenever the head revision moves.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Tell the watchers the head moved to `head`.
    fn publish(&self, head: u64) {
        self.head.send_replace(head);
    }
}

impl StateMachineStore {
    pub(super) fn open(
        db: Arc<DB>,
        events: UnboundedSender<AppliedEvents>,
        watch_history: usize,
    ) -> Result<Self, Error> {
        let mut data = SmData::default();
        if let Some(bytes) = db.get_pinned_cf(cf(&db, CF_SNAPSHOT), b"current")? {
            let snap = StoredSnapshot::decode(&bytes)?;
            data.state = model::State::from_snapshot(snap.data)
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            data.last_applied = snap.meta.last_log_id;
            data.membership = snap.meta.last_membership.clone();
        }
        let audit = AuditLog::new(db.clone());
        // Records past the snapshot's head come from entries the replay will apply again (and write
        // again, identically); drop them so the log never holds what the state does not account for.
        let chain = data.state.audit_chain();
        audit.truncate_after(chain.len())?;
        let mut gap = audit.gap()?;
        if gap.is_some_and(|g| g.to > chain.len()) {
            // The install that recorded it did not complete: its snapshot is not the one loaded.
            audit.set_gap(None)?;
            gap = None;
        }
        if !chain.is_empty() {
            match audit.get(chain.len())? {
                Some(last) if last.hash == chain.head() => {}
                // Still to be fetched from peers after a snapshot install.
                None if gap.is_some_and(|g| g.to == chain.len()) => {}
                _ => {
                    return Err(Error::Corrupt(format!(
                        "the audit log does not reach the snapshot's chain head (record {}); \
                         wipe this node's data directory and let it rejoin from its peers",
                        chain.len()
                    )))
                }
            }
        }
        let history = rebuild_history(&audit, chain.len(), gap, watch_history)?;
        let head = history.head();
        Ok(Self {
            data: Arc::new(RwLock::new(data)),
            snapshot_save: Default::default(),
            db,
            audit,
            events,
            watch: WatchFeed {
                history: Arc::new(std::sync::Mutex::new(history)),
                head: Arc::new(tokio::sync::watch::channel(head).0),
            },
        })
    }

    /// The watch history (lease lifecycle events of the latest audit records).
    pub fn watch_feed(&self) -> WatchFeed {
        self.watch.clone()
    }

    /// This node's audit log (for queries, export and verification).
    pub fn audit_log(&self) -> AuditLog {
        self.audit.clone()
    }

    /// A handle for reading the state from the server.
    pub fn reader(&self) -> SmReader {
        SmReader(self.data.clone())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SmData> {
        self.data
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, SmData> {
        self.data
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The stored snapshot's meta and its stored bytes (as sent to a follower).
    fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let bytes = self
            .db
            .get_cf(cf(&self.db, CF_SNAPSHOT), b"current")
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        match bytes {
            Some(b) => {
                let meta = StoredSnapshot::decode(&b)
                    .map_err(|e| StorageIOError::read_snapshot(None, &e))?
                    .meta;
                Ok(Some((meta, b)))
            }
            None => Ok(None),
        }
    }

    /// Store `bytes` (a snapshot with `meta`, as `encode_stored` writes it) as the current snapshot
    /// unless a newer one is already stored (a build that finished after an install must not
    /// replace it, or a restart would miss the purged log between).
    fn save_snapshot(&self, meta: &SnapshotMeta, bytes: &[u8]) -> Result<bool, StorageError> {
        let _guard = self.snapshot_save.lock().unwrap_or_else(|p| p.into_inner());
        let snapshots = cf(&self.db, CF_SNAPSHOT);
        let write_err =
            |e: rocksdb::Error| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        // The last log id of the stored snapshot is kept under its own key: checking it must not
        // read and decode the whole snapshot.
        if let Some(bytes) = self
            .db
            .get_cf(snapshots, b"current_last_log_id")
            .map_err(write_err)?
        {
            let stored: Option<LogId> =
                decode(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
            if stored > meta.last_log_id {
                return Ok(false);
            }
        }
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(snapshots, b"current", bytes);
        batch.put_cf(snapshots, b"current_last_log_id", encode(&meta.last_log_id));
        self.db.write_opt(batch, &sync_write()).map_err(write_err)?;
        Ok(true)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        let (meta, bytes) = {
            let sm = self.read();
            let id = match sm.last_applied {
                Some(l) => format!(
                    "{}-{}-{}",
                    l.leader_id.term,
                    l.index,
                    uuid::Uuid::new_v4().simple()
                ),
                None => format!("empty-{}", uuid::Uuid::new_v4().simple()),
            };
            let meta = SnapshotMeta {
                last_log_id: sm.last_applied,
                last_membership: sm.membership.clone(),
                snapshot_id: id,
            };
            // Encoded under the read lock straight from the state: applies wait while it is
            // written (half the time a clone of the state took), and no copy of the state is made.
            let bytes = encode_stored(&meta, |out| sm.state.write_snapshot(out));
            (meta, bytes)
        };
        // The snapshot's sync write also makes every earlier audit write durable (one WAL).
        self.save_snapshot(&meta, &bytes)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "built snapshot");
        metrics::histogram!("warrant_snapshot_build_duration_seconds").record(started.elapsed());
        metrics::gauge!("warrant_snapshot_size_bytes").set(bytes.len() as f64);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let sm = self.read();
        Ok((sm.last_applied, sm.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let started = std::time::Instant::now();
        let mut responses = Vec::new();
        let mut fx = Effects::default();
        {
            let mut sm = self.write();
            for entry in entries {
                let at = EntryMeta {
                    index: entry.log_id.index,
                    term: entry.log_id.leader_id.term,
                };
                sm.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => {
                        sm.state.observe(at);
                        responses.push(CommandResponse(None));
                    }
                    EntryPayload::Normal(ref request) => {
                        let response = sm.state.apply(at, request, &mut fx);
                        responses.push(CommandResponse(Some(response)));
                    }
                    EntryPayload::Membership(ref m) => {
                        sm.state.observe(at);
                        sm.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        responses.push(CommandResponse(None));
                    }
                }
            }
            // Under the write lock: whoever reads the state's audit head (a snapshot build, a
            // verification, a query) finds every record up to it in the log. Written before the
            // answers go out, so a caller that got its answer finds its record.
            if !fx.audit.is_empty() {
                self.audit
                    .write(&fx.audit)
                    .map_err(|e| StorageIOError::write(&e))?;
                let mut history = self.watch.history();
                for r in &fx.audit {
                    history.push(r);
                }
            }
        }
        if let Some(last) = fx.audit.last() {
            self.watch.publish(last.seq);
        }
        metrics::histogram!("warrant_sm_apply_duration_seconds").record(started.elapsed());
        metrics::counter!("warrant_sm_applied_entries_total").increment(responses.len() as u64);
        if !fx.events.is_empty() {
            // The receiver lives as long as the node; if it is gone the node is shutting down.
            let _ = self.events.send(fx.events);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        metrics::counter!("warrant_snapshot_installed_total").increment(1);
        let bytes = snapshot.into_inner();
        let read_err = |e: &dyn std::fmt::Display| {
            StorageIOError::read_snapshot(Some(meta.signature()), &Error::Corrupt(e.to_string()))
        };
        let (state, reencoded) = {
            let received = StoredSnapshot::decode(&bytes).map_err(|e| read_err(&e))?;
            let state = model::State::from_snapshot(received.data).map_err(|e| read_err(&e))?;
            // Stored as received unless its meta differs from the one openraft installs (the
            // leader sends both, so it never should).
            let reencoded = (received.meta != *meta)
                .then(|| encode_stored(meta, |out| out.extend_from_slice(received.data)));
            (state, reencoded)
        };
        // The snapshot names the audit chain's head, not its records: note the ones this node lacks
        // (before the snapshot is saved, so a restart never loads a state whose records are neither
        // here nor noted), and let the server fetch them from peers.
        let chain = state.audit_chain();
        let write_err = |e: &Error| StorageIOError::write_snapshot(Some(meta.signature()), e);
        let have = self
            .audit
            .last_seq()
            .map_err(|e| write_err(&e))?
            .min(chain.len());
        let from = match self.audit.gap().map_err(|e| write_err(&e))? {
            Some(old) => old.from.min(have + 1),
            None => have + 1,
        };
        if from <= chain.len() {
            let gap = AuditGap {
                from,
                to: chain.len(),
                hash_at_to: chain.head(),
            };
            self.audit.set_gap(Some(&gap)).map_err(|e| write_err(&e))?;
            tracing::info!(
                from,
                to = gap.to,
                "audit records to fetch from peers after a snapshot"
            );
        }
        let stored = reencoded.unwrap_or(bytes);
        self.save_snapshot(meta, &stored)?;
        drop(stored);
        let mut sm = self.write();
        sm.state = state;
        sm.last_applied = meta.last_log_id;
        sm.membership = meta.last_membership.clone();
        // The events between our head and the snapshot's are not here: watchers behind it resync.
        let head = sm.state.audit_chain().len();
        self.watch.history().reset(head);
        drop(sm);
        self.watch.publish(head);
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.load_snapshot()?.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

/// The watch history at start: the events of the last `capacity` records up to `head` that this
/// node holds (none from a gap still to be fetched).
fn rebuild_history(
    audit: &AuditLog,
    head: u64,
    gap: Option<AuditGap>,
    capacity: usize,
) -> Result<History, Error> {
    let mut from = head.saturating_sub(capacity as u64) + 1;
    if let Some(g) = gap {
        from = from.max(g.to + 1);
    }
    let mut history = History::new(capacity, from - 1);
    for r in audit.iter_range(from, head) {
        history.push(&r?);
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format data directories and backups already hold: bincode of the owned pair.
    #[derive(serde::Serialize)]
    struct OwnedStored {
        meta: SnapshotMeta,
        data: Vec<u8>,
    }

    #[test]
    fn a_snapshot_written_in_place_has_the_stored_format_and_reads_back_without_a_copy() {
        let mut state = model::State::default();
        state.observe(EntryMeta { index: 1, term: 3 });
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 7)),
            last_membership: StoredMembership::default(),
            snapshot_id: "3-7-x".into(),
        };
        let in_place = encode_stored(&meta, |out| state.write_snapshot(out));
        let owned = encode(&OwnedStored {
            meta: meta.clone(),
            data: state.to_snapshot(),
        });
        assert_eq!(in_place, owned);
        let back = StoredSnapshot::decode(&in_place).unwrap();
        assert_eq!(back.meta, meta);
        assert_eq!(model::State::from_snapshot(back.data).unwrap(), state);
        assert_eq!(encoded_snapshot(meta, state.to_snapshot()), owned);
        assert!(StoredSnapshot::decode(&in_place[..in_place.len() - 1]).is_err());
    }
}
