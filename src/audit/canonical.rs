//! The canonical encoding of a record (specified in the parent module's docs) and its decoder.
//!
//! One writer serves both hashing and storage: it streams into a [`Sink`] — a `Vec` for storage, the
//! SHA-256 state for hashing (no intermediate buffer). The decoder accepts only canonical input, so
//! `write(read(bytes)) == bytes` for every accepted `bytes`.

use std::collections::BTreeMap;

use super::{AuditDecision, AuditEntry, AuditError, AuditRecord, Hash};

/// Names the format; a new encoding gets a new tag. v1: every record without a `via_token`.
pub(super) const DOMAIN_TAG: &[u8; 17] = b"warrant-audit-v1\0";
/// v2: v1 plus `via_token` (non-empty) before `prev_hash`.
pub(super) const DOMAIN_TAG_V2: &[u8; 17] = b"warrant-audit-v2\0";

/// Where canonical bytes go.
pub(super) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for sha2::Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        sha2::Digest::update(self, bytes);
    }
}

fn len_u32(len: usize) -> [u8; 4] {
    u32::try_from(len)
        .expect("audit fields and lists come from Raft entries, far below 4 GiB / 2^32 items")
        .to_be_bytes()
}

fn put_str(out: &mut impl Sink, s: &str) {
    out.put(&len_u32(s.len()));
    out.put(s.as_bytes());
}

fn put_list(out: &mut impl Sink, items: &[String]) {
    out.put(&len_u32(items.len()));
    for item in items {
        put_str(out, item);
    }
}

/// Writes the canonical bytes of `r` (everything but `r.hash`).
pub(super) fn write(r: &AuditRecord, out: &mut impl Sink) {
    let e = &r.entry;
    let v2 = !e.via_token.is_empty();
    out.put(if v2 { DOMAIN_TAG_V2 } else { DOMAIN_TAG });
    out.put(&r.seq.to_be_bytes());
    out.put(&r.index.to_be_bytes());
    out.put(&r.at_ms.to_be_bytes());
    put_str(out, &e.principal);
    put_str(out, &e.instance);
    put_str(out, &e.action);
    put_str(out, &e.resource);
    put_str(out, &e.request_id);
    put_str(out, &e.lease_id);
    out.put(&e.token.to_be_bytes());
    put_str(out, &e.intent);
    // A BTreeMap<String, _> iterates in byte order of the keys, as the format requires.
    out.put(&len_u32(e.labels.len()));
    for (k, v) in &e.labels {
        put_str(out, k);
        put_str(out, v);
    }
    put_str(out, e.decision.as_str());
    put_str(out, &e.reason);
    out.put(&e.policy_version.to_be_bytes());
    put_list(out, &e.policies);
    put_list(out, &e.approvers);
    if v2 {
        put_str(out, &e.via_token);
    }
    out.put(&r.prev_hash);
}

/// The exact length of the canonical bytes of `r`, to size buffers.
pub(super) fn size_hint(r: &AuditRecord) -> usize {
    let e = &r.entry;
    let s = |s: &str| 4 + s.len();
    let list = |l: &[String]| 4 + l.iter().map(|i| s(i)).sum::<usize>();
    DOMAIN_TAG.len()
        + 8 * 3
        + [
            &e.principal,
            &e.instance,
            &e.action,
            &e.resource,
            &e.request_id,
            &e.lease_id,
        ]
        .iter()
        .map(|f| s(f))
        .sum::<usize>()
        + 8
        + s(&e.intent)
        + 4
        + e.labels.iter().map(|(k, v)| s(k) + s(v)).sum::<usize>()
        + s(e.decision.as_str())
        + s(&e.reason)
        + 8
        + list(&e.policies)
        + list(&e.approvers)
        + if e.via_token.is_empty() {
            0
        } else {
            s(&e.via_token)
        }
        + 32
}

/// A cursor over stored bytes; every error names the field being read.
struct Reader<'a> {
    rest: &'a [u8],
}

fn malformed(field: &str, why: impl std::fmt::Display) -> AuditError {
    AuditError::Bytes(format!("{field}: {why}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], AuditError> {
        if self.rest.len() < n {
            return Err(malformed(
                field,
                format!("truncated: needs {n} more bytes, {} left", self.rest.len()),
            ));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u64(&mut self, field: &str) -> Result<u64, AuditError> {
        let b = self.take(8, field)?;
        Ok(u64::from_be_bytes(
            b.try_into().expect("take(8) returns 8 bytes"),
        ))
    }

    fn u32(&mut self, field: &str) -> Result<usize, AuditError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes(b.try_into().expect("take(4) returns 4 bytes")) as usize)
    }

    fn string(&mut self, field: &str) -> Result<String, AuditError> {
        let len = self.u32(field)?;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| malformed(field, e))
    }

    /// A count of items that take at least `min_item` bytes each: bounded by what is left, so a corrupt
    /// count cannot make us allocate more than the input's size.
    fn count(&mut self, field: &str, min_item: usize) -> Result<usize, AuditError> {
        let n = self.u32(field)?;
        if n > self.rest.len() / min_item {
            return Err(malformed(
                field,
                format!("count {n} exceeds the {} bytes left", self.rest.len()),
            ));
        }
        Ok(n)
    }

    fn list(&mut self, field: &str) -> Result<Vec<String>, AuditError> {
        let n = self.count(field, 4)?;
        (0..n).map(|_| self.string(field)).collect()
    }

    fn hash(&mut self, field: &str) -> Result<Hash, AuditError> {
        Ok(self
            .take(32, field)?
            .try_into()
            .expect("take(32) returns 32 bytes"))
    }
}

/// Decodes canonical bytes followed by the 32-byte hash.
pub(super) fn read(bytes: &[u8]) -> Result<AuditRecord, AuditError> {
    let mut r = Reader { rest: bytes };
    let tag = r.take(DOMAIN_TAG.len(), "domain tag")?;
    let v2 = if tag == DOMAIN_TAG {
        false
    } else if tag == DOMAIN_TAG_V2 {
        true
    } else {
        return Err(malformed(
            "domain tag",
            format!(
                "expected {:?} or {:?}, found {:?}",
                String::from_utf8_lossy(DOMAIN_TAG),
                String::from_utf8_lossy(DOMAIN_TAG_V2),
                String::from_utf8_lossy(tag)
            ),
        ));
    };
    let seq = r.u64("seq")?;
    let index = r.u64("index")?;
    let at_ms = r.u64("at_ms")?;
    let principal = r.string("principal")?;
    let instance = r.string("instance")?;
    let action = r.string("action")?;
    let resource = r.string("resource")?;
    let request_id = r.string("request_id")?;
    let lease_id = r.string("lease_id")?;
    let token = r.u64("token")?;
    let intent = r.string("intent")?;
    let label_count = r.count("labels", 8)?;
    let mut labels = BTreeMap::new();
    for _ in 0..label_count {
        let key = r.string("labels")?;
        let value = r.string("labels")?;
        if let Some((last, _)) = labels.last_key_value() {
            if *last >= key {
                return Err(malformed(
                    "labels",
                    format!("keys not in ascending order: {key:?} after {last:?}"),
                ));
            }
        }
        labels.insert(key, value);
    }
    let decision_name = r.string("decision")?;
    let decision = AuditDecision::from_canonical(&decision_name)
        .ok_or_else(|| malformed("decision", format!("unknown {decision_name:?}")))?;
    let reason = r.string("reason")?;
    let policy_version = r.u64("policy_version")?;
    let policies = r.list("policies")?;
    let approvers = r.list("approvers")?;
    let via_token = if v2 {
        let id = r.string("via_token")?;
        if id.is_empty() {
            // Not canonical: a record without a token is written in v1.
            return Err(malformed("via_token", "empty in a v2 record"));
        }
        id
    } else {
        String::new()
    };
    let prev_hash = r.hash("prev_hash")?;
    let hash = r.hash("hash")?;
    if !r.rest.is_empty() {
        return Err(malformed(
            "end",
            format!("{} trailing bytes after the hash", r.rest.len()),
        ));
    }
    Ok(AuditRecord {
        seq,
        index,
        at_ms,
        entry: AuditEntry {
            principal,
            instance,
            action,
            resource,
            request_id,
            lease_id,
            token,
            intent,
            labels,
            decision,
            reason,
            policy_version,
            policies,
            approvers,
            via_token,
        },
        prev_hash,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample_chain;
    use super::*;

    #[test]
    fn storage_bytes_round_trip_every_record() {
        let (_, records) = sample_chain(30);
        for r in records {
            let bytes = r.to_bytes();
            assert_eq!(bytes.len(), size_hint(&r) + 32);
            assert_eq!(AuditRecord::from_bytes(&bytes), Ok(r));
        }
    }

    #[test]
    fn size_hint_is_exact() {
        let (_, records) = sample_chain(30);
        for r in records {
            assert_eq!(r.canonical_bytes().len(), size_hint(&r));
        }
    }

    #[test]
    fn truncated_or_padded_bytes_are_rejected_with_the_field_named() {
        let (_, records) = sample_chain(2);
        let bytes = records[1].to_bytes();
        let err = AuditRecord::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.to_string().contains("hash: truncated"), "{err}");
        let mut padded = bytes.clone();
        padded.push(0);
        let err = AuditRecord::from_bytes(&padded).unwrap_err();
        assert!(err.to_string().contains("1 trailing bytes"), "{err}");
        let err = AuditRecord::from_bytes(b"warrant-audit-v9\0rest").unwrap_err();
        assert!(err.to_string().contains("domain tag"), "{err}");
    }

    #[test]
    fn a_huge_corrupt_count_does_not_allocate() {
        let (_, records) = sample_chain(1);
        let mut r = records[0].clone();
        r.entry.labels.clear();
        let mut bytes = r.to_bytes();
        // The labels count follows the intent; overwrite it with u32::MAX.
        let at = DOMAIN_TAG.len() + 24 + size_of_strs(&r) + 8 + 4 + r.entry.intent.len();
        assert_eq!(&bytes[at..at + 4], &[0, 0, 0, 0]);
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = AuditRecord::from_bytes(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("labels: count 4294967295"),
            "{err}"
        );
    }

    fn size_of_strs(r: &AuditRecord) -> usize {
        let e = &r.entry;
        [
            &e.principal,
            &e.instance,
            &e.action,
            &e.resource,
            &e.request_id,
            &e.lease_id,
        ]
        .iter()
        .map(|s| 4 + s.len())
        .sum()
    }

    #[test]
    fn unsorted_labels_and_unknown_decisions_are_not_canonical() {
        let (_, records) = sample_chain(1);
        let mut r = records[0].clone();
        r.entry.labels = [("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into();
        let bytes = r.to_bytes();
        let swapped = {
            let a = b"\x00\x00\x00\x01a\x00\x00\x00\x011";
            let b = b"\x00\x00\x00\x01b\x00\x00\x00\x012";
            let at = find(&bytes, a);
            let mut out = bytes.clone();
            out[at..at + a.len()].copy_from_slice(b);
            out[at + a.len()..at + 2 * a.len()].copy_from_slice(a);
            out
        };
        let err = AuditRecord::from_bytes(&swapped).unwrap_err();
        assert!(err.to_string().contains("not in ascending order"), "{err}");

        let name = r.entry.decision.as_str().as_bytes().to_vec();
        let at = find(&bytes, &name);
        let mut bad = bytes.clone();
        bad[at] = b'X';
        let err = AuditRecord::from_bytes(&bad).unwrap_err();
        assert!(err.to_string().contains("decision: unknown"), "{err}");
    }

    #[test]
    fn an_empty_via_token_in_a_v2_record_is_not_canonical() {
        let (_, records) = sample_chain(3);
        let r = &records[2];
        assert!(!r.entry.via_token.is_empty());
        let bytes = r.to_bytes();
        assert_eq!(&bytes[..DOMAIN_TAG_V2.len()], DOMAIN_TAG_V2);
        // Replace the via_token string with an empty one.
        let field = [
            &(r.entry.via_token.len() as u32).to_be_bytes()[..],
            r.entry.via_token.as_bytes(),
        ]
        .concat();
        let at = find(&bytes, &field);
        let bad = [&bytes[..at], &[0, 0, 0, 0][..], &bytes[at + field.len()..]].concat();
        let err = AuditRecord::from_bytes(&bad).unwrap_err();
        assert!(
            err.to_string().contains("via_token: empty in a v2 record"),
            "{err}"
        );
        // A v1 record never has one.
        assert_eq!(&records[0].to_bytes()[..DOMAIN_TAG.len()], DOMAIN_TAG);
    }

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("needle present")
    }
}
