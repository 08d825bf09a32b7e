//! The audit records in RocksDB: column family `audit`, key = seq as 8 bytes big-endian, value =
//! [`AuditRecord::to_bytes`] (the canonical encoding that is hashed, then the 32-byte hash). Storing
//! exactly the hashed bytes means there is no second format to drift, and a record read back verifies
//! iff it was stored intact.
//!
//! The records are derived state: the state machine appends them in apply and they are written
//! without fsync, because the Raft log is the durable source — after a crash, replay re-derives them
//! with the same seqs and bytes (the chain is deterministic), overwriting whatever survived.
//!
//! Invariant kept across crashes: every record present is the one the replicated chain has at that
//! seq. Records a node lacks after installing a snapshot (which carries only the chain's head) are
//! noted as an [`AuditGap`] and fetched from peers by the server, checked against that head.

use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use super::{cf, decode, encode, sync_write, Db, Error, CF_AUDIT, CF_META};
use crate::audit::{verify, AuditError, AuditRecord, VerifyReport};

/// Key (in the `meta` column family) of the records this node lacks after installing a snapshot.
const GAP_KEY: &[u8] = b"audit_gap";

/// Records `from..=to` that this node lacks: it installed a snapshot whose audit chain reaches `to`
/// (with `hash_at_to`, from the replicated state) without the records themselves. They are fetched
/// from peers and checked to link from record `from - 1` to exactly `hash_at_to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditGap {
    pub from: u64,
    pub to: u64,
    pub hash_at_to: crate::audit::Hash,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(k: &[u8]) -> Result<u64, Error> {
    let bytes: [u8; 8] = k.try_into().map_err(|_| {
        Error::Corrupt(format!(
            "audit key is {} bytes, expected 8 (a big-endian seq)",
            k.len()
        ))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Decodes a stored record and checks it sits under its own seq.
fn decode_record(k: &[u8], v: &[u8]) -> Result<AuditRecord, Error> {
    let seq = seq_of(k)?;
    let record = AuditRecord::from_bytes(v).map_err(|source| Error::AuditRecord { seq, source })?;
    if record.seq != seq {
        return Err(Error::AuditRecord {
            seq,
            source: AuditError::Bytes(format!(
                "stored under seq {seq} but holds seq {}",
                record.seq
            )),
        });
    }
    Ok(record)
}

/// The audit records of this node; cheap to clone (shares the database).
#[derive(Clone)]
pub struct AuditLog {
    db: Arc<Db>,
}

impl AuditLog {
    /// The audit log in `db`, which must have been opened by this module's parent (with the `audit`
    /// column family).
    pub(crate) fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    fn cf(&self) -> &rocksdb::ColumnFamily {
        cf(&self.db, CF_AUDIT)
    }

    /// Adds `records` to `batch`; the caller writes the batch (e.g. with the state it belongs to).
    pub fn put_batch(&self, batch: &mut WriteBatch, records: &[AuditRecord]) {
        let audit = self.cf();
        for r in records {
            batch.put_cf(audit, key(r.seq), r.to_bytes());
        }
    }

    /// Writes `records` at once, without fsync (see the module docs: replay re-derives them).
    pub fn write(&self, records: &[AuditRecord]) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        self.put_batch(&mut batch, records);
        Ok(self.db.write(batch)?)
    }

    /// Records from `seq` on, in order, streamed from a RocksDB iterator (bounded memory).
    pub fn iter_from(&self, seq: u64) -> impl Iterator<Item = Result<AuditRecord, Error>> + '_ {
        self.iter_range(seq, u64::MAX)
    }

    /// Records with `from_seq <= seq <= to_seq_inclusive`, in order, streamed.
    pub fn iter_range(
        &self,
        from_seq: u64,
        to_seq_inclusive: u64,
    ) -> impl Iterator<Item = Result<AuditRecord, Error>> + '_ {
        let mut opts = ReadOptions::default();
        if to_seq_inclusive < u64::MAX {
            opts.set_iterate_upper_bound(key(to_seq_inclusive + 1));
        }
        self.db
            .iterator_cf_opt(
                self.cf(),
                opts,
                IteratorMode::From(&key(from_seq), Direction::Forward),
            )
            .map(|item| {
                let (k, v) = item?;
                decode_record(&k, &v)
            })
    }

    /// The record with `seq`, if stored.
    pub fn get(&self, seq: u64) -> Result<Option<AuditRecord>, Error> {
        match self.db.get_pinned_cf(self.cf(), key(seq))? {
            Some(v) => Ok(Some(decode_record(&key(seq), &v)?)),
            None => Ok(None),
        }
    }

    /// The highest stored seq; 0 when there are no records.
    pub fn last_seq(&self) -> Result<u64, Error> {
        match self.db.iterator_cf(self.cf(), IteratorMode::End).next() {
            Some(item) => seq_of(&item?.0),
            None => Ok(0),
        }
    }

    /// The records this node still lacks, if any.
    pub fn gap(&self) -> Result<Option<AuditGap>, Error> {
        match self.db.get_cf(cf(&self.db, CF_META), GAP_KEY)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Record (synced) that records `gap.from..=gap.to` are missing; `None` clears it.
    pub fn set_gap(&self, gap: Option<&AuditGap>) -> Result<(), Error> {
        let meta = cf(&self.db, CF_META);
        let mut batch = WriteBatch::default();
        match gap {
            Some(g) => batch.put_cf(meta, GAP_KEY, encode(g)),
            None => batch.delete_cf(meta, GAP_KEY),
        }
        Ok(self.db.write_opt(batch, &sync_write())?)
    }

    /// Deletes the records with a seq above `seq` (synced).
    pub fn truncate_after(&self, seq: u64) -> Result<(), Error> {
        if seq == u64::MAX {
            return Ok(());
        }
        let audit = self.cf();
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(audit, key(seq + 1), key(u64::MAX));
        batch.delete_cf(audit, key(u64::MAX));
        Ok(self.db.write_opt(batch, &sync_write())?)
    }

    /// [`verify`]s the stored records `from_seq..=to_seq_inclusive`, streaming. A record that does
    /// not decode is a break in the report; a failure to read the database is an error instead, since
    /// it says nothing about the records.
    pub fn verify_range(
        &self,
        from_seq: u64,
        to_seq_inclusive: u64,
    ) -> Result<VerifyReport, Error> {
        let mut read_error = None;
        let records = self
            .iter_range(from_seq, to_seq_inclusive)
            .map_while(|item| match item {
                Ok(r) => Some(Ok(r)),
                Err(Error::AuditRecord { source, .. }) => Some(Err(source)),
                Err(e) => {
                    read_error = Some(e);
                    None
                }
            });
        let report = verify(records);
        match read_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Makes every write so far durable (fsyncs the WAL).
    pub fn sync(&self) -> Result<(), Error> {
        Ok(self.db.flush_wal(true)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditChain, AuditDecision, AuditEntry, BreakReason};

    fn open() -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = super::super::open_db(dir.path()).expect("open db");
        (dir, AuditLog::new(db))
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut chain = AuditChain::default();
        (0..n)
            .map(|i| {
                chain.append(
                    i + 1,
                    1_700_000_000_000 + i,
                    AuditEntry {
                        resource: format!("k8s/prod/svc-{}", i % 7),
                        token: i,
                        ..AuditEntry::new("acquire", AuditDecision::Granted)
                    },
                )
            })
            .collect()
    }

    fn seqs(it: impl Iterator<Item = Result<AuditRecord, Error>>) -> Vec<u64> {
        it.map(|r| r.expect("record decodes").seq).collect()
    }

    #[test]
    fn written_records_read_back_in_order() {
        let (_dir, log) = open();
        assert_eq!(log.last_seq().unwrap(), 0);
        assert_eq!(log.get(1).unwrap(), None);
        let records = chain(300);
        log.write(&records[..100]).unwrap();
        let mut batch = WriteBatch::default();
        log.put_batch(&mut batch, &records[100..]);
        log.db.write(batch).unwrap();

        assert_eq!(log.last_seq().unwrap(), 300);
        assert_eq!(log.get(257).unwrap().as_ref(), Some(&records[256]));
        let all: Vec<AuditRecord> = log.iter_from(1).map(Result::unwrap).collect();
        assert_eq!(all, records);
        assert_eq!(seqs(log.iter_from(298)), [298, 299, 300]);
        assert_eq!(seqs(log.iter_from(0)).len(), 300);
        assert!(seqs(log.iter_from(301)).is_empty());
        log.sync().unwrap();
    }

    #[test]
    fn ranges_are_inclusive_and_bounded() {
        let (_dir, log) = open();
        log.write(&chain(50)).unwrap();
        assert_eq!(seqs(log.iter_range(10, 12)), [10, 11, 12]);
        assert_eq!(seqs(log.iter_range(7, 7)), [7]);
        assert!(seqs(log.iter_range(12, 10)).is_empty());
        assert_eq!(seqs(log.iter_range(48, u64::MAX)), [48, 49, 50]);
        assert_eq!(seqs(log.iter_range(0, 2)), [1, 2]);
        assert!(seqs(log.iter_range(60, 70)).is_empty());
    }

    #[test]
    fn truncate_after_deletes_only_the_newer_records() {
        let (_dir, log) = open();
        log.write(&chain(50)).unwrap();
        log.truncate_after(40).unwrap();
        assert_eq!(log.last_seq().unwrap(), 40);
        assert!(log.get(41).unwrap().is_none());
        assert!(log.get(40).unwrap().is_some());
        log.truncate_after(u64::MAX).unwrap();
        assert_eq!(log.last_seq().unwrap(), 40);
        log.truncate_after(0).unwrap();
        assert_eq!(log.last_seq().unwrap(), 0);
    }

    #[test]
    fn a_corrupt_or_misplaced_record_is_an_error_naming_its_seq() {
        let (_dir, log) = open();
        let records = chain(3);
        log.write(&records).unwrap();
        let audit = log.cf();
        log.db.put_cf(audit, key(2), b"garbage").unwrap();
        let err = log.get(2).unwrap_err();
        assert!(matches!(err, Error::AuditRecord { seq: 2, .. }), "{err}");
        log.db.put_cf(audit, key(3), records[0].to_bytes()).unwrap();
        let err = log.get(3).unwrap_err().to_string();
        assert!(err.contains("stored under seq 3 but holds seq 1"), "{err}");
        let results: Vec<_> = log.iter_from(1).collect();
        assert!(results[0].is_ok() && results[1].is_err() && results[2].is_err());
    }

    #[test]
    fn verify_range_reports_a_tampered_record_as_a_break_at_its_seq() {
        let (_dir, log) = open();
        let mut records = chain(20);
        log.write(&records).unwrap();
        let report = log.verify_range(1, 20).unwrap();
        assert!(report.is_ok() && report.last_seq == 20, "{report}");

        records[11].entry.token += 1;
        log.write(&records[11..12]).unwrap();
        let b = log.verify_range(1, 20).unwrap().broken.unwrap();
        assert_eq!((b.seq, b.reason), (Some(12), BreakReason::HashMismatch));

        log.db.put_cf(log.cf(), key(5), b"garbage").unwrap();
        let report = log.verify_range(1, 20).unwrap();
        assert_eq!(report.verified, 4);
        let b = report.broken.unwrap();
        assert_eq!((b.position, b.seq), (5, None));
        assert_eq!(
            b.to_string(),
            "item 5: unparseable: stored audit record is malformed: domain tag: truncated: needs 17 \
             more bytes, 7 left"
        );
    }

    #[test]
    fn a_hundred_thousand_records_stream_through_verify() {
        let (_dir, log) = open();
        let mut chain = AuditChain::default();
        let mut batch = Vec::with_capacity(1000);
        for i in 0..100_000u64 {
            batch.push(chain.append(
                i + 1,
                i,
                AuditEntry {
                    resource: format!("r/{}", i % 100),
                    ..AuditEntry::new("acquire", AuditDecision::Granted)
                },
            ));
            if batch.len() == 1000 {
                log.write(&batch).unwrap();
                batch.clear();
            }
        }
        // Streamed: verify holds one record at a time; nothing is collected.
        let report = log.verify_range(1, u64::MAX).unwrap();
        assert!(report.matches_chain(&chain), "{report}");
        assert_eq!(report.verified, 100_000);
        assert_eq!(log.iter_range(50_001, 60_000).count(), 10_000);
    }
}
