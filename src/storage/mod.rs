//! RocksDB storage: the Raft log, the vote, and the state machine's snapshots, in one database with
//! column families.
//!
//! Invariant (DESIGN rule 5): nothing is acknowledged before it is on disk. Log appends, truncations
//! and the vote are written with `sync = true` (fsync) before openraft is told they are durable; a
//! snapshot is synced before it replaces the previous one. The state machine itself is held in memory
//! and rebuilt at start from the last snapshot plus the committed log that follows it, so every
//! acknowledged grant, release and checkpoint survives `kill -9`.
//!
//! The audit records live in the `audit` column family ([`AuditLog`]). They are derived state like
//! the state machine: written without fsync as entries apply and re-derived by replay after a crash.
//!
//! The data directory records its format version, cluster name and node id; a node refuses to start
//! on another cluster's (or another node's) data. It also records the cluster's generated id
//! ([`ClusterId`]), which every Raft message carries: two clusters that share a name (a cluster and
//! the one restored from its backup, say) refuse each other's messages.

// openraft's traits fix the error type (`StorageError`, ~224 bytes); boxing it here would only add
// conversions at every trait boundary.
#![allow(clippy::result_large_err)]

mod audit_log;
pub mod backup;
pub mod files;
mod log_cache;
mod log_store;
pub(crate) mod snapshot_files;
mod standing;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, DB};

pub use crate::typeconfig::SnapshotFile;
pub use audit_log::{AuditGap, AuditLog};
pub use log_store::LogStore;
pub use standing::Standing;
pub use state_machine::{AppliedEvents, SmReader, StateMachineStore, WatchFeed};

/// On-disk format of the data directory. Bump when entries or snapshots change incompatibly.
/// 4: snapshots are files in `snapshots/` (3 kept the whole snapshot in the `snapshot` column family;
/// a version 3 directory is upgraded in place at open, and a version 3 build refuses a version 4 one
/// instead of starting from an empty state).
/// 5: audit records caused by access-token requests are written in audit format v2 (`via_token`),
/// which a version 4 build cannot read; a version 4 directory needs no conversion.
pub const DATA_FORMAT_VERSION: u32 = 5;
/// The oldest format this build opens (and upgrades); also the oldest backup it restores.
pub const OLDEST_DATA_FORMAT: u32 = 3;

const CF_META: &str = "meta";
const CF_LOGS: &str = "logs";
const CF_SNAPSHOT: &str = "snapshot";
const CF_AUDIT: &str = "audit";

/// Errors opening or checking the data directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the data directory {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("storage I/O failed: {0}")]
    Io(#[from] rocksdb::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    /// A stored audit record that does not decode; verifying the trail reports it as a break.
    #[error("audit record {seq}: {source}")]
    AuditRecord {
        seq: u64,
        source: crate::audit::AuditError,
    },
    #[error(
        "the data directory {path} belongs to cluster {found_cluster:?} node {found_node}, but this \
         config is cluster {cluster:?} node {node}; point data_dir at this node's own directory (or an \
         empty one to join afresh)"
    )]
    ForeignData {
        path: String,
        found_cluster: String,
        found_node: u64,
        cluster: String,
        node: u64,
    },
    #[error(
        "this node belongs to cluster id {ours}, the sender to cluster id {theirs}: nodes of two \
         different clusters (for example an old member of a cluster that was since restored from a \
         backup) must not exchange Raft messages; to move a node to this cluster, empty its data \
         directory and add it with `warrant cluster add-node`"
    )]
    OtherCluster { ours: String, theirs: String },
    #[error("a cluster id must be 1 to 64 characters of a-z, 0-9 and '-'; got {0:?}")]
    BadClusterId(String),
    #[error(
        "the data directory {path} has format version {found}, this build reads version {supported}; \
         run the Warrant version that wrote it"
    )]
    UnknownFormat {
        path: String,
        found: u32,
        supported: u32,
    },
}

/// The identity recorded in a data directory on first start.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub(crate) struct Identity {
    format: u32,
    cluster: String,
    node: u64,
}

/// A node's opened storage.
pub struct Opened {
    pub log: LogStore,
    pub sm: StateMachineStore,
    pub cluster_id: ClusterId,
    pub standing: Standing,
}

/// Open (creating if needed) the node's database and check it belongs to `cluster` / `node`. With
/// `joining_if_new` (every server), a new data directory is recorded as joining ([`Standing`])
/// before anything else is written to it, so no crash leaves a new directory that may vote.
pub fn open(
    dir: &Path,
    cluster: &str,
    node: u64,
    joining_if_new: bool,
    events: tokio::sync::mpsc::UnboundedSender<AppliedEvents>,
    watch_history: usize,
) -> Result<Opened, Error> {
    let db = open_db(dir)?;
    if joining_if_new && db.get_cf(cf(&db, CF_META), b"identity")?.is_none() {
        Standing::mark_joining(&db)?;
    }
    check_identity(&db, dir, cluster, node)?;
    let cluster_id = ClusterId::load(db.clone())?;
    let standing = Standing::load(db.clone())?;
    let sm = StateMachineStore::open(db.clone(), dir, events, watch_history)?;
    Ok(Opened {
        log: LogStore::new(db).with_receiving(sm.receiving()),
        sm,
        cluster_id,
        standing,
    })
}

const CLUSTER_ID_KEY: &[u8] = b"cluster-id";

/// The cluster's generated id, recorded in the data directory. The bootstrap node makes one when it
/// initialises a cluster, a restore derives one for the cluster it seeds, and any other node adopts
/// the id of the first Raft message it receives. From then on it refuses messages from any other id.
#[derive(Clone)]
pub struct ClusterId {
    db: Arc<Db>,
    known: Arc<std::sync::RwLock<Option<String>>>,
}

impl ClusterId {
    fn load(db: Arc<Db>) -> Result<Self, Error> {
        let known = match db.get_cf(cf(&db, CF_META), CLUSTER_ID_KEY)? {
            Some(bytes) => Some(
                String::from_utf8(bytes)
                    .map_err(|_| Error::Corrupt("the recorded cluster id is not UTF-8".into()))?,
            ),
            None => None,
        };
        Ok(Self {
            db,
            known: Arc::new(std::sync::RwLock::new(known)),
        })
    }

    /// A fresh random id for a new cluster.
    pub fn generate() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    /// The recorded id; `None` on a node that has not heard from its cluster yet.
    pub fn get(&self) -> Option<String> {
        self.known.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// [`Error::OtherCluster`] when an id is recorded and `id` is another; Ok otherwise (also when
    /// none is recorded: nothing is written).
    pub fn check(&self, id: &str) -> Result<(), Error> {
        check_cluster_id(id)?;
        match self.get() {
            Some(ours) if ours != id => Err(Error::OtherCluster {
                ours,
                theirs: id.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Record `id` (synced) unless an id is recorded already; [`Error::OtherCluster`] when the
    /// recorded one differs.
    pub fn adopt(&self, id: &str) -> Result<(), Error> {
        check_cluster_id(id)?;
        // Every Raft message gets here: the common case (already recorded) takes the read lock.
        if let Some(ours) = self
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
        {
            return if ours == id {
                Ok(())
            } else {
                Err(Error::OtherCluster {
                    ours: ours.to_string(),
                    theirs: id.to_string(),
                })
            };
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        match known.as_deref() {
            Some(ours) if ours == id => Ok(()),
            Some(ours) => Err(Error::OtherCluster {
                ours: ours.to_string(),
                theirs: id.to_string(),
            }),
            None => {
                write_cluster_id(&self.db, id)?;
                tracing::info!(cluster_id = id, "recorded the cluster id");
                *known = Some(id.to_string());
                Ok(())
            }
        }
    }
}

fn check_cluster_id(id: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::BadClusterId(id.to_string()))
    }
}

fn write_cluster_id(db: &DB, id: &str) -> Result<(), Error> {
    db.put_cf_opt(
        cf(db, CF_META),
        CLUSTER_ID_KEY,
        id.as_bytes(),
        &sync_write(),
    )?;
    Ok(())
}

/// A node's RocksDB database, shared by its stores. The last reference to go closes it (RocksDB
/// waits for its background work there) on whichever thread drops it: often the log's fsync
/// thread, which outlives the async runtime. See [`wait_until_all_closed`].
pub struct Db {
    db: DB,
    // Declared after `db`, so it is dropped after the database has closed.
    _open: OpenCount,
}

impl std::ops::Deref for Db {
    type Target = DB;

    fn deref(&self) -> &DB {
        &self.db
    }
}

/// Databases of this process not yet fully closed, and a condvar told when the count falls.
static OPEN_DBS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

/// One open database in [`OPEN_DBS`]; counted from its open until its drop.
struct OpenCount;

impl OpenCount {
    fn new() -> Self {
        *OPEN_DBS.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Self
    }
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        *OPEN_DBS.0.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        OPEN_DBS.1.notify_all();
    }
}

/// Block until every database this process opened has closed, or `timeout` passes (false then).
///
/// Call it before the process exits, after everything that holds a store has been dropped (for a
/// server, after its async runtime is dropped). RocksDB's static state is destroyed at exit; a
/// database still closing on another thread then aborts the process ("pthread lock: Invalid
/// argument"), turning a clean stop into a crash.
pub fn wait_until_all_closed(timeout: std::time::Duration) -> bool {
    let open = OPEN_DBS.0.lock().unwrap_or_else(|p| p.into_inner());
    let (open, waited) = OPEN_DBS
        .1
        .wait_timeout_while(open, timeout, |n| *n > 0)
        .unwrap_or_else(|p| p.into_inner());
    drop(open);
    if waited.timed_out() {
        return false;
    }
    // Every database has closed, so every thread in the list has left its work (a log fsync thread
    // ends when its database's stores are gone) and is at most finishing its exit: join them.
    let threads = std::mem::take(&mut *EXIT_JOINS.lock().unwrap_or_else(|p| p.into_inner()));
    for thread in threads {
        let _ = thread.join();
    }
    true
}

/// Threads that use a database, joined by [`wait_until_all_closed`].
static EXIT_JOINS: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Have [`wait_until_all_closed`] join `thread`, which must end once its database's users are gone.
fn exit_join(thread: std::thread::JoinHandle<()>) {
    EXIT_JOINS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(thread);
}

/// Open (creating if needed) the database with every column family.
fn open_db(dir: &Path) -> Result<Arc<Db>, Error> {
    files::private_dir(dir)
        .map_err(|e| Error::Corrupt(format!("cannot make {} private: {e}", dir.display())))?;
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // All memtables together stay under this; past it the largest is flushed. RocksDB's default is
    // 64 MiB per column family, twice over, which held the log, the audit trail and a whole
    // snapshot in memory at once (150 MiB of a node's RSS at 100,000 leases).
    opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
    // One block cache for every column family, index and filter blocks included. Left unset,
    // RocksDB gives each column family's table factory its own 32 MiB cache: up to 160 MiB per
    // node, filled by catch-up reads and audit exports and never given back.
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    opts.set_block_based_table_factory(&table_options(&cache));
    let cfs = [CF_META, CF_LOGS, CF_SNAPSHOT, CF_AUDIT]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, cf_options(name, &cache)));
    let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| Error::Open {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(Arc::new(Db {
        db,
        _open: OpenCount::new(),
    }))
}

/// Memory for all memtables of one node's database.
const MEMTABLE_BUDGET: usize = 32 << 20;

/// The block cache shared by all column families. Hot reads never reach it: recent log entries come
/// from the log cache and the state is in memory; it serves catch-up, audit queries and exports.
const BLOCK_CACHE_BYTES: usize = 16 << 20;

fn table_options(cache: &Cache) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table
}

fn cf_options(name: &str, cache: &Cache) -> Options {
    let mut opts = Options::default();
    opts.set_write_buffer_size(MEMTABLE_BUDGET / 2);
    opts.set_block_based_table_factory(&table_options(cache));
    if name == CF_SNAPSHOT {
        // A snapshot is one large value rewritten whole: keep it in blob files, out of the SST
        // compactions, and never compress what is read once.
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(64 << 10);
        opts.set_enable_blob_gc(true);
    }
    opts
}

fn check_identity(db: &DB, dir: &Path, cluster: &str, node: u64) -> Result<(), Error> {
    let meta = cf(db, CF_META);
    let path = dir.display().to_string();
    match db.get_cf(meta, b"identity")? {
        Some(bytes) => {
            let mut found: Identity = decode(&bytes)?;
            if !(OLDEST_DATA_FORMAT..=DATA_FORMAT_VERSION).contains(&found.format) {
                return Err(Error::UnknownFormat {
                    path,
                    found: found.format,
                    supported: DATA_FORMAT_VERSION,
                });
            }
            if found.cluster != cluster || found.node != node {
                return Err(Error::ForeignData {
                    path,
                    found_cluster: found.cluster,
                    found_node: found.node,
                    cluster: cluster.to_string(),
                    node,
                });
            }
            if found.format < DATA_FORMAT_VERSION {
                // Recorded before anything is converted: from here on an older build refuses this
                // directory rather than misreading it.
                tracing::info!(
                    path,
                    from = found.format,
                    to = DATA_FORMAT_VERSION,
                    "upgrading the data directory's format"
                );
                found.format = DATA_FORMAT_VERSION;
                db.put_cf_opt(meta, b"identity", encode(&found), &sync_write())?;
            }
            Ok(())
        }
        None => {
            let me = Identity {
                format: DATA_FORMAT_VERSION,
                cluster: cluster.to_string(),
                node,
            };
            db.put_cf_opt(meta, b"identity", encode(&me), &sync_write())?;
            Ok(())
        }
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .expect("column families are created at open")
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("bincode serialises every in-memory value")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    bincode::deserialize(bytes).map_err(|e| Error::Corrupt(e.to_string()))
}

fn sync_write() -> rocksdb::WriteOptions {
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    wo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_wait_lasts_until_a_database_closed_on_another_thread() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _ = wait.recv();
            drop(db);
        });
        assert!(
            !wait_until_all_closed(std::time::Duration::from_millis(50)),
            "a database held open by another thread counts as open"
        );
        drop(go);
        assert!(wait_until_all_closed(std::time::Duration::from_secs(10)));
        holder.join().unwrap();
    }

    #[test]
    fn format_3_and_4_directories_are_upgraded_in_place_and_an_older_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let put = |format| {
            let id = Identity {
                format,
                cluster: "prod".into(),
                node: 1,
            };
            db.put_cf(cf(&db, CF_META), b"identity", encode(&id))
                .unwrap();
        };
        for old in [3, 4] {
            put(old);
            check_identity(&db, dir.path(), "prod", 1).unwrap();
            let stored: Identity =
                decode(&db.get_cf(cf(&db, CF_META), b"identity").unwrap().unwrap()).unwrap();
            assert_eq!(stored.format, DATA_FORMAT_VERSION);
        }
        put(OLDEST_DATA_FORMAT - 1);
        let err = check_identity(&db, dir.path(), "prod", 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has format version 2"), "{err}");
    }

    #[test]
    fn a_data_directory_of_another_format_or_cluster_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        check_identity(&db, dir.path(), "prod", 1).unwrap();
        // The same identity again is fine.
        check_identity(&db, dir.path(), "prod", 1).unwrap();
        let other = check_identity(&db, dir.path(), "staging", 1)
            .unwrap_err()
            .to_string();
        assert!(
            other.contains("belongs to cluster \"prod\" node 1"),
            "{other}"
        );
        assert!(
            other.contains("point data_dir at this node's own directory"),
            "{other}"
        );
        // A directory written by a newer build (format bumped).
        let bumped = Identity {
            format: DATA_FORMAT_VERSION + 1,
            cluster: "prod".into(),
            node: 1,
        };
        db.put_cf(cf(&db, CF_META), b"identity", encode(&bumped))
            .unwrap();
        let newer = check_identity(&db, dir.path(), "prod", 1)
            .unwrap_err()
            .to_string();
        assert!(
            newer.contains(&format!(
                "has format version {}, this build reads version {DATA_FORMAT_VERSION}",
                DATA_FORMAT_VERSION + 1
            )),
            "{newer}"
        );
        assert!(
            newer.contains("run the Warrant version that wrote it"),
            "{newer}"
        );
    }

    #[test]
    fn a_cluster_id_is_adopted_once_kept_across_reopen_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let ids = ClusterId::load(db.clone()).unwrap();
        assert_eq!(ids.get(), None);
        assert!(matches!(
            ids.adopt("Not Valid!"),
            Err(Error::BadClusterId(_))
        ));
        let id = ClusterId::generate();
        assert_eq!(id.len(), 32);
        // Checking records nothing.
        ids.check("0123abcd").unwrap();
        assert_eq!(ids.get(), None);
        ids.adopt(&id).unwrap();
        ids.adopt(&id).unwrap();
        ids.check(&id).unwrap();
        assert!(matches!(
            ids.check("0123abcd"),
            Err(Error::OtherCluster { .. })
        ));
        let other = ids.adopt("0123abcd").unwrap_err().to_string();
        assert!(
            other.contains(&format!(
                "belongs to cluster id {id}, the sender to cluster id 0123abcd"
            )),
            "{other}"
        );
        assert!(other.contains("empty its data directory"), "{other}");
        drop(ids);
        let reopened = ClusterId::load(db).unwrap();
        assert_eq!(reopened.get(), Some(id));
    }
}

/// openraft's own storage test suite against the RocksDB log store (with its cache of recent
/// entries) and the state machine, each test on a fresh data directory.
#[cfg(test)]
mod openraft_suite {
    use openraft::testing::{StoreBuilder, Suite};

    use super::{LogStore, StateMachineStore};
    use crate::typeconfig::{StorageError, TypeConfig};

    struct Fresh;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Fresh {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir().expect("a temp dir for the suite");
            let (events, _) = tokio::sync::mpsc::unbounded_channel();
            let opened = super::open(dir.path(), "suite", 1, false, events, 16)
                .map_err(|e| openraft::StorageIOError::read(&e))?;
            Ok((dir, opened.log, opened.sm))
        }
    }

    #[test]
    fn the_log_store_and_state_machine_pass_openraft_s_storage_suite() {
        Suite::test_all(Fresh).expect("openraft storage suite");
        // The suite opened dozens of databases; let the last ones finish closing (on their log
        // fsync threads) before the test process exits, or RocksDB's static state is torn down
        // under a closing database.
        assert!(
            super::wait_until_all_closed(std::time::Duration::from_secs(30)),
            "databases still closing 30 s after the suite"
        );
    }
}
