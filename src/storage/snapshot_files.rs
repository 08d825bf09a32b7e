//! Snapshots as files: `<data dir>/snapshots/<last index>-<random>.snap`, each holding exactly the
//! bytes a follower is sent: bincode of openraft's `SnapshotMeta`, then the model's snapshot as a byte
//! sequence (its u64 length, then what `State::write_snapshot` writes).
//!
//! A snapshot is written to a temporary file, fsynced, renamed into place and the directory fsynced;
//! only then does a synced write to the `snapshot` column family name it current (`current_file`,
//! `current_last_log_id`), and the file it replaces is removed. At open, files not named current are
//! removed, and a snapshot stored the older way (the whole value under `current`, as a restore still
//! writes it) is moved into a file.
//!
//! Nothing here holds a snapshot in memory: the leader encodes the state into the file through a
//! buffered writer, openraft sends and receives the file in chunks, and the state is decoded from
//! the file as it is read.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{cf, decode, encode, sync_write, Db, Error, CF_SNAPSHOT};
use crate::model::State;
use crate::typeconfig::{LogId, SnapshotFile, SnapshotMeta};

const CURRENT_FILE: &[u8] = b"current_file";
const CURRENT_LAST_LOG_ID: &[u8] = b"current_last_log_id";
/// Where snapshots were stored whole before they became files; a restore still seeds one here.
const LEGACY_CURRENT: &[u8] = b"current";
const BUFFER: usize = 1 << 20;
/// A snapshot's meta is its id, last log id and membership: far below this.
const META_LIMIT: u64 = 1 << 20;

/// The node's snapshot directory and the column family that names the current snapshot in it.
pub(super) struct SnapshotFiles {
    dir: PathBuf,
    db: Arc<Db>,
    /// Serialises commits: openraft builds snapshots in a task of their own, which may finish after
    /// a newer snapshot was installed.
    commit: Mutex<()>,
}

impl SnapshotFiles {
    pub(super) fn open(db: Arc<Db>, data_dir: &Path) -> Result<Self, Error> {
        let dir = data_dir.join("snapshots");
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(file_err(&dir))?;
            sync_dir(data_dir)?;
        }
        let files = Self {
            dir,
            db,
            commit: Mutex::new(()),
        };
        files.move_legacy_snapshot()?;
        files.remove_others()?;
        Ok(files)
    }

    /// The current snapshot's file, if there is one.
    pub(super) fn current(&self) -> Result<Option<PathBuf>, Error> {
        Ok(self
            .db
            .get_cf(cf(&self.db, CF_SNAPSHOT), CURRENT_FILE)?
            .map(|name| self.dir.join(String::from_utf8_lossy(&name).as_ref())))
    }

    /// A new empty file for a snapshot being built (`kind` "build") or received ("recv").
    pub(super) fn create_temp(&self, kind: &str) -> Result<(PathBuf, std::fs::File), Error> {
        let path = self
            .dir
            .join(format!("{kind}-{}.tmp", uuid::Uuid::new_v4().simple()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(file_err(&path))?;
        Ok((path, file))
    }

    /// Remove temporary files of `kind` left by receptions that never completed: those not
    /// written to for `idle`. A reception still being written, or one just finished and being
    /// installed (two leaders in turn can each start sending a snapshot to a node catching up),
    /// keeps its file; whatever is left goes at the next start (`remove_others`).
    pub(super) fn remove_temps(&self, kind: &str, idle: std::time::Duration) -> Result<(), Error> {
        let prefix = format!("{kind}-");
        for entry in std::fs::read_dir(&self.dir).map_err(file_err(&self.dir))? {
            let entry = entry.map_err(file_err(&self.dir))?;
            let path = entry.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let abandoned = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= idle);
            if name.starts_with(&prefix) && name.ends_with(".tmp") && abandoned {
                std::fs::remove_file(&path).map_err(file_err(&path))?;
            }
        }
        Ok(())
    }

    /// Make the complete snapshot in `tmp` (with `meta`) the current one, unless a newer one is
    /// current already (a build that finished after an install must not replace it, or a restart
    /// would miss the purged log between). Returns a handle for reading it either way, and where
    /// it now is; a superseded file is removed once opened.
    pub(super) fn commit(
        &self,
        tmp: &Path,
        file: &std::fs::File,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotFile, Error> {
        let _guard = self.commit.lock().unwrap_or_else(|p| p.into_inner());
        let reader = std::fs::File::open(tmp).map_err(file_err(tmp))?;
        if self.current_last_log_id()? > meta.last_log_id {
            std::fs::remove_file(tmp).map_err(file_err(tmp))?;
            return Ok(SnapshotFile::new(reader, tmp.to_path_buf()));
        }
        file.sync_all().map_err(file_err(tmp))?;
        let index = meta.last_log_id.map_or(0, |l| l.index);
        let name = format!("{index:020}-{}.snap", uuid::Uuid::new_v4().simple());
        let path = self.dir.join(&name);
        std::fs::rename(tmp, &path).map_err(file_err(&path))?;
        sync_dir(&self.dir)?;
        let previous = self.current()?;
        let snapshots = cf(&self.db, CF_SNAPSHOT);
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(snapshots, CURRENT_FILE, name.as_bytes());
        batch.put_cf(snapshots, CURRENT_LAST_LOG_ID, encode(&meta.last_log_id));
        batch.delete_cf(snapshots, LEGACY_CURRENT);
        // Synced: it also makes every earlier audit write durable (one WAL) before the log that
        // produced them can be purged.
        self.db.write_opt(batch, &sync_write())?;
        if let Some(previous) = previous {
            // Open readers (a follower still being sent it) keep their handle.
            if let Err(e) = std::fs::remove_file(&previous) {
                tracing::warn!(file = %previous.display(), error = %e, "cannot remove an old snapshot");
            }
        }
        Ok(SnapshotFile::new(reader, path))
    }

    fn current_last_log_id(&self) -> Result<Option<LogId>, Error> {
        durable_last_log_id(&self.db)
    }

    /// Move a snapshot stored whole in the column family into a file.
    fn move_legacy_snapshot(&self) -> Result<(), Error> {
        let Some(bytes) = self
            .db
            .get_pinned_cf(cf(&self.db, CF_SNAPSHOT), LEGACY_CURRENT)?
        else {
            return Ok(());
        };
        let meta = read_meta_from(&bytes[..])
            .map_err(|e| Error::Corrupt(format!("the stored snapshot: {e}")))?;
        let (tmp, file) = self.create_temp("move")?;
        (&file).write_all(&bytes).map_err(file_err(&tmp))?;
        drop(bytes);
        self.commit(&tmp, &file, &meta)?;
        tracing::info!(dir = %self.dir.display(), "moved the stored snapshot into a file");
        Ok(())
    }

    /// Remove every file in the directory but the current snapshot (nothing else is written there).
    fn remove_others(&self) -> Result<(), Error> {
        let current = self.current()?;
        for entry in std::fs::read_dir(&self.dir).map_err(file_err(&self.dir))? {
            let path = entry.map_err(file_err(&self.dir))?.path();
            if path.is_file() && Some(path.as_path()) != current.as_deref() {
                std::fs::remove_file(&path).map_err(file_err(&path))?;
            }
        }
        Ok(())
    }
}

/// Write a snapshot of `state` with `meta` to `file` as it is encoded.
pub(crate) fn write(
    file: &std::fs::File,
    meta: &SnapshotMeta,
    state: &State,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(BUFFER, file);
    bincode::serialize_into(&mut out, meta).map_err(std::io::Error::other)?;
    let len = state.snapshot_len();
    out.write_all(&len.to_le_bytes())?;
    let mut counted = Counted {
        inner: &mut out,
        written: 0,
    };
    state.write_snapshot(&mut counted)?;
    if counted.written != len {
        return Err(std::io::Error::other(format!(
            "the state encoded to {} bytes but was sized at {len}",
            counted.written
        )));
    }
    out.flush()
}

/// Read the snapshot in `path`: its meta, and the state decoded as the file is read.
pub(crate) fn read(path: &Path) -> Result<(SnapshotMeta, State), Error> {
    let corrupt = |what: &dyn std::fmt::Display| {
        Error::Corrupt(format!("snapshot file {}: {what}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(file_err(path))?;
    let size = file.metadata().map_err(file_err(path))?.len();
    let mut input = BufReader::with_capacity(BUFFER, file);
    let meta = read_meta_from(&mut input).map_err(|e| corrupt(&e))?;
    let mut len = [0u8; 8];
    input.read_exact(&mut len).map_err(|e| corrupt(&e))?;
    let len = u64::from_le_bytes(len);
    if len > size {
        return Err(corrupt(&format!(
            "the state claims {len} bytes in a file of {size}"
        )));
    }
    let mut body = (&mut input).take(len);
    let state = State::read_snapshot(&mut body, len).map_err(|e| corrupt(&e))?;
    if body.limit() != 0 {
        return Err(corrupt(&format!(
            "{} bytes of the state were not read",
            body.limit()
        )));
    }
    if input.read(&mut [0u8; 1]).map_err(|e| corrupt(&e))? != 0 {
        return Err(corrupt(&"bytes after the state"));
    }
    Ok((meta, state))
}

/// Open the current snapshot for sending, with its meta read from the same handle: a build that
/// replaces the file meanwhile leaves this handle readable. `None` when there is no snapshot.
pub(super) fn open_current(files: &SnapshotFiles) -> Result<Option<SnapshotFile>, Error> {
    // The file named current can be replaced and removed between reading its name and opening it;
    // then the name read again is the newer one.
    for _ in 0..10 {
        let Some(path) = files.current()? else {
            return Ok(None);
        };
        match std::fs::File::open(&path) {
            Ok(file) => return Ok(Some(SnapshotFile::new(file, path))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(file_err(&path)(e)),
        }
    }
    Err(Error::Corrupt(
        "the current snapshot file kept disappearing while being opened".into(),
    ))
}

/// Read the meta at the start of a snapshot (bounded: a damaged length is an error, not an
/// allocation).
pub(crate) fn read_meta_from<R: Read>(input: R) -> bincode::Result<SnapshotMeta> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(META_LIMIT)
        .deserialize_from(input)
}

fn file_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::File {
        path: path.display().to_string(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_err(dir))
}

/// A writer that counts what passes through it.
struct Counted<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Read the meta at the start of a snapshot file and rewind it.
pub(super) async fn read_meta(file: &mut SnapshotFile) -> std::io::Result<SnapshotMeta> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let file = file.file_mut();
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let mut head = Vec::new();
    (&mut *file).take(META_LIMIT).read_to_end(&mut head).await?;
    file.seek(std::io::SeekFrom::Start(0)).await?;
    read_meta_from(&head[..]).map_err(std::io::Error::other)
}

/// The last log id of the snapshot on disk, if any: what the log may be purged up to.
pub(super) fn durable_last_log_id(db: &Db) -> Result<Option<LogId>, Error> {
    match db.get_cf(cf(db, CF_SNAPSHOT), CURRENT_LAST_LOG_ID)? {
        Some(bytes) => decode(&bytes),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typeconfig::StoredMembership;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("1-{index}"),
        }
    }

    fn snapshot(files: &SnapshotFiles, index: u64) -> SnapshotFile {
        let (tmp, file) = files.create_temp("build").unwrap();
        write(&file, &meta(index), &State::default()).unwrap();
        files.commit(&tmp, &file, &meta(index)).unwrap()
    }

    #[test]
    fn a_new_reception_leaves_a_recent_one_alone_and_removes_an_abandoned_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::open_db(dir.path()).unwrap();
        let files = SnapshotFiles::open(db, dir.path()).unwrap();
        let (first, _file) = files.create_temp("recv").unwrap();
        // A second leader starts sending while the first reception is being installed.
        files
            .remove_temps("recv", std::time::Duration::from_secs(60))
            .unwrap();
        assert!(first.exists(), "a reception in use is kept");
        files
            .remove_temps("recv", std::time::Duration::ZERO)
            .unwrap();
        assert!(!first.exists(), "an abandoned one goes");
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_newer_snapshot_replaces_the_current_one_and_an_older_never_does() {
        let dir = tempfile::tempdir().unwrap();
        let files =
            SnapshotFiles::open(super::super::open_db(dir.path()).unwrap(), dir.path()).unwrap();
        assert_eq!(files.current().unwrap(), None);
        let first = snapshot(&files, 10);
        assert_eq!(files.current().unwrap().as_deref(), Some(first.path()));
        let second = snapshot(&files, 20);
        assert_eq!(files.current().unwrap().as_deref(), Some(second.path()));
        assert!(!first.path().exists(), "the replaced file is removed");
        // A build that finishes after a newer install: readable, but not current and not kept.
        let late = snapshot(&files, 15);
        assert_eq!(files.current().unwrap().as_deref(), Some(second.path()));
        assert!(!late.path().exists());
        assert_eq!(names(dir.path()).len(), 1);
        assert_eq!(read(second.path()).unwrap().0, meta(20));
    }

    #[test]
    fn at_open_a_snapshot_stored_whole_moves_into_a_file_and_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = super::super::open_db(dir.path()).unwrap();
            let bytes = super::super::state_machine::encoded_snapshot(
                meta(7),
                State::default().to_snapshot(),
            );
            db.put_cf(cf(&db, CF_SNAPSHOT), LEGACY_CURRENT, bytes)
                .unwrap();
            db.put_cf(
                cf(&db, CF_SNAPSHOT),
                CURRENT_LAST_LOG_ID,
                encode(&meta(7).last_log_id),
            )
            .unwrap();
            std::fs::create_dir_all(dir.path().join("snapshots")).unwrap();
            std::fs::write(dir.path().join("snapshots/recv-x.tmp"), b"half").unwrap();
        }
        let db = super::super::open_db(dir.path()).unwrap();
        let files = SnapshotFiles::open(db.clone(), dir.path()).unwrap();
        let current = files.current().unwrap().expect("moved into a file");
        assert_eq!(read(&current).unwrap(), (meta(7), State::default()));
        assert!(db
            .get_cf(cf(&db, CF_SNAPSHOT), LEGACY_CURRENT)
            .unwrap()
            .is_none());
        assert_eq!(names(dir.path()).len(), 1, "{:?}", names(dir.path()));
    }
}
