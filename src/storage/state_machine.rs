//! The replicated state machine as openraft sees it: the pure [`model::State`] in memory, its snapshots
//! in files (`snapshot_files.rs`), and the events each applied batch produced, handed to the
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

use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::mpsc::UnboundedSender;

use super::snapshot_files::{self, SnapshotFiles};
use super::{encode, AuditGap, AuditLog, Db, Error};
use crate::audit::watch::History;
use crate::model::{self, Effects, EntryMeta, Event};
use crate::typeconfig::SnapshotFile;
use crate::typeconfig::{
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

/// A snapshot's stored bytes (openraft's meta, then the model's bytes as a length-prefixed sequence:
/// the format of a snapshot file), for seeding a data directory from a backup.
pub(super) fn encoded_snapshot(meta: SnapshotMeta, data: Vec<u8>) -> Vec<u8> {
    let mut out = encode(&meta);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&data);
    out
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
    /// `chaos_break = "lose-grants"`: a deliberate bug for the chaos suite's own tests.
    lose_grants: bool,
    data: Arc<RwLock<SmData>>,
    snapshots: Arc<SnapshotFiles>,
    audit: AuditLog,
    events: UnboundedSender<AppliedEvents>,
    watch: WatchFeed,
    /// A snapshot is being received or installed and is not on disk yet; shared with the log
    /// store, which then purges no further than the snapshot on disk (issue 24 item 6).
    receiving: Arc<std::sync::atomic::AtomicBool>,
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
    /// Switch on `chaos_break = "lose-grants"` (before the store is handed to Raft): every node
    /// answers one acquire in four as if applied but leaves it out of its state and audit log — a
    /// state machine that acknowledges writes it then loses.
    pub fn chaos_lose_grants(&mut self) {
        self.lose_grants = true;
    }

    pub(super) fn open(
        db: Arc<Db>,
        dir: &Path,
        events: UnboundedSender<AppliedEvents>,
        watch_history: usize,
    ) -> Result<Self, Error> {
        let mut data = SmData::default();
        let snapshots = SnapshotFiles::open(db.clone(), dir)?;
        if let Some(path) = snapshots.current()? {
            let (meta, state) = snapshot_files::read(&path)?;
            data.state = state;
            data.last_applied = meta.last_log_id;
            data.membership = meta.last_membership;
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
            lose_grants: false,
            data: Arc::new(RwLock::new(data)),
            snapshots: Arc::new(snapshots),
            audit,
            events,
            watch: WatchFeed {
                history: Arc::new(std::sync::Mutex::new(history)),
                head: Arc::new(tokio::sync::watch::channel(head).0),
            },
            receiving: Default::default(),
        })
    }

    /// The flag the log store reads before it purges (see `receiving`).
    pub(super) fn receiving(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.receiving.clone()
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
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    /// On a blocking thread: encoding and syncing a large state takes seconds (650 MB at a million
    /// leases), which on a runtime worker would stall half of a two-core node's async work.
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.build_snapshot_blocking())
            .await
            .map_err(|e| {
                StorageIOError::write_snapshot(
                    None,
                    &Error::Corrupt(format!("the snapshot build stopped: {e}")),
                )
            })?
    }
}

impl StateMachineStore {
    fn build_snapshot_blocking(&self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        let io_err = |e: &dyn std::fmt::Display| {
            StorageIOError::write_snapshot(None, &Error::Corrupt(e.to_string()))
        };
        let (tmp, file) = self
            .snapshots
            .create_temp("build")
            .map_err(|e| io_err(&e))?;
        let meta = {
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
            // Encoded into the file under the read lock, straight from the state: applies wait while
            // it is written (to the page cache; the fsync comes after), and no copy of the state or
            // of its bytes is made.
            if let Err(e) = snapshot_files::write(&file, &meta, &sm.state) {
                drop(sm);
                let _ = std::fs::remove_file(&tmp);
                return Err(io_err(&e).into());
            }
            meta
        };
        let write_err = |e: &Error| StorageIOError::write_snapshot(Some(meta.signature()), e);
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let snapshot = self
            .snapshots
            .commit(&tmp, &file, &meta)
            .map_err(|e| write_err(&e))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "built snapshot");
        metrics::histogram!("warrant_snapshot_build_duration_seconds").record(started.elapsed());
        metrics::gauge!("warrant_snapshot_size_bytes").set(bytes as f64);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(snapshot),
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
                        let response = if crate::CHAOS_MODES && self.lose_grants {
                            apply_losing_grants(&mut sm.state, at, request, &mut fx)
                        } else {
                            sm.state.apply(at, request, &mut fx)
                        };
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError> {
        // Until a snapshot is on disk again, the log keeps what the durable one does not cover.
        self.receiving
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let io_err = |e: &Error| StorageIOError::write_snapshot(None, e);
        // What an abandoned reception left is not needed; a reception a minute old without a
        // write is abandoned (a chunk that slow fails `install_snapshot_timeout` long before).
        // A newer leader's reception may start while the previous one's file is being installed:
        // that file stays (removing it made the install read a deleted file and stopped Raft).
        self.snapshots
            .remove_temps("recv", std::time::Duration::from_secs(60))
            .map_err(|e| io_err(&e))?;
        let (path, file) = self.snapshots.create_temp("recv").map_err(|e| io_err(&e))?;
        Ok(Box::new(SnapshotFile::new(file, path)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError> {
        metrics::counter!("warrant_snapshot_installed_total").increment(1);
        let read_err = |e: &dyn std::fmt::Display| {
            StorageIOError::read_snapshot(Some(meta.signature()), &Error::Corrupt(e.to_string()))
        };
        let mut path = snapshot.path().to_path_buf();
        let mut file = snapshot.finish().await.map_err(|e| read_err(&e))?;
        let (received, state) = snapshot_files::read(&path).map_err(|e| read_err(&e))?;
        if received != *meta {
            // The leader sends the file and its meta together, so they never differ; if they did,
            // the meta openraft installs is the one to store.
            let _ = std::fs::remove_file(&path);
            let (tmp, rewritten) = self
                .snapshots
                .create_temp("recv")
                .map_err(|e| read_err(&e))?;
            snapshot_files::write(&rewritten, meta, &state).map_err(|e| read_err(&e))?;
            (path, file) = (tmp, rewritten);
        }
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
        #[cfg(debug_assertions)]
        crate::failpoint::pause("WARRANT_TEST_PAUSE_BEFORE_SNAPSHOT_DURABLE_MS").await;
        self.snapshots
            .commit(&path, &file, meta)
            .map_err(|e| write_err(&e))?;
        self.receiving
            .store(false, std::sync::atomic::Ordering::SeqCst);
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
        let read_err = |e: &dyn std::fmt::Display| {
            StorageIOError::read_snapshot(None, &Error::Corrupt(e.to_string()))
        };
        let Some(mut file) =
            snapshot_files::open_current(&self.snapshots).map_err(|e| read_err(&e))?
        else {
            return Ok(None);
        };
        let meta = snapshot_files::read_meta(&mut file)
            .await
            .map_err(|e| read_err(&e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
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

/// `chaos_break = "lose-grants"`: the acquires chosen by `(index + position) % 4 == 0` are answered
/// as if applied (on a copy of the state as it is at their position) but never applied; every other
/// command is applied and answered as usual. The choice depends on the entry only, so every node
/// loses the same ones (also when replaying its log).
fn apply_losing_grants(
    state: &mut model::State,
    at: EntryMeta,
    request: &model::Request,
    fx: &mut Effects,
) -> model::Response {
    use model::{Command, Request, Response};
    let lost = |pos: usize, c: &Command| {
        matches!(c, Command::Acquire(_) | Command::AcquireWithin { .. })
            && (at.index as usize + pos) % 4 == 0
    };
    let one = |state: &mut model::State, pos: usize, cmd: &Command, fx: &mut Effects| {
        let req = Request {
            now_ms: request.now_ms,
            cmd: cmd.clone(),
        };
        if lost(pos, cmd) {
            // The entry's bookkeeping (index, time) still happens.
            state.apply(
                at,
                &Request {
                    now_ms: request.now_ms,
                    cmd: Command::Batch(Vec::new()),
                },
                fx,
            );
            state.clone().apply(at, &req, &mut Effects::default())
        } else {
            state.apply(at, &req, fx)
        }
    };
    match &request.cmd {
        Command::Batch(cmds) => Response::Batch(
            cmds.iter()
                .enumerate()
                .map(|(i, c)| one(state, i, c, fx))
                .collect(),
        ),
        cmd => one(state, 0, cmd, fx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lose_grants_answers_granted_but_keeps_neither_the_lease_nor_its_audit_record() {
        use model::{AcquireCmd, AcquireOutcome, Command, Request, Response};
        let acquire = |id: &str| Request {
            now_ms: 1_000,
            cmd: Command::Acquire(AcquireCmd {
                request_id: model::RequestId::parse(id).unwrap(),
                resource: model::ResourcePath::parse("chaos/r").unwrap(),
                principal: model::Principal::parse("agent/a").unwrap(),
                instance: model::InstanceId::parse("i").unwrap(),
                ttl_ms: 10_000,
                intent: model::Intent::new("t", Default::default()).unwrap(),
                task_key: None,
                wait_ms: None,
                takeover: false,
                defaults: Default::default(),
            }),
        };
        let mut state = model::State::default();
        let at = |index| EntryMeta { index, term: 1 };
        // Index 4, position 0: lost.
        let mut fx = Effects::default();
        let r = apply_losing_grants(&mut state, at(4), &acquire("r1"), &mut fx);
        let Response::Acquire(AcquireOutcome::Granted(lost)) = r else {
            panic!("{r:?}")
        };
        let path = model::ResourcePath::parse("chaos/r").unwrap();
        assert!(state.resource(&path).is_none_or(|v| v.holder.is_none()));
        assert!(fx.audit.is_empty(), "no audit record of the lost grant");
        // Index 5: applied, and it hands out the lost grant's token again.
        let mut fx = Effects::default();
        let r = apply_losing_grants(&mut state, at(5), &acquire("r2"), &mut fx);
        let Response::Acquire(AcquireOutcome::Granted(kept)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(kept.lease.token, lost.lease.token);
        assert_eq!(
            state
                .resource(&path)
                .and_then(|v| v.holder)
                .map(|l| l.token),
            Some(kept.lease.token)
        );
        assert!(!fx.audit.is_empty());

        // In a batch only the chosen acquire is lost; the others are answered as really applied.
        let mut state = model::State::default();
        let batch = Request {
            now_ms: 1_000,
            cmd: Command::Batch(vec![acquire("b1").cmd, acquire("b2").cmd]),
        };
        let r = apply_losing_grants(&mut state, at(8), &batch, &mut Effects::default());
        let Response::Batch(answers) = r else {
            panic!("{r:?}")
        };
        assert!(matches!(
            &answers[0],
            Response::Acquire(AcquireOutcome::Granted(_))
        ));
        let Response::Acquire(AcquireOutcome::Granted(second)) = &answers[1] else {
            panic!("the kept acquire finds the resource free: {:?}", answers[1])
        };
        assert_eq!(
            state
                .resource(&path)
                .and_then(|v| v.holder)
                .map(|l| l.token),
            Some(second.lease.token)
        );
    }

    #[test]
    fn a_snapshot_file_has_the_format_a_restore_seeds_and_reads_back() {
        let mut state = model::State::default();
        state.observe(EntryMeta { index: 1, term: 3 });
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 7)),
            last_membership: StoredMembership::default(),
            snapshot_id: "3-7-x".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.snap");
        let file = std::fs::File::create(&path).unwrap();
        snapshot_files::write(&file, &meta, &state).unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written, encoded_snapshot(meta.clone(), state.to_snapshot()));
        let (back_meta, back) = snapshot_files::read(&path).unwrap();
        assert_eq!((back_meta, back), (meta.clone(), state.clone()));
        assert_eq!(snapshot_files::read_meta_from(&written[..]).unwrap(), meta);
        // Cut short or with bytes after it, it is refused.
        std::fs::write(&path, &written[..written.len() - 1]).unwrap();
        assert!(snapshot_files::read(&path).is_err());
        let mut longer = written.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        let err = snapshot_files::read(&path).unwrap_err().to_string();
        assert!(err.contains("bytes after the state"), "{err}");
        // A damaged length is an error, not an allocation of that size.
        let meta_len = encode(&meta).len();
        let mut huge = written.clone();
        huge[meta_len..meta_len + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        let err = snapshot_files::read(&path).unwrap_err().to_string();
        assert!(err.contains("claims 1099511627776 bytes"), "{err}");
        let mut inner = state.to_snapshot();
        inner.extend_from_slice(&[0; 64]);
        assert!(model::State::read_snapshot(&inner[..], 16).is_err());
    }
}
