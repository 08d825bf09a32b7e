//! Backups (`warrant snapshot save`) and seeding a new cluster from one (`warrant snapshot restore`).
//!
//! # File format (version 1)
//!
//! | part     | bytes                                                                 |
//! |----------|-----------------------------------------------------------------------|
//! | magic    | the 16 bytes `WARRANT-BACKUP` `0x00` `0x01` (the last byte: version)   |
//! | header   | u64 length (big-endian), then the bincode of [`BackupHeader`]          |
//! | state    | `header.state_len` bytes: the state machine's snapshot encoding        |
//! | audit    | `header.audit_records` times: u32 length, then [`AuditRecord::to_bytes`] |
//! | checksum | SHA-256 of every byte before it                                        |
//!
//! The audit records are 1..=N of the chain whose head the state holds, so a restored node's audit
//! log is whole and verifies against its state. A restore checks the checksum before it writes
//! anything, and writes only into an empty data directory.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{cf, encode, open_db, sync_write, AuditLog, Error, CF_SNAPSHOT};
use crate::audit::AuditRecord;
use crate::typeconfig::{LogId, NodeAddr, NodeId, SnapshotMeta, StoredMembership};

const MAGIC: &[u8; 16] = b"WARRANT-BACKUP\x00\x01";
/// Largest header accepted (it is a few names and numbers).
const MAX_HEADER: u64 = 64 * 1024;
/// Largest audit record accepted (a record is bounded by request limits, far below this).
const MAX_RECORD: u32 = 16 * 1024 * 1024;

/// What a backup holds, besides the bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupHeader {
    /// The cluster it was taken from.
    pub cluster: String,
    /// The node that served it.
    pub node: u64,
    /// When, Unix milliseconds.
    pub taken_at_ms: u64,
    /// The last log index its state had applied.
    pub log_index: u64,
    /// The data format of the node that wrote it ([`super::DATA_FORMAT_VERSION`]).
    pub data_format: u32,
    pub state_len: u64,
    /// Audit records 1..=this (the chain's length; also the watch revision of the state).
    pub audit_records: u64,
}

/// Writes a backup to `out`, hashing as it goes.
pub struct BackupWriter<W: Write> {
    out: W,
    hash: Sha256,
}

impl<W: Write> BackupWriter<W> {
    /// Write the magic, the header and the state: `header.state_len` bytes read from `state` (an
    /// error if it holds fewer), copied through a fixed buffer so a large state is never held
    /// whole in memory.
    pub fn start(out: W, header: &BackupHeader, state: impl Read) -> std::io::Result<Self> {
        let mut w = Self {
            out,
            hash: Sha256::new(),
        };
        w.put(MAGIC)?;
        let h = encode(header);
        w.put(&(h.len() as u64).to_be_bytes())?;
        w.put(&h)?;
        let mut state = state.take(header.state_len);
        let mut buf = vec![0u8; 1 << 16];
        let mut copied = 0u64;
        loop {
            let n = match state.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            w.put(&buf[..n])?;
            copied += n as u64;
        }
        if copied != header.state_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the state ended after {copied} of its {} bytes",
                    header.state_len
                ),
            ));
        }
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.out.write_all(bytes)
    }

    pub fn record(&mut self, r: &AuditRecord) -> std::io::Result<()> {
        let bytes = r.to_bytes();
        self.put(&(bytes.len() as u32).to_be_bytes())?;
        self.put(&bytes)
    }

    /// Write the checksum; returns it and the writer.
    pub fn finish(mut self) -> std::io::Result<([u8; 32], W)> {
        let sum: [u8; 32] = self.hash.finalize().into();
        self.out.write_all(&sum)?;
        self.out.flush()?;
        Ok((sum, self.out))
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("backup {}: {what}", path.display()))
}

/// Check a backup file's checksum without decoding it; returns its SHA-256 (the checksum stored).
pub fn verify_file(path: &Path) -> Result<[u8; 32], Error> {
    let io = |e: std::io::Error| corrupt(path, e);
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len < (MAGIC.len() + 8 + 32) as u64 {
        return Err(corrupt(
            path,
            format!("{len} bytes is too short to be a backup"),
        ));
    }
    let mut file =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(io)?);
    let mut hash = Sha256::new();
    let mut left = len - 32;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        file.read_exact(&mut buf[..n]).map_err(io)?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    let mut stored = [0u8; 32];
    file.read_exact(&mut stored).map_err(io)?;
    let computed: [u8; 32] = hash.finalize().into();
    if computed != stored {
        return Err(corrupt(
            path,
            format!(
                "checksum mismatch (stored {}, computed {}): the file is damaged or truncated",
                hex::encode(stored),
                hex::encode(computed)
            ),
        ));
    }
    Ok(stored)
}

/// A backup file being read (after [`verify_file`]).
pub struct BackupReader {
    file: std::io::BufReader<std::fs::File>,
    pub header: BackupHeader,
    /// The file's checksum (verified).
    pub sha256: [u8; 32],
    /// Whether the state has been read (or skipped) past.
    past_state: bool,
    records_left: u64,
    path: std::path::PathBuf,
}

impl BackupReader {
    /// Verify the checksum, then read the header; [`read_state`](Self::read_state) and the
    /// records follow.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let sha256 = verify_file(path)?;
        let io = |e: std::io::Error| corrupt(path, e);
        let mut file =
            std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(io)?);
        let mut magic = [0u8; 16];
        file.read_exact(&mut magic).map_err(io)?;
        if magic[..15] != MAGIC[..15] {
            return Err(corrupt(
                path,
                "not a Warrant backup (its first bytes are not WARRANT-BACKUP)",
            ));
        }
        if magic[15] != MAGIC[15] {
            return Err(corrupt(
                path,
                format!(
                    "backup format version {}, this build reads version {}",
                    magic[15], MAGIC[15]
                ),
            ));
        }
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(io)?;
        let len = u64::from_be_bytes(len);
        if len > MAX_HEADER {
            return Err(corrupt(path, format!("header of {len} bytes")));
        }
        let mut h = vec![0u8; len as usize];
        file.read_exact(&mut h).map_err(io)?;
        let header: BackupHeader =
            bincode::deserialize(&h).map_err(|e| corrupt(path, format!("header: {e}")))?;
        // What follows the header, up to the checksum: the state must fit in it (a length read from
        // the file is never an allocation or a seek by itself).
        let size = std::fs::metadata(path).map_err(io)?.len();
        let after_header = size.saturating_sub(16 + 8 + len + 32);
        if header.state_len > after_header {
            return Err(corrupt(
                path,
                format!(
                    "the header claims a state of {} bytes where {after_header} follow it",
                    header.state_len
                ),
            ));
        }
        let records_left = header.audit_records;
        Ok(Self {
            file,
            header,
            sha256,
            past_state: false,
            records_left,
            path: path.to_path_buf(),
        })
    }

    /// The state's bytes (the state machine's snapshot encoding); call before the records.
    pub fn read_state(&mut self) -> Result<Vec<u8>, Error> {
        if self.past_state {
            return Err(corrupt(&self.path, "the state was already read"));
        }
        let mut state = vec![0u8; self.header.state_len as usize];
        self.file
            .read_exact(&mut state)
            .map_err(|e| corrupt(&self.path, e))?;
        self.past_state = true;
        Ok(state)
    }

    /// The next audit record, in seq order.
    pub fn next_record(&mut self) -> Result<Option<AuditRecord>, Error> {
        if self.records_left == 0 {
            return Ok(None);
        }
        if !self.past_state {
            self.file
                .seek_relative(self.header.state_len as i64)
                .map_err(|e| corrupt(&self.path, e))?;
            self.past_state = true;
        }
        let path = &self.path;
        let io = |e: std::io::Error| corrupt(path, e);
        let mut len = [0u8; 4];
        self.file.read_exact(&mut len).map_err(io)?;
        let len = u32::from_be_bytes(len);
        if len > MAX_RECORD {
            return Err(corrupt(path, format!("audit record of {len} bytes")));
        }
        let mut bytes = vec![0u8; len as usize];
        self.file.read_exact(&mut bytes).map_err(io)?;
        let record = AuditRecord::from_bytes(&bytes)
            .map_err(|e| corrupt(path, format!("audit record: {e}")))?;
        let want = self.header.audit_records - self.records_left + 1;
        if record.seq != want {
            return Err(corrupt(
                path,
                format!("audit record {} where {want} belongs", record.seq),
            ));
        }
        self.records_left -= 1;
        Ok(Some(record))
    }
}

/// What [`seed`] writes into a new node's data directory.
pub struct Seed {
    /// The new cluster's name and id (see [`restored_cluster_id`]) and this node's id.
    pub cluster: String,
    pub cluster_id: String,
    pub node: u64,
    /// The new cluster's voters.
    pub members: BTreeMap<NodeId, NodeAddr>,
    /// The state machine's snapshot encoding, as applied at `log_index`.
    pub state: Vec<u8>,
    pub log_index: u64,
}

/// The id of a cluster restored from the backup whose checksum is `sha256` onto `members`: every node
/// restored from one file onto one member list derives the same id without talking to the others,
/// and it differs from the id of the cluster that was backed up, whose old members are refused.
pub fn restored_cluster_id(sha256: &[u8; 32], members: &BTreeMap<NodeId, NodeAddr>) -> String {
    let mut hash = Sha256::new();
    hash.update(b"warrant restored cluster\0");
    hash.update(sha256);
    for (id, addr) in members {
        hash.update(id.to_be_bytes());
        hash.update(addr.raft.as_bytes());
        hash.update(b"\0");
    }
    hex::encode(&hash.finalize()[..16])
}

/// Seed an empty data directory with `seed` and the audit records `records` yields. Raft starts after
/// `seed.log_index` in a term above none: the restored log id carries term 0, so the new cluster's
/// first leader (term ≥ 1) follows it.
pub fn seed(
    dir: &Path,
    seed: Seed,
    mut records: impl FnMut() -> Result<Option<AuditRecord>, Error>,
) -> Result<(), Error> {
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Corrupt(format!(
            "the data directory {} is not empty: restore seeds a new node only; move it away first",
            dir.display()
        )));
    }
    // Written beside it and renamed into place at the end: a failed restore leaves no half-seeded
    // data directory that a start could mistake for a node's.
    let mut tmp = dir.as_os_str().to_owned();
    tmp.push(".restoring");
    let tmp = std::path::PathBuf::from(tmp);
    let io = |e: std::io::Error| Error::Corrupt(format!("{}: {e}", tmp.display()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io)?;
    }
    write_seed(&tmp, seed, &mut records)?;
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(io)?;
    }
    std::fs::rename(&tmp, dir).map_err(io)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

fn write_seed(
    dir: &Path,
    seed: Seed,
    records: &mut impl FnMut() -> Result<Option<AuditRecord>, Error>,
) -> Result<(), Error> {
    let db = open_db(dir)?;
    super::check_identity(&db, dir, &seed.cluster, seed.node)?;
    super::check_cluster_id(&seed.cluster_id)?;
    super::write_cluster_id(&db, &seed.cluster_id)?;
    let audit = AuditLog::new(db.clone());
    let mut batch = Vec::with_capacity(1024);
    while let Some(r) = records()? {
        batch.push(r);
        if batch.len() == 1024 {
            audit.write(&batch)?;
            batch.clear();
        }
    }
    audit.write(&batch)?;
    audit.sync()?;
    let log_id: LogId =
        openraft::LogId::new(openraft::CommittedLeaderId::new(0, 0), seed.log_index);
    let voters = seed
        .members
        .keys()
        .copied()
        .collect::<std::collections::BTreeSet<_>>();
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(
            Some(log_id),
            openraft::Membership::new(vec![voters], seed.members),
        ),
        snapshot_id: format!("restored-{}", seed.log_index),
    };
    let stored = super::state_machine::encoded_snapshot(meta, seed.state);
    let snapshots = cf(&db, CF_SNAPSHOT);
    let mut wb = rocksdb::WriteBatch::default();
    wb.put_cf(snapshots, b"current", stored);
    wb.put_cf(snapshots, b"current_last_log_id", encode(&Some(log_id)));
    db.write_opt(wb, &sync_write())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditChain, AuditDecision, AuditEntry};

    fn header(records: u64, state_len: u64) -> BackupHeader {
        BackupHeader {
            cluster: "c".into(),
            node: 1,
            taken_at_ms: 5,
            log_index: 9,
            data_format: super::super::DATA_FORMAT_VERSION,
            state_len,
            audit_records: records,
        }
    }

    #[test]
    fn a_state_shorter_than_the_header_says_is_an_error() {
        let mut out = Vec::new();
        let short = BackupWriter::start(&mut out, &header(0, 10), &b"only 7!"[..]);
        let e = short.err().expect("a short state is refused");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("7 of its 10 bytes"), "{e}");
        // A longer source is read only as far as the header says.
        let written = |source: &[u8]| {
            let mut out = Vec::new();
            let w = BackupWriter::start(&mut out, &header(0, 4), source).unwrap();
            w.finish().unwrap();
            out
        };
        assert_eq!(written(b"statexxxx"), written(b"stat"));
    }

    #[test]
    fn a_backup_round_trips_and_any_damage_or_truncation_is_caught() {
        let mut chain = AuditChain::default();
        let records: Vec<AuditRecord> = (1..=3)
            .map(|i| chain.append(i, 1000, AuditEntry::new("x", AuditDecision::Granted)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let state = b"state bytes".to_vec();
        let file = std::fs::File::create(&path).unwrap();
        let mut w = BackupWriter::start(file, &header(3, state.len() as u64), &state[..]).unwrap();
        for r in &records {
            w.record(r).unwrap();
        }
        let (sum, _) = w.finish().unwrap();

        let mut reader = BackupReader::open(&path).unwrap();
        let got_state = reader.read_state().unwrap();
        assert_eq!(reader.sha256, sum);
        assert_eq!(reader.header, header(3, state.len() as u64));
        assert_eq!(got_state, state);
        let mut back = Vec::new();
        while let Some(r) = reader.next_record().unwrap() {
            back.push(r);
        }
        assert_eq!(back, records);
        // Records can be read without loading the state (it is skipped).
        let mut skipping = BackupReader::open(&path).unwrap();
        assert_eq!(skipping.next_record().unwrap().as_ref(), Some(&records[0]));

        let good = std::fs::read(&path).unwrap();
        for cut in [good.len() - 1, good.len() / 2, 10] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(BackupReader::open(&path).is_err(), "truncated at {cut}");
        }
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let e = BackupReader::open(&path).err().unwrap().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
    }

    /// Found by the fuzz target `backup` (fuzz/seeds/backup/regression-state-len): a header whose
    /// state length is far beyond the file, under a valid checksum, made the reader allocate it
    /// (an abort at 800 PB) before reading a byte of it.
    #[test]
    fn a_header_claiming_more_state_than_the_file_holds_is_corrupt_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        let mut body = Vec::new();
        BackupWriter::start(&mut body, &header(0, 4), &b"stat"[..])
            .unwrap()
            .finish()
            .unwrap();
        body.truncate(body.len() - 32);
        // Rewrite the header with a huge state length, then a checksum that matches.
        let huge = bincode::serialize(&header(0, u64::MAX / 4)).unwrap();
        let mut forged = body[..16].to_vec();
        forged.extend_from_slice(&(huge.len() as u64).to_be_bytes());
        forged.extend_from_slice(&huge);
        forged.extend_from_slice(b"stat");
        let sum: [u8; 32] = Sha256::digest(&forged).into();
        forged.extend_from_slice(&sum);
        std::fs::write(&path, &forged).unwrap();
        let e = BackupReader::open(&path)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("claims a state of"), "{e}");
    }
}
