//! Audit records on the wire (`proto::AuditRecord`): how a node sends them and how a client, or a
//! peer filling its audit gap, rebuilds them exactly (hashes are lowercase hex there), so a record
//! received hashes to what the cluster stored and [`super::verify`] can check it.

use std::collections::BTreeMap;
use std::str::FromStr;

use super::{AuditDecision, AuditEntry, AuditRecord, Hash};
use crate::proto;

/// A record as a node sends it.
pub fn to_proto(r: &AuditRecord) -> proto::AuditRecord {
    let e = &r.entry;
    proto::AuditRecord {
        seq: r.seq,
        index: r.index,
        at_ms: r.at_ms,
        principal: e.principal.clone(),
        instance: e.instance.clone(),
        action: e.action.clone(),
        resource: e.resource.clone(),
        request_id: e.request_id.clone(),
        lease_id: e.lease_id.clone(),
        token: e.token,
        intent: e.intent.clone(),
        labels: e.labels.clone().into_iter().collect(),
        decision: e.decision.as_str().to_string(),
        reason: e.reason.clone(),
        policy_version: e.policy_version,
        policies: e.policies.clone(),
        approvers: e.approvers.clone(),
        prev_hash: hex::encode(r.prev_hash),
        hash: hex::encode(r.hash),
        via_token: e.via_token.clone(),
    }
}

/// A record as a node sent it, rebuilt. Fails (saying why) on a hash that is not 64 lowercase hex
/// digits or a decision name that is not spelled canonically: either would make the record hash
/// differently from what was stored.
pub fn from_proto(p: proto::AuditRecord) -> Result<AuditRecord, String> {
    let decision = AuditDecision::from_str(&p.decision)
        .ok()
        .filter(|d| d.as_str() == p.decision)
        .ok_or_else(|| format!("unknown decision {:?}", p.decision))?;
    let prev_hash = hash_from_hex(&p.prev_hash).map_err(|e| format!("prev_hash {e}"))?;
    let hash = hash_from_hex(&p.hash).map_err(|e| format!("hash {e}"))?;
    Ok(AuditRecord {
        seq: p.seq,
        index: p.index,
        at_ms: p.at_ms,
        entry: AuditEntry {
            principal: p.principal,
            instance: p.instance,
            action: p.action,
            resource: p.resource,
            request_id: p.request_id,
            lease_id: p.lease_id,
            token: p.token,
            intent: p.intent,
            labels: p.labels.into_iter().collect::<BTreeMap<_, _>>(),
            decision,
            reason: p.reason,
            policy_version: p.policy_version,
            policies: p.policies,
            approvers: p.approvers,
            via_token: p.via_token,
        },
        prev_hash,
        hash,
    })
}

fn hash_from_hex(s: &str) -> Result<Hash, String> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "must be 64 lowercase hex digits (a SHA-256), found {s:?}"
        ));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}
