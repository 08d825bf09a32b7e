//! Verifying a run of records: streaming, constant memory, stops at the first break.
//!
//! A run may start anywhere (an export of seqs 500..=900): the first record's `prev_hash` can then only
//! be checked against a trusted anchor, which is why the report gives it back
//! ([`VerifyReport::first_prev_hash`]). A run starting at seq 1 is anchored at the genesis hash.

use std::fmt;

use super::{AuditChain, AuditError, AuditRecord, Hash, GENESIS_HASH};

/// Why a record breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakReason {
    /// `hash` is not SHA-256 of the record's canonical bytes: a field was edited.
    HashMismatch,
    /// `prev_hash` is not the hash of the record before it.
    PrevHashMismatch { prev_seq: u64 },
    /// Record 1's `prev_hash` is not 32 zero bytes.
    GenesisPrevHash,
    /// Seq 0 does not exist: seqs start at 1.
    ZeroSeq,
    /// A record is missing, duplicated or out of order.
    SeqGap { expected: u64, found: u64 },
    /// The record could not be read.
    Unparseable(AuditError),
}

impl fmt::Display for BreakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HashMismatch => f.write_str("hash does not match its contents"),
            Self::PrevHashMismatch { prev_seq } => {
                write!(f, "prev_hash does not match record {prev_seq}")
            }
            Self::GenesisPrevHash => {
                f.write_str("prev_hash of record 1 is not the genesis hash (32 zero bytes)")
            }
            Self::ZeroSeq => f.write_str("seq 0 is not valid (seqs start at 1)"),
            Self::SeqGap { expected, found } => {
                write!(f, "seq gap: expected {expected}, found {found}")
            }
            Self::Unparseable(e) => write!(f, "unparseable: {e}"),
        }
    }
}

/// The first record that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// 1-based position in the input (the line number of an export file).
    pub position: u64,
    /// The record's seq as found; `None` when it could not be read.
    pub seq: Option<u64>,
    pub reason: BreakReason,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(
                f,
                "record seq {seq} (item {}): {}",
                self.position, self.reason
            ),
            None => write!(f, "item {}: {}", self.position, self.reason),
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records that verified, in order, before the first break (all of them when intact).
    pub verified: u64,
    /// The first record's seq (`None` for empty input or an unreadable first record).
    pub first_seq: Option<u64>,
    /// The first record's `prev_hash`: compare it with a trusted hash of record `first_seq − 1` to anchor
    /// a run that does not start at seq 1.
    pub first_prev_hash: Hash,
    /// The seq of the last verified record; 0 when none.
    pub last_seq: u64,
    /// The hash of the last verified record; [`GENESIS_HASH`] when none.
    pub head: Hash,
    /// The first break, if any; nothing after it was examined.
    pub broken: Option<Broken>,
}

impl VerifyReport {
    /// Whether every record verified.
    pub fn is_ok(&self) -> bool {
        self.broken.is_none()
    }

    /// Whether the records are intact and end exactly at `chain`'s head: this also catches records cut
    /// off the end, which the links alone cannot show.
    pub fn matches_chain(&self, chain: &AuditChain) -> bool {
        self.is_ok() && self.last_seq == chain.len() && self.head == chain.head()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = match self.first_seq {
            Some(first) if self.verified > 0 => format!("seq {first}..={}", self.last_seq),
            _ => "no records".to_string(),
        };
        match &self.broken {
            None => write!(
                f,
                "ok: {} records verified ({range}), head {}",
                self.verified,
                hex::encode(self.head)
            ),
            Some(b) => write!(
                f,
                "BROKEN at {b}; {} records verified before it ({range})",
                self.verified
            ),
        }
    }
}

/// Verifies records in order: seqs gapless from the first record's, each `prev_hash` equal to the
/// previous record's `hash` (the genesis hash when seq is 1), each `hash` equal to
/// [`AuditRecord::compute_hash`]. Streams: holds one record at a time. Stops at the first break.
pub fn verify<I: IntoIterator<Item = Result<AuditRecord, AuditError>>>(records: I) -> VerifyReport {
    let mut report = VerifyReport {
        verified: 0,
        first_seq: None,
        first_prev_hash: GENESIS_HASH,
        last_seq: 0,
        head: GENESIS_HASH,
        broken: None,
    };
    for (i, item) in records.into_iter().enumerate() {
        let position = i as u64 + 1;
        let record = match item {
            Ok(r) => r,
            Err(e) => {
                report.broken = Some(Broken {
                    position,
                    seq: None,
                    reason: BreakReason::Unparseable(e),
                });
                break;
            }
        };
        if position == 1 {
            report.first_seq = Some(record.seq);
            report.first_prev_hash = record.prev_hash;
        }
        if let Some(reason) = check(&report, position, &record) {
            report.broken = Some(Broken {
                position,
                seq: Some(record.seq),
                reason,
            });
            break;
        }
        report.verified += 1;
        report.last_seq = record.seq;
        report.head = record.hash;
    }
    report
}

/// The first thing wrong with `r`, given the records verified before it.
fn check(report: &VerifyReport, position: u64, r: &AuditRecord) -> Option<BreakReason> {
    if r.seq == 0 {
        return Some(BreakReason::ZeroSeq);
    }
    if position > 1 {
        let expected = report.last_seq + 1;
        if r.seq != expected {
            return Some(BreakReason::SeqGap {
                expected,
                found: r.seq,
            });
        }
        if r.prev_hash != report.head {
            return Some(BreakReason::PrevHashMismatch {
                prev_seq: report.last_seq,
            });
        }
    } else if r.seq == 1 && r.prev_hash != GENESIS_HASH {
        return Some(BreakReason::GenesisPrevHash);
    }
    if r.compute_hash() != r.hash {
        return Some(BreakReason::HashMismatch);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample_chain;
    use super::*;

    fn ok(records: &[AuditRecord]) -> impl Iterator<Item = Result<AuditRecord, AuditError>> + '_ {
        records.iter().cloned().map(Ok)
    }

    #[test]
    fn an_intact_chain_verifies_and_matches_its_head() {
        let (chain, records) = sample_chain(25);
        let report = verify(ok(&records));
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.verified, 25);
        assert_eq!((report.first_seq, report.last_seq), (Some(1), 25));
        assert_eq!(report.head, chain.head());
        assert!(report.matches_chain(&chain));
        assert!(report
            .to_string()
            .starts_with("ok: 25 records verified (seq 1..=25)"));
    }

    #[test]
    fn empty_input_verifies_as_the_empty_chain() {
        let report = verify(std::iter::empty());
        assert!(report.is_ok());
        assert_eq!(report.verified, 0);
        assert!(report.matches_chain(&AuditChain::default()));
        assert_eq!(
            report.to_string(),
            format!(
                "ok: 0 records verified (no records), head {}",
                "0".repeat(64)
            )
        );
    }

    /// Applies `edit` to record seq 10 of 20 and returns the break verify reports.
    fn break_of(edit: impl FnOnce(&mut AuditRecord)) -> Broken {
        let (_, mut records) = sample_chain(20);
        edit(&mut records[9]);
        let report = verify(ok(&records));
        assert_eq!(report.verified, 9, "{report}");
        assert_eq!(report.last_seq, 9);
        report.broken.expect("the edit is detected")
    }

    #[test]
    fn any_single_field_edit_in_the_middle_is_detected_at_that_record() {
        type Edit = Box<dyn Fn(&mut AuditRecord)>;
        let edits: Vec<(&str, Edit)> = vec![
            ("index", Box::new(|r| r.index += 1)),
            ("at_ms", Box::new(|r| r.at_ms -= 1)),
            ("principal", Box::new(|r| r.entry.principal.push('x'))),
            ("instance", Box::new(|r| r.entry.instance.clear())),
            ("action", Box::new(|r| r.entry.action = "release".into())),
            (
                "resource",
                Box::new(|r| r.entry.resource = "k8s/dev".into()),
            ),
            ("request_id", Box::new(|r| r.entry.request_id.push('1'))),
            ("lease_id", Box::new(|r| r.entry.lease_id.push('1'))),
            ("token", Box::new(|r| r.entry.token += 1)),
            ("intent", Box::new(|r| r.entry.intent.push('!'))),
            (
                "labels",
                Box::new(|r| {
                    r.entry.labels.insert("scale".into(), "down".into());
                }),
            ),
            (
                "decision",
                Box::new(|r| r.entry.decision = super::super::AuditDecision::Denied),
            ),
            ("reason", Box::new(|r| r.entry.reason = "because".into())),
            ("policy_version", Box::new(|r| r.entry.policy_version += 1)),
            ("policies", Box::new(|r| r.entry.policies.clear())),
            (
                "approvers",
                Box::new(|r| r.entry.approvers.push("human/eve".into())),
            ),
            ("hash", Box::new(|r| r.hash[0] ^= 1)),
        ];
        for (field, edit) in edits {
            let b = break_of(edit);
            assert_eq!((b.position, b.seq), (10, Some(10)), "{field}");
            assert_eq!(b.reason, BreakReason::HashMismatch, "{field}");
            assert!(b.to_string().contains("seq 10"), "{field}: {b}");
        }

        let b = break_of(|r| r.prev_hash[31] ^= 1);
        assert_eq!((b.position, b.seq), (10, Some(10)));
        assert_eq!(b.reason, BreakReason::PrevHashMismatch { prev_seq: 9 });
        assert_eq!(
            b.to_string(),
            "record seq 10 (item 10): prev_hash does not match record 9"
        );

        let b = break_of(|r| r.seq = 99);
        assert_eq!((b.position, b.seq), (10, Some(99)));
        assert_eq!(b.reason.to_string(), "seq gap: expected 10, found 99");
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_is_caught_by_the_next_record() {
        let (_, mut records) = sample_chain(20);
        records[9].entry.decision = super::super::AuditDecision::Granted;
        records[9].hash = records[9].compute_hash();
        let b = verify(ok(&records)).broken.unwrap();
        assert_eq!((b.position, b.seq), (11, Some(11)));
        assert_eq!(b.reason, BreakReason::PrevHashMismatch { prev_seq: 10 });
    }

    #[test]
    fn a_deleted_record_is_a_seq_gap() {
        let (chain, mut records) = sample_chain(20);
        records.remove(9);
        let report = verify(ok(&records));
        let b = report.broken.clone().unwrap();
        assert_eq!(
            b.reason,
            BreakReason::SeqGap {
                expected: 10,
                found: 11
            }
        );
        assert_eq!(b.seq, Some(11));
        assert!(!report.matches_chain(&chain));
    }

    #[test]
    fn a_deletion_renumbered_to_hide_the_gap_is_still_detected() {
        let (_, mut records) = sample_chain(20);
        records.remove(9);
        for r in &mut records[9..] {
            r.seq -= 1;
        }
        let b = verify(ok(&records)).broken.unwrap();
        assert_eq!(b.seq, Some(10));
        assert_eq!(b.reason, BreakReason::PrevHashMismatch { prev_seq: 9 });
    }

    #[test]
    fn reordered_records_are_detected() {
        let (_, mut records) = sample_chain(20);
        records.swap(9, 10);
        let b = verify(ok(&records)).broken.unwrap();
        assert_eq!(b.position, 10);
        assert_eq!(
            b.reason,
            BreakReason::SeqGap {
                expected: 10,
                found: 11
            }
        );
    }

    #[test]
    fn a_cut_off_tail_verifies_but_does_not_match_the_chain_head() {
        let (chain, records) = sample_chain(20);
        let report = verify(ok(&records[..15]));
        assert!(report.is_ok());
        assert!(!report.matches_chain(&chain));
    }

    #[test]
    fn a_run_from_the_middle_verifies_and_reports_its_anchor() {
        let (_, records) = sample_chain(20);
        let report = verify(ok(&records[5..]));
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.first_seq, Some(6));
        assert_eq!(report.first_prev_hash, records[4].hash);
        assert_eq!(report.verified, 15);
    }

    #[test]
    fn a_forged_genesis_or_seq_zero_is_detected() {
        let (_, mut records) = sample_chain(3);
        records[0].prev_hash = [1; 32];
        records[0].hash = records[0].compute_hash();
        let b = verify(ok(&records)).broken.unwrap();
        assert_eq!(b.reason, BreakReason::GenesisPrevHash);

        let (_, mut records) = sample_chain(3);
        records[0].seq = 0;
        let b = verify(ok(&records)).broken.unwrap();
        assert_eq!(b.reason, BreakReason::ZeroSeq);
    }

    #[test]
    fn an_unparseable_line_is_reported_at_its_position() {
        let (_, records) = sample_chain(5);
        let mut lines: Vec<String> = records.iter().map(AuditRecord::to_json_line).collect();
        lines[3] = lines[3].replace("\"seq\":4", "\"seq\":\"four\"");
        let report = verify(lines.iter().map(|l| AuditRecord::from_json_line(l)));
        assert_eq!(report.verified, 3);
        let b = report.broken.unwrap();
        assert_eq!((b.position, b.seq), (4, None));
        assert!(
            b.to_string()
                .starts_with("item 4: unparseable: not an audit record: invalid type"),
            "{b}"
        );
    }
}
