//! The export format: one JSON object per record, one record per line (JSONL).
//!
//! Field order is fixed (that of the canonical encoding); hashes are lowercase hex; `at` is `at_ms`
//! written as RFC 3339 for people. `at` is not hashed, so reading a line checks that it matches `at_ms`
//! — otherwise an edited `at` could mislead a reader of a file that still verifies.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{rfc3339_ms, AuditDecision, AuditEntry, AuditError, AuditRecord, Hash};

/// A record as written: borrowed, flat, in the canonical field order.
#[derive(Serialize)]
struct LineOut<'a> {
    seq: u64,
    index: u64,
    at_ms: u64,
    at: Option<String>,
    principal: &'a str,
    instance: &'a str,
    action: &'a str,
    resource: &'a str,
    request_id: &'a str,
    lease_id: &'a str,
    token: u64,
    intent: &'a str,
    labels: &'a BTreeMap<String, String>,
    decision: AuditDecision,
    reason: &'a str,
    policy_version: u64,
    policies: &'a [String],
    approvers: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    via_token: &'a str,
    prev_hash: String,
    hash: String,
}

/// A record as read: every field required, nothing else allowed (an unhashed extra field could carry
/// anything).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    seq: u64,
    index: u64,
    at_ms: u64,
    at: Option<String>,
    principal: String,
    instance: String,
    action: String,
    resource: String,
    request_id: String,
    lease_id: String,
    token: u64,
    intent: String,
    #[serde(deserialize_with = "unique_labels")]
    labels: BTreeMap<String, String>,
    decision: AuditDecision,
    reason: String,
    policy_version: u64,
    policies: Vec<String>,
    approvers: Vec<String>,
    /// Only on records made through an access token (format v2); never empty when present.
    #[serde(default, deserialize_with = "non_empty")]
    via_token: String,
    prev_hash: String,
    hash: String,
}

/// Labels as a JSON object whose keys must be unique: with a duplicate, the line would show a value
/// that is not the one hashed.
fn unique_labels<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Labels;
    impl<'de> Visitor<'de> for Labels {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of string labels")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format_args!(
                        "duplicate label {k:?}"
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Labels)
}

/// A string that is present must not be empty: a v1 record has no `via_token` key at all.
fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Err(serde::de::Error::custom(
            "via_token is empty; a record without a token has no via_token key",
        ));
    }
    Ok(s)
}

fn hash_from_hex(field: &str, s: &str) -> Result<Hash, AuditError> {
    let mut out = [0u8; 32];
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(AuditError::Json(format!(
            "{field} must be 64 lowercase hex characters (a SHA-256), found {s:?}"
        )));
    }
    hex::decode_to_slice(s, &mut out).expect("64 lowercase hex characters decode to 32 bytes");
    Ok(out)
}

impl AuditRecord {
    /// The record as one line of JSON (no trailing newline):
    ///
    /// ```json
    /// {"seq":1,"index":12,"at_ms":1700000000123,"at":"2023-11-14T22:13:20.123Z",
    ///  "principal":"agent/deployer","instance":"i-1","action":"acquire","resource":"k8s/prod/payments",
    ///  "request_id":"req-7","lease_id":"42","token":9,"intent":"…","labels":{"env":"prod"},
    ///  "decision":"granted","reason":"","policy_version":3,"policies":["p1"],"approvers":[],
    ///  "prev_hash":"00…00","hash":"5f…"}
    /// ```
    ///
    /// A record made through an access token has `"via_token":"<token id>"` after `approvers`; other
    /// records have no such key. Numbers are exact u64 (a JavaScript reader must parse them as big
    /// integers); `at` is `null` past the year 9999.
    pub fn to_json_line(&self) -> String {
        let e = &self.entry;
        let line = LineOut {
            seq: self.seq,
            index: self.index,
            at_ms: self.at_ms,
            at: rfc3339_ms(self.at_ms),
            principal: &e.principal,
            instance: &e.instance,
            action: &e.action,
            resource: &e.resource,
            request_id: &e.request_id,
            lease_id: &e.lease_id,
            token: e.token,
            intent: &e.intent,
            labels: &e.labels,
            decision: e.decision,
            reason: &e.reason,
            policy_version: e.policy_version,
            policies: &e.policies,
            approvers: &e.approvers,
            via_token: &e.via_token,
            prev_hash: hex::encode(self.prev_hash),
            hash: hex::encode(self.hash),
        };
        serde_json::to_string(&line).expect("a record of strings and integers serialises to JSON")
    }

    /// Reads one line written by [`to_json_line`](Self::to_json_line). Every field is required
    /// (but `via_token`, absent when empty) and no other is allowed; `at` must agree with `at_ms`.
    /// Does not check the hash ([`verify`] does).
    ///
    /// [`verify`]: super::verify
    pub fn from_json_line(line: &str) -> Result<Self, AuditError> {
        let l: LineIn = serde_json::from_str(line).map_err(|e| AuditError::Json(e.to_string()))?;
        let expected_at = rfc3339_ms(l.at_ms);
        if l.at != expected_at {
            return Err(AuditError::Json(format!(
                "at {:?} does not match at_ms {} ({}); at is only a rendering of at_ms",
                l.at,
                l.at_ms,
                expected_at.as_deref().unwrap_or("null")
            )));
        }
        Ok(AuditRecord {
            seq: l.seq,
            index: l.index,
            at_ms: l.at_ms,
            prev_hash: hash_from_hex("prev_hash", &l.prev_hash)?,
            hash: hash_from_hex("hash", &l.hash)?,
            entry: AuditEntry {
                principal: l.principal,
                instance: l.instance,
                action: l.action,
                resource: l.resource,
                request_id: l.request_id,
                lease_id: l.lease_id,
                token: l.token,
                intent: l.intent,
                labels: l.labels,
                decision: l.decision,
                reason: l.reason,
                policy_version: l.policy_version,
                policies: l.policies,
                approvers: l.approvers,
                via_token: l.via_token,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::tests::sample_chain;
    use super::super::{AuditChain, GENESIS_HASH};
    use super::*;

    #[test]
    fn json_round_trip_is_exact_for_every_record() {
        let (_, records) = sample_chain(40);
        for r in records {
            let line = r.to_json_line();
            assert!(!line.contains('\n'));
            let back = AuditRecord::from_json_line(&line).unwrap();
            assert_eq!(back, r);
            assert_eq!(back.to_json_line(), line);
        }
    }

    #[test]
    fn json_round_trip_keeps_unicode_and_empty_labels() {
        let mut chain = AuditChain::default();
        let r = chain.append(
            1,
            0,
            AuditEntry {
                principal: "agent/ünïcode-🤖".into(),
                intent: "line\nbreak \"quoted\" \\ tab\t \u{0}".into(),
                reason: "日本語".into(),
                ..AuditEntry::new("acquire", AuditDecision::Denied)
            },
        );
        assert!(r.entry.labels.is_empty());
        let line = r.to_json_line();
        assert!(line.contains("\"labels\":{}"), "{line}");
        assert!(
            line.contains("\"at\":\"1970-01-01T00:00:00.000Z\""),
            "{line}"
        );
        assert_eq!(AuditRecord::from_json_line(&line).unwrap(), r);
    }

    #[test]
    fn json_line_has_the_documented_shape() {
        let (_, records) = sample_chain(1);
        let line = records[0].to_json_line();
        let keys: Vec<String> =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&line)
                .unwrap()
                .keys()
                .cloned()
                .collect();
        assert_eq!(
            keys,
            [
                "seq",
                "index",
                "at_ms",
                "at",
                "principal",
                "instance",
                "action",
                "resource",
                "request_id",
                "lease_id",
                "token",
                "intent",
                "labels",
                "decision",
                "reason",
                "policy_version",
                "policies",
                "approvers",
                "prev_hash",
                "hash"
            ]
        );
        assert!(line.contains(&format!("\"prev_hash\":\"{}\"", hex::encode(GENESIS_HASH))));
        assert!(
            line.contains("\"at\":\"2023-11-14T22:13:20.000Z\""),
            "{line}"
        );
    }

    #[test]
    fn a_time_past_year_9999_is_written_as_null_at() {
        let mut chain = AuditChain::default();
        let r = chain.append(
            1,
            u64::MAX,
            AuditEntry::new("expire", AuditDecision::Expired),
        );
        let line = r.to_json_line();
        assert!(line.contains("\"at\":null"), "{line}");
        assert_eq!(AuditRecord::from_json_line(&line).unwrap(), r);
    }

    #[test]
    fn the_example_line_in_the_format_docs_parses_and_verifies() {
        let doc = include_str!("../../docs/audit-format.md");
        let line = doc
            .lines()
            .find(|l| l.starts_with("{\"seq\":1,"))
            .expect("docs/audit-format.md shows an example line");
        let r = AuditRecord::from_json_line(line).unwrap();
        assert_eq!(r.to_json_line(), line);
        assert!(super::super::verify([Ok(r)]).is_ok());
    }

    fn parse_err(line: &str) -> String {
        AuditRecord::from_json_line(line).unwrap_err().to_string()
    }

    #[test]
    fn from_json_line_errors_say_what_is_wrong() {
        let (_, records) = sample_chain(1);
        let line = records[0].to_json_line();

        assert!(parse_err("").contains("not an audit record: EOF"));
        assert!(parse_err("{not json").contains("not an audit record"));

        let missing = line.replace(",\"reason\":\"\"", "");
        assert!(parse_err(&missing).contains("missing field `reason`"));

        let extra = line.replacen('{', "{\"note\":\"x\",", 1);
        assert!(parse_err(&extra).contains("unknown field `note`"));

        let bad_decision = line.replace("\"decision\":\"granted\"", "\"decision\":\"maybe\"");
        assert!(parse_err(&bad_decision).contains("unknown variant `maybe`"));

        let short_hash = line.replace(&hex::encode(records[0].hash), "abcd");
        let err = parse_err(&short_hash);
        assert!(err.contains("hash must be 64 lowercase hex"), "{err}");

        let upper = line.replace(
            &hex::encode(records[0].hash),
            &hex::encode_upper(records[0].hash),
        );
        assert!(parse_err(&upper).contains("hash must be 64 lowercase hex"));

        let negative = line.replace("\"token\":0", "\"token\":-1");
        assert!(parse_err(&negative).contains("invalid value: integer `-1`"));

        let moved = line.replace("2023-11-14T22:13:20.000Z", "2020-01-01T00:00:00.000Z");
        let err = parse_err(&moved);
        assert!(err.contains("does not match at_ms 1700000000000"), "{err}");

        let dup = line.replace(
            "{\"scale\":\"up\"}",
            "{\"scale\":\"up\",\"scale\":\"down\"}",
        );
        assert!(parse_err(&dup).contains("duplicate label \"scale\""));

        // A v1 record has no via_token key; an empty one is not how any record is written.
        let empty = line.replace(",\"prev_hash\"", ",\"via_token\":\"\",\"prev_hash\"");
        assert!(
            parse_err(&empty).contains("via_token is empty"),
            "{}",
            parse_err(&empty)
        );
    }

    fn arb_entry() -> impl Strategy<Value = AuditEntry> {
        (
            (
                ".*",
                ".*",
                "[a-z_]{0,12}",
                ".*",
                ".*",
                ".*",
                any::<u64>(),
                ".*",
            ),
            proptest::collection::btree_map(".*", ".*", 0..4),
            proptest::sample::select(AuditDecision::ALL.to_vec()),
            (".*", any::<u64>()),
            (
                proptest::collection::vec(".*", 0..3),
                proptest::collection::vec(".*", 0..3),
                "[a-z0-9]{0,32}",
            ),
        )
            .prop_map(
                |(
                    (principal, instance, action, resource, request_id, lease_id, token, intent),
                    labels,
                    decision,
                    (reason, policy_version),
                    (policies, approvers, via_token),
                )| AuditEntry {
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
            )
    }

    proptest! {
        #[test]
        fn json_round_trip_preserves_the_hash(
            entries in proptest::collection::vec(arb_entry(), 1..4),
            index in any::<u64>(),
            at_ms in any::<u64>(),
        ) {
            let mut chain = AuditChain::default();
            for entry in entries {
                let r = chain.append(index, at_ms, entry);
                let back = AuditRecord::from_json_line(&r.to_json_line()).unwrap();
                prop_assert_eq!(back.compute_hash(), r.hash);
                prop_assert_eq!(&back, &r);
                prop_assert_eq!(AuditRecord::from_bytes(&r.to_bytes()).unwrap(), r);
            }
        }
    }
}
